"""Real traps from net-snmp's snmptrap, received by `trapd listen`, explained by `trapd test -`.

The pipeline netops run (`trapd listen | trapd test -r rules.yaml -`), with
the real listener's normalized events: display forms, types and indexes as
they come off the wire, not as the unit tests build them.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from listen_harness import TrapdListen, needs_netsnmp, snmp_send

pytestmark = [pytest.mark.integration, needs_netsnmp]

RULES = """
sources: {lab: [127.0.0.0/8]}
defaults: {cap: {limit: 10, per: 1m, key: "{{ source }}"}}
rules:
  - name: mac-removed
    match: {notification: CISCO-MAC-NOTIFICATION-MIB::cmnMacChangedNotification, source: lab}
    foreach: {items: mac_changes, where: {operation: removed}}
    actions:
      - action: kea.lease-del
        hw-address: "{{ item.mac }}"
        delay: 30s
        cancel-key: "mac:{{ item.mac }}"
  - name: port-down
    match:
      notification: IF-MIB::linkDown
      source: lab
      varbinds:
        ifOperStatus: down
        ifDescr: {regex: 'Gi(?P<member>\\d+)/0/(?P<port>\\d+)'}
    actions:
      - action: kea.lease-del
        circuit-id: "{{ ifDescr }}"
        remote-id: "{{ source }}"
        delay: 2m
        cancel-key: "port:{{ source }}:{{ index.ifIndex }}"
      - action: log
        message: "member {{ member }} port {{ port }} index {{ ifIndex }} {{ varbinds.ifOperStatus.display }}"
  - name: port-up
    match: {notification: IF-MIB::linkUp, source: lab}
    cancel: "port:{{ source }}:{{ index.ifIndex }}"
"""

IF = "1.3.6.1.2.1.2.2.1"


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrapdListen]:
    t = TrapdListen.start(tmp_path_factory.mktemp("live"), config={"listener": {"communities": ["public"]}})
    yield t
    assert t.stop() == 0


def explain(tmp_path: Path, events: list[dict[str, object]]) -> list[dict[str, object]]:
    rules = tmp_path / "rules.yaml"
    rules.write_text(RULES, encoding="utf-8")
    r = subprocess.run(
        [sys.executable, "-m", "trapd", "test", "-r", str(rules), "--format", "json", "-"],
        input="".join(json.dumps(e) + "\n" for e in events),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def test_real_traps_through_listen_and_test(listener: TrapdListen, tmp_path: Path) -> None:
    target = listener.target()
    down = snmp_send(
        "snmptrap", "-v", "2c", "-c", "public", target, "", "1.3.6.1.6.3.1.1.5.3",
        f"{IF}.1.17", "i", "17", f"{IF}.2.17", "s", "Gi1/0/17",
        f"{IF}.7.17", "i", "1", f"{IF}.8.17", "i", "2",
    )  # fmt: skip
    assert down.returncode == 0, down.stderr
    ev_down = listener.wait_event(lambda e: e["trap_oid"] == "1.3.6.1.6.3.1.1.5.3", timeout=10)
    up = snmp_send(
        "snmptrap", "-v", "2c", "-c", "public", target, "", "1.3.6.1.6.3.1.1.5.4",
        f"{IF}.1.17", "i", "17", f"{IF}.8.17", "i", "1",
    )  # fmt: skip
    assert up.returncode == 0, up.stderr
    ev_up = listener.wait_event(lambda e: e["trap_oid"] == "1.3.6.1.6.3.1.1.5.4", timeout=10)
    msg = "02006400112233445500110100640011223344ff00120200"  # last tuple truncated
    mac = snmp_send(
        "snmptrap", "-v", "2c", "-c", "public", target, "", "1.3.6.1.4.1.9.9.215.2.0.1",
        "1.3.6.1.4.1.9.9.215.1.1.8.1.2.5", "x", msg,
    )  # fmt: skip
    assert mac.returncode == 0, mac.stderr
    ev_mac = listener.wait_event(lambda e: e["trap_oid"] == "1.3.6.1.4.1.9.9.215.2.0.1", timeout=10)

    d, u, m = explain(tmp_path, [ev_down, ev_up, ev_mac])

    by_rule = {r["rule"]: r for r in d["rules"]}
    assert by_rule["mac-removed"]["status"] == "no-match"
    port_down = by_rule["port-down"]
    assert port_down["status"] == "matched"
    lease_del, log = port_down["planned"]
    assert lease_del["params"]["circuit-id"] == "Gi1/0/17"
    assert lease_del["params"]["remote-id"] == "127.0.0.1"
    assert lease_del["delay"] == 120.0
    assert log["params"]["message"] == "member 1 port 17 index 17 down(2)"
    assert by_rule["port-up"]["status"] == "not-reached"

    port_up = {r["rule"]: r for r in u["rules"]}["port-up"]
    assert port_up["status"] == "matched"
    assert port_up["cancels"] == [lease_del["cancel_key"]]  # the linkUp cancels exactly that deletion

    mac_rule = {r["rule"]: r for r in m["rules"]}["mac-removed"]
    assert mac_rule["status"] == "matched"
    assert [p["params"]["hw-address"] for p in mac_rule["planned"]] == ["00:11:22:33:44:55"]
    assert [r["reason"] for r in mac_rule["rejected"]] == [
        "CISCO-MAC-NOTIFICATION-MIB::cmnHistMacChangedMsg: truncated tuple at offset 22: 2 octets of 11"
    ]
