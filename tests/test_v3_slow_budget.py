"""The v3 slow-path budget has a reserve for messages whose MAC was checked.

Engine-ID discovery needs no key and a UDP source address can be forged, so
without a reserve a flood of probes spends the budget of pysnmp's engine and
keeps the informs of every switch out (the daemon-level test is in
test_v3_flood.py). Here: the buckets on a fake clock, and the receiver's
checks before the budget on real messages through a real listener (no
sockets): a forged MAC for a bound engine and a replayed inform are refused
before pysnmp, without spending anything.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from daemon_harness import IF_INDEX, LINK_DOWN, V3_ARGS, V3_USER
from listen_harness import needs_netsnmp, snmp_send
from test_v3_replay import TRAPD_ENGINE, recording_relay

from trapd.listener import Listener, ListenerConfig, RawNotification
from trapd.listener.config import ListenAddress, RateLimit, V3User
from trapd.listener.limits import SlowPathBudget
from trapd.listener.v3 import parse_header
from trapd.secrets import Secret


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def admitted(budget: SlowPathBudget, host: str, authentic: bool, n: int) -> int:
    return sum(budget.admit(host, authentic) is None for _ in range(n))


def test_unauthenticated_messages_stop_at_the_reserve_of_a_sources_bucket() -> None:
    clock = Clock()
    budget = SlowPathBudget(RateLimit(v3_slow_per_source=10, v3_slow_global=0, burst=2), clock=clock)
    assert admitted(budget, "10.0.0.1", False, 100) == 20  # rate x burst, as without a reserve
    assert budget.admit("10.0.0.1", False) == "v3-slow-per-source"
    assert admitted(budget, "10.0.0.1", True, 100) == 10  # the reserve (half as much again): authentic only
    assert budget.admit("10.0.0.1", True) == "v3-slow-per-source"
    clock.now += 1.0  # 10 tokens back, all below the reserve's line
    assert admitted(budget, "10.0.0.1", False, 100) == 0
    assert admitted(budget, "10.0.0.1", True, 100) == 10


def test_a_flood_from_many_sources_leaves_the_global_reserve_to_authentic_messages() -> None:
    clock = Clock()
    budget = SlowPathBudget(RateLimit(v3_slow_per_source=10, v3_slow_global=100, burst=2), clock=clock)
    forged = [f"10.9.{i // 250}.{i % 250}" for i in range(1000)]
    assert sum(budget.admit(h, False) is None for h in forged) == 200  # rate x burst; 100 kept back
    for i in range(5):
        clock.now += 0.5
        flood = sum(budget.admit(h, False) is None for h in forged)
        assert flood == (50 if i == 0 else 47)  # the rate (less the informs), never the reserve
        assert admitted(budget, "10.0.0.1", True, 3) == 3  # a switch's informs get through
    assert budget.admit("10.0.0.2", False) == "v3-slow-global"


def test_a_bucket_one_token_deep_still_admits_unauthenticated_messages() -> None:
    clock = Clock()
    budget = SlowPathBudget(RateLimit(v3_slow_per_source=0.5, v3_slow_global=0, burst=1), clock=clock)
    assert admitted(budget, "10.0.0.1", False, 5) == 1
    clock.now += 2.0
    assert admitted(budget, "10.0.0.1", False, 5) == 1


def v3_user(engine_ids: tuple[bytes, ...] = ()) -> V3User:
    return V3User(
        user=V3_USER["user"],
        auth_protocol=V3_USER["auth_protocol"],
        auth_key=Secret(V3_USER["auth_key"]),
        priv_protocol=V3_USER["priv_protocol"],
        priv_key=Secret(V3_USER["priv_key"]),
        engine_ids=engine_ids,
    )


BOUND_ENGINE = bytes.fromhex("80001f8880aabbccdd")


def forged_bound_engine_message(msg_id: int) -> bytes:
    """A reportable authPriv message from user mon of a bound engine, with a made-up MAC.

    The fast path leaves reportable messages to pysnmp; before, nothing checked the MAC on
    the way, so each of these cost the slow-path budget and an engine pass.
    """

    def tlv(tag: int, body: bytes) -> bytes:
        assert len(body) < 128
        return bytes([tag, len(body)]) + body

    def integer(n: int) -> bytes:
        return tlv(0x02, n.to_bytes((n.bit_length() + 8) // 8, "big"))

    header = tlv(0x30, integer(msg_id) + integer(65507) + tlv(0x04, b"\x07") + integer(3))
    usm = tlv(
        0x30,
        tlv(0x04, BOUND_ENGINE) + integer(1) + integer(100) + tlv(0x04, b"mon")
        + tlv(0x04, bytes(24)) + tlv(0x04, bytes(8)),
    )  # fmt: skip
    return tlv(0x30, integer(3) + header + tlv(0x04, usm) + tlv(0x04, bytes(32)))


def listener(got: list[RawNotification], rate: RateLimit, user: V3User) -> Listener:
    config = ListenerConfig(
        listen=(ListenAddress("127.0.0.1", 0),),
        v3_users=(user,),
        engine_id=bytes.fromhex(TRAPD_ENGINE),
        rate_limit=rate,
    )
    return Listener(config, got.append)


def drops(lst: Listener) -> Callable[[str], dict[str, int]]:
    def of(reason: str) -> dict[str, int]:
        return {d: n for (r, d), n in lst.stats.dropped_detail.items() if r == reason}

    return of


async def test_a_forged_mac_for_a_bound_engine_is_refused_before_the_budget() -> None:
    got: list[RawNotification] = []
    lst = listener(got, RateLimit(v3_slow_per_source=1, v3_slow_global=0), v3_user((BOUND_ENGINE,)))
    async with lst:
        message = forged_bound_engine_message(7)
        assert parse_header(message).reportable and parse_header(message).engine_id == BOUND_ENGINE
        replies: list[bytes] = []
        for i in range(10):
            lst.handle_datagram(message, ("127.0.0.1", 40000 + i), lambda d, a: replies.append(d))
        of = drops(lst)
        # Before: 2 reached pysnmp (wrong digest, each answered by a report), 8 rate-limited.
        assert of("wrong-digest") == {"bound-engine": 10}
        assert of("rate-limited") == {}
        assert replies == [] and got == []


@needs_netsnmp
async def test_a_replayed_inform_spends_nothing_of_the_budget() -> None:
    """A captured inform sent again and again is refused before pysnmp, so the replays spend
    nothing of the sender's slow-path bucket (2 deep here) and none is counted rate-limited."""
    got: list[RawNotification] = []
    lst = listener(got, RateLimit(v3_slow_per_source=1, v3_slow_global=0), v3_user())
    async with lst:
        target = ("127.0.0.1", lst.bound[0].address.port)
        with recording_relay(target) as (relay, recorded):
            r = await asyncio.to_thread(
                snmp_send, "snmpinform", *V3_ARGS, "-e", f"0x{TRAPD_ENGINE}", "-r", "0", "-t", "5",
                f"127.0.0.1:{relay[1]}", "", LINK_DOWN, f"{IF_INDEX}.7", "i", "7",
            )  # fmt: skip
            assert r.returncode == 0, r.stderr
        inform = [m for m in recorded if parse_header(m).engine_id.hex() == TRAPD_ENGINE][-1]
        assert len(got) == 1
        for i in range(24):
            lst.handle_datagram(inform, ("127.0.0.1", 41000 + i), lambda d, a: None)
        of = drops(lst)
        # Before: the first replays spent the bucket in pysnmp, the rest were rate-limited.
        assert of("not-in-time-window").get("replayed") == 24
        assert of("rate-limited") == {}
        assert len(got) == 1


def discovery_probe(varbinds: int, msg_id: int = 1) -> bytes:
    """An engine-ID discovery probe (no engine, no user, reportable) carrying ``varbinds``
    minimal variable bindings: RFC 3414 section 4's has none, so it is 60-odd octets."""
    from trapd.listener.ber import encode_integer_content, encode_tlv

    def integer(n: int) -> bytes:
        return encode_tlv(0x02, encode_integer_content(n))

    varbind = encode_tlv(0x30, encode_tlv(0x06, b"\x2b\x06") + b"\x05\x00")  # 1.3.6 = NULL
    pdu = encode_tlv(0xA0, integer(msg_id) + integer(0) + integer(0) + encode_tlv(0x30, varbind * varbinds))
    scoped = encode_tlv(0x30, encode_tlv(0x04, b"") + encode_tlv(0x04, b"") + pdu)
    usm = encode_tlv(0x30, encode_tlv(0x04, b"") + integer(0) + integer(0) + encode_tlv(0x04, b"") * 3)
    header = encode_tlv(0x30, integer(msg_id) + integer(65507) + encode_tlv(0x04, b"\x04") + integer(3))
    return encode_tlv(0x30, integer(3) + header + encode_tlv(0x04, usm) + scoped)


async def test_a_large_unauthenticated_message_spends_the_budget_by_its_size() -> None:
    """pysnmp's engine decodes a whole message, whose cost grows with its variable bindings:
    a 48 KB discovery probe (no key needed) cost some 300 times a plain one (0.4 to 0.7 s of
    CPU), yet spent one token like it, so one source within the shipped 10 a second stalled
    the event loop for seconds each second. A message now spends a token per started 512
    octets (at most a whole bucket): one such probe empties its source's bucket."""
    got: list[RawNotification] = []
    rate = RateLimit(v3_slow_per_source=10, v3_slow_global=100, burst=2)
    lst = listener(got, rate, v3_user())
    # The budget's clock stands still: each large probe takes pysnmp 0.4 s or more (seconds on
    # a loaded machine), and at 10 tokens a second the bucket would refill while it decodes.
    lst._slow_budget = SlowPathBudget(rate, clock=lambda: 1000.0)
    async with lst:
        big = discovery_probe(6000)
        assert len(big) > 48_000 and parse_header(big).is_discovery
        replies: list[bytes] = []
        for i in range(4):
            lst.handle_datagram(big, ("127.0.0.1", 40000 + i), lambda d, a: replies.append(d))
        of = drops(lst)
        assert len(replies) == 1  # before: 4, each after a 0.4 s engine pass
        assert of("rate-limited") == {"v3-slow-per-source": 3}
        # Plain probes from another sender are still answered: the global budget was charged
        # for the large one by its size, not emptied.
        for i in range(5):
            lst.handle_datagram(discovery_probe(0, i), ("127.0.0.2", 40000), lambda d, a: replies.append(d))
        assert len(replies) == 6
        assert lst.stats.v3_discovery == 6


def test_unknown_engine_id_reports_stay_within_the_budget_for_unauthenticated_messages() -> None:
    """An inform to an engine ID trapd does not know gets a usmStatsUnknownEngineIDs report (as
    from net-snmp's snmptrapd), but a flood of them from forged addresses must not make trapd an
    amplifier: each report spends the source's budget for unauthenticated messages like a
    discovery probe, none is larger than what it answers, and every one is counted as a drop."""
    from usm_support import craft, link_down_varbinds, scoped_pdu, trap_pdu, user

    from trapd.listener.stats import ListenerStats
    from trapd.listener.v3 import V3Receiver
    from trapd.listener.v3.keys import localized_user

    u = user("informer", "SHA", "AES-128")
    stale = bytes.fromhex("80004fb805aabbccddeeff0077")
    budget = SlowPathBudget(RateLimit(v3_slow_per_source=2, v3_slow_global=0, burst=1))
    stats = ListenerStats()
    receiver = V3Receiver(
        [u], lambda raw: None, stats, engine_id=bytes.fromhex(TRAPD_ENGINE), admit=budget.admit
    )
    inform = scoped_pdu(trap_pdu(link_down_varbinds(), tag="inform"), stale)
    replies: list[bytes] = []
    sizes = []
    for i in range(20):
        data = craft(localized_user(u, stale), stale, b"informer", inform, msg_id=i, flags=0x07)
        sizes.append(len(data))
        receiver.receive(data, ("192.0.2.9", 4000 + i), lambda d, a: replies.append(d))
    assert stats.dropped_detail[("unknown-engine-id", "not-trapd-engine")] == 20
    assert 1 <= len(replies) <= 2  # the bucket's depth (no reserve: nothing was authenticated)
    assert max(map(len, replies)) <= min(sizes)
    header = parse_header(replies[0])
    assert (header.engine_id.hex(), header.flags, header.user) == (TRAPD_ENGINE, 0, b"informer")
