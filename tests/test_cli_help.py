"""`trapd --help` and every subcommand's: each says what it does, and each argument what it takes."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator

import pytest

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


# The doc that owns each subcommand (README's table owns `trapd run`: tests/test_doc_snippets.py).
OWNERS = {
    "listen": ("docs/rules.md",),
    "check": ("docs/rules.md",),
    "test": ("docs/rules.md",),
    "mibs": ("docs/rules.md",),
    "schema": ("docs/rules.md",),
    "actions": ("docs/plugins.md",),
    "journal": ("docs/dispatch.md", "docs/pair.md"),
    "kea": ("actions/kea/README.md", "docs/kea-ha.md"),
}


def test_every_option_is_in_the_doc_that_owns_its_subcommand() -> None:
    import re
    from pathlib import Path

    repo = Path(__file__).resolve().parent.parent
    missing = []
    for name, p in parsers(build_parser()):
        words = name.split()
        if len(words) < 2 or words[1] not in OWNERS:
            continue
        doc = "\n".join((repo / d).read_text(encoding="utf-8") for d in OWNERS[words[1]])
        for a in p._actions:
            if isinstance(a, argparse._HelpAction) or not a.option_strings or a.help == argparse.SUPPRESS:
                continue
            if not any(re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", doc) for o in a.option_strings):
                missing.append(f"{name} {a.option_strings[0]} ({', '.join(OWNERS[words[1]])})")
    assert missing == []


def test_listen_refuses_an_unknown_log_level_or_format_as_a_usage_error(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # `trapd listen --log-format bogus` ended in a ValueError traceback; `trapd run` said what to give.
    for option, value in (("--log-format", "bogus"), ("--log-level", "loud")):
        with pytest.raises(SystemExit) as exited:
            build_parser().parse_args(["listen", option, value])
        assert exited.value.code == 2
        assert "invalid choice" in capsys.readouterr().err


def test_kea_status_help_says_what_its_ha_column_shows(capsys: pytest.CaptureFixture[str]) -> None:
    # `trapd kea status` reports each peer's HA mode, role and state, but its --help said
    # "reachability, version and lease_cmds of every endpoint" and nothing about HA: an operator
    # reading it did not know the column, what a state means for trapd, or that the exit status
    # does not follow it.
    with pytest.raises(SystemExit):
        build_parser().parse_args(["kea", "status", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for said in (
        "HA",
        "mode",
        "role",
        "status-get",
        "partner-down",
        "terminated",
        "scopes",
        "partner_state",
        "Exit status",
        "docs/kea-ha.md",
    ):
        assert said in text, said
    # and the one line `trapd kea --help` lists it with
    with pytest.raises(SystemExit):
        build_parser().parse_args(["kea", "--help"])
    (line,) = re.findall(r"^ +status +(.*)$", capsys.readouterr().out, re.MULTILINE)
    assert "HA state" in line, line
