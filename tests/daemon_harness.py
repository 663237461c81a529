"""Test harness: run ``trapd run`` as a subprocess the way systemd does, and watch it.

    from daemon_harness import TrapdDaemon

    d = TrapdDaemon.start(tmp_path, rules=RULES, watchdog_usec=1_000_000)
    ready = d.notify.wait_for("READY")           # the test owns NOTIFY_SOCKET
    snmp_send("snmptrap", "-v", "2c", "-c", "public", d.target(), "", LINK_DOWN)
    d.wait_log("action done")
    assert d.metric("trapd_notifications_received_total", version="v2c") == 1
    assert d.stop() == 0

What :meth:`TrapdDaemon.start` does: picks free loopback ports for the trap
listener and the metrics endpoint (so a test can send the moment READY=1
arrives, before any log line says where trapd listens), writes
``trapd.yaml`` (listener on that port, community ``public``, rules from
``rules.yaml`` next to it, ``state_dir`` below the work directory, no site
MIB directories, JSON logs, STATUS= every 0.5 s) merged with ``config``,
and starts ``python -m trapd run --config FILE`` with ``NOTIFY_SOCKET`` (and
``WATCHDOG_USEC`` when asked) pointing at a :class:`NotifySocket` the test
owns. stdout (the log, JSON lines, as journald would get it) and stderr
are read by a thread into :attr:`log`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from notify_harness import NotifySocket
from ports import free_port

PYTHON = sys.executable
REPO = Path(__file__).resolve().parent.parent
LINK_DOWN = "1.3.6.1.6.3.1.1.5.3"
LINK_UP = "1.3.6.1.6.3.1.1.5.4"
IF_INDEX = "1.3.6.1.2.1.2.2.1.1"
# One SNMPv3 authPriv user, as trapd.yaml's listener.v3_users lists it, and the net-snmp
# options that send as that user (snmptrap / snmpinform).
V3_USER = {
    "user": "mon",
    "auth_protocol": "SHA-256",
    "auth_key": "auth-secret-1",
    "priv_protocol": "AES-128",
    "priv_key": "priv-secret-1",
}
V3_ARGS = ["-v", "3", "-u", "mon", "-l", "authPriv", "-a", "SHA-256", "-A", "auth-secret-1", "-x", "AES",
           "-X", "priv-secret-1"]  # fmt: skip

LogLine = dict[str, Any]
T = TypeVar("T")


def eventually(check: Callable[[], T], timeout: float = 20.0, interval: float = 0.1) -> T:
    """``check()`` again until it returns without an AssertionError; what it returned.

    For a state that another process reaches in its own time: a gauge the
    dispatcher refreshes every second, a worker's snapshot that the
    supervisor collects, a journal row committed after the metric counted
    it, a log line. One read and assert is a race that fails one run in N on
    a loaded machine. After ``timeout`` the last AssertionError is raised.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            return check()
        except AssertionError:
            if time.monotonic() > deadline:
                raise
        time.sleep(interval)


def merge(base: dict[str, Any], extra: Mapping[str, Any]) -> dict[str, Any]:
    """Deep merge of YAML-shaped dicts (``extra`` wins)."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


def link_down(
    target: str, if_index: int = 3, *, community: str = "public", trap: str = LINK_DOWN
) -> list[str]:
    """snmptrap / snmpinform arguments for a v2c linkDown (or ``trap``) with ifIndex."""
    return ["-v", "2c", "-c", community, target, "", trap, f"{IF_INDEX}.{if_index}", "i", str(if_index)]


class TrapdDaemon:
    """A running ``trapd run`` subprocess, its NOTIFY_SOCKET, log and endpoints."""

    def __init__(self, workdir: Path, trap_port: int, metrics_port: int | None) -> None:
        self.workdir = workdir
        self.trap_port = trap_port
        self.metrics_port = metrics_port
        self.config_path = workdir / "trapd.yaml"
        self.rules_path = workdir / "rules.yaml"
        self.state_dir = workdir / "state"
        self.notify: NotifySocket | None = None
        self.proc: subprocess.Popen[str] | None = None
        self.started_at = 0.0
        self.log: list[LogLine] = []
        self.env: dict[str, str] = {}  # added to the daemon's environment (e.g. libfaketime's)
        self.python = PYTHON  # the interpreter that runs `-m trapd` (another venv's: an installed trapd)
        self._log_cond = threading.Condition()
        self._reader: threading.Thread | None = None

    # -- start and stop ------------------------------------------------------

    @classmethod
    def start(
        cls,
        workdir: Path,
        *,
        rules: str | None = None,
        config: Mapping[str, Any] | None = None,
        notify: bool = True,
        watchdog_usec: int | None = None,
        metrics: bool = True,
        args: tuple[str, ...] = (),
        trap_port: int | None = None,
        wait_ready: bool = True,
        timeout: float = 20.0,
        env: Mapping[str, str] | None = None,
        python: str | Path | None = None,
    ) -> TrapdDaemon:
        workdir.mkdir(parents=True, exist_ok=True)
        d = cls(workdir, trap_port or free_port(), free_port(socket.SOCK_STREAM) if metrics else None)
        d.env = dict(env or {})
        d.python = str(python or PYTHON)
        if rules is not None:
            d.rules_path.write_text(rules)
        d.write_config(config or {})
        if notify:
            d.notify = NotifySocket(workdir / "notify.sock")
        d.launch(watchdog_usec=watchdog_usec, args=args)
        if wait_ready:
            d.wait_ready(timeout)
        return d

    def base_config(self) -> dict[str, Any]:
        return {
            "listener": {"listen": [f"127.0.0.1:{self.trap_port}"], "communities": ["public"]},
            "rules": {"files": ["rules.yaml"]},
            "state_dir": str(self.state_dir),
            "mibs": {"dirs": []},
            "service": {
                "metrics": {"listen": f"127.0.0.1:{self.metrics_port}" if self.metrics_port else None},
                "log": {"format": "json", "level": "info"},
                "status_interval": 0.5,
            },
        }

    def write_config(self, config: Mapping[str, Any]) -> None:
        self.config_path.write_text(yaml.safe_dump(merge(self.base_config(), config)))

    def launch(self, *, watchdog_usec: int | None = None, args: tuple[str, ...] = ()) -> None:
        """Start (or restart after :meth:`stop`) the daemon process with the current files."""
        inherited = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "LISTEN_FDS", "PYTHONDONTWRITEBYTECODE")
        env = {k: v for k, v in os.environ.items() if k not in inherited}
        # Bytecode cached outside the tree, as an installed trapd has it: without it every
        # start recompiles every module (half a second), and each test starts several daemons.
        env.setdefault(
            "PYTHONPYCACHEPREFIX", os.path.join(tempfile.gettempdir(), f"trapd-pycache-{os.getuid()}")
        )
        env.update(self.env)
        if self.notify is not None:
            env["NOTIFY_SOCKET"] = self.notify.address
        if watchdog_usec is not None:
            env["WATCHDOG_USEC"] = str(watchdog_usec)
        cmd = [self.python, "-m", "trapd", "run", "--config", str(self.config_path), *args]
        self.started_at = time.monotonic()
        self.proc = subprocess.Popen(
            cmd, cwd=self.workdir, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        self._reader = threading.Thread(target=self._read_log, args=(self.proc,), daemon=True)
        self._reader.start()

    def wait_ready(self, timeout: float = 20.0) -> dict[str, str]:
        """READY=1 from NOTIFY_SOCKET (or, without one, the "trapd ready" log line)."""
        if self.notify is not None:
            try:
                return self.notify.wait_for("READY", timeout)
            except TimeoutError:
                raise AssertionError(f"no READY=1; rc={self.poll()} log tail: {self.log[-8:]}") from None
        self.wait_log("trapd ready", timeout)
        return {}

    def poll(self) -> int | None:
        assert self.proc is not None
        return self.proc.poll()

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait_exit(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"still running after {timeout} s; log tail: {self.log[-8:]}") from None
        if self._reader is not None:
            self._reader.join(5)
        return rc

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM (as ``systemctl stop``) and the exit status."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc is not None else 0
        self.signal(signal.SIGTERM)
        return self.wait_exit(timeout)

    def close(self) -> None:
        """Clean up whatever state the test left: kill a daemon still running, close the socket."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if self.notify is not None:
            self.notify.close()

    # -- the log -------------------------------------------------------------

    def _read_log(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            try:
                entry = json.loads(line)
                if not isinstance(entry, dict):
                    entry = {"raw": line}
            except ValueError:
                entry = {"raw": line}
            with self._log_cond:
                self.log.append(entry)
                self._log_cond.notify_all()

    def logs(self, event: str | None = None) -> list[LogLine]:
        with self._log_cond:
            return [e for e in self.log if event is None or e.get("event") == event]

    def wait_log(
        self, match: str | Callable[[LogLine], bool], timeout: float = 20.0, *, count: int = 1
    ) -> list[LogLine]:
        """Wait until ``count`` log lines match (an event name or a predicate); return them."""
        pred = (lambda e: e.get("event") == match) if isinstance(match, str) else match
        deadline = time.monotonic() + timeout
        with self._log_cond:
            while True:
                found = [e for e in self.log if pred(e)]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"{count} log line(s) matching {match!r} not seen in {timeout} s "
                        f"(found {len(found)}); tail: {self.log[-8:]}"
                    )
                self._log_cond.wait(min(left, 0.2))

    # -- traffic and endpoints -----------------------------------------------

    def target(self) -> str:
        """The address for snmptrap / snmpinform."""
        return f"udp:127.0.0.1:{self.trap_port}"

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.trap_port)

    def send(self, data: bytes) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.sendto(data, self.address)

    def http_get(self, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
        assert self.metrics_port is not None, "started with metrics=False"
        url = f"http://127.0.0.1:{self.metrics_port}{path}"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as r:
                return int(r.status), r.read()
        except urllib.error.HTTPError as exc:
            return int(exc.code), exc.read()
        except OSError as exc:
            raise AssertionError(f"GET {path}: {exc}; rc={self.poll()} log tail: {self.log[-40:]}") from exc

    def healthz(self) -> tuple[int, dict[str, Any]]:
        status, body = self.http_get("/healthz")
        return status, json.loads(body)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """One scrape: (sample name, sorted labels) -> value."""
        from prometheus_client.parser import text_string_to_metric_families

        status, body = self.http_get("/metrics")
        assert status == 200, body
        out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
        for family in text_string_to_metric_families(body.decode()):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = float(s.value)
        return out

    def metric(
        self,
        name: str,
        scrape: Mapping[tuple[str, tuple[tuple[str, str], ...]], float] | None = None,
        **labels: str,
    ) -> float:
        """The sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
        samples = self.metrics() if scrape is None else scrape
        want = set(labels.items())
        return sum(v for (n, lb), v in samples.items() if n == name and want <= set(lb))

    def wait_metric(self, name: str, value: float, timeout: float = 30.0, **labels: str) -> float:
        """Poll /metrics until ``name{labels}`` reaches ``value``; return what it was last."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.metric(name, None, **labels)
            if got >= value or time.monotonic() > deadline:
                return got
            time.sleep(0.05)
