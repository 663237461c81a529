"""Cost of MIB resolution and normalization per trap (no sockets).

    .venv/bin/python bench/bench_normalize.py

Prints the resolver's load time and the RSS it adds (fresh processes: once
from the JSON index, once from the snapshot that writes), then medians of
µs per ``Normalizer.normalize`` for a v2c linkDown (sysUpTime, snmpTrapOID,
ifIndex, ifAdminStatus, ifOperStatus, ifDescr, a sequence number: 5 varbinds
after the two lifted ones) and a v1 linkDown, and µs per ``resolve``.
CPU time (process_time), so other load on the machine skews it less.
Bounded: a fixed number of iterations, a few seconds in all.
"""

from __future__ import annotations

import gc
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from trapd.listener.raw import RawNotification, Security


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def median_us(fn: object, loops: int, runs: int = 7) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.process_time()
        for _ in range(loops):
            fn()  # type: ignore[operator]
        samples.append((time.process_time() - t0) / loops * 1e6)
    return statistics.median(samples)


def measure_load(cache: str) -> None:
    """Child process: import + load the resolver once, print ms and RSS added."""
    before = rss_mb()
    t0 = time.perf_counter()
    from trapd.mibs import MibConfig, MibResolver

    imported = time.perf_counter()
    mid = rss_mb()
    resolver = MibResolver.load(MibConfig(dirs=(), cache_dir=Path(cache)))
    done = time.perf_counter()
    gc.collect()
    path = "snapshot" if resolver.sources[-1] == "snapshot" else "JSON index"
    print(
        f"resolver load from {path}: {(done - imported) * 1000:.0f} ms, RSS +{rss_mb() - mid:.1f} MB "
        f"({len(resolver)} nodes; trapd.mibs import itself {(imported - t0) * 1000:.0f} ms, "
        f"+{mid - before:.1f} MB on top of the listener's)"
    )


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--load":
        measure_load(sys.argv[2])
        return
    with tempfile.TemporaryDirectory() as cache:
        for _ in range(2):  # cold (JSON, writes the snapshot), then warm (snapshot)
            subprocess.run([sys.executable, __file__, "--load", cache], check=True)

    from trapd.mibs import MibConfig, MibResolver
    from trapd.normalize import Normalizer

    resolver = MibResolver.load(MibConfig(dirs=()))
    norm = Normalizer(resolver)
    v2 = RawNotification(
        version="v2c",
        kind="trap",
        source="127.0.0.1",
        source_port=40000,
        security=Security(community="public"),
        varbinds=[
            ((1, 3, 6, 1, 2, 1, 1, 3, 0), "TimeTicks", 123456),
            ((1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0), "ObjectIdentifier", (1, 3, 6, 1, 6, 3, 1, 1, 5, 3)),
            ((1, 3, 6, 1, 2, 1, 2, 2, 1, 1, 17), "Integer32", 17),
            ((1, 3, 6, 1, 2, 1, 2, 2, 1, 7, 17), "Integer32", 1),
            ((1, 3, 6, 1, 2, 1, 2, 2, 1, 8, 17), "Integer32", 2),
            ((1, 3, 6, 1, 2, 1, 2, 2, 1, 2, 17), "OctetString", b"GigabitEthernet1/0/17"),
            ((1, 3, 6, 1, 4, 1, 99999, 1, 0), "Counter32", 42),
        ],
        received_at=time.time(),
    )
    v1 = RawNotification(
        version="v1",
        kind="trap",
        source="127.0.0.1",
        source_port=40000,
        security=Security(community="public"),
        varbinds=v2.varbinds[2:],
        received_at=time.time(),
        v1_enterprise=(1, 3, 6, 1, 4, 1, 8072),
        v1_agent_addr="192.0.2.1",
        v1_generic_trap=2,
        v1_specific_trap=0,
        v1_timestamp=123456,
    )
    event = norm.normalize(v2)
    print(f"sample: {event.trap_name} " + ", ".join(f"{vb.name}.{vb.index_str}={vb.display}" for vb in event))
    print(
        f"normalize v2c linkDown (5 varbinds): {median_us(lambda: norm.normalize(v2), 20_000):.1f} µs median"
    )
    v1_us = median_us(lambda: norm.normalize(v1), 20_000)
    print(f"normalize v1 linkDown (5 + 3 varbinds): {v1_us:.1f} µs median")
    oid = (1, 3, 6, 1, 2, 1, 2, 2, 1, 8, 17)
    print(f"resolve, cached: {median_us(lambda: resolver.resolve(oid), 200_000):.2f} µs median")

    def uncached() -> None:
        resolver._cache.clear()
        resolver.resolve(oid)

    print(f"resolve, uncached (longest-prefix walk): {median_us(uncached, 50_000):.2f} µs median")


if __name__ == "__main__":
    main()
