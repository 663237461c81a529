"""What the rule compiler needs from the MIB resolver (trapd.mibs.MibResolver).

A Protocol rather than the class itself, so the compiler does not import
pysnmp and tests can hand in any object with these methods.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

from trapd.event import parse_oid
from trapd.listener.raw import Oid


class SymbolResolver(Protocol):
    def lookup(self, name: str) -> Oid | None:
        """``IF-MIB::linkDown``, ``linkDown``, ``ifIndex``, ``ifIndex.17`` or numeric -> OID."""
        ...

    def enum_values(self, name_or_oid: str) -> dict[str, int]:
        """Named numbers of an object's syntax (``{"up": 1, "down": 2, ...}``), empty if none."""
        ...

    def subtree(self, name: str) -> Oid | None:
        """A module name -> its MODULE-IDENTITY OID (``IF-MIB`` -> ifMIB), else :meth:`lookup`.

        Not the module's notifications: IF-MIB's linkDown lies outside ifMIB;
        ``under: MODULE`` adds them from :meth:`notifications_of`.
        """
        ...

    def notifications_of(self, module: str) -> frozenset[Oid]:
        """Every notification a MIB module defines; empty for anything that is not a module."""
        ...

    def definitions(self, symbol: str) -> list[tuple[str, Oid]]:
        """Every ``(MODULE::symbol, oid)`` when MIBs define ``symbol`` at more than one OID, else []."""
        ...

    def value_type(self, oid: Oid) -> str:
        """SMI base type of the object at or above ``oid`` (``ObjectIdentifier``, ``Integer32``...), or ""."""
        ...

    def resolve(self, oid: Oid) -> tuple[str, Oid]:
        """OID -> (``MODULE::symbol`` or the numeric OID, index after the symbol)."""
        ...


def lookup_name(resolver: SymbolResolver, name: str, known: Mapping[str, Oid]) -> Oid | None:
    """A MIB name (optionally with an instance index) or a numeric OID -> OID; None if unknown.

    ``known`` holds names trapd defines itself (the decoders' objects), used
    when no loaded MIB has them: ``MODULE::symbol``, the bare symbol, or a
    module name.
    """
    text = name.strip()
    if text[:1].isdigit() or text[:1] == ".":
        try:
            return parse_oid(text)
        except ValueError:
            return None
    oid = resolver.lookup(text)
    if oid is not None:
        return oid
    mod, sep, rest = text.partition("::")
    sym, dot, idx = (rest if sep else text).partition(".")
    base = f"{mod}::{sym}" if sep else sym
    hit = known.get(base)
    if hit is None and not sep:
        hit = next((o for n, o in known.items() if n.partition("::")[2] == base), None)
    if hit is None:
        return None
    if not dot:
        return hit
    try:
        return hit + parse_oid(idx)
    except ValueError:
        return None


def did_you_mean(resolver: SymbolResolver, name: str) -> str:
    """``"did you mean 'IF-MIB::linkDown'? "`` for a misspelt MIB name, or "" (a resolver that
    cannot tell, a stand-in in tests, says nothing)."""
    close = getattr(resolver, "close_name", None)
    hit = close(name) if close is not None else None
    return f"did you mean {hit!r}? " if hit and hit != name else ""
