"""SIGHUP while a reload runs, and storms of them (a config-management run that reloads per
file, a loop in a script): the reloads are coalesced, the last request is never lost, a
change written during a reload is taken by the next one, and the daemon stays responsive."""

from __future__ import annotations

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
