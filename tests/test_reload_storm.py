"""SIGHUP while a reload runs, and storms of them (a config-management run that reloads per
file, a loop in a script): the reloads are coalesced, the last request is never lost, a
change written during a reload is taken by the next one, and the daemon stays responsive."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from daemon_harness import TrapdDaemon, link_down
from listen_harness import needs_netsnmp, snmp_send
from rules_support import per_port_rules

pytestmark = [pytest.mark.integration, needs_netsnmp]

# Enough rules that a reload takes a while (about a second under load), so that signals land
# while one runs.
MANY = 2000


def reloads_done(d: TrapdDaemon) -> int:
    ends = ("reloaded", "reload failed, keeping the running configuration")
    return sum(1 for e in d.log if e.get("event") in ends)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_storm_of_sighups_is_coalesced_and_the_last_change_is_taken(tmp_path: Path, workers: int) -> None:
    config = {"service": {"workers": workers}}
    d = TrapdDaemon.start(tmp_path, rules=per_port_rules(MANY, "v0"), config=config)
    try:
        d.rules_path.write_text(per_port_rules(MANY, "v1"))
        t0 = time.monotonic()
        for i in range(100):  # 100 in about a second
            d.signal(signal.SIGHUP)
            if i == 50:
                # A change written while the first reload runs: a later reload must take it.
                d.rules_path.write_text(per_port_rules(MANY, "v2"))
            time.sleep(0.01)
        storm = time.monotonic() - t0
        # The reloads settle: none running, none asked for.
        deadline = time.monotonic() + 120
        seen, stable_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            n = reloads_done(d)
            if n != seen:
                seen, stable_since = n, time.monotonic()
            elif time.monotonic() - stable_since > 5:
                break
            time.sleep(0.2)
        # Coalesced: one reload runs at a time, and the signals that came during it ask for one more.
        reloads = [e for e in d.log if e.get("event") == "reloaded"]
        assert 1 <= seen < 50, f"{seen} reloads for 100 SIGHUPs in {storm:.1f} s"
        assert len(reloads) == seen
        assert not [e for e in d.log if e.get("event") == "reload failed, keeping the running configuration"]
        status, _ = d.healthz()
        assert status == 200
        snmp_send("snmptrap", *link_down(d.target(), 7), check=True)
        d.wait_log(lambda e: e.get("event") == "v2 7 from 127.0.0.1", timeout=30)
        assert not [e for e in d.log if str(e.get("event", "")).startswith(("v0 ", "v1 "))]
        assert d.stop() == 0
    finally:
        d.close()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_workers_that_read_other_rules_than_the_supervisor_are_reloaded_again(tmp_path: Path) -> None:
    """With several workers, the supervisor compiles the files first (a bad file is refused once),
    then each worker compiles them again. A deploy that landed in between made the workers run
    the new rules while the supervisor kept the ones it had checked, which a worker restarted
    later (a crash, the watchdog) started with: the unit ran two rule sets, and said nothing."""
    many = 6000  # seconds of compiling in the supervisor: the window the deploy lands in
    d = TrapdDaemon.start(tmp_path, rules=per_port_rules(many, "v0"), config={"service": {"workers": 2}})
    try:
        assert d.notify is not None and d.proc is not None
        supervisor = d.proc.pid
        d.rules_path.write_text(per_port_rules(many, "v1"))
        d.notify.pending()
        d.signal(signal.SIGHUP)
        d.notify.wait_for("RELOADING", timeout=10)
        # The supervisor has read the files once it has spent CPU compiling them.
        start = cpu_seconds(supervisor)
        deadline = time.monotonic() + 60
        while cpu_seconds(supervisor) - start < 0.15:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        new = tmp_path / "rules.yaml.new"
        new.write_text(per_port_rules(many, "v2"))
        os.replace(new, d.rules_path)  # the deploy, atomic
        d.wait_log("the rule files changed while the workers loaded them: reloading again", timeout=120)
        d.wait_log(lambda e: e.get("event") == "reloaded" and "workers" in e, timeout=120, count=2)
        # A worker restarted now starts with what the supervisor holds: the same rules as the other.
        pids = {int(e["worker"]): int(e["pid"]) for e in d.logs("worker started")}
        os.kill(pids[0], signal.SIGKILL)
        d.wait_log(lambda e: e.get("event") == "worker ready" and e["worker"] == 0, timeout=60)
        for _ in range(16):  # from as many source ports: both workers receive some
            snmp_send("snmptrap", *link_down(d.target(), 7), check=True)
        lines = d.wait_log(lambda e: str(e.get("event", "")).endswith(" 7 from 127.0.0.1"), 30, count=16)
        assert {e["event"].split()[0] for e in lines} == {"v2"}, [(e["worker"], e["event"]) for e in lines]
        assert {e["worker"] for e in lines} == {0, 1}
        assert d.stop() == 0
    finally:
        d.close()
