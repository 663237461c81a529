"""Overload: a real ``trapd run`` blasted far beyond what it can take, then asked to carry on.

Each test starts the daemon as systemd would (tests/daemon_harness.py), with
rules that journal a tenth of the storm (the trap's sequence number ends in
0) and a delayed action that a linkUp cancels. A pre-encoded sender blasts
it from loopback for a bounded time and count. Afterwards the daemon must
answer /healthz, receive a normal trap from net-snmp's snmptrap and act on it
(the linkUp cancels the pending action), show every datagram as received or
as a counted drop (the listener's reasons or the kernel's drops on its
socket), and its peak RSS must have stayed under the bound.

Throughput figures are the benchmark's (bench/bench_storm.py), not these tests'.
"""

from __future__ import annotations

import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import IF_INDEX, LINK_UP, TrapdDaemon, link_down
from listen_harness import capture_datagram, needs_netsnmp, snmp_send

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
import loadgen  # bench/ is a directory of scripts, not a package

pytestmark = [needs_netsnmp, pytest.mark.integration]

RSS_BOUND_KB = 150 * 1024
BLAST_SECONDS = 3.0
BLAST_MAX = 600_000
SEQ = loadgen.SEQ_OID_STR

RULES = f"""
rules:
  - name: journal-tenth
    match:
      notification: IF-MIB::linkDown
      varbinds: {{"{SEQ}": {{regex: '\\d{{9}}0'}}}}
    actions:
      - action: log
        message: "storm {{{{ varbinds['{SEQ}'].value }}}}"
        key: "seq:{{{{ varbinds['{SEQ}'].value }}}}"
  - name: port-down
    match: {{notification: IF-MIB::linkDown, varbinds: {{ifIndex: 7}}}}
    actions:
      - action: log
        message: "port 7 cleanup"
        delay: 5m
        cancel-key: "port:{{{{ source }}}}:{{{{ ifIndex }}}}"
  - name: port-up
    match: {{notification: IF-MIB::linkUp}}
    cancel: "port:{{{{ source }}}}:{{{{ ifIndex }}}}"
"""


def link_up(target: str, if_index: int) -> list[str]:
    return ["-v", "2c", "-c", "public", target, "", LINK_UP, f"{IF_INDEX}.{if_index}", "i", str(if_index)]


def status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def blast(d: TrapdDaemon, messages: list[bytes], *, interleave: bytes | None = None, every: int = 0) -> int:
    """Send as fast as this loop can, for BLAST_SECONDS or BLAST_MAX datagrams; return how many went out."""
    sent = 0
    n = len(messages)
    deadline = time.monotonic() + BLAST_SECONDS
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(d.address)
        send = s.send
        while sent < BLAST_MAX:
            if sent % 1000 == 0 and time.monotonic() > deadline:
                break
            data = interleave if every and interleave is not None and sent % every == every - 1 else None
            try:
                send(data or messages[sent % n])
                sent += 1
            except OSError:  # ENOBUFS on a busy loopback: the datagram was not sent
                time.sleep(0.0005)
    return sent


def accounted(d: TrapdDaemon) -> tuple[float, dict[str, Any]]:
    scrape = d.metrics()
    parts = {
        "received": d.metric("trapd_notifications_received_total", scrape),
        "dropped": d.metric("trapd_notifications_dropped_total", scrape),
        "socket_drops": d.metric("trapd_socket_drops_total", scrape),
        "rate_limited_per_source": d.metric(
            "trapd_notifications_dropped_detail_total", scrape, reason="rate-limited", detail="per-source"
        ),
        "matched": d.metric("trapd_rule_matches_total", scrape, rule="journal-tenth"),
        "lost": d.metric("trapd_outcomes_lost_total", scrape),
    }
    return parts["received"] + parts["dropped"] + parts["socket_drops"], parts


def wait_accounted(d: TrapdDaemon, total: int, timeout: float = 30.0) -> dict[str, Any]:
    """Until every datagram sent is received or a counted drop (the backlog drains first)."""
    deadline = time.monotonic() + timeout
    while True:
        got, parts = accounted(d)
        if got >= total or time.monotonic() > deadline:
            return parts | {"accounted": got}
        time.sleep(0.2)


def start(tmp_path: Path, config: dict[str, Any] | None = None) -> TrapdDaemon:
    base = {"dispatch": {"journal": {"poll_interval": "0.2s"}}}
    return TrapdDaemon.start(tmp_path, rules=RULES, config=base | (config or {}))


def pending_port_action(d: TrapdDaemon) -> None:
    """linkDown on port 7 from snmptrap: a delayed action waits in the journal for a linkUp."""
    snmp_send("snmptrap", *link_down(d.target(), 7), check=True)
    assert d.wait_metric("trapd_journal_entries", 1, timeout=10, state="scheduled") == 1


def test_storm_beyond_capacity_then_business_as_usual(tmp_path: Path) -> None:
    d = start(tmp_path)
    try:
        assert d.proc is not None
        pending_port_action(d)
        storm = loadgen.build_messages(loadgen.LoadSpec(version="v2c"), 1, 50_000)
        sent = blast(d, storm)
        assert sent > 30_000, "the sender was too slow to overload anything"
        parts = wait_accounted(d, sent + 1)

        # Every datagram is a reception or a counted drop; far more came than trapd could take.
        assert parts["accounted"] == sent + 1, parts
        assert parts["socket_drops"] > 0, f"no kernel drops: not an overload ({parts})"
        assert parts["received"] < sent
        # The tenth that matched was journaled (or, in a backlog overflow, counted as lost).
        assert parts["matched"] > 0 and parts["lost"] == 0, parts
        d.wait_log("receive buffer overflow: datagrams dropped by the kernel", timeout=15)
        assert status_kb(d.proc.pid, "VmHWM") < RSS_BOUND_KB

        # Right after: healthy, and a normal trap is received and acted on.
        status, health = d.healthz()
        assert status == 200, health
        snmp_send("snmptrap", *link_up(d.target(), 7), check=True)
        d.wait_log("delayed actions cancelled by a clearing event", timeout=15)
        deadline = time.monotonic() + 5
        while d.metric("trapd_journal_entries", state="scheduled") and time.monotonic() < deadline:
            time.sleep(0.1)
        assert d.metric("trapd_journal_entries", state="scheduled") == 0
        assert d.stop(timeout=60) == 0  # after a storm the journal backlog is flushed first
    finally:
        d.close()


def test_per_source_limit_sheds_the_flood_cheaply_and_lets_the_clearing_trap_through(
    tmp_path: Path,
) -> None:
    # 10 traps/s per source: the storm is dropped before decoding; the linkUps ride the reserve.
    d = start(tmp_path, {"listener": {"rate_limit": {"per_source": 10, "global": 0, "burst": 1}}})
    try:
        assert d.proc is not None
        pending_port_action(d)
        up = capture_datagram("snmptrap", *link_up("{target}", 7))
        storm = loadgen.build_messages(loadgen.LoadSpec(version="v2c"), 1, 50_000)
        sent = blast(d, storm, interleave=up, every=2000)
        assert sent > 30_000
        parts = wait_accounted(d, sent + 1)
        assert parts["accounted"] == sent + 1, parts
        assert parts["rate_limited_per_source"] > 0.9 * (sent - parts["socket_drops"]), parts
        # At 10/s of ordinary tokens, ~30 storm traps pass: a linkUp among 2,000 that got
        # through did so as a clearing notification, and cancelled the pending action.
        d.wait_log("delayed actions cancelled by a clearing event", timeout=15)
        assert d.metric("trapd_rate_limit_exempted_total") >= 1
        d.wait_log(lambda e: e.get("reason") == "rate-limited", timeout=15)
        assert status_kb(d.proc.pid, "VmHWM") < RSS_BOUND_KB
        assert d.healthz()[0] == 200
        assert d.stop(timeout=60) == 0  # after a storm the journal backlog is flushed first
    finally:
        d.close()
