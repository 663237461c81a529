"""The journal on its own: durability contract, queries, caps, recovery, retention.

The tests that take ``journal`` run against both backends (SQLite, and a real
PostgreSQL 15 from tests/pg_harness.py); the rest are about the SQLite file.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from trapd.dispatch.journal import (
    CapCheck,
    HistoryFilter,
    Journal,
    JournalFull,
    NewEntry,
    SQLiteJournal,
)
from trapd.dispatch.testing import make_event
from trapd.event import Event


async def wait_for(check: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "not within the timeout"
        await asyncio.sleep(0.02)


def entry(action: str = "log", key: str = "k", **kw: object) -> NewEntry:
    base: dict[str, object] = dict(
        rule="r1", action=action, index=0, params={"message": "hi"}, key=key, mode="enforce", state="pending",
        due=time.time(), max_attempts=3, backoff=0.01, max_age=3600.0,
    )  # fmt: skip
    base.update(kw)
    return NewEntry(**base)  # type: ignore[arg-type]


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[], Journal]:
    """A factory of journals on one store: the SQLite file, or a fresh PostgreSQL database.

    The behaviour tests below run against both backends; each call opens another
    connection to the same journal (another process, `trapd journal`, another host).
    """
    if request.param == "sqlite":
        return lambda: SQLiteJournal(tmp_path / "journal.sqlite")
    from trapd.dispatch.journal.postgres import PostgresJournal

    url = request.getfixturevalue("pg_url")
    names = iter(range(1, 100))
    return lambda: PostgresJournal(url, instance=f"host{next(names)}")


@pytest.fixture
async def journal(backend: Callable[[], Journal]):  # type: ignore[no-untyped-def]
    j = backend()
    await j.open()
    yield j
    await j.close()


def committed_rows(journal: Journal) -> list[tuple[Any, ...]]:
    """(id, state, event_id) of every action, read through a connection of its own."""
    if isinstance(journal, SQLiteJournal):
        other = sqlite3.connect(journal.path)
        try:
            assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            return other.execute("SELECT id, state, event_id FROM actions ORDER BY id").fetchall()
        finally:
            other.close()
    import psycopg

    from trapd.dispatch.journal.postgres import PostgresJournal

    assert isinstance(journal, PostgresJournal)
    with psycopg.connect(journal.conninfo) as conn:
        return [tuple(r) for r in conn.execute("SELECT id, state, event_id FROM trapd_actions ORDER BY id")]


async def test_add_is_committed_when_it_returns(journal: Journal) -> None:
    ev = make_event()
    res = await journal.add(ev.to_dict(), [entry(), entry(key="other")], [], time.time())
    assert len(res.ids) == 2 and res.ids[0] < res.ids[1]
    # Another connection (as `trapd journal` or a restarted daemon would) sees both rows already.
    rows = committed_rows(journal)
    assert rows == [(res.ids[0], "pending", ev.id), (res.ids[1], "pending", ev.id)]
    got = await journal.get(res.ids[0])
    assert got is not None and got.event is not None and ev.id in got.event
    assert got.params == {"message": "hi"}


async def test_concurrent_adds_share_commits(journal: Journal) -> None:
    ev = make_event().to_dict()
    before = journal.commits
    results = await asyncio.gather(*(journal.add(ev, [entry()], [], time.time()) for _ in range(300)))
    ids = [r.ids[0] for r in results]
    assert len(set(ids)) == 300
    # Group commit: 300 adds issued together need far fewer than 300 transactions.
    assert journal.commits - before < 100


async def test_full_queue_refuses_instead_of_growing(tmp_path: Path) -> None:
    j = SQLiteJournal(tmp_path / "j.sqlite", max_queued=100)
    await j.open()
    # Another process holds the write lock: the writer stalls, as on a disk that cannot keep up.
    blocker = sqlite3.connect(tmp_path / "j.sqlite", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        ev = make_event().to_dict()
        futs = [asyncio.ensure_future(j.add(ev, [entry()], [], time.time())) for _ in range(100)]
        await asyncio.sleep(0.05)
        assert j.queued == 100
        with pytest.raises(JournalFull):
            await j.add(ev, [entry()], [], time.time())
        blocker.execute("COMMIT")
        await asyncio.gather(*futs)
        await j.add(ev, [entry()], [], time.time())  # room again once the writer caught up
    finally:
        blocker.close()
        await j.close()


async def test_cancel_keys_then_once_within(journal: Journal) -> None:
    now = time.time()
    ev = make_event().to_dict()
    first = await journal.add(ev, [entry(state="scheduled", due=now + 60, cancel_key="sw1:17")], [], now)
    other = await journal.add(ev, [entry(state="scheduled", due=now + 60, cancel_key="sw1:18")], [], now)
    clear = await journal.add(make_event().to_dict(), [], ["sw1:17"], now)
    assert clear.cancelled == first.ids
    assert clear.cancelled_actions == ["log"]  # the action of each cancelled row, for the metrics
    e = await journal.get(first.ids[0])
    assert e is not None and e.state == "cancelled" and "cancel key sw1:17" in (e.last_error or "")
    assert (await journal.get(other.ids[0])).state == "scheduled"  # type: ignore[union-attr]

    a = await journal.add(ev, [entry(once_key="mac:aa", once_within=300.0)], [], now)
    b = await journal.add(ev, [entry(once_key="mac:aa", once_within=300.0)], [], now + 10)
    c = await journal.add(ev, [entry(once_key="mac:aa", once_within=300.0)], [], now + 400)
    assert a.states == ["pending"] and c.states == ["pending"]
    assert b.states == ["cancelled"] and b.duplicate_of == [a.ids[0]]


async def test_due_orders_by_arrival_and_blocks_keys_behind_a_retry(journal: Journal) -> None:
    now = time.time()
    ev = make_event().to_dict()
    r = await journal.add(
        ev,
        [entry(key="A"), entry(key="B"), entry(key="A"), entry(key="C", state="scheduled", due=now + 60)],
        [],
        now,
    )
    a1, b1, a2, c1 = r.ids
    got, more = await journal.due(now + 0.001, 10)
    assert [e.id for e in got] == [a1, b1, a2] and not more
    # a1 fails and waits for a retry: a2 (same key) must not be handed out before it.
    assert (await journal.claim(a1, now)).outcome == "running"
    await journal.retry_later(a1, now + 30, "boom", None)
    got, _ = await journal.due(now + 0.001, 10)
    assert [e.id for e in got] == [b1]
    got, _ = await journal.due(now + 31, 10)
    assert [e.id for e in got] == [a1, b1, a2]
    assert await journal.next_due(now + 0.001) == pytest.approx(now + 30)
    got, more = await journal.due(now + 61, 2)
    assert len(got) == 2 and more
    assert c1 in [e.id for e in (await journal.due(now + 61, 10))[0]]


async def test_claim_holds_beyond_a_cap_and_release_exempts(journal: Journal) -> None:
    now = time.time()
    cap = CapCheck("r1/deletions", "sw1", limit=2, per=60.0, hold_for=600.0)
    r = await journal.add(make_event().to_dict(), [entry(key=str(i), caps=(cap,)) for i in range(3)], [], now)
    outcomes = [(await journal.claim(i, now)).outcome for i in r.ids]
    assert outcomes == ["running", "running", "held"]
    held = await journal.get(r.ids[2])
    assert held is not None and held.state == "held" and held.held_by == "r1/deletions"
    assert held.due == pytest.approx(now + 600)
    # A retry of a counted action is not counted again.
    await journal.retry_later(r.ids[0], now, "x", None)
    assert (await journal.claim(r.ids[0], now)).outcome == "running"
    assert await journal.release(now, rule="other-rule") == []
    assert await journal.release(now) == [r.ids[2]]
    assert (await journal.claim(r.ids[2], now)).outcome == "running"  # exempt from the cap now
    # Outside the window the cap has room again.
    r2 = await journal.add(make_event().to_dict(), [entry(caps=(cap,))], [], now)
    assert (await journal.claim(r2.ids[0], now + 61)).outcome == "running"


async def test_an_insert_claims_capped_actions_while_their_cap_has_room(tmp_path: Path) -> None:
    # SQLite counts caps in the insert's own transaction (one commit fewer before a capped
    # action starts); what finds the cap full is left pending for the claim to hold.
    async with SQLiteJournal(tmp_path / "journal.sqlite") as journal:
        now = time.time()
        cap = CapCheck("r1/deletions", "sw1", limit=2, per=60.0, hold_for=600.0)
        r = await journal.add(
            make_event().to_dict(),
            [entry(key=str(i), caps=(cap,), claim=True, due=now) for i in range(3)],
            [],
            now,
        )
        assert r.states == ["running", "running", "pending"]
        assert (await journal.claim(r.ids[2], now)).outcome == "held"
        # The window slides: the starts of the last `per` (plus at most 1/60 of it) count.
        later = await journal.add(
            make_event().to_dict(), [entry(key="x", caps=(cap,), claim=True, due=now)], [], now + 30
        )
        assert later.states == ["pending"]
        latest = await journal.add(
            make_event().to_dict(), [entry(key="y", caps=(cap,), claim=True, due=now)], [], now + 62
        )
        assert latest.states == ["running"]


async def test_held_actions_expire_to_dead(journal: Journal) -> None:
    now = time.time()
    cap = CapCheck("global/zero", "", limit=0, per=60.0, hold_for=5.0)
    r = await journal.add(make_event().to_dict(), [entry(caps=(cap,))], [], now)
    assert (await journal.claim(r.ids[0], now)).outcome == "held"
    assert await journal.expire_held(now + 1) == []
    expired = await journal.expire_held(now + 6)
    assert [e.id for e in expired] == r.ids
    e = await journal.get(r.ids[0])
    assert e is not None and e.state == "dead" and "not released" in (e.last_error or "")


async def test_recover_puts_interrupted_actions_back(journal: Journal) -> None:
    now = time.time()
    two = [entry(action="log"), entry(action="exec", key="x")]
    r = await journal.add(make_event().to_dict(), two, [], now)
    for i in r.ids:
        await journal.claim(i, now)
    counts = await journal.recover(now + 1, hold_unless=["log"])
    assert counts["rerun"] == 1 and counts["held"] == 1
    log_row, exec_row = [await journal.get(i) for i in r.ids]
    assert log_row is not None and log_row.state == "pending" and log_row.attempts == 1
    assert exec_row is not None and exec_row.state == "held" and exec_row.held_by == "interrupted"


async def test_operator_retry_resets_attempts_and_age(journal: Journal) -> None:
    now = time.time()
    r = await journal.add(make_event(received_at=now - 7200).to_dict(), [entry(max_age=60.0)], [], now)
    await journal.claim(r.ids[0], now)
    await journal.finish(r.ids[0], "dead", now, None, "max age")
    assert await journal.retry([r.ids[0]], now + 5) == r.ids
    e = await journal.get(r.ids[0])
    assert e is not None and e.state == "pending" and e.attempts == 0
    assert e.not_after == pytest.approx(now + 65)
    assert await journal.retry([r.ids[0]], now) == []  # pending: nothing to retry
    assert await journal.cancel(r.ids, now, "operator") == r.ids
    assert await journal.cancel(r.ids, now, "operator") == []


async def test_a_noted_partial_result_outlives_the_attempt_and_its_end_replaces_it(journal: Journal) -> None:
    # ActionContext.record: committed before the action goes on, kept through a retry (and on
    # the row while it runs), replaced by the end's result; only on a running row.
    now = time.time()
    (id_,) = (await journal.add(make_event().to_dict(), [entry()], [], now)).ids
    await journal.note(id_, {"partial": True, "leases": [{"ip-address": "10.0.0.9"}]})  # not running
    assert (await journal.get(id_)).result is None  # type: ignore[union-attr]
    await journal.claim(id_, now)
    await journal.note(id_, {"partial": True, "leases": [{"ip-address": "10.0.0.9"}]})
    await journal.retry_later(id_, now, "kea unix4 lease4-del: closed without an answer", None)
    e = await journal.get(id_)
    assert e is not None and e.state == "failed" and e.result == {
        "partial": True, "leases": [{"ip-address": "10.0.0.9"}]
    }  # fmt: skip
    await journal.claim(id_, now)
    await journal.finish(id_, "done", now, {"deleted": 0, "leases": [{"ip-address": "10.0.0.9"}]})
    e = await journal.get(id_)
    assert e is not None and e.result == {"deleted": 0, "leases": [{"ip-address": "10.0.0.9"}]}


async def test_history_filters(journal: Journal) -> None:
    now = time.time()
    sw1 = make_event(source="10.0.0.1").to_dict()
    sw2 = make_event(source="10.0.0.2").to_dict()
    await journal.add(sw1, [entry(mac="00:11:22:33:44:55", ip="10.1.0.5")], [], now - 100)
    await journal.add(sw2, [entry(rule="r2", mac="00:11:22:33:44:66")], [], now)
    assert [e.source for e in await journal.history(HistoryFilter(mac="00:11:22:33:44:55"))] == ["10.0.0.1"]
    assert [e.mac for e in await journal.history(HistoryFilter(ip="10.1.0.5"))] == ["00:11:22:33:44:55"]
    assert [e.rule for e in await journal.history(HistoryFilter(source="10.0.0.2"))] == ["r2"]
    assert len(await journal.history(HistoryFilter(rule="r1"))) == 1
    assert [e.source for e in await journal.history(HistoryFilter(since=now - 10))] == ["10.0.0.2"]
    assert [e.source for e in await journal.history(HistoryFilter(until=now - 10))] == ["10.0.0.1"]
    assert len(await journal.history(HistoryFilter(states=("pending",)))) == 2


async def test_prune_keeps_unfinished_and_recent(journal: Journal) -> None:
    now = time.time()
    ev = make_event().to_dict()
    old = await journal.add(ev, [entry(), entry()], [], now - 1000)
    await journal.claim(old.ids[0], now - 1000)
    await journal.finish(old.ids[0], "done", now - 1000, {"ok": 1})
    new = await journal.add(make_event().to_dict(), [entry()], [], now)
    await journal.claim(new.ids[0], now)
    await journal.finish(new.ids[0], "done", now)
    assert await journal.prune(now - 500, now) == 1
    assert await journal.get(old.ids[0]) is None
    assert (await journal.get(old.ids[1])) is not None  # still pending: never pruned
    assert (await journal.get(new.ids[0])) is not None


async def test_changed_sees_other_writers(journal: Journal, backend: Callable[[], Journal]) -> None:
    await journal.add(make_event().to_dict(), [entry()], [], time.time())
    await journal.changed()
    assert await journal.changed() is False
    await journal.add(make_event().to_dict(), [entry()], [], time.time())
    assert await journal.changed() is False  # our own writes are not news
    cli = backend()
    await cli.open()
    try:
        await cli.cancel([1], time.time(), "from the CLI")
    finally:
        await cli.close()
    await wait_for(journal.changed)  # SQLite: at once; PostgreSQL: when the NOTIFY arrives


async def test_failed_op_does_not_spoil_its_batch(journal: Journal) -> None:
    ev = make_event().to_dict()
    bad_event = {"id": "broken", "received_at": 1.0}  # no source: the insert raises inside the batch
    good = [journal.add(ev, [entry()], [], time.time()) for _ in range(5)]
    bad = journal.add(bad_event, [entry()], [], time.time())
    results = await asyncio.gather(bad, *good, return_exceptions=True)
    assert isinstance(results[0], Exception)
    assert all(not isinstance(r, Exception) for r in results[1:])
    assert (await journal.counts())["pending"] == 5


async def test_claim_waits_for_earlier_actions_of_its_key(journal: Journal) -> None:
    now = time.time()
    ev = make_event().to_dict()
    r = await journal.add(
        ev,
        [entry(key="A"), entry(key="B"), entry(key="A"), entry(key="C", state="scheduled", due=now + 9)],
        [],
        now,
    )
    a1, b1, a2, c1 = r.ids
    assert (await journal.claim(a2, now)).outcome == "wait"  # a1 first
    assert (await journal.claim(b1, now)).outcome == "running"  # other keys do not wait
    assert (await journal.claim(a1, now)).outcome == "running"
    assert (await journal.claim(a2, now)).outcome == "wait"  # a1 still running
    await journal.finish(a1, "done", now)
    assert (await journal.claim(a2, now)).outcome == "running"
    late = await journal.add(ev, [entry(key="C")], [], now)
    assert (await journal.claim(late.ids[0], now)).outcome == "running"  # a delayed one not yet due: no wait
    # Due now, c1 is the older one, but `late` runs (in another worker or host, it could): never
    # two at once for one key, so c1 waits for it to end.
    wait = await journal.claim(c1, now + 10)
    assert (wait.outcome, wait.blocked_by) == ("wait", "running")
    await journal.finish(late.ids[0], "done", now + 10)
    assert (await journal.claim(c1, now + 10)).outcome == "running"


async def test_an_older_action_made_runnable_waits_while_a_newer_one_of_its_key_runs(
    journal: Journal, backend: Callable[[], Journal]
) -> None:
    # A held action released and a dead one retried by an operator are older than the actions
    # of their key that ran meanwhile: while one of those runs (another worker, another host),
    # they must wait for it, not start beside it (docs/dispatch.md: never two at once for one key).
    other = backend()
    await other.open()
    try:
        now = time.time()
        zero = CapCheck("r1/approve", "", limit=0, per=60.0, hold_for=600.0)
        held, dead = (await journal.add(
            make_event().to_dict(), [entry(key="H", caps=(zero,)), entry(key="D")], [], now
        )).ids  # fmt: skip
        assert (await journal.claim(held, now)).outcome == "held"
        assert (await journal.claim(dead, now)).outcome == "running"
        await journal.finish(dead, "dead", now, None, "permanent error")
        newer = (await journal.add(make_event().to_dict(), [entry(key="H"), entry(key="D")], [], now)).ids
        for i in newer:  # held and dead do not block their key: these run, elsewhere
            assert (await other.claim(i, now)).outcome == "running"
        assert await journal.release(now, [held]) == [held]
        assert await journal.retry([dead], now) == [dead]
        for i in (held, dead):
            wait = await journal.claim(i, now)
            assert (wait.outcome, wait.blocked_by) == ("wait", "running"), i
        for i in newer:
            await other.finish(i, "done", now)
        for i in (held, dead):
            assert (await journal.claim(i, now)).outcome == "running"
    finally:
        await other.close()


async def test_new_file_is_not_world_readable(tmp_path: Path) -> None:
    async with SQLiteJournal(tmp_path / "fresh.sqlite") as j:
        await j.add(make_event().to_dict(), [entry()], [], time.time())
        assert await j.prune(time.time(), time.time()) == 0  # incremental vacuum runs inside the batch
    assert (tmp_path / "fresh.sqlite").stat().st_mode & 0o777 == 0o600  # 0600 whatever the umask
    conn = sqlite3.connect(tmp_path / "fresh.sqlite")
    assert conn.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental
    conn.close()


async def _wal_pages_after_writes(path: Path, checkpoint_interval: float | None) -> tuple[int, int]:
    """(WAL pages left, checkpoints run) after 40 rounds of 50 adds with a pause between rounds."""
    j = SQLiteJournal(path, checkpoint_interval=checkpoint_interval)
    await j.open()
    try:
        ev = make_event().to_dict()
        for _ in range(40):
            await asyncio.gather(*(j.add(ev, [entry(key=f"k{i}")], [], time.time()) for i in range(50)))
            if checkpoint_interval is None:
                await asyncio.sleep(0.02)
                continue
            # Until the checkpointer has had its turn (on a loaded machine a thread that sleeps
            # 20 ms may not run for much longer): what is measured is what a checkpoint does.
            before = j.checkpoints
            deadline = time.monotonic() + 10
            while j.checkpoints < before + 2 and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
        await asyncio.sleep(0.3)
        wal = path.with_name(path.name + "-wal")
        pages = wal.stat().st_size // 4096
        return pages, j.checkpoints
    finally:
        await j.close()


async def test_checkpoints_run_beside_the_writer_and_keep_the_wal_short(tmp_path: Path) -> None:
    # With the writer's auto-checkpoint off, the WAL would only grow; the checkpointer thread
    # copies it back into the database file, so SQLite reuses it from the start.
    pages, runs = await _wal_pages_after_writes(tmp_path / "a.sqlite", checkpoint_interval=0.02)
    assert runs > 5
    # The same writes with no checkpointer and no auto-checkpoint would leave every frame in the WAL;
    # SQLite's own auto-checkpoint (None: the old behaviour) also bounds it, at 1,000 pages.
    (tmp_path / "b").mkdir()
    unbounded = SQLiteJournal(tmp_path / "b" / "j.sqlite", checkpoint_interval=1000.0)
    await unbounded.open()
    try:
        ev = make_event().to_dict()
        for _ in range(40):
            adds = (unbounded.add(ev, [entry(key=f"k{i}")], [], time.time()) for i in range(50))
            await asyncio.gather(*adds)
        grown = (tmp_path / "b" / "j.sqlite-wal").stat().st_size // 4096
    finally:
        await unbounded.close()
    assert grown > 3 * pages, (grown, pages)
    # Closing the last connection checkpoints the rest: every row is in the database file.
    db = sqlite3.connect(tmp_path / "a.sqlite")
    assert db.execute("SELECT count(*) FROM actions").fetchone()[0] == 2000
    db.close()


async def test_the_wal_is_restarted_while_commits_never_stop(tmp_path: Path) -> None:
    # A PASSIVE checkpoint copies every frame, but SQLite writes the WAL from its start again
    # only when a write transaction begins with everything copied: under commits without a
    # pause (a storm) each checkpoint ends with newer frames behind it, so the file grew with
    # every commit (bench_soak.py: 3 GB in 3 minutes at 3,000 traps/s, no reader in the way).
    # Past wal_restart_bytes of WAL the checkpointer makes the restart happen.
    path = tmp_path / "j.sqlite"
    wal = path.with_name(path.name + "-wal")
    j = SQLiteJournal(path, checkpoint_interval=0.02, wal_restart_bytes=1 << 20)
    await j.open()
    peak = adds = 0
    try:
        ev = make_event().to_dict()

        async def adder() -> None:
            nonlocal adds
            while adds < 40_000:
                adds += 1
                await j.add(ev, [entry(key=f"k{adds}")], [], time.time())

        async def watch() -> None:
            nonlocal peak
            while adds < 40_000:
                peak = max(peak, wal.stat().st_size)
                await asyncio.sleep(0.005)

        # 64 adders: the writer always finds the next batch waiting when a commit ends.
        await asyncio.wait_for(asyncio.gather(watch(), *(adder() for _ in range(64))), 300)
        assert j.checkpoints > 5 and j.wal_restarts > 0
    finally:
        await j.close()
    written = path.stat().st_size
    assert written > 10 << 20  # what went through the WAL: 40,000 actions and their events
    # The file keeps the size of the longest stretch between two restarts: a checkpoint round
    # (20 ms, plus its copy and fsync) of commits past the 1 MiB. Without them: 35 to 81 MiB.
    assert peak < 20 << 20, (peak, written)


async def test_without_a_checkpointer_sqlite_checkpoints_in_the_commit(tmp_path: Path) -> None:
    pages, runs = await _wal_pages_after_writes(tmp_path / "c.sqlite", checkpoint_interval=None)
    assert runs == 0 and pages > 0


def stored_events(journal: Journal) -> list[str]:
    """The event data the journal holds, read through a connection of its own."""
    if isinstance(journal, SQLiteJournal):
        other = sqlite3.connect(journal.path)
        try:
            return [r[0] for r in other.execute("SELECT data FROM events")]
        finally:
            other.close()
    import psycopg

    from trapd.dispatch.journal.postgres import PostgresJournal

    assert isinstance(journal, PostgresJournal)
    with psycopg.connect(journal.conninfo) as conn:
        return [r[0] for r in conn.execute("SELECT data FROM trapd_events")]


async def test_a_large_event_is_stored_once_and_bounded(journal: Journal) -> None:
    # Issue 14 item 4: a 65 KB binary varbind was journaled as ~325 KB of JSON (hex + display).
    blob = bytes(range(256)) * 254  # 65,024 bytes, not printable: displayed as aa:bb:... (3 chars a byte)
    vbs = [("IF-MIB::ifDescr", "OctetString", blob)] + [
        ("IF-MIB::ifAlias", "OctetString", b"x" * 900) for _ in range(40)
    ]
    ev = make_event(varbinds=vbs)
    d = ev.to_dict()
    d["varbinds"][0]["display"] = ":".join(f"{b:02x}" for b in blob)  # as trapd.display shows it
    assert len(json.dumps(d)) > 300_000
    res = await journal.add(d, [entry(key=f"k{i}") for i in range(5)], [], time.time())
    data = stored_events(journal)
    assert len(data) == 1, "one event row for all of its actions"
    assert len(data[0]) < 25_000, len(data[0])
    got = await journal.get(res.ids[4])
    assert got is not None and got.event is not None
    stored = json.loads(got.event)
    first = stored["varbinds"][0]
    assert first["truncated"] == len(blob)
    assert bytes.fromhex(first["value"]) == blob[: len(first["value"]) // 2]  # still decodes
    assert first["display"] == d["varbinds"][0]["display"][: len(first["display"])]
    assert stored["varbinds_omitted"] > 0 and len(stored["varbinds"]) + stored["varbinds_omitted"] == 41
    assert Event.from_dict(stored).varbinds[0].value == blob[: len(first["value"]) // 2]


async def test_keys_with_a_nul_byte_from_a_trap_are_journaled(journal: Journal) -> None:
    # A key, cancel key or once key is rendered from trap values, which may hold a NUL byte
    # (PostgreSQL's text refuses it): the outcome is journaled all the same, and cancels match.
    now = time.time()
    ev = make_event().to_dict()
    nul = "sw1:Gi1/0/1\x00junk"
    armed = await journal.add(
        ev,
        [entry(key=nul, state="scheduled", due=now + 60, cancel_key=nul, once_key=nul, once_within=60.0)],
        [],
        now,
    )
    assert armed.states == ["scheduled"]
    cleared = await journal.add(make_event().to_dict(), [], [nul], now + 1)
    assert cleared.cancelled == armed.ids


async def test_writers_of_one_file_take_turns_through_a_shared_lock_file(tmp_path: Path) -> None:
    """Processes sharing a journal (service.workers) queue for its writers' lock file, so that a
    waiting writer wakes when the lock is let go rather than after SQLite's busy-handler sleep."""
    import fcntl
    import os

    path = tmp_path / "j.sqlite"
    async with SQLiteJournal(path) as j:
        lock = Path(f"{path}-writers.lock")
        assert lock.stat().st_mode & 0o777 == 0o600
        fd = os.open(lock, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # as another process's writer would, mid-transaction
            add = asyncio.ensure_future(j.add(make_event().to_dict(), [entry()], [], time.time()))
            await asyncio.sleep(0.5)
            assert not add.done()  # it waits for the lock, and did not write around it
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        res = await asyncio.wait_for(add, 60)
        assert [state for _, state, _ in committed_rows(j)] == ["pending"] and len(res.ids) == 1


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="needs root")
async def test_a_journal_root_creates_for_the_daemons_user_is_that_users(tmp_path: Path) -> None:
    """`sudo trapd run` to look at a problem, on a state directory the service's user owns and whose
    journal was moved aside (docs/dispatch.md: "move it aside ... for a new, empty journal"): the
    new journal was root's, 0600, and the service then could not open it."""
    import os
    import pwd

    nobody = pwd.getpwnam("nobody")
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, nobody.pw_uid, nobody.pw_gid)
    async with SQLiteJournal(state / "journal.sqlite") as journal:
        await journal.add(make_event().to_dict(), [entry()], [], time.time())
    owners = {p.name: p.stat().st_uid for p in state.iterdir()}
    assert owners and set(owners.values()) == {nobody.pw_uid}, owners
