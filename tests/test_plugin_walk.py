"""A plugin author's walk through docs/plugins.md, taken literally, against an installed trapd.

The package is made of the doc's own code blocks (each starts with the comment
naming its file: ``# src/acme_trapd/__init__.py``, ``# pyproject.toml``,
``# tests/test_ticket.py``...), pip-installed into a venv that has trapd's
wheel (tests/wheel_harness.py, built once per session) the way the doc's
"Installing" says. Then what the doc promises: the doc's tests pass with the
kit, ``trapd actions`` lists the actions with their documentation, ``trapd
check`` points at a wrong parameter by file:line:column, and a real trap
makes ``trapd run`` call the action, which reaches its (loopback) tracker.
"""

from __future__ import annotations

import json
import re
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import TrapdDaemon, eventually, link_down
from listen_harness import snmp_send
from wheel_harness import InstalledTrapd, run

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "plugins.md"


def doc_files() -> dict[str, str]:
    """The doc's code blocks that name their file in their first line: path -> text."""
    blocks = re.findall(r"^```(?:python|toml)\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.S | re.M)
    files: dict[str, str] = {}
    for block in blocks:
        first = block.split("\n", 1)[0]
        named = re.fullmatch(r"# ([\w./-]+\.(?:py|toml))", first)
        if named:
            files[named.group(1)] = block
    return files


@pytest.fixture(scope="module")
def acme(trapd_venv: InstalledTrapd, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The doc's package in a directory of its own, installed into trapd's venv."""
    src = tmp_path_factory.mktemp("walk") / "acme-trapd"
    for name, text in doc_files().items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_text(text, encoding="utf-8")
    # --no-build-isolation: built with the setuptools at hand, no index (CI may be offline).
    trapd_venv.pip_install("--no-build-isolation", src, cwd=src.parent)
    return src


def test_the_doc_shows_a_whole_package() -> None:
    assert {
        "pyproject.toml", "src/acme_trapd/__init__.py", "src/acme_trapd/kea.py", "tests/test_ticket.py",
        "tests/test_release.py", "tests/test_rule.py", "tests/test_dispatched.py",
    } <= set(doc_files())  # fmt: skip


def test_the_docs_tests_pass_in_the_plugins_own_package(trapd_venv: InstalledTrapd, acme: Path) -> None:
    """`pytest tests` from the package's directory, with the kit of the installed trapd."""
    out = run(trapd_venv.python, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider",
              "tests", cwd=acme, env=trapd_venv.env).stdout  # fmt: skip
    assert re.search(r"\b6 passed\b", out), out


def test_the_package_type_checks_against_the_installed_trapd(trapd_venv: InstalledTrapd, acme: Path) -> None:
    """`mypy --strict src tests`, as a typed plugin package runs it: trapd's wheel ships py.typed,
    and what the doc imports (trapd.plugin, trapd.params, trapd.testing) is exported and typed."""
    mypy = [trapd_venv.python, "-m", "mypy", "--strict", "--cache-dir", acme / ".mypy_cache"]
    out = run(*mypy, "src", "tests", cwd=acme, env=trapd_venv.env).stdout
    assert out.startswith("Success: no issues found in 6 source files"), out


def test_trapd_actions_lists_them_with_their_documentation(trapd_venv: InstalledTrapd, acme: Path) -> None:
    listed = run(trapd_venv.trapd, "actions", cwd=acme, env=trapd_venv.env).stdout
    assert "acme.ticket\n    Open a ticket in ACME's tracker.\n    queue: string, required" in listed
    assert "acme.release  [idempotent, destructive, key: ip]\n" in listed
    shown = run(trapd_venv.trapd, "actions", "acme.ticket", cwd=acme, env=trapd_venv.env).stdout
    assert 'text: "{{ source }} reported {{ trap_name }}"' in shown  # the docstring's example


def test_trapd_check_points_at_a_wrong_parameter(trapd_venv: InstalledTrapd, acme: Path) -> None:
    rules = acme / "rules.yaml"
    rules.write_text(
        "rules:\n"
        "  - name: ticket\n"
        "    match: {notification: IF-MIB::linkDown}\n"
        "    actions:\n"
        "      - action: acme.ticket\n"
        "        queue: [netops]\n"
        "        txt: hi\n"
        "      - {action: acme.release, ip: 'fe80::1', cap: {limit: 5, per: 1m}}\n",
        encoding="utf-8",
    )
    proc = subprocess.run([trapd_venv.trapd, "check", "rules.yaml"], cwd=acme, env=trapd_venv.env,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    assert proc.returncode == 1
    problems = [line.split(": error: ")[0] for line in proc.stdout.splitlines() if ": error: " in line]
    # text missing (the action's line), queue not a string, txt unknown, fe80::1 not an ipv4.
    expected = ["rules.yaml:5:17", "rules.yaml:6:16", "rules.yaml:7:9", "rules.yaml:8:36"]
    assert problems == expected, proc.stdout


class Tracker:
    """ACME's ticket tracker on loopback: records each POST, answers 201 with a ticket id."""

    def __init__(self) -> None:
        self.tickets: list[dict[str, Any]] = []
        tickets = self.tickets

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                tickets.append({"path": self.path, "json": json.loads(body)})
                answer = json.dumps({"id": len(tickets)}).encode()
                self.send_response(201)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/api"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def tracker() -> Iterator[Tracker]:
    t = Tracker()
    yield t
    t.server.shutdown()
    t.server.server_close()


def test_a_real_trap_runs_it(
    trapd_venv: InstalledTrapd, acme: Path, tracker: Tracker, tmp_path: Path
) -> None:
    rules = (
        "rules:\n"
        "  - name: ticket-port-down\n"
        "    match: {notification: IF-MIB::linkDown}\n"
        "    actions:\n"
        "      - action: acme.ticket\n"
        "        queue: netops\n"
        '        text: "{{ source }} reported {{ trap_name }}"\n'
    )
    d = TrapdDaemon.start(
        tmp_path, rules=rules, config={"actions": {"acme.ticket": {"url": tracker.url}}},
        python=trapd_venv.python, env={"PYTHONPATH": ""},
    )  # fmt: skip
    try:
        snmp_send("snmptrap", *link_down(d.target()))
        (done,) = d.wait_log("action done")
        assert tracker.tickets == [
            {"path": "/api", "json": {"queue": "netops", "text": "127.0.0.1 reported IF-MIB::linkDown"}}
        ]
        assert done["action"] == "acme.ticket"
        journal = [trapd_venv.trapd, "journal", "-c", d.config_path, "list", "--state", "done", "--json"]
        shown = eventually(lambda: run(*journal, cwd=tmp_path, env=trapd_venv.env).stdout.strip())
        (entry,) = map(json.loads, shown.splitlines())  # JSON lines
        assert entry["result"] == {"ticket": 1}
    finally:
        d.close()
    # It ran in the venv's trapd, not this work tree's.
    assert d.python == str(trapd_venv.python)
