"""The ``actions:`` of a rule, with their rate caps and retry policies.

Each action is checked against its plugin's :class:`~trapd.plugin.ActionSpec`
when the rules load: unknown actions and parameters (with a "did you mean"),
missing required parameters, constants that fail the parameter's type, and
templates whose constant text can never validate. A destructive action
without a cap on the action, its rule, ``defaults:`` or a global cap of
trapd.yaml is refused.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import urllib.parse
from collections.abc import Mapping
from typing import Any

from trapd.params import URL_CREDENTIALS, Param, ParamError, convert, token_in_url, whole_number
from trapd.plugin import ActionSpec, installed_since, load_failure
from trapd.rules.compile_context import CompileContext, RuleScope
from trapd.rules.compile_values import ValueCompiler
from trapd.rules.kea_uses import family_problem
from trapd.rules.outcome import RetryPolicy
from trapd.rules.ruleset import ActionCall, CapSpec, Const, ListOf, MapOf, Template, Value
from trapd.yamlsource import Mark, YDict, YList, where

ACTION_CONTROL_KEYS = frozenset(
    {"action", "params", "delay", "cancel-key", "once-within", "once-key", "key", "cap", "retry"}
)
CAP_KEYS = frozenset({"limit", "per", "key", "hold-for", "name"})
_SAME_ACTIONS = 4096  # distinct action entries remembered per compile (see ActionCompiler._same)
RETRY_KEYS = frozenset({"max-attempts", "max-age", "backoff"})
_DEFINITION = json.JSONEncoder(sort_keys=True, default=repr, separators=(",", ":"))


def definition_digest(node: YDict) -> str:
    """A digest of one ``actions:`` entry as parsed (not as laid out: comments, quoting and order
    of keys do not change it). Two hosts that receive the same notification match each host's
    planned action with the other's by it (docs/pair.md): by the entry's place in the rule alone,
    a host that has reloaded a version with an action inserted took its new action for a copy of
    the other host's old one, and cancelled it. Computed once per distinct entry (5 us).
    """
    return hashlib.blake2b(canonical(node).encode(), digest_size=12).hexdigest()


def canonical(node: Any) -> str:
    """A YAML node as parsed, in one text: the same for the same content however it is laid out."""
    try:
        return _DEFINITION.encode(node)
    except TypeError:  # keys of different types (YAML allows 1: and a:) cannot be sorted
        return repr(node)


# Literal characters that can appear in a value of these types; a template
# whose constant text has anything else can never validate.
_TYPE_CHARS = {
    "integer": set("0123456789+- \t"),
    "ip-address": set("0123456789abcdefABCDEF:."),
    "ipv4": set("0123456789."),
    "ipv6": set("0123456789abcdefABCDEF:."),
    "mac-address": set("0123456789abcdefABCDEF:-."),
    "duid": set("0123456789abcdefABCDEF:-. x"),
    "hex": set("0123456789abcdefABCDEF:-. x"),
}


def _authority_problem(literal: str) -> str | None:
    """What is wrong with the host part of a URL template's constant text (the text around its
    expressions), where a password would be: None if nothing. Not quoted: it may be the password."""
    parts = urllib.parse.urlsplit(literal)
    if "@" in parts.netloc:
        return URL_CREDENTIALS
    try:
        parts.port  # noqa: B018  (also a password with a / ? or #, which ends the host early)
    except ValueError:
        return "the port is not a number up to 65535"
    return None


class ActionCompiler:
    """Compiles ``actions:`` entries, ``cap:`` and ``retry:`` against the installed action plugins."""

    def __init__(
        self,
        ctx: CompileContext,
        values: ValueCompiler,
        actions: Mapping[str, ActionSpec],
        capped_actions: frozenset[str],
    ) -> None:
        self.ctx = ctx
        self.problems = ctx.problems
        self.values = values
        self.actions = actions
        self.capped_actions = capped_actions
        # An action written the same way in many rules ({action: log, message: "..."} in every
        # rule of a per-port file) compiles to the same parameters: its entry's items, with the
        # caps and retry policy it inherits -> the ActionCall compiled first, reused with the
        # next rule's index and position. Only for entries of plain values without cap:, of
        # actions without secret parameters, in rules without regex groups or foreach, when
        # compiling reported nothing; the first _SAME_ACTIONS entries.
        self._same: dict[tuple[Any, ...], ActionCall] = {}

    def caps(
        self, node: Any, mark: Mark | None, default_name: str, scope: RuleScope | None
    ) -> tuple[CapSpec, ...]:
        nodes = node if isinstance(node, YList) else [node]
        marks = node.item_marks if isinstance(node, YList) else [mark]
        out: list[CapSpec] = []
        for i, (n, m) in enumerate(zip(nodes, marks, strict=False)):
            if not isinstance(n, YDict):
                self.problems.error(
                    "cap is a mapping {limit: N, per: DURATION, key: TEMPLATE, hold-for: DURATION}", m
                )
                continue
            self.ctx.keys(n, CAP_KEYS, "cap")
            limit = whole_number(n.get("limit"))
            # 0 holds every action for an operator to release: a manual-approval mode (docs/dispatch.md).
            if limit is None or limit < 0:
                self.problems.error(
                    f"cap.limit must be a whole number, 0 or more, got {n.get('limit')!r}", where(n, "limit")
                )
                continue
            if "per" not in n:
                self.problems.error("cap.per is required (a duration such as 1m)", m)
                continue
            per = self.ctx.duration(n["per"], where(n, "per"), "cap.per")
            hold = self.ctx.duration(n.get("hold-for", 3600), where(n, "hold-for"), "cap.hold-for")
            key = self.values.value(n["key"], where(n, "key"), scope, "cap.key") if "key" in n else None
            name = n.get("name", default_name if len(nodes) == 1 else f"{default_name}/{i}")
            if not isinstance(name, str):
                self.problems.error("cap.name must be text", where(n, "name"))
                continue
            if per is None or per <= 0 or hold is None:
                if per is not None and per <= 0:
                    self.problems.error("cap.per must be longer than 0s", where(n, "per"))
                continue
            out.append(CapSpec(name, limit, per, key, hold))
        return tuple(out)

    def retry(self, node: Any, mark: Mark | None, base: RetryPolicy) -> RetryPolicy:
        if not isinstance(node, YDict):
            self.problems.error(
                "retry is a mapping {max-attempts: N, max-age: DURATION, backoff: DURATION}", mark
            )
            return base
        self.ctx.keys(node, RETRY_KEYS, "retry")
        attempts = base.max_attempts
        if "max-attempts" in node:
            v = node["max-attempts"]
            whole = whole_number(v)
            if whole is None or whole < 1:
                self.problems.error(
                    f"retry.max-attempts must be a positive integer, got {v!r}", where(node, "max-attempts")
                )
            else:
                attempts = whole
        age = base.max_age
        if "max-age" in node:
            age = self.ctx.duration(node["max-age"], where(node, "max-age"), "retry.max-age") or age
        backoff = base.backoff
        if "backoff" in node:
            backoff = self.ctx.duration(node["backoff"], where(node, "backoff"), "retry.backoff") or backoff
        return RetryPolicy(max_attempts=attempts, max_age=age, backoff=backoff)

    def action(
        self,
        node: Any,
        mark: Mark | None,
        index: int,
        scope: RuleScope,
        inherited_caps: tuple[CapSpec, ...],
        retry: RetryPolicy,
    ) -> ActionCall | None:
        """One ``actions:`` entry; ``inherited_caps`` are the rule's caps, then the defaults' caps."""
        same = self._same_key(node, scope, inherited_caps, retry)
        if same is not None:
            hit = self._same.get(same)
            if hit is not None:
                # Field by field: dataclasses.replace(hit, index=..., mark=...) took 3.3 µs
                # against 1.7 (0.17 s of 100,000 rules).
                return ActionCall(
                    index=index,
                    action=hit.action,
                    spec=hit.spec,
                    params=hit.params,
                    mark=mark,
                    delay=hit.delay,
                    cancel_key=hit.cancel_key,
                    once_within=hit.once_within,
                    once_key=hit.once_key,
                    key=hit.key,
                    caps=hit.caps,
                    retry=hit.retry,
                    definition=hit.definition,
                )
        problems_before = len(self.problems.items)
        call = self._action(node, mark, index, scope, inherited_caps, retry)
        if (
            same is not None
            and call is not None
            and len(self.problems.items) == problems_before
            and len(self._same) < _SAME_ACTIONS
        ):
            self._same[same] = call
        return call

    def _same_key(
        self, node: Any, scope: RuleScope, inherited_caps: tuple[CapSpec, ...], retry: RetryPolicy
    ) -> tuple[Any, ...] | None:
        """What an action entry compiles from, when that is all (see ``_same``); else None."""
        if not isinstance(node, YDict) or scope.captures or scope.foreach_kind is not None or "cap" in node:
            return None
        name = node.get("action")
        spec = self.actions.get(name) if isinstance(name, str) else None
        if spec is None or any(p.secret for p in spec.params.values()):
            return None
        items: list[tuple[Any, ...]] = []
        for k, v in node.items():
            kind = type(v)
            if not (kind is str or kind is int or kind is float or kind is bool or v is None):
                return None
            items.append((type(k), k, kind, v))  # typed: 1, 1.0 and True are equal keys
        return (tuple(items), inherited_caps, retry)

    def _action(
        self,
        node: Any,
        mark: Mark | None,
        index: int,
        scope: RuleScope,
        inherited_caps: tuple[CapSpec, ...],
        retry: RetryPolicy,
    ) -> ActionCall | None:
        if not isinstance(node, YDict) or "action" not in node:
            self.problems.error("an action is a mapping with action: NAME and its parameters", mark)
            return None
        name = node["action"]
        if not isinstance(name, str):
            self.problems.error("action: takes an action plugin name", where(node, "action"))
            return None
        spec = self.actions.get(name)
        if spec is None and (failure := load_failure(name)) is not None:
            # Installed, but its import failed (an upgrade broke it): not a typo to look for.
            self.problems.error(
                f"action plugin {name!r} is installed but failed to load: {failure}", where(node, "action")
            )
            return None
        if spec is None and installed_since(name):
            # A reload: plugins are loaded at start-up, and `trapd check` (a new process) loads it.
            self.problems.error(
                f"action plugin {name!r} was installed after trapd loaded its plugins: restart trapd"
                " to use it (plugins are loaded when it starts)",
                where(node, "action"),
            )
            return None
        if spec is None:
            hint = difflib.get_close_matches(name, list(self.actions), n=1, cutoff=0.6)
            self.problems.error(
                f"unknown action {name!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; installed: {', '.join(sorted(self.actions)) or 'none'} (see `trapd actions`)",
                where(node, "action"),
            )
            return None
        # (value, its mark, the mapping it is in): the key's own mark only for an error.
        raw: dict[str, tuple[Any, Mark | None, YDict]] = {}
        for k, v in node.items():
            if k not in ACTION_CONTROL_KEYS:
                raw[k] = (v, where(node, k), node)
        if "params" in node:
            pn = node["params"]
            if not isinstance(pn, YDict):
                self.problems.error(
                    "params must be a mapping of parameter names to values", where(node, "params")
                )
            else:
                for k, v in pn.items():
                    if k in raw:
                        self.problems.error(
                            f"parameter {k!r} is given twice (here and in params:)", where(pn, k, of_key=True)
                        )
                    raw[k] = (v, where(pn, k), pn)
        params: dict[str, Value] = {}
        for k, (v, vm, in_node) in raw.items():
            p = spec.params.get(k)
            if p is None:
                hint = difflib.get_close_matches(
                    str(k), [*spec.params, *ACTION_CONTROL_KEYS], n=1, cutoff=0.6
                )
                self.problems.error(
                    f"{name} has no parameter {k!r}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + f"; parameters: {', '.join(spec.params) or 'none'}",
                    where(in_node, k, of_key=True),
                )
                continue
            val = self.values.value(
                v,
                vm,
                scope,
                f"{name}.{k}",
                url=p.type in ("url", "url-suffix"),
                secret=p.secret,
                secret_ref=p.secret_ref,
            )
            self._static_param_check(name, k, p, v, val, vm)
            params[k] = val
        for k, p in spec.params.items():
            if p.required and k not in raw and p.default is None:
                self.problems.error(
                    f"{name} needs the parameter {k!r} ({p.describe()})", where(node, "action")
                )
        if (problem := family_problem(spec, params)) is not None:  # e.g. circuit-id with family v6
            self.problems.error(f"{name}: {problem}", where(node, "action"))
        delay = 0.0
        if "delay" in node:
            delay = self.ctx.duration(node["delay"], where(node, "delay"), "delay") or 0.0
        cancel_key = self._template_key(node, "cancel-key", scope)
        if cancel_key is not None and not delay:
            self.problems.warning(
                "cancel-key only matters for a delayed action (add delay:)", where(node, "cancel-key")
            )
        once_within = None
        if "once-within" in node:
            once_within = self.ctx.duration(node["once-within"], where(node, "once-within"), "once-within")
        once_key = self._template_key(node, "once-key", scope)
        if once_key is not None and once_within is None:
            self.problems.warning("once-key only matters with once-within", where(node, "once-key"))
        key = self._template_key(node, "key", scope)
        caps: tuple[CapSpec, ...] = ()
        if "cap" in node:
            caps = self.caps(node["cap"], where(node, "cap"), f"{scope.name}#{index}", scope)
        if spec.destructive:
            caps = caps + inherited_caps
            if not caps and name not in self.capped_actions:
                self.problems.error(
                    f"{name} is destructive: give it a cap "
                    '(cap: {limit: 50, per: 1m, key: "{{ source }}"}) '
                    "on the action, the rule, or in defaults:",
                    where(node, "action"),
                )
        if "retry" in node:
            retry = self.retry(node["retry"], where(node, "retry"), retry)
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
            definition=definition_digest(node),
        )

    def _template_key(self, node: YDict, key: str, scope: RuleScope) -> Value | None:
        if key not in node:
            return None
        v = node[key]
        if not isinstance(v, (str, int)) or isinstance(v, bool):
            self.problems.error(f"{key} takes text (usually a template)", where(node, key))
            return None
        return self.values.value(str(v), where(node, key), scope, key)

    def _static_param_check(
        self, action: str, name: str, p: Param, raw: Any, val: Value, mark: Mark | None
    ) -> None:
        """Parameters that can never validate: constants that fail, templates whose text cannot fit."""
        if isinstance(val, Const):
            try:
                convert(p, val.value, name)  # a secret's constant is its reference by now
            except ParamError as exc:
                self.problems.error(f"{action}: {exc}", mark)
            if p.secret_ref and isinstance(val.value, str) and (service := token_in_url(val.value)):
                # Not quoted: the message is printed and logged, the token is the point.
                self.problems.warning(
                    f"{action}.{name}: a {service} webhook URL carries its token; written as text it is"
                    " journaled and logged in clear: write it {env: NAME} or {file: PATH}",
                    mark,
                )
            return
        if isinstance(val, Template):
            allowed = _TYPE_CHARS.get(p.type)
            info = val.info
            if allowed is not None and info is not None:
                bad = sorted({ch for ch in info.literal if ch not in allowed})
                if bad:
                    article = "an" if p.type[0] in "aeiou" else "a"
                    self.problems.error(
                        f"{action}.{name}: {article} {p.type} cannot hold {', '.join(map(repr, bad))} "
                        "of the text around the template, so it can never validate",
                        mark,
                    )
            if p.type == "url" and not val.source.startswith(("http://", "https://")):
                self.problems.error(
                    f"{action}.{name}: write the URL's scheme and host as text; "
                    "values rendered into a URL are percent-encoded",
                    mark,
                )
            elif p.type == "url" and info is not None and (why := _authority_problem(info.literal)):
                # The rendered URL is refused when the action runs, but the parameters (this text,
                # a password in it) would have been journaled and shown before that.
                self.problems.error(f"{action}: {name}: {why}", mark)
            if p.type == "url-suffix" and not val.source.startswith(("/", "?", "&")):
                self.problems.error(
                    f"{action}.{name}: starts with /, ? or & as text (it is appended to the URL)", mark
                )
            if p.type in ("list", "mapping"):
                self.problems.error(
                    f"{action}.{name} is a {p.type}; write it as a YAML {p.type}, not one template", mark
                )
            elif (
                p.type == "enum" and info is not None and not info.variables and info.literal not in p.choices
            ):
                self.problems.error(
                    f"{action}.{name}: {info.literal!r} is not one of {', '.join(p.choices)}", mark
                )
        elif isinstance(val, ListOf) and p.type not in ("list", "any"):
            self.problems.error(f"{action}.{name} is a {p.type}, not a list", mark)
        elif isinstance(val, MapOf) and p.type not in ("mapping", "any"):
            self.problems.error(f"{action}.{name} is a {p.type}, not a mapping", mark)
