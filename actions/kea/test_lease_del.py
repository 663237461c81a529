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
