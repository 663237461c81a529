"""Lease deletion rate through trapd's Kea client beside the raw rate of the same Kea, same run.

Starts a private Kea 2.2 on loopback (tests/kea_harness.py: kea-dhcp4 +
kea-ctrl-agent, unix socket, memfile, lease_cmds), then for each transport:

  raw     the plainest client that can do it: a new unix connection per
          command (what Kea's socket allows), or one http.client keep-alive
          connection to the Control Agent
  trapd   trapd.kea.client.KeaClient, one command in flight (how an action
          deletes the leases of one MAC or one port), and N in flight (many
          actions at once, as in a trap storm)
  httpx   (--httpx) httpx.AsyncClient, one in flight: the library this client replaced

Each round adds N leases over the unix socket (not timed) and deletes them
with lease4-del (timed). Rounds are interleaved; the median of --rounds is reported.

--e2e adds the whole path: ``trapd run`` (a subprocess, as in production)
receives N v2c linkDown traps (bench/loadgen.py's messages; the sequence
number varbind names the lease), a rule deletes that lease with kea.lease-del
through one transport, and the clock stops at the last action's end in
trapd's journal. Every trap is journaled (SQLite) before its action runs, and
kea.lease-del does lease4-get then lease4-del, so two Kea commands per trap:
the ratio to a raw client sending the same two commands per lease (a row of
its own) shows what the pipeline costs.

Every row also gives Kea's own CPU per deletion (its processes, same rounds), and
each end-to-end row the bound the machine's cores set: Kea and trapd share them,
so no design of trapd's deletes more than cores / (trapd's + Kea's CPU per lease)
a second. The raw client, sequential, uses about one core; on a 2-core machine
the end-to-end ratio cannot pass that bound's, whatever trapd's concurrency.

    .venv/bin/python bench/bench_kea.py                      # N=1000, 3 rounds
    .venv/bin/python bench/bench_kea.py -n 2000 --rounds 5 --httpx
    .venv/bin/python bench/bench_kea.py --e2e                # plus trap -> lease deleted
    .venv/bin/python bench/bench_kea.py --e2e-only -n 1000 --rounds 5 --workers 1,2
                                      # issue 13 target 1: one process and service.workers 2
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import os
import socket
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import kea_harness

from trapd.kea.client import KeaClients

MAC = "0a:00:27:be:0c:01"


def addresses(n: int) -> list[str]:
    return [f"10.1.{i // 250}.{i % 250 + 1}" for i in range(n)]


def add_leases(kea: kea_harness.KeaInstance, ips: list[str]) -> None:
    for ip in ips:
        kea.add_lease4(ip, MAC)


# What kea.lease-del by ip-address sends per lease: the lease is read first (recorded in the
# journal for `trapd kea restore`), then deleted.
GET_DEL = ("lease4-get", "lease4-del")


# The raw clients' wait for one answer (the HTTP one always had 5 s): Kea answers in ~0.1 ms.
RAW_TIMEOUT = 5.0


def raw_unix(path: str, ips: list[str], commands: tuple[str, ...] = ("lease4-del",)) -> None:
    for ip in ips:
        for command in commands:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(RAW_TIMEOUT)  # a Kea that stopped answering ends the run, not hangs it
                s.connect(path)
                s.sendall(json.dumps({"command": command, "arguments": {"ip-address": ip}}).encode())
                data = b""
                while chunk := s.recv(65536):
                    data += chunk
            assert json.loads(data)["result"] == 0, data


def raw_ca(port: int, ips: list[str], commands: tuple[str, ...] = ("lease4-del",)) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=RAW_TIMEOUT)
    headers = {"Content-Type": "application/json"}
    for ip in ips:
        for command in commands:
            body = json.dumps({"command": command, "service": ["dhcp4"], "arguments": {"ip-address": ip}})
            conn.request("POST", "/", body, headers)
            r = conn.getresponse()
            answer = json.loads(r.read())
            assert answer[0]["result"] == 0, answer
    conn.close()


async def trapd_client(clients: KeaClients, endpoint: str, ips: list[str], in_flight: int) -> None:
    kea = clients.get(endpoint)
    if in_flight == 1:
        for ip in ips:
            await kea.command("lease4-del", {"ip-address": ip}, accept=(0,))
        return
    queue = iter(ips)

    async def worker() -> None:
        for ip in queue:
            await kea.command("lease4-del", {"ip-address": ip}, accept=(0,))

    await asyncio.gather(*(worker() for _ in range(in_flight)))


async def httpx_client(port: int, ips: list[str]) -> None:
    import httpx

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for ip in ips:
            body = {"command": "lease4-del", "service": ["dhcp4"], "arguments": {"ip-address": ip}}
            r = await client.post("/", content=json.dumps(body), headers={"Content-Type": "application/json"})
            assert r.json()[0]["result"] == 0


E2E_RULES = """
rules:
  - name: bench-trap-deletes-lease
    match:
      notification: IF-MIB::linkDown
    actions:
      - action: kea.lease-del
        endpoint: {endpoint}
        ip-address: "10.1.{{{{ (varbinds['{seq}'].display | int) // 250 }}}}.\\
          {{{{ (varbinds['{seq}'].display | int) % 250 + 1 }}}}"
        cap: {{limit: 1000000, per: 1m}}
"""


class E2E:
    """A ``trapd run`` subprocess whose rule deletes, through ``endpoint``, the lease each trap names.

    Started as bench_storm.py starts it (its log to a file, not a pipe this process must
    drain; readiness from /healthz). A round's time runs from the first trap sent to the
    last action's ``finished`` in trapd's own journal, so polling /metrics for the end
    (every 0.25 s) costs trapd little and adds nothing to the figure.
    """

    def __init__(
        self,
        workdir: Path,
        kea: kea_harness.KeaInstance,
        endpoint: str,
        workers: int = 1,
        commit_delay: str | None = None,
    ) -> None:
        import bench_storm as bs

        workdir.mkdir(parents=True, exist_ok=True)
        rules = E2E_RULES.format(endpoint=endpoint, seq="1.3.6.1.4.1.99999.1.1")
        extra: dict[str, Any] = {"kea": kea.trapd_kea_section()}
        if workers > 1:
            extra["service"] = {"workers": workers}
        if commit_delay is not None:
            extra["dispatch"] = {"journal": {"commit_delay": commit_delay}}
        self.pipeline = bs.Pipeline(workdir, 0, extra, rules=rules)
        self.name = f"{endpoint}, workers: {workers}"
        self.workers = workers
        try:
            self.pipeline.wait_ready()
        except BaseException:  # not ready, ^C, SIGTERM: no runner comes back to be closed
            self.pipeline.stop()
            raise
        self.port = self.pipeline.port
        self.journal = workdir / "state" / "journal.sqlite"
        self.cpu_us: list[float] = []
        self.shares: list[dict[str, int]] = []  # per round: actions per owner

    def run(self, ips: list[str]) -> float:
        """Send one trap per lease; return the seconds from the first send to the last action's end."""
        import bench_listener as bl
        import loadgen

        # addresses(n)[i] is the lease of sequence number i (see E2E_RULES).
        messages = loadgen.build_messages(loadgen.LoadSpec(), 0, len(ips))
        pid = self.pipeline.proc.pid
        cpu0 = bl.cpu_seconds(pid)
        began = time.time()
        # From SENDERS source ports, round robin: with service.workers the kernel spreads the
        # traps over the workers by source port (SO_REUSEPORT); one process reads them all.
        senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(SENDERS)]
        try:
            for i, m in enumerate(messages):
                senders[i % SENDERS].sendto(m, ("127.0.0.1", self.port))
                if i % 200 == 199:
                    time.sleep(0.01)  # a burst, but not one that overflows the receive buffer
        finally:
            for s in senders:
                s.close()
        # The end from trapd's journal (another process reading the WAL: nothing of trapd's
        # time), not from /metrics, which cost trapd's event loop ~6 % of its time at 4 scrapes
        # a second (py-spy --gil on this benchmark).
        deadline = time.monotonic() + 120
        while True:
            got, last = self._finished(began)
            if got >= len(ips):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {got} of {len(ips)} actions finished")
            time.sleep(0.25)
        self.cpu_us.append((bl.cpu_seconds(pid) - cpu0) / len(ips) * 1e6)
        self.shares.append(self._owners(began))
        return last - began

    def _owners(self, since: float) -> dict[str, int]:
        """Actions run per process (the journal's ``owner``: worker-N with service.workers)."""
        conn = sqlite3.connect(f"file:{self.journal}?mode=ro", uri=True)
        try:
            rows = conn.execute(
                "SELECT coalesce(owner, '-'), count(*) FROM actions WHERE action = 'kea.lease-del' "
                "AND received_at >= ? GROUP BY 1 ORDER BY 1",
                (since,),
            ).fetchall()
        finally:
            conn.close()
        return {str(o): int(n) for o, n in rows}

    def _finished(self, since: float) -> tuple[int, float]:
        """(kea.lease-del actions done for traps received since ``since``, the last one's end)."""
        conn = sqlite3.connect(f"file:{self.journal}?mode=ro", uri=True)
        try:
            n, last = conn.execute(
                "SELECT count(*), max(finished) FROM actions WHERE action = 'kea.lease-del' "
                "AND state = 'done' AND received_at >= ?",
                (since,),
            ).fetchone()
        finally:
            conn.close()
        return int(n), float(last or 0.0)

    def close(self) -> None:
        self.pipeline.stop()


# Source ports the end-to-end traps come from (see E2E.run).
SENDERS = 16

# How coroutines run: uvloop when installed, like the daemon (trapd.listener.udp.run_on_best_loop).
RUN_LOOP: list[Callable[[Awaitable[None]], Any]] = [asyncio.run]


def kea_cpu_seconds(kea: kea_harness.KeaInstance) -> float:
    """User + system time of Kea's processes (the servers and the Control Agent)."""
    import bench_listener as bl

    return sum(bl.cpu_seconds(p.pid) for p in kea.procs.values())


def measure_once(
    kea: kea_harness.KeaInstance, n: int, run: Callable[[list[str]], Awaitable[None] | float | None]
) -> tuple[float, float, float]:
    """(deletions per second, client CPU and Kea CPU in microseconds per deletion) for one round.

    Kea's CPU is what bounds the ratio on a small machine: Kea and the client share its cores.
    """
    ips = addresses(n)
    add_leases(kea, ips)
    cpu = time.process_time()
    kea_cpu = kea_cpu_seconds(kea)
    started = time.perf_counter()
    maybe = run(ips)
    wall = time.perf_counter() - started
    if isinstance(maybe, float):
        wall = maybe  # the run timed itself (E2E: from trapd's journal)
    elif maybe is not None:
        RUN_LOOP[0](_await(maybe))
        wall = time.perf_counter() - started
    client = (time.process_time() - cpu) / n * 1e6
    return n / wall, client, (kea_cpu_seconds(kea) - kea_cpu) / n * 1e6


async def _await(aw: Awaitable[None]) -> None:
    await aw


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("-n", type=int, default=1000, help="leases per round (max 60000)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--in-flight", type=int, default=4, help="concurrent commands for the 'trapd, N in flight' row"
    )
    ap.add_argument("--httpx", action="store_true", help="also measure httpx.AsyncClient")
    ap.add_argument("--json", action="store_true", help="print the results as JSON too")
    ap.add_argument(
        "--loop",
        choices=("uvloop", "asyncio"),
        default="uvloop",
        help="event loop for the trapd rows (as trapd run)",
    )
    ap.add_argument(
        "--e2e", action="store_true", help="also trap -> trapd run -> lease deleted, per transport"
    )
    ap.add_argument(
        "--workers",
        default="1",
        help="service.workers of the end-to-end trapd run (receiving processes sharing one journal); "
        "several, comma-separated (1,2), give a row each, interleaved in the same run",
    )
    ap.add_argument(
        "--commit-delay",
        metavar="DURATION",
        help="dispatch.journal.commit_delay of the end-to-end trapd runs (e.g. 1ms; default: trapd's, 0s)",
    )
    ap.add_argument(
        "--e2e-only",
        action="store_true",
        help="only the end-to-end rows and their raw baseline (lease4-get + lease4-del)",
    )
    args = ap.parse_args()
    if args.e2e_only:
        args.e2e = True
    worker_counts = [max(1, int(w)) for w in str(args.workers).split(",")]
    n = min(max(args.n, 1), 60000)
    loop_name = "asyncio"
    if args.loop == "uvloop":
        try:
            import uvloop

            RUN_LOOP[0] = uvloop.run
            loop_name = "uvloop"
        except ImportError:
            print("uvloop is not installed: using asyncio's loop", file=sys.stderr)

    load0 = Path("/proc/loadavg").read_text().split()[0]
    with tempfile.TemporaryDirectory(prefix="trapd-bench-kea-") as tmp:
        kea = kea_harness.start_kea(Path(tmp), dhcp6=False)
        e2e: list[E2E] = []
        try:
            section = kea.trapd_kea_section()
            for ep in section["endpoints"].values():
                ep["pool_size"] = max(args.in_flight, 1) if ep["transport"] != "unix" else None
                ep.pop("pool_size") if ep["pool_size"] is None else None
                if ep["transport"] == "unix":
                    ep["max_in_flight"] = max(args.in_flight, 1)

            def client_run(endpoint: str, in_flight: int) -> Callable[[list[str]], Awaitable[None]]:
                async def go(ips: list[str]) -> None:
                    clients = kea_harness.make_kea_clients(section)
                    try:
                        await trapd_client(clients, endpoint, ips, in_flight)
                    finally:
                        await clients.aclose()

                return go

            sock = str(kea.dhcp4_socket)
            port = kea.ca_port
            assert port is not None
            plan: list[tuple[str, str, Callable[[list[str]], Any]]] = [
                ("unix", "raw (new connection per command)", lambda ips: raw_unix(sock, ips)),
                ("unix", "trapd client, 1 in flight", client_run("unix4", 1)),
                ("unix", f"trapd client, {args.in_flight} in flight", client_run("unix4", args.in_flight)),
                ("control-agent", "raw (http.client keep-alive)", lambda ips: raw_ca(port, ips)),
                ("control-agent", "trapd client, 1 in flight", client_run("ca4", 1)),
                (
                    "control-agent",
                    f"trapd client, {args.in_flight} in flight",
                    client_run("ca4", args.in_flight),
                ),
            ]
            if args.e2e_only:
                plan = []
            if args.e2e:
                sys.path.insert(0, str(Path(__file__).resolve().parent))
                # The baseline of the end-to-end rows: the same two commands per lease as the action.
                plan.append(("unix", "raw lease4-get + lease4-del", lambda ips: raw_unix(sock, ips, GET_DEL)))
                plan.append(
                    ("control-agent", "raw lease4-get + lease4-del", lambda ips: raw_ca(port, ips, GET_DEL))
                )
                for transport, endpoint in (("unix", "unix4"), ("control-agent", "ca4")):
                    for workers in worker_counts:
                        name = f"trapd-{endpoint}-w{workers}"
                        runner = E2E(Path(tmp) / name, kea, endpoint, workers, args.commit_delay)
                        e2e.append(runner)
                        what = "trap -> trapd run -> lease deleted"
                        if workers > 1 or len(worker_counts) > 1:
                            what = f"{what} (workers: {workers})"
                        plan.append((transport, what, runner.run))
                plan.sort(key=lambda row: row[0] != "unix")  # keep the table grouped by transport
            if args.httpx:
                plan.append(
                    ("control-agent", "httpx.AsyncClient, 1 in flight", lambda ips: httpx_client(port, ips))
                )
            # Rounds are interleaved (every client once, then again) so that load
            # from elsewhere on the machine hits raw and trapd rows alike.
            rates: list[list[float]] = [[] for _ in plan]
            cpus: list[list[float]] = [[] for _ in plan]
            kea_cpus: list[list[float]] = [[] for _ in plan]
            for _ in range(args.rounds):
                for i, (_, _, run) in enumerate(plan):
                    rate, cpu, kea_cpu = measure_once(kea, n, run)
                    owner = getattr(run, "__self__", None)
                    if isinstance(owner, E2E):
                        cpu = owner.cpu_us[-1]  # trapd's CPU, not this process's
                    rates[i].append(rate)
                    cpus[i].append(cpu)
                    kea_cpus[i].append(kea_cpu)
            results = [
                {
                    "transport": t,
                    "client": what,
                    "rates": r,
                    "median": statistics.median(r),
                    "cpu_us": statistics.median(c),
                    "kea_cpu_us": statistics.median(k),
                }
                for (t, what, _), r, c, k in zip(plan, rates, cpus, kea_cpus, strict=True)
            ]
        finally:
            for runner in e2e:
                runner.close()
            kea.stop()

    print(f"Kea {kea.version}, lease4-del of {n} leases, median of {args.rounds} rounds, {loop_name}")
    if args.e2e:
        delay = f"; dispatch.journal.commit_delay {args.commit_delay}" if args.commit_delay else ""
        print(f"trapd run: service.workers {args.workers}{delay}; load average {load0} at the start")
    print()
    print(
        "client CPU = CPU time of the client per deletion (median): what the client itself costs;\n"
        "Kea CPU = CPU time of Kea's processes per deletion in the same rounds\n"
    )
    head = ("transport", "client", "median/s", "vs raw", "client CPU", "Kea CPU", "rounds")
    print(
        f"| {head[0]:13} | {head[1]:36} | {head[2]:>8} | {head[3]:>6} | {head[4]:>10} | {head[5]:>8} "
        f"| {head[6]} |"
    )
    print(f"|{'-' * 15}|{'-' * 38}|{'-' * 9}:|{'-' * 7}:|{'-' * 11}:|{'-' * 9}:|--------|")
    raw: dict[str, float] = {}
    raw_get_del: dict[str, float] = {}
    raw_get_del_rounds: dict[str, list[float]] = {}
    for r in results:
        if r["client"] == "raw lease4-get + lease4-del":
            raw_get_del[r["transport"]] = r["median"]
            raw_get_del_rounds[r["transport"]] = r["rates"]
        elif r["client"].startswith("raw"):
            raw[r["transport"]] = r["median"]
    for r in results:
        # The end-to-end rows (two commands per lease) against the raw client doing the same two.
        base = raw_get_del if r["client"].startswith(("trap ->", "raw lease4-get")) else raw
        ratio = r["median"] / base[r["transport"]]
        r["vs_raw"] = ratio
        rounds = ", ".join(f"{x:,.0f}" for x in r["rates"])
        # The end-to-end rows: trapd's CPU (all its threads) per lease, this process only sends.
        cpu = f"{r['cpu_us']:.0f} µs"
        kea_cpu = f"{r['kea_cpu_us']:.0f} µs"
        cells = f"{r['median']:8,.0f} | {r['vs_raw']:5.2f}x | {cpu:>10} | {kea_cpu:>8}"
        print(f"| {r['transport']:13} | {r['client']:36} | {cells} | {rounds} |")
    # Each round's end-to-end rate against the raw client's in the same round (rounds interleave).
    print()
    for r in results:
        if r["client"].startswith("trap ->"):
            base_rounds = raw_get_del_rounds[r["transport"]]
            r["round_ratios"] = [t / b for t, b in zip(r["rates"], base_rounds, strict=True)]
            shown = ", ".join(f"{x:.2f}" for x in r["round_ratios"])
            print(f"ratio by round, {r['transport']}, {r['client']}: {shown}")
    # What the machine's cores allow: trapd and Kea share them, so no design of trapd's gets
    # past (cores / CPU per lease) deletions a second, whatever its concurrency.
    cores = os.cpu_count() or 1
    print()
    for r in results:
        if r["client"].startswith("trap ->"):
            per_lease = r["cpu_us"] + r["kea_cpu_us"]
            bound = cores / per_lease * 1e6
            r["cpu_bound"] = bound
            print(
                f"CPU bound, {r['transport']}, {r['client']}: trapd {r['cpu_us']:.0f} + Kea "
                f"{r['kea_cpu_us']:.0f} = {per_lease:.0f} µs per lease on {cores} cores: at most "
                f"{bound:,.0f}/s = {bound / raw_get_del[r['transport']]:.2f}x of the raw client"
            )
    for runner in e2e:
        if runner.workers > 1:
            # How the kernel spread the traps (SO_REUSEPORT, by source port) over the workers.
            print(f"\nactions per worker, {runner.name}: {runner.shares}")
    if args.json:
        print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    from benchproc import sigterm_unwinds  # stops what it started on SIGTERM too

    with sigterm_unwinds():
        sys.exit(main())
