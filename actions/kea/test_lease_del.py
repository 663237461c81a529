"""kea.lease-del against a real Kea 2.2 (tests/kea_harness.py), over the unix socket and the Control Agent."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from kea_harness import KeaInstance, make_action_context, make_kea_clients

from trapd.kea.client import KeaClients
from trapd.kea.errors import KeaUnsupportedError
from trapd.kea.restore import leases_from_result, restore_leases
from trapd.params import validate
from trapd.plugin import ActionContext, PermanentError, RetryableError

from .lease_del import lease_del

pytestmark = pytest.mark.integration


@pytest.fixture(params=["unix", "ca"])
async def ctx(request: pytest.FixtureRequest, kea: KeaInstance) -> AsyncIterator[ActionContext]:
    clients = make_kea_clients(kea.trapd_kea_section(default_transport=request.param))
    c = make_action_context(clients)
    yield c
    await clients.aclose()
    await c.http.aclose()


async def run(ctx: ActionContext, **values: Any) -> dict[str, Any]:
    result = await lease_del.run(validate(lease_del.params, values), ctx)
    assert result is not None
    return result


MAC = iter(f"0a:00:27:{i >> 8 & 255:02x}:{i & 255:02x}:01" for i in range(1, 60000))


async def test_by_ip_v4_deletes_and_records_the_complete_lease(kea: KeaInstance, ctx: ActionContext) -> None:
    ip, mac = kea.next_ip4(), next(MAC)
    kea.add_lease4(ip, mac, hostname="pc1.example.org", **{"user-context": {"port": "ge-0/0/1"}})
    before = kea.lease4(ip)
    result = await run(ctx, **{"ip-address": ip})
    assert kea.lease4(ip) is None
    assert result["deleted"] == 1 and result["not_found"] is False
    assert result["leases"] == [before]  # exactly what Kea returned, cltt included
    assert result["leases"][0]["user-context"] == {"port": "ge-0/0/1"}


async def test_missing_lease_is_success(kea: KeaInstance, ctx: ActionContext) -> None:
    result = await run(ctx, **{"ip-address": kea.next_ip4()})
    assert result["deleted"] == 0 and result["not_found"] is True and result["leases"] == []


async def test_by_ip_v6_picks_the_v6_endpoint(kea: KeaInstance, ctx: ActionContext) -> None:
    ip = kea.next_ip6()
    kea.add_lease6(ip, "00:03:00:01:0a:00:27:00:00:01", 7)
    result = await run(ctx, **{"ip-address": ip})
    assert result["family"] == "v6" and result["deleted"] == 1
    assert kea.lease6(ip) is None


async def test_prefix_delegation_by_prefix(kea: KeaInstance, ctx: ActionContext) -> None:
    prefix = f"2001:db8:1:{next(kea._ip6):x}::"
    kea.add_lease6(
        prefix, "00:03:00:01:0a:00:27:00:00:02", 8, type="IA_PD", **{"prefix-len": 64, "subnet-id": 1}
    )
    assert (await run(ctx, **{"ip-address": prefix}))["deleted"] == 0  # IA_NA by default
    result = await run(ctx, **{"ip-address": prefix, "type": "IA_PD"})
    assert result["deleted"] == 1 and result["leases"][0]["prefix-len"] == 64
    assert kea.lease6(prefix, "IA_PD") is None


async def test_by_mac_deletes_the_leases_in_both_subnets(kea: KeaInstance, ctx: ActionContext) -> None:
    mac, other = next(MAC), next(MAC)
    a, b, c = kea.next_ip4(1), kea.next_ip4(2), kea.next_ip4(1)
    kea.add_lease4(a, mac)
    kea.add_lease4(b, mac)
    kea.add_lease4(c, other)
    result = await run(ctx, **{"hw-address": mac.upper().replace(":", "-")})
    assert result["deleted"] == 2
    assert sorted(lease["subnet-id"] for lease in result["leases"]) == [1, 2]
    assert kea.lease4(a) is None and kea.lease4(b) is None
    assert kea.lease4(c) is not None


async def test_by_mac_with_subnet_filter(kea: KeaInstance, ctx: ActionContext) -> None:
    mac = next(MAC)
    a, b = kea.next_ip4(1), kea.next_ip4(2)
    kea.add_lease4(a, mac)
    kea.add_lease4(b, mac)
    result = await run(ctx, **{"hw-address": mac, "subnet-id": 2})
    assert result["deleted"] == 1 and result["skipped_other_subnets"] == 1
    assert kea.lease4(a) is not None and kea.lease4(b) is None


async def test_by_client_id(kea: KeaInstance, ctx: ActionContext) -> None:
    ip, mac = kea.next_ip4(), next(MAC)
    kea.add_lease4(ip, mac, **{"client-id": "01:" + mac})
    result = await run(ctx, **{"client-id": "01" + mac.replace(":", "")})
    assert result["deleted"] == 1 and kea.lease4(ip) is None


async def test_by_duid_and_iaid(kea: KeaInstance, ctx: ActionContext) -> None:
    duid = "00:03:00:01:" + next(MAC)
    a, b = kea.next_ip6(), kea.next_ip6()
    kea.add_lease6(a, duid, 1)
    kea.add_lease6(b, duid, 2)
    result = await run(ctx, duid=duid, iaid=2)
    assert result["deleted"] == 1 and kea.lease6(b) is None and kea.lease6(a) is not None
    assert (await run(ctx, duid=duid))["deleted"] == 1
    assert kea.lease6(a) is None


async def test_by_mac_on_v6_scans(kea: KeaInstance, ctx: ActionContext) -> None:
    mac = next(MAC)
    ip = kea.next_ip6()
    kea.add_lease6(ip, "00:03:00:01:" + mac, 3, **{"hw-address": mac})
    result = await run(ctx, **{"hw-address": mac, "family": "v6", "page-size": 10})
    assert result["deleted"] == 1 and result["scanned"] >= 1 and kea.lease6(ip) is None


def rai_22(circuit: bytes, remote: bytes) -> dict[str, Any]:
    """user-context as Kea 2.2 stores option 82 (hex of the sub-options)."""
    subs = bytes([1, len(circuit)]) + circuit + bytes([2, len(remote)]) + remote
    return {"ISC": {"relay-agent-info": "0x" + subs.hex().upper()}}


def rai_24(circuit: bytes, remote: bytes) -> dict[str, Any]:
    """user-context as Kea >= 2.4 stores it (an object)."""
    subs = bytes([1, len(circuit)]) + circuit + bytes([2, len(remote)]) + remote
    return {
        "ISC": {
            "relay-agent-info": {"sub-options": "0x" + subs.hex().upper(), "remote-id": remote.hex().upper()}
        }
    }


async def test_by_relay_circuit_id(kea: KeaInstance, ctx: ActionContext) -> None:
    port = f"ge-0/0/{next(kea._ip4)}".encode()  # unique per run of this test
    hit1, hit2, hit3, miss, plain = (kea.next_ip4() for _ in range(5))
    kea.add_lease4(hit1, next(MAC), **{"user-context": rai_22(port, b"sw1.example.net")})
    kea.add_lease4(hit2, next(MAC), **{"user-context": rai_22(port, b"sw2.example.net")})
    kea.add_lease4(hit3, next(MAC), **{"user-context": rai_24(port, b"sw1.example.net")})
    kea.add_lease4(miss, next(MAC), **{"user-context": rai_22(port + b"9", b"sw1.example.net")})
    kea.add_lease4(plain, next(MAC))
    # circuit-id and remote-id together: both must match
    result = await run(ctx, **{"circuit-id": port.decode(), "remote-id": "sw2.example.net", "page-size": 2})
    assert [lease["ip-address"] for lease in result["leases"]] == [hit2]
    assert result["pages"] >= 2  # the small page size made it page through the table
    result = await run(ctx, **{"circuit-id": port.decode(), "page-size": 10})
    assert sorted(lease["ip-address"] for lease in result["leases"]) == sorted([hit1, hit3])
    assert kea.lease4(hit1) is None and kea.lease4(hit3) is None
    assert kea.lease4(miss) is not None and kea.lease4(plain) is not None
    # the hex spelling of the same id
    kea.add_lease4(hit1, next(MAC), **{"user-context": rai_22(port, b"x")})
    assert (await run(ctx, **{"circuit-id": "0x" + port.hex()}))["deleted"] == 1


def opt6(code: int, data: bytes) -> bytes:
    return code.to_bytes(2, "big") + len(data).to_bytes(2, "big") + data


def relays_22(interface_id: bytes, remote_id: bytes, relay_id: bytes) -> dict[str, Any]:
    """A v6 lease's user-context as kea-dhcp6 2.2.0 stored it for a real relayed rapid-commit Solicit.

    Measured (store-extended-info, one relay hop): ``{"ISC": {"relays": [{"hop": 0, "link":
    "2001:db8:1::1", "options": "0x001200074769312F302F37...", "peer": "fe80::aa"}]}}``.
    """
    options = opt6(18, interface_id) + opt6(37, (9).to_bytes(4, "big") + remote_id) + opt6(53, relay_id)
    hop = {"hop": 0, "link": "2001:db8:1::1", "options": "0x" + options.hex().upper(), "peer": "fe80::aa"}
    return {"ISC": {"relays": [hop]}}


def relay_info_26(interface_id: bytes, remote_id: bytes, relay_id: bytes) -> dict[str, Any]:
    """The same exchange as Kea 2.6.3 / 3.0.4 stored it: ``relay-info``, remote-id and relay-id also apart."""
    hop = relays_22(interface_id, remote_id, relay_id)["ISC"]["relays"][0]
    hop["remote-id"] = ((9).to_bytes(4, "big") + remote_id).hex().upper()
    hop["relay-id"] = relay_id.hex().upper()
    return {"ISC": {"relay-info": [hop]}}


async def test_v6_by_relay_interface_remote_and_relay_id(kea: KeaInstance, ctx: ActionContext) -> None:
    port = f"Gi1/0/{next(kea._ip6)}".encode()  # unique per run of this test
    relay = bytes.fromhex("0003000102aabbccddee")
    hit1, hit2, other_switch, other_port, plain = (kea.next_ip6() for _ in range(5))
    duid = iter(f"00:03:00:01:0a:00:27:6e:00:{i:02x}" for i in range(1, 100))
    kea.add_lease6(hit1, next(duid), 1, **{"user-context": relays_22(port, b"sw1", relay)})
    kea.add_lease6(hit2, next(duid), 1, **{"user-context": relay_info_26(port, b"sw1", relay)})
    kea.add_lease6(other_switch, next(duid), 1, **{"user-context": relays_22(port, b"sw2", bytes(10))})
    kea.add_lease6(other_port, next(duid), 1, **{"user-context": relays_22(port + b"9", b"sw1", relay)})
    kea.add_lease6(plain, next(duid), 1)
    # interface-id and remote-id together (remote-id without its enterprise number): both must match
    result = await run(ctx, **{"interface-id": port.decode(), "remote-id": "sw1", "page-size": 2})
    assert result["family"] == "v6" and result["pages"] >= 2
    assert sorted(lease["ip-address"] for lease in result["leases"]) == sorted([hit1, hit2])
    assert kea.lease6(hit1) is None and kea.lease6(hit2) is None
    assert kea.lease6(other_port) is not None and kea.lease6(other_switch) is not None
    # relay-id alone, written as hex; a v6 family has to be said (relay-id exists in both families)
    result = await run(ctx, **{"relay-id": "0x" + relay.hex(), "family": "v6"})
    assert [lease["ip-address"] for lease in result["leases"]] == [other_port]
    # remote-id with the enterprise number, as option 37 carries it
    result = await run(ctx, **{"remote-id": "0x00000009" + b"sw2".hex(), "family": "v6"})
    assert [lease["ip-address"] for lease in result["leases"]] == [other_switch]
    assert kea.lease6(plain) is not None


async def test_scan_limit_stops_before_deleting(kea: KeaInstance, ctx: ActionContext) -> None:
    for _ in range(3):
        kea.add_lease4(kea.next_ip4(), next(MAC))
    with pytest.raises(PermanentError, match="scan-limit"):
        await run(ctx, **{"circuit-id": "nowhere", "page-size": 10, "scan-limit": 2})


async def test_update_ddns_flag_is_sent(kea: KeaInstance, ctx: ActionContext) -> None:
    # DDNS is off in this Kea: Kea still deletes (the DNS part is proven in test_ddns.py).
    ip = kea.next_ip4()
    kea.add_lease4(ip, next(MAC))
    result = await run(ctx, **{"ip-address": ip, "update-ddns": True})
    assert result["update-ddns"] is True and result["deleted"] == 1


@pytest.mark.parametrize(
    "values",
    [
        {},
        {"ip-address": "10.1.0.1", "hw-address": "00:11:22:33:44:55"},
        {"ip-address": "10.1.0.1", "duid": "00:01"},
        {"client-id": "01:02", "family": "v6"},
        {"circuit-id": "ge-0/0/1", "family": "v6"},  # v6 has interface-id, not circuit-id
        {"interface-id": "Gi1/0/1", "family": "v4"},
    ],
)
async def test_bad_selectors_fail_permanently(ctx: ActionContext, values: dict[str, Any]) -> None:
    with pytest.raises(PermanentError):
        await run(ctx, **values)


async def test_restore_puts_the_leases_back(kea: KeaInstance, ctx: ActionContext) -> None:
    mac = next(MAC)
    a, b = kea.next_ip4(1), kea.next_ip4(2)
    ctx_args = {"hostname": "back.example.org", "user-context": rai_22(b"p1", b"sw")}
    kea.add_lease4(a, mac, **ctx_args)
    kea.add_lease4(b, mac, **{"valid-lft": 7200, "client-id": "01:02:03"})
    v6 = kea.next_ip6()
    kea.add_lease6(v6, "00:03:00:01:" + mac, 9, hostname="six.example.org", **{"fqdn-fwd": True})
    before = {a: kea.lease4(a), b: kea.lease4(b), v6: kea.lease6(v6)}
    r4 = await run(ctx, **{"hw-address": mac})
    r6 = await run(ctx, **{"ip-address": v6})
    leases = leases_from_result(r4) + leases_from_result(r6)
    assert len(leases) == 3
    outcomes = await restore_leases(ctx.kea, leases)
    assert [o.status for o in outcomes] == ["restored"] * 3
    assert {a: kea.lease4(a), b: kea.lease4(b), v6: kea.lease6(v6)} == before  # cltt and all
    again = await restore_leases(ctx.kea, leases)
    assert [o.status for o in again] == ["exists"] * 3


async def test_hook_not_loaded_is_permanent_and_names_the_hook(kea_factory: Any) -> None:
    bare = kea_factory(lease_cmds=False, dhcp6=False)
    for transport in ("unix", "ca"):
        clients: KeaClients = make_kea_clients(bare.trapd_kea_section(default_transport=transport))
        c = make_action_context(clients)
        with pytest.raises(KeaUnsupportedError, match=r"libdhcp_lease_cmds\.so") as info:
            await run(c, **{"ip-address": "10.1.0.1"})
        assert isinstance(info.value, PermanentError)
        await clients.aclose()
        await c.http.aclose()


async def test_kea_down_is_retryable(kea_factory: Any) -> None:
    inst = kea_factory(dhcp6=False)
    clients: KeaClients = make_kea_clients(inst.trapd_kea_section())
    c = make_action_context(clients)
    unix, ca = clients.get("unix4"), clients.get("ca4")
    inst.stop(["kea-dhcp4"])  # the agent still runs and says the server is offline
    with pytest.raises(RetryableError, match="offline"):
        await lease_del.run(validate(lease_del.params, {"ip-address": "10.1.0.1", "endpoint": "ca4"}), c)
    with pytest.raises(RetryableError, match="no socket"):
        await unix.command("lease4-get", {"ip-address": "10.1.0.1"})
    inst.stop()
    with pytest.raises(RetryableError, match="refused"):
        await ca.command("lease4-get", {"ip-address": "10.1.0.1"})
    await clients.aclose()
    await c.http.aclose()


@pytest.mark.parametrize(
    ("params", "refused"),
    [
        ("circuit-id: ge-0/0/1\n        family: v6", True),  # passed trapd check before, then dead-lettered
        ("interface-id: Gi1/0/1\n        ip-address: 10.1.0.1", True),
        ("circuit-id: ge-0/0/1\n        family: '{{ source }}'", False),  # known per trap only
        ("interface-id: Gi1/0/1", False),
        ("relay-id: '0x0003000102aabbccddee'\n        family: v6", False),
    ],
)
def test_trapd_check_refuses_relay_ids_of_the_other_family(tmp_path: Any, params: str, refused: bool) -> None:
    from trapd.testing import rule_file_problems

    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - name: r\n    match: {notification: IF-MIB::linkDown}\n    actions:\n"
        f"      - action: kea.lease-del\n        {params}\n        cap: {{limit: 1, per: 1m}}\n"
    )
    problems = [p for p in rule_file_problems(rules) if "mix IPv4 and IPv6" in p]
    assert bool(problems) is refused, problems
    if refused:
        assert problems[0].startswith(f"{rules}:5:")


async def test_leases_too_many_to_record_whole_are_not_deleted(
    kea: KeaInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The record journaled before the deletions is what `trapd kea restore` puts back: one the
    journal would cut short ({"truncated": ...}, past its bound on a result) must not be followed
    by the deletions. 60 leases of one circuit-id (292 characters of JSON each), the bound on a
    record lowered to 8,000 characters (27 such leases): nothing deleted, a permanent error that
    says why; under the bound, all deleted and recorded whole."""
    from trapd.dispatch.journal import rows
    from trapd.testing import run_action

    clients = make_kea_clients(kea.trapd_kea_section(default_transport="unix"))
    port = f"ge-9/0/{next(kea._ip4)}".encode()
    ips = [kea.next_ip4() for _ in range(60)]
    for ip in ips:
        kea.add_lease4(ip, next(MAC), **{"user-context": rai_22(port, b"sw9.example.net")})
    records: list[Any] = []
    monkeypatch.setattr(rows, "RESULT_LIMIT", rows.RECORD_MARGIN + 8000)  # records up to 8,000
    try:
        with pytest.raises(PermanentError, match="60 leases") as info:
            await run_action(lease_del, {"circuit-id": port.decode()}, kea=clients, records=records)
        assert "nothing deleted" in str(info.value)
        assert [ip for ip in ips if kea.lease4(ip) is None] == []
        assert records == []  # nothing journaled that a restore would take for the whole
        monkeypatch.setattr(rows, "RESULT_LIMIT", 1 << 20)
        run = await run_action(lease_del, {"circuit-id": port.decode()}, kea=clients, records=records)
        assert run.result is not None and run.result["deleted"] == 60
        assert sorted(lease["ip-address"] for lease in records[-1]["leases"]) == sorted(ips)
    finally:
        await clients.aclose()
