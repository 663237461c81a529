"""tests/pg_harness.py removes its cluster directory when initdb fails or is interrupted.

bench_journal.py --backends postgresql creates its server with PgServer(); a ^C or
SIGTERM during initdb (a second or two) left /tmp/trapd-pg-* behind.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pg_harness
import pytest


def test_an_interrupted_initdb_leaves_no_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if not (pg_harness.PG_BIN / "initdb").exists():
        pytest.skip("PostgreSQL 15 not installed")
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    tmp_path.chmod(0o755)

    def interrupted(self: Any, argv: list[str], check: bool = True) -> Any:
        raise KeyboardInterrupt  # as SIGTERM is turned into by bench/benchproc.py

    monkeypatch.setattr(pg_harness.PgServer, "_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pg_harness.PgServer(fsync=True)
    assert list(tmp_path.glob("trapd-pg-*")) == []
