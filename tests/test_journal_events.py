"""What the journal keeps of a trap: each event once, bounded (issue 14 item 4).

A real ``trapd run`` receives a trap from net-snmp's ``snmptrap`` with a 60 KB
binary varbind that a rule with three actions matches. Before, the event was
stored as ~300 KB of JSON (the value in hex plus its aa:bb:... display text).
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from daemon_harness import IF_INDEX, LINK_DOWN, TrapdDaemon
from listen_harness import needs_netsnmp, snmp_send

pytestmark = [pytest.mark.integration, needs_netsnmp]

RULES = """\
rules:
  - name: port-down
    match: {notification: IF-MIB::linkDown}
    actions:
      - {action: log, message: "down {{ ifIndex }}", key: "a-{{ ifIndex }}"}
      - {action: log, message: "again {{ ifIndex }}", key: "b-{{ ifIndex }}"}
      - {action: log, message: "third {{ ifIndex }}", key: "c-{{ ifIndex }}"}
"""
BLOB = bytes(range(256)) * 234  # 59,904 bytes: fits one UDP datagram with the rest of the trap
ALIAS_OID = "1.3.6.1.2.1.31.1.1.1.18.7"  # IF-MIB::ifAlias.7


def journal_bytes(state_dir: Path) -> int:
    return sum(p.stat().st_size for p in state_dir.glob("journal.sqlite*"))


def test_a_large_trap_is_journaled_once_and_bounded(tmp_path: Path) -> None:
    d = TrapdDaemon.start(tmp_path / "d", rules=RULES)
    try:
        traps = 5
        for i in range(traps):
            r = snmp_send(
                "snmptrap", "-v", "2c", "-c", "public", d.target(), "", LINK_DOWN,
                f"{IF_INDEX}.7", "i", str(7 + i), ALIAS_OID, "x", BLOB.hex(),
            )  # fmt: skip
            assert r.returncode == 0, r.stderr
        d.wait_log("action done", timeout=60, count=3 * traps)
        db = sqlite3.connect(d.state_dir / "journal.sqlite")
        try:
            deadline = time.monotonic() + 30
            while db.execute("SELECT count(*) FROM actions WHERE state = 'done'").fetchone()[0] < 3 * traps:
                assert time.monotonic() < deadline
                time.sleep(0.1)
            events = db.execute("SELECT length(data) FROM events").fetchall()
            per_event = db.execute("SELECT count(DISTINCT event_id), count(*) FROM actions").fetchone()
        finally:
            db.close()
        # Printed for the record (pytest -s): journal bytes (file + WAL) and stored JSON per trap.
        stored = sum(n for (n,) in events)
        per_trap = journal_bytes(d.state_dir) / traps
        print(f"journal: {per_trap:.0f} bytes/trap (file + WAL), event JSON {stored / traps:.0f}/trap")
        assert per_event == (traps, 3 * traps)  # three actions per trap, one event row each
        assert len(events) == traps
        assert max(n for (n,) in events) < 25_000, events  # was ~300,000 bytes per event
    finally:
        d.stop()
