"""kea.command against a real Kea 2.2."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from kea_harness import KeaInstance, make_action_context, make_kea_clients

from trapd.kea.errors import KeaCommandError, KeaUnsupportedError
from trapd.params import validate
from trapd.plugin import ActionContext, PermanentError

from .command import kea_command

pytestmark = pytest.mark.integration


@pytest.fixture(params=["unix", "ca"])
async def ctx(request: pytest.FixtureRequest, kea: KeaInstance) -> AsyncIterator[ActionContext]:
    clients = make_kea_clients(kea.trapd_kea_section(default_transport=request.param))
    c = make_action_context(clients)
    yield c
    await clients.aclose()
    await c.http.aclose()


async def run(ctx: ActionContext, **values: Any) -> dict[str, Any]:
    result = await kea_command.run(validate(kea_command.params, values), ctx)
    assert result is not None
    return result


async def test_any_command_with_arguments(kea: KeaInstance, ctx: ActionContext) -> None:
    ip = kea.next_ip4()
    kea.add_lease4(ip, "0a:00:27:00:c0:01")
    result = await run(
        ctx,
        command="lease4-update",
        arguments={"ip-address": ip, "hw-address": "0a:00:27:00:c0:01", "hostname": "renamed"},
    )
    assert result["result"] == 0
    lease = kea.lease4(ip)
    assert lease is not None and lease["hostname"] == "renamed"


async def test_not_found_only_when_accepted(kea: KeaInstance, ctx: ActionContext) -> None:
    args = {"ip-address": kea.next_ip4()}
    with pytest.raises(KeaCommandError) as info:
        await run(ctx, command="lease4-get", arguments=args)
    assert info.value.result == 3
    result = await run(ctx, command="lease4-get", arguments=args, accept=[0, 3])
    assert result["result"] == 3 and result["text"] == "Lease not found."


async def test_v6_family(ctx: ActionContext) -> None:
    result = await run(ctx, command="status-get", family="v6")
    assert result["family"] == "v6" and "pid" in result["arguments"]


async def test_unknown_command_is_permanent(ctx: ActionContext) -> None:
    with pytest.raises(KeaUnsupportedError) as info:
        await run(ctx, command="foo-bar")
    assert isinstance(info.value, PermanentError)
    assert "libdhcp" not in str(info.value)  # not a hook command: no hook hint


async def test_bad_arguments_are_permanent(ctx: ActionContext) -> None:
    with pytest.raises(PermanentError, match="update-ddns"):
        await run(ctx, command="lease4-del", arguments={"ip-address": "10.1.0.1", "update-ddns": "yes"})


async def test_service_override_through_the_agent(kea: KeaInstance) -> None:
    clients = make_kea_clients(kea.trapd_kea_section(default_transport="ca"))
    c = make_action_context(clients)
    result = await run(c, command="status-get", service=["dhcp6"])  # a v4 endpoint, asked for dhcp6
    assert result["result"] == 0 and "pid" in result["arguments"]
    with pytest.raises(KeaCommandError, match="forwarding socket is not configured for the server type d2"):
        await run(c, command="status-get", service=["d2"])
    with pytest.raises(PermanentError, match="one service per action"):
        await run(c, command="status-get", service=["dhcp4", "dhcp6"])
    await clients.aclose()
    await c.http.aclose()
