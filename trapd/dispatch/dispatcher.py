"""The dispatcher: journal first, then run, with retries, delays, caps and order.

How one planned action travels (docs/dispatch.md has the operator's view):

1. :meth:`Dispatcher.submit` writes it to the journal and returns once that
   is committed. Cancels of the event (a clearing trap) are applied in the
   same transaction, before the new actions; once-within duplicates are
   journaled as cancelled.
2. If it is due now and there is room, it goes straight into memory; if not
   (a delay, a full queue) it stays in the journal and the pump
   loads it when it is due and there is room. The journal is the queue; the
   memory window is bounded by ``queue_size``. One apscheduler job is armed
   for the earliest future due time, whatever the number of delayed actions.
3. Memory holds one lane per key. A worker takes the head of a lane whose
   key is not busy, so one key runs in arrival order, never concurrently.
4. Before it runs: the circuit breaker of its Kea endpoint may defer it;
   :meth:`Journal.claim` marks it running, or holds it when a rate cap is
   full, or skips it when an operator cancelled it meanwhile, or sends it
   back to the journal when an earlier action with its key is not done
   (so per-key order holds whatever happens to be in memory).
5. Result: done; a retryable failure reschedules it with backoff and blocks
   its key until the retry (so "disable port" cannot overtake a failed
   "enable port"); a permanent failure or exhausted retries make it dead.

Crash safety: a row is running in the journal before the action starts, so
after SIGKILL only the actions that were running can have taken effect
without being marked done; they run again (at least once), or, with
``interrupted: hold-unsafe``, the non-idempotent ones wait for an operator.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import contextvars
import functools
import json
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import structlog

from trapd.cancelling import cancel_and_wait
from trapd.dispatch.blocking import stepped
from trapd.dispatch.breaker import Breaker
from trapd.dispatch.config import INTERRUPTED, DispatchConfig
from trapd.dispatch.journal import (
    AddResult,
    CapCheck,
    Entry,
    Journal,
    JournalError,
    JournalFull,
    NewEntry,
    State,
)
from trapd.dispatch.journal.rows import check_record
from trapd.dispatch.peers import fan_out, peer_key
from trapd.dispatch.stats import DispatchStats
from trapd.event import Event
from trapd.kea import pairview
from trapd.kea.config import peer_label
from trapd.plugin import (
    ActionContext,
    ActionError,
    ActionLog,
    ActionSpec,
    PermanentError,
    checked_result,
    load_failure,
    plugin_settings,
)
from trapd.rules.outcome import Outcome, PlannedAction
from trapd.secrets import REDACTOR, SecretError
from trapd.secrets import resolve as resolve_secrets
from trapd.service.logging import RateLimitedLog

if TYPE_CHECKING:
    import httpx

    from trapd.kea.client import KeaClients
    from trapd.programs import ProgramGroups

# Raised by submit when the journal is too far behind the disk: the caller counts the loss.
DispatchOverloaded = JournalFull

_T = TypeVar("_T")
_MAC_TYPES = ("mac-address",)
_IP_TYPES = ("ip-address", "ipv4", "ipv6")
_WAKE_JOB = "trapd-dispatch-wake"
# How long actions wait in the journal after their key was found running in another process
# before they are loaded and claimed again: the cross-process handover latency of one key,
# traded for at most 1/PARK_FOR claims per second of that key instead of a busy loop.
PARK_FOR = 0.02


@dataclass(slots=True)
class _Job:
    """An action loaded for the workers: what running it needs, nothing more."""

    id: int
    event_id: str
    key: str
    rule: str
    action: str
    params: dict[str, Any]
    received_at: float
    max_attempts: int
    backoff: float
    not_after: float
    endpoint: str | None
    event: Event | str  # the Event, or its JSON when loaded back from the journal
    # > 0: claimed in the transaction that journaled it (NewEntry.claim): running, this attempt.
    claimed: int = 0
    begun: float | None = None  # when its run began (recorded with its end)
    due: float = 0.0  # when it fell due (for :meth:`Dispatcher.lag`)
    taken: bool = False  # a worker took it from its lane
    previous: Any = None  # what an earlier attempt recorded (ActionContext.record): the row's result
    partial: Any = None  # what this attempt recorded

    @classmethod
    def from_entry(cls, e: Entry) -> _Job:
        return cls(
            e.id,
            e.event_id,
            e.key,
            e.rule,
            e.action,
            e.params,
            e.received_at,
            e.max_attempts,
            e.backoff,
            e.not_after,
            e.endpoint,
            e.event or "{}",
            due=e.due,
            previous=e.result,
        )

    def get_event(self) -> Event:
        if isinstance(self.event, str):
            self.event = Event.from_dict(json.loads(self.event))
        return self.event


# Seconds between two lines about the same failing action and kind of error (docs/service.md, "Logging").
FAILURE_LOG_INTERVAL = 10.0
# Seconds stop() cancels, again and again, a worker whose action swallows its cancellation
# before it leaves it behind (after dispatch.shutdown_timeout has passed).
STUBBORN_WAIT = 5.0
# A flapping port repeats its trap for minutes: once-within runs the action once and journals
# each repeat as a duplicate; their lines are written once per interval and once key, with a count.
DUPLICATE_LOG_INTERVAL = 10.0


def _no_kea() -> KeaClients:
    from trapd.kea.client import KeaClients
    from trapd.kea.config import KeaConfig

    return KeaClients(KeaConfig())


# Characters of an action's error kept (journal, log): a plugin may put a whole answer in it.
ERROR_LIMIT = 2000


def error_text(exc: BaseException) -> str:
    """``str(exc)``, masked, at most ERROR_LIMIT characters; never raises.

    A plugin's exception is the plugin's: its ``__str__`` may fail (a library's exception raised
    without the attribute its message needs) or run to megabytes (an answer quoted whole). Masked
    before it is cut: a cut through a secret would leave its start.
    """
    try:
        text = str(exc)
    except Exception as failed:  # its own __str__: anything
        return f"(str() failed: {type(failed).__name__})"
    return REDACTOR.bounded(text, ERROR_LIMIT)


def _job_fields(job: _Job) -> dict[str, str]:
    """What the action's own log is bound to, for a line written through the failure log."""
    return {"event_id": job.event_id, "rule": job.rule, "action": job.action, "action_id": str(job.id)}


class Dispatcher:
    """Runs planned actions from the journal. One per daemon; see the module docstring.

    ``settings``: the ``actions:`` section of trapd.yaml, plugin name ->
    mapping, handed to each action as ``ctx.settings``. ``http``: a shared
    client; when None the dispatcher creates one and closes it on stop.
    """

    def __init__(
        self,
        config: DispatchConfig,
        journal: Journal,
        actions: Mapping[str, ActionSpec],
        kea: KeaClients | None,
        http: httpx.AsyncClient | None = None,
        log: ActionLog | None = None,
        settings: Mapping[str, Mapping[str, Any]] | None = None,
        programs: ProgramGroups | None = None,
    ) -> None:
        """``programs``: where exec records the process groups it starts (trapd.programs), ended
        before the actions of this owner that a dead process left running run again."""
        self.config = config
        self.programs = programs
        self.journal = journal
        self.actions = dict(actions)
        self.kea = kea
        # What actions get as ctx.kea: with no endpoints configured, a registry with none (asking it
        # for one raises a PermanentError naming trapd.yaml's kea:), never None.
        self._action_kea = kea if kea is not None else _no_kea()
        self.http = http
        self._own_http = http is None
        self.log: ActionLog = log if log is not None else structlog.get_logger("trapd.dispatch")
        # An action failing for every trap of a storm (its Kea endpoint down, a webhook refusing)
        # writes one line per action, outcome and kind of error per interval, with suppressed=N.
        self._failure_log = RateLimitedLog(self.log, FAILURE_LOG_INTERVAL)
        self._duplicate_log = RateLimitedLog(self.log, DUPLICATE_LOG_INTERVAL)
        # As trapd.yaml writes them (a test's own) or converted already (open_dispatcher): the
        # plugins get them converted, with their defaults, either way.
        self.settings = plugin_settings(actions, settings or {})
        # Which action each worker runs now, to name those that do not end at stop().
        self._running_action: dict[asyncio.Task[Any], str] = {}
        # How many the last stop() left running (they ignored their cancellation): the process
        # must then leave without waiting for them (trapd.service.daemon.run_daemon).
        self.left_behind = 0
        self.stats = DispatchStats()
        self.breakers: dict[str, Breaker] = {}
        # Which endpoint an action with given target parameters went to last, for the breaker.
        self._routes: dict[tuple[str, str], str] = {}
        self._loaded: dict[int, _Job] = {}
        # Loaded jobs in the order they were loaded, for lag(); taken or dropped ones are skipped lazily.
        self._waiting: deque[_Job] = deque()
        self._lanes: dict[str, deque[_Job]] = {}
        self._busy: set[str] = set()
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._blocking: set[str] = set()  # keys whose head waits in the journal (retry / breaker)
        # Keys whose earlier action runs in another process sharing the journal -> until when the
        # pump leaves their actions in the journal (see _claim_and_run).
        self._parked: dict[str, float] = {}
        self._claiming = 0  # claims-at-insert issued and not committed yet (see _journal_soon)
        self._backlog = True  # the journal may hold due actions that are not in memory
        self._journal_only = 0  # submits that left their actions in the journal (see _pump_pass)
        self._pokes = 0  # wake-ups so far: one that comes while the pump looks makes it look again
        self._evictions = 0  # lanes sent back to the journal (see _pump_pass)
        self._refill_at = max(1, min(config.queue_size // 4, 256))
        self._wake = asyncio.Event()
        self._timer_at: float | None = None
        self._scheduler: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self._workers: list[asyncio.Task[None]] = []
        self._idle: set[asyncio.Task[None]] = set()
        # Writes nobody awaits, until they commit -> how to issue it again should it fail (an
        # action's end), or None (see _track).
        self._finishing: dict[asyncio.Future[Any], Callable[[], Awaitable[Any]] | None] = {}
        # Ends of actions (done, dead, a retry's due time) the journal did not take (unavailable,
        # full): issued again by the maintenance until it does. Left unwritten, the row stayed
        # running until trapd restarted, and every later action of its key waited for it.
        self._unwritten: list[Callable[[], Awaitable[Any]]] = []
        self._context = contextvars.Context()  # what every worker task starts from (see _worker)
        self._started = False
        self._stopping = False
        self._last_prune = 0.0
        self._last_held_alert = 0.0
        self._name_conflict_logged = False  # said once until it clears (see _maintain)
        # What the other hosts sharing the journal must agree on (trapd.kea.pairview), and where
        # the live ones do not, as last said in the log.
        self._kea_config = kea.config if kea is not None else None
        self._view = pairview.view(self._kea_config)
        self.pair_differences: list[str] = []
        self.pair_rule_differences: list[str] = []  # the same for the rules (see share_rules)
        self._differing: dict[str, set[str]] = {}  # "rules"/"kea" -> the hosts that differ now

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Recover interrupted actions, then start the pump, the workers and the timer."""
        from apscheduler.schedulers.asyncio import AsyncIOScheduler

        if self._started:
            return
        self.journal.share_view(self._view)
        recovered = await recover_interrupted(
            self.journal,
            self.actions,
            owner=self.journal.owner,
            interrupted=self.config.interrupted,
            programs=self.programs,
        )
        if recovered.get("rerun") or recovered.get("held"):
            owner = self.journal.owner
            self.log.warning("actions interrupted by the last shutdown", owner=owner, **recovered)
        else:
            self.log.info("dispatcher starting", waiting=recovered.get("waiting", 0))
        if self.http is None:
            import httpx

            self.http = httpx.AsyncClient(timeout=30.0)
        # apscheduler logs every job run at INFO; the one job here fires whenever something falls due.
        logging.getLogger("apscheduler").setLevel(logging.WARNING)
        self._scheduler = AsyncIOScheduler(timezone=UTC)
        self._scheduler.start()
        self._started = True
        self._stopping = False
        self._backlog = True
        # Another host sharing the journal (PostgreSQL) made work due: look now, not at the next poll.
        self.journal.watch(self._poke)
        self._tasks = [
            asyncio.create_task(self._pump(), name="trapd-dispatch-pump"),
            asyncio.create_task(self._maintenance(), name="trapd-dispatch-maintenance"),
        ]
        self._context = contextvars.copy_context()
        self._workers = [self._new_worker(f"trapd-dispatch-worker-{i}") for i in range(self.config.workers)]
        self._wake.set()

    async def stop(self, timeout: float | None = None) -> None:
        """Let running actions finish for up to ``timeout`` s; everything else stays in the journal.

        An action still running at the deadline is cancelled; its journal row
        stays ``running`` and the next start runs it again.
        """
        if not self._started:
            return
        self._stopping = True
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        for t in list(self._idle):
            t.cancel()
        # Cancelled again until they end: a cancel can be lost (see trapd.cancelling).
        await cancel_and_wait(self._tasks)
        busy = [t for t in self._workers if not t.done()]
        if busy:
            _, late = await asyncio.wait(busy, timeout=timeout)
            if late:
                self.log.warning("actions still running at shutdown: they will run again", count=len(late))
        left = await cancel_and_wait(self._workers, give_up_after=STUBBORN_WAIT)
        self.left_behind = len(left)
        if left:
            # Their journal rows stay running: the next start runs them again, as any interrupted.
            self.log.error(
                "actions ignore their cancellation: left behind",
                actions=sorted(self._running_action.get(t, "?") for t in left),
                hint="a plugin that catches CancelledError (a bare except:) must raise it again",
            )
        self._failure_log.flush(force=True)
        self._duplicate_log.flush(force=True)
        # Claimed when journaled but never started: back to pending, so the next start does not
        # count them as interrupted (with hold-unsafe it would hold them for an operator).
        self._unclaim([job.id for job in self._loaded.values() if job.claimed])
        if self._scheduler is not None:
            self._scheduler.shutdown(wait=False)
            self._scheduler = None
        self._timer_at = None
        if self._finishing:
            await asyncio.gather(*self._finishing, return_exceptions=True)
        with contextlib.suppress(JournalError):
            await self.journal.flush()
        if self._own_http and self.http is not None:
            await self.http.aclose()
            self.http = None
        self._loaded.clear()
        self._waiting.clear()
        self._lanes.clear()
        self._busy.clear()
        self._ready = asyncio.Queue()
        self._started = False

    # ------------------------------------------------------------ submit

    async def submit(self, event: Event, outcome: Outcome) -> list[str]:
        """Journal the outcome's actions (and apply its cancels); return their ids once committed.

        Returning means durable: an inform may be acknowledged now. Raises
        :data:`DispatchOverloaded` at once, rather than waiting, when the
        journal is too far behind, and :class:`JournalError` when it cannot
        commit (disk full, unwritable file); nothing of the outcome is
        journaled then, and the caller counts and logs the loss.
        """
        if not outcome.planned and not outcome.cancels:
            return []
        planned, entries, pending = self._journal_soon(event, outcome)
        return self._submitted(event, outcome, planned, entries, await self._committed(entries, pending))

    def _journal_soon(
        self, event: Event, outcome: Outcome
    ) -> tuple[Sequence[PlannedAction], list[NewEntry], Awaitable[AddResult]]:
        """Queue the outcome's journal write now (in call order); await the commit later.

        An action bound for every peer of a Kea HA relationship becomes one
        entry per peer here (trapd.dispatch.peers).
        """
        now = self.journal.now()
        planned = fan_out(outcome.planned, self.actions, self.kea.config if self.kea is not None else None)
        entries = [self._plan(event, pa, now) for pa in planned]
        claims = self._claim_at_insert(entries)
        try:
            pending = self.journal.add_soon(event.to_dict(), entries, outcome.cancels, now)
        except JournalFull:
            self.stats.overloaded += 1
            raise
        self._claiming += claims
        return planned, entries, pending

    async def _committed(self, entries: list[NewEntry], pending: Awaitable[AddResult]) -> AddResult:
        try:
            return await pending
        except BaseException:
            # Nothing of it was journaled: its claims-at-insert are not coming.
            self._claiming -= sum(1 for e in entries if e.claim)
            raise

    def _claim_at_insert(self, entries: list[NewEntry]) -> int:
        """Ask the journal to claim, in the insert's own transaction, what an idle worker can start.

        One round trip to the writer instead of two (add, then claim) before the action
        starts. Only as many as there are idle workers not spoken for, so a claimed action
        does not sit in memory marked running; the journal still checks key order and caps
        (a capped action is claimed, and counted, only while its caps have room; a backend
        that does not count caps at insert leaves it to the claim) and skips delayed
        actions. Not while an endpoint's breaker is open for it (the breaker must be able
        to defer it).
        """
        if not self._started or self._stopping:
            return 0
        free = len(self._idle) - self._ready.qsize() - self._claiming
        n = 0
        for e in entries:
            if n >= free:
                break
            if e.state != "pending":
                continue
            if self.breakers:
                ep = self._routes.get((e.action, _target(e.params, self.actions.get(e.action))))
                b = self.breakers.get(ep) if ep is not None else None
                if b is not None and b.open_until != 0.0:
                    continue
            e.claim = True
            n += 1
        return n

    def _submitted(
        self,
        event: Event,
        outcome: Outcome,
        planned: Sequence[PlannedAction],
        entries: list[NewEntry],
        res: AddResult,
    ) -> list[str]:
        """After the commit: count, log what did not go to the workers, hand the rest to them."""
        self.stats.submitted += len(entries)
        claimed: list[_Job] = []
        log = self.log
        if res.cancelled:
            log = log.bind(event_id=event.id)
            for action_name in res.cancelled_actions:
                self.stats.count(action_name, "cancelled")
            # A journal that does not name them still gets them counted, under "*".
            unnamed = len(res.cancelled) - len(res.cancelled_actions)
            if unnamed > 0:
                self.stats.count("*", "cancelled", unnamed)
            log.info(
                "delayed actions cancelled by a clearing event",
                ids=res.cancelled,
                cancel_keys=outcome.cancels,
            )
        direct: list[_Job] = []
        for pa, ne, id_, state, dup in zip(
            planned, entries, res.ids, res.states, res.duplicate_of, strict=True
        ):
            if ne.claim:
                self._claiming -= 1
            if state == "pending" or state == "running":
                # The common case logs nothing here: no bound logger to build (the worker binds one).
                job = _Job(
                    id_,
                    event.id,
                    pa.key,
                    pa.rule,
                    pa.action,
                    ne.params,
                    event.received_at,
                    ne.max_attempts,
                    ne.backoff,
                    event.received_at + ne.max_age,
                    None,
                    event,
                    1 if state == "running" else 0,
                    due=ne.due,
                )
                (claimed if state == "running" else direct).append(job)
                continue
            alog = self.log.bind(event_id=event.id, rule=pa.rule, action=pa.action, action_id=str(id_))
            if state == "done":
                self.stats.count(pa.action, "dry-run")
                alog.info(
                    "dry-run: would run",
                    params=self._shown(pa.action, pa.params),
                    key=pa.key,
                    delay=pa.delay,
                    cancel_key=pa.cancel_key,
                    once_key=pa.once_key,
                    caps=[c.label for c in ne.caps],
                )
            elif state == "cancelled":
                self.stats.count(pa.action, "duplicate")
                if pa.once_key is None:  # a shared journal: the other host journaled this notification
                    alog.info("copy of a notification another host journaled: not run", duplicate_of=dup)
                else:
                    self._duplicate_log.info(
                        (pa.rule, pa.action, pa.once_key),
                        "duplicate within once-within: not run",
                        event_id=event.id,
                        rule=pa.rule,
                        action=pa.action,
                        action_id=str(id_),
                        duplicate_of=dup,
                        once_key=pa.once_key,
                    )
            elif state == "dead":
                self.stats.count(pa.action, "dead")
                alog.error("action dead", reason=ne.last_error)
            elif state == "scheduled":
                alog.debug("action scheduled", delay=pa.delay, cancel_key=pa.cancel_key)
                self._arm(ne.due)
        if claimed:
            if self._started and not self._stopping:
                # Running in the journal already: into memory whatever the room (at most one per
                # idle worker was asked for).
                for job in claimed:
                    self._enqueue(job)
            else:
                self._unclaim([job.id for job in claimed])
        if direct:
            # Straight into memory when there is room, backlog or not: per-key order does not
            # depend on it (Journal.claim makes an action wait for earlier ones with its key).
            if self._started and len(self._loaded) + len(direct) <= self.config.queue_size:
                for job in direct:
                    self._enqueue(job)
            else:
                self._journal_only += 1
                self._backlog = True
                self._wake.set()
        return [str(i) for i in res.ids]

    async def submit_many(self, items: Sequence[tuple[Event, Outcome]]) -> list[list[str] | BaseException]:
        """Submit several outcomes at once, in order; they share group commits.

        Awaiting :meth:`submit` one outcome at a time costs a commit round trip
        each; a receive path with a queue of outcomes should drain it in
        chunks through here. Per item: its ids, or the exception its submit
        raised (DispatchOverloaded, JournalError); one failing item does not
        affect the others. Journal order (and so per-key order) is the order
        of ``items``.
        """
        # Every write is queued before the first commit is awaited, in the order of items, and
        # without a task per item (in a storm the event loop's time is what receiving lacks).
        started: list[
            tuple[Sequence[PlannedAction], list[NewEntry], Awaitable[AddResult]] | BaseException | None
        ] = []
        for event, outcome in items:
            if not outcome.planned and not outcome.cancels:
                started.append(None)
                continue
            try:
                started.append(self._journal_soon(event, outcome))
            except Exception as exc:
                started.append(exc)
        results: list[list[str] | BaseException] = []
        for (event, outcome), st in zip(items, started, strict=True):
            if st is None:
                results.append([])
            elif isinstance(st, BaseException):
                results.append(st)
            else:
                try:
                    planned, entries, pending = st
                    committed = await self._committed(entries, pending)
                    results.append(self._submitted(event, outcome, planned, entries, committed))
                except Exception as exc:
                    results.append(exc)
        return results

    def _plan(self, event: Event, pa: PlannedAction, now: float) -> NewEntry:
        spec = self.actions.get(pa.action)
        d = self.config.retry
        r = pa.retry
        state: State = "scheduled" if pa.delay > 0 else "pending"
        result: dict[str, Any] | None = None
        error: str | None = None
        if pa.mode == "dry-run":
            state, result = "done", {"dry_run": True}
        elif spec is None:
            state, error = "dead", _no_plugin(pa.action)
        # A rule's and an action's caps count that rule's actions; a cap of defaults counts every
        # rule's together ("*" is in no rule name, so its window is no rule's).
        caps = [
            CapCheck(f"{'*' if c.every_rule else pa.rule}/{c.name}", c.key, c.limit, c.per, c.hold_for)
            for c in pa.caps
        ]
        destructive = bool(spec and spec.destructive)
        for g in self.config.caps:
            if g.applies_to(pa.action, destructive):
                key = {"none": "", "source": event.source, "rule": pa.rule, "action": pa.action}[g.by]
                if isinstance(peer := pa.params.get("peer"), str):
                    # caps count per Kea HA peer, like the rule's own (trapd.dispatch.peers)
                    key = peer_key(key, peer_label(str(pa.params.get("endpoint")), peer))
                caps.append(CapCheck(f"global/{g.name}", key, g.limit, g.per, g.hold_for))
        mac, ip = _search_terms(spec, pa)
        return NewEntry(
            rule=pa.rule,
            action=pa.action,
            index=pa.index,
            params=pa.params,
            key=pa.key,
            mode=pa.mode,
            state=state,
            due=now + pa.delay,
            max_attempts=r.max_attempts or d.max_attempts,
            backoff=d.backoff if r.backoff is None else r.backoff,
            max_age=r.max_age or d.max_age,
            cancel_key=pa.cancel_key,
            once_key=pa.once_key,
            once_within=pa.once_within,
            caps=tuple(caps),
            mac=mac,
            ip=ip,
            item=pa.item,
            result=result,
            last_error=error,
            definition=pa.definition,
        )

    def _shown(self, action: str, params: Mapping[str, Any]) -> dict[str, Any]:
        spec = self.actions.get(action)
        if spec is None:
            return dict(params)
        return {k: ("***" if k in spec.params and spec.params[k].secret else v) for k, v in params.items()}

    # ------------------------------------------------------------ operator commands

    async def release(self, ids: Iterable[int | str] = (), rule: str | None = None) -> list[int]:
        """Release held actions (all of them when neither ids nor rule is given)."""
        released = await self.journal.release(self.journal.now(), [int(i) for i in ids], rule)
        self._poke()
        return released

    async def retry(self, id: int | str) -> bool:
        ok = bool(await self.journal.retry([int(id)], self.journal.now()))
        self._poke()
        return ok

    async def cancel(self, id: int | str) -> bool:
        return bool(await self.journal.cancel([int(id)], self.journal.now(), "cancelled by an operator"))

    def _poke(self) -> None:
        self._pokes += 1
        self._backlog = True
        self._wake.set()

    # ------------------------------------------------------------ memory, lanes, pump

    def lag(self, now: float | None = None) -> float:
        """Seconds the oldest loaded action that a worker could start now has waited since it fell due.

        0 when none waits. Actions behind a busy key (per-key order) do not count: they wait for
        their predecessor, not for the event loop. The receive path reads this in a storm to
        leave the loop to the dispatcher while actions wait (trapd.listener.udp.RECEIVE_SLICE).
        Cheap: the stale head of a queue is dropped as it is met, and at most 16 entries are read.
        """
        waiting = self._waiting
        loaded = self._loaded
        while waiting and (waiting[0].taken or loaded.get(waiting[0].id) is not waiting[0]):
            waiting.popleft()
        if not waiting:
            return 0.0
        t = self.journal.now() if now is None else now
        for i, job in enumerate(waiting):
            if i >= 16:
                break
            if not job.taken and job.key not in self._busy and loaded.get(job.id) is job:
                return max(0.0, t - job.due)
        return 0.0

    def _enqueue(self, job: _Job) -> None:
        if job.id in self._loaded:
            return
        self._loaded[job.id] = job
        self._waiting.append(job)
        if len(self._waiting) > 4 * self.config.queue_size + 64:
            # Taken and dropped entries leave only when lag() meets them at the head, and only the
            # receive path in a storm calls lag(): at a steady rate every action run stayed here
            # with its event (1.6 MB/s a worker at 1,000 traps/s, bench_soak.py). Also a key busy
            # for long keeps its followers at the head while stale entries pile up behind them.
            # Rebuilt from what is loaded (at most queue_size): amortized, a few entries a job.
            fresh = sorted((j for j in self._loaded.values() if not j.taken), key=lambda j: j.id)
            self._waiting = deque(fresh)
        lane = self._lanes.get(job.key)
        if lane is None:
            lane = self._lanes[job.key] = deque()
        if not lane or lane[-1].id < job.id:
            lane.append(job)
        else:
            lane.insert(bisect.bisect_left([j.id for j in lane], job.id), job)
        if len(lane) == 1 and job.key not in self._busy:
            self._ready.put_nowait(job.key)
        self.stats.in_memory = len(self._loaded)

    def _unclaim(self, ids: list[int]) -> None:
        if not ids:
            return
        try:
            self._track(self.journal.unclaim_soon(ids))
        except JournalError as exc:
            # They stay running in the journal: the next start runs them (at least once).
            self.log.error("journal write failed: claimed actions will run after a restart", error=str(exc))

    def _evict(self, key: str) -> None:
        """Drop a key's waiting actions from memory: its head now waits in the journal, so must they."""
        lane = self._lanes.pop(key, None)
        if lane:
            for job in lane:
                self._loaded.pop(job.id, None)
            # Claimed when journaled, yet queued behind an action that now goes back to wait
            # (an operator's retry of an older one of the key): they wait too, as pending.
            self._unclaim([job.id for job in lane if job.claimed])
            self._backlog = True
        self._blocking.add(key)
        self._evictions += 1
        self.stats.in_memory = len(self._loaded)

    async def _pump(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self._pump_pass()
            except JournalError as exc:
                self.log.error("journal read failed; retrying", error=str(exc))
                await asyncio.sleep(1.0)
                self._poke()
            except Exception as exc:  # a defect: logged, and the pump lives on (else nothing loads)
                self.log.exception("dispatcher pump error; retrying", error=repr(exc))
                await asyncio.sleep(1.0)
                self._poke()

    async def _pump_pass(self) -> None:
        queried: float | None = None  # time of the last look at the journal
        parked_ids: set[int] = set()  # actions of parked keys met in this pass: not asked for again
        if self._parked:
            now = self.journal.now()
            self._parked = {k: t for k, t in self._parked.items() if t > now}
        while self._backlog:
            room = self.config.queue_size - len(self._loaded)
            # Refill in chunks, not one query per finished action: with a long backlog that
            # would read the journal once per action.
            if room < self._refill_at:
                break  # a worker finishing wakes the pump again
            marker, evictions, pokes = self._journal_only, self._evictions, self._pokes
            now = self.journal.now()
            skip = frozenset(self._loaded)
            if parked_ids:
                skip = skip.union(parked_ids)
            entries, more = await self.journal.due(now, room, skip)
            queried = now
            self._log_set_aside()
            if evictions != self._evictions:
                continue  # a key was blocked while the query ran: its answer may let followers overtake
            room = self.config.queue_size - len(self._loaded)  # submits may have taken some meanwhile
            taken = 0
            for e in entries:
                if e.key in self._parked:
                    parked_ids.add(e.id)
                    continue
                if taken >= room:
                    more = True
                    break
                taken += 1
                if e.state == "failed" or e.endpoint is not None:
                    self._blocking.add(e.key)
                self._enqueue(_Job.from_entry(e))
            # Submits that went to the journal while the query ran may not be in its answer, nor
            # what a wake-up meanwhile announced (a NOTIFY of a commit the query did not see,
            # the journal's poll): look again rather than take this answer as the last word.
            if not more and marker == self._journal_only and pokes == self._pokes:
                self._backlog = False
        if queried is not None:
            # From the time of that look, not from now: an action that fell due in between was
            # not in its answer, and "due after now" would miss it too. Armed in the past, the
            # timer fires at once.
            nxt = await self.journal.next_due(queried)
            if nxt is not None:
                self._arm(nxt)
        if self._parked:
            self._arm(min(self._parked.values()))

    def _log_set_aside(self) -> None:
        """Once per row (it is dead now): a due action whose row could not be read back."""
        for u in self.journal.set_aside():
            self.log.error(
                "journal row unreadable: set aside",
                action_id=str(u.id),
                problem=u.problem,
                **{k: v for k, v in u.fields.items() if k != "state"},
                hint=(
                    f"the row is damaged and was not run (dead now); trapd journal show {u.id} shows what "
                    "is left of it. Every other action runs; /healthz stays 503 until trapd is restarted"
                ),
            )

    def _arm(self, at: float) -> None:
        """Make sure the pump wakes at ``at`` (the journal's clock): one apscheduler job for the
        earliest due time."""
        if self._scheduler is None or (self._timer_at is not None and self._timer_at <= at):
            return
        self._timer_at = at
        self._scheduler.add_job(
            self._on_timer,
            "date",
            run_date=datetime.fromtimestamp(at + time.time() - self.journal.now(), UTC),  # host clock
            id=_WAKE_JOB,
            replace_existing=True,
            misfire_grace_time=None,
        )

    async def _on_timer(self) -> None:
        self._timer_at = None
        self._poke()

    async def _maintenance(self) -> None:
        interval = self.config.journal.poll_interval
        while True:
            try:
                await self._maintain()
            except JournalError as exc:
                self.log.error("journal maintenance failed", error=str(exc))
            except Exception as exc:  # a defect: logged, and the maintenance goes on at the next poll
                self.log.exception("journal maintenance error", error=repr(exc))
            await asyncio.sleep(interval)

    def _say_name_conflict(self) -> None:
        """Once when another live process is found renewing under this one's name, once when it is gone."""
        conflict = self.journal.health().name_conflict
        if conflict is not None and not self._name_conflict_logged:
            self._name_conflict_logged = True
            self.log.error(
                "another trapd is running under this host's name",
                problem=conflict,
                hint="give each host its own dispatch.journal.instance (default: the host name), restart it",
            )
        elif conflict is None and self._name_conflict_logged:
            self._name_conflict_logged = False
            self.log.info("no other trapd runs under this host's name any more")

    def share_rules(self, digest: str, mibs: str = "") -> None:
        """This host's rules (RuleSet.digest), global caps and retry defaults, and MIBs
        (MibResolver.digest), published with its Kea view for the other hosts sharing the journal
        to compare (trapd.kea.pairview): before start, and at each reload."""
        self._view = pairview.view(self._kea_config, digest, caps=self.config.caps_digest(), mibs=mibs)
        self.journal.share_view(self._view)

    def _say_pair_differences(self) -> None:
        """A warning per difference from another host's Kea configuration or rules when it
        appears (at start-up, or when that host starts or reloads with other files), a line when
        none is left."""
        others = self.journal.other_views()
        rules = pairview.rule_differences(self._view, others)
        for problem in rules:
            if problem not in self.pair_rule_differences:
                self.log.warning(
                    "the hosts sharing the journal load other rules",
                    problem=problem,
                    hint="give every host the same rules files and mode, and reload both (docs/pair.md)",
                )
        if self.pair_rule_differences and not rules:
            self._say_cleared("rules", others, "the hosts sharing the journal load the same rules again",
                              "a host that loaded other rules left the journal")  # fmt: skip
        self.pair_rule_differences = rules
        found = pairview.differences(self._view, others)
        for problem in found:
            if problem not in self.pair_differences:
                self.log.warning(
                    "the hosts sharing the journal list other Kea servers",
                    problem=problem,
                    hint="give every host the same kea.endpoints names, peers and defaults (docs/pair.md)",
                )
        if self.pair_differences and not found:
            self._say_cleared("kea", others, "the hosts sharing the journal list the same Kea servers again",
                              "a host that listed other Kea servers left the journal")  # fmt: skip
        self.pair_differences = found
        # Which hosts differ now, for the line said when it clears (see _say_cleared).
        self._differing = {
            "rules": {h for h in others if pairview.rule_differences(self._view, {h: others[h]})},
            "kea": {h for h in others if pairview.differences(self._view, {h: others[h]})},
        }

    def _say_cleared(self, kind: str, others: Mapping[str, str], agree: str, left: str) -> None:
        """The differences of ``kind`` are gone: the hosts agree now, or the ones that differed
        stopped (or died, or lost the database): then nothing was fixed, and "the same again"
        would say it was."""
        gone = sorted(self._differing.get(kind, set()) - set(others))
        if gone:
            self.log.info(left, hosts=gone, hint="it still differs when it comes back with the same files")
        else:
            self.log.info(agree)

    async def _maintain(self) -> None:
        """One round of upkeep. Each step that reads or writes the journal runs even when one
        before it failed: a full disk fails expire_held (a write) at every poll, and what came
        after it (the integrity check's findings, takeovers, the counts) waited, unlogged, until
        the disk was freed. The first failure is raised at the end, for the maintenance's log."""
        now = self.journal.now()
        failed: list[JournalError] = []
        self._failure_log.flush()  # the counts held back, once their interval is over
        self._duplicate_log.flush()
        if self._unwritten:
            await _guarded(self._write_ends_again(), failed)
        if await _guarded(self.journal.changed(), failed):
            self._poke()  # `trapd journal retry / release / cancel` wrote to the journal
        for e in await _guarded(self.journal.expire_held(now), failed) or ():
            self.stats.count(e.action, "expired")
            self._failure_log.error(  # per cap and interval, as their holds began
                ("expired", e.held_by, e.action),
                "held action expired without release",
                action_id=str(e.id),
                rule=e.rule,
                action=e.action,
                held_by=e.held_by,
                event_id=e.event_id,
            )
        self._log_set_aside()  # held ones among them whose rows could not be read back
        for notice in self.journal.notices():  # the periodic integrity check's findings, once each
            getattr(self.log, notice.level)(notice.event, **notice.fields)
        for t in self.journal.take_overs():
            if t.unconfirmed:
                self.log.warning(
                    "claims whose answer the database lost put back in line: they never started",
                    count=t.rerun,
                    hint="the connection to the database broke after a claim committed",
                )
                continue
            self.log.warning(
                "took over the running actions of a host that stopped renewing its claims",
                rerun=t.rerun,
                held=t.held,
                **{"from": list(t.owners)},
                hint=(
                    "held ones were interrupted while running and may have taken effect: "
                    "trapd journal list --state held; trapd journal release ID"
                    if t.held
                    else "run again here"
                ),
            )
        self._say_name_conflict()
        self._say_pair_differences()
        counts = await _guarded(self.journal.counts(), failed)
        if counts is not None:
            self.stats.gauges = counts
        held = self.stats.gauges.get("held", 0)
        if held and now - self._last_held_alert >= 60.0:
            self._last_held_alert = now
            self.log.warning(
                "held actions (a rate cap, or interrupted while running) wait for an operator",
                held=held,
                hint="trapd journal list --state held; trapd journal release",
            )
        if now - self._last_prune >= 3600.0:
            self._last_prune = now
            pruned = await _guarded(self.journal.prune(now - self.config.journal.retention, now), failed)
            if pruned:
                self.log.info("journal pruned", entries=pruned)
        self.stats.breakers = {ep: b.state for ep, b in self.breakers.items()}
        if failed:
            raise failed[0]

    # ------------------------------------------------------------ workers

    def _new_worker(self, name: str) -> asyncio.Task[None]:
        return asyncio.create_task(self._worker(), name=name, context=self._context.copy())

    async def _worker(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        clean = contextvars.copy_context()
        while not self._stopping:
            self._idle.add(me)
            try:
                key = await self._ready.get()
            finally:
                self._idle.discard(me)
            lane = self._lanes.get(key)
            if not lane or key in self._busy:
                continue
            job = lane.popleft()
            job.taken = True
            self._busy.add(key)
            self.stats.running += 1
            self._running_action[me] = job.action
            try:
                await self._run(job)
            except JournalError as exc:
                # The journal row still says what to do; leave it there and reload it later.
                self.log.error("journal write failed around an action", action_id=str(job.id), error=str(exc))
                self._evict(key)
            except Exception as exc:  # a bug here must not kill the worker
                self.log.exception("dispatcher error", action_id=str(job.id), error=error_text(exc))
            finally:
                self._running_action.pop(me, None)
                self.stats.running -= 1
                self._busy.discard(key)
                self._loaded.pop(job.id, None)
                lane = self._lanes.get(key)
                if lane:
                    self._ready.put_nowait(key)
                else:
                    self._lanes.pop(key, None)
                self.stats.in_memory = len(self._loaded)
                if self._backlog:
                    self._wake.set()  # room for what waits in the journal (else the pump has nothing to do)
            if contextvars.copy_context() != clean:
                # Actions run in the worker's own task (see _claim_and_run): one that set a context
                # variable must not leave it to the next. A worker with a clean context takes over.
                self._workers[self._workers.index(me)] = self._new_worker(me.get_name())
                return

    async def _run(self, job: _Job) -> None:
        now = self.journal.now()
        spec = self.actions.get(job.action)
        log = self.log.bind(event_id=job.event_id, rule=job.rule, action=job.action, action_id=str(job.id))
        endpoint = job.endpoint
        if not endpoint and self._routes:  # routes exist once some Kea endpoint failed
            # _target costs ~4 us for an address (measured, timeit): none while all is well.
            endpoint = self._routes.get((job.action, _target(job.params, spec)))
        breaker = self.breakers.get(endpoint) if endpoint else None
        if breaker is not None and not job.claimed:
            retry_at = breaker.allow(now)
            if retry_at is not None:
                await self.journal.defer(
                    job.id, retry_at, f"circuit breaker open for Kea endpoint {endpoint}", endpoint
                )
                self.stats.count(job.action, "deferred")
                self._evict(job.key)
                self._arm(retry_at)
                return
        try:
            await self._claim_and_run(job, spec, log, now, endpoint)
        finally:
            if breaker is not None and breaker.probing:
                breaker.probing = False  # the probe ended some other way; let the next one try

    async def _claim_and_run(
        self, job: _Job, spec: ActionSpec | None, log: Any, now: float, endpoint: str | None
    ) -> None:
        if job.claimed:
            attempt = job.claimed
        else:
            attempt = await self._claim(job, log, now)
            if not attempt:
                return
        if spec is None:
            await self._dead(job, log, _no_plugin(job.action), now)
            return
        try:
            event = job.get_event()
        except (ValueError, KeyError, TypeError) as exc:
            await self._dead(job, log, f"the journaled event cannot be read: {exc}", now, attempt)
            return
        read: list[str] = []
        try:
            # Secrets are journaled as references to where they are kept; the values only now.
            params = resolve_secrets(dict(job.params), read)
        except SecretError as exc:
            await self._dead(job, log, str(exc), now, attempt, "SecretError")
            return
        # Masked while the action runs and its end is recorded (its error text is redacted then),
        # however often the secret's file rotates meanwhile (trapd.secrets.Redactor).
        for secret in read:
            REDACTOR.hold(secret)
        try:
            await self._run_resolved(job, spec, event, log, attempt, params, endpoint, read)
        finally:
            for secret in read:
                REDACTOR.release(secret)

    async def _run_resolved(
        self,
        job: _Job,
        spec: ActionSpec,
        event: Event,
        log: Any,
        attempt: int,
        params: dict[str, Any],
        endpoint: str | None,
        secrets: Sequence[str] = (),
    ) -> None:
        """``secrets``: the values resolved into ``params``, held masked until this returns."""
        assert self.http is not None
        ctx = ActionContext(
            event=event,
            rule=job.rule,
            action_id=str(job.id),
            log=log,
            kea=self._action_kea,
            http=self.http,
            # A copy of its own, as run_action gives: a run that writes to it (url += path) must
            # not change the settings of every later run of the plugin.
            settings=dict(self.settings.get(job.action, {})),
            attempt=attempt,
            record=functools.partial(self._record, job),
            previous=job.previous,
            programs=self.programs,
        )
        # When the action really starts (its claim committed): for the latency figures and the
        # journal's ``started``, written with its end.
        job.begun = begun = self.journal.now()
        # received_at is this host's clock (the listener's), begun the journal's
        self.stats.start_latency.observe(max(0.0, time.time() - job.received_at))
        try:
            # In this task, not a task of its own (wait_for): three turns of the event loop fewer
            # per action, which is what the dispatcher lacks when a storm takes most turns.
            async with asyncio.timeout(self.config.action_timeout):
                result = checked_result(
                    spec.name, await stepped(spec.run(params, ctx), functools.partial(self._blocked, job))
                )
        except PermanentError as exc:
            answered = _breaker_key(exc)
            if answered is not None:
                await self._answered_async(answered)  # it refused, so it is up
            now = self.journal.now()
            await self._dead(
                job, log, f"permanent error: {error_text(exc)}", now, attempt, type(exc).__name__
            )
        except Exception as exc:
            await self._failed(job, log, exc, attempt, begun)
        except (asyncio.CancelledError, SystemExit) as exc:
            task = asyncio.current_task()
            if isinstance(exc, asyncio.CancelledError) and task is not None and task.cancelling():
                raise  # this worker is cancelled (stop); action_timeout arrives as TimeoutError
            # The plugin raised it itself (it awaited a future cancelled elsewhere, a library called
            # sys.exit): a bug like any other, not a reason to end this worker or trapd.
            await self._failed(job, log, exc, attempt, begun)
        else:
            done = self.journal.now()
            if secrets:
                # The journal encodes (and masks) the result where it writes it, after this returns
                # and the secrets are let go: one the run outlasted two rotations of would be
                # journaled in clear. Masked now, while held (a result is bounded: exec, webhook).
                result = REDACTOR.redact_data(result)
            # What JSON cannot hold is journaled as its repr (trapd.dispatch.journal.rows.dumps_result).
            self._finish(job.id, "done", done, result, None, begun)
            self.stats.count(job.action, "done")
            self.stats.done_latency.observe(max(0.0, done - job.received_at))
            log.info("action done", attempt=attempt, seconds=round(done - begun, 4))
            if endpoint is not None:
                await self._answered_async(endpoint)
            self._done_blocking(job.key)

    def _blocked(self, job: _Job, seconds: float) -> None:
        """The action held the event loop ``seconds`` in one go (trapd.dispatch.blocking)."""
        self.stats.blocked_loop[job.action] += 1
        self._failure_log.warning(
            (job.action, "blocked"),
            "action blocked the event loop",
            **_job_fields(job),
            seconds=round(seconds, 3),
            hint="a blocking call in an async action holds every trap meanwhile: asyncio.to_thread(...)",
        )

    async def _record(self, job: _Job, partial: Any) -> None:
        """ActionContext.record: journaled (committed) before the action goes on; RecordTooLarge
        (nothing journaled) for one the journal would cut short."""
        check_record(partial)
        await self.journal.note(job.id, partial)
        job.partial = partial

    async def _claim(self, job: _Job, log: Any, now: float) -> int:
        """Claim a loaded action in the journal: its attempt number, or 0 when it must not run now."""
        claim = await self.journal.claim(job.id, now)
        if claim.outcome == "gone":
            self._done_blocking(job.key)
            return 0
        if claim.outcome == "wait":
            # An earlier action with this key is not in memory yet: back to the journal, which
            # hands them out in order.
            self._evict(job.key)
            if claim.blocked_by == "running":
                # It runs in another process (service.workers). Loading this one again at once
                # would claim in a loop, a write transaction each, for as long as that runs:
                # look again a little later instead.
                self._parked[job.key] = until = self.journal.now() + PARK_FOR
                self._arm(until)
            return 0
        if claim.outcome == "held":
            assert claim.cap is not None
            self.stats.count(job.action, "held")
            self.stats.held_by_cap[claim.cap] += 1
            # One line per cap and interval, with suppressed=N: a storm past a cap is what caps
            # are for, and a line per held action (tens of thousands) passed journald's rate limit.
            self._failure_log.warning(
                ("held", claim.cap, job.action),
                "rate cap reached: action held",
                **_job_fields(job),
                cap=claim.cap,
                hint=f"trapd journal release {job.id}; trapd journal list --state held",
            )
            self._done_blocking(job.key)
            return 0
        return claim.attempts

    async def _failed(self, job: _Job, log: Any, exc: BaseException, attempt: int, started: float) -> None:
        now = self.journal.now()
        if isinstance(exc, TimeoutError) and now - started >= self.config.action_timeout:
            reason = f"timed out after {self.config.action_timeout:g}s"
        elif isinstance(exc, ActionError):
            reason = error_text(exc) or type(exc).__name__
        else:
            reason = f"{type(exc).__name__}: {error_text(exc)}"
            self._failure_log.log(
                "error",
                (job.action, "unexpected", type(exc).__name__),
                "action raised an unexpected error; retrying",
                **_job_fields(job),
                error=reason,
                exc_info=exc,
            )
        endpoint = _breaker_key(exc)
        if endpoint is not None:
            self._routes[(job.action, _target(job.params, self.actions.get(job.action)))] = endpoint
            breaker = self.breakers.get(endpoint)
            if breaker is None:
                breaker = self.breakers[endpoint] = Breaker(self.config.breaker)
            if breaker.failure(now):
                log.error(
                    "circuit breaker open: pausing actions for this Kea endpoint",
                    endpoint=endpoint,
                    failures=breaker.failures,
                    cool_down=breaker.cool_down,
                )
        # Its endpoint's breaker open: the endpoint is down for every action, not this one
        # failing. The actions it holds back wait for its probe without using up attempts; this
        # one's failures before it opened count no more than theirs: it waits too, until max_age.
        # (A lone action used up its 5 attempts as the breaker opened, 30 s with the defaults: an
        # HA peer down that long kept the lease its part was to delete.)
        outage = endpoint is not None and self.breakers[endpoint].holds(now)
        if attempt >= job.max_attempts and not outage:
            await self._dead(
                job, log, f"gave up after {attempt} attempts: {reason}", now, attempt, type(exc).__name__
            )
            return
        due = now + self._backoff(job, attempt)
        asked = getattr(exc, "retry_after", None)
        if isinstance(asked, int | float) and asked > 0:
            due = max(due, now + asked)  # the other side said when (HTTP 429/503 Retry-After)
        if endpoint is not None and endpoint in self.breakers and self.breakers[endpoint].open_until > due:
            due = self.breakers[endpoint].open_until
        if due > job.not_after:
            await self._dead(
                job, log, f"max age reached after {attempt} attempts: {reason}", now, attempt, "max-age"
            )
            return
        stored = REDACTOR.redact(reason) if REDACTOR else reason
        await self._write_end(functools.partial(self.journal.retry_later, job.id, due, stored, endpoint))
        self.stats.count(job.action, "retry")
        self._failure_log.warning(
            (job.action, "retry", type(exc).__name__, endpoint),
            "action failed; will retry",
            **_job_fields(job),
            attempt=attempt,
            max_attempts=job.max_attempts,
            retry_in=round(due - now, 3),
            error=reason,
        )
        self._evict(job.key)
        self._arm(due)

    def _backoff(self, job: _Job, attempt: int) -> float:
        d = self.config.retry
        base: float = min(job.backoff * (2.0 ** (attempt - 1)), max(d.max_backoff, job.backoff))
        return base * (1.0 - d.jitter * random.random())

    async def _dead(
        self, job: _Job, log: Any, reason: str, now: float, attempt: int = 0, why: str = "dead"
    ) -> None:
        """``why``: the kind of end (a key of the failure log: one line per action and kind per interval)."""
        # What an attempt recorded stays: a dead kea.lease-del can still be restored.
        recorded = job.partial if job.partial is not None else job.previous
        self._finish(job.id, "dead", now, recorded, reason, job.begun)
        self.stats.count(job.action, "dead")
        self._failure_log.error(
            (job.action, "dead", why),
            "action dead",
            **_job_fields(job),
            reason=reason,
            attempts=attempt,
            hint=f"trapd journal retry {job.id}",
        )
        self._done_blocking(job.key)

    def _finish(
        self, id_: int, state: State, now: float, result: Any, error: str | None, started: float | None = None
    ) -> None:
        """Record the end without waiting for the commit: the worker moves on at once.

        The journal orders the write before anything issued later (the next
        claim of this key included); stop() waits for the stragglers.
        """
        if error and REDACTOR:
            error = REDACTOR.redact(error)  # the journal keeps it: a plugin's message may quote a secret
        self._write_end(
            functools.partial(self.journal.finish_soon, id_, state, now, result, error, started=started)
        )

    def _write_end(self, write: Callable[[], Awaitable[Any]]) -> asyncio.Future[Any]:
        """Issue the write of an action's end; should it fail, the maintenance issues it again."""
        try:
            return self._track(write(), write)
        except JournalError as exc:  # refused at once (JournalFull)
            self._end_unwritten(write, exc)
            raise

    def _track(
        self, write: Awaitable[Any], again: Callable[[], Awaitable[Any]] | None = None
    ) -> asyncio.Future[Any]:
        """Keep a write nobody awaits until it commits (stop() waits for it); log if it fails."""
        fut = asyncio.ensure_future(write)
        self._finishing[fut] = again
        fut.add_done_callback(self._finished)
        return fut

    def _finished(self, fut: asyncio.Future[Any]) -> None:
        again = self._finishing.pop(fut, None)
        if fut.cancelled() or (exc := fut.exception()) is None:
            return
        if again is None:
            self.log.error("journal write failed: the action will run again", error=str(exc))
        else:
            self._end_unwritten(again, exc)

    def _end_unwritten(self, write: Callable[[], Awaitable[Any]], exc: BaseException) -> None:
        self._unwritten.append(write)
        self._failure_log.error(
            ("journal", "end unwritten"),
            "journal write failed: the end of an action is written again once the journal takes it",
            error=str(exc),
            waiting=len(self._unwritten),
        )

    async def _write_ends_again(self) -> None:
        again, self._unwritten = self._unwritten, []
        writes = []
        for write in again:
            with contextlib.suppress(JournalError):  # refused at once: kept for the next round
                writes.append(self._write_end(write))
        done = await asyncio.gather(*writes, return_exceptions=True)
        if any(not isinstance(r, BaseException) for r in done):
            self._poke()  # what waited behind them in their keys may run now

    def _done_blocking(self, key: str) -> None:
        # The key's head is settled: the actions queued behind it in the journal may load now.
        if key in self._blocking:
            self._blocking.discard(key)
            self._backlog = True
        elif len(self._blocking) > 10_000:
            # Keys whose actions all ended elsewhere (cancelled by an operator) would stay here:
            # forget them all; one extra look at the journal finds whatever they were blocking.
            self._blocking.clear()
            self._backlog = True

    async def _answered_async(self, endpoint: str) -> None:
        breaker = self.breakers.get(endpoint)
        if breaker is not None and breaker.success():
            n = await self.journal.expedite(endpoint, self.journal.now())
            self.log.info("circuit breaker closed: Kea endpoint answers again", endpoint=endpoint, waiting=n)
            self._poke()


async def recover_interrupted(
    journal: Journal,
    actions: Mapping[str, ActionSpec],
    now: float | None = None,
    owner: str | None = None,
    *,
    interrupted: str = "rerun",
    programs: ProgramGroups | None = None,
) -> dict[str, int]:
    """Put the actions a dead process left ``running`` back in line; what :meth:`Dispatcher.start` does.

    ``owner`` None: every running row (a lone trapd, or a supervisor before it forks its
    workers, when no process is running anything). Given: only that owner's rows.
    ``interrupted``: ``dispatch.interrupted`` from trapd.yaml; with ``hold-unsafe`` the
    interrupted runs of plugins not declared idempotent are held for an operator instead of
    rerun. ``programs``: the process groups the dead process's actions started (trapd.programs),
    ended first, so that a rerun never runs beside the program of the interrupted run. Returns
    counts: ``rerun``, ``held``, ``waiting``, and ``programs_ended`` when there were any.
    """
    if interrupted not in INTERRUPTED:
        raise ValueError(f"interrupted must be one of {', '.join(INTERRUPTED)}, not {interrupted!r}")
    ended = await asyncio.to_thread(programs.end_left) if programs is not None else 0
    hold_unless = None
    if interrupted == "hold-unsafe":
        hold_unless = [name for name, spec in actions.items() if spec.idempotent]
    counts = await journal.recover(journal.now() if now is None else now, hold_unless, owner=owner)
    if ended:
        counts["programs_ended"] = ended
    return counts


def _breaker_key(exc: BaseException) -> str | None:
    """The circuit breaker an error names (a Kea error's ``breaker_key``, else an ``endpoint``)."""
    for attr in ("breaker_key", "endpoint"):
        key = getattr(exc, attr, None)
        if isinstance(key, str) and key:
            return key
    return None


def _no_plugin(name: str) -> str:
    """Why an action of ``name`` cannot run: its plugin failed to load (and why), or is not there."""
    failure = load_failure(name)
    if failure is not None:
        return f"action plugin {name!r} is installed but failed to load: {failure}"
    return f"no action plugin named {name!r} is installed"


def _target(params: Mapping[str, Any], spec: ActionSpec | None) -> str:
    """What tells two calls of one action apart for routing (which Kea server they address)."""
    kea = spec is not None and spec.kea_families is not None
    named = next((params[n] for n in ("server", "endpoint", "service") if params.get(n) is not None), None)
    if named is None:
        target = "default" if kea else ""
    else:
        peer = params.get("peer")  # one peer of a Kea HA relationship: a server of its own
        target = peer_label(str(named), peer if isinstance(peer, str) else None)
    if spec is None or spec.kea_families is None:
        return target
    # kea.default picks an endpoint per family (v4 when the parameters imply none), and a
    # Control Agent endpoint forwards each family to its own server, with a breaker each
    # (KeaClient.breaker_for): a kea-dhcp6 that is down must not hold up the same rule's v4
    # deletions, whether the rule names the endpoint or not.
    try:
        families = spec.kea_families(params, frozenset())
    except (ActionError, ValueError):
        return ""  # contradictory parameters: the action fails with the reason when it runs
    target += f" {families[0] if families else 'v4'}"
    service = params.get("service")  # kea.command's own service list (the agent's d2, ...)
    if isinstance(service, list) and service:
        target += f" {service[0]}"
    return target


def _search_terms(spec: ActionSpec | None, pa: PlannedAction) -> tuple[str | None, str | None]:
    """The MAC and IP an action is about, for `trapd journal history --mac/--ip`."""
    mac = ip = None
    if spec is not None:
        for name, p in spec.params.items():
            value = pa.params.get(name)
            if not isinstance(value, str):
                continue
            if mac is None and p.type in _MAC_TYPES:
                mac = value
            elif ip is None and p.type in _IP_TYPES:
                ip = value
    else:
        mac = pa.params.get("mac") if isinstance(pa.params.get("mac"), str) else None
        ip = pa.params.get("ip") if isinstance(pa.params.get("ip"), str) else None
    if pa.item:
        if mac is None and isinstance(pa.item.get("mac"), str):
            mac = pa.item["mac"]
        if ip is None and isinstance(pa.item.get("ip"), str):
            ip = pa.item["ip"]
    return mac, ip


def stats_snapshot(d: Dispatcher) -> dict[str, Any]:
    """The stats as plain JSON, for `trapd` status output and tests."""
    s = d.stats
    return {
        "submitted": s.submitted,
        "overloaded": s.overloaded,
        "outcomes": {f"{a}:{o}": n for (a, o), n in sorted(s.outcomes.items())},
        "held_by_cap": dict(s.held_by_cap),
        "blocked_loop": dict(s.blocked_loop),
        "gauges": dict(s.gauges),
        "in_memory": s.in_memory,
        "running": s.running,
        "breakers": {ep: b.state for ep, b in d.breakers.items()},
        "start_latency_p99": s.start_latency.quantile(0.99),
        "done_latency_p99": s.done_latency.quantile(0.99),
    }


__all__: Sequence[str] = ("DispatchOverloaded", "Dispatcher", "recover_interrupted", "stats_snapshot")


async def _guarded(step: Awaitable[_T], failed: list[JournalError]) -> _T | None:
    """``step``'s result; None, with its JournalError added to ``failed``, when it fails."""
    try:
        return await step
    except JournalError as exc:
        failed.append(exc)
        return None
