"""How a plugin tests itself: call run() with a context from trapd.dispatch.testing."""

from __future__ import annotations

from pathlib import Path

import pytest
from trapd_example_plugin import note

from trapd.dispatch.testing import make_context
from trapd.params import validate
from trapd.plugin import PermanentError


async def test_appends_a_line(tmp_path: Path) -> None:
    ctx = make_context(settings={"dir": str(tmp_path)})
    params = validate(note.params, {"file": "ports.log", "text": "sw1 port 17 down"})
    await note.run(params, ctx)
    await note.run(params, ctx)
    assert (tmp_path / "ports.log").read_text() == "sw1 port 17 down\n" * 2


async def test_refuses_paths(tmp_path: Path) -> None:
    ctx = make_context(settings={"dir": str(tmp_path)})
    with pytest.raises(PermanentError):
        await note.run({"file": "../etc/passwd", "text": "x"}, ctx)
