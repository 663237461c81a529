"""YAML that remembers where each thing came from, for file:line:column errors.

Netops edit rules and config by hand; an error that says "rules.yaml:42:7:
unknown key 'matches'" saves them a search. ``load_yaml`` returns ordinary
dicts and lists (subclasses), so code that does not care about positions
reads them as usual; code that reports errors asks :func:`where`.

Duplicate keys in one mapping are an error here (plain YAML keeps the last
one silently, which hides a mis-pasted rule).

Aliases are bounded: a file may use at most :data:`MAX_ALIASES` of them, and
together they may stand for at most :data:`MAX_ALIAS_NODES` nodes. A 725-byte
"billion laughs" file of nested aliases otherwise stands for 10^9 nodes, and
everything that walks the loaded data (the rule compiler, JSON output) would
expand it: minutes of CPU and gigabytes before an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml


@dataclass(frozen=True, slots=True)
class Mark:
    file: str
    line: int  # 1-based
    column: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


class ConfigError(Exception):
    """A problem in a config or rules file, with where it is.

    ``str()`` gives ``file:line:col: message`` so it can be printed as is.
    """

    def __init__(self, message: str, mark: Mark | None = None, *, severity: str = "error") -> None:
        super().__init__(message)
        self.message = message
        self.mark = mark
        self.severity = severity

    def __str__(self) -> str:
        return f"{self.mark}: {self.message}" if self.mark else self.message

    def to_dict(self) -> dict[str, Any]:
        m = self.mark
        return {
            "file": m.file if m else None,
            "line": m.line if m else None,
            "column": m.column if m else None,
            "severity": self.severity,
            "message": self.message,
        }


class YDict(dict[str, Any]):
    """A mapping with the position of itself, each key and each value."""

    mark: Mark
    key_marks: dict[Any, Mark]
    value_marks: dict[Any, Mark]


class YList(list[Any]):
    mark: Mark
    item_marks: list[Mark]


def where(node: Any, key: Any = None, *, of_key: bool = False) -> Mark | None:
    """Position of ``node`` itself, or of ``node[key]`` (its value, or the key with ``of_key``)."""
    if key is None:
        return getattr(node, "mark", None)
    if isinstance(node, YDict):
        marks = node.key_marks if of_key else node.value_marks
        return marks.get(key) or node.mark
    if isinstance(node, YList) and isinstance(key, int) and 0 <= key < len(node.item_marks):
        return node.item_marks[key]
    return getattr(node, "mark", None)


def _mark(file: str, m: yaml.Mark) -> Mark:
    return Mark(file, m.line + 1, m.column + 1)


MAX_ALIASES = 10_000  # alias uses (``*name``) in one file
MAX_ALIAS_NODES = 100_000  # nodes that all aliases of one file stand for, expanded


class _Loader(yaml.SafeLoader):
    source_name = "<string>"
    # Expanded size (nodes) of every node composed so far, by id; aliases add their target's size.
    _sizes: dict[int, int]
    _aliases = 0
    _alias_nodes = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if not hasattr(self, "_sizes"):
            self._sizes = {}
        if self.check_event(yaml.AliasEvent):
            mark = _mark(self.source_name, self.peek_event().start_mark)  # type: ignore[no-untyped-call]
            node = super().compose_node(parent, index)
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise ConfigError(f"more than {MAX_ALIASES} YAML aliases in one file", mark)
            size = self._sizes.get(id(node))
            if size is None:
                raise ConfigError("a YAML alias inside the node it refers to (recursive alias)", mark)
            self._alias_nodes += size
            if self._alias_nodes > MAX_ALIAS_NODES:
                raise ConfigError(
                    f"YAML aliases expand to more than {MAX_ALIAS_NODES} nodes (an alias bomb?)", mark
                )
            return node
        node = super().compose_node(parent, index)
        if node is None:
            return None
        if isinstance(node, yaml.SequenceNode):
            size = 1 + sum(self._sizes[id(n)] for n in node.value)
        elif isinstance(node, yaml.MappingNode):
            size = 1 + sum(self._sizes[id(k)] + self._sizes[id(v)] for k, v in node.value)
        else:
            size = 1
        self._sizes[id(node)] = size
        return node

    def construct_yaml_map(self, node: yaml.MappingNode) -> Any:
        data = YDict()
        data.mark = _mark(self.source_name, node.start_mark)
        data.key_marks = {}
        data.value_marks = {}
        yield data
        self.flatten_mapping(node)
        for key_node, value_node in node.value:
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError as exc:
                raise ConfigError(
                    "a mapping key must be a plain value", _mark(self.source_name, key_node.start_mark)
                ) from exc
            if key in data.key_marks:
                first = data.key_marks[key]
                raise ConfigError(
                    f"duplicate key {key!r} (first at line {first.line})",
                    _mark(self.source_name, key_node.start_mark),
                )
            data[key] = self.construct_object(value_node, deep=True)
            data.key_marks[key] = _mark(self.source_name, key_node.start_mark)
            data.value_marks[key] = _mark(self.source_name, value_node.start_mark)

    def construct_yaml_seq(self, node: yaml.SequenceNode) -> Any:
        data = YList()
        data.mark = _mark(self.source_name, node.start_mark)
        data.item_marks = [_mark(self.source_name, n.start_mark) for n in node.value]
        yield data
        data.extend(self.construct_object(n, deep=True) for n in node.value)


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_yaml_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _Loader.construct_yaml_seq)


class _FastLoader(yaml.CSafeLoader):
    """libyaml's parser with the same constructors: 10,000 rules load in 2 s instead of 5.5 s (CPU)."""

    source_name = "<string>"


_FastLoader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_yaml_map)
_FastLoader.add_constructor("tag:yaml.org,2002:seq", _Loader.construct_yaml_seq)


def _has_alias(root: yaml.Node) -> bool:
    """True if some node is reached twice (an alias): libyaml composed it without the alias bounds."""
    seen: set[int] = set()
    stack = [root]
    while stack:
        node = stack.pop()
        if id(node) in seen:
            return True
        seen.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)
        elif isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                stack += (k, v)
    return False


def _load_fast(text: str, source: str) -> tuple[bool, Any]:
    """(True, document) when libyaml parsed it and it uses no alias; else (False, None).

    A document libyaml refuses, or one with aliases (whose bounds and error
    positions :class:`_Loader` owns), goes through the pure-Python loader, so
    users see the same result and the same messages whichever parser ran.
    """
    if not yaml.__with_libyaml__:
        return False, None
    fast = _FastLoader(text)
    fast.source_name = source
    try:
        node = fast.get_single_node()
        if node is None:
            return True, None
        if _has_alias(node):
            return False, None
        return True, fast.construct_document(node)
    except yaml.YAMLError:
        return False, None
    finally:
        fast.dispose()


def load_yaml(text: str, source: str = "<string>") -> Any:
    """Parse one YAML document; syntax errors become :class:`ConfigError` with a position."""
    done, data = _load_fast(text, source)
    if done:
        return data
    loader = _Loader(text)
    loader.source_name = source
    try:
        return loader.get_single_data()
    except ConfigError:
        raise
    except yaml.MarkedYAMLError as exc:
        m = exc.problem_mark or exc.context_mark
        msg = " ".join(x for x in (exc.context, exc.problem) if x) or "invalid YAML"
        raise ConfigError(f"YAML syntax: {msg}", _mark(source, m) if m else Mark(source, 1, 1)) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML: {exc}", Mark(source, 1, 1)) from exc
    finally:
        loader.dispose()


def load_yaml_file(path: str | Path) -> Any:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read: {exc.strerror or exc}", Mark(str(p), 1, 1)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"not UTF-8 text: {exc.reason}", Mark(str(p), 1, 1)) from exc
    return load_yaml(text, str(p))


def check_keys(node: Any, allowed: set[str] | frozenset[str], what: str) -> YDict:
    """``node`` must be a mapping with only ``allowed`` keys; returns it (empty if None)."""
    if node is None:
        empty = YDict()
        empty.mark, empty.key_marks, empty.value_marks = Mark("<default>", 1, 1), {}, {}
        return empty
    if not isinstance(node, YDict):
        raise ConfigError(f"{what} must be a mapping", where(node))
    for key in node:
        if key not in allowed:
            hint = _close(str(key), allowed)
            raise ConfigError(
                f"unknown key {key!r} in {what}" + (f" (did you mean {hint!r}?)" if hint else ""),
                where(node, key, of_key=True),
            )
    return node


def _close(word: str, options: set[str] | frozenset[str]) -> str | None:
    import difflib

    m = difflib.get_close_matches(word, sorted(options), n=1, cutoff=0.7)
    return m[0] if m else None


def expect(node: YDict, key: str, types: type | tuple[type, ...], what: str, default: Any = None) -> Any:
    """``node[key]`` checked against ``types`` (bool is never an int here), or ``default``."""
    if key not in node or node[key] is None:
        return default
    value = node[key]
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in _as_tuple(types))
    if not ok:
        names = " or ".join(t.__name__ for t in _as_tuple(types))
        raise ConfigError(f"{what}.{key} must be {names}, got {type(value).__name__}", where(node, key))
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)
