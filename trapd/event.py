"""The normalized event: one shape for every SNMP version.

Everything after the listener (rules, templates, the journal, actions,
``trapd listen`` output) sees only :class:`Event`. It is immutable and
round-trips through JSON (``to_dict`` / ``from_dict``), which is the format
``trapd listen`` prints and ``trapd test`` reads.

JSON form of a varbind value: ints stay ints, ``bytes`` become a hex string
(no separators), OIDs become dotted strings, IpAddress stays dotted. The
``type`` field says how to read it back.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from trapd.bounded import BoundedCache
from trapd.listener.ber import uncarried
from trapd.listener.raw import Kind, Oid, RawValue, Security, SnmpType, Version
from trapd.secrets import REF_KEY, REFS, SecretError, is_reference, reference
from trapd.secrets import resolve as resolve_secret

SYS_UPTIME_OID: Oid = (1, 3, 6, 1, 2, 1, 1, 3, 0)
SNMP_TRAP_OID_OID: Oid = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)
# RFC 3584 appends the v1 community as a varbind: a fingerprint leaves it out, to_dict hides it.
SNMP_TRAP_COMMUNITY_OID: Oid = (1, 3, 6, 1, 6, 3, 18, 1, 4, 0)


def oid_str(oid: Oid) -> str:
    """``(1, 3, 6, 1)`` -> ``"1.3.6.1"``, remembered: rules and templates ask for the same OIDs per trap."""
    try:
        text = _oid_strs_get(oid)
    except TypeError:  # a list where a tuple belongs: the same text, just not remembered
        return ".".join(map(str, oid))
    if text is None:
        text = ".".join(map(str, oid))
        # Bounded in entries and bytes: a flood of distinct OIDs empties it now and then.
        _OID_STRS.put(oid, text, 200 + 40 * len(oid) + len(text))
    return text


_OID_STRS: BoundedCache[Oid, str] = BoundedCache(4096, 4 * 1024 * 1024)
_oid_strs_get = _OID_STRS.get


def parse_oid(text: str) -> Oid:
    """``"1.3.6.1"`` or ``".1.3.6.1"`` to a tuple; ValueError otherwise.

    Arcs are ASCII digits: ``str.isdigit`` alone let other scripts' digits through
    (``"\u0661\u0667"`` read as 17), and ``int`` takes ``-1`` and ``1_0``.
    """
    parts = text.strip().lstrip(".").split(".")
    if not parts or any(not (p.isascii() and p.isdigit()) for p in parts):
        raise ValueError(f"not a numeric OID: {text!r}")
    return tuple(int(p) for p in parts)


def refuse_uncarried(text: str, oid: Oid, error: type[ValueError] = ValueError) -> None:
    """Raise ``error`` when ``oid`` (given as ``text``) is one no SNMP message can carry.

    For OIDs an operator types for an event (``trapd test``): a sub-identifier of 2^32 or more,
    more than 128 of them (:func:`trapd.listener.ber.uncarried`, the bound the decoder and
    ``trapd check`` apply). Such an event is no trap's, and every rule would say "no match".
    """
    why = uncarried(oid)
    if why is not None:
        raise error(f"{text!r} can never be in a notification: {why}, which no SNMP message can carry")


@dataclass(frozen=True, slots=True)
class VarBind:
    """One variable binding, named where a MIB knows it.

    ``name`` is ``MODULE::symbol`` (``IF-MIB::ifIndex``) or, when no loaded
    MIB covers the OID, the numeric OID itself; ``index`` is what follows the
    symbol's own OID (``ifIndex.17`` gives ``(17,)``), empty when unnamed.
    """

    oid: Oid
    name: str
    index: Oid
    type: SnmpType
    value: RawValue
    display: str

    @property
    def symbol(self) -> str:
        """The bare symbol (``ifIndex``), or the numeric OID when unnamed."""
        return self.name.rpartition("::")[2]

    @property
    def index_str(self) -> str:
        return oid_str(self.index)

    def to_dict(self) -> dict[str, Any]:
        return {
            "oid": oid_str(self.oid),
            "name": self.name,
            "index": oid_str(self.index),
            "type": self.type,
            "value": _value_to_json(self.type, self.value),
            "display": self.display,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VarBind:
        t: SnmpType = d["type"]
        index = d.get("index") or ""
        return cls(
            oid=parse_oid(d["oid"]),
            name=d.get("name") or d["oid"],
            index=parse_oid(index) if index else (),
            type=t,
            value=_value_from_json(t, d.get("value")),
            display=d.get("display", ""),
        )


def _value_to_json(t: str, v: RawValue) -> Any:
    if isinstance(v, bytes):
        return v.hex()
    if isinstance(v, tuple):
        return oid_str(v)
    return v


def _value_from_json(t: str, v: Any) -> RawValue:
    if v is None:
        return None
    if is_reference(v):  # a secret left out (see Event.to_dict)
        return f"<secret {v[REF_KEY]}>".encode()
    if t in ("OctetString", "Opaque"):
        return bytes.fromhex(v)
    if t == "ObjectIdentifier":
        return parse_oid(v)
    if t == "IpAddress":
        return str(v)
    return int(v)


_counter = itertools.count()
_pid_tag = os.getpid() & 0xFFFF
_pid_hex = f"{_pid_tag:04x}"  # formatted once: new_event_id runs for every trap


def _retag_after_fork() -> None:
    # A worker forked by `trapd run` (service.workers) imported this module in its parent.
    global _pid_tag, _pid_hex
    _pid_tag = os.getpid() & 0xFFFF
    _pid_hex = f"{_pid_tag:04x}"


os.register_at_fork(after_in_child=_retag_after_fork)


def new_event_id(now: float | None = None) -> str:
    """A short id that sorts by time: ms timestamp, pid, counter (hex).

    Unique within a host without a random source on the receive path; the
    pid keeps several receiving processes (SO_REUSEPORT) apart.
    """
    ms = int((time.time() if now is None else now) * 1000)
    return "%011x%s%06x" % (ms, _pid_hex, next(_counter) & 0xFFFFFF)  # noqa: UP031 - a third cheaper than an f-string


def event_id_floor(when: float) -> str:
    """What every id :func:`new_event_id` made at ``when`` or later sorts after (and those made
    before it sort before): its millisecond prefix."""
    return "%011x" % int(when * 1000)  # noqa: UP031 - the same format as new_event_id's


@dataclass(frozen=True, slots=True)
class Event:
    """A received SNMP notification, normalized.

    ``trap_oid`` / ``trap_name``: the notification (snmpTrapOID.0 value; for
    v1 the RFC 3584 translation). ``uptime``: sysUpTime.0 in TimeTicks.
    ``varbinds``: every binding in order *after* sysUpTime.0 and
    snmpTrapOID.0 (those two are lifted into fields), including for v1 the
    snmpTrapAddress / snmpTrapCommunity / snmpTrapEnterprise bindings that
    RFC 3584 appends.
    """

    id: str
    received_at: float
    source: str
    source_port: int
    version: Version
    kind: Kind
    security: Security
    uptime: int | None
    trap_oid: Oid
    trap_name: str
    varbinds: tuple[VarBind, ...]
    # Name -> first binding, built on the first lookup: most events (those no rule
    # matches) are never asked, and building it for every trap cost ~4 µs.
    _by_symbol: dict[str, VarBind] | None = field(default=None, compare=False, repr=False)

    def varbind(self, name: str) -> VarBind | None:
        """The first binding named ``ifIndex`` / ``IF-MIB::ifIndex`` / a numeric OID."""
        by = self._by_symbol
        if by is None:
            by = {}
            for each in self.varbinds:
                by.setdefault(each.symbol, each)
                by.setdefault(each.name, each)
            object.__setattr__(self, "_by_symbol", by)
        vb = by.get(name)
        if vb is not None or not name[:1].isdigit():
            return vb
        try:
            oid = parse_oid(name)
        except ValueError:
            return None
        for vb in self.varbinds:
            if vb.oid == oid or vb.oid[: len(oid)] == oid:
                return vb
        return None

    def __iter__(self) -> Iterator[VarBind]:
        return iter(self.varbinds)

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON-able data (journal, ``trapd listen``, webhook and exec payloads).

        A configured community is a secret: it is given as a reference to where it was
        configured (``{"$secret": "env:TRAPD_COMMUNITY"}``), never as its value, here and
        in v1's snmpTrapCommunity.0 binding.
        """
        s = self.security
        security: dict[str, Any] = {k: getattr(s, k) for k in Security.__slots__ if getattr(s, k) is not None}
        hidden = None
        if s.community is not None:
            ref = REFS.reference(s.community)
            if ref is not None:
                security["community"] = reference(ref)
                hidden = s.community.encode("utf-8", "surrogateescape")
        varbinds = [vb.to_dict() for vb in self.varbinds]
        if hidden is not None:
            for d, vb in zip(varbinds, self.varbinds, strict=True):
                if vb.oid == SNMP_TRAP_COMMUNITY_OID and vb.value == hidden:
                    d["value"], d["display"] = security["community"], "(secret)"
        return {
            "id": self.id,
            "received_at": self.received_at,
            "source": self.source,
            "source_port": self.source_port,
            "version": self.version,
            "kind": self.kind,
            "security": security,
            "uptime": self.uptime,
            "trap_oid": oid_str(self.trap_oid),
            "trap_name": self.trap_name,
            "varbinds": varbinds,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Event:
        return cls(
            id=d.get("id") or new_event_id(),
            received_at=float(d.get("received_at") or time.time()),
            source=d["source"],
            source_port=int(d.get("source_port") or 0),
            version=d.get("version", "v2c"),
            kind=d.get("kind", "trap"),
            security=_security_from_dict(d.get("security") or {}),
            uptime=d.get("uptime"),
            trap_oid=parse_oid(d["trap_oid"]) if d.get("trap_oid") else (),  # () when the trap had none
            trap_name=d.get("trap_name") or d["trap_oid"],
            varbinds=tuple(VarBind.from_dict(v) for v in d.get("varbinds", ())),
        )


def event_fingerprint(event: Mapping[str, Any]) -> str | None:
    """Equal for the copies of one notification sent to several receivers, else different.

    Made of what the sender put in the notification: its address, sysUpTime, the
    notification OID and every varbind (OID, type, value) in order. Not of what differs
    between the copies or between receivers: the community (also its RFC 3584 varbind),
    v3 security fields (each receiver may use its own user), the receive time, the
    source port, trapd's event id. None when the notification has no sysUpTime: then
    two different notifications with the same content could not be told apart.
    ``event`` is :meth:`Event.to_dict`'s form (what the journal receives).
    """
    if event.get("uptime") is None:
        return None
    community = oid_str(SNMP_TRAP_COMMUNITY_OID)
    varbinds = [
        (vb.get("oid"), vb.get("type"), vb.get("value"))
        for vb in event.get("varbinds") or ()
        if vb.get("oid") != community
    ]
    text = json.dumps(
        [event.get("source"), event.get("uptime"), event.get("trap_oid"), varbinds], separators=(",", ":")
    )
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _security_from_dict(d: Mapping[str, Any]) -> Security:
    """A community given as a reference is resolved when this process knows it (the configuration
    that made it is loaded: ``trapd listen | trapd test``, a journaled event in the daemon), so
    ``match: community:`` still works; else it stays ``<secret REF>``. It is only ever in memory:
    :meth:`Event.to_dict` gives the reference again."""
    community = d.get("community")
    if isinstance(community, Mapping) and is_reference(community):
        ref = str(community[REF_KEY])
        try:
            value = str(resolve_secret(community))
        except SecretError:
            value = f"<secret {ref}>"
        d = {**d, "community": value}
    return Security(**d)
