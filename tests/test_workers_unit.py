"""service.workers: the pieces of the supervisor that need no running daemon.

Configuration, the per-worker share of the global rate limit, the snapshot
wire form and its sum, the channel framing over a real socketpair, the
SO_REUSEPORT group on loopback, the restart policy, the v3 engine clock
shared by workers, event ids after fork, and the worker= log field.
"""

from __future__ import annotations

import asyncio
import io
import json
import os
import socket
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any
from unittest import mock

import pytest

from trapd.config import config_from_yaml
from trapd.dispatch.stats import Histogram
from trapd.listener.config import ListenAddress, RateLimit
from trapd.service.channel import Channel, ChannelClosed, encode
from trapd.service.config import MAX_WORKERS, ServiceConfig
from trapd.service.logging import configure_logging, get_logger, set_process_fields
from trapd.service.metrics import DaemonSnapshot
from trapd.service.options import RunOptions
from trapd.service.snapshots import RetiredCounts, from_wire, sum_snapshots, to_wire
from trapd.service.workers import RestartPolicy, open_reuseport_sockets, per_worker_config
from trapd.yamlsource import ConfigError, load_yaml

# ------------------------------------------------------------------------------ configuration


def service(text: str) -> ServiceConfig:
    return ServiceConfig.from_yaml(load_yaml(text, "trapd.yaml")["service"], Path("/etc/trapd"))


def test_workers_default_to_one_and_take_an_integer() -> None:
    assert ServiceConfig().workers == 1
    assert service("service:\n  status_interval: 1\n").workers == 1
    assert service("service:\n  workers: 4\n").workers == 4
    assert service(f"service:\n  workers: {MAX_WORKERS}\n").workers == MAX_WORKERS


@pytest.mark.parametrize("value", ["0", "-2", "'2'", "yes", "2.5", str(MAX_WORKERS + 1)])
def test_bad_workers_are_refused_with_their_place(value: str) -> None:
    with pytest.raises(ConfigError) as info:
        service(f"service:\n  log: {{level: info}}\n  workers: {value}\n")
    assert "service.workers" in str(info.value)
    assert "trapd.yaml:3:12" in str(info.value)


def test_the_command_line_overrides_workers(tmp_path: Path) -> None:
    path = tmp_path / "trapd.yaml"
    path.write_text("state_dir: state\nservice: {workers: 3}\n")
    assert RunOptions(config=path).load().service.workers == 3
    assert RunOptions(config=path, workers=1).load().service.workers == 1
    with pytest.raises(ConfigError, match=r"service\.workers"):
        RunOptions(config=path, workers=0).load()


def test_each_worker_takes_its_share_of_the_global_rate_limit_only() -> None:
    node = load_yaml("listener:\n  rate_limit: {per_source: 500, global: 9000, burst: 3}\n", "trapd.yaml")
    config = config_from_yaml(node, None)
    three = per_worker_config(config, 3)
    # Per source stays: the kernel sends one sender (address and port) to one worker.
    assert three.listener.rate_limit == RateLimit(per_source=500, global_=3000, burst=3)
    assert per_worker_config(config, 1) is config
    off = config_from_yaml(load_yaml("listener:\n  rate_limit: {per_source: 500}\n", "t.yaml"), None)
    assert per_worker_config(off, 4).listener.rate_limit.global_ == 0  # off stays off


# ------------------------------------------------------------------------------ snapshots


def snapshot(n: int, *, journal: dict[str, int] | None = None, kea: bool = True) -> DaemonSnapshot:
    hist = Histogram()
    for value in (0.001 * n, 0.2, 30.0):
        hist.observe(value)
    return DaemonSnapshot(
        received={("v2c", "access"): 10 * n, ("v3", "core"): n},
        dropped={"malformed": n},
        dropped_detail={("malformed", "bad-length"): n},
        matched={"port-down": 2 * n},
        rejected={("port-down", "parameter"): n},
        unmatched=3 * n,
        actions={("log", "done"): 2 * n},
        action_latency=hist,
        journal=journal if journal is not None else {"pending": n},
        kea_up={"dhcp4@/run/kea/kea4-ctrl-socket": kea},
        reloads={"ok": 1},
        last_reload_ok=True,
        outcomes_lost=n,
        rate_limit_exempted=n,
        dispatch_backlog=n,
        dispatch_backlog_bytes=1000 * n,
    )


def test_snapshot_wire_form_round_trips_through_json() -> None:
    snap = snapshot(7)
    back = from_wire(json.loads(json.dumps(to_wire(snap))))
    assert back.action_latency is not None and snap.action_latency is not None
    assert back.action_latency.cumulative() == snap.action_latency.cumulative()
    assert back.action_latency.sum == snap.action_latency.sum
    assert {**vars_of(back), "action_latency": None} == {**vars_of(snap), "action_latency": None}


def vars_of(s: DaemonSnapshot) -> dict[str, Any]:
    return {k: getattr(s, k) for k in DaemonSnapshot.__dataclass_fields__}


def test_the_sum_adds_counters_takes_one_journal_and_any_kea_up() -> None:
    total = sum_snapshots(
        [snapshot(1, journal={"pending": 5}, kea=False), snapshot(2, journal={"pending": 6})]
    )
    assert total.received == {("v2c", "access"): 30, ("v3", "core"): 3}
    assert total.dropped == {"malformed": 3}
    assert total.dropped_detail == {("malformed", "bad-length"): 3}
    assert total.matched == {"port-down": 6}
    assert total.rejected == {("port-down", "parameter"): 3}
    # Each worker has its own breakers: the unit shows the worst.
    breakers = sum_snapshots(
        [
            DaemonSnapshot(kea_breaker={"a/v4": "closed", "b/v4": "half-open"}),
            DaemonSnapshot(kea_breaker={"a/v4": "open", "b/v4": "closed", "c/v4": "closed"}),
        ]
    )
    assert breakers.kea_breaker == {"a/v4": "open", "b/v4": "half-open", "c/v4": "closed"}
    assert (total.unmatched, total.outcomes_lost, total.rate_limit_exempted) == (9, 3, 3)
    assert total.actions == {("log", "done"): 6}
    assert total.action_latency is not None and total.action_latency.count == 6
    assert total.action_latency.cumulative()[-1] == ("+Inf", 6)
    # One SQLite file read by both: its figures are not doubled.
    assert total.journal == {"pending": 5}
    # Reached by one worker: up.
    assert total.kea_up == {"dhcp4@/run/kea/kea4-ctrl-socket": True}
    # Each worker's own queue before the journal: added up.
    assert (total.dispatch_backlog, total.dispatch_backlog_bytes) == (3, 3000)


def test_counters_of_dead_workers_stay_in_the_total() -> None:
    retired = RetiredCounts()
    before = retired.with_live([snapshot(1), snapshot(2)])
    # Worker 2 dies; its replacement starts from zero.
    retired.retire(snapshot(2))
    after = retired.with_live([snapshot(1), DaemonSnapshot()])
    assert after.received == before.received
    assert after.matched == before.matched
    assert after.action_latency is not None and after.action_latency.count == 6
    assert after.journal == {"pending": 1}  # a live worker's
    assert (after.dispatch_backlog, after.dispatch_backlog_bytes) == (1, 1000)  # a gauge: the live ones'
    assert after.kea_up == {"dhcp4@/run/kea/kea4-ctrl-socket": True}
    assert retired.with_live([DaemonSnapshot()]).journal == {}  # never a dead one's
    assert retired.with_live([DaemonSnapshot()]).kea_up == {}
    retired.retire(snapshot(1))
    retired.retire(snapshot(1))
    assert len(retired.snapshots) == 1  # folded: a worker crashing in a loop does not grow it
    assert retired.with_live([]).received[("v3", "core")] == 4


def test_a_dead_workers_shared_journal_verdicts_are_not_kept_with_its_counters() -> None:
    """A worker that died while another host renewed under this host's journal name, or while the
    pair's rules differed (a rolling rules update), left those verdicts in the retired counters
    for the unit's life: /healthz stayed 503 "another trapd is running under this host's
    dispatch.journal.instance" (or "warning" with the old rule difference) and the gauges
    trapd_journal_instance_conflict, trapd_pair_kea_differences and trapd_pair_rules_differ
    stayed up after the other host was fixed, until a restart of the unit."""
    retired = RetiredCounts()
    dying = replace(
        snapshot(1),
        journal_name_conflict=True,
        pair_differences=2,
        pair_rule_differences=("dhcp2: rules differ",),
    )
    retired.retire(dying)
    now = retired.with_live([snapshot(2), DaemonSnapshot()])
    assert now.received[("v3", "core")] == 3  # its counters stay
    assert not now.journal_name_conflict
    assert now.pair_differences == 0
    assert now.pair_rule_differences == ()


# ------------------------------------------------------------------------------ channel


async def test_channel_carries_messages_both_ways() -> None:
    a, b = socket.socketpair()
    left, right = await Channel.open(a), await Channel.open(b)
    try:
        big = {"op": "snapshot", "seq": 3, "data": {"matched": {f"rule-{i}": i for i in range(5000)}}}
        left.send({"op": "ready"})
        left.send(big)
        assert await right.receive() == {"op": "ready"}
        assert await right.receive() == big
        right.send({"op": "reloaded", "ok": False, "error": "rules.yaml:3:5: unknown action"})
        assert (await left.receive())["error"] == "rules.yaml:3:5: unknown action"
    finally:
        left.close()
    with pytest.raises(ChannelClosed):
        await right.receive()
    right.close()


@pytest.mark.parametrize(
    "data",
    [
        struct.pack(">I", 2**31) + b"{}",
        encode({"op": "x"})[:-1],
        struct.pack(">I", 2) + b"[]",
        struct.pack(">I", 3) + b"{x}",  # not JSON: the stream is out of step
        struct.pack(">I", 2) + b"\xff\xfe",  # not UTF-8
        struct.pack(">I", 9) + b'{"op": 1}',  # an op that is not a name
    ],
)
async def test_channel_refuses_what_is_not_a_whole_message(data: bytes) -> None:
    a, b = socket.socketpair()
    channel = await Channel.open(b)
    a.sendall(data)
    a.close()
    with pytest.raises(ChannelClosed):
        await channel.receive()
    channel.close()


# ------------------------------------------------------------------------------ sockets


def test_reuseport_group_spreads_senders_and_delivers_each_datagram_once() -> None:
    groups = open_reuseport_sockets([ListenAddress("127.0.0.1", 0)], 2, 1 << 20)
    socks = [g[0] for g in groups]
    try:
        port = socks[0].getsockname()[1]
        assert port != 0 and socks[1].getsockname()[1] == port
        for s in socks:
            assert s.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) >= 1 << 20  # set before bind
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(32)]
        for i, s in enumerate(senders):
            s.sendto(f"{i}".encode(), ("127.0.0.1", port))
        got: list[list[str]] = [[], []]
        deadline = time.monotonic() + 5
        while sum(map(len, got)) < 32 and time.monotonic() < deadline:
            for n, s in enumerate(socks):
                s.setblocking(False)
                try:
                    got[n].append(s.recv(100).decode())
                except BlockingIOError:
                    time.sleep(0.001)
        for s in senders:
            s.close()
        assert sorted(int(x) for x in got[0] + got[1]) == list(range(32))  # all, once
        assert got[0] and got[1]  # 32 source ports: both sockets get some (1 in 2^31 to fail)
    finally:
        for g in groups:
            for s in g:
                s.close()


def test_reuseport_group_of_another_kind_of_socket_cannot_join() -> None:
    """A socket without SO_REUSEPORT cannot bind the group's port (nor share its traffic)."""
    (group,) = open_reuseport_sockets([ListenAddress("127.0.0.1", 0)], 1, 0)
    try:
        intruder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with pytest.raises(OSError):
            intruder.bind(("127.0.0.1", group[0].getsockname()[1]))
        intruder.close()
    finally:
        group[0].close()


def test_reuseport_group_closes_what_it_opened_when_a_bind_fails() -> None:
    taken = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    taken.bind(("127.0.0.1", 0))
    port = taken.getsockname()[1]
    before = len(os.listdir("/proc/self/fd"))
    with pytest.raises(OSError, match=f"cannot listen on 127.0.0.1:{port}: "):
        open_reuseport_sockets([ListenAddress("127.0.0.1", 0), ListenAddress("127.0.0.1", port)], 2, 0)
    assert len(os.listdir("/proc/self/fd")) == before
    taken.close()


# ------------------------------------------------------------------------------ restart policy


def test_restart_backoff_doubles_and_gives_up_past_the_bound() -> None:
    policy = RestartPolicy(max_restarts=5, window=60.0, first=0.5, cap=4.0)
    delays = [policy.next_delay(100.0 + i) for i in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, None]


def test_restarts_older_than_the_window_are_forgotten() -> None:
    policy = RestartPolicy(max_restarts=2, window=10.0, first=1.0, cap=8.0)
    assert policy.next_delay(0.0) == 1.0
    assert policy.next_delay(5.0) == 2.0
    assert policy.next_delay(9.0) is None
    assert policy.next_delay(30.0) == 1.0  # a quiet window later: a fresh start


# ------------------------------------------------------------------------------ v3 engine clock


def test_the_supervisor_counts_boots_once_and_pinned_engines_keep_it(tmp_path: Path) -> None:
    from trapd.listener.v3 import clock as v3

    engine_id = bytes.fromhex("80001f8880aabbccdd")
    made = time.monotonic()
    first = v3.advance_engine_clock(engine_id, tmp_path, now=made - 100)
    assert first.boots == 1
    boots_file = v3.engine_boots_file(engine_id, tmp_path)
    assert boots_file.read_text() == "1"
    v3.pin_engine_clock(first)
    try:
        engines = [v3.make_engine(engine_id, tmp_path) for _ in range(3)]  # three workers
    finally:
        v3.pin_engine_clock(None)
    assert boots_file.read_text() == "1"  # no worker counted it up again
    for engine in engines:
        eid, boots, etime = engine.get_mib_builder().import_symbols(
            "__SNMP-FRAMEWORK-MIB", "snmpEngineID", "snmpEngineBoots", "snmpEngineTime"
        )
        assert bytes(eid.syntax) == engine_id
        assert int(boots.syntax) == 1
        # Counted from the supervisor's start, 100 s before `made`: the engines took seconds to
        # make on a loaded machine (a fixed 102 failed once at 103), so the bound is what passed.
        assert 99 <= int(etime.syntax.clone()) <= 101 + (time.monotonic() - made)
    # Unpinned (a single trapd), pysnmp's own handling continues the same file.
    engine = v3.make_engine(engine_id, tmp_path)
    (boots,) = engine.get_mib_builder().import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineBoots")
    assert int(boots.syntax) == 2 and boots_file.read_text() == "2"
    assert v3.advance_engine_clock(engine_id, tmp_path).boots == 3


def test_a_pinned_clock_for_another_engine_id_is_not_used(tmp_path: Path) -> None:
    from trapd.listener.v3 import clock as v3

    v3.pin_engine_clock(v3.EngineClock(b"\x80\x00\x00\x01\x01", 42, time.time()))
    try:
        engine = v3.make_engine(bytes.fromhex("80001f8880aabbccdd"), tmp_path)
    finally:
        v3.pin_engine_clock(None)
    (boots,) = engine.get_mib_builder().import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineBoots")
    assert int(boots.syntax) != 42
    # pysnmp's own boots file for this engine ID, as a single trapd keeps it.
    assert v3.engine_boots_file(bytes.fromhex("80001f8880aabbccdd"), tmp_path).read_text() == str(
        boots.syntax
    )


# ------------------------------------------------------------------------------ per process


def test_event_ids_of_forked_workers_do_not_share_the_parents_pid_tag() -> None:
    from trapd.event import new_event_id

    parent = new_event_id(1000.0)
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        os.write(w, new_event_id(1000.0).encode())
        os._exit(0)
    os.close(w)
    child = os.read(r, 100).decode()
    os.close(r)
    os.waitpid(pid, 0)
    assert parent[:11] == child[:11]  # same millisecond
    assert parent[11:15] != child[11:15]  # different process tag: ids cannot collide


@pytest.fixture
def _logging_restored() -> Iterator[None]:
    yield
    from trapd.service import logging as tlog

    tlog._State.process_fields = {}
    configure_logging("info", "console", sys.stderr)


def test_process_fields_are_on_every_line_including_other_threads(_logging_restored: None) -> None:
    import threading

    buf = io.StringIO()
    configure_logging("info", "json", buf)
    set_process_fields(worker=3)
    log = get_logger("trapd.test")
    log.info("from the loop", rule="r")
    t = threading.Thread(target=lambda: log.info("from a thread"))
    t.start()
    t.join()
    log.info("explicit wins", worker="x")
    lines = [json.loads(x) for x in buf.getvalue().splitlines()]
    assert [x["worker"] for x in lines] == [3, 3, "x"]


async def test_exporter_refreshes_before_answering(tmp_path: Path) -> None:
    from trapd.service.exporter import MetricsServer
    from trapd.service.health import Health
    from trapd.service.metrics import TrapdCollector, build_registry

    state = {"n": 0, "refreshed": 0}

    async def refresh() -> None:
        await asyncio.sleep(0.01)
        state["refreshed"] += 1
        state["n"] = 5

    collector = TrapdCollector(lambda: DaemonSnapshot(unmatched=state["n"]))
    server = MetricsServer(
        build_registry(collector, process_metrics=False),
        lambda: Health(True),
        "127.0.0.1",
        0,
        refresh=refresh,
    )
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        body = await reader.read()
        writer.close()
        assert b"trapd_events_unmatched_total 5.0" in body
        assert state["refreshed"] == 1
        assert len(server.listening_fds()) == 1
    finally:
        await server.close()


def test_socket_series_are_one_per_address_summed_over_the_workers_sockets() -> None:
    from trapd.service.metrics import TrapdCollector

    (a,), (b,) = open_reuseport_sockets([ListenAddress("127.0.0.1", 0)], 2, 1 << 20)
    try:
        port = a.getsockname()[1]
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
        for s in senders:
            s.sendto(b"x" * 100, ("127.0.0.1", port))
        time.sleep(0.05)
        collector = TrapdCollector(DaemonSnapshot, lambda: [a, b])
        families = {f.name: f for f in collector.collect()}
        (queued,) = families["trapd_socket_receive_queue_bytes"].samples
        assert queued.labels == {"socket": f"127.0.0.1:{port}"}
        # Neither socket alone holds all 16 (both got some); the series has them all.
        assert queued.value == sum(
            int(x.split()[4].partition(":")[2], 16)
            for x in Path("/proc/self/net/udp").read_text().splitlines()[1:]
            if x.split()[9] in {str(os.fstat(a.fileno()).st_ino), str(os.fstat(b.fileno()).st_ino)}
        )
        assert queued.value > 0
        assert len(families["trapd_socket_drops"].samples) == 1
        for s in senders:
            s.close()
    finally:
        a.close()
        b.close()


async def test_supervisor_restarts_a_dead_worker_then_gives_up_past_the_bound(tmp_path: Path) -> None:
    """The supervisor's bookkeeping for deaths, without processes: restart, keep counters, give up."""
    from trapd.config import Config
    from trapd.service.workers import Supervisor, WorkerSlot

    sup = Supervisor(Config(state_dir=tmp_path))
    sup._stop, sup._changed, sup._state = asyncio.Event(), asyncio.Event(), "running"
    slot = WorkerSlot(0, (), pid=999_999_999, ready=True, last_snapshot=snapshot(1))
    slot.restarts = RestartPolicy(max_restarts=2, window=60.0, first=30.0, cap=30.0)
    sup.slots = [slot]
    for _ in range(2):
        sup._on_exit(slot, -9)
        assert not slot.alive and slot.restart_handle is not None and not sup._stop.is_set()
        assert sup.health().status == "degraded" and sup.health().detail["workers_down"] == {0: "restarting"}
        slot.restart_handle.cancel()
        slot.restart_handle = None
        slot.pid = 999_999_999
    # Its counters stay in the unit's total after it is gone.
    assert sup.snapshot().received[("v2c", "access")] == 10
    sup._on_exit(slot, 1)  # the third death within the window: stop everything
    assert sup._stop.is_set() and sup._fatal is not None and "worker 0 died 3 times" in sup._fatal
    assert slot.restart_handle is None
    assert await sup._shutdown() == 1


def test_the_sum_keeps_a_workers_journal_problem_and_adds_failed_writes() -> None:
    down = DaemonSnapshot(journal_problem="journal database unavailable: x", journal_failed_writes=2)
    total = sum_snapshots(
        [DaemonSnapshot(journal_failed_writes=1), from_wire(json.loads(json.dumps(to_wire(down))))]
    )
    assert total.journal_problem == "journal database unavailable: x" and total.journal_failed_writes == 3
    assert sum_snapshots([DaemonSnapshot(), DaemonSnapshot()]).journal_problem is None


def test_a_worker_restarted_after_a_reload_gets_every_restart_needed_setting_as_running(
    tmp_path: Path,
) -> None:
    from trapd.config import Config
    from trapd.service.lifecycle import RESTART_NEEDED, keep_restart_needed
    from trapd.yamlsource import load_yaml

    def config(n: int) -> Config:
        text = (
            f"state_dir: /var/lib/t{n}\nmode: {'enforce' if n else 'dry-run'}\n"
            f"mibs: {{dirs: [/m{n}]}}\nrules: {{files: [r{n}.yaml]}}\n"
            f"listener: {{listen: ['127.0.0.1:{1620 + n}'], receive_buffer: {65536 * (n + 1)},"
            f" communities: [c{n}xyz]}}\n"
            f"kea: {{endpoints: {{k{n}: {{transport: unix, socket: /run/k{n}.sock, family: v4}}}}}}\n"
            f"dispatch: {{workers: {n + 1}}}\n"
            f"service: {{workers: {n + 2}, status_interval: {n + 1},"
            f" metrics: {{listen: '127.0.0.1:{9000 + n}'}}}}\n"
        )
        return config_from_yaml(load_yaml(text, "trapd.yaml"), tmp_path / "trapd.yaml")

    running, new = config(0), config(1)
    kept = keep_restart_needed(new, running)
    for name, value in RESTART_NEEDED.items():
        assert value(running) != value(new), name  # the test changes every one of them
        assert value(kept) == value(running), name
    # The rest is the reloaded file's.
    assert (kept.mode, kept.rules_files, kept.service.status_interval) == (
        new.mode,
        new.rules_files,
        new.service.status_interval,
    )
    assert kept.listener.communities == new.listener.communities


async def test_a_dead_workers_answer_read_after_its_death_is_not_counted_twice(tmp_path: Path) -> None:
    """The worker answered a snapshot request and died; the supervisor handled SIGCHLD before its
    reader task took the answer from the channel's buffer (both were ready in one turn of the loop).
    That answer must not become the slot's snapshot on top of the retired one: the unit's counters
    would count the dead worker twice, then go backwards when its successor first answers."""
    from trapd.config import Config
    from trapd.service.workers import Supervisor, WorkerSlot

    sup = Supervisor(Config(state_dir=tmp_path))
    sup._stop, sup._changed, sup._state = asyncio.Event(), asyncio.Event(), "running"
    ours, worker_end = socket.socketpair()
    try:
        channel = await Channel.open(ours)
        slot = WorkerSlot(0, (), pid=999_999_999, ready=True, last_snapshot=snapshot(1), channel=channel)
        slot.restarts = RestartPolicy(max_restarts=5, window=60.0, first=30.0, cap=30.0)
        sup.slots = [slot]
        worker_end.sendall(encode({"op": "snapshot", "seq": 1, "data": to_wire(snapshot(5))}))
        await asyncio.sleep(0.2)  # in the channel's buffer, nobody reading yet
        sup._on_exit(slot, -9)  # SIGCHLD first: its snapshot(1) retired
        reader = asyncio.create_task(sup._read(slot, channel))
        await asyncio.wait_for(reader, 5)
        assert sup.snapshot().received[("v2c", "access")] == 10  # snapshot(1), once
        # Its successor's first answer: the unit's counter does not go down.
        slot.pid, slot.last_snapshot = 999_999_998, snapshot(0)
        assert sup.snapshot().received[("v2c", "access")] == 10
        assert slot.restart_handle is not None
        slot.restart_handle.cancel()
    finally:
        worker_end.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_boots_counted_as_root_stay_the_daemons_to_count(request: pytest.FixtureRequest) -> None:
    """`sudo trapd listen --config /etc/trapd/trapd.yaml` (its --help suggests it) keeps the boots
    file of the same engine ID in the daemon's state directory. Before, that file (and its
    directory) was root's: the daemon's user could neither count boots up (pysnmp swallowed the
    error: the same snmpEngineBoots at every start, RFC 3414 2.2.2) nor, with service.workers,
    start at all (advance_engine_clock: PermissionError)."""
    import pwd
    import shutil
    import subprocess
    import tempfile

    from trapd.listener.v3 import clock as v3

    nobody = pwd.getpwnam("nobody")
    state = Path(tempfile.mkdtemp(prefix="trapd-boots-owner-"))  # pytest's temp root is 0700
    request.addfinalizer(lambda: shutil.rmtree(state, ignore_errors=True))
    state.chmod(0o755)
    os.chown(state, nobody.pw_uid, nobody.pw_gid)
    engine_id = bytes.fromhex("80001f8880aabbccdd")
    v3.make_engine(engine_id, state)  # trapd listen, as root
    boots = v3.advance_engine_clock(engine_id, state).boots  # the supervisor of workers, as root
    script = (
        "import sys; from pathlib import Path; from trapd.listener.v3 import clock as v3\n"
        f"eid, state = bytes.fromhex('80001f8880aabbccdd'), Path({str(state)!r})\n"
        "e = v3.make_engine(eid, state)\n"
        "(b,) = e.get_mib_builder().import_symbols('__SNMP-FRAMEWORK-MIB', 'snmpEngineBoots')\n"
        "print(int(b.syntax), v3.advance_engine_clock(eid, state).boots)\n"
    )
    proc = subprocess.run(
        ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
         sys.executable, "-c", script],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == [str(boots + 1), str(boots + 2)]  # counted on, and kept


async def test_a_worker_whose_counters_by_rule_outgrow_a_channel_message_still_answers(
    _logging_restored: None,
) -> None:
    """100,000 rules with long names (up to 128 characters), each matched or refused once: the
    worker's snapshot was over the channel's 16 MiB. encode raised in the task that answers the
    supervisor, which ended it without a word: the worker went silent, and the supervisor judged it
    stuck and SIGKILLed it (its running actions interrupted), and its successor again once its
    counters grew as far. Now the worker answers without the counters by rule, and says so."""
    from trapd.service.channel import MAX_MESSAGE
    from trapd.service.workers import WorkerRole

    names = [f"rule-{i:06d}-" + "x" * 114 for i in range(MAX_MESSAGE // 120)]  # 128 characters each
    big = replace(snapshot(3), matched=dict.fromkeys(names, 1))

    buf = io.StringIO()
    configure_logging("info", "json", buf)

    class StubDaemon:
        log = get_logger("trapd.test")
        tasks: list[asyncio.Task[None]] = []

        def snapshot(self) -> DaemonSnapshot:
            return big

        def keep_task(self, task: asyncio.Task[None]) -> None:
            self.tasks.append(task)

        def request_reload(self) -> None:
            pass

        def request_stop(self) -> None:
            pass

    worker_end, ours = socket.socketpair()
    daemon = StubDaemon()
    role = WorkerRole(0, 2, (), worker_end)
    await role.attach(daemon)  # type: ignore[arg-type]
    supervisor = await Channel.open(ours)
    try:
        assert (await asyncio.wait_for(supervisor.receive(), 10))["op"] == "ready"
        for seq in (1, 2):  # and the worker goes on answering
            supervisor.send({"op": "snapshot?", "seq": seq})
            reply = await asyncio.wait_for(supervisor.receive(), 30)
            assert (reply["op"], reply["seq"]) == ("snapshot", seq)
            got = from_wire(reply["data"])
            assert got.received == snapshot(3).received  # the other counters are all there
            assert got.matched == {}
        assert not daemon.tasks[0].done()
        said = [json.loads(x) for x in buf.getvalue().splitlines()]
        assert [x["event"] for x in said] == [  # once
            "counters by rule too large to send to the supervisor: left out of /metrics"
        ]
    finally:
        for task in daemon.tasks:
            task.cancel()
        supervisor.close()


def test_the_supervisor_reaps_only_its_workers(tmp_path: Path) -> None:
    """The supervisor's SIGCHLD handler waited for any child (waitpid(-1)): it also reaped the MIB
    compile child a reload starts (trapd.mibs), whose Popen.wait then found no child and took
    status 0. A compile the OOM killer ended was then reported as 'FileNotFoundError' (its output
    missing), not as 'killed by SIGKILL: most likely out of memory'."""
    import subprocess

    from trapd.config import Config
    from trapd.service.workers import Supervisor

    sup = Supervisor(Config(state_dir=tmp_path))
    proc = subprocess.Popen(["/bin/sh", "-c", "exit 3"])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    sup._reap()  # SIGCHLD for a child that is not a worker
    assert proc.wait(5) == 3


@pytest.mark.parametrize("pinned", [False, True], ids=["single", "worker"])
def test_engine_time_keeps_counting_when_the_wall_clock_is_stepped_back(tmp_path: Path, pinned: bool) -> None:
    """snmpEngineTime is the seconds since snmpEngineBoots last changed (RFC 3414 2.2.2): it only
    grows. It was counted on the wall clock (pysnmp's time.time() - origin), so a step forward (NTP,
    an admin) moved it on by as much, one back took it back, and one back past trapd's start made
    the read fail and give the origin itself: engineTime 1.8e9, standing still until the wall
    clock caught up (hours, for an RTC that was ahead at boot). An inform sender checks trapd's
    time against what it learned (a 150 s window): each such jump costs it a resynchronisation."""
    from trapd.listener.v3 import clock as v3

    engine_id = bytes.fromhex("80001f8880aabbccee")
    if pinned:
        v3.pin_engine_clock(v3.advance_engine_clock(engine_id, tmp_path))
    try:
        engine = v3.make_engine(engine_id, tmp_path)
    finally:
        v3.pin_engine_clock(None)
    (etime,) = engine.get_mib_builder().import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineTime")
    before = int(etime.syntax.clone())
    real = time.time
    for step in (-100.0, -86400.0, 3600.0):  # back less than trapd ran, back past its start, ahead
        with mock.patch("time.time", lambda step=step: real() + step):
            now = int(etime.syntax.clone())
        assert before <= now <= before + 60, (step, before, now)


async def test_a_worker_whose_channel_breaks_is_stopped_not_left_unheard(tmp_path: Path) -> None:
    """A channel that stops making sense (undecodable bytes: the stream out of step) ended the
    supervisor's reader of that worker with an exception nobody saw; the worker, alive and
    working, was then unheard until the stuck bound (15 s), called stuck, dumped and SIGKILLed.
    It is now told to stop at once (SIGTERM: its actions finish) and restarted, with the reason
    in the log."""
    import subprocess

    from trapd.config import Config
    from trapd.service.workers import Supervisor, WorkerSlot

    sup = Supervisor(Config(state_dir=tmp_path))
    sup._stop, sup._changed, sup._state = asyncio.Event(), asyncio.Event(), "running"
    worker = subprocess.Popen(["/bin/sleep", "60"])  # stands for the worker process
    a, b = socket.socketpair()
    try:
        slot = WorkerSlot(0, (), pid=worker.pid, channel_socket=b)
        sup.slots = [slot]
        await sup._connect(slot)
        a.sendall(struct.pack(">I", 3) + b"{x}")
        deadline = time.monotonic() + 10
        while worker.poll() is None and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert worker.poll() == -15
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
        a.close()
        await asyncio.gather(*sup._tasks, return_exceptions=True)
        if slot.channel is not None:
            slot.channel.close()
