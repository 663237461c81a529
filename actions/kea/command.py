"""kea.command: any Kea command, for what the other kea.* actions do not cover."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from trapd.kea.client import KeaClient
from trapd.params import Param
from trapd.plugin import ActionContext, PermanentError, action
from trapd.service.logging import redact

from .common import ENDPOINT, FAMILY, NO_FAMILY_HINTS, answered_by

# A hub of several HA relationships (Kea >= 2.6) applies these to the relationship their
# server-name names, and to its first relationship without one (measured on Kea 2.6.3 and 3.0.4:
# ha-heartbeat answered relationship a's state through peer hub-b of relationship b).
# (ha-maintenance-start/-cancel act on every relationship; ha-sync's server-name is the partner
# to fetch leases from, which Kea requires on a hub.)
RELATIONSHIP_COMMANDS = frozenset(
    {"ha-heartbeat", "ha-scopes", "ha-continue", "ha-reset", "ha-sync-complete-notify"}
)


def _every_peer(params: Mapping[str, Any]) -> bool:
    return (params.get("target") or "all") == "all"


@action(
    "kea.command",
    params={
        "endpoint": ENDPOINT,
        "family": FAMILY,
        "command": Param("string", "the Kea command, e.g. lease4-update", required=True, max_length=100),
        "arguments": Param("any", "its arguments (templates are rendered, then the value is sent as JSON)"),
        "service": Param(
            "list",
            "control-agent only: the daemon to forward to, e.g. [d2] (another transport refuses one "
            "that is not its own daemon)",
            item="string",
        ),
        "accept": Param(
            "list",
            "result codes that count as success (default [0]; add 3 to accept 'not found')",
            item="integer",
            default=[0],
        ),
        "target": Param(
            "string",
            "HA relationship: all (default; one journal entry per peer), one (the peer serving clients "
            "now) or a peer's name",
            max_length=200,
        ),
        "peer": Param("string", "set by the dispatcher for target: all (one entry per peer)", max_length=200),
    },
    idempotent=False,
    destructive=True,
    kea_families=NO_FAMILY_HINTS.families,
    per_peer=_every_peer,
)
async def kea_command(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Send any Kea command with templated arguments: the escape hatch.

    trapd cannot know what an arbitrary command does, so this action is
    treated as destructive (it needs a rate cap) and not idempotent (held
    after a crash with ``dispatch.interrupted: hold-unsafe``). A timeout or
    a lost answer is retried like any action's, although Kea may have run
    the command: give a command that must not run twice
    ``retry: {max-attempts: 1}``. Prefer the specific kea.*
    actions where one exists: they validate their parameters and record
    what they change. On an HA relationship it goes to every peer by
    default (Kea HA does not copy control-API changes); see ``target``.
    To a hub of several relationships (Kea >= 2.6), ha-heartbeat, ha-scopes,
    ha-continue, ha-reset and ha-sync-complete-notify are sent with
    ``server-name: PEER`` unless the arguments give one: without it Kea
    applies them to the hub's first relationship, not the endpoint's.

    Example (record the lease of the switch's own address; "not found" is fine)::

        - action: kea.command
          command: lease4-get
          arguments: {ip-address: "{{ source }}"}
          accept: [0, 3]
    """
    command = params["command"]
    if not command or any(c.isspace() for c in command):
        raise PermanentError(f"not a Kea command name: {command!r}")
    service = params.get("service")
    if service is not None and len(service) != 1:
        raise PermanentError("service: one service per action (the answer of exactly one server is recorded)")
    endpoint, family = params.get("endpoint"), params.get("family")
    target = params.get("target") or "all"
    if params.get("peer") is not None:
        kea = ctx.kea.get(endpoint, family, params["peer"])
    elif target == "one" or (target == "all" and len(ctx.kea.peers(endpoint, family)) == 1):
        kea = await ctx.kea.serving(endpoint, family)
    elif target == "all":
        # Reached only when the dispatcher did not fan the call out (it journals one per peer).
        raise PermanentError("target: all on an HA relationship needs one journal entry per peer")
    else:
        kea = ctx.kea.get(endpoint, family, target)
    if service is not None and kea.transport_name != "control-agent" and service != [kea.service]:
        # A unix socket or a Kea 3 daemon's HTTP socket is one daemon, which ignores "service":
        # the command would run on this endpoint's daemon instead of the one named.
        raise PermanentError(
            f"service {service}: only a control-agent endpoint forwards to another daemon; "
            f"endpoint {kea.name} ({kea.transport_name}) is {kea.service}"
        )
    arguments = params.get("arguments")
    if command in RELATIONSHIP_COMMANDS and kea.peer is not None and await _several_relationships(kea):
        if arguments is None:
            arguments = {}
        if isinstance(arguments, dict) and "server-name" not in arguments:
            # The relationship this endpoint is: Kea's server-name there is the peer's name
            # (docs/kea-ha.md); a misnamed peer is refused by Kea, not sent to the first one.
            arguments = {**arguments, "server-name": kea.peer}
    r = await kea.command(command, arguments, accept=tuple(params["accept"]), service=service)
    ctx.log.info("kea command sent", endpoint=kea.name, command=command, result=r.result)
    # Journaled and shown by `trapd journal show`: config-get lists the HTTP control sockets'
    # clients with their passwords (Kea 3.0), trapd's own among them.
    result: dict[str, Any] = redact({**answered_by(kea), "command": command, **r.to_dict()})
    return result


async def _several_relationships(kea: KeaClient) -> bool:
    """The server is in more than one HA relationship (a hub): status-get lists each."""
    r = await kea.command("status-get", accept=(0,))
    listed = r.arguments.get("high-availability") if isinstance(r.arguments, dict) else None
    return isinstance(listed, list) and len(listed) > 1
