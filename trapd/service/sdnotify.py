"""sd_notify(3) over the NOTIFY_SOCKET datagram socket, and a watchdog task.

The protocol is one AF_UNIX datagram of ``KEY=VALUE`` lines per message, so a
few lines of socket code do what libsystemd or the ``sdnotify`` package would;
trapd takes no dependency for it. Without ``NOTIFY_SOCKET`` (a terminal, a test,
another init) every call is a no-op, so the daemon calls it unconditionally.

Lifecycle as systemd sees it (``Type=notify``)::

    start  -> ready("listening on ...")        READY=1 + STATUS=
    running-> status("1234 received, ...")     STATUS=  (every status_interval)
             watchdog()                        WATCHDOG=1 (see run_watchdog)
    SIGHUP -> reloading() ... ready()          RELOADING=1 + MONOTONIC_USEC=, then READY=1
    SIGTERM-> stopping()                       STOPPING=1

About reload and systemd versions: ``RELOADING=1`` followed by ``READY=1``
has been understood by ``Type=notify`` units for a long time (systemd shows
the unit as "reloading" in between). systemd 253 added ``Type=notify-reload``,
which additionally requires ``MONOTONIC_USEC=`` (CLOCK_MONOTONIC when the
reload started) next to ``RELOADING=1``. Debian 12 ships systemd 252, which
has no ``notify-reload`` and ignores unknown fields, so trapd always sends
``MONOTONIC_USEC=``: correct for both, and the unit can move to
``notify-reload`` on newer systems without code changes.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping

from trapd.cancelling import cancel_and_wait
from trapd.service.logging import get_logger

log = get_logger(__name__)


def _socket_address(value: str) -> str | bytes | None:
    """NOTIFY_SOCKET as a sendto() address: a path, or '@name' for the abstract namespace."""
    if not value:
        return None
    if value.startswith("@"):
        # Linux abstract namespace: a leading NUL instead of '@'.
        return b"\0" + value[1:].encode()
    if value.startswith("/"):
        return value
    # systemd >= 254 also allows vsock:CID:PORT; trapd runs on the host, so not supported.
    return None


# The fields that change the unit's state in systemd's eyes. One of them lost is not a lost STATUS
# line: without READY=1 systemd kills a running trapd at its start timeout, without the READY=1
# that ends a reload `systemctl reload` waits, and the unit stays "reloading".
STATE_FIELDS = ("READY=1", "RELOADING=1", "STOPPING=1")


class Notifier:
    """Talks to the service manager; every method is a no-op without NOTIFY_SOCKET.

    Send failures are otherwise ignored (a service manager that went away must never take the
    daemon down with it), and a lost STATUS= or WATCHDOG=1 is logged once. A lost state message
    (:data:`STATE_FIELDS`: systemd's socket away for a moment while it re-executes, or its buffer
    full) is kept and sent with the next message that goes (the status loop's STATUS= every
    ``status_interval``), unless a newer state message replaced it; each such loss is logged.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._socket_name = env.get("NOTIFY_SOCKET", "")
        self._address = _socket_address(self._socket_name)
        self._sock: socket.socket | None = None
        self._warned = False
        self._pending: tuple[str, ...] = ()  # a state message not delivered yet, as it was made
        self._watchdog_usec = self._parse_watchdog(env)

    @staticmethod
    def _parse_watchdog(env: Mapping[str, str]) -> int | None:
        usec = env.get("WATCHDOG_USEC", "")
        if not usec.isdigit() or int(usec) == 0:
            return None
        # WATCHDOG_PID names the process the watchdog is meant for; a child
        # that inherited the environment must not ping on its parent's behalf.
        pid = env.get("WATCHDOG_PID", "")
        if pid and (not pid.isdigit() or int(pid) != os.getpid()):
            return None
        return int(usec)

    @property
    def enabled(self) -> bool:
        """True when a service manager listens (NOTIFY_SOCKET was set to a usable address)."""
        return self._address is not None

    def send(self, *fields: str) -> bool:
        """Send one message made of ``KEY=VALUE`` fields; True if it was handed to the socket.

        A state message still pending goes first in the same datagram, or is dropped when
        ``fields`` are a newer state message.
        """
        if self._address is None:
            return False
        state = next((f for f in fields if f in STATE_FIELDS), None)
        pending = self._pending if state is None else ()
        message = "\n".join((*pending, *fields)).encode("utf-8", "replace")
        try:
            if self._sock is None:
                # Non-blocking: this runs on the event loop, and a manager that
                # stops reading (a full socket buffer) must cost one lost
                # STATUS line, never a frozen daemon.
                self._sock = socket.socket(
                    socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK
                )
            self._sock.sendto(message, self._address)
        except OSError as exc:
            if state is not None:
                self._pending = fields
                log.warning(
                    f"sd_notify failed: {state} lost, sent again with the next message",
                    error=str(exc),
                    socket=self._socket_name,
                )
            elif not self._warned:
                self._warned = True
                log.warning("sd_notify failed", error=str(exc), socket=self._socket_name)
            return False
        if self._pending and (pending or state is not None):
            if pending:
                log.info("sd_notify: a lost state message delivered", fields=list(pending))
            self._pending = ()
        return True

    def ready(self, status: str | None = None) -> bool:
        """READY=1: sockets bound, journal open, traps are being taken (also ends a reload)."""
        fields = ["READY=1"]
        if status is not None:
            fields.append(_status_field(status))
        return self.send(*fields)

    def status(self, text: str) -> bool:
        """STATUS=: one line shown by ``systemctl status`` (newlines are flattened)."""
        return self.send(_status_field(text))

    def reloading(self, status: str | None = None) -> bool:
        """RELOADING=1 with MONOTONIC_USEC= (required by Type=notify-reload, harmless before 253)."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        fields = ["RELOADING=1", f"MONOTONIC_USEC={usec}"]
        if status is not None:
            fields.append(_status_field(status))
        return self.send(*fields)

    def stopping(self, status: str | None = None) -> bool:
        """STOPPING=1: the daemon is shutting down (draining actions)."""
        fields = ["STOPPING=1"]
        if status is not None:
            fields.append(_status_field(status))
        return self.send(*fields)

    def watchdog(self) -> bool:
        """WATCHDOG=1: one keep-alive ping."""
        return self.send("WATCHDOG=1")

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC=: ask for more time to start or stop (a long drain of actions)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={max(1, int(seconds * 1_000_000))}")

    def watchdog_interval(self) -> float | None:
        """WatchdogSec in seconds when the watchdog is on for this process, else None."""
        return None if self._watchdog_usec is None else self._watchdog_usec / 1_000_000

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def _status_field(text: str) -> str:
    # A newline would end the field and start a bogus KEY=VALUE line.
    return "STATUS=" + " ".join(text.split())


async def run_watchdog(notifier: Notifier, healthy: Callable[[], bool] | None = None) -> None:
    """Ping WATCHDOG=1 at half of WatchdogSec, for as long as the event loop runs and is healthy.

    The pings come from a task on the daemon's own event loop, so a loop that
    is blocked (a runaway callback, a deadlock) stops them and systemd
    restarts the service. ``healthy`` adds the daemon's own opinion: while it
    returns False no ping is sent (a wedged journal, say). Returns at once
    when there is no watchdog; cancel the task to stop it.
    """
    interval = notifier.watchdog_interval()
    if interval is None:
        return
    period = interval / 2
    while True:
        ok = True
        if healthy is not None:
            try:
                ok = healthy()
            except Exception:
                log.exception("watchdog health check raised")
                ok = False
        if ok:
            notifier.watchdog()
        await asyncio.sleep(period)


def start_watchdog(
    notifier: Notifier, healthy: Callable[[], bool] | None = None
) -> asyncio.Task[None] | None:
    """Start :func:`run_watchdog` as a task on the running loop; None when there is no watchdog."""
    if notifier.watchdog_interval() is None:
        return None
    return asyncio.get_running_loop().create_task(run_watchdog(notifier, healthy), name="trapd-watchdog")


async def stop_watchdog(task: asyncio.Task[None] | None) -> None:
    """Cancel a task from :func:`start_watchdog` and wait for it."""
    if task is None:
        return
    await cancel_and_wait([task])
