"""A reload that compiles a big rule set does not stop the daemon (issue 14 item 9).

The new rules compile in a thread: while they do, the old rules keep
handling traps, /healthz answers ("reloading") and WATCHDOG=1 keeps going, so
systemd's WatchdogSec does not kill a daemon that is only busy compiling.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from daemon_harness import TrapdDaemon, link_down
from listen_harness import needs_netsnmp, snmp_send

pytestmark = [pytest.mark.integration, needs_netsnmp]

# About 5 s to compile on a loaded 2-core machine (15 s with two workers): long enough that a
# loop blocked by it would miss several watchdog pings and /healthz requests.
MANY = 6000
WATCHDOG_USEC = 2_000_000  # pings every second


def log_rule(name: str, message: str, source: str | None = None) -> str:
    match = "      notification: IF-MIB::linkDown\n" + (f"      source: {source}\n" if source else "")
    return (
        f"  - name: {name}\n    match:\n{match}    actions:\n"
        f'      - action: log\n        level: warning\n        message: "{message}"\n'
    )


@pytest.mark.parametrize("workers", [1, 2])
def test_traps_healthz_and_watchdog_go_on_while_a_big_rule_set_compiles(tmp_path: Path, workers: int) -> None:
    # With two workers, the supervisor compiles first (to refuse a bad file once), then each
    # worker does; a worker whose loop stopped would stop answering the supervisor, which then
    # reports it (/healthz 503) and replaces it.
    d = TrapdDaemon.start(
        tmp_path,
        rules="rules:\n" + log_rule("down", "old {{ ifIndex }}"),
        config={"service": {"workers": workers}},
        watchdog_usec=WATCHDOG_USEC * workers,
    )
    try:
        assert d.notify is not None
        big = [log_rule("down", "new {{ ifIndex }}")]
        big += [log_rule(f"r{i}", f"r{i}", f"10.{i // 250}.{i % 250}.1") for i in range(MANY)]
        d.rules_path.write_text("rules:\n" + "".join(big))
        d.notify.pending()
        d.signal(signal.SIGHUP)
        d.notify.wait_for("RELOADING", timeout=10)
        started = time.monotonic()
        pings: list[float] = []
        health: list[str] = []
        handled_before_ready: set[int] = set()
        sent = 0
        ready = False
        while not ready:
            assert time.monotonic() - started < 300, "the reload did not complete"
            if sent < 20:
                sent += 1
                snmp_send("snmptrap", *link_down(d.target(), sent))
            # A loop blocked by the compiler would not answer within the timeout.
            status, body = d.healthz()
            assert status == 200, body
            health.append(body["status"])
            for msg in d.notify.pending():
                if "WATCHDOG" in msg:
                    pings.append(time.monotonic())
                ready = ready or "READY" in msg
            if not ready:
                handled_before_ready |= {
                    int(e["event"].split()[1]) for e in d.logs() if e["event"][:4] == "old "
                }
            time.sleep(0.1)
        took = time.monotonic() - started

        print(f"reload took {took:.1f} s; {len(pings)} pings, {sent} traps, health {health}")
        if took > 1.0 and workers == 1:  # (a blocked loop makes it take longer, not shorter)
            assert "reloading" in health, health  # answered during the reload, not only after it
        # Traps sent meanwhile were handled by the old rules before the new ones took over.
        assert handled_before_ready, (took, sent)
        # WATCHDOG=1 went on (every WatchdogSec / 2): a loop blocked by the compiler sends none.
        assert len(pings) >= int(took / workers) - 1, (took, pings)
        d.wait_log("reloaded", timeout=10)
        assert d.metric("trapd_reloads_total", result="ok") == 1
        # Nothing sent during the reload is lost; each is handled by one rule set or the other.
        d.wait_log(lambda e: e["event"].split()[0] in ("old", "new"), count=sent, timeout=30)
        snmp_send("snmptrap", *link_down(d.target(), 99))
        d.wait_log("new 99", timeout=30)  # and the new rules are in force
        assert d.stop() == 0
    finally:
        d.close()
