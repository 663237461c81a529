"""RawNotification -> Event: one shape for SNMPv1, v2c and v3.

What happens here, per notification:

* SNMPv1 Trap-PDUs are translated as RFC 3584 section 3.1 says:
  sysUpTime.0 is the time-stamp; snmpTrapOID.0 is ``snmpTraps.(generic+1)``
  (1.3.6.1.6.3.1.1.5.1-6) for generic-trap 0..5 and
  ``enterprise.0.specific-trap`` for enterpriseSpecific(6); the v1 bindings
  are kept and followed by snmpTrapAddress.0 (IpAddress, the agent-addr),
  snmpTrapCommunity.0 (OctetString, the community) and snmpTrapEnterprise.0
  (OID, the enterprise), for generic traps too, each unless the v1 bindings
  already hold it. A generic-trap outside 0..6 has no translation: the event
  is kept with ``trap_oid == ()``.
* v2c/v3: the first sysUpTime.0 (an integer value) and the first
  snmpTrapOID.0 (an OID value) are lifted into ``Event.uptime`` and
  ``Event.trap_oid``; RFC 3416 puts them first, but a sloppy agent that puts
  them elsewhere still gets them lifted. When one is missing the event is
  still produced: ``uptime`` None, or ``trap_oid == ()`` and ``trap_name ==
  ""``. Nothing is dropped for lack of data.
* Every other binding keeps its place, with its MIB name and index
  (:class:`trapd.mibs.MibResolver`) and a display string
  (:mod:`trapd.display`).

This runs for every trap (10,000/s target), so it does plain attribute and
dict work only; names come from the resolver's per-OID cache.
"""

from __future__ import annotations

import sys
from dataclasses import fields
from typing import Any

from trapd.bounded import BoundedCache
from trapd.display import display
from trapd.event import (
    SNMP_TRAP_COMMUNITY_OID,
    SNMP_TRAP_OID_OID,
    SYS_UPTIME_OID,
    Event,
    VarBind,
    new_event_id,
)
from trapd.listener.raw import Oid, RawNotification, RawVarBind, v1_trap_oid
from trapd.mibs import MibResolver

SNMP_TRAP_ADDRESS_OID: Oid = (1, 3, 6, 1, 6, 3, 18, 1, 3, 0)
SNMP_TRAP_ENTERPRISE_OID: Oid = (1, 3, 6, 1, 6, 3, 1, 1, 4, 3, 0)

_INT_TYPES = frozenset({"Integer32", "Counter32", "Gauge32", "TimeTicks", "Counter64"})
# What Normalizer remembers (see its docstring): at most 4,096 varbinds and 4 MiB (by the
# estimate of _cost), of the types whose values repeat from trap to trap (not TimeTicks,
# Counter32/64), with values of at most 512 octets: a big value rarely repeats, and 4,096
# of them would be gigabytes (issue 14 item 1: 65 KB OCTET STRINGs took RSS to 1 GB).
_KNOWN_SIZE = 4096
KNOWN_MAX_BYTES = 4 * 1024 * 1024
KNOWN_MAX_VALUE = 512
# A remembered entry beyond its value and display text: the dict slot, the key tuple, the
# VarBind and the OID tuple's header (measured with sys.getsizeof on CPython 3.11).
_ENTRY_OVERHEAD = 400
_REPEATING_TYPES = frozenset(
    {"Integer32", "OctetString", "Null", "ObjectIdentifier", "IpAddress", "Gauge32", "Opaque"}
)

# Fast construction of the frozen, slotted Event / VarBind dataclasses.
# A frozen dataclass __init__ stores each field through object.__setattr__
# (7 objects per linkDown: ~25 µs on the reference VM, more than decoding the
# packet). Instead each object starts as an instance of an unfrozen twin class
# with the very same slots, is filled with plain attribute stores (the
# interpreter's fastest kind), and is then given its real class. The result
# is the same object a constructor would build (tests compare them with ==):
# CPython allows the class change exactly because the slot layout is
# identical, which is checked once below. This costs less than half of
# writing each slot through its descriptor, the previous way. Event's
# derived index (_by_symbol) is left None, to be built on first use.
_new = object.__new__


class _VarBindSlots:
    __slots__ = VarBind.__slots__
    oid: Oid
    name: str
    index: Oid
    type: str
    value: object
    display: str


class _EventSlots:
    __slots__ = Event.__slots__
    id: str
    received_at: float
    source: str
    source_port: int
    version: str
    kind: str
    security: object
    uptime: int | None
    trap_oid: Oid
    trap_name: str
    varbinds: tuple[Any, ...]
    _by_symbol: dict[str, VarBind] | None


def _check_twins() -> None:
    """Fail at import, not on the first trap, if a change to Event or VarBind broke the twins."""
    for twin, real in ((_VarBindSlots, VarBind), (_EventSlots, Event)):
        names = tuple(f.name for f in fields(real))
        if twin.__slots__ != names:  # pragma: no cover - guards a change of the Event contract
            raise ImportError(f"{real.__name__} fields changed to {names}; update trapd.normalize")
        probe = _new(twin)
        probe.__class__ = real  # TypeError here if the layouts differ


_check_twins()


def v1_varbinds(raw: RawNotification) -> list[RawVarBind]:
    """The v1 bindings plus the three RFC 3584 3.1 (4) ones, each unless already present."""
    vbs = list(raw.varbinds)
    present = {vb[0] for vb in vbs}
    community = raw.security.community
    extra: list[RawVarBind] = [
        (SNMP_TRAP_ADDRESS_OID, "IpAddress", raw.v1_agent_addr or "0.0.0.0"),
        (
            SNMP_TRAP_COMMUNITY_OID,
            "OctetString",
            community.encode("utf-8", "surrogateescape") if community is not None else b"",
        ),
        (SNMP_TRAP_ENTERPRISE_OID, "ObjectIdentifier", tuple(raw.v1_enterprise or ())),
    ]
    vbs += [vb for vb in extra if vb[0] not in present]
    return vbs


class Normalizer:
    """Turns decoder output into :class:`trapd.event.Event` using one shared resolver.

    Normalized varbinds are remembered by their raw ``(oid, type, value)``:
    in a storm most bindings of a trap (snmpTrapOID's neighbours: ifIndex,
    ifDescr, ifOperStatus...) are the very ones the last traps carried, and
    a :class:`VarBind` is immutable, so events may share it. A hit costs one
    dict lookup instead of a name lookup, a display string and a new object.
    Like the decoder's table (``fastpath._KNOWN``), only types whose values
    repeat get in (no clocks or counters), only small values, and the table is
    bounded in entries and in bytes (:class:`trapd.bounded.BoundedCache`).
    """

    def __init__(self, resolver: MibResolver) -> None:
        self.resolver = resolver
        self._known: BoundedCache[RawVarBind, VarBind] = BoundedCache(_KNOWN_SIZE, KNOWN_MAX_BYTES)

    def normalize(self, raw: RawNotification, event_id: str | None = None) -> Event:
        uptime: int | None = None
        trap_oid: Oid = ()
        known_get = self._known.get
        varbinds: list[VarBind] = []
        append = varbinds.append
        if raw.version == "v1":
            uptime = raw.v1_timestamp
            if raw.v1_generic_trap is not None:
                enterprise = tuple(raw.v1_enterprise or ())
                trap_oid = v1_trap_oid(enterprise, raw.v1_generic_trap, raw.v1_specific_trap or 0)
            for raw_vb in v1_varbinds(raw):
                append(known_get(raw_vb) or self._varbind(raw_vb))
        else:
            have_uptime = have_trap = False
            for raw_vb in raw.varbinds:  # one pass: lift the two, name the rest
                oid = raw_vb[0]
                if not have_uptime and oid == SYS_UPTIME_OID and raw_vb[1] in _INT_TYPES:
                    uptime = raw_vb[2]  # type: ignore[assignment]  # an int for these types
                    have_uptime = True
                elif not have_trap and oid == SNMP_TRAP_OID_OID and raw_vb[1] == "ObjectIdentifier":
                    trap_oid = raw_vb[2]  # type: ignore[assignment]  # a tuple for OIDs
                    have_trap = True
                else:
                    append(known_get(raw_vb) or self._varbind(raw_vb))
        trap_name = ""
        if trap_oid:
            trap_name = self.resolver.name_of(trap_oid)
        ev = _new(_EventSlots)
        ev.id = event_id or new_event_id(raw.received_at)
        ev.received_at = raw.received_at
        ev.source = raw.source
        ev.source_port = raw.source_port
        ev.version = raw.version
        ev.kind = raw.kind
        ev.security = raw.security
        ev.uptime = uptime
        ev.trap_oid = trap_oid
        ev.trap_name = trap_name
        ev.varbinds = tuple(varbinds)
        ev._by_symbol = None
        ev.__class__ = Event  # type: ignore[assignment]
        return ev  # type: ignore[return-value]  # an Event now (see _VarBindSlots)

    def _varbind(self, raw_vb: RawVarBind) -> VarBind:
        """A new VarBind (named, displayed), remembered when its type is one whose values repeat."""
        oid, kind, value = raw_vb
        resolver = self.resolver
        hit = resolver.cached(oid) or resolver.describe(oid)
        vb = _new(_VarBindSlots)
        vb.oid = oid
        vb.name = hit[0]
        vb.index = hit[1]
        vb.type = kind
        vb.value = value
        vb.display = display(kind, value, hit[2], resolver)
        vb.__class__ = VarBind  # type: ignore[assignment]
        if kind in _REPEATING_TYPES:
            size = sys.getsizeof(value) if value is not None else 0
            if size <= KNOWN_MAX_VALUE + 64:  # + the object header of a bytes or str
                cost = _ENTRY_OVERHEAD + size + 8 * len(oid) + sys.getsizeof(vb.display)
                self._known.put(raw_vb, vb, cost)  # type: ignore[arg-type]
        return vb  # type: ignore[return-value]
