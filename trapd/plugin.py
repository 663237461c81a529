"""The action plugin API: what an action is, what it gets, what it may raise.

An action is one async function (or a small class) that declares its name,
typed parameters and whether it is safe to repeat. Built-ins in ``actions/``
and a site's own plugins register the same way, under the entry-point group
``trapd.actions``::

    # pyproject.toml of a site plugin
    [project.entry-points."trapd.actions"]
    "acme.ticket" = "acme_trapd:ticket"

    # acme_trapd.py
    from trapd.plugin import Param, action, ActionContext, RetryableError

    @action(
        "acme.ticket",
        params={"queue": Param("string", required=True), "text": Param("string", required=True)},
        idempotent=False,
    )
    async def ticket(params, ctx: ActionContext):
        '''Open a ticket in ACME's tracker.

        Example::

            - action: acme.ticket
              queue: netops
              text: "{{ source }} reported {{ trap_name }}"
        '''
        r = await ctx.http.post("https://tickets.example/api", json=params)
        if r.status_code >= 500:
            raise RetryableError(f"tracker answered {r.status_code}")
        return {"ticket": r.json()["id"]}

The dispatcher calls ``run(params, ctx)`` with validated parameters. Return a
JSON-serializable dict (stored in the journal as the action's result) or
None. Raise :class:`RetryableError` for a failure worth retrying (timeouts,
5xx, refused connections) and :class:`PermanentError` for one that will not
get better (bad credentials, 4xx, unsupported command). Any other exception
counts as retryable, with its traceback logged.
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

# Re-exported: plugin authors import them from here.
from trapd.errors import ActionError as ActionError
from trapd.errors import PermanentError as PermanentError
from trapd.errors import RecordTooLarge as RecordTooLarge
from trapd.errors import RetryableError as RetryableError
from trapd.params import Param as Param
from trapd.params import ParamError, convert
from trapd.secrets import Secret

if TYPE_CHECKING:
    import httpx

    from trapd.event import Event
    from trapd.kea.client import KeaClients
    from trapd.programs import ProgramGroups

ENTRY_POINT_GROUP = "trapd.actions"

ActionResult = dict[str, Any] | None
RunFunc = Callable[[dict[str, Any], "ActionContext"], Awaitable[ActionResult]]


@runtime_checkable
class ActionLog(Protocol):
    """What ``ctx.log`` provides: structlog's level methods and ``bind``, nothing more.

    In trapd it is a :class:`trapd.service.logging.TrapdLogger` (lines go to
    trapd's log, secrets masked); in a test, :class:`trapd.testing.CapturedLog`.
    structlog's async methods (``ainfo``...) are not part of it: a line is
    written without waiting, so an action has no reason to await one.
    """

    def debug(self, event: str, **fields: Any) -> None: ...
    def info(self, event: str, **fields: Any) -> None: ...
    def warning(self, event: str, **fields: Any) -> None: ...
    def error(self, event: str, **fields: Any) -> None: ...
    def critical(self, event: str, **fields: Any) -> None: ...
    def exception(self, event: str, **fields: Any) -> None:
        """error() with the traceback of the exception being handled."""

    def bind(self, **fields: Any) -> ActionLog: ...


@dataclass(slots=True)
class ActionContext:
    """What an action gets besides its parameters.

    ``log`` is bound to event_id, rule and action_id, so every line the
    action writes can be traced back to the trap. ``kea`` reaches the
    configured Kea endpoints (always a registry: with no ``kea:`` in
    trapd.yaml it has none, and asking it for one raises a PermanentError
    that says so); ``http`` is a shared httpx.AsyncClient;
    ``settings`` is the plugin's own section of trapd.yaml
    (``actions: {NAME: {...}}``), empty when there is none; converted, with
    defaults, when the plugin declares its settings (:func:`check_settings`).
    """

    event: Event
    rule: str
    action_id: str
    log: ActionLog
    kea: KeaClients
    http: httpx.AsyncClient
    settings: Mapping[str, Any] = field(default_factory=dict)
    attempt: int = 1
    # Journal a partial result before a step that cannot be taken back (kea.lease-del: the
    # leases, before it deletes them): committed when it returns, kept on the journal row if the
    # attempt does not end (an answer lost, trapd stopped), and handed to the next attempt as
    # ``previous``. None where no journal is behind the call (an action run directly).
    record: Callable[[Any], Awaitable[None]] | None = None
    # What an earlier attempt of this action recorded with ``record``; None on a first attempt.
    previous: Any = None
    # Where an action records a process group it starts (``programs.starting(action_id, event
    # id)`` before, ``programs.started(action_id, pid)`` after, ``programs.ended(action_id)`` once
    # it is over), so that the group is ended before the action runs again should trapd die
    # meanwhile (trapd.programs). None where no journal is behind the call.
    programs: ProgramGroups | None = None


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """A registered action, however it was written.

    ``destructive`` actions (deleting leases, disabling DHCP) must have a
    rate cap in the rule or globally; ``trapd check`` refuses them otherwise.
    ``key`` names the parameter(s) whose values order actions: two actions
    with the same key run one after the other, never at once.
    """

    name: str
    run: RunFunc
    params: Mapping[str, Param]
    idempotent: bool = False
    destructive: bool = False
    key: tuple[str, ...] = ()
    doc: str = ""
    # Kea commands this action sends, so start-up can warn when an endpoint lacks them.
    kea_commands: tuple[str, ...] = ()
    # Kea actions: the address families their parameters allow (``templated`` names the
    # parameters known only per trap; () = none implied), and whether one call runs on every
    # peer of an HA relationship (the dispatcher journals one action per peer).
    kea_families: Callable[[Mapping[str, Any], frozenset[str]], tuple[str, ...]] | None = None
    per_peer: Callable[[Mapping[str, Any]], bool] | None = None
    # What the plugin's section of trapd.yaml may hold (``actions: {NAME: {...}}``), declared as
    # its parameters are; None: not declared, any keys are handed over as written.
    settings: Mapping[str, Param] | None = None

    @property
    def summary(self) -> str:
        return (self.doc.strip().splitlines() or [""])[0]


def action(
    name: str,
    *,
    params: Mapping[str, Param],
    idempotent: bool = False,
    destructive: bool = False,
    key: tuple[str, ...] = (),
    kea_commands: tuple[str, ...] = (),
    kea_families: Callable[[Mapping[str, Any], frozenset[str]], tuple[str, ...]] | None = None,
    per_peer: Callable[[Mapping[str, Any]], bool] | None = None,
    settings: Mapping[str, Param] | None = None,
) -> Callable[[RunFunc], ActionSpec]:
    """Declare an async function as an action; its docstring is its documentation.

    ``settings``: what its section of trapd.yaml may hold, as ``Param`` objects (see
    :func:`check_settings`); ``trapd check`` reports a key it does not declare or a value that
    does not fit, with its place in trapd.yaml.
    """

    def wrap(fn: RunFunc) -> ActionSpec:
        if not inspect.iscoroutinefunction(fn):
            raise TypeError(f"action {name}: run must be an async function")
        _check_signature(name, fn)
        return ActionSpec(
            name=name,
            run=fn,
            params=_check_params(name, params),
            idempotent=idempotent,
            destructive=destructive,
            key=_check_key(name, key, params),
            doc=inspect.getdoc(fn) or "",
            kea_commands=kea_commands,
            kea_families=_guarded(name, "kea_families", kea_families),
            per_peer=_guarded(name, "per_peer", per_peer),
            settings=None if settings is None else _check_params(name, settings, "setting"),
        )

    return wrap


class ActionClass(Protocol):
    """The class form: attributes plus an async ``run``."""

    name: str
    params: Mapping[str, Param]

    async def run(self, params: dict[str, Any], ctx: ActionContext) -> ActionResult: ...


def as_spec(obj: Any) -> ActionSpec:
    """Accept an ActionSpec, or a class / instance with ``name``, ``params`` and async ``run``."""
    if isinstance(obj, ActionSpec):
        return obj
    if inspect.ismodule(obj):
        raise TypeError(
            f"the entry point names the module {obj.__name__}, not an action in it:"
            f" name the object too ({obj.__name__}:OBJECT)"
        )
    if inspect.isfunction(obj) or inspect.ismethod(obj):
        raise TypeError(
            f"{obj.__name__} is a function, not an action: declare it with"
            " @trapd.plugin.action(NAME, params={...})"
        )
    if inspect.isclass(obj):
        obj = obj()
    run = getattr(obj, "run", None)
    if not (
        isinstance(getattr(obj, "name", None), str) and isinstance(getattr(obj, "params", None), Mapping)
    ):
        raise TypeError(f"{obj!r} is not an action: it needs name, params and an async run")
    if run is None or not inspect.iscoroutinefunction(run):
        raise TypeError(f"action {obj.name}: run must be an async method")
    _check_signature(obj.name, run)
    params = _check_params(obj.name, obj.params)
    settings = getattr(obj, "settings", None)
    if settings is not None:
        if not isinstance(settings, Mapping):
            raise TypeError(f"action {obj.name}: settings must be a mapping of names to Param")
        settings = _check_params(obj.name, settings, "setting")
    return ActionSpec(
        name=obj.name,
        run=run,
        params=params,
        idempotent=bool(getattr(obj, "idempotent", False)),
        destructive=bool(getattr(obj, "destructive", False)),
        key=_check_key(obj.name, getattr(obj, "key", ()), params),
        doc=inspect.getdoc(type(obj)) or "",
        kea_commands=tuple(getattr(obj, "kea_commands", ())),
        kea_families=_guarded(obj.name, "kea_families", getattr(obj, "kea_families", None)),
        per_peer=_guarded(obj.name, "per_peer", getattr(obj, "per_peer", None)),
        settings=settings,
    )


def _check_signature(name: str, run: Callable[..., Any]) -> None:
    """TypeError (a broken plugin) for a ``run`` that cannot be called as ``run(params, ctx)``:
    else it loaded, passed ``trapd check`` and failed on every trap."""
    try:
        signature = inspect.signature(run)
    except (TypeError, ValueError):
        return  # not introspectable (a builtin, a C extension): called as it is
    try:
        signature.bind({}, None)
    except TypeError:
        raise TypeError(
            f"action {name}: run is called as run(params, ctx); {getattr(run, '__name__', 'run')}"
            f"{_shown(signature)} cannot take that"
        ) from None


def _shown(signature: inspect.Signature) -> str:
    """``(params)``: the parameters as written, without their annotations."""
    plain = [p.replace(annotation=inspect.Parameter.empty) for p in signature.parameters.values()]
    return str(signature.replace(parameters=plain, return_annotation=inspect.Signature.empty))


def _check_params(name: str, params: Mapping[str, Any], what: str = "parameter") -> dict[str, Param]:
    """A declaration trapd can describe and validate; else TypeError (reported as a broken plugin).

    Each default is converted as a rule's value would be (``"30s"`` to 30.0): the action gets it
    without a rule writing it, in the same form; a default that does not fit its type is an error
    of the plugin's, said at once rather than met on the first trap.
    """
    out: dict[str, Param] = {}
    for pname, param in params.items():
        if not isinstance(pname, str) or not isinstance(param, Param):
            raise TypeError(
                f"action {name}: {what} {pname!r} is declared as {type(param).__name__}, not a Param"
            )
        if param.required and param.default is not None:
            # The rule compiler took the default for a rule that leaves it out; validate() refused
            # that action on every trap as missing a required value.
            raise TypeError(f"action {name}: {what} {pname!r} is required and has a default: drop one")
        if param.default is not None:
            try:
                param = replace(param, default=convert(param, param.default, "default"))
            except ParamError as exc:
                raise TypeError(f"action {name}: {what} {pname!r}: {exc}") from None
        out[pname] = param
    return out


_F = TypeVar("_F", bound=Callable[..., Any])


def _guarded(name: str, what: str, fn: _F | None) -> _F | None:
    """``fn``, a plugin's own callable that trapd calls outside the action's run (kea_families
    when it compiles a rule and journals an action, per_peer when it journals one), its unexpected
    exceptions made a :class:`PermanentError` that says whose bug it is; TypeError (a broken
    plugin) for one that is not callable (``per_peer = True``).

    trapd's callers take an ActionError or ValueError as "these parameters do not work" (a rule
    problem; the action journaled as it is, to fail when it runs); a KeyError from a plugin's
    lambda ended ``trapd check`` with a traceback and made the dispatcher drop the whole event.
    """
    if fn is None:
        return None
    if not callable(fn):
        example = "lambda params: True" if what == "per_peer" else "lambda params, templated: ('v4',)"
        raise TypeError(
            f"action {name}: {what} is a function of the parameters, not {fn!r}: {what}={example}"
        )
    if inspect.iscoroutinefunction(fn):
        raise TypeError(f"action {name}: {what} is called without await: a plain def, not an async def")
    call = fn

    def guarded(*args: Any) -> Any:
        try:
            return call(*args)
        except (ActionError, ValueError):
            raise
        except Exception as exc:
            raise PermanentError(
                f"its {what} raised {type(exc).__name__}: {exc} (a bug in the plugin {name})"
            ) from exc

    return guarded  # type: ignore[return-value]


def _check_key(name: str, key: Any, params: Mapping[str, Param]) -> tuple[str, ...]:
    """``key`` as a tuple of declared parameter names; else TypeError (reported as a broken plugin).

    A name that is not a parameter orders nothing: every action would get a key of its own.
    """
    if not isinstance(key, tuple | list) or not all(isinstance(k, str) for k in key):
        raise TypeError(f"action {name}: key is a tuple of parameter names: key=({key!r},)")
    for k in key:
        if k not in params:
            raise TypeError(
                f"action {name}: key names {k!r}, not a parameter; it has: {', '.join(params) or 'none'}"
            )
    return tuple(key)


def check_settings(
    spec: ActionSpec, values: Mapping[str, Any]
) -> tuple[dict[str, Any], list[tuple[str | None, str]]]:
    """The plugin's settings as its ``run`` gets them, and what is wrong with them.

    Returns the values converted to their declared types, defaults filled in, and the problems:
    ``(key, message)``, ``key`` None for one of the whole section (a required setting missing).
    A plugin that declares no settings gets ``values`` as they are, and no problem. A value
    written ``{env: NAME}`` or ``{file: PATH}`` (a :class:`~trapd.secrets.Secret`) fits a
    ``string`` setting, and a ``mapping`` setting's values, and is handed over as the Secret.
    """
    declared = spec.settings
    if declared is None:
        return dict(values), []
    out: dict[str, Any] = {}
    problems: list[tuple[str | None, str]] = []
    for key in values:
        if key not in declared:
            close = difflib.get_close_matches(str(key), list(declared), n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            known = ", ".join(declared) or "none"
            problems.append((str(key), f"unknown setting {str(key)!r}{hint}; {spec.name} takes: {known}"))
    for key, param in declared.items():
        value = values.get(key)
        if value is None:
            if param.required:
                problems.append((None, f"{key}: required"))
            elif param.default is not None:
                out[key] = param.default
            continue
        try:
            out[key] = _convert_setting(param, value, key)
        except ParamError as exc:
            problems.append((key, str(exc)))
    return out, problems


def plugin_settings(
    specs: Mapping[str, ActionSpec], settings: Mapping[str, Mapping[str, Any]]
) -> dict[str, Mapping[str, Any]]:
    """``actions:`` as the plugins get it (``ctx.settings``): declared settings converted, with
    their defaults, also for a plugin with no section in trapd.yaml; others as written.

    Converting again what is converted changes nothing (``120.0`` is a duration too).
    """
    out: dict[str, Mapping[str, Any]] = {name: dict(values) for name, values in settings.items()}
    for name, spec in specs.items():
        if spec.settings is not None:
            out[name] = check_settings(spec, settings.get(name, {}))[0]
    return out


def _convert_setting(param: Param, value: Any, key: str) -> Any:
    if isinstance(value, Secret):
        if param.type != "string":
            raise ParamError(f"{key}: a {param.type} cannot be read from {{env: ...}} or {{file: ...}}")
        return value
    if param.type == "mapping" and isinstance(value, Mapping):
        plain = {k: v for k, v in value.items() if not isinstance(v, Secret)}
        convert(param, plain, key)  # a plain JSON value, but for its secrets
        return dict(value)
    return convert(param, value, key)


def checked_result(name: str, result: Any) -> ActionResult:
    """``result``, unless it is an awaitable: then the action forgot an ``await`` and did nothing.

    A TypeError then (an unexpected error: logged with its traceback, retried), not "done" with
    ``<coroutine object ...>`` as the journaled result.
    """
    if inspect.isawaitable(result):
        if inspect.iscoroutine(result):
            result.close()  # never run: no "was never awaited" warning on top of this error
        raise TypeError(
            f"action {name} returned {type(result).__name__} (a missing await?), not a dict or None"
        )
    return result  # type: ignore[no-any-return]


@dataclass
class LoadProblem:
    entry_point: str
    error: str

    @property
    def name(self) -> str:
        """The action name the entry point registers."""
        return self.entry_point.split(" = ", 1)[0]


# The plugins the last load_actions() could not load, by action name: why (its error), for a
# rule that names one (trapd.rules.compile_actions), which would otherwise be an "unknown action".
_FAILED: dict[str, str] = {}


def load_failure(name: str) -> str | None:
    """Why the action plugin ``name`` failed to load (the last :func:`load_actions`), or None."""
    return _FAILED.get(name)


def installed_since(name: str) -> bool:
    """Whether an action plugin named ``name`` is installed that the last :func:`load_actions`
    did not meet at all (neither loaded nor failed): installed since this process loaded them."""
    if _LOADED is None or name in _LOADED:
        return False
    return bool(entry_points(group=ENTRY_POINT_GROUP, name=name))


# Every name the last load_actions() met (loaded or failed); None before it ran.
_LOADED: set[str] | None = None


def load_actions() -> tuple[dict[str, ActionSpec], list[LoadProblem]]:
    """Every installed action by name, plus the plugins that failed to load.

    A broken third-party plugin must not stop trapd: it is reported, and
    rules that use it fail ``trapd check`` (and start-up), saying why it failed.
    A name is one action: a site plugin that takes the name of one of trapd's own is refused (the
    built-in stays), and two site packages that register one name are both refused (which one
    entry_points() lists last is no choice an operator made).
    """
    found: dict[str, ActionSpec] = {}
    problems: list[LoadProblem] = []
    # name -> (package, entry point, spec) of each that registers it, in the order found.
    candidates: dict[str, list[tuple[str, str, ActionSpec]]] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        where = f"{ep.name} = {ep.value}"
        try:
            spec = as_spec(ep.load())
        # A plugin's import can raise anything, sys.exit() too (a module written as a script):
        # SystemExit ended trapd, with the plugin's message as its only word. (^C still stops.)
        except (Exception, SystemExit) as exc:
            problems.append(LoadProblem(where, f"{type(exc).__name__}: {exc}"))
            continue
        if spec.name != ep.name:
            problems.append(
                LoadProblem(
                    where,
                    f"the entry point is named {ep.name!r} and the action {spec.name!r}: the two names"
                    " must be equal (the one rules write after action:)",
                )
            )
            continue
        package = ep.dist.name if ep.dist is not None else "?"
        candidates.setdefault(spec.name, []).append((package, where, spec))
    for name, registered in candidates.items():
        shipped = [i for i, r in enumerate(registered) if _shipped(r[0])]
        if len(registered) == 1 or shipped:
            kept = (shipped or [0])[0]
            found[name] = registered[kept][2]
            problems.extend(
                LoadProblem(w, _taken(name, p)) for i, (p, w, _) in enumerate(registered) if i != kept
            )
            continue
        listed = ", ".join(f"{package} ({where})" for package, where, _ in registered)
        why = f"the action name {name!r} is registered by {len(registered)} installed packages, {listed}"
        problems.extend(LoadProblem(where, f"{why}: uninstall all but one") for _, where, _ in registered)
    _FAILED.clear()
    _FAILED.update((p.name, p.error) for p in problems if p.name not in found)
    global _LOADED
    _LOADED = {*found, *(p.name for p in problems)}
    return found, problems


def _shipped(package: str) -> bool:
    """Whether ``package`` (a distribution's name) is trapd itself, whose actions are the built-ins."""
    return package.lower() == "trapd"


def _taken(name: str, package: str) -> str:
    mine = name.rsplit(".", 1)[-1]
    prefix = package.split("-", 1)[0].lower()
    return (
        f"{name!r} is the name of trapd's own action: {package} must give its action a name of its"
        f" own (a dotted prefix: {prefix + '.' + mine!r})"
    )
