"""The rule language: YAML rules compiled into an immutable, indexed RuleSet.

Public API (the daemon, the dispatcher and the CLI use these names)::

    load_rules(paths, resolver, actions, *, global_mode="enforce") -> RuleSet   # raises RuleErrors
    check_rules(paths, resolver, actions) -> list[ConfigError]                   # errors and warnings
    RuleSet.evaluate(event) -> Outcome          # match + render + validate; runs nothing
    RuleSet.explain(event) -> list[RuleTrace]   # for `trapd test`
    RuleSet.names, RuleSet.source_groups, RuleSet.group_of(address)

Reload is "build a new RuleSet, then swap the reference": a failed build
raises :class:`RuleErrors` (a ConfigError listing every problem) and the
caller keeps the rules it has. The language is documented in docs/rules.md.
"""

from __future__ import annotations

import gc
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path

from trapd.plugin import ActionSpec
from trapd.rules.outcome import Outcome, PlannedAction, RateCap, Rejection, RetryPolicy
from trapd.rules.problems import Problems, RuleErrors
from trapd.rules.resolver import SymbolResolver
from trapd.rules.ruleset import Rule, RuleSet, RuleTrace
from trapd.yamlsource import ConfigError, yaml_files_in

__all__ = [
    "ConfigError",
    "Outcome",
    "PlannedAction",
    "RateCap",
    "Rejection",
    "RetryPolicy",
    "Rule",
    "RuleErrors",
    "RuleSet",
    "RuleTrace",
    "SymbolResolver",
    "check_rules",
    "compile_rules",
    "expand_rule_paths",
    "globally_capped",
    "idle_warning",
    "load_rules",
]

# Said of a rule set that will never do anything (the daemon logs it, `trapd check` warns).
NOTHING_RUNS = "notifications are received and counted, nothing runs"


def compile_rules(
    paths: Sequence[Path],
    resolver: SymbolResolver,
    actions: Mapping[str, ActionSpec],
    *,
    global_mode: str = "enforce",
    capped_actions: Collection[str] = (),
    shadow_check: bool = True,
    texts: Mapping[Path, str] | None = None,
) -> tuple[RuleSet, list[ConfigError]]:
    """Compile and return the rule set with every problem found (errors and warnings), sorted by position.

    ``capped_actions``: actions that a cap outside the rules files (the
    dispatcher's global caps in trapd.yaml) already limits, so a destructive
    use of them needs no cap in the rules. ``shadow_check=False``: no "can
    never match" warnings unless there are errors (see :func:`load_rules`). ``texts``: the
    files' texts read before, by path (:func:`trapd.service.lifecycle.read_rule_texts`).
    """
    from trapd.rules.compiler import Compiler

    problems = Problems()
    comp = Compiler(resolver, actions, problems, capped_actions=frozenset(capped_actions))
    # Compiling allocates millions of long-lived objects and no garbage cycles worth collecting
    # meanwhile; the collector's full passes over them took a third of the time (100,000 per-port
    # rules: 23 s of CPU with it, 16 s without). It runs again as soon as the rules are built.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        ruleset = comp.compile_files(
            [Path(p) for p in paths], global_mode, shadow_check=shadow_check, texts=texts
        )
    finally:
        if was_enabled:
            gc.enable()
    return ruleset, problems.sorted()


def load_rules(
    paths: Sequence[Path],
    resolver: SymbolResolver,
    actions: Mapping[str, ActionSpec],
    *,
    global_mode: str = "enforce",
    capped_actions: Collection[str] = (),
    warnings: list[ConfigError] | None = None,
    texts: Mapping[Path, str] | None = None,
) -> RuleSet:
    """Build a RuleSet; raise RuleErrors (holding every problem) if any error was found.

    ``warnings``: a list to append the warnings to (the daemon logs them). Without one, the
    "can never match" check (a warning, 5 % of loading 100,000 per-port rules) runs only
    when there are errors to report it with; `trapd check` (:func:`check_rules`) always
    runs it.
    """
    if global_mode not in ("enforce", "dry-run"):
        raise ConfigError(f"mode must be enforce or dry-run, got {global_mode!r}")
    ruleset, problems = compile_rules(
        paths,
        resolver,
        actions,
        global_mode=global_mode,
        capped_actions=capped_actions,
        shadow_check=warnings is not None,
        texts=texts,
    )
    if any(p.severity == "error" for p in problems):
        raise RuleErrors(problems)
    if warnings is not None:
        warnings.extend(problems)  # no errors: every problem is a warning
    return ruleset


def check_rules(
    paths: Sequence[Path],
    resolver: SymbolResolver,
    actions: Mapping[str, ActionSpec],
    *,
    capped_actions: Collection[str] = (),
    compiled: list[RuleSet] | None = None,
) -> list[ConfigError]:
    """Every problem in the rules, errors and warnings (``severity``), each with file:line:column.

    ``compiled``: the rule set is appended to it, for checks of what the rules use."""
    try:
        ruleset, problems = compile_rules(paths, resolver, actions, capped_actions=capped_actions)
    except ConfigError as exc:  # a defect that escaped the collector still reports cleanly
        return [exc]
    if compiled is not None:
        compiled.append(ruleset)
    idle = None if any(p.severity == "error" for p in problems) else idle_warning(paths, ruleset)
    return [idle, *problems] if idle is not None else problems


def idle_warning(paths: Sequence[Path], ruleset: RuleSet) -> ConfigError | None:
    """A warning when rule files compiled without error to a set that will never do anything:
    no rule at all (a deploy that truncated the files, only comments), or every rule disabled.
    At the first file; None when there are rules to run, or no files (said by whoever chose none)."""
    from trapd.yamlsource import Mark

    if not paths:
        return None
    if not len(ruleset):
        message = f"the rule files hold no rules: {NOTHING_RUNS}"
    elif not any(rule.enabled for rule in ruleset.rules):
        message = f"every rule is disabled (enabled: false): {NOTHING_RUNS}"
    else:
        return None
    return ConfigError(message, Mark(str(paths[0]), 1, 1), severity="warning")


def globally_capped(caps: Sequence[object], actions: Mapping[str, ActionSpec]) -> frozenset[str]:
    """Actions that a global cap of trapd.yaml (``dispatch.caps``) limits: they need no cap in the rules.

    ``caps`` are objects with ``applies_to(action, destructive) -> bool``
    (trapd.dispatch.config.GlobalCap).
    """
    out: set[str] = set()
    for name, spec in actions.items():
        for cap in caps:
            applies = getattr(cap, "applies_to", None)
            if applies is not None and applies(name, spec.destructive):
                out.add(name)
    return frozenset(out)


def expand_rule_paths(names: Sequence[str | Path]) -> list[Path]:
    """Files as given; a directory stands for its ``*.yaml`` / ``*.yml`` files in name order."""
    out: list[Path] = []
    for name in names:
        p = Path(name)
        if p.is_dir():
            out += yaml_files_in(p)
        else:
            out.append(p)
    return out
