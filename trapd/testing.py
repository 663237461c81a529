"""A kit for testing action plugins (and trapd's own dispatcher) without a daemon.

In the spirit of httpx's ``MockTransport`` and structlog's ``testing``: run
your action's real code with validated parameters, a context of your choice
and a log you can read, and answer its Kea commands from a function::

    from trapd.testing import KeaDouble, run_action

    async def test_ticket():
        run = await run_action(ticket, {"queue": "netops", "text": "hi"}, settings={"url": URL})
        assert run.result == {"ticket": 42}
        assert run.logs == [{"event": "ticket opened", "log_level": "info", "ticket": 42, ...}]

    async def test_release():  # docs/plugins.md's acme.release, which sends lease4-del
        kea = KeaDouble({"lease4-del": {"result": 0, "text": "IPv4 lease deleted."}})
        await run_action(release, {"ip": "192.0.2.7"}, kea=kea.clients())
        assert kea.commands() == ["lease4-del"]

* :func:`run_action` validates the parameters as the rule compiler does
  (a :class:`~trapd.params.ParamError` for a value the rule could not pass),
  builds the :class:`~trapd.plugin.ActionContext` and awaits the action.
  ``ctx.record`` keeps what the action journals (``run.records``, as JSON);
  ``previous=`` and ``attempt=`` make the run a retry.
* :class:`CapturedLog` is ``ctx.log``: every line, with the fields bound to it.
* :class:`KeaDouble` stands in for Kea behind the real client
  (:class:`~trapd.kea.client.KeaClients`): encoding, result codes and errors
  are trapd's own code; only the socket is replaced. It answers from a dict
  (command -> answer) or a function, and records what was sent. For a fault
  the real Kea cannot be made to produce, raise a :mod:`trapd.kea.errors`
  error from the function. The integration tests against a real Kea stay the
  proof that the commands are right.
* For ``ctx.http``, pass ``httpx.AsyncClient(transport=httpx.MockTransport(handler))``.
* :func:`make_event`, :func:`plan`, :func:`make_outcome` build the inputs of
  a test through the real :class:`~trapd.dispatch.dispatcher.Dispatcher`;
  :func:`rule_file_problems` checks an example rules file, and
  :func:`evaluate_rules` says what it plans for an event (the parameters rendered from the trap).
"""

from __future__ import annotations

import functools
import itertools
import json
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trapd.event import Event, VarBind, new_event_id, parse_oid
from trapd.listener.raw import Security, SnmpType
from trapd.params import Param, ParamError, validate
from trapd.plugin import ActionContext, ActionLog, ActionResult, ActionSpec, check_settings, checked_result
from trapd.rules.outcome import Outcome, PlannedAction, RateCap, RetryPolicy
from trapd.secrets import resolve as resolve_secrets

if TYPE_CHECKING:
    import httpx

    from trapd.kea.client import KeaClients
    from trapd.kea.config import EndpointConfig
    from trapd.mibs import MibResolver

__all__ = [
    "ActionRun",
    "CapturedLog",
    "KeaDouble",
    "KeaRequest",
    "evaluate_rules",
    "make_context",
    "make_event",
    "make_outcome",
    "plan",
    "rule_file_problems",
    "run_action",
]

_uptimes = itertools.count()

_OIDS = {
    "IF-MIB::ifIndex": "1.3.6.1.2.1.2.2.1.1",
    "IF-MIB::ifDescr": "1.3.6.1.2.1.2.2.1.2",
    "IF-MIB::ifAdminStatus": "1.3.6.1.2.1.2.2.1.7",
    "IF-MIB::ifOperStatus": "1.3.6.1.2.1.2.2.1.8",
}

# ---------------------------------------------------------------------------------------- events

_LINK_DOWN = "1.3.6.1.6.3.1.1.5.3"


def _notification_oid(name: str) -> str:
    """The OID of a notification named in the shipped MIBs (or a decoder's), else ValueError."""
    from trapd import decoders
    from trapd.event import oid_str
    from trapd.rules.resolver import lookup_name

    oid = lookup_name(_resolver(), name, decoders.known_names())
    if oid is None:
        raise ValueError(f"make_event: unknown notification {name!r}: give its OID too (trap_oid=...)")
    return oid_str(oid)


def _varbind_oid(name: str, n: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(object OID, instance index) of a varbind named ``name`` (the ``n``-th of its event)."""
    if name in _OIDS:  # the default event's: no MIB loading for it
        return parse_oid(_OIDS[name]), (17,)
    from trapd import decoders
    from trapd.rules.resolver import lookup_name

    resolver = _resolver()
    oid = lookup_name(resolver, name, decoders.known_names())
    if oid is None:
        return (1, 3, 6, 1, 4, 1, 99999, n + 1), ()
    kind = resolver.kind(oid)
    return oid, (17,) if kind == "column" else (0,) if kind == "scalar" else ()


@functools.cache
def _resolver() -> MibResolver:
    """The MIBs trapd ships, loaded once (a second) for every make_event that needs them."""
    from trapd.mibs import MibResolver

    return MibResolver.load()


def make_event(
    *,
    source: str = "192.0.2.10",
    trap_name: str = "IF-MIB::linkDown",
    trap_oid: str | None = None,
    varbinds: Iterable[tuple[str, SnmpType, Any]] = (("IF-MIB::ifIndex", "Integer32", 17),),
    received_at: float | None = None,
    kind: str = "trap",
) -> Event:
    """An event as the normalizer would make it; varbinds as (name, type, value).

    ``trap_oid`` (what rules match) defaults to the OID of ``trap_name``, looked up in the MIBs
    trapd ships; give it for a notification they do not define. A varbind's OID is its name's in
    those MIBs (what a rule's ``varbinds:`` condition compares), at index 17 for a table column
    (the ifIndex the default event names) and 0 for a scalar; a name they do not define gets an
    OID of its own under 1.3.6.1.4.1.99999 (templates still find it by name).
    """
    if trap_oid is None:
        trap_oid = _LINK_DOWN if trap_name == "IF-MIB::linkDown" else _notification_oid(trap_name)
    vbs = []
    for n, (name, type_, value) in enumerate(varbinds):
        oid, index = _varbind_oid(name, n)
        display = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
        vbs.append(VarBind(oid + index, name, index, type_, value, display))
    return Event(
        id=new_event_id(),
        received_at=time.time() if received_at is None else received_at,
        source=source,
        source_port=50000,
        version="v2c",
        kind=kind,  # type: ignore[arg-type]
        security=Security(community="public"),
        # Each call another notification (a shared journal takes equal ones for copies of one).
        uptime=12345 + next(_uptimes),
        trap_oid=parse_oid(trap_oid),
        trap_name=trap_name,
        varbinds=tuple(vbs),
    )


def plan(
    action: str | ActionSpec,
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
    """One planned action, as a rule would plan it (for a test through the dispatcher).

    ``action``: the action itself (its ActionSpec), whose declaration ``params`` are validated
    against as a rule's are (converted, defaults filled in, a secret's ``{"env": NAME}`` a
    reference the dispatcher resolves; a ParamError for what a rule could not pass), or a name,
    whose ``params`` are journaled as given.
    """
    if isinstance(action, ActionSpec):
        params, action = validate(action.params, _as_rules_pass(action.params, params)), action.name
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
    """What the rules would return for an event that planned these actions."""
    return Outcome(
        matched=tuple(dict.fromkeys(p.rule for p in planned)), planned=tuple(planned), cancels=tuple(cancels)
    )


# ---------------------------------------------------------------------------------------- the log


class CapturedLog:
    """``ctx.log`` for a test: keeps every line as a dict, like ``structlog.testing.capture_logs``.

    Each entry has ``event``, ``log_level`` and the fields, those bound with
    :meth:`bind` included. Loggers made by ``bind`` share the parent's list.
    It provides exactly :class:`trapd.plugin.ActionLog`, what trapd gives
    an action in production: a method that is not there fails here too.
    """

    def __init__(self, entries: list[dict[str, Any]] | None = None, **bound: Any) -> None:
        self.entries: list[dict[str, Any]] = [] if entries is None else entries
        self._bound = bound

    def bind(self, **fields: Any) -> CapturedLog:
        return CapturedLog(self.entries, **{**self._bound, **fields})

    def _write(self, level: str, event: str, fields: dict[str, Any]) -> None:
        self.entries.append({"event": event, "log_level": level, **self._bound, **fields})

    def debug(self, event: str, **fields: Any) -> None:
        self._write("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._write("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._write("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._write("error", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._write("critical", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        self._write("error", event, {"exc_info": True, **fields})

    def events(self, level: str | None = None) -> list[str]:
        """The ``event`` of each line (of one level when given), in order."""
        return [e["event"] for e in self.entries if level is None or e["log_level"] == level]


# ---------------------------------------------------------------------------------------- Kea


@dataclass(frozen=True)
class KeaRequest:
    """One command a Kea client sent, decoded: what a :class:`KeaDouble` answers.

    ``endpoint``: the endpoint's name, or ``NAME/PEER`` for a server of an HA relationship."""

    endpoint: str
    command: str
    arguments: Any = None
    service: tuple[str, ...] = ()


KeaAnswer = Mapping[str, Any] | list[Mapping[str, Any]]
KeaHandler = Callable[[KeaRequest], KeaAnswer]


@dataclass
class KeaDouble:
    """Kea's side of the control socket, for unit tests of Kea actions (see the module docstring).

    ``answers``: a mapping command -> answer (``{"result": 0, "text": ...,
    "arguments": ...}``), or a function of the :class:`KeaRequest` that
    returns one or raises a :mod:`trapd.kea.errors` error. A command it has
    no answer for gets Kea's own "not supported" (result 2).
    """

    answers: Mapping[str, KeaAnswer] | KeaHandler = field(default_factory=dict)
    requests: list[KeaRequest] = field(default_factory=list)
    # The peers whose HA status says they serve clients (clients(serving=...)); None: not said.
    _serving: frozenset[str] | None = field(default=None, init=False, repr=False)

    def clients(
        self,
        endpoints: Mapping[str, Iterable[str]] | None = None,
        *,
        transport: str = "control-agent",
        peers: Iterable[str] = (),
        serving: Iterable[str] | None = None,
    ) -> KeaClients:
        """The ``ctx.kea`` registry, its endpoints (name -> families; default: ``kea`` for v4 and v6)
        all answered by this double.

        ``peers`` (names, two or more) makes each endpoint a Kea HA relationship of those servers,
        as trapd.yaml's ``peers:`` does: ``ctx.kea.get()`` then needs a ``peer``, and each
        request's :attr:`KeaRequest.endpoint` names the server (``kea/server1``). ``serving``: the
        peers that serve clients now (hot-standby's active server, both of a load-balancing pair;
        none: a pair in trouble), which ``ctx.kea.serving()`` picks from: the double answers each
        peer's ``status-get`` with its HA status (recorded in :attr:`requests` like any command).
        """
        from dataclasses import replace

        from trapd.kea.client import KeaClients
        from trapd.kea.config import EndpointConfig, KeaConfig

        families = endpoints or {"kea": ("v4", "v6")}
        names = tuple(peers)
        if len(names) == 1:
            raise ValueError("an HA relationship has two or more peers")
        if serving is not None:
            self._serving = frozenset(serving)
            if not names or not self._serving <= set(names):
                raise ValueError(f"serving names peers of the relationship ({', '.join(names) or 'none'})")
        made: dict[str, EndpointConfig] = {}
        for name, fams in families.items():
            server = EndpointConfig(
                name=name, transport=transport, families=tuple(fams), url="http://kea.test/"
            )
            if names:
                pair = tuple(replace(server, peer=peer) for peer in names)
                server = EndpointConfig(name, "peers", server.families, server.timeout, peers=pair)
            made[name] = server
        return KeaClients(KeaConfig(endpoints=made), transport=self._transport_for)

    def commands(self) -> list[str]:
        """The commands sent so far, in order."""
        return [r.command for r in self.requests]

    def _transport_for(self, endpoint: EndpointConfig) -> _DoubleTransport:
        return _DoubleTransport(self, endpoint.label)  # a peer: "kea/server1"

    def answer(self, request: KeaRequest) -> KeaAnswer:
        self.requests.append(request)
        if request.command == "status-get" and self._serving is not None:
            return self._ha_status(request.endpoint.rpartition("/")[2])
        if callable(self.answers):
            return self.answers(request)
        found = self.answers.get(request.command)
        if found is None:
            return {"result": 2, "text": f"'{request.command}' command not supported."}
        return found

    def _ha_status(self, peer: str) -> KeaAnswer:
        """Kea's status-get of ``peer`` in the relationship: serving its scope, or standing by."""
        serves = peer in (self._serving or ())
        local = {
            "role": "primary" if serves else "standby",
            "server-name": peer,
            "state": "hot-standby" if serves else "waiting",
            "scopes": [peer] if serves else [],
        }
        relationship = {
            "ha-mode": "hot-standby",
            "ha-servers": {"local": local, "remote": {"in-touch": True}},
        }
        return {"result": 0, "text": "", "arguments": {"high-availability": [relationship]}}


class _DoubleTransport:
    """trapd.kea.transport.Transport, answered by a KeaDouble instead of a socket."""

    def __init__(self, double: KeaDouble, endpoint: str) -> None:
        self._double = double
        self._endpoint = endpoint

    async def exchange(self, body: bytes, command: str) -> Any:
        msg = json.loads(body)
        request = KeaRequest(
            self._endpoint, msg["command"], msg.get("arguments"), tuple(msg.get("service", ()))
        )
        # Through JSON, as over a socket: the action gets fresh objects, never the test's own.
        return json.loads(json.dumps(self._double.answer(request)))

    async def aclose(self) -> None:
        return None


# ---------------------------------------------------------------------------------------- running


def make_context(
    event: Event | None = None,
    *,
    http: httpx.AsyncClient | None = None,
    kea: KeaClients | None = None,
    settings: Mapping[str, Any] | None = None,
    rule: str = "test-rule",
    action_id: str = "1",
    attempt: int = 1,
    log: ActionLog | None = None,
    record: Callable[[Any], Awaitable[None]] | None = None,
    previous: Any = None,
) -> ActionContext:
    """An ActionContext for calling an action's ``run`` directly.

    ``kea`` defaults to a registry with no endpoints (as a trapd.yaml without
    ``kea:`` gives), ``http`` to an ``httpx.AsyncClient`` whose every request
    fails (pass one with ``httpx.MockTransport`` to answer). ``log`` (bound
    as the dispatcher binds it) defaults to a structlog logger, so that
    ``structlog.testing.capture_logs()`` sees its lines; :func:`run_action`
    passes a :class:`CapturedLog`. ``record`` and ``previous`` are
    ``ctx.record`` / ``ctx.previous`` (:func:`run_action` records into a list).
    """
    import httpx
    import structlog

    from trapd.kea.client import KeaClients
    from trapd.kea.config import KeaConfig

    ev = event or make_event()
    base: ActionLog = log if log is not None else structlog.get_logger("trapd.test")
    return ActionContext(
        event=ev,
        rule=rule,
        action_id=action_id,
        log=base.bind(event_id=ev.id, rule=rule, action_id=action_id),
        kea=kea if kea is not None else KeaClients(KeaConfig()),
        http=http if http is not None else httpx.AsyncClient(transport=httpx.MockTransport(_no_network)),
        settings=dict(settings or {}),
        attempt=attempt,
        record=record,
        previous=previous,
    )


def _no_network(request: httpx.Request) -> httpx.Response:
    raise AssertionError(f"unexpected HTTP request in a test: {request.method} {request.url}")


@dataclass
class ActionRun:
    """What :func:`run_action` saw: the result, the context, every log line of the action, and
    what it journaled with ``ctx.record`` (in the journal's form: JSON), in order."""

    result: ActionResult
    context: ActionContext
    log: CapturedLog
    records: list[Any] = field(default_factory=list)

    @property
    def logs(self) -> list[dict[str, Any]]:
        return self.log.entries


async def run_action(
    spec: ActionSpec,
    params: Mapping[str, Any],
    *,
    event: Event | None = None,
    settings: Mapping[str, Any] | None = None,
    http: httpx.AsyncClient | None = None,
    kea: KeaClients | None = None,
    attempt: int = 1,
    previous: Any = None,
    records: list[Any] | None = None,
) -> ActionRun:
    """Validate ``params`` against the action's declaration, then run it once with a fake context.

    Raises :class:`~trapd.params.ParamError` for parameters a rule could not
    pass, and whatever the action raises (``RetryableError``,
    ``PermanentError``): test that with ``pytest.raises``.

    A parameter declared ``secret`` or ``secret_ref`` may be written as a rule writes it,
    ``{"env": NAME}`` or ``{"file": PATH}``: the action gets the secret, as from trapd.

    ``settings`` is loaded as trapd loads the plugin's section of trapd.yaml:
    an ``{"env": NAME}`` or ``{"file": PATH}`` value reaches the action as a
    :class:`~trapd.secrets.Secret` (``reveal()`` gives the text). An action that declares its
    settings gets them converted, with their defaults, and a
    :class:`~trapd.params.ParamError` for a setting it does not declare or that does not fit
    (what ``trapd check`` reports in trapd.yaml); with no ``settings`` at all, as with no
    section in trapd.yaml, the defaults and no error.

    ``ctx.record`` appends to ``records`` (also :attr:`ActionRun.records`;
    pass your own list to see what an attempt that raised recorded), each
    value as the journal keeps it and a retry gets it back: JSON. A retry is
    ``run_action(..., previous=records[-1], attempt=2)``.
    """
    from trapd.config import load_action_settings
    from trapd.dispatch.journal.rows import check_record, dumps_result

    log = CapturedLog(action=spec.name)  # the dispatcher binds the action's name too
    journaled = records if records is not None else []

    async def record(partial: Any) -> None:
        check_record(partial)  # as trapd's: RecordTooLarge for one the journal would cut short
        journaled.append(json.loads(dumps_result(partial)))

    # As trapd loads its section of trapd.yaml: `{env: NAME}` / `{file: PATH}` become Secrets.
    loaded, problems = check_settings(spec, load_action_settings(spec.name, settings or {}, Path.cwd()))
    if problems and settings is not None:  # none given: as trapd.yaml without a section for it
        raise ParamError("settings: " + "; ".join(message for _, message in problems))
    ctx = make_context(
        event, http=http, kea=kea, settings=loaded, rule="test-rule", attempt=attempt, log=log,
        record=record, previous=previous,
    )  # fmt: skip
    given = _as_rules_pass(spec.params, params)
    result = checked_result(spec.name, await spec.run(resolve_secrets(validate(spec.params, given)), ctx))
    return ActionRun(result, ctx, log, journaled)


def evaluate_rules(path: str | Path, event: Event) -> Outcome:
    """What the rules file does with ``event``, with the installed plugins: the rules that match,
    the actions they plan (:attr:`Outcome.planned`, each with its parameters rendered from the
    event and validated) and those refused (:attr:`Outcome.rejected`: a template that failed, a
    value that does not fit), as trapd would journal and log them.

    For a plugin's test of its example rule: ``run_action(spec, planned.params, event=event)``
    runs the action as that trap would. A file with an error is a ValueError with the problems
    as ``trapd check`` shows them.
    """
    from trapd.plugin import load_actions
    from trapd.rules import compile_rules

    actions, _ = load_actions()
    rules, problems = compile_rules([Path(path)], _resolver(), actions)
    errors = [str(p) for p in problems if p.severity == "error"]
    if errors:
        raise ValueError("\n".join(errors))
    return rules.evaluate(event)


def _as_rules_pass(declared: Mapping[str, Param], params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` as the rule compiler hands them on: in a secret parameter, a value written
    ``{env: NAME}`` or ``{file: PATH}`` (at any depth; of a ``secret_ref`` one, the value itself)
    is a reference, resolved when the action runs (trapd.rules.compile_values)."""
    out = dict(params)
    for name, value in params.items():
        p = declared.get(name)
        if p is not None and (p.secret or p.secret_ref):
            out[name] = _references(value, deep=p.secret)
    return out


def _references(value: Any, *, deep: bool) -> Any:
    from trapd.secrets import reference, source_reference

    if (source := source_reference(value)) is not None:
        return reference(source)
    if deep and isinstance(value, list):
        return [_references(v, deep=deep) for v in value]
    if deep and isinstance(value, Mapping):
        return {k: _references(v, deep=deep) for k, v in value.items()}
    return value


def rule_file_problems(path: str | Path) -> list[str]:
    """Errors and warnings the rule compiler finds in a rules file, with the installed plugins.

    For a plugin's own test that its example.yaml stays valid.
    """
    from trapd.plugin import load_actions
    from trapd.rules import compile_rules

    actions, _ = load_actions()
    _, problems = compile_rules([Path(path)], _resolver(), actions)
    return [str(p) for p in problems]
