"""CPU of the dispatcher's worker path per kea.lease-del action, against a real Kea (unix socket).

What it measures is what one trapd process spends on its event loop between a
worker taking an action and its end being queued for the journal: the claim,
the ActionContext and bound logger, the timeout, kea.lease-del itself
(lease4-get, then lease4-del, a new unix connection each, as Kea requires),
the Kea client and transport, the action's two log lines (JSON, to a file),
and the finish. Not the receive path, the rules or the SQLite writer thread
(reported apart: it is another thread).

Per round: N leases are added to a private Kea 2.2 (tests/kea_harness.py,
not timed), N actions journaled (``--mode preload``: before the dispatcher
starts, so the pump loads them and each is claimed on its own, as in a
backlog; ``--mode live``: submitted in chunks of 64 to a running dispatcher,
so idle workers get theirs claimed at insert, as at a low trap rate), then
the clock and the main thread's CPU run until the last one is done.
Reported: the minimum over rounds of the main thread's CPU per action (the
least disturbed round of a shared machine), the median, the writer thread's
CPU per action and the rate.

    .venv/bin/python bench/bench_worker.py -n 2000 --rounds 7
    PYTHONPATH=/tmp/base .venv/bin/python bench/bench_worker.py   # another tree's trapd, same Kea path

``--action`` splits the cost: ``noop`` (an action that returns at once: the
dispatcher and the journal alone), ``two-commands`` (lease4-get and lease4-del
through the Kea client and nothing else: the client and transport added), and
the default ``kea.lease-del`` (the shipped action: its checks, its result and
its log line added).

Dispatcher settings are trapd.yaml's defaults (16 workers, queue_size 1000).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import httpx
import kea_sandbox
import structlog
from bench_kea import add_leases, addresses

from trapd.dispatch.config import DispatchConfig
from trapd.dispatch.dispatcher import Dispatcher
from trapd.dispatch.journal import SQLiteJournal
from trapd.kea.client import KeaClients
from trapd.kea.config import KeaConfig
from trapd.listener.udp import best_loop_factory
from trapd.plugin import ActionContext, ActionSpec, load_actions
from trapd.service.logging import configure_logging
from trapd.testing import make_event, make_outcome, plan
from trapd.yamlsource import load_yaml

TICK = os.sysconf("SC_CLK_TCK")


def thread_cpu(tid: int) -> float:
    with open(f"/proc/self/task/{tid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def writer_tids(main: int) -> list[int]:
    return [int(t) for t in os.listdir("/proc/self/task") if int(t) != main]


async def one_round(
    workdir: Path,
    kea: kea_sandbox.KeaInstance,
    clients: KeaClients,
    http: httpx.AsyncClient,
    n: int,
    round_: int,
    mode: str,
    action: str,
) -> tuple[float, float, float]:
    """(main-thread CPU us per action, other threads' CPU us per action, actions per second)."""
    ips = addresses(n)
    if action != "noop":
        for i in range(0, n, 500):
            add_leases(kea, ips[i : i + 500])
            await asyncio.sleep(0)  # ^C / SIGTERM cancel the run at an await: up to 60,000 leases have none
    actions = bench_actions()
    outcomes = [
        (make_event(), make_outcome(plan(action, {"endpoint": "unix4", "ip-address": ip}, key=ip)))
        for ip in ips
    ]
    journal = SQLiteJournal(workdir / f"journal-{round_}.sqlite")
    await journal.open()
    # An http client of its own, made before the clock starts (building one loads TLS roots: ms).
    d = Dispatcher(
        DispatchConfig(), journal, actions, clients, http, log=structlog.get_logger("trapd.dispatch")
    )
    main = threading.get_native_id()
    try:
        if mode == "preload":
            for i in range(0, n, 64):
                await d.submit_many(outcomes[i : i + 64])
        others0 = sum(thread_cpu(t) for t in writer_tids(main))
        cpu0, t0 = time.thread_time(), time.perf_counter()
        await d.start()
        if mode == "live":
            for i in range(0, n, 64):
                await d.submit_many(outcomes[i : i + 64])
        deadline = time.monotonic() + 300
        while d.stats.outcomes[(action, "done")] < n:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {d.stats.outcomes[(action, 'done')]} of {n} done")
            await asyncio.sleep(0.002)
        wall = time.perf_counter() - t0
        cpu = time.thread_time() - cpu0
        await d.stop()
        others = sum(thread_cpu(t) for t in writer_tids(main)) - others0
    finally:
        if d._started:
            await d.stop()
        await journal.close()
    bad = [o for o in d.stats.outcomes if o[0] == action and o[1] != "done"]
    if bad:
        raise RuntimeError(f"not every action was done: {dict(d.stats.outcomes)}")
    sample = ips[:: max(1, n // 20)] if action != "noop" else []
    left = sum(1 for ip in sample if kea.lease4(ip) is not None)
    if left:
        raise RuntimeError(f"{left} sampled leases still in Kea")
    return cpu / n * 1e6, others / n * 1e6, n / wall


async def _noop(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    return {}


async def _two_commands(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    kea = ctx.kea.get(params["endpoint"])
    await kea.command("lease4-get", {"ip-address": params["ip-address"]})
    await kea.command("lease4-del", {"ip-address": params["ip-address"]})
    return {}


def bench_actions() -> dict[str, ActionSpec]:
    """The installed actions, plus the two that split kea.lease-del's cost (see --action)."""
    actions, _ = load_actions()
    lease_del = actions["kea.lease-del"]
    for name, run in (("noop", _noop), ("two-commands", _two_commands)):
        actions[name] = ActionSpec(name=name, run=run, params=lease_del.params, key=("ip-address",))
    return actions


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=2000, help="actions per round (max 60000)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--mode", choices=("preload", "live"), default="preload")
    ap.add_argument("--action", choices=("kea.lease-del", "two-commands", "noop"), default="kea.lease-del")
    args = ap.parse_args()
    if not 1 <= args.n <= 60000 or not 1 <= args.rounds <= 50:
        ap.error("-n: 1 to 60,000 actions; --rounds: 1 to 50")
    with tempfile.TemporaryDirectory(prefix="trapd-bench-worker-") as tmp:
        work = Path(tmp)
        log = open(work / "trapd.log", "w")  # noqa: SIM115
        configure_logging(os.environ.get("BENCH_LOG_LEVEL", "info"), "json", stream=log)
        kea = kea_sandbox.start_kea(work / "kea", dhcp6=False, ca=False)
        try:
            section = kea.trapd_kea_section()
            clients = KeaClients(KeaConfig.from_yaml(load_yaml(json.dumps(section)), work))
            results: list[tuple[float, float, float]] = []

            async def run_all() -> None:
                http = httpx.AsyncClient()
                warm_up = min(args.n, 200)
                await one_round(work, kea, clients, http, warm_up, 999, args.mode, args.action)
                for r in range(args.rounds):
                    res = await one_round(work, kea, clients, http, args.n, r, args.mode, args.action)
                    results.append(res)
                    print(
                        f"round {r + 1}: main {res[0]:.0f} us/action, other threads {res[1]:.0f} us, "
                        f"{res[2]:.0f} actions/s",
                        flush=True,
                    )

            with asyncio.Runner(loop_factory=best_loop_factory()) as runner:
                runner.run(run_all())
        finally:
            kea.stop()
            log.close()
    mains = [r[0] for r in results]
    print(
        f"{args.mode}, {args.action}: main thread min {min(mains):.1f} us/action "
        f"(median {statistics.median(mains):.1f}), "
        f"other threads median {statistics.median(r[1] for r in results):.1f} us, "
        f"rate median {statistics.median(r[2] for r in results):.0f}/s; load {os.getloadavg()[0]:.2f}"
    )
    return 0


if __name__ == "__main__":
    from benchproc import sigterm_unwinds  # stops what it started on SIGTERM too

    with sigterm_unwinds():
        sys.exit(main())
