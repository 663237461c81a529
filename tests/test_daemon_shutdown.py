"""SIGTERM (``systemctl stop``) with actions in flight: running ones finish, queued ones wait in the journal.

The journal is read with ``trapd journal list``, as an operator would.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from daemon_harness import TrapdDaemon, link_down
from listen_harness import needs_netsnmp, snmp_send

pytestmark = [pytest.mark.integration, needs_netsnmp]


def slow_rules(marks: Path, seconds: float) -> str:
    """linkDown -> a program that notes its start, sleeps, notes its end; one lane per ifIndex.

    How long it sleeps is read from a file when it runs (``marks.delay``): the journal keeps the
    argv rendered when the trap came, so a re-run can only be made quicker from outside.
    """
    delay = marks.with_suffix(".delay")
    delay.write_text(f"{seconds}\n")
    script = f"echo start $1 >> {marks}; sleep $(cat {delay}); echo end $1 >> {marks}"
    return f"""\
rules:
  - name: slow
    match:
      notification: IF-MIB::linkDown
    actions:
      - action: exec
        argv: [/bin/sh, -c, "{script}", sh, "{{{{ ifIndex }}}}"]
        timeout: 30s
        key: "port-{{{{ ifIndex }}}}"
"""


def marks_of(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def wait_marks(path: Path, word: str, count: int, timeout: float = 10.0) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        got = [m for m in marks_of(path) if m.startswith(word + " ")]
        if len(got) >= count or time.monotonic() > deadline:
            return got
        time.sleep(0.02)


def journal(d: TrapdDaemon) -> dict[str, list[int]]:
    """State -> action ids, from ``trapd journal list --state all --json`` as an operator would look."""
    cmd = [sys.executable, "-m", "trapd", "journal", "--state-dir", str(d.state_dir), "--json"]
    out = subprocess.run(
        [*cmd, "list", "--state", "all"], capture_output=True, text=True, timeout=30, check=True
    )
    states: dict[str, list[int]] = {}
    for line in out.stdout.splitlines():
        if line.strip():
            entry = json.loads(line)
            states.setdefault(entry["state"], []).append(int(entry["id"]))
    return states


def test_running_actions_finish_and_queued_ones_wait_for_the_next_start(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    d = TrapdDaemon.start(
        tmp_path,
        # 6 s: the six sends, the gauges' snapshot (refreshed each second) of 4 pending and 2
        # running, and the SIGTERM all come while the first two run, on a loaded machine too
        # (with 2 s they could end first: two more start, and the counts are off).
        rules=slow_rules(marks, 6.0),
        # A timeout far beyond the actions' 6 s: a shutdown that waited for the deadline instead
        # of the actions would miss wait_exit below, and one that stopped them would leave them
        # "running" in the journal.
        config={"dispatch": {"workers": 2, "shutdown_timeout": "120s"}},
    )
    try:
        for port in range(1, 7):
            snmp_send("snmptrap", *link_down(d.target(), port), check=True)
        started = wait_marks(marks, "start", 2)
        assert len(started) == 2, marks_of(marks)
        assert d.wait_metric("trapd_notifications_received_total", 6) == 6
        # The other four wait in the journal. The gauges are a snapshot refreshed every poll
        # interval (1 s): one taken before the two claims can already show 4 pending (the other
        # two outcomes not yet journaled), so wait for a snapshot of the whole state.
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            scrape = d.metrics()
            if (
                d.metric("trapd_journal_entries", scrape, state="pending") == 4
                and d.metric("trapd_journal_entries", scrape, state="running") == 2
            ):
                break
            time.sleep(0.1)
        assert d.metric("trapd_journal_entries", scrape, state="pending") == 4
        assert d.metric("trapd_journal_entries", scrape, state="running") == 2

        assert d.notify is not None
        d.notify.pending()
        d.signal(signal.SIGTERM)
        d.notify.wait_for("STOPPING", timeout=5)
        # While the two finish, /healthz is still served and says trapd is stopping.
        code, health = d.healthz()
        assert code == 503 and health["status"] == "stopping", health
        assert d.wait_exit(60) == 0

        # The two that were running finished; nothing new started after SIGTERM.
        assert sorted(wait_marks(marks, "end", 2, 0.1)) == sorted(m.replace("start", "end") for m in started)
        assert len(marks_of(marks)) == 4
        states = journal(d)
        assert {k: len(v) for k, v in states.items()} == {"done": 2, "pending": 4}, states

        # Next start: the four run, once each.
        marks.with_suffix(".delay").write_text("0.2\n")
        d.launch()
        d.wait_ready()
        ends = wait_marks(marks, "end", 6, timeout=15)
        assert sorted(int(m.split()[1]) for m in ends) == [1, 2, 3, 4, 5, 6]
        assert sorted(int(m.split()[1]) for m in marks_of(marks) if m.startswith("start")) == [
            1,
            2,
            3,
            4,
            5,
            6,
        ]
        assert d.wait_metric("trapd_actions_total", 4, plugin="exec", outcome="done") == 4
        assert {k: len(v) for k, v in journal(d).items()} == {"done": 6}
        assert d.stop() == 0
    finally:
        d.close()


def test_an_action_past_the_shutdown_timeout_is_stopped_and_runs_again(tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    d = TrapdDaemon.start(
        tmp_path,
        rules=slow_rules(marks, 600),
        config={"dispatch": {"workers": 2, "shutdown_timeout": "1s"}},
    )
    try:
        snmp_send("snmptrap", *link_down(d.target(), 9), check=True)
        assert wait_marks(marks, "start", 1) == ["start 9"]
        t0 = time.monotonic()
        assert d.stop() == 0
        # It gave the action its shutdown_timeout (a lower bound load cannot break), and did not
        # wait for the action's 600 s.
        assert 0.9 < time.monotonic() - t0 < 120
        d.wait_log("actions still running at shutdown: they will run again")
        # Its journal row still says running: the next start runs it again (exec is not idempotent,
        # which is what dispatch.interrupted: hold-unsafe is for).
        assert {k: len(v) for k, v in journal(d).items()} == {"running": 1}
        # The program's process group went with it: no "end" mark appears.
        time.sleep(0.3)
        assert marks_of(marks) == ["start 9"]

        marks.with_suffix(".delay").write_text("0\n")
        d.launch()
        d.wait_ready()
        assert wait_marks(marks, "end", 1) == ["end 9"]
        assert marks_of(marks) == ["start 9", "start 9", "end 9"]
        assert d.stop() == 0
    finally:
        d.close()


def test_a_reloaded_shutdown_timeout_waits_for_the_restart_as_the_log_says(tmp_path: Path) -> None:
    """dispatch settings need a restart (a reload logs "changed settings take effect at the next
    restart"), and the supervisor of several workers keeps the running ones for its stop deadline;
    the daemon's own stop took the reloaded dispatch.shutdown_timeout all the same (here: waited
    for the action, 8 s then, instead of the 1 s it runs with)."""
    marks = tmp_path / "marks"
    d = TrapdDaemon.start(
        tmp_path, rules=slow_rules(marks, 60), config={"dispatch": {"workers": 2, "shutdown_timeout": "1s"}}
    )
    try:
        d.write_config({"dispatch": {"workers": 2, "shutdown_timeout": "120s"}})
        d.signal(signal.SIGHUP)
        assert d.notify is not None
        d.notify.wait_for("READY", 10)
        d.wait_log("changed settings take effect at the next restart", 10)
        snmp_send("snmptrap", *link_down(d.target(), 9), check=True)
        assert wait_marks(marks, "start", 1) == ["start 9"]
        t0 = time.monotonic()
        assert d.stop() == 0
        # The 1 s it runs with (and a loaded machine's time to stop three processes), not the
        # action's 60 s (nor the reloaded 120 s).
        assert time.monotonic() - t0 < 15
        d.wait_log("actions still running at shutdown: they will run again")
    finally:
        d.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_stop_asks_systemd_for_the_time_shutdown_timeout_promises(tmp_path: Path, workers: int) -> None:
    """`dispatch.shutdown_timeout: 90s` (exec actions that need it) under the shipped
    TimeoutStopSec=60s: systemd SIGKILLed trapd (every worker, every action's program) at 60 s,
    marked the stop failed, and the actions ran again at the next start. After STOPPING=1 trapd
    now sends EXTEND_TIMEOUT_USEC= for the longest its stop can take, so the stop gets what
    trapd.yaml promises (systemd only ever extends: a shorter one changes nothing)."""
    config = {"dispatch": {"shutdown_timeout": "90s"}, "service": {"workers": workers}}
    d = TrapdDaemon.start(tmp_path, rules="rules: []\n", config=config)
    try:
        assert d.notify is not None
        d.notify.pending()
        d.signal(signal.SIGTERM)
        d.notify.wait_for("STOPPING", timeout=10)
        extend = d.notify.wait_for("EXTEND_TIMEOUT_USEC", timeout=10)
        # docs/service.md gives the figures: shutdown_timeout plus 20 s, plus 50 s with workers.
        assert int(extend["EXTEND_TIMEOUT_USEC"]) == (90 + (50 if workers > 1 else 20)) * 1_000_000, extend
        assert d.wait_exit(30) == 0
    finally:
        d.close()


STUBBORN = '''
import asyncio, contextlib, pathlib, sys
from trapd.plugin import action

@action("acme.stubborn", params={})
async def run(params, ctx):
    """Swallow every cancellation (a bare except: in a retry loop), for a minute."""
    pathlib.Path(ctx.settings["marker"]).write_text("started")
    for _ in range(1200):
        with contextlib.suppress(BaseException):
            await asyncio.sleep(0.05)
'''


def test_an_action_that_swallows_its_cancellation_does_not_hold_the_stop(tmp_path: Path) -> None:
    # Before, `systemctl stop` waited for the plugin's loop (here a minute; a loop without end:
    # until systemd's SIGKILL), with nothing in the log to say which action held it.
    import os

    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "acme_stubborn.py").write_text(STUBBORN)
    dist = plugin / "acme_stubborn-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: acme-stubborn\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[trapd.actions]\nacme.stubborn = acme_stubborn:run\n")
    marker = tmp_path / "started"
    rules = (
        "rules:\n  - name: stubborn\n    match: {notification: IF-MIB::linkDown}\n"
        "    actions:\n      - action: acme.stubborn\n"
    )
    pythonpath = os.pathsep.join(filter(None, [str(plugin), os.environ.get("PYTHONPATH", "")]))
    d = TrapdDaemon.start(
        tmp_path / "d",
        rules=rules,
        config={
            "actions": {"acme.stubborn": {"marker": str(marker)}},
            "dispatch": {"shutdown_timeout": "1s"},
        },
        env={"PYTHONPATH": pythonpath},
    )
    try:
        snmp_send("snmptrap", *link_down(d.target(), 3), check=True)
        deadline = time.monotonic() + 20
        while not marker.exists():
            assert time.monotonic() < deadline, d.log[-5:]
            time.sleep(0.05)
        t0 = time.monotonic()
        assert d.stop(timeout=40) == 0
        assert time.monotonic() - t0 < 20
        (line,) = d.logs("actions ignore their cancellation: left behind")
        assert line["actions"] == ["acme.stubborn"]
    finally:
        d.close()
