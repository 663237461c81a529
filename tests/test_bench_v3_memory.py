"""bench/v3_memory.py's driver (shared with bench_v3.py memory) stops its receiver on every path.

Never speed. The receiver is a child process; one that did not exit within 10 s of
SIGTERM was left running (TimeoutExpired, no kill), and one that never answered
a counters request kept the driver waiting on its stdout for ever.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

# A receiver that binds, says its port, ignores SIGTERM and, if told to, never answers SIGUSR1.
STUBBORN = """
import json, signal, socket, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
mute = "mute" in sys.argv
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("127.0.0.1", 0))
def answer(signum, frame):
    if not mute:
        print(json.dumps({"received": 0}), flush=True)
signal.signal(signal.SIGUSR1, answer)
print(json.dumps({"port": s.getsockname()[1]}), flush=True)
with open(__file__ + "." + sys.argv[-1] + ".pid", "w") as f:
    f.write(str(__import__("os").getpid()))
while True:
    time.sleep(0.1)
"""


@pytest.mark.parametrize("variant", ["answers", "mute"])
def test_a_receiver_that_ignores_sigterm_is_killed(
    variant: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    v3_memory = importlib.import_module("v3_memory")
    monkeypatch.setattr(v3_memory, "REPLY_TIMEOUT", 2.0)
    monkeypatch.setattr(v3_memory, "STOP_GRACE", 2.0)
    script = tmp_path / "stubborn.py"
    script.write_text(STUBBORN)
    outcome: list[Any] = []

    def go() -> None:
        try:
            outcome.append(v3_memory.run_variant(variant, [b"x"] * 10, 100.0, 5, 5.0, script=str(script)))
        except BaseException as exc:
            outcome.append(exc)

    pid_file = Path(f"{script}.{variant}.pid")
    t = threading.Thread(target=go, daemon=True)
    t.start()
    try:
        t.join(90)
        assert not t.is_alive(), "the driver still waiting after 90 s"
        pid = int(pid_file.read_text())
        assert not Path(f"/proc/{pid}").exists(), f"the receiver ({pid}) is still running"
    finally:  # on a failure too: the stub ignores SIGTERM, it must not outlive the test
        if pid_file.exists():
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
