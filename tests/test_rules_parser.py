"""Rule files that are wrong: every problem reported, each at its exact file:line:column."""

from __future__ import annotations

from pathlib import Path

import pytest
from rules_support import ACTIONS, errors_of, event, resolver, ruleset, with_varbind, write

from trapd.event import VarBind
from trapd.rules import RuleErrors, check_rules, load_rules


def test_unknown_key_points_at_the_key_and_suggests(tmp_path: Path) -> None:
    got = errors_of(
        tmp_path,
        """
        rules:
          - name: r1
            matches:
              notification: IF-MIB::linkDown
            actions:
              - action: log
                message: hi
        """,
    )
    assert len(got) == 1
    assert got[0].startswith("3:5: error: unknown key 'matches' in a rule (did you mean 'match'?)")


def test_yaml_syntax_error_has_position(tmp_path: Path) -> None:
    p = write(tmp_path, "rules:\n  - name: r1\n    match: {notification: linkDown\n")
    problems = check_rules([p], resolver(), ACTIONS)
    assert len(problems) == 1
    assert problems[0].mark is not None
    assert problems[0].mark.file == str(p)
    assert problems[0].mark.line == 4 and problems[0].mark.column == 1
    assert "YAML syntax" in problems[0].message


def test_a_byte_that_is_not_utf8_is_reported_at_its_line_and_column(tmp_path: Path) -> None:
    p = tmp_path / "rules.yaml"
    p.write_bytes(b"rules:\n  - name: a\n    description: caf\xe9 au lait\n    match: {version: v1}\n")
    (problem,) = check_rules([p], resolver(), ACTIONS)
    assert problem.mark is not None and problem.mark.file == str(p)
    assert (problem.mark.line, problem.mark.column) == (3, 21)
    assert problem.message == "not UTF-8 text: byte 0xe9 (invalid continuation byte)"


@pytest.mark.parametrize("anchor", ["", "&a "])  # with an anchor, the pure-Python loader reads the file
@pytest.mark.parametrize("style", ["|", "|-", ">"])
def test_a_template_error_in_a_block_scalar_is_at_its_line(tmp_path: Path, anchor: str, style: str) -> None:
    """The block's text starts on the line after its | or >: the error was one line too early."""
    text = (
        "rules:\n"
        "  - name: r\n"
        "    match: {notification: linkDown}\n"
        f"    actions: {anchor}\n"
        "      - action: log\n"
        f"        message: {style}\n"
        "          line one {{ source }}\n"
        "          line two {{ nope( }}\n"
    )
    errors = [e for e in errors_of(tmp_path, text) if "template syntax error" in e]
    assert [e.split(":")[0] for e in errors] == ["8" if style != ">" else "7"], errors


@pytest.mark.parametrize(
    "template",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ifDescr['__class__'] }}",
        "{{ ifDescr | attr('__class__') }}",
        "{{ (ifDescr.__init__.__globals__ or {}).get('os') }}",
        "{{ cycler.__init__.__globals__.os }}",
    ],
)
def test_trapd_check_refuses_a_template_reaching_for_python_internals(tmp_path: Path, template: str) -> None:
    """The sandbox refuses them when the template renders; trapd check says so before any trap."""
    text = f"""
        rules:
          - name: r
            match: {{notification: linkDown}}
            actions:
              - action: log
                message: |
                  {{{{ source }}}}
                  {template}
        """
    got = errors_of(tmp_path, text)
    assert len(got) == 1 and got[0].startswith("8:"), got
    assert "log.message: template refused: '__" in got[0]
    assert "Python internals, which the sandbox refuses" in got[0]


def test_duplicate_yaml_key_is_an_error(tmp_path: Path) -> None:
    got = errors_of(tmp_path, "rules:\n  - name: a\n    name: b\n")
    assert got == ["3:5: error: duplicate key 'name' (first at line 2)"]


def test_all_problems_are_reported_not_just_the_first(tmp_path: Path) -> None:
    got = errors_of(
        tmp_path,
        """
        rules:
          - name: r1
            match:
              notification: IF-MIB::linkDwn
              varbinds:
                ifOperStatus: dwn
                ifDescr: {regex: 'Gi(\\d+'}
            actions:
              - action: kea.lease-dell
                hw-address: x
              - action: log
                message: "{{ ifDescr "
              - action: log
                message: "{{ nosuchvariable }}"
        """,
    )
    text = "\n".join(got)
    assert "4:21: error: unknown MIB symbol 'IF-MIB::linkDwn' in notification" in text
    assert (
        "6:23: error: ifOperStatus: 'dwn' is not a value of this enumeration (did you mean 'down'?)" in text
    )
    assert "7:26: error: ifDescr: bad regex: missing ), unterminated subpattern at position 2" in text
    assert "9:17: error: unknown action 'kea.lease-dell' (did you mean 'kea.lease-del'?)" in text
    assert "12:18: error: log.message: template syntax error" in text
    assert "14:18: error: log.message: undefined template variable 'nosuchvariable'" in text
    assert len(got) == 6


def test_wrong_types(tmp_path: Path) -> None:
    got = errors_of(
        tmp_path,
        """
        rules:
          - name: r1
            enabled: maybe
            continue: 1
            mode: fast
            match:
              notification: linkDown
              version: v4
              source: 10.0.0.0/33
            actions: {action: log}
        """,
    )
    text = "\n".join(got)
    assert "3:14: error: enabled must be true or false, got 'maybe'" in text
    assert "4:15: error: continue must be true or false, got 1" in text
    assert "5:11: error: mode must be enforce or dry-run, got 'fast'" in text
    assert "8:16: error: version: 'v4' is not v1, v2c or v3" in text
    assert "9:15: error: source: '10.0.0.0/33' is neither an address/network nor a source group" in text
    assert "10:14: error: actions must be a list" in text


def test_yaml_boolean_trap_is_explained(tmp_path: Path) -> None:
    got = errors_of(
        tmp_path,
        """
        rules:
          - name: r1
            match:
              varbinds: {ifAlias: on}
            cancel: x
        """,
    )
    assert got == [
        "4:27: error: ifAlias: True is a YAML boolean (yes/no/on/off/true/false); "
        "quote it if you mean the text"
    ]


def test_duplicate_rule_names_across_files(tmp_path: Path) -> None:
    a = write(tmp_path, "rules:\n  - {name: same, match: {version: v1}, cancel: x}\n", "rules.yaml")
    b = write(
        tmp_path,
        "rules:\n  - {name: other, match: {version: v3}, cancel: y}\n  - name: same\n    cancel: z\n",
        "rules.d/10-more.yaml",
    )
    problems = check_rules([a, b], resolver(), ACTIONS)
    assert [str(p) for p in problems] == [
        f"{b}:3:5: duplicate rule name 'same' (first defined at {a}:2:5)",
    ]
    with pytest.raises(RuleErrors) as info:
        load_rules([a, b], resolver(), ACTIONS)
    assert len(info.value.errors) == 1
    assert "duplicate rule name" in str(info.value)


def test_parameters_that_can_never_validate(tmp_path: Path) -> None:
    got = errors_of(
        tmp_path,
        """
        defaults:
          cap: {limit: 10, per: 1m}
        rules:
          - name: r1
            match: {notification: linkDown}
            actions:
              - action: kea.lease-del
                ip-address: "10.0.0.{{ ifIndex }}; reboot"
              - action: kea.lease-del
                hw-address: 00:11:22:33:44:55:66
              - action: kea.lease-del
                subnet-id: 0
                colour: blue
              - action: kea.dhcp-disable
                family: v4
        """,
    )
    text = "\n".join(got)
    assert (
        "8:21: error: kea.lease-del.ip-address: an ip-address cannot hold ' ', ';', 'o', 'r', 't'"
        " of the text around the template, so it can never validate"
    ) in text
    assert "10:21: error: kea.lease-del: hw-address: not a MAC address" in text
    assert "12:20: error: kea.lease-del: subnet-id: 0 is below the minimum 1" in text
    assert "13:9: error: kea.lease-del has no parameter 'colour'" in text
    assert (
        "14:17: error: kea.dhcp-disable needs the parameter 'max-period' (duration [0.001..], required)"
        in text
    )


def test_destructive_action_needs_a_cap(tmp_path: Path) -> None:
    text = """
        rules:
          - name: r1
            match: {notification: linkDown}
            actions:
              - action: kea.lease-del
                ip-address: "{{ source }}"
              - action: log
                message: fine
        """
    got = errors_of(tmp_path, text)
    assert len(got) == 1
    assert got[0].startswith("5:17: error: kea.lease-del is destructive: give it a cap")
    # a cap on the action, the rule, defaults, or a global cap of trapd.yaml each satisfy it
    capped = text.replace(
        'ip-address: "{{ source }}"', 'ip-address: "{{ source }}"\n                cap: {limit: 5, per: 1m}'
    )
    assert errors_of(tmp_path, capped) == []
    rule_cap = text.replace(
        "            actions:", "            cap: {limit: 5, per: 1m}\n            actions:"
    )
    assert errors_of(tmp_path, rule_cap) == []
    p = write(tmp_path, text)
    assert check_rules([p], resolver(), ACTIONS, capped_actions={"kea.lease-del"}) == []


def test_a_template_repeated_across_rules_is_checked_in_each_rule(tmp_path: Path) -> None:
    """The compiler remembers templates whose variables were all found; a regex group found in
    one rule must not make the same template pass in a rule without that group."""
    got = errors_of(
        tmp_path,
        """
        rules:
          - name: with-group
            match: {notification: linkDown, varbinds: {ifDescr: {regex: 'Gi(?P<port>.*)'}}}
            actions: [{action: log, message: "port {{ port }}"}]
          - name: without-group
            match: {notification: linkDown}
            actions: [{action: log, message: "port {{ port }}"}]
          - name: plain-1
            match: {notification: linkUp}
            actions: [{action: log, message: "{{ source }} {{ nosuch }}"}]
          - name: plain-2
            match: {notification: linkUp, source: 10.0.0.1}
            actions: [{action: log, message: "{{ source }} {{ nosuch }}"}]
          - name: fine-1
            match: {notification: coldStart}
            actions: [{action: log, message: "{{ source }}"}]
          - name: fine-2
            match: {notification: coldStart, source: 10.0.0.1}
            actions: [{action: log, message: "{{ source }}"}]
        """,
    )
    undefined = [line.split(": error: ")[0] for line in got if "undefined template variable" in line]
    assert undefined == ["7:38", "10:38", "13:38"]  # without-group, plain-1, plain-2


def test_a_varbind_value_repeated_across_rules_is_checked_and_matched_in_each(tmp_path: Path) -> None:
    """The compiler reuses the tests of a varbind compared with one plain value; a wrong value
    is still reported in every rule, and each rule still matches on its own value."""
    text = """
        rules:
          - {name: a, match: {notification: linkDown, source: 10.0.0.1, varbinds: {ifOperStatus: down}}}
          - {name: b, match: {notification: linkDown, source: 10.0.0.2, varbinds: {ifOperStatus: down}}}
          - {name: c, match: {notification: linkDown, source: 10.0.0.3, varbinds: {ifOperStatus: '2'}}}
          - {name: d, match: {notification: linkDown, varbinds: {ifOperStatus: sideways}}, cancel: d}
          - {name: e, match: {notification: linkUp, varbinds: {ifOperStatus: sideways}}, cancel: e}
        """
    got = [line.split(": error: ")[0] for line in errors_of(tmp_path, text) if "sideways" in line]
    assert got == ["5:72", "6:70"]
    rs = ruleset(tmp_path, text.replace("sideways", "up"))
    assert rs.evaluate(event("linkDown from 10.0.0.2 ifOperStatus=down")).matched == ("b",)
    assert rs.evaluate(event("linkDown from 10.0.0.3 ifOperStatus=2")).matched == ("c",)
    assert rs.evaluate(event("linkDown from 10.0.0.1 ifOperStatus=up")).matched == ("d",)


def test_an_action_repeated_across_rules_is_checked_and_placed_in_each(tmp_path: Path) -> None:
    """The compiler reuses an action entry written the same way in several rules: each rule
    still gets its own position and index, and an entry that only looks equal (true is 1 to
    Python) is still checked on its own."""
    text = """
        rules:
          - name: a
            match: {notification: linkDown, source: 10.0.0.1}
            actions:
              - {action: log, message: "{{ source }}"}
              - {action: log, message: "{{ source }}"}
          - name: b
            match: {notification: linkDown, source: 10.0.0.2}
            actions:
              - {action: log, message: "{{ source }}"}
              - {action: log, message: "{{ source }}"}
          - name: c
            match: {notification: linkDown, source: 10.0.0.3}
            actions: [{action: log, message: "{{ source }}", level: 1}]
          - name: d
            match: {notification: linkDown, source: 10.0.0.4}
            actions: [{action: log, message: "{{ source }}", level: true}]
        """
    got = [line for line in errors_of(tmp_path, text) if ": error: " in line]
    assert got == ["17:61: error: log: level: expected text, got bool"]
    rs = ruleset(tmp_path, text.replace("level: true", "level: '2'"))
    calls = [(r.name, a.index, a.mark.line if a.mark else 0) for r in rs.rules for a in r.actions]
    assert calls == [("a", 0, 5), ("a", 1, 6), ("b", 0, 10), ("b", 1, 11), ("c", 0, 14), ("d", 0, 17)]
    out = rs.evaluate(event("linkDown from 10.0.0.2"))
    assert [(p.rule, p.index, p.params["message"]) for p in out.planned] == [
        ("b", 0, "10.0.0.2"),
        ("b", 1, "10.0.0.2"),
    ]


def test_shadowed_rule_warning(tmp_path: Path) -> None:
    got = errors_of(
        tmp_path,
        """
        sources:
          access: [10.20.0.0/16]
        rules:
          - name: all-link-down
            match: {notification: [linkDown, linkUp]}
            cancel: x
          - name: specific
            match:
              notification: linkDown
              source: access
            cancel: y
          - name: not-shadowed-continue
            match: {notification: coldStart}
            continue: true
            cancel: z
          - name: after-continue
            match: {notification: coldStart}
            cancel: z
        """,
    )
    assert got == [
        "7:5: warning: rule 'specific' can never match: the earlier rule 'all-link-down' "
        f"(at {tmp_path / 'rules.yaml'}:4:5) matches every event it would and stops"
    ]


def test_load_rules_looks_for_hidden_rules_only_to_report_them_with_errors(tmp_path: Path) -> None:
    """load_rules returns no warnings, so it skips the "can never match" check, unless the file
    has errors: then the report lists the warning beside them, as trapd check does."""
    hidden = """
        rules:
          - {name: wide, match: {notification: linkDown}, cancel: x}
          - {name: narrow, match: {notification: linkDown, source: 10.0.0.1}, cancel: y}
        """
    p = write(tmp_path, hidden)
    assert load_rules([p], resolver(), ACTIONS).shadowed == ()
    assert [e.message.split(":")[0] for e in check_rules([p], resolver(), ACTIONS)] == [
        "rule 'narrow' can never match"
    ]
    broken = "          - {name: broken, match: {notification: nosuch}, cancel: z}\n"
    bad = write(tmp_path, hidden.rstrip(" ") + broken, "bad.yaml")
    with pytest.raises(RuleErrors) as info:
        load_rules([bad], resolver(), ACTIONS)
    assert [(e.severity, e.mark.line if e.mark else 0) for e in info.value.errors] == [
        ("warning", 3),
        ("error", 4),
    ]
    assert "unknown MIB symbol 'nosuch'" in info.value.errors[1].message


def test_shadow_by_wider_source_and_version(tmp_path: Path) -> None:
    got = errors_of(
        tmp_path,
        """
        rules:
          - name: wide
            match: {source: 10.0.0.0/8, version: [v2c, v3]}
            cancel: x
          - name: narrow
            match: {source: [10.20.0.0/16], version: v2c, notification: linkDown}
            cancel: y
          - name: other-net
            match: {source: 192.168.0.0/16, version: v2c}
            cancel: y
        """,
    )
    assert len(got) == 1 and got[0].startswith("5:5: warning: rule 'narrow' can never match")


def test_shadow_by_an_earlier_subtree_rule(tmp_path: Path) -> None:
    got = errors_of(
        tmp_path,
        """
        rules:
          - {name: traps, match: {notification: {under: snmpTraps}}, cancel: x}
          - {name: down, match: {notification: linkDown, version: v2c}, cancel: y}
          - {name: vendor, match: {notification: '1.3.6.1.4.1.9.9.1'}, cancel: z}
        """,
    )
    assert len(got) == 1 and got[0].startswith(
        "3:5: warning: rule 'down' can never match: the earlier rule 'traps'"
    )


def test_shadow_check_and_matching_share_one_index(tmp_path: Path) -> None:
    """Rules that cannot hide (continue, foreach) share index nodes with stopping rules.

    Matching must still find every rule at a node, and the shadow check only those that stop:
    in both orders (the non-stopping rule stored first, and stored after a stopping one).
    """
    text = """
        rules:
          - name: up-continue
            match: {notification: linkUp, varbinds: {ifIndex: 5}}
            continue: true
            cancel: a
          - {name: up-stop, match: {notification: linkUp, varbinds: {ifIndex: 5}, version: v2c}, cancel: b}
          - name: up-hidden
            match: {notification: linkUp, varbinds: {ifIndex: 5}, version: v2c, source: 10.0.0.1}
            cancel: c
          - name: down-stop
            match: {notification: linkDown, varbinds: {ifIndex: 17}, version: v1}
            cancel: d
          - name: down-continue
            match: {notification: linkDown, varbinds: {ifIndex: 17}, version: v2c}
            continue: true
            cancel: e
          - name: down-after
            match: {notification: linkDown, varbinds: {ifIndex: 17}, version: v2c}
            cancel: h
          - name: down-foreach
            match: {notification: cmnMacChangedNotification, varbinds: {ifIndex: 17}}
            foreach: {items: mac_changes}
            cancel: f
          - name: mac-after-foreach
            match: {notification: cmnMacChangedNotification, varbinds: {ifIndex: 17}}
            cancel: g
        """
    got = [line.split(": warning: ")[1].split(" (at ")[0] for line in errors_of(tmp_path, text)]
    assert got == ["rule 'up-hidden' can never match: the earlier rule 'up-stop'"]
    rs = ruleset(tmp_path, text)
    assert rs.evaluate(event("linkUp from 10.0.0.1 ifIndex=5 version=v2c")).matched == (
        "up-continue",
        "up-stop",
    )
    assert rs.evaluate(event("linkDown from 10.0.0.1 ifIndex=17 version=v1")).matched == ("down-stop",)
    assert rs.evaluate(event("linkDown from 10.0.0.1 ifIndex=17 version=v2c")).matched == (
        "down-continue",
        "down-after",
    )
    assert rs.evaluate(event("cmnMacChangedNotification from 10.0.0.1 ifIndex=17")).matched == (
        "mac-after-foreach",
    )


def test_foreach_and_item_checks(tmp_path: Path) -> None:
    got = errors_of(
        tmp_path,
        """
        rules:
          - name: r1
            match: {notification: cmnMacChangedNotification}
            foreach: {items: mac_changes, where: {colour: red}}
            actions:
              - action: log
                message: "{{ item.nosuch }}"
          - name: r2
            match: {notification: linkDown}
            actions:
              - action: log
                message: "{{ item.mac }}"
          - name: r3
            foreach: frobs
            cancel: x
        """,
    )
    text = "\n".join(got)
    assert "4:43: error: foreach.where: mac_changes items have no field 'colour'" in text
    assert "7:18: error: log.message: mac_changes items have no field 'nosuch'" in text
    assert "12:18: error: log.message: 'item' is only defined in a rule with foreach:" in text
    assert "14:14: error: foreach: unknown item kind 'frobs'; known: mac_changes" in text


def test_reserved_regex_group_name(tmp_path: Path) -> None:
    got = errors_of(
        tmp_path,
        """
        rules:
          - name: r1
            match:
              varbinds: {ifDescr: {regex: '(?P<source>.*)'}}
            cancel: x
        """,
    )
    assert got == [
        "4:35: error: ifDescr: the regex group name 'source' is a reserved template variable; "
        "rename the group"
    ]


def test_not_a_mapping_file_and_rule_name(tmp_path: Path) -> None:
    assert errors_of(tmp_path, "- name: x\n") == [
        "1:1: error: a rules file is a mapping with sources:, defaults: and rules:"
    ]
    got = errors_of(tmp_path, "rules:\n  - name: 'has space'\n    cancel: x\n  - cancel: y\n")
    assert got[0].startswith("2:11: error: every rule needs a name")
    assert got[1].startswith("4:5: error: every rule needs a name")
    # `name: off` is YAML's boolean false, not the text "off": say so, as for a compared value.
    got = errors_of(tmp_path, "rules:\n  - name: off\n    cancel: x\n")
    assert got == [
        "2:11: error: every rule needs a name: letters, digits and . _ - : / @ +, at most 128 characters"
        " (got False: an unquoted yes/no/on/off/true/false is a YAML boolean; quote it)"
    ]


def test_source_groups_undefined_and_duplicate(tmp_path: Path) -> None:
    a = write(
        tmp_path, "sources:\n  core: [10.0.0.0/24]\nrules:\n  - {name: a, match: {source: cor}, cancel: x}\n"
    )
    b = write(tmp_path, "sources:\n  core: [10.9.0.0/24]\n", "b.yaml")
    msgs = [str(p) for p in check_rules([a, b], resolver(), ACTIONS)]
    assert msgs[0].startswith(f"{a}:4:31: source: 'cor' is neither an address/network nor a source group")
    assert msgs[1] == f"{b}:2:3: source group 'core' is defined twice (first at {a}:2:3)"


def test_empty_file_and_empty_rules_are_fine(tmp_path: Path) -> None:
    assert errors_of(tmp_path, "") == []
    assert errors_of(tmp_path, "rules: []\n") == []


def test_a_duration_that_is_not_a_finite_number_of_seconds_is_refused(tmp_path: Path) -> None:
    """float() reads "nan" and "inf" (and 400 nines): a NaN delay, cap window or max-period passed every
    bound (NaN compares false with both), so `trapd check` accepted it and a rendered one was dispatched."""
    got = errors_of(
        tmp_path,
        """
        rules:
          - name: r1
            match: {notification: linkDown}
            cap: {limit: 10, per: nan}
            actions:
              - action: kea.dhcp-disable
                max-period: NaN
                delay: inf
              - action: kea.dhcp-disable
                max-period: "{{ ifAlias }}"
                once-within: NINES
        """.replace("NINES", "9" * 400 + "s"),
    )
    text = "\n".join(got)
    assert "4:27: error: cap.per: not a duration (like 30s, 5m, 1h30m): 'nan'" in text, text
    assert "7:21: error: kea.dhcp-disable: max-period: not a duration (like 30s, 5m, 1h30m): 'NaN'" in text
    assert "8:16: error: delay: not a duration (like 30s, 5m, 1h30m): 'inf'" in text
    assert "11:22: error: once-within: not a duration" in text, text
    hostile = VarBind(
        (1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 18, 17), "IF-MIB::ifAlias", (17,), "OctetString", b"nan", "nan"
    )
    rules = """
        rules:
          - name: r1
            match: {notification: linkDown}
            cap: {limit: 10, per: 1m}
            actions:
              - action: kea.dhcp-disable
                max-period: "{{ ifAlias }}"
        """
    out = ruleset(tmp_path, rules).evaluate(with_varbind(event("linkDown ifIndex=17"), hostile))
    assert out.planned == ()
    (rej,) = out.rejected
    assert "max-period: not a duration" in rej.reason, rej.reason


def test_an_object_identifier_varbind_compares_with_a_mib_name(tmp_path: Path) -> None:
    """snmpTrapEnterprise (an OBJECT IDENTIFIER) is shown as a MIB name, so that is what an operator
    writes: the name means its OID (as `.1.3...` does), and a name no MIB knows is an error.
    It used to be compared as text with the dotted OID: never true, and `trapd check` said OK."""
    text = """
        rules:
          - {name: a, match: {notification: coldStart, varbinds: {snmpTrapEnterprise: SNMPv2-SMI::private}}}
          - {name: b, match: {notification: warmStart, varbinds: {snmpTrapEnterprise: [snmpModules, mgmt]}}}
          - {name: c, match: {notification: linkUp, varbinds: {snmpTrapEnterprise: {ne: enterprises}}}}
          - {name: d, match: {notification: linkDown, varbinds: {snmpTrapEnterprise: '.1.3.6.1.4.1'}}}
        """
    rs = ruleset(tmp_path, text)
    assert rs.evaluate(event("coldStart snmpTrapEnterprise=1.3.6.1.4")).matched == ("a",)
    assert rs.evaluate(event("coldStart snmpTrapEnterprise=1.3.6.1.4.1")).matched == ()
    assert rs.evaluate(event("warmStart snmpTrapEnterprise=SNMPv2-SMI::mgmt")).matched == ("b",)
    assert rs.evaluate(event("linkUp snmpTrapEnterprise=1.3.6.1.4.1")).matched == ()
    assert rs.evaluate(event("linkUp snmpTrapEnterprise=1.3.6.1.2")).matched == ("c",)
    assert rs.evaluate(event("linkDown snmpTrapEnterprise=enterprises")).matched == ("d",)
    bad = errors_of(tmp_path, text.replace("[snmpModules, mgmt]", "[snmpModules, mgnt]"))
    assert [line for line in bad if "mgnt" in line] == [
        "3:93: error: unknown MIB symbol 'mgnt' in varbind snmpTrapEnterprise value (load the MIB that "
        "defines it, see mibs: in trapd.yaml, or give the numeric OID)"
    ]


def test_a_bare_name_that_two_mibs_define_differently_is_reported_where_it_is_used(tmp_path: Path) -> None:
    """docs/rules.md: a bare symbol works "when it is unambiguous". pimNeighborLoss is both
    PIM-STD-MIB's (1.3.6.1.2.1.157.0.1) and the experimental PIM-MIB's (1.3.6.1.3.61.1.0.1), and
    with vendor bundles many more are (CISCO-IETF-ATM2-PVCTRAP-MIB and ATM2-MIB). trapd used one
    of them without a word, and which one could change when a MIB was added."""
    text = """
        rules:
          - name: pim
            match:
              notification: pimNeighborLoss
              varbinds: {sipStatsRetryByes: 1}
            cancel: pim
          - name: pim-std
            match: {notification: PIM-STD-MIB::pimNeighborLoss}
            cancel: pim-std
        """
    got = [line for line in errors_of(tmp_path, text) if "pimNeighborLoss" in line or "sipStats" in line]
    assert got == [
        "4:21: warning: notification: 'pimNeighborLoss' is defined by more than one MIB: "
        "PIM-MIB::pimNeighborLoss (1.3.6.1.3.61.1.0.1, the one used), "
        "PIM-STD-MIB::pimNeighborLoss (1.3.6.1.2.1.157.0.1); write MODULE::pimNeighborLoss",
        "5:18: warning: varbinds: 'sipStatsRetryByes' is defined by more than one MIB: "
        "SIP-MIB::sipStatsRetryByes (1.3.6.1.2.1.9998.1.2.2.1.2, the one used), "
        "SIP-UA-MIB::sipStatsRetryByes (1.3.6.1.2.1.9998.3.2.1.1.1.2); write MODULE::sipStatsRetryByes",
    ], got


def test_an_instance_index_or_numeric_oid_is_ascii_digits_only(tmp_path: Path) -> None:
    """MibResolver.lookup parsed indexes with int(): 'ifOperStatus.-1' and 'ifOperStatus.1_0' were
    accepted (and never matched a trap), and other scripts' digits ('\u0661\u0667', full-width) read as
    17, as parse_oid also did for numeric OIDs. One parser, ASCII digits, for both."""
    text = """
        rules:
          - {name: a, match: {notification: linkDown, varbinds: {ifOperStatus.-1: down}}, cancel: a}
          - {name: b, match: {notification: linkDown, varbinds: {ifOperStatus.1_0: down}}, cancel: b}
          - {name: c, match: {notification: linkDown, varbinds: {"ifOperStatus.ARABIC17": down}}, cancel: c}
          - {name: d, match: {notification: "1.3.6.1.6.3.1.1.5.\uff13"}, cancel: d}
          - {name: e, match: {notification: linkDown, varbinds: {IF-MIB::ifOperStatus.17: down}}, cancel: e}
        """.replace("ARABIC17", "\u0661\u0667")
    got = [line.split(": error: ")[0] for line in errors_of(tmp_path, text) if "unknown MIB symbol" in line]
    assert got == ["2:58", "3:58", "4:58", "5:37"], errors_of(tmp_path, text)
    assert resolver().lookup("ifOperStatus.-1") is None
    assert resolver().lookup("1.3.6.1.\uff16") is None
    assert resolver().lookup("IF-MIB::ifOperStatus.17") == (1, 3, 6, 1, 2, 1, 2, 2, 1, 8, 17)


def test_a_numeric_oid_no_snmp_message_can_carry_is_an_error(tmp_path: Path) -> None:
    """The listener's BER decoder refuses an OID with a sub-identifier of 2^32 or more (and one that
    X.690 cannot begin with): a rule naming one was accepted by `trapd check` and never matched."""
    got = errors_of(
        tmp_path,
        """
        rules:
          - name: big
            match:
              notification: 1.3.6.1.4.1.4294967296.1
              varbinds: {"ifIndex.4294967296": 1, "3.1.2": 1}
            cancel: x
        """,
    )
    assert any(
        "notification: '1.3.6.1.4.1.4294967296.1' can never match: sub-identifier 4294967296 is 2^32 or more"
        in g
        for g in got
    ), got
    assert any("'ifIndex.4294967296' can never match: sub-identifier 4294967296" in g for g in got), got
    assert any("'3.1.2' can never match: 3.1 cannot begin an OID" in g for g in got), got
    assert not any("unknown MIB symbol" in g for g in got), got


@pytest.mark.parametrize(
    "written,meant",
    [
        ("IF-MIB::linkDwn", "IF-MIB::linkDown"),
        ("linkDwn", "linkDown"),
        ("IF-MIB::ifIndx", "IF-MIB::ifIndex"),
        ("IF-MI::linkDown", "IF-MIB::linkDown"),
        ("ifOperStats.17", "ifOperStatus.17"),
    ],
)
def test_an_unknown_mib_symbol_suggests_the_name_meant(tmp_path: Path, written: str, meant: str) -> None:
    """A misspelt name was told to "load the MIB that defines it": an operator went looking for a
    MIB file when a letter was missing."""
    text = f"""
        rules:
          - name: r
            match: {{notification: linkDown, varbinds: {{"{written}": 1}}}}
            cancel: x
        """
    (line,) = [g for g in errors_of(tmp_path, text) if "unknown MIB symbol" in g]
    assert f"(did you mean {meant!r}?" in line, line


def test_trapd_test_suggests_the_name_meant() -> None:
    from trapd.rules.compact import CompactError

    with pytest.raises(CompactError, match="did you mean 'IF-MIB::linkDown'"):
        event("IF-MIB::linkDwn from 10.0.0.1")
    with pytest.raises(CompactError, match="did you mean 'ifIndex'"):
        event("linkDown ifIndx=3")


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ("1.3.6.1.4.1.9.4294967296 from 10.0.0.1", "'1.3.6.1.4.1.9.4294967296' can never be"),
        ("linkDown ifIndex.4294967296=3", "'ifIndex.4294967296' can never be"),
        (
            "linkDown 1.3.6.1.4.1.9.99999999999999999999=3",
            "'1.3.6.1.4.1.9.99999999999999999999' can never be",
        ),
        ("linkDown snmpTrapOID=1.3.6.1.4294967296", "'1.3.6.1.4294967296' can never be"),
    ],
)
def test_trapd_test_refuses_an_oid_no_snmp_message_can_carry(line: str, said: str) -> None:
    """SNMP sub-identifiers are 32-bit unsigned. `trapd test` made an event of a notification or
    varbind named with an arc of 2^32 or more, and said 'no match' of every rule, as if the rules
    were wrong: no trap can carry it (trapd check refuses the same name in a rule)."""
    from trapd.rules.compact import CompactError

    with pytest.raises(CompactError) as excinfo:
        event(line)
    assert said in str(excinfo.value) and "2^32 or more, which no SNMP message can carry" in str(
        excinfo.value
    )


def test_close_names_are_looked_for_a_bounded_number_of_times(tmp_path: Path) -> None:
    """Each look is a scan of the MIB names (milliseconds): a generated file of thousands of rules
    naming what no loaded MIB defines must still be refused in moments."""
    from trapd.rules.compile_context import MAX_HINTS

    rules = "".join(
        f"  - {{name: r{i}, match: {{notification: linkDown, varbinds: {{ifIndx{i}: 1}}}}, cancel: x}}\n"
        for i in range(MAX_HINTS * 2)
    )
    got = [g for g in errors_of(tmp_path, "rules:\n" + rules) if "unknown MIB symbol" in g]
    assert len(got) == MAX_HINTS * 2
    assert sum("did you mean 'ifIndex" in g for g in got) == MAX_HINTS, got[:3]
