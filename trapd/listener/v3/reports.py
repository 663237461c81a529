"""RFC 3414 reports: which usmStats counter goes with which of trapd's drop reasons, and the one
report pysnmp cannot send itself.

A report tells a v3 sender why its confirmed-class message (an inform) was refused, with the
value of the usmStats counter of that refusal (RFC 3414 section 3.2). trapd refuses most such
messages before pysnmp's engine sees them (:mod:`trapd.listener.v3.receiver`), and the fast
path refuses traps without it, so pysnmp's own usmStats counters miss most refusals: the values
a report carries are trapd's (:func:`usm_stats_value`, from :class:`ListenerStats`, the counters
the metrics export), whichever path refused what.

pysnmp answers a message to an engine ID that is not its own with usmStatsUnknownEngineIDs only
when the engine ID is empty (discovery); an inform to another, well-formed engine ID (a switch
configured with a stale one) it drops in silence, so its sender only timed out. net-snmp's
snmptrapd answers it with that report (carrying its own engine ID: this is how discovery works),
and so does trapd (:func:`unknown_engine_id_report`).
"""

from __future__ import annotations

from typing import Final

from trapd.listener.ber import (
    TAG_COUNTER32,
    TAG_INTEGER,
    TAG_OCTET_STRING,
    TAG_OID,
    TAG_SEQUENCE,
    encode_integer_content,
    encode_oid_content,
    encode_tlv,
)
from trapd.listener.stats import ListenerStats
from trapd.listener.v3.header import V3Header

__all__ = [
    "USM_STATS",
    "USM_STATS_REASONS",
    "unknown_engine_id_report",
    "usm_stats_counts",
    "usm_stats_value",
]

USM_STATS: Final = (1, 3, 6, 1, 6, 3, 15, 1, 1)  # SNMP-USER-BASED-SM-MIB::usmStats
# usmStats column -> trapd's drop reason of the same refusal
USM_STATS_REASONS: Final = {
    1: "unsupported-security-level",  # usmStatsUnsupportedSecLevels
    2: "not-in-time-window",  # usmStatsNotInTimeWindows
    3: "unknown-user",  # usmStatsUnknownUserNames
    4: "unknown-engine-id",  # usmStatsUnknownEngineIDs
    5: "wrong-digest",  # usmStatsWrongDigests
    6: "decryption-error",  # usmStatsDecryptionErrors
}
_NOT_IN_TIME_WINDOWS: Final = 2
_UNKNOWN_ENGINE_IDS: Final = 4
_TAG_REPORT: Final = 0xA8
_MSG_MAX_SIZE: Final = 65507  # what trapd takes (a UDP datagram), as net-snmp sends it


def usm_stats_value(stats: ListenerStats, column: int, pending: bool) -> int:
    """The usmStats counter ``column`` as trapd counts it: the drops of its reason, and for
    usmStatsUnknownEngineIDs and usmStatsNotInTimeWindows the engine-ID probes and time
    synchronizations (RFC 3414 section 4 counts them there; trapd does not call them drops).
    ``pending``: the message the report answers is not counted yet (add it). With
    ``service.workers`` > 1 the other workers' counts (``stats.usm_elsewhere``) are added: the
    unit is one engine, whose counter a sender reads."""
    value = _own_count(stats, column) + int(pending) + stats.usm_elsewhere.get(column, 0)
    return value % (1 << 32)  # Counter32 wraps


def usm_stats_counts(stats: ListenerStats) -> dict[int, int]:
    """This process's own count of every usmStats counter (column -> count), for the supervisor's sum."""
    return {column: _own_count(stats, column) for column in USM_STATS_REASONS}


def _own_count(stats: ListenerStats, column: int) -> int:
    value = stats.dropped[USM_STATS_REASONS[column]]
    if column == _UNKNOWN_ENGINE_IDS:
        value += stats.v3_engine_probes
    elif column == _NOT_IN_TIME_WINDOWS:
        value += stats.v3_time_syncs
    return value


def unknown_engine_id_report(header: V3Header, engine_id: bytes, boots: int, etime: int, count: int) -> bytes:
    """The usmStatsUnknownEngineIDs report (RFC 3414 3.2 step 3b, RFC 3412 7.1.3) for ``header``'s
    message: noAuthNoPriv, trapd's ``engine_id``, ``boots`` and ``etime`` (so that the sender
    can discover them), the message's msgID and user name, request-id 0 (the PDU of an
    encrypted message is not read), as net-snmp's snmptrapd sends it."""
    counter = encode_tlv(TAG_COUNTER32, encode_integer_content(count))
    name = encode_tlv(TAG_OID, encode_oid_content((*USM_STATS, _UNKNOWN_ENGINE_IDS, 0)))
    varbind = encode_tlv(TAG_SEQUENCE, name + counter)
    zero = encode_tlv(TAG_INTEGER, b"\x00")
    report = encode_tlv(_TAG_REPORT, zero + zero + zero + encode_tlv(TAG_SEQUENCE, varbind))
    scoped = encode_tlv(
        TAG_SEQUENCE, encode_tlv(TAG_OCTET_STRING, engine_id) + encode_tlv(TAG_OCTET_STRING, b"") + report
    )
    usm = encode_tlv(
        TAG_SEQUENCE,
        encode_tlv(TAG_OCTET_STRING, engine_id)
        + encode_tlv(TAG_INTEGER, encode_integer_content(boots))
        + encode_tlv(TAG_INTEGER, encode_integer_content(etime))
        + encode_tlv(TAG_OCTET_STRING, header.user)
        + encode_tlv(TAG_OCTET_STRING, b"")
        + encode_tlv(TAG_OCTET_STRING, b""),
    )
    global_data = encode_tlv(
        TAG_SEQUENCE,
        encode_tlv(TAG_INTEGER, encode_integer_content(header.msg_id))
        + encode_tlv(TAG_INTEGER, encode_integer_content(_MSG_MAX_SIZE))
        + encode_tlv(TAG_OCTET_STRING, b"\x00")
        + encode_tlv(TAG_INTEGER, b"\x03"),
    )
    return encode_tlv(
        TAG_SEQUENCE,
        encode_tlv(TAG_INTEGER, b"\x03") + global_data + encode_tlv(TAG_OCTET_STRING, usm) + scoped,
    )
