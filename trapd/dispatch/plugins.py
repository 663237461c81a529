"""Plugin loading glue: the installed actions for the daemon, and the dispatcher built around them.

The daemon (trapd.service.daemon, each worker too) calls :func:`open_dispatcher`
once at start-up; it is the one place that opens the journal for running
actions and that warns about settings for a plugin that is not installed::

    dispatcher = await open_dispatcher(config, kea_clients, log=log, actions=actions)
    await dispatcher.start()
    ...
    await dispatcher.stop()
    await dispatcher.journal.close()

A plugin that fails to import is logged and left out; trapd still starts
unless a rule uses it (the rule compiler refuses such a rule with the plugin's
error, trapd.plugin.load_failure), and an action journaled for it goes dead
with a clear reason rather than vanishing.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import structlog

from trapd.dispatch.dispatcher import Dispatcher
from trapd.dispatch.journal import open_journal
from trapd.plugin import ActionLog, ActionSpec, check_settings, load_actions
from trapd.plugin import plugin_settings as plugin_settings
from trapd.programs import ProgramGroups
from trapd.service.logging import logging_setup, restore_logging
from trapd.yamlsource import ConfigError

if TYPE_CHECKING:
    import httpx

    from trapd.config import Config
    from trapd.kea.client import KeaClients
    from trapd.rules import RuleSet
    from trapd.yamlsource import Mark


def load_plugins(log: Any = None) -> dict[str, ActionSpec]:
    """Every installed action by name; each plugin that failed to load is logged as an error."""
    log = log if log is not None else structlog.get_logger("trapd.plugins")
    setup = logging_setup()
    specs, problems = load_actions()
    if restore_logging(setup):
        log.warning(
            "an action plugin changed the logging configuration as it was imported; trapd's is restored",
            plugins=_site_plugins(specs),
            hint="a plugin logs through ctx.log; it does not call structlog.configure or logging.basicConfig",
        )
    for p in problems:
        log.error("action plugin failed to load", entry_point=p.entry_point, error=p.error)
    return specs


def _site_plugins(specs: Mapping[str, ActionSpec]) -> list[str]:
    """The actions that are not trapd's own (whose code is not in trapd_actions), by name."""
    return sorted(
        n for n, s in specs.items() if not getattr(s.run, "__module__", "").startswith("trapd_actions.")
    )


def unknown_settings(specs: Mapping[str, ActionSpec], settings: Mapping[str, Any]) -> list[str]:
    """Names under ``actions:`` in trapd.yaml that no installed plugin has (a typo, or a missing package)."""
    return sorted(name for name in settings if name not in specs)


def warn_unknown_settings(
    specs: Mapping[str, ActionSpec], settings: Mapping[str, Any], log: ActionLog
) -> None:
    """One warning per name under ``actions:`` that no installed plugin has (at start and on reload)."""
    for name in unknown_settings(specs, settings):
        log.warning("settings for an action plugin that is not installed", plugin=name)


def settings_problems(specs: Mapping[str, ActionSpec], config: Config) -> list[ConfigError]:
    """Each setting under ``actions:`` that its plugin does not declare, or whose value does not
    fit the declared type, at its place in trapd.yaml (a missing required one: at the section)."""
    found = []
    for name, values in config.actions.items():
        spec = specs.get(name)
        if spec is None:
            continue  # not installed: unknown_settings warns
        marks = config.setting_marks.get(name, {})
        for key, message in check_settings(spec, values)[1]:
            mark = marks.get(key) if key is not None else None
            found.append(ConfigError(f"actions.{name}: {message}", mark or config.action_marks.get(name)))
    return found


def missing_settings(specs: Mapping[str, ActionSpec], config: Config, rules: RuleSet) -> list[ConfigError]:
    """An error, at its first use in the rules, for each action whose plugin declares required
    settings and has no section in trapd.yaml (a section is checked by :func:`settings_problems`)."""
    used: dict[str, Mark | None] = {}
    for rule in rules.rules:
        for call in rule.actions:
            used.setdefault(call.action, call.mark)
    found = []
    for name, mark in used.items():
        spec = specs.get(name)
        if spec is None or not spec.settings or name in config.actions:
            continue
        required = [key for key, p in spec.settings.items() if p.required]
        if required:
            found.append(
                ConfigError(
                    f"{name} needs its settings in trapd.yaml (actions: {{{name}: {{{required[0]}: ...}}}});"
                    f" required: {', '.join(required)}",
                    mark,
                )
            )
    return found


def timeouts_cut_short(config: Config, rules: RuleSet) -> list[ConfigError]:
    """A warning at each rule action whose own ``timeout`` (a duration written in the rule) is
    longer than dispatch.action_timeout: the dispatcher cancels every action after that, whatever
    its parameters say, so an exec of ``timeout: 10m`` was killed at the default 5 min as a
    retryable failure and ran again from the start at each attempt."""
    from trapd.params import ParamError, parse_duration
    from trapd.rules.ruleset import Const

    limit = config.dispatch.action_timeout
    found = []
    for rule in rules.rules:
        for call in rule.actions:
            value = call.params.get("timeout")
            param = call.spec.params.get("timeout")
            if not isinstance(value, Const) or param is None or param.type != "duration":
                continue  # a template: its value is only known per event
            try:
                seconds = parse_duration(value.value)
            except ParamError:
                continue  # reported by the rule's own check
            if seconds > limit:
                found.append(
                    ConfigError(
                        f"{call.action}: timeout {seconds:g}s is longer than dispatch.action_timeout"
                        f" ({limit:g}s), which cancels every action first: raise"
                        " dispatch.action_timeout in trapd.yaml, or lower this timeout",
                        call.mark,
                        severity="warning",
                    )
                )
    return found


def refuse_bad_settings(
    specs: Mapping[str, ActionSpec], config: Config, rules: RuleSet | None = None
) -> None:
    """ConfigError for the first bad setting (start-up fails, a reload keeps what runs), and,
    given the compiled ``rules``, for a plugin they use that lacks its required settings.

    A plugin run with a misspelt, mistyped or missing setting would fail on every trap it handles.
    """
    problems = settings_problems(specs, config)
    if rules is not None:
        problems += missing_settings(specs, config, rules)
    if problems:
        more = f" (and {len(problems) - 1} more; `trapd check` lists them)" if len(problems) > 1 else ""
        raise ConfigError(problems[0].message + more, problems[0].mark)


async def open_dispatcher(
    config: Config,
    kea: KeaClients | None,
    *,
    http: httpx.AsyncClient | None = None,
    log: ActionLog | None = None,
    actions: Mapping[str, ActionSpec] | None = None,
    owner: str | None = None,
    token: str | None = None,
) -> Dispatcher:
    """Open the journal in ``config.state_dir`` and build the dispatcher (not started yet).

    ``actions``: the loaded plugins (default: load them now); ``owner``: the
    journal owner a worker of several claims rows as (trapd.service.workers), ``token``
    its registration's token (see open_journal).
    """
    log = log if log is not None else structlog.get_logger("trapd.dispatch")
    specs = dict(actions) if actions is not None else load_plugins(log)
    warn_unknown_settings(specs, config.actions, log)
    jc = config.dispatch.journal
    journal = open_journal(jc.file(config.state_dir), jc, owner=owner, token=token)
    await journal.open()
    settings = plugin_settings(specs, config.actions)
    programs = ProgramGroups(config.state_dir, owner)
    return Dispatcher(config.dispatch, journal, specs, kea, http, log, settings, programs)
