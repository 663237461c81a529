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
per-port rules are checked in seconds instead of the n² comparisons.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from trapd.rules.conditions import Cond
from trapd.rules.index import RuleIndex
from trapd.rules.ruleset import Rule


def _implied(a_atoms: tuple[Cond, ...], b_atoms: tuple[Cond, ...]) -> bool:
    return all(any(x.implied_by(y) for y in b_atoms) for x in a_atoms)


def shadows(a: Rule, b: Rule) -> bool:
    if not a.enabled or not a.stop or a.foreach is not None:
        return False
    return _implied(a.condition.atoms(), b.condition.atoms())


def shadow_warnings(rules: Sequence[Rule]) -> Iterator[tuple[Rule, Rule]]:
    """(hidden rule, the earlier rule hiding it), for each enabled rule that can never match."""
    atoms = [r.condition.atoms() for r in rules]
    stoppers = RuleIndex()  # the earlier enabled stopping rules without foreach
    for i, b in enumerate(rules):
        if b.enabled:
            for j in stoppers.implying(atoms[i]):
                if _implied(atoms[j], atoms[i]):
                    yield b, rules[j]
                    break
        if b.enabled and b.stop and b.foreach is None:
            stoppers.add(i, stoppers.keys(atoms[i]))
