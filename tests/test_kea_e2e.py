"""End to end: net-snmp's snmptrap -> a running ``trapd run`` -> real Kea 2.2; the leases go.

One daemon, two rules: ifIndex 7 deletes by option-82 circuit-id through the
unix socket, ifIndex 8 deletes by MAC (ifPhysAddress) through the Control
Agent.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
from daemon_harness import LINK_DOWN, TrapdDaemon
from kea_harness import KeaInstance
from listen_harness import snmp_send

pytestmark = pytest.mark.integration

IF_INDEX = "1.3.6.1.2.1.2.2.1.1"
IF_DESCR = "1.3.6.1.2.1.2.2.1.2"
IF_PHYS_ADDRESS = "1.3.6.1.2.1.2.2.1.6"

RULES = """
rules:
  - name: port-down-free-by-circuit-id
    match:
      notification: IF-MIB::linkDown
      varbinds: {ifIndex: 7}
    actions:
      - action: kea.lease-del
        endpoint: unix4
        circuit-id: "{{ ifDescr }}"
        remote-id: "{{ source }}"
        cap: {limit: 10, per: 1m}
  - name: nic-gone-free-by-mac
    match:
      notification: IF-MIB::linkDown
      varbinds: {ifIndex: 8}
    actions:
      - action: kea.lease-del
        endpoint: ca4
        hw-address: "{{ ifPhysAddress | mac }}"
        cap: {limit: 10, per: 1m}
"""


def rai(circuit: bytes, remote: bytes) -> dict[str, object]:
    subs = bytes([1, len(circuit)]) + circuit + bytes([2, len(remote)]) + remote
    return {"ISC": {"relay-agent-info": "0x" + subs.hex().upper()}}


def trap(d: TrapdDaemon, *varbinds: str) -> subprocess.CompletedProcess[str]:
    """A v2c linkDown with these varbinds, sent by net-snmp's snmptrap."""
    result: subprocess.CompletedProcess[str] = snmp_send(
        "snmptrap", "-v", "2c", "-c", "public", d.target(), "", LINK_DOWN, *varbinds
    )
    return result


def wait_gone(kea: KeaInstance, ips: list[str], timeout: float = 10.0) -> list[str]:
    """The addresses that still have a lease after waiting up to ``timeout``."""
    deadline = time.monotonic() + timeout
    left = ips
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = [ip for ip in left if kea.lease4(ip) is not None]
    return left


def test_trap_deletes_leases_through_unix_and_control_agent(kea: KeaInstance, tmp_path: Path) -> None:
    port_leases = [kea.next_ip4(), kea.next_ip4(2)]
    for i, ip in enumerate(port_leases):
        kea.add_lease4(ip, f"0a:00:27:00:e2:{i:02x}", **{"user-context": rai(b"Gi1/0/7", b"127.0.0.1")})
    other_port = kea.next_ip4()
    kea.add_lease4(other_port, "0a:00:27:00:e2:10", **{"user-context": rai(b"Gi1/0/17", b"127.0.0.1")})
    mac = "0a:00:27:00:e2:20"
    mac_leases = [kea.next_ip4(1), kea.next_ip4(2)]
    for ip in mac_leases:
        kea.add_lease4(ip, mac)

    d = TrapdDaemon.start(tmp_path / "trapd", rules=RULES, config={"kea": kea.trapd_kea_section()})
    try:
        r = trap(d, f"{IF_INDEX}.7", "i", "7", f"{IF_DESCR}.7", "s", "Gi1/0/7")
        assert r.returncode == 0, r.stderr
        assert wait_gone(kea, port_leases) == []
        r = trap(d, f"{IF_INDEX}.8", "i", "8", f"{IF_PHYS_ADDRESS}.8", "x", mac.replace(":", ""))
        assert r.returncode == 0, r.stderr
        assert wait_gone(kea, mac_leases) == []
        assert kea.lease4(other_port) is not None  # another port's client keeps its lease
    finally:
        assert d.stop() == 0
        d.close()
