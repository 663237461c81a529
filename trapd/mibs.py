"""MIB names for OIDs, resolved from a precomputed index: no MIB-view walk per varbind.

The ``mibs:`` section of trapd.yaml::

    mibs:
      dirs: [/usr/share/snmp/mibs, /etc/trapd/mibs]   # site MIB sources (default: these two, if present)
      cache_dir: /var/lib/trapd/mibs                  # compiled output (default: <state_dir>/mibs)

Where names come from:

* ``trapd/data/mib-index.json``, shipped: pysnmp's core modules plus the 275
  IETF/IANA modules of ``pysnmp-mibs`` (IF-MIB, BRIDGE-MIB, Q-BRIDGE-MIB,
  ENTITY-MIB, ...), indexed at build time by :mod:`trapd.mibindex`
  (``trapd mibs build-index`` rebuilds it);
* the site's MIB directories, compiled offline with pysmi by
  :mod:`trapd.mibcompile` into ``cache_dir`` and indexed there
  (``site-index.json``). A fingerprint of the source files (names, sizes,
  mtimes) decides whether that work is needed: an unchanged directory costs
  one ``stat`` per file at start-up, not a compile. The first start after a
  change compiles (seconds, in a child process); ``trapd mibs compile`` does
  it ahead of a restart. A reload (SIGHUP) asks :meth:`MibResolver.is_current`
  and loads the MIBs again when their files changed.

Start-up: the merged tables are also kept as a marshal snapshot in the cache
(``resolver.marshal``), which loads in ~60 ms and ~11 MB of RSS instead of
~200 ms and ~23 MB for parsing the JSON indexes (2-vCPU VM, 21,000 names).
Without a state directory (tools, tests) the cache is per user under
``$XDG_CACHE_HOME/trapd/mibs``.

A broken MIB never stops trapd: it is named in :attr:`MibResolver.problems`
(``/path/file.mib:LINE: MODULE: reason``) and everything else loads. An OID no MIB names stays
numeric; a notification is never dropped for lack of a MIB.

Resolution (:meth:`MibResolver.resolve`) is a longest-prefix lookup in a dict
keyed by OID tuples, fronted by a bounded cache keyed by the full OID, so the
receive path pays one dict lookup per varbind once an OID has been seen
(~0.3 us; ~4 us the first time). A name is given to an OID the MIBs define
themselves, or to an instance below an object (``ifIndex.17``); anything else
below a named node (``enterprises.424242``) stays numeric rather than getting
a misleading prefix name.
"""

from __future__ import annotations

import contextlib
import json
import marshal
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trapd.bounded import BoundedCache
from trapd.event import parse_oid
from trapd.listener.raw import Oid

# mibcompile needs these too: kept in mibindex (which imports nothing of trapd), not here,
# so that mibs -> mibcompile is the only arrow between the two.
from trapd.mibindex import SHIPPED_INDEX, MibProblem, source_files, unreadable_dirs
from trapd.statedir import leave_to_state_owner
from trapd.yamlsource import ConfigError, check_keys, expect, where

DEFAULT_DIRS = (Path("/usr/share/snmp/mibs"), Path("/etc/trapd/mibs"))
SITE_INDEX_NAME = "site-index.json"
SNAPSHOT_NAME = "resolver.marshal"
SNAPSHOT_FORMAT = 3  # 2: problems as MibProblem wire lists; 3: rows' INDEX clauses
# Node kinds that hold values: an OID below one of them is an instance (ifIndex.17).
OBJECT_KINDS = frozenset({"column", "scalar"})
# Kinds that only name a place in the tree (OBJECT IDENTIFIER, OBJECT-IDENTITY).
_ALIAS_KINDS = frozenset({"node", "identity"})
# Bounds on the per-OID resolution cache, in entries and bytes (trapd.bounded). Cleared
# when full: a trap storm repeats few OIDs, and a flood of distinct OIDs (up to 128 arcs
# of up to 2^32 each: about 7 KB per entry with its dotted name) must not grow memory.
CACHE_LIMIT = 20_000
CACHE_MAX_BYTES = 16 * 1024 * 1024


@dataclass(frozen=True)
class MibConfig:
    """Where site MIBs are and where their compiled form is cached.

    ``dirs`` None means the defaults (/usr/share/snmp/mibs, /etc/trapd/mibs)
    that exist; an explicit empty list means no site MIBs at all.
    ``cache_dir`` None means ``<state_dir>/mibs`` (the caller knows state_dir).
    """

    dirs: tuple[Path, ...] | None = None
    cache_dir: Path | None = None

    @classmethod
    def from_yaml(cls, node: Any, base_dir: Path) -> MibConfig:
        n = check_keys(node, {"dirs", "cache_dir"}, "mibs")
        raw_dirs = expect(n, "dirs", (list, str), "mibs")
        dirs: tuple[Path, ...] | None = None
        if raw_dirs is not None:
            items = [raw_dirs] if isinstance(raw_dirs, str) else raw_dirs
            for i, d in enumerate(items):
                if not isinstance(d, str) or not d:
                    raise ConfigError("mibs.dirs entries must be directory paths", where(raw_dirs, i))
            dirs = tuple(base_dir / d for d in items)
        cache = expect(n, "cache_dir", str, "mibs")
        return cls(dirs=dirs, cache_dir=base_dir / cache if cache else None)

    def source_dirs(self) -> list[Path]:
        if self.dirs is not None:
            return list(self.dirs)
        return [d for d in DEFAULT_DIRS if d.is_dir()]

    def cache_path(self, state_dir: Path | None) -> Path | None:
        """``cache_dir``, else ``<state_dir>/mibs``, else a per-user cache for tools run without a state dir.

        The per-user cache (``$XDG_CACHE_HOME/trapd/mibs/<hash of dirs>``) keeps
        ``trapd listen`` and tests from recompiling the site MIBs every run.
        """
        if self.cache_dir is not None:
            return self.cache_dir
        if state_dir is not None:
            return state_dir / "mibs"
        import hashlib

        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        key = hashlib.sha256("\n".join(map(str, self.source_dirs())).encode()).hexdigest()[:12]
        return Path(base) / "trapd" / "mibs" / key


class Syntax:
    """What a MIB says about an object's values (shared by every object of that syntax).

    ``base``: SMI base type (Integer32, OctetString, Gauge32, Bits, ...);
    ``tc``: ``MODULE::Name`` of its textual convention or ""; ``hint``: the
    DISPLAY-HINT or ""; ``enums``: label -> number for enumerated INTEGERs
    and BITS; ``labels``: number -> label.
    """

    __slots__ = ("base", "enums", "hint", "labels", "tc")

    def __init__(self, base: str, tc: str, hint: str, enums: Iterable[tuple[str, int]] | None) -> None:
        self.base = base
        self.tc = tc
        self.hint = hint
        self.enums: dict[str, int] = dict(enums or ())
        self.labels: dict[int, str] = {v: k for k, v in self.enums.items()}

    def _key(self) -> tuple[str, str, str, tuple[tuple[str, int], ...]]:
        return (self.base, self.tc, self.hint, tuple(self.enums.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Syntax) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __repr__(self) -> str:
        return f"Syntax({self.base!r}, tc={self.tc!r}, hint={self.hint!r}, enums={self.enums!r})"


# One named node: (MODULE::symbol, kind, syntax number or -1). Plain data, so
# the whole table can be marshalled into the start-up snapshot.
_Node = tuple[str, str, int]
# One INDEX object of a row: (column OID, MODULE::symbol, kind, fixed length or -1, implied,
# syntax number); see trapd.mibindex for the kinds and trapd.instance for their decoding.
IndexObject = tuple[Oid, str, str, int, bool, int]
# A resolution: (name, index, syntax or None, kind or "").
Resolved = tuple[str, Oid, Syntax | None, str]


def _dotted(oid: Oid) -> str:
    return ".".join(map(str, oid))


class MibResolver:
    """OID <-> name, enum labels and display hints from the loaded MIB index.

    Build it with :meth:`load` (config + shipped index + site MIBs) or
    :meth:`from_index` (index data in memory, for tests and tools).
    """

    def __init__(self) -> None:
        self.problems: list[MibProblem] = []
        # True when this load compiled the site MIBs (their sources changed): its problems are news.
        # A load from the cache repeats problems already reported once.
        self.problems_are_new = False
        self.sources: list[str] = []
        self.site_modules: set[str] = set()
        self._nodes: dict[Oid, _Node] = {}
        self._syntaxes: list[Syntax] = []
        self._by_name: dict[str, Oid] = {}
        self._by_symbol: dict[str, Oid] | None = None
        self._homonyms: dict[str, list[tuple[str, Oid]]] | None = None
        self._modules: dict[str, Oid] = {}
        self._tcs: dict[str, int] = {}
        self._rows: dict[Oid, tuple[IndexObject, ...]] = {}
        self._cache: BoundedCache[Oid, Resolved] = BoundedCache(CACHE_LIMIT, CACHE_MAX_BYTES)
        self._max_len = 0  # longest named OID: the prefix walk starts there, not at a hostile 128-arc OID
        # fingerprint() of the MIB files this resolver was loaded from; None when not loaded from files.
        self._source_key: str | None = None
        self._digest: str | None = None  # digest(), once asked

    # -- loading -----------------------------------------------------------

    @classmethod
    def load(
        cls,
        config: MibConfig | None = None,
        state_dir: Path | None = None,
        *,
        compile_in_process: bool = False,
        progress: Callable[[float], None] | None = None,
        cancel: threading.Event | None = None,
    ) -> MibResolver:
        """The shipped index plus the site's compiled MIBs. Never raises for a bad MIB.

        Problems are returned in :attr:`problems`, not logged: the caller
        reports them its own way (the daemon's log, ``trapd check`` output).

        Site directories are compiled only when their files changed since the
        cached compile; problems (broken files, unresolvable imports) are kept
        in the cache too, so every start reports them, not only the first.
        ``progress`` is called while the site MIBs compile, and ``cancel`` ends the compile
        (see :func:`load_site_index`).
        """
        config = config or MibConfig()
        dirs = config.source_dirs()
        cache = config.cache_path(state_dir)
        snapshot_key = _snapshot_key(dirs)
        source_key = fingerprint(dirs)
        if cache is not None:
            cached = cls._from_snapshot(cache / SNAPSHOT_NAME, snapshot_key)
            if cached is not None:
                cached._source_key = source_key
                return cached
        try:
            r = cls()
            r._source_key = source_key
            shipped: dict[str, Any] | None = None
            try:
                shipped = shipped_index()
            except (OSError, ValueError) as exc:
                r.problems.append(
                    MibProblem(f"{SHIPPED_INDEX.name}: {exc}; rebuild it with `trapd mibs build-index`")
                )
                r.problems_are_new = True
            if shipped is not None:
                r.add_index(shipped, SHIPPED_INDEX.name)
            complete = shipped is not None
            if dirs:
                # News at every start, as a failed compile: the site's names are missing until fixed.
                unlisted = unreadable_dirs(dirs)
                r.problems += unlisted
                r.problems_are_new = r.problems_are_new or bool(unlisted)
                complete = complete and not unlisted  # no snapshot: it would make them old news
                site = load_site_index(
                    dirs, cache, shipped, in_process=compile_in_process, progress=progress, cancel=cancel
                )
                r.problems += site.problems
                # A compile that failed is news at every start: the site's names are missing until fixed.
                r.problems_are_new = r.problems_are_new or site.compiled or site.failed
                if site.index is not None:
                    r.add_index(site.index, "site MIBs", site=True)
                complete = complete and (site.index is not None or not source_files(dirs)) and site.cached
            if complete and cache is not None:
                r._write_snapshot(cache / SNAPSHOT_NAME, snapshot_key)
            return r
        finally:
            if cache is not None:  # a daemon's cache compiled by root, also when interrupted (^C)
                leave_to_state_owner(cache, cache.parent)

    def digest(self) -> str:
        """A digest of what these MIBs say (names, OIDs, kinds, syntaxes, tables' INDEX clauses), the
        same however they were loaded (compiled, or from the snapshot) and wherever their files
        are: the hosts sharing a journal compare it (trapd.kea.pairview), since a notification's
        names and values, and so what a rule's templates and conditions make of it, come from them.
        Computed once (0.1-0.5 s for a vendor's whole bundle): a reload that loads other MIBs asks
        it in its thread."""
        if self._digest is None:
            import hashlib

            keys = [s._key() for s in self._syntaxes]
            h = hashlib.blake2b(digest_size=16)
            for oid, (name, kind, syn) in sorted(self._nodes.items()):
                h.update(repr((oid, name, kind, keys[syn] if syn >= 0 else None)).encode())
            h.update(b"\x1e" + repr(sorted(self._by_name.items())).encode())
            for row, objects in sorted(self._rows.items()):
                cols = [(*o[:5], keys[o[5]] if o[5] >= 0 else None) for o in objects]
                h.update(repr((row, cols)).encode())
            self._digest = h.hexdigest()
        return self._digest

    def is_current(self, config: MibConfig | None = None) -> bool:
        """False when ``config``'s MIB files (or the shipped index) changed since this resolver was loaded.

        One ``stat`` per file: a reload asks it, and loads the MIBs again only when it is False.
        A resolver not loaded from files (:meth:`from_index`) is always current.
        """
        if self._source_key is None:
            return True
        return self._source_key == fingerprint((config or MibConfig()).source_dirs())

    # A snapshot of the merged tables, written with marshal: loading it takes
    # ~30 ms and ~9 MB, where parsing the JSON indexes takes ~150 ms and
    # leaves ~20 MB of RSS behind. marshal's format may change between
    # Python versions, so the version is part of the key; any mismatch or
    # damage just means the JSON path runs and writes a new one.

    def _snapshot(self) -> tuple[Any, ...]:
        syntaxes = [(s.base, s.tc, s.hint, tuple(s.enums.items())) for s in self._syntaxes]
        return (
            self._nodes,
            syntaxes,
            self._by_name,
            self._modules,
            self._tcs,
            sorted(self.site_modules),
            [p.to_wire() for p in self.problems],
            self.sources,
            self._rows,
        )

    def _write_snapshot(self, path: Path, key: str) -> None:
        tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
        try:
            blob = marshal.dumps((SNAPSHOT_FORMAT, key, self._snapshot()))
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_bytes(blob)
            os.replace(tmp, path)
        except (OSError, ValueError):
            # A cache, not a requirement; but a write cut short by a full disk is removed, or it
            # kept the last free bytes of the state directory, which the journal beside it needs.
            with contextlib.suppress(OSError):
                tmp.unlink()

    @classmethod
    def _from_snapshot(cls, path: Path, key: str) -> MibResolver | None:
        try:
            blob = path.read_bytes()
            fmt, stored_key, body = marshal.loads(blob)
            if fmt != SNAPSHOT_FORMAT or stored_key != key:
                return None
            nodes, syntaxes, by_name, modules, tcs, site_modules, problems, sources, rows = body
            r = cls()
            r._nodes = nodes
            r._max_len = max(map(len, nodes), default=0)
            r._syntaxes = [Syntax(b, t, h, e) for b, t, h, e in syntaxes]
            r._by_name = by_name
            r._modules = modules
            r._tcs = tcs
            r._rows = rows
            r.site_modules = set(site_modules)
            r.problems = [MibProblem.from_wire(p) for p in problems]
            r.sources = [*sources, "snapshot"]
            return r
        except (OSError, ValueError, EOFError, TypeError):
            return None

    @classmethod
    def from_index(cls, *indexes: dict[str, Any]) -> MibResolver:
        r = cls()
        for i, data in enumerate(indexes):
            r.add_index(data, f"index {i}", site=i > 0)
        return r

    def add_index(self, data: dict[str, Any], source: str, *, site: bool = False) -> None:
        """Merge one index (format of :mod:`trapd.mibindex`); later indexes win on equal rank.

        Within an index the nodes are already in preference order. A site
        index overrides the shipped names for the same OID, except that a bare
        OBJECT IDENTIFIER never hides an object or notification defined there.
        """
        if data.get("format") != 1:
            raise ValueError(f"{source}: unsupported MIB index format {data.get('format')!r}")
        modules = [m[0] for m in data["modules"]]
        base = len(self._syntaxes)
        self._syntaxes += [Syntax(s[0], s[1], s[2], s[3]) for s in data["syntaxes"]]
        nodes, by_name = self._nodes, self._by_name
        weak = _ALIAS_KINDS
        for oid_list, mod_no, sym, kind, syn_no in data["nodes"]:
            oid = tuple(oid_list)
            name = f"{modules[mod_no]}::{sym}"
            prev = nodes.get(oid)
            if prev is not None and site and kind in weak and prev[1] not in weak:
                by_name[name] = oid
                continue
            nodes[oid] = (name, kind, base + syn_no if syn_no >= 0 else -1)
            if len(oid) > self._max_len:
                self._max_len = len(oid)
            by_name[name] = oid
        for name, moid, _legacy in data["modules"]:
            if moid:
                self._modules[name] = tuple(int(x) for x in moid.split("."))
        for mod_no, tc_name, syn_no in data.get("tcs", ()):
            self._tcs[f"{modules[mod_no]}::{tc_name}"] = base + syn_no
            self._tcs.setdefault(tc_name, base + syn_no)
        for row_oid, objects in data.get("rows", ()):
            self._rows[tuple(row_oid)] = tuple(
                (tuple(col), name, kind, fixed, bool(implied), base + syn_no)
                for col, name, kind, fixed, implied, syn_no in objects
            )
        if site:
            self.site_modules.update(modules)
        self._by_symbol = None
        self._homonyms = None
        self._digest = None
        self._cache.clear()
        self.sources.append(source)

    # -- resolution ----------------------------------------------------------

    def describe(self, oid: Oid) -> Resolved:
        """``(name, index, syntax, kind)`` for an OID: the receive-path entry point.

        ``name`` is ``MODULE::symbol`` when a MIB defines the OID itself (any
        node; index ``()``) or an object (scalar or column) above it (the rest
        is the index). Anything else, including OIDs below a non-object node,
        gives the dotted OID, index ``()``, no syntax and kind "".
        """
        hit = self._cache.get(oid)
        if hit is not None:
            return hit
        nodes = self._nodes
        node = nodes.get(oid)
        syntaxes = self._syntaxes
        if node is not None and node[1] not in _ALIAS_KINDS:
            hit = (node[0], (), syntaxes[node[2]] if node[2] >= 0 else None, node[1])
        else:
            # No node here, or only a bare OBJECT IDENTIFIER: some modules name
            # an instance (DISMAN-EXPRESSION-MIB::sysUpTimeInstance is
            # sysUpTime.0); the object above it is the better name.
            hit = (node[0], (), None, node[1]) if node is not None else (_dotted(oid), (), None, "")
            for cut in range(min(len(oid) - 1, self._max_len), 0, -1):
                parent = nodes.get(oid[:cut])
                if parent is not None:
                    if parent[1] in OBJECT_KINDS:
                        syn = syntaxes[parent[2]] if parent[2] >= 0 else None
                        hit = (parent[0], oid[cut:], syn, parent[1])
                    break
        cache = self._cache
        if len(cache) >= CACHE_LIMIT:  # read here, not only at construction: tests lower it
            cache.clear()
        # The key tuple (its arcs are ints of up to 32 bytes), the name and the index.
        cache.put(oid, hit, 200 + 40 * len(oid) + len(hit[0]) + 8 * len(hit[1]))
        return hit

    @property
    def cached(self) -> Callable[[Oid], Resolved | None]:
        """The cache's ``get``: a hit costs one dict lookup (the normalizer's fast path)."""
        return self._cache.get

    def resolve(self, oid: Oid) -> tuple[str, Oid]:
        """``("IF-MIB::ifIndex", (17,))``, or ``("1.3.6.1.4.1.99.1", ())`` when no MIB names it."""
        hit = self.describe(oid)
        return hit[0], hit[1]

    def name_of(self, oid: Oid) -> str:
        """``IF-MIB::ifIndex.17`` style: the name with its index appended, or the dotted OID."""
        name, index, _s, _k = self.describe(oid)
        return f"{name}.{_dotted(index)}" if index else name

    def lookup(self, name: str) -> Oid | None:
        """OID for ``IF-MIB::linkDown``, ``linkDown``, ``ifIndex.17``, ``1.3.6.1...``; None if unknown."""
        text = name.strip()
        if not text:
            return None
        if text[0].isdigit() or text[0] == ".":
            try:
                return parse_oid(text)
            except ValueError:
                return None
        mod, sep, rest = text.partition("::")
        if not sep:
            mod, rest = "", text
        sym, dot, idx = rest.partition(".")
        base = self._by_name.get(f"{mod}::{sym}") if mod else self._symbols().get(sym)
        if base is None:
            return None
        if not dot:
            return base
        try:
            return base + parse_oid(idx)
        except ValueError:
            return None

    def _symbols(self) -> dict[str, Oid]:
        by = self._by_symbol
        if by is None:
            # Built on first use: only rules and tools look up bare symbols.
            by = {}
            for name, oid in self._by_name.items():
                sym = name.partition("::")[2]
                node = self._nodes.get(oid)
                # The OID's own (preferred) definition wins over other modules' aliases.
                if sym not in by or (node is not None and node[0] == name):
                    by[sym] = oid
            self._by_symbol = by
        return by

    def close_name(self, name: str) -> str | None:
        """The known name ``name`` most likely misspells (``IF-MIB::linkDwn`` -> ``IF-MIB::linkDown``,
        ``IF-MI::linkDown`` -> ``IF-MIB::linkDown``), with its index kept; None if none is close.

        For error messages only (a scan of the names: milliseconds per call).
        """
        import difflib

        text = name.strip()
        mod, sep, rest = text.partition("::")
        if not sep:
            mod, rest = "", text
        sym, dot, idx = rest.partition(".")
        suffix = f"{dot}{idx}"

        def close(word: str, words: Iterable[str]) -> str | None:
            near = [w for w in words if abs(len(w) - len(word)) <= 3]
            hit = difflib.get_close_matches(word, near, n=1, cutoff=0.8)
            return hit[0] if hit else None

        if not mod:
            hit = close(sym, self._symbols())
            return f"{hit}{suffix}" if hit else None
        in_module = [n.partition("::")[2] for n in self._by_name if n.startswith(f"{mod}::")]
        if in_module:
            hit = close(sym, in_module)
            return f"{mod}::{hit}{suffix}" if hit else None
        modules = {n.partition("::")[0] for n in self._by_name if n.endswith(f"::{sym}")}
        other = close(mod, modules)
        return f"{other}::{sym}{suffix}" if other else None

    def definitions(self, symbol: str) -> list[tuple[str, Oid]]:
        """``[(MODULE::symbol, oid), ...]`` when MIBs define ``symbol`` at different OIDs, else [].

        A bare symbol then names only one of them (:meth:`lookup` picks it); the rule
        compiler says so where a rule uses it. Aliases of one OID do not count.
        """
        homonyms = self._homonyms
        if homonyms is None:
            at: dict[str, dict[Oid, str]] = {}
            for name, oid in self._by_name.items():
                node = self._nodes.get(oid)
                places = at.setdefault(name.partition("::")[2], {})
                if oid not in places or (node is not None and node[0] == name):
                    places[oid] = name  # the OID's own (preferred) name, else the first alias
            homonyms = {
                sym: sorted(((n, o) for o, n in places.items()), key=lambda d: d[0])
                for sym, places in at.items()
                if len(places) > 1
            }
            self._homonyms = homonyms
        return list(homonyms.get(symbol, ()))

    def _syntax(self, name_or_oid: str | Oid) -> Syntax | None:
        if isinstance(name_or_oid, str):
            tc = self._tcs.get(name_or_oid)
            if tc is not None:
                return self._syntaxes[tc]
            oid = self.lookup(name_or_oid)
            if oid is None:
                return None
        else:
            oid = name_or_oid
        return self.describe(oid)[2]

    def enum_values(self, name_or_oid: str | Oid) -> dict[str, int]:
        """``{"up": 1, "down": 2, ...}`` for ifOperStatus (or a TC name); {} if not enumerated."""
        syn = self._syntax(name_or_oid)
        return dict(syn.enums) if syn is not None else {}

    def display_hint(self, name_or_oid: str | Oid) -> str | None:
        """DISPLAY-HINT of an object's syntax or of a TC (``MacAddress`` -> ``"1x:"``); None if none."""
        syn = self._syntax(name_or_oid)
        return syn.hint or None if syn is not None else None

    def syntax(self, name_or_oid: str | Oid) -> Syntax | None:
        return self._syntax(name_or_oid)

    def value_type(self, oid: Oid) -> str:
        """SMI base type of the object at or above ``oid`` (``ObjectIdentifier``, ``Integer32``...), or ""."""
        syn = self.describe(oid)[2]
        return syn.base if syn is not None else ""

    def tc(self, name: str) -> Syntax | None:
        """A textual convention by name (``MacAddress`` or ``SNMPv2-TC::MacAddress``)."""
        tc = self._tcs.get(name)
        return self._syntaxes[tc] if tc is not None else None

    def is_notification(self, oid: str | Oid) -> bool:
        key = self.lookup(oid) if isinstance(oid, str) else oid
        node = self._nodes.get(key) if key is not None else None
        return node is not None and node[1] == "notification"

    def kind(self, oid: Oid) -> str:
        """Node kind at exactly this OID (module, node, table, row, column, scalar, notification) or ""."""
        node = self._nodes.get(oid)
        return node[1] if node is not None else ""

    def subtree(self, name: str) -> Oid | None:
        """A module's MODULE-IDENTITY OID (``IF-MIB`` -> 1.3.6.1.2.1.31), else :meth:`lookup`."""
        moid = self._modules.get(name.strip())
        return moid if moid is not None else self.lookup(name)

    def notifications_of(self, module: str) -> frozenset[Oid]:
        """Every notification ``module`` defines (``IF-MIB`` -> linkDown, linkUp), wherever it sits."""
        prefix = module.strip() + "::"
        return frozenset(
            oid
            for name, oid in self._by_name.items()
            if name.startswith(prefix) and self.kind(oid) == "notification"
        )

    def row_index(self, row: Oid) -> tuple[IndexObject, ...] | None:
        """The INDEX objects of the table row at ``row`` (``ifEntry`` -> ifIndex), None if unknown."""
        return self._rows.get(row)

    def syntax_at(self, number: int) -> Syntax:
        """The syntax an :data:`IndexObject` names by number."""
        return self._syntaxes[number]

    def modules(self) -> list[str]:
        return sorted({name.partition("::")[0] for name in self._by_name})

    def __len__(self) -> int:
        return len(self._nodes)


def shipped_index() -> dict[str, Any]:
    """The shipped index data (``trapd/data/mib-index.json``); OSError/ValueError if unreadable."""
    return _read_index(SHIPPED_INDEX)


def _read_index(path: Path) -> dict[str, Any]:
    with path.open("rb") as f:
        data: dict[str, Any] = json.load(f)
    if not isinstance(data, dict) or data.get("format") != 1:
        raise ValueError("not a trapd MIB index (format 1)")
    return data


# -- site MIBs -------------------------------------------------------------


@dataclass
class SiteIndex:
    index: dict[str, Any] | None
    problems: list[MibProblem]
    compiled: bool  # True when this call ran the compiler (the cache was stale)
    cached: bool = True  # False when the result could not be kept (the next start compiles again)
    failed: bool = False  # the compiler itself failed (ran out of time, died): no index


def _shipped_tag() -> str:
    try:
        st = SHIPPED_INDEX.stat()
    except OSError:
        return "shipped=missing"
    return f"shipped={st.st_size}:{st.st_mtime_ns}"


def fingerprint(dirs: Iterable[Path]) -> str:
    """What the compiled site index depends on, cheap to compute (one stat per file)."""
    dirs = list(dirs)
    # 2: problems with file and line; 3-5: what compiles, and why not; 8: arcs of 2^32 or more left out;
    # 9: rows' INDEX clauses; 10: stand-ins for modules only TCs are imported from; 11: OID cycles
    # fail their modules only (a compile that failed whole for one is tried again)
    parts = ["format=11", _shipped_tag()]
    parts += [f"dir={d}" for d in dirs]
    for p in source_files(dirs):
        try:
            st = p.stat()
        except OSError:
            continue
        parts.append(f"{p}|{st.st_size}|{st.st_mtime_ns}")
    return "\n".join(parts)


def _snapshot_key(dirs: list[Path]) -> str:
    return f"python={sys.version_info[:3]};marshal={marshal.version}\n{fingerprint(dirs)}"


def load_site_index(
    dirs: list[Path],
    cache_dir: Path | None,
    shipped: dict[str, Any] | None,
    *,
    in_process: bool = False,
    progress: Callable[[float], None] | None = None,
    cancel: threading.Event | None = None,
) -> SiteIndex:
    """The compiled index of the site's MIB directories; compiles only when sources changed.

    Never raises: any failure becomes a problem line and the site MIBs are
    skipped (the shipped names still work). The compile runs in a child
    process unless ``in_process`` (tools, tests): pysmi and the MibBuilder
    it needs would otherwise stay in the daemon's memory (~40 MB). Processes
    sharing a cache (the daemon, ``trapd mibs``, tests) take turns through a
    lock file, so one never indexes another's half-written output.

    The child gets COMPILE_TIMEOUT; ``progress(seconds)`` is called when it
    starts and every PROGRESS_INTERVAL while it runs (the daemon asks systemd
    for more start-up time). A compile that failed that way is remembered for
    these sources: the next start does not spend the time again, and the
    problem says to run ``trapd mibs compile`` (``in_process``: no time
    limit, and it does not take a remembered failure for an answer).

    One exception: :class:`CompileCancelled` once ``cancel`` is set (the
    process is stopping: :func:`cancel_compiles`); nothing is remembered then.
    """
    fp = fingerprint(dirs)
    if not source_files(dirs):
        return SiteIndex(None, [], False)
    cached_path = cache_dir / SITE_INDEX_NAME if cache_dir is not None else None
    hit = _cached_site_index(cached_path, fp)
    if hit is not None and not (in_process and hit.failed):
        return hit
    with compile_lock(cache_dir):
        hit = _cached_site_index(cached_path, fp)  # compiled by another process meanwhile?
        if hit is not None and not (in_process and hit.failed):
            return hit
        try:
            if in_process:
                from trapd.mibcompile import compile_site

                data, problems = compile_site(dirs, cache_dir, shipped)
            else:
                data, problems = _compile_in_child(dirs, cache_dir, progress, cancel)
        except CompileCancelled:
            raise  # not a failure of these sources: the next start compiles them
        except Exception as exc:  # the compiler must never take trapd down
            if isinstance(exc, subprocess.TimeoutExpired):
                why = (
                    f"compiling the MIB directories took longer than {COMPILE_TIMEOUT:.0f} s and was stopped"
                )
            else:
                why = f"MIB compile failed: {type(exc).__name__}: {exc}"
            failure = MibProblem(
                f"{why}; only the shipped MIBs are loaded. Run `trapd mibs compile` (no time limit), "
                "then restart or reload trapd; it is not tried again until the MIB files change"
            )
            record = {"format": 1, "modules": [], "syntaxes": [], "nodes": [], "tcs": [], "failed": True}
            kept = _write_site_index(record, fp, [failure], cached_path) is None
            return SiteIndex(None, [failure], True, cached=kept, failed=True)
        cannot_write = _write_site_index(data, fp, problems, cached_path)
        if cannot_write is not None:
            problems = [*problems, cannot_write]
        return SiteIndex(data, problems, True, cached=cached_path is not None and cannot_write is None)


def _write_site_index(
    data: dict[str, Any], fp: str, problems: list[MibProblem], path: Path | None
) -> MibProblem | None:
    """Keep a compile's result (with its fingerprint and problems); the problem when it cannot be kept."""
    data["fingerprint"] = fp
    data["problems"] = [p.to_wire() for p in problems]
    if path is None:
        return None
    try:
        from trapd.mibindex import write_index

        write_index(data, path)
    except OSError as exc:
        return MibProblem(f"{path}: cannot write MIB cache: {exc.strerror or exc}")
    return None


def _cached_site_index(path: Path | None, fp: str) -> SiteIndex | None:
    if path is None:
        return None
    try:
        cached = _read_index(path)
    except (OSError, ValueError):
        return None
    if cached.get("fingerprint") != fp:
        return None
    problems = [MibProblem.from_wire(p) for p in cached.get("problems", [])]
    if cached.get("failed"):
        return SiteIndex(None, problems, False, failed=True)
    return SiteIndex(cached, problems, False)


@contextlib.contextmanager
def compile_lock(cache_dir: Path | None) -> Iterator[None]:
    """An exclusive flock on ``cache_dir/.compile.lock``; no lock when there is no usable cache."""
    if cache_dir is None:
        yield
        return
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(cache_dir / ".compile.lock", os.O_RDWR | os.O_CREAT, 0o644)
    except OSError:
        yield  # the compile reports the unusable cache itself
        return
    try:
        import fcntl

        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


class CompileCancelled(Exception):
    """The compile was ended by its ``cancel`` event (:func:`cancel_compiles`), not failed."""


# The compile children running now (a reload's, in a thread), with the event that cancels each.
_COMPILING: dict[subprocess.Popen[bytes], threading.Event] = {}
_COMPILING_LOCK = threading.Lock()


def cancel_compiles(cancel: threading.Event) -> None:
    """On stop: set ``cancel`` and end the MIB compiles it was given to (a reload's, in a thread).

    Their threads raise CompileCancelled at once and remember nothing, and none starts after.
    Left running, a reload's compile (up to COMPILE_TIMEOUT) held trapd's exit, which waits for
    its threads, past the unit's stop timeout, until systemd's SIGKILL.
    """
    with _COMPILING_LOCK:
        cancel.set()
        running = [proc for proc, event in _COMPILING.items() if event is cancel]
    for proc in running:
        with contextlib.suppress(OSError):
            proc.kill()


COMPILE_TIMEOUT = 600.0
# How often a running compile reports (the daemon extends systemd's start timeout by 3 of these).
PROGRESS_INTERVAL = 10.0


def _compile_in_child(
    dirs: list[Path],
    cache_dir: Path | None,
    progress: Callable[[float], None] | None = None,
    cancel: threading.Event | None = None,
) -> tuple[dict[str, Any], list[MibProblem]]:
    """Run ``python -m trapd.mibcompile``; subprocess.TimeoutExpired after COMPILE_TIMEOUT."""
    import tempfile
    import time

    with tempfile.TemporaryDirectory(prefix="trapd-mibs-") as tmp:
        out = Path(tmp) / SITE_INDEX_NAME
        cmd = [sys.executable, "-m", "trapd.mibcompile", "--out", str(out), "--parent", str(os.getpid())]
        if cache_dir is not None:
            cmd += ["--cache-dir", str(cache_dir)]
        cmd += [str(d) for d in dirs]
        if progress is not None:
            progress(0.0)
        started = time.monotonic()
        # stderr into a file, not a pipe: a child that writes much while we only wait must not block.
        with (Path(tmp) / "stderr").open("w+b") as err:
            cancel = cancel or threading.Event()
            with _COMPILING_LOCK:  # cancel_compiles sees it started, or finds it cancelled here
                if cancel.is_set():
                    raise CompileCancelled("trapd is stopping")
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
                _COMPILING[proc] = cancel
            try:
                while True:
                    took = time.monotonic() - started
                    if took >= COMPILE_TIMEOUT:
                        raise subprocess.TimeoutExpired(cmd, COMPILE_TIMEOUT)
                    try:
                        returncode = proc.wait(timeout=min(PROGRESS_INTERVAL, COMPILE_TIMEOUT - took))
                        break
                    except subprocess.TimeoutExpired:
                        if progress is not None:
                            progress(time.monotonic() - started)
            finally:
                with _COMPILING_LOCK:
                    del _COMPILING[proc]
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
            if cancel.is_set():
                raise CompileCancelled("trapd is stopping")
            err.seek(0)
            stderr = err.read()
        if returncode < 0:
            import signal

            name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else -returncode
            why = (
                ": most likely out of memory (the kernel's OOM killer; a large bundle wants hundreds of MB: "
                "docs/service.md, Memory)"
                if returncode == -signal.SIGKILL
                else ""
            )
            raise RuntimeError(f"the compiler was killed by {name}{why}")
        if returncode != 0:
            tail = stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
            raise RuntimeError(f"compiler exited {returncode}: {tail[0]}")
        data = _read_index(out)
    return data, [MibProblem.from_wire(p) for p in data.get("problems", [])]
