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

from trapd.yamlsource import ConfigError, load_yaml


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
