"""Building the MIB name index: the slow side of MIB resolution.

:class:`trapd.mibs.MibResolver` never walks a pysnmp MIB view at run time; it
reads a flat index (``{oid: (module, symbol, kind, syntax)}``) from JSON. This
module makes that index, once, by loading compiled MIB modules into pysnmp's
``MibBuilder`` and reading every named node out of them:

* the shipped index (``trapd/data/mib-index.json``) covers pysnmp's own core
  modules and all 275 IETF/IANA modules of ``pysnmp-mibs``. Loading those
  through ``MibBuilder`` takes about 4.5 s, which is why it is done at build
  time (``trapd mibs build-index``), never at daemon start;
* a site's MIBs are compiled by :mod:`trapd.mibcompile` and indexed the same
  way into the cache directory.

Index format (``FORMAT``), chosen to load fast with the stdlib json module::

    {"format": 1,
     "built_from": {...versions...},
     "modules": [[name, module_identity_oid or "", legacy(0/1)], ...],
     "syntaxes": [[base_type, "TC-MODULE::TcName" or "", display_hint, enums], ...],
     "nodes": [[[1, 3, 6, ...], module_no, symbol, kind, syntax_no or -1], ...],
     "tcs": [[module_no, name, syntax_no], ...],
     "rows": [[row_oid, [[column_oid, "MODULE::symbol", kind, fixed_length, implied, syntax_no], ...]], ...]}

``rows`` is each table row's INDEX clause (an AUGMENTS row has its base
row's), for decoding an instance suffix (:mod:`trapd.instance`): ``kind`` is
how RFC 2578 7.7 encodes that INDEX object's values: ``int``, ``ip`` (four
sub-identifiers), ``string`` (OCTET STRING and BITS: ``fixed_length``
sub-identifiers when the syntax has one fixed SIZE, all the rest when
``implied``, else a length first), ``oid`` (a length first unless
``implied``). A row whose INDEX names an object no loaded module defines is
left out (its instances are not decoded). Optional: an older index has none.

``enums`` is ``[[label, number], ...]`` for INTEGER enumerations and BITS
(``base_type`` tells which) or null. ``nodes`` are sorted so that, for an OID
defined by more than one module, the preferred definition comes last (the
loader simply keeps the last one): an object or notification beats a bare
OBJECT IDENTIFIER, an SMIv2 module beats its SMIv1 ancestor
(IF-MIB::ifIndex, not RFC1213-MIB::ifIndex), and otherwise the module loaded
first (pysnmp's core modules, then pysnmp-mibs by name) keeps the name.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FORMAT = 1
# The index built from pysnmp's and pysnmp-mibs' modules, shipped in the wheel.
SHIPPED_INDEX = Path(__file__).with_name("data") / "mib-index.json"


@dataclass(frozen=True, slots=True)
class MibProblem:
    """A MIB that could not be used, and where: ``file:line: MODULE: reason`` when those are known.

    ``file`` is the source file's full path whenever the problem is about one
    (then ``line`` is known too: the error's line, the definition of the first
    symbol it names, or the module's ``DEFINITIONS ::= BEGIN``); ``module`` is
    the MIB module's name when one is concerned. Kept in the compiled site
    index as a list (:meth:`to_wire`).
    """

    message: str
    file: str | None = None
    line: int | None = None
    module: str | None = None

    def __str__(self) -> str:
        text = f"{self.module}: {self.message}" if self.module else self.message
        if self.file is None:
            return text
        return f"{self.file}:{self.line}: {text}" if self.line is not None else f"{self.file}: {text}"

    def to_wire(self) -> list[Any]:
        return [self.message, self.file, self.line, self.module]

    @classmethod
    def from_wire(cls, data: Any) -> MibProblem:
        if isinstance(data, list | tuple) and len(data) == 4:
            message, file, line, module = data
            return cls(str(message), file, line, module)
        return cls(str(data))  # an older cache's plain text


# Node kinds, as stored in the index.
KINDS = ("node", "identity", "module", "table", "row", "column", "scalar", "notification")
# Kinds that carry a value in a varbind (an OID below them is an instance).
OBJECT_KINDS = frozenset({"column", "scalar"})

# SMIv1 modules (and SMIv1 copies) that later SMIv2 modules supersede: when the
# same OID is defined in both, the SMIv2 name wins.
LEGACY_MODULES = frozenset(
    {
        "RFC1155-SMI",
        "RFC1158-MIB",
        "RFC1213-MIB",
        "RFC1253-MIB",
        "RFC1271-MIB",
        "RFC1285-MIB",
        "RFC1316-MIB",
        "RFC1381-MIB",
        "RFC1382-MIB",
        "SNMPv2-TC-v1",
    }
)

# pysnmp-internal modules that no device ever sends.
_SKIP_MODULES = frozenset({"ASN1", "ASN1-ENUMERATION", "ASN1-REFINEMENT"})

# pysnmp base classes, most specific first: the first one found in a syntax
# class's MRO is its SMI base type.
_BASE_TYPES = (
    "Counter32",
    "Counter64",
    "Gauge32",
    "Unsigned32",
    "TimeTicks",
    "Integer32",
    "IpAddress",
    "Opaque",
    "Bits",
    "ObjectIdentifier",
    "OctetString",
    "Integer",
    "Null",
)

_KIND_RANK = {"node": 0, "identity": 0, "module": 1}


def _node_kind(obj: Any) -> str | None:
    """The index kind of a pysnmp MIB object, None for what is not indexed.

    Conformance statements (groups, compliances, capabilities) are skipped:
    they never occur in a notification and would only double the index.
    """
    names = [k.__name__ for k in type(obj).__mro__]
    if "MibNode" not in names:
        return None
    first = names[0]
    return {
        "MibTableColumn": "column",
        "MibScalar": "scalar",
        "MibTableRow": "row",
        "MibTable": "table",
        "NotificationType": "notification",
        "ModuleIdentity": "module",
        "ObjectIdentity": "identity",
        "MibIdentifier": "node",
    }.get(first)


# Modules whose type classes are the SMI's own base types, not types a MIB defines.
_SMI_MODULES = frozenset({"SNMPv2-SMI", "RFC1155-SMI", "RFC1065-SMI", "SNMPv2-TC", "SNMPv2-CONF"})


def _plain_type(module: str, name: str, cls: type) -> bool:
    """A type a MIB module defines by plain assignment (``TruthValue ::= INTEGER {...}``)."""
    if module in _SMI_MODULES or not name[:1].isupper() or name in _BASE_TYPES:
        return False
    names = [k.__name__ for k in cls.__mro__]
    return "MibNode" not in names and cls.__name__ == name and bool(_base_type(cls))


def _base_type(cls: type) -> str:
    names = {k.__name__ for k in cls.__mro__}
    for base in _BASE_TYPES:
        if base in names:
            return "Integer32" if base == "Integer" else base
    return ""


class _IndexWriter:
    """Accumulates modules, syntaxes (deduplicated), TCs and nodes."""

    def __init__(self) -> None:
        self.modules: list[list[Any]] = []
        self._module_no: dict[str, int] = {}
        self.syntaxes: list[list[Any]] = []
        self._syntax_no: dict[str, int] = {}
        self.nodes: list[list[Any]] = []
        self.tcs: list[list[Any]] = []
        self.rows: list[list[Any]] = []
        # SMIv1 plain types, listed after the TCs: a bare name (InterfaceIndex) means IF-MIB's TC,
        # not DECNET-PHIV-MIB's plain type of the same name (the reader keeps the first).
        self.plain_types: list[list[Any]] = []

    def module(self, name: str, legacy: bool) -> int:
        if name not in self._module_no:
            self._module_no[name] = len(self.modules)
            self.modules.append([name, "", int(legacy)])
        return self._module_no[name]

    def syntax(self, base: str, tc: str, hint: str, enums: list[list[Any]] | None) -> int:
        rec = [base, tc, hint, enums]
        key = json.dumps(rec)
        if key not in self._syntax_no:
            self._syntax_no[key] = len(self.syntaxes)
            self.syntaxes.append(rec)
        return self._syntax_no[key]

    def result(self, built_from: dict[str, str]) -> dict[str, Any]:
        legacy = {i for i, m in enumerate(self.modules) if m[2]}

        position = {id(node): i for i, node in enumerate(self.nodes)}

        def rank(node: list[Any]) -> tuple[int, int, int]:
            # Equal ranks: the module loaded first wins (it sorts last), so
            # SNMPv2-SMI::zeroDotZero beats DLSW-MIB's alias "null" for 0.0.
            return (_KIND_RANK.get(node[3], 2), 0 if node[1] in legacy else 1, -position[id(node)])

        self.nodes.sort(key=rank)
        return {
            "format": FORMAT,
            "built_from": built_from,
            "modules": self.modules,
            "syntaxes": self.syntaxes,
            "nodes": self.nodes,
            "tcs": self.tcs + self.plain_types,
            "rows": self.rows,
        }


def _syntax_of(w: _IndexWriter, syntax: Any, tc_names: dict[int, str]) -> int:
    cls = type(syntax)
    base = _base_type(cls)
    tc = tc_names.get(id(cls), "")
    hint = str(getattr(syntax, "displayHint", "") or "")
    enums: list[list[Any]] | None = None
    named = getattr(syntax, "namedValues", None)
    if named is not None and len(named):
        enums = [[str(k), int(v)] for k, v in named.items()]
    return w.syntax(base, tc, hint, enums)


_INTEGER_INDEX_TYPES = frozenset(
    {"Integer32", "Unsigned32", "Gauge32", "Counter32", "TimeTicks", "Counter64"}
)


def _row_index(w: _IndexWriter, builder: Any, row: Any, tc_names: dict[int, str]) -> list[list[Any]] | None:
    """A row's INDEX as ``rows`` stores it (see the module docstring); None when it cannot be decoded."""
    try:
        names = row.getIndexNames()
    except Exception:
        return None
    out: list[list[Any]] = []
    for implied, mod, sym in names:
        obj = builder.mibSymbols.get(mod, {}).get(sym)
        syntax = getattr(obj, "syntax", None)
        column = getattr(obj, "name", None)
        if syntax is None or not isinstance(column, tuple):
            return None
        base = _base_type(type(syntax))
        fixed = -1
        if base in _INTEGER_INDEX_TYPES:
            kind = "int"
        elif base == "IpAddress":
            kind = "ip"
        elif base in ("OctetString", "Opaque", "Bits"):
            kind = "string"
            # pysnmp's own rule (MibTableRow.setFromName): SIZE with a single value is fixed-length.
            length = getattr(syntax, "fixed_length", None)
            fixed = length if isinstance(length, int) and base != "Bits" else -1
        elif base == "ObjectIdentifier":
            kind = "oid"
        else:
            return None
        out.append(
            [list(column), f"{mod}::{sym}", kind, fixed, int(bool(implied)), _syntax_of(w, syntax, tc_names)]
        )
    return out or None


def index_builder_modules(
    builder: Any, modules: Iterable[str], writer: _IndexWriter | None = None
) -> _IndexWriter:
    """Add the named, already loaded modules of a pysnmp ``MibBuilder`` to an index."""
    w = writer or _IndexWriter()
    # dict.fromkeys: once each (INET-ADDRESS-MIB is in pysnmp's core set and in pysnmp-mibs).
    wanted = [m for m in dict.fromkeys(modules) if m in builder.mibSymbols and m not in _SKIP_MODULES]
    # TC classes first, so that object syntaxes can name their TC. SMIv1 modules define plain
    # types (SNMPv2-TC-v1's TruthValue, RFC1271-MIB's EntryStatus): they are indexed as TCs too,
    # so that site MIBs importing them find them in the shipped modules' stubs.
    tc_names: dict[int, str] = {}
    for mod, syms in builder.mibSymbols.items():
        for name, obj in syms.items():
            if isinstance(obj, type) and (
                any(k.__name__ == "TextualConvention" for k in obj.__mro__[1:]) or _plain_type(mod, name, obj)
            ):
                tc_names.setdefault(id(obj), f"{mod}::{name}")
    rows: list[Any] = []
    for mod in wanted:
        mod_no = w.module(mod, mod in LEGACY_MODULES)
        for name, obj in builder.mibSymbols[mod].items():
            if isinstance(obj, type):
                if tc_names.get(id(obj)) == f"{mod}::{name}":
                    try:
                        plain = not any(k.__name__ == "TextualConvention" for k in obj.__mro__[1:])
                        (w.plain_types if plain else w.tcs).append(
                            [mod_no, name, _syntax_of(w, obj(), tc_names)]
                        )
                    except Exception:  # a TC class that cannot be instantiated bare
                        continue
                continue
            kind = _node_kind(obj)
            if kind is None or name == "PYSNMP_MODULE_ID":  # pysnmp's alias of the MODULE-IDENTITY
                continue
            oid = getattr(obj, "name", None)
            if not isinstance(oid, tuple) or not oid:
                continue
            syntax_no = -1
            if kind in OBJECT_KINDS and getattr(obj, "syntax", None) is not None:
                syntax_no = _syntax_of(w, obj.syntax, tc_names)
            if kind == "row":
                rows.append(obj)
            if kind == "module" and not w.modules[mod_no][1]:
                w.modules[mod_no][1] = ".".join(map(str, oid))
            w.nodes.append([list(oid), mod_no, name, kind, syntax_no])
    for row in rows:  # after the objects, so that their syntaxes keep their numbers
        row_index = _row_index(w, builder, row, tc_names)
        if row_index is not None:
            w.rows.append([list(row.name), row_index])
    return w


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("pysnmp", "pysnmp-mibs", "pysmi"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = ""
    return out


def shipped_module_names() -> list[str]:
    """Every module the shipped index covers: pysnmp's core set plus pysnmp-mibs."""
    import pysnmp.smi.mibs as core
    import pysnmp_mibs

    names: list[str] = []
    for pkg in (core, pysnmp_mibs):
        d = os.path.dirname(pkg.__file__ or "")
        names += sorted(f[:-3] for f in os.listdir(d) if f.endswith(".py") and not f.startswith("__"))
    return [n for n in dict.fromkeys(names) if n not in _SKIP_MODULES]


def build_shipped_index() -> tuple[dict[str, Any], list[str]]:
    """Load every shipped compiled module into a MibBuilder and index it (seconds).

    Returns the index and a list of problems ("MODULE: reason") for modules
    pysnmp could not load; those are left out, the rest are indexed.
    """
    import pysnmp_mibs
    from pysnmp.smi import builder as smi_builder

    b = smi_builder.MibBuilder()
    b.add_mib_sources(smi_builder.DirMibSource(os.path.dirname(pysnmp_mibs.__file__ or "")))
    problems: list[str] = []
    loaded: list[str] = []
    for mod in shipped_module_names():
        try:
            b.load_modules(mod)
            loaded.append(mod)
        except Exception as exc:
            problems.append(f"{mod}: {exc}")
    return index_builder_modules(b, loaded).result(_versions()), problems


def write_index(data: dict[str, Any], path: Path) -> None:
    """Write an index atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    try:
        tmp.write_text(json.dumps(data, separators=(",", ":")), encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # cut short (a full disk): not left holding the space
        raise


def main(argv: list[str] | None = None) -> None:
    """``python -m trapd.mibindex [PATH]``: rebuild the shipped index (default: trapd/data/mib-index.json)."""
    import sys
    import time

    args = sys.argv[1:] if argv is None else argv
    target = Path(args[0]) if args else Path(__file__).with_name("data") / "mib-index.json"
    t0 = time.monotonic()
    data, problems = build_shipped_index()
    write_index(data, target)
    for p in problems:
        print(f"problem: {p}", file=sys.stderr)
    took = time.monotonic() - t0
    print(f"{target}: {len(data['modules'])} modules, {len(data['nodes'])} nodes in {took:.1f} s")


if __name__ == "__main__":
    main()


def source_files(dirs: Iterable[Path]) -> list[Path]:
    """MIB source candidates: regular, non-hidden files directly in each directory, by name.

    A symlink that leads nowhere (dangling, or a loop) is a candidate too: the
    scan then reports it ("cannot read") instead of skipping a file the
    operator meant to add; a loop must not raise out of here (ELOOP took the
    daemon's start down). Directories, FIFOs and devices are not candidates.
    """
    out: list[Path] = []
    for d in dirs:
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError:
            continue
        out += [Path(e.path) for e in entries if not e.name.startswith(".") and _candidate(e)]
    return out


def unreadable_dirs(dirs: Iterable[Path]) -> list[MibProblem]:
    """A problem for each directory :func:`source_files` cannot list (missing, not a directory, no access).

    source_files skips them (a start must not fail for one), so this is where an
    operator learns that a ``mibs.dirs`` entry is a typo or closed to trapd's user.
    """
    out: list[MibProblem] = []
    for d in dirs:
        try:
            with os.scandir(d):
                pass
        except OSError as exc:
            out.append(MibProblem(f"{d}: cannot read this MIB directory: {exc.strerror or exc}"))
    return out


def _candidate(entry: os.DirEntry[str]) -> bool:
    try:
        if entry.is_file():
            return True
        return entry.is_symlink() and not os.path.exists(entry.path)  # dangling
    except OSError:  # ELOOP and the like: a link that cannot be followed
        return True
