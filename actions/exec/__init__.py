"""exec: run a program with an argv list, never through a shell.

Each element of ``argv`` becomes exactly one argument of the program, as
rendered by the rule: a varbind value of ``; rm -rf /`` or ``$(reboot)`` or
one with a newline reaches the program as that literal text in one
argument, because no shell ever parses it.

Its parameters are declared once, in the ``Param`` list of :func:`exec_`
(``trapd actions exec`` prints them; the README's table is generated).

Exit status: 0 is success. A status in ``retry_exit_codes``, death by a
signal (an OOM kill, say) or the timeout are retryable failures; any other
non-zero status is a permanent failure (a script that fails the same way
every time should not run five times). Exec actions are not idempotent to
the dispatcher: a rule that runs an idempotent program may still get
retries, set ``retry: {max_attempts: 1}`` to forbid them.

Environment: a clean one, not trapd's: ``PATH``, ``LANG=C.UTF-8``, then
``TRAPD_EVENT_ID``, ``TRAPD_SOURCE``, ``TRAPD_SOURCE_PORT``,
``TRAPD_VERSION``, ``TRAPD_KIND``, ``TRAPD_TRAP_OID``, ``TRAPD_TRAP_NAME``,
``TRAPD_UPTIME``, ``TRAPD_RULE``, ``TRAPD_ACTION_ID``, ``TRAPD_ATTEMPT``,
``TRAPD_EVENT`` (the whole event as JSON) and ``TRAPD_VB_<SYMBOL>`` for
each varbind (its display text; symbol upper-cased, other characters as
``_``; ``TRAPD_VB_IFINDEX=17``). NUL bytes, which an environment cannot
hold, become ``\\0``. Settings in trapd.yaml (``actions: {exec: {...}}``):
``path`` (PATH given to programs, also with ``inherit_env``), ``env`` (variables for every call),
``inherit_env: true`` (start from trapd's environment instead).

Example::

    - action: exec
      argv: [/usr/local/bin/port-down, "{{ source }}", "{{ ifIndex }}"]
      timeout: 10s
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import re
import signal
import subprocess
import threading
from collections.abc import Mapping
from typing import Any

from trapd.event import Event
from trapd.params import Param
from trapd.plugin import ActionContext, PermanentError, RetryableError, action
from trapd.secrets import REDACTOR, Secret

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
VALUE_LIMIT = 4096  # characters per TRAPD_VB_* variable
EVENT_LIMIT = 100_000  # TRAPD_EVENT is left out beyond this (Linux caps one string at 128 KiB)
RESULT_LIMIT = 2048  # characters of stdout / stderr kept in the journal's result
KILL_WAIT = 5.0  # seconds a cancelled run waits for its SIGKILLed program to exit (a D-state process may not)
# The service manager's channel to trapd's own process, never a program's (inherit_env: true):
# with it a program that speaks sd_notify (systemd-notify in a script) spoke for trapd's unit.
SERVICE_MANAGER = frozenset(
    {"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"}
)
_NAME = re.compile(r"[^A-Z0-9_]")
# What starting the program fails with when the rule (its argv, cwd) or the file is at fault.
_CANNOT_RUN = frozenset(
    {
        errno.ENOENT,  # no such program or cwd
        errno.EACCES,  # not executable, or a directory on the way not searchable
        errno.EPERM,
        errno.ENOTDIR,  # cwd (or a directory of the program's path) is a file
        errno.EISDIR,
        errno.ENOEXEC,  # a script without #!, a binary for another architecture
        errno.E2BIG,  # argv and environment over the kernel's limit (one argument over 128 KiB)
        errno.ELOOP,
        errno.ENAMETOOLONG,
    }
)


@action(
    "exec",
    params={
        "argv": Param(
            "list",
            "program and arguments, one element each; argv[0] is looked up in the programs' PATH"
            " unless it has a /",
            required=True,
            item="string",
            max_length=8192,
        ),
        "timeout": Param(
            "duration",
            "the program and its whole process group are killed after this (a retryable failure)",
            default=30.0,
            min=0.001,
            max=86400,
        ),
        "env": Param(
            "mapping",
            "extra environment variables for this call; secret: a constant or {env: NAME} / {file: PATH}"
            " value is journaled as a reference to where it is written, never as its value",
            secret=True,
        ),
        "cwd": Param("string", "working directory (default: trapd's, normally /)"),
        "output_limit": Param(
            "integer",
            "bytes of stdout and of stderr kept for the log; the rest is read and dropped",
            default=65536,
            min=0,
            max=2**24,
        ),
        "retry_exit_codes": Param(
            "list",
            'exit statuses that mean "try again later" (75 = EX_TEMPFAIL)',
            item="integer",
            default=[75],
        ),
    },
    idempotent=False,
    settings={
        "path": Param("string", "PATH given to programs", max_length=4096),
        "env": Param("mapping", "variables for every call (secrets: masked in every log line)"),
        "inherit_env": Param(
            "boolean", "start from trapd's environment instead of a clean one", default=False
        ),
    },
)
async def exec_(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Run a program with an argv list (never a shell), the event in TRAPD_* variables.

    Exit 0 is success; a status in ``retry_exit_codes``, a signal or the
    timeout are retried; any other status is a permanent failure. See
    actions/exec/README.md.

    Example::

        - action: exec
          argv: [/usr/local/bin/port-down, "{{ source }}", "{{ ifIndex }}"]
          timeout: 10s
    """
    argv = [str(a) for a in params["argv"]]
    if not argv or not argv[0]:
        raise PermanentError("argv is empty")
    timeout = float(params.get("timeout", 30.0))
    limit = int(params.get("output_limit", 65536))
    retry_codes = set(params.get("retry_exit_codes", [75]))
    env = build_env(ctx, params.get("env") or {})
    loop = asyncio.get_running_loop()
    # Recorded before it starts and while it runs: should trapd die meanwhile, its group is ended
    # before the action runs again, never left running beside its rerun (trapd.programs).
    programs = ctx.programs
    if programs is not None and not programs.starting(ctx.action_id, ctx.event.id):
        ctx.log.warning(
            "cannot record the program's process group: should trapd die while it runs, its rerun"
            " may start beside it",
            program=argv[0],
            directory=str(programs.directory),
        )
    try:
        program = _Program.start(loop, argv, env, params.get("cwd") or None, limit)
    except OSError as exc:
        if programs is not None:
            programs.ended(ctx.action_id)
        # exc.filename says which: the program, or a cwd that is missing or not a directory.
        which = f": {exc.filename}" if exc.filename and exc.filename != argv[0] else ""
        if exc.errno in _CANNOT_RUN:  # the same argv, program and cwd fail the same way next time
            raise PermanentError(f"cannot run {argv[0]}: {exc.strerror or exc}{which}") from None
        # fork() short of processes or memory, no file descriptor left: a passing condition.
        raise RetryableError(f"cannot start {argv[0]} now: {exc.strerror or exc}{which}") from None
    if programs is not None:
        programs.started(ctx.action_id, program.pid)
    out, err = program.out, program.err
    deadline = loop.time() + timeout
    try:
        # The exit, then the rest of the output, both by the deadline: a child the program left
        # behind may hold its pipes open for as long as it runs.
        exited = await _by(program.exited, deadline)
        read_all = exited and await _by(program.read, deadline)
        if not read_all:
            _kill_group(program.pid)  # the program at its timeout, or what it left holding its output
            await program.exited  # the program cannot leave its group (it leads its session)
    except asyncio.CancelledError:
        # dispatch.action_timeout or a shutdown. The program is ended and reaped before the
        # cancellation goes on (a loop closed right after it, at a shutdown, runs nothing more).
        _kill_group(program.pid)
        await _ended(program)
        raise
    finally:
        program.close()
        if programs is not None:
            programs.ended(ctx.action_id)
    if not exited:
        _log_output(ctx, argv, out, err, None)
        raise RetryableError(f"{argv[0]} timed out after {timeout:g}s and was killed")
    if not read_all:
        ctx.log.warning(
            "processes the program left behind held its output past the timeout: killed", program=argv[0]
        )
    code = program.returncode
    if code is None:  # reaped by someone else (SIGCHLD ignored): its status is lost
        raise RetryableError(f"{argv[0]} exited, but its exit status was lost")
    _log_output(ctx, argv, out, err, code)
    result = {"exit": code, "stdout": _text(out, RESULT_LIMIT), "stderr": _text(err, RESULT_LIMIT)}
    if code == 0:
        return result
    if code < 0:
        raise RetryableError(f"{argv[0]} was killed by signal {-code}")
    if code in retry_codes:
        raise RetryableError(f"{argv[0]} exited with {code} (retryable): {_last_line(err)}")
    raise PermanentError(f"{argv[0]} exited with {code}: {_last_line(err)}")


def build_env(ctx: ActionContext, extra: Mapping[str, Any]) -> dict[str, str]:
    """The program's environment: clean base, TRAPD_* from the event, then site and call extras."""
    settings = ctx.settings or {}
    env: dict[str, str] = {}
    if settings.get("inherit_env"):
        env = {k: v for k, v in os.environ.items() if k not in SERVICE_MANAGER}
    if settings.get("path"):  # set: it is the programs' PATH, inherited environment or not
        env["PATH"] = str(settings["path"])
    env.setdefault("PATH", DEFAULT_PATH)
    env.setdefault("LANG", "C.UTF-8")
    env.update(event_env(ctx.event))
    env.update(
        {
            "TRAPD_RULE": _clean(ctx.rule),
            "TRAPD_ACTION_ID": _clean(ctx.action_id),
            "TRAPD_ATTEMPT": str(ctx.attempt),
        }
    )
    for source in (settings.get("env") or {}, extra):
        for k, v in source.items():
            name = str(k)
            if not name or "=" in name or "\x00" in name:
                raise PermanentError(f"not a valid environment variable name: {name!r}")
            text = v.reveal() if isinstance(v, Secret) else "" if v is None else str(v)
            env[name] = _clean(text)
    return env


def event_env(event: Event) -> dict[str, str]:
    env = {
        "TRAPD_EVENT_ID": event.id,
        "TRAPD_SOURCE": event.source,
        "TRAPD_SOURCE_PORT": str(event.source_port),
        "TRAPD_VERSION": event.version,
        "TRAPD_KIND": event.kind,
        "TRAPD_TRAP_OID": ".".join(map(str, event.trap_oid)),
        "TRAPD_TRAP_NAME": _clean(event.trap_name),
        "TRAPD_UPTIME": "" if event.uptime is None else str(event.uptime),
    }
    shown = event.to_dict()
    doc = json.dumps(shown, separators=(",", ":"))
    if len(doc) <= EVENT_LIMIT:
        env["TRAPD_EVENT"] = doc
    # The display text to_dict gives: a v1 trap's snmpTrapCommunity.0 is "(secret)" there.
    for vb, vb_shown in zip(event.varbinds, shown["varbinds"], strict=True):
        name = "TRAPD_VB_" + _NAME.sub("_", vb.symbol.upper())
        env.setdefault(name, _clean(vb_shown["display"])[:VALUE_LIMIT])
    return env


def _clean(text: str) -> str:
    return text.replace("\x00", "\\0")


class _Output(bytearray):
    """A program's stdout or stderr as kept: its first output_limit bytes; ``cut`` if more came."""

    cut = False


class _Program:
    """A program started by :meth:`start`, its output read and its exit awaited on the event loop.

    Not the loop's own subprocess support: trapd runs on uvloop, whose spawn left the program
    copies of its stdout and stderr at other descriptors (and any descriptor trapd inherited
    without close-on-exec), so that a child the program started with its output sent elsewhere
    still held trapd's end open, and the action waited for it until its timeout. subprocess.Popen
    forks and executes with close_fds (the program gets 0, 1 and 2 alone, pipes) and resets the
    signals Python ignores. Its exit is awaited by a thread of its own (as asyncio's
    ThreadedChildWatcher does), on either loop.

    It is reaped only once the action is done with its group (:meth:`close`): until then its pid,
    which is the group's id, stays taken. Reaped as it exited (what the loops do), the pid was
    free while the action still waited for output a child held, and the kernel could give it to
    another process leading a group of its own (a daemon systemd starts does), which the
    action's timeout then SIGKILLed in the program's place.
    """

    def __init__(
        self, loop: asyncio.AbstractEventLoop, popen: subprocess.Popen[bytes], fds: list[int], limit: int
    ):
        self.pid = popen.pid
        self.returncode: int | None = None
        self.exited: asyncio.Future[None] = loop.create_future()
        self.read: asyncio.Future[None] = loop.create_future()  # both outputs at their end
        self.out, self.err = _Output(), _Output()
        self._loop = loop
        self._limit = limit
        self._popen = popen
        self._reaping = threading.Lock()
        self._zombie = False  # exited, not reaped yet
        self._closed = False
        self._open: dict[int, _Output] = dict(zip(fds, (self.out, self.err), strict=True))
        for fd in fds:
            os.set_blocking(fd, False)
            loop.add_reader(fd, self._readable, fd)
        threading.Thread(
            target=self._wait, args=(popen,), name=f"trapd-exec-{popen.pid}", daemon=True
        ).start()

    @classmethod
    def start(
        cls,
        loop: asyncio.AbstractEventLoop,
        argv: list[str],
        env: dict[str, str],
        cwd: str | None,
        limit: int,
    ) -> _Program:
        """The program started; OSError if it cannot be (fork or exec failed: Popen says which)."""
        fds: list[int] = []
        ours: list[int] = []
        try:
            for _ in range(2):
                r, w = os.pipe2(os.O_CLOEXEC)
                ours.append(r)
                fds.append(w)
            popen = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=fds[0],
                stderr=fds[1],
                env=env,
                cwd=cwd,
                close_fds=True,
                start_new_session=True,  # its own process group, so the timeout kills its children too
            )
        except BaseException:
            for fd in ours:
                os.close(fd)
            raise
        finally:
            for fd in fds:  # the program's ends: its own copies are 1 and 2
                os.close(fd)
        try:
            return cls(loop, popen, ours, limit)
        except Exception as exc:  # its watch cannot start (no thread left): nobody would reap it
            _kill_group(popen.pid)
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(KILL_WAIT)  # SIGKILLed: at once, unless in D state
            for fd in ours:
                with contextlib.suppress(OSError, ValueError, RuntimeError):
                    loop.remove_reader(fd)
                os.close(fd)
            raise OSError(errno.EAGAIN, f"{exc}") from exc

    def _wait(self, popen: subprocess.Popen[bytes]) -> None:
        """Wait for the exit without reaping (WNOWAIT); reap here only if the action is done."""
        code: int | None = None
        try:
            while True:
                try:
                    info = os.waitid(os.P_PID, popen.pid, os.WEXITED | os.WNOWAIT)
                    break
                except InterruptedError:
                    continue
            if info is not None:
                code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
        except ChildProcessError:  # reaped by someone else (SIGCHLD ignored): status lost
            pass
        with self._reaping:
            self._zombie = True
            if self._closed:
                self._reap(code)
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._exit, code)

    def _reap(self, code: int | None) -> None:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(self._popen.pid, 0)
        self._popen.returncode = code if code is not None else -1  # Popen's own __del__ leaves it

    def _exit(self, code: int | None) -> None:
        self.returncode = code
        if not self.exited.done():
            self.exited.set_result(None)

    def _readable(self, fd: int) -> None:
        """Read what is there, keeping the first ``limit`` bytes (there is the rest dropped)."""
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._stop_reading(fd)
            if not self._open and not self.read.done():
                self.read.set_result(None)
            return
        kept = self._open[fd]
        room = self._limit - len(kept)
        if len(chunk) > room:
            kept.cut = True
        if room > 0:
            kept += chunk[:room]

    def _stop_reading(self, fd: int) -> None:
        self._open.pop(fd, None)
        self._loop.remove_reader(fd)
        os.close(fd)

    def close(self) -> None:
        """Our ends of the output closed (a process out of the group's reach may hold the others),
        and the program reaped, now that its group is no longer killed (or, if it has not exited
        yet, by its thread as it exits)."""
        for fd in list(self._open):
            self._stop_reading(fd)
        if not self.read.done():
            self.read.cancel()
        with self._reaping:
            self._closed = True
            if self._zombie:
                self._reap(self.returncode)


async def _by(awaitable: asyncio.Future[None], deadline: float) -> bool:
    """Whether ``awaitable`` finished by ``deadline`` (loop time); it is not cancelled if not."""
    try:
        async with asyncio.timeout_at(deadline):
            await asyncio.shield(awaitable)
    except TimeoutError:
        return False
    return True


async def _ended(program: _Program) -> None:
    """Wait for a killed program's exit (SIGKILL: at once; bounded by KILL_WAIT for one in D state)."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(KILL_WAIT):
            await asyncio.shield(program.exited)


def _kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _text(data: _Output, length: int | None = None) -> str:
    """The output as text for the log, the result or an error, cut to ``length`` characters: the
    secrets in it masked (the program may print those it was given), and a start of one that a
    cut left (here, or at output_limit) too: the redactor masks them whole only."""
    return REDACTOR.cut(data.decode("utf-8", "replace"), length, complete=not data.cut)


def _last_line(data: _Output) -> str:
    lines = REDACTOR.cut(data.decode("utf-8", "replace"), complete=not data.cut).strip().splitlines()
    return REDACTOR.cut(lines[-1], 200) if lines else "(no output on stderr)"


def _log_output(ctx: ActionContext, argv: list[str], out: _Output, err: _Output, code: int | None) -> None:
    if out or err:
        ctx.log.info("program output", program=argv[0], exit=code, stdout=_text(out), stderr=_text(err))
