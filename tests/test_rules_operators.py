"""Each match operator, with its edge cases, against events built with the real MIB resolver."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from rules_support import event, ruleset, with_varbind

from trapd.event import Event, VarBind
from trapd.rules import RuleSet

_n = itertools.count()


def rules_for(tmp_path: Path, match: str, sources: str = "") -> RuleSet:
    text = (
        f"sources: {sources}\n" if sources else ""
    ) + f"rules:\n  - name: r\n    match: {match}\n    cancel: x\n"
    return ruleset(tmp_path, text, name=f"r{next(_n)}.yaml")


def hit(tmp_path: Path, match: str, ev: Event, sources: str = "") -> bool:
    rs = rules_for(tmp_path, match, sources)
    out = rs.evaluate(ev)
    traces = rs.explain(ev)
    # evaluate (indexed, fast path) and explain (every rule, with reasons) must agree
    assert (out.matched == ("r",)) == (traces[0].status == "matched")
    return out.matched == ("r",)


LINKDOWN = "IF-MIB::linkDown from 10.20.1.5 ifIndex=17 ifDescr=Gi1/0/17 ifOperStatus=down ifAdminStatus=up"


# ---------------------------------------------------------------- notification


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("{notification: IF-MIB::linkDown}", True),
        ("{notification: linkDown}", True),
        ("{notification: '1.3.6.1.6.3.1.1.5.3'}", True),
        ("{notification: '.1.3.6.1.6.3.1.1.5.3'}", True),
        ("{notification: [linkUp, linkDown]}", True),
        ("{notification: linkUp}", False),
        ("{notification: {under: snmpTraps}}", True),
        ("{notification: {under: '1.3.6.1.6.3.1.1'}}", True),
        ("{notification: {under: '1.3.6.1.6.3.1.1.5.4'}}", False),
        ("{notification: [{under: CISCO-MAC-NOTIFICATION-MIB}, coldStart]}", False),
        # A module is its MODULE-IDENTITY subtree plus the notifications it defines
        # (docs/rules.md): linkDown is IF-MIB's, though it sits under SNMPv2-MIB's snmpTraps.
        ("{notification: {under: IF-MIB}}", True),
        ("{notification: {under: SNMPv2-MIB}}", True),
        ("{notification: {under: BRIDGE-MIB}}", False),
    ],
)
def test_notification(tmp_path: Path, spec: str, expected: bool) -> None:
    assert hit(tmp_path, spec, event(LINKDOWN)) is expected


def test_notification_under_vendor_module(tmp_path: Path) -> None:
    ev = event("CISCO-MAC-NOTIFICATION-MIB::cmnMacChangedNotification from 10.0.0.1")
    assert hit(tmp_path, "{notification: {under: CISCO-MAC-NOTIFICATION-MIB}}", ev)
    assert not hit(tmp_path, "{notification: {under: IF-MIB}}", ev)
    assert not hit(tmp_path, "{notification: {under: BRIDGE-MIB}}", event(LINKDOWN))


# ---------------------------------------------------------------- source


SOURCES = (
    "{access: [10.20.0.0/16, 10.21.0.5], v6: ['2001:db8::/32'], mixed: [10.0.0.0/8, '!10.9.0.0/16'],"
    " not-lab: ['!10.9.99.0/24'], both: [mixed, not-lab]}"
)


@pytest.mark.parametrize(
    ("source", "spec", "expected"),
    [
        ("10.20.1.5", "access", True),
        ("10.21.0.5", "access", True),
        ("10.21.0.6", "access", False),
        ("10.20.1.5", "[access, '!10.20.1.0/24']", False),
        ("10.20.2.5", "[access, '!10.20.1.0/24']", True),
        ("10.9.1.1", "mixed", False),
        ("10.8.1.1", "mixed", True),
        ("10.8.1.1", "'!mixed'", False),  # a group with exclusions cannot be negated in a list: see below
        ("192.168.1.1", "['!access']", True),
        ("10.20.1.1", "['!access']", False),
        ("10.20.1.1", "{not: access}", False),
        ("10.30.1.1", "{not: access}", True),
        ("2001:db8::5", "v6", True),
        ("2001:db9::5", "v6", False),
        ("2001:db8::5", "access", False),
        ("::ffff:10.20.1.5", "access", True),  # IPv4-mapped IPv6 counts as the IPv4 address
        # ... and so does an entry written that way (as trapd listen shows a dual-stack sender)
        ("::ffff:10.20.1.5", "'::ffff:10.20.1.5'", True),
        ("10.20.1.5", "'::FFFF:10.20.1.5'", True),
        ("10.20.1.5", "'::ffff:10.20.0.0/112'", True),
        ("10.21.1.5", "'::ffff:10.20.0.0/112'", False),
        ("10.20.1.5", "['10.20.0.0/16', '!::ffff:10.20.1.5']", False),
        ("10.20.1.5", "10.20.1.5", True),
        ("10.20.1.6", "10.20.1.5/32", False),
        # a group with exclusions beside another entry: the group's "!" is the group's own, it does
        # not take away what the other entry adds ("in some positive entry and in no excluded one")
        ("10.9.1.1", "[mixed, 10.9.1.1]", True),
        ("10.9.1.2", "[mixed, 10.9.1.1]", False),
        ("10.8.1.1", "[mixed, 10.9.1.1]", True),
        ("10.9.1.1", "[mixed, 10.9.0.0/16, '!10.9.1.1']", False),  # the list's own "!" still applies
        ("10.9.1.2", "[mixed, 10.9.0.0/16, '!10.9.1.1']", True),
        ("10.9.1.1", "[mixed, not-lab]", True),  # two groups with exclusions: either one
        ("10.99.1.1", "[mixed, not-lab]", True),
        ("10.20.99.1", "[mixed, not-lab]", True),
        ("10.9.99.1", "[mixed, not-lab]", False),  # excluded by both
        ("10.9.1.1", "[both]", True),  # the same through a group defined that way
        ("10.9.99.1", "both", False),
    ],
)
def test_source(tmp_path: Path, source: str, spec: str, expected: bool) -> None:
    if spec == "'!mixed'":
        from rules_support import errors_of

        got = errors_of(
            tmp_path, f"sources: {SOURCES}\nrules:\n  - {{name: r, match: {{source: {spec}}}, cancel: x}}\n"
        )
        assert got and "cannot be negated" in got[0]
        return
    ev = event(LINKDOWN.replace("10.20.1.5", f"[{source}]:162" if ":" in source else source))
    assert hit(tmp_path, f"{{source: {spec}}}", ev, SOURCES) is expected


def test_group_of(tmp_path: Path) -> None:
    rs = rules_for(tmp_path, "{version: v2c}", SOURCES)
    assert rs.group_of("10.20.3.3") == "access"
    assert rs.group_of("10.9.99.1") is None  # in no group (not-lab is all but 10.9.99.0/24)
    assert rs.group_of("10.8.0.1") == "mixed"
    assert rs.group_of("2001:db8::1") == "v6"
    assert rs.group_of("not an address") is None
    assert set(rs.source_groups) == {"access", "v6", "mixed", "not-lab", "both"}


# ---------------------------------------------------------------- version / community / user


def test_version_community_user(tmp_path: Path) -> None:
    v2 = event(LINKDOWN + " community=access-ro")
    v3 = event(LINKDOWN + " version=v3 user=netops")
    assert hit(tmp_path, "{version: v2c}", v2)
    assert not hit(tmp_path, "{version: v2c}", v3)
    assert hit(tmp_path, "{version: [v2c, v3]}", v3)
    assert hit(tmp_path, "{version: 3}", v3)
    assert hit(tmp_path, "{community: access-ro}", v2)
    assert not hit(tmp_path, "{community: access-ro}", v3)  # v3 has no community: never matches
    assert hit(tmp_path, "{community: {regex: 'access-.*'}}", v2)
    assert hit(tmp_path, "{user: [netops, other]}", v3)
    assert not hit(tmp_path, "{user: netops}", v2)
    assert hit(tmp_path, "{kind: trap}", v2)
    assert not hit(tmp_path, "{kind: inform}", v2)


@pytest.mark.parametrize(
    ("spec", "words", "expected"),
    [
        ("{community: '0123'}", "community=0123", True),
        ("{community: '0123'}", "community=123", False),
        ("{community: 123}", "community=0123", False),
        ("{community: 123}", "community=123", True),
        ("{community: [7, x]}", "community=07", False),
        ("{community: {ne: '123'}}", "community=0123", True),
        ("{varbinds: {ifAlias: '007'}}", "ifAlias.17=7", False),
        ("{varbinds: {ifAlias: '007'}}", "ifAlias.17=007", True),
        ("{varbinds: {ifAlias: 7}}", "ifAlias.17=+7", False),
        ("{varbinds: {ifAlias: [7, 8]}}", "ifAlias.17=7", True),
        ("{varbinds: {ifIndex: '017'}}", "ifIndex=17", True),  # a number compares as a number
    ],
)
def test_text_that_looks_like_a_number_compares_as_text(
    tmp_path: Path, spec: str, words: str, expected: bool
) -> None:
    """A community or an OCTET STRING compares by its text, exactly (docs/rules.md): "0123" in a
    rule is not 123, which matched the communities "123" and " +123 "."""
    assert hit(tmp_path, spec, event(f"{LINKDOWN} {words}")) is expected


# ---------------------------------------------------------------- varbinds


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("{ifOperStatus: down}", True),  # enum name
        ("{ifOperStatus: 2}", True),  # enum number
        ("{ifOperStatus: '2'}", True),
        ("{ifOperStatus: up}", False),
        ("{ifOperStatus: {equals: down}}", True),
        ("{ifOperStatus: {eq: 2}}", True),
        ("{ifOperStatus: {not-equals: up}}", True),
        ("{ifOperStatus: {ne: down}}", False),
        ("{ifOperStatus: [up, down]}", True),
        ("{ifOperStatus: {one-of: [up, testing]}}", False),
        ("{ifOperStatus: {in: [1, 2]}}", True),
        ("{ifDescr: Gi1/0/17}", True),
        ("{ifDescr: gi1/0/17}", False),  # text comparison is exact
        ("{ifDescr: {regex: 'Gi\\d+/0/\\d+'}}", True),
        ("{ifDescr: {regex: 'Gi1/0/1'}}", False),  # full match, not search
        ("{ifDescr: {regex: '(?i)gi1/0/17'}}", True),
        ("{ifIndex: {gt: 16}}", True),
        ("{ifIndex: {gt: 17}}", False),
        ("{ifIndex: {ge: 17}}", True),
        ("{ifIndex: {lt: 17}}", False),
        ("{ifIndex: {le: 17}}", True),
        ("{ifIndex: {range: [10, 20]}}", True),
        ("{ifIndex: {range: [17, 17]}}", True),
        ("{ifIndex: {range: [18, 1000]}}", False),
        ("{ifIndex: {gt: 10, lt: 20}}", True),
        ("{ifOperStatus: {gt: up}}", True),  # enum names work as numbers in comparisons
        ("{ifDescr: {gt: 3}}", False),  # not a number: never true
        ("{ifAlias: {exists: false}}", True),
        ("{ifAlias: {absent: true}}", True),
        ("{ifDescr: {exists: true}}", True),
        ("{ifDescr: {absent: true}}", False),
        ("{ifAlias: {exists: true}}", False),
        ("{ifAlias: {ne: x}}", False),  # a missing varbind fails every value test
        ("{ifIndex.17: 17}", True),  # a specific instance
        ("{ifIndex.18: 17}", False),
        ("{ifOperStatus.17: down}", True),
        ("{IF-MIB::ifOperStatus: down}", True),
        ("{'1.3.6.1.2.1.2.2.1.8': 2}", True),  # numeric OID of the column
        ("{'1.3.6.1.2.1.2.2.1.8.17': 2}", True),
        ("{ifOperStatus: {index: 17}}", True),  # the captured index
        ("{ifOperStatus: {index: {gt: 100}}}", False),
        ("{ifOperStatus: {index: {range: [1, 48]}, equals: down}}", True),
        ("{ifDescr: {not: {regex: 'Po.*'}}}", True),
        ("{ifDescr: {not: [Gi1/0/17, Gi1/0/18]}}", False),
    ],
)
def test_varbind_operators(tmp_path: Path, spec: str, expected: bool) -> None:
    assert hit(tmp_path, f"{{varbinds: {spec}}}", event(LINKDOWN)) is expected


def _ip_vb(value: str | bytes) -> VarBind:
    if isinstance(value, str):
        return VarBind((1, 3, 6, 1, 4, 1, 99, 1, 0), "1.3.6.1.4.1.99.1.0", (), "IpAddress", value, value)
    return VarBind((1, 3, 6, 1, 4, 1, 99, 2, 0), "1.3.6.1.4.1.99.2.0", (), "OctetString", value, value.hex())


@pytest.mark.parametrize(
    ("vb", "key", "spec", "expected"),
    [
        (_ip_vb("10.1.2.3"), "1.3.6.1.4.1.99.1", "{cidr: 10.0.0.0/8}", True),
        (_ip_vb("10.1.2.3"), "1.3.6.1.4.1.99.1", "{cidr: [10.0.0.0/8, '!10.1.0.0/16']}", False),
        (_ip_vb("10.1.2.3"), "1.3.6.1.4.1.99.1", "{cidr: access}", False),
        (_ip_vb(bytes([10, 20, 0, 9])), "1.3.6.1.4.1.99.2", "{cidr: access}", True),  # InetAddress, 4 octets
        (
            _ip_vb(bytes.fromhex("20010db8000000000000000000000001")),
            "1.3.6.1.4.1.99.2",
            "{cidr: '2001:db8::/32'}",
            True,
        ),
        (
            _ip_vb(bytes.fromhex("20010db9000000000000000000000001")),
            "1.3.6.1.4.1.99.2",
            "{cidr: '2001:db8::/32'}",
            False,
        ),
        (_ip_vb(b"2001:db8::7"), "1.3.6.1.4.1.99.2", "{cidr: '2001:db8::/64'}", True),  # address as text
        (_ip_vb(b"garbage"), "1.3.6.1.4.1.99.2", "{cidr: '0.0.0.0/0'}", False),
        (_ip_vb(bytes(range(5))), "1.3.6.1.4.1.99.2", "{cidr: '0.0.0.0/0'}", False),
    ],
)
def test_cidr_contains(tmp_path: Path, vb: VarBind, key: str, spec: str, expected: bool) -> None:
    ev = with_varbind(event(LINKDOWN), vb)
    assert hit(tmp_path, f"{{varbinds: {{'{key}': {spec}}}}}", ev, "{access: [10.20.0.0/16]}") is expected


# ---------------------------------------------------------------- all / any / not


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("{all: [{notification: linkDown}, {source: 10.0.0.0/8}]}", True),
        ("{all: [{notification: linkDown}, {source: 192.168.0.0/16}]}", False),
        ("{any: [{notification: linkUp}, {source: 10.0.0.0/8}]}", True),
        ("{any: [{notification: linkUp}, {source: 192.168.0.0/16}]}", False),
        ("{not: {notification: linkUp}}", True),
        ("{not: {notification: linkDown, source: 10.0.0.0/8}}", False),  # not (A and B)
        ("{not: {notification: linkDown, source: 192.168.0.0/8}}", True),
        (
            "{notification: linkDown, any: [{varbinds: {ifOperStatus: up}}, "
            "{all: [{varbinds: {ifIndex: {gt: 10}}}, {not: {varbinds: {ifDescr: {regex: 'Po.*'}}}}]}]}",
            True,
        ),
        ("{any: [{not: {version: v2c}}, {varbinds: {ifAlias: {exists: true}}}]}", False),
    ],
)
def test_boolean_combinations(tmp_path: Path, spec: str, expected: bool) -> None:
    assert hit(tmp_path, spec, event(LINKDOWN)) is expected


def test_no_match_conditions_matches_everything(tmp_path: Path) -> None:
    assert hit(tmp_path, "{}", event(LINKDOWN))
    assert hit(tmp_path, "{}", event("coldStart from 10.0.0.1"))


def test_notification_under_an_smiv1_module_means_its_traps(tmp_path: Path) -> None:
    # RFC1271-MIB has no MODULE-IDENTITY: under it are exactly the traps it defines (RFC 3584 OIDs).
    rising = event("1.3.6.1.2.1.16.0.1 from 10.0.0.1")
    assert hit(tmp_path, "{notification: {under: RFC1271-MIB}}", rising)
    assert not hit(tmp_path, "{notification: {under: RFC1271-MIB}}", event(LINKDOWN))


ARP = "IF-MIB::linkDown from 10.20.1.5 ipNetToMediaPhysAddress.{suffix}=0x001122334455"


@pytest.mark.parametrize(
    ("spec", "suffix", "expected"),
    [
        ("{ipNetToMediaNetAddress: {cidr: 10.0.0.0/8}}", "17.10.0.0.1", True),
        ("{ipNetToMediaNetAddress: {cidr: 10.0.0.0/8}}", "17.192.0.2.1", False),
        ("{ipNetToMediaIfIndex: {range: [1, 48]}, ipNetToMediaNetAddress: 10.0.0.1}", "17.10.0.0.1", True),
        ("{IP-MIB::ipNetToMediaIfIndex: 18}", "17.10.0.0.1", False),
        # Undecodable (a sub-identifier left over, an octet above 255): no condition on it holds.
        ("{ipNetToMediaIfIndex: 17}", "17.10.0.0.1.9", False),
        ("{ipNetToMediaIfIndex: {not: 18}}", "17.10.0.256.1", False),
        # The operators on the whole index are still there.
        ("{regex: '17\\.10\\..*'}", "17.10.0.0.1", True),
    ],
)
def test_index_objects_by_name(tmp_path: Path, spec: str, suffix: str, expected: bool) -> None:
    """``index: {OBJECT: condition}``: a condition on one INDEX object of the varbind's table,
    decoded from the suffix by the INDEX clause (an IpAddress index is four arcs, not text)."""
    match = f"{{varbinds: {{ipNetToMediaPhysAddress: {{index: {spec}}}}}}}"
    assert hit(tmp_path, match, event(ARP.format(suffix=suffix))) is expected


def test_index_objects_by_name_explained_and_checked(tmp_path: Path) -> None:
    from rules_support import errors_of

    rs = rules_for(tmp_path, "{varbinds: {ipNetToMediaPhysAddress: {index: {ipNetToMediaIfIndex: 18}}}}")
    [trace] = rs.explain(event(ARP.format(suffix="17.10.0.0.1")))
    assert "index ipNetToMediaIfIndex" in (trace.reason or ""), trace.reason
    [trace] = rs.explain(event(ARP.format(suffix="17.10.0.0")))
    assert "undecodable index: ipNetToMediaNetAddress is not four octets" in (trace.reason or ""), (
        trace.reason
    )
    text = "rules:\n  - name: r\n    match: {varbinds: {ipNetToMediaPhysAddress: {index: {ifIndex: 1}}}}\n"
    problems = errors_of(tmp_path, text)
    assert any(
        "'ifIndex' is neither an operator nor an INDEX object of its table "
        "(ipNetToMediaIfIndex, ipNetToMediaNetAddress)" in p
        for p in problems
    ), problems


def test_a_regex_nested_too_deep_is_an_error_at_its_place(tmp_path: Path) -> None:
    """re.compile parses groups recursively: 1,000 nested groups ended trapd check in a
    RecursionError traceback, and a reload with it failed naming no file."""
    from rules_support import errors_of

    deep = "(" * 1000 + "a" + ")" * 1000
    text = f"""
        rules:
          - name: r
            match: {{notification: linkDown, varbinds: {{ifDescr: {{regex: '{deep}'}}}}}}
            cancel: x
        """
    (line,) = errors_of(tmp_path, text)
    assert line.startswith("3:65: error: ifDescr: bad regex: nested too deep"), line[:200]
