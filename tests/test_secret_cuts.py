"""A text cut to the length kept (a program's output, a webhook's answer) keeps no start of a secret.

The redactor masks a secret whole: a text cut through one (at exec's RESULT_LIMIT, output_limit or
the 200 characters of an error's last line; at the webhook's ANSWER_KEPT) kept its first part, in
clear, in the journal, `trapd journal show` and the log.
"""

from __future__ import annotations

import asyncio
import io
import sys
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from trapd.dispatch.config import DispatchConfig, JournalConfig
from trapd.dispatch.dispatcher import Dispatcher
from trapd.dispatch.journal import SQLiteJournal
from trapd.dispatch.journal.model import Entry
from trapd.dispatch.testing import make_event, make_outcome, plan
from trapd.plugin import ActionSpec
from trapd.service.logging import configure_logging

TOKEN = "cut-t0ken-0123456789abcdefghijklmnopqrstuvwxyz"
START = TOKEN[:12]  # what a cut through the token leaves, and no innocent text has


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the timeout"
        await asyncio.sleep(0.02)


async def run_one(tmp_path: Path, spec: ActionSpec, params: dict[str, Any], outcome: str) -> Entry:
    """``spec`` run once by a dispatcher with ``params``; its journal entry when it is ``outcome``."""
    async with SQLiteJournal(tmp_path / "journal.sqlite") as journal:
        config = DispatchConfig(workers=1, shutdown_timeout=1.0, journal=JournalConfig(poll_interval=0.05))
        d = Dispatcher(config, journal, {spec.name: spec}, kea=None)
        await d.start()
        try:
            (id_,) = await d.submit(make_event(), make_outcome(plan(spec.name, params)))
            await until(lambda: d.stats.outcomes[(spec.name, outcome)] == 1)
        finally:
            await d.stop(0.5)
        entry = await journal.get(int(id_), with_event=False)
    assert entry is not None
    return entry


def _exec_params(program: str, **more: Any) -> dict[str, Any]:
    return {
        "argv": [sys.executable, "-c", program],
        "env": {"TOKEN": {"$secret": "env:TEST_CUT_TOKEN"}},
        **more,
    }


@pytest.fixture
def token(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("TEST_CUT_TOKEN", TOKEN)
    return TOKEN


async def test_exec_stdout_cut_at_the_result_limit_keeps_no_start_of_a_secret(
    tmp_path: Path, token: str
) -> None:
    from trapd_actions.exec import RESULT_LIMIT, exec_

    program = f"import os; print('x' * {RESULT_LIMIT - 20} + os.environ['TOKEN'])"
    entry = await run_one(tmp_path, exec_, _exec_params(program), "done")
    assert isinstance(entry.result, dict)
    stdout = str(entry.result["stdout"])
    assert stdout.startswith("x" * 100) and len(stdout) <= RESULT_LIMIT + 3, stdout[-60:]
    assert token[:8] not in stdout, stdout[-60:]


async def test_exec_error_s_last_line_cut_keeps_no_start_of_a_secret(tmp_path: Path, token: str) -> None:
    from trapd_actions.exec import exec_

    program = "import os, sys; sys.stderr.write('e' * 185 + os.environ['TOKEN'] + '\\n'); sys.exit(3)"
    entry = await run_one(tmp_path, exec_, _exec_params(program), "dead")
    assert entry.last_error is not None and "exited with 3" in entry.last_error, entry.last_error
    assert token[:8] not in entry.last_error, entry.last_error


async def test_exec_output_logged_cut_at_output_limit_keeps_no_start_of_a_secret(
    tmp_path: Path, token: str
) -> None:
    from trapd_actions.exec import exec_

    buf = io.StringIO()
    configure_logging("info", "json", buf)
    try:
        program = "import os; print('y' * 80 + os.environ['TOKEN'])"
        await run_one(tmp_path, exec_, _exec_params(program, output_limit=100), "done")
    finally:
        configure_logging("info", "console", sys.stderr)
    out = buf.getvalue()
    assert "y" * 80 in out, out
    assert token[:8] not in out, out


class EchoAuth(BaseHTTPRequestHandler):
    """A receiver whose refusal quotes the request's Authorization header, after a long text."""

    pad = 0

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        answer = ("z" * EchoAuth.pad + f"bad credentials: {self.headers.get('Authorization')}").encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def echo_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoAuth)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


async def test_a_webhook_answer_cut_at_answer_kept_keeps_no_start_of_a_secret_header(
    tmp_path: Path, token: str, echo_url: str
) -> None:
    """A URL written as text (not a secret) and a secret header: the answer was cut at ANSWER_KEPT
    before anything masked it, through the header the receiver quoted."""
    from trapd_actions.webhook import ANSWER_KEPT, webhook

    EchoAuth.pad = ANSWER_KEPT - len("bad credentials: Bearer ") - 20
    params = {"url": echo_url, "headers": {"Authorization": {"$secret": "env:TEST_CUT_AUTH"}}}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TEST_CUT_AUTH", f"Bearer {token}")
        entry = await run_one(tmp_path, webhook, params, "done")
    assert isinstance(entry.result, dict)
    answer = str(entry.result["answer"])
    assert "bad credentials: " in answer, answer[-60:]
    assert token[:8] not in answer, answer[-60:]
