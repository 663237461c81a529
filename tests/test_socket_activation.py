"""Socket activation: systemd-socket-activate (systemd's own tool) binds and hands over UDP sockets."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from ports import free_port

from trapd.service.socket_activation import describe, inherited_sockets

CHILD = r"""
import json, sys
from trapd.service.socket_activation import inherited_sockets, describe
import os
socks = inherited_sockets()
left = sorted(k for k in os.environ if k.startswith("LISTEN_"))
out = []
for s in socks:
    s.settimeout(5)
    data, peer = s.recvfrom(2048)
    out.append({"where": describe(s), "type": int(s.type), "data": data.decode(),
                "inheritable": s.get_inheritable()})
print(json.dumps({"sockets": out, "env_left": left}))
"""


def test_no_sockets_without_listen_env() -> None:
    assert inherited_sockets({}) == []


def test_listen_pid_of_another_process_is_ignored_and_env_is_cleaned() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "2", "LISTEN_FDNAMES": "a:b", "PATH": "/bin"}
    assert inherited_sockets(env) == []
    assert env == {"PATH": "/bin"}


def test_env_can_be_kept() -> None:
    env = {"LISTEN_PID": "1", "LISTEN_FDS": "1"}
    inherited_sockets(env, unset_environment=False)
    assert env == {"LISTEN_PID": "1", "LISTEN_FDS": "1"}


def test_describe() -> None:
    with (
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s6,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s4,
    ):
        s6.bind(("::1", 0))
        s4.bind(("127.0.0.1", 0))
        assert describe(s6) == f"[::1]:{s6.getsockname()[1]}"
        assert describe(s4) == f"127.0.0.1:{s4.getsockname()[1]}"


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd package not installed")
def test_udp_sockets_from_systemd_socket_activate_receive_queued_datagrams() -> None:
    """Datagrams sent before the daemon runs wait in the inherited sockets (what trapd.socket is for)."""
    p4 = free_port()
    p6 = free_port(host="::1")
    proc = subprocess.Popen(
        [
            "systemd-socket-activate",
            "--datagram",
            f"--listen=127.0.0.1:{p4}",
            f"--listen=[::1]:{p6}",
            sys.executable,
            "-c",
            CHILD,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        # systemd-socket-activate binds first, then starts the child on the first datagram.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
                try:
                    probe.bind(("127.0.0.1", p4))
                except OSError:
                    break  # bound by systemd-socket-activate
            time.sleep(0.05)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c4:
            c4.sendto(b"trap-v4", ("127.0.0.1", p4))
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as c6:
            c6.sendto(b"trap-v6", ("::1", p6))
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    result = json.loads(out)
    assert result["env_left"] == []  # LISTEN_* removed so children do not claim the sockets
    assert result["sockets"] == [
        {"where": f"127.0.0.1:{p4}", "type": int(socket.SOCK_DGRAM), "data": "trap-v4", "inheritable": False},
        {"where": f"[::1]:{p6}", "type": int(socket.SOCK_DGRAM), "data": "trap-v6", "inheritable": False},
    ]


STREAM_CHILD = r"""
import json, os
from trapd.service.socket_activation import inherited_sockets
socks = inherited_sockets()
print(json.dumps({"sockets": [int(s.type) for s in socks], "fd3_open": os.path.exists("/proc/self/fd/3")}))
"""


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None, reason="systemd package not installed")
def test_a_stream_socket_from_systemd_is_left_alone() -> None:
    """ListenStream= where ListenDatagram= belongs (a TCP socket on 162): adopted, the listener's
    recvfrom on it failed at once with the socket still readable, and the loop spun a core
    (227,456 failed reads in one second, in process) with no trap received. Like non-sockets, it
    is now left alone, so the daemon binds listener.listen itself."""
    port = free_port()
    proc = subprocess.Popen(
        ["systemd-socket-activate", f"--listen=127.0.0.1:{port}", sys.executable, "-c", STREAM_CHILD],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
    )
    try:
        # systemd-socket-activate listens first, then starts the child on the first connection.
        deadline = time.monotonic() + 10
        while True:
            try:
                conn = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        with conn:
            out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err.decode()
    assert json.loads(out) == {"sockets": [], "fd3_open": True}
