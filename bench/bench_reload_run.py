"""A real ``trapd run`` reloading a big rule file: loop stalls, trap loss and memory across SIGHUPs.

Starts ``python -m trapd run`` (one process, or ``--workers N``) with a generated
rule set of bench_rules.py's ``--scale`` kinds, a NOTIFY_SOCKET this script reads
and ``WATCHDOG_USEC`` set so that the loop that pings systemd (the daemon's, or the
supervisor's with workers) sends WATCHDOG=1 every ``--ping-ms``. Then ``--reloads``
times: a changed rule file, net-snmp's ``snmptrap`` sending a v2c linkDown at
``--rate`` a second (one process per trap) from 1 s before the SIGHUP until 3 s
after READY=1, while the RSS and PSS of every process of the unit are sampled.
Reported per reload: its wall time, the longest gap between two pings (the ping
interval is none), traps sent / received (``trapd_notifications_received_total``)
/ dropped by the kernel, the unit's peak and settled RSS and PSS, and the settled
PSS of each process (the supervisor first, then the workers).

    .venv/bin/python bench/bench_reload_run.py --rules 100000 --reloads 3
    .venv/bin/python bench/bench_reload_run.py --rules 100000 --workers 2 --reloads 3

Loopback only; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import yaml
from bench_rules import scale_rules
from bench_startup import free_port

REPO = Path(__file__).resolve().parent.parent
LINK_DOWN = "1.3.6.1.6.3.1.1.5.3"
IF_INDEX_7 = "1.3.6.1.2.1.2.2.1.1.7"
SNMP_ENV = dict(os.environ, MIBS="", MIBDIRS="/nonexistent", SNMPCONFPATH="/nonexistent")


def unit_pids(pid: int) -> list[int]:
    """``pid`` and its descendants."""
    out = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                for child in f.read().split():
                    out += unit_pids(int(child))
    except OSError:
        pass
    return out


def memory_mb(pids: list[int]) -> tuple[int, int]:
    """(RSS, PSS) summed over ``pids``, in MB; PSS counts a page shared by fork once, as the cgroup does."""
    rss = pss = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
        except OSError:
            pass
    return rss // 1024, pss // 1024


def pss_by_process(pids: list[int]) -> list[int]:
    """The PSS of each of ``pids``, in MB, in that order (the supervisor first, as unit_pids gives)."""
    out = []
    for pid in pids:
        pss = 0
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        pss = int(line.split()[1]) // 1024
        except OSError:
            pass
        out.append(pss)
    return out


class Unit:
    def __init__(self, root: Path, kind: str, n: int, workers: int, ping_ms: int) -> None:
        self.root, self.kind, self.n = root, kind, n
        self.rules = root / "rules.yaml"
        self.rules.write_text(scale_rules(kind, n), encoding="utf-8")
        self.port, self.metrics_port = free_port(socket.SOCK_DGRAM), free_port(socket.SOCK_STREAM)
        cfg = {
            "listener": {"listen": [f"127.0.0.1:{self.port}"], "communities": ["public"]},
            "rules": {"files": [str(self.rules)]},
            "state_dir": str(root / "state"),
            "service": {
                "workers": workers,
                "metrics": {"listen": f"127.0.0.1:{self.metrics_port}"},
                "log": {"format": "json", "level": "warning"},
            },
        }
        (root / "trapd.yaml").write_text(yaml.safe_dump(cfg), encoding="utf-8")
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.notify.bind(str(root / "notify.sock"))
        self.notify.settimeout(0.05)
        env = {
            k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "LISTEN_FDS")
        }
        env.update(NOTIFY_SOCKET=str(root / "notify.sock"), WATCHDOG_USEC=str(2 * ping_ms * 1000))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        self.log = open(root / "trapd.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "trapd", "run", "--config", str(root / "trapd.yaml")],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=self.log,
        )
        self.peak = (0, 0)

    def sample(self) -> tuple[int, int]:
        now = memory_mb(unit_pids(self.proc.pid))
        self.peak = (max(self.peak[0], now[0]), max(self.peak[1], now[1]))
        return now

    def pings_until(self, stop: str | None, seconds: float) -> list[float]:
        """WATCHDOG=1 times until the ``stop`` state (READY) or for ``seconds``; samples memory meanwhile."""
        pings: list[float] = []
        deadline, next_sample = time.monotonic() + seconds, 0.0
        while time.monotonic() < deadline:
            if time.monotonic() >= next_sample:
                self.sample()
                next_sample = time.monotonic() + 0.2
            try:
                lines = self.notify.recv(4096).split(b"\n")
            except TimeoutError:
                lines = []
            if b"WATCHDOG=1" in lines:
                pings.append(time.monotonic())
            if stop is not None and f"{stop}=1".encode() in lines:
                return pings
            if self.proc.poll() is not None:
                tail = (self.root / "trapd.log").read_text(errors="replace")[-2000:]
                raise SystemExit(f"trapd exited with status {self.proc.returncode}:\n{tail}")
        if stop is not None:
            raise SystemExit(f"no {stop}=1 within {seconds:.0f} s")
        return pings

    def by_process(self) -> str:
        return f"PSS MB by process (supervisor first) {pss_by_process(unit_pids(self.proc.pid))}"

    def received(self) -> tuple[float, float]:
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=30) as r:
            body = r.read().decode()

        def total(name: str) -> float:
            return sum(float(v) for v in re.findall(rf"^{name}(?:\{{[^}}]*\}})? (\S+)", body, re.M))

        return total("trapd_notifications_received_total"), total("trapd_socket_drops_total")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.notify.close()
        self.log.close()


def send_traps(port: int, rate: float, stop: threading.Event, sent: list[int], limit: int = 5000) -> None:
    for _ in range(limit):
        if stop.is_set():
            return
        args = [
            "-v",
            "2c",
            "-c",
            "public",
            f"127.0.0.1:{port}",
            "",
            LINK_DOWN,
            "1.3.6.1.2.1.2.2.1.1.7",
            "i",
            "7",
        ]
        if subprocess.run(["snmptrap", *args], env=SNMP_ENV, capture_output=True, timeout=10).returncode == 0:
            sent[0] += 1
        time.sleep(1 / rate)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rules", type=int, default=100_000)
    ap.add_argument("--kind", default="per-port", choices=("per-port", "ifindex", "distinct"))
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--reloads", type=int, default=3)
    ap.add_argument("--rate", type=float, default=20.0, help="snmptrap processes started a second")
    ap.add_argument("--ping-ms", type=int, default=100)
    args = ap.parse_args()
    if not 1 <= args.rules <= 200_000 or not 1 <= args.reloads <= 20 or not 0 < args.rate <= 200:
        ap.error("--rules 1..200,000, --reloads 1..20, --rate 0..200")
    print(f"{args.kind} {args.rules:,} rules, workers {args.workers}; load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="trapd-bench-reload-run-") as tmp:
        unit = Unit(Path(tmp), args.kind, args.rules, args.workers, args.ping_ms)
        try:
            t0 = time.monotonic()
            unit.pings_until("READY", 600)
            time.sleep(3)
            print(
                f"ready {time.monotonic() - t0:.1f} s; RSS (PSS) MB {unit.sample()}, peak {unit.peak}; "
                f"{unit.by_process()}"
            )
            for k in range(args.reloads):
                text = scale_rules(args.kind, args.rules).replace("down", f"down ({k})")
                unit.rules.write_text(text, encoding="utf-8")
                got0, drops0 = unit.received()
                stop, sent = threading.Event(), [0]
                sender = threading.Thread(target=send_traps, args=(unit.port, args.rate, stop, sent))
                sender.start()
                try:
                    unit.pings_until(None, 1.0)
                    unit.peak = unit.sample()
                    t1 = time.monotonic()
                    unit.proc.send_signal(signal.SIGHUP)
                    pings = unit.pings_until("READY", 900)
                    took = time.monotonic() - t1
                    pings += unit.pings_until(None, 3.0)
                finally:
                    stop.set()
                    sender.join(30)
                time.sleep(2)  # the last traps through
                got1, drops1 = unit.received()
                times = [t1, *pings]
                gaps = [b - a for a, b in itertools.pairwise(times)]
                worst = max(gaps, default=0.0)
                at = times[gaps.index(worst)] - t1 if gaps else 0.0
                print(
                    f"reload {k + 1}: {took:.1f} s; longest ping gap {worst * 1000:.0f} ms at +{at:.1f} s "
                    f"(every {args.ping_ms} ms); traps sent {sent[0]}, received {got1 - got0:.0f}, "
                    f"kernel drops {drops1 - drops0:.0f}; "
                    f"RSS (PSS) MB peak {unit.peak}, after {unit.sample()}; {unit.by_process()}",
                    flush=True,
                )
        finally:
            unit.stop()
    print(f"load average {os.getloadavg()[0]:.2f} at the end")
    return 0


if __name__ == "__main__":
    from benchproc import sigterm_unwinds  # stops what it started on SIGTERM too

    with sigterm_unwinds():
        sys.exit(main())
