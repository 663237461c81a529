"""BER primitives for the SNMP fast path: read one TLV, decode and encode the few SNMP types.

This is deliberately not a general ASN.1 codec. SNMP messages have a fixed
shape, so the message decoder (:mod:`trapd.listener.fastpath`) knows which tag
comes next and only needs these building blocks. Every reader works on a
``bytes`` object with explicit ``[pos, end)`` bounds instead of slicing
sub-buffers, so nothing is copied until a value is actually produced, and
every bound is checked before it is used: a malformed datagram ends in
:class:`Rejected` with a stable reason, never in ``IndexError``, a hang or a
huge allocation.

Readers raise :class:`Rejected`; encoders raise ``ValueError`` (their input
is ours, so a bad value there is a bug, not hostile traffic).
"""

from __future__ import annotations

import re
from typing import Final

from trapd.listener.raw import Oid

# Why a message was refused. Each slug is a metric label, so the set is small
# and stable; extend it only additively.
REJECT_REASONS: Final[tuple[str, ...]] = (
    # The datagram has no bytes at all.
    "empty",
    # Longer than MAX_MESSAGE (the largest UDP payload, over IPv6); never parsed.
    "oversized",
    # A header or a length runs past the end of the data that should contain it.
    "truncated",
    # Bytes left over: after the message, or inside a constructed element after
    # its last expected member (a varbind with a third member, a Trap-PDU with
    # an extra field, a PDU shorter than the message that carries it).
    "trailing-bytes",
    # A length field that cannot be right: more than 4 length octets, or the
    # reserved 0xFF.
    "bad-length",
    # The BER indefinite-length form (0x80); SNMP requires definite lengths.
    "indefinite-length",
    # A tag other than the one the SNMP shape requires at that position. This
    # covers unknown value types, multi-byte tags and any nesting beyond the
    # fixed shape (there is no recursion, so "too deep" is just a wrong tag).
    "bad-tag",
    # An INTEGER with no content octets, or outside its type's range
    # (Integer32/request-id signed 32-bit; Counter32/Gauge32/TimeTicks
    # unsigned 32-bit; Counter64 unsigned 64-bit).
    "bad-integer",
    # An OBJECT IDENTIFIER that is empty, has a sub-identifier padded with a
    # leading 0x80, ends inside a sub-identifier, has a sub-identifier of 2^32
    # or more, or has more than MAX_OID_ARCS sub-identifiers.
    "bad-oid",
    # The version INTEGER is not one this function handles (0 = v1, 1 = v2c;
    # message_version also accepts 3).
    "bad-version",
    # A well-formed SNMP PDU tag (0xA0..0xA8) that is not a notification for
    # this version: GetRequest, Response, a v2c PDU in a v1 message, ...
    "unsupported-pdu",
    # A value whose content is wrong for its type: IpAddress not 4 octets,
    # NULL or an exception value with content, or a type the message's
    # version does not have (Counter64 or exception values in v1).
    "bad-value",
)


class Rejected(Exception):
    """Raised for any message the fast path will not accept.

    ``reason`` is a short stable slug from :data:`REJECT_REASONS`, used as a
    metric label; the message text is for humans and may change.
    """

    __slots__ = ("detail", "reason")

    def __init__(self, reason: str, detail: str = "") -> None:
        # Both go to args so the exception pickles intact (for a listener
        # that hands rejections between processes).
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


# Universal and SNMP application tags used by the fast path.
TAG_INTEGER: Final = 0x02
TAG_OCTET_STRING: Final = 0x04
TAG_NULL: Final = 0x05
TAG_OID: Final = 0x06
TAG_SEQUENCE: Final = 0x30
TAG_IPADDRESS: Final = 0x40
TAG_COUNTER32: Final = 0x41
TAG_GAUGE32: Final = 0x42
TAG_TIMETICKS: Final = 0x43
TAG_OPAQUE: Final = 0x44
TAG_COUNTER64: Final = 0x46
TAG_NO_SUCH_OBJECT: Final = 0x80
TAG_NO_SUCH_INSTANCE: Final = 0x81
TAG_END_OF_MIB_VIEW: Final = 0x82

# net-snmp's MAX_OID_LEN; RFC 2578 section 3.5 also caps OIDs at 128 sub-ids.
MAX_OID_ARCS: Final = 128
MAX_SUBID: Final = 0xFFFFFFFF
# At most 127 encoded sub-identifiers (the first packs two arcs) of 5 octets each.
_MAX_OID_OCTETS: Final = (MAX_OID_ARCS - 1) * 5

INT32_MIN: Final = -0x80000000
INT32_MAX: Final = 0x7FFFFFFF
UINT32_MAX: Final = 0xFFFFFFFF
UINT64_MAX: Final = 0xFFFFFFFFFFFFFFFF


def read_header(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """Read the TLV header at ``data[pos]``, which must lie inside ``[pos, end)``.

    Returns ``(tag, content_start, content_end)``. Only single-octet tags
    exist in SNMP, so the tag is one byte; a multi-byte tag (low bits 0x1F)
    simply never equals an expected tag and ends as ``bad-tag`` in the caller.
    Long-form lengths of up to 4 octets are accepted, including non-minimal
    ones some agents send (``0x82 0x00 0x05``): the only rule that matters
    for safety is that the content fits exactly inside its container.
    """
    if pos + 2 > end:
        raise Rejected("truncated", f"TLV header at offset {pos}")
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length == 0x81:  # the long form SNMP uses most (PDUs of 128..255 octets): read inline
        if pos + 1 > end:
            raise Rejected("truncated", f"length octets at offset {pos - 2}")
        length = data[pos]
        pos += 1
    elif length & 0x80:
        count = length & 0x7F
        if count == 0:
            raise Rejected("indefinite-length", f"at offset {pos - 2}")
        if count > 4:
            raise Rejected("bad-length", f"{count} length octets at offset {pos - 2}")
        if pos + count > end:
            raise Rejected("truncated", f"length octets at offset {pos - 2}")
        length = int.from_bytes(data[pos : pos + count], "big")
        pos += count
    content_end = pos + length
    if content_end > end:
        raise Rejected("truncated", f"content of tag 0x{tag:02x} at offset {pos} needs {length} bytes")
    return tag, pos, content_end


def expect(data: bytes, pos: int, end: int, tag: int) -> tuple[int, int]:
    """Read a TLV header that must carry ``tag``; return its content bounds."""
    # The short form is read here rather than through read_header: this runs
    # for every fixed field of every message, and a call less is measurable.
    # fastpath.decode_varbinds inlines this same check (varbind, then its
    # name) for the same reason, once per varbind; a change here goes there too.
    if pos + 2 > end:
        raise Rejected("truncated", f"TLV header at offset {pos}")
    if data[pos] != tag:
        raise Rejected("bad-tag", f"0x{data[pos]:02x} at offset {pos}, expected 0x{tag:02x}")
    length = data[pos + 1]
    if length < 0x80:
        start = pos + 2
        content_end = start + length
        if content_end > end:
            raise Rejected("truncated", f"content of tag 0x{tag:02x} at offset {start} needs {length} bytes")
        return start, content_end
    _, start, content_end = read_header(data, pos, end)
    return start, content_end


def decode_integer(data: bytes, start: int, end: int, low: int, high: int) -> int:
    """Content octets of an INTEGER-encoded value, required to lie in ``[low, high]``.

    All SNMP integer types are BER INTEGERs (two's complement), so unsigned
    types get the same decoding and only a different range: a Counter32 of
    0xFFFFFFFF arrives as ``00 FF FF FF FF``, and ``FF FF FF FF`` is -1 (which
    :func:`decode_unsigned` reads as the agent meant it). Non-minimal content
    (a redundant leading 00 or FF) is accepted: pyasn1, and so every
    pysnmp-based agent, encodes -128 as ``FF 80``.
    """
    if start >= end:
        raise Rejected("bad-integer", f"no content octets at offset {start}")
    if end - start > 9:
        # Nine octets hold any 64-bit unsigned value; longer is padding at
        # best, and refusing it early keeps big-int work bounded.
        raise Rejected("bad-integer", f"{end - start} content octets at offset {start}")
    value = int.from_bytes(data[start:end], "big", signed=True)
    if value < low or value > high:
        raise Rejected("bad-integer", f"{value} outside {low}..{high} at offset {start}")
    return value


def decode_unsigned(data: bytes, start: int, end: int, high: int) -> int:
    """Content octets of an unsigned type (Counter32, Gauge32, TimeTicks: ``high`` 2^32-1;
    Counter64: 2^64-1), as :func:`decode_integer` with the range ``[0, high]``, but for one form.

    Some agents write the value in as many octets as it needs unsigned and leave out the 00
    that BER's two's complement wants before a high bit: ``FF FF FF FF`` for 4294967295.
    Read as BER that is -1, which no unsigned type holds, so the only meaning it can have is
    the unsigned one, and net-snmp's snmptrapd reads it so (a switch's trap is not dropped
    for it). Only content no longer than the type's own width gets this reading: a longer
    negative one (``FF FF FF FF FF``) is no such slip and stays ``bad-integer``.
    """
    if 0 < end - start <= (high.bit_length() + 7) // 8 and data[start] & 0x80:
        return int.from_bytes(data[start:end], "big")
    return decode_integer(data, start, end, 0, high)


def decode_oid(data: bytes, start: int, end: int) -> Oid:
    """Content octets of an OBJECT IDENTIFIER as a tuple of sub-identifiers.

    Most SNMP OIDs have every sub-identifier below 128, so every content
    octet is one sub-identifier: ``bytes.isascii`` checks that in C and the
    tuple is built without a Python-level loop. Only OIDs with a large
    sub-identifier (enterprise numbers, MAC-address indexes) take the loop.
    """
    length = end - start
    if length <= 0:
        raise Rejected("bad-oid", f"empty OID at offset {start}")
    if length > _MAX_OID_OCTETS:
        raise Rejected("bad-oid", f"{length} content octets at offset {start}")
    chunk = data[start:end]
    if chunk.isascii():
        if length >= MAX_OID_ARCS:
            raise Rejected("bad-oid", f"more than {MAX_OID_ARCS} sub-identifiers at offset {start}")
        first = chunk[0]
        if first < 40:
            return (0, first, *chunk[1:])
        if first < 80:
            return (1, first - 40, *chunk[1:])
        return (2, first - 80, *chunk[1:])
    oid = _long_oid_cache_get(chunk)
    if oid is None:
        oid = _decode_oid_long(chunk, start)
        if length <= _LONG_OID_CACHE_MAX_OCTETS:
            if len(_LONG_OID_CACHE) >= _LONG_OID_CACHE_SIZE:
                _LONG_OID_CACHE.clear()
            _LONG_OID_CACHE[chunk] = oid
    return oid


# OIDs with a sub-identifier of 128 or more need the per-octet loop below, 5x
# the cost of the common case. They are typically vendor enterprise OIDs and
# MAC-address indexes, which repeat from trap to trap in a storm, so decoded
# ones are remembered by their content octets. Only valid OIDs of modest
# length get in, the entry count is bounded (worst case about 3 MB), and a
# flood of distinct OIDs just empties it now and then.
_LONG_OID_CACHE: dict[bytes, Oid] = {}
_LONG_OID_CACHE_SIZE: Final = 1024
_LONG_OID_CACHE_MAX_OCTETS: Final = 64
_long_oid_cache_get = _LONG_OID_CACHE.get


_HIGH_OCTET: Final = re.compile(rb"[\x80-\xff]")


def _decode_oid_long(chunk: bytes, start: int) -> Oid:
    if chunk[-1] & 0x80:
        raise Rejected("bad-oid", f"last sub-identifier unterminated at offset {start}")
    # Everything before the first octet with the high bit set is one-octet
    # sub-identifiers (often all but a trailing index): take them in C.
    match = _HIGH_OCTET.search(chunk)
    split = match.start() if match is not None else len(chunk)
    arcs: list[int] = list(chunk[:split])
    append = arcs.append
    # ``value`` holds the septets of the sub-identifier read so far, already
    # shifted for the next one; it is 0 exactly at the start of a
    # sub-identifier, since a leading 0x80 (the only way to get 0 later) is
    # refused right there.
    value = 0
    for octet in chunk[split:]:
        if octet < 0x80:
            append(value | octet)
            value = 0
        elif value or octet != 0x80:
            value = (value | (octet & 0x7F)) << 7
            if value > MAX_SUBID:
                # Already 2^32 or more before the last septet; stopping here
                # also bounds the big-int work on hostile input.
                raise Rejected("bad-oid", f"sub-identifier of 2^32 or more at offset {start}")
        else:
            raise Rejected("bad-oid", f"sub-identifier padded with 0x80 at offset {start}")
    if len(arcs) >= MAX_OID_ARCS:
        raise Rejected("bad-oid", f"more than {MAX_OID_ARCS} sub-identifiers at offset {start}")
    first = arcs[0]
    # X.690 8.19.4: the first sub-identifier packs the first two arcs; the
    # first arc is 0 or 1 with the second below 40, or 2 with anything.
    if first < 40:
        return (0, *arcs)
    if first < 80:
        return (1, first - 40, *arcs[1:])
    return (2, first - 80, *arcs[1:])


def decode_ipaddress(data: bytes, start: int, end: int) -> str:
    if end - start != 4:
        raise Rejected("bad-value", f"IpAddress of {end - start} octets at offset {start}")
    return f"{data[start]}.{data[start + 1]}.{data[start + 2]}.{data[start + 3]}"


# --- encoding -----------------------------------------------------------------


def encode_length(length: int) -> bytes:
    """Minimal definite-length octets."""
    if length < 0x80:
        return bytes((length,))
    if length < 0x100:
        return bytes((0x81, length))
    if length < 0x10000:
        return bytes((0x82, length >> 8, length & 0xFF))
    if length < 0x1000000:
        return bytes((0x83, length >> 16, (length >> 8) & 0xFF, length & 0xFF))
    raise ValueError(f"length {length} is too large for an SNMP message")


def encode_tlv(tag: int, content: bytes) -> bytes:
    size = len(content)
    if size < 0x80:
        return bytes((tag, size)) + content
    return bytes((tag,)) + encode_length(size) + content


def encode_integer_content(value: int) -> bytes:
    """Minimal two's-complement content octets (also used for unsigned SNMP types)."""
    # For negative values, value + 1 has the same bit length as the
    # magnitude that must fit beside the sign bit.
    size = (value + (value < 0)).bit_length() // 8 + 1
    return value.to_bytes(size, "big", signed=True)


def uncarried(oid: Oid) -> str | None:
    """Why no SNMP message can carry ``oid`` (what :func:`decode_oid` refuses), None when one can.

    For names from elsewhere (MIB nodes, numeric OIDs in rules): such an OID
    can never be a received notification's, so a rule naming it would never match.
    """
    if len(oid) > MAX_OID_ARCS:
        return f"more than {MAX_OID_ARCS} sub-identifiers"
    big = next((arc for arc in oid if arc > MAX_SUBID), None)
    if big is not None:
        return f"sub-identifier {big} is 2^32 or more"
    if len(oid) >= 2 and (oid[0] > 2 or (oid[0] < 2 and oid[1] >= 40) or oid[0] * 40 + oid[1] > MAX_SUBID):
        return f"{oid[0]}.{oid[1]} cannot begin an OID (X.690 8.19.4)"
    return None


def encode_oid_content(oid: Oid) -> bytes:
    if len(oid) < 2 or not 0 <= oid[0] <= 2 or oid[1] < 0 or (oid[0] < 2 and oid[1] >= 40):
        raise ValueError(f"not an encodable OBJECT IDENTIFIER: {oid!r}")
    first = oid[0] * 40 + oid[1]
    rest = oid[2:]
    if first < 0x80 and (not rest or max(rest) < 0x80):
        try:
            return bytes((first, *rest))
        except ValueError:
            raise ValueError(f"negative sub-identifier in {oid!r}") from None
    content = _long_oid_encodings_get(oid)
    if content is None:
        content = _encode_oid_long(oid, first)
        if len(content) <= _LONG_OID_CACHE_MAX_OCTETS:
            if len(_LONG_OID_ENCODINGS) >= _LONG_OID_CACHE_SIZE:
                _LONG_OID_ENCODINGS.clear()
            _LONG_OID_ENCODINGS[oid] = content
    return content


# The encoding side of _LONG_OID_CACHE: an inform's acknowledgement repeats
# the inform's OIDs, and the long ones cost a loop per sub-identifier.
_LONG_OID_ENCODINGS: dict[Oid, bytes] = {}
_long_oid_encodings_get = _LONG_OID_ENCODINGS.get


def _encode_oid_long(oid: Oid, first: int) -> bytes:
    out = bytearray()
    for arc in (first, *oid[2:]):
        if arc < 0x80:
            if arc < 0:
                raise ValueError(f"negative sub-identifier in {oid!r}")
            out.append(arc)
            continue
        if arc > MAX_SUBID:  # what decode_oid would refuse (for 2.x, x + 80 counts)
            raise ValueError(f"sub-identifier of 2^32 or more in {oid!r}")
        septets = []
        while arc:
            septets.append((arc & 0x7F) | 0x80)
            arc >>= 7
        septets[0] &= 0x7F
        out.extend(reversed(septets))
    return bytes(out)
