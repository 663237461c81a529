"""Smoke tests for bench/bench_journal.py: its runs end, never speed.

The dispatcher cases wait until every no-op action is done; an action that
never gets there (a journal error, a retry) must end the run with an error,
not keep the benchmark waiting for ever.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _bench_journal() -> Any:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("bench_journal")


def test_dispatcher_case_runs(tmp_path: Path) -> None:
    bj = _bench_journal()
    rate, per_commit = asyncio.run(bj.run_dispatcher(tmp_path / "j.sqlite", 40, 4, "normal"))
    assert rate > 0 and per_commit >= 1


@pytest.mark.parametrize("case", ["dispatcher", "steady"])
def test_a_noop_that_fails_ends_the_run(case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bj = _bench_journal()
    from trapd.params import Param
    from trapd.plugin import ActionContext, action

    @action("bench.noop", params={"mac": Param("mac-address")}, idempotent=True)
    async def failing(params: dict[str, Any], ctx: ActionContext) -> None:
        raise RuntimeError("injected")

    monkeypatch.setattr(bj, "noop", failing)
    path = tmp_path / "j.sqlite"
    run = (
        bj.run_dispatcher(path, 20, 4, "normal")
        if case == "dispatcher"
        else bj.run_steady(path, 20, 1000.0, "normal")
    )
    outcome: list[BaseException | object] = []

    def go() -> None:
        try:
            outcome.append(asyncio.run(run))
        except BaseException as exc:
            outcome.append(exc)

    # A thread, so that a hang fails this test instead of stopping the suite.
    t = threading.Thread(target=go, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), f"the {case} case still waiting after 60 s"
    assert isinstance(outcome[0], RuntimeError) and "0 of 20 done" in str(outcome[0]), outcome
