"""Random YAML documents never crash `trapd check`: only clean, positioned errors.

Documents are built from the rule language's own vocabulary (so they reach
deep into the compiler) mixed with junk, dumped as YAML, and also mangled as
text. Fixed seed (derandomize), bounded example counts.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rules_support import ACTIONS, event, resolver

from trapd.rules import RuleSet, compile_rules
from trapd.rules.compiler import (
    ACTION_CONTROL_KEYS,
    CAP_KEYS,
    FILE_KEYS,
    MATCH_KEYS,
    RETRY_KEYS,
    RULE_KEYS,
    VALUE_OPS,
)
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
