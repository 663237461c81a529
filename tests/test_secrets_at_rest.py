"""Secrets are neither stored in the journal nor printed (issue 14, item 10).

A real ``trapd run`` with a community from the environment, ``actions.exec.env``
in trapd.yaml, a secret ``exec`` env parameter and a webhook header in the
rules. The actions must get the real values (the program and the HTTP server
see them), while the journal's files, ``trapd journal list/show/history`` and
the log never hold them.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import TrapdDaemon, link_down
from listen_harness import needs_netsnmp, snmp_send

pytestmark = [pytest.mark.integration, needs_netsnmp]

COMMUNITY = "c0mmunity-s3cret"
SETTING_FROM_ENV = "setting-env-s3cret"
SETTING_INLINE = "setting-inline-s3cret"
PARAM_ENV = "param-env-s3cret"
PARAM_INLINE = "param-inline-s3cret"
HEADER = "Bearer hook-s3cret-token"
SECRETS = (COMMUNITY, SETTING_FROM_ENV, SETTING_INLINE, PARAM_ENV, PARAM_INLINE, HEADER.split()[1])


class Hook(BaseHTTPRequestHandler):
    seen: list[str] = []
    tokens: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Hook.seen.append(str(self.headers.get("Authorization")))
        Hook.tokens.append(str(self.headers.get("X-Token")))
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook_url() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    Hook.seen = []
    Hook.tokens = []
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    finally:
        server.shutdown()
        server.server_close()


def test_secrets_reach_the_actions_but_not_the_journal_or_any_output(
    tmp_path: Path, hook_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_COMMUNITY", COMMUNITY)
    monkeypatch.setenv("TEST_SETTING", SETTING_FROM_ENV)
    monkeypatch.setenv("TEST_PARAM", PARAM_ENV)
    seen = tmp_path / "seen.txt"
    script = tmp_path / "record.sh"
    # It also prints them, as a script under `set -x` does: trapd logs a program's output.
    environment = tmp_path / "environment.txt"  # what each run's environment held
    script.write_text(
        f'#!/bin/sh\necho "$S_ENV $S_INLINE $P_ENV $P_INLINE" | tee -a {seen}\nenv >> {environment}\n'
    )
    script.chmod(0o755)
    rules = f"""
rules:
  - name: down
    match: {{notification: IF-MIB::linkDown}}
    actions:
      - action: exec
        argv: [{script}]
        env: {{P_ENV: {{env: TEST_PARAM}}, P_INLINE: {PARAM_INLINE}, PORT: "{{{{ ifIndex }}}}"}}
      - action: webhook
        url: {hook_url}
        headers: {{Authorization: "{HEADER}"}}
"""
    config = {
        "listener": {"communities": [{"env": "TEST_COMMUNITY"}]},
        "actions": {"exec": {"env": {"S_ENV": {"env": "TEST_SETTING"}, "S_INLINE": SETTING_INLINE}}},
    }
    d = TrapdDaemon.start(tmp_path / "trapd", rules=rules, config=config)
    try:
        snmp_send("snmptrap", *link_down(d.target(), 5, community=COMMUNITY))
        # v1 (its community in snmpTrapCommunity.0), with the ifIndex the rule renders into PORT.
        snmp_send(
            "snmptrap", "-v", "1", "-c", COMMUNITY, d.target(), "1.3.6.1.4.1.9", "127.0.0.1", "2", "0", "",
            "1.3.6.1.2.1.2.2.1.1.6", "i", "6",
        )  # fmt: skip
        assert d.wait_metric("trapd_actions_total", 2, timeout=30, plugin="exec", outcome="done") == 2
        assert d.wait_metric("trapd_actions_total", 1, timeout=30, plugin="webhook", outcome="done") >= 1
    finally:
        d.stop()
    # The actions got the real values.
    assert seen.read_text().split()[:4] == [SETTING_FROM_ENV, SETTING_INLINE, PARAM_ENV, PARAM_INLINE]
    assert Hook.seen and Hook.seen[0] == HEADER
    # The v1 trap's snmpTrapCommunity.0 binding reached the script, but not the community in it.
    assert "TRAPD_VB_SNMPTRAPCOMMUNITY=" in environment.read_text()
    assert COMMUNITY not in environment.read_text()
    # Nothing at rest holds them: the journal's files, byte for byte.
    files = [p for p in d.state_dir.iterdir() if p.name.startswith("journal")]
    assert files
    for path in files:
        data = path.read_bytes()
        for secret in SECRETS:
            assert secret.encode() not in data, (secret, path.name)
    # Nothing prints them: the journal commands, and the daemon's log.
    outputs = []
    for argv in (["list", "--state", "done"], ["list", "--state", "all"], ["history"], ["--json", "history"]):
        outputs.append(_journal(d.state_dir, *argv))
    ids = [json.loads(line)["id"] for line in _journal(d.state_dir, "--json", "history").splitlines()]
    assert len(ids) >= 3
    for id_ in ids:
        outputs.append(_journal(d.state_dir, "show", str(id_)))
        outputs.append(_journal(d.state_dir, "--json", "show", str(id_)))
    outputs.append(json.dumps(d.log))
    for text in outputs:
        for secret in SECRETS:
            assert secret not in text, (secret, text[:3000])


def _journal(state_dir: Path, *argv: str) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "trapd", "journal", "--state-dir", str(state_dir), *argv],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout + r.stderr


def test_a_secret_is_resolved_when_the_action_runs_after_a_restart(
    tmp_path: Path, hook_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The journal holds only the reference; the value comes from the rules (and environment) at run time."""
    monkeypatch.setenv("TEST_HOOK_TOKEN", "env-hook-s3cret")
    rules = f"""
rules:
  - name: down
    match: {{notification: IF-MIB::linkDown}}
    actions:
      - action: webhook
        url: {hook_url}
        delay: 3s
        headers: {{Authorization: "{HEADER}", X-Token: {{env: TEST_HOOK_TOKEN}}}}
"""
    d = TrapdDaemon.start(tmp_path / "trapd", rules=rules)
    try:
        snmp_send("snmptrap", *link_down(d.target(), 5))
        assert d.wait_metric("trapd_journal_entries", 1, timeout=30, state="scheduled") >= 1
    finally:
        assert d.stop() == 0
    assert Hook.seen == []  # it was still waiting when trapd stopped
    for path in d.state_dir.iterdir():
        if path.name.startswith("journal"):
            data = path.read_bytes()
            assert HEADER.split()[1].encode() not in data and b"env-hook-s3cret" not in data
    d.launch()
    d.wait_ready()
    try:
        assert d.wait_metric("trapd_actions_total", 1, timeout=30, plugin="webhook", outcome="done") >= 1
    finally:
        d.stop()
    assert Hook.seen == [HEADER] and Hook.tokens == ["env-hook-s3cret"]


def test_a_community_round_trips_as_a_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    """to_dict gives the reference; from_dict resolves it when this process knows it (listen | test)."""
    from trapd.dispatch.testing import make_event
    from trapd.event import Event
    from trapd.secrets import Secret

    monkeypatch.setenv("TEST_RT_COMMUNITY", "rt-c0mmunity")
    Secret.from_config({"env": "TEST_RT_COMMUNITY"})
    ev = make_event()
    ev = Event.from_dict({**ev.to_dict(), "security": {"community": "rt-c0mmunity"}})
    d = ev.to_dict()
    assert d["security"]["community"] == {"$secret": "env:TEST_RT_COMMUNITY"}
    assert "rt-c0mmunity" not in json.dumps(d)
    assert Event.from_dict(d).security.community == "rt-c0mmunity"
    unknown = {**d, "security": {"community": {"$secret": "nowhere.yaml:1:1"}}}
    assert Event.from_dict(unknown).security.community == "<secret nowhere.yaml:1:1>"


@pytest.mark.parametrize("value", ['pass"word-1', "back\\slash-2", "m\u00f6tley-cr\u00fce-3", "tab\there-4"])
def test_a_secret_that_json_escapes_is_masked_in_a_stored_result(value: str) -> None:
    # The journal stores a result as JSON, where " \\ non-ASCII and control characters are written
    # escaped: the secret's own text is not in it, so masking only that text missed it.
    from trapd.dispatch.journal.rows import dumps_result
    from trapd.secrets import Secret

    Secret(value, "test")
    stored = dumps_result({"stdout": f"the password is {value}\n", "error": value})
    assert value not in json.loads(stored)["stdout"] and value not in stored
    assert json.dumps(value)[1:-1] not in stored
    assert json.loads(stored) == {"stdout": "the password is ***\n", "error": "***"}


URL_TOKEN = "T000/B000/url-s3cret-TOKEN"


class EchoHook(BaseHTTPRequestHandler):
    """An incoming-webhook receiver that quotes the request's path in its answer, as some do."""

    paths: list[str] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        EchoHook.paths.append(self.path)
        answer = f"no such hook: {self.path}".encode()
        self.send_response(503 if self.path.startswith("/fail/") else 200)
        self.send_header("Content-Length", str(len(answer)))
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, *args: Any) -> None:
        pass


def test_a_webhook_url_from_the_environment_is_never_shown(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A Slack/Teams/Mattermost URL carries its token in the path: written {env: NAME}, the hook
    # gets it (with a trap value appended), while the journal, its commands, trapd test and the
    # log never show it; an error names the receiver's host.
    server = ThreadingHTTPServer(("127.0.0.1", 0), EchoHook)
    EchoHook.paths = []
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    host = f"127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("TEST_HOOK_URL", f"http://{host}/hook/{URL_TOKEN}")
    monkeypatch.setenv("TEST_HOOK_FAIL_URL", f"http://{host}/fail/{URL_TOKEN}")
    rules = """
rules:
  - name: down
    match: {notification: IF-MIB::linkDown}
    actions:
      - action: webhook
        url: {env: TEST_HOOK_URL}
        url_suffix: "/port/{{ ifIndex }}"
      - action: webhook
        url: {env: TEST_HOOK_FAIL_URL}
"""
    d = TrapdDaemon.start(tmp_path / "trapd", rules=rules)
    try:
        snmp_send("snmptrap", *link_down(d.target(), 5))
        assert d.wait_metric("trapd_actions_total", 1, timeout=30, plugin="webhook", outcome="done") >= 1
        assert d.wait_metric("trapd_actions_total", 1, timeout=30, plugin="webhook", outcome="retry") >= 1
    finally:
        d.stop()
        server.shutdown()
        server.server_close()
    assert f"/hook/{URL_TOKEN}/port/5" in EchoHook.paths and f"/fail/{URL_TOKEN}" in EchoHook.paths
    for path in d.state_dir.iterdir():
        if path.name.startswith("journal"):
            assert URL_TOKEN.encode() not in path.read_bytes(), path.name
    outputs = [
        _journal(d.state_dir, "list", "--state", "all"),
        _journal(d.state_dir, "--json", "list", "--state", "all"),
        _journal(d.state_dir, "--json", "history"),
    ]
    ids = [json.loads(line)["id"] for line in outputs[-1].splitlines()]
    assert len(ids) == 2
    for id_ in ids:
        outputs.append(_journal(d.state_dir, "show", str(id_)))
        outputs.append(_journal(d.state_dir, "--json", "show", str(id_)))
    shown = "\n".join(outputs)
    assert f"http://{host}/…" in shown  # the failing hook's error names its host
    assert "env:TEST_HOOK_URL" in shown  # the parameter, as its reference
    r = subprocess.run(
        [sys.executable, "-m", "trapd", "test", "--dry-run", "--format", "json", "-r", str(d.rules_path),
         "IF-MIB::linkDown", "ifIndex=5"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0 and "env:TEST_HOOK_URL" in r.stdout, r.stdout + r.stderr
    outputs += [r.stdout + r.stderr, json.dumps(d.log)]
    for text in outputs:
        assert URL_TOKEN not in text and "url-s3cret" not in text, text[:3000]


def test_a_webhook_url_from_the_environment_in_a_dry_run_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TEST_HOOK_URL", f"http://127.0.0.1:9/hook/{URL_TOKEN}")
    rules = """
rules:
  - name: down
    match: {notification: IF-MIB::linkDown}
    actions:
      - action: webhook
        url: {env: TEST_HOOK_URL}
"""
    d = TrapdDaemon.start(tmp_path / "trapd", rules=rules, config={"mode": "dry-run"})
    try:
        snmp_send("snmptrap", *link_down(d.target(), 5))
        (line,) = d.wait_log("dry-run: would run", timeout=30)
    finally:
        d.stop()
    assert line["params"]["url"] == {"$secret": "env:TEST_HOOK_URL"}, line
    assert URL_TOKEN not in json.dumps(d.log)
    assert URL_TOKEN not in _journal(d.state_dir, "--json", "list", "--state", "all")
