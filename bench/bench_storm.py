"""The whole pipeline in a trap storm: ``trapd run`` with 1,000 rules, beside snmptrapd.

Two parts, each bounded in count and time, all traffic on loopback::

    .venv/bin/python bench/bench_storm.py throughput [--rates 2000,5000,8000,10000] [--runs 3] [--seconds 5]
    .venv/bin/python bench/bench_storm.py overload [--rate 50000] [--seconds 60]

**throughput**: for each rate and run, a fresh ``trapd run`` (the daemon, as
systemd starts it) with 1,000 rules from ``bench_rules.build_rules`` plus one
rule that matches the traps whose sequence number ends in 0 (10 % of the
load) and journals a ``log`` action for each. The load is bench_listener's:
``loadgen``'s numbered v2c linkDown traps, the same bytes sent to a fresh
snmptrapd logging to a file in the same run (bench_listener's receiver and
measurement, interleaved). trapd's side is read from its own metrics after
it has gone quiet: notifications received (decoded, normalized, matched
against the 1,000 rules), dropped by reason, the kernel's drops on its
socket, rule matches, and actions done (journaled and run). Loss is
``1 - received / sent``; matches are checked against the 10 % sent.

**overload**: one ``trapd run`` (same rules) takes ``--rate`` traps/s
(default: 10x the lossless rate found by ``throughput``, or 50,000/s) for
``--seconds`` from a pre-encoded ring of messages (the sender cannot hold
3 million messages), while RSS is sampled every 0.5 s. Then a normal trap
must still be received and acted on, /healthz must answer, and the
processed rate right after the storm (1,000/s for 5 s, lossless?) shows the
recovery. Reports peak RSS, what was received, dropped by the listener,
dropped by the kernel, lost by the dispatcher (``submit_overflow``), and the
time to drain.

Results: ``bench/results/storm-*.json`` and a Markdown table on stdout.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_listener as bl  # sibling scripts, not a package
import bench_rules
import loadgen

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SEQ_OID = loadgen.SEQ_OID_STR
# Journals the traps whose ten-digit sequence number ends in 0: exactly 10 % of a run
# (--journaled 0 or 100 for the two extremes, to see what journaling costs).
SEQ_PATTERNS = {10: "\\d{9}0", 0: "x", 100: "\\d{10}"}
JOURNAL_RULE = """
  - name: bench-journal
    match:
      notification: IF-MIB::linkDown
      source: 127.0.0.0/8
      varbinds:
        "SEQ": {regex: 'PATTERN'}
    actions:
      - action: log
        message: "bench {{ varbinds['SEQ'].value }}"
        key: "seq:{{ varbinds['SEQ'].value }}"
"""
Scrape = dict[tuple[str, tuple[tuple[str, str], ...]], float]


# Issue 13's per-port case: 99 of the 1,000 rules on the load's own notification
# (IF-MIB::linkDown from 127.0.0.0/8), differing only by ifIndex, as sites generate them
# per switch port. None tests the load's ifIndex 17, so each trap must be ruled out by
# all 99: linear matching paid for each of them per trap (41 % received at 10,000/s).
PER_PORT_RULES = 99
PORT_RULE = """
  - name: bench-port-INDEX
    match:
      notification: IF-MIB::linkDown
      source: 127.0.0.0/8
      varbinds: {ifIndex: INDEX}
    actions:
      - {action: log, message: "port {{ ifIndex }} ({{ ifDescr }}) down on {{ source }}"}
"""
RULE_SETS = ("mixed", "per-port")


def rules_text(n_rules: int, journaled: int = 10, rule_set: str = "mixed") -> str:
    """``mixed``: bench_rules.build_rules(n_rules), then the journaling rule. ``per-port``:
    the same with the last 99 replaced by PER_PORT_RULES on the load's notification."""
    rule = JOURNAL_RULE.replace("SEQ", SEQ_OID).replace("PATTERN", SEQ_PATTERNS[journaled])
    if rule_set == "mixed":
        return bench_rules.build_rules(n_rules).rstrip("\n") + "\n" + rule.lstrip("\n")
    ports = "".join(PORT_RULE.replace("INDEX", str(100 + k)) for k in range(PER_PORT_RULES))
    base = bench_rules.build_rules(n_rules - PER_PORT_RULES).rstrip("\n") + "\n"
    return base + ports.lstrip("\n") + rule.lstrip("\n")


def expected_matches(sent: int, journaled: int) -> int:
    return {0: 0, 10: sent // 10, 100: sent}[journaled]


def pipeline_config(
    workdir: Path,
    port: int,
    metrics_port: int,
    extra: dict[str, Any] | None,
    state_dir: Path | None = None,
    name: str = "trapd.yaml",
) -> Path:
    cfg: dict[str, Any] = {
        "listener": {"listen": [f"127.0.0.1:{port}"], "communities": ["public"]},
        "rules": {"files": ["rules.yaml"]},
        "state_dir": str(state_dir or workdir / "state"),
        "mibs": {"dirs": []},
        "service": {
            "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
            "log": {"format": "json", "level": "info"},
        },
    }
    for k, v in (extra or {}).items():
        cfg[k] = {**cfg.get(k, {}), **v} if isinstance(v, dict) else v
    path = workdir / name
    path.write_text(yaml.safe_dump(cfg))
    return path


class Pipeline:
    """A ``trapd run`` process with the bench rules, its metrics endpoint, its log in a file."""

    def __init__(
        self,
        workdir: Path,
        n_rules: int,
        extra: dict[str, Any] | None = None,
        journaled: int = 10,
        *,
        inherit: socket.socket | None = None,
        instance: int = 0,
        rules: str | None = None,
    ) -> None:
        """``inherit``: a bound socket handed over as systemd would (LISTEN_FDS, socket activation);
        instances of a group share ``workdir``, its rules and its state directory (the journal).
        ``rules``: the rules file's text instead of the bench rules (``n_rules`` is then unused)."""
        self.workdir = workdir
        self.port = inherit.getsockname()[1] if inherit is not None else bl.free_udp_port()
        self.metrics_port = _free_tcp_port()
        (workdir / "rules.yaml").write_text(rules if rules is not None else rules_text(n_rules, journaled))
        config = pipeline_config(
            workdir, self.port, self.metrics_port, extra, workdir / "state", f"trapd-{instance}.yaml"
        )
        self.log_path = workdir / f"trapd-{instance}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115
        env = dict(os.environ)
        env.setdefault("PYTHONPYCACHEPREFIX", os.path.join(tempfile.gettempdir(), "trapd-bench-pycache"))
        argv = [sys.executable, "-m", "trapd", "run", "--config", str(config)]
        pass_fds: tuple[int, ...] = ()
        if inherit is not None:
            # fd 3 and LISTEN_PID = the pid that execs trapd (sh's, kept by exec), as systemd does.
            env["LISTEN_FDS"] = "1"
            argv = ["sh", "-c", f'exec 3<&{inherit.fileno()}; export LISTEN_PID=$$; exec "$@"', "sh", *argv]
            pass_fds = (inherit.fileno(),)
        self.started = time.monotonic()
        self.proc = subprocess.Popen(
            argv,
            cwd=workdir,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            pass_fds=pass_fds,
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )

    def wait_ready(self, timeout: float = 60.0) -> float:
        """Seconds until /healthz answered 200 (rules compiled, socket bound)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"trapd exited with {self.proc.returncode}; see {self.log_path}")
            with contextlib.suppress(OSError, ValueError):
                if self.http("/healthz")[0] == 200:
                    return time.monotonic() - self.started
            time.sleep(0.1)
        raise RuntimeError(f"trapd not ready after {timeout} s; see {self.log_path}")

    def http(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return int(r.status), r.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()

    def scrape(self) -> Scrape:
        from prometheus_client.parser import text_string_to_metric_families

        status, body = self.http("/metrics", timeout=10.0)
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        out: Scrape = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
        return out

    def stop(self) -> int | None:
        for sig, wait in ((signal.SIGTERM, 15.0), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait)
        self._log.close()
        return self.proc.returncode

    def log_lines(self, event: str) -> list[dict[str, Any]]:
        out = []
        for line in self.log_path.read_bytes().splitlines():
            if event.encode() not in line:
                continue
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                if entry.get("event") == event:
                    out.append(entry)
        return out


def pss_kb(root: int) -> int:
    """Proportional set size of ``root`` and its descendants, KiB (shared pages split between them)."""
    total = 0
    for pid in bl.process_tree(root):
        with contextlib.suppress(OSError):
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
    return total


class SpreadSender:
    """``send`` over several sender sockets in turn: distinct source ports, as many switches would be."""

    def __init__(self, port: int, n: int) -> None:
        self._socks = [loadgen.open_sender("127.0.0.1", port) for _ in range(n)]
        self._sends = [s.send for s in self._socks]
        self._i = 0

    def send(self, data: bytes) -> int:
        self._i = (self._i + 1) % len(self._sends)
        return self._sends[self._i](data)

    def close(self) -> None:
        for s in self._socks:
            s.close()


def metric(scrape: Scrape, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, lb), v in scrape.items() if n == name and want <= set(lb))


@dataclass
class Counts:
    """What trapd's metrics say, as plain numbers."""

    received: int = 0
    dropped: dict[str, int] = field(default_factory=dict)
    socket_drops: int = 0
    matched: int = 0
    actions_done: int = 0
    journal_pending: int = 0

    @classmethod
    def of(cls, s: Scrape) -> Counts:
        dropped: dict[str, int] = {}
        for (n, lb), v in s.items():
            if n == "trapd_notifications_dropped_total":
                dropped[dict(lb).get("reason", "?")] = int(v)
        return cls(
            received=int(metric(s, "trapd_notifications_received_total")),
            dropped=dropped,
            socket_drops=int(metric(s, "trapd_socket_drops_total")),
            matched=int(metric(s, "trapd_rule_matches_total", rule="bench-journal")),
            actions_done=int(metric(s, "trapd_actions_total", outcome="done")),
            journal_pending=int(metric(s, "trapd_journal_entries", state="pending")),
        )

    def minus(self, other: Counts) -> Counts:
        return Counts(
            self.received - other.received,
            {k: v - other.dropped.get(k, 0) for k, v in self.dropped.items()},
            self.socket_drops - other.socket_drops,
            self.matched - other.matched,
            self.actions_done - other.actions_done,
            self.journal_pending,
        )


class RssSampler(threading.Thread):
    """VmRSS of a process every ``interval`` seconds, (elapsed, KiB) pairs."""

    def __init__(self, pid: int, interval: float = 0.5) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop_event = threading.Event()
        self.t0 = time.monotonic()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.samples.append((round(time.monotonic() - self.t0, 2), bl.memory_kb(self.pid)[1]))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(2)


def wait_quiet(p: Pipeline, want_received: int, want_done: int, timeout: float) -> tuple[Counts, float]:
    """Poll the metrics until nothing moves for 1 s (or everything sent is accounted for)."""
    t0 = time.monotonic()
    last: Counts | None = None
    still_since = t0
    while True:
        c = Counts.of(p.scrape())
        st = bl.socket_state(p.port)
        now = time.monotonic()
        accounted = c.received + sum(c.dropped.values()) + c.socket_drops
        if accounted >= want_received and c.actions_done >= want_done:
            return c, now - t0
        if last is None or c != last or (st is not None and st.rx_queue > 0):
            still_since = now
        elif now - still_since >= 1.0:
            return c, still_since - t0
        if now - t0 > timeout:
            return c, now - t0
        last = c
        time.sleep(0.2)


# --- throughput ----------------------------------------------------------------------


@dataclass
class PipelineRun:
    receiver: str
    rate: int
    run: int
    sent: int = 0
    rate_achieved: float = 0.0
    received: int = 0
    loss_pct: float = 100.0
    dropped: dict[str, int] = field(default_factory=dict)
    socket_drops: int = 0
    matched: int = 0
    expected_matches: int = 0
    actions_done: int = 0
    lag_seconds: float = 0.0
    throughput: float = 0.0
    cpu_us_per_trap: float | None = None
    rss_peak_kb: int = 0
    # Proportional set size at the end, summed over the process tree: with workers, RSS counts
    # the pages they share with the supervisor (MIB tables, rules) once per process; PSS once.
    pss_kb: int = 0
    loadavg: float = 0.0
    error: str | None = None


def pipeline_run(
    rate: int,
    run: int,
    messages: Sequence[bytes],
    workroot: Path,
    n_rules: int,
    drain_timeout: float,
    journaled: int = 10,
    processes: int = 1,
    senders: int = 1,
    rule_set: str = "mixed",
) -> PipelineRun:
    name = "trapd run" if processes == 1 else f"trapd run workers={processes}"
    if rule_set != "mixed":
        name += f" {rule_set}"
    res = PipelineRun(name, rate, run, loadavg=bl._loadavg())
    workdir = Path(tempfile.mkdtemp(prefix=f"pipeline-{rate}-{run}-", dir=workroot))
    # The shipped design: one `trapd run` supervising `processes` workers (service.workers),
    # SO_REUSEPORT sockets, one journal, /metrics summed by the supervisor. CPU and RSS are
    # read over the process tree (bench_listener), so they include every worker.
    extra = {"service": {"workers": processes}} if processes > 1 else None
    p = Pipeline(workdir, n_rules, extra, journaled=journaled, rules=rules_text(n_rules, journaled, rule_set))
    pids = [p.proc.pid]
    try:
        p.wait_ready()
        time.sleep(0.5)  # settle_memory() runs right after READY
        before = Counts.of(p.scrape())
        cpu0 = sum(bl.cpu_seconds(pid) for pid in pids)
        sender = SpreadSender(p.port, senders)
        try:
            gc.disable()
            report = loadgen.pace(
                sender,  # type: ignore[arg-type]  # only .send is used
                messages,
                rate,
                max_seconds=len(messages) / rate * 1.5 + 1.0,
            )
        finally:
            gc.enable()
            sender.close()
        res.sent, res.rate_achieved = report.sent, report.rate_achieved
        res.expected_matches = expected_matches(report.sent, journaled)
        after, lag = wait_quiet(p, report.sent, res.expected_matches, drain_timeout)
        c = after.minus(before)
        res.lag_seconds = round(lag, 2)
        res.received, res.dropped, res.socket_drops = c.received, c.dropped, c.socket_drops
        res.matched, res.actions_done = c.matched, c.actions_done
        res.loss_pct = round(100.0 * (res.sent - res.received) / res.sent, 4) if res.sent else 100.0
        res.throughput = round(res.received / (report.seconds + res.lag_seconds), 1)
        cpu = sum(bl.cpu_seconds(pid) for pid in pids) - cpu0
        res.cpu_us_per_trap = round(cpu * 1e6 / res.received, 1) if res.received else None
        res.rss_peak_kb = sum(bl.memory_kb(pid)[0] for pid in pids)
        res.pss_kb = sum(pss_kb(pid) for pid in pids)
    except Exception as exc:  # one bad run is reported, the benchmark goes on
        res.error = f"{type(exc).__name__}: {exc}"
    finally:
        p.stop()
    return res


def snmptrapd_run(
    rate: int, run: int, messages: Sequence[bytes], workroot: Path, drain_timeout: float, version: str = "v2c"
) -> PipelineRun:
    spec = loadgen.LoadSpec(version=version)
    r = bl.one_run(
        bl.snmptrapd_receiver(bl.SAME_RCVBUF_AS_TRAPD),
        spec,
        rate,
        run,
        messages,
        workroot,
        30.0,
        drain_timeout,
    )
    return PipelineRun(
        "snmptrapd",
        rate,
        run,
        sent=r.sent,
        rate_achieved=r.rate_achieved,
        received=r.received,
        loss_pct=r.loss_pct,
        socket_drops=r.socket_drops or 0,
        lag_seconds=r.lag_seconds,
        throughput=r.throughput,
        cpu_us_per_trap=r.cpu_us_per_trap,
        rss_peak_kb=r.rss_peak_kb,
        loadavg=r.loadavg,
        error=r.error,
    )


def _progress(r: PipelineRun) -> str:
    extra = ""
    if r.receiver.startswith("trapd"):
        extra = f" matched {r.matched}/{r.expected_matches} done {r.actions_done} dropped {r.dropped}"
    err = f" ERROR {r.error}" if r.error else ""
    return (
        f"  {r.receiver:9} {r.rate:6}/s run {r.run}: sent {r.sent} ({r.rate_achieved:.0f}/s) "
        f"received {r.received} loss {r.loss_pct:.3f}% sockdrops {r.socket_drops} lag {r.lag_seconds}s "
        f"{r.throughput:.0f}/s cpu {r.cpu_us_per_trap}us rss {r.rss_peak_kb // 1024}MB "
        f"pss {r.pss_kb // 1024}MB "
        f"load {r.loadavg:.2f}{extra}{err}"
    )


def throughput(args: argparse.Namespace, workroot: Path) -> dict[str, Any]:
    rates = [int(x) for x in args.rates.split(",") if x]
    receivers = [x for x in args.receivers.split(",") if x]
    runs: list[PipelineRun] = []
    for rate in rates:
        for run in range(1, args.runs + 1):
            spec = loadgen.LoadSpec(version=args.version)
            messages = loadgen.build_messages(spec, 1, int(rate * args.seconds))
            for name in receivers:
                if name == "trapd":
                    r = pipeline_run(
                        rate,
                        run,
                        messages,
                        workroot,
                        args.rules,
                        args.drain_timeout,
                        args.journaled,
                        args.processes,
                        args.senders,
                        args.rule_set,
                    )
                else:
                    r = snmptrapd_run(rate, run, messages, workroot, args.drain_timeout, args.version)
                runs.append(r)
                print(_progress(r), flush=True)
    return {"runs": [asdict(r) for r in runs], "summary": summarize(runs)}


def summarize(runs: Sequence[PipelineRun]) -> list[dict[str, Any]]:
    out = []
    keys = sorted({(r.receiver, r.rate) for r in runs}, key=lambda k: (k[1], k[0]))
    for receiver, rate in keys:
        rs = [r for r in runs if r.receiver == receiver and r.rate == rate and r.error is None]
        if not rs:
            continue
        out.append(
            {
                "receiver": receiver,
                "rate": rate,
                "runs": len(rs),
                "loss_pct": statistics.median(r.loss_pct for r in rs),
                "loss_pct_worst": max(r.loss_pct for r in rs),
                "throughput": statistics.median(r.throughput for r in rs),
                "lag_seconds": statistics.median(r.lag_seconds for r in rs),
                "cpu_us_per_trap": statistics.median(r.cpu_us_per_trap or 0.0 for r in rs),
                "rss_peak_mb": round(statistics.median(r.rss_peak_kb for r in rs) / 1024, 1),
                "pss_mb": round(statistics.median(r.pss_kb for r in rs) / 1024, 1),
                "matched_ok": all(r.matched == r.expected_matches for r in rs)
                if receiver.startswith("trapd")
                else None,
                "loadavg": statistics.median(r.loadavg for r in rs),
            }
        )
    return out


def throughput_table(summary: Sequence[dict[str, Any]]) -> str:
    lines = [
        "| receiver | rate/s | loss % (median, worst) | processed/s | lag s | CPU µs/trap | peak RSS MB "
        "| load |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        lines.append(
            f"| {s['receiver']} | {s['rate']:,} | {s['loss_pct']:.2f}, {s['loss_pct_worst']:.2f} | "
            f"{s['throughput']:,.0f} | {s['lag_seconds']:.1f} | {s['cpu_us_per_trap']:.0f} | "
            f"{s['rss_peak_mb']:.0f} | {s['loadavg']:.1f} |"
        )
    return "\n".join(lines)


# --- overload --------------------------------------------------------------------------


class Ring(Sequence[bytes]):
    """``count`` messages cycling over a pre-encoded list (a 60 s storm does not fit in memory)."""

    def __init__(self, base: Sequence[bytes], count: int) -> None:
        self._base = base
        self._n = len(base)
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(self._count))]
        return self._base[i % self._n]


def overload(args: argparse.Namespace, workroot: Path) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="overload-", dir=workroot))
    extra: dict[str, Any] = {}
    if args.per_source or args.global_limit:
        extra["listener"] = {"rate_limit": {"per_source": args.per_source, "global": args.global_limit}}
    if args.workers > 1:
        extra["service"] = {"workers": args.workers}
    p = Pipeline(
        workdir,
        args.rules,
        extra,
        args.journaled,
        rules=rules_text(args.rules, args.journaled, args.rule_set),
    )
    out: dict[str, Any] = {"rate": args.rate, "seconds": args.seconds, "loadavg_before": bl._loadavg()}
    try:
        out["ready_seconds"] = round(p.wait_ready(), 2)
        time.sleep(0.5)
        out["rss_idle_kb"] = bl.memory_kb(p.proc.pid)[1]
        before = Counts.of(p.scrape())
        sampler = RssSampler(p.proc.pid)
        sampler.start()
        ring = Ring(
            loadgen.build_messages(loadgen.LoadSpec(version="v2c"), 1, 100_000), int(args.rate * args.seconds)
        )
        sender = SpreadSender(p.port, args.senders)
        storm_wall = [time.time(), 0.0]
        gc.disable()
        try:
            report = loadgen.pace(sender, ring, args.rate, max_seconds=args.seconds + 5.0)  # type: ignore[arg-type]
        finally:
            gc.enable()
            sender.close()
        storm_wall[1] = time.time()
        storm_end = time.monotonic() - sampler.t0
        out["sent"], out["rate_achieved"] = report.sent, report.rate_achieved
        out["loadavg_storm"] = bl._loadavg()
        # Drain: until the socket queue is empty and the counters stop moving.
        after, drain = wait_quiet(p, report.sent, 0, 60.0)
        out["drain_seconds"] = round(drain, 2)
        c = after.minus(before)
        out["received"], out["dropped"], out["socket_drops"] = c.received, c.dropped, c.socket_drops
        out["matched"], out["actions_done"] = c.matched, c.actions_done
        out["unaccounted"] = report.sent - c.received - sum(c.dropped.values()) - c.socket_drops
        out["received_per_s_during_storm"] = round(c.received / (report.seconds + drain), 1)
        # Recovery: a normal load right after the storm, lossless?
        post = loadgen.build_messages(loadgen.LoadSpec(version="v2c"), 10_000_001, args.recovery_rate * 5)
        before2 = Counts.of(p.scrape())
        sender = SpreadSender(p.port, args.senders)
        try:
            rep2 = loadgen.pace(sender, post, args.recovery_rate, max_seconds=10.0)  # type: ignore[arg-type]
        finally:
            sender.close()
        after2, lag2 = wait_quiet(p, rep2.sent, 0, 30.0)
        c2 = after2.minus(before2)
        out["recovery"] = {
            "rate": args.recovery_rate,
            "sent": rep2.sent,
            "received": c2.received,
            "loss_pct": round(100.0 * (rep2.sent - c2.received) / rep2.sent, 3),
            "lag_seconds": round(lag2, 2),
        }
        out["healthz"] = p.http("/healthz")[0]
        out["start_delay"] = start_delays(workdir / "state" / "journal.sqlite", storm_wall)
        sampler.stop()
        out["rss_samples"] = sampler.samples
        out["rss_peak_kb"] = bl.memory_kb(p.proc.pid)[0]
        out["rss_end_kb"] = bl.memory_kb(p.proc.pid)[1]
        out["storm_end_s"] = round(storm_end, 2)
        out["overflow_log_lines"] = len(
            p.log_lines("receive buffer overflow: datagrams dropped by the kernel")
        )
        out["lost_outcomes_log_lines"] = len(p.log_lines("dispatch backlog full: outcome lost")) + len(
            p.log_lines("journal overloaded: outcome lost")
        )
    finally:
        out["exit"] = p.stop()
    return out


def start_delays(journal: Path, storm: Sequence[float]) -> dict[str, Any]:
    """How long the storm's matched actions waited to start: ``started - due``, from trapd's journal.

    Over the ``bench-journal`` actions that fell due during the storm (``storm``: its wall-clock
    start and end). One not started yet counts as waiting until now. ``during``: how many of them
    started before the storm ended (the dispatcher's share while receiving is saturated).
    """
    import sqlite3

    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        rows = conn.execute(
            "SELECT due, started FROM actions WHERE rule = 'bench-journal' AND due >= ? AND due <= ?",
            (storm[0], storm[1]),
        ).fetchall()
    finally:
        conn.close()
    now = time.time()
    waits = sorted((started if started is not None else now) - due for due, started in rows)
    if not waits:
        return {"actions": 0}

    def q(p: float) -> float:
        return round(waits[min(len(waits) - 1, int(p * len(waits)))], 3)

    return {
        "actions": len(waits),
        "started_during_storm": sum(1 for _, s in rows if s is not None and s <= storm[1]),
        "p50_s": q(0.50),
        "p99_s": q(0.99),
        "max_s": round(waits[-1], 3),
    }


def overload_text(o: dict[str, Any]) -> str:
    samples = o.get("rss_samples", [])
    during = [kb for t, kb in samples if t <= o.get("storm_end_s", 0)]
    rec = o.get("recovery", {})
    return "\n".join(
        [
            f"storm: {o['sent']:,} v2c traps at {o['rate_achieved']:,.0f}/s for {o['seconds']} s "
            f"(load average {o.get('loadavg_storm')})",
            f"received {o['received']:,} ({o['received_per_s_during_storm']:,.0f}/s), dropped by trapd "
            f"{o['dropped']}, dropped by the kernel on trapd's socket {o['socket_drops']:,}, "
            f"unaccounted {o['unaccounted']:,}",
            f"matched {o['matched']:,}, actions done {o['actions_done']:,}; drained {o['drain_seconds']} s "
            "after the last send",
            f"RSS idle {o['rss_idle_kb'] // 1024} MB, max during the storm "
            f"{max(during, default=0) // 1024} MB, peak {o['rss_peak_kb'] // 1024} MB, "
            f"end {o['rss_end_kb'] // 1024} MB",
            f"recovery: {rec.get('sent')} traps at {rec.get('rate')}/s right after: loss "
            f"{rec.get('loss_pct')} %, lag {rec.get('lag_seconds')} s; /healthz {o.get('healthz')}; "
            f"exit {o.get('exit')}",
            f"log: {o.get('overflow_log_lines')} kernel-drop lines, {o.get('lost_outcomes_log_lines')} "
            "lost-outcome lines",
            f"matched actions due during the storm, started - due: {o.get('start_delay')}",
        ]
    )


# --- main ------------------------------------------------------------------------------


def _free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def _workroot(keep: bool) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="trapd-storm-"))
    try:
        yield root
    finally:
        if not keep:
            import shutil

            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"work directories kept in {root}")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rules", type=int, default=1000, help="rules from bench_rules.build_rules")
    ap.add_argument(
        "--rule-set",
        choices=RULE_SETS,
        default="mixed",
        help="per-port: 99 of the rules on the load's notification, differing only by ifIndex",
    )
    ap.add_argument("--keep-workdirs", action="store_true")
    ap.add_argument(
        "--journaled", type=int, default=10, choices=sorted(SEQ_PATTERNS), help="%% of traps journaled"
    )
    ap.add_argument("--out", type=Path, default=RESULTS_DIR)
    sub = ap.add_subparsers(dest="part", required=True)
    t = sub.add_parser("throughput", help="loss and processed/s at rising rates, beside snmptrapd")
    t.add_argument("--rates", default="2000,5000,8000,10000")
    t.add_argument("--runs", type=int, default=3)
    t.add_argument("--seconds", type=float, default=5.0)
    t.add_argument("--receivers", default="snmptrapd,trapd")
    t.add_argument("--version", choices=("v1", "v2c"), default="v2c", help="the SNMP version of the load")
    t.add_argument("--drain-timeout", type=float, default=60.0)
    t.add_argument(
        "--workers",
        "--processes",
        dest="processes",
        type=int,
        default=1,
        help="service.workers of the trapd run: receiving processes on one port (SO_REUSEPORT) "
        "sharing one journal, under the supervisor that `trapd run` becomes",
    )
    t.add_argument(
        "--senders", type=int, default=1, help="sender sockets (source ports) the load is spread over"
    )
    o = sub.add_parser("overload", help="far beyond the lossless rate: memory, losses, recovery")
    o.add_argument("--rate", type=int, default=50_000)
    o.add_argument("--seconds", type=float, default=60.0)
    o.add_argument("--recovery-rate", type=int, default=1000)
    o.add_argument("--per-source", type=float, default=0.0, help="listener.rate_limit.per_source")
    o.add_argument("--global-limit", type=float, default=0.0, help="listener.rate_limit.global")
    o.add_argument("--workers", type=int, default=1, help="service.workers of the trapd run")
    o.add_argument("--senders", type=int, default=1, help="sender sockets (source ports)")
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    machine = bl.machine_info()
    print(f"machine: {machine['nproc']} CPUs, load average {machine['loadavg_at_start']}", flush=True)
    with _workroot(args.keep_workdirs) as root:
        if args.part == "throughput":
            result = throughput(args, root)
            print(throughput_table(result["summary"]))
        else:
            result = overload(args, root)
            print(overload_text(result))
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"storm-{args.part}-{started.replace(':', '')}.json"
    path.write_text(
        json.dumps(
            {"machine": machine, "started": started, "args": vars(args) | {"out": str(args.out)}, **result},
            indent=1,
            default=str,
        )
    )
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    from benchproc import sigterm_unwinds  # stops what it started on SIGTERM too

    with sigterm_unwinds():
        sys.exit(main())
