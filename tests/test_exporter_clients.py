"""The metrics and health endpoint under clients that misbehave, against a real ``trapd run``.

A Prometheus scrape or a ``curl /healthz`` from a monitoring check must get
its answer while other clients (a port scanner, a stuck script, a local user
who opens connections and sends nothing) hold connections to the same port.
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator

import pytest
from daemon_harness import TrapdDaemon, eventually

RULES = "rules:\n  - {name: r, match: {notification: linkDown}, actions: [{action: log, message: x}]}\n"
CAP = 16  # MetricsServer's max_connections default


@pytest.fixture(scope="module")
def trapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrapdDaemon]:
    d = TrapdDaemon.start(tmp_path_factory.mktemp("trapd"), rules=RULES)
    try:
        yield d
    finally:
        d.stop()
        d.close()


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_idle_and_slow_connections_do_not_lock_out_a_scrape(trapd: TrapdDaemon) -> None:
    """4x the cap of connections that send nothing or trickle a header: /healthz and /metrics answer."""
    assert trapd.proc is not None and trapd.metrics_port is not None
    base_fds = open_fds(trapd.proc.pid)
    with contextlib.ExitStack() as stack:
        for i in range(4 * CAP):
            s = stack.enter_context(socket.create_connection(("127.0.0.1", trapd.metrics_port), timeout=5))
            if i % 2:
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")  # a head never finished
        # The server has taken them all in (they count against its cap) before the real client comes.
        eventually(lambda: open_fds(trapd.proc.pid) >= base_fds + CAP if trapd.proc else False, timeout=10)
        for path in ("/healthz", "/metrics", "/healthz"):
            started = time.monotonic()
            status, body = trapd.http_get(path, timeout=10)
            assert status == 200, body
            # Well before the 5 s request timeout would have freed a slot.
            assert time.monotonic() - started < 3.0
        # Still bounded: the idle ones were closed, not all kept.
        assert open_fds(trapd.proc.pid) <= base_fds + CAP + 2
