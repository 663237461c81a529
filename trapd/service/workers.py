"""``service.workers: N``: `trapd run` as a supervisor of N receiving processes on the same ports.

One trapd process holds about 6,000 v2c traps/s through the whole pipeline
(bench/README.md, "Trap storms"); decoding, normalizing and matching are
Python on one core. With N > 1, ``trapd run`` becomes a small supervisor:

1. it loads trapd.yaml and compiles the rules once, so a bad file is refused
   (with file:line:col) before anything starts;
2. it opens, for every listen address, N UDP sockets with SO_REUSEPORT: the
   kernel hands each datagram to one of them by a hash of the sender's
   address and port, so one switch always lands on the same worker. With
   socket activation (trapd.socket) there is one socket per address and all
   workers read it (each datagram still goes to one reader);
3. it runs the journal's recovery once for every owner (the rows the last
   run left ``running``), then closes the journal, joining its thread;
4. it forks the N workers, each a full :class:`~trapd.service.daemon.Daemon`
   (listener, rules, dispatcher) on the one SQLite journal, claiming rows as
   ``worker-i``, with only its own socket of each address, dying with the
   supervisor (PR_SET_PDEATHSIG);
5. it keeps its copies of the sockets (a restarted worker i gets socket i
   back, with what was queued meanwhile), serves /metrics and /healthz for
   the unit by summing the workers' snapshots (trapd.service.snapshots), and
   speaks for the unit to systemd: READY=1 once every worker is ready,
   STATUS=, WATCHDOG=1, RELOADING=1; a reload (checked here first) and SIGTERM
   are passed on;
6. a worker that stops answering (its loop stuck) is killed (SIGUSR2, on which
   it writes its stacks to stderr, then SIGKILL) and, like a worker that dies
   unexpectedly, restarted with a backoff; more than
   :data:`MAX_RESTARTS` in :data:`RESTART_WINDOW` seconds for one worker and
   the supervisor stops everything and exits 1 (systemd's Restart= decides).

The supervisor never receives a trap and never runs an action. It forks its
first workers before it has an event loop or a thread. It forks restarted
workers from its (plain asyncio, thread-free) loop: the child resets the
signal wake-up descriptor, closes the supervisor's sockets it does not need,
never touches the parent's loop (asyncio ties the running loop to the pid,
so the child may start its own) and leaves with ``os._exit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import faulthandler
import gc
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from trapd.cancelling import cancel_and_wait
from trapd.config import Config
from trapd.listener.config import ListenAddress
from trapd.service import lifecycle
from trapd.service.channel import Channel, ChannelClosed, ChannelGarbled
from trapd.service.daemon import Daemon, run_on_loop, start_failure_status
from trapd.service.health import Health
from trapd.service.lifecycle import Loaded
from trapd.service.metrics import DaemonSnapshot
from trapd.service.options import EXIT_CONFIG, RunOptions
from trapd.service.snapshots import RetiredCounts, from_wire, to_wire
from trapd.statedir import lock_state_dir, make_private_dir
from trapd.yamlsource import ConfigError

if TYPE_CHECKING:
    from pathlib import Path

    from trapd.listener.v3 import EngineClock
    from trapd.mibs import MibResolver
    from trapd.plugin import ActionSpec
    from trapd.service.exporter import MetricsServer

# A worker that died this many times within RESTART_WINDOW seconds is not coming back by itself.
MAX_RESTARTS = 5
RESTART_WINDOW = 60.0
BACKOFF_FIRST = 0.5  # seconds before the first restart; doubled for each recent one
BACKOFF_MAX = 10.0
# How long a worker has to answer a snapshot request (a scrape waits this long at most).
REPLY_TIMEOUT = 2.0
# Requests left unanswered by a worker before no more are sent to it (it is stuck, or busy).
MAX_UNANSWERED = 4
# Reloads repeated in a row because the rule files changed while the workers loaded them.
MAX_RELOAD_REPEATS = 3
# How long a worker has to answer a reload (compiling big rule files takes seconds).
RELOAD_TIMEOUT = 60.0
# Beyond dispatch.shutdown_timeout, what a worker gets to stop before it is killed.
STOP_GRACE = 30.0
# After that SIGKILL, how long the supervisor waits for it to be gone (then asks again).
KILL_WAIT = 5.0
# A worker that stopped answering is sent STACK_SIGNAL (faulthandler writes its threads' stacks
# to stderr), and SIGKILL this many seconds later. Not SIGABRT: outside the unit's LimitCORE=0
# that dumps a core, which holds every community, v3 key and Kea password in clear.
STACK_SIGNAL = signal.SIGUSR2
STACK_GRACE = 1.0
# Beyond dispatch.journal.lease (a worker may wait out a registration its name left on a shared
# journal), how long a worker has from its fork to say ready at start. Under 90 s with the default
# lease: the supervisor names the worker and where it hung before systemd's start timeout ends the
# unit without a word, and outside systemd a worker stuck in its start-up is a failed start, not
# a trapd up without that worker's share of the traps for ever.
WORKER_START_GRACE = 30.0
# After SIGKILL, how long it may take to go before the supervisor counts it as stuck for good and
# withholds WATCHDOG=1 (a process in uninterruptible sleep outlives SIGKILL: systemd's turn).
KILL_GRACE = 5.0

_PR_SET_PDEATHSIG = 1
# Blocked in the supervisor across a fork (see Supervisor._spawn).
FORK_BLOCKED = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD})

# The settings a reload of the supervisor cannot apply (each worker warns about its own).
RESTART_NEEDED = ("service.workers", "service.metrics", "listener.listen")


def journal_owner(index: int) -> str:
    """The journal owner name of worker ``index`` (claims and recovery are scoped to it)."""
    return f"worker-{index}"


def per_worker_config(config: Config, count: int) -> Config:
    """``config`` as one of ``count`` workers applies it.

    The global rate limit is the unit's: each worker takes its share.
    Per-source limits stay as they are: the kernel pins a sender (address
    and port) to one worker, so one worker sees all of a source's traffic.
    """
    rate = config.listener.rate_limit
    if count <= 1 or not rate.global_:
        return config
    listener = replace(config.listener, rate_limit=replace(rate, global_=rate.global_ / count))
    return config.with_overrides(listener=listener)


# ---------------------------------------------------------------------------------------- worker side


@dataclass
class WorkerRole:
    """What makes a :class:`~trapd.service.daemon.Daemon` worker ``index`` of ``count``."""

    index: int
    count: int
    sockets: tuple[socket.socket, ...]
    channel_socket: socket.socket
    preloaded: Loaded | None = None
    # The token of worker ``index``'s journal registration, the same for each of its processes
    # (WorkerSlot.journal_token): see open_journal.
    journal_token: str = ""
    _channel: Channel | None = None
    _daemon: Daemon | None = None
    _by_rule_left_out: bool = False  # logged once

    def take_preloaded(self) -> Loaded | None:
        """What the supervisor loaded before forking, handed over once: the role keeps no reference,
        so a reload frees the rules the worker started with (they held tens of MB per 10,000 rules
        for the worker's life)."""
        loaded, self.preloaded = self.preloaded, None
        return loaded

    @property
    def journal_owner(self) -> str:
        return journal_owner(self.index)

    def adjust(self, config: Config) -> Config:
        return per_worker_config(config, self.count)

    async def attach(self, daemon: Daemon) -> None:
        """Called by the daemon once it is ready: open the channel, say ready, answer requests."""
        self._daemon = daemon
        self._channel = await Channel.open(self.channel_socket)
        self._channel.send({"op": "ready"})
        daemon.keep_task(asyncio.create_task(self._serve(), name="trapd-worker-channel"))

    def reloaded(self, ok: bool, error: str | None, digest: str = "") -> None:
        if self._channel is not None:
            with contextlib.suppress(ChannelClosed):
                self._channel.send({"op": "reloaded", "ok": ok, "error": error, "digest": digest})

    async def _serve(self) -> None:
        channel, daemon = self._channel, self._daemon
        assert channel is not None and daemon is not None
        try:
            while True:
                msg = await channel.receive()
                if msg["op"] == "snapshot?":
                    self._send_snapshot(channel, daemon, msg.get("seq"))
                elif msg["op"] == "reload":
                    daemon.request_reload()
                elif msg["op"] == "usm-elsewhere" and daemon.listener is not None:
                    counts = msg.get("counts") or {}
                    daemon.listener.stats.usm_elsewhere = {int(k): int(v) for k, v in counts.items()}
        except ChannelGarbled as exc:  # unheard from now on: the supervisor would take it for stuck
            daemon.log.error("channel to the supervisor broken, stopping", error=str(exc))
            daemon.request_stop()
        except ChannelClosed:
            # The supervisor is gone (PR_SET_PDEATHSIG says so too, with SIGTERM): stop cleanly.
            daemon.log.warning("supervisor gone, stopping")
            daemon.request_stop()

    def _send_snapshot(self, channel: Channel, daemon: Daemon, seq: object) -> None:
        """The daemon's counters to the supervisor, in one channel message.

        Counters by rule can outgrow a message (MAX_MESSAGE: 100,000 rules with 128-character
        names, each matched and refused once): then they are left out, so that the worker keeps
        answering. Unanswered, the supervisor would take it for stuck and kill it.
        """
        data = to_wire(daemon.snapshot())
        try:
            channel.send({"op": "snapshot", "seq": seq, "data": data})
            return
        except ValueError as exc:  # over MAX_MESSAGE: encode raised before anything was written
            if not self._by_rule_left_out:
                self._by_rule_left_out = True
                daemon.log.error(
                    "counters by rule too large to send to the supervisor: left out of /metrics",
                    error=str(exc),
                    rules=len(data["matched"]),
                    hint="trapd_rule_matches_total and trapd_actions_rejected_total by rule are not "
                    "exported for this worker; the other counters are",
                )
        data["matched"], data["rejected"] = {}, {}
        channel.send({"op": "snapshot", "seq": seq, "data": data})


def _die_with_parent(parent: int) -> None:
    """SIGTERM this process when the supervisor dies (a clean stop: running actions finish)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != parent:  # it died between fork and prctl
        os._exit(0)


# ---------------------------------------------------------------------------------------- sockets


def open_reuseport_sockets(
    listen: Sequence[ListenAddress], count: int, receive_buffer: int
) -> list[list[socket.socket]]:
    """``count`` bound UDP sockets per address, in one SO_REUSEPORT group each: result[worker][address].

    Set before bind, as the listener does: the receive buffer (a buffer set
    later does not apply to what is already queued) and IPV6_V6ONLY. Only
    sockets of the same user can join a group, so another user cannot bind
    the port and take a share of the traps. Nor can this trapd join a group
    that is already there: another trapd of the same user on the same port
    (one run by hand as the service's user, a copy of the unit) would
    otherwise start without an error and get a share of every switch's traps.
    So each address is first bound by a socket without SO_REUSEPORT, which
    fails as a lone trapd's bind does, and closed before the group binds it.
    Port 0 binds the probe to a free port and the group to the same one.
    """
    from trapd.listener.udp import bind, set_receive_buffer

    out: list[list[socket.socket]] = [[] for _ in range(count)]
    try:
        for address in listen:
            family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
            with socket.socket(family, socket.SOCK_DGRAM) as probe:
                if family == socket.AF_INET6:
                    probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                bind(probe, address.host, address.port)
                port = int(probe.getsockname()[1])
            for i in range(count):
                sock = socket.socket(family, socket.SOCK_DGRAM)
                out[i].append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                set_receive_buffer(sock, receive_buffer)
                bind(sock, address.host, port)
    except BaseException:
        for group in out:
            for sock in group:
                sock.close()
        raise
    return out


# ---------------------------------------------------------------------------------------- supervisor side


@dataclass
class RestartPolicy:
    """When to restart a worker that died: a doubling backoff, and a bound on restarts per window.

    A worker that dies again and again (a plugin that crashes the process on
    every trap, a journal that cannot be opened) is not helped by more
    restarts; past the bound the supervisor stops the unit and exits 1, so
    systemd's ``Restart=`` and its own start limit take over and
    ``systemctl status`` shows the failure.
    """

    max_restarts: int = MAX_RESTARTS
    window: float = RESTART_WINDOW
    first: float = BACKOFF_FIRST
    cap: float = BACKOFF_MAX
    recent: deque[float] = field(default_factory=deque)

    def next_delay(self, now: float) -> float | None:
        """Seconds to wait before restarting after a death at ``now``; None: too many, give up."""
        while self.recent and now - self.recent[0] > self.window:
            self.recent.popleft()
        if len(self.recent) >= self.max_restarts:
            return None
        delay = float(min(self.cap, self.first * 2 ** len(self.recent)))
        self.recent.append(now)
        return delay


def default_restart_policy() -> RestartPolicy:
    """The module's bounds, read when a worker slot is made (a test may lower the backoff)."""
    return RestartPolicy(MAX_RESTARTS, RESTART_WINDOW, BACKOFF_FIRST, BACKOFF_MAX)


@dataclass(eq=False)
class WorkerSlot:
    """Worker ``index``: its sockets (kept across restarts) and the process now running it."""

    index: int
    sockets: tuple[socket.socket, ...]
    pid: int = 0
    channel_socket: socket.socket | None = None
    channel: Channel | None = None
    ready: bool = False
    last_snapshot: DaemonSnapshot | None = None
    last_reply: float = 0.0
    died_at: float = 0.0
    exit_code: int | None = None
    restarts: RestartPolicy = field(default_factory=default_restart_policy)
    waiters: dict[int, asyncio.Future[None]] = field(default_factory=dict)
    # (ok, error, the digest of the rules the worker loaded: RuleSet.digest)
    reload_result: asyncio.Future[tuple[bool, str | None, str]] | None = None
    restart_handle: asyncio.TimerHandle | None = None
    # The digest of the rules its process runs (RuleSet.digest): the supervisor's when forked, then
    # what each "reloaded" says, a late one too.
    rules_digest: str = ""
    # Why the supervisor stopped it to start another at once (it refused a reload); None otherwise.
    replacing: str | None = None
    replacing_since: float = 0.0  # when it was sent SIGTERM for that
    stuck_since: float | None = None  # when the supervisor began replacing it (STACK_SIGNAL sent)
    killed: bool = False  # SIGKILL sent too
    # Kept across restarts: a worker is restarted only once its previous process is reaped, so
    # the shared journal's registration that process left is its successor's, which recovers
    # its claims at once. A new token would wait out that registration's lease (30 s by default)
    # before answering the supervisor, and be killed as stuck meanwhile.
    journal_token: str = field(default_factory=lambda: uuid.uuid4().hex)

    @property
    def alive(self) -> bool:
        return self.pid != 0


class Supervisor:
    """`trapd run` with service.workers > 1. :meth:`run` returns the exit status."""

    def __init__(self, config: Config, options: RunOptions | None = None) -> None:
        from trapd.service.logging import get_logger
        from trapd.service.sdnotify import Notifier

        self.config = config
        self.options = options or RunOptions()
        self.count = config.service.workers
        self.log = get_logger("trapd.supervisor")
        self.notifier = Notifier()
        self.pid = os.getpid()
        self.slots: list[WorkerSlot] = []
        self.preloaded: Loaded | None = None
        self.resolver: MibResolver | None = None
        self.actions: dict[str, ActionSpec] = {}
        # The configuration and rule files' texts ``preloaded`` was compiled from: a reload frees
        # the set before compiling the next one, and compiles these again if that one is refused.
        self._compiled_with: tuple[Config, dict[Path, str]] | None = None
        self._state_lock: int | None = None  # STATE_DIR/trapd.lock (see _prepare)
        self.clock: EngineClock | None = None
        self.retired = RetiredCounts()
        self.reloads: dict[str, int] = {}
        self.reload_error: str | None = None
        self.worker_restarts = 0  # deaths while running: systemd never sees them, the metrics do
        self.metrics: MetricsServer | None = None
        self._state = "starting"  # starting, running, stopping
        self._fatal: str | None = None
        self._seq = 0
        self._stop: asyncio.Event | None = None
        self._changed: asyncio.Event | None = None
        self._reload_requested: asyncio.Event | None = None
        # Held while a reload runs: a worker restarted meanwhile is forked after it, with its outcome.
        self._reload_lock: asyncio.Lock | None = None
        # Reloads in a row whose workers loaded other rules than this process (files changing).
        self._changed_during_reload = 0
        self._tasks: list[asyncio.Task[None]] = []
        self._early_reload = False  # a SIGHUP before the loop's handlers
        self._early_stop = False  # a SIGTERM or SIGINT after the first fork, before the loop's handlers
        self._compile_cancel = threading.Event()  # set on stop: ends a reload's MIB compile

    # ------------------------------------------------------------ start: before any loop or thread

    def run(self) -> int:
        # Until the loop's handlers: SIGTERM ends the supervisor at once (nothing is forked yet, and
        # a MIB compiler ends with it); a SIGHUP, whose default would end it too, is kept for later.
        signal.signal(signal.SIGHUP, lambda signum, frame: setattr(self, "_early_reload", True))
        try:
            self._prepare()
        except Exception as exc:
            reason = lifecycle.failure_reason(exc)
            self.log.error("start-up failed", error=reason)
            self.notifier.stopping(f"start-up failed: {reason}"[:500])
            return start_failure_status(exc)
        from trapd.service.logging import share_output_lock

        if not share_output_lock():
            self.log.warning("log lines longer than 4 KiB of several workers may interleave (no memfd)")
        if threading.active_count() != 1:
            # Forking with another thread alive could copy a lock it holds; say so rather than hang.
            self.log.warning("threads alive before forking workers", threads=threading.active_count())
        sys.stdout.flush()
        gc.collect()
        gc.freeze()  # what the workers inherit stays out of the collector's sight (and shared)
        # From the first fork on, a stop must wait for the workers (each gets SIGTERM, a running one
        # finishes its actions): kept for the loop, not the default end of this process alone.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda signum, frame: setattr(self, "_early_stop", True))
        try:
            for slot in self.slots:
                self._spawn(slot)
        except OSError as exc:  # fork refused (EAGAIN: a process limit)
            self.log.error("start-up failed", error=f"fork: {exc}")
            self.notifier.stopping(f"start-up failed: fork: {exc}"[:500])
            for slot in self.slots:
                if slot.alive:
                    os.kill(slot.pid, signal.SIGTERM)
                    os.waitpid(slot.pid, 0)
            return 1
        gc.enable()
        loop = asyncio.new_event_loop()  # plain asyncio: the supervisor's loop is idle, and fork-friendly
        try:
            return loop.run_until_complete(self._main())
        finally:
            loop.close()

    def _prepare(self) -> None:
        """Everything that may refuse to start, done once: rules, sockets, journal recovery, v3 boots."""
        from trapd.listener.v3 import advance_engine_clock, default_engine_id
        from trapd.listener.v3.replay import share_across_workers
        from trapd.service.socket_activation import inherited_sockets

        cfg = self.config
        # Before anything that acts on the state (the recovery below): held by this process and the
        # workers it forks, so that another trapd on the same state directory is refused at once.
        make_private_dir(cfg.state_dir)
        self._state_lock = lock_state_dir(cfg.state_dir)
        try:
            texts: dict[Path, str] | None = lifecycle.read_rule_texts(cfg)
        except ConfigError:
            texts = None  # the compile reads the files and says why, beside its other problems
        self.preloaded = loaded = lifecycle.load_startup(cfg, self.log, self.notifier, texts)
        self.resolver, self.actions = loaded.resolver, loaded.actions
        self._compiled_with = (cfg, texts) if texts is not None else None
        if cfg.service.metrics_listen is not None:
            from trapd.service.exporter import check_bindable

            # Served from the loop made after the fork: a port taken must fail the start before that.
            check_bindable(cfg.service.metrics_listen.host, cfg.service.metrics_listen.port)

        inherited = inherited_sockets()
        own: list[list[socket.socket]] = [[] for _ in range(self.count)]
        if not inherited or self.options.binds_listen:
            own = open_reuseport_sockets(cfg.listener.listen, self.count, cfg.listener.receive_buffer)
        self.slots = [WorkerSlot(i, tuple(own[i]) + tuple(inherited)) for i in range(self.count)]

        recovered = asyncio.run(self._recover())
        if recovered.get("rerun") or recovered.get("held"):
            self.log.warning("actions interrupted by the last shutdown", **recovered)
        self.clock = advance_engine_clock(cfg.listener.engine_id or default_engine_id(), cfg.state_dir)
        # One v3 replay memory for every worker forked from here (a replay sent from another
        # source port reaches another worker): anonymous shared memory, inherited by fork.
        share_across_workers()
        self.log.info(
            "supervisor starting workers",
            workers=self.count,
            listen=sorted({_describe(s) for s in self.slots[0].sockets}),
            shared_sockets=len(inherited),
            rules=len(loaded.rules),
            engine_boots=self.clock.boots,
        )

    async def _recover(self) -> dict[str, int]:
        """The journal's recovery for every owner, then close it (its writer thread is joined)."""
        from trapd.dispatch.dispatcher import recover_interrupted
        from trapd.dispatch.journal import open_journal
        from trapd.programs import ProgramGroups

        cfg = self.config
        journal = open_journal(cfg.dispatch.journal.file(cfg.state_dir), cfg.dispatch.journal)
        await journal.open()
        try:
            actions = self.actions
            # No worker runs yet: the groups every owner's actions left are ended, as their rows rerun.
            programs = ProgramGroups(cfg.state_dir, None)
            return await recover_interrupted(
                journal, actions, owner=None, interrupted=cfg.dispatch.interrupted, programs=programs
            )
        finally:
            await journal.close()

    # ------------------------------------------------------------ fork

    def _spawn(self, slot: WorkerSlot) -> None:
        parent_end, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        sys.stdout.flush()
        sys.stderr.flush()
        # Blocked across the fork: until the child has reset them, a signal sent to it would run
        # this process's handlers there (a SIGTERM noted in the child's copy, or written to this
        # loop's wake-up socket) and be lost to the worker. It gets them once they are its own.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, FORK_BLOCKED)
        try:
            pid = os.fork()
        except OSError:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
            parent_end.close()
            child_end.close()
            raise
        if pid == 0:
            parent_end.close()
            self._become_worker(slot, child_end, mask)  # never returns
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        child_end.close()
        slot.pid, slot.channel_socket, slot.ready = pid, parent_end, False
        slot.last_snapshot, slot.exit_code, slot.last_reply = None, None, time.monotonic()
        slot.stuck_since, slot.killed, slot.replacing = None, False, None
        slot.rules_digest = self.preloaded.rules.digest if self.preloaded is not None else ""
        self.log.info("worker started", worker=slot.index, pid=pid)

    def _become_worker(
        self, slot: WorkerSlot, channel_socket: socket.socket, mask: set[int | signal.Signals]
    ) -> None:
        """The child's side of the fork: become worker ``slot.index``, then leave with os._exit.

        ``mask``: the signal mask before the fork, set again once the handlers are the worker's.
        """
        code = 1
        try:
            from trapd.service.logging import share_output_lock

            # First, before anything logs: the inherited lock description is the supervisor's.
            share_output_lock()
            _die_with_parent(self.pid)
            # The supervisor's loop (if any) writes signals to its wake-up socket; not ours.
            signal.set_wakeup_fd(-1)
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
                signal.signal(sig, signal.SIG_DFL)
            # Until the loop's handler (a reload of this worker alone): a SIGHUP sent to every process
            # of the unit (systemctl kill -s HUP) must not end a starting worker. It starts with the
            # supervisor's rules, and the supervisor passes the reload on.
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)  # what came meanwhile is acted on now
            with contextlib.suppress(RuntimeError, ValueError, OSError):  # no usable stderr
                # Where each thread is, to stderr, when the supervisor finds this worker stuck.
                faulthandler.register(STACK_SIGNAL, all_threads=True)
            self._close_supervisor_fds(slot)
            for key in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID"):
                os.environ.pop(key, None)  # the supervisor speaks for the unit; action programs see neither
            from trapd.listener.v3 import pin_engine_clock
            from trapd.service.logging import set_process_fields

            set_process_fields(worker=slot.index)
            pin_engine_clock(self.clock)
            # This frame (the supervisor's copy, alive in the child until os._exit) must not keep
            # the start-up rules either: the role hands them to the daemon, which drops them on reload.
            preloaded, self.preloaded = self.preloaded, None
            role = WorkerRole(
                slot.index,
                self.count,
                slot.sockets,
                channel_socket,
                preloaded,
                journal_token=slot.journal_token,
            )
            del preloaded
            daemon = Daemon(self.config, self.options, role)
            code = run_on_loop(daemon)
        except BaseException as exc:  # a child must never return into the parent's frames
            with contextlib.suppress(BaseException):
                self.log.exception("worker failed", worker=slot.index, error=repr(exc))
        finally:
            with contextlib.suppress(BaseException):
                sys.stdout.flush()
                sys.stderr.flush()
            os._exit(code)

    def _close_supervisor_fds(self, mine: WorkerSlot) -> None:
        """In a new worker: close the other workers' sockets and the supervisor's own endpoints.

        Only descriptors: the supervisor's loop objects are left alone, since
        unregistering anything would change the epoll set the parent shares.
        """
        keep = {id(s) for s in mine.sockets}
        for slot in self.slots:
            for sock in slot.sockets:
                if id(sock) not in keep:
                    sock.close()
            if slot.channel_socket is not None:
                slot.channel_socket.close()
        if self.metrics is not None:
            for fd in self.metrics.listening_fds():
                with contextlib.suppress(OSError):
                    os.close(fd)
        self.notifier.close()

    # ------------------------------------------------------------ the supervisor's loop

    async def _main(self) -> int:
        loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._changed = asyncio.Event()
        self._reload_requested = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        loop.add_signal_handler(signal.SIGHUP, self._reload_requested.set)
        if self._early_reload:
            self._reload_requested.set()
        if self._early_stop:
            self._stop.set()
        loop.add_signal_handler(signal.SIGCHLD, self._reap)
        self._reap()  # a worker that died before the handler was there
        for slot in self.slots:
            if slot.alive:
                await self._connect(slot)
        try:
            await self._start_metrics()
            failed = await self._wait_all_ready()
        except OSError as exc:
            failed = str(exc)
        if failed is not None:
            self.log.error("start-up failed", error=failed)
            self.notifier.stopping(f"start-up failed: {failed}"[:500])
            await self._stop_workers()
            await self._close()
            # A worker refused its configuration (the supervisor checked the same): not restarted either.
            return EXIT_CONFIG if any(s.exit_code == EXIT_CONFIG for s in self.slots) else 1
        if self._stop.is_set():
            return await self._shutdown()
        self._state = "running"
        for slot in self.slots:
            if not slot.alive:  # died between its "ready" and now: restart it like any other
                self._on_exit(slot, slot.exit_code if slot.exit_code is not None else 0)
        await self._refresh()
        self.notifier.ready(self._status_line())
        self.log.info(
            "trapd ready",
            workers=self.count,
            pids=[s.pid for s in self.slots],
            metrics=self.metrics.url if self.metrics else None,
        )
        self._tasks.append(asyncio.create_task(self._status_loop(), name="trapd-supervisor-status"))
        self._tasks.append(asyncio.create_task(self._reload_loop(), name="trapd-supervisor-reload"))
        await self._stop.wait()
        return await self._shutdown()

    def start_timeout(self) -> float:
        """Seconds a worker has from its fork to say ready at start (:data:`WORKER_START_GRACE`)."""
        return self.config.dispatch.journal.lease + WORKER_START_GRACE

    async def _wait_all_ready(self) -> str | None:
        """None once every worker said ready (or a stop was asked); else why the start failed.

        Bounded by :meth:`start_timeout`: a worker still not ready then is sent STACK_SIGNAL (its
        stacks to stderr: where it hung) and SIGKILL (its loop, blocked, would not act on SIGTERM).
        """
        assert self._changed is not None and self._stop is not None
        timeout = self.start_timeout()
        deadline = time.monotonic() + timeout
        # This bound, not systemd's start timeout (90 s by default; less than it with a long
        # lease), is to end a start that hangs: with the worker named and its stack in the log.
        self.notifier.extend_timeout(timeout + STACK_GRACE + lifecycle.STOP_MARGIN)
        while not self._stop.is_set():
            dead = [s for s in self.slots if not s.alive]
            if dead:
                return "; ".join(f"worker {s.index} exited with status {s.exit_code}" for s in dead)
            if all(s.ready for s in self.slots):
                return None
            left = deadline - time.monotonic()
            if left <= 0:
                return await self._kill_unready(timeout)
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 1.0))
        return None

    async def _kill_unready(self, timeout: float) -> str:
        """The workers not ready after ``timeout``: their stacks, then SIGKILL; why the start failed."""
        late = [s for s in self.slots if s.alive and not s.ready]
        names = ", ".join(f"worker {s.index} (pid {s.pid})" for s in late)
        for slot in late:
            self.log.error("worker not ready in time, killing it", worker=slot.index, pid=slot.pid)
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.pid, STACK_SIGNAL)
        await asyncio.sleep(STACK_GRACE)
        for slot in late:
            if slot.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGKILL)
        return f"{names} not ready within {timeout:.0f} s: killed, its stack is in the log above"

    async def _connect(self, slot: WorkerSlot) -> None:
        assert slot.channel_socket is not None
        slot.channel = await Channel.open(slot.channel_socket)
        self._tasks.append(
            asyncio.create_task(self._read(slot, slot.channel), name=f"trapd-worker-{slot.index}")
        )

    async def _read(self, slot: WorkerSlot, channel: Channel) -> None:
        assert self._changed is not None
        try:
            await self._read_messages(slot, channel)
        except ChannelGarbled as exc:
            # The channel stopped making sense while the worker runs: unheard from now on, it would
            # be taken for stuck and killed 15 s later. (Its end, even mid-message, is _reap's.)
            if slot.channel is channel and slot.alive and self._state != "stopping":
                self.log.error("channel to the worker broken, stopping it", worker=slot.index, error=str(exc))
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGTERM)
        except ChannelClosed:
            pass

    async def _read_messages(self, slot: WorkerSlot, channel: Channel) -> None:
        assert self._changed is not None
        while True:
            msg = await channel.receive()
            if slot.channel is not channel:
                # Its worker is gone (_on_exit ran first and retired its last snapshot): what was
                # still buffered is not the slot's, and a late snapshot would be counted twice.
                return
            slot.last_reply = time.monotonic()
            op = msg["op"]
            if op == "ready":
                slot.ready = True
                if self._state == "running":
                    self.log.info("worker ready", worker=slot.index, pid=slot.pid)
                self._changed.set()
            elif op == "snapshot":
                slot.last_snapshot = from_wire(msg.get("data") or {})
                # Answers come in request order: this one settles every earlier request too.
                seq = int(msg.get("seq") or 0)
                for earlier in [n for n in slot.waiters if n <= seq]:
                    waiter = slot.waiters.pop(earlier)
                    if not waiter.done():
                        waiter.set_result(None)
            elif op == "reloaded":
                result = (bool(msg.get("ok")), msg.get("error"), str(msg.get("digest") or ""))
                if result[0]:  # what it runs now, whether a reload waits for it or gave up
                    slot.rules_digest = result[2]
                if slot.reload_result is not None and not slot.reload_result.done():
                    slot.reload_result.set_result(result)

    def _reap(self) -> None:
        """SIGCHLD: collect every worker that exited and decide what happens next.

        Only the workers, each by its pid: waitpid(-1) also took the MIB compile child a reload
        starts (trapd.mibs), whose own wait then found no child and took status 0 for a compile
        the OOM killer had ended.
        """
        for slot in self.slots:
            if not slot.alive:
                continue
            try:
                pid, status = os.waitpid(slot.pid, os.WNOHANG)
            except ChildProcessError:  # not ours to wait for (never expected): gone all the same
                pid, status = slot.pid, 0
            if pid == slot.pid:
                self._on_exit(slot, os.waitstatus_to_exitcode(status))

    def _on_exit(self, slot: WorkerSlot, code: int) -> None:
        slot.pid, slot.ready, slot.exit_code = 0, False, code
        slot.died_at = time.monotonic()
        self.retired.retire(slot.last_snapshot)
        slot.last_snapshot = None
        for waiter in slot.waiters.values():
            if not waiter.done():
                waiter.set_result(None)
        slot.waiters.clear()
        if slot.reload_result is not None and not slot.reload_result.done():
            slot.reload_result.set_result((False, f"worker {slot.index} exited", ""))
        if slot.channel is not None:
            slot.channel.close()
            slot.channel = None
        slot.channel_socket = None
        if self._changed is not None:
            self._changed.set()
        how = f"signal {-code}" if code < 0 else f"status {code}"
        if self._state == "stopping":
            self.log.info("worker stopped", worker=slot.index, exit=how)
            return
        if self._state == "starting":
            return  # _wait_all_ready reports it: a worker that cannot start will not start on a retry
        self.worker_restarts += 1
        if slot.replacing is not None:  # stopped by the supervisor: no death, no backoff
            self.log.info("worker stopped, starting its replacement", worker=slot.index, exit=how)
            slot.replacing = None
            slot.restart_handle = asyncio.get_running_loop().call_later(0, self._schedule_restart, slot)
            return
        delay = slot.restarts.next_delay(time.monotonic())
        if delay is None:
            policy = slot.restarts
            self._fatal = (
                f"worker {slot.index} died {len(policy.recent) + 1} times within {policy.window:.0f} s "
                f"(last: {how})"
            )
            self.log.critical("worker keeps dying, stopping trapd", worker=slot.index, error=self._fatal)
            assert self._stop is not None
            self._stop.set()
            return
        self.log.error("worker died, restarting it", worker=slot.index, exit=how, restart_in=delay)
        loop = asyncio.get_running_loop()
        slot.restart_handle = loop.call_later(delay, self._schedule_restart, slot)

    def _schedule_restart(self, slot: WorkerSlot) -> None:
        self._tasks.append(asyncio.create_task(self._restart(slot), name=f"trapd-restart-{slot.index}"))

    async def _restart(self, slot: WorkerSlot) -> None:
        assert self._reload_lock is not None
        async with self._reload_lock:
            slot.restart_handle = None  # kept until here: "restarting" while a reload finishes
            if self._state != "running" or slot.alive:
                return
            await self._respawn(slot)

    async def _respawn(self, slot: WorkerSlot) -> None:
        try:
            self._spawn(slot)
        except OSError as exc:  # fork refused: counts as one more death of this worker
            self.log.error("restarting a worker failed", worker=slot.index, error=str(exc))
            self._on_exit(slot, 1)
            return
        await self._connect(slot)

    # ------------------------------------------------------------ snapshots, status, health, watchdog

    async def _refresh(self, timeout: float = REPLY_TIMEOUT) -> None:
        """Ask every live worker for its counters; wait up to ``timeout`` for the answers.

        A worker that does not read its channel (stuck) is not sent more than
        :data:`MAX_UNANSWERED` requests: the wait is then on the ones it has.
        """
        loop = asyncio.get_running_loop()
        waiting: list[asyncio.Future[None]] = []
        for slot in self.slots:
            if not (slot.alive and slot.ready and slot.channel is not None):
                continue
            if len(slot.waiters) >= MAX_UNANSWERED:
                waiting.extend(slot.waiters.values())
                continue
            self._seq += 1
            fut: asyncio.Future[None] = loop.create_future()
            try:
                slot.channel.send({"op": "snapshot?", "seq": self._seq})
            except ChannelClosed:
                continue
            slot.waiters[self._seq] = fut
            waiting.append(fut)
        if waiting:
            await asyncio.wait(waiting, timeout=timeout)

    def snapshot(self) -> DaemonSnapshot:
        """The unit's counters: the live workers' latest plus those of workers that ended."""
        total = self.retired.with_live(s.last_snapshot for s in self.slots if s.last_snapshot is not None)
        return replace(
            total,
            reloads=dict(self.reloads),
            last_reload_ok=self.reload_error is None,
            workers_up=sum(1 for state in self._worker_states().values() if state == "ok"),
            worker_restarts=self.worker_restarts,
            workers_other_rules=len(self._workers_on_other_rules()),
        )

    def health(self) -> Health:
        """/healthz: ok when every worker is up and answers; degraded (503) naming the others."""
        if self._state != "running":
            return Health(False, self._state)
        states = self._worker_states()
        down = [i for i, st in states.items() if st != "ok"]
        detail: dict[str, Any] = {"workers": self.count, "workers_up": self.count - len(down)}
        if self.reload_error is not None:
            detail["last_reload"] = f"failed: {self.reload_error}"
        if down:
            return Health(False, "degraded", {**detail, "workers_down": {i: states[i] for i in down}})
        other = self._workers_on_other_rules()
        if other:  # a trap is acted on by other rules depending on the worker its source lands on
            return Health(False, "degraded", {**detail, "workers_other_rules": other})
        snap = self.snapshot()
        if snap.journal_problem is not None:  # a worker's journal cannot commit (database down)
            return Health(False, "degraded", {**detail, "journal": snap.journal_problem})
        if snap.journal_name_conflict:  # a worker's name is renewed by another live process too
            problem = "another trapd is running under this host's dispatch.journal.instance on the journal"
            return Health(False, "degraded", {**detail, "journal": problem})
        kea_warnings, rules = snap.kea_warnings, snap.pair_rule_differences
        if kea_warnings or rules:  # Kea servers that need attention, another host's other rules: said,
            # but not a reason to restart trapd
            if kea_warnings:
                detail["kea"] = list(kea_warnings)
            if rules:
                detail["rules"] = list(rules)
            return Health(True, "warning", detail)
        return Health(True, "ok", detail)

    def _replace_bound(self) -> float:
        """How long a worker stopped to be replaced has to go: as at the unit's stop."""
        return self.config.dispatch.shutdown_timeout + STOP_GRACE

    def _stale_after(self) -> float:
        """Seconds without an answer after which a live worker counts as stuck."""
        interval = self.notifier.watchdog_interval() or 30.0
        return max(interval / 2, 3 * self.config.service.status_interval)

    def _worker_states(self) -> dict[int, str]:
        """ok, starting, replacing (stuck, being killed), unresponsive (stuck, and killing it has
        not worked), restarting (died lately), down."""
        stale, now = self._stale_after(), time.monotonic()
        states: dict[int, str] = {}
        for slot in self.slots:
            if slot.alive and slot.replacing is not None:
                # Stopping as on SIGTERM: silent while it finishes its actions, then a new one.
                in_time = now - slot.replacing_since <= self._replace_bound() + KILL_GRACE
                states[slot.index] = "replacing" if in_time else "unresponsive"
            elif slot.alive:
                if now - slot.last_reply > stale:
                    replacing = slot.stuck_since is not None and now - slot.stuck_since <= (
                        STACK_GRACE + KILL_GRACE
                    )
                    states[slot.index] = "replacing" if replacing else "unresponsive"
                else:
                    states[slot.index] = "ok" if slot.ready else "starting"
            # Restarting for as long as its backoff (up to the policy's cap) plus the usual bound: a
            # backoff longer than ``stale`` must not withhold WATCHDOG=1 for a worker on its way back.
            elif slot.restart_handle is not None and now - slot.died_at <= stale + slot.restarts.cap:
                states[slot.index] = "restarting"
            else:
                states[slot.index] = "down"
        return states

    def _responsive(self) -> bool:
        """For WATCHDOG=1: every worker answers, or is being replaced or restarted.

        A stuck worker (its loop blocked) is the supervisor's to replace
        (:meth:`_replace_stuck`, checked here first so that no ping is missed
        for it), as one that crashed is: neither stops the pings by itself,
        nor does one that is starting again. Only a worker that outlives
        SIGKILL stops them, and systemd restarts the unit.
        """
        self._replace_stuck()
        ok = ("ok", "starting", "replacing", "restarting")
        return all(st in ok for st in self._worker_states().values())

    def _replace_stuck(self) -> None:
        """STACK_SIGNAL to a worker silent for longer than :meth:`_stale_after`, SIGKILL
        :data:`STACK_GRACE` later; its death is then handled as any other (a restart).

        Before, a stuck worker only withheld WATCHDOG=1: systemd then restarted the whole unit
        (every worker and its running actions), and without a systemd watchdog it stayed stuck,
        its share of the traps waiting in its socket for ever. STACK_SIGNAL first: the worker's
        faulthandler then writes where each of its threads was to stderr.
        """
        if self._state != "running":
            return
        stale, now = self._stale_after(), time.monotonic()
        for slot in self.slots:
            if slot.alive and slot.replacing is not None:  # draining its actions, which takes time
                if not slot.killed and now - slot.replacing_since > self._replace_bound():
                    slot.killed = True
                    self.log.error(
                        "replaced worker did not stop, killing it", worker=slot.index, pid=slot.pid
                    )
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(slot.pid, signal.SIGKILL)
                continue
            if not slot.alive or now - slot.last_reply <= stale:
                continue
            if slot.stuck_since is None:
                slot.stuck_since = now
                self.log.error(
                    "worker stuck, replacing it",
                    worker=slot.index,
                    pid=slot.pid,
                    silent_for=round(now - slot.last_reply, 1),
                )
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, STACK_SIGNAL)
            elif not slot.killed and now - slot.stuck_since >= STACK_GRACE:
                slot.killed = True
                self.log.error("stuck worker still there, killing it", worker=slot.index, pid=slot.pid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGKILL)

    def _status_line(self) -> str:
        from trapd.service.metrics import status_line

        up = sum(1 for s in self.slots if s.alive and s.ready)
        line = f"{status_line(self.snapshot())}, workers {up}/{self.count} up"
        if self.reload_error is not None:
            line += f": {self.reload_error}"
        return line[:1000]

    def _status_interval(self) -> float:
        interval = self.config.service.status_interval  # a reload may change it
        wd = self.notifier.watchdog_interval()
        # Liveness (for WATCHDOG=1) is judged from the workers' answers to these requests.
        return min(interval, wd / 4) if wd is not None else interval

    async def _status_loop(self) -> None:
        # No longer than an interval for the answers: a stuck worker must not delay asking the others.
        await lifecycle.status_loop(
            self.notifier, self._responsive, self._status_line, self._status_interval, self._check_workers
        )

    async def _check_workers(self, timeout: float) -> None:
        """Every status interval: the workers' counters, and a stuck one replaced (with or without
        a systemd watchdog)."""
        await self._refresh(timeout)
        self._share_usm_stats()
        self._replace_stuck()

    def _share_usm_stats(self) -> None:
        """Tell every worker the usmStats counts of the others (and of workers that ended).

        The unit is one SNMP engine: a report is to carry its usmStats count (RFC 3414 3.2),
        which an operator chasing a wrong key reads in the sender's debug output. Each worker
        counts only what the kernel handed it; it adds what it is told here (every status
        interval) to its own, so a report says the unit's count as of the last look plus what
        its worker counted since.
        """
        total = self.snapshot().usm_stats
        for slot in self.slots:
            own = slot.last_snapshot
            if not (slot.alive and slot.ready and slot.channel is not None and own is not None):
                continue
            counts = {str(c): n - own.usm_stats.get(c, 0) for c, n in total.items()}
            with contextlib.suppress(ChannelClosed):
                slot.channel.send({"op": "usm-elsewhere", "counts": counts})

    async def _start_metrics(self) -> None:
        sockets = [s for slot in self.slots for s in slot.sockets]
        unique = list({id(s): s for s in sockets}.values())
        self.metrics = await lifecycle.start_metrics(
            self.config, self.snapshot, lambda: unique, self.health, refresh=self._refresh
        )

    # ------------------------------------------------------------ reload

    async def _reload_loop(self) -> None:
        assert self._reload_requested is not None
        assert self._reload_lock is not None
        while True:
            await self._reload_requested.wait()
            self._reload_requested.clear()
            async with self._reload_lock:
                await self.reload()

    async def reload(self) -> bool:
        """SIGHUP: check trapd.yaml and the rules here first, then have every worker load them.

        The supervisor compiles the rules itself before any worker is asked
        (having freed its own set first: see below), so a bad file is refused
        once and every worker keeps its rules. Only
        a file changed between the two steps can make one worker refuse what
        another took; that is reported as a failed reload naming the worker.
        """
        self.notifier.reloading("reloading")
        assert self.resolver is not None
        actions = self.actions
        loop = asyncio.get_running_loop()
        try:
            # MIB files that changed are compiled here, once; the workers then load the cached result.
            config, resolver, texts = await lifecycle.read_reload(
                self.options, self.resolver, self.log, self.config, cancel=self._compile_cancel
            )
        except Exception as exc:
            return self._reload_failed(lifecycle.failure_reason(exc))
        # The set this process holds (for a worker it restarts) is freed before the new one is
        # compiled, so that the compile reuses its memory: compiled beside it, the supervisor held
        # the allocator's high-water mark of both (100,000 rules: 560-610 MB, against 400 MB for
        # one compile), and the unit with two workers 1.6-1.8 GB. If the new rules are refused,
        # the running ones are compiled again from the texts they came from.
        previous = self._compiled_with
        freed_first = previous is not None and self.preloaded is not None
        if freed_first:
            await self._release_preloaded(loop)
        try:
            rules = await asyncio.to_thread(
                lifecycle.build_frozen, config, resolver, actions, self.log, texts
            )
        except Exception as exc:
            await self._compile_again(previous)
            return self._reload_failed(lifecycle.failure_reason(exc))
        asked: list[WorkerSlot] = []
        for slot in self.slots:
            if slot.alive and slot.channel is not None:
                slot.reload_result = loop.create_future()
                with contextlib.suppress(ChannelClosed):
                    slot.channel.send({"op": "reload"})
                    asked.append(slot)
        results = [s.reload_result for s in asked if s.reload_result is not None]
        if results:
            await asyncio.wait(results, timeout=RELOAD_TIMEOUT)
        refused: list[tuple[WorkerSlot, str]] = []
        took = 0
        other_rules = []
        for slot in asked:
            res = slot.reload_result
            ok, error, digest = res.result() if res is not None and res.done() else (False, "no answer", "")
            if not ok:
                refused.append((slot, str(error)))
            else:
                took += 1
                if digest != rules.digest:
                    other_rules.append(slot.index)
            slot.reload_result = None
        if refused and not took:  # nobody took it: every worker keeps its rules, as this process does
            if freed_first:
                await loop.run_in_executor(None, lifecycle.release_rules, rules)
                del rules
                await self._compile_again(previous)
            return self._reload_failed("; ".join(f"worker {slot.index}: {error}" for slot, error in refused))
        if other_rules:
            # The files changed between this process's compile and the workers' (a deploy landing
            # during the reload): the workers run rules other than those checked here, which a
            # restarted worker would start with. Reloading again makes them all the same again.
            self._changed_during_reload += 1
            if self._changed_during_reload <= MAX_RELOAD_REPEATS:
                self.log.warning(
                    "the rule files changed while the workers loaded them: reloading again",
                    workers=other_rules,
                )
                assert self._reload_requested is not None
                self._reload_requested.set()
            else:
                self.log.error(
                    "the rule files keep changing during reloads: workers may run different rules "
                    "until the next reload",
                    workers=other_rules,
                )
        else:
            self._changed_during_reload = 0
        lifecycle.warn_restart_needed(self.log, self.config, config, RESTART_NEEDED)
        # What a worker restarted from now on gets: not a journal, Kea or address its siblings lack.
        self.config = lifecycle.keep_restart_needed(config, self.config)
        if not freed_first:
            await self._release_preloaded(loop)
        self.resolver = resolver
        self.preloaded = Loaded(resolver, actions, rules)  # what a restarted worker starts with
        self._compiled_with = (config, texts)
        self._replace_refusing(refused)
        self.reloads["ok"] = self.reloads.get("ok", 0) + 1
        self.reload_error = None
        lifecycle.apply_logging(config)
        self.log.info("reloaded", rules=len(rules), mode=config.mode, workers=len(asked))
        self.notifier.ready(self._status_line())
        return True

    async def _release_preloaded(self, loop: asyncio.AbstractEventLoop) -> None:
        """Free the compiled rules this process holds, in a thread, a slice at a time, as the daemon
        does: dropped here, 100,000 rules held this loop (the watchdog's pings, /healthz, the
        workers' answers) 0.4-0.6 s (release_rules). Awaited, under the reload lock: a worker
        restarted meanwhile would be forked with the thread half-way (a copy of the old set that
        its child never frees)."""
        if self.preloaded is None:
            return
        old, self.preloaded = self.preloaded.rules, None
        await loop.run_in_executor(None, lifecycle.release_rules, old)
        del old

    async def _compile_again(self, previous: tuple[Config, dict[Path, str]] | None) -> None:
        """After a refused reload that freed this process's rules first: the running rules again,
        from the texts they were compiled from (not the files, which say something else now)."""
        if self.preloaded is not None or previous is None or self.resolver is None:
            return
        config, texts = previous
        try:
            rules = await asyncio.to_thread(
                lifecycle.build_frozen, config, self.resolver, self.actions, self.log, texts
            )
        except Exception as exc:  # out of memory: a worker restarted now compiles the files itself
            self.log.error(
                "compiling the running rules again after a refused reload failed",
                error=lifecycle.failure_reason(exc),
            )
            return
        self.preloaded = Loaded(self.resolver, self.actions, rules)

    def _replace_refusing(self, refused: list[tuple[WorkerSlot, str]]) -> None:
        """Workers that refused a reload others took (out of memory, a file they could not read):
        stopped as on SIGTERM and started again at once with the rules this process compiled.

        Left as they were, the unit ran two rule sets (a trap acted on by whichever its source
        port hashed to). The replacement reads no file and compiles nothing: it is forked with
        ``self.preloaded``. One that exited meanwhile is restarted with them anyway.
        """
        for slot, error in refused:
            if not slot.alive:
                continue
            self.log.error(
                "worker refused the reload, replacing it", worker=slot.index, pid=slot.pid, error=error
            )
            slot.replacing, slot.replacing_since = error, time.monotonic()
            with contextlib.suppress(ProcessLookupError):
                os.kill(slot.pid, signal.SIGTERM)

    def _workers_on_other_rules(self) -> list[int]:
        """The live workers whose rules are not this process's (none while a reload is under way)."""
        if self.preloaded is None or (self._reload_lock is not None and self._reload_lock.locked()):
            return []
        digest = self.preloaded.rules.digest
        return [s.index for s in self.slots if s.alive and s.rules_digest and s.rules_digest != digest]

    def _reload_failed(self, reason: str) -> bool:
        self.reloads["failed"] = self.reloads.get("failed", 0) + 1
        self.reload_error = reason
        self.log.error("reload failed, keeping the running configuration", error=reason)
        self.notifier.ready(f"reload failed, old configuration kept: {reason}"[:1000])
        return False

    # ------------------------------------------------------------ stop

    async def _shutdown(self) -> int:
        from trapd.mibs import cancel_compiles

        self._state = "stopping"
        # A reload still waiting for its workers is abandoned: as they stop, it would otherwise
        # end as "failed" (or done) and send READY=1 after STOPPING=1.
        await cancel_and_wait([t for t in self._tasks if t.get_name() == "trapd-supervisor-reload"])
        cancel_compiles(self._compile_cancel)  # its MIB compile: the thread would hold the exit (10 min)
        self.log.info("stopping", workers=sum(1 for s in self.slots if s.alive))
        self.notifier.stopping("stopping")
        # _stop_workers' longest wait (then SIGKILL and 5 s more): more than TimeoutStopSec allows
        # when dispatch.shutdown_timeout is set high, and systemd would SIGKILL the unit first.
        self.notifier.extend_timeout(
            self.config.dispatch.shutdown_timeout + STOP_GRACE + KILL_WAIT + lifecycle.STOP_MARGIN
        )
        stopped = [s for s in self.slots if s.alive]
        await self._stop_workers()
        await self._close()
        codes = [s.exit_code for s in self.slots]
        if self._fatal is not None:
            self.log.error("stopped", error=self._fatal)
            return 1
        self.log.info("stopped", exit_codes=codes)
        # The workers this stop ended: 0, or ended by its SIGTERM (one still starting had not yet
        # installed its handler; systemd counts such an end as clean too). One that died earlier
        # and waited for its restart was reported then, and is no reason to fail a stop.
        return 0 if all(s.exit_code in (0, -signal.SIGTERM) for s in stopped) else 1

    async def _stop_workers(self) -> None:
        """SIGTERM every worker (each stops as a lone trapd does) and wait; SIGKILL after a grace."""
        assert self._changed is not None
        self._state = "stopping"
        for slot in self.slots:
            if slot.restart_handle is not None:
                slot.restart_handle.cancel()
                slot.restart_handle = None
            if slot.alive:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.config.dispatch.shutdown_timeout + STOP_GRACE
        while any(s.alive for s in self.slots):
            left = deadline - time.monotonic()
            if left <= 0:
                for slot in self.slots:
                    if slot.alive:
                        self.log.error("worker did not stop, killing it", worker=slot.index, pid=slot.pid)
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(slot.pid, signal.SIGKILL)
                deadline = time.monotonic() + KILL_WAIT
                continue
            self._changed.clear()
            self._reap()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))

    async def _close(self) -> None:
        await cancel_and_wait(self._tasks)
        if self.metrics is not None:
            await self.metrics.close()
        for slot in self.slots:
            for sock in slot.sockets:
                sock.close()


def _describe(sock: socket.socket) -> str:
    from trapd.service.socket_activation import describe

    return describe(sock)


def run_supervisor(config: Config, options: RunOptions | None = None) -> int:
    """`trapd run` with service.workers > 1; returns the exit status."""
    lifecycle.apply_logging(config)
    return Supervisor(config, options).run()
