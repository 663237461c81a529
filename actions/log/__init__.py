"""log: write a message to trapd's log, bound to the trap that caused it.

What it does and its example: the docstring of :func:`log` (``trapd actions
log``); its parameters: the ``Param`` declarations below (the README's table
is generated from them, ``python -m trapd.actiondocs``).
"""

from __future__ import annotations

from typing import Any

from trapd.params import Param
from trapd.plugin import ActionContext, action

LEVELS = ("debug", "info", "warning", "error")


@action(
    "log",
    params={
        "message": Param(
            "string",
            "the text; the rule renders it from the event, so it arrives as plain text",
            required=True,
            max_length=8192,
        ),
        "level": Param("enum", "log level of the line", choices=LEVELS, default="info"),
    },
    idempotent=True,
)
async def log(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Write a templated message to trapd's log, tagged with the event, rule and action id.

    The line carries ``event_id``, ``rule`` and ``action_id``, so
    ``journalctl -u trapd | grep ACTION_ID`` finds it. Returns ``{"logged":
    true}`` for the journal; running it twice only logs twice (idempotent).

    Example::

        - action: log
          level: warning
          message: "{{ source }} ifIndex {{ ifIndex }} went down"
    """
    level = params.get("level", "info")
    emit = getattr(ctx.log, level if level in LEVELS else "info")
    emit(params["message"], source=ctx.event.source, trap=ctx.event.trap_name)
    return {"logged": True}
