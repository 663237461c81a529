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

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from trapd.regularfile import read_regular_text


@dataclass(frozen=True, slots=True)
class Mark:
    file: str
    line: int  # 1-based
    column: int  # 1-based

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.column}"


# The fast loader makes ~20 marks a rule (2 million for 100,000 per-port rules). A frozen
# dataclass's __init__ goes through object.__setattr__ per field: 0.80 against 0.41 s per
# million here through the slots' own descriptors, the same immutable, equal, hashable Mark.
_new_object = object.__new__
_set_file: Callable[[Mark, str], None] = vars(Mark)["file"].__set__
_set_line: Callable[[Mark, int], None] = vars(Mark)["line"].__set__
_set_column: Callable[[Mark, int], None] = vars(Mark)["column"].__set__


def _new_mark(file: str, line: int, column: int) -> Mark:
    m: Mark = _new_object(Mark)
    _set_file(m, file)
    _set_line(m, line)
    _set_column(m, column)
    return m


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


# The fast loader keeps a mapping entry's positions as ints, line << 32 | column (both 1-based),
# and where() makes the Mark when asked: compiling asks for 11 of a per-port rule's 18, and the
# tree waiting to be compiled holds 32-byte ints instead of 56-byte Marks.
_POSITION_BITS = 32
_COLUMN_MASK = (1 << _POSITION_BITS) - 1


def _at(file: str, position: Mark | int) -> Mark:
    """A Mark from a fast-loaded mapping's entry: made from its packed int, or the one it holds."""
    if type(position) is int:
        return _new_mark(file, position >> _POSITION_BITS, position & _COLUMN_MASK)
    return position  # type: ignore[return-value]


class YDict(dict[str, Any]):
    """A mapping with the position of itself, each key and each value."""

    # No per-instance __dict__: a 100,000-rule file has 400,000 of these. The fast loader
    # stores the positions as one flat tuple (key, key position, value position, ...) and the
    # two dicts are built on first use: two small dicts are ~460 bytes, the tuple ~100 (100,000
    # per-port rules: ~140 MB less at the peak, when every rule's YAML is in memory). A
    # position is a Mark (a nested collection's own) or a packed int (see _at).
    __slots__ = ("_flat", "_key_marks", "_value_marks", "mark")
    mark: Mark

    @property
    def key_marks(self) -> dict[Any, Mark]:
        if getattr(self, "_key_marks", None) is None:
            self._unflatten()
        return self._key_marks

    @key_marks.setter
    def key_marks(self, marks: dict[Any, Mark]) -> None:
        self._key_marks = marks

    @property
    def value_marks(self) -> dict[Any, Mark]:
        if getattr(self, "_value_marks", None) is None:
            self._unflatten()
        return self._value_marks

    @value_marks.setter
    def value_marks(self, marks: dict[Any, Mark]) -> None:
        self._value_marks = marks

    def _unflatten(self) -> None:
        flat: tuple[Any, ...] = getattr(self, "_flat", ())
        file = self.mark.file if flat else ""
        self._key_marks = {flat[i]: _at(file, flat[i + 1]) for i in range(0, len(flat), 3)}
        self._value_marks = {flat[i]: _at(file, flat[i + 2]) for i in range(0, len(flat), 3)}
        self._flat = ()


class YList(list[Any]):
    __slots__ = ("item_marks", "mark")
    mark: Mark
    item_marks: list[Mark]


def where(node: Any, key: Any = None, *, of_key: bool = False) -> Mark | None:
    """Position of ``node`` itself, or of ``node[key]`` (its value, or the key with ``of_key``)."""
    if key is None:
        return getattr(node, "mark", None)
    if isinstance(node, YDict):
        # A fast-loaded mapping not yet unflattened: scan its (key, key mark, value mark)
        # tuple (a rule's mappings have 1-4 keys) rather than build two dicts for one lookup
        # (compiling asks ~13 positions a rule: 100,000 per-port rules, ~0.5 s CPU less).
        flat = getattr(node, "_flat", None)
        if flat:
            try:
                i = flat.index(key)
            except ValueError:
                return node.mark
            if i % 3:  # an int key equal to a packed position: look at the keys only
                i = next((k for k in range(0, len(flat), 3) if flat[k] == key), -1)
                if i < 0:
                    return node.mark
            return _at(node.mark.file, flat[i + 1 if of_key else i + 2])
        marks = node.key_marks if of_key else node.value_marks
        return marks.get(key) or node.mark
    if isinstance(node, YList) and isinstance(key, int) and 0 <= key < len(node.item_marks):
        return node.item_marks[key]
    return getattr(node, "mark", None)


def _mark(file: str, m: yaml.Mark) -> Mark:
    return Mark(file, m.line + 1, m.column + 1)


# A block scalar's (``|``, ``>``) text starts on the line after its indicator. Its value is
# marked there, so that an error on the text's line N (a template's) is at mark line + N - 1.
_BLOCK_STYLES = frozenset({"|", ">"})


def _value_mark(file: str, node: yaml.Node) -> Mark:
    m = node.start_mark
    return Mark(file, m.line + 1 + (getattr(node, "style", None) in _BLOCK_STYLES), m.column + 1)


MAX_ALIASES = 10_000  # alias uses (``*name``) in one file
MAX_ALIAS_NODES = 100_000  # nodes that all aliases of one file stand for, expanded
# Mappings and lists inside one another. PyYAML composes and constructs a document recursively:
# a few KB of "[[[[..." ended in RecursionError, a traceback without a position (trapd check) or
# a reload refused with only that name. A rules file needs a dozen levels (all/any/not nested
# a few times); both parsers refuse the level past this one at its place.
MAX_DEPTH = 100


def _too_deep(mark: Mark) -> ConfigError:
    return ConfigError(
        f"YAML nested more than {MAX_DEPTH} levels deep (mappings and lists inside one another)", mark
    )


class _Loader(yaml.SafeLoader):
    source_name = "<string>"
    # Expanded size (nodes) of every node composed so far, by id; aliases add their target's size.
    _sizes: dict[int, int]
    _aliases = 0
    _alias_nodes = 0
    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
        if not hasattr(self, "_sizes"):
            self._sizes = {}
        if self.check_event(yaml.CollectionStartEvent):
            if self._depth >= MAX_DEPTH:
                raise _too_deep(_mark(self.source_name, self.peek_event().start_mark))  # type: ignore[no-untyped-call]
            self._depth += 1
            try:
                return self._compose_sized(parent, index)
            finally:
                self._depth -= 1
        return self._compose_sized(parent, index)

    def _compose_sized(self, parent: yaml.Node | None, index: Any) -> yaml.Node | None:
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
        own = sum(1 for k, _ in node.value if k.tag != "tag:yaml.org,2002:merge")
        self.flatten_mapping(node)
        # flatten_mapping puts the merged pairs (``<<: *base``) first, and a later pair overrides
        # a merged one, as in PyYAML's own loader: the mapping's own keys override merged ones
        # (YAML's merge key). Only the mapping's own keys can be duplicates.
        merged = len(node.value) - own
        from_merge: set[Any] = set()
        for i, (key_node, value_node) in enumerate(node.value):
            key = self.construct_object(key_node, deep=True)
            try:
                hash(key)
            except TypeError as exc:
                raise ConfigError(
                    "a mapping key must be a plain value", _mark(self.source_name, key_node.start_mark)
                ) from exc
            if key in data.key_marks and key not in from_merge:
                first = data.key_marks[key]
                raise ConfigError(
                    f"duplicate key {key!r} (first at line {first.line})",
                    _mark(self.source_name, key_node.start_mark),
                )
            data[key] = self.construct_object(value_node, deep=True)
            if i < merged:
                from_merge.add(key)
            else:
                from_merge.discard(key)
            data.key_marks[key] = _mark(self.source_name, key_node.start_mark)
            data.value_marks[key] = _value_mark(self.source_name, value_node)

    def construct_yaml_seq(self, node: yaml.SequenceNode) -> Any:
        data = YList()
        data.mark = _mark(self.source_name, node.start_mark)
        data.item_marks = [_value_mark(self.source_name, n) for n in node.value]
        yield data
        data.extend(self.construct_object(n, deep=True) for n in node.value)


_Loader.add_constructor("tag:yaml.org,2002:map", _Loader.construct_yaml_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _Loader.construct_yaml_seq)


class _Unsupported(Exception):
    """Something the event builder leaves to the reference loader (aliases, tags, odd keys)."""


# Plain scalars that construct to these are built here; anything else (merge keys, binary)
# goes to the reference loader.
_SCALAR_TAGS = frozenset(
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "timestamp")
)


_NOT_SEEN = object()
_ScalarEvent = yaml.ScalarEvent
_MappingStartEvent = yaml.MappingStartEvent
_MappingEndEvent = yaml.MappingEndEvent
_SequenceStartEvent = yaml.SequenceStartEvent
_SequenceEndEvent = yaml.SequenceEndEvent


class _EventBuilder:
    """YDict / YList straight from libyaml's events, without the node graph in between.

    Measured on 10,000 per-port rules (90,000 lines): the compose-then-construct
    path peaks at twice the size of the finished tree (the node graph and the
    tree live together); building from events peaks at the tree. Repeated plain
    scalars (keys, notification names) are constructed once and shared.
    Anything unusual raises :class:`_Unsupported` and the pure-Python loader
    reads the document instead (its results and messages are the reference).
    """

    def __init__(self, text: str, source: str) -> None:
        from yaml._yaml import CParser  # only when yaml.__with_libyaml__

        self.parser = CParser(text)
        self.source = source
        self.resolver = yaml.resolver.Resolver()
        self.constructor = yaml.constructor.SafeConstructor()
        self.scalars: dict[tuple[str, tuple[bool, bool]], Any] = {}
        # First characters for which the resolver may read a plain scalar as something other
        # than text (digits, signs, y/n/t/f/o for booleans, ~ for null...); with no wildcard
        # resolver, any other plain scalar is text.
        implicit = self.resolver.yaml_implicit_resolvers
        self.not_text_first = None if None in implicit else frozenset(k for k in implicit if k)
        self._line = -1
        self._line_number = 0
        self.depth = 0  # collections open around the event being read (MAX_DEPTH)

    def document(self) -> Any:
        get = self.parser.get_event
        get()  # StreamStartEvent
        event = get()
        if isinstance(event, yaml.StreamEndEvent):
            return None
        if not isinstance(event, yaml.DocumentStartEvent):
            raise _Unsupported
        data = self.node(get())
        get()  # DocumentEndEvent
        if not isinstance(get(), yaml.StreamEndEvent):
            raise _Unsupported  # several documents: the reference loader says so
        return data

    def mark(self, m: Any) -> Mark:
        # Marks on the same line share one int (a key and its value: ~30 bytes a mark).
        if m.line != self._line:
            self._line = m.line
            self._line_number = m.line + 1
        return _new_mark(self.source, self._line_number, m.column + 1)

    def node(self, event: Any) -> Any:
        # The hot loop of loading a big rules file (2.5 million events for 100,000 per-port
        # rules): event classes compared with `is`, scalars looked up inline, a mapping entry's
        # positions packed into ints. On that file, CPU of load_yaml, 3 runs each alternated,
        # load average ~3.8: 3.7-3.8 s before, 3.2-3.5 s after (libyaml's events alone: 2.0 s).
        if getattr(event, "anchor", None) is not None:
            raise _Unsupported
        kind = type(event)
        if kind is _ScalarEvent:
            return self.scalar(event)
        get = self.parser.get_event
        if kind is _MappingStartEvent:
            if event.tag not in (None, "tag:yaml.org,2002:map"):
                raise _Unsupported
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _Unsupported  # the reference loader refuses it, with the same message
            data = YDict()
            data.mark = self.mark(event.start_mark)
            flat: list[Any] = []
            scalars = self.scalars
            m: Any  # an event's start mark (libyaml's)
            while True:
                kev: Any = get()
                if type(kev) is not _ScalarEvent or kev.anchor is not None or kev.tag is not None:
                    if type(kev) is _MappingEndEvent:
                        data._flat = tuple(flat)
                        self.depth -= 1
                        return data
                    raise _Unsupported
                key = scalars.get((kev.value, kev.implicit), _NOT_SEEN)
                if key is _NOT_SEEN:
                    key = self.scalar(kev)
                if key in data:
                    raise _Unsupported  # the reference loader reports it (after any syntax error)
                vev: Any = get()
                if type(vev) is _ScalarEvent and vev.anchor is None and vev.tag is None:
                    value = scalars.get((vev.value, vev.implicit), _NOT_SEEN)
                    if value is _NOT_SEEN:
                        value = self.scalar(vev)
                    m = vev.start_mark
                    line = m.line + 1 + (vev.style in _BLOCK_STYLES)  # see _value_mark
                    value_position: Mark | int = line << _POSITION_BITS | (m.column + 1)
                else:
                    value = self.node(vev)
                    # A collection's own mark is where it starts: share it (a Mark is immutable).
                    value_position = getattr(value, "mark", None) or self.mark(vev.start_mark)
                data[key] = value
                m = kev.start_mark
                flat += (key, (m.line + 1) << _POSITION_BITS | (m.column + 1), value_position)
        if kind is _SequenceStartEvent:
            if event.tag not in (None, "tag:yaml.org,2002:seq"):
                raise _Unsupported
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise _Unsupported
            seq = YList()
            seq.mark = self.mark(event.start_mark)
            seq.item_marks = []
            while True:
                iev: Any = get()
                if type(iev) is _SequenceEndEvent:
                    self.depth -= 1
                    return seq
                item = self.node(iev)
                mark = getattr(item, "mark", None) or self.mark(iev.start_mark)
                if type(iev) is _ScalarEvent and iev.style in _BLOCK_STYLES:  # see _value_mark
                    mark = _new_mark(self.source, mark.line + 1, mark.column)
                seq.item_marks.append(mark)
                seq.append(item)
        raise _Unsupported  # an alias

    def scalar(self, event: yaml.ScalarEvent) -> Any:
        if event.tag is not None:
            raise _Unsupported
        key = (event.value, event.implicit)
        try:
            return self.scalars[key]
        except KeyError:
            pass
        text = event.value
        value: Any
        if (
            event.implicit[0]
            and text
            and self.not_text_first is not None
            and text[0] not in self.not_text_first
        ):
            # Plain text the resolver has nothing to say about, without it and the constructor
            # (100,000 rules have 100,000 distinct names, `port-17`: 0.31 -> 0.18 s of CPU).
            value = text
        elif event.implicit[0] and text.isdigit() and text.isascii() and (text[0] != "0" or text == "0"):
            # A plain decimal (YAML 1.1 reads a leading 0 as octal): a file numbering 100,000
            # rules by ifIndex has as many distinct ones.
            value = int(text)
        else:
            tag = self.resolver.resolve(yaml.ScalarNode, text, event.implicit)  # type: ignore[no-untyped-call]
            if tag not in _SCALAR_TAGS:
                raise _Unsupported
            node = yaml.ScalarNode(tag, text, None, None, event.style)
            value = self.constructor.yaml_constructors[tag](self.constructor, node)
        if len(text) <= 64:
            self.scalars[key] = value
        return value


def _load_fast(text: str, source: str) -> tuple[bool, Any]:
    """(True, document) when libyaml parsed it and nothing in it needs the reference loader.

    A document libyaml refuses, or one with aliases (whose bounds and error
    positions :class:`_Loader` owns), tags, merge keys, duplicate or complex
    keys, goes through the pure-Python loader, so users see the same result
    and the same messages whichever parser ran.
    """
    if not yaml.__with_libyaml__ or len(text) > _COLUMN_MASK:  # a column must fit its 32 bits
        return False, None
    builder = _EventBuilder(text, source)
    try:
        return True, builder.document()
    except (yaml.YAMLError, _Unsupported, RecursionError):
        return False, None
    finally:
        builder.parser.dispose()


def load_yaml(text: str, source: str = "<string>") -> Any:
    """Parse one YAML document; syntax errors become :class:`ConfigError` with a position."""
    done, data = _load_fast(text, source)
    if done:
        return data
    try:
        loader = _Loader(text)  # its reader refuses a character YAML does not allow, here
    except yaml.reader.ReaderError as exc:
        raise _unacceptable(text, source, exc) from exc
    loader.source_name = source
    try:
        return loader.get_single_data()
    except ConfigError:
        raise
    except yaml.MarkedYAMLError as exc:
        m = exc.problem_mark or exc.context_mark
        msg = " ".join(x for x in (exc.context, exc.problem) if x) or "invalid YAML"
        hint = _syntax_hint(exc)
        raise ConfigError(
            f"YAML syntax: {msg}" + (f" ({hint})" if hint else ""),
            _mark(source, m) if m else Mark(source, 1, 1),
        ) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"YAML: {exc}", Mark(source, 1, 1)) from exc
    finally:
        loader.dispose()


def _syntax_hint(exc: yaml.MarkedYAMLError) -> str | None:
    """What to do about one of the common YAML mistakes, in an operator's words; PyYAML's own
    ("expected <block end>, but found '<block mapping start>'") name its parser's states."""
    problem, context = exc.problem or "", exc.context or ""
    opened = exc.context_mark
    at = f"line {opened.line + 1}, column {opened.column + 1}" if opened is not None else ""
    if "'\\t' that cannot start any token" in problem:
        return "YAML indents with spaces: replace the tab"
    if "that cannot start any token" in problem:
        return "a plain value cannot start with this character: quote the value"
    if "quoted scalar" in context and at:
        return f"the quote opened at {at} is not closed"
    if context.startswith("while parsing a flow") and at:
        return f"the [ or {{ opened at {at} is not closed where expected"
    if "expected <block end>" in problem:
        return (
            "this line's indentation does not line up with the lines above it at its level; "
            "or a quoted value goes on after its closing quote"
        )
    if "mapping values are not allowed here" in problem:
        return 'a value holding ": " must be quoted: description: "port down: leases freed"'
    if "could not find expected ':'" in problem:
        return "each line of a mapping is key: value; a value that goes on to the next line must be quoted"
    if problem.startswith("found undefined alias"):
        name = problem.rpartition(" ")[2].strip("'")
        return f"an alias *{name} needs an anchor &{name} defined before it"
    return None


def _unacceptable(text: str, source: str, exc: yaml.reader.ReaderError) -> ConfigError:
    """A character YAML does not allow (a control character: an ESC of pasted terminal colours,
    a NUL), at its line and column; PyYAML's error gives only its index in the text."""
    at = exc.position
    line_start = text.rfind("\n", 0, at) + 1
    return ConfigError(
        f"character #x{exc.character:02x} is not allowed in YAML (a control character): "
        "delete it, or write it as an escape (\\x1b) in a double-quoted string",
        Mark(source, text.count("\n", 0, at) + 1, at - line_start + 1),
    )


def unreadable_hint(exc: OSError) -> str:
    """For a file or directory this process may not read: who it runs as, and what to do."""
    import errno
    import os
    import pwd

    if exc.errno not in (errno.EACCES, errno.EPERM):
        return ""
    try:
        user = pwd.getpwuid(os.geteuid()).pw_name
    except KeyError:
        user = f"uid {os.geteuid()}"
    return f" (trapd runs as user {user!r} here: make it readable by that user, or its group)"


def load_yaml_file(path: str | Path) -> Any:
    return load_yaml(read_yaml_text(path), str(Path(path)))


def read_yaml_text(path: str | Path) -> str:
    """A YAML file's text, as :func:`load_yaml_file` reads it: ConfigError (at file:1:1, or at a
    byte that is not UTF-8) when it cannot be read."""
    p = Path(path)
    try:
        return read_regular_text(p)  # a FIFO put in a rules file's place is refused, not waited on
    except OSError as exc:
        raise ConfigError(
            f"cannot read: {exc.strerror or exc}{unreadable_hint(exc)}", Mark(str(p), 1, 1)
        ) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"not UTF-8 text: byte 0x{exc.object[exc.start]:02x} ({exc.reason})", _byte_mark(str(p), exc)
        ) from exc


def _byte_mark(source: str, exc: UnicodeDecodeError) -> Mark:
    """Where the byte that is not UTF-8 is: its line, and its column in characters (as an editor counts)."""
    data = bytes(exc.object)
    line_start = data.rfind(b"\n", 0, exc.start) + 1
    column = len(data[line_start : exc.start].decode("utf-8", "replace")) + 1
    return Mark(source, data.count(b"\n", 0, exc.start) + 1, column)


def yaml_files_in(directory: Path) -> list[Path]:
    """The ``*.yaml`` / ``*.yml`` entries of a directory, by name, for loading as rule files.

    An entry that exists but is not a regular file (a FIFO, a device) is listed, so that loading
    refuses it by name rather than the directory losing it in silence. A subdirectory is not a
    file, and a dangling symlink is left out: Emacs's lock file ``.#rules.yaml`` is one while
    the file is being edited. A hidden name is left out, as the shell's ``*.yaml`` leaves it: a
    deploy tool's or editor's temporary copy (Ansible's ``.ansible_tmpXXXX10-a.yaml``, renamed over
    ``10-a.yaml`` when complete) is not a second rule file.
    """
    return sorted(
        p
        for p in directory.iterdir()
        if p.suffix in (".yaml", ".yml") and not p.name.startswith(".") and p.exists() and not p.is_dir()
    )


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
    wanted = _as_tuple(types)
    # A whole number written as a float (workers: 4.0), as JSON Schema's integer (an editor) takes it.
    if int in wanted and float not in wanted and isinstance(value, float) and value.is_integer():
        value = int(value)
    ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in wanted)
    if not ok:
        names = " or ".join(t.__name__ for t in _as_tuple(types))
        raise ConfigError(f"{what}.{key} must be {names}, got {type(value).__name__}", where(node, key))
    return value


def _as_tuple(types: type | tuple[type, ...]) -> tuple[type, ...]:
    return types if isinstance(types, tuple) else (types,)
