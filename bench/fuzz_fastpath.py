"""Mutation fuzzing of the fast-path decoder, seeded with real packets.

Anyone who can reach UDP 162 can send anything, so the decoder must answer
every input with a FastMessage or :class:`Rejected` (reason from
REJECT_REASONS), never another exception, and in time proportional to the
input. This module is the engine for both the short fixed-seed run in
``tests/test_fastpath_fuzz.py`` and the long run here (issue 7 asks for at
least 1,000,000 inputs)::

    .venv/bin/python bench/fuzz_fastpath.py --inputs 1000000 --seed 1
    .venv/bin/python bench/fuzz_fastpath.py --inputs 1000 --stream 4100                       # large varbinds
    .venv/bin/python bench/fuzz_fastpath.py --inputs 1000 --stream 4100 --value-octets 8 --extra-varbinds 1000

It is a structure-aware mutator rather than a coverage-guided fuzzer
(atheris): the SNMP shape is small and fixed, and knowing where the TLV
headers are lets mutations hit lengths and tags, the places a BER decoder
gets wrong, instead of mostly breaking the first byte. Seeds are net-snmp
captures plus hand-built edge messages; mutations are bit flips, interesting
bytes, length corruption (zero, off by one, indefinite 0x80, huge 0x84
FFFFFFFF, 5 length octets), truncation, insertion, deletion, duplication,
nesting (wrapping in SEQUENCEs), splicing two seeds and trailing bytes, one
to several per input; plus fixed extremes (empty, MAX_MESSAGE and one more byte,
deep nesting, a 60 KB OID, 9,000 varbinds).

Each accepted message is also checked for sanity: message_version agrees,
values have the Python type raw.py promises, and re-encoding its varbinds as
an inform acknowledgement reads back equal. Every input also goes through
``decode_unless_v3`` (the listener's one-pass entry point, with its own
reading of the usual v2c envelope), which must give what message_version
and decode give.
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from trapd.listener.ber import encode_length, read_header
from trapd.listener.fastpath import (
    MAX_MESSAGE,
    REJECT_REASONS,
    FastMessage,
    Rejected,
    decode,
    decode_unless_v3,
    encode_inform_response,
    message_version,
)

# net-snmp 5.9.3 captures: v2c linkDown, v1 linkDown, v2c with every value type
# (long-form outer lengths), and a v2c inform.
NETSNMP_SEEDS = [
    "306c02010104067075626c6963a75f0204486f34990201000201003051300f06082b06010201010300430300d3a73017060a"
    "2b06010603010104010006092b0601060301010503300f060a2b0601020102020101110201113014060a2b060102010202"
    "01021104064769302f3137",
    "303902010004067075626c6963a42c06062b060104010940047f000001020102020100430300d3a83011300f060a2b0601"
    "02010202010111020111",
    "3082012c02010104067075626c6963a782011d02040d9ce71f0201000201003082010d300f06082b06010201010300430301"
    "e3ac3017060a2b06010603010104010006092b0601060301010503300c06072b0601040163010201fb301006072b0601040163"
    "02420500ffffffff301006072b060104016303410500ffffffff301006072b060104016304040568656c6c6f300e06072b0601"
    "04016305040300ff80300b06072b0601040163060500301506072b060104016307060a2b060104018fffffff7f301006072b06"
    "0104016308430500ffffffff300f06072b06010401630940040a010203301406072b06010401630a460900ffffffffffffffff"
    "300f06072b06010401630b44049f7b0105301206072b06010401630c44079f78043fc00000300b06072b06010401630d0400",
    "3082012c02010104067075626c6963a682011d02040d9ce71f0201000201003082010d300f06082b06010201010300430301"
    "e3ac3017060a2b06010603010104010006092b0601060301010503300c06072b0601040163010201fb301006072b0601040163"
    "02420500ffffffff301006072b060104016303410500ffffffff301006072b060104016304040568656c6c6f300e06072b0601"
    "04016305040300ff80300b06072b0601040163060500301506072b060104016307060a2b060104018fffffff7f301006072b06"
    "0104016308430500ffffffff300f06072b06010401630940040a010203301406072b06010401630a460900ffffffffffffffff"
    "300f06072b06010401630b44049f7b0105301206072b06010401630c44079f78043fc00000300b06072b06010401630d0400",
]


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + encode_length(len(content)) + content


def _hand_built_seeds() -> list[bytes]:
    varbinds = [
        _tlv(0x30, _tlv(0x06, b"\x2b\x06\x01\x04\x01\x8f\xff\xff\xff\x7f") + _tlv(0x80, b"")),
        _tlv(0x30, _tlv(0x06, b"\x88\x37\x01") + _tlv(0x46, b"\x00" + b"\xff" * 8)),
        _tlv(0x30, _tlv(0x06, b"\x2b\x01") + _tlv(0x04, bytes(range(256)))),
        _tlv(0x30, _tlv(0x06, b"\x2b\x02") + _tlv(0x02, b"\x80\x00\x00\x00")),
        _tlv(0x30, _tlv(0x06, b"\x2b\x03") + _tlv(0x40, b"\x0a\x00\x00\x01")),
    ]
    v2c_body = _tlv(0x02, b"\x80\x00\x00\x00") + b"\x02\x01\x00\x02\x01\x00" + _tlv(0x30, b"".join(varbinds))
    v2c = _tlv(0x30, b"\x02\x01\x01" + _tlv(0x04, b"") + _tlv(0xA6, v2c_body))
    v1_body = (
        _tlv(0x06, b"\x2b\x06\x01\x04\x01\x09")
        + _tlv(0x40, b"\xc0\x00\x02\x07")
        + b"\x02\x01\x06"
        + _tlv(0x02, b"\x7f\xff\xff\xff")
        + _tlv(0x43, b"\x00\xff\xff\xff\xff")
        + _tlv(0x30, b"".join(varbinds[2:]))
    )
    v1 = _tlv(0x30, b"\x02\x01\x00" + _tlv(0x04, b"public") + _tlv(0xA4, v1_body))
    empty_trap = _tlv(
        0x30, b"\x02\x01\x01" + _tlv(0x04, b"x") + _tlv(0xA7, b"\x02\x01\x01\x02\x01\x00\x02\x01\x00\x30\x00")
    )
    return [v2c, v1, empty_trap]


def seeds() -> list[bytes]:
    return [bytes.fromhex(seed) for seed in NETSNMP_SEEDS] + _hand_built_seeds()


def extremes() -> list[bytes]:
    """Fixed hostile inputs every run includes."""
    rng = random.Random(0)
    padding = MAX_MESSAGE - 4
    levels = MAX_MESSAGE // 6
    nested = b"".join(b"\x30\x84" + (6 * (levels - 1 - i)).to_bytes(4, "big") for i in range(levels))
    many_varbinds = b"\x30\x05\x06\x01\x2b\x05\x00" * 9000
    big_list = _tlv(0x30, many_varbinds)
    many = _tlv(0x30, b"\x02\x01\x01\x04\x00" + _tlv(0xA7, b"\x02\x01\x00" * 3 + big_list))
    huge_oid = _tlv(0x30, _tlv(0x06, b"\x2b" + b"\xff" * 60000 + b"\x7f") + b"\x05\x00")
    return [
        b"",
        b"\x30",
        b"\x30\x00",
        b"\x30\x80",
        b"\x30\x80\x00\x00",
        b"\x30\x84\xff\xff\xff\xff",
        b"\x30\x8f" + b"\xff" * 15,
        b"\x30\x80" * 32000,
        b"\x30\x82"
        + (MAX_MESSAGE - 4).to_bytes(2, "big")
        + b"\x30\x82"
        + (MAX_MESSAGE - 8).to_bytes(2, "big")
        + b"\x00" * (MAX_MESSAGE - 8),
        nested,
        bytes(MAX_MESSAGE),
        bytes(MAX_MESSAGE + 1),
        rng.randbytes(MAX_MESSAGE),
        b"\x30\x82" + padding.to_bytes(2, "big") + rng.randbytes(padding),
        many,
        _tlv(0x30, b"\x02\x01\x01\x04\x00" + _tlv(0xA7, b"\x02\x01\x00" * 3 + _tlv(0x30, huge_oid))),
    ]


# Tags, length forms and boundary values: what a single-byte change should try first.
INTERESTING = (
    *(0x00, 0x01, 0x02, 0x04, 0x05, 0x06, 0x30, 0x40, 0x46, 0x7F),
    *(0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0xA0, 0xA2, 0xA4, 0xA6, 0xA7, 0xA8, 0xFF),
)


def headers(data: bytes | bytearray) -> list[int]:
    """Offsets of the TLV headers a lenient walk finds (stops quietly at anything broken)."""
    found: list[int] = []
    stack = [(0, len(data))]
    while stack and len(found) < 4096:
        pos, end = stack.pop()
        while pos + 2 <= end:
            tag, length = data[pos], data[pos + 1]
            start = pos + 2
            if length & 0x80:
                count = length & 0x7F
                if count == 0 or count > 4 or start + count > end:
                    break
                length = int.from_bytes(data[start : start + count], "big")
                start += count
            if start + length > end:
                break
            found.append(pos)
            if tag & 0x20:
                stack.append((start, start + length))
            pos = start + length
    return found


def _corrupt_length(rng: random.Random, data: bytearray) -> None:
    positions = headers(data)
    if not positions:
        return
    pos = rng.choice(positions)
    old = data[pos + 1]
    count = old & 0x7F if old & 0x80 else 0
    old_octets = data[pos + 1 : pos + 2 + count]
    length = int.from_bytes(old_octets[1:], "big") if count else old
    choice = rng.randrange(8)
    new: bytes
    if choice == 0:
        new = b"\x00"
    elif choice == 1:
        new = encode_length(max(length - 1, 0))
    elif choice == 2:
        new = encode_length(length + 1)
    elif choice == 3:
        new = b"\x80"  # indefinite
    elif choice == 4:
        new = b"\x84\xff\xff\xff\xff"
    elif choice == 5:
        new = b"\x85\x00\x00\x00\x00" + bytes((min(length, 255),))
    elif choice == 6:
        new = b"\x84" + length.to_bytes(4, "big")  # non-minimal but right
    else:
        new = bytes((rng.randrange(256),))
    data[pos + 1 : pos + 2 + count] = new


def mutate(rng: random.Random, corpus: list[bytes]) -> bytes:
    data = bytearray(rng.choice(corpus))
    for _ in range(rng.choice((1, 1, 1, 2, 2, 3, 5, 8))):
        size = len(data)
        op = rng.randrange(11)
        if op == 0 and size:
            data[rng.randrange(size)] ^= 1 << rng.randrange(8)
        elif op == 1 and size:
            data[rng.randrange(size)] = rng.choice(INTERESTING)
        elif op == 2:
            _corrupt_length(rng, data)
        elif op == 3 and size:
            del data[rng.randrange(size) :]
        elif op == 4:
            position = rng.randrange(size + 1)
            data[position:position] = rng.randbytes(rng.choice((1, 2, 4, 16, 200)))
        elif op == 5 and size:
            start = rng.randrange(size)
            del data[start : start + rng.choice((1, 2, 3, 8, 40))]
        elif op == 6 and size:
            start = rng.randrange(size)
            chunk = data[start : start + rng.randrange(1, 64)]
            position = rng.randrange(size + 1)
            data[position:position] = chunk
        elif op == 7:
            data[0:0] = bytes((rng.choice((0x30, 0x30, 0xA7, 0x04)),)) + encode_length(len(data))
        elif op == 8:
            # Nest: wrap one TLV (a varbind value, a varbind, the list) in a SEQUENCE and fix nothing else.
            positions = headers(data)
            if positions:
                pos = rng.choice(positions)
                try:
                    _, _, end = read_header(bytes(data), pos, len(data))
                except Rejected:
                    continue
                data[pos:end] = b"\x30" + encode_length(end - pos) + data[pos:end]
        elif op == 9:
            other = rng.choice(corpus)
            cut = rng.randrange(size + 1)
            data = data[:cut] + other[rng.randrange(len(other) + 1) :]
        else:
            data += rng.randbytes(rng.choice((1, 2, 10)))
    return bytes(data[: MAX_MESSAGE + 16])


def inputs(count: int, seed: int) -> Iterator[bytes]:
    """``count`` fuzz inputs: the fixed extremes, the seeds themselves, then mutants."""
    rng = random.Random(seed)
    corpus = seeds()
    fixed = extremes() + corpus
    yield from fixed[:count]
    for _ in range(count - len(fixed)):
        yield mutate(rng, corpus)


_VALUE_TYPES: dict[str, tuple[type, ...]] = {
    "Integer32": (int,),
    "Counter32": (int,),
    "Gauge32": (int,),
    "TimeTicks": (int,),
    "Counter64": (int,),
    "OctetString": (bytes,),
    "Opaque": (bytes,),
    "ObjectIdentifier": (tuple,),
    "IpAddress": (str,),
    "Null": (type(None),),
    "noSuchObject": (type(None),),
    "noSuchInstance": (type(None),),
    "endOfMibView": (type(None),),
}


def check_accepted(data: bytes, msg: FastMessage) -> None:
    """What every accepted message must satisfy; AssertionError otherwise."""
    assert message_version(data) == {"v1": 0, "v2c": 1}[msg.version]
    assert (msg.version == "v1") == (msg.pdu == "v1-trap") == (msg.request_id is None)
    for oid, kind, value in msg.varbinds:
        assert 2 <= len(oid) <= 128 and all(isinstance(arc, int) and 0 <= arc < 2**32 for arc in oid)
        assert isinstance(value, _VALUE_TYPES[kind]), (kind, value)
    as_inform = FastMessage("v2c", msg.community, "inform", msg.request_id or 0, msg.varbinds)
    response = encode_inform_response(as_inform)
    _, start, _ = read_header(response, 0, len(response))
    _, _, pdu_at = read_header(response, start + 3, len(response))
    back = decode(response[:pdu_at] + b"\xa6" + response[pdu_at + 1 :])
    assert back.varbinds == msg.varbinds and back.community == msg.community
    if msg.pdu == "inform":
        # The acknowledgement is minimal BER of the same fields, so a forged inform from a
        # victim's address gets it hardly more bytes than the forger sent: no more at all but
        # for an unsigned value sent without its leading 00 (ber.decode_unsigned), re-encoded
        # with it (one octet, and one more where a length then needs its long form).
        assert len(encode_inform_response(msg)) <= len(data) + 2 * len(msg.varbinds) + 3, data.hex()


def _check_one_pass(data: bytes, version: int | str, msg: FastMessage | None, refused: str | None) -> None:
    """decode_unless_v3 (the listener's entry point) = message_version, then decode for v1/v2c."""
    try:
        got: object = decode_unless_v3(data)
    except Rejected as error:
        got = error.reason
    except Exception as error:
        escaped = type(error).__name__
        raise AssertionError(f"{escaped} escaped decode_unless_v3() for {data[:64].hex()}") from error
    if isinstance(version, str):
        expected: object = version  # the header's refusal
    elif version == 3:
        expected = None
    else:
        expected = msg if msg is not None else refused
    assert got == expected, (data[:64].hex(), got, expected)


def run(count: int, seed: int) -> dict[str, Any]:
    """Feed ``count`` inputs to decode() and message_version(); report outcomes, raise on a crash."""
    reasons: collections.Counter[str] = collections.Counter()
    accepted = 0
    slowest = 0.0
    slowest_input = b""
    started = time.perf_counter()
    for data in inputs(count, seed):
        begin = time.process_time()
        msg: FastMessage | None = None
        refused: str | None = None
        try:
            msg = decode(data)
            elapsed = time.process_time() - begin
        except Rejected as error:
            elapsed = time.process_time() - begin
            if error.reason not in REJECT_REASONS:
                raise AssertionError(f"undocumented reason {error.reason!r} for {data[:64].hex()}") from error
            reasons[error.reason] += 1
            refused = error.reason
        except Exception as error:
            raise AssertionError(f"{type(error).__name__} escaped decode() for {data[:64].hex()}") from error
        else:
            accepted += 1
            check_accepted(data, msg)
        version: int | str
        try:
            version = message_version(data)
        except Rejected as error:
            assert error.reason in REJECT_REASONS
            version = error.reason
        _check_one_pass(data, version, msg, refused)
        if elapsed > slowest:
            slowest, slowest_input = elapsed, data
    total = time.perf_counter() - started
    return {
        "inputs": count,
        "seed": seed,
        "accepted": accepted,
        "rejected": dict(reasons.most_common()),
        "crashes": 0,
        "seconds": round(total, 2),
        # CPU time of decode() alone: on a shared machine wall time would
        # mostly measure the scheduler.
        "slowest_input_cpu_ms": round(slowest * 1000, 3),
        "slowest_input_octets": len(slowest_input),
        "slowest_input_head": slowest_input[:32].hex(),
    }


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def _big_message(seq: int, value_size: int, extra_varbinds: int) -> bytes:
    """A valid v2c trap: ifDescr.1 = a distinct ``value_size``-octet value, plus small varbinds."""
    from trapd.listener.ber import encode_integer_content, encode_oid_content, encode_tlv

    def vb(oid: tuple[int, ...], tag: int, content: bytes) -> bytes:
        return encode_tlv(0x30, encode_tlv(0x06, encode_oid_content(oid)) + encode_tlv(tag, content))

    body = (
        vb((1, 3, 6, 1, 2, 1, 1, 3, 0), 0x43, encode_integer_content(seq))
        + vb((1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0), 0x06, encode_oid_content((1, 3, 6, 1, 6, 3, 1, 1, 5, 3)))
        + vb((1, 3, 6, 1, 2, 1, 2, 2, 1, 2, 1), 0x04, seq.to_bytes(4, "big") * (value_size // 4))
        + b"".join(
            vb((1, 3, 6, 1, 4, 1, 99, seq % 1000, i), 0x04, b"v%d" % (seq * extra_varbinds + i))
            for i in range(extra_varbinds)
        )
    )
    pdu = encode_tlv(0xA7, b"\x02\x01\x01\x02\x01\x00\x02\x01\x00" + encode_tlv(0x30, body))
    return encode_tlv(0x30, b"\x02\x01\x01" + encode_tlv(0x04, b"public") + pdu)


def run_stream(count: int, value_size: int, extra_varbinds: int) -> dict[str, Any]:
    """``count`` valid traps with distinct large values (and many small varbinds) through
    decode and the Normalizer, as the daemon does with every trap: RSS before, after and peak.
    Every receive-path cache is bounded in bytes, so RSS must level off (issue 14 item 1)."""
    import resource

    from trapd.mibs import MibConfig, MibResolver
    from trapd.normalize import Normalizer

    normalizer = Normalizer(MibResolver.load(MibConfig(dirs=())))
    normalizer.normalize(_to_raw(decode(_big_message(0, value_size, extra_varbinds))))
    before = _rss_mb()
    started = time.perf_counter()
    for seq in range(1, count + 1):
        normalizer.normalize(_to_raw(decode(_big_message(seq, value_size, extra_varbinds))))
    return {
        "traps": count,
        "value_octets": value_size,
        "extra_varbinds": extra_varbinds,
        "seconds": round(time.perf_counter() - started, 2),
        "rss_before_mb": round(before, 1),
        "rss_after_mb": round(_rss_mb(), 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "normalizer_cache_bytes": normalizer._known.bytes,
    }


def _to_raw(msg: FastMessage) -> Any:
    from trapd.listener.raw import RawNotification, Security

    return RawNotification("v2c", "trap", "127.0.0.1", 162, Security(community="public"), msg.varbinds, 0.0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument(
        "--stream",
        type=int,
        default=0,
        help="then N valid traps with large values: RSS",
    )
    parser.add_argument("--value-octets", type=int, default=60_000)
    parser.add_argument(
        "--extra-varbinds", type=int, default=0, help="small distinct varbinds per stream trap"
    )
    args = parser.parse_args()
    report = run(args.inputs, args.seed)
    if args.stream:
        report["stream"] = run_stream(args.stream, args.value_octets, args.extra_varbinds)
    import resource

    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
