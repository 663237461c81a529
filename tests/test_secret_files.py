"""Secrets read from files (``{file: PATH}``): what a file that is not a regular one gets."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from trapd.secrets import Secret, SecretError, resolve
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
