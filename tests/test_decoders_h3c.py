"""H3C/HPE Comware hh3cMACInfoTrapMsgExt: 14-octet cells, crafted by hand."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from trapd.decoders import decoders_for
from trapd.decoders.h3c_mac_information import ROOTS, decode


def cell(op: int, vlan: int, mac: str, mac_type: int, ifindex: int) -> bytes:
    return (
        bytes([op])
        + vlan.to_bytes(2, "big")
        + bytes.fromhex(mac.replace(":", ""))
        + bytes([mac_type])
        + ifindex.to_bytes(4, "big")
    )


def test_cells() -> None:
    got = decode(cell(2, 20, "00:11:22:33:44:55", 6, 9437186) + cell(1, 1, "00:00:5e:00:53:01", 1, 5))
    assert got.problems == ()
    assert got.items[0] == {
        "operation": "removed",
        "vlan": 20,
        "mac": "00:11:22:33:44:55",
        "mac_type": "dot1x",
        "ifindex": 9437186,
        "vendor": "h3c",
    }
    assert got.items[1]["operation"] == "learnt" and got.items[1]["ifindex"] == 5


def test_truncated_cell() -> None:
    got = decode(cell(2, 20, "00:11:22:33:44:55", 1, 7) + b"\x02\x00\x14")
    assert len(got.items) == 1
    assert got.problems == ("truncated cell at offset 14: 3 octets of 14",)


def test_registered_for_every_twin_of_the_mib() -> None:
    oids = {d.oid for d in decoders_for("mac_changes")}
    for root in ROOTS.values():
        assert (*root, 1, 4, 2, 4) in oids


@settings(max_examples=200, derandomize=True, deadline=None)
@given(st.binary(max_size=300))
def test_never_raises(data: bytes) -> None:
    got = decode(data)
    assert len(got.items) == len(data) // 14
