"""What every part of the rule compiler shares: problems, MIB symbols, source groups, key checks.

The compiler is split along the rule file's own seams (see
:mod:`trapd.rules.compiler`); each part reports into the same
:class:`~trapd.rules.problems.Problems` and looks names up through the same
:class:`CompileContext`, so a symbol is resolved once per file set and a
source group defined in one file is usable in every other.
"""

from __future__ import annotations

import difflib
import json
import re
from dataclasses import dataclass, field
from typing import Any

from trapd import decoders
from trapd.listener.ber import uncarried
from trapd.listener.raw import Oid
from trapd.params import ParamError, parse_duration
from trapd.rules.problems import Problems
from trapd.rules.resolver import SymbolResolver, did_you_mean, lookup_name
from trapd.rules.sources import AddressSet, AddressUnion, Net, parse_net
from trapd.yamlsource import Mark, YDict, YList, where

NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}")


@dataclass
class RuleScope:
    """What a template in one rule may refer to."""

    name: str
    captures: set[str] = field(default_factory=set)
    foreach_kind: str | None = None


MAX_HINTS = 50  # distinct unknown MIB names a compile looks for a close name for


class CompileContext:
    """The state the compiler's parts share while one file set compiles."""

    def __init__(self, resolver: SymbolResolver, problems: Problems) -> None:
        self.resolver = resolver
        self.problems = problems
        self.groups: dict[str, AddressSet] = {}
        self.group_marks: dict[str, Mark | None] = {}
        self.known_names = decoders.known_names()
        self._symbol_cache: dict[str, bool] = {}
        # Rules name the same few symbols over and over (100,000 per-port rules: 200,000 look-ups
        # of 2 names); the resolver and the known names do not change while compiling.
        self._oid_cache: dict[str, Oid | None] = {}
        self._uncarried: dict[str, str] = {}  # names of OIDs no SNMP message can carry -> why
        # "did you mean" for unknown names, by name: a scan of the MIB names (ms each), so done
        # once a name and for the first MAX_HINTS names (100,000 generated rules naming a module
        # that is not loaded must not take minutes to refuse).
        self._hints: dict[str, str] = {}

    def keys(self, node: YDict, allowed: frozenset[str], what: str) -> None:
        for key in node:
            if key not in allowed:
                m = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)
                hint = f" (did you mean {m[0]!r}?)" if m else ""
                self.problems.error(
                    f"unknown key {key!r} in {what}{hint}; allowed: {', '.join(sorted(allowed))}",
                    where(node, key, of_key=True),
                )

    def address_set(self, node: Any, mark: Mark | None, what: str) -> AddressSet | None:
        """A CIDR list with ``!`` negation and group names; None (reported) if invalid."""
        entries = node if isinstance(node, YList) else [node]
        marks = node.item_marks if isinstance(node, YList) else [mark]
        if not entries:
            self.problems.error(f"{what}: an empty list matches nothing", mark)
            return None
        inc: list[Net] = []
        exc: list[Net] = []
        every = False
        ok = True
        holed: list[AddressSet] = []  # groups with exclusions of their own, named as positive entries
        plain: list[Net] = []  # the other positive entries
        own: list[Net] = []  # the list's own exclusions (its "!" entries)
        for entry, emark in zip(entries, marks, strict=False):
            if not isinstance(entry, str):
                self.problems.error(
                    f"{what}: {entry!r} is not an address, network or group name (quote it)", emark
                )
                ok = False
                continue
            text = entry.strip()
            neg = text.startswith("!")
            text = text[1:].strip() if neg else text
            if text in self.groups:
                g = self.groups[text]
                if neg:
                    if g.exclude or g.include_all or g.parts:
                        self.problems.error(
                            f"{what}: group {text!r} has exclusions and cannot be negated here; "
                            "use {not: ...}",
                            emark,
                        )
                        ok = False
                        continue
                    exc += g.include
                    own += g.include
                else:
                    inc += g.include
                    exc += g.exclude
                    every = every or g.include_all
                    if g.exclude or g.include_all or g.parts:
                        holed.append(g)
                    else:
                        plain += g.include
                continue
            try:
                net = parse_net(text)
            except ValueError:
                known = ", ".join(sorted(self.groups)) or "none defined"
                self.problems.error(
                    f"{what}: {entry!r} is neither an address/network nor a source group (groups: {known})",
                    emark,
                )
                ok = False
                continue
            (exc if neg else inc).append(net)
            (own if neg else plain).append(net)
        if not ok:
            return None
        if holed and (plain or len(holed) > 1 or holed[0].parts):
            # The groups' exclusions are their own: the set is the union (see AddressSet.parts).
            parts = (*holed, AddressSet(tuple(plain))) if plain else tuple(holed)
            return AddressUnion(tuple(inc), tuple(own), every, parts)
        if not inc and not every:
            every = True  # only exclusions: everything but those
        return AddressSet(tuple(inc), tuple(exc), every)

    def duration(self, value: Any, mark: Mark | None, what: str) -> float | None:
        try:
            return parse_duration(value)
        except ParamError as exc:
            self.problems.error(f"{what}: {exc}", mark)
            return None

    def symbol(self, name: str) -> Oid | None:
        """A MIB name or numeric OID; decoder-known names when no MIB has them."""
        try:
            return self._oid_cache[name]
        except KeyError:
            oid = lookup_name(self.resolver, name, self.known_names)
            why = uncarried(oid) if oid is not None else None
            if why is not None:  # no notification can have it: as good as unknown, said by unknown_symbol
                self._uncarried[name] = why
                oid = None
            self._oid_cache[name] = oid
            return oid

    def warn_homonym(self, name: str, oid: Oid, mark: Mark | None, what: str) -> None:
        """A bare symbol that more than one MIB defines: say which one it means here, and how to choose."""
        text = name.strip()
        if "::" in text or text[:1].isdigit() or text[:1] == ".":
            return
        symbol = text.partition(".")[0]
        try:
            places = self.resolver.definitions(symbol)
        except Exception:  # a resolver that cannot tell: nothing to say
            return
        used = oid[: len(oid) - len(parse_index(text))]
        if len(places) < 2 or used not in {o for _n, o in places}:
            return
        listed = ", ".join(
            f"{n} ({'.'.join(map(str, o))}{', the one used' if o == used else ''})" for n, o in places
        )
        self.problems.warning(
            f"{what}: {symbol!r} is defined by more than one MIB: {listed}; write MODULE::{symbol}", mark
        )

    def unknown_symbol(self, name: str, mark: Mark | None, what: str) -> None:
        why = self._uncarried.get(name)
        if why is not None:
            self.problems.error(
                f"{what}: {name!r} can never match: {why}, which no SNMP message can carry", mark
            )
            return
        hint = self._hints.get(name)
        if hint is None:
            hint = did_you_mean(self.resolver, name) if len(self._hints) < MAX_HINTS else ""
            self._hints[name] = hint
        self.problems.error(
            f"unknown MIB symbol {name!r} in {what} ({hint}{'else ' if hint else ''}load the MIB that "
            "defines it, see mibs: in trapd.yaml, or give the numeric OID)",
            mark,
        )

    def is_symbol(self, name: str) -> bool:
        hit = self._symbol_cache.get(name)
        if hit is None:
            hit = self.symbol(name) is not None
            self._symbol_cache[name] = hit
        return hit


def parse_index(name: str) -> Oid:
    """The instance index written after a symbol (``ifIndex.17`` -> (17,)); () when none or not numeric."""
    _sym, dot, idx = name.partition(".")
    if not dot:
        return ()
    try:
        return tuple(int(p) for p in idx.split("."))
    except ValueError:
        return ()


# plain() of scalars, by (type, value): per-port rule files ask it for every rule's varbind
# values (`ifIndex: 17`), and json.dumps was 3.7 % of compiling 100,000 of them. Bounded.
_PLAIN_SCALARS: dict[tuple[type, Any], str] = {}
_PLAIN_SCALARS_LIMIT = 65536


def plain(node: Any) -> Any:
    """A hashable canonical form of a YAML subtree (for "same condition")."""
    kind = type(node)
    if kind is int:
        return str(node)  # what json.dumps writes for an int, without it (100,000 distinct ifIndex)
    if kind is str or kind is bool or kind is float or node is None:
        hit = _PLAIN_SCALARS.get((kind, node))
        if hit is None:
            hit = _plain(node)
            if len(_PLAIN_SCALARS) >= _PLAIN_SCALARS_LIMIT:
                _PLAIN_SCALARS.clear()
            _PLAIN_SCALARS[(kind, node)] = hit
        return hit
    return _plain(node)


def _plain(node: Any) -> Any:
    try:
        return json.dumps(node, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(node)
