"""The daemon: wires listener -> normalizer -> rules -> dispatcher, under systemd.

Read this file top to bottom to follow one trap: ``_on_notification`` is
called by the listener for every accepted datagram, synchronously, on the
event loop. It normalizes, evaluates the rules (both cheap and CPU-bound, so
doing them inline is faster than queueing every trap) and queues only the
outcomes that want something done. ``_submit_loop`` hands those to the
dispatcher, which journals them before anything runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from trapd.config import DEFAULT_CONFIG, Config, load_config
from trapd.event import Event
from trapd.listener.config import parse_listen
from trapd.listener.raw import DEFER_ACK, RawNotification
from trapd.listener.stats import DropLog
from trapd.rules.outcome import Outcome
from trapd.secrets import Secret
from trapd.yamlsource import ConfigError

if TYPE_CHECKING:
    from trapd.service.workers import WorkerRole

# Outcomes waiting for the dispatcher. Bounded so a storm that outruns the
# journal cannot grow memory without limit; what overflows is counted.
# An outcome waiting here holds its Event (about 3 KB with its varbinds): 10,000 of
# them keep a storm that matches rules within trapd's memory bound (bench_storm.py).
SUBMIT_QUEUE_MAX = 10_000
# Outcomes handed to the dispatcher in one submit_many (one group commit or a few).
SUBMIT_BATCH = 500


def load_daemon_config(args: argparse.Namespace) -> Config:
    """trapd.yaml plus command-line overrides; exits with status 2 on a bad file."""
    try:
        return _load_with_overrides(args)
    except ConfigError as exc:
        print(f"trapd: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def _load_with_overrides(args: argparse.Namespace) -> Config:
    path: Path | None = Path(args.config) if getattr(args, "config", None) else None
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    config = load_config(path) if path else Config(state_dir=Path("/var/lib/trapd"))
    listener = config.listener
    if getattr(args, "listen", None):
        listener = replace(listener, listen=tuple(parse_listen(a) for a in args.listen))
    if getattr(args, "community", None):
        listener = replace(listener, communities=tuple(Secret(c, "command line") for c in args.community))
    changes: dict[str, Any] = {"listener": listener}
    if getattr(args, "rules", None):
        changes["rules_files"] = tuple(Path(r).resolve() for r in args.rules)
        changes["rules_dir"] = None
    if getattr(args, "state_dir", None):
        changes["state_dir"] = Path(args.state_dir).resolve()
    if getattr(args, "dry_run", False):
        changes["mode"] = "dry-run"
    if getattr(args, "workers", None) is not None:
        from trapd.service.config import parse_workers

        changes["service"] = replace(config.service, workers=parse_workers(args.workers))
    return config.with_overrides(**changes)


def build_rules(cfg: Config, resolver: Any, actions: dict[str, Any], log: Any) -> Any:
    """Compile the rule files ``cfg`` names; ConfigError (file:line:col) on the first problem."""
    from trapd.rules import globally_capped, load_rules

    capped = globally_capped(cfg.dispatch.caps, actions)
    paths = cfg.rule_paths()
    if not paths:
        log.warning("no rule files configured: notifications are received and counted, nothing runs")
    return load_rules(paths, resolver, actions, global_mode=cfg.mode, capped_actions=capped)


class LazyHttpClient:
    """The dispatcher's shared ``httpx.AsyncClient``, made when an action first uses it.

    Making one loads the TLS trust store and anyio's backend: about 0.1 s of
    CPU, a quarter of trapd's start-up, spent before READY=1 although many
    sites never run a webhook. Attribute access is passed through, so to an
    action ``ctx.http.request(...)`` is the real client's.
    """

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._client: Any = None

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


class Daemon:
    """One running trapd. :meth:`run` returns the exit status.

    ``role``: set when this daemon is worker i of a supervising ``trapd run``
    (service.workers > 1, trapd.service.workers): it receives on the sockets
    the supervisor opened, claims journal rows as ``worker-i``, serves no
    metrics and talks to the supervisor instead of systemd.
    """

    def __init__(
        self, config: Config, args: argparse.Namespace | None = None, role: WorkerRole | None = None
    ) -> None:
        from trapd.service.health import Health
        from trapd.service.logging import get_logger
        from trapd.service.sdnotify import Notifier

        self.role = role
        self.config = role.adjust(config) if role is not None else config
        self.args = args or argparse.Namespace()
        self.log = get_logger("trapd")
        # A worker's READY/STATUS go to the supervisor, which speaks for the unit (NotifyAccess=main).
        self.notifier = Notifier(environ={}) if role is not None else Notifier()
        self.stats = PipelineStats()
        # In a storm, one line per interval with the count, not one per lost outcome.
        self._loss_log = DropLog(
            lambda _event, fields: self.log.error("matched outcomes lost: dispatch backlog full", **fields)
        )
        self.health = Health(False, "starting")
        self._stop = asyncio.Event()
        self._reload_requested = asyncio.Event()
        # (event, outcome, the inform acknowledgement to send once journaled, if any)
        self._submit_queue: asyncio.Queue[tuple[Event, Outcome, Callable[[], None] | None]] = asyncio.Queue(
            SUBMIT_QUEUE_MAX
        )
        self._kea_up: dict[str, bool] = {}
        # Why the last reload was refused (None: it worked, or none happened); shown in STATUS=.
        self._reload_error: str | None = None
        self._tasks: list[asyncio.Task[None]] = []
        # Set in _start(); typed loosely here because their modules import late.
        self.rules: Any = None
        self.listener: Any = None
        self.limiter: Any = None  # SourceLimiter: listener.rate_limit, with the rules' clearing OIDs
        self.dispatcher: Any = None
        self.journal: Any = None
        self.kea: Any = None
        self.metrics: Any = None
        self.http: LazyHttpClient | None = None
        self.resolver: Any = None
        self.normalizer: Any = None
        self.actions: dict[str, Any] = {}

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
        """
        try:
            event = self.normalizer.normalize(raw)
            rules = self.rules  # one read: a reload swaps the reference, never mutates it
            self.stats.received[(event.version, rules.group_of(event.source) or "other")] += 1
            outcome = rules.evaluate(event)
        except Exception:
            self.stats.errors["pipeline"] += 1
            self.log.exception("notification could not be processed", source=raw.source)
            return None
        if not outcome.matched:
            self.stats.unmatched += 1
        if outcome.empty:
            return None
        for name in outcome.matched:
            self.stats.matched[name] += 1
        for rej in outcome.rejected:
            # A value from the trap that does not fit the action's parameter type: never dispatched.
            self.stats.rejected[(rej.rule, rej.kind)] += 1
            self.log.warning(
                "action not dispatched: invalid parameter",
                event_id=event.id,
                rule=rej.rule,
                action=rej.action,
                reason=rej.reason,
            )
        if outcome.planned or outcome.cancels:
            try:
                self._submit_queue.put_nowait((event, outcome, raw.ack))
            except asyncio.QueueFull:
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

        queue = self._submit_queue
        while True:
            batch = [await queue.get()]
            while len(batch) < SUBMIT_BATCH and not queue.empty():
                batch.append(queue.get_nowait())
            try:
                results: list[Any] = await self.dispatcher.submit_many([(e, o) for e, o, _ in batch])
            except Exception as exc:
                results = [exc] * len(batch)
            for (event, outcome, ack), result in zip(batch, results, strict=True):
                if ack is not None and not isinstance(result, BaseException):
                    ack()  # a v2c inform: journaled now, so its sender may stop resending
                if isinstance(result, DispatchOverloaded):
                    self.stats.submit_overflow += 1
                    self._loss_log.note("journal-overloaded", ",".join(outcome.matched), event.source)
                elif isinstance(result, BaseException):
                    self.stats.errors["submit"] += 1
                    self.log.error("dispatch failed", event_id=event.id, error=repr(result))
                queue.task_done()

    # ------------------------------------------------------------ lifecycle

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_requested.set)
        try:
            await self._start()
        except Exception as exc:
            # Port in use, unreadable rules, a journal that cannot be opened: say which, in one
            # line, then exit non-zero so systemd's Restart=on-failure and `systemctl status` show it.
            if isinstance(exc, ConfigError | OSError):
                self.log.error("start-up failed", error=str(exc))
            else:
                self.log.exception("start-up failed", error=str(exc))
            self.notifier.stopping(f"start-up failed: {exc}"[:500])
            with contextlib.suppress(Exception):
                await self._shutdown()
            return 1
        from trapd.service.health import Health

        self.health = Health(True, "ok")
        self.notifier.ready(self._status_line())
        if self.role is not None:
            await self.role.attach(self)
        self.log.info(
            "trapd ready",
            listen=[str(b.address) for b in self.listener.bound],
            receive_buffer=[b.rcvbuf for b in self.listener.bound],
            rules=len(self.rules),
            mode=self.config.mode,
            metrics=self.metrics.url if self.metrics else None,
        )
        settle_memory()  # after READY=1: datagrams wait in the socket buffer meanwhile
        self._tasks.append(asyncio.create_task(self._reload_loop(), name="trapd-reload"))
        self._tasks.append(asyncio.create_task(self._status_loop(), name="trapd-status"))
        self._tasks.append(asyncio.create_task(self._kernel_drop_loop(), name="trapd-kernel-drops"))
        await self._stop.wait()
        self.log.info("stopping")
        self.health = Health(False, "stopping")
        self.notifier.stopping("stopping")
        await self._shutdown()
        self.log.info("stopped")
        return 0

    async def _start(self) -> None:
        from trapd.dispatch.dispatcher import Dispatcher
        from trapd.dispatch.journal import open_journal
        from trapd.kea.client import KeaClients
        from trapd.listener.limits import SourceLimiter
        from trapd.listener.udp import Listener
        from trapd.mibs import MibResolver
        from trapd.normalize import Normalizer
        from trapd.plugin import load_actions
        from trapd.service.socket_activation import inherited_sockets

        cfg = self.config
        role = self.role
        cfg.state_dir.mkdir(parents=True, exist_ok=True)
        if role is not None and role.preloaded is not None:
            # Forked from the supervisor, which loaded and checked all of this already.
            self.resolver, self.actions, self.rules = role.preloaded
        else:
            self.resolver = MibResolver.load(cfg.mibs, cfg.state_dir)
            for problem in self.resolver.problems:
                self.log.warning("MIB problem", problem=problem)
            self.actions, broken = load_actions()
            for lp in broken:
                self.log.error("action plugin failed to load", entry_point=lp.entry_point, error=lp.error)
            self.rules = self._build_rules(cfg)
        self.normalizer = Normalizer(self.resolver)

        self.kea = KeaClients(cfg.kea)
        self.journal = open_journal(
            cfg.dispatch.journal.file(cfg.state_dir),
            cfg.dispatch.journal,
            owner=role.journal_owner if role is not None else None,
        )
        await self.journal.open()
        self.http = LazyHttpClient(timeout=30.0)
        self.dispatcher = Dispatcher(
            cfg.dispatch,
            self.journal,
            self.actions,
            self.kea,
            http=cast(Any, self.http),
            log=self.log,
            settings=cfg.actions,
        )
        await self.dispatcher.start()
        self._tasks.append(asyncio.create_task(self._submit_loop(), name="trapd-submit"))
        self._tasks.append(asyncio.create_task(self._probe_kea(), name="trapd-kea-probe"))

        if role is not None:
            inherited, bind_config = list(role.sockets), False
        else:
            inherited = inherited_sockets()
            bind_config = not inherited or bool(getattr(self.args, "listen", None))
        self.limiter = SourceLimiter(cfg.listener.rate_limit, self.rules.clearing_oids)
        self.listener = Listener(
            cfg.listener,
            self._on_notification,
            sockets=inherited,
            bind_config=bind_config,
            state_dir=cfg.state_dir,  # pysnmp's snmpEngineBoots lives here, not in /tmp
            limiter=self.limiter,
        )
        await self.listener.start()
        if role is None:  # the supervisor serves the unit's metrics, summed over its workers
            await self._start_metrics()

    def _build_rules(self, cfg: Config) -> Any:
        return build_rules(cfg, self.resolver, self.actions, self.log)

    async def _start_metrics(self) -> None:
        from trapd.service.config import metrics_listen_of
        from trapd.service.exporter import MetricsServer
        from trapd.service.metrics import TrapdCollector, build_registry

        listen = metrics_listen_of(self.config.service.metrics_listen, getattr(self.args, "metrics", None))
        if listen is None:
            return
        collector = TrapdCollector(self.snapshot, self._sockets)
        self.metrics = MetricsServer(build_registry(collector), lambda: self.health, listen.host, listen.port)
        await self.metrics.start()

    def _sockets(self) -> list[Any]:
        return list(self.listener.sockets) if self.listener is not None else []

    async def _probe_kea(self) -> None:
        """Say once, at start-up, which Kea endpoints are down or lack a command a rule needs."""
        from trapd.kea.probe import command_warnings, kea_uses, probe

        if not len(self.kea):
            return
        statuses = await probe(self.kea)
        for s in statuses:
            self._kea_up[f"{s.endpoint}/{s.family}"] = s.reachable
            if not s.reachable:
                self.log.warning(
                    "Kea endpoint unreachable", endpoint=s.endpoint, family=s.family, error=s.error
                )
            elif not s.lease_cmds:
                self.log.warning(
                    "Kea endpoint has no lease commands: load libdhcp_lease_cmds.so",
                    endpoint=s.endpoint,
                    family=s.family,
                    version=s.version,
                )
            else:
                self.log.info("Kea endpoint ok", endpoint=s.endpoint, family=s.family, version=s.version)
        # Per rule: an action whose endpoint lacks a command it sends would fail on every trap.
        for warning in command_warnings(statuses, kea_uses(self.rules.rules, self.config.kea)):
            self.log.warning("rule cannot work as configured", problem=warning)

    async def _shutdown(self) -> None:
        if self.listener is not None:
            await self.listener.close()
        for t in self._tasks:
            if t.get_name() != "trapd-submit":
                t.cancel()
        # Outcomes already received still go to the journal: they must not be lost on a clean stop.
        if self.dispatcher is not None and not self._submit_queue.empty():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._submit_queue.join(), timeout=5.0)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
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

    # ------------------------------------------------------------ reload and status

    async def _reload_loop(self) -> None:
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            await self.reload()

    async def reload(self) -> bool:
        """Re-read trapd.yaml and the rules; keep everything as it is if anything is wrong.

        Rules, mode, communities, v3 users, source filters, action settings and
        the log level and format change at once. Listen addresses, the state
        directory, MIBs, Kea endpoints, dispatch tuning and the metrics address
        need a restart (a warning in the log says so). The loop is busy while
        the new rules compile; datagrams arriving meanwhile wait in the
        socket's receive buffer, so none is lost.
        """
        from trapd.service.health import Health

        self.notifier.reloading("reloading")
        self.health = Health(True, "reloading")
        try:
            config = _load_with_overrides(self.args)
            if self.role is not None:
                config = self.role.adjust(config)
            rules = self._build_rules(config)
            # Last of the fallible steps: a V3Receiver that cannot be built must not leave new rules behind.
            self.listener.update_config(config.listener)
        except Exception as exc:
            reason = str(exc) if isinstance(exc, ConfigError | OSError) else f"{type(exc).__name__}: {exc}"
            self.stats.reloads["failed"] += 1
            self._reload_error = reason
            self.log.error("reload failed, keeping the running configuration", error=reason)
            self.health = Health(True, "ok", {"last_reload": f"failed: {reason}"})
            self.notifier.ready(f"reload failed, old configuration kept: {reason}"[:1000])
            if self.role is not None:
                self.role.reloaded(False, reason)
            return False
        self._warn_restart_needed(config)
        self._apply_logging(config)
        if self.dispatcher is not None:
            self.dispatcher.settings = dict(config.actions)
        if self.limiter is not None:
            if config.listener.rate_limit != self.config.listener.rate_limit:
                self.limiter.configure(config.listener.rate_limit, rules.clearing_oids)
            else:
                self.limiter.set_clearing(rules.clearing_oids)
        self.rules = rules
        self.config = config
        self.stats.reloads["ok"] += 1
        self._reload_error = None
        self.health = Health(True, "ok")
        self.log.info("reloaded", rules=len(rules), mode=config.mode)
        self.notifier.ready(self._status_line())
        if self.role is not None:
            self.role.reloaded(True, None)
        return True

    def _apply_logging(self, config: Config) -> None:
        from trapd.service.logging import configure_logging

        level = getattr(self.args, "log_level", None) or config.service.log_level
        fmt = getattr(self.args, "log_format", None) or config.service.log_format
        configure_logging(level, fmt)

    def _warn_restart_needed(self, new: Config) -> None:
        old = self.config
        fixed = {
            "listener.listen": (old.listener.listen, new.listener.listen),
            "listener.receive_buffer": (old.listener.receive_buffer, new.listener.receive_buffer),
            "state_dir": (old.state_dir, new.state_dir),
            "mibs": (old.mibs, new.mibs),
            "kea": (old.kea, new.kea),
            "dispatch": (old.dispatch, new.dispatch),
            "service.metrics": (old.service.metrics_listen, new.service.metrics_listen),
        }
        changed = [name for name, (a, b) in fixed.items() if a != b]
        if changed:
            self.log.warning("changed settings take effect at the next restart", settings=changed)

    async def _status_loop(self) -> None:
        from trapd.service.sdnotify import start_watchdog, stop_watchdog

        watchdog = start_watchdog(self.notifier, lambda: self.health.healthy)
        try:
            while True:
                await asyncio.sleep(self.config.service.status_interval)
                self.notifier.status(self._status_line())
        finally:
            await stop_watchdog(watchdog)

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
            await asyncio.sleep(interval)

    def _status_line(self) -> str:
        from trapd.service.metrics import status_line

        line = status_line(self.snapshot())
        if self._reload_error is not None:
            line += f": {self._reload_error}"
        return line[:1000]

    def snapshot(self) -> Any:
        """Everything counted so far, in the shape the metrics exporter reads."""
        from trapd.service.metrics import DaemonSnapshot

        ls = self.listener.stats if self.listener is not None else None
        ds = self.dispatcher.stats if self.dispatcher is not None else None
        return DaemonSnapshot(
            received=dict(self.stats.received),
            dropped=dict(ls.dropped) if ls is not None else {},
            dropped_detail=dict(ls.dropped_detail) if ls is not None else {},
            matched=dict(self.stats.matched),
            rejected=dict(self.stats.rejected),
            unmatched=self.stats.unmatched,
            actions=dict(ds.outcomes) if ds is not None else {},
            action_latency=ds.done_latency if ds is not None else None,
            journal=dict(ds.gauges) if ds is not None else {},
            kea_up=dict(self._kea_up),
            reloads=dict(self.stats.reloads),
            last_reload_ok=self._reload_error is None,
            outcomes_lost=self.stats.submit_overflow,
            rate_limit_exempted=sum(self.limiter.stats.exempted.values()) if self.limiter else 0,
        )


def run_daemon(config: Config, args: argparse.Namespace | None = None) -> int:
    from trapd.listener.udp import run_on_best_loop
    from trapd.service.logging import configure_logging

    level = getattr(args, "log_level", None) or config.service.log_level
    fmt = getattr(args, "log_format", None) or config.service.log_format
    configure_logging(level, fmt)
    started = time.monotonic()
    daemon = Daemon(config, args)
    rc = run_on_best_loop(daemon.run())
    daemon.log.debug("exit", seconds=round(time.monotonic() - started, 3), status=rc)
    return rc
