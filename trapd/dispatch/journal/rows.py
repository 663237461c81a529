"""Rows of the ``actions`` table as both backends store them: the column list and the codec.

JSON columns (params, caps, item, result, the event's data) are text in both backends, so one
codec reads both and ``trapd journal show`` prints the same thing whichever holds the journal.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from trapd.dispatch.journal.model import CapCheck, Entry
from trapd.secrets import REDACTOR

COLS = (
    "id, event_id, received_at, source, rule, action, idx, params, key, mode, state, attempts, max_attempts, "
    "backoff, max_age, age_from, created, due, started, finished, cancel_key, once_key, caps, cap_exempt, "
    "held_by, endpoint, mac, ip, item, result, last_error, owner"
)
# In a row selected with COLS / ACOLS, the column after them (the event's data) is at this index.
NCOLS = 32
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
        event=event,
    )


def dumps(value: Any) -> str:
    # default=str: a plugin that returns a datetime or a Path still gets its result journaled.
    return json.dumps(value, separators=(",", ":"), default=str)


def dumps_result(result: Any) -> str:
    """An action's result as the journal stores it: its JSON, or ``{"repr": ...}`` of what JSON
    cannot hold (a dict with tuple keys, a cycle). Encoded once, where it is stored: the
    dispatcher used to encode every result on its event loop only to check it (2 % of the loop's
    time in bench_kea.py --e2e)."""
    try:
        text = dumps(result)
    except (TypeError, ValueError):
        text = dumps({"repr": repr(result)[:1000]})
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
