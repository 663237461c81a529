"""Secrets read from files (``{file: PATH}``): what a file that is not a regular one gets."""

from __future__ import annotations

import asyncio
import gc
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from trapd.dispatch.config import DispatchConfig, JournalConfig
from trapd.dispatch.dispatcher import Dispatcher
from trapd.dispatch.journal import SQLiteJournal
from trapd.dispatch.testing import make_event, make_outcome, plan
from trapd.params import Param
from trapd.plugin import ActionContext, PermanentError, action
from trapd.secrets import REDACTOR, REFS, Secret, SecretError, resolve
from trapd.yamlsource import ConfigError


def returns_within(seconds: float, call: Callable[[], object]) -> BaseException | None:
    """What ``call`` raised (None if nothing), failing the test if it has not returned in ``seconds``."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            call()
            outcome.append(None)
        except BaseException as exc:  # handed to the test
            outcome.append(exc)

    t = threading.Thread(target=run, daemon=True)  # a daemon thread: a hang does not hang pytest's exit
    t.start()
    t.join(seconds)
    if not outcome:
        pytest.fail(f"still waiting after {seconds} s")
    return outcome[0]


def test_a_fifo_secret_file_is_refused_by_name_at_load_and_when_resolved(tmp_path: Path) -> None:
    fifo = tmp_path / "kea.pw"
    os.mkfifo(fifo)
    at_load = returns_within(10, lambda: Secret.from_config({"file": str(fifo)}))
    assert isinstance(at_load, ConfigError), at_load
    assert f"cannot read secret file {fifo}: not a regular file (a FIFO)" in str(at_load)
    at_run = returns_within(10, lambda: resolve({"$secret": f"file:{fifo}"}))
    assert isinstance(at_run, SecretError), at_run
    assert str(at_run) == f"secret file:{fifo}: cannot read the file: not a regular file (a FIFO)"


ROTATIONS = 50


def rotate(path: Path, n: int) -> str:
    value = f"rotated-token-{path.name}-{n:04d}"
    tmp = path.with_suffix(".new")
    tmp.write_text(value + "\n")
    tmp.replace(path)  # as a rotation tool writes it: a new file renamed over the old
    return value


def test_a_rotating_file_secret_keeps_the_current_and_the_previous_value_masked_not_every_one(
    tmp_path: Path,
) -> None:
    """Each action that uses {file: PATH} reads the file again: every rotation added a value to
    the redactor, for ever (memory, and every log line searched for each)."""
    path = tmp_path / "token"
    values = [rotate(path, n) for n in range(1)]
    before = len(REDACTOR)
    for n in range(1, ROTATIONS):
        assert resolve({"$secret": f"file:{path}"}) == values[-1]
        values.append(rotate(path, n))
    assert resolve({"$secret": f"file:{path}"}) == values[-1]
    assert REDACTOR.redact(f"now {values[-1]} before {values[-2]}") == "now *** before ***"
    assert REDACTOR.redact(values[0]) == values[0]  # long superseded, no longer masked
    assert len(REDACTOR) <= before + 2, len(REDACTOR) - before


def test_a_rotated_value_still_held_stays_masked(tmp_path: Path) -> None:
    """What is still in use stays masked however often the file rotated since: a Secret loaded from
    it (the Kea password a client keeps until a restart) and a value a running action holds."""
    path = tmp_path / "kea.pw"
    loaded_value = rotate(path, 0)
    loaded = Secret.from_config({"file": str(path)})
    in_action = rotate(path, 1)
    assert resolve({"$secret": f"file:{path}"}) == in_action
    REDACTOR.hold(in_action)
    for n in range(2, ROTATIONS):
        rotate(path, n)
        resolve({"$secret": f"file:{path}"})
        Secret.from_config({"file": str(path)})  # a reload reads it again
    assert loaded.reveal() == loaded_value
    assert REDACTOR.redact(f"{loaded_value} {in_action}") == "*** ***"
    REDACTOR.release(in_action)
    assert REDACTOR.redact(in_action) == in_action
    del loaded
    gc.collect()
    assert REDACTOR.redact(loaded_value) == loaded_value


def test_a_rotated_community_keeps_a_reference_for_the_current_and_the_previous_value(tmp_path: Path) -> None:
    """The community's reverse map (value -> where it came from) grew by one per reload too."""
    path = tmp_path / "community"
    kept = []
    for n in range(ROTATIONS):
        value = rotate(path, n)
        kept.append(Secret.from_config({"file": str(path)}))
        kept = kept[-1:]  # a reload drops the old configuration
    ref = f"file:{path}"
    assert REFS.reference(f"rotated-token-community-{ROTATIONS - 1:04d}") == ref
    assert REFS.reference(f"rotated-token-community-{ROTATIONS - 2:04d}") == ref
    assert REFS.reference(f"rotated-token-community-{0:04d}") is None
    assert REFS.value(ref) == value


async def test_an_action_s_file_secret_stays_masked_while_it_runs_though_the_file_rotates(
    tmp_path: Path,
) -> None:
    """The dispatcher holds what it resolved for an action until the action's end is recorded: a
    run that outlasts two rotations (read by other actions meanwhile) still has its error masked."""
    path = tmp_path / "hook-token"
    first = rotate(path, 0)

    @action("quoting", params={"token": Param("string", secret=True)}, idempotent=True)
    async def quoting(params: dict[str, Any], ctx: ActionContext) -> None:
        """Quote the token after two rotations (test action)."""
        for n in (1, 2):
            rotate(path, n)
            resolve({"$secret": f"file:{path}"})  # other actions read the new token meanwhile
        raise PermanentError(f"refused: Bearer {params['token']}")

    async with SQLiteJournal(tmp_path / "journal.sqlite") as journal:
        config = DispatchConfig(workers=1, shutdown_timeout=1.0, journal=JournalConfig(poll_interval=0.05))
        d = Dispatcher(config, journal, {"quoting": quoting}, kea=None)
        await d.start()
        try:
            (id_,) = await d.submit(
                make_event(), make_outcome(plan("quoting", {"token": {"$secret": f"file:{path}"}}))
            )
            deadline = time.monotonic() + 10
            while d.stats.outcomes[("quoting", "dead")] == 0:
                assert time.monotonic() < deadline, "the action did not end"
                await asyncio.sleep(0.02)
        finally:
            await d.stop(0.5)
        entry = await journal.get(int(id_), with_event=False)
    assert entry is not None and entry.last_error is not None
    assert first not in entry.last_error and "refused: Bearer ***" in entry.last_error, entry.last_error
    assert REDACTOR.redact(first) == first  # the run is over: superseded twice, forgotten


async def test_a_held_action_s_secret_rotated_while_it_was_held_is_masked_when_it_runs(
    tmp_path: Path,
) -> None:
    """A cap held the action; its token file rotated twice meanwhile (read by other actions, so the
    value of when it was planned is no longer masked). Released, it reads the token of now, and
    that is masked in its journaled error and its log lines, as in a run that was never held:
    nothing of the secret was resolved or journaled at planning time."""
    from structlog.testing import capture_logs

    from trapd.rules.outcome import RateCap

    path = tmp_path / "held-token"
    planned = rotate(path, 0)
    resolve({"$secret": f"file:{path}"})  # read at planning time by another action

    @action("quoting-held", params={"token": Param("string", secret=True)}, idempotent=True)
    async def quoting(params: dict[str, Any], ctx: ActionContext) -> None:
        """Log and quote the token (test action)."""
        ctx.log.warning("about to be refused", answer=f"Bearer {params['token']}")
        raise PermanentError(f"refused: Bearer {params['token']}")

    async with SQLiteJournal(tmp_path / "journal.sqlite") as journal:
        config = DispatchConfig(workers=1, shutdown_timeout=1.0, journal=JournalConfig(poll_interval=0.05))
        d = Dispatcher(config, journal, {"quoting-held": quoting}, kea=None)
        await d.start()
        try:
            cap = RateCap("approval", limit=0, per=60.0)
            with capture_logs() as logs:
                (id_,) = await d.submit(
                    make_event(),
                    make_outcome(plan("quoting-held", {"token": {"$secret": f"file:{path}"}}, caps=[cap])),
                )
                await until(lambda: d.stats.outcomes[("quoting-held", "held")] == 1)
                now_value = ""
                for n in (1, 2):
                    now_value = rotate(path, n)
                    resolve({"$secret": f"file:{path}"})  # other actions read the new token meanwhile
                assert REDACTOR.redact(planned) == planned  # superseded twice: no longer masked
                assert await d.release([id_]) == [int(id_)]
                await until(lambda: d.stats.outcomes[("quoting-held", "dead")] == 1)
        finally:
            await d.stop(0.5)
        entry = await journal.get(int(id_), with_event=False)
    assert entry is not None and entry.last_error is not None
    assert now_value not in entry.last_error and "refused: Bearer ***" in entry.last_error, entry.last_error
    from trapd.service.logging import redact

    lines = [str(redact(dict(line))) for line in logs]
    assert any("Bearer ***" in line for line in lines), lines
    assert not any(now_value in line or planned in line for line in lines), lines
    assert planned not in entry.last_error


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the timeout"
        await asyncio.sleep(0.02)


async def test_an_action_s_result_is_masked_by_what_it_read_though_it_is_written_after_its_end(
    tmp_path: Path,
) -> None:
    """A result is encoded (and masked) where the journal writes it, after the action has ended and
    its secrets were let go: a token the run outlasted two rotations of (an exec's output, an
    echoing webhook's answer) was journaled in clear. Masked as the action ends, while held."""
    path = tmp_path / "result-token"
    rotate(path, 0)

    @action("echoing", params={"token": Param("string", secret=True)}, idempotent=True)
    async def echoing(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        """Answer with the token after two rotations (test action)."""
        for n in (1, 2):
            rotate(path, n)
            resolve({"$secret": f"file:{path}"})  # other actions read the new token meanwhile
        return {"stdout": f"token={params['token']}", "nested": [{"echo": params["token"]}]}

    async with SQLiteJournal(tmp_path / "journal.sqlite") as journal:
        config = DispatchConfig(workers=1, shutdown_timeout=1.0, journal=JournalConfig(poll_interval=0.05))
        d = Dispatcher(config, journal, {"echoing": echoing}, kea=None)
        await d.start()
        try:
            (id_,) = await d.submit(
                make_event(), make_outcome(plan("echoing", {"token": {"$secret": f"file:{path}"}}))
            )
            await until(lambda: d.stats.outcomes[("echoing", "done")] == 1)
        finally:
            await d.stop(0.5)
        entry = await journal.get(int(id_), with_event=False)
    assert entry is not None
    assert entry.result == {"stdout": "token=***", "nested": [{"echo": "***"}]}, entry.result


def test_a_secret_collected_while_the_redactor_is_busy_does_not_deadlock(tmp_path: Path) -> None:
    """A Secret in a reference cycle is freed by the cyclic collector, which may run in the middle
    of anything, the redactor's own locked work included (any allocation can trigger it): its
    release must not wait for the lock its own thread holds."""
    path = tmp_path / "cycled"
    value = rotate(path, 0)

    def collect_while_busy() -> None:
        secret = Secret.from_config({"file": str(path)})
        cycle: list[object] = [secret]
        cycle.append(cycle)
        del secret, cycle
        with REDACTOR._lock:  # as inside add(), when an allocation starts a collection
            gc.collect()

    assert returns_within(10, collect_while_busy) is None
    rotate(path, 1)
    resolve({"$secret": f"file:{path}"})
    rotate(path, 2)
    resolve({"$secret": f"file:{path}"})
    assert REDACTOR.redact(value) == value  # released once the lock was free, then superseded
