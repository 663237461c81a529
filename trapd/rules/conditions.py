"""Compiled match conditions: the ``match:`` tree of a rule.

Each condition is a small object with ``test(state) -> bool`` for the hot
path and ``why(state) -> str`` (called only after a failure, by ``trapd
test``) that says what did not match. Everything that can be worked out
from the rule alone (OIDs, enum numbers, networks, regexes) is worked out
at compile time; the per-event work is comparisons.

``atoms()`` and ``implies()`` serve the shadowed-rule warning: a rule's
top-level conditions are a conjunction of atoms, and an earlier rule
shadows a later one when each of its atoms is implied by one of the later
rule's atoms.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from typing import Any

import regex

from trapd.event import Event, VarBind, oid_str
from trapd.instance import UndecodableIndex
from trapd.listener.raw import Oid
from trapd.rules.context import octet_text
from trapd.rules.sources import AddressSet, addr_key, bytes_addr_key
from trapd.yamlsource import Mark

# The time one event's regexes may take together. A rule's pattern that backtracks without end
# ((a|aa)+, (\w+\s?)+ ...) meets text the sender of the trap chose: with Python's re, 60 characters
# held the event loop for hours (the watchdog kills trapd after 30 s, and it would meet the
# next such trap again). A well-written pattern takes microseconds; this leaves room for thousands.
REGEX_TIME_PER_EVENT = 0.1


class RegexTimeout(Exception):
    """A regex condition ran out of the event's regex time: the rule cannot be decided."""

    def __init__(self, label: str) -> None:
        super().__init__(
            f"{label} took longer than its time bound ({REGEX_TIME_PER_EVENT * 1000:.0f} ms for an "
            "event's regexes together): this event was not matched against this rule or the rules "
            "after it. A pattern with a repeat inside a repeat, such as (a|aa)+ or (\\w+\\s?)+, can "
            "take time that grows exponentially with the text: rewrite it without the nesting"
        )


class EvalState:
    """Per-event scratch space: the parsed source address, regex captures, the regex time used."""

    __slots__ = ("_src", "captures", "event", "regex_spent")

    def __init__(self, event: Event, source_key: tuple[int, int] | bool | None = False) -> None:
        """``source_key``: the parsed source address when the caller has it (False: parse on use)."""
        self.event = event
        self.captures: dict[str, str] = {}
        self._src: tuple[int, int] | bool | None = source_key
        self.regex_spent = 0.0  # seconds inside this event's regex matches (REGEX_TIME_PER_EVENT)

    @property
    def source_key(self) -> tuple[int, int] | None:
        if self._src is False:
            self._src = addr_key(self.event.source)
        return self._src  # type: ignore[return-value]


# ---------------------------------------------------------------- value views


def as_number(value: Any) -> int | float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return value
    if isinstance(value, bytes):
        try:
            value = value.decode("ascii")
        except UnicodeDecodeError:
            return None
    if isinstance(value, str):
        s = value.strip()
        if re.fullmatch(r"[-+]?\d+", s):
            return int(s)
    return None


def as_text(value: Any, display: str | None = None) -> str | None:
    if value is None:
        return None
    if isinstance(value, bytes):
        return octet_text(value, display)
    if isinstance(value, tuple):
        return oid_str(value)
    return str(value)


def as_addr(value: Any) -> tuple[int, int] | None:
    if isinstance(value, str):
        return addr_key(value)
    if isinstance(value, bytes):
        key = bytes_addr_key(value)
        if key is not None:
            return key
        try:
            return addr_key(value.decode("ascii"))
        except UnicodeDecodeError:
            return None
    return None


class Subject:
    """A value under test: a varbind's value, an item field, a community string."""

    __slots__ = ("display", "index", "suffix", "value")

    def __init__(self, value: Any, display: str | None = None, index: Any = None, suffix: Oid = ()) -> None:
        self.value = value
        self.display = display
        self.index = index
        self.suffix = suffix  # the instance suffix as sent, for decoding by the INDEX clause

    @classmethod
    def of_varbind(cls, vb: VarBind) -> Subject:
        index: Any = vb.index[0] if len(vb.index) == 1 else (oid_str(vb.index) if vb.index else None)
        return cls(vb.value, vb.display, index, vb.index)

    def shown(self, names: dict[int, str] | None = None) -> str:
        v = self.value
        if isinstance(v, int) and names and v in names:
            return f"{v} ({names[v]})"
        text = as_text(v, self.display)
        if text is None:
            return "empty"
        return repr(text) if not isinstance(v, int) else text


# ---------------------------------------------------------------- value tests


class ValueTest:
    """One operator applied to a Subject (``equals``, ``regex``, ``gt``...)."""

    label: str = ""

    def test(self, s: Subject, st: EvalState) -> bool:
        raise NotImplementedError

    def why(self, s: Subject, st: EvalState) -> str:
        return f"{s.shown()} does not satisfy {self.label}"


class Equals(ValueTest):
    def __init__(
        self, number: int | float | None, text: str | None, label: str, names: dict[int, str]
    ) -> None:
        self.number = number
        self.text = text
        self.label = label
        self.names = names

    def test(self, s: Subject, st: EvalState) -> bool:
        v = s.value
        if self.number is not None:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return v == self.number
            return as_number(v) == self.number
        return as_text(v, s.display) == self.text

    def why(self, s: Subject, st: EvalState) -> str:
        return f"{s.shown(self.names)} is not {self.label}"


class OneOf(ValueTest):
    def __init__(self, options: Sequence[Equals], label: str, names: dict[int, str]) -> None:
        self.options = tuple(options)
        self.label = label
        self.names = names

    def test(self, s: Subject, st: EvalState) -> bool:
        return any(o.test(s, st) for o in self.options)

    def why(self, s: Subject, st: EvalState) -> str:
        return f"{s.shown(self.names)} is not one of {self.label}"


class Negated(ValueTest):
    def __init__(self, inner: ValueTest, label: str, names: dict[int, str]) -> None:
        self.inner = inner
        self.label = label
        self.names = names

    def test(self, s: Subject, st: EvalState) -> bool:
        return not self.inner.test(s, st)

    def why(self, s: Subject, st: EvalState) -> str:
        return f"{s.shown(self.names)} is {self.label.removeprefix('not ')}, which is excluded"


class Regex(ValueTest):
    """A full match by the ``regex`` module (re's syntax), whose matching can be given a timeout,
    which Python's re cannot: see REGEX_TIME_PER_EVENT."""

    def __init__(self, pattern: regex.Pattern[str], label: str) -> None:
        self.pattern = pattern
        self.named = bool(pattern.groupindex)
        self.label = label

    def test(self, s: Subject, st: EvalState) -> bool:
        text = as_text(s.value, s.display)
        if text is None:
            return False
        # Only the time inside the event's regex matches counts: the templates rendered between
        # them, or the process waiting for a core on a busy host, must not use it up.
        left = REGEX_TIME_PER_EVENT - st.regex_spent
        if left <= 0:
            raise RegexTimeout(self.label)
        start = time.monotonic()
        try:
            m = self.pattern.fullmatch(text, timeout=left)
        except TimeoutError:
            raise RegexTimeout(self.label) from None
        finally:
            st.regex_spent += time.monotonic() - start
        if m is None:
            return False
        if self.named:
            st.captures.update({k: v for k, v in m.groupdict().items() if v is not None})
        return True

    def why(self, s: Subject, st: EvalState) -> str:
        return f"{s.shown()} does not match {self.label}"


_COMPARE: dict[str, Callable[[float, float], bool]] = {
    "gt": lambda a, b: a > b,
    "ge": lambda a, b: a >= b,
    "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b,
}
_COMPARE_WORD = {"gt": ">", "ge": ">=", "lt": "<", "le": "<="}


class Compare(ValueTest):
    def __init__(self, op: str, bound: float, label: str, names: dict[int, str]) -> None:
        self.fn = _COMPARE[op]
        self.bound = bound
        self.label = label
        self.names = names

    def test(self, s: Subject, st: EvalState) -> bool:
        n = as_number(s.value)
        return n is not None and self.fn(n, self.bound)

    def why(self, s: Subject, st: EvalState) -> str:
        if as_number(s.value) is None:
            return f"{s.shown()} is not a number (wanted {self.label})"
        return f"{s.shown(self.names)} is not {self.label}"


class InNetworks(ValueTest):
    def __init__(self, nets: AddressSet, label: str) -> None:
        self.nets = nets
        self.label = label

    def test(self, s: Subject, st: EvalState) -> bool:
        key = as_addr(s.value)
        return key is not None and self.nets.contains(key)

    def why(self, s: Subject, st: EvalState) -> str:
        if as_addr(s.value) is None:
            return f"{s.shown()} is not an IP address (wanted cidr {self.label})"
        return f"{s.shown()} is not in {self.label}"


class IndexTest(ValueTest):
    """``index: ...``: a condition on the instance index (17 for ifIndex.17)."""

    def __init__(self, inner: Sequence[ValueTest], label: str) -> None:
        self.inner = tuple(inner)
        self.label = label

    def test(self, s: Subject, st: EvalState) -> bool:
        sub = Subject(s.index)
        return s.index is not None and all(t.test(sub, st) for t in self.inner)

    def why(self, s: Subject, st: EvalState) -> str:
        if s.index is None:
            return "has no index"
        sub = Subject(s.index)
        for t in self.inner:
            if not t.test(sub, st):
                return "index " + t.why(sub, st)
        return "index does not match"  # pragma: no cover


class IndexObjectTest(ValueTest):
    """``index: {ifIndex: ...}``: a condition on one INDEX object decoded from the suffix.

    ``decode`` is :func:`trapd.instance.decode_suffix` bound to the MIBs and the row's INDEX
    clause; a suffix it cannot decode fails the condition (and is counted and logged there).
    """

    def __init__(
        self,
        position: int,
        symbol: str,
        inner: Sequence[ValueTest],
        decode: Callable[[Oid], tuple[VarBind, ...]],
        label: str,
    ) -> None:
        self.position = position
        self.symbol = symbol
        self.inner = tuple(inner)
        self.decode = decode
        self.label = label

    def _part(self, s: Subject) -> Subject | str:
        if not s.suffix:
            return "has no index"
        try:
            return Subject.of_varbind(self.decode(s.suffix)[self.position])
        except UndecodableIndex as why:
            return str(why)

    def test(self, s: Subject, st: EvalState) -> bool:
        part = self._part(s)
        return not isinstance(part, str) and all(t.test(part, st) for t in self.inner)

    def why(self, s: Subject, st: EvalState) -> str:
        part = self._part(s)
        if isinstance(part, str):
            return part
        for t in self.inner:
            if not t.test(part, st):
                return f"index {self.symbol} " + t.why(part, st)
        return f"index {self.symbol} does not match"  # pragma: no cover


# ---------------------------------------------------------------- conditions


class Cond:
    """A node of the match tree."""

    mark: Mark | None = None
    label: str = ""
    key: Any = None  # canonical form, for "same condition" in the shadow analysis

    def test(self, st: EvalState) -> bool:
        raise NotImplementedError

    def why(self, st: EvalState) -> str:
        return f"{self.label} did not match"

    def atoms(self) -> tuple[Cond, ...]:
        return (self,)

    def implied_by(self, other: Cond) -> bool:
        """True when every event matching ``other`` surely matches self."""
        return self.key is not None and self.key == other.key


class Always(Cond):
    def __init__(self) -> None:
        self.label = "(no conditions)"

    def test(self, st: EvalState) -> bool:
        return True

    def atoms(self) -> tuple[Cond, ...]:
        return ()


class Notification(Cond):
    def __init__(
        self, exact: frozenset[Oid], prefixes: tuple[Oid, ...], label: str, mark: Mark | None
    ) -> None:
        self.exact = exact
        self.prefixes = prefixes
        self.label = label
        self.mark = mark

    def test(self, st: EvalState) -> bool:
        oid = st.event.trap_oid
        if oid in self.exact:
            return True
        return any(oid[: len(p)] == p for p in self.prefixes)

    def why(self, st: EvalState) -> str:
        return f"notification {st.event.trap_name} is not {self.label}"

    def covers(self, oid: Oid) -> bool:
        return oid in self.exact or any(oid[: len(p)] == p for p in self.prefixes)

    def implied_by(self, other: Cond) -> bool:
        if not isinstance(other, Notification):
            return False
        return all(self.covers(o) for o in other.exact) and all(
            any(p[: len(mine)] == mine for mine in self.prefixes) for p in other.prefixes
        )


class Source(Cond):
    def __init__(self, nets: AddressSet, label: str, mark: Mark | None) -> None:
        self.nets = nets
        self.label = label
        self.mark = mark

    def test(self, st: EvalState) -> bool:
        key = st.source_key
        return key is not None and self.nets.contains(key)

    def why(self, st: EvalState) -> str:
        return f"source {st.event.source} is not in {self.label}"

    def implied_by(self, other: Cond) -> bool:
        return isinstance(other, Source) and self.nets.covers(other.nets)


class EventField(Cond):
    """version / kind / community / user / context: a value of the event itself."""

    def __init__(
        self,
        field: str,
        getter: Callable[[Event], Any],
        tests: Sequence[ValueTest],
        label: str,
        mark: Mark | None,
    ) -> None:
        self.field = field
        self.getter = getter
        self.tests = tuple(tests)
        self.label = label
        self.mark = mark
        self.key = None

    def test(self, st: EvalState) -> bool:
        v = self.getter(st.event)
        if v is None:
            return False
        s = Subject(v)
        return all(t.test(s, st) for t in self.tests)

    def why(self, st: EvalState) -> str:
        v = self.getter(st.event)
        if v is None:
            return f"{self.field}: the event has none"
        s = Subject(v)
        for t in self.tests:
            if not t.test(s, st):
                return f"{self.field}: {t.why(s, st)}"
        return f"{self.field} did not match"  # pragma: no cover

    def implied_by(self, other: Cond) -> bool:
        if self.key is not None and self.key == other.key:
            return True
        # version: [v2c, v3] is implied by version: v2c
        if isinstance(other, EventField) and other.field == self.field:
            mine, theirs = _equal_texts(self.tests), _equal_texts(other.tests)
            return mine is not None and theirs is not None and theirs <= mine
        return False


def _equal_texts(tests: Sequence[ValueTest]) -> frozenset[str] | None:
    if len(tests) != 1:
        return None
    t = tests[0]
    if isinstance(t, Equals) and t.text is not None:
        return frozenset({t.text})
    if isinstance(t, OneOf) and all(o.text is not None for o in t.options):
        return frozenset(o.text for o in t.options if o.text is not None)
    return None


def find_varbind(event: Event, prefix: Oid) -> VarBind | None:
    """The first binding whose OID starts with ``prefix``: the one a varbind condition tests.

    One definition for the condition's test and the rule index's lookup (trapd.rules.index),
    so that both read the same binding.
    """
    n = len(prefix)
    for vb in event.varbinds:
        if vb.oid[:n] == prefix:
            return vb
    return None


class Varbind(Cond):
    """A condition on the first binding whose OID starts with ``prefix``."""

    def __init__(
        self,
        prefix: Oid,
        tests: Sequence[ValueTest],
        exists: bool | None,
        label: str,
        mark: Mark | None,
        key: Any,
    ) -> None:
        self.prefix = prefix
        self.tests = tuple(tests)
        self.exists = exists
        self.label = label
        self.mark = mark
        self.key = key

    def find(self, event: Event) -> VarBind | None:
        return find_varbind(event, self.prefix)

    def test(self, st: EvalState) -> bool:
        vb = find_varbind(st.event, self.prefix)
        if vb is None:
            return self.exists is False
        if self.exists is False:
            return False
        if not self.tests:
            return True
        s = Subject.of_varbind(vb)
        for t in self.tests:  # noqa: SIM110 - a loop is faster than all() with a generator here
            if not t.test(s, st):
                return False
        return True

    def why(self, st: EvalState) -> str:
        vb = self.find(st.event)
        if vb is None:
            return f"varbind {self.label} is absent"
        if self.exists is False:
            return f"varbind {self.label} is present (wanted absent)"
        s = Subject.of_varbind(vb)
        for t in self.tests:
            if not t.test(s, st):
                return f"varbind {self.label}: {t.why(s, st)}"
        return f"varbind {self.label} did not match"  # pragma: no cover


class All(Cond):
    def __init__(self, items: Sequence[Cond], mark: Mark | None, label: str = "all") -> None:
        self.items = tuple(items)
        self.mark = mark
        self.label = label

    def test(self, st: EvalState) -> bool:
        for c in self.items:  # noqa: SIM110 - hot path: no generator
            if not c.test(st):
                return False
        return True

    def first_failure(self, st: EvalState) -> Cond | None:
        for c in self.items:
            if not c.test(st):
                return c
        return None

    def why(self, st: EvalState) -> str:
        c = self.first_failure(st)
        if c is None:
            return "matched"
        inner = c.first_failure(st) if isinstance(c, All) else None
        return (inner or c).why(st)

    def atoms(self) -> tuple[Cond, ...]:
        out: list[Cond] = []
        for c in self.items:
            out.extend(c.atoms())
        return tuple(out)


class AnyOf(Cond):
    def __init__(self, items: Sequence[Cond], mark: Mark | None, key: Any, captures: bool = False) -> None:
        """``captures``: a regex inside names groups; a branch that fails must not leave them behind."""
        self.items = tuple(items)
        self.mark = mark
        self.label = "any"
        self.key = key
        self.captures = captures

    def test(self, st: EvalState) -> bool:
        if self.captures:
            return self._test_keeping_groups_of_the_branch_that_held(st)
        for c in self.items:  # noqa: SIM110 - hot path: no generator
            if c.test(st):
                return True
        return False

    def _test_keeping_groups_of_the_branch_that_held(self, st: EvalState) -> bool:
        before = st.captures
        for c in self.items:
            st.captures = dict(before)
            if c.test(st):
                return True
        st.captures = before
        return False

    def why(self, st: EvalState) -> str:
        return "none of any: matched (" + "; ".join(c.why(st) for c in self.items) + ")"


class Not(Cond):
    def __init__(self, inner: Cond, mark: Mark | None, key: Any, captures: bool = False) -> None:
        """``captures``: a regex inside names groups; what a negated condition matched is not kept."""
        self.inner = inner
        self.mark = mark
        self.label = "not"
        self.key = key
        self.captures = captures

    def test(self, st: EvalState) -> bool:
        if self.captures:
            before = st.captures
            st.captures = dict(before)
            held = self.inner.test(st)
            st.captures = before
            return not held
        return not self.inner.test(st)

    def why(self, st: EvalState) -> str:
        return f"not: the excluded conditions matched ({_describe(self.inner)})"


def _describe(c: Cond) -> str:
    if isinstance(c, All):
        return ", ".join(_describe(x) for x in c.items)
    return c.label
