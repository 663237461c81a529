"""kea.ddns-resend: make Kea send the DNS update for a lease again."""

from __future__ import annotations

from typing import Any

from trapd.kea.client import KeaClient
from trapd.kea.errors import KeaCommandError
from trapd.params import Param
from trapd.plugin import ActionContext, PermanentError, action

from .common import ENDPOINT, FAMILY, FamilyRule, answered_by, exactly_one

FAMILIES = FamilyRule(v6_only=("duid",))


@action(
    "kea.ddns-resend",
    params={
        "endpoint": ENDPOINT,
        "family": FAMILY,
        "ip-address": Param("ip-address", "the lease's address"),
        "hw-address": Param(
            "mac-address", "v4: every lease of this MAC (looked up with lease4-get-by-hw-address)"
        ),
        "duid": Param("duid", "v6: every lease of this DUID (looked up with lease6-get-by-duid)"),
    },
    idempotent=True,
    key=("ip-address", "hw-address", "duid"),
    kea_commands=(
        "lease4-resend-ddns",
        "lease6-resend-ddns",
        "lease4-get-by-hw-address",
        "lease6-get-by-duid",
    ),
    kea_families=FAMILIES.families,
)
async def ddns_resend(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Ask Kea to send the DNS update (A/AAAA + PTR) for a lease again (lease4/6-resend-ddns).

    Kea answers success once it has queued the request for kea-dhcp-ddns;
    whether DNS changed is not known to Kea at that point (DNS down, a name
    outside the forward domains, a DHCID conflict all still say success).
    Check with dig or D2's statistics. A lease without hostname or with
    fqdn-fwd/fqdn-rev both false fails permanently. On an HA relationship it
    is sent once (two peers would send the DNS update twice), through the
    first peer serving clients now that has the lease: in load-balancing a
    lease may be on one server only (terminated, communication-recovery).

    Example (a MAC was learnt again: send its DNS update once more)::

        - name: mac-learnt-refresh-dns
          match: {notification: CISCO-MAC-NOTIFICATION-MIB::cmnMacChangedNotification}
          foreach: {items: mac_changes, where: {operation: learnt}}
          actions:
            - action: kea.ddns-resend
              hw-address: "{{ item.mac }}"
    """
    sel = exactly_one(params, ("ip-address", "hw-address", "duid"))
    # On an HA relationship, through the first serving peer that has the lease: in load-balancing
    # a lease may be on one server only (terminated: no lease updates; communication-recovery;
    # send-lease-updates off). A peer is tried only when the ones before it found nothing, so
    # the update is sent once.
    peers = await ctx.kea.serving_peers(params.get("endpoint"), FAMILIES.family(params))
    tried = []
    for kea in peers:
        result = await _resend(kea, sel, params)
        tried.append(result)
        if result["sent"]:
            break
    else:  # none has it: the first one's answer is recorded
        kea, result = peers[0], tried[0]
        if len(tried) > 1:
            result["asked"] = [r.get("peer") for r in tried]
    if result["sent"]:
        sent = [s["ip-address"] for s in result["sent"]]
        ctx.log.info("kea DDNS update resent", endpoint=kea.name, addresses=sent)
    else:
        ctx.log.info("kea lease not found, no DDNS update to resend", endpoint=kea.name, selector=sel)
    return result


async def _resend(kea: KeaClient, sel: str, params: dict[str, Any]) -> dict[str, Any]:
    """The resend through one server: what it sent, did not find, and failed to send."""
    v = "4" if kea.family == "v4" else "6"
    if sel == "hw-address" and v == "6":
        raise PermanentError("by hw-address works for v4 only; use duid for v6")
    if sel == "ip-address":
        addresses = [params["ip-address"]]
    else:
        cmd, key = (
            ("lease4-get-by-hw-address", "hw-address")
            if sel == "hw-address"
            else ("lease6-get-by-duid", "duid")
        )
        r = await kea.command(cmd, {key: params[sel]})
        leases = r.arguments.get("leases", []) if isinstance(r.arguments, dict) else []
        addresses = [lease["ip-address"] for lease in leases if lease.get("type", "IA_NA") == "IA_NA"]
    sent: list[dict[str, str]] = []
    missing: list[str] = []
    failed: list[dict[str, str]] = []
    for ip in addresses:
        try:
            r = await kea.command(f"lease{v}-resend-ddns", {"ip-address": ip})
        except KeaCommandError as exc:
            if len(addresses) == 1:
                raise
            failed.append({"ip-address": ip, "error": str(exc)})
            continue
        if r.empty:
            missing.append(ip)
        else:
            sent.append({"ip-address": ip, "text": r.text})
    if failed and not sent:
        raise PermanentError("; ".join(f["error"] for f in failed))
    return {
        **answered_by(kea),
        "sent": sent,
        "not_found": missing or not addresses,
        "failed": failed,
    }
