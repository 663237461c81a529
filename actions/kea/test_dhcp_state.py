"""kea.dhcp-disable / kea.dhcp-enable against a real Kea 2.2 answering relayed DHCP on loopback.

Kea 2.2's status-get does not show whether service is disabled, so the
observable is the real thing: a relayed DHCPDISCOVER gets an offer or not.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from kea_harness import KeaInstance, dhcp_discover, make_action_context, make_kea_clients

from trapd.params import ParamError, validate
from trapd.plugin import ActionContext

from .dhcp_state import dhcp_disable, dhcp_enable, origin_args

pytestmark = pytest.mark.integration
MAC = "0a:00:27:00:d1:5a"


async def test_disable_with_max_period_then_enable(kea_factory: Any) -> None:
    inst: KeaInstance = kea_factory(dhcp_loopback=True, dhcp6=False)
    for transport in ("unix", "ca"):
        clients = make_kea_clients(inst.trapd_kea_section(default_transport=transport))
        ctx: ActionContext = make_action_context(clients)
        assert dhcp_discover(MAC) is not None  # serving

        result = await dhcp_disable.run(validate(dhcp_disable.params, {"max-period": "30s"}), ctx)
        assert result is not None
        assert result["max-period"] == 30 and result["arguments"] == {"max-period": 30, "origin": "user"}
        assert "disabled for 30 seconds" in result["text"]
        assert dhcp_discover(MAC) is None  # not serving

        result = await dhcp_enable.run(validate(dhcp_enable.params, {}), ctx)
        assert result is not None and result["text"] == "DHCP service successfully enabled"
        assert dhcp_discover(MAC) is not None
        await clients.aclose()
        await ctx.http.aclose()


async def test_max_period_expiry_re_enables(kea_factory: Any) -> None:
    inst: KeaInstance = kea_factory(dhcp_loopback=True, dhcp6=False, ca=False)
    clients = make_kea_clients(inst.trapd_kea_section())
    ctx: ActionContext = make_action_context(clients)
    await dhcp_disable.run(validate(dhcp_disable.params, {"max-period": "400ms"}), ctx)  # rounds up to 1 s
    assert dhcp_discover(MAC, timeout=0.3) is None
    # Kea's own timer re-enables after 1 s; on a loaded machine a little later: wait for it, bounded.
    deadline = time.monotonic() + 15
    while dhcp_discover(MAC) is None:
        assert time.monotonic() < deadline, "Kea did not re-enable DHCP after max-period"
    await clients.aclose()
    await ctx.http.aclose()


def test_max_period_is_required() -> None:
    with pytest.raises(ParamError, match="max-period: required"):
        validate(dhcp_disable.params, {"family": "v4"})


class FakeVersion:
    """Only the version matters for the origin form; the command path is tested above."""

    def __init__(self, version: tuple[int, int, int]) -> None:
        self._v = version

    async def version_tuple(self) -> tuple[int, int, int]:
        return self._v

    async def version(self) -> str:
        return ".".join(map(str, self._v))


@pytest.mark.parametrize(
    ("version", "origin", "expected"),
    [
        ((2, 2, 0), 1, {"origin": "user"}),
        ((2, 2, 0), 2000, {"origin": "ha-partner"}),
        ((2, 6, 3), 1, {"origin-id": 1}),
        ((3, 0, 4), 2001, {"origin-id": 2001}),
    ],
)
async def test_origin_form_follows_the_server_version(
    version: tuple[int, int, int], origin: int, expected: dict[str, Any]
) -> None:
    assert await origin_args(FakeVersion(version), origin) == expected  # type: ignore[arg-type]


async def test_numeric_origin_on_old_kea_is_refused() -> None:
    from trapd.plugin import PermanentError

    with pytest.raises(PermanentError, match="2001"):
        await origin_args(FakeVersion((2, 2, 0)), 2001)  # type: ignore[arg-type]
