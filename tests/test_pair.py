"""trapd on PostgreSQL, as real processes: `trapd journal migrate`, `trapd run`, `trapd journal`.

The journal is a private PostgreSQL 15 (tests/pg_harness.py); traps come from
net-snmp's ``snmptrap`` / ``snmpinform``; actions are ``exec`` programs that
append a line to a file, so "once" is counted at the target as well as in the
journal.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
from daemon_harness import REPO, TrapdDaemon, link_down
from listen_harness import needs_netsnmp, snmp_send
from pg_harness import PgServer

pytestmark = [pytest.mark.integration, needs_netsnmp]

RULES = """\
rules:
  - name: port-down
    match: {{notification: IF-MIB::linkDown}}
    actions:
      - action: exec
        argv: [/bin/sh, -c, 'echo "$1" >> {marks}', sh, "{{{{ ifIndex }}}}"]
        key: "port-{{{{ ifIndex }}}}"
"""


def pg_config(url: str, instance: str, **journal: Any) -> dict[str, Any]:
    return {"dispatch": {"journal": {"url": url, "instance": instance, **journal}}}


def trapd(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trapd", *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def marks(path: Path) -> Counter[str]:
    return Counter(path.read_text().split()) if path.exists() else Counter()


def wait_for(check: Any, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)


def states(url: str) -> Counter[str]:
    with psycopg.connect(url) as conn:
        return Counter(
            {s: n for s, n in conn.execute("SELECT state, count(*) FROM trapd_actions GROUP BY state")}
        )


def test_one_trapd_on_postgresql(tmp_path: Path, pg_server: PgServer) -> None:
    url = pg_server.new_database(migrated=False)
    out = tmp_path / "marks"
    d = TrapdDaemon.start(
        tmp_path / "d", rules=RULES.format(marks=out), config=pg_config(url, "dhcp1"), wait_ready=False
    )
    # No schema yet: the daemon refuses to start, and says what to do.
    assert d.wait_exit(30) != 0
    assert any("trapd journal migrate" in str(e) for e in d.log), d.log[-5:]
    r = trapd("journal", "--config", str(d.config_path), "migrate")
    assert r.returncode == 0 and "created -> 1" in r.stdout, r.stderr
    assert "up to date" in trapd("journal", "--config", str(d.config_path), "migrate").stdout
    d.launch()
    try:
        d.wait_ready(30)
        for i in (1, 2, 3):
            assert snmp_send("snmptrap", *link_down(d.target(), i)).returncode == 0
        wait_for(lambda: states(url)["done"] == 3, what="three actions done")
        assert marks(out) == Counter({"1": 1, "2": 1, "3": 1})
        r = trapd("journal", "--config", str(d.config_path), "list", "--state", "done", "--json")
        assert r.returncode == 0 and r.stdout.count('"state": "done"') == 3, (r.stdout, r.stderr)
        status, health = d.healthz()
        assert status == 200, health
    finally:
        d.stop()
