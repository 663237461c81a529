"""Metrics and /healthz scraped over real HTTP; kernel counters read from a real socket that overflows."""

from __future__ import annotations

import asyncio
import json
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from trapd.dispatch.stats import LATENCY_BUCKETS, DispatchStats, Histogram
from trapd.service.exporter import MetricsServer
from trapd.service.health import Health
from trapd.service.metrics import (
    DaemonSnapshot,
    TrapdCollector,
    build_registry,
    read_socket_queues,
    status_line,
)
from trapd.service.snapshots import from_wire, sum_snapshots, to_wire


async def http(port: int, request: bytes, host: str = "127.0.0.1") -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(request)
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def get(path: str, *extra: str) -> bytes:
    return (f"GET {path} HTTP/1.1\r\nHost: x\r\n" + "".join(f"{h}\r\n" for h in extra) + "\r\n").encode()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def busy_snapshot() -> DaemonSnapshot:
    hist = Histogram((0.01, 0.1, 1.0))
    for v in (0.005, 0.05, 0.05, 0.5, 7.0):
        hist.observe(v)
    return DaemonSnapshot(
        received={("v2c", "access"): 1200, ("v3", "core"): 7, ("v1", "default"): 1},
        dropped={"malformed": 3, "unknown-community": 40},
        dropped_detail={("malformed", "bad-length"): 3},
        matched={"port-down": 310, "mac-move": 2},
        rejected={("port-down", "parameter"): 4, ("mac-move", "decoder"): 1},
        unmatched=896,
        actions={("kea.lease_del", "done"): 300, ("webhook", "failed"): 2},
        action_latency=hist,
        journal={"pending": 1, "scheduled": 4, "held": 2},
        kea_up={"dhcp4": True, "dhcp6": False},
        reloads={"ok": 3, "failed": 1},
        last_reload_ok=False,
    )


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., MetricsServer]]:
    servers: list[MetricsServer] = []

    def make(**kw: object) -> MetricsServer:
        server = MetricsServer(port=0, **kw)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield make
    for s in servers:
        await s.close()


def test_latency_histogram_buckets_are_le_and_cumulative() -> None:
    h = Histogram((1.0, 0.1, 0.1))  # sorted, duplicates dropped
    for v in (0.1, 0.2, 1.0, 5.0):
        h.observe(v)
    assert h.buckets == (0.1, 1.0)
    assert h.count == 4
    assert h.sum == pytest.approx(6.3)
    assert h.counts == [1, 2, 1]
    assert h.cumulative() == [("0.1", 1.0), ("1.0", 3.0), ("+Inf", 4.0)]
    assert h.quantile(0.5) == 1.0 and h.quantile(1.0) == float("inf")


def test_the_dispatchers_histogram_is_exported_as_is() -> None:
    """No conversion at scrape time: the snapshot carries DispatchStats.done_latency itself."""
    stats = DispatchStats()
    for v in (0.0005, 0.2, 600.0, 20000.0):  # an immediate action ... a delayed one held for hours
        stats.done_latency.observe(v)
    registry = build_registry(
        TrapdCollector(lambda: DaemonSnapshot(action_latency=stats.done_latency)), process_metrics=False
    )
    from prometheus_client import generate_latest

    m = samples(generate_latest(registry).decode())
    buckets = {dict(labels)["le"]: n for (name, labels), n in m.items() if name.endswith("_bucket")}
    assert list(buckets) == [repr(b) for b in LATENCY_BUCKETS] + ["+Inf"]
    assert buckets["0.001"] == 1
    assert buckets["0.25"] == 2
    assert buckets["900.0"] == 3  # minutes-long delays fall in a finite bucket
    assert buckets["14400.0"] == 3 and buckets["+Inf"] == 4
    assert m[("trapd_action_latency_seconds_count", ())] == 4
    stats.done_latency.observe(1.0)  # the next scrape sees it: the exporter reads the live histogram
    assert samples(generate_latest(registry).decode())[("trapd_action_latency_seconds_count", ())] == 5


def test_actions_that_blocked_the_loop_are_counted_by_plugin_and_summed_over_workers() -> None:
    from prometheus_client import generate_latest

    workers = [
        DaemonSnapshot(actions_blocked_loop={"site.slow": 2}),
        DaemonSnapshot(actions_blocked_loop={"site.slow": 1, "exec": 4}),
    ]
    total = sum_snapshots(from_wire(to_wire(w)) for w in workers)
    registry = build_registry(TrapdCollector(lambda: total), process_metrics=False)
    m = samples(generate_latest(registry).decode())
    assert m[("trapd_actions_blocked_loop_total", (("plugin", "site.slow"),))] == 3
    assert m[("trapd_actions_blocked_loop_total", (("plugin", "exec"),))] == 4


def test_dispatcher_and_journal_command_do_not_import_prometheus_client() -> None:
    import subprocess
    import sys

    code = (
        "import sys, trapd.dispatch.dispatcher, trapd.dispatch.stats, trapd.commands.journal;"
        "sys.exit('prometheus_client' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


async def test_scrape_reports_the_snapshot(serve: Callable[..., MetricsServer]) -> None:
    snap = busy_snapshot()
    server = serve(registry=build_registry(TrapdCollector(lambda: snap)))
    await server.start()
    status, headers, body = await http(server.port, get("/metrics"))
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    assert int(headers["content-length"]) == len(body)
    m = samples(body.decode())
    assert m[("trapd_notifications_received_total", (("source_group", "access"), ("version", "v2c")))] == 1200
    assert m[("trapd_notifications_received_total", (("source_group", "core"), ("version", "v3")))] == 7
    assert m[("trapd_notifications_dropped_total", (("reason", "unknown-community"),))] == 40
    assert (
        m[("trapd_notifications_dropped_detail_total", (("detail", "bad-length"), ("reason", "malformed")))]
        == 3
    )
    assert m[("trapd_rule_matches_total", (("rule", "port-down"),))] == 310
    assert m[("trapd_actions_rejected_total", (("reason", "parameter"), ("rule", "port-down")))] == 4
    assert m[("trapd_actions_rejected_total", (("reason", "decoder"), ("rule", "mac-move")))] == 1
    assert m[("trapd_events_unmatched_total", ())] == 896
    assert m[("trapd_actions_total", (("outcome", "done"), ("plugin", "kea.lease_del")))] == 300
    assert m[("trapd_actions_total", (("outcome", "failed"), ("plugin", "webhook")))] == 2
    assert m[("trapd_action_latency_seconds_bucket", (("le", "0.01"),))] == 1
    assert m[("trapd_action_latency_seconds_bucket", (("le", "0.1"),))] == 3
    assert m[("trapd_action_latency_seconds_bucket", (("le", "1.0"),))] == 4
    assert m[("trapd_action_latency_seconds_bucket", (("le", "+Inf"),))] == 5
    assert m[("trapd_action_latency_seconds_count", ())] == 5
    assert m[("trapd_action_latency_seconds_sum", ())] == pytest.approx(7.605)
    assert m[("trapd_journal_entries", (("state", "scheduled"),))] == 4
    assert m[("trapd_journal_entries", (("state", "dead"),))] == 0  # always present, even when absent
    assert m[("trapd_kea_endpoint_up", (("endpoint", "dhcp4"),))] == 1
    assert m[("trapd_kea_endpoint_up", (("endpoint", "dhcp6"),))] == 0
    assert m[("trapd_reloads_total", (("result", "ok"),))] == 3
    assert m[("trapd_reloads_total", (("result", "failed"),))] == 1
    assert m[("trapd_config_last_reload_successful", ())] == 0
    assert ("trapd_build_info", (("version", "0.1.0"),)) in m
    assert m[("trapd_kernel_udp_rcvbuf_errors_total", (("family", "ipv4"),))] >= 0
    assert m[("process_open_fds", ())] > 0  # prometheus-client's process collector


async def test_each_scrape_reads_the_current_counters(serve: Callable[..., MetricsServer]) -> None:
    received: dict[tuple[str, str], int] = {}
    server = serve(registry=build_registry(TrapdCollector(lambda: DaemonSnapshot(received=received))))
    await server.start()
    received[("v2c", "default")] = 5
    first = samples((await http(server.port, get("/metrics")))[2].decode())
    received[("v2c", "default")] = 9
    received[("v1", "default")] = 1
    second = samples((await http(server.port, get("/metrics")))[2].decode())
    key = ("trapd_notifications_received_total", (("source_group", "default"), ("version", "v2c")))
    assert (first[key], second[key]) == (5, 9)
    assert ("trapd_notifications_received_total", (("source_group", "default"), ("version", "v1"))) in second


async def test_openmetrics_when_asked(serve: Callable[..., MetricsServer]) -> None:
    server = serve(registry=build_registry(TrapdCollector(DaemonSnapshot), process_metrics=False))
    await server.start()
    status, headers, body = await http(server.port, get("/metrics", "Accept: application/openmetrics-text"))
    assert status == 200
    assert headers["content-type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


async def test_healthz_follows_the_daemons_verdict(serve: Callable[..., MetricsServer]) -> None:
    verdict = Health(True, "ok", {"received": 12})
    server = serve(registry=build_registry(process_metrics=False), health=lambda: verdict)
    await server.start()
    status, headers, body = await http(server.port, get("/healthz"))
    assert (status, headers["content-type"]) == (200, "application/json")
    assert json.loads(body) == {"status": "ok", "healthy": True, "received": 12}
    verdict = Health(False, "stopping")
    status, _, body = await http(server.port, get("/healthz?verbose=1"))
    assert status == 503
    assert json.loads(body) == {"status": "stopping", "healthy": False}


async def test_a_failing_check_or_collector_is_an_error_not_a_crash(
    serve: Callable[..., MetricsServer],
) -> None:
    def broken() -> DaemonSnapshot:
        raise RuntimeError("boom")

    def broken_health() -> Health:
        raise KeyError("x")

    server = serve(
        registry=build_registry(TrapdCollector(broken), process_metrics=False), health=broken_health
    )
    await server.start()
    assert (await http(server.port, get("/metrics")))[0] == 500
    status, _, body = await http(server.port, get("/healthz"))
    assert status == 503
    assert json.loads(body)["status"] == "error"
    assert (await http(server.port, get("/")))[0] == 200  # still serving


async def test_http_edges(serve: Callable[..., MetricsServer]) -> None:
    server = serve(registry=build_registry(process_metrics=False), request_timeout=0.3)
    await server.start()
    assert (await http(server.port, get("/nope")))[0] == 404
    assert (await http(server.port, b"POST /metrics HTTP/1.1\r\n\r\n"))[0] == 405
    assert (await http(server.port, b"garbage\r\n\r\n"))[0] == 400
    status, headers, body = await http(server.port, b"HEAD /healthz HTTP/1.1\r\n\r\n")
    assert (status, body) == (200, b"")
    assert int(headers["content-length"]) > 0
    # A client that never finishes its request is cut off after the timeout.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /metrics HTTP/1.1\r\n")
    assert await asyncio.wait_for(reader.read(), 3) == b""
    writer.close()
    # An oversized request head is refused without a response.
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"GET /metrics HTTP/1.1\r\nX: " + b"a" * 20000 + b"\r\n\r\n")
    assert await asyncio.wait_for(reader.read(), 3) == b""
    writer.close()


async def test_ipv6_loopback(serve: Callable[..., MetricsServer]) -> None:
    server = serve(registry=build_registry(process_metrics=False), host="::1")
    await server.start()
    assert server.url == f"http://[::1]:{server.port}"
    assert (await http(server.port, get("/healthz"), host="::1"))[0] == 200


def test_kernel_counters_start_at_zero_with_trapd(tmp_path: Path) -> None:
    (tmp_path / "snmp").write_text(
        "Ip: Forwarding DefaultTTL\nIp: 1 64\n"
        "Udp: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n"
        "Udp: 100 2 7 50 5 0\n"
        "UdpLite: InDatagrams NoPorts InErrors OutDatagrams RcvbufErrors SndbufErrors\n"
        "UdpLite: 0 0 0 0 99 0\n"
    )
    (tmp_path / "snmp6").write_text(
        "Udp6InDatagrams                 \t4\nUdp6RcvbufErrors                \t11\n"
    )
    collector = TrapdCollector(DaemonSnapshot, proc_net=tmp_path)
    snmp = (tmp_path / "snmp").read_text()
    (tmp_path / "snmp").write_text(snmp.replace("100 2 7 50 5 0", "100 2 7 50 9 0"))
    (tmp_path / "snmp6").write_text("Udp6InDatagrams \t4\nUdp6RcvbufErrors \t12\n")
    kernel = next(m for m in collector.collect() if m.name == "trapd_kernel_udp_rcvbuf_errors")
    # Counted from when the collector was made: 9 - 5 and 12 - 11.
    assert {s.labels["family"]: s.value for s in kernel.samples} == {"ipv4": 4, "ipv6": 1}


async def test_an_overflowing_socket_shows_in_per_socket_and_host_counters(
    serve: Callable[..., MetricsServer],
) -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # the kernel rounds up to its minimum
    rx.bind(("127.0.0.1", 0))
    collector = TrapdCollector(DaemonSnapshot, lambda: [rx])
    server = serve(registry=build_registry(collector, process_metrics=False))
    await server.start()
    before = samples((await http(server.port, get("/metrics")))[2].decode())
    where = f"127.0.0.1:{rx.getsockname()[1]}"
    assert before[("trapd_socket_drops_total", (("socket", where),))] == 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for _ in range(200):
            tx.sendto(b"x" * 200, rx.getsockname())
    queues = read_socket_queues([os.fstat(rx.fileno()).st_ino])
    (row,) = queues.values()
    assert row.rx_queue > 0 and row.drops > 0
    after = samples((await http(server.port, get("/metrics")))[2].decode())
    dropped = after[("trapd_socket_drops_total", (("socket", where),))]
    assert dropped == row.drops
    assert after[("trapd_socket_receive_queue_bytes", (("socket", where),))] > 0
    host = after[("trapd_kernel_udp_rcvbuf_errors_total", (("family", "ipv4"),))]
    assert host - before[("trapd_kernel_udp_rcvbuf_errors_total", (("family", "ipv4"),))] >= dropped
    rx.close()
    # A socket closed by a reload is skipped, not an error.
    assert (await http(server.port, get("/metrics")))[0] == 200


def test_status_line_for_systemd() -> None:
    assert status_line(busy_snapshot()) == (
        "1208 received, 43 dropped, 312 matched, 5 rejected, actions 300 done 2 failed, "
        "journal 1 pending 4 scheduled 2 held, kea 1/2 up, last reload FAILED"
    )
    assert status_line(DaemonSnapshot()) == "0 received, 0 matched"


def test_kea_breaker_state_is_one_series_per_state() -> None:
    snap = DaemonSnapshot(kea_breaker={"local4/v4": "closed", "pair4/server2/v4": "open"})
    from prometheus_client import generate_latest

    m = samples(generate_latest(build_registry(TrapdCollector(lambda: snap), process_metrics=False)).decode())
    got = {tuple(dict(lb).values()): v for (n, lb), v in m.items() if n == "trapd_kea_breaker_state"}
    one = {"local4/v4": "closed", "pair4/server2/v4": "open"}
    assert got == {(ep, st): int(one[ep] == st) for ep in one for st in ("closed", "half-open", "open")}


def test_a_journal_that_cannot_commit_is_in_status_and_metrics() -> None:
    snap = DaemonSnapshot(
        journal_problem="journal database unavailable: connection refused", journal_failed_writes=7
    )
    assert status_line(snap) == "0 received, 0 matched, JOURNAL UNAVAILABLE"
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in TrapdCollector(lambda: snap, lambda: []).collect()
        for s in family.samples
    }
    assert samples[("trapd_journal_available", ())] == 0
    assert samples[("trapd_journal_failed_writes_total", ())] == 7
    ok = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in TrapdCollector(DaemonSnapshot, lambda: []).collect()
        for s in family.samples
    }
    assert ok[("trapd_journal_available", ())] == 1


def test_claims_put_back_are_counted_and_summed_over_workers() -> None:
    """A shared journal's claims whose answer was lost, put back in line (they never started):
    one counter, in line with trapd_journal_taken_over_total, summed over workers, and carried
    through a worker's snapshot on the wire."""
    one = from_wire(to_wire(DaemonSnapshot(journal_put_back=2, journal_taken_over=1)))
    assert one.journal_put_back == 2
    snap = sum_snapshots([one, DaemonSnapshot(journal_put_back=3)])
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in TrapdCollector(lambda: snap, lambda: []).collect()
        for s in family.samples
    }
    assert samples[("trapd_journal_claims_put_back_total", ())] == 5
    assert samples[("trapd_journal_taken_over_total", ())] == 1
