"""Mutation fuzzing of the fast SNMPv3 USM path, seeded with authentic traps at every level.

Issue 7 asks for at least 1,000,000 inputs through the v3 path. Every input
must end as one of the three outcomes the listener understands: a
RawNotification, None (declined: pysnmp's), or :class:`Refused` with a drop
reason from DROP_REASONS; never another exception and never an internal
error swallowed as a decline. A mutant of an authenticated seed must never
be delivered (that would be a forgery passing the HMAC). The mutator is
bench/fuzz_fastpath.py's structure-aware one (bit flips, BER-significant
bytes, length corruption, truncation, insertion, duplication, nesting,
splicing seeds, trailing bytes) for two inputs in three; the third changes
one to three bytes in place, which keeps the framing and so reaches the
HMAC, the time window and the decryption.

Seeds: loadgen's SHA-256/AES-128 traps plus traps pysnmp's own engine encodes
for MD5/DES, SHA/AES-128, SHA-224/AES-192, SHA-512/AES-256, SHA-384
authNoPriv and noAuthNoPriv, all from loadgen's sender engine.

    .venv/bin/python bench/fuzz_usm.py --inputs 1000000 --seed 1
"""

from __future__ import annotations

import argparse
import collections
import json
import random
import sys
import time
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent))

import bench_v3  # noqa: E402
import fuzz_fastpath  # noqa: E402
import loadgen  # noqa: E402

from trapd.listener.stats import DROP_REASONS  # noqa: E402
from trapd.listener.v3.usm import Refused, UsmFastPath  # noqa: E402

PAIRS = [
    ("SHA-256", "AES-128"),
    ("MD5", "DES"),
    ("SHA", "AES-128"),
    ("SHA-224", "AES-192"),
    ("SHA-512", "AES-256"),
    ("SHA-384", "none"),
    ("none", "none"),
]


def corpus() -> tuple[list[Any], list[bytes], set[bytes]]:
    """(users, seeds, authenticated seeds)."""
    users = [bench_v3.trapd_user(a, p, name=f"fuzz-{a}-{p}".lower()) for a, p in PAIRS]
    seeds: list[bytes] = loadgen.build_messages(loadgen.LoadSpec(version="v3"), 1, 8)
    users.append(bench_v3.trapd_user())  # loadgen's own user
    authenticated = set(seeds)
    for u in users[:-1]:
        traps = bench_v3.pysnmp_traps(u, 4)
        seeds += traps
        if u.auth_protocol != "none":
            authenticated.update(traps)
    return users, seeds, authenticated


def run(count: int, seed: int) -> dict[str, Any]:
    users, seeds, authenticated = corpus()
    rng = random.Random(seed)
    fast = UsmFastPath(users, bench_v3.TRAPD_ENGINE)
    outcomes: collections.Counter[str] = collections.Counter()
    slowest = 0.0
    slowest_input = b""
    started = time.perf_counter()
    for i in range(count):
        if i < len(seeds):
            data = seeds[i]
        elif i % 3:
            data = fuzz_fastpath.mutate(rng, seeds)
        else:  # same-length changes keep the framing, so they reach the HMAC and the decryption
            buf = bytearray(rng.choice(seeds))
            for _ in range(rng.randint(1, 3)):
                buf[rng.randrange(len(buf))] = rng.choice((rng.randrange(256), *fuzz_fastpath.INTERESTING))
            data = bytes(buf)
        begin = time.process_time()
        try:
            raw = fast.receive(data, "192.0.2.9", 162, 0.0)
        except Refused as exc:
            if exc.reason not in DROP_REASONS:
                raise AssertionError(f"undocumented reason {exc.reason!r} for {data[:64].hex()}") from exc
            outcomes[f"refused {exc.reason}/{exc.detail}"] += 1
        except Exception as exc:
            raise AssertionError(f"{type(exc).__name__} escaped receive() for {data[:64].hex()}") from exc
        else:
            if raw is None:
                outcomes["declined"] += 1
            else:
                if raw.security.level != "noAuthNoPriv" and data not in authenticated:
                    raise AssertionError(f"forged message delivered: {data.hex()}")
                outcomes["accepted"] += 1
        elapsed = time.process_time() - begin
        if elapsed > slowest:
            slowest, slowest_input = elapsed, data
    internal = {k: n for k, n in fast.declined.items() if k.startswith("internal-")}
    if internal:
        raise AssertionError(f"internal errors swallowed as declines: {internal}")
    return {
        "inputs": count,
        "seed": seed,
        "outcomes": dict(outcomes.most_common()),
        "declined": dict(fast.declined.most_common(12)),
        "crashes": 0,
        "forgeries": 0,
        "seconds": round(time.perf_counter() - started, 1),
        "slowest_input_cpu_ms": round(slowest * 1000, 3),
        "slowest_input_octets": len(slowest_input),
    }


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--inputs", type=int, default=1_000_000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    print(json.dumps(run(args.inputs, args.seed), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
