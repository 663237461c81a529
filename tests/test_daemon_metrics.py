"""/metrics scraped over HTTP agrees with the traffic sent: received, dropped, matched, done.

One daemon listens on 127.0.0.1 and ::1 with a v2c community and a v3 user;
real net-snmp traps of every version, from both addresses, some refused, some
garbage. Every figure below is the exact count of what was sent.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import LINK_UP, TrapdDaemon, eventually, free_port, link_down
from kea_sandbox import KeaInstance
from listen_harness import needs_netsnmp, snmp_send

pytestmark = [pytest.mark.integration, needs_netsnmp]

SENDER_ENGINE = "8000000001020304"
COLD_START = "1.3.6.1.6.3.1.1.5.1"
V3 = ["-v", "3", "-e", "0x" + SENDER_ENGINE, "-u", "mon", "-l", "authPriv", "-a", "SHA-256", "-x", "AES"]


class Hooks(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        Hooks.received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def hook_server() -> Iterator[str]:
    Hooks.received = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hooks)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()
    server.server_close()


def rules(hook_url: str) -> str:
    return f"""\
sources:
  loop4: [127.0.0.0/8]
rules:
  - name: down-log
    match:
      notification: IF-MIB::linkDown
    continue: true
    actions:
      - action: log
        message: "down {{{{ source }}}} {{{{ ifIndex }}}}"
  - name: down-exec-v4
    match:
      notification: IF-MIB::linkDown
      source: loop4
    actions:
      - action: exec
        argv: [/bin/true, "{{{{ ifIndex }}}}"]
  - name: up-hook
    match:
      notification: IF-MIB::linkUp
    actions:
      - action: webhook
        url: {hook_url}
        body: {{port: "{{{{ ifIndex }}}}", user: "{{{{ user }}}}"}}
"""


def test_scraped_counts_match_the_traffic_sent(tmp_path: Path, hook_server: str) -> None:
    port = free_port()
    config = {
        "listener": {
            "listen": [f"127.0.0.1:{port}", f"[::1]:{port}"],
            "v3_users": [
                {
                    "user": "mon",
                    "auth_protocol": "SHA-256",
                    "auth_key": "auth-secret-1",
                    "priv_protocol": "AES-128",
                    "priv_key": "priv-secret-1",
                    "engine_ids": [SENDER_ENGINE],
                }
            ],
        }
    }
    d = TrapdDaemon.start(tmp_path, rules=rules(hook_server), config=config, trap_port=port)
    v4, v6 = f"udp:127.0.0.1:{port}", f"udp6:[::1]:{port}"
    try:
        for i in range(3):  # v2c linkDown from 127.0.0.1: down-log + down-exec-v4
            snmp_send("snmptrap", *link_down(v4, 10 + i), check=True)
        for i in range(2):  # v1 linkDown (generic 2) from 127.0.0.1: the same two rules
            snmp_send(
                "snmptrap", "-v", "1", "-c", "public", v4, "1.3.6.1.4.1.8072", "127.0.0.1", "2", "0", "",
                f"1.3.6.1.2.1.2.2.1.1.2{i}", "i", f"2{i}", check=True,
            )  # fmt: skip
        for i in range(2):  # v2c linkDown from ::1 (source group "other"): down-log only
            snmp_send("snmptrap", *link_down(v6, 30 + i), check=True)
        # v3 authPriv linkUp: up-hook, through the webhook plugin
        snmp_send(
            "snmptrap", *V3, "-A", "auth-secret-1", "-X", "priv-secret-1", v4, "", LINK_UP,
            "1.3.6.1.2.1.2.2.1.1.40", "i", "40", check=True,
        )  # fmt: skip
        snmp_send("snmptrap", "-v", "2c", "-c", "public", v4, "", COLD_START, check=True)  # no rule
        for _ in range(4):  # wrong community
            snmp_send("snmptrap", *link_down(v4, 50, community="private"), check=True)
        snmp_send("snmptrap", *V3, "-A", "wrong-secret-1", "-X", "priv-secret-1", v4, "", LINK_UP, check=True)
        for garbage in (b"\x00\x01garbage", b"\x30\x82\xff\xff\x02\x01\x01", b"GET / HTTP/1.0\r\n\r\n"):
            d.send(garbage)

        # 3 + 2 + 2 + 1 + 1 accepted; 5 + 2 log, 5 exec, 1 webhook actions.
        assert d.wait_metric("trapd_actions_total", 13, timeout=15) == 13

        def counted() -> None:
            # The drops (garbage sent last) are counted in their own time: read until they are all in.
            m = d.metrics()

            def v(name: str, **labels: str) -> float:
                return d.metric(name, m, **labels)

            assert v("trapd_notifications_received_total", version="v2c", source_group="loop4") == 4
            assert v("trapd_notifications_received_total", version="v1", source_group="loop4") == 2
            assert v("trapd_notifications_received_total", version="v2c", source_group="other") == 2
            assert v("trapd_notifications_received_total", version="v3", source_group="loop4") == 1
            assert v("trapd_notifications_received_total") == 9

            assert v("trapd_notifications_dropped_total", reason="unknown-community") == 4
            assert v("trapd_notifications_dropped_total", reason="wrong-digest") == 1
            assert v("trapd_notifications_dropped_total", reason="malformed") == 3
            assert v("trapd_notifications_dropped_detail_total", reason="malformed") == 3
            assert v("trapd_notifications_dropped_total") == 8

            assert v("trapd_rule_matches_total", rule="down-log") == 7
            assert v("trapd_rule_matches_total", rule="down-exec-v4") == 5
            assert v("trapd_rule_matches_total", rule="up-hook") == 1
            assert v("trapd_events_unmatched_total") == 1

            assert v("trapd_actions_total", plugin="log", outcome="done") == 7
            assert v("trapd_actions_total", plugin="exec", outcome="done") == 5
            assert v("trapd_actions_total", plugin="webhook", outcome="done") == 1
            assert v("trapd_action_latency_seconds_count") == 13
            assert v("trapd_socket_drops_total") == 0
            sockets = {dict(lb)["socket"] for (n, lb) in m if n == "trapd_socket_drops_total"}
            assert sockets == {f"127.0.0.1:{port}", f"[::1]:{port}"}

        eventually(counted)
        assert Hooks.received == [{"port": "40", "user": "mon"}]

        # STATUS= says the same in one line.
        assert d.notify is not None
        deadline = time.monotonic() + 5
        status = ""
        expected = "9 received, 8 dropped, 13 matched, actions 13 done"
        while not status.startswith(expected) and time.monotonic() < deadline:
            status = d.notify.wait_for("STATUS", timeout=5)["STATUS"]  # older ones may be queued
        assert status.startswith(expected), status
        assert d.stop() == 0
    finally:
        d.close()


def test_a_cancelled_delayed_action_is_counted_under_its_plugin(tmp_path: Path) -> None:
    """A delayed `log` that linkUp cancels is counted as {plugin="log", outcome="cancelled"}."""
    rules = """\
rules:
  - name: port-down-note
    match: {notification: IF-MIB::linkDown}
    actions:
      - action: log
        message: "still down {{ source }}:{{ ifIndex }}"
        delay: 60s
        cancel-key: "port:{{ source }}:{{ ifIndex }}"
  - name: port-up
    match: {notification: IF-MIB::linkUp}
    cancel: "port:{{ source }}:{{ ifIndex }}"
"""
    d = TrapdDaemon.start(tmp_path, rules=rules)
    try:
        snmp_send("snmptrap", *link_down(d.target(), 17), check=True)
        assert d.wait_metric("trapd_rule_matches_total", 1, rule="port-down-note") == 1
        snmp_send("snmptrap", *link_down(d.target(), 17, trap=LINK_UP), check=True)
        assert d.wait_metric("trapd_actions_total", 1, plugin="log", outcome="cancelled") == 1
        m = d.metrics()
        assert d.metric("trapd_actions_total", m, plugin="*") == 0
        assert d.metric("trapd_actions_total", m) == 1  # nothing ran
        assert d.stop() == 0
    finally:
        d.close()


def test_a_rejected_action_is_exported_by_rule_and_reason(tmp_path: Path) -> None:
    """A real trap whose ifDescr is ``1.2.3.4; reboot``: the lease deletion is rejected and counted
    in /metrics under its rule and reason; the rule's other action still runs."""
    rules = """\
defaults: {cap: {limit: 9, per: 1m}}
rules:
  - name: release-by-descr
    match: {notification: IF-MIB::linkDown}
    continue: true
    actions:
      - action: kea.lease-del
        ip-address: "{{ ifDescr }}"
      - action: log
        message: "down {{ ifIndex }}"
  - name: bad-template
    match: {notification: IF-MIB::linkDown}
    actions:
      - action: log
        message: "{{ ifDescr | ip }}"
"""
    d = TrapdDaemon.start(tmp_path, rules=rules, args=("--dry-run",))
    try:
        assert d.metric("trapd_actions_rejected_total") == 0
        snmp_send(
            "snmptrap", *link_down(d.target(), 17), "1.3.6.1.2.1.2.2.1.2.17", "s", "1.2.3.4; reboot",
            check=True,
        )  # fmt: skip
        assert d.wait_metric("trapd_actions_rejected_total", 2, timeout=15) == 2
        m = d.metrics()
        assert d.metric("trapd_actions_rejected_total", m, rule="release-by-descr", reason="parameter") == 1
        assert d.metric("trapd_actions_rejected_total", m, rule="bad-template", reason="template") == 1
        assert d.metric("trapd_rule_matches_total", m, rule="release-by-descr") == 1
        assert d.wait_metric("trapd_actions_total", 1, timeout=15, plugin="log") == 1
        assert d.metric("trapd_actions_total", d.metrics(), plugin="kea.lease-del") == 0
        (line,) = d.wait_log(lambda e: e.get("rule") == "release-by-descr" and "reason" in e)
        assert "1.2.3.4; reboot" in line["reason"]
        assert d.stop() == 0
    finally:
        d.close()


def test_a_kea_endpoint_that_keeps_failing_shows_its_breaker_open(tmp_path: Path) -> None:
    """A real trapd whose Kea socket is gone: after two failed deletions the breaker opens, and
    /metrics says so (trapd_kea_breaker_state) as well as the endpoint being down."""
    rules = """\
defaults: {cap: {limit: 9, per: 1m}}
rules:
  - name: release
    match: {notification: IF-MIB::linkDown}
    actions:
      - action: kea.lease-del
        ip-address: "10.0.0.{{ ifIndex }}"
"""
    config = {
        "kea": {
            "endpoints": {
                "local4": {"transport": "unix", "socket": str(tmp_path / "gone.sock"), "family": "v4"}
            }
        },
        "dispatch": {
            "retry": {"max_attempts": 100, "backoff": "0.2s", "max_backoff": "0.5s", "jitter": 0},
            "breaker": {"failures": 2, "cool_down": "60s"},
        },
    }
    d = TrapdDaemon.start(tmp_path, rules=rules, config=config)
    try:
        (series,) = [
            lb for (n, lb) in d.metrics() if n == "trapd_kea_breaker_state" and ("state", "closed") in lb
        ]
        endpoint = dict(series)["endpoint"]
        assert d.metric("trapd_kea_breaker_state", endpoint=endpoint, state="closed") == 1
        for i in (1, 2, 3):
            snmp_send("snmptrap", *link_down(d.target(), i), check=True)
        assert d.wait_metric("trapd_kea_breaker_state", 1, endpoint=endpoint, state="open") == 1
        m = d.metrics()
        assert d.metric("trapd_kea_breaker_state", m, endpoint=endpoint, state="closed") == 0
        assert d.metric("trapd_kea_endpoint_up", m, endpoint=endpoint) == 0
        assert d.stop() == 0
    finally:
        d.close()


def test_rejections_of_a_storm_are_logged_once_per_interval_with_a_count(tmp_path: Path) -> None:
    """Every trap of a storm carrying the same bad value is rejected and counted, but the log gets
    one warning at once and the rest as one line with ``suppressed`` (at the interval, or at stop),
    not one line per trap."""
    rules = """\
defaults: {cap: {limit: 9, per: 1m}}
rules:
  - name: release-by-descr
    match: {notification: IF-MIB::linkDown}
    actions:
      - action: kea.lease-del
        ip-address: "{{ ifDescr }}"
"""
    traps = 5
    d = TrapdDaemon.start(tmp_path, rules=rules, args=("--dry-run",))
    try:
        for _ in range(traps):
            snmp_send(
                "snmptrap", *link_down(d.target(), 17), "1.3.6.1.2.1.2.2.1.2.17", "s", "1.2.3.4; reboot",
                check=True,
            )  # fmt: skip
        assert d.wait_metric("trapd_actions_rejected_total", traps, timeout=30) == traps
        assert d.stop() == 0
        lines = [e for e in d.logs() if e.get("rule") == "release-by-descr" and "reason" in e]
        first, *rest = lines
        assert "suppressed" not in first and "1.2.3.4; reboot" in first["reason"]
        assert [e.get("suppressed") for e in rest] == [traps - 1]
    finally:
        d.close()


def test_a_kea_endpoint_back_after_its_actions_gave_up_is_up_again(
    tmp_path: Path, kea_factory: Callable[..., KeaInstance]
) -> None:
    """Kea stops, the actions for it fail, the breaker opens, the actions run out of age (dead);
    Kea comes back. trapd's monitor sees it answer again (status-get), and then so do the metrics:
    trapd_kea_endpoint_up 1 and the breaker closed. Before, with no action left to probe it, the
    breaker stayed open and the endpoint 0 until the next trap, and TrapdKeaEndpointDown fired for
    a Kea that had been answering for hours."""
    kea = kea_factory(dhcp6=False, ca=False)
    rules = """\
defaults: {cap: {limit: 9, per: 1m}}
rules:
  - name: release
    match: {notification: IF-MIB::linkDown}
    retry: {max-age: 4s}
    actions:
      - action: kea.lease-del
        ip-address: "10.1.0.{{ ifIndex }}"
"""
    config = {
        "kea": {**kea.trapd_kea_section("unix"), "poll_interval": "0.5s"},
        "dispatch": {
            "retry": {"max_attempts": 100, "backoff": "0.2s", "max_backoff": "0.5s", "jitter": 0},
            # The cool-down stays at 1 s: doubling it while Kea is down only made the test wait.
            "breaker": {"failures": 2, "cool_down": "1s", "max_cool_down": "1s"},
        },
    }
    d = TrapdDaemon.start(tmp_path / "trapd", rules=rules, config=config)
    try:
        endpoint = "unix4/v4"
        assert d.wait_metric("trapd_kea_endpoint_up", 1, endpoint=endpoint) == 1
        kea.stop(["kea-dhcp4"])
        for i in (1, 2, 3):
            snmp_send("snmptrap", *link_down(d.target(), i), check=True)
        assert d.wait_metric("trapd_kea_breaker_state", 1, endpoint=endpoint, state="open") == 1
        assert d.wait_metric("trapd_actions_total", 3, outcome="dead") == 3
        assert d.metric("trapd_kea_endpoint_up", endpoint=endpoint) == 0
        kea.spawn("kea-dhcp4")
        kea.wait_ready()

        def up_again() -> None:
            m = d.metrics()
            assert d.metric("trapd_kea_endpoint_up", m, endpoint=endpoint) == 1
            # Its cool-down is over: the next action goes through as the probe.
            assert d.metric("trapd_kea_breaker_state", m, endpoint=endpoint, state="open") == 0

        eventually(up_again, timeout=30)
        assert d.stop() == 0
    finally:
        d.close()


def test_an_undecodable_index_suffix_is_counted_in_metrics(tmp_path: Path) -> None:
    """A real trap whose ipNetToMediaPhysAddress suffix has an octet of 256 in its IpAddress index
    (hostile, or a MIB that does not fit the agent): the rule's condition on the index object does
    not hold, and /metrics counts the undecodable suffix (it was counted nowhere a user sees)."""
    rules = """\
rules:
  - name: arp-on-17
    match: {varbinds: {ipNetToMediaPhysAddress: {index: {ipNetToMediaIfIndex: 17}}}}
    continue: true
    actions:
      - action: log
        message: "arp {{ source }}"
  - name: down
    match: {notification: IF-MIB::linkDown}
    actions:
      - action: log
        message: "down {{ ifIndex }}"
"""
    phys = "1.3.6.1.2.1.4.22.1.2"
    d = TrapdDaemon.start(tmp_path, rules=rules, args=("--dry-run",))
    try:
        assert d.metric("trapd_index_undecodable_total") == 0
        for suffix in ("17.10.0.0.1", "17.10.0.256.1"):
            snmp_send(
                "snmptrap", *link_down(d.target(), 17), f"{phys}.{suffix}", "x", "001122334455", check=True
            )
        assert d.wait_metric("trapd_rule_matches_total", 2, rule="down") == 2
        assert d.wait_metric("trapd_index_undecodable_total", 1) == 1
        m = d.metrics()
        assert d.metric("trapd_rule_matches_total", m, rule="arp-on-17") == 1  # the good suffix only
        (line,) = d.wait_log(lambda e: "undecodable index" in str(e.get("event", "")))
        assert "not four octets" in line["event"], line
        assert d.stop() == 0
    finally:
        d.close()
