"""The "can never match" warning: a rule hidden behind an earlier stopping rule.

An earlier rule A shadows a later rule B when A is enabled, stops (no
``continue``), has no ``foreach`` (a foreach rule only matches when an item
passes its filter), and every top-level condition of A is implied by some
top-level condition of B: then every event B would match, A matches first.
The implication test is deliberately conservative (same condition, a
notification set that covers B's, a network set that contains B's, a
version list that includes B's): a warning must never be wrong.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from trapd.rules.ruleset import Rule


def shadows(a: Rule, b: Rule) -> bool:
    if not a.enabled or not a.stop or a.foreach is not None:
        return False
    b_atoms = b.condition.atoms()
    return all(any(x.implied_by(y) for y in b_atoms) for x in a.condition.atoms())


def shadow_warnings(rules: Sequence[Rule]) -> Iterator[tuple[Rule, Rule]]:
    """(hidden rule, the earlier rule hiding it), for each enabled rule that can never match."""
    for i, b in enumerate(rules):
        if not b.enabled:
            continue
        for a in rules[:i]:
            if shadows(a, b):
                yield b, a
                break
