"""A v3 flood within the per-source limit no longer starves other senders (issue 14 item 3).

One source sends engine-ID discovery probes and messages from made-up users,
1,600 a second: within ``rate_limit.per_source: 2000`` (the shipped limits).
Each would cost pysnmp's engine about 1.5 ms, more than the loop has. At the
same time a legitimate switch sends v2c linkDowns. The victim's share is
counted: traps received / traps sent. Before the slow-path budget and the
cheap refusals, the loop fell behind, the receive buffer overflowed and the
victim lost most of its traps; now the flood costs microseconds a message
and the victim keeps (nearly) all of them, while discovery still works.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest
from daemon_harness import V3_USER, TrapdDaemon
from test_receive_memory import v2c_trap
from test_workers import discovery_probe

from trapd.listener.v3 import parse_header

pytestmark = pytest.mark.integration

TRAPD_ENGINE = "80004fb805aabbccddeeff0011"
VICTIM_TRAPS = 200
FLOOD_PER_TRAP = 40  # flood messages sent for each victim trap
ROUND = 0.025  # seconds per victim trap: 40 traps/s, and a flood of 1,600/s


def unknown_user_message(i: int) -> bytes:
    """A reportable authNoPriv message to trapd's engine from a user no one configured."""

    def tlv(tag: int, body: bytes) -> bytes:
        assert len(body) < 128
        return bytes([tag, len(body)]) + body

    def integer(n: int) -> bytes:
        return tlv(0x02, n.to_bytes((n.bit_length() + 8) // 8, "big"))

    msg_id = 5000 + i
    header = tlv(0x30, integer(msg_id) + integer(65507) + tlv(0x04, b"\x05") + integer(3))
    usm_fields = (
        tlv(0x04, bytes.fromhex(TRAPD_ENGINE)) + integer(1) + integer(1)
        + tlv(0x04, b"intruder%d" % (i % 97)) + tlv(0x04, bytes(12)) + tlv(0x04, b"")
    )  # fmt: skip
    pdu = tlv(0xA6, integer(msg_id) + integer(0) + integer(0) + tlv(0x30, b""))
    scoped = tlv(0x30, tlv(0x04, bytes.fromhex(TRAPD_ENGINE)) + tlv(0x04, b"") + pdu)
    return tlv(0x30, integer(3) + header + tlv(0x04, tlv(0x30, usm_fields)) + scoped)


def test_a_v3_flood_within_per_source_limits_leaves_other_senders_their_traps(tmp_path: Path) -> None:
    config = {
        "listener": {
            "v3_users": [V3_USER],
            "engine_id": TRAPD_ENGINE,
            "receive_buffer": 131072,  # what an unprivileged trapd gets by default is about 2x this
            "rate_limit": {"per_source": 2000, "global": 20000, "burst": 2},
        }
    }
    d = TrapdDaemon.start(tmp_path / "trapd", rules="rules: []\n", config=config)
    try:
        flood = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        flood.setblocking(False)
        victim = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        messages = [discovery_probe(1 + i) if i % 2 else unknown_user_message(i) for i in range(400)]
        assert parse_header(messages[0]).user.startswith(b"intruder")
        assert parse_header(messages[1]).is_discovery
        sent_flood = 0
        started = time.monotonic()
        for n in range(VICTIM_TRAPS):
            for _ in range(FLOOD_PER_TRAP):
                flood.sendto(messages[sent_flood % len(messages)], d.address)
                sent_flood += 1
            victim.sendto(v2c_trap(n, b"port-%d" % n), d.address)
            # Keep the flood within per_source (2,000/s): pace by the clock, send by count.
            delay = started + (n + 1) * ROUND - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            try:
                while True:
                    flood.recv(4096)  # the reports trapd sends back; not needed
            except BlockingIOError:
                pass
        # Wait until trapd has read everything the kernel kept (its socket queue stays empty).
        empty = 0
        for _ in range(1200):
            empty = empty + 1 if d.metric("trapd_socket_receive_queue_bytes") == 0 else 0
            if empty >= 5:
                break
            time.sleep(0.05)
        got = d.metric("trapd_notifications_received_total", version="v2c")
        share = got / VICTIM_TRAPS
        load = os.getloadavg()[0]
        print(f"victim share {share:.3f} ({got:.0f}/{VICTIM_TRAPS}), flood {sent_flood}, load {load:.1f}")
        assert share >= 0.8, share  # 0.10 before (20 of 200), 0.96 to 1.0 after at load 9 on 2 cores
        # Discovery still works for a legitimate sender once the flood is over.
        time.sleep(1.0)  # the flooder's slow-path bucket refills; the victim's own never emptied
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(5)
            s.sendto(discovery_probe(99999), d.address)
            assert parse_header(s.recv(4096)).engine_id.hex() == TRAPD_ENGINE
        assert d.stop() == 0
    finally:
        d.close()
