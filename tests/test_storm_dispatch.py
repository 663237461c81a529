"""A trap storm must not starve the dispatcher: an action that falls due during the storm runs during it.

A real ``trapd run`` (tests/daemon_harness.py) listens on two ports. A sender thread
keeps pre-encoded linkDown traps arriving on the first at a rate this test sets, far
beyond what trapd can take, bounded in count and time; every one of them matches a
rule that journals an action, so the dispatcher always has work queued behind the
storm. Once trapd has visibly been under the storm for a while, net-snmp's snmptrap
sends one linkUp to the second port (a quiet socket: the kernel cannot drop it for a
full buffer); its rule runs ``touch MARKER`` through the exec plugin. The sender stops
only after the marker exists, or after a generous bound. The marker must have appeared
while traps were still being sent: the receive path shares the event loop with the
dispatcher instead of taking all of it (docs/dispatch.md, "Storms").

Throughput and latency figures are the benchmark's (bench/bench_storm.py overload), not
this test's.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from pathlib import Path

import pytest
from daemon_harness import LINK_UP, TrapdDaemon, free_port
from listen_harness import needs_netsnmp, snmp_send

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import loadgen  # bench/ is a directory of scripts, not a package

pytestmark = [needs_netsnmp, pytest.mark.integration]

SEQ = loadgen.SEQ_OID_STR
STORM_RATE = 40_000  # traps/s asked of the sender: several times what trapd receives on 2 cores
STORM_MAX_SECONDS = 90.0
STORM_MAX_COUNT = int(STORM_RATE * STORM_MAX_SECONDS)
# Storm traps trapd must have received before the probe is sent: by then a dispatcher that only
# gets the loop's leftovers has thousands of actions queued ahead of the probe's.
RECEIVED_BEFORE_PROBE = 10_000
PROBE_WAIT_MAX = 45.0


def rules(marker: Path) -> str:
    return f"""
rules:
  - name: storm-every-trap
    match:
      notification: IF-MIB::linkDown
      varbinds: {{"{SEQ}": {{regex: '\\d{{10}}'}}}}
    actions:
      - action: log
        level: debug
        message: "storm {{{{ varbinds['{SEQ}'].value }}}}"
        key: "seq:{{{{ varbinds['{SEQ}'].value }}}}"
  - name: probe
    match: {{notification: IF-MIB::linkUp}}
    actions:
      - action: exec
        argv: [/usr/bin/touch, "{marker}"]
        delay: 1s
"""


class Storm(threading.Thread):
    """Sends ``STORM_RATE`` traps/s (batches per millisecond) until stopped or its bounds are reached."""

    def __init__(self, address: tuple[str, int]) -> None:
        super().__init__(daemon=True, name="storm-sender")
        self.address = address
        self.messages = loadgen.build_messages(loadgen.LoadSpec(version="v2c"), 1, 20_000)
        self.sent = 0
        self.stop_event = threading.Event()

    def run(self) -> None:
        n = len(self.messages)
        t0 = time.monotonic()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(self.address)
            send = s.send
            while not self.stop_event.is_set() and self.sent < STORM_MAX_COUNT:
                elapsed = time.monotonic() - t0
                if elapsed > STORM_MAX_SECONDS:
                    break
                due = min(STORM_MAX_COUNT, int(elapsed * STORM_RATE) + 1)
                while self.sent < due:
                    try:
                        send(self.messages[self.sent % n])
                    except OSError:  # ENOBUFS on a busy loopback: not sent, try the next tick
                        break
                    self.sent += 1
                time.sleep(0.001)

    def sending(self) -> bool:
        return self.is_alive() and not self.stop_event.is_set()


def test_action_due_during_a_storm_runs_during_it(tmp_path: Path) -> None:
    marker = tmp_path / "probe-ran"
    storm_port, probe_port = free_port(), free_port()
    d = TrapdDaemon.start(
        tmp_path / "trapd",
        rules=rules(marker),
        trap_port=storm_port,
        config={
            "listener": {"listen": [f"127.0.0.1:{storm_port}", f"127.0.0.1:{probe_port}"]},
            # Quiet log: the storm's actions would otherwise be two lines each on the harness's pipe.
            "service": {"log": {"level": "warning"}},
        },
    )
    storm = Storm(("127.0.0.1", d.trap_port))
    try:
        storm.start()
        deadline = time.monotonic() + STORM_MAX_SECONDS / 2
        received = 0.0
        while received < RECEIVED_BEFORE_PROBE:
            assert time.monotonic() < deadline, f"trapd received only {received} storm traps"
            assert storm.sending(), "the storm ended before trapd was loaded"
            received = d.metric("trapd_notifications_received_total")
            time.sleep(0.2)

        snmp_send("snmptrap", "-v", "2c", "-c", "public", f"127.0.0.1:{probe_port}", "", LINK_UP, check=True)
        probe_sent = time.monotonic()
        seen_while_sending = False
        while time.monotonic() - probe_sent < PROBE_WAIT_MAX and storm.sending():
            if marker.exists():
                seen_while_sending = storm.sending()
                break
            time.sleep(0.05)
        storm.stop_event.set()
        storm.join(10)
        scrape = d.metrics()
        socket_drops = d.metric("trapd_socket_drops_total", scrape)
        waited = time.monotonic() - probe_sent

        assert socket_drops > 0, "the kernel dropped nothing: trapd was not overloaded, nothing was tested"
        assert seen_while_sending, (
            f"the probe's action had not run {waited:.1f} s after its trap, while the storm went on "
            f"({storm.sent} traps sent, {d.metric('trapd_actions_total', scrape, outcome='done'):.0f} "
            f"actions done, {d.metric('trapd_notifications_received_total', scrape):.0f} received)"
        )
        # The receive path did yield (and says so), and nothing the storm matched was lost on the
        # way to the journal.
        assert d.metric("trapd_receive_pauses_total", scrape) > 0
        assert d.metric("trapd_outcomes_lost_total", scrape) == 0
    finally:
        storm.stop_event.set()
        storm.join(10)
        d.close()
