"""What the rule engine decides for one event, and what the dispatcher consumes.

The engine never runs anything: it returns an :class:`Outcome` listing the
actions to plan (already rendered and validated against the plugin's
parameter schema) and the keys of pending delayed actions to cancel. The
dispatcher journals and runs them. ``trapd test`` prints the same object.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

Mode = Literal["enforce", "dry-run"]
# Why an action was rejected, as a bounded word (the metrics label; the message says the details):
# a template failed, a rendered value failed its parameter type, a decoder met a malformed value,
# or a regex condition ran out of the event's regex time (the rule and those after it undecided).
RejectionKind = Literal["template", "parameter", "decoder", "regex"]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Per-rule retry overrides; None means the dispatcher's default."""

    max_attempts: int | None = None
    max_age: float | None = None  # seconds since the event was received
    backoff: float | None = None  # first delay in seconds, doubled each attempt (with jitter)


@dataclass(frozen=True, slots=True)
class RateCap:
    """At most ``limit`` actions per ``per`` seconds for each rendered ``key``.

    Beyond the cap, actions are *held* in the journal (not dropped) until an
    operator releases them or they expire after ``hold_for`` seconds.
    """

    name: str
    limit: int
    per: float
    key: str = ""
    hold_for: float = 3600.0
    # A cap of ``defaults``: one count over every rule's actions, not one per rule.
    every_rule: bool = False


@dataclass(frozen=True, slots=True)
class PlannedAction:
    """One action the rules want run, with everything rendered and validated.

    ``key``: actions with the same key run in arrival order, never at once
    (default: the plugin's key parameters; an action without any gets a key of
    its own, since nothing needs ordering against it).
    ``delay``: seconds to wait before running; a cancel for ``cancel_key``
    arriving meanwhile cancels it (flap suppression).
    ``once_within`` / ``once_key``: run at most once per window for that key.
    ``item``: the foreach item that produced it (a decoded MAC change), if any.
    ``definition``: a digest of the rule file's entry it was planned from (``ActionCall.definition``).
    """

    rule: str
    action: str
    index: int  # position in the rule's actions list
    params: dict[str, Any]
    key: str
    mode: Mode = "enforce"
    delay: float = 0.0
    cancel_key: str | None = None
    once_within: float | None = None
    once_key: str | None = None
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    caps: tuple[RateCap, ...] = ()
    item: dict[str, Any] | None = None
    definition: str = ""


@dataclass(frozen=True, slots=True)
class Rejection:
    """An action that was not planned because a rendered value failed validation."""

    rule: str
    action: str
    index: int
    reason: str  # the message: which value, which parameter, why
    kind: RejectionKind


@dataclass(frozen=True, slots=True)
class Outcome:
    matched: tuple[str, ...] = ()  # rule names, in evaluation order
    planned: tuple[PlannedAction, ...] = ()
    cancels: tuple[str, ...] = ()  # cancel keys: pending delayed actions with these keys are cancelled
    rejected: tuple[Rejection, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.matched or self.planned or self.cancels or self.rejected)
