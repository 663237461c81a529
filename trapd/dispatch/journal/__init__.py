"""The journal: every planned action, written down before it runs.

model.py     the data model (entries, results, filters), the :class:`Journal` interface, its errors
rows.py      the ``actions`` row as both backends store it (columns, JSON codec)
sqlite.py    :class:`SQLiteJournal`, the embedded backend (one file, a writer thread, group commits)
postgres.py  ``PostgresJournal``, the shared backend for two trapd hosts (docs/pair.md); imported
             only when ``dispatch.journal.url`` selects it

Callers import from here (``from trapd.dispatch.journal import Journal, open_journal``);
which module holds a name is the package's business.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from trapd.dispatch.journal.model import (
    ACTIVE,
    FINISHED,
    STATES,
    AddResult,
    CapCheck,
    ClaimResult,
    Entry,
    HistoryFilter,
    Journal,
    JournalDamaged,
    JournalError,
    JournalFull,
    JournalHealth,
    JournalNotice,
    NewEntry,
    State,
)
from trapd.dispatch.journal.sqlite import (
    _SCHEMA,
    CHECKPOINT_INTERVAL,
    LAZY_COMMIT_DELAY,
    SCHEMA_VERSION,
    WRITER_SWITCH_INTERVAL,
    SQLiteJournal,
    open_sqlite_journal,
)

if TYPE_CHECKING:
    from pathlib import Path

    from trapd.dispatch.config import JournalConfig


__all__ = [
    "ACTIVE",
    "CHECKPOINT_INTERVAL",
    "FINISHED",
    "LAZY_COMMIT_DELAY",
    "SCHEMA_VERSION",
    "STATES",
    "WRITER_SWITCH_INTERVAL",
    "_SCHEMA",
    "AddResult",
    "CapCheck",
    "ClaimResult",
    "Entry",
    "HistoryFilter",
    "Journal",
    "JournalDamaged",
    "JournalError",
    "JournalFull",
    "JournalHealth",
    "JournalNotice",
    "NewEntry",
    "SQLiteJournal",
    "State",
    "open_journal",
]


def open_journal(
    path: str | Path,
    config: JournalConfig | None = None,
    *,
    owner: str | None = None,
    token: str | None = None,
) -> Journal:
    """The journal ``config`` selects: PostgreSQL for ``url``, else the SQLite file at ``path``.

    ``owner``: the name of the process claiming actions through it when several share one
    journal (``worker-1``); None for a single trapd. Not opened yet: ``await journal.open()``.
    ``token`` (PostgreSQL): the token of the owner's registration among the live processes, kept
    by a worker's supervisor across the worker's restarts: the registration a killed worker left
    is then its successor's own, not a live namesake's to wait out for a whole lease (a restarted
    worker that answers nobody that long is taken for stuck and killed again). None: a new one.
    """
    if config is not None and config.url is not None:
        from trapd.dispatch.journal.postgres import PostgresJournal

        return PostgresJournal(
            config.conninfo(),
            owner=owner,
            instance=config.instance,
            max_batch=config.max_batch,
            max_queued=config.max_queued,
            lease=config.lease,
            copy_window=config.copy_window,
            token=token,
        )
    return open_sqlite_journal(path, config, owner=owner)
