"""How a plugin tests itself: trapd.testing.run_action runs it as the dispatcher would.

``run_action`` validates the parameters against the action's declaration
(as the rule compiler does), builds the context (``settings`` is this
plugin's section of trapd.yaml) and captures what the action logs.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from trapd_example_plugin import note

from trapd.params import ParamError
from trapd.plugin import PermanentError
from trapd.testing import evaluate_rules, make_event, run_action

LINE = {"file": "ports.log", "text": "sw1 port 17 down"}


async def test_appends_a_line(tmp_path: Path) -> None:
    first = await run_action(note, LINE, settings={"dir": str(tmp_path)})
    await run_action(note, LINE, settings={"dir": str(tmp_path)})
    assert (tmp_path / "ports.log").read_text() == "sw1 port 17 down\n" * 2
    assert first.result == {"file": str(tmp_path / "ports.log"), "bytes": 17}
    assert first.log.events("info") == ["note written"]


async def test_refuses_paths(tmp_path: Path) -> None:
    with pytest.raises(PermanentError):
        await run_action(note, {"file": "../etc/passwd", "text": "x"}, settings={"dir": str(tmp_path)})


async def test_needs_its_directory_in_trapd_yaml() -> None:
    with pytest.raises(PermanentError, match="dir"):
        await run_action(note, LINE)


async def test_a_rule_cannot_pass_a_long_file_name(tmp_path: Path) -> None:
    with pytest.raises(ParamError, match="file"):
        await run_action(note, {**LINE, "file": "x" * 101}, settings={"dir": str(tmp_path)})


async def test_a_trap_value_cannot_add_lines(tmp_path: Path) -> None:
    # A value carrying CR, a vertical tab, U+2028...: each is a line break to some reader of the file.
    text = "sw1 port 17\rFAKE 1\x0bFAKE 2\u2028FAKE 3\r\nFAKE 4"
    await run_action(note, {**LINE, "text": text}, settings={"dir": str(tmp_path)})
    assert len((tmp_path / "ports.log").read_text().splitlines()) == 1


async def test_a_misspelt_setting_is_refused(tmp_path: Path) -> None:
    # What `trapd check` reports at its line in trapd.yaml (the plugin declares its settings).
    with pytest.raises(ParamError, match=r"unknown setting 'dri' \(did you mean 'dir'\?\)"):
        await run_action(note, LINE, settings={"dri": str(tmp_path)})


# The README's rule, as it is written there.
README = Path(__file__).resolve().parent.parent / "README.md"
RULE = README.read_text(encoding="utf-8").split("# rules.d/notes.yaml\n", 1)[1].split("```", 1)[0]


async def test_the_readme_rule_writes_the_trap_into_the_note(tmp_path: Path) -> None:
    # The README's rule, with the trap that runs it (the plugin installed: evaluate_rules compiles
    # the rules with the installed plugins, as trapd does).
    (tmp_path / "notes.yaml").write_text(RULE)
    event = make_event(source="10.20.1.5", varbinds=[("IF-MIB::ifIndex", "Integer32", 17)])
    (planned,) = evaluate_rules(tmp_path / "notes.yaml", event).planned
    await run_action(note, planned.params, event=event, settings={"dir": str(tmp_path)})
    assert (tmp_path / "ports.log").read_text() == "10.20.1.5 ifIndex 17 down\n"
