"""trapd's UDP sockets and the receive path: one datagram in, one RawNotification (or one counted drop) out.

The order of the checks is the order of their cost::

    source allowed?          one dict lookup per source address (cached verdict)
    rate limit               ``limiter.check(source, data)``: token buckets (trapd.listener.limits)
    decode_unless_v3         reads the header once: v1/v2c decoded, v3 handed on (None)
    v1/v2c                   community in a set of bytes; inform -> Response from the same socket
    v3                       trapd.listener.v3.path.V3Path: the header read once, then
                             UsmFastPath for traps from users' bound (or learned) sender
                             engines, V3Receiver (pysnmp's engine) for the rest

``datagram_received`` never lets an exception out: asyncio would log a
traceback per packet in a storm and, with some loops, close the endpoint.
Everything that goes wrong is counted in :class:`ListenerStats` by reason and
logged through :class:`DropLog` (one line per reason per interval).

Sockets are opened here, not by asyncio, so that SO_RCVBUF (SO_RCVBUFFORCE as
root, to pass rmem_max) is set before bind and IPv6 sockets are IPV6_V6ONLY
(so ``0.0.0.0:162`` and ``[::]:162`` can both be listened on). Already-open
sockets (systemd socket activation) are accepted as they are, apart from the
buffer size.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import os
import socket
import time
from collections.abc import Callable, Coroutine, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol, TypeVar

from trapd.bounded import BoundedCache
from trapd.listener import fastpath
from trapd.listener.config import ListenAddress, ListenerConfig
from trapd.listener.limits import Over, SlowPathBudget, SourceLimiter
from trapd.listener.raw import DEFER_ACK, RawNotification, Security
from trapd.listener.stats import DROP_REASONS, DropLog, ListenerStats

if TYPE_CHECKING:  # the v3 path imports cryptography and pysnmp: only when v3 users exist
    from trapd.listener.v3.path import V3Path
    from trapd.listener.v3.replay import ReplayMemory
    from trapd.listener.v3.usm import UsmFastPath

# The callback may return DEFER_ACK for a v2c inform: it then owns ``raw.ack`` and calls
# it once the notification is safe (the daemon: once its actions are journaled), or
# never, so that the sender retries.
OnNotification = Callable[[RawNotification], object]
Reply = Callable[[bytes, tuple[Any, ...]], None]

_T = TypeVar("_T")
_SOURCE_CACHE_MAX = 65536
_SECURITY_CACHE_MAX = 1024
_SECURITY_CACHE_BYTES = 1024 * 1024


@dataclass(frozen=True, slots=True)
class BoundSocket:
    """One listening socket: where it listens and the receive buffer the kernel granted.

    ``rcvbuf`` is what getsockopt(SO_RCVBUF) reports: Linux doubles the
    asked value for its bookkeeping and caps a plain SO_RCVBUF at
    net.core.rmem_max, so this is the figure that decides how many datagrams
    queue while trapd is busy.
    """

    address: ListenAddress
    family: int
    rcvbuf: int
    rcvbuf_requested: int
    inherited: bool = False


def set_receive_buffer(sock: socket.socket, size: int) -> int:
    """Ask for ``size`` bytes of receive buffer; return the effective size.

    As root SO_RCVBUFFORCE can exceed rmem_max; otherwise (or if that fails)
    SO_RCVBUF is capped by the kernel. Never raises for a refused size.
    """
    if size > 0:
        force = getattr(socket, "SO_RCVBUFFORCE", None)
        done = False
        if force is not None and os.geteuid() == 0:
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, size)
                done = True
            except OSError:
                done = False
        if not done:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))


def bind(sock: socket.socket, host: str, port: int) -> None:
    """``sock.bind``, with an error that says which address (EADDRINUSE alone does not)."""
    try:
        sock.bind((host, port))
    except OSError as exc:
        raise OSError(exc.errno, f"cannot listen on {ListenAddress(host, port)}: {exc.strerror}") from exc


def open_udp_socket(address: ListenAddress, receive_buffer: int) -> socket.socket:
    """A bound, non-blocking UDP socket for ``address`` with the receive buffer set before bind."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        set_receive_buffer(sock, receive_buffer)
        bind(sock, address.host, address.port)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _socket_address(sock: socket.socket) -> ListenAddress:
    name = sock.getsockname()
    return ListenAddress(str(name[0]), int(name[1]))


class SourceFilter:
    """allowed_sources as a cached verdict per source address string.

    The first datagram from an address pays for the network membership test;
    every later one is a dict lookup. The cache is cleared when it gets big
    (a spoofed flood of random sources must not grow memory without bound).
    """

    def __init__(self, networks: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> None:
        self._networks = tuple(networks)
        self._cache: dict[str, bool] = {}
        # No networks: everyone is allowed. A plain attribute, read for every datagram.
        self.open = not self._networks

    def allowed(self, host: str) -> bool:
        v = self._cache.get(host)
        if v is None:
            v = self._check(host)
            if len(self._cache) >= _SOURCE_CACHE_MAX:
                self._cache.clear()
            self._cache[host] = v
        return v

    def _check(self, host: str) -> bool:
        try:
            ip = ipaddress.ip_address(host.partition("%")[0])
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return any(ip in net for net in self._networks)


# Datagrams read per wake-up of one socket before the loop gets a turn (uvloop reads 32).
READ_BATCH = 64
_MAX_DATAGRAM = 65535

# The dispatcher's guaranteed share of the event loop in a storm (docs/dispatch.md, "Storms").
# While the sockets have more queued than a wake-up reads (a storm) and the dispatcher has due
# actions that waited longer than YIELD_LAG, the listener stops reading after every
# RECEIVE_SLICE of receive work, for a pause of the same length: the dispatcher gets at least
# half of the loop. If the dispatcher started actions faster while the listener paused than
# while it read (the loop was what they lacked) and still lags, the pause goes on, up to
# MAX_PAUSE_SLICES slices in a row, so receiving keeps at least 1/(1+MAX_PAUSE_SLICES) of the
# time. If it did not, and nothing received is still on its way to the journal (its actions wait
# for I/O: a slow Kea, a webhook), pausing does not help them, and the next IDLE_SKIP_SLICES
# slices are read without a pause. The kernel queues (and,
# when its buffer is full, drops and counts) what arrives meanwhile, as for any receiver slower
# than the load. Measured with bench_storm.py overload and tests/test_storm_dispatch.py
# (bench/README.md, "Actions during a storm").
RECEIVE_SLICE = 0.01
PAUSE_CHECK = 0.002  # a pause ends early once no startable action waits (Dispatcher.lag() == 0)
YIELD_LAG = 0.1
MAX_PAUSE_SLICES = 20
IDLE_SKIP_SLICES = 4
_FASTER = 1.5  # starts/s while paused over starts/s while reading that count as "it helped"


class DispatchLoad(Protocol):
    """What the listener asks of the dispatcher side to share the event loop with it in a storm."""

    def lag(self) -> float:
        """Seconds the oldest due action (that a worker could start) has waited to start."""
        ...

    def started(self) -> int:
        """Actions started so far."""
        ...

    def queued(self) -> int:
        """Outcomes and journal writes waiting ahead of the dispatcher (submit queue, writer)."""
        ...


class _Reader:
    """One socket, read from a callback of the event loop (``add_reader``), a batch per wake-up.

    Not an asyncio datagram endpoint: uvloop's cannot stop reading, and the listener must be
    able to, to give the dispatcher its share of the loop in a storm (:data:`RECEIVE_SLICE`).
    Its cost was measured against uvloop's endpoint before (bench/README.md, "Per-trap CPU",
    bench_receive.py): 41.5 against 41.3 us per trap with a backlog, 77.8 against 73.5 us
    paced at 3,000/s (about 6 % more when every wake-up reads a few datagrams).
    """

    __slots__ = ("_listener", "fd", "sock")

    def __init__(self, listener: Listener, sock: socket.socket) -> None:
        self._listener = listener
        self.sock = sock
        self.fd = sock.fileno()

    def readable(self) -> None:
        self._listener._read(self)

    def send(self, data: bytes, addr: tuple[Any, ...]) -> None:
        """Send through this socket. OSError (a full send buffer, an unreachable sender, port 0)
        goes to the caller, which counts it as a send error instead of a reply sent; the sender
        of an inform then retries."""
        self.sock.sendto(data, addr)


class Listener:
    """Receives SNMP notifications on trapd's UDP sockets and hands each to ``on_notification``.

    ``on_notification(raw)`` is called synchronously on the event loop for
    every accepted notification and must be cheap (the daemon normalizes and
    queues). For informs the acknowledgement is sent only after it returned
    without raising, so a failing hand-off makes the sender retry.

    ``sockets``: already-open UDP sockets (systemd socket activation) used in
    addition to ``config.listen``; pass ``bind_config=False`` to use only them.
    ``limiter``: per-source and global token buckets (trapd.listener.limits):
    over a limit a datagram is dropped before decoding unless it may clear a
    pending action, which is then decoded and let through if it does.
    ``accept_any_community``: v1/v2c with any community (``trapd listen``'s
    diagnostic mode); otherwise the community must be one of the configured.
    ``state_dir``: where pysnmp keeps snmpEngineBoots for trapd's v3 engine
    (default: pysnmp's choice, the temp directory).
    ``dispatch``: the dispatcher's load; in a storm the listener pauses reading
    while its lag exceeds :data:`YIELD_LAG` and pausing helps it (see
    :data:`RECEIVE_SLICE`). None: it never pauses.
    """

    def __init__(
        self,
        config: ListenerConfig,
        on_notification: OnNotification,
        *,
        sockets: Sequence[socket.socket] = (),
        bind_config: bool = True,
        stats: ListenerStats | None = None,
        limiter: SourceLimiter | None = None,
        accept_any_community: bool = False,
        drop_log_interval: float = 10.0,
        logger: Any = None,
        state_dir: Path | None = None,
        dispatch: DispatchLoad | None = None,
    ) -> None:
        self.config = config
        self.stats = stats or ListenerStats()
        self._on_notification = on_notification
        self._given_sockets = tuple(sockets)
        self._bind_config = bind_config
        self.limiter = limiter
        # Set per datagram: it was over a rate limit and is decoded only as a clearing candidate.
        self._over: Over | None = None
        self._any_community = accept_any_community
        self._state_dir = state_dir
        self._communities = frozenset(c.reveal().encode() for c in config.communities)
        self._securities: BoundedCache[bytes, Security] = BoundedCache(
            _SECURITY_CACHE_MAX, _SECURITY_CACHE_BYTES
        )
        self._sources = SourceFilter(config.allowed_sources)
        if logger is None:
            from trapd.service.logging import get_logger

            logger = get_logger("trapd.listener")
        self._log = logger
        self.drop_log = DropLog(self._emit_drop_line, drop_log_interval)
        self._v3: V3Path | None = None  # built in start() when v3 users exist (_build_v3)
        self._replays: ReplayMemory | None = None  # the v3 replay memory, for the listener's life
        # What may reach pysnmp's engine (~1.5 ms a message): its own small budget, by cost.
        self._slow_budget = SlowPathBudget(config.rate_limit)
        self._readers: list[_Reader] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._dispatch = dispatch
        self._reading = False
        self._storm_time = 0.0  # receive work since the last pause, in full batches
        self._storm_fd = -1  # the socket whose full batches are being counted
        self._pauses = 0  # pauses in a row
        self._skip = 0  # slices to read without pausing (the last pause did not help)
        # Since when, and from which count of started actions: reading, and the current pause.
        self._reading_since = (0.0, 0)
        self._pause_since = (0.0, 0)
        self._reading_rate = 0.0  # actions started per second while the listener read
        self._resume: asyncio.TimerHandle | None = None
        self.bound: list[BoundSocket] = []
        self._housekeeping: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------

    async def start(self) -> None:
        """Open (or adopt) the sockets and start receiving. Raises OSError if a bind fails."""
        loop = asyncio.get_running_loop()
        self._v3 = self._build_v3(self.config)
        opened: list[tuple[socket.socket, ListenAddress, bool, int]] = []
        try:
            if self._bind_config:
                for addr in self.config.listen:
                    sock = open_udp_socket(addr, self.config.receive_buffer)
                    opened.append((sock, _socket_address(sock), False, self.config.receive_buffer))
        except BaseException:
            for sock, *_ in opened:
                sock.close()
            raise
        for sock in self._given_sockets:
            # systemd may have granted more than rmem_max (ReceiveBuffer= as
            # PID 1): only ever raise an inherited socket's buffer.
            if sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) < self.config.receive_buffer:
                set_receive_buffer(sock, self.config.receive_buffer)
            sock.setblocking(False)
            opened.append((sock, _socket_address(sock), True, self.config.receive_buffer))
        self._loop = loop
        for sock, addr, inherited, asked in opened:
            self._readers.append(_Reader(self, sock))
            rcvbuf = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
            self.bound.append(BoundSocket(addr, sock.family, rcvbuf, asked, inherited))
        self._start_reading()
        self._housekeeping = asyncio.create_task(self._tick_forever(), name="trapd-listener-housekeeping")

    async def close(self) -> None:
        """Stop receiving; write the pending drop log lines."""
        if self._housekeeping is not None:
            self._housekeeping.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._housekeeping
            self._housekeeping = None
        self._stop_reading()
        if self._resume is not None:
            self._resume.cancel()
            self._resume = None
        for reader in self._readers:
            reader.sock.close()
        self._readers.clear()
        self.drop_log.flush_all()

    async def __aenter__(self) -> Listener:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def update_config(self, config: ListenerConfig) -> None:
        """Apply a reloaded configuration: communities, allowed sources and v3 users, all at once.

        Called on the event loop, so the next datagram sees either the old
        settings or the new ones, never a mix. The sockets stay as they are:
        listen addresses and the receive buffer are fixed at start (rebinding
        port 162 needs a privilege trapd no longer has after start-up). A new
        V3Receiver is built only when the v3 users or the engine ID changed
        (it starts a fresh engineTime); if building it raises, nothing changed.
        """
        v3 = self._v3
        if config.v3_users != self.config.v3_users or config.engine_id != self.config.engine_id:
            v3 = self._build_v3(config)
        self._v3 = v3
        self._communities = frozenset(c.reveal().encode() for c in config.communities)
        self._sources = SourceFilter(config.allowed_sources)
        if config.rate_limit != self.config.rate_limit:
            self._slow_budget = SlowPathBudget(config.rate_limit)
        self.config = replace(config, listen=self.config.listen, receive_buffer=self.config.receive_buffer)

    def _build_v3(self, config: ListenerConfig) -> V3Path | None:
        """The v3 receive path for ``config`` (None without v3 users): the one place it is built.

        A reload's new path keeps what the current one learned of the sender engines.
        """
        if not config.v3_users:
            return None
        from trapd.listener.v3.path import V3Path
        from trapd.listener.v3.replay import for_listener

        if self._replays is None:
            self._replays = for_listener()
        return V3Path.build(
            config.v3_users,
            self._deliver,
            self.stats,
            self.drop_log.note,
            engine_id=config.engine_id,
            state_dir=self._state_dir,
            replays=self._replays,
            admit=self._admit_slow,
            previous=self._v3,
        )

    def _admit_slow(self, host: str, authentic: bool, size: int) -> str | None:
        """May this v3 message go to pysnmp's engine? None: yes; else the budget that is spent.
        ``authentic``: its MAC was checked (it may use the budget's reserve); ``size``: octets."""
        return self._slow_budget.admit(host, authentic, size)

    @property
    def _usm(self) -> UsmFastPath | None:
        """The fast USM path of the current v3 path (tests and benches read its counters)."""
        return self._v3.fast if self._v3 is not None else None

    @property
    def sockets(self) -> list[socket.socket]:
        """The receiving sockets (for per-socket metrics); empty before start and after close."""
        return [r.sock for r in self._readers]

    @property
    def engine_id(self) -> bytes | None:
        """trapd's SNMPv3 engine ID (informs are sent to it); None when no v3 user is configured."""
        return self._v3.engine_id if self._v3 is not None else None

    async def _tick_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                if self._v3 is not None:
                    self._v3.tick()
                self.drop_log.flush()
            except Exception:
                self._log.exception("listener housekeeping failed")

    # -- reading, and the dispatcher's share of the loop --------------------

    def _start_reading(self) -> None:
        if self._reading or self._loop is None:
            return
        self._reading = True
        self._reading_since = (
            time.perf_counter(),
            self._dispatch.started() if self._dispatch is not None else 0,
        )
        for reader in self._readers:
            self._loop.add_reader(reader.fd, reader.readable)

    def _stop_reading(self) -> None:
        if not self._reading or self._loop is None:
            return
        self._reading = False
        for reader in self._readers:
            self._loop.remove_reader(reader.fd)

    def _read(self, reader: _Reader) -> None:
        """The socket is readable: up to READ_BATCH datagrams, each through :meth:`handle_datagram`."""
        began = time.perf_counter()
        recvfrom = reader.sock.recvfrom
        handle = self.handle_datagram
        reply = reader.send
        n = 0
        while n < READ_BATCH:
            try:
                data, addr = recvfrom(_MAX_DATAGRAM)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # an ICMP error reported on the socket: harmless, like error_received
                self.stats.send_errors += 1
                break
            n += 1
            handle(data, addr, reply)
        if n < READ_BATCH:
            if reader.fd == self._storm_fd:
                self._storm_time = 0.0  # drained: not a storm, whatever the dispatcher's lag
            return
        self._storm_fd = reader.fd
        self._storm_time += time.perf_counter() - began
        if self._storm_time >= RECEIVE_SLICE and self._dispatch is not None:
            self._storm_time = 0.0
            if self._skip > 0:
                self._skip -= 1
            elif self._dispatch.lag() > YIELD_LAG:
                now, started = time.perf_counter(), self._dispatch.started()
                since, started0 = self._reading_since
                self._reading_rate = (started - started0) / max(now - since, 1e-6)
                self._stop_reading()
                self._pause(now, started)

    def _pause(self, now: float, started: int) -> None:
        """Leave the loop to the rest (the dispatcher) for one slice."""
        assert self._loop is not None
        self.stats.receive_pauses += 1
        self._pause_since = (now, started)
        self._resume = self._loop.call_later(PAUSE_CHECK, self._pause_check)

    def _pause_check(self) -> None:
        """During a pause: read again as soon as no startable action waits; else at the slice's end."""
        self._resume = None
        dispatch = self._dispatch
        assert dispatch is not None and self._loop is not None
        if dispatch.lag() == 0.0:
            self._pauses = 0
            self._start_reading()  # caught up: a longer pause would leave the loop idle
        elif time.perf_counter() - self._pause_since[0] < RECEIVE_SLICE:
            self._resume = self._loop.call_later(PAUSE_CHECK, self._pause_check)
        else:
            self._pause_ended()

    def _pause_ended(self) -> None:
        dispatch = self._dispatch
        assert dispatch is not None
        now, started = time.perf_counter(), dispatch.started()
        since, started0 = self._pause_since
        paused_rate = (started - started0) / max(now - since, 1e-6)
        self._pauses += 1
        if paused_rate <= _FASTER * self._reading_rate and not dispatch.queued():
            # Nothing started faster with the loop to itself, and nothing received earlier is
            # still on its way to the journal: the actions wait for something else (I/O), and
            # pausing only loses traps. Read on for a while.
            self._skip = IDLE_SKIP_SLICES
        elif self._pauses < MAX_PAUSE_SLICES and dispatch.lag() > YIELD_LAG:
            self._pause(now, started)
            return
        self._pauses = 0
        self._start_reading()

    # -- receive path ------------------------------------------------------

    def handle_datagram(
        self, data: bytes, addr: tuple[Any, ...], reply: Callable[[bytes, tuple[Any, ...]], None]
    ) -> None:
        """One datagram from ``addr``; ``reply`` sends back through the receiving socket. Never raises."""
        stats = self.stats
        stats.datagrams += 1
        host: str = addr[0]
        try:
            if not self._sources.open and not self._sources.allowed(host):
                self._drop("source-not-allowed", None, host)
                return
            if self.limiter is not None:
                over = self._over = self.limiter.check(host, data)
                if over is not None and not over.probe:
                    self._drop("rate-limited", over.detail, host)
                    return
            try:
                msg = fastpath.decode_unless_v3(data)  # the header is read once, for both
            except fastpath.Rejected as exc:
                self._drop_rejected(exc, host)
                return
            if msg is None:  # SNMPv3
                if self._v3 is None:
                    self._drop("unknown-user", "no-v3-users", host)
                    return
                self._v3.receive(data, addr, reply)
                return
            if not self._any_community and msg.community not in self._communities:
                self._drop("unknown-community", None, host)
                return
            security = self._securities.get(msg.community)
            if security is None:
                security = self._security_of(msg.community)
            # Positional: keyword arguments cost a dict of 13 per trap (RawNotification's field order).
            raw = RawNotification(
                msg.version,
                "inform" if msg.pdu == "inform" else "trap",
                host,
                int(addr[1]),
                security,
                msg.varbinds,
                time.time(),
                msg.request_id,
                msg.v1_enterprise,
                msg.v1_agent_addr,
                msg.v1_generic_trap,
                msg.v1_specific_trap,
                msg.v1_timestamp,
            )
            if msg.pdu == "inform":
                raw.ack = lambda: self._acknowledge(msg, addr, reply)
            stats.received[msg.version] += 1
            deferred = self._deliver(raw)
            if deferred is False:
                return
            if raw.ack is not None and deferred is not DEFER_ACK:
                raw.ack()
        except Exception as exc:  # a bug must cost one datagram, not the listener
            self._drop("malformed", f"internal-{type(exc).__name__}", host)

    def _security_of(self, community: bytes) -> Security:
        """The Security of v1/v2c traps with this community: one shared (immutable) object per community.

        Building and decoding it per trap was a tenth of what the listener spent
        on one. Only accepted communities get here, so the table holds the
        configured ones; in ``accept_any_community`` mode it is emptied when
        it passes 1,024 entries or 1 MiB, like the source cache.
        """
        security = Security(community=community.decode("utf-8", "backslashreplace"))
        # The community bytes and their text: up to 64 KB each in accept_any_community mode.
        self._securities.put(community, security, 300 + 5 * len(community))
        return security

    def _acknowledge(
        self,
        msg: fastpath.FastMessage,
        addr: tuple[Any, ...],
        reply: Callable[[bytes, tuple[Any, ...]], None],
    ) -> None:
        """Send the Response to a v2c inform (now, or later when the callback deferred it)."""
        try:
            response, too_big = fastpath.inform_response(msg, largest_payload(addr))
            reply(response, addr)
            self.stats.inform_responses += 1
            self.stats.inform_too_big += too_big
        except Exception:
            self.stats.send_errors += 1

    def _deliver(self, raw: RawNotification) -> object:
        """Hand ``raw`` to the callback: False if dropped, else what the callback returned."""
        over = self._over
        if over is not None:
            self._over = None
            if self.limiter is not None and not self.limiter.exempt(raw, over):
                self.stats.received[raw.version] -= 1  # counted as decoded; it is a drop instead
                self._drop("rate-limited", over.detail, raw.source)
                return False
        try:
            answer = self._on_notification(raw)
        except Exception:
            self.stats.callback_errors += 1
            self._log.exception("notification callback failed", source=raw.source)
            return False
        return True if answer is None else answer

    def _drop_rejected(self, exc: fastpath.Rejected, host: str) -> None:
        reason = exc.reason if exc.reason in DROP_REASONS else "malformed"
        self._drop(reason, exc.reason, host)

    def _drop(self, reason: str, detail: str | None, host: str) -> None:
        self.stats.drop(reason, detail)
        self.drop_log.note(reason, detail, host)

    def _emit_drop_line(self, event: str, fields: dict[str, Any]) -> None:
        self._log.warning(event, **fields)


# The largest UDP payload to a peer: 65,535 less the UDP header and, over IPv4, the IP header.
_LARGEST_IPV4_PAYLOAD: Final = 65507


def largest_payload(addr: tuple[Any, ...]) -> int:
    """The largest datagram that can be sent to ``addr`` (an IPv4-mapped IPv6 address is IPv4)."""
    host = str(addr[0])
    if ":" not in host or (host.startswith("::ffff:") and "." in host):
        return _LARGEST_IPV4_PAYLOAD
    return fastpath.MAX_MESSAGE


def best_loop_factory() -> Callable[[], asyncio.AbstractEventLoop]:
    """uvloop's event loop when installed (about 1.5x the receive rate of asyncio's), else asyncio's."""
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def run_on_best_loop(main: Coroutine[Any, Any, _T]) -> _T:
    """``asyncio.run`` on the best available loop."""
    with asyncio.Runner(loop_factory=best_loop_factory()) as runner:
        return runner.run(main)
