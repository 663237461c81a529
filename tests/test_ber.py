"""The BER primitives under the fast path: every bound and every refusal."""

from __future__ import annotations

import pickle

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trapd.listener.ber import (
    INT32_MAX,
    INT32_MIN,
    MAX_OID_ARCS,
    REJECT_REASONS,
    UINT32_MAX,
    UINT64_MAX,
    Rejected,
    decode_integer,
    decode_ipaddress,
    decode_oid,
    encode_integer_content,
    encode_length,
    encode_oid_content,
    encode_tlv,
    expect,
    read_header,
)
from trapd.listener.raw import Oid

DERANDOMIZED = settings(derandomize=True, max_examples=400, deadline=None)


def reason(call: object, *args: object) -> str:
    assert callable(call)
    with pytest.raises(Rejected) as excinfo:
        call(*args)
    assert excinfo.value.reason in REJECT_REASONS
    return excinfo.value.reason


def test_reject_reasons_are_unique_slugs() -> None:
    assert len(set(REJECT_REASONS)) == len(REJECT_REASONS)
    for slug in REJECT_REASONS:
        assert slug == slug.lower() and " " not in slug and slug.replace("-", "").isalpha()


def test_rejected_carries_reason_and_detail() -> None:
    error = Rejected("bad-oid", "at offset 7")
    assert error.reason == "bad-oid"
    assert str(error) == "bad-oid: at offset 7"
    assert str(Rejected("empty")) == "empty"
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), copy.reason, copy.detail, str(copy)) == (
        Rejected,
        "bad-oid",
        "at offset 7",
        str(error),
    )


# --- read_header / expect -------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "header"),
    [
        (b"\x04\x00", (0x04, 2, 2)),
        (b"\x04\x03abc", (0x04, 2, 5)),
        (b"\x04\x7f" + b"x" * 127, (0x04, 2, 129)),
        (b"\x04\x81\x80" + b"x" * 128, (0x04, 3, 131)),
        (b"\x04\x82\x01\x00" + b"x" * 256, (0x04, 4, 260)),
        (b"\x04\x83\x01\x00\x00" + b"x" * 65536, (0x04, 5, 65541)),
        (b"\x04\x84\x00\x00\x00\x02xy", (0x04, 6, 8)),
        # Non-minimal long forms some agents send are fine as long as they fit.
        (b"\x30\x82\x00\x03abc", (0x30, 4, 7)),
        (b"\x30\x81\x01a", (0x30, 3, 4)),
    ],
)
def test_read_header_short_and_long_forms(data: bytes, header: tuple[int, int, int]) -> None:
    assert read_header(data, 0, len(data)) == header


def test_read_header_respects_the_container_not_the_buffer() -> None:
    data = b"\x30\x05\x04\x03abc"
    # The inner OCTET STRING fits the buffer but not a container ending early.
    assert reason(read_header, data, 2, 6) == "truncated"
    assert read_header(data, 2, 7) == (0x04, 4, 7)


@pytest.mark.parametrize(
    ("data", "slug"),
    [
        (b"", "truncated"),
        (b"\x30", "truncated"),
        (b"\x30\x80\x00\x00", "indefinite-length"),
        (b"\x30\x85\x00\x00\x00\x00\x01a", "bad-length"),
        (b"\x30\xff", "bad-length"),
        (b"\x30\x82\x00", "truncated"),
        (b"\x30\x84\x00\x00\x01", "truncated"),
        (b"\x30\x03ab", "truncated"),
        (b"\x30\x84\xff\xff\xff\xff", "truncated"),
    ],
)
def test_read_header_refuses(data: bytes, slug: str) -> None:
    assert reason(read_header, data, 0, len(data)) == slug


def test_expect_checks_the_tag_in_both_length_forms() -> None:
    assert expect(b"\x02\x01\x05", 0, 3, 0x02) == (2, 3)
    assert expect(b"\x02\x81\x01\x05", 0, 4, 0x02) == (3, 4)
    assert reason(expect, b"\x04\x01\x05", 0, 3, 0x02) == "bad-tag"
    # A multi-byte tag (low bits 0x1F) is never an SNMP tag.
    assert reason(expect, b"\x1f\x02\x01\x00", 0, 4, 0x02) == "bad-tag"
    assert reason(expect, b"\x02\x05\x01", 0, 3, 0x02) == "truncated"
    assert reason(expect, b"\x02\x80\x01\x00\x00", 0, 5, 0x02) == "indefinite-length"


# --- integers --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "low", "high", "value"),
    [
        (b"\x00", INT32_MIN, INT32_MAX, 0),
        (b"\x7f", INT32_MIN, INT32_MAX, 127),
        (b"\x80", INT32_MIN, INT32_MAX, -128),
        (b"\xff\x80", INT32_MIN, INT32_MAX, -128),  # pyasn1's padding, accepted
        (b"\xff", INT32_MIN, INT32_MAX, -1),
        (b"\x7f\xff\xff\xff", INT32_MIN, INT32_MAX, INT32_MAX),
        (b"\x80\x00\x00\x00", INT32_MIN, INT32_MAX, INT32_MIN),
        (b"\x00\xff\xff\xff\xff", 0, UINT32_MAX, UINT32_MAX),
        (b"\x00\x00\x00\x01", 0, UINT32_MAX, 1),
        (b"\x00" + b"\xff" * 8, 0, UINT64_MAX, UINT64_MAX),
    ],
)
def test_decode_integer(content: bytes, low: int, high: int, value: int) -> None:
    assert decode_integer(b"\x99" + content + b"\x99", 1, 1 + len(content), low, high) == value


@pytest.mark.parametrize(
    ("content", "low", "high"),
    [
        (b"", INT32_MIN, INT32_MAX),
        (b"\x00\x80\x00\x00\x00", INT32_MIN, INT32_MAX),  # 2^31
        (b"\xff\x7f\xff\xff\xff", INT32_MIN, INT32_MAX),  # -2^31 - 1
        (b"\xff\xff\xff\xff", 0, UINT32_MAX),  # -1: a sloppy agent's 0xFFFFFFFF, not guessed at
        (b"\x01\x00\x00\x00\x00", 0, UINT32_MAX),  # 2^32
        (b"\x01" + b"\x00" * 8, 0, UINT64_MAX),  # 2^64
        (b"\x00" * 10, 0, UINT64_MAX),  # too long to be any SNMP integer
        (b"\x07", 0, 6),
    ],
)
def test_decode_integer_refuses(content: bytes, low: int, high: int) -> None:
    assert reason(decode_integer, content, 0, len(content), low, high) == "bad-integer"


@DERANDOMIZED
@given(st.integers(min_value=-(2**63), max_value=2**64 - 1))
def test_integer_round_trip_is_minimal(value: int) -> None:
    content = encode_integer_content(value)
    assert decode_integer(content, 0, len(content), -(2**63), 2**64 - 1) == value
    # Minimal: dropping the first octet must change the value (X.690 8.3.2).
    if len(content) > 1:
        shorter = int.from_bytes(content[1:], "big", signed=True)
        assert shorter != value


def test_encode_integer_content_known_values() -> None:
    assert encode_integer_content(0) == b"\x00"
    assert encode_integer_content(127) == b"\x7f"
    assert encode_integer_content(128) == b"\x00\x80"
    assert encode_integer_content(-128) == b"\x80"
    assert encode_integer_content(-129) == b"\xff\x7f"
    assert encode_integer_content(UINT32_MAX) == b"\x00\xff\xff\xff\xff"


# --- OIDs ------------------------------------------------------------------------------


def oid_content(hexstr: str) -> bytes:
    return bytes.fromhex(hexstr)


@pytest.mark.parametrize(
    ("content", "oid"),
    [
        ("2b060102010103 00", (1, 3, 6, 1, 2, 1, 1, 3, 0)),
        ("00", (0, 0)),
        ("27", (0, 39)),
        ("28", (1, 0)),
        ("4f", (1, 39)),
        ("50", (2, 0)),
        ("7f", (2, 47)),
        ("8137", (2, 103)),  # the first sub-identifier itself spans two octets
        ("2b0601040181dd1f", (1, 3, 6, 1, 4, 1, 28319)),
        ("2b8fffffff7f", (1, 3, 2**32 - 1)),
        ("2b8100", (1, 3, 128)),
        ("2b81808000", (1, 3, 2**21)),
    ],
)
def test_decode_oid(content: str, oid: Oid) -> None:
    raw = oid_content(content.replace(" ", ""))
    assert decode_oid(raw, 0, len(raw)) == oid
    assert encode_oid_content(oid) == raw


@pytest.mark.parametrize(
    "content",
    [
        "",
        "2b90808080 00",  # 2^32: one more than a sub-identifier may hold
        "2bffffffffffffffffff7f",  # far beyond, refused before big-int work
        "2b8001",  # padded with a leading 0x80
        "8001",  # padding in the first sub-identifier
        "2b06 81",  # ends inside a sub-identifier
        "2b" + "01" * 127,  # 129 sub-identifiers, all small
        "2b" + "8101" * 127,  # 129 sub-identifiers, multi-octet
        "2b" + "ff" * 1000 + "01",  # huge content
    ],
)
def test_decode_oid_refuses(content: str) -> None:
    raw = oid_content(content.replace(" ", ""))
    assert reason(decode_oid, raw, 0, len(raw)) == "bad-oid"


def test_oid_arc_limit_is_inclusive() -> None:
    small = oid_content("2b" + "01" * (MAX_OID_ARCS - 2))
    big = oid_content("2b" + "8101" * (MAX_OID_ARCS - 2))
    assert len(decode_oid(small, 0, len(small))) == MAX_OID_ARCS
    assert len(decode_oid(big, 0, len(big))) == MAX_OID_ARCS


oids = st.one_of(
    st.tuples(st.integers(0, 1), st.integers(0, 39)),
    st.tuples(st.just(2), st.integers(0, 2**32 - 81)),
).flatmap(
    lambda head: st.lists(st.integers(0, 2**32 - 1), max_size=MAX_OID_ARCS - 2).map(
        lambda tail: head + tuple(tail)
    )
)


@DERANDOMIZED
@given(oids)
def test_oid_round_trip(oid: Oid) -> None:
    content = encode_oid_content(oid)
    assert decode_oid(content, 0, len(content)) == oid


def test_long_oid_cache_stays_bounded_and_returns_the_same_oids() -> None:
    from trapd.listener import ber

    oids = [(1, 3, 6, 1, 4, 1, 9, 9, 315, n) for n in range(3 * ber._LONG_OID_CACHE_SIZE)]
    contents = [encode_oid_content(oid) for oid in oids]
    for _ in range(2):  # the second pass reads partly from the cache
        for oid, content in zip(oids, contents, strict=True):
            assert decode_oid(content, 0, len(content)) == oid
            assert len(ber._LONG_OID_CACHE) <= ber._LONG_OID_CACHE_SIZE
    # A refused OID is never remembered as if it were valid.
    padded = bytes.fromhex("2b8001")
    for _ in range(2):
        assert reason(decode_oid, padded, 0, 3) == "bad-oid"


@pytest.mark.parametrize(
    "oid",
    [
        (),
        (1,),
        (3, 1),
        (-1, 3),
        (1, 40),
        (1, -1),
        (0, 99),
        (1, 3, -1),
        (1, 3, 2**32),
        (2, 2**32 - 80),
        (1, 3, 300, -1),
    ],
)
def test_encode_oid_refuses_what_cannot_be_encoded(oid: Oid) -> None:
    with pytest.raises(ValueError):
        encode_oid_content(oid)


# --- the rest ------------------------------------------------------------------------


def test_decode_ipaddress() -> None:
    assert decode_ipaddress(b"\x0a\x00\xff\x01", 0, 4) == "10.0.255.1"
    assert reason(decode_ipaddress, b"\x0a\x00\xff", 0, 3) == "bad-value"
    assert reason(decode_ipaddress, b"\x0a\x00\xff\x01\x02", 0, 5) == "bad-value"


@pytest.mark.parametrize(
    ("length", "octets"),
    [
        (0, "00"),
        (127, "7f"),
        (128, "8180"),
        (255, "81ff"),
        (256, "820100"),
        (65535, "82ffff"),
        (65536, "83010000"),
    ],
)
def test_encode_length_is_minimal(length: int, octets: str) -> None:
    assert encode_length(length) == bytes.fromhex(octets)
    header = encode_tlv(0x04, b"x" * length)
    assert read_header(header, 0, len(header)) == (0x04, 1 + len(octets) // 2, len(header))
