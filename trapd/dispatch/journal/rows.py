"""Rows of the ``actions`` table as both backends store them: the column list and the codec.

JSON columns (params, caps, item, result, the event's data) are text in both backends, so one
codec reads both and ``trapd journal show`` prints the same thing whichever holds the journal.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from trapd.dispatch.journal.model import CapCheck, Entry, Unreadable
from trapd.errors import RecordTooLarge
from trapd.secrets import REDACTOR

COLS = (
    "id, event_id, received_at, source, rule, action, idx, params, key, mode, state, attempts, max_attempts, "
    "backoff, max_age, age_from, created, due, started, finished, cancel_key, once_key, caps, cap_exempt, "
    "held_by, endpoint, mac, ip, item, result, last_error, owner, journaled_by"
)
# In a row selected with COLS / ACOLS, the column after them (the event's data) is at this index.
NCOLS = 33
ACOLS = ", ".join("a." + c.strip() for c in COLS.split(","))


def entry_from_row(row: Sequence[Any], event: str | None = None) -> Entry:
    (
        id_,
        event_id,
        received_at,
        source,
        rule,
        action,
        idx,
        params,
        key,
        mode,
        state,
        attempts,
        max_attempts,
        backoff,
        max_age,
        age_from,
        created,
        due,
        started,
        finished,
        cancel_key,
        once_key,
        caps,
        cap_exempt,
        held_by,
        endpoint,
        mac,
        ip,
        item,
        result,
        last_error,
        owner,
        journaled_by,
    ) = row[:NCOLS]
    return Entry(
        id=id_,
        event_id=event_id,
        received_at=received_at,
        source=source,
        rule=rule,
        action=action,
        index=idx,
        params=json.loads(params),
        key=key,
        mode=mode,
        state=state,
        attempts=attempts,
        max_attempts=max_attempts,
        backoff=backoff,
        max_age=max_age,
        age_from=age_from,
        created=created,
        due=due,
        started=started,
        finished=finished,
        cancel_key=cancel_key,
        once_key=once_key,
        caps=tuple(CapCheck.from_json(c) for c in json.loads(caps)),
        cap_exempt=bool(cap_exempt),
        held_by=held_by,
        endpoint=endpoint,
        mac=mac,
        ip=ip,
        item=json.loads(item) if item else None,
        result=json.loads(result) if result else None,
        last_error=last_error,
        owner=owner,
        journaled_by=journaled_by,
        event=event,
    )


# Columns of a row that can be shown when the rest of it cannot be read (all short text or numbers).
SUMMARY_COLS = ("rule", "action", "key", "event_id", "source", "mac", "ip", "state")

_NOT_UTF8 = re.compile(r"Could not decode to UTF-8 column '([^']*)'")


def unreadable_problem(exc: BaseException) -> str:
    """Why a row could not be read back, in one line without the row's text (it may hold anything:
    SQLite's decode error quotes the whole value)."""
    m = _NOT_UTF8.search(str(exc))
    if m:
        return f"text that is not UTF-8 in column {m.group(1)!r}"
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def set_aside_error(problem: str) -> str:
    """The ``last_error`` of a row set aside: what an operator reads in ``trapd journal show``."""
    return f"could not be read back from the journal ({problem}): set aside, never run; the row is damaged"


def decode_due(rows: Sequence[Sequence[Any]]) -> tuple[list[Entry], list[tuple[int, str]]]:
    """Rows selected with COLS and the event's data: the entries, and (id, problem) of the rows
    whose JSON cannot be decoded (cut short, not an object...). One such row must not keep the
    others from running: the caller sets it aside."""
    entries: list[Entry] = []
    bad: list[tuple[int, str]] = []
    for r in rows:
        try:
            entries.append(entry_from_row(r, r[NCOLS]))
        except Exception as exc:  # whatever the row's content makes the codec raise: it is the row's
            bad.append((int(r[0]), unreadable_problem(exc)))
    return entries, bad


def unreadable(id_: int, problem: str, summary: Sequence[Any] | None) -> Unreadable:
    """An :class:`Unreadable` from a row's :data:`SUMMARY_COLS` (None: the row was gone)."""
    fields: dict[str, str | None] = {}
    if summary is not None:
        for name, value in zip(SUMMARY_COLS, summary, strict=True):
            if isinstance(value, bytes):
                value = value.decode("utf-8", "replace")
            fields[name] = None if value is None else str(value)[:200]
    return Unreadable(id_, problem, fields)


# The actions table's text columns: what a lenient read (:func:`entry_read_leniently`) takes as
# bytes (CAST(... AS BLOB)), so that a value that is not UTF-8 is read all the same.
TEXT_COLS = frozenset(
    {
        "event_id", "source", "rule", "action", "params", "key", "mode", "state", "cancel_key", "once_key",
        "caps", "held_by", "endpoint", "mac", "ip", "item", "result", "last_error", "owner",
        "journaled_by",
    }
)  # fmt: skip
_NAMES = tuple(c.strip() for c in COLS.split(","))


def lenient_cols(prefix: str = "") -> str:
    """COLS for :func:`entry_read_leniently`: the text columns as bytes."""
    return ", ".join(f"CAST({prefix}{c} AS BLOB)" if c in TEXT_COLS else f"{prefix}{c}" for c in _NAMES)


DAMAGED_ROW = "damaged row: "  # how a lenient read's last_error starts for a row it could not read whole


def damaged(entry: Entry) -> bool:
    """An entry :func:`entry_read_leniently` could not read whole (its last_error says what)."""
    return (entry.last_error or "").startswith(DAMAGED_ROW)


def entry_read_leniently(row: Sequence[Any], event: Any = None) -> Entry:
    """A row as far as it can be read, for ``trapd journal`` (looking, never running it): text
    that is not UTF-8 is shown with U+FFFD, a JSON column that cannot be decoded as its text
    under ``"unreadable"``, and ``last_error`` starts with what is damaged."""
    values = list(row[:NCOLS])
    problems: list[str] = []
    not_utf8: set[str] = set()

    def text(value: Any, name: str) -> Any:
        if not isinstance(value, bytes):
            return value
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            problems.append(f"text that is not UTF-8 in column {name!r}")
            not_utf8.add(name)
            return value.decode("utf-8", "replace")

    values = [text(v, name) for v, name in zip(values, _NAMES, strict=True)]
    event = text(event, "event data")
    for name in ("params", "caps", "item", "result"):
        i = _NAMES.index(name)
        if not values[i]:
            continue
        try:
            decoded = json.loads(values[i])
            if name == "caps":
                [CapCheck.from_json(c) for c in decoded]
            elif name == "params" and not isinstance(decoded, dict):
                raise ValueError("not an object")
        except Exception as exc:
            if name not in not_utf8:  # else said already
                problems.append(f"column {name!r}: {unreadable_problem(exc)}")
            values[i] = "[]" if name == "caps" else dumps({"unreadable": values[i][:2000]})
    if event is not None:
        try:
            json.loads(event)
        except ValueError as exc:
            if "event data" not in not_utf8:
                problems.append(f"event data: {unreadable_problem(exc)}")
            event = dumps({"unreadable": event[:2000]})
    if problems:
        last_error = values[_NAMES.index("last_error")]
        note = DAMAGED_ROW + "; ".join(problems)
        values[_NAMES.index("last_error")] = f"{note}; {last_error}" if last_error else note
    return entry_from_row(values, event)


def dumps(value: Any) -> str:
    # default=str: a plugin that returns a datetime or a Path still gets its result journaled.
    return json.dumps(value, separators=(",", ":"), default=str)


# What the journal keeps of an action's result: its JSON up to RESULT_LIMIT characters (a
# kea.lease-del of about 10,000 leases, which `trapd kea restore` reads back, fits); beyond,
# a plugin that returned a whole answer (megabytes) would put it in the row, in every `trapd
# journal show` and in the WAL, so it is kept as {"truncated": LENGTH, "start": its first
# RESULT_START characters}. A result JSON cannot hold is kept as its repr, cut likewise.
RESULT_LIMIT = 4 << 20
RESULT_START = 8192
REPR_LIMIT = 1000
# A record (ctx.record) is never cut: what it secures (the leases before their deletion) would be
# lost to the restore. One longer than RESULT_LIMIT less this margin is refused (RecordTooLarge),
# so that the result that replaces it, the same leases and a few fields more, fits too.
RECORD_MARGIN = 64 << 10


def _shown(value: Any) -> str:
    try:
        return repr(value)
    except Exception as exc:  # its own __repr__, or nested too deep
        return f"(a {type(value).__name__} that cannot be shown: {type(exc).__name__})"


def check_record(partial: Any) -> None:
    """Raise RecordTooLarge for a record (ctx.record) the journal would not keep whole."""
    try:
        length = len(dumps(partial))
    except Exception:
        return  # kept as its repr (dumps_result): nothing a restore reads, nothing to lose
    limit = RESULT_LIMIT - RECORD_MARGIN
    if length > limit:
        raise RecordTooLarge(
            f"the record is {length:,} characters of JSON, more than the journal keeps whole ({limit:,})"
        )


def dumps_result(result: Any) -> str:
    """An action's result as the journal stores it: its JSON, or ``{"repr": ...}`` of what JSON
    cannot hold (a dict with tuple keys, a cycle), bounded (RESULT_LIMIT). Encoded once, where it
    is stored: the dispatcher used to encode every result on its event loop only to check it (2 %
    of the loop's time in bench_kea.py --e2e)."""
    try:
        text = dumps(result)
    # Whatever encoding it raises (a plugin's object whose str() fails, a RecursionError: nested
    # deeper than the encoder recurses): this runs where the end of the action is written, and an
    # end that cannot be written was tried again for ever, the row left running.
    except Exception:
        return dumps({"repr": REDACTOR.bounded(_shown(result), REPR_LIMIT)})
    if len(text) > RESULT_LIMIT:
        return dumps({"truncated": len(text), "start": REDACTOR.bounded(text, RESULT_START)})
    # A program's output or an echoing receiver's answer may carry a secret the action was given.
    return REDACTOR.redact(text) if REDACTOR else text


# What the journal keeps of an event (issue: a 65 KB binary varbind was stored as 130 KB of hex
# plus 195 KB of display text). Each varbind's value and display text are cut to these many
# characters (hex: half as many bytes) and marked ``"truncated": LENGTH`` with the value's full
# length in bytes (or characters); past the budget for all varbinds of one event, the rest are
# left out and counted in ``"varbinds_omitted"``. Bounds an event at about 20 KB of JSON
# whatever the trap carried. Actions are unaffected: their parameters were rendered from the
# whole event before it was journaled.
MAX_VALUE_CHARS = 1024
VARBINDS_BUDGET = 16 * 1024


def stored_event(event: Mapping[str, Any]) -> str:
    """The event as the journal stores it (JSON), its varbinds bounded (see :data:`MAX_VALUE_CHARS`)."""
    varbinds = event.get("varbinds")
    if not varbinds:
        return dumps(event)
    whole: str | None = None
    if all(not isinstance(vb, Mapping) or _bounded_varbind(vb) is vb for vb in varbinds):
        # No value to cut (the common trap): one encoding, not one per varbind and then the event
        # again; a trap with a long value is never encoded whole (a 60 KB varbind: 300 KB of JSON).
        whole = dumps(event)
        if len(whole) <= VARBINDS_BUDGET:
            return whole
    kept: list[Any] = []
    used = 0
    for n, vb in enumerate(varbinds):
        if isinstance(vb, Mapping):
            vb = _bounded_varbind(vb)
        text = dumps(vb)
        if used + len(text) > VARBINDS_BUDGET and kept:
            out = dict(event)
            out["varbinds"] = kept
            out["varbinds_omitted"] = len(varbinds) - n
            return dumps(out)
        used += len(text)
        kept.append(vb)
    if whole is not None:  # nothing was cut (no value is long) and all fit the budget
        return whole
    out = dict(event)
    out["varbinds"] = kept
    return dumps(out)


def _bounded_varbind(vb: Mapping[str, Any]) -> Mapping[str, Any]:
    value, display = vb.get("value"), vb.get("display")
    long_value = isinstance(value, str) and len(value) > MAX_VALUE_CHARS
    long_display = isinstance(display, str) and len(display) > MAX_VALUE_CHARS
    if not (long_value or long_display):
        return vb
    out = dict(vb)
    if long_value:
        assert isinstance(value, str)
        # Hex of OCTET STRING / Opaque: cut at a byte boundary, so it still decodes.
        binary = vb.get("type") in ("OctetString", "Opaque")
        out["value"] = value[: MAX_VALUE_CHARS - (MAX_VALUE_CHARS % 2 if binary else 0)]
        out["truncated"] = len(value) // 2 if binary else len(value)
    if long_display:
        assert isinstance(display, str)
        out["display"] = display[:MAX_VALUE_CHARS]
        out.setdefault("truncated", len(display))
    return out
