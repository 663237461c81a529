"""What an ``exec`` program gets from a running ``trapd run``, alone and as a worker of two.

Its descriptors: 0, 1 and 2 only (not the journal, the trap sockets, the metrics socket, the
supervisor's channel, the sd_notify socket, the log lock memfd; on uvloop, trapd's loop, the
program used to get copies of its output at other descriptors); its signals: none blocked, none
ignored; its environment, with ``inherit_env: true``: trapd's, without the service manager's
channel (NOTIFY_SOCKET, WATCHDOG_*); and no zombie left behind in trapd once the action is done.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from daemon_harness import TrapdDaemon, eventually, link_down
from listen_harness import needs_netsnmp, snmp_send

pytestmark = [pytest.mark.integration, needs_netsnmp]

# Programs that report on themselves, each started by trapd directly (a shell in between would
# change what it reports: its pipes, its signal mask while it waits).
RULES = """\
rules:
  - name: report
    match:
      notification: IF-MIB::linkDown
    actions:
      - action: exec
        argv: [/bin/ls, /proc/self/fd]
      - action: exec
        argv: [/bin/grep, -E, "^Sig(Blk|Ign)", /proc/self/status]
      - action: exec
        argv: [/usr/bin/env]
"""


SHOWN = ("NOTIFY_SOCKET", "WATCHDOG_", "LISTEN_", "SITE_")


def children_of(pid: int) -> list[tuple[int, str]]:
    """(pid, state) of the processes whose parent is ``pid``."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append((int(stat.parent.name), fields[0]))
    return found


@pytest.mark.parametrize("workers", [1, 2])
def test_an_exec_program_gets_its_stdio_default_signals_and_no_service_channel(
    tmp_path: Path, workers: int
) -> None:
    config = {"actions": {"exec": {"inherit_env": True}}, "dispatch": {"shutdown_timeout": "1s"}}
    if workers > 1:
        config["service"] = {"workers": workers}
    d = TrapdDaemon.start(
        tmp_path, rules=RULES, config=config, env={"SITE_VALUE": "x"}, watchdog_usec=30_000_000
    )
    try:
        snmp_send("snmptrap", *link_down(d.target(), 4), check=True)
        lines = {e["program"]: str(e["stdout"]) for e in d.wait_log("program output", 20, count=3)}
        # ls's own directory is its 3: nothing of trapd's.
        assert sorted(int(f) for f in lines["/bin/ls"].split()) == [0, 1, 2, 3], lines
        assert lines["/bin/grep"].split() == ["SigBlk:", "0000000000000000", "SigIgn:", "0000000000000000"]
        env = sorted(x for x in lines["/usr/bin/env"].splitlines() if x.startswith(SHOWN))
        assert env == ["SITE_VALUE=x"], env
        d.wait_log("action done", 10, count=3)
        # Reaped once done: nothing of the program left as a child of trapd (a zombie) or at all.
        assert d.proc is not None
        runners = [int(e["pid"]) for e in d.logs("worker started")] if workers > 1 else [d.proc.pid]

        def no_children() -> None:
            assert [c for r in runners for c in children_of(r)] == []

        eventually(no_children, 10)
        assert d.stop(30) == 0
    finally:
        d.close()
