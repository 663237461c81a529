"""Receiver memory over a long SNMPv3 run: trapd's v3 path with and without its pysnmp workaround.

pysnmp 7.1.30's USM appends the sender's engine ID to a timeline expiry list
on every authenticated message and keeps that list for 300 s, so a v3
receiver's memory grows with rate x 300 s (about 490 bytes per trap) before it
levels off: 150 MB at 1,000 traps/s. trapd's V3Receiver swaps that list for a
set (trapd/listener/v3/adapters.py, ``make_usm``). This script shows both behaviours
side by side: it starts a receiver process per variant (trapd's Listener with
one v3 user), sends it ``--count`` distinct authPriv traps (SHA-256 + AES-128,
each with its own msgID, salt and MAC, built by bench/loadgen.py) at
``--rate`` to loopback, and samples the receiver's RSS every
``--sample-every`` traps.

    .venv/bin/python bench/v3_memory.py                       # 20,000 traps x 2 variants, ~2.5 min
    .venv/bin/python bench/v3_memory.py --count 40000 --rate 400 --variants fixed

Variants: ``fixed`` (trapd as shipped) and ``stock`` (pysnmp's own USM put
back). Bounded: at most --count traps per variant and --max-seconds per run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import select
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import loadgen  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


# --- the receiver (child process) ----------------------------------------------


def serve(variant: str) -> int:
    from trapd.listener import Listener, ListenerConfig, run_on_best_loop
    from trapd.listener.config import ListenAddress, RateLimit, V3User
    from trapd.secrets import Secret

    u = loadgen.V3User()
    config = ListenerConfig(
        listen=(ListenAddress("127.0.0.1", 0),),
        v3_users=(
            V3User(
                user=u.user,
                auth_protocol=u.auth_protocol,
                auth_key=Secret(u.auth_key),
                priv_protocol=u.priv_protocol,
                priv_key=Secret(u.priv_key),
                engine_ids=(u.engine_id,),
            ),
        ),
        # pysnmp's engine is what is measured: no slow-path budget (limits.SlowPathBudget).
        rate_limit=RateLimit(v3_slow_per_source=0, v3_slow_global=0),
    )
    received = 0

    def on_notification(raw: object) -> None:
        nonlocal received
        received += 1

    async def main() -> None:
        listener = Listener(config, on_notification, logger=_Quiet())
        await listener.start()
        # This script measures pysnmp's v3 path (the fallback for informs and unknown senders);
        # turn trapd's fast USM path off so every trap goes through it. bench/bench_v3.py
        # measures the fast path.
        listener._v3.fast = None
        if variant == "stock":
            from pysnmp.proto.secmod.rfc3414.service import SnmpUSMSecurityModel

            listener._v3.receiver.engine.security_models[3] = SnmpUSMSecurityModel()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(signal.SIGUSR1, lambda: print(json.dumps({"received": received}), flush=True))
        print(json.dumps({"port": listener.bound[0].address.port}), flush=True)
        await stop.wait()
        await listener.close()
        print(json.dumps({"received": received, "dropped": dict(listener.stats.dropped)}), flush=True)

    run_on_best_loop(main())
    return 0


class _Quiet:
    def __getattr__(self, name: str) -> object:
        return lambda *a, **k: None


# --- the driver ------------------------------------------------------------------


# How long the receiver gets to answer a counters request, and to exit after SIGTERM.
REPLY_TIMEOUT = 10.0
STOP_GRACE = 10.0


def _read_json_line(child: subprocess.Popen[bytes], timeout: float) -> dict[str, Any]:
    """The receiver's next line, parsed; an error after ``timeout`` s or when it has exited."""
    assert child.stdout is not None
    ready, _, _ = select.select([child.stdout], [], [], timeout)
    if not ready:
        raise RuntimeError(f"the receiver wrote nothing in {timeout:.0f} s")
    line = child.stdout.readline()
    if not line:
        raise RuntimeError(f"the receiver exited ({child.wait(10)})")
    answer: dict[str, Any] = json.loads(line)
    return answer


def run_variant(
    variant: str,
    messages: list[bytes],
    rate: float,
    every: int,
    max_seconds: float,
    script: str = __file__,
) -> list[dict[str, Any]]:
    """Send ``messages`` to ``script --serve VARIANT`` in steps of ``every``; RSS after each step.

    Shared with bench_v3.py (its own ``--serve`` runs the fast USM path). The
    server prints its port, then ``{"received": n, ...}`` on each SIGUSR1.
    """
    # Unbuffered bytes, so that select() sees every line the receiver wrote (a bounded wait).
    child = subprocess.Popen(
        [sys.executable, script, "--serve", variant], stdout=subprocess.PIPE, bufsize=0, cwd=BENCH.parent
    )
    sock = None
    try:
        port = _read_json_line(child, 60.0)["port"]
        sock = loadgen.open_sender("127.0.0.1", port)
        samples: list[dict[str, Any]] = [{"sent": 0, "received": 0, "rss_mb": rss_mb(child.pid)}]
        start = time.monotonic()
        for first in range(0, len(messages), every):
            left = max_seconds - (time.monotonic() - start)
            if left <= 0:
                break
            report = loadgen.pace(sock, messages[first : first + every], rate, left)
            got, now = -1, {}
            for _ in range(100):  # let the receiver drain its socket buffer (bounded: 20 s)
                time.sleep(0.2)
                child.send_signal(signal.SIGUSR1)
                now = _read_json_line(child, REPLY_TIMEOUT)
                if now["received"] == got:
                    break
                got = now["received"]
            samples.append(
                {
                    "sent": first + report.sent,
                    "received": got,
                    "dropped": now.get("dropped"),
                    "rss_mb": rss_mb(child.pid),
                }
            )
            print(f"{variant}: {samples[-1]}", file=sys.stderr)
    finally:
        if sock is not None:
            sock.close()
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
        try:
            child.wait(STOP_GRACE)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait(10)
        assert child.stdout is not None
        child.stdout.close()
    return samples


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--serve", metavar="VARIANT", help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, default=20000, help="traps per variant (default 20000)")
    p.add_argument("--rate", type=float, default=250.0, help="traps per second (default 250)")
    p.add_argument(
        "--sample-every", type=int, default=2000, help="RSS sample interval in traps (default 2000)"
    )
    p.add_argument("--variants", default="fixed,stock", help="fixed, stock or both (default fixed,stock)")
    p.add_argument("--max-seconds", type=float, default=300.0, help="time bound per variant (default 300)")
    args = p.parse_args()
    if args.serve:
        return serve(args.serve)

    t = time.monotonic()
    messages = loadgen.build_messages(loadgen.LoadSpec(version="v3"), 1, args.count)
    print(f"built {len(messages)} v3 authPriv traps in {time.monotonic() - t:.1f} s", file=sys.stderr)
    results = {}
    for variant in args.variants.split(","):
        results[variant] = run_variant(variant, messages, args.rate, args.sample_every, args.max_seconds)

    print_rss_table(results, f"receiver RSS (MB) receiving v3 authPriv traps at {args.rate:.0f}/s")
    return 0


def print_rss_table(results: dict[str, list[dict[str, Any]]], title: str) -> None:
    """RSS samples per variant as a Markdown table, then the growth per 1,000 traps after warm-up.

    Shared with bench_v3.py, which measures the fast USM path the same way.
    """
    print(f"\n{title}\n")
    variants = list(results)
    print("| traps sent | " + " | ".join(f"{v} RSS MB | {v} received" for v in variants) + " |")
    print("|---:|" + "---:|---:|" * len(variants))
    for i in range(max(len(s) for s in results.values())):
        row: list[str] = []
        sent = None
        for v in variants:
            s = results[v][i] if i < len(results[v]) else {}
            sent = s.get("sent", sent)
            row += [f"{s['rss_mb']:.1f}" if s else "", str(s.get("received", "")) if s else ""]
        print(f"| {sent} | " + " | ".join(row) + " |")
    print()
    for v in variants:
        runs = results[v]
        if len(runs) >= 3:
            # growth after warm-up: from the first loaded sample to the last
            a, b = runs[1], runs[-1]
            per_1000 = (b["rss_mb"] - a["rss_mb"]) * 1024 / max(1, (b["received"] - a["received"]) / 1000)
            print(f"{v}: {per_1000:+.1f} KB per 1,000 received traps after the first {a['received']}; "
                  f"drops {b.get('dropped')}")  # fmt: skip


if __name__ == "__main__":
    from benchproc import sigterm_unwinds  # stops what it started on SIGTERM too

    with sigterm_unwinds():
        sys.exit(main())
