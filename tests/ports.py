"""Ports for the servers tests start (trapd's listener and metrics, Kea's agents, fake servers).

Not port 0's pick: the kernel takes those from the ephemeral range (ip_local_port_range,
32768-60999 here), the same range it takes the source port of every outgoing connection and
datagram from (snmptrap's, httpx's, another test's client), so between a test closing its probe
socket and the daemon binding the port, something else could get it: the daemon then failed to
start with "address in use", one run in many on a loaded machine. These ports lie below that
range, where only an explicit bind takes one. Each pytest-xdist worker has a slice of its own,
and each process walks its slice from a start of its own, so two calls never give the same port
until the slice wraps; a port found taken (another run of the suite on the machine) is skipped.
"""

from __future__ import annotations

import itertools
import os
import socket

LOW, HIGH = 20000, 32000  # below the ephemeral range (check /proc/sys/net/ipv4/ip_local_port_range)


def _slice() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    index = int(worker[2:]) if worker[2:].isdigit() else 0
    size = (HIGH - LOW) // max(count, 1)
    start = LOW + (index % max(count, 1)) * size
    return range(start, start + size)


_SLICE = _slice()
_NEXT = itertools.count((os.getpid() * 7919) % len(_SLICE))


def free_port(kind: int = socket.SOCK_DGRAM, host: str = "127.0.0.1") -> int:
    """A port on ``host`` (an IPv4 or IPv6 address) that nothing has bound (UDP by default, or
    TCP), not in the ephemeral range."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(len(_SLICE)):
        port = _SLICE[next(_NEXT) % len(_SLICE)]
        with socket.socket(family, kind) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
        return port
    raise RuntimeError(f"no free port in {_SLICE.start}-{_SLICE.stop - 1}")
