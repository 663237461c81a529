"""The ``trapd`` command: subcommands live in trapd.commands.<name>."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from trapd import __version__
from trapd.commands import COMMANDS

DESCRIPTION = """\
trapd receives SNMP notifications (v1, v2c, v3), matches them against YAML
rules and runs actions: delete Kea leases, disable DHCP, trigger DDNS, call a
webhook, run a program. Every subcommand has its own --help.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="trapd", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"trapd {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        try:
            mod = importlib.import_module(f"trapd.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"trapd.commands.{name}":
                raise
            continue  # a subcommand that is not written yet
        p = sub.add_parser(
            name,
            help=mod.HELP,
            description=(mod.__doc__ or mod.HELP).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        mod.configure(p)
        p.set_defaults(_main=mod.main)
        _describe_subcommands(p)
    return parser


def _describe_subcommands(p: argparse.ArgumentParser) -> None:
    """A nested subcommand's --help starts with its one-line help and where the rest is
    (``trapd kea restore --help`` printed the usage and options alone)."""
    for action in p._actions:
        if not isinstance(action, argparse._SubParsersAction):
            continue
        summaries = {a.dest: a.help or "" for a in action._choices_actions}
        for name, sp in action.choices.items():
            if not sp.description and summaries.get(name):
                text = summaries[name]
                sp.description = f"{text[0].upper()}{text[1:]}. `{p.prog} --help` explains more."


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        rc: int = args._main(args)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `trapd listen | head`: the reader went away; that is not an error.
        sys.stderr.close()
        return 0
    return rc


if __name__ == "__main__":
    sys.exit(main())
