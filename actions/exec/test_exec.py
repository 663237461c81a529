"""exec: argv without a shell, the TRAPD_* environment, exit statuses, timeouts, bounded output."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import pytest
from trapd_actions.exec import exec_

from trapd.params import validate
from trapd.plugin import PermanentError, RetryableError
from trapd.testing import make_context, make_event, rule_file_problems

HOSTILE = ["; rm -rf /", "$(reboot)", "line one\nline two", "`id`", "' \" \\ | & > /tmp/x", "*", ""]
PRINT_ARGV = "import sys, json; print(json.dumps(sys.argv[1:]))"


async def run(**params: object) -> dict[str, object]:
    ctx = make_context(
        make_event(
            source="192.0.2.7",
            varbinds=[
                ("IF-MIB::ifIndex", "Integer32", 17),
                ("IF-MIB::ifDescr", "OctetString", b"$(reboot)\nx\x00y"),
            ],
        )
    )
    result = await exec_.run(validate(exec_.params, params), ctx)
    assert result is not None
    return dict(result)


async def test_hostile_values_arrive_as_single_arguments(tmp_path: Path) -> None:
    result = await run(argv=[sys.executable, "-c", PRINT_ARGV, *HOSTILE], cwd=str(tmp_path))
    assert result["exit"] == 0
    assert json.loads(str(result["stdout"])) == HOSTILE
    assert list(tmp_path.iterdir()) == []  # nothing was redirected or created


async def test_event_fields_in_the_environment() -> None:
    code = "import os, json; print(json.dumps({k: v for k, v in os.environ.items()}))"
    result = await run(argv=[sys.executable, "-c", code], env={"EXTRA": "1"})
    env = json.loads(str(result["stdout"]))
    assert env["TRAPD_SOURCE"] == "192.0.2.7"
    assert env["TRAPD_TRAP_NAME"] == "IF-MIB::linkDown"
    assert env["TRAPD_VB_IFINDEX"] == "17"
    assert env["TRAPD_VB_IFDESCR"] == "$(reboot)\nx\\0y"  # literal text; the NUL made visible
    assert json.loads(env["TRAPD_EVENT"])["source"] == "192.0.2.7"
    assert env["TRAPD_RULE"] == "test-rule" and env["TRAPD_ATTEMPT"] == "1"
    assert env["EXTRA"] == "1"
    assert "HOME" not in env  # a clean environment, not trapd's


async def test_exit_statuses() -> None:
    with pytest.raises(RetryableError, match="exited with 75"):
        await run(argv=[sys.executable, "-c", "import sys; sys.exit(75)"])
    with pytest.raises(PermanentError, match="exited with 3: broken"):
        await run(argv=[sys.executable, "-c", "import sys; print('broken', file=sys.stderr); sys.exit(3)"])
    with pytest.raises(RetryableError, match="exited with 3"):
        await run(argv=[sys.executable, "-c", "import sys; sys.exit(3)"], retry_exit_codes=[3])
    with pytest.raises(RetryableError, match="signal 9"):
        await run(argv=[sys.executable, "-c", "import os; os.kill(os.getpid(), 9)"])
    with pytest.raises(PermanentError, match="cannot run"):
        await run(argv=["/nonexistent/program"])


async def test_timeout_kills_the_process_group(tmp_path: Path) -> None:
    marker = tmp_path / "survived"
    script = f"sleep 0.6; touch {marker}"
    t0 = time.monotonic()
    with pytest.raises(RetryableError, match="timed out"):
        await run(argv=["/bin/sh", "-c", script], timeout=0.2)
    assert time.monotonic() - t0 < 0.5
    time.sleep(0.6)
    assert not marker.exists()  # the sleeping child died with its shell


async def test_output_is_bounded() -> None:
    code = "import sys; sys.stdout.write('x' * 2_000_000); sys.stderr.write('y' * 10)"
    result = await run(argv=[sys.executable, "-c", code], output_limit=1000)
    assert result["exit"] == 0
    assert len(str(result["stdout"])) == 1000 and result["stderr"] == "y" * 10


def test_example_yaml_is_a_valid_rule_file() -> None:
    assert rule_file_problems(Path(__file__).with_name("example.yaml")) == []


def _gone(pid: int) -> bool:
    """The process has ended (a zombie waiting for its reaper counts as ended)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].startswith("Z")
    except (FileNotFoundError, ProcessLookupError):
        return True


async def test_a_background_child_holding_stdout_ends_at_the_timeout(tmp_path: Path) -> None:
    # The program exits at once; the child it left behind keeps its stdout open for 60 s.
    pidfile = tmp_path / "pid"
    script = f"echo started; sleep 60 & echo $! > {pidfile}"
    t0 = time.monotonic()
    result = await asyncio.wait_for(run(argv=["/bin/sh", "-c", script], timeout=1), 15)
    assert time.monotonic() - t0 < 5
    assert result["exit"] == 0 and result["stdout"] == "started\n"  # the program's own outcome
    pid = int(pidfile.read_text())
    deadline = time.monotonic() + 10
    while not _gone(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert _gone(pid)  # killed with the program's process group


async def test_a_child_in_a_session_of_its_own_holding_stdout_ends_at_the_timeout(tmp_path: Path) -> None:
    # Out of the process group's reach (setsid): the action still ends at its timeout.
    pidfile = tmp_path / "pid"
    script = f"setsid sh -c 'echo $$ > {pidfile}; exec sleep 60' & sleep 5"
    try:
        t0 = time.monotonic()
        with pytest.raises(RetryableError, match="timed out after 1s"):
            await asyncio.wait_for(run(argv=["/bin/sh", "-c", script], timeout=1), 15)
        assert time.monotonic() - t0 < 5
    finally:
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(pidfile.read_text()), signal.SIGKILL)


async def test_cancelling_the_action_kills_the_process_group(tmp_path: Path) -> None:
    # dispatch.action_timeout or a shutdown cancels the action: nothing it started may live on.
    pidfile = tmp_path / "pid"
    task = asyncio.create_task(run(argv=["/bin/sh", "-c", f"sleep 60 & echo $! > {pidfile}; wait"]))
    deadline = time.monotonic() + 10
    while not pidfile.exists() or not pidfile.read_text().strip():
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    pid = int(pidfile.read_text())
    while not _gone(pid) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert _gone(pid)


async def test_a_missing_working_directory_is_named_not_the_program(tmp_path: Path) -> None:
    # The program is there; what is missing is cwd. The reason must not send the operator to the program.
    with pytest.raises(PermanentError, match=r"cannot run .*: No such file or directory: .*gone"):
        await run(argv=[sys.executable, "-c", "pass"], cwd=str(tmp_path / "gone"))


def test_a_cancelled_run_leaves_nothing_for_the_collector_after_the_loop_closed(tmp_path: Path) -> None:
    """Cancelled (dispatch.action_timeout, shutdown), the action returns with the program killed
    and reaped and its pipes closed: a loop closed right after the cancel runs nothing more, and
    the collector must then find nothing open (no ResourceWarning, no unraisable error)."""
    from trapd_actions import exec as exec_module

    pidfile = tmp_path / "pid"
    programs: list[Any] = []
    when_done: list[tuple[int | None, bool]] = []

    async def scenario() -> None:
        start = exec_module._Program.start

        def spy(*args: Any, **kwargs: Any) -> Any:  # records what the action gets, changes nothing
            program = start(*args, **kwargs)
            programs.append(program)
            return program

        exec_module._Program.start = spy  # type: ignore[method-assign]
        try:
            task = asyncio.create_task(run(argv=["/bin/sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"]))
            deadline = time.monotonic() + 10
            while not programs or not pidfile.exists() or not pidfile.read_text().strip():
                assert time.monotonic() < deadline
                await asyncio.sleep(0.02)
        finally:
            exec_module._Program.start = start  # type: ignore[method-assign]
        program = programs[0]

        def state(_: object) -> None:
            when_done.append((program.returncode, not program._open))

        task.add_done_callback(state)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    # Garbage of earlier tests in this process (an event loop left unclosed: its self-pipe is a pair
    # of unix sockets) is collected now, not inside the warnings caught below: under load the
    # collector had not run since, and this test failed on another test's "unclosed <socket ...>".
    gc.collect()
    unraisable: list[str] = []
    old_hook = sys.unraisablehook
    sys.unraisablehook = lambda u: unraisable.append(f"{u.exc_type.__name__}: {u.exc_value} in {u.object!r}")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResourceWarning)
            asyncio.run(scenario())  # closes its loop as soon as the cancelled action returns
            programs.clear()
            gc.collect()
    finally:
        sys.unraisablehook = old_hook
    assert unraisable == []
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert when_done == [(-signal.SIGKILL, True)]  # killed and reaped, its pipes closed, as it returned
    assert not Path(f"/proc/{int(pidfile.read_text())}").exists()  # killed and reaped


async def test_a_program_the_kernel_cannot_execute_is_permanent(tmp_path: Path) -> None:
    # An executable file the kernel cannot run (a script without #!, a binary for another
    # architecture): ENOEXEC, the same on every attempt.
    script = tmp_path / "no-shebang"
    script.write_text("echo hello\n")
    script.chmod(0o755)
    with pytest.raises(PermanentError, match=r"cannot run .*no-shebang: Exec format error"):
        await run(argv=[str(script)])


async def test_an_argument_list_too_long_is_permanent() -> None:
    # Linux refuses one argument over 128 KiB (E2BIG): the same argv fails the same way on retry.
    with pytest.raises(PermanentError, match=r"cannot run .*: Argument list too long"):
        await run(argv=[sys.executable, "-c", "pass", *(["x" * 8192] * 300)])


async def test_a_program_that_cannot_be_started_for_now_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    # fork() failing for want of processes or memory (EAGAIN, ENOMEM) is a passing condition:
    # retried, with a reason, not a traceback of an "unexpected" error.
    import errno
    import subprocess

    def no_fork(*args: Any, **kwargs: Any) -> Any:
        raise BlockingIOError(errno.EAGAIN, os.strerror(errno.EAGAIN))

    monkeypatch.setattr(subprocess, "Popen", no_fork)
    with pytest.raises(RetryableError, match=r"cannot start .*: Resource temporarily unavailable"):
        await run(argv=[sys.executable, "-c", "pass"])


async def test_the_path_setting_applies_with_an_inherited_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # inherit_env: true and path: /site/bin: the programs got trapd's PATH, the setting was dropped.
    from trapd.testing import run_action

    monkeypatch.setenv("PATH", "/trapd/own/path:" + os.environ["PATH"])
    code = "import os; print(os.environ['PATH'])"
    run = await run_action(
        exec_,
        {"argv": [sys.executable, "-c", code]},
        settings={"inherit_env": True, "path": "/site/bin:/usr/bin"},
    )
    assert run.result is not None and run.result["stdout"] == "/site/bin:/usr/bin\n"
    run = await run_action(exec_, {"argv": [sys.executable, "-c", code]}, settings={"inherit_env": True})
    assert run.result is not None and run.result["stdout"].startswith("/trapd/own/path:")  # none set: trapd's


FDS = "import os; print(sorted(int(f) for f in os.listdir('/proc/self/fd')))"


def test_on_trapds_own_loop_the_program_gets_its_stdio_alone(tmp_path: Path) -> None:
    """trapd runs on uvloop (trapd.listener.udp.best_loop_factory), whose spawn left the program
    copies of its stdout and stderr at other descriptors (20, 22, 24 in `trapd run`), sockets not
    pipes: a child the script started in the background with its output sent elsewhere (`daemon
    >/dev/null 2>&1 &`, the right way) still held the output, so the action waited for it until
    its timeout and then killed it. The program gets 0, 1 and 2 (the listing's own 3), pipes."""
    from trapd.listener.udp import run_on_best_loop

    async def scenario() -> tuple[dict[str, object], float, dict[str, object]]:
        listed = await run(argv=[sys.executable, "-c", FDS])
        t0 = time.monotonic()
        detached = await run(
            argv=["/bin/sh", "-c", "sleep 120 >/dev/null 2>&1 </dev/null & echo started"], timeout=60
        )
        return listed, time.monotonic() - t0, detached

    listed, took, detached = run_on_best_loop(scenario())
    assert json.loads(str(listed["stdout"])) == [0, 1, 2, 3]
    assert detached["stdout"] == "started\n"
    assert took < 30, took  # held by the background sleep, it waited for the 60 s timeout


async def test_an_inherited_environment_leaves_out_the_service_managers_channel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # inherit_env: true in a single `trapd run` under systemd: the program got NOTIFY_SOCKET and
    # WATCHDOG_USEC/WATCHDOG_PID (a worker of several removes them; a lone trapd did not), so a
    # program that speaks sd_notify (systemd-notify in a script, a daemon it starts) spoke for
    # trapd's unit: READY=1, STOPPING=1, MAINPID= where NotifyAccess allows it.
    from trapd.testing import run_action

    for name, value in {
        "NOTIFY_SOCKET": "/run/systemd/notify",
        "WATCHDOG_USEC": "30000000",
        "WATCHDOG_PID": str(os.getpid()),
        "LISTEN_FDS": "1",
        "LISTEN_PID": str(os.getpid()),
        "LISTEN_FDNAMES": "trapd",
        "SITE_VALUE": "kept",
    }.items():
        monkeypatch.setenv(name, value)
    code = (
        "import os, json; print(json.dumps("
        "[k for k in os.environ if k.startswith(('NOTIFY_', 'WATCHDOG_', 'LISTEN_', 'SITE_'))]))"
    )
    run = await run_action(exec_, {"argv": [sys.executable, "-c", code]}, settings={"inherit_env": True})
    assert run.result is not None
    assert json.loads(run.result["stdout"]) == ["SITE_VALUE"]


def _take_pid(pid: int, argv: list[str]) -> subprocess.Popen[bytes] | None:
    """A process started with exactly ``pid``, in a session of its own (its group's id is then
    ``pid``), made by setting the kernel's last pid; None if another fork took it first."""
    for _ in range(20):
        Path("/proc/sys/kernel/ns_last_pid").write_text(str(pid - 1))
        proc = subprocess.Popen(argv, start_new_session=True)
        if proc.pid == pid:
            return proc
        proc.kill()
        proc.wait()
    return None


@pytest.mark.skipif(os.geteuid() != 0, reason="setting ns_last_pid needs root")
async def test_a_group_is_never_killed_by_a_pid_the_kernel_gave_to_another_process(tmp_path: Path) -> None:
    # The program exits at once; a child in a session of its own keeps its output open, so the
    # action waits for its timeout and then kills the program's group. The program was reaped as
    # it exited, so its pid, the group's id, was free: a process started meanwhile with that pid
    # as its own group (a daemon systemd starts has one) was SIGKILLed at the timeout instead.
    pidfile = tmp_path / "pid"
    helper = tmp_path / "helper"
    script = f"echo $$ > {pidfile}; setsid sh -c 'echo $$ > {helper}; exec sleep 30' &"
    task = asyncio.create_task(run(argv=["/bin/sh", "-c", script], timeout=3))
    victim = None
    try:
        deadline = time.monotonic() + 10
        while not (pidfile.exists() and pidfile.read_text().strip() and helper.exists()):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        pid = int(pidfile.read_text())
        while not _gone_for_good(pid) and not _is_zombie(pid) and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
        if _gone_for_good(pid):  # reaped: the pid is free for another process
            victim = _take_pid(pid, ["sleep", "30"])
            if victim is None:
                pytest.skip("another process took the pid first")
        await asyncio.wait_for(task, 15)
        if victim is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                victim.wait(2)
            assert victim.returncode is None, "a process that took the program's pid was killed"
        assert victim is None  # the program stays unreaped while its group may be killed
    finally:
        if victim is not None:
            victim.kill()
            victim.wait()
        with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
            os.kill(int(helper.read_text()), signal.SIGKILL)


def _gone_for_good(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return False


async def test_a_program_whose_watch_cannot_start_is_ended_not_left_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The thread that waits for the program cannot start (the unit's task limit reached, memory):
    # the program was already running, and the action failed as an unexpected error, to be retried
    # beside it, with nobody to reap it, read its output or kill it at its timeout.
    import threading

    pidfile = tmp_path / "pid"

    def no_thread(self: threading.Thread) -> None:
        deadline = time.monotonic() + 10
        while not (pidfile.exists() and pidfile.read_text().strip()):  # the program runs
            assert time.monotonic() < deadline
            time.sleep(0.01)
        raise RuntimeError("can't start new thread")

    monkeypatch.setattr(threading.Thread, "start", no_thread)
    with pytest.raises(RetryableError, match=r"cannot start .* now: can't start new thread"):
        await run(argv=["/bin/sh", "-c", f"echo $$ > {pidfile}; exec sleep 60"])
    assert _gone_for_good(int(pidfile.read_text()))  # killed and reaped
