"""The dispatch: section of trapd.yaml, and building the dispatcher from a whole config."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from trapd.config import config_from_yaml
from trapd.dispatch.config import DispatchConfig
from trapd.dispatch.plugins import open_dispatcher, unknown_settings
from trapd.dispatch.testing import make_event, make_outcome, plan
from trapd.yamlsource import ConfigError, load_yaml

FULL = """
dispatch:
  workers: 8
  queue_size: 500
  action_timeout: 2m
  shutdown_timeout: 5s
  interrupted: hold-unsafe
  journal:
    path: j/journal.sqlite
    synchronous: full
    max_batch: 200
    commit_delay: 2ms
    max_queued: 5000
    retention: 7d
    poll_interval: 500ms
  retry: {max_attempts: 7, max_age: 2h, backoff: 1s, max_backoff: 1m, jitter: 0.25}
  caps:
    - {name: deletions, limit: 50, per: 1m, by: source, actions: [kea.lease-del], hold_for: 30m}
  breaker: {failures: 3, cool_down: 10s, max_cool_down: 2m}
"""


def parse(text: str) -> DispatchConfig:
    node = load_yaml(text, "trapd.yaml")
    return DispatchConfig.from_yaml(node["dispatch"], Path("/etc/trapd"))


def test_every_key() -> None:
    c = parse(FULL)
    assert (c.workers, c.queue_size, c.action_timeout, c.shutdown_timeout, c.interrupted) == (
        8, 500, 120.0, 5.0, "hold-unsafe",
    )  # fmt: skip
    j = c.journal
    assert (j.synchronous, j.max_batch, j.commit_delay, j.max_queued, j.retention, j.poll_interval) == (
        "full", 200, 0.002, 5000, 7 * 86400.0, 0.5,
    )  # fmt: skip
    assert j.file(Path("/var/lib/trapd")) == Path("/var/lib/trapd/j/journal.sqlite")
    assert (c.retry.max_attempts, c.retry.max_age, c.retry.backoff, c.retry.max_backoff, c.retry.jitter) == (
        7, 7200.0, 1.0, 60.0, 0.25,
    )  # fmt: skip
    (cap,) = c.caps
    assert (cap.name, cap.limit, cap.per, cap.by, cap.actions, cap.hold_for) == (
        "deletions", 50, 60.0, "source", ("kea.lease-del",), 1800.0,
    )  # fmt: skip
    assert cap.applies_to("kea.lease-del", True) and not cap.applies_to("log", True)
    assert (c.breaker.failures, c.breaker.cool_down, c.breaker.max_cool_down) == (3, 10.0, 120.0)


def test_defaults() -> None:
    c = DispatchConfig.from_yaml(None, Path("."))
    assert c == DispatchConfig()
    assert c.journal.file(Path("/var/lib/trapd")) == Path("/var/lib/trapd/journal.sqlite")
    # A cap without actions covers every destructive action.
    assert parse("dispatch:\n  caps: [{name: all, limit: 1, per: 1s}]\n").caps[0].applies_to("x", True)


@pytest.mark.parametrize(
    ("text", "message", "where"),
    [
        ("dispatch:\n  workerz: 3\n", "unknown key 'workerz' in dispatch (did you mean 'workers'?)", "2:3"),
        ("dispatch:\n  workers: 0\n", "dispatch.workers must be between 1 and 1024", "2:12"),
        ("dispatch:\n  journal: {synchronous: fast}\n", "synchronous must be one of normal, full", "2:26"),
        ("dispatch:\n  retry: {backoff: soon}\n", "dispatch.retry.backoff: not a duration", "2:20"),
        ("dispatch:\n  caps: [{name: a, limit: 1}]\n", "limit and per are required", "2:10"),
        ("dispatch:\n  caps: [{name: a, limit: 1, per: 1s, by: port}]\n", "by must be one of", "2:43"),
        ("dispatch:\n  interrupted: ignore\n", "interrupted must be one of rerun, hold-unsafe", "2:16"),
    ],
)
def test_errors_say_where(text: str, message: str, where: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(text)
    assert message in str(exc.value)
    assert str(exc.value).startswith(f"trapd.yaml:{where}:")


async def test_open_dispatcher_from_trapd_yaml(tmp_path: Path) -> None:
    text = "state_dir: state\ndispatch: {workers: 2}\nactions: {log: {}, nonexistent.plugin: {x: 1}}\n"
    config = config_from_yaml(load_yaml(text, "trapd.yaml"), tmp_path / "trapd.yaml")
    d = await open_dispatcher(config, None)
    try:
        assert d.journal.path == tmp_path / "state" / "journal.sqlite"  # type: ignore[attr-defined]
        assert {"log", "exec", "webhook"} <= set(d.actions)
        assert unknown_settings(d.actions, config.actions) == ["nonexistent.plugin"]
        await d.start()
        ids = await d.submit(make_event(), make_outcome(plan("log", {"message": "hello"})))
        deadline = time.monotonic() + 3
        while (entry := await d.journal.get(int(ids[0]))) is not None and entry.state != "done":
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await d.stop()
    finally:
        await d.journal.close()


def test_postgresql_journal_url_and_password(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pw = tmp_path / "pg.pw"
    pw.write_text("s3cret-pw\n")
    c = parse(
        "dispatch:\n  journal:\n    url: postgresql://trapd@db1.example/trapd?sslmode=require\n"
        f"    password: {{file: {pw}}}\n    instance: dhcp1\n    lease: 10s\n"
    )
    j = c.journal
    assert (j.instance, j.lease) == ("dhcp1", 10.0)
    assert "password=s3cret-pw" in j.conninfo() and "sslmode=require" in j.conninfo()
    assert "s3cret-pw" not in j.describe(Path("/var/lib/trapd")) and "db1.example" in j.describe(Path("/"))
    assert "s3cret-pw" not in repr(j)
    # A key/value DSN, the password from the environment.
    monkeypatch.setenv("TRAPD_PG_PW", "from-env-pw")
    j = parse(
        "dispatch:\n  journal:\n    url: host=/run/pg dbname=trapd\n    password: {env: TRAPD_PG_PW}\n"
    ).journal
    assert "password=from-env-pw" in j.conninfo() and "host=/run/pg" in j.conninfo()


@pytest.mark.parametrize(
    ("journal", "message"),
    [
        ("{url: 'postgresql://u:pw@h/db'}", "put the password in dispatch.journal.password"),
        ("{url: 'host=h password=pw'}", "put the password in dispatch.journal.password"),
        (
            "{url: 'postgresql://h/db', path: j.sqlite}",
            "path (SQLite) and url (PostgreSQL) exclude each other",
        ),
        ("{url: 'host=h = x'}", "dispatch.journal.url is not a valid libpq URL"),
        ("{url: 'postgresql://h/db', password: {vault: x}}", "a secret is a string"),
    ],
)
def test_postgresql_journal_errors(journal: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse(f"dispatch:\n  journal: {journal}\n")
    assert message in str(exc.value)
    assert "pw" not in str(exc.value).replace("password", "")
