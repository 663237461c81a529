"""Ask every Kea endpoint what it is and what it can do.

Used by ``trapd kea status`` and at daemon start-up: a rule that deletes
leases through an endpoint whose server has no lease_cmds hook would fail on
every trap, so trapd says so once, clearly, before the first trap arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trapd.kea.client import KeaClient, KeaClients
from trapd.kea.config import FAMILIES, KeaConfig
from trapd.kea.errors import KeaError

if TYPE_CHECKING:
    from trapd.rules.ruleset import Rule

# The commands that show lease_cmds is loaded, per family.
LEASE_CMDS_MARKER = {"v4": "lease4-del", "v6": "lease6-del"}


@dataclass(frozen=True)
class EndpointStatus:
    endpoint: str
    family: str
    transport: str
    target: str
    reachable: bool
    version: str | None = None
    commands: frozenset[str] = field(default_factory=frozenset)
    error: str | None = None

    @property
    def lease_cmds(self) -> bool:
        return LEASE_CMDS_MARKER[self.family] in self.commands

    def missing(self, needed: Iterable[str]) -> list[str]:
        """Commands in ``needed`` (for this family) that the server lacks; [] if unreachable (unknown)."""
        if not self.reachable:
            return []
        return sorted(c for c in commands_for_family(needed, self.family) if c not in self.commands)

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "family": self.family,
            "transport": self.transport,
            "target": self.target,
            "reachable": self.reachable,
            "version": self.version,
            "lease_cmds": self.lease_cmds,
            "commands": sorted(self.commands),
            "error": self.error,
        }


def commands_for_family(commands: Iterable[str], family: str) -> list[str]:
    """Drop the other family's commands: an action that can do v4 or v6 lists both."""
    other = "6" if family == "v4" else "4"
    return [c for c in commands if not any(c.startswith(p + other) for p in ("lease", "stat-lease"))]


async def probe_one(client: KeaClient) -> EndpointStatus:
    client.forget()
    version: str | None
    error: str | None
    try:
        version = await client.version()
        commands = await client.commands()
    except KeaError as exc:
        version, commands, error = None, frozenset[str](), str(exc)
    else:
        error = None
    return EndpointStatus(
        endpoint=client.name,
        family=client.family,
        transport=client.transport_name,
        target=client.config.target,
        reachable=error is None,
        version=version,
        commands=commands,
        error=error,
    )


async def probe(clients: KeaClients | Iterable[KeaClient]) -> list[EndpointStatus]:
    """Status of every endpoint/family, probed concurrently (each bounded by its timeout)."""
    return list(await asyncio.gather(*(probe_one(c) for c in clients)))


@dataclass(frozen=True)
class KeaUse:
    """One place a rule uses Kea: which action, through which endpoint, needing which commands."""

    where: str  # e.g. "rules.yaml:12:5 rule port-down, action kea.lease-del"
    endpoint: str  # resolved endpoint name
    family: str
    commands: tuple[str, ...]


def command_warnings(statuses: Iterable[EndpointStatus], uses: Iterable[KeaUse]) -> list[str]:
    """Warnings for rules whose endpoint is unreachable or lacks a command they send."""
    by_key = {(s.endpoint, s.family): s for s in statuses}
    out = []
    for use in uses:
        s = by_key.get((use.endpoint, use.family))
        if s is None:
            out.append(f"{use.where}: Kea endpoint {use.endpoint} ({use.family}) is not configured")
        elif not s.reachable:
            out.append(
                f"{use.where}: Kea endpoint {use.endpoint} ({use.family}) is unreachable now: {s.error}"
            )
        else:
            missing = s.missing(use.commands)
            if missing:
                hint = " (load libdhcp_lease_cmds.so)" if any(c.startswith("lease") for c in missing) else ""
                out.append(
                    f"{use.where}: Kea {s.version} at {use.endpoint} ({use.family}) lacks "
                    f"{', '.join(missing)}{hint}"
                )
    return out


def kea_uses(rules: Iterable[Rule], config: KeaConfig) -> list[KeaUse]:
    """Where the rules send Kea commands, resolved to endpoints as far as the rules fix them.

    An ``endpoint`` or ``family`` given as a template is only known per trap:
    such an action is checked against every endpoint it could reach.
    """
    from trapd.rules.ruleset import Const

    uses: list[KeaUse] = []
    for rule in rules:
        for call in rule.actions:
            commands = call.spec.kea_commands
            if not commands:
                continue
            where = (
                f"{call.mark}: rule {rule.name}, action {call.action}" if call.mark else f"rule {rule.name}"
            )
            endpoint_value = call.params.get("endpoint")
            consts = {k: v.value for k, v in call.params.items() if isinstance(v, Const)}
            family = consts.get("family")
            ip = consts.get("ip-address")
            if family is None and isinstance(ip, str):
                family = "v6" if ":" in ip else "v4"
            if family is None and consts.get("duid") is not None:
                family = "v6"
            if family in FAMILIES:
                families = [family]
            elif "ip-address" in call.params:  # a templated address: either family, per trap
                families = list(FAMILIES)
            else:  # the actions default to v4
                families = ["v4"]
            if endpoint_value is not None and not isinstance(endpoint_value, Const):
                candidates = [
                    (name, fam)
                    for name, ep in config.endpoints.items()
                    for fam in ep.families
                    if fam in families
                ]
            elif isinstance(endpoint_value, Const):
                ep = config.endpoints.get(str(endpoint_value.value))
                candidates = [(ep.name, fam) for fam in ep.families if fam in families] if ep else []
                if ep is None:
                    uses.append(KeaUse(where, str(endpoint_value.value), families[0], commands))
            else:
                candidates = []
                for fam in families:
                    chosen = config.endpoint_for(fam)
                    if chosen is not None:
                        candidates.append((chosen.name, fam))
                    elif family is not None:
                        uses.append(KeaUse(where, "(none)", fam, commands))
            uses.extend(KeaUse(where, name, fam, commands) for name, fam in candidates)
    return uses
