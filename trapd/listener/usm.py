"""The fast SNMPv3 path: USM traps from configured senders, without pysnmp.

pysnmp's engine costs about 1,700 µs per v3 trap (nearly all of it pyasn1)
and, in 7.1, keeps memory per trap. In a storm almost every v3 message is
the same kind: an SNMPv2-Trap-PDU from a switch whose engine ID a user is
bound to in the configuration. This module handles exactly those, with
hashlib/hmac for authentication, the ``cryptography`` package for
decryption and trapd's own BER primitives for parsing, and hands everything
else back to pysnmp (:class:`trapd.listener.v3.V3Receiver`)::

    UsmFastPath.receive(datagram) -> RawNotification   a trap it handled
                                  -> None              "not mine": give it to pysnmp
                                  raises Refused       a drop, with a reason from DROP_REASONS

What it takes: a message whose (msgAuthoritativeEngineID, msgUserName) pair
is a configured user bound to that engine (``engine_ids``), or a user with
no ``engine_ids`` from an engine it learned (below), not addressed to
trapd's own engine ID, not reportable (RFC 3412 sends Unconfirmed-class PDUs
with the reportable flag clear), with a well-formed header, and whose scoped
PDU turns out to be an SNMPv2-Trap-PDU with error-status and error-index 0
and varbinds the fast decoder accepts.

What it declines (pysnmp decides, exactly as without this module): informs
and anything else sent to trapd's engine ID (trapd is authoritative there and
must answer), discovery probes, reportable messages, unknown users, engines
a user is not bound to, a new engine of a user with no ``engine_ids`` until a
message from it verified (V3Receiver counts the failures), non-USM security
models, any header field outside pysnmp's ASN.1 constraints, and authentic
messages whose PDU is not a plain trap or that the fast varbind decoder
refuses. A decline costs the header walk only, or also the HMAC and
decryption for the rare authentic oddity.

What it refuses itself (the message is certainly dropped, pysnmp would drop
it too, and a second opinion would cost 1.7 ms): a security level other than
the user's (``unsupported-security-level``; pysnmp would call a level above
the user's a digest or decryption failure, trapd names the cause), a wrong
HMAC (``wrong-digest``), a message outside the time window or replayed
(``not-in-time-window``), and a ciphertext that does not decrypt to a scoped
PDU (``decryption-error``).

Keys (RFC 3414 A.2, RFC 7860): the passphrase is stretched to 1 MiB and
hashed once per user, then localized with each bound engine ID, when the
configuration is loaded (for a user with no ``engine_ids``, once per engine
it learns); nothing is derived per packet. The privacy key is
derived with the user's authentication hash. AES-192/256 need more key than
MD5, SHA-1 (and SHA-224 for AES-256) produce; the key is extended as in
draft-blumenthal-aes-usm-04 section 3.1.2.1 (append the hash of the key so
far), which is what net-snmp 5.9's AES-192/AES-256 do and what pysnmp calls
``USM_PRIV_CFB*_AES_BLUMENTHAL``. (The "Reeder" extension, which Cisco's
AES-192/256 use, re-runs password-to-key on the localized key; trapd's
configuration has no name for it.)

Timeliness (RFC 3414 3.2 step 7b, as net-snmp applies it): for traps the
sender is the authoritative engine, so trapd keeps its own notion of each
sender engine's (boots, time), learned from the first authentic message and
advanced by every newer authentic trap. An authentic message is refused as
``not-in-time-window`` when its boots is 2^31-1, or lower than the latest
seen for that engine, or equal with an engineTime more than 150 s before the
latest seen. The notion is not extrapolated with trapd's clock: a sender
whose clock drifts, or that is silent for days, must not lose its next trap.
That leaves one gap the RFC window cannot close (re-sending a quiet sender's
last message), so every accepted message's MAC is also remembered for as long
as the window could accept it (bounded per engine): an exact re-send is
``not-in-time-window`` with detail ``replayed``. The notion lives in memory
and survives configuration reloads, not restarts: after a restart the first
authentic message from each engine is believed, as in every USM receiver.
pysnmp, for comparison, overwrites its notion with every authentic message
before checking it, so it accepts any replay; the fast path is stricter.
noAuthNoPriv messages carry nothing authentic, so they have no window.
"""

from __future__ import annotations

import hashlib
import hmac
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from trapd.listener.ber import (
    INT32_MAX,
    INT32_MIN,
    TAG_INTEGER,
    TAG_OCTET_STRING,
    TAG_SEQUENCE,
    Rejected,
    decode_integer,
    expect,
    read_header,
)
from trapd.listener.config import V3User
from trapd.listener.fastpath import MAX_MESSAGE, decode_varbinds
from trapd.listener.raw import RawNotification, Security, SecurityLevel

__all__ = [
    "AUTH_PROTOCOLS",
    "PRIV_KEY_SIZES",
    "TIME_WINDOW",
    "LocalizedUser",
    "Refused",
    "UsmFastPath",
    "extend_key_blumenthal",
    "localize_key",
    "localized_user",
    "password_to_key",
]

# Auth protocol -> (hashlib name, length of the MAC in the message): RFC 3414 (HMAC-96) and RFC 7860.
AUTH_PROTOCOLS: Final[dict[str, tuple[str, int]]] = {
    "MD5": ("md5", 12),
    "SHA": ("sha1", 12),
    "SHA-224": ("sha224", 16),
    "SHA-256": ("sha256", 24),
    "SHA-384": ("sha384", 32),
    "SHA-512": ("sha512", 48),
}
# Priv protocol -> octets of localized key it uses (DES: 8 of key + 8 of pre-IV, RFC 3414 8.1.1.1).
PRIV_KEY_SIZES: Final[dict[str, int]] = {"DES": 16, "AES-128": 16, "AES-192": 24, "AES-256": 32}

TIME_WINDOW: Final = 150  # seconds, RFC 3414 section 2.2.3
ENGINE_BOOTS_MAX: Final = 2147483647
# How many accepted MACs are remembered per sender engine for replay detection.
REPLAY_MEMORY: Final = 4096

_PASSWORD_STREAM: Final = 1048576  # RFC 3414 A.2.1: hash 1 MiB of the repeated passphrase
_MSG_MAX_SIZE_MIN: Final = 484  # RFC 3412 msgMaxSize (484..2147483647)
_USER_NAME_MAX: Final = 32  # RFC 3414 msgUserName SIZE (0..32)
_PDU_V2_TRAP: Final = 0xA7
_ZERO_ERROR_FIELDS: Final = b"\x02\x01\x00\x02\x01\x00"
_LEVELS: Final[dict[int, int]] = {0: 1, 1: 2, 3: 3}  # msgFlags auth/priv bits -> securityLevel
_LEVEL_NAMES: Final[dict[int, SecurityLevel]] = {1: "noAuthNoPriv", 2: "authNoPriv", 3: "authPriv"}
_FLAG_REPORTABLE: Final = 0x04


class Refused(Exception):
    """A v3 message the fast path drops: ``reason`` is one of stats.DROP_REASONS, ``detail`` finer."""

    __slots__ = ("detail", "reason")

    def __init__(self, reason: str, detail: str | None = None) -> None:
        super().__init__(reason, detail)
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}" if self.detail else self.reason


# --- keys ---------------------------------------------------------------------


def password_to_key(password: bytes, hash_name: str) -> bytes:
    """RFC 3414 A.2.1 (and RFC 7860 for SHA-2): hash 1 MiB of the repeated passphrase.

    The result (Ku, the "master key") depends on the passphrase only; it is
    localized per engine with :func:`localize_key`.
    """
    if not password:
        raise ValueError("an empty SNMPv3 passphrase has no key")
    stream = (password * (_PASSWORD_STREAM // len(password) + 1))[:_PASSWORD_STREAM]
    return hashlib.new(hash_name, stream).digest()


def localize_key(master: bytes, engine_id: bytes, hash_name: str) -> bytes:
    """RFC 3414 A.2.2: Kul = H(Ku || engineID || Ku)."""
    return hashlib.new(hash_name, master + engine_id + master).digest()


def extend_key_blumenthal(localized: bytes, hash_name: str, size: int) -> bytes:
    """A localized key extended to ``size`` octets (draft-blumenthal-aes-usm-04 3.1.2.1).

    Each round appends the hash of everything so far. This is net-snmp's
    AES-192/AES-256 and pysnmp's ``*_AES_BLUMENTHAL``; a key that is long
    enough is only truncated.
    """
    key = localized
    while len(key) < size:
        key += hashlib.new(hash_name, key).digest()
    return key[:size]


@dataclass(frozen=True, slots=True, eq=False)
class LocalizedUser:
    """One configured user localized to one sender engine, ready for the receive path.

    Built once per (user, engine ID) when the configuration is loaded.
    ``blocks`` is a long-lived ECB context of the ``cryptography`` package
    with the privacy key set: an AES encryptor (AES-CFB128 decryption needs
    only the forward cipher) or a DES decryptor (single DES as TripleDES with
    K1 = K2 = K3). Only whole blocks are ever fed to it, so it never buffers
    a remainder that would shift the next message. ``des_pre_iv`` is the
    second half of the DES privacy key as an int, XORed with each salt.
    """

    name: str
    level: int  # securityLevel the user is configured for: 1, 2, 3
    hash_name: str = ""
    mac_length: int = 0
    auth_key: bytes = field(default=b"", repr=False)
    priv_protocol: str = "none"
    blocks: Any = field(default=None, repr=False)
    des_pre_iv: int = field(default=0, repr=False)
    priv_key: bytes = field(default=b"", repr=False)  # the localized (extended) key the contexts hold

    @property
    def level_name(self) -> SecurityLevel:
        return _LEVEL_NAMES[self.level]


def localized_user(
    user: V3User, engine_id: bytes, masters: dict[tuple[str, str], bytes] | None = None
) -> LocalizedUser:
    """The keys of ``user`` for messages whose authoritative engine is ``engine_id``.

    ``masters`` caches password-to-key results by (hash name, passphrase)
    across calls, so a user bound to many engines pays the 1 MiB hash once.
    """
    masters = {} if masters is None else masters
    level = {"noAuthNoPriv": 1, "authNoPriv": 2, "authPriv": 3}[user.level]
    if level == 1:
        return LocalizedUser(user.user, 1)
    hash_name, mac_length = AUTH_PROTOCOLS[user.auth_protocol]

    def localized(secret: Any) -> bytes:
        password = secret.reveal()
        master = masters.get((hash_name, password))
        if master is None:
            master = masters[(hash_name, password)] = password_to_key(password.encode(), hash_name)
        return localize_key(master, engine_id, hash_name)

    auth_key = localized(user.auth_key)
    if level == 2:
        return LocalizedUser(user.user, 2, hash_name, mac_length, auth_key)
    priv = user.priv_protocol
    priv_key = extend_key_blumenthal(localized(user.priv_key), hash_name, PRIV_KEY_SIZES[priv])
    if priv == "DES":
        des = Cipher(TripleDES(priv_key[:8] * 3), modes.ECB()).decryptor()
        pre_iv = int.from_bytes(priv_key[8:16], "big")
        return LocalizedUser(user.user, 3, hash_name, mac_length, auth_key, priv, des, pre_iv, priv_key)
    aes = Cipher(algorithms.AES(priv_key), modes.ECB()).encryptor()
    return LocalizedUser(user.user, 3, hash_name, mac_length, auth_key, priv, aes, 0, priv_key)


# --- timeliness -----------------------------------------------------------------


@dataclass(slots=True)
class EngineTime:
    """trapd's notion of one sender engine's clock (RFC 3414 snmpEngineBoots / latestReceivedEngineTime).

    ``recent`` maps the MAC of each accepted message to its engineTime, for
    replay detection; entries leave once the window would refuse them anyway,
    or when the engine sent more than REPLAY_MEMORY messages within a window.
    """

    boots: int
    time: int
    recent: dict[bytes, int] = field(default_factory=dict)

    def check(self, boots: int, etime: int, mac: bytes) -> None:
        """Raise :class:`Refused` unless (boots, time) is within the window of this notion."""
        if self.boots == ENGINE_BOOTS_MAX or boots < self.boots:
            raise Refused("not-in-time-window", "old-boots")
        if boots == self.boots:
            if etime < self.time - TIME_WINDOW:
                raise Refused("not-in-time-window", "old-time")
            if mac in self.recent:
                raise Refused("not-in-time-window", "replayed")

    def accept(self, boots: int, etime: int, mac: bytes) -> None:
        """Advance the notion with an accepted message (RFC 3414 3.2 step 7b.1) and remember its MAC."""
        if boots > self.boots:
            self.boots, self.time = boots, etime
            self.recent.clear()  # every older MAC now fails the boots check
        elif etime > self.time:
            self.time = etime
        recent = self.recent
        recent[mac] = etime
        if len(recent) > REPLAY_MEMORY:
            oldest = self.time - TIME_WINDOW
            kept = {m: t for m, t in recent.items() if t >= oldest}
            if len(kept) > REPLAY_MEMORY // 2:
                # A sender faster than REPLAY_MEMORY per window: keep the newest half
                # (insertion order is arrival order). Older MACs within the window
                # then rely on the time check alone.
                kept = dict(list(kept.items())[-(REPLAY_MEMORY // 2) :])
            self.recent = kept


# --- the receive path -------------------------------------------------------------


class UsmFastPath:
    """Decides, decrypts and decodes v3 traps from bound sender engines (see the module doc).

    ``users``: the configured v3 users; those with ``engine_ids`` are
    localized to each of their engines now. A user with no ``engine_ids``
    accepts any sender engine (as :class:`V3Receiver` does): the first
    message from a new engine whose HMAC verifies with keys localized to that
    engine teaches the pair, up to ``max_learned_engines`` pairs; a message
    that does not verify, or beyond the cap, goes to pysnmp (which counts it).
    ``own_engine_id``: trapd's engine ID (messages to it always go to
    pysnmp). ``timelines``: the per-engine time notions of a previous
    instance, to keep across a configuration reload.

    ``accepted`` counts traps handled; ``declined`` counts messages handed
    back by reason (a slug), for benchmarks and tests. ``Refused`` is the
    exception class, so a caller can catch it without importing this module
    (and ``cryptography``) when no v3 user is configured.
    """

    Refused: ClassVar[type[Refused]] = Refused

    def __init__(
        self,
        users: Iterable[V3User],
        own_engine_id: bytes,
        *,
        timelines: dict[bytes, EngineTime] | None = None,
        max_learned_engines: int = 1024,
    ) -> None:
        self.own_engine_id = own_engine_id
        self._users: dict[tuple[bytes, bytes], LocalizedUser] = {}
        self._masters: dict[tuple[str, str], bytes] = {}
        self._any_engine: dict[bytes, V3User] = {}
        self._max_learned = max_learned_engines
        for user in users:
            if not user.engine_ids:
                if user.level != "noAuthNoPriv":  # nothing to verify a new engine with
                    self._any_engine[user.user.encode()] = user
                    self._prepare_masters(user)
                continue
            for engine_id in user.engine_ids:
                if engine_id == own_engine_id:
                    continue
                self._users[(engine_id, user.user.encode())] = localized_user(user, engine_id, self._masters)
        engines = {engine for engine, _ in self._users}
        # Learned engines come back with their first message after a reload; keep their notions.
        self.timelines: dict[bytes, EngineTime] = {
            e: t for e, t in (timelines or {}).items() if e in engines or self._any_engine
        }
        self.learned = 0
        self.accepted = 0
        self.declined: Counter[str] = Counter()

    def _prepare_masters(self, user: V3User) -> None:
        """Hash an any-engine user's passphrases now, so learning an engine costs two short hashes."""
        localized_user(user, b"", self._masters)

    def _learn(
        self, engine_id: bytes, user_name: bytes, flags: int, data: bytes, mac_at: int, mac: bytes
    ) -> LocalizedUser:
        """Keys for a new engine of an any-engine user, if this message proves them (RFC 3414 3.2 step 6).

        Anything short of an authentic message at the user's own level is
        declined: V3Receiver then applies the same rules and counts the drop.
        """
        user = self._any_engine.get(user_name)
        if user is None or engine_id == self.own_engine_id:
            raise _Decline("not-bound")
        if not 4 < len(engine_id) < 33 or self.learned >= self._max_learned:
            raise _Decline("not-learned")
        keys = localized_user(user, engine_id, self._masters)
        if (
            _LEVELS.get(flags & 0x03) != keys.level
            or len(mac) != keys.mac_length
            or not _authentic(keys, data, mac_at)
        ):
            raise _Decline("not-learned")  # V3Receiver counts it (wrong-digest / unlearned-engine)
        self._users[(engine_id, user_name)] = keys
        self.learned += 1
        return keys

    @property
    def pairs(self) -> Sequence[tuple[bytes, bytes]]:
        """The (engine ID, user name) pairs handled here."""
        return tuple(self._users)

    def receive(self, data: bytes, source: str, port: int, received_at: float) -> RawNotification | None:
        """One v3 datagram: a trap, None (pysnmp's), or :class:`Refused`. Raises nothing else."""
        try:
            return self._receive(data, source, port, received_at)
        except Refused:
            raise
        except _Decline as exc:
            self.declined[exc.slug] += 1
            return None
        except Rejected as exc:
            self.declined[f"header-{exc.reason}"] += 1
            return None
        except Exception as exc:  # a bug must not cost more than this datagram's fast path
            self.declined[f"internal-{type(exc).__name__}"] += 1
            return None

    def _receive(self, data: bytes, source: str, port: int, received_at: float) -> RawNotification:
        size = len(data)
        if size > MAX_MESSAGE:
            raise _Decline("oversized")
        start, end = expect(data, 0, size, TAG_SEQUENCE)
        if end != size:
            raise _Decline("trailing-bytes")
        a, pos = expect(data, start, end, TAG_INTEGER)
        if data[a:pos] != b"\x03":
            raise _Decline("not-v3")
        # msgGlobalData ::= SEQUENCE { msgID, msgMaxSize, msgFlags, msgSecurityModel }
        global_start, global_end = expect(data, pos, end, TAG_SEQUENCE)
        a, p = expect(data, global_start, global_end, TAG_INTEGER)
        decode_integer(data, a, p, 0, INT32_MAX)
        a, p = expect(data, p, global_end, TAG_INTEGER)
        decode_integer(data, a, p, _MSG_MAX_SIZE_MIN, INT32_MAX)
        a, p = expect(data, p, global_end, TAG_OCTET_STRING)
        if p - a != 1:
            raise _Decline("msg-flags")
        flags = data[a]
        a, p = expect(data, p, global_end, TAG_INTEGER)
        if data[a:p] != b"\x03" or p != global_end:
            raise _Decline("security-model")
        # msgSecurityParameters: OCTET STRING holding UsmSecurityParameters (RFC 3414 2.4)
        params_start, msg_data = expect(data, global_end, end, TAG_OCTET_STRING)
        usm_start, usm_end = expect(data, params_start, msg_data, TAG_SEQUENCE)
        if usm_end != msg_data:
            raise _Decline("usm-trailing-bytes")
        a, p = expect(data, usm_start, usm_end, TAG_OCTET_STRING)
        engine_id = data[a:p]
        a, p = expect(data, p, usm_end, TAG_INTEGER)
        boots = decode_integer(data, a, p, 0, INT32_MAX)
        a, p = expect(data, p, usm_end, TAG_INTEGER)
        etime = decode_integer(data, a, p, 0, INT32_MAX)
        a, p = expect(data, p, usm_end, TAG_OCTET_STRING)
        user_name = data[a:p]
        mac_at, p = expect(data, p, usm_end, TAG_OCTET_STRING)
        mac = data[mac_at:p]
        a, p = expect(data, p, usm_end, TAG_OCTET_STRING)
        salt = data[a:p]
        if p != usm_end or len(user_name) > _USER_NAME_MAX:
            raise _Decline("usm-parameters")

        if flags & _FLAG_REPORTABLE:
            raise _Decline("reportable")
        user = self._users.get((engine_id, user_name))
        if user is None:  # discovery, informs to trapd, unknown users, unbound or new engines
            user = self._learn(engine_id, user_name, flags, data, mac_at, mac)
        level = _LEVELS.get(flags & 0x03)
        if level is None:
            raise _Decline("msg-flags")  # privacy without authentication: invalid, pysnmp counts it
        if level != user.level:
            detail = "below-user-level" if level < user.level else "above-user-level"
            raise Refused("unsupported-security-level", detail)

        timeline = None
        if level > 1:
            # RFC 3414 3.2 step 6 / RFC 7860: HMAC over the whole message, MAC field zeroed.
            if len(mac) != user.mac_length:
                raise Refused("wrong-digest", "mac-length")
            if not _authentic(user, data, mac_at):
                raise Refused("wrong-digest")
            if boots == ENGINE_BOOTS_MAX:
                raise Refused("not-in-time-window", "boots-max")
            timeline = self.timelines.get(engine_id)
            if timeline is not None:
                timeline.check(boots, etime, mac)

        if level == 3:
            a, p = expect(data, msg_data, end, TAG_OCTET_STRING)
            if p != end:
                raise _Decline("msg-data")
            scoped = self._decrypt(user, data[a:p], boots, etime, salt)
            s, e = 0, len(scoped)  # padding after the ScopedPDU is ignored (RFC 3414 8.3.2)
        else:
            scoped, s, e = data, msg_data, end
        try:
            # ScopedPDU ::= SEQUENCE { contextEngineID, contextName, data }
            s, scoped_end = expect(scoped, s, e, TAG_SEQUENCE)
            if level < 3 and scoped_end != e:
                raise Rejected("trailing-bytes")
            a, p = expect(scoped, s, scoped_end, TAG_OCTET_STRING)
            context_engine_id = scoped[a:p]
            a, p = expect(scoped, p, scoped_end, TAG_OCTET_STRING)
            context_name = scoped[a:p]
            tag, pdu_start, pdu_end = read_header(scoped, p, scoped_end)
            if pdu_end != scoped_end:
                raise Rejected("trailing-bytes")
        except Rejected as exc:
            if level == 3:
                # What a wrong privacy key gives (pysnmp: decryptionError too).
                raise Refused("decryption-error", f"scoped-pdu-{exc.reason}") from None
            raise _Decline(f"scoped-pdu-{exc.reason}") from None
        if tag != _PDU_V2_TRAP:
            raise _Decline("not-a-trap")
        try:
            # SNMPv2-Trap-PDU: request-id, error-status, error-index, VarBindList
            a, p = expect(scoped, pdu_start, pdu_end, TAG_INTEGER)
            request_id = decode_integer(scoped, a, p, INT32_MIN, INT32_MAX)
            if scoped[p : p + 6] != _ZERO_ERROR_FIELDS:
                raise _Decline("error-fields")  # pysnmp has opinions on odd ones: let it decide
            vb_start, vb_end = expect(scoped, p + 6, pdu_end, TAG_SEQUENCE)
            if vb_end != pdu_end:
                raise _Decline("pdu-trailing-bytes")
            varbinds = decode_varbinds(scoped, vb_start, vb_end, False)
        except Rejected as exc:
            # Authentic, but a shape the fast decoder refuses: pysnmp gets the final say.
            raise _Decline(f"varbinds-{exc.reason}") from None

        if level > 1:
            if timeline is None:
                timeline = self.timelines[engine_id] = EngineTime(boots, etime)
            timeline.accept(boots, etime, mac)
        self.accepted += 1
        return RawNotification(
            version="v3",
            kind="trap",
            source=source,
            source_port=port,
            security=Security(
                user=user.name,
                level=user.level_name,
                engine_id=engine_id.hex(),
                context_engine_id=context_engine_id.hex(),
                context_name=context_name.decode("utf-8", "backslashreplace"),
            ),
            varbinds=varbinds,
            received_at=received_at,
            request_id=request_id,
        )

    @staticmethod
    def _decrypt(user: LocalizedUser, ciphertext: bytes, boots: int, etime: int, salt: bytes) -> bytes:
        """CBC / CFB-128 decryption as one ECB pass and one XOR.

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


def _authentic(user: LocalizedUser, data: bytes, mac_at: int) -> bool:
    """RFC 3414 6.3.2 / RFC 7860: HMAC over the whole message with the MAC field zeroed.

    The caller has checked that the field at ``mac_at`` is ``user.mac_length`` octets.
    """
    length = user.mac_length
    zeroed = data[:mac_at] + bytes(length) + data[mac_at + length :]
    digest = hmac.digest(user.auth_key, zeroed, user.hash_name)[:length]
    return hmac.compare_digest(digest, data[mac_at : mac_at + length])


class _Decline(Exception):
    """Internal: hand the message to pysnmp; ``slug`` says why (counted in ``declined``)."""

    __slots__ = ("slug",)

    def __init__(self, slug: str) -> None:
        super().__init__(slug)
        self.slug = slug
