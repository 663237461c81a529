"""A full disk under the journal is loud, counted, rate-limited, and recovers (issue 14, item 12).

A real ``trapd run`` whose state directory is a small tmpfs the test mounts
(root only). The test fills it to the last byte, sends traps, and expects:
/healthz 503 naming the journal, the lost outcomes counted in
``trapd_outcomes_lost_total`` and the journal's failed writes in
``trapd_journal_failed_writes_total``, few log lines (rate-limited), STATUS=
saying so; then frees the space and expects it healthy and acting again.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from daemon_harness import TrapdDaemon, link_down
from listen_harness import needs_netsnmp, snmp_send
from tmpfs_support import mounted_tmpfs

pytestmark = [pytest.mark.integration, needs_netsnmp]

RULES = (
    "rules:\n  - name: r\n    match: {notification: IF-MIB::linkDown}\n"
    "    actions: [{action: log, message: 'down {{ ifIndex }}'}]\n"
)


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    # (4 MiB: the journal's first pages and WAL fit, then the test fills the rest.)
    with mounted_tmpfs(tmp_path / "small", "4m") as mnt:
        yield mnt


def fill(directory: Path) -> Path:
    """Write one file until the file system says ENOSPC, down to the last byte; return it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (65536, 4096, 512, 1):
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, b"\0" * chunk)
    finally:
        os.close(fd)
    return filler


def wait_for(pred: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise AssertionError(f"not within {timeout} s: {what}")


def test_a_full_disk_is_unhealthy_counted_rate_limited_and_recovers(tmp_path: Path, small_fs: Path) -> None:
    state = small_fs / "state"
    d = TrapdDaemon.start(tmp_path / "w", rules=RULES, config={"state_dir": str(state)})
    try:
        snmp_send("snmptrap", *link_down(d.target(), 1))
        assert d.wait_metric("trapd_actions_total", 1, timeout=30, plugin="log", outcome="done") >= 1
        assert d.healthz()[0] == 200
        fill(small_fs)

        def unhealthy() -> bool:
            status, body = d.healthz()
            return status == 503 and "journal" in str(body)

        # Traps until a commit needs a page the disk no longer has (the WAL may still have room
        # for some): bounded in count and time.
        sent = 0
        deadline = time.monotonic() + 60
        while not unhealthy():
            assert sent < 1500 and time.monotonic() < deadline, f"still healthy after {sent} traps"
            for _ in range(20):
                snmp_send("snmptrap", *link_down(d.target(), 100 + sent))
                sent += 1
            time.sleep(0.2)
        body = d.healthz()[1]
        assert "full" in str(body), body
        wait_for(lambda: d.metric("trapd_outcomes_lost_total") >= 1, 30, "trapd_outcomes_lost_total counts")
        wait_for(lambda: d.metric("trapd_journal_failed_writes_total") >= 1, 30, "failed writes counted")
        notify = d.notify
        assert notify is not None
        seen: list[dict[str, str]] = []

        def status_says() -> bool:
            seen.extend(notify.pending())
            return any("JOURNAL UNAVAILABLE" in m.get("STATUS", "") for m in seen)

        wait_for(status_says, 30, "STATUS= says the journal is unavailable")
        errors = [line for line in d.log if line.get("level") == "error"]
        assert 1 <= len(errors) <= 10, errors[:20]  # rate-limited, not one per trap
        assert "journal cannot commit" in errors[0]["event"], errors[0]
        # Space back: healthy again without a restart, and traps act again.
        (small_fs / "filler").unlink()
        wait_for(lambda: d.healthz()[0] == 200, 30, "/healthz 200 again once space is freed")
        done = d.metric("trapd_actions_total", plugin="log", outcome="done")
        snmp_send("snmptrap", *link_down(d.target(), 7))
        assert d.wait_metric("trapd_actions_total", done + 1, timeout=30, plugin="log", outcome="done") > done
    finally:
        d.stop()


def test_a_worker_that_died_while_the_disk_was_full_does_not_keep_the_unit_unhealthy(
    tmp_path: Path, small_fs: Path
) -> None:
    """Two workers; both killed while the journal cannot commit, then the space comes back.

    The supervisor keeps a dead worker's last counters (so the unit's never go backwards), but
    "the journal cannot commit" is that worker's state, not a count: the restarted workers commit
    again, so /healthz must be 200 and trapd_journal_available 1 again.
    """
    state = small_fs / "state"
    d = TrapdDaemon.start(
        tmp_path / "w", rules=RULES, config={"state_dir": str(state), "service": {"workers": 2}}
    )
    try:
        snmp_send("snmptrap", *link_down(d.target(), 1))
        assert d.wait_metric("trapd_actions_total", 1, timeout=30, plugin="log", outcome="done") >= 1
        fill(small_fs)

        def unhealthy() -> bool:
            status, body = d.healthz()
            return status == 503 and "journal" in body

        sent = 0
        deadline = time.monotonic() + 60
        while not unhealthy():
            assert sent < 1500 and time.monotonic() < deadline, f"still healthy after {sent} traps"
            for _ in range(20):  # one snmptrap process (source port) each: both workers get some
                snmp_send("snmptrap", *link_down(d.target(), 100 + sent))
                sent += 1
            time.sleep(0.2)
        pids = {int(e["worker"]): int(e["pid"]) for e in d.logs("worker started")}
        for pid in pids.values():
            os.kill(pid, signal.SIGKILL)
        (small_fs / "filler").unlink()
        d.wait_log(lambda e: e.get("event") == "worker ready", 30, count=2)
        wait_for(lambda: d.healthz()[0] == 200, 30, "/healthz 200 once the restarted workers commit")
        assert d.metric("trapd_journal_available") == 1
        done = d.metric("trapd_actions_total", plugin="log", outcome="done")
        snmp_send("snmptrap", *link_down(d.target(), 7))
        assert d.wait_metric("trapd_actions_total", done + 1, timeout=30, plugin="log", outcome="done") > done
    finally:
        d.stop()


def test_a_statement_that_meets_the_full_disk_fails_as_a_journal_error_saying_so(small_fs: Path) -> None:
    """A statement that needs new pages on a full disk (a large value) makes SQLite roll the
    whole transaction back itself. The journal then tried to roll it back again to run the
    batch one operation at a time: every operation of the batch failed with sqlite3's
    'cannot rollback - no transaction is active', not a JournalError, so the callers that
    handle a journal failure (the dispatcher's pump and maintenance, the receive path) met an
    error they do not expect, and the reason (the disk is full) was gone."""
    import asyncio

    import pytest

    from trapd.dispatch.journal import JournalError, NewEntry, SQLiteJournal
    from trapd.dispatch.testing import make_event

    def entry(message: str) -> NewEntry:
        return NewEntry(
            rule="r", action="log", index=0, params={"message": message}, key="k", mode="enforce",
            state="pending", due=time.time(), max_attempts=3, backoff=1.0, max_age=3600.0,
        )  # fmt: skip

    async def run() -> None:
        async with SQLiteJournal(small_fs / "journal.sqlite", checkpoint_interval=None) as j:
            await j.add(make_event().to_dict(), [entry("before")], [], time.time())
            filler = fill(small_fs)
            small = j.add_soon(make_event().to_dict(), [entry("small")], [], time.time())
            big = j.add_soon(make_event().to_dict(), [entry("y" * 3_000_000)], [], time.time())
            for fut in (small, big):
                with pytest.raises(JournalError, match="full"):
                    await fut
            assert not j.health().available and "full" in (j.health().problem or "")
            filler.unlink()
            done = await j.add(make_event().to_dict(), [entry("after")], [], time.time())
            assert done.states == ["pending"]

    asyncio.run(run())


def test_a_start_on_a_full_disk_says_the_disk_is_full_not_that_the_journal_is_damaged(
    tmp_path: Path, small_fs: Path
) -> None:
    """trapd started while the file system holding its journal is full: SQLite cannot make the
    journal's -shm file, and the start-up check failed with 'disk I/O error', which trapd took
    for damage: 'the journal ... is damaged ... To recover, move it aside ... and start trapd
    again for a new, empty journal', advice that leaves the waiting actions behind in a sound
    file. It must say the disk is full, and start on the same journal once there is room."""
    state = small_fs / "state"
    d = TrapdDaemon.start(tmp_path / "w", rules=RULES, config={"state_dir": str(state)})
    try:
        snmp_send("snmptrap", *link_down(d.target(), 1))
        assert d.wait_metric("trapd_actions_total", 1, timeout=30, plugin="log", outcome="done") >= 1
        assert d.stop() == 0
        filler = fill(small_fs)
        d.launch()
        assert d.wait_exit(30) == 1
        (failed,) = d.logs("start-up failed")
        assert "full" in failed["error"] and "is damaged" not in failed["error"], failed
        assert "move it aside" not in failed["error"], failed
        filler.unlink()
        d.launch()
        d.wait_ready(30)
        snmp_send("snmptrap", *link_down(d.target(), 2))
        assert d.wait_metric("trapd_actions_total", 1, timeout=30, plugin="log", outcome="done") >= 1
        assert d.stop() == 0
    finally:
        d.close()
    db = sqlite3.connect(state / "journal.sqlite")
    assert db.execute("SELECT count(*) FROM actions WHERE state = 'done'").fetchone() == (2,)
    db.close()


def test_a_full_disk_stays_unhealthy_while_writes_of_outcomes_still_fail(
    tmp_path: Path, small_fs: Path
) -> None:
    """Any write batch that committed made the journal available again, also one that changed
    nothing (the dispatcher's maintenance looks for held actions to expire every second): such a
    commit needs no page, so it succeeds on a full disk, and /healthz went back to 200 between
    every two outcomes lost (measured: 200 for 23 of 25 looks in 5 s, while each of 10 traps
    sent meanwhile was lost)."""
    state = small_fs / "state"
    d = TrapdDaemon.start(tmp_path / "w", rules=RULES, config={"state_dir": str(state)})
    try:
        snmp_send("snmptrap", *link_down(d.target(), 1))
        assert d.wait_metric("trapd_actions_total", 1, timeout=30, plugin="log", outcome="done") >= 1
        filler = fill(small_fs)
        sent = 0
        deadline = time.monotonic() + 60
        while d.healthz()[0] == 200:
            assert sent < 1500 and time.monotonic() < deadline, f"still healthy after {sent} traps"
            for _ in range(20):
                snmp_send("snmptrap", *link_down(d.target(), 100 + sent))
                sent += 1
            time.sleep(0.2)
        for _ in range(25):  # 5 s of probes and maintenance, the disk still full: unhealthy throughout
            time.sleep(0.2)
            assert d.healthz()[0] == 503, d.healthz()
        lost = d.metric("trapd_outcomes_lost_total")
        snmp_send("snmptrap", *link_down(d.target(), 9))
        wait_for(lambda: d.metric("trapd_outcomes_lost_total") > lost, 30, "the next outcome lost too")
        filler.unlink()
        wait_for(lambda: d.healthz()[0] == 200, 30, "/healthz 200 again once space is freed")
    finally:
        d.stop()


def test_the_journal_can_be_looked_at_while_the_disk_is_full(small_fs: Path) -> None:
    """trapd stopped (or refusing to start) on a full disk is when an admin looks at what waits.
    `trapd journal list` could not: reading a WAL journal takes its -shm file, which SQLite
    could not make ('cannot open the journal ...: disk I/O error (the file system holding it is
    full ...)'), so list, show, history and check all failed. With no -wal file beside it the
    journal was closed cleanly and the file alone is all of it: read as immutable, as on a
    read-only mount. Writing (cancel) still says the disk is full."""
    import subprocess
    import sys

    from test_journal_integrity import make_journal

    path = small_fs / "journal.sqlite"
    make_journal(path, 50)
    fill(small_fs)

    def journal(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "trapd", "journal", "--journal", str(path), *argv],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    r = journal("list", "--limit", "1000")
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 51, (r.stdout[-500:], r.stderr)
    assert journal("show", "7").returncode == 0
    assert journal("history", "--rule", "r").returncode == 0
    r = journal("check")
    assert r.returncode == 0 and "ok" in r.stdout, (r.stdout, r.stderr)
    r = journal("cancel", "7")
    assert r.returncode == 2 and "full" in r.stderr, (r.stdout, r.stderr)
    assert not os.path.exists(f"{path}-wal") or os.path.getsize(f"{path}-wal") == 0
