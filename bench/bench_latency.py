"""Latency from datagram received to action dispatched, inside ``trapd run``, at a steady rate.

    .venv/bin/python bench/bench_latency.py [--rate 1000] [--seconds 10] [--runs 3] [--journaled 10]

The daemon is bench_storm's: 1,000 rules from ``bench_rules.build_rules``
plus one that journals a ``log`` action for the traps whose sequence number
ends in 0 (``--journaled 10``: 10 % of the load, 100 actions/s at 1,000
traps/s; ``--journaled 100``: every trap). The load is loadgen's numbered
v2c linkDown, paced per millisecond.

The figures come from trapd's own journal, after the run: for every action,
``started - received_at`` (**dispatch latency**: decode, normalize, 1,000
rules, the submit queue, the journal commit, the worker picking it up and,
when it was not claimed in its insert transaction, its claim's commit;
``started`` is the moment the action's run began, since 2026-11-28: before,
it was the worker's clock before the claim, which left that commit out) and
``finished - received_at`` (**done**: plus the action itself); and
``created - received_at`` (**submit**: up to the dispatcher's submit, before
the journal commit), which splits the first figure in two. ``received_at``
is the listener's clock when it decoded the datagram, so time spent waiting
in the socket's receive buffer is not included: at a rate trapd keeps up
with, that queue is empty (the lag column says so). Reported: p50, p99 and
max per run, and the medians over the runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_listener as bl  # sibling scripts, not a package
import bench_storm as bs
import loadgen


def quantile(values: Sequence[float], q: float) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    return s[min(len(s) - 1, int(q * len(s)))]


def one_run(rate: int, seconds: float, journaled: int, n_rules: int, workroot: Path) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix=f"latency-{rate}-", dir=workroot))
    p = bs.Pipeline(workdir, n_rules, journaled=journaled)
    out: dict[str, Any] = {"rate": rate, "journaled": journaled, "loadavg": bl._loadavg()}
    measured_from = float("inf")
    try:
        p.wait_ready()
        time.sleep(0.5)
        messages = loadgen.build_messages(loadgen.LoadSpec(version="v2c"), 1, int(rate * seconds))
        with loadgen.open_sender("127.0.0.1", p.port) as sock:
            # Warm-up: the first matching trap pays for lazy imports and first template renders
            # (a few hundred ms, once per process); its actions are left out of the figures.
            warm = loadgen.build_messages(loadgen.LoadSpec(version="v2c"), 9_000_000_001, 200)
            loadgen.pace(sock, warm, 200, max_seconds=3.0)
            before, _ = bs.wait_quiet(p, 201, 20, 30.0)
            measured_from = time.time()
            gc.disable()
            try:
                report = loadgen.pace(sock, messages, rate, max_seconds=seconds * 1.5 + 1)
            finally:
                gc.enable()
        want = bs.expected_matches(report.sent, journaled)
        counts, lag = bs.wait_quiet(p, report.sent, want, 60.0)
        c = counts.minus(before)
        out.update(sent=report.sent, received=c.received, actions_done=c.actions_done)
        out["lag_seconds"] = round(lag, 2)
    finally:
        out["exit"] = p.stop()
    db = sqlite3.connect(workdir / "state" / "journal.sqlite")
    try:
        rows = db.execute(
            "SELECT started - received_at, finished - received_at, created - received_at FROM actions"
            " WHERE rule = 'bench-journal' AND started IS NOT NULL AND finished IS NOT NULL"
            " AND received_at >= ?",
            (measured_from,),
        ).fetchall()
    finally:
        db.close()
    start = [r[0] * 1000 for r in rows]
    done = [r[1] * 1000 for r in rows]
    submitted = [r[2] * 1000 for r in rows]
    out["actions"] = len(rows)
    for name, vals in (("dispatch", start), ("done", done), ("submit", submitted)):
        out[f"{name}_p50_ms"] = round(quantile(vals, 0.50), 3)
        out[f"{name}_p99_ms"] = round(quantile(vals, 0.99), 3)
        out[f"{name}_max_ms"] = round(max(vals, default=float("nan")), 3)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rate", type=int, default=1000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rules", type=int, default=1000)
    ap.add_argument("--journaled", type=int, default=10, choices=sorted(bs.SEQ_PATTERNS))
    ap.add_argument("--out", type=Path, default=bs.RESULTS_DIR)
    args = ap.parse_args(argv)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    machine = bl.machine_info()
    print(f"machine: {machine['nproc']} CPUs, load average {machine['loadavg_at_start']}", flush=True)
    runs = []
    with bs._workroot(False) as root:
        for i in range(1, args.runs + 1):
            r = one_run(args.rate, args.seconds, args.journaled, args.rules, root)
            runs.append(r)
            print(
                f"  run {i}: sent {r.get('sent')} received {r.get('received')} actions {r['actions']} "
                f"lag {r.get('lag_seconds')} s; dispatch p50 {r['dispatch_p50_ms']} "
                f"p99 {r['dispatch_p99_ms']} max {r['dispatch_max_ms']} ms; "
                f"done p99 {r['done_p99_ms']} ms; submit p50 {r['submit_p50_ms']} "
                f"p99 {r['submit_p99_ms']} ms; load {r['loadavg']}",
                flush=True,
            )
    summary = {
        k: statistics.median(r[k] for r in runs)
        for k in ("dispatch_p50_ms", "dispatch_p99_ms", "dispatch_max_ms", "done_p50_ms", "done_p99_ms")
    }
    print(
        f"median of {len(runs)} runs at {args.rate}/s, {args.journaled} % journaled: "
        f"dispatch p50 {summary['dispatch_p50_ms']:.2f} ms, p99 {summary['dispatch_p99_ms']:.2f} ms, "
        f"max {summary['dispatch_max_ms']:.2f} ms; done p99 {summary['done_p99_ms']:.2f} ms"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"latency-{started.replace(':', '')}.json"
    path.write_text(
        json.dumps({"machine": machine, "started": started, "runs": runs, "summary": summary}, indent=1)
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    from benchproc import sigterm_unwinds  # stops what it started on SIGTERM too

    with sigterm_unwinds():
        sys.exit(main())
