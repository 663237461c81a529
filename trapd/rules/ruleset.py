"""The compiled rule set: immutable, indexed by what rules test for equality, evaluated per event.

``evaluate`` is the daemon's hot path. Candidate rules come from an index
(:mod:`trapd.rules.index`: notification OIDs and ``under:`` prefixes, source
networks, varbind values), merged in file order, so a trap nobody wrote a
rule for costs a few dict lookups and the rules without equality tests.
Templates are rendered and parameters validated only for a rule that
matched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import jinja2

from trapd.decoders import Decoded, ItemDecoder, decode_items
from trapd.event import Event
from trapd.listener.raw import Oid
from trapd.params import ParamError, validate
from trapd.plugin import ActionSpec
from trapd.rules.conditions import All, Cond, EvalState, Notification, RegexTimeout, Subject, ValueTest
from trapd.rules.context import IndexObjects, event_context
from trapd.rules.index import RuleIndex
from trapd.rules.outcome import Mode, Outcome, PlannedAction, RateCap, Rejection, RetryPolicy
from trapd.rules.shadow import index_rules
from trapd.rules.sources import AddressSet, addr_key
from trapd.rules.templates import (
    ENV,
    RENDER_ERRORS,
    TemplateInfo,
    end_event_budget,
    event_budget,
    render_fast,
)
from trapd.yamlsource import Mark

# ---------------------------------------------------------------- rendered values


class Value:
    """A parameter value: constant, template, or a list / mapping of those."""

    def render(self, ctx: Mapping[str, Any]) -> Any:
        raise NotImplementedError


class Const(Value):
    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def render(self, ctx: Mapping[str, Any]) -> Any:
        return self.value


class Template(Value):
    __slots__ = ("info", "source", "template")

    def __init__(self, template: jinja2.Template, source: str, info: TemplateInfo | None = None) -> None:
        self.template = template
        self.source = source
        self.info = info

    def render(self, ctx: Mapping[str, Any]) -> Any:
        # ctx is the per-rule dict built in RuleSet._plan, globals included
        return render_fast(self.template, self.info.path if self.info else None, ctx)  # type: ignore[arg-type]


class ListOf(Value):
    __slots__ = ("items",)

    def __init__(self, items: Sequence[Value]) -> None:
        self.items = tuple(items)

    def render(self, ctx: Mapping[str, Any]) -> Any:
        return [v.render(ctx) for v in self.items]


class MapOf(Value):
    __slots__ = ("items",)

    def __init__(self, items: Mapping[str, Value]) -> None:
        self.items = dict(items)

    def render(self, ctx: Mapping[str, Any]) -> Any:
        return {k: v.render(ctx) for k, v in self.items.items()}


# ---------------------------------------------------------------- compiled pieces


@dataclass(frozen=True, slots=True)
class CapSpec:
    name: str
    limit: int
    per: float
    key: Value | None
    hold_for: float
    every_rule: bool = False  # a cap of defaults: counted over every rule's actions together


@dataclass(frozen=True, slots=True)
class ActionCall:
    """One entry of a rule's ``actions:`` list, compiled."""

    index: int
    action: str
    spec: ActionSpec
    params: Mapping[str, Value]
    mark: Mark | None
    delay: float = 0.0
    cancel_key: Value | None = None
    once_within: float | None = None
    once_key: Value | None = None
    key: Value | None = None
    caps: tuple[CapSpec, ...] = ()
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # What the entry says (a digest of it as parsed: see compile_actions.definition_digest): the
    # same in two versions of a rule file wherever the entry sits, another for a changed entry.
    definition: str = ""


@dataclass(frozen=True, slots=True)
class ForEach:
    kind: str
    decoders: tuple[ItemDecoder, ...]
    where: tuple[tuple[str, tuple[ValueTest, ...]], ...]
    mark: Mark | None

    def passing(
        self, items: Sequence[dict[str, Any]], st: EvalState
    ) -> list[tuple[dict[str, Any], dict[str, str]]]:
        """The items that pass ``where``, each with its regex groups: the rule's, and those of its
        own ``where`` tests (not those of another item, nor of one that failed a later test)."""
        rule_groups = st.captures
        out: list[tuple[dict[str, Any], dict[str, str]]] = []
        for it in items:
            st.captures = dict(rule_groups)
            if self.accepts(it, st):
                out.append((it, st.captures))
        st.captures = rule_groups
        return out

    def accepts(self, item: Mapping[str, Any], st: EvalState) -> bool:
        for name, tests in self.where:
            if name not in item:
                return False
            s = Subject(item[name])
            for t in tests:
                if not t.test(s, st):
                    return False
        return True

    def why_not(self, items: Sequence[Mapping[str, Any]], st: EvalState) -> str:
        if not items:
            return f"foreach {self.kind}: the event carries no {self.kind} items"
        reasons = []
        for name, tests in self.where:
            for t in tests:
                vals = [it.get(name) for it in items]
                reasons.append(f"{name} {t.label} (items have {', '.join(map(str, vals[:5]))})")
        return f"foreach {self.kind}: no item matched where: " + "; ".join(reasons)


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    position: int
    mark: Mark | None
    condition: All
    description: str = ""
    enabled: bool = True
    stop: bool = True
    mode: Mode = "enforce"
    foreach: ForEach | None = None
    actions: tuple[ActionCall, ...] = ()
    cancels: tuple[Value, ...] = ()

    @property
    def notification(self) -> Notification | None:
        for a in self.condition.atoms():
            if isinstance(a, Notification):
                return a
        return None


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """What one rule did with one event, for ``trapd test``.

    ``status``: ``matched``, ``no-match``, ``disabled`` or ``not-reached``
    (an earlier matching rule stopped the evaluation). ``reason`` is the
    first condition that failed, with its position in ``reason_mark``.
    """

    rule: str
    mark: Mark | None
    status: str
    reason: str | None = None
    reason_mark: Mark | None = None
    outcome: Outcome = field(default_factory=Outcome)


@dataclass(frozen=True, slots=True)
class ClearingOids:
    """The notifications that can clear a pending action: those a rule with ``cancel:`` selects.

    The listener's rate limiter lets these through after ordinary traffic is
    shed (a linkUp that cancels a pending lease deletion must not be lost to
    a storm of linkDowns). ``any`` is set when an enabled cancelling rule has
    no top-level notification condition: then any notification may clear.
    """

    exact: frozenset[Oid] = frozenset()
    prefixes: tuple[Oid, ...] = ()
    any: bool = False

    def covers(self, trap_oid: Oid) -> bool:
        if self.any or trap_oid in self.exact:
            return True
        return any(trap_oid[: len(p)] == p for p in self.prefixes)

    @classmethod
    def of(cls, rules: Sequence[Rule]) -> ClearingOids:
        exact: set[Oid] = set()
        prefixes: set[Oid] = set()
        for r in rules:
            if not r.enabled or not r.cancels:
                continue
            n = r.notification
            if n is None or n not in r.condition.items:  # nested under any/not: cannot narrow it
                return cls(any=True)
            exact.update(n.exact)
            prefixes.update(n.prefixes)
        return cls(frozenset(exact), tuple(sorted(prefixes)))


# ---------------------------------------------------------------- the rule set

_MISSING = object()
_CACHE_LIMIT = 4096  # (notification OID, source) pairs whose candidates are remembered
_SOURCE_CACHE_LIMIT = 65536  # distinct sender addresses remembered (a site has far fewer switches)
_EMPTY = Outcome()


class RuleSet:
    """Compiled rules. Immutable after construction (the per-source group cache is derived data).

    Candidate selection is a :class:`~trapd.rules.index.RuleIndex`: the rules
    are stored by what they test for equality (notification OID or ``under:``
    prefix, source network, varbind value), and an event collects the rules
    whose values it has, in file order. Each candidate is then tested on what
    the index did not already prove. A trap with an OID no rule names, from a
    switch no rule covers, costs a few dict lookups; 100,000 per-port rules on
    one notification cost the same per event as 10.
    """

    def __init__(
        self,
        rules: Sequence[Rule],
        source_groups: Mapping[str, AddressSet],
        global_mode: str,
        *,
        find_hidden: bool = True,
        index_objects: IndexObjects | None = None,
        digest: str = "",
    ) -> None:
        self._rules = tuple(rules)
        # What the rules files say, as parsed, with the mode (compiler.compile_files; "" when
        # built otherwise): the hosts of a pair publish it to see that they act alike.
        self.digest = digest
        self.index_objects = index_objects
        self.names: tuple[str, ...] = tuple(r.name for r in self._rules)
        self.source_groups: Mapping[str, AddressSet] = MappingProxyType(dict(source_groups))
        self.global_mode = global_mode
        indexed = index_rules(self._rules, find_hidden=find_hidden)
        self._index: RuleIndex = indexed.index
        # Found while indexing (the shadow check walks the same trie): the compiler warns of them.
        # Empty with find_hidden=False.
        self.shadowed: tuple[tuple[Rule, Rule], ...] = tuple(
            (self._rules[i], self._rules[j]) for i, j in indexed.hidden
        )
        self._residual: list[All] = []
        for r, settled in zip(self._rules, indexed.settled, strict=True):
            # What an index hit proves needs no test of its own (only top-level items; nested ones stay).
            items = [c for c in r.condition.items if c not in settled]  # a Cond equals only itself
            same = len(items) == len(r.condition.items)
            self._residual.append(r.condition if same else All(items, r.condition.mark))
        self._group_cache: dict[str, str | None] = {}
        self._source_keys: dict[str, object] = {}
        self._candidates: dict[tuple[Oid, str], Sequence[int]] = {}
        self._clearing = ClearingOids.of(self._rules)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    def __len__(self) -> int:
        return len(self._rules)

    def group_of(self, address: str) -> str | None:
        """The first source group (in definition order) that contains the address."""
        hit = self._group_cache.get(address, _MISSING)
        if hit is not _MISSING:
            return hit  # type: ignore[return-value]
        group: str | None = None
        key = self._source_key(address)  # parsed once for this and for evaluate()
        if key is not None:
            group = next((name for name, nets in self.source_groups.items() if nets.contains(key)), None)
        if len(self._group_cache) >= _SOURCE_CACHE_LIMIT:
            self._group_cache.clear()
        self._group_cache[address] = group
        return group

    def _source_key(self, source: str) -> tuple[int, int] | None:
        """The parsed sender address, cached: parsing it took most of a non-matching event's 4 µs."""
        key = self._source_keys.get(source, _MISSING)
        if key is _MISSING:
            key = addr_key(source)
            if len(self._source_keys) >= _SOURCE_CACHE_LIMIT:
                self._source_keys.clear()  # a storm of spoofed sources must not grow memory
            self._source_keys[source] = key
        return key  # type: ignore[return-value]

    @property
    def clearing_oids(self) -> ClearingOids:
        """Which notifications a ``cancel:`` rule selects."""
        return self._clearing

    def clears(self, trap_oid: Oid) -> bool:
        """True if a notification with this OID may cancel pending actions (a rule with ``cancel:``)."""
        return self.clearing_oids.covers(trap_oid)

    def candidates(self, trap_oid: Oid) -> tuple[Rule, ...]:
        """Enabled rules whose notification condition (if any) selects this OID, in file order."""
        return tuple(
            r for r in self._rules if r.enabled and ((n := r.notification) is None or n.covers(trap_oid))
        )

    # -- evaluation ---------------------------------------------------------

    def evaluate(self, event: Event) -> Outcome:
        """Match, render and validate: what should happen for this event. Runs nothing."""
        matched: list[str] = []
        planned: list[PlannedAction] = []
        cancels: list[str] = []
        rejected: list[Rejection] = []
        base: dict[str, Any] | None = None
        st: EvalState | None = None
        pair = (event.trap_oid, event.source)
        candidates = self._candidates.get(pair)
        if candidates is None:
            st = EvalState(event, self._source_key(event.source))
            candidates, by_pair = self._index.lookup(st)
            if by_pair:
                # Most traffic repeats (OID, switch) pairs that no varbind decides, such as
                # OIDs no rule names: 0.6 µs per such event instead of 2.2 µs (the 1,000-rule mix).
                if len(self._candidates) >= _CACHE_LIMIT:
                    self._candidates.clear()  # a storm of distinct pairs must not grow memory
                self._candidates[pair] = candidates
        if not candidates:
            return _EMPTY
        if st is None:
            st = EvalState(event, self._source_key(event.source))
        rules, residual = self._rules, self._residual
        budget = None  # one time bound for all of this event's renders, from its first match
        try:
            for i in candidates:
                rule = rules[i]
                if st.captures:
                    st.captures = {}
                items: list[tuple[dict[str, Any], dict[str, str]]] | None = None
                try:
                    if not residual[i].test(st):
                        continue
                    if rule.foreach is not None:
                        decoded = decode_items(rule.foreach.kind, event, rule.foreach.decoders)
                        rejected.extend(_decode_rejections(rule, decoded))
                        items = rule.foreach.passing(decoded.items, st)
                        if not items:
                            continue
                except RegexTimeout as exc:
                    # Undecided: neither this rule nor the rules after it (whether it would have
                    # stopped the evaluation is unknown), so nothing runs in its place.
                    rejected.append(Rejection(rule.name, "match", -1, str(exc), "regex"))
                    break
                matched.append(rule.name)
                if base is None:
                    base = event_context(
                        event,
                        rule="",
                        source_group=self.group_of(event.source),
                        index_objects=self.index_objects,
                    )
                    budget = event_budget()
                self._plan(rule, base, st.captures, items, planned, cancels, rejected)
                if rule.stop:
                    break
        finally:
            if budget is not None:
                end_event_budget(budget)
        if not matched and not rejected:
            return _EMPTY
        return Outcome(tuple(matched), tuple(planned), tuple(cancels), tuple(rejected))

    def explain(self, event: Event) -> list[RuleTrace]:
        """Every rule in order: matched (with its outcome), or the first condition that failed."""
        budget = event_budget()  # as in evaluate: one time bound for the event's renders
        try:
            return self._explain(event)
        finally:
            end_event_budget(budget)

    def _explain(self, event: Event) -> list[RuleTrace]:
        traces: list[RuleTrace] = []
        stopped_by: str | None = None
        base: dict[str, Any] | None = None
        st = EvalState(event)  # one per event, as in evaluate: the regex time is the event's
        for rule in self._rules:
            if not rule.enabled:
                traces.append(RuleTrace(rule.name, rule.mark, "disabled"))
                continue
            if stopped_by is not None:
                traces.append(RuleTrace(rule.name, rule.mark, "not-reached", f"stopped by rule {stopped_by}"))
                continue
            st.captures = {}
            items: list[tuple[dict[str, Any], dict[str, str]]] | None = None
            rejected: list[Rejection] = []
            try:
                failed = _first_failure(rule.condition, st)
                if failed is not None:
                    traces.append(RuleTrace(rule.name, rule.mark, "no-match", failed.why(st), failed.mark))
                    continue
                if rule.foreach is not None:
                    decoded = decode_items(rule.foreach.kind, event, rule.foreach.decoders)
                    rejected.extend(_decode_rejections(rule, decoded))
                    items = rule.foreach.passing(decoded.items, st)
                    if not items:
                        why = rule.foreach.why_not(decoded.items, st)
                        out = Outcome(rejected=tuple(rejected))
                        trace = RuleTrace(rule.name, rule.mark, "no-match", why, rule.foreach.mark, out)
                        traces.append(trace)
                        continue
            except RegexTimeout as exc:  # as in evaluate: this rule and the rest are undecided
                traces.append(RuleTrace(rule.name, rule.mark, "no-match", str(exc)))
                stopped_by = f"{rule.name} (its regex ran out of time)"
                continue
            if base is None:
                base = event_context(
                    event, rule="", source_group=self.group_of(event.source), index_objects=self.index_objects
                )
            planned: list[PlannedAction] = []
            cancels: list[str] = []
            self._plan(rule, base, st.captures, items, planned, cancels, rejected)
            out = Outcome((rule.name,), tuple(planned), tuple(cancels), tuple(rejected))
            traces.append(RuleTrace(rule.name, rule.mark, "matched", outcome=out))
            if rule.stop:
                stopped_by = rule.name
        return traces

    def _plan(
        self,
        rule: Rule,
        base: dict[str, Any],
        captures: Mapping[str, str],
        items: Sequence[tuple[dict[str, Any], dict[str, str]]] | None,
        planned: list[PlannedAction],
        cancels: list[str],
        rejected: list[Rejection],
    ) -> None:
        """``captures``: the regex groups of the rule's conditions; in a ``foreach`` rule each item
        comes with its own groups (see :meth:`ForEach.passing`), which replace them."""
        mode: Mode = "dry-run" if self.global_mode == "dry-run" else rule.mode
        pairs = ((None, captures),) if items is None else items
        for item, groups in pairs:
            ctx = dict(ENV.globals)
            ctx.update(base)
            ctx.update(groups)
            ctx["groups"] = dict(groups)
            ctx["rule"] = rule.name
            if item is not None:
                ctx["item"] = item
            for c in rule.cancels:
                try:
                    cancels.append(str(c.render(ctx)))
                except RENDER_ERRORS as exc:
                    rejected.append(Rejection(rule.name, "cancel", -1, f"cancel: {_reason(exc)}", "template"))
            for call in rule.actions:
                try:
                    planned.append(_plan_call(rule, call, ctx, mode, item))
                except ParamError as exc:
                    rejected.append(Rejection(rule.name, call.action, call.index, str(exc), "parameter"))
                except RENDER_ERRORS as exc:
                    rejected.append(Rejection(rule.name, call.action, call.index, _reason(exc), "template"))


def _first_failure(cond: All, st: EvalState) -> Cond | None:
    c = cond.first_failure(st)
    while isinstance(c, All):
        inner = c.first_failure(st)
        if inner is None:
            break
        c = inner
    return c


def _decode_rejections(rule: Rule, decoded: Decoded) -> list[Rejection]:
    return [Rejection(rule.name, "foreach", -1, p, "decoder") for p in decoded.problems]


def _reason(exc: BaseException) -> str:
    if isinstance(exc, jinja2.UndefinedError):
        return f"template: {exc.message}"
    if isinstance(exc, jinja2.TemplateError):
        return f"template: {exc}"
    return f"template: {exc}"


def _render_str(v: Value | None, ctx: Mapping[str, Any]) -> str | None:
    if v is None:
        return None
    out = v.render(ctx)
    if not isinstance(out, str):
        out = str(out)
    if len(out) > 1024:
        raise ParamError("a key longer than 1024 characters")
    return out


def _plan_call(
    rule: Rule, call: ActionCall, ctx: Mapping[str, Any], mode: Mode, item: dict[str, Any] | None
) -> PlannedAction:
    rendered = {name: v.render(ctx) for name, v in call.params.items()}
    params = validate(call.spec.params, rendered)
    key = _render_str(call.key, ctx)
    parts = [f"{k}={params[k]}" for k in call.spec.key if k in params]
    # What the action is about: its key parameters (the MAC, the address), else the rule.
    about = f"{call.action}:{','.join(parts)}" if parts else f"rule:{rule.name}"
    if key is None:
        # Ordering matters only between actions about the same thing. An action with no key
        # parameters (log, webhook, exec) is about nothing in particular: giving it its own
        # key keeps a storm of them from running one at a time behind each other.
        key = about if parts else f"{rule.name}#{call.index}@{ctx['event_id']}"
    once_key: str | None = None
    if call.once_within is not None:
        once_key = _render_str(call.once_key, ctx) or f"{rule.name}#{call.index}:{about}"
    caps = tuple(
        RateCap(
            name=c.name,
            limit=c.limit,
            per=c.per,
            key=_render_str(c.key, ctx) or "",
            hold_for=c.hold_for,
            every_rule=c.every_rule,
        )
        for c in call.caps
    )
    return PlannedAction(
        rule=rule.name,
        action=call.action,
        index=call.index,
        params=params,
        key=key,
        mode=mode,
        delay=call.delay,
        cancel_key=_render_str(call.cancel_key, ctx),
        once_within=call.once_within,
        once_key=once_key,
        retry=call.retry,
        caps=caps,
        item=dict(item) if item is not None else None,
        definition=call.definition,
    )
