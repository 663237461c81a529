"""The embedded journal: one SQLite file, one writer thread, group commits.

SQLite specifics, and why:

* WAL mode: readers (``trapd journal`` while the daemon runs) never block the
  writer, and a commit is one append to the WAL file.
* ``synchronous=NORMAL`` by default: in WAL mode a committed transaction is in
  the WAL file (the OS page cache) when COMMIT returns, so a process crash
  (SIGKILL, OOM kill, segfault) loses nothing committed; only a power loss or
  kernel crash may roll back the last transactions before a checkpoint.
  ``FULL`` also fsyncs the WAL on every commit, which survives power loss and
  costs one fsync per group commit. Choose it where the host has no UPS.
* One writer thread owns the connection and commits in groups: whatever
  operations queued up while the previous commit ran go into the next
  transaction. At a few actions a second that is one commit each (lowest
  latency); in a storm it becomes hundreds of rows per commit (throughput).
  Every operation's future resolves only after its transaction committed, so
  ``await journal.add(...)`` returning means "durable". Reads go through the
  same thread, so the dispatcher always reads its own writes.
* Checkpoints (WAL -> database file, with its fsync) run in a second thread on
  a second connection, once a second, PASSIVE, never inside a commit: see
  :data:`CHECKPOINT_INTERVAL` for the latency this saves.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from trapd.dispatch.journal.model import (
    ACTIVE,
    FINISHED,
    INTERRUPTED_HOLD_FOR,
    PRUNE_CHUNK,
    AddResult,
    CapCheck,
    ClaimResult,
    Entry,
    HistoryFilter,
    JournalDamaged,
    JournalError,
    JournalFull,
    JournalHealth,
    JournalNotice,
    NewEntry,
    State,
    Takeover,
    Unreadable,
)
from trapd.dispatch.journal.rows import ACOLS as _ACOLS
from trapd.dispatch.journal.rows import COLS as _COLS
from trapd.dispatch.journal.rows import NCOLS as _NCOLS
from trapd.dispatch.journal.rows import SUMMARY_COLS as _SUMMARY_COLS
from trapd.dispatch.journal.rows import decode_due as _decode_due
from trapd.dispatch.journal.rows import dumps as _dumps
from trapd.dispatch.journal.rows import dumps_result as _dumps_result
from trapd.dispatch.journal.rows import entry_from_row as _entry
from trapd.dispatch.journal.rows import entry_read_leniently as _entry_read_leniently
from trapd.dispatch.journal.rows import lenient_cols as _lenient_cols
from trapd.dispatch.journal.rows import set_aside_error as _set_aside_error
from trapd.dispatch.journal.rows import stored_event as _stored_event
from trapd.dispatch.journal.rows import unreadable as _unreadable
from trapd.dispatch.journal.rows import unreadable_problem as _unreadable_problem
from trapd.event import event_id_floor
from trapd.statedir import PRIVATE_FILE, leave_to_state_owner, make_private_dir

SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (k TEXT PRIMARY KEY, v TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    id TEXT PRIMARY KEY,
    received_at REAL NOT NULL,
    source TEXT NOT NULL,
    trap_name TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS actions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id TEXT NOT NULL,
    received_at REAL NOT NULL,
    source TEXT NOT NULL,
    rule TEXT NOT NULL,
    action TEXT NOT NULL,
    idx INTEGER NOT NULL,
    params TEXT NOT NULL,
    key TEXT NOT NULL,
    mode TEXT NOT NULL,
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL,
    backoff REAL NOT NULL,
    max_age REAL NOT NULL,
    age_from REAL NOT NULL,
    created REAL NOT NULL,
    due REAL NOT NULL,
    started REAL,
    finished REAL,
    cancel_key TEXT,
    once_key TEXT,
    caps TEXT NOT NULL DEFAULT '[]',
    cap_exempt INTEGER NOT NULL DEFAULT 0,
    held_by TEXT,
    endpoint TEXT,
    mac TEXT,
    ip TEXT,
    item TEXT,
    result TEXT,
    last_error TEXT,
    owner TEXT
);
CREATE INDEX IF NOT EXISTS actions_pending ON actions(id) WHERE state = 'pending';
CREATE INDEX IF NOT EXISTS actions_state_due ON actions(state, due);
CREATE INDEX IF NOT EXISTS actions_key ON actions(key, state, due);
CREATE INDEX IF NOT EXISTS actions_cancel ON actions(cancel_key) WHERE cancel_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS actions_once ON actions(once_key, created) WHERE once_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS actions_mac ON actions(mac, created) WHERE mac IS NOT NULL;
CREATE INDEX IF NOT EXISTS actions_ip ON actions(ip, created) WHERE ip IS NOT NULL;
CREATE INDEX IF NOT EXISTS actions_source ON actions(source, created);
CREATE INDEX IF NOT EXISTS actions_rule ON actions(rule, created);
CREATE INDEX IF NOT EXISTS actions_created ON actions(created);
CREATE INDEX IF NOT EXISTS actions_event ON actions(event_id);
CREATE INDEX IF NOT EXISTS actions_endpoint ON actions(endpoint) WHERE endpoint IS NOT NULL;
CREATE TABLE IF NOT EXISTS cap_hits (
    cap TEXT NOT NULL, key TEXT NOT NULL, at REAL NOT NULL, expires REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS cap_hits_window ON cap_hits(cap, key, at);
CREATE INDEX IF NOT EXISTS cap_hits_expires ON cap_hits(expires);
CREATE TABLE IF NOT EXISTS cap_slots (
    cap TEXT NOT NULL, key TEXT NOT NULL, slot INTEGER NOT NULL, n INTEGER NOT NULL, expires REAL NOT NULL,
    PRIMARY KEY (cap, key, slot)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS cap_slots_expires ON cap_slots(expires);
"""

# A cap's window is counted in CAP_SLOTS slots (starts per 1/60 of ``per``), not one row per
# start: counting one row per start cost O(starts in the window) per claim, 0.5 ms at 1,000
# and 28 ms at 60,000 (a cap of 1,000 per second, counted over a minute), in the writer thread
# that every commit waits for. The slot holding the window's start is counted whole, so a cap
# counts the starts of the last ``per`` plus at most 1/60 of it: it holds a little early, never
# late. (cap_hits is the earlier table: kept so old journals open, no longer written.)
CAP_SLOTS = 60


def _cap_slot(c: CapCheck) -> tuple[str, float]:
    """The cap's name in cap_slots (its window is part of it: a rule's new ``per`` counts afresh) and
    the width of one slot in seconds."""
    return f"{c.label}/{c.per:g}", max(c.per / CAP_SLOTS, 0.001)


def _cap_full(conn: sqlite3.Connection, caps: Sequence[CapCheck], now: float) -> CapCheck | None:
    """The first cap whose window has no room for one more start, or None."""
    for c in caps:
        name, width = _cap_slot(c)
        (n,) = conn.execute(
            "SELECT coalesce(sum(n), 0) FROM cap_slots WHERE cap = ? AND key = ? AND slot >= ?",
            (name, c.key, int((now - c.per) // width)),
        ).fetchone()
        if n >= c.limit:
            return c
    return None


def _cap_count(conn: sqlite3.Connection, caps: Sequence[CapCheck], now: float) -> None:
    """One start in every cap's window."""
    for c in caps:
        name, width = _cap_slot(c)
        slot = int(now // width)
        conn.execute(
            "INSERT INTO cap_slots (cap, key, slot, n, expires) VALUES (?, ?, ?, 1, ?) "
            "ON CONFLICT (cap, key, slot) DO UPDATE SET n = n + 1",
            (name, c.key, slot, (slot + 1) * width + c.per),
        )


class _OpFailed(Exception):
    """An operation raised inside an optimistic batch: run the batch again, one savepoint each."""


def _placeholders(n: int) -> str:
    return ",".join("?" * n)


_ACTIVE_SQL = "('scheduled','pending','failed')"
# An action must wait while an earlier one with the same key waits for a retry
# or for a circuit breaker: the key's order is arrival order, failures included.
_NOT_BLOCKED = (
    "NOT EXISTS (SELECT 1 FROM actions b WHERE b.key = a.key AND b.state IN ('failed','pending') "
    "AND b.due > :now AND b.id < a.id)"
)


def _op_setup(conn: sqlite3.Connection, synchronous: str) -> None:
    conn.executescript(_SCHEMA)
    # One transaction with the write lock: several processes may open one journal at once
    # (service.workers), and only one of them may add a missing column.
    conn.execute("BEGIN IMMEDIATE")
    try:
        row = conn.execute("SELECT v FROM meta WHERE k = 'schema'").fetchone()
        if row is None:
            conn.execute("INSERT INTO meta (k, v) VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
        elif int(row[0]) > SCHEMA_VERSION:
            raise JournalError(
                f"journal schema {row[0]} is newer than this trapd understands ({SCHEMA_VERSION})"
            )
        _add_missing_columns(conn)
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


# Columns added after the first release: (name, declaration). Additive only, NULL in old rows,
# so an older trapd can still open a journal a newer one migrated (the schema version stays).
_ADDED_COLUMNS = (("owner", "TEXT"), ("journaled_by", "TEXT"))


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    have = {r[1] for r in conn.execute("PRAGMA table_info(actions)").fetchall()}
    for name, decl in _ADDED_COLUMNS:
        if name not in have:
            conn.execute(f"ALTER TABLE actions ADD COLUMN {name} {decl}")


def _shadow_missing_columns(conn: sqlite3.Connection) -> None:
    """Inspection of a journal an older trapd made, without upgrading it (that is the daemon's
    job, when it opens the file): a view in the connection's own in-memory temp schema, which
    SQLite searches before the file's, adds the columns added since, NULL as in old rows."""
    try:
        have = {r[1] for r in conn.execute("PRAGMA main.table_info(actions)").fetchall()}
    except sqlite3.DatabaseError:
        return  # damaged: the reads say so
    missing = [name for name, _ in _ADDED_COLUMNS if name not in have]
    if have and missing:
        conn.execute("PRAGMA temp_store = MEMORY")
        nulls = ", ".join(f"NULL AS {name}" for name in missing)
        conn.execute(f"CREATE TEMP VIEW actions AS SELECT *, {nulls} FROM main.actions")


# What a claim checks for the key (see _op_claim), for a row about to be inserted (so every row
# of the key is earlier than it).
_KEY_BUSY = (
    "SELECT 1 FROM actions WHERE key = ? AND (state IN ('pending', 'failed', 'running') "
    "OR (state = 'scheduled' AND due <= ?)) LIMIT 1"
)


def _op_add(
    conn: sqlite3.Connection,
    event: Mapping[str, Any] | None,
    entries: Sequence[NewEntry],
    cancel_keys: Sequence[str],
    now: float,
    owner: str | None = None,
) -> AddResult:
    event_id = str(event["id"]) if event else ""
    cancelled: list[int] = []
    cancelled_actions: list[str] = []
    for ck in cancel_keys:
        cur = conn.execute(
            f"UPDATE actions SET state = 'cancelled', finished = ?, last_error = ?, result = ? "
            f"WHERE cancel_key = ? AND state IN {_ACTIVE_SQL} RETURNING id, action",
            (now, f"cancelled by event {event_id} (cancel key {ck})", _dumps({"cancelled_by": event_id}), ck),
        )
        for id_, action_name in cur.fetchall():
            cancelled.append(id_)
            cancelled_actions.append(action_name)
    if event is not None and (entries or cancelled):
        conn.execute(
            "INSERT OR IGNORE INTO events (id, received_at, source, trap_name, data) VALUES (?, ?, ?, ?, ?)",
            (
                event_id,
                float(event["received_at"]),
                str(event["source"]),
                str(event.get("trap_name", "")),
                _stored_event(event),
            ),
        )
    received_at = float(event["received_at"]) if event else now
    source = str(event["source"]) if event else ""
    ids: list[int] = []
    states: list[State] = []
    dups: list[int | None] = []
    for e in entries:
        state, result, error, dup = e.state, e.result, e.last_error, None
        if e.once_key and e.once_within and state in ("pending", "scheduled", "done"):
            row = conn.execute(
                "SELECT id FROM actions WHERE once_key = ? AND created >= ? "
                "AND state NOT IN ('cancelled', 'dead') ORDER BY id LIMIT 1",
                (e.once_key, now - e.once_within),
            ).fetchone()
            if row is not None:
                dup = int(row[0])
                state, result = "cancelled", {"duplicate_of": dup}
                error = f"duplicate of {dup} (once-within {e.once_within:g}s, key {e.once_key})"
        final = state in FINISHED
        claimed = (
            e.claim
            and state == "pending"
            and e.due <= now
            and conn.execute(_KEY_BUSY, (e.key, now)).fetchone() is None
            # A full cap: left pending, for the claim to hold it (with its message and hold_for).
            and (not e.caps or _cap_full(conn, e.caps, now) is None)
        )
        if claimed:
            state = "running"
            if e.caps:
                _cap_count(conn, e.caps, now)
        cur = conn.execute(
            "INSERT INTO actions (event_id, received_at, source, rule, action, idx, params, key, mode, "
            "state, "
            "max_attempts, backoff, max_age, age_from, created, due, finished, cancel_key, once_key, caps, "
            "mac, ip, item, result, last_error, attempts, started, owner, journaled_by) "
            "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                event_id,
                received_at,
                source,
                e.rule,
                e.action,
                e.index,
                _dumps(e.params),
                e.key,
                e.mode,
                state,
                e.max_attempts,
                e.backoff,
                e.max_age,
                received_at,
                now,
                e.due,
                now if final else None,
                e.cancel_key,
                e.once_key,
                _dumps([c.to_json() for c in e.caps]) if e.caps else "[]",
                e.mac,
                e.ip,
                _dumps(e.item) if e.item is not None else None,
                _dumps(result) if result is not None else None,
                error,
                1 if claimed else 0,
                now if claimed else None,
                owner if claimed else None,
                owner,
            ),
        )
        assert cur.lastrowid is not None
        ids.append(cur.lastrowid)
        states.append(state)
        dups.append(dup)
    return AddResult(ids, states, dups, cancelled, cancelled_actions)


def _op_recover(
    conn: sqlite3.Connection, now: float, hold_unless: frozenset[str] | None, owner: str | None
) -> dict[str, int]:
    # With an owner, only the rows that owner claimed: the other processes sharing the journal
    # are alive and running theirs (service.workers). Without one, every running row (one trapd).
    mine, mine_args = ("", ()) if owner is None else (" AND owner = ?", (owner,))
    held = 0
    if hold_unless is not None:
        names = sorted(hold_unless)
        cur = conn.execute(
            f"UPDATE actions SET state = 'held', held_by = 'interrupted', due = ?, "
            f"last_error = 'interrupted while running; it may have taken effect: release it to run it again' "
            f"WHERE state = 'running' AND action NOT IN ({_placeholders(len(names))}){mine}",
            (now + INTERRUPTED_HOLD_FOR, *names, *mine_args),
        )
        held = cur.rowcount
    cur = conn.execute(
        "UPDATE actions SET state = 'pending', due = MIN(due, ?), "
        "last_error = COALESCE(last_error || '; ', '') || 'interrupted by a restart' "
        f"WHERE state = 'running'{mine}",
        (now, *mine_args),
    )
    rerun = cur.rowcount
    waiting = conn.execute(f"SELECT count(*) FROM actions WHERE state IN {_ACTIVE_SQL}").fetchone()[0]
    return {"rerun": rerun, "held": held, "waiting": waiting}


def _op_due(
    conn: sqlite3.Connection, now: float, limit: int, skip: frozenset[int]
) -> tuple[list[Entry], bool, list[tuple[int, str]]]:
    """The due entries, whether there may be more, and (id, problem) of due rows that cannot be
    read back (the caller sets them aside)."""
    # Ids first (index only), full rows only for what is not in memory already.
    args = {"now": now, "limit": limit + len(skip)}
    pending = conn.execute(
        f"SELECT a.id FROM actions a WHERE a.state = 'pending' AND a.due <= :now AND {_NOT_BLOCKED} "
        f"ORDER BY a.id LIMIT :limit",
        args,
    ).fetchall()
    waiting = conn.execute(
        f"SELECT a.id FROM actions a WHERE a.state IN ('scheduled','failed') AND a.due <= :now "
        f"AND {_NOT_BLOCKED} ORDER BY a.id LIMIT :limit",
        args,
    ).fetchall()
    hit = len(pending) >= args["limit"] or len(waiting) >= args["limit"]
    fresh = [i for i in sorted({r[0] for r in pending} | {r[0] for r in waiting}) if i not in skip]
    more = hit or len(fresh) > limit
    ids = fresh[:limit]
    if not ids:
        return [], more, []
    entries, bad = _read_entries(
        conn, f"SELECT {_ACOLS}, e.data FROM actions a LEFT JOIN events e ON e.id = a.event_id", ids
    )
    return entries, more, bad


def _read_entries(
    conn: sqlite3.Connection, select: str, ids: Sequence[int]
) -> tuple[list[Entry], list[tuple[int, str]]]:
    """The rows ``ids`` of ``select`` (COLS and the event's data, from ``actions a``) as entries,
    and (id, problem) of those that cannot be read back, for the caller to set aside."""
    where = " WHERE a.id "
    bad: list[tuple[int, str]] = []
    try:
        rows = conn.execute(f"{select}{where}IN ({_placeholders(len(ids))}) ORDER BY a.id", ids).fetchall()
    except sqlite3.OperationalError as exc:
        if not _is_not_utf8(exc):
            raise
        # One row's text is not UTF-8 (Python's sqlite3 refuses the whole answer): row by row,
        # so that row alone is set aside. Only this kind of damage: a malformed page is the
        # file's, and reading around it would set good actions aside with it.
        rows = []
        for id_ in ids:
            try:
                rows += conn.execute(f"{select}{where}= ?", (id_,)).fetchall()
            except sqlite3.OperationalError as row_exc:
                if not _is_not_utf8(row_exc):
                    raise
                bad.append((id_, _unreadable_problem(row_exc)))
    entries, undecodable = _decode_due(rows)
    return entries, sorted(bad + undecodable)


def _op_set_aside(
    conn: sqlite3.Connection, bad: Sequence[tuple[int, str]], now: float, states: str = _ACTIVE_SQL
) -> list[Unreadable]:
    """Rows that cannot be read back, waiting in ``states`` (due ones; held ones whose hold ran
    out): dead (never run), and what of them can still be read."""
    out: list[Unreadable] = []
    cols = ", ".join(f"CAST({c} AS BLOB)" for c in _SUMMARY_COLS)  # bytes: read whatever they hold
    for id_, problem in bad:
        summary = conn.execute(f"SELECT {cols} FROM actions WHERE id = ?", (id_,)).fetchone()
        cur = conn.execute(
            "UPDATE actions SET state = 'dead', finished = ?, last_error = ? "
            f"WHERE id = ? AND state IN {states}",
            (now, _set_aside_error(problem), id_),
        )
        if cur.rowcount:  # not when another worker sharing the journal set it aside first
            out.append(_unreadable(id_, problem, summary))
    return out


def _op_next_due(conn: sqlite3.Connection, now: float) -> float | None:
    best: float | None = None
    for state in ("scheduled", "failed", "pending"):
        row = conn.execute(
            "SELECT min(due) FROM actions WHERE state = ? AND due > ?", (state, now)
        ).fetchone()
        if row[0] is not None and (best is None or row[0] < best):
            best = float(row[0])
    return best


def _op_claim(conn: sqlite3.Connection, id_: int, now: float, owner: str | None) -> ClaimResult:
    # Per-key order is decided here, against the journal, not by what happens to be in memory:
    # an earlier action with the same key that is due, retrying or running goes first. And
    # whatever its id, one running (in another process) means wait: an older action becomes
    # runnable after newer ones of its key started when a delay falls due, or an operator
    # releases or retries it (it used to start beside the newer one: two at once for one key).
    row = conn.execute(
        "SELECT a.state, a.attempts, a.cap_exempt, a.caps, CASE WHEN EXISTS (SELECT 1 FROM actions b "
        "WHERE b.key = a.key AND b.id < a.id AND (b.state IN ('pending', 'failed') "
        "OR (b.state = 'scheduled' AND b.due <= :now))) THEN 'waiting' "
        "WHEN EXISTS (SELECT 1 FROM actions b WHERE b.key = a.key AND b.id <> a.id AND b.state = 'running') "
        "THEN 'running' END FROM actions a WHERE a.id = :id",
        {"id": id_, "now": now},
    ).fetchone()
    if row is None or row[0] not in ACTIVE:
        return ClaimResult("gone")
    _state, attempts, exempt, caps_json, earlier = row
    if earlier is not None:
        return ClaimResult("wait", None, attempts, earlier)
    # Caps count starts, not attempts: a retry of an action already counted passes.
    if attempts == 0 and not exempt and caps_json != "[]":
        caps = [CapCheck.from_json(c) for c in json.loads(caps_json)]
        full = _cap_full(conn, caps, now)
        if full is not None:
            conn.execute(
                "UPDATE actions SET state = 'held', held_by = ?, due = ?, last_error = ? WHERE id = ?",
                (
                    full.label,
                    now + full.hold_for,
                    f"held: rate cap {full.label} reached ({full.limit} per {full.per:g}s "
                    f"for {full.key or 'all'})",
                    id_,
                ),
            )
            return ClaimResult("held", full.label, attempts)
        _cap_count(conn, caps, now)
    conn.execute(
        "UPDATE actions SET state = 'running', attempts = attempts + 1, started = ?, held_by = NULL, "
        "owner = ? WHERE id = ?",
        (now, owner, id_),
    )
    return ClaimResult("running", None, attempts + 1)


def _op_finish(
    conn: sqlite3.Connection,
    id_: int,
    state: str,
    now: float,
    result: Any,
    error: str | None,
    started: float | None = None,
) -> None:
    conn.execute(
        "UPDATE actions SET state = ?, finished = ?, result = ?, last_error = COALESCE(?, last_error), "
        "started = COALESCE(?, started) WHERE id = ? AND state = 'running'",
        (state, now, _dumps_result(result) if result is not None else None, error, started, id_),
    )


def _op_unclaim(conn: sqlite3.Connection, ids: Sequence[int]) -> int:
    if not ids:
        return 0
    cur = conn.execute(
        f"UPDATE actions SET state = 'pending', attempts = max(0, attempts - 1), started = NULL "
        f"WHERE id IN ({_placeholders(len(ids))}) AND state = 'running'",
        tuple(ids),
    )
    return cur.rowcount


def _op_retry_later(conn: sqlite3.Connection, id_: int, due: float, error: str, endpoint: str | None) -> None:
    conn.execute(
        "UPDATE actions SET state = 'failed', due = ?, last_error = ?, endpoint = COALESCE(?, endpoint) "
        "WHERE id = ? AND state = 'running'",
        (due, error, endpoint, id_),
    )


def _op_note(conn: sqlite3.Connection, id_: int, result: Any) -> None:
    conn.execute(
        "UPDATE actions SET result = ? WHERE id = ? AND state = 'running'", (_dumps_result(result), id_)
    )


def _op_defer(conn: sqlite3.Connection, id_: int, due: float, reason: str, endpoint: str | None) -> None:
    conn.execute(
        f"UPDATE actions SET due = ?, last_error = ?, endpoint = COALESCE(?, endpoint) "
        f"WHERE id = ? AND state IN {_ACTIVE_SQL}",
        (due, reason, endpoint, id_),
    )


def _op_expedite(conn: sqlite3.Connection, endpoint: str, now: float) -> int:
    cur = conn.execute(
        "UPDATE actions SET due = ? WHERE endpoint = ? AND state IN ('pending','failed') AND due > ?",
        (now, endpoint, now),
    )
    return cur.rowcount


def _op_cancel(conn: sqlite3.Connection, ids: Sequence[int], now: float, reason: str) -> list[int]:
    if not ids:
        return []
    cur = conn.execute(
        f"UPDATE actions SET state = 'cancelled', finished = ?, last_error = ? "
        f"WHERE id IN ({_placeholders(len(ids))}) AND state IN ('scheduled','pending','failed','held') "
        f"RETURNING id",
        (now, reason, *ids),
    )
    return sorted(r[0] for r in cur.fetchall())


def _op_retry(conn: sqlite3.Connection, ids: Sequence[int], now: float) -> list[int]:
    # What an attempt recorded (ActionContext.record) stays, for the rerun (ctx.previous) and for
    # `trapd kea restore`: a dead kea.lease-del whose lease Kea deleted keeps it restorable. A
    # cancelled row's result says why it was cancelled (a copy, a clearing trap): not kept.
    if not ids:
        return []
    cur = conn.execute(
        f"UPDATE actions SET state = 'pending', due = ?, attempts = 0, age_from = ?, finished = NULL, "
        f"result = CASE WHEN state = 'cancelled' THEN NULL ELSE result END, "
        f"held_by = NULL, cap_exempt = 1, last_error = 'retried by an operator; was: ' || "
        f"COALESCE(last_error, state) WHERE id IN ({_placeholders(len(ids))}) "
        f"AND state IN ('dead','failed','held','cancelled') RETURNING id",
        (now, now, *ids),
    )
    return sorted(r[0] for r in cur.fetchall())


def _op_unreadable_rows(conn: sqlite3.Connection, ids: Sequence[int]) -> dict[int, str]:
    if not ids:
        return {}
    _, bad = _read_entries(
        conn, f"SELECT {_ACOLS}, e.data FROM actions a LEFT JOIN events e ON e.id = a.event_id", ids
    )
    return dict(bad)


def _op_release(conn: sqlite3.Connection, now: float, ids: Sequence[int], rule: str | None) -> list[int]:
    where = "state = 'held'"
    args: list[Any] = []
    if ids:
        where += f" AND id IN ({_placeholders(len(ids))})"
        args += list(ids)
    if rule is not None:
        where += " AND rule = ?"
        args.append(rule)
    cur = conn.execute(
        f"UPDATE actions SET state = 'pending', due = ?, cap_exempt = 1, held_by = NULL, "
        f"last_error = 'released by an operator' WHERE {where} RETURNING id",
        (now, *args),
    )
    return sorted(r[0] for r in cur.fetchall())


def _op_expire_held(conn: sqlite3.Connection, now: float) -> tuple[list[Entry], list[Unreadable]]:
    """Held actions whose hold ran out: dead. Returned as they were (held), with those whose row
    cannot be read back set aside instead (one such row failed the read of all of them on every
    poll: none expired, and the maintenance after it never ran)."""
    ids = [r[0] for r in conn.execute("SELECT id FROM actions WHERE state = 'held' AND due <= ?", (now,))]
    if not ids:
        return [], []
    entries, bad = _read_entries(conn, f"SELECT {_ACOLS}, NULL FROM actions a", ids)
    if entries:
        conn.execute(
            "UPDATE actions SET state = 'dead', finished = ?, "
            "last_error = 'held by ' || COALESCE(held_by, 'a cap') || ', not released before it expired' "
            f"WHERE id IN ({_placeholders(len(entries))}) AND state = 'held'",
            (now, *(e.id for e in entries)),
        )
    return entries, _op_set_aside(conn, bad, now, "('held')") if bad else []


def _op_get(conn: sqlite3.Connection, id_: int, with_event: bool, lenient: bool = False) -> Entry | None:
    cols = f"{_lenient_cols('a.')}, CAST(e.data AS BLOB)" if lenient else f"{_ACOLS}, e.data"
    row = conn.execute(
        f"SELECT {cols} FROM actions a LEFT JOIN events e ON e.id = a.event_id WHERE a.id = ?",
        (id_,),
    ).fetchone()
    if row is None:
        return None
    return (_entry_read_leniently if lenient else _entry)(row, row[_NCOLS] if with_event else None)


def _op_history(conn: sqlite3.Connection, f: HistoryFilter, lenient: bool = False) -> list[Entry]:
    where: list[str] = []
    args: list[Any] = []
    for col, value in (
        ("mac", f.mac),
        ("ip", f.ip),
        ("source", f.source),
        ("rule", f.rule),
        ("action", f.action),
    ):
        if value is not None:
            where.append(f"{col} = ?")
            args.append(value)
    if f.states:
        where.append(f"state IN ({_placeholders(len(f.states))})")
        args += list(f.states)
    if f.since is not None:
        where.append("created >= ?")
        args.append(f.since)
    if f.until is not None:
        where.append("created < ?")
        args.append(f.until)
    if f.host is not None:  # journaled it or claimed it (model.HistoryFilter)
        where.append(
            "(owner = ? OR substr(owner, 1, ?) = ? OR journaled_by = ? OR substr(journaled_by, 1, ?) = ?)"
        )
        args += [f.host, len(f.host) + 1, f.host + "/"] * 2
    # The newest ids first, from an index where one serves (their rowids are in every index), then
    # only those rows read: sorting whole rows (parameters, results) read every matching row, 3.1 s
    # for `list --state done` among 500,000 done actions, 0.32 s so (a history by rule: 228 -> 14 ms).
    ids = "SELECT id FROM actions"
    if where:
        ids += " WHERE " + " AND ".join(where)
    sql = (
        f"SELECT {_lenient_cols() if lenient else _COLS} FROM actions "
        f"WHERE id IN ({ids} ORDER BY id DESC LIMIT ?) ORDER BY id DESC"
    )
    args.append(f.limit)
    return [(_entry_read_leniently if lenient else _entry)(r) for r in conn.execute(sql, args).fetchall()]


def _op_counts(conn: sqlite3.Connection) -> dict[str, int]:
    out = dict.fromkeys(("scheduled", "pending", "running", "failed", "held", "dead"), 0)
    for state in out:
        (out[state],) = conn.execute("SELECT count(*) FROM actions WHERE state = ?", (state,)).fetchone()
    return out


def _op_prune(conn: sqlite3.Connection, before: float, now: float, limit: int = PRUNE_CHUNK) -> int:
    """One transaction of a prune: up to ``limit`` actions finished before ``before``, their
    events, and (when that was the last of them) the old events no action refers to.

    Found by ``created`` (an action finishes after it is journaled), so that the rows kept are
    not read: a prune that found nothing read every finished action and every event, 4-5 s of
    the writer's time an hour with 1,000,000 of each."""
    events = [
        e
        for (e,) in conn.execute(
            "DELETE FROM actions WHERE id IN (SELECT id FROM actions WHERE created < ? AND finished < ? "
            "AND +state IN ('done','dead','cancelled') LIMIT ?) RETURNING event_id",
            (before, before, limit),
        ).fetchall()
    ]
    unique = list(dict.fromkeys(events))
    for i in range(0, len(unique), 500):
        part = unique[i : i + 500]
        conn.execute(
            f"DELETE FROM events WHERE id IN ({_placeholders(len(part))}) "
            "AND NOT EXISTS (SELECT 1 FROM actions a WHERE a.event_id = events.id)",
            part,
        )
    if len(events) < limit:
        # Events of a trap that planned nothing and only cancelled (no action refers to them):
        # those as old as what is pruned, by the id's time prefix.
        conn.execute(
            "DELETE FROM events WHERE id < ? "
            "AND NOT EXISTS (SELECT 1 FROM actions a WHERE a.event_id = events.id)",
            (event_id_floor(before),),
        )
        conn.execute("DELETE FROM cap_hits WHERE expires < ?", (now,))
        conn.execute("DELETE FROM cap_slots WHERE expires < ?", (now,))
    _give_back_pages(conn, 2000)
    return len(events)


def _give_back_pages(conn: sqlite3.Connection, most: int) -> None:
    """Up to ``most`` free pages back to the file system (the journal is auto_vacuum INCREMENTAL).

    One statement a page: ``PRAGMA incremental_vacuum(N)`` frees a page per result row, and
    Python's sqlite3 steps a statement without result columns once (fetchall() included), so
    it freed one page per prune, and the file never shrank. About 25 µs a page."""
    (free,) = conn.execute("PRAGMA freelist_count").fetchone()
    for _ in range(min(int(free), most)):
        conn.execute("PRAGMA incremental_vacuum(1)")


def _op_noop(conn: sqlite3.Connection) -> None:
    return None


def _op_data_version(conn: sqlite3.Connection) -> int:
    """``PRAGMA data_version`` changes when another connection commits: how the daemon sees the CLI.

    Only read here: :meth:`SQLiteJournal.changed` compares it with the last one it returned, on
    the event loop, once its batch succeeded. Kept here, the value was taken as seen when the
    batch failed (the change reported to nobody), or when it ran again one operation at a time
    after another operation failed (the second read said "unchanged").
    """
    (v,) = conn.execute("PRAGMA data_version").fetchone()
    return int(v)


@dataclass(slots=True)
class _Op:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    weight: int
    write: bool
    lazy: bool = False  # nobody waits for it (finish_soon): it may wait to share a later commit


# How long lazy operations (the "done" of finished actions) may wait, on the event loop's side,
# for an operation somebody awaits, to go to the writer with it and share its commit. At a steady
# rate each action then costs one commit and two thread wake-ups fewer (on a VM a wake-up costs
# tens of microseconds). Until the commit, a crash leaves the row running, so the action runs
# again after a restart: at least once, as documented for finish_soon.
LAZY_COMMIT_DELAY = 0.05

# Python's GIL switch interval while a journal is open (only ever lowered). Python's sqlite3
# releases the GIL around every SQLite step, so the writer thread takes the GIL back once or
# twice per statement; with the default 5 ms interval, an event loop that is busy without a
# break (the receive path in a storm) makes every one of those wait up to 5 ms, and the
# journal, so the dispatcher, falls to a few hundred actions a second or less. Measured with
# bench_journal.py (docs/dispatch.md, "Figures"): at 1 ms, 1.3-2.7x the actions done in a
# starved loop, no cost at a steady rate; at 0.5 ms no better there, and the writer's batches
# in a backlog shrank enough to cost 15-20 % more CPU per action.
WRITER_SWITCH_INTERVAL = 0.001

# How often the checkpointer thread moves committed WAL frames into the database file. SQLite's
# own auto-checkpoint runs inside the commit that crosses 1,000 WAL pages, on the writer thread,
# and a checkpoint fsyncs the database file: on a busy disk that one commit took 10-40 ms, and
# every action queued behind it waited as long (bench_latency.py at 1,000 traps/s on this VM's
# disk: dispatch p99 11 ms with it, 2.7 ms with the checkpoints moved off the commit path; on
# tmpfs 4.8 ms either way). A PASSIVE checkpoint from another connection runs beside the writer,
# never blocks it, and does the same fsyncs, so durability is what ``synchronous`` says it is.
CHECKPOINT_INTERVAL = 1.0

# How long a write waits for another process's write lock before it fails (PRAGMA busy_timeout).
BUSY_TIMEOUT = 10.0

# Seconds between the running daemon's checks of the whole file (dispatch.journal.integrity_check).
# Damage in pages nothing reads (old rows, an index no query walks) was found only by the next
# restart's start-up check, which then refused the journal. The check is PRAGMA quick_check, as at
# start-up: 0.25 s for 100,000 actions (34 MB) on the CI VM, on a connection and thread of its own
# (a WAL reader: commits go on meanwhile), so every 15 minutes costs well under 0.1 % of one core.
INTEGRITY_CHECK_INTERVAL = 900.0

# Past this many bytes of WAL that checkpoints could not get rid of, a warning (once) names the
# likely cause. Normally each checkpoint leaves about a second of commits; a reader that keeps a
# read transaction open (a `sqlite3` shell left in BEGIN, a backup) holds every later frame in the
# WAL, which then grows with every commit until the disk is full. 256 MiB: four times the size a
# checkpoint cuts the file back to (journal_size_limit), minutes of a storm's commits.
WAL_WARN_BYTES = 256 * 1024 * 1024

# Past this much WAL, all of it copied, the checkpointer restarts it. SQLite writes the WAL from
# its start again only when a write transaction begins with every frame copied; under commits
# without a pause (a storm) each PASSIVE checkpoint ends with newer frames behind it, so that
# never happened and the file grew with every commit (bench_soak.py, 3,000 traps/s: 3 GB in
# 3 minutes, no reader in the way). A RESTART checkpoint holds the writers while it copies what
# came since the PASSIVE one and waits for readers (at most WAL_RESTART_WAIT): a few ms once per
# 64 MiB of commits. 64 MiB: what journal_size_limit cuts the file back to once it restarts.
WAL_RESTART_BYTES = 64 * 1024 * 1024
# How long a restart waits for the writer's transaction and for readers before it gives up until
# the next round; the writers wait as long at most.
WAL_RESTART_WAIT_MS = 100


class SQLiteJournal:
    """The embedded journal: one SQLite file, one writer thread, group commits."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "normal",
        max_batch: int = 1000,
        commit_delay: float = 0.0,
        max_queued: int = 100_000,
        owner: str | None = None,
        checkpoint_interval: float | None = CHECKPOINT_INTERVAL,
        read_only: bool = False,
        lenient: bool = False,
        integrity_check: float | None = INTEGRITY_CHECK_INTERVAL,
        wal_warn_bytes: int = WAL_WARN_BYTES,
        check_at_open: bool | None = None,
        wal_restart_bytes: int = WAL_RESTART_BYTES,
    ) -> None:
        """``checkpoint_interval``: seconds between the checkpointer thread's WAL checkpoints
        (see :data:`CHECKPOINT_INTERVAL`); None leaves checkpoints to SQLite's auto-checkpoint
        inside the writer's commits, as before.

        ``integrity_check``: seconds between checks of the whole file while it is open
        (:meth:`_integrity_loop`); None or 0: none (``read_only`` never checks but at open).

        ``wal_warn_bytes``: WAL left after a checkpoint beyond which :meth:`notices` warns
        (see :data:`WAL_WARN_BYTES`).

        ``wal_restart_bytes``: WAL, every frame of it copied, past which the checkpointer
        makes the next commit write it from its start (see :data:`WAL_RESTART_BYTES`).

        ``read_only``: for ``trapd journal``'s inspection commands. Nothing is created or
        written, and a damaged file is opened anyway (what it is damaged by is in
        :attr:`damage`) so that what survived can be read; without it a damaged file is
        refused (:class:`JournalDamaged`) and never replaced.

        ``check_at_open``: ``PRAGMA quick_check`` of the whole file at open (default: unless
        ``read_only``). About 7 s per GB: the daemon's start-up pays it once; an admin's look
        (``trapd journal list``) paid it every time, for a listing of milliseconds. Unchecked,
        a read-only open reads only the schema, and a damaged page a read meets says so then.

        ``lenient`` (for looking at the rows, never for acting on what was read):
        :meth:`get` and :meth:`history` return a row that cannot be read back as far as it can
        be read (:func:`~trapd.dispatch.journal.rows.entry_read_leniently`) instead of failing."""
        if synchronous.lower() not in ("normal", "full"):
            raise ValueError("synchronous must be normal or full")
        self.path = Path(path)
        self.read_only = read_only
        self.check_at_open = not read_only if check_at_open is None else check_at_open
        self.lenient = lenient
        self.damage: str | None = None  # read_only: what the integrity check at open found
        # Whether commits work (a full disk, an I/O error): set by the writer thread, read by health().
        self._problem: str | None = None
        self._problem_since: float | None = None
        self._failed_writes = 0
        # Damage met by any operation, read or write (a page SQLite refuses, text that is not
        # UTF-8): unlike a full disk it does not go away when a later write succeeds.
        self._damage_seen: str | None = None
        self._unreadable: list[Unreadable] = []  # set aside by due(), not yet taken by set_aside()
        self.unreadable_count = 0  # since start
        self._damage_since: float | None = None
        # The periodic integrity check (a thread of its own; its results are applied on the event
        # loop): damage it found (cleared when a later check passes), the file replaced (never
        # cleared: the writer still writes to the old one), what to log once, the counts.
        self.integrity_check = integrity_check if integrity_check and not read_only else None
        self._checker: threading.Thread | None = None
        self._checker_stop = threading.Event()
        self._checking: sqlite3.Connection | None = None  # the check's connection while it runs
        self._file_id: tuple[int, int] | None = None  # (st_dev, st_ino) of the file opened
        # ... of its -wal and -shm files, as the writer opened them
        self._wal_ids: dict[str, tuple[int, int]] = {}
        self._wal_lost: str | None = None
        self._check_damage: str | None = None
        self._check_damage_since: float | None = None
        self._replaced: str | None = None
        self._check_failing = False
        self._notices: list[JournalNotice] = []
        self.integrity_checks: dict[str, int] = {"ok": 0, "damaged": 0, "error": 0}
        self.integrity_check_seconds = 0.0
        # What the checkpointer's last round left in the WAL (bytes), and whether that is past the
        # bound (said once each way).
        self.wal_warn_bytes = wal_warn_bytes
        self.wal_restart_bytes = wal_restart_bytes
        self.wal_restarts = 0  # restarts the checkpointer made (see WAL_RESTART_BYTES)
        self.wal_bytes = 0
        self._wal_growing = False
        self._probe_sent = 0.0
        self._owner = owner
        self.synchronous = synchronous.lower()
        self.max_batch = max_batch
        self.commit_delay = commit_delay
        self.max_queued = max_queued
        # Operations go to the writer in lists: the ones issued in one turn of the event loop in one
        # put (see _call). None stops the writer.
        self._queue: queue.SimpleQueue[list[_Op] | None] = queue.SimpleQueue()
        self._outbox: list[_Op] = []  # issued this turn, not handed to the writer yet (loop's thread)
        self._outbox_sent: asyncio.Handle | None = None
        self._queued = 0  # rows waiting, counted on the event loop's thread only
        self._lazy: list[_Op] = []  # lazy writes not handed to the writer yet (event loop's thread)
        self._lazy_timer: asyncio.TimerHandle | None = None
        self._thread: threading.Thread | None = None
        self._writers_lock: int | None = None  # fd of the lock file the writer threads share
        self.checkpoint_interval = checkpoint_interval
        self._checkpointer: threading.Thread | None = None
        self._checkpointer_stop = threading.Event()
        self.checkpoints = 0  # checkpoints run by the checkpointer thread (tests, benchmarks)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._data_version: int | None = None  # the last one changed() reported (event loop)
        # Commits and rows per commit, for the benchmark and the metrics.
        self.commits = 0
        self.committed_ops = 0

    # -- lifecycle

    def now(self) -> float:
        return time.time()  # one host: its own clock

    def take_overs(self) -> list[Takeover]:
        return []  # one host: nobody else's claims

    def notices(self) -> list[JournalNotice]:
        out, self._notices = self._notices, []
        return out

    def share_view(self, view: str) -> None:
        pass  # one host: nobody to compare with

    def other_views(self) -> dict[str, str]:
        return {}

    async def open(self) -> None:
        if self._thread is not None:
            return
        if not self.read_only:
            make_private_dir(self.path.parent)
        if sys.getswitchinterval() > WRITER_SWITCH_INTERVAL:
            sys.setswitchinterval(WRITER_SWITCH_INTERVAL)
        self._loop = asyncio.get_running_loop()
        ready: asyncio.Future[None] = self._loop.create_future()
        self._thread = threading.Thread(target=self._writer, args=(ready,), name="trapd-journal", daemon=True)
        self._thread.start()
        try:
            await ready
        except BaseException:
            # Cancelled (SIGTERM while starting) after the writer connected, the writer waits for
            # work for ever: told to end, or the join below held the event loop for good. A
            # writer that failed to open has ended already; its queue is replaced either way, so
            # the next open() does not meet this None.
            self._queue.put(None)
            self._thread.join()
            self._thread = None
            self._queue = queue.SimpleQueue()
            raise
        if self.checkpoint_interval is not None and not self.read_only:  # after the writer set WAL mode
            self._checkpointer_stop.clear()
            self._checkpointer = threading.Thread(
                target=self._checkpoint_loop, name="trapd-journal-checkpoint", daemon=True
            )
            self._checkpointer.start()
        if self.integrity_check is not None:
            self._checker_stop.clear()
            self._checker = threading.Thread(
                target=self._integrity_loop, name="trapd-journal-check", daemon=True
            )
            self._checker.start()

    async def close(self) -> None:
        if self._thread is None:
            return
        self._send_lazy()
        self._send_outbox()
        self._queue.put(None)
        thread, self._thread = self._thread, None
        checkpointer, self._checkpointer = self._checkpointer, None
        self._checkpointer_stop.set()
        checker, self._checker = self._checker, None
        self._checker_stop.set()
        checking = self._checking
        if checking is not None:
            checking.interrupt()  # a check of a large file ends now, not in seconds
        loop = asyncio.get_running_loop()
        if checkpointer is not None:
            await loop.run_in_executor(None, checkpointer.join)
        if checker is not None:
            await loop.run_in_executor(None, checker.join)
        # The writer's connection is the last to close: SQLite then checkpoints the rest of the WAL.
        await loop.run_in_executor(None, thread.join)

    async def __aenter__(self) -> SQLiteJournal:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def owner(self) -> str | None:
        """Recorded in every row this journal claims; :meth:`recover` can be scoped to it."""
        return self._owner

    # -- the writer thread

    def _connect(self) -> sqlite3.Connection:
        if self.read_only:
            return self._connect_read_only()
        new = not self.path.exists()
        if new:
            # Events and rendered parameters: private (0600) from the first byte, whatever the
            # umask. SQLite gives the -wal and -shm files the same mode.
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
            os.fchmod(fd, PRIVATE_FILE)
            os.close(fd)
            # Made by root (`sudo trapd run`) where the service's user keeps its state: that user's,
            # so the service can open it (SQLite then gives it the -wal and -shm files too).
            leave_to_state_owner(self.path, self.path.parent)
        else:
            self._refuse_unless_sqlite()
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=10.0)
        with contextlib.suppress(OSError):
            st = os.stat(self.path)
            self._file_id = (st.st_dev, st.st_ino)
        try:
            if not new:
                self._check_integrity(conn)
                _refuse_foreign(conn, self.path)  # before anything is written or chmodded
                for each in (self.path, Path(f"{self.path}-wal"), Path(f"{self.path}-shm")):
                    with contextlib.suppress(OSError):  # a journal an older trapd made 0640
                        if each.stat().st_mode & 0o077:
                            os.chmod(each, PRIVATE_FILE)
        except _NoAccess as exc:
            conn.close()
            raise JournalError(
                f"cannot open the journal {self.path} for writing: {exc}: the file or its directory is "
                "read-only for this user (trapd writes both: the journal, its -wal and -shm files)"
            ) from None
        except BaseException:
            conn.close()
            raise
        if new:
            # Pruned pages go back to the file system a little at a time (see _op_prune);
            # only possible when set before the first table exists.
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {self.synchronous.upper()}")
        conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT * 1000)}")
        if self.checkpoint_interval is not None:
            conn.execute("PRAGMA wal_autocheckpoint = 0")  # the checkpointer thread does it
        # After a checkpoint the WAL file is cut back to this, so a storm does not leave a huge file.
        conn.execute("PRAGMA journal_size_limit = 67108864")
        return conn

    def _refuse_unless_sqlite(self) -> None:
        """An existing file that cannot be a journal: refused, never replaced by a new one."""
        problem = header_problem(self.path)
        if problem is not None:
            raise self._damaged(problem)

    def _check_integrity(self, conn: sqlite3.Connection) -> None:
        """``PRAGMA quick_check`` (every page, index and constraint that can be checked without
        reading whole tables twice): a journal with damaged pages is refused at start-up, not
        found out by the first trap that touches them. Without :attr:`check_at_open`, only the
        schema is read: what the file is, and whether this user can read it at all."""
        check = (
            "PRAGMA quick_check(3)"
            if self.check_at_open
            else "SELECT 'ok' FROM (SELECT count(*) FROM sqlite_master)"
        )
        try:
            rows = [" ".join(str(r[0]).split()) for r in conn.execute(check).fetchall()]
        except sqlite3.DatabaseError as exc:
            if _is_access(exc):
                raise _NoAccess(str(exc)) from None
            if not _is_damage(exc):
                # The file could not be read as asked, which says nothing of what it holds: on a full
                # file system SQLite cannot make the -shm file ("disk I/O error"). Called damage, it
                # came with the advice to move the journal aside and start on a new, empty one,
                # leaving the waiting actions behind in a sound file.
                raise _CannotOpen(
                    f"cannot open the journal {self.path}: {exc}{_full_note(self.path)}; the journal "
                    "itself is not known to be damaged: leave it where it is"
                ) from None
            rows = [str(exc)]
        if rows != ["ok"]:
            problem = "; ".join(rows)[:500]
            if not self.read_only:
                raise self._damaged(f"integrity check: {problem}")
            self.damage = problem

    def _damaged(self, detail: str) -> JournalDamaged:
        return JournalDamaged(
            f"the journal {self.path} is damaged: {detail}. trapd neither runs on it nor replaces it. "
            f"To recover, {self._recovery()}"
        )

    def _recovery(self) -> str:
        p = self.path
        return (
            f"move it aside with its -wal and -shm files (mv {p} {p}.damaged; "
            f"mv {p}-wal {p}.damaged-wal; mv {p}-shm {p}.damaged-shm) and start trapd again "
            f"for a new, empty journal; `trapd journal --journal {p}.damaged list --state all` "
            "(and show, history) reads what can still be read from the old one."
        )

    def _connect_read_only(self) -> sqlite3.Connection:
        """For inspection: no file made, nothing written (query_only), damage recorded, not refused."""
        if not self.path.exists():
            raise JournalError(f"no journal at {self.path}")
        problem = header_problem(self.path)
        if problem is not None:
            raise not_a_journal(self.path, problem)
        uri = self.path.resolve().as_uri()
        # A WAL with commits in it (a running trapd's, or one a killed trapd left): opened
        # read-only proper, which reads it and never copies it into the file. Read-write (query
        # only), the last connection to close checkpointed it into the journal and removed it: a
        # write into what may be a damaged journal moved aside for investigation. Without one,
        # read-write leaves no -wal and -shm files behind, as read-only would.
        wal = Path(f"{self.path}-wal")
        mode = "ro" if wal.exists() and wal.stat().st_size else "rw"
        conn = sqlite3.connect(
            f"{uri}?mode={mode}", uri=True, isolation_level=None, check_same_thread=False, timeout=10.0
        )
        try:
            self._check_integrity(conn)
        except (_NoAccess, _CannotOpen) as exc:
            # A read-only directory (a backup's mount, ProtectSystem=) or a full file system (the
            # daemon stopped by it, when an admin most wants to look): SQLite cannot make the
            # -shm file that reading a WAL journal takes. With no -wal file beside it, no writer
            # has the journal open and the file alone is the whole journal: read it as immutable.
            conn.close()
            if wal.exists() and wal.stat().st_size:
                if isinstance(exc, _CannotOpen):
                    raise
                raise JournalError(
                    f"cannot read the journal {self.path}: {exc}: its directory is read-only for this "
                    f"user and a writer's {wal.name} is there (run this as the user trapd runs as)"
                ) from None
            conn = sqlite3.connect(
                uri + "?mode=ro&immutable=1", uri=True, isolation_level=None, check_same_thread=False
            )
            self._check_integrity(conn)
        try:
            _refuse_foreign(conn, self.path)
        except BaseException:
            conn.close()
            raise
        _shadow_missing_columns(conn)
        conn.execute("PRAGMA query_only = ON")
        return conn

    def _writer(self, ready: asyncio.Future[None]) -> None:
        loop = self._loop
        assert loop is not None
        try:
            conn = self._connect()
            if not self.read_only:
                _op_setup(conn, self.synchronous)  # executescript: each statement commits on its own
        except JournalError as exc:
            loop.call_soon_threadsafe(_set_exception, ready, exc)
            return
        except Exception as exc:
            err: JournalError = (
                self._damaged(str(exc))
                if isinstance(exc, sqlite3.DatabaseError) and _is_damage(exc)
                else JournalError(f"cannot open the journal {self.path}: {exc}")
            )
            loop.call_soon_threadsafe(_set_exception, ready, err)
            return
        if not self.read_only:
            self._writers_lock = self._open_writers_lock()
            for suffix in ("-wal", "-shm"):  # WAL mode: made by the first read, kept while open
                with contextlib.suppress(OSError):
                    st = os.stat(f"{self.path}{suffix}")
                    self._wal_ids[suffix] = (st.st_dev, st.st_ino)
        loop.call_soon_threadsafe(_set_result, ready, None)
        stop = False
        while not stop:
            ops = self._queue.get()
            if ops is None:
                break
            batch = list(ops)
            if self.commit_delay > 0:
                time.sleep(self.commit_delay)
            while len(batch) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    stop = True
                    break
                batch.extend(nxt)
            self._run_batch(conn, batch, loop)
        conn.close()
        if self._writers_lock is not None:
            os.close(self._writers_lock)
            self._writers_lock = None

    def _open_writers_lock(self) -> int | None:
        """The lock file that orders the write transactions of every trapd sharing this journal.

        With ``service.workers`` several processes commit to one file. SQLite's own lock makes
        a second BEGIN IMMEDIATE wait in its busy handler, which sleeps 1, 2, 5, 10 ms... and
        looks again: two workers then spent 20-30 % of their writer's time asleep while the
        lock was free (bench_kea.py --e2e --workers 2: 0.5-0.9 s per process in 3 s of run).
        A blocking flock() on this file wakes the waiter the moment the holder lets go.
        SQLite's lock still guards the file; this only decides who asks for it first, so a
        writer that does not take it (an older trapd) is still safe, only slower.
        """
        path = f"{self.path}-writers.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
        except OSError:
            return None  # a read-only state directory: SQLite's busy handler alone, as before
        if os.geteuid() == 0:
            # Made by root (`sudo trapd journal retry`) beside the journal of a trapd that runs as
            # its own user: the journal's owner must be able to open it too, as SQLite arranges
            # for the -wal and -shm files it makes as root.
            with contextlib.suppress(OSError):
                owner = os.stat(self.path)
                if os.fstat(fd).st_uid != owner.st_uid:
                    os.fchown(fd, owner.st_uid, owner.st_gid)
        return fd

    def _lock_writers(self) -> None:
        if self._writers_lock is not None:
            fcntl.flock(self._writers_lock, fcntl.LOCK_EX)  # releases the GIL while it waits

    def _unlock_writers(self) -> None:
        if self._writers_lock is not None:
            fcntl.flock(self._writers_lock, fcntl.LOCK_UN)

    def _checkpoint_loop(self) -> None:
        """The checkpointer thread: a PASSIVE checkpoint every ``checkpoint_interval`` seconds.

        PASSIVE copies what no reader still needs and never waits for a lock, so the writer
        is never held up; what it cannot copy now waits for the next round. Errors (a busy
        file, another process checkpointing) only cost a round: the writer's commits stay
        correct without any checkpoint, the WAL just grows until one succeeds.
        """
        interval = self.checkpoint_interval
        assert interval is not None
        loop = self._loop
        assert loop is not None
        conn: sqlite3.Connection | None = None
        page_size = 4096
        try:
            while not self._checkpointer_stop.wait(interval):
                replaced = self._file_replaced()  # one stat() a round: said within a second
                if replaced is not None:
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(self._replaced_seen, replaced)
                wal = None if replaced is not None else self._wal_replaced()  # (moved with it)
                if wal is not None:
                    with contextlib.suppress(RuntimeError):
                        loop.call_soon_threadsafe(self._wal_lost_seen, wal)
                try:
                    if conn is None:
                        # Made here, and made again next round if it fails: with the writer's own
                        # autocheckpoint off, a checkpointer that gave up (it used to, at once) left
                        # the WAL to grow until trapd stopped.
                        conn = sqlite3.connect(
                            self.path, isolation_level=None, check_same_thread=False, timeout=1.0
                        )
                        (page_size,) = conn.execute("PRAGMA page_size").fetchone()
                    (_busy, frames, copied) = conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                    self.checkpoints += 1
                    if 0 < frames == copied and frames * (page_size + 24) > self.wal_restart_bytes:
                        self._restart_wal(conn)
                except sqlite3.Error:
                    # No checkpoint this round: all of the WAL file is left (at most the 64 MiB a
                    # checkpoint cuts it back to when it was not growing).
                    try:
                        left = os.stat(f"{self.path}-wal").st_size
                    except OSError:
                        continue
                else:
                    if frames < 0:
                        continue  # another connection was checkpointing: no figure this round
                    # Frames the WAL holds: a reader's old snapshot keeps all of them (from the
                    # first it still needs) from being reused, however many were copied.
                    left = int(frames) * (int(page_size) + 24) if copied < frames else 0
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody to tell
                    loop.call_soon_threadsafe(self._wal_measured, left)
        finally:
            if conn is not None:
                conn.close()

    def _restart_wal(self, conn: sqlite3.Connection) -> None:
        """Checkpointer thread: a RESTART checkpoint, waiting at most WAL_RESTART_WAIT_MS (see
        :data:`WAL_RESTART_BYTES`); busy, it is tried again after the next PASSIVE one."""
        conn.execute(f"PRAGMA busy_timeout = {WAL_RESTART_WAIT_MS}")
        try:
            (busy, _frames, _copied) = conn.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
        finally:
            conn.execute("PRAGMA busy_timeout = 1000")  # the connection's own, timeout=1.0
        if not busy:
            self.wal_restarts += 1

    def _wal_replaced(self) -> str | None:
        """How the -wal or -shm file at its path is no longer the writer's (None: they are).

        SQLite keeps a WAL journal's -wal and -shm files while any connection has the journal
        open (it truncates the WAL, never removes it), so another file there, or none, means
        something else removed it."""
        for suffix, opened in self._wal_ids.items():
            try:
                st = os.stat(f"{self.path}{suffix}")
            except FileNotFoundError:
                return f"its {suffix} file was removed"
            except OSError:
                continue
            if (st.st_dev, st.st_ino) != opened:
                return f"its {suffix} file was removed and another made"
        return None

    def _wal_lost_seen(self, detail: str) -> None:
        """Event loop: the writer's -wal or -shm file was removed; unhealthy until restart, said once.

        trapd's connections keep the removed files and go on with them. A removed -wal: the
        checkpoints through them still copy it into the journal, but the commits since the last
        one are only in the removed file (a SIGKILL loses them). Either: a connection opened
        since (a checkpointer's after an error, `trapd journal`, another worker) works on files
        that do not match trapd's (a `trapd journal cancel` made so was lost)."""
        if self._wal_lost is not None:
            return
        p = self.path
        self._wal_lost = (
            f"the journal {p}: {detail} while trapd ran: trapd still works on the removed file, and "
            "what another process writes now may be lost; stop trapd cleanly to put it right"
        )[:300]
        self._notices.append(
            JournalNotice(
                "error",
                "journal WAL file removed under the running trapd",
                {
                    "path": str(p),
                    "problem": detail,
                    "hint": (
                        "stop trapd cleanly (systemctl restart trapd; not kill -9): closing the journal "
                        "copies what a removed -wal file holds into it; check what `trapd journal` "
                        "changed meanwhile. Never remove a journal's -wal or -shm file while trapd runs"
                    ),
                },
            )
        )

    def _replaced_seen(self, detail: str) -> None:
        """Event loop: the file at the path is not the one opened; unhealthy until restart, said once."""
        if self._replaced is not None:
            return
        p = self.path
        self._replaced = (
            f"the journal {p} was replaced or removed while trapd ran ({detail}): trapd still "
            "writes to the file it opened, which nothing else reads"
        )[:300]
        self._notices.append(
            JournalNotice(
                "error",
                "journal file replaced under the running trapd",
                {
                    "path": str(p),
                    "problem": detail,
                    "hint": (
                        "restart trapd to use the file now at this path (its start-up check "
                        "runs on it); until then actions are journaled in the old file"
                    ),
                },
            )
        )

    def _wal_measured(self, left: int) -> None:
        """Event loop: what a checkpoint left in the WAL; past the bound, said once each way."""
        self.wal_bytes = left
        if left > self.wal_warn_bytes and not self._wal_growing:
            self._wal_growing = True
            self._notices.append(
                JournalNotice(
                    "warning",
                    "journal WAL keeps growing: checkpoints cannot get past a reader",
                    {
                        "path": str(self.path),
                        "wal_bytes": str(left),
                        "hint": (
                            "another process keeps a read transaction open on the journal (a "
                            f"`sqlite3 {self.path}` shell left in BEGIN, a backup tool): end it (fuser "
                            f"{self.path} names the processes). The WAL grows with every commit "
                            "until the disk is full"
                        ),
                    },
                )
            )
        elif left <= self.wal_warn_bytes and self._wal_growing:
            self._wal_growing = False
            self._notices.append(
                JournalNotice("info", "journal WAL checkpointed again", {"path": str(self.path)})
            )

    def _integrity_loop(self) -> None:
        """The checker thread: the whole file checked every ``integrity_check`` seconds.

        A connection of its own for each check, opened afresh: a connection's page cache would
        answer for pages that changed on disk under it and nobody wrote since. Its result is
        applied on the event loop (:meth:`_checked`).
        """
        interval = self.integrity_check
        loop = self._loop
        assert interval is not None and loop is not None
        while not self._checker_stop.wait(interval):
            started = time.monotonic()
            result, detail = self._check_file()
            elapsed = time.monotonic() - started
            if self._checker_stop.is_set():
                return  # interrupted by close(): not a result
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody to tell
                loop.call_soon_threadsafe(self._checked, result, detail, elapsed)

    def _file_replaced(self) -> str | None:
        """How the file at the journal's path is no longer the one opened (None: it is)."""
        try:
            st = os.stat(self.path)
        except OSError as exc:
            return f"the file is gone ({exc.strerror or exc})"
        if self._file_id is not None and (st.st_dev, st.st_ino) != self._file_id:
            return "another file took its place"
        return None

    def _check_file(self) -> tuple[str, str | None]:
        """("ok" | "damaged" | "replaced" | "error", what was found)."""
        replaced = self._file_replaced()
        if replaced is not None:
            return "replaced", replaced
        try:
            # mode=rw: never create a file where the journal was (it may go between stat and here).
            conn = sqlite3.connect(
                self.path.resolve().as_uri() + "?mode=rw", uri=True, check_same_thread=False, timeout=1.0
            )
        except sqlite3.Error as exc:
            return "error", str(exc)
        self._checking = conn
        try:
            conn.execute("PRAGMA query_only = ON")
            rows = [" ".join(str(r[0]).split()) for r in conn.execute("PRAGMA quick_check(3)").fetchall()]
        except sqlite3.DatabaseError as exc:
            if _is_damage(exc):
                return "damaged", str(exc)
            return "error", str(exc)
        finally:
            self._checking = None
            conn.close()
        if rows != ["ok"]:
            return "damaged", "; ".join(rows)[:300]
        return "ok", None

    def _checked(self, result: str, detail: str | None, elapsed: float) -> None:
        """Event loop: a periodic check's result, in health, the counts and the notices (once each)."""
        if result == "replaced":
            self._replaced_seen(detail or "")
            return
        self.integrity_check_seconds = elapsed
        self.integrity_checks[result] = self.integrity_checks.get(result, 0) + 1
        if result == "error":
            if not self._check_failing:
                self._check_failing = True
                self._notices.append(
                    JournalNotice(
                        "warning",
                        "journal integrity check could not run",
                        {"path": str(self.path), "error": (detail or "")[:300]},
                    )
                )
            return
        self._check_failing = False
        if result == "damaged":
            if self._check_damage is None:
                self._check_damage_since = time.time()
                self._check_damage = f"the journal {self.path} is damaged: integrity check: {detail}"[:300]
                self._notices.append(
                    JournalNotice(
                        "error",
                        "journal damaged: found by the periodic integrity check",
                        {
                            "path": str(self.path),
                            "problem": detail or "",
                            "hint": (
                                "actions go on being journaled, but a restart refuses this file: "
                                f"stop trapd, {self._recovery()} Waiting actions left in it must "
                                "be done by hand"
                            ),
                        },
                    )
                )
        elif self._check_damage is not None:
            self._check_damage = None
            self._check_damage_since = None
            self._notices.append(
                JournalNotice("info", "journal integrity check passed again", {"path": str(self.path)})
            )

    def _run_batch(self, conn: sqlite3.Connection, batch: list[_Op], loop: asyncio.AbstractEventLoop) -> None:
        writes = any(op.write for op in batch)
        changes = conn.total_changes
        try:
            if writes:
                self._lock_writers()
                conn.execute("BEGIN IMMEDIATE")
            try:
                # Optimistic: no savepoints (they cost two statements per operation). An operation
                # that raises is rare; then the whole batch is rolled back and run again, isolated.
                done = self._execute(conn, batch, isolate=False)
            except _OpFailed as op_failed:
                if writes and not conn.in_transaction and op_failed.__cause__ is not None:
                    # SQLite rolled the whole transaction back itself (a full disk, an I/O error):
                    # the batch failed as a whole, for that reason. Rolling back again to run it one
                    # operation at a time failed with "no transaction is active", which every
                    # operation got instead (not a JournalError, and the disk's state was gone).
                    raise op_failed.__cause__ from None
                # A read-only batch began no transaction: there is nothing to roll back (a ROLLBACK
                # there failed with "no transaction is active" and hid the real error).
                if writes:
                    conn.execute("ROLLBACK")
                    conn.execute("BEGIN IMMEDIATE")
                done = self._execute(conn, batch, isolate=True, savepoints=writes)
            if writes:
                conn.execute("COMMIT")
                self.commits += 1
                self.committed_ops += len(batch)
                failed = [exc for _, _, exc in done if isinstance(exc, JournalError)]
                if failed:
                    self._unavailable(str(failed[0]), len(failed))
                elif conn.total_changes != changes:
                    # Only a commit that wrote rows says the disk takes writes again: a batch that
                    # changed nothing (the maintenance's look for held actions to expire) commits
                    # without a page, also on a full disk, and made the journal available between
                    # every two outcomes it lost.
                    self._problem = None
        except Exception as exc:
            # The commit itself failed (disk full, I/O error, locked too long): nothing in the batch holds.
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
            err = self._journal_error(exc, "journal commit failed")
            if writes:
                self._unavailable(str(err), sum(1 for op in batch if op.write))
            done = [(op, None, err) for op in batch]
        finally:
            if writes:
                self._unlock_writers()
        if self._damage_seen is None:
            damage = next((exc for _, _, exc in done if isinstance(exc, JournalDamaged)), None)
            if damage is not None:
                self._damage_since = time.time()
                self._damage_seen = str(damage)[:300]
        # A closed loop (RuntimeError) means nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._resolve, done)

    def _execute(
        self, conn: sqlite3.Connection, batch: list[_Op], *, isolate: bool, savepoints: bool = True
    ) -> list[tuple[_Op, Any, BaseException | None]]:
        """Run ``batch``; ``isolate``: each operation's error is its own (in a savepoint when writing)."""
        done: list[tuple[_Op, Any, BaseException | None]] = []
        for op in batch:
            if isolate and savepoints:
                conn.execute("SAVEPOINT op")
            try:
                result = op.fn(conn, *op.args)
            except Exception as exc:
                if not isolate:
                    raise _OpFailed from exc
                if savepoints:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                done.append((op, None, self._journal_error(exc, "journal operation failed")))
            else:
                if isolate and savepoints:
                    conn.execute("RELEASE op")
                done.append((op, result, None))
        return done

    def _journal_error(self, exc: BaseException, what: str) -> BaseException:
        """SQLite's errors about the file (damage, full disk, I/O) as JournalError, saying which."""
        if isinstance(exc, JournalError):
            return exc
        if isinstance(exc, sqlite3.DatabaseError) and _is_not_utf8(exc):
            # sqlite3 quotes the whole value it cannot decode: the message names the column only
            # (a row holds whatever traps and rules put there; this goes to logs and /healthz).
            return JournalDamaged(
                f"the journal {self.path} is damaged: {_unreadable_problem(exc)} "
                "(trapd journal shows what can still be read)"
            )
        if isinstance(exc, sqlite3.DatabaseError) and _is_damage(exc):
            return JournalDamaged(
                f"the journal {self.path} is damaged: {exc} (trapd journal shows what can still be read)"
            )
        if self.read_only and isinstance(exc, Exception):
            # Inspection: whatever a damaged row does (text that is not UTF-8, JSON cut short),
            # one line that says so, not a traceback.
            state = " (it is damaged)" if self.damage else ""
            return JournalError(f"reading the journal {self.path} failed{state}: {type(exc).__name__}: {exc}")
        if not isinstance(exc, sqlite3.DatabaseError):
            return exc
        if _is_damage(exc):
            return JournalDamaged(
                f"the journal {self.path} is damaged: {exc} (trapd journal shows what can still be read)"
            )
        code = getattr(exc, "sqlite_errorcode", None)
        if code is not None and code & 0xFF in _FILE_ERRORS:
            return JournalError(f"{what}: {exc}")
        if code is not None and code & 0xFF in _LOCK_ERRORS:
            return JournalError(
                f"{what}: {exc} (another process kept the journal's write lock for longer than "
                f"{BUSY_TIMEOUT:g} s: a `sqlite3 {self.path}` left in a transaction, a backup?)"
            )
        return exc

    def _unavailable(self, problem: str, failed: int) -> None:
        """Writer thread: commits fail (a full disk, say); health() reports it until one succeeds."""
        if self._problem is None:
            self._problem_since = time.time()
        self._problem = problem[:300]
        self._failed_writes += failed

    def _resolve(self, done: list[tuple[_Op, Any, BaseException | None]]) -> None:
        for op, result, exc in done:
            self._queued -= op.weight
            if op.future.done():
                continue
            if exc is not None:
                op.future.set_exception(exc)
            else:
                op.future.set_result(result)

    def _call(
        self, fn: Callable[..., Any], *args: Any, weight: int = 1, write: bool = True, lazy: bool = False
    ) -> asyncio.Future[Any]:
        if self._thread is None or self._loop is None:
            raise JournalError("the journal is not open")
        if write and self._queued + weight > self.max_queued:
            raise JournalFull(f"{self._queued} journal writes are waiting for the disk")
        fut = self._loop.create_future()
        self._queued += weight
        op = _Op(fn, args, fut, weight, write, lazy)
        if lazy:
            self._lazy.append(op)
            if self._lazy_timer is None:
                self._lazy_timer = self._loop.call_later(LAZY_COMMIT_DELAY, self._send_lazy)
        else:
            self._send_lazy()  # first: they were issued before this one
            self._outbox.append(op)
            if self._outbox_sent is None:
                # Handed over at the end of this turn, with whatever else it issues: one queue put
                # and one wake-up of the writer for all of them. Each put cost ~70 us on this VM
                # (cProfile, bench_kea.py --e2e: three per action), the GIL hand-off included.
                self._outbox_sent = self._loop.call_soon(self._send_outbox)
        return fut

    def _send_lazy(self) -> None:
        if self._lazy_timer is not None:
            self._lazy_timer.cancel()
            self._lazy_timer = None
        if self._lazy:
            self._outbox.extend(self._lazy)
            self._lazy.clear()
            if self._outbox_sent is None and self._loop is not None:
                self._outbox_sent = self._loop.call_soon(self._send_outbox)

    def _send_outbox(self) -> None:
        if self._outbox_sent is not None:
            self._outbox_sent.cancel()
            self._outbox_sent = None
        if self._outbox:
            self._queue.put(self._outbox)
            self._outbox = []

    # -- the Journal interface

    async def flush(self) -> None:
        await self._call(_op_noop)

    async def add(
        self,
        event: Mapping[str, Any] | None,
        entries: Sequence[NewEntry],
        cancel_keys: Sequence[str],
        now: float,
    ) -> AddResult:
        result: AddResult = await self.add_soon(event, entries, cancel_keys, now)
        return result

    def add_soon(
        self,
        event: Mapping[str, Any] | None,
        entries: Sequence[NewEntry],
        cancel_keys: Sequence[str],
        now: float,
    ) -> Awaitable[AddResult]:
        fut: asyncio.Future[AddResult] = self._call(
            _op_add, event, list(entries), list(cancel_keys), now, self._owner, weight=max(1, len(entries))
        )
        return fut

    async def recover(
        self, now: float, hold_unless: Iterable[str] | None = None, *, owner: str | None = None
    ) -> dict[str, int]:
        keep = frozenset(hold_unless) if hold_unless is not None else None
        result: dict[str, int] = await self._call(_op_recover, now, keep, owner)
        return result

    async def due(
        self, now: float, limit: int, skip: frozenset[int] = frozenset()
    ) -> tuple[list[Entry], bool]:
        result: tuple[list[Entry], bool, list[tuple[int, str]]] = await self._call(
            _op_due, now, limit, skip, write=False
        )
        entries, more, bad = result
        if bad:
            aside: list[Unreadable] = await self._call(_op_set_aside, bad, now, weight=len(bad))
            self._set_aside_rows(aside)
        return entries, more

    def _set_aside_rows(self, aside: list[Unreadable]) -> None:
        self._unreadable.extend(aside)
        self.unreadable_count += len(aside)
        if self._damage_seen is None and aside:
            # Damage, as b7edb6d made any damage met while running: unhealthy until restart.
            ids = ", ".join(str(u.id) for u in aside[:5])
            self._damage_since = time.time()
            self._damage_seen = (
                f"the journal {self.path} is damaged: action {ids} could not be read back "
                f"({aside[0].problem}), set aside as dead"
            )[:300]

    def set_aside(self) -> list[Unreadable]:
        out, self._unreadable = self._unreadable, []
        return out

    async def next_due(self, now: float) -> float | None:
        result: float | None = await self._call(_op_next_due, now, write=False)
        return result

    async def claim(self, id: int, now: float) -> ClaimResult:
        result: ClaimResult = await self._call(_op_claim, id, now, self._owner)
        return result

    async def finish(
        self,
        id: int,
        state: State,
        now: float,
        result: Any = None,
        error: str | None = None,
        *,
        started: float | None = None,
    ) -> None:
        await self._call(_op_finish, id, state, now, result, error, started)

    def finish_soon(
        self,
        id: int,
        state: State,
        now: float,
        result: Any = None,
        error: str | None = None,
        *,
        started: float | None = None,
    ) -> Awaitable[None]:
        fut: asyncio.Future[None] = self._call(_op_finish, id, state, now, result, error, started, lazy=True)
        return fut

    def unclaim_soon(self, ids: Sequence[int]) -> Awaitable[int]:
        fut: asyncio.Future[int] = self._call(_op_unclaim, list(ids), weight=max(1, len(ids)))
        return fut

    async def retry_later(self, id: int, due: float, error: str, endpoint: str | None) -> None:
        await self._call(_op_retry_later, id, due, error, endpoint)

    async def note(self, id: int, result: Any) -> None:
        await self._call(_op_note, id, result)

    async def defer(self, id: int, due: float, reason: str, endpoint: str | None) -> None:
        await self._call(_op_defer, id, due, reason, endpoint)

    async def expedite(self, endpoint: str, now: float) -> int:
        result: int = await self._call(_op_expedite, endpoint, now)
        return result

    async def cancel(self, ids: Sequence[int], now: float, reason: str) -> list[int]:
        result: list[int] = await self._call(_op_cancel, list(ids), now, reason)
        return result

    async def retry(self, ids: Sequence[int], now: float) -> list[int]:
        result: list[int] = await self._call(_op_retry, list(ids), now)
        return result

    async def unreadable_rows(self, ids: Sequence[int]) -> dict[int, str]:
        result: dict[int, str] = await self._call(_op_unreadable_rows, list(ids), write=False)
        return result

    async def release(self, now: float, ids: Sequence[int] = (), rule: str | None = None) -> list[int]:
        result: list[int] = await self._call(_op_release, now, list(ids), rule)
        return result

    async def expire_held(self, now: float) -> list[Entry]:
        result: tuple[list[Entry], list[Unreadable]] = await self._call(_op_expire_held, now)
        expired, aside = result
        self._set_aside_rows(aside)
        return expired

    async def get(self, id: int, with_event: bool = True) -> Entry | None:
        result: Entry | None = await self._call(_op_get, id, with_event, self.lenient, write=False)
        return result

    async def history(self, flt: HistoryFilter) -> list[Entry]:
        result: list[Entry] = await self._call(_op_history, flt, self.lenient, write=False)
        return result

    async def counts(self) -> dict[str, int]:
        result: dict[str, int] = await self._call(_op_counts, write=False)
        return result

    async def prune(self, finished_before: float, now: float) -> int:
        total = 0
        checkpointed = False
        while True:  # a transaction per chunk: the other writes go in between
            try:
                n: int = await self._call(_op_prune, finished_before, now)
            except JournalError as exc:
                # A full disk. A chunk's deletions go to the WAL first, and the pages they free go
                # back to the file system only when a checkpoint copies them into the file: chunks
                # back to back outran the checkpointer, and on a nearly full disk the prune failed
                # after a few of them, to be tried again an hour later. Checkpointed here, the WAL
                # is used again from its start and the file shrinks: the prune goes on. Once per
                # chunk that got through (never a loop): failing again right after, it stops.
                if FULL not in str(exc):
                    raise
                if checkpointed:
                    raise JournalError(
                        f"{exc}: pruned {total} of the finished actions past journal.retention, the "
                        "rest wait (deleting needs room in the journal's WAL first: about 1 MiB per "
                        f"{PRUNE_CHUNK} small actions; {_free_bytes(self.path)} bytes free); free "
                        "some space: the prune runs every hour"
                    ) from None
                checkpointed = True
                await self._call(_op_checkpoint, write=False)
                continue
            checkpointed = False
            total += n
            if n < PRUNE_CHUNK:
                return total

    async def changed(self) -> bool:
        version: int = await self._call(_op_data_version, write=False)
        changed = self._data_version is not None and version != self._data_version
        self._data_version = version
        return changed

    def health(self) -> JournalHealth:
        """Unavailable from a failed commit (a full disk, an I/O error) until one succeeds again.

        While unavailable, a small write is tried at most once a second, so that the journal
        is found healthy again once space is freed even when no trap comes to try.

        Damage met by any operation (a read of a due action too) makes it unavailable until
        trapd is restarted: other writes succeeding says nothing about the damaged rows, and
        the start-up check, then ``trapd journal``, say what is left.

        Damage found by the periodic integrity check lasts until a later check passes (the file
        was repaired, or the damaged pages were freed): that check covers every page the first
        one did. A journal file replaced or removed under trapd lasts until restart.
        """
        counts = JournalHealth(
            failed_writes=self._failed_writes,
            unreadable=self.unreadable_count,
            integrity_checks=dict(self.integrity_checks),
            integrity_check_seconds=self.integrity_check_seconds,
            wal_bytes=self.wal_bytes,
        )
        for problem, since in (
            (self._damage_seen, self._damage_since),
            (self._replaced, None),
            (self._wal_lost, None),
            (self._check_damage, self._check_damage_since),
        ):
            if problem is not None:
                return replace(counts, available=False, problem=problem, since=since)
        problem = self._problem
        if problem is None:
            return counts
        now = time.monotonic()
        if now - self._probe_sent >= 1.0 and self._thread is not None and not self.read_only:
            self._probe_sent = now
            with contextlib.suppress(JournalError):
                probe = self._call(_op_probe, time.time())
                probe.add_done_callback(_consume)
        return replace(counts, available=False, problem=problem, since=self._problem_since)

    def watch(self, callback: Callable[[], None]) -> None:
        """No push here: the dispatcher polls :meth:`changed` (``PRAGMA data_version``)."""


# SQLite's primary result codes that are about the file, not the statement: I/O error, the disk
# full, the file not openable or read-only. https://www.sqlite.org/rescode.html
_FILE_ERRORS = frozenset({10, 13, 14, 8})
_DAMAGE_ERRORS = frozenset({11, 26})  # SQLITE_CORRUPT, SQLITE_NOTADB
# SQLITE_BUSY, SQLITE_LOCKED: another connection held the lock past busy_timeout. Not the
# statement's fault: a JournalError like a full disk (it was sqlite3's own error, which the
# dispatcher's loops do not expect: its maintenance stopped for good).
_LOCK_ERRORS = frozenset({5, 6})
_ACCESS_ERRORS = frozenset({3, 8, 14})  # SQLITE_PERM, SQLITE_READONLY, SQLITE_CANTOPEN


class _CannotOpen(JournalError):
    """The file could not be read as asked for another reason than access or damage (a full file
    system: SQLite cannot make the -shm file)."""


class _NoAccess(Exception):
    """The file cannot be opened as asked (read-only file or directory, permissions): not damage."""


def _is_access(exc: sqlite3.DatabaseError) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    return code is not None and code & 0xFF in _ACCESS_ERRORS


def _is_not_utf8(exc: sqlite3.DatabaseError) -> bool:
    return "Could not decode to UTF-8" in str(exc)


def _is_damage(exc: sqlite3.DatabaseError) -> bool:
    if _is_not_utf8(exc):
        # Python's sqlite3 cannot read a text value back: trapd writes only UTF-8, so a byte of
        # the file changed inside a row (the pages themselves still pass SQLite's checks).
        return True
    code = getattr(exc, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _DAMAGE_ERRORS
    return "malformed" in str(exc) or "not a database" in str(exc)


def _free_bytes(path: Path) -> int | str:
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return "?"
    return st.f_bavail * st.f_frsize


def header_problem(path: Path) -> str | None:
    """Why the existing file at ``path`` cannot be a journal (empty, not SQLite), or None.
    Raises JournalError when it cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError as exc:
        raise JournalError(f"cannot read the journal {path}: {exc.strerror or exc}") from None
    if not head:
        return "the file is empty (0 bytes): it was truncated, or never written"
    if head != b"SQLite format 3\x00":
        return "it is not an SQLite database"
    return None


def _refuse_foreign(conn: sqlite3.Connection, path: Path) -> None:
    """An SQLite database of something else (tables of its own, no actions table): refused, never
    written into. A path mistyped or pointed at another program's state got trapd's tables,
    WAL mode and mode 0600. (A database without tables, or with some of trapd's, is trapd's own,
    cut short while it was being made: the rest is made.)"""
    try:
        names = sorted(r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"))
    except sqlite3.DatabaseError:
        return  # damaged: said by the check, or by the reads
    # Without actions, tables of trapd's only are a first start killed between making meta and
    # actions (trapd's); one other table is another program's (which may have a 'meta' too).
    ours = {"meta", "events", "actions", "cap_hits", "cap_slots"}
    others = [n for n in names if n not in ours and not n.startswith("sqlite_")]
    if "actions" not in names and others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise not_a_journal(path, f"an SQLite database with other tables ({shown}), without trapd's")


def not_a_journal(path: Path, problem: str) -> JournalDamaged:
    """For ``trapd journal``, which works on the file an operator named (``--journal``: perhaps
    mistyped): what the file is, without the daemon's advice to move it aside and start anew
    (given for /etc/passwd, it said ``mv /etc/passwd /etc/passwd.damaged``)."""
    return JournalDamaged(f"{path} is not a trapd journal: {problem}")


def _full_note(path: Path) -> str:
    """ " (the file system holding it is full ...)" when it has (next to) no room left, else ""."""
    try:
        st = os.statvfs(path.parent)
    except OSError:
        return ""
    free = st.f_bavail * st.f_frsize
    if free >= 1 << 20:
        return " (an I/O error: the kernel log says more)"
    return f" (the file system holding it is full: {free} bytes free; free some space and start trapd again)"


# SQLite's message for SQLITE_FULL, in the JournalError of a commit a full disk refused.
FULL = "database or disk is full"


def _op_checkpoint(conn: sqlite3.Connection) -> None:
    """The WAL copied into the file (PASSIVE: readers are not waited for). Best effort: inside
    the transaction of a batch that other callers' writes share, SQLite refuses a checkpoint
    ('database table is locked'), which then ended the prune with that error instead of its
    own; there the checkpointer thread does it."""
    if conn.in_transaction:
        return
    with contextlib.suppress(sqlite3.Error):
        conn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()


def _op_probe(conn: sqlite3.Connection, now: float) -> None:
    """A write that needs a page of its own: succeeds only once the disk takes writes again."""
    conn.execute("INSERT OR REPLACE INTO meta (k, v) VALUES ('probe', ?)", (f"{now:.6f}" + " " * 2000,))
    conn.execute("DELETE FROM meta WHERE k = 'probe'")


def _consume(fut: asyncio.Future[Any]) -> None:
    if not fut.cancelled():
        fut.exception()


def _set_result(fut: asyncio.Future[Any], value: Any) -> None:
    if not fut.done():
        fut.set_result(value)


def _set_exception(fut: asyncio.Future[Any], exc: BaseException) -> None:
    if not fut.done():
        fut.set_exception(exc)


def open_sqlite_journal(path: str | Path, config: Any = None, *, owner: str | None = None) -> SQLiteJournal:
    """A journal for ``path`` set up from a :class:`~trapd.dispatch.config.JournalConfig` (or defaults).

    ``owner``: the name of the process claiming actions through it when several share
    one journal file (``worker-1``); None for a single trapd.
    """
    if config is None:
        return SQLiteJournal(path, owner=owner)
    return SQLiteJournal(
        path,
        synchronous=config.synchronous,
        max_batch=config.max_batch,
        commit_delay=config.commit_delay,
        max_queued=config.max_queued,
        owner=owner,
        integrity_check=config.integrity_check,
    )
