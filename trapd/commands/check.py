"""Check trapd.yaml and the rules before deploying them.

Reports every problem, each with file:line:column: YAML syntax, unknown
keys, wrong types, unknown MIB symbols, unknown action plugins, template
syntax errors and undefined template variables, regex errors, duplicate rule
names, parameters that can never validate, destructive actions without a
rate cap, plugin settings under trapd.yaml's actions: that the plugin does not
declare or that do not fit; and, as warnings, what works but is probably not meant: a rule
that can never match because an earlier rule that stops matches everything
it would, a rule that does nothing, a cancel-key without a delay, a secret
written as text or templated, a trapd.yaml actions: section that names no
installed plugin (docs/rules.md, "trapd check", lists them all).

    trapd check                          # /etc/trapd/trapd.yaml and its rules
    trapd check rules.yaml               # one file (MIB dirs and caps from /etc/trapd/trapd.yaml)
    trapd check rules.yaml rules.d/*.yaml
    trapd check --config trapd.yaml --format json     # for CI

The report and its verdict (the last line: "OK: FILES" or "N error(s), ...")
go to stdout; stderr carries only trapd check's own failures (no rule file to
check). A broken MIB file is reported by `trapd mibs compile`, and here only
when a rule needs a name from it.

Exit status: 0 valid (warnings allowed unless --strict), 1 errors found,
2 usage problems (no rule file to check).
"""

from __future__ import annotations

import argparse
import difflib
import re
from collections.abc import Mapping, Set
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from trapd.config import Config
    from trapd.mibs import MibResolver
    from trapd.plugin import ActionSpec
    from trapd.yamlsource import ConfigError

HELP = "validate trapd.yaml and the rules (file:line:column for every problem)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="*", metavar="FILE", help="rule files (default: those trapd.yaml names)")
    p.add_argument(
        "--config", "-c", metavar="FILE", help="trapd.yaml (default /etc/trapd/trapd.yaml if present)"
    )
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (json for CI)")
    p.add_argument("--strict", action="store_true", help="warnings count as errors")


def main(args: argparse.Namespace) -> int:
    import gc

    # The cyclic collector has nothing to find in compiled rules, but left on, its first pass
    # after compiling walks every object of them: 100,000 per-port rules, 1.2 s of CPU (a
    # tenth of the check) for nothing (gc.callbacks timing, load average 6.9). Restored for
    # callers that run the command in their own process (the tests).
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _check(args)
    finally:
        if was_enabled:
            gc.enable()


def _check(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from trapd.config import DEFAULT_CONFIG, Config, default_config_present, load_config
    from trapd.mibs import MibResolver
    from trapd.plugin import load_actions
    from trapd.rules import RuleSet, check_rules, expand_rule_paths, globally_capped
    from trapd.yamlsource import ConfigError, Mark

    problems: list[ConfigError] = []
    config = Config()
    # The default trapd.yaml, when present, still supplies the MIB directories and global caps
    # for rule files named on the command line: they are checked as the daemon would load them.
    config_path = Path(args.config) if args.config else DEFAULT_CONFIG
    if args.config or default_config_present():
        try:
            config = load_config(config_path)
        except ConfigError as exc:
            problems.append(exc)
    # Files named on the command line are what is checked, even when a directory among them has
    # no rule files: falling back to trapd.yaml's would give their verdict for the directory.
    try:
        paths = expand_rule_paths(args.files) if args.files else config.rule_paths()
    except ConfigError as exc:  # a rules.dir that cannot be listed
        problems.append(exc)
        paths = []
    if not paths and args.files:
        named = ", ".join(map(str, args.files))
        print(f"trapd check: no rule files (*.yaml) in {named}", file=sys.stderr)
        return 2
    # trapd.yaml's rules.dir missing, or empty with no rules.files: the daemon runs with that,
    # so it is a warning here (with nothing else to check, trapd.yaml is what gets the verdict).
    try:
        dir_warning = None if args.files else config.rules_dir_warning()
    except ConfigError:  # cannot be listed: reported above
        dir_warning = None
    if dir_warning is not None:
        problems.append(dir_warning)
    if not paths and dir_warning is None:
        for p in problems:
            print(f"{p.mark or 'trapd'}: {p.severity}: {p.message}")
        if problems:
            print(f"{len(problems)} error(s) in {config_path}")
            return 1
        print(
            "trapd check: no rule files given and none named in trapd.yaml (rules: files:)", file=sys.stderr
        )
        return 2
    state_dir = config.state_dir if config.state_dir.is_dir() else None
    # A broken MIB file is not a problem of the rules until a rule needs a name from it: then that
    # rule's "unknown MIB symbol" error says which file failed, and where (explain_unknown_symbols).
    # Otherwise it is `trapd mibs compile`'s report: Debian ships a broken one on every host.
    resolver = MibResolver.load(config.mibs, state_dir)
    from trapd.decoders import load_problems as decoder_problems

    problems += [ConfigError(text, None, severity="warning") for text in decoder_problems()]
    actions, broken = load_actions()
    for lp in broken:
        problems.append(ConfigError(f"action plugin {lp.entry_point} failed to load: {lp.error}", None))
    # A plugin that failed to load is reported above; its settings are not "unused" on top of that.
    problems += unused_action_settings(config, actions, {lp.name for lp in broken})
    from trapd.dispatch.plugins import settings_problems

    problems += settings_problems(actions, config)
    capped = (
        globally_capped(config.dispatch.caps, actions) if hasattr(config.dispatch, "caps") else frozenset()
    )
    compiled: list[RuleSet] = []
    rule_problems = check_rules(paths, resolver, actions, capped_actions=capped, compiled=compiled)
    if compiled:
        from trapd.dispatch.plugins import missing_settings, timeouts_cut_short

        rule_problems += missing_settings(actions, config, compiled[0])
        rule_problems += timeouts_cut_short(config, compiled[0])
    problems += explain_unknown_symbols(rule_problems, resolver)

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
        files = ", ".join(str(p) for p in paths) or str(config_path)
        # The verdict goes with the report, on stdout (as linters do): `2>/dev/null` must not hide it.
        if errors:
            print(f"{n_err} error(s), {n_warn} warning(s) in {files}")
        else:
            print(f"OK: {files}" + (f" ({n_warn} warning(s))" if n_warn else ""))
    return 1 if errors else 0


_UNKNOWN_SYMBOL = re.compile(r"^unknown MIB symbol '(?:([A-Za-z][\w-]*)::)?")


def unused_action_settings(
    config: Config, actions: Mapping[str, ActionSpec], broken: Set[str]
) -> list[ConfigError]:
    """A warning, at its place in trapd.yaml, for each ``actions:`` section no installed plugin
    has: what the daemon logs at start (``warn_unknown_settings``). A misspelt name otherwise
    leaves the plugin with empty settings, and nothing in `trapd check` said why."""
    from trapd.dispatch.plugins import unknown_settings
    from trapd.yamlsource import ConfigError

    found = []
    for name in unknown_settings(actions, config.actions):
        if name in broken:
            continue
        hint = difflib.get_close_matches(name, list(actions), n=1, cutoff=0.6)
        found.append(
            ConfigError(
                f"actions.{name}: no action plugin named {name!r} is installed; these settings are "
                "not used" + (f" (did you mean {hint[0]!r}?)" if hint else ""),
                config.action_marks.get(name),
                severity="warning",
            )
        )
    return found


def explain_unknown_symbols(problems: list[ConfigError], resolver: MibResolver) -> list[ConfigError]:
    """Unknown-symbol errors, told which MIB file failed to load when one did.

    ``NET-SNMP-PASS-MIB::netSnmpPassString`` is unknown because that module
    did not compile: the error names the file and line. A bare name cannot be
    traced to a module, so it only says that some MIB files failed.
    """
    if not resolver.problems:
        return problems
    by_module = {p.module: p for p in resolver.problems if p.module}
    for p in problems:
        m = _UNKNOWN_SYMBOL.match(p.message)
        if m is None:
            continue
        broken = by_module.get(m.group(1) or "")
        if broken is not None:
            p.message += f"; {broken.module} did not load: {broken}"
        else:
            n = len(resolver.problems)
            p.message += f"; {n} MIB file(s) did not load (`trapd mibs compile` lists them)"
    return problems
