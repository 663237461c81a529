"""From YAML to a RuleSet: the structure of a rules file and of each rule.

The compiler walks the documents produced by :func:`trapd.yamlsource.load_yaml`
(plain dicts and lists that remember their positions) and appends every
problem to a :class:`~trapd.rules.problems.Problems` instead of stopping at
the first: netops fix a file in one pass when ``trapd check`` lists all of
it. See docs/rules.md for the language itself.

This module owns the file level (``sources:``, ``defaults:``, ``rules:``,
duplicate names, the shadowed-rule warning) and the rule level (name,
enabled, continue, mode, the order its parts compile in). The parts of a
rule compile in their own modules, sharing one
:class:`~trapd.rules.compile_context.CompileContext`:

* :mod:`trapd.rules.compile_match`: ``match:`` conditions, value operators, ``foreach:``;
* :mod:`trapd.rules.compile_actions`: ``actions:``, ``cap:``, ``retry:``;
* :mod:`trapd.rules.compile_values`: parameter values and templates.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from trapd.instance import index_objects
from trapd.mibs import MibResolver
from trapd.plugin import ActionSpec
from trapd.rules import conditions as c
from trapd.rules.compile_actions import ACTION_CONTROL_KEYS, CAP_KEYS, RETRY_KEYS, ActionCompiler, canonical
from trapd.rules.compile_context import NAME_RE, CompileContext, RuleScope
from trapd.rules.compile_match import FOREACH_KEYS, MATCH_KEYS, VALUE_OPS, MatchCompiler
from trapd.rules.compile_values import ValueCompiler
from trapd.rules.outcome import Mode, RetryPolicy
from trapd.rules.problems import Problems
from trapd.rules.resolver import SymbolResolver
from trapd.rules.ruleset import ActionCall, CapSpec, Rule, RuleSet, Value
from trapd.yamlsource import ConfigError, Mark, YDict, YList, load_yaml, load_yaml_file, where

# The keys of each part, in one place for `trapd check` hints and the fuzz tests.
__all__ = [
    "ACTION_CONTROL_KEYS",
    "CAP_KEYS",
    "DEFAULT_KEYS",
    "FILE_KEYS",
    "FOREACH_KEYS",
    "MATCH_KEYS",
    "RETRY_KEYS",
    "RULE_KEYS",
    "VALUE_OPS",
    "Compiler",
]

FILE_KEYS = frozenset({"sources", "defaults", "rules"})
DEFAULT_KEYS = frozenset({"mode", "cap", "retry"})
RULE_KEYS = frozenset(
    {
        "name",
        "description",
        "enabled",
        "match",
        "foreach",
        "actions",
        "cancel",
        "continue",
        "mode",
        "cap",
        "retry",
    }
)
MODES: tuple[Mode, ...] = ("enforce", "dry-run")


@dataclass
class _Defaults:
    mode: Mode | None = None
    caps: tuple[CapSpec, ...] = ()
    retry: RetryPolicy = field(default_factory=RetryPolicy)


class Compiler:
    """Compiles a set of rules files into one :class:`RuleSet`, collecting every problem."""

    def __init__(
        self,
        resolver: SymbolResolver,
        actions: Mapping[str, ActionSpec],
        problems: Problems,
        *,
        capped_actions: frozenset[str] = frozenset(),
    ) -> None:
        self.p = problems
        self.ctx = CompileContext(resolver, problems)
        self.value_compiler = ValueCompiler(self.ctx)
        self.match_compiler = MatchCompiler(self.ctx)
        self.action_compiler = ActionCompiler(self.ctx, self.value_compiler, actions, capped_actions)
        self.defaults = _Defaults()
        self.defaults_mark: Mark | None = None

    # -- files ----------------------------------------------------------------

    def compile_files(
        self,
        paths: Sequence[Path],
        global_mode: str,
        *,
        shadow_check: bool = True,
        texts: Mapping[Path, str] | None = None,
    ) -> RuleSet:
        """The rule set of these files; problems go to ``self.p``.

        ``shadow_check=False`` leaves out the "can never match" warning when nothing else went
        wrong (see :func:`trapd.rules.load_rules`); with an error it is still looked for, so the
        report lists it beside the errors. ``texts``: the files' texts as read before (by path),
        compiled instead of reading the files again.
        """
        docs: list[YDict] = []
        self.p.files = [str(p) for p in paths]
        for path in paths:
            try:
                node = load_yaml(texts[path], str(path)) if texts is not None else load_yaml_file(path)
            except ConfigError as exc:
                self.p.add(exc)
                continue
            if node is None:
                continue
            if not isinstance(node, YDict):
                self.p.error(
                    "a rules file is a mapping with sources:, defaults: and rules:",
                    where(node) or Mark(str(path), 1, 1),
                )
                continue
            self.ctx.keys(node, FILE_KEYS, "a rules file")
            docs.append(node)
        # What the rules say, as parsed (not as laid out: comments, quoting, key order, file names
        # do not change it), with the mode: the hosts of a pair compare it (RuleSet.digest).
        digest = hashlib.blake2b(canonical(global_mode).encode(), digest_size=16)
        for doc in docs:
            digest.update(canonical({k: v for k, v in doc.items() if k != "rules"}).encode())
        # sources and defaults first (from every file): rules in any file may use them.
        for doc in docs:
            if "sources" in doc:
                self._sources(doc["sources"], where(doc, "sources"))
        for doc in docs:
            if "defaults" in doc:
                self._defaults(doc["defaults"], where(doc, "defaults"))
        rules: list[Rule] = []
        seen: dict[str, Mark | None] = {}
        for doc in docs:
            node = doc.get("rules")
            if node is None:
                continue
            if not isinstance(node, YList):
                self.p.error("rules must be a list of rules", where(doc, "rules"))
                continue
            for i, rnode in enumerate(node):
                digest.update(b"\x1e" + canonical(rnode).encode())
                rule = self._rule(rnode, where(node, i), len(rules))
                # The rule's YAML is not needed again: freeing it as we go keeps the peak
                # near the larger of the YAML and the compiled rules, not their sum.
                node[i] = None
                if rule is None:
                    continue
                if rule.name in seen:
                    first = seen[rule.name]
                    self.p.error(f"duplicate rule name {rule.name!r} (first defined at {first})", rule.mark)
                    continue
                seen[rule.name] = rule.mark
                rules.append(rule)
        resolver = self.ctx.resolver
        # Index objects are decoded by the loaded MIBs' INDEX clauses; a stand-in resolver (tests) has none.
        objects = functools.partial(index_objects, resolver) if isinstance(resolver, MibResolver) else None
        ruleset = RuleSet(
            rules,
            self.ctx.groups,
            global_mode,
            find_hidden=shadow_check or self.p.has_errors,
            index_objects=objects,
            digest=digest.hexdigest(),
        )
        for rule, earlier in ruleset.shadowed:
            self.p.warning(
                f"rule {rule.name!r} can never match: the earlier rule {earlier.name!r} "
                f"(at {earlier.mark}) matches every event it would and stops",
                rule.mark,
            )
        return ruleset

    # -- sources --------------------------------------------------------------

    def _sources(self, node: Any, mark: Mark | None) -> None:
        if not isinstance(node, YDict):
            self.p.error("sources must map group names to lists of addresses or networks", mark)
            return
        for name, entries in node.items():
            kmark = where(node, name, of_key=True)
            if not isinstance(name, str) or not NAME_RE.fullmatch(name):
                self.p.error(f"bad source group name {name!r} (letters, digits, . _ - : /)", kmark)
                continue
            if name in self.ctx.groups:
                self.p.error(
                    f"source group {name!r} is defined twice (first at {self.ctx.group_marks[name]})", kmark
                )
                continue
            nets = self.ctx.address_set(entries, where(node, name), f"source group {name}")
            if nets is not None:
                self.ctx.groups[name] = nets
                self.ctx.group_marks[name] = kmark

    # -- defaults -------------------------------------------------------------

    def _defaults(self, node: Any, mark: Mark | None) -> None:
        if self.defaults_mark is not None:
            self.p.error(f"defaults are defined twice (first at {self.defaults_mark})", mark)
            return
        self.defaults_mark = mark
        if not isinstance(node, YDict):
            self.p.error("defaults must be a mapping (mode, cap, retry)", mark)
            return
        self.ctx.keys(node, DEFAULT_KEYS, "defaults")
        if "mode" in node:
            self.defaults.mode = self._mode(node["mode"], where(node, "mode"))
        if "cap" in node:
            caps = self.action_compiler.caps(node["cap"], where(node, "cap"), "defaults", None)
            self.defaults.caps = tuple(replace(cap, every_rule=True) for cap in caps)
        if "retry" in node:
            self.defaults.retry = self.action_compiler.retry(
                node["retry"], where(node, "retry"), RetryPolicy()
            )

    def _mode(self, value: Any, mark: Mark | None) -> Mode | None:
        if value not in MODES:
            self.p.error(f"mode must be enforce or dry-run, got {value!r}", mark)
            return None
        return value  # type: ignore[no-any-return]

    # -- rules ----------------------------------------------------------------

    def _rule(self, node: Any, mark: Mark | None, position: int) -> Rule | None:
        if not isinstance(node, YDict):
            self.p.error("a rule is a mapping with name:, match: and actions:", mark)
            return None
        errors_before = len(self.p.items)
        self.ctx.keys(node, RULE_KEYS, "a rule")
        name = node.get("name")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            got = "" if name is None else f" (got {name!r})"
            if isinstance(name, bool):
                got = f" (got {name!r}: an unquoted yes/no/on/off/true/false is a YAML boolean; quote it)"
            self.p.error(
                "every rule needs a name: letters, digits and . _ - : / @ +, at most 128 characters" + got,
                where(node, "name") if "name" in node else mark,
            )
            name = f"#{position + 1}"
        scope = RuleScope(name)
        description = node.get("description", "")
        if not isinstance(description, str):
            self.p.error("description must be text", where(node, "description"))
            description = ""
        enabled = self._bool(node, "enabled", True)
        stop = not self._bool(node, "continue", False)
        mode = self.defaults.mode or "enforce"
        if "mode" in node:
            mode = self._mode(node["mode"], where(node, "mode")) or mode
        # match first: its regexes define the captures templates may use.
        cond = c.All(
            self.match_compiler.match(
                node.get("match"), where(node, "match") if "match" in node else mark, scope
            ),
            mark,
        )
        foreach = None
        if "foreach" in node:
            foreach = self.match_compiler.foreach(node["foreach"], where(node, "foreach"), scope)
        rule_caps: tuple[CapSpec, ...] = ()
        if "cap" in node:
            rule_caps = self.action_compiler.caps(node["cap"], where(node, "cap"), name, scope)
        retry = self.defaults.retry
        if "retry" in node:
            retry = self.action_compiler.retry(node["retry"], where(node, "retry"), retry)
        cancels: list[Value] = []
        if "cancel" in node:
            cn = node["cancel"]
            cnodes = cn if isinstance(cn, YList) else [cn]
            cmarks = cn.item_marks if isinstance(cn, YList) else [where(node, "cancel")]
            for v, m in zip(cnodes, cmarks, strict=False):
                if not isinstance(v, str):
                    self.p.error("cancel takes cancel keys: text templates, like the actions' cancel-key", m)
                    continue
                cancels.append(self.value_compiler.value(v, m, scope, "cancel"))
        actions: list[ActionCall] = []
        an = node.get("actions")
        if an is None:
            if not cancels:
                self.p.warning(f"rule {name!r} has no actions and cancels nothing", mark)
        elif not isinstance(an, YList):
            self.p.error("actions must be a list", where(node, "actions"))
        else:
            for i, anode in enumerate(an):
                call = self.action_compiler.action(
                    anode, where(an, i), i, scope, rule_caps + self.defaults.caps, retry
                )
                if call is not None:
                    actions.append(call)
        if self.p.has_errors_since(errors_before):
            return None
        return Rule(
            name=name,
            position=position,
            mark=mark,
            condition=cond,
            description=description,
            enabled=enabled,
            stop=stop,
            mode=mode,
            foreach=foreach,
            actions=tuple(actions),
            cancels=tuple(cancels),
        )

    def _bool(self, node: YDict, key: str, default: bool) -> bool:
        if key not in node:
            return default
        v = node[key]
        if not isinstance(v, bool):
            self.p.error(f"{key} must be true or false, got {v!r}", where(node, key))
            return default
        return v
