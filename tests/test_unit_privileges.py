"""What systemd/trapd.service gives trapd is enough: UDP 162 as an unprivileged user with only
CAP_NET_BIND_SERVICE, no new privileges, a state directory of its own, a trap acted on, SIGHUP.

The unit's User=, AmbientCapabilities=/CapabilityBoundingSet= and NoNewPrivileges= are
reproduced with setpriv, in a network namespace of the test's own (so port 162 is free and
nothing leaves it). The syscall filter has its own test (tests/test_systemd_units.py).
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import TrapdDaemon, link_down

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (a network namespace, setpriv)"),
    pytest.mark.skipif(
        any(shutil.which(t) is None for t in ("unshare", "setpriv", "nsenter", "snmptrap", "ip")),
        reason="needs util-linux, iproute2 and net-snmp",
    ),
]

UNIT = Path(__file__).resolve().parent.parent / "systemd" / "trapd.service"


def unit_capabilities() -> set[str]:
    caps = {
        line.split("=", 1)[1].strip()
        for line in UNIT.read_text().splitlines()
        if line.startswith(("AmbientCapabilities=", "CapabilityBoundingSet="))
    }
    assert len(caps) == 1, caps  # the same set both ways
    return {c.lower().removeprefix("cap_") for c in caps.pop().split()}


@pytest.fixture
def workdir() -> Iterator[Path]:
    """A directory the unprivileged user can reach (pytest's temp root is root's alone)."""
    d = Path(tempfile.mkdtemp(prefix="trapd-unit-privileges-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_port_162_and_a_trap_with_only_the_units_capability(workdir: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    caps = ",".join(f"+{c}" for c in sorted(unit_capabilities()))
    assert caps == "+net_bind_service"
    # The interpreter, run as the unit runs it: in a fresh network namespace (lo up), as nobody,
    # with the unit's capability ambient and bounding, and no way to gain more.
    wrapper = workdir / "python-as-the-unit"
    wrapper.write_text(
        "#!/bin/sh\n"
        "exec unshare --net sh -c 'ip link set lo up && exec setpriv "
        f"--reuid={nobody.pw_uid} --regid={nobody.pw_gid} --clear-groups "
        f"--inh-caps=-all,{caps} --ambient-caps=-all,{caps} --bounding-set=-all,{caps} --no-new-privs "
        '"$0" "$@"\' ' + f'{sys.executable} "$@"\n'
    )
    wrapper.chmod(0o755)
    state = workdir / "state"
    state.mkdir(mode=0o700)
    os.chown(state, nobody.pw_uid, nobody.pw_gid)  # StateDirectory=trapd
    os.chown(workdir, nobody.pw_uid, nobody.pw_gid)  # the notify socket and config live here
    d = TrapdDaemon.start(
        workdir,
        rules=(
            "rules:\n  - name: down\n    match: {notification: IF-MIB::linkDown}\n"
            "    actions: [{action: log, message: 'port {{ ifIndex }} down'}]\n"
        ),
        config={
            "listener": {"listen": ["127.0.0.1:162"]},
            "state_dir": str(state),
            "service": {"metrics": {"listen": None}},
        },
        metrics=False,
        notify=False,  # READY from the log: the notify socket would be root's
        trap_port=162,
        python=wrapper,
    )
    try:
        assert d.proc is not None
        netns = f"--net=/proc/{d.proc.pid}/ns/net"
        status = Path(f"/proc/{d.proc.pid}/status").read_text()
        assert f"Uid:\t{nobody.pw_uid}" in status and "NoNewPrivs:\t1" in status
        assert int(status.split("CapEff:\t")[1].split()[0], 16) == 1 << 10  # CAP_NET_BIND_SERVICE
        sent = subprocess.run(
            ["nsenter", netns, "snmptrap", *link_down("udp:127.0.0.1:162", 7)],
            capture_output=True,
            timeout=30,
        )
        assert sent.returncode == 0, sent.stderr
        d.wait_log(lambda e: e.get("event") == "action done" and e.get("action") == "log")
        d.signal(signal.SIGHUP)  # ExecReload=
        d.wait_log("reloaded")
        assert d.stop() == 0
    finally:
        d.close()
    # Nothing it wrote is root's: the state directory stays the service user's.
    assert {p.stat().st_uid for p in state.rglob("*")} <= {nobody.pw_uid}


def test_the_wrapper_really_drops_privileges_a_root_bind_would_need(workdir: Path) -> None:
    """The check above means something: without the capability, the same bind is refused."""
    nobody = pwd.getpwnam("nobody")
    script = "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind(('127.0.0.1', 162))"
    proc = subprocess.run(
        ["unshare", "--net", "setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}",
         "--clear-groups", "--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--no-new-privs",
         sys.executable, "-c", script],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode != 0 and "PermissionError" in proc.stderr, proc.stderr
