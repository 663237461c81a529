"""Logging: one event per line, the right format for where it goes, secrets never printed."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from trapd.secrets import Secret
from trapd.service.logging import RateLimitedLog, configure_logging, get_logger, resolve_format


@pytest.fixture(autouse=True)
def _restore_logging() -> Iterator[None]:
    yield
    configure_logging("info", "console", sys.stderr)


def _json_lines(buf: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buf.getvalue().splitlines()]


def test_json_lines_carry_the_ids_that_follow_a_trap() -> None:
    buf = io.StringIO()
    assert configure_logging("info", "json", buf) == "json"
    log = get_logger("trapd.dispatch").bind(event_id="01HZX", rule="port-down")
    log.info("action done", action_id="01HZX-0", plugin="kea.lease_del", elapsed=0.012)
    log.warning("multi\nline\nmessage", detail="a\nb")
    (first, second) = _json_lines(buf)  # exactly two lines: newlines are escaped inside JSON
    assert list(first)[:4] == ["ts", "level", "logger", "event"]
    assert first["level"] == "info"
    assert first["logger"] == "trapd.dispatch"
    assert first["event"] == "action done"
    assert (first["event_id"], first["rule"], first["action_id"]) == ("01HZX", "port-down", "01HZX-0")
    assert first["ts"].endswith("Z")
    assert second["event"] == "multi\nline\nmessage"


def test_console_format_is_key_value_without_colours() -> None:
    buf = io.StringIO()
    configure_logging("info", "console", buf)
    get_logger("trapd.listener").info("listening", address="0.0.0.0:162", sockets=2)
    line = buf.getvalue()
    assert line.count("\n") == 1
    assert "\x1b[" not in line
    assert "[info" in line and "listening" in line
    assert "address=0.0.0.0:162" in line and "sockets=2" in line
    assert "[trapd.listener]" in line


def test_journal_format_prefixes_the_syslog_priority() -> None:
    buf = io.StringIO()
    configure_logging("debug", "journal", buf)
    log = get_logger("t")
    log.debug("d")
    log.info("i")
    log.warning("w")
    log.error("e")
    log.critical("c")
    lines = buf.getvalue().splitlines()
    assert [line[:3] for line in lines] == ["<7>", "<6>", "<4>", "<3>", "<2>"]
    assert json.loads(lines[2][3:])["event"] == "w"


def test_auto_picks_console_on_a_terminal() -> None:
    master, slave = pty.openpty()
    try:
        with open(slave, "w", closefd=False) as tty:
            assert resolve_format("auto", tty) == "console"
    finally:
        os.close(master)
        os.close(slave)


def test_auto_picks_journal_when_stdout_is_the_journal_stream(tmp_path: Path) -> None:
    with open(tmp_path / "out", "w") as f:
        st = os.fstat(f.fileno())
        assert resolve_format("auto", f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}) == "journal"
        assert resolve_format("auto", f, {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}) == "json"
        assert resolve_format("auto", f, {}) == "json"
    assert resolve_format("auto", io.StringIO(), {}) == "json"


def test_auto_through_configure_logging_uses_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with open(tmp_path / "out", "w") as f:
        st = os.fstat(f.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert configure_logging("info", "auto", f) == "journal"
        get_logger("t").info("to the journal")
    assert (tmp_path / "out").read_text().startswith("<6>{")


def test_level_filters_and_a_reconfigure_reaches_cached_loggers() -> None:
    buf = io.StringIO()
    log = get_logger("trapd.level")
    configure_logging("warning", "json", buf)
    log.debug("no")
    log.info("no")
    log.warning("yes-1")
    assert not log.is_enabled_for("info")
    configure_logging("debug", "json", buf)  # what a reload with a new level does
    log.debug("yes-2")
    assert log.is_enabled_for("debug")
    assert [e["event"] for e in _json_lines(buf)] == ["yes-1", "yes-2"]


def test_log_with_numeric_and_named_levels() -> None:
    buf = io.StringIO()
    configure_logging("info", "json", buf)
    log = get_logger("t")
    log.log(logging.WARNING, "numeric")
    log.log("error", "named")
    log.log(logging.DEBUG, "filtered")
    assert [(e["level"], e["event"]) for e in _json_lines(buf)] == [
        ("warning", "numeric"),
        ("error", "named"),
    ]


def test_bad_level_or_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log level"):
        configure_logging("verbose", "json", io.StringIO())
    with pytest.raises(ValueError, match="log format"):
        configure_logging("info", "xml", io.StringIO())


class _HoldsSecret:
    def __init__(self, value: str) -> None:
        self.value = value

    def __repr__(self) -> str:
        return f"<conn password={self.value}>"


@pytest.mark.parametrize("fmt", ["json", "console", "journal"])
def test_secrets_are_masked_everywhere(fmt: str) -> None:
    community = Secret("c0mmunity-Xy9").reveal()
    kea_pw = Secret("kea-pa55word").reveal()
    buf = io.StringIO()
    configure_logging("debug", fmt, buf)
    log = get_logger("trapd.secrets-test")
    log.info(f"auth failed for {community}", url=f"http://admin:{kea_pw}@127.0.0.1:8000/")
    log.info("nested", body={"arguments": {"secret": "plain-value"}, "note": [kea_pw, b"c0mmunity-Xy9"]})
    log.info(
        "keys",
        password="not-registered",
        community="public",
        auth_key="k",
        headers={"Authorization": "Bearer t"},
    )
    log.info("repr", conn=_HoldsSecret(kea_pw))
    try:
        raise RuntimeError(f"Kea refused {kea_pw}")
    except RuntimeError:
        log.exception("call failed")
    logging.getLogger("httpx").warning("request to %s failed", f"http://u:{kea_pw}@kea/")
    out = buf.getvalue()
    for leaked in (community, kea_pw, "plain-value", "not-registered", "Bearer t"):
        assert leaked not in out, (leaked, out)
    assert "public" not in out
    assert out.count("***") >= 9
    assert len(out.splitlines()) >= 6


def test_short_values_are_not_registered_as_secrets() -> None:
    Secret("ab")
    buf = io.StringIO()
    configure_logging("info", "json", buf)
    get_logger("t").info("table ab cd")
    assert _json_lines(buf)[0]["event"] == "table ab cd"


def test_stdlib_logging_is_routed_and_noisy_libraries_held_to_warning() -> None:
    buf = io.StringIO()
    configure_logging("debug", "json", buf)
    logging.getLogger("pysnmp.carrier").info("chatty")
    logging.getLogger("apscheduler.scheduler").info("Added job")
    logging.getLogger("httpx").debug("HTTP Request")
    logging.getLogger("pysnmp.carrier").warning("socket %s closed", "udp")
    logging.getLogger("trapd_actions.site").debug("plugin detail")
    try:
        raise ValueError("bad")
    except ValueError:
        logging.getLogger("apscheduler.executors").exception("job crashed")
    events = _json_lines(buf)
    assert [(e["logger"], e["event"], e["level"]) for e in events] == [
        ("pysnmp.carrier", "socket udp closed", "warning"),
        ("trapd_actions.site", "plugin detail", "debug"),
        ("apscheduler.executors", "job crashed", "error"),
    ]
    assert "ValueError: bad" in events[2]["exception"]


def test_stdlib_logging_follows_the_configured_level() -> None:
    buf = io.StringIO()
    configure_logging("error", "json", buf)
    logging.getLogger("trapd_actions.site").warning("below error")
    logging.getLogger("trapd_actions.site").error("shown")
    assert [e["event"] for e in _json_lines(buf)] == ["shown"]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_rate_limited_log_writes_one_line_per_key_per_interval_with_counts() -> None:
    buf = io.StringIO()
    configure_logging("info", "json", buf)
    clock = FakeClock()
    rl = RateLimitedLog(get_logger("trapd.kea"), interval=10.0, clock=clock)
    assert rl.warning("kea-down:dhcp4", "kea endpoint unreachable", endpoint="dhcp4", n=0)
    for i in range(1, 500):
        clock.now += 0.01
        assert not rl.warning("kea-down:dhcp4", "kea endpoint unreachable", endpoint="dhcp4", n=i)
    assert rl.error("other", "another key is independent")
    clock.now += 10
    assert rl.warning("kea-down:dhcp4", "kea endpoint unreachable", endpoint="dhcp4", n=500)
    events = _json_lines(buf)
    assert [(e["event"], e.get("suppressed"), e.get("n")) for e in events] == [
        ("kea endpoint unreachable", None, 0),
        ("another key is independent", None, None),
        ("kea endpoint unreachable", 499, 500),
    ]


def test_rate_limited_log_flush_writes_held_back_counts() -> None:
    buf = io.StringIO()
    configure_logging("info", "json", buf)
    clock = FakeClock()
    rl = RateLimitedLog(get_logger("t"), interval=5.0, clock=clock)
    rl.warning("k", "action failed", attempt=1)
    rl.warning("k", "action failed", attempt=2)
    rl.warning("k", "action failed", attempt=3)
    rl.flush()  # interval not over: nothing
    assert len(_json_lines(buf)) == 1
    clock.now += 6
    rl.flush()
    rl.flush()  # nothing left to write
    events = _json_lines(buf)
    assert [(e.get("attempt"), e.get("suppressed")) for e in events] == [(1, None), (3, 2)]
    rl.warning("k", "action failed", attempt=4)
    rl.flush(force=True)
    assert len(_json_lines(buf)) == 3  # attempt 4 is held back, then forced out with suppressed=1
    assert _json_lines(buf)[-1]["suppressed"] == 1


def test_rate_limited_log_bounds_its_keys() -> None:
    buf = io.StringIO()
    configure_logging("info", "json", buf)
    clock = FakeClock()
    rl = RateLimitedLog(get_logger("t"), interval=60.0, max_keys=3, clock=clock)
    for source in ("a", "b", "c"):
        rl.warning(source, "bad source", source=source)
        rl.warning(source, "bad source", source=source)  # held back
    rl.warning("d", "bad source", source="d")  # evicts "a", writing its held-back count first
    events = _json_lines(buf)
    assert [(e["source"], e.get("suppressed")) for e in events] == [
        ("a", None),
        ("b", None),
        ("c", None),
        ("a", 1),
        ("d", None),
    ]
    assert len(rl._keys) == 3


@pytest.mark.parametrize("fmt", ["json", "console", "journal"])
def test_control_characters_in_values_cannot_forge_lines_or_drive_a_terminal(fmt: str) -> None:
    """Issue 14 item 7: a varbind with CR/LF/ESC/C1 reaches the log escaped, in every format."""
    hostile = "eth0\r\n2026-01-01T00:00:00Z [info     ] forged  by=attacker\x1b[2J\x85\u2028\x00end"
    buf = io.StringIO()
    configure_logging("info", fmt, buf)
    log = get_logger("trapd.listener")
    log.warning(f"trap from {hostile}", ifDescr=hostile, values=[hostile], **{f"k{hostile}": 1})
    try:
        raise ValueError(hostile)
    except ValueError:
        log.exception("decode failed", value=hostile)
    out = buf.getvalue()
    for raw in ("\r", "\x1b", "\x85", "\u2028", "\x00"):
        assert raw not in out, (raw, out)
    lines = out.split("\n")
    assert lines[-1] == ""
    # Every line of output is either the start of one of the two events or (console) an
    # indented traceback line: the forged "[info     ] forged" never starts a line.
    starts = [line for line in lines[:-1] if not line.startswith(" ")]
    assert len(starts) == 2, out
    assert "trap from eth0" in starts[0] and "decode failed" in starts[1]
    if fmt == "console":
        assert "ifDescr='eth0\\r\\n2026-01-01T00:00:00Z [info" in starts[0]
        assert "\\x1b[2J" in starts[0]
    else:
        body = starts[0][3:] if fmt == "journal" else starts[0]
        assert json.loads(body)["ifDescr"] == hostile
