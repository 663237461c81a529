"""RawNotification -> Event: RFC 3584 v1 translation, lifting, names, display strings, JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from trapd import display as disp
from trapd.event import Event, VarBind
from trapd.listener.raw import RawNotification, RawVarBind, Security
from trapd.mibs import MibConfig, MibResolver
from trapd.normalize import (
    SNMP_TRAP_ADDRESS_OID,
    SNMP_TRAP_COMMUNITY_OID,
    SNMP_TRAP_ENTERPRISE_OID,
    Normalizer,
)

SYS_UPTIME_0 = (1, 3, 6, 1, 2, 1, 1, 3, 0)
SNMP_TRAP_OID_0 = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)
LINK_DOWN = (1, 3, 6, 1, 6, 3, 1, 1, 5, 3)
IF_INDEX_17 = (1, 3, 6, 1, 2, 1, 2, 2, 1, 1, 17)
IF_ADMIN_17 = (1, 3, 6, 1, 2, 1, 2, 2, 1, 7, 17)
IF_OPER_17 = (1, 3, 6, 1, 2, 1, 2, 2, 1, 8, 17)
IF_DESCR_17 = (1, 3, 6, 1, 2, 1, 2, 2, 1, 2, 17)

LINK_DOWN_BINDINGS: list[RawVarBind] = [
    (IF_INDEX_17, "Integer32", 17),
    (IF_ADMIN_17, "Integer32", 1),
    (IF_OPER_17, "Integer32", 2),
    (IF_DESCR_17, "OctetString", b"GigabitEthernet1/0/17"),
]


@pytest.fixture(scope="module")
def resolver() -> MibResolver:
    return MibResolver.load(MibConfig(dirs=()))


@pytest.fixture(scope="module")
def norm(resolver: MibResolver) -> Normalizer:
    return Normalizer(resolver)


def v2c(varbinds: list[RawVarBind], kind: Any = "trap", community: str = "public") -> RawNotification:
    return RawNotification(
        version="v2c",
        kind=kind,
        source="192.0.2.10",
        source_port=50123,
        security=Security(community=community),
        varbinds=varbinds,
        received_at=1_764_300_000.25,
        request_id=77,
    )


def v1(
    generic: int,
    specific: int = 0,
    enterprise: tuple[int, ...] = (1, 3, 6, 1, 4, 1, 8072),
    varbinds: list[RawVarBind] | None = None,
) -> RawNotification:
    return RawNotification(
        version="v1",
        kind="trap",
        source="192.0.2.10",
        source_port=50123,
        security=Security(community="s3cret-ro"),
        varbinds=list(LINK_DOWN_BINDINGS if varbinds is None else varbinds),
        received_at=1_764_300_000.25,
        v1_enterprise=enterprise,
        v1_agent_addr="192.0.2.99",
        v1_generic_trap=generic,
        v1_specific_trap=specific,
        v1_timestamp=4242,
    )


def roundtrip(event: Event) -> Event:
    return Event.from_dict(json.loads(json.dumps(event.to_dict())))


# -- v2c / v3 --------------------------------------------------------------------


def test_v2c_link_down(norm: Normalizer) -> None:
    raw = v2c(
        [
            (SYS_UPTIME_0, "TimeTicks", 123456),
            (SNMP_TRAP_OID_0, "ObjectIdentifier", LINK_DOWN),
            *LINK_DOWN_BINDINGS,
            ((1, 3, 6, 1, 4, 1, 99999, 1, 0), "Counter32", 42),
        ]
    )
    ev = norm.normalize(raw, event_id="ev-1")
    assert ev.id == "ev-1"
    assert (ev.source, ev.source_port, ev.version, ev.kind) == ("192.0.2.10", 50123, "v2c", "trap")
    assert ev.security == Security(community="public")
    assert ev.received_at == raw.received_at
    assert ev.uptime == 123456
    assert ev.trap_oid == LINK_DOWN
    assert ev.trap_name == "IF-MIB::linkDown"
    assert [(vb.name, vb.index, vb.display) for vb in ev.varbinds] == [
        ("IF-MIB::ifIndex", (17,), "17"),
        ("IF-MIB::ifAdminStatus", (17,), "up(1)"),
        ("IF-MIB::ifOperStatus", (17,), "down(2)"),
        ("IF-MIB::ifDescr", (17,), "GigabitEthernet1/0/17"),
        ("1.3.6.1.4.1.99999.1.0", (), "42"),
    ]
    assert [vb.oid for vb in ev.varbinds] == [vb[0] for vb in raw.varbinds[2:]]
    assert ev.varbind("ifOperStatus") is ev.varbinds[2]
    assert ev.varbind("IF-MIB::ifDescr").value == b"GigabitEthernet1/0/17"  # type: ignore[union-attr]
    assert ev.varbind("1.3.6.1.4.1.99999.1.0") is ev.varbinds[4]
    assert roundtrip(ev) == ev


def test_inform_and_v3_security_are_kept(norm: Normalizer) -> None:
    raw = v2c(
        [(SYS_UPTIME_0, "TimeTicks", 1), (SNMP_TRAP_OID_0, "ObjectIdentifier", LINK_DOWN)], kind="inform"
    )
    raw.version = "v3"
    raw.security = Security(user="trapuser", level="authPriv", engine_id="8000aa", context_name="")
    ev = norm.normalize(raw)
    assert ev.kind == "inform" and ev.version == "v3"
    assert ev.security.user == "trapuser" and ev.security.level == "authPriv"
    assert ev.varbinds == ()
    assert ev.id  # generated
    assert roundtrip(ev) == ev


def test_missing_uptime_and_trap_oid_keep_the_event(norm: Normalizer) -> None:
    ev = norm.normalize(v2c(list(LINK_DOWN_BINDINGS)))
    assert ev.uptime is None
    assert ev.trap_oid == ()
    assert ev.trap_name == ""
    assert len(ev.varbinds) == 4
    back = roundtrip(ev)
    assert back == ev and back.trap_oid == () and back.trap_name == ""


def test_lifted_wherever_they_are_but_only_with_the_right_type(norm: Normalizer) -> None:
    raw = v2c(
        [
            (IF_INDEX_17, "Integer32", 17),
            (SNMP_TRAP_OID_0, "ObjectIdentifier", LINK_DOWN),
            (SYS_UPTIME_0, "TimeTicks", 99),
            (SYS_UPTIME_0, "TimeTicks", 100),  # a second one is an ordinary binding
        ]
    )
    ev = norm.normalize(raw)
    assert ev.uptime == 99 and ev.trap_oid == LINK_DOWN
    assert [vb.oid for vb in ev.varbinds] == [IF_INDEX_17, SYS_UPTIME_0]
    assert ev.varbinds[1].display == "0:00:01.00"
    # An snmpTrapOID.0 that is not an OID is not a notification OID: it stays a binding.
    bad = norm.normalize(v2c([(SNMP_TRAP_OID_0, "OctetString", b"linkDown")]))
    assert bad.trap_oid == () and bad.varbinds[0].name == "SNMPv2-MIB::snmpTrapOID"
    assert bad.varbinds[0].display == "linkDown"


def test_unknown_trap_oid_is_numeric(norm: Normalizer) -> None:
    oid = (1, 3, 6, 1, 4, 1, 99999, 0, 5)
    ev = norm.normalize(v2c([(SNMP_TRAP_OID_0, "ObjectIdentifier", oid)]))
    assert ev.trap_oid == oid and ev.trap_name == "1.3.6.1.4.1.99999.0.5"


# -- v1, RFC 3584 section 3.1 ----------------------------------------------------------


def test_v1_generic_link_down(norm: Normalizer) -> None:
    ev = norm.normalize(v1(generic=2))
    assert ev.version == "v1"
    assert ev.trap_oid == LINK_DOWN and ev.trap_name == "IF-MIB::linkDown"
    assert ev.uptime == 4242
    # The v1 bindings, then snmpTrapAddress.0, snmpTrapCommunity.0, snmpTrapEnterprise.0.
    assert [vb.oid for vb in ev.varbinds] == [
        IF_INDEX_17,
        IF_ADMIN_17,
        IF_OPER_17,
        IF_DESCR_17,
        SNMP_TRAP_ADDRESS_OID,
        SNMP_TRAP_COMMUNITY_OID,
        SNMP_TRAP_ENTERPRISE_OID,
    ]
    addr, community, enterprise = ev.varbinds[4:]
    assert (addr.name, addr.index, addr.type, addr.value, addr.display) == (
        "SNMP-COMMUNITY-MIB::snmpTrapAddress",
        (0,),
        "IpAddress",
        "192.0.2.99",
        "192.0.2.99",
    )
    assert (community.name, community.type, community.value) == (
        "SNMP-COMMUNITY-MIB::snmpTrapCommunity",
        "OctetString",
        b"s3cret-ro",
    )
    assert (enterprise.name, enterprise.type, enterprise.value) == (
        "SNMPv2-MIB::snmpTrapEnterprise",
        "ObjectIdentifier",
        (1, 3, 6, 1, 4, 1, 8072),
    )
    assert enterprise.display == "NET-SNMP-MIB::netSnmp"
    assert ev.varbind("snmpTrapAddress") is addr
    assert roundtrip(ev) == ev


@pytest.mark.parametrize(
    ("generic", "name"),
    [
        (0, "SNMPv2-MIB::coldStart"),
        (1, "SNMPv2-MIB::warmStart"),
        (2, "IF-MIB::linkDown"),
        (3, "IF-MIB::linkUp"),
        (4, "SNMPv2-MIB::authenticationFailure"),
        (5, "1.3.6.1.6.3.1.1.5.6"),  # egpNeighborLoss: RFC1213's EGP, no SMIv2 name shipped
    ],
)
def test_v1_generic_traps_map_to_snmp_traps(norm: Normalizer, generic: int, name: str) -> None:
    ev = norm.normalize(v1(generic=generic, specific=99))
    assert ev.trap_oid == (1, 3, 6, 1, 6, 3, 1, 1, 5, generic + 1)
    assert ev.trap_name == name
    # snmpTrapEnterprise.0 is appended for generic traps too (RFC 3584 3.1 (4)).
    assert ev.varbinds[-1].oid == SNMP_TRAP_ENTERPRISE_OID


def test_v1_enterprise_specific(norm: Normalizer) -> None:
    ev = norm.normalize(v1(generic=6, specific=7, enterprise=(1, 3, 6, 1, 4, 1, 99998), varbinds=[]))
    assert ev.trap_oid == (1, 3, 6, 1, 4, 1, 99998, 0, 7)
    assert ev.trap_name == "1.3.6.1.4.1.99998.0.7"
    assert [vb.oid for vb in ev.varbinds] == [
        SNMP_TRAP_ADDRESS_OID,
        SNMP_TRAP_COMMUNITY_OID,
        SNMP_TRAP_ENTERPRISE_OID,
    ]
    assert ev.varbinds[2].value == (1, 3, 6, 1, 4, 1, 99998)
    # A TRAP-TYPE that a MIB defines gets its name: ENTITY-MIB's entConfigChange is entityMIBTraps.0.1.
    named = norm.normalize(v1(generic=6, specific=1, enterprise=(1, 3, 6, 1, 2, 1, 47, 2)))
    assert named.trap_name == "ENTITY-MIB::entConfigChange"


def test_v1_bindings_already_present_are_not_appended_twice(norm: Normalizer) -> None:
    own = [(SNMP_TRAP_ADDRESS_OID, "IpAddress", "10.9.9.9"), *LINK_DOWN_BINDINGS]
    ev = norm.normalize(v1(generic=3, varbinds=own))
    oids = [vb.oid for vb in ev.varbinds]
    assert oids.count(SNMP_TRAP_ADDRESS_OID) == 1
    assert ev.varbinds[0].value == "10.9.9.9"  # the sender's own, where it put it
    assert oids[-2:] == [SNMP_TRAP_COMMUNITY_OID, SNMP_TRAP_ENTERPRISE_OID]


def test_v1_generic_out_of_range_is_kept(norm: Normalizer) -> None:
    ev = norm.normalize(v1(generic=9))
    assert ev.trap_oid == () and ev.trap_name == ""
    assert ev.uptime == 4242
    assert len(ev.varbinds) == 7
    assert roundtrip(ev) == ev


# -- display strings --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("oid", "kind", "value", "shown"),
    [
        ((1, 3, 6, 1, 4, 1, 1, 1), "IpAddress", "10.1.2.3", "10.1.2.3"),
        ((1, 3, 6, 1, 4, 1, 1, 1), "OctetString", b"port 7 \xe2\x80\x94 uplink", "port 7 \u2014 uplink"),
        ((1, 3, 6, 1, 4, 1, 1, 1), "OctetString", b"line1\nline2", "line1\nline2"),
        ((1, 3, 6, 1, 4, 1, 1, 1), "OctetString", b"Gi1/0/1\x00\x00", "Gi1/0/1"),
        ((1, 3, 6, 1, 4, 1, 1, 1), "OctetString", b"\x00\x1b\x2c\xff", "00:1b:2c:ff"),
        ((1, 3, 6, 1, 4, 1, 1, 1), "OctetString", b"ab\x07c", "61:62:07:63"),
        ((1, 3, 6, 1, 4, 1, 1, 1), "OctetString", b"", ""),
        ((1, 3, 6, 1, 4, 1, 1, 1), "Opaque", b"\x9f\x78\x04", "9f:78:04"),
        ((1, 3, 6, 1, 4, 1, 1, 1), "TimeTicks", 0, "0:00:00.00"),
        ((1, 3, 6, 1, 4, 1, 1, 1), "TimeTicks", 12345, "0:02:03.45"),
        (
            (1, 3, 6, 1, 4, 1, 1, 1),
            "TimeTicks",
            8_640_000 + 2 * 360_000 + 3 * 6000 + 405,
            "1 day, 2:03:04.05",
        ),
        ((1, 3, 6, 1, 4, 1, 1, 1), "TimeTicks", 3 * 8_640_000, "3 days, 0:00:00.00"),
        ((1, 3, 6, 1, 4, 1, 1, 1), "Counter64", 2**64 - 1, "18446744073709551615"),
        ((1, 3, 6, 1, 4, 1, 1, 1), "Counter32", 4294967295, "4294967295"),
        ((1, 3, 6, 1, 4, 1, 1, 1), "Gauge32", 1000, "1000"),
        ((1, 3, 6, 1, 4, 1, 1, 1), "Integer32", -5, "-5"),
        ((1, 3, 6, 1, 4, 1, 1, 1), "ObjectIdentifier", LINK_DOWN, "IF-MIB::linkDown"),
        ((1, 3, 6, 1, 4, 1, 1, 1), "ObjectIdentifier", IF_INDEX_17, "IF-MIB::ifIndex.17"),
        ((1, 3, 6, 1, 4, 1, 1, 1), "ObjectIdentifier", (1, 3, 6, 1, 4, 1, 424242, 1), "1.3.6.1.4.1.424242.1"),
        ((1, 3, 6, 1, 4, 1, 1, 1), "ObjectIdentifier", (0, 0), "SNMPv2-SMI::zeroDotZero"),
        ((1, 3, 6, 1, 4, 1, 1, 1), "Null", None, ""),
        ((1, 3, 6, 1, 4, 1, 1, 1), "noSuchObject", None, "noSuchObject"),
        ((1, 3, 6, 1, 4, 1, 1, 1), "endOfMibView", None, "endOfMibView"),
        (IF_OPER_17, "Integer32", 7, "lowerLayerDown(7)"),
        (IF_OPER_17, "Integer32", 42, "42"),  # a number the MIB does not name
        (IF_OPER_17, "Counter32", 2, "2"),  # wrong type from the agent: shown as sent
        # MacAddress (DISPLAY-HINT "1x:") on BRIDGE-MIB's FDB address.
        (
            (1, 3, 6, 1, 2, 1, 17, 4, 3, 1, 1, 0, 27, 44, 61, 78, 95),
            "OctetString",
            bytes(range(6)),
            "00:01:02:03:04:05",
        ),
        # DisplayString (255a) falls back to hex when it is not text.
        (IF_DESCR_17, "OctetString", b"\xff\xfe", "ff:fe"),
        # DateAndTime: "2d-1d-1d,1d:1d:1d.1d,1a1d:1d".
        (
            (1, 3, 6, 1, 2, 1, 25, 1, 2, 0),
            "OctetString",
            bytes([0x07, 0xEA, 11, 28, 5, 16, 30, 4, ord("+"), 1, 0]),
            "2026-11-28,5:16:30.4,+1:0",
        ),
        # BITS: ENTITY-STATE-MIB entStateAlarm, bits 2 (critical) and 5 (warning).
        (
            (1, 3, 6, 1, 2, 1, 131, 1, 1, 1, 5, 1),
            "OctetString",
            bytes([0b00100100]),
            "critical(2) warning(5)",
        ),
        ((1, 3, 6, 1, 2, 1, 131, 1, 1, 1, 5, 1), "OctetString", b"\x00", ""),
        # VlanIndex has DISPLAY-HINT "d".
        ((1, 3, 6, 1, 2, 1, 17, 7, 1, 4, 5, 1, 1, 3), "Gauge32", 20, "20"),
    ],
)
def test_display_strings(norm: Normalizer, oid: tuple[int, ...], kind: Any, value: Any, shown: str) -> None:
    ev = norm.normalize(v2c([(oid, kind, value)]))
    vb = ev.varbinds[0]
    assert vb.display == shown
    assert vb.value == value and vb.type == kind
    assert roundtrip(ev) == ev


def test_octet_string_hints() -> None:
    assert disp.hinted_octets("1x:", b"\x00\x1b\xff") == "00:1b:ff"
    assert disp.hinted_octets("1d.1d.1d.1d", b"\x0a\x00\x00\x01") == "10.0.0.1"
    assert disp.hinted_octets("255a", b"abc") == "abc"
    assert disp.hinted_octets("2x ", b"\x01\x02\x03\x04\x05") == "0102 0304 05"
    # '*': the first octet counts the repetitions; then the terminator.
    assert disp.hinted_octets("*1d./1x", b"\x02\x0a\x0b\xff") == "10.11/ff"
    assert disp.hinted_octets("1o", b"\x08") == "10"
    assert disp.hinted_octets("", b"x") is None
    assert disp.hinted_octets("1q", b"x") is None
    assert disp.hinted_octets("x", b"x") is None


def test_integer_hints() -> None:
    assert disp.hinted_integer("d-2", 1234) == "12.34"
    assert disp.hinted_integer("d-2", 5) == "0.05"
    assert disp.hinted_integer("d-1", -15) == "-1.5"
    assert disp.hinted_integer("d-0", 7) == "7"
    assert disp.hinted_integer("d", 7) == "7"
    assert disp.hinted_integer("x", 255) == "ff"
    assert disp.hinted_integer("o", 8) == "10"
    assert disp.hinted_integer("b", 5) == "101"
    assert disp.hinted_integer("q", 5) is None


def test_integer_hint_from_a_mib(resolver: MibResolver) -> None:
    # L2TP-MIB's L2tpMilliSeconds has DISPLAY-HINT "d-3".
    syntax = resolver.tc("L2tpMilliSeconds")
    assert syntax is not None and syntax.hint == "d-3"
    assert disp.display("Integer32", 1500, syntax, resolver) == "1.500"


# -- the fast construction gives the very same objects ------------------------------


def test_built_objects_equal_ordinary_ones(norm: Normalizer) -> None:
    ev = norm.normalize(v2c([(SNMP_TRAP_OID_0, "ObjectIdentifier", LINK_DOWN), *LINK_DOWN_BINDINGS]), "x1")
    plain = Event(
        id="x1",
        received_at=ev.received_at,
        source=ev.source,
        source_port=ev.source_port,
        version=ev.version,
        kind=ev.kind,
        security=ev.security,
        uptime=None,
        trap_oid=LINK_DOWN,
        trap_name="IF-MIB::linkDown",
        varbinds=tuple(
            VarBind(vb.oid, vb.name, vb.index, vb.type, vb.value, vb.display) for vb in ev.varbinds
        ),
    )
    assert ev == plain
    assert hash(ev.varbinds[0]) == hash(plain.varbinds[0])
    assert ev.varbind("ifIndex") == plain.varbind("ifIndex")
    with pytest.raises(AttributeError):
        ev.varbinds[0].name = "changed"  # type: ignore[misc]


def test_built_objects_are_their_real_classes(norm: Normalizer) -> None:
    """The unfrozen twins are only scaffolding: what comes out is an Event of VarBinds, frozen."""
    ev = norm.normalize(v2c([(SNMP_TRAP_OID_0, "ObjectIdentifier", LINK_DOWN), *LINK_DOWN_BINDINGS]))
    assert type(ev) is Event and all(type(vb) is VarBind for vb in ev.varbinds)
    assert ev._by_symbol is None  # built on the first name lookup
    with pytest.raises(AttributeError):
        ev.source = "elsewhere"  # type: ignore[misc]
    assert Event.from_dict(ev.to_dict()) == ev


def test_repeated_varbinds_are_shared_clocks_and_counters_are_not(resolver: MibResolver) -> None:
    norm = Normalizer(resolver)
    sent: list[RawVarBind] = [
        (SNMP_TRAP_OID_0, "ObjectIdentifier", LINK_DOWN),
        *LINK_DOWN_BINDINGS,
        ((1, 3, 6, 1, 2, 1, 2, 2, 1, 10, 3), "Counter32", 1234),
        ((1, 3, 6, 1, 4, 1, 99, 1), "TimeTicks", 99),
    ]
    first, second = norm.normalize(v2c(sent), "e1"), norm.normalize(v2c(list(sent)), "e1")
    assert first == second and first.varbinds == Normalizer(resolver).normalize(v2c(sent)).varbinds
    kinds = {vb.type: (a is vb) for a, vb in zip(first.varbinds, second.varbinds, strict=True)}
    assert kinds["Integer32"] and kinds["OctetString"]  # remembered: the same immutable VarBind
    assert not kinds["Counter32"] and not kinds["TimeTicks"]  # values that never repeat: built anew
    # The names come from the normalizer's resolver, as for a fresh one.
    assert [vb.name for vb in second.varbinds][:2] == ["IF-MIB::ifIndex", "IF-MIB::ifAdminStatus"]


def test_remembered_varbinds_are_bounded(resolver: MibResolver) -> None:
    from trapd import normalize

    norm = Normalizer(resolver)
    for i in range(normalize._KNOWN_SIZE + 100):
        norm.normalize(v2c([((1, 3, 6, 1, 2, 1, 2, 2, 1, 1, i), "Integer32", i)]))
        assert len(norm._known) <= normalize._KNOWN_SIZE


# -- with real net-snmp senders ------------------------------------------------------


def _sent_by_snmptrap(options: list[str], args: list[str]) -> tuple[bytes, tuple[str, int]]:
    """Run net-snmp's snmptrap at a loopback socket of ours and return the datagram."""
    import shutil
    import socket
    import subprocess

    if shutil.which("snmptrap") is None:
        pytest.skip("net-snmp snmptrap not installed")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(10)
        port = sock.getsockname()[1]
        subprocess.run(
            ["snmptrap", "-m", "", "-M", "/nonexistent", *options, f"127.0.0.1:{port}", *args],
            check=True,
            timeout=10,
            capture_output=True,
        )
        data, addr = sock.recvfrom(65535)
    return data, addr


def _raw_from_datagram(data: bytes, addr: tuple[str, int]) -> RawNotification:
    from trapd.listener import fastpath

    msg = fastpath.decode(data)
    return RawNotification(
        version=msg.version,
        kind="inform" if msg.pdu == "inform" else "trap",
        source=addr[0],
        source_port=addr[1],
        security=Security(community=msg.community.decode("utf-8", "backslashreplace")),
        varbinds=msg.varbinds,
        received_at=1.0,
        request_id=msg.request_id,
        v1_enterprise=msg.v1_enterprise,
        v1_agent_addr=msg.v1_agent_addr,
        v1_generic_trap=msg.v1_generic_trap,
        v1_specific_trap=msg.v1_specific_trap,
        v1_timestamp=msg.v1_timestamp,
    )


@pytest.mark.integration
def test_real_v1_generic_link_down(norm: Normalizer) -> None:
    data, addr = _sent_by_snmptrap(
        ["-v", "1", "-c", "public"], ["1.3.6.1.4.1.8072", "192.0.2.7", "2", "0", "4242",
         "1.3.6.1.2.1.2.2.1.1.17", "i", "17", "1.3.6.1.2.1.2.2.1.8.17", "i", "2"]
    )  # fmt: skip
    ev = norm.normalize(_raw_from_datagram(data, addr))
    assert (ev.version, ev.trap_name, ev.uptime) == ("v1", "IF-MIB::linkDown", 4242)
    assert [(vb.name, vb.index_str, vb.display) for vb in ev.varbinds] == [
        ("IF-MIB::ifIndex", "17", "17"),
        ("IF-MIB::ifOperStatus", "17", "down(2)"),
        ("SNMP-COMMUNITY-MIB::snmpTrapAddress", "0", "192.0.2.7"),
        ("SNMP-COMMUNITY-MIB::snmpTrapCommunity", "0", "public"),
        ("SNMPv2-MIB::snmpTrapEnterprise", "0", "NET-SNMP-MIB::netSnmp"),
    ]


@pytest.mark.integration
def test_real_v1_enterprise_specific_and_v2c(norm: Normalizer) -> None:
    data, addr = _sent_by_snmptrap(
        ["-v", "1", "-c", "public"], ["1.3.6.1.4.1.99998", "192.0.2.7", "6", "7", "100",
         "1.3.6.1.4.1.99998.1.1.0", "s", "Gi1/0/7"]
    )  # fmt: skip
    ev = norm.normalize(_raw_from_datagram(data, addr))
    assert ev.trap_oid == (1, 3, 6, 1, 4, 1, 99998, 0, 7)
    assert ev.varbinds[0].display == "Gi1/0/7" and ev.varbinds[0].name == "1.3.6.1.4.1.99998.1.1.0"
    data, addr = _sent_by_snmptrap(
        ["-v", "2c", "-c", "public"], ["555", "1.3.6.1.6.3.1.1.5.4",
         "1.3.6.1.2.1.2.2.1.1.3", "i", "3", "1.3.6.1.2.1.2.2.1.6.3", "x", "001B2C3D4E5F"]
    )  # fmt: skip
    ev2 = norm.normalize(_raw_from_datagram(data, addr))
    assert (ev2.version, ev2.trap_name, ev2.uptime) == ("v2c", "IF-MIB::linkUp", 555)
    assert [(vb.name, vb.display) for vb in ev2.varbinds] == [
        ("IF-MIB::ifIndex", "3"),
        ("IF-MIB::ifPhysAddress", "00:1b:2c:3d:4e:5f"),
    ]
    assert roundtrip(ev2) == ev2
