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
  renews its leases every third of the lease time (beside the writer, not
  behind its queue), and a host that finds a row whose lease expired (its
  owner died or lost the database) takes it over with the recovery policy the
  dispatcher gave :meth:`recover`
  (``dispatch.interrupted``: rerun, or hold what is not idempotent);
* **wake-ups**: every write that another host may have to act on sends
  ``NOTIFY trapd_journal`` in its transaction; a listening connection turns
  them into the dispatcher's wake-up, and :meth:`changed` stays the polling
  fallback (it says "changed" every poll while the listener is down).

As in the SQLite backend, operations go through one writer (a task here, not a
thread): queued operations share one transaction (group commit), a future
resolves only after its commit, and reads see this journal's own writes.
A batch costs one round trip: its usual operations (adds, claims, finishes)
go as one JSON array to ``trapd_run``, a function of the schema that runs each
as the statements it stands for (``trapd_add_entry``, ``trapd_claim``), in
order; ``trapd_run_batch`` takes the batch's locks, calls it and sends the
NOTIFY, one statement, its own transaction. Other operations are sent as
statements in a pipeline (see :meth:`PostgresJournal._send`). Caps are counted in 60 slots per window, as in
SQLite.

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
import hashlib
import json
import select
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import errors as pgerrors
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from trapd.cancelling import cancel_and_wait
from trapd.dispatch.journal.model import (
    ACTIVE,
    INTERRUPTED_HOLD_FOR,
    LATE_END,
    PRUNE_CHUNK,
    AddResult,
    ClaimResult,
    Entry,
    HistoryFilter,
    JournalError,
    JournalFull,
    JournalHealth,
    JournalNotice,
    NewEntry,
    State,
    Takeover,
    Unreadable,
)
from trapd.dispatch.journal.rows import (
    ACOLS,
    COLS,
    NCOLS,
    SUMMARY_COLS,
    decode_due,
    dumps,
    dumps_result,
    entry_from_row,
    entry_read_leniently,
    set_aside_error,
    stored_event,
    unreadable,
)
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
    (
        3,
        # Each operation of a batch is one statement, sent in one pipeline (see PostgresJournal):
        # what needed a round trip per lock and per check runs in these functions, statement by
        # statement as before (each statement of a PL/pgSQL function reads the latest commits,
        # so a check after a lock sees what the lock's previous holder committed). The advisory
        # locks' ids are computed here (trapd_lock_id) so that a claim can lock its row's key
        # without asking for the key first; a new scheme, hence a new schema version: hosts that
        # lock by different schemes would not exclude each other.
        """
CREATE FUNCTION trapd_lock_id(ns TEXT, k TEXT) RETURNS BIGINT
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT ('x' || left(encode(sha256(convert_to(ns || chr(31) || k, 'UTF8')), 'hex'), 16))::bit(64)::bigint
$$;

CREATE FUNCTION trapd_add_entry(
    p_event_id TEXT, p_received_at DOUBLE PRECISION, p_source TEXT, p_rule TEXT, p_action TEXT,
    p_idx INTEGER, p_params TEXT, p_key TEXT, p_mode TEXT, p_state TEXT, p_max_attempts INTEGER,
    p_backoff DOUBLE PRECISION, p_max_age DOUBLE PRECISION, p_now DOUBLE PRECISION, p_due DOUBLE PRECISION,
    p_cancel_key TEXT, p_once_key TEXT, p_once_within DOUBLE PRECISION, p_once_note TEXT, p_caps TEXT,
    p_mac TEXT, p_ip TEXT, p_item TEXT, p_result TEXT, p_error TEXT, p_claim BOOLEAN, p_owner TEXT,
    p_lease DOUBLE PRECISION, p_copy_key TEXT, p_copy_window DOUBLE PRECISION,
    OUT r_id BIGINT, OUT r_state TEXT, OUT r_dup BIGINT
) LANGUAGE plpgsql AS $$
DECLARE
    v_result TEXT := p_result;
    v_error TEXT := p_error;
    v_copy_event TEXT;
    v_claimed BOOLEAN := FALSE;
BEGIN
    r_state := p_state;
    IF p_copy_key IS NOT NULL THEN
        -- The other host may be journaling its copy right now: the lock makes the second wait
        -- for the first's commit, then see its row. A copy is another receiver's event.
        PERFORM pg_advisory_xact_lock(trapd_lock_id('copy', p_copy_key));
        SELECT a.id, a.event_id INTO r_dup, v_copy_event FROM trapd_actions a
            WHERE a.copy_key = p_copy_key AND a.created >= p_now - p_copy_window
            AND a.event_id <> p_event_id ORDER BY a.id LIMIT 1;
        IF r_dup IS NOT NULL THEN
            r_state := 'cancelled';
            v_result := json_build_object('duplicate_of', r_dup, 'copy_of_event', v_copy_event)::text;
            v_error := 'copy of the notification journaled as ' || r_dup || ' (event ' || v_copy_event || ')';
        END IF;
    END IF;
    IF r_dup IS NULL AND p_once_within IS NOT NULL AND r_state IN ('pending', 'scheduled', 'done') THEN
        PERFORM pg_advisory_xact_lock(trapd_lock_id('once', p_once_key));
        SELECT a.id INTO r_dup FROM trapd_actions a
            WHERE a.once_key = p_once_key AND a.created >= p_now - p_once_within
            AND a.state NOT IN ('cancelled', 'dead') ORDER BY a.id LIMIT 1;
        IF r_dup IS NOT NULL THEN
            r_state := 'cancelled';
            v_result := json_build_object('duplicate_of', r_dup)::text;
            v_error := 'duplicate of ' || r_dup || p_once_note;
        END IF;
    END IF;
    IF p_claim AND r_state = 'pending' AND p_caps = '[]' AND p_due <= p_now THEN
        PERFORM pg_advisory_xact_lock(trapd_lock_id('key', p_key));
        v_claimed := NOT EXISTS (SELECT 1 FROM trapd_actions a WHERE a.key = p_key
            AND (a.state IN ('pending', 'failed', 'running') OR (a.state = 'scheduled' AND a.due <= p_now)));
        IF v_claimed THEN
            r_state := 'running';
        END IF;
    END IF;
    INSERT INTO trapd_actions (event_id, received_at, source, rule, action, idx, params, key, mode, state,
        max_attempts, backoff, max_age, age_from, created, due, finished, cancel_key, once_key, caps,
        mac, ip, item, result, last_error, attempts, started, owner, lease_until, copy_key)
    VALUES (p_event_id, p_received_at, p_source, p_rule, p_action, p_idx, p_params, p_key, p_mode, r_state,
        p_max_attempts, p_backoff, p_max_age, p_received_at, p_now, p_due,
        CASE WHEN r_state IN ('done', 'dead', 'cancelled') THEN p_now END, p_cancel_key, p_once_key, p_caps,
        p_mac, p_ip, p_item, v_result, v_error, CASE WHEN v_claimed THEN 1 ELSE 0 END,
        CASE WHEN v_claimed THEN p_now END, CASE WHEN v_claimed THEN p_owner END,
        CASE WHEN v_claimed THEN p_now + p_lease END, p_copy_key)
    RETURNING id INTO r_id;
END
$$;

CREATE FUNCTION trapd_claim(
    p_id BIGINT, p_now DOUBLE PRECISION, p_owner TEXT, p_lease DOUBLE PRECISION,
    OUT r_outcome TEXT, OUT r_cap TEXT, OUT r_attempts INTEGER, OUT r_blocked_by TEXT
) LANGUAGE plpgsql AS $$
DECLARE
    v_key TEXT;
    v_state TEXT;
    v_attempts INTEGER;
    v_exempt BOOLEAN;
    v_caps TEXT;
    c JSON;
    v_hits BIGINT;
BEGIN
    r_attempts := 0;
    SELECT a.key INTO v_key FROM trapd_actions a WHERE a.id = p_id;
    IF NOT FOUND THEN
        r_outcome := 'gone';
        RETURN;
    END IF;
    -- Per-key order across hosts: the key's claims take turns, so "nothing earlier is running"
    -- cannot be true for two hosts at once.
    PERFORM pg_advisory_xact_lock(trapd_lock_id('key', v_key));
    SELECT a.state, a.attempts, a.cap_exempt, a.caps,
        CASE WHEN EXISTS (SELECT 1 FROM trapd_actions b WHERE b.key = a.key AND b.id < a.id
            AND (b.state IN ('pending', 'failed') OR (b.state = 'scheduled' AND b.due <= p_now)))
            THEN 'waiting'
        WHEN EXISTS (SELECT 1 FROM trapd_actions b WHERE b.key = a.key AND b.id < a.id
            AND b.state = 'running') THEN 'running' END
        INTO v_state, v_attempts, v_exempt, v_caps, r_blocked_by
        FROM trapd_actions a WHERE a.id = p_id FOR UPDATE OF a;
    IF NOT FOUND OR v_state NOT IN ('scheduled', 'pending', 'failed') THEN
        r_outcome := 'gone';
        r_blocked_by := NULL;
        RETURN;
    END IF;
    r_attempts := v_attempts;
    IF r_blocked_by IS NOT NULL THEN
        r_outcome := 'wait';
        RETURN;
    END IF;
    IF v_attempts = 0 AND NOT v_exempt AND v_caps <> '[]' THEN
        FOR c IN SELECT e.value FROM json_array_elements(v_caps::json) WITH ORDINALITY AS e(value, ord)
            ORDER BY e.ord
        LOOP
            PERFORM pg_advisory_xact_lock(trapd_lock_id('cap', (c->>0) || chr(31) || (c->>1)));
        END LOOP;
        FOR c IN SELECT e.value FROM json_array_elements(v_caps::json) WITH ORDINALITY AS e(value, ord)
            ORDER BY e.ord
        LOOP
            SELECT count(*) INTO v_hits FROM trapd_cap_hits h
                WHERE h.cap = c->>0 AND h.key = c->>1 AND h.at > p_now - (c->>3)::float8;
            IF v_hits >= (c->>2)::bigint THEN
                UPDATE trapd_actions SET state = 'held', held_by = c->>0, due = p_now + (c->>4)::float8,
                    last_error = 'held: rate cap ' || (c->>0) || ' reached (' || (c->>2) || ' per '
                        || ((c->>3)::float8)::text || 's for ' || COALESCE(NULLIF(c->>1, ''), 'all') || ')'
                    WHERE id = p_id;
                r_outcome := 'held';
                r_cap := c->>0;
                RETURN;
            END IF;
        END LOOP;
        INSERT INTO trapd_cap_hits (cap, key, at, expires)
            SELECT e.value->>0, e.value->>1, p_now, p_now + (e.value->>3)::float8
            FROM json_array_elements(v_caps::json) AS e(value);
    END IF;
    UPDATE trapd_actions SET state = 'running', attempts = attempts + 1, started = p_now, held_by = NULL,
        owner = p_owner, lease_until = p_now + p_lease WHERE id = p_id;
    r_outcome := 'running';
    r_attempts := v_attempts + 1;
END
$$;
""",
    ),
    (
        4,
        # A whole batch of the usual operations (adds without cancels, claims, finishes) as one
        # statement: trapd_run runs them in order, each as its own statement, exactly as they
        # would run sent one by one; trapd sends one JSON array instead of a statement each.
        """
CREATE FUNCTION trapd_run(p_ops JSONB) RETURNS JSONB LANGUAGE plpgsql AS $$
DECLARE
    op JSONB;
    e JSONB;
    ev JSONB;
    r RECORD;
    added JSONB[];
    outs JSONB[] := '{}';
BEGIN
    FOR op IN SELECT x.value FROM jsonb_array_elements(p_ops) WITH ORDINALITY AS x(value, ord) ORDER BY x.ord
    LOOP
        IF op->>0 = 'c' THEN
            SELECT * INTO r FROM trapd_claim((op->>1)::bigint, (op->>2)::float8, op->>3, (op->>4)::float8);
            outs := array_append(outs, jsonb_build_array(r.r_outcome, r.r_cap, r.r_attempts, r.r_blocked_by));
        ELSIF op->>0 = 'f' THEN
            -- Only the owner's claim: a row taken over after this host lost its lease is the new owner's.
            UPDATE trapd_actions SET state = op->>2, finished = (op->>3)::float8, result = op->>4,
                last_error = COALESCE(op->>5, last_error), started = COALESCE((op->>6)::float8, started),
                lease_until = NULL
                WHERE id = (op->>1)::bigint AND state = 'running' AND owner = op->>7;
            outs := array_append(outs, 'null'::jsonb);
        ELSIF op->>0 = 'a' THEN
            ev := op->1;
            IF jsonb_typeof(ev) = 'array' THEN
                INSERT INTO trapd_events (id, received_at, source, trap_name, data)
                    VALUES (ev->>0, (ev->>1)::float8, ev->>2, ev->>3, ev->>4) ON CONFLICT (id) DO NOTHING;
            END IF;
            added := '{}';
            FOR e IN SELECT x.value FROM jsonb_array_elements(op->2) WITH ORDINALITY AS x(value, ord)
                ORDER BY x.ord
            LOOP
                SELECT * INTO r FROM trapd_add_entry(e->>0, (e->>1)::float8, e->>2, e->>3, e->>4,
                    (e->>5)::integer, e->>6, e->>7, e->>8, e->>9, (e->>10)::integer, (e->>11)::float8,
                    (e->>12)::float8, (e->>13)::float8, (e->>14)::float8, e->>15, e->>16, (e->>17)::float8,
                    e->>18, e->>19, e->>20, e->>21, e->>22, e->>23, e->>24, (e->>25)::boolean, e->>26,
                    (e->>27)::float8, e->>28, (e->>29)::float8);
                added := array_append(added, jsonb_build_array(r.r_id, r.r_state, r.r_dup));
            END LOOP;
            outs := array_append(outs, to_jsonb(added));
        ELSIF op->>0 = 'n' THEN
            outs := array_append(outs, 'null'::jsonb);
        ELSE
            RAISE EXCEPTION 'trapd_run: unknown operation %', op->>0;
        END IF;
    END LOOP;
    RETURN to_jsonb(outs);
END
$$;
""",
    ),
    (
        5,
        # Caps counted in slots, as the SQLite journal does (sqlite.CAP_SLOTS): one row per start
        # cost O(starts in the window) per claim (a cap of 1,000,000 per hour: 971 claims/s with
        # an empty window, 209/s with 10,000 starts in it). A window is counted in 60 slots; the
        # slot holding its start counts whole, so a cap holds a little early (at most 1/60 of
        # its window), never late. The starts counted so far move into their slots. A slot's
        # cap name carries the window ("global/x/60"): a rule's new ``per`` counts afresh.
        """
CREATE TABLE trapd_cap_slots (
    cap TEXT NOT NULL, key TEXT NOT NULL, slot BIGINT NOT NULL, n INTEGER NOT NULL,
    expires DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (cap, key, slot)
);
CREATE INDEX trapd_cap_slots_expires ON trapd_cap_slots(expires);
INSERT INTO trapd_cap_slots (cap, key, slot, n, expires)
    SELECT cap, key, slot, count(*), max((slot + 1) * width + per)
    FROM (
        SELECT h.cap || '/' || w.per::text AS cap, h.key, w.per, w.width,
            floor(h.at / w.width)::bigint AS slot
        FROM trapd_cap_hits h,
            LATERAL (SELECT (round(((h.expires - h.at) * 1000)::numeric) / 1000)::float8 AS per) p,
            LATERAL (SELECT p.per, greatest(p.per / 60, 0.001) AS width) w
    ) s
    GROUP BY cap, key, slot;
DROP TABLE trapd_cap_hits;
CREATE OR REPLACE FUNCTION trapd_claim(
    p_id BIGINT, p_now DOUBLE PRECISION, p_owner TEXT, p_lease DOUBLE PRECISION,
    OUT r_outcome TEXT, OUT r_cap TEXT, OUT r_attempts INTEGER, OUT r_blocked_by TEXT
) LANGUAGE plpgsql AS $$
DECLARE
    v_key TEXT;
    v_state TEXT;
    v_attempts INTEGER;
    v_exempt BOOLEAN;
    v_caps TEXT;
    c JSON;
    v_hits BIGINT;
    v_per DOUBLE PRECISION;
    v_width DOUBLE PRECISION;
    v_slot BIGINT;
BEGIN
    r_attempts := 0;
    SELECT a.key INTO v_key FROM trapd_actions a WHERE a.id = p_id;
    IF NOT FOUND THEN
        r_outcome := 'gone';
        RETURN;
    END IF;
    -- Per-key order across hosts: the key's claims take turns, so "nothing earlier is running"
    -- cannot be true for two hosts at once.
    PERFORM pg_advisory_xact_lock(trapd_lock_id('key', v_key));
    SELECT a.state, a.attempts, a.cap_exempt, a.caps,
        CASE WHEN EXISTS (SELECT 1 FROM trapd_actions b WHERE b.key = a.key AND b.id < a.id
            AND (b.state IN ('pending', 'failed') OR (b.state = 'scheduled' AND b.due <= p_now)))
            THEN 'waiting'
        WHEN EXISTS (SELECT 1 FROM trapd_actions b WHERE b.key = a.key AND b.id < a.id
            AND b.state = 'running') THEN 'running' END
        INTO v_state, v_attempts, v_exempt, v_caps, r_blocked_by
        FROM trapd_actions a WHERE a.id = p_id FOR UPDATE OF a;
    IF NOT FOUND OR v_state NOT IN ('scheduled', 'pending', 'failed') THEN
        r_outcome := 'gone';
        r_blocked_by := NULL;
        RETURN;
    END IF;
    r_attempts := v_attempts;
    IF r_blocked_by IS NOT NULL THEN
        r_outcome := 'wait';
        RETURN;
    END IF;
    IF v_attempts = 0 AND NOT v_exempt AND v_caps <> '[]' THEN
        FOR c IN SELECT e.value FROM json_array_elements(v_caps::json) WITH ORDINALITY AS e(value, ord)
            ORDER BY e.ord
        LOOP
            PERFORM pg_advisory_xact_lock(trapd_lock_id('cap', (c->>0) || chr(31) || (c->>1)));
        END LOOP;
        FOR c IN SELECT e.value FROM json_array_elements(v_caps::json) WITH ORDINALITY AS e(value, ord)
            ORDER BY e.ord
        LOOP
            v_per := (c->>3)::float8;
            v_width := greatest(v_per / 60, 0.001);
            SELECT coalesce(sum(s.n), 0) INTO v_hits FROM trapd_cap_slots s
                WHERE s.cap = (c->>0) || '/' || v_per::text AND s.key = c->>1
                AND s.slot >= floor((p_now - v_per) / v_width)::bigint;
            IF v_hits >= (c->>2)::bigint THEN
                UPDATE trapd_actions SET state = 'held', held_by = c->>0, due = p_now + (c->>4)::float8,
                    last_error = 'held: rate cap ' || (c->>0) || ' reached (' || (c->>2) || ' per '
                        || ((c->>3)::float8)::text || 's for ' || COALESCE(NULLIF(c->>1, ''), 'all') || ')'
                    WHERE id = p_id;
                r_outcome := 'held';
                r_cap := c->>0;
                RETURN;
            END IF;
        END LOOP;
        FOR c IN SELECT e.value FROM json_array_elements(v_caps::json) WITH ORDINALITY AS e(value, ord)
            ORDER BY e.ord
        LOOP
            v_per := (c->>3)::float8;
            v_width := greatest(v_per / 60, 0.001);
            v_slot := floor(p_now / v_width)::bigint;
            INSERT INTO trapd_cap_slots (cap, key, slot, n, expires)
                VALUES ((c->>0) || '/' || v_per::text, c->>1, v_slot, 1, (v_slot + 1) * v_width + v_per)
                ON CONFLICT (cap, key, slot) DO UPDATE SET n = trapd_cap_slots.n + 1;
        END LOOP;
    END IF;
    UPDATE trapd_actions SET state = 'running', attempts = attempts + 1, started = p_now, held_by = NULL,
        owner = p_owner, lease_until = p_now + p_lease WHERE id = p_id;
    r_outcome := 'running';
    r_attempts := v_attempts + 1;
END
$$;
""",
    ),
    (
        6,
        # A batch of the usual operations as one statement: the batch's locks, trapd_run, the
        # wake-up. Sent alone on the autocommit connection it is its own transaction (one
        # round trip, server-side parameters, a plan prepared once per connection).
        """
CREATE FUNCTION trapd_run_batch(p_locks BIGINT[], p_ops JSONB, p_notify TEXT) RETURNS JSONB
LANGUAGE plpgsql AS $$
DECLARE
    v_out JSONB;
BEGIN
    -- The adds' locks first, in the order given (sorted by trapd): two hosts' batches that need
    -- the same keys wait for each other instead of deadlocking.
    PERFORM pg_advisory_xact_lock(u.k) FROM unnest(p_locks) WITH ORDINALITY AS u(k, ord) ORDER BY u.ord;
    v_out := trapd_run(p_ops);
    IF p_notify IS NOT NULL THEN
        PERFORM pg_notify('trapd_journal', p_notify);
    END IF;
    RETURN v_out;
END
$$;
""",
    ),
    (
        7,
        # trapd_claim: another action of the key running makes a claim wait whatever its id, not
        # only an earlier one. An older action can become runnable while a newer one of its key
        # runs on the other host: a delay falling due, an operator's release or retry, or ids
        # taken before the other host's commit (a sequence is not in commit order); it started
        # beside it, two at once for one key.
        """
CREATE OR REPLACE FUNCTION trapd_claim(
    p_id BIGINT, p_now DOUBLE PRECISION, p_owner TEXT, p_lease DOUBLE PRECISION,
    OUT r_outcome TEXT, OUT r_cap TEXT, OUT r_attempts INTEGER, OUT r_blocked_by TEXT
) LANGUAGE plpgsql AS $$
DECLARE
    v_key TEXT;
    v_state TEXT;
    v_attempts INTEGER;
    v_exempt BOOLEAN;
    v_caps TEXT;
    c JSON;
    v_hits BIGINT;
    v_per DOUBLE PRECISION;
    v_width DOUBLE PRECISION;
    v_slot BIGINT;
BEGIN
    r_attempts := 0;
    SELECT a.key INTO v_key FROM trapd_actions a WHERE a.id = p_id;
    IF NOT FOUND THEN
        r_outcome := 'gone';
        RETURN;
    END IF;
    -- Per-key order across hosts: the key's claims take turns, so "nothing else of the key is
    -- running" cannot be true for two hosts at once.
    PERFORM pg_advisory_xact_lock(trapd_lock_id('key', v_key));
    SELECT a.state, a.attempts, a.cap_exempt, a.caps,
        CASE WHEN EXISTS (SELECT 1 FROM trapd_actions b WHERE b.key = a.key AND b.id < a.id
            AND (b.state IN ('pending', 'failed') OR (b.state = 'scheduled' AND b.due <= p_now)))
            THEN 'waiting'
        WHEN EXISTS (SELECT 1 FROM trapd_actions b WHERE b.key = a.key AND b.id <> a.id
            AND b.state = 'running') THEN 'running' END
        INTO v_state, v_attempts, v_exempt, v_caps, r_blocked_by
        FROM trapd_actions a WHERE a.id = p_id FOR UPDATE OF a;
    IF NOT FOUND OR v_state NOT IN ('scheduled', 'pending', 'failed') THEN
        r_outcome := 'gone';
        r_blocked_by := NULL;
        RETURN;
    END IF;
    r_attempts := v_attempts;
    IF r_blocked_by IS NOT NULL THEN
        r_outcome := 'wait';
        RETURN;
    END IF;
    IF v_attempts = 0 AND NOT v_exempt AND v_caps <> '[]' THEN
        FOR c IN SELECT e.value FROM json_array_elements(v_caps::json) WITH ORDINALITY AS e(value, ord)
            ORDER BY e.ord
        LOOP
            PERFORM pg_advisory_xact_lock(trapd_lock_id('cap', (c->>0) || chr(31) || (c->>1)));
        END LOOP;
        FOR c IN SELECT e.value FROM json_array_elements(v_caps::json) WITH ORDINALITY AS e(value, ord)
            ORDER BY e.ord
        LOOP
            v_per := (c->>3)::float8;
            v_width := greatest(v_per / 60, 0.001);
            SELECT coalesce(sum(s.n), 0) INTO v_hits FROM trapd_cap_slots s
                WHERE s.cap = (c->>0) || '/' || v_per::text AND s.key = c->>1
                AND s.slot >= floor((p_now - v_per) / v_width)::bigint;
            IF v_hits >= (c->>2)::bigint THEN
                UPDATE trapd_actions SET state = 'held', held_by = c->>0, due = p_now + (c->>4)::float8,
                    last_error = 'held: rate cap ' || (c->>0) || ' reached (' || (c->>2) || ' per '
                        || ((c->>3)::float8)::text || 's for ' || COALESCE(NULLIF(c->>1, ''), 'all') || ')'
                    WHERE id = p_id;
                r_outcome := 'held';
                r_cap := c->>0;
                RETURN;
            END IF;
        END LOOP;
        FOR c IN SELECT e.value FROM json_array_elements(v_caps::json) WITH ORDINALITY AS e(value, ord)
            ORDER BY e.ord
        LOOP
            v_per := (c->>3)::float8;
            v_width := greatest(v_per / 60, 0.001);
            v_slot := floor(p_now / v_width)::bigint;
            INSERT INTO trapd_cap_slots (cap, key, slot, n, expires)
                VALUES ((c->>0) || '/' || v_per::text, c->>1, v_slot, 1, (v_slot + 1) * v_width + v_per)
                ON CONFLICT (cap, key, slot) DO UPDATE SET n = trapd_cap_slots.n + 1;
        END LOOP;
    END IF;
    UPDATE trapd_actions SET state = 'running', attempts = attempts + 1, started = p_now, held_by = NULL,
        owner = p_owner, lease_until = p_now + p_lease WHERE id = p_id;
    r_outcome := 'running';
    r_attempts := v_attempts + 1;
END
$$;
""",
    ),
    (
        8,
        # Who runs actions under which name, and when it last said so (PostgresJournal.recover):
        # a second process under a name that is alive is refused, since two processes under one
        # name would recover, renew and finish each other's claims as their own.
        """
CREATE TABLE trapd_instances (
    owner TEXT PRIMARY KEY, token TEXT NOT NULL, seen DOUBLE PRECISION NOT NULL,
    lease DOUBLE PRECISION NOT NULL
);
""",
    ),
    (
        9,
        # Which host journaled each action (journaled_by): on a pair not always the one that runs
        # it (the other may claim it when it falls due; a cap holds it unclaimed; a copy is
        # journaled cancelled by the host that got it second), and `trapd journal` showed only
        # the claimer. trapd_add_entry as in 3, with its owner written in the new column.
        """
ALTER TABLE trapd_actions ADD COLUMN journaled_by TEXT;
CREATE OR REPLACE FUNCTION trapd_add_entry(
    p_event_id TEXT, p_received_at DOUBLE PRECISION, p_source TEXT, p_rule TEXT, p_action TEXT,
    p_idx INTEGER, p_params TEXT, p_key TEXT, p_mode TEXT, p_state TEXT, p_max_attempts INTEGER,
    p_backoff DOUBLE PRECISION, p_max_age DOUBLE PRECISION, p_now DOUBLE PRECISION, p_due DOUBLE PRECISION,
    p_cancel_key TEXT, p_once_key TEXT, p_once_within DOUBLE PRECISION, p_once_note TEXT, p_caps TEXT,
    p_mac TEXT, p_ip TEXT, p_item TEXT, p_result TEXT, p_error TEXT, p_claim BOOLEAN, p_owner TEXT,
    p_lease DOUBLE PRECISION, p_copy_key TEXT, p_copy_window DOUBLE PRECISION,
    OUT r_id BIGINT, OUT r_state TEXT, OUT r_dup BIGINT
) LANGUAGE plpgsql AS $$
DECLARE
    v_result TEXT := p_result;
    v_error TEXT := p_error;
    v_copy_event TEXT;
    v_claimed BOOLEAN := FALSE;
BEGIN
    r_state := p_state;
    IF p_copy_key IS NOT NULL THEN
        -- The other host may be journaling its copy right now: the lock makes the second wait
        -- for the first's commit, then see its row. A copy is another receiver's event.
        PERFORM pg_advisory_xact_lock(trapd_lock_id('copy', p_copy_key));
        SELECT a.id, a.event_id INTO r_dup, v_copy_event FROM trapd_actions a
            WHERE a.copy_key = p_copy_key AND a.created >= p_now - p_copy_window
            AND a.event_id <> p_event_id ORDER BY a.id LIMIT 1;
        IF r_dup IS NOT NULL THEN
            r_state := 'cancelled';
            v_result := json_build_object('duplicate_of', r_dup, 'copy_of_event', v_copy_event)::text;
            v_error := 'copy of the notification journaled as ' || r_dup || ' (event ' || v_copy_event || ')';
        END IF;
    END IF;
    IF r_dup IS NULL AND p_once_within IS NOT NULL AND r_state IN ('pending', 'scheduled', 'done') THEN
        PERFORM pg_advisory_xact_lock(trapd_lock_id('once', p_once_key));
        SELECT a.id INTO r_dup FROM trapd_actions a
            WHERE a.once_key = p_once_key AND a.created >= p_now - p_once_within
            AND a.state NOT IN ('cancelled', 'dead') ORDER BY a.id LIMIT 1;
        IF r_dup IS NOT NULL THEN
            r_state := 'cancelled';
            v_result := json_build_object('duplicate_of', r_dup)::text;
            v_error := 'duplicate of ' || r_dup || p_once_note;
        END IF;
    END IF;
    IF p_claim AND r_state = 'pending' AND p_caps = '[]' AND p_due <= p_now THEN
        PERFORM pg_advisory_xact_lock(trapd_lock_id('key', p_key));
        v_claimed := NOT EXISTS (SELECT 1 FROM trapd_actions a WHERE a.key = p_key
            AND (a.state IN ('pending', 'failed', 'running') OR (a.state = 'scheduled' AND a.due <= p_now)));
        IF v_claimed THEN
            r_state := 'running';
        END IF;
    END IF;
    INSERT INTO trapd_actions (event_id, received_at, source, rule, action, idx, params, key, mode, state,
        max_attempts, backoff, max_age, age_from, created, due, finished, cancel_key, once_key, caps,
        mac, ip, item, result, last_error, attempts, started, owner, lease_until, copy_key, journaled_by)
    VALUES (p_event_id, p_received_at, p_source, p_rule, p_action, p_idx, p_params, p_key, p_mode, r_state,
        p_max_attempts, p_backoff, p_max_age, p_received_at, p_now, p_due,
        CASE WHEN r_state IN ('done', 'dead', 'cancelled') THEN p_now END, p_cancel_key, p_once_key, p_caps,
        p_mac, p_ip, p_item, v_result, v_error, CASE WHEN v_claimed THEN 1 ELSE 0 END,
        CASE WHEN v_claimed THEN p_now END, CASE WHEN v_claimed THEN p_owner END,
        CASE WHEN v_claimed THEN p_now + p_lease END, p_copy_key, p_owner)
    RETURNING id INTO r_id;
END
$$;
""",
    ),
    (
        10,
        # A late end: a host that lost its claims' lease (cut off from the database) but kept
        # running an action finishes it after the other host took the row over (held it as
        # "interrupted: may have taken effect", or ran it again). Its end changed nothing, and
        # was dropped without a word: an operator releasing the held row ran it a second time.
        # The end is now noted on the row (last_error: "HOST ran it to its end after the
        # takeover: done"), unless the row is already this owner's finished one (an end written
        # twice, its first answer lost), and trapd_run says so (true) for the host's log.
        """
CREATE OR REPLACE FUNCTION trapd_run(p_ops JSONB) RETURNS JSONB LANGUAGE plpgsql AS $$
DECLARE
    op JSONB;
    e JSONB;
    ev JSONB;
    r RECORD;
    added JSONB[];
    outs JSONB[] := '{}';
BEGIN
    FOR op IN SELECT x.value FROM jsonb_array_elements(p_ops) WITH ORDINALITY AS x(value, ord) ORDER BY x.ord
    LOOP
        IF op->>0 = 'c' THEN
            SELECT * INTO r FROM trapd_claim((op->>1)::bigint, (op->>2)::float8, op->>3, (op->>4)::float8);
            outs := array_append(outs, jsonb_build_array(r.r_outcome, r.r_cap, r.r_attempts, r.r_blocked_by));
        ELSIF op->>0 = 'f' THEN
            -- Only the owner's claim: a row taken over after this host lost its lease is the new owner's.
            UPDATE trapd_actions SET state = op->>2, finished = (op->>3)::float8, result = op->>4,
                last_error = COALESCE(op->>5, last_error), started = COALESCE((op->>6)::float8, started),
                lease_until = NULL
                WHERE id = (op->>1)::bigint AND state = 'running' AND owner = op->>7;
            IF FOUND THEN
                outs := array_append(outs, 'null'::jsonb);
            ELSE
                -- A late end (see migration 10): noted on the row, true returned.
                UPDATE trapd_actions SET last_error = left(COALESCE(last_error || '; ', '') || (op->>7)
                        || ' ran it to its end after the takeover: ' || (op->>2)
                        || COALESCE(' (' || (op->>5) || ')', ''), 4000)
                    WHERE id = (op->>1)::bigint
                    AND NOT (owner = op->>7 AND state IN ('done', 'dead', 'cancelled'));
                outs := array_append(outs, to_jsonb(FOUND));
            END IF;
        ELSIF op->>0 = 'a' THEN
            ev := op->1;
            IF jsonb_typeof(ev) = 'array' THEN
                INSERT INTO trapd_events (id, received_at, source, trap_name, data)
                    VALUES (ev->>0, (ev->>1)::float8, ev->>2, ev->>3, ev->>4) ON CONFLICT (id) DO NOTHING;
            END IF;
            added := '{}';
            FOR e IN SELECT x.value FROM jsonb_array_elements(op->2) WITH ORDINALITY AS x(value, ord)
                ORDER BY x.ord
            LOOP
                SELECT * INTO r FROM trapd_add_entry(e->>0, (e->>1)::float8, e->>2, e->>3, e->>4,
                    (e->>5)::integer, e->>6, e->>7, e->>8, e->>9, (e->>10)::integer, (e->>11)::float8,
                    (e->>12)::float8, (e->>13)::float8, (e->>14)::float8, e->>15, e->>16, (e->>17)::float8,
                    e->>18, e->>19, e->>20, e->>21, e->>22, e->>23, e->>24, (e->>25)::boolean, e->>26,
                    (e->>27)::float8, e->>28, (e->>29)::float8);
                added := array_append(added, jsonb_build_array(r.r_id, r.r_state, r.r_dup));
            END LOOP;
            outs := array_append(outs, to_jsonb(added));
        ELSIF op->>0 = 'n' THEN
            outs := array_append(outs, 'null'::jsonb);
        ELSE
            RAISE EXCEPTION 'trapd_run: unknown operation %', op->>0;
        END IF;
    END LOOP;
    RETURN to_jsonb(outs);
END
$$;
""",
    ),
)
SCHEMA_VERSION = MIGRATIONS[-1][0]
# The oldest schema whose trapd runs correctly on SCHEMA_VERSION's: every migration after it only
# adds (a nullable column, a function the older trapd does not call). `trapd journal migrate`
# records it (trapd_meta 'compatible'), so that a host still on the older trapd, in a pair
# upgraded one host at a time, starts again on the migrated schema (a crash, a reboot) instead
# of being refused until it is upgraded; and a refusal of an older schema says whether the other
# host keeps running once it is migrated. tests/test_upgrade.py runs the release of schema 8 on
# this one. A migration that an older trapd cannot run on (schema 3 renamed the advisory locks)
# moves this to its own version.
COMPATIBLE_SINCE = 8

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


class _OpFailed(Exception):
    """An operation raised inside an optimistic batch: run the batch again, one savepoint each."""


def _text(value: str | None) -> str | None:
    """A string for a text column: PostgreSQL refuses NUL, which a trap value can carry into a
    key, a cancel key or an error message. U+FFFD instead, the same on every host, so keys
    still match each other (SQLite stores NUL as it is)."""
    return value.replace("\x00", "\ufffd") if value is not None and "\x00" in value else value


def _lock_id(namespace: str, key: str) -> int:
    """The advisory lock of (namespace, key): a signed 64-bit number, the same on every host.

    The same as trapd_lock_id(namespace, key) in the database (migration 3), which the
    functions there lock by (tests/test_journal_postgres.py checks they agree).
    """
    digest = hashlib.sha256(f"{namespace}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


def _connection_or_conflict(conn: Conn, exc: BaseException) -> bool:
    """Whether a batch's error is the connection's, the database's (see :func:`_refuses_all`) or
    a lock conflict's, not one operation's.

    A pipeline that met an error fails every statement after it with PipelineAborted (an
    OperationalError, like a broken connection): that one is the operation's.
    """
    if conn.broken or conn.closed:
        return True
    if isinstance(exc, (pgerrors.PipelineAborted, pgerrors.QueryCanceled)):
        # QueryCanceled: a statement_timeout (or pg_cancel_backend) ended one statement; the
        # connection and the database are fine. Taken for an outage, one slow statement made
        # every write of the next reconnect's backoff fail at once.
        return False
    return isinstance(exc, (psycopg.OperationalError, psycopg.InterfaceError)) or _refuses_all(exc)


# SQLSTATEs of a database that refuses every operation for reasons of its own, not of one
# operation's values: read-only (a standby after a failover, or set so), trapd's privileges or
# tables gone, data corrupted. (Out of disk, shutting down and I/O errors are OperationalErrors,
# handled with the broken connections. Not 42883, no such function: a value out of its
# parameter's range gives it too.) Such an error used to be taken for the operation's: the
# journal said it was available while it could commit nothing.
_REFUSING = ("25006", "42501", "42P01", "XX")


def _refuses_all(exc: BaseException) -> bool:
    state = getattr(exc, "sqlstate", None)
    return isinstance(state, str) and state.startswith(_REFUSING)


def _dropped_while_idle(conn: Conn) -> bool:
    """Whether the server closed this idle connection (it restarted, or ended the session).

    Its farewell and the end of the stream then wait on the socket: found without a round
    trip, so the next batch goes to a new connection instead of failing. (A batch sent in one
    pipeline learns that its BEGIN failed only with the rest, too late to tell whether the
    rest ran: see _run_batch.) Anything else waiting (a notice) is consumed and harmless.
    """
    for _ in range(8):  # a read takes what has arrived: the farewell first, then the end
        readable, _, _ = select.select([conn.fileno()], [], [], 0)
        if not readable:
            break
        try:
            conn.pgconn.consume_input()
        except psycopg.OperationalError:
            return True
    return conn.pgconn.status != psycopg.pq.ConnStatus.OK


async def _send_run(conn: Conn, ops: list[_Op], run: str) -> Callable[[], Awaitable[list[Any]]]:
    """Send a run of the usual operations as one call of trapd_run (migration 4)."""
    cur = conn.cursor()
    await cur.execute("SELECT trapd_run(%s::jsonb)", (run,))

    async def collect() -> list[Any]:
        row = await cur.fetchone()
        assert row is not None and len(row[0]) == len(ops)
        return [_decoded(op, out) for op, out in zip(ops, row[0], strict=True)]

    return collect


def _one(collect: Collect) -> Callable[[], Awaitable[list[Any]]]:
    """One operation's result as a group's list of results."""

    async def results() -> list[Any]:
        return [await collect()]

    return results


# unnest yields in array order: the locks are taken in sorted order.
_PRELOCK = "SELECT pg_advisory_xact_lock(k) FROM unnest(%s::bigint[]) AS k"


def _batch_locks(batch: list[_Op]) -> list[int]:
    """The advisory locks the batch's adds take, sorted (see PostgresJournal._prelock)."""
    locks: set[tuple[str, str]] = set()
    for op in batch:
        if op.fn is _op_add:
            locks |= _add_locks(op.args)
    return sorted({_lock_id(ns, key) for ns, key in locks})


def _ready(result: Any) -> Collect:
    """An operation's result known already (it did not run in a pipeline)."""

    async def collect() -> Any:
        return result

    return collect


def _add_locks(args: tuple[Any, ...]) -> set[tuple[str, str]]:
    """The advisory locks (namespace, key) an _op_add with these arguments takes: its copy,
    once and claim keys, as trapd_add_entry names them (see _prelock)."""
    _event, entries, _cancels, _now, _owner, _lease, copy_window, fingerprint = args
    locks: set[tuple[str, str]] = set()
    for e in entries:
        if fingerprint is not None and copy_window > 0:
            locks.add(("copy", _copy_key(fingerprint, e)))
        if e.once_key and e.once_within:
            locks.add(("once", _text(e.once_key) or ""))
        if e.claim:
            locks.add(("key", _text(e.key) or ""))
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


async def compatible_since(conn: Conn) -> int | None:
    """The oldest schema whose trapd runs on the database's (see :data:`COMPATIBLE_SINCE`); None
    when the migration that made it did not say (a trapd older than this mark)."""
    cur = await conn.execute("SELECT v FROM trapd_meta WHERE k = 'compatible'")
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
        return await _migrate_on(conn)
    except psycopg.errors.InsufficientPrivilege as exc:
        info = conn.info
        raise JournalError(
            f"migration failed, nothing changed: {_one_line(exc)} (the role {info.user} creates trapd's "
            f"tables: make it the owner of the database {info.dbname}, or GRANT CREATE ON SCHEMA public "
            f"TO {info.user})"
        ) from exc
    except psycopg.Error as exc:
        raise JournalError(f"migration failed, nothing changed: {_one_line(exc)}") from exc
    finally:
        await conn.close()


async def _migrate_on(conn: Conn) -> tuple[int | None, int]:
    """:func:`migrate`'s transaction on ``conn``."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended('trapd schema', 0))")
        before = await schema_version(conn)
        if before is not None and before > SCHEMA_VERSION:
            raise JournalError(_newer(before))
        if before is None:
            await conn.execute("CREATE TABLE IF NOT EXISTS trapd_meta (k TEXT PRIMARY KEY, v TEXT NOT NULL)")
        for version, sql in MIGRATIONS:
            if before is None or version > before:
                await conn.execute(sql.encode())
        for k, v in (("schema", SCHEMA_VERSION), ("compatible", COMPATIBLE_SINCE)):
            await conn.execute(
                "INSERT INTO trapd_meta (k, v) VALUES (%s, %s) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
                (k, str(v)),
            )
    return before, SCHEMA_VERSION


def _newer(found: int) -> str:
    return (
        f"the journal database has trapd schema {found}, newer than this trapd knows "
        f"({SCHEMA_VERSION}): upgrade trapd"
    )


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


# ---------------------------------------------------------------- operations (one transaction each batch)


# A pipelined operation sends its statements, each on a cursor of its own, without waiting for
# their results, and returns how to read its result: the writer calls that once the pipeline
# has synced (see PostgresJournal._transaction). Sent outside a pipeline (a batch run again
# one savepoint per operation), each statement waits for its result as usual.
Collect = Callable[[], Awaitable[Any]]


async def _nothing() -> None:
    return None


_ADD_ENTRY = f"SELECT r_id, r_state, r_dup FROM trapd_add_entry({', '.join(['%s'] * 30)})"
# The event's row with its first entry: one statement less per add (the function does not
# read trapd_events).
_EVENT_AND_ENTRY = (
    "WITH e AS (INSERT INTO trapd_events (id, received_at, source, trap_name, data) "
    "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING) " + _ADD_ENTRY
)
# The cancels of an event and (when one was cancelled, or it plans actions) the event's row.
_CANCEL = (
    f"WITH c AS (UPDATE {_A} SET state = 'cancelled', finished = %(now)s, result = %(result)s, "
    "last_error = 'cancelled by event ' || %(event_id)s || ' (cancel key ' || cancel_key || ')' "
    f"WHERE cancel_key = ANY(%(keys)s::text[]) AND state IN {_ACTIVE_SQL} RETURNING id, action, cancel_key)"
)
_CANCEL_EVENT = (
    ", e AS (INSERT INTO trapd_events (id, received_at, source, trap_name, data) "
    "SELECT %(event_id)s, %(received_at)s, %(source)s, %(trap_name)s, %(data)s "
    "WHERE %(planned)s OR EXISTS (SELECT 1 FROM c) ON CONFLICT (id) DO NOTHING)"
)
_CANCEL_RESULT = " SELECT id, action FROM c ORDER BY array_position(%(keys)s::text[], cancel_key), id"


async def _op_add(
    conn: Conn,
    event: Mapping[str, Any] | None,
    entries: Sequence[NewEntry],
    cancel_keys: Sequence[str],
    now: float,
    owner: str,
    lease: float,
    copy_window: float,
    fingerprint: str | None,
) -> Collect:
    """Cancel by the event's cancel keys, journal its event and entries: one statement for the
    cancels and the event, one (trapd_add_entry) per entry, in that order."""
    event_id = str(event["id"]) if event else ""
    if copy_window <= 0:
        fingerprint = None
    received_at = float(event["received_at"]) if event else now
    source = str(event["source"]) if event else ""
    event_row = (
        (event_id, received_at, source, str(event.get("trap_name", "")), stored_event(event))
        if event is not None
        else None
    )
    cancels: Cur | None = None
    if cancel_keys:
        keys = [_text(ck) or "" for ck in cancel_keys]
        params: dict[str, Any] = {
            "now": now, "result": dumps({"cancelled_by": event_id}), "event_id": event_id, "keys": keys,
        }  # fmt: skip
        sql = _CANCEL
        if event_row is not None:
            sql += _CANCEL_EVENT
            params.update(
                received_at=event_row[1], source=event_row[2], trap_name=event_row[3], data=event_row[4],
                planned=bool(entries),
            )  # fmt: skip
        cancels = conn.cursor()
        await cancels.execute(sql + _CANCEL_RESULT, params)
    # Unless the cancels' statement journaled the event, the first entry's does.
    with_event = event_row if cancels is None else None
    inserts: list[Cur] = []
    for e in entries:
        cur = conn.cursor()
        await cur.execute(
            _ADD_ENTRY if with_event is None else _EVENT_AND_ENTRY,
            (
                *(with_event or ()),
                *_entry_args(e, event_id, received_at, source, now, owner, lease, copy_window, fingerprint),
            ),
        )
        with_event = None
        inserts.append(cur)

    async def collect() -> AddResult:
        cancelled: list[int] = []
        cancelled_actions: list[str] = []
        if cancels is not None:
            for id_, action_name in await cancels.fetchall():
                cancelled.append(int(id_))
                cancelled_actions.append(action_name)
        ids: list[int] = []
        states: list[State] = []
        dups: list[int | None] = []
        for cur in inserts:
            row = await cur.fetchone()
            assert row is not None
            ids.append(int(row[0]))
            states.append(row[1])
            dups.append(int(row[2]) if row[2] is not None else None)
        return AddResult(ids, states, dups, cancelled, cancelled_actions)

    return collect


def _entry_args(
    e: NewEntry,
    event_id: str,
    received_at: float,
    source: str,
    now: float,
    owner: str,
    lease: float,
    copy_window: float,
    fingerprint: str | None,
) -> tuple[Any, ...]:
    """trapd_add_entry's arguments for ``e``, in its order."""
    once = bool(e.once_key and e.once_within)
    return (
        event_id,
        received_at,
        source,
        e.rule,
        e.action,
        e.index,
        dumps(e.params),
        _text(e.key),
        e.mode,
        e.state,
        e.max_attempts,
        e.backoff,
        e.max_age,
        now,
        e.due,
        _text(e.cancel_key),
        _text(e.once_key),
        e.once_within if once else None,
        _text(f" (once-within {e.once_within:g}s, key {e.once_key})") if once else None,
        dumps([c.to_json() for c in e.caps]) if e.caps else "[]",
        e.mac,
        e.ip,
        dumps(e.item) if e.item is not None else None,
        dumps(e.result) if e.result is not None else None,
        _text(e.last_error),
        e.claim,
        owner,
        lease,
        _copy_key(fingerprint, e) if fingerprint is not None else None,
        copy_window,
    )


def _copy_key(fingerprint: str, e: NewEntry) -> str:
    """One planned action of one notification: the same on both hosts for the same rule entry.

    What identifies the action is the rule, the entry as written (``definition``; its place
    in the rule only where the planner gave none), the mode, the HA peer of a per-peer part and
    the foreach item. Not the place alone: a host that has reloaded a version with an action
    inserted before another would take its new action for a copy of the other host's old one;
    not without the mode: an enforced action is no copy of the other host's dry-run.
    """
    item = dumps(e.item) if e.item is not None else ""
    what = e.definition or str(e.index)
    peer = f"{e.params.get('endpoint')}/{e.params['peer']}" if e.params.get("peer") is not None else ""
    text = f"{fingerprint}\x1f{e.rule}\x1f{what}\x1f{e.mode}\x1f{peer}\x1f{item}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _owned(owner: str | None, instance: str) -> tuple[str, tuple[Any, ...]]:
    """Which running rows are ours to recover: one owner's, or (None) this host's and its workers'."""
    if owner is not None:
        return "owner = %s", (owner,)
    return "(owner = %s OR owner LIKE %s OR owner IS NULL)", (instance, _workers_of(instance))


def _workers_of(instance: str) -> str:
    """A LIKE pattern for the names of ``instance``'s workers (``INSTANCE/worker-N``)."""
    # LIKE's wildcards in the name are taken literally (backslash is LIKE's default escape).
    return instance.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_") + "/%"


async def _put_back(
    cur: Cur,
    now: float,
    hold_unless: frozenset[str] | None,
    where: str,
    args: tuple[Any, ...],
    why: str,
    owners: set[str] | None = None,
) -> tuple[int, int]:
    """Running rows matching ``where`` go back in line (or are held): (rerun, held).

    ``owners``: filled with the names whose claims they were."""
    returning = " RETURNING owner" if owners is not None else ""
    held = 0
    if hold_unless is not None:
        names = sorted(hold_unless) or [""]
        await cur.execute(
            f"UPDATE {_A} SET state = 'held', held_by = 'interrupted', due = %s, lease_until = NULL, "
            f"last_error = 'interrupted while running; it may have taken effect: release it to run it again' "
            f"WHERE state = 'running' AND NOT (action = ANY(%s)) AND {where}{returning}",
            (now + INTERRUPTED_HOLD_FOR, names, *args),
        )
        held = cur.rowcount
        if owners is not None:
            owners.update(str(r[0]) for r in await cur.fetchall())
    await cur.execute(
        f"UPDATE {_A} SET state = 'pending', due = LEAST(due, %s), lease_until = NULL, "
        f"last_error = COALESCE(last_error || '; ', '') || %s WHERE state = 'running' AND {where}{returning}",
        (now, why, *args),
    )
    rerun = cur.rowcount
    if owners is not None:
        owners.update(str(r[0]) for r in await cur.fetchall())
    return rerun, held


async def _op_recover(
    cur: Cur, now: float, hold_unless: frozenset[str] | None, owner: str | None, instance: str
) -> dict[str, int]:
    where, args = _owned(owner, instance)
    rerun, held = await _put_back(cur, now, hold_unless, where, args, "interrupted by a restart")
    await cur.execute(f"SELECT count(*) FROM {_A} WHERE state IN {_ACTIVE_SQL}")
    row = await cur.fetchone()
    return {"rerun": rerun, "held": held, "waiting": int(row[0]) if row else 0}


async def _op_register(
    cur: Cur, now: float, owner: str, instance: str, token: str, lease: float, view: str | None = None
) -> list[tuple[str, float]]:
    """Register ``owner`` as alive, unless a process of another token is alive under a name it
    would recover or renew as its own: its own name, the host's name (a lone trapd, or a
    supervisor recovering every worker's rows) or, for the host's name, a worker's. Returns
    those (name, last seen): empty when registered. ``view``: what the other hosts compare with
    their own (see PostgresJournal.share_view), kept under the host's name."""
    await cur.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_id("instance", instance),))
    live = await _namesakes(cur, now, owner, instance, token)
    if not live:
        await _take_name(cur, now, owner, token, lease)
        if view is not None:
            await _publish_view(cur, instance, view)
    return live


async def _publish_view(cur: Cur, instance: str, view: str) -> None:
    await cur.execute(
        "INSERT INTO trapd_meta (k, v) VALUES (%s, %s) ON CONFLICT (k) DO UPDATE SET v = EXCLUDED.v",
        (_VIEW + instance, view),
    )


# trapd_meta's key of a host's view (PostgresJournal.share_view): a row per host, not per worker.
_VIEW = "view:"


async def _op_views(cur: Cur, now: float, instance: str) -> dict[str, str]:
    """The views of the other hosts that have a live process on the journal, by host name."""
    await cur.execute(
        "SELECT DISTINCT split_part(i.owner, '/', 1), m.v FROM trapd_instances i "
        "JOIN trapd_meta m ON m.k = %s || split_part(i.owner, '/', 1) "
        "WHERE i.seen + i.lease >= %s AND split_part(i.owner, '/', 1) <> %s",
        (_VIEW, now, instance),
    )
    return {str(r[0]): str(r[1]) for r in await cur.fetchall()}


async def _namesakes(cur: Cur, now: float, owner: str, instance: str, token: str) -> list[tuple[str, float]]:
    """The live processes of another token under a name ``owner`` would recover or renew as its
    own (see _op_register): (name, last seen)."""
    await cur.execute(
        "SELECT owner, seen FROM trapd_instances WHERE token <> %s AND seen + lease >= %s "
        "AND (owner = %s OR owner = %s OR (%s AND owner LIKE %s)) ORDER BY owner",
        (token, now, owner, instance, owner == instance, _workers_of(instance)),
    )
    return [(str(r[0]), float(r[1])) for r in await cur.fetchall()]


async def _take_name(cur: Cur, now: float, owner: str, token: str, lease: float) -> None:
    await cur.execute(
        "INSERT INTO trapd_instances (owner, token, seen, lease) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (owner) DO UPDATE SET token = EXCLUDED.token, seen = EXCLUDED.seen, "
        "lease = EXCLUDED.lease",
        (owner, token, now, lease),
    )


async def _op_unregister(cur: Cur, owner: str, token: str) -> None:
    await cur.execute("DELETE FROM trapd_instances WHERE owner = %s AND token = %s", (owner, token))


async def _reclaim_name(cur: Cur, now: float, owner: str, instance: str, token: str, lease: float) -> bool:
    """This process's registration is gone: another process took the name while this one's
    renewals were away for a lease (paused, partitioned), so the start-up check let it in.
    Register again, so that the other process finds its own registration gone at its next
    renewal and says so too, and a third start under the name is refused. Whether another
    process held it (False: the row was just gone, e.g. removed by hand)."""
    await cur.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_id("instance", instance),))
    await cur.execute("SELECT 1 FROM trapd_instances WHERE owner = %s AND token <> %s", (owner, token))
    held = await cur.fetchone() is not None
    await _take_name(cur, now, owner, token, lease)
    return held


async def _op_renew(
    cur: Cur,
    now: float,
    owner: str,
    lease: float,
    hold_unless: frozenset[str] | None,
    take_over: bool,
    token: str | None = None,
    holding: Sequence[int] = (),
    claimed_since: float | None = None,
    instance: str | None = None,
) -> tuple[Takeover | None, int, bool]:
    """Renew the leases of the claims this owner holds, put back its claims it does not hold,
    then take over rows whose owner stopped renewing: (what was taken over, how many put back,
    whether another process held this owner's registration, see _reclaim_name, or another live
    process renews under a name this one would recover or renew as its own, see _namesakes).

    ``token``: registered (see _op_register), its registration is renewed too; ``instance``: the
    host's name (``owner`` without a worker's part), whose lock _op_register takes.
    ``holding``: the rows this journal told its caller it claimed and whose end has not
    committed; ``claimed_since``: rows this owner claimed since then may be claims whose answer
    is still on its way, and are renewed too. Any other row running under this owner's name is
    a claim that committed while trapd was told it failed (the connection broke before the
    answer was read): it never started, so it goes back in line as if never claimed (None: none
    is put back, as for ``trapd journal``, which runs nothing).

    Run beside the writer (see PostgresJournal._renew): SKIP LOCKED leaves the rows its open
    batch holds (it is finishing or claiming them right now) rather than wait for them, which
    could deadlock with it.
    """
    ids = list(holding)
    since = claimed_since if claimed_since is not None else float("inf")
    await cur.execute(
        f"UPDATE {_A} SET lease_until = %s WHERE id IN (SELECT id FROM {_A} WHERE state = 'running' "
        "AND owner = %s AND (id = ANY(%s) OR started >= %s) FOR UPDATE SKIP LOCKED)",
        (now + lease, owner, ids, since),
    )
    namesake = False
    if token is not None:  # registered (see _op_register): still alive
        await cur.execute(
            "UPDATE trapd_instances SET seen = %s, lease = %s WHERE owner = %s AND token = %s",
            (now, lease, owner, token),
        )
        if cur.rowcount == 0:
            namesake = await _reclaim_name(cur, now, owner, instance or owner, token, lease)
        namesake = namesake or bool(await _namesakes(cur, now, owner, instance or owner, token))
    put_back = 0
    if claimed_since is not None:
        await cur.execute(
            f"UPDATE {_A} SET state = 'pending', attempts = GREATEST(0, attempts - 1), started = NULL, "
            "lease_until = NULL, last_error = COALESCE(last_error || '; ', '') || %s "
            f"WHERE id IN (SELECT id FROM {_A} WHERE state = 'running' AND owner = %s "
            "AND NOT (id = ANY(%s)) AND (started IS NULL OR started < %s) FOR UPDATE SKIP LOCKED)",
            (_UNCONFIRMED, owner, ids, since),
        )
        put_back = cur.rowcount
    if not take_over:
        return None, put_back, namesake
    # SKIP LOCKED: a row another host is finishing right now is not ours to judge.
    where = (
        f"id IN (SELECT id FROM {_A} WHERE state = 'running' AND lease_until < %s "
        "AND owner IS DISTINCT FROM %s FOR UPDATE SKIP LOCKED)"
    )
    owners: set[str] = set()
    why = f"taken over by {owner}: the claim's lease expired"
    rerun, held = await _put_back(cur, now, hold_unless, where, (now, owner), why, owners)
    return (Takeover(rerun, held, tuple(sorted(owners))) if rerun or held else None), put_back, namesake


_UNCONFIRMED = (
    "put back: its claim committed but was not confirmed to trapd (the connection broke first), "
    "so it never started"
)


async def _op_due(
    cur: Cur, now: float, limit: int, skip: frozenset[int]
) -> tuple[list[Entry], bool, list[tuple[int, str]]]:
    """The due entries, whether there may be more, and (id, problem) of due rows whose JSON cannot
    be decoded (text columns: a row altered by hand, cut short; the caller sets them aside).
    PostgreSQL's UTF8 database refuses text that is not UTF-8, so that damage cannot be stored."""
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
        return [], more, []
    await cur.execute(
        f"SELECT {ACOLS}, e.data FROM {_A} a LEFT JOIN trapd_events e ON e.id = a.event_id "
        "WHERE a.id = ANY(%s) ORDER BY a.id",
        (ids,),
    )
    entries, bad = decode_due(await cur.fetchall())
    return entries, more, bad


async def _op_set_aside(cur: Cur, bad: Sequence[tuple[int, str]], now: float) -> list[Unreadable]:
    """Due rows that cannot be read back: dead (never run), and what of them can still be read."""
    out: list[Unreadable] = []
    for id_, problem in bad:
        await cur.execute(
            f"UPDATE {_A} SET state = 'dead', finished = %s, last_error = %s "
            f"WHERE id = %s AND state IN {_ACTIVE_SQL} RETURNING {', '.join(SUMMARY_COLS)}",
            (now, set_aside_error(problem), id_),
        )
        summary = await cur.fetchone()
        if summary is not None:  # None: another host set it aside first
            out.append(unreadable(id_, problem, summary))
    return out


async def _op_next_due(cur: Cur, now: float) -> float | None:
    await cur.execute(
        f"SELECT min(due) FROM {_A} WHERE state IN ('scheduled', 'failed', 'pending') AND due > %s", (now,)
    )
    row = await cur.fetchone()
    return float(row[0]) if row and row[0] is not None else None


async def _op_claim(conn: Conn, id_: int, now: float, owner: str, lease: float) -> Collect:
    """Lock the row's key, check order and caps, mark it running: all in trapd_claim (migration 3)."""
    cur = conn.cursor()
    await cur.execute(
        "SELECT r_outcome, r_cap, r_attempts, r_blocked_by FROM trapd_claim(%s, %s, %s, %s)",
        (id_, now, owner, lease),
    )

    async def collect() -> ClaimResult:
        row = await cur.fetchone()
        assert row is not None
        outcome, cap, attempts, blocked_by = row
        return ClaimResult(outcome, cap, int(attempts), blocked_by)

    return collect


async def _op_finish(
    conn: Conn,
    id_: int,
    state: str,
    now: float,
    result: Any,
    error: str | None,
    started: float | None,
    owner: str,
) -> Collect:
    # Only the owner's claim: a row taken over after this host lost its lease is the new owner's.
    # A late end is noted on the row instead (as trapd_run's does, migration 10): True.
    cur = conn.cursor()
    await cur.execute(
        f"WITH f AS (UPDATE {_A} SET state = %s, finished = %s, result = %s, "
        "last_error = COALESCE(%s, last_error), started = COALESCE(%s, started), lease_until = NULL "
        "WHERE id = %s AND state = 'running' AND owner = %s RETURNING id) "
        f"UPDATE {_A} SET last_error = left(COALESCE(last_error || '; ', '') || %s, 4000) "
        "WHERE id = %s AND NOT EXISTS (SELECT 1 FROM f) "
        "AND NOT (owner = %s AND state IN ('done', 'dead', 'cancelled')) RETURNING id",
        (
            state, now, dumps_result(result) if result is not None else None, _text(error), started,
            id_, owner, _late_note(owner, state, error), id_, owner,
        ),
    )  # fmt: skip

    async def collect() -> bool:
        return await cur.fetchone() is not None

    return collect


def _late_note(owner: str, state: str, error: str | None) -> str:
    """What a late end adds to the row's last_error (the same words as trapd_run's, migration 10)."""
    return f"{owner}{LATE_END}{state}" + (f" ({_text(error)})" if error else "")


async def _op_unclaim(conn: Conn, ids: Sequence[int], owner: str) -> Collect:
    if not ids:
        return _nothing
    cur = conn.cursor()
    await cur.execute(
        f"UPDATE {_A} SET state = 'pending', attempts = GREATEST(0, attempts - 1), started = NULL, "
        "lease_until = NULL WHERE id = ANY(%s) AND state = 'running' AND owner = %s RETURNING id",
        (list(ids), owner),
    )

    async def collect() -> int:
        return len(await cur.fetchall())

    return collect


async def _op_retry_later(
    conn: Conn, id_: int, due: float, error: str, endpoint: str | None, owner: str
) -> Collect:
    await conn.cursor().execute(
        f"UPDATE {_A} SET state = 'failed', due = %s, last_error = %s, endpoint = COALESCE(%s, endpoint), "
        "lease_until = NULL WHERE id = %s AND state = 'running' AND owner = %s",
        (due, _text(error), endpoint, id_, owner),
    )
    return _nothing


async def _op_note(conn: Conn, id_: int, result: Any, owner: str) -> Collect:
    await conn.cursor().execute(
        f"UPDATE {_A} SET result = %s WHERE id = %s AND state = 'running' AND owner = %s",
        (dumps_result(result), id_, owner),
    )
    return _nothing


async def _op_defer(conn: Conn, id_: int, due: float, reason: str, endpoint: str | None) -> Collect:
    await conn.cursor().execute(
        f"UPDATE {_A} SET due = %s, last_error = %s, endpoint = COALESCE(%s, endpoint) "
        f"WHERE id = %s AND state IN {_ACTIVE_SQL}",
        (due, _text(reason), endpoint, id_),
    )
    return _nothing


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
    # What an attempt recorded (ActionContext.record) stays, for the rerun (ctx.previous) and for
    # `trapd kea restore`: a dead kea.lease-del whose lease Kea deleted keeps it restorable. A
    # cancelled row's result says why it was cancelled (a copy, a clearing trap): not kept.
    if not ids:
        return []
    await cur.execute(
        f"UPDATE {_A} SET state = 'pending', due = %s, attempts = 0, age_from = %s, finished = NULL, "
        "result = CASE WHEN state = 'cancelled' THEN NULL ELSE result END, "
        "held_by = NULL, cap_exempt = TRUE, last_error = 'retried by an operator; was: ' || "
        "COALESCE(last_error, state) WHERE id = ANY(%s) AND state IN ('dead','failed','held','cancelled') "
        "RETURNING id",
        (now, now, list(ids)),
    )
    return sorted(r[0] for r in await cur.fetchall())


async def _op_unreadable_rows(cur: Cur, ids: Sequence[int]) -> dict[int, str]:
    if not ids:
        return {}
    await cur.execute(
        f"SELECT {ACOLS}, e.data FROM {_A} a LEFT JOIN trapd_events e ON e.id = a.event_id "
        "WHERE a.id = ANY(%s) ORDER BY a.id",
        (list(ids),),
    )
    _, bad = decode_due(await cur.fetchall())
    return dict(bad)


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


async def _op_expire_held(cur: Cur, now: float) -> tuple[list[Entry], list[Unreadable]]:
    """Held actions whose hold ran out: dead, returned as they were (held); those whose JSON
    cannot be decoded are set aside instead (one such row failed every poll's expiry)."""
    # One host expires a row: the other sees it dead (SKIP LOCKED, then the UPDATE's own check).
    await cur.execute(
        f"UPDATE {_A} SET state = 'dead', finished = %s, "
        "last_error = 'held by ' || COALESCE(held_by, 'a cap') || ', not released before it expired' "
        f"WHERE id IN (SELECT id FROM {_A} WHERE state = 'held' AND due <= %s FOR UPDATE SKIP LOCKED) "
        f"RETURNING {COLS}, NULL",
        (now, now),
    )
    entries, bad = decode_due(await cur.fetchall())
    for e in entries:  # as they were before: held, and why
        e.state = "held"
    aside: list[Unreadable] = []
    for id_, problem in bad:  # dead already, by this statement: why, and what is left of them
        await cur.execute(
            f"UPDATE {_A} SET last_error = %s WHERE id = %s RETURNING {', '.join(SUMMARY_COLS)}",
            (set_aside_error(problem), id_),
        )
        summary = await cur.fetchone()
        aside.append(unreadable(id_, problem, summary))
    return sorted(entries, key=lambda e: e.id), aside


async def _op_get(cur: Cur, id_: int, with_event: bool, lenient: bool = False) -> Entry | None:
    await cur.execute(
        f"SELECT {ACOLS}, e.data FROM {_A} a LEFT JOIN trapd_events e ON e.id = a.event_id WHERE a.id = %s",
        (id_,),
    )
    row = await cur.fetchone()
    if row is None:
        return None
    return (entry_read_leniently if lenient else _entry)(row, row[NCOLS] if with_event else None)


async def _op_history(cur: Cur, f: HistoryFilter, lenient: bool = False) -> list[Entry]:
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
    if f.host is not None:  # journaled it or claimed it (model.HistoryFilter)
        where.append(
            "(owner = %s OR left(owner, %s) = %s OR journaled_by = %s OR left(journaled_by, %s) = %s)"
        )
        args += [f.host, len(f.host) + 1, f.host + "/"] * 2
    sql = f"SELECT {COLS} FROM {_A}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY id DESC LIMIT %s"
    args.append(f.limit)
    await cur.execute(sql, args)
    return [(entry_read_leniently if lenient else _entry)(r) for r in await cur.fetchall()]


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


async def _op_prune(cur: Cur, before: float, now: float, limit: int = PRUNE_CHUNK) -> int:
    """One transaction of a prune (see the SQLite journal's): up to ``limit`` actions finished
    before ``before``, found by ``created``, and their events. Rows the other host is pruning at
    the same moment are skipped, not waited for."""
    await cur.execute(
        f"DELETE FROM {_A} WHERE id IN (SELECT id FROM {_A} WHERE created < %s AND finished < %s "
        "AND state IN ('done','dead','cancelled') LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING event_id",
        (before, before, limit),
    )
    events = [e for (e,) in await cur.fetchall()]
    if events:
        await cur.execute(
            f"DELETE FROM trapd_events e WHERE e.id = ANY(%s) AND NOT EXISTS "
            f"(SELECT 1 FROM {_A} a WHERE a.event_id = e.id)",
            (list(dict.fromkeys(events)),),
        )
    if len(events) < limit:
        # Events no action refers to (a trap that only cancelled), as old as what is pruned.
        await cur.execute(
            f"DELETE FROM trapd_events e WHERE e.received_at < %s AND NOT EXISTS "
            f"(SELECT 1 FROM {_A} a WHERE a.event_id = e.id)",
            (before,),
        )
        await cur.execute("DELETE FROM trapd_cap_slots WHERE expires < %s", (now,))
    return len(events)


async def _op_noop(conn: Conn) -> Collect:
    return _nothing


# Operations sent in the batch's pipeline (the others, rare, are run one statement at a time).
_PIPELINED = frozenset(
    {_op_add, _op_claim, _op_finish, _op_unclaim, _op_retry_later, _op_defer, _op_note, _op_noop}
)


def _encoded(op: _Op) -> list[Any] | None:
    """``op`` as an element of trapd_run's array (migration 4), or None: it runs as statements.

    The usual operations only: adds without cancel keys, claims, finishes.
    """
    if op.fn is _op_claim:
        return ["c", *op.args]
    if op.fn is _op_finish:
        id_, state, now, result, error, started, owner = op.args
        return [
            "f",
            id_,
            state,
            now,
            None if result is None else dumps_result(result),
            _text(error),
            started,
            owner,
        ]
    if op.fn is _op_add:
        event, entries, cancel_keys, now, owner, lease, copy_window, fingerprint = op.args
        if cancel_keys:
            return None
        if copy_window <= 0:
            fingerprint = None
        event_id = str(event["id"]) if event else ""
        received_at = float(event["received_at"]) if event else now
        source = str(event["source"]) if event else ""
        event_row = None
        if event is not None and entries:
            event_row = [event_id, received_at, source, str(event.get("trap_name", "")), stored_event(event)]
        args = [
            _entry_args(e, event_id, received_at, source, now, owner, lease, copy_window, fingerprint)
            for e in entries
        ]
        return ["a", event_row, args]
    if op.fn is _op_noop:
        return ["n"]
    return None


def _json_op(op: _Op) -> str | None:
    """``op`` as JSON for trapd_run, or None: it runs as statements (it is not one of the usual
    operations, or a value of it has no JSON form, such as an infinite float)."""
    try:
        encoded = _encoded(op)
        return None if encoded is None else json.dumps(encoded, separators=(",", ":"), allow_nan=False)
    except Exception:  # it cannot be encoded: as a statement it fails alone (_OpFailed)
        return None


def _groups(batch: list[_Op]) -> list[tuple[list[_Op], str | None]]:
    """The batch in order: each run of operations trapd_run can take as one group with its
    argument, each other operation alone (None)."""
    groups: list[tuple[list[_Op], str | None]] = []
    run: list[_Op] = []
    parts: list[str] = []
    for op in batch:
        if (part := _json_op(op)) is not None:
            run.append(op)
            parts.append(part)
            continue
        if run:
            groups.append((run, "[" + ",".join(parts) + "]"))
            run, parts = [], []
        groups.append(([op], None))
    if run:
        groups.append((run, "[" + ",".join(parts) + "]"))
    return groups


def _decoded(op: _Op, out: Any) -> Any:
    """What trapd_run returned for ``op`` as its operation returns it."""
    if op.fn is _op_claim:
        outcome, cap, attempts, blocked_by = out
        return ClaimResult(outcome, cap, int(attempts), blocked_by)
    if op.fn is _op_add:
        return AddResult(
            [int(r[0]) for r in out], [r[1] for r in out], [None if r[2] is None else int(r[2]) for r in out]
        )
    if op.fn is _op_finish:
        return out is True  # a late end, noted on the row
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


def _network_timeouts(conninfo: str, lease: float) -> str:
    """``conninfo`` with TCP keepalives and a TCP user timeout of a third of ``lease`` (at most
    10 s), unless it sets them itself.

    A host cut off from the database by the network (a partition: its packets dropped, no reset)
    kept its open connections, and a statement sent on one waited for an answer until the
    kernel gave up retransmitting (about 15 minutes): /healthz said ok, STATUS nothing, the
    lease renewal hung, while the other host took this one's claims over. With these the
    connection fails once its data goes unacknowledged that long (an idle one: its keepalives),
    so the journal says it is unavailable within about a renewal interval, and reconnects when
    the network is back. libpq ignores them on a unix socket, which no network can cut.
    """
    params = psycopg.conninfo.conninfo_to_dict(conninfo)
    bound = max(1, int(min(lease / 3, 10.0)))
    defaults = {
        "keepalives": "1",
        "keepalives_idle": str(bound),
        "keepalives_interval": str(bound),
        "keepalives_count": "3",
        "tcp_user_timeout": str(bound * 1000),  # milliseconds
    }
    extra = {k: v for k, v in defaults.items() if k not in params}
    return psycopg.conninfo.make_conninfo(conninfo, **extra) if extra else conninfo


def _session_settings(lease: float) -> str:
    """What each of trapd's sessions asks of the server: end a transaction its client leaves
    idle for half a ``lease`` (5 to 15 s: a host whose loop stalls a moment under load must not
    lose its transactions), and probe an idle client's TCP connection every third of the lease
    (at most 10 s).

    A host that stops in the middle of a transaction (power lost, the network cut: no FIN, no
    reset; its lease renewal takes a few round trips in one) left its session idle in that
    transaction, holding its running rows' locks, until the server noticed the client was
    gone: its TCP keepalives, after 2 hours by default. The other host's takeover skips locked
    rows, so it took nothing over (and the later actions of those keys waited) for as long.
    With these the server ends the transaction about when the rows' leases run out. Both
    are ordinary session settings (no privilege); on a unix socket the keepalives are ignored.
    """
    idle_ms = int(max(5.0, min(lease / 2, 15.0)) * 1000)
    probe = max(1, int(min(lease / 3, 10.0)))
    return (
        f"SET idle_in_transaction_session_timeout = {idle_ms}; SET tcp_keepalives_idle = {probe}; "
        f"SET tcp_keepalives_interval = {probe}; SET tcp_keepalives_count = 3"
    )


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
        token: str | None = None,
    ) -> None:
        """``conninfo``: a libpq URL or key/value string, password included (see :func:`open_journal`).

        ``instance``: this host's name in claims (default: the host name); ``owner``: a
        worker's name under it (``service.workers``), recorded as ``INSTANCE/OWNER``.
        ``lease``: seconds a claim holds without renewal before another host may take it over.
        ``token``: this process's registration token (default: a new one); a restarted worker
        gets its dead predecessor's (see open_journal).
        """
        self.conninfo = _network_timeouts(conninfo, lease)
        self.instance = instance or socket.gethostname()
        self._owner = f"{self.instance}/{owner}" if owner else self.instance
        self.max_batch = max_batch
        self.max_queued = max_queued
        self.lease = lease
        self.copy_window = copy_window
        self.connect_timeout = connect_timeout
        self._token = token or uuid.uuid4().hex  # its registration; NOTIFY payload: its own are not wake-ups
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
        self._registered = False  # this process's name is in trapd_instances (see recover)
        # When a renewal last found another process registered under this process's name
        # (see _reclaim_name), on the database's clock.
        self._namesake: float | None = None
        self._view: str | None = None  # see share_view; published at registration
        self._notices: list[JournalNotice] = []  # for the dispatcher's log (see notices)
        self._view_published: str | None = None  # what the database has (a reload changes _view)
        self._other_views: dict[str, str] = {}  # the other hosts', as the last renewal read them
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
        self._unreadable: list[Unreadable] = []  # set aside by due(), not yet taken by set_aside()
        self.unreadable_count = 0  # since start
        # A row met that cannot be read back: unhealthy until restart (other rows reading fine
        # says nothing about how it came to be damaged).
        self.damage: str | None = None
        self.damage_since: float | None = None
        # `trapd journal list/show/history` (looking only): get() and history() return a row
        # whose JSON cannot be decoded as far as it can be read (rows.entry_read_leniently).
        self.lenient = False
        self._takeovers: list[Takeover] = []  # not handed out by take_overs() yet
        # Claims whose commit this journal never confirmed (the answer lost), put back in line.
        self.put_back = 0
        # The rows this journal told its caller it claimed (running, its to run) whose end has
        # not committed yet: the only claims whose leases it renews (see _op_renew).
        self._holding: set[int] = set()
        # Claims issued and not answered yet -> the time they claim at (the rows' ``started``).
        self._claims_in_flight: dict[asyncio.Future[Any], float] = {}
        self.commits = 0
        self.committed_ops = 0
        # The database's clock minus this host's (see now()), measured when the journal opens and
        # at every lease renewal.
        self.clock_offset = 0.0

    def now(self) -> float:
        """The database's clock: the hosts compare each other's leases, due times and windows, so
        all of them go by one clock. By their own, a host 5 s ahead took a claim of the other
        host over while it was still renewed (lease 3 s: run twice), and ran a delayed action
        armed by the other host 5 s early, before the clearing trap that would have cancelled it
        (tests/test_pair_ha.py)."""
        return time.time() + self.clock_offset

    async def _measure_clock(self, conn: Conn) -> None:
        """The database's clock against this host's: the reading is taken half-way through the round trip."""
        before = time.time()
        cur = await conn.execute("SELECT extract(epoch FROM clock_timestamp())::float8")
        row = await cur.fetchone()
        after = time.time()
        if row is not None and row[0] is not None:
            self.clock_offset = float(row[0]) - (before + after) / 2

    # -- lifecycle

    async def open(self) -> None:
        if self._writer_task is not None:
            return
        # One connection of our own first: the server's answer (no such database, password
        # refused, no server at that socket) is the error. Through the pool it was "pool
        # initialization incomplete after 5.0 sec", 5 s later, the reason only in the pool's
        # own log warnings.
        try:
            probe = await psycopg.AsyncConnection.connect(
                self.conninfo, autocommit=True, connect_timeout=max(1, int(self.connect_timeout))
            )
        except psycopg.Error as exc:
            raise JournalError(f"cannot connect to the journal database: {_one_line(exc)}") from exc
        try:
            found = await schema_version(probe)
            compatible = await compatible_since(probe) if found is not None else None
            await self._measure_clock(probe)
        except psycopg.Error as exc:
            raise JournalError(f"cannot open the journal database: {_one_line(exc)}") from exc
        finally:
            await probe.close()
        if found is None:
            raise JournalError("the journal database has no trapd schema: run `trapd journal migrate`")
        if found < SCHEMA_VERSION:
            other = (
                "on a pair, a host still running the older trapd keeps running on the migrated schema"
                if found >= COMPATIBLE_SINCE
                else f"on a pair, the trapd of schema {found} cannot run on the new schema: stop it first"
            )
            raise JournalError(
                f"the journal database has trapd schema {found}, older than this trapd ({SCHEMA_VERSION}): "
                f"run `trapd journal migrate` (once, from either host; {other}: docs/pair.md)"
            )
        if found > SCHEMA_VERSION:
            if compatible is None or compatible > SCHEMA_VERSION:
                raise JournalError(_newer(found))
            # A later trapd migrated it and says this one still runs on it: the rolling upgrade's
            # older host, restarted before its own upgrade.
            self._notices.append(
                JournalNotice(
                    "warning",
                    "the journal's schema is newer than this trapd's, which it declares compatible",
                    {
                        "schema": f"{found} (this trapd: {SCHEMA_VERSION}; compatible since {compatible})",
                        "hint": "another host runs a newer trapd: upgrade this one too (docs/pair.md)",
                    },
                )
            )
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
            configure=self._configure,
        )
        try:
            await pool.open(wait=True, timeout=max(self.connect_timeout, 5.0))
        except (psycopg.Error, PoolTimeout) as exc:
            await pool.close()
            raise JournalError(f"cannot open the journal database: {_one_line(exc)}") from exc
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

    async def _configure(self, conn: Conn) -> None:
        """Each pooled connection (the writer's, the lease renewal's): see _session_settings."""
        await conn.execute(_session_settings(self.lease))

    async def close(self) -> None:
        if self._writer_task is None:
            return
        if self._registered:  # the name is free at once for this host's next start
            with contextlib.suppress(Exception):
                await self._call(_op_unregister, self._owner, self._token)
            self._registered = False
        await cancel_and_wait(self._tasks)  # the lease loop can lose a cancel: see trapd.cancelling
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
        counts = JournalHealth(
            failed_writes=self.failed_ops,
            taken_over=self.taken_over,
            unreadable=self.unreadable_count,
            put_back=self.put_back,
        )
        if not self.available:
            problem = f"journal database unavailable: {self.last_error}"
            return replace(counts, available=False, problem=problem, since=self.unavailable_since)
        if self.damage is not None:
            return replace(counts, available=False, problem=self.damage, since=self.damage_since)
        return replace(counts, name_conflict=self._name_conflict())

    def _name_conflict(self) -> str | None:
        """What the last lease's renewals found: another live process under this one's name.

        While both run, each takes the name back at its renewal (_reclaim_name), so each finds
        the other at every renewal (a third of the lease); none for a whole lease: it is gone.
        """
        if self._namesake is None:
            return None
        if self.now() - self._namesake > self.lease:
            return None
        return (
            f"another trapd is running as {self._owner!r} on this journal: two processes under one name "
            "rerun each other's actions and never take over each other's"
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
            if not _dropped_while_idle(self._conn):
                return self._conn
            await self._drop_connection()  # the server restarted meanwhile: a new one, no failure
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
                if _refuses_all(exc):
                    # Every operation would fail alike: the journal is unavailable, as in an outage
                    # (a new connection at the next attempt may reach a server that takes writes).
                    await self._drop_connection()
                    self._lost(exc)
                    self.failed_ops += sum(op.weight for op in batch if op.write)
                    err = JournalError(f"journal database unavailable: {self.last_error}")
                    done = [(op, None, err) for op in batch]
                else:
                    done = [
                        (op, None, JournalError(f"journal commit failed: {_one_line(exc)}")) for op in batch
                    ]
            except Exception as exc:  # a defect: its callers are told, and the writer lives on
                done = [(op, None, JournalError(f"journal batch failed: {exc!r}")) for op in batch]
            else:
                # Available again once a write commits (a read proves little: a read-only database
                # answers it).
                if not self.available and any(op.write for op in batch):
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
        if isolate:
            async with conn.transaction(), conn.cursor() as cur:
                self._began = True  # BEGIN went through: from here a broken connection is ambiguous
                return await self._run_isolated(conn, cur, batch)
        groups = _groups(batch)
        if len(groups) == 1 and (run := groups[0][1]) is not None:
            return await self._run_as_one_statement(conn, batch, run)
        pending: list[tuple[list[_Op], Callable[[], Awaitable[list[Any]]]]] = []
        try:
            if all(ops[0].fn in _PIPELINED for ops, _ in groups):
                # Nothing that must read before it decides (an add with cancel keys, an unclaim...):
                # BEGIN, its statements and COMMIT in one round trip. BEGIN is not confirmed before
                # the rest is sent: a connection the server closed while it was idle is found
                # before (see _dropped_while_idle).
                async with conn.pipeline():
                    self._began = True  # from here a broken connection is ambiguous
                    async with conn.transaction():
                        await self._send(conn, None, batch, groups, pending)
            else:
                async with conn.transaction(), conn.cursor() as cur:
                    self._began = True
                    await self._send(conn, cur, batch, groups, pending)
        except Exception as exc:
            if _connection_or_conflict(conn, exc):
                raise
            raise _OpFailed from exc
        done: list[tuple[_Op, Any, BaseException | None]] = []
        for ops, collect in pending:
            done.extend((op, result, None) for op, result in zip(ops, await collect(), strict=True))
        return done

    async def _run_as_one_statement(
        self, conn: Conn, batch: list[_Op], run: str
    ) -> list[tuple[_Op, Any, BaseException | None]]:
        """The usual batch, wholly trapd_run's: one statement, trapd_run_batch (migration 6), which
        takes the batch's locks, runs it and sends its NOTIFY; alone on the autocommit connection
        it is its own transaction. One round trip, the parameters bound by the server.

        Measured (1,500 batches of three operations): BEGIN, locks, trapd_run, NOTIFY and COMMIT
        as statements in a psycopg pipeline cost 640-740 us of trapd's CPU a batch (psycopg's
        machinery per statement and per sync), as one query string 270 us (and the server
        parses and plans it each time). Nothing is confirmed before the whole is sent: a
        connection the server closed while it was idle is found before (see _dropped_while_idle).
        trapd_run_batch's NOTIFY goes to CHANNEL.
        """
        cur = conn.cursor()
        self._began = True  # from here a broken connection is ambiguous
        try:
            await cur.execute(
                "SELECT trapd_run_batch(%s::bigint[], %s::jsonb, %s)",
                (_batch_locks(batch), run, self._token if any(op.notify for op in batch) else None),
            )
            row = await cur.fetchone()
        except Exception as exc:
            if _connection_or_conflict(conn, exc):
                raise
            raise _OpFailed from exc
        assert row is not None and len(row[0]) == len(batch)
        return [(op, _decoded(op, out), None) for op, out in zip(batch, row[0], strict=True)]

    def _notify(self, batch: list[_Op]) -> tuple[str, tuple[str, str]] | None:
        if any(op.notify for op in batch):
            return "SELECT pg_notify(%s, %s)", (CHANNEL, self._token)
        return None

    async def _send(
        self,
        conn: Conn,
        cur: Cur | None,
        batch: list[_Op],
        groups: list[tuple[list[_Op], str | None]],
        pending: list[tuple[list[_Op], Callable[[], Awaitable[list[Any]]]]],
    ) -> None:
        """Send the batch's statements in a pipeline: their results are read once it has synced.

        Each statement still runs after the one before it, in one transaction, as if sent one
        at a time; only the waits in between are gone. A run of the usual operations (adds
        without cancels, claims, finishes) is one statement, trapd_run's. Measured
        (bench_journal.py dispatcher case, about 45 operations a batch): a round trip per
        statement cost trapd about 100 us of CPU per statement, a pipelined statement about 60,
        an operation inside trapd_run's JSON array a fraction of that. An operation that must
        read a result before it can decide its next statement (rare: due, recover, history...)
        closes the pipeline and runs as before (``cur``: only then is there one). Any error: the
        batch is run again one savepoint per operation (see _run_isolated).
        """
        pipeline: contextlib.AbstractAsyncContextManager[Any] | None = None
        try:
            if cur is not None:
                pipeline = conn.pipeline()
                await pipeline.__aenter__()
            await self._prelock(conn, batch)
            for ops, run in groups:
                op = ops[0]
                if run is not None or op.fn in _PIPELINED:
                    if cur is not None and pipeline is None:
                        pipeline = conn.pipeline()
                        await pipeline.__aenter__()
                    if run is not None:
                        pending.append((ops, await _send_run(conn, ops, run)))
                    else:
                        pending.append((ops, _one(await op.fn(conn, *op.args))))
                else:
                    assert cur is not None
                    if pipeline is not None:
                        p, pipeline = pipeline, None
                        await p.__aexit__(None, None, None)
                    pending.append((ops, _one(_ready(await op.fn(cur, *op.args)))))
            if (notify := self._notify(batch)) is not None:
                await conn.cursor().execute(*notify)
            if pipeline is not None:
                p, pipeline = pipeline, None
                await p.__aexit__(None, None, None)  # the sync: every result is in
        except BaseException as exc:
            if pipeline is not None:
                with contextlib.suppress(Exception):
                    await pipeline.__aexit__(type(exc), exc, exc.__traceback__)
            raise

    async def _run_isolated(
        self, conn: Conn, cur: Cur, batch: list[_Op]
    ) -> list[tuple[_Op, Any, BaseException | None]]:
        """The batch again, one savepoint per operation: an operation that fails fails alone."""
        done: list[tuple[_Op, Any, BaseException | None]] = []
        try:
            async with conn.transaction():  # a savepoint: a timeout here leaves the rest usable
                await self._prelock(conn, batch)
        except pgerrors.QueryCanceled:
            # A statement_timeout while waiting for a key's lock (another session holds it: the
            # other host's transaction on that key, or one stuck). QueryCanceled is an
            # OperationalError: raised from here, it was taken for a broken connection, and the
            # journal for unavailable (every other key's add failed with it). Without the sorted
            # locks, each add takes its own in its savepoint below, and the one that waits past
            # the timeout fails alone (two hosts' batches that would deadlock meanwhile: one of
            # them is told so by PostgreSQL and fails, also alone).
            if conn.broken or conn.closed:
                raise
        for op in batch:
            try:
                async with conn.transaction():  # a savepoint
                    if op.fn in _PIPELINED:
                        result = await (await op.fn(conn, *op.args))()
                    else:
                        result = await op.fn(cur, *op.args)
            except pgerrors.QueryCanceled as exc:  # this operation's statement ran too long
                if conn.broken or conn.closed:
                    raise
                done.append((op, None, JournalError(f"journal operation failed: {_one_line(exc)}")))
                continue
            except (psycopg.OperationalError, psycopg.InterfaceError):
                raise
            except Exception as exc:
                if _refuses_all(exc):
                    raise
                done.append((op, None, exc))
                continue
            done.append((op, result, None))
        if (notify := self._notify(batch)) is not None:
            await cur.execute(*notify)
        return done

    @staticmethod
    async def _prelock(conn: Conn, batch: list[_Op]) -> None:
        """Take the batch's add locks first, in sorted order, before any savepoint.

        Two hosts' batches that need the same keys (the copies of a burst of notifications,
        arriving in another order at each host) then wait for each other instead of
        deadlocking (PostgreSQL would break the deadlock only after deadlock_timeout, 1 s).
        trapd_add_entry takes them again (a lock already held costs nothing).
        """
        if locks := _batch_locks(batch):
            await conn.cursor().execute(_PRELOCK, (locks,))

    def _resolve(self, done: list[tuple[_Op, Any, BaseException | None]]) -> None:
        for op, result, exc in done:
            self._queued -= op.weight
            self._claims_in_flight.pop(op.future, None)
            self._track_holding(op, result, exc)
            if op.fn is _op_finish:
                if exc is None and result is True:
                    self._late_end(op.args[0], op.args[1])
                result = None  # what finish() returns
            if op.future.done():
                continue
            if exc is not None:
                op.future.set_exception(exc)
            else:
                op.future.set_result(result)

    def _track_holding(self, op: _Op, result: Any, exc: BaseException | None) -> None:
        """Which claims this journal holds, as its caller was told (see _op_renew)."""
        if op.fn is _op_claim:
            if exc is None and result.outcome == "running":
                self._holding.add(op.args[0])
        elif op.fn is _op_add:
            if exc is None:
                self._holding.update(
                    i for i, st in zip(result.ids, result.states, strict=True) if st == "running"
                )
        elif op.fn is _op_finish or op.fn is _op_retry_later:
            if exc is None:  # else the dispatcher writes the end again: still running here
                self._holding.discard(op.args[0])
        elif op.fn is _op_unclaim:
            # Given back either way: the caller let go of them. A give-back that failed leaves
            # rows running that nobody runs; the lease loop puts them back.
            self._holding.difference_update(op.args[0])

    def _call(
        self,
        fn: Callable[..., Awaitable[Any]],
        *args: Any,
        weight: int = 1,
        write: bool = True,
        notify: bool = False,
        claims_at: float | None = None,
    ) -> asyncio.Future[Any]:
        """``claims_at``: the operation may claim rows, at this time (their ``started``)."""
        if self._writer_task is None:
            raise JournalError("the journal is not open")
        if write and self._queued + weight > self.max_queued:
            raise JournalFull(f"{self._queued} journal writes are waiting for the database")
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued += weight
        self._queue.put_nowait(_Op(fn, args, fut, weight, write, notify))
        if claims_at is not None:
            self._claims_in_flight[fut] = claims_at
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
        """Renew this host's claims; take over the rows whose owner stopped renewing.

        Only once this host has renewed for a whole lease without a break: back from an outage
        (the database's, or its own partition), it finds every claim's lease run out, also those
        of a host that is alive and running them but has not renewed yet since (its next renewal
        comes within a third of its lease, or its reconnect's backoff). Taking those over at once
        ran them twice.
        """
        renewing_since: float | None = None
        while True:
            await asyncio.sleep(self.lease / 3)
            now = self.now()
            steady = renewing_since is not None and now - renewing_since >= self.lease
            try:
                taken = await self._renew(now, take_over=self._runs_actions and steady)
            except JournalError:
                renewing_since = None
                continue
            if renewing_since is None:
                renewing_since = now
            if taken is not None:
                self.taken_over += taken.rerun + taken.held
                self._takeovers.append(taken)
                self._notified = True
                self._wake()

    def notices(self) -> list[JournalNotice]:
        # Late ends (see _late_end). The database checks its own files; its errors are this
        # journal's availability.
        out, self._notices = self._notices, []
        return out

    def _late_end(self, id_: int, state: str) -> None:
        """This host ended an action after another host took its row over (this host had lost
        its lease: cut off from the database): said once, for the log; the row has the note."""
        self._notices.append(
            JournalNotice(
                "warning",
                "an action this host was running had been taken over by another host: "
                "its end is noted on the row",
                {
                    "action_id": str(id_),
                    "state": state,
                    "hint": f"trapd journal show {id_}: if it is held, it ran here to its end; "
                    "release it only to run it again",
                },
            )
        )

    def share_view(self, view: str) -> None:
        self._view = view

    def other_views(self) -> dict[str, str]:
        return dict(self._other_views)

    def take_overs(self) -> list[Takeover]:
        """The takeovers since the last call (the dispatcher logs each)."""
        out, self._takeovers = self._takeovers, []
        return out

    async def _renew(self, now: float, *, take_over: bool) -> Takeover | None:
        """:func:`_op_renew` on a connection and in a transaction of its own, not in the writer's
        queue: a host whose writes wait there (a burst behind a slow batch) is alive, and its
        leases ran out while the renewal waited, so the other host took over (and ran again)
        actions this one was still running. Returns what it took over from other owners.

        What this journal holds is read right before the statements are sent: a claim answered
        later was in flight then, and rows claimed since the oldest claim in flight (less a
        third of the lease, for the clock) are left alone, so only a claim whose answer came as an
        error (or never) is put back. Only by a journal that runs actions (see recover).
        """
        assert self._pool is not None
        view = self._view  # this host's, republished when a reload changed it (see share_view)
        try:
            async with (
                self._pool.connection(timeout=self.connect_timeout) as conn,
                conn.transaction(),
                conn.cursor() as cur,
            ):
                await self._measure_clock(conn)
                now = self.now()
                token = self._token if self._registered else None
                holding = sorted(self._holding)
                since = min([now, *self._claims_in_flight.values()]) - self.lease / 3
                taken, put_back, namesake = await _op_renew(
                    cur,
                    now,
                    self._owner,
                    self.lease,
                    self._hold_unless,
                    take_over,
                    token,
                    holding,
                    since if self._runs_actions else None,
                    self.instance,
                )
                if view is not None:
                    if self._registered and view != self._view_published:
                        await _publish_view(cur, self.instance, view)
                    self._other_views = await _op_views(cur, now, self.instance)
        except (PoolTimeout, psycopg.Error) as exc:
            raise JournalError(f"lease renewal failed: {_one_line(exc)}") from exc
        if view is not None and self._registered:
            self._view_published = view
        if namesake:
            self._namesake = now
        if put_back:
            self.put_back += put_back
            # For the dispatcher's log: an operator who sees last_error's "unconfirmed" on a row
            # should find when and why (a connection lost after a claim committed).
            self._takeovers.append(Takeover(put_back, 0, (self._owner,), unconfirmed=True))
            self._notified = True
            self._wake()
        return taken

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
            claims_at=now if any(e.claim for e in entries) else None,
        )
        return fut

    async def recover(
        self, now: float, hold_unless: Iterable[str] | None = None, *, owner: str | None = None
    ) -> dict[str, int]:
        keep = frozenset(hold_unless) if hold_unless is not None else None
        await self._register()
        self._hold_unless = keep  # the policy for rows taken over later (see _lease_loop)
        self._runs_actions = True
        result: dict[str, int] = await self._call(_op_recover, now, keep, owner, self.instance, notify=True)
        return result

    async def _register(self) -> None:
        """Claim this process's name before recovering anything under it.

        A namesake that has stopped renewing (this host's previous run, killed) is waited for
        until its lease runs out; one whose renewals go on is another live process under this
        name, and the journal refuses to run actions: a JournalError that says which setting
        to change.
        """
        first: dict[str, float] = {}
        while True:
            live: list[tuple[str, float]] = await self._call(
                _op_register, self.now(), self._owner, self.instance, self._token, self.lease, self._view
            )
            if not live:
                self._registered = True
                self._view_published = self._view
                return
            for name, seen in live:
                if name in first and seen > first[name]:
                    raise JournalError(
                        f"another trapd is running as {name!r} on this journal (renewed "
                        f"{max(0.0, self.now() - seen):.1f} s ago): give each host its own "
                        "dispatch.journal.instance (default: the host name); two processes under one name "
                        "would rerun each other's actions and never take over each other's"
                    )
                first.setdefault(name, seen)
            await asyncio.sleep(0.2)

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
        if aside and self.damage is None:
            self.damage = (
                f"action {aside[0].id} of the journal database could not be read back "
                f"({aside[0].problem}), set aside as dead"
            )[:300]
            self.damage_since = time.time()

    def set_aside(self) -> list[Unreadable]:
        out, self._unreadable = self._unreadable, []
        return out

    async def next_due(self, now: float) -> float | None:
        result: float | None = await self._call(_op_next_due, now, write=False)
        return result

    async def claim(self, id: int, now: float) -> ClaimResult:
        result: ClaimResult = await self._call(_op_claim, id, now, self._owner, self.lease, claims_at=now)
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

    async def note(self, id: int, result: Any) -> None:
        await self._call(_op_note, id, result, self._owner)

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

    async def unreadable_rows(self, ids: Sequence[int]) -> dict[int, str]:
        result: dict[int, str] = await self._call(_op_unreadable_rows, list(ids), write=False)
        return result

    async def release(self, now: float, ids: Sequence[int] = (), rule: str | None = None) -> list[int]:
        result: list[int] = await self._call(_op_release, now, list(ids), rule, notify=True)
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
        while True:  # a transaction per chunk: the other writes go in between
            n: int = await self._call(_op_prune, finished_before, now)
            total += n
            if n < PRUNE_CHUNK:
                return total

    async def changed(self) -> bool:
        """True when another host (or `trapd journal`) committed something since the last call.

        Pushed by NOTIFY; while the listening connection is down, always True: the
        dispatcher then looks at the journal every ``poll_interval`` (the polling fallback).
        """
        if not self._listening:
            return True
        changed, self._notified = self._notified, False
        return changed
