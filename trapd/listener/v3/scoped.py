"""The ScopedPDU of an SNMPv3 message: decrypted if need be, read with trapd's BER decoder.

The one reader of a v3 message's PDU, for both receive paths: the fast USM
path (:mod:`trapd.listener.v3.usm`) and the receiver that runs pysnmp's engine
(:mod:`trapd.listener.v3.receiver`), which leaves USM and the answers to
pysnmp but takes the notification's contents from here. pyasn1 is laxer than
trapd's decoder (long-form tags, indefinite lengths, constructed strings,
sub-identifiers of 2^32 and more, OIDs of any length, an INTEGER without
content octets); reading every PDU here means the same bytes make the same
varbinds in v1, v2c and v3, or are refused for the same reason
(:data:`trapd.listener.ber.REJECT_REASONS`)::

    ScopedPDU ::= SEQUENCE { contextEngineID OCTET STRING, contextName OCTET STRING, data PDU }
"""

from __future__ import annotations

from dataclasses import dataclass

from trapd.listener.ber import TAG_OCTET_STRING, TAG_SEQUENCE, Rejected, expect, read_header
from trapd.listener.fastpath import decode_pdu_body
from trapd.listener.raw import RawVarBind
from trapd.listener.v3.errors import Refused
from trapd.listener.v3.header import V3Header
from trapd.listener.v3.keys import LocalizedUser

__all__ = ["ScopedPdu", "decrypt", "plaintext", "read_scoped_pdu"]


@dataclass(frozen=True, slots=True)
class ScopedPdu:
    """A ScopedPDU's context and where its PDU lies in ``data`` (the plaintext)."""

    context_engine_id: bytes
    context_name: bytes
    tag: int  # the PDU's: 0xA7 SNMPv2-Trap, 0xA6 InformRequest, ...
    data: bytes
    pdu_start: int
    pdu_end: int

    def fields(self) -> tuple[int, int, int, list[RawVarBind]]:
        """(request-id, error-status, error-index, varbinds); :class:`Rejected` as for a v2c PDU."""
        return decode_pdu_body(self.data, self.pdu_start, self.pdu_end)


def plaintext(header: V3Header, data: bytes, user: LocalizedUser | None) -> tuple[bytes, int, int]:
    """msgData in the clear: ``(buffer, start, end)`` of the ScopedPDU.

    authPriv (``user`` required): msgData is an OCTET STRING that must end the
    message, decrypted with ``user``'s privacy key (:class:`Refused` when it
    cannot be); otherwise the ScopedPDU is in the datagram itself. A framing
    error of msgData raises :class:`Rejected`.
    """
    end = len(data)
    if header.level != 3:
        return data, header.msg_data, end
    if user is None:
        raise ValueError("an authPriv message needs its user's keys")
    start, stop = expect(data, header.msg_data, end, TAG_OCTET_STRING)
    if stop != end:
        raise Rejected("trailing-bytes", f"{end - stop} octets after msgData")
    scoped = decrypt(user, data[start:stop], header.engine_boots, header.engine_time, header.priv_params)
    return scoped, 0, len(scoped)


def read_scoped_pdu(data: bytes, start: int, end: int, padded: bool) -> ScopedPdu:
    """The ScopedPDU at ``data[start:end]``; :class:`Rejected` unless it is one.

    ``padded``: octets may follow it (a decrypted one: RFC 3414 8.3.2 ignores
    the cipher's padding); otherwise it must end at ``end``. The PDU must end
    where the ScopedPDU does.
    """
    pos, scoped_end = expect(data, start, end, TAG_SEQUENCE)
    if not padded and scoped_end != end:
        raise Rejected("trailing-bytes", f"{end - scoped_end} octets after the ScopedPDU")
    a, pos = expect(data, pos, scoped_end, TAG_OCTET_STRING)
    context_engine_id = data[a:pos]
    a, pos = expect(data, pos, scoped_end, TAG_OCTET_STRING)
    context_name = data[a:pos]
    tag, pdu_start, pdu_end = read_header(data, pos, scoped_end)
    if pdu_end != scoped_end:
        raise Rejected("trailing-bytes", f"{scoped_end - pdu_end} octets after the PDU")
    return ScopedPdu(context_engine_id, context_name, tag, data, pdu_start, pdu_end)


def decrypt(user: LocalizedUser, ciphertext: bytes, boots: int, etime: int, salt: bytes) -> bytes:
    """CBC / CFB-128 decryption as one ECB pass and one XOR; :class:`Refused` (decryption-error).

    Both modes combine each ciphertext block with the previous one (the IV
    first), so a whole message is one call on the user's long-lived ECB
    context and one big-int XOR: no cipher object per message, which
    halves the cost of decryption.
    """
    if len(salt) != 8:
        raise Refused("decryption-error", "salt-length")
    size = len(ciphertext)
    if user.priv_protocol == "DES":
        # RFC 3414 8.1.1.1 / 8.3.2: IV = pre-IV XOR salt; CBC needs whole 8-octet blocks.
        # P[i] = D(C[i]) XOR C[i-1], C[-1] = IV.
        if size % 8:
            raise Refused("decryption-error", "des-block-length")
        iv = (user.des_pre_iv ^ int.from_bytes(salt, "big")).to_bytes(8, "big")
        block_out = user.blocks.update(ciphertext)
        mask = iv + ciphertext[:-8] if size else b""
    else:
        # RFC 3826 3.1.2.1: IV = engineBoots (4) | engineTime (4) | salt (8).
        # CFB-128: P[i] = C[i] XOR E(C[i-1]), C[-1] = IV; the last block may be partial.
        iv = boots.to_bytes(4, "big") + etime.to_bytes(4, "big") + salt
        block_out = ciphertext
        mask = user.blocks.update(iv + ciphertext[: (size - 1) // 16 * 16])[:size] if size else b""
    return (int.from_bytes(block_out, "big") ^ int.from_bytes(mask, "big")).to_bytes(size, "big")
