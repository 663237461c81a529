"""A benchmark stopped by SIGTERM stops what it started and removes its temporary directories.

``timeout``, ``kill`` and a CI job's cancel send SIGTERM to the benchmark
process alone, not to its children: each benchmark that starts ``trapd run``,
receivers, Kea or PostgreSQL must unwind as on ^C and stop them. Each case
starts a benchmark in a session of its own, waits until its child runs, sends
SIGTERM to the benchmark only, and then polls the session until it is empty.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"
# bench_storm keeps its bytecode cache in the temp dir on purpose (shared by its runs).
KEPT = {"trapd-bench-pycache"}


def _children(sid: int, scratch: Path) -> dict[int, str]:
    """Live processes of the session ``sid``, and any (PostgreSQL: pg_ctl gives it a session of
    its own) whose command line names ``scratch``."""
    members: dict[int, str] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        if fields[0] != "Z" and (int(fields[3]) == sid or str(scratch) in cmdline):
            members[int(d.name)] = cmdline
    return members


def _poll(what: str, cond: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"{what} not within {timeout} s")


CASES = {
    "storm-trapd-run": (
        "bench_storm.py --rules 20 --out {out} throughput --receivers trapd --rates 99 --runs 1 --seconds 60",
        "-m trapd run",
        None,
    ),
    "worker-kea": ("bench_worker.py -n 60000 --rounds 1", "kea-dhcp4", "/usr/sbin/kea-dhcp4"),
    "journal-postgresql": (
        "bench_journal.py --backends postgresql --cases dispatcher --actions 200000 --runs 1",
        "postgres -D",
        "/usr/lib/postgresql/15/bin/initdb",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_sigterm_stops_the_benchmarks_children(case: str, tmp_path: Path) -> None:
    command, child_marker, needs = CASES[case]
    if needs and not Path(needs).exists():
        pytest.skip(f"needs {needs}")
    argv = command.split()
    # The benchmark's TMPDIR: PostgreSQL's user must reach its directory there (pytest's is 0700).
    scratch = Path(tempfile.mkdtemp(prefix="trapd-bench-signals-"))
    scratch.chmod(0o755)
    env = dict(os.environ, TMPDIR=str(scratch))
    cmd = [sys.executable, str(BENCH / argv[0]), *(a.format(out=tmp_path) for a in argv[1:])]
    log = tmp_path / "bench.log"
    with open(log, "wb") as out:
        bench = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    sid = bench.pid
    try:
        _poll(
            f"{child_marker} running",
            lambda: any(child_marker in c for p, c in _children(sid, scratch).items() if p != sid),
            120.0,
        )
        bench.send_signal(signal.SIGTERM)
        bench.wait(60)
        _poll("every child stopped", lambda: not _children(sid, scratch), 30.0)
        left = {p.name for p in scratch.iterdir()} - KEPT
        assert not left, f"temporary directories left: {left}"
    finally:
        for pid in _children(sid, scratch):
            os.kill(pid, signal.SIGKILL)
        if bench.poll() is None:
            bench.kill()
            bench.wait(10)
        print(log.read_text(errors="replace")[-2000:])
        shutil.rmtree(scratch, ignore_errors=True)
