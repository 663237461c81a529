"""The journal: every planned action, written down before it runs.

model.py   the data model (entries, results, filters), the :class:`Journal` interface, its errors
sqlite.py  :class:`SQLiteJournal`, the embedded backend (one file, a writer thread, group commits)

Callers import from here (``from trapd.dispatch.journal import Journal, open_journal``);
which module holds a name is the package's business.
"""

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
    JournalError,
    JournalFull,
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
    open_journal,
)

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
    "JournalError",
    "JournalFull",
    "NewEntry",
    "SQLiteJournal",
    "State",
    "open_journal",
]
