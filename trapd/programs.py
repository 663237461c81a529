"""The process groups that actions start, recorded so that none outlives the process that ran it.

An ``exec`` action's program runs in a session of its own, so that its timeout kills its
children too. That also takes it out of every clean-up of its parent: when the process running
the action dies (a worker SIGKILLed or OOM-killed under ``service.workers``, which the supervisor
forks again; a ``trapd run`` killed outside systemd), the program runs on, and the journal,
which finds the action ``running``, runs it again beside it (systemd's cgroup ends what is left
only when the whole unit stops). ``PR_SET_PDEATHSIG`` would reach the program alone, not the
children it started, and needs code run between fork and exec in a process with threads.

So each group is recorded in a file below the state directory (``programs/PID``) while its
action runs: the leader's pid, its start time (so that a pid the kernel has since given to
another process is not mistaken for it), the boot it was started in, the owner (the journal
owner: ``worker-1``; none for a lone trapd) and the action. Whoever recovers that owner's
interrupted actions (the restarted worker, the supervisor at start for every owner, a lone
trapd at start) first ends the groups its records name with SIGKILL, as the action's timeout
does, and waits (bounded) until they are gone: only then does the journal run the action again.
A program whose owner is alive is never touched. Host-local: a PostgreSQL journal's other host
that takes over a dead host's actions cannot reach its processes (docs/pair.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

from trapd.statedir import PRIVATE_FILE, make_private_dir

DIRECTORY = "programs"  # below state_dir
END_WAIT = 5.0  # seconds to wait for SIGKILLed groups to go (a process in D state may not at once)


class ProgramGroups:
    """The records of one owner (``None``: a lone trapd or the supervisor, which own them all)."""

    def __init__(self, state_dir: Path, owner: str | None) -> None:
        self.directory = state_dir / DIRECTORY
        self.owner = owner

    def started(self, pid: int, action_id: str) -> bool:
        """Record the group ``pid`` leads (a session leader: its pgid is its pid); False if the
        record could not be written (its program then runs unrecorded, as before)."""
        start = _start_time(pid)
        if start is None:  # gone already (reaped): nothing to record
            return True
        record = {"owner": self.owner, "action": action_id, "start": start, "boot": _boot_id()}
        try:
            make_private_dir(self.directory)
            fd = os.open(
                self.directory / str(pid), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE
            )
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(record))
        except OSError:
            return False
        return True

    def ended(self, pid: int) -> None:
        """The action is over: its record goes (whatever its group left running is its own)."""
        with contextlib.suppress(OSError):
            os.unlink(self.directory / str(pid))

    def end_left(self, wait: float = END_WAIT) -> int:
        """End the groups this owner's records name that still run; remove those records.

        Returns how many groups were killed. Blocking (reads /proc, waits up to ``wait``): run
        it in a thread from an event loop.
        """
        try:
            paths = [p for p in self.directory.iterdir() if p.name.isdigit()]
        except OSError:
            return 0
        boot = _boot_id()
        killed: list[int] = []
        for path in paths:
            try:
                record = json.loads(path.read_text())
                owner, start, recorded_boot = record.get("owner"), int(record["start"]), record.get("boot")
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                owner, start, recorded_boot = self.owner, None, None  # unreadable: dropped
            if self.owner is not None and owner != self.owner:
                continue  # another live process's
            pid = int(path.name)
            if start is not None and recorded_boot == boot and _still_theirs(pid, start):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pid, signal.SIGKILL)
                    killed.append(pid)
            with contextlib.suppress(OSError):
                path.unlink()
        deadline = time.monotonic() + wait
        while killed and time.monotonic() < deadline and _members(set(killed)):
            time.sleep(0.01)
        return len(killed)


def _still_theirs(pid: int, start: int) -> bool:
    """Whether group ``pid`` is still the one recorded. Its leader alive: if its start time is the
    recorded one. Its leader gone: the kernel gives no process a pid still in use as a group's
    id, so a member of group ``pid`` started since the leader was is one it left (unless the
    whole group ended, the pid went to a process that made a group of its own and died, leaving
    members: a pid reused twice while trapd was down)."""
    leader = _start_time(pid)
    if leader is not None:
        return leader == start
    return any(member_start >= start for member_start in _members({pid}).values())


def _members(groups: set[int]) -> dict[int, int]:
    """Live processes (zombies are not) in one of ``groups``: pid -> start time."""
    found: dict[int, int] = {}
    with contextlib.suppress(OSError):
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            fields = _stat(int(name))
            if fields is not None and fields[0] != "Z" and int(fields[2]) in groups:
                found[int(name)] = int(fields[19])
    return found


def _stat(pid: int) -> list[str] | None:
    """/proc/PID/stat's fields after the command name (state first), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode("ascii", "replace")
    except OSError:
        return None
    return text.rsplit(")", 1)[1].split()


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), or None if it is gone."""
    fields = _stat(pid)
    return None if fields is None else int(fields[19])


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None
