"""List the installed action plugins with their parameters, or show one in full.

    trapd actions                  # every plugin: summary and parameters
    trapd actions webhook          # one plugin's full documentation
    trapd actions --json           # for tools

Plugins are found through the Python entry-point group ``trapd.actions``:
the built-ins and any site package installed into trapd's environment (see
docs/plugins.md). A plugin that fails to load is listed with the reason and
makes the exit status 1.
"""

from __future__ import annotations

import argparse
from typing import Any

HELP = "list installed action plugins and their parameters; NAME shows one in full"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("name", nargs="?", help="show this plugin's full documentation")
    p.add_argument("--json", action="store_true", help="JSON output")


def main(args: argparse.Namespace) -> int:
    import json
    import sys

    from trapd.plugin import load_actions, load_failure

    specs, problems = load_actions()
    if args.name:
        spec = specs.get(args.name)
        if spec is None and (failure := load_failure(args.name)) is not None:
            print(f"trapd actions: action plugin {args.name!r} is installed but failed to load: {failure}",
                  file=sys.stderr)  # fmt: skip
            return 1
        if spec is None:
            print(f"trapd actions: no plugin named {args.name!r}; installed: {', '.join(sorted(specs))}",
                  file=sys.stderr)  # fmt: skip
            return 1
        if args.json:
            print(json.dumps(describe(spec), indent=2))
        else:
            print(_full(spec))
        return 0
    if args.json:
        out = {
            "actions": [describe(specs[n]) for n in sorted(specs)],
            "problems": [{"entry_point": p.entry_point, "error": p.error} for p in problems],
        }
        print(json.dumps(out, indent=2))
        return 1 if problems else 0
    for name in sorted(specs):
        spec = specs[name]
        flags = _flags(spec)
        print(f"{name}{'  [' + flags + ']' if flags else ''}")
        if spec.summary:
            print(f"    {spec.summary}")
        for pname, param in spec.params.items():
            print(
                f"    {pname}: {param.describe()}" + (f"  ({param.description})" if param.description else "")
            )
        print()
    for prob in problems:
        print(f"failed to load {prob.entry_point}: {prob.error}", file=sys.stderr)
    return 1 if problems else 0


def _describe_params(params: Any) -> dict[str, Any]:
    return {
        n: {
            "type": p.type,
            "description": p.description,
            "required": p.required,
            "default": p.default,
            "secret": p.secret,
            "secret_ref": p.secret_ref,
            "describe": p.describe(),
        }
        for n, p in params.items()
    }


def describe(spec: Any) -> dict[str, Any]:
    return {
        "name": spec.name,
        "summary": spec.summary,
        "idempotent": spec.idempotent,
        "destructive": spec.destructive,
        "key": list(spec.key),
        "kea_commands": list(spec.kea_commands),
        "params": _describe_params(spec.params),
        # Its section of trapd.yaml (actions: NAME:); null when the plugin does not declare it.
        "settings": None if spec.settings is None else _describe_params(spec.settings),
        "doc": spec.doc,
    }


def _flags(spec: Any) -> str:
    bits = []
    if spec.idempotent:
        bits.append("idempotent")
    if spec.destructive:
        bits.append("destructive")
    if spec.key:
        bits.append("key: " + ",".join(spec.key))
    return ", ".join(bits)


def _full(spec: Any) -> str:
    lines = [spec.name, "=" * len(spec.name), ""]
    flags = _flags(spec)
    if flags:
        lines += [flags, ""]
    lines += [spec.doc or "(no documentation)", "", "Parameters:"]
    for pname, param in spec.params.items():
        extra = ""
        if param.secret:
            extra = " (secret)"
        elif param.secret_ref:
            extra = " (or a secret: {env: NAME} / {file: PATH})"
        lines.append(f"  {pname}: {param.describe()}{extra}")
        if param.description:
            lines.append(f"      {param.description}")
    if spec.settings:
        lines += ["", f"Settings (trapd.yaml: actions: {{{spec.name}: ...}}):"]
        for sname, param in spec.settings.items():
            lines.append(f"  {sname}: {param.describe()}")
            if param.description:
                lines.append(f"      {param.description}")
    return "\n".join(lines)
