"""Random YAML documents never crash `trapd check`: only clean, positioned errors.

Documents are built from the rule language's own vocabulary (so they reach
deep into the compiler) mixed with junk, dumped as YAML, and also mangled as
text. Fixed seed (derandomize), bounded example counts.
"""

from __future__ import annotations

import random
from pathlib import Path
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rules_support import ACTIONS, event, resolver

from trapd.rules import Rule, RuleSet, compile_rules
from trapd.rules import index as rule_index
from trapd.rules.compiler import (
    ACTION_CONTROL_KEYS,
    CAP_KEYS,
    FILE_KEYS,
    MATCH_KEYS,
    RETRY_KEYS,
    RULE_KEYS,
    VALUE_OPS,
)
from trapd.rules.conditions import EvalState
from trapd.rules.shadow import shadow_warnings, shadows
from trapd.yamlsource import ConfigError

WORDS = sorted(
    FILE_KEYS
    | RULE_KEYS
    | MATCH_KEYS
    | VALUE_OPS
    | ACTION_CONTROL_KEYS
    | CAP_KEYS
    | RETRY_KEYS
    | {"items", "where", "under", "mac_changes", "operation", "removed"}
    | {
        "ifIndex",
        "ifDescr",
        "ifOperStatus",
        "ifIndex.17",
        "linkDown",
        "IF-MIB::linkUp",
        "1.3.6.1.6.3.1.1.5.3",
    }
    | {"kea.lease-del", "kea.dhcp-disable", "log", "webhook", "exec", "hw-address", "ip-address", "message"}
    | {"max-period", "argv", "url", "body", "access", "down", "up", "v2c", "v3", "enforce", "dry-run"}
)
SCALARS = st.one_of(
    st.sampled_from(WORDS),
    st.sampled_from(
        [
            "{{ source }}",
            "{{ item.mac }}",
            "{{ ifIndex | mac }}",
            "{{ nope",
            "{% for x in y %}",
            "(?P<slot>\\d+)",
            "(",
            "10.0.0.0/8",
            "!10.9.0.0/16",
            "2001:db8::/32",
            "30s",
            "5m",
            "-1s",
            "",
            "!",
        ]
    ),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=12),
)


def _node() -> st.SearchStrategy[object]:
    return st.recursive(
        SCALARS,
        lambda kids: st.one_of(
            st.lists(kids, max_size=4),
            st.dictionaries(st.one_of(st.sampled_from(WORDS), st.text(max_size=6)), kids, max_size=5),
        ),
        max_leaves=25,
    )


def _document() -> st.SearchStrategy[object]:
    rule = st.dictionaries(st.sampled_from(sorted(RULE_KEYS)), _node(), max_size=7)
    return st.one_of(
        _node(),
        st.fixed_dictionaries(
            {"rules": st.lists(rule, max_size=4)},
            optional={"sources": _node(), "defaults": _node()},
        ),
    )


def _run(tmp_path: Path, text: str) -> None:
    p = tmp_path / "fuzz.yaml"
    p.write_text(text, encoding="utf-8")
    ruleset, problems = compile_rules([p], resolver(), ACTIONS)  # must not raise, whatever the input
    assert isinstance(ruleset, RuleSet)
    for prob in problems:
        assert isinstance(prob, ConfigError)
        assert prob.mark is not None and prob.mark.file == str(p), prob
        assert prob.mark.line >= 1 and prob.mark.column >= 1
        assert prob.message and "Traceback" not in prob.message
    # whatever compiled must also evaluate without raising
    for ev in EVENTS:
        ruleset.evaluate(ev)
        ruleset.explain(ev)


EVENTS = [
    event("IF-MIB::linkDown from 10.20.1.5 ifIndex=17 ifDescr=Gi1/0/17 ifOperStatus=down"),
    event("cmnMacChangedNotification from 10.0.0.1 cmnHistMacChangedMsg.1=0x020064001122334455000702"),
]


@settings(
    max_examples=300,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(_document())
def test_random_documents_give_clean_errors(tmp_path: Path, doc: object) -> None:
    _run(tmp_path, yaml.safe_dump(doc, allow_unicode=True, sort_keys=False))


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    _document(),
    st.lists(st.tuples(st.integers(0, 400), st.sampled_from(list(":-{}[]'\"&*!|>%@`\n\t #"))), max_size=6),
)
def test_mangled_yaml_text_gives_clean_errors(
    tmp_path: Path, doc: object, edits: list[tuple[int, str]]
) -> None:
    text = yaml.safe_dump(doc, allow_unicode=True, sort_keys=False)
    for pos, ch in edits:
        pos = min(pos, len(text))
        text = text[:pos] + ch + text[pos:]
    _run(tmp_path, text)


TOKENS = st.one_of(
    st.sampled_from(
        [
            "from",
            "linkDown",
            "IF-MIB::linkUp",
            "ifIndex=3",
            "ifIndex.x=3",
            "ifOperStatus=sideways",
            "=",
            "a=b",
            "version=v9",
            "uptime=x",
            "0x",
            "cmnHistMacChangedMsg.1=0xzz",
            "[::1]:99",
            "10.0.0.1:x",
            "1.3.6.1=4",
        ]
    ),
    st.text(max_size=10),
)


@settings(max_examples=300, derandomize=True, deadline=None)
@given(st.lists(TOKENS, max_size=6))
def test_compact_event_form_fails_cleanly(words: list[str]) -> None:
    from trapd.rules.compact import CompactError, parse_compact

    try:
        parse_compact(words, resolver())
    except CompactError as exc:
        assert str(exc)


# ---------------------------------------------------------------- the index against a linear scan

NOTIFICATIONS: list[object] = [
    "linkDown",
    "IF-MIB::linkUp",
    "1.3.6.1.4.1.99.1",
    {"under": "snmpTraps"},
    {"under": "1.3.6.1.4.1.99"},
    {"under": "1.3.6.1.4.1.99.1"},  # the whole OID of an event's notification
    ["linkDown", "1.3.6.1.4.1.99.2.5"],
]
SOURCES: list[object] = [
    "10.0.0.1",
    "10.0.0.0/24",
    "10.0.0.0/8",
    "!10.0.0.1",
    ["10.0.0.1", "10.0.1.1"],
    ["10.0.0.0/8", "10.0.0.0/24"],
    "192.168.0.0/16",
    "2001:db8::/32",
    {"not": "10.0.0.0/24"},
    "lab",  # a group with an exclusion
    ["lab", "10.0.0.1"],  # a union: the group's exclusion is its own
    ["10.0.0.0/8", "!10.0.0.0/24", "2001:db8::/32"],
    "::ffff:10.0.0.0/120",  # written mapped, compared as IPv4
]
VARBIND_SPECS: dict[str, list[object]] = {
    "ifIndex": [
        17,
        18,
        "17",
        17.0,
        [17, 18],
        {"gt": 10},
        {"ne": 17},
        {"one-of": [1, 17]},
        {"exists": True},
        list(range(10, 20)),
        {"exists": False},
        {"index": 2},
        {"equals": 17, "index": {"range": [1, 2]}},
    ],
    "ifIndex.2": [17, [5, 17]],  # one instance
    "ifOperStatus": ["down", "up", 2, ["down", "lowerLayerDown"], {"equals": "down", "ne": "up"}],
    "ifDescr": ["Gi1/0/17", {"regex": "Gi(?P<port>.*)"}, ["Gi1/0/17", "Te1/1"], "17", ["17", "Te1/1"]],
}


def _match() -> st.SearchStrategy[dict[str, object]]:
    varbinds = st.fixed_dictionaries({}, optional={k: st.sampled_from(v) for k, v in VARBIND_SPECS.items()})
    plain = st.fixed_dictionaries(
        {},
        optional={
            "notification": st.sampled_from(NOTIFICATIONS),
            "source": st.sampled_from(SOURCES),
            "varbinds": varbinds,
            "version": st.sampled_from(["v2c", ["v1", "v2c"]]),
        },
    )
    return st.one_of(
        plain,
        plain,
        plain.map(lambda m: {"all": [m or {"version": "v2c"}]}),
        st.tuples(plain, plain).map(
            lambda ab: {**ab[0], "any": [ab[1] or {"version": "v1"}, {"version": "v1"}]}
        ),
        st.tuples(plain, plain).map(lambda ab: {**ab[0], "not": ab[1] or {"version": "v1"}}),
    )


RULE = st.fixed_dictionaries(
    {"match": _match(), "continue": st.booleans(), "enabled": st.sampled_from([True, True, True, False])}
)
EVENT_WORDS = st.tuples(
    st.sampled_from(["linkDown", "IF-MIB::linkUp", "1.3.6.1.4.1.99.1", "1.3.6.1.4.1.99.2.5", "coldStart"]),
    st.sampled_from(["10.0.0.1", "10.0.1.1", "10.1.2.3", "192.168.1.1", "2001:db8::5", "::ffff:10.0.0.1"]),
    st.sampled_from(
        ["ifIndex=17", "ifIndex=18", "ifIndex=5", "", "ifIndex.1=5 ifIndex.2=17", "ifIndex.2=0x3137"]
    ),
    st.sampled_from(["ifOperStatus=down", "ifOperStatus=up", "ifOperStatus=lowerLayerDown", ""]),
    st.sampled_from(["ifDescr=Gi1/0/17", "ifDescr=Te1/1", "", "ifDescr=17", "ifDescr=0x3137"]),
    st.sampled_from(["version=v1", "version=v2c"]),
).map(lambda w: f"{w[0]} from {' '.join(x for x in w[1:] if x)}")


SOURCE_GROUPS = {"lab": ["10.0.0.0/8", "!10.0.1.0/24"]}


def _rules_yaml(rules: list[dict[str, object]], *, actions: bool = False) -> str:
    """``actions``: each rule also logs a message (ifIndex is undefined in some events: a rejection)."""
    doc = [
        {
            "name": f"r{i}",
            **r,
            "cancel": f"r{i}:{{{{ source }}}}" + (":{{ port }}" if "port>" in str(r) else ""),
        }
        for i, r in enumerate(rules)
    ]
    if actions:
        for i, rule in enumerate(doc):
            port = " {{ port }}" if "port>" in str(rule) else ""
            rule["actions"] = [{"action": "log", "message": f"r{i} {{{{ ifIndex }}}}{port}"}]
    return yaml.safe_dump({"sources": SOURCE_GROUPS, "rules": doc}, sort_keys=False)


@pytest.mark.parametrize("max_paths", [1, rule_index.MAX_PATHS])
@settings(
    max_examples=100,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(RULE, min_size=1, max_size=12), st.lists(EVENT_WORDS, min_size=1, max_size=8))
def test_indexed_matching_equals_a_linear_scan(
    tmp_path: Path, max_paths: int, rules: list[dict[str, object]], events: list[str]
) -> None:
    """evaluate() (through the index) matches, in order and with stop, what explain() (every rule) does.

    With room for one path a rule, every list of alternatives is too many for the index: what it
    leaves to the rule's own test must be tested (and what it still proves must not be).
    """
    p = tmp_path / "rules.yaml"
    p.write_text(_rules_yaml(rules, actions=True), encoding="utf-8")
    with mock.patch.object(rule_index, "MAX_PATHS", max_paths):
        rs, _problems = compile_rules([p], resolver(), ACTIONS)
    for words in events:
        ev = event(words)
        got = rs.evaluate(ev)
        traces = [t for t in rs.explain(ev) if t.status == "matched"]
        assert got.matched == tuple(t.rule for t in traces), words
        assert got.cancels == tuple(c for t in traces for c in t.outcome.cancels), words
        # trapd test shows explain(); the daemon runs evaluate(): the same actions, planned alike.
        assert got.planned == tuple(pa for t in traces for pa in t.outcome.planned), words
        assert got.rejected == tuple(r for t in traces for r in t.outcome.rejected), words


def _linear_shadow(rules: list[Rule]) -> list[tuple[str, str]]:
    out = []
    for i, b in enumerate(rules):
        if b.enabled:
            a = next((a for a in rules[:i] if shadows(a, b)), None)
            if a is not None:
                out.append((b.name, a.name))
    return out


@settings(
    max_examples=150,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(st.lists(RULE, min_size=1, max_size=12))
def test_shadow_findings_equal_comparing_every_pair(tmp_path: Path, rules: list[dict[str, object]]) -> None:
    p = tmp_path / "rules.yaml"
    p.write_text(_rules_yaml(rules), encoding="utf-8")
    rs, _problems = compile_rules([p], resolver(), ACTIONS)
    got = [(b.name, a.name) for b, a in shadow_warnings(list(rs.rules))]
    assert got == _linear_shadow(list(rs.rules))


def _specs() -> tuple[list[dict[str, object]], list[dict[str, object]], list[dict[str, object]]]:
    notes: list[dict[str, object]] = [{"notification": n} for n in NOTIFICATIONS]
    sources: list[dict[str, object]] = [{"source": s} for s in SOURCES]
    varbinds: list[dict[str, object]] = [
        {"varbinds": {name: spec}} for name, specs in VARBIND_SPECS.items() for spec in specs
    ]
    return notes, sources, varbinds


@pytest.mark.parametrize("max_paths", [1, rule_index.MAX_PATHS])
def test_every_pair_of_condition_shapes_matches_as_a_linear_scan(tmp_path: Path, max_paths: int) -> None:
    """Exhaustive where the random test samples: each two kinds of condition, every shape of each,
    as rules that all continue, against events with every notification and source."""
    notes, sources, varbinds = _specs()
    pairs = [
        {**a, **b}
        for group_a, group_b in ((notes, sources), (notes, varbinds), (sources, varbinds))
        for a in group_a
        for b in group_b
    ]
    rules = [
        {"name": f"r{i}", "match": m, "continue": True}
        for i, m in enumerate([*notes, *sources, *varbinds, *pairs])
    ]
    p = tmp_path / "rules.yaml"
    p.write_text(
        yaml.safe_dump({"sources": SOURCE_GROUPS, "rules": rules}, sort_keys=False), encoding="utf-8"
    )
    with mock.patch.object(rule_index, "MAX_PATHS", max_paths):
        rs, problems = compile_rules([p], resolver(), ACTIONS)
    assert not [x for x in problems if x.severity == "error"], problems[:3]
    assert len(rs) == len(rules)
    oids = ["linkDown", "IF-MIB::linkUp", "1.3.6.1.4.1.99.1", "1.3.6.1.4.1.99.2.5", "coldStart"]
    senders = ["10.0.0.1", "10.0.1.1", "10.1.2.3", "192.168.1.1", "2001:db8::5", "::ffff:10.0.0.1"]
    bindings = [
        "ifIndex=17 ifOperStatus=down ifDescr=Gi1/0/17",
        "ifIndex=18 ifOperStatus=lowerLayerDown ifDescr=Te1/1",
        "ifIndex.1=5 ifIndex.2=17 ifDescr=17",
        "ifIndex.2=0x3137 ifDescr=0x3137 ifOperStatus=up",
        "",
    ]
    for oid in oids:
        for sender in senders:
            for vbs in bindings:
                ev = event(f"{oid} from {sender} {vbs}")
                got = rs.evaluate(ev)
                st = EvalState(ev)
                want = tuple(r.name for r in rs.rules if r.condition.test(st))
                assert got.matched == want, (oid, sender, vbs)


EXTRA_SHAPES: list[dict[str, object]] = [
    {"version": "v2c"},
    {"version": ["v1", "v2c"]},
    {"community": "public"},
    {"community": ["public", "x"]},
    {"community": {"regex": "pub.*"}},
    {"kind": "trap"},
    {"any": [{"source": "10.0.0.1"}, {"version": "v1"}]},
    {"not": {"source": "10.0.0.0/24"}},
    {"source": {"not": "10.0.0.1"}},
    {"source": ["!10.0.0.1"]},
    {"source": ["lab", "!10.0.0.7"]},
    {"source": {"not": ["10.0.0.0/8", "!10.0.0.1"]}},
    {"varbinds": {"ifIndex": {"range": [1, 20]}}},
    {"varbinds": {"ifIndex": {"not": 17}}},
    {"notification": {"under": "IF-MIB"}},
    {"notification": {"under": "1.3.6.1.6.3.1.1.5"}},
    {},
]


def test_a_rule_warned_as_hidden_never_matches_alone(tmp_path: Path) -> None:
    """The can-never-match warning is sound: whenever it says A hides B, every event that B
    matches, A matches too (checked on every pair of shapes, single and paired, over events
    with every notification, sender, binding set and security)."""
    notes, sources, varbinds = _specs()
    singles = [*notes, *sources, *varbinds, *EXTRA_SHAPES]
    rnd = random.Random(7)
    shapes = singles + [{**a, **b} for a, b in (rnd.sample(singles, 2) for _ in range(120))]
    rules = [{"name": f"r{i}", "match": m, "cancel": "x"} for i, m in enumerate(shapes)]
    p = tmp_path / "rules.yaml"
    p.write_text(
        yaml.safe_dump({"sources": SOURCE_GROUPS, "rules": rules}, sort_keys=False), encoding="utf-8"
    )
    rs, problems = compile_rules([p], resolver(), ACTIONS)
    assert not [x for x in problems if x.severity == "error"], problems[:3]
    compiled = list(rs.rules)
    events = [
        event(f"{oid} from {sender} {vbs} {sec}")
        for oid in [
            "linkDown",
            "IF-MIB::linkUp",
            "1.3.6.1.4.1.99.1",
            "1.3.6.1.4.1.99.2.5",
            "1.3.6.1.6.3.1.1.5.7",
        ]
        for sender in ["10.0.0.1", "10.0.1.1", "10.0.0.7", "10.1.2.3", "2001:db8::5", "::ffff:10.0.0.1"]
        for vbs in [
            "ifIndex=17 ifOperStatus=down ifDescr=Gi1/0/17",
            "ifIndex.1=5 ifIndex.2=17 ifDescr=17",
            "",
        ]
        for sec in ["version=v1 community=public", "version=v2c community=pubx", "version=v3 user=u"]
    ]
    matches = []
    for r in compiled:
        matches.append([r.condition.test(EvalState(ev)) for ev in events])
    warned = 0
    for i, a in enumerate(compiled):
        for j, b in enumerate(compiled):
            if i != j and shadows(a, b):
                warned += 1
                only_b = [
                    k for k, (ma, mb) in enumerate(zip(matches[i], matches[j], strict=True)) if mb and not ma
                ]
                assert not only_b, (shapes[i], "said to hide", shapes[j], events[only_b[0]])
    assert warned > 100  # the grid does reach the warning
