"""Sockets handed over by systemd (sd_listen_fds(3)), for trapd.socket.

With socket activation systemd binds UDP 162 itself (as root, with the
``ReceiveBuffer=`` it was told, which as PID 1 is not capped by
net.core.rmem_max) and passes the bound sockets to trapd as file descriptors
3, 4, ... The environment says how many (``LISTEN_FDS``) and for which process
(``LISTEN_PID``); ``LISTEN_FDNAMES`` optionally names them.

Traps that arrive while trapd restarts wait in the socket's buffer instead
of being answered with ICMP port-unreachable, which is the main reason to use
it for a trap receiver.
"""

from __future__ import annotations

import os
import socket
from collections.abc import MutableMapping

SD_LISTEN_FDS_START = 3
_ENV_KEYS = ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES")


def inherited_sockets(
    environ: MutableMapping[str, str] | None = None, *, unset_environment: bool = True
) -> list[socket.socket]:
    """The sockets systemd passed to this process, in order; [] without socket activation.

    Each file descriptor is wrapped in a :class:`socket.socket` (family and
    type are read from the descriptor), made close-on-exec so that programs
    run by actions do not inherit port 162, and left in blocking mode (the
    listener sets what it needs). Descriptors that are not IPv4/IPv6 datagram
    sockets are left alone: a stream socket (``ListenStream=`` where
    ``ListenDatagram=`` belongs) stays readable when the listener's recvfrom
    fails on it, which spun the event loop. ``unset_environment`` removes the LISTEN_* variables, as
    sd_listen_fds(1) does, so child processes do not believe the descriptors
    are theirs.
    """
    env = os.environ if environ is None else environ
    pid, count = env.get("LISTEN_PID", ""), env.get("LISTEN_FDS", "")
    if unset_environment:
        for key in _ENV_KEYS:
            env.pop(key, None)
    if not pid.isdigit() or int(pid) != os.getpid() or not count.isdigit():
        return []
    sockets: list[socket.socket] = []
    for fd in range(SD_LISTEN_FDS_START, SD_LISTEN_FDS_START + int(count)):
        try:
            sock = socket.socket(fileno=fd)
        except OSError:
            continue  # not a socket (ENOTSOCK) or already closed
        if sock.type != socket.SOCK_DGRAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
            sock.detach()  # not ours to use, nor to close
            continue
        sock.set_inheritable(False)
        sockets.append(sock)
    return sockets


def describe(sock: socket.socket) -> str:
    """``host:port`` (``[v6]:port``) a socket is bound to, for logs and STATUS=."""
    try:
        name = sock.getsockname()
    except OSError:
        return f"fd {sock.fileno()}"
    if sock.family == socket.AF_INET6:
        return f"[{name[0]}]:{name[1]}"
    if sock.family == socket.AF_INET:
        return f"{name[0]}:{name[1]}"
    return str(name)
