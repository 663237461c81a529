"""trapd.testing, the kit for plugin authors, and the contracts it stands for (ActionContext)."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import pytest

from trapd.dispatch.config import DispatchConfig, JournalConfig, RetryDefaults
from trapd.dispatch.dispatcher import Dispatcher
from trapd.dispatch.journal import HistoryFilter, SQLiteJournal
from trapd.kea.errors import KeaUnavailableError
from trapd.params import Param, ParamError
from trapd.plugin import (
    ActionContext,
    ActionLog,
    PermanentError,
    RetryableError,
    action,
    as_spec,
    load_actions,
)
from trapd.service.logging import configure_logging, get_logger
from trapd.testing import CapturedLog, KeaDouble, KeaRequest, make_event, make_outcome, plan, run_action

CONFIG = DispatchConfig(
    workers=2,
    shutdown_timeout=1.0,
    journal=JournalConfig(poll_interval=0.05),
    retry=RetryDefaults(max_attempts=1, max_age=60.0, backoff=0.01, max_backoff=0.01, jitter=0.0),
)
# The methods ActionLog declares: what a plugin may call on ctx.log.
LOG_SURFACE = sorted(n for n in vars(ActionLog) if not n.startswith("_"))


@action("kit.chatty", params={"n": Param("integer", required=True)}, idempotent=True)
async def chatty(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Writes one line through every method ctx.log declares."""
    log = ctx.log.bind(step="bound")
    log.debug("a debug line")
    log.info("an info line", n=params["n"])
    log.warning("a warning line")
    log.error("an error line")
    log.critical("a critical line")
    try:
        raise ValueError("handled")
    except ValueError:
        log.exception("an exception line")
    return {"n": params["n"]}


@action("kit.kea", params={}, idempotent=True)
async def needs_kea(params: dict[str, Any], ctx: ActionContext) -> None:
    """Asks ctx.kea for the default v4 endpoint."""
    await ctx.kea.get().command("status-get")


async def _dispatch_one(tmp_path: Path, spec: Any, params: dict[str, Any], **kw: Any) -> Dispatcher:
    journal = SQLiteJournal(tmp_path / "journal.sqlite")
    await journal.open()
    d = Dispatcher(CONFIG, journal, {spec.name: spec}, kea=None, **kw)
    await d.start()
    try:
        await d.submit(make_event(), make_outcome(plan(spec.name, params)))
        deadline = time.monotonic() + 20
        while not d.stats.outcomes:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
    finally:
        await d.stop(1.0)
        await journal.close()
    return d


def test_the_log_surface_is_what_trapd_and_the_kit_provide() -> None:
    assert LOG_SURFACE == ["bind", "critical", "debug", "error", "exception", "info", "warning"]
    for log in (get_logger("trapd.test"), CapturedLog()):
        assert isinstance(log, ActionLog)
        assert isinstance(log.bind(x=1), ActionLog)


async def test_a_plugin_using_the_whole_declared_log_runs_in_trapd(tmp_path: Path) -> None:
    out = io.StringIO()
    configure_logging("debug", "json", stream=out)
    try:
        d = await _dispatch_one(tmp_path, chatty, {"n": 7}, log=get_logger("trapd.dispatch"))
    finally:
        configure_logging("info", "json")
    assert d.stats.outcomes == {("kit.chatty", "done"): 1}
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    mine = {e["event"]: e for e in lines if e.get("step") == "bound"}
    assert sorted(mine) == sorted(f"a{'n' if m[0] in 'aeiou' else ''} {m} line" for m in LOG_SURFACE[1:])
    assert mine["an info line"]["n"] == 7 and mine["an info line"]["action"] == "kit.chatty"
    assert "ValueError: handled" in mine["an exception line"]["exception"]


async def test_ctx_kea_is_a_registry_even_with_no_endpoints(tmp_path: Path) -> None:
    # No kea: in trapd.yaml. The action gets a clear permanent error, not an AttributeError on None.
    d = await _dispatch_one(tmp_path, needs_kea, {})
    assert d.stats.outcomes == {("kit.kea", "dead"): 1}
    journal = SQLiteJournal(tmp_path / "journal.sqlite")
    await journal.open()
    try:
        [entry] = await journal.history(HistoryFilter())
    finally:
        await journal.close()
    assert entry.last_error is not None and "no Kea endpoint for v4" in entry.last_error, entry.last_error


async def test_run_action_validates_runs_and_captures_the_log() -> None:
    run = await run_action(chatty, {"n": "7"})  # converted as a rule's rendered value would be
    assert run.result == {"n": 7}
    assert run.log.events("info") == ["an info line"]
    first = run.logs[0]
    assert first["step"] == "bound" and first["rule"] == "test-rule" and "event_id" in first
    assert first["action"] == "kit.chatty" and first["action_id"] == "1"  # bound as trapd binds them
    with pytest.raises(ParamError, match="n"):
        await run_action(chatty, {"n": "seven"})
    with pytest.raises(ParamError, match="unknown"):
        await run_action(chatty, {"n": 1, "m": 2})


async def test_the_default_http_client_refuses_to_reach_the_network() -> None:
    @action("kit.http", params={}, idempotent=True)
    async def fetch(params: dict[str, Any], ctx: ActionContext) -> None:
        """GET something."""
        await ctx.http.get("https://example.invalid/")

    with pytest.raises(AssertionError, match="unexpected HTTP request"):
        await run_action(fetch, {})

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"ok": True})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        assert (await run_action(fetch, {}, http=client)).result is None


async def test_kea_double_answers_a_real_kea_action_through_the_real_client() -> None:
    lease_del = load_actions()[0]["kea.lease-del"]
    lease = {"ip-address": "192.0.2.7", "hw-address": "aa:bb:cc:dd:ee:ff", "subnet-id": 1}
    kea = KeaDouble(
        {
            "lease4-get": {"result": 0, "text": "IPv4 lease found.", "arguments": lease},
            "lease4-del": {"result": 0, "text": "IPv4 lease deleted."},
        }
    )
    run = await run_action(lease_del, {"ip-address": "192.0.2.7"}, kea=kea.clients())
    assert run.result is not None and run.result["deleted"] == 1 and run.result["leases"] == [lease]
    assert kea.commands() == ["lease4-get", "lease4-del"]
    assert kea.requests[1] == KeaRequest("kea", "lease4-del", {"ip-address": "192.0.2.7"}, ("dhcp4",))
    assert run.log.events() == ["kea leases deleted"]

    # A fault from a function: the agent cannot reach the server, which is worth a retry.
    def down(request: KeaRequest) -> Any:
        raise KeaUnavailableError("server is down", request.endpoint, request.command)

    with pytest.raises(RetryableError):
        await run_action(lease_del, {"ip-address": "192.0.2.7"}, kea=KeaDouble(down).clients())
    # A command the double has no answer for is "not supported", as Kea without the hook says.
    with pytest.raises(PermanentError, match=r"not supported|lease_cmds"):
        await run_action(lease_del, {"ip-address": "192.0.2.7"}, kea=KeaDouble().clients())


async def test_run_action_fails_an_action_that_forgot_an_await() -> None:
    async def post() -> None:
        return None

    @action("kit.forgot", params={}, idempotent=True)
    async def forgot(params: dict[str, Any], ctx: ActionContext) -> Any:
        """Returns the coroutine instead of awaiting it."""
        return post()

    with pytest.raises(TypeError, match="missing await"):
        await run_action(forgot, {})


@action("kit.steps", params={}, idempotent=False)
async def steps(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Journals each step before taking it; a retry goes on from what the last attempt recorded."""
    done: list[str] = list(ctx.previous["done"]) if ctx.previous else []
    for step in ("first", "second"):
        if step in done:
            continue
        assert ctx.record is not None, "the dispatcher always gives a recorder"
        await ctx.record({"done": [*done, step], "at": Path("/x")})  # a Path: journaled as its str
        done.append(step)
        if ctx.attempt == 1:
            raise RetryableError("the answer was lost")
    return {"done": done}


async def test_run_action_records_as_the_journal_does_and_hands_previous_to_a_retry() -> None:
    # The dispatcher gives every attempt ctx.record and the last record as ctx.previous: a
    # plugin's resume path must be testable with the kit, not only through a daemon.
    records: list[Any] = []
    with pytest.raises(RetryableError):
        await run_action(steps, {}, records=records)
    assert records == [{"done": ["first"], "at": "/x"}]  # what the journal keeps: JSON
    run = await run_action(steps, {}, previous=records[-1], attempt=2)
    assert run.result == {"done": ["first", "second"]}
    assert run.records == [{"done": ["first", "second"], "at": "/x"}]
    assert run.context.previous == {"done": ["first"], "at": "/x"}


def _exported(module: str) -> set[str]:
    """The names ``module`` exports to a ``mypy --strict`` user: defined there, imported ``as``
    themselves, or in ``__all__`` (a plain import is private: no implicit re-export)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec(module)
    assert spec is not None and spec.origin is not None, module
    tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
                names.update(ast.literal_eval(node.value))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.ImportFrom | ast.Import):
            names.update(a.asname for a in node.names if a.asname is not None and a.asname == a.name)
    return names


def test_what_the_docs_import_from_trapd_is_exported_to_a_typed_plugin() -> None:
    # A plugin author runs mypy --strict (trapd ships py.typed): `from trapd.plugin import Param`,
    # as plugin.py's own docstring wrote it, failed with "does not explicitly export attribute".
    import re

    import trapd.plugin
    import trapd.testing

    repo = Path(__file__).resolve().parent.parent
    texts = [
        (repo / "docs" / "plugins.md").read_text(encoding="utf-8"),
        trapd.plugin.__doc__ or "",
        trapd.testing.__doc__ or "",
        *(p.read_text(encoding="utf-8") for p in (repo / "examples").rglob("*.py")),
    ]
    imported = {
        (module, name.strip())
        for text in texts
        for module, names in re.findall(r"^\s*from (trapd[\w.]*) import ([\w, ]+)$", text, re.M)
        for name in names.split(",")
    }
    assert imported, "no imports found"
    missing = sorted(f"{m}.{n}" for m, n in imported if n not in _exported(m))
    assert missing == []


@action("kit.token", params={}, idempotent=True)
async def uses_a_token(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Reads a credential from its settings, as trapd hands it over."""
    from trapd.secrets import Secret

    token = ctx.settings["token"]
    assert isinstance(token, Secret), f"got {type(token).__name__}"
    return {"length": len(token.reveal()), "url": ctx.settings["url"]}


async def test_run_action_loads_settings_as_trapd_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # trapd.yaml's `{env: NAME}` / `{file: PATH}` settings reach a plugin as trapd.secrets.Secret
    # (reveal() gives the text). The kit passed the mapping itself, so a plugin's tests never
    # met what trapd gives it in production.
    from trapd.config import config_from_yaml
    from trapd.yamlsource import load_yaml

    monkeypatch.setenv("KIT_TOKEN", "s3cret-token")
    settings = {"token": {"env": "KIT_TOKEN"}, "url": "https://tickets.example/api"}
    run = await run_action(uses_a_token, {}, settings=settings)
    assert run.result == {"length": 12, "url": "https://tickets.example/api"}
    loaded = config_from_yaml(
        load_yaml("actions: {kit.token: {token: {env: KIT_TOKEN}, url: 'https://tickets.example/api'}}"), None
    )
    assert run.context.settings == loaded.actions["kit.token"]


@action(
    "kit.release",
    params={"ip": Param("ipv4", required=True), "endpoint": Param("string"), "peer": Param("string")},
    idempotent=True,
    per_peer=lambda params: True,
)
async def release_on_each_server(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Deletes a lease on the server the dispatcher names (every peer of an HA pair: per_peer)."""
    kea = ctx.kea.get(params.get("endpoint"), "v4", params.get("peer"))
    answer = await kea.command("lease4-del", {"ip-address": params["ip"]}, accept=(0, 3))
    return {"deleted": answer.ok}


async def test_kea_double_stands_in_for_an_ha_pair() -> None:
    # A site's Kea action on a Kea HA relationship (docs/kea-ha.md): the double had no peers, so
    # a plugin could not test that it names the peer the dispatcher gives it.
    from trapd.dispatch.peers import fan_out
    from trapd.kea.config import KeaConfig

    kea = KeaDouble({"lease4-del": {"result": 0, "text": "IPv4 lease deleted."}})
    clients = kea.clients({"pair4": ["v4"]}, peers=("server1", "server2"))
    # The dispatcher journals one action per peer, endpoint and peer set (ActionSpec.per_peer) ...
    config: KeaConfig = clients.config
    planned = fan_out(
        [plan("kit.release", {"ip": "192.0.2.7"})], {"kit.release": release_on_each_server}, config
    )
    assert [p.params for p in planned] == [
        {"ip": "192.0.2.7", "endpoint": "pair4", "peer": "server1"},
        {"ip": "192.0.2.7", "endpoint": "pair4", "peer": "server2"},
    ]
    # ... and each part reaches its server.
    for part in planned:
        assert (await run_action(release_on_each_server, part.params, kea=clients)).result == {
            "deleted": True
        }
    assert [(r.endpoint, r.command) for r in kea.requests] == [
        ("pair4/server1", "lease4-del"), ("pair4/server2", "lease4-del"),
    ]  # fmt: skip
    # Without a peer, the pair's client refuses: changing one server alone would split the pair.
    with pytest.raises(PermanentError, match="must say which peer"):
        await run_action(release_on_each_server, {"ip": "192.0.2.7"}, kea=clients)


async def test_a_declared_default_is_what_a_rule_would_pass() -> None:
    # A default is a value the action gets without a rule writing it: it was handed over as
    # declared, so `default="30s"` reached run() as the text "30s" where a rule's "30s" arrives as
    # 30.0 (int(params["wait"]) failed on every trap that did not set it), and a default outside
    # an enum's choices or an integer's bounds was never checked.
    @action(
        "kit.defaults",
        params={"wait": Param("duration", default="30s"), "n": Param("integer", default="5")},
        settings={"every": Param("duration", default="2m")},
    )
    async def defaults(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        """Returns its defaults."""
        return {**params, "every": ctx.settings["every"]}

    assert (await run_action(defaults, {})).result == {"wait": 30.0, "n": 5, "every": 120.0}

    async def run(params: dict[str, Any], ctx: ActionContext) -> None:
        pass

    with pytest.raises(TypeError, match=r"action kit.bad: parameter 'mode': default: 'c' is not one of a, b"):
        action("kit.bad", params={"mode": Param("enum", choices=("a", "b"), default="c")})(run)
    with pytest.raises(TypeError, match=r"action kit.bad: setting 'size': default: 0 is below the minimum 1"):
        action("kit.bad", params={}, settings={"size": Param("integer", min=1, default=0)})(run)

    class Late:
        """The class form: the same check."""

        name = "kit.late"
        params = {"wait": Param("duration", default="soon")}

        async def run(self, params: dict[str, Any], ctx: ActionContext) -> None:
            pass

    with pytest.raises(TypeError, match=r"action kit.late: parameter 'wait': default: not a duration"):
        as_spec(Late)


def test_a_key_names_declared_parameters() -> None:
    # key orders actions by the values of the parameters it names; a name that is not a
    # parameter (a typo, "ipp") or a string (key="ip": the characters i and p) named none, so every
    # action got a key of its own and two deletions of one address ran at once, without a word.
    async def run(params: dict[str, Any], ctx: ActionContext) -> None:
        pass

    ip = {"ip": Param("ipv4")}
    with pytest.raises(TypeError, match=r"action kit.key: key names 'ipp', not a parameter; it has: ip"):
        action("kit.key", params=ip, key=("ipp",))(run)
    with pytest.raises(TypeError, match=r"action kit.key: key is a tuple of parameter names: key=\('ip',\)"):
        action("kit.key", params=ip, key="ip")(run)  # type: ignore[arg-type]

    class Keyed:
        """The class form: the same check."""

        name = "kit.keyed"
        params = ip
        key = "ip"

        async def run(self, params: dict[str, Any], ctx: ActionContext) -> None:
            pass

    with pytest.raises(TypeError, match=r"action kit.keyed: key is a tuple of parameter names"):
        as_spec(Keyed)
    assert action("kit.key", params=ip, key=("ip",))(run).key == ("ip",)


def test_an_entry_point_that_names_no_action_says_what_to_write() -> None:
    # `acme.ticket = acme_trapd:ticket` with @action forgotten, or `= acme_trapd` without the
    # object: the load problem was "<function ticket at 0x7f...> is not an action: it needs name,
    # params and an async run", which sent the author to give a function a `name` attribute.
    import types

    async def ticket(params: dict[str, Any], ctx: ActionContext) -> None:
        """Open a ticket."""

    with pytest.raises(TypeError) as info:
        as_spec(ticket)
    assert str(info.value) == (
        "ticket is a function, not an action: declare it with @trapd.plugin.action(NAME, params={...})"
    )
    with pytest.raises(TypeError) as info:
        as_spec(types.ModuleType("acme_trapd"))
    assert str(info.value) == (
        "the entry point names the module acme_trapd, not an action in it:"
        " name the object too (acme_trapd:OBJECT)"
    )


def test_make_event_of_a_notification_is_that_notification() -> None:
    # make_event(trap_name="SNMPv2-MIB::coldStart") kept linkDown's OID (trap_oid's default), and
    # rules match the OID: a plugin's test of its coldStart rule ran the linkDown rule instead.
    cold = make_event(trap_name="SNMPv2-MIB::coldStart", varbinds=())
    assert cold.trap_oid == (1, 3, 6, 1, 6, 3, 1, 1, 5, 1)
    assert make_event().trap_oid == (1, 3, 6, 1, 6, 3, 1, 1, 5, 3)  # linkDown, as before
    assert make_event(trap_name="x", trap_oid="1.3.6.1.4.1.9.9.1").trap_oid == (1, 3, 6, 1, 4, 1, 9, 9, 1)
    with pytest.raises(ValueError, match=r"unknown notification 'ACME-MIB::acmeAlarm'.*trap_oid="):
        make_event(trap_name="ACME-MIB::acmeAlarm")


@action(
    "kit.port",
    params={"port": Param("integer", required=True), "text": Param("string", required=True)},
    idempotent=True,
)
async def port_note(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Returns what a rule gave it."""
    return {"port": params["port"], "text": params["text"], "source": ctx.event.source}


async def test_a_rule_files_actions_run_with_the_event_of_a_trap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A plugin's example rule renders its parameters from a trap; the kit had no way to see what
    # they render to for an event (rule_file_problems only compiles), short of trapd's compiler,
    # MIB resolver and rule set, none of them the kit's.
    import trapd.plugin
    from trapd.testing import evaluate_rules

    installed = trapd.plugin.load_actions
    monkeypatch.setattr(
        trapd.plugin, "load_actions", lambda: ({**installed()[0], "kit.port": port_note}, installed()[1])
    )
    rules = tmp_path / "example.yaml"
    rules.write_text(
        "rules:\n"
        "  - name: port-down\n"
        "    match: {notification: IF-MIB::linkDown}\n"
        "    actions:\n"
        "      - action: kit.port\n"
        "        port: '{{ ifIndex }}'\n"
        '        text: "{{ source }} {{ ifDescr }} down"\n'
        "  - name: cold\n"
        "    match: {notification: SNMPv2-MIB::coldStart}\n"
        "    actions:\n"
        "      - {action: log, message: restarted}\n"
    )
    event = make_event(
        source="10.20.1.5",
        varbinds=[("IF-MIB::ifIndex", "Integer32", 17), ("IF-MIB::ifDescr", "OctetString", "Gi1/0/17")],
    )
    outcome = evaluate_rules(rules, event)
    assert outcome.matched == ("port-down",)
    (planned,) = outcome.planned
    assert (planned.action, planned.params) == ("kit.port", {"port": 17, "text": "10.20.1.5 Gi1/0/17 down"})
    run = await run_action(port_note, planned.params, event=event)
    assert run.result == {"port": 17, "text": "10.20.1.5 Gi1/0/17 down", "source": "10.20.1.5"}
    # A value of the trap that does not fit is a rejection, as trapd logs it; not an action.
    bad = evaluate_rules(rules, make_event(varbinds=[("IF-MIB::ifDescr", "OctetString", "x")]))
    assert bad.planned == () and [r.reason for r in bad.rejected] == ["template: 'ifIndex' is undefined"]
    # A rules file that does not compile is an error, with trapd check's words.
    (tmp_path / "broken.yaml").write_text(rules.read_text().replace("port:", "prot:"))
    with pytest.raises(ValueError, match=r"broken.yaml:5:17: kit.port needs the parameter .port."):
        evaluate_rules(tmp_path / "broken.yaml", event)


def test_the_doc_names_the_errors_a_plugin_meets_with_their_kind() -> None:
    # docs/plugins.md said what RetryableError and PermanentError do, not that both are
    # trapd.plugin.ActionError (which a plugin catches for either, and which raised itself is
    # retried without a traceback: not "any other exception"), nor which of the Kea client's
    # errors (trapd.kea.errors, what a Kea action lets through or catches) is of which kind.
    import inspect
    import re

    import trapd.kea.errors

    doc = (Path(__file__).resolve().parent.parent / "docs" / "plugins.md").read_text(encoding="utf-8")
    assert "`ActionError`" in doc
    said = {
        kind: set(re.findall(r"`(Kea\w+Error)`", text))
        for kind, text in re.findall(
            r"^ *\* (Retryable|Permanent) \(`trapd\.kea\.errors`\): (.*)$", doc, re.M
        )
    }
    errors = {
        name: "Retryable" if issubclass(cls, RetryableError) else "Permanent"
        for name, cls in vars(trapd.kea.errors).items()
        if inspect.isclass(cls) and issubclass(cls, trapd.kea.errors.KeaError) and cls.__doc__
        and name != "KeaError"
    }  # fmt: skip
    assert said == {kind: {n for n, k in errors.items() if k == kind} for kind in ("Retryable", "Permanent")}


def test_per_peer_and_kea_families_are_functions() -> None:
    # per_peer = True in the class form (it reads as a flag) was accepted and failed only when an
    # action was journaled for a Kea HA relationship: 'bool' object is not callable.
    class Flagged:
        """Pauses a Kea server."""

        name = "kit.flagged"
        params = {"endpoint": Param("string"), "peer": Param("string")}
        per_peer = True

        async def run(self, params: dict[str, Any], ctx: ActionContext) -> None:
            pass

    with pytest.raises(
        TypeError, match=r"action kit.flagged: per_peer is a function of the parameters, not True"
    ):
        as_spec(Flagged)

    async def run(params: dict[str, Any], ctx: ActionContext) -> None:
        pass

    with pytest.raises(TypeError, match=r"action kit.fam: kea_families is a function of the parameters"):
        action("kit.fam", params={}, kea_families=("v4",))(run)  # type: ignore[arg-type]


async def test_an_action_that_changes_its_settings_changes_them_for_itself_only(tmp_path: Path) -> None:
    # ctx.settings was the dispatcher's own dict of the plugin's settings, shared by every run: an
    # action that wrote to it (url += path) changed it for every later action of the plugin
    # (the URL grew by a path per trap), where run_action gave each run a fresh dict.
    @action("kit.grows", params={"path": Param("string", required=True)}, idempotent=True)
    async def grows(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        """Appends to its URL setting (a bug)."""
        settings: Any = ctx.settings
        settings["url"] += params["path"]
        return {"url": settings["url"]}

    async with SQLiteJournal(tmp_path / "journal.sqlite") as journal:
        d = Dispatcher(
            CONFIG, journal, {"kit.grows": grows}, kea=None, settings={"kit.grows": {"url": "https://x/"}}
        )
        await d.start()
        try:
            ids = [
                (await d.submit(make_event(), make_outcome(plan("kit.grows", {"path": p}, key="k"))))[0]
                for p in ("a", "b")
            ]
            deadline = time.monotonic() + 20
            while d.stats.outcomes[("kit.grows", "done")] < 2:
                assert time.monotonic() < deadline, d.stats.outcomes
                await asyncio.sleep(0.02)
            results = [(await journal.get(int(i))).result for i in ids]  # type: ignore[union-attr]
        finally:
            await d.stop(1.0)
    assert results == [{"url": "https://x/a"}, {"url": "https://x/b"}]


def test_plan_of_an_action_has_the_parameters_a_rule_would_journal() -> None:
    # docs/plugins.md's test through the dispatcher planned plan("acme.ticket", {...}): the
    # parameters went to the journal as typed, where a rule's are validated first, so the action
    # ran without its defaults (KeyError on params["tags"]) and with "30s" as text.
    @action(
        "kit.planned",
        params={"wait": Param("duration", required=True), "tags": Param("list", item="string", default=[])},
        idempotent=True,
    )
    async def planned(params: dict[str, Any], ctx: ActionContext) -> None:
        """Does nothing."""

    p = plan(planned, {"wait": "30s"})
    assert (p.action, p.params) == ("kit.planned", {"wait": 30.0, "tags": []})
    with pytest.raises(ParamError, match="wait: required"):
        plan(planned, {})
    assert plan("kit.planned", {"wait": "30s"}).params == {"wait": "30s"}  # a name: as given


def test_a_list_parameter_holds_its_items_to_the_declared_constraints() -> None:
    # A list's items were checked against their type alone: min/max and choices declared on the
    # list were dropped (list[integer] max 5 took 9), and item="enum" with choices failed every
    # value with ValueError "an enum parameter needs choices" (trapd check ended with it).
    from trapd.params import validate

    ports = {"ports": Param("list", item="integer", min=1, max=5)}
    assert validate(ports, {"ports": [1, "5"]}) == {"ports": [1, 5]}
    with pytest.raises(ParamError, match=r"ports\[1\]: 9 is above the maximum 5"):
        validate(ports, {"ports": [1, 9]})
    for item in ("enum", "string"):
        modes = {"modes": Param("list", item=item, choices=("up", "down"))}
        assert validate(modes, {"modes": ["up"]}) == {"modes": ["up"]}
        with pytest.raises(ParamError, match=r"modes\[0\]: 'sideways' is not one of up, down"):
            validate(modes, {"modes": ["sideways"]})
    # A list of lists cannot say what its inner items are: refused where it is declared.
    with pytest.raises(ValueError, match=r"a list of lists cannot declare its items' type: item='any'"):
        Param("list", item="list")


def test_a_plugin_that_configures_logging_as_it_is_imported_does_not_take_trapds(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A plugin module written from a script's template calls structlog.configure() (or adds a
    # handler to the root logger) at import. Plugins are imported after trapd configured its
    # logging: every logger made afterwards (the dispatcher's, each action's) wrote with the
    # plugin's processors, to the plugin's stream, in its format, without trapd's level and
    # without the processor that masks secrets.
    import logging

    import structlog

    from trapd.dispatch.plugins import load_plugins

    out, theirs = io.StringIO(), io.StringIO()

    def importing_a_plugin() -> tuple[dict[str, Any], list[Any]]:
        structlog.configure(
            processors=[structlog.processors.KeyValueRenderer()],
            logger_factory=structlog.PrintLoggerFactory(theirs),
            wrapper_class=structlog.BoundLogger,
        )
        logging.getLogger().addHandler(logging.StreamHandler(theirs))
        return {}, []

    monkeypatch.setattr("trapd.dispatch.plugins.load_actions", importing_a_plugin)
    configure_logging("info", "json", stream=out)
    handlers = list(logging.getLogger().handlers)
    try:
        load_plugins(get_logger("trapd.plugins"))
        after = list(logging.getLogger().handlers)
        get_logger("trapd.dispatch").info("after the plugins", n=1)
        logging.getLogger("httpx").warning("a library's warning")
    finally:
        configure_logging("info", "json")
    assert theirs.getvalue() == ""
    lines = [json.loads(x) for x in out.getvalue().splitlines()]
    assert [e["event"] for e in lines] == [
        "an action plugin changed the logging configuration as it was imported; trapd's is restored",
        "after the plugins",
        "a library's warning",
    ]
    assert after == handlers


def test_per_peer_and_kea_families_are_not_async() -> None:
    # trapd calls both as it compiles and journals, without awaiting: an async per_peer returned
    # a coroutine, which is true (every action fanned out, whatever the parameters, and a "never
    # awaited" warning), an async kea_families one that cannot be indexed.
    async def per_peer(params: Mapping[str, Any]) -> bool:
        return False

    async def run(params: dict[str, Any], ctx: ActionContext) -> None:
        pass

    with pytest.raises(TypeError, match=r"action kit.async: per_peer is called without await: a plain def"):
        action("kit.async", params={}, per_peer=per_peer)(run)  # type: ignore[arg-type]


async def test_a_dispatcher_made_directly_hands_plugins_their_settings_converted(tmp_path: Path) -> None:
    # The dispatcher handed ctx.settings over as given: only open_dispatcher (the daemon)
    # converted them first, so a plugin's test through Dispatcher(..., settings=...), as
    # docs/plugins.md shows it, ran with "2m" for a duration and without the declared defaults.
    @action(
        "kit.every",
        params={},
        idempotent=True,
        settings={"every": Param("duration", required=True), "limit": Param("integer", default=3)},
    )
    async def every(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        """Returns its settings."""
        return dict(ctx.settings)

    d = await _dispatch_one(tmp_path, every, {}, settings={"kit.every": {"every": "2m"}})
    assert d.stats.outcomes == {("kit.every", "done"): 1}
    async with SQLiteJournal(tmp_path / "journal.sqlite") as journal:
        [entry] = await journal.history(HistoryFilter())
    assert entry.result == {"every": 120.0, "limit": 3}


def test_a_required_parameter_with_a_default_is_refused_where_it_is_declared() -> None:
    # Param("integer", required=True, default=5): trapd check passed a rule that left it out (the
    # compiler took the default), then every trap's action was refused with "n: required"
    # (validate did not), so the rule never acted and nothing had warned.
    async def run(params: dict[str, Any], ctx: ActionContext) -> None:
        pass

    with pytest.raises(
        TypeError, match=r"action kit.both: parameter 'n' is required and has a default: drop one"
    ):
        action("kit.both", params={"n": Param("integer", required=True, default=5)})(run)


def test_make_event_varbinds_are_the_objects_the_mibs_name(tmp_path: Path) -> None:
    # A varbind named by anything but four IF-MIB columns got one made-up OID
    # (1.3.6.1.4.1.99999.1): templates found it by name, but a rule's varbind condition
    # (`varbinds: {ifAlias: uplink}`), which compares OIDs, never matched it.
    event = make_event(
        varbinds=[("IF-MIB::ifAlias", "OctetString", "uplink"), ("SNMPv2-MIB::sysName", "OctetString", "sw1")]
    )
    assert [(vb.oid, vb.index) for vb in event.varbinds] == [
        ((1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 18, 17), (17,)),  # a column: at index 17, as ifIndex is
        ((1, 3, 6, 1, 2, 1, 1, 5, 0), (0,)),  # a scalar: .0
    ]
    rules = tmp_path / "rules.yaml"
    rules.write_text(
        "rules:\n  - name: uplink\n"
        "    match: {notification: IF-MIB::linkDown, varbinds: {ifAlias: uplink}}\n"
        "    actions: [{action: log, message: '{{ ifAlias }}'}]\n"
    )
    from trapd.testing import evaluate_rules

    assert evaluate_rules(rules, event).matched == ("uplink",)


def test_a_param_of_an_unknown_type_says_the_types() -> None:
    # Param("str") failed the plugin's import with "unknown parameter type 'str'", leaving its
    # author to find the list of types in trapd/params.py.
    with pytest.raises(ValueError) as info:
        Param("str")
    assert str(info.value) == (
        "unknown parameter type 'str' (did you mean 'string'?); the types: any, boolean, duid, duration,"
        " enum, hex, integer, ip-address, ipv4, ipv6, list, mac-address, mapping, string, url, url-suffix"
    )
    with pytest.raises(ValueError, match=r"a list parameter needs an item type: item='string', for one"):
        Param("list")


@action("kit.once", params={"ip": Param("ipv4", required=True)}, idempotent=True)
async def reclaim_once(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """Asks whichever server of the pair serves clients now (once per relationship)."""
    kea = await ctx.kea.serving(family="v4")
    answer = await kea.command("lease4-get", {"ip-address": params["ip"]}, accept=(0, 3))
    return {"found": answer.ok}


async def test_kea_double_says_which_peer_serves() -> None:
    # ctx.kea.serving() asks each peer's HA status (status-get) and takes a server that serves
    # scopes: a plugin's test with KeaDouble(peers=...) met "no peer of the HA relationship
    # answers" unless it wrote Kea's status-get answer (high-availability, ha-servers, local,
    # scopes) for each peer itself.
    kea = KeaDouble({"lease4-get": {"result": 0, "arguments": {"ip-address": "192.0.2.7"}}})
    clients = kea.clients(peers=("server1", "server2"), serving=("server2",))
    run = await run_action(reclaim_once, {"ip": "192.0.2.7"}, kea=clients)
    assert run.result == {"found": True}
    assert [(r.endpoint, r.command) for r in kea.requests if r.command != "status-get"] == [
        ("kea/server2", "lease4-get")
    ]
    # None serving (both standby, terminated...): serving() takes the first that answers.
    kea = KeaDouble({"lease4-get": {"result": 3, "text": "no lease"}})
    await run_action(reclaim_once, {"ip": "192.0.2.7"}, kea=kea.clients(peers=("s1", "s2"), serving=()))
    assert [r.endpoint for r in kea.requests if r.command == "lease4-get"] == ["kea/s1"]


async def test_run_action_takes_a_secret_parameter_as_a_rule_writes_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A rule writes a secret parameter {env: NAME} or {file: PATH} (webhook's headers, its url);
    # run_action refused that with "token: expected text, got dict", so a plugin's test of its
    # secret could pass it only as trapd's internal {"$secret": "env:NAME"}.
    @action(
        "kit.secrets",
        params={
            "token": Param("string", secret=True),
            "headers": Param("mapping", secret=True),
            "url": Param("url", secret_ref=True),
        },
        idempotent=True,
    )
    async def secrets(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
        """Returns what it got."""
        return params

    monkeypatch.setenv("KIT_TOKEN", "s3cret")
    (tmp_path / "url").write_text("https://hooks.example/T0/B0/xyz\n")
    run = await run_action(
        secrets,
        {
            "token": {"env": "KIT_TOKEN"},
            "headers": {"Authorization": {"env": "KIT_TOKEN"}, "X-Plain": "1"},
            "url": {"file": str(tmp_path / "url")},
        },
    )
    assert run.result == {
        "token": "s3cret",
        "headers": {"Authorization": "s3cret", "X-Plain": "1"},
        "url": "https://hooks.example/T0/B0/xyz",
    }


def test_plan_takes_a_secret_parameter_as_a_rule_writes_it() -> None:
    # plan(spec, ...) validated {env: NAME} as a value of the parameter's type ("expected text,
    # got dict"), as run_action did: the dispatcher's test of a secret parameter could not be set up.
    @action("kit.sec", params={"token": Param("string", secret=True, required=True)}, idempotent=True)
    async def sec(params: dict[str, Any], ctx: ActionContext) -> None:
        """Does nothing."""

    assert plan(sec, {"token": {"env": "KIT_TOKEN"}}).params == {"token": {"$secret": "env:KIT_TOKEN"}}


def test_a_run_that_cannot_take_params_and_ctx_is_refused_where_it_is_declared() -> None:
    # async def run(params) (ctx forgotten) loaded, passed trapd check, and failed on every trap
    # with "takes 1 positional argument but 2 were given", retried until dead.
    async def forgot_ctx(params: dict[str, Any]) -> None:
        pass

    with pytest.raises(
        TypeError,
        match=r"action kit.arity: run is called as run\(params, ctx\); forgot_ctx\(params\) cannot take",
    ):
        action("kit.arity", params={})(forgot_ctx)  # type: ignore[arg-type]

    class Method:
        """The class form: run is a method, self aside."""

        name = "kit.method"
        params: dict[str, Param] = {}

        async def run(self, params: dict[str, Any]) -> None:
            pass

    with pytest.raises(TypeError, match=r"action kit.method: run is called as run\(params, ctx\)"):
        as_spec(Method)
