"""`trapd journal show` and `list` print what an action produced through the redactor.

A result or an error is masked where it is journaled, by the secrets the writing process knew
then, in the forms it knew: a row written before (an older trapd, which knew no base64 form;
a process that had not read the secret yet) holds it in clear, and the command printed it.
The command reads trapd.yaml, whose secrets it masks in the result and the error it prints.
"""

from __future__ import annotations

import asyncio
import base64
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from trapd.dispatch.journal import NewEntry, SQLiteJournal
from trapd.dispatch.testing import make_event

PASSWORD = "kea-journal-show-s3cret"
BASIC = base64.b64encode(f"trapd:{PASSWORD}".encode()).decode()


def _entry() -> NewEntry:
    return NewEntry(
        rule="r", action="exec", index=0, params={"argv": ["curl"]}, key="k1", mode="enforce",
        state="pending", due=time.time(), max_attempts=1, backoff=1.0, max_age=3600.0,
    )  # fmt: skip


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A journal written by a process that did not know the password, and a trapd.yaml that has it."""
    # The journal masks with this process's redactor, which knows the secrets other tests in it
    # left alive (a "s3cret" of their own): masking the end of the Basic credential here, it left
    # the start of the password's base64 for the command to show, and this test failed or passed
    # by the order of the tests. The writer of a journal that knew nothing is written so here.
    from trapd.dispatch.journal import rows
    from trapd.secrets import Redactor

    monkeypatch.setattr(rows, "REDACTOR", Redactor())

    async def fill() -> None:
        async with SQLiteJournal(tmp_path / "state" / "journal.sqlite") as j:
            now = time.time()
            event = make_event().to_dict()
            for state, result, error in (
                ("done", {"stdout": f"> Authorization: Basic {BASIC}\n"}, None),
                ("dead", None, f"curl exited with 22: sent Basic {BASIC}, password {PASSWORD}"),
            ):
                r = await j.add(event, [_entry()], [], now)
                await j.claim(r.ids[0], now)
                await j.finish(r.ids[0], state, now, result, error)

    asyncio.run(fill())
    pw = tmp_path / "kea.pw"
    pw.write_text(PASSWORD + "\n")
    pw.chmod(0o600)
    endpoint = {"transport": "control-agent", "url": "http://127.0.0.1:1/", "user": "trapd", "family": "v4"}
    config = {
        "state_dir": str(tmp_path / "state"),
        "kea": {"endpoints": {"ca": {**endpoint, "password": {"file": str(pw)}}}},
    }
    (tmp_path / "trapd.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


COMMANDS = [
    ["show", "1"],
    ["show", "2"],
    ["show", "1", "--json"],
    ["show", "2", "--json"],
    ["list", "--state", "dead"],  # the NOTE column: the error
    ["list", "--state", "dead", "--json"],
    ["list", "--state", "done", "--json"],
]


@pytest.mark.parametrize("argv", COMMANDS)
def test_journal_show_and_list_mask_a_secret_journaled_in_clear(workdir: Path, argv: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "trapd", "journal", "--config", str(workdir / "trapd.yaml"), *argv],
        capture_output=True, text=True, timeout=60, cwd=workdir,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = done.stdout + done.stderr
    if argv[0] == "show":
        assert ("Authorization" in out) if argv[1] == "1" else ("exited with 22" in out), out
    for shown in (BASIC, BASIC[8:-4], BASIC[8:20], PASSWORD, json.dumps(PASSWORD)[1:-1]):
        assert shown not in out, (shown, out)
