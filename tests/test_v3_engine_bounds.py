"""The sender engines' time notions and replay memories have fixed maximums (timeliness.Timelines).

Only authentic messages add to them, but whoever holds a user's keys (a passphrase shared by
every switch of a site, one of them compromised) can make up engine IDs without end: a user
without engine_ids learns each. Memory grew with every engine (4,096 remembered MACs for each
bound one, 256 for each learned one), and after 1,024 learned engines every new one was refused
(``learn-limit``): a real switch added after the flood was kept out.
"""

from __future__ import annotations

import tracemalloc

import pytest
from usm_support import craft, link_down_varbinds, scoped_pdu, trap_pdu, user

from trapd.listener.stats import ListenerStats
from trapd.listener.v3.keys import MasterKeys, localized_user
from trapd.listener.v3.timeliness import MAX_ENGINES, MAX_MACS, REPLAY_MEMORY, Timelines
from trapd.listener.v3.usm import UsmFastPath

TRAPD = bytes.fromhex("80004fb805aabbccddeeff0011")
ANY = user("anyengine", "SHA", "AES-128")
SCOPED = scoped_pdu(trap_pdu(link_down_varbinds()))
MASTERS: MasterKeys = {}  # each passphrase's 1 MiB hash once


def engine(i: int) -> bytes:
    return bytes.fromhex("80000000017f") + i.to_bytes(4, "big")


def trap(e: bytes, msg_id: int = 1, etime: int = 1000) -> bytes:
    return craft(localized_user(ANY, e, MASTERS), e, b"anyengine", SCOPED, msg_id=msg_id, etime=etime)


def test_a_flood_of_made_up_engines_neither_grows_memory_nor_keeps_a_real_engine_out() -> None:
    stats = ListenerStats()
    fast = UsmFastPath([ANY], TRAPD, max_learned_engines=32, stats=stats, masters=MASTERS)
    known = engine(10_000)  # a switch heard from before the flood
    assert fast.receive(trap(known), "10.0.0.1", 1, 0.0) is not None
    for i in range(400):  # a key holder's flood: every message authentic, every engine new
        assert fast.receive(trap(engine(i)), "10.6.6.6", 1, 0.0) is not None
    assert fast.learned == 32 and len(fast.timelines) <= 32
    assert stats.v3_engines_pushed_out >= 400 + 1 - 32
    # A switch added after the flood is learned (before: declined here, refused as learn-limit)
    new = engine(10_001)
    assert fast.receive(trap(new), "10.0.0.3", 1, 0.0) is not None
    # and the one pushed out by the flood is learned again by its next trap.
    assert fast.receive(trap(known, msg_id=2, etime=1001), "10.0.0.1", 1, 0.0) is not None
    assert {(new, b"anyengine"), (known, b"anyengine")} <= set(fast.pairs)
    assert not fast.declined


def test_the_notions_of_bound_engines_stay_within_both_maximums() -> None:
    """A site binding many engines (or a flood within them): at most ``max_engines`` notions and
    ``max_macs`` remembered MACs in all; the engine heard from least recently goes first, and
    every one pushed out is counted."""
    engines = [engine(i) for i in range(60)]
    bound = user("bound", "SHA", "AES-128", engines)
    stats = ListenerStats()
    fast = UsmFastPath(
        [bound], TRAPD, timelines=Timelines(max_engines=40, max_macs=100), stats=stats, masters=MASTERS
    )
    sent = 0
    for rounds in range(5):
        for e in engines:
            data = craft(
                localized_user(bound, e, MASTERS), e, b"bound", SCOPED, msg_id=rounds, etime=1000 + rounds
            )
            assert fast.receive(data, "10.0.0.2", 1, 0.0) is not None
            sent += 1
            assert len(fast.timelines) <= 40 and fast.timelines.macs <= 100
            assert fast.timelines.macs == sum(len(t.recent) for t in fast.timelines.values())
    assert stats.v3_engines_pushed_out == fast.timelines.pushed_out > 0
    assert list(fast.timelines)[-1] == engines[-1]  # heard from last: kept


def test_the_shipped_maximums_bound_memory() -> None:
    """The documented bound: MAX_MACS remembered MACs and MAX_ENGINES notions, some 32 MiB
    measured (a MAC costs about 125 octets), whatever the number of engines."""
    tracemalloc.start()
    try:
        timelines = Timelines(max_engines=MAX_ENGINES, max_macs=MAX_MACS // 64)
        start = tracemalloc.get_traced_memory()[0]
        for i in range(MAX_ENGINES + 500):
            for j in range(8):
                timelines.accept(
                    engine(i), 1, 1000 + j, i.to_bytes(4, "big") + bytes([j]) * 20, REPLAY_MEMORY
                )
        used = tracemalloc.get_traced_memory()[0] - start
    finally:
        tracemalloc.stop()
    assert len(timelines) <= MAX_ENGINES and timelines.macs <= MAX_MACS // 64
    # per remembered MAC, notions included: the 32 MiB of the documentation for MAX_MACS
    assert used / (MAX_MACS // 64) < 32 * 1024 * 1024 / MAX_MACS * 1.5, used


def test_engines_pushed_out_are_a_metric_summed_over_workers() -> None:
    """Counted where an operator looks: trapd_v3_engines_pushed_out_total, the workers' summed."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from trapd.service.metrics import DaemonSnapshot, TrapdCollector, build_registry
    from trapd.service.snapshots import from_wire, sum_snapshots, to_wire

    workers = [from_wire(to_wire(DaemonSnapshot(v3_engines_pushed_out=n))) for n in (3, 4)]
    total = sum_snapshots(workers)
    registry = build_registry(TrapdCollector(lambda: total), process_metrics=False)
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert families["trapd_v3_engines_pushed_out"].samples[0].value == 7


def test_a_pysnmp_laid_out_otherwise_does_not_stop_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    """widen_pysnmp_integer_ranges reaches into pysnmp's PDU specification; a pysnmp release that
    lays it out otherwise must leave trapd starting (with pysnmp's own ranges), not fail it."""
    from pysnmp.proto import rfc1905

    from trapd.listener.v3.adapters import widen_pysnmp_integer_ranges

    monkeypatch.setattr(rfc1905, "InformRequestPDU", object())
    widen_pysnmp_integer_ranges()  # no AttributeError
