"""The service manager's end of NOTIFY_SOCKET, for tests that run trapd the way systemd would.

    with NotifySocket(tmp_path / "notify") as manager:
        env = {**os.environ, "NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "2000000"}
        proc = subprocess.Popen([...trapd run...], env=env)
        manager.wait_for("READY", timeout=10)          # -> {"READY": "1", "STATUS": "..."}
        os.kill(proc.pid, signal.SIGHUP)
        manager.wait_for("RELOADING"); manager.wait_for("READY")

A path socket, or an abstract one when ``path`` starts with '@'. Messages are
parsed into dicts of their KEY=VALUE fields, kept in arrival order in
:attr:`messages`.
"""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path
from types import TracebackType


class NotifySocket:
    def __init__(self, path: str | Path) -> None:
        self.address = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        bind_to = ("\0" + self.address[1:]) if self.address.startswith("@") else self.address
        self.sock.bind(bind_to)
        if not self.address.startswith("@"):
            os.chmod(self.address, 0o777)  # a daemon that dropped privileges can still send
        self.messages: list[dict[str, str]] = []

    @staticmethod
    def parse(data: bytes) -> dict[str, str]:
        return dict(line.split("=", 1) for line in data.decode().split("\n") if "=" in line)

    def receive(self, timeout: float = 2.0) -> dict[str, str]:
        """The next message; TimeoutError if none comes."""
        self.sock.settimeout(timeout)
        msg = self.parse(self.sock.recv(65536))
        self.messages.append(msg)
        return msg

    def pending(self) -> list[dict[str, str]]:
        """Every message already queued, without waiting."""
        out = []
        self.sock.setblocking(False)
        try:
            while True:
                try:
                    out.append(self.parse(self.sock.recv(65536)))
                except BlockingIOError:
                    break
        finally:
            self.sock.setblocking(True)
        self.messages += out
        return out

    def wait_for(self, key: str, timeout: float = 10.0) -> dict[str, str]:
        """Read messages until one carries ``key`` (e.g. "READY", "STOPPING", "WATCHDOG")."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no {key}= message within {timeout} s; got {self.messages[-5:]}")
            try:
                msg = self.receive(left)
            except TimeoutError:
                continue
            if key in msg:
                return msg

    def close(self) -> None:
        self.sock.close()
        if not self.address.startswith("@"):
            Path(self.address).unlink(missing_ok=True)

    def __enter__(self) -> NotifySocket:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
