"""Stopping background tasks whose cancellation can be lost.

Python 3.11's ``asyncio.wait_for`` returns the inner result when the inner future completes in
the same turn as the cancel (CPython gh-86296, fixed in 3.12), and psycopg_pool waits for a
connection with it. A loop asked to stop then went on: PostgresJournal.close() waited for its
lease loop for ever (seen as a hung test under load, the loop renewing every second).
"""

from __future__ import annotations

import asyncio

from trapd.cancelling import cancel_and_wait


async def test_python_loses_a_cancel_when_the_waited_future_completes_in_the_same_turn() -> None:
    # The real race, with nothing mocked: the reason cancel_and_wait exists. If a later Python
    # keeps the cancel, this fails, and the re-cancelling can go.
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[int] = loop.create_future()
    task = asyncio.create_task(asyncio.wait_for(fut, 10))
    await asyncio.sleep(0)
    fut.set_result(1)
    task.cancel()
    assert await task == 1  # the cancel is gone


def _loop_that_loses_its_first_cancel(rounds: list[int]) -> asyncio.Task[None]:
    async def loop() -> None:
        while True:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            asyncio.get_running_loop().call_soon(fut.set_result, None)
            await asyncio.wait_for(fut, 10)  # completes in the turn the cancel comes in: lost
            rounds.append(1)
            await asyncio.sleep(0.01)

    return asyncio.create_task(loop())


async def test_a_task_that_lost_its_cancel_is_cancelled_again_until_it_ends() -> None:
    rounds: list[int] = []
    task = _loop_that_loses_its_first_cancel(rounds)
    await asyncio.sleep(0)  # in wait_for, its future set to complete in the next turn
    stopping = asyncio.create_task(cancel_and_wait([task], again_every=0.05))
    # Waited for from outside: a timeout that cancelled the waiting task would cancel the task too.
    await asyncio.wait([stopping], timeout=10)
    assert stopping.done() and task.cancelled()
    assert rounds, "the first cancel was not lost: the test did not set up the race"


async def test_what_a_task_raised_on_its_way_out_is_taken_and_not_raised() -> None:
    async def fails_when_cancelled() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RuntimeError("cleanup failed") from None

    task = asyncio.create_task(fails_when_cancelled())
    done = asyncio.create_task(asyncio.sleep(0))
    await asyncio.sleep(0)
    await cancel_and_wait([task, done])
    assert isinstance(task.exception(), RuntimeError) and done.done()
