"""service.workers with socket activation: both workers read systemd's one socket, each datagram once.

systemd-socket-activate (systemd's own tool) binds the port, waits for the
first datagram, then starts ``trapd run`` with ``LISTEN_FDS``; trapd.socket
needs no ``ReusePort=`` for workers. Traps sent before trapd started wait in
the socket and are received too.
"""

from __future__ import annotations

import importlib
import json
import shutil
import socket
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml
from daemon_harness import free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        shutil.which("systemd-socket-activate") is None, reason="systemd package not installed"
    ),
]

RULES = """\
rules:
  - name: numbered
    match:
      notification: IF-MIB::linkDown
    actions:
      - action: log
        message: "got {{ varbinds['1.3.6.1.4.1.99999.1.1'].display }}"
        key: "{{ varbinds['1.3.6.1.4.1.99999.1.1'].display }}"
"""


def metric(port: int, name: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            body = b""
            while chunk := s.recv(65536):
                body += chunk
    except OSError:
        return -1
    text = body.partition(b"\r\n\r\n")[2].decode()
    return sum(s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name)


def test_workers_share_the_inherited_socket(tmp_path: Path) -> None:
    bench = Path(__file__).resolve().parent.parent / "bench"
    sys.path.insert(0, str(bench))
    loadgen = importlib.import_module("loadgen")
    port, metrics_port = free_port(), free_port(socket.SOCK_STREAM)
    (tmp_path / "rules.yaml").write_text(RULES)
    config = {
        "listener": {"listen": ["127.0.0.1:1"], "communities": ["public"]},  # ignored: sockets inherited
        "rules": {"files": ["rules.yaml"]},
        "state_dir": str(tmp_path / "state"),
        "mibs": {"dirs": []},
        "service": {
            "metrics": {"listen": f"127.0.0.1:{metrics_port}"},
            "log": {"format": "json"},
            "workers": 2,
        },
    }
    (tmp_path / "trapd.yaml").write_text(yaml.safe_dump(config))
    log = (tmp_path / "log").open("w")
    proc = subprocess.Popen(
        ["systemd-socket-activate", "--datagram", f"--listen=127.0.0.1:{port}",
         sys.executable, "-m", "trapd", "run", "--config", str(tmp_path / "trapd.yaml")],
        stdout=log, stderr=subprocess.STDOUT, cwd=tmp_path,
    )  # fmt: skip
    messages = loadgen.build_messages(loadgen.LoadSpec(version="v2c"), 1, 200)
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(16)]
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # until systemd-socket-activate holds the port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind(("127.0.0.1", port))
                except OSError:
                    break
            time.sleep(0.05)
        for i, m in enumerate(messages[:100]):  # before trapd runs: they wait in the socket
            senders[i % 16].sendto(m, ("127.0.0.1", port))
        deadline = time.monotonic() + 30
        while (
            metric(metrics_port, "trapd_notifications_received_total") < 100 and time.monotonic() < deadline
        ):
            time.sleep(0.1)
        for i, m in enumerate(messages[100:]):
            senders[i % 16].sendto(m, ("127.0.0.1", port))
            if i % 25 == 24:
                time.sleep(0.005)
        deadline = time.monotonic() + 20
        while metric(metrics_port, "trapd_actions_total") < 200 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert metric(metrics_port, "trapd_notifications_received_total") == 200
        assert metric(metrics_port, "trapd_actions_total") == 200
    finally:
        for s in senders:
            s.close()
        proc.terminate()
        rc = proc.wait(30)
        log.close()
    lines = [json.loads(x) for x in (tmp_path / "log").read_text().splitlines() if x.startswith("{")]
    got = [e["event"] for e in lines if str(e.get("event", "")).startswith("got ")]
    assert sorted(got) == [f"got {i:010d}" for i in range(1, 201)]  # every one, once
    ready = [e for e in lines if e.get("event") == "trapd ready" and "worker" in e]
    assert sorted(e["worker"] for e in ready) == [0, 1]
    assert all(e["listen"] == [f"127.0.0.1:{port}"] for e in ready)  # systemd's socket, not listener.listen
    start = next(e for e in lines if e.get("event") == "supervisor starting workers")
    assert start["shared_sockets"] == 1
    # Who read what is up to the kernel (one socket, two readers); both are there to read.
    assert sum(Counter(e["worker"] for e in lines if e.get("event") == "action done").values()) == 200
    assert rc == 0  # SIGTERM: systemd-socket-activate exec'd trapd, whose supervisor stopped both
