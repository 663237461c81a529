"""Rule engine throughput: 1,000 rules, events through match + render + validate.

    .venv/bin/python bench/bench_rules.py [--rules 1000] [--events 2000] [--runs 7]

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ap.add_argument("--rules", type=int, default=1000)
    ap.add_argument("--events", type=int, default=2000)
    ap.add_argument("--runs", type=int, default=7)
    args = ap.parse_args()
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
    main()
