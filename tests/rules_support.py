"""Shared helpers for the rule-engine tests: the real MIB resolver, small action specs, events."""

from __future__ import annotations

import functools
import textwrap
from pathlib import Path
from typing import Any

from trapd.event import Event, VarBind
from trapd.mibs import MibResolver
from trapd.params import Param
from trapd.plugin import ActionSpec
from trapd.rules import RuleSet, compile_rules
from trapd.rules.compact import parse_compact
from trapd.yamlsource import ConfigError


async def _run(params: dict[str, Any], ctx: Any) -> None:
    return None


ACTIONS: dict[str, ActionSpec] = {
    "kea.lease-del": ActionSpec(
        "kea.lease-del",
        _run,
        {
            "ip-address": Param("ip-address"),
            "hw-address": Param("mac-address"),
            "circuit-id": Param("string"),
            "family": Param("enum", choices=("v4", "v6"), default="v4"),
            "subnet-id": Param("integer", min=1, max=4294967295),
        },
        idempotent=True,
        destructive=True,
        key=("ip-address", "hw-address", "circuit-id"),
    ),
    "kea.dhcp-disable": ActionSpec(
        "kea.dhcp-disable",
        _run,
        {
            "max-period": Param("duration", required=True, min=0.001),
            "family": Param("enum", choices=("v4", "v6")),
        },
        destructive=True,
    ),
    "log": ActionSpec("log", _run, {"message": Param("string", required=True), "level": Param("string")}),
    "webhook": ActionSpec(
        "webhook",
        _run,
        {
            "url": Param("string", required=True),
            "body": Param("mapping"),
            "token": Param("string", secret=True),
        },
    ),
    "exec": ActionSpec("exec", _run, {"argv": Param("list", item="string", required=True)}),
}


@functools.cache
def resolver() -> MibResolver:
    return MibResolver.load()


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    p = tmp_path / name
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(textwrap.dedent(text).lstrip("\n"), encoding="utf-8")
    return p


def compile_text(
    tmp_path: Path, text: str, *, global_mode: str = "enforce", name: str = "rules.yaml"
) -> tuple[RuleSet, list[ConfigError]]:
    return compile_rules([write(tmp_path, text, name)], resolver(), ACTIONS, global_mode=global_mode)


def ruleset(tmp_path: Path, text: str, **kw: Any) -> RuleSet:
    rs, problems = compile_text(tmp_path, text, **kw)
    errors = [p for p in problems if p.severity == "error"]
    assert not errors, "\n".join(map(str, errors))
    return rs


def errors_of(tmp_path: Path, text: str) -> list[str]:
    """Problems as 'line:col: message' (file name dropped), errors and warnings."""
    _rs, problems = compile_text(tmp_path, text)
    out = []
    for p in problems:
        m = p.mark
        out.append(
            f"{m.line}:{m.column}: {p.severity}: {p.message}" if m else f"-: {p.severity}: {p.message}"
        )
    return out


def event(words: str) -> Event:
    return parse_compact(words.split(), resolver())


def with_varbind(ev: Event, vb: VarBind) -> Event:
    from dataclasses import replace

    return replace(ev, varbinds=(*ev.varbinds, vb))


def per_port_rules(count: int, tag: str = "down") -> str:
    """``count`` rules on linkDown, one per ifIndex, each with a template: a generated site file."""
    rule = (
        "  - name: port-{i}\n    match:\n      notification: IF-MIB::linkDown\n"
        "      varbinds: {{ifIndex: {i}}}\n    actions:\n      - action: log\n"
        '        message: "{tag} {{{{ ifIndex }}}} from {{{{ source }}}}"\n'
    )
    return "rules:\n" + "".join(rule.format(i=i, tag=tag) for i in range(count))
