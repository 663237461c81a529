"""Vendor decoders for values that pack a list of records into one octet string.

Some notifications carry many changes in one varbind: Cisco's
cmnMacChangedNotification packs up to 23 "MAC learnt / removed" tuples into
cmnHistMacChangedMsg, H3C/HPE Comware packs 14-octet cells into
hh3cMACInfoTrapMsgExt. A rule iterates over the decoded records with
``foreach: mac_changes``.

One module per vendor format. Each module defines ``DECODERS``: a sequence of
:class:`ItemDecoder`, each saying which varbind OID (column or scalar, the
instance index may follow) it reads and which item kind it produces. The
registry finds them all (the modules of this package, then site plugins
registered under the entry-point group ``trapd.decoders``, each a module or
object with ``DECODERS`` and optionally ``KNOWN_NAMES``); :func:`decode_items`
runs the ones that apply to an event.

A decoder never raises on bad input: a value whose length does not fit the
format gives the complete records it could read plus a problem string
("truncated tuple at offset 22: 5 octets of 11"), which the rule engine
reports as a rejection, so the daemon logs and counts it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from trapd.listener.raw import Oid

if TYPE_CHECKING:
    from trapd.event import Event

Item = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Decoded:
    """Records read from one value, plus what was wrong with it (if anything)."""

    items: tuple[Item, ...] = ()
    problems: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ItemDecoder:
    """Decodes one varbind's packed value into items of ``kind``.

    ``fields`` documents the item keys (name -> meaning) for ``docs/rules.md``
    and for ``trapd check``, which refuses ``item.x`` for an unknown ``x``.
    """

    kind: str
    name: str  # MODULE::object, for messages
    oid: Oid  # the object's OID; a varbind matches when its OID starts with it
    decode: Callable[[bytes], Decoded]
    fields: Mapping[str, str] = field(default_factory=dict)


ENTRY_POINT_GROUP = "trapd.decoders"


@dataclass
class _Loaded:
    decoders: tuple[ItemDecoder, ...] = ()
    known_names: dict[str, Oid] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)


_LOADED: _Loaded | None = None


def _load() -> _Loaded:
    """Every module of this package, then the ``trapd.decoders`` entry points (site plugins).

    A module contributes ``DECODERS`` (a sequence of ItemDecoder) and
    optionally ``KNOWN_NAMES`` (MIB name -> OID). A broken site plugin is
    reported (``load_problems``), never fatal.
    """
    global _LOADED
    if _LOADED is not None:
        return _LOADED
    import importlib
    import pkgutil
    from importlib.metadata import entry_points

    loaded = _Loaded()
    sources: list[tuple[str, Any]] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        sources.append((info.name, importlib.import_module(f"{__name__}.{info.name}")))
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        try:
            sources.append((ep.name, ep.load()))
        except Exception as exc:  # a plugin's import can raise anything
            loaded.problems.append(f"decoder plugin {ep.name} = {ep.value}: {type(exc).__name__}: {exc}")
    decs: list[ItemDecoder] = []
    for name, mod in sources:
        got = getattr(mod, "DECODERS", None)
        if got is None or not all(isinstance(d, ItemDecoder) for d in got):
            loaded.problems.append(f"decoder module {name}: DECODERS must be a sequence of ItemDecoder")
            continue
        decs.extend(got)
        loaded.known_names.update(getattr(mod, "KNOWN_NAMES", {}))
    loaded.decoders = tuple(decs)
    _LOADED = loaded
    return loaded


def registry() -> tuple[ItemDecoder, ...]:
    return _load().decoders


def known_names() -> dict[str, Oid]:
    """MIB names the decoder modules define themselves (used when no MIB is loaded for them)."""
    return dict(_load().known_names)


def load_problems() -> list[str]:
    return list(_load().problems)


def kinds() -> dict[str, dict[str, str]]:
    """Item kinds (for ``foreach``) and the union of their fields."""
    out: dict[str, dict[str, str]] = {}
    for d in registry():
        out.setdefault(d.kind, {}).update(d.fields)
    return out


def decoders_for(kind: str) -> tuple[ItemDecoder, ...]:
    return tuple(d for d in registry() if d.kind == kind)


def decode_items(kind: str, event: Event, decoders: Sequence[ItemDecoder] | None = None) -> Decoded:
    """Every ``kind`` item in the event, in varbind order, with the problems met."""
    use = decoders_for(kind) if decoders is None else decoders
    items: list[Item] = []
    problems: list[str] = []
    for vb in event.varbinds:
        for d in use:
            if vb.oid[: len(d.oid)] != d.oid:
                continue
            if not isinstance(vb.value, bytes):
                problems.append(f"{d.name}: expected an octet string, got {vb.type}")
                continue
            got = d.decode(vb.value)
            items.extend(got.items)
            problems.extend(f"{d.name}: {p}" for p in got.problems)
    return Decoded(tuple(items), tuple(problems))


def mac_text(raw: bytes) -> str:
    return ":".join(f"{b:02x}" for b in raw)


# Cisco's cmnHistMacChangedMsg tuples and H3C's MACInfoTrapMsgExt cells both
# start <operation: 1><VLAN: 2><MAC: 6> with the same codes; what follows differs.
MAC_CHANGE_OPERATIONS = {1: "learnt", 2: "removed"}
MAC_CHANGE_FIELDS = {
    "operation": "learnt or removed",
    "vlan": "VLAN number",
    "mac": "MAC address, aa:bb:cc:dd:ee:ff",
}


def mac_change_head(record: bytes) -> Item:
    """operation, vlan and mac from the first 9 octets of a vendor MAC-change record."""
    op = record[0]
    return {
        "operation": MAC_CHANGE_OPERATIONS.get(op, f"unknown({op})"),
        "vlan": int.from_bytes(record[1:3], "big"),
        "mac": mac_text(record[3:9]),
    }
