"""Compile time of a large site MIB bundle, generated here (no vendor bundle is needed).

    .venv/bin/python bench/bench_mibcompile.py                  # 1,000 modules
    .venv/bin/python bench/bench_mibcompile.py --modules 200 --dir /tmp/bundle

Writes a vendor-style bundle into ``--dir`` (a temporary directory by
default): VENDOR-SMI, VENDOR-TC and ``--modules`` modules, each with a table
of 8 columns indexed by IF-MIB's ifIndex and its own column, two
notifications and conformance groups; four of every five import a node from
the module before them (chains of five). Then, with a fresh cache, times the
whole compile (:func:`trapd.mibcompile.compile_site`, in this process, as
``trapd mibs compile`` runs it), the same again with nothing changed, and
after one file of a chain was touched (that module and the ones importing
from it are compiled again). Prints one line per case with the seconds, the
modules and names indexed, the problems (0 expected) and the process's peak
RSS so far, and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import tempfile
import time
from pathlib import Path

SMI = """VENDOR-SMI DEFINITIONS ::= BEGIN
IMPORTS MODULE-IDENTITY, enterprises FROM SNMPv2-SMI;
vendorSmi MODULE-IDENTITY LAST-UPDATED "202001010000Z" ORGANIZATION "v" CONTACT-INFO "v"
    DESCRIPTION "SMI" ::= { vendor 1 }
vendor OBJECT IDENTIFIER ::= { enterprises 99999 }
vendorMgmt OBJECT IDENTIFIER ::= { vendor 9 }
END
"""
TC = """VENDOR-TC DEFINITIONS ::= BEGIN
IMPORTS MODULE-IDENTITY, Unsigned32 FROM SNMPv2-SMI TEXTUAL-CONVENTION FROM SNMPv2-TC
    vendorSmi FROM VENDOR-SMI;
vendorTc MODULE-IDENTITY LAST-UPDATED "202001010000Z" ORGANIZATION "v" CONTACT-INFO "v"
    DESCRIPTION "TC" ::= { vendorSmi 2 }
VendorPort ::= TEXTUAL-CONVENTION DISPLAY-HINT "d" STATUS current DESCRIPTION "p"
    SYNTAX Unsigned32 (1..65535)
VendorState ::= TEXTUAL-CONVENTION STATUS current DESCRIPTION "s"
    SYNTAX INTEGER { up(1), down(2), testing(3) }
VendorName ::= TEXTUAL-CONVENTION DISPLAY-HINT "255a" STATUS current DESCRIPTION "n"
    SYNTAX OCTET STRING (SIZE (0..255))
END
"""
SYNTAXES = (
    "VendorPort",
    "VendorState",
    "VendorName",
    "Counter64",
    "Integer32",
    "DisplayString",
    "MacAddress",
)
DESCRIPTION = "\n".join(["        This object is described at length, as vendor MIBs do, with several"] * 6)


def module_text(i: int) -> str:
    p = f"m{i}"
    entry = f"M{i}Entry"
    chained = f"\n    m{i - 1}Objects FROM VENDOR-M{i - 1}-MIB" if i % 5 else ""
    columns, sequence = [], []
    for c, syntax in enumerate((*SYNTAXES, "TruthValue"), start=1):
        access = "not-accessible" if c == 1 else "read-only"
        columns.append(
            f"{p}Col{c} OBJECT-TYPE\n    SYNTAX {syntax}\n    MAX-ACCESS {access}\n    STATUS current\n"
            f'    DESCRIPTION "\n{DESCRIPTION}"\n    ::= {{ {p}Entry {c} }}\n'
        )
        sequence.append(f"{p}Col{c} {syntax}")
    group = ", ".join(f"{p}Col{c}" for c in range(2, 9))
    return f"""VENDOR-M{i}-MIB DEFINITIONS ::= BEGIN
IMPORTS
    MODULE-IDENTITY, OBJECT-TYPE, NOTIFICATION-TYPE, Counter64, Integer32 FROM SNMPv2-SMI
    DisplayString, MacAddress, TruthValue FROM SNMPv2-TC
    MODULE-COMPLIANCE, OBJECT-GROUP, NOTIFICATION-GROUP FROM SNMPv2-CONF
    ifIndex FROM IF-MIB
    vendorMgmt FROM VENDOR-SMI
    VendorPort, VendorState, VendorName FROM VENDOR-TC{chained};
{p}Mib MODULE-IDENTITY LAST-UPDATED "202001010000Z" ORGANIZATION "v" CONTACT-INFO "v"
    DESCRIPTION "module {i}" ::= {{ vendorMgmt {i + 1} }}
{p}Objects OBJECT IDENTIFIER ::= {{ {p}Mib 1 }}
{p}Notifs OBJECT IDENTIFIER ::= {{ {p}Mib 0 }}
{p}Table OBJECT-TYPE SYNTAX SEQUENCE OF {entry} MAX-ACCESS not-accessible STATUS current
    DESCRIPTION "t" ::= {{ {p}Objects 1 }}
{p}Entry OBJECT-TYPE SYNTAX {entry} MAX-ACCESS not-accessible STATUS current
    DESCRIPTION "e" INDEX {{ ifIndex, {p}Col1 }} ::= {{ {p}Table 1 }}
{entry} ::= SEQUENCE {{ {", ".join(sequence)} }}
{"".join(columns)}
{p}Event NOTIFICATION-TYPE OBJECTS {{ {p}Col2, {p}Col3 }} STATUS current DESCRIPTION "ev"
    ::= {{ {p}Notifs 1 }}
{p}Clear NOTIFICATION-TYPE OBJECTS {{ {p}Col2 }} STATUS current DESCRIPTION "cl" ::= {{ {p}Notifs 2 }}
{p}Group OBJECT-GROUP OBJECTS {{ {group} }} STATUS current DESCRIPTION "g" ::= {{ {p}Mib 2 }}
{p}NGroup NOTIFICATION-GROUP NOTIFICATIONS {{ {p}Event, {p}Clear }} STATUS current DESCRIPTION "n"
    ::= {{ {p}Mib 3 }}
END
"""


def write_bundle(out: Path, modules: int) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "VENDOR-SMI.my").write_text(SMI, encoding="ascii")
    (out / "VENDOR-TC.my").write_text(TC, encoding="ascii")
    for i in range(modules):
        (out / f"VENDOR-M{i}-MIB.my").write_text(module_text(i), encoding="ascii")


def compile_once(bundle: Path, cache: Path, label: str) -> dict[str, object]:
    from trapd.mibcompile import compile_site
    from trapd.mibindex import SHIPPED_INDEX

    shipped = json.loads(SHIPPED_INDEX.read_text(encoding="utf-8"))
    started = time.perf_counter()
    index, problems = compile_site([bundle], cache, shipped)
    row = {
        "case": label,
        "seconds": round(time.perf_counter() - started, 1),
        "modules": len(index["modules"]),
        "names": len(index["nodes"]),
        "problems": len(problems),
        "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
        "load": round(os.getloadavg()[0], 1),
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> list[dict[str, object]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--modules", type=int, default=1000)
    ap.add_argument(
        "--dir", type=Path, default=None, help="where the bundle is written (default: a temporary one)"
    )
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="trapd-bench-mibs-") as tmp:
        bundle = args.dir or Path(tmp) / "bundle"
        write_bundle(bundle, args.modules)
        cache = Path(tmp) / "cache"
        rows = [
            compile_once(bundle, cache, "whole bundle, fresh cache"),
            compile_once(bundle, cache, "unchanged"),
        ]
        if args.modules > 1:
            touched = bundle / f"VENDOR-M{(args.modules - 1) // 5 * 5}-MIB.my"
            touched.write_text(touched.read_text(encoding="ascii") + "-- touched\n", encoding="ascii")
            rows.append(compile_once(bundle, cache, f"{touched.name} changed"))
        return rows


if __name__ == "__main__":
    main()
