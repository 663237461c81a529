"""The journal's lazy writes: a finished action's "done" shares the next awaited commit."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from trapd.dispatch.journal import NewEntry, SQLiteJournal
from trapd.dispatch.journal import sqlite as journal_module
from trapd.dispatch.testing import make_event


def entry(key: str = "k") -> NewEntry:
    return NewEntry(
        rule="r1", action="log", index=0, params={"message": "hi"}, key=key, mode="enforce", state="pending",
        due=time.time(), max_attempts=3, backoff=0.01, max_age=3600.0,
    )  # fmt: skip


@pytest.fixture
async def journal(tmp_path: Path):  # type: ignore[no-untyped-def]
    j = SQLiteJournal(tmp_path / "journal.sqlite")
    await j.open()
    yield j
    await j.close()


def state_on_disk(path: Path, id_: int) -> str:
    other = sqlite3.connect(path)
    try:
        (state,) = other.execute("SELECT state FROM actions WHERE id = ?", (id_,)).fetchone()
        return str(state)
    finally:
        other.close()


async def running(journal: SQLiteJournal) -> int:
    res = await journal.add(make_event().to_dict(), [entry(key=f"k{time.time()}")], [], time.time())
    assert (await journal.claim(res.ids[0], time.time())).outcome == "running"
    return res.ids[0]


async def test_done_rides_with_the_next_awaited_operation(journal: SQLiteJournal, tmp_path: Path) -> None:
    first, second = await running(journal), await running(journal)
    before = journal.commits
    done = journal.finish_soon(first, "done", time.time(), {"ok": True})
    # The claim that follows (what a worker does next) commits the "done" with it: one commit.
    res = await journal.add(make_event().to_dict(), [entry(key="next")], [], time.time())
    await done
    assert journal.commits == before + 1
    assert state_on_disk(tmp_path / "journal.sqlite", first) == "done"
    assert state_on_disk(tmp_path / "journal.sqlite", res.ids[0]) == "pending"
    assert state_on_disk(tmp_path / "journal.sqlite", second) == "running"


async def test_a_lone_done_commits_within_the_delay(journal: SQLiteJournal, tmp_path: Path) -> None:
    id_ = await running(journal)
    t0 = time.monotonic()
    # Without the bound, a lone "done" waits for company forever: wait_for fails then.
    await asyncio.wait_for(journal.finish_soon(id_, "done", time.time(), None), 60.0)
    waited = time.monotonic() - t0
    assert state_on_disk(tmp_path / "journal.sqlite", id_) == "done"
    # It did wait for company first (a lower bound: load can only make it later).
    assert waited >= journal_module.LAZY_COMMIT_DELAY * 0.5


async def test_flush_and_close_do_not_wait_for_lazy_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A delay no machine's load comes near: a flush that waited for it would fail the bound.
    monkeypatch.setattr(journal_module, "LAZY_COMMIT_DELAY", 600.0)
    j = SQLiteJournal(tmp_path / "journal.sqlite")
    await j.open()
    id_ = await running(j)
    done = j.finish_soon(id_, "done", time.time(), None)
    t0 = time.monotonic()
    await j.flush()  # an awaited operation: the pending "done" commits with it, now
    assert isinstance(done, asyncio.Future) and done.done()
    assert time.monotonic() - t0 < 300
    assert state_on_disk(tmp_path / "journal.sqlite", id_) == "done"
    await j.close()
