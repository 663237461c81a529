"""What a decoder hands on: a notification as it came off the wire, before MIB names.

Every decoder produces this shape: the fast BER path for v1/v2c
(``trapd.listener.fastpath``), the fast USM path for v3 traps from known
senders (``trapd.listener.v3.usm``) and the pysnmp engine for the rest of v3
(``trapd.listener.v3``). ``trapd.normalize`` turns it into an
:class:`trapd.event.Event`. Varbinds are plain tuples rather than objects
because this is the receive path: at 10,000 traps/s every allocation shows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, TypeAlias

Oid: TypeAlias = tuple[int, ...]

# SNMP value type names, spelled as in SNMPv2-SMI (and RFC 3416 for the
# exception values). They are the ``type`` field of a normalized varbind.
SnmpType: TypeAlias = Literal[
    "Integer32",
    "OctetString",
    "Null",
    "ObjectIdentifier",
    "IpAddress",
    "Counter32",
    "Gauge32",
    "TimeTicks",
    "Opaque",
    "Counter64",
    "noSuchObject",
    "noSuchInstance",
    "endOfMibView",
]

# Python value per type:
#   Integer32, Counter32, Gauge32, TimeTicks, Counter64 -> int
#   OctetString, Opaque                                   -> bytes
#   ObjectIdentifier                                      -> Oid (tuple of int)
#   IpAddress                                             -> str, dotted quad
#   Null, noSuchObject, noSuchInstance, endOfMibView      -> None
RawValue: TypeAlias = int | bytes | Oid | str | None
RawVarBind: TypeAlias = tuple[Oid, SnmpType, RawValue]

# What a notification callback returns to say "I will call raw.ack myself, later".
DEFER_ACK = object()

Version: TypeAlias = Literal["v1", "v2c", "v3"]
Kind: TypeAlias = Literal["trap", "inform"]
SecurityLevel: TypeAlias = Literal["noAuthNoPriv", "authNoPriv", "authPriv"]


@dataclass(frozen=True, slots=True)
class Security:
    """Who the notification claims to be from, as far as SNMP security says.

    v1/v2c: ``community`` is the community name (it matched a configured one,
    so it is not a secret worth hiding from rules). v3: ``user``, ``level``,
    ``engine_id`` (the authoritative engine: the sender for traps, trapd for
    informs; hex, no 0x), ``context_engine_id`` (hex) and ``context_name``.
    """

    community: str | None = None
    user: str | None = None
    level: SecurityLevel | None = None
    engine_id: str | None = None
    context_engine_id: str | None = None
    context_name: str | None = None


@dataclass(slots=True)
class RawNotification:
    """One received notification, decoded but not yet named.

    For v2c/v3 ``varbinds`` is the PDU's list as sent (normally sysUpTime.0
    and snmpTrapOID.0 first). For v1 it is the Trap-PDU's variable bindings
    and the ``v1_*`` fields carry the Trap-PDU header; ``trapd.normalize``
    applies RFC 3584 section 3.1 to give every version the same shape.
    """

    version: Version
    kind: Kind
    source: str
    source_port: int
    security: Security
    varbinds: list[RawVarBind]
    received_at: float
    request_id: int | None = None
    v1_enterprise: Oid | None = None
    v1_agent_addr: str | None = None
    v1_generic_trap: int | None = None
    v1_specific_trap: int | None = None
    v1_timestamp: int | None = None
    # v2c informs: sends the Response. Called by the listener right after the
    # callback, unless the callback returned DEFER_ACK (trapd.listener.udp): then
    # the callback's owner calls it once the event is safe (journaled).
    ack: Callable[[], None] | None = None


# RFC 3416's standard traps: snmpTraps.N is generic-trap N - 1 of v1.
SNMP_TRAPS: Oid = (1, 3, 6, 1, 6, 3, 1, 1, 5)


def v1_trap_oid(enterprise: Oid, generic: int, specific: int) -> Oid:
    """snmpTrapOID.0 for a v1 trap (RFC 3584 3.1 (2), (3)); () when generic is out of range.

    specific-trap becomes a sub-identifier (0..2^32-1), but goes on the wire as an INTEGER:
    net-snmp's snmptrap sends 3000000000 as the signed -1294967296, other agents as the
    unsigned number. A negative one is read as the unsigned 32-bit number it encodes, as an
    OID has no negative sub-identifier.
    """
    if generic == 6:
        return (*enterprise, 0, specific & 0xFFFFFFFF)
    if 0 <= generic <= 5:
        return (*SNMP_TRAPS, generic + 1)
    return ()
