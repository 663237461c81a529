"""The "can never match" warning: a rule hidden behind an earlier stopping rule.

An earlier rule A shadows a later rule B when A is enabled, stops (no
``continue``), has no ``foreach`` (a foreach rule only matches when an item
passes its filter), and every top-level condition of A is implied by some
top-level condition of B: then every event B would match, A matches first.
The implication test is deliberately conservative (same condition, a
notification set that covers B's, a network set that contains B's, a
version list that includes B's): a warning must never be wrong.

Pairs are pre-selected through the notification OIDs, so a file of a
thousand rules is checked in far less than the n² comparisons.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from trapd.listener.raw import Oid
from trapd.rules.conditions import Cond, Notification
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
    by_exact: dict[Oid, list[int]] = {}  # stoppers naming this OID
    by_prefix: list[tuple[Oid, int]] = []  # stoppers with under:
    generic: list[int] = []  # stoppers without a notification condition
    for i, b in enumerate(rules):
        note = b.notification
        if b.enabled:
            if note is None:
                candidates = list(generic) + [j for _p, j in by_prefix]
            else:
                some = next(iter(note.exact), None)
                candidates = list(generic)
                if some is not None:
                    candidates += by_exact.get(some, [])
                    candidates += [j for p, j in by_prefix if some[: len(p)] == p]
                else:
                    candidates += [j for _p, j in by_prefix]
            for j in sorted(set(candidates)):
                if _implied(atoms[j], atoms[i]):
                    yield b, rules[j]
                    break
        if b.enabled and b.stop and b.foreach is None:
            _register(i, note, by_exact, by_prefix, generic)


def _register(
    i: int,
    note: Notification | None,
    by_exact: dict[Oid, list[int]],
    by_prefix: list[tuple[Oid, int]],
    generic: list[int],
) -> None:
    if note is None:
        generic.append(i)
        return
    for oid in note.exact:
        by_exact.setdefault(oid, []).append(i)
    for p in note.prefixes:
        by_prefix.append((p, i))
