"""What a third-party plugin raises, however odd, ends its action with a bounded, readable reason."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path
from typing import Any

from trapd.dispatch.config import DispatchConfig, JournalConfig, RetryDefaults
from trapd.dispatch.dispatcher import Dispatcher
from trapd.dispatch.journal import Entry, SQLiteJournal
from trapd.dispatch.testing import make_event, make_outcome, plan
from trapd.params import Param
from trapd.plugin import ActionContext, ActionSpec, PermanentError, RetryableError, action
from trapd.testing import CapturedLog, KeaDouble

FAST = DispatchConfig(
    workers=2,
    queue_size=10,
    shutdown_timeout=1.0,
    journal=JournalConfig(poll_interval=0.05),
    retry=RetryDefaults(max_attempts=2, backoff=0.05, max_backoff=0.1, jitter=0.0),
)


async def _run(tmp_path: Path, spec: ActionSpec, log: CapturedLog | None = None) -> Entry:
    async with SQLiteJournal(tmp_path / "journal.sqlite") as journal:
        d = Dispatcher(FAST, journal, {spec.name: spec}, kea=None, log=log or CapturedLog())
        await d.start()
        try:
            ids = await d.submit(make_event(), make_outcome(plan(spec.name, {}, key="k")))
            deadline = time.monotonic() + 20
            while (e := await journal.get(int(ids[0]))) is None or e.state != "dead":
                assert time.monotonic() < deadline, e
                await asyncio.sleep(0.02)
            return e
        finally:
            await d.stop(1.0)


class Unprintable(Exception):
    """A library's exception whose __str__ needs an attribute its raiser did not set."""

    def __str__(self) -> str:
        return f"request failed: {self.detail}"  # type: ignore[attr-defined]


async def test_an_exception_whose_str_fails_ends_the_action(tmp_path: Path) -> None:
    # Before: the dispatcher failed formatting the reason ("dispatcher error"), the action stayed
    # "running" until a restart, and every later action with its key waited behind it.
    @action("unprintable", params={})
    async def unprintable(params: dict[str, Any], ctx: ActionContext) -> None:
        """Raise an exception that cannot be shown (test action)."""
        raise Unprintable()

    log = CapturedLog()
    e = await _run(tmp_path, unprintable, log)
    assert e.last_error == "gave up after 2 attempts: Unprintable: (str() failed: AttributeError)"
    assert [x for x in log.entries if x["event"] == "dispatcher error"] == []


async def test_a_huge_error_is_cut_before_it_is_journaled_and_logged(tmp_path: Path) -> None:
    # A plugin that puts a whole answer into its error: 5 MB in the journal row and in one log line.
    @action("huge", params={})
    async def huge(params: dict[str, Any], ctx: ActionContext) -> None:
        """Fail with a 5 MB reason (test action)."""
        if ctx.attempt == 1:
            raise RetryableError("r" * 5_000_000)
        raise PermanentError("p" * 5_000_000)

    log = CapturedLog()
    e = await _run(tmp_path, huge, log)
    assert e.last_error is not None and e.last_error.startswith("permanent error: ppp")
    assert len(e.last_error) < 5000 and e.last_error.endswith("… (5000000 characters)")
    longest = max(len(str(v)) for x in log.entries for v in x.values())
    assert longest < 5000


async def test_an_action_that_swallows_its_cancellation_does_not_hold_the_stop(tmp_path: Path) -> None:
    # A plugin whose retry loop catches everything (a bare except) swallows each cancel: the stop,
    # and trapd's with it, waited for as long as the loop ran (for ever: systemd's kill at last).
    release = asyncio.Event()
    started = asyncio.Event()

    @action("stubborn", params={})
    async def stubborn(params: dict[str, Any], ctx: ActionContext) -> None:
        """Ignore every cancellation until released (test action)."""
        started.set()
        while not release.is_set():
            with contextlib.suppress(BaseException):  # the plugin bug under test: a bare except
                await asyncio.sleep(0.05)

    log = CapturedLog()
    async with SQLiteJournal(tmp_path / "journal.sqlite") as journal:
        d = Dispatcher(FAST, journal, {"stubborn": stubborn}, kea=None, log=log)
        await d.start()
        ids = await d.submit(make_event(), make_outcome(plan("stubborn", {}, key="k")))
        await asyncio.wait_for(started.wait(), 10)
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(d.stop(0.2), 30)
            took = time.monotonic() - t0
            e = await journal.get(int(ids[0]))
        finally:
            release.set()  # the test's loop must not close on it
            await asyncio.sleep(0.2)
    assert took < 10, took
    (line,) = [x for x in log.entries if x["event"] == "actions ignore their cancellation: left behind"]
    assert line["log_level"] == "error" and line["actions"] == ["stubborn"]
    assert e is not None and e.state == "running"  # run again at the next start


# A Kea plugin's own callables with a bug: kea_families reads a parameter a rule may leave out.
@action(
    "acme.pause",
    params={
        "family": Param("enum", choices=("v4", "v6")),
        "endpoint": Param("string"),
        "peer": Param("string"),
    },
    idempotent=True,
    per_peer=lambda params: params["endpoint"] != "",
    kea_families=lambda params, templated: (params["family"],),
)
async def pause(params: dict[str, Any], ctx: ActionContext) -> None:
    """Pause a Kea server (test action whose per_peer and kea_families raise KeyError)."""
    await ctx.kea.get(params.get("endpoint"), "v4", params.get("peer")).command("status-get")


@action("acme.note", params={}, idempotent=True)
async def note(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Does nothing (test action)."""
    return {"noted": True}


async def test_a_plugins_callable_that_raises_does_not_lose_the_event(tmp_path: Path) -> None:
    # per_peer and kea_families are called when an event's actions are journaled: a KeyError from
    # one made Dispatcher.submit raise, so nothing of the event was journaled, the other rules'
    # actions neither (and an inform was not acknowledged). Now the action is journaled as it is
    # and fails when it runs, with the plugin's error; the others run.
    kea = KeaDouble({"status-get": {"result": 0, "arguments": {}}})
    clients = kea.clients({"pair4": ["v4"]}, peers=("server1", "server2"))
    async with SQLiteJournal(tmp_path / "journal.sqlite") as journal:
        d = Dispatcher(
            FAST, journal, {"acme.pause": pause, "acme.note": note}, kea=clients, log=CapturedLog()
        )
        await d.start()
        try:
            ids = await d.submit(
                make_event(), make_outcome(plan("acme.pause", {}), plan("acme.note", {}, index=1))
            )
            assert len(ids) == 2
            deadline = time.monotonic() + 20
            while (e := await journal.get(int(ids[1]))) is None or e.state != "done":
                assert time.monotonic() < deadline, e
                await asyncio.sleep(0.02)
        finally:
            await d.stop(1.0)


def test_trapd_check_reports_a_plugins_callable_that_raises(tmp_path: Path) -> None:
    # The rule compiler asks kea_families which families a rule's action implies: its KeyError
    # ended `trapd check` (and start-up, and a reload) with a traceback from the plugin's lambda.
    from trapd.mibs import MibResolver
    from trapd.rules import compile_rules

    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - name: r\n    match: {notification: IF-MIB::linkDown}\n"
        "    actions:\n      - {action: acme.pause, cap: {limit: 1, per: 1m}}\n"
    )
    _, problems = compile_rules([rules], MibResolver.load(), {"acme.pause": pause})
    assert [str(p) for p in problems] == [
        f"{rules}:5:18: acme.pause: its kea_families raised KeyError: 'family'"
        " (a bug in the plugin acme.pause)"
    ]
