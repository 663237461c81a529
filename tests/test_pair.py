"""trapd on PostgreSQL, as real processes: `trapd journal migrate`, `trapd run`, `trapd journal`.

The journal is a private PostgreSQL 15 (tests/pg_harness.py); traps come from
net-snmp's ``snmptrap`` / ``snmpinform``; actions are ``exec`` programs that
append a line to a file (and, in the pair test, webhooks to a local HTTP server
that counts its calls), so "once" is counted at the target as well as in the
journal.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import psycopg
import pytest
import yaml
from daemon_harness import IF_INDEX, LINK_DOWN, REPO, TrapdDaemon, link_down
from listen_harness import needs_netsnmp, snmp_send
from pg_harness import PgServer, SplitPg

from trapd.dispatch.journal.postgres import SCHEMA_VERSION

pytestmark = [pytest.mark.integration, needs_netsnmp]

RULES = """\
rules:
  - name: port-down
    match: {{notification: IF-MIB::linkDown}}
    actions:
      - action: exec
        argv: [/bin/sh, -c, 'echo "$1" >> {marks}', sh, "{{{{ ifIndex }}}}"]
        key: "port-{{{{ ifIndex }}}}"
"""


def pg_config(url: str, instance: str, **journal: Any) -> dict[str, Any]:
    return {"dispatch": {"journal": {"url": url, "instance": instance, **journal}}}


def trapd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trapd", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def marks(path: Path) -> Counter[str]:
    return Counter(path.read_text().split()) if path.exists() else Counter()


def wait_for(check: Any, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)


def states(url: str) -> Counter[str]:
    with psycopg.connect(url) as conn:
        return Counter(
            {s: n for s, n in conn.execute("SELECT state, count(*) FROM trapd_actions GROUP BY state")}
        )


def test_one_trapd_on_postgresql(tmp_path: Path, pg_server: PgServer) -> None:
    url = pg_server.new_database(migrated=False)
    out = tmp_path / "marks"
    d = TrapdDaemon.start(
        tmp_path / "d", rules=RULES.format(marks=out), config=pg_config(url, "dhcp1"), wait_ready=False
    )
    # No schema yet: the daemon refuses to start, and says what to do.
    assert d.wait_exit(30) != 0
    assert any("trapd journal migrate" in str(e) for e in d.log), d.log[-5:]
    r = trapd("journal", "--config", str(d.config_path), "migrate")
    assert r.returncode == 0 and f"created -> {SCHEMA_VERSION}" in r.stdout, r.stderr
    assert "up to date" in trapd("journal", "--config", str(d.config_path), "migrate").stdout
    d.launch()
    try:
        d.wait_ready(30)
        for i in (1, 2, 3):
            assert snmp_send("snmptrap", *link_down(d.target(), i)).returncode == 0
        wait_for(lambda: states(url)["done"] == 3, what="three actions done")
        assert marks(out) == Counter({"1": 1, "2": 1, "3": 1})
        r = trapd("journal", "--config", str(d.config_path), "list", "--state", "done", "--json")
        assert r.returncode == 0 and r.stdout.count('"state": "done"') == 3, (r.stdout, r.stderr)
        status, health = d.healthz()
        assert status == 200, health
    finally:
        d.stop()


PAIR_RULES = """\
rules:
  - name: port-down
    match: {{notification: IF-MIB::linkDown, varbinds: {{ifIndex: {{range: [1, 999]}}}}}}
    actions:
      - action: exec
        argv: [/bin/sh, -c, 'echo "start $1" >> {marks}; sleep {seconds}; echo "end $1" >> {marks}', sh,
               "{{{{ ifIndex }}}}"]
        key: "port-{{{{ ifIndex }}}}"
        timeout: 60s
  - name: port-flap
    match: {{notification: IF-MIB::linkDown, varbinds: {{ifIndex: {{range: [1000, 1999]}}}}}}
    actions:
      - action: exec
        argv: [/bin/sh, -c, 'echo "delayed $1" >> {marks}', sh, "{{{{ ifIndex }}}}"]
        key: "flap-{{{{ ifIndex }}}}"
        delay: 3s
        cancel-key: "port:{{{{ source }}}}:{{{{ ifIndex }}}}"
  - name: port-up
    match: {{notification: IF-MIB::linkUp}}
    cancel: "port:{{{{ source }}}}:{{{{ ifIndex }}}}"
  - name: mac-removed
    match: {{notification: CISCO-MAC-NOTIFICATION-MIB::cmnMacChangedNotification}}
    foreach: {{items: mac_changes, where: {{operation: removed}}}}
    actions:
      - action: exec
        argv: [/bin/sh, -c, 'echo "mac $1" >> {marks}', sh, "{{{{ item.mac }}}}"]
        key: "mac-{{{{ item.mac }}}}"
"""
MAC_CHANGED = "1.3.6.1.4.1.9.9.215.2.0.1"
MAC_CHANGED_MSG = "1.3.6.1.4.1.9.9.215.1.1.8.1.2.1"
# Two 11-octet tuples: removed (2), VLAN 10, MAC, bridge port; then the end marker.
TWO_MACS_REMOVED = "02000a001122334401000102000a001122334402000200"
LINK_UP = "1.3.6.1.6.3.1.1.5.4"


def send(d: TrapdDaemon, if_index: int, uptime: int, *, inform: str = "", trap: str = LINK_DOWN) -> int:
    """snmptrap (or, with ``inform`` = "-r N -t S", snmpinform) of one v2c notification to ``d``.

    sysUpTime is given, not the sender's clock: sent to both hosts, it is one notification.
    """
    tool, opts = ("snmpinform", inform.split()) if inform else ("snmptrap", [])
    args = ["-v", "2c", "-c", "public", *opts, d.target(), str(uptime), trap, f"{IF_INDEX}.{if_index}", "i"]
    return snmp_send(tool, *args, str(if_index), timeout=60).returncode


def start_pair(
    tmp_path: Path, url: str, rules: str, *, lease: str = "30s", interrupted: str = "rerun"
) -> tuple[TrapdDaemon, TrapdDaemon]:
    hosts = []
    for name in ("dhcp1", "dhcp2"):
        config = pg_config(url, name, lease=lease, poll_interval="200ms")
        config["dispatch"]["interrupted"] = interrupted
        hosts.append(TrapdDaemon.start(tmp_path / name, rules=rules, config=config, timeout=60))
    return hosts[0], hosts[1]


def lines(path: Path) -> Counter[str]:
    return Counter(path.read_text().splitlines()) if path.exists() else Counter()


class HookCounter:
    """A real HTTP server on loopback (http.server in a thread): counts the requests to each path."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        self._lock = threading.Lock()
        counter = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                with counter._lock:
                    counter.calls[unquote(self.path)] += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                return None  # not on the test's stderr

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def counts(self) -> Counter[str]:
        with self._lock:
            return Counter(self.calls)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def with_webhooks(rules_yaml: str, base_url: str) -> str:
    """``rules_yaml`` with a webhook beside each rule's exec (same key, delay, cancel-key):
    POST base_url/RULE/WHAT, WHAT being what the exec marks (ifIndex, or the foreach item's MAC)."""
    rules = yaml.safe_load(rules_yaml)
    for rule in rules["rules"]:
        for act in list(rule.get("actions", [])):
            what = "{{ item.mac }}" if "foreach" in rule else "{{ ifIndex }}"
            hook = {"action": "webhook", "url": f"{base_url}/{rule['name']}/{what}", "timeout": "10s"}
            hook.update({k: act[k] for k in ("delay", "cancel-key") if k in act})
            rule["actions"].append(hook)
    return json.dumps(rules)  # YAML is a superset of JSON


def test_two_hosts_act_once_on_traps_and_informs_sent_to_both(tmp_path: Path, pg_server: PgServer) -> None:
    """Each action (exec and webhook) runs once, counted in the journal and at its target."""
    url = pg_server.new_database()
    out = tmp_path / "marks"
    hooks = HookCounter()
    rules = with_webhooks(PAIR_RULES.format(marks=out, seconds=0), hooks.url)
    a, b = start_pair(tmp_path, url, rules)
    try:
        ports = range(1, 21)
        for i in ports:
            inform = "-r 2 -t 5" if i % 2 else ""  # informs: acknowledged by both hosts
            for d in (a, b) if i % 3 else (b, a):  # either host first
                assert send(d, i, 100_000 + i, inform=inform) == 0
        # Delays armed by a linkDown received by both, one cancelled by a linkUp received by one.
        for port in (1001, 1002):
            for d in (a, b):
                assert send(d, port, 200_000 + port) == 0
        assert send(b, 1001, 200_100, trap=LINK_UP) == 0
        # A foreach notification: each item's action once, whichever host journals it.
        for d in (b, a):
            mac_args = [d.target(), "250000", MAC_CHANGED, MAC_CHANGED_MSG, "x", TWO_MACS_REMOVED]
            assert snmp_send("snmptrap", "-v", "2c", "-c", "public", *mac_args).returncode == 0
        wait_for(lambda: all(lines(out)[f"end {i}"] for i in ports), what="every action done")
        wait_for(lambda: lines(out)["delayed 1002"] >= 1, what="the delayed action done")
        wait_for(lambda: lines(out)["mac 00:11:22:33:44:02"] >= 1, what="the foreach items done")
        time.sleep(2)  # past the cancelled one's due time: it would have run by now
        m = lines(out)
        for i in ports:
            assert m[f"start {i}"] == 1 and m[f"end {i}"] == 1, (i, m)
        assert m["delayed 1002"] == 1 and m["delayed 1001"] == 0, m
        assert m["mac 00:11:22:33:44:01"] == 1 and m["mac 00:11:22:33:44:02"] == 1, m
        # Each webhook called once across both hosts (the cancelled delay: never).
        want_hooks = Counter(
            {
                **{f"/port-down/{i}": 1 for i in ports},
                "/port-flap/1002": 1,
                "/mac-removed/00:11:22:33:44:01": 1,
                "/mac-removed/00:11:22:33:44:02": 1,
            }
        )
        wait_for(lambda: hooks.counts() == want_hooks, what="each webhook called")
        copy_line = "copy of a notification another host journaled: not run"
        # Every copy of each action says so, once (the last copies may still be on their way: waited for).
        copies = 2 * (len(ports) + 2 + 2)  # two actions (exec, webhook) per notification or item
        wait_for(lambda: len(a.logs(copy_line) + b.logs(copy_line)) == copies, what="copy lines")
        # Each notification's actions (each foreach item's) done once, their copies journaled cancelled;
        # for port 1001 both cancelled. A "done" is committed just after the action's end mark:
        # waited for, not read once.
        wait_for(
            lambda: (
                (s := states(url))["done"] == 2 * (len(ports) + 1 + 2)
                and s["cancelled"] == 2 * (len(ports) + 3 + 2)
            ),
            what="the final states",
        )
        assert hooks.counts() == want_hooks  # still once: no late second call
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT owner FROM trapd_actions WHERE state = 'done'").fetchall()
        assert {r[0] for r in rows} <= {"dhcp1", "dhcp2"}
    finally:
        a.stop()
        b.stop()
        hooks.close()


def test_the_survivor_finishes_a_killed_hosts_work(tmp_path: Path, pg_server: PgServer) -> None:
    url = pg_server.new_database()
    out = tmp_path / "marks"
    # Each action takes a second; claims expire 3 s after their owner stops renewing them;
    # what the dead host was running is held for an operator (exec is not idempotent).
    rules = PAIR_RULES.format(marks=out, seconds=1)
    a, b = start_pair(tmp_path, url, rules, lease="3s", interrupted="hold-unsafe")
    try:
        ports = range(1, 13)
        for i in [*ports, 1001, 1002]:  # the last two: delayed actions
            for d in (a, b):
                assert send(d, i, 300_000 + i) == 0

        def a_running() -> bool:
            with psycopg.connect(url) as conn:
                cur = conn.execute(
                    "SELECT count(*) FROM trapd_actions WHERE state = 'running' AND owner = 'dhcp1'"
                )
                row = cur.fetchone()
            return row is not None and row[0] > 0

        # Killed while the journal shows it running one: stopped first, so the action it was seen
        # running cannot end between the look and the kill (under load the last ones could,
        # and nothing was left to take over or hold).
        for _ in range(50):
            wait_for(a_running, what="dhcp1 running an action")
            a.signal(signal.SIGSTOP)
            if a_running():
                break
            a.signal(signal.SIGCONT)
        a.signal(9)  # SIGKILL: no goodbye; its claims stay running until their lease expires
        a.wait_exit(20)

        def settled() -> bool:
            s = states(url)
            return s["running"] + s["pending"] + s["scheduled"] + s["failed"] == 0

        wait_for(settled, timeout=120, what="the survivor finished everything")
        # The survivor says what it took over, from whom, and what waits for an operator.
        taken = b.wait_log("took over the running actions of a host that stopped renewing its claims")
        assert taken[0]["from"] == ["dhcp1"] and taken[0]["held"] >= 1, taken
        assert "trapd journal release" in taken[0]["hint"], taken
        assert b.metric("trapd_journal_taken_over_total") >= taken[0]["rerun"] + taken[0]["held"]
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "SELECT rule, state, held_by FROM trapd_actions WHERE state <> 'cancelled'"
            ).fetchall()
        assert len(rows) == len(ports) + 2, rows  # each notification's action journaled once
        held = [r for r in rows if r[1] == "held"]
        assert held and all(r[2] == "interrupted" for r in held), rows
        assert all(r[1] in ("done", "held") for r in rows), rows
        m = lines(out)
        assert all(m[f"end {i}"] <= 1 for i in ports), m  # none twice
        assert sum(m[f"end {i}"] for i in ports) >= len(ports) - len(held)
        assert m["delayed 1001"] == 1 and m["delayed 1002"] == 1, m
        # The killed host comes back: it recovers only its own leftovers (none: all taken over),
        # so nothing runs again and what is held stays held.
        before = states(url)
        a.launch()
        a.wait_ready(60)
        a.wait_log("dispatcher starting", timeout=60)  # its recovery found nothing of its own
        time.sleep(2)  # what it would run, it would run now (the pump starts at once)
        assert lines(out) == m and states(url) == before
    finally:
        a.stop()
        b.stop()


def test_a_host_with_workers_on_postgresql(tmp_path: Path) -> None:
    """service.workers: 2 on the shared journal: each worker claims as HOST/worker-N (N from 0),
    each action once; the supervisor's /healthz says when the database is down."""
    server = PgServer()  # its own: it is stopped in the middle
    try:
        server.start()
        url = server.new_database()
        out = tmp_path / "marks"
        config = pg_config(url, "dhcp1", poll_interval="200ms")
        config["service"] = {"workers": 2}
        rules = PAIR_RULES.format(marks=out, seconds=0)
        d = TrapdDaemon.start(tmp_path / "d", rules=rules, config=config, timeout=60)
        try:
            ports = range(1, 31)
            for i in ports:
                assert send(d, i, 500_000 + i) == 0
            wait_for(lambda: all(lines(out)[f"end {i}"] for i in ports), what="every action done")
            m = lines(out)
            assert all(m[f"end {i}"] == 1 for i in ports), m
            with psycopg.connect(url) as conn:
                owners = {r[0] for r in conn.execute("SELECT DISTINCT owner FROM trapd_actions")}
            assert owners <= {"dhcp1/worker-0", "dhcp1/worker-1"} and owners, owners
            server.stop()
            for i in range(100, 110):  # from several source ports: both workers see some
                assert send(d, i, 500_000 + i) == 0
            wait_for(lambda: d.healthz()[0] == 503, what="/healthz degraded")
            assert "unavailable" in d.healthz()[1]["journal"]
            server.start()
            wait_for(lambda: d.healthz()[0] == 200, what="/healthz ok again")
        finally:
            d.stop()
    finally:
        server.remove()


def test_database_stopped_and_started_under_two_hosts(tmp_path: Path) -> None:
    server = PgServer()  # its own: it is stopped in the middle
    try:
        server.start()
        url = server.new_database()
        out = tmp_path / "marks"
        a, b = start_pair(tmp_path, url, PAIR_RULES.format(marks=out, seconds=0))
        try:
            acked = list(range(1, 6))
            for i in acked:  # before the outage
                for d in (a, b):
                    assert send(d, i, 400_000 + i, inform="-r 1 -t 5") == 0
            server.stop()
            # Informs while it is down: acknowledged by neither host. Sent at once: each waits out
            # its 3 s timeout, which one after the other took 18 s of the test.
            down_informs = [(d, i) for i in range(6, 9) for d in (a, b)]
            with ThreadPoolExecutor(len(down_informs)) as pool:
                codes = list(
                    pool.map(lambda di: send(di[0], di[1], 400_000 + di[1], inform="-r 0 -t 3"), down_informs)
                )
            assert all(code != 0 for code in codes), f"an inform was acknowledged: {codes}"
            for i in range(20, 23):  # traps while it is down: lost, and counted
                assert send(a, i, 400_000 + i) == 0
            wait_for(lambda: a.metric("trapd_outcomes_lost_total") >= 3, what="lost traps counted")
            assert a.metric("trapd_journal_available") == 0
            status, health = a.healthz()
            assert status == 503 and "unavailable" in health["journal"], health
            down = time.monotonic()
            server.start()
            back = time.monotonic()
            wait_for(lambda: a.healthz()[0] == 200 and b.healthz()[0] == 200, what="healthy again")
            # For docs/pair.md (pytest -s): how long after the database is back trapd commits again.
            healthy = time.monotonic() - back
            print(f"database start took {back - down:.1f} s; trapd healthy {healthy:.1f} s later")
            for i in range(9, 12):  # after: acknowledged again
                for d in (a, b):
                    assert send(d, i, 400_000 + i, inform="-r 2 -t 5") == 0
                acked.append(i)
            wait_for(
                lambda: all(lines(out)[f"end {i}"] for i in acked), what="every acknowledged inform acted on"
            )
            m = lines(out)
            for i in acked:
                assert m[f"start {i}"] == 1 and m[f"end {i}"] == 1, (i, m)
            assert a.metric("trapd_journal_failed_writes_total") >= 3
        finally:
            a.stop()
            b.stop()
    finally:
        server.remove()


def test_two_hosts_delete_each_kea_lease_once(tmp_path: Path, pg_server: PgServer, kea: Any) -> None:
    """The same linkDowns to both hosts: each lease deleted once in a real Kea, by one host."""
    url = pg_server.new_database()
    leases = {i: kea.next_ip4() for i in range(1, 6)}
    for i, ip in leases.items():
        kea.add_lease4(ip, f"0a:00:27:00:e1:{i:02x}")
    rules = "rules:\n"
    for i, ip in leases.items():
        rules += (
            f"  - name: port-{i}\n"
            f"    match: {{notification: IF-MIB::linkDown, varbinds: {{ifIndex: {i}}}}}\n"
            "    actions:\n"
            "      - action: kea.lease-del\n"
            f"        ip-address: {ip}\n"
            "        endpoint: kea\n"
            "        cap: {limit: 100, per: 1m}\n"
        )
    endpoints = {"kea": {"transport": "unix", "socket": str(kea.dhcp4_socket), "family": "v4"}}
    hosts = []
    for name in ("dhcp1", "dhcp2"):
        config = pg_config(url, name, poll_interval="200ms")
        config["kea"] = {"endpoints": endpoints}
        hosts.append(TrapdDaemon.start(tmp_path / name, rules=rules, config=config, timeout=60))
    a, b = hosts
    try:
        for i in leases:
            for d in (a, b) if i % 2 else (b, a):
                assert send(d, i, 600_000 + i, inform="-r 2 -t 5" if i % 2 else "") == 0
        wait_for(lambda: all(kea.lease4(ip) is None for ip in leases.values()), what="every lease gone")
        wait_for(lambda: states(url)["done"] == len(leases), what="every deletion done")
        with psycopg.connect(url) as conn:
            rows = conn.execute("SELECT state, result FROM trapd_actions ORDER BY id").fetchall()
        done = [json.loads(r[1]) for r in rows if r[0] == "done"]
        copies = [json.loads(r[1]) for r in rows if r[0] == "cancelled"]
        # One deletion per lease, each of which found its lease in Kea; the copies never ran.
        assert len(done) == len(leases) and len(copies) == len(leases), rows
        assert all(c["duplicate_of"] for c in copies), copies
        assert all(r["deleted"] == 1 and not r.get("already_gone") for r in done), done
    finally:
        a.stop()
        b.stop()


def test_a_second_host_under_the_same_instance_name_is_refused(tmp_path: Path, pg_server: PgServer) -> None:
    """Two hosts with one ``instance`` (trapd.yaml copied as it is, or two hosts with one host
    name) would each recover, renew and finish the other's claims as their own: a restart
    reran what the other host was running, and a dead host's claims were renewed by the live
    one and never taken over. The second one is refused with the reason; the first runs on.
    After a SIGKILL the same host starts again once its old name's lease has run out."""
    url = pg_server.new_database()
    out = tmp_path / "marks"
    rules = PAIR_RULES.format(marks=out, seconds=0)
    config = pg_config(url, "dhcp1", lease="3s", poll_interval="200ms")
    a = TrapdDaemon.start(tmp_path / "a", rules=rules, config=config, timeout=60)
    try:
        b = TrapdDaemon.start(tmp_path / "b", rules=rules, config=config, wait_ready=False)
        try:
            wait_for(lambda: b.poll() is not None, timeout=60, what="the namesake refused")
            assert b.poll() != 0
            refusal = [str(e) for e in b.log if "instance" in str(e) and "dhcp1" in str(e)]
            assert refusal and "dispatch.journal.instance" in refusal[-1], b.log[-5:]
        finally:
            b.stop()
        assert send(a, 1, 800_001) == 0
        wait_for(lambda: lines(out)["end 1"] == 1, what="dhcp1 still acting")
        a.signal(9)
        a.wait_exit(20)
        a.launch()
        a.wait_ready(60)
        assert send(a, 2, 800_002) == 0
        wait_for(lambda: lines(out)["end 2"] == 1, what="dhcp1 acting after its restart")
    finally:
        a.stop()


def test_a_running_host_notices_a_namesake_that_started_while_it_was_away(
    tmp_path: Path, pg_server: PgServer
) -> None:
    """The start-up check misses a namesake that starts while this host's renewals are away for
    a lease (paused, partitioned): it finds the name free, takes it, recovers this host's
    running claims as its own; this host comes back and renews as if alone. Each running host
    now checks its name at every renewal: both say so (one error line each), export
    ``trapd_journal_instance_conflict`` 1 and answer /healthz 503 with the reason; once the
    namesake stops, the survivor is fine again."""
    url = pg_server.new_database()
    rules = PAIR_RULES.format(marks=tmp_path / "marks", seconds=0)
    config = pg_config(url, "dhcp1", lease="2s", poll_interval="200ms")
    a = TrapdDaemon.start(tmp_path / "a", rules=rules, config=config, timeout=60)
    b: TrapdDaemon | None = None
    try:
        a.signal(signal.SIGSTOP)  # away: its lease (2 s) runs out, so b's start-up check passes
        try:
            b = TrapdDaemon.start(tmp_path / "b", rules=rules, config=config, timeout=60)
        finally:
            a.signal(signal.SIGCONT)
        for d in (a, b):
            line = d.wait_log(lambda e: e.get("event") == "another trapd is running under this host's name")
            assert "dispatch.journal.instance" in str(line[0].get("hint")), line
            assert d.wait_metric("trapd_journal_instance_conflict", 1) == 1
            status, body = d.healthz()
            assert status == 503 and "dhcp1" in str(body.get("journal")), body
        assert len(a.logs("another trapd is running under this host's name")) == 1  # once, not per renewal
        b.stop()
        a.wait_log(lambda e: e.get("event") == "no other trapd runs under this host's name any more")
        assert a.metric("trapd_journal_instance_conflict") == 0
        assert a.healthz()[0] == 200
    finally:
        a.signal(signal.SIGCONT)
        a.stop()
        if b is not None:
            b.stop()


def test_hosts_that_load_other_rules_say_so_until_they_agree(tmp_path: Path, pg_server: PgServer) -> None:
    """dhcp1 acts on linkDown (an exec, standing for a lease deletion), dhcp2's rules file has no
    such rule (not yet copied, or edited on one host only). Each host is valid alone, and
    nothing said the pair acts differently on the same trap: a linkDown that reached dhcp2
    alone was not acted on. Each host publishes a digest of its rules (as parsed, with the
    mode) beside its Kea endpoints and compares it with the other live host's at each renewal:
    both warn once, /healthz says it (status warning), ``trapd_pair_rules_differ`` is 1; after
    dhcp2 reloads dhcp1's rules (SIGHUP), both say they agree again and the gauge is 0."""
    url = pg_server.new_database()
    out = tmp_path / "marks"
    journal = {"lease": "1.5s", "poll_interval": "200ms"}
    other = (
        "rules:\n  - name: port-up\n    match: {notification: IF-MIB::linkUp}\n"
        "    actions: [{action: log, message: up}]\n"
    )
    hosts: list[TrapdDaemon] = []
    try:
        for name, rules in (("dhcp1", RULES.format(marks=out)), ("dhcp2", other)):
            hosts.append(
                TrapdDaemon.start(tmp_path / name, rules=rules, config=pg_config(url, name, **journal))
            )
        a, b = hosts
        event = "the hosts sharing the journal load other rules"
        for d, them in ((a, "dhcp2"), (b, "dhcp1")):
            (line,) = d.wait_log(event, 30)
            assert them in line["problem"], line
            assert d.wait_metric("trapd_pair_rules_differ", 1) == 1
            status, body = d.healthz()
            assert status == 200 and body["status"] == "warning", body
            assert any(them in w for w in body["rules"]), body
        # The same file with a comment: the same rules (a digest of them as parsed, not as laid out).
        b.rules_path.write_text("# copied from dhcp1\n" + RULES.format(marks=out))
        b.signal(signal.SIGHUP)
        b.wait_log("reloaded", 30)
        for d in hosts:
            d.wait_log("the hosts sharing the journal load the same rules again", 30)
            wait_for(lambda d=d: d.metric("trapd_pair_rules_differ") == 0, 30, "gauge back to 0")
            status, body = d.healthz()
            assert status == 200 and body["status"] == "ok" and "rules" not in body, body
        assert len(a.logs(event)) == 1 and len(b.logs(event)) == 1  # once, not at every renewal
        # dhcp2 back on other rules, then gone (stopped, or dead): nothing was fixed, and dhcp1
        # said "the same rules again" all the same. It says the host left instead.
        b.rules_path.write_text(other)
        b.signal(signal.SIGHUP)
        a.wait_log(event, 30, count=2)
        b.stop()
        (left,) = a.wait_log("a host that loaded other rules left the journal", 30)
        assert left["hosts"] == ["dhcp2"], left
        assert len(a.logs("the hosts sharing the journal load the same rules again")) == 1
        wait_for(lambda: a.metric("trapd_pair_rules_differ") == 0, 30, "gauge back to 0")
    finally:
        for d in hosts:
            d.stop()


@pytest.fixture
def split_pg() -> Iterator[SplitPg]:
    split = SplitPg()
    try:
        yield split
    finally:
        split.close()


def test_a_host_cut_off_from_the_database_says_so_and_runs_nothing_twice(
    tmp_path: Path, split_pg: SplitPg
) -> None:
    """A partition: dhcp1 loses its route to PostgreSQL (its packets dropped, as on a network
    that fails: its open connections hang), dhcp2 keeps it. dhcp1 must notice (503, STATUS),
    its running action is taken over by dhcp2 (held: exec is not idempotent), and when its route
    comes back it runs nothing a second time. On the old code dhcp1's statements waited for an
    answer on its dead connections for as long as the kernel retransmits (about 15 minutes):
    /healthz said ok 30 s into the partition."""
    assert split_pg.server is not None
    db = split_pg.server.new_database()
    name = urlsplit(db).path.lstrip("/")
    out = tmp_path / "marks"
    rules = PAIR_RULES.format(marks=out, seconds=4)
    hosts = []
    for i, host in enumerate(("dhcp1", "dhcp2")):
        config = pg_config(split_pg.url(name, i), host, lease="3s", poll_interval="200ms")
        config["dispatch"]["interrupted"] = "hold-unsafe"
        hosts.append(TrapdDaemon.start(tmp_path / host, rules=rules, config=config, timeout=60))
    a, b = hosts
    try:
        for i in (1, 2, 3, 4):
            for d in (a, b):
                assert send(d, i, 400_000 + i) == 0

        def running_on_a() -> bool:
            with psycopg.connect(db) as conn:
                row = conn.execute(
                    "SELECT count(*) FROM trapd_actions WHERE state = 'running' AND owner = 'dhcp1'"
                ).fetchone()
            return row is not None and row[0] > 0

        wait_for(running_on_a, what="dhcp1 running an action")
        cut_at = time.monotonic()
        split_pg.cut(0)
        wait_for(lambda: a.healthz()[0] == 503, timeout=30, what="dhcp1 saying the journal is unavailable")
        noticed = time.monotonic() - cut_at
        # dhcp2 takes over what dhcp1 was running (held) and runs the rest.
        wait_for(
            lambda: (s := states(db))["running"] + s["pending"] + s["failed"] == 0 and s["held"] >= 1,
            timeout=90,
            what="dhcp2 finished or held everything",
        )
        split_pg.heal(0)
        wait_for(lambda: a.healthz()[0] == 200, timeout=60, what="dhcp1 healthy again")
        # dhcp1 ran the held action to its end during the partition: its row says so (an operator
        # reading "interrupted: may have taken effect" would release it: a second run), and
        # dhcp1 logs that its end came after the takeover. Its end was dropped without a word.
        late = (
            "an action this host was running had been taken over by another host: its end is noted on the row"
        )
        with psycopg.connect(db) as conn:
            held = conn.execute(
                "SELECT id, last_error FROM trapd_actions WHERE state = 'held' ORDER BY id"
            ).fetchall()
        said = a.wait_log(late, 30, count=len(held))
        assert sorted(line["action_id"] for line in said) == [str(i) for i, _ in held], (held, said)
        with psycopg.connect(db) as conn:
            notes = [
                r[0]
                for r in conn.execute("SELECT last_error FROM trapd_actions WHERE state = 'held'").fetchall()
            ]
        assert all("dhcp1 ran it to its end after the takeover: done" in n for n in notes), notes
        for i in (5, 6):  # and both act once on what comes after
            for d in (b, a):
                assert send(d, i, 400_000 + i) == 0
        wait_for(lambda: lines(out)["end 6"] == 1 and lines(out)["end 5"] == 1, what="the later actions")
        time.sleep(2)  # anything run again would have started by now
        m = lines(out)
        assert all(m[f"start {i}"] == 1 for i in range(1, 7)), m
        assert noticed < 15, noticed  # 3.2 s measured (lease 3 s: a TCP user timeout of 1 s)
    finally:
        split_pg.heal(0)
        for d in hosts:
            d.stop()


def test_a_host_gone_in_the_middle_of_a_transaction_does_not_keep_its_claims(
    tmp_path: Path, split_pg: SplitPg
) -> None:
    """dhcp1 stops in the middle of a lease renewal (power lost, or cut off from the network: no
    FIN, no reset; here SIGSTOP, caught while its session is idle in the renewal's transaction
    with its running row locked). The server keeps that session, its transaction and its row
    locks until it notices the client is gone: TCP keepalives after 2 hours by default. dhcp2's
    takeover skips locked rows, so it did not take over dhcp1's running action (and every later
    action of its key waited) for as long. trapd's sessions now end a transaction left idle
    (idle_in_transaction_session_timeout) and probe an idle client, so dhcp2 takes over."""
    assert split_pg.server is not None
    db = split_pg.server.new_database()
    name = urlsplit(db).path.lstrip("/")
    out = tmp_path / "marks"
    rules = PAIR_RULES.format(marks=out, seconds=60)
    hosts = []
    for i, host in enumerate(("dhcp1", "dhcp2")):
        config = pg_config(split_pg.url(name, i), host, lease="3s", poll_interval="200ms")
        config["dispatch"]["interrupted"] = "hold-unsafe"
        hosts.append(TrapdDaemon.start(tmp_path / host, rules=rules, config=config, timeout=60))
    a, b = hosts
    assert a.proc is not None
    try:
        assert send(a, 7, 407_000) == 0
        wait_for(lambda: lines(out)["start 7"] == 1, what="dhcp1 running the action")
        with psycopg.connect(db, autocommit=True) as conn:
            (row,) = conn.execute("SELECT id FROM trapd_actions WHERE owner = 'dhcp1'").fetchall()
            id_ = row[0]

            def locked() -> bool:
                try:
                    with conn.transaction():
                        conn.execute("SELECT 1 FROM trapd_actions WHERE id = %s FOR UPDATE NOWAIT", (id_,))
                except psycopg.errors.LockNotAvailable:
                    return True
                return False

            idle = "SELECT count(*) FROM pg_stat_activity WHERE client_addr = %s "
            idle += "AND state = 'idle in transaction'"
            caught = False
            deadline = time.monotonic() + 90
            while not caught and time.monotonic() < deadline:
                got = conn.execute(idle, (split_pg.addrs[0][0],)).fetchone()
                if got is None or got[0] == 0:
                    continue
                a.signal(signal.SIGSTOP)
                time.sleep(0.05)
                caught = locked()
                if not caught:
                    a.signal(signal.SIGCONT)
            assert caught, "dhcp1 never caught in a transaction holding its row"
            stopped = time.monotonic()
            wait_for(lambda: not locked(), timeout=30, what="the server ending dhcp1's transaction")
            took = b.wait_log("took over the running actions of a host that stopped renewing its claims", 30)
            assert took[0]["from"] == ["dhcp1"] and took[0]["held"] == 1, took
            print(f"dhcp2 took over {time.monotonic() - stopped:.1f} s after dhcp1 stopped")
    finally:
        a.signal(signal.SIGCONT)
        for d in hosts:
            d.stop()


def test_database_restarted_while_both_hosts_run_actions(tmp_path: Path) -> None:
    """PostgreSQL stopped for 5 s and started again while both hosts run 3-second actions
    (claims' lease 3 s: every lease runs out during the outage) and informs keep coming to both:
    every inform is acknowledged in the end (resent until a host commits it), and each action
    runs once: neither host takes over the other's running actions after the outage, and no
    end written again once the database is back starts anything."""
    server = PgServer()  # its own: it is stopped in the middle
    try:
        server.start()
        url = server.new_database()
        out = tmp_path / "marks"
        a, b = start_pair(tmp_path, url, PAIR_RULES.format(marks=out, seconds=3), lease="3s")
        try:
            ports = list(range(1, 41))

            def fire(i: int) -> int:
                rc = 0
                for d in (a, b) if i % 2 else (b, a):
                    rc |= send(d, i, 500_000 + i, inform="-r 8 -t 2")
                return rc

            with ThreadPoolExecutor(8) as pool:
                futures = [pool.submit(fire, i) for i in ports]
                wait_for(lambda: states(url)["running"] >= 2, what="both hosts busy")
                server.stop("fast")
                time.sleep(5)
                server.start()
                codes = [f.result() for f in futures]
            assert codes == [0] * len(ports), codes
            wait_for(
                lambda: all(lines(out)[f"end {i}"] for i in ports), timeout=120, what="every action done"
            )
            wait_for(
                lambda: (s := states(url))["done"] == len(ports) and s["cancelled"] == len(ports),
                timeout=60,
                what="the final states",
            )
            m = lines(out)
            assert all(m[f"start {i}"] == 1 and m[f"end {i}"] == 1 for i in ports), m
        finally:
            a.stop()
            b.stop()
    finally:
        server.remove()


def test_hosts_with_the_same_rules_but_other_global_caps_say_so(tmp_path: Path, pg_server: PgServer) -> None:
    """The same rules files, but dhcp2's trapd.yaml caps exec at 1 a minute (dispatch.caps) and
    dhcp1's does not. The rules digest the hosts compare covered the rules files only, so they
    were called equal; yet the first copy of a notification to be journaled decides whether the
    action is held by the cap or runs, depending on which host received it first. The view each
    host publishes carries a digest of its global caps and retry defaults now, and of its MIBs:
    both hosts warn, naming the caps."""
    url = pg_server.new_database()
    out = tmp_path / "marks"
    journal = {"lease": "1.5s", "poll_interval": "200ms"}
    capped = pg_config(url, "dhcp2", **journal)
    capped["dispatch"]["caps"] = [{"name": "execs", "limit": 1, "per": "1m", "actions": ["exec"]}]
    hosts: list[TrapdDaemon] = []
    try:
        for name, config in (("dhcp1", pg_config(url, "dhcp1", **journal)), ("dhcp2", capped)):
            hosts.append(TrapdDaemon.start(tmp_path / name, rules=RULES.format(marks=out), config=config))
        for d, them in zip(hosts, ("dhcp2", "dhcp1"), strict=True):
            (line,) = d.wait_log("the hosts sharing the journal load other rules", 30)
            assert them in line["problem"] and "caps" in line["problem"], line
            assert "other rules (or another mode)" not in line["problem"], line  # the rules are the same
            assert d.wait_metric("trapd_pair_rules_differ", 1) == 1
    finally:
        for d in hosts:
            d.stop()
