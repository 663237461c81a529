"""What `trapd run` says at start-up about its configuration, in a real daemon's log."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from daemon_harness import TrapdDaemon, eventually

pytestmark = pytest.mark.integration


def test_settings_for_a_plugin_that_is_not_installed_are_warned_about(tmp_path: Path) -> None:
    # A typo under actions: (or a plugin package that is missing) would otherwise be ignored in silence.
    d = TrapdDaemon.start(tmp_path, rules="rules: []\n", config={"actions": {"acme.tickt": {"url": "x"}}})
    try:
        [line] = d.wait_log("settings for an action plugin that is not installed")
        assert line["plugin"] == "acme.tickt"
        assert line["level"] == "warning"
        assert not d.logs("settings for an action plugin that is not installed")[1:]  # once
    finally:
        assert d.stop() == 0


def test_a_reload_that_adds_settings_for_a_missing_plugin_warns_too(tmp_path: Path) -> None:
    d = TrapdDaemon.start(tmp_path, rules="rules: []\n")
    try:
        assert not d.logs("settings for an action plugin that is not installed")
        assert d.notify is not None
        d.write_config({"actions": {"acme.tickt": {"url": "x"}}})
        d.notify.pending()
        d.signal(signal.SIGHUP)
        d.wait_log("reloaded")
        [line] = d.wait_log("settings for an action plugin that is not installed")
        assert line["plugin"] == "acme.tickt"
    finally:
        assert d.stop() == 0


def assert_warned(d: TrapdDaemon) -> None:
    assert any("visible to every local user" in str(line) for line in d.log)


ONE_RULE = """
rules:
  - name: note
    match: {notification: IF-MIB::linkDown}
    actions: [{action: log, message: down}]
"""


def test_a_community_on_the_command_line_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--community public` puts the community in argv, which every local user can read (ps,
    /proc/PID/cmdline); env:VAR and file:PATH keep it out, as trapd.yaml's references do."""
    from daemon_harness import IF_INDEX, LINK_DOWN
    from listen_harness import snmp_send

    monkeypatch.setenv("TRAPD_TEST_COMMUNITY", "s3cret-comm")
    (tmp_path / "community").write_text("other-comm\n")
    d = TrapdDaemon.start(
        tmp_path / "trapd",
        rules=ONE_RULE,
        args=("--community", "env:TRAPD_TEST_COMMUNITY", "--community", f"file:{tmp_path / 'community'}"),
    )
    try:
        assert d.proc is not None
        argv = (Path("/proc") / str(d.proc.pid) / "cmdline").read_bytes()
        assert b"s3cret-comm" not in argv and b"other-comm" not in argv
        for community in ("s3cret-comm", "other-comm", "public"):  # public: trapd.yaml's, replaced
            snmp_send(
                "snmptrap", "-v", "2c", "-c", community, d.target(), "", LINK_DOWN, f"{IF_INDEX}.1", "i", "1"
            )
        assert d.wait_metric("trapd_notifications_received_total", 2) == 2
        assert d.wait_metric("trapd_notifications_dropped_total", 1, reason="unknown-community") == 1
        assert not any("visible to every local user" in str(line) for line in d.log)
        assert d.stop() == 0
    finally:
        d.close()
    # Plain text still works, with a warning that says where it can be read.
    d = TrapdDaemon.start(tmp_path / "plain", rules=ONE_RULE, args=("--community", "public"))
    try:
        eventually(lambda: assert_warned(d))
        assert d.stop() == 0
    finally:
        d.close()
