"""Small builders for tests of the dispatcher and of action plugins (also for site plugins' tests).

They make events and outcomes by hand, without a listener or a rule engine::

    ev = make_event(varbinds=[("IF-MIB::ifIndex", "Integer32", 17)])
    out = make_outcome(plan("log", {"message": "hi"}, key="sw1:17"))
    ids = await dispatcher.submit(ev, out)
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import structlog

from trapd.event import Event, VarBind, new_event_id, parse_oid
from trapd.listener.raw import Security, SnmpType
from trapd.plugin import ActionContext
from trapd.rules.outcome import Outcome, PlannedAction, RateCap, RetryPolicy

_OIDS = {
    "IF-MIB::ifIndex": "1.3.6.1.2.1.2.2.1.1",
    "IF-MIB::ifDescr": "1.3.6.1.2.1.2.2.1.2",
    "IF-MIB::ifAdminStatus": "1.3.6.1.2.1.2.2.1.7",
    "IF-MIB::ifOperStatus": "1.3.6.1.2.1.2.2.1.8",
}


def make_event(
    *,
    source: str = "192.0.2.10",
    trap_name: str = "IF-MIB::linkDown",
    trap_oid: str = "1.3.6.1.6.3.1.1.5.3",
    varbinds: Iterable[tuple[str, SnmpType, Any]] = (("IF-MIB::ifIndex", "Integer32", 17),),
    received_at: float | None = None,
    kind: str = "trap",
) -> Event:
    """An event as the normalizer would make it; varbinds as (name, type, value), index 17 when named."""
    vbs = []
    for name, type_, value in varbinds:
        base = _OIDS.get(name, "1.3.6.1.4.1.99999.1")
        index = (17,) if name in _OIDS else ()
        display = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        vbs.append(VarBind(parse_oid(base) + index, name, index, type_, value, display))
    return Event(
        id=new_event_id(),
        received_at=time.time() if received_at is None else received_at,
        source=source,
        source_port=50000,
        version="v2c",
        kind=kind,  # type: ignore[arg-type]
        security=Security(community="public"),
        uptime=12345,
        trap_oid=parse_oid(trap_oid),
        trap_name=trap_name,
        varbinds=tuple(vbs),
    )


def plan(
    action: str,
    params: Mapping[str, Any],
    *,
    rule: str = "test-rule",
    key: str | None = None,
    index: int = 0,
    delay: float = 0.0,
    cancel_key: str | None = None,
    once_within: float | None = None,
    once_key: str | None = None,
    retry: RetryPolicy | None = None,
    caps: Iterable[RateCap] = (),
    dry_run: bool = False,
    item: dict[str, Any] | None = None,
) -> PlannedAction:
    return PlannedAction(
        rule=rule,
        action=action,
        index=index,
        params=dict(params),
        key=key if key is not None else rule,
        mode="dry-run" if dry_run else "enforce",
        delay=delay,
        cancel_key=cancel_key,
        once_within=once_within,
        once_key=once_key,
        retry=retry or RetryPolicy(),
        caps=tuple(caps),
        item=item,
    )


def make_outcome(*planned: PlannedAction, cancels: Iterable[str] = ()) -> Outcome:
    return Outcome(
        matched=tuple(dict.fromkeys(p.rule for p in planned)), planned=tuple(planned), cancels=tuple(cancels)
    )


def make_context(
    event: Event | None = None,
    *,
    http: Any = None,
    kea: Any = None,
    settings: Mapping[str, Any] | None = None,
    rule: str = "test-rule",
    action_id: str = "1",
    attempt: int = 1,
) -> ActionContext:
    """An ActionContext for calling a plugin's run() directly in its unit tests."""
    ev = event or make_event()
    return ActionContext(
        event=ev,
        rule=rule,
        action_id=action_id,
        log=structlog.get_logger("trapd.test").bind(event_id=ev.id, rule=rule, action_id=action_id),
        kea=kea,
        http=http,
        settings=dict(settings or {}),
        attempt=attempt,
    )


def rule_file_problems(path: str | Path) -> list[str]:
    """Errors and warnings the rule compiler finds in a rules file, with the installed plugins.

    For a plugin's own test that its example.yaml stays valid.
    """
    from trapd.mibs import MibResolver
    from trapd.plugin import load_actions
    from trapd.rules import compile_rules

    actions, _ = load_actions()
    _, problems = compile_rules([Path(path)], MibResolver.load(), actions)
    return [str(p) for p in problems]
