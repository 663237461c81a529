"""libyaml's fast path loads exactly what the pure-Python loader loads: values and every position."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from trapd.yamlsource import ConfigError, YDict, YList, _load_fast, _Loader, load_yaml

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not yaml.__with_libyaml__, reason="PyYAML built without libyaml")


def _reference(text: str) -> Any:
    loader = _Loader(text)
    loader.source_name = "f.yaml"
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


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
    text = path.read_text(encoding="utf-8")
    done, fast = _load_fast(text, "f.yaml")
    assert done
    assert _shape(fast) == _shape(_reference(text))


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
    text = yaml.safe_dump(doc, default_flow_style=flow, allow_unicode=True)
    done, fast = _load_fast(text, "f.yaml")
    assert done
    assert _shape(fast) == _shape(_reference(text))


def test_documents_with_aliases_or_errors_take_the_reference_path() -> None:
    assert _load_fast("a: &x [1, 2]\nb: *x\n", "f.yaml") == (False, None)
    assert load_yaml("a: &x [1, 2]\nb: *x\n", "f.yaml") == {"a": [1, 2], "b": [1, 2]}
    assert _load_fast("a: [1,\n", "f.yaml") == (False, None)
    with pytest.raises(ConfigError) as info:
        load_yaml("a: [1,\n", "f.yaml")
    assert str(info.value).startswith("f.yaml:2:1: YAML syntax")  # the pure-Python parser's message
    with pytest.raises(ConfigError, match="duplicate key 'a'"):
        load_yaml("a: 1\na: 2\n", "f.yaml")
