"""Memory on the receive path stays bounded in bytes, whatever the traps carry (issue 14 item 1).

Real datagrams through a real socket into the Listener, each normalized as the
daemon does: a stream of traps with a distinct 60 KB OCTET STRING each (the
red-team's input: before the fix, 4,100 of them took RSS from 75 MB to 1 GB,
because the normalizer remembered 4,096 of them with their display text).
"""

from __future__ import annotations

import asyncio
import socket

from trapd.bounded import BoundedCache
from trapd.listener import Listener, ListenerConfig, RawNotification
from trapd.listener.ber import encode_integer_content, encode_oid_content, encode_tlv
from trapd.listener.config import ListenAddress
from trapd.mibs import MibConfig, MibResolver
from trapd.normalize import KNOWN_MAX_BYTES, Normalizer
from trapd.secrets import Secret

LINK_DOWN = (1, 3, 6, 1, 6, 3, 1, 1, 5, 3)
IF_DESCR_1 = (1, 3, 6, 1, 2, 1, 2, 2, 1, 2, 1)


def _varbind(oid: tuple[int, ...], tag: int, content: bytes) -> bytes:
    return encode_tlv(0x30, encode_tlv(0x06, encode_oid_content(oid)) + encode_tlv(tag, content))


def v2c_trap(request_id: int, value: bytes, extra: int = 0) -> bytes:
    """A v2c linkDown with ifDescr.1 = ``value`` and ``extra`` more small varbinds."""
    varbinds = (
        _varbind((1, 3, 6, 1, 2, 1, 1, 3, 0), 0x43, encode_integer_content(request_id))
        + _varbind((1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0), 0x06, encode_oid_content(LINK_DOWN))
        + _varbind(IF_DESCR_1, 0x04, value)
        + b"".join(_varbind((1, 3, 6, 1, 4, 1, 99, i), 0x02, encode_integer_content(i)) for i in range(extra))
    )
    pdu = encode_tlv(
        0xA7,
        encode_tlv(0x02, encode_integer_content(request_id))
        + encode_tlv(0x02, b"\x00")
        + encode_tlv(0x02, b"\x00")
        + encode_tlv(0x30, varbinds),
    )
    return encode_tlv(0x30, encode_tlv(0x02, b"\x01") + encode_tlv(0x04, b"public") + pdu)


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def _stream(messages: int, make: object, normalizer: Normalizer) -> int:
    """Send ``messages`` datagrams (``make(i)``) to a Listener; each received one is normalized."""
    got = 0

    def on_notification(raw: RawNotification) -> None:
        nonlocal got
        normalizer.normalize(raw)
        got += 1

    config = ListenerConfig(listen=(ListenAddress("127.0.0.1", 0),), communities=(Secret("public"),))
    async with Listener(config, on_notification) as listener:
        address = ("127.0.0.1", listener.bound[0].address.port)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            sent = 0
            while sent < messages:
                for _ in range(min(20, messages - sent)):  # a window the receive buffer always holds
                    s.sendto(make(sent), address)  # type: ignore[operator]
                    sent += 1
                for _ in range(2000):  # received, counted: not a timed wait
                    if got == sent:
                        break
                    await asyncio.sleep(0.005)
                assert got == sent, (got, sent, listener.stats.to_dict())
    return got


async def test_a_stream_of_large_varbinds_leaves_caches_and_rss_bounded() -> None:
    normalizer = Normalizer(MibResolver.load(MibConfig(dirs=())))
    # Warm up: the first traps allocate what every later one reuses (loop, sockets, MIB tables).
    await _stream(50, lambda i: v2c_trap(i, b"w" * 60_000 + i.to_bytes(4, "big")), normalizer)
    before = rss_bytes()
    got = await _stream(4_100, lambda i: v2c_trap(i, i.to_bytes(4, "big") * 15_000), normalizer)
    growth = rss_bytes() - before
    assert got == 4_100
    known = normalizer._known
    assert isinstance(known, BoundedCache)
    assert known.bytes <= KNOWN_MAX_BYTES
    # 4,100 distinct 60 KB values (and their 180 KB display texts) held would be over 900 MB.
    assert growth < 150 * 1024 * 1024, f"RSS grew by {growth / 2**20:.0f} MiB"


async def test_many_small_varbinds_are_still_remembered_within_the_byte_bound() -> None:
    normalizer = Normalizer(MibResolver.load(MibConfig(dirs=())))
    await _stream(200, lambda i: v2c_trap(i, b"port-7", extra=150), normalizer)
    known = normalizer._known
    assert len(known) >= 150 and 0 < known.bytes <= KNOWN_MAX_BYTES
