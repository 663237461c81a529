"""A plugin that blocks the event loop is named in the log.

trapd receives traps on the loop its actions run on. An action that calls something blocking
(time.sleep, a synchronous HTTP client, a big file read) holds every trap, every other action and
the watchdog for as long, and no timeout cuts it short (dispatch.action_timeout is a cancellation,
delivered when the action next awaits). Before, nothing said which action it was.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from trapd.dispatch.config import DispatchConfig, JournalConfig
from trapd.dispatch.dispatcher import Dispatcher
from trapd.dispatch.journal import SQLiteJournal
from trapd.dispatch.testing import make_event, make_outcome, plan
from trapd.params import Param
from trapd.plugin import ActionContext, action
from trapd.testing import CapturedLog

FAST = DispatchConfig(
    workers=2, queue_size=10, shutdown_timeout=1.0, journal=JournalConfig(poll_interval=0.05)
)


@action("blocker", params={"block": Param("duration", default=0.0), "wait": Param("duration", default=0.0)})
async def blocker(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Sleep in the loop (test action), after awaiting, as a plugin's blocking call would."""
    await asyncio.sleep(params.get("wait", 0.0))
    time.sleep(params.get("block", 0.0))  # the fault: a blocking call in an async action
    await asyncio.sleep(0)
    return {"ok": True}


async def _run(tmp_path: Path, params: dict[str, Any], blocked: dict[str, int] | None = None) -> CapturedLog:
    """Run one blocker action to its end; ``blocked`` gets the dispatcher's count of blocking steps."""
    log = CapturedLog()
    async with SQLiteJournal(tmp_path / "journal.sqlite") as journal:
        d = Dispatcher(FAST, journal, {"blocker": blocker}, kea=None, log=log)
        await d.start()
        try:
            ids = await d.submit(make_event(), make_outcome(plan("blocker", params, key="k")))
            deadline = time.monotonic() + 20
            while (e := await journal.get(int(ids[0]))) is None or e.state != "done":
                assert time.monotonic() < deadline, e
                await asyncio.sleep(0.02)
        finally:
            await d.stop(1.0)
        if blocked is not None:
            blocked.update(d.stats.blocked_loop)
    return log


async def test_an_action_that_blocks_the_loop_is_named(tmp_path: Path) -> None:
    blocked: dict[str, int] = {}
    log = await _run(tmp_path, {"block": 0.7, "wait": 0.05}, blocked)
    # Counted too (trapd_actions_blocked_loop_total{plugin}): a log line alone, rate-limited, is
    # easy to miss, and an alert can fire on the counter.
    assert blocked == {"blocker": 1}
    (line,) = [e for e in log.entries if e["event"] == "action blocked the event loop"]
    assert line["log_level"] == "warning" and line["action"] == "blocker" and line["rule"]
    assert 0.7 <= line["seconds"] < 5
    assert "to_thread" in line["hint"]


async def test_an_action_that_awaits_is_not(tmp_path: Path) -> None:
    blocked: dict[str, int] = {}
    log = await _run(tmp_path, {"wait": 0.7}, blocked)
    assert blocked == {}
    assert [e for e in log.entries if e["event"] == "action blocked the event loop"] == []
