"""SIGKILL a process that dispatches from the journal, restart it, and count effects.

The child is a small daemon-like script: it opens the journal, starts a
Dispatcher with the real ``exec`` plugin and (first run only) submits
actions whose effect is one line appended to a file: immediate ones that
take a while, ones that fail once and retry, delayed ones. It is killed
with SIGKILL several times at random moments, then allowed to finish.

What must hold: every acknowledged action has its effect; an action ran
more than once only if it was ``running`` in the journal at a kill (the
at-least-once window); all end ``done``.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

CHILD = r"""
import asyncio, sys, time
import structlog
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from trapd.dispatch.config import DispatchConfig, JournalConfig, RetryDefaults
from trapd.dispatch.dispatcher import Dispatcher
from trapd.dispatch.journal import SQLiteJournal
from trapd.dispatch.testing import make_event, make_outcome, plan
from trapd_actions.exec import exec_

journal_path, effects, mode = sys.argv[1], sys.argv[2], sys.argv[3]
APPEND = 'echo "$1" >> "$2"'
SLOW = 'sleep 0.05; echo "$1" >> "$2"'
FLAKY = 'if [ "$TRAPD_ATTEMPT" -lt 2 ]; then exit 75; fi; echo "$1" >> "$2"'

def action(tag, script, **kw):
    return plan("exec", {"argv": ["/bin/sh", "-c", script, "sh", tag, effects]}, key=tag, **kw)

async def main():
    config = DispatchConfig(workers=4, queue_size=20, shutdown_timeout=0.1,
                            journal=JournalConfig(poll_interval=0.05),
                            retry=RetryDefaults(max_attempts=5, backoff=0.15, jitter=0.0))
    journal = SQLiteJournal(journal_path)
    await journal.open()
    d = Dispatcher(config, journal, {"exec": exec_}, kea=None)
    await d.start()
    if mode == "submit":
        for i in range(24):
            await d.submit(make_event(), make_outcome(action(f"slow-{i}", SLOW)))
        for i in range(12):
            await d.submit(make_event(), make_outcome(action(f"flaky-{i}", FLAKY)))
        for i in range(12):
            await d.submit(make_event(), make_outcome(action(f"delayed-{i}", APPEND, delay=0.3 + 0.05 * i)))
        print("submitted", flush=True)
    else:
        print("resumed", flush=True)
    while True:
        counts = await journal.counts()
        if mode == "finish" and not any(counts[s] for s in ("scheduled", "pending", "running", "failed")):
            break
        await asyncio.sleep(0.05)
    await d.stop()
    await journal.close()
    print("finished", flush=True)

asyncio.run(main())
"""


def states(journal: Path) -> dict[str, str]:
    conn = sqlite3.connect(journal)
    try:
        rows = conn.execute("SELECT params, state FROM actions").fetchall()
    finally:
        conn.close()
    return {json.loads(p)["argv"][4]: s for p, s in rows}


def start(script: Path, journal: Path, effects: Path, mode: str) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, str(script), str(journal), str(effects), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if line not in ("submitted", "resumed"):
        proc.kill()
        proc.wait(5)
        raise AssertionError(f"child said {line!r}")
    return proc


@pytest.mark.parametrize("seed", [1, 2])
def test_sigkill_loses_nothing_and_repeats_only_running(tmp_path: Path, seed: int) -> None:
    rnd = random.Random(seed)
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    journal = tmp_path / "journal.sqlite"
    effects = tmp_path / "effects.txt"
    effects.touch()
    running_at_kill: Counter[str] = Counter()
    mode = "submit"
    for _ in range(3):
        proc = start(script, journal, effects, mode)
        time.sleep(rnd.uniform(0.02, 0.25))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        snapshot = states(journal)
        assert len(snapshot) == 48  # every acknowledged submit is in the journal
        running_at_kill.update(tag for tag, s in snapshot.items() if s == "running")
        mode = "resume"
    time.sleep(0.1)  # let orphaned `sh` children of the killed process finish their line
    last = subprocess.run(
        [sys.executable, str(script), str(journal), str(effects), "finish"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert last.returncode == 0, last.stderr[-2000:]
    final = states(journal)
    assert set(final.values()) == {"done"}, Counter(final.values())
    seen = Counter(effects.read_text().split())
    assert set(seen) == set(final), set(final) - set(seen)  # every action took effect
    for tag, n in seen.items():
        assert n <= 1 + running_at_kill[tag], f"{tag} ran {n} times, running at {running_at_kill[tag]} kills"


KEA_CHILD = r"""
import asyncio, sys
import structlog, yaml
structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
from pathlib import Path
from trapd.dispatch.config import BreakerConfig, DispatchConfig, JournalConfig, RetryDefaults
from trapd.dispatch.dispatcher import Dispatcher
from trapd.dispatch.journal import SQLiteJournal
from trapd.dispatch.testing import make_event, make_outcome, plan
from trapd.kea.client import KeaClients
from trapd.kea.config import KeaConfig
from trapd.plugin import load_actions
from trapd.yamlsource import load_yaml

journal_path, kea_yaml, mode, ips = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")

async def main():
    retry = RetryDefaults(max_attempts=1000, max_age=600, backoff=0.05, max_backoff=0.2)
    config = DispatchConfig(workers=4, shutdown_timeout=0.1, journal=JournalConfig(poll_interval=0.05),
                            retry=retry, breaker=BreakerConfig(failures=3, cool_down=0.2, max_cool_down=0.4))
    kea = KeaClients(KeaConfig.from_yaml(load_yaml(Path(kea_yaml).read_text()), Path(kea_yaml).parent))
    actions, _ = load_actions()
    journal = SQLiteJournal(journal_path)
    await journal.open()
    d = Dispatcher(config, journal, actions, kea)
    await d.start()
    if mode == "submit":
        for i, ip in enumerate(ips):
            delay = 0.3 + 0.02 * i if i % 3 == 0 else 0.0
            deletion = plan("kea.lease-del", {"ip-address": ip}, key=ip, delay=delay)
            await d.submit(make_event(), make_outcome(deletion))
        print("submitted", flush=True)
    else:
        print("resumed", flush=True)
    while True:
        counts = await journal.counts()
        if mode == "finish" and not any(counts[s] for s in ("scheduled", "pending", "running", "failed")):
            break
        await asyncio.sleep(0.05)
    await d.stop()
    await kea.aclose()
    await journal.close()

asyncio.run(main())
"""


@pytest.mark.integration
def test_sigkill_with_kea_down_then_up_deletes_every_lease(kea_factory: Any, tmp_path: Path) -> None:
    """Pending, delayed and retrying lease deletions across SIGKILLs; the effect checked in a real Kea."""
    import yaml

    inst = kea_factory(dhcp6=False, ca=False)
    ips = [inst.next_ip4() for _ in range(24)]
    for i, ip in enumerate(ips):
        inst.add_lease4(ip, f"00:00:5e:00:54:{i:02x}")
    kea_yaml = tmp_path / "kea.yaml"
    kea_yaml.write_text(yaml.safe_dump(inst.trapd_kea_section()))
    script = tmp_path / "child.py"
    script.write_text(KEA_CHILD)
    journal = tmp_path / "journal.sqlite"
    argv = [sys.executable, str(script), str(journal), str(kea_yaml)]
    rnd = random.Random(7)

    def cycle(mode: str) -> dict[str, str]:
        proc = subprocess.Popen(
            [*argv, mode, ",".join(ips)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        time.sleep(rnd.uniform(0.05, 0.3))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(5)
        assert line in ("submitted", "resumed"), line
        conn = sqlite3.connect(journal)
        try:
            return {
                json.loads(p)["ip-address"]: s for p, s in conn.execute("SELECT params, state FROM actions")
            }
        finally:
            conn.close()

    inst.stop(["kea-dhcp4"])  # down: deletions fail, retry, wait behind the breaker, or wait for their delay
    first = cycle("submit")
    assert len(first) == len(ips) and "done" not in first.values()
    cycle("resume")  # killed again while still down
    inst.spawn("kea-dhcp4")
    inst.wait_ready()
    cycle("resume")  # killed while working through them
    last = subprocess.run([*argv, "finish", ",".join(ips)], capture_output=True, text=True, timeout=60)
    assert last.returncode == 0, last.stderr[-2000:]
    conn = sqlite3.connect(journal)
    states = [s for (s,) in conn.execute("SELECT state FROM actions")]
    conn.close()
    assert states == ["done"] * len(ips)
    assert [ip for ip in ips if inst.lease4(ip) is not None] == []
