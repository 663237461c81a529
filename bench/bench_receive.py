"""CPU per trap of the receive -> match path inside one process: no daemon, no HTTP, no journal.

    .venv/bin/python bench/bench_receive.py [--modes chain,socket] [--repeats 7] [--traps 4000]

Both modes run trapd's own objects, wired as ``Daemon._start`` wires them
(config from ``bench_storm.pipeline_config``, the 1,000 rules of
``bench_rules.build_rules`` plus ``bench-journal`` with ``--journaled 0`` by
default, the shipped MIBs, a ``SourceLimiter`` with the default
configuration, ``Daemon._on_notification`` as the callback), and
``loadgen``'s numbered v2c linkDown as the load:

- ``chain``: ``Listener.handle_datagram`` called in a loop for ``--traps``
  datagrams: decode, RawNotification, normalize, the daemon's counters,
  ``RuleSet.evaluate``. No socket, no event loop.
- ``socket``: the same behind a real UDP socket on loopback, on the loop
  ``trapd run`` uses (uvloop when installed). ``--traps`` datagrams are
  written into the socket while the loop is not reading (they wait in the
  receive buffer, like a storm's backlog), then the loop drains them; the CPU
  time of the drain is what is measured. This adds what the loop costs per
  datagram (the recvmsg, the callback) to ``chain``.

The figure is CPU time (``time.process_time``) per trap: the median of
``--repeats`` runs (and the minimum, the least disturbed). The garbage
collector runs as in the daemon: start-up objects frozen (``settle_memory``),
collection enabled. Every run checks that all traps were received and none
matched (with ``--journaled 0``), so a broken path cannot look fast.
``--json FILE`` keeps every run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_storm  # sibling scripts, not a package
import loadgen

SOURCE = ("127.0.0.1", 40000)


class Pipeline:
    """The daemon's receive path without the daemon's tasks: listener, normalizer, rules."""

    def __init__(self, workdir: Path, n_rules: int, journaled: int) -> None:
        from trapd.config import load_config
        from trapd.listener.limits import SourceLimiter
        from trapd.listener.udp import Listener
        from trapd.mibs import MibResolver
        from trapd.normalize import Normalizer
        from trapd.plugin import load_actions
        from trapd.service.daemon import Daemon
        from trapd.service.lifecycle import build_rules

        (workdir / "rules.yaml").write_text(bench_storm.rules_text(n_rules, journaled))
        path = bench_storm.pipeline_config(workdir, 0, 0, None)
        config = load_config(path)
        config.state_dir.mkdir(parents=True, exist_ok=True)
        daemon = Daemon(config)
        daemon.resolver = MibResolver.load(config.mibs, config.state_dir)
        daemon.normalizer = Normalizer(daemon.resolver)
        daemon.actions, _ = load_actions()
        daemon.rules = build_rules(config, daemon.resolver, daemon.actions, daemon.log)
        daemon.limiter = SourceLimiter(config.listener.rate_limit, daemon.rules.clearing_oids)
        self.daemon = daemon
        self.config = config
        self.listener = Listener(
            config.listener, daemon._on_notification, limiter=daemon.limiter, bind_config=False
        )

    def counts(self) -> tuple[int, int]:
        """(received by the listener, matched by any rule)."""
        return self.listener.stats.received_total, sum(self.daemon.stats.matched.values())


def chain_run(p: Pipeline, messages: Sequence[bytes]) -> float:
    handle = p.listener.handle_datagram

    def reply(data: bytes, addr: tuple[Any, ...]) -> None:
        raise AssertionError("no informs in this load")

    t0 = time.process_time()
    for m in messages:
        handle(m, SOURCE, reply)
    return time.process_time() - t0


async def _socket_listener(p: Pipeline) -> tuple[Any, socket.socket]:
    """A second Listener on a fresh loopback socket, feeding the pipeline's daemon and counters."""
    from trapd.listener.udp import open_udp_socket

    sock = open_udp_socket(_loopback_any_port(), 16 * 1024 * 1024)
    listener = type(p.listener)(
        p.config.listener,
        p.daemon._on_notification,
        sockets=[sock],
        bind_config=False,
        limiter=p.daemon.limiter,
        stats=p.listener.stats,
    )
    await listener.start()
    return listener, sock


async def _socket_run(p: Pipeline, messages: Sequence[bytes]) -> float:
    listener, sock = await _socket_listener(p)
    try:
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sender.connect(sock.getsockname())
        start = listener.stats.received_total
        for m in messages:  # the loop is not reading meanwhile: they queue in the socket
            sender.send(m)
        sender.close()
        want = start + len(messages)
        t0 = time.process_time()
        # Bounded: a datagram refused or dropped (a --traps the buffer cannot hold) never counts,
        # so the wait also ends when nothing was received for 5 s, or at a deadline far past
        # the ~40 µs a datagram costs; main() then fails the run with the count.
        deadline = time.monotonic() + 10.0 + len(messages) * 0.001
        last, still_since = listener.stats.received_total, time.monotonic()
        while listener.stats.received_total < want:
            await asyncio.sleep(0)
            now, got = time.monotonic(), listener.stats.received_total
            if got != last:
                last, still_since = got, now
            elif now - still_since > 5.0 or now > deadline:
                break
        return time.process_time() - t0
    finally:
        await listener.close()


async def _paced_run(p: Pipeline, count: int, rate: int, first_seq: int) -> float:
    listener, sock = await _socket_listener(p)
    try:
        port = sock.getsockname()[1]
        want = listener.stats.received_total + count
        argv = [sys.executable, str(Path(loadgen.__file__)), "--target", f"127.0.0.1:{port}"]
        argv += ["--rate", str(rate), "--count", str(count), "--first-seq", str(first_seq)]
        sender = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.DEVNULL)
        # Start the clock at the first datagram: the sender's start-up is not ours to measure.
        first_deadline = time.monotonic() + 30.0
        while listener.stats.received_total == want - count:
            if sender.returncode is not None or time.monotonic() > first_deadline:
                break  # nothing arrived: main() fails the run with the count
            await asyncio.sleep(0.0005)
        t0 = time.process_time()
        deadline = time.monotonic() + count / rate * 2 + 10
        while listener.stats.received_total < want and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        seconds = time.process_time() - t0
        await sender.wait()
        return seconds
    finally:
        await listener.close()


def _loopback_any_port() -> Any:
    from trapd.listener.config import ListenAddress

    return ListenAddress("127.0.0.1", 0)


def socket_run(p: Pipeline, messages: Sequence[bytes]) -> float:
    from trapd.listener.udp import run_on_best_loop

    return run_on_best_loop(_socket_run(p, messages))


def paced_runner(rate: int) -> Callable[[Pipeline, Sequence[bytes]], float]:
    """``paced``: a loadgen process sends at ``rate``/s; the datagrams arrive a few at a time, as in a run."""

    def run(p: Pipeline, messages: Sequence[bytes]) -> float:
        from trapd.listener.udp import run_on_best_loop

        first_seq = int(messages[0][-loadgen.SEQ_WIDTH :])
        return run_on_best_loop(_paced_run(p, len(messages), rate, first_seq))

    return run


MODES: dict[str, Callable[[Pipeline, Sequence[bytes]], float]] = {"chain": chain_run, "socket": socket_run}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--modes", default="chain,socket,paced")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--traps", type=int, default=4000, help="per run (socket mode: must fit the buffer)")
    ap.add_argument("--rules", type=int, default=1000)
    ap.add_argument("--journaled", type=int, choices=(0, 10, 100), default=0)
    ap.add_argument("--rate", type=int, default=3000, help="paced mode: traps/s from loadgen")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)

    from trapd.service.daemon import settle_memory

    modes = [m for m in args.modes.split(",") if m]
    MODES["paced"] = paced_runner(args.rate)
    with tempfile.TemporaryDirectory(prefix="bench-receive-") as tmp:
        p = Pipeline(Path(tmp), args.rules, args.journaled)
        total = args.traps * (args.repeats + 1) * len(modes)
        messages = loadgen.build_messages(loadgen.LoadSpec(version="v2c"), 1, total)
        # Warm-up: lazy imports, the per-OID caches, the first match's templates.
        chain_run(p, messages[: args.traps])
        settle_memory()
        used = args.traps
        runs: dict[str, list[float]] = {m: [] for m in modes}
        for _ in range(args.repeats):
            for mode in modes:  # interleaved, so drift on a shared machine hits every mode alike
                batch = messages[used : used + args.traps]
                used += args.traps
                received0, matched0 = p.counts()
                seconds = MODES[mode](p, batch)
                received, matched = p.counts()
                if received - received0 != len(batch):
                    raise SystemExit(f"{mode}: received {received - received0} of {len(batch)}")
                if args.journaled == 0 and matched != matched0:
                    raise SystemExit(f"{mode}: {matched - matched0} matches, expected none")
                runs[mode].append(seconds / len(batch) * 1e6)
    for mode in modes:
        us = runs[mode]
        print(
            f"{mode:7} {statistics.median(us):6.1f} µs/trap median, {min(us):6.1f} min "
            f"({args.repeats} runs of {args.traps}, {args.rules} rules)"
        )
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "args": {k: str(v) for k, v in vars(args).items()}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
