"""SIGKILL of a real ``trapd run`` at each exact point of an action's life, against a real Kea.

Between trapd and Kea 2.2 sits a unix socket proxy the test controls (``HoldingKea``): it can
hold a lease deletion before handing it to Kea (claimed, Kea not asked yet) or hold Kea's
answer (Kea did it, trapd does not know). The last point, trapd knows but the journal does
not (the action's end not committed), is reached by taking the journal's writers lock (the
file every trapd writer flocks before its transaction) as another process would: trapd's
writes wait for it. No part of trapd is mocked.

What docs/dispatch.md promises, checked at each point: an action whose end was not committed
runs again after the restart ("at least once"; the Kea deletions are idempotent); one whose
end was committed never runs again; one that was only journaled (pending) runs once; with
``interrupted: hold-unsafe`` an interrupted non-idempotent action is held, not repeated.
The journal ends consistent: nothing left running, the attempts counted.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import IF_INDEX, LINK_DOWN, TrapdDaemon
from holding_kea import HoldingKea
from kea_harness import KeaInstance
from listen_harness import needs_netsnmp, snmp_send

pytestmark = [pytest.mark.integration, needs_netsnmp]


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise AssertionError(f"not within {timeout} s: {what}")


def rows(d: TrapdDaemon) -> dict[str, dict[str, Any]]:
    """The journal's actions by rule, read from the file (read-only: WAL readers take no lock)."""
    path = d.state_dir / "journal.sqlite"
    if not path.exists():
        return {}
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        db.row_factory = sqlite3.Row
        found = db.execute("SELECT id, rule, state, attempts, result FROM actions ORDER BY id").fetchall()
    return {r["rule"]: dict(r) for r in found}


def trap(d: TrapdDaemon, if_index: int) -> None:
    r = snmp_send("snmptrap", "-v", "2c", "-c", "public", d.target(), "", LINK_DOWN,
                  f"{IF_INDEX}.{if_index}", "i", str(if_index))  # fmt: skip
    assert r.returncode == 0, r.stderr


def rule(name: str, if_index: int, action: str, **params: str) -> str:
    lines = [
        f"  - name: {name}",
        f"    match: {{notification: IF-MIB::linkDown, varbinds: {{ifIndex: {if_index}}}}}",
        "    actions:",
        f"      - action: {action}",
        "        endpoint: proxy",
        "        cap: {limit: 100, per: 1m}",
    ]
    lines += [f"        {k}: {v}" for k, v in params.items()]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def writers_locked(journal: Path) -> Iterator[None]:
    """Hold the journal's writers lock, as a second trapd writing would: trapd's commits wait."""
    fd = os.open(f"{journal}-writers.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@pytest.fixture
def setup(
    kea_factory: Callable[..., KeaInstance], tmp_path: Path
) -> Iterator[tuple[KeaInstance, HoldingKea]]:
    kea = kea_factory(dhcp6=False, ca=False)
    proxy = HoldingKea(tmp_path / "p.sock", kea.dhcp4_socket, ("lease4-del",))
    try:
        yield kea, proxy
    finally:
        proxy.close()


def start(tmp_path: Path, proxy: HoldingKea, rules: str, **dispatch: Any) -> TrapdDaemon:
    config = {
        "kea": {"endpoints": {"proxy": {"transport": "unix", "socket": str(proxy.path), "family": "v4",
                                        "timeout": 60}}},
        "dispatch": {
            "workers": 1,  # one busy worker: a second action waits in the journal, pending
            "retry": {"max_attempts": 5, "backoff": "0.2s", "max_backoff": "0.5s", "jitter": 0},
            "shutdown_timeout": "1s",
            **dispatch,
        },
    }  # fmt: skip
    return TrapdDaemon.start(tmp_path / "trapd", rules=rules, config=config)


def kill(d: TrapdDaemon) -> None:
    d.signal(signal.SIGKILL)
    d.wait_exit()


@pytest.mark.parametrize("point", ["claimed", "kea-did-it", "end-not-journaled"])
def test_a_kill_at_each_point_reruns_only_what_had_not_ended(
    setup: tuple[KeaInstance, HoldingKea], tmp_path: Path, point: str
) -> None:
    kea, proxy = setup
    ips = {name: kea.next_ip4() for name in ("done-before", "interrupted", "pending")}
    for i, ip in enumerate(ips.values()):
        kea.add_lease4(ip, f"0a:00:27:00:e1:{i:02x}")
    rules = "rules:\n" + "".join(
        rule(name, i + 1, "kea.lease-del", **{"ip-address": ip}) for i, (name, ip) in enumerate(ips.items())
    )
    d = start(tmp_path, proxy, rules)
    journal = d.state_dir / "journal.sqlite"
    try:
        trap(d, 1)  # done, its end committed, before the crash: must never run again
        wait_until(lambda: rows(d).get("done-before", {}).get("state") == "done", 20, "the first action done")
        assert kea.lease4(ips["done-before"]) is None

        proxy.hold = "request" if point == "claimed" else "answer"
        trap(d, 2)
        stage = "received" if point == "claimed" else "executed"
        wait_until(lambda: proxy.count(stage, "lease4-del") == 2, 20, f"the second deletion {stage}")
        trap(d, 3)  # the only worker is busy: journaled, waits (pending)
        wait_until(lambda: "pending" in rows(d), 20, "the third action journaled")
        assert rows(d)["interrupted"]["state"] == "running"
        if point == "end-not-journaled":
            with writers_locked(journal):
                proxy.release()  # trapd gets Kea's answer; its write of the end waits for the lock
                wait_until(lambda: proxy.count("answered", "lease4-del") == 2, 20, "the answer sent to trapd")
                d.wait_log(lambda e: e.get("event") == "action done" and e.get("rule") == "interrupted", 20)
                kill(d)
        else:
            kill(d)
        assert rows(d)["interrupted"]["state"] == "running"  # its end never committed
        assert rows(d)["pending"]["state"] == "pending"
        assert (kea.lease4(ips["interrupted"]) is None) == (point != "claimed")

        proxy.release()
        d.launch()
        d.wait_ready()
        wait_until(lambda: all(r["state"] == "done" for r in rows(d).values()), 30, "every action done")
        after = rows(d)
        assert len(after) == 3  # nothing planned twice
        assert [kea.lease4(ip) for ip in ips.values()] == [None, None, None]
        # Run (a deletion looks its lease up first): the first once, the interrupted one again,
        # the pending one once.
        assert proxy.count("received", "lease4-get") == 4
        assert after["done-before"]["attempts"] == 1 and after["pending"]["attempts"] == 1
        assert after["interrupted"]["attempts"] == 2, after
        # The lease the first attempt looked up and journaled before deleting it is in the rerun's
        # result, so `trapd kea restore` can put back what the interrupted attempt deleted.
        result = json.loads(after["interrupted"]["result"])
        kept = [lease.get("ip-address") for lease in result.get("leases", [])]
        assert ips["interrupted"] in kept, result
        if point != "claimed":
            assert result.get("deleted_earlier") == [ips["interrupted"]], result
        assert d.stop() == 0
    finally:
        d.close()


def test_hold_unsafe_holds_an_interrupted_non_idempotent_command_instead_of_repeating_it(
    setup: tuple[KeaInstance, HoldingKea], tmp_path: Path
) -> None:
    kea, proxy = setup
    ip = kea.next_ip4()
    kea.add_lease4(ip, "0a:00:27:00:e2:01")
    rules = "rules:\n" + rule(
        "cmd", 1, "kea.command", command="lease4-del", arguments=json.dumps({"ip-address": ip})
    )
    d = start(tmp_path, proxy, rules, interrupted="hold-unsafe")
    try:
        proxy.hold = "answer"
        trap(d, 1)
        wait_until(lambda: proxy.count("executed", "lease4-del") == 1, 20, "the command executed")
        kill(d)
        proxy.release()
        d.launch()
        d.wait_ready()
        wait_until(lambda: rows(d).get("cmd", {}).get("state") == "held", 20, "the interrupted command held")
        time.sleep(1.0)  # (a repeat, if any, would have been sent by now: checked, not waited for)
        assert proxy.count("received", "lease4-del") == 1
        assert d.stop() == 0
    finally:
        d.close()
