"""scripts/kea-chroots.sh run by two processes at once (two pytest-xdist workers both reach the chroot tier).

The second run must wait for the first instead of taking its half-built chroot for an
unfinished earlier build and removing it under the running debootstrap.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "kea-chroots.sh"
BINARIES = ("kea-dhcp4", "kea-dhcp6", "kea-ctrl-agent", "kea-dhcp-ddns")


@pytest.mark.skipif(os.geteuid() != 0, reason="the script needs root")
def test_a_second_run_waits_for_the_build_in_progress(tmp_path: Path) -> None:
    base = tmp_path / "chroots"
    sbin = base / "fake" / "usr" / "sbin"
    sbin.mkdir(parents=True)
    for b in BINARIES:
        (sbin / b).write_text("#!/bin/sh\n")
        (sbin / b).chmod(0o755)
    (base / "fake" / ".trapd-chroot").touch()
    (base / "fake" / ".trapd-ready").write_text("9.9.9\n")
    env = {**os.environ, "TRAPD_KEA_SUITES": "fake"}
    with open(base / ".lock", "w") as held:  # a build in progress holds the lock
        fcntl.flock(held, fcntl.LOCK_EX)
        proc = subprocess.Popen([str(SCRIPT), str(base)], env=env, stdout=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 1.5
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
            assert proc.poll() is None, "the script did not wait for the build in progress"
        finally:
            fcntl.flock(held, fcntl.LOCK_UN)
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0 and "ready:" in out and "9.9.9" in out
