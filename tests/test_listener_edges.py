"""The listener at the edges of UDP: the largest datagrams each family carries, odd source ports.

Real sockets on loopback (IPv4 and IPv6): a sender's socket sends, trapd's Listener receives on
its own socket and answers an inform through it.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import pytest

from trapd.listener import Listener, ListenerConfig, RawNotification
from trapd.listener.ber import encode_tlv, expect, read_header
from trapd.listener.config import ListenAddress
from trapd.listener.fastpath import decode
from trapd.secrets import Secret

# The largest UDP payload: 65,535 minus the UDP header (8) and, for IPv4, the IP header (20).
LARGEST = {socket.AF_INET: 65507, socket.AF_INET6: 65527}


def v2c_of_size(size: int, inform: bool, request_id: int = 4242) -> bytes:
    """A v2c trap or inform of exactly ``size`` octets (one OCTET STRING varbind takes the slack)."""

    def build(pad: int) -> bytes:
        name = encode_tlv(0x06, bytes([0x2B, 6, 1, 4, 1, 0x86, 0x8D, 0x1F, 1]))
        varbinds = encode_tlv(0x30, encode_tlv(0x30, name + encode_tlv(0x04, b"x" * pad)))
        fields = encode_tlv(0x02, request_id.to_bytes(2, "big")) + b"\x02\x01\x00\x02\x01\x00" + varbinds
        pdu = encode_tlv(0xA6 if inform else 0xA7, fields)
        return encode_tlv(0x30, b"\x02\x01\x01" + encode_tlv(0x04, b"public") + pdu)

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
