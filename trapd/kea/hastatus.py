"""One Kea server's HA status (the ``high-availability`` part of ``status-get``), for one relationship.

Kea 2.2 lists one relationship. Kea >= 2.6 may list several: a hub of a
hub-and-spoke setup has one per spoke, under another name in each
(``this-server-name``), and each serves its own subnets (the subnet's
``user-context: {ha-server-name: ...}``). trapd names a relationship as an
endpoint with its peers, so the relationship it asks about is the one where
this server goes by the peer's name; Kea >= 2.6 says the names
(``server-name``, local and remote; measured on Kea 2.6.3, see
tests/test_kea_hub_and_spoke.py). Failing that, the one whose partner is one
of the other peers. When neither tells (names that differ from Kea's, or a
Kea that names none), the status is the conservative combination of all of
them: the worst state, and scopes only when the server serves scopes in every
relationship, so that :meth:`KeaClients.serving` never picks a server that
may not serve this relationship's subnets.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import Any

# HA states from the most to the least in need of attention, for the combination: terminated
# needs an operator; then a server that is not serving (starting, syncing, in maintenance);
# then a relationship that lost its partner; last the normal ones. A state not listed (a
# newer Kea's) ranks right after terminated: unknown is not fine.
_WORST_FIRST = (
    "terminated", "unavailable", "waiting", "syncing", "ready", "in-maintenance",
    "partner-in-maintenance", "communication-recovery", "partner-down",
    "backup", "passive-backup", "load-balancing", "hot-standby",
)  # fmt: skip
_RANK = {state: i for i, state in enumerate(_WORST_FIRST)}


@dataclass(frozen=True, slots=True)
class HaStatus:
    """One server's view of one of its HA relationships (or of all combined, see the module)."""

    mode: str
    role: str
    state: str
    scopes: tuple[str, ...]
    partner_role: str | None
    partner_state: str | None
    in_touch: bool | None
    server_name: str | None = None  # its name in the relationship (Kea >= 2.6; None when combined)
    partner_name: str | None = None

    @classmethod
    def from_status(
        cls, arguments: Any, server: str | None = None, partners: Collection[str] = ()
    ) -> HaStatus | None:
        """Parse status-get's arguments; None when the server has no HA hook loaded.

        ``server``: this server's name in the relationship wanted (trapd's peer name);
        ``partners``: the names of the other peers of that relationship.
        """
        if not isinstance(arguments, dict):
            return None
        listed = arguments.get("high-availability")
        if not isinstance(listed, list):
            return None
        rels = [cls._relationship(r) for r in listed if isinstance(r, dict)]
        if len(rels) <= 1:
            return rels[0] if rels else None
        by_name = [r for r in rels if server is not None and r.server_name == server]
        if len(by_name) == 1:
            return by_name[0]
        by_partner = [r for r in rels if r.partner_name is not None and r.partner_name in partners]
        if len(by_partner) == 1:
            return by_partner[0]
        return cls._combined(rels)

    @classmethod
    def _relationship(cls, rel: dict[str, Any]) -> HaStatus:
        servers = _mapping(rel.get("ha-servers"))
        local, remote = _mapping(servers.get("local")), _mapping(servers.get("remote"))
        return cls(
            mode=str(rel.get("ha-mode", "")),
            role=str(local.get("role", "")),
            state=str(local.get("state", "")),
            scopes=tuple(str(s) for s in local.get("scopes", []) if isinstance(s, str)),
            partner_role=str(remote["role"]) if "role" in remote else None,
            partner_state=str(remote["last-state"]) if remote.get("last-state") else None,
            in_touch=bool(remote["in-touch"]) if "in-touch" in remote else None,
            server_name=str(local["server-name"]) if local.get("server-name") else None,
            partner_name=str(remote["server-name"]) if remote.get("server-name") else None,
        )

    @classmethod
    def _combined(cls, rels: list[HaStatus]) -> HaStatus:
        touch = [r.in_touch for r in rels if r.in_touch is not None]
        partner_states = [r.partner_state for r in rels if r.partner_state is not None]
        serving_everywhere = all(r.scopes for r in rels)
        return cls(
            mode=_joined(r.mode for r in rels),
            role=_joined(r.role for r in rels),
            state=_worst(r.state for r in rels),
            scopes=tuple(sorted({s for r in rels for s in r.scopes})) if serving_everywhere else (),
            partner_role=_joined(r.partner_role for r in rels if r.partner_role is not None) or None,
            partner_state=_worst(partner_states) if partner_states else None,
            in_touch=all(touch) if touch else None,
        )


def _worst(states: Iterable[str]) -> str:
    return min(states, key=lambda s: _RANK.get(s, 0.5))


def _joined(values: Iterable[str]) -> str:
    """One value when all relationships agree, else each (in Kea's order) joined by "+"."""
    return "+".join(dict.fromkeys(values))


def _mapping(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
