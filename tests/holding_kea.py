"""A unix socket in front of a real Kea's control socket that can hold a command or its answer.

The crash-point tests (tests/test_journal_crash_points.py, tests/test_pair_crash_points.py)
put it between trapd and Kea 2.2 to stop an action at an exact point: Kea not asked yet, or
Kea did it and trapd does not know.
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
from pathlib import Path
from typing import Any


class HoldingKea:
    """A unix socket in front of a real Kea's control socket; can hold the ``commands`` named.

    ``hold`` is ``None`` (pass everything), ``"request"`` (keep a held command from Kea) or
    ``"answer"`` (let Kea run it, keep its answer from trapd). Held until :meth:`release`.
    """

    def __init__(self, path: Path, upstream: Path, commands: tuple[str, ...]) -> None:
        self.path, self.upstream, self.commands = path, upstream, commands
        self.hold: str | None = None
        self.received: list[dict[str, Any]] = []  # every command trapd sent
        self.executed: list[dict[str, Any]] = []  # ... that Kea answered
        self.answered: list[dict[str, Any]] = []  # ... whose answer trapd was sent
        self._gate = threading.Event()
        self._lock = threading.Lock()
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(str(path))
        self._sock.listen(16)
        self._sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Let what is held go on, and hold nothing from now on."""
        self.hold = None
        self._gate.set()

    def close(self) -> None:
        self.release()
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def count(self, kind: str, command: str) -> int:
        with self._lock:
            return sum(1 for r in getattr(self, kind) if r.get("command") == command)

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with contextlib.closing(conn):
            conn.settimeout(30)
            try:
                request = _read_json(conn)
            except OSError:
                return
            hold = self.hold if request.get("command") in self.commands else None
            with self._lock:
                self.received.append(request)
            if hold == "request":
                self._gate.wait(60)
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as up:
                up.settimeout(30)
                up.connect(str(self.upstream))
                up.sendall(json.dumps(request).encode())
                answer = _read_json(up)
            with self._lock:
                self.executed.append(request)
            if hold == "answer":
                self._gate.wait(60)
            try:
                conn.sendall(json.dumps(answer).encode())
            except OSError:
                return  # trapd is gone
            with self._lock:
                self.answered.append(request)


def _read_json(conn: socket.socket) -> Any:
    data = b""
    while True:
        chunk = conn.recv(65536)
        if not chunk:
            return json.loads(data)
        data += chunk
        with contextlib.suppress(ValueError):
            return json.loads(data)
