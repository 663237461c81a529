"""The fast receive path: decode SNMPv1/v2c notifications, encode the inform acknowledgement.

pyasn1 (under pysnmp) spends about 875 µs on one v2c trap; at the 10,000
traps/s trapd must take in a storm that is several cores' worth. SNMP
notifications have one fixed shape, so this module walks exactly that shape
with the primitives in :mod:`trapd.listener.ber` and nothing more::

    Message ::= SEQUENCE { version INTEGER, community OCTET STRING, pdu }
    v1:  Trap-PDU [4] { enterprise OID, agent-addr IpAddress, generic-trap INTEGER,
                        specific-trap INTEGER, time-stamp TimeTicks, VarBindList }
    v2c: SNMPv2-Trap-PDU [7] / InformRequest-PDU [6]
                      { request-id INTEGER, error-status INTEGER, error-index INTEGER, VarBindList }
    VarBindList ::= SEQUENCE OF SEQUENCE { name OID, value }

Anything else is refused with :class:`Rejected` and a reason from
:data:`REJECT_REASONS` (documented where they are defined, in ``ber``). The
decoder never raises anything else and does work linear in the datagram's
size: there is no recursion, every length is checked against its container
before use, and integers and OIDs are bounded before any big-int arithmetic.

Decisions a reader might not guess:

* Opaque (0x44) is kept as its raw content octets (``bytes``): its payload is
  itself BER of whatever the agent chose (often a float from the UCD MIB),
  and interpreting it is a display concern, not the receiver's.
* A v2c trap or inform with zero varbinds, or without sysUpTime.0 and
  snmpTrapOID.0 first, is kept as sent: dropping it would lose a
  notification, and ``trapd.normalize`` copes with what is missing.
* error-status and error-index of a v2c trap/inform should be 0 (RFC 3416
  4.2.6/4.2.7) but only need to be valid 32-bit integers here: a sloppy
  agent's non-zero value changes nothing about the notification. (pysnmp
  refuses a negative error-index or one beyond the varbind count; this is
  the one place the differential test allows the two to differ.)
* generic-trap is any Integer32, not only RFC 1157's named 0..6: ASN.1's
  named numbers do not constrain an INTEGER, and net-snmp's snmptrapd takes
  7, 100 or -1 ("Unknown Type Trap"; snmptrap sends them). RFC 3584 3.1
  translates only 0..6, so such a trap's event has no trap OID
  (:func:`trapd.listener.raw.v1_trap_oid`); snmptrapd's own translation
  makes up snmpTraps.(generic+1), which names no notification.
* An unsigned value (TimeTicks, Counter32/64, Gauge32) written without the
  00 octet BER wants before a high bit (``FF FF FF FF`` for 4294967295) is
  read unsigned, as net-snmp reads it (:func:`trapd.listener.ber.decode_unsigned`);
  pysnmp refuses it, the other place the differential test allows a difference.
* An INTEGER value is taken from -2^31 to 2^32-1 (type ``Integer32``), not
  only Integer32's range: agents put unsigned 32-bit numbers (flags, an
  address as a number) in an INTEGER, net-snmp's snmptrapd takes them
  (``INTEGER: 4294967295``), and one such value would refuse the whole
  trap. pysnmp refuses them: allowed in the differential test too.
* A v1 agent-addr of fewer than 4 octets, or tagged OCTET STRING instead of
  IpAddress, is kept with its missing octets as zeros (an empty one is
  0.0.0.0), as net-snmp's snmptrapd reads it: it only feeds snmpTrapAddress.0,
  and the trap is the switch's all the same. More than 4 octets stays
  ``bad-value`` (snmptrapd drops that too).
* A Counter64 in a v1 message is kept: RFC 1155's ObjectSyntax has none
  (it came with SMIv2) and RFC 3584's translation never puts one there, but
  net-snmp's snmptrap -v 1 sends one as given (so does a net-snmp based
  agent) and snmptrapd takes it; refusing would drop the whole trap. pysnmp's
  v1 decoder refuses it. The v2 exception values (noSuchObject,
  noSuchInstance, endOfMibView) in a v1 message stay ``bad-value``, a
  deliberate difference: snmptrapd logs such a trap without that binding,
  but an exception value only answers a request (RFC 3416 4.2.1), no
  notification carries one, and v1 has none.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from trapd.listener.ber import (
    INT32_MAX,
    INT32_MIN,
    MAX_OID_ARCS,
    REJECT_REASONS,
    TAG_COUNTER32,
    TAG_COUNTER64,
    TAG_END_OF_MIB_VIEW,
    TAG_GAUGE32,
    TAG_INTEGER,
    TAG_IPADDRESS,
    TAG_NO_SUCH_INSTANCE,
    TAG_NO_SUCH_OBJECT,
    TAG_NULL,
    TAG_OCTET_STRING,
    TAG_OID,
    TAG_OPAQUE,
    TAG_SEQUENCE,
    TAG_TIMETICKS,
    UINT32_MAX,
    UINT64_MAX,
    Rejected,
    decode_integer,
    decode_ipaddress,
    decode_oid,
    decode_unsigned,
    encode_integer_content,
    encode_length,
    encode_oid_content,
    encode_tlv,
    expect,
    read_header,
)
from trapd.listener.raw import Oid, RawValue, RawVarBind

__all__ = [
    "MAX_MESSAGE",
    "REJECT_REASONS",
    "FastMessage",
    "Rejected",
    "decode",
    "decode_pdu_body",
    "decode_unless_v3",
    "encode_inform_response",
    "inform_response",
    "message_version",
]

# The largest UDP payload: 65,535 - 8 UDP header octets over IPv6 (without jumbograms), where
# the IP header is not part of the length; over IPv4 the 20 octets of the IP header leave 65,507.
# One bound for both: a socket does not say which family a datagram came over, and net-snmp's
# snmptrapd takes the IPv6 maximum too.
MAX_MESSAGE: Final = 65527

_PDU_GET_REQUEST: Final = 0xA0
_PDU_RESPONSE: Final = 0xA2
_PDU_V1_TRAP: Final = 0xA4
_PDU_INFORM: Final = 0xA6
_PDU_V2_TRAP: Final = 0xA7
_PDU_REPORT: Final = 0xA8  # the highest PDU tag any SNMP version defines

_ERROR_TOO_BIG: Final = 1
# error-status 0 and error-index 0, as every well-behaved trap and inform has them.
_ZERO_ERROR_FIELDS: Final = b"\x02\x01\x00\x02\x01\x00"
_V2C_VERSION: Final = b"\x02\x01\x01"  # version INTEGER 1


@dataclass(slots=True)
class FastMessage:
    """One decoded v1/v2c notification message, before it becomes a RawNotification.

    ``varbinds`` holds ``(oid, type name, value)`` tuples with the Python
    value per type that :mod:`trapd.listener.raw` defines. ``request_id`` is
    set for v2c (trap and inform), None for v1; the ``v1_*`` fields are the
    v1 Trap-PDU header and None for v2c.
    """

    version: Literal["v1", "v2c"]
    community: bytes
    pdu: Literal["v1-trap", "trap", "inform"]
    request_id: int | None
    varbinds: list[RawVarBind]
    v1_enterprise: Oid | None = None
    v1_agent_addr: str | None = None
    v1_generic_trap: int | None = None
    v1_specific_trap: int | None = None
    v1_timestamp: int | None = None


def _message_header(data: bytes) -> tuple[int, int, int]:
    """Check the outer SEQUENCE and read the version; return (version, next pos, message end)."""
    size = len(data)
    if size == 0:
        raise Rejected("empty")
    if size > MAX_MESSAGE:
        raise Rejected("oversized", f"{size} octets")
    start, end = expect(data, 0, size, TAG_SEQUENCE)
    if end != size:
        raise Rejected("trailing-bytes", f"{size - end} octets after the message")
    version_start, version_end = expect(data, start, end, TAG_INTEGER)
    if version_start == version_end:
        raise Rejected("bad-integer", "version has no content octets")
    if version_end - version_start > 1:
        # A minimal encoding of 0, 1 or 3 is one octet; anything longer is
        # another version or padding, and either way not ours.
        raise Rejected("bad-version", "version INTEGER longer than one octet")
    return data[version_start], version_end, end


def message_version(data: bytes) -> int:
    """Read only the outer SEQUENCE header and the version INTEGER: 0 = v1, 1 = v2c, 3 = v3.

    The listener routes v3 to pysnmp by this without decoding the rest. The
    outer length must match the datagram exactly (a cheap check that catches
    most garbage before pysnmp spends anything on it). Versions other than
    0, 1 and 3 are ``bad-version``; a malformed header is rejected like in
    :func:`decode`.
    """
    version = _message_header(data)[0]
    if version not in (0, 1, 3):
        raise Rejected("bad-version", f"version {version}")
    return version


def decode(data: bytes) -> FastMessage:
    """Decode a v1 Trap-PDU, v2c SNMPv2-Trap-PDU or v2c InformRequest-PDU message.

    Anything else raises :class:`Rejected`: another PDU type (GetRequest,
    Response, a v2c PDU in a v1 message, ...) is ``unsupported-pdu``, and
    version 3 is ``bad-version`` (it goes to pysnmp, see
    :func:`message_version`). ``data`` is normally ``bytes`` (what asyncio's
    ``datagram_received`` gives); a bytearray or memoryview is copied to
    bytes first so that values never alias a reused receive buffer.
    """
    if type(data) is not bytes:
        data = bytes(memoryview(data))
    version, pos, end = _message_header(data)
    if version > 1:
        raise Rejected("bad-version", f"version {version} is not v1/v2c")
    return _decode_body(data, version, pos, end)


def decode_unless_v3(data: bytes) -> FastMessage | None:
    """:func:`message_version` and :func:`decode` in one pass: the listener's entry point.

    A v1/v2c message is decoded as :func:`decode` does; a version 3 message
    returns None after exactly the header checks :func:`message_version`
    makes (it goes to the v3 path). Any other version, and any message either
    would refuse, raises the same :class:`Rejected` reason. Reading the
    header once saves what ``message_version`` cost per trap (a tenth of
    decoding a linkDown).
    """
    if type(data) is not bytes:
        data = bytes(memoryview(data))
    usual = _usual_v2c(data)
    if usual is not None:
        pdu, request_id, community, start = usual
        return FastMessage("v2c", community, pdu, request_id, decode_varbinds(data, start, len(data), False))
    version, pos, end = _message_header(data)
    if version > 1:
        if version == 3:
            return None
        raise Rejected("bad-version", f"version {version}")
    return _decode_body(data, version, pos, end)


def _usual_v2c(data: bytes) -> tuple[Literal["trap", "inform"], int, bytes, int] | None:
    """The usual v2c trap or inform's envelope in one go: (pdu, request-id, community, varbinds at).

    Nearly every notification in a storm is a v2c trap under 258 octets with
    short or one-octet long-form lengths, a short community, a request-id of
    at most 4 octets and zero error fields. That shape is checked here with
    index reads and no call per field; the checks are those of
    :func:`message_version` and :func:`decode` for it, and the varbind list
    must end where the message ends. Anything else, including anything
    wrong, returns None and takes the general path, which decides every
    refusal (so the reasons stay the same: tests/test_fastpath_fuzz.py holds
    the two paths to the same answers). An IndexError only means "shorter
    than this shape".
    """
    try:
        size = len(data)
        if data[0] != TAG_SEQUENCE:
            return None
        length = data[1]
        if length < 0x80:
            pos = 2
        elif length == 0x81:
            length = data[2]
            pos = 3
        else:
            return None
        if pos + length != size or data[pos : pos + 3] != _V2C_VERSION or data[pos + 3] != TAG_OCTET_STRING:
            return None
        length = data[pos + 4]
        if length >= 0x80:
            return None
        community = data[pos + 5 : pos + 5 + length]
        pos += 5 + length
        tag = data[pos]
        if tag == _PDU_V2_TRAP:
            pdu: Literal["trap", "inform"] = "trap"
        elif tag == _PDU_INFORM:
            pdu = "inform"
        else:
            return None
        length = data[pos + 1]
        if length < 0x80:
            pos += 2
        elif length == 0x81:
            length = data[pos + 2]
            pos += 3
        else:
            return None
        if pos + length != size or data[pos] != TAG_INTEGER:
            return None
        length = data[pos + 1]
        if not 0 < length <= 4:  # so always within request-id's Integer32
            return None
        request_id = _from_bytes(data[pos + 2 : pos + 2 + length], "big", signed=True)
        pos += 2 + length
        if data[pos : pos + 6] != _ZERO_ERROR_FIELDS or data[pos + 6] != TAG_SEQUENCE:
            return None
        length = data[pos + 7]
        if length < 0x80:
            pos += 8
        elif length == 0x81:
            length = data[pos + 8]
            pos += 9
        else:
            return None
        if pos + length != size:
            return None
    except IndexError:
        return None
    return pdu, request_id, community, pos


def _decode_body(data: bytes, version: int, pos: int, end: int) -> FastMessage:
    """Everything after the version INTEGER of a v1 (0) or v2c (1) message."""
    community_start, pos = expect(data, pos, end, TAG_OCTET_STRING)
    community = data[community_start:pos]
    pdu_tag, pos, pdu_end = read_header(data, pos, end)
    if pdu_end != end:
        raise Rejected("trailing-bytes", f"{end - pdu_end} octets after the PDU")
    if version == 0:
        if pdu_tag != _PDU_V1_TRAP:
            raise _pdu_rejection(pdu_tag, "v1")
        return _decode_v1_trap(data, pos, end, community)
    if pdu_tag == _PDU_V2_TRAP:
        pdu: Literal["trap", "inform"] = "trap"
    elif pdu_tag == _PDU_INFORM:
        pdu = "inform"
    else:
        raise _pdu_rejection(pdu_tag, "v2c")
    request_id, _, _, varbinds = decode_pdu_body(data, pos, end)  # error fields ignored: see module doc
    return FastMessage("v2c", community, pdu, request_id, varbinds)


def decode_pdu_body(data: bytes, pos: int, end: int) -> tuple[int, int, int, list[RawVarBind]]:
    """The content ``[pos, end)`` of an SNMPv2 PDU: (request-id, error-status, error-index, varbinds).

    RFC 3416's PDU ::= SEQUENCE { request-id, error-status, error-index,
    VarBindList }, each INTEGER a signed 32-bit value (request-id up to
    2^32-1, see below), and nothing after the list. The one reader of a v2
    PDU's fields: v2c messages here, and the ScopedPDU of every v3 message
    (:mod:`trapd.listener.v3.scoped`), so a PDU means the same, or is refused
    for the same reason, in every version.
    """
    start, pos = expect(data, pos, end, TAG_INTEGER)
    # Up to 2^32-1: an agent's counter past 2^31 written unsigned. RFC 3416 bounds request-id
    # to Integer32, but net-snmp's snmptrapd takes such an inform and answers it with that
    # request-id; refused, the agent would resend the inform until it gave up.
    request_id = decode_integer(data, start, pos, INT32_MIN, UINT32_MAX)
    if pos + 6 <= end and data[pos : pos + 6] == _ZERO_ERROR_FIELDS:
        status = index = 0
        pos += 6  # the usual case, checked in one comparison
    else:
        start, pos = expect(data, pos, end, TAG_INTEGER)
        status = decode_integer(data, start, pos, INT32_MIN, INT32_MAX)
        start, pos = expect(data, pos, end, TAG_INTEGER)
        index = decode_integer(data, start, pos, INT32_MIN, INT32_MAX)
    start, pos = expect(data, pos, end, TAG_SEQUENCE)
    if pos != end:
        raise Rejected("trailing-bytes", f"{end - pos} octets after the varbind list")
    return request_id, status, index, decode_varbinds(data, start, pos, False)


def _pdu_rejection(tag: int, version: str) -> Rejected:
    if _PDU_GET_REQUEST <= tag <= _PDU_REPORT:
        return Rejected("unsupported-pdu", f"PDU tag 0x{tag:02x} in a {version} message")
    return Rejected("bad-tag", f"0x{tag:02x} where a PDU belongs")


def _decode_v1_trap(data: bytes, pos: int, end: int, community: bytes) -> FastMessage:
    start, pos = expect(data, pos, end, TAG_OID)
    enterprise = decode_oid(data, start, pos)
    # Fewer than 4 octets, or the OCTET STRING tag, as net-snmp's snmptrapd takes them (module doc).
    agent_tag, start, pos = read_header(data, pos, end)
    if agent_tag not in (TAG_IPADDRESS, TAG_OCTET_STRING):
        raise Rejected("bad-tag", f"0x{agent_tag:02x} at offset {start}, expected the agent-addr")
    if pos - start == 4:
        agent_addr = decode_ipaddress(data, start, pos)
    elif pos - start < 4:
        agent_addr = decode_ipaddress(data[start:pos].ljust(4, b"\x00"), 0, 4)
    else:
        raise Rejected("bad-value", f"agent-addr of {pos - start} octets at offset {start}")
    start, pos = expect(data, pos, end, TAG_INTEGER)
    # RFC 1157 names 0..6 but does not constrain the INTEGER; net-snmp's snmptrapd takes any
    # value (see the module doc), so a 7 from an agent is an event, not a refusal.
    generic = decode_integer(data, start, pos, INT32_MIN, INT32_MAX)
    start, pos = expect(data, pos, end, TAG_INTEGER)
    # Unconstrained in RFC 1157 and a sub-identifier (0..2^32-1) in RFC 3584: net-snmp writes
    # 3000000000 as a signed 32-bit INTEGER, other agents as the unsigned number. Both are kept.
    specific = decode_integer(data, start, pos, INT32_MIN, UINT32_MAX)
    start, pos = expect(data, pos, end, TAG_TIMETICKS)
    timestamp = decode_unsigned(data, start, pos, UINT32_MAX)
    start, pos = expect(data, pos, end, TAG_SEQUENCE)
    if pos != end:
        raise Rejected("trailing-bytes", f"{end - pos} octets after the varbind list")
    return FastMessage(
        "v1",
        community,
        "v1-trap",
        None,
        decode_varbinds(data, start, pos, True),
        enterprise,
        agent_addr,
        generic,
        specific,
        timestamp,
    )


def decode_varbinds(data: bytes, pos: int, end: int, v1: bool) -> list[RawVarBind]:
    """Decode the content of a VarBindList (``data`` must be ``bytes``).

    This loop is the hot spot (it runs once per varbind, the rest once per
    message), so the short-form headers are read inline and the generic
    :func:`read_header` is only called for long-form lengths.

    Varbinds repeat from trap to trap in a storm (the same snmpTrapOID, and
    for each port the same ifIndex, ifDescr, ifOperStatus...), so a decoded
    varbind is remembered by its content octets (:data:`_KNOWN`) and the
    next identical one costs a slice and a dict lookup instead of its
    decoding. Only accepted varbinds get in, so every refusal is still
    decided by the code below, and only types that decode the same in v1
    and v2c (not the exception values, which v1 refuses; Counter64 is a counter).
    Clocks and counters (TimeTicks, Counter32) never repeat and would only
    churn the table, so they stay out too.
    """
    varbinds: list[RawVarBind] = []
    append = varbinds.append
    while pos < end:
        # VarBind ::= SEQUENCE { name OBJECT IDENTIFIER, value ObjectSyntax }
        # ber.expect(data, pos, end, TAG_SEQUENCE), inlined on purpose (see the
        # docstring); keep the two in step.
        if pos + 2 > end:
            raise Rejected("truncated", f"varbind header at offset {pos}")
        if data[pos] != TAG_SEQUENCE:
            raise Rejected("bad-tag", f"0x{data[pos]:02x} at offset {pos}, expected a varbind SEQUENCE")
        length = data[pos + 1]
        if length < 0x80:
            vb_start = pos + 2
            vb_end = vb_start + length
            if vb_end > end:
                raise Rejected("truncated", f"varbind at offset {pos}")
        else:
            _, vb_start, vb_end = read_header(data, pos, end)
        key = data[vb_start:vb_end]
        known = _known_get(key)
        if known is not None:
            append(known)
            pos = vb_end
            continue

        # ber.expect(data, vb_start, vb_end, TAG_OID), inlined like the one above.
        if vb_start + 2 > vb_end:
            raise Rejected("truncated", f"varbind name at offset {vb_start}")
        if data[vb_start] != TAG_OID:
            raise Rejected("bad-tag", f"0x{data[vb_start]:02x} at offset {vb_start}, expected an OID")
        length = data[vb_start + 1]
        if length < 0x80:
            start = vb_start + 2
            value_pos = start + length
            if value_pos > vb_end:
                raise Rejected("truncated", f"varbind name at offset {vb_start}")
        else:
            _, start, value_pos = read_header(data, vb_start, vb_end)
        chunk = data[start:value_pos]
        # The common case inline (see ber.decode_oid): every sub-identifier
        # below 128, so each content octet is one sub-identifier. (A dict
        # cache of decoded names was measured too: no faster than this.)
        if 0 < len(chunk) < MAX_OID_ARCS and chunk.isascii():
            first = chunk[0]
            if first < 40:
                oid: Oid = (0, first, *chunk[1:])
            elif first < 80:
                oid = (1, first - 40, *chunk[1:])
            else:
                oid = (2, first - 80, *chunk[1:])
        else:
            oid = decode_oid(data, start, value_pos)

        if value_pos + 2 > vb_end:
            raise Rejected("truncated", f"varbind value at offset {value_pos}")
        tag = data[value_pos]
        length = data[value_pos + 1]
        if length < 0x80:
            start = value_pos + 2
            value_end = start + length
        else:
            tag, start, value_end = read_header(data, value_pos, vb_end)
        if value_end != vb_end:
            if value_end > vb_end:
                raise Rejected("truncated", f"varbind value at offset {value_pos}")
            raise Rejected("trailing-bytes", f"{vb_end - value_end} octets after a varbind value")

        size = value_end - start
        vb: RawVarBind
        if tag == TAG_INTEGER:
            if size == 1:
                number = data[start]
                vb = (oid, "Integer32", number - 256 if number & 0x80 else number)
            else:
                # Up to 2^32-1: an unsigned number an agent put in an INTEGER (module doc).
                vb = (oid, "Integer32", decode_integer(data, start, value_end, INT32_MIN, UINT32_MAX))
        elif tag == TAG_OCTET_STRING:
            vb = (oid, "OctetString", data[start:value_end])
        elif TAG_COUNTER32 <= tag <= TAG_TIMETICKS:
            # Counter32, Gauge32, TimeTicks inline: a clear sign bit and at
            # most 5 octets (5 only after a zero octet) is always in range,
            # and int.from_bytes without keywords is its cheapest form.
            if 0 < size <= 5 and not data[start] & 0x80 and (size < 5 or not data[start]):
                number = _from_bytes(data[start:value_end])
            else:
                number = decode_unsigned(data, start, value_end, UINT32_MAX)
            vb = (oid, _UNSIGNED32_NAMES[tag - TAG_COUNTER32], number)
        elif tag == TAG_OID:
            vb = (oid, "ObjectIdentifier", decode_oid(data, start, value_end))
        elif tag == TAG_IPADDRESS:
            vb = (oid, "IpAddress", decode_ipaddress(data, start, value_end))
        elif tag == TAG_COUNTER64:  # in v1 too: see module doc
            vb = (oid, "Counter64", decode_unsigned(data, start, value_end, UINT64_MAX))
        elif tag == TAG_NULL:
            if start != value_end:
                raise Rejected("bad-value", f"NULL with content at offset {value_pos}")
            vb = (oid, "Null", None)
        elif tag == TAG_OPAQUE:
            vb = (oid, "Opaque", data[start:value_end])
        elif TAG_NO_SUCH_OBJECT <= tag <= TAG_END_OF_MIB_VIEW:
            if v1:
                raise Rejected("bad-value", f"SNMPv2 exception value in a v1 message at offset {value_pos}")
            if start != value_end:
                raise Rejected("bad-value", f"exception value with content at offset {value_pos}")
            vb = (oid, _EXCEPTION_NAMES[tag - TAG_NO_SUCH_OBJECT], None)
        else:
            raise Rejected("bad-tag", f"0x{tag:02x} at offset {value_pos} is not an SNMP value type")
        append(vb)
        if tag in _REPEATING_TAGS and len(key) <= _KNOWN_MAX_OCTETS:
            if len(_KNOWN) >= _KNOWN_SIZE:
                _KNOWN.clear()  # a flood of distinct varbinds empties it now and then; memory stays bounded
            _KNOWN[key] = vb
        pos = vb_end
    return varbinds


# Decoded varbinds by content octets (see decode_varbinds). At most 4,096
# entries of at most 64 octets: about 1.5 MB in the worst case. The values are
# immutable (ints, bytes, str, tuples), so sharing them between traps is safe.
_KNOWN: dict[bytes, RawVarBind] = {}
_known_get = _KNOWN.get
_KNOWN_SIZE: Final = 4096
_KNOWN_MAX_OCTETS: Final = 64
_REPEATING_TAGS: Final = frozenset(
    {TAG_INTEGER, TAG_OCTET_STRING, TAG_NULL, TAG_OID, TAG_IPADDRESS, TAG_GAUGE32, TAG_OPAQUE}
)

_from_bytes: Final = int.from_bytes
_UNSIGNED32_NAMES: Final = ("Counter32", "Gauge32", "TimeTicks")
_EXCEPTION_NAMES: Final = ("noSuchObject", "noSuchInstance", "endOfMibView")


# --- the inform acknowledgement ------------------------------------------------

_ZERO_TLV: Final = b"\x02\x01\x00"


def encode_inform_response(msg: FastMessage, limit: int = MAX_MESSAGE) -> bytes:
    """The v2c Response-PDU that acknowledges an InformRequest: see :func:`inform_response`."""
    return inform_response(msg, limit)[0]


def inform_response(msg: FastMessage, limit: int = MAX_MESSAGE) -> tuple[bytes, bool]:
    """The v2c Response-PDU that acknowledges an InformRequest (RFC 3416 4.2.7), and whether it says tooBig.

    Same version, community and request-id, error-status 0, error-index 0
    and the same varbinds, re-encoded in minimal BER. Should that exceed
    ``limit`` (the largest UDP payload to the sender: 65,507 octets over IPv4,
    :data:`MAX_MESSAGE` over IPv6), RFC 3416 4.2.7 asks for a tooBig response
    with no varbinds instead, which is what this returns. The re-encoding can
    be a few octets longer than the inform: an unsigned value written without
    its leading 00 octet (ff ff ff ff read as 4294967295) gains it.
    """
    if msg.version != "v2c" or msg.pdu != "inform" or msg.request_id is None:
        raise ValueError("only a v2c InformRequest is acknowledged")
    head = encode_tlv(TAG_INTEGER, encode_integer_content(msg.request_id))
    varbind_list = _encode_varbinds(msg.varbinds)
    message = _response(msg.community, head + _ZERO_TLV + _ZERO_TLV, varbind_list)
    if len(message) <= limit:
        return message, False
    error = encode_tlv(TAG_INTEGER, encode_integer_content(_ERROR_TOO_BIG))
    return _response(msg.community, head + error + _ZERO_TLV, b""), True


def _response(community: bytes, header_fields: bytes, varbind_list: bytes) -> bytes:
    pdu = encode_tlv(_PDU_RESPONSE, header_fields + encode_tlv(TAG_SEQUENCE, varbind_list))
    body = b"\x02\x01\x01" + encode_tlv(TAG_OCTET_STRING, community) + pdu
    return bytes((TAG_SEQUENCE,)) + encode_length(len(body)) + body


def _encode_varbinds(varbinds: list[RawVarBind]) -> bytes:
    """The content of a VarBindList. Short forms are built inline: this runs once per varbind."""
    parts: list[bytes] = []
    append = parts.append
    for oid, kind, value in varbinds:
        name = encode_oid_content(oid)
        integer_type = _INTEGER_TYPES.get(kind)
        if integer_type is not None and type(value) is int:
            tag, lowest, highest = integer_type
            if not lowest <= value <= highest:
                raise ValueError(f"{value} is out of range for {kind}")
            # Minimal two's complement, as in ber.encode_integer_content.
            content = value.to_bytes((value + (value < 0)).bit_length() // 8 + 1, "big", signed=True)
            encoded = bytes((tag, len(content))) + content
        else:
            encoded = _encode_value(kind, value)
        size = len(name) + len(encoded) + 2
        if size < 0x80:  # then the name is short too
            append(bytes((TAG_SEQUENCE, size, TAG_OID, len(name))) + name + encoded)
        else:
            append(encode_tlv(TAG_SEQUENCE, encode_tlv(TAG_OID, name) + encoded))
    return b"".join(parts)


# type name -> (tag, lowest, highest) for the INTEGER-encoded types.
_INTEGER_TYPES: Final = {
    "Integer32": (TAG_INTEGER, INT32_MIN, UINT32_MAX),  # as decode_varbinds takes it
    "TimeTicks": (TAG_TIMETICKS, 0, UINT32_MAX),
    "Counter32": (TAG_COUNTER32, 0, UINT32_MAX),
    "Gauge32": (TAG_GAUGE32, 0, UINT32_MAX),
    "Counter64": (TAG_COUNTER64, 0, UINT64_MAX),
}
_EMPTY_TAGS: Final = {
    "Null": TAG_NULL,
    "noSuchObject": TAG_NO_SUCH_OBJECT,
    "noSuchInstance": TAG_NO_SUCH_INSTANCE,
    "endOfMibView": TAG_END_OF_MIB_VIEW,
}


def _encode_value(kind: str, value: RawValue) -> bytes:
    """One value TLV; ValueError when the value does not fit its type (a hand-built message's bug)."""
    integer_type = _INTEGER_TYPES.get(kind)
    if integer_type is not None and type(value) is int:
        tag, lowest, highest = integer_type
        if not lowest <= value <= highest:
            raise ValueError(f"{value} is out of range for {kind}")
        return encode_tlv(tag, encode_integer_content(value))
    if kind == "OctetString" and type(value) is bytes:
        return encode_tlv(TAG_OCTET_STRING, value)
    if kind == "ObjectIdentifier" and type(value) is tuple:
        return encode_tlv(TAG_OID, encode_oid_content(value))
    if kind == "IpAddress" and type(value) is str:
        try:
            octets = bytes(int(part) for part in value.split("."))
        except ValueError:
            octets = b""
        if len(octets) != 4:
            raise ValueError(f"not a dotted-quad IpAddress: {value!r}")
        return bytes((TAG_IPADDRESS, 4)) + octets
    if kind == "Opaque" and type(value) is bytes:
        return encode_tlv(TAG_OPAQUE, value)
    if kind in _EMPTY_TAGS and value is None:
        return bytes((_EMPTY_TAGS[kind], 0))
    raise ValueError(f"cannot encode a {kind} varbind with value {value!r}")
