"""The metrics and health endpoint under clients that misbehave, against a real ``trapd run``.

A Prometheus scrape or a ``curl /healthz`` from a monitoring check must get
its answer while other clients (a port scanner, a stuck script, a local user
who opens connections and sends nothing) hold connections to the same port.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_harness import TrapdDaemon, eventually
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry

from trapd.listener.config import ListenAddress
from trapd.listener.udp import best_loop_factory
from trapd.service.exporter import MetricsServer

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
        pid = trapd.proc.pid

        def taken_in() -> None:  # the server has them (they count against its cap) before the real client
            assert open_fds(pid) >= base_fds + CAP

        eventually(taken_in, timeout=10)
        for path in ("/healthz", "/metrics", "/healthz"):
            # Before: refused at once ("Remote end closed connection without response").
            status, body = trapd.http_get(path, timeout=10)
            assert status == 200, body
        # Still bounded: the idle ones were closed, not all kept.
        assert open_fds(pid) <= base_fds + CAP + 4


def _raw_exchange(port: int, request: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
        return out


def test_a_request_with_bare_newlines_is_answered_at_once(trapd: TrapdDaemon) -> None:
    """``printf 'GET /healthz HTTP/1.0\\n\\n' | nc`` and scripts like it (RFC 9112 2.2: a recipient
    MAY take a lone LF as a line end): answered, not left 5 s without a word."""
    assert trapd.metrics_port is not None
    for request in (
        b"GET /healthz HTTP/1.0\n\n",
        b"GET /metrics HTTP/1.1\nHost: x\r\n\n",
        b"\r\nGET / HTTP/1.0\r\n\r\n",
    ):
        started = time.monotonic()
        answer = _raw_exchange(trapd.metrics_port, request)
        assert answer.startswith(b"HTTP/1.1 200 OK\r\n"), (request, answer[:200])
        assert time.monotonic() - started < 3.0, request


class _HugeCollector:
    """One family with an 8 MiB help text: a response far beyond what the kernel's socket buffers hold."""

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("huge", "h" * (8 << 20), value=1)


def _socket_fds() -> int:
    n = 0
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if os.readlink(f"/proc/self/fd/{fd}").startswith("socket:"):
                n += 1
    return n


@pytest.mark.parametrize(
    "loop_factory", [asyncio.new_event_loop, best_loop_factory()], ids=["asyncio", "best"]
)
def test_a_client_that_stops_reading_is_cut_off_after_the_timeout(
    loop_factory: Callable[[], asyncio.AbstractEventLoop],
) -> None:
    """Not held for ever with the rest of the response in memory (and a descriptor) for it.

    On asyncio's loop and on the one ``trapd run`` uses (uvloop when installed).
    """
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_stalled_client())


async def _stalled_client() -> None:
    registry = CollectorRegistry()
    registry.register(_HugeCollector())  # type: ignore[arg-type]
    server = MetricsServer(registry, port=0, request_timeout=0.5)
    await server.start()
    try:
        before = _socket_fds()
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.setblocking(False)
        loop = asyncio.get_running_loop()
        await loop.sock_connect(client, ("127.0.0.1", server.port))
        await loop.sock_sendall(client, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        # The server's side of the connection goes (the client's stays): polled, not a fixed wait.
        deadline = time.monotonic() + 20
        while _socket_fds() > before + 1 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert _socket_fds() == before + 1, "the server still holds a client that stopped reading"
        got = 0
        with contextlib.suppress(ConnectionError):
            while chunk := await asyncio.wait_for(loop.sock_recv(client, 1 << 16), 5):
                got += len(chunk)
        assert got < 8 << 20
        client.close()
    finally:
        await server.close()


async def test_workers_are_asked_for_counters_only_for_what_needs_them_and_once_for_concurrent_scrapes() -> (
    None
):
    """``refresh`` (with service.workers > 1: a round trip to every worker) is not run for a 404, a
    POST or garbage, and scrapes that arrive while one is running share it."""
    calls = 0

    async def refresh() -> None:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.3)

    server = MetricsServer(CollectorRegistry(), port=0, refresh=refresh)
    await server.start()
    try:
        for request in (
            b"GET /nope HTTP/1.1\r\n\r\n",
            b"POST /metrics HTTP/1.1\r\n\r\n",
            b"DELETE /healthz HTTP/1.1\r\n\r\n",
            b"garbage\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
        ):
            status, _ = await _exchange(server.port, request)
            assert status in (200, 400, 404, 405)
        assert calls == 0
        answers = await asyncio.gather(
            *(_exchange(server.port, b"GET /metrics HTTP/1.1\r\n\r\n") for _ in range(6)),
            *(_exchange(server.port, b"GET /healthz HTTP/1.1\r\n\r\n") for _ in range(6)),
        )
        assert [status for status, _ in answers] == [200] * 12
        assert calls == 1
        # A scrape after that one finished gets a fresh one.
        assert (await _exchange(server.port, b"HEAD /metrics HTTP/1.0\r\n\r\n"))[0] == 200
        assert calls == 2
    finally:
        await server.close()


async def _exchange(port: int, request: bytes) -> tuple[int, bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    raw = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    return int(raw.split(b" ", 2)[1]), raw


def test_a_worker_that_dies_is_counted_where_prometheus_sees_it(tmp_path: Path) -> None:
    """With service.workers > 1 a worker that crashes is restarted by the supervisor: systemd
    sees nothing (the unit stays up, NRestarts does not move) and /healthz is 503 only until the
    new one is ready. A worker crashing every few minutes was visible in the log alone; the
    metric trapd_worker_restarts_total lets an alert say it."""
    d = TrapdDaemon.start(tmp_path, rules=RULES, config={"service": {"workers": 2}})
    try:
        assert d.metric("trapd_worker_restarts_total") == 0
        assert d.metric("trapd_workers_up") == 2
        pids = {int(e["worker"]): int(e["pid"]) for e in d.logs("worker started")}
        os.kill(pids[1], signal.SIGKILL)
        d.wait_log(lambda e: e.get("event") == "worker ready" and e.get("worker") == 1, 30)
        assert d.wait_metric("trapd_worker_restarts_total", 1) == 1
        assert d.wait_metric("trapd_workers_up", 2) == 2
        assert d.stop() == 0
    finally:
        d.close()


async def test_a_target_in_absolute_form_is_served() -> None:
    """``GET http://host:port/metrics`` (RFC 9112 3.2.2: a server MUST accept the absolute form;
    a forward proxy sends it, and so do some check scripts): the same answer, not a 404."""
    server = MetricsServer(CollectorRegistry(), port=0)
    await server.start()
    try:
        for target in (f"http://127.0.0.1:{server.port}/healthz", "HTTP://dhcp1.example.net/metrics?x=1"):
            status, raw = await _exchange(server.port, f"GET {target} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert status == 200, raw
        assert (await _exchange(server.port, b"GET http://x/nope HTTP/1.1\r\n\r\n"))[0] == 404
    finally:
        await server.close()


async def test_a_big_scrape_is_rendered_off_the_event_loop() -> None:
    """100,000 rules that each matched once (per-port rules on a large site, after some days):
    rendering /metrics took about a second on the 2-core test machine, all of it on the event
    loop that receives traps, at every scrape, and a local client asking in a loop kept it busy
    all the time. The snapshot is still taken on the loop (a copy of the counters, consistent);
    the rendering runs in a thread, one at a time, and the loop keeps turning."""
    from trapd.config import Config
    from trapd.service.config import ServiceConfig
    from trapd.service.health import Health
    from trapd.service.lifecycle import start_metrics
    from trapd.service.metrics import DaemonSnapshot

    rules = 100_000
    snap = DaemonSnapshot(matched={f"port-{i}-down": 1 for i in range(rules)})
    config = Config().with_overrides(service=ServiceConfig(metrics_listen=ListenAddress("127.0.0.1", 0)))
    server = await start_metrics(config, lambda: snap, lambda: [], lambda: Health(True))
    assert server is not None
    gaps: list[float] = []

    async def tick() -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.005)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    ticker = asyncio.create_task(tick())
    try:
        started = time.monotonic()
        answers = await asyncio.gather(
            *(_exchange(server.port, b"GET /metrics HTTP/1.1\r\n\r\n") for _ in range(2))
        )
        took = time.monotonic() - started
        for status, raw in answers:
            assert status == 200
            assert raw.count(b"trapd_rule_matches_total{") == rules
        # Two renders of about a second each; the loop never stood still for more than a slice.
        assert max(gaps) < took / 3, (round(max(gaps), 3), round(took, 3))
    finally:
        ticker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await ticker
        await server.close()
