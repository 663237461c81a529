"""Smoke test for bench/bench_mibcompile.py: the generated bundle compiles without a problem.

Never speed: a few modules, and the three cases are reported with the figures the README quotes.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_the_generated_bundle_compiles_cleanly_in_every_case(tmp_path: Path) -> None:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    bench = importlib.import_module("bench_mibcompile")
    rows = bench.main(["--modules", "6", "--dir", str(tmp_path / "bundle")])
    assert [r["case"] for r in rows] == ["whole bundle, fresh cache", "unchanged", "VENDOR-M5-MIB.my changed"]
    for row in rows:
        assert row["modules"] == 8 and row["problems"] == 0, row  # VENDOR-SMI, VENDOR-TC and 6
        assert row["names"] == 4 + 6 * 15, row  # the same names from the cache and after the change
