"""The daemon under a service manager's eyes: NOTIFY_SOCKET messages, watchdog, start-up failures.

Each test runs ``python -m trapd run --config FILE`` as systemd would
(``Type=notify``), owning the NOTIFY_SOCKET, and sends real net-snmp traps to
loopback.
"""

from __future__ import annotations

import itertools
import signal
import socket
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import TrapdDaemon, eventually, free_port, link_down
from listen_harness import capture_datagram, needs_netsnmp, snmp_send
from notify_harness import NotifySocket

pytestmark = [pytest.mark.integration, needs_netsnmp]

LOG_RULES = """\
rules:
  - name: port-down-note
    match:
      notification: IF-MIB::linkDown
    actions:
      - action: log
        level: warning
        message: "down {{ source }} ifIndex {{ ifIndex }}"
"""


def _action_logged(text: str) -> Callable[[dict[str, Any]], bool]:
    return lambda e: e.get("event") == text and e.get("rule") == "port-down-note"


def test_notify_ready_status_watchdog_reload_stopping(tmp_path: Path) -> None:
    # The datagram is made before trapd starts, so it can go out the instant READY=1 arrives.
    port = free_port()
    datagram = capture_datagram("snmptrap", *link_down("{target}", 7))
    d = TrapdDaemon.start(
        tmp_path, rules=LOG_RULES, watchdog_usec=1_000_000, trap_port=port, wait_ready=False
    )
    try:
        assert d.notify is not None
        ready = d.notify.wait_for("READY", timeout=20)
        journal_existed = (d.state_dir / "journal.sqlite").exists()
        d.send(datagram)
        # READY=1 means traps are being taken: the one sent at that instant is received and acted on.
        assert journal_existed, "READY=1 before the journal file existed"
        assert "received" in ready.get("STATUS", ""), ready
        assert not [m for m in d.notify.messages[:-1] if "READY" in m], "READY=1 sent twice at start"
        d.wait_log(_action_logged("down 127.0.0.1 ifIndex 7"), timeout=5)
        assert d.metric("trapd_notifications_received_total", version="v2c") == 1

        # STATUS= follows the counts (every status_interval = 0.5 s).
        deadline = time.monotonic() + 5
        status = ""
        while time.monotonic() < deadline:
            msg = d.notify.wait_for("STATUS", timeout=5)
            status = msg["STATUS"]
            if "1 received" in status and "1 matched" in status and "1 done" in status:
                break
        assert "1 received" in status and "1 matched" in status and "actions 1 done" in status, status

        # WATCHDOG=1 at half of WATCHDOG_USEC (1 s): about every 0.5 s.
        d.notify.pending()  # measure arrivals as they happen, not a backlog read at once
        pings: list[float] = []
        deadline = time.monotonic() + 3
        while len(pings) < 4 and time.monotonic() < deadline:
            if "WATCHDOG" in d.notify.wait_for("WATCHDOG", timeout=3):
                pings.append(time.monotonic())
        assert len(pings) >= 4, d.notify.messages[-10:]
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        # Every ping within WATCHDOG_USEC (what systemd enforces), and about half of it apart.
        assert max(gaps) < 1.0, gaps
        assert 0.35 < statistics.median(gaps) < 0.7, gaps

        # SIGHUP: RELOADING=1 with MONOTONIC_USEC (CLOCK_MONOTONIC, shared by every process), then READY=1.
        d.notify.pending()
        before_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        d.signal(signal.SIGHUP)
        reloading = d.notify.wait_for("RELOADING", timeout=5)
        after_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        assert reloading["RELOADING"] == "1"
        assert before_usec <= int(reloading["MONOTONIC_USEC"]) <= after_usec
        again = d.notify.wait_for("READY", timeout=5)
        assert again["READY"] == "1"
        assert "FAILED" not in again.get("STATUS", "")
        d.wait_log("reloaded", timeout=5)
        assert d.wait_metric("trapd_reloads_total", 1, result="ok") == 1

        # SIGTERM: STOPPING=1, then exit 0.
        d.notify.pending()
        d.signal(signal.SIGTERM)
        stopping = d.notify.wait_for("STOPPING", timeout=5)
        assert stopping["STOPPING"] == "1"
        assert d.wait_exit(15) == 0
        d.wait_log("stopped", timeout=2)
    finally:
        d.close()


def test_no_watchdog_pings_without_watchdog_usec(tmp_path: Path) -> None:
    d = TrapdDaemon.start(tmp_path, rules=LOG_RULES)
    try:
        assert d.notify is not None
        notify = d.notify

        def talking() -> None:  # STATUS= every status interval (0.5 s) ...
            notify.pending()
            assert sum(1 for m in notify.messages if "STATUS" in m and "READY" not in m) >= 2, notify.messages

        eventually(talking)
        assert not any("WATCHDOG" in m for m in notify.messages)  # ... but not pinging
        assert d.stop() == 0
    finally:
        d.close()


def test_healthz_ok_while_running(tmp_path: Path) -> None:
    d = TrapdDaemon.start(tmp_path, rules=LOG_RULES)
    try:
        status, body = d.healthz()
        assert status == 200
        assert body["status"] == "ok" and body["healthy"] is True
        status, _ = d.http_get("/nope")
        assert status == 404
        assert d.stop() == 0
    finally:
        d.close()


def _assert_failed_start(d: TrapdDaemon, *needles: str, status: int = 1) -> None:
    """``status``: 1 for what may pass (a port, a journal), 2 for a configuration error, which the
    unit's RestartPreventExitStatus=2 leaves failed rather than restarting for ever."""
    rc = d.wait_exit(20)
    assert rc == status, d.log[-5:]
    assert d.notify is not None
    msgs = d.notify.pending()
    assert not any("READY" in m for m in d.notify.messages), "READY=1 although start-up failed"
    stopping = [m for m in msgs if "STOPPING" in m]
    assert stopping and "start-up failed" in stopping[0].get("STATUS", ""), msgs
    failed = d.logs("start-up failed")
    assert len(failed) == 1, d.log[-5:]
    assert failed[0]["level"] == "error"
    for needle in needles:
        assert needle in failed[0]["error"], failed[0]
        assert needle in stopping[0]["STATUS"]


def test_start_fails_cleanly_when_the_port_is_taken(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as squatter:
        squatter.bind(("127.0.0.1", 0))
        port = squatter.getsockname()[1]
        d = TrapdDaemon.start(tmp_path, rules=LOG_RULES, trap_port=port, wait_ready=False)
        try:
            _assert_failed_start(d, "Address already in use", f"127.0.0.1:{port}")
        finally:
            d.close()


def test_start_fails_cleanly_when_the_metrics_port_is_taken(tmp_path: Path) -> None:
    """The reason named the setting: "error while attempting to bind on address" alone does not
    say that it is the metrics endpoint (service.metrics.listen) and not the trap port."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        d = TrapdDaemon(tmp_path, free_port(), port)
        d.rules_path.write_text(LOG_RULES)
        d.write_config({})
        d.notify = NotifySocket(tmp_path / "notify.sock")
        d.launch()
        try:
            _assert_failed_start(d, "service.metrics.listen", f"127.0.0.1:{port}", "in use")
        finally:
            d.close()


def test_start_fails_cleanly_on_a_broken_rules_file(tmp_path: Path) -> None:
    broken = (
        "rules:\n  - name: x\n    match: {notification: IF-MIB::linkDown}\n"
        "    actions:\n      - action: no-such-action\n"
    )
    d = TrapdDaemon.start(tmp_path, rules=broken, wait_ready=False)
    try:
        _assert_failed_start(d, f"{d.rules_path}:5:", status=2)
    finally:
        d.close()


def test_start_fails_cleanly_on_a_missing_rules_file(tmp_path: Path) -> None:
    d = TrapdDaemon.start(tmp_path, rules=None, wait_ready=False)
    try:
        _assert_failed_start(d, "rules.yaml", status=2)
    finally:
        d.close()


def test_inform_is_acknowledged_once_received(tmp_path: Path) -> None:
    d = TrapdDaemon.start(tmp_path, rules=LOG_RULES)
    try:
        res = snmp_send("snmpinform", "-r", "0", "-t", "3", *link_down(d.target(), 9))
        assert res.returncode == 0, res.stderr
        d.wait_log(_action_logged("down 127.0.0.1 ifIndex 9"), timeout=5)
        assert d.stop() == 0
    finally:
        d.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_ready_sent_while_the_notify_socket_was_away_reaches_systemd_later(
    tmp_path: Path, workers: int
) -> None:
    """systemd's notify socket missing for a moment at trapd's READY=1 (a daemon-reexec; or its
    buffer full): the datagram was lost, trapd logged one warning and went on, and systemd, which
    never heard READY=1, killed the running trapd at its start timeout (90 s) and restarted it.
    Now it goes with the next STATUS= (every status_interval)."""
    d = TrapdDaemon(tmp_path, free_port(), free_port(socket.SOCK_STREAM))
    d.rules_path.write_text(LOG_RULES)
    d.write_config({"service": {"workers": workers}})
    path = tmp_path / "notify.sock"
    d.env["NOTIFY_SOCKET"] = str(path)  # not there yet
    d.launch()
    try:
        # The supervisor's line (a worker's comes first, and says nothing to systemd).
        d.wait_log(lambda e: e.get("event") == "trapd ready" and (workers == 1 or "workers" in e), 30)
        with NotifySocket(path) as manager:
            ready = manager.wait_for("READY", 10)
            assert "STATUS" in ready, ready
            assert d.stop() == 0
            assert manager.wait_for("STOPPING", 5)
        (lost,) = d.logs("sd_notify failed: READY=1 lost, sent again with the next message")
        assert lost["level"] == "warning", lost
    finally:
        d.close()
