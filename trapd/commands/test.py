"""Run events through the rules and show what would happen. Executes nothing.

For each event: which rules match, for each rule that does not the first
condition that failed (with its file:line:column), and the actions each
matching rule would plan, rendered and validated (or rejected, with why).

The event comes from the command line in a compact form, from a JSON file
(the format ``trapd listen`` prints: one object, a list, or one object per
line), or from stdin with ``-`` (one JSON object per line)::

    trapd test -r rules.yaml IF-MIB::linkDown from 10.20.1.5 ifIndex=17 ifDescr=Gi1/0/17 ifOperStatus=down
    trapd test -r rules.yaml 'IF-MIB::linkDown from 10.20.1.5 ifIndex=17 ifAlias="uplink to core"'
    trapd test --rules rules.yaml event.json
    trapd listen | trapd test --rules rules.yaml -

Compact form: NOTIFICATION [from ADDRESS[:PORT]] [NAME[.INDEX]=VALUE ...]
[version=v1|v2c|v3] [community=NAME] [user=NAME] [context=NAME]
[kind=trap|inform] [uptime=TICKS], as separate words or as one quoted
argument (split as the shell splits).
Enumeration labels (ifOperStatus=down), numbers, 0x-hex octets and text are
accepted as values.

Exit status: 0 when the rules loaded and every event was read, 1 otherwise.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trapd.event import Event
    from trapd.plugin import ActionSpec
    from trapd.rules import RuleTrace

HELP = "show what the rules would do with an event (executes nothing)"


def configure(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "event", nargs="*", metavar="EVENT", help="compact event words, a JSON file, or - for stdin"
    )
    p.add_argument(
        "--rules", "-r", action="append", metavar="FILE", help="rule file, repeatable (default: config's)"
    )
    p.add_argument(
        "--config", "-c", metavar="FILE", help="trapd.yaml (default /etc/trapd/trapd.yaml if present)"
    )
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format")
    p.add_argument(
        "--dry-run", action="store_true", help="show actions in dry-run mode (as trapd run --dry-run)"
    )


def main(args: argparse.Namespace) -> int:
    import json
    import sys
    from pathlib import Path

    from trapd.config import DEFAULT_CONFIG, Config, default_config_present, load_config
    from trapd.mibs import MibResolver
    from trapd.plugin import load_actions
    from trapd.rules import RuleErrors, expand_rule_paths, globally_capped, load_rules
    from trapd.rules.compact import CompactError, parse_compact
    from trapd.yamlsource import ConfigError

    config = Config()
    config_path = Path(args.config) if args.config else DEFAULT_CONFIG  # MIB dirs, caps, mode
    if args.config or default_config_present():
        try:
            config = load_config(config_path)
        except ConfigError as exc:
            print(f"{exc}", file=sys.stderr)
            return 1
    paths = expand_rule_paths(args.rules) if args.rules else config.rule_paths()
    if not paths:
        print(
            "trapd test: no rule files (give --rules FILE or a trapd.yaml that names them)", file=sys.stderr
        )
        return 1
    if not args.event:
        print("trapd test: give an event (compact words, a JSON file, or - for stdin)", file=sys.stderr)
        return 1
    state_dir = config.state_dir if config.state_dir.is_dir() else None
    resolver = MibResolver.load(config.mibs, state_dir)
    actions, _broken = load_actions()
    capped = (
        globally_capped(config.dispatch.caps, actions) if hasattr(config.dispatch, "caps") else frozenset()
    )
    mode = "dry-run" if args.dry_run else config.mode
    try:
        rules = load_rules(paths, resolver, actions, global_mode=mode, capped_actions=capped)
    except RuleErrors as exc:
        for e in exc.errors:
            print(f"{e.mark or 'trapd'}: {e.severity}: {e.message}", file=sys.stderr)
        return 1
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return 1

    ok = True

    def show(event: Event) -> None:
        traces = rules.explain(event)
        if args.format == "json":
            print(json.dumps(trace_json(event, traces, actions)), flush=True)
        else:
            print(render_text(event, traces, actions), flush=True)

    words: list[str] = args.event
    if words == ["-"]:
        for n, line in enumerate(sys.stdin, 1):
            line = line.strip()
            if not line:
                continue
            try:
                show(event_from_json(loads_json(line)))
            except ValueError as exc:
                ok = False
                print(f"stdin:{n}: not an event: {exc}", file=sys.stderr)
        return 0 if ok else 1
    if len(words) == 1 and (words[0].endswith(".json") or Path(words[0]).is_file()):
        try:
            items = read_event_values(Path(words[0]))
        except (OSError, ValueError) as exc:
            print(f"{words[0]}: not an event file: {exc}", file=sys.stderr)
            return 1
        for n, item in enumerate(items, 1):
            try:
                show(event_from_json(item))
            except ValueError as exc:
                ok = False
                print(f"{words[0]}: event {n}: not an event: {exc}", file=sys.stderr)
        return 0 if ok else 1
    try:
        event = parse_compact(compact_words(words), resolver)
    except CompactError as exc:
        print(f"trapd test: {exc}", file=sys.stderr)
        return 1
    show(event)
    return 0


def compact_words(words: list[str]) -> list[str]:
    """The compact event's words, also when the whole event came as one quoted argument.

    People paste ``'IF-MIB::linkDown from 10.20.1.5 ifIndex=17'`` as one
    argument; it is split as a shell would (so ``ifAlias="to core"`` keeps
    its space). Several arguments are taken as the shell already split them.
    """
    import shlex

    from trapd.rules.compact import CompactError

    if len(words) != 1 or not words[0].strip() or len(words[0].split()) == 1:
        return words
    try:
        return shlex.split(words[0])
    except ValueError as exc:  # the quote would otherwise become part of a value
        raise CompactError(f"unbalanced quote in the event: {exc}") from None


def read_event_file(path: Any) -> list[Event]:
    """The events of a file in ``trapd listen``'s JSON; ValueError saying which is not one."""
    events = []
    for n, item in enumerate(read_event_values(path), 1):
        try:
            events.append(event_from_json(item))
        except ValueError as exc:
            raise ValueError(f"event {n}: {exc}") from None
    return events


def read_event_values(path: Any) -> list[Any]:
    """The JSON values of an event file (one, a list, or one per line), for event_from_json."""

    text = path.read_text(encoding="utf-8")
    try:
        data = loads_json(text)
    except ValueError:
        data = [loads_json(line) for line in text.splitlines() if line.strip()]
    return data if isinstance(data, list) else [data]


def loads_json(text: str) -> Any:
    """json.loads, with a value nested past the interpreter's recursion limit a ValueError like any
    other bad JSON (json.loads recurses: "[[[[..." raised RecursionError, a traceback)."""
    import json

    try:
        return json.loads(text)
    except RecursionError:
        raise ValueError("JSON nested too deep") from None


_JSON_NAMES = {dict: "object", list: "list", str: "text", int: "int", float: "number", bool: "boolean"}


def event_from_json(data: Any) -> Event:
    """An event in ``trapd listen``'s JSON form; ValueError saying what is wrong with anything else.

    :meth:`Event.from_dict` reads what trapd itself wrote (the journal); this is for what a
    person hands ``trapd test``, which may be anything.
    """
    from trapd.event import Event, VarBind, parse_oid, refuse_uncarried

    def kind(value: Any) -> str:
        return "null" if value is None else _JSON_NAMES.get(type(value), type(value).__name__)

    if not isinstance(data, dict):
        raise ValueError(f"an event is a JSON object, got {kind(data)}")
    for name in ("source", "trap_oid"):
        if name not in data:
            raise ValueError(f"{name!r} is missing")
        if not isinstance(data[name], str):
            raise ValueError(f"{name!r} must be text, got {kind(data[name])}")
    try:
        refuse_uncarried(data["trap_oid"], parse_oid(data["trap_oid"]))
    except ValueError as exc:
        raise ValueError(f"'trap_oid': {exc}") from None
    if not isinstance(data.get("security") or {}, dict):
        raise ValueError("'security' must be an object")
    varbinds = data.get("varbinds") or []
    if not isinstance(varbinds, list) or not all(isinstance(v, dict) for v in varbinds):
        raise ValueError("'varbinds' must be a list of objects")
    for n, vb in enumerate(varbinds, 1):
        try:
            v = VarBind.from_dict(vb)
            refuse_uncarried(vb["oid"], v.oid)
            if v.type == "ObjectIdentifier" and isinstance(v.value, tuple):
                refuse_uncarried(vb["value"], v.value)
        except KeyError as exc:
            raise ValueError(f"varbind {n}: {exc.args[0]!r} is missing") from None
        except (ValueError, TypeError, AttributeError) as exc:
            raise ValueError(f"varbind {n}: {exc}") from None
    try:
        return Event.from_dict(data)
    except KeyError as exc:
        raise ValueError(f"{exc.args[0]!r} is missing") from None
    except (TypeError, AttributeError) as exc:  # a field of the wrong type (security's names, numbers)
        raise ValueError(str(exc)) from None


def _masked(params: dict[str, Any], spec: ActionSpec | None) -> dict[str, Any]:
    if spec is None:
        return params
    return {
        k: ("***" if (p := spec.params.get(k)) is not None and p.secret else v) for k, v in params.items()
    }


def _seconds(s: float) -> str:
    if s >= 60 and s % 60 == 0:
        return f"{int(s // 60)}m"
    return f"{s:g}s"


def render_text(event: Event, traces: list[RuleTrace], actions: dict[str, ActionSpec]) -> str:
    import json

    lines = [f"event {event.id}: {event.trap_name} from {event.source} ({event.version} {event.kind})"]
    for vb in event.varbinds:
        idx = f".{vb.index_str}" if vb.index else ""
        lines.append(f"    {vb.symbol}{idx} = {vb.display}")
    n_planned = n_rejected = n_cancels = n_matched = 0
    for t in traces:
        at = f" ({t.mark})" if t.mark else ""
        if t.status == "matched":
            n_matched += 1
            lines.append(f"  MATCH     {t.rule}{at}")
        elif t.status == "no-match":
            where = f" [{t.reason_mark}]" if t.reason_mark else ""
            lines.append(f"  no match  {t.rule}: {t.reason}{where}")
        elif t.status == "not-reached":
            lines.append(f"  skipped   {t.rule}: {t.reason}")
        else:
            lines.append(f"  disabled  {t.rule}")
        out = t.outcome
        for pa in out.planned:
            n_planned += 1
            params = " ".join(
                f"{k}={json.dumps(v)}" for k, v in _masked(pa.params, actions.get(pa.action)).items()
            )
            extras: list[str] = [pa.mode]
            if pa.delay:
                extras.append(f"delay {_seconds(pa.delay)}")
            if pa.cancel_key:
                extras.append(f"cancel-key {pa.cancel_key}")
            if pa.once_within is not None:
                extras.append(f"once-within {_seconds(pa.once_within)} key {pa.once_key}")
            extras.append(f"key {pa.key}")
            for cap in pa.caps:
                extras.append(
                    f"cap {cap.name} {cap.limit}/{_seconds(cap.per)}" + (f" per {cap.key}" if cap.key else "")
                )
            item = f" item {json.dumps(pa.item)}" if pa.item else ""
            lines.append(f"      -> {pa.action} {params}{item}")
            lines.append(f"         [{'; '.join(extras)}]")
        for c in out.cancels:
            n_cancels += 1
            lines.append(f"      -> cancel pending actions with cancel-key {c}")
        for r in out.rejected:
            n_rejected += 1
            lines.append(f"      !! REJECTED {r.action}#{r.index}: {r.reason}")
    lines.append(
        f"  = {n_matched} rule(s) matched, {n_planned} action(s) planned, {n_rejected} rejected, "
        f"{n_cancels} cancel(s); nothing was executed"
    )
    return "\n".join(lines)


def trace_json(event: Event, traces: list[RuleTrace], actions: dict[str, ActionSpec]) -> dict[str, Any]:
    from dataclasses import asdict

    rules = []
    for t in traces:
        rules.append(
            {
                "rule": t.rule,
                "at": str(t.mark) if t.mark else None,
                "status": t.status,
                "reason": t.reason,
                "reason_at": str(t.reason_mark) if t.reason_mark else None,
                "planned": [
                    {**asdict(pa), "params": _masked(pa.params, actions.get(pa.action))}
                    for pa in t.outcome.planned
                ],
                "cancels": list(t.outcome.cancels),
                "rejected": [asdict(r) for r in t.outcome.rejected],
            }
        )
    return {"event": event.to_dict(), "rules": rules}
