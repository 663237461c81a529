"""`trapd check` and `trapd test` as netops run them."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
from rules_support import ACTIONS, event, write

from trapd.cli import main

RULES = """
sources: {access: [10.20.0.0/16]}
defaults:
  cap: {limit: 50, per: 1m, key: "{{ source }}"}
rules:
  - name: mac-removed
    match: {notification: cmnMacChangedNotification, source: access}
    foreach: {items: mac_changes, where: {operation: removed}}
    actions:
      - action: kea.lease-del
        hw-address: "{{ item.mac }}"
  - name: port-down
    match:
      notification: IF-MIB::linkDown
      varbinds: {ifOperStatus: down, ifDescr: {regex: 'Gi(?P<slot>\\d+)/0/(?P<port>\\d+)'}}
    actions:
      - action: kea.lease-del
        circuit-id: "{{ source }}:{{ ifDescr }}"
        delay: 30s
        cancel-key: "port:{{ source }}:{{ ifIndex }}"
      - action: webhook
        url: https://hooks.example/trapd
        token: s3cret-token
      - action: kea.lease-del
        ip-address: "{{ ifAlias }}"
  - name: port-up
    match: {notification: linkUp}
    cancel: "port:{{ source }}:{{ ifIndex }}"
"""


@pytest.fixture(autouse=True)
def _test_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    """The commands load installed plugins; these tests use the small specs of rules_support."""
    monkeypatch.setattr("trapd.plugin.load_actions", lambda: (dict(ACTIONS), []))


def test_trapd_test_matching_rule(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = write(tmp_path, RULES)
    words = (
        "IF-MIB::linkDown from 10.20.1.5 ifIndex=17 ifDescr=Gi1/0/17 ifOperStatus=down ifAlias=1.2.3.4;reboot"
    )
    assert main(["test", "--rules", str(rules), *words.split()]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].endswith(": IF-MIB::linkDown from 10.20.1.5 (v2c trap)")
    assert "    ifDescr.17 = Gi1/0/17" in lines
    assert (
        "  no match  mac-removed: notification IF-MIB::linkDown is not cmnMacChangedNotification "
        f"[{rules}:6:27]" in lines
    )
    assert f"  MATCH     port-down ({rules}:11:5)" in lines
    assert '      -> kea.lease-del circuit-id="10.20.1.5:Gi1/0/17" family="v4"' in lines
    assert (
        "         [enforce; delay 30s; cancel-key port:10.20.1.5:17; "
        "key kea.lease-del:circuit-id=10.20.1.5:Gi1/0/17; cap defaults 50/1m per 10.20.1.5]" in lines
    )
    assert '      -> webhook url="https://hooks.example/trapd" token="***"' in lines  # secrets masked
    assert "s3cret-token" not in out
    assert "      !! REJECTED kea.lease-del#2: ip-address: not an IP address: '1.2.3.4;reboot'" in lines
    assert "  skipped   port-up: stopped by rule port-down" in lines
    assert lines[-1] == (
        "  = 1 rule(s) matched, 2 action(s) planned, 1 rejected, 0 cancel(s); nothing was executed"
    )


def test_trapd_test_non_matching_rules_say_why(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = write(tmp_path, RULES)
    assert (
        main(["test", "-r", str(rules), "linkDown", "from", "10.20.1.5", "ifIndex=3", "ifOperStatus=up"]) == 0
    )
    lines = capsys.readouterr().out.splitlines()
    assert f"  no match  port-down: varbind ifOperStatus: 1 (up) is not down(2) [{rules}:14:18]" in lines
    assert any(
        line.startswith("  no match  port-up: notification IF-MIB::linkDown is not linkUp") for line in lines
    )
    assert lines[-1].startswith("  = 0 rule(s) matched, 0 action(s) planned")


def test_trapd_test_foreach_items_and_json_format(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = write(tmp_path, RULES)
    msg = "0x" + "02" + "0064" + "001122334455" + "0007" + "01" + "0064" + "0011223344ff" + "0008"
    argv = ["test", "-r", str(rules), "--format", "json", "cmnMacChangedNotification", "from", "10.20.0.9"]
    assert main([*argv, f"cmnHistMacChangedMsg.4={msg}"]) == 0
    doc = json.loads(capsys.readouterr().out)
    first = doc["rules"][0]
    assert first["status"] == "matched"
    assert [p["params"]["hw-address"] for p in first["planned"]] == ["00:11:22:33:44:55"]
    assert first["planned"][0]["item"]["port"] == 7
    assert doc["event"]["trap_name"] == "CISCO-MAC-NOTIFICATION-MIB::cmnMacChangedNotification"


def test_trapd_test_takes_the_compact_event_as_one_quoted_argument(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """As people paste it: the whole event in quotes, and a value with a space quoted inside."""
    rules = write(tmp_path, RULES)
    assert main(["test", "-r", str(rules), "IF-MIB::linkUp from 10.20.1.5 ifIndex=17"]) == 0
    out = capsys.readouterr().out
    assert "  MATCH     port-up" in out
    assert "-> cancel pending actions with cancel-key port:10.20.1.5:17" in out
    one = 'IF-MIB::linkDown from 10.20.1.5 ifIndex=17 ifDescr=Gi1/0/17 ifOperStatus=down ifAlias="to core"'
    assert main(["test", "-r", str(rules), "--format", "json", one]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["event"]["source"] == "10.20.1.5"
    assert {vb["name"]: vb["display"] for vb in doc["event"]["varbinds"]}["IF-MIB::ifAlias"] == "to core"
    # Separate words are taken as the shell split them: a value with a space stays whole.
    assert main(["test", "-r", str(rules), "--format", "json", "linkDown", "ifIndex=3", "ifAlias=a b"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {vb["name"]: vb["display"] for vb in doc["event"]["varbinds"]}["IF-MIB::ifAlias"] == "a b"


def test_trapd_test_refuses_an_unbalanced_quote_in_a_quoted_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Not taken into the value: ifAlias was '"uplink', and the event went through the rules."""
    rules = write(tmp_path, RULES)
    assert main(["test", "-r", str(rules), 'IF-MIB::linkDown from 10.20.1.5 ifIndex=17 ifAlias="uplink']) == 1
    captured = capsys.readouterr()
    assert captured.err == "trapd test: unbalanced quote in the event: No closing quotation\n"
    assert captured.out == ""


@pytest.mark.parametrize(
    "address", ["10.0.0.1:99999", "10.0.0.1:\u00b9", "[::1]:\u0663", "[::1]:65536", "10.0.0.1:"]
)
def test_trapd_test_refuses_a_port_that_is_not_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], address: str
) -> None:
    """A port is 0-65535 in ASCII digits (a superscript one was a traceback, 99999 was taken)."""
    rules = write(tmp_path, RULES)
    assert main(["test", "-r", str(rules), "IF-MIB::linkUp", "from", address]) == 1
    assert capsys.readouterr().err == f"trapd test: bad port in {address!r}\n"


def test_trapd_test_reads_json_lines_from_stdin(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = write(tmp_path, RULES)
    up = event("IF-MIB::linkUp from 10.20.1.5 ifIndex=17").to_dict()
    lines = json.dumps(up) + "\n\n" + "{not json\n" + json.dumps(up) + "\n"
    monkeypatch.setattr(sys, "stdin", io.StringIO(lines))
    assert main(["test", "-r", str(rules), "-"]) == 1  # one bad line: reported, the others still shown
    captured = capsys.readouterr()
    assert captured.out.count("  MATCH     port-up") == 2
    assert captured.out.count("-> cancel pending actions with cancel-key port:10.20.1.5:17") == 2
    assert "stdin:3: not an event" in captured.err


NOT_EVENTS = {
    "1": "an event is a JSON object, got int",
    "[1]": "an event is a JSON object, got list",
    "null": "an event is a JSON object, got null",
    '{"trap_oid": "1.3.6.1.6.3.1.1.5.3"}': "'source' is missing",
    '{"trap_oid": "1.3.6.1.6.3.1.1.5.3", "source": 5}': "'source' must be text, got int",
    '{"source": "10.0.0.1", "trap_oid": 5}': "'trap_oid' must be text, got int",
    '{"source": "10.0.0.1", "trap_oid": "linkDown"}': "'trap_oid': not a numeric OID: 'linkDown'",
    '{"source": "10.0.0.1", "trap_oid": "1.3.6.1.4294967296"}': (
        "'trap_oid': '1.3.6.1.4294967296' can never be in a notification: sub-identifier 4294967296 is 2^32 "
        "or more, which no SNMP message can carry"
    ),
    '{"source": "10.0.0.1", "trap_oid": "1.3.6.1.6.3.1.1.5.3", "varbinds": [{"oid": "1.3.6.1.4294967296", '
    '"type": "Integer32", "value": 1}]}': (
        "varbind 1: '1.3.6.1.4294967296' can never be in a notification: sub-identifier 4294967296 is "
        "2^32 or more, which no SNMP message can carry"
    ),
    '{"source": "10.0.0.1", "trap_oid": "1.3.6.1.6.3.1.1.5.3", "varbinds": [5]}': (
        "'varbinds' must be a list of objects"
    ),
    '{"source": "10.0.0.1", "trap_oid": "1.3.6.1.6.3.1.1.5.3", "security": 5}': (
        "'security' must be an object"
    ),
}


@pytest.mark.parametrize("line", sorted(NOT_EVENTS))
def test_trapd_test_says_what_is_wrong_with_a_json_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, line: str
) -> None:
    """Whatever JSON comes in, a line saying what is wrong with it (exit 1), never a traceback."""
    rules = write(tmp_path, RULES)
    good = json.dumps(event("IF-MIB::linkUp from 10.20.1.5 ifIndex=17").to_dict())
    monkeypatch.setattr(sys, "stdin", io.StringIO(f"{line}\n{good}\n"))
    assert main(["test", "-r", str(rules), "-"]) == 1
    captured = capsys.readouterr()
    assert captured.err == f"stdin:1: not an event: {NOT_EVENTS[line]}\n"
    assert "  MATCH     port-up" in captured.out  # the next line is still shown
    f = tmp_path / "events.json"
    f.write_text(f"[{good}, {line}]")
    assert main(["test", "-r", str(rules), str(f)]) == 1
    assert capsys.readouterr().err == f"{f}: event 2: not an event: {NOT_EVENTS[line]}\n"


def test_trapd_test_reads_a_json_event_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rules = write(tmp_path, RULES)
    f = tmp_path / "event.json"
    f.write_text(json.dumps(event("IF-MIB::linkUp from 10.20.1.5 ifIndex=5").to_dict()))
    assert main(["test", "-r", str(rules), str(f)]) == 0
    assert "  MATCH     port-up" in capsys.readouterr().out


def test_trapd_test_refuses_invalid_rules_and_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path, "rules:\n  - {name: x, match: {notification: nosuch}, cancel: y}\n", "bad.yaml")
    assert main(["test", "-r", str(bad), "linkDown"]) == 1
    assert f"{bad}:2:37: error: unknown MIB symbol 'nosuch'" in capsys.readouterr().err
    good = write(tmp_path, RULES)
    assert main(["test", "-r", str(good), "linkDown", "ifOperStatus=sideways"]) == 1
    assert "ifOperStatus: 'sideways' is not a number (labels: up, down" in capsys.readouterr().err


def test_trapd_check_runs_without_the_collector_and_restores_it(tmp_path: Path) -> None:
    """The check compiles with the cyclic collector off (its pass over 100,000 compiled rules
    cost a tenth of the check); a caller in the same process gets it back as it was."""
    import gc

    seen: list[bool] = []
    good = write(tmp_path, RULES)
    from trapd.rules import check_rules as real_check_rules

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(gc.isenabled())
        return real_check_rules(*args, **kwargs)  # type: ignore[arg-type]

    assert gc.isenabled()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("trapd.rules.check_rules", spy)
        assert main(["check", str(good)]) == 0
    assert seen == [False]
    assert gc.isenabled()


def test_trapd_check_valid_and_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = write(tmp_path, RULES)
    assert main(["check", str(good)]) == 0
    assert f"OK: {good}" in capsys.readouterr().out
    bad = write(
        tmp_path, RULES.replace("regex: 'Gi(", "regex: 'Gi((").replace("hw-address", "hw-adress"), "bad.yaml"
    )
    assert main(["check", str(bad)]) == 1
    out = [line for line in capsys.readouterr().out.splitlines() if line.startswith(str(bad))]
    assert (
        f"{bad}:10:9: error: kea.lease-del has no parameter 'hw-adress' (did you mean 'hw-address'?)"
        in out[0]
    )
    assert out[1].startswith(f"{bad}:14:55: error: ifDescr: bad regex")


def test_trapd_check_json_for_ci(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    shadow = RULES + "  - {name: never, match: {notification: linkUp, source: access}, cancel: z}\n"
    f = write(tmp_path, shadow)
    assert main(["check", "--format", "json", str(f)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["valid"] is True and doc["errors"] == 0
    (w,) = doc["problems"]  # nothing about the host's MIB directories
    assert (w["file"], w["line"], w["column"], w["severity"]) == (str(f), 28, 5, "warning")
    assert "can never match" in w["message"]
    assert main(["check", "--strict", "--format", "json", str(f)]) == 1
    capsys.readouterr()


def test_trapd_check_with_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(tmp_path, RULES, "rules.yaml")
    write(
        tmp_path,
        "rules:\n  - {name: extra, match: {notification: coldStart}, cancel: c}\n",
        "rules.d/50.yaml",
    )
    cfg = write(tmp_path, "rules: {files: [rules.yaml], dir: rules.d}\nmibs: {dirs: []}\n", "trapd.yaml")
    assert main(["check", "--config", str(cfg)]) == 0
    assert "rules.d/50.yaml" in capsys.readouterr().out
    bad_cfg = write(tmp_path, "rules: {files: [rules.yaml]}\nmodee: dry-run\n", "bad.yaml")
    assert main(["check", "--config", str(bad_cfg)]) == 1
    assert f"{bad_cfg}:2:1: error: unknown key 'modee' in trapd.yaml" in capsys.readouterr().out


def test_a_directory_stands_for_its_yaml_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    write(
        tmp_path,
        "rules:\n  - {name: b, match: {notification: linkUp}, cancel: from-b}\n",
        "rules.d/20-b.yaml",
    )
    write(
        tmp_path,
        "rules:\n  - {name: a, match: {notification: linkUp}, cancel: from-a}\n",
        "rules.d/10-a.yaml",
    )
    write(tmp_path, "not: rules", "rules.d/README.txt")
    assert main(["test", "-r", str(tmp_path / "rules.d"), "linkUp"]) == 0
    out = capsys.readouterr().out
    assert "  MATCH     a" in out and "  skipped   b: stopped by rule a" in out
    assert main(["check", str(tmp_path / "rules.d")]) == 0
    assert "10-a.yaml, " in capsys.readouterr().out


def test_check_of_a_directory_without_rule_files_checks_nothing_else(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`trapd check DIR` with no *.yaml in DIR fell back to the files trapd.yaml names, and gave
    their verdict ("OK: rules.yaml") for a directory it had not checked."""
    write(tmp_path, RULES, "rules.yaml")
    cfg = write(tmp_path, "rules: {files: [rules.yaml]}\nmibs: {dirs: []}\n", "trapd.yaml")
    empty = tmp_path / "rules.d"
    empty.mkdir()
    write(tmp_path, "rules: []\n", "rules.d/README.txt")
    assert main(["check", "--config", str(cfg), str(empty)]) == 2
    captured = capsys.readouterr()
    assert "rules.yaml" not in captured.out
    assert f"no rule files (*.yaml) in {empty}" in captured.err


def test_trapd_test_as_a_program(tmp_path: Path) -> None:
    """The real entry point, with the installed plugins, as a subprocess."""
    rules = write(
        tmp_path, "rules:\n  - {name: up, match: {notification: linkUp}, cancel: 'port:{{ ifIndex }}'}\n"
    )
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "trapd",
            "test",
            "-r",
            str(rules),
            "IF-MIB::linkUp",
            "from",
            "10.0.0.1",
            "ifIndex=9",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "  MATCH     up" in r.stdout
    assert "-> cancel pending actions with cancel-key port:9" in r.stdout


# -- a rule set that will never do anything ---------------------------------------------------
# The daemon warns at start and reload when the files hold no rules; `trapd check` said "OK"
# for the same files, and for a trapd.yaml whose rules directory is empty or missing it said
# "none named in trapd.yaml (rules: files:)" (exit 2) though the daemon runs with it.

NOTHING_RUNS = "nothing runs"


def _cfg(tmp_path: Path, rules: str) -> Path:
    (tmp_path / "state").mkdir(exist_ok=True)
    return write(
        tmp_path, f"state_dir: {tmp_path / 'state'}\nmibs: {{dirs: []}}\nrules: {rules}\n", "trapd.yaml"
    )


@pytest.mark.parametrize(
    "text", ["", "# nothing here yet\n", "rules: []\n", "sources: {core: [10.0.0.1]}\nrules:\n"]
)
def test_check_warns_about_files_that_hold_no_rules(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str
) -> None:
    f = write(tmp_path, text, "empty.yaml")
    cfg = _cfg(tmp_path, "{files: []}")
    assert main(["check", "--config", str(cfg), str(f)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2, out
    assert out[0].startswith(f"{f}:1:1: warning: ") and NOTHING_RUNS in out[0], out
    assert out[1] == f"OK: {f} (1 warning(s))", out
    assert main(["check", "--strict", "--config", str(cfg), str(f)]) == 1
    capsys.readouterr()


def test_check_warns_when_every_rule_is_disabled(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = write(
        tmp_path,
        "rules:\n  - {name: a, enabled: false, match: {notification: linkUp}, cancel: x}\n",
        "off.yaml",
    )
    assert main(["check", "--config", str(_cfg(tmp_path, "{files: []}")), str(f)]) == 0
    out = capsys.readouterr().out
    assert "every rule is disabled (enabled: false)" in out and NOTHING_RUNS in out, out
    # One enabled rule is enough.
    f.write_text(f.read_text() + "  - {name: b, match: {notification: linkDown}, cancel: y}\n")
    assert main(["check", "--config", str(_cfg(tmp_path, "{files: []}")), str(f)]) == 0
    assert capsys.readouterr().out == f"OK: {f}\n"


def test_check_of_a_trapd_yaml_whose_rules_dir_is_empty_warns(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "rules.d").mkdir()
    write(tmp_path, "rules: []\n", "rules.d/README.txt")
    cfg = _cfg(tmp_path, "{dir: rules.d}")
    assert main(["check", "--config", str(cfg)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert lines[0].startswith(f"{cfg}:3:") and "warning" in lines[0], captured
    assert f"{tmp_path / 'rules.d'}" in lines[0] and NOTHING_RUNS in lines[0], captured
    assert lines[-1].startswith("OK: ") and "1 warning(s)" in lines[-1], captured
    assert captured.err == ""


def test_check_warns_about_a_rules_dir_that_is_not_there(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A misspelt rules.dir beside listed files: the files load, the directory's rules never did,
    and nothing said so."""
    write(tmp_path, "rules:\n  - {name: a, match: {notification: linkUp}, cancel: x}\n", "rules.yaml")
    cfg = _cfg(tmp_path, "{files: [rules.yaml], dir: rulse.d}")
    assert main(["check", "--config", str(cfg)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{cfg}:3:") and "warning" in out[0], out
    assert f"{tmp_path / 'rulse.d'} is not a directory" in out[0], out
    assert out[-1] == f"OK: {tmp_path / 'rules.yaml'} (1 warning(s))", out


def test_trapd_test_refuses_json_nested_too_deep_and_goes_on(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """json.loads recurses: "[[[[..." 100,000 deep ended trapd test in a RecursionError traceback,
    and a `trapd listen | trapd test -` stream with it."""
    rules = write(tmp_path, "rules:\n  - {name: up, match: {notification: linkUp}, cancel: x}\n")
    deep = "[" * 100_000 + "]" * 100_000
    f = write(tmp_path, deep + "\n", "deep.json")
    assert main(["test", "-r", str(rules), str(f)]) == 1
    assert "nested too deep" in capsys.readouterr().err
    good = json.dumps({"trap_oid": "1.3.6.1.6.3.1.1.5.4", "source": "10.0.0.1"})
    monkeypatch.setattr("sys.stdin", io.StringIO(deep + "\n" + good + "\n"))
    assert main(["test", "-r", str(rules), "-"]) == 1
    captured = capsys.readouterr()
    assert "stdin:1: not an event: JSON nested too deep" in captured.err, captured.err
    assert "MATCH     up" in captured.out, captured.out
