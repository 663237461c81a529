"""What the rule compiler needs from the MIB resolver (trapd.mibs.MibResolver).

A Protocol rather than the class itself, so the compiler does not import
pysnmp and tests can hand in any object with these four methods.
"""

from __future__ import annotations

from typing import Protocol

from trapd.listener.raw import Oid


class SymbolResolver(Protocol):
    def lookup(self, name: str) -> Oid | None:
        """``IF-MIB::linkDown``, ``linkDown``, ``ifIndex``, ``ifIndex.17`` or numeric -> OID."""
        ...

    def enum_values(self, name_or_oid: str) -> dict[str, int]:
        """Named numbers of an object's syntax (``{"up": 1, "down": 2, ...}``), empty if none."""
        ...

    def subtree(self, name: str) -> Oid | None:
        """A module name (``IF-MIB``) -> the OID under which its objects live."""
        ...

    def resolve(self, oid: Oid) -> tuple[str, Oid]:
        """OID -> (``MODULE::symbol`` or the numeric OID, index after the symbol)."""
        ...
