"""Every example in an action's help (``trapd actions NAME``) is a rule that `trapd check` accepts.

A user copies these. An example that does not compile (an undefined template
variable, a missing cap on a destructive action) is a bug in the docs.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import yaml

from trapd.plugin import ActionSpec, load_actions

# The context an action-item example is checked in: a rule on linkDown (whose varbinds,
# ifIndex, ifDescr..., an example may use), capped as a destructive action must be.
RULE_HEAD = [
    "    match: {notification: IF-MIB::linkDown}",
    "    continue: true",
    "    cap: {limit: 10, per: 1m}",
    "    actions:",
]


def literal_blocks(spec: ActionSpec) -> list[tuple[str, str]]:
    """Each literal block of the help (after a line ending in ``::``), with the paragraph before it."""
    lines = spec.doc.splitlines()
    found = []
    for i, line in enumerate(lines):
        if not line.rstrip().endswith("::"):
            continue
        start = i
        while start > 0 and lines[start - 1].strip():
            start -= 1
        block = []
        for text in lines[i + 1 :]:
            if text.strip() and not text.startswith(" "):
                break
            block.append(text)
        found.append((" ".join(lines[start : i + 1]), textwrap.dedent("\n".join(block)).strip()))
    return found


def examples(spec: ActionSpec) -> list[str]:
    """The literal blocks after an ``Example...::`` line of the help that are rules or rule actions."""
    return [
        code
        for intro, code in literal_blocks(spec)
        if "Example" in intro and code.startswith(("- action:", "- name:"))
    ]


def settings_shown(spec: ActionSpec) -> dict[str, Any]:
    """The plugin's trapd.yaml section as its help shows it (an ``actions:`` block), if it does."""
    shown: dict[str, Any] = {}
    for _, code in literal_blocks(spec):
        if code.startswith("actions:"):
            shown.update(yaml.safe_load(code)["actions"])
    return shown


def rule_file(name: str, blocks: list[str]) -> str:
    out = ["rules:"]
    for n, code in enumerate(blocks):
        if code.startswith("- name:"):  # a whole rule: checked as it is
            out += ["  " + line for line in code.splitlines()]
        else:  # one item of a rule's actions:
            out += [f"  - name: {name}-example-{n}", *RULE_HEAD]
            out += ["      " + line for line in code.splitlines()]
    return "\n".join(out) + "\n"


def test_the_examples_of_every_action_pass_trapd_check(tmp_path: Path) -> None:
    specs, _ = load_actions()
    files = []
    settings: dict[str, Any] = {}
    for name, spec in sorted(specs.items()):
        # A plugin with required settings shows them in its help; they are part of its examples.
        settings.update(settings_shown(spec))
        blocks = examples(spec)
        if spec.run.__module__.startswith("trapd_actions"):
            assert blocks, f"{name}: no example in its help"
        if blocks:
            path = tmp_path / f"{name}.yaml"
            path.write_text(rule_file(name, blocks))
            files.append(path.name)
    assert len(files) >= 9  # log, exec, webhook and the kea.* actions at least
    config = {
        "state_dir": "state",
        "rules": {"files": files},
        "actions": settings,
        "mibs": {"dirs": []},
        "kea": {
            "endpoints": {
                "kea": {"transport": "control-agent", "url": "http://127.0.0.1:1/", "family": ["v4", "v6"]}
            }
        },
    }
    (tmp_path / "trapd.yaml").write_text(yaml.safe_dump(config))
    check = subprocess.run(
        [sys.executable, "-m", "trapd", "check", "--config", str(tmp_path / "trapd.yaml")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    assert "error" not in check.stdout + check.stderr
