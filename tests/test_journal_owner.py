"""Who claimed an action, and recovery scoped to that owner (several processes on one journal).

With ``service.workers: N`` every worker claims through its own SQLiteJournal on the same
file. A worker restarted after a crash must put back only the actions *it* left running:
the others' running rows belong to live processes, and rerunning them would duplicate them.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from trapd.dispatch.config import DispatchConfig, JournalConfig
from trapd.dispatch.dispatcher import Dispatcher, recover_interrupted
from trapd.dispatch.journal import _SCHEMA, NewEntry, SQLiteJournal, open_journal
from trapd.dispatch.testing import make_event
from trapd.params import Param
from trapd.plugin import ActionContext, ActionSpec, action


def entry(action: str = "log", key: str = "k") -> NewEntry:
    return NewEntry(
        rule="r1", action=action, index=0, params={"message": "hi"}, key=key, mode="enforce", state="pending",
        due=time.time(), max_attempts=3, backoff=0.01, max_age=3600.0,
    )  # fmt: skip


def spec(name: str, idempotent: bool) -> ActionSpec:
    @action(name, params={"message": Param("string")}, idempotent=idempotent)
    async def run(params: dict[str, Any], ctx: ActionContext) -> None:
        """Does nothing (test action)."""

    return run


def rows(path: Path) -> dict[int, tuple[str, str | None]]:
    conn = sqlite3.connect(path)
    try:
        return {i: (s, o) for i, s, o in conn.execute("SELECT id, state, owner FROM actions")}
    finally:
        conn.close()


async def test_open_journal_passes_the_owner(tmp_path: Path) -> None:
    j = open_journal(tmp_path / "j.sqlite", JournalConfig(), owner="worker-3")
    assert j.owner == "worker-3"
    assert open_journal(tmp_path / "j.sqlite").owner is None
    with pytest.raises(AttributeError):
        j.owner = "other"  # type: ignore[misc]


async def test_claims_record_the_owner_and_recovery_is_scoped_to_it(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    now = time.time()
    async with SQLiteJournal(path, owner="worker-1") as w1, SQLiteJournal(path, owner="worker-2") as w2:
        r = await w1.add(make_event().to_dict(), [entry(key="a"), entry(key="b"), entry(key="c")], [], now)
        a, b, c = r.ids
        assert (await w1.claim(a, now)).outcome == "running"
        assert (await w2.claim(b, now)).outcome == "running"
        assert (await w1.claim(c, now)).outcome == "running"
        got = await w2.get(b)
        assert got is not None and got.owner == "worker-2"
        assert rows(path) == {
            a: ("running", "worker-1"),
            b: ("running", "worker-2"),
            c: ("running", "worker-1"),
        }

        # worker-1 restarted: its own two come back, worker-2's (alive, still running it) stays.
        counts = await w1.recover(now + 1, owner="worker-1")
        assert counts["rerun"] == 2
        assert rows(path)[b] == ("running", "worker-2")
        assert {rows(path)[a][0], rows(path)[c][0]} == {"pending"}

        # A rerun claimed by the other worker changes hands.
        assert (await w2.claim(a, now + 2)).outcome == "running"
        assert rows(path)[a] == ("running", "worker-2")
        assert (await w1.recover(now + 3, owner="worker-1"))["rerun"] == 0

        # No owner (a lone trapd, or the supervisor before it forks): every running row.
        assert (await w2.recover(now + 4))["rerun"] == 2
        assert {s for s, _ in rows(path).values()} == {"pending"}


async def test_scoped_recovery_holds_only_its_own_unsafe_actions(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    now = time.time()
    actions = {"safe": spec("safe", True), "unsafe": spec("unsafe", False)}
    async with SQLiteJournal(path, owner="worker-1") as w1, SQLiteJournal(path, owner="worker-2") as w2:
        ev = make_event().to_dict()
        mine = await w1.add(ev, [entry("safe", "a"), entry("unsafe", "b")], [], now)
        theirs = await w2.add(ev, [entry("unsafe", "c")], [], now)
        for i in mine.ids:
            await w1.claim(i, now)
        await w2.claim(theirs.ids[0], now)
        counts = await recover_interrupted(w1, actions, now + 1, "worker-1", interrupted="hold-unsafe")
        assert (counts["rerun"], counts["held"]) == (1, 1)
        state = rows(path)
        assert state[mine.ids[0]][0] == "pending"
        assert state[mine.ids[1]][0] == "held"
        assert state[theirs.ids[0]] == ("running", "worker-2")
        with pytest.raises(ValueError, match="interrupted must be one of"):
            await recover_interrupted(w1, actions, interrupted="hold")


async def test_dispatcher_start_recovers_only_its_owner(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    now = time.time()
    ran: list[str] = []

    @action("note", params={"message": Param("string")}, idempotent=True)
    async def note(params: dict[str, Any], ctx: ActionContext) -> None:
        """Records the message (test action)."""
        ran.append(params["message"])

    async with SQLiteJournal(path, owner="worker-1") as w1, SQLiteJournal(path, owner="worker-2") as w2:
        ev = make_event().to_dict()
        e1, e2 = entry("note", "a"), entry("note", "b")
        e1.params, e2.params = {"message": "mine"}, {"message": "theirs"}
        r = await w1.add(ev, [e1, e2], [], now)
        await w1.claim(r.ids[0], now)
        await w2.claim(r.ids[1], now)
        d = Dispatcher(DispatchConfig(workers=2), w1, {"note": note}, kea=None)
        await d.start()
        try:
            deadline = time.monotonic() + 3
            while not ran and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
        finally:
            await d.stop(0.5)
        assert ran == ["mine"]
        assert rows(path)[r.ids[1]] == ("running", "worker-2")


def old_journal(path: Path) -> None:
    """A journal as trapd wrote it before the owner column existed, with an action left running."""
    schema = _SCHEMA.replace("last_error TEXT,\n    owner TEXT\n", "last_error TEXT\n")
    assert "owner" not in schema
    conn = sqlite3.connect(path)
    conn.executescript(schema)
    conn.execute("INSERT INTO meta (k, v) VALUES ('schema', '1')")
    conn.execute(
        "INSERT INTO actions (event_id, received_at, source, rule, action, idx, params, key, mode, state, "
        "attempts, max_attempts, backoff, max_age, age_from, created, due, started) "
        "VALUES ('e1', 1, '192.0.2.1', 'r1', 'log', 0, '{}', 'k', 'enforce', 'running', "
        "1, 3, 1, 3600, 1, 1, 1, 1)"
    )
    conn.commit()
    conn.close()


async def test_an_old_journal_gains_the_owner_column(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    old_journal(path)
    # Two processes (here: two writer threads, two connections) opening it at once: one migrates.
    one, two = SQLiteJournal(path, owner="worker-1"), SQLiteJournal(path, owner="worker-2")
    await asyncio.gather(one.open(), two.open())
    try:
        e = await one.get(1)
        assert e is not None and e.state == "running" and e.owner is None
        # Claimed before owners existed: no worker's scoped recovery takes it, the full one does.
        assert (await one.recover(time.time(), owner="worker-1"))["rerun"] == 0
        assert (await recover_interrupted(two, {}, owner=None))["rerun"] == 1
        assert (await one.claim(1, time.time())).outcome == "running"
        assert rows(path) == {1: ("running", "worker-1")}
    finally:
        await one.close()
        await two.close()
    conn = sqlite3.connect(path)
    assert [r[1] for r in conn.execute("PRAGMA table_info(actions)")].count("owner") == 1
    assert conn.execute("SELECT v FROM meta WHERE k = 'schema'").fetchone() == ("1",)
    conn.close()


async def test_a_claim_says_whether_the_key_waits_for_a_queued_or_a_running_action(tmp_path: Path) -> None:
    now = time.time()
    async with SQLiteJournal(tmp_path / "j.sqlite", owner="worker-1") as w1:
        r = await w1.add(make_event().to_dict(), [entry(key="k"), entry(key="k"), entry(key="k")], [], now)
        first, second, third = r.ids
        wait = await w1.claim(second, now)
        assert (wait.outcome, wait.blocked_by) == ("wait", "waiting")  # load the first one first
        assert (await w1.claim(first, now)).outcome == "running"
        wait = await w1.claim(second, now)
        assert (wait.outcome, wait.blocked_by) == ("wait", "running")  # runs elsewhere: come back later
        wait = await w1.claim(third, now)
        assert (wait.outcome, wait.blocked_by) == ("wait", "waiting")
        await w1.finish(first, "done", now)
        assert (await w1.claim(second, now)).blocked_by is None


def test_trapd_journal_show_says_who_claimed_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from trapd.cli import main

    async def fill() -> int:
        async with SQLiteJournal(tmp_path / "journal.sqlite", owner="worker-2") as j:
            r = await j.add(make_event().to_dict(), [entry()], [], time.time())
            await j.claim(r.ids[0], time.time())
            return r.ids[0]

    id_ = asyncio.run(fill())
    assert main(["journal", "--state-dir", str(tmp_path), "show", str(id_)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split() == ["owner", "worker-2"] for line in lines), lines
    assert main(["journal", "--state-dir", str(tmp_path), "show", str(id_), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["owner"] == "worker-2"
