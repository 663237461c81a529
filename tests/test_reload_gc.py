"""What a reload does for the event loop's sake, asserted in the process itself.

The new rules are frozen out of the cyclic collector's sight, as start-up's are: left to it,
its first pass after the compile walked every object the compile made, holding the GIL (the
loop stood still 0.6-0.9 s after a reload of 100,000 rules). A failed reload freezes nothing,
and the collector is left as it was found. The replaced set is freed a slice at a time
(release_rules), and all of it is freed. The stalls themselves are measured by
bench/bench_reload.py (bench/README.md, "Reloading them").
"""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator
from pathlib import Path

import pytest
from rules_support import per_port_rules

from trapd.rules.ruleset import Rule
from trapd.service.lifecycle import compile_reload, load_startup, release_rules
from trapd.service.logging import get_logger
from trapd.service.options import RunOptions
from trapd.yamlsource import ConfigError


@pytest.fixture
def collector() -> Iterator[None]:
    """The collector on and nothing frozen, as in a running daemon's test; restored afterwards."""
    was_enabled = gc.isenabled()
    gc.unfreeze()
    gc.enable()
    yield
    gc.unfreeze()
    if not was_enabled:
        gc.disable()


async def test_reloaded_rules_are_frozen_and_a_failed_reload_freezes_nothing(
    tmp_path: Path, collector: None
) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(per_port_rules(10))
    config = tmp_path / "trapd.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nrules: {{files: [{rules}]}}\n")
    options = RunOptions(config=config)
    log = get_logger("test")
    loaded = load_startup(options.load(), log)

    rules.write_text(per_port_rules(2000))
    before = gc.get_freeze_count()
    _, ruleset, _resolver = await compile_reload(options, loaded, log)
    assert len(ruleset) == 2000
    # Every rule of the new set (and far more: its actions, templates, index) is frozen.
    assert gc.get_freeze_count() - before > 2000 * 5
    assert gc.isenabled()

    gc.unfreeze()
    rules.write_text(
        "rules:\n  - name: broken\n    match: {notification: IF-MIB::linkDown}\n"
        "    actions:\n      - action: no-such-plugin\n"
    )
    with pytest.raises(ConfigError):
        await compile_reload(options, loaded, log)
    assert gc.get_freeze_count() == 0
    assert gc.isenabled()


class _Cycle:
    """A reference cycle: freed only by the cyclic collector."""

    def __init__(self) -> None:
        self.me = self


async def test_a_reload_freezes_no_garbage_of_the_running_daemon(tmp_path: Path, collector: None) -> None:
    # A reload froze, with the new rules, every object the collector tracked: also the cyclic
    # garbage the running daemon had made since the last full collection (objects that lived
    # long enough to reach the oldest generation, then died in a cycle). Frozen, the collector
    # never looks at it again, so each reload kept some for good (bench_soak.py, a SIGHUP every
    # 30 s: the workers' memory grew with the reloads).
    rules = tmp_path / "rules.yaml"
    rules.write_text(per_port_rules(10))
    config = tmp_path / "trapd.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nrules: {{files: [{rules}]}}\n")
    options = RunOptions(config=config)
    log = get_logger("test")
    loaded = load_startup(options.load(), log)
    refs = []
    for _ in range(5):  # reloads, each finding 200 such cycles not collected yet
        held = [_Cycle() for _ in range(200)]
        refs += [weakref.ref(c) for c in held]
        gc.collect()  # they live in the oldest generation now, as a daemon's long-lived objects do
        del held  # and die: only a full collection would find them
        await compile_reload(options, loaded, log)
    gc.collect()
    assert sum(r() is not None for r in refs) == 0


def test_a_released_rule_set_frees_every_rule(tmp_path: Path, collector: None) -> None:
    rules = tmp_path / "rules.yaml"
    rules.write_text(per_port_rules(2500))  # more than one slice
    config = tmp_path / "trapd.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nrules: {{files: [{rules}]}}\n")
    loaded = load_startup(RunOptions(config=config).load(), get_logger("test"))
    ruleset = loaded.rules
    del loaded

    # Rules take no weak references: count them among the objects the collector tracks.
    def alive() -> int:
        return sum(1 for o in gc.get_objects() if isinstance(o, Rule))

    gc.collect()
    before = alive()  # other tests' rules may be alive in this process too
    assert before >= 2500
    release_rules(ruleset)
    assert len(vars(ruleset)) == 0  # the set gave up its parts; this reference is now a shell
    del ruleset
    gc.collect()
    assert alive() <= before - 2500


async def test_the_supervisor_frees_the_replaced_rules_in_a_thread_a_slice_at_a_time(
    tmp_path: Path, collector: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With service.workers the supervisor compiles a reload too (to refuse a bad file once, and
    for a worker it restarts). Its replaced set was dropped at once on its loop: 100,000 rules
    stopped the loop that pings systemd's watchdog and answers /healthz for 0.57 s at the end of
    every reload (bench/README.md). It goes the daemon's way now: release_rules in a thread,
    awaited before the reload lock is let go."""
    import threading

    from trapd.config import Config
    from trapd.service import lifecycle
    from trapd.service.workers import Supervisor

    rules = tmp_path / "rules.yaml"
    rules.write_text(per_port_rules(10))
    config = tmp_path / "trapd.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nrules: {{files: [{rules}]}}\n")
    options = RunOptions(config=config)
    sup = Supervisor(Config(state_dir=tmp_path / "state"), options)
    sup.config = options.load()
    sup.preloaded = load_startup(sup.config, sup.log)
    sup.resolver, sup.actions = sup.preloaded.resolver, sup.preloaded.actions
    old = sup.preloaded.rules
    released: list[tuple[object, bool]] = []
    real = lifecycle.release_rules

    def spy(ruleset: object) -> None:
        released.append((ruleset, threading.current_thread() is threading.main_thread()))
        real(ruleset)  # type: ignore[arg-type]

    monkeypatch.setattr(lifecycle, "release_rules", spy)
    rules.write_text(per_port_rules(20))
    assert await sup.reload()
    assert sup.preloaded.rules is not old and len(sup.preloaded.rules) == 20
    # Done before the reload returns: a worker restarted after it is not forked mid-release.
    assert [(r is old, on_loop) for r, on_loop in released] == [(True, False)]
    assert len(vars(old)) == 0  # released: the set gave up its parts


async def test_the_supervisor_frees_its_rules_before_compiling_a_reload_and_again_if_refused(
    tmp_path: Path, collector: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With service.workers the supervisor compiles each reload (to refuse a bad file before any
    worker, and for a worker it restarts) and keeps the result. It compiled the new set beside the
    one it held, and kept the allocator's high-water mark of both: 100,000 rules, 560-610 MB
    against 400 MB for one compile, beside each worker's own copy (bench/README.md). It frees its
    set first now, so that the compile reuses that memory; a refused reload compiles the running
    rules again, from the texts they were compiled from, not from the files that changed since."""
    from trapd.config import Config
    from trapd.service import lifecycle
    from trapd.service.workers import Supervisor

    rules = tmp_path / "rules.yaml"
    rules.write_text(per_port_rules(10))
    config = tmp_path / "trapd.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nrules: {{files: [{rules}]}}\n")
    options = RunOptions(config=config)
    sup = Supervisor(Config(state_dir=tmp_path / "state"), options)
    sup.config = options.load()
    texts = lifecycle.read_rule_texts(sup.config)
    sup.preloaded = load_startup(sup.config, sup.log, None, texts)
    sup.resolver, sup.actions = sup.preloaded.resolver, sup.preloaded.actions
    sup._compiled_with = (sup.config, texts)
    running = sup.preloaded.rules.digest
    steps: list[str] = []
    real_release, real_build = lifecycle.release_rules, lifecycle.build_rules

    def release(ruleset: object) -> None:
        steps.append(f"free {len(ruleset)}")  # type: ignore[arg-type]
        real_release(ruleset)  # type: ignore[arg-type]

    def build(*args: object, **kwargs: object) -> object:
        ruleset = real_build(*args, **kwargs)  # type: ignore[arg-type]
        steps.append(f"compiled {len(ruleset)}")
        return ruleset

    monkeypatch.setattr(lifecycle, "release_rules", release)
    monkeypatch.setattr(lifecycle, "build_rules", build)
    rules.write_text(per_port_rules(20))
    assert await sup.reload()
    assert steps == ["free 10", "compiled 20"]
    assert sup.preloaded is not None and len(sup.preloaded.rules) == 20
    reloaded = sup.preloaded.rules.digest

    steps.clear()
    rules.write_text("rules:\n  - name: broken\n    match: {notification: IF-MIB::linkDwn}\n")
    assert not await sup.reload()
    assert sup.reload_error is not None and f"{rules}:3:" in sup.reload_error
    # The running set compiled again, from its texts: the file says something else now.
    assert steps == ["free 20", "compiled 20"]
    assert sup.preloaded is not None and sup.preloaded.rules.digest == reloaded != running
