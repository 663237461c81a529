"""The SQLite journal's files: private modes, integrity at start-up, damage reported (issue 14, 11/13/14).

Real files and real ``trapd run`` / ``trapd journal`` processes: a state
directory trapd makes is 0700 and the journal 0600 whatever the umask; an
empty, garbage or bit-flipped journal is refused at start-up with the way to
recover, never replaced; ``trapd journal`` still reads what survived and
names the damage instead of printing a traceback.
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
from daemon_harness import TrapdDaemon, eventually

from trapd.dispatch.journal import JournalDamaged, JournalError, JournalNotice, NewEntry, SQLiteJournal
from trapd.dispatch.testing import make_event

RULES = (
    "rules:\n  - name: r\n    match: {notification: IF-MIB::linkDown}\n"
    "    actions: [{action: log, message: x}]\n"
)


def _entry(i: int, now: float) -> NewEntry:
    return NewEntry(
        rule="r", action="log", index=0, params={"message": f"m{i}"}, key=f"k{i}", mode="enforce",
        state="scheduled", due=now + 3600, max_attempts=3, backoff=1.0, max_age=7200.0,
    )  # fmt: skip


def make_journal(path: Path, n: int = 300) -> None:
    """A journal with ``n`` scheduled actions, each with its own event (a real file, checkpointed)."""

    async def fill() -> None:
        async with SQLiteJournal(path) as j:
            now = time.time()
            for i in range(n):
                await j.add(
                    make_event(source=f"10.0.{i // 250}.{i % 250}").to_dict(), [_entry(i, now)], [], now
                )

    asyncio.run(fill())  # closing checkpoints the WAL into the file


def start_fails(tmp_path: Path, timeout: float = 30.0) -> str:
    d = TrapdDaemon.start(tmp_path, rules=RULES, wait_ready=False)
    try:
        rc = d.wait_exit(timeout)
    finally:
        d.close()
    text = "\n".join(str(line) for line in d.log)
    assert rc != 0, text
    return text


def journal_cli(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trapd", "journal", *argv], capture_output=True, text=True, timeout=60
    )


# -- 11: modes -------------------------------------------------------------------------------


def test_a_state_directory_trapd_makes_is_0700_and_the_journal_0600_whatever_the_umask(
    tmp_path: Path,
) -> None:
    state = tmp_path / "var" / "lib" / "trapd"
    old = os.umask(0o022)
    try:
        d = TrapdDaemon.start(tmp_path / "w", rules=RULES, config={"state_dir": str(state)})
    finally:
        os.umask(old)
    try:
        for made in (state, state.parent, state.parent.parent):
            assert stat.S_IMODE(made.stat().st_mode) == 0o700, (made, oct(made.stat().st_mode))
        files = [p for p in state.iterdir() if p.name.startswith("journal.sqlite")]
        assert files
        for f in files:
            assert stat.S_IMODE(f.stat().st_mode) == 0o600, (f, oct(f.stat().st_mode))
    finally:
        d.stop()


# -- 13: integrity at start-up ----------------------------------------------------------------


def _journal_file(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir(mode=0o700, exist_ok=True)
    return state / "journal.sqlite"


def test_an_empty_journal_file_is_refused_not_replaced(tmp_path: Path) -> None:
    path = _journal_file(tmp_path)
    path.write_bytes(b"")
    text = start_fails(tmp_path)
    assert "empty" in text and str(path) in text and "move it aside" in text, text
    assert path.stat().st_size == 0  # left as it was, for whoever investigates


def test_garbage_is_refused(tmp_path: Path) -> None:
    path = _journal_file(tmp_path)
    path.write_bytes(os.urandom(8192))
    before = path.read_bytes()
    text = start_fails(tmp_path)
    assert "damaged" in text and "move it aside" in text, text
    assert path.read_bytes() == before


def _flip(path: Path, count: int = 40) -> None:
    """Flip ``count`` bytes spread over the file's data pages (not the 100-byte header)."""
    data = bytearray(path.read_bytes())
    size = len(data)
    for k in range(count):
        pos = 4096 + (k * 7919) % (size - 4096)
        data[pos] ^= 0xFF
    # And the cell counts of a few b-tree pages near the end (the newest rows): damage that an
    # integrity check always sees, wherever the spread flips above happened to land.
    pages = size // 4096
    for page in range(max(2, pages - 4), pages):
        data[page * 4096 + 3] ^= 0x5A
    path.write_bytes(bytes(data))


def test_flipped_bytes_are_refused_and_what_survived_can_be_read(tmp_path: Path) -> None:
    path = _journal_file(tmp_path)
    make_journal(path)
    _flip(path)
    text = start_fails(tmp_path)
    assert "damaged" in text and "move it aside" in text and "trapd journal" in text, text
    # Read-only inspection: whatever can be read, and the damage named, never a traceback.
    r = journal_cli("--journal", str(path), "list", "--state", "all", "--limit", "1000")
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out[-3000:]
    assert "damaged" in out or "malformed" in out, out[-3000:]


# -- 14: read-only batches on a damaged journal ------------------------------------------------


def test_journal_list_on_a_damaged_journal_names_the_damage(tmp_path: Path) -> None:
    path = _journal_file(tmp_path)
    make_journal(path)
    _flip(path)
    r = journal_cli("--journal", str(path), "list", "--state", "all", "--limit", "1000")
    out = r.stdout + r.stderr
    assert "cannot rollback" not in out, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert "malformed" in out or "damaged" in out, out[-3000:]


def test_text_that_is_not_utf8_is_named_as_damage(tmp_path: Path) -> None:
    # A flipped byte inside a text value: SQLite's pages are fine, Python cannot decode the
    # value. trapd wrote only UTF-8 there, so the file was altered: named, never a traceback.
    path = _journal_file(tmp_path)
    make_journal(path, 5)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE actions SET event_id = CAST(x'31ff32' AS TEXT) WHERE id = 2")
    conn.close()
    r = journal_cli("--journal", str(path), "list", "--state", "all", "--limit", "1000")
    out = r.stdout + r.stderr
    assert "Traceback" not in out, out[-3000:]
    assert "damaged" in out, out[-3000:]


def test_an_intact_journal_still_starts(tmp_path: Path) -> None:
    path = _journal_file(tmp_path)
    make_journal(path, 20)
    d = TrapdDaemon.start(tmp_path, rules=RULES)
    try:
        status, _ = d.healthz()
        assert status == 200
    finally:
        assert d.stop() == 0


def test_damage_met_while_running_makes_healthz_503_and_stays(tmp_path: Path) -> None:
    """A row trapd cannot read back (damage the start-up check does not see: text that is not
    UTF-8) is met by the dispatcher once it is due (and set aside, see below): /healthz 503,
    trapd_journal_available 0, and not
    back to 200 a second later because some other write succeeded (damage does not heal)."""
    path = _journal_file(tmp_path)

    async def fill() -> None:
        async with SQLiteJournal(path) as j:
            now = time.time()
            for i in range(3):
                entry = _entry(i, now)
                # Due in an hour: nothing reads the row before the test makes it due. (Due in 2 s,
                # a daemon slow to start under load had read it before the first /healthz.)
                await j.add(make_event().to_dict(), [replace(entry, due=now + 3600)], [], now)

    asyncio.run(fill())
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE actions SET params = CAST(x'7b22ff7d' AS TEXT) WHERE id = 2")
    conn.close()
    d = TrapdDaemon.start(tmp_path, rules=RULES)
    try:
        assert d.healthz()[0] == 200  # not due yet: nothing has read the row
        conn = sqlite3.connect(path)
        with conn:  # due now: the daemon sees another process's write at its next poll
            conn.execute("UPDATE actions SET due = 0")
        conn.close()
        d.wait_log("journal row unreadable: set aside", timeout=30)

        def unhealthy() -> dict[str, object]:
            status, body = d.healthz()
            assert status == 503, body
            return body

        body = eventually(unhealthy, timeout=20)
        assert body["status"] == "degraded" and "damaged" in str(body["journal"]), body
        assert d.metric("trapd_journal_available") == 0
        # The journal's probe write (once a second while it is unavailable) succeeds: still 503.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            assert d.healthz()[0] == 503
            time.sleep(0.2)
    finally:
        d.stop()
        d.close()


def test_a_change_by_another_process_is_not_missed_when_the_batch_that_saw_it_fails(tmp_path: Path) -> None:
    """``changed()`` (how the daemon learns of `trapd journal retry/release/cancel`) shares a batch
    with whatever else was issued in that turn. When another operation of the batch failed (here
    a read of a damaged row), the batch ran again, one operation at a time: the poll had taken
    the new data_version as seen the first time, so the second time it said "unchanged", and
    the operator's retry waited for some unrelated event."""
    path = _journal_file(tmp_path)
    make_journal(path, 5)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE actions SET event_id = CAST(x'31ff32' AS TEXT) WHERE id = 2")
    conn.close()

    async def run() -> tuple[bool | BaseException, bool]:
        # No checkpointer threads: a checkpoint is another connection's write to data_version.
        async with (
            SQLiteJournal(path, checkpoint_interval=None) as daemon,
            SQLiteJournal(path, checkpoint_interval=None) as cli,
        ):
            assert await daemon.changed() is False  # the baseline
            assert await cli.cancel([3], time.time(), "by an operator") == [3]  # `trapd journal cancel`
            # One turn, so one batch: the daemon's poll, then a read that fails.
            poll = asyncio.ensure_future(daemon.changed())
            damaged = asyncio.ensure_future(daemon.get(2))
            seen = await asyncio.gather(poll, damaged, return_exceptions=True)
            assert isinstance(seen[1], JournalDamaged), seen
            return seen[0], await daemon.changed()

    first, later = asyncio.run(run())
    assert first is True or later is True, (first, later)


def test_a_malformed_page_met_at_runtime_stays_unhealthy_after_later_writes_succeed(tmp_path: Path) -> None:
    """Damage SQLite itself reports ("database disk image is malformed") on one statement, in a
    journal that passed the start-up check: health says so, and a later write that succeeds
    elsewhere in the file (a new trap's action, the journal's own probe) does not make it
    healthy again; the file is still damaged (tests the claim with a real damaged page)."""
    path = _journal_file(tmp_path)
    make_journal(path, 300)
    probe = sqlite3.connect(path)
    page_size = probe.execute("PRAGMA page_size").fetchone()[0]
    (first_leaf,) = probe.execute(
        "SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'leaf' ORDER BY path LIMIT 1"
    ).fetchone()
    (first_event,) = probe.execute("SELECT event_id FROM actions WHERE id = 1").fetchone()
    probe.close()

    async def run() -> None:
        async with SQLiteJournal(path, checkpoint_interval=None) as j:
            assert j.health().available
            with open(path, "r+b") as f:  # the page of the oldest events: its b-tree page type
                f.seek((first_leaf - 1) * page_size)
                f.write(b"\x00")
            other = sqlite3.connect(path)  # a commit elsewhere: the journal reads pages afresh
            with other:
                other.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('poke', '1')")
            other.close()
            try:
                await j.get(1)
            except JournalDamaged as exc:
                assert "malformed" in str(exc) or "damaged" in str(exc), exc
            else:
                raise AssertionError(f"the damaged page of event {first_event} was read without error")
            health = j.health()
            assert not health.available and "damaged" in (health.problem or ""), health
            now = time.time()
            added = await j.add(make_event().to_dict(), [_entry(9999, now)], [], now)
            assert added.states == ["scheduled"]  # a write elsewhere in the file succeeds
            deadline = time.monotonic() + 2.5  # past the probe write of an unhealthy journal
            while time.monotonic() < deadline:
                assert not j.health().available
                await asyncio.sleep(0.2)

    asyncio.run(run())


def test_a_journal_another_process_keeps_locked_fails_as_a_journal_error(tmp_path: Path) -> None:
    """Another process holding the journal's write lock past the busy timeout (an operator's
    `sqlite3 journal.sqlite` left in a transaction, a backup tool): the write failed with
    sqlite3's own 'database is locked', not a JournalError, so the callers that handle a
    journal failure (the dispatcher's maintenance, which then stopped for good; the receive
    path, which counts the loss) did not; and health said nothing."""
    path = _journal_file(tmp_path)
    make_journal(path, 1)

    async def run() -> None:
        async with SQLiteJournal(path, checkpoint_interval=None) as j:
            other = sqlite3.connect(path, isolation_level=None)
            other.execute("BEGIN IMMEDIATE")
            try:
                now = time.time()
                try:
                    await j.add(make_event().to_dict(), [_entry(1, now)], [], now)
                except JournalError as exc:
                    assert "locked" in str(exc), exc
                else:
                    raise AssertionError("committed under another process's write lock")
                assert not j.health().available and "locked" in (j.health().problem or "")
            finally:
                other.execute("ROLLBACK")
                other.close()
            now = time.time()
            assert (await j.add(make_event().to_dict(), [_entry(2, now)], [], now)).states == ["scheduled"]
            assert j.health().available

    asyncio.run(run())


# -- one row trapd cannot read back: set aside, the rest keeps running ---------------------------


def _journal_state(path: Path, id_: int) -> tuple[str, str | None]:
    conn = sqlite3.connect(path)
    try:
        row = conn.execute("SELECT state, last_error FROM actions WHERE id = ?", (id_,)).fetchone()
        state, last_error = row
    finally:
        conn.close()
    return state, last_error


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param("params = CAST(x'7b22ff7d' AS TEXT)", id="params-not-utf8"),
        pytest.param("""params = '{"message": "m'""", id="params-json-cut-short"),
        pytest.param("caps = '[{\"cap\"'", id="caps-json-cut-short"),
        pytest.param("event-data", id="event-not-utf8"),
    ],
)
def test_a_row_that_cannot_be_read_back_is_set_aside_and_the_others_run(tmp_path: Path, damage: str) -> None:
    """One damaged row among due actions (damage the start-up check does not see): the dispatcher
    read all due rows in one query, so that query failed every second ('journal read failed;
    retrying') and no action ran at all (one bad row stopped every Kea deletion). Now the row
    is set aside (dead, saying it could not be read back), logged once with its id and counted,
    and the actions before and after it run; health stays 503 about the damage."""
    path = _journal_file(tmp_path)

    async def fill() -> None:
        async with SQLiteJournal(path) as j:
            now = time.time()
            for i in range(3):  # ids 1, 2, 3; each its own key, all due in 2 s
                entry = replace(_entry(i, now), params={"message": f"ran-{i}"}, due=now + 2)
                await j.add(make_event().to_dict(), [entry], [], now)

    asyncio.run(fill())
    conn = sqlite3.connect(path)
    with conn:
        if damage == "event-data":  # the event's row: the action's own row is fine
            conn.execute(
                "UPDATE events SET data = CAST(x'7b22ff7d' AS TEXT) "
                "WHERE id = (SELECT event_id FROM actions WHERE id = 2)"
            )
        else:
            conn.execute(f"UPDATE actions SET {damage} WHERE id = 2")
    conn.close()
    d = TrapdDaemon.start(tmp_path, rules=RULES)
    try:
        d.wait_log("ran-2", timeout=60)  # the good action after the bad row ran
        d.wait_log("ran-0", timeout=10)
        assert not d.logs("ran-1")
        (line,) = d.wait_log("journal row unreadable: set aside", timeout=10)
        assert line["action_id"] == "2" and line["rule"] == "r" and line["action"] == "log", line
        assert line["problem"] and line["key"] == "k1", line
        assert "trapd journal show 2" in str(line.get("hint")), line
        state, last_error = eventually(lambda: _settled(path, 2))
        assert state == "dead" and "could not be read back" in str(last_error), (state, last_error)
        assert eventually(lambda: _settled(path, 3))[0] == "done"
        assert d.wait_metric("trapd_journal_unreadable_rows_total", 1) == 1
        _, body = eventually(lambda: _unhealthy(d))
        assert "could not be read back" in str(body["journal"]) or "damaged" in str(body["journal"]), body
        # Logged once, not once a second; the read does not fail and retry.
        assert len(d.logs("journal row unreadable: set aside")) == 1
        assert not d.logs("journal read failed; retrying")
        assert not d.logs("dispatcher pump error; retrying")
    finally:
        d.stop()
        d.close()
    # What can still be read of it: `trapd journal show 2` shows the row, the damage named (it
    # failed as a whole: "the journal ... is damaged: Could not decode ..."), and so does list.
    r = journal_cli("--journal", str(path), "show", "2", "--json")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stdout + r.stderr
    shown = json.loads(r.stdout)
    assert shown["key"] == "k1" and shown["rule"] == "r" and shown["state"] == "dead", shown
    assert shown["last_error"].startswith("damaged row: "), shown
    assert "could not be read back" in shown["last_error"], shown
    if damage.startswith("params"):
        assert "unreadable" in shown["params"], shown
    else:
        assert shown["params"] == {"message": "ran-1"} and shown["caps"] == [], shown
    if damage == "event-data":
        assert "unreadable" in shown["event"] and "event data" in shown["last_error"], shown
    else:
        assert shown["event"]["source"] == "192.0.2.10", shown
    r = journal_cli("--journal", str(path), "list", "--state", "all", "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    listed = {d["id"]: d for d in map(json.loads, r.stdout.splitlines())}
    assert sorted(listed) == [1, 2, 3] and listed[3]["params"] == {"message": "ran-2"}, listed
    # (list reads no event: the row itself is fine when only its event is damaged)
    assert "could not be read back" in listed[2]["last_error"], listed[2]
    assert listed[2]["last_error"].startswith("damaged row: ") == (damage != "event-data"), listed[2]


def _settled(path: Path, id_: int) -> tuple[str, str | None]:
    got = _journal_state(path, id_)
    assert got[0] in ("done", "dead"), got
    return got


def _unhealthy(d: TrapdDaemon) -> tuple[int, dict[str, object]]:
    status, body = d.healthz()
    assert status == 503, body
    return status, body


def test_a_held_row_that_cannot_be_read_back_is_set_aside_once_and_the_others_expire(tmp_path: Path) -> None:
    """Damaged rows among held actions whose hold ran out: the maintenance's expiry read them all
    in one query, which failed on every poll ('journal maintenance failed'; for JSON cut short a
    traceback, and health stayed 200), so no held action ever expired and the rest of the
    maintenance (counts, prune) never ran. Now each such row is set aside like a due one: dead,
    logged once with its id, counted, health 503; the other held action expires as usual. One
    daemon for both kinds of damage (text that is not UTF-8, JSON cut short)."""
    path = _journal_file(tmp_path)

    async def fill() -> None:
        async with SQLiteJournal(path) as j:
            now = time.time()
            for i in range(4):
                held = replace(_entry(i, now), params={"message": f"h-{i}"})
                await j.add(make_event().to_dict(), [held], [], now)

    asyncio.run(fill())
    conn = sqlite3.connect(path)
    with conn:  # ids 1-3 held by a cap whose hold ran out; 4 waits for an hour
        conn.execute(
            "UPDATE actions SET state = 'held', held_by = 'r/cap', due = ? WHERE id IN (1, 2, 3)",
            (time.time() - 1,),
        )
        conn.execute("UPDATE actions SET params = CAST(x'7b22ff7d' AS TEXT) WHERE id = 2")
        conn.execute("""UPDATE actions SET params = '{"message": "m' WHERE id = 3""")
    conn.close()
    fast_polls = {"dispatch": {"journal": {"poll_interval": "0.2s"}}}
    d = TrapdDaemon.start(tmp_path, rules=RULES, config=fast_polls)
    try:
        lines = d.wait_log("journal row unreadable: set aside", timeout=30, count=2)
        assert sorted((ln["action_id"], ln["key"], ln["rule"]) for ln in lines) == [
            ("2", "k1", "r"),
            ("3", "k2", "r"),
        ], lines
        (expired,) = d.wait_log("held action expired without release", timeout=10)
        assert expired["action_id"] == "1", expired
        assert _journal_state(path, 1)[0] == "dead"
        for id_ in (2, 3):
            state, last_error = _journal_state(path, id_)
            assert state == "dead" and "could not be read back" in str(last_error), (state, last_error)
        assert _journal_state(path, 4)[0] == "scheduled"
        assert d.wait_metric("trapd_journal_unreadable_rows_total", 2) == 2
        _, body = eventually(lambda: _unhealthy(d))
        assert "could not be read back" in str(body["journal"]) or "damaged" in str(body["journal"]), body
        # The rest of the maintenance runs (its counts reach the metrics), and polls after it
        # neither log the rows again nor fail.
        assert d.wait_metric("trapd_journal_entries", 3, state="dead") == 3
        assert d.wait_metric("trapd_journal_entries", 1, state="scheduled") == 1
        assert d.wait_metric("trapd_actions_total", 1, plugin="log", outcome="expired") == 1
        r = journal_cli("--journal", str(path), "cancel", "4")  # a later poll's counts show it
        assert r.returncode == 0, r.stdout + r.stderr
        eventually(lambda: _gauge_is(d, "scheduled", 0), timeout=20)
        assert len(d.logs("journal row unreadable: set aside")) == 2
        assert len(d.logs("held action expired without release")) == 1
        assert not d.logs("journal maintenance failed") and not d.logs("journal maintenance error")
    finally:
        d.stop()
        d.close()


def _gauge_is(d: TrapdDaemon, state: str, value: float) -> None:
    got = d.metric("trapd_journal_entries", state=state)
    assert got == value, got


def test_retry_refuses_a_row_that_cannot_be_read_back_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`trapd journal retry` of an action set aside as unreadable made it pending again, so the
    daemon met the same damage, set it aside again, logged and counted it again (503 again after a
    restart), and the operator was told "retried". It is refused, by id and why, with where to go
    from there; the others asked for are retried; once the row is repaired it can be retried."""
    from trapd.cli import main

    path = _journal_file(tmp_path)
    make_journal(path, 3)
    conn = sqlite3.connect(path)
    with conn:  # 2: set aside as unreadable earlier; 3: given up on, its row fine
        conn.execute(
            "UPDATE actions SET state = 'dead', params = CAST(x'7b22ff7d' AS TEXT), "
            "last_error = 'could not be read back from the journal (...): set aside, never run' WHERE id = 2"
        )
        conn.execute("UPDATE actions SET state = 'dead', last_error = 'gave up' WHERE id = 3")
    conn.close()
    capsys.readouterr()
    rc = main(["journal", "--journal", str(path), "retry", "2", "3"])
    out, err = capsys.readouterr()
    assert rc == 1, (out, err)
    assert "retried: 3" in out and "2" not in out.replace("retried: 3", ""), out
    assert "not retried: 2" in err and "cannot be read back" in err, err
    assert "text that is not UTF-8 in column 'params'" in err and "trapd journal show 2" in err, err
    assert "dispatch.md" in err, err
    assert _journal_state(path, 2)[0] == "dead" and _journal_state(path, 3)[0] == "pending"
    rc = main(["journal", "--journal", str(path), "retry", "2"])
    out, err = capsys.readouterr()
    assert rc == 1 and out == "nothing retried\n" and "no such id" not in err and "not retried: 2:" in err
    rc = main(["journal", "--journal", str(path), "--json", "retry", "2"])
    out, err = capsys.readouterr()
    assert rc == 1 and json.loads(out) == {
        "retried": [],
        "unchanged": [2],
        "unreadable": {"2": "text that is not UTF-8 in column 'params'"},
    }, (out, err)
    conn = sqlite3.connect(path)
    with conn:  # repaired by hand
        conn.execute("""UPDATE actions SET params = '{"message": "m1"}' WHERE id = 2""")
    conn.close()
    assert main(["journal", "--journal", str(path), "retry", "2"]) == 0, capsys.readouterr()
    assert _journal_state(path, 2)[0] == "pending"


# -- damage that appears while trapd runs, in pages nothing reads: the periodic check ----------


def _first_events_leaf(path: Path) -> int:
    """The file offset of the page holding the oldest events (nothing reads it while trapd runs)."""
    conn = sqlite3.connect(path)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
        (leaf,) = conn.execute(
            "SELECT pageno FROM dbstat WHERE name = 'events' AND pagetype = 'leaf' ORDER BY path LIMIT 1"
        ).fetchone()
    finally:
        conn.close()
    return int((leaf - 1) * page_size)


def _poke_byte(path: Path, at: int, value: bytes) -> bytes:
    with open(path, "r+b") as f:
        f.seek(at)
        was = f.read(1)
        f.seek(at)
        f.write(value)
    return was


def test_damage_that_appears_while_running_is_found_by_the_periodic_check_and_cleared_by_a_passing_one(
    tmp_path: Path,
) -> None:
    """A b-tree page damaged on disk while trapd runs, in rows no action reads (the oldest events):
    before, nothing noticed it until a restart's start-up check refused the journal. The periodic
    quick_check (its own connection, its own thread) finds it: /healthz 503 naming the damage and
    what to do, logged once, counted; the other actions keep running. Put right (here: the page's
    byte written back, as a repair would), the next check passes and health is 200 again, logged
    once: a check that finds the file sound says more than the one that found it damaged."""
    path = _journal_file(tmp_path)
    make_journal(path, 300)
    page = _first_events_leaf(path)
    config = {"dispatch": {"journal": {"integrity_check": "0.2s"}}}
    d = TrapdDaemon.start(tmp_path, rules=RULES, config=config)
    try:
        assert d.wait_metric("trapd_journal_integrity_checks_total", 1, result="ok") >= 1
        assert d.healthz()[0] == 200
        was = _poke_byte(path, page, b"\x00")  # the page's b-tree type
        (line,) = d.wait_log("journal damaged: found by the periodic integrity check", timeout=30)
        assert line["level"] == "error" and "move it aside" in str(line["hint"]), line
        _, body = eventually(lambda: _unhealthy(d))
        assert "integrity check" in str(body["journal"]), body
        assert d.wait_metric("trapd_journal_integrity_checks_total", 2, result="damaged") >= 2
        assert d.metric("trapd_journal_integrity_check_duration_seconds") > 0
        assert len(d.logs("journal damaged: found by the periodic integrity check")) == 1  # once
        _poke_byte(path, page, was)
        d.wait_log("journal integrity check passed again", timeout=30)
        eventually(lambda: _healthy(d))
    finally:
        d.stop()
        d.close()


def _healthy(d: TrapdDaemon) -> None:
    status, body = d.healthz()
    assert status == 200, body


@pytest.mark.parametrize("found_by", ["checkpointer", "integrity-check"])
def test_a_journal_file_replaced_under_the_running_trapd_is_reported(tmp_path: Path, found_by: str) -> None:
    """The journal moved aside and another file put in its place while trapd runs (a restore from
    backup, `mv` of a damaged journal without stopping trapd): the writer keeps writing to the
    file it opened, which nothing will read again; nothing said so. The checkpointer (once a
    second) and the periodic check compare the path's file with the one opened: unhealthy until
    restart, said once."""
    path = _journal_file(tmp_path)
    make_journal(path, 3)
    threads: dict[str, float | None] = (
        {"checkpoint_interval": 0.05, "integrity_check": None}
        if found_by == "checkpointer"
        else {"checkpoint_interval": None, "integrity_check": 0.05}
    )

    async def run() -> None:
        async with SQLiteJournal(path, **threads) as j:  # type: ignore[arg-type]
            await _until(lambda: j.checkpoints + j.health().integrity_checks.get("ok", 0) >= 1)
            assert j.health().available and j.notices() == []
            os.replace(path, tmp_path / "moved.sqlite")
            await asyncio.to_thread(make_journal, path, 1)  # a journal of its own at the path
            await _until(lambda: not j.health().available)
            assert "replaced or removed" in str(j.health().problem), j.health()
            (notice,) = j.notices()
            assert notice.level == "error" and "restart trapd" in notice.fields["hint"], notice
            checks = sum(j.health().integrity_checks.values())
            await asyncio.sleep(0.3)  # more rounds of the check: still unhealthy, not said again
            assert not j.health().available and j.notices() == []
            assert sum(j.health().integrity_checks.values()) == checks  # not counted as checks

    asyncio.run(run())


def test_a_wal_file_removed_under_the_running_trapd_is_reported(tmp_path: Path) -> None:
    """The journal's -wal file deleted while trapd runs (a clean-up of "stray" files, a backup
    script): trapd's connections keep the removed file, so its commits since the last checkpoint
    are only there (lost to a SIGKILL), and a connection opened afterwards (the checkpointer's
    after an error, `trapd journal`) sees a WAL that does not match: checkpoints stop, reads
    fail. Nothing said so: /healthz stayed 200. Now it is found within a round of the
    checkpointer: unhealthy until restart, said once, with what to do (a clean stop copies
    what the removed file holds into the journal)."""
    path = _journal_file(tmp_path)
    make_journal(path, 3)

    async def run() -> None:
        async with SQLiteJournal(path, checkpoint_interval=0.05, integrity_check=None) as j:
            await _until(lambda: j.checkpoints >= 1)
            assert j.health().available and j.notices() == []
            os.unlink(f"{path}-wal")
            now = time.time()
            await j.add(make_event().to_dict(), [_entry(100, now)], [], now)
            await _until(lambda: not j.health().available)
            assert "-wal" in str(j.health().problem) and "removed" in str(j.health().problem), j.health()
            (notice,) = j.notices()
            assert notice.level == "error" and "stop trapd" in notice.fields["hint"], notice
            await asyncio.sleep(0.3)
            assert not j.health().available and j.notices() == []  # said once

    asyncio.run(run())
    # Stopped cleanly: what the removed file held is in the journal.
    db = sqlite3.connect(path)
    assert db.execute("SELECT count(*) FROM actions").fetchone() == (4,)
    db.close()


def test_a_shm_file_removed_under_the_running_trapd_is_reported(tmp_path: Path) -> None:
    """The journal's -shm file (the WAL's index) deleted while trapd runs: trapd keeps the removed
    one mapped, and any connection opened since (`trapd journal cancel`) makes a new index of its
    own. Measured: a cancel that said `cancelled: 4 5` was lost (both actions still pending after
    trapd's next commits), and nothing said so. Now reported like a removed -wal file."""
    path = _journal_file(tmp_path)
    make_journal(path, 3)

    async def run() -> None:
        async with SQLiteJournal(path, checkpoint_interval=0.05, integrity_check=None) as j:
            await _until(lambda: j.checkpoints >= 1)
            assert j.health().available and j.notices() == []
            os.unlink(f"{path}-shm")
            await _until(lambda: not j.health().available)
            assert "-shm" in str(j.health().problem) and "removed" in str(j.health().problem), j.health()
            (notice,) = j.notices()
            assert notice.level == "error" and "stop trapd" in notice.fields["hint"], notice

    asyncio.run(run())


async def _until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the timeout"
        await asyncio.sleep(0.02)


def test_damage_named_in_errors_and_health_never_quotes_the_rows_text(tmp_path: Path) -> None:
    """Python's sqlite3 quotes the whole value it cannot decode ("Could not decode to UTF-8 column
    'params' with text '{"password":"hunter2…"}'"), and that text went into the JournalDamaged
    message, so into the log, /healthz (served to whoever reaches the metrics port) and STATUS=.
    A row may hold anything a trap or a rule put there: the column is named, its text is not."""
    path = _journal_file(tmp_path)
    make_journal(path, 3)
    conn = sqlite3.connect(path)
    with conn:  # {"password":"hunter2<0xff>"}
        conn.execute(
            "UPDATE actions SET params = CAST(x'7b2270617373776f7264223a2268756e74657232ff227d' AS TEXT) "
            "WHERE id = 2"
        )
    conn.close()

    async def run() -> None:
        async with SQLiteJournal(path, checkpoint_interval=None) as j:
            with pytest.raises(JournalDamaged) as caught:
                await j.get(2)
            assert "column 'params'" in str(caught.value) and "hunter2" not in str(caught.value), caught
            problem = str(j.health().problem)
            assert "damaged" in problem and "hunter2" not in problem, problem

    asyncio.run(run())
    r = journal_cli("--journal", str(path), "retry", "2")  # a strict read, in `trapd journal`
    assert "hunter2" not in r.stdout + r.stderr, r.stdout + r.stderr


def test_release_skips_a_held_row_that_cannot_be_read_back_and_releases_the_others(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One held row that cannot be read back made `trapd journal release --all` (and its --dry-run
    preview) fail as a whole ('reading the journal failed'), so no held action could be released
    in bulk; `release ID` of that row released it only for the daemon to set it aside. The preview
    shows it as far as it can be read, the release leaves it held and says why, the others go."""
    from trapd.cli import main

    path = _journal_file(tmp_path)
    make_journal(path, 3)
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("UPDATE actions SET state = 'held', held_by = 'r/cap', due = ? ", (time.time() + 3600,))
        conn.execute("""UPDATE actions SET params = '{"message": "m' WHERE id = 2""")
    conn.close()
    j = ["journal", "--journal", str(path)]
    capsys.readouterr()
    assert main([*j, "release", "--all", "--dry-run"]) == 0, capsys.readouterr()
    out, err = capsys.readouterr()
    assert "would release 3 held actions" in out and "damaged row" in out, (out, err)
    rc = main([*j, "release", "--all", "--yes"])
    out, err = capsys.readouterr()
    assert rc == 1 and "released: 1 3" in out, (out, err)
    assert "not released: 2: its journal row cannot be read back (JSONDecodeError" in err, err
    assert [_journal_state(path, i)[0] for i in (1, 2, 3)] == ["pending", "held", "pending"]
    rc = main([*j, "release", "2"])
    out, err = capsys.readouterr()
    assert rc == 1 and "not released: 2: its journal row cannot be read back" in err, (out, err)
    assert _journal_state(path, 2)[0] == "held"


def test_a_reader_that_keeps_the_wal_from_being_checkpointed_is_reported(tmp_path: Path) -> None:
    """Another process holding a read transaction open on the journal (an operator's `sqlite3`
    shell left in BEGIN, a backup tool) keeps every checkpoint from getting past it: the WAL grows
    with every commit, without bound, until the disk is full, and nothing said so. The journal
    measures what its checkpoints leave (trapd_journal_wal_bytes), warns once past the bound with
    the likely cause, and says so again once checkpoints catch up."""
    path = _journal_file(tmp_path)
    make_journal(path, 1)

    async def run() -> None:
        async with SQLiteJournal(path, checkpoint_interval=0.05, wal_warn_bytes=256 * 1024) as j:
            said: list[JournalNotice] = []

            def heard(event: str) -> bool:
                said.extend(j.notices())
                return any(event in n.event for n in said)

            reader = sqlite3.connect(path, isolation_level=None)
            reader.execute("BEGIN")
            reader.execute("SELECT count(*) FROM actions").fetchone()  # a snapshot held open
            try:
                now = time.time()
                for i in range(200):
                    await j.add(make_event().to_dict(), [_entry(i, now)], [], now)
                await _until(lambda: heard("journal WAL keeps growing"))
                (notice,) = said
                assert notice.level == "warning" and "read transaction" in notice.fields["hint"], notice
                assert j.health().wal_bytes > 256 * 1024 and j.health().available  # a warning only
            finally:
                reader.execute("COMMIT")
                reader.close()
            now = time.time()
            await j.add(make_event().to_dict(), [_entry(999, now)], [], now)
            await _until(lambda: heard("journal WAL checkpointed again"))
            assert [n.level for n in said] == ["warning", "info"], said
            assert j.health().wal_bytes < 256 * 1024

    asyncio.run(run())


def test_a_checkpointer_that_could_not_connect_tries_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checkpointer's connection failing once (out of file descriptors, say: injected here,
    as a real one would take the whole test process down) ended its thread for good; with the
    writer's own autocheckpoint off, the WAL then grew until trapd stopped."""
    import threading

    import trapd.dispatch.journal.sqlite as jsqlite

    path = _journal_file(tmp_path)
    make_journal(path, 1)
    real_connect = sqlite3.connect
    failed: list[str] = []

    def connect_once_failing(*args: object, **kw: object) -> sqlite3.Connection:
        if threading.current_thread().name == "trapd-journal-checkpoint" and not failed:
            failed.append("once")
            raise sqlite3.OperationalError("unable to open database file")
        return real_connect(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(jsqlite.sqlite3, "connect", connect_once_failing)

    async def run() -> None:
        async with SQLiteJournal(path, checkpoint_interval=0.05) as j:
            now = time.time()
            await j.add(make_event().to_dict(), [_entry(1, now)], [], now)
            await _until(lambda: bool(failed) and j.checkpoints >= 2, timeout=20)

    asyncio.run(run())


# -- trapd journal's looking commands do not check the whole file ------------------------------


def _statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every SQL statement run on a connection this process opens from now on."""
    import trapd.dispatch.journal.sqlite as jsqlite

    real_connect = sqlite3.connect
    ran: list[str] = []

    def traced(*args: object, **kw: object) -> sqlite3.Connection:
        conn = real_connect(*args, **kw)  # type: ignore[arg-type]
        conn.set_trace_callback(ran.append)
        return conn

    monkeypatch.setattr(jsqlite.sqlite3, "connect", traced)
    return ran


@pytest.mark.parametrize(
    "argv",
    [("list",), ("list", "--state", "all"), ("show", "7"), ("history", "--rule", "r"),
     ("release", "--all", "--dry-run")],
)  # fmt: skip
def test_the_looking_commands_do_not_check_the_whole_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    """Every `trapd journal list / show / history` ran PRAGMA quick_check over the whole file
    before showing anything: 2.1 s for a listing of 5 rows of a 1,000,000-action journal (330 MB)
    on the CI VM, 0.3 s without, every time an admin looked. They read what they show; a damaged
    page they read still says so (the tests above), and `trapd journal check` checks the file."""
    from trapd.cli import main

    path = _journal_file(tmp_path)
    make_journal(path, 20)
    ran = _statements(monkeypatch)
    assert main(["journal", "--journal", str(path), *argv]) in (0, 1), capsys.readouterr()  # 1: none held
    assert ran, "the trace saw no statement"
    checks = [s for s in ran if "quick_check" in s or "integrity_check" in s]
    assert not checks, checks


def test_damage_in_pages_a_listing_does_not_read_is_found_by_journal_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trapd.cli import main

    path = _journal_file(tmp_path)
    make_journal(path, 300)
    assert main(["journal", "--journal", str(path), "check"]) == 0
    out = capsys.readouterr()
    assert "ok" in out.out and str(path) in out.out, out
    _poke_byte(path, _first_events_leaf(path), b"\x00")  # the oldest events: nothing lists them
    assert main(["journal", "--journal", str(path), "list"]) == 0
    out = capsys.readouterr()
    assert out.out.splitlines()[0].split()[:2] == ["ID", "STATE"] and not out.err, out
    assert main(["journal", "--journal", str(path), "check"]) == 1
    out = capsys.readouterr()
    assert "damaged" in out.out and str(path) in out.out and "move it aside" in out.out, out
    assert main(["journal", "--journal", str(path), "--json", "check"]) == 1
    d = json.loads(capsys.readouterr().out)
    assert d["ok"] is False and d["problem"], d


def test_journal_check_of_a_shared_journal_says_what_checks_it(
    pg_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trapd.cli import main

    cfg = tmp_path / "trapd.yaml"
    cfg.write_text(json.dumps({"dispatch": {"journal": {"url": pg_url, "instance": "ops"}}}))
    assert main(["journal", "-c", str(cfg), "check"]) == 2
    assert "pg_amcheck" in capsys.readouterr().err


@pytest.mark.parametrize("content", [b"root:x:0:0:root:/root:/bin/bash\n", b""])
@pytest.mark.parametrize("argv", [("list",), ("show", "1"), ("cancel", "1"), ("check",)])
def test_a_file_that_is_no_journal_is_named_so_without_advice_to_move_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, argv: tuple[str, ...]
) -> None:
    """`trapd journal --journal FILE` on a file that is no SQLite database (a mistyped path:
    /etc/passwd) printed the daemon's recovery advice: 'To recover, move it aside ... (mv
    /etc/passwd /etc/passwd.damaged; ...) and start trapd again for a new, empty journal'. The
    read-only commands meant to say only 'is not an SQLite database', but took any message
    with 'empty' in it for the empty file's, and that advice has 'a new, empty journal'. The
    command only looks at (or changes rows of) the file the operator named: it says what the
    file is; the daemon's start-up, which refuses its own journal, still gives the advice."""
    from trapd.cli import main

    path = tmp_path / "passwd"
    path.write_bytes(content)
    assert main(["journal", "--journal", str(path), *argv]) == 2
    err = capsys.readouterr().err
    assert str(path) in err and ("not an SQLite database" in err or "empty (0 bytes)" in err), err
    assert "mv " not in err and "move it aside" not in err, err
    assert path.read_bytes() == content


def _foreign_database(path: Path) -> None:
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE lease4 (address INTEGER PRIMARY KEY, hwaddr BLOB)")
        conn.execute("CREATE TABLE meta (k TEXT, v TEXT)")  # a name trapd's journal has too
        conn.execute("INSERT INTO lease4 VALUES (167837953, x'001122334455')")
    conn.close()
    os.chmod(path, 0o644)


@pytest.mark.parametrize("argv", [("list",), ("show", "1"), ("cancel", "1"), ("retry", "1")])
def test_another_application_s_sqlite_database_is_not_taken_for_a_journal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: tuple[str, ...]
) -> None:
    """`trapd journal --journal some.db cancel 1` on an SQLite database of something else (a
    mistyped path, another program's state) created trapd's tables in it (actions, events,
    meta, cap_hits, cap_slots), switched it to WAL mode and made it 0600 ('nothing cancelled:
    no such id'); list said 'reading the journal failed: OperationalError: no such table:
    actions'. A database with tables and none of trapd's is named so, and left as it was."""
    from trapd.cli import main

    path = tmp_path / "leases.db"
    _foreign_database(path)
    before = path.read_bytes()
    assert main(["journal", "--journal", str(path), *argv]) == 2
    err = capsys.readouterr().err
    assert f"{path} is not a trapd journal" in err and "lease4" in err, err
    assert path.read_bytes() == before
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leases.db"]


def test_the_daemon_does_not_journal_into_another_application_s_database(tmp_path: Path) -> None:
    path = tmp_path / "leases.db"
    _foreign_database(path)
    before = path.read_bytes()

    async def run() -> None:
        with pytest.raises(JournalError, match="is not a trapd journal"):
            await SQLiteJournal(path).open()

    asyncio.run(run())
    assert path.read_bytes() == before and stat.S_IMODE(path.stat().st_mode) == 0o644


def test_looking_at_a_journal_a_killed_trapd_left_does_not_write_its_wal_into_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """trapd killed (SIGKILL, a crash, power) leaves its last commits in the -wal file. `trapd
    journal list` (read-only: 'nothing is written') was then the last connection to close, and
    SQLite checkpointed the WAL into the journal and removed the -wal and -shm files: a write into
    a file that may be the damaged journal moved aside for investigation (the evidence changed,
    damaged pages written to). A journal with a WAL is now opened read-only proper: the WAL is
    read (its commits are shown), never copied."""
    import subprocess

    from trapd.cli import main

    path = _journal_file(tmp_path)
    make_journal(path, 20)
    crash = (
        "import sqlite3, os, sys\n"
        "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "c.execute('PRAGMA wal_autocheckpoint = 0')\n"
        "c.execute(\"UPDATE actions SET key = 'committed-before-the-kill' WHERE id = 3\")\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", crash, str(path)], check=True, timeout=30)
    wal = Path(f"{path}-wal")
    before = (path.read_bytes(), wal.read_bytes())
    assert before[1], "no WAL left"
    assert main(["journal", "--journal", str(path), "show", "3"]) == 0
    assert "committed-before-the-kill" in capsys.readouterr().out
    assert main(["journal", "--journal", str(path), "list"]) == 0
    capsys.readouterr()
    assert (path.read_bytes(), wal.read_bytes()) == before


def test_a_journal_cut_short_while_its_tables_were_made_is_still_trapd_s(tmp_path: Path) -> None:
    """trapd killed on its very first start, after the journal's first tables were made (meta)
    and before the others: the refusal of another application's database (518011e) took the
    file for one (tables, no 'actions'), and trapd would never start on it again. A database
    with any of trapd's tables is trapd's: the rest are made."""
    path = tmp_path / "journal.sqlite"
    conn = sqlite3.connect(path)
    with conn:
        conn.execute("CREATE TABLE meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
    conn.close()

    async def run() -> None:
        async with SQLiteJournal(path) as j:
            now = time.time()
            r = await j.add(make_event().to_dict(), [_entry(1, now)], [], now)
            assert r.states == ["scheduled"]

    asyncio.run(run())
