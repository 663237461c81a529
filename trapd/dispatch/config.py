"""The ``dispatch:`` section of trapd.yaml: journal, workers, retries, caps, breaker.

Every key is optional; the defaults suit one trapd in front of one Kea::

    dispatch:
      workers: 16                 # actions running at once
      queue_size: 1000            # actions held in memory; the rest wait in the journal
      action_timeout: 5m          # an action running longer counts as a retryable failure
      shutdown_timeout: 10s       # on stop, running actions get this long to finish
      interrupted: rerun          # after a crash: rerun | hold-unsafe (hold non-idempotent ones)
      journal:
        path: journal.sqlite      # relative to state_dir
        synchronous: normal       # normal | full (see docs/dispatch.md)
        max_batch: 1000           # rows per group commit
        commit_delay: 0s          # wait this long to gather a bigger batch (0: commit as soon as possible)
        max_queued: 100000        # journal writes waiting; beyond, submit raises DispatchOverloaded
        retention: 30d            # done / cancelled / dead entries older than this are pruned
        poll_interval: 1s         # how often the daemon looks for changes made by `trapd journal`
        integrity_check: 15m      # SQLite: PRAGMA quick_check of the whole file this often (0: never)
      retry:                      # defaults; a rule's `retry:` overrides them
        max_attempts: 5
        max_age: 1h               # since the trap was received
        backoff: 2s               # first retry delay, doubled each attempt
        max_backoff: 5m
        jitter: 0.5               # up to this fraction of each delay is random
      caps:                       # global rate caps, on top of the rules' own
        - name: lease-deletions
          limit: 200
          per: 1m
          by: source              # none | source | rule | action: one window per value
          actions: []             # action names; empty: every destructive action
          hold_for: 1h            # held actions expire (dead) after this
      breaker:                    # per Kea endpoint
        failures: 5               # consecutive retryable failures that open it
        cool_down: 30s            # first pause before a probe; doubles while it keeps failing
        max_cool_down: 5m
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trapd.params import ParamError, parse_duration
from trapd.secrets import Secret
from trapd.yamlsource import ConfigError, YDict, check_keys, expect, where

DEFAULT_JOURNAL_FILE = "journal.sqlite"
SYNCHRONOUS = ("normal", "full")
INTERRUPTED = ("rerun", "hold-unsafe")
CAP_BY = ("none", "source", "rule", "action")


@dataclass(frozen=True, slots=True)
class RetryDefaults:
    max_attempts: int = 5
    max_age: float = 3600.0
    backoff: float = 2.0
    max_backoff: float = 300.0
    jitter: float = 0.5


@dataclass(frozen=True, slots=True)
class GlobalCap:
    """A rate cap across rules: ``limit`` starts per ``per`` seconds for each value of ``by``."""

    name: str
    limit: int
    per: float
    by: str = "none"
    actions: tuple[str, ...] = ()  # empty: every destructive action
    hold_for: float = 3600.0

    def applies_to(self, action: str, destructive: bool) -> bool:
        return action in self.actions if self.actions else destructive


@dataclass(frozen=True, slots=True)
class BreakerConfig:
    failures: int = 5
    cool_down: float = 30.0
    max_cool_down: float = 300.0


@dataclass(frozen=True, slots=True)
class JournalConfig:
    path: Path | None = None  # None: state_dir / journal.sqlite
    synchronous: str = "normal"
    max_batch: int = 1000
    commit_delay: float = 0.0
    max_queued: int = 100_000
    retention: float = 30 * 86400.0
    poll_interval: float = 1.0
    # SQLite: seconds between checks of the whole file while trapd runs (see SQLiteJournal); 0: none.
    integrity_check: float = 900.0
    # PostgreSQL (docs/pair.md): a libpq URL or key/value string; None: the SQLite file.
    url: str | None = None
    password: Secret | None = None  # {file: ...} / {env: ...}; else libpq's own (PGPASSFILE, ...)
    instance: str | None = None  # this host's name in claims (default: the host name)
    lease: float = 30.0  # a claim not renewed for this long is taken over by another host
    copy_window: float = 300.0  # a copy of a notification journaled this recently is not journaled again

    def conninfo(self) -> str:
        """The libpq connection string, password included: for the driver, never for a log."""
        from psycopg.conninfo import make_conninfo

        assert self.url is not None
        if self.password is None:
            return make_conninfo(self.url)
        return make_conninfo(self.url, password=self.password.reveal())

    def describe(self, state_dir: Path) -> str:
        """Where the journal is, for messages: the file, or the database without its password."""
        if self.url is None:
            return str(self.file(state_dir))
        from psycopg.conninfo import conninfo_to_dict

        try:
            parts = conninfo_to_dict(self.url)
        except Exception:
            return "postgresql"
        return "postgresql: " + " ".join(f"{k}={v}" for k, v in parts.items() if k != "password")

    def file(self, state_dir: Path) -> Path:
        if self.path is None:
            return state_dir / DEFAULT_JOURNAL_FILE
        return self.path if self.path.is_absolute() else state_dir / self.path


@dataclass(frozen=True)
class DispatchConfig:
    workers: int = 16
    queue_size: int = 1000
    action_timeout: float = 300.0
    shutdown_timeout: float = 10.0
    interrupted: str = "rerun"
    journal: JournalConfig = field(default_factory=JournalConfig)
    retry: RetryDefaults = field(default_factory=RetryDefaults)
    caps: tuple[GlobalCap, ...] = ()
    breaker: BreakerConfig = field(default_factory=BreakerConfig)

    @classmethod
    def from_yaml(cls, node: Any, base_dir: Path) -> DispatchConfig:
        n = check_keys(
            node,
            {
                "workers",
                "queue_size",
                "action_timeout",
                "shutdown_timeout",
                "interrupted",
                "journal",
                "retry",
                "caps",
                "breaker",
            },
            "dispatch",
        )
        interrupted = expect(n, "interrupted", str, "dispatch", "rerun")
        if interrupted not in INTERRUPTED:
            raise ConfigError(
                f"dispatch.interrupted must be one of {', '.join(INTERRUPTED)}", where(n, "interrupted")
            )
        return cls(
            workers=_int(n, "workers", "dispatch", 16, 1, 1024),
            queue_size=_int(n, "queue_size", "dispatch", 1000, 1, 1_000_000),
            action_timeout=_duration(n, "action_timeout", "dispatch", 300.0, positive=True),
            shutdown_timeout=_duration(n, "shutdown_timeout", "dispatch", 10.0),
            interrupted=interrupted,
            journal=_journal(n.get("journal"), base_dir),
            retry=_retry(n.get("retry")),
            caps=_caps(n.get("caps")),
            breaker=_breaker(n.get("breaker")),
        )

    def caps_digest(self) -> str:
        """A digest of the global caps and retry defaults, which decide whether a planned action
        runs now, waits or is retried: the hosts sharing a journal compare it (trapd.kea.pairview).
        Caps in another order are the same caps."""
        caps = sorted(json.dumps(dataclasses.asdict(cap), sort_keys=True) for cap in self.caps)
        text = json.dumps({"caps": caps, "retry": dataclasses.asdict(self.retry)}, sort_keys=True)
        return hashlib.blake2b(text.encode(), digest_size=16).hexdigest()


def _journal(node: Any, base_dir: Path) -> JournalConfig:
    what = "dispatch.journal"
    n = check_keys(
        node,
        {
            "path",
            "synchronous",
            "max_batch",
            "commit_delay",
            "max_queued",
            "retention",
            "poll_interval",
            "integrity_check",
            "url",
            "password",
            "instance",
            "lease",
            "copy_window",
        },
        what,
    )
    sync = expect(n, "synchronous", str, what, "normal").lower()
    if sync not in SYNCHRONOUS:
        raise ConfigError(
            f"{what}.synchronous must be one of {', '.join(SYNCHRONOUS)}", where(n, "synchronous")
        )
    path = expect(n, "path", str, what)
    url = expect(n, "url", str, what)
    if url is not None and path:
        raise ConfigError(f"{what}: path (SQLite) and url (PostgreSQL) exclude each other", where(n, "url"))
    if url is not None:
        from psycopg.conninfo import conninfo_to_dict

        try:
            parts = conninfo_to_dict(url)
        except Exception as exc:
            # The message of a bad DSN may quote it, password included: say only where.
            raise ConfigError(
                f"{what}.url is not a valid libpq URL or key/value string", where(n, "url")
            ) from exc
        if "password" in parts:
            raise ConfigError(
                f"{what}.url: put the password in {what}.password "
                "({file: ...} or {env: ...}), not in the URL",
                where(n, "url"),
            )
    password = n.get("password")
    instance = expect(n, "instance", str, what)
    return JournalConfig(
        # Relative paths are relative to state_dir (resolved by JournalConfig.file), not to the config.
        path=Path(path) if path else None,
        synchronous=sync,
        max_batch=_int(n, "max_batch", what, 1000, 1, 100_000),
        commit_delay=_duration(n, "commit_delay", what, 0.0),
        max_queued=_int(n, "max_queued", what, 100_000, 100, 10_000_000),
        retention=_duration(n, "retention", what, 30 * 86400.0, positive=True),
        poll_interval=_duration(n, "poll_interval", what, 1.0, positive=True),
        integrity_check=_duration(n, "integrity_check", what, 900.0),
        url=url,
        password=Secret.from_config(password, where(n, "password")) if password is not None else None,
        instance=instance or None,
        lease=_duration(n, "lease", what, 30.0, positive=True),
        copy_window=_duration(n, "copy_window", what, 300.0),
    )


def _retry(node: Any) -> RetryDefaults:
    what = "dispatch.retry"
    n = check_keys(node, {"max_attempts", "max_age", "backoff", "max_backoff", "jitter"}, what)
    jitter = expect(n, "jitter", (int, float), what, 0.5)
    if not 0 <= jitter <= 1:
        raise ConfigError(f"{what}.jitter must be between 0 and 1", where(n, "jitter"))
    return RetryDefaults(
        max_attempts=_int(n, "max_attempts", what, 5, 1, 1000),
        max_age=_duration(n, "max_age", what, 3600.0, positive=True),
        backoff=_duration(n, "backoff", what, 2.0),
        max_backoff=_duration(n, "max_backoff", what, 300.0),
        jitter=float(jitter),
    )


def _caps(node: Any) -> tuple[GlobalCap, ...]:
    if node is None:
        return ()
    if not isinstance(node, list):
        raise ConfigError("dispatch.caps must be a list", where(node))
    caps: list[GlobalCap] = []
    for i, item in enumerate(node):
        what = f"dispatch.caps[{i}]"
        n = check_keys(item, {"name", "limit", "per", "by", "actions", "hold_for"}, what)
        name = expect(n, "name", str, what)
        if not name:
            raise ConfigError(f"{what}: name is required", where(n))
        if any(c.name == name for c in caps):
            raise ConfigError(f"{what}: duplicate cap name {name!r}", where(n, "name"))
        by = expect(n, "by", str, what, "none")
        if by not in CAP_BY:
            raise ConfigError(f"{what}.by must be one of {', '.join(CAP_BY)}", where(n, "by"))
        if "limit" not in n or "per" not in n:
            raise ConfigError(f"{what}: limit and per are required", where(n))
        actions = expect(n, "actions", list, what, [])
        if not all(isinstance(a, str) for a in actions):
            raise ConfigError(f"{what}.actions must be a list of action names", where(n, "actions"))
        caps.append(
            GlobalCap(
                name=name,
                limit=_int(n, "limit", what, 1, 0, 10_000_000),
                per=_duration(n, "per", what, 60.0, positive=True),
                by=by,
                actions=tuple(actions),
                hold_for=_duration(n, "hold_for", what, 3600.0, positive=True),
            )
        )
    return tuple(caps)


def _breaker(node: Any) -> BreakerConfig:
    what = "dispatch.breaker"
    n = check_keys(node, {"failures", "cool_down", "max_cool_down"}, what)
    return BreakerConfig(
        failures=_int(n, "failures", what, 5, 1, 1000),
        cool_down=_duration(n, "cool_down", what, 30.0, positive=True),
        max_cool_down=_duration(n, "max_cool_down", what, 300.0, positive=True),
    )


def _int(n: YDict, key: str, what: str, default: int, lo: int, hi: int) -> int:
    value: int = expect(n, key, int, what, default)
    if not lo <= value <= hi:
        raise ConfigError(f"{what}.{key} must be between {lo} and {hi}", where(n, key))
    return value


def _duration(n: YDict, key: str, what: str, default: float, *, positive: bool = False) -> float:
    if key not in n or n[key] is None:
        return default
    try:
        seconds = parse_duration(n[key])
    except ParamError as exc:
        raise ConfigError(f"{what}.{key}: {exc}", where(n, key)) from None
    if positive and seconds <= 0:
        raise ConfigError(f"{what}.{key} must be more than zero", where(n, key))
    return seconds
