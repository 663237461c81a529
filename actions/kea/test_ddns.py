"""update-ddns end to end: Kea 2.2 + kea-dhcp-ddns + BIND 9 on loopback with a TSIG key.

kea.ddns-resend makes the A and PTR records appear (dig); kea.lease-del with
update-ddns makes them go away. Kea answers success before DNS changes, so
the checks poll dig for a few seconds.
"""

from __future__ import annotations

from typing import Any

import pytest
from kea_harness import Bind, DdnsTarget, KeaInstance, make_action_context, make_kea_clients

from trapd.params import validate
from trapd.plugin import PermanentError

from .ddns import ddns_resend
from .lease_del import lease_del

pytestmark = pytest.mark.integration


async def test_resend_adds_records_and_delete_removes_them(bind_server: Bind, kea_factory: Any) -> None:
    inst: KeaInstance = kea_factory(
        ddns=DdnsTarget(bind_server.port, bind_server.key_name, bind_server.key_secret)
    )
    clients = make_kea_clients(inst.trapd_kea_section(default_transport="ca"))
    ctx = make_action_context(clients)
    ip4, ip4b, ip6 = "10.1.0.101", "10.1.0.102", "2001:db8:1::1a"
    inst.add_lease4(
        ip4, "0a:00:27:00:00:01", hostname="h1.example.org", **{"fqdn-fwd": True, "fqdn-rev": True}
    )
    inst.add_lease4(
        ip4b, "0a:00:27:00:00:02", hostname="h2.example.org", **{"fqdn-fwd": True, "fqdn-rev": True}
    )
    inst.add_lease6(
        ip6,
        "00:03:00:01:0a:00:27:00:00:1a",
        1,
        hostname="v6a.example.org",
        **{"fqdn-fwd": True, "fqdn-rev": True, "subnet-id": 1},
    )
    assert bind_server.dig("h1.example.org") == []  # lease4-add alone never touches DNS

    r = await ddns_resend.run(validate(ddns_resend.params, {"ip-address": ip4}), ctx)
    assert r is not None and r["sent"][0]["text"].startswith("NCR generated")
    await ddns_resend.run(validate(ddns_resend.params, {"hw-address": "0a:00:27:00:00:02"}), ctx)  # by MAC
    await ddns_resend.run(validate(ddns_resend.params, {"ip-address": ip6}), ctx)
    assert bind_server.dig_until("h1.example.org", "A", [ip4]) == [ip4]
    assert bind_server.dig_until(ip4, "PTR", ["h1.example.org."]) == ["h1.example.org."]
    assert bind_server.dig_until("h2.example.org", "A", [ip4b]) == [ip4b]
    assert bind_server.dig_until("v6a.example.org", "AAAA", [ip6]) == [ip6]
    assert bind_server.dig_until(ip6, "PTR", ["v6a.example.org."]) == ["v6a.example.org."]

    # without update-ddns the records stay; with it they go
    await lease_del.run(validate(lease_del.params, {"ip-address": ip4b}), ctx)
    for v, name, rtype in ((ip4, "h1.example.org", "A"), (ip6, "v6a.example.org", "AAAA")):
        await lease_del.run(validate(lease_del.params, {"ip-address": v, "update-ddns": True}), ctx)
        assert bind_server.dig_until(name, rtype, []) == []
        assert bind_server.dig_until(v, "PTR", []) == []
    assert bind_server.dig("h2.example.org") == [ip4b]
    await clients.aclose()
    await ctx.http.aclose()


async def test_resend_for_a_lease_without_dns_flags_fails_permanently(
    bind_server: Bind, kea_factory: Any
) -> None:
    inst: KeaInstance = kea_factory(
        dhcp6=False, ca=False, ddns=DdnsTarget(bind_server.port, bind_server.key_name, bind_server.key_secret)
    )
    clients = make_kea_clients(inst.trapd_kea_section())
    ctx = make_action_context(clients)
    inst.add_lease4("10.1.0.103", "0a:00:27:00:00:03", hostname="h3.example.org")
    with pytest.raises(PermanentError, match="Neither forward nor reverse"):
        await ddns_resend.run(validate(ddns_resend.params, {"ip-address": "10.1.0.103"}), ctx)
    r = await ddns_resend.run(validate(ddns_resend.params, {"ip-address": "10.1.0.199"}), ctx)
    assert r is not None and r["not_found"] and r["sent"] == []
    await clients.aclose()
    await ctx.http.aclose()
