"""Which rules an event can match, found through what the rules test for equality.

A rule's top-level conditions are a conjunction, so any condition that tests
one value of the event for equality narrows the rules worth testing: the
notification OID (``notification: linkDown``, or the prefix of an ``under:``),
the source network (``source: 10.1.2.3``, a list of networks; ``!`` exclusions
are then tested on the candidates),
and a varbind's value (``ifIndex: 17``, ``ifOperStatus: [down, lowerLayerDown]``).

The index is a trie over those (dimension, value) pairs, in the order
notification, source, varbinds. A rule is stored at the end of each path its
alternatives spell (``ifIndex: [1, 2]`` is two paths); an event walks from the
root into every child whose value it has. The rules met on the way are the
candidates, returned in file order; each is then tested on the rest of its
conditions as before. So an event costs a few dict lookups per *kind* of rule
(its "shape"), plus the rules whose indexed values it has, however many rules
test other values: 100,000 per-port rules on linkDown differing by source and
ifIndex give one candidate per linkDown.

The same trie answers the shadowed-rule analysis (:mod:`trapd.rules.shadow`):
an earlier stopping rule can only hide a later one if each of its indexed
values is implied by the later rule, so the later rule walks only into those
children. Rules without any equality test sit at the root and stay candidates
for every event (and every shadow query).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Hashable, Iterable, Sequence
from typing import Any

from trapd.listener.raw import Oid
from trapd.rules.conditions import (
    Cond,
    Equals,
    EvalState,
    Notification,
    OneOf,
    Source,
    ValueTest,
    Varbind,
    as_number,
    as_text,
    find_varbind,
)
from trapd.rules.sources import Net

# Paths stored for one rule at most (the product of its alternatives); past this the
# group with the most alternatives is left to the rule's own test. A rule on 64 ports
# of 4 switches is 256 paths.
MAX_PATHS = 256


class Dim:
    """A value the index reads from an event. Interned: one object per distinct dimension."""

    __slots__ = ()

    def of(self, st: EvalState) -> Hashable | None:
        raise NotImplementedError


class TrapOid(Dim):
    __slots__ = ()

    def of(self, st: EvalState) -> Hashable | None:
        return st.event.trap_oid


class TrapOidPrefix(Dim):
    __slots__ = ("length",)

    def __init__(self, length: int) -> None:
        self.length = length

    def of(self, st: EvalState) -> Hashable | None:
        oid = st.event.trap_oid
        return oid[: self.length] if len(oid) >= self.length else None


class SourceNet(Dim):
    """The source address under one netmask: ``10.1.2.3`` under /24 is 10.1.2.0."""

    __slots__ = ("mask", "version")

    def __init__(self, version: int, mask: int) -> None:
        self.version = version
        self.mask = mask

    def of(self, st: EvalState) -> Hashable | None:
        key = st.source_key
        if key is None or key[0] != self.version:
            return None
        return key[1] & self.mask


class VarbindValue(Dim):
    """The value of the first binding under ``prefix``, as :class:`Equals` compares it."""

    __slots__ = ("numeric", "prefix")

    def __init__(self, prefix: Oid, numeric: bool) -> None:
        self.prefix = prefix
        self.numeric = numeric

    def of(self, st: EvalState) -> Hashable | None:
        vb = find_varbind(st.event, self.prefix)
        if vb is None:
            return None
        v = vb.value
        if self.numeric:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                return v
            return as_number(v)
        return as_text(v, vb.display)


Alternative = tuple[Dim, Hashable]


class Keys:
    """What one rule tests for equality: groups of alternatives, and which conditions they settle."""

    __slots__ = ("groups", "settled")

    def __init__(self, groups: list[list[Alternative]], settled: list[Cond]) -> None:
        self.groups = groups
        self.settled = settled  # conditions an index hit proves (need no test of their own)


class RuleIndex:
    """The trie of rules by equality values; ``add`` in file order, then ``lookup`` per event."""

    def __init__(self) -> None:
        self.root = _Node()
        self._dims: dict[tuple[Any, ...], Dim] = {}
        self.nodes = 1
        # The alternatives of a notification or a source, by its values: per-port rule files
        # repeat both (100,000 rules: one notification, 2,084 switches). Shared, never mutated.
        self._note_alts: dict[tuple[frozenset[Oid], tuple[Oid, ...]], list[Alternative]] = {}
        self._src_alts: dict[tuple[Net, ...], list[Alternative]] = {}

    # -- building -------------------------------------------------------------

    def keys(self, atoms: Sequence[Cond]) -> Keys:
        """The equality groups of a rule's top-level conditions (``atoms``), most selective last."""
        groups: list[list[Alternative]] = []
        settled: list[Cond] = []
        note, src, varbinds = _kinds(atoms)
        if note is not None:
            alts = self._note_alts.get((note.exact, note.prefixes))
            if alts is None:
                alts = [(self._dim("oid"), oid) for oid in sorted(note.exact)]
                alts += [(self._dim("oidp", len(p)), p) for p in sorted(set(note.prefixes))]
                self._note_alts[(note.exact, note.prefixes)] = alts
            if alts:
                groups.append(alts)
                settled.append(note)
        if src is not None and src.nets.include and not src.nets.include_all:
            # An address in the set is in one of its include networks; "!" exclusions are
            # left to the rule's own test (so the source is settled only without them).
            src_alts = self._src_alts.get(src.nets.include)
            if src_alts is None:
                src_alts = [
                    (self._dim("src", v, mask), net) for v, net, mask in dict.fromkeys(src.nets.include)
                ]
                self._src_alts[src.nets.include] = src_alts
            groups.append(src_alts)
            if not src.nets.exclude and not src.nets.parts:  # a union's parts have exclusions
                settled.append(src)
        for atom in varbinds:
            if atom.exists is not False:
                values = _equal_values(atom.tests)
                if values:
                    groups.append([(self._dim("vb", atom.prefix, num), v) for num, v in values])
        # Too many paths: leave the widest groups to the rule's own test.
        while groups and math.prod(len(g) for g in groups) > MAX_PATHS:
            widest = max(range(len(groups)), key=lambda k: len(groups[k]))
            dropped = groups.pop(widest)
            settled = [c for c in settled if not _in_group(c, dropped)]
        return Keys(groups, settled)

    def _dim(self, kind: str, *args: Any) -> Dim:
        key = (kind, *args)
        dim = self._dims.get(key)
        if dim is None:
            if kind == "oid":
                dim = TrapOid()
            elif kind == "oidp":
                dim = TrapOidPrefix(*args)
            elif kind == "src":
                dim = SourceNet(*args)
            else:
                dim = VarbindValue(*args)
            self._dims[key] = dim
        return dim

    def add(self, position: int, keys: Keys, *, can_hide: bool = True) -> None:
        """Store rule ``position`` (added in ascending order) at the end of each of its paths.

        ``can_hide``: the rule may hide later ones (enabled, stops, no ``foreach``), so
        :meth:`implying` returns it. One trie serves matching and the shadow check (building
        a second one for the shadow check cost ~0.7 s of the 100,000 per-port rules' load).
        """
        for path in itertools.product(*keys.groups):
            node = self.root
            for dim, value in path:
                if node.children is None:
                    node.children = {}
                table = node.children.get(dim)
                if table is None:
                    table = node.children[dim] = {}
                nxt = table.get(value)
                if nxt is None:
                    nxt = table[value] = _Node()
                    self.nodes += 1
                node = nxt
            rules = node.rules
            if rules is None:
                node.rules = [position]
                # While every rule stored here can hide, the two lists are one (per-port files:
                # 100,000 nodes of one rule each).
                node.hiders = node.rules if can_hide else None
            elif rules[-1] != position:
                if node.hiders is rules and not can_hide:
                    node.hiders = rules.copy()
                rules.append(position)
                if can_hide and node.hiders is not rules:
                    if node.hiders is None:
                        node.hiders = [position]
                    else:
                        node.hiders.append(position)

    # -- queries --------------------------------------------------------------

    def lookup(self, st: EvalState) -> tuple[Sequence[int], bool]:
        """Positions of the rules whose indexed values this event has, ascending.

        The flag is True when only the notification OID and the source decided the
        answer (no varbind was read): the caller may then reuse it for the same pair.
        """
        found: list[list[int]] = []
        by_oid_and_source = True
        stack = [self.root]
        while stack:
            node = stack.pop()
            if node.rules is not None:
                found.append(node.rules)
            if node.children is not None:
                for dim, table in node.children.items():
                    if by_oid_and_source and isinstance(dim, VarbindValue):
                        by_oid_and_source = False
                    value = dim.of(st)
                    if value is not None:
                        nxt = table.get(value)
                        if nxt is not None:
                            stack.append(nxt)
        if not found:
            return (), by_oid_and_source
        if len(found) == 1:
            return found[0], by_oid_and_source
        return sorted(set().union(*found)), by_oid_and_source

    def implying(self, atoms: Sequence[Cond]) -> list[int]:
        """Rules added with ``can_hide`` whose every indexed value is implied by a rule with these
        top-level conditions.

        A superset of the rules that can shadow it (see :mod:`trapd.rules.shadow`), ascending.
        """
        query = _Query(atoms)
        found: set[int] = set()
        stack = [self.root]
        while stack:
            node = stack.pop()
            if node.hiders is not None:
                found.update(node.hiders)
            if node.children is not None:
                for dim, table in node.children.items():
                    for value in query.values(dim):
                        nxt = table.get(value)
                        if nxt is not None:
                            stack.append(nxt)
        return sorted(found)


class _Node:
    __slots__ = ("children", "hiders", "rules")

    def __init__(self) -> None:
        self.rules: list[int] | None = None  # every enabled rule stored here (matching)
        self.hiders: list[int] | None = None  # those of them that can hide later rules (shadow check)
        self.children: dict[Dim, dict[Hashable, _Node]] | None = None


class _Query:
    """For a later rule B: the values under each dimension that an earlier rule A hiding B may have.

    A hides B only if each of A's conditions is implied by one of B's: A's
    notification covers B's (so covers one OID of B's, or a prefix of B's first
    ``under:``), A's networks contain B's (so contain the first network of one of
    B's sources), and A's varbind condition is the very one B has (same name,
    same spec, so the same equality values).
    """

    def __init__(self, atoms: Sequence[Cond]) -> None:
        self.note, _, self.varbinds = _kinds(atoms)
        self.sources = [a for a in atoms if isinstance(a, Source)]

    def values(self, dim: Dim) -> Iterable[Hashable]:
        if isinstance(dim, TrapOid):
            some = next(iter(self.note.exact), None) if self.note is not None else None
            return () if some is None else (some,)
        if isinstance(dim, TrapOidPrefix):
            if self.note is None:
                return ()
            some = next(iter(self.note.exact), None)
            if some is not None:
                return (some[: dim.length],)
            return {p[: dim.length] for p in self.note.prefixes[:1] if len(p) >= dim.length}
        if isinstance(dim, SourceNet):
            out: set[Hashable] = set()
            for s in self.sources:
                if s.nets.include and not s.nets.include_all:
                    version, net, mask = s.nets.include[0]
                    if version == dim.version and mask & dim.mask == dim.mask:
                        out.add(net & dim.mask)
            return out
        if isinstance(dim, VarbindValue):
            return {
                v
                for vb in self.varbinds
                if vb.prefix == dim.prefix
                for num, v in _equal_values(vb.tests)
                if num == dim.numeric
            }
        return ()  # pragma: no cover - every Dim kind is handled above


def _kinds(atoms: Sequence[Cond]) -> tuple[Notification | None, Source | None, list[Varbind]]:
    """A rule's first notification and source condition, and its varbind conditions: one pass
    (the index and the shadow query ask this of every rule)."""
    note: Notification | None = None
    src: Source | None = None
    varbinds: list[Varbind] = []
    for a in atoms:
        if isinstance(a, Varbind):
            varbinds.append(a)
        elif isinstance(a, Notification):
            if note is None:
                note = a
        elif isinstance(a, Source) and src is None:
            src = a
    return note, src, varbinds


def _equal_values(tests: Sequence[ValueTest]) -> list[tuple[bool, Hashable]]:
    """(numeric?, value) for the first test that is an equality or a list of them; [] if none."""
    for t in tests:
        options: tuple[Equals, ...] = (
            (t,) if isinstance(t, Equals) else t.options if isinstance(t, OneOf) else ()
        )
        if not options:
            continue
        out: list[tuple[bool, Hashable]] = []
        for o in options:
            if o.number is not None:
                if o.number != o.number:  # NaN equals nothing: leave it to the test
                    return []
                out.append((True, o.number))
            elif o.text is not None:
                out.append((False, o.text))
            else:
                return []
        return list(dict.fromkeys(out))
    return []


def _in_group(cond: Cond, group: list[Alternative]) -> bool:
    dims = {type(d) for d, _ in group}
    if isinstance(cond, Notification):
        return bool(dims & {TrapOid, TrapOidPrefix})
    return isinstance(cond, Source) and SourceNet in dims
