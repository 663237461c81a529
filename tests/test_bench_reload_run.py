"""Smoke test for bench/bench_reload_run.py: the command bench/README.md gives still runs.

Never speed (the benchmark measures that): with a small rule set, a real ``trapd run`` with two
workers must start, reload under snmptrap traffic and report the reload's row, every trap counted.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest
from listen_harness import needs_netsnmp

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.mark.integration
@needs_netsnmp
def test_a_real_unit_reloads_under_traffic_and_reports_a_row() -> None:
    cmd = [sys.executable, str(BENCH / "bench_reload_run.py"), "--rules", "48", "--workers", "2"]
    done = subprocess.run(
        [*cmd, "--reloads", "1", "--rate", "5"], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-3000:] + done.stdout[-3000:]
    row = re.search(r"^reload 1: .* traps sent (\d+), received (\d+), kernel drops 0;", done.stdout, re.M)
    assert row is not None, done.stdout
    assert int(row.group(1)) > 0 and row.group(1) == row.group(2), done.stdout
    # Where the unit's memory is: the PSS of the supervisor and of each worker (bench/README.md,
    # "Where a reload's memory goes with workers").
    for when in ("ready", "reload 1"):
        (line,) = [x for x in done.stdout.splitlines() if x.startswith(when)]
        by = re.search(r"PSS MB by process \(supervisor first\) \[(\d+), (\d+), (\d+)\]", line)
        assert by is not None and all(int(n) > 0 for n in by.groups()), line
