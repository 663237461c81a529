"""A v2c or v3 inform is acknowledged only once what its rules planned is in the journal.

The journal commits late here on purpose (``commit_delay``), so an
acknowledgement sent before the commit would let snmpinform return while the
journal is still empty: the sender would stop resending something trapd
could still lose in a crash.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from pathlib import Path

import pytest
from daemon_harness import IF_INDEX, LINK_DOWN, V3_ARGS, V3_USER, TrapdDaemon
from listen_harness import snmp_send

pytestmark = pytest.mark.integration

RULES = """
rules:
  - name: note-it
    match: {notification: IF-MIB::linkDown}
    actions:
      - action: log
        message: "inform {{ ifIndex }}"
"""


def journaled(d: TrapdDaemon) -> int:
    path = d.state_dir / "journal.sqlite"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as db:
        return int(db.execute("SELECT count(*) FROM actions").fetchone()[0])


# Long enough that an answer sent at once is told apart from one that waited for the commit on a
# loaded machine: the bound for "at once" (COMMIT - 0.5) covers the sender's start, the round trips
# (two more for v3's discovery) and trapd's decode, rules and answer, each process waiting for a
# core. It was 0.5 s with a 0.8 s commit delay.
COMMIT = 2.0


def test_inform_is_acknowledged_after_its_actions_are_journaled(tmp_path: Path) -> None:
    config = {"dispatch": {"journal": {"commit_delay": f"{COMMIT}s"}}}
    d = TrapdDaemon.start(tmp_path / "trapd", rules=RULES, config=config)
    try:
        assert journaled(d) == 0
        started = time.monotonic()
        r = snmp_send("snmpinform", "-v", "2c", "-c", "public", "-r", "0", "-t", "5", d.target(), "",
                      LINK_DOWN, f"{IF_INDEX}.7", "i", "7")  # fmt: skip
        waited = time.monotonic() - started
        assert r.returncode == 0, r.stderr  # acknowledged
        assert journaled(d) == 1  # ... and by then the action was committed
        assert waited >= COMMIT - 0.3  # the Response waited for the (delayed) commit
        # An inform that plans nothing is answered at once.
        started = time.monotonic()
        r = snmp_send("snmpinform", "-v", "2c", "-c", "public", "-r", "0", "-t", "5", d.target(), "",
                      "1.3.6.1.6.3.1.1.5.1")  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - started < COMMIT - 0.5
        assert d.stop() == 0
    finally:
        d.close()


V3_INFORM = [*V3_ARGS, "-r", "0", "-t", "5"]


def test_v3_inform_is_acknowledged_after_its_actions_are_journaled(tmp_path: Path) -> None:
    # v3 informs go through pysnmp's engine (discovery first); its Response waits for the commit too.
    config = {"dispatch": {"journal": {"commit_delay": f"{COMMIT}s"}}, "listener": {"v3_users": [V3_USER]}}
    d = TrapdDaemon.start(tmp_path / "trapd", rules=RULES, config=config)
    try:
        started = time.monotonic()
        r = snmp_send("snmpinform", *V3_INFORM, d.target(), "", LINK_DOWN, f"{IF_INDEX}.7", "i", "7")
        waited = time.monotonic() - started
        assert r.returncode == 0, r.stderr  # acknowledged (after discovery)
        assert journaled(d) == 1  # ... and by then the action was committed
        assert waited >= COMMIT - 0.3  # the Response waited for the (delayed) commit
        started = time.monotonic()
        r = snmp_send("snmpinform", *V3_INFORM, d.target(), "", "1.3.6.1.6.3.1.1.5.1")  # plans nothing
        assert r.returncode == 0, r.stderr
        assert time.monotonic() - started < COMMIT - 0.5
        assert journaled(d) == 1
        assert d.stop() == 0
    finally:
        d.close()


# Resent while its Response waits for the (delayed) commit: snmpinform resends after 0.2 s,
# and the commit takes 0.8 s, so three or four copies of the one inform reach trapd first.
RESENDING = ["-r", "6", "-t", "0.2"]


@pytest.mark.parametrize("version", ["v2c", "v3"])
def test_a_resent_inform_is_answered_without_running_its_rules_again(tmp_path: Path, version: str) -> None:
    config: dict[str, object] = {"dispatch": {"journal": {"commit_delay": "0.8s"}}}
    if version == "v3":
        config["listener"] = {"v3_users": [V3_USER]}
        sender = [*V3_ARGS, *RESENDING]
    else:
        sender = ["-v", "2c", "-c", "public", *RESENDING]
    d = TrapdDaemon.start(tmp_path / "trapd", rules=RULES, config=config)
    try:
        r = snmp_send("snmpinform", *sender, d.target(), "", LINK_DOWN, f"{IF_INDEX}.7", "i", "7")
        # Acknowledged: for v3 net-snmp takes only the Response to its latest copy (each has its
        # own msgID), so every copy must be answered, with the first one's outcome.
        assert r.returncode == 0, r.stderr
        # One action planned, not one per copy.
        assert journaled(d) == 1
        assert d.wait_metric("trapd_informs_resent_total", 1) >= 1  # the copies came, and were counted
        # A new inform with the same content is another notification (another request-id): it runs.
        r = snmp_send("snmpinform", *sender, d.target(), "", LINK_DOWN, f"{IF_INDEX}.7", "i", "7")
        assert r.returncode == 0, r.stderr
        assert journaled(d) == 2
        assert d.stop() == 0
    finally:
        d.close()
