"""Smoke test for bench/bench_soak.py: its messages are what it says, and the command runs.

Never speed nor memory figures (the benchmark measures those): the mix's messages
decode, their varying parts vary, and a short run with every kind of traffic,
a reload and the drain reports its table with nothing left waiting.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _bench_soak() -> Any:
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("bench_soak")


def _decode(data: bytes) -> tuple[bytes, Any, list[tuple[tuple[int, ...], str]]]:
    """(community, PDU, varbinds as (OID, value text)) of a v1 / v2c message, by pysnmp."""
    from pyasn1.codec.ber import decoder
    from pysnmp.proto import api

    version = int(api.decodeMessageVersion(data))
    p = api.PROTOCOL_MODULES[version]
    msg, rest = decoder.decode(data, asn1Spec=p.Message())
    assert rest == b""
    pdu = p.apiMessage.get_pdu(msg)
    api_pdu = p.apiTrapPDU if version == api.SNMP_VERSION_1 else p.apiPDU
    varbinds = [(tuple(o), v.prettyPrint()) for o, v in api_pdu.get_varbinds(pdu)]
    return bytes(p.apiMessage.get_community(msg)), pdu, varbinds


def test_every_varying_part_is_new_in_each_message() -> None:
    bs = _bench_soak()
    mix = bs.Mix(v3_engines=2, seed=1)
    one, two = (
        mix.vendor.render(bs._digits(1), bs._digits(1)),
        mix.vendor.render(bs._digits(2), bs._digits(2)),
    )
    (_, _, vbs1), (_, _, vbs2) = _decode(one), _decode(two)
    assert vbs1[1][1] != vbs2[1][1]  # snmpTrapOID: a new notification
    assert vbs1[1][1].endswith(".48.48.48.48.48.48.48.48.48.49"), vbs1[1]
    assert vbs1[2][0] != vbs2[2][0] and vbs1[2][1] != vbs2[2][1]  # a new varbind OID and value
    community, _, _ = _decode(mix.bad_community.render(bs._digits(7), bs._digits(7)))
    assert community == b"0000000007"
    # An inform's request-id is its own; the linkDown's sequence digits stand in SEQ_OID's value.
    inform = mix.inform[0]
    _, a, _ = _decode(inform.render(bs._reqid(5), bs._digits(5)))
    _, b, _ = _decode(inform.render(bs._reqid(6), bs._digits(6)))
    assert int(a["request-id"]) != int(b["request-id"])
    _, v1, _ = _decode(mix.v1.render(bs._digits(3)))
    assert tuple(v1["enterprise"])[-10:] == tuple(b"0000000003")


@pytest.mark.integration
def test_a_short_soak_runs_and_drains() -> None:
    args = ["--minutes", "0.25", "--rate", "100", "--sources", "50", "--v3-engines", "4",
            "--reload-every", "6", "--sample", "1", "--scrape", "3", "--drain-timeout", "60"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, str(BENCH / "bench_soak.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "| PSS, whole tree, KiB |" in out and "STILL WAITING" not in out, out
    assert "reloads 2" in out and "'done:kea.lease-del'" in out, out
    results = json.loads(Path(out.rsplit("results: ", 1)[1].strip()).read_text())
    assert results["counters"]["informs_resent"] > 0, results["counters"]  # resends seen as such
