"""Ask every Kea endpoint what it is and what it can do.

Used by ``trapd kea status`` and at daemon start-up: a rule that deletes
leases through an endpoint whose server has no lease_cmds hook would fail on
every trap, so trapd says so once, clearly, before the first trap arrives.
Which endpoints the rules use is worked out where the rules are
(:mod:`trapd.rules.kea_uses`), as :class:`KeaUse` records handed in here.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from trapd.kea.client import KeaClient, KeaClients, ha_status
from trapd.kea.config import peer_label
from trapd.kea.errors import KeaError
from trapd.kea.hastatus import HaStatus

# The commands that show lease_cmds is loaded, per family.
LEASE_CMDS_MARKER = {"v4": "lease4-del", "v6": "lease6-del"}

# A statistic each DHCP server keeps from its start, of its own family only (Kea 2.2 to 3.0).
# list-commands cannot tell kea-dhcp4 from kea-dhcp6 (the lease_cmds hook lists the commands of
# both), and kea-dhcp4 answers lease6-get-page with "0 IPv6 lease(s) found": with the v4 and v6
# sockets swapped in trapd.yaml, every deletion found nothing and looked fine.
FAMILY_STATISTIC = {"v4": "pkt4-received", "v6": "pkt6-received"}


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
    peer: str | None = None  # a peer of the HA relationship ``endpoint``
    ha: HaStatus | None = None  # its HA status, when it has the HA hook
    serves: str | None = None  # the family its statistics say it serves (None: not known)

    @property
    def label(self) -> str:
        return peer_label(self.endpoint, self.peer)

    @property
    def lease_cmds(self) -> bool:
        return LEASE_CMDS_MARKER[self.family] in self.commands

    def missing(self, needed: Iterable[str]) -> list[str]:
        """Commands in ``needed`` (for this family) that the server lacks; [] if unreachable (unknown)."""
        if not self.reachable:
            return []
        return sorted(c for c in commands_for_family(needed, self.family) if c not in self.commands)

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "endpoint": self.endpoint,
            "family": self.family,
            "transport": self.transport,
            "target": self.target,
            "reachable": self.reachable,
            "version": self.version,
            "lease_cmds": self.lease_cmds,
            "commands": sorted(self.commands),
            "error": self.error,
            "serves": self.serves,
            # Every object the same keys (`trapd kea status --json`): null outside an HA relationship.
            "peer": self.peer,
            "ha": None,
        }
        if self.ha is not None:
            ha = self.ha
            d["ha"] = {"mode": ha.mode, "role": ha.role, "state": ha.state, "scopes": list(ha.scopes),
                       "partner_state": ha.partner_state, "in_touch": ha.in_touch}  # fmt: skip
            if ha.server_name is not None:  # Kea >= 2.6: the relationship it is (hub and spoke)
                d["ha"]["server_name"] = ha.server_name
        return d


def commands_for_family(commands: Iterable[str], family: str) -> list[str]:
    """Drop the other family's commands: an action that can do v4 or v6 lists both."""
    other = "6" if family == "v4" else "4"
    return [c for c in commands if not any(c.startswith(p + other) for p in ("lease", "stat-lease"))]


async def served_family(client: KeaClient) -> str | None:
    """v4 or v6, by the DHCP server's own statistics; None when they do not tell (a control
    agent answering itself, D2, statistics removed) or cannot be asked."""
    found = []
    try:
        for family, name in FAMILY_STATISTIC.items():
            r = await client.command("statistic-get", {"name": name}, accept=(0,))
            if isinstance(r.arguments, dict) and name in r.arguments:
                found.append(family)
    except KeaError:
        return None
    return found[0] if len(found) == 1 else None


async def probe_one(client: KeaClient) -> EndpointStatus:
    client.forget()
    version: str | None
    error: str | None
    serves: str | None = None
    try:
        version = await client.version()
        commands = await client.commands()
    except KeaError as exc:
        version, commands, error = None, frozenset[str](), str(exc)
    else:
        error = None
        # Through a control agent the family picks the service: only a socket or URL the
        # operator wrote per family can name the other family's server.
        if client.transport_name != "control-agent" and "statistic-get" in commands:
            serves = await served_family(client)
            if serves is not None and serves != client.family:
                error = (
                    f"this server serves DHCP{serves}, not DHCP{client.family} (its statistics are "
                    f"{FAMILY_STATISTIC[serves]}...): the endpoint names the other family's socket? "
                    "Its lease commands would find nothing"
                )
    ha = await ha_status(client) if version is not None and "ha-heartbeat" in commands else None
    return EndpointStatus(
        endpoint=client.endpoint,
        family=client.family,
        transport=client.transport_name,
        target=client.config.target,
        reachable=version is not None,
        version=version,
        commands=commands,
        error=error,
        peer=client.peer,
        ha=ha,
        serves=serves,
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
    by_key: dict[tuple[str, str], list[EndpointStatus]] = {}
    for st in statuses:
        by_key.setdefault((st.endpoint, st.family), []).append(st)
    out = []
    for use in uses:
        found = by_key.get((use.endpoint, use.family))
        if not found:
            out.append(f"{use.where}: Kea endpoint {use.endpoint} ({use.family}) is not configured")
            continue
        for s in found:  # every peer of an HA relationship gets the command
            at = f"{s.label} ({use.family})"
            if not s.reachable:
                out.append(f"{use.where}: Kea endpoint {at} is unreachable now: {s.error}")
                continue
            missing = s.missing(use.commands)
            if missing:
                hint = " (load libdhcp_lease_cmds.so)" if any(c.startswith("lease") for c in missing) else ""
                out.append(f"{use.where}: Kea {s.version} at {at} lacks {', '.join(missing)}{hint}")
    return out
