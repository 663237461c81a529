"""Offline micro-benchmark: µs per decode, fast path against pysnmp, same bytes, same run.

No sockets: this isolates the decoder, the part of the receive path the
fast path replaces. Messages are encoded once by pysnmp's own encoder and
decoded repeatedly by

- ``fast``: ``trapd.listener.fastpath.decode`` (the full FastMessage, Python
  values and all);
- ``pysnmp``: pyasn1's BER decoder with the protocol module's Message spec,
  which is what pysnmp's engine runs per message (receiver-facts.md measured
  ~875 µs for a v2c trap this way). It stops at pyasn1 objects, so it does
  less work than ``fast`` does.

Shapes: v1 Trap-PDU, v2c SNMPv2-Trap-PDU and v2c InformRequest with 5 and 20
varbinds, shaped like real linkDown traps (sysUpTime, snmpTrapOID, ifIndex,
ifAdminStatus, ifOperStatus, then ifDescr/ifAlias strings, counters, an
IpAddress, a MAC-indexed OID...). Also the inform acknowledgement encoder.

Each figure is the median over ``--repeats`` timing runs of the mean time per
call within a run (each run sized to take about ``--run-seconds``), in CPU
time of this process (``time.process_time``): on a shared machine, time spent
waiting for a core is not the decoder's. The minimum is printed too: it is
the least disturbed figure. Both decoders are timed alternately in the same
run, so the speed-up column holds even when absolute figures drift.

The fast path remembers decoded OIDs that have a sub-identifier above 127
(``ber._LONG_OID_CACHE``); repeating the same message keeps that cache warm,
as a storm of similar traps does. ``--cold`` clears it before every call.

    .venv/bin/python bench/bench_decode.py [--repeats 7] [--run-seconds 0.2] [--json FILE]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pyasn1.codec.ber import decoder, encoder
from pysnmp.proto import api

from trapd.listener.ber import _LONG_OID_CACHE
from trapd.listener.fastpath import decode, encode_inform_response

V1: Any = api.PROTOCOL_MODULES[api.SNMP_VERSION_1]
V2: Any = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]

IF_ENTRY = (1, 3, 6, 1, 2, 1, 2, 2, 1)
IF_X_ENTRY = (1, 3, 6, 1, 2, 1, 31, 1, 1, 1)


def varbinds(module: Any, count: int, v1: bool) -> list[tuple[tuple[int, ...], Any]]:
    """A linkDown-like varbind list of ``count`` entries for ``module``'s types."""
    integer = module.Integer if v1 else module.Integer32
    counter = module.Counter if v1 else module.Counter32
    gauge = module.Gauge if v1 else module.Gauge32
    port = 10117
    pool: list[tuple[tuple[int, ...], Any]] = []
    if not v1:
        pool += [
            ((1, 3, 6, 1, 2, 1, 1, 3, 0), module.TimeTicks(123456789)),
            ((1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0), module.ObjectIdentifier((1, 3, 6, 1, 6, 3, 1, 1, 5, 3))),
        ]
    pool += [
        ((*IF_ENTRY, 1, port), integer(port)),
        ((*IF_ENTRY, 7, port), integer(1)),
        ((*IF_ENTRY, 8, port), integer(2)),
        ((*IF_ENTRY, 2, port), module.OctetString(b"GigabitEthernet1/0/17")),
        ((*IF_X_ENTRY, 18, port), module.OctetString(b"uplink to rack 12, patch panel B-17")),
        ((*IF_ENTRY, 3, port), integer(6)),
        ((*IF_ENTRY, 5, port), gauge(1000000000)),
        ((*IF_ENTRY, 10, port), counter(3123456789)),
        ((*IF_ENTRY, 16, port), counter(2123456789)),
        ((*IF_ENTRY, 14, port), counter(17)),
        ((1, 3, 6, 1, 4, 1, 9, 2, 2, 1, 1, 20, port), module.OctetString(b"down")),
        ((1, 3, 6, 1, 2, 1, 4, 20, 1, 1, 10, 0, 0, 1), module.IpAddress("10.0.0.1")),
        # A MAC address in the index: sub-identifiers above 127 take the long OID path.
        ((1, 3, 6, 1, 2, 1, 17, 7, 1, 2, 2, 1, 2, 42, 0, 27, 33, 171, 205, 239), integer(port)),
        ((*IF_X_ENTRY, 1, port), module.OctetString(b"Gi1/0/17")),
        ((*IF_ENTRY, 4, port), integer(1500)),
        ((*IF_ENTRY, 6, port), module.OctetString(b"\x00\x1b\x21\xab\xcd\xef")),
        ((*IF_ENTRY, 9, port), module.TimeTicks(4294967)),
        ((*IF_ENTRY, 13, port), counter(0)),
        ((*IF_ENTRY, 19, port), counter(5)),
        ((*IF_ENTRY, 20, port), counter(1)),
        ((*IF_ENTRY, 21, port), gauge(0)),
    ]
    return pool[:count]


def v1_trap(count: int) -> bytes:
    message = V1.Message()
    V1.apiMessage.set_defaults(message)
    V1.apiMessage.set_community(message, b"public")
    pdu = V1.TrapPDU()
    V1.apiTrapPDU.set_defaults(pdu)
    V1.apiTrapPDU.set_enterprise(pdu, (1, 3, 6, 1, 4, 1, 9, 1, 1208))
    V1.apiTrapPDU.set_agent_address(pdu, V1.IpAddress("192.0.2.17"))
    V1.apiTrapPDU.set_generic_trap(pdu, 2)
    V1.apiTrapPDU.set_specific_trap(pdu, 0)
    V1.apiTrapPDU.set_timestamp(pdu, 123456789)
    V1.apiTrapPDU.set_varbinds(pdu, varbinds(V1, count, v1=True))
    V1.apiMessage.set_pdu(message, pdu)
    return bytes(encoder.encode(message))


def v2c_message(count: int, inform: bool) -> bytes:
    message = V2.Message()
    V2.apiMessage.set_defaults(message)
    V2.apiMessage.set_community(message, b"public")
    pdu = V2.InformRequestPDU() if inform else V2.SNMPv2TrapPDU()
    V2.apiPDU.set_defaults(pdu)
    V2.apiPDU.set_request_id(pdu, 1215247513)
    V2.apiPDU.set_varbinds(pdu, varbinds(V2, count, v1=False))
    V2.apiMessage.set_pdu(message, pdu)
    return bytes(encoder.encode(message))


def cold_decode(data: bytes) -> object:
    _LONG_OID_CACHE.clear()
    return decode(data)


def pysnmp_decoder(data: bytes) -> Callable[[], object]:
    module = api.PROTOCOL_MODULES[api.decodeMessageVersion(data)]
    spec = module.Message()
    return lambda: decoder.decode(data, asn1Spec=spec)


def calibrate(call: Callable[[], object], run_seconds: float) -> int:
    """How many calls take about ``run_seconds`` of CPU."""
    call()  # warm caches and lazily built tables
    calls = 0
    started = time.process_time()
    while (elapsed := time.process_time() - started) < run_seconds / 4:
        call()
        calls += 1
    return max(1, int(run_seconds * calls / elapsed))


def time_calls(
    calls: dict[str, Callable[[], object]], repeats: int, run_seconds: float
) -> dict[str, tuple[float, float]]:
    """(median, minimum) µs per call for each entry, the entries timed in alternation."""
    numbers = {name: calibrate(call, run_seconds) for name, call in calls.items()}
    samples: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            number = numbers[name]
            gc.collect()
            begin = time.process_time()
            for _ in range(number):
                call()
            samples[name].append((time.process_time() - begin) / number * 1e6)
    return {name: (statistics.median(values), min(values)) for name, values in samples.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--run-seconds", type=float, default=0.2)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--cold", action="store_true", help="clear the long-OID cache before every decode")
    args = parser.parse_args()

    cases = []
    for count in (5, 20):
        cases += [
            (f"v1 trap, {count} varbinds", v1_trap(count)),
            (f"v2c trap, {count} varbinds", v2c_message(count, inform=False)),
            (f"v2c inform, {count} varbinds", v2c_message(count, inform=True)),
        ]
    rows: list[dict[str, Any]] = []
    for name, data in cases:
        assert len(decode(data).varbinds) == int(name.split(", ")[1].split()[0])
        fast = partial(cold_decode if args.cold else decode, data)
        timings = time_calls({"fast": fast, "pysnmp": pysnmp_decoder(data)}, args.repeats, args.run_seconds)
        (fast_median, fast_min), (ref_median, ref_min) = timings["fast"], timings["pysnmp"]
        rows.append(
            {
                "message": name,
                "octets": len(data),
                "fast_us": round(fast_median, 1),
                "fast_min_us": round(fast_min, 1),
                "pysnmp_us": round(ref_median, 1),
                "pysnmp_min_us": round(ref_min, 1),
                "speedup": round(ref_median / fast_median, 1),
            }
        )
    encode_rows = []
    for name, data in cases:
        if "inform" in name:
            msg = decode(data)
            encoder_call: dict[str, Callable[[], object]] = {"encode": partial(encode_inform_response, msg)}
            median, minimum = time_calls(encoder_call, args.repeats, args.run_seconds)["encode"]
            encode_rows.append(
                {"message": name, "encode_us": round(median, 1), "encode_min_us": round(minimum, 1)}
            )

    python = f"{platform.python_implementation()} {platform.python_version()}"
    cache = "cold (cleared before each decode)" if args.cold else "warm"
    print(f"# fast-path decode vs pysnmp/pyasn1, {python}, {platform.machine()}, {os.cpu_count()} CPUs,")
    print(f"# CPU µs per call, medians of {args.repeats} runs (min in brackets), long-OID cache {cache}\n")
    print("| message | octets | fast path µs | pysnmp µs | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['message']} | {row['octets']} | {row['fast_us']} ({row['fast_min_us']}) "
            f"| {row['pysnmp_us']} ({row['pysnmp_min_us']}) | {row['speedup']}x |"
        )
    print("\n| inform acknowledgement | encode µs |")
    print("|---|---:|")
    for row in encode_rows:
        print(f"| {row['message']} | {row['encode_us']} ({row['encode_min_us']}) |")
    if args.json:
        args.json.write_text(
            json.dumps({"decode": rows, "encode_inform_response": encode_rows}, indent=2) + "\n"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
