"""The production topology: two DHCP hosts, each running trapd, on one PostgreSQL journal, in front of
a Kea HA pair; every notification is sent to both hosts.

Real components: a Kea 2.2 HA pair from Debian 12's packages on loopback (tests/kea_sandbox.py),
a private PostgreSQL 15 (tests/pg_harness.py), two ``trapd run`` processes and net-snmp's
``snmptrap``. The pair is shared by the module's tests (each has its own database, hosts and
leases); a test that changes a server's state puts it back and waits until the pair is in its mode
again.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import kea_harness
import psycopg
import pytest
from daemon_harness import LINK_DOWN, TrapdDaemon
from kea_sandbox import HaPair, start_ha_pair
from listen_harness import needs_netsnmp, snmp_send
from pg_harness import PgServer

pytestmark = [pytest.mark.integration, needs_netsnmp]

IF_INDEX = "1.3.6.1.2.1.2.2.1.1"
IF_PHYS_ADDRESS = "1.3.6.1.2.1.2.2.1.6"
CAP = "cap: {limit: 1000, per: 1m}"


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaPair]:
    if not Path("/usr/lib/x86_64-linux-gnu/kea/hooks/libdhcp_ha.so").exists():
        pytest.skip("Kea's HA hook is not installed")
    p = start_ha_pair(Path(tmp_path_factory.mktemp("ha")), "hot-standby")
    yield p
    p.stop()


def wait_for(what: str, check: Callable[[], Any], timeout: float = 60.0) -> Any:
    return kea_harness.wait_for(what, check, timeout)


def start_hosts(
    tmp_path: Path,
    url: str,
    ha: HaPair,
    rules: str,
    *,
    lease: str = "30s",
    env2: dict[str, str] | None = None,
    **dispatch: Any,
) -> tuple[TrapdDaemon, TrapdDaemon]:
    """dhcp1 and dhcp2 on the journal at ``url``, both with the pair's peers; ``env2``: dhcp2's
    extra environment (its clock)."""
    hosts: list[TrapdDaemon] = []
    try:
        for name in ("dhcp1", "dhcp2"):
            config = {
                "kea": {"endpoints": ha.trapd_endpoints("unix"), "poll_interval": "0.3s"},
                "dispatch": {
                    "journal": {"url": url, "instance": name, "lease": lease, "poll_interval": "200ms"},
                    **dispatch,
                },
            }
            env = env2 if name == "dhcp2" else None
            hosts.append(TrapdDaemon.start(tmp_path / name, rules=rules, config=config, timeout=60, env=env))
    except BaseException:
        for d in hosts:
            d.stop()
        raise
    return hosts[0], hosts[1]


def send(d: TrapdDaemon, if_index: int, uptime: int, mac: str) -> None:
    """One v2c linkDown (ifIndex, ifPhysAddress) with a given sysUpTime: to both hosts, one notification."""
    r = snmp_send(
        "snmptrap", "-v", "2c", "-c", "public", d.target(), str(uptime), LINK_DOWN,
        f"{IF_INDEX}.{if_index}", "i", str(if_index),
        f"{IF_PHYS_ADDRESS}.{if_index}", "x", mac.replace(":", ""),
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


def rows(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn:
        cur = conn.execute("SELECT id, event_id, rule, action, idx, params, state, result FROM trapd_actions")
        names = [c.name for c in cur.description or ()]
        out = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
    for r in out:
        r["params"] = json.loads(r["params"])
        r["result"] = json.loads(r["result"]) if r["result"] else None
    return sorted(out, key=lambda r: r["id"])


FINAL = {"done", "dead", "cancelled", "held"}


def settled(url: str, n: int) -> list[dict[str, Any]] | None:
    """The journal's rows once there are ``n`` and every one is final."""
    got = rows(url)
    return got if len(got) == n and all(r["state"] in FINAL for r in got) else None


def reload(d: TrapdDaemon, rules: str) -> None:
    """A new rule file and SIGHUP; returns once the daemon says it reloaded."""
    before = len(d.logs("reloaded"))
    d.rules_path.write_text(rules)
    d.signal(signal.SIGHUP)
    wait_for("the reload", lambda: len(d.logs("reloaded")) > before)


NOTIFY_THEN_DELETE = """\
rules:
  - name: nic-gone
    {mode}
    match: {{notification: IF-MIB::linkDown}}
    actions:
{notify}      - action: kea.lease-del
        endpoint: pair4
        hw-address: "{{{{ ifPhysAddress | mac }}}}"
        {cap}
"""
NOTIFY = """\
      - action: exec
        argv: [/bin/sh, -c, 'echo "$1" >> {marks}', sh, "notify {{{{ ifPhysAddress | mac }}}}"]
"""


def test_hosts_halfway_through_a_reload_neither_lose_nor_double_an_action(
    tmp_path: Path, pg_server: PgServer, ha: HaPair
) -> None:
    """dhcp2 has reloaded the new rules, dhcp1 not yet: each host's copy is matched with the same
    action of the other's, never with another action that happens to sit at the same place.

    The new version inserts an ``exec`` before the deletion: the ``exec`` is planned by dhcp2
    only, so it runs (docs/pair.md: an action only one host plans is not a copy of anything);
    the deletion is planned by both, so it runs once per Kea peer. A rule switched from dry-run
    to enforce on one host only is enforced: a dry-run row of the other host is not its copy.
    """
    url = pg_server.new_database()
    marks = tmp_path / "marks"
    old = NOTIFY_THEN_DELETE.format(mode="", notify="", cap=CAP)
    new = NOTIFY_THEN_DELETE.format(mode="", notify=NOTIFY.format(marks=marks), cap=CAP)
    a, b = start_hosts(tmp_path, url, ha, old)
    try:
        reload(b, new)
        mac, ip = "0a:00:27:00:70:01", {n: s.next_ip4() for n, s in ha.servers.items()}
        for name, inst in ha.servers.items():  # on both: HA does not copy a lease4-add
            inst.add_lease4(ip[name], mac)
        send(a, 21, 700_021, mac)
        wait_for("dhcp1's two parts done", lambda: settled(url, 2))
        send(b, 21, 700_021, mac)
        got = wait_for("dhcp2's copy journaled", lambda: settled(url, 5))
        assert marks.exists() and marks.read_text().split("\n").count(f"notify {mac}") == 1, got
        deletions = [r for r in got if r["action"] == "kea.lease-del" and r["state"] == "done"]
        assert sorted(r["params"]["peer"] for r in deletions) == ["server1", "server2"], got
        assert all(r["result"]["deleted"] == 1 for r in deletions), deletions
        for name, inst in ha.servers.items():
            assert inst.lease4(ip[name]) is None, name
        # Each cancelled copy names the row of its own peer.
        by_id = {r["id"]: r for r in got}
        for r in got:
            if r["state"] == "cancelled":
                assert by_id[r["result"]["duplicate_of"]]["params"] == r["params"], (r, by_id)

        # The same rule, in dry-run on dhcp1 and enforced on dhcp2 (its reload done, dhcp1's not).
        reload(a, NOTIFY_THEN_DELETE.format(mode="mode: dry-run", notify="", cap=CAP))
        reload(b, old)
        mac2 = "0a:00:27:00:70:02"
        ip2 = {n: s.next_ip4() for n, s in ha.servers.items()}
        for name, inst in ha.servers.items():
            inst.add_lease4(ip2[name], mac2)
        send(a, 22, 700_022, mac2)
        wait_for("dhcp1's dry-run rows", lambda: settled(url, 7))
        send(b, 22, 700_022, mac2)
        wait_for("dhcp2's rows", lambda: settled(url, 9))
        for name, inst in ha.servers.items():
            wait_for(f"the lease gone on {name}", lambda inst=inst, name=name: inst.lease4(ip2[name]) is None)
    finally:
        a.stop()
        b.stop()


DELETE_RULES = """\
rules:
  - name: nic-gone
    match: {{notification: IF-MIB::linkDown}}
    actions:
      - action: kea.lease-del
        endpoint: pair4
        hw-address: "{{{{ ifPhysAddress | mac }}}}"
        {cap}
"""
FAST_RETRY = {
    "retry": {"max_attempts": 1000, "backoff": "0.2s", "max_backoff": "1s", "jitter": 0},
    "breaker": {"failures": 3, "cool_down": "0.5s", "max_cool_down": "1s"},
}


@pytest.fixture
def healthy(ha: HaPair) -> Iterator[HaPair]:
    """The pair, and after the test both servers running and back in the pair's mode."""
    yield ha
    ha.restore(families=("v4",))


def test_a_peer_down_and_a_host_killed_each_lease_deleted_once_on_both(
    tmp_path: Path, pg_server: PgServer, healthy: HaPair
) -> None:
    """server2 is down while both hosts receive the linkDowns: server1's parts are done at once,
    server2's retry. dhcp1 is killed meanwhile; when server2 is back, dhcp2 deletes every lease
    on it (dhcp1's parts included): each lease gone from both servers, each part done once."""
    ha = healthy
    url = pg_server.new_database()
    a, b = start_hosts(tmp_path, url, ha, DELETE_RULES.format(cap=CAP), **FAST_RETRY)
    try:
        macs = [f"0a:00:27:00:71:{i:02x}" for i in range(1, 4)]
        ips = [ha.servers["server1"].next_ip4() for _ in macs]
        for inst in ha.servers.values():
            for ip, mac in zip(ips, macs, strict=True):
                inst.add_lease4(ip, mac)
        ha.stop_server("server2")
        ha.wait_states({"server1": {"partner-down"}}, families=("v4",))
        for i, mac in enumerate(macs):
            for d in (a, b) if i % 2 else (b, a):
                send(d, 30 + i, 710_030 + i, mac)

        def parts() -> dict[str, list[dict[str, Any]]]:
            out: dict[str, list[dict[str, Any]]] = {"server1": [], "server2": []}
            for r in rows(url):
                if r["state"] != "cancelled":
                    out[r["params"]["peer"]].append(r)
            return out

        wait_for(
            "server1's parts done, server2's retrying",
            lambda: (
                (p := parts())
                and [r["state"] for r in p["server1"]] == ["done"] * 3
                and len(p["server2"]) == 3
                and all(r["state"] in ("failed", "pending", "running") for r in p["server2"])
            ),
        )
        assert all(inst.lease4(ip) is None for inst in (ha.servers["server1"],) for ip in ips)
        a.signal(signal.SIGKILL)
        a.wait_exit(20)
        ha.start_server("server2")
        server2_done = lambda: [r["state"] for r in parts()["server2"]] == ["done"] * 3  # noqa: E731
        wait_for("server2's parts done", server2_done, 120)
        for ip in ips:
            assert ha.servers["server2"].lease4(ip) is None, ip
        got = rows(url)
        done = [r for r in got if r["state"] == "done"]
        assert len(done) == 6 and all(r["result"]["deleted"] == 1 for r in done), done
        assert sum(r["state"] == "cancelled" for r in got) == 6, got
    finally:
        a.stop()
        b.stop()


FAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
SKEWED_RULES = """\
rules:
  - name: long
    match: {{notification: IF-MIB::linkDown, varbinds: {{ifIndex: 41}}}}
    actions:
      - action: exec
        argv: [/bin/sh, -c, 'echo start >> {marks}; sleep 4; echo end >> {marks}']
        timeout: 60s
  - name: flap
    match: {{notification: IF-MIB::linkDown, varbinds: {{ifIndex: 42}}}}
    actions:
      - action: exec
        argv: [/bin/sh, -c, 'echo delayed >> {marks}']
        delay: 6s
        cancel-key: "port:{{{{ source }}}}:{{{{ ifIndex }}}}"
  - name: port-up
    match: {{notification: IF-MIB::linkUp}}
    cancel: "port:{{{{ source }}}}:{{{{ ifIndex }}}}"
"""


@pytest.mark.skipif(not FAKETIME.exists(), reason="libfaketime is not installed (scripts/setup.sh --test)")
def test_a_host_whose_clock_is_ahead_neither_takes_over_early_nor_runs_a_delay_early(
    tmp_path: Path, pg_server: PgServer, ha: HaPair
) -> None:
    """dhcp2's clock is 5 s ahead (libfaketime), claims' lease 3 s (renewed every second).

    A one-host-clock journal let dhcp2 see dhcp1's claim expired while dhcp1 was running it
    (taken over, run twice), and a delayed action armed by dhcp1 due 5 s early (run before the
    linkUp that clears it). With the database's clock for every time in the shared journal,
    the skew changes nothing.
    """
    url = pg_server.new_database()
    marks = tmp_path / "marks"
    skew = {"LD_PRELOAD": str(FAKETIME), "FAKETIME": "+5s", "FAKETIME_DONT_FAKE_MONOTONIC": "1"}
    a, b = start_hosts(tmp_path, url, ha, SKEWED_RULES.format(marks=marks), lease="3s", env2=skew)
    try:
        lines = lambda: marks.read_text().split() if marks.exists() else []  # noqa: E731
        # A long action, claimed by dhcp1 (it journals first): dhcp2 does not take it over.
        send(a, 41, 720_041, "0a:00:27:00:72:01")
        wait_for("dhcp1 running it", lambda: lines().count("start") == 1)
        send(b, 41, 720_041, "0a:00:27:00:72:01")
        wait_for("the action done", lambda: settled(url, 2))
        assert lines() == ["start", "end"], lines()
        assert [r["state"] for r in rows(url)] == ["done", "cancelled"]

        # A delayed action armed by dhcp1: it stays scheduled until its 6 s are up, for dhcp2 too.
        send(a, 42, 720_042, "0a:00:27:00:72:02")
        send(b, 42, 720_042, "0a:00:27:00:72:02")
        delayed = wait_for("both copies journaled", lambda: settled_but_scheduled(url, 4))
        armed = time.monotonic()
        # Bounded watch (3 s of the 6): it must not leave "scheduled" early.
        while time.monotonic() - armed < 3:
            assert state_of(url, delayed) == "scheduled", rows(url)
            time.sleep(0.1)
        r = snmp_send("snmptrap", "-v", "2c", "-c", "public", b.target(), "720100", "1.3.6.1.6.3.1.1.5.4",
                      f"{IF_INDEX}.42", "i", "42")  # fmt: skip
        assert r.returncode == 0, r.stderr
        wait_for("the delayed action cancelled", lambda: state_of(url, delayed) == "cancelled")
        assert "delayed" not in lines()
    finally:
        a.stop()
        b.stop()


def settled_but_scheduled(url: str, n: int) -> int | None:
    """With ``n`` rows, one of them scheduled and the others final: the scheduled one's id."""
    got = rows(url)
    waiting = [r["id"] for r in got if r["state"] == "scheduled"]
    others_final = all(r["state"] in FINAL for r in got if r["state"] != "scheduled")
    return waiting[0] if len(got) == n and len(waiting) == 1 and others_final else None


def state_of(url: str, id_: int) -> str:
    return next(str(r["state"]) for r in rows(url) if r["id"] == id_)


def test_a_terminated_pair_is_reported_as_serving_without_lease_updates(
    tmp_path: Path, healthy: HaPair
) -> None:
    """server2's kea-dhcp4 runs 5 minutes ahead (libfaketime): Kea HA finds the clock skew over
    60 s and both servers go to ``terminated``. Kea then serves its default scopes without
    heartbeats or lease updates (ARM; status-get shows server1 serving its scope), and the
    warning trapd logs and lists in /healthz says so (it said the server served no clients). A
    linkDown's deletion is made on both servers."""
    if not FAKETIME.exists():
        pytest.skip("libfaketime is not installed (scripts/setup.sh --test)")
    ha = healthy
    server2 = ha.servers["server2"]
    argv, env = server2.argv["kea-dhcp4"]
    server2.stop(["kea-dhcp4"])
    server2.argv["kea-dhcp4"] = (argv, {**env, "LD_PRELOAD": str(FAKETIME), "FAKETIME": "+300s"})
    try:
        server2.spawn("kea-dhcp4")
        server2.wait_ready()
        ha.wait_states({"server1": {"terminated"}}, families=("v4",))
        assert ha.ha_status("server1")["ha-servers"]["local"]["scopes"] == ["server1"]
        config = {"kea": {"endpoints": ha.trapd_endpoints("unix"), "poll_interval": "0.3s"}}
        rules = DELETE_RULES.format(cap=CAP)
        d = TrapdDaemon.start(tmp_path / "d", rules=rules, config=config, timeout=60)
        try:
            # The per-peer parts run on both servers as usual (docs/kea-ha.md, "terminated"): the
            # servers copy nothing to each other now, so each deletion has to be made on each.
            mac, ip = "0a:00:27:00:76:01", ha.servers["server1"].next_ip4()
            for inst in ha.servers.values():
                inst.add_lease4(ip, mac)
            send(d, 81, 760_081, mac)
            wait_for("gone on both servers", lambda: all(i.lease4(ip) is None for i in ha.servers.values()))
            (line,) = d.wait_log(
                lambda e: (
                    e.get("event") == "Kea server needs attention" and "server1/v4" in str(e.get("endpoint"))
                ),
                timeout=30,
            )
            problem = str(line["problem"])
            assert "terminated" in problem and "serves no clients" not in problem, problem
            assert "lease updates" in problem, problem
            assert any("lease updates" in w for w in d.healthz()[1]["kea"]), d.healthz()
        finally:
            d.stop()
    finally:
        server2.stop(["kea-dhcp4"])
        server2.argv["kea-dhcp4"] = (argv, env)
        server2.spawn("kea-dhcp4")
        ha.servers["server1"].restart("kea-dhcp4")  # terminated stays until a restart
        server2.wait_ready()


def test_a_kea_server_listed_on_one_host_only_is_said_on_both(
    tmp_path: Path, pg_server: PgServer, ha: HaPair
) -> None:
    """dhcp1's trapd.yaml lists a third server in the relationship (server3), dhcp2's does not.
    Each host plans a part per peer it lists, so server3's part is planned by dhcp1 alone and
    is no copy of anything: it is journaled once, and only because dhcp1 got the notification
    (with dhcp1 down, server3 would keep the lease). Nothing in either host's configuration
    shows it: each host publishes its Kea endpoints and peers in the journal and compares them
    with the other live host's. Both say it once (a warning naming server3), /healthz lists it
    (status warning) and ``trapd_pair_kea_differences`` is 1."""
    url = pg_server.new_database()
    endpoints = ha.trapd_endpoints("unix")
    three = json.loads(json.dumps(endpoints))
    three["pair4"]["peers"].append(
        {"name": "server3", "transport": "unix", "socket": str(tmp_path / "kea3.sock")}
    )
    hosts: list[TrapdDaemon] = []
    try:
        for name, eps in (("dhcp1", three), ("dhcp2", endpoints)):
            config = {
                "kea": {"endpoints": eps, "poll_interval": "0.3s"},
                "dispatch": {
                    "journal": {"url": url, "instance": name, "lease": "2s", "poll_interval": "200ms"}
                },
            }
            hosts.append(
                TrapdDaemon.start(tmp_path / name, rules=DELETE_RULES.format(cap=CAP), config=config)
            )
        a, b = hosts
        event = "the hosts sharing the journal list other Kea servers"
        for d, who in ((a, "this host's"), (b, "'dhcp1''s")):
            (line,) = d.wait_log(event)
            assert "server3" in line["problem"] and who in line["problem"], line
            assert d.wait_metric("trapd_pair_kea_differences", 1) == 1
            status, body = d.healthz()
            assert status == 200 and body["status"] == "warning", body
            assert any("server3" in w for w in body["kea"]), body
        mac = "0a:00:27:00:73:01"
        send(a, 51, 730_051, mac)
        send(b, 51, 730_051, mac)

        def planned() -> dict[str, list[str]] | None:
            got = [r for r in rows(url) if r["params"].get("hw-address") == mac]
            by_peer: dict[str, list[str]] = {}
            for r in got:
                by_peer.setdefault(r["params"]["peer"], []).append(r["state"])
            return by_peer if len(got) == 5 else None

        by_peer = wait_for("both hosts' parts journaled", planned)
        assert sorted(by_peer) == ["server1", "server2", "server3"], by_peer
        assert by_peer["server1"].count("cancelled") == 1 and by_peer["server2"].count("cancelled") == 1, (
            by_peer
        )
        assert len(by_peer["server3"]) == 1 and by_peer["server3"] != ["cancelled"], by_peer
        assert len(a.logs(event)) == 1 and len(b.logs(event)) == 1  # once, not at every renewal
    finally:
        for d in hosts:
            d.stop()


def test_each_host_listing_its_own_server_as_a_plain_endpoint_is_said_until_fixed(
    tmp_path: Path, pg_server: PgServer, ha: HaPair
) -> None:
    """Each host lists only its own Kea server, as a plain endpoint under one name (pair4): a
    common first set-up ("each trapd talks to its local Kea"). Kea HA does not copy lease-del, and
    both hosts' parts have the same copy key (one endpoint name, no peer), so the second host's
    part is a copy and is not run: the lease is deleted on the server of the host that journaled
    first only, the partner keeps it. trapd cannot fix this (it knows no way to the partner), so
    each host says it: a warning in the log once, and in /healthz (status warning) for as long as
    it runs so; the log line was all there was, and /healthz said ok."""
    url = pg_server.new_database()
    peers = ha.trapd_endpoints("unix")["pair4"]["peers"]
    hosts: list[TrapdDaemon] = []
    try:
        for name, peer in (("dhcp1", peers[0]), ("dhcp2", peers[1])):
            own = {"family": "v4", **{k: v for k, v in peer.items() if k != "name"}}
            config = {
                "kea": {"endpoints": {"pair4": own}, "poll_interval": "0.3s"},
                "dispatch": {
                    "journal": {"url": url, "instance": name, "lease": "2s", "poll_interval": "200ms"}
                },
            }
            hosts.append(
                TrapdDaemon.start(tmp_path / name, rules=DELETE_RULES.format(cap=CAP), config=config)
            )
        a, b = hosts
        for d in hosts:
            d.wait_log(lambda e: "lists as a plain endpoint" in str(e.get("event")), 30)
            status, body = d.healthz()
            assert status == 200 and body["status"] == "warning", body
            assert any("plain endpoint" in w for w in body.get("kea", [])), body
        mac, ip = "0a:00:27:00:74:01", {n: s.next_ip4() for n, s in ha.servers.items()}
        for name, inst in ha.servers.items():
            inst.add_lease4(ip[name], mac)
        send(a, 61, 740_061, mac)
        wait_for("dhcp1's part done", lambda: settled(url, 1))
        send(b, 61, 740_061, mac)
        got = wait_for("dhcp2's copy journaled", lambda: settled(url, 2))
        assert sorted(r["state"] for r in got) == ["cancelled", "done"], got
        assert ha.servers["server1"].lease4(ip["server1"]) is None
        assert ha.servers["server2"].lease4(ip["server2"]) is not None  # what the warning is about
        status, body = b.healthz()  # still said: nothing about it has changed
        assert body["status"] == "warning" and any("plain endpoint" in w for w in body["kea"]), body
    finally:
        for d in hosts:
            d.stop()


def test_restore_after_a_host_with_workers_died_mid_deletion_puts_every_lease_back_on_both(
    tmp_path: Path, pg_server: PgServer, ha: HaPair
) -> None:
    """The restore path after a takeover, with real components: dhcp1 and dhcp2 with
    ``service.workers: 2`` each, each reaching its own Kea server over the unix socket and the
    partner over its Control Agent (listing its own first). One MAC holds many leases on both
    servers; dhcp2 is stopped (maintenance) and a linkDown sent to dhcp1 deletes them, one part
    per peer, run by dhcp1's workers. dhcp1 dies whole (supervisor and workers) while a part is
    deleting: some of that server's leases gone, its row running with the leases recorded before
    the deletion.

    A restore then (on dhcp2, from its trapd.yaml) would put the leases back, and dhcp2, once
    started, takes the dead host's part over and deletes them all again: the restore is undone
    without a word. It is refused for that part (named, exit 1), and nothing is re-added. dhcp2
    starts, takes the claim over (lease 3 s) and finishes the deletion; then `trapd kea restore`
    of one part puts every lease back on both servers, those dhcp1 deleted before it died
    included; run again, every lease is there already."""
    from test_pair_workers import kill_all

    url = pg_server.new_database()
    unix, ca = ha.trapd_endpoints("unix"), ha.trapd_endpoints("ca")
    hosts: list[TrapdDaemon] = []
    try:
        for name, own in (("dhcp1", 0), ("dhcp2", 1)):
            pair4 = {**unix["pair4"], "peers": [unix["pair4"]["peers"][own], ca["pair4"]["peers"][1 - own]]}
            config = {
                "kea": {"endpoints": {"pair4": pair4}, "poll_interval": "0.3s"},
                "service": {"workers": 2},
                "dispatch": {
                    "journal": {"url": url, "instance": name, "lease": "3s", "poll_interval": "200ms"},
                    "interrupted": "hold-unsafe",
                    **FAST_RETRY,
                },
            }
            rules = DELETE_RULES.format(cap="cap: {limit: 100000, per: 1m}")
            hosts.append(TrapdDaemon.start(tmp_path / name, rules=rules, config=config, timeout=60))
        a, b = hosts
        b.stop()
        mac, count = "0a:00:27:00:75:01", 400
        ips = [ha.servers["server1"].next_ip4() for _ in range(count)]
        for inst in ha.servers.values():
            for ip in ips:
                inst.add_lease4(ip, mac)

        def held() -> dict[str, int]:
            return {
                name: len((inst.cmd4("lease4-get-by-hw-address", {"hw-address": mac}).get("arguments") or {})
                          .get("leases", []))
                for name, inst in ha.servers.items()
            }  # fmt: skip

        assert held() == {"server1": count, "server2": count}
        # The moment a part has journaled its leases (committed before it deletes any), the Kea
        # servers are paused, so that dhcp1 dies in the middle of the deletion, not after it (400
        # deletions take well under a second); they go on once dhcp1 is dead.
        keas = [inst.procs["kea-dhcp4"] for inst in ha.servers.values()]
        with psycopg.connect(url, autocommit=True) as conn:
            send(a, 71, 750_071, mac)
            deadline = time.monotonic() + 30
            while not conn.execute(
                "SELECT 1 FROM trapd_actions WHERE state = 'running' AND result IS NOT NULL"
            ).fetchall():
                assert time.monotonic() < deadline, rows(url)
            for p in keas:
                p.send_signal(signal.SIGSTOP)
        try:
            kill_all(a)
        finally:
            for p in keas:
                p.send_signal(signal.SIGCONT)
        midway = [r for r in rows(url) if r["state"] == "running" and r["result"]]
        left = held()
        print(f"dhcp1 killed with {len(midway)} part(s) deleting; leases left: {left}")
        assert midway, rows(url)

        restore = [sys.executable, "-m", "trapd", "kea", "restore", str(midway[0]["id"]),
                   "--config", str(b.config_path)]  # fmt: skip
        early = subprocess.run(restore, capture_output=True, text=True, timeout=120)
        assert early.returncode == 1, early.stdout[-2000:] + early.stderr
        first = midway[0]
        assert f"journal entry {first['id']} (peer {first['params']['peer']}) is running" in early.stderr
        assert held() == left, early.stdout[-2000:]  # nothing re-added that the takeover deletes again

        b.launch()
        b.wait_ready(60)

        def finished() -> list[dict[str, Any]] | None:
            got = [r for r in rows(url) if r["action"] == "kea.lease-del"]
            return got if len(got) == 2 and all(r["state"] == "done" for r in got) else None

        parts = wait_for("dhcp2 finished the deletion", finished, 60)
        assert held() == {"server1": 0, "server2": 0}
        by_peer = {r["params"]["peer"]: r for r in parts}
        for peer, r in by_peer.items():
            recorded = {lease["ip-address"] for lease in r["result"]["leases"]}
            summary = {k: v for k, v in r["result"].items() if k != "leases"}
            assert recorded == set(ips), (peer, len(recorded), summary)
        taken = b.wait_log("took over the running actions of a host that stopped renewing its claims")
        assert {n for t in taken for n in t["from"]} <= {"dhcp1/worker-0", "dhcp1/worker-1"}, taken

        r = subprocess.run(restore, capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout[-2000:] + r.stderr
        out = r.stdout.splitlines()
        for peer in ("server1", "server2"):
            back = sum(line.startswith("restored ") and line.endswith(f"on {peer}") for line in out)
            assert back == count, (peer, out[:20])
        assert held() == {"server1": count, "server2": count}
        again = subprocess.run(restore, capture_output=True, text=True, timeout=120)
        assert again.returncode == 0, again.stdout[-2000:] + again.stderr
        assert sum(line.startswith("exists ") for line in again.stdout.splitlines()) == 2 * count
    finally:
        for d in hosts:
            d.stop()


def test_a_peer_down_longer_than_the_attempts_last_gets_its_deletion_when_back(
    tmp_path: Path, healthy: HaPair
) -> None:
    """dispatch.retry.max_attempts (default 5) counted every failed attempt at a server that was
    down, the ones before its breaker opened too: a peer's part used them up while the breaker
    opened (with the defaults, 2 + 4 + 8 + 16 s: a partner down for over half a minute, a reboot)
    and was dead-lettered; the server came back with the lease, and after the next failover
    served it. An action whose attempts run out while its endpoint's breaker is open waits for
    the probe like the others, until max_age (here with the attempts' and breaker's default
    counts, the times shortened)."""
    ha = healthy
    config = {
        "kea": {"endpoints": ha.trapd_endpoints("unix"), "poll_interval": "0.3s"},
        "dispatch": {
            "retry": {"backoff": "0.2s", "max_backoff": "0.5s", "jitter": 0},  # max_attempts: 5
            "breaker": {"cool_down": "0.5s", "max_cool_down": "1s"},  # failures: 5
        },
    }
    d = TrapdDaemon.start(tmp_path / "d", rules=DELETE_RULES.format(cap=CAP), config=config, timeout=60)
    try:
        mac, ip = "0a:00:27:00:77:01", ha.servers["server1"].next_ip4()
        for inst in ha.servers.values():
            inst.add_lease4(ip, mac)
        ha.stop_server("server2")
        send(d, 91, 770_091, mac)

        def server2_part() -> dict[str, Any]:
            r = subprocess.run(
                [sys.executable, "-m", "trapd", "journal", "--config", str(d.config_path), "--json", "list",
                 "--state", "all"],
                capture_output=True, text=True, timeout=60, check=True,
            )  # fmt: skip
            rows = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
            return next((e for e in rows if e["params"].get("peer") == "server2"), {})

        part = wait_for(
            "server2's part past its 5 attempts", lambda: (p := server2_part()).get("attempts", 0) >= 7 and p
        )
        assert part["state"] != "dead", part
        ha.start_server("server2")
        done = wait_for("server2's part done", lambda: (p := server2_part()).get("state") == "done" and p)
        assert done["result"]["deleted"] == 1, done
        assert all(inst.lease4(ip) is None for inst in ha.servers.values())
    finally:
        d.stop()
