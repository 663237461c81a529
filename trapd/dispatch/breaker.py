"""Circuit breaker per Kea endpoint: stop hammering a server that keeps failing.

Closed: everything runs. After ``failures`` consecutive retryable failures
the breaker opens: actions bound for the endpoint wait in the journal
(deferred, no attempt counted) for ``cool_down``. Then one action goes
through as the probe (half-open). Success closes the breaker and makes every
deferred action due at once; failure reopens it with twice the cool-down, up
to ``max_cool_down``. Using a real action as the probe needs nothing from the
Kea client, and the probe does useful work when it succeeds.
"""

from __future__ import annotations

from dataclasses import dataclass

from trapd.dispatch.config import BreakerConfig

STATES = ("closed", "half-open", "open")  # what Breaker.state says, from all right to worst


@dataclass(slots=True)
class Breaker:
    config: BreakerConfig
    failures: int = 0
    open_until: float = 0.0  # 0: closed
    cool_down: float = 0.0
    probing: bool = False
    opened: int = 0  # times it opened, for the metrics

    @property
    def state(self) -> str:
        if self.open_until == 0.0:
            return "closed"
        return "half-open" if self.probing else "open"

    def state_at(self, now: float) -> str:
        """What the metrics say at ``now``: open while the cool-down holds actions back; half-open
        once it is over (the next action goes through as the probe) and while the probe runs.

        Unlike :attr:`state`, an open breaker whose cool-down ended with no action left to probe
        it is not "open" for ever after the endpoint came back.
        """
        if self.open_until == 0.0:
            return "closed"
        return "half-open" if self.probing or now >= self.open_until else "open"

    def holds(self, now: float) -> bool:
        """Actions for the endpoint wait now: its cool-down runs, or its probe does."""
        return self.open_until != 0.0 and (self.probing or now < self.open_until)

    def allow(self, now: float) -> float | None:
        """None: go ahead (maybe as the probe). Otherwise when to try again."""
        if self.open_until == 0.0:
            return None
        if now < self.open_until:
            return self.open_until
        if self.probing:
            return now + self.cool_down
        self.probing = True
        return None

    def success(self) -> bool:
        """The endpoint answered. True when this closed an open breaker."""
        was_open = self.open_until != 0.0
        self.failures = 0
        self.open_until = 0.0
        self.cool_down = 0.0
        self.probing = False
        return was_open

    def failure(self, now: float) -> bool:
        """A retryable failure on this endpoint. True when this opened (or reopened) the breaker."""
        self.failures += 1
        if self.open_until != 0.0:
            if not self.probing and now < self.open_until:
                return False  # an action that started before the breaker opened
            self.probing = False
            self.cool_down = min(self.cool_down * 2, self.config.max_cool_down)
            self.open_until = now + self.cool_down
            return True
        if self.failures >= self.config.failures:
            self.cool_down = self.config.cool_down
            self.open_until = now + self.cool_down
            self.opened += 1
            return True
        return False
