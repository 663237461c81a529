"""The production pair with ``service.workers: 2`` on each host, as real processes.

Two `trapd run` hosts (dhcp1, dhcp2), each a supervisor of two workers on SO_REUSEPORT
sockets, one private PostgreSQL 15 (tests/pg_harness.py), a real Kea 2.2, and net-snmp's
``snmptrap`` sending each notification to both hosts (each snmptrap from its own source port,
so the kernel spreads them over both workers of each host). The workers claim as
``dhcp1/worker-0`` .. ``dhcp2/worker-1``: four processes, two hosts, and each action once.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from daemon_harness import TrapdDaemon
from listen_harness import needs_netsnmp
from pg_harness import PgServer
from test_pair import PAIR_RULES, lines, pg_config, send, states, trapd, wait_for
from test_workers import gone, worker_pids

pytestmark = [pytest.mark.integration, needs_netsnmp]

WORKERS = {f"{h}/worker-{i}" for h in ("dhcp1", "dhcp2") for i in (0, 1)}
# What must not be said between the workers of one host, nor between two hosts that agree.
FALSE_ALARMS = (
    "the hosts sharing the journal load other rules",
    "the hosts sharing the journal list other Kea servers",
    "another trapd is running under this host's name",
)


def start_pair_with_workers(
    tmp_path: Path, url: str, rules: str, *, lease: str = "30s", kea: Any = None
) -> tuple[TrapdDaemon, TrapdDaemon]:
    hosts = []
    for name in ("dhcp1", "dhcp2"):
        config = pg_config(url, name, lease=lease, poll_interval="200ms")
        config["dispatch"]["interrupted"] = "rerun"
        config["service"] = {"workers": 2}
        if kea is not None:
            config["kea"] = {
                "endpoints": {"kea": {"transport": "unix", "socket": str(kea.dhcp4_socket), "family": "v4"}}
            }
        hosts.append(TrapdDaemon.start(tmp_path / name, rules=rules, config=config, timeout=60))
    return hosts[0], hosts[1]


def no_false_alarms(*hosts: TrapdDaemon) -> None:
    for d in hosts:
        for line in FALSE_ALARMS:
            assert not d.logs(line), (line, d.logs(line))
        assert d.metric("trapd_journal_instance_conflict") == 0
        assert d.metric("trapd_pair_rules_differ") == 0
        assert d.metric("trapd_pair_kea_differences") == 0
        status, health = d.healthz()
        assert status == 200 and health["status"] == "ok", health


def owners(url: str, state: str) -> Counter[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute("SELECT owner FROM trapd_actions WHERE state = %s", (state,)).fetchall()
    return Counter(str(r[0]) for r in rows)


def kill_all(d: TrapdDaemon) -> None:
    """The whole host gone at once (power): supervisor and workers stopped, then SIGKILLed.
    (SIGKILL to the supervisor alone is not that: its workers get SIGTERM and stop cleanly.)"""
    pids = [*worker_pids(d).values()]
    assert d.proc is not None
    for pid in [d.proc.pid, *pids]:
        os.kill(pid, signal.SIGSTOP)
    for pid in [d.proc.pid, *pids]:
        os.kill(pid, signal.SIGKILL)
    d.wait_exit(20)
    wait_for(lambda: all(gone(p) for p in pids), timeout=20, what="every worker gone")


def test_a_pair_with_two_workers_each_acts_once_and_raises_no_false_alarm(
    tmp_path: Path, pg_server: PgServer, kea: Any
) -> None:
    url = pg_server.new_database()
    out = tmp_path / "marks"
    ip = kea.next_ip4()
    kea.add_lease4(ip, "0a:00:27:00:e2:01")
    rules = PAIR_RULES.format(marks=out, seconds=0) + (
        "  - name: lease-del\n"
        "    match: {notification: IF-MIB::linkDown, varbinds: {ifIndex: 2000}}\n"
        "    actions:\n"
        "      - action: kea.lease-del\n"
        f"        ip-address: {ip}\n"
        "        endpoint: kea\n"
        "        cap: {limit: 100, per: 1m}\n"
    )
    a, b = start_pair_with_workers(tmp_path, url, rules, lease="3s", kea=kea)
    try:
        ports = range(1, 25)
        for i in ports:
            inform = "-r 2 -t 5" if i % 3 == 0 else ""  # informs: acknowledged by both hosts
            for d in (a, b) if i % 2 else (b, a):
                assert send(d, i, 700_000 + i, inform=inform) == 0
        for d in (b, a):
            assert send(d, 2000, 702_000) == 0
        wait_for(lambda: all(lines(out)[f"end {i}"] for i in ports), what="every action done")
        wait_for(lambda: kea.lease4(ip) is None, what="the lease deleted")
        wait_for(
            lambda: states(url)["done"] == len(ports) + 1 and states(url)["cancelled"] == len(ports) + 1,
            what="one done and one copy per notification",
        )
        m = lines(out)
        assert all(m[f"start {i}"] == 1 and m[f"end {i}"] == 1 for i in ports), m
        done = owners(url, "done")
        # Both hosts' workers took part (the kernel's hash of ~50 source ports: all four, in practice
        # at least three), and nothing else claimed.
        assert set(done) <= WORKERS and len(done) >= 3, done
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "SELECT state, journaled_by, result FROM trapd_actions WHERE rule = 'lease-del'"
            ).fetchall()
        assert sorted(r[0] for r in rows) == ["cancelled", "done"], rows
        assert all(r[1] in WORKERS for r in rows), rows
        result = {r[0]: json.loads(r[2]) for r in rows}
        assert result["done"]["deleted"] == 1 and result["cancelled"]["duplicate_of"], result
        # Past two lease renewals (3 s lease: a renewal a second) of every worker: the rules and Kea
        # views are compared, names checked; nothing said between dhcp1/worker-0 and dhcp1/worker-1.
        time.sleep(3)
        no_false_alarms(a, b)
        # `trapd journal list`: JOURNALED names the worker, HOST its host.
        r = trapd(
            "journal", "--config", str(a.config_path), "list", "--state", "all", "--json", "--limit", "200"
        )
        assert r.returncode == 0, r.stderr
        listed = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
        assert len(listed) == 2 * (len(ports) + 1), r.stdout[-2000:]
        for e in listed:
            assert e["journaled_by"] in WORKERS, e
            if e["state"] == "done":
                assert e["owner"] in WORKERS and e["host"] == e["owner"].partition("/")[0], e
            else:
                assert e["owner"] is None and e["host"] is None, e
        r = trapd(
            "journal", "--config", str(a.config_path), "list", "--state", "all", "--host", "dhcp2", "--json"
        )
        mine = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
        # What dhcp2's workers journaled (every trap went to both: their copies too) or ran.
        expected = [e["id"] for e in listed if e["host"] == "dhcp2" or e["journaled_by"].startswith("dhcp2/")]
        assert sorted(e["id"] for e in mine) == sorted(expected), r.stdout[-2000:]
        assert sum(e["host"] == "dhcp2" for e in mine) == sum(
            n for o, n in done.items() if o.startswith("dhcp2/")
        )
        r = trapd("journal", "--config", str(a.config_path), "list", "--state", "all", "--limit", "200")
        head, *body = r.stdout.splitlines()
        assert "JOURNALED" in head and "HOST" in head, head
        assert any("dhcp1/worker-" in x for x in body) and any("dhcp2/worker-" in x for x in body), r.stdout
    finally:
        a.stop()
        b.stop()


def running_on(url: str, host: str) -> list[tuple[int, str]]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT id, owner FROM trapd_actions WHERE state = 'running' AND owner LIKE %s ORDER BY id",
            (host + "/%",),
        ).fetchall()
    return [(int(r[0]), str(r[1])) for r in rows]


def test_a_worker_killed_mid_action_is_restarted_and_its_action_run_once_more(
    tmp_path: Path, pg_server: PgServer
) -> None:
    """dhcp1's worker running an action is killed (SIGKILL): its supervisor restarts it, and the
    action it was running is put back and run again once (rerun), by one process of the pair.

    Claims' lease 8 s and a systemd watchdog of 6 s (the supervisor takes a worker silent for 3 s
    for stuck), as the shipped unit's 30 s watchdog against the default 30 s lease: the restarted
    worker must not wait out its dead predecessor's registration (it is the supervisor's own dead
    child, not another host) before it answers."""
    url = pg_server.new_database()
    out = tmp_path / "marks"
    rules = PAIR_RULES.format(marks=out, seconds=3)
    hosts = []
    for name in ("dhcp1", "dhcp2"):
        config = pg_config(url, name, lease="8s", poll_interval="200ms")
        config["dispatch"]["interrupted"] = "rerun"
        config["service"] = {"workers": 2}
        hosts.append(
            TrapdDaemon.start(
                tmp_path / name, rules=rules, config=config, timeout=60, watchdog_usec=6_000_000
            )
        )
    a, b = hosts
    try:
        ports = range(1, 7)
        for i in ports:
            for d in (a, b):  # dhcp1 first: its workers journal and claim
                assert send(d, i, 800_000 + i) == 0
        victim: tuple[int, str] | None = None
        for _ in range(50):
            wait_for(lambda: bool(running_on(url, "dhcp1")), what="a dhcp1 worker running an action")
            pids = worker_pids(a)
            for pid in pids.values():
                os.kill(pid, signal.SIGSTOP)
            running = running_on(url, "dhcp1")
            if running:
                victim = running[0]
                killed = [r for r in running if r[1] == victim[1]]  # all it was running (other keys)
                index = int(victim[1].rpartition("-")[2])
                os.kill(pids[index], signal.SIGKILL)
                for i, pid in pids.items():
                    if i != index:
                        os.kill(pid, signal.SIGCONT)
                break
            for pid in pids.values():
                os.kill(pid, signal.SIGCONT)
        assert victim is not None
        killed_at = time.monotonic()
        died = a.wait_log("worker died, restarting it", timeout=20)
        assert died[0]["worker"] == index, died
        wait_for(lambda: a.healthz()[0] == 200, timeout=40, what="dhcp1 healthy again")
        back_in = time.monotonic() - killed_at

        def settled() -> bool:
            s = states(url)
            return s["running"] + s["pending"] + s["scheduled"] + s["failed"] == 0

        wait_for(settled, timeout=60, what="every action finished")
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "SELECT id, state, owner, last_error FROM trapd_actions "
                "WHERE state <> 'cancelled' ORDER BY id"
            ).fetchall()
        assert len(rows) == len(ports) and all(r[1] == "done" for r in rows), rows
        again = [r for r in rows if r[0] in {k[0] for k in killed}]
        print(f"restarted worker healthy {back_in:.1f} s after the kill; killed actions: {again}")
        m = lines(out)
        assert all(m[f"end {i}"] >= 1 for i in ports), m
        assert all(m[f"start {i}"] <= 2 for i in ports), m  # the killed one started twice, no more
        # Each action the killed worker was running, and only those, started again once.
        assert sum(m[f"start {i}"] for i in ports) == len(ports) + len(killed), (m, killed)
        # A worker restarted is not a stuck one, and nothing else is said falsely.
        assert not a.logs("worker stuck, replacing it"), a.logs("worker stuck, replacing it")
        assert len(a.logs("worker died, restarting it")) == 1, a.logs("worker died, restarting it")
        no_false_alarms(a, b)
    finally:
        a.stop()
        b.stop()


def test_a_host_gone_whole_has_its_workers_claims_taken_over(tmp_path: Path, pg_server: PgServer) -> None:
    """dhcp1 (supervisor and both workers) killed at once while its workers run actions, claims'
    lease 3 s, interrupted: hold-unsafe: dhcp2 takes over the claims of both dead workers (held:
    exec is not idempotent), names them, and runs the rest; nothing runs twice."""
    url = pg_server.new_database()
    out = tmp_path / "marks"
    hosts = []
    for name in ("dhcp1", "dhcp2"):
        config = pg_config(url, name, lease="3s", poll_interval="200ms")
        config["dispatch"]["interrupted"] = "hold-unsafe"
        config["service"] = {"workers": 2}
        rules = PAIR_RULES.format(marks=out, seconds=3)
        hosts.append(TrapdDaemon.start(tmp_path / name, rules=rules, config=config, timeout=60))
    a, b = hosts
    try:
        ports = range(1, 9)
        for i in [*ports, 1001]:
            for d in (a, b):
                assert send(d, i, 900_000 + i) == 0
        pids = worker_pids(a)
        assert a.proc is not None
        for _ in range(50):
            wait_for(lambda: bool(running_on(url, "dhcp1")), what="dhcp1 running actions")
            for pid in [a.proc.pid, *pids.values()]:
                os.kill(pid, signal.SIGSTOP)
            running = running_on(url, "dhcp1")
            if running:
                break
            for pid in [a.proc.pid, *pids.values()]:
                os.kill(pid, signal.SIGCONT)
        kill_all(a)

        def settled() -> bool:
            s = states(url)
            return s["running"] + s["pending"] + s["scheduled"] + s["failed"] == 0

        wait_for(settled, timeout=60, what="dhcp2 finished everything")
        # One line per takeover, and a takeover may be a later round's (or the other worker's) than
        # the first line: waited for until they name every dead worker that ran something (the
        # first line alone, read under load, named one of the two).
        took_over = "took over the running actions of a host that stopped renewing its claims"
        wait_for(
            lambda: {n for t in b.logs(took_over) for n in t["from"]} >= {o for _, o in running},
            timeout=20,
            what="the takeovers logged",
        )
        taken = b.logs(took_over)
        named = {n for t in taken for n in t["from"]}
        assert named == {o for _, o in running}, (taken, running)
        assert sum(t["held"] for t in taken) == len(running), (taken, running)
        with psycopg.connect(url) as conn:
            rows = conn.execute(
                "SELECT id, state, held_by FROM trapd_actions WHERE state <> 'cancelled' ORDER BY id"
            ).fetchall()
        assert len(rows) == len(ports) + 1, rows
        held = {r[0] for r in rows if r[1] == "held"}
        assert held == {i for i, _ in running}, (rows, running)
        assert all(r[1] == "done" for r in rows if r[0] not in held), rows
        m = lines(out)
        assert all(m[f"start {i}"] == 1 for i in ports), m  # none twice
        assert m["delayed 1001"] == 1, m
        r = trapd("journal", "--config", str(b.config_path), "list", "--state", "held")
        # A held row names the dead worker that last ran it (JOURNALED and HOST), for the operator
        # deciding whether to release it.
        body = r.stdout.splitlines()[1:]
        assert r.returncode == 0 and len(body) == len(held), r.stdout
        assert all(x.count("dhcp1/worker-") == 2 for x in body), r.stdout
        # dhcp1 starts again: its supervisor waits out its dead workers' registrations (a lease),
        # recovers nothing (all taken over), and its workers start under their names, no conflict.
        before = states(url)
        a.launch()
        a.wait_ready(60)
        wait_for(lambda: len(worker_pids(a)) == 2 and a.healthz()[0] == 200, what="dhcp1 back, healthy")
        time.sleep(2)  # what it would rerun, it would run now
        assert states(url) == before and lines(out) == m
        no_false_alarms(a, b)
    finally:
        a.stop()
        b.stop()


def test_hosts_with_workers_that_load_other_rules_say_so_once_until_they_agree(
    tmp_path: Path, pg_server: PgServer
) -> None:
    """dhcp1 and dhcp2 (two workers each) load other rules: each host names the other (the host,
    not a worker), /healthz and the gauge say it; after dhcp2's reload (both its workers) they agree."""
    url = pg_server.new_database()
    out = tmp_path / "marks"
    mine = PAIR_RULES.format(marks=out, seconds=0)
    other = PAIR_RULES.format(marks=out, seconds=1)
    hosts: list[TrapdDaemon] = []
    try:
        for name, rules in (("dhcp1", mine), ("dhcp2", other)):
            config = pg_config(url, name, lease="3s", poll_interval="200ms")
            config["service"] = {"workers": 2}
            hosts.append(TrapdDaemon.start(tmp_path / name, rules=rules, config=config, timeout=60))
        a, b = hosts
        event = "the hosts sharing the journal load other rules"
        for d, them in ((a, "dhcp2"), (b, "dhcp1")):
            lines_ = d.wait_log(event, 30)
            assert all(x["problem"].count(them) >= 1 and "worker" not in x["problem"] for x in lines_), lines_
            assert d.wait_metric("trapd_pair_rules_differ", 1) == 1
            status, body = d.healthz()
            assert status == 200 and body["status"] == "warning", body
            assert any(them in w for w in body["rules"]), body
        b.rules_path.write_text("# copied from dhcp1\n" + mine)
        b.signal(signal.SIGHUP)
        b.wait_log("reloaded", 30)
        for d in hosts:
            d.wait_log("the hosts sharing the journal load the same rules again", 30)
            wait_for(lambda d=d: d.metric("trapd_pair_rules_differ") == 0, 30, "gauge back to 0")
            status, body = d.healthz()
            assert status == 200 and body["status"] == "ok" and "rules" not in body, body
        time.sleep(2)  # two more renewals each: nothing more said
        for d in hosts:
            print(d.workdir.name, len(d.logs(event)), [x.get("worker") for x in d.logs(event)])
            assert len(d.logs(event)) <= 2, d.logs(event)  # at most once per worker
            assert d.metric("trapd_journal_instance_conflict") == 0
    finally:
        for d in hosts:
            d.stop()
