"""USM keys and the HMAC check: the one implementation both v3 receive paths use.

Keys (RFC 3414 A.2, RFC 7860): the passphrase is stretched to 1 MiB and
hashed once per user (:func:`password_to_key`, the "master key" Ku), then
localized with each sender engine ID (:func:`localize_key`, Kul). The privacy
key is derived with the user's authentication hash. AES-192/256 need more key
than MD5, SHA-1 (and SHA-224 for AES-256) produce, and there are two ways to
extend it, both offered by net-snmp 5.9's snmptrap/snmpinform:

* ``AES-192`` / ``AES-256`` (net-snmp's ``-x AES-192`` / ``AES-256``, pysnmp's
  ``USM_PRIV_CFB*_AES_BLUMENTHAL``): draft-blumenthal-aes-usm-04 section
  3.1.2.1, append the hash of the key so far (:func:`extend_key_blumenthal`);
* ``AES-192-C`` / ``AES-256-C`` (net-snmp's ``-x AES-192-C`` / ``AES-256-C``,
  Cisco's "aes 192/256", pysnmp's ``USM_PRIV_CFB*_AES``):
  draft-reeder-snmpv3-usm-3desede-00 section 2.1, append the key so far run
  through password-to-key and localized again (:func:`extend_key_reeder`).

A key long enough already is only truncated, so the two agree there.

Instead of a passphrase a user may be given its master key Ku (net-snmp's
``-3m``/``-3M``) or its key localized to one engine ID (``-3k``/``-3K``), in hex
(``auth_key_type`` / ``priv_key_type``, checked in :mod:`trapd.listener.config`):
a master key is localized like a passphrase's Ku, a localized key is used as
given (a privacy key shorter than the protocol needs is extended as above).

The fast path (:mod:`trapd.listener.v3.usm`) localizes every user to its
bound engines when the configuration is loaded; the pysnmp-fed receiver
(:mod:`trapd.listener.v3.receiver`) registers the same localized keys with
pysnmp and verifies the message of a new engine with :func:`authentic`
before it teaches pysnmp that engine. tests/test_usm_keys.py holds both to
the RFC test vectors and to pysnmp's own derivation.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from trapd.listener.config import PRIV_KEY_SIZES, V3User, key_octets
from trapd.listener.raw import SecurityLevel

__all__ = [
    "AUTH_PROTOCOLS",
    "LEVEL_NAMES",
    "PRIV_KEY_SIZES",
    "LocalizedUser",
    "MasterKeys",
    "authentic",
    "extend_key_blumenthal",
    "extend_key_reeder",
    "level_mismatch",
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
LEVEL_NAMES: Final[dict[int, SecurityLevel]] = {1: "noAuthNoPriv", 2: "authNoPriv", 3: "authPriv"}
LEVEL_NUMBERS: Final[dict[str, int]] = {name: n for n, name in LEVEL_NAMES.items()}


def level_mismatch(level: int, user_level: int) -> str | None:
    """The ``unsupported-security-level`` detail for a message at ``level`` to a user configured
    at ``user_level`` (both paths hold a trap sender to its user's level), or None if they match."""
    if level == user_level:
        return None
    return "below-user-level" if level < user_level else "above-user-level"


_PASSWORD_STREAM: Final = 1048576  # RFC 3414 A.2.1: hash 1 MiB of the repeated passphrase

# (hash name, passphrase) -> Ku: the 1 MiB hash is done once per passphrase and hash, however
# many engines and paths use it.
MasterKeys = dict[tuple[str, str], bytes]


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


def extend_key_reeder(localized: bytes, engine_id: bytes, hash_name: str, size: int) -> bytes:
    """A localized key extended to ``size`` octets (draft-reeder-snmpv3-usm-3desede-00 2.1).

    Each round appends the key so far as a passphrase: password-to-key, then
    localized to ``engine_id``. This is Cisco's AES-192/256, net-snmp's
    AES-192-C/AES-256-C and pysnmp's ``USM_PRIV_CFB*_AES``.
    """
    key = localized
    while len(key) < size:
        key += localize_key(password_to_key(key, hash_name), engine_id, hash_name)
    return key[:size]


def extend_priv_key(localized: bytes, engine_id: bytes, hash_name: str, priv_protocol: str) -> bytes:
    """The localized privacy key at the length ``priv_protocol`` uses, extended its way."""
    size = PRIV_KEY_SIZES[priv_protocol]
    if priv_protocol.endswith("-C"):
        return extend_key_reeder(localized, engine_id, hash_name, size)
    return extend_key_blumenthal(localized, hash_name, size)


def master_key(secret: Any, hash_name: str, masters: MasterKeys, key_type: str = "passphrase") -> bytes:
    """Ku of a key secret: a master key as given (net-snmp's -3m), or a passphrase's, from
    ``masters`` or computed into it."""
    if key_type == "master":
        return key_octets(secret.reveal())
    password = secret.reveal()
    master = masters.get((hash_name, password))
    if master is None:
        master = masters[(hash_name, password)] = password_to_key(password.encode(), hash_name)
    return master


def _localized_key(
    secret: Any, key_type: str, engine_id: bytes, hash_name: str, masters: MasterKeys
) -> bytes:
    """Kul of a key secret for ``engine_id``: a localized key as given (net-snmp's -3k; the
    configuration binds it to its one engine, V3User.keys_work_at), else Ku localized."""
    if key_type == "localized":
        return key_octets(secret.reveal())
    return localize_key(master_key(secret, hash_name, masters, key_type), engine_id, hash_name)


@dataclass(frozen=True, slots=True, eq=False)
class LocalizedUser:
    """One configured user localized to one sender engine, ready for the receive path.

    Built once per (user, engine ID). ``blocks`` is a long-lived ECB context
    of the ``cryptography`` package with the privacy key set: an AES
    encryptor (AES-CFB128 decryption needs only the forward cipher) or a DES
    decryptor (single DES as TripleDES with K1 = K2 = K3). Only whole blocks
    are ever fed to it, so it never buffers a remainder that would shift the
    next message. ``des_pre_iv`` is the second half of the DES privacy key as
    an int, XORed with each salt.
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
        return LEVEL_NAMES[self.level]


def localized_user(user: V3User, engine_id: bytes, masters: MasterKeys | None = None) -> LocalizedUser:
    """The keys of ``user`` for messages whose authoritative engine is ``engine_id``.

    ``masters`` caches password-to-key results by (hash name, passphrase)
    across calls, so a user bound to many engines pays the 1 MiB hash once.
    A user with a localized key has keys for its one engine only: ValueError for another.
    """
    masters = {} if masters is None else masters
    level = LEVEL_NUMBERS[user.level]
    if level == 1:
        return LocalizedUser(user.user, 1)
    if not user.keys_work_at(engine_id):
        raise ValueError(f"v3 user {user.user} has a key localized for another engine than {engine_id.hex()}")
    hash_name, mac_length = AUTH_PROTOCOLS[user.auth_protocol]
    auth_key = _localized_key(user.auth_key, user.auth_key_type, engine_id, hash_name, masters)
    if level == 2:
        return LocalizedUser(user.user, 2, hash_name, mac_length, auth_key)
    priv = user.priv_protocol
    priv_localized = _localized_key(user.priv_key, user.priv_key_type, engine_id, hash_name, masters)
    priv_key = extend_priv_key(priv_localized, engine_id, hash_name, priv)
    if priv == "DES":
        des = Cipher(TripleDES(priv_key[:8] * 3), modes.ECB()).decryptor()
        pre_iv = int.from_bytes(priv_key[8:16], "big")
        return LocalizedUser(user.user, 3, hash_name, mac_length, auth_key, priv, des, pre_iv, priv_key)
    aes = Cipher(algorithms.AES(priv_key), modes.ECB()).encryptor()
    return LocalizedUser(user.user, 3, hash_name, mac_length, auth_key, priv, aes, 0, priv_key)


def authentic(user: LocalizedUser, data: bytes, mac_at: int) -> bool:
    """RFC 3414 6.3.2 / RFC 7860: HMAC over the whole message with the MAC field zeroed.

    The caller has checked that the field at ``mac_at`` is ``user.mac_length`` octets.
    """
    length = user.mac_length
    zeroed = data[:mac_at] + bytes(length) + data[mac_at + length :]
    digest = hmac.digest(user.auth_key, zeroed, user.hash_name)[:length]
    return hmac.compare_digest(digest, data[mac_at : mac_at + length])
