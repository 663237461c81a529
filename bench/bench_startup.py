"""Start-up time and idle memory of the daemon, measured the way systemd sees them.

    .venv/bin/python bench/bench_startup.py                 # 10 runs, shipped MIBs only
    .venv/bin/python bench/bench_startup.py --runs 20 --site-mibs /usr/share/snmp/mibs
    .venv/bin/python bench/bench_startup.py --no-bytecode   # as if no .pyc could be written

Each run starts ``python -m trapd run --config FILE`` with a NOTIFY_SOCKET
this script owns and times exec -> ``READY=1`` (the moment ``systemctl
start`` returns: sockets bound, journal open, rules compiled, metrics
endpoint up). It then leaves the daemon idle for ``--idle`` seconds, reads
its resident set size (VmRSS, and VmHWM, the peak) from /proc, and stops it
with SIGTERM, timing exec -> exit as well. Prints the median, min and max,
and the CPU time the daemon used until READY=1 (user + system, from
/proc/PID/stat): on a busy machine the wall time grows with the load, the
CPU time much less.

The configuration is the starter one (etc/trapd/trapd.yaml's shape and
etc/trapd/rules.yaml) on loopback ports, with the shipped MIB index only
(``mibs: {dirs: []}``) unless ``--site-mibs`` names directories; those are
compiled once by a warm-up run, as the first start of an installed trapd does,
and later starts read the cached snapshot. Every run uses a fresh state
directory (a new journal), but the MIB cache is kept between runs.

Bytecode: an installed package has its ``.pyc`` files (pip compiles them).
A source checkout run with ``PYTHONDONTWRITEBYTECODE=1`` recompiles every
trapd module on every start (about half a second here), which is not what a
service pays. So the child gets ``PYTHONPYCACHEPREFIX`` pointing at a
temporary directory, filled by the warm-up run; ``--no-bytecode`` measures
the other case.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent


def free_port(kind: int) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(root: Path, state: Path, site_mibs: list[str], rules: Path | None = None) -> Path:
    shutil.copy(rules or REPO / "etc" / "trapd" / "rules.yaml", root / "rules.yaml")
    cfg = {
        "listener": {
            "listen": [f"127.0.0.1:{free_port(socket.SOCK_DGRAM)}"],
            "communities": ["public"],
        },
        "rules": {"files": ["rules.yaml"]},
        "state_dir": str(state),
        "mibs": {"dirs": site_mibs, "cache_dir": str(root / "mib-cache")},
        "service": {
            "metrics": {"listen": f"127.0.0.1:{free_port(socket.SOCK_STREAM)}"},
            "log": {"format": "json", "level": "warning"},
        },
    }
    path = root / "trapd.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def proc_status(pid: int) -> dict[str, int]:
    """VmRSS / VmHWM in kB from /proc/PID/status."""
    out: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                out[key] = int(value.split()[0])
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process so far, from /proc/PID/stat (fields 14 and 15, in clock ticks)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def one_run(
    root: Path,
    env: dict[str, str],
    site_mibs: list[str],
    idle: float,
    rules: Path | None = None,
    ready_timeout: float = 60,
) -> dict[str, float]:
    """One start: exec -> READY=1 -> ``idle`` s -> SIGTERM -> exit. ``rules``: a rules file to use."""
    state = root / "state"
    shutil.rmtree(state, ignore_errors=True)
    config = write_config(root, state, site_mibs, rules)
    notify_path = root / "notify.sock"
    notify_path.unlink(missing_ok=True)
    errors = root / "trapd.out"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify, open(errors, "wb") as stderr:
        notify.bind(str(notify_path))
        # Short reads: a trapd that exits before READY=1 ends the wait at once, not after ready_timeout.
        notify.settimeout(0.5)
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            [sys.executable, "-m", "trapd", "run", "--config", str(config)],
            env={**env, "NOTIFY_SOCKET": str(notify_path)},
            stdin=subprocess.DEVNULL,
            stdout=stderr,  # its log (warnings and errors only): why it did not start
            stderr=stderr,
        )
        try:
            while True:
                try:
                    msg = notify.recv(4096)
                except TimeoutError:
                    msg = b""
                if b"READY=1" in msg.split(b"\n"):
                    ready = time.perf_counter() - t0
                    cpu = cpu_seconds(proc.pid)
                    break
                if proc.poll() is not None or time.perf_counter() - t0 > ready_timeout:
                    why = (
                        "not READY=1" if proc.returncode is None else f"exited with status {proc.returncode}"
                    )
                    tail = errors.read_text(errors="replace")[-2000:]
                    raise SystemExit(f"trapd {why} before READY=1 ({ready_timeout:.0f} s):\n{tail}")
            time.sleep(idle)
            mem = proc_status(proc.pid)
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(30)
            total = time.perf_counter() - t0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    if rc != 0:
        raise SystemExit(f"trapd exited with status {rc}")
    return {
        "ready_s": ready,
        "cpu_s": cpu,
        "stop_s": total - ready - idle,
        "rss_mb": mem["VmRSS"] / 1024,
        "hwm_mb": mem["VmHWM"] / 1024,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--idle", type=float, default=2.0, help="seconds idle before reading RSS")
    ap.add_argument("--site-mibs", action="append", default=[], metavar="DIR")
    ap.add_argument("--no-bytecode", action="store_true", help="PYTHONDONTWRITEBYTECODE=1, no .pyc cache")
    args = ap.parse_args(argv)
    if not 1 <= args.runs <= 100:
        ap.error("--runs: 1 to 100")

    with tempfile.TemporaryDirectory(prefix="trapd-bench-startup-") as tmp:
        root = Path(tmp)
        env = {
            k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "LISTEN_FDS")
        }
        if args.no_bytecode:
            env["PYTHONDONTWRITEBYTECODE"] = "1"
            env.pop("PYTHONPYCACHEPREFIX", None)
        else:
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            env["PYTHONPYCACHEPREFIX"] = str(root / "pycache")
        warm = one_run(root, env, args.site_mibs, 0.1)  # bytecode and MIB cache, as after install
        runs = [one_run(root, env, args.site_mibs, args.idle) for _ in range(args.runs)]

    def line(key: str, unit: str, scale: float = 1.0, fmt: str = ".0f") -> str:
        xs = [r[key] * scale for r in runs]
        return (
            f"{key:8} median {statistics.median(xs):{fmt}} {unit}  min {min(xs):{fmt}}  max {max(xs):{fmt}}"
        )

    mibs = ", ".join(args.site_mibs) or "shipped index only"
    code = "no bytecode (compiled every start)" if args.no_bytecode else "bytecode cached"
    print(f"trapd run start-up, {args.runs} runs; MIBs: {mibs}; {code}; cores: {os.cpu_count()}")
    print(f"warm-up  ready {warm['ready_s'] * 1000:.0f} ms")
    print(line("ready_s", "ms   exec -> READY=1", 1000))
    print(line("cpu_s", "ms   CPU time (user+sys) until READY=1", 1000))
    print(line("stop_s", "ms   SIGTERM -> exit (idle)", 1000))
    print(line("rss_mb", f"MB   VmRSS after {args.idle:g} s idle", fmt=".1f"))
    print(line("hwm_mb", "MB   VmHWM (peak)", fmt=".1f"))
    return 0


if __name__ == "__main__":
    from benchproc import sigterm_unwinds  # stops what it started on SIGTERM too

    with sigterm_unwinds():
        sys.exit(main())
