"""What the Kea actions share: endpoint and family choice, parameter definitions."""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from typing import Any

from trapd.kea.client import KeaClient
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
SUBNET_ID = Param("integer", "only leases in this Kea subnet-id", min=1, max=4294967294)


def implied_family(
    params: Mapping[str, Any], v6_only: tuple[str, ...] = (), v4_only: tuple[str, ...] = ()
) -> str | None:
    """The family the parameters imply; PermanentError when they contradict each other."""
    implied: set[str] = set()
    ip = params.get("ip-address")
    if ip:
        implied.add(f"v{ipaddress.ip_address(ip).version}")
    if any(params.get(k) is not None for k in v6_only):
        implied.add("v6")
    if any(params.get(k) is not None for k in v4_only):
        implied.add("v4")
    explicit = params.get("family")
    if explicit:
        implied.add(explicit)
    if len(implied) > 1:
        raise PermanentError(f"parameters mix IPv4 and IPv6: {_shown(params)}")
    return implied.pop() if implied else None


def client_for(params: Mapping[str, Any], ctx: ActionContext, family: str | None) -> KeaClient:
    """The endpoint the action talks to: named by ``endpoint`` or the default for the family."""
    return ctx.kea.get(params.get("endpoint"), family)


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
