"""Fill a journal with the waiting and finished actions of an older trapd (tests/test_upgrade.py).

Run with an older release's code first on PYTHONPATH: ``python old_journal_maker.py TARGET``,
TARGET a SQLite file or a PostgreSQL URL (migrated by that release). It journals, through that
release's own journal, one action in each state an upgrade finds waiting or kept: pending,
scheduled (due in a few seconds), failed (an attempt failed, retrying), held (a cap of 0), and a
dead kea.lease-del whose result holds the lease Kea deleted; prints {state: id} as JSON.

Only this file's imports and the journal's public methods: what every release has.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

from trapd.dispatch.journal import CapCheck, NewEntry, open_journal
from trapd.dispatch.testing import make_event

LEASE = {
    "ip-address": "10.9.8.7", "hw-address": "0a:00:27:00:ee:01", "subnet-id": 1,
    "cltt": int(time.time()), "valid-lft": 86400, "hostname": "", "state": 0,
}  # fmt: skip
# Each exec action appends its name to ./marks (the daemon's working directory): "ran once" is
# counted at the target.
ARGV = ["/bin/sh", "-c", 'echo "$1" >> marks', "sh"]
YEAR = 365 * 86400.0


def entry(name: str, **kw: Any) -> NewEntry:
    base: dict[str, Any] = dict(
        rule="old-rule", action="exec", index=0, params={"argv": [*ARGV, name]}, key=f"k-{name}",
        mode="enforce", state="pending", due=time.time(), max_attempts=5, backoff=1.0, max_age=YEAR,
    )  # fmt: skip
    base.update(kw)
    return NewEntry(**base)


async def fill(target: str) -> dict[str, int]:
    if "://" in target:
        from trapd.dispatch.journal.postgres import PostgresJournal

        journal: Any = PostgresJournal(target, instance="oldhost")
    else:
        journal = open_journal(target)
    await journal.open()
    try:
        now = time.time()
        held_cap = CapCheck("old-rule/none", "all", 0, 60.0, YEAR)
        entries = [
            entry("pending"),
            entry("scheduled", state="scheduled", due=now + 4),
            entry("failed"),
            entry("held", caps=(held_cap,)),
            entry("dead", action="kea.lease-del", params={"ip-address": LEASE["ip-address"]}, key="k-dead"),
        ]
        r = await journal.add(make_event().to_dict(), entries, [], now)
        ids = dict(zip(("pending", "scheduled", "failed", "held", "dead"), r.ids, strict=True))
        assert (await journal.claim(ids["failed"], now)).outcome == "running"
        await journal.retry_later(ids["failed"], now + 3, "exit status 1", None)
        assert (await journal.claim(ids["held"], now)).outcome == "held"
        assert (await journal.claim(ids["dead"], now)).outcome == "running"
        result = {"deleted": 1, "leases": [LEASE], "endpoint": "local4"}
        await journal.finish(ids["dead"], "dead", now, result, "lease4-del: answer lost")
        return ids
    finally:
        await journal.close()


if __name__ == "__main__":
    print(json.dumps(asyncio.run(fill(sys.argv[1]))))
