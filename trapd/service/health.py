"""What /healthz reports: the daemon's own verdict on whether it is doing its job.

The daemon supplies a ``Callable[[], Health]``; the exporter answers 200 with
the JSON of a healthy one and 503 otherwise. Keep the check cheap (it runs on
the event loop) and honest: "starting", "stopping" or a journal that cannot
be written are unhealthy; a Kea endpoint that is down is reported in
``detail`` but is not, by itself, a reason to restart trapd.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from trapd.secrets import REDACTOR


@dataclass(frozen=True)
class Health:
    healthy: bool
    status: str = "ok"  # one word for humans and scripts: ok, starting, reloading, stopping, degraded...
    detail: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> bytes:
        body = {"status": self.status, "healthy": self.healthy, **self.detail}
        text = json.dumps(body, default=str, sort_keys=True)
        # A detail may quote what a server answered (a Kea endpoint's last error), and /healthz is
        # often served to a monitoring network: the secrets masked, in their forms, as in the log.
        return (REDACTOR.redact(text) if REDACTOR else text).encode() + b"\n"


STARTING = Health(False, "starting")
