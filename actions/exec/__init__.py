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
    try:
        transport, watch = await _start(loop, argv, env, params.get("cwd") or None)
    except OSError as exc:
        # exc.filename says which: the program, or a cwd that is missing or not a directory.
        which = f": {exc.filename}" if exc.filename and exc.filename != argv[0] else ""
        if exc.errno in _CANNOT_RUN:  # the same argv, program and cwd fail the same way next time
            raise PermanentError(f"cannot run {argv[0]}: {exc.strerror or exc}{which}") from None
        # fork() short of processes or memory, no file descriptor left: a passing condition.
        raise RetryableError(f"cannot start {argv[0]} now: {exc.strerror or exc}{which}") from None
    proc = asyncio.subprocess.Process(transport, watch, loop)
    assert proc.stdout is not None and proc.stderr is not None
    # Recorded while the action runs: should trapd die meanwhile, the group is ended before the
    # action runs again, never left running beside its rerun (trapd.programs).
    if ctx.programs is not None and not ctx.programs.started(proc.pid, ctx.action_id):
        ctx.log.warning(
            "cannot record the program's process group: should trapd die while it runs, its rerun"
            " may start beside it",
            program=argv[0],
            directory=str(ctx.programs.directory),
        )
    out, err = _Output(), _Output()
    reading = asyncio.create_task(_read_output(proc.stdout, proc.stderr, limit, out, err))
    deadline = loop.time() + timeout
    try:
        # The exit, then the rest of the output, both by the deadline: a child the program left
        # behind may hold its pipes open for as long as it runs (proc.wait() waits for that too).
        exited = await _by(watch.exited, deadline)
        read_all = exited and await _by(reading, deadline)
        if not read_all:
            _kill_group(proc.pid)  # the program at its timeout, or what it left holding its output
            reading.cancel()
            await watch.exited  # the program cannot leave its group (it leads its session)
    except asyncio.CancelledError:
        # dispatch.action_timeout or a shutdown. The program and the reader are ended before the
        # cancellation goes on: a loop closed right after it (a shutdown) would never run what was
        # left to a callback, and the collector would then find the transport unclosed, with no
        # loop to close it on.
        _kill_group(proc.pid)
        reading.cancel()
        await _ended(watch, reading)
        raise
    finally:
        _close(transport, watch)
        if ctx.programs is not None:
            ctx.programs.ended(proc.pid)
    if not exited:
        _log_output(ctx, argv, out, err, None)
        raise RetryableError(f"{argv[0]} timed out after {timeout:g}s and was killed")
    if not read_all:
        ctx.log.warning(
            "processes the program left behind held its output past the timeout: killed", program=argv[0]
        )
    code = proc.returncode
    assert code is not None
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
    env: dict[str, str] = dict(os.environ) if settings.get("inherit_env") else {}
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


async def _start(
    loop: asyncio.AbstractEventLoop, argv: list[str], env: dict[str, str], cwd: str | None
) -> tuple[asyncio.SubprocessTransport, _ExitWatch]:
    """The program started, its pipes connected; OSError if it cannot be started.

    A cancel (dispatch.action_timeout, a shutdown) that arrives while asyncio connects the pipes,
    the program already running, is not left to asyncio: its clean-up kills the program alone,
    not its group, and then waits until every process holding the pipes has ended (a child the
    program started in the background: for as long as that runs, 60 s of ``sleep 60 &``). The
    start is let finish instead (a few turns of the loop), and the group killed as on any cancel.
    """
    start = asyncio.ensure_future(
        loop.subprocess_exec(
            lambda: _ExitWatch(loop),
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            cwd=cwd,
            start_new_session=True,  # its own process group, so the timeout kills its children too
        )
    )
    try:
        transport, watch = await asyncio.shield(start)
    except asyncio.CancelledError:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(KILL_WAIT):
                await asyncio.wait([start])
        if not start.done():  # a second cancel, or a loop too slow for KILL_WAIT: end it when it is up
            start.add_done_callback(_end_started)
        elif not start.cancelled() and start.exception() is None:
            transport, watch = start.result()
            _kill_group(transport.get_pid())
            await _ended(watch, None)
            _close(transport, watch)
        raise
    return transport, watch


def _end_started(start: asyncio.Future[tuple[asyncio.SubprocessTransport, _ExitWatch]]) -> None:
    if start.cancelled() or start.exception() is not None:
        return
    transport, watch = start.result()
    _kill_group(transport.get_pid())
    _close(transport, watch)


def _close(transport: asyncio.SubprocessTransport, watch: _ExitWatch) -> None:
    """Our ends of the pipes (a process out of the group's reach may hold the others), closed
    once the program has exited: closing first would reap it behind asyncio's child watcher."""
    if watch.exited.done():
        transport.close()
    else:  # only if it outlived KILL_WAIT after SIGKILL, or a second cancel cut the wait short
        watch.exited.add_done_callback(lambda _: transport.close())


class _ExitWatch(asyncio.subprocess.SubprocessStreamProtocol):
    """Says when the program exits: Process.wait() also waits until its pipes are closed."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(limit=2**16, loop=loop)
        self.exited: asyncio.Future[None] = loop.create_future()

    def process_exited(self) -> None:
        super().process_exited()
        if not self.exited.done():
            self.exited.set_result(None)


async def _by(awaitable: asyncio.Future[Any] | asyncio.Task[None], deadline: float) -> bool:
    """Whether ``awaitable`` finished by ``deadline`` (loop time); it is not cancelled if not."""
    try:
        async with asyncio.timeout_at(deadline):
            await asyncio.shield(awaitable)
    except TimeoutError:
        return False
    return True


class _Output(bytearray):
    """A program's stdout or stderr as kept: its first output_limit bytes; ``cut`` if more came."""

    cut = False


async def _read_output(
    stdout: asyncio.StreamReader, stderr: asyncio.StreamReader, limit: int, out: _Output, err: _Output
) -> None:
    await asyncio.gather(_read_bounded(stdout, limit, out), _read_bounded(stderr, limit, err))


async def _read_bounded(stream: asyncio.StreamReader, limit: int, kept: _Output) -> None:
    """Read to the end, keeping the first ``limit`` bytes in ``kept`` (there if it is cut short)."""
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return
        room = limit - len(kept)
        if len(chunk) > room:
            kept.cut = True
        if room > 0:
            kept += chunk[:room]


async def _ended(watch: _ExitWatch, reading: asyncio.Task[None] | None) -> None:
    """Wait for a killed program's exit (SIGKILL: at once, bounded by KILL_WAIT) and its reader's end."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(KILL_WAIT):
            await asyncio.shield(watch.exited)
    if reading is not None:
        await asyncio.wait([reading])  # cancelled: it ends at its next turn


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
