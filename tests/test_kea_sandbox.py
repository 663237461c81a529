"""tests/kea_sandbox.py stops the Kea daemons it spawned when their start is interrupted.

The benchmarks (bench_kea.py, bench_worker.py) start Kea through start_kea and
stop it in a ``finally`` that only covers a started instance: a ^C or SIGTERM
while start_kea waited for the daemons to answer left them running.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import kea_sandbox
import pytest


@pytest.mark.skipif(
    shutil.which("kea-dhcp4") is None and not Path("/usr/sbin/kea-dhcp4").exists(), reason="Kea"
)
def test_an_interrupted_start_stops_the_spawned_daemons(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawned: list[Any] = []
    real_spawn = kea_sandbox.KeaInstance.spawn

    def spawn(self: kea_sandbox.KeaInstance, daemon: str) -> None:
        real_spawn(self, daemon)
        spawned.append(self.procs[daemon])

    def interrupted(self: kea_sandbox.KeaInstance, timeout: float = 0.0) -> None:
        raise KeyboardInterrupt  # as SIGTERM is turned into by bench/benchproc.py

    monkeypatch.setattr(kea_sandbox.KeaInstance, "spawn", spawn)
    monkeypatch.setattr(kea_sandbox.KeaInstance, "wait_ready", interrupted)
    try:
        with pytest.raises(KeyboardInterrupt):
            kea_sandbox.start_kea(tmp_path, dhcp6=False)
        assert spawned, "no daemon was spawned"
        assert [p.poll() is not None for p in spawned] == [True] * len(spawned), "Kea left running"
    finally:
        for p in spawned:
            if p.poll() is None:
                p.kill()
                p.wait(10)
