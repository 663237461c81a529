"""Listener throughput: trapd against net-snmp's snmptrapd, same load, same run.

For every SNMP version and rate, each run starts a fresh receiver on a free
loopback port, waits until it shows a probe trap, sends ``rate x seconds``
numbered traps paced by ``loadgen.pace``, waits until the receiver has gone
quiet, and then counts the distinct sequence numbers in its output. Around the
load it reads the receiver's CPU time (``/proc/PID/stat``, the process and its
children), its memory (``VmHWM`` / ``VmRSS``), the kernel's UDP receive-buffer
drops (``/proc/net/snmp`` RcvbufErrors, system-wide, and the socket's own drop
counter from ``/proc/net/udp``) and the receive buffer the socket really got
(``ss -m``).

Receivers are interleaved (rate, run, receiver) rather than run one after the
other, so that a noisy minute on a shared machine hits both alike.

Receivers:

- ``snmptrapd``: ``snmptrapd -f -Lf LOG -C -c CONF -On udp:127.0.0.1:PORT`` with
  ``authCommunity log public`` and a ``createUser -e ENGINEID`` + ``authUser log``
  for v3; sequence numbers are read from the log.
- ``trapd``: ``--trapd-cmd`` (a template, see ``--help``), by default
  ``trapd listen`` with a generated config; its stdout (JSON lines) goes to a
  file unless the template names ``{out}`` itself. Any JSON line holding a
  varbind ``{"oid": "1.3.6.1.4.1.99999.1.1", ...}`` anywhere counts.

Reported per receiver / version / rate (medians of the runs): received/sent,
loss, kernel drops, CPU µs per received trap, peak RSS; the highest rate that
kept loss under 0.1 % in every run (and at every lower rate); the ratio
trapd / snmptrapd. Results go to ``bench/results/listener-*.json`` and a
Markdown table to stdout.

Quick run::

    .venv/bin/python bench/bench_listener.py --seconds 3 --v2c-rates 2000,5000,10000 --v3-rates 1000,2000
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import re
import shlex
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import loadgen  # a sibling script, not a package
from benchproc import sigterm_unwinds

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
LOSSLESS_PCT = 0.1
# A receiver still busy this long after the last send was behind the load, living
# off its receive buffer: a longer run would have lost traps.
MAX_LAG_SECONDS = 1.0
CLK_TCK = os.sysconf("SC_CLK_TCK")
# trapd's default listener.receive_buffer; snmptrapd gets the same so that the
# comparison is of the software, not of the buffer (see the README).
SAME_RCVBUF_AS_TRAPD = 8 * 1024 * 1024
DEFAULT_TRAPD_CMD = "{python} -m trapd listen --listen {listen} --community public --config {config}"


# --- what the machine is ---------------------------------------------------------


def machine_info() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    snmptrapd = ""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        out = subprocess.run(["snmptrapd", "--version"], capture_output=True, text=True, timeout=5)
        m = re.search(r"NET-SNMP Version:\s*(\S+)", out.stdout + out.stderr)
        snmptrapd = m.group(1) if m else ""
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "snmptrapd": snmptrapd,
        "trapd_commit": code_version(),
        "rmem_default": _read_int("/proc/sys/net/core/rmem_default"),
        "rmem_max": _read_int("/proc/sys/net/core/rmem_max"),
        "loadavg_at_start": _loadavg(),
    }


def code_version() -> str:
    """The checkout the receivers run from: commit, ``+dirty`` if trapd's code differs from it.

    Read at every receiver start: the tree can change while a long benchmark runs.
    """
    git = ["git", "-C", str(BENCH_DIR)]
    try:
        commit = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--untracked-files=no", "--", "../trapd", "../actions"],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return ""
    return commit.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def _read_int(path: str) -> int | None:
    try:
        return int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _loadavg() -> float:
    try:
        return float(Path("/proc/loadavg").read_text().split()[0])
    except (OSError, ValueError):
        return -1.0


# --- /proc readings --------------------------------------------------------------


def process_tree(root: int) -> list[int]:
    """``root`` and its live descendants (a receiver may fork workers)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rfind(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(d.name))
    tree, todo = [], [root]
    while todo:
        pid = todo.pop()
        tree.append(pid)
        todo.extend(children.get(pid, ()))
    return tree


def cpu_seconds(root: int) -> float:
    """User + system time of the tree, plus children it has already reaped."""
    total = 0
    for pid in process_tree(root):
        try:
            rest = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        f = rest[rest.rfind(")") + 2 :].split()
        total += int(f[11]) + int(f[12])
        if pid == root:
            total += int(f[13]) + int(f[14])
    return total / CLK_TCK


def memory_kb(root: int) -> tuple[int, int]:
    """(peak RSS, current RSS) in KiB, summed over the tree."""
    peak = cur = 0
    for pid in process_tree(root):
        try:
            text = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("VmHWM:"):
                peak += int(line.split()[1])
            elif line.startswith("VmRSS:"):
                cur += int(line.split()[1])
    return peak, cur


def udp_rcvbuf_errors() -> int:
    """System-wide UDP receive-buffer drops, IPv4 + IPv6."""
    total = 0
    with contextlib.suppress(OSError):
        lines = [
            ln.split() for ln in Path("/proc/net/snmp").read_text().splitlines() if ln.startswith("Udp:")
        ]
        if len(lines) >= 2:
            total += int(dict(zip(lines[0][1:], lines[1][1:], strict=False)).get("RcvbufErrors", 0))
    with contextlib.suppress(OSError):
        for ln in Path("/proc/net/snmp6").read_text().splitlines():
            k, _, v = ln.partition(" ")
            if k == "Udp6RcvbufErrors":
                total += int(v.strip())
    return total


@dataclass(frozen=True, slots=True)
class SocketState:
    rx_queue: int
    drops: int


def socket_state(port: int) -> SocketState | None:
    """The bound UDP socket on ``port`` from /proc/net/udp{,6}: queued bytes, drops."""
    for name in ("/proc/net/udp", "/proc/net/udp6"):
        with contextlib.suppress(OSError):
            for line in Path(name).read_text().splitlines()[1:]:
                f = line.split()
                if len(f) < 13 or int(f[1].rsplit(":", 1)[1], 16) != port:
                    continue
                return SocketState(rx_queue=int(f[4].split(":")[1], 16), drops=int(f[-1]))
    return None


def socket_rcvbuf(port: int) -> int | None:
    """The receive buffer the kernel granted the socket (``ss -m`` rb), bytes."""
    try:
        out = subprocess.run(
            ["ss", "-uanmH", f"sport = :{port}"], capture_output=True, text=True, timeout=5
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"\brb(\d+)", out)
    return int(m.group(1)) if m else None


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# --- reading what a receiver saw -----------------------------------------------

_SNMPTRAPD_SEQ = re.compile(rb'\.1\.3\.6\.1\.4\.1\.99999\.1\.1 = STRING: "(\d{10})"')


def seqs_from_snmptrapd_log(data: bytes) -> Counter[int]:
    """Sequence numbers in an snmptrapd ``-On`` log, with their counts."""
    return Counter(int(m) for m in _SNMPTRAPD_SEQ.findall(data))


def _seq_in(obj: Any) -> int | None:
    if isinstance(obj, dict):
        if obj.get("oid", "").lstrip(".") == loadgen.SEQ_OID_STR:
            for key in ("display", "value"):
                v = obj.get(key)
                if isinstance(v, str):
                    seq = loadgen.parse_seq_field(v)
                    if seq is None and key == "value":
                        with contextlib.suppress(ValueError):
                            seq = loadgen.parse_seq_field(bytes.fromhex(v))
                    if seq is not None:
                        return seq
            return None
        items: Iterable[Any] = obj.values()
    elif isinstance(obj, list):
        items = obj
    else:
        return None
    for x in items:
        seq = _seq_in(x)
        if seq is not None:
            return seq
    return None


def seqs_from_json_lines(data: bytes) -> Counter[int]:
    """Sequence numbers in JSON lines (trapd's events, wherever the varbind sits)."""
    found: Counter[int] = Counter()
    for line in data.splitlines():
        if not line.startswith(b"{") or b"99999" not in line:
            continue
        try:
            seq = _seq_in(json.loads(line))
        except ValueError:
            continue
        if seq is not None:
            found[seq] += 1
    return found


# --- receivers ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Launch:
    argv: list[str]
    output: Path
    stdout_is_output: bool
    env: dict[str, str]


@dataclass(frozen=True, slots=True)
class Receiver:
    name: str
    launch: Callable[[Path, int, loadgen.LoadSpec], Launch]
    parse: Callable[[bytes], Counter[int]]


def snmptrapd_receiver(rcvbuf: int) -> Receiver:
    def launch(workdir: Path, port: int, spec: loadgen.LoadSpec) -> Launch:
        u = spec.v3
        conf = workdir / "snmptrapd.conf"
        lines = [
            f"authCommunity log {spec.community}",
            f"createUser -e 0x{u.engine_id.hex()} {u.user} {u.auth_protocol} {u.auth_key} AES {u.priv_key}",
            f"authUser log {u.user} priv",
        ]
        if rcvbuf:
            # A library (snmp.conf) token; the [snmp] prefix lets snmptrapd.conf carry it.
            lines.append(f"[snmp] serverRecvBuf {rcvbuf}")
        conf.write_text("\n".join(lines) + "\n")
        log = workdir / "snmptrapd.log"
        argv = ["snmptrapd", "-f", "-Lf", str(log), "-C", "-c", str(conf), "-On", f"udp:127.0.0.1:{port}"]
        # Keep net-snmp's persistent state (engine boots, users) out of /var/lib/snmp.
        env = os.environ | {"SNMP_PERSISTENT_DIR": str(workdir / "persist")}
        return Launch(argv, log, stdout_is_output=False, env=env)

    return Receiver("snmptrapd", launch, seqs_from_snmptrapd_log)


def trapd_config_yaml(port: int, spec: loadgen.LoadSpec) -> str:
    u = spec.v3
    return (
        "listener:\n"
        f'  listen: ["127.0.0.1:{port}"]\n'
        f"  communities: [{json.dumps(spec.community)}]\n"
        "  v3_users:\n"
        f"    - user: {json.dumps(u.user)}\n"
        f"      auth_protocol: {u.auth_protocol}\n"
        f"      auth_key: {json.dumps(u.auth_key)}\n"
        f"      priv_protocol: {u.priv_protocol}\n"
        f"      priv_key: {json.dumps(u.priv_key)}\n"
        f'      engine_ids: ["{u.engine_id.hex()}"]\n'
    )


def seqs_by_regex(pattern: str) -> Callable[[bytes], Counter[int]]:
    """A parser for any text output: group 1 of ``pattern`` is the ten digits."""
    rx = re.compile(pattern.encode())

    def parse(data: bytes) -> Counter[int]:
        return Counter(int(m) for m in rx.findall(data) if len(m) == loadgen.SEQ_WIDTH and m.isdigit())

    return parse


def trapd_receiver(cmd_template: str, seq_regex: str | None = None) -> Receiver:
    def launch(workdir: Path, port: int, spec: loadgen.LoadSpec) -> Launch:
        config = workdir / "trapd.yaml"
        config.write_text(trapd_config_yaml(port, spec))
        out = workdir / "trapd.jsonl"
        values = {
            "python": sys.executable,
            "listen": f"127.0.0.1:{port}",
            "host": "127.0.0.1",
            "port": str(port),
            "config": str(config),
            "out": str(out),
            "workdir": str(workdir),
            "bench": str(BENCH_DIR),
        }
        argv = [arg.format(**values) for arg in shlex.split(cmd_template)]
        return Launch(argv, out, stdout_is_output="{out}" not in cmd_template, env=dict(os.environ))

    return Receiver("trapd", launch, seqs_by_regex(seq_regex) if seq_regex else seqs_from_json_lines)


# --- one run ---------------------------------------------------------------------------


@dataclass
class RunResult:
    receiver: str
    version: str
    rate: int
    run: int
    sent: int = 0
    send_errors: int = 0
    send_seconds: float = 0.0
    rate_achieved: float = 0.0
    max_batch: int = 0
    received: int = 0
    duplicates: int = 0
    loss_pct: float = 100.0
    kernel_drops: int = 0
    socket_drops: int | None = None
    rcvbuf: int | None = None
    cpu_seconds: float = 0.0
    cpu_us_per_trap: float | None = None
    rss_peak_kb: int = 0
    rss_last_kb: int = 0
    ready_seconds: float = 0.0
    drain_seconds: float = 0.0
    lag_seconds: float = 0.0
    throughput: float = 0.0  # received / (send time + lag): what it really processed per second
    loadavg: float = 0.0
    code: str = ""
    error: str | None = None


class Running:
    """A started receiver; stopped with SIGINT (lets Python flush stdout), then harder."""

    def __init__(self, launch: Launch, workdir: Path) -> None:
        self.launch = launch
        self._stdout = open(launch.output, "wb") if launch.stdout_is_output else None  # noqa: SIM115
        self._stderr = open(workdir / "stderr.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            launch.argv,
            stdin=subprocess.DEVNULL,
            stdout=self._stdout or subprocess.DEVNULL,
            stderr=self._stderr,
            env=launch.env,
            # A runner started in the background has SIGINT ignored; the receiver must not inherit that.
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )

    def output(self) -> bytes:
        try:
            return self.launch.output.read_bytes()
        except OSError:
            return b""

    def output_size(self) -> int:
        try:
            return self.launch.output.stat().st_size
        except OSError:
            return 0

    def stop(self) -> int | None:
        for sig, wait in ((signal.SIGINT, 10.0), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            if self.proc.poll() is not None:
                break
            self.proc.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(wait)
        for f in (self._stdout, self._stderr):
            if f is not None:
                f.close()
        return self.proc.returncode


def wait_ready(
    rx: Running, port: int, prober: loadgen.Prober, parse: Callable[[bytes], Counter[int]], timeout: float
) -> bool:
    """Probe until the receiver shows sequence 0 in its output.

    A receiver that buffers its output (a Python process writing to a file)
    may not show the probe yet; then it counts as ready once its socket is
    bound and drained of probes while its CPU is quiet, since it is reading.
    """
    t0 = time.monotonic()
    with loadgen.open_sender("127.0.0.1", port) as sock:
        probes = 0
        while time.monotonic() - t0 < timeout:
            if rx.proc.poll() is not None:
                return False
            with contextlib.suppress(OSError):
                sock.send(prober.message())
                probes += 1
            cpu0 = cpu_seconds(rx.proc.pid)
            time.sleep(0.2)
            if parse(rx.output())[loadgen.PROBE_SEQ]:
                return True
            st = socket_state(port)
            quiet = cpu_seconds(rx.proc.pid) - cpu0 < 0.02
            if probes >= 5 and st is not None and st.rx_queue == 0 and quiet:
                return True
    return False


def wait_drained(rx: Running, port: int, quiet_for: float, timeout: float) -> tuple[float, float]:
    """Wait until output, socket queue and CPU have all been still for ``quiet_for``.

    Returns (seconds waited, lag): the lag is how long after the last send
    the receiver was still busy, i.e. how far behind the load it had fallen,
    living off its receive buffer (0.1 s resolution).
    """
    t0 = time.monotonic()
    last_size, last_cpu = rx.output_size(), cpu_seconds(rx.proc.pid)
    still_since = time.monotonic()
    while time.monotonic() - t0 < timeout and rx.proc.poll() is None:
        time.sleep(0.1)
        size, cpu = rx.output_size(), cpu_seconds(rx.proc.pid)
        st = socket_state(port)
        busy = size != last_size or (cpu - last_cpu) > 0.01 or (st is not None and st.rx_queue > 0)
        now = time.monotonic()
        if busy:
            still_since = now
        elif now - still_since >= quiet_for:
            break
        last_size, last_cpu = size, cpu
    return time.monotonic() - t0, still_since - t0


def one_run(
    receiver: Receiver,
    spec: loadgen.LoadSpec,
    rate: int,
    run: int,
    messages: Sequence[bytes],
    workroot: Path,
    ready_timeout: float,
    drain_timeout: float,
) -> RunResult:
    res = RunResult(receiver.name, spec.version, rate, run, loadavg=_loadavg(), code=code_version())
    workdir = Path(tempfile.mkdtemp(prefix=f"{receiver.name}-{spec.version}-{rate}-{run}-", dir=workroot))
    port = free_udp_port()
    rx = Running(receiver.launch(workdir, port, spec), workdir)
    try:
        t = time.monotonic()
        if not wait_ready(rx, port, loadgen.Prober(spec), receiver.parse, ready_timeout):
            res.error = (
                f"not ready after {ready_timeout:.0f}s (exit {rx.proc.poll()}); see {workdir}/stderr.log"
            )
            return res
        res.ready_seconds = round(time.monotonic() - t, 2)
        time.sleep(0.3)  # let the probes' processing finish before the CPU baseline
        cpu0 = cpu_seconds(rx.proc.pid)
        drops0 = udp_rcvbuf_errors()
        st0 = socket_state(port)
        with loadgen.open_sender("127.0.0.1", port) as sock:
            gc.disable()  # a collection of 100k message objects would be a send stall of our own
            try:
                report = loadgen.pace(sock, messages, rate, max_seconds=len(messages) / rate * 1.5 + 1.0)
            finally:
                gc.enable()
        waited, lag = wait_drained(rx, port, quiet_for=1.0, timeout=drain_timeout)
        res.drain_seconds, res.lag_seconds = round(waited, 2), round(lag, 2)
        res.cpu_seconds = round(cpu_seconds(rx.proc.pid) - cpu0, 3)
        res.kernel_drops = udp_rcvbuf_errors() - drops0
        st1 = socket_state(port)
        if st0 is not None and st1 is not None:
            res.socket_drops = st1.drops - st0.drops
        res.rcvbuf = socket_rcvbuf(port)
        res.rss_peak_kb, res.rss_last_kb = memory_kb(rx.proc.pid)
        if rx.proc.poll() is not None:
            res.error = f"receiver exited with {rx.proc.returncode} during the run; see {workdir}/stderr.log"
        res.sent, res.send_errors = report.sent, report.errors
        res.send_seconds, res.rate_achieved, res.max_batch = (
            report.seconds,
            report.rate_achieved,
            report.max_batch,
        )
    finally:
        rx.stop()
    seen = receiver.parse(rx.output())
    in_range = [n for s, n in seen.items() if 1 <= s <= res.sent]
    res.received = len(in_range)
    res.duplicates = sum(n - 1 for n in in_range)
    if res.sent:
        res.loss_pct = round(100.0 * (res.sent - res.received) / res.sent, 4)
    if res.send_seconds:
        res.throughput = round(res.received / (res.send_seconds + res.lag_seconds), 1)
    if res.received:
        res.cpu_us_per_trap = round(res.cpu_seconds * 1e6 / res.received, 1)
    return res


# --- the whole benchmark --------------------------------------------------------------


@dataclass
class Plan:
    rates: dict[str, list[int]]
    runs: int
    seconds: float
    receivers: list[Receiver]
    skip_loss_pct: float
    skip_lag: float = 0.0
    ready_timeout: float = 30.0
    drain_timeout: float = 30.0
    spec_for: dict[str, loadgen.LoadSpec] = field(default_factory=dict)


def run_plan(plan: Plan, workroot: Path, log: Callable[[str], None]) -> list[RunResult]:
    results: list[RunResult] = []
    for version, rates in plan.rates.items():
        spec = plan.spec_for.get(version, loadgen.LoadSpec(version=version))
        saturated: set[str] = set()
        for rate in rates:
            active = [r for r in plan.receivers if r.name not in saturated]
            if not active:
                break
            by_receiver: dict[str, list[RunResult]] = {r.name: [] for r in active}
            for run in range(1, plan.runs + 1):
                # One message set per (rate, run), shared by the receivers: same bytes, same load.
                messages = loadgen.build_messages(spec, 1, int(rate * plan.seconds))
                for receiver in active:
                    res = one_run(
                        receiver, spec, rate, run, messages, workroot, plan.ready_timeout, plan.drain_timeout
                    )
                    results.append(res)
                    by_receiver[receiver.name].append(res)
                    log(_progress(res))
            for name, runs in by_receiver.items():
                loss = statistics.median(r.loss_pct for r in runs)
                lag = statistics.median(r.lag_seconds for r in runs)
                if (plan.skip_loss_pct and loss > plan.skip_loss_pct) or (
                    plan.skip_lag and lag > plan.skip_lag
                ):
                    saturated.add(name)
                    log(
                        f"  {name} {version}: median loss {loss:.1f} %, lag {lag:.1f} s at {rate}/s;"
                        " higher rates skipped"
                    )
    return results


def _progress(r: RunResult) -> str:
    cpu = f"{r.cpu_us_per_trap:.0f}" if r.cpu_us_per_trap is not None else "-"
    err = f"  ERROR {r.error}" if r.error else ""
    return (
        f"  {r.receiver:9} {r.version:3} {r.rate:6}/s run {r.run}: sent {r.sent} ({r.rate_achieved:.0f}/s) "
        f"received {r.received} loss {r.loss_pct:.3f}% drops {r.socket_drops}/{r.kernel_drops} "
        f"lag {r.lag_seconds:.1f}s cpu {cpu}us/trap "
        f"rss {r.rss_peak_kb // 1024}MB load {r.loadavg:.2f}{err}"
    )


@dataclass(frozen=True, slots=True)
class RateSummary:
    """One receiver at one version and rate: medians over the runs, unless named worst / peak."""

    receiver: str
    version: str
    rate: int
    runs: int
    sent: float
    rate_achieved: float
    received: float
    received_ratio: float
    loss_pct: float
    worst_loss_pct: float
    drops: float  # the socket's own drop counter, or system-wide RcvbufErrors when unknown
    lag_seconds: float
    throughput: float
    cpu_us_per_trap: float | None
    rss_peak_mb: float
    rcvbuf: int | None
    errors: int
    loadavg: float  # the machine's 1-minute load average when the runs started

    @property
    def lossless(self) -> bool:
        return self.errors == 0 and self.worst_loss_pct < LOSSLESS_PCT

    @property
    def holds(self) -> bool:
        """Lossless and keeping up, not living off a big receive buffer for a short run."""
        return self.lossless and self.lag_seconds <= MAX_LAG_SECONDS


def summarize(results: Sequence[RunResult]) -> list[RateSummary]:
    groups: dict[tuple[str, str, int], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.receiver, r.version, r.rate), []).append(r)
    out = []
    for (name, version, rate), rs in groups.items():
        cpu = [r.cpu_us_per_trap for r in rs if r.cpu_us_per_trap is not None]
        out.append(
            RateSummary(
                receiver=name,
                version=version,
                rate=rate,
                runs=len(rs),
                sent=statistics.median(r.sent for r in rs),
                rate_achieved=statistics.median(r.rate_achieved for r in rs),
                received=statistics.median(r.received for r in rs),
                received_ratio=statistics.median(r.received / r.sent if r.sent else 0.0 for r in rs),
                loss_pct=statistics.median(r.loss_pct for r in rs),
                worst_loss_pct=max(r.loss_pct for r in rs),
                drops=statistics.median(
                    r.socket_drops if r.socket_drops is not None else r.kernel_drops for r in rs
                ),
                lag_seconds=statistics.median(r.lag_seconds for r in rs),
                throughput=statistics.median(r.throughput for r in rs),
                cpu_us_per_trap=statistics.median(cpu) if cpu else None,
                rss_peak_mb=max(r.rss_peak_kb for r in rs) / 1024,
                rcvbuf=max((r.rcvbuf for r in rs if r.rcvbuf), default=None),
                errors=sum(1 for r in rs if r.error),
                loadavg=statistics.median(r.loadavg for r in rs),
            )
        )
    return out


def highest_held(summaries: Sequence[RateSummary], receiver: str, version: str) -> tuple[int | None, bool]:
    """The highest rate held (see ``RateSummary.holds``), every lower rate held too.

    Returns ``(rate, capped)``: ``capped`` when that was the highest rate
    measured, so the receiver may hold more (the figure is a lower bound).
    """
    rows = sorted(
        (s for s in summaries if s.receiver == receiver and s.version == version), key=lambda s: s.rate
    )
    best = None
    for s in rows:
        if not s.holds:
            return best, False
        best = s.rate
    return best, bool(rows)


def peak_throughput(summaries: Sequence[RateSummary], receiver: str, version: str) -> float | None:
    """The most notifications per second it processed at any rate (median of runs)."""
    return max(
        (s.throughput for s in summaries if s.receiver == receiver and s.version == version), default=None
    )


def _fmt_rate(rate: int | None, capped: bool, lowest: int | None) -> str:
    if rate is None:
        return f"< {lowest:,}" if lowest is not None else "-"
    return f"≥ {rate:,}" if capped else f"{rate:,}"


def markdown(
    machine: dict[str, Any],
    summaries: Sequence[RateSummary],
    plan_desc: str,
    date: str,
    codes: Sequence[str] = (),
) -> str:
    """The results table; ``codes`` are the trapd checkouts the runs used, in order."""
    seen = list(dict.fromkeys(c for c in codes if c)) or [machine["trapd_commit"]]
    code = seen[0] if len(seen) == 1 else "changed during the run: " + " → ".join(seen)
    lines = [
        f"Measured {date} on {machine['nproc']} x {machine['cpu_model']}, Linux {machine['kernel']}, "
        f"Python {machine['python']}, net-snmp {machine['snmptrapd']}, trapd {code} "
        f"(load average at start {machine['loadavg_at_start']}). {plan_desc}",
        "",
        "| receiver | SNMP | rate/s | sent/s | received/sent | loss % median (worst) | drops | lag s "
        "| processed/s | CPU µs/trap | peak RSS MB | rcvbuf KiB | load avg |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    order = {"v2c": 0, "v1": 1, "v3": 2}
    for s in sorted(summaries, key=lambda s: (order.get(s.version, 9), s.rate, s.receiver)):
        cpu = f"{s.cpu_us_per_trap:.0f}" if s.cpu_us_per_trap is not None else "-"
        buf = f"{s.rcvbuf // 1024:,}" if s.rcvbuf else "-"
        err = f" ({s.errors} failed)" if s.errors else ""
        lines.append(
            f"| {s.receiver}{err} | {s.version} | {s.rate:,} | {s.rate_achieved:,.0f} "
            f"| {s.received_ratio:.4f} | {s.loss_pct:.3f} ({s.worst_loss_pct:.3f}) | {s.drops:,.0f} "
            f"| {s.lag_seconds:.1f} | {s.throughput:,.0f} | {cpu} | {s.rss_peak_mb:.0f} | {buf} "
            f"| {s.loadavg:.1f} |"
        )
    receivers = sorted({s.receiver for s in summaries}, key=lambda n: (n != "snmptrapd", n))
    versions = sorted({s.version for s in summaries}, key=lambda v: order.get(v, 9))
    lines += [
        "",
        f"Held: < {LOSSLESS_PCT} % loss in every run and done within {MAX_LAG_SECONDS:g} s of the last send "
        "(median), at that rate and every lower one. Peak: the most it processed per second at any rate.",
        "",
        "| SNMP | "
        + " | ".join(f"{n} held" for n in receivers)
        + " | ratio | "
        + " | ".join(f"{n} peak/s" for n in receivers)
        + " | ratio |",
        "|---|" + "---:|" * (2 * len(receivers) + 2),
    ]
    for v in versions:
        held = {n: highest_held(summaries, n, v) for n in receivers}
        lowest = {
            n: min((s.rate for s in summaries if s.receiver == n and s.version == v), default=None)
            for n in receivers
        }
        peak = {n: peak_throughput(summaries, n, v) for n in receivers}
        held_cells = [_fmt_rate(*held[n], lowest[n]) for n in receivers]
        peak_cells = [f"{peak[n]:,.0f}" if peak[n] is not None else "-" for n in receivers]
        pt, pb = peak.get("trapd"), peak.get("snmptrapd")
        peak_ratio = f"{pt / pb:.2f}" if pt is not None and pb else "-"
        lines.append(
            f"| {v} | "
            + " | ".join(held_cells)
            + f" | {_ratio(held.get('trapd'), held.get('snmptrapd'))} | "
            + " | ".join(peak_cells)
            + f" | {peak_ratio} |"
        )
    return "\n".join(lines)


def _ratio(trapd: tuple[int | None, bool] | None, base: tuple[int | None, bool] | None) -> str:
    if not trapd or not base or trapd[0] is None or base[0] is None:
        return "-"
    r = trapd[0] / base[0]
    # A capped numerator is a lower bound, a capped denominator an upper one.
    if trapd[1] and not base[1]:
        return f"≥ {r:.2f}"
    if base[1] and not trapd[1]:
        return f"≤ {r:.2f}"
    if trapd[1] and base[1]:
        return f"{r:.2f} (both capped)"
    return f"{r:.2f}"


def _rates(text: str) -> list[int]:
    return [int(x) for x in text.replace(" ", "").split(",") if x]


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        description="trapd vs snmptrapd listener throughput on loopback.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "--trapd-cmd placeholders: {python} (this interpreter), {listen} (127.0.0.1:PORT),\n"
            "{host}, {port}, {config} (a generated trapd.yaml with listener.listen/communities/\n"
            "v3_users), {out} (the file to read JSON lines from; if absent, the command's stdout\n"
            "is that file), {workdir} (the run's scratch directory), {bench} (this directory)."
        ),
    )
    ap.add_argument("--receivers", default="snmptrapd,trapd", help="comma list: snmptrapd, trapd")
    ap.add_argument("--v2c-rates", default="1000,2000,5000,10000,15000")
    ap.add_argument("--v1-rates", default="", help="v1 rates (none by default)")
    ap.add_argument("--v3-rates", default="1000,2000,4000")
    ap.add_argument("--v3-auth", default="SHA-256", choices=tuple(loadgen.AUTH_PROTOCOLS))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=10.0, help="send time per run")
    ap.add_argument("--trapd-cmd", default=DEFAULT_TRAPD_CMD)
    ap.add_argument(
        "--trapd-seq-regex",
        help="read trapd's output with this regex (group 1: the ten digits) instead of as JSON events, "
        "e.g. for the daemon logging a rule's message",
    )
    ap.add_argument(
        "--snmptrapd-rcvbuf",
        type=int,
        default=SAME_RCVBUF_AS_TRAPD,
        help="serverRecvBuf for snmptrapd; default: what trapd asks for (8 MiB, capped by rmem_max), "
        "so both get the same kernel buffer; 0: net-snmp's default",
    )
    ap.add_argument(
        "--skip-loss",
        type=float,
        default=20.0,
        help="after a rate with median loss above this %%, skip higher rates for that receiver (0: never)",
    )
    ap.add_argument(
        "--skip-lag",
        type=float,
        default=5.0,
        help="... or with a median lag above this many seconds (far behind the load; 0: never)",
    )
    ap.add_argument("--out", type=Path, default=RESULTS_DIR, help="directory for the JSON results")
    ap.add_argument("--keep-workdirs", action="store_true", help="keep receivers' logs and configs")
    ap.add_argument(
        "--table", type=Path, metavar="JSON", help="only print the table of an earlier results file"
    )
    return ap


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # SIGTERM unwinds like ^C, so that running receivers are stopped on the way out.
    with sigterm_unwinds():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    if args.table:
        saved = json.loads(args.table.read_text())
        runs = [RunResult(**r) for r in saved["runs"]]
        codes = [r.code for r in runs if r.receiver == "trapd"]
        print(
            markdown(saved["machine"], summarize(runs), saved.get("plan", ""), saved["started"][:10], codes)
        )
        return 0
    known = {
        "snmptrapd": snmptrapd_receiver(args.snmptrapd_rcvbuf),
        "trapd": trapd_receiver(args.trapd_cmd, args.trapd_seq_regex),
    }
    names = [n.strip() for n in args.receivers.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        print(f"bench_listener: unknown receiver(s) {unknown}; choose from {sorted(known)}", file=sys.stderr)
        return 2
    rates = {"v2c": _rates(args.v2c_rates), "v1": _rates(args.v1_rates), "v3": _rates(args.v3_rates)}
    v3 = loadgen.V3User(auth_protocol=args.v3_auth)
    plan = Plan(
        rates={v: r for v, r in rates.items() if r},
        runs=args.runs,
        seconds=args.seconds,
        receivers=[known[n] for n in names],
        skip_loss_pct=args.skip_loss,
        skip_lag=args.skip_lag,
        spec_for={v: loadgen.LoadSpec(version=v, v3=v3) for v in loadgen.VERSIONS},
    )
    machine = machine_info()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    print(f"machine: {json.dumps(machine)}", file=sys.stderr)

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    with _workroot(args.keep_workdirs) as workroot:
        if args.keep_workdirs:
            log(f"receiver work directories under {workroot}")
        results = run_plan(plan, workroot, log)
    summaries = summarize(results)
    desc = (
        f"{plan.runs} runs x {plan.seconds:g} s per rate, medians; v3 = authPriv {args.v3_auth} / AES-128; "
        f"trapd: `{args.trapd_cmd.replace('{python}', 'python')}`."
    )
    table = markdown(
        machine, summaries, desc, started[:10], [r.code for r in results if r.receiver == "trapd"]
    )
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"listener-{started.replace(':', '').replace('-', '')}.json"
    path.write_text(
        json.dumps(
            {
                "started": started,
                "machine": machine,
                "args": {k: str(v) for k, v in vars(args).items()},
                "runs": [asdict(r) for r in results],
                "summary": [asdict(s) | {"lossless": s.lossless, "holds": s.holds} for s in summaries],
                "plan": desc,
                "markdown": table,
            },
            indent=1,
        )
    )
    print(table)
    log(f"results: {path}")
    return 0


@contextlib.contextmanager
def _workroot(keep: bool) -> Iterator[Path]:
    if keep:
        yield Path(tempfile.mkdtemp(prefix="trapd-bench-"))
        return
    with tempfile.TemporaryDirectory(prefix="trapd-bench-") as d:
        yield Path(d)


if __name__ == "__main__":
    sys.exit(main())
