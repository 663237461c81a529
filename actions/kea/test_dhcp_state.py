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


async def test_a_retry_later_than_max_period_after_the_trap_disables_nothing(kea_factory: Any) -> None:
    """A disable that could not run (its server down: on an HA pair, that peer's part) is retried
    until the rule's retry max-age, 1 h by default. Run 40 minutes after the trap, a disable of
    10 minutes would have taken DHCP down on a server that had just come back, long after the
    window the rule meant. Past max-period since the trap a retry disables nothing and says so;
    within it, or on a first attempt (a rule's delay may be longer), it disables as asked."""
    import dataclasses

    inst: KeaInstance = kea_factory(dhcp_loopback=True, dhcp6=False, ca=False)
    clients = make_kea_clients(inst.trapd_kea_section())
    base: ActionContext = make_action_context(clients)
    try:
        late_event = dataclasses.replace(base.event, received_at=time.time() - 2400)
        late = dataclasses.replace(base, event=late_event, attempt=3)
        result = await dhcp_disable.run(validate(dhcp_disable.params, {"max-period": "10m"}), late)
        assert result is not None and result.get("skipped"), result
        assert "after the notification" in result["skipped"]
        assert dhcp_discover(MAC) is not None  # still serving
        # The same retry within max-period of the trap, and a late first attempt: disabled.
        for ctx in (
            dataclasses.replace(
                base, event=dataclasses.replace(base.event, received_at=time.time() - 300), attempt=3
            ),
            dataclasses.replace(base, event=late_event, attempt=1),
        ):
            result = await dhcp_disable.run(validate(dhcp_disable.params, {"max-period": "10m"}), ctx)
            assert result is not None and not result.get("skipped") and result["max-period"] == 600
            assert dhcp_discover(MAC, timeout=0.3) is None
            await dhcp_enable.run(validate(dhcp_enable.params, {}), ctx)
            assert dhcp_discover(MAC) is not None
    finally:
        await clients.aclose()
        await base.http.aclose()
