"""The SNMPv3 message header, read once: the one walker every v3 receive path uses.

An SNMPv3 message (RFC 3412 section 6, RFC 3414 section 2.4)::

    SEQUENCE { msgVersion 3,
               msgGlobalData SEQUENCE { msgID, msgMaxSize, msgFlags, msgSecurityModel },
               msgSecurityParameters OCTET STRING (UsmSecurityParameters:
                   SEQUENCE { engineID, engineBoots, engineTime, userName, authParams, privParams }),
               msgData (a ScopedPDU, or its encryption) }

:func:`parse_header` walks it up to ``msgData`` with the fast path's BER
primitives (:mod:`trapd.listener.ber`: bounds-checked, no copies until a value
is taken) and records every field, plus where the MAC sits (to verify the
HMAC over the message with that field zeroed) and where ``msgData`` starts.

It enforces only the *structure*: anything that is not that shape raises
:class:`HeaderError`. Whether each value is acceptable is the caller's policy:
the fast USM path (:mod:`trapd.listener.v3.usm`) holds the fields to pysnmp's
ASN.1 constraints and declines what falls outside them, so that pysnmp
(:mod:`trapd.listener.v3.receiver`) still gets the final word on odd messages.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from trapd.listener.ber import TAG_INTEGER, TAG_OCTET_STRING, TAG_SEQUENCE, Rejected, decode_integer, expect

__all__ = ["HeaderError", "V3Header", "parse_header"]

# Integers of the header are decoded whatever their value (up to the nine octets
# decode_integer takes); their ranges are the caller's policy.
_ANY_LOW: Final = -(1 << 71)
_ANY_HIGH: Final = (1 << 71) - 1
_LEVELS: Final[dict[int, int]] = {0: 1, 1: 2, 3: 3}  # msgFlags auth/priv bits -> securityLevel (0: invalid)


class HeaderError(ValueError):
    """The datagram is not a well-formed SNMPv3 message header; ``reason`` is a slug (a metric label)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True, slots=True)
class V3Header:
    """The header fields of one v3 message, and where its MAC and msgData are in the datagram.

    For a security model other than USM (3) the USM fields are empty and
    ``msg_data`` is 0: nothing past msgGlobalData was read.
    """

    msg_id: int
    flags: int
    security_model: int
    engine_id: bytes
    engine_boots: int
    engine_time: int
    user: bytes
    auth_params: bytes
    auth_params_offset: int  # where the auth parameters' value starts in the datagram
    max_size: int = 0
    priv_params: bytes = b""
    msg_data: int = 0  # offset of msgData (the ScopedPDU or its ciphertext)
    # False when a constructed field holds bytes after its last member (msgGlobalData,
    # the security parameters OCTET STRING or the UsmSecurityParameters SEQUENCE).
    exact: bool = True

    @property
    def level(self) -> int:
        """securityLevel from msgFlags: 1 noAuthNoPriv, 2 authNoPriv, 3 authPriv; 0: priv without auth."""
        return _LEVELS.get(self.flags & 0x03, 0)

    @property
    def reportable(self) -> bool:
        return bool(self.flags & 0x04)

    @property
    def is_discovery(self) -> bool:
        """An engine-ID discovery probe (RFC 3414 section 4): no engine, no user."""
        return not self.engine_id and not self.user


def parse_header(data: bytes) -> V3Header:
    """Walk an SNMPv3 message up to msgData (see the module doc); :class:`HeaderError` if it is not one."""
    try:
        return _parse(data)
    except Rejected as exc:
        raise HeaderError(exc.reason) from None


def _parse(data: bytes) -> V3Header:
    size = len(data)
    start, end = expect(data, 0, size, TAG_SEQUENCE)
    if end != size:
        raise HeaderError("trailing-bytes")
    a, pos = expect(data, start, end, TAG_INTEGER)
    if decode_integer(data, a, pos, _ANY_LOW, _ANY_HIGH) != 3:
        raise HeaderError("not-version-3")
    global_start, global_end = expect(data, pos, end, TAG_SEQUENCE)
    a, p = expect(data, global_start, global_end, TAG_INTEGER)
    msg_id = decode_integer(data, a, p, _ANY_LOW, _ANY_HIGH)
    a, p = expect(data, p, global_end, TAG_INTEGER)
    max_size = decode_integer(data, a, p, _ANY_LOW, _ANY_HIGH)
    a, p = expect(data, p, global_end, TAG_OCTET_STRING)
    if p - a != 1:
        raise HeaderError("bad-msg-flags")
    flags = data[a]
    a, p = expect(data, p, global_end, TAG_INTEGER)
    model = decode_integer(data, a, p, _ANY_LOW, _ANY_HIGH)
    exact = p == global_end
    params_start, params_end = expect(data, global_end, end, TAG_OCTET_STRING)
    if model != 3:
        return V3Header(msg_id, flags, model, b"", 0, 0, b"", b"", 0, max_size, exact=exact)
    usm_start, usm_end = expect(data, params_start, params_end, TAG_SEQUENCE)
    a, p = expect(data, usm_start, usm_end, TAG_OCTET_STRING)
    engine_id = data[a:p]
    a, p = expect(data, p, usm_end, TAG_INTEGER)
    boots = decode_integer(data, a, p, _ANY_LOW, _ANY_HIGH)
    a, p = expect(data, p, usm_end, TAG_INTEGER)
    etime = decode_integer(data, a, p, _ANY_LOW, _ANY_HIGH)
    a, p = expect(data, p, usm_end, TAG_OCTET_STRING)
    user = data[a:p]
    auth_at, p = expect(data, p, usm_end, TAG_OCTET_STRING)
    auth = data[auth_at:p]
    a, p = expect(data, p, usm_end, TAG_OCTET_STRING)
    priv = data[a:p]
    exact = exact and p == usm_end and usm_end == params_end
    return V3Header(
        msg_id, flags, model, engine_id, boots, etime, user, auth, auth_at, max_size, priv, params_end, exact
    )
