"""JSON Schemas of rule files and trapd.yaml, for editors with the YAML language server.

    trapd schema rules                      # knows the action plugins installed here
    trapd schema config
    trapd schema rules -o /etc/trapd/rules.schema.json

Then, first line of a rules file:

    # yaml-language-server: $schema=/etc/trapd/rules.schema.json

trapd ships both (trapd/data/rules.schema.json, trapd.schema.json) for its
own plugins; this writes one that also knows a site's plugins. Developers:
after changing a shipped plugin's parameters or settings, the rule language or a
key of trapd.yaml,

    trapd schema rules --shipped -o trapd/data/rules.schema.json
    trapd schema config --shipped -o trapd/data/trapd.schema.json

A schema completes and flags keys as you type; `trapd check` remains the check.
"""

from __future__ import annotations

import argparse

HELP = "print the JSON Schema of rule files or trapd.yaml (editor completion and checks)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("which", choices=("rules", "config"), help="rules: a rules file; config: trapd.yaml")
    p.add_argument("--output", "-o", metavar="FILE", help="write it here instead of stdout")
    p.add_argument(
        "--shipped", action="store_true", help="only trapd's own plugins (the copy in trapd/data/)"
    )


def main(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from trapd.plugin import load_actions
    from trapd.schema import config_schema, dumps, rules_schema, shipped_actions

    actions = shipped_actions() if args.shipped else load_actions()[0]
    text = dumps(rules_schema(actions) if args.which == "rules" else config_schema(actions))
    if args.output:
        try:
            Path(args.output).write_text(text, encoding="utf-8")
        except OSError as exc:
            print(f"trapd schema: cannot write {args.output}: {exc.strerror or exc}", file=sys.stderr)
            return 1
    else:
        print(text, end="")
    return 0
