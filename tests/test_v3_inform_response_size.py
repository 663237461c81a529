"""The Response to a v3 inform, at the sizes where it no longer fits.

RFC 3416 4.2.7: the Response to an InformRequest carries its varbinds back, unless the message
would exceed the largest message the sender said it takes (msgMaxSize, RFC 3412) or a local
limit; then the Response says tooBig, with error-index 0 and no varbinds. Crafted informs to
trapd's engine through the Listener's receive path (no socket); the replies are read with
pyasn1 (pysnmp's own message and PDU types), not with trapd's decoder.
"""

from __future__ import annotations

from typing import Any

import pytest
from usm_support import craft, scoped_pdu, user

from trapd.listener import Listener, ListenerConfig, RawNotification
from trapd.listener.ber import encode_oid_content, encode_tlv
from trapd.listener.config import ListenAddress, RateLimit
from trapd.listener.v3.keys import localized_user

TRAPD = bytes.fromhex("80004fb805aabbccddeeff0066")
AUTH = user("auth", "SHA", "none")
PRIV = {"AES-128": user("aes", "SHA-256", "AES-128"), "DES": user("des", "MD5", "DES")}
PEER = ("192.0.2.9", 40000)
BIG_OID = (1, 3, 6, 1, 4, 1, 99999, 9)
LINK_DOWN = (1, 3, 6, 1, 6, 3, 1, 1, 5, 3)


def _inform_pdu(request_id: int, pad: int) -> bytes:
    def vb(arcs: tuple[int, ...], value: bytes) -> bytes:
        return encode_tlv(0x30, encode_tlv(0x06, encode_oid_content(arcs)) + value)

    varbinds = (
        vb((1, 3, 6, 1, 2, 1, 1, 3, 0), bytes.fromhex("43020400"))
        + vb((1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0), encode_tlv(0x06, encode_oid_content(LINK_DOWN)))
        + vb(BIG_OID, encode_tlv(0x04, b"x" * pad))
    )
    fields = encode_tlv(0x02, request_id.to_bytes(2, "big")) + b"\x02\x01\x00\x02\x01\x00"
    return encode_tlv(0xA6, fields + encode_tlv(0x30, varbinds))


class Harness:
    def __init__(self, listener: Listener, got: list[RawNotification]) -> None:
        self.listener = listener
        self.got = got
        self.replies: list[bytes] = []
        self.msg_id = 1000

    def inform(self, pad: int, max_size: int, u: Any = AUTH) -> int:
        """An authentic inform from ``u`` with a ``pad``-octet string, saying it takes ``max_size``."""
        assert self.listener._v3 is not None
        builder = self.listener._v3.receiver.engine.get_mib_builder()
        boots, etime = builder.import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineBoots", "snmpEngineTime")
        self.msg_id += 1
        data = craft(
            localized_user(u, TRAPD),
            TRAPD,
            u.user.encode(),
            scoped_pdu(_inform_pdu(self.msg_id, pad), TRAPD),
            flags=5 if u.priv_protocol == "none" else 7,
            msg_id=self.msg_id,
            max_size=max_size,
            boots=int(boots.syntax),
            etime=int(etime.syntax.clone()),
        )
        self.listener.handle_datagram(data, PEER, lambda d, a: self.replies.append(d))
        return len(data)


def read_response(data: bytes, u: Any = AUTH) -> tuple[int, int, int, int, list[Any]]:
    """(msgID, request-id, error-status, error-index, varbinds) of a v3 Response to ``u``."""
    from pyasn1.codec.ber import decoder
    from pysnmp.proto import api
    from pysnmp.proto.mpmod.rfc3412 import ScopedPDU, SNMPv3Message

    from trapd.listener.v3 import parse_header
    from trapd.listener.v3.scoped import decrypt

    msg, rest = decoder.decode(data, asn1Spec=SNMPv3Message())
    assert not rest
    msg_id = int(msg["msgGlobalData"]["msgID"])
    if u.priv_protocol == "none":
        scoped = msg["msgData"]["plaintext"]
    else:
        h = parse_header(data)
        clear = decrypt(
            localized_user(u, TRAPD),
            bytes(msg["msgData"]["encryptedPDU"]),
            h.engine_boots,
            h.engine_time,
            h.priv_params,
        )
        scoped, _ = decoder.decode(clear, asn1Spec=ScopedPDU())  # DES: the padding after it is left
    pdu = scoped["data"].getComponent()
    p = api.v2c.apiPDU
    assert pdu.tagSet == api.v2c.ResponsePDU.tagSet
    status, index = int(p.get_error_status(pdu)), int(p.get_error_index(pdu))
    return msg_id, int(p.get_request_id(pdu)), status, index, list(p.get_varbinds(pdu))


@pytest.fixture(scope="module")
def trapd(tmp_path_factory: pytest.TempPathFactory) -> Harness:
    got: list[RawNotification] = []
    cfg = ListenerConfig(
        listen=(ListenAddress("127.0.0.1", 0),),
        v3_users=(AUTH, *PRIV.values()),
        engine_id=TRAPD,
        rate_limit=RateLimit(v3_slow_per_source=0, v3_slow_global=0),
    )
    listener = Listener(cfg, got.append, state_dir=tmp_path_factory.mktemp("state"))
    listener._v3 = listener._build_v3(cfg)  # what start() builds, without the sockets
    return Harness(listener, got)


def test_a_response_within_the_senders_max_size_echoes_the_varbinds(trapd: Harness) -> None:
    trapd.replies.clear()
    size = trapd.inform(pad=300, max_size=1500)
    assert len(trapd.replies) == 1
    reply = trapd.replies[0]
    msg_id, request_id, status, index, varbinds = read_response(reply)
    assert (msg_id, request_id, status, index) == (trapd.msg_id, trapd.msg_id, 0, 0)
    assert tuple(varbinds[-1][0]) == BIG_OID and len(varbinds[-1][1]) == 300
    assert len(reply) <= 1500 and size <= 1500


@pytest.mark.parametrize(
    ("max_size", "u"),
    [(484, AUTH), (1500, AUTH), (484, PRIV["AES-128"]), (1500, PRIV["DES"])],
    ids=["auth-484", "auth-1500", "aes-484", "des-1500"],
)
def test_a_response_over_the_senders_max_size_is_toobig_without_varbinds(
    trapd: Harness, max_size: int, u: Any
) -> None:
    """An inform larger than the sender takes back (an agent may send more than it receives):
    pysnmp refused to encode the Response and trapd sent nothing, so the sender resent the
    inform until it gave up. Now it gets tooBig, error-index 0 and no varbinds. The inform is
    authentic and was handed on before the Response was encoded: it is run (its sender would
    not send it smaller), where RFC 3416 4.2.7 would have the receiver not present it."""
    trapd.replies.clear()
    before = len(trapd.got)
    stats = trapd.listener.stats
    errors, too_big = stats.send_errors, stats.inform_too_big
    trapd.inform(pad=2 * max_size, max_size=max_size, u=u)
    assert len(trapd.got) == before + 1  # handed on (the sender would not resend it smaller)
    assert len(trapd.replies) == 1, "no Response to the inform"
    reply = trapd.replies[0]
    assert len(reply) <= max_size
    msg_id, request_id, status, index, varbinds = read_response(reply, u)
    assert (msg_id, request_id, status, index, varbinds) == (trapd.msg_id, trapd.msg_id, 1, 0, [])
    assert (stats.send_errors, stats.inform_too_big) == (errors, too_big + 1)
    # what pysnmp held to answer the inform is gone, as after any Response
    engine = trapd.listener._v3.receiver.engine  # type: ignore[union-attr]
    assert not engine.message_processing_subsystems[3]._cache._Cache__stateReferenceIndex
    assert engine.security_models[3]._cache.is_empty()


def test_toobig_answers_are_a_metric_summed_over_workers() -> None:
    """trapd_informs_too_big_total: the operator's one figure, with service.workers the workers' sum."""
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from trapd.service.metrics import DaemonSnapshot, TrapdCollector, build_registry
    from trapd.service.snapshots import from_wire, sum_snapshots, to_wire

    workers = [from_wire(to_wire(DaemonSnapshot(informs_too_big=n))) for n in (2, 5)]
    registry = build_registry(TrapdCollector(lambda: sum_snapshots(workers)), process_metrics=False)
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())}
    assert families["trapd_informs_too_big"].samples[0].value == 7
