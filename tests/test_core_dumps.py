"""trapd run leaves no core dump: one holds every community, v3 key and Kea password in clear.

The unit sets LimitCORE=0; trapd run started otherwise (a shell, a container, another service
manager) under a core limit dumped its whole memory into its working directory on a SIGABRT
(a watchdog's kill, the supervisor's to a stuck worker) or a crash.
"""

from __future__ import annotations

import resource
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import TrapdDaemon

COMMUNITY = "c0re-dump-s3cret-community"


@pytest.fixture
def core_limit() -> Iterator[None]:
    """Core dumps allowed for the daemon the test starts (it inherits the limit)."""
    before = resource.getrlimit(resource.RLIMIT_CORE)
    if before[1] != resource.RLIM_INFINITY:
        pytest.skip("the hard core limit does not allow a dump here")
    if Path("/proc/sys/kernel/core_pattern").read_text().startswith("|"):
        pytest.skip("core dumps go to a helper program here, not to the working directory")
    resource.setrlimit(resource.RLIMIT_CORE, (resource.RLIM_INFINITY, before[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_CORE, before)


def test_a_sigabrt_leaves_no_core_dump_with_the_secrets(tmp_path: Path, core_limit: None) -> None:
    d = TrapdDaemon.start(tmp_path, rules="rules: []\n", config={"listener": {"communities": [COMMUNITY]}})
    try:
        d.signal(signal.SIGABRT)
        rc = d.wait_exit()
    finally:
        d.close()
    assert rc == -signal.SIGABRT, rc
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:  # the kernel writes the dump before the parent sees the exit
        cores = [p.name for p in tmp_path.iterdir() if p.name.startswith("core")]
        if cores:
            break
        time.sleep(0.1)
    assert cores == [], cores
