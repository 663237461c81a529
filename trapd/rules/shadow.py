"""The "can never match" warning: a rule hidden behind an earlier stopping rule.

An earlier rule A shadows a later rule B when A is enabled, stops (no
``continue``), has no ``foreach`` (a foreach rule only matches when an item
passes its filter), and every top-level condition of A is implied by some
top-level condition of B: then every event B would match, A matches first.
The implication test is deliberately conservative (same condition, a
notification set that covers B's, a network set that contains B's, a
version list that includes B's): a warning must never be wrong.

Pairs are pre-selected through the rule index (:mod:`trapd.rules.index`): a
later rule is compared only with the earlier stopping rules whose equality
values (notification, source network, varbind value) it implies, so 100,000
per-port rules are checked in seconds instead of the n² comparisons. The
check runs while :func:`index_rules` builds the rule set's own index (each
rule is looked up, then added), so the rules are indexed once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from trapd.rules.conditions import All, Cond
from trapd.rules.index import RuleIndex


class Rule(Protocol):
    """What the check reads of a rule (trapd.rules.ruleset.Rule, which builds its index here)."""

    @property
    def enabled(self) -> bool: ...
    @property
    def stop(self) -> bool: ...
    @property
    def foreach(self) -> object | None: ...
    @property
    def condition(self) -> All: ...


R = TypeVar("R", bound=Rule)


def _implied(a_atoms: tuple[Cond, ...], b_atoms: tuple[Cond, ...]) -> bool:
    return all(any(x.implied_by(y) for y in b_atoms) for x in a_atoms)


def can_hide(rule: Rule) -> bool:
    """Whether a rule can hide later ones: enabled, stopping, without ``foreach``."""
    return rule.enabled and rule.stop and rule.foreach is None


def shadows(a: Rule, b: Rule) -> bool:
    if not can_hide(a):
        return False
    return _implied(a.condition.atoms(), b.condition.atoms())


@dataclass(frozen=True, slots=True)
class IndexedRules:
    """The index of a rule list, what its hits prove per rule, and the rules found hidden."""

    index: RuleIndex
    settled: list[list[Cond]]  # per rule: the top-level conditions an index hit proves
    hidden: list[tuple[int, int]]  # (hidden rule, the first earlier rule hiding it), by position


def index_rules(rules: Sequence[Rule], *, find_hidden: bool = True) -> IndexedRules:
    """Index the enabled rules in file order, checking each against the earlier ones first
    (unless ``find_hidden`` is False: then ``hidden`` is empty)."""
    index = RuleIndex()
    atoms_of = [r.condition.atoms() if r.enabled else () for r in rules]
    settled: list[list[Cond]] = []
    hidden: list[tuple[int, int]] = []
    for i, rule in enumerate(rules):
        if not rule.enabled:
            settled.append([])
            continue
        atoms = atoms_of[i]
        if find_hidden:
            for j in index.implying(atoms):
                if _implied(atoms_of[j], atoms):
                    hidden.append((i, j))
                    break
        keys = index.keys(atoms)
        index.add(i, keys, can_hide=can_hide(rule))
        settled.append(keys.settled)
    return IndexedRules(index, settled, hidden)


def shadow_warnings(rules: Sequence[R]) -> Iterator[tuple[R, R]]:
    """(hidden rule, the earlier rule hiding it), for each enabled rule that can never match."""
    for i, j in index_rules(rules).hidden:
        yield rules[i], rules[j]
