"""``service.workers: 2`` under a real ``trapd run``, with net-snmp's tools on loopback.

What is checked, each against what was sent: every trap from many source
ports received and acted on exactly once, /metrics summing both workers
exactly, v2c and v3 informs acknowledged whichever worker gets them (one v3
engine: same ID, boots and time), READY/STATUS/RELOADING/STOPPING from the
supervisor only, SIGHUP with a good and a bad rules file, SIGTERM with
nothing lost, a SIGKILLed worker restarted on its socket with only its own
interrupted actions run again, and workers that go when the supervisor is
killed. The supervisor's pieces alone are in test_workers_unit.py.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from daemon_harness import LINK_DOWN, V3_ARGS, V3_USER, TrapdDaemon, eventually, free_port, link_down
from listen_harness import needs_netsnmp, snmp_send
from rules_support import per_port_rules

from trapd.listener.v3 import parse_header

pytestmark = [pytest.mark.integration, needs_netsnmp]

BENCH = Path(__file__).resolve().parent.parent / "bench"
SEQ_OID = "1.3.6.1.4.1.99999.1.1"  # loadgen's sequence number varbind (ten digits)
TWO = {"service": {"workers": 2}}

SEQ_RULES = """\
rules:
  - name: numbered
    match:
      notification: IF-MIB::linkDown
    actions:
      - action: log
        level: info
        message: "{prefix} {{{{ varbinds['1.3.6.1.4.1.99999.1.1'].display }}}}"
        key: "{{{{ varbinds['1.3.6.1.4.1.99999.1.1'].display }}}}"
"""


def _loadgen() -> ModuleType:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("loadgen")


def seq_args(target: str, seq: int, *, inform_community: str = "public") -> list[str]:
    """A v2c linkDown carrying loadgen's sequence varbind, for snmptrap / snmpinform."""
    return ["-v", "2c", "-c", inform_community, target, "", LINK_DOWN, SEQ_OID, "s", f"{seq:010d}"]


def send_spread(d: TrapdDaemon, messages: list[bytes], senders: int) -> None:
    """``messages`` round-robin over ``senders`` sockets: as many source ports as switches."""
    socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(senders)]
    try:
        for i, m in enumerate(messages):
            socks[i % senders].sendto(m, d.address)
            if i % 50 == 49:
                time.sleep(0.005)  # well under what two workers take; the test is about counting
    finally:
        for s in socks:
            s.close()


def seq_lines(d: TrapdDaemon, prefix: str) -> list[dict[str, Any]]:
    return [e for e in d.logs() if str(e.get("event", "")).startswith(prefix + " ")]


def journal_rows(d: TrapdDaemon) -> list[dict[str, Any]]:
    cmd = [sys.executable, "-m", "trapd", "journal", "--state-dir", str(d.state_dir), "--json"]
    out = subprocess.run(
        [*cmd, "list", "--state", "all", "--limit", "100000"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def worker_pids(d: TrapdDaemon) -> dict[int, int]:
    """Worker index -> pid of its latest process, from the supervisor's "worker started" lines."""
    out: dict[int, int] = {}
    for e in d.logs("worker started"):
        out[int(e["worker"])] = int(e["pid"])
    return out


def gone(pid: int) -> bool:
    """Exited: no such process, or a zombie nobody reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def test_every_trap_from_many_ports_is_received_and_counted_exactly_once(tmp_path: Path) -> None:
    loadgen = _loadgen()
    d = TrapdDaemon.start(tmp_path, rules=SEQ_RULES.format(prefix="seq"), config=TWO)
    try:
        ready = d.wait_log(lambda e: e.get("event") == "trapd ready" and e["logger"] == "trapd.supervisor")
        assert len(ready) == 1 and len(ready[0]["pids"]) == 2
        loaded = 600
        send_spread(d, loadgen.build_messages(loadgen.LoadSpec(version="v2c"), 1, loaded), senders=24)
        for seq in range(loaded + 1, loaded + 11):  # and ten from net-snmp, one process (port) each
            snmp_send("snmptrap", *seq_args(d.target(), seq), check=True)
        total = loaded + 10

        assert d.wait_metric("trapd_actions_total", total, timeout=30, plugin="log", outcome="done") == total
        lines = d.wait_log(lambda e: str(e.get("event", "")).startswith("seq "), 10, count=total)
        assert sorted(int(e["event"].split()[1]) for e in lines) == list(range(1, total + 1))  # once each
        done_by = Counter(e["worker"] for e in d.wait_log("action done", 10, count=total))
        assert set(done_by) == {0, 1} and sum(done_by.values()) == total, done_by

        def settled() -> None:
            # The journal gauges are refreshed each second and the workers' snapshots collected at
            # the scrape: read until they show the end state, not once (it was 18 pending once).
            scrape = d.metrics()
            assert d.metric("trapd_notifications_received_total", scrape) == total
            assert d.metric("trapd_notifications_received_total", scrape, version="v2c") == total
            assert d.metric("trapd_rule_matches_total", scrape, rule="numbered") == total
            assert d.metric("trapd_events_unmatched_total", scrape) == 0
            assert d.metric("trapd_notifications_dropped_total", scrape) == 0
            assert d.metric("trapd_actions_total", scrape) == total
            assert d.metric("trapd_action_latency_seconds_count", scrape) == total
            assert d.metric("trapd_socket_drops_total", scrape) == 0
            # The journal is one SQLite file: its gauges are not counted twice.
            assert d.metric("trapd_journal_entries", scrape, state="pending") == 0

            rows = journal_rows(d)
            assert len(rows) == total and {r["state"] for r in rows} == {"done"}
            assert len({r["event_id"] for r in rows}) == total  # no event id shared by the two workers
            assert {r["owner"] for r in rows} <= {"worker-0", "worker-1"}

        eventually(settled)
        assert d.stop() == 0
    finally:
        d.close()


TRAPD_ENGINE = "80004fb805aabbccddeeff0011"


def discovery_probe(msg_id: int) -> bytes:
    """An SNMPv3 engine-ID discovery request (RFC 3414 4): no engine ID, no user, reportable."""

    def tlv(tag: int, body: bytes) -> bytes:
        assert len(body) < 128
        return bytes([tag, len(body)]) + body

    def integer(n: int) -> bytes:
        return tlv(0x02, n.to_bytes((n.bit_length() + 8) // 8, "big"))  # minimal, as BER wants

    header = tlv(0x30, integer(msg_id) + integer(65507) + tlv(0x04, b"\x04") + integer(3))
    usm = tlv(0x04, tlv(0x30, tlv(0x04, b"") + integer(0) + integer(0) + tlv(0x04, b"") * 3))
    pdu = tlv(0xA6, integer(msg_id) + integer(0) + integer(0) + tlv(0x30, b""))
    scoped = tlv(0x30, tlv(0x04, b"") + tlv(0x04, b"") + pdu)
    return tlv(0x30, integer(3) + header + usm + scoped)


def test_informs_are_answered_by_either_worker_as_one_engine(tmp_path: Path) -> None:
    config = {**TWO, "listener": {"v3_users": [V3_USER], "engine_id": TRAPD_ENGINE}}
    d = TrapdDaemon.start(tmp_path, rules=SEQ_RULES.format(prefix="inform"), config=config)
    try:
        # Discovery from 16 source ports: both workers answer, with one engine ID, boots and time.
        reports = []
        for i in range(16):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(5)
                s.sendto(discovery_probe(1000 + i), d.address)
                reports.append(parse_header(s.recv(4096)))
        assert {r.engine_id.hex() for r in reports} == {TRAPD_ENGINE}
        assert len({r.engine_boots for r in reports}) == 1
        assert max(r.engine_time for r in reports) - min(r.engine_time for r in reports) <= 1
        # Counted up once by the supervisor, not once per worker (each pysnmp engine would).
        boots_file = next((d.state_dir / "__pysnmp").glob("*/boots"))
        assert boots_file.read_text() == str(reports[0].engine_boots)

        seq = 0
        for _ in range(6):  # v2c informs: each snmpinform its own source port
            seq += 1
            r = snmp_send("snmpinform", "-r", "0", "-t", "5", *seq_args(d.target(), seq))
            assert r.returncode == 0, r.stderr  # 0 only once the Response arrived
        for _ in range(6):  # v3 authPriv informs: discovery, then the inform, to whichever worker
            seq += 1
            r = snmp_send(
                "snmpinform",
                *V3_ARGS,
                "-r",
                "1",
                "-t",
                "5",
                d.target(),
                "",
                LINK_DOWN,
                SEQ_OID,
                "s",
                f"{seq:010d}",
            )
            assert r.returncode == 0, r.stderr
        d.wait_log(lambda e: str(e.get("event", "")).startswith("inform "), 10, count=seq)

        def counted() -> None:
            scrape = d.metrics()
            assert d.metric("trapd_notifications_received_total", scrape, version="v2c") == 6
            assert d.metric("trapd_notifications_received_total", scrape, version="v3") == 6
            assert set(Counter(e["worker"] for e in d.logs("action done"))) == {0, 1}

        eventually(counted)
        assert d.stop() == 0
    finally:
        d.close()


def _report_value(inform: bytes, address: tuple[str, int]) -> int:
    """The usmStatsWrongDigests value of the report to ``inform``, sent from a port of its own."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(5)
        s.sendto(inform, address)
        report = s.recv(4096)
    prefix = bytes.fromhex("060a2b060106030f0101")  # 1.3.6.1.6.3.15.1.1.<column>.0
    at = report.index(prefix) + len(prefix)
    column, zero, tag, size = report[at : at + 4]
    assert (column, zero, tag) == (5, 0, 0x41), report.hex()  # usmStatsWrongDigests, Counter32
    return int.from_bytes(report[at + 4 : at + 4 + size], "big")


def test_usm_stats_in_reports_are_the_units_count_not_one_workers(tmp_path: Path) -> None:
    """An operator chasing a v3 key mismatch reads usmStatsWrongDigests in the report the sender
    gets (snmpinform -d, a switch's debug, a capture). With two workers each report carried its
    own worker's count: about half of trapd_notifications_dropped_total{reason="wrong-digest"},
    and another figure from each worker. Now a report carries the unit's count as of the
    supervisor's last look (every status_interval) plus what its worker counted since."""
    from listen_harness import capture_datagram

    config = {
        "service": {"workers": 2, "status_interval": 0.5},
        "listener": {
            "v3_users": [V3_USER],
            "engine_id": TRAPD_ENGINE,
            "rate_limit": {"v3_slow_per_source": 1000},
        },
    }
    d = TrapdDaemon.start(tmp_path, rules=SEQ_RULES.format(prefix="x"), config=config)
    try:
        wrong = [*V3_ARGS, "-e", "0x" + TRAPD_ENGINE]
        wrong[wrong.index("-A") + 1] = "not-the-auth-key"
        inform = capture_datagram("snmpinform", *wrong, "{target}", "", LINK_DOWN)
        for _ in range(16):  # 16 source ports: both workers get some (all to one: 1 in 2^15)
            _report_value(inform, d.address)
        eventually(
            lambda: d.metric("trapd_notifications_dropped_total", d.metrics(), reason="wrong-digest") == 16
        )

        def one_figure() -> None:
            value = _report_value(inform, d.address)  # this one is counted too
            assert value == d.metric("trapd_notifications_dropped_total", d.metrics(), reason="wrong-digest")

        eventually(one_figure, timeout=20)
        assert d.stop() == 0
    finally:
        d.close()


def test_systemd_sees_one_unit_ready_reloading_and_stopping(tmp_path: Path) -> None:
    loadgen = _loadgen()
    d = TrapdDaemon.start(tmp_path, rules=SEQ_RULES.format(prefix="a"), config=TWO, watchdog_usec=2_000_000)
    assert d.notify is not None
    try:
        notify = d.notify

        def pinged() -> list[dict[str, str]]:
            notify.pending()  # a few STATUS= and WATCHDOG=1 (at half of WATCHDOG_USEC)
            msgs = notify.messages
            assert any("workers 2/2 up" in m.get("STATUS", "") for m in msgs), msgs
            assert sum(1 for m in msgs if "WATCHDOG" in m) >= 2
            return msgs

        msgs = eventually(pinged)
        assert sum(1 for m in msgs if "READY" in m) == 1  # the supervisor's, once both workers were ready
        code, health = d.healthz()
        assert code == 200 and health["workers_up"] == 2, health

        # A good reload: every worker takes the new rules.
        d.rules_path.write_text(SEQ_RULES.format(prefix="b"))
        d.signal(signal.SIGHUP)
        d.notify.wait_for("RELOADING", 10)
        ready = d.notify.wait_for("READY", 10)
        assert "FAILED" not in ready.get("STATUS", "")
        send_spread(d, loadgen.build_messages(loadgen.LoadSpec(version="v2c"), 1, 64), senders=16)
        lines = d.wait_log(lambda e: str(e.get("event", "")).startswith("b "), 10, count=64)
        assert set(Counter(e["worker"] for e in lines)) == {0, 1}

        # A bad one: refused once, every worker keeps the rules it has.
        d.rules_path.write_text("rules:\n  - name: broken\n    match: {notification: IF-MIB::linkDown}\n"
                                "    actions:\n      - action: no-such-plugin\n")  # fmt: skip
        d.signal(signal.SIGHUP)
        d.notify.wait_for("RELOADING", 10)
        ready = d.notify.wait_for("READY", 10)
        assert "reload failed" in ready["STATUS"] and "rules.yaml:5" in ready["STATUS"], ready
        send_spread(d, loadgen.build_messages(loadgen.LoadSpec(version="v2c"), 65, 64), senders=16)
        lines = d.wait_log(lambda e: str(e.get("event", "")).startswith("b "), 10, count=128)
        assert set(Counter(e["worker"] for e in lines[64:])) == {0, 1}

        def reloads_counted() -> None:
            scrape = d.metrics()
            assert d.metric("trapd_reloads_total", scrape, result="ok") == 1  # one per SIGHUP, not per worker
            assert d.metric("trapd_reloads_total", scrape, result="failed") == 1
            assert d.metric("trapd_config_last_reload_successful", scrape) == 0
            code, health = d.healthz()
            assert code == 200 and "rules.yaml:5" in health["last_reload"], health
            # The bad file never reached a worker: one "reloaded" per worker, from the good reload.
            assert sorted(e["worker"] for e in d.logs("reloaded") if "worker" in e) == [0, 1]

        eventually(reloads_counted)
        assert not [e for e in d.logs("reload failed, keeping the running configuration") if "worker" in e]

        d.signal(signal.SIGTERM)
        stopping = d.notify.wait_for("STOPPING", 10)
        assert stopping["STOPPING"] == "1"
        assert d.wait_exit(20) == 0
        assert [e["worker"] for e in d.logs("stopped") if "worker" in e] in ([0, 1], [1, 0])
    finally:
        d.close()


SLOW_RULES = """\
rules:
  - name: slow
    match:
      notification: IF-MIB::linkDown
    actions:
      - action: exec
        argv: [/bin/sh, -c, "echo start $1 >> {marks}; sleep {seconds}; echo end $1 >> {marks}", sh,
               "{{{{ ifIndex }}}}"]
        timeout: 30s
        key: "port-{{{{ ifIndex }}}}"
"""


def marks_of(path: Path, word: str) -> Counter[int]:
    lines = path.read_text().splitlines() if path.exists() else []
    return Counter(int(x.split()[1]) for x in lines if x.startswith(word + " "))


def wait_until(check: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_sigterm_stops_both_workers_and_loses_nothing(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    # The actions sleep as long as the file says when they start: 6 s first, so the SIGTERM (after
    # all twelve sends, which a loaded machine may spread over seconds) finds some still waiting
    # (with 1 s they could all be done, and the journal had no "pending"); quick after the restart.
    delay = tmp_path / "delay"
    delay.write_text("6\n")
    config = {**TWO, "dispatch": {"workers": 2, "shutdown_timeout": "30s"}}
    rules = SLOW_RULES.format(marks=marks, seconds=f"$(cat {delay})")
    d = TrapdDaemon.start(tmp_path, rules=rules, config=config)
    try:
        ports = list(range(1, 13))
        for port in ports:
            snmp_send("snmptrap", *link_down(d.target(), port), check=True)
        assert d.wait_metric("trapd_notifications_received_total", len(ports)) == len(ports)
        assert wait_until(lambda: sum(marks_of(marks, "start").values()) >= 1, 10)
        d.signal(signal.SIGTERM)
        assert d.wait_exit(30) == 0
        # Running ones finished, the rest wait in the journal: every trap is there, once.
        rows = journal_rows(d)
        assert sorted(int(r["params"]["argv"][-1]) for r in rows) == ports, rows
        assert {r["state"] for r in rows} == {"done", "pending"}  # some ran, some wait for the next start
        assert marks_of(marks, "start") == marks_of(marks, "end")  # nothing cut off
        # The next start runs the rest, once each.
        delay.write_text("0.2\n")
        d.launch()
        d.wait_ready()
        assert wait_until(lambda: sorted(marks_of(marks, "end")) == ports, 30), marks.read_text()
        assert max(marks_of(marks, "start").values()) == 1
        assert wait_until(lambda: {r["state"] for r in journal_rows(d)} == {"done"}, 10)
        assert d.stop() == 0
    finally:
        d.close()


def claims(d: TrapdDaemon) -> list[tuple[str, str, int]]:
    """(owner, state, port) of the journal's actions, read from the file: a WAL reader takes no
    lock, so this works while a worker is stopped, and takes milliseconds."""
    path = d.state_dir / "journal.sqlite"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        found = db.execute("SELECT owner, state, params FROM actions").fetchall()
    return [(str(owner), state, int(json.loads(params)["argv"][-1])) for owner, state, params in found]


def test_a_killed_worker_is_restarted_and_reruns_only_its_own_actions(tmp_path: Path) -> None:
    loadgen = _loadgen()
    marks = tmp_path / "marks"
    config = {**TWO, "dispatch": {"workers": 16}}
    d = TrapdDaemon.start(tmp_path, rules=SLOW_RULES.format(marks=marks, seconds=4), config=config)
    try:
        ports = list(range(1, 17))
        for port in ports:
            snmp_send("snmptrap", *link_down(d.target(), port), check=True)
        assert wait_until(lambda: len(marks_of(marks, "start")) == len(ports), 15), marks_of(marks, "start")
        # Under load the sends spread over seconds and the first actions may end before the last
        # start: the victim's actions are those its journal rows show running when it dies. It is
        # stopped first, so none of them can end between that read and the kill.
        victim = Counter(owner for owner, state, _ in claims(d) if state == "running").most_common(1)[0][0]
        index = int(victim.rsplit("-", 1)[1])
        old_pid = worker_pids(d)[index]
        os.kill(old_pid, signal.SIGSTOP)
        try:
            at_kill = claims(d)
        finally:
            os.kill(old_pid, signal.SIGKILL)
        mine = {port for owner, state, port in at_kill if owner == victim and state == "running"}
        assert mine, at_kill
        theirs = set(ports) - mine
        others = {port for owner, _, port in at_kill if owner != victim}  # the other worker's traps

        d.wait_log(lambda e: e.get("event") == "worker died, restarting it" and e["worker"] == index, 5)
        d.wait_log(lambda e: e.get("event") == "worker ready" and e["worker"] == index, 15)
        new_pid = worker_pids(d)[index]
        assert new_pid != old_pid
        # Its interrupted actions run again; the other worker's are not touched.
        assert wait_until(lambda: {r["state"] for r in journal_rows(d)} == {"done"}, 20), journal_rows(d)
        starts = marks_of(marks, "start")
        assert {p: starts[p] for p in theirs} == dict.fromkeys(theirs, 1)
        assert {p: starts[p] for p in mine} == dict.fromkeys(mine, 2)
        assert len(journal_rows(d)) == len(ports)  # nothing planned twice

        # The restarted worker receives on its old socket: traffic from many ports reaches both again.
        (d.rules_path).write_text(SEQ_RULES.format(prefix="after"))
        d.signal(signal.SIGHUP)
        assert d.notify is not None
        d.notify.wait_for("READY", 10)
        send_spread(d, loadgen.build_messages(loadgen.LoadSpec(version="v2c"), 1, 64), senders=16)
        lines = d.wait_log(lambda e: str(e.get("event", "")).startswith("after "), 10, count=64)
        assert sorted(int(e["event"].split()[1]) for e in lines) == list(range(1, 65))
        assert index in {e["worker"] for e in lines}
        # Counters survive the restart: what the dead worker counted before its last snapshot stays.
        assert d.wait_metric("trapd_notifications_received_total", 64 + len(others)) >= 64 + len(others)
        assert d.stop() == 0
    finally:
        d.close()


def test_a_worker_restarted_after_a_reload_keeps_the_units_journal(tmp_path: Path) -> None:
    """A reload cannot move the journal (state_dir: "takes effect at the next restart"), and a
    worker restarted after it must not either: it shares the unit's journal with its siblings
    (claims, caps, once-within, and the rows it claimed before it died are recovered there).
    Before, the restarted worker opened a new journal in the reloaded state_dir."""
    d = TrapdDaemon.start(tmp_path, rules=SEQ_RULES.format(prefix="x"), config=TWO)
    try:
        moved = tmp_path / "moved"
        d.write_config({**TWO, "state_dir": str(moved)})
        d.signal(signal.SIGHUP)
        assert d.notify is not None
        d.notify.wait_for("READY", 10)
        d.wait_log("changed settings take effect at the next restart", 10)
        old_pid = worker_pids(d)[1]
        os.kill(old_pid, signal.SIGKILL)
        d.wait_log(lambda e: e.get("event") == "worker ready" and e["worker"] == 1, 15)
        assert worker_pids(d)[1] != old_pid
        assert not moved.exists(), sorted(p.name for p in moved.iterdir())
        assert d.stop() == 0
    finally:
        d.close()


def test_workers_go_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    d = TrapdDaemon.start(tmp_path, rules=SEQ_RULES.format(prefix="x"), config=TWO)
    try:
        pids = list(worker_pids(d).values())
        assert len(pids) == 2 and not any(gone(p) for p in pids)
        assert d.proc is not None
        d.proc.kill()
        d.proc.wait(5)
        assert wait_until(lambda: all(gone(p) for p in pids), 10), [
            Path(f"/proc/{p}/stat").exists() for p in pids
        ]
        # They stopped cleanly (PR_SET_PDEATHSIG sends SIGTERM): the port is free again at once.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(d.address)
    finally:
        d.close()


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def test_a_reload_frees_the_rules_the_workers_started_with(tmp_path: Path) -> None:
    """Each worker starts with the rules the supervisor compiled before forking. The supervisor's
    frame and the worker's role kept them for the worker's life: after two reloads a worker held
    two rule sets (30,000 rules: about 50 MB more than the supervisor, which holds one)."""
    d = TrapdDaemon.start(tmp_path, rules=per_port_rules(30000, "a"), config=TWO, timeout=120)
    assert d.notify is not None and d.proc is not None
    try:
        for n, tag in enumerate(("b", "c"), start=1):
            d.rules_path.write_text(per_port_rules(30000, tag))
            d.notify.pending()
            d.signal(signal.SIGHUP)
            d.notify.wait_for("RELOADING", 60)
            assert "FAILED" not in d.notify.wait_for("READY", 120).get("STATUS", "")
            d.wait_log(lambda e: e.get("event") == "reloaded" and "worker" in e, 60, count=2 * n)
        supervisor = rss_mb(d.proc.pid)
        workers = {i: rss_mb(pid) for i, pid in worker_pids(d).items()}
        # Both sides compiled the same files twice and hold one set each. A worker compiles the
        # new set beside the one it runs (which serves meanwhile) and keeps the allocator's
        # high-water mark of both, the supervisor frees its set first (40-55 MB less here); the
        # start-up set kept for life was about 50 MB more again.
        assert all(mb < supervisor + 75 for mb in workers.values()), (supervisor, workers)
        assert d.stop(60) == 0
    finally:
        d.close()


def test_a_bad_rules_file_refuses_to_start_before_any_worker(tmp_path: Path) -> None:
    bad = "rules:\n  - name: broken\n    match: {notification: IF-MIB::linkDown}\n    actions:\n"
    bad += "      - action: nope\n"
    d = TrapdDaemon.start(tmp_path, rules=bad, config=TWO, wait_ready=False)
    try:
        assert d.wait_exit(20) == 2  # a configuration error: RestartPreventExitStatus=2
        (line,) = d.logs("start-up failed")
        assert "rules.yaml:5" in line["error"], line
        assert not d.logs("worker started")
        assert d.notify is not None
        assert "start-up failed" in d.notify.wait_for("STOPPING", 5)["STATUS"]
    finally:
        d.close()


def test_workers_from_the_command_line_and_a_bad_value(tmp_path: Path) -> None:
    port = free_port()
    d = TrapdDaemon.start(
        tmp_path, rules=SEQ_RULES.format(prefix="x"), args=("--workers", "3"), trap_port=port
    )
    try:
        assert len(worker_pids(d)) == 3
        assert d.stop() == 0
    finally:
        d.close()
    d = TrapdDaemon.start(
        tmp_path / "b", rules="rules: []\n", config={"service": {"workers": 0}}, wait_ready=False
    )
    try:
        assert d.wait_exit(20) == 2
        assert any("service.workers" in e.get("raw", "") and "trapd.yaml:" in e.get("raw", "") for e in d.log)
    finally:
        d.close()


def test_a_status_interval_that_is_not_a_number_is_refused_before_it_stops_the_watchdog(
    tmp_path: Path,
) -> None:
    """``status_interval: .nan`` was taken: the supervisor then asked its workers for their
    counters only now and then (asyncio.sleep(nan)), judged the healthy workers unresponsive and
    withheld WATCHDOG=1 (one ping in 6 s with WatchdogSec=4s, while /healthz said ok): systemd
    would have killed a healthy unit. It is refused at start, with file:line, as 0 is."""
    d = TrapdDaemon.start(
        tmp_path,
        rules="rules: []\n",
        config={"service": {"workers": 2, "status_interval": float("nan")}},
        watchdog_usec=4_000_000,
        wait_ready=False,
    )
    try:
        assert d.wait_exit(20) == 2
        assert any(
            "status_interval must be > 0" in e.get("raw", "") and "trapd.yaml:" in e.get("raw", "")
            for e in d.log
        ), d.log[-8:]
    finally:
        d.close()


def start_wrapped(
    tmp_path: Path,
    prelude: str,
    config: dict[str, Any],
    watchdog_usec: int | None,
    *,
    wait_ready: bool = True,
) -> TrapdDaemon:
    """`trapd run` from a wrapper that runs ``prelude`` first (set a bound, install a handler)."""
    from notify_harness import NotifySocket

    wrapper = tmp_path / "run.py"
    wrapper.write_text(
        f"import sys\n{prelude}\nfrom trapd.cli import main\n"
        "sys.exit(main(['run', '--config', sys.argv[1]]))\n"
    )
    d = TrapdDaemon(tmp_path, free_port(), free_port(socket.SOCK_STREAM))
    d.rules_path.write_text(SEQ_RULES.format(prefix="x"))
    d.write_config(config)
    d.notify = NotifySocket(tmp_path / "notify.sock")
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env["NOTIFY_SOCKET"] = d.notify.address
    if watchdog_usec is not None:
        env["WATCHDOG_USEC"] = str(watchdog_usec)
    d.proc = subprocess.Popen(
        [sys.executable, str(wrapper), str(d.config_path)], cwd=tmp_path, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    import threading

    threading.Thread(target=d._read_log, args=(d.proc,), daemon=True).start()
    if wait_ready:
        d.wait_ready()
    return d


def replaced_while_pinging(d: TrapdDaemon, stuck: int, timeout: float = 30) -> list[float]:
    """Wait until worker 1's ``stuck`` process is replaced by a ready one; the gaps between the
    WATCHDOG=1 pings meanwhile (the silence up to the end counts too)."""
    assert d.notify is not None
    pings = [time.monotonic()]
    deadline = pings[0] + timeout

    def back() -> bool:
        return worker_pids(d)[1] != stuck and any(
            e["worker"] == 1 and e["pid"] == worker_pids(d)[1] for e in d.logs("worker ready")
        )

    while not back() and time.monotonic() < deadline:
        with contextlib.suppress(TimeoutError):
            if "WATCHDOG" in d.notify.receive(0.1):
                pings.append(time.monotonic())
    assert back(), f"worker 1 not replaced; log tail: {d.log[-8:]}"
    pings.append(time.monotonic())
    return [round(b - a, 2) for a, b in itertools.pairwise(pings)]


def test_a_worker_whose_loop_is_blocked_is_replaced_with_its_stack_in_the_log(tmp_path: Path) -> None:
    """A worker whose event loop is blocked (here a signal handler that sleeps an hour in its main
    thread) stopped answering the supervisor, which only withheld WATCHDOG=1: systemd then
    killed and restarted the whole unit (every worker, their running actions) 15 to 45 s later,
    and without a systemd watchdog (a drop-in with WatchdogSec=0, a container) the worker stayed
    stuck for ever, its share of the traps lost. The supervisor now replaces it itself: SIGUSR2,
    on which faulthandler writes where each thread was stuck to stderr (the journal), then
    SIGKILL, then a restart like any other death; the other worker and the pings go on. Not
    SIGABRT (as first done): outside the unit's LimitCORE=0 that dumps a core, which holds
    every secret trapd loaded, in clear."""
    prelude = "import signal, time\nsignal.signal(signal.SIGUSR1, lambda *a: time.sleep(3600))"
    d = start_wrapped(tmp_path, prelude, TWO, watchdog_usec=2_000_000)
    try:
        assert d.notify is not None
        d.notify.wait_for("WATCHDOG", 5)
        stuck = worker_pids(d)[1]
        os.kill(stuck, signal.SIGUSR1)
        gaps = replaced_while_pinging(d, stuck)
        assert max(gaps) < 2.0, gaps
        (line,) = d.logs("worker stuck, replacing it")
        assert line["worker"] == 1 and line["pid"] == stuck and line["silent_for"] >= 1.5, line
        (died,) = d.logs("worker died, restarting it")
        assert died["exit"] == "signal 9", died
        raw = [e["raw"] for e in d.log if "raw" in e]
        assert any("in <lambda>" in r for r in raw), raw[-20:]  # faulthandler's stack of the stuck thread

        def healthy() -> None:
            code, health = d.healthz()
            assert code == 200 and health["workers_up"] == 2, health

        eventually(healthy)
        assert d.metric("trapd_worker_restarts_total") == 1
        assert d.stop() == 0
    finally:
        d.close()


def test_the_workers_start_bound_is_asked_of_systemd(tmp_path: Path) -> None:
    """The supervisor gives its workers dispatch.journal.lease + 30 s to be ready (a worker may wait
    out a registration its name left on a shared journal): 150 s with a lease of 2 minutes, past
    systemd's start timeout (90 s by default), which then killed the unit mid-start without a word
    of which worker or why, and Restart= began again. The supervisor now asks systemd for that
    time (EXTEND_TIMEOUT_USEC=) before it waits."""
    config = {**TWO, "dispatch": {"journal": {"lease": "2m"}}}
    d = TrapdDaemon.start(tmp_path, rules=SEQ_RULES.format(prefix="x"), config=config)
    try:
        assert d.notify is not None
        before_ready = d.notify.messages[
            : next(i for i, m in enumerate(d.notify.messages) if "READY" in m) + 1
        ]
        extended = [int(m["EXTEND_TIMEOUT_USEC"]) for m in before_ready if "EXTEND_TIMEOUT_USEC" in m]
        assert extended and max(extended) >= 150_000_000, before_ready
        assert d.stop() == 0
    finally:
        d.close()


def test_a_worker_that_never_becomes_ready_fails_the_start_with_its_stack_in_the_log(
    tmp_path: Path,
) -> None:
    """A worker stuck in its start-up (its loop blocked before it says ready: a plugin, a journal
    database that does not answer) left the supervisor waiting for ever: under systemd only the
    unit's start timeout (90 s) ended it, with no word of which worker or where; outside systemd
    (a container, a terminal) trapd stayed up without receiving a trap on that worker's share.
    Now the start is bounded (dispatch.journal.lease, which a worker may wait out, plus
    WORKER_START_GRACE, lowered here): SIGUSR2 for its stack, SIGKILL, the others stopped, and
    the start fails with the worker named, exit 1 (Restart= tries again)."""
    prelude = (
        "import time\nimport trapd.service.workers as w\nw.WORKER_START_GRACE = 2.0\n"
        "_attach = w.WorkerRole.attach\n"
        "async def attach(self, daemon):\n"
        "    if self.index == 1:\n"
        "        time.sleep(3600)  # stuck before it says ready\n"
        "    await _attach(self, daemon)\n"
        "w.WorkerRole.attach = attach\n"
    )
    config = {**TWO, "dispatch": {"journal": {"lease": "2s"}}}
    d = start_wrapped(tmp_path, prelude, config, None, wait_ready=False)
    try:
        started = time.monotonic()
        assert d.wait_exit(40) == 1, d.log[-8:]
        assert time.monotonic() - started < 30
        (line,) = d.logs("start-up failed")
        assert "worker 1" in line["error"] and "not ready within 4 s" in line["error"], line
        (stuck,) = d.logs("worker not ready in time, killing it")
        assert stuck["worker"] == 1, stuck
        raw = [e["raw"] for e in d.log if "raw" in e]
        assert any("in attach" in r for r in raw), raw[-20:]  # faulthandler's stack of where it hung
        assert [e["exit"] for e in d.logs("worker stopped") if e["worker"] == 0] == ["status 0"]
        assert d.notify is not None
        assert "worker 1" in d.notify.wait_for("STOPPING", 5)["STATUS"]
        assert not any("READY" in m for m in d.notify.messages)
    finally:
        d.close()


def test_a_stop_while_the_workers_start_is_a_clean_stop(tmp_path: Path) -> None:
    """SIGTERM (systemctl stop, or restart) while the workers were still starting: a worker that
    had not yet installed its handlers ended at once by SIGTERM's default action, the supervisor
    counted that exit (-15) as a failure and exited 1, so a plain stop left the unit 'failed'.
    A worker's end by the SIGTERM the supervisor sent it is a clean stop (systemd counts a
    process that SIGTERM ended as clean too)."""
    prelude = (
        "import time\nimport trapd.service.workers as w\n_run = w.run_on_loop\n"
        "def run_on_loop(daemon):\n"
        "    time.sleep(3)  # forked, signals at their defaults, not yet running\n"
        "    return _run(daemon)\n"
        "w.run_on_loop = run_on_loop\n"
    )
    d = start_wrapped(tmp_path, prelude, TWO, None, wait_ready=False)
    try:
        d.wait_log("worker started", 30, count=2)
        d.signal(signal.SIGTERM)
        assert d.wait_exit(30) == 0, d.log[-6:]
        assert sorted(e["exit"] for e in d.logs("worker stopped")) == ["signal 15", "signal 15"]
    finally:
        d.close()


def test_a_stop_in_a_workers_first_moments_after_its_fork_is_not_lost(tmp_path: Path) -> None:
    """Between its fork and resetting its signal handlers a worker still had the supervisor's:
    a SIGTERM then (the supervisor stopping just as it forked, or restarted, a worker) ran the
    supervisor's handler in the worker (noted in the worker's copy, or written to the parent's
    loop), and the worker went on, started, and ran until the stop's bound (shutdown_timeout +
    30 s) had it killed. Signals are now blocked across the fork: the worker gets it once its
    handlers are its own."""
    prelude = (
        "import time\nimport trapd.service.workers as w\n_die = w._die_with_parent\n"
        "def die_with_parent(parent):\n"
        "    time.sleep(3)  # forked, the supervisor's signal handlers still in place\n"
        "    _die(parent)\n"
        "w._die_with_parent = die_with_parent\n"
    )
    d = start_wrapped(tmp_path, prelude, TWO, None, wait_ready=False)
    try:
        d.wait_log("worker started", 30, count=2)
        stopped = time.monotonic()
        d.signal(signal.SIGTERM)
        assert d.wait_exit(60) == 0, d.log[-6:]
        assert time.monotonic() - stopped < 10
        assert not d.logs("worker did not stop, killing it")
    finally:
        d.close()


def test_a_sighup_to_every_process_while_the_workers_start_is_not_their_end(tmp_path: Path) -> None:
    """`systemctl kill -s HUP trapd` (every process of the unit, systemd's default) or a
    `pkill -HUP trapd` while the workers were starting: a worker whose loop's handler was not yet
    there ended by SIGHUP's default action, and the whole start failed ('worker 0 exited with
    status -1'). A starting worker now ignores SIGHUP until its loop's handler (the rules it starts
    with are the supervisor's, and the supervisor passes the reload on)."""
    prelude = (
        "import time\nimport trapd.service.workers as w\n_run = w.run_on_loop\n"
        "def run_on_loop(daemon):\n"
        "    time.sleep(3)  # forked, its own signal dispositions, not yet running\n"
        "    return _run(daemon)\n"
        "w.run_on_loop = run_on_loop\n"
    )
    d = start_wrapped(tmp_path, prelude, TWO, None, wait_ready=False)
    try:
        d.wait_log("worker started", 30, count=2)
        for pid in worker_pids(d).values():
            os.kill(pid, signal.SIGHUP)
        d.wait_ready(30)
        assert not d.logs("start-up failed")
        assert d.stop() == 0
    finally:
        d.close()


# In the test's wrapper: worker 1 fails to load any rules on a reload (a MemoryError in it, a file
# it cannot read that the supervisor could); the supervisor and worker 0 load them.
WORKER_1_REFUSES = """\
import trapd.service.daemon as dm
_compile = dm.compile_reload
async def compile_reload(options, loaded, log, adjust=None, running=None, **kw):
    if adjust is not None and adjust.__self__.index == 1:
        raise MemoryError("worker 1 out of memory")
    return await _compile(options, loaded, log, adjust, running, **kw)
dm.compile_reload = compile_reload
"""


def test_a_worker_that_refuses_a_reload_is_replaced_and_the_unit_runs_one_rule_set(
    tmp_path: Path,
) -> None:
    """A reload the supervisor checked and worker 0 took, refused by worker 1 alone (it failed to
    load the rules: out of memory, a read error): reported as a failed reload, but worker 0 ran the
    new rules and worker 1 the old, so a switch's trap was acted on by whichever rules its source
    port hashed to, /healthz said 200 ok, and a worker restarted later got the old ones. Now the
    refusing worker is replaced by one forked with the rules the supervisor compiled (no file to
    read, nothing to compile): the unit runs one rule set, said loudly (an error naming the worker
    and why, trapd_worker_restarts_total)."""
    loadgen = _loadgen()
    d = start_wrapped(tmp_path, WORKER_1_REFUSES, TWO, None)
    try:
        refusing = worker_pids(d)[1]
        d.rules_path.write_text(SEQ_RULES.format(prefix="b"))
        d.signal(signal.SIGHUP)
        assert d.notify is not None
        d.notify.wait_for("RELOADING", 10)
        d.notify.wait_for("READY", 30)
        (line,) = d.wait_log("worker refused the reload, replacing it", 10)
        assert line["worker"] == 1 and "MemoryError: worker 1 out of memory" in line["error"], line

        def replaced_and_up() -> None:
            assert worker_pids(d)[1] != refusing
            code, health = d.healthz()
            assert code == 200 and health["workers_up"] == 2 and health["status"] == "ok", health

        eventually(replaced_and_up, 30)
        send_spread(d, loadgen.build_messages(loadgen.LoadSpec(version="v2c"), 1, 64), senders=16)
        lines = d.wait_log(lambda e: str(e.get("event", "")).startswith(("a ", "b ")), 15, count=64)
        assert {e["worker"] for e in lines} == {0, 1}
        assert {str(e["event"])[0] for e in lines} == {"b"}, Counter(
            (e["worker"], e["event"][0]) for e in lines
        )
        scrape = d.metrics()
        assert d.metric("trapd_reloads_total", scrape, result="ok") == 1
        assert d.metric("trapd_config_last_reload_successful", scrape) == 1
        assert d.metric("trapd_worker_restarts_total", scrape) == 1
        assert d.metric("trapd_workers_other_rules", scrape) == 0
        assert d.stop() == 0
    finally:
        d.close()


def test_a_worker_replaced_after_a_refused_reload_finishes_its_actions_first(tmp_path: Path) -> None:
    """The worker replaced after refusing a reload stops as on SIGTERM: its running actions get
    dispatch.shutdown_timeout. Draining, it answers the supervisor no more; past the stuck bound
    (15 s here) the supervisor took it for stuck and killed it, its actions half done (run again
    by its successor)."""
    marks = tmp_path / "marks"
    config = {**TWO, "dispatch": {"workers": 16, "shutdown_timeout": "60s"}}
    d = start_wrapped(tmp_path, WORKER_1_REFUSES, config, None)
    try:
        d.rules_path.write_text(SLOW_RULES.format(marks=marks, seconds=20))
        d.signal(signal.SIGHUP)
        assert d.notify is not None
        d.notify.wait_for("RELOADING", 10)
        d.notify.wait_for("READY", 30)
        # Worker 1 refused those rules and was replaced at once; the next reload is taken by both.
        d.wait_log(lambda e: e.get("event") == "worker ready" and e["worker"] == 1, 30)
        d.rules_path.write_text(SLOW_RULES.format(marks=marks, seconds=20) + "\n")
        ports = list(range(1, 17))
        for port in ports:
            snmp_send("snmptrap", *link_down(d.target(), port), check=True)
        assert wait_until(lambda: len(marks_of(marks, "start")) == len(ports), 15), marks_of(marks, "start")
        on_1 = {port for owner, state, port in claims(d) if owner == "worker-1" and state == "running"}
        assert on_1, claims(d)
        refusing = worker_pids(d)[1]
        d.signal(signal.SIGHUP)  # refused by worker 1 again: replaced while its actions run
        d.wait_log(
            lambda e: e.get("event") == "worker refused the reload, replacing it" and e["pid"] == refusing, 30
        )
        d.wait_log(lambda e: e.get("event") == "worker stopped, starting its replacement", 60, count=2)
        assert not d.logs("worker stuck, replacing it")
        assert on_1 <= set(marks_of(marks, "end")), marks_of(marks, "end")
        assert max(Counter(marks_of(marks, "start")).values()) == 1  # none run again
        assert d.stop(60) == 0
    finally:
        d.close()


def test_workers_left_on_other_rules_than_the_supervisors_are_named_in_healthz_and_counted(
    tmp_path: Path,
) -> None:
    """Every worker answered a reload too late (RELOAD_TIMEOUT, lowered here, passed while each
    compiled): the supervisor reported the reload failed and kept the old rules for workers it
    restarts later, while each worker, once its compile ended, ran the new ones. Nothing said so:
    /healthz 200 ok. Now the supervisor keeps the digest of the rules each worker said it loaded
    (a late answer too) and /healthz is 503 degraded naming the workers on other rules, counted in
    trapd_workers_other_rules; the next reload that works puts them back in step."""
    prelude = (
        "import time\nimport trapd.service.workers as w\nw.RELOAD_TIMEOUT = 1.0\n"
        "import trapd.service.daemon as dm\n_compile = dm.compile_reload\n"
        "async def compile_reload(options, loaded, log, adjust=None, running=None, **kw):\n"
        "    import asyncio, pathlib\n"
        "    if adjust is not None and pathlib.Path('slow').exists():\n"
        "        await asyncio.sleep(3)\n"
        "    return await _compile(options, loaded, log, adjust, running, **kw)\n"
        "dm.compile_reload = compile_reload\n"
    )
    d = start_wrapped(tmp_path, prelude, TWO, None)
    try:
        (tmp_path / "slow").write_text("")
        d.rules_path.write_text(SEQ_RULES.format(prefix="b"))
        d.signal(signal.SIGHUP)
        assert d.notify is not None
        d.notify.wait_for("RELOADING", 10)
        assert "no answer" in d.notify.wait_for("READY", 30)["STATUS"]

        def named() -> None:
            code, health = d.healthz()
            assert code == 503 and health["status"] == "degraded", health
            assert health["workers_other_rules"] == [0, 1], health
            assert d.metric("trapd_workers_other_rules") == 2

        eventually(named, 30)
        (tmp_path / "slow").unlink()
        d.signal(signal.SIGHUP)
        d.notify.wait_for("RELOADING", 10)
        assert "reload failed" not in d.notify.wait_for("READY", 30).get("STATUS", "")

        def in_step() -> None:
            code, health = d.healthz()
            assert code == 200 and "workers_other_rules" not in health, health
            assert d.metric("trapd_workers_other_rules") == 0

        eventually(in_step, 30)
        assert d.stop() == 0
    finally:
        d.close()


def test_a_stopped_worker_is_killed_and_replaced_and_shows_in_healthz_meanwhile(tmp_path: Path) -> None:
    """A worker that cannot even write its stack (SIGSTOP here; as good as stuck in the kernel)
    gets SIGKILL all the same; /healthz says "replacing" meanwhile, without a watchdog too."""
    prelude = "import trapd.service.workers as w\nw.STACK_GRACE = 5.0"
    d = start_wrapped(tmp_path, prelude, {"service": {"workers": 2, "status_interval": 0.5}}, None)
    try:
        stuck = worker_pids(d)[1]
        os.kill(stuck, signal.SIGSTOP)
        # No watchdog: a worker silent for 15 s (half the 30 s assumed) is stuck.
        d.wait_log("worker stuck, replacing it", 30)

        def replacing() -> None:
            code, health = d.healthz()
            assert code == 503 and health["workers_down"] == {"1": "replacing"}, health

        eventually(replacing, 2)
        (died,) = d.wait_log("worker died, restarting it", 20)
        assert died["exit"] == "signal 9", died
        assert gone(stuck)

        def healthy() -> None:
            code, health = d.healthz()
            assert code == 200 and health["workers_up"] == 2, health

        eventually(healthy)
        assert d.stop() == 0
    finally:
        d.close()


def test_sigterm_during_a_reload_abandons_it_without_ready_after_stopping(tmp_path: Path) -> None:
    """SIGTERM while the workers are reloading: the stop wins, the reload is abandoned.

    Worker 1 is held (SIGSTOP: a worker still compiling a big rule set) so the supervisor is
    waiting for its answer when SIGTERM comes. Nothing may follow STOPPING=1 that says the unit
    is ready again (READY=1, a "reload failed" STATUS=), and no reload is logged as failed.
    """
    d = TrapdDaemon.start(tmp_path, rules=SEQ_RULES.format(prefix="a"), config=TWO)
    assert d.notify is not None
    notify = d.notify
    try:
        held = worker_pids(d)[1]
        os.kill(held, signal.SIGSTOP)
        try:
            d.rules_path.write_text(SEQ_RULES.format(prefix="b"))
            d.signal(signal.SIGHUP)
            notify.wait_for("RELOADING", 10)
            d.wait_log(lambda e: e.get("event") == "reloaded" and e.get("worker") == 0, 10)
            d.signal(signal.SIGTERM)
            notify.wait_for("STOPPING", 10)
        finally:
            os.kill(held, signal.SIGCONT)
        assert d.wait_exit(30) == 0
        after = notify.pending()
        assert not [m for m in after if "READY" in m or "reload" in m.get("STATUS", "")], after
        supervisor = [e for e in d.logs() if e.get("logger") == "trapd.supervisor"]
        assert not [e for e in supervisor if str(e.get("event", "")).startswith("reload")], supervisor[-8:]
    finally:
        d.close()


def test_a_worker_waiting_out_its_restart_backoff_does_not_stop_the_watchdog(tmp_path: Path) -> None:
    """The backoff before a restart reaches 8 s (the 4th death in a minute), longer than the
    supervisor's staleness bound (half of WatchdogSec, or 3 status intervals) with a short
    WatchdogSec: the dead worker then counted as "down" rather than "restarting" and WATCHDOG=1
    was withheld until it came back, so systemd would have killed the unit for a worker the
    supervisor was restarting. Here the first backoff is raised to 4 s (a wrapper, as below)
    and WatchdogSec is 2 s: no gap between pings may reach it."""
    wrapper = tmp_path / "run.py"
    wrapper.write_text(
        "import sys\nimport trapd.service.workers as w\nw.BACKOFF_FIRST = 4.0\n"
        "from trapd.cli import main\nsys.exit(main(['run', '--config', sys.argv[1]]))\n"
    )
    d = TrapdDaemon(tmp_path, free_port(), free_port(socket.SOCK_STREAM))
    d.rules_path.write_text(SEQ_RULES.format(prefix="x"))
    d.write_config({"service": {"workers": 2, "status_interval": 0.3}})
    from notify_harness import NotifySocket

    d.notify = notify = NotifySocket(tmp_path / "notify.sock")
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env.update(NOTIFY_SOCKET=notify.address, WATCHDOG_USEC="2000000")
    d.proc = subprocess.Popen(
        [sys.executable, str(wrapper), str(d.config_path)], cwd=tmp_path, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    import threading

    threading.Thread(target=d._read_log, args=(d.proc,), daemon=True).start()
    try:
        d.wait_ready()
        notify.wait_for("WATCHDOG", 5)
        os.kill(worker_pids(d)[1], signal.SIGKILL)
        pings = [time.monotonic()]
        deadline = pings[0] + 20
        while not d.logs("worker ready") and time.monotonic() < deadline:
            with contextlib.suppress(TimeoutError):
                if "WATCHDOG" in notify.receive(0.1):
                    pings.append(time.monotonic())
        assert d.logs("worker ready"), "worker 1 not restarted"
        pings.append(time.monotonic())  # the silence up to its return counts too
        gaps = [round(b - a, 2) for a, b in itertools.pairwise(pings)]
        assert pings[-1] - pings[0] > 4 and max(gaps) < 2.0, gaps
        assert d.stop() == 0
    finally:
        d.close()


def test_a_worker_that_keeps_dying_stops_the_unit_with_an_error(tmp_path: Path) -> None:
    """Past MAX_RESTARTS deaths in a minute the supervisor stops everything and exits 1 (Restart= decides).

    The backoff is lowered for the test (0.05 s instead of 0.5 s doubling to 10 s) by a wrapper
    that sets the module's bounds before `trapd run` starts; the bound itself is the shipped one.
    """
    import trapd.service.workers as workers

    wrapper = tmp_path / "run.py"
    wrapper.write_text(
        "import sys\nimport trapd.service.workers as w\nw.BACKOFF_FIRST = w.BACKOFF_MAX = 0.05\n"
        "from trapd.cli import main\nsys.exit(main(['run', '--config', sys.argv[1]]))\n"
    )
    d = TrapdDaemon(tmp_path, free_port(), free_port(socket.SOCK_STREAM))
    d.rules_path.write_text(SEQ_RULES.format(prefix="x"))
    d.write_config(TWO)
    from notify_harness import NotifySocket

    d.notify = NotifySocket(tmp_path / "notify.sock")
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env["NOTIFY_SOCKET"] = d.notify.address
    d.proc = subprocess.Popen(
        [sys.executable, str(wrapper), str(d.config_path)], cwd=tmp_path, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    import threading

    threading.Thread(target=d._read_log, args=(d.proc,), daemon=True).start()
    try:
        d.wait_ready()
        killed = 0
        while d.poll() is None and killed <= workers.MAX_RESTARTS:
            pid = worker_pids(d)[0]
            os.kill(pid, signal.SIGKILL)
            killed += 1
            wait_until(lambda p=pid: worker_pids(d)[0] != p or d.poll() is not None, 10)
        assert d.wait_exit(30) == 1
        assert killed == workers.MAX_RESTARTS + 1
        assert len(d.logs("worker died, restarting it")) == workers.MAX_RESTARTS
        (fatal,) = d.logs("worker keeps dying, stopping trapd")
        assert fatal["worker"] == 0 and "6 times" in fatal["error"]
        # The other worker was stopped as on SIGTERM, cleanly.
        assert [e["exit"] for e in d.logs("worker stopped") if e["worker"] == 1] == ["status 0"]
        assert d.notify.wait_for("STOPPING", 5)
    finally:
        d.close()


def test_a_second_unit_on_the_same_trap_port_is_refused_not_given_half_the_traps(tmp_path: Path) -> None:
    """A second `trapd run --workers 2` of the same user on the same trap port (an admin trying
    `sudo -u trapd trapd run` by hand, a copy of the unit) joined the first one's SO_REUSEPORT
    group without an error: the kernel then gave it a share of every switch's traps, acted on
    by a second daemon with its own journal. It must fail to start as a lone trapd does, with
    the address in the reason, before any worker is forked."""
    first = TrapdDaemon.start(tmp_path / "a", rules=SEQ_RULES.format(prefix="x"), config=TWO)
    try:
        second = TrapdDaemon.start(
            tmp_path / "b", rules=SEQ_RULES.format(prefix="y"), config=TWO, trap_port=first.trap_port,
            wait_ready=False,
        )  # fmt: skip
        try:
            assert second.wait_exit(30) == 1, second.log[-8:]
            (line,) = second.logs("start-up failed")
            assert f"cannot listen on 127.0.0.1:{first.trap_port}" in line["error"], line
            assert "in use" in line["error"], line
            assert not second.logs("worker started")
        finally:
            second.close()
        assert first.stop() == 0
    finally:
        first.close()


def test_a_metrics_port_in_use_is_refused_before_any_worker_starts(tmp_path: Path) -> None:
    """The supervisor bound service.metrics.listen only after forking its workers: they started,
    took traps and ran actions for a moment, and the error named neither the setting nor its
    purpose ("error while attempting to bind on address ...")."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        d = TrapdDaemon(tmp_path, free_port(), port)
        d.rules_path.write_text(SEQ_RULES.format(prefix="x"))
        d.write_config(TWO)
        d.launch()
        try:
            assert d.wait_exit(30) == 1, d.log[-8:]
            (line,) = d.logs("start-up failed")
            assert "service.metrics.listen" in line["error"] and f"127.0.0.1:{port}" in line["error"], line
            assert not d.logs("worker started")
        finally:
            d.close()


def test_log_lines_of_several_workers_never_interleave_in_a_pipe(tmp_path: Path) -> None:
    """Each log line is one write(), but a pipe keeps a write whole only up to PIPE_BUF (4 KiB):
    when it is full, a longer line goes in pieces, and another worker's line got in between
    (`trapd run | ...`, a container's log pipe, this harness): two lines of 40 came out as one
    broken JSON line and a headless tail. Lines of 16-20 KB here (a log action's message with a
    5,400-byte value), from two workers at once, read slowly: every line must parse."""
    rules = """\
rules:
  - name: big
    match: {notification: IF-MIB::linkDown}
    actions:
      - action: log
        message: "{{ varbinds['1.3.6.1.4.1.99999.1.1'].display }}"
"""
    d = TrapdDaemon(tmp_path, free_port(), None)
    d.rules_path.write_text(rules)
    d.write_config(TWO)
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "trapd", "run", "--config", str(d.config_path)], cwd=tmp_path, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    lines: list[bytes] = []

    def read_slowly() -> None:
        assert proc.stdout is not None
        buf = b""
        while chunk := proc.stdout.read1(65536):
            buf += chunk
            *whole, buf = buf.split(b"\n")
            lines.extend(whole)
            time.sleep(0.02)  # a reader that keeps the pipe full: writes go in pieces

    import threading

    reader = threading.Thread(target=read_slowly, daemon=True)
    reader.start()
    try:
        assert wait_until(lambda: any(b'"trapd ready"' in x and b"supervisor" in x for x in lines), 30)
        value = "\u00e9" * 2700  # each written \u00e9 in the JSON line: about 16 KB a line
        target = f"udp:127.0.0.1:{d.trap_port}"
        senders = [
            subprocess.Popen(
                ["snmptrap", "-v", "2c", "-c", "public", target, "", LINK_DOWN, SEQ_OID, "s", f"{value}{i}"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for i in range(60)
        ]
        for sender in senders:
            sender.wait(30)

        def logged() -> int:  # the log action's own lines (its message is the value)
            return sum(1 for x in lines if x.startswith(b'{"ts"') and b'"event": "\\u00e9\\u00e9' in x)

        wait_until(lambda: logged() >= 60, 60)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        reader.join(10)
        broken = [x[:80] + b" ... " + x[-80:] for x in lines if not _is_json(x)]
        assert not broken, broken
        assert logged() == 60
        assert any(len(x) > 16_000 for x in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _is_json(line: bytes) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False
