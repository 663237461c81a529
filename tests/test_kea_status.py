"""probe(), start-up warnings, `trapd kea status` and `trapd kea restore` against real Kea 2.2."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from kea_harness import KeaInstance, free_port, make_kea_clients

from trapd.cli import main as trapd
from trapd.kea.probe import KeaUse, command_warnings, probe
from trapd.plugin import load_actions

pytestmark = pytest.mark.integration

LEASE_DEL = load_actions()[0]["kea.lease-del"]


def write_config(tmp_path: Path, kea_section: dict[str, Any]) -> Path:
    path = tmp_path / "trapd.yaml"
    path.write_text(yaml.safe_dump({"kea": kea_section, "state_dir": str(tmp_path / "state")}))
    return path


async def test_probe_reports_version_and_lease_cmds(kea: KeaInstance, kea_factory: Any) -> None:
    bare = kea_factory(lease_cmds=False, dhcp6=False, ca=False)
    section = kea.trapd_kea_section()
    section["endpoints"]["bare4"] = bare.endpoints()["unix4"]
    section["endpoints"]["gone"] = {
        "transport": "http",
        "url": f"http://127.0.0.1:{free_port()}/",
        "family": "v4",
    }
    clients = make_kea_clients(section)
    statuses = {(s.endpoint, s.family): s for s in await probe(clients)}
    await clients.aclose()
    for key in (("unix4", "v4"), ("unix6", "v6"), ("ca4", "v4"), ("ca6", "v6")):
        s = statuses[key]
        assert s.reachable and s.version == "2.2.0" and s.lease_cmds, s
    assert "lease6-get-by-duid" in statuses[("ca6", "v6")].commands
    assert statuses[("bare4", "v4")].reachable and not statuses[("bare4", "v4")].lease_cmds
    gone = statuses[("gone", "v4")]
    assert not gone.reachable and gone.error and "refused" in gone.error

    uses = [
        KeaUse(f"rules.yaml:{i}:3 rule r{i}", ep, "v4", LEASE_DEL.kea_commands)
        for i, ep in enumerate(("unix4", "bare4", "gone"), 1)
    ]
    warnings = command_warnings(statuses.values(), uses)
    assert len(warnings) == 2  # unix4 has everything; lease6-* are not asked of a v4 endpoint
    assert warnings[0].startswith("rules.yaml:2:3 rule r2: Kea 2.2.0 at bare4 (v4) lacks lease4-del, ")
    assert "libdhcp_lease_cmds.so" in warnings[0]
    assert "unreachable" in warnings[1]


def test_status_command(kea: KeaInstance, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(tmp_path, kea.trapd_kea_section())
    assert trapd(["kea", "status", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == [
        "ENDPOINT",
        "FAMILY",
        "TRANSPORT",
        "REACHABLE",
        "VERSION",
        "LEASE_CMDS",
        "TARGET",
    ]
    rows = {line.split()[0]: line.split() for line in out[1:]}
    assert rows["ca6"][:6] == ["ca6", "v6", "control-agent", "yes", "2.2.0", "yes"]
    assert rows["unix4"][:6] == ["unix4", "v4", "unix", "yes", "2.2.0", "yes"]

    assert trapd(["kea", "status", "--json", "-c", str(cfg)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert {d["endpoint"] for d in data} == {"unix4", "unix6", "ca4", "ca6"}


def test_status_fails_when_an_endpoint_is_down(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = write_config(
        tmp_path,
        {"endpoints": {"down": {"transport": "unix", "socket": str(tmp_path / "no.sock"), "family": "v4"}}},
    )
    assert trapd(["kea", "status", "--config", str(cfg)]) == 1
    captured = capsys.readouterr()
    assert "NO" in captured.out and "no socket at" in captured.err


async def deleted_result(kea: KeaInstance, section: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Add a lease, delete it with kea.lease-del, return (lease before, action result)."""
    from kea_harness import make_action_context

    from trapd.params import validate

    ip = kea.next_ip4()
    kea.add_lease4(ip, "0a:00:27:00:ee:01", hostname="undo.example.org", **{"user-context": {"a": 1}})
    before = kea.lease4(ip)
    assert before is not None
    clients = make_kea_clients(section)
    ctx = make_action_context(clients)
    result = await LEASE_DEL.run(validate(LEASE_DEL.params, {"ip-address": ip}), ctx)
    assert result is not None and kea.lease4(ip) is None
    await clients.aclose()
    await ctx.http.aclose()
    return before, result


async def test_restore_from_file(
    kea: KeaInstance, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    section = kea.trapd_kea_section(default_transport="ca")
    cfg = write_config(tmp_path, section)
    before, result = await deleted_result(kea, section)
    capsys.readouterr()  # drop the action's log lines
    f = tmp_path / "leases.json"
    f.write_text(json.dumps(result))
    assert await_sync(trapd, ["kea", "restore", "--file", str(f), "--dry-run", "-c", str(cfg)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["command"] == "lease4-add"
    assert printed["arguments"]["expire"] == before["cltt"] + before["valid-lft"]
    assert kea.lease4(before["ip-address"]) is None  # dry run sent nothing

    assert await_sync(trapd, ["kea", "restore", "--file", str(f), "-c", str(cfg)]) == 0
    assert capsys.readouterr().out.split() == ["restored", before["ip-address"]]
    assert kea.lease4(before["ip-address"]) == before
    assert await_sync(trapd, ["kea", "restore", "--file", str(f), "-c", str(cfg)]) == 0
    assert capsys.readouterr().out.split()[0] == "exists"


async def test_a_lease_that_has_run_out_since_is_not_restored(
    kea: KeaInstance, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Re-adding a lease whose time is up gives the client nothing (Kea reclaims it), yet it was
    sent and reported "restored". It is reported "expired", with when, and not sent."""
    section = kea.trapd_kea_section(default_transport="ca")
    cfg = write_config(tmp_path, section)
    before, result = await deleted_result(kea, section)
    capsys.readouterr()
    for lease in result["leases"]:
        lease["cltt"] = int(time.time()) - lease["valid-lft"] - 60  # ran out a minute ago
    f = tmp_path / "leases.json"
    f.write_text(json.dumps(result))
    assert await_sync(trapd, ["kea", "restore", "--file", str(f), "--dry-run", "-c", str(cfg)]) == 0
    assert json.loads(capsys.readouterr().out) == {"expired": before["ip-address"], "not sent": True}
    assert await_sync(trapd, ["kea", "restore", "--file", str(f), "-c", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert out.split()[:2] == ["expired", before["ip-address"]] and "ran out at" in out
    assert kea.lease4(before["ip-address"]) is None  # nothing was sent


async def test_restore_refuses_a_record_of_an_endpoint_it_does_not_know(
    kea: KeaInstance, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A record whose endpoint is gone from trapd.yaml (renamed, removed), or that names none (a
    bare list of leases), was restored through the family's default endpoint: possibly another
    Kea than the one the lease was deleted from. It is refused, naming the endpoint it needs,
    unless the operator names one with --endpoint; dry run included (it shows where it would go)."""
    section = kea.trapd_kea_section(default_transport="ca")
    cfg = write_config(tmp_path, section)
    before, result = await deleted_result(kea, section)
    ip = before["ip-address"]
    capsys.readouterr()
    renamed = tmp_path / "renamed.json"
    renamed.write_text(json.dumps({**result, "endpoint": "kea-old-site"}))
    bare = tmp_path / "bare.json"
    bare.write_text(json.dumps(result["leases"]))
    for f in (renamed, bare):
        for extra in ([], ["--dry-run"]):
            assert await_sync(trapd, ["kea", "restore", "--file", str(f), *extra, "-c", str(cfg)]) == 1
            out, err = capsys.readouterr()
            assert out == "", out
            assert "--endpoint NAME" in err and "ca4" in err, err  # how, and what there is
            if f is renamed:
                assert "kea-old-site" in err, err
            assert kea.lease4(ip) is None  # nothing sent
    argv = ["kea", "restore", "--file", str(renamed), "--endpoint", "ca4", "-c", str(cfg)]
    assert await_sync(trapd, [*argv, "--dry-run"]) == 0
    assert json.loads(capsys.readouterr().out)["endpoint"] == "ca4"
    assert await_sync(trapd, argv) == 0
    assert capsys.readouterr().out.split() == ["restored", ip]
    assert kea.lease4(ip) == before
    argv = ["kea", "restore", "--file", str(bare), "--endpoint", "nonesuch", "-c", str(cfg)]
    assert await_sync(trapd, argv) == 2
    assert "nonesuch" in capsys.readouterr().err


async def test_restore_from_journal(
    kea: KeaInstance, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trapd.config import load_config
    from trapd.dispatch.journal import NewEntry, open_journal

    section = kea.trapd_kea_section()
    cfg_path = write_config(tmp_path, section)
    before, result = await deleted_result(kea, section)
    config = load_config(cfg_path)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    journal = open_journal(config.dispatch.journal.file(config.state_dir), config.dispatch.journal)
    await journal.open()
    now = time.time()
    event = {"id": "e1", "received_at": now, "source": "127.0.0.1", "trap_name": "IF-MIB::linkDown"}
    entry = NewEntry(
        rule="r",
        action="kea.lease-del",
        index=0,
        params={"ip-address": before["ip-address"]},
        key="k",
        mode="enforce",
        state="pending",
        due=now,
        max_attempts=3,
        backoff=1.0,
        max_age=60,
    )
    added = await journal.add(event, [entry], [], now)
    await journal.claim(added.ids[0], now)
    await journal.finish(added.ids[0], "done", now, result=result)
    await journal.close()
    capsys.readouterr()

    assert await_sync(trapd, ["kea", "restore", str(added.ids[0]), "-c", str(cfg_path)]) == 0
    assert capsys.readouterr().out.split() == ["restored", before["ip-address"]]
    assert kea.lease4(before["ip-address"]) == before
    assert await_sync(trapd, ["kea", "restore", "999999", "-c", str(cfg_path)]) == 1
    assert "no journal entry 999999" in capsys.readouterr().err


def await_sync(fn: Any, argv: list[str]) -> int:
    """Run the CLI (which calls asyncio.run) from inside an async test, in a thread."""
    import concurrent.futures

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        rc: int = pool.submit(fn, argv).result()
    return rc


async def test_start_up_warnings_from_compiled_rules(kea_factory: Any, tmp_path: Path) -> None:
    """What the daemon does at start-up: resolve each rule's Kea endpoint, probe, warn."""
    from trapd.kea.config import KeaConfig
    from trapd.mibs import MibConfig, MibResolver
    from trapd.rules import load_rules
    from trapd.rules.kea_uses import kea_uses
    from trapd.yamlsource import load_yaml

    bare = kea_factory(lease_cmds=False, dhcp6=False, ca=False)
    section = {"default": {"v4": "bare4"}, "endpoints": {"bare4": bare.endpoints()["unix4"]}}
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - name: free\n"
        "    match: {notification: IF-MIB::linkDown}\n"
        "    actions:\n"
        "      - action: kea.lease-del\n"
        "        hw-address: '00:11:22:33:44:55'\n"
        "        cap: {limit: 1, per: 1m}\n"
        "      - action: kea.dhcp-disable\n"
        "        max-period: 1m\n"
        "        cap: {limit: 1, per: 1m}\n"
        "      - action: kea.lease-del\n"
        "        endpoint: elsewhere\n"
        "        ip-address: '10.1.0.1'\n"
        "        cap: {limit: 1, per: 1m}\n"
    )
    resolver = MibResolver.load(MibConfig(dirs=()), tmp_path)  # the shipped names are enough
    ruleset = load_rules([rules], resolver, load_actions()[0])
    kea_config = KeaConfig.from_yaml(load_yaml(json.dumps(section)), tmp_path)
    uses = kea_uses(ruleset.rules, kea_config)
    assert [(u.endpoint, u.family) for u in uses] == [("bare4", "v4"), ("bare4", "v4"), ("elsewhere", "v4")]
    clients = make_kea_clients(section)
    warnings = command_warnings(await probe(clients), uses)
    await clients.aclose()
    assert len(warnings) == 2  # dhcp-disable needs no hook
    assert warnings[0].startswith(
        f"{rules}:5:9: rule free, action kea.lease-del: Kea 2.2.0 at bare4 (v4) lacks "
    )
    assert "lease4-get-by-hw-address" in warnings[0] and "libdhcp_lease_cmds.so" in warnings[0]
    assert warnings[1].endswith("Kea endpoint elsewhere (v4) is not configured")


# --- trapd_kea_endpoint_up in a running daemon (issue 14 item 15) -----------------------------------

UP_RULES = """
rules:
  - name: free
    match: {notification: IF-MIB::linkDown}
    actions:
      - action: kea.lease-del
        ip-address: "10.1.0.250"
        cap: {limit: 100, per: 1m}
"""
FAST = {
    "retry": {"max_attempts": 1000, "backoff": "0.2s", "max_backoff": "0.5s", "jitter": 0},
    "breaker": {"failures": 2, "cool_down": "0.5s", "max_cool_down": "1s"},
}


def _start_again(inst: KeaInstance) -> None:
    for daemon in inst.argv:
        inst.spawn(daemon)
    inst.wait_ready()


def _up(d: Any) -> float | None:
    samples = [
        v
        for (n, lb), v in d.metrics().items()
        if n == "trapd_kea_endpoint_up" and lb == (("endpoint", "unix4/v4"),)
    ]
    return samples[0] if samples else None


def _wait_up(d: Any, value: float, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while (got := _up(d)) != value:
        assert time.monotonic() < deadline, f"{what}: trapd_kea_endpoint_up is {got}, not {value}"
        time.sleep(0.1)


def test_endpoint_up_follows_the_dispatcher_through_a_kea_outage(kea_factory: Any, tmp_path: Path) -> None:
    """No status polling: only the actions' own exchanges (and the breaker) move the gauge."""
    from daemon_harness import LINK_DOWN, TrapdDaemon
    from listen_harness import snmp_send

    inst = kea_factory(dhcp6=False, ca=False)
    inst.add_lease4("10.1.0.250", "0a:00:27:00:0e:01")
    config = {"kea": {**inst.trapd_kea_section(), "poll_interval": 0}, "dispatch": FAST}
    d = TrapdDaemon.start(tmp_path / "trapd", rules=UP_RULES, config=config)
    try:
        _wait_up(d, 1, "after the start-up probe")
        inst.stop()
        r = snmp_send("snmptrap", "-v", "2c", "-c", "public", d.target(), "", LINK_DOWN)
        assert r.returncode == 0, r.stderr
        _wait_up(d, 0, "while the action fails against a stopped Kea")
        _start_again(inst)  # its lease file still has the lease
        _wait_up(d, 1, "once the retried action got through")
        deadline = time.monotonic() + 30
        while inst.lease4("10.1.0.250") is not None:
            assert time.monotonic() < deadline, "the retried deletion did not happen"
            time.sleep(0.1)
    finally:
        d.stop()
        d.close()


def test_endpoint_up_and_healthz_follow_the_status_poll(kea_factory: Any, tmp_path: Path) -> None:
    """With kea.poll_interval, an idle daemon notices Kea going and coming back; /healthz warns."""
    from daemon_harness import TrapdDaemon, eventually

    inst = kea_factory(dhcp6=False, ca=False)
    config = {"kea": {**inst.trapd_kea_section(), "poll_interval": "0.2s", "warn_after": "1s"}}
    d = TrapdDaemon.start(tmp_path / "trapd", rules=UP_RULES, config=config)
    try:
        _wait_up(d, 1, "after start")
        inst.stop()
        _wait_up(d, 0, "Kea stopped")
        deadline = time.monotonic() + 30
        while "kea" not in (health := d.healthz())[1]:
            assert time.monotonic() < deadline, f"no Kea warning in /healthz: {health}"
            time.sleep(0.1)
        assert health[0] == 200 and health[1]["status"] == "warning"
        assert health[1]["kea"][0].startswith("Kea unix4/v4 unreachable for")
        d.wait_log(lambda e: e.get("event") == "Kea server needs attention")
        _start_again(inst)
        _wait_up(d, 1, "Kea started again")
        d.wait_log(lambda e: e.get("event") == "Kea server fine again")

        def healthy() -> None:
            assert d.healthz()[1]["status"] == "ok"

        eventually(healthy)
    finally:
        d.stop()
        d.close()


async def deleted_on_two_peers(
    kea_factory: Any, tmp_path: Path
) -> tuple[list[KeaInstance], Path, dict[str, str], list[Any]]:
    """One trap, a foreach rule's kea.lease-del for two MACs, on a relationship of two servers.

    Both leases are on both servers; the dispatcher's own fan-out journals one entry per MAC and
    peer, all at the same action position. Two plain Kea servers stand in for the pair: restore
    does not depend on HA itself. Returns the servers, trapd.yaml, MAC -> address, the entries.
    """
    from trapd.config import load_config
    from trapd.dispatch.config import DispatchConfig, JournalConfig
    from trapd.dispatch.dispatcher import Dispatcher
    from trapd.dispatch.journal import HistoryFilter, open_journal
    from trapd.dispatch.testing import make_event, make_outcome, plan
    from trapd.kea.client import KeaClients

    servers = [kea_factory(dhcp6=False, ca=False) for _ in range(2)]
    peers = [{"name": f"server{i}", **s.endpoints()["unix4"]} for i, s in enumerate(servers, 1)]
    for p in peers:
        del p["family"]
    cfg_path = write_config(tmp_path, {"endpoints": {"pair4": {"family": "v4", "peers": peers}}})
    macs = {"0a:00:27:77:00:01": servers[0].next_ip4(), "0a:00:27:77:00:02": servers[0].next_ip4()}
    for s in servers:
        for mac, ip in macs.items():
            s.add_lease4(ip, mac)
    config = load_config(cfg_path)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    journal = open_journal(config.dispatch.journal.file(config.state_dir), config.dispatch.journal)
    clients = KeaClients(config.kea)
    d = Dispatcher(DispatchConfig(workers=2, journal=JournalConfig(poll_interval=0.05)), journal,
                   load_actions()[0], clients)  # fmt: skip
    await journal.open()
    await d.start()
    try:
        planned = [
            plan("kea.lease-del", {"hw-address": mac}, key=mac, item={"mac": mac, "operation": "removed"})
            for mac in macs
        ]
        await d.submit(make_event(), make_outcome(*planned))
        deadline = time.monotonic() + 30
        while d.stats.outcomes[("kea.lease-del", "done")] < 4:
            assert time.monotonic() < deadline, d.stats.outcomes
            await asyncio.sleep(0.05)
    finally:
        await d.stop()
        await clients.aclose()
    entries = await journal.history(HistoryFilter(action="kea.lease-del"))
    await journal.close()
    assert len(entries) == 4 and all(s.lease4(ip) is None for s in servers for ip in macs.values())
    return servers, cfg_path, macs, entries


async def test_restore_of_one_peer_part_leaves_the_other_foreach_items_alone(
    kea_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A foreach rule on an HA relationship: restore of one MAC's entry restores that MAC only.

    `trapd kea restore ID` must find the partner entries of ID (same item, other peer), not
    every entry of that action position.
    """
    servers, cfg_path, macs, entries = await deleted_on_two_peers(kea_factory, tmp_path)
    first_mac, other_mac = list(macs)
    entry = next(e for e in entries if e.params["hw-address"] == first_mac and e.params["peer"] == "server1")
    capsys.readouterr()

    assert await_sync(trapd, ["kea", "restore", str(entry.id), "-c", str(cfg_path)]) == 0
    out = capsys.readouterr().out
    assert sorted(out.split("\n")[:-1]) == [
        f"restored  {macs[first_mac]}  on server1",
        f"restored  {macs[first_mac]}  on server2",
    ], out
    assert all(s.lease4(macs[first_mac]) is not None for s in servers)
    assert all(s.lease4(macs[other_mac]) is None for s in servers)  # not asked for: stays deleted


async def test_restore_on_one_peer_uses_that_peer_record(
    kea_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--peer NAME restores what was removed from NAME, once: not its partners' records as well."""
    servers, cfg_path, macs, entries = await deleted_on_two_peers(kea_factory, tmp_path)
    mac = next(iter(macs))
    entry = next(e for e in entries if e.params["hw-address"] == mac and e.params["peer"] == "server1")
    capsys.readouterr()

    argv = ["kea", "restore", str(entry.id), "--peer", "server2", "-c", str(cfg_path)]
    assert await_sync(trapd, argv) == 0
    out = capsys.readouterr().out
    assert out.split("\n")[:-1] == [f"restored  {macs[mac]}  on server2"], out
    assert servers[0].lease4(macs[mac]) is None and servers[1].lease4(macs[mac]) is not None


async def test_startup_probe_names_the_peer(kea: KeaInstance, kea_factory: Any, tmp_path: Path) -> None:
    """The daemon's start-up lines say which server of a pair lacks lease_cmds, not just the pair."""
    from types import SimpleNamespace

    from trapd.config import load_config
    from trapd.kea.client import KeaClients
    from trapd.service.daemon import Daemon

    bare = kea_factory(lease_cmds=False, dhcp6=False, ca=False)
    peers = [
        {"name": "server1", **kea.endpoints()["unix4"]},
        {"name": "server2", **bare.endpoints()["unix4"]},
    ]
    for p in peers:
        del p["family"]
    daemon = Daemon(
        load_config(write_config(tmp_path, {"endpoints": {"pair4": {"family": "v4", "peers": peers}}}))
    )
    lines: list[tuple[str, str, Any]] = []
    daemon.log = SimpleNamespace(  # type: ignore[assignment]
        info=lambda msg, **kw: lines.append(("info", msg, kw.get("endpoint"))),
        warning=lambda msg, **kw: lines.append(("warning", msg, kw.get("endpoint"))),
    )
    daemon.kea = KeaClients(daemon.config.kea)
    daemon.rules = SimpleNamespace(rules=[])  # type: ignore[assignment]
    await daemon._probe_kea()
    await daemon.kea.aclose()
    assert sorted(lines) == [
        ("info", "Kea endpoint ok", "pair4/server1"),
        ("warning", "Kea endpoint has no lease commands: load libdhcp_lease_cmds.so", "pair4/server2"),
    ]


async def test_restore_refuses_a_peer_that_trapd_yaml_no_longer_has(
    kea_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A peer renamed in trapd.yaml since the deletion: one part went back (server1), the other
    failed at the unknown peer, and the error alone was printed: what had been restored was not
    said. The peer is checked before anything is sent, and named, with the way on (--peer)."""
    servers, cfg_path, macs, entries = await deleted_on_two_peers(kea_factory, tmp_path)
    mac = next(iter(macs))
    entry = next(e for e in entries if e.params["hw-address"] == mac and e.params["peer"] == "server1")
    cfg = yaml.safe_load(cfg_path.read_text())
    cfg["kea"]["endpoints"]["pair4"]["peers"][1]["name"] = "server2-new"
    cfg_path.write_text(yaml.safe_dump(cfg))
    capsys.readouterr()

    assert await_sync(trapd, ["kea", "restore", str(entry.id), "-c", str(cfg_path)]) == 1
    out, err = capsys.readouterr()
    assert "server2" in err and "--peer NAME" in err and "server2-new" in err, err
    assert all(s.lease4(macs[mac]) is None for s in servers), out  # nothing sent
    argv = ["kea", "restore", str(entry.id), "--peer", "server2-new", "-c", str(cfg_path)]
    assert await_sync(trapd, [*argv, "--dry-run"]) == 0  # says where the real run sends them
    sent = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(s["endpoint"], s["peer"]) for s in sent] == [("pair4", "server2-new")] * 2, sent
    assert await_sync(trapd, argv) == 0
    out = capsys.readouterr().out
    assert out.split("\n")[:-1] == [f"restored  {macs[mac]}  on server2-new"] * 2 or "exists" in out, out
    assert servers[1].lease4(macs[mac]) is not None and servers[0].lease4(macs[mac]) is None


async def test_restore_says_what_went_back_when_a_server_fails_midway(
    kea_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One peer of the pair is down: the lease went back on the other, yet the output was the
    error alone (exit 1), so the operator could not tell what to do again. Each lease and server
    gets its line: restored on server1, failed on server2 with why."""
    servers, cfg_path, macs, entries = await deleted_on_two_peers(kea_factory, tmp_path)
    mac = next(iter(macs))
    entry = next(e for e in entries if e.params["hw-address"] == mac and e.params["peer"] == "server1")
    servers[1].stop()
    capsys.readouterr()

    assert await_sync(trapd, ["kea", "restore", str(entry.id), "-c", str(cfg_path)]) == 1
    lines = capsys.readouterr().out.split("\n")[:-1]
    assert lines[0] == f"restored  {macs[mac]}  on server1", lines
    assert lines[1].startswith(f"failed    {macs[mac]}  on server2  ("), lines
    assert servers[0].lease4(macs[mac]) is not None


async def test_restore_from_a_shared_journal_refuses_another_host_s_local_kea(
    kea: KeaInstance, pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A pair on one PostgreSQL journal, each host with an endpoint of the same name on its own
    Kea (a unix socket, an agent on 127.0.0.1). dhcp1 deleted the lease through its unix4; a
    restore typed on dhcp2 sent it through dhcp2's unix4: another Kea. Refused there, naming
    the host that ran it and the endpoint; on dhcp1, or with --endpoint named, it goes back."""
    from trapd.dispatch.journal import NewEntry
    from trapd.dispatch.journal.postgres import PostgresJournal

    section = kea.trapd_kea_section()
    before, result = await deleted_result(kea, section)
    assert result["endpoint"] == "unix4"
    async with PostgresJournal(pg_url, instance="dhcp1") as j:
        now = j.now()
        ip = {"ip-address": before["ip-address"]}
        entry = NewEntry(rule="r", action="kea.lease-del", index=0, params=ip, key="k", mode="enforce",
                         state="pending", due=now, max_attempts=3, backoff=1.0, max_age=60)  # fmt: skip
        added = await j.add({"id": "e1", "received_at": now, "source": "10.0.0.1"}, [entry], [], now)
        await j.claim(added.ids[0], now)
        await j.finish(added.ids[0], "done", now, result=result)
    capsys.readouterr()

    def config(instance: str) -> str:
        path = tmp_path / f"{instance}.yaml"
        journal = {"url": pg_url, "instance": instance}
        cfg = {"kea": section, "state_dir": str(tmp_path / "state"), "dispatch": {"journal": journal}}
        path.write_text(yaml.safe_dump(cfg))
        return str(path)

    argv = ["kea", "restore", str(added.ids[0])]
    assert await_sync(trapd, [*argv, "-c", config("dhcp2")]) == 1
    err = capsys.readouterr().err
    assert "dhcp1" in err and "unix4" in err and "--endpoint NAME" in err, err
    assert kea.lease4(before["ip-address"]) is None
    assert await_sync(trapd, [*argv, "-c", config("dhcp1")]) == 0
    assert capsys.readouterr().out.split() == ["restored", before["ip-address"]]
    kea.cmd4("lease4-del", {"ip-address": before["ip-address"]})
    assert await_sync(trapd, [*argv, "--endpoint", "unix4", "-c", config("dhcp2")]) == 0  # said so
    assert capsys.readouterr().out.split() == ["restored", before["ip-address"]]


@pytest.mark.parametrize("damage", ["result", "params"])
async def test_restore_with_a_partner_row_that_cannot_be_read_back_restores_the_rest_and_says_so(
    kea_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    """The entry asked for is sound; its partner's (the same deletion on the other peer) is
    damaged: JSON cut short in its result, or text that is not UTF-8 in its parameters."""
    import sqlite3

    servers, cfg_path, macs, entries = await deleted_on_two_peers(kea_factory, tmp_path)
    mac = next(iter(macs))
    entry = next(e for e in entries if e.params["hw-address"] == mac and e.params["peer"] == "server1")
    partner = next(e for e in entries if e.params["hw-address"] == mac and e.params["peer"] == "server2")
    db = sqlite3.connect(tmp_path / "state" / "journal.sqlite")
    if damage == "result":
        db.execute("UPDATE actions SET result = substr(result, 1, 40) WHERE id = ?", (partner.id,))
    else:
        db.execute(
            "UPDATE actions SET params = CAST(replace(params, 'server2', 'server2' || char(1)) AS BLOB) "
            "|| x'ff' WHERE id = ?",
            (partner.id,),
        )
    db.commit()
    db.close()
    capsys.readouterr()

    assert await_sync(trapd, ["kea", "restore", str(entry.id), "-c", str(cfg_path)]) == 1
    out, err = capsys.readouterr()
    assert out.split("\n")[:-1] == [f"restored  {macs[mac]}  on server1"], (out, err)
    assert f"journal entry {partner.id}" in err and "cannot be read back" in err, err
    assert "trapd journal show" in err, err
    assert servers[0].lease4(macs[mac]) is not None and servers[1].lease4(macs[mac]) is None


async def test_restore_names_a_part_still_to_be_retried_and_restores_the_others(
    kea_factory: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A partner part that is still to run (failed, to be retried: its server was down midway,
    with the leases it recorded) is not restored: its retry would delete them again. It is named
    with what to do (cancel it first), the other peer's part goes back, exit 1; --peer naming the
    other peer leaves it out."""
    import sqlite3

    from trapd.config import load_config

    servers, cfg_path, macs, entries = await deleted_on_two_peers(kea_factory, tmp_path)
    mac = next(iter(macs))
    mine = next(e for e in entries if e.params["hw-address"] == mac and e.params["peer"] == "server1")
    retrying = next(e for e in entries if e.params["hw-address"] == mac and e.params["peer"] == "server2")
    config = load_config(cfg_path)
    with sqlite3.connect(config.dispatch.journal.file(config.state_dir)) as db:
        db.execute("UPDATE actions SET state = 'failed' WHERE id = ?", (retrying.id,))
    capsys.readouterr()

    assert await_sync(trapd, ["kea", "restore", str(mine.id), "-c", str(cfg_path)]) == 1
    captured = capsys.readouterr()
    assert captured.out.split("\n")[:-1] == [f"restored  {macs[mac]}  on server1"], captured.out
    assert f"journal entry {retrying.id} (peer server2) is failed" in captured.err, captured.err
    assert f"trapd journal cancel {retrying.id}" in captured.err, captured.err
    assert servers[0].lease4(macs[mac]) is not None and servers[1].lease4(macs[mac]) is None
    argv = ["kea", "restore", str(mine.id), "--peer", "server1", "-c", str(cfg_path)]
    assert await_sync(trapd, argv) == 0
    assert capsys.readouterr().err == ""
