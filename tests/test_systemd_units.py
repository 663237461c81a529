"""systemd/trapd.service and trapd.socket: systemd-analyze verify and security, and what the hardening allows.

PID 1 is not systemd here, so the unit cannot be started. What can be checked is:
the files as systemd parses them (verify), the exposure score (security
--offline), that every system call trapd's work makes is in the unit's
SystemCallFilter= and none breaks MemoryDenyWriteExecute= (strace over
tests/hardening_workload.py, and the kernel's PR_SET_MDWE), and that a unix
socket on a read-only mount (ProtectSystem=strict makes /run read-only) can
still be connected to.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest
from ports import free_port

REPO = Path(__file__).resolve().parents[1]
SERVICE = REPO / "systemd" / "trapd.service"
SOCKET = REPO / "systemd" / "trapd.socket"
WORKLOAD = Path(__file__).with_name("hardening_workload.py")
TRAPD = Path(sys.executable).with_name("trapd")
MAX_EXPOSURE = 3.0

needs_analyze = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze missing (Debian package: systemd)"
)
needs_strace = pytest.mark.skipif(
    shutil.which("strace") is None, reason="strace missing (Debian package: strace)"
)


def unit_settings(path: Path) -> dict[str, list[str]]:
    """Key -> values in file order (systemd keys may repeat); section names are dropped."""
    out: dict[str, list[str]] = defaultdict(list)
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out[key.strip()].append(value.strip())
    return out


@pytest.fixture
def units(tmp_path: Path) -> Path:
    """The units as installed: ExecStart pointing at the real trapd (verify checks that it exists)."""
    (tmp_path / "trapd.service").write_text(SERVICE.read_text().replace("/usr/local/bin/trapd", str(TRAPD)))
    shutil.copy(SOCKET, tmp_path / "trapd.socket")
    return tmp_path


def test_service_settings_the_daemon_relies_on() -> None:
    s = unit_settings(SERVICE)
    assert s["Type"] == ["notify"]
    assert s["ExecStart"] == ["/usr/local/bin/trapd run --config /etc/trapd/trapd.yaml"]
    assert s["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert s["Restart"] == ["on-failure"]
    assert s["User"] == ["trapd"]
    assert s["WatchdogSec"] == ["30s"]
    assert s["StateDirectory"] == ["trapd"] and s["ConfigurationDirectory"] == ["trapd"]
    assert s["AmbientCapabilities"] == s["CapabilityBoundingSet"] == ["CAP_NET_BIND_SERVICE"]
    assert s["RestrictAddressFamilies"] == ["AF_INET AF_INET6 AF_UNIX"]
    assert s["ProtectSystem"] == ["strict"] and s["MemoryDenyWriteExecute"] == ["yes"]
    assert s["SystemCallFilter"][0] == "@system-service"
    # The drain on SIGTERM (dispatch.shutdown_timeout, 10 s by default) must fit in the stop timeout.
    assert int(s["TimeoutStopSec"][0].rstrip("s")) >= 30
    # A bound on the whole unit (workers and exec children too): a runaway allocation ends in an OOM
    # kill and a restart (Restart=on-failure), not in the host swapping (issue 14 item 8).
    (memory_max,) = s["MemoryMax"]
    assert (
        memory_max.endswith(("M", "G"))
        and 256 <= int(memory_max[:-1]) * (1024 if memory_max[-1] == "G" else 1) <= 4096
    )
    # An OOM kill of a child (an exec action's program, the MIB compile child, a worker) is
    # trapd's to handle; systemd's default OOMPolicy=stop stopped the whole unit for it.
    assert s["OOMPolicy"] == ["continue"]


def test_a_configuration_error_is_not_restarted_for_ever() -> None:
    """trapd exits 2 when trapd.yaml, a flag or the rules are wrong (a restart cannot mend them),
    1 when what failed may pass (a port in use, a journal that cannot be opened yet).

    With RestartSec=2s alone systemd's start limit (5 starts within StartLimitIntervalSec=10s,
    its defaults) is never reached: a start that fails takes 0.4 s or more, so the sixth start,
    the one the limit would refuse, comes at least 5 x 2.4 s = 12 s after the first, past the
    10 s window (it is reached only with restarts less than 2 s apart), and a broken rules file
    was restarted every 2.4 s for ever, a failed start logged each time, the unit never failed.
    RestartPreventExitStatus=2 leaves it failed at the first start; a status 1 is still retried.
    """
    s = unit_settings(SERVICE)
    assert s["RestartPreventExitStatus"] == ["2"]
    assert s["Restart"] == ["on-failure"] and s["RestartSec"] == ["2s"]
    from trapd.service.options import EXIT_CONFIG

    assert EXIT_CONFIG == 2


def test_socket_unit_listens_like_snmptrapd() -> None:
    s = unit_settings(SOCKET)
    assert s["ListenDatagram"] == ["0.0.0.0:162", "[::]:162"]
    assert s["BindIPv6Only"] == ["ipv6-only"]  # two sockets, one per family, as the daemon expects
    assert s["ReceiveBuffer"] == ["8M"]


@needs_analyze
def test_systemd_analyze_verify(units: Path) -> None:
    proc = subprocess.run(
        ["systemd-analyze", "verify", units / "trapd.service", units / "trapd.socket"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # verify exits 0 even for unknown keys; it reports them on stderr.
    assert (proc.returncode, proc.stderr) == (0, ""), proc.stderr


@needs_analyze
def test_systemd_analyze_verify_catches_a_missing_binary(tmp_path: Path) -> None:
    shutil.copy(SERVICE, tmp_path / "trapd.service")  # /usr/local/bin/trapd does not exist here
    if Path("/usr/local/bin/trapd").exists():
        pytest.skip("/usr/local/bin/trapd exists on this machine")
    proc = subprocess.run(
        ["systemd-analyze", "verify", tmp_path / "trapd.service"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0 and "/usr/local/bin/trapd" in proc.stderr


def exposure(unit: Path) -> float:
    proc = subprocess.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", unit],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    match = re.search(r"Overall exposure level for trapd\.service: (\d+\.\d)", proc.stdout)
    assert match, proc.stdout
    return float(match.group(1))


@needs_analyze
def test_security_exposure_is_low_and_documented(units: Path) -> None:
    score = exposure(units / "trapd.service")
    assert score <= MAX_EXPOSURE
    # docs/service.md states the score; keep it true.
    doc = (REPO / "docs" / "service.md").read_text()
    assert f"exposure level {score}" in doc, f"docs/service.md should say 'exposure level {score}'"


@needs_analyze
def test_security_score_notices_weakened_hardening(units: Path) -> None:
    weak = units / "weak" / "trapd.service"
    weak.parent.mkdir()
    text = (units / "trapd.service").read_text()
    text = re.sub(
        r"^(ProtectSystem|SystemCallFilter|NoNewPrivileges|RestrictAddressFamilies)=.*$", "", text, flags=re.M
    )
    weak.write_text(text)
    assert exposure(weak) > exposure(units / "trapd.service") + 1.0


def syscall_set(*groups: str) -> set[str]:
    """System call names in systemd's groups (``@system-service`` ...), nested groups expanded."""
    names: set[str] = set()
    for group in groups:
        out = subprocess.run(
            ["systemd-analyze", "syscall-filter", group], capture_output=True, text=True, check=True
        ).stdout
        for line in out.splitlines()[1:]:
            item = line.strip()
            if not item or item.startswith("#"):
                continue
            names |= syscall_set(item) if item.startswith("@") else {item}
    return names


def allowed_syscalls() -> set[str]:
    """What the unit's SystemCallFilter= lines allow: the first is an allow list, '~' lines deny."""
    allowed: set[str] = set()
    for value in unit_settings(SERVICE)["SystemCallFilter"]:
        if value.startswith("~"):
            allowed -= syscall_set(*value[1:].split())
        else:
            allowed |= syscall_set(*value.split())
    return allowed


def analyse_trace(trace: Path) -> tuple[set[str], list[str]]:
    """System call names in an ``strace -f`` log, and the calls MemoryDenyWriteExecute= would refuse."""
    calls: set[str] = set()
    wx: list[str] = []
    for line in trace.read_text().splitlines():
        m = re.match(r"\d+\s+(?:<\.\.\. )?([a-z0-9_]+)[( ]", line)
        if m:
            calls.add(m.group(1))
        # systemd's seccomp version of W^X: no mapping both writable and executable,
        # no mprotect() that adds execute, no executable SysV shared memory.
        if re.match(r"\d+\s+(mmap|mprotect|pkey_mprotect)\(.*PROT_EXEC", line) and (
            "mprotect" in line or "PROT_WRITE" in line
        ):
            wx.append(line)
        if re.match(r"\d+\s+shmat\(.*SHM_EXEC", line):
            wx.append(line)
    return calls, wx


@needs_analyze
@needs_strace
def test_every_system_call_is_allowed_and_nothing_needs_write_execute(tmp_path: Path) -> None:
    trace = tmp_path / "trace"
    proc = subprocess.run(
        ["strace", "-f", "-qq", "-o", trace, sys.executable, WORKLOAD],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("ok")
    calls, wx = analyse_trace(trace)
    assert {"recvfrom", "sendto", "connect", "execve", "mmap", "epoll_pwait"} <= calls  # the trace was parsed
    assert calls - allowed_syscalls() == set()
    assert wx == []


def test_kernel_write_xor_execute_does_not_break_trapd() -> None:
    proc = subprocess.run([sys.executable, WORKLOAD, "--mdwe"], capture_output=True, text=True, timeout=120)
    if proc.returncode == 77:
        pytest.skip("kernel without PR_SET_MDWE (Linux < 6.3)")
    assert proc.returncode == 0, proc.stderr
    # The lock was on: a W+X mapping was refused, and everything else worked.
    assert proc.stdout.strip().splitlines()[-2:] == ["wx-refused", "ok"]


@pytest.mark.skipif(
    shutil.which("unshare") is None or shutil.which("setpriv") is None, reason="needs util-linux"
)
def test_unix_socket_on_a_read_only_mount_needs_only_group_write() -> None:
    """ProtectSystem=strict makes /run/kea read-only; connect() still works if the socket's mode allows."""
    if os.geteuid() != 0:
        pytest.skip("needs root for a mount namespace")
    # Not under pytest's tmp_path: its parents are 0700, and the client runs as nobody.
    run_kea = Path(tempfile.mkdtemp(prefix="trapd-kea-"))
    run_kea.chmod(0o755)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    path = run_kea / "kea4-ctrl-socket"
    server.bind(str(path))
    server.listen(8)
    os.chown(path, 0, 65534)  # group nogroup stands in for _kea
    client = (
        "import socket, sys\n"
        "s = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect(sys.argv[1]); print('connected')\n"
        "except OSError as e:\n    print(type(e).__name__)\n"
    )
    results = {}
    for mode in (0o770, 0o755):
        os.chmod(path, mode)
        script = (
            f"mount --bind -o ro {run_kea} {run_kea} && touch {run_kea}/x 2>/dev/null && echo writable; "
            f'setpriv --reuid=65534 --regid=65534 --init-groups /usr/bin/python3 -c "$0" {path}'
        )
        proc = subprocess.run(
            ["unshare", "--mount", "sh", "-c", script, client], capture_output=True, text=True, timeout=30
        )
        results[oct(mode)] = proc.stdout.strip()
    server.close()
    shutil.rmtree(run_kea)
    assert results == {"0o770": "connected", "0o755": "PermissionError"}


KEA_CONFIG = """{"Dhcp4": {"interfaces-config": {"interfaces": []},
 "control-socket": {"socket-type": "unix", "socket-name": "%(dir)s/kea4-ctrl-socket"},
 "lease-database": {"type": "memfile", "persist": false},
 "loggers": [{"name": "kea-dhcp4", "output_options": [{"output": "%(dir)s/kea.log"}], "severity": "WARN"}]}}
"""


@pytest.mark.integration
@pytest.mark.skipif(
    shutil.which("kea-dhcp4") is None or shutil.which("setpriv") is None, reason="needs Kea, setpriv"
)
@pytest.mark.parametrize(("umask", "expected"), [("0022", "PermissionError"), ("0007", "connected")])
def test_kea_socket_mode_follows_its_umask(umask: str, expected: str) -> None:
    """Debian's Kea units leave UMask at 0022: a group _kea member cannot connect until Kea gets 0007."""
    import grp
    import pwd
    import time

    if os.geteuid() != 0:
        pytest.skip("needs root to run Kea as _kea")
    try:
        kea_uid, kea_gid = pwd.getpwnam("_kea").pw_uid, grp.getgrnam("_kea").gr_gid
    except KeyError:
        pytest.skip("no _kea user (Debian's Kea packages create it)")
    workdir = Path(tempfile.mkdtemp(prefix="trapd-kea-"))
    workdir.chmod(0o755)
    os.chown(workdir, kea_uid, kea_gid)
    (workdir / "kea.json").write_text(KEA_CONFIG % {"dir": workdir})
    env = {
        "KEA_PIDFILE_DIR": str(workdir),
        "KEA_LOCKFILE_DIR": str(workdir),
        "PATH": "/usr/sbin:/usr/bin:/bin",
    }
    kea = subprocess.Popen(
        [
            "sh",
            "-c",
            f'umask {umask} && exec setpriv --reuid=_kea --regid=_kea --clear-groups "$@"',
            "sh",
            "kea-dhcp4",
            "-c",
            str(workdir / "kea.json"),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        sock = workdir / "kea4-ctrl-socket"
        deadline = time.monotonic() + 10
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sock.exists(), "kea-dhcp4 did not create its control socket"
        client = (
            "import socket, sys\ns = socket.socket(socket.AF_UNIX)\n"
            "try:\n    s.connect(sys.argv[1]); print('connected')\n"
            "except OSError as e:\n    print(type(e).__name__)\n"
        )
        proc = subprocess.run(
            [
                "setpriv",
                "--reuid=65534",
                "--regid=65534",
                f"--groups={kea_gid}",
                "/usr/bin/python3",
                "-c",
                client,
                str(sock),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert proc.stdout.strip() == expected, (oct(sock.stat().st_mode), proc.stdout, proc.stderr)
    finally:
        kea.terminate()
        kea.wait(timeout=10)
        shutil.rmtree(workdir, ignore_errors=True)


def _daemon_written() -> bool:
    try:
        from trapd.service import daemon
    except ImportError:
        return False
    return hasattr(daemon, "run_daemon")


@needs_analyze
@needs_strace
def write_traced_config(tmp_path: Path, service: str = "") -> int:
    """trapd.yaml (starter rules, a free loopback port, JSON logs) for a daemon run under strace.

    ``service``: more keys of the service section (``"workers: 2"``). Returns the port.
    """
    port = free_port()
    (tmp_path / "rules.yaml").write_text((REPO / "etc/trapd/rules.yaml").read_text())
    extra = f", {service}" if service else ""
    (tmp_path / "trapd.yaml").write_text(
        f"listener: {{listen: ['127.0.0.1:{port}'], communities: [public]}}\n"
        "rules: {files: [rules.yaml]}\n"
        f"state_dir: {tmp_path / 'state'}\n"
        f"service: {{metrics: {{listen: '127.0.0.1:0'}}, log: {{format: json}}{extra}}}\n"
    )
    return port


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("snmptrap") is None, reason="net-snmp snmptrap missing")
@pytest.mark.skipif(not _daemon_written(), reason="trapd.service.daemon.run_daemon is not written yet")
def test_the_daemon_stays_inside_the_filter_through_start_trap_reload_stop(tmp_path: Path) -> None:
    """`trapd run` as systemd runs it, under strace: READY, a trap, SIGHUP, SIGTERM; every syscall allowed."""
    import signal

    from notify_harness import NotifySocket

    port = write_traced_config(tmp_path)
    trace = tmp_path / "trace"
    with NotifySocket(tmp_path / "notify") as manager:
        env = {**os.environ, "NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "2000000"}
        proc = subprocess.Popen(
            ["strace", "-f", "-qq", "-o", trace, TRAPD, "run", "--config", tmp_path / "trapd.yaml"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            manager.wait_for("READY", timeout=60)  # slow under strace
            linkdown = ["1.3.6.1.6.3.1.1.5.3", "1.3.6.1.2.1.2.2.1.1.3", "i", "3"]
            subprocess.run(
                ["snmptrap", "-v2c", "-c", "public", f"127.0.0.1:{port}", "", *linkdown], check=True
            )
            manager.wait_for("WATCHDOG", timeout=10)
            daemon_pid = int(subprocess.check_output(["pgrep", "-P", str(proc.pid)]).split()[0])
            os.kill(daemon_pid, signal.SIGHUP)
            manager.wait_for("RELOADING", timeout=30)
            manager.wait_for("READY", timeout=30)
            os.kill(daemon_pid, signal.SIGTERM)
            manager.wait_for("STOPPING", timeout=30)
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert proc.returncode == 0, err.decode()[-2000:]
    calls, wx = analyse_trace(trace)
    if os.geteuid() == 0:
        # SQLite hands its -wal/-shm files to the database's owner only when running as root
        # (robust_fchown); as User=trapd it never calls fchown, and EPERM would be ignored anyway.
        calls.discard("fchown")
    assert calls - allowed_syscalls() == set()
    assert wx == []


def _core_limit(value: str | None) -> int:
    """A LimitCORE= value as setrlimit takes it; None: what systemd as PID 1 gives a service.

    systemd raises its own RLIMIT_CORE to infinity at boot so that systemd-coredump (which
    honours the limit) gets every service's dumps, and services inherit it.
    """
    import resource

    if value is None or value == "infinity":
        return resource.RLIM_INFINITY
    return int(value)


@pytest.mark.integration
@pytest.mark.skipif(
    Path("/proc/sys/kernel/core_pattern").read_text().strip() != "core",
    reason="the kernel's core_pattern does not write a plain ./core",
)
def test_the_watchdogs_sigabrt_leaves_no_core_dump_with_the_secrets(tmp_path: Path) -> None:
    """WatchdogSec= kills a stuck trapd with SIGABRT (WatchdogSignal='s default), which dumps core.

    A core holds the process's memory: every community, v3 key and Kea password trapd loaded,
    stored in clear (/var/lib/systemd/coredump with systemd-coredump). `trapd run` under the
    unit's core limit, SIGABRTed, must leave none.
    """
    import resource
    import signal

    from daemon_harness import TrapdDaemon

    s = unit_settings(SERVICE)
    limit = _core_limit(s["LimitCORE"][-1] if s.get("LimitCORE") else None)
    assert s.get("WatchdogSignal", ["SIGABRT"])[-1] == "SIGABRT"
    secret = "c0mmunity-that-must-not-be-dumped"
    d = TrapdDaemon.start(
        tmp_path, rules="rules: []\n", config={"listener": {"communities": [secret]}}, metrics=False
    )
    try:
        assert d.proc is not None
        resource.prlimit(d.proc.pid, resource.RLIMIT_CORE, (limit, limit))
        d.signal(signal.SIGABRT)
        assert d.wait_exit(60) == -signal.SIGABRT
        cores = [p for p in tmp_path.iterdir() if p.name.startswith("core")]
        leaked = [p.name for p in cores if secret.encode() in p.read_bytes()]
        assert cores == [], f"core dump written (holding the community: {leaked})"
    finally:
        d.close()
        for p in tmp_path.glob("core*"):
            p.unlink()
