"""The dispatcher's counters: plain numbers the metrics module exports as it likes."""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal

# Seconds from the trap's arrival, so they cover journaling, queueing and the
# action itself: immediate actions take milliseconds, delayed ones ("release the
# lease 10 minutes after the port went down") minutes to hours.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0, 14400.0,
)  # fmt: skip


class Histogram:
    """A lock-free latency histogram for one thread: ``observe`` is a bisect and three adds.

    The dispatcher observes into it and the metrics exporter reads it as is
    (:meth:`cumulative`), so it lives here, away from prometheus-client, which
    neither the dispatcher nor ``trapd journal`` should import.

    ``counts[i]`` counts observations <= ``buckets[i]`` and > the bucket
    before (not cumulative); the last slot is +Inf.
    """

    __slots__ = ("buckets", "count", "counts", "sum")

    def __init__(self, buckets: Iterable[float] = LATENCY_BUCKETS) -> None:
        self.buckets: tuple[float, ...] = tuple(sorted(set(buckets)))
        self.counts: list[int] = [0] * (len(self.buckets) + 1)
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.sum += value
        self.count += 1

    def quantile(self, q: float) -> float:
        """Upper bound of the bucket holding the q-quantile (inf when past the last bucket)."""
        if not self.count:
            return 0.0
        target = q * self.count
        seen = 0
        for i, n in enumerate(self.counts):
            seen += n
            if seen >= target:
                return self.buckets[i] if i < len(self.buckets) else float("inf")
        return float("inf")

    def cumulative(self) -> list[tuple[str, float]]:
        """Prometheus buckets: (le, cumulative count), ending with +Inf."""
        out: list[tuple[str, float]] = []
        running = 0
        for bound, n in zip((*self.buckets, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(float(bound)), float(running)))
        return out


# What became of an action, as trapd_actions_total{outcome} says it: done, retry (failed, will
# run again), dead (failed for good), cancelled (by a clearing event or an operator), duplicate
# (once-within), held (rate cap), dry-run, deferred (circuit breaker open), expired (held too long).
# A Literal so that mypy refuses a word the docs and the shipped alerts do not know.
Outcome = Literal["done", "retry", "dead", "cancelled", "duplicate", "held", "dry-run", "deferred", "expired"]


@dataclass
class DispatchStats:
    """What the dispatcher did. ``outcomes`` is keyed by (action, :data:`Outcome`)."""

    submitted: int = 0  # planned actions journaled
    overloaded: int = 0  # submits refused because the journal was too far behind
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    held_by_cap: Counter[str] = field(default_factory=Counter)
    # Steps of an action that held the event loop 0.5 s or more (trapd.dispatch.blocking), by plugin.
    blocked_loop: Counter[str] = field(default_factory=Counter)
    start_latency: Histogram = field(default_factory=Histogram)  # received -> action started
    done_latency: Histogram = field(default_factory=Histogram)  # received -> action done
    # From the journal, refreshed every poll interval: scheduled, pending, running, failed, held, dead.
    gauges: dict[str, int] = field(default_factory=dict)
    in_memory: int = 0  # actions loaded for the workers (bounded by queue_size)
    running: int = 0
    breakers: dict[str, str] = field(default_factory=dict)  # endpoint -> closed | open | half-open

    def count(self, action: str, outcome: Outcome, n: int = 1) -> None:
        self.outcomes[(action, outcome)] += n

    def total(self, outcome: str) -> int:
        return sum(n for (_, o), n in self.outcomes.items() if o == outcome)
