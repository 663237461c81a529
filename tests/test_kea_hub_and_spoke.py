"""Kea >= 2.6 hub and spoke: a hub's status-get lists one HA relationship per spoke.

trapd names a relationship as an endpoint with its peers (the hub under its name in that
relationship, Kea's ``this-server-name``). What trapd derives from a hub's status-get (its HA
state for the metrics and warnings, whether it serves scopes for ``serving()``, the peer check)
must be that relationship's, not the first listed. Real Kea 2.6.3 and 3.0.4 (the chroot tier,
TRAPD_KEA_CHROOTS=1; over their agents): a hub and two spokes, spoke1 stopped, so that the hub is in
``partner-down`` in relationship a and still ``hot-standby`` in b. The parsing is also tested
on that answer as recorded from the same Kea, so that the default tier covers it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kea_harness import CHROOT_BASE, ensure_chroots, make_kea_clients
from kea_sandbox import HubAndSpoke, start_hub_and_spoke

from trapd.kea.client import ha_status
from trapd.kea.hastatus import HaStatus
from trapd.kea.monitor import KeaMonitor

# The "high-availability" part of the hub's status-get, Kea 2.6.3 (Debian trixie), spoke1 stopped
# three seconds before (recorded with tests/kea_sandbox.py start_hub_and_spoke).
HUB_SPOKE1_DOWN: list[dict[str, Any]] = [
    {"ha-mode": "hot-standby", "ha-servers": {
        "local": {"role": "standby", "scopes": ["spoke1"], "server-name": "hub-a", "state": "partner-down"},
        "remote": {"age": 3, "analyzed-packets": 0, "communication-interrupted": True,
                   "connecting-clients": 0, "in-touch": True, "last-scopes": ["spoke1"],
                   "last-state": "unavailable", "role": "primary", "server-name": "spoke1",
                   "unacked-clients": 0, "unacked-clients-left": 1}}},
    {"ha-mode": "hot-standby", "ha-servers": {
        "local": {"role": "standby", "scopes": [], "server-name": "hub-b", "state": "hot-standby"},
        "remote": {"age": 0, "analyzed-packets": 0, "communication-interrupted": False,
                   "connecting-clients": 0, "in-touch": True, "last-scopes": ["spoke2"],
                   "last-state": "hot-standby", "role": "primary", "server-name": "spoke2",
                   "unacked-clients": 0, "unacked-clients-left": 0}}},
]  # fmt: skip


def parsed(server: str | None, partners: tuple[str, ...] = ()) -> HaStatus:
    st = HaStatus.from_status({"high-availability": HUB_SPOKE1_DOWN}, server, partners)
    assert st is not None
    return st


def test_the_relationship_is_the_one_named_by_the_server_s_name_in_it() -> None:
    a, b = parsed("hub-a", ("spoke1",)), parsed("hub-b", ("spoke2",))
    assert (a.server_name, a.state, a.scopes) == ("hub-a", "partner-down", ("spoke1",))
    assert (b.server_name, b.state, b.scopes) == ("hub-b", "hot-standby", ())
    assert (a.partner_state, b.partner_state) == ("unavailable", "hot-standby")


def test_else_by_the_partner_s_name() -> None:
    """trapd.yaml calls the hub "hub" in both relationships: its partner still says which."""
    assert parsed("hub", ("spoke2",)).state == "hot-standby"
    assert parsed("hub", ("spoke1",)).state == "partner-down"


def test_else_the_conservative_combination() -> None:
    """Neither name matches (or Kea < 2.6 names none): the worst state, and serving scopes only
    when it serves in every relationship, so that serving() never takes a server that may not
    serve this relationship's subnets for one that does."""
    both = parsed("hub", ("somebody",))
    assert both.state == "partner-down" and both.partner_state == "unavailable"
    assert both.scopes == () and both.in_touch is True and both.server_name is None
    assert parsed(None).state == "partner-down"


def test_one_relationship_is_read_as_before() -> None:
    """Kea 2.2 answers one relationship without server names; any name asked for gets it."""
    one = {"high-availability": [{"ha-mode": "hot-standby", "ha-servers": {
        "local": {"role": "primary", "scopes": ["s1"], "state": "hot-standby"},
        "remote": {"in-touch": True, "last-state": "ready", "role": "standby"}}}]}  # fmt: skip
    st = HaStatus.from_status(one, "server1", ("server2",))
    assert st is not None and (st.state, st.scopes, st.partner_state) == ("hot-standby", ("s1",), "ready")


# --- real Kea 2.6.3 and 3.0.4 ---

AUTH = ("trapd", "hub-pw")


@pytest.fixture(scope="module", params=["trixie", "sid"])
def hub(request: pytest.FixtureRequest) -> Iterator[HubAndSpoke]:
    ensure_chroots()
    root = CHROOT_BASE / request.param
    base = Path(f"/tmp/trapd-hub-{os.getpid()}")  # inside the chroot
    hs = start_hub_and_spoke(base, chroot=root, auth=AUTH)
    try:
        yield hs
    finally:
        hs.stop()
        shutil.rmtree(root / base.relative_to("/"), ignore_errors=True)


class Log:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict[str, Any]]] = []

    def warning(self, event: str, **kw: Any) -> None:
        self.lines.append(("warning", event, kw))

    def info(self, event: str, **kw: Any) -> None:
        self.lines.append(("info", event, kw))

    def exception(self, event: str, **kw: Any) -> None:
        self.lines.append(("exception", event, kw))


@pytest.mark.chroot
async def test_a_hub_s_state_is_the_relationship_s_with_a_spoke_down(hub: HubAndSpoke) -> None:
    clients = make_kea_clients({"endpoints": hub.trapd_endpoints(), "poll_interval": "1s"})
    try:
        hub.servers["spoke1"].stop()
        hub.wait_relationships("hub", ["partner-down", "hot-standby"])  # a: spoke1 gone; b: as it was

        hub_a, hub_b = clients.get("hub_a", peer="hub-a"), clients.get("hub_b", peer="hub-b")
        st_a, st_b = await ha_status(hub_a), await ha_status(hub_b)
        assert st_a is not None and (st_a.state, st_a.scopes) == ("partner-down", ("spoke1",))
        assert st_b is not None and (st_b.state, st_b.scopes) == ("hot-standby", ())
        # ddns-resend goes once, through the server serving the relationship's subnets: for b that
        # is spoke2, although the hub is listed first and serves a's scopes now.
        assert (await clients.serving("hub_b")).peer == "spoke2"
        assert (await clients.serving("hub_a")).peer == "hub-a"

        log = Log()
        monitor = KeaMonitor(clients, log, interval=1.0, warn_after=60.0)
        await monitor.poll()
        assert monitor.ha_state(hub_b) == "hot-standby" and monitor.ha_state(hub_a) == "partner-down"
        # The peer check reads the hub's relationship b for hub_b: no "differ" warning (spoke1 is
        # down, so relationship a is checked in a later round).
        assert [w for w in log.lines if w[0] == "warning"] == [], log.lines
    finally:
        await clients.aclose()


@pytest.mark.chroot
async def test_kea_command_s_ha_commands_go_to_the_endpoint_s_relationship_on_a_hub(hub: HubAndSpoke) -> None:
    """A hub's HA commands (ha-heartbeat, ha-scopes, ha-continue, ha-reset) act on the relationship
    their ``server-name`` names, and on the hub's first relationship without one (measured on Kea
    2.6.3 and 3.0.4). kea.command through endpoint hub_b to its peer hub-b sent them without one:
    a heartbeat answered relationship a's state, and ``ha-scopes {scopes: []}`` meant for b took
    spoke1's scope from the hub in relationship a, where it serves it alone (spoke1 down). The
    peer's name is the relationship's server-name (docs/kea-ha.md): sent with it, when the server
    has several relationships and the rule gives none."""
    from kea_harness import make_action_context

    from trapd.params import validate
    from trapd.plugin import load_actions

    spec = load_actions()[0]["kea.command"]
    clients = make_kea_clients({"endpoints": hub.trapd_endpoints()})
    ctx = make_action_context(clients)

    async def command(name: str, arguments: Any = None) -> dict[str, Any]:
        params = {"endpoint": "hub_b", "command": name, "target": "hub-b", "accept": [0]}
        if arguments is not None:
            params["arguments"] = arguments
        result = await spec.run(validate(spec.params, params), ctx)
        assert result is not None and result["peer"] == "hub-b", result
        return dict(result)

    try:
        hub.servers["spoke1"].stop()
        hub.wait_relationships("hub", ["partner-down", "hot-standby"])
        beat = await command("ha-heartbeat")
        assert beat["arguments"]["state"] == "hot-standby", beat  # b's, not a's partner-down
        await command("ha-scopes", {"scopes": []})
        rels = hub.relationships("hub")
        local = {r["ha-servers"]["local"]["server-name"]: r["ha-servers"]["local"] for r in rels}
        assert local["hub-a"]["scopes"] == ["spoke1"], local  # a untouched: it still serves spoke1's
        # what the rule gave is sent as given
        named = await command("ha-heartbeat", {"server-name": "hub-a"})
        assert named["arguments"]["state"] == "partner-down", named
    finally:
        await clients.aclose()
        await ctx.http.aclose()


@pytest.mark.chroot
async def test_dhcp_disable_through_one_relationship_disables_the_whole_hub(hub: HubAndSpoke) -> None:
    """Kea's dhcp-disable is per server, not per HA relationship: kea.dhcp-disable through endpoint
    hub_b (part hub-b) stops the hub's DHCP service for the subnets of relationship a as well
    (docs/kea-ha.md, "Hub and spoke")."""
    from kea_harness import make_action_context

    from trapd.params import validate
    from trapd.plugin import load_actions

    actions = load_actions()[0]
    clients = make_kea_clients({"endpoints": hub.trapd_endpoints()})
    ctx = make_action_context(clients)
    try:
        for name, extra in (("kea.dhcp-disable", {"max-period": 30}), ("kea.dhcp-enable", {})):
            spec = actions[name]
            params = validate(spec.params, {"endpoint": "hub_b", "peer": "hub-b", **extra})
            result = await spec.run(params, ctx)
            assert result is not None and result["peer"] == "hub-b", result
            state = hub.servers["hub"].cmd4("status-get")["arguments"]["dhcp-state"]
            disabled = name == "kea.dhcp-disable"
            assert state["disabled-by-user"] is disabled and state["globally-disabled"] is disabled, state
    finally:
        await clients.aclose()
        await ctx.http.aclose()
