"""The listener at the edges of UDP: the largest datagrams each family carries, odd source ports.

Real sockets on loopback (IPv4 and IPv6): a sender's socket sends, trapd's Listener receives on
its own socket and answers an inform through it.
"""

from __future__ import annotations

import asyncio
import ipaddress
import random
import socket
from typing import Any

import pytest

from trapd.listener import Listener, ListenerConfig, RawNotification
from trapd.listener.ber import encode_oid_content, encode_tlv, expect, read_header
from trapd.listener.config import ListenAddress, RateLimit
from trapd.listener.fastpath import decode
from trapd.secrets import Secret

# The largest UDP payload: 65,535 minus the UDP header (8) and, for IPv4, the IP header (20).
LARGEST = {socket.AF_INET: 65507, socket.AF_INET6: 65527}


def v2c_of_size(
    size: int, inform: bool, request_id: int = 4242, community: str = "public", oid_arc: int = 1
) -> bytes:
    """A v2c trap or inform of exactly ``size`` octets (one OCTET STRING varbind takes the slack)."""

    def build(pad: int) -> bytes:
        name = encode_tlv(0x06, encode_oid_content((1, 3, 6, 1, 4, 1, 99999, oid_arc)))
        varbinds = encode_tlv(0x30, encode_tlv(0x30, name + encode_tlv(0x04, b"x" * pad)))
        fields = encode_tlv(0x02, request_id.to_bytes(2, "big")) + b"\x02\x01\x00\x02\x01\x00" + varbinds
        pdu = encode_tlv(0xA6 if inform else 0xA7, fields)
        return encode_tlv(0x30, b"\x02\x01\x01" + encode_tlv(0x04, community.encode()) + pdu)

    pad = size - len(build(0))
    while len(build(pad)) > size:  # the length octets grow with the pad
        pad -= 1
    data = build(pad)
    assert len(data) == size
    return data


async def _receive(sender: socket.socket, timeout: float = 10.0) -> bytes:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        try:
            return sender.recv(70000)
        except BlockingIOError:
            if loop.time() > deadline:
                raise TimeoutError("no datagram came back") from None
            await asyncio.sleep(0.005)


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "timed out"
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
async def test_the_largest_datagram_of_each_family_is_taken_and_an_inform_of_it_answered(family: int) -> None:
    """A v2c trap and an inform of exactly the largest UDP payload the family carries: 65,507
    octets over IPv4, 65,527 over IPv6 (no IP header in the payload limit). net-snmp's snmptrapd
    takes both; trapd refused anything over 65,507 as oversized, so the IPv6 one was lost."""
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    got: list[RawNotification] = []
    config = ListenerConfig(listen=(ListenAddress(host, 0),), communities=(Secret("public"),))
    size = LARGEST[family]
    with socket.socket(family, socket.SOCK_DGRAM) as sender:
        sender.bind((host, 0))
        sender.setblocking(False)
        async with Listener(config, got.append) as listener:
            target = listener.bound[0].address
            sender.sendto(v2c_of_size(size, inform=False), (target.host, target.port))
            inform = v2c_of_size(size, inform=True, request_id=31337)
            sender.sendto(inform, (target.host, target.port))
            response = await _receive(sender)
            await _until(lambda: len(got) == 2)
            assert [raw.kind for raw in got] == ["trap", "inform"], listener.stats.dropped_detail
            assert len(got[0].varbinds[0][2]) > size - 60  # type: ignore[arg-type]
            assert listener.stats.dropped_total == 0
    assert len(response) == size
    pdu_at = expect(response, read_header(response, 0, size)[1], size, 0x02)[1]  # after the version
    pdu_at = expect(response, pdu_at, size, 0x04)[1]  # after the community
    assert response[pdu_at] == 0xA2  # a Response-PDU; read as an inform, it holds what the inform held
    answer = decode(response[:pdu_at] + b"\xa6" + response[pdu_at + 1 :])
    assert (answer.request_id, answer.community, answer.varbinds) == (31337, b"public", got[1].varbinds)


# --- floods of forged sources and attacker-chosen values: every table keeps its bound -----------


def _forged_source(rng: random.Random) -> tuple[Any, ...]:
    pick = rng.randrange(4)
    port = rng.choice((0, 0, rng.randrange(1, 65536)))
    if pick == 0:
        return (f"2001:db8:{rng.randrange(65536):x}::{rng.randrange(65536):x}", port, 0, 0)
    if pick == 1:
        return (f"::ffff:10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}", port, 0, 0)
    return (f"10.{rng.randrange(256)}.{rng.randrange(256)}.{rng.randrange(256)}", port)


async def test_a_flood_of_forged_sources_and_chosen_values_leaves_every_table_and_label_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """6,000 datagrams from ever-new addresses (IPv4, IPv6, IPv4-mapped, port 0) carrying
    attacker-chosen communities, OIDs, v3 user names and engine IDs, and garbage: the source
    cache, the rate limiters' tables, the drop log's keys and the v3 receiver's tables stay within
    their bounds (made small here so the flood reaches them), no drop reason or metric label holds
    a value from the packets, and every datagram ends as exactly one count."""
    from usm_support import craft, link_down_varbinds, scoped_pdu, trap_pdu, user

    from trapd.listener import udp
    from trapd.listener.limits import SlowPathBudget, SourceLimiter
    from trapd.listener.stats import DROP_LOG_KEYS, DROP_REASONS
    from trapd.listener.v3.keys import localized_user

    monkeypatch.setattr(udp, "_SOURCE_CACHE_MAX", 500)
    rng = random.Random(20261207)
    bound = bytes.fromhex("8000000001020304")
    users = (user("trapuser", "SHA", "AES-128", [bound]), user("anyuser", "SHA-256", "none"))
    rate = RateLimit(per_source=50, global_=100000, burst=1.0, v3_slow_per_source=50, v3_slow_global=100000)
    config = ListenerConfig(
        listen=(ListenAddress("127.0.0.1", 0),),
        communities=(Secret("public"),),
        v3_users=users,
        engine_id=bytes.fromhex("80004fb805aabbccddeeff0055"),
        allowed_sources=(ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")),
        rate_limit=rate,
    )
    got: list[RawNotification] = []
    chosen: set[str] = set()  # every attacker-chosen text, to look for in the labels
    scoped = scoped_pdu(trap_pdu(link_down_varbinds()))
    no_keys = localized_user(user("nobody"), b"")
    forger, masters = user("anyuser", "SHA-256", "none", auth_key="a guess"), {}  # type: ignore[var-annotated]
    async with Listener(config, got.append, limiter=SourceLimiter(rate, max_sources=300)) as listener:
        listener._slow_budget = SlowPathBudget(rate, max_sources=300)
        for i in range(6000):
            kind = i % 5
            if kind == 0:  # an unknown community
                community = f"c{rng.randrange(10**9)}"
                chosen.add(community)
                data = v2c_of_size(120, inform=bool(i % 2), community=community)
            elif kind == 1:  # the right community, OIDs no rule knows
                data = v2c_of_size(200, inform=bool(i % 2), oid_arc=rng.randrange(2**32))
            elif kind == 2:  # a made-up v3 user from a made-up engine
                name = f"u{rng.randrange(10**9)}".encode()
                engine = bytes([0x80, 0, 0, 0, 1]) + rng.randbytes(6)
                chosen.add(name.decode())
                data = craft(no_keys, engine, name, scoped, msg_id=i)
            elif kind == 3:  # a real user name, a forged MAC from ever-new engines
                engine = bytes([0x80, 0, 0, 0, 1]) + rng.randbytes(6)
                keys = localized_user(forger, engine, masters)  # the 1 MiB passphrase hash once
                data = craft(keys, engine, b"anyuser", scoped, msg_id=i)
            else:  # garbage
                data = rng.randbytes(rng.randrange(1, 300))
            before = listener.stats.received_total + listener.stats.dropped_total
            listener.handle_datagram(data, _forged_source(rng), lambda d, a: None)
            assert listener.stats.received_total + listener.stats.dropped_total == before + 1
        stats = listener.stats
        assert len(listener._sources._cache) <= 500
        assert listener.limiter is not None and len(listener.limiter._sources) <= 300
        assert len(listener._slow_budget._sources) <= 300
        assert len(listener.drop_log._next_at) <= DROP_LOG_KEYS + len(DROP_REASONS)
        assert listener._v3 is not None
        receiver = listener._v3.receiver
        assert receiver.learned_engines == 0 and len(receiver._registered) <= 3
        assert len(receiver._localized) <= 3 and len(listener._v3.fast.pairs) == 1  # type: ignore[union-attr]
        assert len(listener._securities._data) <= 1
    assert set(stats.dropped) <= set(DROP_REASONS)
    assert len(stats.dropped_detail) < 60, sorted(stats.dropped_detail)
    labels = {label for pair in stats.dropped_detail for label in pair}
    assert not any(text in label for text in chosen for label in labels)
    assert stats.received["v2c"] > 0 and stats.dropped["unknown-community"] > 0
    assert stats.dropped["unknown-user"] > 0 and stats.dropped["wrong-digest"] > 0


async def test_an_inform_from_source_port_0_is_taken_and_its_unsendable_response_counted_as_an_error() -> (
    None
):
    """Port 0 is no port a Response can go to (sendto: EINVAL), but a forged or odd sender can
    put it in a datagram. The inform is taken (its sender cannot be answered, whatever trapd
    does); the failed Response counts as a send error, and not also as a Response sent."""
    got: list[RawNotification] = []
    config = ListenerConfig(listen=(ListenAddress("127.0.0.1", 0),), communities=(Secret("public"),))
    async with Listener(config, got.append) as listener:
        reply = listener._readers[0].send  # the receiving socket's reply path
        listener.handle_datagram(v2c_of_size(100, inform=True), ("127.0.0.1", 0), reply)
        listener.handle_datagram(v2c_of_size(100, inform=False), ("127.0.0.1", 0), reply)
        assert [(raw.kind, raw.source_port) for raw in got] == [("inform", 0), ("trap", 0)]
        assert listener.stats.send_errors == 1
        assert listener.stats.inform_responses == 0
        assert listener.stats.dropped_total == 0


def _v2c_inform_with_short_unsigned(size: int, count: int) -> bytes:
    """A v2c inform of exactly ``size`` octets whose first ``count`` varbinds are Counter32
    4294967295 written without the leading 00 octet (41 04 ff ff ff ff), as some agents write
    it and trapd reads it; an OCTET STRING takes the slack."""
    name = encode_tlv(0x06, encode_oid_content((1, 3, 6, 1, 4, 1, 99999, 2)))
    counter = encode_tlv(0x30, name + b"\x41\x04" + b"\xff" * 4)

    def build(pad: int) -> bytes:
        name = encode_tlv(0x06, encode_oid_content((1, 3, 6, 1, 4, 1, 99999, 1)))
        varbinds = encode_tlv(0x30, counter * count + encode_tlv(0x30, name + encode_tlv(0x04, b"x" * pad)))
        fields = encode_tlv(0x02, (4242).to_bytes(2, "big")) + b"\x02\x01\x00\x02\x01\x00" + varbinds
        return encode_tlv(0x30, b"\x02\x01\x01" + encode_tlv(0x04, b"public") + encode_tlv(0xA6, fields))

    pad = size - len(build(0))
    while len(build(pad)) > size:
        pad -= 1
    data = build(pad)
    assert len(data) == size
    return data


@pytest.mark.parametrize("family", [socket.AF_INET, socket.AF_INET6], ids=["ipv4", "ipv6"])
async def test_an_inform_whose_response_outgrows_the_largest_datagram_is_answered_toobig(family: int) -> None:
    """The Response re-encodes the inform's varbinds, and an unsigned value written without its
    leading 00 octet takes one octet more in it. An inform of the largest datagram with such values
    had a Response a few octets over what the family carries: sendto failed (EMSGSIZE) and the
    sender was never answered, however often it resent. RFC 3416 4.2.7: tooBig, no varbinds."""
    host = "127.0.0.1" if family == socket.AF_INET else "::1"
    got: list[RawNotification] = []
    config = ListenerConfig(listen=(ListenAddress(host, 0),), communities=(Secret("public"),))
    size = LARGEST[family]
    with socket.socket(family, socket.SOCK_DGRAM) as sender:
        sender.bind((host, 0))
        sender.setblocking(False)
        async with Listener(config, got.append) as listener:
            target = listener.bound[0].address
            sender.sendto(_v2c_inform_with_short_unsigned(size, 3), (target.host, target.port))
            response = await _receive(sender)
            await _until(lambda: len(got) == 1)
            assert listener.stats.send_errors == 0
            assert listener.stats.inform_too_big == 1
    assert len(response) <= size
    _, start, end = read_header(response, 0, len(response))
    pos = expect(response, start, end, 0x02)[1]  # version
    pos = expect(response, pos, end, 0x04)[1]  # community
    assert response[pos] == 0xA2
    tail = response[pos + 2 :]  # request-id, error-status tooBig, error-index 0, no varbinds
    assert tail == encode_tlv(0x02, (4242).to_bytes(2, "big")) + b"\x02\x01\x01\x02\x01\x00\x30\x00"
