"""A SQLite journal whose open() is cancelled (SIGTERM or ^C while trapd or a benchmark starts).

open() starts the writer thread and awaits its "ready". Cancelled there, it joined the thread on
the event loop's thread, but the writer, once connected, waits for work for ever: the loop hung
(found as bench_worker.py not stopping on SIGTERM, test_bench_signals, once in a suite run).
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from trapd.dispatch.journal import SQLiteJournal


def test_an_open_cancelled_while_the_writer_starts_ends_and_the_journal_opens_later(tmp_path: Path) -> None:
    outcome: list[str] = []

    async def scenario() -> None:
        j = SQLiteJournal(tmp_path / "journal.sqlite")
        opening = asyncio.create_task(j.open())
        await asyncio.sleep(0)  # open() now awaits the writer's "ready"
        opening.cancel()
        await asyncio.gather(opening, return_exceptions=True)
        outcome.append("cancelled" if opening.cancelled() else "not cancelled")
        async with j:  # opened again: the writer thread of the cancelled open is gone
            await j.flush()
        outcome.append("reopened")

    # In a thread of its own: on the old code the event loop itself hung, so nothing inside it
    # could time out.
    runner = threading.Thread(target=asyncio.run, args=(scenario(),), daemon=True)
    runner.start()
    runner.join(30)
    assert not runner.is_alive(), "the event loop hung in the cancelled open()"
    assert outcome == ["cancelled", "reopened"]
