"""Smoke tests for the listener benchmark (bench/): counts and formats, never speed.

The generator must pace (not burst), stop at its count and its time limit, and
number every message; v3 messages must be acceptable to pysnmp (and, in the
integration test, to net-snmp's snmptrapd); the runner must read sequence
numbers out of snmptrapd's log and trapd's JSON lines.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import shutil
import socket
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


def _bench_module(name: str) -> ModuleType:
    # bench/ holds scripts, not a package; the runner imports loadgen the same way.
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module(name)


loadgen = _bench_module("loadgen")
bench_listener = _bench_module("bench_listener")


def _sink() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    s.bind(("127.0.0.1", 0))
    return s


def _drain(sink: socket.socket, limit: int) -> list[bytes]:
    sink.settimeout(0.5)
    got: list[bytes] = []
    while len(got) < limit:
        try:
            got.append(sink.recv(65535))
        except TimeoutError:
            break
    return got


def _seq_of(message: bytes, version: str) -> int:
    from pyasn1.codec.ber import decoder
    from pysnmp.proto import api

    p = api.PROTOCOL_MODULES[api.SNMP_VERSION_1 if version == "v1" else api.SNMP_VERSION_2C]
    msg, rest = decoder.decode(message, asn1Spec=p.Message())
    assert rest == b""
    assert str(p.apiMessage.get_community(msg)) == "public"
    varbinds = p.apiTrapPDU.get_varbinds(p.apiMessage.get_pdu(msg))
    oid, value = varbinds[-1]
    assert tuple(oid) == loadgen.SEQ_OID
    seq = loadgen.parse_seq_field(bytes(value))
    assert seq is not None
    return int(seq)


@pytest.mark.parametrize("version", ["v2c", "v1"])
def test_templates_patch_only_the_sequence_number(version: str) -> None:
    msgs = loadgen.build_messages(loadgen.LoadSpec(version=version), 7, 3)
    assert {len(m) for m in msgs} == {len(msgs[0])}
    assert [_seq_of(m, version) for m in msgs] == [7, 8, 9]


def test_pace_sends_every_message_once_at_the_asked_rate() -> None:
    with _sink() as sink:
        host, port = sink.getsockname()
        msgs = loadgen.build_messages(loadgen.LoadSpec(version="v2c"), 1, 200)
        with loadgen.open_sender(host, port) as sock:
            report = loadgen.pace(sock, msgs, rate=1000, max_seconds=5.0)
        got = _drain(sink, 250)
    assert report.sent == 200 and report.errors == 0 and not report.stopped_by_time
    # Paced, not a burst: 200 messages at 1,000/s cannot all leave in under ~0.2 s.
    assert report.seconds >= 0.18
    assert sorted(_seq_of(m, "v2c") for m in got) == list(range(1, 201))


def test_pace_stops_at_its_time_limit() -> None:
    with _sink() as sink:
        host, port = sink.getsockname()
        msgs = loadgen.build_messages(loadgen.LoadSpec(version="v2c"), 1, 1000)
        with loadgen.open_sender(host, port) as sock:
            report = loadgen.pace(sock, msgs, rate=1000, max_seconds=0.1)
        got = _drain(sink, 1000)
    assert report.stopped_by_time
    assert 0 < report.sent < 1000
    assert len(got) == report.sent


def test_load_is_refused_off_loopback() -> None:
    assert loadgen.loopback_address("[::1]:162") == ("::1", 162)
    with pytest.raises(ValueError, match="loopback only"):
        loadgen.loopback_address("192.0.2.1:162")


@pytest.mark.parametrize("host", ["192.0.2.1", "2001:db8::1", "0.0.0.0"])
def test_senders_are_refused_off_loopback(host: str) -> None:
    """The benchmarks open their senders directly (bench_storm, bench_latency, bench_listener):
    the loopback check must be in open_sender, not only in loadgen's --target."""
    with pytest.raises(ValueError, match="loopback only"):
        loadgen.open_sender(host, 162)


def test_v3_messages_differ_per_message_and_keep_their_length() -> None:
    msgs = loadgen.build_messages(loadgen.LoadSpec(version="v3"), 1, 50)
    assert len(set(msgs)) == 50
    assert {len(m) for m in msgs} == {len(msgs[0])}


async def test_pysnmp_accepts_v3_authpriv_and_v1_v2c() -> None:
    """pysnmp's own engine, as a trap receiver, authenticates and decrypts our messages."""
    from pyasn1.type.univ import OctetString
    from pysnmp.carrier.asyncio.dgram import udp
    from pysnmp.entity import config, engine
    from pysnmp.entity.rfc3413 import ntfrcv

    port = bench_listener.free_udp_port()
    eng = engine.SnmpEngine()
    config.add_transport(eng, udp.DOMAIN_NAME, udp.UdpTransport().open_server_mode(("127.0.0.1", port)))
    eid = OctetString(loadgen.DEFAULT_ENGINE_ID)
    auth, priv = loadgen.DEFAULT_V3_AUTH_KEY, loadgen.DEFAULT_V3_PRIV_KEY
    aes = config.USM_PRIV_CFB128_AES
    config.add_v3_user(eng, "u256", config.USM_AUTH_HMAC192_SHA256, auth, aes, priv, securityEngineId=eid)
    config.add_v3_user(eng, "u1", config.USM_AUTH_HMAC96_SHA, auth, aes, priv, securityEngineId=eid)
    config.add_v1_system(eng, "bench-area", "public")
    got: list[tuple[str, int]] = []

    def on_trap(_e: Any, ref: Any, _ceid: Any, _cname: Any, varbinds: Any, _ctx: Any) -> None:
        oid, value = varbinds[-1]
        got.append((str(oid), int(loadgen.parse_seq_field(bytes(value)))))

    ntfrcv.NotificationReceiver(eng, on_trap)
    specs = [
        loadgen.LoadSpec(version="v3", v3=loadgen.V3User(user="u256", auth_protocol="SHA-256")),
        loadgen.LoadSpec(version="v3", v3=loadgen.V3User(user="u1", auth_protocol="SHA")),
        loadgen.LoadSpec(version="v2c"),
        loadgen.LoadSpec(version="v1"),
    ]
    try:
        await asyncio.sleep(0.2)  # the transport binds inside the loop
        with loadgen.open_sender("127.0.0.1", port) as sock:
            for i, spec in enumerate(specs):
                for m in loadgen.build_messages(spec, 10 * i + 1, 3):
                    sock.send(m)
        deadline = time.monotonic() + 30  # bounded, and generous: the machine may be loaded
        while len(got) < 12 and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
    finally:
        eng.close_dispatcher()
    assert sorted(s for _, s in got) == [1, 2, 3, 11, 12, 13, 21, 22, 23, 31, 32, 33]
    assert {o for o, _ in got} == {loadgen.SEQ_OID_STR}


# What snmptrapd 5.9.3 -On wrote for one v2c and one v1 trap from loadgen.
SNMPTRAPD_LOG = b"""NET-SNMP version 5.9.3
2026-11-28 05:21:30 localhost [UDP: [127.0.0.1]:60069->[127.0.0.1]:16299]:
.1.3.6.1.2.1.1.3.0 = Timeticks: (123456) 0:20:34.56\t.1.3.6.1.6.3.1.1.4.1.0 = OID: .1.3.6.1.6.3.1.1.5.3\t\
.1.3.6.1.2.1.2.2.1.1.17 = INTEGER: 17\t.1.3.6.1.2.1.2.2.1.2.17 = STRING: "GigabitEthernet1/0/17"\t\
.1.3.6.1.4.1.99999.1.1 = STRING: "0000000001"
2026-11-28 05:21:30 127.0.0.1 [127.0.0.1] (via UDP: [127.0.0.1]:60180->[127.0.0.1]:16299) TRAP, SNMP v1, \
community public
\t.1.3.6.1.6.3.1.1.5 Link Down Trap (0) Uptime: 0:20:34.56
\t.1.3.6.1.2.1.2.2.1.1.17 = INTEGER: 17\t.1.3.6.1.4.1.99999.1.1 = STRING: "0000000002"
2026-11-28 05:21:31 localhost [UDP: [127.0.0.1]:40363->[127.0.0.1]:16299]:
.1.3.6.1.4.1.99999.1.1 = STRING: "0000000002"
2026-11-28 05:21:32 NET-SNMP version 5.9.3 Stopped.
"""


def test_runner_reads_snmptrapd_log() -> None:
    assert bench_listener.seqs_from_snmptrapd_log(SNMPTRAPD_LOG) == {1: 1, 2: 2}


def test_runner_reads_trapd_json_lines() -> None:
    from trapd.event import Event, VarBind
    from trapd.listener.raw import Security

    def event(seq: int) -> str:
        vb = VarBind(
            loadgen.SEQ_OID, "1.3.6.1.4.1.99999.1.1", (), "OctetString", f"{seq:010d}".encode(), f"{seq:010d}"
        )
        e = Event(
            id="x",
            received_at=0.0,
            source="127.0.0.1",
            source_port=1,
            version="v2c",
            kind="trap",
            security=Security(community="public"),
            uptime=1,
            trap_oid=loadgen.LINK_DOWN,
            trap_name="IF-MIB::linkDown",
            varbinds=(vb,),
        )
        return json.dumps(e.to_dict())

    # Without "display" the hex value still counts; log lines and junk do not.
    bare = {
        "varbinds": [{"oid": "1.3.6.1.4.1.99999.1.1", "type": "OctetString", "value": b"0000000009".hex()}]
    }
    text = "\n".join(
        [
            event(3),
            "listening on 127.0.0.1:162",
            event(4),
            event(3),
            json.dumps(bare),
            "{broken",
            json.dumps({"a": 1}),
        ]
    )
    assert bench_listener.seqs_from_json_lines(text.encode()) == {3: 2, 4: 1, 9: 1}


@pytest.mark.integration
@pytest.mark.skipif(shutil.which("snmptrapd") is None, reason="needs net-snmp's snmptrapd")
def test_runner_measures_snmptrapd_end_to_end(tmp_path: Path) -> None:
    """One tiny run per version: snmptrapd accepts v2c and v3 authPriv, the runner counts all."""
    rc = bench_listener.main(
        [
            "--receivers=snmptrapd",
            "--v2c-rates=300",
            "--v3-rates=300",
            "--runs=1",
            "--seconds=0.5",
            f"--out={tmp_path}",
        ]
    )
    assert rc == 0
    (result,) = tmp_path.glob("listener-*.json")
    data = json.loads(result.read_text())
    runs = data["runs"]
    assert [(r["version"], r["sent"], r["error"]) for r in runs] == [("v2c", 150, None), ("v3", 150, None)]
    assert all(r["received"] == 150 and r["duplicates"] == 0 for r in runs)
    assert "| snmptrapd | v3 | 300 |" in data["markdown"]


def test_runner_reads_any_text_by_regex() -> None:
    parse = bench_listener.seqs_by_regex(r"bench-seq=(\d+)")
    text = b'{"event": "bench-seq=0000000005"}\nbench-seq=0000000005\nbench-seq=12\nbench-seq=0000000006\n'
    assert parse(text) == {5: 2, 6: 1}
