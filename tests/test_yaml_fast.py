"""libyaml's fast path loads exactly what the pure-Python loader loads: values and every position."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from trapd.yamlsource import ConfigError, YDict, YList, _load_fast, _Loader, load_yaml, where

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML built without libyaml")


def _reference(text: str) -> Any:
    loader = _Loader(text)
    loader.source_name = "f.yaml"
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def _where_shape(node: Any) -> Any:
    """Values with the positions where() gives (asked before anything unpacks the fast tree)."""
    if isinstance(node, YDict):
        return (
            "map",
            where(node),
            [(k, where(node, k, of_key=True), where(node, k), _where_shape(v)) for k, v in node.items()],
        )
    if isinstance(node, YList):
        return (
            "seq",
            where(node),
            [where(node, i) for i in range(len(node))],
            [_where_shape(v) for v in node],
        )
    return (type(node).__name__, node)


def _same_as_reference(text: str) -> None:
    done, fast = _load_fast(text, "f.yaml")
    assert done
    assert _where_shape(fast) == _where_shape(_reference(text))
    assert _shape(fast) == _shape(_reference(text))


def _shape(node: Any) -> Any:
    """Values with their marks, so equality also compares every position."""
    if isinstance(node, YDict):
        return (
            "map",
            node.mark,
            [(k, node.key_marks[k], node.value_marks[k], _shape(v)) for k, v in node.items()],
        )
    if isinstance(node, YList):
        return ("seq", node.mark, list(node.item_marks), [_shape(v) for v in node])
    return (type(node).__name__, node)


@pytest.mark.parametrize("path", sorted(p for d in ("etc", "examples") for p in (ROOT / d).rglob("*.yaml")))
def test_shipped_files_load_identically(path: Path) -> None:
    _same_as_reference(path.read_text(encoding="utf-8"))


SCALAR = st.one_of(
    st.integers(),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
    st.sampled_from(["0x1F", "1e3", "yes", "~", "0o7"]),
)
DOC = st.recursive(
    SCALAR,
    lambda kids: st.one_of(
        st.lists(kids, max_size=4), st.dictionaries(st.text(max_size=5), kids, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, derandomize=True, deadline=None)
@given(DOC, st.booleans())
def test_random_documents_load_identically(doc: object, flow: bool) -> None:
    _same_as_reference(yaml.safe_dump(doc, default_flow_style=flow, allow_unicode=True))


def test_integer_keys_equal_to_a_packed_position() -> None:
    """The fast loader packs a position as line << 32 | column: an integer key of that value
    is still found as a key (here the first entry's key sits at line 1, column 1)."""
    _same_as_reference(f"a: 1\n{1 << 32 | 1}: b\n{(2 << 32) | 1}: [c]\nd: {{{1 << 32 | 4}: e}}\n")
    done, fast = _load_fast(f"a: 1\n{1 << 32 | 1}: b\n", "f.yaml")
    assert done
    assert str(where(fast, 1 << 32 | 1, of_key=True)) == "f.yaml:2:1"
    assert str(where(fast, 1 << 32 | 1)) == "f.yaml:2:13"
    assert str(where(fast, "a")) == "f.yaml:1:4"
    assert where(fast, "nosuch") == fast.mark


def test_block_scalars_are_marked_where_their_text_starts_by_both_loaders() -> None:
    text = "a: |\n  x {{ y }}\n  z\nb:\n  - >-\n    folded\n  - plain\n  - |+\n\n    kept\n"
    _same_as_reference(text)
    done, fast = _load_fast(text, "f.yaml")
    assert done
    assert [str(where(fast, "a")), str(where(fast["b"], 0)), str(where(fast["b"], 2))] == [
        "f.yaml:2:4",
        "f.yaml:6:5",
        "f.yaml:9:5",
    ]


def test_documents_with_aliases_or_errors_take_the_reference_path() -> None:
    assert _load_fast("a: &x [1, 2]\nb: *x\n", "f.yaml") == (False, None)
    assert load_yaml("a: &x [1, 2]\nb: *x\n", "f.yaml") == {"a": [1, 2], "b": [1, 2]}
    assert _load_fast("a: [1,\n", "f.yaml") == (False, None)
    with pytest.raises(ConfigError) as info:
        load_yaml("a: [1,\n", "f.yaml")
    assert str(info.value).startswith("f.yaml:2:1: YAML syntax")  # the pure-Python parser's message
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        load_yaml("a: 1\na: 2\n", "f.yaml")


def test_plain_words_read_as_the_reference_reads_them() -> None:
    """Plain text whose first character no implicit resolver looks at skips the resolver;
    booleans, nulls and numbers in all their YAML 1.1 spellings are still the reference's."""
    words = [
        "port-17",
        "Yes",
        "yes",
        "on",
        "Off",
        "null",
        "Null",
        "~",
        "",
        "true",
        "False",
        "n",
        "y",
        "x",
        "NaN",
        ".nan",
        ".inf",
        "-.inf",
        "+1",
        "1e3",
        "0x1F",
        "2001-12-14",
        "é",
        "<<x",
    ]
    _same_as_reference("".join(f"k{i}: {w}\n" for i, w in enumerate(words)))
    done, fast = _load_fast("a: port-17\nb: Yes\nc: é\n", "f.yaml")
    assert done
    assert fast == {"a": "port-17", "b": True, "c": "é"}


def test_plain_integers_read_as_the_reference_reads_them() -> None:
    """Decimal integers skip the resolver; YAML 1.1's octal, sexagesimal, underscores, quoted
    digits and non-ASCII digits are still the reference loader's."""
    text = "a: 0123\nb: 17\nc: '17'\nd: 0\ne: 1_000\nf: 1:30\ng: \u0661\u0662\nh: -5\ni: [007, 8, \"9\"]\n"
    _same_as_reference(text)
    done, fast = _load_fast(text, "f.yaml")
    assert done
    assert fast == {
        "a": 83,
        "b": 17,
        "c": "17",
        "d": 0,
        "e": 1000,
        "f": 90,
        "g": "\u0661\u0662",
        "h": -5,
        "i": [7, 8, "9"],
    }


# -- YAML syntax errors say what to do ------------------------------------------------------
# PyYAML's words ("expected <block end>, but found '<block mapping start>'") name its parser's
# states; an operator needs the cause. Each common mistake gets a hint, at the same position.

SYNTAX_HINTS = {
    "tab": ("rules:\n  - name: a\n\tcancel: x\n", (3, 1), "indents with spaces"),
    "indent": (
        "rules:\n  - name: a\n    match:\n      notification: linkUp\n     cancel: x\n",
        (5, 6),
        "indentation",
    ),
    "colon-in-value": (
        "rules:\n  - name: a\n    description: port down: leases freed\n",
        (3, 27),
        "must be quoted",
    ),
    "quote-not-closed": ('rules:\n  - name: "a\n    cancel: x\n', (4, 1), "opened at line 2, column 11"),
    "at-sign": ("rules:\n  - name: a\n    cancel: @x\n", (3, 13), "quote the value"),
    "bracket-not-closed": ("rules: [{name: a, cancel: x}\n", (2, 1), "opened at line 1, column 8"),
    "undefined-alias": ("rules: *x\n", (1, 8), "&x"),
    "no-colon": ("rules:\n  - name: a\n    cancel\n    x: 1\n", (4, 5), "key: value"),
}


@pytest.mark.parametrize("case", sorted(SYNTAX_HINTS))
def test_a_yaml_syntax_error_says_what_to_do(case: str) -> None:
    from trapd.yamlsource import ConfigError, load_yaml

    text, (line, column), hint = SYNTAX_HINTS[case]
    with pytest.raises(ConfigError) as info:
        load_yaml(text, "f.yaml")
    err = info.value
    assert err.mark is not None and (err.mark.line, err.mark.column) == (line, column), err
    assert err.message.startswith("YAML syntax: ") and hint in err.message, err
