"""A reload's compiled rules are frozen out of the cyclic collector's sight, as start-up's are.

Left to the collector, its first pass after the compile walked every object the compile made,
holding the GIL: the event loop stood still for 0.7 s after a reload of 100,000 rules
(bench/README.md, "Rule files of 1,000 to 100,000 rules"). What is asserted here is the
mechanism, in the process itself: the new rules are in the permanent generation after the
reload, a failed reload freezes nothing, and the collector is left as it was found.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

import pytest

from trapd.service.lifecycle import compile_reload, load_startup
from trapd.service.logging import get_logger
from trapd.service.options import RunOptions
from trapd.yamlsource import ConfigError


def per_port_rules(count: int) -> str:
    rule = (
        "  - name: port-{i}\n    match:\n      notification: IF-MIB::linkDown\n"
        "      varbinds: {{ifIndex: {i}}}\n    actions:\n      - action: log\n"
        '        message: "down {{{{ ifIndex }}}} from {{{{ source }}}}"\n'
    )
    return "rules:\n" + "".join(rule.format(i=i) for i in range(count))


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
    _, ruleset = await compile_reload(options, loaded, log)
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
