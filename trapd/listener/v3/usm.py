"""The fast SNMPv3 path: USM traps from configured senders, without pysnmp.

pysnmp's engine costs about 1,700 µs per v3 trap (nearly all of it pyasn1)
and, in 7.1, keeps memory per trap. In a storm almost every v3 message is
the same kind: an SNMPv2-Trap-PDU from a switch whose engine ID a user is
bound to in the configuration. This module handles exactly those, with
hashlib/hmac for authentication, the ``cryptography`` package for
decryption and trapd's own BER primitives for parsing, and hands everything
else back to pysnmp (:class:`trapd.listener.v3.receiver.V3Receiver`)::

    UsmFastPath.receive(datagram) -> RawNotification   a trap it handled
                                  -> None              "not mine": give it to pysnmp
                                  raises Refused       a drop, with a reason from DROP_REASONS

What it takes: a message whose (msgAuthoritativeEngineID, msgUserName) pair
is a configured user bound to that engine (``engine_ids``), or a user with
no ``engine_ids`` from an engine it learned (below), or a noAuthNoPriv user
with no ``engine_ids`` from any engine (no key: nothing to learn), not addressed to
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

The header is read by the one v3 header walker (:mod:`trapd.listener.v3.header`),
keys and the HMAC come from :mod:`trapd.listener.v3.keys`, and the time window
and replay memory of each sender engine from :mod:`trapd.listener.v3.timeliness`:
the same code the pysnmp-fed path uses. pysnmp, for comparison, overwrites its
notion of a sender's time with every authentic message before checking it,
so it accepts any replay; the fast path is stricter. noAuthNoPriv messages
carry nothing authentic, so they have no window.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import ClassVar, Final

from trapd.listener.ber import INT32_MAX, Rejected
from trapd.listener.config import V3User
from trapd.listener.fastpath import MAX_MESSAGE
from trapd.listener.raw import RawNotification, Security
from trapd.listener.stats import ListenerStats
from trapd.listener.v3.errors import Refused
from trapd.listener.v3.header import HeaderError, V3Header, parse_header
from trapd.listener.v3.keys import (
    AUTH_PROTOCOLS,
    PRIV_KEY_SIZES,
    LocalizedUser,
    MasterKeys,
    authentic,
    extend_key_blumenthal,
    level_mismatch,
    localize_key,
    localized_user,
    password_to_key,
)
from trapd.listener.v3.replay import ReplayMemory
from trapd.listener.v3.scoped import plaintext, read_scoped_pdu
from trapd.listener.v3.timeliness import (
    ENGINE_BOOTS_MAX,
    LEARNED_REPLAY_MEMORY,
    REPLAY_MEMORY,
    TIME_WINDOW,
    EngineTime,
    Timelines,
)

__all__ = [
    "AUTH_PROTOCOLS",
    "PRIV_KEY_SIZES",
    "REPLAY_MEMORY",
    "TIME_WINDOW",
    "EngineTime",
    "LocalizedUser",
    "Refused",
    "UsmFastPath",
    "extend_key_blumenthal",
    "localize_key",
    "localized_user",
    "password_to_key",
]

_MSG_MAX_SIZE_MIN: Final = 484  # RFC 3412 msgMaxSize (484..2147483647)
_USER_NAME_MAX: Final = 32  # RFC 3414 msgUserName SIZE (0..32)
_PDU_V2_TRAP: Final = 0xA7


class UsmFastPath:
    """Decides, decrypts and decodes v3 traps from bound sender engines (see the module doc).

    ``users``: the configured v3 users; those with ``engine_ids`` are
    localized to each of their engines now. A user with no ``engine_ids``
    accepts any sender engine (as :class:`V3Receiver` does): the first
    message from a new engine whose HMAC verifies with keys localized to that
    engine teaches the pair, up to ``max_learned_engines`` pairs: beyond, the
    pair used least recently is pushed out (a flood of made-up engine IDs from
    a key holder cannot keep a real engine out: its next trap teaches it again);
    a message that does not verify goes to pysnmp (which counts it).
    ``own_engine_id``: trapd's engine ID (messages to it always go to
    pysnmp). ``timelines``: the per-engine time notions of a previous
    instance, to keep across a configuration reload (bounded: :class:`Timelines`;
    what it and the learned pairs push out is counted in ``stats.v3_engines_pushed_out``). ``replays``: the
    replay memory shared with the pysnmp-fed path and the other workers
    (:mod:`trapd.listener.v3.replay`); without it only the per-engine memory
    of this instance refuses replays.

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
        timelines: Timelines | None = None,
        max_learned_engines: int = 1024,
        masters: MasterKeys | None = None,
        replays: ReplayMemory | None = None,
        stats: ListenerStats | None = None,
    ) -> None:
        self.own_engine_id = own_engine_id
        self._stats = stats
        self._replays = replays
        self._users: dict[tuple[bytes, bytes], LocalizedUser] = {}
        self._masters: MasterKeys = masters if masters is not None else {}
        self._any_engine: dict[bytes, V3User] = {}
        # noAuthNoPriv users without engine_ids: no key, so nothing to learn an engine by, and
        # any engine may send as them (pysnmp: a row for its wildcard engine).
        self._plain_any: dict[bytes, LocalizedUser] = {}
        self._max_learned = max_learned_engines
        for user in users:
            if not user.engine_ids:
                if user.level == "noAuthNoPriv":
                    self._plain_any[user.user.encode()] = localized_user(user, b"")
                else:
                    self._any_engine[user.user.encode()] = user
                    self._prepare_masters(user)
                continue
            for engine_id in user.engine_ids:
                if engine_id == own_engine_id:
                    continue
                self._users[(engine_id, user.user.encode())] = localized_user(user, engine_id, self._masters)
        engines = {engine for engine, _ in self._users}
        # Learned engines come back with their first message after a reload; keep their notions.
        previous = timelines if timelines is not None else Timelines()
        self.timelines = previous.kept(lambda e: e in engines or bool(self._any_engine))
        self.learned = 0
        # Learned pairs, the one a trap came from last at the end (pushed out from the front).
        self._learned_pairs: dict[tuple[bytes, bytes], None] = {}
        self.accepted = 0
        self.declined: Counter[str] = Counter()

    def _prepare_masters(self, user: V3User) -> None:
        """Hash an any-engine user's passphrases now, so learning an engine costs two short hashes."""
        localized_user(user, b"", self._masters)

    def _learn(self, header: V3Header, data: bytes) -> LocalizedUser:
        """Keys for a new engine of an any-engine user, if this message proves them (RFC 3414 3.2 step 6).

        Anything short of an authentic message at the user's own level is
        declined: V3Receiver then applies the same rules and counts the drop.
        """
        engine_id, user_name = header.engine_id, header.user
        if engine_id == self.own_engine_id:
            raise _Decline("not-bound")
        plain = self._plain_any.get(user_name)
        if plain is not None and 4 < len(engine_id) < 33:
            return plain  # no key: nothing to learn
        user = self._any_engine.get(user_name)
        if user is None:
            raise _Decline("not-bound")
        if not 4 < len(engine_id) < 33:
            raise _Decline("not-learned")
        keys = localized_user(user, engine_id, self._masters)
        if (
            header.level != keys.level
            or len(header.auth_params) != keys.mac_length
            or not authentic(keys, data, header.auth_params_offset)
        ):
            raise _Decline("not-learned")  # V3Receiver counts it (wrong-digest / unlearned-engine)
        if self.learned >= self._max_learned:
            self._push_out(next(iter(self._learned_pairs)))
        self._users[(engine_id, user_name)] = keys
        self._learned_pairs[(engine_id, user_name)] = None
        self.learned += 1
        return keys

    def _push_out(self, pair: tuple[bytes, bytes]) -> None:
        """Forget the learned ``pair`` (the least recently used): its keys and its engine's notion."""
        del self._learned_pairs[pair]
        del self._users[pair]
        self.learned -= 1
        engine_id = pair[0]
        if engine_id in self.timelines and not any(e == engine_id for e, _ in self._users):
            self.timelines.forget(engine_id)
        if self._stats is not None:
            self._stats.v3_engines_pushed_out += 1

    @property
    def pairs(self) -> Sequence[tuple[bytes, bytes]]:
        """The (engine ID, user name) pairs handled here."""
        return tuple(self._users)

    def receive(self, data: bytes, source: str, port: int, received_at: float) -> RawNotification | None:
        """One v3 datagram: a trap, None (pysnmp's), or :class:`Refused`. Raises nothing else."""
        if len(data) > MAX_MESSAGE:
            self.declined["oversized"] += 1
            return None
        try:
            header = parse_header(data)
        except HeaderError as exc:
            self.declined[f"header-{exc.reason}"] += 1
            return None
        return self.receive_header(header, data, source, port, received_at)

    def receive_header(
        self, header: V3Header, data: bytes, source: str, port: int, received_at: float
    ) -> RawNotification | None:
        """:meth:`receive` for a datagram whose header was already read (:func:`parse_header`)."""
        try:
            return self._receive(header, data, source, port, received_at)
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

    def _receive(
        self, header: V3Header, data: bytes, source: str, port: int, received_at: float
    ) -> RawNotification:
        # pysnmp's ASN.1 constraints on the header (RFC 3412, 3414): outside them, pysnmp decides.
        if not 0 <= header.msg_id <= INT32_MAX or not _MSG_MAX_SIZE_MIN <= header.max_size <= INT32_MAX:
            raise _Decline("header-bad-integer")
        if header.security_model != 3:
            raise _Decline("security-model")
        if not header.exact:
            raise _Decline("usm-trailing-bytes")
        boots, etime = header.engine_boots, header.engine_time
        if not (0 <= boots <= INT32_MAX and 0 <= etime <= INT32_MAX):
            raise _Decline("header-bad-integer")
        engine_id, user_name, mac, mac_at = (
            header.engine_id,
            header.user,
            header.auth_params,
            header.auth_params_offset,
        )
        if len(user_name) > _USER_NAME_MAX:
            raise _Decline("usm-parameters")
        if header.reportable:
            raise _Decline("reportable")
        user = self._users.get((engine_id, user_name))
        if user is None:  # discovery, informs to trapd, unknown users, unbound or new engines
            user = self._learn(header, data)
        level = header.level
        if not level:
            raise _Decline("msg-flags")  # privacy without authentication: invalid, pysnmp counts it
        mismatch = level_mismatch(level, user.level)
        if mismatch is not None:
            raise Refused("unsupported-security-level", mismatch)

        timeline = None
        if level > 1:
            # RFC 3414 3.2 step 6 / RFC 7860: HMAC over the whole message, MAC field zeroed.
            if len(mac) != user.mac_length:
                raise Refused("wrong-digest", "mac-length")
            if not authentic(user, data, mac_at):
                raise Refused("wrong-digest")
            if boots == ENGINE_BOOTS_MAX:
                raise Refused("not-in-time-window", "boots-max")
            timeline = self.timelines.get(engine_id)
            if timeline is not None:
                timeline.check(boots, etime, mac)

        try:
            buffer, start, end = plaintext(header, data, user)
        except Rejected:
            raise _Decline("msg-data") from None
        try:
            scoped = read_scoped_pdu(buffer, start, end, padded=level == 3)
        except Rejected as exc:
            if level == 3:
                # What a wrong privacy key gives (pysnmp: decryptionError too).
                raise Refused("decryption-error", f"scoped-pdu-{exc.reason}") from None
            raise _Decline(f"scoped-pdu-{exc.reason}") from None
        if scoped.tag != _PDU_V2_TRAP:
            raise _Decline("not-a-trap")
        try:
            request_id, error_status, error_index, varbinds = scoped.fields()
        except Rejected as exc:
            # Authentic, but a shape the decoder refuses: pysnmp's engine (which then drops it
            # too, as the receiver reads every PDU with the same decoder) counts it.
            raise _Decline(f"varbinds-{exc.reason}") from None
        if error_status or error_index:
            raise _Decline("error-fields")  # pysnmp has opinions on odd ones: let it decide

        if level > 1:
            # The last check, atomic with remembering it: a replay to another worker is refused
            # there, and of two copies arriving at two workers at once only one passes.
            if self._replays is not None and not self._replays.first_time(engine_id, mac):
                raise Refused("not-in-time-window", "replayed")
            pair = (engine_id, user_name)
            learned = pair in self._learned_pairs
            if learned:  # used last: pushed out last
                del self._learned_pairs[pair]
                self._learned_pairs[pair] = None
            timelines = self.timelines
            pushed_out = timelines.pushed_out
            memory = LEARNED_REPLAY_MEMORY if learned else REPLAY_MEMORY
            timelines.accept(engine_id, boots, etime, mac, memory)
            if timelines.pushed_out != pushed_out and self._stats is not None:
                self._stats.v3_engines_pushed_out += timelines.pushed_out - pushed_out
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
                context_engine_id=scoped.context_engine_id.hex(),
                context_name=scoped.context_name.decode("utf-8", "backslashreplace"),
            ),
            varbinds=varbinds,
            received_at=received_at,
            request_id=request_id,
        )


class _Decline(Exception):
    """Internal: hand the message to pysnmp; ``slug`` says why (counted in ``declined``)."""

    __slots__ = ("slug",)

    def __init__(self, slug: str) -> None:
        super().__init__(slug)
        self.slug = slug
