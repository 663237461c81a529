"""CISCO-MAC-NOTIFICATION-MIB cmnHistMacChangedMsg: 11-octet tuples, crafted by hand."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trapd.decoders import decode_items, kinds
from trapd.decoders.cisco_mac_notification import CMN_HIST_MAC_CHANGED_MSG, decode
from trapd.event import Event, VarBind
from trapd.listener.raw import Security


def tup(op: int, vlan: int, mac: str, port: int) -> bytes:
    return (
        bytes([op]) + vlan.to_bytes(2, "big") + bytes.fromhex(mac.replace(":", "")) + port.to_bytes(2, "big")
    )


def test_two_tuples_learnt_and_removed() -> None:
    got = decode(tup(1, 100, "00:11:22:33:44:55", 7) + tup(2, 4094, "aa:bb:cc:dd:ee:ff", 65535))
    assert got.problems == ()
    assert got.items == (
        {"operation": "learnt", "vlan": 100, "mac": "00:11:22:33:44:55", "port": 7, "vendor": "cisco"},
        {"operation": "removed", "vlan": 4094, "mac": "aa:bb:cc:dd:ee:ff", "port": 65535, "vendor": "cisco"},
    )


def test_zero_operation_ends_the_list() -> None:
    got = decode(tup(2, 10, "00:00:00:00:00:01", 1) + b"\x00" + b"\xff" * 30)
    assert [i["mac"] for i in got.items] == ["00:00:00:00:00:01"]
    assert got.problems == ()


@pytest.mark.parametrize("cut", [1, 5, 10])
def test_truncated_tuple_is_reported_and_complete_ones_kept(cut: int) -> None:
    data = tup(2, 10, "00:00:00:00:00:01", 1) + tup(2, 11, "00:00:00:00:00:02", 2)[:cut]
    got = decode(data)
    assert [i["vlan"] for i in got.items] == [10]
    assert got.problems == (f"truncated tuple at offset 11: {cut} octets of 11",)


def test_empty_and_unknown_operation() -> None:
    assert decode(b"").items == ()
    got = decode(tup(7, 1, "00:00:00:00:00:03", 3))
    assert got.items[0]["operation"] == "unknown(7)"


def test_the_longest_value_the_mib_allows() -> None:
    data = b"".join(tup(2, i, f"00:00:00:00:00:{i:02x}", i) for i in range(23)) + b"\x00"  # 254 octets
    assert len(data) == 254
    assert len(decode(data).items) == 23


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.binary(max_size=300))
def test_never_raises(data: bytes) -> None:
    got = decode(data)
    assert all(len(i["mac"]) == 17 for i in got.items)


def _event(*vbs: VarBind) -> Event:
    return Event(
        "e1",
        0.0,
        "10.0.0.1",
        162,
        "v2c",
        "trap",
        Security(community="c"),
        0,
        (1, 3, 6, 1, 4, 1, 9, 9, 215, 2, 0, 1),
        "cmnMacChangedNotification",
        vbs,
    )


def test_decode_items_from_an_event() -> None:
    msg = VarBind(
        (*CMN_HIST_MAC_CHANGED_MSG, 42),
        "CISCO-MAC-NOTIFICATION-MIB::cmnHistMacChangedMsg",
        (42,),
        "OctetString",
        tup(2, 5, "00:11:22:33:44:55", 3) + b"\x02\x00",
        "",
    )
    wrong = VarBind((*CMN_HIST_MAC_CHANGED_MSG, 43), "x", (43,), "Integer32", 5, "5")
    other = VarBind((1, 3, 6, 1, 2, 1, 2, 2, 1, 1, 3), "IF-MIB::ifIndex", (3,), "Integer32", 3, "3")
    got = decode_items("mac_changes", _event(other, msg, wrong))
    assert [i["mac"] for i in got.items] == ["00:11:22:33:44:55"]
    assert got.problems == (
        "CISCO-MAC-NOTIFICATION-MIB::cmnHistMacChangedMsg: truncated tuple at offset 11: 2 octets of 11",
        "CISCO-MAC-NOTIFICATION-MIB::cmnHistMacChangedMsg: expected an octet string, got Integer32",
    )
    assert "mac_changes" in kinds()
