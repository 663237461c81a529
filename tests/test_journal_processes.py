"""Several OS processes, one SQLite journal: the paths the journal mediates between them.

With ``service.workers: N`` each worker is a whole trapd with its own Dispatcher and
its own SQLiteJournal (owner ``worker-i``) on one file. Everything that must hold across
workers is decided in the journal's transactions: cancels by clearing events,
once-within, caps, per-key order, recovery after one of them is killed. Each process
here is a real ``python tests/journal_procs.py`` (no mocks, real SQLite locking);
the action ``mark`` writes every start and end to a shared run log.
"""

from __future__ import annotations

import json
import os
import select
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

DRIVER = Path(__file__).with_name("journal_procs.py")


class Proc:
    """One driver process; ``call`` sends a command and returns its JSON reply."""

    def __init__(self, tmp: Path, owner: str, acklog: Path | None = None) -> None:
        self.owner = owner
        self.stderr_path = tmp / f"{owner}.{time.monotonic_ns()}.stderr"
        args = [sys.executable, str(DRIVER), str(tmp / "journal.sqlite"), owner, str(tmp / "runlog")]
        if acklog is not None:
            args.append(str(acklog))
        with self.stderr_path.open("w") as err:
            self.p = subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err)
        self._buf = b""
        ready = self.read(timeout=30)
        assert ready.get("ready") == owner, ready

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.p.stdin is not None
        self.p.stdin.write(json.dumps(cmd).encode() + b"\n")
        self.p.stdin.flush()

    def read(self, timeout: float = 15.0) -> dict[str, Any]:
        assert self.p.stdout is not None
        fd = self.p.stdout.fileno()
        deadline = time.monotonic() + timeout
        while b"\n" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                raise AssertionError(f"{self.owner}: no answer in {timeout}s; stderr: {self.stderr()}")
            chunk = os.read(fd, 65536)
            if not chunk:
                raise AssertionError(f"{self.owner} exited ({self.p.wait()}); stderr: {self.stderr()}")
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        reply: dict[str, Any] = json.loads(line)
        return reply

    def call(self, cmd: dict[str, Any], timeout: float = 15.0) -> dict[str, Any]:
        self.send(cmd)
        return self.read(timeout)

    def stderr(self) -> str:
        return self.stderr_path.read_text()[-3000:]

    def stop(self) -> None:
        if self.p.poll() is None:
            self.call({"op": "stop"})
            self.p.wait(10)

    def kill(self) -> None:
        self.p.send_signal(signal.SIGKILL)
        self.p.wait(10)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    started: list[Proc] = []

    def start(owner: str, acklog: Path | None = None) -> Proc:
        p = Proc(tmp_path, owner, acklog)
        started.append(p)
        return p

    yield start
    for p in started:
        if p.p.poll() is None:
            p.p.kill()
            p.p.wait(10)
        if p.p.stdin is not None:
            p.p.stdin.close()
        if p.p.stdout is not None:
            p.p.stdout.close()
        assert "database is locked" not in p.stderr_path.read_text()


def runs(tmp: Path) -> list[tuple[str, str, str, int]]:
    """The run log: (start|end, tag, owner, attempt), in the order they happened."""
    path = tmp / "runlog"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        kind, tag, owner, attempt = line.split()
        out.append((kind, tag, owner, int(attempt)))
    return out


def journal_rows(tmp: Path) -> list[dict[str, Any]]:
    conn = sqlite3.connect(tmp / "journal.sqlite", timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        rows = conn.execute(
            "SELECT id, state, owner, params, once_key, result, attempts FROM actions ORDER BY id"
        )
        return [dict(r) | {"tag": json.loads(r["params"])["tag"]} for r in rows.fetchall()]
    finally:
        conn.close()


def wait_until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout}s")
        time.sleep(0.05)


def settled(tmp: Path) -> bool:
    return all(r["state"] in ("done", "cancelled", "held", "dead") for r in journal_rows(tmp))


def test_a_delay_armed_in_one_process_is_cancelled_by_a_clearing_event_in_another(
    procs: Callable[..., Proc], tmp_path: Path
) -> None:
    a, b = procs("worker-1"), procs("worker-2")
    # linkDown in A: a deletion in 3 s, unless the port comes back; and a control that nothing cancels.
    # The clearing event comes after two calls and a wait: 3 s (and "busy"'s 3 s below) keep it
    # within the delay and before "queued" starts on a loaded machine; with 1 s and 0.6 s it
    # could come late, "queued" run, and the test fail on its state.
    armed = a.call({"op": "submit", "plans": [
        {"tag": "delete-lease", "key": "port:7", "delay": 3.0, "cancel_key": "port:7"},
        {"tag": "control", "key": "port:8", "delay": 3.0, "cancel_key": "port:8"},
    ]})  # fmt: skip
    assert armed["states"] == ["scheduled", "scheduled"]
    # And one already in A's memory, queued behind a running action of its key: A has loaded
    # it, so only the state A finds when it claims it can stop it.
    loaded = a.call({"op": "submit", "plans": [
        {"tag": "busy", "key": "port:9", "sleep": 3.0},
        {"tag": "queued", "key": "port:9", "cancel_key": "port:9"},
    ]})  # fmt: skip
    assert loaded["in_memory"] >= 1
    wait_until(lambda: ("start", "busy", "worker-1", 1) in runs(tmp_path), what="busy started")
    # linkUp in B.
    cleared = b.call({"op": "submit", "plans": [], "cancels": ["port:7", "port:9"]})
    rows = {r["tag"]: r for r in journal_rows(tmp_path)}
    for tag in ("delete-lease", "queued"):
        assert rows[tag]["state"] == "cancelled"
        assert json.loads(rows[tag]["result"]) == {"cancelled_by": cleared["event_id"]}
    # The timers fire (both processes arm one for the journal's next due time, so either may run
    # the control) and A's worker reaches the queued one: neither cancelled action runs.
    wait_until(
        lambda: any(k == "end" and t == "control" for k, t, _, _ in runs(tmp_path)), what="control ran"
    )
    wait_until(lambda: ("end", "busy", "worker-1", 1) in runs(tmp_path), what="busy ended")
    time.sleep(0.2)
    assert sorted(tag for kind, tag, _, _ in runs(tmp_path) if kind == "start") == ["busy", "control"]
    final = {"delete-lease": "cancelled", "control": "done", "busy": "done", "queued": "cancelled"}
    # "busy" wrote its end mark before its "done" was committed: wait for the journal to say so.
    wait_until(lambda: {r["tag"]: r["state"] for r in journal_rows(tmp_path)} == final, what="final states")
    a.stop()
    b.stop()


def test_once_within_and_caps_hold_across_processes(procs: Callable[..., Proc], tmp_path: Path) -> None:
    a, b = procs("worker-1"), procs("worker-2")

    def batch(owner: str) -> dict[str, Any]:
        once = [
            {
                "plans": [
                    {"tag": f"{owner}:once{i}", "key": f"mac{i}", "once_key": f"mac{i}", "once_within": 60}
                ]
            }
            for i in range(25)
        ]
        capped = [
            {"plans": [{"tag": f"{owner}:cap{i}", "key": f"{owner}:cap{i}", "cap": ["c", 5, 60]}]}
            for i in range(10)
        ]
        return {"op": "submit_many", "outcomes": once + capped}

    # Both at once: the same once keys and the same cap window, from two processes.
    a.send(batch("worker-1"))
    b.send(batch("worker-2"))
    for reply in (a.read(), b.read()):
        assert all(isinstance(r, list) and len(r) == 1 for r in reply["results"]), reply
    wait_until(lambda: settled(tmp_path), what="all settled")
    rows = journal_rows(tmp_path)
    by_id = {r["id"]: r for r in rows}
    for i in range(25):
        mine = [r for r in rows if r["once_key"] == f"mac{i}"]
        assert len(mine) == 2
        first, second = mine
        assert first["state"] == "done" and second["state"] == "cancelled", mine
        assert json.loads(second["result"]) == {"duplicate_of": first["id"]}
        assert by_id[first["id"]]["tag"].endswith(f":once{i}")
    capped = [r for r in rows if ":cap" in r["tag"]]
    assert Counter(r["state"] for r in capped) == {"done": 5, "held": 15}
    started = Counter(tag for kind, tag, _, _ in runs(tmp_path) if kind == "start")
    assert sum(1 for t in started if ":once" in t) == 25
    assert sum(1 for t in started if ":cap" in t) == 5
    assert max(started.values()) == 1
    a.stop()
    b.stop()


def test_per_key_order_across_processes(procs: Callable[..., Proc], tmp_path: Path) -> None:
    a, b = procs("worker-1"), procs("worker-2")
    # One switch port's actions arrive alternately at the two processes (journal id order = arrival).
    ids = []
    for i in range(12):
        p = a if i % 2 == 0 else b
        ids += p.call({"op": "submit", "plans": [{"tag": f"o{i}", "key": "sw1:port7", "sleep": 0.1}]})["ids"]
    assert ids == sorted(ids)
    wait_until(lambda: settled(tmp_path), what="all done")
    log = [(kind, tag) for kind, tag, _, _ in runs(tmp_path)]
    assert log == [(kind, f"o{i}") for i in range(12) for kind in ("start", "end")]
    assert {r["state"] for r in journal_rows(tmp_path)} == {"done"}
    # While one process runs the key, the other does not claim its follower in a loop (a write
    # transaction each; ~1,000 of them in these 1.2 s before it parked the key): ~100 here.
    for p in (a, b):
        assert p.call({"op": "stats"})["commits"] < 400
    a.stop()
    b.stop()


def test_sigkill_of_one_process_reruns_its_actions_and_leaves_the_others(
    procs: Callable[..., Proc], tmp_path: Path
) -> None:
    acks_a, acks_b = tmp_path / "acks-a", tmp_path / "acks-b"
    a, b = procs("worker-1", acks_a), procs("worker-2", acks_b)
    long = 2.5
    a.call(
        {"op": "submit", "plans": [{"tag": f"a-long{i}", "key": f"a{i}", "sleep": long} for i in range(4)]}
    )
    # B's long actions end only when the test opens their gate: they must still be running when
    # the restarted worker-1 has recovered, however long that takes on a loaded machine.
    gate_b = tmp_path / "gate-b"
    b.call(
        {
            "op": "submit",
            "plans": [{"tag": f"b-long{i}", "key": f"b{i}", "gate": str(gate_b)} for i in range(4)],
        }
    )
    # Both keep submitting while A dies: B must never see a lost outcome or a locked database.
    a.call({"op": "stream", "n": 400, "interval": 0.005, "prefix": "as"})
    b.call({"op": "stream", "n": 150, "interval": 0.01, "prefix": "bs"})
    wait_until(
        lambda: sum(1 for k, t, _, _ in runs(tmp_path) if k == "start" and "-long" in t) == 8,
        what="all long started",
    )
    time.sleep(0.3)
    a.kill()
    # What the journal says A was running when it died: those, and only those, may run twice
    # (an action that ended but whose "done" was not committed yet included).
    running_at_kill = {
        r["tag"] for r in journal_rows(tmp_path) if r["state"] == "running" and r["owner"] == "worker-1"
    }
    acked_by_dead_a = [int(x) for x in acks_a.read_text().split()]
    assert acked_by_dead_a, "A acknowledged nothing before it was killed"
    a2 = procs("worker-1", acks_a)  # the supervisor restarts worker-1: it recovers its own rows only
    rows = {r["tag"]: r for r in journal_rows(tmp_path)}
    for i in range(4):
        assert rows[f"b-long{i}"]["state"] == "running" and rows[f"b-long{i}"]["owner"] == "worker-2"
    gate_b.touch()
    wait_until(lambda: len(acks_b.read_text().split()) == 150, what="B's stream acknowledged")
    wait_until(lambda: settled(tmp_path), timeout=15, what="everything done")

    rows_list = journal_rows(tmp_path)
    assert {r["state"] for r in rows_list} == {"done"}
    tags = Counter(r["tag"] for r in rows_list)
    assert max(tags.values()) == 1  # nothing planned twice
    done_ids = {r["id"] for r in rows_list}
    assert set(acked_by_dead_a) <= done_ids  # every outcome A acknowledged before SIGKILL ran
    assert len([int(x) for x in acks_b.read_text().split()]) == 150
    assert all(f"bs{i}" in tags for i in range(150))

    log = runs(tmp_path)
    starts = Counter(t for k, t, _, _ in log if k == "start")
    ends = Counter(t for k, t, _, _ in log if k == "end")
    for i in range(4):
        # A's interrupted actions ran again (attempt 2: put back by the restarted worker-1, run by
        # whichever process claimed them first); B's exactly once.
        assert starts[f"a-long{i}"] == 2 and ends[f"a-long{i}"] == 1
        assert [a for k, t, _, a in log if k == "end" and t == f"a-long{i}"] == [2]
        assert starts[f"b-long{i}"] == 1 and ends[f"b-long{i}"] == 1
    assert all(n == 1 for t, n in starts.items() if t.startswith("bs"))
    assert {f"a-long{i}" for i in range(4)} <= running_at_kill
    twice = {t for t, n in starts.items() if n > 1}
    assert twice <= running_at_kill, [e for e in log if e[1] in twice - running_at_kill]
    a2.stop()
    b.stop()
