"""/healthz shows no secret: it is often served to a monitoring network, not only to the host.

A Kea endpoint's last error is a standing warning in /healthz. An endpoint that answers with
something that is not Kea's JSON (a proxy's or a debugging server's page that quotes the request)
has that answer quoted in the error, the request's ``Authorization: Basic`` header with it: the
log masked it, /healthz did not.
"""

from __future__ import annotations

import base64
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import TrapdDaemon

PASSWORD = "kea-healthz-s3cret"
TOKEN = base64.b64encode(f"trapd:{PASSWORD}".encode()).decode()


class Echo(BaseHTTPRequestHandler):
    """Not Kea: answers every request with the request's head, as a debugging server does."""

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        answer = f"you sent: Authorization: {self.headers.get('Authorization')}\n".encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def echo_kea() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_a_kea_error_quoting_the_basic_header_is_masked_in_healthz(tmp_path: Path, echo_kea: str) -> None:
    kea = {
        "endpoints": {
            "echo": {
                "transport": "control-agent",
                "url": echo_kea,
                "user": "trapd",
                "password": PASSWORD,
                "family": "v4",
            }
        },
        "poll_interval": "0.3s",
        "warn_after": "0.5s",
    }
    d = TrapdDaemon.start(tmp_path, rules="rules: []\n", config={"kea": kea})
    try:
        deadline = time.monotonic() + 30.0
        while True:
            _, body = d.healthz()
            if body.get("kea"):
                break
            assert time.monotonic() < deadline, f"no Kea warning in /healthz: {body}"
            time.sleep(0.2)
        shown = str(body["kea"])
        assert "echo" in shown and "not JSON" in shown, shown
        assert TOKEN[8:-4] not in shown and PASSWORD not in shown, shown
        logged = "\n".join(str(line) for line in d.log)
        assert TOKEN[8:-4] not in logged, logged
    finally:
        d.stop()
        d.close()
