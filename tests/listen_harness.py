"""Test harness: run ``trapd listen`` as a subprocess and send it real traps (net-snmp).

tests/ is on pytest's pythonpath, so import it as ``listen_harness``; the
``trapd_listen`` fixture in conftest.py wraps it for one test::

    from listen_harness import TrapdListen, snmp_send

    @pytest.fixture(scope="module")
    def trapd(tmp_path_factory):
        t = TrapdListen.start(tmp_path_factory.mktemp("trapd"), config={"listener": {...}})
        yield t
        assert t.stop() == 0

    def test_something(trapd):
        snmp_send("snmptrap", "-v", "2c", "-c", "public", trapd.target(), "", "1.3.6.1.6.3.1.1.5.3")
        event = trapd.wait_event(lambda e: e["trap_name"] == "IF-MIB::linkDown")

What :class:`TrapdListen` gives:

* ``TrapdListen.start(dir, config=..., listen=("127.0.0.1:0",), args=())``:
  writes ``config`` (a dict, the trapd.yaml content) to ``dir/trapd.yaml``
  with ``mibs: {dirs: []}`` and ``state_dir: dir`` added unless given (so no
  site MIB compile slows the start), starts ``python -m trapd listen`` on
  free loopback ports (port 0: the kernel picks, the "listening" log line
  says which) and returns once the sockets are bound.
* ``.target(family="udp")``: the address for snmptrap (``udp:127.0.0.1:PORT``
  or ``udp6:[::1]:PORT``); ``.address(family)``: ``(host, port)`` for a raw socket.
* ``.wait_event(pred, timeout)``: the next stdout JSON event matching
  ``pred`` (events that do not match are kept for later calls);
  ``.events_so_far()``: everything read and not yet consumed.
* ``.stats()``: sends SIGUSR1 and returns the counters from the next
  "listener stats" line on stderr (received by version, dropped by reason,
  dropped_detail "reason/detail", kernel_rcvbuf_errors, ...).
* ``.log``: every stderr line parsed as JSON (non-JSON lines as ``{"raw": line}``).
* ``.stop()``: SIGTERM, wait, return the exit status (0 expected).

:func:`snmp_send` runs snmptrap/snmpinform with a timeout and returns the
CompletedProcess; :func:`send_udp` sends raw bytes (garbage, truncations).
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

HAVE_NETSNMP = shutil.which("snmptrap") is not None and shutil.which("snmpinform") is not None
needs_netsnmp = pytest.mark.skipif(not HAVE_NETSNMP, reason="net-snmp's snmptrap/snmpinform not installed")

Event = dict[str, Any]


def snmp_send(
    tool: str, *args: str, timeout: float = 10.0, check: bool = False
) -> subprocess.CompletedProcess[str]:
    """Run net-snmp's ``snmptrap`` / ``snmpinform`` with ``args``; no MIBs loaded (numeric OIDs)."""
    env = dict(os.environ, MIBS="", MIBDIRS="/nonexistent", SNMPCONFPATH="/nonexistent")
    return subprocess.run(
        [tool, *args], capture_output=True, text=True, timeout=timeout, check=check, env=env
    )


def send_udp(data: bytes, address: tuple[str, int]) -> None:
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.sendto(data, address)


def capture_datagram(tool: str, *args: str, target_family: str = "udp") -> bytes:
    """The datagram snmptrap would send: run it against a throwaway socket and return the bytes.

    ``args`` are snmptrap's arguments with ``{target}`` where the agent address goes.
    Useful to build truncated / replayed / mutated packets from a real sender.
    """
    fam = socket.AF_INET6 if target_family == "udp6" else socket.AF_INET
    host = "::1" if fam == socket.AF_INET6 else "127.0.0.1"
    with socket.socket(fam, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        s.settimeout(5.0)
        port = s.getsockname()[1]
        target = f"udp6:[{host}]:{port}" if fam == socket.AF_INET6 else f"udp:{host}:{port}"
        proc = subprocess.Popen(
            [tool, *(a.replace("{target}", target) for a in args)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=dict(os.environ, MIBS="", MIBDIRS="/nonexistent"),
        )
        try:
            data, _ = s.recvfrom(65535)
        finally:
            proc.kill()
            proc.wait()
    return data


class TrapdListen:
    """A running ``trapd listen`` subprocess and what it printed."""

    def __init__(self, proc: subprocess.Popen[str], workdir: Path) -> None:
        self.proc = proc
        self.workdir = workdir
        self.log: list[Event] = []
        self._events: queue.Queue[Event] = queue.Queue()
        self._pending: list[Event] = []
        self.lines: list[str] = []  # every stdout line as printed (what `trapd listen > file` writes)
        self._log_queue: queue.Queue[Event] = queue.Queue()
        self.addresses: list[str] = []
        self.engine_id: str | None = None
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    @classmethod
    def start(
        cls,
        workdir: Path,
        config: dict[str, Any] | None = None,
        *,
        listen: Sequence[str] = ("127.0.0.1:0",),
        args: Sequence[str] = (),
        timeout: float = 20.0,
    ) -> TrapdListen:
        cfg = dict(config or {})
        cfg.setdefault("mibs", {"dirs": []})
        cfg.setdefault("state_dir", str(workdir))
        path = workdir / "trapd.yaml"
        path.write_text(yaml.safe_dump(cfg))
        cmd = [PYTHON, "-m", "trapd", "listen", "--config", str(path), "--log-format", "json"]
        for a in listen:
            cmd += ["--listen", a]
        cmd += list(args)
        proc = subprocess.Popen(
            cmd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=str(REPO),
            env=dict(os.environ, PYTHONUNBUFFERED="1"),
        )
        t = cls(proc, workdir)
        ready = t.wait_log(lambda e: e.get("event") in ("listening", "cannot listen"), timeout)
        if ready is None or ready.get("event") != "listening":
            t.stop()
            raise RuntimeError(f"trapd listen did not start: {ready!r}; log: {t.log!r}")
        t.addresses = list(ready["addresses"])
        t.engine_id = ready.get("engine_id")
        return t

    # -- reading ----------------------------------------------------------

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line)
            line = line.strip()
            if line:
                try:
                    self._events.put(json.loads(line))
                except ValueError:
                    self._events.put({"unparsable": line})

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            line = line.strip()
            if not line:
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                entry = {"raw": line}
            if not isinstance(entry, dict):
                entry = {"raw": line}
            self.log.append(entry)
            self._log_queue.put(entry)

    def wait_log(self, pred: Callable[[Event], bool], timeout: float = 5.0) -> Event | None:
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                entry = self._log_queue.get(timeout=left)
            except queue.Empty:
                return None
            if pred(entry):
                return entry

    def wait_event(self, pred: Callable[[Event], bool] = lambda e: True, timeout: float = 5.0) -> Event:
        """The first event (oldest first) matching ``pred``; AssertionError after ``timeout``."""
        for i, e in enumerate(self._pending):
            if pred(e):
                return self._pending.pop(i)
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching event within {timeout}s; unmatched: {self._pending!r}")
            try:
                e = self._events.get(timeout=left)
            except queue.Empty:
                continue
            if pred(e):
                return e
            self._pending.append(e)

    def events_so_far(self, settle: float = 0.2) -> list[Event]:
        time.sleep(settle)
        while True:
            try:
                self._pending.append(self._events.get_nowait())
            except queue.Empty:
                break
        out, self._pending = self._pending, []
        return out

    def stats(self, timeout: float = 5.0) -> dict[str, Any]:
        """Ask for the counters (SIGUSR1) and return the next "listener stats" line."""
        self.proc.send_signal(signal.SIGUSR1)
        entry = self.wait_log(lambda e: e.get("event") == "listener stats", timeout)
        if entry is None:
            raise AssertionError("no stats line after SIGUSR1")
        return entry

    def wait_stats(self, done: Callable[[dict[str, Any]], bool], timeout: float = 15.0) -> dict[str, Any]:
        """The counters, asked again until ``done(stats)``: a drop may still be in flight when the
        sender exits (pysnmp's v3 path takes its time on a loaded machine). AssertionError after
        ``timeout`` with the last counters."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            if done(stats):
                return stats
            if time.monotonic() > deadline:
                raise AssertionError(f"counters not reached in {timeout} s: {stats}")
            time.sleep(0.05)

    # -- addressing -------------------------------------------------------

    def address(self, family: str = "udp") -> tuple[str, int]:
        for a in self.addresses:
            v6 = a.startswith("[")
            if (family == "udp6") == v6:
                host, _, port = a.rpartition(":")
                return host.strip("[]"), int(port)
        raise LookupError(f"trapd listens on no {family} address: {self.addresses}")

    def target(self, family: str = "udp") -> str:
        host, port = self.address(family)
        return f"udp6:[{host}]:{port}" if family == "udp6" else f"udp:{host}:{port}"

    # -- stopping ---------------------------------------------------------

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for t in self._threads:
            t.join(2.0)
        return int(self.proc.returncode)
