"""service.workers under the unit's hardening: every system call of supervisor and workers is allowed.

The supervisor adds what a single trapd never does: fork (clone), prctl
(PR_SET_PDEATHSIG, through ctypes), socketpair, wait4, kill, and a fork
from its running loop when it restarts a worker. This runs ``trapd run
--workers 2`` under ``strace -f`` through start, a trap, SIGHUP, a worker
killed and restarted, and SIGTERM, and checks the trace against the unit's
SystemCallFilter= and MemoryDenyWriteExecute= (the helpers of
test_systemd_units.py).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from notify_harness import NotifySocket
from test_systemd_units import (
    TRAPD,
    allowed_syscalls,
    analyse_trace,
    needs_analyze,
    needs_strace,
    write_traced_config,
)

pytestmark = [
    pytest.mark.integration,
    needs_analyze,
    needs_strace,
    pytest.mark.skipif(shutil.which("snmptrap") is None, reason="net-snmp snmptrap missing"),
]


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def test_supervisor_and_workers_stay_inside_the_filter(tmp_path: Path) -> None:
    port = write_traced_config(tmp_path, "status_interval: 0.5, workers: 2")
    trace = tmp_path / "trace"
    linkdown = ["1.3.6.1.6.3.1.1.5.3", "1.3.6.1.2.1.2.2.1.1.3", "i", "3"]
    with NotifySocket(tmp_path / "notify") as manager:
        env = {**os.environ, "NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "4000000"}
        proc = subprocess.Popen(
            ["strace", "-f", "-qq", "-o", trace, TRAPD, "run", "--config", tmp_path / "trapd.yaml"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            manager.wait_for("READY", timeout=90)  # slow under strace
            for _ in range(4):
                subprocess.run(
                    ["snmptrap", "-v2c", "-c", "public", f"127.0.0.1:{port}", "", *linkdown], check=True
                )
            manager.wait_for("WATCHDOG", timeout=10)
            (supervisor,) = children(proc.pid)
            os.kill(supervisor, signal.SIGHUP)
            manager.wait_for("RELOADING", timeout=30)
            manager.wait_for("READY", timeout=60)
            workers = children(supervisor)
            assert len(workers) == 2, workers
            os.kill(workers[0], signal.SIGKILL)  # restarted: a fork from the supervisor's running loop
            # One snapshot per round: two pgrep calls could see the killed worker as a zombie, then
            # see it reaped before its replacement is forked, and end the wait too early.
            deadline = time.monotonic() + 60
            now = children(supervisor)
            while time.monotonic() < deadline and (len(now) != 2 or workers[0] in now):
                time.sleep(0.2)
                now = children(supervisor)
            assert len(now) == 2 and workers[0] not in now, now
            time.sleep(3)  # the new worker gets through its start under strace
            os.kill(supervisor, signal.SIGTERM)
            manager.wait_for("STOPPING", timeout=30)
            _, err = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    calls, wx = analyse_trace(trace)
    if os.geteuid() == 0:
        calls.discard("fchown")  # SQLite as root only (see test_systemd_units.py)
    assert {"clone", "clone3"} & calls and {"prctl", "socketpair", "wait4", "kill"} <= calls, sorted(calls)
    assert calls - allowed_syscalls() == set()
    assert wx == []
