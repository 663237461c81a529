"""The fast-path message decoder and the inform acknowledgement.

Three kinds of evidence: packets net-snmp really sent (kept as hex so the unit
tests need nothing installed, and captured live in the integration tests),
messages built by hand to hit each shape and each refusal, and net-snmp's
``snmpinform`` accepting our acknowledgement.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator, Sequence

import pytest

from trapd.listener.ber import encode_integer_content, encode_length, encode_oid_content, read_header
from trapd.listener.fastpath import (
    MAX_MESSAGE,
    REJECT_REASONS,
    FastMessage,
    Rejected,
    decode,
    encode_inform_response,
    message_version,
)
from trapd.listener.raw import Oid, RawVarBind, v1_trap_oid

SYS_UPTIME = (1, 3, 6, 1, 2, 1, 1, 3, 0)
SNMP_TRAP_OID = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)
LINK_DOWN = (1, 3, 6, 1, 6, 3, 1, 1, 5, 3)
IF_INDEX_17 = (1, 3, 6, 1, 2, 1, 2, 2, 1, 1, 17)

# Captured from net-snmp 5.9.3's snmptrap on this machine.
NETSNMP_V2C_LINKDOWN = bytes.fromhex(
    "306c02010104067075626c6963a75f0204486f34990201000201003051300f06082b06010201010300430300d3a73017060a"
    "2b06010603010104010006092b0601060301010503300f060a2b0601020102020101110201113014060a2b060102010202"
    "01021104064769302f3137"
)
NETSNMP_V1_LINKDOWN = bytes.fromhex(
    "303902010004067075626c6963a42c06062b060104010940047f000001020102020100430300d3a83011300f060a2b0601"
    "02010202010111020111"
)
# snmptrap -v 2c ... i -5  u 4294967295  c 4294967295  s hello  x 00ff80  n  o 1.3.6.1.4.1.4294967295
# t 4294967295  a 10.1.2.3  C 18446744073709551615  U 5  F 1.5  s '' (long-form outer lengths, 0x82).
NETSNMP_V2C_EVERY_TYPE = bytes.fromhex(
    "3082012c02010104067075626c6963a782011d02040d9ce71f0201000201003082010d300f06082b06010201010300430301"
    "e3ac3017060a2b06010603010104010006092b0601060301010503300c06072b0601040163010201fb301006072b0601040163"
    "02420500ffffffff301006072b060104016303410500ffffffff301006072b060104016304040568656c6c6f300e06072b0601"
    "04016305040300ff80300b06072b0601040163060500301506072b060104016307060a2b060104018fffffff7f301006072b06"
    "0104016308430500ffffffff300f06072b06010401630940040a010203301406072b06010401630a460900ffffffffffffffff"
    "300f06072b06010401630b44049f7b0105301206072b06010401630c44079f78043fc00000300b06072b06010401630d0400"
)
ENTERPRISE_99 = (1, 3, 6, 1, 4, 1, 99)
EVERY_TYPE_VARBINDS: list[RawVarBind] = [
    (SYS_UPTIME, "TimeTicks", 123820),
    (SNMP_TRAP_OID, "ObjectIdentifier", LINK_DOWN),
    ((*ENTERPRISE_99, 1), "Integer32", -5),
    ((*ENTERPRISE_99, 2), "Gauge32", 4294967295),
    ((*ENTERPRISE_99, 3), "Counter32", 4294967295),
    ((*ENTERPRISE_99, 4), "OctetString", b"hello"),
    ((*ENTERPRISE_99, 5), "OctetString", b"\x00\xff\x80"),
    ((*ENTERPRISE_99, 6), "Null", None),
    ((*ENTERPRISE_99, 7), "ObjectIdentifier", (1, 3, 6, 1, 4, 1, 4294967295)),
    ((*ENTERPRISE_99, 8), "TimeTicks", 4294967295),
    ((*ENTERPRISE_99, 9), "IpAddress", "10.1.2.3"),
    ((*ENTERPRISE_99, 10), "Counter64", 18446744073709551615),
    # net-snmp wraps U (uint64) and F (float) in Opaque; they stay raw bytes.
    ((*ENTERPRISE_99, 11), "Opaque", b"\x9f\x7b\x01\x05"),
    ((*ENTERPRISE_99, 12), "Opaque", b"\x9f\x78\x04\x3f\xc0\x00\x00"),
    ((*ENTERPRISE_99, 13), "OctetString", b""),
]


# --- a tiny BER builder for hand-made messages -------------------------------------------


def tlv(tag: int, content: bytes, length: bytes | None = None) -> bytes:
    """One TLV; ``length`` overrides the minimal length octets (long forms, lies)."""
    return bytes((tag,)) + (encode_length(len(content)) if length is None else length) + content


def integer(value: int, tag: int = 0x02) -> bytes:
    return tlv(tag, encode_integer_content(value))


def oid(value: Oid) -> bytes:
    return tlv(0x06, encode_oid_content(value))


def varbind(name: Oid, value: bytes) -> bytes:
    return tlv(0x30, oid(name) + value)


def v2c(
    varbinds: Sequence[bytes],
    *,
    pdu: int = 0xA7,
    request_id: int = 1234,
    community: bytes = b"public",
    version: int = 1,
    errors: bytes = b"\x02\x01\x00\x02\x01\x00",
) -> bytes:
    body = integer(request_id) + errors + tlv(0x30, b"".join(varbinds))
    return tlv(0x30, integer(version) + tlv(0x04, community) + tlv(pdu, body))


def v1(
    varbinds: Sequence[bytes],
    *,
    enterprise: bytes | None = None,
    agent: bytes = b"\x40\x04\x0a\x00\x00\x01",
    generic: int = 6,
    specific: int = 17,
    timestamp: bytes | None = None,
    pdu: int = 0xA4,
) -> bytes:
    enterprise = oid(ENTERPRISE_99) if enterprise is None else enterprise
    timestamp = integer(4711, 0x43) if timestamp is None else timestamp
    body = (
        enterprise + agent + integer(generic) + integer(specific) + timestamp + tlv(0x30, b"".join(varbinds))
    )
    return tlv(0x30, integer(0) + tlv(0x04, b"public") + tlv(pdu, body))


TRAP_HEAD = [varbind(SYS_UPTIME, integer(100, 0x43)), varbind(SNMP_TRAP_OID, oid(LINK_DOWN))]


def rejected(data: bytes) -> str:
    with pytest.raises(Rejected) as excinfo:
        decode(data)
    assert excinfo.value.reason in REJECT_REASONS
    return excinfo.value.reason


# --- real packets ------------------------------------------------------------------------


def test_netsnmp_v2c_linkdown() -> None:
    msg = decode(NETSNMP_V2C_LINKDOWN)
    assert msg == FastMessage(
        version="v2c",
        community=b"public",
        pdu="trap",
        request_id=0x486F3499,
        varbinds=[
            (SYS_UPTIME, "TimeTicks", 54183),
            (SNMP_TRAP_OID, "ObjectIdentifier", LINK_DOWN),
            (IF_INDEX_17, "Integer32", 17),
            ((1, 3, 6, 1, 2, 1, 2, 2, 1, 2, 17), "OctetString", b"Gi0/17"),
        ],
    )
    assert message_version(NETSNMP_V2C_LINKDOWN) == 1


def test_netsnmp_v1_linkdown() -> None:
    msg = decode(NETSNMP_V1_LINKDOWN)
    assert msg == FastMessage(
        version="v1",
        community=b"public",
        pdu="v1-trap",
        request_id=None,
        varbinds=[(IF_INDEX_17, "Integer32", 17)],
        v1_enterprise=(1, 3, 6, 1, 4, 1, 9),
        v1_agent_addr="127.0.0.1",
        v1_generic_trap=2,
        v1_specific_trap=0,
        v1_timestamp=54184,
    )
    assert message_version(NETSNMP_V1_LINKDOWN) == 0


def test_netsnmp_every_value_type() -> None:
    msg = decode(NETSNMP_V2C_EVERY_TYPE)
    assert msg.request_id == 0x0D9CE71F
    assert msg.varbinds == EVERY_TYPE_VARBINDS


# --- hand-built shapes ---------------------------------------------------------------------


def test_every_value_type_at_its_edges() -> None:
    cases: list[tuple[bytes, RawVarBind]] = [
        (integer(-(2**31)), ((1, 3, 1), "Integer32", -(2**31))),
        (integer(2**31 - 1), ((1, 3, 1), "Integer32", 2**31 - 1)),
        (integer(-1), ((1, 3, 1), "Integer32", -1)),
        (integer(0), ((1, 3, 1), "Integer32", 0)),
        (tlv(0x02, b"\xff\x80"), ((1, 3, 1), "Integer32", -128)),  # pyasn1's padded -128
        (tlv(0x04, b""), ((1, 3, 1), "OctetString", b"")),
        (tlv(0x04, bytes(range(256)) * 4), ((1, 3, 1), "OctetString", bytes(range(256)) * 4)),
        (tlv(0x05, b""), ((1, 3, 1), "Null", None)),
        (oid((2, 999, 2**32 - 1)), ((1, 3, 1), "ObjectIdentifier", (2, 999, 2**32 - 1))),
        (tlv(0x40, b"\xc0\xa8\x00\xff"), ((1, 3, 1), "IpAddress", "192.168.0.255")),
        (integer(0, 0x41), ((1, 3, 1), "Counter32", 0)),
        (integer(2**32 - 1, 0x41), ((1, 3, 1), "Counter32", 2**32 - 1)),
        (integer(2**31, 0x42), ((1, 3, 1), "Gauge32", 2**31)),
        (tlv(0x42, b"\x00\x00\x00\x00\x07"), ((1, 3, 1), "Gauge32", 7)),  # padded, still in range
        (integer(2**32 - 1, 0x43), ((1, 3, 1), "TimeTicks", 2**32 - 1)),
        (tlv(0x44, b"\x9f\x78\x04\x3f\xc0\x00\x00"), ((1, 3, 1), "Opaque", b"\x9f\x78\x04\x3f\xc0\x00\x00")),
        (integer(2**64 - 1, 0x46), ((1, 3, 1), "Counter64", 2**64 - 1)),
        (integer(0, 0x46), ((1, 3, 1), "Counter64", 0)),
        (tlv(0x80, b""), ((1, 3, 1), "noSuchObject", None)),
        (tlv(0x81, b""), ((1, 3, 1), "noSuchInstance", None)),
        (tlv(0x82, b""), ((1, 3, 1), "endOfMibView", None)),
    ]
    msg = decode(v2c([varbind((1, 3, 1), value) for value, _ in cases]))
    assert msg.varbinds == [expected for _, expected in cases]


def test_big_and_odd_oids_as_names() -> None:
    names: list[Oid] = [
        (1, 3, 6, 1, 4, 1, 2**32 - 1),
        (1, 3, 6, 1, 2, 1, 17, 7, 1, 2, 2, 1, 2, 1, 0, 27, 14, 255, 128, 127),  # a MAC in the index
        (0, 0),
        (2, 47),
        (2, 48, 1),
        (1, 3, *range(126)),  # 128 arcs, the most allowed
    ]
    msg = decode(v2c([varbind(name, tlv(0x05, b"")) for name in names]))
    assert [name for name, _, _ in msg.varbinds] == names


def test_long_form_lengths_everywhere() -> None:
    """Every length in the message in a long form, minimal or padded: the content decides, not the form."""

    def long(content: bytes, octets: int) -> bytes:
        return bytes((0x80 | octets,)) + len(content).to_bytes(octets, "big")

    def build(octets: int) -> bytes:
        def t(tag: int, content: bytes) -> bytes:
            return tlv(tag, content, long(content, octets))

        vb = t(0x30, t(0x06, encode_oid_content(IF_INDEX_17)) + t(0x02, b"\x11"))
        vb2 = t(0x30, t(0x06, encode_oid_content((1, 3, 2))) + t(0x04, b"x" * 150))
        body = t(0x02, b"\x05") + t(0x02, b"\x00") + t(0x02, b"\x00") + t(0x30, vb + vb2)
        return t(0x30, t(0x02, b"\x01") + t(0x04, b"public") + t(0xA6, body))

    for octets in (1, 2, 3, 4):
        msg = decode(build(octets))
        assert msg.pdu == "inform" and msg.request_id == 5
        assert msg.varbinds == [(IF_INDEX_17, "Integer32", 17), ((1, 3, 2), "OctetString", b"x" * 150)]


def test_v2c_trap_without_varbinds_is_kept() -> None:
    msg = decode(v2c([]))
    assert msg.pdu == "trap" and msg.varbinds == [] and msg.request_id == 1234


def test_v2c_trap_with_many_varbinds_keeps_order() -> None:
    names = [(1, 3, 6, 1, 4, 1, 99, i) for i in range(200)]
    msg = decode(v2c([*TRAP_HEAD, *(varbind(name, integer(i)) for i, name in enumerate(names))]))
    assert [vb[0] for vb in msg.varbinds[2:]] == names
    assert [vb[2] for vb in msg.varbinds[2:]] == list(range(200))


@pytest.mark.parametrize("request_id", [2**31, 2**32 - 1])
def test_inform_request_id_counted_unsigned_is_acknowledged_with_it(request_id: int) -> None:
    """An agent whose request-id counter went past 2^31 writes it unsigned (00 80 00 00 00).
    RFC 3416 bounds it to Integer32, but net-snmp's snmptrapd takes the inform and answers it;
    refused, the agent resent the inform until it gave up. The Response echoes it exactly."""
    msg = decode(v2c(TRAP_HEAD, pdu=0xA6, request_id=request_id))
    assert msg.request_id == request_id
    assert integer(request_id) in encode_inform_response(msg)


def test_inform_and_negative_request_id() -> None:
    msg = decode(v2c(TRAP_HEAD, pdu=0xA6, request_id=-(2**31)))
    assert msg.pdu == "inform" and msg.request_id == -(2**31)


def test_nonzero_error_fields_are_tolerated() -> None:
    """RFC 3416 wants 0 there; a sloppy agent's value changes nothing about the notification."""
    msg = decode(v2c(TRAP_HEAD, errors=integer(5) + integer(2)))
    assert msg.varbinds[1] == (SNMP_TRAP_OID, "ObjectIdentifier", LINK_DOWN)


def test_v1_enterprise_specific_trap_header() -> None:
    msg = decode(
        v1([varbind(IF_INDEX_17, integer(17))], generic=6, specific=-3, timestamp=integer(2**32 - 1, 0x43))
    )
    assert (msg.version, msg.pdu, msg.request_id) == ("v1", "v1-trap", None)
    assert msg.v1_enterprise == ENTERPRISE_99
    assert msg.v1_agent_addr == "10.0.0.1"
    assert (msg.v1_generic_trap, msg.v1_specific_trap, msg.v1_timestamp) == (6, -3, 2**32 - 1)


@pytest.mark.parametrize(
    ("value", "kind", "number"),
    [
        (tlv(0x41, b"\xff"), "Counter32", 255),
        (tlv(0x41, b"\xff\xff\xff\xff"), "Counter32", 2**32 - 1),
        (tlv(0x42, b"\x80\x00\x00\x00"), "Gauge32", 2**31),
        (tlv(0x43, b"\xb2\xd0\x5e\x00"), "TimeTicks", 3_000_000_000),
        (tlv(0x46, b"\xff" * 8), "Counter64", 2**64 - 1),
        (tlv(0x46, b"\x80"), "Counter64", 128),
    ],
)
def test_unsigned_value_without_its_leading_zero_octet_is_read_unsigned(
    value: bytes, kind: str, number: int
) -> None:
    """Some agents write an unsigned type's value in as many octets as it needs unsigned, leaving out
    the 00 that BER's two's complement wants before a high bit (ff ff ff ff for 4294967295). Read
    as BER it is negative, which no unsigned type holds; net-snmp's snmptrapd reads the octets
    unsigned and takes the trap (Counter32: 4294967295), and so does trapd, in v1, v2c and the ack."""
    inform = decode(v2c([varbind(IF_INDEX_17, value)], pdu=0xA6))
    assert inform.varbinds[-1] == (IF_INDEX_17, kind, number)
    # The acknowledgement echoes the value in minimal BER: the same number, with its 00.
    assert integer(number, value[0]) in encode_inform_response(inform)
    if kind != "Counter64":  # no Counter64 in v1 (module doc)
        assert decode(v1([varbind(IF_INDEX_17, value)])).varbinds[-1] == (IF_INDEX_17, kind, number)
    assert decode(v1([], timestamp=tlv(0x43, b"\xff\xff\xff\xff"))).v1_timestamp == 2**32 - 1


def test_counter64_in_a_v1_trap_is_kept() -> None:
    """net-snmp's snmptrap -v 1 ... C 5 sends a Counter64 in a v1 Trap-PDU (a net-snmp based agent
    does the same with ifHCInOctets), and snmptrapd takes it: so does trapd, value and type kept."""
    msg = decode(v1([varbind(IF_INDEX_17, integer(2**64 - 1, 0x46))]))
    assert msg.varbinds == [(IF_INDEX_17, "Counter64", 2**64 - 1)]


@pytest.mark.parametrize(
    ("agent", "address"),
    [
        (tlv(0x40, b""), "0.0.0.0"),
        (tlv(0x40, b"\x0a\x00\x01"), "10.0.1.0"),
        (tlv(0x04, b"\x0a\x00\x00\x01"), "10.0.0.1"),
        (tlv(0x04, b""), "0.0.0.0"),
    ],
)
def test_v1_agent_addr_of_fewer_octets_or_as_an_octet_string_is_kept(agent: bytes, address: str) -> None:
    """An agent-addr of fewer than 4 octets, or tagged OCTET STRING: net-snmp's snmptrapd takes
    these traps (0.0.0.0, 10.0.1.0, 10.0.0.1: missing octets are zeros), and the agent-addr only
    feeds snmpTrapAddress; trapd refused the whole trap."""
    msg = decode(v1([varbind(IF_INDEX_17, integer(17))], agent=agent))
    assert msg.v1_agent_addr == address
    assert msg.varbinds == [(IF_INDEX_17, "Integer32", 17)]


@pytest.mark.parametrize("number", [2**31, 3_000_000_000, 2**32 - 1])
def test_integer_value_of_an_unsigned_32_bit_number_is_kept(number: int) -> None:
    """An agent that puts an unsigned 32-bit number (flags, an address as a number) in an INTEGER
    writes 2^31..2^32-1 as 00 80 00 00 00 .. 00 ff ff ff ff. net-snmp's snmptrapd takes the trap
    (INTEGER: 4294967295); one such value refused the whole trap. The inform ack echoes it."""
    inform = decode(v2c([*TRAP_HEAD, varbind(IF_INDEX_17, integer(number))], pdu=0xA6))
    assert inform.varbinds[-1] == (IF_INDEX_17, "Integer32", number)
    assert integer(number) in encode_inform_response(inform)
    assert decode(v1([varbind(IF_INDEX_17, integer(number))])).varbinds[-1] == (
        IF_INDEX_17,
        "Integer32",
        number,
    )


@pytest.mark.parametrize("specific", [2**31, 3_000_000_000, 2**32 - 1])
def test_v1_specific_trap_of_2_31_or_more_written_unsigned_is_kept(specific: int) -> None:
    """RFC 1157's specific-trap is an unconstrained INTEGER and RFC 3584 makes it a sub-identifier
    (up to 2^32-1): an agent that writes 3000000000 as 00 b2 d0 5e 00 (SNMP4J and others; net-snmp
    writes the signed b2 d0 5e 00) sends a trap snmptrapd takes, "Enterprise Specific Trap (3000000000)"."""
    msg = decode(v1([], generic=6, specific=specific))
    assert msg.v1_specific_trap == specific
    assert v1_trap_oid(ENTERPRISE_99, 6, specific) == (*ENTERPRISE_99, 0, specific)


@pytest.mark.parametrize("generic", [7, 100, -1, 2**31 - 1, -(2**31)])
def test_v1_generic_trap_outside_0_to_6_is_kept(generic: int) -> None:
    """generic-trap is an INTEGER with named numbers 0..6 (RFC 1157), not a range: net-snmp's
    snmptrapd takes 7, 100 or -1 from an agent (and snmptrap sends them), so trapd does too."""
    msg = decode(v1([varbind(IF_INDEX_17, integer(17))], generic=generic, specific=0))
    assert (msg.v1_generic_trap, msg.v1_specific_trap) == (generic, 0)
    assert msg.varbinds == [(IF_INDEX_17, "Integer32", 17)]


def test_bytes_like_input_gives_bytes_values() -> None:
    for data in (bytearray(NETSNMP_V2C_LINKDOWN), memoryview(NETSNMP_V2C_LINKDOWN)):
        msg = decode(data)  # type: ignore[arg-type]
        assert msg == decode(NETSNMP_V2C_LINKDOWN)
        assert type(msg.community) is bytes and type(msg.varbinds[3][2]) is bytes
        assert message_version(data) == 1  # type: ignore[arg-type]


def test_community_is_raw_bytes() -> None:
    assert decode(v2c(TRAP_HEAD, community=b"")).community == b""
    assert decode(v2c(TRAP_HEAD, community=b"\xffnot utf-8\x00")).community == b"\xffnot utf-8\x00"


# --- refusals --------------------------------------------------------------------------------

GOOD = v2c(TRAP_HEAD)


REFUSALS: list[tuple[bytes, str]] = [
    (b"", "empty"),
    (b"\x30" + b"\x00" * MAX_MESSAGE, "oversized"),
    (GOOD[:-1], "truncated"),
    (GOOD[:1], "truncated"),
    (GOOD + b"\x00", "trailing-bytes"),
    (b"\x30\x80" + GOOD[2:] + b"\x00\x00", "indefinite-length"),
    (b"\x30\x85\x00\x00\x00\x00" + bytes((len(GOOD) - 2,)) + GOOD[2:], "bad-length"),
    (b"\x31" + GOOD[1:], "bad-tag"),
    # version: 3 goes to pysnmp, 2 is no SNMP version, and versions are one octet.
    (v2c(TRAP_HEAD, version=3), "bad-version"),
    (v2c(TRAP_HEAD, version=2), "bad-version"),
    (v2c(TRAP_HEAD, version=257), "bad-version"),
    (tlv(0x30, tlv(0x02, b"") + tlv(0x04, b"public") + tlv(0xA7, b"")), "bad-integer"),
    # PDU types
    (v2c(TRAP_HEAD, pdu=0xA0), "unsupported-pdu"),  # GetRequest
    (v2c(TRAP_HEAD, pdu=0xA2), "unsupported-pdu"),  # Response
    (v2c(TRAP_HEAD, pdu=0xA8), "unsupported-pdu"),  # Report
    (v2c(TRAP_HEAD, pdu=0xA4), "unsupported-pdu"),  # a v1 Trap-PDU in a v2c message
    (v1([], pdu=0xA7), "unsupported-pdu"),  # a v2c trap in a v1 message
    (v1([], pdu=0xA0), "unsupported-pdu"),
    (v2c(TRAP_HEAD, pdu=0xA9), "bad-tag"),
    (v2c(TRAP_HEAD, pdu=0x30), "bad-tag"),
    # fields
    (v2c(TRAP_HEAD, request_id=2**32), "bad-integer"),
    (v2c(TRAP_HEAD, errors=integer(2**31) + integer(0)), "bad-integer"),
    (v2c(TRAP_HEAD, errors=integer(0)), "bad-tag"),  # error-index missing
    (v2c([varbind(IF_INDEX_17, integer(2**32))]), "bad-integer"),
    (v2c([varbind(IF_INDEX_17, integer(-(2**31) - 1))]), "bad-integer"),
    (v2c([varbind(IF_INDEX_17, tlv(0x41, b"\xff\xff\xff\xff\xff"))]), "bad-integer"),
    (v2c([varbind(IF_INDEX_17, integer(2**32, 0x42))]), "bad-integer"),
    (v2c([varbind(IF_INDEX_17, tlv(0x43, b"\xff\xff\xff\xff\xff"))]), "bad-integer"),
    (v2c([varbind(IF_INDEX_17, tlv(0x46, b"\xff" * 9))]), "bad-integer"),
    (v2c([varbind(IF_INDEX_17, integer(2**64, 0x46))]), "bad-integer"),
    (v2c([varbind(IF_INDEX_17, tlv(0x43, b""))]), "bad-integer"),
    (v2c([varbind(IF_INDEX_17, tlv(0x02, b""))]), "bad-integer"),
    (v2c([tlv(0x30, tlv(0x06, b"\x2b\x80\x01") + tlv(0x05, b""))]), "bad-oid"),
    (v2c([tlv(0x30, tlv(0x06, b"") + tlv(0x05, b""))]), "bad-oid"),
    (v2c([varbind(IF_INDEX_17, tlv(0x06, b"\x2b\x90\x80\x80\x80\x00"))]), "bad-oid"),
    (v2c([varbind(IF_INDEX_17, tlv(0x40, b"\x0a\x00\x00"))]), "bad-value"),
    (v2c([varbind(IF_INDEX_17, tlv(0x05, b"\x00"))]), "bad-value"),
    (v2c([varbind(IF_INDEX_17, tlv(0x81, b"\x00"))]), "bad-value"),
    # varbind shapes: unknown types, nesting beyond the shape, extra or missing members
    (v2c([varbind(IF_INDEX_17, tlv(0x45, b"\x00"))]), "bad-tag"),  # NsapAddress, gone from SMIv2
    (v2c([varbind(IF_INDEX_17, tlv(0x47, b"\x00"))]), "bad-tag"),
    (v2c([varbind(IF_INDEX_17, tlv(0x30, integer(1)))]), "bad-tag"),
    (v2c([tlv(0x30, tlv(0x30, oid(IF_INDEX_17) + integer(1)))]), "bad-tag"),
    (v2c([tlv(0x30, integer(1) + oid(IF_INDEX_17))]), "bad-tag"),
    (v2c([tlv(0x31, oid(IF_INDEX_17) + integer(1))]), "bad-tag"),
    (v2c([tlv(0x30, oid(IF_INDEX_17) + integer(1) + integer(2))]), "trailing-bytes"),
    (v2c([tlv(0x30, oid(IF_INDEX_17))]), "truncated"),
    (v2c([tlv(0x30, b"")]), "truncated"),
    (v2c([tlv(0x30, oid(IF_INDEX_17) + tlv(0x02, b"\x01", b"\x02"))]), "truncated"),
    (v2c([tlv(0x30, oid(IF_INDEX_17) + b"\x02\x80\x01\x00\x00")]), "indefinite-length"),
    # v1 header and v1-only rules
    (v1([], generic=2**31), "bad-integer"),
    (v1([], specific=2**32), "bad-integer"),
    (v1([], specific=-(2**31) - 1), "bad-integer"),
    (v1([], agent=tlv(0x02, b"\x0a\x00\x00\x01")), "bad-tag"),
    (v1([], agent=tlv(0x40, b"\x0a\x00\x00\x01\x00")), "bad-value"),
    (v1([], enterprise=tlv(0x06, b"")), "bad-oid"),
    (v1([], timestamp=integer(5)), "bad-tag"),
    (v1([], timestamp=integer(2**32, 0x43)), "bad-integer"),
    (v1([], timestamp=tlv(0x43, b"\xff\xff\xff\xff\xff")), "bad-integer"),
    (v1([varbind(IF_INDEX_17, tlv(0x80, b""))]), "bad-value"),
]


@pytest.mark.parametrize(("data", "slug"), REFUSALS)
def test_refusals(data: bytes, slug: str) -> None:
    assert rejected(data) == slug


def test_containers_must_end_where_their_contents_end() -> None:
    community = tlv(0x04, b"public")
    pdu = tlv(0xA7, integer(1) + b"\x02\x01\x00\x02\x01\x00" + tlv(0x30, b""))
    # Something after the PDU inside the message.
    assert rejected(tlv(0x30, integer(1) + community + pdu + b"\x05\x00")) == "trailing-bytes"
    # Something after the varbind list inside the PDU.
    body = integer(1) + b"\x02\x01\x00\x02\x01\x00" + tlv(0x30, b"") + b"\x05\x00"
    assert rejected(tlv(0x30, integer(1) + community + tlv(0xA7, body))) == "trailing-bytes"
    v1_body = oid(ENTERPRISE_99) + b"\x40\x04\x0a\x00\x00\x01" + integer(6) + integer(1) + integer(5, 0x43)
    v1_pdu = tlv(0xA4, v1_body + tlv(0x30, b"") + b"\x05\x00")
    assert rejected(tlv(0x30, integer(0) + community + v1_pdu)) == "trailing-bytes"
    # A PDU claiming more than the message holds.
    assert (
        rejected(tlv(0x30, integer(1) + community + pdu[:1] + bytes((pdu[1] + 1,)) + pdu[2:])) == "truncated"
    )


def test_every_reason_is_reachable() -> None:
    """Each documented reason names something the decoder really says (no dead metric labels)."""
    seen = {slug for _, slug in REFUSALS}
    assert seen == set(REJECT_REASONS)


# --- message_version -----------------------------------------------------------------------


def test_message_version_reads_only_the_header() -> None:
    # A v3 message: only the outer SEQUENCE and the version are looked at.
    v3 = tlv(0x30, integer(3) + tlv(0x30, b"\xde\xad\xbe\xef") + b"anything pysnmp will judge")
    assert message_version(v3) == 3
    assert message_version(v2c(TRAP_HEAD)) == 1
    assert message_version(v1([])) == 0
    # decode() refuses v3 outright: it belongs to pysnmp.
    assert rejected(v3) == "bad-version"


@pytest.mark.parametrize(
    ("data", "slug"),
    [
        (b"", "empty"),
        (b"\x00" * (MAX_MESSAGE + 1), "oversized"),
        (b"\x30\x03\x02\x01", "truncated"),
        (tlv(0x30, integer(3)) + b"\x00", "trailing-bytes"),
        (tlv(0x30, integer(2)), "bad-version"),
        (tlv(0x30, integer(-1)), "bad-version"),
        (tlv(0x30, tlv(0x04, b"\x03")), "bad-tag"),
        (b"\x30\x80\x02\x01\x03\x00\x00", "indefinite-length"),
        (tlv(0x30, tlv(0x02, b"")), "bad-integer"),
    ],
)
def test_message_version_refusals(data: bytes, slug: str) -> None:
    with pytest.raises(Rejected) as excinfo:
        message_version(data)
    assert excinfo.value.reason == slug


# --- remembered varbinds (fastpath._KNOWN) ----------------------------------------------------


def test_a_remembered_varbind_decodes_as_before_and_is_shared() -> None:
    from trapd.listener import fastpath

    fastpath._KNOWN.clear()
    data = v2c(
        [*TRAP_HEAD, varbind(IF_INDEX_17, integer(17)), varbind((*ENTERPRISE_99, 4), tlv(0x04, b"Gi0/1"))]
    )
    first, second = decode(data), decode(data)
    assert first == second and first.varbinds[2:] == [
        (IF_INDEX_17, "Integer32", 17),
        ((*ENTERPRISE_99, 4), "OctetString", b"Gi0/1"),
    ]
    assert second.varbinds[1] is first.varbinds[1]  # snmpTrapOID: remembered, the same immutable tuple
    assert second.varbinds[0] is not first.varbinds[0]  # sysUpTime (TimeTicks), a clock: never remembered
    assert first.varbinds is not second.varbinds  # each message has its own list


def test_what_v1_refuses_is_not_remembered_from_v2c() -> None:
    """The exception values are fine in v2c and refused in v1: a v2c trap must not teach the
    table a varbind that a v1 trap with the same octets would then get past the check."""
    from trapd.listener import fastpath

    fastpath._KNOWN.clear()
    missing = varbind((*ENTERPRISE_99, 11), tlv(0x80, b""))
    assert len(decode(v2c([*TRAP_HEAD, missing])).varbinds) == 3
    assert rejected(v1([missing])) == "bad-value"


def test_refusals_do_not_depend_on_what_was_remembered() -> None:
    from trapd.listener import fastpath

    good = varbind(IF_INDEX_17, integer(17))
    decode(v2c([*TRAP_HEAD, good]))  # remembered now
    # The same varbind with one more octet in a container that does not hold it.
    assert rejected(v2c([*TRAP_HEAD, good[:-1]])) == "truncated"
    assert good[2:] in fastpath._KNOWN


def test_the_table_of_remembered_varbinds_is_bounded() -> None:
    from trapd.listener import fastpath

    for i in range(fastpath._KNOWN_SIZE + 500):
        decode(v2c([*TRAP_HEAD, varbind(IF_INDEX_17, integer(i))]))
        assert len(fastpath._KNOWN) <= fastpath._KNOWN_SIZE
    long_value = varbind(IF_INDEX_17, tlv(0x04, b"x" * 200))
    decode(v2c([long_value]))
    assert long_value[2:] not in fastpath._KNOWN  # longer than _KNOWN_MAX_OCTETS: decoded every time


# --- the inform acknowledgement ----------------------------------------------------------------


def as_inform(response: bytes) -> bytes:
    """The same bytes with the Response tag turned into InformRequest, so decode() can read them back."""
    _, start, _ = read_header(response, 0, len(response))
    _, _, community_end = read_header(response, start + 3, len(response))
    assert response[start : start + 3] == b"\x02\x01\x01" and response[community_end] == 0xA2
    return response[:community_end] + b"\xa6" + response[community_end + 1 :]


def test_inform_response_mirrors_the_inform() -> None:
    inform = decode(NETSNMP_V2C_EVERY_TYPE.replace(b"\xa7\x82", b"\xa6\x82", 1))
    assert inform.pdu == "inform"
    response = encode_inform_response(inform)
    back = decode(as_inform(response))
    assert (back.community, back.request_id, back.varbinds) == (
        inform.community,
        inform.request_id,
        inform.varbinds,
    )
    # error-status and error-index are zero.
    assert b"\x02\x01\x00\x02\x01\x00\x30" in response


def test_inform_response_for_a_huge_hand_built_message_is_toobig() -> None:
    msg = FastMessage("v2c", b"public", "inform", 77, [((1, 3, 1), "OctetString", b"x" * 70000)])
    response = encode_inform_response(msg)
    assert len(response) < 100
    # error-status tooBig (1), error-index 0, no varbinds (RFC 3416 4.2.7).
    assert response.endswith(integer(77) + integer(1) + integer(0) + b"\x30\x00")


def test_inform_response_refuses_what_is_not_an_inform() -> None:
    with pytest.raises(ValueError):
        encode_inform_response(decode(GOOD))
    with pytest.raises(ValueError):
        encode_inform_response(decode(NETSNMP_V1_LINKDOWN))
    for kind, value in [
        ("IpAddress", "10.0.0"),
        ("IpAddress", "10.0.0.256"),
        ("Counter32", -1),
        ("Integer32", 2**32),  # 2^31..2^32-1 is taken (an unsigned number in an INTEGER)
        ("Counter64", 2**64),
        ("OctetString", "text, not bytes"),
        ("Null", 0),
        ("ObjectIdentifier", (1, 3, 2**32)),
    ]:
        bad_value = FastMessage("v2c", b"public", "inform", 1, [((1, 3, 1), kind, value)])  # type: ignore[list-item]
        with pytest.raises(ValueError):
            encode_inform_response(bad_value)


# --- against real net-snmp ---------------------------------------------------------------------

NETSNMP = pytest.mark.skipif(shutil.which("snmptrap") is None, reason="net-snmp's snmptrap is not installed")


@pytest.fixture
def udp_socket() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


def capture(sock: socket.socket, command: list[str]) -> bytes:
    """Run a net-snmp sender at ``sock`` and return the first datagram it sends."""
    port = sock.getsockname()[1]
    argv = [command[0], "-m", "", "-M", "/dev/null", *command[1:]]
    argv = [arg.replace("PORT", str(port)) for arg in argv]
    with subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) as process:
        try:
            data, _ = sock.recvfrom(65535)
        finally:
            process.kill()
    return data


@pytest.mark.integration
@NETSNMP
def test_live_snmptrap_v2c_every_type(udp_socket: socket.socket) -> None:
    args = ["1.3.6.1.4.1.99.1", "i", "-5", "1.3.6.1.4.1.99.2", "u", "4294967295", "1.3.6.1.4.1.99.3", "c"]
    args += ["4294967295", "1.3.6.1.4.1.99.4", "s", "hello", "1.3.6.1.4.1.99.5", "x", "00ff80"]
    args += ["1.3.6.1.4.1.99.6", "n", "x", "1.3.6.1.4.1.99.7", "o", "1.3.6.1.4.1.4294967295"]
    args += ["1.3.6.1.4.1.99.8", "t", "4294967295", "1.3.6.1.4.1.99.9", "a", "10.1.2.3"]
    args += ["1.3.6.1.4.1.99.10", "C", "18446744073709551615", "1.3.6.1.4.1.99.11", "U", "5"]
    args += ["1.3.6.1.4.1.99.12", "F", "1.5", "1.3.6.1.4.1.99.13", "s", ""]
    data = capture(
        udp_socket, ["snmptrap", "-v", "2c", "-c", "public", "127.0.0.1:PORT", "", "1.3.6.1.6.3.1.1.5.3"]
    )
    assert decode(data).varbinds[1] == (SNMP_TRAP_OID, "ObjectIdentifier", LINK_DOWN)
    data = capture(
        udp_socket,
        ["snmptrap", "-v", "2c", "-c", "public", "127.0.0.1:PORT", "", "1.3.6.1.6.3.1.1.5.3", *args],
    )
    msg = decode(data)
    assert (msg.version, msg.pdu, msg.community) == ("v2c", "trap", b"public")
    assert msg.varbinds[0][:2] == (SYS_UPTIME, "TimeTicks")
    assert msg.varbinds[1:] == EVERY_TYPE_VARBINDS[1:]


@pytest.mark.integration
@NETSNMP
def test_live_snmptrap_v1(udp_socket: socket.socket) -> None:
    data = capture(
        udp_socket,
        ["snmptrap", "-v", "1", "-c", "s3cret", "127.0.0.1:PORT", "1.3.6.1.4.1.9", "192.0.2.7", "6", "42", "",
         "1.3.6.1.2.1.2.2.1.1.17", "i", "17", "1.3.6.1.4.1.9.1", "a", "10.9.8.7"],
    )  # fmt: skip
    msg = decode(data)
    assert (msg.version, msg.pdu, msg.community, msg.request_id) == ("v1", "v1-trap", b"s3cret", None)
    assert msg.v1_enterprise == (1, 3, 6, 1, 4, 1, 9)
    assert msg.v1_agent_addr == "192.0.2.7"
    assert (msg.v1_generic_trap, msg.v1_specific_trap) == (6, 42)
    assert msg.v1_timestamp is not None and msg.v1_timestamp >= 0
    assert msg.varbinds == [
        (IF_INDEX_17, "Integer32", 17),
        ((1, 3, 6, 1, 4, 1, 9, 1), "IpAddress", "10.9.8.7"),
    ]


class InformAnswerer:
    """A UDP server thread that acknowledges every inform with ``respond(message)``."""

    def __init__(self, sock: socket.socket, respond: object) -> None:
        self.sock = sock
        self.respond = respond
        self.received: list[FastMessage] = []
        self.stop = threading.Event()
        self.sock.settimeout(0.1)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                data, peer = self.sock.recvfrom(65535)
            except TimeoutError:
                continue
            msg = decode(data)
            self.received.append(msg)
            assert callable(self.respond)
            self.sock.sendto(self.respond(msg), peer)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(5)


def snmpinform(port: int, timeout: int) -> subprocess.CompletedProcess[str]:
    argv = [
        "snmpinform",
        "-m",
        "",
        "-M",
        "/dev/null",
        "-v",
        "2c",
        "-c",
        "public",
        "-r",
        "0",
        "-t",
        str(timeout),
    ]
    argv += [f"127.0.0.1:{port}", "", "1.3.6.1.6.3.1.1.5.3", "1.3.6.1.2.1.2.2.1.1.17", "i", "17"]
    argv += ["1.3.6.1.2.1.2.2.1.2.17", "s", "Gi0/17", "1.3.6.1.4.1.99.10", "C", "18446744073709551615"]
    argv += ["1.3.6.1.4.1.99.11", "a", "10.1.2.3", "1.3.6.1.4.1.99.12", "o", "1.3.6.1.4.1.4294967295"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 10, check=False)


@pytest.mark.integration
@NETSNMP
def test_snmpinform_accepts_our_response(udp_socket: socket.socket) -> None:
    server = InformAnswerer(udp_socket, encode_inform_response)
    try:
        result = snmpinform(udp_socket.getsockname()[1], timeout=2)
    finally:
        server.close()
    assert result.returncode == 0, result.stderr
    assert len(server.received) == 1  # answered the first time: no retry was needed
    assert server.received[0].pdu == "inform"
    assert server.received[0].varbinds[2:] == [
        (IF_INDEX_17, "Integer32", 17),
        ((1, 3, 6, 1, 2, 1, 2, 2, 1, 2, 17), "OctetString", b"Gi0/17"),
        ((1, 3, 6, 1, 4, 1, 99, 10), "Counter64", 2**64 - 1),
        ((1, 3, 6, 1, 4, 1, 99, 11), "IpAddress", "10.1.2.3"),
        ((1, 3, 6, 1, 4, 1, 99, 12), "ObjectIdentifier", (1, 3, 6, 1, 4, 1, 2**32 - 1)),
    ]


@pytest.mark.integration
@NETSNMP
def test_snmpinform_refuses_a_response_with_the_wrong_request_id(udp_socket: socket.socket) -> None:
    """The control for the test above: net-snmp does check what it gets back."""

    def wrong_id(msg: FastMessage) -> bytes:
        assert msg.request_id is not None
        other = FastMessage(msg.version, msg.community, msg.pdu, msg.request_id ^ 1, msg.varbinds)
        return encode_inform_response(other)

    server = InformAnswerer(udp_socket, wrong_id)
    try:
        result = snmpinform(udp_socket.getsockname()[1], timeout=1)
    finally:
        server.close()
    assert server.received, "snmpinform sent nothing"
    assert result.returncode != 0
