"""Compiling a site's MIB directories with pysmi, offline, into the MIB cache.

Called by :func:`trapd.mibs.load_site_index` when the source files changed
(and by ``trapd mibs compile``). Nothing here touches the network: pysmi gets
exactly one reader, :class:`_SiteReader`, which serves local files only.

How imports are satisfied without the IETF sources. pysmi needs the parsed
source of every module a MIB imports from (to turn ``{ enterprises 9 }``
into numbers and to find the base type of an imported TC). Debian 12 ships
no IETF MIB sources, and a vendor bundle is often just the vendor's files.
So for every module trapd already has compiled (pysnmp's core and
pysnmp-mibs: the shipped index), the reader hands pysmi a *stub*: a short
SMIv2 text generated from the shipped index, with each node as an
``OBJECT IDENTIFIER`` assignment and each TC with its base syntax, display
hint and enumeration. That is all pysmi's code generator asks of an imported
module; the compiled site module then imports the real symbols from the
shipped pysnmp module at load time. Stubbed modules are never compiled
themselves (a searcher reports them as present), so a module trapd ships is
taken from the shipped set even when a site directory also has its source.

Output: pysnmp modules in ``<cache_dir>/py`` (pysmi skips a module whose
compiled file is newer than its source), then an index of the site's modules
built by :mod:`trapd.mibindex` from those compiled modules.

A broken file is reported as a :class:`~trapd.mibindex.MibProblem`
(``/path/file.mib:LINE: MODULE: reason``) and the others go on.
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import re
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trapd.listener.ber import uncarried
from trapd.mibindex import SHIPPED_INDEX, MibProblem, index_builder_modules, source_files

MAX_SOURCE_BYTES = 16 * 1024 * 1024
# `^[ \t]*`, not `^\s*`: that retried at every line start over all the whitespace after it, so a
# file of 20,000 blank lines took 6 s to scan, a megabyte of them hours.
_MODULE_RE = re.compile(
    rb"^[ \t]*([A-Za-z][A-Za-z0-9-]*)\s+(?:PIB-)?DEFINITIONS\s*(?:IMPLICIT\s+TAGS\s*)?::=\s*BEGIN", re.M
)
# Files that are obviously not MIB sources are skipped without a complaint.
_NOT_MIB_SUFFIXES = frozenset(
    {".md", ".rst", ".html", ".htm", ".pdf", ".gz", ".bz2", ".xz", ".zip", ".tar", ".tgz", ".py", ".pyc"}
    | {".json", ".yaml", ".yml", ".index", ".bak", ".swp", ".orig", ".rej"}
)

# SNMPv2-SMI written out: the base types pysmi needs to see declared.
_SNMPV2_SMI_STUB = """SNMPv2-SMI DEFINITIONS ::= BEGIN
{nodes}
Integer32 ::= INTEGER (-2147483648..2147483647)
IpAddress ::= [APPLICATION 0] IMPLICIT OCTET STRING (SIZE (4))
Counter32 ::= [APPLICATION 1] IMPLICIT INTEGER (0..4294967295)
Gauge32 ::= [APPLICATION 2] IMPLICIT INTEGER (0..4294967295)
Unsigned32 ::= [APPLICATION 2] IMPLICIT INTEGER (0..4294967295)
TimeTicks ::= [APPLICATION 3] IMPLICIT INTEGER (0..4294967295)
Opaque ::= [APPLICATION 4] IMPLICIT OCTET STRING
Counter64 ::= [APPLICATION 6] IMPLICIT INTEGER (0..18446744073709551615)
END
"""
_SMI_NODES = {
    "org": "1 3",
    "dod": "1 3 6",
    "internet": "1 3 6 1",
    "directory": "1 3 6 1 1",
    "mgmt": "1 3 6 1 2",
    "mib-2": "1 3 6 1 2 1",
    "transmission": "1 3 6 1 2 1 10",
    "experimental": "1 3 6 1 3",
    "private": "1 3 6 1 4",
    "enterprises": "1 3 6 1 4 1",
    "security": "1 3 6 1 5",
    "snmpV2": "1 3 6 1 6",
    "snmpDomains": "1 3 6 1 6 1",
    "snmpProxys": "1 3 6 1 6 2",
    "snmpModules": "1 3 6 1 6 3",
    "zeroDotZero": "0 0",
}
# Modules made only of macros (or SMIv1 framework) that pysmi maps by itself:
# an empty module is all their importers need to find.
_EMPTY_STUBS = ("SNMPv2-CONF", "RFC-1212", "RFC-1215", "RFC1065-SMI", "RFC1155-SMI")
_APPLICATION_TYPES = ("Unsigned32", "Gauge32", "Counter32", "Counter64", "TimeTicks", "IpAddress", "Opaque")


def read_source(path: Path) -> bytes:
    """A MIB file's bytes as the scan, the line finder and pysmi see them: ASCII-compatible.

    Windows editors save MIBs with a UTF-8 byte order mark, or as UTF-16: the
    mark is dropped and UTF-16 is transcoded to UTF-8, so that the module's
    ``NAME DEFINITIONS ::= BEGIN`` is found and line numbers stay those of the
    file. Anything else is passed on as it is (see :func:`source_text`).
    """
    raw = path.read_bytes()
    if raw.startswith(codecs.BOM_UTF8):
        return raw[len(codecs.BOM_UTF8) :]
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return raw.decode("utf-16", "replace").encode("utf-8")
    return raw


def source_text(raw: bytes) -> str:
    """UTF-8 when it is, else Latin-1 (vendor files in GBK or CP1252 comments): never fails."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


@dataclass
class SiteSource:
    module: str
    path: Path
    mtime: float


def scan_sources(files: list[Path]) -> tuple[dict[str, SiteSource], list[MibProblem]]:
    """Module name -> source file, by reading each file's ``NAME DEFINITIONS ::= BEGIN`` lines."""
    modules: dict[str, SiteSource] = {}
    problems: list[MibProblem] = []
    for path in files:
        if path.suffix.lower() in _NOT_MIB_SUFFIXES or path.name.endswith("~"):
            continue
        try:
            st = path.stat()
            if st.st_size > MAX_SOURCE_BYTES:
                problems.append(
                    MibProblem(f"larger than {MAX_SOURCE_BYTES // 1024 // 1024} MiB, skipped", str(path), 1)
                )
                continue
            data = read_source(path)
        except OSError as exc:
            problems.append(MibProblem(f"cannot read: {exc.strerror or exc}", str(path), 1))
            continue
        names = [m.decode("ascii") for m in _MODULE_RE.findall(data)]
        if not names:
            problems.append(MibProblem("not a MIB module (no 'NAME DEFINITIONS ::= BEGIN')", str(path), 1))
            continue
        for name in names:
            if name in modules:
                problems.append(
                    MibProblem(
                        f"also in {modules[name].path}; using that one",
                        str(path),
                        _line_of(data, _definitions_re(name)),
                        name,
                    )
                )
                continue
            modules[name] = SiteSource(name, path, st.st_mtime)
    return modules, problems


def _definitions_re(module: str) -> re.Pattern[bytes]:
    return re.compile(rb"^[ \t]*" + re.escape(module.encode()) + rb"\s+(?:PIB-)?DEFINITIONS\b", re.M)


def _line_of(data: bytes, pattern: re.Pattern[bytes]) -> int:
    """The 1-based line where ``pattern`` first matches in ``data`` (1 when it does not)."""
    m = pattern.search(data)
    return data.count(b"\n", 0, m.start()) + 1 if m else 1


# What follows a name where it is defined (not where a SEQUENCE or OBJECTS list uses it).
_DEFINITION = (
    rb"\s+(?:::=|OBJECT-TYPE|OBJECT\s+IDENTIFIER|OBJECT-IDENTITY|MODULE-IDENTITY|NOTIFICATION-TYPE|TRAP-TYPE"
    rb"|OBJECT-GROUP|NOTIFICATION-GROUP|MODULE-COMPLIANCE|AGENT-CAPABILITIES|TEXTUAL-CONVENTION)\b"
)
_DUPLICATE_RE = re.compile(r"Duplicate symbol found:\s*([A-Za-z][A-Za-z0-9-]*)")
_SYMBOLS_RE = re.compile(r"symbols?:\s*([A-Za-z][A-Za-z0-9-]*)")
_IMPORTS_FROM_RE = re.compile(r"imports (?:[A-Za-z][A-Za-z0-9, -]*? )?from ([A-Za-z][A-Za-z0-9-]*)")


def problem_at(src: SiteSource, reason: str, error: Any = None) -> MibProblem:
    """A problem with ``src``'s module, at the line it is about.

    pysmi gives a line for a syntax error. For the semantic ones it names the
    symbols ("Unknown parents for symbols: a, b"), so the line is where the
    first of them is defined; an unresolvable import points at its ``FROM``;
    anything else at the module's ``DEFINITIONS ::= BEGIN``.
    """
    try:
        data = read_source(src.path)
    except OSError:
        return MibProblem(reason, str(src.path), 1, src.module)
    start = _definitions_re(src.module).search(data)
    offset = start.start() if start else 0
    line = getattr(error, "lineno", None)
    if isinstance(line, int) and line > 0:
        return MibProblem(reason, str(src.path), line, src.module)  # pysmi parses the whole file
    pattern: re.Pattern[bytes] | None = None
    if m := _DUPLICATE_RE.search(reason):
        # The second definition is the one to look at (the first may be thousands of lines up).
        defined = re.compile(rb"^[ \t]*" + re.escape(m.group(1).encode()) + _DEFINITION, re.M)
        second = [d.start() for d in defined.finditer(data, offset)][1:2]
        at = second[0] if second else offset
        return MibProblem(reason, str(src.path), data.count(b"\n", 0, at) + 1, src.module)
    if m := _SYMBOLS_RE.search(reason):
        pattern = re.compile(rb"^[ \t]*" + re.escape(m.group(1).encode()) + rb"\b", re.M)
    elif m := _IMPORTS_FROM_RE.search(reason):
        pattern = re.compile(rb"\bFROM\s+" + re.escape(m.group(1).encode()) + rb"\b")
    found = pattern.search(data, offset) if pattern is not None else None
    if found is None and m is not None and pattern is not None and m.re is _SYMBOLS_RE:
        # A parent nobody defines ("Unknown parent symbol: x"): where it is used, ``{ x 7 }``.
        found = re.compile(rb"\{\s*" + re.escape(m.group(1).encode()) + rb"\b").search(data, offset)
    at = found.start() if found else offset
    return MibProblem(reason, str(src.path), data.count(b"\n", 0, at) + 1, src.module)


def _syntax_text(rec: list[Any]) -> str:
    base, _tc, _hint, enums = rec
    if enums and base in ("Integer32", "Bits"):
        items = ", ".join(f"{label}({num})" for label, num in enums)
        return f"{'BITS' if base == 'Bits' else 'INTEGER'} {{ {items} }}"
    if base == "OctetString" or base == "Bits":
        return "OCTET STRING"
    if base == "ObjectIdentifier":
        return "OBJECT IDENTIFIER"
    if base in _APPLICATION_TYPES:
        return str(base)
    return "Integer32"


class StubSet:
    """SMIv2 stub texts for the shipped modules, generated on demand from the shipped index."""

    def __init__(self, shipped: dict[str, Any] | None) -> None:
        self._data = shipped or {"modules": [], "nodes": [], "tcs": [], "syntaxes": []}
        self.names = frozenset(m[0] for m in self._data["modules"]) | set(_EMPTY_STUBS) | {"SNMPv2-SMI"}
        self._by_module: dict[str, tuple[list[Any], list[Any]]] | None = None

    def _group(self) -> dict[str, tuple[list[Any], list[Any]]]:
        if self._by_module is None:
            mods = [m[0] for m in self._data["modules"]]
            grouped: dict[str, tuple[list[Any], list[Any]]] = {m: ([], []) for m in mods}
            for node in self._data["nodes"]:
                grouped[mods[node[1]]][0].append(node)
            for tc in self._data["tcs"]:
                grouped[mods[tc[0]]][1].append(tc)
            self._by_module = grouped
        return self._by_module

    def tc_syntaxes(self) -> dict[str, tuple[str, str, str]]:
        """Each shipped TC by bare name -> (display hint, syntax as SMI text, ``MODULE::Name``).

        The first module that defines a name wins, as for a bare name in a rule.
        """
        mods = [m[0] for m in self._data["modules"]]
        out: dict[str, tuple[str, str, str]] = {}
        for mod_no, name, syn_no in self._data["tcs"]:
            if name not in out:
                rec = self._data["syntaxes"][syn_no]
                out[name] = (rec[2] or "", _syntax_text(rec), f"{mods[mod_no]}::{name}")
        return out

    def text(self, module: str) -> str:
        if module == "SNMPv2-SMI":
            nodes = "\n".join(f"{sym} OBJECT IDENTIFIER ::= {{ {oid} }}" for sym, oid in _SMI_NODES.items())
            return _SNMPV2_SMI_STUB.format(nodes=nodes)
        nodes_tcs = self._group().get(module)
        lines = [f"{module} DEFINITIONS ::= BEGIN"]
        if nodes_tcs is not None:
            lines.append(f"IMPORTS {', '.join(_APPLICATION_TYPES)}, Integer32 FROM SNMPv2-SMI;")
            seen: set[str] = set()
            for oid, _mod, sym, _kind, _syn in nodes_tcs[0]:
                if sym not in seen:
                    seen.add(sym)
                    lines.append(f"{sym} OBJECT IDENTIFIER ::= {{ {' '.join(map(str, oid))} }}")
            syntaxes = self._data["syntaxes"]
            for _mod, name, syn_no in nodes_tcs[1]:
                if name in seen:  # an index that lists a module twice: pysmi refuses a duplicate
                    continue
                seen.add(name)
                rec = syntaxes[syn_no]
                hint = f'    DISPLAY-HINT "{rec[2]}"\n' if rec[2] else ""
                lines.append(
                    f'{name} ::= TEXTUAL-CONVENTION\n{hint}    STATUS current\n    DESCRIPTION ""\n'
                    f"    SYNTAX {_syntax_text(rec)}"
                )
        lines.append("END\n")
        return "\n".join(lines)


_MODULE_TEXT_RE = re.compile(_MODULE_RE.pattern.decode("ascii"), re.M)
_BASE_TYPE_USE_RE = re.compile(r"\bSYNTAX\s+(" + "|".join((*_APPLICATION_TYPES, "Integer32")) + r")\b")
_SMI_NODE_USE_RE = re.compile(r"\{\s*(" + "|".join(n for n in _SMI_NODES if n != "zeroDotZero") + r")\s+\d")
_MACRO_USE_RE = re.compile(
    r"^[ \t]*[A-Za-z][\w-]*\s+(OBJECT-TYPE|TRAP-TYPE|NOTIFICATION-TYPE|MODULE-IDENTITY|OBJECT-IDENTITY)\b"
    r"|::=\s*(TEXTUAL-CONVENTION)\b",
    re.M,
)
_IMPORTS_RE = re.compile(r"\bIMPORTS\b")


def _implicit_source(symbol: str, body: str) -> str:
    """The module an undeclared SMI symbol can only come from (SMIv1's when the module is SMIv1)."""
    if symbol == "TRAP-TYPE":
        return "RFC-1215"
    if symbol == "TEXTUAL-CONVENTION":
        return "SNMPv2-TC"
    if symbol == "OBJECT-TYPE" and re.search(r"^[ \t]*ACCESS\b", body, re.M):
        return "RFC-1212"
    return "SNMPv2-SMI"


def declare_implicit_imports(text: str) -> str:
    """``text`` with the SMI symbols each module uses but does not import added to its IMPORTS.

    net-snmp takes ``SYNTAX Counter64``, ``{ enterprises 11 }`` or a
    ``TRAP-TYPE`` from a module that never imported them; pysmi refuses them
    ("Unknown parents for symbols", "Unknown parent symbol: enterprises", or
    a module that does not load). Debian's own NET-SNMP-PASS-MIB, Cisco's
    LWAPP MIBs and many printer and server vendors' SMIv1 MIBs are written
    so. Those names can only mean the SMI's own, so the import is added, on
    the IMPORTS line (or the BEGIN line when there is no IMPORTS clause) so
    that pysmi's line numbers stay the file's. A module that defines such a
    name itself keeps it.
    """
    starts = list(_MODULE_TEXT_RE.finditer(text))
    out: list[str] = []
    done = 0
    for i, start in enumerate(starts):
        end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        body = text[start.end() : end]
        # The first IMPORTS and the first ';' after it: one pass (a regex `IMPORTS([^;]*);` went to
        # the end of the text from every IMPORTS when there was no ';', quadratic in the file).
        keyword = _IMPORTS_RE.search(body)
        semicolon = body.find(";", keyword.end()) if keyword is not None else -1
        after_imports: int | None = None  # where the names go: just after the IMPORTS keyword
        imported, rest = "", body
        if keyword is not None and semicolon >= 0:
            after_imports = keyword.end()
            imported, rest = body[after_imports:semicolon], body[semicolon + 1 :]
        used = dict.fromkeys(_BASE_TYPE_USE_RE.findall(rest) + _SMI_NODE_USE_RE.findall(rest))
        used.update(dict.fromkeys(m.group(1) or m.group(2) for m in _MACRO_USE_RE.finditer(rest)))
        by_module: dict[str, list[str]] = {}
        for name in used:
            if re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", imported) or re.search(
                rf"^[ \t]*{re.escape(name)}\s+(?:OBJECT\s+IDENTIFIER\s*)?::=", rest, re.M
            ):
                continue
            by_module.setdefault(_implicit_source(name, body), []).append(name)
        if not by_module:
            continue
        names = " ".join(f"{', '.join(syms)} FROM {mod}" for mod, syms in by_module.items())
        if after_imports is not None:
            at, insert = start.end() + after_imports, f" {names}"
        else:
            at, insert = start.end(), f" IMPORTS {names};"
        out += [text[done:at], insert]
        done = at
    return "".join(out) + text[done:] if out else text


# ``Sym1, Sym2 FROM MODULE`` inside an IMPORTS clause (comments removed first).
_WORD_RE = re.compile(r"[A-Za-z][\w-]*")
_COMMENT_RE = re.compile(r"--[^\n]*")


@dataclass
class StandIn:
    """A module no directory has, made of the TCs the site's modules import from it.

    ``bases``: each TC's name -> what it is taken as (``INTEGER``, ``OCTET
    STRING``, ``SNMPv2-TC::MacAddress``); ``importers``: the modules that
    import from it, reported where they do (see :func:`missing_type_imports`).
    """

    module: str
    bases: dict[str, str]
    importers: dict[str, list[str]]  # importing module -> the symbols it imports from this one
    text: str

    def warning(self, importer: str) -> str:
        symbols = self.importers[importer]
        taken = ", ".join(f"{sym} as {self.bases[sym]}" for sym in symbols)
        return (
            f"imports {', '.join(symbols)} from {self.module}, which is neither shipped nor in the MIB "
            f"directories; loaded with {taken}"
        )


def _imports_of(text: str) -> list[tuple[str, list[str], str]]:
    """``[(importer, [symbols], module), ...]`` of the IMPORTS clause of each module in ``text``.

    One pass over words (a regex with a repeated list of names backtracked
    exponentially on a clause without FROM), and only each module's first
    IMPORTS, up to its first ';' (see :func:`declare_implicit_imports`).
    """
    out: list[tuple[str, list[str], str]] = []
    starts = list(_MODULE_TEXT_RE.finditer(text))
    for i, start in enumerate(starts):
        body_end = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        keyword = _IMPORTS_RE.search(text, start.end(), body_end)
        end = text.find(";", keyword.end(), body_end) if keyword is not None else -1
        if keyword is None or end < 0:
            continue
        symbols: list[str] = []
        words = iter(_WORD_RE.findall(_COMMENT_RE.sub(" ", text[keyword.end() : end])))
        for word in words:
            if word != "FROM":
                symbols.append(word)
                continue
            module = next(words, None)
            if module is not None and symbols:
                out.append((start.group(1), symbols, module))
            symbols = []
    return out


def _guess_base(
    symbol: str, texts: list[str], shipped_tcs: dict[str, tuple[str, str, str]]
) -> tuple[str, str, str]:
    """(display hint, SMI syntax, what the warning calls it) of the stand-in for a TC nobody defines.

    A TC of that name that trapd ships (MacAddress, InetAddress) is taken as that TC; else the
    use shows the base: a SIZE is an OCTET STRING, a range or an enumeration an INTEGER.
    """
    shipped = shipped_tcs.get(symbol)
    if shipped is not None:
        return shipped
    use = re.compile(r"\bSYNTAX\s+" + re.escape(symbol) + r"\b\s*([({]?)\s*(SIZE\b)?")
    shapes = {(m.group(1), bool(m.group(2))) for t in texts for m in use.finditer(t)}
    if any(paren == "(" and size for paren, size in shapes):
        return "", "OCTET STRING", "OCTET STRING"
    if any(paren == "{" or (paren == "(" and not size) for paren, size in shapes):
        return "", "INTEGER", "INTEGER"
    return "", "OCTET STRING", "OCTET STRING (its base type is unknown)"


def missing_type_imports(site: dict[str, SiteSource], stubs: StubSet) -> dict[str, StandIn]:
    """A stand-in for each module that site modules import only TCs from and that nobody has.

    net-snmp loads a module whose TC comes from a module it cannot find; pysmi refuses it
    (or compiles it, and pysnmp cannot load it): the whole module, its notifications and
    whatever imports from it were lost for one SYNTAX. A TC is a type, and type names
    begin with a capital; a lower-case import (an OID) from a missing module still fails.
    """
    # Each file read and gone through once, for all the modules in it (vendors ship concatenated
    # files: once per module was quadratic, 48 s for 2,000 small modules in one file).
    texts: dict[Path, str] = {}
    wanted: dict[str, dict[str, list[str]]] = {}  # missing module -> importer -> symbols
    nodes: set[str] = set()
    for path in dict.fromkeys(src.path for src in site.values()):
        try:
            text = texts[path] = source_text(read_source(path))
        except OSError:
            continue
        for name, symbols, dep in _imports_of(text):
            if name not in site or site[name].path != path:  # also in another file, which is used
                continue
            if dep in site or dep in stubs.names:
                continue
            if any(not sym[:1].isupper() for sym in symbols):
                nodes.add(dep)
            wanted.setdefault(dep, {}).setdefault(name, []).extend(symbols)
    shipped_tcs = stubs.tc_syntaxes()
    out: dict[str, StandIn] = {}
    for dep, importers in wanted.items():
        if dep in nodes or not _MODULE_NAME_RE.fullmatch(dep):
            continue
        users = [texts[path] for path in dict.fromkeys(site[m].path for m in importers)]
        symbols = list(dict.fromkeys(sym for syms in importers.values() for sym in syms))
        lines = [f"{dep} DEFINITIONS ::= BEGIN", "IMPORTS TEXTUAL-CONVENTION FROM SNMPv2-TC;"]
        bases: dict[str, str] = {}
        for sym in symbols:
            hint, syntax, called = _guess_base(sym, users, shipped_tcs)
            bases[sym] = called
            shown = f'    DISPLAY-HINT "{hint}"\n' if hint else ""
            body = f'{shown}    STATUS current\n    DESCRIPTION ""\n    SYNTAX {syntax}'
            lines.append(f"{sym} ::= TEXTUAL-CONVENTION\n{body}")
        lines.append("END\n")
        out[dep] = StandIn(dep, bases, importers, "\n".join(lines))
    return out


_MODULE_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9-]*")


def _reader(site: dict[str, SiteSource], stubs: StubSet, stand_ins: dict[str, StandIn] | None = None) -> Any:
    from pysmi import error as smi_error
    from pysmi.mibinfo import MibInfo
    from pysmi.reader.base import AbstractReader

    class _SiteReader(AbstractReader):  # type: ignore[misc]
        """Local files by module name, else a stub of a shipped module; never the network."""

        def __str__(self) -> str:
            return "trapd site MIB reader"

        def get_data(self, mibname: str, **options: Any) -> tuple[Any, str]:
            if mibname in stubs.names:
                info = MibInfo(path=f"stub:{mibname}", file=mibname, name=mibname, mtime=0)
                return info, stubs.text(mibname)
            if stand_ins and mibname in stand_ins:
                info = MibInfo(path=f"stand-in:{mibname}", file=mibname, name=mibname, mtime=0)
                return info, stand_ins[mibname].text
            src = site.get(mibname)
            if src is None:
                raise smi_error.PySmiReaderFileNotFoundError(f"source MIB {mibname} not found", reader=self)
            text = declare_implicit_imports(source_text(read_source(src.path)))
            info = MibInfo(path=f"file://{src.path}", file=src.path.name, name=mibname, mtime=src.mtime)
            return info, text

    return _SiteReader()


_NO_MODULE_RE = re.compile(r'no module "([^"]+)" in symbolTable')


_AT_MIB_RE = re.compile(r" at MIB [A-Za-z0-9-]+")


def _reason(error: Any, failed: set[str], stubs: StubSet) -> str:
    text = _AT_MIB_RE.sub("", str(error or "failed")).replace(", line ?", "")  # pysmi's unknown line
    m = _NO_MODULE_RE.search(text)
    if m:
        dep = m.group(1)
        if dep in failed:
            return f"imports from {dep}, which failed to compile"
        if dep not in stubs.names:
            return f"imports from {dep}, which is neither shipped nor in the MIB directories"
    return text


def compile_site(
    dirs: list[Path], cache_dir: Path | None, shipped: dict[str, Any] | None
) -> tuple[dict[str, Any], list[MibProblem]]:
    """Compile the site's modules into ``cache_dir/py`` and index them.

    Returns ``(index, problems)``. Raises only for failures of the machinery
    itself (the caller turns those into a problem line).
    """
    site, problems = scan_sources(source_files(dirs))
    stubs = StubSet(shipped)
    wanted = sorted(m for m in site if m not in stubs.names)
    tmp: str | None = None
    py_dir = cache_dir / "py" if cache_dir is not None else None
    if py_dir is not None:
        try:
            py_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            why = exc.strerror or exc
            text = f"{py_dir}: cannot create the MIB cache ({why}); compiling every start"
            problems.append(MibProblem(text))
            py_dir = None
    if py_dir is None:
        tmp = tempfile.mkdtemp(prefix="trapd-mibs-")
        py_dir = Path(tmp)
    try:
        stand_ins = missing_type_imports(site, stubs)
        # Each file as it was before pysmi read it: one changed meanwhile (a bundle being copied in)
        # must not be recorded as compiled from its new state, or later compiles would keep this one.
        keys = {name: _source_key(src) for name, src in site.items()}
        _prune_cache(py_dir, site, stand_ins, keys)
        # What the prune left is up to date: pysmi is asked only for the rest. It parses every module
        # it is asked for before it finds a compiled one current, so one changed file in a bundle of
        # 1,002 generated modules took as long as the whole bundle (33 s at load 13).
        todo = [m for m in wanted if not (py_dir / f"{m}.py").is_file()]
        statuses: dict[str, Any] = {m: "untouched" for m in wanted if m not in todo}
        # The stand-ins are removed at every compile (the prune): made again here, also for the
        # modules importing from them that are not compiled again.
        asked = todo + sorted(stand_ins)
        ran = _run_pysmi(asked, site, stubs, py_dir, stand_ins) if asked else {}
        statuses.update((m, st) for m, st in ran.items() if m in site)
        failed = {m for m, st in statuses.items() if st == "failed"}
        compiled = []
        for m in wanted:
            st = statuses.get(m)
            if st in ("compiled", "untouched") and (py_dir / f"{m}.py").is_file():
                compiled.append(m)
            else:
                error = getattr(st, "error", None)
                reason = _reason(error, failed, stubs) if st == "failed" else f"{st}"
                problems.append(problem_at(site[m], reason, error))
        _record_sources(py_dir, keys, compiled)
        uncompiled = set(wanted) - set(compiled)
        index, load_problems = _index_compiled(py_dir, compiled, site, uncompiled, stubs.names)
        loaded = {m[0] for m in index["modules"]}
        stood_in = [
            problem_at(site[m], stand_in.warning(m))
            for stand_in in stand_ins.values()
            for m in stand_in.importers
            if m in loaded
        ]
        return index, problems + stood_in + load_problems + drop_uncarriable_nodes(index, site)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def drop_uncarriable_nodes(index: dict[str, Any], site: dict[str, SiteSource]) -> list[MibProblem]:
    """Leave out of ``index`` every node whose OID no SNMP message can carry; one problem per module.

    pysmi compiles ``{ bigArc 4294967296 }``, but the listener's BER decoder
    (:func:`trapd.listener.ber.decode_oid`, like net-snmp's) refuses a packet
    with a sub-identifier of 2^32 or more: a rule naming such a node would be
    accepted and never match. So the node and everything below it are
    unknown names, and the report points at the definition with the big arc.
    """
    modules = [m[0] for m in index["modules"]]
    kept: list[Any] = []
    dropped: dict[str, list[tuple[tuple[int, ...], str, str]]] = {}
    for node in index["nodes"]:
        oid = tuple(node[0])
        why = uncarried(oid)
        if why is not None:
            dropped.setdefault(modules[node[1]], []).append((oid, node[2], why))
        else:
            kept.append(node)
    if not dropped:
        return []
    index["nodes"] = kept
    problems = []
    for module, nodes in dropped.items():
        # The shortest dropped OID is the definition that introduced the arc (or one of them).
        _top, sym, why = min(nodes, key=lambda n: len(n[0]))
        more = f" ({len(nodes) - 1} more below it left out too)" if len(nodes) > 1 else ""
        reason = f"{sym}: {why}, which no SNMP message can carry; left out{more}"
        src = site.get(module)
        if src is None:
            problems.append(MibProblem(reason, module=module))
            continue
        data = read_source(src.path)
        start = _definitions_re(module).search(data)
        defined = re.compile(rb"^[ \t]*" + re.escape(sym.encode()) + _DEFINITION, re.M)
        found = defined.search(data, start.start() if start else 0)
        line = data.count(b"\n", 0, found.start()) + 1 if found else _line_of(data, _definitions_re(module))
        problems.append(MibProblem(reason, str(src.path), line, module))
    return problems


# The stand-ins the last compile wrote into the cache, one name a line.
_STAND_INS_FILE = "stand-ins.txt"
# Which file (path, size, date) each compiled module came from: {"MODULE": "path|size|mtime_ns"}.
_SOURCES_FILE = "sources.json"


def _source_key(src: SiteSource) -> str:
    try:
        st = src.path.stat()
    except OSError:
        return ""
    return f"{src.path}|{st.st_size}|{st.st_mtime_ns}"


def _prune_cache(
    py_dir: Path, site: dict[str, SiteSource], stand_ins: dict[str, StandIn], keys: dict[str, str]
) -> None:
    """Remove every compiled module that is not from the directories' very file, and the last stand-ins.

    pysmi takes a compiled module that is newer than its source as up to date:
    one whose file was removed kept its importers loading (where a fresh cache
    fails them); a file replaced by one with an older date (a vendor tarball
    unpacked, a module moved to another directory) kept its old compiled form;
    and a stand-in (:class:`StandIn`) would shadow the real module added later
    or no longer fit what its importers ask of it. So a compiled module stays
    only while the file it was compiled from is unchanged, and so do the
    modules it imports from (:func:`_importers_of`).
    """
    try:
        previous = set((py_dir / _STAND_INS_FILE).read_text(encoding="utf-8").split())
    except OSError:
        previous = set()
    try:
        recorded = json.loads((py_dir / _SOURCES_FILE).read_text(encoding="utf-8"))
        if not isinstance(recorded, dict):
            recorded = {}
    except (OSError, ValueError):
        recorded = {}
    try:
        compiled = [*py_dir.glob("*.py"), *py_dir.glob("*.pyc"), *py_dir.glob("__pycache__/*.pyc")]
    except OSError:
        return
    files: dict[str, list[Path]] = {}
    for path in compiled:
        files.setdefault(path.name.partition(".")[0], []).append(path)
    stale = {m for m in files if m not in site or m in previous or recorded.get(m) != keys[m]}
    for module in _importers_of(py_dir, stale - previous, set(files) - stale):
        stale.add(module)
    for module in stale:
        for path in files[module]:
            with contextlib.suppress(OSError):
                path.unlink()
    with contextlib.suppress(OSError):  # the cache directory's own problem is reported by the compile
        (py_dir / _STAND_INS_FILE).write_text("".join(f"{n}\n" for n in sorted(stand_ins)), encoding="utf-8")


def _importers_of(py_dir: Path, changed: set[str], kept: set[str]) -> set[str]:
    """The modules of ``kept`` that import from one of ``changed``, directly or through each other.

    pysmi writes the numbers of an imported parent into the importer's
    compiled module (``{ aRoot 1 }`` becomes 1.3.6.1.4.1.100.1): when A-MIB
    moved aRoot, B-MIB, unchanged, kept its nodes under the old number until
    ``--force``. So whatever imports from a module compiled again is compiled
    again too (stand-ins hold only TCs, which are imported at load time).
    """
    importers: dict[str, list[str]] = {}
    for module in kept:
        try:
            text = (py_dir / f"{module}.py").read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for dep in set(_COMPILED_IMPORT_RE.findall(text)):
            importers.setdefault(dep, []).append(module)
    out: set[str] = set()
    todo = list(changed)
    while todo:
        for module in importers.get(todo.pop(), ()):
            if module not in out:
                out.add(module)
                todo.append(module)
    return out


def _record_sources(py_dir: Path, keys: dict[str, str], modules: list[str]) -> None:
    """Note the file each compiled module came from (``keys``: as before the compile), for the prune."""
    record = {m: keys[m] for m in modules}
    with contextlib.suppress(OSError):
        (py_dir / _SOURCES_FILE).write_text(json.dumps(record), encoding="utf-8")


def _run_pysmi(
    wanted: list[str],
    site: dict[str, SiteSource],
    stubs: StubSet,
    py_dir: Path,
    stand_ins: dict[str, StandIn] | None = None,
) -> dict[str, Any]:
    from pysmi.codegen.pysnmp import PySnmpCodeGen
    from pysmi.compiler import MibCompiler
    from pysmi.searcher.pyfile import PyFileSearcher
    from pysmi.searcher.stub import StubSearcher
    from pysmi.writer.pyfile import PyFileWriter

    compiler = MibCompiler(_parser(py_dir), _code_generator(), PyFileWriter(str(py_dir)))
    compiler.add_sources(_reader(site, stubs, stand_ins))
    compiler.add_searchers(
        PyFileSearcher(str(py_dir)),
        StubSearcher(*sorted(stubs.names | set(PySnmpCodeGen.baseMibs))),
    )
    with _templates_compiled_once():
        result: dict[str, Any] = compiler.compile(*wanted, ignoreErrors=True, genTexts=False)
    return result


def _code_generator() -> Any:
    """pysmi's PySnmpCodeGen, with what goes wrong in one module kept to that module.

    pysmi turns a node's ``{ parent 1 }`` into numbers by recursing through
    the parents: OID definitions that refer to each other in a cycle (across
    modules, or within one) recursed until RecursionError, which pysmi does
    not catch, so the whole compile failed and no site MIB loaded. The
    cycle is now found and reported (at a definition in it, in the module
    being compiled); any other exception of pysmi's in one module's code
    generation fails that module, as its own errors do.
    """
    from pysmi import error as smi_error
    from pysmi.codegen.pysnmp import PySnmpCodeGen

    class _CodeGen(PySnmpCodeGen):  # type: ignore[misc]
        _resolving: list[tuple[str, str]]

        def gen_code(self, ast: Any, symbolTable: Any, **kwargs: Any) -> Any:
            self._resolving = []
            try:
                return super().gen_code(ast, symbolTable, **kwargs)
            except smi_error.PySmiError:
                raise
            except RecursionError as exc:
                raise smi_error.PySmiSemanticError("definitions nested too deep for pysmi") from exc
            except Exception as exc:
                raise smi_error.PySmiSemanticError(
                    f"pysmi failed on it: {type(exc).__name__}: {exc}"
                ) from exc

        def gen_numeric_oid(self, oid: Any) -> Any:
            # Each parent is (symbol, module); a parent already being resolved above is a cycle.
            parents = [(p[1], p[0]) for p in oid if isinstance(p, tuple) and p[0] != "iso"]
            for key in parents:
                if key in self._resolving:
                    cycle = [*self._resolving[self._resolving.index(key) :], key]
                    own = next((sym for mod, sym in cycle if mod == self.moduleName[0]), key[1])
                    path = " -> ".join(f"{mod}::{sym}" for mod, sym in cycle)
                    raise smi_error.PySmiSemanticError(
                        f"OID defined through itself, a cycle: {path} (symbol: {own})"
                    )
            self._resolving += parents
            try:
                return super().gen_numeric_oid(oid)
            finally:
                del self._resolving[len(self._resolving) - len(parents) :]

    return _CodeGen()


@contextlib.contextmanager
def _templates_compiled_once() -> Iterator[None]:
    """pysmi's code generator with one Jinja2 environment for the whole compile.

    pysmi 2.0's ``PySnmpCodeGen.gen_code`` makes a new ``jinja2.Environment``
    for every module, so every module compiles pysmi's two templates again:
    0.4 s a module, 88 % of the time a bundle took (81 s of 92 s for 202
    modules), and Cisco's v2 bundle ran past the daemon's compile limit. The
    environments it asks for are the same each time (same loader path and
    options), so the first is handed out again, and with it its template
    cache. This reaches into pysmi's module; when it does not look as
    expected, pysmi runs as it is.
    """
    try:
        import jinja2
        from pysmi.codegen import pysnmp as codegen
    except ImportError:
        yield
        return
    if getattr(codegen, "jinja2", None) is not jinja2:
        yield
        return
    envs: dict[tuple[Any, ...], jinja2.Environment] = {}

    class _Jinja2:
        """The jinja2 module as pysmi's code generator sees it, whose Environment is made once."""

        def __getattr__(self, name: str) -> Any:
            return getattr(jinja2, name)

        @staticmethod
        def Environment(*args: Any, **kwargs: Any) -> jinja2.Environment:  # jinja2's name
            loader = kwargs.get("loader")
            key = (
                tuple(getattr(loader, "searchpath", None) or (id(loader),)),
                repr(args),
                tuple(sorted((k, repr(v)) for k, v in kwargs.items() if k != "loader")),
            )
            env = envs.get(key)
            if env is None:
                env = envs[key] = jinja2.Environment(*args, **kwargs)
            return env

    codegen.jinja2 = _Jinja2()
    try:
        yield
    finally:
        codegen.jinja2 = jinja2


def _parser(py_dir: Path) -> Any:
    """pysmi's SMI parser, with its LALR tables cached beside the compiled MIBs.

    pysmi 2.x builds a lark LALR parser from its grammar on every start: about
    2.5 s, most of a small compile. lark can cache that analysis in a file
    (validated by a hash of the grammar); this reaches into pysmi's parser
    module for the grammar, so any mismatch falls back to pysmi's own parser.
    """
    from pysmi.parser.dialect import smi_v1_relaxed
    from pysmi.parser.smi import parserFactory

    # What net-snmp reads too, and vendor bundles are written for it: upper-case enumeration
    # labels, trailing commas in IMPORTS and SEQUENCE, SMIv1 keywords (pysmi's relaxed dialect).
    base = parserFactory(**smi_v1_relaxed)
    try:
        from lark import Lark
        from pysmi.parser.lark_parser import _SMI_V2_BOOTSTRAP_GRAMMAR, _BootstrapAstBuilder

        parser = base.__new__(base)
        parser.parser = Lark(
            _SMI_V2_BOOTSTRAP_GRAMMAR,
            parser="lalr",
            start="start",
            lexer="contextual",
            cache=str(py_dir / "smi-parser.lark-cache"),
        )
        parser.transformer = _BootstrapAstBuilder(base._grammarOptions)
        return parser
    except Exception:
        return base()


def _index_compiled(
    py_dir: Path,
    modules: list[str],
    site: dict[str, SiteSource],
    uncompiled: set[str],
    shipped: frozenset[str] = frozenset(),
) -> tuple[dict[str, Any], list[MibProblem]]:
    import pysnmp_mibs
    from pysnmp.smi import builder as smi_builder

    from trapd.mibindex import _versions

    b = _lenient_builder()
    b.add_mib_sources(
        smi_builder.DirMibSource(os.path.dirname(pysnmp_mibs.__file__ or "")),
        smi_builder.DirMibSource(str(py_dir)),
    )
    loaded: list[str] = []
    failures: dict[str, Exception] = {}
    with warnings.catch_warnings():
        # pysmi 2.0 still writes importSymbols/exportSymbols, which pysnmp 7.1 deprecates.
        warnings.simplefilter("ignore", DeprecationWarning)
        for m in modules:
            try:
                b.load_modules(m)
                loaded.append(m)
            except Exception as exc:
                failures[m] = exc
    problems = [
        problem_at(site[m], _load_failure(m, exc, py_dir, set(site), uncompiled, set(failures), shipped))
        for m, exc in failures.items()
    ]
    return index_builder_modules(b, loaded).result(_versions()), problems


# The SMI's base types: what SNMPv2-SMI defines and every module may use.
_SMI_BASE_TYPES = frozenset({*_APPLICATION_TYPES, "Integer32"})


def _lenient_builder() -> Any:
    """A pysnmp MibBuilder that takes an SMI base type from SNMPv2-SMI when a module lacks it.

    CISCO-ENTITY-ALARM-MIB (and others of Cisco's) import ``Unsigned32 FROM
    CISCO-TC``, which only imports it from SNMPv2-SMI itself. net-snmp accepts
    that; pysnmp does not export an imported symbol, so the module would not
    load for a name that can only mean SNMPv2-SMI's type.
    """
    from pysnmp.smi import builder as smi_builder
    from pysnmp.smi import error as smi_error

    class _LenientBuilder(smi_builder.MibBuilder):  # type: ignore[misc]
        def import_symbols(self, modName: str, *symNames: str, **userCtx: Any) -> tuple[Any, ...]:
            try:
                got: tuple[Any, ...] = super().import_symbols(modName, *symNames, **userCtx)
                return got
            except smi_error.SmiError:
                if modName not in self.mibSymbols or not any(s in _SMI_BASE_TYPES for s in symNames):
                    raise
            out: list[Any] = []
            for name in symNames:
                own = name in self.mibSymbols[modName]
                out += super().import_symbols(modName if own else "SNMPv2-SMI", name, **userCtx)
            return tuple(out)

    return _LenientBuilder()


# pysnmp's MibNotFoundError text, and the imports pysmi writes into a compiled module.
_NOT_FOUND_RE = re.compile(r'MIB file "([A-Za-z0-9_.-]+?)\.py\[co\]" not found')
_COMPILED_IMPORT_RE = re.compile(r'importSymbols\(\s*"([^"]+)"')
_NO_SYMBOL_RE = re.compile(r"No symbol ([A-Za-z][A-Za-z0-9-]*)::([A-Za-z][A-Za-z0-9-]*)")
_AT_BUILDER_RE = re.compile(r" at <pysnmp\.smi\.builder\.\w+ object at 0x[0-9a-f]+>")
_CAUSED_BY_RE = re.compile(r"caused by <class '(?:[\w.]*\.)?(\w+)'>: ")
_MAX_LOAD_ERROR = 300


def _imported_symbols(compiled: str, module: str) -> list[str]:
    """The symbols a pysmi-compiled module imports from ``module``."""
    call = re.search(r'importSymbols\(\s*"' + re.escape(module) + r'"((?:\s*,\s*"[^"]+")*)\s*\)', compiled)
    return re.findall(r'"([^"]+)"', call.group(1)) if call else []


def _load_failure(
    module: str,
    exc: Exception,
    py_dir: Path,
    present: set[str],
    uncompiled: set[str],
    unloaded: set[str],
    shipped: frozenset[str] = frozenset(),
) -> str:
    """Why a compiled module does not load, as its author can act on it.

    pysmi compiles a module whose imports it could not all find when the
    missing symbols are only types (a vendor's TC from a module the site did
    not bring): pysnmp's load then fails with a multi-kilobyte traceback. The
    reason is the import: a module that is missing, that is in the directories
    (``present``) but did not compile or load, or that does not define the
    symbol (the line is then that module's ``FROM``, see problem_at).
    Anything else: pysnmp's own cause, without the traceback.
    """
    text = str(exc)
    try:
        source = (py_dir / f"{module}.py").read_text(encoding="utf-8", errors="replace")
    except OSError:
        source = ""
    imports = list(dict.fromkeys(_COMPILED_IMPORT_RE.findall(source)))
    missing = _NOT_FOUND_RE.search(text)
    if missing is not None and missing.group(1) in imports:
        dep = missing.group(1)
        if dep in shipped:
            # A module trapd has (pysmi maps what it defines): what is still imported, it lacks.
            wanted = _imported_symbols(source, dep)
            it = "it" if len(wanted) == 1 else "them"
            return f"imports {', '.join(wanted) or 'symbols'} from {dep}, which does not define {it}"
        if dep not in present:
            return f"imports from {dep}, which is neither shipped nor in the MIB directories"
        return f"imports from {dep}, which {'failed to compile' if dep in uncompiled else 'does not load'}"
    undefined = _NO_SYMBOL_RE.search(text)
    if undefined is not None and undefined.group(1) in imports and undefined.group(1) not in unloaded:
        return f"imports {undefined.group(2)} from {undefined.group(1)}, which does not define it"
    for dep in imports:
        if dep in unloaded and dep != module:
            return f"imports from {dep}, which does not load"
    causes = list(_CAUSED_BY_RE.finditer(text))
    if causes:
        text = f"{causes[-1].group(1)}: {text[causes[-1].end() :]}"
    text = " ".join(_AT_BUILDER_RE.sub("", text).split())
    if len(text) > _MAX_LOAD_ERROR:
        text = text[: _MAX_LOAD_ERROR - 3] + "..."
    return f"compiled module does not load: {text}"


def _die_with_parent(parent: int) -> bool:
    """SIGKILL this process when its parent dies; False when the parent is already gone.

    A trapd killed or stopped during its start-up compile left the compile
    running on for minutes (hundreds of MB), writing into the MIB cache while
    the next trapd compiled into it too: the cache's lock was the dead
    parent's. Nothing here is worth a clean stop: what it wrote is not yet
    recorded as compiled, so the next compile does it again.
    """
    import ctypes
    import signal

    pr_set_pdeathsig = 1
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the parent's stop kills nothing
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL, 0, 0, 0)
    return os.getppid() == parent


def main(argv: list[str] | None = None) -> int:
    """``python -m trapd.mibcompile --out FILE [--cache-dir DIR] DIR...``: the daemon's compile child.

    trapd runs the compile in a child process so that pysmi, its parser
    tables and the MibBuilder it loads (~40 MB) never stay in the daemon.
    Writes the site index (with ``problems``) to FILE; exit 0 even when MIBs
    are broken, non-zero only when the compiler itself failed.
    """
    import argparse
    import json

    from trapd.mibindex import write_index

    # When the unit runs out of memory (MemoryMax) or the host does, the kernel kills the process
    # it scores highest: let that be this child, not the daemon, a worker, or Kea beside it. The
    # daemon then starts with the shipped MIBs and says why (trapd.mibs.load_site_index).
    with contextlib.suppress(OSError):
        Path("/proc/self/oom_score_adj").write_text("1000", encoding="ascii")

    ap = argparse.ArgumentParser(prog="python -m trapd.mibcompile")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--parent", type=int, default=None, help="end when this process (the caller) ends")
    ap.add_argument("dirs", nargs="*", type=Path)
    args = ap.parse_args(argv)
    if args.parent is not None and not _die_with_parent(args.parent):
        return 1
    try:
        shipped = json.loads(SHIPPED_INDEX.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        shipped = None
    data, problems = compile_site(list(args.dirs), args.cache_dir, shipped)
    data["problems"] = [p.to_wire() for p in problems]
    write_index(data, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
