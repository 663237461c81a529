"""What the Kea actions share: endpoint, family and peer choice, parameter definitions.

The family rules live here, with the actions, and nowhere else: an action
declares them once (:class:`FamilyRule`) and hands them to its ActionSpec
(``kea_families``), so the dispatcher (which peers an action goes to) and
the start-up probe (which endpoints a rule can reach) ask the action
instead of guessing.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trapd.kea.client import KeaClient
from trapd.kea.config import FAMILIES
from trapd.params import Param
from trapd.plugin import ActionContext, PermanentError

ENDPOINT = Param(
    "string",
    "name of an endpoint in trapd.yaml's kea.endpoints; default: the default endpoint for the family",
    max_length=200,
)
FAMILY = Param(
    "enum",
    "v4 or v6; default: implied by the other parameters (an IPv6 address, a DUID), else v4",
    choices=("v4", "v6"),
)
PEER = Param(
    "string",
    "HA relationship only: run on this peer alone; default: every peer (one journal entry each)",
    max_length=200,
)
SUBNET_ID = Param("integer", "only leases in this Kea subnet-id", min=1, max=4294967294)


@dataclass(frozen=True)
class FamilyRule:
    """Which parameters imply which address family, for one action."""

    v6_only: tuple[str, ...] = ()
    v4_only: tuple[str, ...] = ()

    def families(self, params: Mapping[str, Any], templated: frozenset[str] = frozenset()) -> tuple[str, ...]:
        """The families the parameters imply; () when they imply none (the endpoint's first, else v4).

        ``templated``: parameters given as templates, whose values are only
        known per trap. A templated address or family could be either; a
        DUID is v6 whatever its value. Parameters that contradict each other
        (circuit-id with family v6) raise PermanentError: ``trapd check``
        refuses such a rule, and at run time the action fails at once.
        """
        fixed: set[str] = set()  # what the parameters known now say
        ip = params.get("ip-address")
        if ip and "ip-address" not in templated:
            fixed.add(f"v{ipaddress.ip_address(ip).version}")
        if any(params.get(k) is not None or k in templated for k in self.v6_only):
            fixed.add("v6")
        if any(params.get(k) is not None or k in templated for k in self.v4_only):
            fixed.add("v4")
        if params.get("family") and "family" not in templated:
            fixed.add(str(params["family"]))
        if len(fixed) > 1:
            shown = _shown(
                {
                    k: v
                    for k, v in params.items()
                    if k in ("family", "ip-address", *self.v4_only, *self.v6_only)
                }
            )
            raise PermanentError(f"parameters mix IPv4 and IPv6: {shown}")
        if fixed:
            return tuple(fixed)
        if "ip-address" in templated or "family" in templated:
            return FAMILIES  # known per trap
        return ()

    def family(self, params: Mapping[str, Any]) -> str | None:
        """At run time: the one family the parameters imply, None for none; PermanentError if they mix."""
        fams = self.families(params)
        return fams[0] if fams else None


NO_FAMILY_HINTS = FamilyRule()


def each_peer(params: Mapping[str, Any]) -> bool:
    """For ActionSpec.per_peer: this action changes state that Kea HA does not copy to the partner."""
    return True


def client_for(params: Mapping[str, Any], ctx: ActionContext, family: str | None) -> KeaClient:
    """The server the action talks to: ``endpoint`` (or the family's default), and ``peer`` on a pair."""
    return ctx.kea.get(params.get("endpoint"), family, params.get("peer"))


def answered_by(kea: KeaClient) -> dict[str, Any]:
    """How a result names the server that did it: endpoint, peer (on a pair), family."""
    out: dict[str, Any] = {"endpoint": kea.endpoint}
    if kea.peer is not None:
        out["peer"] = kea.peer
    out["family"] = kea.family
    return out


def exactly_one(
    params: Mapping[str, Any], choices: tuple[str, ...], groups: Mapping[str, tuple[str, ...]] | None = None
) -> str:
    """The one selector parameter given (a group such as relay counts as one)."""
    given = [c for c in choices if params.get(c) is not None]
    for group, members in (groups or {}).items():
        if any(params.get(m) is not None for m in members):
            given.append(group)
    if len(given) != 1:
        names = list(choices) + list(groups or {})
        what = "none" if not given else ", ".join(given)
        raise PermanentError(f"give exactly one of {', '.join(names)} (got {what})")
    return given[0]


def _shown(params: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items() if v is not None)
