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

from dataclasses import fields
from typing import Any

from trapd.display import display
from trapd.event import SNMP_TRAP_OID_OID, SYS_UPTIME_OID, Event, VarBind, new_event_id
from trapd.listener.raw import Oid, RawNotification, RawVarBind
from trapd.mibs import MibResolver

SNMP_TRAPS: Oid = (1, 3, 6, 1, 6, 3, 1, 1, 5)
SNMP_TRAP_ADDRESS_OID: Oid = (1, 3, 6, 1, 6, 3, 18, 1, 3, 0)
SNMP_TRAP_COMMUNITY_OID: Oid = (1, 3, 6, 1, 6, 3, 18, 1, 4, 0)
SNMP_TRAP_ENTERPRISE_OID: Oid = (1, 3, 6, 1, 6, 3, 1, 1, 4, 3, 0)

_INT_TYPES = frozenset({"Integer32", "Counter32", "Gauge32", "TimeTicks", "Counter64"})

# Fast construction of the frozen, slotted Event / VarBind dataclasses.
# A frozen dataclass __init__ stores each field through object.__setattr__,
# which made building one event (7 objects) cost ~25 µs on the reference VM,
# more than decoding the packet. Writing the slots through their descriptors
# gives the very same objects (tests compare them with ==) for a third of
# that. Event's derived index (_by_symbol) is left to be built on first use.
_new = object.__new__
_VB_SET = tuple(getattr(VarBind, f.name).__set__ for f in fields(VarBind))
_EV_FIELDS = tuple(f.name for f in fields(Event))
_EV_SET = tuple(getattr(Event, name).__set__ for name in _EV_FIELDS)


def _make_event(*values: Any) -> Event:
    ev: Event = _new(Event)
    for setter, value in zip(_EV_SET, values, strict=True):
        setter(ev, value)
    return ev


def v1_trap_oid(enterprise: Oid, generic: int, specific: int) -> Oid:
    """snmpTrapOID.0 for a v1 trap (RFC 3584 3.1 (2), (3)); () when generic is out of range."""
    if generic == 6:
        return (*enterprise, 0, specific)
    if 0 <= generic <= 5:
        return (*SNMP_TRAPS, generic + 1)
    return ()


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
    """Turns decoder output into :class:`trapd.event.Event` using one shared resolver."""

    def __init__(self, resolver: MibResolver) -> None:
        self.resolver = resolver

    def normalize(self, raw: RawNotification, event_id: str | None = None) -> Event:
        uptime: int | None = None
        trap_oid: Oid = ()
        rest: list[RawVarBind]
        if raw.version == "v1":
            uptime = raw.v1_timestamp
            if raw.v1_generic_trap is not None:
                enterprise = tuple(raw.v1_enterprise or ())
                trap_oid = v1_trap_oid(enterprise, raw.v1_generic_trap, raw.v1_specific_trap or 0)
            rest = v1_varbinds(raw)
        else:
            rest = []
            have_uptime = have_trap = False
            for raw_vb in raw.varbinds:
                oid = raw_vb[0]
                if not have_uptime and oid == SYS_UPTIME_OID and raw_vb[1] in _INT_TYPES:
                    uptime = raw_vb[2]  # type: ignore[assignment]  # an int for these types
                    have_uptime = True
                elif not have_trap and oid == SNMP_TRAP_OID_OID and raw_vb[1] == "ObjectIdentifier":
                    trap_oid = raw_vb[2]  # type: ignore[assignment]  # a tuple for OIDs
                    have_trap = True
                else:
                    rest.append(raw_vb)
        resolver = self.resolver
        describe = resolver.describe
        cached = resolver.cached
        s_oid, s_name, s_index, s_type, s_value, s_display = _VB_SET
        varbinds = []
        for oid, kind, value in rest:
            hit = cached(oid) or describe(oid)
            vb: VarBind = _new(VarBind)
            s_oid(vb, oid)
            s_name(vb, hit[0])
            s_index(vb, hit[1])
            s_type(vb, kind)
            s_value(vb, value)
            s_display(vb, display(kind, value, hit[2], resolver))
            varbinds.append(vb)
        trap_name = ""
        if trap_oid:
            trap_name = resolver.name_of(trap_oid)
        # Same order as Event's fields (checked at import below).
        return _make_event(
            event_id or new_event_id(raw.received_at),
            raw.received_at,
            raw.source,
            raw.source_port,
            raw.version,
            raw.kind,
            raw.security,
            uptime,
            trap_oid,
            trap_name,
            tuple(varbinds),
            None,
        )


_EXPECTED_EVENT_FIELDS = (
    "id",
    "received_at",
    "source",
    "source_port",
    "version",
    "kind",
    "security",
    "uptime",
    "trap_oid",
    "trap_name",
    "varbinds",
    "_by_symbol",
)
if _EV_FIELDS != _EXPECTED_EVENT_FIELDS:  # pragma: no cover - guards a change of the Event contract
    raise ImportError(f"trapd.event.Event fields changed to {_EV_FIELDS}; update trapd.normalize")
