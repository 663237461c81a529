"""kea.lease-del: delete DHCP leases, recording each one first so it can be restored."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

from trapd.kea.client import KeaClient
from trapd.kea.restore import leases_from_result
from trapd.params import Param
from trapd.plugin import ActionContext, PermanentError, RecordTooLarge, action

from .common import (
    ENDPOINT,
    FAMILY,
    PEER,
    SUBNET_ID,
    FamilyRule,
    answered_by,
    client_for,
    each_peer,
    exactly_one,
)
from .relay import id_bytes, matches, matches6, relay_hops6, relay_info

SELECTORS = ("ip-address", "hw-address", "client-id", "duid")
# Seconds after the notification from which a lease's cltt (the client's last exchange with Kea)
# says the client came back: such a lease is kept (see lease_del).
RENEWED_MARGIN = 10.0
RELAY = ("circuit-id", "remote-id", "relay-id", "interface-id")
FAMILIES = FamilyRule(v6_only=("duid", "iaid", "type", "interface-id"), v4_only=("client-id", "circuit-id"))

PARAMS = {
    "endpoint": ENDPOINT,
    "family": FAMILY,
    "peer": PEER,
    "ip-address": Param("ip-address", "delete the lease of this address (v4 or v6)"),
    "hw-address": Param("mac-address", "delete every lease of this MAC (v6: scans the lease table)"),
    "client-id": Param("duid", "v4: delete every lease of this DHCP client identifier (hex octets)"),
    "duid": Param("duid", "v6: delete every lease of this DUID"),
    "iaid": Param("integer", "v6, with duid: only the lease(s) of this IAID", min=0, max=4294967295),
    "type": Param(
        "enum", "v6, with ip-address: IA_NA (default) or IA_PD for a prefix", choices=("IA_NA", "IA_PD")
    ),
    "circuit-id": Param("string", "v4: delete leases relayed with this option-82 circuit-id (0x... = hex)"),
    "remote-id": Param(
        "string",
        "delete leases relayed with this remote-id: v4 option-82 sub-option 2; v6 option 37, with or "
        "without its enterprise number (0x... = hex)",
    ),
    "relay-id": Param(
        "string", "delete leases relayed with this relay-id: v4 sub-option 12, v6 option 53 (0x... = hex)"
    ),
    "interface-id": Param(
        "string", "v6: delete leases relayed with this interface-id, option 18 (0x... = hex)"
    ),
    "subnet-id": SUBNET_ID,
    "update-ddns": Param(
        "boolean", "ask Kea to remove the client's DNS records (via kea-dhcp-ddns)", default=False
    ),
    "page-size": Param(
        "integer",
        "leases per lease4-get-page / lease6-get-page when scanning",
        default=500,
        min=1,
        max=10000,
    ),
    "scan-limit": Param(
        "integer",
        "give up (permanently, deleting nothing) when a scan passes this many leases",
        default=1_000_000,
        min=1,
    ),
}


@action(
    "kea.lease-del",
    params=PARAMS,
    idempotent=True,
    destructive=True,
    key=("ip-address", "hw-address", "client-id", "duid", *RELAY),
    kea_commands=(
        "lease4-get",
        "lease4-del",
        "lease4-get-by-hw-address",
        "lease4-get-by-client-id",
        "lease4-get-page",
        "lease6-get",
        "lease6-del",
        "lease6-get-by-duid",
        "lease6-get-page",
    ),
    kea_families=FAMILIES.families,
    per_peer=each_peer,
)
async def lease_del(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Delete DHCP leases in Kea: by address, MAC, client-id, DUID or the relay's ids.

    Give exactly one selector: an address, a MAC, a client-id (v4), a DUID
    (+ IAID, v6), or the relay's ids (circuit-id v4, interface-id v6,
    remote-id and relay-id both; all given must match). Every matching lease
    is fetched first and recorded complete in the result (``leases``), so
    ``trapd kea restore JOURNAL_ID`` can put it back. A lease that does not
    exist counts as success (nothing to do). The leases are journaled before
    they are deleted: when Kea deleted one but its answer was lost (or trapd
    stopped), the retry finds no lease and records the one journaled earlier
    (``deleted_earlier``), so it can still be restored. A lease the client
    renewed more than 10 s after the notification is kept
    (``renewed_since``): the client is back. Needs the lease_cmds
    hook in Kea.
    On an HA relationship it runs on every peer, one journal entry each (Kea
    HA does not copy a lease deletion to the partner).

    Example (a Cisco switch reports MACs removed from a port: free every
    lease of each, DNS records included)::

        - name: mac-removed-free-lease
          match:
            notification: CISCO-MAC-NOTIFICATION-MIB::cmnMacChangedNotification
          foreach:
            items: mac_changes
            where: {operation: removed}
          actions:
            - action: kea.lease-del
              hw-address: "{{ item.mac }}"
              update-ddns: true
              cap: {limit: 200, per: 1m}
    """
    sel = exactly_one(params, SELECTORS, {"relay": RELAY})
    kea = client_for(params, ctx, FAMILIES.family(params))
    fam = kea.family
    v = "4" if fam == "v4" else "6"
    if sel == "client-id" and fam == "v6":
        raise PermanentError(f"{sel} selects v4 leases only; endpoint {kea.name} is v6")
    if fam == "v6" and params.get("circuit-id") is not None:
        raise PermanentError(
            f"circuit-id is DHCPv4 (option 82); use interface-id for v6 (endpoint {kea.name})"
        )
    if fam == "v4" and params.get("interface-id") is not None:
        raise PermanentError(f"interface-id is DHCPv6; use circuit-id for v4 (endpoint {kea.name})")
    if sel == "duid" and fam == "v4":
        raise PermanentError("duid selects v6 leases only")
    subnet = params.get("subnet-id")
    result: dict[str, Any] = {**answered_by(kea), "selector": sel}
    found: list[dict[str, Any]] = []

    if sel == "ip-address":
        args: dict[str, Any] = {"ip-address": params["ip-address"]}
        if fam == "v6":
            args["type"] = params.get("type") or "IA_NA"
        r = await kea.command(f"lease{v}-get", args)
        if r.ok and isinstance(r.arguments, dict):
            found = [r.arguments]
    elif sel == "hw-address" and fam == "v4":
        found = await _listed(kea, "lease4-get-by-hw-address", {"hw-address": params["hw-address"]})
    elif sel == "client-id":
        found = await _listed(kea, "lease4-get-by-client-id", {"client-id": params["client-id"]})
    elif sel == "duid":
        found = await _listed(kea, "lease6-get-by-duid", {"duid": params["duid"]})
        if params.get("iaid") is not None:
            found = [lease for lease in found if lease.get("iaid") == params["iaid"]]
    else:
        # A scan: hw-address on v6 (no lookup command for it), or the relay ids.
        if sel == "hw-address":
            mac: str = params["hw-address"]

            def wanted(lease: dict[str, Any]) -> bool:
                return str(lease.get("hw-address", "")).lower() == mac

        else:
            ids = {k: id_bytes(params[k]) if params.get(k) is not None else None for k in RELAY}
            result.update({k: params[k] for k in RELAY if params.get(k) is not None})
            if fam == "v4":

                def wanted(lease: dict[str, Any]) -> bool:
                    return matches(relay_info(lease), ids["circuit-id"], ids["remote-id"], ids["relay-id"])

            else:

                def wanted(lease: dict[str, Any]) -> bool:
                    return matches6(
                        relay_hops6(lease), ids["interface-id"], ids["remote-id"], ids["relay-id"]
                    )

        scanned = 0
        async for lease in scan(kea, params["page-size"], params["scan-limit"], result):
            scanned += 1
            if wanted(lease):
                found.append(lease)
        result["scanned"] = scanned

    if subnet is not None:
        other = [lease for lease in found if lease.get("subnet-id") != subnet]
        if other:
            result["skipped_other_subnets"] = len(other)
        found = [lease for lease in found if lease.get("subnet-id") == subnet]

    # A lease the client renewed after the notification is not the one it was about: the client
    # is back. On an HA pair a part can run long after the event (its server was down: retries,
    # the breaker's cool-down), after that server synced the renewed lease from its partner;
    # deleting it then left that server without the client's current lease, whose address it
    # could hand to another client at the next failover. A margin for the clocks of trapd's host
    # and Kea's; and a cltt later than trapd's now (plus the margin) says Kea's clock is ahead,
    # not that the client came back: a server whose clock is minutes ahead (which puts an HA pair
    # in terminated) had every lease kept as renewed.
    since, until = ctx.event.received_at + RENEWED_MARGIN, time.time() + RENEWED_MARGIN
    renewed = [
        lease for lease in found if isinstance(lease.get("cltt"), int) and since < lease["cltt"] <= until
    ]
    if renewed:
        result["renewed_since"] = [str(lease.get("ip-address")) for lease in renewed]
        found = [lease for lease in found if lease not in renewed]
        ctx.log.info(
            "kea lease renewed since the notification: kept",
            endpoint=kea.name,
            addresses=result["renewed_since"],
        )
    # Leases an earlier attempt journaled before deleting them, its end unknown (its answer lost,
    # trapd stopped): the ones not found now were most likely deleted by it.
    found_ips = {str(lease.get("ip-address")) for lease in found}
    earlier = [
        lease
        for lease in (leases_from_result(ctx.previous) if isinstance(ctx.previous, dict) else [])
        if str(lease.get("ip-address")) not in found_ips
    ]
    if found and ctx.record is not None:
        # Journaled (committed) before any is deleted: should this attempt not end, the restore
        # record is in the journal all the same, and the next attempt gets it (ctx.previous).
        try:
            await ctx.record({**result, "partial": True, "leases": found + earlier})
        except RecordTooLarge as exc:
            # Deleted, they could not all be restored: a selector this wide is a rule to narrow.
            raise PermanentError(
                f"{len(found) + len(earlier)} leases match, too many to journal for a restore ({exc});"
                " nothing deleted: narrow the selector (subnet-id, a relay id)"
            ) from None
    deleted: list[dict[str, Any]] = []
    gone: list[str] = []
    for lease in found:
        args = {"ip-address": lease["ip-address"]}
        if fam == "v6" and lease.get("type") == "IA_PD":
            args["type"] = "IA_PD"
        if params.get("update-ddns"):
            args["update-ddns"] = True
        r = await kea.command(f"lease{v}-del", args)
        if r.ok:
            deleted.append(lease)
        else:  # deleted by someone else between our get and del: the goal is reached
            gone.append(lease["ip-address"])
    result.update(
        {
            "deleted": len(deleted),
            "leases": deleted + earlier,
            "update-ddns": bool(params.get("update-ddns")),
            "not_found": not deleted and not earlier and not renewed,
        }
    )
    if gone:
        result["already_gone"] = gone
    if earlier:
        result["deleted_earlier"] = [lease.get("ip-address") for lease in earlier]
    target = {k: params[k] for k in (*SELECTORS, *RELAY) if params.get(k) is not None}
    if deleted:
        ctx.log.info(
            "kea leases deleted",
            endpoint=kea.name,
            count=len(deleted),
            addresses=[lease["ip-address"] for lease in deleted],
            **_log_keys(target),
        )
    elif not renewed:
        ctx.log.info("kea lease not found, nothing to delete", endpoint=kea.name, **_log_keys(target))
    return result


def _log_keys(target: dict[str, Any]) -> dict[str, Any]:
    return {k.replace("-", "_"): v for k, v in target.items()}


async def _listed(kea: KeaClient, command: str, args: dict[str, Any]) -> list[dict[str, Any]]:
    r = await kea.command(command, args)
    if r.empty or not isinstance(r.arguments, dict):
        return []
    return [lease for lease in r.arguments.get("leases", []) if isinstance(lease, dict)]


async def scan(
    kea: KeaClient, page_size: int, limit: int, report: dict[str, Any] | None = None
) -> AsyncIterator[dict[str, Any]]:
    """Every lease of the family, page by page (lease4-get-page / lease6-get-page).

    Costs one command per ``page_size`` leases and the whole table crosses the
    socket; Kea answers each page from memory (memfile) or one SQL query.
    Raises PermanentError past ``limit`` leases rather than run unbounded.
    """
    v = "4" if kea.family == "v4" else "6"
    start: str = "start"
    seen = 0
    pages = 0
    while True:
        r = await kea.command(f"lease{v}-get-page", {"from": start, "limit": page_size})
        pages += 1
        if r.empty or not isinstance(r.arguments, dict):
            break
        leases = [lease for lease in r.arguments.get("leases", []) if isinstance(lease, dict)]
        for lease in leases:
            seen += 1
            if seen > limit:
                raise PermanentError(f"scan stopped after {limit} leases (scan-limit); nothing deleted")
            yield lease
        if len(leases) < page_size:
            break
        start = leases[-1]["ip-address"]
    if report is not None:
        report["pages"] = pages
