"""What a plugin returns or raises is bounded where trapd keeps it: the journal's result, the
log's traceback. A site plugin that returns a whole answer (megabytes), or raises an exception
whose text is one, or a chain of thousands, went into the journal row and into one log line
whole. Cut with a marker, and a cut keeps no start of a secret (the redactor's cut, as for
exec's output)."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from trapd.dispatch.config import DispatchConfig, JournalConfig, RetryDefaults
from trapd.dispatch.dispatcher import Dispatcher
from trapd.dispatch.journal import SQLiteJournal
from trapd.dispatch.journal.model import Entry
from trapd.dispatch.testing import make_event, make_outcome, plan
from trapd.plugin import ActionContext, ActionSpec, action
from trapd.secrets import REDACTOR
from trapd.service.logging import configure_logging

TOKEN = "b0und-t0ken-0123456789abcdefghijklmnopqrstuvwxyz"
START = TOKEN[:8]  # what a cut through the token leaves, and no innocent text has
CONFIG = DispatchConfig(
    workers=1,
    shutdown_timeout=1.0,
    journal=JournalConfig(poll_interval=0.05),
    retry=RetryDefaults(max_attempts=2, backoff=0.05, max_backoff=0.1, jitter=0.0),
)


@pytest.fixture
def token() -> Iterator[str]:
    REDACTOR.hold(TOKEN)
    try:
        yield TOKEN
    finally:
        REDACTOR.release(TOKEN)


@pytest.fixture
def log_text() -> Iterator[Callable[[], str]]:
    buf = io.StringIO()
    configure_logging("info", "json", buf)
    try:
        yield buf.getvalue
    finally:
        configure_logging("info", "console", sys.stderr)


async def run_one(tmp_path: Path, spec: ActionSpec, outcome: str) -> Entry:
    async with SQLiteJournal(tmp_path / "journal.sqlite") as journal:
        d = Dispatcher(CONFIG, journal, {spec.name: spec}, kea=None)
        await d.start()
        try:
            (id_,) = await d.submit(make_event(), make_outcome(plan(spec.name, {})))
            deadline = time.monotonic() + 30
            while d.stats.outcomes[(spec.name, outcome)] < 1:
                assert time.monotonic() < deadline, dict(d.stats.outcomes)
                await asyncio.sleep(0.02)
        finally:
            await d.stop(0.5)
        entry = await journal.get(int(id_), with_event=False)
    assert entry is not None
    return entry


def returning(value: Any) -> ActionSpec:
    @action("returns", params={})
    async def returns(params: dict[str, Any], ctx: ActionContext) -> Any:
        """Return what the test says (test action)."""
        return value

    return returns


def raising(make: Callable[[], BaseException]) -> ActionSpec:
    @action("raises", params={})
    async def raises(params: dict[str, Any], ctx: ActionContext) -> None:
        """Raise what the test says (test action)."""
        raise make()

    return raises


async def test_a_huge_result_is_journaled_cut_with_its_length(tmp_path: Path) -> None:
    entry = await run_one(tmp_path, returning({"answer": "a" * 5_000_000}), "done")
    stored = json.dumps(entry.result)
    assert len(stored) < 20_000, len(stored)
    assert isinstance(entry.result, dict)
    assert entry.result["truncated"] == len('{"answer":""}') + 5_000_000
    assert str(entry.result["start"]).startswith('{"answer":"aaaa')


async def test_a_result_of_normal_size_is_journaled_whole(tmp_path: Path) -> None:
    mac = "00:11:22:33:44:55"
    leases = [{"ip-address": f"10.0.{i // 250}.{i % 250}", "hw-address": mac} for i in range(2000)]
    entry = await run_one(tmp_path, returning({"deleted": len(leases), "leases": leases}), "done")
    assert entry.result == {"deleted": 2000, "leases": leases}


async def test_a_result_json_cannot_hold_cut_in_its_repr_keeps_no_start_of_a_secret(
    tmp_path: Path, token: str
) -> None:
    # A dict with a tuple key is journaled as its repr, cut to 1,000 characters: the cut went
    # through the token, and the start it left was not the token, so it stayed in clear.
    value = {("k",): "p" * (1000 - len("{('k',): '") - 9) + token}
    entry = await run_one(tmp_path, returning(value), "done")
    assert isinstance(entry.result, dict) and str(entry.result["repr"]).startswith("{('k',): 'ppp")
    assert START not in json.dumps(entry.result), entry.result


async def test_a_huge_exception_is_logged_with_its_traceback_cut(
    tmp_path: Path, log_text: Callable[[], str]
) -> None:
    await run_one(tmp_path, raising(lambda: ValueError("v" * 5_000_000)), "dead")
    lines = log_text().splitlines()
    assert max(len(line) for line in lines) < 64_000, max(len(line) for line in lines)
    (first, *_) = [json.loads(x) for x in lines if "unexpected error" in x]
    assert "Traceback (most recent call last)" in first["exception"]
    assert "vvvv" in first["exception"] and "characters)" in first["exception"][-40:]


def chain(depth: int) -> BaseException:
    """An exception with ``depth`` exceptions before it, each raised while handling the last."""
    exc: BaseException | None = None
    for i in range(depth):
        try:
            try:
                if exc is not None:
                    raise exc
            finally:
                raise RuntimeError(f"link {i}")
        except RuntimeError as new:
            exc = new
    assert exc is not None
    return exc


async def test_a_long_exception_chain_is_logged_cut(tmp_path: Path, log_text: Callable[[], str]) -> None:
    await run_one(tmp_path, raising(lambda: chain(3000)), "dead")
    lines = log_text().splitlines()
    assert max(len(line) for line in lines) < 64_000, max(len(line) for line in lines)
    assert any("During handling of the above exception" in x for x in lines)


async def test_a_traceback_cut_keeps_no_start_of_a_secret(
    tmp_path: Path, token: str, log_text: Callable[[], str]
) -> None:
    # The token again and again, past any bound: wherever the cut falls, it goes through one.
    await run_one(tmp_path, raising(lambda: ValueError((token + "/") * 100_000)), "dead")
    out = log_text()
    assert "***/***/" in out
    assert START not in out


def test_the_bounded_text_is_the_redactor_s_cut(token: str) -> None:
    for pad in range(0, 40):
        text = "x" * (1000 - pad) + token + "y" * 5000
        cut = REDACTOR.bounded(text, 1000)
        assert START not in cut and token[:4] not in cut[-len(token) - 30 :], (pad, cut[-80:])
        assert cut.endswith(f"… ({len(text)} characters)")
    assert REDACTOR.bounded(f"short {token}", 1000) == "short ***"


def nested(depth: int) -> list[Any]:
    top: list[Any] = []
    inner = top
    for _ in range(depth):
        inner.append([])
        inner = inner[0]
    return top


class Unshowable:
    """An object a result carries whose str() and repr() fail (a library's half-made object)."""

    def __str__(self) -> str:
        raise AttributeError("detail")

    __repr__ = __str__


@pytest.mark.parametrize("what", ["nested", "unshowable"])
async def test_a_result_json_cannot_encode_at_all_still_ends_the_action(tmp_path: Path, what: str) -> None:
    # JSON's encoder recurses: 100,000 lists deep raised RecursionError where the journal wrote the
    # end (its writer thread), and an object whose str() fails raised its own error there. Either
    # way the end was never written: the row stayed running, its key's later actions waited, the
    # write was tried again every poll_interval for ever, and a restart ran the action again.
    value = {"deep": nested(100_000)} if what == "nested" else {"odd": Unshowable()}
    entry = await run_one(tmp_path, returning(value), "done")
    deadline = time.monotonic() + 10
    async with SQLiteJournal(tmp_path / "journal.sqlite") as journal:
        while (got := await journal.get(entry.id, with_event=False)) is None or got.state != "done":
            assert time.monotonic() < deadline, got
            await asyncio.sleep(0.05)
    assert isinstance(got.result, dict) and set(got.result) == {"repr"}, got.result


def logging(fields: Callable[[], dict[str, Any]]) -> ActionSpec:
    @action("logs", params={})
    async def logs(params: dict[str, Any], ctx: ActionContext) -> None:
        """Log one line with the fields the test says (test action)."""
        ctx.log.info("plugin says", **fields())

    return logs


@pytest.mark.parametrize(
    "fields",
    [
        lambda: {"answer": "a" * 5_000_000},  # a whole answer in one field
        lambda: {"addresses": [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(20_000)]},
        lambda: {f"k{i}": "v" * 100 for i in range(2_000)},  # many fields, each small
    ],
    ids=["string", "list", "fields"],
)
async def test_a_plugins_huge_log_fields_make_one_bounded_line(
    tmp_path: Path, log_text: Callable[[], str], fields: Callable[[], dict[str, Any]]
) -> None:
    # A line past journald's LineMax (48 KiB) is split into entries of their own, none of them JSON
    # a reader can parse, and with several workers it holds the others' lines while it is written.
    await run_one(tmp_path, logging(fields), "done")
    lines = log_text().splitlines()
    assert max(len(line) for line in lines) < 48 * 1024, max(len(line) for line in lines)
    (said,) = [json.loads(x) for x in lines if "plugin says" in x]
    assert said["event"] == "plugin says" and said["action"] == "logs"
    assert said["line_cut"] > 48 * 1024 and "characters)" in said["line_start"][-40:]


async def test_a_cut_log_line_keeps_no_start_of_a_secret(
    tmp_path: Path, token: str, log_text: Callable[[], str]
) -> None:
    await run_one(tmp_path, logging(lambda: {"answer": (token + "/") * 100_000}), "done")
    out = log_text()
    assert "***/***/" in out and START not in out
