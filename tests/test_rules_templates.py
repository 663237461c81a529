"""Template rendering, filters and typed validation: bad trap data never reaches an action."""

from __future__ import annotations

from pathlib import Path

import pytest
from rules_support import event, ruleset, with_varbind

from trapd.event import VarBind
from trapd.rules import Outcome
from trapd.rules.templates import FilterError, hex_filter, int_filter, ip_filter, mac_filter

LINKDOWN = "IF-MIB::linkDown from 10.20.1.5 ifIndex=17 ifDescr=Gi1/0/17 ifOperStatus=down community=sw-ro"
SOURCES = "sources: {access: [10.20.0.0/16]}\n"


def run(
    tmp_path: Path, action: str, ev_words: str = LINKDOWN, match: str = "{notification: linkDown}"
) -> Outcome:
    text = f"""{SOURCES}defaults:
  cap: {{limit: 100, per: 1m}}
rules:
  - name: r
    match: {match}
    actions:
{action}
"""
    return ruleset(tmp_path, text).evaluate(event(ev_words))


def message(
    tmp_path: Path, template: str, ev_words: str = LINKDOWN, match: str = "{notification: linkDown}"
) -> str:
    out = run(tmp_path, f"      - action: log\n        message: '{template}'", ev_words, match)
    assert not out.rejected, out.rejected
    return str(out.planned[0].params["message"])


@pytest.mark.parametrize(
    ("template", "expected"),
    [
        ("{{ ifIndex }}", "17"),
        ("{{ ifIndex + 1 }}", "18"),  # a number, not text
        ("{{ ifDescr }}", "Gi1/0/17"),
        ("{{ index.ifIndex }}", "17"),
        ("{{ index.ifDescr }}", "17"),
        ("{{ ifOperStatus }}", "2"),
        ("{{ varbinds.ifOperStatus.display }}", "down(2)"),
        ("{{ varbinds.ifDescr.oid }}", "1.3.6.1.2.1.2.2.1.2.17"),
        ("{{ varbinds.ifDescr.parts }}", "[17]"),
        ('{{ varbinds["IF-MIB::ifDescr"].value }}', "Gi1/0/17"),
        ("{{ source }}:{{ source_port }} {{ version }} {{ kind }}", "10.20.1.5:162 v2c trap"),
        ("{{ trap_name }} {{ trap_oid }}", "IF-MIB::linkDown 1.3.6.1.6.3.1.1.5.3"),
        ("{{ community }} {{ source_group }} {{ rule }}", "sw-ro access r"),
        ("{{ ifDescr | hex }}", "4769312f302f3137"),
        ('{{ ifDescr | hex(":") }}', "47:69:31:2f:30:2f:31:37"),
        ("{{ ifIndex | hex }}", "11"),
        ('{{ "0x1f" | int }}', "31"),
        ('{{ "0011.2233.4455" | mac }}', "00:11:22:33:44:55"),
        ('{{ "00-11-22-33-44-55" | mac }}', "00:11:22:33:44:55"),
        ('{{ "001122334455" | mac }}', "00:11:22:33:44:55"),
        ('{{ "10.000.0.1" | ip if false else "::FFFF:1.2.3.4" | ip }}', "::ffff:102:304"),
        ("{{ ifDescr | lower }}", "gi1/0/17"),  # Jinja's own filters stay available
    ],
)
def test_rendering(tmp_path: Path, template: str, expected: str) -> None:
    assert message(tmp_path, template) == expected


def test_regex_captures_are_variables(tmp_path: Path) -> None:
    match = "{notification: linkDown, varbinds: {ifDescr: {regex: 'Gi(?P<slot>\\d+)/0/(?P<port>\\d+)'}}}"
    assert message(tmp_path, "slot {{ slot }} port {{ groups.port }}", match=match) == "slot 1 port 17"


def test_raw_octets_through_mac_and_ip_filters(tmp_path: Path) -> None:
    mac = VarBind(
        (1, 3, 6, 1, 2, 1, 17, 4, 3, 1, 1, 1),
        "BRIDGE-MIB::dot1dTpFdbAddress",
        (1,),
        "OctetString",
        bytes.fromhex("0011223344aa"),
        "0:11:22:33:44:aa",
    )
    ev = with_varbind(event(LINKDOWN), mac)
    text = """defaults: {cap: {limit: 9, per: 1m}}
rules:
  - name: r
    match: {notification: linkDown}
    actions:
      - action: kea.lease-del
        hw-address: "{{ dot1dTpFdbAddress | mac }}"
      - action: kea.lease-del
        hw-address: "{{ dot1dTpFdbAddress }}"
"""
    out = ruleset(tmp_path, text).evaluate(ev)
    assert [p.params["hw-address"] for p in out.planned] == ["00:11:22:33:44:aa", "00:11:22:33:44:aa"]


@pytest.mark.parametrize(
    ("param", "value", "reason"),
    [
        ("ip-address", "{{ ifAlias }}", "ip-address: not an IP address: '1.2.3.4; reboot'"),
        ("ip-address", "{{ ifAlias | ip }}", "template: ip filter: not an IP address: '1.2.3.4; reboot'"),
        ("hw-address", "{{ physAddr }}", "hw-address: not a MAC address"),
        ("hw-address", "{{ physAddr | mac }}", "template: mac filter: a MAC address is 6 octets, got 7"),
        ("hw-address", "{{ ifAlias | mac }}", "template: mac filter: not a MAC address: '1.2.3.4; reboot'"),
        ("subnet-id", "{{ ifAlias | int }}", "template: int filter: not an integer: '1.2.3.4; reboot'"),
        ("subnet-id", "{{ ifIndex - 17 }}", "subnet-id: 0 is below the minimum 1"),
        ("circuit-id", "{{ ifName }}", "template: 'ifName' is undefined"),
        ("circuit-id", "{{ user }}", "template: 'user' is undefined"),
        # A Python internal named in the template is refused by trapd check; one built at render
        # time is refused by the sandbox then.
        (
            "circuit-id",
            "{{ ifDescr | attr('__cl' ~ 'ass__') }}",
            "template: access to attribute '__class__' of 'OctetText' object is unsafe.",
        ),
        ("circuit-id", "{{ ifDescr * 200 }}", "circuit-id: text longer than 1024 characters"),
        ("circuit-id", "{{ ifDescr * (ifIndex * 10**8) }}", "template: template builds more than 4096 items"),
        ("circuit-id", "{{ 2 ** (ifIndex * 1000000) }}", "template: exponent above 256"),
        # A filter given a value of the wrong kind raised AttributeError: the whole event was lost.
        ("circuit-id", "{{ ifDescr | dictsort }}", "template: dictsort filter: 'OctetText' object has no"),
        ("circuit-id", "{{ ifDescr | xmlattr }}", "template: xmlattr filter: 'OctetText' object has no"),
        # Jinja checks some filter arguments with assert: an AssertionError lost the whole event.
        (
            "circuit-id",
            "{{ ifDescr | truncate(ifIndex - 16) }}",
            "template: truncate filter: expected length >= 3, got 1",
        ),
    ],
)
def test_bad_values_are_rejected_never_planned(tmp_path: Path, param: str, value: str, reason: str) -> None:
    hostile = VarBind(
        (1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 18, 17),
        "IF-MIB::ifAlias",
        (17,),
        "OctetString",
        b"1.2.3.4; reboot",
        "1.2.3.4; reboot",
    )
    seven = VarBind(
        (1, 3, 6, 1, 2, 1, 2, 2, 1, 6, 17),
        "IF-MIB::ifPhysAddress",
        (17,),
        "OctetString",
        bytes(range(1, 8)),
        "01:02:03:04:05:06:07",
    )
    ev = with_varbind(with_varbind(event(LINKDOWN), hostile), seven)
    ev_words_unused = ev  # the event carries both hostile values
    text = f"""defaults: {{cap: {{limit: 9, per: 1m}}}}
rules:
  - name: r
    match: {{notification: linkDown}}
    actions:
      - action: kea.lease-del
        {param}: "{value.replace("physAddr", "ifPhysAddress")}"
      - action: log
        message: still planned
"""
    out = ruleset(tmp_path, text).evaluate(ev_words_unused)
    assert out.matched == ("r",)
    assert [p.action for p in out.planned] == ["log"]  # the bad one is not planned, the good one is
    (rej,) = out.rejected
    assert (rej.rule, rej.action, rej.index) == ("r", "kea.lease-del", 0)
    assert rej.reason.startswith(reason), rej.reason
    assert rej.kind == ("template" if reason.startswith("template:") else "parameter")


def test_exec_argv_keeps_hostile_text_as_one_element(tmp_path: Path) -> None:
    hostile = VarBind(
        (1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 18, 17),
        "IF-MIB::ifAlias",
        (17,),
        "OctetString",
        b"x; rm -rf / $(reboot)",
        "x; rm -rf / $(reboot)",
    )
    text = """rules:
  - name: r
    match: {notification: linkDown}
    actions:
      - action: exec
        argv: [/usr/local/bin/notify, "{{ ifAlias }}", "{{ source }}"]
"""
    out = ruleset(tmp_path, text).evaluate(with_varbind(event(LINKDOWN), hostile))
    assert out.planned[0].params["argv"] == ["/usr/local/bin/notify", "x; rm -rf / $(reboot)", "10.20.1.5"]


def test_mapping_parameter_renders_recursively(tmp_path: Path) -> None:
    text = """rules:
  - name: r
    match: {notification: linkDown}
    actions:
      - action: webhook
        url: https://hooks.example/trapd
        body: {switch: "{{ source }}", port: {index: "{{ ifIndex }}", name: "{{ ifDescr }}"}, fixed: 3}
"""
    out = ruleset(tmp_path, text).evaluate(event(LINKDOWN))
    assert out.planned[0].params["body"] == {
        "switch": "10.20.1.5",
        "port": {"index": "17", "name": "Gi1/0/17"},
        "fixed": 3,
    }


@pytest.mark.parametrize(
    ("fn", "value", "expected"),
    [
        (mac_filter, bytes.fromhex("aabbccddeeff"), "aa:bb:cc:dd:ee:ff"),
        (mac_filter, "AA:BB:CC:DD:EE:FF", "aa:bb:cc:dd:ee:ff"),
        (mac_filter, "0:1:2:3:4:5", "00:01:02:03:04:05"),
        (ip_filter, bytes([192, 0, 2, 1]), "192.0.2.1"),
        (ip_filter, 3221225985, "192.0.2.1"),
        (ip_filter, "2001:DB8::1", "2001:db8::1"),
        (hex_filter, b"\x00\xff", "00ff"),
        (int_filter, " 42 ", 42),
        (int_filter, 7, 7),
    ],
)
def test_filters(fn: object, value: object, expected: object) -> None:
    assert fn(value) == expected  # type: ignore[operator]


@pytest.mark.parametrize(
    ("fn", "value"),
    [
        (mac_filter, b"\x00" * 5),
        (mac_filter, "00:11:22:33:44"),
        (mac_filter, 12),
        (ip_filter, "10.0.0.256"),
        (ip_filter, b"\x01\x02\x03"),
        (ip_filter, -1),
        (hex_filter, True),
        (hex_filter, -5),
        (int_filter, "12a"),
        (int_filter, True),
        (int_filter, 1.5),
    ],
)
def test_filters_refuse(fn: object, value: object) -> None:
    with pytest.raises(FilterError):
        fn(value)  # type: ignore[operator]


def test_one_binding_looked_up_is_the_binding_the_whole_map_holds() -> None:
    """varbinds[key] builds only the view it needs; it must be the one the full mapping gives:
    the first binding whose symbol, name or dotted OID is the key (duplicates, unnamed ones too)."""
    from trapd.rules.context import VarbindMap

    ev = event(LINKDOWN)
    unnamed = VarBind((1, 3, 6, 1, 4, 1, 99999, 1, 1), "1.3.6.1.4.1.99999.1.1", (), "OctetString", b"7", "7")
    again = VarBind((1, 3, 6, 1, 2, 1, 2, 2, 1, 1, 18), "IF-MIB::ifIndex", (18,), "Integer32", 18, "18")
    ev = with_varbind(with_varbind(ev, unnamed), again)
    full = dict(VarbindMap(ev))  # iterating builds every view
    keys = [*full, "1.3.6.1.2.1.2.2.1.1.18", "nosuch", "IF-MIB::nosuch", "1.3.6.1.9", ""]
    for key in keys:
        lazy = VarbindMap(ev)
        if key not in full:
            assert key not in lazy and lazy.get(key) is None
            continue
        view, expected = lazy[key], full[key]
        assert (view.oid, view.name, view.value, view.index, view.parts) == (
            expected.oid,
            expected.name,
            expected.value,
            expected.index,
            expected.parts,
        ), key
        assert lazy[key] is view  # built once per binding
    assert full["ifIndex"].index == 17 and full["1.3.6.1.4.1.99999.1.1"].value == "7"


@pytest.mark.parametrize("value", ["{{ ifAlias }}", "{{ ifAlias | ip }}"])
def test_an_address_with_a_zone_is_not_an_ip_address(tmp_path: Path, value: str) -> None:
    """ipaddress takes any text after "%" as an IPv6 zone: "fe80::1%eth0; reboot" passed the ip-address
    gate (and the ip filter) that "1.2.3.4; reboot" fails, and went on to the action."""
    hostile = VarBind(
        (1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 18, 17),
        "IF-MIB::ifAlias",
        (17,),
        "OctetString",
        b"fe80::1%eth0; reboot",
        "fe80::1%eth0; reboot",
    )
    text = f"""defaults: {{cap: {{limit: 9, per: 1m}}}}
rules:
  - name: r
    match: {{notification: linkDown}}
    actions:
      - action: kea.lease-del
        ip-address: "{value}"
"""
    out = ruleset(tmp_path, text).evaluate(with_varbind(event(LINKDOWN), hostile))
    assert out.planned == ()
    (rej,) = out.rejected
    assert "zone" in rej.reason, rej.reason


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1:2:3:4", "01:02:03:04"),  # net-snmp's (and Kea's) one-digit groups: one octet each
        ("0:1:0:1:a:b", "00:01:00:01:0a:0b"),
        ("00:01:00:01", "00:01:00:01"),
        ("0001.0001", "00:01:00:01"),
        ("0x000100010a", "00:01:00:01:0a"),
        ("00-01 02", "00:01:02"),
        ("abc:d", None),  # a group of three digits: which octet is split is a guess
        ("abc:def", None),
        ("1:2:3", "01:02:03"),
    ],
)
def test_duid_groups_are_octets(value: str, expected: str | None) -> None:
    """Separators were dropped before the digits were paired: "1:2:3:4" (four octets, as Kea
    reads it) became the DUID 12:34, and kea.lease-del would have deleted another client's leases."""
    from trapd.params import Param, ParamError, convert

    if expected is None:
        with pytest.raises(ParamError):
            convert(Param("duid"), value, "duid")
    else:
        assert convert(Param("duid"), value, "duid") == expected
        assert convert(Param("hex"), value, "hex") == expected.replace(":", "")


@pytest.mark.parametrize("value", ["\u0661\u0667", "\uff11\uff17", "1\u0667"])  # Arabic-Indic, fullwidth
def test_an_integer_is_written_in_ascii_digits(value: str) -> None:
    """int() reads any Unicode digit ("\u0661\u0667" is 17), so trap text in another script passed as
    an integer (a subnet-id, a VLAN) although nothing that sends it to Kea means it as one."""
    from trapd.params import Param, ParamError, convert

    with pytest.raises(ParamError, match="expected an integer"):
        convert(Param("integer"), value, "subnet-id")
    assert convert(Param("integer"), " 17 ", "subnet-id") == 17


def test_an_integer_may_be_written_as_a_whole_float() -> None:
    """YAML reads ``100.0`` as a float; JSON Schema's integer (an editor's check) takes it, so trapd does."""
    from trapd.params import Param, ParamError, convert

    assert convert(Param("integer"), 100.0, "page-size") == 100
    assert type(convert(Param("integer"), 100.0, "page-size")) is int
    for bad in (100.5, float("inf"), float("nan")):
        with pytest.raises(ParamError, match="expected an integer"):
            convert(Param("integer"), bad, "page-size")


@pytest.mark.parametrize("mac", ["426172313233", "0011223344aa"])
def test_octets_with_a_display_hint_are_their_display_even_when_printable(tmp_path: Path, mac: str) -> None:
    """A MAC (DISPLAY-HINT 1x:) whose six octets happen to be printable (42:61:72:31:32:33 is
    "Bar123"; about one randomized client MAC in 400) was read as that text: "{{ dot1dTpFdbAddress }}"
    was no MAC, and a rule comparing the varbind with its MAC never matched it."""
    shown = ":".join(mac[i : i + 2] for i in range(0, 12, 2))
    ev = event(f"IF-MIB::linkDown from 10.20.1.5 ifIndex=17 dot1dTpFdbAddress.1.2.3.4.5.6=0x{mac}")
    assert ev.varbinds[1].display == shown  # the listener's display, by the MIB's hint
    text = f"""defaults: {{cap: {{limit: 9, per: 1m}}}}
rules:
  - name: r
    match: {{notification: linkDown, varbinds: {{dot1dTpFdbAddress: "{shown}"}}}}
    actions:
      - action: kea.lease-del
        hw-address: "{{{{ dot1dTpFdbAddress }}}}"
      - action: log
        message: "{{{{ dot1dTpFdbAddress }}}} {{{{ dot1dTpFdbAddress | mac }}}}"
"""
    out = ruleset(tmp_path, text).evaluate(ev)
    assert out.matched == ("r",)
    assert not out.rejected, out.rejected
    planned = [p.params.get("hw-address") or p.params["message"] for p in out.planned]
    assert planned == [shown, f"{shown} {shown}"]


def test_regex_groups_only_of_conditions_that_held(tmp_path: Path) -> None:
    """Groups of an any: branch that failed, or from inside a not:, were template variables all the
    same: "{{ member }}" rendered the 1 of a branch whose ifIndex range did not hold."""
    text = r"""
rules:
  - name: r
    match:
      notification: linkDown
      any:
        - varbinds: {ifDescr: {regex: 'Gi(?P<member>\d+)/0/(?P<port>\d+)'}, ifIndex: {range: [1, 48]}}
        - varbinds: {ifAlias: {regex: 'uplink-(?P<port>\d+)'}}
      not:
        varbinds: {ifDescr: {regex: '(?P<inside>Gi.*)'}, ifIndex: 1}
    actions:
      - {action: log, message: "{{ port }}"}
      - {action: log, message: "{{ member }}"}
      - {action: log, message: "{{ inside }}"}
"""
    rs = ruleset(tmp_path, text)
    uplink = event("IF-MIB::linkDown from 10.20.1.5 ifIndex=50 ifDescr=Gi1/0/50 ifAlias=uplink-3")
    for out in (rs.evaluate(uplink), next(t.outcome for t in rs.explain(uplink) if t.status == "matched")):
        assert [p.params["message"] for p in out.planned] == ["3"]
        assert [(r.index, r.reason) for r in out.rejected] == [
            (1, "template: 'member' is undefined"),
            (2, "template: 'inside' is undefined"),
        ]
    access = event("IF-MIB::linkDown from 10.20.1.5 ifIndex=17 ifDescr=Gi1/0/17 ifAlias=uplink-3")
    out = rs.evaluate(access)
    assert [p.params["message"] for p in out.planned] == ["17", "1"]  # the first branch held


def test_index_objects_are_decoded_from_the_instance_suffix(tmp_path: Path) -> None:
    """``varbinds.X.indexes``: the INDEX objects of X's table row, decoded from the suffix by the
    INDEX clause (RFC 2578 7.7): an integer, an IpAddress (four arcs), a MAC of fixed SIZE (6, no
    length), a length-prefixed string, an IMPLIED string, and an AUGMENTS row (its base's INDEX)."""
    cases = {
        "ipNetToMediaPhysAddress.17.10.0.0.1=0x001122334455": (
            "{{ varbinds.ipNetToMediaPhysAddress.indexes.ipNetToMediaNetAddress }} "
            "on {{ varbinds.ipNetToMediaPhysAddress.indexes.ipNetToMediaIfIndex + 1 }}",
            "10.0.0.1 on 18",
        ),
        "dot1qTpFdbPort.10.0.17.34.51.68.85=5": (
            "{{ varbinds.dot1qTpFdbPort.indexes.dot1qFdbId }} "
            "{{ varbinds.dot1qTpFdbPort.indexes.dot1qTpFdbAddress }}",
            "10 00:11:22:33:44:55",
        ),
        "vacmGroupName.3.5.97.108.105.99.101=ops": (
            "{{ varbinds.vacmGroupName.indexes.vacmSecurityModel }} "
            "{{ varbinds.vacmGroupName.indexes.vacmSecurityName }}",
            "3 alice",
        ),
        "snmpTargetAddrTAddress.116.49=0x0a000001": (
            "{{ varbinds.snmpTargetAddrTAddress.indexes.snmpTargetAddrName }}",
            "t1",
        ),
        "ifName.10101=Gi1/0/1": ("{{ varbinds.ifName.indexes.ifIndex }}", "10101"),
    }
    for words, (template, expected) in cases.items():
        assert message(tmp_path, template, f"IF-MIB::linkDown from 10.20.1.5 {words}") == expected, words


@pytest.mark.parametrize(
    ("suffix", "reason"),
    [
        ("17.10.0.0.1.5", "undecodable index: 1 sub-identifier left over after the INDEX"),
        ("17.10.0.0", "undecodable index: ipNetToMediaNetAddress is not four octets"),
        ("17.10.0.256.1", "undecodable index: ipNetToMediaNetAddress is not four octets"),
        # 118 sub-identifiers after the column's 10: the most an OID can have (128; trapd test
        # refuses more since dcaf1dd, as no SNMP message can carry them).
        ("4294967295." * 117 + "1", "undecodable index: ipNetToMediaNetAddress is not four octets"),
        (
            "17.10.0.0.1" + ".4294967295" * 100,
            "undecodable index: 100 sub-identifiers left over after the INDEX",
        ),
    ],
)
def test_an_undecodable_index_is_a_clear_value_and_a_rejection(
    tmp_path: Path, suffix: str, reason: str
) -> None:
    """A suffix the INDEX clause does not describe (too short, too long, an octet above 255): the
    ``indexes`` print as the reason; naming an index object in them rejects the action (no guess)."""
    words = f"IF-MIB::linkDown from 10.20.1.5 ipNetToMediaPhysAddress.{suffix}=0x001122334455"
    assert message(tmp_path, "{{ varbinds.ipNetToMediaPhysAddress.indexes }}", words) == reason
    out = run(
        tmp_path,
        "      - action: log\n"
        "        message: '{{ varbinds.ipNetToMediaPhysAddress.indexes.ipNetToMediaIfIndex }}'",
        words,
    )
    assert not out.planned and out.rejected, out


@pytest.mark.parametrize(
    "template,meant",
    [("{{ ifDescr | lenght }}", "length"), ("{{ ifDescr | lowr }}", "lower"), ("{{ ifIndex is od }}", "odd")],
)
def test_a_misspelt_filter_or_test_suggests_the_name_meant(tmp_path: Path, template: str, meant: str) -> None:
    from rules_support import errors_of

    text = f"""
        rules:
          - name: r
            match: {{notification: linkDown}}
            actions:
              - action: log
                message: "{template}"
        """
    (line,) = errors_of(tmp_path, text)
    assert "template syntax error" in line and f"(did you mean {meant!r}?)" in line, line


def test_a_template_nested_too_deep_is_an_error_at_its_place(tmp_path: Path) -> None:
    """Jinja parses recursively (a dozen frames a parenthesis): 150 nested parentheses ended
    trapd check in a RecursionError traceback, and a reload with it failed naming no file."""
    from rules_support import errors_of

    deep = "(" * 150 + "ifIndex" + ")" * 150
    text = f"""
        rules:
          - name: r
            match: {{notification: linkDown}}
            actions:
              - action: log
                message: "{{{{ {deep} }}}}"
        """
    (line,) = errors_of(tmp_path, text)
    assert line.startswith("6:18: error: log.message: template nested too deep"), line
