"""SNMPv3 authPriv receive cost: trapd's fast USM path vs pysnmp's engine; receiver memory over a long run.

Two measurements, both bounded and loopback-only:

``cost`` (default): µs of CPU per v3 authPriv trap, offline (no socket), in one
process and one run, over the same distinct messages (each with its own msgID,
salt/IV, ciphertext and MAC; bench/loadgen.py builds them as a switch would):

* ``usm.receive``: trapd/listener/v3/usm.py alone (parse, HMAC, AES, varbinds, RawNotification);
* ``listener fast``: ``Listener.handle_datagram`` with the fast path (what a datagram costs
  trapd after the socket: routing, counters, the hand-off);
* ``listener pysnmp``: the same with the fast path switched off, i.e. pysnmp's engine
  behind trapd's socket (V3Receiver), as before the fast path.

``--matrix`` adds the fast path's cost for other protocol pairs (messages built by
pysnmp's own engine).

``memory``: a receiver process (trapd's Listener on uvloop, one v3 user bound to the
sender engine) gets ``--count`` distinct authPriv traps at ``--rate`` over loopback;
its RSS is sampled every ``--sample-every`` traps. ``--variants fast,pysnmp`` also
runs the pysnmp path for comparison (slow: keep its count small).

    .venv/bin/python bench/bench_v3.py                          # cost, ~15 s
    .venv/bin/python bench/bench_v3.py cost --matrix
    .venv/bin/python bench/bench_v3.py memory --count 50000 --rate 2000
    .venv/bin/python bench/bench_v3.py memory --variants fast,pysnmp --count 20000 --rate 400
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import loadgen  # noqa: E402
from v3_memory import print_rss_table, run_variant  # noqa: E402

TRAPD_ENGINE = bytes.fromhex("80004fb805aabbccddeeff0011")
sys.path.insert(0, str(BENCH.parent))
from trapd.listener.config import RateLimit  # noqa: E402

# pysnmp's engine is what is measured here: no slow-path budget (limits.SlowPathBudget).
NO_SLOW_BUDGET = RateLimit(v3_slow_per_source=0, v3_slow_global=0)


def trapd_user(auth: str = "SHA-256", priv: str = "AES-128", name: str | None = None) -> Any:
    from trapd.listener.config import V3User
    from trapd.secrets import Secret

    u = loadgen.V3User()
    return V3User(
        user=name or u.user,
        auth_protocol=auth,
        auth_key=Secret(u.auth_key),
        priv_protocol=priv,
        priv_key=Secret(u.priv_key),
        engine_ids=(u.engine_id,),
    )


def cpu_us_per_item(fn: Callable[[bytes], object], messages: Sequence[bytes]) -> float:
    t0 = time.process_time()
    for m in messages:
        fn(m)
    return (time.process_time() - t0) / len(messages) * 1e6


def fast_receive(fast: Any) -> Callable[[bytes], object]:
    return lambda m: fast.receive(m, "127.0.0.1", 50000, 0.0)


def listener_receive(listener: Any) -> Callable[[bytes], object]:
    def reply(d: bytes, a: tuple[Any, ...]) -> None:
        pass

    return lambda m: listener.handle_datagram(m, ("127.0.0.1", 50000), reply)


class _Quiet:
    def __getattr__(self, name: str) -> object:
        return lambda *a, **k: None


# --- cost ---------------------------------------------------------------------------------


def measure_cost(count: int, pysnmp_count: int, rounds: int) -> dict[str, Any]:
    from trapd.listener import Listener, ListenerConfig
    from trapd.listener.config import ListenAddress
    from trapd.listener.v3.usm import UsmFastPath

    users = (trapd_user(),)
    # Fresh messages per round (the fast path refuses replays), each one distinct.
    spec = loadgen.LoadSpec(version="v3")
    batches = [loadgen.build_messages(spec, 1 + r * count, count) for r in range(rounds)]

    def got(raw: object) -> None:
        """Drop the notification, as the daemon does once it is queued (keeping them all would bill GC)."""

    results: dict[str, list[float]] = {"usm.receive": [], "listener fast": [], "listener pysnmp": []}

    for batch in batches:
        fast = UsmFastPath(users, TRAPD_ENGINE)
        results["usm.receive"].append(cpu_us_per_item(fast_receive(fast), batch))
        assert fast.accepted == len(batch), fast.declined

    async def through_listener() -> None:
        config = ListenerConfig(
            listen=(ListenAddress("127.0.0.1", 0),),
            v3_users=users,
            engine_id=TRAPD_ENGINE,
            rate_limit=NO_SLOW_BUDGET,
        )
        for r, batch in enumerate(batches):
            async with Listener(config, got, logger=_Quiet()) as listener:
                results["listener fast"].append(cpu_us_per_item(listener_receive(listener), batch))
                assert listener.stats.received["v3"] == len(batch), listener.stats.to_dict()
            async with Listener(config, got, logger=_Quiet()) as listener:
                listener._v3.fast = None  # pysnmp's engine only, as before the fast path
                sample = batch[:pysnmp_count]
                results["listener pysnmp"].append(cpu_us_per_item(listener_receive(listener), sample))
                assert listener.stats.received["v3"] == len(sample), listener.stats.to_dict()
            print(f"round {r + 1}/{rounds} done", file=sys.stderr)

    asyncio.run(through_listener())
    return {k: statistics.median(v) for k, v in results.items()} | {
        "rounds": {k: v for k, v in results.items()}
    }


def pysnmp_traps(u: Any, count: int) -> list[bytes]:
    """``count`` linkDown traps from user ``u`` as pysnmp's own engine encodes them (loadgen's engine ID)."""
    from pysnmp.carrier.asyncio.dgram import udp
    from pysnmp.carrier.base import AbstractTransportDispatcher
    from pysnmp.entity import config as pc
    from pysnmp.entity.engine import SnmpEngine
    from pysnmp.proto import rfc1902
    from pysnmp.proto.api import v2c

    from trapd.listener.v3.adapters import pysnmp_protocols as _pysnmp_protocols

    sender_id = loadgen.V3User().engine_id
    sent: list[bytes] = []

    class _Capture(AbstractTransportDispatcher):  # type: ignore[misc]
        def send_message(self, message: Any, domain: Any, address: Any) -> None:
            sent.append(bytes(message))

    engine = SnmpEngine(snmpEngineID=rfc1902.OctetString(sender_id))
    engine.register_transport_dispatcher(_Capture())
    a, p = _pysnmp_protocols(u)
    pc.add_v3_user(
        engine,
        u.user,
        authProtocol=a,
        authKey=u.auth_key.reveal() if u.auth_protocol != "none" else None,
        privProtocol=p,
        privKey=u.priv_key.reveal() if u.priv_protocol != "none" else None,
    )
    level = {"noAuthNoPriv": 1, "authNoPriv": 2, "authPriv": 3}[u.level]
    pdu: Any = loadgen._v2c_pdu()
    for i in range(count):
        v2c.apiPDU.set_request_id(pdu, i + 1)
        engine.message_dispatcher.send_pdu(
            engine, udp.DOMAIN_NAME, ("127.0.0.1", 162), 3, 3, rfc1902.OctetString(u.user),
            level, sender_id, b"", 1, pdu, False,
        )  # fmt: skip
    return sent


def measure_matrix(count: int) -> list[tuple[str, str, float]]:
    """Fast-path µs per trap for other protocol pairs; messages built by pysnmp's engine."""
    from trapd.listener.v3.usm import UsmFastPath

    out = []
    pairs = [("MD5", "DES"), ("SHA", "AES-128"), ("SHA-256", "AES-128"), ("SHA-512", "AES-256")]
    for auth, priv in [*pairs, ("SHA", "none"), ("none", "none")]:
        u = trapd_user(auth, priv)
        sent = pysnmp_traps(u, count)
        fast = UsmFastPath((u,), TRAPD_ENGINE)
        us = cpu_us_per_item(fast_receive(fast), sent)
        assert fast.accepted == len(sent), fast.declined
        out.append((auth, priv, us))
    return out


# --- memory ---------------------------------------------------------------------------------


def serve(variant: str) -> int:
    from trapd.listener import Listener, ListenerConfig, run_on_best_loop
    from trapd.listener.config import ListenAddress

    config = ListenerConfig(
        listen=(ListenAddress("127.0.0.1", 0),),
        v3_users=(trapd_user(),),
        engine_id=TRAPD_ENGINE,
        rate_limit=NO_SLOW_BUDGET,
    )
    received = 0

    def on_notification(raw: object) -> None:
        nonlocal received
        received += 1

    async def main() -> None:
        listener = Listener(config, on_notification, logger=_Quiet())
        await listener.start()
        if variant == "pysnmp":
            listener._v3.fast = None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        loop.add_signal_handler(
            signal.SIGUSR1,
            lambda: print(
                json.dumps({"received": received, "dropped": dict(listener.stats.dropped)}), flush=True
            ),
        )
        print(json.dumps({"port": listener.bound[0].address.port}), flush=True)
        await stop.wait()
        await listener.close()

    run_on_best_loop(main())
    return 0


# --- main ---------------------------------------------------------------------------------


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{os.cpu_count()} x {cpu}, Python {platform.python_version()}, load average {os.getloadavg()[0]:.2f}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("mode", nargs="?", choices=("cost", "memory"), default="cost")
    p.add_argument("--serve", metavar="VARIANT", help=argparse.SUPPRESS)
    p.add_argument(
        "--count", type=int, default=None, help="traps (cost: per round, default 5000; memory: 50000)"
    )
    p.add_argument("--pysnmp-count", type=int, default=1000, help="cost: traps through pysnmp per round")
    p.add_argument("--rounds", type=int, default=3, help="cost: rounds, the median is reported (default 3)")
    p.add_argument("--matrix", action="store_true", help="cost: also other auth/priv pairs (fast path)")
    p.add_argument("--rate", type=float, default=2000.0, help="memory: traps per second (default 2000)")
    p.add_argument("--sample-every", type=int, default=5000, help="memory: RSS sample interval in traps")
    p.add_argument("--variants", default="fast", help="memory: fast, pysnmp or both (default fast)")
    p.add_argument("--max-seconds", type=float, default=300.0, help="memory: time bound per variant")
    args = p.parse_args()
    if args.serve:
        return serve(args.serve)

    print(f"machine: {machine()}\n")
    if args.mode == "cost":
        count = args.count or 5000
        r = measure_cost(count, min(args.pysnmp_count, count), args.rounds)
        slow = min(args.pysnmp_count, count)
        print("v3 authPriv SHA-256 (HMAC-192) + AES-128, 7-varbind linkDown, CPU µs per trap, "
              f"median of {args.rounds} rounds ({count} traps fast, {slow} pysnmp)\n")  # fmt: skip
        print("| path | µs / trap | traps/s per core |")
        print("|---|---:|---:|")
        for k in ("usm.receive", "listener fast", "listener pysnmp"):
            print(f"| {k} | {r[k]:.1f} | {1e6 / r[k]:,.0f} |")
        print(
            f"\nfast path speed-up over pysnmp (listener): {r['listener pysnmp'] / r['listener fast']:.1f}x"
        )
        print(f"rounds: {json.dumps({k: [round(x, 1) for x in v] for k, v in r['rounds'].items()})}")
        if args.matrix:
            print("\n| auth | priv | fast path µs / trap |")
            print("|---|---|---:|")
            for auth, priv, us in measure_matrix(min(count, 2000)):
                print(f"| {auth} | {priv} | {us:.1f} |")
        return 0

    count = args.count or 50000
    t = time.monotonic()
    messages = loadgen.build_messages(loadgen.LoadSpec(version="v3"), 1, count)
    print(f"built {len(messages)} v3 authPriv traps in {time.monotonic() - t:.1f} s", file=sys.stderr)
    results = {v: run_variant(v, messages, args.rate, args.sample_every, args.max_seconds, script=__file__)
               for v in args.variants.split(",")}  # fmt: skip
    print_rss_table(results, f"receiver RSS (MB) receiving distinct v3 authPriv traps at {args.rate:.0f}/s")
    return 0


if __name__ == "__main__":
    from benchproc import sigterm_unwinds  # stops what it started on SIGTERM too

    with sigterm_unwinds():
        sys.exit(main())
