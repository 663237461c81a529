"""noAuthNoPriv v3 traps from a user without engine_ids: any sender engine, at the fast path's rate.

Such a user has no key, so there is nothing to learn an engine by: every engine may send as it.
Before, the fast path took only bound engines' noAuthNoPriv traps, so these all went to pysnmp's
engine through the slow-path budget (10 a second a source, 100 for everyone, by default): a
switch's trap storm was mostly dropped as rate-limited. And pysnmp was taught each new engine
ID, up to 1,024, after which every new one was refused (learn-limit): forged engine IDs used
them up.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from listen_harness import TrapdListen, capture_datagram, needs_netsnmp, send_udp
from usm_support import craft, link_down_varbinds, scoped_pdu, trap_pdu

from trapd.listener.raw import RawNotification
from trapd.listener.stats import ListenerStats
from trapd.listener.v3.keys import LocalizedUser
from trapd.listener.v3.path import V3Path
from trapd.listener.v3.replay import ReplayMemory

TRAPD = "80004fb805aabbccddeeff0011"
SENDER = "8000000001a1a1a1"
TRAPS = 100


@pytest.fixture(scope="module")
def trapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrapdListen]:
    config = {"listener": {"v3_users": [{"user": "plain-any"}], "engine_id": TRAPD}}  # the shipped limits
    t = TrapdListen.start(tmp_path_factory.mktemp("noauth-any"), config)
    yield t
    assert t.stop() == 0, t.log[-5:]


@needs_netsnmp
@pytest.mark.integration
def test_a_storm_of_noauth_traps_from_an_unbound_engine_is_not_rate_limited(trapd: TrapdListen) -> None:
    data = capture_datagram(
        "snmptrap", "-v", "3", "-u", "plain-any", "-l", "noAuthNoPriv", "-e", "0x" + SENDER, "{target}",
        "", "1.3.6.1.6.3.1.1.5.3", "1.3.6.1.2.1.2.2.1.1.17", "i", "17",
    )  # fmt: skip
    before = trapd.stats()
    for _ in range(TRAPS):
        send_udp(data, trapd.address())
    received = before["received"].get("v3", 0) + TRAPS
    now = trapd.wait_stats(
        lambda s: s["received"].get("v3", 0) >= received or sum(s["dropped"].values()) > 0, timeout=30
    )
    assert now["dropped"] == before["dropped"], now["dropped"]  # before: ~80 of 100 rate-limited
    assert now["received"]["v3"] == received
    e = trapd.wait_event(lambda e: e.get("version") == "v3")
    assert (e["security"]["user"], e["security"]["level"], e["security"]["engine_id"]) == (
        "plain-any", "noAuthNoPriv", SENDER,
    )  # fmt: skip


def test_forged_engine_ids_do_not_use_up_the_engines_a_noauth_user_may_send_from() -> None:
    from trapd.listener.config import V3User

    got: list[RawNotification] = []
    stats = ListenerStats()
    path = V3Path.build(
        [V3User("plain-any")], got.append, stats, lambda *a: None,
        engine_id=bytes.fromhex(TRAPD), state_dir=None, replays=ReplayMemory(64),
    )  # fmt: skip
    plain = LocalizedUser("plain-any", 1)
    # error-status 5: a shape the fast path leaves to pysnmp's engine
    odd = trap_pdu(link_down_varbinds()).replace(b"\x02\x01\x00\x02\x01\x00", b"\x02\x01\x05\x02\x01\x00", 1)

    def send(engine: bytes, source: str) -> None:
        data = craft(plain, engine, b"plain-any", scoped_pdu(odd, engine))
        path.receive(data, (source, 162), lambda d, a: None)

    for i in range(1100):
        send(bytes.fromhex("80000000019f") + i.to_bytes(4, "big"), "192.0.2.9")
    new = bytes.fromhex("8000000001a2a2a2")
    send(new, "192.0.2.10")
    assert len(got) == 1101, dict(stats.dropped_detail)  # before: 1024, then learn-limit
    assert got[-1].security.engine_id == new.hex()
