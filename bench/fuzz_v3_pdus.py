"""SNMPv3 PDUs against v2c ones: the same PDU bytes must mean the same, or be refused, in both.

trapd reads every v3 PDU with the decoder it reads v1/v2c with (trapd/listener/v3/scoped.py),
whether the fast USM path took the message or pysnmp's engine did. This is the corpus for that
comparison and a long run of it; ``tests/test_v3_one_decoder.py`` runs a fixed seed of a few
hundred through a Listener at three security levels::

    .venv/bin/python bench/fuzz_v3_pdus.py --inputs 20000 --seed 1

The corpus: the PDUs of fuzz_fastpath's seed messages re-encoded in the other forms BER allows or
pyasn1 takes (long-form lengths of 1 to 5 octets, indefinite lengths, long-form tags, OCTET
STRINGs split into constructed ones), then the PDUs of fuzz_fastpath's mutants (bit flips, broken
lengths, nesting, truncation...). Each goes, as the PDU of a noAuthNoPriv trap from a bound
sender engine, through trapd's Listener (the fast USM path, or pysnmp's engine for what it
declines), and must be delivered with exactly the varbinds and request-id that a v2c message
with that PDU decodes to, or be dropped when that one is refused, with one count each. The one
allowed difference (trapd.listener.fastpath's module doc): pysnmp refuses odd error-status /
error-index values that a v2c notification is not refused for.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import fuzz_fastpath  # noqa: E402

from trapd.listener.ber import Rejected, encode_integer_content, encode_tlv, expect, read_header  # noqa: E402


def _pdu_of(message: bytes) -> bytes | None:
    """What sits where a v1/v2c message's PDU does, with a trap's tag; None if nothing does."""
    try:
        _, start, end = read_header(message, 0, len(message))
        _, pos = expect(message, start, end, 0x02)
        _, pos = expect(message, pos, end, 0x04)
        _, _, pdu_end = read_header(message, pos, end)
    except Rejected:
        return None
    if pdu_end - pos > 60000:  # no room for the v3 header (oversized in both)
        return None
    return b"\xa7" + message[pos + 1 : pdu_end]


# A BER element: (tag, content octets) for a primitive one, (tag, [children]) for a constructed one.
Node = tuple[int, "bytes | list[Node]"]


def _parse(data: bytes, pos: int, end: int) -> list[Node]:
    nodes: list[Node] = []
    while pos < end:
        tag, start, stop = read_header(data, pos, end)
        nodes.append((tag, _parse(data, start, stop) if tag & 0x20 else data[start:stop]))
        pos = stop
    return nodes


def _encode(node: Node, rng: random.Random, rate: float) -> bytes:
    """``node`` in minimal BER, except that (at ``rate``) one of the other forms BER allows or
    pyasn1 takes is used: a long-form length of 1 to 5 octets, an indefinite length, a long-form
    tag, an OCTET STRING split into a constructed one."""
    tag, value = node
    if isinstance(value, list):
        content = b"".join(_encode(child, rng, rate) for child in value)
    else:
        content = value
        if tag == 0x04 and len(value) >= 2 and rng.random() < rate:
            cut = rng.randrange(1, len(value))
            tag, content = 0x24, encode_tlv(0x04, value[:cut]) + encode_tlv(0x04, value[cut:])
    tag_octets = bytes([tag])
    if rng.random() < rate / 3 and tag & 0x1F < 0x1F and tag < 0x80:
        tag_octets = bytes([tag | 0x1F, tag & 0x1F])  # the same tag number, in the long form
    pick = rng.random()
    if pick < rate and tag & 0x20:
        return tag_octets + b"\x80" + content + b"\x00\x00"
    if pick < 2 * rate:
        octets = rng.randint(max(1, (len(content).bit_length() + 7) // 8), 5)
        return tag_octets + bytes([0x80 | octets]) + len(content).to_bytes(octets, "big") + content
    return tag_octets + encode_tlv(0, content)[1:]


def corpus(seed: int, rewritten: int, mutants: int) -> list[bytes]:
    """PDUs: the fuzz engine's seed messages' PDUs in other BER forms, then its mutants' PDUs."""
    engine = fuzz_fastpath
    rng = random.Random(seed)
    originals = [p for p in map(_pdu_of, engine.seeds()) if p is not None]
    out = []
    for i in range(rewritten):
        (tree,) = _parse(originals[i % len(originals)], 0, len(originals[i % len(originals)]))
        out.append(_encode(tree, rng, rng.choice((0.02, 0.05, 0.15))))
    for message in engine.inputs(mutants * 3, seed):
        pdu = _pdu_of(message)
        if pdu is not None and len(out) < rewritten + mutants:
            out.append(pdu)
    return out


def v2c_of_pdu(pdu: bytes) -> bytes:
    return encode_tlv(0x30, b"\x02\x01\x01" + encode_tlv(0x04, b"public") + pdu)


def error_fields(pdu: bytes) -> tuple[int, int]:
    """error-status and error-index of a PDU whose fields up to there are well-formed."""
    _, start, end = read_header(pdu, 0, len(pdu))
    _, pos = expect(pdu, start, end, 0x02)
    fields = []
    for _ in range(2):
        a, pos = expect(pdu, pos, end, 0x02)
        fields.append(int.from_bytes(pdu[a:pos], "big", signed=True))
    return fields[0], fields[1]


SENDER = bytes.fromhex("8000000001020304")
TRAPD = bytes.fromhex("80004fb805aabbccddeeff0066")


def plain_trap(pdu: bytes, msg_id: int, user: bytes = b"plain") -> bytes:
    """A noAuthNoPriv v3 message from SENDER around ``pdu`` (no key: nothing to compute)."""

    def integer(value: int) -> bytes:
        return encode_tlv(0x02, encode_integer_content(value))

    usm = encode_tlv(
        0x30,
        encode_tlv(0x04, SENDER) + integer(1) + integer(1000) + encode_tlv(0x04, user) + b"\x04\x00\x04\x00",
    )
    header = encode_tlv(0x30, integer(msg_id) + integer(65507) + b"\x04\x01\x00" + integer(3))
    scoped = encode_tlv(0x30, b"\x04\x00\x04\x00" + pdu)
    return encode_tlv(0x30, integer(3) + header + encode_tlv(0x04, usm) + scoped)


async def _run(count: int, seed: int) -> dict[str, Any]:
    from trapd.listener import Listener, ListenerConfig
    from trapd.listener.config import ListenAddress, RateLimit, V3User
    from trapd.listener.fastpath import decode
    from trapd.listener.raw import RawNotification

    got: list[RawNotification] = []
    users = (V3User(user="plain", auth_protocol="none", priv_protocol="none", engine_ids=(SENDER,)),)
    # No slow-path budget: every PDU the fast path declines must reach pysnmp's engine.
    unlimited = RateLimit(v3_slow_per_source=0, v3_slow_global=0)
    config = ListenerConfig(
        listen=(ListenAddress("127.0.0.1", 0),), v3_users=users, engine_id=TRAPD, rate_limit=unlimited
    )
    outcomes: collections.Counter[str] = collections.Counter()
    started = time.perf_counter()
    async with Listener(config, got.append, drop_log_interval=3600.0) as listener:
        stats = listener.stats
        for i, pdu in enumerate(corpus(seed, count // 2, count - count // 2)):
            try:
                reference = decode(v2c_of_pdu(pdu))
            except Rejected:
                reference = None
            before = stats.received_total + stats.dropped_total
            got.clear()
            listener.handle_datagram(plain_trap(pdu, i), ("192.0.2.9", 40000), lambda d, a: None)
            if stats.received_total + stats.dropped_total != before + 1:
                raise AssertionError(f"not one count: {pdu.hex()}")
            if reference is None:
                if got:
                    raise AssertionError(f"delivered in v3, refused in v2c: {pdu.hex()}")
                outcomes["refused in both"] += 1
            elif got:
                if (got[0].varbinds, got[0].request_id) != (reference.varbinds, reference.request_id):
                    raise AssertionError(f"read differently: {pdu.hex()}")
                outcomes["same notification"] += 1
            elif error_fields(pdu) != (0, 0):
                outcomes["error fields pysnmp refuses"] += 1
            else:
                raise AssertionError(f"accepted in v2c, dropped in v3: {pdu.hex()}")
        internal = {d: n for (_, d), n in stats.dropped_detail.items() if "internal" in d}
        if stats.dropped["rate-limited"]:
            raise AssertionError("rate-limited: the comparison did not reach pysnmp's engine")
        if internal:
            raise AssertionError(f"internal errors: {internal}")
        return {
            "inputs": count,
            "seed": seed,
            "outcomes": dict(outcomes.most_common()),
            "drops": {f"{r}/{d}": n for (r, d), n in stats.dropped_detail.most_common(12)},
            "seconds": round(time.perf_counter() - started, 1),
        }


def run(count: int, seed: int) -> dict[str, Any]:
    """Raises AssertionError at the first PDU read differently in v3 and v2c."""
    return asyncio.run(_run(count, seed))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", type=int, default=20_000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    print(json.dumps(run(args.inputs, args.seed), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
