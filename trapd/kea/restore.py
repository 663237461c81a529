"""Put deleted leases back: the undo of kea.lease-del.

kea.lease-del records every lease exactly as lease4-get / lease6-get
returned it. Those answers carry fields lease*-add does not take (``cltt``)
or takes under another name, so each lease is turned into lease*-add
arguments here: known fields only, ``cltt`` + ``valid-lft`` becomes
``expire`` so the lease keeps its original expiry, and an empty hostname is
left out (Kea refuses fqdn-fwd/rev true without a hostname).
"""

from __future__ import annotations

import ipaddress
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from trapd.kea.client import KeaClients
from trapd.kea.errors import KeaCommandError, KeaError

ADD4_FIELDS = (
    "ip-address", "hw-address", "client-id", "subnet-id", "valid-lft", "hostname", "fqdn-fwd", "fqdn-rev",
    "state", "user-context",
)  # fmt: skip
ADD6_FIELDS = (
    "ip-address", "type", "prefix-len", "duid", "iaid", "subnet-id", "hw-address", "preferred-lft",
    "valid-lft", "hostname", "fqdn-fwd", "fqdn-rev", "state", "user-context",
)  # fmt: skip


def lease_family(lease: Mapping[str, Any]) -> str:
    return f"v{ipaddress.ip_address(str(lease['ip-address'])).version}"


def add_arguments(lease: Mapping[str, Any]) -> dict[str, Any]:
    """lease4-add / lease6-add arguments that recreate ``lease`` as Kea returned it."""
    fields = ADD4_FIELDS if lease_family(lease) == "v4" else ADD6_FIELDS
    args = {k: lease[k] for k in fields if lease.get(k) is not None}
    if not args.get("hostname"):
        args.pop("hostname", None)
        args.pop("fqdn-fwd", None)
        args.pop("fqdn-rev", None)
    if args.get("type") == "IA_NA":
        args.pop("prefix-len", None)
    ends = expiry(lease)
    if ends is not None:
        args["expire"] = ends
    return args


@dataclass(frozen=True)
class RestoreOutcome:
    ip_address: str
    family: str
    status: str  # "restored", "exists", "expired" (not sent: its lease had run out), "failed"
    detail: str = ""
    peer: str | None = None  # the HA peer it went back to


def expiry(lease: Mapping[str, Any]) -> int | None:
    """When the recorded lease runs out (``cltt`` + ``valid-lft``); None if it does not say."""
    if isinstance(lease.get("cltt"), int) and isinstance(lease.get("valid-lft"), int):
        return int(lease["cltt"] + lease["valid-lft"])
    return None


def expired(lease: Mapping[str, Any], now: float) -> bool:
    """The recorded lease had run out by ``now``: re-adding it would give the client nothing,
    and Kea would reclaim it at once."""
    ends = expiry(lease)
    return ends is not None and ends <= now


def leases_from_result(result: Any) -> list[dict[str, Any]]:
    """The recorded leases in a kea.lease-del result, a list of leases, or {"leases": [...]}."""
    if isinstance(result, Mapping):
        result = result.get("leases", [])
    if not isinstance(result, list):
        return []
    return [lease for lease in result if isinstance(lease, Mapping) and "ip-address" in lease]  # type: ignore[misc]


async def restore_leases(
    clients: KeaClients,
    leases: Iterable[Mapping[str, Any]],
    endpoint: str | None = None,
    peer: str | None = None,
) -> list[RestoreOutcome]:
    """Re-add each lease; one that exists again is reported, not overwritten, and one whose
    lease has run out since is reported as ``expired`` and not sent.

    On an HA relationship: to ``peer`` (where kea.lease-del removed it), or
    to every peer when none is named (Kea HA does not copy a lease4-add).
    """
    out: list[RestoreOutcome] = []
    now = time.time()
    for lease in leases:
        fam = lease_family(lease)
        ip = str(lease["ip-address"])
        if expired(lease, now):
            ends = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(expiry(lease) or 0))
            out.append(RestoreOutcome(ip, fam, "expired", f"its lease ran out at {ends}; not re-added"))
            continue
        try:
            servers = [clients.get(endpoint, fam, peer)] if peer is not None else clients.peers(endpoint, fam)
        except KeaError as exc:  # no such endpoint, peer or family: this lease did not go back
            out.append(RestoreOutcome(ip, fam, "failed", str(exc), peer))
            continue
        cmd = "lease4-add" if fam == "v4" else "lease6-add"
        for kea in servers:
            try:
                await kea.command(cmd, add_arguments(lease), accept=(0,))
            except KeaCommandError as exc:
                # A duplicate is result 1 on Kea < 2.6 and 4 (conflict) since; 4 is also an
                # unknown subnet-id or an address outside every subnet, which did not go back.
                status = "exists" if "already exists" in str(exc) else "failed"
                out.append(RestoreOutcome(ip, fam, status, str(exc), kea.peer))
            except KeaError as exc:
                # This server is down or refuses us: said per lease and server, and the others
                # go on, so that the output says what went back and what is still to do.
                out.append(RestoreOutcome(ip, fam, "failed", str(exc), kea.peer))
            else:
                out.append(RestoreOutcome(ip, fam, "restored", peer=kea.peer))
    return out
