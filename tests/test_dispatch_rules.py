"""Rules -> dispatcher -> real plugins: what the rule engine plans is what runs (or does not).

Events are typed in the compact form of `trapd test`; the rule engine and
the plugins are the installed ones. (Real traps from snmptrap through the
whole daemon are the integration suite's.)
"""

from __future__ import annotations

import asyncio
import functools
import json
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from trapd.dispatch.config import DispatchConfig, JournalConfig, RetryDefaults
from trapd.dispatch.dispatcher import Dispatcher
from trapd.dispatch.journal import HistoryFilter, SQLiteJournal
from trapd.event import Event
from trapd.mibs import MibResolver
from trapd.plugin import load_actions
from trapd.rules import RuleSet, compile_rules
from trapd.rules.compact import parse_compact

CONFIG = DispatchConfig(
    workers=4,
    shutdown_timeout=1.0,
    journal=JournalConfig(poll_interval=0.05),
    retry=RetryDefaults(max_attempts=3, backoff=0.05, jitter=0.0),
)


@functools.cache
def resolver() -> MibResolver:
    return MibResolver.load()  # seconds: once per session, never inside a timed sequence


def rules(tmp_path: Path, text: str) -> RuleSet:
    path = tmp_path / "rules.yaml"
    path.write_text(textwrap.dedent(text))
    actions, _ = load_actions()
    rs, problems = compile_rules([path], resolver(), actions)
    errors = [str(p) for p in problems if p.severity == "error"]
    assert not errors, errors
    return rs


def ev(words: str) -> Event:
    return parse_compact(words.split(), resolver())


@pytest.fixture
async def dispatcher(tmp_path: Path) -> AsyncIterator[Dispatcher]:
    journal = SQLiteJournal(tmp_path / "journal.sqlite")
    await journal.open()
    actions, _ = load_actions()
    d = Dispatcher(CONFIG, journal, actions, kea=None)
    await d.start()
    yield d
    await d.stop(0.5)
    await journal.close()


async def settle(d: Dispatcher, timeout: float = 5.0) -> dict[str, int]:
    """Wait until nothing is waiting or running; return the journal's counts."""
    deadline = time.monotonic() + timeout
    while True:
        counts = await d.journal.counts()
        if not any(counts[s] for s in ("scheduled", "pending", "running", "failed")):
            return counts
        if time.monotonic() > deadline:
            raise AssertionError(f"still busy: {counts}")
        await asyncio.sleep(0.02)


async def submit(d: Dispatcher, rs: RuleSet, words: str) -> list[str]:
    e = ev(words)
    return await d.submit(e, rs.evaluate(e))


async def test_hostile_varbind_reaches_exec_as_one_argument(tmp_path: Path, dispatcher: Dispatcher) -> None:
    out = tmp_path / "argv.json"
    code = f"import sys, json; open({str(out)!r}, 'w').write(json.dumps(sys.argv[1:]))"
    rs = rules(
        tmp_path,
        f"""
        rules:
          - name: port-down-script
            match: {{notification: IF-MIB::linkDown}}
            actions:
              - action: exec
                argv:
                  - {json.dumps(sys.executable)}
                  - "-c"
                  - {json.dumps(code)}
                  - "{{{{ source }}}}"
                  - "{{{{ ifAlias }}}}"
        """,
    )
    hostile = "; rm -rf / $(reboot) `id`\nsecond line"
    e = ev("IF-MIB::linkDown from 10.20.1.5 ifIndex=17 ifAlias=placeholder")
    alias = e.varbind("ifAlias")
    assert alias is not None
    vbs = tuple(
        replace(vb, value=hostile.encode(), display=hostile) if vb is alias else vb for vb in e.varbinds
    )
    e = replace(e, varbinds=vbs)
    ids = await dispatcher.submit(e, rs.evaluate(e))
    assert len(ids) == 1
    await settle(dispatcher)
    assert json.loads(out.read_text()) == ["10.20.1.5", hostile]


FLAP = """
rules:
  - name: port-down-cleanup
    match: {notification: IF-MIB::linkDown}
    actions:
      - action: exec
        argv: ["/bin/sh", "-c", 'echo "$1" >> "$2"', "sh", "{{ source }}:{{ ifIndex }}", "OUT"]
        delay: DELAY
        cancel-key: "port:{{ source }}:{{ ifIndex }}"
  - name: port-up
    match: {notification: IF-MIB::linkUp}
    cancel: "port:{{ source }}:{{ ifIndex }}"
"""


async def test_flap_within_the_delay_does_nothing(tmp_path: Path, dispatcher: Dispatcher) -> None:
    out = tmp_path / "cleanups.txt"
    # The linkUp must come within the delay: 2 s leaves a loaded machine its time for the two
    # submits before it (with 300 ms and a 0.1 s sleep between, a slow commit could let the delay
    # end first, and port 17's cleanup ran). settle() waits out the delay of port 18.
    rs = rules(tmp_path, FLAP.replace("OUT", str(out)).replace("DELAY", "2s"))
    down = await submit(dispatcher, rs, "IF-MIB::linkDown from 10.20.1.5 ifIndex=17")
    other = await submit(dispatcher, rs, "IF-MIB::linkDown from 10.20.1.5 ifIndex=18")
    assert await submit(dispatcher, rs, "IF-MIB::linkUp from 10.20.1.5 ifIndex=17") == []
    await settle(dispatcher)
    assert out.read_text() == "10.20.1.5:18\n"  # only the port that stayed down
    e = await dispatcher.journal.get(int(down[0]))
    assert e is not None and e.state == "cancelled"
    e = await dispatcher.journal.get(int(other[0]))
    assert e is not None and e.state == "done"


async def test_cancelled_delayed_actions_are_counted_under_their_plugin(
    tmp_path: Path, dispatcher: Dispatcher
) -> None:
    """trapd_actions_total{plugin="log", outcome="cancelled"}, not plugin="*"."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from trapd.service.metrics import DaemonSnapshot, TrapdCollector, build_registry

    rs = rules(
        tmp_path,
        """
        rules:
          - name: port-down-note
            match: {notification: IF-MIB::linkDown}
            actions:
              - action: log
                message: "still down {{ source }}:{{ ifIndex }}"
                delay: 60s
                cancel-key: "port:{{ source }}:{{ ifIndex }}"
          - name: port-up
            match: {notification: IF-MIB::linkUp}
            cancel: "port:{{ source }}:{{ ifIndex }}"
        """,
    )
    for port in (17, 18):
        await submit(dispatcher, rs, f"IF-MIB::linkDown from 10.20.1.5 ifIndex={port}")
    await submit(dispatcher, rs, "IF-MIB::linkUp from 10.20.1.5 ifIndex=17")
    await submit(dispatcher, rs, "IF-MIB::linkUp from 10.20.1.5 ifIndex=18")
    assert dispatcher.stats.outcomes[("log", "cancelled")] == 2

    snap = DaemonSnapshot(actions=dict(dispatcher.stats.outcomes))
    text = generate_latest(build_registry(TrapdCollector(lambda: snap), process_metrics=False)).decode()
    actions = {
        (s.labels["plugin"], s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "trapd_actions_total"
    }
    assert actions == {("log", "cancelled"): 2}


async def test_delayed_cleanup_survives_a_restart(tmp_path: Path) -> None:
    out = tmp_path / "cleanups.txt"
    # 1 s: the submit's commit and the stop end well within it on a loaded machine (with 300 ms a
    # slow commit could let the delay end, and the cleanup run, before the stop).
    rs = rules(tmp_path, FLAP.replace("OUT", str(out)).replace("DELAY", "1s"))
    actions, _ = load_actions()
    async with SQLiteJournal(tmp_path / "journal.sqlite") as journal:
        first = Dispatcher(CONFIG, journal, actions, kea=None)
        await first.start()
        due = time.monotonic() + 1.0
        await submit(first, rs, "IF-MIB::linkDown from 10.20.1.5 ifIndex=17")
        await first.stop()
    await asyncio.sleep(max(0.0, due - time.monotonic()) + 0.2)  # trapd is down when the delay ends
    assert not out.exists()
    async with SQLiteJournal(tmp_path / "journal.sqlite") as journal:
        second = Dispatcher(CONFIG, journal, actions, kea=None)
        await second.start()
        try:
            await settle(second)
        finally:
            await second.stop()
    assert out.read_text() == "10.20.1.5:17\n"


async def test_once_within_and_history_by_mac(tmp_path: Path, dispatcher: Dispatcher) -> None:
    rs = rules(
        tmp_path,
        """
        rules:
          - name: note-mac
            match: {notification: IF-MIB::linkDown}
            actions:
              - action: log
                message: "seen {{ ifAlias }}"
                once-within: 5m
                once-key: "{{ ifAlias }}"
        """,
    )
    for alias in ("aa", "aa", "bb", "aa"):
        await submit(dispatcher, rs, f"IF-MIB::linkDown from 10.20.1.5 ifIndex=17 ifAlias={alias}")
    await settle(dispatcher)
    done = await dispatcher.journal.history(HistoryFilter(states=("done",)))
    dups = await dispatcher.journal.history(HistoryFilter(states=("cancelled",)))
    assert sorted(e.params["message"] for e in done) == ["seen aa", "seen bb"]
    assert len(dups) == 2 and all((e.result or {}).get("duplicate_of") for e in dups)


async def test_dry_run_mode_from_the_rules(tmp_path: Path, dispatcher: Dispatcher) -> None:
    marker = tmp_path / "ran"
    rs = rules(
        tmp_path,
        f"""
        rules:
          - name: careful
            mode: dry-run
            match: {{notification: IF-MIB::linkDown}}
            actions:
              - action: exec
                argv: ["/usr/bin/touch", "{marker}"]
        """,
    )
    ids = await submit(dispatcher, rs, "IF-MIB::linkDown from 10.20.1.5 ifIndex=17")
    await settle(dispatcher)
    await asyncio.sleep(0.1)
    assert not marker.exists()
    e = await dispatcher.journal.get(int(ids[0]))
    assert e is not None and e.state == "done" and e.mode == "dry-run"


async def test_a_cap_in_defaults_counts_every_rules_actions_together(
    tmp_path: Path, dispatcher: Dispatcher
) -> None:
    """docs/rules.md: a cap in defaults "limits every destructive action of every rule, counted together"."""
    rs = rules(
        tmp_path,
        """
        defaults:
          cap: {limit: 1, per: 1h}
        rules:
          - name: on-down
            match: {notification: IF-MIB::linkDown}
            actions: [{action: kea.lease-del, ip-address: 10.0.0.1}]
          - name: on-up
            match: {notification: IF-MIB::linkUp}
            actions: [{action: kea.lease-del, ip-address: 10.0.0.2}]
        """,
    )
    first = await submit(dispatcher, rs, "IF-MIB::linkDown from 10.20.1.5 ifIndex=17")
    await settle(dispatcher)
    second = await submit(dispatcher, rs, "IF-MIB::linkUp from 10.20.1.5 ifIndex=17")
    await settle(dispatcher)
    started = await dispatcher.journal.get(int(first[0]))
    # the one start the cap allows (with no Kea here, it fails)
    assert started is not None and started.attempts >= 1
    held = await dispatcher.journal.get(int(second[0]))
    assert held is not None and held.state == "held", held


async def test_a_cap_of_limit_0_holds_every_action_for_an_operator(
    tmp_path: Path, dispatcher: Dispatcher
) -> None:
    """docs/dispatch.md: "`limit: 0` holds everything: a manual-approval mode for a rule"."""
    rs = rules(
        tmp_path,
        """
        rules:
          - name: approve-first
            match: {notification: IF-MIB::linkDown}
            cap: {limit: 0, per: 1m}
            actions: [{action: kea.lease-del, ip-address: 10.0.0.1}]
        """,
    )
    ids = await submit(dispatcher, rs, "IF-MIB::linkDown from 10.20.1.5 ifIndex=17")
    await settle(dispatcher)
    held = await dispatcher.journal.get(int(ids[0]))
    assert held is not None and held.state == "held" and held.attempts == 0, held
