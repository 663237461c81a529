"""The listener end to end: net-snmp's snmptrap/snmpinform -> `trapd listen` -> JSON lines.

One trapd listens on 127.0.0.1 and ::1 for the whole module. Each test tags
its trap with a marker varbind (MARK_OID = a unique string) and waits for the
event carrying it, so tests stay independent although they share the process.
Counters are read with SIGUSR1 (``TrapdListen.stats``) and compared before /
after, since earlier tests also drop things.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from listen_harness import TrapdListen, capture_datagram, needs_netsnmp, send_udp, snmp_send

from trapd.commands.test import read_event_file

pytestmark = [pytest.mark.integration, needs_netsnmp]

LINK_DOWN = "1.3.6.1.6.3.1.1.5.3"
IF_INDEX_17 = "1.3.6.1.2.1.2.2.1.1.17"
MARK_OID = "1.3.6.1.4.1.99999.1"
SENDER_ENGINE = "8000000001020304"  # the switch's engine ID (bound to the v3 trap users)
OTHER_ENGINE = "80000000010a0b0c"  # an engine no user is bound to
TRAPD_ENGINE = "80004fb805aabbccddeeff0011"  # trapd's own (informs are sent to it)

USERS: list[dict[str, Any]] = [
    {
        "user": "privuser",
        "auth_protocol": "SHA-256",
        "auth_key": "authpass-256",
        "priv_protocol": "AES-128",
        "priv_key": "privpass-128",
        "engine_ids": [SENDER_ENGINE],
    },
    {"user": "authuser", "auth_protocol": "MD5", "auth_key": "authpass-md5", "engine_ids": [SENDER_ENGINE]},
    {"user": "plainuser", "engine_ids": [SENDER_ENGINE]},
    {
        "user": "anyengine",
        "auth_protocol": "SHA",
        "auth_key": "authpass-any",
        "priv_protocol": "AES-128",
        "priv_key": "privpass-any",
    },
]
# (user, auth protocol, auth key, priv protocol, priv key) for the protocol matrix; net-snmp spelling.
MATRIX = [
    ("sha1des", "SHA", "authpass-sha1", "DES", "privpass-des"),
    ("sha224aes192", "SHA-224", "authpass-224", "AES-192", "privpass-192"),
    ("sha384aes256", "SHA-384", "authpass-384", "AES-256", "privpass-256"),
    ("sha512aes128", "SHA-512", "authpass-512", "AES-128", "privpass-aes"),
    ("md5des", "MD5", "authpass-md5x", "DES", "privpass-desx"),
]
for name, a, ak, p, pk in MATRIX:
    USERS.append(
        {
            "user": name,
            "auth_protocol": a,
            "auth_key": ak,
            "priv_protocol": p,
            "priv_key": pk,
            "engine_ids": [SENDER_ENGINE],
        }
    )

_marks = itertools.count()


@pytest.fixture(scope="module")
def trapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrapdListen]:
    config = {
        "listener": {
            "communities": ["public", "second-community"],
            "v3_users": USERS,
            "engine_id": TRAPD_ENGINE,
        }
    }
    t = TrapdListen.start(tmp_path_factory.mktemp("listen"), config, listen=("127.0.0.1:0", "[::1]:0"))
    yield t
    assert t.stop() == 0, t.log[-5:]


def mark() -> str:
    return f"mark-{next(_marks)}"


def marked(m: str) -> Any:
    want = m.encode().hex()
    return lambda e: any(vb["oid"] == MARK_OID and vb["value"] == want for vb in e.get("varbinds", ()))


def vb(event: dict[str, Any], oid: str) -> dict[str, Any]:
    for v in event["varbinds"]:
        if v["oid"] == oid:
            return v
    raise AssertionError(f"no varbind {oid} in {event['varbinds']}")


def v3_args(user: str, level: str, auth: str | None = None, ak: str | None = None, priv: str | None = None,
            pk: str | None = None, engine: str | None = SENDER_ENGINE) -> list[str]:  # fmt: skip
    a = ["-v", "3", "-u", user, "-l", level]
    if engine:
        a += ["-e", "0x" + engine]
    if auth:
        a += ["-a", auth, "-A", ak or ""]
    if priv:
        a += ["-x", priv, "-X", pk or ""]
    return a


def trap_args(m: str, *extra: str) -> list[str]:
    return ["", LINK_DOWN, IF_INDEX_17, "i", "17", MARK_OID, "s", m, *extra]


# -- v1 ------------------------------------------------------------------------


def test_v1_trap_with_a_counter64_is_kept(trapd: TrapdListen) -> None:
    """snmptrap -v 1 sends a Counter64 varbind as given, and net-snmp's snmptrapd takes the trap."""
    m = mark()
    r = snmp_send(
        "snmptrap", "-v", "1", "-c", "public", trapd.target(), "1.3.6.1.4.1.9", "10.0.0.1", "6", "1", "100",
        "1.3.6.1.2.1.31.1.1.1.6.1", "C", "18446744073709551615", MARK_OID, "s", m,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    e = trapd.wait_event(marked(m))
    hc = vb(e, "1.3.6.1.2.1.31.1.1.1.6.1")
    assert (hc["type"], hc["value"]) == ("Counter64", 2**64 - 1)


def test_v1_generic_trap_outside_0_to_6_is_kept(trapd: TrapdListen) -> None:
    """snmptrap sends generic-trap 7 as given, and net-snmp's snmptrapd takes it ("Unknown Type
    Trap"): trapd keeps the event too. RFC 3584 3.1 translates only 0..6, so it has no trap OID."""
    m = mark()
    r = snmp_send(
        "snmptrap", "-v", "1", "-c", "public", trapd.target(), "1.3.6.1.4.1.9.1.516", "10.9.8.7", "7", "0",
        "4242", IF_INDEX_17, "i", "17", MARK_OID, "s", m,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    e = trapd.wait_event(marked(m))
    assert e["version"] == "v1" and e["trap_oid"] == "" and e["uptime"] == 4242
    assert vb(e, "1.3.6.1.6.3.1.1.4.3.0")["value"] == "1.3.6.1.4.1.9.1.516"


def test_v1_generic_linkdown_is_translated_per_rfc3584(trapd: TrapdListen) -> None:
    m = mark()
    r = snmp_send(
        "snmptrap", "-v", "1", "-c", "public", trapd.target(), "1.3.6.1.4.1.9.1.516", "10.9.8.7", "2", "0",
        "4242", IF_INDEX_17, "i", "17", MARK_OID, "s", m,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    e = trapd.wait_event(marked(m))
    assert e["version"] == "v1" and e["kind"] == "trap"
    assert e["trap_oid"] == LINK_DOWN and e["trap_name"] == "IF-MIB::linkDown"
    assert e["uptime"] == 4242
    # A configured community is a secret: printed as a reference to where trapd.yaml has it.
    (ref,) = e["security"]["community"].values()
    assert list(e["security"]) == ["community"] and ref.startswith(str(trapd.workdir)) and "public" not in ref
    assert e["source"] == "127.0.0.1"
    idx = vb(e, IF_INDEX_17)
    assert (idx["name"], idx["index"], idx["type"], idx["value"]) == (
        "IF-MIB::ifIndex",
        "17",
        "Integer32",
        17,
    )
    # RFC 3584 3.1: snmpTrapAddress, snmpTrapCommunity, snmpTrapEnterprise appended
    assert vb(e, "1.3.6.1.6.3.18.1.3.0")["value"] == "10.9.8.7"
    assert vb(e, "1.3.6.1.6.3.18.1.4.0")["value"] == e["security"]["community"]
    assert vb(e, "1.3.6.1.6.3.1.1.4.3.0")["value"] == "1.3.6.1.4.1.9.1.516"


def test_v1_enterprise_specific(trapd: TrapdListen) -> None:
    m = mark()
    r = snmp_send(
        "snmptrap", "-v", "1", "-c", "second-community", trapd.target(), "1.3.6.1.4.1.9.9.41.2", "10.0.0.1",
        "6", "1", "100", MARK_OID, "s", m,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    e = trapd.wait_event(marked(m))
    assert e["trap_oid"] == "1.3.6.1.4.1.9.9.41.2.0.1"
    assert "$secret" in e["security"]["community"]
    assert vb(e, "1.3.6.1.6.3.1.1.4.3.0")["value"] == "1.3.6.1.4.1.9.9.41.2"


def test_v1_specific_trap_of_2_31_or_more_as_netsnmp_sends_it(trapd: TrapdListen, tmp_path: Path) -> None:
    """snmptrap -v1 ... 6 3000000000: net-snmp encodes specific-trap as a signed 32-bit INTEGER
    (b2 d0 5e 00, -1294967296). Translated as it came, the trap OID had a negative sub-identifier
    (...0.-1294967296), which no rule's OID names and which Event.from_dict refuses: `trapd test`
    could not read the line, nor the dispatcher a journaled event of it."""
    m = mark()
    r = snmp_send(
        "snmptrap", "-v", "1", "-c", "public", trapd.target(), "1.3.6.1.4.1.9.9.41.2", "10.0.0.1",
        "6", "3000000000", "100", MARK_OID, "s", m,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    e = trapd.wait_event(marked(m))
    assert e["trap_oid"] == "1.3.6.1.4.1.9.9.41.2.0.3000000000"
    events = tmp_path / "events.jsonl"
    events.write_text(json.dumps(e), encoding="utf-8")
    read_back = [ev.trap_oid for ev in read_event_file(events)]
    assert read_back == [(1, 3, 6, 1, 4, 1, 9, 9, 41, 2, 0, 3000000000)]


# -- v2c -----------------------------------------------------------------------


def test_v2c_trap(trapd: TrapdListen) -> None:
    m = mark()
    r = snmp_send("snmptrap", "-v", "2c", "-c", "public", trapd.target(), *trap_args(m))
    assert r.returncode == 0, r.stderr
    e = trapd.wait_event(marked(m))
    assert (e["version"], e["kind"], e["trap_name"]) == ("v2c", "trap", "IF-MIB::linkDown")
    assert isinstance(e["uptime"], int)
    assert [v["oid"] for v in e["varbinds"]] == [IF_INDEX_17, MARK_OID]


def test_v2c_inform_is_acknowledged(trapd: TrapdListen) -> None:
    m = mark()
    r = snmp_send(
        "snmpinform", "-v", "2c", "-c", "public", "-t", "2", "-r", "0", trapd.target(), *trap_args(m)
    )
    assert r.returncode == 0, r.stderr  # snmpinform exits 0 only when the Response arrived
    e = trapd.wait_event(marked(m))
    assert (e["version"], e["kind"]) == ("v2c", "inform")


@pytest.mark.parametrize("version", ["v2c", "v3"])
def test_ipv6_loopback_inform(trapd: TrapdListen, version: str) -> None:
    m = mark()
    if version == "v2c":
        head = ["-v", "2c", "-c", "public"]
    else:
        head = v3_args("privuser", "authPriv", "SHA-256", "authpass-256", "AES", "privpass-128", engine=None)
    r = snmp_send("snmpinform", *head, "-t", "2", "-r", "0", trapd.target("udp6"), *trap_args(m))
    assert r.returncode == 0, r.stderr  # the acknowledgement made it back over IPv6
    e = trapd.wait_event(marked(m))
    assert (e["source"], e["kind"], e["version"]) == ("::1", "inform", version)


@pytest.mark.parametrize("version", ["v2c", "v3"])
def test_every_varbind_type(trapd: TrapdListen, version: str) -> None:
    m = mark()
    base = "1.3.6.1.4.1.99999.2."
    sent = [
        ("1", "i", "-5", "Integer32", -5),
        ("2", "u", "4294967295", "Gauge32", 4294967295),
        ("3", "c", "123", "Counter32", 123),
        ("4", "s", "héllo", "OctetString", "héllo".encode().hex()),
        ("5", "x", "DEADBEEF", "OctetString", "deadbeef"),
        ("6", "d", "1.2.3", "OctetString", "010203"),
        ("7", "n", "", "Null", None),
        ("8", "o", "1.3.6.1.2.1", "ObjectIdentifier", "1.3.6.1.2.1"),
        ("9", "t", "12345", "TimeTicks", 12345),
        ("10", "a", "192.0.2.1", "IpAddress", "192.0.2.1"),
        ("11", "b", "1 3", "OctetString", "50"),
        ("12", "C", "18446744073709551615", "Counter64", 18446744073709551615),
        ("13", "s", "", "OctetString", ""),
        ("14", "i", "2147483647", "Integer32", 2147483647),
        ("15", "i", "-2147483648", "Integer32", -2147483648),
    ]
    args: list[str] = ["", "1.3.6.1.4.1.99999.0.1", MARK_OID, "s", m]
    for suffix, t, value, *_ in sent:
        args += [base + suffix, t, value]
    if version == "v2c":
        head = ["-v", "2c", "-c", "public"]
    else:
        head = v3_args("privuser", "authPriv", "SHA-256", "authpass-256", "AES", "privpass-128")
    r = snmp_send("snmptrap", *head, trapd.target(), *args)
    assert r.returncode == 0, r.stderr
    e = trapd.wait_event(marked(m))
    assert e["version"] == version
    for suffix, _t, _v, want_type, want_value in sent:
        got = vb(e, base + suffix)
        assert (got["type"], got["value"]) == (want_type, want_value), suffix
    assert vb(e, base + "10")["display"] == "192.0.2.1"


# -- v3 ------------------------------------------------------------------------


def test_v3_authpriv_sha256_aes128_trap(trapd: TrapdListen) -> None:
    m = mark()
    args = v3_args("privuser", "authPriv", "SHA-256", "authpass-256", "AES", "privpass-128")
    r = snmp_send("snmptrap", *args, trapd.target(), *trap_args(m))
    assert r.returncode == 0, r.stderr
    e = trapd.wait_event(marked(m))
    assert (e["version"], e["kind"], e["trap_name"]) == ("v3", "trap", "IF-MIB::linkDown")
    sec = e["security"]
    assert (sec["user"], sec["level"], sec["engine_id"]) == ("privuser", "authPriv", SENDER_ENGINE)
    assert sec["context_name"] == ""
    assert vb(e, IF_INDEX_17)["value"] == 17


def test_v3_authnopriv_md5_trap(trapd: TrapdListen) -> None:
    m = mark()
    r = snmp_send(
        "snmptrap", *v3_args("authuser", "authNoPriv", "MD5", "authpass-md5"), trapd.target(), *trap_args(m)
    )
    assert r.returncode == 0, r.stderr
    e = trapd.wait_event(marked(m))
    assert (e["security"]["user"], e["security"]["level"]) == ("authuser", "authNoPriv")


def test_v3_noauthnopriv_trap_with_context(trapd: TrapdListen) -> None:
    m = mark()
    args = [*v3_args("plainuser", "noAuthNoPriv"), "-n", "vlan-20", "-E", "0x" + SENDER_ENGINE]
    r = snmp_send("snmptrap", *args, trapd.target(), *trap_args(m))
    assert r.returncode == 0, r.stderr
    e = trapd.wait_event(marked(m))
    sec = e["security"]
    assert (sec["level"], sec["context_name"], sec["context_engine_id"]) == (
        "noAuthNoPriv",
        "vlan-20",
        SENDER_ENGINE,
    )


def test_listen_lines_carry_no_raw_line_separators_or_c1_controls(trapd: TrapdListen, tmp_path: Path) -> None:
    """A trap's text (here a v3 context name) with U+2028, NEL (U+0085) and CSI (U+009B) in it.

    JSON leaves them raw unless escaped: a terminal takes U+009B for an escape sequence, and
    str.splitlines() breaks the line at the other two, so `trapd listen > events.jsonl` gave a
    file that `trapd test -r rules.yaml events.jsonl` refused as a whole ("not an event file").
    """
    m = mark()
    context = "ctx\u2028\u0085\u009b31mred"
    args = [*v3_args("plainuser", "noAuthNoPriv"), "-n", context]
    assert snmp_send("snmptrap", *args, trapd.target(), *trap_args(m)).returncode == 0
    e = trapd.wait_event(marked(m))
    assert e["security"]["context_name"] == context  # still the value, escaped only as JSON text
    (line,) = [line for line in trapd.lines if m.encode().hex() in line]
    assert not set(line) & {"\u2028", "\u2029", "\u0085", "\u009b"}, line
    events = tmp_path / "events.jsonl"
    events.write_text(line + line, encoding="utf-8")
    assert [ev.security.context_name for ev in read_event_file(events)] == [context, context]


@pytest.mark.parametrize(("user", "auth", "ak", "priv", "pk"), MATRIX, ids=[x[0] for x in MATRIX])
def test_v3_protocol_matrix(trapd: TrapdListen, user: str, auth: str, ak: str, priv: str, pk: str) -> None:
    m = mark()
    r = snmp_send("snmptrap", *v3_args(user, "authPriv", auth, ak, priv, pk), trapd.target(), *trap_args(m))
    assert r.returncode == 0, r.stderr
    e = trapd.wait_event(marked(m))
    assert (e["security"]["user"], e["security"]["level"]) == (user, "authPriv")


def test_v3_inform_discovers_trapd_engine(trapd: TrapdListen) -> None:
    m = mark()
    args = v3_args("privuser", "authPriv", "SHA-256", "authpass-256", "AES", "privpass-128", engine=None)
    r = snmp_send("snmpinform", *args, "-t", "2", "-r", "1", trapd.target(), *trap_args(m))
    assert r.returncode == 0, r.stderr
    e = trapd.wait_event(marked(m))
    assert e["kind"] == "inform" and e["version"] == "v3"
    assert e["security"]["engine_id"] == TRAPD_ENGINE  # informs are authoritative at the receiver
    assert trapd.engine_id == TRAPD_ENGINE


def test_v3_inform_with_an_integer_of_2_31_or_more_is_acknowledged(trapd: TrapdListen) -> None:
    """snmpinform ... i 3000000000 writes the INTEGER unsigned (00 b2 d0 5e 00), as a net-snmp
    based agent does. The v3 trap was taken; the inform, which pysnmp checks first, failed at
    pysnmp's Integer32 range: dropped as decryption-error, and the sender read 'Decryption
    error' (a wrong key, it seemed) where snmptrapd acknowledges it. Same for the request-id."""
    m = mark()
    args = v3_args("privuser", "authPriv", "SHA-256", "authpass-256", "AES", "privpass-128", engine=None)
    big = (IF_INDEX_17 + ".1", "i", "3000000000")
    r = snmp_send("snmpinform", *args, "-t", "3", "-r", "1", trapd.target(), *trap_args(m, *big))
    assert r.returncode == 0, r.stderr
    e = trapd.wait_event(marked(m))
    assert e["kind"] == "inform" and vb(e, IF_INDEX_17 + ".1")["value"] == 3_000_000_000


def test_v3_user_without_engine_ids_accepts_any_authenticated_engine(trapd: TrapdListen) -> None:
    before = trapd.stats()
    seen = []
    for engine in ("800000000199000001", "800000000199000002"):
        m = mark()
        args = v3_args("anyengine", "authPriv", "SHA", "authpass-any", "AES", "privpass-any", engine=engine)
        assert snmp_send("snmptrap", *args, trapd.target(), *trap_args(m)).returncode == 0
        seen.append(trapd.wait_event(marked(m))["security"]["engine_id"])
    assert seen == ["800000000199000001", "800000000199000002"]
    # a forged message for that user from a new engine, with the wrong key: refused before pysnmp learns it
    args = v3_args(
        "anyengine", "authPriv", "SHA", "wrong-key-any", "AES", "privpass-any", engine="800000000199000003"
    )
    snmp_send("snmptrap", *args, trapd.target(), *trap_args(mark()))
    after = wait_dropped(trapd, before, "wrong-digest", 1)
    assert after["dropped_detail"].get("wrong-digest/unlearned-engine", 0) >= 1


# -- drops ---------------------------------------------------------------------


def dropped(stats: dict[str, Any], reason: str) -> int:
    return int(stats["dropped"].get(reason, 0))


def wait_dropped(trapd: TrapdListen, before: dict[str, Any], reason: str, n: int) -> dict[str, Any]:
    """Stats once ``reason`` grew by ``n`` (the drop may still be in flight when the sender exits)."""
    return trapd.wait_stats(lambda now: dropped(now, reason) - dropped(before, reason) >= n)


def assert_still_receiving(trapd: TrapdListen) -> None:
    m = mark()
    assert snmp_send("snmptrap", "-v", "2c", "-c", "public", trapd.target(), *trap_args(m)).returncode == 0
    trapd.wait_event(marked(m))


def test_wrong_community_is_dropped_and_counted(trapd: TrapdListen) -> None:
    before = trapd.stats()
    m = mark()
    snmp_send("snmptrap", "-v", "2c", "-c", "not-configured", trapd.target(), *trap_args(m))
    v1 = ["1.3.6.1.4.1.9", "10.0.0.1", "2", "0", "1", MARK_OID, "s", m]
    snmp_send("snmptrap", "-v", "1", "-c", "not-configured", trapd.target(), *v1)
    after = wait_dropped(trapd, before, "unknown-community", 2)
    assert dropped(after, "unknown-community") - dropped(before, "unknown-community") == 2
    assert_still_receiving(trapd)
    assert not any(marked(m)(e) for e in trapd.events_so_far())


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (v3_args("nosuchuser", "authPriv", "SHA-256", "authpass-256", "AES", "privpass-128"), "unknown-user"),
        (v3_args("privuser", "authPriv", "SHA-256", "wrong-auth-key", "AES", "privpass-128"), "wrong-digest"),
        (
            v3_args("privuser", "authPriv", "SHA-256", "authpass-256", "AES", "wrong-privkey"),
            "decryption-error",
        ),
        (
            v3_args(
                "privuser", "authPriv", "SHA-256", "authpass-256", "AES", "privpass-128", engine=OTHER_ENGINE
            ),
            "unknown-engine-id",
        ),
        (v3_args("privuser", "authNoPriv", "SHA-256", "authpass-256"), "unsupported-security-level"),
    ],
    ids=["unknown-user", "wrong-auth-key", "wrong-priv-key", "unbound-engine", "level-too-low"],
)
def test_v3_failures_are_dropped_by_reason(trapd: TrapdListen, args: list[str], reason: str) -> None:
    before = trapd.stats()
    m = mark()
    snmp_send("snmptrap", *args, trapd.target(), *trap_args(m))
    wait_dropped(trapd, before, reason, 1)
    assert_still_receiving(trapd)
    assert not any(marked(m)(e) for e in trapd.events_so_far())


def test_v3_inform_with_wrong_key_fails_at_the_sender(trapd: TrapdListen) -> None:
    before = trapd.stats()
    args = v3_args("privuser", "authPriv", "SHA-256", "wrong-auth-key", "AES", "privpass-128", engine=None)
    r = snmp_send("snmpinform", *args, "-t", "1", "-r", "0", trapd.target(), *trap_args(mark()))
    assert r.returncode != 0
    wait_dropped(trapd, before, "wrong-digest", 1)


def test_v3_inform_before_time_synchronization_is_reported_then_resent(trapd: TrapdListen) -> None:
    """An inform sent before the sender knows trapd's time (net-snmp's first message carries
    engineBoots and engineTime 0, -Z or not) gets a notInTimeWindow report; net-snmp resyncs and
    resends. That is discovery (RFC 3414 section 4), not a drop; a stale inform is one
    (test_usm_netsnmp.py)."""
    before = trapd.stats()
    m = mark()
    args = v3_args(
        "privuser", "authPriv", "SHA-256", "authpass-256", "AES", "privpass-128", engine=TRAPD_ENGINE
    )
    r = snmp_send("snmpinform", *args, "-Z", "1,1", "-t", "2", "-r", "1", trapd.target(), *trap_args(m))
    assert r.returncode == 0, r.stderr
    assert trapd.wait_event(marked(m))["kind"] == "inform"
    now = trapd.wait_stats(lambda s: s["v3_discovery"] > before["v3_discovery"])
    assert dropped(now, "not-in-time-window") == dropped(before, "not-in-time-window")


def test_garbage_and_truncated_packets_are_malformed(trapd: TrapdListen) -> None:
    m = mark()
    good_v2c = capture_datagram("snmptrap", "-v", "2c", "-c", "public", "{target}", *trap_args(m))
    good_v3 = capture_datagram(
        "snmptrap", *v3_args("privuser", "authPriv", "SHA-256", "authpass-256", "AES", "privpass-128"),
        "{target}", *trap_args(m),
    )  # fmt: skip
    before = trapd.stats()
    bad = [
        b"",
        b"\x00garbage\xff" * 10,
        b"\x30\x80\x02\x01\x01",  # indefinite length
        good_v2c[: len(good_v2c) // 2],
        good_v2c[:-1],
        good_v2c + b"\x00",  # trailing bytes
        good_v3[: len(good_v3) - 7],
        good_v3[:40],
        bytes(65507),
    ]
    for data in bad:
        send_udp(data, trapd.address())
    after = wait_dropped(trapd, before, "malformed", len(bad))
    assert dropped(after, "malformed") - dropped(before, "malformed") == len(bad)
    details = after["dropped_detail"]
    assert details.get("malformed/truncated", 0) >= 2
    assert details.get("malformed/trailing-bytes", 0) >= 1
    # the same good packet still goes through afterwards
    send_udp(good_v2c, trapd.address())
    e = trapd.wait_event(marked(m))
    assert e["version"] == "v2c"


def test_requests_are_not_notifications(trapd: TrapdListen) -> None:
    """A GetRequest (v2c fast path, v3 through pysnmp) is counted as unsupported-pdu and never printed."""
    before = trapd.stats()
    snmp_send(
        "snmpget", "-v", "2c", "-c", "public", "-t", "0.3", "-r", "0", trapd.target(), "1.3.6.1.2.1.1.1.0"
    )
    args = v3_args("privuser", "authPriv", "SHA-256", "authpass-256", "AES", "privpass-128", engine=None)
    snmp_send("snmpget", *args, "-t", "0.5", "-r", "0", trapd.target(), "1.3.6.1.2.1.1.1.0")
    after = wait_dropped(trapd, before, "unsupported-pdu", 2)
    assert after["received"] == before["received"]


def test_stats_count_received_versions_and_kernel_drops(trapd: TrapdListen) -> None:
    # Its own traffic: with pytest-xdist the module's other tests may have run in the other
    # process, against that process's trapd (this test failed alone, or placed first).
    m = mark()
    v1 = ["1.3.6.1.4.1.9.9.41.2", "10.0.0.1", "6", "1", "", MARK_OID, "s", m]
    assert snmp_send("snmptrap", "-v", "1", "-c", "public", trapd.target(), *v1).returncode == 0
    inform = ["snmpinform", "-v", "2c", "-c", "public", "-t", "2", "-r", "1", trapd.target(), *trap_args(m)]
    assert snmp_send(*inform).returncode == 0
    args = v3_args("privuser", "authPriv", "SHA-256", "authpass-256", "AES", "privpass-128", engine=None)
    assert snmp_send("snmpinform", *args, "-t", "2", "-r", "1", trapd.target(), *trap_args(m)).returncode == 0
    s = trapd.wait_stats(lambda s: {"v1", "v2c", "v3"} <= set(s["received"]) and s["v3_discovery"] >= 1)
    assert s["inform_responses"] >= 1 and s["v3_discovery"] >= 1
    assert set(s["kernel_rcvbuf_errors"]) == {"udp", "udp6"}
    assert s["datagrams"] >= s["received"]["v2c"] + s["received"]["v1"] + s["received"]["v3"]


def test_drop_log_is_rate_limited(trapd: TrapdListen) -> None:
    before = trapd.stats()
    lines_before = sum(1 for e in trapd.log if e.get("event") == "snmp notification dropped")
    for _ in range(30):
        send_udp(b"\x01\x02\x03", trapd.address())
    wait_dropped(trapd, before, "malformed", 30)
    lines = [e for e in trapd.log if e.get("event") == "snmp notification dropped"][lines_before:]
    assert len(lines) <= 2  # at most one line per reason per 10 s, not one per packet
    for line in lines:
        assert line["reason"] == "malformed" and line["last_source"] == "127.0.0.1"


def test_sigterm_exits_zero_and_prints_final_stats(tmp_path: Path) -> None:
    t = TrapdListen.start(tmp_path, {"listener": {"communities": ["public"]}})
    m = mark()
    snmp_send("snmptrap", "-v", "2c", "-c", "public", t.target(), *trap_args(m))
    t.wait_event(marked(m))
    assert t.stop() == 0
    final = [e for e in t.log if e.get("event") == "listener stats"]
    assert final and final[-1]["received"] == {"v2c": 1}


def test_stdout_reader_gone_stops_listen_quietly(tmp_path: Path) -> None:
    """`trapd listen | head -n 1`: once head exits, the next line written meets a closed pipe.
    trapd listen went on running, and logged a BrokenPipeError traceback for every later trap."""
    import subprocess
    import sys

    config = tmp_path / "trapd.yaml"
    config.write_text(yaml.safe_dump({"mibs": {"dirs": []}, "state_dir": str(tmp_path)}))
    proc = subprocess.Popen(
        [sys.executable, "-m", "trapd", "listen", "--config", str(config), "--listen", "127.0.0.1:0",
         "--community", "public", "--log-format", "json"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None and proc.stderr is not None
        for line in proc.stderr:
            if '"listening"' in line:
                (address,) = json.loads(line)["addresses"]
                break
        target = "udp:" + address
        assert snmp_send("snmptrap", "-v", "2c", "-c", "public", target, *trap_args(mark())).returncode == 0
        assert json.loads(proc.stdout.readline())["version"] == "v2c"
        proc.stdout.close()  # what head does after its line
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:
            snmp_send("snmptrap", "-v", "2c", "-c", "public", target, *trap_args(mark()))
            time.sleep(0.2)
        assert proc.poll() == 0, "trapd listen kept running with no reader"
        assert "callback failed" not in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def test_bad_listen_address_and_busy_port(tmp_path: Path) -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "trapd", "listen", "--listen", "not-an-address:99"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 2 and "not an IP address" in r.stderr
    t = TrapdListen.start(tmp_path, {"listener": {"communities": ["public"]}})
    try:
        host, port = t.address()
        r = subprocess.run(
            [sys.executable, "-m", "trapd", "listen", "--listen", f"{host}:{port}", "--log-format", "json"],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert r.returncode == 1 and "cannot listen" in r.stderr
    finally:
        assert t.stop() == 0


def test_stats_interval_logs_counters_periodically(tmp_path: Path) -> None:
    t = TrapdListen.start(
        tmp_path, {"listener": {"communities": ["public"]}}, args=("--stats-interval", "0.2")
    )
    try:
        first = t.wait_log(lambda e: e.get("event") == "listener stats", 5)
        send_udp(b"junk", t.address())
        later = t.wait_log(lambda e: e.get("event") == "listener stats" and e["dropped"].get("malformed"), 5)
        assert first is not None and later is not None
        assert later["dropped"] == {"malformed": 1} and later["datagrams"] == 1
    finally:
        assert t.stop() == 0
