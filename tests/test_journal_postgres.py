"""The PostgreSQL journal across hosts: what the database must enforce when two trapd share it.

Two (or more) ``PostgresJournal`` objects with different instance names on one
real PostgreSQL 15 (tests/pg_harness.py) stand for two hosts. The behaviour
shared with SQLite is tested in test_journal.py against both backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from pg_harness import PgProxy, PgServer
from structlog.testing import capture_logs

from trapd.dispatch.config import DispatchConfig, JournalConfig, RetryDefaults
from trapd.dispatch.dispatcher import Dispatcher
from trapd.dispatch.journal import AddResult, CapCheck, HistoryFilter, JournalError, NewEntry
from trapd.dispatch.journal.postgres import MIGRATIONS, SCHEMA_VERSION, PostgresJournal, _lock_id, migrate
from trapd.dispatch.testing import make_event, make_outcome, plan
from trapd.event import SNMP_TRAP_COMMUNITY_OID, event_fingerprint, new_event_id, oid_str
from trapd.params import Param
from trapd.plugin import ActionContext, RetryableError, action


def entry(action: str = "log", key: str = "k", **kw: Any) -> NewEntry:
    base: dict[str, Any] = dict(
        rule="r1", action=action, index=0, params={"message": "hi"}, key=key, mode="enforce", state="pending",
        due=time.time(), max_attempts=3, backoff=0.01, max_age=3600.0,
    )  # fmt: skip
    base.update(kw)
    return NewEntry(**base)


async def until(check: Callable[[], Awaitable[bool] | bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if not isinstance(got, bool):
            got = await got
        if got:
            return
        assert time.monotonic() < deadline, "not within the timeout"
        await asyncio.sleep(0.02)


@pytest.fixture
async def hosts(pg_url: str) -> AsyncIterator[Callable[..., Awaitable[PostgresJournal]]]:
    opened: list[PostgresJournal] = []

    async def open_host(name: str, **kw: Any) -> PostgresJournal:
        j = PostgresJournal(pg_url, instance=name, **kw)
        await j.open()
        opened.append(j)
        return j

    yield open_host
    for j in opened:
        await j.close()


async def test_schema_is_created_by_migrate_and_checked_at_open(pg_server: PgServer) -> None:
    url = pg_server.new_database(migrated=False)
    with pytest.raises(JournalError, match="no trapd schema: run `trapd journal migrate`"):
        await PostgresJournal(url).open()
    assert await migrate(url) == (None, SCHEMA_VERSION)
    assert await migrate(url) == (SCHEMA_VERSION, SCHEMA_VERSION)  # idempotent
    async with PostgresJournal(url) as j:
        assert (await j.counts())["pending"] == 0
    with psycopg.connect(url, autocommit=True) as conn:
        # A later release's schema that this trapd cannot run on (see the compatible test below).
        conn.execute(
            "UPDATE trapd_meta SET v = %s WHERE k IN ('schema', 'compatible')", (str(SCHEMA_VERSION + 1),)
        )
    with pytest.raises(JournalError, match="newer than this trapd knows"):
        await PostgresJournal(url).open()
    with pytest.raises(JournalError, match="newer than this trapd knows"):
        await migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("UPDATE trapd_meta SET v = '0' WHERE k = 'schema'")
    with pytest.raises(JournalError, match=r"older than this trapd .* run `trapd journal migrate`"):
        await PostgresJournal(url).open()


async def test_each_action_is_claimed_by_one_host(hosts: Callable[..., Awaitable[PostgresJournal]]) -> None:
    a, b = await hosts("a"), await hosts("b")
    now = time.time()
    r = await a.add(make_event().to_dict(), [entry(key=f"k{i}") for i in range(60)], [], now)
    # Both hosts race for every action at once.
    claims = await asyncio.gather(*(h.claim(i, now) for i in r.ids for h in (a, b)))
    outcomes = [c.outcome for c in claims]
    assert outcomes.count("running") == 60 and outcomes.count("gone") == 60
    for i in r.ids:
        e = await a.get(i)
        assert e is not None and e.state == "running" and e.attempts == 1 and e.owner in ("a", "b")


async def test_once_within_holds_across_hosts(hosts: Callable[..., Awaitable[PostgresJournal]]) -> None:
    a, b = await hosts("a"), await hosts("b")
    now = time.time()
    ev = make_event().to_dict()
    adds = [
        h.add(ev, [entry(key=f"x{i}", once_key="mac:aa", once_within=300.0)], [], now)
        for i in range(20)
        for h in (a, b)
    ]
    results = await asyncio.gather(*adds)
    states = [r.states[0] for r in results]
    assert states.count("pending") == 1 and states.count("cancelled") == 39
    first = next(r.ids[0] for r in results if r.states[0] == "pending")
    assert {r.duplicate_of[0] for r in results if r.states[0] == "cancelled"} == {first}


async def test_caps_are_counted_in_the_database(hosts: Callable[..., Awaitable[PostgresJournal]]) -> None:
    a, b = await hosts("a"), await hosts("b")
    now = time.time()
    cap = CapCheck("global/deletions", "sw1", limit=5, per=60.0, hold_for=600.0)
    r = await a.add(make_event().to_dict(), [entry(key=f"k{i}", caps=(cap,)) for i in range(20)], [], now)
    claims = await asyncio.gather(*((a if n % 2 else b).claim(i, now) for n, i in enumerate(r.ids)))
    outcomes = [c.outcome for c in claims]
    assert outcomes.count("running") == 5 and outcomes.count("held") == 15


async def test_per_key_order_holds_across_hosts(hosts: Callable[..., Awaitable[PostgresJournal]]) -> None:
    a, b = await hosts("a"), await hosts("b")
    now = time.time()
    r = await a.add(make_event().to_dict(), [entry(key="port"), entry(key="port")], [], now)
    first, second = r.ids
    assert (await b.claim(second, now)).outcome == "wait"  # the first is still waiting
    assert (await a.claim(first, now)).outcome == "running"
    got = await b.claim(second, now)
    assert got.outcome == "wait" and got.blocked_by == "running"  # running on the other host
    await a.finish(first, "done", now)
    assert (await b.claim(second, now)).outcome == "running"
    # Both hosts claiming the two of a fresh key at once: never both running.
    for _ in range(10):
        r = await a.add(make_event().to_dict(), [entry(key="busy"), entry(key="busy")], [], now)
        c1, c2 = await asyncio.gather(a.claim(r.ids[1], now), b.claim(r.ids[0], now))
        assert c1.outcome == "wait" and c2.outcome == "running"
        await b.finish(r.ids[0], "done", now)
        assert (await a.claim(r.ids[1], now)).outcome == "running"
        await a.finish(r.ids[1], "done", now)


async def test_a_host_whose_journal_writes_wait_keeps_its_claims(
    hosts: Callable[..., Awaitable[PostgresJournal]], pg_url: str
) -> None:
    # A host whose journal writes queue up (a burst behind a slow batch) is alive and running its
    # actions: the renewal of its leases must not wait in that queue, or the other host takes
    # over what this one still runs, and it runs twice (docs/pair.md: a host that dies, or loses
    # the database, loses its claims; not one that is busy).
    a = await hosts("a", lease=3.0)
    b = await hosts("b", lease=3.0)
    await b.recover(time.time())  # b runs actions: it takes over claims whose lease ran out
    now = time.time()
    r = await a.add(make_event().to_dict(), [entry(key="k", claim=True, due=now)], [], now)
    assert r.states == ["running"]
    with psycopg.connect(pg_url) as blocker:
        # a's next batch waits for a lock this session holds; what a queues after it waits too.
        blocker.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_id("once", "slow"),))
        slow = a.add_soon(
            make_event().to_dict(), [entry(key="z", once_key="slow", once_within=60.0)], [], now
        )
        await asyncio.sleep(7.0)  # well past the lease; b looks every second
        e = await b.get(r.ids[0])
        assert e is not None and (e.state, e.owner) == ("running", "a")
        assert b.taken_over == 0
        blocker.rollback()
    assert (await slow).states == ["pending"]


async def test_ids_taken_before_another_hosts_commit_do_not_let_two_of_a_key_run(
    hosts: Callable[..., Awaitable[PostgresJournal]], pg_url: str
) -> None:
    # An id is taken when a row is inserted, not when it commits: host a's action of a key can
    # have the smaller id and commit after host b journaled (and claimed) a later one of the key,
    # which could not see it. a's claim must then wait for b's run, not start beside it.
    a, b = await hosts("a"), await hosts("b")
    now = time.time()
    blocking = make_event().to_dict()
    with psycopg.connect(pg_url) as blocker, psycopg.connect(pg_url, autocommit=True) as watch:
        # An uncommitted event row with the id a's second add journals: a's batch inserts its
        # first action, then waits for this transaction with its own uncommitted.
        blocker.execute(
            "INSERT INTO trapd_events (id, received_at, source, trap_name, data) "
            "VALUES (%s, 1, 's', 't', '{}')",
            (blocking["id"],),
        )
        first = a.add_soon(make_event().to_dict(), [entry(key="port")], [], now)
        second = a.add_soon(blocking, [entry(key="other")], [], now)

        def a_waits() -> bool:
            row = watch.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE wait_event_type = 'Lock' AND datname = current_database()"
            ).fetchone()
            return row is not None and row[0] > 0

        await until(a_waits, timeout=30)
        later = await b.add(make_event().to_dict(), [entry(key="port", claim=True, due=now)], [], now)
        assert later.states == ["running"]  # nothing of "port" was committed when b looked
        blocker.rollback()
    earlier = await first
    await second
    assert earlier.ids[0] < later.ids[0] and earlier.states == ["pending"]
    got = await a.claim(earlier.ids[0], now)
    assert (got.outcome, got.blocked_by) == ("wait", "running")  # b runs the key's other action
    await b.finish(later.ids[0], "done", now)
    assert (await a.claim(earlier.ids[0], now)).outcome == "running"


async def test_a_delay_armed_on_one_host_is_cancelled_from_the_other(
    hosts: Callable[..., Awaitable[PostgresJournal]],
) -> None:
    a, b = await hosts("a"), await hosts("b")
    now = time.time()
    armed = await a.add(
        make_event().to_dict(), [entry(state="scheduled", due=now + 120, cancel_key="port:sw1:17")], [], now
    )
    cleared = await b.add(make_event().to_dict(), [], ["port:sw1:17"], now + 1)
    assert cleared.cancelled == armed.ids
    assert (await a.claim(armed.ids[0], now + 121)).outcome == "gone"
    e = await a.get(armed.ids[0])
    assert e is not None and e.state == "cancelled"


async def test_notify_wakes_the_other_host(hosts: Callable[..., Awaitable[PostgresJournal]]) -> None:
    a, b = await hosts("a"), await hosts("b")
    woken: list[float] = []
    a.watch(lambda: woken.append(time.monotonic()))
    await until(lambda: True)
    woken.clear()
    await a.add(make_event().to_dict(), [entry()], [], time.time())  # its own write: no wake-up
    await b.add(make_event().to_dict(), [entry(key="other")], [], time.time())
    await until(lambda: bool(woken), timeout=10)
    assert await a.changed() is True


async def test_a_dead_hosts_claims_are_taken_over_after_the_lease(
    hosts: Callable[..., Awaitable[PostgresJournal]],
) -> None:
    a = await hosts("a", lease=3.0)
    b = await hosts("b", lease=3.0)
    await b.recover(time.time(), hold_unless=["log"])  # the dispatcher's policy: hold-unsafe
    now = time.time()
    r = await a.add(
        make_event().to_dict(), [entry(action="log", key="1"), entry(action="exec", key="2")], [], now
    )
    for i in r.ids:
        assert (await a.claim(i, now)).outcome == "running"
    # While a renews its leases (every second), b leaves its rows alone, past the lease time.
    await asyncio.sleep(4.5)
    assert [(await b.get(i)).state for i in r.ids] == ["running", "running"]  # type: ignore[union-attr]
    # a dies (no more renewals): b takes over after the lease, by the interrupted: policy.
    a._tasks[1].cancel()  # its lease loop, as SIGKILL would stop it
    await until(lambda: _states(b, r.ids, ["pending", "held"]), timeout=20)
    log_row, exec_row = [await b.get(i) for i in r.ids]
    assert log_row is not None and "taken over by b" in (log_row.last_error or "")
    assert exec_row is not None and exec_row.held_by == "interrupted"
    assert b.taken_over == 2
    # a's late finish (it was only slow, not dead) does not overwrite what b now owns.
    assert (await b.claim(r.ids[0], time.time())).outcome == "running"
    await a.finish(r.ids[0], "done", time.time())
    e = await b.get(r.ids[0])
    assert e is not None and e.state == "running" and e.owner == "b"


async def test_recovery_takes_only_its_own_hosts_claims_whatever_the_names(
    hosts: Callable[..., Awaitable[PostgresJournal]],
) -> None:
    # A host's recovery takes back its own rows and its workers' (INSTANCE/worker-N), never another
    # live host's: in LIKE, "_" and "%" in a name are wildcards and must not act as such.
    other = await hosts("dhcp-1", owner="worker-0")  # claims as dhcp-1/worker-0
    now = time.time()
    r = await other.add(make_event().to_dict(), [entry(key="theirs")], [], now)
    assert (await other.claim(r.ids[0], now)).outcome == "running"
    for name in ("dhcp_1", "dhcp%"):
        me = await hosts(name)
        await me.recover(time.time())
        e = await other.get(r.ids[0])
        assert e is not None and (e.state, e.owner) == ("running", "dhcp-1/worker-0"), name


async def _states(j: PostgresJournal, ids: list[int], want: list[str]) -> bool:
    return [(await j.get(i)).state for i in ids] == want  # type: ignore[union-attr]


async def test_database_outage_fails_fast_and_recovers() -> None:
    server = PgServer()  # its own: stopping it must not disturb the session's
    try:
        server.start()
        url = server.new_database()
        async with PostgresJournal(url, instance="a") as j:
            ok = await j.add(make_event().to_dict(), [entry()], [], time.time())
            server.stop()
            t0 = time.monotonic()
            with pytest.raises(JournalError, match="unavailable"):
                await j.add(make_event().to_dict(), [entry()], [], time.time())
            assert time.monotonic() - t0 < 10
            assert not j.available and j.failed_ops >= 1 and j.unavailable_since is not None
            # Meanwhile every later write fails at once (no waiting on a dead socket).
            t0 = time.monotonic()
            with pytest.raises(JournalError):
                await j.add(make_event().to_dict(), [entry()], [], time.time())
            assert time.monotonic() - t0 < 5
            server.start()
            later: list[Any] = []

            async def add_once() -> bool:
                try:
                    later.append(await j.add(make_event().to_dict(), [entry(key="after")], [], time.time()))
                except JournalError:
                    return False
                return True

            await until(add_once, timeout=60)
            assert j.available
            got = await j.get(ok.ids[0])
            assert got is not None and got.state == "pending"  # committed before the outage: kept
            assert (await j.get(later[0].ids[0])) is not None
    finally:
        server.remove()


async def test_a_database_that_takes_no_writes_makes_the_journal_unavailable() -> None:
    # A database that refuses every write (read-only: a standby after a failover, or an
    # administrator's setting) is as unavailable to trapd as a stopped one. It was taken for one
    # operation's error each time: /healthz 200, nothing counted, and not even a JournalError
    # (the daemon logged a line per trap instead of counting the lost outcomes).
    server = PgServer()  # its own: its settings change
    try:
        server.start()
        url = server.new_database()
        db = url.split("@/", 1)[1].split("?", 1)[0]

        def set_read_only(on: bool) -> None:
            server.psql(f"ALTER DATABASE {db} SET default_transaction_read_only = {'on' if on else 'off'}")
            # Sessions take it when they start: end the journal's, it connects again.
            server.psql(f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{db}'")

        async with PostgresJournal(url, instance="a") as j:
            await j.add(make_event().to_dict(), [entry()], [], time.time())
            set_read_only(True)

            errors: list[Exception] = []

            async def refused() -> bool:
                try:
                    await j.add(make_event().to_dict(), [entry()], [], time.time())
                except Exception as exc:
                    errors.append(exc)
                    return "read-only" in str(exc)  # (not the end of the session it was in)
                return False

            await until(refused, timeout=30)
            assert isinstance(errors[-1], JournalError), repr(errors[-1])
            health = j.health()
            assert not health.available and "read-only" in (health.problem or ""), health
            assert health.failed_writes >= 1
            with contextlib.suppress(JournalError):
                await j.counts()  # a read may work: the journal still cannot commit
            assert not j.health().available
            set_read_only(False)

            async def accepted() -> bool:
                try:
                    await j.add(make_event().to_dict(), [entry()], [], time.time())
                except JournalError:
                    return False
                return True

            await until(accepted, timeout=60)
            assert j.health().available
    finally:
        server.remove()


async def test_an_action_that_ends_during_an_outage_is_journaled_done_once_the_database_is_back() -> None:
    # Actions running when the database goes away end meanwhile: their "done" (or the due time of
    # their retry) cannot be written. It must be once the database is back. Left "running" (this
    # host renewing its lease), a row stayed so until trapd restarted: never retried, and every
    # later action of its key waited for it.
    server = PgServer()  # its own: stopping it must not disturb the session's
    try:
        server.start()
        url = server.new_database()
        ran: list[str] = []
        may_end = asyncio.Event()

        @action("gate", params={"tag": Param("string", required=True)}, idempotent=True)
        async def gate(params: dict[str, Any], ctx: ActionContext) -> None:
            """Test action: the first run of each ends when the test says so; "flaky" then fails."""
            ran.append(params["tag"])
            if ctx.attempt == 1 and params["tag"] in ("first", "flaky"):
                await may_end.wait()
                if params["tag"] == "flaky":
                    raise RetryableError("try again")

        config = DispatchConfig(
            workers=2,
            queue_size=100,
            journal=JournalConfig(poll_interval=0.05),
            retry=RetryDefaults(backoff=0.05, jitter=0.0),
        )
        async with PostgresJournal(url, instance="a") as j:
            d = Dispatcher(config, j, {"gate": gate}, kea=None)
            await d.start()
            try:
                ids = await d.submit(
                    make_event(),
                    make_outcome(
                        plan("gate", {"tag": "first"}, key="port"), plan("gate", {"tag": "flaky"}, key="x")
                    ),
                )
                await until(lambda: sorted(ran) == ["first", "flaky"])
                server.stop()
                may_end.set()
                await until(lambda: d.stats.running == 0 and not j.available)
                server.start()

                second = make_outcome(plan("gate", {"tag": "second"}, key="port"))

                async def submitted() -> bool:
                    try:
                        await d.submit(make_event(), second)
                    except JournalError:
                        return False
                    return True

                await until(submitted, timeout=60)
                await until(lambda: "second" in ran, timeout=30)  # its key is free again
                await until(lambda: ran.count("flaky") == 2, timeout=30)  # retried
                await until(lambda: _states(j, [int(i) for i in ids], ["done", "done"]), timeout=30)
                assert sorted(ran) == ["first", "flaky", "flaky", "second"]
            finally:
                await d.stop(1.0)
    finally:
        server.remove()


async def test_after_an_outage_a_host_leaves_the_claims_of_a_live_host_alone() -> None:
    # The database away for longer than the lease: every claim's lease ran out meanwhile, the
    # other host's too, though it is alive and still running its action. The first host back
    # must give it a lease's time to renew, not take its action over at once (and run it again).
    server = PgServer()  # its own: stopping it must not disturb the session's
    try:
        server.start()
        url = server.new_database()
        a = PostgresJournal(url, instance="a", lease=3.0)
        b = PostgresJournal(url, instance="b", lease=3.0)
        await a.open()
        await b.open()
        try:
            await a.recover(time.time())  # a runs actions: it takes over claims whose lease ran out
            now = time.time()
            mine = (await a.add(make_event().to_dict(), [entry(key="a", claim=True, due=now)], [], now)).ids[
                0
            ]
            theirs = (
                await b.add(make_event().to_dict(), [entry(key="b", claim=True, due=now)], [], now)
            ).ids[0]

            def row(id_: int) -> tuple[Any, ...]:
                with psycopg.connect(url) as conn:
                    got = conn.execute(
                        "SELECT state, owner, lease_until FROM trapd_actions WHERE id = %s", (id_,)
                    ).fetchone()
                assert got is not None
                return tuple(got)

            server.stop()
            await asyncio.sleep(3.5)  # longer than the lease
            b._tasks[1].cancel()  # b renews when the test says so (it is alive all the same)
            server.start()
            back = time.time()
            await until(lambda: row(mine)[2] > back, timeout=30)  # a renews again
            assert row(theirs)[:2] == ("running", "b")
            b._tasks[1] = asyncio.create_task(b._lease_loop())
            await b._renew(time.time(), take_over=False)  # b is back too
            await asyncio.sleep(7.0)  # a looks every second
            assert row(theirs)[:2] == ("running", "b") and a.taken_over == 0
        finally:
            await a.close()
            await b.close()
    finally:
        server.remove()


def copy_of(d: dict[str, Any], **changes: Any) -> dict[str, Any]:
    """The same notification as another receiver gets it: its own id, time, port, community."""
    out = dict(d, id=new_event_id(), received_at=d["received_at"] + 0.003, source_port=40000)
    out["security"] = {"community": "other-community"}
    out.update(changes)
    return out


def test_fingerprint_is_equal_for_copies_only() -> None:
    ev = make_event(
        varbinds=[("IF-MIB::ifIndex", "Integer32", 17), ("IF-MIB::ifDescr", "OctetString", b"Gi1/0/17")]
    )
    d = ev.to_dict()
    fp = event_fingerprint(d)
    assert fp is not None and event_fingerprint(copy_of(d)) == fp
    v3 = copy_of(d, version="v3", security={"user": "mon", "engine_id": "80001f8880aa", "context": ""})
    assert event_fingerprint(v3) == fp
    assert event_fingerprint(dict(d, uptime=d["uptime"] + 1)) != fp  # sent again later: another one
    assert event_fingerprint(dict(d, source="192.0.2.99")) != fp
    assert event_fingerprint(dict(d, trap_oid="1.3.6.1.6.3.1.1.5.4")) != fp
    other = [dict(vb) for vb in d["varbinds"]]
    other[0]["value"] = 18
    assert event_fingerprint(dict(d, varbinds=other)) != fp
    # A v1 trap's community travels as a varbind (RFC 3584): not part of it either.
    community = {"oid": oid_str(SNMP_TRAP_COMMUNITY_OID), "type": "OctetString", "value": b"public".hex()}
    assert event_fingerprint(dict(d, varbinds=[*d["varbinds"], community])) == fp
    assert event_fingerprint(dict(d, uptime=None)) is None


async def test_a_notification_received_by_both_hosts_is_journaled_once(
    hosts: Callable[..., Awaitable[PostgresJournal]],
) -> None:
    a, b = await hosts("a"), await hosts("b")
    now = time.time()
    first = make_event().to_dict()
    items = [entry(key="k1", item={"mac": "aa"}), entry(key="k2", item={"mac": "bb"})]
    # Both copies at once, many times over: each planned action (foreach item) once.
    for n in range(10):
        ev = dict(first, uptime=1000 + n)
        got = await asyncio.gather(a.add(ev, items, [], now), b.add(copy_of(ev), items, [], now))
        states = sorted(s for r in got for s in r.states)
        assert states == ["cancelled", "cancelled", "pending", "pending"], states
        kept, dups = (got[0], got[1]) if got[0].states[0] == "pending" else (got[1], got[0])
        assert dups.duplicate_of == kept.ids
    # A later copy (an inform resent after its Response was lost) is a copy too.
    late = await b.add(copy_of(dict(first, uptime=1000)), items, [], now + 60)
    assert late.states == ["cancelled", "cancelled"]
    # Past the window, or sent again later by the switch (another sysUpTime): journaled again.
    assert (await b.add(copy_of(dict(first, uptime=1000)), items, [], now + 400)).states == ["pending"] * 2
    assert (await b.add(dict(first, uptime=2000), items, [], now)).states == ["pending"] * 2
    # No sysUpTime: no fingerprint; both copies are journaled.
    bare = dict(first, uptime=None)
    assert (await a.add(bare, items[:1], [], now)).states == ["pending"]
    assert (await b.add(copy_of(bare), items[:1], [], now)).states == ["pending"]


async def test_migrate_upgrades_an_older_schema(pg_server: PgServer) -> None:
    url = pg_server.new_database(migrated=False)
    with psycopg.connect(url, autocommit=True) as conn:  # a database migrated by the first release
        conn.execute("CREATE TABLE trapd_meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        conn.execute(MIGRATIONS[0][1].encode())
        conn.execute("INSERT INTO trapd_meta VALUES ('schema', '1')")
        conn.execute(
            "INSERT INTO trapd_actions (event_id, received_at, source, rule, action, idx, params, key, mode, "
            "state, max_attempts, backoff, max_age, age_from, created, due) "
            "VALUES ('e', 1, 's', 'r', 'log', 0, '{}', 'k', 'enforce', 'pending', 1, 1, 1, 1, 1, 1)"
        )
    with pytest.raises(JournalError, match="older than this trapd"):
        await PostgresJournal(url).open()
    assert await migrate(url) == (1, SCHEMA_VERSION)
    async with PostgresJournal(url) as j:
        e = await j.get(1)
        assert e is not None and e.state == "pending"  # kept across the migration


async def test_a_database_restart_while_idle_loses_nothing() -> None:
    # The writer's connection died with the server while nothing was asked of it: the next
    # operation must not fail for that (a trap's outcome would be lost) when the server is back.
    server = PgServer()
    try:
        server.start()
        url = server.new_database()
        async with PostgresJournal(url, instance="a") as j:
            await j.add(make_event().to_dict(), [entry()], [], time.time())
            server.stop()
            server.start()
            res = await j.add(make_event().to_dict(), [entry(key="after")], [], time.time())
            assert res.states == ["pending"] and j.available and j.failed_ops == 0
    finally:
        server.remove()


async def test_polling_stands_in_while_the_listener_is_down(
    hosts: Callable[..., Awaitable[PostgresJournal]], pg_url: str
) -> None:
    a, b = await hosts("a"), await hosts("b")
    await a.changed()
    assert await a.changed() is False
    # The listening connection is cut (a proxy, a restart of the backend): until it is back,
    # changed() says "changed" at every poll, so the dispatcher looks at the journal each time.
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE query LIKE 'LISTEN%'")
    await until(lambda: not a._listening, timeout=10)
    while not a._listening:
        assert await a.changed() is True
        await asyncio.sleep(0.02)
    # Back (reconnected with backoff): quiet until another host writes, then a wake-up again.
    await a.changed()
    assert await a.changed() is False
    await b.add(make_event().to_dict(), [entry()], [], time.time())
    await until(a.changed, timeout=10)


@pytest.mark.parametrize("old", [2, 3, 4])
async def test_migrate_upgrades_schema_2_to_4_and_the_journal_works_on_it(
    pg_server: PgServer, old: int
) -> None:
    # Schema 3 adds the functions each pipelined operation calls (trapd_add_entry, trapd_claim)
    # and locks by trapd_lock_id; 4 adds trapd_run (a batch in one call): a database of an
    # earlier version keeps its rows and works.
    url = pg_server.new_database(migrated=False)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE trapd_meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        for version, sql in MIGRATIONS:
            if version <= old:
                conn.execute(sql.encode())
        conn.execute("INSERT INTO trapd_meta VALUES ('schema', %s)", (str(old),))
        conn.execute(
            "INSERT INTO trapd_actions (event_id, received_at, source, rule, action, idx, params, key, mode, "
            "state, max_attempts, backoff, max_age, age_from, created, due, caps) VALUES "
            "('e', 1, 's', 'r', 'log', 0, '{}', 'k', 'enforce', 'pending', 1, 1, 1, 1, 1, 1, '[]'), "
            "('e', 1, 's', 'r', 'log', 0, '{}', 'k', 'enforce', 'pending', 1, 1, 1, 1, 1, 1, '[]')"
        )
    with pytest.raises(JournalError, match="older than this trapd"):
        await PostgresJournal(url).open()
    assert await migrate(url) == (old, SCHEMA_VERSION)
    async with PostgresJournal(url, instance="a") as j:
        now = time.time()
        assert (await j.claim(2, now)).outcome == "wait"  # the old rows keep their key order
        got = await j.claim(1, now)
        assert got.outcome == "running" and got.attempts == 1
        r = await j.add(
            make_event().to_dict(),
            [entry(key="k", claim=True, due=now), entry(key="new", claim=True, due=now)],
            [],
            now,
        )
        assert r.states == ["pending", "running"]  # "k" is busy with 1; "new" is free
        await j.finish(1, "done", now)
        assert (await j.claim(2, now)).outcome == "running"


async def test_lock_ids_agree_between_trapd_and_the_database(pg_url: str) -> None:
    # The writer takes a batch's add locks up front by ids computed here; trapd_add_entry and
    # trapd_claim lock by trapd_lock_id in the database: the same key must give the same lock.
    keys = [("key", "mac:00:11:22:33:44:55"), ("once", "π \x1f x"), ("copy", ""), ("cap", "global/x\x1fsw1")]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        for ns, key in keys:
            row = conn.execute("SELECT trapd_lock_id(%s, %s)", (ns, key)).fetchone()
            assert row is not None and row[0] == _lock_id(ns, key)


async def test_an_operation_that_fails_in_a_pipelined_batch_fails_alone(
    hosts: Callable[..., Awaitable[PostgresJournal]],
) -> None:
    a = await hosts("a")
    now = time.time()
    first = await a.add(make_event().to_dict(), [entry(key="f")], [], now)
    assert (await a.claim(first.ids[0], now)).outcome == "running"
    # Queued together, they share one batch (one pipeline): the bad add (an index the column
    # cannot hold) fails, the database refuses it; the others commit, in their order.
    good = a.add_soon(make_event().to_dict(), [entry(key="g")], [], now)
    bad = a.add_soon(make_event().to_dict(), [entry(key="b", index=2**40)], [], now)
    done = a.finish_soon(first.ids[0], "done", now, {"ok": True})
    after = a.add_soon(make_event().to_dict(), [entry(key="g")], [], now)
    results = await asyncio.gather(good, bad, done, after, return_exceptions=True)
    assert isinstance(results[1], psycopg.Error), results[1]
    assert [type(r) for r in (results[0], results[3])] == [AddResult, AddResult]
    assert results[2] is None
    g1, g2 = results[0], results[3]
    assert isinstance(g1, AddResult) and isinstance(g2, AddResult)
    assert g1.ids[0] < g2.ids[0] and g1.states == g2.states == ["pending"]
    e = await a.get(first.ids[0])
    assert e is not None and e.state == "done" and e.result == {"ok": True}
    assert a.available and (await a.counts())["pending"] == 2


async def test_a_value_json_cannot_carry_is_journaled_by_statements(
    hosts: Callable[..., Awaitable[PostgresJournal]],
) -> None:
    # A batch of the usual operations goes to the database as one JSON array (trapd_run); an
    # infinite max age has no JSON form, so its batch is sent as statements, with the same result.
    a = await hosts("a")
    now = time.time()
    r = await a.add(
        make_event().to_dict(), [entry(key="inf", max_age=float("inf"), due=now, claim=True)], [], now
    )
    assert r.states == ["running"]
    await a.finish(r.ids[0], "done", now, {"n": 1})
    e = await a.get(r.ids[0])
    assert e is not None and e.max_age == float("inf") and e.state == "done" and e.result == {"n": 1}


async def test_a_batch_mixing_reads_and_the_usual_operations_keeps_their_order(
    hosts: Callable[..., Awaitable[PostgresJournal]],
) -> None:
    # One batch: adds (one trapd_run call each run of them), then a read that must see them
    # (statements, after the pipeline synced), then more adds the read must not see, a count.
    a = await hosts("a")
    now = time.time()
    r1, due, r2, counts = await asyncio.gather(
        a.add(make_event().to_dict(), [entry(key="m1", due=now)], [], now),
        a.due(now + 1, 10),
        a.add(make_event().to_dict(), [entry(key="m2", due=now), entry(key="m2", due=now)], [], now),
        a.counts(),
    )
    assert [e.id for e in due[0]] == r1.ids and r1.states == ["pending"]
    assert r2.states == ["pending", "pending"] and r2.ids[0] > r1.ids[0]
    assert counts["pending"] == 3
    assert a.commits == 1  # it was one batch: else this test does not test what it says


async def test_caps_keep_their_count_across_the_upgrade_to_slots(pg_server: PgServer) -> None:
    # Schema 5 counts caps in slots (trapd_cap_slots) instead of one row per start: the starts
    # a schema-4 database counted in the current window still count after `trapd journal migrate`.
    url = pg_server.new_database(migrated=False)
    now = time.time()
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("CREATE TABLE trapd_meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        for version, sql in MIGRATIONS:
            if version <= 4:
                conn.execute(sql.encode())
        conn.execute("INSERT INTO trapd_meta VALUES ('schema', '4')")
        for at in (now - 50, now - 20, now - 5, now - 500):  # three in the minute, one long before
            conn.execute(
                "INSERT INTO trapd_cap_hits (cap, key, at, expires) "
                "VALUES ('global/deletions', 'sw1', %s, %s)",
                (at, at + 60.0),
            )
    assert await migrate(url) == (4, SCHEMA_VERSION)
    async with PostgresJournal(url, instance="a") as j:
        cap = CapCheck("global/deletions", "sw1", limit=5, per=60.0, hold_for=600.0)
        other = CapCheck("global/deletions", "sw2", limit=5, per=60.0, hold_for=600.0)
        r = await j.add(make_event().to_dict(), [entry(key=f"k{i}", caps=(cap,)) for i in range(4)], [], now)
        outcomes = [(await j.claim(i, now)).outcome for i in r.ids]
        assert outcomes == ["running", "running", "held", "held"]  # 3 counted before + 2 = 5
        r = await j.add(
            make_event().to_dict(), [entry(key=f"o{i}", caps=(other,)) for i in range(6)], [], now
        )
        outcomes = [(await j.claim(i, now)).outcome for i in r.ids]
        assert outcomes == ["running"] * 5 + ["held"]  # another key: a window of its own
        assert await j.prune(now - 3600, now + 3600) == 0  # every slot expired: pruned, no error
        with psycopg.connect(url, autocommit=True) as conn:
            left = conn.execute("SELECT count(*) FROM trapd_cap_slots").fetchone()
            assert left is not None and left[0] == 0


async def test_hostile_values_stay_in_their_slot_through_the_batch_query(
    hosts: Callable[..., Awaitable[PostgresJournal]],
) -> None:
    # The usual batch is one query string with its parameters bound as literals (one JSON
    # array for trapd_run): quotes, backslashes, placeholders, SQL and non-ASCII text from a
    # trap must come back as they went in, and run nothing.
    a = await hosts("a")
    nasty = "x'); DROP TABLE trapd_actions; --\\ %s %(x)s $1 $$ \" \\' ü 🙂 \u2028"
    ev = make_event(varbinds=[("IF-MIB::ifAlias", "OctetString", nasty)]).to_dict()
    now = time.time()
    e = entry(key=nasty, params={"message": nasty}, once_key=nasty, once_within=60.0, due=now, claim=True)
    r = await a.add(ev, [e], [], now)
    assert r.states == ["running"]
    await a.finish(r.ids[0], "done", now, {"said": nasty}, nasty)
    got = await a.get(r.ids[0])
    assert got is not None and got.event is not None
    assert got.key == nasty and got.once_key == nasty and got.params == {"message": nasty}
    assert got.result == {"said": nasty} and got.last_error == nasty
    assert json.loads(got.event)["varbinds"][0]["value"] == nasty
    dup = await a.add(make_event().to_dict(), [entry(key="other", once_key=nasty, once_within=60.0)], [], now)
    assert dup.states == ["cancelled"] and dup.duplicate_of == r.ids
    assert (await a.counts())["running"] == 0


# ---------------------------------------------------------------- a commit whose answer is lost


@pytest.fixture
async def behind_proxy(pg_server: PgServer) -> AsyncIterator[tuple[str, PgProxy, str]]:
    """(trapd's URL through a PgProxy, the proxy, a direct URL for the test's own looks)."""
    direct = pg_server.new_database()
    proxy = PgProxy(pg_server)
    try:
        yield proxy.url(direct.split("@/", 1)[1].split("?", 1)[0]), proxy, direct
    finally:
        proxy.close()


def _row(url: str, id_: int) -> tuple[Any, ...]:
    with psycopg.connect(url, autocommit=True) as conn:
        got = conn.execute(
            "SELECT state, owner, attempts FROM trapd_actions WHERE id = %s", (id_,)
        ).fetchone()
    assert got is not None
    return tuple(got)


async def _eventually(check: Callable[[], bool], timeout: float) -> bool:
    """Poll ``check`` in a thread (it blocks: a direct connection) until true or the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await asyncio.to_thread(check):
            return True
        await asyncio.sleep(0.1)
    return False


async def test_a_claim_committed_while_its_answer_was_lost_is_put_back_without_a_restart(
    behind_proxy: tuple[str, PgProxy, str],
) -> None:
    # The claim committed on the server, the connection broke before trapd read the answer: trapd
    # was told it failed, so it did not run the action, yet the row said running, owned by this
    # host, and its lease loop renewed it: the action never ran (and its key's later actions
    # waited) until trapd restarted. The host knows which claims it holds; one it does not hold
    # never started here, so it goes back in line (not held for an operator: it never ran).
    url, proxy, direct = behind_proxy
    async with PostgresJournal(url, instance="a", lease=3.0) as j:
        await j.recover(time.time(), hold_unless=[])  # hold-unsafe, nothing idempotent
        now = time.time()
        (id_,) = (await j.add(make_event().to_dict(), [entry(key="k")], [], now)).ids
        fault = proxy.arm(f'["c",{id_},'.encode())
        with pytest.raises(JournalError):
            await j.claim(id_, time.time())
        assert fault.done.is_set()
        assert _row(direct, id_) == ("running", "a", 1)  # committed all the same
        assert await _eventually(lambda: _row(direct, id_)[0] == "pending", timeout=30)
        assert _row(direct, id_)[2] == 0  # the attempt that never started is not counted
        e = await j.get(id_)
        assert e is not None and "not confirmed" in (e.last_error or "")
        got = await j.claim(id_, time.time())
        assert (got.outcome, got.attempts) == ("running", 1)


async def test_a_claim_at_insert_committed_while_its_answer_was_lost_is_put_back(
    behind_proxy: tuple[str, PgProxy, str],
) -> None:
    url, proxy, direct = behind_proxy
    async with PostgresJournal(url, instance="a", lease=3.0) as j:
        await j.recover(time.time())
        ev = make_event().to_dict()
        fault = proxy.arm(str(ev["id"]).encode())
        now = time.time()
        with pytest.raises(JournalError):
            await j.add(ev, [entry(key="k", claim=True, due=now)], [], now)
        assert fault.done.is_set()
        with psycopg.connect(direct, autocommit=True) as conn:
            found = conn.execute("SELECT id FROM trapd_actions WHERE event_id = %s", (ev["id"],)).fetchone()
        assert found is not None
        (id_,) = found
        # Committed as a's running claim; on a loaded machine the journal may have put it back
        # already (its next renewal), so either is right here: what must follow is "pending".
        state, owner, _ = _row(direct, id_)
        assert (state, owner) == ("running", "a") or state == "pending"
        assert await _eventually(lambda: _row(direct, id_)[0] == "pending", timeout=30)
        assert (await j.claim(id_, time.time())).outcome == "running"


async def test_a_claim_whose_answer_comes_late_stays_with_its_host(
    behind_proxy: tuple[str, PgProxy, str], pg_server: PgServer
) -> None:
    # The other side of the same coin: a claim committed whose answer is only slow (well past the
    # lease) is this host's, running; neither this host nor another may put it back meanwhile.
    url, proxy, direct = behind_proxy
    async with (
        PostgresJournal(url, instance="a", lease=3.0) as a,
        PostgresJournal(direct, instance="b", lease=3.0) as b,
    ):
        await a.recover(time.time())
        await b.recover(time.time())
        now = time.time()
        (id_,) = (await a.add(make_event().to_dict(), [entry(key="k")], [], now)).ids
        fault = proxy.arm(f'["c",{id_},'.encode(), delay=8.0)
        got = await a.claim(id_, time.time())
        assert fault.hit.is_set() and (got.outcome, got.attempts) == ("running", 1)
        assert _row(direct, id_) == ("running", "a", 1)
        await asyncio.sleep(4.0)  # renewed all along: still a's
        assert _row(direct, id_) == ("running", "a", 1) and a.taken_over == b.taken_over == 0
        await a.finish(id_, "done", time.time())
        assert _row(direct, id_)[0] == "done"


async def test_a_dispatcher_runs_once_the_action_whose_claim_answer_was_lost(
    behind_proxy: tuple[str, PgProxy, str],
) -> None:
    url, proxy, _ = behind_proxy
    ran: list[int] = []

    @action("count", params={"n": Param("integer", required=True)}, idempotent=False)
    async def count(params: dict[str, Any], ctx: ActionContext) -> None:
        """Test action: counts its runs."""
        ran.append(params["n"])

    config = DispatchConfig(
        workers=2, queue_size=100, interrupted="hold-unsafe", journal=JournalConfig(poll_interval=0.2)
    )
    async with PostgresJournal(url, instance="a", lease=3.0) as j:
        d = Dispatcher(config, j, {"count": count}, kea=None)
        await d.start()
        try:
            await until(lambda: len(d._idle) == 2)  # so that the submit claims at insert
            ev = make_event()
            proxy.arm(str(ev.id).encode())  # the submit's journal write: its claim at insert
            with capture_logs() as logs:
                with pytest.raises(JournalError):
                    await d.submit(ev, make_outcome(plan("count", {"n": 1}, key="port")))
                # Later actions of the key wait behind it, and then run too.
                await until(lambda: j.available, timeout=10)
                await d.submit(make_event(), make_outcome(plan("count", {"n": 2}, key="port")))
                await until(lambda: len(ran) >= 2, timeout=30)
                await asyncio.sleep(1.0)
                assert ran == [1, 2]
                # Said once, as what it was: not as a takeover from another host.
                await until(lambda: any("answer the database lost" in e["event"] for e in logs), timeout=10)
            put_back = [e for e in logs if "answer the database lost" in e["event"]]
            assert [(e["log_level"], e["count"]) for e in put_back] == [("warning", 1)]
            assert not any("took over" in e["event"] for e in logs)
            # Counted for the metrics (trapd_journal_claims_put_back_total), not as a takeover.
            health = j.health()
            assert (health.put_back, health.taken_over) == (1, 0), health
        finally:
            await d.stop()


async def test_a_wake_up_that_arrives_while_the_dispatcher_looks_is_not_lost(
    hosts: Callable[..., Awaitable[PostgresJournal]],
) -> None:
    # An operator retries an action from the other host (`trapd journal retry` there): due at the
    # retry's time, committed while this host's look at the journal is on its way back, so its
    # answer does not have it and it is not "due later" either. The NOTIFY arrives meanwhile and
    # wakes the dispatcher, which then took the look's answer ("nothing more") as the last word:
    # the action waited for some unrelated event (the poll stays quiet: it was a NOTIFY).
    ran: list[int] = []

    @action("count", params={"n": Param("integer", required=True)})
    async def count(params: dict[str, Any], ctx: ActionContext) -> None:
        """Test action: counts its runs."""
        ran.append(params["n"])

    a, b = await hosts("a"), await hosts("b")
    now = a.now()
    dead = entry(action="count", params={"n": 1}, state="dead", due=now)
    (id_,) = (await a.add(make_event().to_dict(), [dead], [], now)).ids
    config = DispatchConfig(workers=1, queue_size=10, journal=JournalConfig(poll_interval=3600.0))
    d = Dispatcher(config, a, {"count": count}, kea=None)
    woken: list[float] = []
    a.watch(lambda: woken.append(time.monotonic()))
    looks: list[float] = []
    real_due = a.due

    async def due_while_the_other_host_commits(
        at: float, limit: int, skip: frozenset[int] = frozenset()
    ) -> tuple[list[Any], bool]:
        answer = await real_due(at, limit, skip)
        looks.append(at)
        if len(looks) == 1:
            woken.clear()
            assert await b.retry([id_], at - 0.5) == [id_]  # its time taken before this look's
            await until(lambda: bool(woken), timeout=10)  # the wake-up came in meanwhile
        return answer

    a.due = due_while_the_other_host_commits  # type: ignore[method-assign]
    await d.start()
    try:
        await until(lambda: bool(looks), timeout=10)
        await until(lambda: ran == [1], timeout=15)
    finally:
        await d.stop()


async def test_a_due_row_whose_json_cannot_be_decoded_is_set_aside_and_the_others_are_read(
    hosts: Callable[..., Awaitable[PostgresJournal]], pg_url: str
) -> None:
    """params is a text column: JSON cut short (a row altered by hand, a restore gone wrong)
    can be stored, and made every due read fail, so no action of any host ran. The row is set
    aside (dead, saying why) once, by one host; the others are read; health says so."""
    a, b = await hosts("a"), await hosts("b")
    now = time.time()
    ids = [
        (await a.add(make_event().to_dict(), [entry(key=f"k{i}", due=now)], [], now)).ids[0] for i in range(3)
    ]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute("""UPDATE trapd_actions SET params = '{"message": "h' WHERE id = %s""", (ids[1],))
        with pytest.raises(psycopg.DataError):  # a UTF8 database refuses the other kind of damage
            conn.execute(
                "UPDATE trapd_actions SET params = convert_from('\\x7b22ff7d'::bytea, 'UTF8') WHERE id = %s",
                (ids[1],),
            )
    assert a.health().available
    got, _ = await a.due(now + 1, 10)
    assert [e.id for e in got] == [ids[0], ids[2]]
    (aside,) = a.set_aside()
    assert aside.id == ids[1] and aside.fields["key"] == "k1" and aside.fields["rule"] == "r1", aside
    assert "JSONDecodeError" in aside.problem and '"h' not in aside.problem, aside
    assert a.set_aside() == []  # reported once
    with psycopg.connect(pg_url, autocommit=True) as conn:
        state, last_error = conn.execute(
            "SELECT state, last_error FROM trapd_actions WHERE id = %s", (ids[1],)
        ).fetchone() or (None, None)
    assert state == "dead" and "could not be read back" in str(last_error), (state, last_error)
    health = a.health()
    assert not health.available and "could not be read back" in str(health.problem), health
    assert health.unreadable == 1
    # The other host no longer meets it: dead rows are not due.
    got_b, _ = await b.due(now + 1, 10)
    assert [e.id for e in got_b] == [ids[0], ids[2]] and b.set_aside() == [] and b.health().available
    # `trapd journal show/list` (lenient) show what is left of it, the damage named; a strict read fails.
    with pytest.raises(ValueError):
        await b.get(ids[1])
    b.lenient = True
    shown = await b.get(ids[1])
    assert shown is not None and shown.key == "k1" and shown.state == "dead", shown
    assert shown.params == {"unreadable": '{"message": "h'}, shown
    assert str(shown.last_error).startswith("damaged row: column 'params': JSONDecodeError"), shown
    listed = await b.history(HistoryFilter(limit=10))
    assert sorted(e.id for e in listed) == sorted(ids), listed


async def test_a_held_row_whose_json_cannot_be_decoded_is_set_aside_and_the_others_expire(
    hosts: Callable[..., Awaitable[PostgresJournal]], pg_url: str
) -> None:
    """Held actions whose hold ran out are read back to be logged; one whose JSON is cut short
    failed that read on every poll (a ValueError: not even a JournalError), so none expired. It
    is set aside once, like a due row; the others expire."""
    a = await hosts("a")
    now = time.time()
    ids = [
        (await a.add(make_event().to_dict(), [entry(key=f"k{i}", due=now + 3600)], [], now)).ids[0]
        for i in range(3)
    ]
    with psycopg.connect(pg_url, autocommit=True) as conn:
        conn.execute(
            "UPDATE trapd_actions SET state = 'held', held_by = 'r1/cap', due = %s WHERE id = ANY(%s)",
            (now - 1, ids[:2]),
        )
        conn.execute("""UPDATE trapd_actions SET params = '{"message": "h' WHERE id = %s""", (ids[1],))
    # What an operator's retry asks first (it refuses such a row: it would only be set aside again).
    assert list(await a.unreadable_rows(ids)) == [ids[1]]
    expired = await a.expire_held(time.time())
    assert [(e.id, e.state) for e in expired] == [(ids[0], "held")], expired
    (aside,) = a.set_aside()
    assert aside.id == ids[1] and aside.fields["key"] == "k1" and "JSONDecodeError" in aside.problem, aside
    with psycopg.connect(pg_url, autocommit=True) as conn:
        rows = dict(conn.execute(
            "SELECT id, state || ': ' || last_error FROM trapd_actions WHERE id = ANY(%s)", (ids,)
        ).fetchall())  # fmt: skip
    assert rows[ids[0]].startswith("dead: held by r1/cap"), rows
    assert rows[ids[1]].startswith("dead: could not be read back"), rows
    assert rows[ids[2]] is None, rows  # scheduled, no error
    health = a.health()
    assert not health.available and health.unreadable == 1, health
    assert await a.expire_held(time.time()) == [] and a.set_aside() == []  # once


async def test_a_lone_host_and_a_namesakes_worker_notice_each_other_while_running(
    hosts: Callable[..., Awaitable[PostgresJournal]], pg_url: str
) -> None:
    """dhcp1 runs alone; its renewals are away for a lease (a pause: its registration made stale
    here), and a host with ``service.workers`` under the same name starts meanwhile: its worker
    registers as dhcp1/worker-0, and its supervisor recovers every dhcp1 row as its own. The
    lone host's own registration is untouched, so finding it taken is not enough: each checks,
    at its renewal, for any live name it would recover or renew as its own."""
    lone = await hosts("dhcp1", lease=30.0)
    await lone.recover(time.time())
    with psycopg.connect(pg_url) as conn:
        conn.execute("UPDATE trapd_instances SET seen = seen - 100")
    worker = await hosts("dhcp1", owner="worker-0", lease=30.0)
    await worker.recover(time.time())
    for j in (lone, worker):
        assert j.health().name_conflict is None
    await lone._renew(time.time(), take_over=False)
    await worker._renew(time.time(), take_over=False)
    for j in (lone, worker):
        conflict = j.health().name_conflict
        assert conflict is not None and "dhcp1" in conflict, j.owner


async def test_close_ends_a_lease_loop_that_lost_its_cancel(pg_url: str) -> None:
    # Python 3.11's asyncio.wait_for, with which psycopg_pool waits for a connection, drops a
    # cancel that comes in the turn the connection does (tests/test_cancelling.py). The lease
    # loop then went on renewing, and close() waited for it for ever (a hung test under load).
    # Here the renewal drops the cancel that close() sends, as that race does.
    j = PostgresJournal(pg_url, instance="a", lease=0.3)
    renew = j._renew
    in_renewal = asyncio.Event()
    lost: list[int] = []

    async def renew_dropping_a_cancel(now: float, *, take_over: bool) -> Any:
        taken = await renew(now, take_over=take_over)
        if not lost:
            in_renewal.set()
            try:
                await asyncio.sleep(3600)  # stands for the pool's wait for a connection
            except asyncio.CancelledError:
                lost.append(1)  # the race: the connection came, the cancel is gone
        return taken

    j._renew = renew_dropping_a_cancel  # type: ignore[method-assign]
    await j.open()
    await asyncio.wait_for(in_renewal.wait(), timeout=30)
    closing = asyncio.create_task(j.close())
    # Waited for from outside: a timeout that cancelled close() would cancel the loop again itself.
    await asyncio.wait([closing], timeout=30)
    assert lost == [1], "the renewal did not drop a cancel: the test set up nothing"
    assert closing.done(), "close() still waits for the lease loop"
    closing.result()


def test_tcp_timeouts_follow_the_lease_unless_the_url_sets_them() -> None:
    """A partition must show within about a renewal interval (tests/test_pair.py, the cut-off
    host): TCP keepalives and user timeout of a third of the lease, at most 10 s; a url (or
    key/value string) that sets one keeps its own."""
    from psycopg.conninfo import conninfo_to_dict

    from trapd.dispatch.journal.postgres import _network_timeouts

    got = conninfo_to_dict(_network_timeouts("postgresql://trapd@db.example.net/trapd", 30.0))
    assert (got["tcp_user_timeout"], got["keepalives_idle"], got["keepalives"]) == ("10000", "10", "1")
    assert (
        conninfo_to_dict(_network_timeouts("host=/run/postgresql dbname=t", 3.0))["tcp_user_timeout"]
        == "1000"
    )
    own = conninfo_to_dict(_network_timeouts("postgresql://h/t?tcp_user_timeout=60000&keepalives=0", 30.0))
    assert (own["tcp_user_timeout"], own["keepalives"], own["keepalives_idle"]) == ("60000", "0", "10")


async def test_an_end_after_a_takeover_is_noted_on_the_row_once(
    pg_url: str, hosts: Callable[..., Awaitable[PostgresJournal]]
) -> None:
    """Host a ran an action to its end after b had taken its row over (held as interrupted): the
    end changed nothing and was dropped without a word, so an operator released the held row and
    it ran twice. It is noted on the row and in a's notices, by trapd_run (the usual batch) and by
    the statement of a batch run one operation at a time; an end written twice (its first
    answer lost) notes nothing."""
    from trapd.dispatch.journal.postgres import _op_finish

    a = await hosts("dhcp1")
    now = time.time()
    r = await a.add(make_event().to_dict(), [entry(key="t1"), entry(key="t2"), entry(key="t3")], [], now)
    for i in r.ids:
        assert (await a.claim(i, now)).outcome == "running"
    with psycopg.connect(pg_url, autocommit=True) as conn:  # as dhcp2's takeover with hold-unsafe leaves it
        conn.execute(
            "UPDATE trapd_actions SET state = 'held', held_by = 'interrupted', lease_until = NULL, "
            "last_error = 'interrupted while running' WHERE id = ANY(%s)",
            (r.ids[:2],),
        )
    await a.finish(r.ids[0], "done", now + 1)
    async with await psycopg.AsyncConnection.connect(pg_url, autocommit=True) as conn:
        late = await (await _op_finish(conn, r.ids[1], "dead", now + 1, None, "refused", None, "dhcp1"))()
        assert late is True
        await a.finish(r.ids[2], "done", now + 1)  # its own, in time
        again = await (await _op_finish(conn, r.ids[2], "done", now + 1, None, None, None, "dhcp1"))()
        assert again is False
    e0, e1, e2 = [await a.get(i) for i in r.ids]
    assert e0 is not None and e0.state == "held" and e0.last_error is not None
    assert e0.last_error == "interrupted while running; dhcp1 ran it to its end after the takeover: done"
    assert e1 is not None and e1.last_error is not None
    assert e1.last_error.endswith("dhcp1 ran it to its end after the takeover: dead (refused)")
    assert e2 is not None and e2.state == "done" and e2.last_error is None
    (notice,) = a.notices()  # the one through a's writer; _op_finish alone reports to its caller
    assert notice.level == "warning" and notice.fields["action_id"] == str(r.ids[0])
    assert notice.fields["state"] == "done" and f"trapd journal show {r.ids[0]}" in notice.fields["hint"]


async def test_a_statement_timeout_fails_its_operation_not_the_journal(pg_url: str) -> None:
    """A database with a statement_timeout (an administrator's setting for every role), and one
    operation that waits past it (a claim behind a row another session keeps locked). The
    timeout was taken for an outage: the connection dropped, the journal unavailable, and every
    write of the next 0.5 s (more if it came again) failed at once, so traps' outcomes were
    lost for one slow statement. Now the operation that timed out fails alone."""
    db = pg_url.split("@/")[1].split("?")[0]
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE \"{db}\" SET statement_timeout = '300ms'")
    async with PostgresJournal(pg_url, instance="a") as j:
        now = time.time()
        first = await j.add(make_event().to_dict(), [entry(key="k1")], [], now)
        with psycopg.connect(pg_url) as locker:  # a transaction that keeps the row locked
            locker.execute("SET statement_timeout = 0")
            locker.execute("SELECT 1 FROM trapd_actions WHERE id = %s FOR UPDATE", (first.ids[0],))
            claim = asyncio.ensure_future(j.claim(first.ids[0], now))
            await asyncio.sleep(0.05)
            other = await j.add(make_event().to_dict(), [entry(key="k2")], [], time.time())
            with pytest.raises(JournalError, match="statement timeout"):
                await claim
            assert j.available, j.last_error
            after = await j.add(make_event().to_dict(), [entry(key="k3")], [], time.time())
            assert other.states == after.states == ["pending"]
            locker.rollback()
        assert (await j.claim(first.ids[0], time.time())).outcome == "running"


async def test_a_statement_timeout_in_the_batch_s_lock_wait_fails_its_add_not_the_journal(
    pg_url: str,
) -> None:
    """The same statement_timeout met where a batch first takes its adds' key locks (_prelock:
    another session holds the key's lock, as the other host's transaction does while it adds
    or claims that key, or a session stuck in one): QueryCanceled is an OperationalError, so it
    was taken for a broken connection: the connection dropped, the journal unavailable
    ('journal database unavailable: canceling statement due to statement timeout'), /healthz
    503, and the adds of every other key failed with it. Now the add that waited fails alone,
    saying why; the journal stays available and the other keys' adds go through."""
    db = pg_url.split("@/")[1].split("?")[0]
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute(f"ALTER DATABASE \"{db}\" SET statement_timeout = '300ms'")
    async with PostgresJournal(pg_url, instance="a") as j:
        with psycopg.connect(pg_url) as locker:  # the other host's transaction on key k1
            locker.execute("SET statement_timeout = 0")
            locker.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_id("key", "k1"),))
            now = time.time()
            waits = asyncio.ensure_future(
                j.add(make_event().to_dict(), [entry(key="k1", claim=True, due=now - 1)], [], now)
            )
            other = asyncio.ensure_future(
                j.add(make_event().to_dict(), [entry(key="k2", claim=True, due=now - 1)], [], now)
            )
            with pytest.raises(JournalError, match="statement timeout"):
                await waits
            assert j.available, j.last_error
            assert (await other).states == ["running"]
            now = time.time()
            after = await j.add(make_event().to_dict(), [entry(key="k3", claim=True, due=now - 1)], [], now)
            assert after.states == ["running"]
            assert j.available, j.last_error
            locker.rollback()
        again = await j.add(
            make_event().to_dict(), [entry(key="k1", claim=True, due=now - 1)], [], time.time()
        )
        assert again.states == ["running"]


async def test_a_newer_schema_that_declares_this_trapd_compatible_is_run_on_with_a_warning(
    pg_server: PgServer,
) -> None:
    """A pair upgraded one host at a time: once the upgraded host migrated the schema, the host
    still on the older trapd refused to start again (a crash, the watchdog, a reboot) with
    "newer than this trapd knows", though the migrations since were additive and it had run on
    them until then; the pair was down to one host until it was upgraded too. The schema now
    says which trapd it is compatible with (trapd_meta 'compatible': the oldest schema whose
    trapd runs on it, written by migrate): a trapd at or past that starts on it and warns once
    to upgrade it; past what it declares, it is refused as before."""
    from trapd.dispatch.journal.postgres import COMPATIBLE_SINCE

    url = pg_server.new_database(migrated=False)
    await migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        got = dict(conn.execute("SELECT k, v FROM trapd_meta").fetchall())
        assert got["compatible"] == str(COMPATIBLE_SINCE), got
        # A later release's additive migration (SCHEMA_VERSION + 1, compatible from this one).
        conn.execute("UPDATE trapd_meta SET v = %s WHERE k = 'schema'", (str(SCHEMA_VERSION + 1),))
        conn.execute("UPDATE trapd_meta SET v = %s WHERE k = 'compatible'", (str(SCHEMA_VERSION),))
    async with PostgresJournal(url, instance="older") as j:
        r = await j.add(make_event().to_dict(), [entry(key="k1")], [], time.time())
        assert r.states == ["pending"]
        (notice,) = j.notices()
        assert notice.level == "warning" and "newer than this trapd" in notice.event, notice
        assert str(SCHEMA_VERSION + 1) in notice.fields["schema"] and "upgrade" in notice.fields["hint"]
    with psycopg.connect(url, autocommit=True) as conn:  # and one that is not: refused, as before
        conn.execute("UPDATE trapd_meta SET v = %s WHERE k = 'compatible'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(JournalError, match="newer than this trapd knows"):
        await PostgresJournal(url).open()
    with pytest.raises(JournalError, match="newer than this trapd knows"):
        await migrate(url)  # never downgraded


async def test_an_older_schema_s_refusal_says_whether_the_other_host_keeps_running(
    pg_server: PgServer,
) -> None:
    """Forgetting `trapd journal migrate` on an upgrade: the refusal names the command, and on a
    pair whether the host still on the older trapd keeps running on the migrated schema (the
    migrations since its schema are additive) or must be stopped first."""
    from trapd.dispatch.journal.postgres import COMPATIBLE_SINCE

    url = pg_server.new_database(migrated=True)
    for old, says in ((COMPATIBLE_SINCE, "keeps running"), (COMPATIBLE_SINCE - 1, "stop it first")):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("UPDATE trapd_meta SET v = %s WHERE k = 'schema'", (str(old),))
        with pytest.raises(JournalError) as refused:
            await PostgresJournal(url).open()
        text = str(refused.value)
        assert f"schema {old}, older than this trapd" in text and "trapd journal migrate" in text, text
        assert says in text, text


def test_migrate_of_an_older_schema_says_what_of_the_older_host(
    pg_server: PgServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trapd.cli import main
    from trapd.dispatch.journal.postgres import COMPATIBLE_SINCE

    url = pg_server.new_database(migrated=False)
    with psycopg.connect(url, autocommit=True) as conn:  # the schema a release of COMPATIBLE_SINCE made
        conn.execute("CREATE TABLE trapd_meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        for version, sql in MIGRATIONS:
            if version <= COMPATIBLE_SINCE:
                conn.execute(sql.encode())
        conn.execute("INSERT INTO trapd_meta VALUES ('schema', %s)", (str(COMPATIBLE_SINCE),))
    cfg = tmp_path / "trapd.yaml"
    cfg.write_text(json.dumps({"dispatch": {"journal": {"url": url}}}))
    assert main(["journal", "-c", str(cfg), "migrate"]) == 0
    out = capsys.readouterr().out
    assert f"journal schema {COMPATIBLE_SINCE} -> {SCHEMA_VERSION}" in out, out
    assert "the other host's older trapd keeps running" in out, out
