"""Claimed in the insert transaction: one journal round trip before an action starts, not two.

An action due now, with no cap and no earlier action of its key waiting or running, is
journaled ``running`` (attempt 1) by the commit that journals it, when a worker is idle to
start it. Everything else takes the old path (insert pending, then ``claim``), which still
decides per-key order, caps and cancels. And actions run in their worker's task (no task of
their own), so a context variable an action sets must not reach the next one.
"""

from __future__ import annotations

import asyncio
import contextvars
import sqlite3
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from trapd.dispatch.config import DispatchConfig, JournalConfig, RetryDefaults
from trapd.dispatch.dispatcher import Dispatcher
from trapd.dispatch.journal import ClaimResult, SQLiteJournal
from trapd.dispatch.testing import make_event, make_outcome, plan
from trapd.params import Param
from trapd.plugin import ActionContext, ActionSpec, action
from trapd.rules.outcome import RateCap

CONFIG = DispatchConfig(
    workers=2,
    queue_size=100,
    shutdown_timeout=0.5,
    journal=JournalConfig(poll_interval=0.05),
    retry=RetryDefaults(max_attempts=3, max_age=60.0, backoff=0.05, max_backoff=1.0, jitter=0.0),
)
SEEN: contextvars.ContextVar[str] = contextvars.ContextVar("trapd_test_seen")


class CountingJournal(SQLiteJournal):
    """The real journal, counting the claims the dispatcher asks for."""

    claims = 0

    async def claim(self, id: int, now: float) -> ClaimResult:
        self.claims += 1
        return await super().claim(id, now)


class Gate:
    """Backs the action ``gate``: it starts, records, and waits until the test opens its tag."""

    def __init__(self) -> None:
        self.started: list[str] = []
        self.context_seen: list[str | None] = []
        self.open: dict[str, asyncio.Event] = {}

    def release(self, tag: str) -> None:
        self.open.setdefault(tag, asyncio.Event()).set()

    def spec(self) -> ActionSpec:
        @action(
            "gate",
            params={"tag": Param("string", required=True), "wait": Param("boolean", default=False)},
            idempotent=True,
        )
        async def gate(params: dict[str, Any], ctx: ActionContext) -> None:
            """Test action."""
            self.started.append(params["tag"])
            self.context_seen.append(SEEN.get(None))
            SEEN.set(params["tag"])  # must not be visible to the next action
            if params["wait"]:
                await self.open.setdefault(params["tag"], asyncio.Event()).wait()

        return gate


@pytest.fixture
async def journal(tmp_path: Path) -> AsyncIterator[CountingJournal]:
    j = CountingJournal(tmp_path / "journal.sqlite", owner="worker-1")
    await j.open()
    yield j
    await j.close()


@pytest.fixture
def gate() -> Gate:
    return Gate()


@pytest.fixture
async def dispatcher(journal: CountingJournal, gate: Gate) -> AsyncIterator[Dispatcher]:
    d = Dispatcher(CONFIG, journal, {"gate": gate.spec()}, kea=None)
    await d.start()
    await until(lambda: len(d._idle) == CONFIG.workers)  # claims at insert need idle workers
    yield d
    for tag in list(gate.open):
        gate.release(tag)
    await d.stop(0.5)


def gate_plan(tag: str, key: str | None = None, wait: bool = False, **kw: Any) -> Any:
    return plan("gate", {"tag": tag, "wait": wait}, key=key or tag, **kw)


async def until(cond: Any, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.005)


async def row(journal: SQLiteJournal, id_: str) -> Any:
    e = await journal.get(int(id_), with_event=False)
    assert e is not None
    return e


async def test_an_action_due_now_is_running_when_submit_returns(
    dispatcher: Dispatcher, journal: CountingJournal, gate: Gate
) -> None:
    (id_,) = await dispatcher.submit(make_event(), make_outcome(gate_plan("a", wait=True)))
    e = await row(journal, id_)
    # Committed running by the insert: the worker starts it without asking the journal again.
    assert (e.state, e.attempts, e.owner) == ("running", 1, "worker-1")
    await until(lambda: gate.started == ["a"])
    assert journal.claims == 0
    gate.release("a")
    await until(lambda: dispatcher.stats.outcomes[("gate", "done")] == 1)
    await journal.flush()
    e = await row(journal, id_)
    assert e.state == "done" and e.started is not None and e.started >= e.created


async def test_a_busy_key_takes_the_claim_path_and_keeps_its_order(
    dispatcher: Dispatcher, journal: CountingJournal, gate: Gate
) -> None:
    (first,) = await dispatcher.submit(make_event(), make_outcome(gate_plan("k1", key="port", wait=True)))
    (second,) = await dispatcher.submit(make_event(), make_outcome(gate_plan("k2", key="port")))
    assert (await row(journal, second)).state == "pending"  # its key runs: not claimed at insert
    await asyncio.sleep(0.05)
    assert gate.started == ["k1"]
    gate.release("k1")
    await until(lambda: gate.started == ["k1", "k2"])
    assert journal.claims == 1
    await until(lambda: dispatcher.stats.outcomes[("gate", "done")] == 2)
    del first


async def test_a_full_cap_and_more_than_the_idle_workers_are_claimed_later(
    dispatcher: Dispatcher, journal: CountingJournal, gate: Gate
) -> None:
    capped = gate_plan("c0", caps=[RateCap("one", 1, 60.0)])
    (c0,) = await dispatcher.submit(make_event(), make_outcome(capped))
    # Its cap had room: claimed, and counted, by the insert.
    assert (await row(journal, c0)).state in ("running", "done")
    await until(lambda: dispatcher.stats.outcomes[("gate", "done")] == 1)
    assert journal.claims == 0
    (c1,) = await dispatcher.submit(
        make_event(), make_outcome(replace(capped, params={"tag": "c1", "wait": False}))
    )
    # The cap is full: left pending by the insert; the claim holds it, with its message.
    await until(lambda: dispatcher.stats.outcomes[("gate", "held")] == 1)
    assert journal.claims == 1
    held = await row(journal, c1)
    assert held.state == "held" and held.held_by == "test-rule/one"
    # Two workers: of four actions submitted together, at most two are claimed at insert.
    ids = await dispatcher.submit(
        make_event(), make_outcome(*(gate_plan(f"w{i}", wait=True, index=i) for i in range(4)))
    )
    states = [(await row(journal, i)).state for i in ids]
    assert states.count("running") <= 2 and states.count("pending") >= 2
    for i in range(4):
        gate.release(f"w{i}")
    await until(lambda: dispatcher.stats.outcomes[("gate", "done")] == 5)


async def test_a_claim_made_as_the_dispatcher_stops_is_given_back(
    journal: CountingJournal, gate: Gate
) -> None:
    d = Dispatcher(CONFIG, journal, {"gate": gate.spec()}, kea=None)
    await d.start()
    submit = asyncio.create_task(d.submit(make_event(), make_outcome(gate_plan("late"))))
    await asyncio.sleep(0)  # the insert (with its claim) is issued; stop before it commits
    await d.stop(0.5)
    (id_,) = await submit
    await journal.flush()
    e = await row(journal, id_)
    assert gate.started == []
    # Never started: pending again with no attempt counted, so the next start runs it as new
    # (not as interrupted, which hold-unsafe would hold for an operator).
    assert (e.state, e.attempts, e.started) == ("pending", 0, None)


async def test_a_context_variable_set_by_an_action_does_not_reach_the_next(
    dispatcher: Dispatcher, gate: Gate
) -> None:
    for i in range(6):
        await dispatcher.submit(make_event(), make_outcome(gate_plan(f"v{i}")))
        await until(lambda n=i + 1: dispatcher.stats.outcomes[("gate", "done")] == n)
    assert gate.context_seen == [None] * 6
    assert len(dispatcher._workers) == CONFIG.workers


async def test_a_failed_insert_gives_its_claim_budget_back(journal: CountingJournal, gate: Gate) -> None:
    d = Dispatcher(replace(CONFIG, workers=1), journal, {"gate": gate.spec()}, kea=None)
    await d.start()
    await until(lambda: len(d._idle) == 1)
    try:
        # A database that refuses the insert (what a full disk does to a commit), from outside.
        other = sqlite3.connect(journal.path)
        other.execute(
            "CREATE TRIGGER refuse BEFORE INSERT ON actions BEGIN SELECT RAISE(ABORT, 'refused'); END"
        )
        other.commit()
        with pytest.raises(sqlite3.Error):
            await d.submit(make_event(), make_outcome(gate_plan("lost")))
        other.execute("DROP TRIGGER refuse")
        other.commit()
        other.close()
        # The one idle worker is still free to take a claim at insert.
        (id_,) = await d.submit(make_event(), make_outcome(gate_plan("kept", wait=True)))
        assert (await row(journal, id_)).state == "running"
        gate.release("kept")
        await until(lambda: d.stats.outcomes[("gate", "done")] == 1)
    finally:
        await d.stop(0.5)
