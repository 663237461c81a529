"""The journal's data model and the interface every backend implements.

The journal is the dispatcher's queue, its memory across restarts and the
audit trail netops read (`trapd journal history --mac ...`). The dispatcher
keeps only a bounded window of it in memory; everything else waits here.

:class:`Journal` is the interface the dispatcher and `trapd journal` use, so a
shared database (PostgreSQL, several trapd instances) can replace
:class:`~trapd.dispatch.journal.sqlite.SQLiteJournal`, the embedded default.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

State = Literal["scheduled", "pending", "running", "done", "failed", "dead", "cancelled", "held"]
STATES: tuple[State, ...] = ("scheduled", "pending", "running", "done", "failed", "dead", "cancelled", "held")
# Waiting to run: the dispatcher may pick these up when due.
ACTIVE: tuple[State, ...] = ("scheduled", "pending", "failed")
# How long an action interrupted while running is held for an operator (dispatch.interrupted:
# hold-unsafe) before the hold expires: the journal keeps only the expiry (``due``).
INTERRUPTED_HOLD_FOR = 86400.0
# Nothing more happens to these; retention prunes them.
FINISHED: tuple[State, ...] = ("done", "dead", "cancelled")
# Finished actions deleted per transaction of a prune: each is one batch of the journal's writer,
# so its other writes (outcomes, claims, ends) go in between instead of waiting for the whole
# prune (11 s for 1,000,000 rows in one statement), and a full disk stops a prune after what it
# pruned so far, not before anything.
PRUNE_CHUNK = 2000


class JournalError(Exception):
    """The journal could not do what was asked (disk full, database locked, corrupt file)."""


class JournalFull(JournalError):
    """Too many writes are waiting for the disk: the caller sheds load instead of queueing more."""


class JournalDamaged(JournalError):
    """The journal file is damaged (empty, not a database, failed its integrity check, malformed pages).

    The message says which file, what is wrong and how to recover; trapd does not start on it.
    """


@dataclass(frozen=True, slots=True)
class CapCheck:
    """One rate cap an action must pass when it first starts (see :meth:`Journal.claim`)."""

    label: str  # "RULE/NAME", "*/NAME" (a cap of defaults) or "global/NAME": the window's identity
    key: str  # rendered key: one window per value
    limit: int
    per: float
    hold_for: float

    def to_json(self) -> list[Any]:
        return [self.label, self.key, self.limit, self.per, self.hold_for]

    @classmethod
    def from_json(cls, v: Sequence[Any]) -> CapCheck:
        return cls(str(v[0]), str(v[1]), int(v[2]), float(v[3]), float(v[4]))


@dataclass(slots=True)
class NewEntry:
    """A planned action as the dispatcher hands it to :meth:`Journal.add`."""

    rule: str
    action: str
    index: int
    params: dict[str, Any]
    key: str
    mode: str
    state: State  # pending, scheduled, or already final (done for dry-run, dead for an unknown plugin)
    due: float
    max_attempts: int
    backoff: float
    max_age: float
    cancel_key: str | None = None
    once_key: str | None = None
    once_within: float | None = None
    caps: tuple[CapCheck, ...] = ()
    mac: str | None = None
    ip: str | None = None
    item: dict[str, Any] | None = None
    result: dict[str, Any] | None = None
    last_error: str | None = None
    definition: str = ""  # the rule file's entry it comes from (PlannedAction.definition)
    # Claim it in the insert transaction when nothing stands in its way: pending (due now), no
    # cap, no earlier action of its key waiting or running. It is then journaled ``running``
    # (attempt 1, this journal's owner): the caller must run it, or give it back with
    # ``unclaim_soon``. Saves the claim's round trip to the writer.
    claim: bool = False


# What a shared journal adds to a row's last_error when the host that was running it ended it
# after another host took the row over ("dhcp1" + LATE_END + "done"; postgres.py, migration 10).
LATE_END = " ran it to its end after the takeover: "


@dataclass(slots=True)
class Entry:
    """One journal row. ``event`` (the event as JSON text) is filled where the caller needs it."""

    id: int
    event_id: str
    received_at: float
    source: str
    rule: str
    action: str
    index: int
    params: dict[str, Any]
    key: str
    mode: str
    state: State
    attempts: int
    max_attempts: int
    backoff: float
    max_age: float
    age_from: float
    created: float
    due: float
    started: float | None
    finished: float | None
    cancel_key: str | None
    once_key: str | None
    caps: tuple[CapCheck, ...]
    cap_exempt: bool
    held_by: str | None
    endpoint: str | None
    mac: str | None
    ip: str | None
    item: dict[str, Any] | None
    result: Any
    last_error: str | None
    # Which journal (process) claimed it last: recovery after a restart is scoped to it.
    owner: str | None = None
    # Which process journaled it (a shared journal: HOST or HOST/worker-N; SQLite: its worker, or
    # None). On a pair not always the one that ran it: the other host may claim it when it falls
    # due, and a copy of a notification is journaled cancelled by the host that got it second.
    journaled_by: str | None = None
    event: str | None = None

    @property
    def held_since(self) -> float | None:
        """When a held action was held (None if it is not held, or the hold's length is unknown).

        The journal stores the hold's expiry in ``due``; the hold started that
        long before it: the holding cap's ``hold_for``, or INTERRUPTED_HOLD_FOR.
        """
        if self.state != "held":
            return None
        if self.held_by == "interrupted":
            return self.due - INTERRUPTED_HOLD_FOR
        for cap in self.caps:
            if cap.label == self.held_by:
                return self.due - cap.hold_for
        return None

    @property
    def not_after(self) -> float:
        """Past this time the action is not retried any more (max age)."""
        return self.age_from + self.max_age

    def to_dict(self) -> dict[str, Any]:
        d = {name: getattr(self, name) for name in self.__slots__ if name != "event"}
        d["caps"] = [c.to_json() for c in self.caps]
        if self.event is not None:
            d["event"] = json.loads(self.event)
        return d


@dataclass(slots=True)
class AddResult:
    ids: list[int]
    # Per new entry: what it became (a once-within duplicate becomes cancelled; one claimed in
    # the insert transaction, see NewEntry.claim, running).
    states: list[State]
    duplicate_of: list[int | None]
    cancelled: list[int] = field(default_factory=list)  # ids cancelled by the event's cancel keys
    # The action (plugin name) of each of those, in the same order: the metrics count cancels per plugin.
    cancelled_actions: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ClaimResult:
    outcome: Literal["running", "held", "gone", "wait"]
    cap: str | None = None  # the cap that held it
    attempts: int = 0
    # For "wait": "waiting" when an earlier action of the key waits to run (load it first),
    # "running" when none waits but another of the key (earlier or later) is running: in another
    # process sharing the journal, since one key never runs twice at once in one dispatcher.
    blocked_by: Literal["waiting", "running"] | None = None


@dataclass(frozen=True, slots=True)
class Takeover:
    """Running actions put back in line by this host: other hosts' whose claims' lease ran out,
    or (``unconfirmed``) this host's own claims whose answer was lost (they never started)."""

    rerun: int
    held: int  # not idempotent, with ``dispatch.interrupted: hold-unsafe``: for an operator
    owners: tuple[str, ...]  # whose claims they were
    unconfirmed: bool = False


@dataclass(frozen=True, slots=True)
class JournalHealth:
    """Whether the journal can commit now: for /healthz, STATUS= and the metrics."""

    available: bool = True
    problem: str | None = None  # why not, in one line (never a password)
    since: float | None = None  # when it stopped (epoch seconds)
    failed_writes: int = 0  # operations that failed because of it, since start
    taken_over: int = 0  # a shared journal: running actions taken over from other hosts, since start
    unreadable: int = 0  # waiting actions set aside because their row could not be read back, since start
    # A shared journal: another live process renews under this process's name (found at a lease
    # renewal, within the last lease): what it is, in one line; None: none.
    name_conflict: str | None = None
    # A shared journal: this host's claims whose answer was lost (the connection broke after the
    # commit), put back in line by its lease loop (they never started), since start.
    put_back: int = 0
    # The SQLite journal's periodic checks of the whole file since start, by result (ok, damaged,
    # error: the check itself could not run), and how long the last one took (seconds).
    integrity_checks: Mapping[str, int] = field(default_factory=dict)
    integrity_check_seconds: float = 0.0
    # The SQLite journal: bytes of WAL its last checkpoint could not get rid of (a reader holds them).
    wal_bytes: int = 0


@dataclass(frozen=True, slots=True)
class JournalNotice:
    """Something about the journal as a whole an operator must read once (see :meth:`Journal.notices`):
    damage found by the periodic integrity check, the file sound again, the file replaced."""

    level: Literal["error", "warning", "info"]
    event: str  # the log line's event
    fields: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Unreadable:
    """A waiting action whose row could not be read back (text that is not UTF-8, JSON cut short:
    damage the start-up check does not see), set aside (``dead``) so that every other action runs."""

    id: int
    problem: str  # what failed, without the row's text (it may hold anything)
    fields: Mapping[str, str | None]  # what of the row could still be read: rule, action, key, ...


@dataclass(frozen=True, slots=True)
class HistoryFilter:
    mac: str | None = None
    ip: str | None = None
    source: str | None = None
    rule: str | None = None
    action: str | None = None
    states: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None
    # A shared journal's host (its instance): the actions it journaled and those it claimed last
    # (ran, runs), its workers' (HOST/worker-N) included. Claimed only, as before, left out what
    # the host got and the other ran, a cap holds, or it journaled cancelled as a copy.
    host: str | None = None
    limit: int = 100


class Journal(Protocol):
    """What the dispatcher and `trapd journal` need from a journal.

    Every method that changes something returns only after the change is
    durable. Ids are integers, increasing in arrival order (per-key ordering
    and the oldest-first loading of a backlog rely on it).
    """

    async def open(self) -> None: ...
    async def close(self) -> None: ...
    def now(self) -> float:
        """The journal's clock, in epoch seconds: what every ``now``, due time and lease given to it
        is on. This host's clock for a journal of its own; a shared journal's hosts all go by the
        database's clock, so a host whose clock is a few seconds off neither takes another's claim
        over early nor runs a delayed action early (docs/pair.md)."""
        ...

    def share_view(self, view: str) -> None:
        """What of this host's configuration the other hosts sharing the journal must agree on
        (trapd.kea.pairview), published under the host's name when this process registers, and
        again at the next lease renewal when it changes (a reload)."""
        ...

    def other_views(self) -> dict[str, str]:
        """The views of the other hosts with a live process on a shared journal, by host name, as
        the last lease renewal read them (after :meth:`share_view`); a journal of its own: none."""
        ...

    def take_overs(self) -> list[Takeover]:
        """What this process took over from other hosts since the last call (a shared journal's
        lease renewal does it in the background): for the dispatcher's log."""
        ...

    def notices(self) -> list[JournalNotice]:
        """What changed about the journal as a whole since the last call (the SQLite journal's
        periodic integrity check: damage found, sound again; the file replaced), for the
        dispatcher's log: each said once, when it happens. Health says it for as long as it lasts."""
        ...

    def set_aside(self) -> list[Unreadable]:
        """The actions :meth:`due` and :meth:`expire_held` set aside since the last call, their rows
        unreadable: for the dispatcher's log (once each: they are ``dead`` now, never read again)."""
        ...

    async def flush(self) -> None:
        """Return when every operation issued before it is committed."""
        ...

    async def add(
        self,
        event: Mapping[str, Any] | None,
        entries: Sequence[NewEntry],
        cancel_keys: Sequence[str],
        now: float,
    ) -> AddResult:
        """Cancel waiting actions with these cancel keys, then insert ``entries`` (deduplicated)."""
        ...

    def add_soon(
        self,
        event: Mapping[str, Any] | None,
        entries: Sequence[NewEntry],
        cancel_keys: Sequence[str],
        now: float,
    ) -> Awaitable[AddResult]:
        """Like :meth:`add`, issued now (ordered before every later operation), awaited later.

        Raises :class:`JournalFull` at once, like ``add``. Lets a caller queue many
        adds in order without a task each, then await their commits.
        """
        ...

    @property
    def owner(self) -> str | None:
        """Who this journal claims actions for (a worker's name); None for a lone trapd."""
        ...

    @property
    def queued(self) -> int:
        """Operations issued and not committed yet (the listener reads it in a storm)."""
        ...

    async def recover(
        self, now: float, hold_unless: Iterable[str] | None = None, *, owner: str | None = None
    ) -> dict[str, int]:
        """After a restart: running -> pending (or held, for actions not in ``hold_unless`` when given).

        ``owner`` None: every running row. Given: only the rows that owner claimed
        (another process sharing the journal may be running the rest right now).
        """
        ...

    async def due(
        self, now: float, limit: int, skip: frozenset[int] = frozenset()
    ) -> tuple[list[Entry], bool]:
        """Up to ``limit`` waiting actions due now, oldest first, leaving out ``skip`` (already in memory).

        Actions whose key is blocked are left out too: by an earlier action
        with that key that waits for a retry (or for an open circuit breaker).
        The flag says whether there may be more. A row among them that cannot be read back
        (damaged) is set aside, not returned: ``dead``, its ``last_error`` saying so (see
        :meth:`set_aside`), and the journal reports damage in :meth:`health` from then on.
        """
        ...

    async def next_due(self, now: float) -> float | None: ...
    async def claim(self, id: int, now: float) -> ClaimResult:
        """Mark an action running (attempts + 1).

        Unless: it changed meanwhile (``gone``), an earlier action with the
        same key must run first or another of the key is running (``wait``), or
        a rate cap holds it (``held``).
        """
        ...

    async def finish(
        self,
        id: int,
        state: State,
        now: float,
        result: Any = None,
        error: str | None = None,
        *,
        started: float | None = None,
    ) -> None:
        """A running action ended. ``started``: when its run began (else the claim's time stays)."""
        ...

    def finish_soon(
        self,
        id: int,
        state: State,
        now: float,
        result: Any = None,
        error: str | None = None,
        *,
        started: float | None = None,
    ) -> Awaitable[None]:
        """Like :meth:`finish`, issued now, awaited (or not) later.

        The write is ordered before every operation issued after this call
        returns: a worker need not wait for the commit before the next action
        of the same key is claimed. Until it commits, a crash leaves the row
        running, which means the action runs again (at least once).
        """
        ...

    def unclaim_soon(self, ids: Sequence[int]) -> Awaitable[int]:
        """Give back actions claimed but never started (running -> pending, the attempt not counted).

        Issued now, ordered like :meth:`finish_soon`; for claims made by ``add`` (NewEntry.claim)
        that the dispatcher cannot run after all (stopping).
        """
        ...

    async def note(self, id: int, result: Any) -> None:
        """Journal a running action's partial result (ActionContext.record); committed on return.

        Its end's result replaces it; a retry, a restart or a takeover keeps it, and the next
        attempt gets it (``Entry.result``).
        """
        ...

    async def retry_later(self, id: int, due: float, error: str, endpoint: str | None) -> None: ...
    async def defer(self, id: int, due: float, reason: str, endpoint: str | None) -> None:
        """Postpone a waiting action without counting an attempt (circuit breaker open)."""
        ...

    async def expedite(self, endpoint: str, now: float) -> int:
        """Make every action waiting on ``endpoint`` due now (its breaker closed again)."""
        ...

    async def cancel(self, ids: Sequence[int], now: float, reason: str) -> list[int]: ...
    async def retry(self, ids: Sequence[int], now: float) -> list[int]:
        """Operator retry: dead, failed, held or cancelled -> pending now, attempts and max age reset."""
        ...

    async def unreadable_rows(self, ids: Sequence[int]) -> dict[int, str]:
        """Of ``ids``, those whose row (or event) cannot be read back as the dispatcher reads it,
        and why (without the row's text). An operator's retry refuses them: run again, they would
        only be set aside again (see :meth:`set_aside`)."""
        ...

    async def release(self, now: float, ids: Sequence[int] = (), rule: str | None = None) -> list[int]:
        """Held -> pending, exempt from caps from now on. No ids and no rule: every held action."""
        ...

    async def expire_held(self, now: float) -> list[Entry]:
        """Held actions whose hold ran out -> dead; returned as they were. One whose row cannot be
        read back is set aside as :meth:`due` does (see :meth:`set_aside`), not returned."""
        ...

    async def get(self, id: int, with_event: bool = True) -> Entry | None: ...
    async def history(self, flt: HistoryFilter) -> list[Entry]: ...
    async def counts(self) -> dict[str, int]: ...
    async def prune(self, finished_before: float, now: float) -> int: ...
    async def changed(self) -> bool:
        """True when another process (``trapd journal``) committed since the last call."""
        ...

    def health(self) -> JournalHealth:
        """Can it commit now? Cheap (no I/O): the daemon asks at every /healthz and STATUS=."""
        ...

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (on the event loop) when another process committed work for us.

        A push on top of :meth:`changed`, which stays the fallback the dispatcher polls:
        the PostgreSQL journal calls it on ``NOTIFY``; the SQLite journal never does.
        """
        ...
