"""What `trapd run` says at start-up about its configuration, in a real daemon's log."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from daemon_harness import TrapdDaemon

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
