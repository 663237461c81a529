"""Upgrading trapd in place with actions waiting in the journal, against the real older release.

The journal is written by the code of an older release (its commit, taken from this
repository's history with ``git archive``) through its own journal (tests/old_journal_maker.py):
an action pending, one scheduled, one failed and retrying, one held by a cap, and a dead
kea.lease-del whose result holds the lease it deleted. Then this tree's trapd starts on it as
a real process, as after ``pip install -U`` and ``systemctl restart trapd``: it runs each waiting
action exactly once (counted at the target), keeps the held and the dead row with its lease
(``trapd kea restore`` still builds the lease4-add), and ``trapd journal list / show`` read the
old rows. On PostgreSQL also a rolling upgrade: the older trapd keeps running on the schema the
newer one migrated (docs/pair.md). And the window between the two commands: the newer release's
files under the running older one (a reload, a worker restarted, its stop), then the restart.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from daemon_harness import REPO, TrapdDaemon, link_down
from listen_harness import needs_netsnmp, snmp_send
from pg_harness import PgServer
from test_pair import PAIR_RULES, lines, pg_config, send, states

from trapd.dispatch.journal.postgres import SCHEMA_VERSION

pytestmark = pytest.mark.integration

# Yesterday's release: PostgreSQL schema 8, SQLite without the journaled_by column.
OLD_RELEASE = "86e4d3c"
MAKER = Path(__file__).with_name("old_journal_maker.py")
RULES = """\
rules:
  - name: unused
    match: {notification: IF-MIB::linkDown}
    actions:
      - action: log
        message: unused
"""
RULES_EXEC = """\
rules:
  - name: port-down
    match: {{notification: IF-MIB::linkDown}}
    actions:
      - action: exec
        argv: [/bin/sh, -c, 'echo "$1" >> {marks}', sh, "{{{{ ifIndex }}}}"]
        key: "port-{{{{ ifIndex }}}}"
"""


@pytest.fixture(scope="module")
def old_code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The older release's trapd and actions packages, from git history."""
    out = tmp_path_factory.mktemp("old-trapd")
    r = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", OLD_RELEASE, "trapd", "actions"],
        capture_output=True, timeout=120,
    )  # fmt: skip
    if r.returncode != 0:
        pytest.skip(f"the older release {OLD_RELEASE} is not in this checkout's history: {r.stderr.decode()}")
    subprocess.run(["tar", "-x", "-C", str(out)], input=r.stdout, check=True, timeout=120)
    # Installed, actions/ is the package trapd_actions (pyproject.toml): its entry points name it.
    (out / "actions").rename(out / "trapd_actions")
    return out


def old_env(old: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(old)}


def run_old(old: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``args`` run by the older release's code (cwd is not this tree: it would come first)."""
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=120, cwd=cwd, env=old_env(old)
    )


def trapd(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trapd", *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )


def fill_old(old: Path, target: str, cwd: Path) -> dict[str, int]:
    r = run_old(old, str(MAKER), target, cwd=cwd)
    assert r.returncode == 0, r.stderr
    ids: dict[str, int] = json.loads(r.stdout)
    return ids


def wait_for(check: Any, timeout: float = 60.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        time.sleep(0.1)


def marks(workdir: Path) -> Counter[str]:
    f = workdir / "marks"
    return Counter(f.read_text().split()) if f.exists() else Counter()


def journal_json(config: Path) -> dict[int, dict[str, Any]]:
    r = trapd("journal", "--config", str(config), "list", "--state", "all", "--json")
    assert r.returncode == 0, r.stderr
    return {int(row["id"]): row for row in map(json.loads, r.stdout.splitlines())}


def check_after_upgrade(d: TrapdDaemon, ids: dict[str, int], kea_config: Path) -> None:
    """What the upgraded trapd must have done and kept (its daemon running on the journal)."""
    waiting = ("pending", "scheduled", "failed")
    wait_for(
        lambda: all(journal_json(d.config_path)[ids[s]]["state"] == "done" for s in waiting),
        what="the waiting actions done",
    )
    d.stop()
    assert marks(d.workdir) == Counter(waiting)  # each once; the held and the dead one not run
    rows = journal_json(d.config_path)
    assert rows[ids["held"]]["state"] == "held"
    assert rows[ids["dead"]]["state"] == "dead"
    r = trapd("journal", "--config", str(d.config_path), "show", str(ids["dead"]))
    assert r.returncode == 0 and "10.9.8.7" in r.stdout and "answer lost" in r.stdout, (r.stdout, r.stderr)
    r = trapd("kea", "restore", str(ids["dead"]), "--dry-run", "-c", str(kea_config))
    assert r.returncode == 0, r.stderr
    sent = json.loads(r.stdout)
    assert sent["command"] == "lease4-add" and sent["arguments"]["ip-address"] == "10.9.8.7", sent


def kea_cli_config(workdir: Path, journal: dict[str, Any]) -> Path:
    """trapd.yaml for `trapd kea restore`: the same journal, a Kea endpoint as the record names."""
    path = workdir / "kea-cli.yaml"
    sock = str(workdir / "kea4.sock")
    config = {
        "state_dir": str(workdir / "cli-state"),
        "dispatch": {"journal": journal},
        "kea": {"endpoints": {"local4": {"transport": "unix", "socket": sock, "family": "v4"}}},
    }
    path.write_text(yaml.safe_dump(config))
    return path


def test_sqlite_journal_of_the_older_release(tmp_path: Path, old_code: Path) -> None:
    work = tmp_path / "host"
    work.mkdir()
    journal = work / "journal.sqlite"
    ids = fill_old(old_code, str(journal), tmp_path)
    # The new trapd, as `systemctl restart trapd` starts it after `pip install -U`.
    config = {"dispatch": {"journal": {"path": str(journal)}}}
    d = TrapdDaemon.start(work, rules=RULES, config=config, timeout=60)
    try:
        check_after_upgrade(d, ids, kea_cli_config(tmp_path, {"path": str(journal)}))
    finally:
        d.stop()
    # Migrated: the new column is there (the older release's rows have none).
    with sqlite3.connect(journal) as conn:
        cols = [r[1] for r in conn.execute("PRAGMA table_info(actions)")]
    assert "journaled_by" in cols
    # Going back (docs/service.md): the older release still reads the journal the newer migrated.
    r = run_old(
        old_code,
        "-m",
        "trapd",
        "journal",
        "--config",
        str(d.config_path),
        "list",
        "--state",
        "all",
        "--json",
        cwd=tmp_path,
    )
    assert r.returncode == 0 and len(r.stdout.splitlines()) == 5, (r.stdout, r.stderr)


def test_postgresql_journal_of_the_older_release(tmp_path: Path, pg_server: PgServer, old_code: Path) -> None:
    url = pg_server.new_database(migrated=False)
    old_cfg = tmp_path / "old.yaml"
    old_cfg.write_text(
        yaml.safe_dump({"state_dir": str(tmp_path / "old-state"), "dispatch": {"journal": {"url": url}}})
    )
    r = run_old(old_code, "-m", "trapd", "journal", "--config", str(old_cfg), "migrate", cwd=tmp_path)
    assert r.returncode == 0 and "created -> 8" in r.stdout, (r.stdout, r.stderr)
    ids = fill_old(old_code, url, tmp_path)
    work = tmp_path / "host"
    config = {"dispatch": {"journal": {"url": url, "instance": "oldhost", "poll_interval": "200ms"}}}
    d = TrapdDaemon.start(work, rules=RULES, config=config, wait_ready=False)
    # The older schema: refused, saying what to run (docs/service.md's upgrade runs it first).
    assert d.wait_exit(60) != 0
    assert any("trapd journal migrate" in str(e) for e in d.log), d.log[-5:]
    r = trapd("journal", "--config", str(d.config_path), "migrate")
    assert r.returncode == 0 and f"8 -> {SCHEMA_VERSION}" in r.stdout, (r.stdout, r.stderr)
    d.launch()
    try:
        d.wait_ready(60)
        check_after_upgrade(d, ids, kea_cli_config(tmp_path, {"url": url, "instance": "oldhost"}))
    finally:
        d.stop()


def kill_while_running(d: TrapdDaemon, url: str, owner: str) -> None:
    """SIGKILL ``d`` while the journal shows it running an action (stopped first, so that the
    action cannot end between the look and the kill): its claim stays until its lease runs out."""

    def running() -> bool:
        with psycopg.connect(url) as conn:
            row = conn.execute(
                "SELECT count(*) FROM trapd_actions WHERE state = 'running' AND owner = %s", (owner,)
            ).fetchone()
        return row is not None and row[0] > 0

    for _ in range(50):
        wait_for(running, what=f"{owner} running an action")
        d.signal(signal.SIGSTOP)
        if running():
            break
        d.signal(signal.SIGCONT)
    d.signal(signal.SIGKILL)
    d.wait_exit(20)


@needs_netsnmp
def test_a_rolling_upgrade_of_a_pair(tmp_path: Path, pg_server: PgServer, old_code: Path) -> None:
    """One host upgraded (and the schema migrated) while the other still runs the older release
    on the same database: the older host keeps journaling, claiming and finishing actions, and
    takes over the claims of the upgraded host when it dies; restarted unupgraded, it refuses
    to start and says to upgrade."""
    url = pg_server.new_database(migrated=False)
    out = tmp_path / "marks"
    old_cfg = tmp_path / "old.yaml"
    old_cfg.write_text(
        yaml.safe_dump({"state_dir": str(tmp_path / "s"), "dispatch": {"journal": {"url": url}}})
    )
    r = run_old(old_code, "-m", "trapd", "journal", "--config", str(old_cfg), "migrate", cwd=tmp_path)
    assert r.returncode == 0 and "created -> 8" in r.stdout, (r.stdout, r.stderr)
    rules = PAIR_RULES.format(marks=out, seconds=1)
    hosts: list[TrapdDaemon] = []
    try:
        for name in ("dhcp1", "dhcp2"):  # the pair, on the older release
            config = pg_config(url, name, lease="3s", poll_interval="200ms")
            hosts.append(
                TrapdDaemon.start(
                    tmp_path / name, rules=rules, config=config, timeout=60, env={"PYTHONPATH": str(old_code)}
                )
            )
        a, b = hosts
        # dhcp1 upgraded: stopped, the schema migrated under the running dhcp2, started new.
        a.stop()
        r = trapd("journal", "--config", str(a.config_path), "migrate")
        assert r.returncode == 0 and f"8 -> {SCHEMA_VERSION}" in r.stdout, (r.stdout, r.stderr)
        a.env = {}
        a.launch()
        a.wait_ready(60)
        for i in (1, 2, 3):  # to both hosts, as a switch sends them
            for d in (a, b):
                assert send(d, i, 300_000 + i) == 0
        for i in (11, 12):  # to the older host only: it journals and claims them itself
            assert send(b, i, 300_000 + i) == 0
        wait_for(lambda: states(url)["done"] == 5, timeout=120, what="five actions done")
        m = lines(out)
        assert all(m[f"end {i}"] == 1 for i in (1, 2, 3, 11, 12)), m
        with psycopg.connect(url) as conn:
            owners = dict(
                conn.execute("SELECT key, owner FROM trapd_actions WHERE state = 'done'").fetchall()
            )
        assert owners["port-11"] == "dhcp2" and owners["port-12"] == "dhcp2", owners
        status, health = b.healthz()
        assert status == 200, health
        # Nothing the older host did on the newer schema was an error. (The site plugin of the
        # test's virtualenv, this tree's, does not load into the older release: not the upgrade's.)
        errors = [
            e for e in b.log if e.get("level") == "error" and e.get("event") != "action plugin failed to load"
        ]
        assert not errors, errors
        # The upgraded host dies running an action: the older one takes it over and reruns it.
        assert send(a, 21, 300_021) == 0
        kill_while_running(a, url, "dhcp1")
        wait_for(lambda: states(url)["done"] == 6, timeout=120, what="dhcp2 finished port 21")
        taken = b.wait_log("took over the running actions of a host that stopped renewing its claims")
        assert taken[0]["from"] == ["dhcp1"], taken
        assert lines(out)["end 21"] >= 1
        # And the other way: the older host dies running one, the upgraded one takes it over.
        a.launch()
        a.wait_ready(60)
        assert send(b, 22, 300_022) == 0
        kill_while_running(b, url, "dhcp2")
        wait_for(lambda: states(url)["done"] == 7, timeout=120, what="dhcp1 finished port 22")
        taken = a.wait_log("took over the running actions of a host that stopped renewing its claims")
        assert taken[-1]["from"] == ["dhcp2"], taken
        assert lines(out)["end 22"] >= 1
        # The older host restarted without its upgrade: refused, loudly, saying what to do.
        b.launch()
        assert b.wait_exit(60) != 0
        assert any("upgrade trapd" in str(e) for e in b.log), b.log[-5:]
        r = run_old(old_code, "-m", "trapd", "journal", "--config", str(b.config_path), "list", cwd=tmp_path)
        assert r.returncode != 0 and "upgrade trapd" in r.stderr, (r.stdout, r.stderr)
    finally:
        for d in hosts:
            d.stop()


def copy_code(src: Path, dst: Path, actions: str) -> None:
    """``src``/trapd and ``src``/``actions`` as ``dst``/trapd and ``dst``/trapd_actions."""
    ignore = shutil.ignore_patterns("__pycache__")
    shutil.copytree(src / "trapd", dst / "trapd", ignore=ignore)
    shutil.copytree(src / actions, dst / "trapd_actions", ignore=ignore)


@needs_netsnmp
def test_the_files_replaced_under_the_running_older_release(tmp_path: Path, old_code: Path) -> None:
    """`pip install -U` replaces trapd's files under the running trapd; until `systemctl restart`
    the older release runs on: a reload, a worker the supervisor restarts (forked from it), its
    traps and its stop must not pick up a module of the newer release that does not fit. Then
    the restart starts the newer release."""
    code = tmp_path / "site-packages"
    copy_code(old_code, code, "trapd_actions")
    work = tmp_path / "host"
    rules = RULES_EXEC.format(marks=work / "marks")
    d = TrapdDaemon.start(
        work, rules=rules, config={"service": {"workers": 2}}, timeout=60, env={"PYTHONPATH": str(code)}
    )
    try:
        assert snmp_send("snmptrap", *link_down(d.target(), 1)).returncode == 0
        wait_for(lambda: marks(work) == Counter(["1"]), what="trap 1 acted on")
        # `pip install -U`: the files are the newer release's now.
        shutil.rmtree(code)
        copy_code(REPO, code, "actions")
        d.signal(signal.SIGHUP)
        d.wait_log(lambda e: e.get("event") == "reloaded" and "workers" in e, timeout=60)
        pids = d.wait_log(lambda e: e.get("event") == "trapd ready" and "pids" in e)[0]["pids"]
        os.kill(pids[0], signal.SIGKILL)  # forked again from the supervisor, after the files changed
        d.wait_log("worker died, restarting it", timeout=60)
        d.wait_log(
            lambda e: e.get("event") == "worker ready" and e.get("pid") not in (None, *pids), timeout=60
        )
        for i in (2, 3, 4):
            assert snmp_send("snmptrap", *link_down(d.target(), i)).returncode == 0
        wait_for(lambda: marks(work) == Counter(["1", "2", "3", "4"]), what="traps 2-4 acted on")
        assert d.stop() == 0
        errors = [
            e
            for e in d.log
            if e.get("level") == "error"
            and e.get("event") not in ("action plugin failed to load", "worker died, restarting it")
        ]
        assert not errors, errors
        # `systemctl restart trapd`: the newer release, on the journal the older one wrote.
        first = len(d.log)
        d.launch()
        # Its own "ready" (the READY=1 the reload sent is still on the notify socket).
        d.wait_log(lambda e: e.get("event") == "trapd ready" and "pids" in e, timeout=60, count=2)
        assert snmp_send("snmptrap", *link_down(d.target(), 5)).returncode == 0
        wait_for(lambda: marks(work)["5"] == 1, what="trap 5 acted on")
        assert d.stop() == 0
        assert not [e for e in d.log[first:] if e.get("level") == "error"], d.log[first:]
        assert marks(work) == Counter(["1", "2", "3", "4", "5"])
    finally:
        d.stop()
