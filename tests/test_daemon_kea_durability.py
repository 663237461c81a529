"""Nothing planned is lost: the whole daemon against a real Kea 2.2, with crashes and outages.

These are the durability promises of docs/dispatch.md, checked where they
matter: in Kea's lease table, not in a mock.

- SIGKILL with actions delayed, pending behind a running one, and retrying
  against a Kea that is down: after a restart every one completes.
- Kea stopped while traps keep arriving: the actions wait and retry, and
  complete once Kea is back; none is lost, none runs twice.
"""

from __future__ import annotations

import contextlib
import json
import signal
import sqlite3
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import IF_INDEX, LINK_DOWN, TrapdDaemon
from kea_harness import KeaInstance
from listen_harness import snmp_send

pytestmark = pytest.mark.integration

# Fast retries and a breaker that stays out of the way, so the tests take seconds.
DISPATCH = {
    "retry": {"max_attempts": 100, "max_age": "5m", "backoff": "0.2s", "max_backoff": "0.5s", "jitter": 0},
    "breaker": {"failures": 1000},
    "shutdown_timeout": "1s",
}


def trap(d: TrapdDaemon, if_index: int) -> None:
    r = snmp_send("snmptrap", "-v", "2c", "-c", "public", d.target(), "", LINK_DOWN,
                  f"{IF_INDEX}.{if_index}", "i", str(if_index))  # fmt: skip
    assert r.returncode == 0, r.stderr


def journal(d: TrapdDaemon) -> list[dict[str, Any]]:
    """The journal's actions, read straight from its SQLite file (read-only, WAL allows it).

    Not through `trapd journal`: a Python start-up per look would blur the timing these tests need.
    """
    path = d.state_dir / "journal.sqlite"
    if not path.exists():
        return []
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT rule, action, state, attempts, result FROM actions ORDER BY id").fetchall()
    return [{**dict(r), "result": json.loads(r["result"]) if r["result"] else None} for r in rows]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def gone(kea: KeaInstance, *ips: str) -> bool:
    return all(kea.lease4(ip) is None for ip in ips)


def delete_rule(name: str, if_index: int, ip: str, endpoint: str, **extra: str) -> str:
    lines = [
        f"  - name: {name}",
        f"    match: {{notification: IF-MIB::linkDown, varbinds: {{ifIndex: {if_index}}}}}",
        "    actions:",
        "      - action: kea.lease-del",
        f"        ip-address: {ip}",
        f"        endpoint: {endpoint}",
        "        cap: {limit: 100, per: 1m}",
    ]
    lines += [f"        {k}: {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def test_sigkill_with_delayed_pending_and_retrying_actions_loses_nothing(
    kea: KeaInstance, kea_factory: Callable[..., KeaInstance], tmp_path: Path
) -> None:
    down = kea_factory(dhcp6=False, ca=False)  # a second Kea, stopped before the traps arrive
    delayed_ip, pending_ip, retry_ip = kea.next_ip4(), kea.next_ip4(), down.next_ip4()
    kea.add_lease4(delayed_ip, "0a:00:27:00:d1:01")
    kea.add_lease4(pending_ip, "0a:00:27:00:d1:02")
    down.add_lease4(retry_ip, "0a:00:27:00:d1:03")
    down.stop(["kea-dhcp4"])
    marker = tmp_path / "slow-ran"
    rules = "rules:\n" + delete_rule("delayed", 1, delayed_ip, "up", delay="3s")
    # A slow exec and a deletion with the same key: the deletion waits (pending) behind it.
    rules += (
        "  - name: ordered\n"
        "    match: {notification: IF-MIB::linkDown, varbinds: {ifIndex: 2}}\n"
        "    actions:\n"
        "      - action: exec\n"
        f"        argv: [{sys.executable}, -c, 'import time, pathlib; time.sleep(2); "
        f'pathlib.Path("{marker}").open("a").write("x")\']\n'
        "        key: same-port\n"
        "      - action: kea.lease-del\n"
        f"        ip-address: {pending_ip}\n"
        "        endpoint: up\n"
        "        key: same-port\n"
        "        cap: {limit: 100, per: 1m}\n"
    )
    rules += delete_rule("retrying", 3, retry_ip, "down")
    endpoints = {
        "up": {"transport": "unix", "socket": str(kea.dhcp4_socket), "family": "v4"},
        "down": {"transport": "unix", "socket": str(down.dhcp4_socket), "family": "v4"},
    }
    config = {"kea": {"endpoints": endpoints}, "dispatch": DISPATCH}
    d = TrapdDaemon.start(tmp_path / "trapd", rules=rules, config=config)
    try:
        for if_index in (1, 2, 3):
            trap(d, if_index)
        wait_until(lambda: len(journal(d)) == 4, 10, "four journaled actions")
        # Kill it while: 'delayed' waits for its 3 s, the exec runs, the ordered deletion is
        # pending behind it, and 'retrying' fails against the stopped Kea.
        wait_until(lambda: any(e["state"] == "failed" for e in journal(d)), 10, "a retrying action")
        states = {e["rule"] + "/" + e["action"]: e["state"] for e in journal(d)}
        assert states["delayed/kea.lease-del"] == "scheduled"
        assert states["ordered/kea.lease-del"] in ("pending", "scheduled"), states
        d.signal(signal.SIGKILL)
        d.wait_exit()
        assert not gone(kea, delayed_ip) and not gone(kea, pending_ip)

        down.spawn("kea-dhcp4")
        down.wait_ready()
        d.launch()
        d.wait_ready()
        wait_until(lambda: gone(kea, delayed_ip, pending_ip) and gone(down, retry_ip), 20, "all leases gone")
        wait_until(lambda: all(e["state"] == "done" for e in journal(d)), 10, "every action done")
        entries = journal(d)
        assert len(entries) == 4  # nothing planned twice by the restart
        assert {e["rule"] for e in entries} == {"delayed", "ordered", "retrying"}
        # The exec was running when killed: at least once (it may have run again after the restart).
        assert marker.exists() and 1 <= len(marker.read_text()) <= 2
        assert d.stop() == 0
    finally:
        d.close()


def test_kea_down_for_a_while_then_back_every_action_completes_once(
    kea_factory: Callable[..., KeaInstance], tmp_path: Path
) -> None:
    kea = kea_factory(dhcp6=False, ca=False)
    ips = [kea.next_ip4() for _ in range(5)]
    for i, ip in enumerate(ips):
        kea.add_lease4(ip, f"0a:00:27:00:d2:{i:02x}")
    rules = "rules:\n" + "".join(delete_rule(f"del-{i}", 10 + i, ip, "kea") for i, ip in enumerate(ips))
    config = {
        "kea": {"endpoints": {"kea": {"transport": "unix", "socket": str(kea.dhcp4_socket), "family": "v4"}}},
        "dispatch": DISPATCH,
    }
    kea.stop(["kea-dhcp4"])
    d = TrapdDaemon.start(tmp_path / "trapd", rules=rules, config=config)
    try:
        for i in range(5):
            trap(d, 10 + i)
        wait_until(lambda: len(journal(d)) == 5, 10, "five journaled actions")
        # Several failed attempts each while Kea is away (waited for, not assumed after a sleep).
        wait_until(lambda: all(e["attempts"] >= 2 for e in journal(d)), 30, "two failed attempts each")
        assert all(e["state"] in ("failed", "pending", "scheduled", "running") for e in journal(d))
        kea.spawn("kea-dhcp4")
        kea.wait_ready()
        wait_until(lambda: gone(kea, *ips), 20, "the five leases gone")
        wait_until(lambda: all(e["state"] == "done" for e in journal(d)), 10, "every action done")
        entries = journal(d)
        assert len(entries) == 5
        assert all(e["attempts"] >= 2 for e in entries)  # they really failed while Kea was down
        # Done once each: each result records the one lease its deletion removed.
        assert [e["result"]["deleted"] for e in entries] == [1] * 5, [e["result"] for e in entries]
        assert d.stop() == 0
    finally:
        d.close()
