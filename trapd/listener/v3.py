"""SNMPv3 notifications: pysnmp's engine, fed from trapd's own sockets.

trapd reads every datagram itself (``trapd.listener.udp``) and hands v3 ones
to :meth:`V3Receiver.receive`. The receiver pushes the bytes straight into a
pysnmp 7 engine's message dispatcher, so pysnmp keeps doing what is hard to
get exactly right: USM (authentication, decryption, time windows), engine-ID
discovery reports, and the Response-PDU for v3 informs. pysnmp never opens a
socket: the engine's transport dispatcher is :class:`_ReplyDispatcher`, whose
``send_message`` writes through the socket the request came in on, to the
peer it came from.

Around the engine the receiver does a few things of its own:

* It reads the message header with a small BER walker (:func:`parse_header`)
  before pysnmp does, to classify drops precisely (unknown user vs. a known
  user from an engine it is not bound to) and to count discovery probes.
* Users whose ``engine_ids`` list is empty accept traps from *any* sender
  engine. pysnmp cannot do that by itself: USM keys are localized to the
  sender's engine ID, and pysnmp's "wildcard engine" (``0000000000``) rows
  only work for noAuthNoPriv because their keys are localized to the wildcard.
  So the receiver verifies the HMAC of a message from a new engine itself
  (cheap: the passphrase is hashed once at start-up; localizing is one hash)
  and registers the user for that engine with pysnmp only once a message
  authenticated. Forged engine IDs therefore cost a hash and never grow
  pysnmp's tables; learned engines are capped (``max_learned_engines``).
* It holds a trap sender to the security level its user is configured
  with: pysnmp (RFC 3414 3.2.5) checks the level only on the authoritative
  side, so it would take an authNoPriv trap for an authPriv user.
* It works around pysnmp 7.1's per-trap memory growth (see
  :class:`_BoundedUsm`) and keeps pysnmp's snmpEngineBoots file in trapd's
  state directory (:func:`_make_engine`).

Time windows: pysnmp enforces them for messages to trapd's own engine
(informs: a stale one gets a notInTimeWindow report). For traps the sender is
authoritative, and pysnmp overwrites its notion of the sender's boots/time
with the message's own values before the RFC 3414 3.2.7b check, so a
replayed trap is not refused; replay protection for traps would need a check
of trapd's own.

pysnmp's outcome for each message is read from an instrumented v3 message
processing model (:class:`_RecordingMP`), which sees the ``errorIndication``
of every failure, and from the notification callback for successes.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trapd.listener.config import V3User
from trapd.listener.raw import (
    DEFER_ACK,
    Oid,
    RawNotification,
    RawVarBind,
    Security,
    SecurityLevel,
    SnmpType,
)
from trapd.listener.stats import ListenerStats

# Reply path: (datagram, peer address) -> None. Bound per received datagram
# to the socket that received it.
SendTo = Callable[[bytes, tuple[Any, ...]], None]
# May return False to say "not handed on" (then a v3 inform is not acknowledged).
OnNotification = Callable[[RawNotification], object]
OnDrop = Callable[[str, "str | None", str], None]

SECURITY_LEVELS: dict[int, SecurityLevel] = {1: "noAuthNoPriv", 2: "authNoPriv", 3: "authPriv"}
_LEVEL_NUMBERS: dict[str, int] = {name: n for n, name in SECURITY_LEVELS.items()}

# Hash function and truncated digest length per auth protocol (RFC 3414, RFC 7860).
_AUTH_HASH: dict[str, tuple[Callable[..., Any], int]] = {
    "MD5": (hashlib.md5, 12),
    "SHA": (hashlib.sha1, 12),
    "SHA-224": (hashlib.sha224, 16),
    "SHA-256": (hashlib.sha256, 24),
    "SHA-384": (hashlib.sha384, 32),
    "SHA-512": (hashlib.sha512, 48),
}


# ---------------------------------------------------------------------------
# Header pre-parse


class HeaderError(ValueError):
    """The datagram is not a well-formed SNMPv3 message header; the message is a slug (a metric label)."""


@dataclass(frozen=True, slots=True)
class V3Header:
    """What trapd needs from a v3 message before pysnmp sees it."""

    msg_id: int
    flags: int
    security_model: int
    engine_id: bytes
    engine_boots: int
    engine_time: int
    user: bytes
    auth_params: bytes
    auth_params_offset: int  # where the auth parameters' value starts in the datagram

    @property
    def level(self) -> int:
        return {0: 1, 1: 2, 3: 3}.get(self.flags & 0x03, 0)

    @property
    def reportable(self) -> bool:
        return bool(self.flags & 0x04)

    @property
    def is_discovery(self) -> bool:
        """An engine-ID discovery probe (RFC 3414 section 4): no engine, no user."""
        return not self.engine_id and not self.user


def _tlv(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, value start, value end) of the TLV at ``pos``; definite lengths only."""
    if pos + 2 > end:
        raise HeaderError("truncated")
    tag = data[pos]
    length = data[pos + 1]
    pos += 2
    if length & 0x80:
        n = length & 0x7F
        if n == 0 or n > 4 or pos + n > end:
            raise HeaderError("bad-length")
        length = int.from_bytes(data[pos : pos + n], "big")
        pos += n
    if pos + length > end:
        raise HeaderError("truncated")
    return tag, pos, pos + length


def _int(data: bytes, pos: int, end: int) -> tuple[int, int]:
    tag, s, e = _tlv(data, pos, end)
    if tag != 0x02 or not 0 < e - s <= 5:
        raise HeaderError("expected-integer")
    return int.from_bytes(data[s:e], "big", signed=True), e


def _octets(data: bytes, pos: int, end: int) -> tuple[bytes, int, int]:
    tag, s, e = _tlv(data, pos, end)
    if tag != 0x04:
        raise HeaderError("expected-octet-string")
    return data[s:e], s, e


def parse_header(data: bytes) -> V3Header:
    """Walk an SNMPv3 message up to its USM security parameters (RFC 3412, 3414).

    Raises :class:`HeaderError` for anything that is not that shape; the
    scoped PDU is left to pysnmp (it may be encrypted).
    """
    tag, s, end = _tlv(data, 0, len(data))
    if tag != 0x30 or end != len(data):
        raise HeaderError("not-a-sequence")
    version, pos = _int(data, s, end)
    if version != 3:
        raise HeaderError("not-version-3")
    tag, hs, he = _tlv(data, pos, end)
    if tag != 0x30:
        raise HeaderError("bad-msg-global-data")
    msg_id, p = _int(data, hs, he)
    _max_size, p = _int(data, p, he)
    flags, _, p = _octets(data, p, he)
    if len(flags) != 1:
        raise HeaderError("bad-msg-flags")
    model, p = _int(data, p, he)
    _params, ps, pe = _octets(data, he, end)
    if model != 3:
        return V3Header(msg_id, flags[0], model, b"", 0, 0, b"", b"", 0)
    tag, us, ue = _tlv(data, ps, pe)
    if tag != 0x30:
        raise HeaderError("bad-usm-parameters")
    engine_id, _, p = _octets(data, us, ue)
    boots, p = _int(data, p, ue)
    etime, p = _int(data, p, ue)
    user, _, p = _octets(data, p, ue)
    auth, auth_at, p = _octets(data, p, ue)
    _priv, _, p = _octets(data, p, ue)
    return V3Header(msg_id, flags[0], model, engine_id, boots, etime, user, auth, auth_at)


# ---------------------------------------------------------------------------
# Varbinds: pyasn1 -> raw.py tuples


def _type_table() -> dict[Any, SnmpType]:
    from pysnmp.proto import rfc1902, rfc1905

    return {
        rfc1902.Integer32.tagSet: "Integer32",
        rfc1902.OctetString.tagSet: "OctetString",
        rfc1902.Null.tagSet: "Null",
        rfc1902.ObjectIdentifier.tagSet: "ObjectIdentifier",
        rfc1902.IpAddress.tagSet: "IpAddress",
        rfc1902.Counter32.tagSet: "Counter32",
        rfc1902.Gauge32.tagSet: "Gauge32",  # same tag as Unsigned32
        rfc1902.TimeTicks.tagSet: "TimeTicks",
        rfc1902.Opaque.tagSet: "Opaque",
        rfc1902.Counter64.tagSet: "Counter64",
        rfc1905.NoSuchObject.tagSet: "noSuchObject",
        rfc1905.NoSuchInstance.tagSet: "noSuchInstance",
        rfc1905.EndOfMibView.tagSet: "endOfMibView",
    }


_TYPES: dict[Any, SnmpType] | None = None


def varbinds_from_pysnmp(var_binds: Iterable[tuple[Any, Any]]) -> list[RawVarBind]:
    """pysnmp (name, value) pairs to ``(oid, type, value)`` with raw.py's exact Python types."""
    global _TYPES
    if _TYPES is None:
        _TYPES = _type_table()
    out: list[RawVarBind] = []
    for name, value in var_binds:
        oid: Oid = tuple(int(x) for x in name)
        t = _TYPES.get(value.tagSet)
        if t is None:
            # A type outside SNMPv2-SMI (cannot come out of pysnmp's v2c PDU
            # spec, but never let it through unnamed): keep the octets.
            out.append((oid, "Opaque", bytes(value.asOctets()) if hasattr(value, "asOctets") else b""))
            continue
        v: Any
        if t in ("Integer32", "Counter32", "Gauge32", "TimeTicks", "Counter64"):
            v = int(value)
        elif t in ("OctetString", "Opaque"):
            v = bytes(value.asOctets())
        elif t == "ObjectIdentifier":
            v = tuple(int(x) for x in value)
        elif t == "IpAddress":
            v = socket.inet_ntoa(bytes(value.asOctets()))
        else:
            v = None
        out.append((oid, t, v))
    return out


# ---------------------------------------------------------------------------
# Engine ID


def default_engine_id() -> bytes:
    """A stable engine ID for this host (RFC 3411 format 5, pysnmp's enterprise 20408).

    Derived from /etc/machine-id (or the host name) so that it survives
    restarts: v3 inform senders cache it, and a changing ID would make them
    rediscover it (or fail) after every restart.
    """
    try:
        with open("/etc/machine-id", "rb") as f:
            seed = f.read().strip()
    except OSError:
        seed = b""
    seed = seed or socket.gethostname().encode()
    return bytes.fromhex("80004fb805") + hashlib.sha256(b"trapd-engine:" + seed).digest()[:8]


# ---------------------------------------------------------------------------
# pysnmp plumbing


def _pysnmp_protocols(user: V3User) -> tuple[Any, Any]:
    from pysnmp.entity import config as pc

    auth = {
        "none": pc.USM_AUTH_NONE,
        "MD5": pc.USM_AUTH_HMAC96_MD5,
        "SHA": pc.USM_AUTH_HMAC96_SHA,
        "SHA-224": pc.USM_AUTH_HMAC128_SHA224,
        "SHA-256": pc.USM_AUTH_HMAC192_SHA256,
        "SHA-384": pc.USM_AUTH_HMAC256_SHA384,
        "SHA-512": pc.USM_AUTH_HMAC384_SHA512,
    }[user.auth_protocol]
    # AES-192/256: the Blumenthal key extension (draft-blumenthal-aes-usm-04),
    # which is what net-snmp's "AES-192"/"AES-256" use.
    priv = {
        "none": pc.USM_PRIV_NONE,
        "DES": pc.USM_PRIV_CBC56_DES,
        "AES-128": pc.USM_PRIV_CFB128_AES,
        "AES-192": pc.USM_PRIV_CFB192_AES_BLUMENTHAL,
        "AES-256": pc.USM_PRIV_CFB256_AES_BLUMENTHAL,
    }[user.priv_protocol]
    return auth, priv


@dataclass(slots=True)
class _UserKeys:
    """A configured user with its passphrases hashed once (RFC 3414 A.2 master keys)."""

    config: V3User
    auth_id: Any
    priv_id: Any
    auth_master: bytes | None
    priv_master: bytes | None

    def localized_auth_key(self, engine_id: bytes) -> bytes:
        hash_fn, _ = _AUTH_HASH[self.config.auth_protocol]
        assert self.auth_master is not None
        return bytes(hash_fn(self.auth_master + engine_id + self.auth_master).digest())

    def digest_ok(self, data: bytes, header: V3Header) -> bool:
        """Check the message's HMAC ourselves (RFC 3414 6.3.2 / RFC 7860)."""
        hash_fn, length = _AUTH_HASH[self.config.auth_protocol]
        if len(header.auth_params) != length:
            return False
        at = header.auth_params_offset
        zeroed = data[:at] + bytes(length) + data[at + length :]
        mac = hmac.new(self.localized_auth_key(header.engine_id), zeroed, hash_fn).digest()[:length]
        return hmac.compare_digest(mac, header.auth_params)


def _make_keys(user: V3User) -> _UserKeys:
    from pysnmp.entity import config as pc

    auth_id, priv_id = _pysnmp_protocols(user)
    auth_master = priv_master = None
    if user.auth_protocol != "none" and user.auth_key is not None:
        auth_master = bytes(pc.AUTH_SERVICES[auth_id].hash_passphrase(user.auth_key.reveal().encode()))
    if user.priv_protocol != "none" and user.priv_key is not None:
        priv_master = bytes(
            pc.PRIV_SERVICES[priv_id].hash_passphrase(auth_id, user.priv_key.reveal().encode())
        )
    return _UserKeys(user, auth_id, priv_id, auth_master, priv_master)


class _PeerAddress(tuple):  # type: ignore[type-arg]
    """A pysnmp transport address that remembers the socket to answer through.

    pysnmp hands the address it was given back to ``send_message`` (it is
    cached with the request state), so the reply path travels with it.
    """

    reply: SendTo | None = None

    # pysnmp's AbstractTransportAddress interface
    def get_local_address(self) -> Any:
        return None

    def set_local_address(self, _s: Any) -> _PeerAddress:
        return self

    def clone(self, localAddress: Any = None) -> _PeerAddress:
        c = _PeerAddress(self)
        c.reply = self.reply
        return c


def _make_dispatcher(on_send: Callable[[bytes, Any], None]) -> Any:
    from pysnmp.carrier.base import AbstractTransportDispatcher

    class _ReplyDispatcher(AbstractTransportDispatcher):  # type: ignore[misc]
        """pysnmp's transport dispatcher, minus transports: replies go out through trapd's socket."""

        def send_message(self, outgoingMessage: Any, transportDomain: Any, transportAddress: Any) -> None:
            on_send(bytes(outgoingMessage), transportAddress)

    d = _ReplyDispatcher()
    # Timer ticks drive pysnmp's cache expiry; trapd calls tick() once a second.
    d.set_timer_resolution(1.0)
    return d


def _make_usm() -> Any:
    from pysnmp.proto.secmod.rfc3414.service import SnmpUSMSecurityModel

    class _ExpiryQueue(dict):  # type: ignore[type-arg]
        """pysnmp's USM timeline expiry queue, with one entry per engine per slot.

        pysnmp 7.1 appends the sender's engine ID to a list in this queue
        on *every* authenticated message, and only drops the list 300 s
        later: at R traps/s it holds 300 x R pyasn1 OctetStrings (~490 B
        each). That is the "v3 leak": it plateaus only after five minutes,
        at 150 MB for 1,000 traps/s. Turning each slot's list into a set
        keeps the same expiry behaviour with one entry per engine.
        """

        def __setitem__(self, key: Any, value: Any) -> None:
            super().__setitem__(key, _AppendSet(value))

    class _AppendSet(set):  # type: ignore[type-arg]
        def append(self, item: Any) -> None:
            self.add(bytes(item))

    class _BoundedUsm(SnmpUSMSecurityModel):  # type: ignore[misc]
        def __init__(self) -> None:
            super().__init__()
            # The expiry deletes timeline entries by the bytes stored here; the
            # timeline dict is keyed by pyasn1 OctetStrings, which hash and
            # compare equal to their bytes, so the deletion still finds them.
            self._SnmpUSMSecurityModel__timelineExpQueue = _ExpiryQueue()

    return _BoundedUsm()


def _make_recording_mp() -> Any:
    from pyasn1.error import PyAsn1Error
    from pysnmp.proto import error as perror
    from pysnmp.proto.mpmod.rfc3412 import SnmpV3MessageProcessingModel

    class _RecordingMP(SnmpV3MessageProcessingModel):  # type: ignore[misc]
        """The v3 message processing model, remembering why the last message failed."""

        last_error: Any = None

        def prepare_data_elements(self, *args: Any) -> Any:
            try:
                return super().prepare_data_elements(*args)
            except perror.StatusInformation as exc:
                self.last_error = exc.get("errorIndication") if hasattr(exc, "get") else exc
                raise
            except PyAsn1Error:
                self.last_error = "asn1"
                raise

    return _RecordingMP()


# errorIndication class name -> drop reason
_REASONS = {
    "UnknownSecurityName": "unknown-user",
    "UnknownUserName": "unknown-user",
    "UnknownEngineID": "unknown-engine-id",
    "EngineIDMismatch": "unknown-engine-id",
    "AuthenticationFailure": "wrong-digest",
    "WrongDigest": "wrong-digest",
    "AuthenticationError": "wrong-digest",
    "UnsupportedAuthProtocol": "wrong-digest",
    "DecryptionError": "decryption-error",
    "UnsupportedPrivProtocol": "decryption-error",
    "UnsupportedSecurityLevel": "unsupported-security-level",
    "NotInTimeWindow": "not-in-time-window",
    "UnsupportedPDUtype": "unsupported-pdu",
    "DataMismatch": "unsupported-pdu",
    "UnknownPDUHandler": "unsupported-pdu",
    "ReportPduReceived": "unsupported-pdu",
}


@dataclass(frozen=True, slots=True)
class EngineClock:
    """snmpEngineBoots and the wall-clock second snmpEngineTime counts from, for one engine ID.

    With ``service.workers`` > 1 several processes answer for one engine: a v3
    inform is acknowledged by whichever worker the kernel hands it to, and the
    sender checks boots and time against what it learned before (RFC 3414
    3.2.7). So the supervisor takes the next boots value once
    (:func:`advance_engine_clock`) and every worker pins its engine to it
    (:func:`pin_engine_clock`) instead of counting up the boots file again.
    """

    engine_id: bytes
    boots: int
    started: float  # time.time() when the boots value was taken; snmpEngineTime = now - started


# Set in a worker process before its V3Receiver is built; None: pysnmp's own boots file handling.
_pinned_clock: EngineClock | None = None


def engine_boots_file(engine_id: bytes, state_dir: Path) -> Path:
    """Where pysnmp keeps snmpEngineBoots for ``engine_id`` below ``state_dir`` (see :func:`_make_engine`)."""
    from pysnmp.proto import rfc1902

    name = str(rfc1902.OctetString(engine_id).prettyPrint())
    return state_dir / "__pysnmp" / name / "boots"


def advance_engine_clock(engine_id: bytes, state_dir: Path, now: float | None = None) -> EngineClock:
    """Count snmpEngineBoots up by one in its file, as a starting pysnmp engine would, and return it.

    The same file and format as pysnmp's, so a later single-process trapd
    continues the sequence. Written to a temporary file and renamed: a crash
    leaves the old value or the new one.
    """
    path = engine_boots_file(engine_id, state_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        boots = int(path.read_text().strip()) + 1
    except (OSError, ValueError):
        boots = 1
    boots = max(1, min(boots, 2147483647))  # RFC 3414: 2^31-1 is the last value, kept for good
    tmp = path.with_name(f".boots.{os.getpid()}")
    tmp.write_text(str(boots))
    os.replace(tmp, path)
    return EngineClock(engine_id, boots, time.time() if now is None else now)


def pin_engine_clock(clock: EngineClock | None) -> None:
    """Make every engine built from now on in this process use ``clock`` (None: undo)."""
    global _pinned_clock
    _pinned_clock = clock


def _make_engine(engine_id: bytes, state_dir: Path | None) -> Any:
    """pysnmp's SnmpEngine, keeping its snmpEngineBoots file under ``state_dir``.

    snmpEngineBoots must grow on every restart (RFC 3414 2.2.2: v3 inform
    senders check it against replays). pysnmp stores it in
    ``<tempdir>/__pysnmp/<engine ID>/boots``: as root in world-writable /tmp
    by default, and lost with systemd's PrivateTmp. With a ``state_dir`` the
    file lives with trapd's other state instead.
    """
    import tempfile

    from pysnmp.entity.engine import SnmpEngine
    from pysnmp.proto import rfc1902

    clock = _pinned_clock
    if clock is not None and clock.engine_id == engine_id:
        return _engine_on_clock(clock)
    saved = tempfile.tempdir
    if state_dir is not None:
        tempfile.tempdir = str(state_dir)
    try:
        return SnmpEngine(snmpEngineID=rfc1902.OctetString(engine_id))
    finally:
        tempfile.tempdir = saved


def _engine_on_clock(clock: EngineClock) -> Any:
    """A pysnmp engine with ``clock``'s engine ID, boots and time origin, and no boots file of its own.

    pysnmp counts the boots file up whenever it is given an engine ID at
    construction; built without one it touches no file, and the three MIB
    scalars are then set here the way its constructor would have.
    """
    from pysnmp.entity.engine import SnmpEngine

    engine = SnmpEngine()
    builder = engine.get_mib_builder()
    (eid, boots, etime) = builder.import_symbols(
        "__SNMP-FRAMEWORK-MIB", "snmpEngineID", "snmpEngineBoots", "snmpEngineTime"
    )
    eid.syntax = eid.syntax.clone(clock.engine_id)
    engine.snmpEngineID = eid.syntax
    boots.syntax = boots.syntax.clone(clock.boots)
    # snmpEngineTime stores its origin (a wall-clock second) and reads as now - origin.
    etime.syntax = etime.syntax.clone(int(clock.started))
    return engine


class V3Receiver:
    """Receives SNMPv3 traps and informs through a pysnmp engine that owns no socket.

    ``users``: the configured USM users. ``engine_id``: trapd's own
    (authoritative) engine ID, which v3 informs are addressed to; ``None``
    derives a stable one (:func:`default_engine_id`); its snmpEngineBoots is
    kept under ``state_dir`` when given (see :func:`_make_engine`). ``on_notification`` is
    called synchronously for every accepted notification; ``on_drop(reason,
    detail, source)`` for every dropped message, after ``stats`` counted it.
    """

    def __init__(
        self,
        users: Sequence[V3User],
        on_notification: OnNotification,
        stats: ListenerStats,
        *,
        engine_id: bytes | None = None,
        on_drop: OnDrop | None = None,
        max_learned_engines: int = 1024,
        state_dir: Path | None = None,
    ) -> None:
        from pysnmp.proto.api import v2c

        self.engine_id = engine_id or default_engine_id()
        self._on_notification = on_notification
        self._stats = stats
        self._on_drop = on_drop
        self._max_learned = max_learned_engines
        self._v2c = v2c

        self.engine = _make_engine(self.engine_id, state_dir)
        self._mp = _make_recording_mp()
        self.engine.message_processing_subsystems[3] = self._mp
        self.engine.security_models[3] = _make_usm()
        self._dispatcher = _make_dispatcher(self._send)
        self.engine.register_transport_dispatcher(self._dispatcher)

        self._users: dict[bytes, _UserKeys] = {}
        self._registered: set[tuple[bytes, bytes]] = set()
        self._learned = 0
        for u in users:
            keys = _make_keys(u)
            name = u.user.encode()
            self._users[name] = keys
            self._register(keys, self.engine_id)  # informs are addressed to trapd
            for eid in u.engine_ids:
                self._register(keys, eid)

        self.engine.message_dispatcher.register_context_engine_id(
            b"",  # any context engine ID
            (v2c.SNMPv2TrapPDU.tagSet, v2c.InformRequestPDU.tagSet),
            self._process_pdu,
        )
        # Per-message state, valid during one synchronous receive() call.
        self._current: tuple[V3Header, str, int, float] | None = None
        self._delivered = False
        self._last_tick = 0.0

    # -- configuration -----------------------------------------------------

    def _register(self, keys: _UserKeys, engine_id: bytes) -> None:
        from pysnmp.entity import config as pc

        name = keys.config.user.encode()
        if (engine_id, name) in self._registered:
            return
        pc.add_v3_user(
            self.engine,
            keys.config.user,
            authProtocol=keys.auth_id,
            authKey=keys.auth_master,
            privProtocol=keys.priv_id,
            privKey=keys.priv_master,
            securityEngineId=rfc1902_octets(engine_id),
            authKeyType=pc.USM_KEY_TYPE_MASTER,
            privKeyType=pc.USM_KEY_TYPE_MASTER,
        )
        self._registered.add((engine_id, name))

    # -- receive path ------------------------------------------------------

    def receive(
        self, data: bytes, peer: tuple[Any, ...], reply: SendTo, received_at: float | None = None
    ) -> None:
        """Process one v3 datagram from ``peer``; replies (reports, inform responses) go to ``reply``.

        Never raises: every failure is counted as a drop.
        """
        now = time.time() if received_at is None else received_at
        source = str(peer[0])
        try:
            header = parse_header(data)
        except HeaderError as exc:
            self._drop("malformed", f"v3-{exc}", source)
            return
        if header.security_model != 3:
            self._drop("malformed", "v3-security-model", source)
            return
        if header.level == 0:
            self._drop("malformed", "v3-msg-flags", source)
            return

        if not header.is_discovery and not self._prepare_user(data, header, source):
            return

        addr = _PeerAddress(peer)  # the whole tuple: an IPv6 scope id must survive to the reply
        addr.reply = reply
        domain = (1, 3, 6, 1, 2, 1, 100, 1, 2) if ":" in source else (1, 3, 6, 1, 6, 1, 1)
        self._current = (header, source, int(peer[1]), now)
        self._delivered = False
        self._mp.last_error = None
        try:
            self.engine.message_dispatcher.receive_message(self.engine, domain, addr, data)
        except Exception as exc:  # pysnmp raises assorted errors for odd input
            if not self._delivered:
                self._drop("malformed", f"v3-{type(exc).__name__}", source)
            return
        finally:
            self._current = None
        if self._delivered:
            return
        if header.is_discovery:
            self._stats.v3_discovery += 1
            return
        err = self._mp.last_error
        name = type(err).__name__ if err is not None and not isinstance(err, str) else str(err)
        reason = _REASONS.get(name)
        if reason == "unknown-user" and header.user in self._users:
            reason = "unknown-engine-id"
        if reason is None:
            reason = "malformed" if err is not None else "unsupported-pdu"
        self._drop(reason, name if err is not None else "v3-no-handler", source)

    def _prepare_user(self, data: bytes, header: V3Header, source: str) -> bool:
        """Classify the user early and learn engines for any-engine users. False: dropped."""
        keys = self._users.get(header.user)
        if keys is None:
            return True  # pysnmp answers with a report (informs) and we count unknown-user
        if header.engine_id == self.engine_id:
            return True  # authoritative (informs): pysnmp checks everything and reports
        if header.level < _LEVEL_NUMBERS[keys.config.level]:
            # RFC 3414 3.2.5 only binds the authoritative side, so pysnmp takes
            # an authNoPriv trap for a user configured authPriv. trapd holds a
            # sender to the level its user is configured with.
            self._drop("unsupported-security-level", None, source)
            return False
        if (header.engine_id, header.user) in self._registered:
            return True
        if keys.config.engine_ids:
            self._drop("unknown-engine-id", "not-bound", source)
            return False
        if not 4 < len(header.engine_id) < 33:
            self._drop("unknown-engine-id", "malformed-engine-id", source)
            return False
        if header.level >= 2:
            if keys.auth_master is None:
                self._drop("unsupported-security-level", None, source)
                return False
            if not keys.digest_ok(data, header):
                self._drop("wrong-digest", "unlearned-engine", source)
                return False
        if self._learned >= self._max_learned:
            self._drop("unknown-engine-id", "learn-limit", source)
            return False
        self._register(keys, header.engine_id)
        self._learned += 1
        return True

    def _process_pdu(
        self,
        snmpEngine: Any,
        messageProcessingModel: Any,
        securityModel: Any,
        securityName: Any,
        securityLevel: Any,
        contextEngineId: Any,
        contextName: Any,
        pduVersion: Any,
        PDU: Any,
        maxSizeResponseScopedPDU: Any,
        stateReference: Any,
    ) -> None:
        v2c = self._v2c
        current = self._current
        if current is None:  # not from receive(): ignore
            return
        header, source, port, now = current
        inform = PDU.tagSet == v2c.InformRequestPDU.tagSet
        var_binds = v2c.apiPDU.get_varbinds(PDU)
        self._delivered = True
        raw = RawNotification(
            version="v3",
            kind="inform" if inform else "trap",
            source=source,
            source_port=port,
            security=Security(
                user=bytes(securityName).decode("utf-8", "backslashreplace"),
                level=SECURITY_LEVELS.get(int(securityLevel)),
                engine_id=header.engine_id.hex(),
                context_engine_id=bytes(contextEngineId).hex(),
                context_name=bytes(contextName).decode("utf-8", "backslashreplace"),
            ),
            varbinds=varbinds_from_pysnmp(var_binds),
            received_at=now,
            request_id=int(v2c.apiPDU.get_request_id(PDU)),
        )
        self._stats.received["v3"] += 1

        def respond() -> None:
            """The Response to this inform. pysnmp keeps what it needs to encode it (the
            message's and USM's state, under stateReference) for 600 engine ticks, so it may
            be sent later: once the daemon has journaled what the inform triggered."""
            from pysnmp.proto import error as perror

            rsp = v2c.apiPDU.get_response(PDU)
            v2c.apiPDU.set_error_status(rsp, 0)
            v2c.apiPDU.set_error_index(rsp, 0)
            v2c.apiPDU.set_varbinds(rsp, var_binds)
            try:
                snmpEngine.message_dispatcher.return_response_pdu(
                    snmpEngine,
                    messageProcessingModel,
                    securityModel,
                    securityName,
                    securityLevel,
                    contextEngineId,
                    contextName,
                    pduVersion,
                    rsp,
                    maxSizeResponseScopedPDU,
                    stateReference,
                    {},
                )
            except perror.StatusInformation:
                self._stats.send_errors += 1

        if inform:
            raw.ack = respond
        try:
            answer = self._on_notification(raw)
        except Exception:
            self._stats.callback_errors += 1
            answer = False
        # Acknowledge only what was handed on (otherwise the sender retries), and not now when
        # the callback took the acknowledgement over (DEFER_ACK: it calls raw.ack once journaled).
        if inform and answer is not False and answer is not DEFER_ACK:
            respond()

    def _send(self, message: bytes, address: Any) -> None:
        reply = getattr(address, "reply", None)
        if reply is None:
            self._stats.send_errors += 1
            return
        try:
            reply(message, tuple(address))
            self._stats.v3_replies += 1
        except Exception:
            self._stats.send_errors += 1

    def _drop(self, reason: str, detail: str | None, source: str) -> None:
        self._stats.drop(reason, detail)
        if self._on_drop is not None:
            self._on_drop(reason, detail, source)

    # -- housekeeping ------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        """Drive pysnmp's timers (cache expiry). Call about once a second."""
        self._dispatcher.handle_timer_tick(time.time() if now is None else now)

    @property
    def learned_engines(self) -> int:
        return self._learned


def rfc1902_octets(b: bytes) -> Any:
    from pysnmp.proto import rfc1902

    return rfc1902.OctetString(b)
