"""Evaluation: order and stop/continue, modes, foreach over decoded items, action controls, index, reload."""

from __future__ import annotations

from pathlib import Path

import pytest
from rules_support import ACTIONS, event, resolver, ruleset, write

from trapd.event import Event
from trapd.rules import RuleErrors, RuleSet, load_rules
from trapd.rules.outcome import RateCap, RetryPolicy

LINKDOWN = "IF-MIB::linkDown from 10.20.1.5 ifIndex=17 ifDescr=Gi1/0/17 ifOperStatus=down"
LINKUP = "IF-MIB::linkUp from 10.20.1.5 ifIndex=17 ifDescr=Gi1/0/17 ifOperStatus=up"


def tup(op: int, vlan: int, mac: str, port: int) -> str:
    return f"{op:02x}{vlan:04x}{mac.replace(':', '')}{port:04x}"


def mac_event(*tuples: str, source: str = "10.20.1.5") -> Event:
    return event(f"cmnMacChangedNotification from {source} cmnHistMacChangedMsg.1=0x{''.join(tuples)}")


ORDER = """
rules:
  - name: first
    match: {notification: linkDown}
    cancel: first
  - name: second
    match: {notification: linkDown}
    cancel: second
  - name: third
    match: {}
    cancel: third
"""


def test_first_matching_rule_stops(tmp_path: Path) -> None:
    rs = ruleset(tmp_path, ORDER)
    out = rs.evaluate(event(LINKDOWN))
    assert out.matched == ("first",) and out.cancels == ("first",)
    assert rs.evaluate(event(LINKUP)).matched == ("third",)
    statuses = [(t.rule, t.status) for t in rs.explain(event(LINKDOWN))]
    assert statuses == [("first", "matched"), ("second", "not-reached"), ("third", "not-reached")]


def test_continue_lets_later_rules_run(tmp_path: Path) -> None:
    rs = ruleset(tmp_path, ORDER.replace("    cancel: first", "    cancel: first\n    continue: true"))
    assert rs.evaluate(event(LINKDOWN)).matched == ("first", "second")


def test_disabled_rule_is_skipped(tmp_path: Path) -> None:
    rs = ruleset(tmp_path, ORDER.replace("  - name: first\n", "  - name: first\n    enabled: false\n"))
    assert rs.evaluate(event(LINKDOWN)).matched == ("second",)
    assert rs.explain(event(LINKDOWN))[0].status == "disabled"
    assert rs.names == ("first", "second", "third")


def test_non_matching_event_gives_an_empty_outcome(tmp_path: Path) -> None:
    rs = ruleset(tmp_path, "rules:\n  - {name: a, match: {notification: linkUp}, cancel: x}\n")
    out = rs.evaluate(event(LINKDOWN))
    assert out.empty
    (trace,) = rs.explain(event(LINKDOWN))
    assert trace.status == "no-match"
    assert trace.reason == "notification IF-MIB::linkDown is not linkUp"
    assert trace.reason_mark is not None and (trace.reason_mark.line, trace.reason_mark.column) == (2, 37)


def test_explain_names_the_first_failing_condition(tmp_path: Path) -> None:
    rs = ruleset(
        tmp_path,
        """
rules:
  - name: r
    match:
      notification: linkDown
      source: 10.20.0.0/16
      varbinds:
        ifOperStatus: down
        ifIndex: {range: [1, 10]}
        ifDescr: {regex: 'Te.*'}
    cancel: x
""",
    )
    (t,) = rs.explain(event(LINKDOWN))
    assert t.reason == "varbind ifIndex: 17 is not in range [1, 10]"
    assert t.reason_mark is not None and (t.reason_mark.line, t.reason_mark.column) == (8, 9)


MODES = """
defaults: {mode: dry-run, cap: {limit: 5, per: 1m}}
rules:
  - name: default-mode
    match: {notification: linkDown}
    continue: true
    actions: [{action: log, message: a}]
  - name: enforcing
    mode: enforce
    match: {notification: linkDown}
    actions: [{action: log, message: b}]
"""


def test_modes(tmp_path: Path) -> None:
    out = ruleset(tmp_path, MODES).evaluate(event(LINKDOWN))
    assert [(p.rule, p.mode) for p in out.planned] == [("default-mode", "dry-run"), ("enforcing", "enforce")]
    # the global mode (trapd.yaml mode: / --dry-run) overrides every rule
    out = ruleset(tmp_path, MODES, global_mode="dry-run").evaluate(event(LINKDOWN))
    assert {p.mode for p in out.planned} == {"dry-run"}
    with pytest.raises(Exception, match="mode must be"):
        load_rules([write(tmp_path, MODES)], resolver(), ACTIONS, global_mode="yolo")


MAC_RULES = """
sources: {access: [10.20.0.0/16]}
defaults:
  cap: {limit: 50, per: 1m, key: "{{ source }}"}
rules:
  - name: mac-removed
    match:
      notification: CISCO-MAC-NOTIFICATION-MIB::cmnMacChangedNotification
      source: access
    foreach:
      items: mac_changes
      where: {operation: removed, vlan: {range: [2, 4094]}}
    continue: true
    actions:
      - action: kea.lease-del
        hw-address: "{{ item.mac }}"
        delay: 30s
        cancel-key: "mac:{{ item.mac }}"
        once-within: 5m
  - name: mac-learnt
    match: {notification: cmnMacChangedNotification}
    foreach: {items: mac_changes, where: {operation: learnt}}
    cancel: "mac:{{ item.mac }}"
  - name: fallback
    match: {notification: cmnMacChangedNotification}
    actions: [{action: log, message: "no mac change rule for {{ source }}"}]
"""


def test_foreach_plans_one_action_per_matching_item(tmp_path: Path) -> None:
    rs = ruleset(tmp_path, MAC_RULES)
    ev = mac_event(
        tup(2, 100, "00:11:22:33:44:55", 3),
        tup(1, 100, "00:11:22:33:44:66", 4),
        tup(2, 1, "00:11:22:33:44:77", 5),  # VLAN 1 is filtered out by where:
        tup(2, 200, "00:11:22:33:44:88", 6),
    )
    out = rs.evaluate(ev)
    assert out.matched == ("mac-removed", "mac-learnt")
    assert [p.params["hw-address"] for p in out.planned] == ["00:11:22:33:44:55", "00:11:22:33:44:88"]
    first = out.planned[0]
    assert first.item == {
        "operation": "removed",
        "vlan": 100,
        "mac": "00:11:22:33:44:55",
        "port": 3,
        "vendor": "cisco",
    }
    assert first.delay == 30.0 and first.cancel_key == "mac:00:11:22:33:44:55"
    assert (
        first.once_within == 300.0
        and first.once_key == "mac-removed#0:kea.lease-del:hw-address=00:11:22:33:44:55"
    )
    assert first.key == "kea.lease-del:hw-address=00:11:22:33:44:55"
    assert first.caps == (
        RateCap(name="defaults", limit=50, per=60.0, key="10.20.1.5", hold_for=3600.0, every_rule=True),
    )
    assert out.cancels == ("mac:00:11:22:33:44:66",)


def test_foreach_without_passing_items_does_not_match(tmp_path: Path) -> None:
    rs = ruleset(tmp_path, MAC_RULES)
    out = rs.evaluate(mac_event(tup(2, 1, "00:11:22:33:44:77", 5)))  # only VLAN 1
    assert out.matched == ("fallback",)
    trace = rs.explain(mac_event(tup(2, 1, "00:11:22:33:44:77", 5)))[0]
    assert trace.status == "no-match" and trace.reason is not None and "no item matched" in trace.reason


def test_truncated_mac_message_is_rejected_but_complete_items_still_act(tmp_path: Path) -> None:
    rs = ruleset(tmp_path, MAC_RULES)
    out = rs.evaluate(mac_event(tup(2, 100, "00:11:22:33:44:55", 3), "0200"))
    assert out.matched == ("mac-removed", "fallback")
    assert [p.params.get("hw-address") for p in out.planned] == ["00:11:22:33:44:55", None]
    assert {(r.rule, r.action, r.index) for r in out.rejected} == {
        ("mac-removed", "foreach", -1),
        ("mac-learnt", "foreach", -1),
    }
    assert all("truncated tuple at offset 11: 2 octets of 11" in r.reason for r in out.rejected)
    assert {r.kind for r in out.rejected} == {"decoder"}


def test_action_controls(tmp_path: Path) -> None:
    rs = ruleset(
        tmp_path,
        """
defaults:
  retry: {max-attempts: 3, backoff: 5s}
rules:
  - name: port-down
    match: {notification: linkDown}
    cap: {limit: 20, per: 1m, key: "{{ source }}"}
    retry: {max-age: 10m}
    actions:
      - action: kea.lease-del
        circuit-id: "{{ source }}/{{ ifDescr }}"
        key: "port:{{ source }}:{{ ifIndex }}"
        cap: [{limit: 2, per: 10s, name: burst}, {limit: 100, per: 1h, hold-for: 2h}]
        retry: {max-attempts: 10}
        once-within: 1m
        once-key: "{{ source }}"
      - action: log
        message: x
        cap: {limit: 1, per: 1s}
""",
    )
    a, b = rs.evaluate(event(LINKDOWN)).planned
    assert a.key == "port:10.20.1.5:17" and a.once_key == "10.20.1.5"
    assert a.retry == RetryPolicy(max_attempts=10, max_age=600.0, backoff=5.0)
    assert a.caps == (
        RateCap("burst", 2, 10.0, "", 3600.0),
        RateCap("port-down#0/1", 100, 3600.0, "", 7200.0),
        RateCap("port-down", 20, 60.0, "10.20.1.5", 3600.0),
    )
    # a non-destructive action keeps only its own cap; rule and default caps count destructive actions
    assert b.caps == (RateCap("port-down#1", 1, 1.0, "", 3600.0),)
    # no key parameters and no key: its own key, so such actions never wait for each other
    assert b.key.startswith("port-down#1@")
    assert b.retry == RetryPolicy(max_attempts=3, max_age=600.0, backoff=5.0)


def test_captures_do_not_leak_between_rules(tmp_path: Path) -> None:
    rs = ruleset(
        tmp_path,
        """
rules:
  - name: a
    match: {varbinds: {ifDescr: {regex: 'Gi(?P<slot>\\d+)/0/99'}}}
    cancel: x
  - name: b
    match: {varbinds: {ifDescr: {regex: 'Gi(?P<slot>\\d+)/0/(?P<port>\\d+)'}}}
    cancel: "{{ slot }}-{{ port }}"
""",
    )
    assert rs.evaluate(event(LINKDOWN)).cancels == ("1-17",)


def test_index_selects_candidates_not_every_rule(tmp_path: Path) -> None:
    lines = ["rules:"]
    for i in range(200):
        lines.append(f"  - {{name: r{i}, match: {{notification: '1.3.6.1.4.1.99999.{i}'}}, cancel: x}}")
    lines.append("  - {name: under, match: {notification: {under: snmpTraps}}, cancel: x, continue: true}")
    lines.append("  - {name: generic, match: {source: 192.168.0.0/16}, cancel: x}")
    lines.append("  - {name: down, match: {notification: linkDown}, cancel: x}")
    rs = ruleset(tmp_path, "\n".join(lines) + "\n")
    names = [r.name for r in rs.candidates((1, 3, 6, 1, 6, 3, 1, 1, 5, 3))]
    assert names == ["under", "generic", "down"]
    assert [r.name for r in rs.candidates((1, 3, 6, 1, 4, 1, 99999, 7))] == ["r7", "generic"]
    assert rs.evaluate(event(LINKDOWN)).matched == ("under", "down")
    nodes = rs._index.nodes
    for i in range(5000):  # a storm of distinct OIDs and sources keeps the caches bounded
        rs.candidates((1, 3, 6, 1, 4, 1, 12345, i))
        rs.evaluate(event(f"1.3.6.1.4.1.12345.{i} from 10.{i // 256}.{i % 256}.1"))
    assert rs._index.nodes == nodes and len(rs._group_cache) <= 65536  # the index keeps no per-event state
    assert len(rs._candidates) <= 4096


def test_ruleset_is_immutable_and_reload_keeps_the_old_one(tmp_path: Path) -> None:
    good = write(tmp_path, "rules:\n  - {name: a, match: {notification: linkDown}, cancel: x}\n")
    rs = load_rules([good], resolver(), ACTIONS)
    assert isinstance(rs, RuleSet)
    with pytest.raises(AttributeError):
        rs.rules.append(None)  # type: ignore[attr-defined]
    bad = write(
        tmp_path, "rules:\n  - {name: a, match: {notification: nosuch}, cancel: x}\n  - nope\n", "bad.yaml"
    )
    with pytest.raises(RuleErrors) as info:
        load_rules([bad], resolver(), ACTIONS)
    assert [e.mark.line for e in info.value.errors if e.mark] == [2, 3]
    assert isinstance(info.value, Exception) and "unknown MIB symbol 'nosuch'" in str(info.value)
    assert rs.evaluate(event(LINKDOWN)).cancels == ("x",)  # the running rules are untouched


def test_files_are_read_in_the_given_order(tmp_path: Path) -> None:
    a = write(tmp_path, "rules:\n  - {name: from-a, match: {}, cancel: a, continue: true}\n", "rules.yaml")
    b = write(
        tmp_path,
        "sources: {lab: [10.20.0.0/16]}\nrules:\n  - {name: from-b, match: {source: lab}, cancel: b}\n",
        "rules.d/10-b.yaml",
    )
    rs = load_rules([a, b], resolver(), ACTIONS)
    assert rs.evaluate(event(LINKDOWN)).matched == ("from-a", "from-b")


def test_foreach_regex_groups_are_those_of_the_item_planned(tmp_path: Path) -> None:
    """A where: regex's groups were kept in one dict for the whole event: every item's actions
    rendered the groups of the last item tested, even of an item the filter then refused."""
    rules = """
rules:
  - name: mac-removed
    match: {notification: cmnMacChangedNotification}
    foreach:
      items: mac_changes
      where: {mac: {regex: '(?P<oui>..:..:..):.*'}, operation: removed}
    cancel: "{{ oui }}"
    actions:
      - action: log
        message: "{{ oui }} {{ groups.oui }} {{ item.mac }}"
"""
    rs = ruleset(tmp_path, rules)
    ev = mac_event(
        tup(2, 100, "00:11:22:33:44:55", 3),
        tup(2, 100, "aa:bb:cc:33:44:66", 4),
        tup(1, 100, "ff:ff:ff:33:44:77", 5),  # learnt: its mac matches the regex, its operation does not
    )
    want = ["00:11:22 00:11:22 00:11:22:33:44:55", "aa:bb:cc aa:bb:cc aa:bb:cc:33:44:66"]
    out = rs.evaluate(ev)
    assert [p.params["message"] for p in out.planned] == want
    assert out.cancels == ("00:11:22", "aa:bb:cc")
    (trace,) = [t for t in rs.explain(ev) if t.status == "matched"]
    assert [p.params["message"] for p in trace.outcome.planned] == want


@pytest.mark.parametrize("value", ["0x41424300", "0x6f6e650974776f", "0x00ff", "0x4142"])
def test_trapd_test_reads_an_unnamed_octet_value_as_the_daemon_does(tmp_path: Path, value: str) -> None:
    """For an OID no MIB names, the compact form showed 0x octets as hex, where the listener shows
    text (trailing NULs dropped, tabs kept): a rule on that text matched in `trapd run` only."""
    import json

    from trapd.listener.raw import RawNotification, Security
    from trapd.normalize import Normalizer

    oid = (1, 3, 6, 1, 4, 1, 99999, 7, 1)
    raw = bytes.fromhex(value[2:])
    received = Normalizer(resolver()).normalize(
        RawNotification(
            version="v2c",
            kind="trap",
            source="10.20.1.5",
            source_port=162,
            security=Security(community="public"),
            varbinds=[
                ((1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0), "ObjectIdentifier", (1, 3, 6, 1, 6, 3, 1, 1, 5, 3)),
                (oid, "OctetString", raw),
            ],
            received_at=0.0,
        )
    )
    typed = event(f"IF-MIB::linkDown from 10.20.1.5 1.3.6.1.4.1.99999.7.1={value}")
    assert typed.varbinds[0].display == received.varbinds[0].display
    shown = received.varbinds[0].display
    match = f"{{varbinds: {{'1.3.6.1.4.1.99999.7': {json.dumps(shown)}}}}}"
    rs = ruleset(tmp_path, f"rules:\n  - {{name: r, match: {match}, cancel: x}}\n")
    assert rs.evaluate(typed).matched == rs.evaluate(received).matched == ("r",)
