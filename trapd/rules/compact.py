"""The compact event form of ``trapd test``: an event typed on one command line.

::

    IF-MIB::linkDown from 10.20.1.5 ifIndex=17 ifDescr=Gi1/0/17 ifOperStatus=down

* the first word is the notification (MIB name or numeric OID);
* ``from ADDRESS`` (``from 10.0.0.1:1162``, ``from [2001:db8::1]:162``) sets
  the source (default 127.0.0.1);
* ``NAME=VALUE`` adds a varbind. ``NAME`` is a MIB symbol or numeric OID,
  optionally with its instance index (``ifAdminStatus.17=up``). Without an
  index a table column gets the index of the event (the first index given
  explicitly, else the ifIndex value, else 0) and a scalar gets 0;
* ``VALUE``: an enumeration label or number for enumerated objects; a
  number for numeric syntaxes; ``0x0011223344`` or ``hex:00:11:22`` for raw
  octets; otherwise text. The MIB's syntax, when known, picks the SNMP type;
* reserved keys set event fields instead: ``version=v1|v2c|v3``,
  ``community=``, ``user=``, ``context=``, ``kind=trap|inform``,
  ``uptime=TICKS``, ``id=``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import re
import time
from collections.abc import Sequence
from typing import Any

from trapd import decoders
from trapd.event import Event, VarBind, new_event_id, oid_str, parse_oid, refuse_uncarried
from trapd.listener.raw import Oid, RawValue, Security, SnmpType
from trapd.rules.resolver import SymbolResolver, did_you_mean, lookup_name

RESERVED = frozenset({"version", "community", "user", "context", "kind", "uptime", "id"})
_NUMERIC_TYPES: dict[str, SnmpType] = {
    "Integer32": "Integer32",
    "Integer": "Integer32",
    "Unsigned32": "Gauge32",
    "Gauge32": "Gauge32",
    "Counter32": "Counter32",
    "Counter64": "Counter64",
    "TimeTicks": "TimeTicks",
}


class CompactError(ValueError):
    pass


def parse_compact(tokens: Sequence[str], resolver: SymbolResolver) -> Event:
    if not tokens:
        raise CompactError("empty event: give at least a notification name")
    known = decoders.known_names()
    trap_oid = _lookup(tokens[0], resolver, known)
    if trap_oid is None:
        raise CompactError(f"unknown notification {tokens[0]!r}{_hint(tokens[0], resolver)}")
    source, port = "127.0.0.1", 162
    fields: dict[str, str] = {}
    pairs: list[tuple[str, str]] = []
    rest = list(tokens[1:])
    i = 0
    while i < len(rest):
        tok = rest[i]
        if tok == "from":
            if i + 1 >= len(rest):
                raise CompactError("'from' needs an address")
            source, port = _address(rest[i + 1])
            i += 2
            continue
        name, eq, value = tok.partition("=")
        if not eq or not name:
            raise CompactError(f"expected NAME=VALUE or 'from ADDRESS', got {tok!r}")
        if name in RESERVED:
            fields[name] = value
        else:
            pairs.append((name, value))
        i += 1
    default_index = _default_index(pairs)
    varbinds: list[VarBind] = []
    for name, value in pairs:
        varbinds.append(_varbind(name, value, resolver, known, default_index))
    version = fields.get("version", "v2c")
    if version not in ("v1", "v2c", "v3"):
        raise CompactError(f"version must be v1, v2c or v3, got {version!r}")
    kind = fields.get("kind", "trap")
    if kind not in ("trap", "inform"):
        raise CompactError(f"kind must be trap or inform, got {kind!r}")
    if version == "v3":
        security = Security(
            user=fields.get("user", "trapd"), level="authPriv", context_name=fields.get("context", "")
        )
    else:
        security = Security(community=fields.get("community", "public"))
    uptime = fields.get("uptime")
    if uptime is not None and not uptime.isdigit():
        raise CompactError(f"uptime must be a number of TimeTicks, got {uptime!r}")
    return Event(
        id=fields.get("id") or new_event_id(),
        received_at=time.time(),
        source=source,
        source_port=port,
        version=version,  # type: ignore[arg-type]
        kind=kind,  # type: ignore[arg-type]
        security=security,
        uptime=int(uptime) if uptime is not None else 0,
        trap_oid=trap_oid,
        trap_name=_name(trap_oid, resolver, known)[0],
        varbinds=tuple(varbinds),
    )


def _hint(name: str, resolver: SymbolResolver) -> str:
    hint = did_you_mean(resolver, name)
    return f" ({hint.strip()})" if hint else ""


def _lookup(name: str, resolver: SymbolResolver, known: dict[str, Oid]) -> Oid | None:
    oid = lookup_name(resolver, name, known)
    if oid is not None:
        refuse_uncarried(name, oid, CompactError)
    return oid


def _name(oid: Oid, resolver: SymbolResolver, known: dict[str, Oid]) -> tuple[str, Oid]:
    name, index = resolver.resolve(oid)
    if name[:1].isdigit():
        for kname, koid in known.items():
            if "::" in kname and oid[: len(koid)] == koid:
                return kname, oid[len(koid) :]
    return name, index


def _address(text: str) -> tuple[str, int]:
    port = 162
    host = text
    m = re.fullmatch(r"\[([^\]]+)\](?::([^:]*))?", text)
    p: str | None = None
    if m:
        host, p = m.group(1), m.group(2)
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
    if p is not None:
        # ASCII digits only (str.isdigit takes "¹", which int() refuses), and a UDP port's range.
        if not (p.isascii() and p.isdigit() and int(p) <= 65535):
            raise CompactError(f"bad port in {text!r}")
        port = int(p)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise CompactError(f"not an IP address: {host!r}") from None
    return host, port


def _default_index(pairs: list[tuple[str, str]]) -> Oid:
    for name, _value in pairs:
        sym = name.partition("::")[2] or name
        if not sym[:1].isdigit() and "." in sym:
            try:
                return parse_oid(sym.partition(".")[2])
            except ValueError:
                pass
    for name, value in pairs:
        if (name.partition("::")[2] or name) == "ifIndex" and value.isdigit():
            return (int(value),)
    return (0,)


def _syntax(resolver: SymbolResolver, oid: Oid) -> Any:
    describe = getattr(resolver, "describe", None)
    if describe is None:
        return None
    try:
        return describe(oid)[2]
    except Exception:
        return None


def _varbind(
    name: str, text: str, resolver: SymbolResolver, known: dict[str, Oid], default_index: Oid
) -> VarBind:
    oid = _lookup(name, resolver, known)
    if oid is None:
        raise CompactError(f"unknown MIB symbol {name!r}{_hint(name, resolver)}")
    sym = name.partition("::")[2] or name
    explicit = not name[:1].isdigit() and "." in sym
    if not explicit and not name[:1].isdigit():
        kind = getattr(resolver, "kind", lambda _o: "")(oid)
        if kind == "scalar":
            oid = (*oid, 0)
        elif kind == "column" or kind == "":
            oid = oid + default_index
    full_name, index = _name(oid, resolver, known)
    syntax = _syntax(resolver, oid)
    base = getattr(syntax, "base", "") if syntax is not None else ""
    enums: dict[str, int] = dict(getattr(syntax, "enums", {}) or {})
    labels = {v: k for k, v in enums.items()}
    vtype: SnmpType
    value: RawValue
    if text.lower().startswith("0x") or text.lower().startswith("hex:"):
        h = re.sub(r"[:\-. ]", "", text[2:] if text.lower().startswith("0x") else text[4:])
        try:
            value = bytes.fromhex(h)
        except ValueError:
            raise CompactError(f"{name}: bad hex {text!r}") from None
        vtype = "OctetString"
        display = value.hex(":")
    elif text in enums:
        vtype, value, display = "Integer32", enums[text], text
    elif base in _NUMERIC_TYPES or (not base and re.fullmatch(r"-?\d+", text)):
        if not re.fullmatch(r"-?\d+", text):
            known_labels = f" (labels: {', '.join(enums)})" if enums else ""
            raise CompactError(f"{name}: {text!r} is not a number{known_labels}")
        vtype = _NUMERIC_TYPES.get(base, "Integer32")
        value = int(text)
        display = labels.get(value, text)
    elif base == "IpAddress":
        try:
            ipaddress.IPv4Address(text)
        except ValueError:
            raise CompactError(f"{name}: {text!r} is not an IPv4 address") from None
        vtype, value, display = "IpAddress", text, text
    elif base == "ObjectIdentifier":
        target = _lookup(text, resolver, known)
        if target is None:
            raise CompactError(f"{name}: unknown OID value {text!r}")
        vtype, value, display = "ObjectIdentifier", target, oid_str(target)
    else:
        vtype, value, display = "OctetString", text.encode("utf-8"), text
    # The listener's own display rules (enum "down(2)", DISPLAY-HINTs; without a syntax, octets
    # that are text as text), so `trapd test` shows and matches what `trapd listen` would print
    # for the same trap.
    from trapd.display import display as listener_display

    # A resolver without the MibResolver API keeps the simple form.
    with contextlib.suppress(Exception):
        display = listener_display(vtype, value, syntax, resolver)  # type: ignore[arg-type]
    return VarBind(oid=oid, name=full_name, index=index, type=vtype, value=value, display=display)
