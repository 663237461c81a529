"""The daemon: wires listener -> normalizer -> rules -> dispatcher, under systemd.

Read this file top to bottom to follow one trap: ``_on_notification`` is
called by the listener for every accepted datagram, synchronously, on the
event loop. It normalizes, evaluates the rules (both cheap and CPU-bound, so
doing them inline is faster than queueing every trap) and queues only the
outcomes that want something done. ``_submit_loop`` hands those to the
dispatcher, which journals them before anything runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import signal
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, cast

from trapd.cancelling import cancel_and_wait
from trapd.config import Config
from trapd.event import Event
from trapd.instance import undecodable_total
from trapd.listener.raw import DEFER_ACK, RawNotification
from trapd.listener.resends import InformResends, PendingInform
from trapd.listener.stats import DropLog
from trapd.listener.v3.reports import usm_stats_counts
from trapd.rules.outcome import Outcome
from trapd.service.health import Health
from trapd.service.lifecycle import (
    STOP_MARGIN,
    Loaded,
    apply_logging,
    compile_reload,
    failure_reason,
    keep_restart_needed,
    load_startup,
    release_rules,
    start_metrics,
    status_loop,
    warn_restart_needed,
)
from trapd.service.options import EXIT_CONFIG, RunOptions
from trapd.statedir import lock_state_dir, make_private_dir
from trapd.yamlsource import ConfigError

if TYPE_CHECKING:
    import httpx

    from trapd.dispatch.dispatcher import Dispatcher
    from trapd.dispatch.journal import Journal
    from trapd.kea.client import KeaClients
    from trapd.kea.monitor import KeaMonitor
    from trapd.listener.limits import SourceLimiter
    from trapd.listener.udp import Listener
    from trapd.mibs import MibResolver
    from trapd.normalize import Normalizer
    from trapd.plugin import ActionSpec
    from trapd.rules import RuleSet
    from trapd.service.exporter import MetricsServer
    from trapd.service.metrics import DaemonSnapshot

# Outcomes waiting for the dispatcher. Bounded so a storm that outruns the
# journal cannot grow memory without limit; what overflows is counted.
# An outcome waiting here holds its Event (about 3 KB with its varbinds): 10,000 of
# them keep a storm that matches rules within trapd's memory bound (bench_storm.py).
SUBMIT_QUEUE_MAX = 10_000
# ... and in bytes, by queued_size()'s estimate, counting the batch the submit loop is
# journaling: a matched trap can carry a 64 KB varbind (about 250 KB once normalized,
# with its display text), so 10,000 of them would be gigabytes (issue 14 item 1). A storm
# of ordinary matched traps (about 1.5 KB each by the estimate) meets the count first.
SUBMIT_QUEUE_MAX_BYTES = 32 * 1024 * 1024
# Seconds between two lines about the same rejected action (rule, action, kind of rejection).
REJECT_LOG_INTERVAL = 10.0
# On stop, how long outcomes already received get to reach the journal.
SUBMIT_DRAIN_TIMEOUT = 5.0
# queued_size()'s fixed parts, measured with tracemalloc on CPython 3.11 (a normalized
# Event with distinct varbinds; a PlannedAction with its params dict): what an object
# holds beyond the text and octets of its values.
_EVENT_OVERHEAD = 400
_VARBIND_OVERHEAD = 120
_ACTION_OVERHEAD = 600
# Outcomes handed to the dispatcher in one submit_many (one group commit or a few).
SUBMIT_BATCH = 500
# The rate-limited line for each reason matched outcomes were lost ("": any other).
_LOSS_MESSAGES = {
    "": "matched outcomes lost: dispatch backlog full",
    "journal-unavailable": "matched outcomes lost: the journal cannot commit (database unavailable)",
    "dispatch-backlog-bytes": "matched outcomes lost: dispatch backlog full (bytes)",
}


def queued_size(event: Event, outcome: Outcome) -> int:
    """Bytes that a queued (event, outcome) holds, estimated from the lengths of its values.

    Shallow on purpose (a sum of ``len``, no object walk): it runs on the receive
    path for every matched trap (1.3 µs for a linkDown with 4 varbinds and one action,
    load 2.3 on the 2-core VM; it counts 1.5 KB). Within a few percent of tracemalloc's figure for a
    large varbind, where it matters; a varbind the normalizer shares between events
    is counted in each (an over-estimate, so the bound holds).
    """
    size = _EVENT_OVERHEAD
    for vb in event.varbinds:
        value = vb.value
        size += _VARBIND_OVERHEAD + len(vb.display) + (len(value) if isinstance(value, bytes | str) else 0)
    for action in outcome.planned:
        size += _ACTION_OVERHEAD
        for param in action.params.values():
            if isinstance(param, str | bytes):
                size += len(param)
    return size


class LazyHttpClient:
    """The dispatcher's shared ``httpx.AsyncClient``, made when an action first uses it.

    Making one loads the TLS trust store and anyio's backend: about 0.1 s of
    CPU, a quarter of trapd's start-up, spent before READY=1 although many
    sites never run a webhook. Attribute access is passed through, so to an
    action ``ctx.http.request(...)`` is the real client's.
    """

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._client: httpx.AsyncClient | None = None

    def __getattr__(self, name: str) -> Any:
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(**self._options)
        return getattr(self._client, name)

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None


def settle_memory() -> None:
    """After start-up: one full collection, then freeze the survivors out of the collector's sight.

    Start-up allocates most of what trapd keeps (modules, the MIB tables, the
    compiled rules). Collecting while building them is wasted work
    (``trapd run`` starts with the collector off), and once frozen they are
    no longer walked by every full collection during a trap storm. Garbage
    made later is collected as usual.
    """
    gc.collect()
    gc.freeze()
    gc.enable()


@dataclass
class PipelineStats:
    """Counters of the daemon's own stages (the listener and dispatcher keep theirs)."""

    received: Counter[tuple[str, str]] = field(default_factory=Counter)  # (version, source group)
    matched: Counter[str] = field(default_factory=Counter)  # rule
    rejected: Counter[tuple[str, str]] = field(default_factory=Counter)  # (rule, rejection kind)
    errors: Counter[str] = field(default_factory=Counter)  # stage
    reloads: Counter[str] = field(default_factory=Counter)  # ok / failed
    unmatched: int = 0
    submit_overflow: int = 0
    informs_resent: int = 0  # copies of an inform taken in before, answered without running the rules

    def keep_rules(self, names: set[str]) -> None:
        """Forget the counts of rules a reload removed: one series per rule of the running set.

        Kept, every name matched since the start stayed a series: rule names that change (a
        generator's version, a renamed switch) grew memory, every scrape and, with workers,
        the message to the supervisor, at each reload (100,000 rules: 7 MB each time).
        """
        self.matched = Counter({k: n for k, n in self.matched.items() if k in names})
        self.rejected = Counter({k: n for k, n in self.rejected.items() if k[0] in names})


class Role(Protocol):
    """What makes a Daemon one of several workers (trapd.service.workers.WorkerRole is the one)."""

    @property
    def sockets(self) -> tuple[socket.socket, ...]: ...
    def take_preloaded(self) -> Loaded | None: ...
    @property
    def journal_owner(self) -> str: ...
    @property
    def journal_token(self) -> str: ...
    def adjust(self, config: Config) -> Config: ...
    async def attach(self, daemon: Daemon) -> None: ...
    def reloaded(self, ok: bool, error: str | None, digest: str = "") -> None: ...


# The settings a reload of a lone daemon (or of one worker) cannot apply.
RESTART_NEEDED = (
    "listener.listen",
    "listener.receive_buffer",
    "state_dir",
    "mibs",
    "kea",
    "dispatch",
    "service.metrics",
)


class Daemon:
    """One running trapd. :meth:`run` returns the exit status.

    ``role``: set when this daemon is worker i of a supervising ``trapd run``
    (service.workers > 1, trapd.service.workers): it receives on the sockets
    the supervisor opened, claims journal rows as ``worker-i``, serves no
    metrics and talks to the supervisor instead of systemd.
    """

    def __init__(self, config: Config, options: RunOptions | None = None, role: Role | None = None) -> None:
        from trapd.service.logging import RateLimitedLog, get_logger
        from trapd.service.sdnotify import Notifier

        self.role = role
        self._state_lock: int | None = None  # STATE_DIR/trapd.lock, held while this trapd runs
        self.config = role.adjust(config) if role is not None else config
        self.options = options or RunOptions()
        self.log = get_logger("trapd")
        # A worker's READY/STATUS go to the supervisor, which speaks for the unit (NotifyAccess=main).
        self.notifier = Notifier(environ={}) if role is not None else Notifier()
        self.stats = PipelineStats()
        self.resends = InformResends()
        # In a storm, one line per interval with the count, not one per lost outcome.
        self._loss_log = DropLog(
            # DropLog's first argument is its own message; the reason is in the fields.
            lambda _message, fields: self.log.error(
                _LOSS_MESSAGES.get(str(fields.get("reason")), _LOSS_MESSAGES[""]), **fields
            )
        )
        # A storm of traps whose values a rule's action refuses: one line per rule, action and kind of
        # rejection per interval, with suppressed=N (the counts are in /metrics all the same).
        self._reject_log = RateLimitedLog(self.log, REJECT_LOG_INTERVAL)
        self.health = Health(False, "starting")
        self._stop = asyncio.Event()
        self._reload_requested = asyncio.Event()
        # (event, outcome, the inform acknowledgement to send once journaled if any, queued_size())
        self._submit_queue: asyncio.Queue[tuple[Event, Outcome, PendingInform | None, int]] = asyncio.Queue(
            SUBMIT_QUEUE_MAX
        )
        # queued_size() of what is in _submit_queue or in the batch _submit_loop is journaling,
        # and how many outcomes that is (exported: trapd_dispatch_backlog{,_bytes}).
        self.submit_bytes = 0
        self.submit_outcomes = 0
        self.kea_monitor: KeaMonitor | None = None  # polls the Kea servers (trapd.kea.monitor)
        # Why the last reload was refused (None: it worked, or none happened); shown in STATUS=.
        self._reload_error: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._compile_cancel = threading.Event()  # set on stop: ends a reload's MIB compile
        # Set in _start(). The receive path (_on_notification) only runs once they all are.
        self.resolver: MibResolver
        self.actions: dict[str, ActionSpec] = {}
        self.rules: RuleSet
        self.normalizer: Normalizer
        # Set in _start() too; None until then (and after a start-up that failed half-way).
        self.listener: Listener | None = None
        self.limiter: SourceLimiter | None = None  # listener.rate_limit, with the rules' clearing OIDs
        self.dispatcher: Dispatcher | None = None
        self.journal: Journal | None = None
        self.kea: KeaClients | None = None
        self.metrics: MetricsServer | None = None
        self.http: LazyHttpClient | None = None

    def request_stop(self) -> None:
        """Stop as on SIGTERM (the supervisor's channel closed, in a worker)."""
        self._stop.set()

    def request_reload(self) -> None:
        """Reload as on SIGHUP (the supervisor asks its workers this way)."""
        self._reload_requested.set()

    def keep_task(self, task: asyncio.Task[None]) -> None:
        """A task of this daemon's that stops with it (cancelled at shutdown)."""
        self._tasks.append(task)

    # ------------------------------------------------------------ the receive path

    def _on_notification(self, raw: RawNotification) -> object:
        """Called by the listener for each accepted notification. Must not raise.

        A v2c inform whose rules plan or cancel something is acknowledged only
        once that is journaled (returns DEFER_ACK; ``_submit_loop`` calls
        ``raw.ack``). If it never gets there (backlog full, journal error), the
        sender gets no Response and sends the inform again: nothing is lost.
        A copy of an inform taken in before (resent because its Response was late or
        lost) is answered with the first's Response and runs nothing (trapd.listener.resends).
        """
        if raw.ack is not None:
            copy = self.resends.answer_copy(raw)
            if copy is not None:
                self.stats.informs_resent += 1
                return None if copy else DEFER_ACK  # None: the listener answers it now
        try:
            event = self.normalizer.normalize(raw)
            rules = self.rules  # one read: a reload swaps the reference, never mutates it
            self.stats.received[(event.version, rules.group_of(event.source) or "other")] += 1
            outcome = rules.evaluate(event)
        except Exception:
            self.stats.errors["pipeline"] += 1
            self.log.exception("notification could not be processed", source=raw.source)
            return False  # not taken: an inform gets no Response, so its sender resends it
        if not outcome.matched:
            self.stats.unmatched += 1
        if outcome.empty:
            return None
        for name in outcome.matched:
            self.stats.matched[name] += 1
        for rej in outcome.rejected:
            # A template that failed, a value from the trap that does not fit the action's parameter
            # type, or a malformed decoded value: never dispatched.
            self.stats.rejected[(rej.rule, rej.kind)] += 1
            self._reject_log.warning(
                (rej.rule, rej.action, rej.kind),
                f"action not dispatched: rejected ({rej.kind})",
                event_id=event.id,
                rule=rej.rule,
                action=rej.action,
                reason=rej.reason,
            )
        if outcome.planned or outcome.cancels:
            size = queued_size(event, outcome)
            # One event is let in whatever its size when nothing is held, so none is refused for ever.
            if self.submit_bytes and self.submit_bytes + size > SUBMIT_QUEUE_MAX_BYTES:
                # Refused like a full queue: counted, and an inform is not acknowledged (it comes again).
                self.stats.submit_overflow += 1
                self._loss_log.note("dispatch-backlog-bytes", ",".join(outcome.matched), event.source)
            else:
                pending = self.resends.take(raw, raw.ack) if raw.ack is not None else None
                try:
                    self._submit_queue.put_nowait((event, outcome, pending, size))
                    self.submit_bytes += size
                    self.submit_outcomes += 1
                except asyncio.QueueFull:
                    if pending is not None:
                        pending.abandon()
                    self.stats.submit_overflow += 1
                    self._loss_log.note("dispatch-backlog-full", ",".join(outcome.matched), event.source)
            if raw.ack is not None:
                return DEFER_ACK
        return None

    async def _submit_loop(self) -> None:
        """Hand outcomes to the dispatcher (which journals them before anything runs).

        Whatever is queued goes in one :meth:`Dispatcher.submit_many` (shared
        group commits): one outcome per await would cost a loop iteration and a
        commit round trip each, and in a storm that matches rules the loop's
        iterations are what the receive path is short of.
        """
        from trapd.dispatch.dispatcher import DispatchOverloaded
        from trapd.dispatch.journal import JournalError

        queue = self._submit_queue
        dispatcher = self.dispatcher
        assert dispatcher is not None  # started before this loop
        while True:
            batch = [await queue.get()]
            while len(batch) < SUBMIT_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                results = await dispatcher.submit_many([(e, o) for e, o, _, _ in batch])
            except Exception as exc:
                results = [exc for _ in batch]
            for (event, outcome, ack, size), result in zip(batch, results, strict=True):
                self.submit_bytes -= size  # journaled or lost: this loop holds it no longer
                self.submit_outcomes -= 1
                if ack is not None:
                    if isinstance(result, BaseException):
                        ack.abandon()  # unanswered: its next copy is taken in as new
                    else:
                        ack()  # an inform: journaled now, so its sender may stop resending
                if isinstance(result, DispatchOverloaded):
                    self.stats.submit_overflow += 1
                    self._loss_log.note("journal-overloaded", ",".join(outcome.matched), event.source)
                elif isinstance(result, JournalError):
                    # The journal cannot commit (its database unavailable): counted, and logged at
                    # a limited rate; an inform among them was not acknowledged, so it comes again.
                    self.stats.submit_overflow += 1
                    self._loss_log.note("journal-unavailable", ",".join(outcome.matched), event.source)
                elif isinstance(result, BaseException):
                    self.stats.errors["submit"] += 1
                    self.log.error("dispatch failed", event_id=event.id, error=repr(result))
                queue.task_done()

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        try:
            loaded = None
            if self.role is None:
                # Before the loop's signal handlers: loading blocks this thread (site MIBs compile
                # for minutes on the first start after they change), so a SIGTERM the loop would
                # only see afterwards ends trapd at once instead (its default action: nothing is
                # open yet; the compiler ends with it). A SIGHUP meanwhile is kept for later.
                signal.signal(signal.SIGHUP, lambda signum, frame: self._reload_requested.set())
                loaded = load_startup(self.config, self.log, self.notifier)
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._stop.set)
            loop.add_signal_handler(signal.SIGHUP, self._reload_requested.set)
            listener = await self._start(loaded)
        except Exception as exc:
            # Port in use, unreadable rules, a journal that cannot be opened: say which, in one
            # line, then exit non-zero so systemd's Restart=on-failure and `systemctl status` show it
            # (EXIT_CONFIG for the rules and settings, which the unit does not restart for).
            from trapd.dispatch.journal import JournalError

            if isinstance(exc, ConfigError | OSError | JournalError):
                self.log.error("start-up failed", error=str(exc))
            else:
                self.log.exception("start-up failed", error=str(exc))
            self.notifier.stopping(f"start-up failed: {exc}"[:500])
            with contextlib.suppress(Exception):
                await self._shutdown()
            return start_failure_status(exc)
        self.health = Health(True, "ok")
        self.notifier.ready(self._status_line())
        if self.role is not None:
            await self.role.attach(self)
        self.log.info(
            "trapd ready",
            listen=[str(b.address) for b in listener.bound],
            receive_buffer=[b.rcvbuf for b in listener.bound],
            rules=len(self.rules),
            mode=self.config.mode,
            metrics=self.metrics.url if self.metrics else None,
        )
        settle_memory()  # after READY=1: datagrams wait in the socket buffer meanwhile
        self._tasks.append(asyncio.create_task(self._reload_loop(), name="trapd-reload"))
        self._tasks.append(
            asyncio.create_task(
                status_loop(
                    self.notifier,
                    lambda: self.health.healthy,
                    self._status_line,
                    lambda: self.config.service.status_interval,
                ),
                name="trapd-status",
            )
        )
        self._tasks.append(asyncio.create_task(self._kernel_drop_loop(), name="trapd-kernel-drops"))
        await self._stop.wait()
        self.log.info("stopping")
        self.health = Health(False, "stopping")
        self.notifier.stopping("stopping")
        # What the stop may take at most (shutdown_timeout may be set above the unit's TimeoutStopSec).
        self.notifier.extend_timeout(
            SUBMIT_DRAIN_TIMEOUT + self.config.dispatch.shutdown_timeout + STOP_MARGIN
        )
        await self._shutdown()
        self.log.info("stopped")
        return 0

    async def _start(self, loaded: Loaded | None = None) -> Listener:
        """Load, open and bind everything, in the order that fails cheapest first; returns the listener."""
        import httpx

        from trapd.dispatch.plugins import open_dispatcher
        from trapd.kea.client import KeaClients
        from trapd.listener.limits import SourceLimiter
        from trapd.listener.udp import Listener
        from trapd.normalize import Normalizer
        from trapd.service.socket_activation import inherited_sockets

        cfg = self.config
        role = self.role
        make_private_dir(cfg.state_dir)
        if role is None:  # a worker runs under its supervisor's lock
            self._state_lock = lock_state_dir(cfg.state_dir)
        # A worker forked from the supervisor starts with what the supervisor loaded and checked.
        if loaded is None and role is not None:
            loaded = role.take_preloaded()
        if loaded is None:
            loaded = load_startup(cfg, self.log, self.notifier)
        self.resolver, self.actions, self.rules = loaded.resolver, loaded.actions, loaded.rules
        self.normalizer = Normalizer(self.resolver)

        self.kea = KeaClients(cfg.kea)
        self.http = LazyHttpClient(timeout=30.0)
        self.dispatcher = await open_dispatcher(
            cfg,
            self.kea,
            # Passed through attribute by attribute: to an action it is the real client.
            http=cast(httpx.AsyncClient, self.http),
            log=self.log,
            actions=self.actions,
            owner=role.journal_owner if role is not None else None,
            token=role.journal_token if role is not None else None,
        )
        self.journal = self.dispatcher.journal
        # For the other hosts to compare (docs/pair.md).
        self.dispatcher.share_rules(self.rules.digest, self.resolver.digest())
        await self.dispatcher.start()
        self._tasks.append(asyncio.create_task(self._submit_loop(), name="trapd-submit"))
        self._tasks.append(asyncio.create_task(self._probe_kea(), name="trapd-kea-probe"))
        if len(self.kea) and cfg.kea.poll_interval > 0:
            from trapd.kea.monitor import KeaMonitor

            self.kea_monitor = KeaMonitor(
                self.kea, self.log, interval=cfg.kea.poll_interval, warn_after=cfg.kea.warn_after
            )
            self._tasks.append(asyncio.create_task(self.kea_monitor.run(), name="trapd-kea-monitor"))

        if role is not None:
            inherited, bind_config = list(role.sockets), False
        else:
            inherited = inherited_sockets()
            bind_config = not inherited or self.options.binds_listen
        self.limiter = SourceLimiter(cfg.listener.rate_limit, self.rules.clearing_oids)
        self.listener = Listener(
            cfg.listener,
            self._on_notification,
            sockets=inherited,
            bind_config=bind_config,
            state_dir=cfg.state_dir,  # pysnmp's snmpEngineBoots lives here, not in /tmp
            limiter=self.limiter,
            dispatch=_DispatchLoad(self),
        )
        await self.listener.start()
        if role is None:  # the supervisor serves the unit's metrics, summed over its workers
            self.metrics = await start_metrics(cfg, self.snapshot, self._sockets, self._health)
        return self.listener

    def _sockets(self) -> list[socket.socket]:
        return list(self.listener.sockets) if self.listener is not None else []

    async def _probe_kea(self) -> None:
        """Say once, at start-up, which Kea endpoints are down or lack a command a rule needs."""
        from trapd.kea.probe import command_warnings, probe
        from trapd.rules.kea_uses import kea_uses

        if self.kea is None or not len(self.kea):
            return
        statuses = await probe(self.kea)  # its exchanges set each client's up (the metrics read it)
        # s.label: an HA relationship's peer by name (pair4/server2), a plain endpoint by its own.
        for s in statuses:
            if not s.reachable:
                self.log.warning("Kea endpoint unreachable", endpoint=s.label, family=s.family, error=s.error)
            elif s.error is not None:  # it answers, but is not what trapd.yaml says (the other family)
                self.log.warning(
                    "Kea endpoint misconfigured", endpoint=s.label, family=s.family, error=s.error
                )
            elif not s.lease_cmds:
                self.log.warning(
                    "Kea endpoint has no lease commands: load libdhcp_lease_cmds.so",
                    endpoint=s.label,
                    family=s.family,
                    version=s.version,
                )
            else:
                self.log.info("Kea endpoint ok", endpoint=s.label, family=s.family, version=s.version)
        # Per rule: an action whose endpoint lacks a command it sends would fail on every trap.
        for warning in command_warnings(statuses, kea_uses(self.rules.rules, self.config.kea)):
            self.log.warning("rule cannot work as configured", problem=warning)

    async def _shutdown(self) -> None:
        from trapd.mibs import cancel_compiles

        if self.listener is not None:
            await self.listener.close()
        for t in self._tasks:
            if t.get_name() != "trapd-submit":
                t.cancel()
        # After the reload's cancel (its end must not be taken for a failed reload, READY=1 after
        # STOPPING=1): a reload's MIB compile, whose thread would hold the exit for up to 10 minutes.
        cancel_compiles(self._compile_cancel)
        # Outcomes already received still go to the journal: they must not be lost on a clean stop.
        if self.dispatcher is not None and not self._submit_queue.empty():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._submit_queue.join(), timeout=SUBMIT_DRAIN_TIMEOUT)
        await cancel_and_wait(self._tasks)
        self._reject_log.flush(force=True)
        if self.dispatcher is not None:
            await self.dispatcher.stop(self.config.dispatch.shutdown_timeout)
        if self.journal is not None:
            await self.journal.close()
        if self.kea is not None:
            await self.kea.aclose()
        if self.http is not None:
            await self.http.aclose()
        if self.metrics is not None:
            await self.metrics.close()
        if self._state_lock is not None:
            os.close(self._state_lock)
            self._state_lock = None

    # ------------------------------------------------------------ reload and status

    async def _reload_loop(self) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            await self.reload()

    async def reload(self) -> bool:
        """Re-read trapd.yaml and the rules; keep everything as it is if anything is wrong.

        Rules, mode, communities, v3 users, source filters, action settings,
        the log level and format, and changed MIB files change at once. Listen
        addresses, the state directory, the ``mibs:`` settings, Kea endpoints,
        dispatch tuning and the metrics address need a restart (a warning in
        the log says so). The new rules compile
        in a thread (:func:`~trapd.service.lifecycle.compile_reload`): the old
        ones keep serving, /healthz answers and WATCHDOG=1 goes on meanwhile.
        """
        self.notifier.reloading("reloading")
        self.health = Health(True, "reloading")
        adjust = self.role.adjust if self.role is not None else None
        try:
            config, rules, resolver = await compile_reload(
                self.options,
                Loaded(self.resolver, self.actions, self.rules),
                self.log,
                adjust,
                self.config,
                cancel=self._compile_cancel,
            )
            # Last of the fallible steps: a V3Receiver that cannot be built must not leave new rules behind.
            if self.listener is not None:
                self.listener.update_config(config.listener)
        except Exception as exc:
            reason = failure_reason(exc)
            self.stats.reloads["failed"] += 1
            self._reload_error = reason
            self.log.error("reload failed, keeping the running configuration", error=reason)
            self.health = Health(True, "ok", {"last_reload": f"failed: {reason}"})
            self.notifier.ready(f"reload failed, old configuration kept: {reason}"[:1000])
            if self.role is not None:
                self.role.reloaded(False, reason)
            return False
        warn_restart_needed(self.log, self.config, config, RESTART_NEEDED)
        apply_logging(config)
        if self.dispatcher is not None:
            from trapd.dispatch.plugins import plugin_settings, warn_unknown_settings

            self.dispatcher.settings = plugin_settings(self.actions, config.actions)
            warn_unknown_settings(self.actions, config.actions, self.log)
        if self.limiter is not None:
            if config.listener.rate_limit != self.config.listener.rate_limit:
                self.limiter.configure(config.listener.rate_limit, rules.clearing_oids)
            else:
                self.limiter.set_clearing(rules.clearing_oids)
        old, self.rules = self.rules, rules
        self.stats.keep_rules({r.name for r in rules.rules})
        if resolver is not self.resolver:  # MIB files changed: their names from the next trap on
            from trapd.normalize import Normalizer

            self.resolver, self.normalizer = resolver, Normalizer(resolver)
        if self.dispatcher is not None:  # republished at the journal's next renewal
            self.dispatcher.share_rules(rules.digest, resolver.digest())
        # Freed in a thread, a slice at a time: dropped here, a big set held the loop (release_rules).
        asyncio.get_running_loop().run_in_executor(None, release_rules, old)
        del old
        # The settings warned about above keep running as they are (the stop's dispatch.shutdown_timeout
        # too, which the supervisor of several workers also keeps for its deadline).
        self.config = keep_restart_needed(config, self.config)
        self.stats.reloads["ok"] += 1
        self._reload_error = None
        self.health = Health(True, "ok")
        self.log.info("reloaded", rules=len(rules), mode=config.mode)
        self.notifier.ready(self._status_line())
        if self.role is not None:
            self.role.reloaded(True, None, rules.digest)
        return True

    async def _kernel_drop_loop(self) -> None:
        """Log the datagrams the kernel dropped on trapd's sockets (receive buffer full), per interval.

        The listener counts what it drops itself; these are the ones it never
        saw, because it fell behind. The metric is trapd_socket_drops_total.
        """
        import os

        from trapd.service.metrics import read_socket_queues

        # At most a line a second (tests set a short status interval), at least every 10 s.
        interval = min(10.0, max(1.0, self.config.service.status_interval))
        last = -1
        while True:
            try:
                inodes = [os.fstat(s.fileno()).st_ino for s in self._sockets()]
                total = sum(q.drops for q in read_socket_queues(inodes).values())
                if last >= 0 and total > last:
                    self.log.warning(
                        "receive buffer overflow: datagrams dropped by the kernel",
                        count=total - last,
                        seconds=interval,
                    )
                last = total
            except Exception:
                self.log.exception("reading the kernel's drop counters failed")
            self._loss_log.flush()
            self._reject_log.flush()
            await asyncio.sleep(interval)

    def _status_line(self) -> str:
        from trapd.service.metrics import status_line

        line = status_line(self.snapshot())
        if self._reload_error is not None:
            line += f": {self._reload_error}"
        return line[:1000]

    def _health(self) -> Health:
        """/healthz: the daemon's own verdict, the journal, and the Kea servers that need attention."""
        from trapd.service.health import Health

        health = self.health
        if self.journal is not None and health.healthy:
            # Unhealthy (503) while the journal cannot commit; not the watchdog's verdict:
            # restarting trapd does not bring a database back, and the receive path keeps
            # working (informs unacknowledged, traps counted as lost).
            jh = self.journal.health()
            if not jh.available:
                return Health(
                    False, "degraded", {**health.detail, "journal": jh.problem, "journal_since": jh.since}
                )
            if jh.name_conflict is not None:  # two hosts under one name: actions may run twice
                return Health(False, "degraded", {**health.detail, "journal": jh.name_conflict})
        warnings = self._kea_warnings()
        # Another host sharing the journal loads other rules: it acts otherwise on the same trap.
        rules = list(self.dispatcher.pair_rule_differences) if self.dispatcher is not None else []
        if not (warnings or rules) or not health.healthy:
            return health
        status = "warning" if health.status == "ok" else health.status
        detail = {
            **health.detail,
            **({"kea": warnings} if warnings else {}),
            **({"rules": rules} if rules else {}),
        }
        return Health(True, status, detail)

    def _kea_warnings(self) -> list[str]:
        """The Kea servers that need attention, and where the other hosts sharing the journal list
        other servers (trapd.kea.pairview): said in /healthz, not a reason to restart trapd."""
        warnings = list(self.kea_monitor.warnings()) if self.kea_monitor is not None else []
        if self.dispatcher is not None:
            warnings.extend(self.dispatcher.pair_differences)
        return warnings

    def _kea_snapshot(self) -> dict[str, Any]:
        """kea_up (answers, and its circuit breaker is closed), HA states, last answers, warnings."""
        from trapd.kea.monitor import label

        if self.kea is None:
            return {"kea_warnings": tuple(self._kea_warnings())}
        breakers = self.dispatcher.breakers if self.dispatcher is not None else {}
        # The dispatcher's clock, which its breakers' cool-downs are on.
        now = self.journal.now() if self.journal is not None else time.time()
        up: dict[str, bool] = {}
        ha: dict[str, str] = {}
        last_ok: dict[str, float] = {}
        breaker_state: dict[str, str] = {}
        for client in self.kea:
            key = label(client)
            breaker = breakers.get(client.breaker_for())
            breaker_state[key] = breaker.state_at(now) if breaker is not None else "closed"
            if client.up is not None:
                up[key] = client.up and (breaker is None or not breaker.holds(now))
            if client.last_ok is not None:
                last_ok[key] = client.last_ok
            state = self.kea_monitor.ha_state(client) if self.kea_monitor is not None else None
            if state is not None:
                ha[key] = state
        warnings = tuple(self._kea_warnings())
        return {
            "kea_up": up,
            "kea_ha_state": ha,
            "kea_last_ok": last_ok,
            "kea_breaker": breaker_state,
            "kea_warnings": warnings,
        }

    def snapshot(self) -> DaemonSnapshot:
        """Everything counted so far, in the shape the metrics exporter reads."""
        from trapd.service.metrics import DaemonSnapshot

        ls = self.listener.stats if self.listener is not None else None
        ds = self.dispatcher.stats if self.dispatcher is not None else None
        jh = self.journal.health() if self.journal is not None else None
        return DaemonSnapshot(
            received=dict(self.stats.received),
            dropped=dict(ls.dropped) if ls is not None else {},
            dropped_detail=dict(ls.dropped_detail) if ls is not None else {},
            matched=dict(self.stats.matched),
            rejected=dict(self.stats.rejected),
            unmatched=self.stats.unmatched,
            actions=dict(ds.outcomes) if ds is not None else {},
            actions_blocked_loop=dict(ds.blocked_loop) if ds is not None else {},
            action_latency=ds.done_latency if ds is not None else None,
            journal=dict(ds.gauges) if ds is not None else {},
            **self._kea_snapshot(),
            reloads=dict(self.stats.reloads),
            last_reload_ok=self._reload_error is None,
            outcomes_lost=self.stats.submit_overflow,
            informs_resent=self.stats.informs_resent,
            informs_too_big=ls.inform_too_big if ls is not None else 0,
            usm_stats=usm_stats_counts(ls) if ls is not None else {},
            rate_limit_exempted=sum(self.limiter.stats.exempted.values()) if self.limiter else 0,
            receive_pauses=ls.receive_pauses if ls is not None else 0,
            v3_engines_pushed_out=ls.v3_engines_pushed_out if ls is not None else 0,
            index_undecodable=undecodable_total(),
            journal_problem=jh.problem if jh is not None else None,
            journal_failed_writes=jh.failed_writes if jh is not None else 0,
            journal_taken_over=jh.taken_over if jh is not None else 0,
            journal_put_back=jh.put_back if jh is not None else 0,
            journal_integrity_checks=dict(jh.integrity_checks) if jh is not None else {},
            journal_integrity_check_seconds=jh.integrity_check_seconds if jh is not None else 0.0,
            journal_wal_bytes=jh.wal_bytes if jh is not None else 0,
            journal_unreadable=jh.unreadable if jh is not None else 0,
            journal_name_conflict=jh is not None and jh.name_conflict is not None,
            pair_differences=len(self.dispatcher.pair_differences) if self.dispatcher is not None else 0,
            pair_rule_differences=tuple(self.dispatcher.pair_rule_differences)
            if self.dispatcher is not None
            else (),
            dispatch_backlog=self.submit_outcomes,
            dispatch_backlog_bytes=self.submit_bytes,
        )


class _DispatchLoad:
    """The dispatcher's load as the listener reads it to share the loop in a storm (udp.DispatchLoad)."""

    def __init__(self, daemon: Daemon) -> None:
        self._daemon = daemon

    def lag(self) -> float:
        d = self._daemon
        if d._submit_queue.qsize() > SUBMIT_QUEUE_MAX // 2 or d.submit_bytes > SUBMIT_QUEUE_MAX_BYTES // 2:
            return float("inf")  # outcomes pile up before the journal: behind, whatever memory holds
        return float(d.dispatcher.lag()) if d.dispatcher is not None else 0.0

    def started(self) -> int:
        d = self._daemon
        return int(d.dispatcher.stats.start_latency.count) if d.dispatcher is not None else 0

    def queued(self) -> int:
        d = self._daemon
        return d._submit_queue.qsize() + (int(d.journal.queued) if d.journal is not None else 0)


def start_failure_status(exc: BaseException) -> int:
    """The exit status of a start that failed with ``exc``: EXIT_CONFIG for a configuration error
    (the unit does not restart for it), 1 for anything else (Restart=on-failure tries again)."""
    return EXIT_CONFIG if isinstance(exc, ConfigError) else 1


def run_daemon(config: Config, options: RunOptions | None = None) -> int:
    """`trapd run` with one process; returns the exit status."""
    apply_logging(config)
    started = time.monotonic()
    daemon = Daemon(config, options)
    rc = run_on_loop(daemon)
    daemon.log.debug("exit", seconds=round(time.monotonic() - started, 3), status=rc)
    return rc


def run_on_loop(daemon: Daemon) -> int:
    """``daemon.run()`` on the best loop (trapd.listener.udp); its exit status.

    When its stop left actions running (they ignore their cancellation: Dispatcher.stop logs
    which), the process leaves at once: the runner's clean-up would cancel them again and wait,
    for ever for a plugin's loop with a bare ``except:``. The journal is closed and the log
    written by then; the next start runs those actions again.
    """
    from trapd.listener.udp import best_loop_factory

    with asyncio.Runner(loop_factory=best_loop_factory()) as runner:
        rc = runner.run(daemon.run())
        if daemon.dispatcher is not None and daemon.dispatcher.left_behind:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc)
    return rc
