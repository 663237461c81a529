"""The tests' own port picker (tests/ports.py): what keeps a daemon from meeting 'address in use'."""

from __future__ import annotations

import socket
from pathlib import Path

from ports import free_port


def test_ports_are_outside_the_kernels_ephemeral_range() -> None:
    # The kernel gives ports of that range to every outgoing connection and datagram (snmptrap's
    # source port): one of them could take a port between its pick and the daemon's bind.
    low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    picked = [free_port() for _ in range(50)] + [free_port(socket.SOCK_STREAM) for _ in range(50)]
    assert [p for p in picked if low <= p <= high] == []
    assert len(set(picked)) == len(picked)  # and no port twice in a row of calls


def test_a_port_someone_has_bound_is_skipped() -> None:
    first = free_port(socket.SOCK_STREAM)
    taken: list[socket.socket] = []
    try:
        # Bind the next ports this process would pick (its walk is in order), then ask.
        for port in range(first + 1, first + 6):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", port))
            taken.append(s)
        got = free_port(socket.SOCK_STREAM)
        assert got not in {s.getsockname()[1] for s in taken}
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        probe.bind(("127.0.0.1", got))
        probe.close()
    finally:
        for s in taken:
            s.close()
