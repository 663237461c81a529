"""SNMPv3 trap messages built by pysnmp's own engine, and pysnmp's reading of them (for the USM tests).

:class:`PysnmpTrapSender` is a pysnmp 7 SnmpEngine acting as a switch: its
engine ID is the sender's (authoritative for its traps), its users are the
trapd users, and ``send_pdu`` goes through pysnmp's v3 message processing
and USM (HMAC, DES/AES encryption, salts, boots/time) into a captured byte
string instead of a socket. :func:`pysnmp_reading` feeds bytes to trapd's
:class:`V3Receiver` (pysnmp's receiving engine) and returns what it made of
them, so a test can compare it with the fast path's RawNotification.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from trapd.listener.config import V3User
from trapd.listener.raw import RawNotification, RawVarBind
from trapd.listener.stats import ListenerStats
from trapd.listener.v3 import V3Receiver
from trapd.secrets import Secret

LEVELS = {"noAuthNoPriv": 1, "authNoPriv": 2, "authPriv": 3}
AUTHS = ("MD5", "SHA", "SHA-224", "SHA-256", "SHA-384", "SHA-512")
PRIVS = ("DES", "AES-128", "AES-192", "AES-256", "AES-192-C", "AES-256-C")


def user(
    name: str,
    auth: str = "none",
    priv: str = "none",
    engine_ids: Sequence[bytes] = (),
    auth_key: str | None = None,
    priv_key: str | None = None,
) -> V3User:
    """A V3User with passphrases derived from its name unless given."""
    return V3User(
        user=name,
        auth_protocol=auth,
        auth_key=Secret(auth_key or f"auth-{name}-pass") if auth != "none" else None,
        priv_protocol=priv,
        priv_key=Secret(priv_key or f"priv-{name}-pass") if priv != "none" else None,
        engine_ids=tuple(engine_ids),
    )


def _protocols(u: V3User) -> tuple[Any, Any]:
    from trapd.listener.v3.adapters import pysnmp_protocols as _pysnmp_protocols

    return _pysnmp_protocols(u)


class PysnmpTrapSender:
    """A pysnmp engine with ``engine_id`` that encodes SNMPv3 traps for ``users`` into bytes."""

    def __init__(self, engine_id: bytes, users: Sequence[V3User], boots: int = 1) -> None:
        from pysnmp.carrier.base import AbstractTransportDispatcher
        from pysnmp.entity import config as pc
        from pysnmp.entity.engine import SnmpEngine
        from pysnmp.proto import rfc1902

        self.engine_id = engine_id
        self.sent: list[bytes] = []
        sent = self.sent

        class _Capture(AbstractTransportDispatcher):  # type: ignore[misc]
            def send_message(self, outgoingMessage: Any, transportDomain: Any, transportAddress: Any) -> None:
                sent.append(bytes(outgoingMessage))

        self.engine = SnmpEngine(snmpEngineID=rfc1902.OctetString(engine_id))
        self.engine.register_transport_dispatcher(_Capture())
        (boots_obj,) = self.engine.get_mib_builder().import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineBoots")
        boots_obj.syntax = boots_obj.syntax.clone(boots)
        for u in users:
            auth_id, priv_id = _protocols(u)
            pc.add_v3_user(
                self.engine,
                u.user,
                authProtocol=auth_id,
                authKey=u.auth_key.reveal() if u.auth_key else None,
                privProtocol=priv_id,
                privKey=u.priv_key.reveal() if u.priv_key else None,
            )

    def trap(
        self,
        user_name: str,
        level: str,
        varbinds: Sequence[tuple[Any, Any]],
        *,
        context_engine_id: bytes | None = None,
        context_name: bytes = b"",
        request_id: int | None = None,
        pdu: Any = None,
    ) -> bytes:
        """One SNMPv2-Trap-PDU (or ``pdu``) with ``varbinds`` (pysnmp objects), as pysnmp encodes it."""
        from pysnmp.carrier.asyncio.dgram import udp
        from pysnmp.proto import rfc1902
        from pysnmp.proto.api import v2c

        if pdu is None:
            pdu = v2c.SNMPv2TrapPDU()
            v2c.apiTrapPDU.set_defaults(pdu)
            v2c.apiTrapPDU.set_varbinds(pdu, list(varbinds))
        if request_id is not None:
            v2c.apiPDU.set_request_id(pdu, request_id)
        self.engine.message_dispatcher.send_pdu(
            self.engine,
            udp.DOMAIN_NAME,
            ("127.0.0.1", 162),
            3,
            3,
            rfc1902.OctetString(user_name),
            LEVELS[level],
            context_engine_id if context_engine_id is not None else self.engine_id,
            context_name,
            1,
            pdu,
            False,
        )
        return self.sent.pop()


class PysnmpReading:
    """trapd's V3Receiver (the pysnmp engine) as an oracle: bytes in, notification or drop reason out."""

    def __init__(
        self, users: Sequence[V3User], engine_id: bytes = bytes.fromhex("80004fb805deadbeef")
    ) -> None:
        self.stats = ListenerStats()
        self.got: list[RawNotification] = []
        self.receiver = V3Receiver(users, self._on, self.stats, engine_id=engine_id)

    def _on(self, raw: RawNotification) -> bool:
        self.got.append(raw)
        return True

    def read(self, data: bytes, received_at: float = 0.0) -> RawNotification | str:
        """The RawNotification pysnmp made of ``data``, or the drop reason it was counted under."""
        before = dict(self.stats.dropped)
        self.got.clear()
        self.receiver.receive(data, ("127.0.0.1", 50000), lambda d, a: None, received_at)
        if self.got:
            return self.got[0]
        for reason, n in self.stats.dropped.items():
            if n != before.get(reason, 0):
                return reason
        return "nothing"


def random_varbinds(rng: random.Random, count: int | None = None) -> list[tuple[Any, Any]]:
    """sysUpTime.0, snmpTrapOID.0 and random varbinds of every SNMPv2 type (pysnmp objects)."""
    from pysnmp.proto import rfc1902, rfc1905

    def oid() -> tuple[int, ...]:
        n = rng.randint(2, 20)
        arcs = [1, 3, 6, 1] + [rng.choice((rng.randint(0, 127), rng.randint(0, 2**32 - 1))) for _ in range(n)]
        return tuple(arcs)

    def value() -> Any:
        kind = rng.randrange(13)
        if kind == 0:
            return rfc1902.Integer32(rng.randint(-(2**31), 2**31 - 1))
        if kind == 1:
            return rfc1902.OctetString(
                bytes(rng.randrange(256) for _ in range(rng.choice((0, 1, 5, 64, 300))))
            )
        if kind == 2:
            return rfc1902.ObjectIdentifier(oid())
        if kind == 3:
            return rfc1902.IpAddress(bytes(rng.randrange(256) for _ in range(4)))
        if kind == 4:
            return rfc1902.Counter32(rng.randint(0, 2**32 - 1))
        if kind == 5:
            return rfc1902.Gauge32(rng.randint(0, 2**32 - 1))
        if kind == 6:
            return rfc1902.TimeTicks(rng.randint(0, 2**32 - 1))
        if kind == 7:
            return rfc1902.Opaque(bytes(rng.randrange(256) for _ in range(rng.randint(0, 12))))
        if kind == 8:
            return rfc1902.Counter64(rng.randint(0, 2**64 - 1))
        if kind == 9:
            return rfc1905.noSuchObject
        if kind == 10:
            return rfc1905.noSuchInstance
        if kind == 11:
            return rfc1905.endOfMibView
        return rfc1902.Null("")

    n = rng.randint(0, 8) if count is None else count
    head = [
        (rfc1902.ObjectName("1.3.6.1.2.1.1.3.0"), rfc1902.TimeTicks(rng.randint(0, 2**32 - 1))),
        (rfc1902.ObjectName("1.3.6.1.6.3.1.1.4.1.0"), rfc1902.ObjectIdentifier(oid())),
    ]
    return head + [(rfc1902.ObjectName(oid()), value()) for _ in range(n)]


def link_down_varbinds(seq: int = 0) -> list[tuple[Any, Any]]:
    """A 5-varbind linkDown, like the benchmark's and a switch's."""
    from pysnmp.proto import rfc1902

    return [
        (rfc1902.ObjectName("1.3.6.1.2.1.1.3.0"), rfc1902.TimeTicks(123456)),
        (rfc1902.ObjectName("1.3.6.1.6.3.1.1.4.1.0"), rfc1902.ObjectIdentifier("1.3.6.1.6.3.1.1.5.3")),
        (rfc1902.ObjectName("1.3.6.1.2.1.2.2.1.1.17"), rfc1902.Integer32(17)),
        (rfc1902.ObjectName("1.3.6.1.2.1.2.2.1.7.17"), rfc1902.Integer32(2)),
        (rfc1902.ObjectName("1.3.6.1.2.1.2.2.1.8.17"), rfc1902.Integer32(2)),
        (rfc1902.ObjectName("1.3.6.1.2.1.2.2.1.2.17"), rfc1902.OctetString(b"GigabitEthernet1/0/17")),
        (rfc1902.ObjectName("1.3.6.1.4.1.99999.2"), rfc1902.Counter32(seq)),
    ]


def comparable(raw: RawNotification) -> tuple[Any, ...]:
    """What both paths must agree on (everything but the receive time)."""
    vbs: list[RawVarBind] = list(raw.varbinds)
    return (raw.version, raw.kind, raw.source, raw.source_port, raw.security, vbs, raw.request_id)


# --- hand-built messages (for what pysnmp's engine will not produce) ----------------


def encode_pdu(pdu: Any) -> bytes:
    from pyasn1.codec.ber import encoder

    return bytes(encoder.encode(pdu))


def trap_pdu(varbinds: Sequence[tuple[Any, Any]], request_id: int = 4242, tag: str = "trap") -> bytes:
    """A v2c PDU ("trap", "inform", "response", "get", "report") with ``varbinds``, BER by pyasn1."""
    from pysnmp.proto.api import v2c

    cls = {
        "trap": v2c.SNMPv2TrapPDU,
        "inform": v2c.InformRequestPDU,
        "response": v2c.ResponsePDU,
        "get": v2c.GetRequestPDU,
        "report": v2c.ReportPDU,
    }[tag]
    pdu = cls()
    v2c.apiPDU.set_defaults(pdu)
    v2c.apiPDU.set_request_id(pdu, request_id)
    v2c.apiPDU.set_varbinds(pdu, list(varbinds))
    return encode_pdu(pdu)


def scoped_pdu(pdu: bytes, context_engine_id: bytes = b"", context_name: bytes = b"") -> bytes:
    from trapd.listener.ber import encode_tlv

    return encode_tlv(0x30, encode_tlv(0x04, context_engine_id) + encode_tlv(0x04, context_name) + pdu)


def craft(
    keys: Any,
    engine_id: bytes,
    user_name: bytes,
    scoped: bytes,
    *,
    boots: int = 1,
    etime: int = 1000,
    flags: int | None = None,
    salt: bytes = b"\x00\x00\x00\x01\x00\x00\x00\x2a",
    msg_id: int = 12345,
    max_size: int = 65507,
    security_model: int = 3,
    mac_override: bytes | None = None,
    salt_field: bytes | None = None,
    ciphertext_override: bytes | None = None,
    after_usm: bytes = b"",
) -> bytes:
    """A v3 message built by hand around ``scoped`` with ``keys`` (a usm.LocalizedUser).

    Encrypted and authenticated as the keys' level says. ``flags`` overrides
    the msgFlags octet (not the processing); ``mac_override``, ``salt_field``
    and ``ciphertext_override`` put other bytes in those fields (the MAC is
    still computed over the result unless ``mac_override`` is given). ``after_usm``: octets
    inside msgSecurityParameters after the UsmSecurityParameters SEQUENCE.
    """
    import hmac as hmac_module

    from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    from trapd.listener.ber import encode_integer_content, encode_tlv

    def integer(v: int) -> bytes:
        return encode_tlv(0x02, encode_integer_content(v))

    level = keys.level
    if level == 3:
        # The sender's side with cryptography's own CBC / CFB modes (the receiver uses ECB + XOR).
        if keys.priv_protocol == "DES":
            padded = scoped + bytes(-len(scoped) % 8)
            iv = (keys.des_pre_iv ^ int.from_bytes(salt, "big")).to_bytes(8, "big")
            enc = Cipher(TripleDES(keys.priv_key[:8] * 3), modes.CBC(iv)).encryptor()
            body = enc.update(padded) + enc.finalize()
        else:
            iv = boots.to_bytes(4, "big") + etime.to_bytes(4, "big") + salt
            enc = Cipher(algorithms.AES(keys.priv_key), CFB(iv)).encryptor()
            body = enc.update(scoped) + enc.finalize()
        msg_data = encode_tlv(0x04, body if ciphertext_override is None else ciphertext_override)
        priv_params = salt if salt_field is None else salt_field
    else:
        msg_data = scoped
        priv_params = b""
    mac_len = keys.mac_length if level > 1 else 0
    if flags is None:
        flags = {1: 0, 2: 1, 3: 3}[level]

    def build(mac: bytes) -> bytes:
        usm = (
            encode_tlv(
                0x30,
                encode_tlv(0x04, engine_id)
                + integer(boots)
                + integer(etime)
                + encode_tlv(0x04, user_name)
                + encode_tlv(0x04, mac)
                + encode_tlv(0x04, priv_params),
            )
            + after_usm
        )
        header = encode_tlv(
            0x30,
            integer(msg_id) + integer(max_size) + encode_tlv(0x04, bytes([flags])) + integer(security_model),
        )
        return encode_tlv(0x30, integer(3) + header + encode_tlv(0x04, usm) + msg_data)

    whole = build(bytes(mac_len))
    if mac_override is not None:
        return build(mac_override)
    if level > 1:
        mac = hmac_module.digest(keys.auth_key, whole, keys.hash_name)[:mac_len]
        whole = build(mac)
    return whole
