"""kea.dhcp-disable / kea.dhcp-enable: stop and resume DHCP service in a Kea server."""

from __future__ import annotations

import math
import time
from typing import Any

from trapd.kea.client import KeaClient
from trapd.params import Param
from trapd.plugin import ActionContext, PermanentError, action

from .common import ENDPOINT, FAMILY, NO_FAMILY_HINTS, PEER, answered_by, client_for, each_peer

# Kea >= 2.6 takes a numeric origin-id (1 = user, 2000 + N = HA service N);
# older servers take origin "user" / "ha-partner" and silently ignore origin-id.
ORIGIN_ID_SINCE = (2, 6, 0)
ORIGIN_NAMES = {1: "user", 2000: "ha-partner"}
# The user origin is the one Kea's HA state machine never touches: HA disables and enables
# with its own origins (ha-partner on 2.2; 1000+N / 2000+N on >= 2.6), and an enable for one
# origin does not clear another (kea-2.2-facts.md §7, kea-2.6-3.0-facts.md §7).
USER_ORIGIN = 1

# Kea (2.2 to 3.0) keeps max-period as a 32-bit count of milliseconds: it answers "disabled for
# 4294968 seconds" and enables again 0.7 s later (4294968000 mod 2**32 ms); 50 days became 7 hours.
MAX_PERIOD = (2**32 - 1) // 1000

ORIGIN = Param(
    "integer",
    "who disables/enables: 1 = user (default; Kea HA never overrides it); 2000+N = HA service N "
    "(Kea >= 2.6; 2000 = ha-partner before)",
    default=USER_ORIGIN,
    min=1,
    max=65535,
)


async def origin_args(kea: KeaClient, origin_id: int) -> dict[str, Any]:
    """The origin in the form this server understands (asks version-get once)."""
    if await kea.version_tuple() >= ORIGIN_ID_SINCE:
        return {"origin-id": origin_id}
    name = ORIGIN_NAMES.get(origin_id)
    if name is None:
        raise PermanentError(
            f"Kea {await kea.version()} knows only origins 1 (user) and 2000 (ha-partner), not {origin_id}"
        )
    return {"origin": name}


@action(
    "kea.dhcp-disable",
    params={
        "endpoint": ENDPOINT,
        "family": FAMILY,
        "peer": PEER,
        "max-period": Param(
            "duration",
            "re-enable automatically after this long (required; whole seconds, rounded up; at most "
            "4294967 s, 49 days 17 h: Kea's limit)",
            required=True,
            min=0.001,
            max=MAX_PERIOD,
        ),
        "origin-id": ORIGIN,
    },
    idempotent=True,
    destructive=True,
    key=("endpoint", "family"),
    kea_commands=("dhcp-disable",),
    kea_families=NO_FAMILY_HINTS.families,
    per_peer=each_peer,
)
async def dhcp_disable(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Disable the DHCP service of a Kea server for at most ``max-period``.

    Kea stops answering DHCP clients (leases stay; the control API keeps
    working) until ``kea.dhcp-enable`` or until max-period runs out, so a
    forgotten disable cannot take DHCP down for good: max-period is required.
    A retry later than max-period after the notification disables nothing
    (``skipped`` in the result): the window the rule meant is over.
    On an HA relationship every peer is disabled (else the partner serves,
    or takes over), with the user origin, which HA does not override.

    Example::

        - action: kea.dhcp-disable
          family: v4
          max-period: 10m
    """
    kea = client_for(params, ctx, params.get("family"))
    seconds = max(1, math.ceil(params["max-period"]))
    since = time.time() - ctx.event.received_at
    if ctx.attempt > 1 and since > seconds:
        # A retry (its server was down: on an HA pair, that peer's part) past the window the rule
        # meant: disabling now would take DHCP down on a server that has just come back, for a
        # whole max-period, long after the notification. A first attempt is not judged so: a
        # rule's delay may be longer than max-period, and only the attempt after it is late.
        why = f"{since:.0f} s after the notification, past max-period ({seconds} s): not disabled"
        ctx.log.warning("kea DHCP disable too late: skipped", endpoint=kea.name, family=kea.family, why=why)
        return {**answered_by(kea), "max-period": seconds, "skipped": why}
    args = {"max-period": seconds, **await origin_args(kea, params["origin-id"])}
    r = await kea.command("dhcp-disable", args, accept=(0,))
    ctx.log.warning("kea DHCP service disabled", endpoint=kea.name, family=kea.family, max_period=seconds)
    return {**answered_by(kea), "max-period": seconds, "arguments": args, "text": r.text}


@action(
    "kea.dhcp-enable",
    params={"endpoint": ENDPOINT, "family": FAMILY, "peer": PEER, "origin-id": ORIGIN},
    idempotent=True,
    key=("endpoint", "family"),
    kea_commands=("dhcp-enable",),
    kea_families=NO_FAMILY_HINTS.families,
    per_peer=each_peer,
)
async def dhcp_enable(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Enable the DHCP service of a Kea server again (after kea.dhcp-disable).

    Enabling an enabled server is a success. The origin must match the one
    that disabled it: an HA origin is not cleared by a user enable. On an HA
    relationship every peer is enabled.

    Example::

        - action: kea.dhcp-enable
          family: v4
    """
    kea = client_for(params, ctx, params.get("family"))
    args = await origin_args(kea, params["origin-id"])
    r = await kea.command("dhcp-enable", args, accept=(0,))
    ctx.log.info("kea DHCP service enabled", endpoint=kea.name, family=kea.family)
    return {**answered_by(kea), "arguments": args, "text": r.text}
