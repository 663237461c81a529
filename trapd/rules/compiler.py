"""From YAML to a RuleSet: every key checked, every problem reported with file:line:column.

The compiler walks the documents produced by :func:`trapd.yamlsource.load_yaml`
(plain dicts and lists that remember their positions) and appends every
problem to a :class:`~trapd.rules.problems.Problems` instead of stopping at
the first: netops fix a file in one pass when ``trapd check`` lists all of
it. See docs/rules.md for the language itself.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jinja2

from trapd import decoders
from trapd.event import Event
from trapd.listener.raw import Oid
from trapd.params import Param, ParamError, convert, parse_duration
from trapd.plugin import ActionSpec
from trapd.rules import conditions as c
from trapd.rules.context import EVENT_VARIABLES
from trapd.rules.outcome import Mode, RetryPolicy
from trapd.rules.problems import Problems
from trapd.rules.resolver import SymbolResolver, lookup_name
from trapd.rules.ruleset import (
    ActionCall,
    CapSpec,
    Const,
    ForEach,
    ListOf,
    MapOf,
    Rule,
    RuleSet,
    Template,
    Value,
)
from trapd.rules.sources import AddressSet, Net, parse_net
from trapd.rules.templates import JINJA_GLOBALS, TemplateInfo, analyse, is_template
from trapd.yamlsource import ConfigError, Mark, YDict, YList, load_yaml_file, where

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
MATCH_KEYS = frozenset(
    {
        "notification",
        "source",
        "version",
        "kind",
        "community",
        "user",
        "context",
        "varbinds",
        "all",
        "any",
        "not",
    }
)
ACTION_CONTROL_KEYS = frozenset(
    {"action", "params", "delay", "cancel-key", "once-within", "once-key", "key", "cap", "retry"}
)
CAP_KEYS = frozenset({"limit", "per", "key", "hold-for", "name"})
RETRY_KEYS = frozenset({"max-attempts", "max-age", "backoff"})
FOREACH_KEYS = frozenset({"items", "where"})
VALUE_OPS = frozenset(
    {
        "equals",
        "eq",
        "not-equals",
        "ne",
        "one-of",
        "in",
        "regex",
        "gt",
        "ge",
        "lt",
        "le",
        "range",
        "cidr",
        "exists",
        "absent",
        "index",
        "not",
    }
)
MODES: tuple[Mode, ...] = ("enforce", "dry-run")
VERSIONS = {"v1": "v1", "1": "v1", "v2c": "v2c", "2c": "v2c", "2": "v2c", "v3": "v3", "3": "v3"}
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}")
# Literal characters that can appear in a value of these types; a template
# whose constant text has anything else can never validate.
_TYPE_CHARS = {
    "integer": set("0123456789+- \t"),
    "ip-address": set("0123456789abcdefABCDEF:.%"),
    "ipv4": set("0123456789."),
    "ipv6": set("0123456789abcdefABCDEF:.%"),
    "mac-address": set("0123456789abcdefABCDEF:-."),
    "duid": set("0123456789abcdefABCDEF:-. x"),
    "hex": set("0123456789abcdefABCDEF:-. x"),
}


@dataclass
class _Defaults:
    mode: Mode | None = None
    caps: tuple[CapSpec, ...] = ()
    retry: RetryPolicy = field(default_factory=RetryPolicy)


@dataclass
class _RuleScope:
    """What a template in one rule may refer to."""

    name: str
    captures: set[str] = field(default_factory=set)
    foreach_kind: str | None = None


class Compiler:
    def __init__(
        self,
        resolver: SymbolResolver,
        actions: Mapping[str, ActionSpec],
        problems: Problems,
        *,
        capped_actions: frozenset[str] = frozenset(),
    ) -> None:
        self.resolver = resolver
        self.actions = actions
        self.p = problems
        self.capped_actions = capped_actions
        self.groups: dict[str, AddressSet] = {}
        self.group_marks: dict[str, Mark | None] = {}
        self.defaults = _Defaults()
        self.defaults_mark: Mark | None = None
        self.known_names = decoders.known_names()
        self._symbol_cache: dict[str, bool] = {}
        # The same template text is compiled once per file set (a rule set repeats "{{ source }}").
        self._templates: dict[str, tuple[jinja2.Template, TemplateInfo]] = {}

    # -- files ----------------------------------------------------------------

    def compile_files(self, paths: Sequence[Path], global_mode: str) -> RuleSet:
        docs: list[YDict] = []
        self.p.files = [str(p) for p in paths]
        for path in paths:
            try:
                node = load_yaml_file(path)
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
            self._keys(node, FILE_KEYS, "a rules file")
            docs.append(node)
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
                rule = self._rule(rnode, where(node, i), len(rules))
                if rule is None:
                    continue
                if rule.name in seen:
                    first = seen[rule.name]
                    self.p.error(f"duplicate rule name {rule.name!r} (first defined at {first})", rule.mark)
                    continue
                seen[rule.name] = rule.mark
                rules.append(rule)
        from trapd.rules.shadow import shadow_warnings

        for rule, earlier in shadow_warnings(rules):
            self.p.warning(
                f"rule {rule.name!r} can never match: the earlier rule {earlier.name!r} "
                f"(at {earlier.mark}) matches every event it would and stops",
                rule.mark,
            )
        return RuleSet(rules, self.groups, global_mode)

    def _keys(self, node: YDict, allowed: frozenset[str], what: str) -> None:
        for key in node:
            if key not in allowed:
                m = difflib.get_close_matches(str(key), sorted(allowed), n=1, cutoff=0.6)
                hint = f" (did you mean {m[0]!r}?)" if m else ""
                self.p.error(
                    f"unknown key {key!r} in {what}{hint}; allowed: {', '.join(sorted(allowed))}",
                    where(node, key, of_key=True),
                )

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
            if name in self.groups:
                self.p.error(
                    f"source group {name!r} is defined twice (first at {self.group_marks[name]})", kmark
                )
                continue
            nets = self.address_set(entries, where(node, name), f"source group {name}")
            if nets is not None:
                self.groups[name] = nets
                self.group_marks[name] = kmark

    def address_set(self, node: Any, mark: Mark | None, what: str) -> AddressSet | None:
        """A CIDR list with ``!`` negation and group names; None (reported) if invalid."""
        entries = node if isinstance(node, YList) else [node]
        marks = node.item_marks if isinstance(node, YList) else [mark]
        if not entries:
            self.p.error(f"{what}: an empty list matches nothing", mark)
            return None
        inc: list[Net] = []
        exc: list[Net] = []
        every = False
        ok = True
        for entry, emark in zip(entries, marks, strict=False):
            if not isinstance(entry, str):
                self.p.error(f"{what}: {entry!r} is not an address, network or group name (quote it)", emark)
                ok = False
                continue
            text = entry.strip()
            neg = text.startswith("!")
            text = text[1:].strip() if neg else text
            if text in self.groups:
                g = self.groups[text]
                if neg:
                    if g.exclude or g.include_all:
                        self.p.error(
                            f"{what}: group {text!r} has exclusions and cannot be negated here; "
                            "use {not: ...}",
                            emark,
                        )
                        ok = False
                        continue
                    exc += g.include
                else:
                    inc += g.include
                    exc += g.exclude
                    every = every or g.include_all
                continue
            try:
                net = parse_net(text)
            except ValueError:
                known = ", ".join(sorted(self.groups)) or "none defined"
                self.p.error(
                    f"{what}: {entry!r} is neither an address/network nor a source group (groups: {known})",
                    emark,
                )
                ok = False
                continue
            (exc if neg else inc).append(net)
        if not ok:
            return None
        if not inc and not every:
            every = True  # only exclusions: everything but those
        return AddressSet(tuple(inc), tuple(exc), every)

    # -- defaults -------------------------------------------------------------

    def _defaults(self, node: Any, mark: Mark | None) -> None:
        if self.defaults_mark is not None:
            self.p.error(f"defaults are defined twice (first at {self.defaults_mark})", mark)
            return
        self.defaults_mark = mark
        if not isinstance(node, YDict):
            self.p.error("defaults must be a mapping (mode, cap, retry)", mark)
            return
        self._keys(node, DEFAULT_KEYS, "defaults")
        if "mode" in node:
            self.defaults.mode = self._mode(node["mode"], where(node, "mode"))
        if "cap" in node:
            self.defaults.caps = self._caps(node["cap"], where(node, "cap"), "defaults", None)
        if "retry" in node:
            self.defaults.retry = self._retry(node["retry"], where(node, "retry"), RetryPolicy())

    def _mode(self, value: Any, mark: Mark | None) -> Mode | None:
        if value not in MODES:
            self.p.error(f"mode must be enforce or dry-run, got {value!r}", mark)
            return None
        return value  # type: ignore[no-any-return]

    def _duration(self, value: Any, mark: Mark | None, what: str) -> float | None:
        try:
            return parse_duration(value)
        except ParamError as exc:
            self.p.error(f"{what}: {exc}", mark)
            return None

    def _caps(
        self, node: Any, mark: Mark | None, default_name: str, scope: _RuleScope | None
    ) -> tuple[CapSpec, ...]:
        nodes = node if isinstance(node, YList) else [node]
        marks = node.item_marks if isinstance(node, YList) else [mark]
        out: list[CapSpec] = []
        for i, (n, m) in enumerate(zip(nodes, marks, strict=False)):
            if not isinstance(n, YDict):
                self.p.error(
                    "cap is a mapping {limit: N, per: DURATION, key: TEMPLATE, hold-for: DURATION}", m
                )
                continue
            self._keys(n, CAP_KEYS, "cap")
            limit = n.get("limit")
            if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
                self.p.error(f"cap.limit must be a positive integer, got {limit!r}", where(n, "limit"))
                continue
            if "per" not in n:
                self.p.error("cap.per is required (a duration such as 1m)", m)
                continue
            per = self._duration(n["per"], where(n, "per"), "cap.per")
            hold = self._duration(n.get("hold-for", 3600), where(n, "hold-for"), "cap.hold-for")
            key = self.value(n["key"], where(n, "key"), scope, "cap.key") if "key" in n else None
            name = n.get("name", default_name if len(nodes) == 1 else f"{default_name}/{i}")
            if not isinstance(name, str):
                self.p.error("cap.name must be text", where(n, "name"))
                continue
            if per is None or per <= 0 or hold is None:
                if per is not None and per <= 0:
                    self.p.error("cap.per must be longer than 0s", where(n, "per"))
                continue
            out.append(CapSpec(name, limit, per, key, hold))
        return tuple(out)

    def _retry(self, node: Any, mark: Mark | None, base: RetryPolicy) -> RetryPolicy:
        if not isinstance(node, YDict):
            self.p.error("retry is a mapping {max-attempts: N, max-age: DURATION, backoff: DURATION}", mark)
            return base
        self._keys(node, RETRY_KEYS, "retry")
        attempts = base.max_attempts
        if "max-attempts" in node:
            v = node["max-attempts"]
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                self.p.error(
                    f"retry.max-attempts must be a positive integer, got {v!r}", where(node, "max-attempts")
                )
            else:
                attempts = v
        age = base.max_age
        if "max-age" in node:
            age = self._duration(node["max-age"], where(node, "max-age"), "retry.max-age") or age
        backoff = base.backoff
        if "backoff" in node:
            backoff = self._duration(node["backoff"], where(node, "backoff"), "retry.backoff") or backoff
        return RetryPolicy(max_attempts=attempts, max_age=age, backoff=backoff)

    # -- rules ----------------------------------------------------------------

    def _rule(self, node: Any, mark: Mark | None, position: int) -> Rule | None:
        if not isinstance(node, YDict):
            self.p.error("a rule is a mapping with name:, match: and actions:", mark)
            return None
        errors_before = len(self.p.items)
        self._keys(node, RULE_KEYS, "a rule")
        name = node.get("name")
        if not isinstance(name, str) or not NAME_RE.fullmatch(name):
            self.p.error(
                "every rule needs a name: letters, digits and . _ - : / @ +, at most 128 characters"
                + (f" (got {name!r})" if name is not None else ""),
                where(node, "name") if "name" in node else mark,
            )
            name = f"#{position + 1}"
        scope = _RuleScope(name)
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
            self.match(node.get("match"), where(node, "match") if "match" in node else mark, scope), mark
        )
        foreach = None
        if "foreach" in node:
            foreach = self._foreach(node["foreach"], where(node, "foreach"), scope)
        rule_caps: tuple[CapSpec, ...] = ()
        if "cap" in node:
            rule_caps = self._caps(node["cap"], where(node, "cap"), name, scope)
        retry = self.defaults.retry
        if "retry" in node:
            retry = self._retry(node["retry"], where(node, "retry"), retry)
        cancels: list[Value] = []
        if "cancel" in node:
            cn = node["cancel"]
            cnodes = cn if isinstance(cn, YList) else [cn]
            cmarks = cn.item_marks if isinstance(cn, YList) else [where(node, "cancel")]
            for v, m in zip(cnodes, cmarks, strict=False):
                if not isinstance(v, str):
                    self.p.error("cancel takes cancel keys: text templates, like the actions' cancel-key", m)
                    continue
                cancels.append(self.value(v, m, scope, "cancel"))
        actions: list[ActionCall] = []
        an = node.get("actions")
        if an is None:
            if not cancels:
                self.p.warning(f"rule {name!r} has no actions and cancels nothing", mark)
        elif not isinstance(an, YList):
            self.p.error("actions must be a list", where(node, "actions"))
        else:
            for i, anode in enumerate(an):
                call = self._action(anode, where(an, i), i, scope, rule_caps, retry)
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

    # -- match ----------------------------------------------------------------

    def match(self, node: Any, mark: Mark | None, scope: _RuleScope) -> list[c.Cond]:
        if node is None:
            return []
        if not isinstance(node, YDict):
            self.p.error("match must be a mapping of conditions (all of them must hold)", mark)
            return []
        self._keys(node, MATCH_KEYS, "match")
        out: list[c.Cond] = []
        for key, value in node.items():
            m = where(node, key)
            km = where(node, key, of_key=True)
            cond: c.Cond | None = None
            if key == "notification":
                cond = self._notification(value, m)
            elif key == "source":
                cond = self._source(value, m)
            elif key == "version":
                cond = self._version(value, m)
            elif key == "kind":
                cond = self._field("kind", lambda e: e.kind, value, m, scope, choices=("trap", "inform"))
            elif key == "community":
                cond = self._field("community", lambda e: e.security.community, value, m, scope)
            elif key == "user":
                cond = self._field("user", lambda e: e.security.user, value, m, scope)
            elif key == "context":
                cond = self._field("context", lambda e: e.security.context_name, value, m, scope)
            elif key == "varbinds":
                out.extend(self._varbinds(value, m, scope))
                continue
            elif key in ("all", "any"):
                if not isinstance(value, YList) or not value:
                    self.p.error(f"{key} takes a non-empty list of condition mappings", m)
                    continue
                subs = [
                    c.All(self.match(v, where(value, i), scope), where(value, i)) for i, v in enumerate(value)
                ]
                ckey = ("any", tuple(_plain(v) for v in value))
                cond = c.All(subs, km, "all") if key == "all" else c.AnyOf(subs, km, ckey)
            elif key == "not":
                cond = c.Not(c.All(self.match(value, m, scope), m), km, ("not", _plain(value)))
            if cond is not None:
                out.append(cond)
        return out

    def symbol(self, name: str) -> Oid | None:
        """A MIB name or numeric OID; decoder-known names when no MIB has them."""
        return lookup_name(self.resolver, name, self.known_names)

    def _unknown_symbol(self, name: str, mark: Mark | None, what: str) -> None:
        self.p.error(
            f"unknown MIB symbol {name!r} in {what} (load the MIB that defines it, see mibs: in trapd.yaml, "
            "or give the numeric OID)",
            mark,
        )

    def _notification(self, node: Any, mark: Mark | None) -> c.Cond | None:
        entries = node if isinstance(node, YList) else [node]
        marks = node.item_marks if isinstance(node, YList) else [mark]
        exact: set[Oid] = set()
        prefixes: list[Oid] = []
        labels: list[str] = []
        for e, m in zip(entries, marks, strict=False):
            if isinstance(e, YDict):
                if set(e) != {"under"}:
                    self.p.error("a notification entry is a name, an OID, or {under: MODULE-OR-OID}", m)
                    continue
                target = e["under"]
                if not isinstance(target, str):
                    self.p.error(
                        "under: takes a MIB module name, a MIB node name or an OID", where(e, "under")
                    )
                    continue
                oid = self._subtree(target)
                # A module name also covers the notifications it defines outside its own
                # subtree (IF-MIB's linkDown sits under SNMPv2-MIB's snmpTraps).
                own = self.resolver.notifications_of(target) if not target[:1].isdigit() else frozenset()
                if oid is None and not own:
                    self._unknown_symbol(target, where(e, "under"), "notification under:")
                    continue
                if oid is not None:
                    prefixes.append(oid)
                exact |= own
                labels.append(f"under {target}")
            elif isinstance(e, str):
                oid = self.symbol(e)
                if oid is None:
                    self._unknown_symbol(e, m, "notification")
                    continue
                exact.add(oid)
                labels.append(e)
            else:
                self.p.error(f"notification: {e!r} is not a name or OID (quote numeric OIDs)", m)
        if not exact and not prefixes:
            return None
        return c.Notification(frozenset(exact), tuple(prefixes), " or ".join(labels), mark)

    def _subtree(self, name: str) -> Oid | None:
        text = name.strip()
        oid = self.resolver.subtree(text) if not text[:1].isdigit() else None
        if oid is None:
            oid = self.symbol(text)
        return oid

    def _source(self, node: Any, mark: Mark | None) -> c.Cond | None:
        if isinstance(node, YDict):
            if set(node) != {"not"}:
                self.p.error(
                    "source takes a group name, an address/network, a list of them, or {not: ...}", mark
                )
                return None
            inner = self._source(node["not"], where(node, "not"))
            return c.Not(c.All([inner], mark), mark, ("not", _plain(node))) if inner is not None else None
        nets = self.address_set(node, mark, "source")
        if nets is None:
            return None
        label = node if isinstance(node, str) else "[" + ", ".join(map(str, node)) + "]"
        return c.Source(nets, label, mark)

    def _version(self, node: Any, mark: Mark | None) -> c.Cond | None:
        entries = node if isinstance(node, YList) else [node]
        got: list[str] = []
        for e in entries:
            v = VERSIONS.get(str(e).strip().lower()) if not isinstance(e, bool) else None
            if v is None:
                self.p.error(f"version: {e!r} is not v1, v2c or v3", mark)
                return None
            got.append(v)
        opts = [c.Equals(None, v, v, {}) for v in got]
        test: c.ValueTest = opts[0] if len(opts) == 1 else c.OneOf(opts, ", ".join(got), {})
        cond = c.EventField("version", lambda e: e.version, [test], "version " + "|".join(got), mark)
        cond.key = ("version", frozenset(got))
        return cond

    def _field(
        self,
        field_name: str,
        getter: Callable[[Event], Any],
        node: Any,
        mark: Mark | None,
        scope: _RuleScope,
        choices: tuple[str, ...] = (),
    ) -> c.Cond | None:
        tests, exists = self.value_tests(node, mark, field_name, {}, scope)
        if tests is None:
            return None
        if exists is not None:
            self.p.error(f"{field_name}: exists/absent do not apply here", mark)
            return None
        if choices:
            for t in tests:
                opts = t.options if isinstance(t, c.OneOf) else (t,) if isinstance(t, c.Equals) else ()
                for o in opts:
                    if isinstance(o, c.Equals) and o.text not in choices:
                        self.p.error(f"{field_name}: {o.label!r} is not one of {', '.join(choices)}", mark)
                        return None
        cond = c.EventField(field_name, getter, tests, f"{field_name} {_plain(node)}", mark)
        cond.key = (field_name, _plain(node))
        return cond

    def _varbinds(self, node: Any, mark: Mark | None, scope: _RuleScope) -> list[c.Cond]:
        if not isinstance(node, YDict):
            self.p.error("varbinds maps varbind names (or OIDs) to conditions", mark)
            return []
        out: list[c.Cond] = []
        for name, spec in node.items():
            km = where(node, name, of_key=True)
            if not isinstance(name, str):
                self.p.error(f"varbind name {name!r} must be text (quote numeric OIDs)", km)
                continue
            oid = self.symbol(name)
            if oid is None:
                self._unknown_symbol(name, km, "varbinds")
                continue
            enums = self._enums(name)
            tests, exists = self.value_tests(spec, where(node, name), name, enums, scope, varbind=True)
            if tests is None:
                continue
            key = ("varbind", oid, _plain(spec))
            out.append(c.Varbind(oid, tests, exists, name, km, key))
        return out

    def _enums(self, name: str) -> dict[str, int]:
        """Enumeration of a varbind's syntax; ``ifOperStatus.17`` asks for ``ifOperStatus``."""
        candidates = [name]
        if not name[:1].isdigit():
            base = name
            while re.search(r"\.\d+$", base):
                base = re.sub(r"\.\d+$", "", base)
                candidates.append(base)
        for n in candidates:
            try:
                enums = self.resolver.enum_values(n)
            except Exception:  # a resolver that cannot answer for this name: no enums
                enums = {}
            if enums:
                return dict(enums)
        return {}

    # -- value operators --------------------------------------------------------

    def value_tests(
        self,
        node: Any,
        mark: Mark | None,
        what: str,
        enums: dict[str, int],
        scope: _RuleScope,
        *,
        varbind: bool = False,
    ) -> tuple[list[c.ValueTest] | None, bool | None]:
        """Operators for one value; (None, None) when invalid (already reported)."""
        names = {v: k for k, v in enums.items()}
        if node is None:
            self.p.error(f"{what}: no condition given (use a value, a list, or {{exists: true}})", mark)
            return None, None
        if isinstance(node, YList):
            eq = [self._equals(v, where(node, i), what, enums) for i, v in enumerate(node)]
            if not node or any(e is None for e in eq):
                if not node:
                    self.p.error(f"{what}: an empty list matches nothing", mark)
                return None, None
            opts = [e for e in eq if e is not None]
            return [c.OneOf(opts, ", ".join(o.label for o in opts), names)], None
        if not isinstance(node, YDict):
            e = self._equals(node, mark, what, enums)
            return ([e], None) if e is not None else (None, None)
        tests: list[c.ValueTest] = []
        exists: bool | None = None
        ok = True
        for op, arg in node.items():
            m = where(node, op)
            km = where(node, op, of_key=True)
            if op not in VALUE_OPS:
                hint = difflib.get_close_matches(str(op), sorted(VALUE_OPS), n=1, cutoff=0.6)
                self.p.error(
                    f"{what}: unknown operator {op!r}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + f"; operators: {', '.join(sorted(VALUE_OPS))}",
                    km,
                )
                ok = False
                continue
            if op in ("equals", "eq"):
                e = self._equals(arg, m, what, enums)
                ok = ok and e is not None
                if e is not None:
                    tests.append(e)
            elif op in ("not-equals", "ne"):
                e = self._equals(arg, m, what, enums)
                ok = ok and e is not None
                if e is not None:
                    tests.append(c.Negated(e, f"not {e.label}", names))
            elif op in ("one-of", "in"):
                if not isinstance(arg, YList) or not arg:
                    self.p.error(f"{what}: one-of takes a non-empty list", m)
                    ok = False
                    continue
                eq = [self._equals(v, where(arg, i), what, enums) for i, v in enumerate(arg)]
                if any(e is None for e in eq):
                    ok = False
                    continue
                opts = [e for e in eq if e is not None]
                tests.append(c.OneOf(opts, ", ".join(o.label for o in opts), names))
            elif op == "regex":
                r = self._regex(arg, m, what, scope)
                ok = ok and r is not None
                if r is not None:
                    tests.append(r)
            elif op in ("gt", "ge", "lt", "le"):
                n = self._number(arg, m, what, enums)
                ok = ok and n is not None
                if n is not None:
                    tests.append(c.Compare(op, n, f"{c._COMPARE_WORD[op]} {arg}", names))
            elif op == "range":
                if not isinstance(arg, YList) or len(arg) != 2:
                    self.p.error(f"{what}: range takes [LOW, HIGH] (both included)", m)
                    ok = False
                    continue
                lo = self._number(arg[0], where(arg, 0), what, enums)
                hi = self._number(arg[1], where(arg, 1), what, enums)
                if lo is None or hi is None:
                    ok = False
                    continue
                if lo > hi:
                    self.p.error(f"{what}: range [{lo}, {hi}] is empty (low above high)", m)
                    ok = False
                    continue
                tests.append(c.Compare("ge", lo, f"in range [{arg[0]}, {arg[1]}]", names))
                tests.append(c.Compare("le", hi, f"in range [{arg[0]}, {arg[1]}]", names))
            elif op == "cidr":
                nets = self.address_set(arg, m, f"{what} cidr")
                ok = ok and nets is not None
                if nets is not None:
                    tests.append(c.InNetworks(nets, str(_plain(arg))))
            elif op in ("exists", "absent"):
                if not isinstance(arg, bool):
                    self.p.error(f"{what}: {op} takes true or false", m)
                    ok = False
                    continue
                if not varbind:
                    self.p.error(f"{what}: {op} applies to varbinds only", km)
                    ok = False
                    continue
                exists = arg if op == "exists" else not arg
            elif op == "index":
                if not varbind:
                    self.p.error(f"{what}: index applies to varbinds only", km)
                    ok = False
                    continue
                sub, sub_exists = self.value_tests(arg, m, f"{what} index", {}, scope)
                if sub is None or sub_exists is not None:
                    ok = False
                    continue
                tests.append(c.IndexTest(sub, f"index {_plain(arg)}"))
            elif op == "not":
                sub, sub_exists = self.value_tests(arg, m, f"{what} not", enums, scope)
                if sub is None or sub_exists is not None:
                    if sub_exists is not None:
                        self.p.error(f"{what}: use absent: instead of not: {{exists: ...}}", m)
                    ok = False
                    continue
                inner: c.ValueTest = sub[0] if len(sub) == 1 else _AllTests(sub)
                tests.append(c.Negated(inner, f"not {inner.label}", names))
        if exists is False and tests:
            self.p.error(f"{what}: a varbind that must be absent has no value to test", mark)
            ok = False
        if not tests and exists is None and ok:
            self.p.error(f"{what}: no condition given", mark)
            ok = False
        return (tests if ok else None), exists

    def _equals(self, value: Any, mark: Mark | None, what: str, enums: dict[str, int]) -> c.Equals | None:
        names = {v: k for k, v in enums.items()}
        if isinstance(value, bool):
            self.p.error(
                f"{what}: {value!r} is a YAML boolean (yes/no/on/off/true/false); "
                "quote it if you mean the text",
                mark,
            )
            return None
        if isinstance(value, (int, float)):
            label = f"{names[int(value)]}({value})" if value in names else str(value)
            return c.Equals(value, None, label, names)
        if isinstance(value, str):
            if value in enums:
                return c.Equals(enums[value], None, f"{value}({enums[value]})", names)
            if re.fullmatch(r"[-+]?\d+", value.strip()):
                n = int(value)
                return c.Equals(n, None, f"{names[n]}({n})" if n in names else str(n), names)
            if enums:
                hint = difflib.get_close_matches(value, list(enums), n=1, cutoff=0.6)
                self.p.error(
                    f"{what}: {value!r} is not a value of this enumeration"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + f"; values: {', '.join(f'{k}({v})' for k, v in enums.items())}",
                    mark,
                )
                return None
            return c.Equals(None, value, repr(value), names)
        self.p.error(f"{what}: {value!r} is not a value to compare with (a number or text)", mark)
        return None

    def _number(self, value: Any, mark: Mark | None, what: str, enums: dict[str, int]) -> float | None:
        if isinstance(value, bool):
            self.p.error(f"{what}: a comparison needs a number, got {value!r}", mark)
            return None
        if isinstance(value, (int, float)):
            return value
        if isinstance(value, str) and value in enums:
            return enums[value]
        self.p.error(f"{what}: a comparison needs a number, got {value!r}", mark)
        return None

    def _regex(self, value: Any, mark: Mark | None, what: str, scope: _RuleScope) -> c.Regex | None:
        if not isinstance(value, str):
            self.p.error(f"{what}: regex takes a pattern (text; single-quote it in YAML)", mark)
            return None
        try:
            pattern = re.compile(value)
        except re.error as exc:
            self.p.error(f"{what}: bad regex: {exc.msg} at position {exc.pos} of the pattern", mark)
            return None
        reserved = [g for g in pattern.groupindex if g in EVENT_VARIABLES or g in JINJA_GLOBALS]
        # The other groups still count, so templates using them are not reported as well.
        scope.captures.update(g for g in pattern.groupindex if g not in reserved)
        for g in reserved:
            self.p.error(
                f"{what}: the regex group name {g!r} is a reserved template variable; rename the group", mark
            )
        if reserved:
            return None
        return c.Regex(pattern, f"regex {value!r}")

    # -- foreach ----------------------------------------------------------------

    def _foreach(self, node: Any, mark: Mark | None, scope: _RuleScope) -> ForEach | None:
        kinds = decoders.kinds()
        if isinstance(node, str):
            node_map: YDict | None = None
            kind = node
        elif isinstance(node, YDict):
            self._keys(node, FOREACH_KEYS, "foreach")
            node_map = node
            items = node.get("items")
            if not isinstance(items, str):
                self.p.error(f"foreach.items names the decoded items: {', '.join(sorted(kinds))}", mark)
                return None
            kind = items
        else:
            self.p.error(
                f"foreach takes an item kind ({', '.join(sorted(kinds))}) or {{items:, where:}}", mark
            )
            return None
        if kind not in kinds:
            self.p.error(f"foreach: unknown item kind {kind!r}; known: {', '.join(sorted(kinds))}", mark)
            return None
        scope.foreach_kind = kind
        where_tests: list[tuple[str, tuple[c.ValueTest, ...]]] = []
        if node_map is not None and "where" in node_map:
            w = node_map["where"]
            if not isinstance(w, YDict):
                self.p.error("foreach.where maps item fields to conditions", where(node_map, "where"))
                return None
            for fname, spec in w.items():
                if fname not in kinds[kind]:
                    self.p.error(
                        f"foreach.where: {kind} items have no field {fname!r}; "
                        f"fields: {', '.join(kinds[kind])}",
                        where(w, fname, of_key=True),
                    )
                    continue
                tests, _exists = self.value_tests(spec, where(w, fname), f"where {fname}", {}, scope)
                if tests is not None:
                    where_tests.append((str(fname), tuple(tests)))
        return ForEach(kind, decoders.decoders_for(kind), tuple(where_tests), mark)

    # -- actions ----------------------------------------------------------------

    def _action(
        self,
        node: Any,
        mark: Mark | None,
        index: int,
        scope: _RuleScope,
        rule_caps: tuple[CapSpec, ...],
        retry: RetryPolicy,
    ) -> ActionCall | None:
        if not isinstance(node, YDict) or "action" not in node:
            self.p.error("an action is a mapping with action: NAME and its parameters", mark)
            return None
        name = node["action"]
        if not isinstance(name, str):
            self.p.error("action: takes an action plugin name", where(node, "action"))
            return None
        spec = self.actions.get(name)
        if spec is None:
            hint = difflib.get_close_matches(name, list(self.actions), n=1, cutoff=0.6)
            self.p.error(
                f"unknown action {name!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; installed: {', '.join(sorted(self.actions)) or 'none'} (see `trapd actions`)",
                where(node, "action"),
            )
            return None
        raw: dict[str, tuple[Any, Mark | None, Mark | None]] = {}
        for k, v in node.items():
            if k not in ACTION_CONTROL_KEYS:
                raw[k] = (v, where(node, k), where(node, k, of_key=True))
        if "params" in node:
            pn = node["params"]
            if not isinstance(pn, YDict):
                self.p.error("params must be a mapping of parameter names to values", where(node, "params"))
            else:
                for k, v in pn.items():
                    if k in raw:
                        self.p.error(
                            f"parameter {k!r} is given twice (here and in params:)", where(pn, k, of_key=True)
                        )
                    raw[k] = (v, where(pn, k), where(pn, k, of_key=True))
        params: dict[str, Value] = {}
        for k, (v, vm, km) in raw.items():
            p = spec.params.get(k)
            if p is None:
                hint = difflib.get_close_matches(
                    str(k), [*spec.params, *ACTION_CONTROL_KEYS], n=1, cutoff=0.6
                )
                self.p.error(
                    f"{name} has no parameter {k!r}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + f"; parameters: {', '.join(spec.params) or 'none'}",
                    km,
                )
                continue
            val = self.value(v, vm, scope, f"{name}.{k}")
            self._static_param_check(name, k, p, v, val, vm)
            params[k] = val
        for k, p in spec.params.items():
            if p.required and k not in raw and p.default is None:
                self.p.error(f"{name} needs the parameter {k!r} ({p.describe()})", where(node, "action"))
        delay = 0.0
        if "delay" in node:
            delay = self._duration(node["delay"], where(node, "delay"), "delay") or 0.0
        cancel_key = self._template_key(node, "cancel-key", scope)
        if cancel_key is not None and not delay:
            self.p.warning(
                "cancel-key only matters for a delayed action (add delay:)", where(node, "cancel-key")
            )
        once_within = None
        if "once-within" in node:
            once_within = self._duration(node["once-within"], where(node, "once-within"), "once-within")
        once_key = self._template_key(node, "once-key", scope)
        if once_key is not None and once_within is None:
            self.p.warning("once-key only matters with once-within", where(node, "once-key"))
        key = self._template_key(node, "key", scope)
        caps: tuple[CapSpec, ...] = ()
        if "cap" in node:
            caps = self._caps(node["cap"], where(node, "cap"), f"{scope.name}#{index}", scope)
        if spec.destructive:
            caps = caps + rule_caps + self.defaults.caps
            if not caps and name not in self.capped_actions:
                self.p.error(
                    f"{name} is destructive: give it a cap "
                    '(cap: {limit: 50, per: 1m, key: "{{ source }}"}) '
                    "on the action, the rule, or in defaults:",
                    where(node, "action"),
                )
        if "retry" in node:
            retry = self._retry(node["retry"], where(node, "retry"), retry)
        return ActionCall(
            index=index,
            action=name,
            spec=spec,
            params=params,
            mark=mark,
            delay=delay,
            cancel_key=cancel_key,
            once_within=once_within,
            once_key=once_key,
            key=key,
            caps=caps,
            retry=retry,
        )

    def _template_key(self, node: YDict, key: str, scope: _RuleScope) -> Value | None:
        if key not in node:
            return None
        v = node[key]
        if not isinstance(v, (str, int)) or isinstance(v, bool):
            self.p.error(f"{key} takes text (usually a template)", where(node, key))
            return None
        return self.value(str(v), where(node, key), scope, key)

    def _static_param_check(
        self, action: str, name: str, p: Param, raw: Any, val: Value, mark: Mark | None
    ) -> None:
        """Parameters that can never validate: constants that fail, templates whose text cannot fit."""
        if isinstance(val, Const):
            try:
                convert(p, raw, name)
            except ParamError as exc:
                self.p.error(f"{action}: {exc}", mark)
            return
        if isinstance(val, Template):
            allowed = _TYPE_CHARS.get(p.type)
            info = val.info
            if allowed is not None and info is not None:
                bad = sorted({ch for ch in info.literal if ch not in allowed})
                if bad:
                    self.p.error(
                        f"{action}.{name} is a {p.type}; the constant text {''.join(bad)!r} "
                        "around the template "
                        "means it can never validate",
                        mark,
                    )
            if p.type in ("list", "mapping"):
                self.p.error(
                    f"{action}.{name} is a {p.type}; write it as a YAML {p.type}, not one template", mark
                )
            elif (
                p.type == "enum" and info is not None and not info.variables and info.literal not in p.choices
            ):
                self.p.error(f"{action}.{name}: {info.literal!r} is not one of {', '.join(p.choices)}", mark)
        elif isinstance(val, ListOf) and p.type not in ("list", "any"):
            self.p.error(f"{action}.{name} is a {p.type}, not a list", mark)
        elif isinstance(val, MapOf) and p.type not in ("mapping", "any"):
            self.p.error(f"{action}.{name} is a {p.type}, not a mapping", mark)

    # -- templates ----------------------------------------------------------------

    def value(self, node: Any, mark: Mark | None, scope: _RuleScope | None, what: str) -> Value:
        """A parameter value: templates compiled (and checked) now; lists and mappings recursively."""
        if isinstance(node, str) and is_template(node):
            return self._template(node, mark, scope, what)
        if isinstance(node, YList):
            return ListOf([self.value(v, where(node, i), scope, f"{what}[{i}]") for i, v in enumerate(node)])
        if isinstance(node, YDict):
            return MapOf(
                {str(k): self.value(v, where(node, k), scope, f"{what}.{k}") for k, v in node.items()}
            )
        return Const(node)

    def _template(self, source: str, mark: Mark | None, scope: _RuleScope | None, what: str) -> Value:
        try:
            hit = self._templates.get(source)
            if hit is None:
                hit = self._templates[source] = analyse(source)
            tmpl, info = hit
        except jinja2.TemplateSyntaxError as exc:
            at = Mark(mark.file, mark.line + max((exc.lineno or 1) - 1, 0), mark.column) if mark else None
            self.p.error(f"{what}: template syntax error: {exc.message}", at)
            return Const(source)
        self._check_variables(info, mark, scope, what)
        return Template(tmpl, source, info)

    def _check_variables(
        self, info: TemplateInfo, mark: Mark | None, scope: _RuleScope | None, what: str
    ) -> None:
        for var in sorted(info.variables):
            if var == "item":
                if scope is None or scope.foreach_kind is None:
                    self.p.error(f"{what}: 'item' is only defined in a rule with foreach:", mark)
                continue
            if var in EVENT_VARIABLES or var in JINJA_GLOBALS:
                continue
            if scope is not None and var in scope.captures:
                continue
            if self._is_symbol(var):
                continue
            hint = difflib.get_close_matches(
                var, [*EVENT_VARIABLES, *(scope.captures if scope else ())], n=1, cutoff=0.7
            )
            self.p.error(
                f"{what}: undefined template variable {var!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + ": not an event field, a regex group of this rule, or a MIB symbol",
                mark,
            )
        if scope is not None and scope.foreach_kind is not None and info.item_fields:
            fields = decoders.kinds().get(scope.foreach_kind, {})
            for f in sorted(info.item_fields - set(fields)):
                self.p.error(
                    f"{what}: {scope.foreach_kind} items have no field {f!r}; fields: {', '.join(fields)}",
                    mark,
                )

    def _is_symbol(self, name: str) -> bool:
        hit = self._symbol_cache.get(name)
        if hit is None:
            hit = self.symbol(name) is not None
            self._symbol_cache[name] = hit
        return hit


class _AllTests(c.ValueTest):
    def __init__(self, tests: Sequence[c.ValueTest]) -> None:
        self.tests = tuple(tests)
        self.label = " and ".join(t.label for t in tests)

    def test(self, s: c.Subject, st: c.EvalState) -> bool:
        return all(t.test(s, st) for t in self.tests)


def _plain(node: Any) -> Any:
    """A hashable canonical form of a YAML subtree (for "same condition")."""
    try:
        return json.dumps(node, sort_keys=True, default=str)
    except (TypeError, ValueError):
        return repr(node)
