"""Planned actions journaled per second: group commit against one transaction per action.

    .venv/bin/python bench/bench_journal.py                 # 3 runs of each case, medians
    .venv/bin/python bench/bench_journal.py --actions 5000 --runs 5 --json

Cases (each on a fresh journal file in a temporary directory on the same
disk as --dir, default the system temp dir):

``batched``
    ``--concurrency`` submitters at once, each action from its own event (what the daemon does in a storm:
    many outcomes in flight); each ``journal.add`` returns when its row is
    committed, and the writer thread groups whatever is queued into one
    transaction.
``one-by-one``
    One submitter that waits for each commit before the next: one
    transaction per action, the naive design.
``dispatcher``
    ``Dispatcher.submit`` with a realistic event (to_dict, planning, caps,
    the in-memory hand-off) and ``--concurrency`` submitters; the dispatcher
    (default config: 16 workers) runs a no-op action, so each row is also
    claimed and finished (three writes per action, as in production). The
    figure is actions per second from the first submit to the last "done"
    committed.

``steady``
    The same dispatcher and no-op action, but the submits arrive one at a
    time at ``--rate`` per second through ``Dispatcher.submit_many`` (what
    the daemon's receive path does below a storm). Batches are small then,
    so this shows the fixed costs per action: commits and the wake-ups
    between the event loop and the journal's writer thread. Also the time
    from ``submit_many`` to the action's start (p50, p99): the dispatcher's
    share of "received -> action started".

``starved``
    A storm's shape: a callback that burns ``--hog-ms`` of CPU in every turn
    of the event loop (the receive path in a storm takes most of each turn)
    while outcomes arrive at ``--rate`` per second through ``submit_many``
    for ``--storm-seconds``. The figure is no-op actions *done per second
    during the storm*: how much the dispatcher gets done per loop turn it is
    given (bench/README.md (c): 2,077 of 60,354 in a 60 s storm).

Backends (``--backends``): ``sqlite`` (each case for ``synchronous=normal``, the
default, and ``full``) and ``postgresql``: the shared journal of docs/pair.md on a
private PostgreSQL 15 that the benchmark starts (tests/pg_harness.py: initdb in a
temp dir, unix socket only, ``fsync=on`` and ``synchronous_commit=on`` as a real
server), a fresh database per run. Its CPU per action counts trapd's process and,
separately, the server's processes (``server us``): the work moved, not gone.

For SQLite each case runs for ``synchronous=normal`` (the default) and ``full``. The figures are
actions per second, median of ``--runs``; the table also says how many
actions each commit carried on average, and the CPU time (all threads) per
action, which unlike the rate does not depend on what else the machine runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trapd.dispatch.config import DispatchConfig
from trapd.dispatch.dispatcher import Dispatcher
from trapd.dispatch.journal import Journal, NewEntry, SQLiteJournal
from trapd.dispatch.testing import make_event, make_outcome, plan
from trapd.params import Param
from trapd.plugin import ActionContext, action

# steady: when each event was handed to submit_many, and how long after that its action started.
_SUBMITTED: dict[str, float] = {}
_START_DELAYS: list[float] = []


@action("bench.noop", params={"mac": Param("mac-address")}, idempotent=True)
async def noop(params: dict[str, Any], ctx: ActionContext) -> None:
    """Does nothing (benchmark); in the steady case it notes how long it waited to start."""
    t = _SUBMITTED.pop(ctx.event.id, None)
    if t is not None:
        _START_DELAYS.append(time.perf_counter() - t)
    return None


# The PostgreSQL server of this run (``--backends postgresql``); None: SQLite files.
_PG: Any = None
_SERVER_CPU_AT_CLOSE: dict[int, float] = {}


@contextlib.asynccontextmanager
async def journal_for(path: Path, sync: str) -> AsyncIterator[Any]:
    """A fresh journal: the SQLite file ``path``, or a new database on the run's PostgreSQL."""
    j: Journal
    if _PG is None:
        j = SQLiteJournal(path, synchronous=sync)
    else:
        from trapd.dispatch.journal.postgres import PostgresJournal

        j = PostgresJournal(await asyncio.to_thread(_PG.new_database), instance="bench")
    await j.open()
    try:
        yield j
    finally:
        global _SERVER_CPU_AT_CLOSE
        if _PG is not None:  # before the close: a backend's CPU leaves /proc with its process
            _SERVER_CPU_AT_CLOSE = _PG.cpu_by_process()
        await j.close()


def mac(i: int) -> str:
    return f"00:11:22:33:{i >> 8 & 255:02x}:{i & 255:02x}"


def entry(i: int) -> NewEntry:
    return NewEntry(
        rule="mac-removed", action="bench.noop", index=0, params={"mac": mac(i)}, key=f"mac:{i}",
        mode="enforce", state="pending", due=time.time(), max_attempts=5, backoff=2.0, max_age=3600.0,
        mac=mac(i),
    )  # fmt: skip


def events(n: int) -> list[dict[str, Any]]:
    """One notification per action, as the daemon journals them (each its own event row)."""
    return [make_event(varbinds=[("IF-MIB::ifIndex", "Integer32", i)]).to_dict() for i in range(n)]


async def run_batched(path: Path, n: int, concurrency: int, sync: str) -> tuple[float, float]:
    evs = events(n)
    async with journal_for(path, sync) as j:
        queue = iter(range(n))

        async def submitter() -> None:
            for i in queue:
                await j.add(evs[i], [entry(i)], [], time.time())

        t0 = time.perf_counter()
        await asyncio.gather(*(submitter() for _ in range(concurrency)))
        dt = time.perf_counter() - t0
        return n / dt, j.committed_ops / max(1, j.commits)


async def run_one_by_one(path: Path, n: int, sync: str) -> tuple[float, float]:
    evs = events(n)
    async with journal_for(path, sync) as j:
        t0 = time.perf_counter()
        for i in range(n):
            await j.add(evs[i], [entry(i)], [], time.time())
        dt = time.perf_counter() - t0
        return n / dt, j.committed_ops / max(1, j.commits)


async def wait_done(d: Dispatcher, n: int, timeout: float) -> None:
    """Until ``n`` no-op actions are done. Bounded: any other outcome of the no-op (a journal
    error, a retry) or ``timeout`` seconds end the run with an error instead of a wait for ever."""
    deadline = time.monotonic() + timeout
    while (done := d.stats.outcomes[("bench.noop", "done")]) < n:
        other = {
            k[1]: v for k, v in d.stats.outcomes.items() if k[0] == "bench.noop" and k[1] != "done" and v
        }
        if other:
            raise RuntimeError(f"bench.noop: {done} of {n} done, and {other}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench.noop: {done} of {n} done after {timeout:.0f} s")
        await asyncio.sleep(0.005)


async def run_dispatcher(path: Path, n: int, concurrency: int, sync: str) -> tuple[float, float]:
    async with journal_for(path, sync) as j:
        d = Dispatcher(DispatchConfig(), j, {"bench.noop": noop}, kea=None, log=_QuietLog())
        await d.start()
        queue = iter(range(n))

        async def submitter() -> None:
            for i in queue:
                ev = make_event(varbinds=[("IF-MIB::ifIndex", "Integer32", i)])
                out = make_outcome(plan("bench.noop", {"mac": mac(i)}, key=f"mac:{i}"))
                await d.submit(ev, out)

        t0 = time.perf_counter()
        await asyncio.gather(*(submitter() for _ in range(concurrency)))
        await wait_done(d, n, 60.0 + n * 0.01)  # ~1 ms an action here: 10x that, and a minute
        await d.stop()  # waits for the last "done" rows to commit
        return n / (time.perf_counter() - t0), j.committed_ops / max(1, j.commits)


async def run_steady(path: Path, n: int, rate: float, sync: str) -> tuple[float, float]:
    async with journal_for(path, sync) as j:
        d = Dispatcher(DispatchConfig(), j, {"bench.noop": noop}, kea=None, log=_QuietLog())
        await d.start()
        items = [
            (
                make_event(varbinds=[("IF-MIB::ifIndex", "Integer32", i)]),
                make_outcome(plan("bench.noop", {"mac": mac(i)}, key=f"mac:{i}")),
            )
            for i in range(n)
        ]
        _SUBMITTED.clear()
        _START_DELAYS.clear()
        t0 = time.perf_counter()
        for i, item in enumerate(items):
            _SUBMITTED[item[0].id] = time.perf_counter()
            await d.submit_many([item])
            await asyncio.sleep(max(0.0, t0 + (i + 1) / rate - time.perf_counter()))
        await wait_done(d, n, 60.0 + n * 0.01)
        await d.stop()
        return n / (time.perf_counter() - t0), j.committed_ops / max(1, j.commits)


def _quantile(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


async def run_starved(
    path: Path, seconds: float, rate: float, hog_ms: float, sync: str
) -> tuple[float, float]:
    async with journal_for(path, sync) as j:
        d = Dispatcher(DispatchConfig(), j, {"bench.noop": noop}, kea=None, log=_QuietLog())
        await d.start()
        loop = asyncio.get_running_loop()
        storm = True

        def hog() -> None:
            until = time.perf_counter() + hog_ms / 1000
            while time.perf_counter() < until:
                pass
            if storm:
                loop.call_soon(hog)

        loop.call_soon(hog)
        t0 = time.perf_counter()
        sent = 0
        while (elapsed := time.perf_counter() - t0) < seconds:
            due = int(elapsed * rate)
            items = [
                (
                    make_event(varbinds=[("IF-MIB::ifIndex", "Integer32", i)]),
                    make_outcome(plan("bench.noop", {"mac": mac(i)}, key=f"mac:{i}")),
                )
                for i in range(sent, due)
            ]
            sent = due
            if items:
                await d.submit_many(items)
            else:
                await asyncio.sleep(0)
        storm = False
        done = d.stats.outcomes[("bench.noop", "done")]
        await d.stop()
        return done / seconds, j.committed_ops / max(1, j.commits)


class _QuietLog:
    """A logger that drops everything: the benchmark measures the journal, not the log sink."""

    def bind(self, **_: Any) -> _QuietLog:
        return self

    def __getattr__(self, _name: str) -> Any:
        return lambda *a, **k: None


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    global _PG
    results: dict[str, Any] = {}
    for backend in args.backends:
        server = None
        if backend == "postgresql":
            sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
            from pg_harness import PgServer

            server = PgServer(fsync=True)
        try:
            if server is not None:
                server.start()  # inside the try: a start interrupted or failed half-way is removed too
            _PG = server
            for sync in args.synchronous if server is None else ["on"]:
                await _cases(args, backend, sync, results)
        finally:
            _PG = None
            if server is not None:
                server.remove()
    return results


async def _cases(args: argparse.Namespace, backend: str, sync: str, results: dict[str, Any]) -> None:
    name = "sqlite" if backend == "sqlite" else "pg"
    for case in args.cases:
        rates, batches, cpus, server_cpus = [], [], [], []
        p50s: list[float] = []
        p99s: list[float] = []
        for run in range(args.runs):
            with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
                path = Path(tmp) / "journal.sqlite"
                n = args.actions if case != "one-by-one" else min(args.actions, args.one_by_one_actions)
                cpu0 = time.process_time()
                server0 = _PG.cpu_by_process() if _PG is not None else {}
                if case == "batched":
                    rate, batch = await run_batched(path, n, args.concurrency, sync)
                elif case == "steady":
                    rate, batch = await run_steady(path, min(n, args.steady_actions), args.rate, sync)
                    n = min(n, args.steady_actions)
                elif case == "one-by-one":
                    rate, batch = await run_one_by_one(path, n, sync)
                elif case == "starved":
                    rate, batch = await run_starved(path, args.storm_seconds, args.rate, args.hog_ms, sync)
                    n = max(1, int(rate * args.storm_seconds))
                else:
                    rate, batch = await run_dispatcher(path, n, args.concurrency, sync)
                cpu = (time.process_time() - cpu0) / n * 1e6  # all threads, microseconds per action
                server_cpu = 0.0
                if _PG is not None:
                    server_cpu = _PG.cpu_between(server0, _SERVER_CPU_AT_CLOSE) / n * 1e6
            rates.append(rate)
            batches.append(batch)
            cpus.append(cpu)
            server_cpus.append(server_cpu)
            extra = ""
            if case == "steady" and _START_DELAYS:
                p50s.append(_quantile(_START_DELAYS, 0.5) * 1e3)
                p99s.append(_quantile(_START_DELAYS, 0.99) * 1e3)
                extra = f"; submit -> start p50 {p50s[-1]:.3f} ms, p99 {p99s[-1]:.3f} ms"
            if _PG is not None:
                extra += f"; server {server_cpu:.0f} us CPU each"
            print(f"  {name:<6} {case:<11} synchronous={sync:<6} run {run + 1}: {rate:9,.0f} actions/s "
                  f"({batch:.1f} per commit, {cpu:.0f} us CPU each{extra})", file=sys.stderr)  # fmt: skip
        key = f"{case}/{sync}" if backend == "sqlite" else f"{case}/postgresql"
        results[key] = {
            "median_actions_per_s": statistics.median(rates),
            "runs": rates,
            "median_actions_per_commit": statistics.median(batches),
            # CPU per action (every thread): what the machine's load cannot change.
            "median_cpu_us_per_action": statistics.median(cpus),
            "cpu_us_per_action_runs": cpus,
            # PostgreSQL: the server's processes, per action (0 for SQLite, which has none).
            "median_server_cpu_us_per_action": statistics.median(server_cpus),
        }
        if p50s:
            results[key].update(
                median_start_p50_ms=statistics.median(p50s),
                median_start_p99_ms=statistics.median(p99s),
                start_p99_ms_runs=p99s,
            )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--actions", type=int, default=20000, help="actions per run (batched, dispatcher)")
    p.add_argument("--one-by-one-actions", type=int, default=3000, help="actions per one-by-one run")
    p.add_argument("--concurrency", type=int, default=500, help="submitters in flight")
    p.add_argument("--rate", type=float, default=1000.0, help="submits per second (steady)")
    p.add_argument("--steady-actions", type=int, default=5000, help="actions per steady run")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--hog-ms", type=float, default=5.0, help="CPU per loop turn taken by the storm (starved)")
    p.add_argument("--storm-seconds", type=float, default=5.0, help="length of the storm (starved)")
    p.add_argument("--cases", nargs="+", default=["batched", "one-by-one", "dispatcher", "steady"],
                   choices=["batched", "one-by-one", "dispatcher", "steady", "starved"])  # fmt: skip
    p.add_argument("--synchronous", nargs="+", default=["normal", "full"], choices=["normal", "full"])
    p.add_argument("--dir", help="where the journal files go (default: system temp dir)")
    p.add_argument("--backends", nargs="+", default=["sqlite"], choices=["sqlite", "postgresql"])
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    results = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        head = ("case", "actions/s (median)", "per commit", "CPU us/action", "server us")
        print(f"{head[0]:<24} {head[1]:>20} {head[2]:>11} {head[3]:>14} {head[4]:>10}")
        for name, r in results.items():
            cpu, server = r["median_cpu_us_per_action"], r["median_server_cpu_us_per_action"]
            print(f"{name:<24} {r['median_actions_per_s']:>20,.0f} {r['median_actions_per_commit']:>11.1f} "
                  f"{cpu:>14.0f} {server:>10.0f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    from benchproc import sigterm_unwinds  # stops what it started on SIGTERM too

    with sigterm_unwinds():
        sys.exit(main())
