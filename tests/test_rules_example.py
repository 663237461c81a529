"""The shipped rules.yaml: valid against the installed action plugins, and doing what its comments say."""

from __future__ import annotations

from pathlib import Path

import pytest
from rules_support import event, resolver

from trapd.plugin import ActionSpec, load_actions
from trapd.rules import check_rules, load_rules

EXAMPLE = Path(__file__).resolve().parent.parent / "rules.yaml"


@pytest.fixture(scope="module")
def actions() -> dict[str, ActionSpec]:
    found, broken = load_actions()
    assert not broken
    return found


def test_example_rules_check_clean(actions: dict[str, ActionSpec]) -> None:
    assert check_rules([EXAMPLE], resolver(), actions) == []


def test_mac_removed_then_learnt(actions: dict[str, ActionSpec]) -> None:
    rs = load_rules([EXAMPLE], resolver(), actions)
    removed = "02" + "0064" + "001122334455" + "0011"
    learnt = "01" + "0064" + "00aabbccddee" + "0012"
    out = rs.evaluate(
        event(f"cmnMacChangedNotification from 10.20.3.4 cmnHistMacChangedMsg.7=0x{removed}{learnt}")
    )
    assert out.matched == ("mac-removed-delete-lease", "mac-learnt-cancel-deletion")
    (pa,) = out.planned
    assert (pa.action, pa.params["hw-address"], pa.delay) == ("kea.lease-del", "00:11:22:33:44:55", 30.0)
    assert pa.cancel_key == "mac:00:11:22:33:44:55" and pa.once_within == 300.0
    assert out.cancels == ("mac:00:aa:bb:cc:dd:ee",)
    # not from an access switch: nothing at all
    assert rs.evaluate(
        event(f"cmnMacChangedNotification from 192.0.2.9 cmnHistMacChangedMsg.7=0x{removed}")
    ).empty


def test_port_down_is_delayed_and_cancelled_by_link_up(actions: dict[str, ActionSpec]) -> None:
    rs = load_rules([EXAMPLE], resolver(), actions)
    down = rs.evaluate(
        event(
            "IF-MIB::linkDown from 10.20.1.5 ifIndex=17 ifDescr=GigabitEthernet1/0/17 "
            "ifOperStatus=down ifAdminStatus=up"
        )
    )
    lease_del = next(p for p in down.planned if p.action == "kea.lease-del")
    assert lease_del.params["circuit-id"] == "GigabitEthernet1/0/17"
    assert lease_del.params["remote-id"] == "10.20.1.5"
    assert lease_del.delay == 120.0
    up = rs.evaluate(event("IF-MIB::linkUp from 10.20.1.5 ifIndex=17 ifDescr=GigabitEthernet1/0/17"))
    assert up.cancels == (lease_del.cancel_key,)
    # an administrative shutdown is not a fault
    admin = event(
        "linkDown from 10.20.1.5 ifIndex=17 ifDescr=GigabitEthernet1/0/17 "
        "ifOperStatus=down ifAdminStatus=down"
    )
    assert not any(p.action == "kea.lease-del" for p in rs.evaluate(admin).planned)


def test_core_uplink_disables_dhcp_for_a_bounded_time(actions: dict[str, ActionSpec]) -> None:
    rs = load_rules([EXAMPLE], resolver(), actions)
    out = rs.evaluate(event("IF-MIB::linkDown from 10.0.0.2 ifIndex=49 ifDescr=TenGigabitEthernet1/1/1"))
    assert [p.action for p in out.planned] == ["kea.dhcp-disable", "webhook"]
    assert out.planned[0].params["max-period"] == 900.0
    assert out.planned[1].params["body"]["summary"] == (
        "DHCP disabled: uplink TenGigabitEthernet1/1/1 down on core switch 10.0.0.2"
    )
