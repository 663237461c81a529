"""log: write a message to trapd's log, bound to the trap that caused it.

Parameters:

``message`` (string, required)
    The text. Rules render it from the event with Jinja2 before it gets here,
    so ``"{{ source }} port {{ ifIndex }} down"`` arrives as plain text.
``level`` (debug | info | warning | error, default info)
    The log level of the line.

The line carries ``event_id``, ``rule`` and ``action_id``, so
``journalctl -u trapd | grep ACTION_ID`` finds it, and returns
``{"logged": true}`` for the journal. Running it twice only logs twice:
it is idempotent.

Example::

    - name: port-down-note
      match: {notification: IF-MIB::linkDown}
      actions:
        - action: log
          level: warning
          message: "{{ source }} ifIndex {{ ifIndex }} went down"
"""

from __future__ import annotations

from typing import Any

from trapd.params import Param
from trapd.plugin import ActionContext, action

LEVELS = ("debug", "info", "warning", "error")


@action(
    "log",
    params={
        "message": Param("string", "the text, already rendered by the rule", required=True, max_length=8192),
        "level": Param("enum", "log level", choices=LEVELS, default="info"),
    },
    idempotent=True,
)
async def log(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Write a templated message to trapd's log, tagged with the event, rule and action id.

    Parameters: ``message`` (required, rendered by the rule), ``level``
    (debug, info, warning or error; default info).

    Example::

        - action: log
          level: warning
          message: "{{ source }} ifIndex {{ ifIndex }} went down"
    """
    level = params.get("level", "info")
    emit = getattr(ctx.log, level if level in LEVELS else "info")
    emit(params["message"], source=ctx.event.source, trap=ctx.event.trap_name)
    return {"logged": True}
