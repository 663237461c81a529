"""What `trapd run` says at start-up about its configuration, in a real daemon's log."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from daemon_harness import TrapdDaemon, eventually

pytestmark = pytest.mark.integration


def test_settings_for_a_plugin_that_is_not_installed_are_warned_about(tmp_path: Path) -> None:
    # A typo under actions: (or a plugin package that is missing) would otherwise be ignored in silence.
    d = TrapdDaemon.start(tmp_path, rules="rules: []\n", config={"actions": {"acme.tickt": {"url": "x"}}})
    try:
        [line] = d.wait_log("settings for an action plugin that is not installed")
        assert line["plugin"] == "acme.tickt"
        assert line["level"] == "warning"
        assert not d.logs("settings for an action plugin that is not installed")[1:]  # once
    finally:
        assert d.stop() == 0


def test_a_reload_that_adds_settings_for_a_missing_plugin_warns_too(tmp_path: Path) -> None:
    d = TrapdDaemon.start(tmp_path, rules="rules: []\n")
    try:
        assert not d.logs("settings for an action plugin that is not installed")
        assert d.notify is not None
        d.write_config({"actions": {"acme.tickt": {"url": "x"}}})
        d.notify.pending()
        d.signal(signal.SIGHUP)
        d.wait_log("reloaded")
        [line] = d.wait_log("settings for an action plugin that is not installed")
        assert line["plugin"] == "acme.tickt"
    finally:
        assert d.stop() == 0


def assert_warned(d: TrapdDaemon) -> None:
    assert any("visible to every local user" in str(line) for line in d.log)


ONE_RULE = """
rules:
  - name: note
    match: {notification: IF-MIB::linkDown}
    actions: [{action: log, message: down}]
"""


def test_a_community_on_the_command_line_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--community public` puts the community in argv, which every local user can read (ps,
    /proc/PID/cmdline); env:VAR and file:PATH keep it out, as trapd.yaml's references do."""
    from daemon_harness import IF_INDEX, LINK_DOWN
    from listen_harness import snmp_send

    monkeypatch.setenv("TRAPD_TEST_COMMUNITY", "s3cret-comm")
    (tmp_path / "community").write_text("other-comm\n")
    d = TrapdDaemon.start(
        tmp_path / "trapd",
        rules=ONE_RULE,
        args=("--community", "env:TRAPD_TEST_COMMUNITY", "--community", f"file:{tmp_path / 'community'}"),
    )
    try:
        assert d.proc is not None
        argv = (Path("/proc") / str(d.proc.pid) / "cmdline").read_bytes()
        assert b"s3cret-comm" not in argv and b"other-comm" not in argv
        for community in ("s3cret-comm", "other-comm", "public"):  # public: trapd.yaml's, replaced
            snmp_send(
                "snmptrap", "-v", "2c", "-c", community, d.target(), "", LINK_DOWN, f"{IF_INDEX}.1", "i", "1"
            )
        assert d.wait_metric("trapd_notifications_received_total", 2) == 2
        assert d.wait_metric("trapd_notifications_dropped_total", 1, reason="unknown-community") == 1
        assert not any("visible to every local user" in str(line) for line in d.log)
        assert d.stop() == 0
    finally:
        d.close()
    # Plain text still works, with a warning that says where it can be read.
    d = TrapdDaemon.start(tmp_path / "plain", rules=ONE_RULE, args=("--community", "public"))
    try:
        eventually(lambda: assert_warned(d))
        assert d.stop() == 0
    finally:
        d.close()


SLOW_COMPILER = """\
import sys, time
import trapd.mibcompile as m
real = m.compile_site
def slow(*args, **kwargs):
    time.sleep({seconds})
    return real(*args, **kwargs)
m.compile_site = slow
assert sys.argv[1:3] == ["-m", "trapd.mibcompile"], sys.argv
sys.exit(m.main(sys.argv[3:]))
"""


def start_compiling(tmp_path: Path, workers: int, seconds: float) -> tuple[TrapdDaemon, Path]:
    """`trapd run` whose site MIB compile takes ``seconds`` (its compiler sleeps first), waited
    for until it says it compiles; the compiler's script path (to find its process)."""
    import os
    import subprocess
    import sys
    import threading

    from daemon_harness import free_port
    from notify_harness import NotifySocket

    mibs = tmp_path / "mibs"
    mibs.mkdir()
    (mibs / "SITE-MIB.my").write_text(
        "SITE-MIB DEFINITIONS ::= BEGIN\nIMPORTS enterprises FROM SNMPv2-SMI;\n"
        "site OBJECT IDENTIFIER ::= { enterprises 99990 }\nEND\n"
    )
    # Both scripts in a directory of their own: a script's directory is first on sys.path, and
    # tmp_path holds the daemon's directory "trapd", which would be imported as a namespace
    # package in place of trapd (it was, wherever trapd is installed rather than on PYTHONPATH).
    scripts = tmp_path / "bin"
    scripts.mkdir()
    slow = scripts / "slowpython"
    slow.write_text(f"#!{sys.executable}\n{SLOW_COMPILER.format(seconds=seconds)}")
    slow.chmod(0o755)
    wrapper = scripts / "run.py"
    wrapper.write_text(
        f"import sys\nsys.executable = {str(slow)!r}\nfrom trapd.cli import main\n"
        "sys.exit(main(['run', '--config', sys.argv[1]]))\n"
    )
    d = TrapdDaemon(tmp_path / "trapd", free_port(), None)
    d.workdir.mkdir()
    d.rules_path.write_text("rules: []\n")
    d.write_config({"mibs": {"dirs": [str(mibs)]}, "service": {"workers": workers}})
    d.notify = notify = NotifySocket(tmp_path / "notify.sock")
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")}
    env["NOTIFY_SOCKET"] = notify.address
    d.proc = subprocess.Popen(
        [sys.executable, str(wrapper), str(d.config_path)], cwd=d.workdir, env=env,
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    threading.Thread(target=d._read_log, args=(d.proc,), daemon=True).start()
    try:
        assert "compiling site MIBs" in notify.wait_for("STATUS", 30)["STATUS"]
    except BaseException:
        d.close()
        raise
    return d, slow


def processes_of(script: Path) -> list[int]:
    import subprocess

    out = subprocess.run(["pgrep", "-f", str(script)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_while_site_mibs_compile_stops_trapd_and_the_compiler_at_once(
    tmp_path: Path, workers: int
) -> None:
    """The first start after a site MIB bundle is added compiles it (minutes for a vendor's whole
    bundle). `systemctl stop` meanwhile: a lone trapd, its loop blocked in the compile, took no
    notice until the compile ended (the unit's TimeoutStopSec, 60 s, then SIGKILL); the
    supervisor of several workers died at once but left the compiler running (up to 10 minutes
    and 600 MB) until systemd's final SIGKILL. Here a compiler that would take 5 minutes: trapd
    and the compiler must both be gone within seconds of SIGTERM."""
    import os
    import time

    d, slow = start_compiling(tmp_path, workers, 300)
    try:
        eventually(lambda: processes_of(slow) or None)
        assert processes_of(slow)
        stopped = time.monotonic()
        d.signal(signal.SIGTERM)
        # Bounds well under the compile's 300 s and systemd's 60 s before SIGKILL, not a few
        # seconds: the two-worker case failed once on a machine at load 14 (where, not recorded),
        # and shutting two workers down there can take longer than the 10 s this allowed.
        rc = d.wait_exit(50)
        assert rc in (0, -signal.SIGTERM), rc  # both are a clean stop to systemd
        assert time.monotonic() - stopped < 50

        def no_compiler() -> None:
            assert not processes_of(slow)

        eventually(no_compiler, 30)
    finally:
        for pid in processes_of(slow):
            os.kill(pid, signal.SIGKILL)
        d.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_sighup_while_site_mibs_compile_is_a_reload_after_the_start(tmp_path: Path, workers: int) -> None:
    """A SIGHUP before the signal handlers of the loop are there (`kill -HUP` by a deploy script
    while the first start compiles site MIBs): the supervisor of several workers died of it,
    which systemd counts as a clean exit, so Restart=on-failure did not bring it back. It is now
    kept and done as a reload once trapd is ready."""
    d, _ = start_compiling(tmp_path, workers, 3)
    try:
        assert d.notify is not None
        d.signal(signal.SIGHUP)
        d.notify.wait_for("READY", 60)
        d.notify.wait_for("RELOADING", 30)
        d.notify.wait_for("READY", 30)
        assert d.poll() is None
        assert d.stop() == 0
    finally:
        d.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_while_a_reload_compiles_site_mibs_stops_trapd_and_the_compiler_at_once(
    tmp_path: Path, workers: int
) -> None:
    """A reload after a MIB file changed compiles it in a thread of trapd's (the supervisor's with
    workers), in a child process. `systemctl stop` meanwhile: the reload was cancelled, but the
    thread still waited for its compiler (up to 10 minutes), and trapd's exit waited for the
    thread: the unit's stop timeout, then systemd's SIGKILL. Here a compiler that would take
    5 minutes: trapd and the compiler must both be gone within seconds of SIGTERM."""
    import os
    import time

    d, slow = start_compiling(tmp_path, workers, 0)
    try:
        assert d.notify is not None
        d.notify.wait_for("READY", 60)
        slow.write_text(slow.read_text().replace("time.sleep(0)", "time.sleep(300)"))
        (tmp_path / "mibs" / "SITE-MIB.my").write_text(
            "SITE-MIB DEFINITIONS ::= BEGIN\nIMPORTS enterprises FROM SNMPv2-SMI;\n"
            "site OBJECT IDENTIFIER ::= { enterprises 99991 }\nEND\n"
        )
        d.signal(signal.SIGHUP)
        eventually(lambda: processes_of(slow) or None, 30)
        stopped = time.monotonic()
        d.signal(signal.SIGTERM)
        rc = d.wait_exit(60)
        assert rc == 0, rc
        assert time.monotonic() - stopped < 15, time.monotonic() - stopped

        def no_compiler() -> None:
            assert not processes_of(slow)

        eventually(no_compiler, 10)
        # The cancelled reload is neither a failure nor READY=1 after STOPPING=1.
        assert not d.logs("reload failed, keeping the running configuration")
        d.notify.pending()
        messages = d.notify.messages
        stopping = next(i for i, m in enumerate(messages) if "STOPPING" in m)
        assert not [m for m in messages[stopping:] if "READY" in m], messages[stopping:]
    finally:
        for pid in processes_of(slow):
            os.kill(pid, signal.SIGKILL)
        d.close()
