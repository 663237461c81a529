"""A storm of failing actions is logged at a limited rate, with the count of lines held back."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from trapd.dispatch import dispatcher
from trapd.dispatch.config import DispatchConfig, JournalConfig, RetryDefaults
from trapd.dispatch.dispatcher import Dispatcher
from trapd.dispatch.journal import SQLiteJournal
from trapd.dispatch.testing import make_event, make_outcome, plan
from trapd.params import Param
from trapd.plugin import ActionContext, RetryableError, action

CONFIG = DispatchConfig(
    workers=4,
    shutdown_timeout=1.0,
    journal=JournalConfig(poll_interval=0.05),
    retry=RetryDefaults(max_attempts=2, max_age=60.0, backoff=0.01, max_backoff=0.01, jitter=0.0),
)
STORM = 40


class RecordingLog:
    """A logger that keeps (level, event, fields) of every line, bound fields included."""

    def __init__(self, lines: list[tuple[str, str, dict[str, Any]]], bound: dict[str, Any] | None = None):
        self.lines = lines
        self.bound = bound or {}

    def bind(self, **kw: Any) -> RecordingLog:
        return RecordingLog(self.lines, {**self.bound, **kw})

    def __getattr__(self, level: str) -> Any:
        def write(event: str, **kw: Any) -> None:
            self.lines.append((level, event, {**self.bound, **kw}))

        return write


@action("down", params={"n": Param("integer", required=True)}, idempotent=True)
async def down(params: dict[str, Any], ctx: ActionContext) -> None:
    """Fails every time, as an action whose endpoint is down does."""
    raise RetryableError("endpoint refused the connection")


async def test_failures_of_a_storm_are_logged_once_per_interval_with_a_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # One interval for the whole storm, however slow this machine is.
    monkeypatch.setattr(dispatcher, "FAILURE_LOG_INTERVAL", 3600.0)
    lines: list[tuple[str, str, dict[str, Any]]] = []
    journal = SQLiteJournal(tmp_path / "journal.sqlite")
    await journal.open()
    d = Dispatcher(CONFIG, journal, {"down": down}, kea=None, log=RecordingLog(lines))
    await d.start()
    try:
        for i in range(STORM):
            await d.submit(make_event(), make_outcome(plan("down", {"n": i}, key=f"k{i}")))
        deadline = time.monotonic() + 30
        while d.stats.outcomes.get(("down", "dead"), 0) < STORM:
            assert time.monotonic() < deadline, d.stats.outcomes
            await asyncio.sleep(0.05)
    finally:
        await d.stop(1.0)
        await journal.close()

    for event in ("action failed; will retry", "action dead"):
        first, *rest = [fields for _, e, fields in lines if e == event]
        # The first at once, the rest counted in one line at the end of the interval (here: at stop).
        assert "suppressed" not in first
        assert [f["suppressed"] for f in rest] == [STORM - 1], event
        # Each line still says which action, rule and journal entry it is about.
        assert {"event_id", "rule", "action", "action_id"} <= first.keys() & rest[0].keys()


@action("note", params={"n": Param("integer", required=True)}, idempotent=True)
async def note(params: dict[str, Any], ctx: ActionContext) -> None:
    """Succeeds: what once-within's duplicates are duplicates of."""


async def test_once_within_duplicates_of_a_flapping_port_are_logged_once_per_interval(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A port flapping for minutes sends the same trap again and again: the action runs once,
    and its duplicates are counted, not written one line each."""
    monkeypatch.setattr(dispatcher, "DUPLICATE_LOG_INTERVAL", 3600.0)
    lines: list[tuple[str, str, dict[str, Any]]] = []
    journal = SQLiteJournal(tmp_path / "journal.sqlite")
    await journal.open()
    d = Dispatcher(CONFIG, journal, {"note": note}, kea=None, log=RecordingLog(lines))
    await d.start()
    try:
        for _ in range(STORM):
            pa = plan("note", {"n": 1}, key="port:1", once_within=300.0, once_key="port:1")
            await d.submit(make_event(), make_outcome(pa))
        # Another once key is a line of its own at once.
        await d.submit(
            make_event(),
            make_outcome(plan("note", {"n": 2}, key="port:2", once_within=300.0, once_key="port:2")),
        )
        await d.submit(
            make_event(),
            make_outcome(plan("note", {"n": 2}, key="port:2", once_within=300.0, once_key="port:2")),
        )
        assert d.stats.outcomes[("note", "duplicate")] == STORM - 1 + 1
    finally:
        await d.stop(1.0)
        await journal.close()

    dups = [fields for _, e, fields in lines if e == "duplicate within once-within: not run"]
    by_key: dict[str, list[dict[str, Any]]] = {}
    for f in dups:
        by_key.setdefault(f["once_key"], []).append(f)
    first, *rest = by_key["port:1"]
    assert "suppressed" not in first
    assert [f["suppressed"] for f in rest] == [STORM - 2]  # the first written, the rest counted
    assert [f.get("suppressed") for f in by_key["port:2"]] == [None]
    assert {"event_id", "rule", "action", "action_id", "duplicate_of"} <= first.keys()
