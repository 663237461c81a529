"""A real Kea stopped for a while: deletions wait behind the circuit breaker and all complete once it is back.

No attempt is wasted on a dead endpoint beyond the breaker's threshold and
its probes, none of the queued actions is lost or dead, and the leases are
gone afterwards (checked in Kea itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from trapd.dispatch.config import BreakerConfig, DispatchConfig, JournalConfig, RetryDefaults
from trapd.dispatch.dispatcher import Dispatcher
from trapd.dispatch.journal import HistoryFilter, SQLiteJournal
from trapd.dispatch.testing import make_event, make_outcome, plan
from trapd.kea.client import KeaClients
from trapd.kea.config import KeaConfig
from trapd.kea.restore import leases_from_result, restore_leases
from trapd.plugin import load_actions
from trapd.yamlsource import load_yaml

pytestmark = pytest.mark.integration

CONFIG = DispatchConfig(
    workers=4,
    shutdown_timeout=1.0,
    journal=JournalConfig(poll_interval=0.05),
    retry=RetryDefaults(max_attempts=100, max_age=120.0, backoff=0.05, max_backoff=0.2, jitter=0.2),
    breaker=BreakerConfig(failures=3, cool_down=0.3, max_cool_down=0.6),
)


async def wait_for(cond: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def kea_with_leases(
    kea_factory: Callable[..., Any], tmp_path: Path, count: int, **options: Any
) -> tuple[Any, list[str], KeaClients]:
    """A Kea of its own (no agent) holding ``count`` v4 leases, and trapd's clients for it."""
    inst = kea_factory(ca=False, **options)
    ips = [inst.next_ip4() for _ in range(count)]
    for i, ip in enumerate(ips):
        inst.add_lease4(ip, f"00:00:5e:00:53:{i:02x}")
    kea_config = KeaConfig.from_yaml(load_yaml(yaml.safe_dump(inst.trapd_kea_section())), tmp_path)
    return inst, ips, KeaClients(kea_config)


async def test_kea_down_then_back(kea_factory: Callable[..., Any], tmp_path: Path) -> None:
    inst, ips, clients = kea_with_leases(kea_factory, tmp_path, 8, dhcp6=False)
    actions, _ = load_actions()
    async with SQLiteJournal(tmp_path / "journal.sqlite") as journal:
        d = Dispatcher(CONFIG, journal, actions, clients)
        await d.start()
        try:
            inst.stop(["kea-dhcp4"])  # Kea is down: its control socket is gone
            for ip in ips:
                await d.submit(make_event(), make_outcome(plan("kea.lease-del", {"ip-address": ip}, key=ip)))
            await wait_for(lambda: any(b.state != "closed" for b in d.breakers.values()))
            await asyncio.sleep(1.0)
            retries = d.stats.outcomes[("kea.lease-del", "retry")]
            # Without the breaker: 8 actions retrying every <= 0.2 s for 1 s, some 40+ attempts.
            assert retries < 25, retries
            assert d.stats.outcomes[("kea.lease-del", "deferred")] > 0
            assert d.stats.outcomes[("kea.lease-del", "dead")] == 0

            inst.spawn("kea-dhcp4")
            inst.wait_ready()
            await wait_for(lambda: d.stats.outcomes[("kea.lease-del", "done")] == len(ips))
            assert all(b.state == "closed" for b in d.breakers.values())
        finally:
            await d.stop()
            await clients.aclose()
        done = await journal.history(HistoryFilter(action="kea.lease-del"))
        assert sorted(e.state for e in done) == ["done"] * len(ips)
        assert {e.ip for e in done} == set(ips)  # searchable by the lease's address
    for ip in ips:
        assert inst.lease4(ip) is None  # the effect, in Kea itself


async def test_one_family_down_does_not_hold_up_the_other(
    kea_factory: Callable[..., Any], tmp_path: Path
) -> None:
    """kea-dhcp6 down opens the v6 endpoint's breaker; v4 deletions of the same rule still run at once.

    Rules usually name no endpoint (kea.default picks one per family), so the same action
    reaches unix4 or unix6 by the address it deletes. The breaker of the one that is down
    must not defer the other's actions, nor be closed by their successes.
    """
    inst, ip4s, clients = kea_with_leases(kea_factory, tmp_path, 4)
    actions, _ = load_actions()
    config = replace(CONFIG, breaker=BreakerConfig(failures=3, cool_down=30.0, max_cool_down=30.0))
    async with SQLiteJournal(tmp_path / "journal.sqlite") as journal:
        d = Dispatcher(config, journal, actions, clients)
        await d.start()
        try:
            inst.stop(["kea-dhcp6"])
            for _ in range(4):
                ip6 = inst.next_ip6()
                await d.submit(
                    make_event(), make_outcome(plan("kea.lease-del", {"ip-address": ip6}, key=ip6))
                )
            await wait_for(lambda: "unix6" in d.breakers and d.breakers["unix6"].state != "closed")
            for ip in ip4s:
                await d.submit(make_event(), make_outcome(plan("kea.lease-del", {"ip-address": ip}, key=ip)))
            # Well inside the v6 breaker's 30 s cool-down.
            await wait_for(lambda: d.stats.outcomes[("kea.lease-del", "done")] == len(ip4s))
            assert d.breakers["unix6"].state != "closed"  # v4 answers say nothing about kea-dhcp6
        finally:
            await d.stop()
            await clients.aclose()
    for ip in ip4s:
        assert inst.lease4(ip) is None


@pytest.mark.parametrize("named", [False, True], ids=["default-endpoint", "endpoint-named"])
async def test_behind_one_control_agent_a_stopped_dhcp6_does_not_hold_up_dhcp4(
    kea_factory: Callable[..., Any], tmp_path: Path, named: bool
) -> None:
    """One Control Agent endpoint (family [v4, v6]) in front of kea-dhcp4 and a stopped kea-dhcp6.

    Kea 2.2's agent answers the dhcp6 commands itself, result 1 "unable to forward command to
    the dhcp6 service: ... The server is likely to be offline": dhcp6 is down, dhcp4 is not.
    Before, both shared the endpoint's one breaker, so dhcp6's failures held v4 deletions for
    the whole cool-down. The breaker is per (endpoint, service) now, whether the rule names the
    endpoint or leaves it to kea.default.
    """
    inst = kea_factory()  # kea-dhcp4, kea-dhcp6 and kea-ctrl-agent
    ip4s = [inst.next_ip4() for _ in range(4)]
    for i, ip in enumerate(ip4s):
        inst.add_lease4(ip, f"00:00:5e:00:53:{i:02x}")
    section = {
        "default": {"v4": "ca", "v6": "ca"},
        "endpoints": {
            "ca": {"transport": "control-agent", "url": inst.ca_url, "family": ["v4", "v6"], "timeout": 5}
        },
    }
    clients = KeaClients(KeaConfig.from_yaml(load_yaml(yaml.safe_dump(section)), tmp_path))
    extra = {"endpoint": "ca"} if named else {}
    actions, _ = load_actions()
    config = replace(CONFIG, breaker=BreakerConfig(failures=3, cool_down=30.0, max_cool_down=30.0))
    async with SQLiteJournal(tmp_path / "journal.sqlite") as journal:
        d = Dispatcher(config, journal, actions, clients)
        await d.start()
        try:
            inst.stop(["kea-dhcp6"])
            ip6s = [inst.next_ip6() for _ in range(4)]
            for ip6 in ip6s:
                await d.submit(
                    make_event(), make_outcome(plan("kea.lease-del", {"ip-address": ip6, **extra}, key=ip6))
                )
            await wait_for(lambda: any(b.state != "closed" for b in d.breakers.values()))
            v6_errors = [
                e.last_error or "" for e in await journal.history(HistoryFilter(action="kea.lease-del"))
            ]
            forwarded = "unable to forward command to the dhcp6 service"  # the agent's answer (Kea 2.2)
            assert any(forwarded in e for e in v6_errors), v6_errors
            for ip in ip4s:
                await d.submit(
                    make_event(), make_outcome(plan("kea.lease-del", {"ip-address": ip, **extra}, key=ip))
                )
            # Well inside the dhcp6 breaker's 30 s cool-down.
            await wait_for(lambda: d.stats.outcomes[("kea.lease-del", "done")] == len(ip4s))
            # v4 answers say nothing about kea-dhcp6: its breaker stays open, its deletions wait.
            assert [k for k, b in d.breakers.items() if b.state != "closed"] == ["ca/dhcp6"]
            assert d.stats.outcomes[("kea.lease-del", "dead")] == 0
        finally:
            await d.stop()
            await clients.aclose()
    for ip in ip4s:
        assert inst.lease4(ip) is None


class AnswerLosingRelay:
    """A unix-socket relay in front of Kea's control socket that loses one answer.

    The one fault Kea cannot be made to produce on cue: the first command whose request carries
    ``marker`` reaches Kea, Kea carries it out and answers, and the answer is dropped with the
    connection (trapd sees the socket closed without an answer). Everything else passes.
    Kea's unix socket takes one command per connection and closes after answering.
    """

    def __init__(self, upstream: Path, path: Path, marker: bytes, *, hold: bool = False) -> None:
        """``hold``: keep the connection open without answering until :meth:`close` (trapd is
        stopped meanwhile), rather than close it at once."""
        self.upstream = upstream
        self.path = path
        self.marker: bytes | None = marker
        self.hold = threading.Event() if hold else None
        self.lost: list[bytes] = []  # the requests whose answers were lost
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(str(path))
        self._server.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        if self.hold is not None:
            self.hold.set()
        with contextlib.suppress(OSError):
            self._server.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        with client, socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as kea:
            kea.connect(str(self.upstream))
            request = b""
            while True:  # one JSON command
                chunk = client.recv(65536)
                if not chunk:
                    return
                request += chunk
                try:
                    json.loads(request)
                    break
                except ValueError:
                    continue
            kea.sendall(request)
            answer = b""
            while chunk := kea.recv(65536):
                answer += chunk
            if self.marker is not None and self.marker in request:
                self.marker = None
                self.lost.append(request)
                if self.hold is not None:
                    self.hold.wait(60)
                return  # Kea did it; its answer never reaches trapd
            client.sendall(answer)


async def test_a_lease_deleted_whose_answer_was_lost_can_still_be_restored(
    kea_factory: Callable[..., Any], tmp_path: Path
) -> None:
    # kea.lease-del reads the lease (lease4-get), then deletes it (lease4-del). Kea deleted it,
    # but the answer was lost: the attempt failed (retryable), and the retry found no lease, so
    # the action ended done with no lease recorded: `trapd kea restore` had nothing to put back.
    # The lease is journaled before the delete (ActionContext.record) and the retry keeps it.
    inst = kea_factory(ca=False, dhcp6=False)
    ip = inst.next_ip4()
    inst.add_lease4(ip, "00:00:5e:00:53:77", hostname="pc7.example.org")
    before = inst.lease4(ip)
    short = Path(tempfile.mkdtemp(prefix="trapd-relay-"))  # a unix socket path has 107 bytes at most
    relay = AnswerLosingRelay(Path(inst.host_path(inst.dhcp4_socket)), short / "kea4.sock", b'"lease4-del"')
    try:
        section = inst.trapd_kea_section()
        section["endpoints"]["unix4"]["socket"] = str(relay.path)
        clients = KeaClients(KeaConfig.from_yaml(load_yaml(yaml.safe_dump(section)), tmp_path))
        actions, _ = load_actions()
        async with SQLiteJournal(tmp_path / "journal.sqlite") as journal:
            d = Dispatcher(CONFIG, journal, actions, clients)
            await d.start()
            try:
                (id_,) = await d.submit(
                    make_event(), make_outcome(plan("kea.lease-del", {"ip-address": ip}, key=ip))
                )
                await wait_for(lambda: d.stats.outcomes[("kea.lease-del", "done")] == 1, timeout=30)
            finally:
                await d.stop()
            assert relay.lost and inst.lease4(ip) is None  # deleted by the first attempt
            assert d.stats.outcomes[("kea.lease-del", "retry")] == 1
            entry = await journal.get(int(id_))
        assert entry is not None and entry.state == "done" and entry.attempts == 2
        recorded = leases_from_result(entry.result)
        assert recorded == [before], entry.result
        # What `trapd kea restore ID` does with it: the lease is back as it was.
        outcomes = await restore_leases(clients, recorded)
        assert [o.status for o in outcomes] == ["restored"], outcomes
        again = inst.lease4(ip)
        assert again is not None and again["hw-address"] == before["hw-address"]
        await clients.aclose()
    finally:
        relay.close()


async def test_a_lease_deleted_by_an_attempt_trapd_stopped_in_can_still_be_restored(
    kea_factory: Callable[..., Any], tmp_path: Path
) -> None:
    # trapd stops (its shutdown timeout runs out) while lease4-del is with Kea: Kea deletes the
    # lease, the row stays running, the next start runs the action again and finds no lease.
    # The lease journaled before the delete is in its result all the same.
    inst = kea_factory(ca=False, dhcp6=False)
    ip = inst.next_ip4()
    inst.add_lease4(ip, "00:00:5e:00:53:78")
    before = inst.lease4(ip)
    short = Path(tempfile.mkdtemp(prefix="trapd-relay-"))
    relay = AnswerLosingRelay(
        Path(inst.host_path(inst.dhcp4_socket)), short / "kea4.sock", b'"lease4-del"', hold=True
    )
    section = inst.trapd_kea_section()
    section["endpoints"]["unix4"]["socket"] = str(relay.path)
    clients = KeaClients(KeaConfig.from_yaml(load_yaml(yaml.safe_dump(section)), tmp_path))
    actions, _ = load_actions()
    try:
        async with SQLiteJournal(tmp_path / "journal.sqlite") as journal:
            d = Dispatcher(CONFIG, journal, actions, clients)
            await d.start()
            try:
                (id_,) = await d.submit(
                    make_event(), make_outcome(plan("kea.lease-del", {"ip-address": ip}, key=ip))
                )
                await wait_for(lambda: bool(relay.lost), timeout=30)
                await wait_for(lambda: inst.lease4(ip) is None, timeout=30)  # Kea deleted it
            finally:
                await d.stop(timeout=0.1)  # the action is still waiting for its answer
            running = await journal.get(int(id_))
            assert running is not None and running.state == "running"
            d = Dispatcher(CONFIG, journal, actions, clients)  # trapd started again
            await d.start()
            try:
                await wait_for(lambda: d.stats.outcomes[("kea.lease-del", "done")] == 1, timeout=30)
            finally:
                await d.stop()
            entry = await journal.get(int(id_))
        assert entry is not None and entry.state == "done" and entry.attempts == 2
        assert entry.result["deleted_earlier"] == [ip], entry.result
        recorded = leases_from_result(entry.result)
        assert recorded == [before], entry.result
        outcomes = await restore_leases(clients, recorded)
        assert [o.status for o in outcomes] == ["restored"], outcomes
        assert inst.lease4(ip) is not None
    finally:
        relay.close()
        await clients.aclose()


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_dead_lease_deletion_retried_by_an_operator_keeps_its_lease_restorable(
    kea_factory: Callable[..., Any], tmp_path: Path, request: pytest.FixtureRequest, backend: str
) -> None:
    # Kea deleted the lease, its answer was lost, and the action had no attempt left: dead, with
    # the lease it journaled before the delete in its result (`trapd kea restore ID` can use it).
    # The operator retries it (`trapd journal retry ID`): the retry found no lease and, the
    # journaled lease wiped by the retry, ended "deleted 0" with nothing left to restore.
    inst = kea_factory(ca=False, dhcp6=False)
    ip = inst.next_ip4()
    inst.add_lease4(ip, "00:00:5e:00:53:79")
    before = inst.lease4(ip)
    short = Path(tempfile.mkdtemp(prefix="trapd-relay-"))
    relay = AnswerLosingRelay(Path(inst.host_path(inst.dhcp4_socket)), short / "kea4.sock", b'"lease4-del"')
    section = inst.trapd_kea_section()
    section["endpoints"]["unix4"]["socket"] = str(relay.path)
    clients = KeaClients(KeaConfig.from_yaml(load_yaml(yaml.safe_dump(section)), tmp_path))
    actions, _ = load_actions()
    once = replace(CONFIG, retry=replace(CONFIG.retry, max_attempts=1))
    journal: Any
    if backend == "sqlite":
        journal = SQLiteJournal(tmp_path / "journal.sqlite")
    else:
        from trapd.dispatch.journal.postgres import PostgresJournal

        journal = PostgresJournal(request.getfixturevalue("pg_url"), instance="dhcp1")
    try:
        async with journal:
            d = Dispatcher(once, journal, actions, clients)
            await d.start()
            try:
                (id_,) = await d.submit(
                    make_event(), make_outcome(plan("kea.lease-del", {"ip-address": ip}, key=ip))
                )
                await wait_for(lambda: d.stats.outcomes[("kea.lease-del", "dead")] == 1, timeout=30)
            finally:
                await d.stop()
            dead = await journal.get(int(id_))
            assert dead is not None and dead.state == "dead", dead
            assert relay.lost and inst.lease4(ip) is None  # deleted by the first attempt
            assert leases_from_result(dead.result) == [before], dead.result
            assert await journal.retry([int(id_)], time.time()) == [int(id_)]
            d = Dispatcher(once, journal, actions, clients)  # trapd (re)started: it runs the retried row
            await d.start()
            try:
                await wait_for(lambda: d.stats.outcomes[("kea.lease-del", "done")] == 1, timeout=30)
            finally:
                await d.stop()
            entry = await journal.get(int(id_))
        assert entry is not None and entry.state == "done", entry
        assert entry.result["deleted_earlier"] == [ip], entry.result
        recorded = leases_from_result(entry.result)
        assert recorded == [before], entry.result
        outcomes = await restore_leases(clients, recorded)
        assert [o.status for o in outcomes] == ["restored"], outcomes
        assert inst.lease4(ip) is not None
    finally:
        relay.close()
        await clients.aclose()
