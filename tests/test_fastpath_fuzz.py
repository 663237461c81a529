"""A short fixed-seed fuzz run of the fast-path decoder (the long run is bench/fuzz_fastpath.py).

The engine lives in bench/ so that the benchmark's million-input run and this
one mutate the same way; here it runs a fixed seed so a failure reproduces.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest

from trapd.listener.fastpath import MAX_MESSAGE, REJECT_REASONS, Rejected, decode, message_version

ENGINE_PATH = Path(__file__).resolve().parents[1] / "bench" / "fuzz_fastpath.py"


def load_engine() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_fastpath", ENGINE_PATH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fuzz_fastpath", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def engine() -> ModuleType:
    return load_engine()


def test_fixed_seed_fuzz_run(engine: ModuleType) -> None:
    """60,000 inputs: only Rejected escapes, reasons are documented, accepted messages are sane."""
    report = engine.run(60_000, seed=20261128)  # raises AssertionError on any escape or insane result
    assert report["crashes"] == 0
    assert set(report["rejected"]) <= set(REJECT_REASONS)
    # The mutator reaches deep: nearly every refusal is exercised and some mutants still decode.
    assert len(report["rejected"]) >= len(REJECT_REASONS) - 1, report["rejected"]
    assert report["accepted"] > 1000
    # A hang guard, not a speed test (the benchmark measures speed): generous for a loaded machine.
    assert report["slowest_input_cpu_ms"] < 1000, report


def test_seeds_are_accepted(engine: ModuleType) -> None:
    """The mutator starts from valid messages; if a seed were refused, the run would fuzz much less."""
    for seed in engine.seeds():
        msg = decode(seed)
        engine.check_accepted(seed, msg)


@pytest.mark.parametrize("index", range(16))
def test_extreme_inputs(engine: ModuleType, index: int) -> None:
    data = engine.extremes()[index]
    started = time.perf_counter()
    try:
        msg = decode(data)
    except Rejected as error:
        assert error.reason in REJECT_REASONS
        if len(data) > MAX_MESSAGE:
            assert error.reason == "oversized"
        elif not data:
            assert error.reason == "empty"
    else:
        engine.check_accepted(data, msg)
    try:
        message_version(data)
    except Rejected as error:
        assert error.reason in REJECT_REASONS
    assert time.perf_counter() - started < 1.0


def test_extremes_include_what_issue_7_names(engine: ModuleType) -> None:
    sizes = {len(data) for data in engine.extremes()}
    assert {0, MAX_MESSAGE, MAX_MESSAGE + 1} <= sizes
    outcomes = {}
    for data in engine.extremes():
        try:
            outcomes[data[:6]] = f"ok {len(decode(data).varbinds)}"
        except Rejected as error:
            outcomes[data[:6]] = error.reason
    assert outcomes[b"\x30\x80" * 3] == "indefinite-length"  # deep indefinite nesting
    assert outcomes[b"\x30\x84\xff\xff\xff\xff"] == "truncated"  # a huge length
    assert "ok 9000" in outcomes.values()  # 9,000 varbinds in one datagram are fine
    assert "bad-oid" in outcomes.values()  # a 60 KB OID is not


def _outcome(call: object, data: bytes) -> object:
    try:
        return call(data)  # type: ignore[operator]
    except Rejected as error:
        return ("rejected", error.reason)


def test_the_listeners_one_pass_decoder_agrees_with_version_then_decode(engine: ModuleType) -> None:
    """decode_unless_v3 (what the listener calls) = message_version, then decode for v1/v2c: same
    messages, same refusals with the same reasons, None exactly for v3, on fuzzed and extreme input.
    decode_unless_v3 reads the usual v2c envelope its own way (fastpath._usual_v2c), so this is a
    differential test of that shortcut against the general path."""
    import random

    from trapd.listener.fastpath import _usual_v2c, decode_unless_v3

    rng = random.Random(20261128)
    corpus = engine.seeds()
    inputs = [*corpus, *engine.extremes(), *(engine.mutate(rng, corpus) for _ in range(20_000))]
    # And the envelope itself, octet by octet: every seed the shortcut takes, with one of its
    # first 40 octets replaced, dropped or doubled (lengths, tags, version, request-id, errors).
    for seed in (c for c in corpus if _usual_v2c(c) is not None):
        for _ in range(3000):
            at = rng.randrange(min(40, len(seed)))
            octet = bytes((rng.choice((rng.randrange(256), seed[at] ^ 1, 0x80, 0x81, 0x82, 0xFF)),))
            inputs.append(rng.choice((seed[:at] + octet + seed[at + 1 :], seed[:at] + seed[at + 1 :])))
            inputs.append(seed[:at] + seed[at : at + 1] * 2 + seed[at + 1 :])
    versions: set[object] = set()
    shortcut = 0
    for data in inputs:
        shortcut += _usual_v2c(data) is not None
        version = _outcome(message_version, data)
        versions.add(version)
        if version == 3:
            expected: object = None
        elif isinstance(version, tuple):
            expected = version
        else:
            expected = _outcome(decode, data)
        assert _outcome(decode_unless_v3, data) == expected, data
    # The mutants reach every branch: v1, v2c, v3 and refused headers.
    assert {0, 1, 3} <= versions and any(isinstance(v, tuple) for v in versions)
    assert shortcut > 1000  # and the shortcut took many of them, good and bad
