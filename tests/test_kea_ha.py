"""Kea HA pairs: every action lands on every peer that needs it (real Kea 2.2 pairs on loopback).

Kea HA does not copy control-API lease changes to the partner (kea-ha-facts.md),
so trapd journals one kea.lease-del / dhcp-disable / dhcp-enable per peer.
Each module parameter is one pair (hot-standby, load-balancing) of two servers
(kea-dhcp4 + kea-dhcp6 + Control Agent + kea-dhcp-ddns each) and one
``trapd run`` in front of it, shared by the tests; a test that stops a server
starts it again and waits (polling status-get) until the pair is back in its
mode. Peer server1 is reached over its unix sockets, server2 over its Control
Agent: any transport per peer.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from daemon_harness import LINK_DOWN, PYTHON, TrapdDaemon
from kea_harness import CHROOT_BASE, ensure_chroots, make_action_context, make_kea_clients, wait_for
from kea_sandbox import Bind, DdnsTarget, HaPair, start_bind, start_ha_pair, unix_command
from listen_harness import snmp_send

from trapd.kea.config import KeaConfig
from trapd.yamlsource import ConfigError, load_yaml

pytestmark = pytest.mark.integration

IF_INDEX = "1.3.6.1.2.1.2.2.1.1"
IF_PHYS_ADDRESS = "1.3.6.1.2.1.2.2.1.6"
IF_ALIAS = "1.3.6.1.2.1.31.1.1.1.18"
CAP = {"limit": 1000, "per": "1m"}

RULES = {
    "rules": [
        {
            "name": "nic-gone",
            "match": {"notification": "IF-MIB::linkDown", "varbinds": {"ifIndex": 8}},
            "actions": [
                {"action": "kea.lease-del", "endpoint": "pair4", "hw-address": "{{ ifPhysAddress | mac }}",
                 "cap": CAP},
                {"action": "kea.lease-del", "endpoint": "pair6", "hw-address": "{{ ifPhysAddress | mac }}",
                 "cap": CAP},
            ],
        },
        {
            "name": "disable",
            "match": {"notification": "IF-MIB::linkDown", "varbinds": {"ifIndex": 9}},
            "actions": [{"action": "kea.dhcp-disable", "endpoint": "pair4", "max-period": "60s", "cap": CAP}],
        },
        {
            "name": "enable",
            "match": {"notification": "IF-MIB::linkDown", "varbinds": {"ifIndex": 10}},
            "actions": [{"action": "kea.dhcp-enable", "endpoint": "pair4"}],
        },
        {
            "name": "dns-again",
            "match": {"notification": "IF-MIB::linkDown", "varbinds": {"ifIndex": 11}},
            "actions": [
                {"action": "kea.ddns-resend", "endpoint": "pair4", "hw-address": "{{ ifPhysAddress | mac }}"}
            ],
        },
        {
            "name": "address-gone",
            "match": {"notification": "IF-MIB::linkDown", "varbinds": {"ifIndex": 12}},
            "actions": [
                {"action": "kea.lease-del", "endpoint": "pair4", "ip-address": "{{ ifAlias }}", "cap": CAP}
            ],
        },
        {
            "name": "gone-with-dns",
            "match": {"notification": "IF-MIB::linkDown", "varbinds": {"ifIndex": 14}},
            "actions": [
                {"action": "kea.lease-del", "endpoint": "pair4", "hw-address": "{{ ifPhysAddress | mac }}",
                 "update-ddns": True, "cap": CAP},
            ],
        },
        {
            "name": "ask-both",
            "match": {"notification": "IF-MIB::linkDown", "varbinds": {"ifIndex": 13}},
            "actions": [
                {"action": "kea.command", "endpoint": "pair4", "family": "v4", "command": "status-get",
                 "cap": CAP}
            ],
        },
    ]
}  # fmt: skip

FAST_RETRY = {
    "retry": {"max_attempts": 1000, "backoff": "0.2s", "max_backoff": "1s", "jitter": 0},
    "breaker": {"failures": 3, "cool_down": "0.5s", "max_cool_down": "1s"},
}


# --- the pair, the daemon, and what to look at -------------------------------------------------


@pytest.fixture(scope="module")
def bind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bind]:
    if not Path("/usr/sbin/named").exists():
        pytest.skip("BIND is not installed")
    b = start_bind(Path(tmp_path_factory.mktemp("bind")))
    yield b
    b.stop()


@dataclass(frozen=True)
class Variant:
    """One pair the module runs against: a mode on a Kea version (chroot suite; None: Debian 12's 2.2)."""

    mode: str
    suite: str | None = None
    dedicated: bool = False  # HA over the daemons' own listeners, no Control Agent (Kea 3.0)


VARIANTS = {
    "2.2-hot-standby": Variant("hot-standby"),
    "2.2-load-balancing": Variant("load-balancing"),
    # the opt-in chroot tier (TRAPD_KEA_CHROOTS=1): 2.6.3 over its agents, 3.0.4 without any;
    # each version in both modes
    "2.6.3-hot-standby": Variant("hot-standby", "trixie"),
    "2.6.3-load-balancing": Variant("load-balancing", "trixie"),
    "3.0.4-hot-standby-dedicated": Variant("hot-standby", "sid", dedicated=True),
    "3.0.4-load-balancing-dedicated": Variant("load-balancing", "sid", dedicated=True),
}
CHROOT_AUTH = ("trapd", "chroot-ha-pw")


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaPair]:
    v = VARIANTS[request.param]
    if v.suite is None:
        if not Path("/usr/lib/x86_64-linux-gnu/kea/hooks/libdhcp_ha.so").exists():
            pytest.skip("Kea's HA hook is not installed")
        bind: Bind = request.getfixturevalue("bind")
        ddns = DdnsTarget(bind.port, bind.key_name, bind.key_secret)
        p = start_ha_pair(Path(tmp_path_factory.mktemp("ha")), v.mode, ddns=ddns)
        yield p
        p.stop()
        return
    ensure_chroots()
    root = CHROOT_BASE / v.suite
    base = Path(f"/tmp/trapd-ha-{os.getpid()}-{request.param}")  # inside the chroot
    bind = request.getfixturevalue("bind")
    ddns = DdnsTarget(bind.port, bind.key_name, bind.key_secret)
    p = start_ha_pair(base, v.mode, chroot=root, dedicated=v.dedicated, auth=CHROOT_AUTH, ddns=ddns)
    yield p
    p.stop()
    shutil.rmtree(root / base.relative_to("/"), ignore_errors=True)


def mixed_endpoints(pair: HaPair) -> dict[str, Any]:
    """pair4 / pair6: server1 over its unix sockets, server2 over HTTP (its agent; Kea 3: its own socket)."""
    unix = pair.trapd_endpoints("unix")
    http = pair.trapd_endpoints("http" if pair.dedicated else "ca")
    return {name: {**unix[name], "peers": [unix[name]["peers"][0], http[name]["peers"][1]]} for name in unix}


@pytest.fixture(scope="module")
def trapd(pair: HaPair, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrapdDaemon]:
    kea = {"endpoints": mixed_endpoints(pair), "poll_interval": "0.3s", "warn_after": "2s"}
    config = {"kea": kea, "dispatch": FAST_RETRY}
    d = TrapdDaemon.start(tmp_path_factory.mktemp("trapd"), rules=json.dumps(RULES), config=config)
    yield d
    d.stop()
    d.close()


@pytest.fixture
def healthy(pair: HaPair) -> Iterator[HaPair]:
    """The pair, and after the test both servers running and back in the pair's mode."""
    yield pair
    pair.restore()


def trap(d: TrapdDaemon, if_index: int, mac: str = "0a0027000000", alias: str = "", uptime: str = "") -> None:
    """A real linkDown from snmptrap: ifIndex, ifPhysAddress and (if given) ifAlias. ``uptime``: its
    sysUpTime (sent to two hosts with the same, it is one notification); default: the sender's."""
    extra = [f"{IF_ALIAS}.{if_index}", "s", alias] if alias else []
    r = snmp_send(
        "snmptrap", "-v", "2c", "-c", "public", d.target(), uptime, LINK_DOWN,
        f"{IF_INDEX}.{if_index}", "i", str(if_index), f"{IF_PHYS_ADDRESS}.{if_index}", "x", mac, *extra,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr


def journal(d: TrapdDaemon) -> list[dict[str, Any]]:
    r = subprocess.run(
        [PYTHON, "-m", "trapd", "journal", "--config", str(d.config_path), "--json", "list", "--state", "all",
         "--limit", "10000"],
        capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]  # one entry per line


def done_parts(d: TrapdDaemon, action: str, **params: Any) -> dict[str, dict[str, Any]]:
    """Once every entry of ``action`` with ``params`` is done: them by peer (else {})."""
    p = parts(d, action, **params)
    return p if p and all(e["state"] == "done" for e in p.values()) else {}


def deletion_parts(d: TrapdDaemon, leases: Leases) -> list[dict[str, dict[str, Any]]]:
    """Once both peers' parts of the v4 and the v6 deletion are done: them by peer, v4 then v6."""
    return [
        wait_for(
            f"both parts of the {endpoint} deletion done",
            lambda endpoint=endpoint: done_parts(
                d, "kea.lease-del", endpoint=endpoint, **{"hw-address": leases.mac}
            ),
        )
        for endpoint in ("pair4", "pair6")
    ]


def parts(d: TrapdDaemon, action: str, **params: Any) -> dict[str, dict[str, Any]]:
    """The journal entries of ``action`` whose parameters include ``params``, by peer."""
    return {
        e["params"].get("peer", "-"): e
        for e in journal(d)
        if e["action"] == action and all(e["params"].get(k) == v for k, v in params.items())
    }


def metric(d: TrapdDaemon, name: str, endpoint: str, **labels: str) -> float | None:
    """One sample, or None when it is not exported."""
    want = {("endpoint", endpoint), *labels.items()}
    found = [v for (n, lb), v in d.metrics().items() if n == name and want == set(lb)]
    return found[0] if found else None


class Leases:
    """Addresses and MACs no other test uses; leases added on both servers directly."""

    counter = 0

    def __init__(self, pair: HaPair) -> None:
        Leases.counter += 1
        n = Leases.counter
        self.pair = pair
        self.mac = f"0a:00:27:4a:{n // 256:02x}:{n % 256:02x}"
        s1 = pair.servers["server1"]
        self.ip4 = s1.next_ip4()
        self.ip6 = s1.next_ip6()

    def add(self, **extra: Any) -> None:
        for inst in self.pair.servers.values():
            inst.add_lease4(self.ip4, self.mac, **extra)
            inst.add_lease6(self.ip6, "00:03:00:01:" + self.mac, 1, **{"hw-address": self.mac})

    def held_by(self) -> set[tuple[str, str]]:
        """(server, family) pairs that still have the lease."""
        out = set()
        for name, inst in self.pair.servers.items():
            if inst.procs and inst.lease4(self.ip4) is not None:
                out.add((name, "v4"))
            if inst.procs and inst.lease6(self.ip6) is not None:
                out.add((name, "v6"))
        return out


# --- configuration: the peers list ------------------------------------------------------------


def parse(text: str) -> KeaConfig:
    return KeaConfig.from_yaml(load_yaml(text, "trapd.yaml")["kea"], Path("/etc/trapd"))


def test_peers_config_and_client_choice() -> None:
    cfg = parse("""\
kea:
  endpoints:
    dhcp4:
      family: v4
      peers:
        - {name: server1, transport: unix, socket: /run/kea/kea4-ctrl-socket}
        - {name: server2, transport: control-agent, url: "https://10.0.0.12:8000/", user: trapd, password: pw}
""")
    ep = cfg.endpoints["dhcp4"]
    assert ep.families == ("v4",) and [p.peer for p in ep.peers] == ["server1", "server2"]
    assert [p.label for p in ep.peers] == ["dhcp4/server1", "dhcp4/server2"]
    assert ep.peers[1].transport == "control-agent" and ep.peers[1].families == ("v4",)
    assert cfg.endpoint_for("v4") is ep and cfg.has_pairs
    clients = make_kea_clients({"endpoints": {"dhcp4": {"family": "v4", "peers": [
        {"name": "a", "transport": "unix", "socket": "/x/a.sock"},
        {"name": "b", "transport": "http", "url": "http://127.0.0.1:1/"},
    ]}}})  # fmt: skip
    assert [c.name for c in clients.peers("dhcp4")] == ["dhcp4/a", "dhcp4/b"]
    assert clients.get("dhcp4", peer="b").transport_name == "http"
    from trapd.kea.errors import KeaPermanentError

    with pytest.raises(KeaPermanentError, match=r"HA relationship .* must say which peer"):
        clients.get("dhcp4")  # one server of a pair alone would leave its partner unchanged
    with pytest.raises(KeaPermanentError, match="no peer named 'c'"):
        clients.get("dhcp4", peer="c")


@pytest.mark.parametrize(
    ("peers", "message"),
    [
        ("[{name: a, transport: unix, socket: /a}]", "two or more"),
        ("[{transport: unix, socket: /a}, {name: b, transport: unix, socket: /b}]", "each peer needs a name"),
        ("[{name: a, transport: unix, socket: /a}, {name: a, transport: unix, socket: /b}]",
         "two peers named 'a'"),
        ("[{name: a, transport: unix, socket: /a, family: v4}, {name: b, transport: unix, socket: /b}]",
         "belongs to the relationship"),
        ("[{name: a, transport: unix, socket: /a}, {name: b, transport: pigeon}]", "transport must be"),
    ],
)  # fmt: skip
def test_bad_peers_are_refused_with_their_line(peers: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as err:
        parse(f"kea:\n  endpoints:\n    dhcp4:\n      family: v4\n      peers: {peers}\n")
    assert err.value.mark is not None and err.value.mark.line in (4, 5)


def test_fan_out_one_entry_per_peer() -> None:
    """Per-peer actions become one planned action per peer; keys, once-keys and caps per peer."""
    from trapd.dispatch.peers import fan_out
    from trapd.plugin import load_actions
    from trapd.rules.outcome import PlannedAction, RateCap

    actions = load_actions()[0]
    cfg = parse("""\
kea:
  endpoints:
    single6: {transport: unix, socket: /s6, family: v6}
    pair4:
      family: v4
      peers: [{name: s1, transport: unix, socket: /a}, {name: s2, transport: unix, socket: /b}]
""")

    def plan(action: str, **params: Any) -> PlannedAction:
        return PlannedAction(
            "r", action, 0, params, "k", once_key="o", caps=(RateCap("c", 10, 60.0, key="x"),)
        )

    out = fan_out([plan("kea.lease-del", **{"ip-address": "10.1.0.1"})], actions, cfg)
    assert [(p.params["endpoint"], p.params["peer"], p.key, p.once_key, p.caps[0].key) for p in out] == [
        ("pair4", "s1", "k@pair4/s1", "o@pair4/s1", "x@pair4/s1"),
        ("pair4", "s2", "k@pair4/s2", "o@pair4/s2", "x@pair4/s2"),
    ]
    # v6 goes to the plain v6 endpoint: unchanged; a named peer: unchanged; once per pair: unchanged
    for pa in (
        plan("kea.lease-del", **{"ip-address": "2001:db8::1"}),
        plan("kea.lease-del", **{"ip-address": "10.1.0.1", "peer": "s2"}),
        plan("kea.ddns-resend", **{"ip-address": "10.1.0.1"}),
        plan("kea.command", command="status-get", target="one"),
    ):
        assert fan_out([pa], actions, cfg) == [pa]
    assert len(fan_out([plan("kea.command", command="lease4-wipe")], actions, cfg)) == 2  # target: all
    assert len(fan_out([plan("kea.dhcp-disable", **{"max-period": 5})], actions, cfg)) == 2


# --- a real pair -------------------------------------------------------------------------------


def test_trap_deletes_the_lease_on_both_peers(trapd: TrapdDaemon, pair: HaPair) -> None:
    leases = Leases(pair)
    leases.add()
    assert len(leases.held_by()) == 4
    trap(trapd, 8, leases.mac.replace(":", ""))
    wait_for("leases gone on both peers", lambda: not leases.held_by())
    for by_peer in deletion_parts(trapd, leases):
        assert sorted(by_peer) == ["server1", "server2"]
        for peer, e in by_peer.items():
            assert e["attempts"] == 1 and e["result"]["peer"] == peer and e["result"]["deleted"] == 1


def test_trap_deletes_by_ip_address_on_both_peers(trapd: TrapdDaemon, pair: HaPair) -> None:
    """The ip-address selector, its address carried by the trap (ifAlias): gone on each peer."""
    leases = Leases(pair)
    leases.add()
    servers = pair.servers.values()
    assert all(inst.lease4(leases.ip4) is not None for inst in servers)
    trap(trapd, 12, alias=leases.ip4)
    wait_for("v4 lease gone on both peers", lambda: all(inst.lease4(leases.ip4) is None for inst in servers))
    by_peer = wait_for(
        "both parts of the deletion done",
        lambda: done_parts(trapd, "kea.lease-del", endpoint="pair4", **{"ip-address": leases.ip4}),
    )
    assert sorted(by_peer) == ["server1", "server2"]  # one journal entry per peer
    for peer, e in by_peer.items():
        assert e["attempts"] == 1 and e["result"]["peer"] == peer and e["result"]["deleted"] == 1, e
    # the selector deleted that address only: the v6 lease of the same client is still on both
    assert all(inst.lease6(leases.ip6) is not None for inst in servers)


def test_command_target_all_reaches_each_peer(trapd: TrapdDaemon, pair: HaPair) -> None:
    """kea.command (target: all by default) on a pair: one journal entry per peer, each with its
    own server's answer (status-get: each peer reports its own HA role)."""
    before = {e["id"] for e in journal(trapd)}

    def new() -> dict[str, dict[str, Any]]:
        p = {k: e for k, e in parts(trapd, "kea.command", endpoint="pair4").items() if e["id"] not in before}
        return p if len(p) == 2 and all(e["state"] == "done" for e in p.values()) else {}

    trap(trapd, 13)
    by_peer = wait_for("status-get done on both peers", new)
    assert sorted(by_peer) == ["server1", "server2"]
    roles = {"hot-standby": ("primary", "standby"), "load-balancing": ("primary", "secondary")}[pair.mode]
    for peer, role in zip(("server1", "server2"), roles, strict=True):
        e = by_peer[peer]
        assert e["attempts"] == 1 and e["params"]["peer"] == peer, e
        result = e["result"]
        assert result["peer"] == peer and result["command"] == "status-get" and result["result"] == 0, result
        ha = result["arguments"]["high-availability"][0]
        assert ha["ha-servers"]["local"]["role"] == role, ha  # that peer's own answer, not its partner's


def test_restore_puts_the_lease_back_on_every_peer(trapd: TrapdDaemon, pair: HaPair) -> None:
    leases = Leases(pair)
    leases.add()
    trap(trapd, 8, leases.mac.replace(":", ""))
    wait_for("leases gone", lambda: not leases.held_by())
    by_peer = wait_for(
        "v4 parts done",
        lambda: done_parts(trapd, "kea.lease-del", endpoint="pair4", **{"hw-address": leases.mac}),
    )
    entry_id = str(by_peer["server2"]["id"])
    r = subprocess.run(
        [PYTHON, "-m", "trapd", "kea", "restore", entry_id, "--config", str(trapd.config_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert (
        f"restored  {leases.ip4}  on server1" in r.stdout
        and f"restored  {leases.ip4}  on server2" in r.stdout
    )
    assert leases.held_by() == {("server1", "v4"), ("server2", "v4")}


def test_a_stopped_peer_gets_its_deletion_when_it_is_back(trapd: TrapdDaemon, healthy: HaPair) -> None:
    pair = healthy
    leases = Leases(pair)
    leases.add()
    pair.stop_server("server2")
    trap(trapd, 8, leases.mac.replace(":", ""))
    # server1's part at once, whatever happens to server2's
    wait_for(
        "gone on server1",
        lambda: ("server1", "v4") not in leases.held_by() and ("server1", "v6") not in leases.held_by(),
    )
    waiting = wait_for(
        "server2's part retrying",
        lambda: (p := parts(trapd, "kea.lease-del", endpoint="pair4", **{"hw-address": leases.mac}))
        and p.get("server2", {}).get("attempts", 0) >= 2 and p,
    )  # fmt: skip
    assert waiting["server1"]["state"] == "done" and waiting["server2"]["state"] != "done"
    # what trapd sees, in the metrics and /healthz: server2 down, server1 serving alone
    wait_for(
        "server2 down in the metrics", lambda: metric(trapd, "trapd_kea_endpoint_up", "pair4/server2/v4") == 0
    )
    wait_for(
        "server1 partner-down in the metrics",
        lambda: metric(trapd, "trapd_kea_ha_state", "pair4/server1/v4", state="partner-down") == 1,
    )
    status, health = wait_for("a warning in /healthz", lambda: (h := trapd.healthz())[1].get("kea") and h)
    assert status == 200 and health["status"] == "warning" and health["healthy"] is True
    assert any(w.startswith("Kea pair4/server2/v4 unreachable for") for w in health["kea"])
    pair.start_server("server2")  # it loads its own lease file: the lease is back there
    pair.wait_states({n: {pair.mode} for n in pair.servers})
    wait_for("gone on server2 too", lambda: not leases.held_by())
    for by_peer in deletion_parts(trapd, leases):
        # nothing deleted twice: server1's part ran once; server2's deleted the one lease it had
        assert by_peer["server1"]["attempts"] == 1 and by_peer["server1"]["result"]["deleted"] == 1
        assert by_peer["server2"]["attempts"] >= 2 and by_peer["server2"]["result"]["deleted"] == 1, (
            json.dumps(by_peer["server2"])
        )
    wait_for("server2 up again", lambda: metric(trapd, "trapd_kea_endpoint_up", "pair4/server2/v4") == 1)
    wait_for("no warning", lambda: "kea" not in trapd.healthz()[1])


def test_a_late_part_keeps_the_lease_the_client_got_again_meanwhile(
    trapd: TrapdDaemon, healthy: HaPair
) -> None:
    """server2 is down when the linkDown comes: server1's part deletes the lease, server2's waits
    (retries, then the breaker's cool-down, up to max_cool_down: 5 minutes by default). Meanwhile
    the client is back and gets its address again from server1 (a lease with a later cltt). When
    server2 returns it syncs that lease from server1, and then its part ran: it deleted the
    client's current lease on server2, which at the next failover could give the address to
    another client. A lease the client renewed after the notification (cltt over 10 s later) is
    kept and recorded as such (the pause of trapd while server2 syncs makes the part run after
    the sync, as a cool-down does)."""
    pair = healthy
    if pair.servers["server1"].chroot is not None or pair.mode != "hot-standby":
        pytest.skip("the Debian 12 Kea 2.2 hot-standby pair runs it (13 s, most of it the clock)")
    leases = Leases(pair)
    leases.add()
    pair.stop_server("server2")
    trap(trapd, 8, leases.mac.replace(":", ""))
    waiting = wait_for(
        "server1's part done, server2's retrying",
        lambda: (p := parts(trapd, "kea.lease-del", endpoint="pair4", **{"hw-address": leases.mac}))
        and p.get("server1", {}).get("state") == "done"
        and p.get("server2", {}).get("attempts", 0) >= 1 and p,
    )  # fmt: skip
    assert pair.servers["server1"].lease4(leases.ip4) is None
    # The client is back: server1 gives it its address again, a little over the margin after the
    # notification (lease_del.RENEWED_MARGIN, 10 s).
    s1 = pair.servers["server1"]
    renewed = int(float(waiting["server2"]["received_at"])) + 12
    s1.add_lease4(leases.ip4, leases.mac, **{"valid-lft": 3600, "expire": renewed + 3600})
    assert s1.lease4(leases.ip4)["cltt"] == renewed  # type: ignore[index]
    trapd.signal(signal.SIGSTOP)
    try:
        pair.start_server("server2")
        pair.wait_states({n: {pair.mode} for n in pair.servers}, families=("v4",))
        synced = pair.servers["server2"].lease4(leases.ip4)
        assert synced is not None and synced["cltt"] == renewed, synced  # server2 has the new lease
        # the part runs once that renewal is in the past, as a real one is
        wait_for("the renewal's time passed", lambda: time.time() >= renewed + 1)
    finally:
        trapd.signal(signal.SIGCONT)
    by_peer = wait_for(
        "server2's part done",
        lambda: done_parts(trapd, "kea.lease-del", endpoint="pair4", **{"hw-address": leases.mac}),
        60,
    )
    result = by_peer["server2"]["result"]
    kept = pair.servers["server2"].lease4(leases.ip4)
    assert kept is not None and kept["cltt"] == renewed, result
    assert result["deleted"] == 0 and result["renewed_since"] == [leases.ip4], result


def test_after_failover_the_survivor_does_not_hold_the_deleted_lease(
    trapd: TrapdDaemon, healthy: HaPair
) -> None:
    pair = healthy
    leases = Leases(pair)
    leases.add()
    trap(trapd, 8, leases.mac.replace(":", ""))
    wait_for("leases gone on both peers", lambda: not leases.held_by())
    pair.stop_server("server1")
    pair.wait_states({"server2": {"partner-down"}})
    assert pair.servers["server2"].lease4(leases.ip4) is None
    assert pair.servers["server2"].lease6(leases.ip6) is None


def test_dhcp_disable_and_enable_reach_both_peers(trapd: TrapdDaemon, pair: HaPair) -> None:
    before = {e["id"] for e in journal(trapd)}

    def new(action: str) -> dict[str, dict[str, Any]]:
        p = {k: e for k, e in parts(trapd, action, endpoint="pair4").items() if e["id"] not in before}
        return p if len(p) == 2 and all(e["state"] == "done" for e in p.values()) else {}

    trap(trapd, 9)
    disabled = wait_for("disable done on both", lambda: new("kea.dhcp-disable"))
    # the user origin, which HA's state machine never overrides: by name before Kea 2.6, by id since
    kea22 = pair.servers["server1"].version.startswith("2.2")
    origin = {"origin": "user"} if kea22 else {"origin-id": 1}
    for peer, e in disabled.items():
        assert e["result"]["peer"] == peer and e["result"]["arguments"] == {"max-period": 60, **origin}
        assert e["result"]["text"] == "DHCPv4 service disabled for 60 seconds"
    if not kea22:  # Kea >= 2.6 shows it in status-get
        for name in pair.servers:
            state = pair.cmd(name, "v4", "status-get")["arguments"]["dhcp-state"]
            assert state["disabled-by-user"] is True and state["globally-disabled"] is True
    trap(trapd, 10)
    enabled = wait_for("enable done on both", lambda: new("kea.dhcp-enable"))
    assert {e["result"]["text"] for e in enabled.values()} == {"DHCP service successfully enabled"}
    if not kea22:
        for name in pair.servers:
            assert pair.cmd(name, "v4", "status-get")["arguments"]["dhcp-state"]["disabled-by-user"] is False
    # HA kept its state through it (user-origin disable does not make the partner take over)
    pair.wait_states({n: {pair.mode} for n in pair.servers}, timeout=10)


def d2_received(pair: HaPair) -> dict[str, int]:
    """NCRs each server's kea-dhcp-ddns received (statistic-get-all, ncr-received)."""
    out = {}
    for name, inst in pair.servers.items():
        assert inst.d2_socket is not None
        r = unix_command(inst.host_path(inst.d2_socket), "statistic-get-all")
        out[name] = int(r["arguments"]["ncr-received"][0][0])
    return out


def d2_counters(pair: HaPair, name: str) -> dict[str, int]:
    """One D2 statistic (statistic-get-all) of each server's kea-dhcp-ddns."""
    out = {}
    for server, inst in pair.servers.items():
        assert inst.d2_socket is not None
        r = unix_command(inst.host_path(inst.d2_socket), "statistic-get-all")
        out[server] = int(r["arguments"][name][0][0])
    return out


def test_lease_del_with_update_ddns_removes_the_records_once_per_server_without_errors(
    trapd: TrapdDaemon, pair: HaPair, request: pytest.FixtureRequest
) -> None:
    """``update-ddns: true`` on a pair: each peer's part deletes its lease with update-ddns, so each
    server asks its own kea-dhcp-ddns to remove the client's records; the second removal finds
    them gone, which D2 counts as a success, not an error (docs/kea-ha.md). The A record is gone."""
    if pair.servers["server1"].d2_socket is None:
        pytest.skip("no kea-dhcp-ddns")
    bind: Bind = request.getfixturevalue("bind")
    leases = Leases(pair)
    name = f"gone{Leases.counter}.example.org"
    for inst in pair.servers.values():
        inst.add_lease4(leases.ip4, leases.mac, hostname=name, **{"fqdn-fwd": True, "fqdn-rev": True})
    assert pair.cmd("server1", "v4", "lease4-resend-ddns", {"ip-address": leases.ip4})["result"] == 0
    wait_for("A record", lambda: bind.dig(name) == [leases.ip4])
    before, errors = d2_received(pair), d2_counters(pair, "update-error")
    trap(trapd, 14, leases.mac.replace(":", ""))
    by_peer = wait_for(
        "both parts done",
        lambda: done_parts(trapd, "kea.lease-del", endpoint="pair4", **{"hw-address": leases.mac}),
    )
    assert all(e["result"]["deleted"] == 1 and e["result"]["update-ddns"] for e in by_peer.values()), by_peer
    wait_for("A record gone", lambda: bind.dig(name) == [])

    def both_got_one() -> dict[str, int] | None:
        got = d2_received(pair)
        return got if all(got[n] > before[n] for n in got) else None

    after = wait_for("both D2s got a removal", both_got_one)
    assert {n: after[n] - before[n] for n in after} == {"server1": 1, "server2": 1}, (before, after)
    assert d2_counters(pair, "update-error") == errors


def test_ddns_resend_goes_once_through_the_serving_peer(
    trapd: TrapdDaemon, pair: HaPair, request: pytest.FixtureRequest
) -> None:
    if pair.servers["server1"].d2_socket is None:
        pytest.skip("no kea-dhcp-ddns in the chroots")
    bind: Bind = request.getfixturevalue("bind")
    leases = Leases(pair)
    name = f"ha{Leases.counter}.example.org"
    for inst in pair.servers.values():
        inst.add_lease4(leases.ip4, leases.mac, hostname=name, **{"fqdn-fwd": True, "fqdn-rev": True})
    before = d2_received(pair)
    trap(trapd, 11, leases.mac.replace(":", ""))
    wait_for("A record", lambda: bind.dig(name) == [leases.ip4])
    entry = wait_for(
        "resend done",
        lambda: (p := parts(trapd, "kea.ddns-resend", endpoint="pair4", **{"hw-address": leases.mac}))
        and p.get("-", {}).get("state") == "done" and p["-"],
    )  # fmt: skip
    assert entry["result"]["peer"] == "server1"  # both serve scopes in load-balancing; server1 is first
    after = wait_for("D2 counted it", lambda: (a := d2_received(pair)) != before and a)
    assert after["server1"] - before["server1"] == 1 and after["server2"] == before["server2"]


def test_ddns_resend_finds_the_lease_on_the_serving_peer_that_has_it(
    trapd: TrapdDaemon, pair: HaPair, request: pytest.FixtureRequest
) -> None:
    """Load-balancing: both servers serve, and a lease may be on one of them only: in state
    terminated (no lease updates between them), while updates wait in communication-recovery,
    with send-lease-updates off, or added on one server through the control API (not copied).
    kea.ddns-resend asked the first serving peer in trapd.yaml, found no lease there and ended
    done with "not found": the DNS update of the lease server2 has was never resent. It goes
    through the serving peer that has the lease, once."""
    if pair.mode != "load-balancing":
        pytest.skip("hot-standby: one server serves, the standby's leases are not its own")
    bind: Bind = request.getfixturevalue("bind")
    leases = Leases(pair)
    name = f"only{Leases.counter}.example.org"
    pair.servers["server2"].add_lease4(
        leases.ip4, leases.mac, hostname=name, **{"fqdn-fwd": True, "fqdn-rev": True}
    )
    assert pair.servers["server1"].lease4(leases.ip4) is None
    before = d2_received(pair)
    trap(trapd, 11, leases.mac.replace(":", ""))
    entry = wait_for(
        "resend done",
        lambda: (p := parts(trapd, "kea.ddns-resend", endpoint="pair4", **{"hw-address": leases.mac}))
        and p.get("-", {}).get("state") == "done" and p["-"],
    )  # fmt: skip
    result = entry["result"]
    assert result["peer"] == "server2" and [s["ip-address"] for s in result["sent"]] == [leases.ip4], result
    wait_for("A record", lambda: bind.dig(name) == [leases.ip4])
    after = wait_for("D2 counted it", lambda: (a := d2_received(pair)) != before and a)
    sent = {n: after[n] - before[n] for n in after}
    assert sent == {"server1": 0, "server2": 1}, sent


def test_kea_status_and_metrics_show_both_peers(trapd: TrapdDaemon, pair: HaPair) -> None:
    r = subprocess.run(
        [PYTHON, "-m", "trapd", "kea", "status", "--json", "--config", str(trapd.config_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {(s["endpoint"], s["peer"], s["family"]): s for s in json.loads(r.stdout)}
    roles = {"hot-standby": ("primary", "standby"), "load-balancing": ("primary", "secondary")}[pair.mode]
    for fam in ("v4", "v6"):
        for peer, role in zip(("server1", "server2"), roles, strict=True):
            row = rows[(f"pair{fam[1]}", peer, fam)]
            assert row["reachable"] and row["lease_cmds"] and row["version"] == pair.servers[peer].version
            assert row["ha"]["mode"] == pair.mode and row["ha"]["role"] == role
            assert row["ha"]["state"] == pair.mode
            label = f"pair{fam[1]}/{peer}/{fam}"
            wait_for(
                "the metrics agree",
                lambda label=label: metric(trapd, "trapd_kea_ha_state", label, state=pair.mode) == 1,
            )
            assert metric(trapd, "trapd_kea_endpoint_up", label) == 1
            age = metric(trapd, "trapd_kea_last_success_age_seconds", label)
            assert age is not None and 0 <= age < 30
    text = subprocess.run(
        [PYTHON, "-m", "trapd", "kea", "status", "--config", str(trapd.config_path)],
        capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    assert f"{pair.mode} {roles[1]} {pair.mode}" in text


async def test_command_target_all_one_or_a_peer(pair: HaPair) -> None:
    from trapd.params import validate
    from trapd.plugin import load_actions

    spec = load_actions()[0]["kea.command"]
    clients = make_kea_clients({"endpoints": pair.trapd_endpoints("unix")})
    ctx = make_action_context(clients)
    try:
        one = await spec.run(
            validate(spec.params, {"endpoint": "pair4", "command": "status-get", "target": "one"}), ctx
        )
        assert one is not None and one["peer"] == "server1"
        named = await spec.run(
            validate(spec.params, {"endpoint": "pair4", "command": "status-get", "target": "server2"}), ctx
        )
        assert named is not None and named["peer"] == "server2"
        assert named["arguments"]["high-availability"][0]["ha-servers"]["local"]["role"] in (
            "standby",
            "secondary",
        )
    finally:
        await clients.aclose()
        await ctx.http.aclose()


# --- the monitor: peer list against Kea's own HA configuration, and a terminated peer -------------


async def test_monitor_warns_when_trapds_peers_differ_from_keas(pair: HaPair) -> None:
    from trapd.kea.monitor import KeaMonitor
    from trapd.testing import CapturedLog

    endpoints = pair.trapd_endpoints("unix")
    endpoints["pair4"]["peers"][0]["name"] = "alpha"  # Kea calls it server1
    del endpoints["pair6"]
    clients = make_kea_clients({"endpoints": endpoints})
    log = CapturedLog()
    try:
        await KeaMonitor(clients, log, interval=1, warn_after=60).poll()
    finally:
        await clients.aclose()
    by_event = {(e["event"], e["endpoint"]): e for e in log.entries if e["log_level"] == "warning"}
    renamed = by_event[("trapd's peer name differs from Kea's this-server-name", "pair4/alpha")]
    assert renamed["kea_name"] == "server1"
    differ = by_event[
        (
            "trapd's HA peers differ from the Kea server's: deletions miss the peers trapd does not know",
            "pair4/alpha",
        )
    ]
    assert differ["trapd_peers"] == ["alpha", "server2"] and differ["kea_peers"] == ["server1", "server2"]


async def test_monitor_warns_about_an_ha_server_listed_as_a_plain_endpoint(pair: HaPair) -> None:
    # Kea HA does not copy lease-del or dhcp-disable to the partner: one server of a pair listed
    # as a plain endpoint (no peers) gets trapd's deletions alone, and its partner keeps every
    # lease. Nothing said so; a plain endpoint without HA is left alone. Said once in the log, it
    # stands in /healthz (the monitor's warnings) as long as trapd runs with that trapd.yaml: a
    # line at start-up was all an operator got, and /healthz said "ok".
    from trapd.kea.monitor import KeaMonitor
    from trapd.testing import CapturedLog

    server1 = pair.trapd_endpoints("unix")["pair4"]["peers"][0]
    plain = {k: v for k, v in server1.items() if k != "name"}
    clients = make_kea_clients({"endpoints": {"local4": {"family": "v4", **plain}}})
    log = CapturedLog()
    monitor = KeaMonitor(clients, log, interval=1, warn_after=60)
    try:
        await monitor.poll()
        await monitor.poll()
    finally:
        await clients.aclose()
    warned = [e for e in log.entries if e["log_level"] == "warning"]
    assert [e["endpoint"] for e in warned] == ["local4"], warned
    assert "plain endpoint" in warned[0]["event"] and warned[0]["kea_peers"] == ["server1", "server2"]
    (standing,) = monitor.warnings()
    assert "local4" in standing and "server1, server2" in standing and "plain endpoint" in standing


class _StatusOnly:
    """A Kea whose status-get says what the test wants: for the HA state ``terminated``, which two
    servers on one host cannot be brought into (Kea enters it on clock skew between the peers)."""

    def __init__(self) -> None:
        self.state = "terminated"

    async def exchange(self, body: bytes, command: str) -> Any:
        ha = {
            "ha-mode": "hot-standby",
            "ha-servers": {"local": {"role": "primary", "scopes": [], "state": self.state}},
        }
        return {"result": 0, "arguments": {"high-availability": [ha]}}

    async def aclose(self) -> None:
        return None


async def test_monitor_warns_about_a_terminated_peer_at_once() -> None:
    from trapd.kea.client import KeaClients
    from trapd.kea.monitor import KeaMonitor
    from trapd.testing import CapturedLog

    fake = _StatusOnly()
    config = parse("""\
kea:
  endpoints:
    pair4:
      family: v4
      peers: [{name: s1, transport: unix, socket: /no/a}, {name: s2, transport: unix, socket: /no/b}]
""")
    clients = KeaClients(config, transport=lambda _endpoint: fake)
    log = CapturedLog()
    monitor = KeaMonitor(clients, log, interval=1, warn_after=3600)
    monitor._peers_checked.update({("pair4", "v4")})  # config-get is not what this test is about
    await monitor.poll()
    assert monitor.warnings() == [
        f"Kea pair4/{p}/v4 is in HA state terminated: it serves its own scopes but exchanges no "
        "heartbeats or lease updates with its partner until an operator acts (clock skew?)"
        for p in ("s1", "s2")
    ]
    assert [e["event"] for e in log.entries] == ["Kea server needs attention"] * 2
    fake.state = "hot-standby"
    await monitor.poll()
    assert (
        monitor.warnings() == [] and [e["event"] for e in log.entries][-2:] == ["Kea server fine again"] * 2
    )


# --- the production topology in load-balancing: two trapd hosts on one PostgreSQL journal ----------


@dataclass
class Hosts:
    """dhcp1 and dhcp2 on one journal database, each reaching its own server over the unix socket
    and the partner over its Control Agent, each listing its own server first (as a site writes
    trapd.yaml on each host)."""

    url: str
    dhcp1: TrapdDaemon
    dhcp2: TrapdDaemon

    def rows(self) -> list[dict[str, Any]]:
        with psycopg.connect(self.url) as conn:
            cur = conn.execute(
                "SELECT id, action, params, state, result, owner FROM trapd_actions ORDER BY id"
            )
            names = [c.name for c in cur.description or ()]
            got = [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
        for r in got:
            r["params"] = json.loads(r["params"])
            r["result"] = json.loads(r["result"]) if r["result"] else None
        return got

    def settled(self, action: str, mac: str, n: int) -> list[dict[str, Any]] | None:
        """The ``n`` rows of ``action`` for ``mac`` once every one is final (else None)."""
        got = [r for r in self.rows() if r["action"] == action and r["params"].get("hw-address") == mac]
        final = {"done", "dead", "cancelled", "held"}
        return got if len(got) == n and all(r["state"] in final for r in got) else None

    def running(self) -> None:
        """Both hosts up (a test that stops one leaves it to this)."""
        for d in (self.dhcp1, self.dhcp2):
            if d.poll() is not None:
                d.launch()
                d.wait_ready(60)


@pytest.fixture(scope="module")
def lb_hosts(pair: HaPair, pg_server: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:
    if pair.mode != "load-balancing":
        pytest.skip("the two-host tests run on the load-balancing pairs (Kea 2.2; 3.0.4 on the chroot tier)")
    url = pg_server.new_database()
    # The partner's server over HTTP: its agent, or Kea 3's own socket (no agent there).
    unix, ca = pair.trapd_endpoints("unix"), pair.trapd_endpoints("http" if pair.dedicated else "ca")
    hosts: list[TrapdDaemon] = []
    try:
        for name, own in (("dhcp1", 0), ("dhcp2", 1)):
            endpoints = {
                ep: {**unix[ep], "peers": [unix[ep]["peers"][own], ca[ep]["peers"][1 - own]]} for ep in unix
            }
            config = {
                "kea": {"endpoints": endpoints, "poll_interval": "0.3s"},
                "dispatch": {
                    "journal": {"url": url, "instance": name, "poll_interval": "200ms"},
                    **FAST_RETRY,
                },
            }
            hosts.append(
                TrapdDaemon.start(tmp_path_factory.mktemp(name), rules=json.dumps(RULES), config=config)
            )
        yield Hosts(url, hosts[0], hosts[1])
    finally:
        for d in hosts:
            d.stop()
            d.close()


@pytest.fixture
def hosts(lb_hosts: Hosts) -> Hosts:
    lb_hosts.running()
    return lb_hosts


def test_two_hosts_in_load_balancing_delete_each_lease_once_on_each_server(
    hosts: Hosts, pair: HaPair
) -> None:
    """Load-balancing: both servers serve, each host reaches its own server over the unix socket and
    the partner's over its agent, and lists its own first. Two leases' linkDowns go to both hosts
    (either first), a third to dhcp2 only: each v4 and v6 part runs once on each server (the
    partner's server included: a host deletes there too), each copy is journaled cancelled and
    names the other host's row of the same peer, and no server keeps a lease."""
    uptime = 730_000 + Leases.counter
    leases = [Leases(pair) for _ in range(3)]
    for lease in leases:
        lease.add()
    for i, lease in enumerate(leases):
        order = (hosts.dhcp1, hosts.dhcp2) if i == 0 else (hosts.dhcp2, hosts.dhcp1)
        for d in order[: 1 if i == 2 else 2]:
            trap(d, 8, lease.mac.replace(":", ""), uptime=str(uptime + i))
    for i, lease in enumerate(leases):
        got = wait_for(
            "the parts done",
            lambda lease=lease, i=i: hosts.settled("kea.lease-del", lease.mac, 4 if i == 2 else 8),
        )
        done = [r for r in got if r["state"] == "done"]
        parts = sorted((r["params"]["endpoint"], r["params"]["peer"]) for r in done)
        assert parts == [
            ("pair4", "server1"),
            ("pair4", "server2"),
            ("pair6", "server1"),
            ("pair6", "server2"),
        ], got
        assert all(r["result"]["deleted"] == 1 for r in done), done
        by_id = {r["id"]: r for r in got}
        for r in got:
            if r["state"] == "cancelled":
                assert by_id[r["result"]["duplicate_of"]]["params"] == r["params"], (r, by_id)
        if i == 2:  # dhcp2 alone: it deleted on server1 (its partner, over the agent) as well
            assert {r["owner"] for r in done} == {"dhcp2"}, done
        assert lease.held_by() == set(), (i, lease.held_by())


def test_two_hosts_resend_ddns_once_per_notification_and_with_one_host_down(
    hosts: Hosts, pair: HaPair, request: pytest.FixtureRequest
) -> None:
    """kea.ddns-resend goes to one server of the pair, never both (each would queue the update with
    its own kea-dhcp-ddns): sent to both hosts, one resend (one NCR over both D2s, the A record in
    BIND 9), the other host's copy cancelled; with dhcp1 stopped, dhcp2 alone resends once,
    through the first serving server in its trapd.yaml (its own, server2)."""
    bind: Bind = request.getfixturevalue("bind")
    uptime = 740_000 + Leases.counter
    for step in ("both", "dhcp1 down"):
        lease = Leases(pair)
        name = f"lb{Leases.counter}.example.org"
        for inst in pair.servers.values():
            inst.add_lease4(lease.ip4, lease.mac, hostname=name, **{"fqdn-fwd": True, "fqdn-rev": True})
        before = d2_received(pair)
        if step == "dhcp1 down":
            hosts.dhcp1.stop()
        for d in (hosts.dhcp1, hosts.dhcp2):
            trap(d, 11, lease.mac.replace(":", ""), uptime=str(uptime + Leases.counter))
        wait_for(f"A record ({step})", lambda name=name, lease=lease: bind.dig(name) == [lease.ip4])
        got = wait_for(
            f"the resend journaled ({step})",
            lambda lease=lease, n=2 if step == "both" else 1: hosts.settled("kea.ddns-resend", lease.mac, n),
        )
        done = [r for r in got if r["state"] == "done"]
        assert len(done) == 1 and all(r["state"] == "cancelled" for r in got if r not in done), got
        after = wait_for("D2 counted it", lambda before=before: (a := d2_received(pair)) != before and a)
        sent = {n: after[n] - before[n] for n in after}
        assert sum(sent.values()) == 1, sent
        if step == "dhcp1 down":
            assert done[0]["owner"] == "dhcp2" and done[0]["result"]["peer"] == "server2", done
            assert sent["server2"] == 1, sent


def test_two_hosts_restore_through_the_copy_a_host_journaled_cancelled(hosts: Hosts, pair: HaPair) -> None:
    """A notification sent to both hosts is journaled twice: one host's rows run, the other's are
    copies, cancelled with ``duplicate_of`` (``trapd journal history`` lists both). `trapd kea
    restore` given a copy's id said "nothing to restore: no leases recorded" and exited 0: an
    operator who picked that row believed nothing had been deleted. It restores what the row it
    is a copy of (and that row's partners) deleted, and says so."""
    uptime = 760_000 + Leases.counter
    lease = Leases(pair)
    lease.add()
    for d in (hosts.dhcp1, hosts.dhcp2):
        trap(d, 8, lease.mac.replace(":", ""), uptime=str(uptime))
    got = wait_for("the parts done", lambda: hosts.settled("kea.lease-del", lease.mac, 8))
    copy = next(r for r in got if r["state"] == "cancelled" and r["params"]["endpoint"] == "pair4")
    original = copy["result"]["duplicate_of"]
    r = subprocess.run(
        [PYTHON, "-m", "trapd", "kea", "restore", str(copy["id"]), "--config", str(hosts.dhcp2.config_path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"journal entry {copy['id']} is a copy of {original}" in r.stderr, r.stderr
    for peer in ("server1", "server2"):
        assert f"restored  {lease.ip4}  on {peer}" in r.stdout, r.stdout
    assert lease.held_by() == {("server1", "v4"), ("server2", "v4")}
