"""One planned action per HA peer: how a rule naming a Kea HA relationship reaches every server.

Kea HA does not copy changes made through the control API to the partner
(docs/kea-ha.md), so an action that changes a server (``ActionSpec.per_peer``)
is journaled once per peer of the relationship it goes to, with ``endpoint``
and ``peer`` fixed in its parameters. Each part is then an ordinary journal
entry: retried on its own (a peer that is down gets its part when it is back;
the other peer's part is not repeated), with its own result, its own circuit
breaker (errors name ``endpoint/peer``) and its own key, so a peer that
fails does not hold up its partner's part. Rate caps and once-within count
per peer: "10 deletions a minute" means ten on each server.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from trapd.errors import ActionError
from trapd.kea.config import EndpointConfig, KeaConfig
from trapd.plugin import ActionSpec
from trapd.rules.outcome import PlannedAction


def fan_out(
    planned: Sequence[PlannedAction], actions: Mapping[str, ActionSpec], kea: KeaConfig | None
) -> Sequence[PlannedAction]:
    """``planned`` with each per-peer action on an HA relationship replaced by one per peer."""
    if kea is None or not kea.has_pairs:
        return planned
    out: list[PlannedAction] = []
    for pa in planned:
        spec = actions.get(pa.action)
        pair = _pair_of(spec, pa, kea) if spec is not None else None
        if pair is None:
            out.append(pa)
            continue
        for peer in pair.peers:
            server = peer.label  # pair4/server1: a v4 peer and a v6 peer are different daemons
            out.append(
                replace(
                    pa,
                    params={**pa.params, "endpoint": pair.name, "peer": peer.peer},
                    key=peer_key(pa.key, server),
                    once_key=peer_key(pa.once_key, server) if pa.once_key is not None else None,
                    caps=tuple(replace(c, key=peer_key(c.key, server)) for c in pa.caps),
                )
            )
    return out


def peer_key(key: str, server: str) -> str:
    """A key of one peer's part: ordered against that server's other actions, not its partner's."""
    return f"{key}@{server}"


def _pair_of(spec: ActionSpec, pa: PlannedAction, kea: KeaConfig) -> EndpointConfig | None:
    """The HA relationship this action goes to, when it is one and the action runs on every peer."""
    if spec.per_peer is None or pa.params.get("peer") is not None:
        return None
    try:
        if not spec.per_peer(pa.params):
            return None
        families = spec.kea_families(pa.params, frozenset()) if spec.kea_families is not None else ()
    except (ActionError, ValueError):
        return None  # contradictory parameters (or a plugin's bug): the action fails when it runs
    endpoint = pa.params.get("endpoint")
    ep = kea.resolve(str(endpoint) if endpoint else None, families[0] if families else "v4")
    return ep if ep is not None and ep.peers else None
