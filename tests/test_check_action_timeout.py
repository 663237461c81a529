"""`trapd check` warns about an action's own timeout that dispatch.action_timeout cuts short.

The dispatcher cancels every action after dispatch.action_timeout (5 min by default), whatever the
action's parameters say: an exec rule with `timeout: 10m` (a firmware push, a backup) was killed
at 5 min as a retryable failure, and ran again from the start at each attempt.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from trapd.cli import main as trapd

RULE = """rules:
  - name: long
    match: {{notification: IF-MIB::linkDown}}
    actions:
      - action: exec
        argv: [/bin/true]
        timeout: {timeout}
"""


def check(tmp_path: Path, timeout: str, dispatch: str = "") -> tuple[int, str]:
    (tmp_path / "rules.yaml").write_text(RULE.format(timeout=timeout), encoding="utf-8")
    (tmp_path / "trapd.yaml").write_text(
        f"state_dir: {tmp_path / 'state'}\nrules: {{files: [{tmp_path / 'rules.yaml'}]}}\n{dispatch}",
        encoding="utf-8",
    )
    return trapd(["check", "--config", str(tmp_path / "trapd.yaml")]), ""


def test_an_action_timeout_past_the_dispatchers_is_warned_at_its_rule(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status, _ = check(tmp_path, "10m")
    out = capsys.readouterr().out
    assert status == 0, out  # a warning: the rule still works, cut short
    assert "rules.yaml:5:" in out and ": warning:" in out, out
    assert "timeout 600s" in out and "dispatch.action_timeout (300s)" in out, out
    assert trapd(["check", "--strict", "--config", str(tmp_path / "trapd.yaml")]) == 1


def test_no_warning_when_the_dispatcher_allows_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    status, _ = check(tmp_path, "10m", "dispatch: {action_timeout: 15m}\n")
    out = capsys.readouterr().out
    assert status == 0 and ": warning:" not in out, out
    status, _ = check(tmp_path, "30s")
    out = capsys.readouterr().out
    assert status == 0 and ": warning:" not in out, out
