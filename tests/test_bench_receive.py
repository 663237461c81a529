"""Smoke test for bench/bench_receive.py: it runs trapd's real receive path and checks its own counts.

Never speed (the benchmark measures that): a run must receive every datagram it
sends, in-process and through a real socket, and a broken path must make it fail.
"""

from __future__ import annotations

import importlib
import json
import sys
import threading
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_chain_and_socket_runs_receive_every_trap(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    bench_receive = importlib.import_module("bench_receive")
    out = tmp_path / "runs.json"
    argv = ["--modes", "chain,socket", "--rules", "20", "--traps", "300", "--repeats", "2"]
    argv += ["--json", str(out)]
    assert bench_receive.main(argv) == 0
    runs = json.loads(out.read_text())["runs"]
    assert set(runs) == {"chain", "socket"} and all(len(v) == 2 and min(v) > 0 for v in runs.values())
    assert "µs/trap median" in capsys.readouterr().out


def test_a_path_that_loses_traps_fails_the_run(monkeypatch: pytest.MonkeyPatch) -> None:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    bench_receive = importlib.import_module("bench_receive")
    from trapd.listener import fastpath

    real = fastpath.decode_unless_v3
    calls = [0]

    def every_tenth_refused(data: bytes) -> fastpath.FastMessage | None:
        calls[0] += 1
        if calls[0] % 10 == 0:
            raise fastpath.Rejected("truncated")
        return real(data)

    monkeypatch.setattr(fastpath, "decode_unless_v3", every_tenth_refused)
    with pytest.raises(SystemExit, match="received"):
        bench_receive.main(["--modes", "chain", "--rules", "20", "--traps", "200", "--repeats", "1"])


@pytest.mark.parametrize("mode", ["socket", "paced"])
def test_a_socket_path_that_loses_traps_fails_the_run_in_bounded_time(
    mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a socket the run waited for every datagram without a deadline: a lost one hung it."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    bench_receive = importlib.import_module("bench_receive")
    from trapd.listener import fastpath

    real = fastpath.decode_unless_v3
    calls = [0]

    def every_tenth_refused(data: bytes) -> fastpath.FastMessage | None:
        calls[0] += 1
        if calls[0] > 200 and calls[0] % 10 == 0:  # the in-process warm-up (200 traps) passes
            raise fastpath.Rejected("truncated")
        return real(data)

    monkeypatch.setattr(fastpath, "decode_unless_v3", every_tenth_refused)
    outcome: list[BaseException | int] = []

    def run() -> None:
        try:
            outcome.append(
                bench_receive.main(["--modes", mode, "--rules", "20", "--traps", "200", "--repeats", "1"])
            )
        except BaseException as exc:
            outcome.append(exc)

    # A thread, so that a hang fails this test instead of stopping the suite.
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(60)
    assert not t.is_alive(), f"bench_receive --modes {mode} still waiting after 60 s"
    assert isinstance(outcome[0], SystemExit) and "received" in str(outcome[0]), outcome
