"""A Dispatcher in an OS process of its own, for the tests of several processes on one journal.

Run as ``python journal_procs.py JOURNAL OWNER RUNLOG [ACKLOG]``. It opens the journal with
that owner, starts a Dispatcher (which recovers that owner's interrupted actions), prints
``{"ready": ...}`` and then answers one JSON command per stdin line with one JSON line:

* ``{"op": "submit", "plans": [PLAN, ...], "cancels": [...]}`` -> ``{"ids": [...],
  "cancelled": [...], "event_id": ..., "in_memory": N}``. A PLAN is the keyword arguments
  of :func:`trapd.dispatch.testing.plan` for the action ``mark`` plus ``tag`` and
  ``sleep`` and ``gate`` (its parameters) and ``cap`` (``[name, limit, per]``).
* ``{"op": "submit_many", "outcomes": [{"plans": ..., "cancels": ...}, ...]}`` -> per outcome
  its ids or the error's text, all issued at once (they share commits).
* ``{"op": "stream", "n": N, "interval": S, "prefix": P, "sleep": S}``: in the background,
  submit N one-action outcomes (tags P0, P1, ...; each its own key), one every S seconds,
  and append each acknowledged id to ACKLOG once ``submit`` returned (durable).
* ``{"op": "stats"}`` -> the dispatcher's counters; ``{"op": "stop"}`` stops and exits.

The action ``mark`` appends ``start TAG OWNER ATTEMPT`` to RUNLOG, sleeps ``sleep``, waits for
the file ``gate`` to exist when it names one (so a test decides when a run may end, whatever the
machine's load), appends ``end TAG OWNER ATTEMPT``: with O_APPEND each line is one write, so
every process's runs (and those of a process killed halfway) are in one file in order.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import structlog

from trapd.dispatch.config import DispatchConfig, JournalConfig, RetryDefaults
from trapd.dispatch.dispatcher import Dispatcher, stats_snapshot
from trapd.dispatch.journal import open_journal
from trapd.dispatch.testing import make_event, make_outcome, plan
from trapd.params import Param
from trapd.plugin import ActionContext, ActionSpec, action
from trapd.rules.outcome import Outcome, RateCap

CONFIG = DispatchConfig(
    workers=8,
    queue_size=200,
    shutdown_timeout=0.5,
    # Fast enough to see the other process's commits soon (the data_version poll).
    journal=JournalConfig(poll_interval=0.05),
    retry=RetryDefaults(max_attempts=3, max_age=60.0, backoff=0.05, max_backoff=0.5, jitter=0.0),
)


def append(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def mark_action(runlog: Path, owner: str) -> ActionSpec:
    @action(
        "mark",
        params={
            "tag": Param("string", required=True),
            "sleep": Param("duration", default=0.0),
            "gate": Param("string", default=""),
        },
        idempotent=True,
    )
    async def mark(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        """Writes its tag to the run log (test action)."""
        append(runlog, f"start {params['tag']} {owner} {ctx.attempt}")
        if params["sleep"]:
            await asyncio.sleep(params["sleep"])
        if params["gate"]:
            gate = Path(params["gate"])
            for _ in range(1200):  # bounded: 60 s
                if gate.exists():
                    break
                await asyncio.sleep(0.05)
        append(runlog, f"end {params['tag']} {owner} {ctx.attempt}")
        return {"tag": params["tag"]}

    return mark


def outcome(spec: dict[str, Any]) -> Outcome:
    planned = []
    for i, p in enumerate(spec.get("plans", ())):
        p = dict(p)
        params = {"tag": p.pop("tag"), "sleep": p.pop("sleep", 0.0), "gate": p.pop("gate", "")}
        cap = p.pop("cap", None)
        caps = [RateCap(cap[0], int(cap[1]), float(cap[2]), hold_for=600.0)] if cap else []
        planned.append(plan("mark", params, index=i, caps=caps, **p))
    return make_outcome(*planned, cancels=spec.get("cancels", ()))


async def main(journal_path: str, owner: str, runlog: str, acklog: str | None) -> None:
    # stdout carries the replies; the dispatcher's log lines go to stderr.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(sys.stderr))
    journal = open_journal(journal_path, CONFIG.journal, owner=owner)
    await journal.open()
    d = Dispatcher(CONFIG, journal, {"mark": mark_action(Path(runlog), owner)}, kea=None)
    await d.start()
    out = sys.stdout
    out.write(json.dumps({"ready": owner, "pid": os.getpid()}) + "\n")
    out.flush()
    background: set[asyncio.Task[None]] = set()

    async def stream(n: int, interval: float, prefix: str, sleep: float) -> None:
        assert acklog is not None
        for i in range(n):
            ev = make_event()
            ids = await d.submit(
                ev, outcome({"plans": [{"tag": f"{prefix}{i}", "key": f"{prefix}{i}", "sleep": sleep}]})
            )
            append(Path(acklog), " ".join(ids))
            await asyncio.sleep(interval)

    while True:
        line = await asyncio.to_thread(sys.stdin.readline)
        if not line:
            break
        cmd = json.loads(line)
        op = cmd["op"]
        reply: Any
        if op == "submit":
            ev = make_event()
            out_ = outcome(cmd)
            ids = await d.submit(ev, out_)
            rows = [await journal.get(int(i), with_event=False) for i in ids]
            reply = {
                "ids": [int(i) for i in ids],
                "states": [r.state if r else None for r in rows],
                "event_id": ev.id,
                "in_memory": len(d._loaded),
            }
        elif op == "submit_many":
            items = [(make_event(), outcome(o)) for o in cmd["outcomes"]]
            results = await d.submit_many(items)
            reply = {"results": [r if isinstance(r, list) else f"{type(r).__name__}: {r}" for r in results]}
        elif op == "stream":
            t = asyncio.create_task(stream(cmd["n"], cmd["interval"], cmd["prefix"], cmd.get("sleep", 0.0)))
            background.add(t)
            reply = {"streaming": cmd["n"]}
        elif op == "stats":
            reply = stats_snapshot(d) | {"commits": journal.commits}
        elif op == "stop":
            for t in background:
                t.cancel()
            await d.stop(0.5)
            await journal.close()
            out.write(json.dumps({"stopped": owner}) + "\n")
            out.flush()
            return
        else:
            reply = {"error": f"unknown op {op}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None))
