"""Pruning a large SQLite journal: the writer is not stalled behind it, and it costs little when
there is nothing to prune.

Every journal write (a trap's outcome, a claim, an action's end) goes through one writer
thread. The hourly prune ran there as one statement over every finished row: behind it, every
commit waited (11 s for 1,000,000 expired rows on the CI VM, and the WAL grew by every page of
them, so on a nearly full disk it failed as a whole, hour after hour, and the journal never
shrank), and a prune that found nothing still read the whole actions table's finished rows
and every event (4-5 s an hour at 1,000,000 of each).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tmpfs_support import mounted_tmpfs

from trapd.dispatch.journal import HistoryFilter, Journal, JournalError, NewEntry, SQLiteJournal
from trapd.dispatch.journal.sqlite import _op_prune
from trapd.dispatch.testing import make_event

DAY = 86400.0


def entry(i: int) -> NewEntry:
    return NewEntry(
        rule="r", action="log", index=0, params={"message": f"m{i}"}, key=f"k{i}", mode="enforce",
        state="pending", due=time.time(), max_attempts=3, backoff=1.0, max_age=3600.0,
    )  # fmt: skip


async def build(path: Path, rows: int, finished_days_ago: float) -> None:
    """A journal of ``rows`` finished actions, each with an event of its own, plus one pending."""
    async with SQLiteJournal(path, checkpoint_interval=None) as j:
        await j.add(make_event().to_dict(), [entry(0)], [], time.time())
    when = time.time() - finished_days_ago * DAY
    db = sqlite3.connect(path)
    cols = [r[1] for r in db.execute("PRAGMA table_info(actions)") if r[1] not in ("id", "event_id")]
    c = ", ".join(cols)
    db.execute(
        "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < ?) "
        "INSERT INTO events (id, received_at, source, trap_name, data) "
        "SELECT printf('%011x0000%06x', CAST(? * 1000 AS INTEGER), i), ?, '192.0.2.1', 'x', '{}' FROM n",
        (rows, when, when),
    )
    db.execute(
        f"INSERT INTO actions (event_id, {c}) SELECT e.id, {', '.join('a.' + x for x in cols)} "
        "FROM events e, (SELECT * FROM actions LIMIT 1) a WHERE e.trap_name = 'x'"
    )
    db.execute(
        "UPDATE actions SET state = 'done', created = ?, finished = ?, due = ? WHERE event_id IN "
        "(SELECT id FROM events WHERE trap_name = 'x')",
        (when, when, when),
    )
    db.commit()
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.close()


async def build_pg(url: str, rows: int, finished_days_ago: float) -> None:
    """The same in a PostgreSQL journal."""
    import psycopg

    from trapd.dispatch.journal.postgres import PostgresJournal

    async with PostgresJournal(url, instance="h1") as j:
        await j.add(make_event().to_dict(), [entry(0)], [], time.time())
    when = time.time() - finished_days_ago * DAY
    with psycopg.connect(url, autocommit=True) as db:
        cols = [
            r[0]
            for r in db.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = 'trapd_actions' "
                "AND column_name NOT IN ('id', 'event_id')"
            ).fetchall()
        ]
        c = ", ".join(cols)
        db.execute(
            "INSERT INTO trapd_events (id, received_at, source, trap_name, data) "
            "SELECT 'x' || i, %s, '192.0.2.1', 'x', '{}' FROM generate_series(1, %s) i",
            (when, rows),
        )
        db.execute(
            f"INSERT INTO trapd_actions (event_id, {c}) SELECT e.id, {', '.join('a.' + x for x in cols)} "
            "FROM trapd_events e, (SELECT * FROM trapd_actions LIMIT 1) a WHERE e.trap_name = 'x'"
        )
        db.execute(
            "UPDATE trapd_actions SET state = 'done', created = %s, finished = %s, due = %s "
            "WHERE event_id LIKE 'x%%'",
            (when, when, when),
        )


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_large_prune_does_not_hold_up_the_journal_s_other_writes(
    tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    j: Journal
    if backend == "sqlite":
        path = tmp_path / "j.sqlite"
        await build(path, 60_000, finished_days_ago=40)
        j = SQLiteJournal(path, checkpoint_interval=None)
    else:
        from trapd.dispatch.journal.postgres import PostgresJournal

        url = request.getfixturevalue("pg_url")
        await build_pg(url, 60_000, finished_days_ago=40)
        j = PostgresJournal(url, instance="h1")
    await j.open()
    try:
        now = time.time()
        prune = asyncio.create_task(j.prune(now - 30 * DAY, now))
        await asyncio.sleep(0)  # the prune's (first) write is queued before the add
        added = await j.add(make_event().to_dict(), [entry(1)], [], time.time())
        assert added.states == ["pending"]
        assert not prune.done(), "the add waited for the whole prune"
        assert await prune == 60_000
        counts = await j.counts()
        assert counts["pending"] == 2
        # The pruned actions' events went with them; the two pending actions' stay.
        assert len(await j.history(HistoryFilter(states=("pending",)))) == 2
    finally:
        await j.close()
    if backend == "sqlite":
        db = sqlite3.connect(tmp_path / "j.sqlite")
        assert db.execute("SELECT count(*) FROM events").fetchone() == (2,)
        db.close()


def test_a_prune_that_finds_nothing_reads_little_of_a_large_journal(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    asyncio.run(build(path, 60_000, finished_days_ago=1))
    db = sqlite3.connect(path, isolation_level=None)
    steps = 0

    def count() -> int:
        nonlocal steps
        steps += 1
        return 0

    db.set_progress_handler(count, 100)  # called every 100 virtual machine instructions
    now = time.time()
    db.execute("BEGIN IMMEDIATE")
    pruned = _op_prune(db, now - 30 * DAY, now)
    db.execute("COMMIT")
    assert pruned == 0
    # Proportional to the rows pruned (none here), not to the 60,000 kept: thousands of steps
    # read every finished action and every event.
    assert steps < 100, steps
    db.close()


async def test_pruned_pages_go_back_to_the_file_system(tmp_path: Path) -> None:
    """The journal is made with auto_vacuum = INCREMENTAL so that a prune gives the pages it
    freed back (PRAGMA incremental_vacuum). That pragma frees one page per step of its
    statement, and the prune stepped it once: one page (4 KiB) an hour, whatever was pruned."""
    path = tmp_path / "j.sqlite"
    await build(path, 25_000, finished_days_ago=40)
    before = path.stat().st_size
    async with SQLiteJournal(path, checkpoint_interval=None) as j:
        now = time.time()
        assert await j.prune(now - 30 * DAY, now) == 25_000
    db = sqlite3.connect(path)
    free = db.execute("PRAGMA freelist_count").fetchone()[0]
    db.close()
    assert free < 50, free
    assert path.stat().st_size < before / 5, (before, path.stat().st_size)


@pytest.fixture
def fs24(tmp_path: Path) -> Iterator[Path]:
    """A 24 MiB tmpfs of the test's own (root only), unmounted afterwards."""
    with mounted_tmpfs(tmp_path / "fs", "24m") as mnt:
        yield mnt


async def test_a_prune_on_a_nearly_full_disk_gets_through_and_frees_the_space(fs24: Path) -> None:
    """A storm's backlog to prune, 1.5 MiB left on the disk: less than the WAL of all of it needs,
    more than a chunk's. Each chunk's deletions go to the WAL, and the pages they free go back to
    the file system only when a checkpoint copies them into the file: chunks back to back outran
    the checkpointer, so the prune failed (disk full, the journal unhealthy) after a few chunks,
    and the daemon tried again an hour later, a few chunks an hour. Now a prune that meets the
    full disk after pruning something checkpoints and goes on: one prune gets through, the file
    shrinks, passes its integrity check, and takes writes."""
    path = fs24 / "j.sqlite"
    await build(path, 25_000, finished_days_ago=40)
    size = path.stat().st_size
    st = os.statvfs(fs24)
    filler = fs24 / "filler"
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 1536 * 1024))
    async with SQLiteJournal(path) as j:
        now = time.time()
        assert await j.prune(now - 30 * DAY, now) == 25_000
        assert (await j.counts())["pending"] == 1
        added = await j.add(make_event().to_dict(), [entry(2)], [], time.time())
        assert added.states == ["pending"]
        assert j.health().available
    assert path.stat().st_size < size / 5
    filler.unlink()
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    assert db.execute("SELECT count(*) FROM actions").fetchone() == (2,)
    db.close()


async def test_a_prune_on_a_full_disk_fails_at_once_saying_so(fs24: Path) -> None:
    """Not a byte free: nothing can be pruned (deleting needs the WAL first). The prune fails
    once, at once, saying the disk is full, how much it pruned and what to do; it does not try
    chunk after chunk; the journal is unhealthy until a write succeeds (space freed)."""
    path = fs24 / "j.sqlite"
    await build(path, 25_000, finished_days_ago=40)
    async with SQLiteJournal(path) as j:
        filler = fs24 / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            for chunk in (65536, 4096, 512, 1):
                with contextlib.suppress(OSError):
                    while True:
                        os.write(fd, b"\0" * chunk)
        finally:
            os.close(fd)
        now = time.time()
        started = time.monotonic()
        with pytest.raises(JournalError) as failed:
            await j.prune(now - 30 * DAY, now)
        assert time.monotonic() - started < 15
        text = str(failed.value)
        assert "full" in text and "pruned 0 of the finished actions" in text and "free some space" in text, (
            text
        )
        health = j.health()
        assert not health.available and "full" in (health.problem or ""), health
        assert health.failed_writes <= 2, health  # the chunk, and one try after a checkpoint
        filler.unlink()
        assert await j.prune(now - 30 * DAY, now) == 25_000


def test_the_prune_s_checkpoint_inside_another_caller_s_batch_does_not_fail(tmp_path: Path) -> None:
    """The writer runs a read-only operation inside the transaction of a batch when other
    callers' writes were queued with it; there, PRAGMA wal_checkpoint fails ('database table is
    locked'), and the prune's checkpoint on a full disk would have ended the prune with that
    sqlite3 error instead of its own. Skipped there: the checkpointer thread does it."""
    from trapd.dispatch.journal.sqlite import _op_checkpoint

    path = tmp_path / "j.sqlite"
    asyncio.run(build(path, 10, finished_days_ago=40))
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode = WAL")
    db.execute("BEGIN IMMEDIATE")
    db.execute("DELETE FROM actions WHERE id = 1")
    _op_checkpoint(db)
    db.execute("COMMIT")
    _op_checkpoint(db)
    db.close()
