"""A varbind's instance suffix decoded by its table's INDEX clause (RFC 2578 section 7.7).

``ipNetToMediaPhysAddress.17.10.0.0.1`` is the row of ipNetToMediaTable whose
INDEX { ipNetToMediaIfIndex, ipNetToMediaNetAddress } is 17 and 10.0.0.1;
``cpsIfViolationCount.10101`` (INDEX { ifIndex }) is about port 10101. The
decoded INDEX objects are given as bindings of their own (``IF-MIB::ifIndex``
= 10101, typed and displayed as the MIB says), so that rules and templates
treat them as they treat the varbinds sent (docs/rules.md, "Index objects").

The suffix comes from the network: decoding reads each sub-identifier at most
once (a suffix has at most 128, the BER decoder's bound), allocates no more
than the suffix's size, and anything that does not fit the INDEX clause (too
short, left over, an octet above 255, an address of five sub-identifiers) is
:class:`UndecodableIndex` with the reason, never another exception.
"""

from __future__ import annotations

import time

from trapd.display import display
from trapd.event import VarBind, oid_str
from trapd.listener.raw import Oid, SnmpType
from trapd.mibs import IndexObject, MibResolver
from trapd.service.logging import get_logger

log = get_logger(__name__)

# What an INDEX object of each SMI base type is sent as in a varbind.
_INT_TYPES: dict[str, SnmpType] = {
    "Integer32": "Integer32",
    "Unsigned32": "Gauge32",
    "Gauge32": "Gauge32",
    "Counter32": "Counter32",
    "TimeTicks": "TimeTicks",
    "Counter64": "Counter64",
}
# The BER decoder's bound on an OID's length; a suffix from elsewhere (a rule test's event) is held to it too.
MAX_SUFFIX = 128


class UndecodableIndex(ValueError):
    """An instance suffix that the row's INDEX clause does not describe; str() says why."""


# Undecodable suffixes seen, and the log's rate bound: one warning per LOG_INTERVAL with the
# count since the last one, whatever a sender makes of its suffixes.
LOG_INTERVAL = 60.0
_undecodable = {"total": 0, "unlogged": 0}
_last_log = [-LOG_INTERVAL]


def undecodable_total() -> int:
    """Undecodable instance suffixes met by rules and templates since the start."""
    return _undecodable["total"]


def _note_undecodable(index: str, suffix: Oid, why: UndecodableIndex) -> None:
    _undecodable["total"] += 1
    _undecodable["unlogged"] += 1
    now = time.monotonic()
    if now - _last_log[0] >= LOG_INTERVAL:
        _last_log[0] = now
        more, _undecodable["unlogged"] = _undecodable["unlogged"] - 1, 0
        # MIB names and the suffix's numbers (cut short): nothing here is the sender's text.
        log.warning(str(why), index=index, suffix=oid_str(suffix[:40]), more_since_last=more)


def index_objects(resolver: MibResolver, vb: VarBind) -> tuple[VarBind, ...]:
    """The INDEX objects of ``vb``'s row with the values its suffix gives; () for what is no column.

    UndecodableIndex when the suffix does not fit the INDEX clause.
    """
    if not vb.index or len(vb.index) >= len(vb.oid):
        return ()
    column = vb.oid[: len(vb.oid) - len(vb.index)]
    spec = resolver.row_index(column[:-1])
    if spec is None:
        return ()
    return decode_suffix(resolver, spec, vb.index)


def decode_suffix(resolver: MibResolver, spec: tuple[IndexObject, ...], suffix: Oid) -> tuple[VarBind, ...]:
    """``suffix`` decoded by the INDEX objects ``spec``: one binding each; UndecodableIndex (counted,
    logged at most once a minute) when it does not fit."""
    try:
        return _decode(resolver, spec, suffix)
    except UndecodableIndex as why:
        _note_undecodable(", ".join(obj[1] for obj in spec), suffix, why)
        raise


def _decode(resolver: MibResolver, spec: tuple[IndexObject, ...], suffix: Oid) -> tuple[VarBind, ...]:
    if len(suffix) > MAX_SUFFIX:
        raise UndecodableIndex(f"undecodable index: longer than {MAX_SUFFIX} sub-identifiers")
    out: list[VarBind] = []
    pos, end = 0, len(suffix)
    for column, name, kind, fixed, implied, syn_no in spec:
        symbol = name.rpartition("::")[2]
        start = pos
        syntax = resolver.syntax_at(syn_no)
        vtype: SnmpType
        value: int | str | bytes | Oid
        if kind == "int":
            if pos >= end:
                raise UndecodableIndex(f"undecodable index: no sub-identifier left for {symbol}")
            value, pos = suffix[pos], pos + 1
            vtype = _INT_TYPES.get(syntax.base, "Integer32")
            if vtype == "Integer32" and value > 0x7FFFFFFF:
                value -= 0x100000000  # an Integer32 index is sent as its two's complement
        elif kind == "ip":
            if end - pos < 4 or any(arc > 255 for arc in suffix[pos : pos + 4]):
                raise UndecodableIndex(f"undecodable index: {symbol} is not four octets")
            value, pos = ".".join(map(str, suffix[pos : pos + 4])), pos + 4
            vtype = "IpAddress"
        else:
            if implied:
                length = end - pos
            elif kind == "string" and fixed >= 0:
                length = fixed
            else:
                if pos >= end:
                    raise UndecodableIndex(f"undecodable index: no length left for {symbol}")
                length, pos = suffix[pos], pos + 1
            if length > end - pos:
                raise UndecodableIndex(
                    f"undecodable index: {symbol} needs {length} sub-identifiers, {end - pos} left"
                )
            part = suffix[pos : pos + length]
            pos += length
            if kind == "oid":
                value, vtype = part, "ObjectIdentifier"
            else:
                if any(arc > 255 for arc in part):
                    raise UndecodableIndex(f"undecodable index: {symbol} has a sub-identifier above 255")
                value, vtype = bytes(part), "OctetString"
        instance = suffix[start:pos]
        out.append(
            VarBind(column + instance, name, instance, vtype, value, display(vtype, value, syntax, resolver))
        )
    if pos != end:
        extra = end - pos
        raise UndecodableIndex(
            f"undecodable index: {extra} sub-identifier{'s' if extra > 1 else ''} left over after the INDEX"
        )
    return tuple(out)
