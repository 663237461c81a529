"""Action parameter tables in the READMEs, generated from the ActionSpec (one source for each parameter).

An action's parameters are declared once, in its ``Param(...)`` list: type,
constraints, default and description. ``trapd actions NAME`` prints them from
there, and so does each README, between two markers::

    <!-- trapd-params: kea.lease-del -->
    (the table, generated)
    <!-- /trapd-params -->

``python -m trapd.actiondocs [--check] README.md...`` rewrites the tables
(``--check``: exit 1 and name the files whose tables are out of date);
tests/test_action_docs.py runs the check over every README in actions/.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from trapd.params import Param
from trapd.plugin import ActionSpec

BLOCK = re.compile(
    r"(<!-- trapd-params: (?P<name>[\w.-]+) -->\n)(?P<table>.*?)(<!-- /trapd-params -->)", re.S
)


_MAX_LENGTH = next(f.default for f in fields(Param) if f.name == "max_length")


def _number(value: float | None) -> str:
    if value is None:
        return ""
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _type(p: Param) -> str:
    t = p.type
    if t == "enum":
        t = " \\| ".join(f"`{c}`" for c in p.choices)
    elif t == "list":
        t = f"list[{p.item}]"
    elif t == "string" and p.max_length != _MAX_LENGTH:
        t = f"string (up to {p.max_length} characters)"
    if p.min is not None or p.max is not None:
        t += f" {_number(p.min)}..{_number(p.max)}"
    return t + (", secret" if p.secret else ", or a secret" if p.secret_ref else "")


def _default(p: Param) -> str:
    if p.required:
        return "required"
    value: Any = p.default
    if value is None:
        return ""
    if p.type == "duration":
        return f"`{value:g}s`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, list | tuple | dict):
        return f"`{json.dumps(value)}`"
    return f"`{value}`"


def param_table(spec: ActionSpec) -> str:
    """The Markdown table of ``spec``'s parameters, in declaration order."""
    rows = ["| parameter | type | default | meaning |", "|-----------|------|---------|---------|"]
    for name, p in spec.params.items():
        meaning = p.description.replace("|", "\\|").replace("<", "&lt;")
        rows.append(f"| `{name}` | {_type(p)} | {_default(p)} | {meaning} |")
    return "\n".join(rows) + "\n"


def render(text: str, specs: Mapping[str, ActionSpec]) -> str:
    """``text`` with every marked table replaced by the one generated from ``specs``."""

    def table(m: re.Match[str]) -> str:
        spec = specs.get(m["name"])
        if spec is None:
            raise KeyError(f"no action named {m['name']!r} is installed")
        return m.group(1) + param_table(spec) + m.group(4)

    return BLOCK.sub(table, text)


def main(argv: Sequence[str] | None = None) -> int:
    from trapd.plugin import load_actions

    ap = argparse.ArgumentParser(prog="python -m trapd.actiondocs", description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="change nothing; exit 1 if a table is out of date")
    ap.add_argument("files", nargs="+", type=Path)
    args = ap.parse_args(argv)
    specs, _ = load_actions()
    stale = []
    for path in args.files:
        text = path.read_text(encoding="utf-8")
        new = render(text, specs)
        if new != text:
            stale.append(path)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    for path in stale:
        print(f"{path}: parameter table {'out of date' if args.check else 'rewritten'}", file=sys.stderr)
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    raise SystemExit(main())
