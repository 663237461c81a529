"""An ``exec`` action's program does not outlive the process that ran it into its rerun.

A worker SIGKILLed under ``service.workers: 2`` (the supervisor forks it again), or a lone
``trapd run`` SIGKILLed and started again: the action was ``running``, so the journal runs it
again. The program of the first run (in a session of its own, out of reach of the kernel's
clean-up of its parent) must be ended before that rerun starts, children and all: never two
copies side by side. Real processes: the program holds a flock for as long as it (or the child it
left sleeping) runs, and writes ``overlap`` when it starts while another copy holds it.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import time
from pathlib import Path

import pytest
from daemon_harness import TrapdDaemon, eventually, link_down
from listen_harness import needs_netsnmp, snmp_send

pytestmark = [pytest.mark.integration, needs_netsnmp]

# $$ is the program (the group's leader); the sleep is a child in its group that also holds the lock.
SCRIPT = (
    'exec 9>>"$1"; if ! flock -n 9; then echo "overlap $$" >> "$2"; fi; '
    'echo "start $$" >> "$2"; sleep 60; echo "end $$" >> "$2"'
)
RULES = """\
rules:
  - name: long
    match:
      notification: IF-MIB::linkDown
    actions:
      - action: exec
        argv: [/bin/sh, -c, '{script}', sh, {lock}, {marks}]
        timeout: 120s
"""


def marks_of(path: Path) -> list[tuple[str, int]]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [(word, int(pid)) for word, pid in (line.split() for line in lines)]


def group_members(pgid: int) -> list[int]:
    """Live processes (not zombies) whose process group is ``pgid``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                found.append(int(entry.name))
    return found


def kill_groups(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def running_owner(d: TrapdDaemon) -> str | None:
    path = d.state_dir / "journal.sqlite"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        rows = db.execute("SELECT owner FROM actions WHERE state = 'running'").fetchall()
    assert len(rows) == 1, rows
    return rows[0][0]  # type: ignore[no-any-return]


def started(marks: Path, count: int) -> list[int]:
    def enough() -> list[int]:
        pids = [pid for word, pid in marks_of(marks) if word == "start"]
        assert len(pids) >= count, marks_of(marks)
        return pids

    return eventually(enough, 30)


def check_one_at_a_time(marks: Path, first: int, second: int) -> None:
    assert second != first
    assert not [m for m in marks_of(marks) if m[0] == "overlap"], marks_of(marks)
    # The first run's program and the child it left are gone; the rerun runs.
    assert group_members(first) == []
    assert group_members(second) != []


def rules_for(tmp_path: Path) -> tuple[str, Path]:
    marks = tmp_path / "marks"
    lock = tmp_path / "lock"
    return RULES.format(script=SCRIPT, lock=lock, marks=marks), marks


def test_a_killed_workers_program_is_ended_before_its_rerun(tmp_path: Path) -> None:
    rules, marks = rules_for(tmp_path)
    config = {"service": {"workers": 2}, "dispatch": {"shutdown_timeout": "1s"}}
    d = TrapdDaemon.start(tmp_path, rules=rules, config=config)
    pids: list[int] = []
    try:
        snmp_send("snmptrap", *link_down(d.target(), 5), check=True)
        pids = started(marks, 1)
        owner = running_owner(d)
        assert owner is not None and owner.startswith("worker-")
        index = int(owner.rsplit("-", 1)[1])
        victim = {int(e["worker"]): int(e["pid"]) for e in d.logs("worker started")}[index]
        os.kill(victim, signal.SIGKILL)
        d.wait_log(lambda e: e.get("event") == "worker ready" and e.get("pid") not in (None, victim), 30)
        pids = started(marks, 2)
        check_one_at_a_time(marks, pids[0], pids[1])
        assert d.stop(30) == 0
    finally:
        d.close()
        kill_groups(pids)


def test_a_killed_trapd_runs_program_is_ended_before_its_rerun(tmp_path: Path) -> None:
    rules, marks = rules_for(tmp_path)
    d = TrapdDaemon.start(tmp_path, rules=rules, config={"dispatch": {"shutdown_timeout": "1s"}})
    pids: list[int] = []
    try:
        snmp_send("snmptrap", *link_down(d.target(), 5), check=True)
        pids = started(marks, 1)
        d.signal(signal.SIGKILL)
        d.wait_exit(10)
        assert group_members(pids[0]) != []  # nothing ended it with trapd (no systemd here)
        d.launch()
        d.wait_log("trapd ready", 30, count=2)
        pids = started(marks, 2)
        check_one_at_a_time(marks, pids[0], pids[1])
        assert d.stop(30) == 0
    finally:
        d.close()
        kill_groups(pids)


def test_recorded_groups_are_ended_only_for_their_owner_and_only_if_still_theirs(tmp_path: Path) -> None:
    """The records themselves: another owner's group is left alone, and a record whose process is
    not the one recorded (its pid reused) ends nothing."""
    import subprocess

    from trapd.programs import ProgramGroups

    procs = [
        subprocess.Popen(["/bin/sh", "-c", "sleep 60 & sleep 60"], start_new_session=True) for _ in range(3)
    ]
    try:
        mine, theirs, reused = (p.pid for p in procs)

        def up() -> list[int]:
            sizes = [len(group_members(p.pid)) for p in procs]
            assert min(sizes) >= 2, sizes  # the shell and its background sleep at least
            return sizes

        sizes = eventually(up, 10)
        for owner, action, pid in (
            ("worker-0", "1", mine),
            ("worker-1", "2", theirs),
            ("worker-0", "3", reused),
        ):
            assert ProgramGroups(tmp_path, owner).starting(action, "ev")
            assert ProgramGroups(tmp_path, owner).started(action, pid)
        record = tmp_path / "programs" / "3"
        fields = json.loads(record.read_text())
        fields["start"] -= 1  # as if another process had had this pid
        record.write_text(json.dumps(fields))

        t0 = time.monotonic()
        ended = ProgramGroups(tmp_path, "worker-0").end_left()
        assert time.monotonic() - t0 < 5
        assert ended == 1
        assert group_members(mine) == []
        assert len(group_members(theirs)) == sizes[1]
        assert len(group_members(reused)) == sizes[2]
        assert [p.name for p in (tmp_path / "programs").iterdir()] == ["2"]
        # A lone trapd (no owner) ends every record's group.
        assert ProgramGroups(tmp_path, None).end_left() == 1
        assert group_members(theirs) == []
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


def test_a_program_started_but_not_yet_recorded_is_found_by_its_marks(tmp_path: Path) -> None:
    """trapd killed after it announced the program and before it learnt its pid (the program may
    be well under way by then): the program is found by the action's marks in its environment,
    its group ended; another action's program (another event) is left alone."""
    import subprocess

    from trapd.programs import ProgramGroups

    def spawn(event: str) -> subprocess.Popen[bytes]:
        env = {"PATH": "/usr/bin:/bin", "TRAPD_ACTION_ID": "7", "TRAPD_EVENT_ID": event}
        return subprocess.Popen(["/bin/sh", "-c", "sleep 60 & sleep 60"], start_new_session=True, env=env)

    assert ProgramGroups(tmp_path, "worker-0").starting("7", "ev-1")
    procs = [spawn("ev-1"), spawn("ev-2")]
    try:

        def up() -> None:
            assert min(len(group_members(p.pid)) for p in procs) >= 2

        eventually(up, 10)
        assert ProgramGroups(tmp_path, "worker-0").end_left() == 1
        assert group_members(procs[0].pid) == []
        assert len(group_members(procs[1].pid)) >= 2
        assert list((tmp_path / "programs").iterdir()) == []
    finally:
        for p in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_second_trapd_on_the_same_state_dir_is_refused_before_it_touches_the_first_s_actions(
    tmp_path: Path, workers: int
) -> None:
    """`trapd run` started by hand while the service runs (same trapd.yaml): it refused to start
    only when it could not bind the trap port, after the journal's recovery had run, which put the
    live trapd's running actions back in line as if they had been interrupted and (with the
    programs' records) killed their programs. Now it is refused before anything, naming the pid."""
    import subprocess
    import sys

    rules, marks = rules_for(tmp_path)
    config: dict[str, object] = {"dispatch": {"shutdown_timeout": "1s"}}
    if workers > 1:
        config["service"] = {"workers": workers}
    d = TrapdDaemon.start(tmp_path, rules=rules, config=config)
    pids: list[int] = []
    try:
        snmp_send("snmptrap", *link_down(d.target(), 5), check=True)
        pids = started(marks, 1)
        second = subprocess.run(
            [sys.executable, "-m", "trapd", "run", "--config", str(d.config_path)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert second.returncode == 1, second.stdout[-2000:]
        failed = [json.loads(x) for x in second.stdout.splitlines() if '"start-up failed"' in x]
        assert failed and "another trapd is running" in failed[0]["error"], second.stdout[-2000:]
        assert str(d.proc.pid if d.proc else "") in failed[0]["error"]
        assert not [x for x in second.stdout.splitlines() if "dispatcher starting" in x or "interrupted" in x]
        # The first trapd's program runs on, its action still running in the journal.
        assert group_members(pids[0]) != []
        path = d.state_dir / "journal.sqlite"
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
            assert db.execute("SELECT state FROM actions").fetchall() == [("running",)]
        assert d.stop(30) == 0
    finally:
        d.close()
        kill_groups(pids)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root, as an admin's sudo trapd run")
def test_what_a_root_trapd_run_leaves_in_the_state_directory_stays_the_services(tmp_path: Path) -> None:
    """`sudo trapd run` on the service's state directory (to debug): the lock file and the
    programs' records it made were root's 0600, so the service (User=trapd) could not open the
    lock and refused to start, nor write or remove records. Left to the directory's owner, as the
    journal's files are (trapd.statedir.leave_to_state_owner)."""
    from trapd.programs import ProgramGroups
    from trapd.statedir import lock_state_dir

    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, 65534, 65534)  # nobody: the service's user
    fd = lock_state_dir(state)
    os.close(fd)
    assert ProgramGroups(state, None).starting("1", "ev")
    for path in (state / "trapd.lock", state / "programs", state / "programs" / "1"):
        assert (path.stat().st_uid, path.stat().st_gid) == (65534, 65534), path
