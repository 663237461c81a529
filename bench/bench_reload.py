"""What a reload of a big rule file costs the running daemon: event-loop stalls, and memory over reloads.

A reload compiles the files in a thread (trapd.service.lifecycle.compile_reload)
while the event loop keeps receiving; the loop still stands still whenever the
compiling thread holds the GIL for long in one piece. Per rule set (the
``--scale`` sets of bench_rules.py), in a fresh process per variant: start-up as
``trapd run`` does it (rules loaded with the collector off, then
settle_memory), an event loop with a 5 ms ticker, then ``--reloads`` reloads,
each a new file; reported: the compile's wall time, the longest gap between two
ticks from the compile's start to 2 s after it, and RSS after each reload.

Variants, interleaved (each size runs both before the next size):

  shipped    compile_reload as the daemon calls it (the new rules frozen out of
             the cyclic collector's sight), the old set freed in a thread a slice
             at a time (lifecycle.release_rules), as Daemon.reload does
  at-once    compile_reload, the old set dropped at once on the loop's thread
  unfrozen   the compile alone in a thread, the collector left to walk the new
             rules afterwards, the old set dropped at once on the loop (before)

    .venv/bin/python bench/bench_reload.py --sizes 20000,100000 --reloads 3
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

VARIANTS = ("shipped", "at-once", "unfrozen")


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def child(variant: str, kind: str, n: int, reloads: int, tmp: Path) -> list[dict[str, float]]:
    """One process: start up, then reload ``reloads`` times while a ticker measures the loop."""
    gc.disable()  # as trapd run starts (trapd.commands.run)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_rules import scale_rules

    from trapd.service.daemon import settle_memory
    from trapd.service.lifecycle import Loaded, build_rules, compile_reload, load_startup, release_rules
    from trapd.service.logging import configure_logging, get_logger
    from trapd.service.options import RunOptions

    rules = tmp / "rules.yaml"
    rules.write_text(scale_rules(kind, n), encoding="utf-8")
    config = tmp / "trapd.yaml"
    config.write_text(f"state_dir: {tmp / 'state'}\nrules: {{files: [{rules}]}}\n", encoding="utf-8")
    configure_logging("error", "json", open(os.devnull, "w"))  # noqa: SIM115
    log = get_logger("bench")
    options = RunOptions(config=config)
    loaded = load_startup(options.load(), log)
    resolver, actions, current = loaded.resolver, loaded.actions, loaded.rules
    del loaded  # as in the daemon, which keeps the parts, not the start-up bundle
    settle_memory()
    out: list[dict[str, float]] = [{"compile_s": 0.0, "worst_gap_ms": 0.0, "rss_mb": _rss_mb()}]

    async def main() -> None:
        nonlocal current, resolver
        ticks: list[tuple[float, float]] = []  # (gap, at)
        stop = asyncio.Event()

        async def ticker() -> None:
            last = time.perf_counter()
            while not stop.is_set():
                await asyncio.sleep(0.005)
                now = time.perf_counter()
                ticks.append((now - last, now))
                last = now

        task = asyncio.create_task(ticker())
        await asyncio.sleep(0.5)
        for k in range(reloads):
            # Another file each time (the rule text changes), as an operator's edit would.
            rules.write_text(scale_rules(kind, n).replace("down", f"down ({k})"), encoding="utf-8")
            ticks.clear()
            t0 = time.perf_counter()
            if variant == "shipped":
                _, new, resolver = await compile_reload(options, Loaded(resolver, actions, current), log)
                # The swap as Daemon.reload does it: the old set freed in a thread, a slice at a time.
                old, current = current, new
                asyncio.get_running_loop().run_in_executor(None, release_rules, old)
                del old
            elif variant == "at-once":
                _, new, resolver = await compile_reload(options, Loaded(resolver, actions, current), log)
                current = new  # the old set is freed here, at once, on the loop's thread
            else:
                cfg = options.load()
                new = await asyncio.to_thread(build_rules, cfg, resolver, actions, log)
                current = new  # the old set is freed here, at once, on the loop's thread
            t1 = time.perf_counter()
            del new
            await asyncio.sleep(2.0)
            out.append(
                {
                    "compile_s": t1 - t0,
                    # Gaps that began after the compile's start (writing the new file, above,
                    # is this script's own work on the loop, not trapd's).
                    "worst_gap_ms": max((g for g, end in ticks if end - g >= t0), default=0.0) * 1000,
                    "rss_mb": _rss_mb(),
                }
            )
        stop.set()
        await task

    asyncio.run(main())
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="20000,100000")
    ap.add_argument("--kind", default="per-port", choices=("per-port", "ifindex", "distinct"))
    ap.add_argument("--reloads", type=int, default=3)
    ap.add_argument("--child", nargs=3, metavar=("VARIANT", "N", "DIR"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    reloads = min(max(args.reloads, 1), 20)
    if args.child:
        variant, n, tmp = args.child
        print(json.dumps(child(variant, args.kind, int(n), reloads, Path(tmp))))
        return 0
    sizes = [int(x) for x in args.sizes.split(",")]
    if not all(1 <= n <= 200_000 for n in sizes):
        ap.error("--sizes: 1 to 200,000 rules each")
    load = os.getloadavg()[0]
    print(f"{args.kind} rules, {reloads} reloads each; load average {load:.2f}, {os.cpu_count()} cores")
    head = ("rules", "variant", "compile s", "worst loop gap ms", "RSS MB: start, after each")
    print(f"{head[0]:>8} | {head[1]:9} | {head[2]:>18} | {head[3]:>22} | {head[4]}")
    for n in sizes:
        for variant in VARIANTS:
            with tempfile.TemporaryDirectory(prefix="trapd-bench-reload-") as tmp:
                cmd = [sys.executable, __file__, "--kind", args.kind, "--reloads", str(reloads)]
                done = subprocess.run(
                    [*cmd, "--child", variant, str(n), tmp],
                    capture_output=True,
                    text=True,
                    timeout=1800,
                )
            if done.returncode != 0:
                print(done.stderr, file=sys.stderr)
                sys.exit(f"bench_reload: the {variant} child for {n} rules exited with {done.returncode}")
            start, *rows = json.loads(done.stdout.strip().splitlines()[-1])
            comp = ", ".join(f"{r['compile_s']:.1f}" for r in rows)
            gaps = ", ".join(f"{r['worst_gap_ms']:.0f}" for r in rows)
            rss = ", ".join(f"{r['rss_mb']:.0f}" for r in [start, *rows])
            print(f"{n:8,} | {variant:9} | {comp:>18} | {gaps:>22} | {rss}", flush=True)
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    from benchproc import sigterm_unwinds  # stops what it started on SIGTERM too

    with sigterm_unwinds():
        sys.exit(main())
