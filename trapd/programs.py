"""The process groups that actions start, recorded so that none outlives the process that ran it.

An ``exec`` action's program runs in a session of its own, so that its timeout kills its
children too. That also takes it out of every clean-up of its parent: when the process running
the action dies (a worker SIGKILLed or OOM-killed under ``service.workers``, which the supervisor
forks again; a ``trapd run`` killed outside systemd), the program runs on, and the journal,
which finds the action ``running``, runs it again beside it (systemd's cgroup ends what is left
only when the whole unit stops). ``PR_SET_PDEATHSIG`` would reach the program alone, not the
children it started, and needs code run between fork and exec in a process with threads.

So each group is recorded in a file below the state directory (``programs/ACTION_ID``) while
its action runs: written before the program is started (the owner: the journal owner such as
``worker-1``, none for a lone trapd; the action and its event), then with the leader's pid and
its start time (so that a pid the kernel has since given to another process is not mistaken for
it), and the boot. Whoever recovers that owner's interrupted actions (the restarted worker, the
supervisor at start for every owner, a lone trapd at start) first ends the groups its records
name with SIGKILL, as the action's timeout does, and waits (bounded) until they are gone:
only then does the journal run the action again. A program whose owner is alive is never
touched. Host-local: a PostgreSQL journal's other host that takes over a dead host's actions
cannot reach its processes.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import time
from pathlib import Path
from typing import Any

from trapd.statedir import PRIVATE_FILE, leave_to_state_owner, make_private_dir

DIRECTORY = "programs"  # below state_dir
_UNSAFE = re.compile(r"[^0-9A-Za-z_-]")  # in an action id, for its record's file name
END_WAIT = 5.0  # seconds to wait for SIGKILLed groups to go (a process in D state may not at once)


class ProgramGroups:
    """The records of one owner (``None``: a lone trapd or the supervisor, which own them all)."""

    def __init__(self, state_dir: Path, owner: str | None) -> None:
        self.directory = state_dir / DIRECTORY
        self.owner = owner

    def starting(self, action_id: str, event_id: str) -> bool:
        """Record, before the program is started, that this action starts one; False if the
        record could not be written (the program then runs unrecorded).

        Written first so that no moment is left in which the program runs and nothing says so
        (the program may be well under way before the fork returns its pid to us): a record
        without a pid is resolved by the marks the program's environment carries,
        ``TRAPD_ACTION_ID`` and ``TRAPD_EVENT_ID`` (exec sets them).
        """
        return self._write(action_id, {"owner": self.owner, "action": action_id, "event": event_id})

    def started(self, action_id: str, pid: int) -> bool:
        """Add the pid of the program :meth:`starting` announced: the group it leads (a session
        leader: its pgid is its pid), with its start time so that a pid the kernel has given to
        another process since is not taken for it."""
        record = self._read(self._path(action_id))
        start = _start_time(pid)
        if record is None or start is None:  # not announced, or gone already (reaped)
            return record is not None
        return self._write(action_id, {**record, "pid": pid, "start": start})

    def ended(self, action_id: str) -> None:
        """The action is over: its record goes (whatever its group left running is its own)."""
        with contextlib.suppress(OSError):
            os.unlink(self._path(action_id))

    def _path(self, action_id: str) -> Path:
        return self.directory / _UNSAFE.sub("_", action_id)

    def _write(self, action_id: str, record: dict[str, Any]) -> bool:
        record["boot"] = _boot_id()
        try:
            make_private_dir(self.directory)
            path = self._path(action_id)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, PRIVATE_FILE)
            with os.fdopen(fd, "w") as f:
                f.write(json.dumps(record))
        except OSError:
            return False
        # Run as root (sudo trapd run) on the service's state: the service must still write here.
        leave_to_state_owner(self.directory, self.directory.parent)
        return True

    @staticmethod
    def _read(path: Path) -> dict[str, Any] | None:
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def end_left(self, wait: float = END_WAIT) -> int:
        """End the groups this owner's records name that still run; remove those records.

        Returns how many groups were killed. Blocking (reads /proc, waits up to ``wait``): run
        it in a thread from an event loop.
        """
        try:
            paths = list(self.directory.iterdir())
        except OSError:
            return 0
        boot = _boot_id()
        groups: set[int] = set()
        for path in paths:
            record = self._read(path)
            if record is not None and self.owner is not None and record.get("owner") != self.owner:
                continue  # another live process's
            if record is not None and record.get("boot") == boot:
                groups |= _groups_of(record)
            with contextlib.suppress(OSError):
                path.unlink()
        killed = []
        for pgid in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
                killed.append(pgid)
        deadline = time.monotonic() + wait
        while killed and time.monotonic() < deadline and _members(set(killed)):
            time.sleep(0.01)
        return len(killed)


def _groups_of(record: dict[str, Any]) -> set[int]:
    """The process groups a record names that still run: its pid's, if it is still the program
    recorded; without a pid (trapd died while the program started), those of the processes whose
    environment carries the action's marks."""
    try:
        if "pid" in record:
            pid, start = int(record["pid"]), int(record["start"])
            return {pid} if _still_theirs(pid, start) else set()
        marks = {f"TRAPD_ACTION_ID={record['action']}".encode(), f"TRAPD_EVENT_ID={record['event']}".encode()}
    except (KeyError, TypeError, ValueError):
        return set()  # not a record of ours: dropped
    found = set()
    for pid in _pids():
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = set(f.read().split(b"\0"))
        except OSError:
            continue
        fields = _stat(pid) if marks <= env else None
        if fields is not None and fields[0] != "Z":
            found.add(int(fields[2]))  # its group: the program's, or one a child of it made
    return found


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


def _pids() -> list[int]:
    try:
        return [int(name) for name in os.listdir("/proc") if name.isdigit()]
    except OSError:
        return []


def _members(groups: set[int]) -> dict[int, int]:
    """Live processes (zombies are not) in one of ``groups``: pid -> start time."""
    found: dict[int, int] = {}
    for pid in _pids():
        fields = _stat(pid)
        if fields is not None and fields[0] != "Z" and int(fields[2]) in groups:
            found[pid] = int(fields[19])
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
