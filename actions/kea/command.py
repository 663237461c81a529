"""kea.command: any Kea command, for what the other kea.* actions do not cover."""

from __future__ import annotations

from typing import Any

from trapd.params import Param
from trapd.plugin import ActionContext, PermanentError, action

from .common import ENDPOINT, FAMILY, client_for


@action(
    "kea.command",
    params={
        "endpoint": ENDPOINT,
        "family": FAMILY,
        "command": Param("string", "the Kea command, e.g. lease4-update", required=True, max_length=100),
        "arguments": Param("any", "its arguments (templates are rendered, then the value is sent as JSON)"),
        "service": Param("list", "control-agent only: override the service list, e.g. [d2]", item="string"),
        "accept": Param(
            "list",
            "result codes that count as success (default [0]; add 3 to accept 'not found')",
            item="integer",
            default=[0],
        ),
    },
    idempotent=False,
    destructive=True,
)
async def kea_command(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Send any Kea command with templated arguments: the escape hatch.

    trapd cannot know what an arbitrary command does, so this action is
    treated as destructive (it needs a rate cap) and not idempotent (no
    automatic retry after an ambiguous failure). Prefer the specific kea.*
    actions where one exists: they validate their parameters and record
    what they change.

    Example::

        - action: kea.command
          command: lease4-update
          arguments:
            ip-address: "{{ var('ipAddress') }}"
            hw-address: "{{ var('macAddress') }}"
            hostname: "{{ source }}-client"
    """
    command = params["command"]
    if not command or any(c.isspace() for c in command):
        raise PermanentError(f"not a Kea command name: {command!r}")
    service = params.get("service")
    if service is not None and len(service) != 1:
        raise PermanentError("service: one service per action (the answer of exactly one server is recorded)")
    kea = client_for(params, ctx, params.get("family"))
    r = await kea.command(
        command, params.get("arguments"), accept=tuple(params["accept"]), service=params.get("service")
    )
    ctx.log.info("kea command sent", endpoint=kea.name, command=command, result=r.result)
    return {"endpoint": kea.name, "family": kea.family, "command": command, **r.to_dict()}
