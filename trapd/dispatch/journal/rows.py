"""Rows of the ``actions`` table as both backends store them: the column list and the codec.

JSON columns (params, caps, item, result, the event's data) are text in both backends, so one
codec reads both and ``trapd journal show`` prints the same thing whichever holds the journal.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from trapd.dispatch.journal.model import CapCheck, Entry

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
