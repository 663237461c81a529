"""Smoke test for bench/bench_startup.py: a trapd that cannot start ends the run at once.

Never speed. The run waited for READY=1 on the notify socket, 60 s for each
message, although the trapd it started had already exited (a bad rules file),
and then failed with a bare socket timeout; its stderr went nowhere.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_trapd_exiting_before_ready_fails_the_run_at_once(tmp_path: Path) -> None:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    bench_startup = importlib.import_module("bench_startup")
    bad = tmp_path / "bad-rules.yaml"
    bad.write_text("rules:\n  - name: broken\n    match: {notification: NO-SUCH-MIB::nothing}\n")
    root = tmp_path / "root"
    root.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    t0 = time.monotonic()
    # 2: a configuration error (1c47950), which systemd does not restart.
    with pytest.raises(SystemExit, match="exited with status 2 before READY=1") as exc:
        bench_startup.one_run(root, env, [], 0.1, rules=bad, ready_timeout=60)
    assert time.monotonic() - t0 < 40
    assert "NO-SUCH-MIB" in str(exc.value)  # trapd's own error, not a bare timeout
