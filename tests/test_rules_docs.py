"""docs/rules.md shows what trapd does: its YAML snippets pass `trapd check`, its example output is real.

A user copies the snippets and compares the output. A snippet that no longer
compiles, or output that trapd no longer prints, is a bug in the doc.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from trapd.cli import main as trapd

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "rules.md"

# The context a fragment (a `match:`, `varbinds:`, `foreach:` or `actions:` of one rule) is checked in:
# the groups the snippets name, and a cap for their destructive actions.
HEAD = [
    "sources:",
    "  access-switches: [10.20.0.0/16, 10.21.0.5]",
    "  core: [10.0.0.1, 10.0.0.2]",
    "defaults:",
    "  cap: {limit: 50, per: 1m}",
    "rules:",
]
MAC_RULE = [
    "  - name: doc-fragment",
    "    match: {notification: CISCO-MAC-NOTIFICATION-MIB::cmnMacChangedNotification}",
]
LOG = "    actions: [{action: log, message: doc}]"


def yaml_blocks() -> list[str]:
    return re.findall(r"^```yaml\n(.*?)^```", DOC.read_text(encoding="utf-8"), re.S | re.M)


def indent(code: str, by: int) -> list[str]:
    return [" " * by + line if line.strip() else line for line in code.splitlines()]


def rule_files(code: str) -> list[str]:
    """The rule file(s) a snippet is checked as: itself if it is one, else wrapped in a rule."""
    first = next((line for line in code.splitlines() if line.strip() and not line.startswith("#")), "")
    if not first:  # only a comment (the schema line)
        return []
    if first.startswith(("sources:", "defaults:", "rules:")):
        return [code]
    if first.lstrip().startswith("- name:"):  # a list of rules
        return ["\n".join(HEAD + indent(code, 0 if first.startswith("  ") else 2))]
    if first.startswith("match:"):
        return ["\n".join([*HEAD, "  - name: doc-fragment", LOG, *indent(code, 4)])]
    if first.startswith("varbinds:"):
        match = ["    match:", "      notification: IF-MIB::linkDown", *indent(code, 6)]
        return ["\n".join([*HEAD, "  - name: doc-fragment", LOG, *match])]
    if first.startswith("foreach:"):  # alternatives, one after another
        parts = re.split(r"^(?=foreach:)", code, flags=re.M)
        return ["\n".join([*HEAD, *MAC_RULE, "    actions: [{action: log, message: '{{ item.mac }}'}]",
                           *indent(part, 4)]) for part in parts if part.strip()]
    if first.startswith("actions:"):
        return ["\n".join([*HEAD, *MAC_RULE, "    foreach: mac_changes", *indent(code, 4)])]
    raise AssertionError(f"docs/rules.md: a yaml snippet this test does not know how to check:\n{code}")


def test_every_yaml_snippet_of_the_rule_language_passes_trapd_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocks = yaml_blocks()
    assert len(blocks) >= 8
    checked = 0
    for n, code in enumerate(blocks):
        for m, text in enumerate(rule_files(code)):
            path = tmp_path / f"snippet-{n}-{m}.yaml"
            path.write_text(text + "\n", encoding="utf-8")
            status = trapd(["check", "--strict", str(path)])
            out = capsys.readouterr().out
            assert status == 0, f"docs/rules.md snippet {n}:\n{code}\nchecked as:\n{text}\n{out}"
            checked += 1
    assert checked >= 8


def test_the_example_output_of_trapd_test_is_what_it_prints(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    doc = DOC.read_text(encoding="utf-8")
    block = re.search(r"^```\n\$ (trapd test .*?)\n(.*?)^```", doc, re.S | re.M)
    assert block is not None
    command, shown = block.group(1), block.group(2).splitlines()
    monkeypatch.chdir(REPO)  # the doc's paths are relative to the repository, as the output shows them
    assert trapd(shlex.split(command)[1:]) == 0
    printed = capsys.readouterr().out.splitlines()
    event_id = re.compile(r"\b[0-9a-f]{21}\b")
    printed = [event_id.sub("EVENT", line) for line in printed]
    shown = [event_id.sub("EVENT", line) for line in shown]
    # The doc leaves some non-matching rules out: every line it shows is printed, in that order.
    at = 0
    for line in shown:
        assert line in printed[at:], f"the doc shows {line!r}; trapd test printed:\n" + "\n".join(printed)
        at = printed.index(line, at) + 1
