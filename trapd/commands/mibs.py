"""MIBs: compile the site's MIB directories, look names and OIDs up.

trapd mibs compile [--config FILE] [--dir DIR]... [--cache-dir DIR] [--force] [--strict]
    Compile the site MIB directories (config mibs.dirs; default
    /usr/share/snmp/mibs and /etc/trapd/mibs when present) with pysmi,
    offline, into the cache (mibs.cache_dir; default <state_dir>/mibs).
    Unchanged sources are not recompiled (--force recompiles all). Every
    broken file is reported as "/path/file:LINE: MODULE: reason" (also when
    the compile was cached); the others are compiled anyway. Exit 0, or 1
    with --strict when a file is broken. This is where broken MIBs are
    reported: the daemon warns once, when its compile first finds them, and
    `trapd check` only when a rule needs a name from one. A compile that
    the daemon had to stop (over 10 minutes) or that died is retried here,
    without a time limit; the daemon warns about it at every start until
    then. The daemon
    compiles at start, and at a reload, when the sources changed; running
    this ahead of a restart or reload keeps them fast.

trapd mibs lookup NAME|OID... [--config FILE] [--json]
    Both directions: IF-MIB::linkDown, linkDown, ifOperStatus.3 or
    1.3.6.1.6.3.1.1.5.3; a module name (IF-MIB) shows its MODULE-IDENTITY
    and its notifications, or that it is not loaded. Prints the OID and the name with its index, the
    node kind, the syntax (base type, textual convention, DISPLAY-HINT) and
    the named values of an enumeration. Exit 1 if a name is unknown, or
    names an OID no SNMP message can carry (a sub-identifier of 2^32 or
    more, more than 128 of them).

trapd mibs build-index [--output FILE]
    Rebuild the shipped index (trapd/data/mib-index.json) from pysnmp's
    core modules and pysnmp-mibs (developers; takes seconds).
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pathlib import Path

    from trapd.mibs import MibConfig, MibResolver, Syntax

HELP = "MIBs: compile site MIB directories (report broken files), look up names and OIDs"


def configure(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="mibs_command", metavar="SUBCOMMAND", required=True)
    c = sub.add_parser("compile", help="compile the site MIB directories into the cache")
    _config_arg(c)
    c.add_argument(
        "--dir", action="append", metavar="DIR", help="MIB source directory, repeatable; replaces mibs.dirs"
    )
    c.add_argument("--cache-dir", metavar="DIR", help="where compiled MIBs go; replaces mibs.cache_dir")
    c.add_argument("--force", action="store_true", help="recompile every module, not only changed ones")
    c.add_argument("--strict", action="store_true", help="exit 1 when a MIB file is broken")
    lk = sub.add_parser("lookup", help="name <-> OID, kind, syntax and enum values")
    _config_arg(lk)
    lk.add_argument(
        "names",
        nargs="+",
        metavar="NAME|OID",
        help="IF-MIB::linkDown, linkDown, ifOperStatus.3, an OID or a module",
    )
    lk.add_argument("--json", action="store_true", help="one JSON object per name")
    b = sub.add_parser("build-index", help="rebuild the shipped MIB index (developers)")
    b.add_argument("--output", metavar="FILE", help="default: trapd/data/mib-index.json in the package")


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config", "-c", metavar="FILE", help="trapd.yaml (default /etc/trapd/trapd.yaml if present)"
    )


def main(args: argparse.Namespace) -> int:
    if args.mibs_command == "build-index":
        return _build_index(args)
    if args.mibs_command == "compile":
        return _compile(args)
    return _lookup(args)


def _load_config(args: argparse.Namespace) -> tuple[MibConfig, Path | None] | None:
    """The mibs section and the state directory (None when it does not exist); None after an error."""
    import sys
    from pathlib import Path

    from trapd.config import DEFAULT_CONFIG, Config, default_config_present, load_config
    from trapd.yamlsource import ConfigError

    path = Path(args.config) if args.config else DEFAULT_CONFIG
    if not args.config and not default_config_present():
        config = Config()
    else:
        try:
            config = load_config(path)
        except ConfigError as exc:
            print(f"trapd mibs: {exc}", file=sys.stderr)
            return None
    return config.mibs, (config.state_dir if config.state_dir.is_dir() else None)


def _compile(args: argparse.Namespace) -> int:
    import shutil
    import time
    from dataclasses import replace
    from pathlib import Path

    from trapd.mibs import SITE_INDEX_NAME, SNAPSHOT_NAME, MibResolver, compile_lock

    loaded = _load_config(args)
    if loaded is None:
        return 2
    mibs, state_dir = loaded
    if args.dir:
        mibs = replace(mibs, dirs=tuple(Path(d) for d in args.dir))
    if args.cache_dir:
        mibs = replace(mibs, cache_dir=Path(args.cache_dir))
    cache = mibs.cache_path(state_dir)
    dirs = mibs.source_dirs()
    print(f"sources: {', '.join(map(str, dirs)) or '(none)'}")
    print(f"cache:   {cache}")
    if args.force and cache is not None:
        # Under the lock every compile takes: a running trapd's compile (at start, on a reload)
        # would otherwise record an index of modules this just deleted.
        with compile_lock(cache):
            (cache / SITE_INDEX_NAME).unlink(missing_ok=True)
            (cache / SNAPSHOT_NAME).unlink(missing_ok=True)
            shutil.rmtree(cache / "py", ignore_errors=True)
    t0 = time.monotonic()
    resolver = MibResolver.load(mibs, state_dir, compile_in_process=True)
    took = time.monotonic() - t0
    site = [m for m in resolver.modules() if m in resolver.site_modules]
    print(f"{len(site)} site module(s) loaded, {len(resolver)} named OIDs in all ({took:.1f} s)")
    for m in site:
        print(f"  {m}")
    # One report on stdout, as `trapd check` prints one: file:line: MODULE: reason for each broken file.
    for p in resolver.problems:
        print(f"{p}")
    if resolver.problems:
        print(f"{len(resolver.problems)} MIB problem(s): those modules' names are unknown to the rules")
    return 1 if resolver.problems and args.strict else 0


def _lookup(args: argparse.Namespace) -> int:
    import json

    from trapd.mibs import MibResolver

    loaded = _load_config(args)
    if loaded is None:
        return 2
    resolver = MibResolver.load(*loaded)
    rc = 0
    for name in args.names:
        info = describe_name(resolver, name)
        if not info["found"]:
            rc = 1
        if args.json:
            print(json.dumps(info))
        else:
            print("\n".join(_text_lines(info)))
    return rc


def _text_lines(info: dict[str, Any]) -> list[str]:
    if not info["found"]:
        if "invalid" in info:
            return [f"{info['query']}: not an OID any SNMP message can carry: {info['invalid']}"]
        if "problem" in info:
            return [f"{info['query']}: not loaded: {info['problem']}"]
        return [f"{info['query']}: unknown (no loaded MIB names it)"]
    if info["kind"] == "module" and "symbol" not in info:  # a module's name, not its MODULE-IDENTITY node
        head = f"{info['name']} = {info['oid']}" if "oid" in info else f"{info['name']} (no MODULE-IDENTITY)"
        lines = [head, "  kind: module"]
        if info["notifications"]:
            lines.append("  notifications: " + ", ".join(info["notifications"]))
        return lines
    if info["kind"] == "textual-convention":
        lines = [f"{info['name']}: textual convention"]
    else:
        lines = [f"{info['name']} = {info['oid']}", f"  kind: {info['kind']}"]
    syn = info.get("syntax")
    if syn:
        parts = [syn["base"]]
        if syn["tc"] and syn["tc"] != info["name"]:
            parts.append(f"TC {syn['tc']}")
        if syn["hint"]:
            parts.append(f'DISPLAY-HINT "{syn["hint"]}"')
        lines.append(f"  syntax: {', '.join(parts)}")
        if syn["enums"]:
            lines.append("  values: " + ", ".join(f"{k}({v})" for k, v in syn["enums"].items()))
    return lines


def describe_name(resolver: MibResolver, query: str) -> dict[str, Any]:
    """Everything ``trapd mibs lookup`` shows about one name, OID or TC (``found`` False when unknown)."""
    from trapd.listener.ber import uncarried

    out: dict[str, Any] = {"query": query, "found": False}
    module = query.strip()
    # A module that did not compile or load: its problem says why and where (file:line).
    broken = {p.module: p for p in resolver.problems if p.module}.get(module.partition("::")[0])
    if broken is not None:
        out["problem"] = str(broken)
    if "::" not in module and module in resolver.modules():
        # Rules take module names (`under: IF-MIB`): say what trapd knows of it, and that it is loaded.
        out.update(found=True, name=module, kind="module")
        identity = resolver.subtree(module)
        if identity is not None and resolver.kind(identity) == "module":
            out["oid"] = ".".join(map(str, identity))
        out["notifications"] = sorted(resolver.name_of(o) for o in resolver.notifications_of(module))
        return out
    oid = resolver.lookup(query)
    why = uncarried(oid) if oid is not None else None
    if why is not None:
        # An arc of 2^32 or more, 129 arcs...: no trap has it, whatever a MIB's node above says.
        out["invalid"] = why
        return out
    if oid is None:
        tc = resolver.tc(query)
        if tc is None:
            return out
        out.update(found=True, name=tc.tc or query, kind="textual-convention", syntax=_syntax_dict(tc))
        return out
    name, index, syntax, kind = resolver.describe(oid)
    out.update(
        found=bool(kind),
        oid=".".join(map(str, oid)),
        name=f"{name}.{'.'.join(map(str, index))}" if index else name,
        symbol=name,
        index=".".join(map(str, index)),
        kind=kind,
    )
    if syntax is not None:
        out["syntax"] = _syntax_dict(syntax)
    return out


def _syntax_dict(syntax: Syntax) -> dict[str, Any]:
    return {"base": syntax.base, "tc": syntax.tc, "hint": syntax.hint, "enums": dict(syntax.enums)}


def _build_index(args: argparse.Namespace) -> int:
    from trapd import mibindex

    mibindex.main([args.output] if args.output else [])
    return 0
