"""Check trapd.yaml and the rules before deploying them.

Reports every problem, each with file:line:column: YAML syntax, unknown
keys, wrong types, unknown MIB symbols, unknown action plugins, template
syntax errors and undefined template variables, regex errors, duplicate rule
names, parameters that can never validate, destructive actions without a
rate cap, and (as a warning) rules that can never match because an earlier
rule that stops matches everything they would.

    trapd check                          # /etc/trapd/trapd.yaml and its rules
    trapd check rules.yaml               # one file (MIB dirs and caps from /etc/trapd/trapd.yaml)
    trapd check rules.yaml rules.d/*.yaml
    trapd check --config trapd.yaml --format json     # for CI

Exit status: 0 valid (warnings allowed unless --strict), 1 errors found,
2 usage problems (no rule file to check).
"""

from __future__ import annotations

import argparse

HELP = "validate trapd.yaml and the rules (file:line:column for every problem)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", metavar="FILE", help="rule files (default: those trapd.yaml names)")
    p.add_argument(
        "--config", "-c", metavar="FILE", help="trapd.yaml (default /etc/trapd/trapd.yaml if present)"
    )
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (json for CI)")
    p.add_argument("--strict", action="store_true", help="warnings count as errors")


def main(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from trapd.config import DEFAULT_CONFIG, Config, load_config
    from trapd.mibs import MibResolver
    from trapd.plugin import load_actions
    from trapd.rules import check_rules, expand_rule_paths, globally_capped
    from trapd.yamlsource import ConfigError, Mark

    problems: list[ConfigError] = []
    config = Config()
    # The default trapd.yaml, when present, still supplies the MIB directories and global caps
    # for rule files named on the command line: they are checked as the daemon would load them.
    config_path = Path(args.config) if args.config else DEFAULT_CONFIG
    if args.config or config_path.exists():
        try:
            config = load_config(config_path)
        except ConfigError as exc:
            problems.append(exc)
    paths = expand_rule_paths(args.files) or config.rule_paths()
    if not paths:
        for p in problems:
            print(f"{p.mark or 'trapd'}: {p.severity}: {p.message}")
        if problems:
            return 1
        print(
            "trapd check: no rule files given and none named in trapd.yaml (rules: files:)", file=sys.stderr
        )
        return 2
    state_dir = config.state_dir if config.state_dir.is_dir() else None
    resolver = MibResolver.load(config.mibs, state_dir)
    if resolver.problems:
        # One line: broken vendor MIB files are the MIB loader's report (`trapd mibs`), not the rules'.
        problems.append(
            ConfigError(
                f"MIBs: {len(resolver.problems)} problem(s) loading MIB files, first: {resolver.problems[0]}",
                None,
                severity="warning",
            )
        )
    from trapd.decoders import load_problems as decoder_problems

    problems += [ConfigError(text, None, severity="warning") for text in decoder_problems()]
    actions, broken = load_actions()
    for lp in broken:
        problems.append(ConfigError(f"action plugin {lp.entry_point} failed to load: {lp.error}", None))
    capped = (
        globally_capped(config.dispatch.caps, actions) if hasattr(config.dispatch, "caps") else frozenset()
    )
    problems += check_rules(paths, resolver, actions, capped_actions=capped)

    errors = [p for p in problems if p.severity == "error" or args.strict]
    if args.format == "json":
        out = {
            "valid": not errors,
            "files": [str(p) for p in paths],
            "errors": sum(1 for p in problems if p.severity == "error"),
            "warnings": sum(1 for p in problems if p.severity != "error"),
            "problems": [p.to_dict() for p in problems],
        }
        print(json.dumps(out, indent=2))
    else:
        for p in problems:
            where = p.mark or Mark("trapd", 0, 0)
            loc = str(where) if p.mark else "trapd"
            print(f"{loc}: {p.severity}: {p.message}")
        n_err = sum(1 for p in problems if p.severity == "error")
        n_warn = len(problems) - n_err
        files = ", ".join(str(p) for p in paths)
        if errors:
            print(f"{n_err} error(s), {n_warn} warning(s) in {files}", file=sys.stderr)
        else:
            print(f"OK: {files}" + (f" ({n_warn} warning(s))" if n_warn else ""), file=sys.stderr)
    return 1 if errors else 0
