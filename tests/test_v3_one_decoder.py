"""One decoder for every version: a v3 PDU pysnmp takes is read by trapd's BER decoder, as v1/v2c are.

The fast USM path hands an authentic trap whose varbinds trapd's decoder
refuses to pysnmp, and every v3 inform goes to pysnmp. pyasn1 is laxer than
trapd's decoder: it takes long-form tags, indefinite lengths, constructed
OCTET STRINGs, five length octets, an INTEGER without content octets (as 0),
sub-identifiers of 2^32 and more and OIDs of any length. Such a PDU was
therefore dropped in a v2c message but delivered (and an inform acknowledged)
in a v3 one. Now the PDU of every v3 message pysnmp accepts is decoded by
trapd's decoder, which decides: the same bytes make the same varbinds in
every version, or the same drop reason.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from usm_support import craft, scoped_pdu, user

from trapd.listener import Listener, ListenerConfig, RawNotification
from trapd.listener.ber import encode_oid_content, encode_tlv
from trapd.listener.config import ListenAddress, RateLimit
from trapd.listener.fastpath import Rejected, decode
from trapd.listener.v3.keys import localized_user

SENDER = bytes.fromhex("8000000001020304")
TRAPD = bytes.fromhex("80004fb805aabbccddeeff0077")
USERS = [
    user("auth", "SHA", "none", [SENDER]),
    user("aes", "SHA-256", "AES-128", [SENDER]),
    user("des", "MD5", "DES", [SENDER]),
    user("plain", engine_ids=[SENDER]),
]
PEER = ("192.0.2.9", 40000)


def _oid(arcs: tuple[int, ...]) -> bytes:
    return encode_tlv(0x06, encode_oid_content(arcs))


def _vb(name: bytes, value: bytes) -> bytes:
    return encode_tlv(0x30, name + value)


_NAME = _oid((1, 3, 6, 1, 4, 1, 9, 1))
_HEAD = _vb(_oid((1, 3, 6, 1, 2, 1, 1, 3, 0)), bytes.fromhex("43020400")) + _vb(
    _oid((1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)), _oid((1, 3, 6, 1, 6, 3, 1, 1, 5, 3))
)

# varbind-list content -> the reason trapd's decoder refuses it with (in a v2c message too).
ODD: dict[str, tuple[bytes, str]] = {
    "long-form-tag": (_HEAD + _vb(_NAME, b"\x1f\x02\x01\x05"), "bad-tag"),
    "indefinite-varbind": (_HEAD + b"\x30\x80" + _NAME + b"\x02\x01\x05\x00\x00", "indefinite-length"),
    "subid-2^32": (_HEAD + _vb(b"\x06\x07\x2b\x06\x90\x80\x80\x80\x00", b"\x02\x01\x05"), "bad-oid"),
    "oid-200-arcs": (_HEAD + _vb(_NAME, encode_tlv(0x06, bytes([0x2B] + [1] * 199))), "bad-oid"),
    "empty-integer": (_HEAD + _vb(_NAME, b"\x02\x00"), "bad-integer"),
    "constructed-string": (_HEAD + _vb(_NAME, b"\x24\x06\x04\x01a\x04\x01b"), "bad-tag"),
    "five-length-octets": (_HEAD + _vb(_NAME, b"\x04\x85\x00\x00\x00\x00\x01a"), "bad-length"),
}
WELL_FORMED = _HEAD + _vb(_NAME, b"\x02\x01\x05") + _vb(_NAME, b"\x04\x84\x00\x00\x00\x01a")


def _pdu(varbind_list: bytes, tag: int, request_id: int = 77) -> bytes:
    fields = encode_tlv(0x02, bytes([request_id])) + b"\x02\x01\x00\x02\x01\x00"
    return encode_tlv(tag, fields + encode_tlv(0x30, varbind_list))


def _v2c(varbind_list: bytes) -> bytes:
    return encode_tlv(0x30, b"\x02\x01\x01" + encode_tlv(0x04, b"public") + _pdu(varbind_list, 0xA7))


class Harness:
    def __init__(self, listener: Listener, got: list[RawNotification]) -> None:
        self.listener = listener
        self.got = got
        self.replies: list[bytes] = []
        self.msg_id = 0
        self.before: Counter[tuple[str, str]] = Counter()

    def dropped(self) -> Counter[tuple[str, str]]:
        """Drops by (reason, detail) since the test began."""
        return Counter(self.listener.stats.dropped_detail) - self.before

    def trapd_clock(self) -> tuple[int, int]:
        """trapd's snmpEngineBoots and snmpEngineTime (what an inform sender learns by discovery)."""
        assert self.listener._v3 is not None
        builder = self.listener._v3.receiver.engine.get_mib_builder()
        boots, etime = builder.import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineBoots", "snmpEngineTime")
        return int(boots.syntax), int(etime.syntax.clone())  # clone(): the seconds since the origin

    def send(self, u: Any, varbind_list: bytes, inform: bool = False, after_usm: bytes = b"") -> None:
        """``varbind_list`` in a trap from SENDER (or an inform to trapd) from user ``u``, authentic."""
        self.send_pdu(u, _pdu(varbind_list, 0xA6 if inform else 0xA7), inform, after_usm)

    def send_pdu(self, u: Any, pdu: bytes, inform: bool = False, after_usm: bytes = b"") -> None:
        self.msg_id += 1
        engine = TRAPD if inform else SENDER
        scoped = scoped_pdu(pdu, engine)
        keys = localized_user(u, engine, MASTERS)
        flags = {"noAuthNoPriv": 0, "authNoPriv": 1, "authPriv": 3}[u.level] | (4 if inform else 0)
        boots, etime = self.trapd_clock() if inform else (1, 1000 + self.msg_id)
        data = craft(
            keys,
            engine,
            u.user.encode(),
            scoped,
            flags=flags,
            msg_id=self.msg_id,
            boots=boots,
            etime=etime,
            after_usm=after_usm,
        )
        self.listener.handle_datagram(data, PEER, lambda d, a: self.replies.append(d))


# Master keys by passphrase: each 1 MiB passphrase hash once for the module.
MASTERS: dict[Any, bytes] = {}


@pytest.fixture(scope="module")
def listener(tmp_path_factory: pytest.TempPathFactory) -> Harness:
    """One Listener's receive path for the module (building pysnmp's engine costs most of a second):
    handle_datagram needs no socket, and each test reads what changed in the counters."""
    got: list[RawNotification] = []
    cfg = ListenerConfig(
        listen=(ListenAddress("127.0.0.1", 0),),
        v3_users=tuple(USERS),
        engine_id=TRAPD,
        # No slow-path budget: every message the fast path declines must reach pysnmp's engine.
        rate_limit=RateLimit(v3_slow_per_source=0, v3_slow_global=0),
    )
    receiver = Listener(cfg, got.append, state_dir=tmp_path_factory.mktemp("state"))
    receiver._v3 = receiver._build_v3(cfg)  # what start() builds, without the sockets
    return Harness(receiver, got)


@pytest.fixture
def trapd(listener: Harness) -> Harness:
    listener.got.clear()
    listener.replies.clear()
    listener.before = Counter(listener.listener.stats.dropped_detail)
    return listener


def test_the_odd_pdus_are_refused_in_v2c() -> None:
    """The reference: what trapd's decoder says of each varbind list in a v2c trap."""
    for varbind_list, reason in ODD.values():
        with pytest.raises(Rejected) as excinfo:
            decode(_v2c(varbind_list))
        assert excinfo.value.reason == reason


@pytest.mark.parametrize("inform", [False, True], ids=["trap", "inform"])
@pytest.mark.parametrize("u", USERS, ids=[u.user for u in USERS])
def test_v3_reads_a_pdu_as_v2c_does(trapd: Harness, u: Any, inform: bool) -> None:
    trapd.send(u, WELL_FORMED, inform)
    assert len(trapd.got) == 1, trapd.dropped()
    assert trapd.got[0].varbinds == decode(_v2c(WELL_FORMED)).varbinds
    assert trapd.got[0].request_id == 77
    assert len(trapd.replies) == (1 if inform else 0)  # the inform's Response
    trapd.got.clear()
    trapd.replies.clear()
    for case, (varbind_list, reason) in ODD.items():
        trapd.send(u, varbind_list, inform)
        assert trapd.got == [], f"{case}: delivered in v3, refused in v2c"
        assert trapd.replies == [], f"{case}: an inform acknowledged that was not delivered"
        assert trapd.dropped()[("malformed", f"v3-{reason}")] >= 1, (case, trapd.dropped())
    assert sum(trapd.dropped().values()) == len(ODD)


@pytest.mark.parametrize("inform", [False, True], ids=["trap", "inform"])
@pytest.mark.parametrize("u", USERS, ids=[u.user for u in USERS])
def test_bytes_after_the_security_parameters_are_refused_as_after_any_other_element(
    trapd: Harness, u: Any, inform: bool
) -> None:
    """pysnmp ignores octets after the UsmSecurityParameters SEQUENCE inside msgSecurityParameters
    (and nowhere else: after msgGlobalData's or the USM SEQUENCE's last member it refuses them). The
    fast USM path declined such a trap, pysnmp delivered it; trapd's decoder refuses trailing bytes
    in every constructed element of every version, and now here too."""
    trapd.send(u, WELL_FORMED, inform, after_usm=b"\x05\x00")
    assert trapd.got == [] and trapd.replies == []
    assert trapd.dropped() == {("malformed", "v3-trailing-bytes"): 1}


# What trapd's decoder takes on purpose beyond pyasn1's ranges (fastpath's module doc: what
# net-snmp's snmptrapd takes from real agents) -> the varbind it makes.
WIDE: dict[str, tuple[bytes, tuple[str, int]]] = {
    "counter32-ffffffff": (b"\x41\x04\xff\xff\xff\xff", ("Counter32", 2**32 - 1)),
    "gauge32-80000000": (b"\x42\x04\x80\x00\x00\x00", ("Gauge32", 2**31)),
    "timeticks-ff": (b"\x43\x01\xff", ("TimeTicks", 255)),
    "counter64-ff*8": (b"\x46\x08" + b"\xff" * 8, ("Counter64", 2**64 - 1)),
    "integer-3000000000": (b"\x02\x05\x00\xb2\xd0\x5e\x00", ("Integer32", 3_000_000_000)),
}


@pytest.mark.parametrize("inform", [False, True], ids=["trap", "inform"])
@pytest.mark.parametrize("case", list(WIDE))
def test_v3_takes_the_values_v2c_takes_beyond_pysnmps_ranges(trapd: Harness, case: str, inform: bool) -> None:
    """An unsigned value written without its leading 00 (ff ff ff ff), or an INTEGER of 2^31..2^32-1:
    a v2c or v3 trap with one was taken, but pysnmp, which checks every inform first, refused it
    while decoding the decrypted PDU: the inform was dropped as decryption-error and the sender
    read 'Decryption error', a key that was right."""
    value, (kind, number) = WIDE[case]
    trapd.send(USERS[1], _HEAD + _vb(_NAME, value), inform)  # authPriv
    assert trapd.dropped() == {}
    assert [raw.varbinds[-1] for raw in trapd.got] == [((1, 3, 6, 1, 4, 1, 9, 1), kind, number)]
    assert len(trapd.replies) == (1 if inform else 0)  # the inform's Response


def test_a_v3_inform_with_a_request_id_of_2_31_or_more_is_acknowledged_with_it(trapd: Harness) -> None:
    """A request-id counted unsigned past 2^31 (00 80 00 00 00): v2c takes it and so does v3."""
    fields = b"\x02\x05\x00\x80\x00\x00\x00" + b"\x02\x01\x00\x02\x01\x00"
    trapd.send_pdu(USERS[1], encode_tlv(0xA6, fields + encode_tlv(0x30, WELL_FORMED)), inform=True)
    assert trapd.dropped() == {}
    assert [raw.request_id for raw in trapd.got] == [2**31]
    assert len(trapd.replies) == 1


# --- a seeded corpus: other BER forms of real PDUs, and the v1/v2c fuzz engine's mutants ---------

CORPUS_SEED = 20261207


def _load_engine() -> ModuleType:
    path = Path(__file__).resolve().parents[1] / "bench" / "fuzz_v3_pdus.py"
    spec = importlib.util.spec_from_file_location("fuzz_v3_pdus", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fuzz_v3_pdus", module)
    spec.loader.exec_module(module)
    return module


def test_pdus_in_other_ber_forms_and_mutated_read_the_same_in_v3_as_in_v2c(trapd: Harness) -> None:
    """Real PDUs re-encoded in the other forms BER allows or pyasn1 takes, and the v1/v2c fuzz
    engine's mutants (bit flips, broken lengths, nesting, truncation...), as the PDU of authentic
    v3 traps at three levels: each is delivered with exactly the varbinds and request-id a v2c
    message with that PDU decodes to, or dropped if the v2c one is refused; one count each. The
    one allowed difference is documented in trapd.listener.fastpath: pysnmp refuses odd
    error-status / error-index values a v2c notification is not refused for."""
    stats = trapd.listener.stats
    users = [USERS[0], USERS[1], USERS[3]]  # authNoPriv, authPriv (AES), noAuthNoPriv
    delivered = refused = 0
    engine = _load_engine()
    for i, pdu in enumerate(engine.corpus(CORPUS_SEED, 120, 80)):
        try:
            reference = decode(engine.v2c_of_pdu(pdu))
        except Rejected:
            reference = None
        before = stats.received_total + stats.dropped_total
        trapd.got.clear()
        trapd.send_pdu(users[i % 3], pdu)
        assert stats.received_total + stats.dropped_total == before + 1, pdu.hex()
        assert not any(d.startswith(("internal", "v3-internal")) for _, d in stats.dropped_detail), pdu.hex()
        if reference is None:
            assert trapd.got == [], f"delivered in v3, refused in v2c: {pdu.hex()}"
            refused += 1
        elif trapd.got:
            assert trapd.got[0].varbinds == reference.varbinds, pdu.hex()
            assert trapd.got[0].request_id == reference.request_id
            delivered += 1
        else:
            assert engine.error_fields(pdu) != (0, 0), f"accepted in v2c, dropped in v3: {pdu.hex()}"
    assert stats.dropped["rate-limited"] == 0  # every one was judged, none only throttled
    # The corpus reaches both outcomes (else the comparison says little).
    assert delivered > 30 and refused > 80, (delivered, refused)
