"""Stop background tasks and wait until they have ended, even when a cancellation is lost.

A cancel can be lost on Python 3.11: ``asyncio.wait_for`` returns the inner result when the
inner future completes in the same turn as the cancel (CPython gh-86296, fixed in 3.12), and
psycopg_pool waits for a connection with it. A loop asked to stop then simply goes on, and
whoever awaits it waits for ever: PostgresJournal.close() hung on its lease loop that way
(tests/test_cancelling.py). So a task still running after a cancel is cancelled again until
it ends: a loop that lost one cancel gets the next at its next await.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

# How long a cancelled task gets before it is cancelled again. A task that kept its cancel
# ends within a turn or two; one that lost it waits this long once.
AGAIN_EVERY = 0.5


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any]],
    *,
    again_every: float = AGAIN_EVERY,
    give_up_after: float | None = None,
) -> set[asyncio.Task[Any]]:
    """Cancel ``tasks`` and return once each has ended; what they raised on the way out is taken
    (not raised, and not logged by asyncio as never retrieved).

    ``give_up_after``: seconds after which tasks that still run are left behind and returned (a
    plugin's code that swallows every cancel, a bare ``except:`` in a loop, would hold the caller
    for as long as it loops); by default none are, and the set returned is empty."""
    tasks = list(tasks)
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = None if give_up_after is None else loop.time() + give_up_after
    while pending and (deadline is None or loop.time() < deadline):
        for t in pending:
            t.cancel()
        wait = again_every if deadline is None else max(0.0, min(again_every, deadline - loop.time()))
        _, pending = await asyncio.wait(pending, timeout=wait)
    for t in tasks:
        if t.done() and not t.cancelled():
            t.exception()
    return pending
