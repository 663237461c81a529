"""A pair on PostgreSQL: a host SIGKILLed after Kea deleted a lease, the other host takes over.

kea.lease-del journals the leases it looked up before deleting them (ctx.record). On one host
(tests/test_journal_crash_points.py) the rerun after a restart gets that record back and keeps
the lease in its result (``deleted_earlier``). Here the rerun is the other host's, after the dead
host's claim lease expired (docs/pair.md): it must get the record as well, or the lease the dead
host deleted could never be put back with ``trapd kea restore``.

Between each trapd and the one real Kea 2.2 sits a proxy the test controls (tests/holding_kea.py).
dhcp1 is killed at two points: Kea deleted the lease and its answer is held ("kea-did-it"), or
trapd has the answer but its end waits on a row lock the test holds in PostgreSQL
("end-not-journaled"; the killed host's waiting statement is then ended by the test, as
PostgreSQL would once it noticed the client gone).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from daemon_harness import IF_INDEX, LINK_DOWN, REPO, TrapdDaemon
from holding_kea import HoldingKea
from kea_harness import KeaInstance
from listen_harness import needs_netsnmp, snmp_send
from pg_harness import PgServer
from test_journal_crash_points import wait_until

pytestmark = [pytest.mark.integration, needs_netsnmp]


def row(url: str) -> dict[str, Any] | None:
    with psycopg.connect(url) as conn:
        r = conn.execute(
            "SELECT id, state, owner, attempts, result FROM trapd_actions "
            "WHERE state <> 'cancelled' ORDER BY id"
        ).fetchall()
    assert len(r) <= 1, r
    return dict(zip(("id", "state", "owner", "attempts", "result"), r[0], strict=True)) if r else None


@pytest.mark.parametrize("point", ["kea-did-it", "end-not-journaled"])
def test_the_other_host_reruns_an_interrupted_lease_delete_and_keeps_the_lease_restorable(
    kea_factory: Callable[..., KeaInstance], pg_server: PgServer, tmp_path: Path, point: str
) -> None:
    kea = kea_factory(dhcp6=False, ca=False)
    url = pg_server.new_database()
    ip = kea.next_ip4()
    kea.add_lease4(ip, "0a:00:27:00:e3:01")
    before = kea.lease4(ip)
    assert before is not None
    rules = (
        "rules:\n"
        "  - name: port-down\n"
        "    match: {notification: IF-MIB::linkDown, varbinds: {ifIndex: 1}}\n"
        "    actions:\n"
        "      - action: kea.lease-del\n"
        f"        ip-address: {ip}\n"
        "        endpoint: proxy\n"
        "        cap: {limit: 100, per: 1m}\n"
    )
    proxies = [HoldingKea(tmp_path / f"p{i}.sock", kea.dhcp4_socket, ("lease4-del",)) for i in (1, 2)]
    hosts: list[TrapdDaemon] = []
    try:
        for name, proxy in zip(("dhcp1", "dhcp2"), proxies, strict=True):
            config = {
                "kea": {"endpoints": {"proxy": {"transport": "unix", "socket": str(proxy.path),
                                                "family": "v4", "timeout": 60}}},
                "dispatch": {
                    "journal": {"url": url, "instance": name, "lease": "3s", "poll_interval": "200ms"},
                    "retry": {"max_attempts": 5, "backoff": "0.2s", "max_backoff": "0.5s", "jitter": 0},
                },
            }  # fmt: skip
            hosts.append(TrapdDaemon.start(tmp_path / name, rules=rules, config=config, timeout=60))
        a, b = hosts
        p1, p2 = proxies
        p1.hold = "answer"
        # The switch sends the notification to both hosts; dhcp1 journals and runs it first, dhcp2
        # journals its copy cancelled (docs/pair.md, "One notification, two copies, one action").
        for d in hosts:
            r = snmp_send("snmptrap", "-v", "2c", "-c", "public", d.target(), "700001", LINK_DOWN,
                          f"{IF_INDEX}.1", "i", "1")  # fmt: skip
            assert r.returncode == 0, r.stderr
            if d is a:
                wait_until(lambda: p1.count("executed", "lease4-del") == 1, 30, "Kea deleted it for dhcp1")
        b.wait_log(lambda e: "copy of a notification" in str(e.get("event")), 30)
        assert kea.lease4(ip) is None
        first = row(url)
        assert first is not None and first["state"] == "running" and first["owner"] == "dhcp1", first
        # The lease dhcp1 looked up was journaled before it asked Kea to delete it.
        assert ip in [lease["ip-address"] for lease in json.loads(first["result"])["leases"]], first
        if point == "end-not-journaled":
            with psycopg.connect(url) as lock:
                lock.execute("SELECT id FROM trapd_actions WHERE id = %s FOR UPDATE", (first["id"],))
                p1.release()  # dhcp1 gets Kea's answer; its write of the end waits for the row lock
                wait_until(lambda: p1.count("answered", "lease4-del") == 1, 30, "the answer sent to dhcp1")
                a.wait_log(lambda e: e.get("event") == "action done", 30)
                a.signal(signal.SIGKILL)
                a.wait_exit(20)
                # The dead host's statement still waits for the lock: end it, as the server does
                # with a backend whose client is gone once it notices.
                with psycopg.connect(url, autocommit=True) as admin:
                    admin.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                        "WHERE wait_event_type = 'Lock' AND datname = current_database() AND pid <> %s",
                        (lock.info.backend_pid,),
                    )
                lock.rollback()
        else:
            a.signal(signal.SIGKILL)
            a.wait_exit(20)
            p1.release()
        killed = row(url)
        assert killed is not None and killed["state"] == "running" and killed["owner"] == "dhcp1", killed

        # dhcp2 takes the action over once dhcp1's claim lease (3 s) has expired, and reruns it.
        wait_until(lambda: (row(url) or {}).get("state") == "done", 60, "dhcp2 took over and finished it")
        done = row(url)
        assert done is not None and done["owner"] == "dhcp2" and done["attempts"] == 2, done
        assert p2.count("received", "lease4-get") == 1
        assert p2.count("received", "lease4-del") == 0  # nothing left to delete
        result = json.loads(done["result"])
        assert result["deleted"] == 0, result
        assert result.get("deleted_earlier") == [ip], result
        assert [lease.get("ip-address") for lease in result.get("leases", [])] == [ip], result
        assert not result.get("partial"), result

        # What dhcp1 deleted is put back, from dhcp2, from the journal's record.
        restore = subprocess.run(
            [sys.executable, "-m", "trapd", "kea", "restore", str(done["id"]), "-c", str(b.config_path)],
            capture_output=True, text=True, timeout=60, cwd=REPO,
        )  # fmt: skip
        assert restore.returncode == 0, (restore.stdout, restore.stderr)
        assert restore.stdout.split() == ["restored", ip], restore.stdout
        back = kea.lease4(ip)
        assert back is not None and back["hw-address"] == before["hw-address"], back
        assert b.stop() == 0
    finally:
        for d in hosts:
            d.close()
        for proxy in proxies:
            proxy.close()
