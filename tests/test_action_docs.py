"""Each action's parameters are written once, in its Param(...) list; the README tables are generated.

`python -m trapd.actiondocs actions/*/README.md` rewrites the tables after a
change to a Param; this test fails until it has been run.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from trapd.actiondocs import BLOCK, main, param_table, render
from trapd.params import Param
from trapd.plugin import action, load_actions

ACTIONS = Path(__file__).resolve().parent.parent / "actions"
READMES = sorted(ACTIONS.glob("*/README.md"))


def test_every_readme_table_is_generated_from_the_spec() -> None:
    specs, _ = load_actions()
    stale = [str(p) for p in READMES if render(p.read_text(), specs) != p.read_text()]
    assert not stale, f"run: python -m trapd.actiondocs {' '.join(stale)}"


def test_every_built_in_action_has_one_table_and_no_other_copy_of_its_parameters() -> None:
    specs, _ = load_actions()
    tables: dict[str, int] = {}
    for path in READMES:
        text = path.read_text()
        for m in BLOCK.finditer(text):
            tables[m["name"]] = tables.get(m["name"], 0) + 1
        outside = BLOCK.sub("", text)
        assert "| parameter |" not in outside, f"{path}: a parameter table written by hand"
    built_in = {n for n, s in specs.items() if s.run.__module__.startswith("trapd_actions")}
    assert built_in and all(tables.get(n) == 1 for n in built_in), tables
    for name in built_in:
        spec = specs[name]
        module = sys.modules[spec.run.__module__]
        for where, text in (("help", spec.doc), ("module docstring", module.__doc__ or "")):
            assert "Parameters:" not in text, f"{name}: parameters listed again in its {where}"
            listed = [p for p in spec.params if re.search(rf"^\s*``{re.escape(p)}`` \(", text, re.M)]
            assert not listed, f"{name}: {listed} described again in its {where}"


def test_the_check_fails_on_a_table_that_disagrees(tmp_path: Path) -> None:
    @action("t.demo", params={"n": Param("integer", "how many", default=3, min=1)})
    async def demo(params: dict[str, object], ctx: object) -> None:
        """Demo."""

    table = param_table(demo)
    assert "| `n` | integer 1.. | `3` | how many |" in table
    readme = tmp_path / "README.md"
    readme.write_text("# log\n<!-- trapd-params: log -->\n| stale |\n<!-- /trapd-params -->\nafter\n")
    assert main(["--check", str(readme)]) == 1
    assert "| stale |" in readme.read_text()  # --check changes nothing
    assert main([str(readme)]) == 0
    assert main(["--check", str(readme)]) == 0
    assert readme.read_text().endswith("<!-- /trapd-params -->\nafter\n")
