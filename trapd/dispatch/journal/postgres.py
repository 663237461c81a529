"""The shared journal: PostgreSQL, so that two trapd hosts act once per site.

Selected by ``dispatch.journal.url: postgresql://...`` (docs/pair.md). It keeps
every promise of :class:`~trapd.dispatch.journal.model.Journal` and makes the
dispatcher's guarantees hold across hosts, enforced by the database:

* **claims** lock the row (``SELECT ... FOR UPDATE``) and re-check its state, so
  one action is claimed by one host; a second claimer waits for the first's
  commit and then sees ``running`` (``gone``);
* **per-key order, once-within and caps** take a transaction-scoped advisory
  lock on the key (``pg_advisory_xact_lock``) before they look at other rows,
  so two hosts deciding about the same key, once key or cap window take turns,
  and the second sees what the first committed (READ COMMITTED: each statement
  reads the latest commits);
* a **cancel** is an UPDATE of waiting rows, so a delay armed on one host is
  cancelled by a clearing trap received on the other;
* **leases**: a claimed row records its owner and ``lease_until``; the owner
  renews its leases every third of the lease time, and a host that finds a
  row whose lease expired (its owner died or lost the database) takes it over
  with the recovery policy the dispatcher gave :meth:`recover`
  (``dispatch.interrupted``: rerun, or hold what is not idempotent);
* **wake-ups**: every write that another host may have to act on sends
  ``NOTIFY trapd_journal`` in its transaction; a listening connection turns
  them into the dispatcher's wake-up, and :meth:`changed` stays the polling
  fallback (it says "changed" every poll while the listener is down).

As in the SQLite backend, operations go through one writer (a task here, not a
thread): queued operations share one transaction (group commit), a future
resolves only after its commit, and reads see this journal's own writes.

The database unavailable: a batch fails with :class:`JournalError` (so the
daemon does not acknowledge an inform it could not commit, and counts the
loss), later batches fail at once until a reconnect is due (exponential
backoff, 0.5 s to 5 s), and :attr:`PostgresJournal.available` says so for
/healthz, STATUS and the metrics.

Times are the hosts' clocks (epoch seconds, as in SQLite): the hosts of a pair
must run NTP; a skew shortens or lengthens leases and once-within windows by as
much.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hashlib
import json
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from trapd.dispatch.journal.model import (
    ACTIVE,
    FINISHED,
    INTERRUPTED_HOLD_FOR,
    AddResult,
    CapCheck,
    ClaimResult,
    Entry,
    HistoryFilter,
    JournalError,
    JournalFull,
    JournalHealth,
    NewEntry,
    State,
)
from trapd.dispatch.journal.rows import ACOLS, COLS, NCOLS, dumps, entry_from_row, stored_event
from trapd.event import event_fingerprint

Conn = psycopg.AsyncConnection[TupleRow]
Cur = psycopg.AsyncCursor[TupleRow]

# Migrations, in order: (version, SQL). The schema's version is the last one applied; trapd
# refuses to start on a database whose version differs from the last one here
# (`trapd journal migrate` applies the missing ones; a newer database needs a newer trapd).
MIGRATIONS: tuple[tuple[int, str], ...] = (
    (
        1,
        """
CREATE TABLE trapd_events (
    id TEXT PRIMARY KEY,
    received_at DOUBLE PRECISION NOT NULL,
    source TEXT NOT NULL,
    trap_name TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE trapd_actions (
    id BIGSERIAL PRIMARY KEY,
    event_id TEXT NOT NULL,
    received_at DOUBLE PRECISION NOT NULL,
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
    backoff DOUBLE PRECISION NOT NULL,
    max_age DOUBLE PRECISION NOT NULL,
    age_from DOUBLE PRECISION NOT NULL,
    created DOUBLE PRECISION NOT NULL,
    due DOUBLE PRECISION NOT NULL,
    started DOUBLE PRECISION,
    finished DOUBLE PRECISION,
    cancel_key TEXT,
    once_key TEXT,
    caps TEXT NOT NULL DEFAULT '[]',
    cap_exempt BOOLEAN NOT NULL DEFAULT FALSE,
    held_by TEXT,
    endpoint TEXT,
    mac TEXT,
    ip TEXT,
    item TEXT,
    result TEXT,
    last_error TEXT,
    owner TEXT,
    lease_until DOUBLE PRECISION
);
CREATE INDEX trapd_actions_pending ON trapd_actions(id) WHERE state = 'pending';
CREATE INDEX trapd_actions_state_due ON trapd_actions(state, due);
CREATE INDEX trapd_actions_key ON trapd_actions(key, state, due);
CREATE INDEX trapd_actions_cancel ON trapd_actions(cancel_key) WHERE cancel_key IS NOT NULL;
CREATE INDEX trapd_actions_once ON trapd_actions(once_key, created) WHERE once_key IS NOT NULL;
CREATE INDEX trapd_actions_mac ON trapd_actions(mac, created) WHERE mac IS NOT NULL;
CREATE INDEX trapd_actions_ip ON trapd_actions(ip, created) WHERE ip IS NOT NULL;
CREATE INDEX trapd_actions_source ON trapd_actions(source, created);
CREATE INDEX trapd_actions_rule ON trapd_actions(rule, created);
CREATE INDEX trapd_actions_created ON trapd_actions(created);
CREATE INDEX trapd_actions_event ON trapd_actions(event_id);
CREATE INDEX trapd_actions_endpoint ON trapd_actions(endpoint) WHERE endpoint IS NOT NULL;
CREATE INDEX trapd_actions_running ON trapd_actions(lease_until) WHERE state = 'running';
CREATE TABLE trapd_cap_hits (
    cap TEXT NOT NULL, key TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, expires DOUBLE PRECISION NOT NULL
);
CREATE INDEX trapd_cap_hits_window ON trapd_cap_hits(cap, key, at);
CREATE INDEX trapd_cap_hits_expires ON trapd_cap_hits(expires);
""",
    ),
    (
        2,
        # The copy key: one notification received by both hosts is journaled once (see _op_add).
        """
ALTER TABLE trapd_actions ADD COLUMN copy_key TEXT;
CREATE INDEX trapd_actions_copy ON trapd_actions(copy_key, created) WHERE copy_key IS NOT NULL;
""",
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]

CHANNEL = "trapd_journal"
# Claims renewed every third of this; a row whose lease ran out is taken over by another host.
DEFAULT_LEASE = 30.0
# A planned action of a notification that is a copy of one journaled within this many seconds
# (the same notification sent by a switch to both hosts) is not journaled again.
DEFAULT_COPY_WINDOW = 300.0
# How long a batch waits for a connection before it fails (the daemon must not hold an
# inform's Response, or its receive path, for long while the database is away).
CONNECT_TIMEOUT = 2.0
RECONNECT_MIN = 0.5
# At most this long between attempts: after the database is back, outcomes are lost (traps) or
# unacknowledged (informs) for up to this long before the next attempt finds it.
RECONNECT_MAX = 5.0
# A batch that meets a deadlock or a serialization failure (two hosts locking the same keys
# in another order) is run again, this many times.
CONFLICT_RETRIES = 5

_ACTIVE_SQL = "('scheduled','pending','failed')"
_A = "trapd_actions"
_NOT_BLOCKED = (
    f"NOT EXISTS (SELECT 1 FROM {_A} b WHERE b.key = a.key AND b.state IN ('failed','pending') "
    "AND b.due > %(now)s AND b.id < a.id)"
)
_KEY_BUSY = (
    f"SELECT 1 FROM {_A} WHERE key = %s AND (state IN ('pending', 'failed', 'running') "
    "OR (state = 'scheduled' AND due <= %s)) LIMIT 1"
)


class _OpFailed(Exception):
    """An operation raised inside an optimistic batch: run the batch again, one savepoint each."""


def _text(value: str | None) -> str | None:
    """A string for a text column: PostgreSQL refuses NUL, which a trap value can carry into a
    key, a cancel key or an error message. U+FFFD instead, the same on every host, so keys
    still match each other (SQLite stores NUL as it is)."""
    return value.replace("\x00", "\ufffd") if value is not None and "\x00" in value else value


def _lock_id(namespace: str, key: str) -> int:
    """The advisory lock of (namespace, key): a signed 64-bit number, the same on every host."""
    digest = hashlib.blake2b(f"{namespace}\x1f{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


# The advisory locks the current batch took up front, in sorted order (see _prelock); a writer
# runs one transaction at a time, so one set serves.
_HELD: contextvars.ContextVar[frozenset[int]] = contextvars.ContextVar(
    "trapd_journal_held", default=frozenset()
)


async def _lock(cur: Cur, namespace: str, key: str) -> None:
    """A transaction-scoped advisory lock on (namespace, key): two hosts deciding about it take turns."""
    lock = _lock_id(namespace, key)
    if lock not in _HELD.get():
        await cur.execute("SELECT pg_advisory_xact_lock(%s)", (lock,))


def _add_locks(args: tuple[Any, ...]) -> set[int]:
    """The locks an _op_add with these arguments will take (copy, once and claim keys)."""
    _event, entries, _cancels, _now, _owner, _lease, copy_window, fingerprint = args
    locks: set[int] = set()
    for e in entries:
        if fingerprint is not None and copy_window > 0:
            locks.add(_lock_id("copy", _copy_key(fingerprint, e)))
        if e.once_key and e.once_within:
            locks.add(_lock_id("once", e.once_key))
        if e.claim:
            locks.add(_lock_id("key", e.key))
    return locks


async def schema_version(conn: Conn) -> int | None:
    """The database's trapd schema version; None when trapd never migrated it."""
    cur = await conn.execute("SELECT to_regclass('trapd_meta') IS NOT NULL")
    row = await cur.fetchone()
    if row is None or not row[0]:
        return None
    cur = await conn.execute("SELECT v FROM trapd_meta WHERE k = 'schema'")
    row = await cur.fetchone()
    return int(row[0]) if row else None


async def migrate(conninfo: str) -> tuple[int | None, int]:
    """Create or bring the schema up to :data:`SCHEMA_VERSION`; returns (before, after).

    One transaction under an advisory lock: two hosts migrating at once take turns, and a
    failed migration leaves the database as it was.
    """
    try:
        conn = await psycopg.AsyncConnection.connect(conninfo, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise JournalError(f"cannot connect to the journal database: {_one_line(exc)}") from exc
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('trapd schema', 0))")
            before = await schema_version(conn)
            if before is not None and before > SCHEMA_VERSION:
                raise JournalError(_newer(before))
            if before is None:
                await conn.execute(
                    "CREATE TABLE IF NOT EXISTS trapd_meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)"
                )
            for version, sql in MIGRATIONS:
                if before is None or version > before:
                    await conn.execute(sql.encode())
            await conn.execute(
                "INSERT INTO trapd_meta (k, v) VALUES ('schema', %s) "
                "ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
                (str(SCHEMA_VERSION),),
            )
        return before, SCHEMA_VERSION
    finally:
        await conn.close()


def _newer(found: int) -> str:
    return (
        f"the journal database has trapd schema {found}, newer than this trapd knows "
        f"({SCHEMA_VERSION}): upgrade trapd"
    )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# ---------------------------------------------------------------- operations (one transaction each batch)


async def _op_add(
    cur: Cur,
    event: Mapping[str, Any] | None,
    entries: Sequence[NewEntry],
    cancel_keys: Sequence[str],
    now: float,
    owner: str,
    lease: float,
    copy_window: float,
    fingerprint: str | None,
) -> AddResult:
    event_id = str(event["id"]) if event else ""
    if copy_window <= 0:
        fingerprint = None
    cancelled: list[int] = []
    cancelled_actions: list[str] = []
    for ck in cancel_keys:
        ck = _text(ck) or ""
        await cur.execute(
            f"UPDATE {_A} SET state = 'cancelled', finished = %s, last_error = %s, result = %s "
            f"WHERE cancel_key = %s AND state IN {_ACTIVE_SQL} RETURNING id, action",
            (now, f"cancelled by event {event_id} (cancel key {ck})", dumps({"cancelled_by": event_id}), ck),
        )
        for id_, action_name in await cur.fetchall():
            cancelled.append(id_)
            cancelled_actions.append(action_name)
    if event is not None and (entries or cancelled):
        await cur.execute(
            "INSERT INTO trapd_events (id, received_at, source, trap_name, data) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (id) DO NOTHING",
            (
                event_id,
                float(event["received_at"]),
                str(event["source"]),
                str(event.get("trap_name", "")),
                stored_event(event),
            ),
        )
    received_at = float(event["received_at"]) if event else now
    source = str(event["source"]) if event else ""
    ids: list[int] = []
    states: list[State] = []
    dups: list[int | None] = []
    for e in entries:
        state, result, error, dup = e.state, e.result, e.last_error, None
        copy_key = _copy_key(fingerprint, e) if fingerprint is not None else None
        if copy_key is not None:
            # The other host may be journaling its copy right now: the lock makes the second
            # wait for the first's commit (an inform is acknowledged by each host once it is
            # committed, by whichever host committed it first), then see its row.
            await _lock(cur, "copy", copy_key)
            await cur.execute(
                f"SELECT id, owner, event_id FROM {_A} WHERE copy_key = %s AND created >= %s "
                "AND event_id <> %s ORDER BY id LIMIT 1",  # a copy is another receiver's event
                (copy_key, now - copy_window, event_id),
            )
            row = await cur.fetchone()
            if row is not None:
                dup = int(row[0])
                state, result = "cancelled", {"duplicate_of": dup, "copy_of_event": row[2]}
                error = f"copy of the notification journaled as {dup} (event {row[2]})"
        if dup is None and e.once_key and e.once_within and state in ("pending", "scheduled", "done"):
            await _lock(cur, "once", e.once_key)
            await cur.execute(
                f"SELECT id FROM {_A} WHERE once_key = %s AND created >= %s "
                "AND state NOT IN ('cancelled', 'dead') ORDER BY id LIMIT 1",
                (_text(e.once_key), now - e.once_within),
            )
            row = await cur.fetchone()
            if row is not None:
                dup = int(row[0])
                state, result = "cancelled", {"duplicate_of": dup}
                error = f"duplicate of {dup} (once-within {e.once_within:g}s, key {e.once_key})"
        final = state in FINISHED
        claimed = False
        if e.claim and state == "pending" and not e.caps and e.due <= now:
            await _lock(cur, "key", e.key)
            await cur.execute(_KEY_BUSY, (_text(e.key), now))
            claimed = await cur.fetchone() is None
        if claimed:
            state = "running"
        await cur.execute(
            f"INSERT INTO {_A} (event_id, received_at, source, rule, action, idx, params, key, mode, state, "
            "max_attempts, backoff, max_age, age_from, created, due, finished, cancel_key, once_key, caps, "
            "mac, ip, item, result, last_error, attempts, started, owner, lease_until, copy_key) "
            f"VALUES ({', '.join(['%s'] * 30)}) "
            "RETURNING id",
            (
                event_id,
                received_at,
                source,
                e.rule,
                e.action,
                e.index,
                dumps(e.params),
                _text(e.key),
                e.mode,
                state,
                e.max_attempts,
                e.backoff,
                e.max_age,
                received_at,
                now,
                e.due,
                now if final else None,
                _text(e.cancel_key),
                _text(e.once_key),
                dumps([c.to_json() for c in e.caps]) if e.caps else "[]",
                e.mac,
                e.ip,
                dumps(e.item) if e.item is not None else None,
                dumps(result) if result is not None else None,
                _text(error),
                1 if claimed else 0,
                now if claimed else None,
                owner if claimed else None,
                now + lease if claimed else None,
                copy_key,
            ),
        )
        row = await cur.fetchone()
        assert row is not None
        ids.append(int(row[0]))
        states.append(state)
        dups.append(dup)
    return AddResult(ids, states, dups, cancelled, cancelled_actions)


def _copy_key(fingerprint: str, e: NewEntry) -> str:
    """One planned action of one notification: the same on both hosts (given the same rules)."""
    item = dumps(e.item) if e.item is not None else ""
    return hashlib.sha256(f"{fingerprint}\x1f{e.rule}\x1f{e.index}\x1f{item}".encode()).hexdigest()[:32]


def _owned(owner: str | None, instance: str) -> tuple[str, tuple[Any, ...]]:
    """Which running rows are ours to recover: one owner's, or (None) this host's and its workers'."""
    if owner is not None:
        return "owner = %s", (owner,)
    return "(owner = %s OR owner LIKE %s OR owner IS NULL)", (instance, instance.replace("%", r"\%") + "/%")


async def _put_back(
    cur: Cur, now: float, hold_unless: frozenset[str] | None, where: str, args: tuple[Any, ...], why: str
) -> tuple[int, int]:
    """Running rows matching ``where`` go back in line (or are held): (rerun, held)."""
    held = 0
    if hold_unless is not None:
        names = sorted(hold_unless) or [""]
        await cur.execute(
            f"UPDATE {_A} SET state = 'held', held_by = 'interrupted', due = %s, lease_until = NULL, "
            f"last_error = 'interrupted while running; it may have taken effect: release it to run it again' "
            f"WHERE state = 'running' AND NOT (action = ANY(%s)) AND {where}",
            (now + INTERRUPTED_HOLD_FOR, names, *args),
        )
        held = cur.rowcount
    await cur.execute(
        f"UPDATE {_A} SET state = 'pending', due = LEAST(due, %s), lease_until = NULL, "
        f"last_error = COALESCE(last_error || '; ', '') || %s WHERE state = 'running' AND {where}",
        (now, why, *args),
    )
    return cur.rowcount, held


async def _op_recover(
    cur: Cur, now: float, hold_unless: frozenset[str] | None, owner: str | None, instance: str
) -> dict[str, int]:
    where, args = _owned(owner, instance)
    rerun, held = await _put_back(cur, now, hold_unless, where, args, "interrupted by a restart")
    await cur.execute(f"SELECT count(*) FROM {_A} WHERE state IN {_ACTIVE_SQL}")
    row = await cur.fetchone()
    return {"rerun": rerun, "held": held, "waiting": int(row[0]) if row else 0}


async def _op_renew(
    cur: Cur, now: float, owner: str, lease: float, hold_unless: frozenset[str] | None, take_over: bool
) -> int:
    """Renew this owner's leases, then take over rows whose owner stopped renewing: the count taken."""
    await cur.execute(
        f"UPDATE {_A} SET lease_until = %s WHERE state = 'running' AND owner = %s", (now + lease, owner)
    )
    if not take_over:
        return 0
    # SKIP LOCKED: a row another host is finishing right now is not ours to judge.
    where = (
        f"id IN (SELECT id FROM {_A} WHERE state = 'running' AND lease_until < %s "
        "AND owner IS DISTINCT FROM %s FOR UPDATE SKIP LOCKED)"
    )
    rerun, held = await _put_back(
        cur, now, hold_unless, where, (now, owner), f"taken over by {owner}: the claim's lease expired"
    )
    return rerun + held


async def _op_due(cur: Cur, now: float, limit: int, skip: frozenset[int]) -> tuple[list[Entry], bool]:
    args = {"now": now, "limit": limit + len(skip)}
    await cur.execute(
        f"SELECT a.id FROM {_A} a WHERE a.state = 'pending' AND a.due <= %(now)s AND {_NOT_BLOCKED} "
        "ORDER BY a.id LIMIT %(limit)s",
        args,
    )
    pending = await cur.fetchall()
    await cur.execute(
        f"SELECT a.id FROM {_A} a WHERE a.state IN ('scheduled','failed') AND a.due <= %(now)s "
        f"AND {_NOT_BLOCKED} ORDER BY a.id LIMIT %(limit)s",
        args,
    )
    waiting = await cur.fetchall()
    hit = len(pending) >= args["limit"] or len(waiting) >= args["limit"]
    fresh = [i for i in sorted({r[0] for r in pending} | {r[0] for r in waiting}) if i not in skip]
    more = hit or len(fresh) > limit
    ids = fresh[:limit]
    if not ids:
        return [], more
    await cur.execute(
        f"SELECT {ACOLS}, e.data FROM {_A} a LEFT JOIN trapd_events e ON e.id = a.event_id "
        "WHERE a.id = ANY(%s) ORDER BY a.id",
        (ids,),
    )
    return [_entry(r, r[NCOLS]) for r in await cur.fetchall()], more


async def _op_next_due(cur: Cur, now: float) -> float | None:
    await cur.execute(
        f"SELECT min(due) FROM {_A} WHERE state IN ('scheduled', 'failed', 'pending') AND due > %s", (now,)
    )
    row = await cur.fetchone()
    return float(row[0]) if row and row[0] is not None else None


async def _op_claim(cur: Cur, id_: int, now: float, owner: str, lease: float) -> ClaimResult:
    await cur.execute(f"SELECT key FROM {_A} WHERE id = %s", (id_,))
    row = await cur.fetchone()
    if row is None:
        return ClaimResult("gone")
    # Per-key order across hosts: the key's claims take turns, so "nothing earlier is running"
    # cannot be true for two hosts at once.
    await _lock(cur, "key", row[0])
    await cur.execute(
        f"SELECT a.state, a.attempts, a.cap_exempt, a.caps, CASE WHEN EXISTS (SELECT 1 FROM {_A} b "
        "WHERE b.key = a.key AND b.id < a.id AND (b.state IN ('pending', 'failed') "
        "OR (b.state = 'scheduled' AND b.due <= %(now)s))) THEN 'waiting' "
        f"WHEN EXISTS (SELECT 1 FROM {_A} b WHERE b.key = a.key AND b.id < a.id AND b.state = 'running') "
        f"THEN 'running' END FROM {_A} a WHERE a.id = %(id)s FOR UPDATE OF a",
        {"id": id_, "now": now},
    )
    row = await cur.fetchone()
    if row is None or row[0] not in ACTIVE:
        return ClaimResult("gone")
    _state, attempts, exempt, caps_json, earlier = row
    if earlier is not None:
        return ClaimResult("wait", None, attempts, earlier)
    if attempts == 0 and not exempt and caps_json != "[]":
        caps = [CapCheck.from_json(c) for c in json.loads(caps_json)]
        for c in caps:
            await _lock(cur, "cap", f"{c.label}\x1f{c.key}")
        for c in caps:
            await cur.execute(
                "SELECT count(*) FROM trapd_cap_hits WHERE cap = %s AND key = %s AND at > %s",
                (c.label, c.key, now - c.per),
            )
            n = await cur.fetchone()
            if n is not None and n[0] >= c.limit:
                await cur.execute(
                    f"UPDATE {_A} SET state = 'held', held_by = %s, due = %s, last_error = %s WHERE id = %s",
                    (
                        c.label,
                        now + c.hold_for,
                        f"held: rate cap {c.label} reached ({c.limit} per {c.per:g}s for {c.key or 'all'})",
                        id_,
                    ),
                )
                return ClaimResult("held", c.label, attempts)
        for c in caps:
            await cur.execute(
                "INSERT INTO trapd_cap_hits (cap, key, at, expires) VALUES (%s, %s, %s, %s)",
                (c.label, c.key, now, now + c.per),
            )
    await cur.execute(
        f"UPDATE {_A} SET state = 'running', attempts = attempts + 1, started = %s, held_by = NULL, "
        "owner = %s, lease_until = %s WHERE id = %s",
        (now, owner, now + lease, id_),
    )
    return ClaimResult("running", None, attempts + 1)


async def _op_finish(
    cur: Cur,
    id_: int,
    state: str,
    now: float,
    result: Any,
    error: str | None,
    started: float | None,
    owner: str,
) -> None:
    # Only the owner's claim: a row taken over after this host lost its lease is the new owner's.
    await cur.execute(
        f"UPDATE {_A} SET state = %s, finished = %s, result = %s, last_error = COALESCE(%s, last_error), "
        "started = COALESCE(%s, started), lease_until = NULL "
        "WHERE id = %s AND state = 'running' AND owner = %s",
        (state, now, dumps(result) if result is not None else None, _text(error), started, id_, owner),
    )


async def _op_unclaim(cur: Cur, ids: Sequence[int], owner: str) -> int:
    if not ids:
        return 0
    await cur.execute(
        f"UPDATE {_A} SET state = 'pending', attempts = GREATEST(0, attempts - 1), started = NULL, "
        "lease_until = NULL WHERE id = ANY(%s) AND state = 'running' AND owner = %s",
        (list(ids), owner),
    )
    return cur.rowcount


async def _op_retry_later(
    cur: Cur, id_: int, due: float, error: str, endpoint: str | None, owner: str
) -> None:
    await cur.execute(
        f"UPDATE {_A} SET state = 'failed', due = %s, last_error = %s, endpoint = COALESCE(%s, endpoint), "
        "lease_until = NULL WHERE id = %s AND state = 'running' AND owner = %s",
        (due, _text(error), endpoint, id_, owner),
    )


async def _op_defer(cur: Cur, id_: int, due: float, reason: str, endpoint: str | None) -> None:
    await cur.execute(
        f"UPDATE {_A} SET due = %s, last_error = %s, endpoint = COALESCE(%s, endpoint) "
        f"WHERE id = %s AND state IN {_ACTIVE_SQL}",
        (due, _text(reason), endpoint, id_),
    )


async def _op_expedite(cur: Cur, endpoint: str, now: float) -> int:
    await cur.execute(
        f"UPDATE {_A} SET due = %s WHERE endpoint = %s AND state IN ('pending','failed') AND due > %s",
        (now, endpoint, now),
    )
    return cur.rowcount


async def _op_cancel(cur: Cur, ids: Sequence[int], now: float, reason: str) -> list[int]:
    if not ids:
        return []
    await cur.execute(
        f"UPDATE {_A} SET state = 'cancelled', finished = %s, last_error = %s "
        "WHERE id = ANY(%s) AND state IN ('scheduled','pending','failed','held') RETURNING id",
        (now, _text(reason), list(ids)),
    )
    return sorted(r[0] for r in await cur.fetchall())


async def _op_retry(cur: Cur, ids: Sequence[int], now: float) -> list[int]:
    if not ids:
        return []
    await cur.execute(
        f"UPDATE {_A} SET state = 'pending', due = %s, attempts = 0, age_from = %s, finished = NULL, "
        "result = NULL, held_by = NULL, cap_exempt = TRUE, last_error = 'retried by an operator; was: ' || "
        "COALESCE(last_error, state) WHERE id = ANY(%s) AND state IN ('dead','failed','held','cancelled') "
        "RETURNING id",
        (now, now, list(ids)),
    )
    return sorted(r[0] for r in await cur.fetchall())


async def _op_release(cur: Cur, now: float, ids: Sequence[int], rule: str | None) -> list[int]:
    where = "state = 'held'"
    args: list[Any] = [now]
    if ids:
        where += " AND id = ANY(%s)"
        args.append(list(ids))
    if rule is not None:
        where += " AND rule = %s"
        args.append(rule)
    await cur.execute(
        f"UPDATE {_A} SET state = 'pending', due = %s, cap_exempt = TRUE, held_by = NULL, "
        f"last_error = 'released by an operator' WHERE {where} RETURNING id",
        args,
    )
    return sorted(r[0] for r in await cur.fetchall())


async def _op_expire_held(cur: Cur, now: float) -> list[Entry]:
    # One host expires a row: the other sees it dead (SKIP LOCKED, then the UPDATE's own check).
    await cur.execute(
        f"UPDATE {_A} SET state = 'dead', finished = %s, "
        "last_error = 'held by ' || COALESCE(held_by, 'a cap') || ', not released before it expired' "
        f"WHERE id IN (SELECT id FROM {_A} WHERE state = 'held' AND due <= %s FOR UPDATE SKIP LOCKED) "
        f"RETURNING {COLS}",
        (now, now),
    )
    entries = [_entry(r) for r in await cur.fetchall()]
    for e in entries:  # as they were before: held, and why
        e.state = "held"
    return sorted(entries, key=lambda e: e.id)


async def _op_get(cur: Cur, id_: int, with_event: bool) -> Entry | None:
    await cur.execute(
        f"SELECT {ACOLS}, e.data FROM {_A} a LEFT JOIN trapd_events e ON e.id = a.event_id WHERE a.id = %s",
        (id_,),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    return _entry(row, row[NCOLS] if with_event else None)


async def _op_history(cur: Cur, f: HistoryFilter) -> list[Entry]:
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
            where.append(f"{col} = %s")
            args.append(value)
    if f.states:
        where.append("state = ANY(%s)")
        args.append(list(f.states))
    if f.since is not None:
        where.append("created >= %s")
        args.append(f.since)
    if f.until is not None:
        where.append("created < %s")
        args.append(f.until)
    sql = f"SELECT {COLS} FROM {_A}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC LIMIT %s"
    args.append(f.limit)
    await cur.execute(sql, args)
    return [_entry(r) for r in await cur.fetchall()]


async def _op_counts(cur: Cur) -> dict[str, int]:
    out = dict.fromkeys(("scheduled", "pending", "running", "failed", "held", "dead"), 0)
    await cur.execute(
        f"SELECT state, count(*) FROM {_A} "
        "WHERE state IN ('scheduled','pending','running','failed','held','dead') "
        "GROUP BY state"
    )
    for state, n in await cur.fetchall():
        out[state] = int(n)
    return out


async def _op_prune(cur: Cur, before: float, now: float) -> int:
    await cur.execute(
        f"DELETE FROM {_A} WHERE state IN ('done','dead','cancelled') "
        "AND finished IS NOT NULL AND finished < %s",
        (before,),
    )
    n = cur.rowcount
    await cur.execute(
        f"DELETE FROM trapd_events e WHERE e.received_at < %s AND NOT EXISTS "
        f"(SELECT 1 FROM {_A} a WHERE a.event_id = e.id)",
        (before,),
    )
    await cur.execute("DELETE FROM trapd_cap_hits WHERE expires < %s", (now,))
    return n


async def _op_noop(cur: Cur) -> None:
    return None


def _entry(row: Sequence[Any], event: str | None = None) -> Entry:
    # PostgreSQL's BOOLEAN and BIGINT come back as bool and int: the shared codec takes both.
    return entry_from_row(row, event)


@dataclass(slots=True)
class _Op:
    fn: Callable[..., Awaitable[Any]]
    args: tuple[Any, ...]
    future: asyncio.Future[Any]
    weight: int
    write: bool
    notify: bool  # other hosts may have to act on it: NOTIFY in its transaction


class PostgresJournal:
    """The shared journal on PostgreSQL: several trapd hosts, one queue, each action once."""

    def __init__(
        self,
        conninfo: str,
        *,
        owner: str | None = None,
        instance: str | None = None,
        max_batch: int = 1000,
        max_queued: int = 100_000,
        lease: float = DEFAULT_LEASE,
        connect_timeout: float = CONNECT_TIMEOUT,
        copy_window: float = DEFAULT_COPY_WINDOW,
    ) -> None:
        """``conninfo``: a libpq URL or key/value string, password included (see :func:`open_journal`).

        ``instance``: this host's name in claims (default: the host name); ``owner``: a
        worker's name under it (``service.workers``), recorded as ``INSTANCE/OWNER``.
        ``lease``: seconds a claim holds without renewal before another host may take it over.
        """
        self.conninfo = conninfo
        self.instance = instance or socket.gethostname()
        self._owner = f"{self.instance}/{owner}" if owner else self.instance
        self.max_batch = max_batch
        self.max_queued = max_queued
        self.lease = lease
        self.copy_window = copy_window
        self.connect_timeout = connect_timeout
        self._token = uuid.uuid4().hex  # this journal's NOTIFY payload: its own are not wake-ups
        self._pool: AsyncConnectionPool[Conn] | None = None
        self._queue: asyncio.Queue[_Op | None] = asyncio.Queue()
        self._queued = 0
        self._writer_task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._conn: Conn | None = None
        self._began = False  # the current batch's BEGIN reached the database (see _run_batch)
        self._retry_at = 0.0
        self._backoff = RECONNECT_MIN
        self._hold_unless: frozenset[str] | None = None
        # Set by recover(), which a dispatcher calls when it starts: only a journal that runs
        # actions takes over a dead host's (not `trapd journal`).
        self._runs_actions = False
        self._notified = False
        self._listening = False
        self._listen_ready = asyncio.Event()
        self._watchers: list[Callable[[], None]] = []
        # For /healthz, STATUS and the metrics.
        self.available = True
        self.unavailable_since: float | None = None
        self.last_error: str | None = None
        self.failed_ops = 0  # operations that failed because the database was unavailable
        self.taken_over = 0  # rows of other owners taken over after their lease expired
        self.commits = 0
        self.committed_ops = 0

    # -- lifecycle

    async def open(self) -> None:
        if self._writer_task is not None:
            return
        pool: AsyncConnectionPool[Conn] = AsyncConnectionPool(
            self.conninfo,
            min_size=1,
            max_size=2,
            open=False,
            kwargs={"autocommit": True},
            timeout=self.connect_timeout,
            # A failed background reconnect gives up at once: the writer has its own backoff
            # (RECONNECT_MIN..RECONNECT_MAX) and asks the pool again when the next attempt is due
            # (tests/test_pair.py: committing again 1.2 s after the database came back).
            reconnect_timeout=0,
            name="trapd-journal",
        )
        try:
            await pool.open(wait=True, timeout=max(self.connect_timeout, 5.0))
            async with pool.connection() as conn:
                found = await schema_version(conn)
        except (psycopg.Error, PoolTimeout) as exc:
            await pool.close()
            raise JournalError(f"cannot open the journal database: {_one_line(exc)}") from exc
        if found != SCHEMA_VERSION:
            await pool.close()
            if found is None:
                raise JournalError("the journal database has no trapd schema: run `trapd journal migrate`")
            if found > SCHEMA_VERSION:
                raise JournalError(_newer(found))
            raise JournalError(
                f"the journal database has trapd schema {found}, older than this trapd ({SCHEMA_VERSION}): "
                "run `trapd journal migrate`"
            )
        self._pool = pool
        self._writer_task = asyncio.create_task(self._writer(), name="trapd-journal-writer")
        self._tasks = [
            asyncio.create_task(self._listen(), name="trapd-journal-listen"),
            asyncio.create_task(self._lease_loop(), name="trapd-journal-leases"),
        ]
        # Wake-ups from the first moment, where the database lets us (else: polling until it does).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self.connect_timeout):
                await self._listen_ready.wait()

    async def close(self) -> None:
        if self._writer_task is None:
            return
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
        self._queue.put_nowait(None)
        task, self._writer_task = self._writer_task, None
        with contextlib.suppress(Exception):
            await task
        if self._conn is not None and self._pool is not None:
            with contextlib.suppress(Exception):
                await self._pool.putconn(self._conn)
            self._conn = None
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    async def __aenter__(self) -> PostgresJournal:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def queued(self) -> int:
        return self._queued

    @property
    def owner(self) -> str | None:
        return self._owner

    def health(self) -> JournalHealth:
        if self.available:
            return JournalHealth(failed_writes=self.failed_ops)
        return JournalHealth(
            False, f"journal database unavailable: {self.last_error}", self.unavailable_since, self.failed_ops
        )

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` when another host committed something this one may have to act on."""
        self._watchers.append(callback)

    # -- the writer task

    async def _writer(self) -> None:
        while True:
            op = await self._queue.get()
            if op is None:
                return
            batch = [op]
            stop = False
            while len(batch) < self.max_batch and not self._queue.empty():
                nxt = self._queue.get_nowait()
                if nxt is None:
                    stop = True
                    break
                batch.append(nxt)
            await self._run_batch(batch)
            if stop:
                return

    async def _connection(self) -> Conn:
        if self._conn is not None and not self._conn.closed:
            return self._conn
        assert self._pool is not None
        if time.time() < self._retry_at:
            raise JournalError(f"journal database unavailable: {self.last_error}")
        try:
            self._conn = await self._pool.getconn(timeout=self.connect_timeout)
        except (PoolTimeout, psycopg.Error) as exc:
            self._lost(exc)
            raise JournalError(f"journal database unavailable: {self.last_error}") from exc
        return self._conn

    def _lost(self, exc: BaseException) -> None:
        """The database went away: fail fast until the next reconnect is due (exponential backoff)."""
        now = time.time()
        self.last_error = _one_line(exc)[:300]
        if self.available:
            self.available = False
            self.unavailable_since = now
            self._backoff = RECONNECT_MIN
        else:
            self._backoff = min(self._backoff * 2, RECONNECT_MAX)
        self._retry_at = now + self._backoff

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None and self._pool is not None:
            with contextlib.suppress(Exception):
                await self._pool.putconn(conn)

    async def _run_batch(self, batch: list[_Op]) -> None:
        done: list[tuple[_Op, Any, BaseException | None]]
        stale_retried = False
        for attempt in range(CONFLICT_RETRIES + 1):
            self._began = False
            try:
                conn = await self._connection()
                try:
                    done = await self._transaction(conn, batch, isolate=False)
                except _OpFailed:
                    done = await self._transaction(conn, batch, isolate=True)
            except (pgerrors.DeadlockDetected, pgerrors.SerializationFailure, pgerrors.LockNotAvailable):
                if attempt < CONFLICT_RETRIES:
                    continue
                done = [(op, None, JournalError("journal commit failed: lock conflicts")) for op in batch]
            except JournalError as exc:
                self.failed_ops += sum(op.weight for op in batch if op.write)
                done = [(op, None, exc) for op in batch]
            except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
                await self._drop_connection()
                if not self._began and not stale_retried:
                    # It broke before BEGIN went through: nothing of the batch reached the
                    # database. The connection died while idle (the server restarted): try
                    # once more on a new one rather than fail (and lose a trap's outcome).
                    stale_retried = True
                    continue
                # The connection broke (the database stopped, the network): the commit may or may
                # not have happened, so the caller is told it failed (an inform is not acknowledged;
                # a committed action still runs: at least once).
                self._lost(exc)
                self.failed_ops += sum(op.weight for op in batch if op.write)
                err = JournalError(f"journal database unavailable: {self.last_error}")
                done = [(op, None, err) for op in batch]
            except psycopg.Error as exc:
                done = [(op, None, JournalError(f"journal commit failed: {_one_line(exc)}")) for op in batch]
            else:
                if not self.available:
                    self.available = True
                    self.unavailable_since = None
                    self._notified = True  # what the other host did meanwhile: look again
                    self._wake()
                if any(op.write for op in batch):
                    self.commits += 1
                    self.committed_ops += len(batch)
            break
        self._resolve(done)

    async def _transaction(
        self, conn: Conn, batch: list[_Op], *, isolate: bool
    ) -> list[tuple[_Op, Any, BaseException | None]]:
        done: list[tuple[_Op, Any, BaseException | None]] = []
        async with conn.transaction(), conn.cursor() as cur:
            self._began = True  # BEGIN went through: from here a broken connection is ambiguous
            held = _HELD.set(await self._prelock(cur, batch))
            try:
                await self._run_ops(conn, cur, batch, isolate=isolate, done=done)
            finally:
                _HELD.reset(held)
            if any(op.notify for op in batch):
                await cur.execute("SELECT pg_notify(%s, %s)", (CHANNEL, self._token))
        return done

    @staticmethod
    async def _prelock(cur: Cur, batch: list[_Op]) -> frozenset[int]:
        """Take the batch's add locks first, in sorted order, before any savepoint.

        Two hosts' batches that need the same keys (the copies of a burst of notifications,
        arriving in another order at each host) then wait for each other instead of
        deadlocking (PostgreSQL would break the deadlock only after deadlock_timeout, 1 s).
        """
        locks: set[int] = set()
        for op in batch:
            if op.fn is _op_add:
                locks |= _add_locks(op.args)
        if locks:
            # unnest yields in array order: the locks are taken in sorted order.
            await cur.execute(
                "SELECT pg_advisory_xact_lock(k) FROM unnest(%s::bigint[]) AS k", (sorted(locks),)
            )
        return frozenset(locks)

    @staticmethod
    async def _run_ops(
        conn: Conn,
        cur: Cur,
        batch: list[_Op],
        *,
        isolate: bool,
        done: list[tuple[_Op, Any, BaseException | None]],
    ) -> list[tuple[_Op, Any, BaseException | None]]:
        for op in batch:
            if isolate:
                try:
                    async with conn.transaction():  # a savepoint
                        result = await op.fn(cur, *op.args)
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    raise
                except (pgerrors.DeadlockDetected, pgerrors.SerializationFailure):
                    raise
                except Exception as exc:
                    done.append((op, None, exc))
                    continue
            else:
                try:
                    result = await op.fn(cur, *op.args)
                except (psycopg.OperationalError, psycopg.InterfaceError):
                    raise
                except (pgerrors.DeadlockDetected, pgerrors.SerializationFailure):
                    raise
                except Exception as exc:
                    raise _OpFailed from exc
            done.append((op, result, None))
        return done

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
        self,
        fn: Callable[..., Awaitable[Any]],
        *args: Any,
        weight: int = 1,
        write: bool = True,
        notify: bool = False,
    ) -> asyncio.Future[Any]:
        if self._writer_task is None:
            raise JournalError("the journal is not open")
        if write and self._queued + weight > self.max_queued:
            raise JournalFull(f"{self._queued} journal writes are waiting for the database")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued += weight
        self._queue.put_nowait(_Op(fn, args, fut, weight, write, notify))
        return fut

    # -- wake-ups and leases

    def _wake(self) -> None:
        for cb in self._watchers:
            cb()

    async def _listen(self) -> None:
        """LISTEN on its own connection; reconnect with backoff. While down, :meth:`changed` polls."""
        backoff = RECONNECT_MIN
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True, connect_timeout=max(1, int(self.connect_timeout))
                )
            except psycopg.Error:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, RECONNECT_MAX)
                continue
            try:
                await conn.execute(f"LISTEN {CHANNEL}")
                self._listening = True
                self._listen_ready.set()
                backoff = RECONNECT_MIN
                self._notified = True  # whatever happened while not listening
                self._wake()
                async for note in conn.notifies():
                    if note.payload != self._token:
                        self._notified = True
                        self._wake()
            except psycopg.Error:
                pass
            finally:
                self._listening = False
                with contextlib.suppress(Exception):
                    await conn.close()
            await asyncio.sleep(backoff)

    async def _lease_loop(self) -> None:
        """Renew this host's claims; take over the rows whose owner stopped renewing."""
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                taken: int = await self._call(
                    _op_renew, time.time(), self._owner, self.lease, self._hold_unless, self._runs_actions
                )
            except JournalError:
                continue
            if taken:
                self.taken_over += taken
                self._notified = True
                self._wake()

    # -- the Journal interface
    #
    # Each method queues this backend's operation, as SQLiteJournal's do with its own: the
    # same shapes on purpose (one protocol), different operations and arguments (owner, lease,
    # copy window, NOTIFY). A shared base class would only hide which operation each one runs.

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
        # Only what another host may run needs its wake-up: not an action claimed at insert.
        notify = any(not e.claim and e.state in ACTIVE for e in entries)
        fut: asyncio.Future[AddResult] = self._call(
            _op_add,
            event,
            list(entries),
            list(cancel_keys),
            now,
            self._owner,
            self.lease,
            self.copy_window,
            event_fingerprint(event) if event is not None and self.copy_window > 0 else None,
            weight=max(1, len(entries)),
            notify=notify,
        )
        return fut

    async def recover(
        self, now: float, hold_unless: Iterable[str] | None = None, *, owner: str | None = None
    ) -> dict[str, int]:
        keep = frozenset(hold_unless) if hold_unless is not None else None
        self._hold_unless = keep  # the policy for rows taken over later (see _lease_loop)
        self._runs_actions = True
        result: dict[str, int] = await self._call(_op_recover, now, keep, owner, self.instance, notify=True)
        return result

    async def due(
        self, now: float, limit: int, skip: frozenset[int] = frozenset()
    ) -> tuple[list[Entry], bool]:
        result: tuple[list[Entry], bool] = await self._call(_op_due, now, limit, skip, write=False)
        return result

    async def next_due(self, now: float) -> float | None:
        result: float | None = await self._call(_op_next_due, now, write=False)
        return result

    async def claim(self, id: int, now: float) -> ClaimResult:
        result: ClaimResult = await self._call(_op_claim, id, now, self._owner, self.lease)
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
        await self.finish_soon(id, state, now, result, error, started=started)

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
        # A finished action may unblock the next of its key on another host.
        fut: asyncio.Future[None] = self._call(
            _op_finish, id, state, now, result, error, started, self._owner, notify=True
        )
        return fut

    def unclaim_soon(self, ids: Sequence[int]) -> Awaitable[int]:
        fut: asyncio.Future[int] = self._call(
            _op_unclaim, list(ids), self._owner, weight=max(1, len(ids)), notify=True
        )
        return fut

    async def retry_later(self, id: int, due: float, error: str, endpoint: str | None) -> None:
        await self._call(_op_retry_later, id, due, error, endpoint, self._owner, notify=True)

    async def defer(self, id: int, due: float, reason: str, endpoint: str | None) -> None:
        await self._call(_op_defer, id, due, reason, endpoint)

    async def expedite(self, endpoint: str, now: float) -> int:
        result: int = await self._call(_op_expedite, endpoint, now, notify=True)
        return result

    async def cancel(self, ids: Sequence[int], now: float, reason: str) -> list[int]:
        result: list[int] = await self._call(_op_cancel, list(ids), now, reason, notify=True)
        return result

    async def retry(self, ids: Sequence[int], now: float) -> list[int]:
        result: list[int] = await self._call(_op_retry, list(ids), now, notify=True)
        return result

    async def release(self, now: float, ids: Sequence[int] = (), rule: str | None = None) -> list[int]:
        result: list[int] = await self._call(_op_release, now, list(ids), rule, notify=True)
        return result

    async def expire_held(self, now: float) -> list[Entry]:
        result: list[Entry] = await self._call(_op_expire_held, now)
        return result

    async def get(self, id: int, with_event: bool = True) -> Entry | None:
        result: Entry | None = await self._call(_op_get, id, with_event, write=False)
        return result

    async def history(self, flt: HistoryFilter) -> list[Entry]:
        result: list[Entry] = await self._call(_op_history, flt, write=False)
        return result

    async def counts(self) -> dict[str, int]:
        result: dict[str, int] = await self._call(_op_counts, write=False)
        return result

    async def prune(self, finished_before: float, now: float) -> int:
        result: int = await self._call(_op_prune, finished_before, now)
        return result

    async def changed(self) -> bool:
        """True when another host (or `trapd journal`) committed something since the last call.

        Pushed by NOTIFY; while the listening connection is down, always True: the
        dispatcher then looks at the journal every ``poll_interval`` (the polling fallback).
        """
        if not self._listening:
            return True
        changed, self._notified = self._notified, False
        return changed
