"""YAML alias bombs are refused fast, with file:line (issue 14, item 8).

A 725-byte file of nested aliases ("billion laughs") expands to a billion
nodes. Loading it must fail in well under a second with a clear file:line
error, for ``trapd check``, at start-up and on SIGHUP (the running rules
stay). Each run of the real command is limited in time and address space so
that an unbounded expansion fails the test instead of the machine.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from daemon_harness import TrapdDaemon, link_down
from listen_harness import needs_netsnmp, snmp_send

from trapd.yamlsource import ConfigError, Mark, load_yaml


def bomb(levels: int = 9, width: int = 10) -> str:
    """The classic: each level is a list of ``width`` aliases of the level below (width**levels leaves)."""
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        refs = ", ".join([f"*a{i - 1}"] * width)
        lines.append(f"a{i}: &a{i} [{refs}]")
    return "\n".join(lines) + "\n"


def rules_bomb() -> str:
    """A rules file whose one rule's match condition is the bomb (the compiler walks conditions)."""
    return (
        "x-bomb:\n"
        + "".join(f"  {line}\n" for line in bomb().splitlines())
        + "rules:\n  - name: r\n    match: {notification: IF-MIB::linkDown, all: [*a8]}\n"
        + "    actions: [{action: log, message: hi}]\n"
    )


def test_the_bomb_is_small() -> None:
    assert len(bomb()) < 800


def test_load_yaml_refuses_an_alias_bomb_with_its_position() -> None:
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as info:
        load_yaml(bomb(), "bomb.yaml")
    # The refusal takes milliseconds; the expansion it prevents takes minutes and gigabytes. The
    # bound is loose so that a loaded machine cannot fail it.
    assert time.monotonic() - t0 < 20.0
    err = info.value
    assert "alias" in err.message and err.mark is not None and err.mark.file == "bomb.yaml"
    assert err.mark.line >= 2, str(err)


def test_many_aliases_are_refused() -> None:
    text = "base: &b {limit: 1}\nl: [" + ", ".join(["*b"] * 20_000) + "]\n"
    with pytest.raises(ConfigError, match="alias"):
        load_yaml(text, "many.yaml")


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(ConfigError, match="alias"):
        load_yaml("a: &a [1, *a]\n", "loop.yaml")


def test_ordinary_anchors_and_merges_still_work() -> None:
    text = "caps: &cap {limit: 50, per: 1m}\nr1: {cap: *cap}\nr2:\n  <<: *cap\n  key: x\n"
    data = load_yaml(text, "ok.yaml")
    assert data["r1"]["cap"] == {"limit": 50, "per": "1m"}
    assert data["r2"] == {"limit": 50, "per": "1m", "key": "x"}


def test_a_key_beside_a_merge_overrides_the_merged_one() -> None:
    """YAML's merge key: the mapping's own keys override the merged ones (and between merged
    mappings, as PyYAML reads them). Such a key was refused as a duplicate of the anchor's key."""
    text = (
        "base: &b {version: v2c, kind: trap}\nother: &o {version: v1, user: x}\n"
        "r1:\n  <<: *b\n  version: v3\nr2:\n  <<: [*b, *o]\n"
    )
    data = load_yaml(text, "ok.yaml")
    assert data["r1"] == {"version": "v3", "kind": "trap"}
    assert data["r1"].key_marks["version"].line == 5  # the override's own position
    assert data == yaml.safe_load(text)
    with pytest.raises(ConfigError, match="duplicate key 'version' \\(first at line 5\\)"):
        load_yaml(text.replace("  version: v3\n", "  version: v3\n  version: v1\n"), "dup.yaml")


def _limited(argv: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    """Run a trapd command with 1 GiB of address space: an unbounded expansion fails, not the host."""
    code = (
        "import resource, sys, runpy; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30));"
        "sys.argv = ['trapd', *sys.argv[1:]]; runpy.run_module('trapd', run_name='__main__')"
    )
    try:
        return subprocess.run(
            [sys.executable, "-c", code, *argv], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"trapd {' '.join(argv)} still running after {timeout} s")


def test_trapd_check_refuses_the_bomb_fast_and_without_a_traceback(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(rules_bomb())
    # 1 GiB of address space: an expansion would end in MemoryError (a traceback), not in the
    # file:line refusal asserted here; the timeout only catches a hang.
    r = _limited(["check", str(rules)], timeout=120)
    output = r.stdout + r.stderr
    assert r.returncode == 1, output
    assert "Traceback" not in output and "MemoryError" not in output, output[-2000:]
    assert f"{rules}:" in output and "alias" in output, output[-2000:]


@needs_netsnmp
def test_sighup_with_a_bomb_fails_fast_and_keeps_the_rules(tmp_path: Path) -> None:
    good = (
        "rules:\n  - name: r\n    match: {notification: IF-MIB::linkDown}\n"
        "    actions: [{action: log, message: kept}]\n"
    )
    d = TrapdDaemon.start(tmp_path, rules=good)
    try:
        d.rules_path.write_text(rules_bomb())
        t0 = time.monotonic()
        d.signal(signal.SIGHUP)
        line = d.wait_log("reload failed, keeping the running configuration", timeout=60)
        # Loose for a loaded machine: the refusal takes milliseconds, the old expansion 35 s.
        assert time.monotonic() - t0 < 20, line
        assert "alias" in str(line)
        status, _ = d.healthz()
        assert status == 200
        snmp_send("snmptrap", *link_down(d.target(), 4))
        d.wait_log("kept", timeout=30)
    finally:
        d.close()


# -- deep nesting ----------------------------------------------------------------------------
# A few KB of brackets nested thousands deep: PyYAML composes recursively, and the daemon's
# reload (and trapd check) ended in RecursionError, with a traceback and no file:line.


def deep(levels: int, flow: bool = True) -> str:
    if flow:
        return "rules: " + "[" * levels + "]" * levels + "\n"
    return "rules:\n" + "".join("  " * i + "- \n" for i in range(1, levels)) + "  " * levels + "- x\n"


@pytest.mark.parametrize("flow", [True, False], ids=["flow", "block"])
def test_load_yaml_refuses_deep_nesting_with_its_position(flow: bool) -> None:
    from trapd.yamlsource import MAX_DEPTH

    with pytest.raises(ConfigError, match=f"nested more than {MAX_DEPTH} levels") as info:
        load_yaml(deep(5000, flow), "deep.yaml")
    mark = info.value.mark
    assert mark is not None and mark.file == "deep.yaml", info.value
    if flow:  # the bracket that goes one level too deep
        assert (mark.line, mark.column) == (1, len("rules: ") + MAX_DEPTH), info.value
    else:
        assert mark.line == MAX_DEPTH + 1, info.value  # line 1 is the top mapping


def test_nesting_up_to_the_bound_loads_alike_with_either_parser() -> None:
    """The bound is the same whichever parser reads the file (libyaml's events, or the reference
    loader a file with an alias goes to)."""
    from trapd.yamlsource import MAX_DEPTH

    # The document's top mapping is one level: "rules:" plus MAX_DEPTH - 1 lists.
    ok = deep(MAX_DEPTH - 1)
    assert load_yaml(ok, "ok.yaml") is not None
    assert load_yaml("x: &x 1\ny: *x\n" + ok, "ok.yaml") is not None
    for text in (deep(MAX_DEPTH), "x: &x 1\ny: *x\n" + deep(MAX_DEPTH)):
        with pytest.raises(ConfigError, match="nested more than"):
            load_yaml(text, "deep.yaml")


def test_trapd_check_refuses_deep_nesting_without_a_traceback(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(deep(20_000))
    r = _limited(["check", str(rules)], timeout=120)
    output = r.stdout + r.stderr
    assert r.returncode == 1, output[-2000:]
    assert "Traceback" not in output and "RecursionError" not in output, output[-2000:]
    assert f"{rules}:1:" in output and "nested more than" in output, output[-2000:]


@needs_netsnmp
def test_sighup_with_deep_nesting_fails_with_its_place_and_keeps_the_rules(tmp_path: Path) -> None:
    good = (
        "rules:\n  - name: r\n    match: {notification: IF-MIB::linkDown}\n"
        "    actions: [{action: log, message: kept}]\n"
    )
    d = TrapdDaemon.start(tmp_path, rules=good)
    try:
        d.rules_path.write_text(deep(20_000))
        d.signal(signal.SIGHUP)
        (line,) = d.wait_log("reload failed, keeping the running configuration", timeout=60)
        assert f"{d.rules_path}:1:" in line["error"] and "nested more than" in line["error"], line
        snmp_send("snmptrap", *link_down(d.target(), 4))
        d.wait_log("kept", timeout=30)
    finally:
        d.close()


# -- a huge file -----------------------------------------------------------------------------
# A rules file is read whole, then parsed into a tree ten times its size: a 2 GB file (a log or
# an image saved as *.yaml, a generator run away) took the daemon's memory at a reload. 100,000
# per-port rules are 32 MB; a file past MAX_FILE_BYTES is refused before it is read.


def huge(path: Path) -> Path:
    from trapd.regularfile import MAX_FILE_BYTES

    with path.open("wb") as f:  # sparse: no disk used
        f.write(b"rules: []\n")
        f.truncate(MAX_FILE_BYTES + 1)
    return path


def test_trapd_check_refuses_a_huge_file_before_reading_it(tmp_path: Path) -> None:
    rules = huge(tmp_path / "rules.yaml")
    t0 = time.monotonic()
    r = _limited(["check", str(rules)], timeout=120)
    output = r.stdout + r.stderr
    assert r.returncode == 1, output[-2000:]
    assert "Traceback" not in output and "MemoryError" not in output, output[-2000:]
    assert f"{rules}:1:1: error: " in output and "larger than 128 MiB" in output, output[-2000:]
    assert time.monotonic() - t0 < 60


@needs_netsnmp
def test_sighup_with_a_huge_file_fails_and_keeps_the_rules(tmp_path: Path) -> None:
    good = (
        "rules:\n  - name: r\n    match: {notification: IF-MIB::linkDown}\n"
        "    actions: [{action: log, message: kept}]\n"
    )
    d = TrapdDaemon.start(tmp_path, rules=good)
    try:
        huge(d.rules_path)
        d.signal(signal.SIGHUP)
        (line,) = d.wait_log("reload failed, keeping the running configuration", timeout=60)
        assert f"{d.rules_path}:1:1:" in line["error"] and "larger than" in line["error"], line
        snmp_send("snmptrap", *link_down(d.target(), 4))
        d.wait_log("kept", timeout=30)
    finally:
        d.close()


# -- characters YAML does not allow ----------------------------------------------------------
# Terminal output pasted into a rule (an ESC of a colour code), or a NUL: PyYAML refuses the
# document when its reader is made, outside what load_yaml turned into a positioned error, so
# trapd check printed a traceback and a reload's error named no file.


@pytest.mark.parametrize("char,shown", [("\x1b", "#x1b"), ("\x00", "#x00"), ("\x7f", "#x7f")])
def test_a_control_character_is_an_error_at_its_place(char: str, shown: str) -> None:
    text = 'rules:\n  - name: a\n    cancel: "port' + char + '[0m"\n'
    with pytest.raises(ConfigError) as info:
        load_yaml(text, "esc.yaml")
    err = info.value
    assert err.mark == Mark("esc.yaml", 3, 18), err
    assert shown in err.message and "not allowed" in err.message, err


def test_trapd_check_names_the_place_of_a_control_character(tmp_path: Path) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_bytes(b'rules:\n  - name: a\n    match: {notification: linkUp}\n    cancel: "x\x1b[0m"\n')
    r = _limited(["check", str(rules)], timeout=120)
    output = r.stdout + r.stderr
    assert r.returncode == 1 and "Traceback" not in output, output[-2000:]
    assert f"{rules}:4:15: error: " in output, output
