"""Smoke test for bench/bench_reload.py: the command bench/README.md gives still runs.

Never speed (the benchmark measures that): with the smallest arguments every
variant's child process must start up, reload and report a row.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "bench"


def test_every_variant_reloads_and_reports_a_row() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH / "bench_reload.py"), "--sizes", "48", "--reloads", "1"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.strip().startswith("48 |")]
    assert [r.split("|")[1].strip() for r in rows] == ["shipped", "at-once", "unfrozen"], done.stdout
