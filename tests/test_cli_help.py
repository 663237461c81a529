"""`trapd --help` and every subcommand's: each says what it does, and each argument what it takes."""

from __future__ import annotations

import argparse
from collections.abc import Iterator

from trapd.cli import build_parser


def parsers(
    p: argparse.ArgumentParser, path: tuple[str, ...] = ("trapd",)
) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield " ".join(path), p
    for a in p._actions:
        if isinstance(a, argparse._SubParsersAction):
            for name, sp in a.choices.items():
                yield from parsers(sp, (*path, name))


def test_every_subcommand_says_what_it_does_in_its_own_help() -> None:
    # `trapd journal show --help`, `trapd kea restore --help`: the usage line alone, before.
    missing = [name for name, p in parsers(build_parser()) if not (p.description or "").strip()]
    assert missing == []


def test_every_argument_has_a_help_text() -> None:
    missing = [
        f"{name} {'/'.join(a.option_strings) or a.metavar or a.dest}"
        for name, p in parsers(build_parser())
        for a in p._actions
        if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction) and not a.help
    ]
    assert missing == []
