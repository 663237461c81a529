"""Where the rules send Kea commands: the endpoints and families a rule's actions can reach.

For the start-up check (:func:`trapd.kea.probe.command_warnings`) and
``trapd check``. Which family an action's parameters imply is the action's own
knowledge (``ActionSpec.kea_families``); this module only asks it, with the
parameters a rule fixes and the names of those that are templates.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from trapd.errors import ActionError
from trapd.kea.config import FAMILIES, KeaConfig
from trapd.kea.probe import KeaUse
from trapd.plugin import ActionSpec
from trapd.rules.ruleset import ActionCall, Const, Rule, Value


def kea_uses(rules: Iterable[Rule], config: KeaConfig) -> list[KeaUse]:
    """Where the rules send Kea commands, resolved to endpoints as far as the rules fix them.

    An ``endpoint`` or ``family`` given as a template is only known per trap:
    such an action is checked against every endpoint it could reach.
    """
    uses: list[KeaUse] = []
    for rule in rules:
        for call in rule.actions:
            commands = call.spec.kea_commands
            if not commands:
                continue
            where = (
                f"{call.mark}: rule {rule.name}, action {call.action}" if call.mark else f"rule {rule.name}"
            )
            uses.extend(_uses_of(call, config, where, commands))
    return uses


def call_families(call: ActionCall) -> tuple[str, ...]:
    """The families the call's fixed parameters imply (templated ones count as either); () = none."""
    return _families(call.spec, call.params)


def family_problem(spec: ActionSpec, params: Mapping[str, Value]) -> str | None:
    """Why these parameters cannot work on any address family (circuit-id with family v6), or None.

    For the compiler: ``trapd check`` refuses what would fail on every trap.
    """
    try:
        _families(spec, params)
    except (ActionError, ValueError) as exc:
        return str(exc)
    return None


def _families(spec: ActionSpec, params: Mapping[str, Value]) -> tuple[str, ...]:
    if spec.kea_families is None:
        return ()
    consts = {k: v.value for k, v in params.items() if isinstance(v, Const)}
    templated = frozenset(k for k, v in params.items() if not isinstance(v, Const))
    return spec.kea_families(consts, templated)


def _uses_of(call: ActionCall, config: KeaConfig, where: str, commands: tuple[str, ...]) -> list[KeaUse]:
    try:
        implied = call_families(call)
    except (ActionError, ValueError):  # the compiler reports it (family_problem)
        implied = ()
    endpoint_value = call.params.get("endpoint")
    if endpoint_value is not None and not isinstance(endpoint_value, Const):
        families = implied or FAMILIES
        return [
            KeaUse(where, name, fam, commands)
            for name, ep in config.endpoints.items()
            for fam in ep.families
            if fam in families
        ]
    if isinstance(endpoint_value, Const):
        name = str(endpoint_value.value)
        ep = config.endpoints.get(name)
        if ep is None:
            return [KeaUse(where, name, implied[0] if implied else "v4", commands)]
        # Without a family in the parameters the action takes the endpoint's first (as KeaClients.get).
        return [
            KeaUse(where, ep.name, fam, commands)
            for fam in ep.families
            if fam in (implied or ep.families[:1])
        ]
    out = []
    for fam in implied or ("v4",):
        chosen = config.endpoint_for(fam)
        if chosen is not None:
            out.append(KeaUse(where, chosen.name, fam, commands))
        elif implied:
            out.append(KeaUse(where, "(none)", fam, commands))
    return out
