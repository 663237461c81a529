"""What a lone daemon and the supervisor of several workers both do, written once.

:class:`~trapd.service.daemon.Daemon` (one process, or one worker) and
:class:`~trapd.service.workers.Supervisor` (``service.workers`` > 1) differ in
what they run, not in how they start, reload, report and log. The steps they
share live here:

* :func:`load_startup`: the MIBs, the action plugins and the compiled rules,
  with their problems logged (:class:`Loaded`);
* :func:`compile_reload`: trapd.yaml and the rules again, on SIGHUP, in a
  thread, so the event loop keeps receiving traps, answering /healthz and
  sending WATCHDOG=1 while a big rule set compiles (the old rules serve
  meanwhile);
* :func:`apply_logging`, :func:`warn_restart_needed`, :func:`failure_reason`;
* :func:`status_loop` (STATUS= and the watchdog) and :func:`start_metrics`.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from trapd.config import Config
from trapd.statedir import make_private_dir
from trapd.yamlsource import ConfigError

if TYPE_CHECKING:
    import socket

    from trapd.mibs import MibResolver
    from trapd.plugin import ActionSpec
    from trapd.rules import RuleSet
    from trapd.service.exporter import MetricsServer
    from trapd.service.health import Health
    from trapd.service.logging import TrapdLogger
    from trapd.service.metrics import DaemonSnapshot
    from trapd.service.options import RunOptions
    from trapd.service.sdnotify import Notifier


@dataclass(frozen=True)
class Loaded:
    """What start-up loads before anything is bound: the MIB resolver, the actions, the rules.

    The supervisor loads it once and its forked workers start with it.
    """

    resolver: MibResolver
    actions: dict[str, ActionSpec]
    rules: RuleSet


# On stop, beyond the waits trapd.yaml sets (dispatch.shutdown_timeout): closing the journal,
# the Kea and HTTP clients, reaping. Asked of systemd with EXTEND_TIMEOUT_USEC= after STOPPING=1,
# so that a shutdown_timeout above the unit's TimeoutStopSec= is honoured, not cut by SIGKILL.
STOP_MARGIN = 15.0

# A rule file of 100,000 generated rules can hold thousands of warnings: the log gets the
# first ones and a count, `trapd check` lists them all.
RULE_WARNINGS_LOGGED = 20


def read_rule_texts(cfg: Config) -> dict[Path, str]:
    """The texts of the rule files ``cfg`` names, in load order: what :func:`build_rules` compiles
    when given them, whatever happens to the files afterwards. ConfigError for a file that cannot
    be read (at file:1:1, as the compile says it)."""
    from trapd.yamlsource import read_yaml_text

    return {path: read_yaml_text(path) for path in cfg.rule_paths()}


def build_rules(
    cfg: Config,
    resolver: MibResolver,
    actions: dict[str, ActionSpec],
    log: TrapdLogger,
    texts: Mapping[Path, str] | None = None,
) -> RuleSet:
    """Compile the rule files ``cfg`` names; RuleErrors (each problem with file:line:col) on errors.

    ``texts``: the files as :func:`read_rule_texts` read them before, compiled instead of the files.

    A setting under ``actions:`` that its plugin does not declare, or whose value does not fit,
    is a ConfigError first (trapd.dispatch.plugins.refuse_bad_settings).

    Warnings (a rule that can never match, ...) do not stop the rules from loading, at start
    or on a reload, but are logged with their place, as `trapd check` prints them: an
    operator who reloads without checking first still finds them in the journal.
    """
    from trapd.dispatch.plugins import refuse_bad_settings, timeouts_cut_short
    from trapd.rules import NOTHING_RUNS, globally_capped, idle_warning, load_rules

    capped = globally_capped(cfg.dispatch.caps, actions)
    paths = list(texts) if texts is not None else cfg.rule_paths()
    dir_warning = cfg.rules_dir_warning()  # a misspelt rules.dir, or an empty one and no files
    if dir_warning is not None:
        log.warning(dir_warning.message, where=str(dir_warning.mark) if dir_warning.mark else None)
    elif not paths:
        log.warning(f"no rule files configured: {NOTHING_RUNS}")
    warnings: list[ConfigError] = []
    rules = load_rules(
        paths, resolver, actions, global_mode=cfg.mode, capped_actions=capped, warnings=warnings, texts=texts
    )
    # The plugins' declared settings (a ConfigError, at its place in trapd.yaml), and those the
    # plugins the rules use require.
    refuse_bad_settings(actions, cfg, rules)
    warnings += timeouts_cut_short(cfg, rules)
    idle = idle_warning(paths, rules)
    if idle is not None:
        # Valid but empty (a deploy that truncated the file), or all disabled: as loud as no
        # rule files at all. The words `trapd check` prints.
        log.warning(idle.message, files=[str(p) for p in paths])
    for w in warnings[:RULE_WARNINGS_LOGGED]:
        log.warning("rule warning", where=str(w.mark) if w.mark else None, problem=w.message)
    if len(warnings) > RULE_WARNINGS_LOGGED:
        log.warning(
            "more rule warnings not logged: trapd check lists them all",
            more=len(warnings) - RULE_WARNINGS_LOGGED,
        )
    return rules


def log_mib_problems(log: TrapdLogger, resolver: MibResolver) -> None:
    """The MIB files that could not be used: warned about once, when a compile first finds them.

    A broken MIB in a system's MIB directory is there on every start:
    warning about it each time would teach people to ignore warnings. Later
    starts, which load the cached compile, log them at debug level; `trapd
    mibs compile` lists them any time. A rule that needs a symbol from a
    broken MIB fails on its own, and `trapd check` says why.
    """
    emit = log.warning if resolver.problems_are_new else log.debug
    for problem in resolver.problems:
        emit(
            "MIB problem (`trapd mibs compile` lists them)",
            file=problem.file,
            line=problem.line,
            module=problem.module,
            problem=problem.message,
        )


def load_startup(
    cfg: Config, log: TrapdLogger, notifier: Notifier | None = None, texts: Mapping[Path, str] | None = None
) -> Loaded:
    """MIBs, action plugins and rules for ``cfg``: MIB and plugin problems are logged, rule problems raise.

    The first start after site MIBs change compiles them before READY=1: seconds, or minutes for
    a vendor's thousand MIBs, past systemd's start timeout (90 s by default), after which systemd
    would kill trapd and Restart= would begin the compile again. Meanwhile ``notifier`` asks for
    more time (EXTEND_TIMEOUT_USEC) and says what trapd is doing (STATUS).
    """
    from trapd.dispatch.plugins import load_plugins
    from trapd.mibs import PROGRESS_INTERVAL, MibResolver

    def compiling(seconds: float) -> None:
        if notifier is not None:
            notifier.extend_timeout(3 * PROGRESS_INTERVAL)
            notifier.status(f"compiling site MIBs ({seconds:.0f} s; `trapd mibs compile` does it ahead)")
            notifier.watchdog()
        if seconds == 0:
            log.info(
                "compiling site MIBs: their files changed", dirs=[str(d) for d in cfg.mibs.source_dirs()]
            )

    make_private_dir(cfg.state_dir)
    resolver = MibResolver.load(cfg.mibs, cfg.state_dir, progress=compiling)
    log_mib_problems(log, resolver)
    actions = load_plugins(log)
    return Loaded(resolver, actions, build_rules(cfg, resolver, actions, log, texts))


async def compile_reload(
    options: RunOptions,
    loaded: Loaded,
    log: TrapdLogger,
    adjust: Callable[[Config], Config] | None = None,
    running: Config | None = None,
    cancel: threading.Event | None = None,
) -> tuple[Config, RuleSet, MibResolver]:
    """trapd.yaml, the rules and changed MIB files, read and compiled again for a reload, off the event loop.

    Returns the new configuration, rules and MIB resolver. The resolver is
    ``loaded.resolver`` unless the files of the running ``mibs:`` directories
    (``running``) changed since it was loaded: then they are loaded again
    (compiled in a child process when the cache is stale, seconds) and the
    rules compile against them, so a vendor MIB dropped into the directory
    and a rule naming its notification are taken by one reload. The
    ``mibs:`` settings themselves still need a restart (RESTART_NEEDED).

    Compiling 10,000 rules takes seconds of CPU. On the loop that would stop
    the receive path, /healthz and WATCHDOG=1 for as long (longer than
    ``WatchdogSec`` gets the unit killed). In a thread the loop still runs
    between the compiler's bytecodes (the GIL is handed over every 5 ms): traps
    are handled by the old rules, slower, until the new ones are swapped in.
    The MIB resolver is shared with the receive path; what the compiler uses
    of it is read-only, or a cache where a lost entry costs a lookup.
    Raises what loading raises (ConfigError for a bad file); nothing changes then.
    ``cancel`` (set on stop, trapd.mibs.cancel_compiles) ends a MIB compile it runs.

    The new rules are frozen out of the cyclic collector's sight, as start-up's are
    (:func:`trapd.service.daemon.settle_memory`). Left to it, the first collection
    after the compile walked every object just made, holding the GIL: the event
    loop stood still for 0.6-0.9 s after a reload of 100,000 rules, 0.12-0.2 s
    once frozen (the rest was the old set's release, see :func:`release_rules`).
    RSS over six reloads grows alike either way (631 -> 649 MB): nothing of the
    compile is garbage left behind in cycles. A failed compile is not frozen (its
    traceback holds cycles that must be collected).

    A freeze takes every object the collector tracks, not only the new rules: also the
    running daemon's cyclic garbage not collected yet (long-lived objects that died in a
    cycle wait for the next full collection), which frozen is never collected. So a full
    collection runs first, before the compile makes its objects: it walks what is not frozen
    yet (what traffic made since the last freeze, caches), as the collector's own full
    collections do, not the new rules. Garbage the loop makes during the compile is frozen
    still: a compile's seconds of it at most, not everything since the last freeze.
    """

    def work() -> tuple[Config, RuleSet, MibResolver]:
        config, resolver = _reload_inputs(options, loaded.resolver, log, adjust, running, cancel)
        return config, build_frozen(config, resolver, loaded.actions, log), resolver

    return await asyncio.to_thread(work)


def build_frozen(
    config: Config,
    resolver: MibResolver,
    actions: dict[str, ActionSpec],
    log: TrapdLogger,
    texts: Mapping[Path, str] | None = None,
) -> RuleSet:
    """:func:`build_rules` with the collector off, and the new rules frozen out of its sight
    (see :func:`compile_reload`); for a thread. A failed compile is not frozen."""
    was_enabled = gc.isenabled()
    if was_enabled:
        gc.collect()  # nothing of the running daemon's garbage is frozen with the new rules
    gc.disable()
    compiled = False
    try:
        rules = build_rules(config, resolver, actions, log, texts)
        compiled = True
    finally:
        if compiled and was_enabled:
            gc.freeze()
        if was_enabled:
            gc.enable()
    return rules


def _reload_inputs(
    options: RunOptions,
    resolver: MibResolver,
    log: TrapdLogger,
    adjust: Callable[[Config], Config] | None,
    running: Config | None,
    cancel: threading.Event | None,
) -> tuple[Config, MibResolver]:
    """trapd.yaml read again, and ``resolver`` or, when the running ``mibs:`` files changed, their
    new compile (see :func:`compile_reload`)."""
    config = options.load()
    if adjust is not None:
        config = adjust(config)
    if running is not None and not resolver.is_current(running.mibs):
        from trapd.mibs import MibResolver

        resolver = MibResolver.load(running.mibs, running.state_dir, cancel=cancel)
        log.info("MIB files changed: loaded again", names=len(resolver), sources=resolver.sources)
        log_mib_problems(log, resolver)
        resolver.digest()  # here, off the loop: the hosts of a pair compare it (docs/pair.md)
    return config, resolver


async def read_reload(
    options: RunOptions,
    resolver: MibResolver,
    log: TrapdLogger,
    running: Config,
    cancel: threading.Event | None = None,
) -> tuple[Config, MibResolver, dict[Path, str]]:
    """What :func:`compile_reload` reads before it compiles, off the event loop: the new
    configuration, the MIB resolver (changed MIB files compiled once, here) and the rule files'
    texts (:func:`read_rule_texts`). Raises ConfigError for a bad trapd.yaml or an unreadable file.
    ``cancel``: as for :func:`compile_reload`."""

    def work() -> tuple[Config, MibResolver, dict[Path, str]]:
        config, new_resolver = _reload_inputs(options, resolver, log, None, running, cancel)
        return config, new_resolver, read_rule_texts(config)

    return await asyncio.to_thread(work)


# Rules dropped per slice by release_rules: about 1 ms of deallocation each.
RELEASE_SLICE = 1000


def release_rules(rules: RuleSet) -> None:
    """Free a rule set that nothing uses any more, a slice at a time; meant for a thread.

    Dropped at once, a replaced set of 100,000 rules took 0.12-0.2 s of deallocation that never
    lets go of the GIL (a cascade in C), and the event loop stood still for it at every reload;
    a slice at a time, the loop's longest stall in a reload is 20-31 ms (bench_reload.py).
    Here the set gives up its parts and the long sequences among them (the rules, their residual
    conditions) are cut from the end, so the loop gets the GIL between slices. ``rules`` is
    emptied: the caller must hold the only other reference and drop it.
    """
    parts = list(vars(rules).values())
    vars(rules).clear()
    del rules
    while parts:
        part = parts.pop()
        if isinstance(part, tuple | list) and len(part) > RELEASE_SLICE:
            items = list(part)
            del part  # its items are still held by ``items``: only their count drops here
            while items:
                del items[-RELEASE_SLICE:]
        else:
            del part


def apply_logging(config: Config) -> None:
    """Level and format from ``config.service`` (command-line overrides are already in it)."""
    from trapd.service.logging import configure_logging

    configure_logging(config.service.log_level, config.service.log_format)


# Settings a reload reads but cannot apply: they take effect at the next start.
RESTART_NEEDED: dict[str, Callable[[Config], object]] = {
    "service.workers": lambda c: c.service.workers,
    "service.metrics": lambda c: c.service.metrics_listen,
    "listener.listen": lambda c: c.listener.listen,
    "listener.receive_buffer": lambda c: c.listener.receive_buffer,
    "state_dir": lambda c: c.state_dir,
    "mibs": lambda c: c.mibs,
    "kea": lambda c: c.kea,
    "dispatch": lambda c: c.dispatch,
}


def keep_restart_needed(new: Config, running: Config) -> Config:
    """``new`` with every setting of RESTART_NEEDED as ``running`` has it.

    What a worker restarted after a reload starts with: the reloaded rules and
    settings, but the journal, Kea endpoints, dispatch tuning, MIBs and
    addresses its siblings still run with, so that the unit keeps one journal
    (the rows a dead worker claimed are recovered where it claimed them).
    """
    return new.with_overrides(
        state_dir=running.state_dir,
        mibs=running.mibs,
        kea=running.kea,
        dispatch=running.dispatch,
        listener=replace(
            new.listener, listen=running.listener.listen, receive_buffer=running.listener.receive_buffer
        ),
        service=replace(
            new.service, workers=running.service.workers, metrics_listen=running.service.metrics_listen
        ),
    )


def warn_restart_needed(log: TrapdLogger, old: Config, new: Config, names: Sequence[str]) -> None:
    """One warning naming the settings among ``names`` (keys of RESTART_NEEDED) that a reload changed."""
    changed = [name for name in names if RESTART_NEEDED[name](old) != RESTART_NEEDED[name](new)]
    if changed:
        log.warning("changed settings take effect at the next restart", settings=changed)


def failure_reason(exc: BaseException) -> str:
    """One line for a failed start or reload: a config or OS error as is, anything else with its type."""
    return str(exc) if isinstance(exc, ConfigError | OSError) else f"{type(exc).__name__}: {exc}"


async def status_loop(
    notifier: Notifier,
    healthy: Callable[[], bool],
    status_line: Callable[[], str],
    interval: Callable[[], float],
    refresh: Callable[[float], Awaitable[None]] | None = None,
) -> None:
    """STATUS= every ``interval()`` seconds (a reload may change it) and WATCHDOG=1 while ``healthy()``.

    ``refresh(timeout)`` runs before each STATUS= (the supervisor asks its
    workers for their counters there, for no longer than an interval).
    """
    from trapd.service.sdnotify import start_watchdog, stop_watchdog

    watchdog = start_watchdog(notifier, healthy)
    try:
        while True:
            seconds = interval()
            await asyncio.sleep(seconds)
            if refresh is not None:
                await refresh(seconds)
            notifier.status(status_line())
    finally:
        await stop_watchdog(watchdog)


async def start_metrics(
    config: Config,
    snapshot: Callable[[], DaemonSnapshot],
    sockets: Callable[[], Sequence[socket.socket]],
    health: Callable[[], Health],
    refresh: Callable[[], Awaitable[None]] | None = None,
) -> MetricsServer | None:
    """/metrics and /healthz on ``config.service.metrics_listen``; None when that is off."""
    listen = config.service.metrics_listen
    if listen is None:
        return None
    from trapd.service.exporter import MetricsServer
    from trapd.service.metrics import TrapdCollector, build_registry

    collector = TrapdCollector(snapshot, sockets)
    server = MetricsServer(
        build_registry(collector), health, listen.host, listen.port, refresh=refresh, prepare=collector.take
    )
    await server.start()
    return server
