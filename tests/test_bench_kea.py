"""bench/bench_kea.py's end-to-end runner stops the ``trapd run`` it started on every path.

Never speed. The runner starts ``trapd run`` and waits for it to be ready in its
constructor; a wait that failed (not ready in time, ^C, SIGTERM) left that
process running, since no runner object came back to be closed.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_trapd_run_is_stopped_when_it_does_not_get_ready(
    kea: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    bench_kea = importlib.import_module("bench_kea")
    bench_storm = importlib.import_module("bench_storm")
    started: list[Any] = []

    def not_ready(self: Any, timeout: float = 60.0) -> float:
        started.append(self)
        raise RuntimeError("trapd not ready (injected)")

    monkeypatch.setattr(bench_storm.Pipeline, "wait_ready", not_ready)
    with pytest.raises(RuntimeError, match="injected"):
        bench_kea.E2E(tmp_path / "e2e", kea, "unix4")
    (pipeline,) = started
    try:
        assert pipeline.proc.poll() is not None, "trapd run left running"
    finally:
        if pipeline.proc.poll() is None:
            pipeline.proc.kill()
            pipeline.proc.wait(10)


def test_the_raw_unix_client_gives_up_on_a_silent_kea(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A control socket that accepts and never answers: the baseline client waited for ever."""
    import socket
    import threading

    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    bench_kea = importlib.import_module("bench_kea")
    monkeypatch.setattr(bench_kea, "RAW_TIMEOUT", 1.0)
    path = tmp_path / "kea4.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
        server.bind(str(path))
        server.listen(4)
        outcome: list[BaseException | None] = []

        def go() -> None:
            try:
                bench_kea.raw_unix(str(path), ["10.1.0.1"])
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        t = threading.Thread(target=go, daemon=True)
        t.start()
        t.join(30)
        assert not t.is_alive(), "raw_unix still waiting for Kea's answer after 30 s"
    assert isinstance(outcome[0], TimeoutError), outcome
