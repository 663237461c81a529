"""Rule engine throughput (a realistic mix) and scale (1,000 to 100,000 rules).

    .venv/bin/python bench/bench_rules.py [--rules 1000] [--events 2000] [--runs 7]
    .venv/bin/python bench/bench_rules.py --scale [--sizes 1000,10000,100000] [--startup]

**Scale** (issue 13 target 4): for each size and each of two generated rule
sets, in a fresh process each (so RSS is that rule set's):

* ``per-port``: every rule on IF-MIB::linkDown, one per (switch, port):
  ``source: 10.a.b.1`` and ``varbinds: {ifIndex: N}``, 48 ports a switch,
  a templated log action (the shape sites generate);
* ``ifindex``: every rule on IF-MIB::linkDown differing only by
  ``varbinds: {ifIndex: N}`` (the per-port case of issue 13, no source);
* ``distinct``: every rule on its own vendor notification OID.

It reports the load time (``load_rules``: YAML, compile, index; CPU and wall;
the "can never match" check is left to ``trapd check`` since load_rules returns
no warnings, and in this process, where the collector is on, the time includes
its first pass over the new rules), ``trapd check FILE`` as a command (CPU and
wall, interpreter and MIB index included), the peak and final RSS of the
loading process, and µs
per event for an event matching one rule and one matching none on the same
notification, beside the **baseline of the same run**: the same events
through the same rule alone (a one-rule set), interleaved. ``--startup``
also times ``trapd run`` exec -> READY=1 with the rule set (bench_startup.py's
harness). The machine's load average is printed with the figures.

**Mix** (the default):

Builds a realistic rule mix (written to a temporary rules file and compiled
like the daemon does, with the shipped MIB index and the installed action
plugins):

* 60 %  one vendor notification each, a source /16 and varbind conditions
        (numeric range, enum, regex), a log or webhook action;
* 15 %  a whole vendor subtree (``under:``) with a regex on a varbind;
* 8 %   linkDown / linkUp per access-switch /24: regex on ifDescr with
        captures, delayed kea.lease-del by option-82 circuit-id, a cancel;
* 2 %   Cisco MAC notifications per /16: foreach removed item -> kea.lease-del;
* 15 %  rules with no notification condition (source + varbind tests), the
        ones every event must be checked against.

The event mix is ~10 % events that a rule matches (so they render templates
and validate parameters) and ~90 % that match nothing: traps from sources
no rule covers, and notifications no rule names. Prints medians (CPU time)
of events/s for the mix and µs per event for each kind. Bounded: fixed
counts, a few seconds.
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from trapd.event import Event

VENDOR = "1.3.6.1.4.1.64999"  # a private enterprise arc no real MIB uses


def build_rules(n: int) -> str:
    lines = [
        "sources:",
        "  access: [10.128.0.0/9]",
        "  core: [10.0.0.1, 10.0.0.2]",
        "defaults:",
        '  cap: {limit: 50, per: 1m, key: "{{ source }}"}',
        "rules:",
    ]
    n_vendor = int(n * 0.60)
    n_subtree = int(n * 0.15)
    n_port = int(n * 0.08) // 2
    n_mac = int(n * 0.02)
    n_generic = n - n_vendor - n_subtree - 2 * n_port - n_mac
    for i in range(n_vendor):
        lines += [
            f"  - name: vendor-{i}",
            "    match:",
            f"      notification: '{VENDOR}.1.{i}.0.{1 + i % 3}'",
            f"      source: 10.{i % 100}.0.0/16",
            "      varbinds:",
            f"        ifIndex: {{range: [1, {48 + i % 50}]}}",
            "        ifOperStatus: [down, lowerLayerDown]",
            "        ifDescr: {regex: '(Gi|Te)\\d+/\\d+/\\d+'}",
            "    actions:",
        ]
        if i % 2:
            lines += [
                "      - action: log",
                '        message: "{{ trap_name }} on {{ source }} port {{ ifDescr }}"',
            ]
        else:
            lines += [
                "      - action: webhook",
                "        url: https://alerts.example.net/hook",
                '        body: {switch: "{{ source }}", port: "{{ ifDescr }}", index: "{{ ifIndex }}"}',
            ]
    for i in range(n_subtree):
        lines += [
            f"  - name: subtree-{i}",
            "    match:",
            f"      notification: {{under: '{VENDOR}.2.{i}'}}",
            "      varbinds: {ifAlias: {regex: 'uplink-.*'}}",
            "    actions:",
            '      - {action: log, message: "{{ trap_oid }} from {{ source }}"}',
        ]
    for i in range(n_port):
        lines += [
            f"  - name: port-down-{i}",
            "    match:",
            "      notification: IF-MIB::linkDown",
            f"      source: 10.{128 + i}.0.0/24",
            "      varbinds:",
            "        ifOperStatus: down",
            "        ifDescr: {regex: 'Gi(?P<member>\\d+)/0/(?P<port>\\d+)'}",
            "    actions:",
            "      - action: kea.lease-del",
            '        circuit-id: "{{ ifDescr }}"',
            '        remote-id: "{{ source }}"',
            "        delay: 2m",
            '        cancel-key: "port:{{ source }}:{{ ifIndex }}"',
            f"  - name: port-up-{i}",
            f"    match: {{notification: IF-MIB::linkUp, source: 10.{128 + i}.0.0/24}}",
            '    cancel: "port:{{ source }}:{{ ifIndex }}"',
        ]
    for i in range(n_mac):
        lines += [
            f"  - name: mac-{i}",
            f"    match: {{notification: cmnMacChangedNotification, source: 10.{200 + i}.0.0/16}}",
            "    foreach: {items: mac_changes, where: {operation: removed}}",
            "    actions:",
            '      - {action: kea.lease-del, hw-address: "{{ item.mac }}", once-within: 5m}',
        ]
    for i in range(n_generic):
        lines += [
            f"  - name: generic-{i}",
            "    match:",
            f"      source: [172.{16 + i % 16}.{i}.0/24, '!172.{16 + i % 16}.{i}.1']",
            f"      varbinds: {{ifIndex: {{gt: {1000 + i}}}}}",
            "    actions:",
            '      - {action: log, message: "generic {{ source }}"}',
        ]
    return "\n".join(lines) + "\n"


def build_events(resolver: object, n: int, n_rules: int, rnd: random.Random) -> dict[str, list[Event]]:
    from trapd.rules.compact import parse_compact

    def ev(words: str) -> Event:
        return parse_compact(words.split(), resolver)  # type: ignore[arg-type]

    n_vendor = int(n_rules * 0.60)
    n_port = int(n_rules * 0.08) // 2
    matching: list[Event] = []
    for k in range(max(1, n // 10)):
        kind = k % 4
        if kind == 0:
            i = rnd.randrange(n_vendor)
            matching.append(
                ev(
                    f"{VENDOR}.1.{i}.0.{1 + i % 3} from 10.{i % 100}.3.4 ifIndex=17 ifOperStatus=down "
                    "ifDescr=Gi1/0/17"
                )
            )
        elif kind == 1:
            i = rnd.randrange(n_port)
            matching.append(
                ev(f"IF-MIB::linkDown from 10.{128 + i}.0.9 ifIndex=5 ifDescr=Gi1/0/5 ifOperStatus=down")
            )
        elif kind == 2:
            i = rnd.randrange(n_port)
            matching.append(
                ev(f"IF-MIB::linkUp from 10.{128 + i}.0.9 ifIndex=5 ifDescr=Gi1/0/5 ifOperStatus=up")
            )
        else:
            msg = "0x" + "02" + "0064" + "001122334455" + "0011" + "01" + "0064" + "0011223344ff" + "0012"
            matching.append(ev(f"cmnMacChangedNotification from 10.200.1.1 cmnHistMacChangedMsg.1={msg}"))
    non_matching: list[Event] = []
    for k in range(n - len(matching)):
        kind = k % 3
        if kind == 0:  # a notification many rules name, from a source none of them covers
            non_matching.append(
                ev("IF-MIB::linkDown from 192.0.2.7 ifIndex=5 ifDescr=Gi1/0/5 ifOperStatus=down")
            )
        elif kind == 1:  # a vendor notification whose rule wants another source
            i = rnd.randrange(n_vendor)
            non_matching.append(
                ev(
                    f"{VENDOR}.1.{i}.0.{1 + i % 3} from 192.0.2.8 "
                    "ifIndex=17 ifOperStatus=down ifDescr=Gi1/0/17"
                )
            )
        else:  # a notification nobody wrote a rule for
            non_matching.append(ev(f"1.3.6.1.4.1.9.9.{rnd.randrange(1000)}.0.1 from 10.1.2.3 ifIndex=3"))
    return {"matching": matching, "non-matching": non_matching}


def median_per_event_us(fn: Callable[[Event], object], events: Sequence[Event], runs: int) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.process_time()
        for e in events:
            fn(e)
        samples.append((time.process_time() - t0) / len(events) * 1e6)
    return statistics.median(samples)


def scale_rules(kind: str, n: int) -> str:
    """The generated rule sets of ``--scale`` (see the module docstring)."""
    lines = ["rules:"]
    for i in range(n):
        if kind == "ifindex":
            lines += [
                f"  - name: port-{i}",
                f"    match: {{notification: IF-MIB::linkDown, varbinds: {{ifIndex: {i + 1}}}}}",
                "    actions:",
                '      - {action: log, message: "port {{ ifIndex }} ({{ ifDescr }}) down"}',
            ]
        elif kind == "per-port":
            switch, port = divmod(i, PORTS)
            lines += [
                f"  - name: port-{i}",
                "    match:",
                "      notification: IF-MIB::linkDown",
                f"      source: {switch_address(switch)}",
                f"      varbinds: {{ifIndex: {port + 1}}}",
                "    actions:",
                '      - {action: log, message: "{{ source }} port {{ ifIndex }} ({{ ifDescr }}) down"}',
            ]
        else:
            lines += [
                f"  - name: vendor-{i}",
                f"    match: {{notification: '{VENDOR}.1.{i}.0.1'}}",
                "    actions:",
                '      - {action: log, message: "{{ trap_name }} from {{ source }}"}',
            ]
    return "\n".join(lines) + "\n"


PORTS = 48


def switch_address(switch: int) -> str:
    return f"10.{switch // 250}.{switch % 250}.1"


def scale_events(kind: str, n: int, resolver: object) -> tuple[Event, Event, str]:
    """(an event matching one rule, one matching none on the same notification, that rule's text)."""
    from trapd.rules.compact import parse_compact

    i = n // 2 + 7  # a rule in the middle of the file
    if kind == "ifindex":
        words = f"IF-MIB::linkDown from 10.1.2.3 ifIndex={i + 1} ifDescr=Gi1/0/1"
        miss = f"IF-MIB::linkDown from 10.1.2.3 ifIndex={n + 5} ifDescr=Gi1/0/1"
    elif kind == "per-port":
        switch, port = divmod(i, PORTS)
        words = f"IF-MIB::linkDown from {switch_address(switch)} ifIndex={port + 1} ifDescr=Gi1/0/{port + 1}"
        miss = f"IF-MIB::linkDown from {switch_address(switch)} ifIndex={PORTS + 5} ifDescr=Gi1/0/99"
    else:
        words = f"{VENDOR}.1.{i}.0.1 from 10.1.2.3"
        miss = f"{VENDOR}.1.{n + 5}.0.1 from 10.1.2.3"
    one = scale_rules(kind, n).split("\n  - ")[i + 1]
    hit, none = (parse_compact(w.split(), resolver) for w in (words, miss))  # type: ignore[arg-type]
    return hit, none, "rules:\n  - " + one.rstrip("\n") + "\n"


def _rss_mb() -> tuple[float, float]:
    """(VmRSS, VmHWM) of this process in MB."""
    got = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                got[key] = int(value.split()[0]) / 1024
    return got["VmRSS"], got["VmHWM"]


def scale_child(kind: str, n: int, path: Path, runs: int) -> dict[str, float]:
    """In a fresh process: load the rule set, then time events against the one-rule baseline."""
    import gc

    from trapd.mibs import MibConfig, MibResolver
    from trapd.plugin import load_actions
    from trapd.rules import globally_capped, load_rules

    resolver = MibResolver.load(MibConfig(dirs=()), state_dir=None)
    actions, _ = load_actions()
    capped = globally_capped((), actions)
    gc.collect()
    rss_before, _ = _rss_mb()
    t0, c0 = time.perf_counter(), time.process_time()
    rules = load_rules([path], resolver, actions, capped_actions=capped)
    load_wall, load_cpu = time.perf_counter() - t0, time.process_time() - c0
    gc.collect()
    rss, hwm = _rss_mb()
    hit, miss, one_text = scale_events(kind, n, resolver)
    one_path = path.with_name("one.yaml")
    one_path.write_text(one_text, encoding="utf-8")
    one = load_rules([one_path], resolver, actions, capped_actions=capped)
    assert rules.evaluate(hit).matched == one.evaluate(hit).matched != ()
    assert rules.evaluate(miss).matched == one.evaluate(miss).matched == ()
    loops = 2000
    samples: dict[str, list[float]] = {"hit": [], "hit_base": [], "miss": [], "miss_base": []}
    for _ in range(runs):  # interleaved: the big set and the baseline share the machine's moments
        for key, rs, ev in (
            ("hit", rules, hit),
            ("hit_base", one, hit),
            ("miss", rules, miss),
            ("miss_base", one, miss),
        ):
            c = time.process_time()
            for _ in range(loops):
                rs.evaluate(ev)
            samples[key].append((time.process_time() - c) / loops * 1e6)
    out = {k: statistics.median(v) for k, v in samples.items()}
    out.update(
        rules=len(rules),
        load_cpu=load_cpu,
        load_wall=load_wall,
        rss=rss,
        hwm=hwm,
        rss_rules=rss - rss_before,
    )
    return out


def run_scale(sizes: Sequence[int], kinds: Sequence[str], runs: int, startup: bool) -> None:
    import json
    import os
    import resource
    import subprocess
    import sys

    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}, {os.cpu_count()} cores")
    print(
        f"{'rule set':>18} | {'load s':>13} | {'check s':>13} | {'RSS MB':>13} | "
        f"{'µs/event hit':>18} | {'µs/event miss':>18}" + (f" | {'ready s':>13}" if startup else "")
    )
    print(
        f"{'':>18} | {'cpu / wall':>13} | {'cpu / wall':>13} | {'final / peak':>13} | "
        f"{'n rules / 1 rule':>18} | {'n rules / 1 rule':>18}" + (f" | {'cpu / wall':>13}" if startup else "")
    )
    for kind in kinds:
        for n in sizes:
            with tempfile.TemporaryDirectory(prefix="trapd-bench-rules-") as tmp:
                path = Path(tmp) / "rules.yaml"
                path.write_text(scale_rules(kind, n), encoding="utf-8")
                child = subprocess.run(
                    [sys.executable, __file__, "--scale-child", kind, str(n), str(path), str(runs)],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                r = json.loads(child.stdout.strip().splitlines()[-1])
                before = resource.getrusage(resource.RUSAGE_CHILDREN)
                t0 = time.perf_counter()
                subprocess.run(
                    [sys.executable, "-m", "trapd", "check", str(path)],
                    capture_output=True,
                    check=True,
                )
                check_wall = time.perf_counter() - t0
                after = resource.getrusage(resource.RUSAGE_CHILDREN)
                check_cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
                ready = ""
                if startup:
                    ready = " | " + _startup(path, Path(tmp))
            print(
                f"{kind + ' ' + format(n, ','):>18} | {r['load_cpu']:5.1f} / {r['load_wall']:5.1f} | "
                f"{check_cpu:5.1f} / {check_wall:5.1f} | {r['rss']:5.0f} / {r['hwm']:5.0f} | "
                f"{r['hit']:7.1f} / {r['hit_base']:7.1f} | {r['miss']:7.1f} / {r['miss_base']:7.1f}" + ready,
                flush=True,
            )
    print(f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def _startup(rules: Path, tmp: Path) -> str:
    import os
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench_startup import one_run

    root = tmp / "startup"
    root.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "LISTEN_FDS")}
    r = one_run(root, env, [], idle=1.0, rules=rules, ready_timeout=600)
    return f"{r['cpu_s']:5.1f} / {r['ready_s']:5.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rules", type=int, default=1000)
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=7)
    ap.add_argument("--scale", action="store_true", help="1k/10k/100k rules: load, check, RSS, µs/event")
    ap.add_argument("--sizes", default="1000,10000,100000")
    ap.add_argument("--kinds", default="per-port,ifindex,distinct")
    ap.add_argument("--startup", action="store_true", help="with --scale: trapd run exec -> READY=1")
    ap.add_argument("--scale-child", nargs=4, metavar=("KIND", "N", "FILE", "RUNS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.scale_child:
        import json

        kind, n, file, runs = args.scale_child
        print(json.dumps(scale_child(kind, int(n), Path(file), int(runs))))
        return
    if args.scale:
        sizes = [int(x) for x in args.sizes.split(",")]
        if not all(1 <= n <= 200_000 for n in sizes):
            ap.error("--sizes: 1 to 200,000 rules each")
        run_scale(sizes, args.kinds.split(","), args.runs, args.startup)
        return
    rnd = random.Random(1)

    from trapd.mibs import MibConfig, MibResolver
    from trapd.plugin import load_actions
    from trapd.rules import globally_capped, load_rules

    resolver = MibResolver.load(MibConfig(dirs=()), state_dir=None)
    actions, _ = load_actions()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "rules.yaml"
        path.write_text(build_rules(args.rules), encoding="utf-8")
        t0 = time.process_time()
        rules = load_rules([path], resolver, actions, capped_actions=globally_capped((), actions))
        compile_s = time.process_time() - t0
    sets = build_events(resolver, args.events, args.rules, rnd)
    mixed = sets["matching"] + sets["non-matching"]
    rnd.shuffle(mixed)
    matched = sum(1 for e in mixed if rules.evaluate(e).matched)
    print(f"rules: {len(rules)} compiled in {compile_s * 1000:.0f} ms (CPU)")
    print(f"events: {len(mixed)}, {matched / len(mixed):.0%} matching a rule")
    mixed_us = median_per_event_us(rules.evaluate, mixed, args.runs)
    print(
        f"mix:           {mixed_us:7.1f} µs/event  = {1e6 / mixed_us:9,.0f} events/s  (median of {args.runs})"
    )
    for name, events in sets.items():
        us = median_per_event_us(rules.evaluate, events, args.runs)
        print(f"{name + ':':14} {us:7.1f} µs/event  = {1e6 / us:9,.0f} events/s")
    linkdown = [e for e in sets["non-matching"] if e.trap_name == "IF-MIB::linkDown"]
    unknown = [e for e in sets["non-matching"] if e.trap_oid[:8] == (1, 3, 6, 1, 4, 1, 9, 9)]
    for name, events in (("  no rule names the OID", unknown), ("  linkDown, uncovered source", linkdown)):
        us = median_per_event_us(rules.evaluate, events, args.runs)
        print(f"{name}: {us:5.1f} µs/event")


if __name__ == "__main__":
    from benchproc import sigterm_unwinds  # stops what it started on SIGTERM too

    with sigterm_unwinds():
        main()
