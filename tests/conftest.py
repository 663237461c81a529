"""Fixtures shared by every test module.

``trapd_listen``: start ``trapd listen`` on free loopback ports and read its
JSON lines (see tests/listen_harness.py for the class and for a module-scoped
pattern that starts one trapd per module)::

    def test_v2c(trapd_listen):
        t = trapd_listen(config={"listener": {"communities": ["public"]}})
        snmp_send("snmptrap", "-v", "2c", "-c", "public", t.target(), "", "1.3.6.1.6.3.1.1.5.3")
        assert t.wait_event()["trap_name"] == "IF-MIB::linkDown"
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from listen_harness import TrapdListen


@pytest.fixture(autouse=True)
def _secret_references() -> Iterator[None]:
    """Secrets a test loads (trapd.yaml communities) are process-wide, as in a daemon; not across tests."""
    from trapd.secrets import REFS

    saved = REFS.saved()
    yield
    REFS.restore(saved)


@pytest.fixture
def trapd_listen(tmp_path: Path) -> Iterator[Callable[..., TrapdListen]]:
    """Factory: ``trapd_listen(config=..., listen=..., args=...)`` -> TrapdListen, stopped after the test."""
    started: list[TrapdListen] = []

    def start(config: dict[str, Any] | None = None, **kw: Any) -> TrapdListen:
        d = tmp_path / f"trapd{len(started)}"
        d.mkdir()
        t = TrapdListen.start(d, config, **kw)
        started.append(t)
        return t

    yield start
    for t in started:
        t.stop()


# A private PostgreSQL 15 (tests/pg_harness.py), started once per session when a test asks.
from pg_harness import pg_server, pg_url  # noqa: E402, F401

# trapd's sdist and wheel, and a venv with the wheel installed (tests/wheel_harness.py), once a session.
from wheel_harness import trapd_dist, trapd_venv  # noqa: E402, F401
