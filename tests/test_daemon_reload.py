"""SIGHUP (``systemctl reload``): good and bad rule files, listener settings, and no trap lost meanwhile."""

from __future__ import annotations

import importlib
import os
import re
import signal
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import pytest
from daemon_harness import IF_INDEX, LINK_DOWN, LINK_UP, TrapdDaemon, link_down
from daemon_harness import V3_USER as HARNESS_V3_USER
from listen_harness import needs_netsnmp, snmp_send

pytestmark = [pytest.mark.integration, needs_netsnmp]

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _loadgen() -> ModuleType:
    # bench/ holds scripts, not a package (as in test_bench_smoke.py).
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("loadgen")


def log_rule(name: str, notification: str, message: str) -> str:
    return f"""\
  - name: {name}
    match:
      notification: {notification}
    actions:
      - action: log
        level: warning
        message: "{message}"
"""


DOWN_A = "rules:\n" + log_rule("port-down", "IF-MIB::linkDown", "A down {{ ifIndex }}")


def logged(d: TrapdDaemon, text: str, timeout: float = 5.0) -> None:
    d.wait_log(lambda e: e.get("event") == text, timeout)


def reload(d: TrapdDaemon) -> dict[str, str]:
    """SIGHUP and the READY=1 that ends the reload (checking RELOADING=1 came first)."""
    assert d.notify is not None
    d.notify.pending()  # room in the queue: trapd drops a message rather than block on a full one
    d.signal(signal.SIGHUP)
    d.notify.wait_for("RELOADING", timeout=10)
    return d.notify.wait_for("READY", timeout=10)


def test_good_rules_take_effect_for_the_next_trap(tmp_path: Path) -> None:
    d = TrapdDaemon.start(tmp_path, rules=DOWN_A)
    try:
        snmp_send("snmptrap", *link_down(d.target(), 1), check=True)
        logged(d, "A down 1")

        d.rules_path.write_text(
            "rules:\n"
            + log_rule("port-down", "IF-MIB::linkDown", "B down {{ ifIndex }}")
            + log_rule("port-up", "IF-MIB::linkUp", "B up {{ ifIndex }}")
        )
        ready = reload(d)
        assert "FAILED" not in ready.get("STATUS", "")
        d.wait_log("reloaded")
        snmp_send("snmptrap", *link_down(d.target(), 2), check=True)
        snmp_send("snmptrap", *link_down(d.target(), 2, trap=LINK_UP), check=True)
        logged(d, "B down 2")
        logged(d, "B up 2")
        assert not d.logs("A down 2")
        scrape = d.metrics()
        assert d.metric("trapd_reloads_total", scrape, result="ok") == 1
        assert d.metric("trapd_reloads_total", scrape, result="failed") == 0
        assert d.metric("trapd_config_last_reload_successful", scrape) == 1
        assert d.metric("trapd_rule_matches_total", scrape, rule="port-up") == 1
        assert d.stop() == 0
    finally:
        d.close()


def test_a_bad_rules_file_keeps_the_old_rules_and_says_why(tmp_path: Path) -> None:
    d = TrapdDaemon.start(tmp_path, rules=DOWN_A)
    try:
        good = d.rules_path.read_text()
        # Line 9, column 9: a parameter the log action does not have.
        d.rules_path.write_text(good.rstrip("\n") + "\n        colour: red\n")
        ready = reload(d)
        where = f"{d.rules_path}:9:9"
        assert "reload failed" in ready["STATUS"] and where in ready["STATUS"], ready
        (failed,) = d.wait_log("reload failed, keeping the running configuration")
        assert failed["level"] == "error" and where in failed["error"], failed

        # The old rules still run ...
        snmp_send("snmptrap", *link_down(d.target(), 5), check=True)
        logged(d, "A down 5")
        # ... and the failure is counted and stays visible until a good reload.
        scrape = d.metrics()
        assert d.metric("trapd_reloads_total", scrape, result="failed") == 1
        assert d.metric("trapd_config_last_reload_successful", scrape) == 0
        assert d.metric("trapd_notifications_received_total", scrape) == 1
        assert d.notify is not None
        status = d.notify.wait_for("STATUS", timeout=3)["STATUS"]
        assert "last reload FAILED" in status and where in status, status
        status_code, health = d.healthz()
        assert status_code == 200 and where in health["last_reload"], health

        d.rules_path.write_text(good)
        ready = reload(d)
        assert "FAILED" not in ready["STATUS"], ready
        scrape = d.metrics()
        assert d.metric("trapd_reloads_total", scrape, result="ok") == 1
        assert d.metric("trapd_config_last_reload_successful", scrape) == 1
        assert d.stop() == 0
    finally:
        d.close()


def test_a_reload_that_leaves_no_rules_is_warned_about(tmp_path: Path) -> None:
    """A rules file emptied (a deploy that truncated it, a wrong branch) is valid YAML: the reload
    succeeds and nothing runs any more; the log says so, as for no rule files at all."""
    d = TrapdDaemon.start(tmp_path, rules=DOWN_A)
    try:
        assert not d.logs(
            "the rule files hold no rules: notifications are received and counted, nothing runs"
        )
        d.rules_path.write_text("# nothing here yet\n")
        reload(d)
        (line,) = d.wait_log(
            "the rule files hold no rules: notifications are received and counted, nothing runs"
        )
        assert line["level"] == "warning" and line["files"] == [str(d.rules_path)], line
        assert d.stop() == 0
    finally:
        d.close()


def test_a_reload_that_disables_every_rule_and_a_misspelt_rules_dir_are_warned_about(tmp_path: Path) -> None:
    """Every rule `enabled: false` runs nothing, as no rules do; a rules.dir that is not there
    loaded none of its rules and nothing said so. Both are logged, as `trapd check` warns."""
    d = TrapdDaemon.start(tmp_path, rules=DOWN_A, config={"rules": {"dir": "rulse.d"}})
    try:
        (line,) = d.wait_log(lambda e: "rulse.d is not a directory" in str(e.get("event")))
        assert line["level"] == "warning" and line["where"].startswith(f"{d.config_path}:"), line
        d.rules_path.write_text(DOWN_A.replace("    match:\n", "    enabled: false\n    match:\n"))
        assert "enabled: false" in d.rules_path.read_text()
        reload(d)
        (line,) = d.wait_log(
            "every rule is disabled (enabled: false): notifications are received and counted, nothing runs"
        )
        assert line["level"] == "warning" and line["files"] == [str(d.rules_path)], line
        assert d.stop() == 0
    finally:
        d.close()


def test_a_bad_trapd_yaml_keeps_everything(tmp_path: Path) -> None:
    d = TrapdDaemon.start(tmp_path, rules=DOWN_A)
    try:
        good = d.config_path.read_text()
        d.config_path.write_text(good + "mode: sometimes\n")
        ready = reload(d)
        assert f"{d.config_path}:" in ready["STATUS"] and "mode" in ready["STATUS"], ready
        snmp_send("snmptrap", *link_down(d.target(), 6), check=True)
        logged(d, "A down 6")
        assert d.stop() == 0
    finally:
        d.close()


@pytest.mark.parametrize("fifo", ["rules file", "file in the rules directory"])
def test_a_fifo_among_the_rules_fails_the_reload_and_keeps_the_old_rules(tmp_path: Path, fifo: str) -> None:
    """Before, the reload thread opened the FIFO and waited for a writer for ever: no reload again."""
    rules_dir = tmp_path / "rules.d"
    rules_dir.mkdir()
    d = TrapdDaemon.start(tmp_path, rules=DOWN_A, config={"rules": {"dir": str(rules_dir)}})
    try:
        named = d.rules_path if fifo == "rules file" else rules_dir / "more.yaml"
        named.unlink(missing_ok=True)
        os.mkfifo(named)
        ready = reload(d)
        problem = f"{named}:1:1: cannot read: not a regular file (a FIFO)"
        assert "reload failed" in ready["STATUS"] and problem in ready["STATUS"], ready
        snmp_send("snmptrap", *link_down(d.target(), 7), check=True)
        logged(d, "A down 7")

        # The reload thread is free: the next reload, with the FIFO gone, works.
        named.unlink()
        if fifo == "rules file":
            named.write_text(DOWN_A.replace("A down", "B down"))
        ready = reload(d)
        assert "FAILED" not in ready["STATUS"], ready
        snmp_send("snmptrap", *link_down(d.target(), 8), check=True)
        logged(d, ("B" if fifo == "rules file" else "A") + " down 8")
        assert d.stop() == 0
    finally:
        d.close()


def test_reload_applies_communities_mode_and_log_level(tmp_path: Path) -> None:
    d = TrapdDaemon.start(tmp_path, rules=DOWN_A)
    try:
        snmp_send("snmptrap", *link_down(d.target(), 1), check=True)
        logged(d, "A down 1")
        d.wait_log("action done")  # info level: logged before the reload

        d.write_config({"listener": {"communities": ["s3cret"]}, "service": {"log": {"level": "warning"}}})
        reload(d)
        snmp_send("snmptrap", *link_down(d.target(), 2), check=True)  # community public: now refused
        snmp_send("snmptrap", *link_down(d.target(), 3, community="s3cret"), check=True)
        logged(d, "A down 3")
        time.sleep(0.3)
        assert not d.logs("A down 2")
        assert d.wait_metric("trapd_actions_total", 2, plugin="log", outcome="done") == 2
        scrape = d.metrics()
        assert d.metric("trapd_notifications_dropped_total", scrape, reason="unknown-community") == 1
        assert d.metric("trapd_notifications_received_total", scrape) == 2
        # Level warning: the second action's "action done" (info) is not logged any more.
        assert len(d.logs("action done")) == 1

        d.write_config({"listener": {"communities": ["s3cret"]}, "mode": "dry-run"})
        reload(d)
        snmp_send("snmptrap", *link_down(d.target(), 4, community="s3cret"), check=True)
        (dry,) = d.wait_log("dry-run: would run")
        assert dry["rule"] == "port-down"
        assert not d.logs("A down 4")
        assert d.stop() == 0
    finally:
        d.close()


V3_USER = {**HARNESS_V3_USER, "engine_ids": ["8000000001020304"]}
V3_TRAP = ["-v", "3", "-e", "0x8000000001020304", "-u", "mon", "-l", "authPriv", "-a", "SHA-256"]
V3_TRAP += ["-A", "auth-secret-1", "-x", "AES", "-X", "priv-secret-1"]


def test_reload_applies_v3_users_and_allowed_sources(tmp_path: Path) -> None:
    d = TrapdDaemon.start(tmp_path, rules=DOWN_A)
    try:
        v3_down = [*V3_TRAP, d.target(), "", LINK_DOWN, f"{IF_INDEX}.7", "i", "7"]
        snmp_send("snmptrap", *v3_down, check=True)  # no v3 user yet: dropped
        assert d.wait_metric("trapd_notifications_dropped_total", 1, reason="unknown-user") == 1

        d.write_config({"listener": {"v3_users": [V3_USER]}})
        reload(d)
        snmp_send("snmptrap", *v3_down, check=True)
        logged(d, "A down 7")
        assert d.metric("trapd_notifications_received_total", version="v3") == 1

        # allowed_sources without loopback: trapd's own traps are now refused before decoding.
        d.write_config({"listener": {"v3_users": [V3_USER], "allowed_sources": ["10.0.0.0/8"]}})
        reload(d)
        snmp_send("snmptrap", *link_down(d.target(), 8), check=True)
        assert d.wait_metric("trapd_notifications_dropped_total", 1, reason="source-not-allowed") == 1
        assert not d.logs("A down 8")
        assert d.metric("trapd_notifications_received_total") == 1
        assert d.stop() == 0
    finally:
        d.close()


SEQ_RULES = """\
rules:
  - name: numbered
    match:
      notification: IF-MIB::linkDown
    actions:
      - action: log
        level: warning
        message: "{prefix} {{{{ varbinds['1.3.6.1.4.1.99999.1.1'].display }}}}"
        key: "{{{{ varbinds['1.3.6.1.4.1.99999.1.1'].display }}}}"   # one lane per trap: run in parallel
"""
SEQ_LINE = re.compile(r"^seq-(a|b) (\d{10})$")


def test_no_trap_is_lost_while_reloading(tmp_path: Path) -> None:
    """2,000 numbered traps at 2,000/s while the rules are swapped five times: every one acted on once."""
    loadgen = _loadgen()
    total = 2000
    messages = loadgen.build_messages(loadgen.LoadSpec(version="v2c"), 1, total)
    d = TrapdDaemon.start(tmp_path, rules=SEQ_RULES.format(prefix="seq-a"))
    try:
        sender = loadgen.open_sender(*d.address)
        report: list[object] = []
        thread = threading.Thread(target=lambda: report.append(loadgen.pace(sender, messages, 2000.0, 10.0)))
        thread.start()
        reloads = 0
        try:
            time.sleep(0.1)
            for prefix in ("seq-b", "seq-a", "seq-b", "seq-a", "seq-b"):
                d.rules_path.write_text(SEQ_RULES.format(prefix=prefix))
                reload(d)
                reloads += 1
                time.sleep(0.1)
        finally:
            thread.join(15)
            sender.close()
        (sent,) = report
        assert sent.sent == total and sent.errors == 0, sent  # type: ignore[attr-defined]
        assert reloads == 5

        assert d.wait_metric("trapd_notifications_received_total", total, timeout=20) == total
        lines = d.wait_log(lambda e: bool(SEQ_LINE.match(str(e.get("event", "")))), 30, count=total)
        seqs = sorted(int(SEQ_LINE.match(e["event"]).group(2)) for e in lines)  # type: ignore[union-attr]
        assert seqs == list(range(1, total + 1))  # each exactly once
        prefixes = {SEQ_LINE.match(e["event"]).group(1) for e in lines}  # type: ignore[union-attr]
        assert prefixes == {"a", "b"}  # the swaps happened while traffic flowed
        scrape = d.metrics()
        assert d.metric("trapd_reloads_total", scrape, result="ok") == 5
        assert d.metric("trapd_rule_matches_total", scrape, rule="numbered") == total
        assert d.metric("trapd_notifications_dropped_total", scrape) == 0
        assert d.metric("trapd_socket_drops_total", scrape) == 0
        assert d.stop() == 0
    finally:
        d.close()


def shadowed_pair(first: str, second: str) -> str:
    """Two rules where the second can never match: the first takes every linkDown and stops."""
    wide = log_rule(first, "IF-MIB::linkDown", "wide")
    return "rules:\n" + wide + log_rule(second, "IF-MIB::linkDown", "never")


def test_rule_warnings_are_logged_with_their_place_at_start_and_on_reload(tmp_path: Path) -> None:
    """The rules load despite a warning, and the journal says where it is, as trapd check does."""
    d = TrapdDaemon.start(tmp_path, rules=shadowed_pair("wide", "never"))
    try:
        first = d.wait_log("rule warning")[0]
        assert first["where"].startswith(f"{d.rules_path}:9:"), first  # the second rule's line
        assert "'never' can never match" in first["problem"], first

        d.rules_path.write_text(shadowed_pair("wide", "hidden"))
        reload(d)
        d.wait_log("reloaded")
        again = d.wait_log(lambda e: e.get("event") == "rule warning" and "'hidden'" in e["problem"])[0]
        assert again["where"].startswith(f"{d.rules_path}:9:"), again
        # They were warnings: the rules serve.
        snmp_send("snmptrap", *link_down(d.target(), 3), check=True)
        logged(d, "wide")
    finally:
        d.close()


def test_many_rule_warnings_are_logged_as_the_first_ones_and_a_count(tmp_path: Path) -> None:
    rules = "rules:\n" + log_rule("wide", "IF-MIB::linkDown", "wide")
    rules += "".join(log_rule(f"never-{i}", "IF-MIB::linkDown", "never") for i in range(25))
    d = TrapdDaemon.start(tmp_path, rules=rules)
    try:
        more = d.wait_log("more rule warnings not logged: trapd check lists them all")[0]
        assert more["more"] == 5
        assert len(d.logs("rule warning")) == 20
    finally:
        d.close()


def test_counters_by_rule_follow_the_rules_a_reload_keeps(tmp_path: Path) -> None:
    """trapd_rule_matches_total kept a series for every rule name matched since the start: a site
    whose generated rule names change (a version, a switch renamed) grew the label set, the
    daemon's memory and every scrape at each reload (100,000 rules: 7 MB and 100,000 series more
    each time), and with workers, the message that carries them to the supervisor. A reload now
    keeps the counts of the rules it keeps, and drops those of the rules it removed."""
    d = TrapdDaemon.start(
        tmp_path,
        rules="rules:\n"
        + log_rule("kept", "IF-MIB::linkDown", "kept {{ ifIndex }}")
        + log_rule("gone", "IF-MIB::linkUp", "gone {{ ifIndex }}"),
    )
    try:
        snmp_send("snmptrap", *link_down(d.target(), 1), check=True)
        snmp_send("snmptrap", *link_down(d.target(), 1, trap=LINK_UP), check=True)
        logged(d, "kept 1")
        logged(d, "gone 1")
        scrape = d.metrics()
        assert d.metric("trapd_rule_matches_total", scrape, rule="gone") == 1

        d.rules_path.write_text(
            "rules:\n"
            + log_rule("kept", "IF-MIB::linkDown", "kept {{ ifIndex }}")
            + log_rule("renamed", "IF-MIB::linkUp", "renamed {{ ifIndex }}")
        )
        assert "FAILED" not in reload(d).get("STATUS", "")
        d.wait_log("reloaded")
        snmp_send("snmptrap", *link_down(d.target(), 2, trap=LINK_UP), check=True)
        logged(d, "renamed 2")
        scrape = d.metrics()
        assert d.metric("trapd_rule_matches_total", scrape, rule="kept") == 1
        assert d.metric("trapd_rule_matches_total", scrape, rule="renamed") == 1
        assert [k for k in scrape if ("rule", "gone") in k[1]] == []  # no series of a removed rule
        assert d.stop() == 0
    finally:
        d.close()
