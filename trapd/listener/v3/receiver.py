"""SNMPv3 notifications: pysnmp's engine, fed from trapd's own sockets.

trapd reads every datagram itself (``trapd.listener.udp``); what the fast USM
path declines (:mod:`trapd.listener.v3.path`) reaches
:meth:`V3Receiver.receive_header`. The receiver pushes the bytes straight into a
pysnmp 7 engine's message dispatcher, so pysnmp keeps doing what is hard to
get exactly right: USM (authentication, decryption, time windows), engine-ID
discovery reports, and the Response-PDU for v3 informs. pysnmp never opens a
socket: the engine's transport dispatcher (:func:`~trapd.listener.v3.adapters.make_dispatcher`)
``send_message`` writes through the socket the request came in on, to the
peer it came from.

Around the engine the receiver does a few things of its own:

* It reads the message header (:func:`trapd.listener.v3.header.parse_header`,
  the same walker as the fast path's) before pysnmp does, to classify drops
  precisely (unknown user vs. a known user from an engine it is not bound to)
  and to count discovery probes.
* Users whose ``engine_ids`` list is empty accept traps from *any* sender
  engine. pysnmp cannot do that by itself: USM keys are localized to the
  sender's engine ID, and pysnmp's "wildcard engine" (``0000000000``) rows
  only work for noAuthNoPriv because their keys are localized to the wildcard
  (a noAuthNoPriv user without ``engine_ids`` gets one: nothing to learn).
  So the receiver verifies the HMAC of a message from a new engine itself
  (:func:`trapd.listener.v3.keys.authentic`, the fast path's check; cheap: the
  passphrase is hashed once at start-up, localizing is one hash)
  and registers the user for that engine with pysnmp only once a message
  authenticated. Forged engine IDs therefore cost a hash and never grow
  pysnmp's tables; learned engines are capped (``max_learned_engines``): at the
  cap the one used least recently is pushed out (its pysnmp row deleted), so
  a key holder's flood of made-up engine IDs cannot keep a real engine out.
* It holds a trap sender to the security level its user is configured
  with: pysnmp (RFC 3414 3.2.5) checks the level only on the authoritative
  side, so it would take an authNoPriv trap for an authPriv user.
* It works around pysnmp 7.1's per-trap memory growth (see
  :func:`~trapd.listener.v3.adapters.make_usm`) and keeps pysnmp's
  snmpEngineBoots file in trapd's state directory
  (:func:`~trapd.listener.v3.clock.make_engine`).

Time windows: pysnmp enforces them for messages to trapd's own engine
(informs: a stale one gets a notInTimeWindow report). For traps the sender is
authoritative, and pysnmp overwrites its notion of the sender's boots/time
with the message's own values before the RFC 3414 3.2.7b check, so a
replayed trap is not refused here; the fast path's time notions and replay
memory (:mod:`trapd.listener.v3.timeliness`) are trapd's own check.

pysnmp's outcome for each message is read from an instrumented v3 message
processing model (:func:`~trapd.listener.v3.adapters.make_recording_mp`), which sees the ``errorIndication``
of every failure, and from the notification callback for successes.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trapd.listener.ber import Rejected
from trapd.listener.config import V3User
from trapd.listener.raw import DEFER_ACK, RawNotification, Security
from trapd.listener.stats import ListenerStats, V3Who
from trapd.listener.v3.adapters import (
    REASONS,
    PeerAddress,
    SendTo,
    UserRow,
    delete_user_row,
    make_dispatcher,
    make_recording_mp,
    make_usm,
    pysnmp_protocols,
    read_user_row,
    release_response_state,
    rfc1902_octets,
    widen_pysnmp_integer_ranges,
    write_user_row,
)
from trapd.listener.v3.clock import default_engine_id, make_engine
from trapd.listener.v3.errors import Refused
from trapd.listener.v3.header import HeaderError, V3Header, parse_header
from trapd.listener.v3.keys import (
    LEVEL_NAMES,
    LEVEL_NUMBERS,
    LocalizedUser,
    MasterKeys,
    authentic,
    level_mismatch,
    localized_user,
)
from trapd.listener.v3.replay import ReplayMemory
from trapd.listener.v3.reports import unknown_engine_id_report, usm_stats_value
from trapd.listener.v3.scoped import ScopedPdu, plaintext, read_scoped_pdu

# May return False to say "not handed on" (then a v3 inform is not acknowledged).
OnNotification = Callable[[RawNotification], object]
# (reason, detail, source, (user name, engine ID) of the message or None): see stats.DropLog.
OnDrop = Callable[[str, "str | None", str, "V3Who | None"], None]


@dataclass(frozen=True, slots=True, eq=False)
class _UserKeys:
    """A configured user entry and its pysnmp protocol identifiers; ``keyed``: it has keys
    (authNoPriv or authPriv), localized per engine when needed (V3Receiver._local).

    Compared and hashed by identity: one name may have several entries (for other engines).
    """

    config: V3User
    auth_id: Any
    priv_id: Any
    keyed: bool


def _user_keys(user: V3User) -> _UserKeys:
    auth_id, priv_id = pysnmp_protocols(user)
    return _UserKeys(user, auth_id, priv_id, user.auth_protocol != "none")


# pysnmp's USM falls back to a user's row for this engine ID when the message's engine has none
# (its wildcard_security_engine_id): only useful without keys, which are localized per engine.
_WILDCARD_ENGINE = bytes(5)


# How many (source, name) pairs remember their entry (V3Receiver._own_entry_found).
_ENTRIES_OF_SOURCES = 4096


class _Checked(enum.Enum):
    """What the cheap checks before pysnmp found (V3Receiver._prepare_user)."""

    DROPPED = "dropped"  # refused and counted already
    # Refused and counted already, but a reportable message to trapd's engine: pysnmp may send
    # the report RFC 3414 calls for (unknown user, wrong digest), or the sender sees a timeout.
    REFUSED_REPORT = "refused-report"
    UNAUTHENTICATED = "unauthenticated"  # discovery, noAuthNoPriv: anyone can send it
    AUTHENTIC = "authentic"  # its MAC checks out with a configured user's keys


class V3Receiver:
    """Receives SNMPv3 traps and informs through a pysnmp engine that owns no socket.

    ``users``: the configured USM users. ``engine_id``: trapd's own
    (authoritative) engine ID, which v3 informs are addressed to; ``None``
    derives a stable one (:func:`default_engine_id`); its snmpEngineBoots is
    kept under ``state_dir`` when given (see :func:`make_engine`). ``replays``: the
    replay memory (:mod:`trapd.listener.v3.replay`); an authentic message
    pysnmp accepts whose MAC it holds already is dropped as replayed.
    ``admit(source, authentic, size)``: asked before a message goes to pysnmp's engine
    (what is left after the cheap refusals; ``authentic``: its MAC was checked; ``size``:
    its octets, which pysnmp's cost grows with);
    a string (the limit's name) drops it as ``rate-limited``. ``on_notification`` is
    called synchronously for every accepted notification; ``on_drop(reason,
    detail, source, who)`` for every dropped message, after ``stats`` counted it.
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
        masters: MasterKeys | None = None,
        replays: ReplayMemory | None = None,
        admit: Callable[[str, bool, int], str | None] | None = None,
    ) -> None:
        from pysnmp.proto.api import v2c

        self.engine_id = engine_id or default_engine_id()
        self._on_notification = on_notification
        self._stats = stats
        self._on_drop = on_drop
        self._replays = replays
        self._admit = admit
        self._max_learned = max_learned_engines
        self._v2c = v2c

        widen_pysnmp_integer_ranges()  # what trapd's decoder takes must get past pysnmp's
        self.engine = make_engine(self.engine_id, state_dir)
        self._mp = make_recording_mp()
        # The usmStats values pysnmp's reports carry: trapd's counters (reports.usm_stats_value).
        self._mp.counter_value = self._usm_stats_value
        self.engine.message_processing_subsystems[3] = self._mp
        self.engine.security_models[3] = make_usm()
        self._dispatcher = make_dispatcher(self._send)
        self.engine.register_transport_dispatcher(self._dispatcher)

        # A name may have several entries, on other sender engines (config._check_same_names):
        # every entry of a name (config order), the entry bound to each (engine ID, name), and
        # the entry of a name without engine_ids (any other engine).
        self._users: dict[bytes, list[_UserKeys]] = {}
        self._bound: dict[tuple[bytes, bytes], _UserKeys] = {}
        self._any_engine: dict[bytes, _UserKeys] = {}
        self._registered: set[tuple[bytes, bytes]] = set()
        self._known_engines: set[bytes] = set()  # the engines of _registered
        # The entry of each name whose keys pysnmp's USM holds for trapd's own engine (informs):
        # pysnmp has one row per (engine ID, name), so it is swapped to the entry a message is from.
        self._own_row: dict[bytes, _UserKeys] = {}
        # pysnmp's row values of each entry of a name given several times, once it was needed:
        # registering costs 7 ms (pysnmp's MIB writes), putting these values back 70 us
        # (measured alternating two entries, load average 2.7 on 2 cores).
        self._own_rows: dict[_UserKeys, UserRow] = {}
        # (source address, name) -> the entry whose keys last verified a message from there to
        # trapd's engine: tried first. Only authentic messages enter; at most _ENTRIES_OF_SOURCES.
        self._entry_of_source: dict[tuple[str, bytes], _UserKeys] = {}
        # Learned (engine ID, name) pairs, least recently used first (pushed out at the cap).
        self._learned_pairs: dict[tuple[bytes, bytes], None] = {}
        # Master keys by (hash, passphrase), shared with the fast path: each 1 MiB hash once.
        self._masters: MasterKeys = {} if masters is None else masters
        # Entries' keys localized per registered (engine ID, entry): trapd's own engine's at
        # start-up, the others' when first needed. Bounded: pairs are configured or learned.
        self._localized: dict[tuple[bytes, _UserKeys], LocalizedUser] = {}
        for u in users:
            keys = _user_keys(u)
            name = u.user.encode()
            self._users.setdefault(name, []).append(keys)
            if keys.keyed and u.keys_work_at(self.engine_id):
                self._localized[(self.engine_id, keys)] = localized_user(u, self.engine_id, self._masters)
            if not u.engine_ids:
                self._any_engine[name] = keys
                if not keys.keyed:  # no key: any engine may send as it, nothing to learn
                    self._register(keys, _WILDCARD_ENGINE)
            for eid in u.engine_ids:
                if eid != self.engine_id:
                    self._bound[(eid, name)] = keys
                    self._register(keys, eid)
        for name in self._users:
            # Informs are addressed to trapd: the entry for any engine first, else the first one
            # whose keys work there (not a key localized for another engine); a name with none
            # has no row for trapd's engine (its informs get pysnmp's unknown-user report).
            entries = self._own_entries(name)
            if entries:
                self._register_own(self._any_engine.get(name) or entries[0])

        self.engine.message_dispatcher.register_context_engine_id(
            b"",  # any context engine ID
            (v2c.SNMPv2TrapPDU.tagSet, v2c.InformRequestPDU.tagSet),
            self._process_pdu,
        )
        # Per-message state, valid during one synchronous receive() call.
        self._current: tuple[V3Header, bytes, str, int, float] | None = None
        self._report_only = False  # the message is refused: pysnmp is only to send its report
        self._delivered = False
        self._last_tick = 0.0

    # -- configuration -----------------------------------------------------

    def _register(self, keys: _UserKeys, engine_id: bytes) -> None:
        name = keys.config.user.encode()
        if (engine_id, name) in self._registered:
            return
        self._add_to_pysnmp(keys, engine_id)
        self._registered.add((engine_id, name))
        self._known_engines.add(engine_id)

    def _register_own(self, keys: _UserKeys) -> None:
        """Make ``keys`` the entry pysnmp checks messages of its name to trapd's engine with.

        pysnmp replaces the row. A Response still to be sent keeps the keys it was received
        with (pysnmp caches them with the message's state).
        """
        name = keys.config.user.encode()
        if self._own_row.get(name) is keys:
            return
        row = self._own_rows.get(keys)
        if row is not None:
            write_user_row(self.engine, self.engine_id, name, row)
        else:
            self._add_to_pysnmp(keys, self.engine_id)
            if len(self._users[name]) > 1:
                self._own_rows[keys] = read_user_row(self.engine, self.engine_id, name)
        self._own_row[name] = keys
        self._registered.add((self.engine_id, name))

    def _own_entries(self, name: bytes) -> list[_UserKeys]:
        """The entries of ``name`` whose keys work at trapd's engine (all but a localized key's)."""
        return [k for k in self._users.get(name, ()) if k.config.keys_work_at(self.engine_id)]

    def _add_to_pysnmp(self, keys: _UserKeys, engine_id: bytes) -> None:
        """Register the entry's keys localized to ``engine_id`` (keys.localized_user: the one
        derivation of both paths, from a passphrase, a master or a localized key)."""
        from pysnmp.entity import config as pc

        local = self._local_at(keys, engine_id) if keys.keyed else None
        auth_key = local.auth_key if local is not None else None
        priv_key = local.priv_key if local is not None and local.priv_key else None
        pc.add_v3_user(
            self.engine,
            keys.config.user,
            authProtocol=keys.auth_id,
            authKey=auth_key,
            privProtocol=keys.priv_id,
            privKey=priv_key,
            securityEngineId=rfc1902_octets(engine_id),
            authKeyType=pc.USM_KEY_TYPE_LOCALIZED if auth_key is not None else pc.USM_KEY_TYPE_MASTER,
            privKeyType=pc.USM_KEY_TYPE_LOCALIZED if priv_key is not None else pc.USM_KEY_TYPE_MASTER,
        )

    # -- receive path ------------------------------------------------------

    def receive(
        self, data: bytes, peer: tuple[Any, ...], reply: SendTo, received_at: float | None = None
    ) -> None:
        """Process one v3 datagram from ``peer``; replies (reports, inform responses) go to ``reply``.

        Never raises: every failure is counted as a drop.
        """
        try:
            header = parse_header(data)
        except HeaderError as exc:
            self._drop("malformed", f"v3-{exc.reason}", str(peer[0]))
            return
        self.receive_header(header, data, peer, reply, received_at)

    def receive_header(
        self,
        header: V3Header,
        data: bytes,
        peer: tuple[Any, ...],
        reply: SendTo,
        received_at: float | None = None,
    ) -> None:
        """:meth:`receive` for a datagram whose header was already read (:func:`parse_header`)."""
        now = time.time() if received_at is None else received_at
        source = str(peer[0])
        if header.security_model != 3:
            self._drop("malformed", "v3-security-model", source, header)
            return
        if header.level == 0:
            self._drop("malformed", "v3-msg-flags", source, header)
            return
        if not header.exact:
            # Octets after a constructed element's last member are refused everywhere else (v1,
            # v2c, the PDU, the fast path); pysnmp ignores them after the UsmSecurityParameters.
            self._drop("malformed", "v3-trailing-bytes", source, header)
            return

        if header.is_discovery:
            checked = _Checked.UNAUTHENTICATED
        elif (
            header.reportable
            and header.engine_id != self.engine_id
            and header.engine_id not in self._known_engines
            and 4 < len(header.engine_id) < 33
        ):
            # A confirmed-class message (an inform) names its receiver's engine as authoritative,
            # and this one names an engine trapd neither is nor knows as a trap sender's (a switch
            # configured with a stale engine ID): RFC 3414 3.2 step 3, before the user is looked at.
            self._drop("unknown-engine-id", "not-trapd-engine", source, header)
            self._report_unknown_engine(header, data, peer, reply)
            return
        else:
            checked = self._prepare_user(data, header, source)
        if checked is _Checked.DROPPED:
            return
        report_only = checked is _Checked.REFUSED_REPORT
        if (
            checked is _Checked.AUTHENTIC
            and self._replays is not None
            and self._replays.seen(header.engine_id, header.auth_params)
        ):
            # Refused before the budget: a captured inform replayed from forged addresses must
            # not spend what is reserved for authentic messages (_process_pdu remembers them).
            self._drop("not-in-time-window", "replayed", source, header)
            return
        if self._admit is not None:
            over = self._admit(source, checked is _Checked.AUTHENTIC, len(data))
            if over is not None:  # this source's (or everyone's) budget for pysnmp is spent
                if not report_only:  # (a refused one is counted already: it only goes unanswered)
                    self._drop("rate-limited", over, source, header)
                return

        addr = PeerAddress(peer)  # the whole tuple: an IPv6 scope id must survive to the reply
        addr.reply = reply
        domain = (1, 3, 6, 1, 2, 1, 100, 1, 2) if ":" in source else (1, 3, 6, 1, 6, 1, 1)
        self._current = (header, data, source, int(peer[1]), now)
        self._report_only = report_only
        self._delivered = False
        self._mp.last_error = None
        try:
            self.engine.message_dispatcher.receive_message(self.engine, domain, addr, data)
        except Exception as exc:  # pysnmp raises assorted errors for odd input
            if not self._delivered and not report_only:
                self._drop("malformed", f"v3-{type(exc).__name__}", source, header)
            return
        finally:
            self._current = None
            self._report_only = False
        if self._delivered or report_only:
            return
        if header.is_discovery:
            self._stats.v3_discovery += 1
            self._stats.v3_engine_probes += 1
            return
        err = self._mp.last_error
        if self._is_time_synchronization(header, err):
            self._stats.v3_discovery += 1
            self._stats.v3_time_syncs += 1
            return
        name = type(err).__name__ if err is not None and not isinstance(err, str) else str(err)
        reason = REASONS.get(name)
        if reason == "unknown-user" and header.user in self._users:
            reason = "unknown-engine-id"
        if reason is None:
            reason = "malformed" if err is not None else "unsupported-pdu"
        self._drop(reason, name if err is not None else "v3-no-handler", source, header)

    def _usm_stats_value(self, column: int) -> int:
        """A usmStats counter for pysnmp's report on the current message (counted already when
        it was refused before pysnmp, else counted once pysnmp returns)."""
        return usm_stats_value(self._stats, column, pending=not self._report_only)

    def _report_unknown_engine(
        self, header: V3Header, data: bytes, peer: tuple[Any, ...], reply: SendTo
    ) -> None:
        """The usmStatsUnknownEngineIDs report net-snmp's snmptrapd sends for a message to another
        engine ID (pysnmp sends it only for an empty one), with trapd's engine ID, boots and time.
        Within the slow-path budget for unauthenticated messages, like a discovery probe's: a
        flood of forged ones gets no more answers than discovery probes would (and the report is
        no larger than what it answers)."""
        if self._admit is not None and self._admit(str(peer[0]), False, len(data)) is not None:
            return  # counted already: it only goes unanswered
        boots, etime = self.engine.get_mib_builder().import_symbols(
            "__SNMP-FRAMEWORK-MIB", "snmpEngineBoots", "snmpEngineTime"
        )
        count = usm_stats_value(self._stats, 4, pending=False)
        report = unknown_engine_id_report(
            header, self.engine_id, int(boots.syntax), int(etime.syntax.clone()), count
        )
        try:
            reply(report, tuple(peer))
            self._stats.v3_replies += 1
        except Exception:
            self._stats.send_errors += 1

    def _is_time_synchronization(self, header: V3Header, err: Any) -> bool:
        """The second step of discovery (RFC 3414 section 4): an authenticated message to trapd's
        engine with engineBoots and engineTime 0, which a sender that knows the engine ID but
        not its time sends first (net-snmp's -e, Cisco's ``engineID remote``). pysnmp answers it
        with a notInTimeWindow report carrying the time; the sender then sends its message again.
        Not a drop (trapd's own engineBoots is at least 1, so no real message is ever sent so)."""
        return (
            type(err).__name__ == "NotInTimeWindow"
            and header.engine_id == self.engine_id
            and header.engine_boots == 0
            and header.engine_time == 0
        )

    def _prepare_user(self, data: bytes, header: V3Header, source: str) -> _Checked:
        """Refuse cheaply what pysnmp would refuse at ~1.5 ms; learn engines for any-engine users.

        What passes costs pysnmp's engine and the caller's slow-path budget, whose reserve is
        for messages found ``AUTHENTIC`` here: their MAC is checked, with the user's keys
        localized to the engine the message names (a few microseconds).
        """
        entries = self._users.get(header.user)
        if entries is None:
            # Counted here, precisely; pysnmp only answers a reportable one to trapd's engine
            # (a usmStatsUnknownUserNames report), within the slow-path budget for unauthenticated
            # messages like a discovery probe: a flood of made-up users buys no more than that.
            self._drop("unknown-user", "no-such-user", source, header)
            return self._refused(header)
        if header.engine_id == self.engine_id:
            # Authoritative (informs): pysnmp checks the time window and answers; a wrong MAC
            # is refused here first.
            return self._check_own_engine(data, header, source)
        pair = (header.engine_id, header.user)
        keys = self._bound.get(pair) or self._any_engine.get(header.user)
        if keys is None:
            self._drop("unknown-engine-id", "not-bound", source, header)
            return _Checked.DROPPED
        mismatch = level_mismatch(header.level, LEVEL_NUMBERS[keys.config.level])
        if mismatch is not None:
            # RFC 3414 3.2.5 only binds the authoritative side, so pysnmp takes an authNoPriv
            # trap for a user configured authPriv (and calls a level above the user's a
            # decryption error). trapd holds a sender to the level its user is configured
            # with, as the fast path does, before an engine is learned from the message.
            self._drop("unsupported-security-level", mismatch, source, header)
            return _Checked.DROPPED
        if pair in self._registered:
            # A bound or learned engine's message the fast path left to pysnmp.
            checked = self._check_mac(keys, data, header, source, "bound-engine")
            if checked is _Checked.AUTHENTIC and pair in self._learned_pairs:
                del self._learned_pairs[pair]  # used last: pushed out last
                self._learned_pairs[pair] = None
            return checked
        # A new engine of the entry without engine_ids: learned once a message proves the keys.
        if header.reportable:
            # A confirmed-class message (an inform) names its receiver's engine, so this one was
            # addressed to another engine ID than trapd's (a sender configured with a stale one);
            # a trap sender's engine is only learned from what it sends unconfirmed.
            self._drop("unknown-engine-id", "not-trapd-engine", source, header)
            return _Checked.DROPPED
        if not 4 < len(header.engine_id) < 33:
            self._drop("unknown-engine-id", "malformed-engine-id", source, header)
            return _Checked.DROPPED
        if not keys.keyed:
            # noAuthNoPriv: pysnmp takes it by the wildcard row; learning an engine would prove
            # nothing and let forged engine IDs use up the learn limit.
            return _Checked.UNAUTHENTICATED
        if header.level >= 2 and not self._digest_ok(keys.config, data, header):  # the user's level
            self._drop("wrong-digest", "unlearned-engine", source, header)
            return _Checked.DROPPED
        if len(self._learned_pairs) >= self._max_learned:
            self._push_out(next(iter(self._learned_pairs)))
        self._register(keys, header.engine_id)
        self._learned_pairs[pair] = None
        return _Checked.AUTHENTIC if header.level >= 2 else _Checked.UNAUTHENTICATED

    def _check_own_engine(self, data: bytes, header: V3Header, source: str) -> _Checked:
        """A message to trapd's engine (an inform): the entry of its name whose keys its MAC
        verifies with is the one pysnmp gets to check it with.

        With one entry per name (the usual case) that is one HMAC; for a name given for several
        engines, the entry that verified last for the message's source address (else the one
        that verified last) is tried first, and the others only within the slow-path budget.
        """
        entries = self._own_entries(header.user)
        if not entries:
            # Every entry of the name has a key localized for another engine (a trap sender's):
            # none can check a message to trapd's engine. pysnmp has no row for it: it reports
            # an unknown user name, as net-snmp's snmptrapd does for a user it has no keys for.
            self._drop("unknown-user", "no-keys-for-trapd-engine", source, header)
            return self._refused(header)
        if len(entries) == 1:
            return self._check_mac(entries[0], data, header, source, "own-engine")
        name = header.user
        if header.level < 2:  # nothing to tell the entries apart by: one without keys, if any
            self._register_own(next((k for k in entries if not k.keyed), self._own_row[name]))
            return _Checked.UNAUTHENTICATED
        first = self._entry_of_source.get((source, name), self._own_row[name])
        if first.keyed and self._authentic(self._local(first, header), data, header):
            return self._own_entry_found(first, source)
        # Trying every other entry costs one HMAC each: a forged MAC would buy that for nothing,
        # so the search is paid for from the slow-path budget, like any unauthenticated message.
        if self._admit is not None:
            over = self._admit(source, False, 0)
            if over is not None:
                self._drop("rate-limited", over, source, header)
                return _Checked.DROPPED
        for keys in entries:
            if keys is not first and keys.keyed and self._authentic(self._local(keys, header), data, header):
                return self._own_entry_found(keys, source)
        self._drop("wrong-digest", "own-engine", source, header)
        return self._refused(header)

    def _own_entry_found(self, keys: _UserKeys, source: str) -> _Checked:
        """``keys`` verified a message to trapd's engine from ``source``: pysnmp checks it with
        them, and they are tried first for that source's next message (bounded, oldest out)."""
        pair = (source, keys.config.user.encode())
        self._entry_of_source.pop(pair, None)
        if len(self._entry_of_source) >= _ENTRIES_OF_SOURCES:
            del self._entry_of_source[next(iter(self._entry_of_source))]
        self._entry_of_source[pair] = keys
        self._register_own(keys)
        return _Checked.AUTHENTIC

    def _check_mac(
        self, keys: _UserKeys, data: bytes, header: V3Header, source: str, detail: str
    ) -> _Checked:
        """A registered engine's message: its MAC, with the keys localized to that engine (cached)."""
        if header.level < 2 or not keys.keyed:
            return _Checked.UNAUTHENTICATED  # nothing to check (pysnmp refuses a level it has no key for)
        if not self._authentic(self._local(keys, header), data, header):
            self._drop("wrong-digest", detail, source, header)
            return self._refused(header)
        return _Checked.AUTHENTIC

    def _refused(self, header: V3Header) -> _Checked:
        """What is left to do for a refused message: its report, if its sender asked for one from
        trapd's engine (an inform: RFC 3412 7.1.3 / RFC 3414 3.2), else nothing."""
        if header.reportable and header.engine_id == self.engine_id:
            return _Checked.REFUSED_REPORT
        return _Checked.DROPPED

    def _local(self, keys: _UserKeys, header: V3Header) -> LocalizedUser:
        """``keys`` localized to the message's engine, cached: the engine is trapd's, bound or learned."""
        return self._local_at(keys, header.engine_id)

    def _local_at(self, keys: _UserKeys, engine_id: bytes) -> LocalizedUser:
        pair = (engine_id, keys)
        local = self._localized.get(pair)
        if local is None:
            local = self._localized[pair] = localized_user(keys.config, engine_id, self._masters)
        return local

    def _digest_ok(self, user: V3User, data: bytes, header: V3Header) -> bool:
        """The message's HMAC with ``user``'s keys localized to its engine (keys.authentic)."""
        return self._authentic(localized_user(user, header.engine_id, self._masters), data, header)

    @staticmethod
    def _authentic(keys: LocalizedUser, data: bytes, header: V3Header) -> bool:
        return len(header.auth_params) == keys.mac_length and authentic(keys, data, header.auth_params_offset)

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
        header, data, source, port, now = current
        inform = PDU.tagSet == v2c.InformRequestPDU.tagSet
        if self._report_only:  # refused before pysnmp, which should not have taken it: run nothing
            if inform:
                release_response_state(snmpEngine, messageProcessingModel, stateReference)
            return
        self._delivered = True
        try:
            # pysnmp checked the message (USM, time window) and would answer it; what it says is
            # read by trapd's decoder, as v1/v2c are: pyasn1 takes forms trapd's decoder refuses.
            scoped = self._scoped_pdu(header, data)
            request_id, _, _, varbinds = scoped.fields()
        except Exception as exc:  # Rejected, Refused (decryption); anything else is a bug: one drop
            reason = exc.reason if isinstance(exc, (Rejected, Refused)) else f"internal-{type(exc).__name__}"
            self._drop("malformed", f"v3-{reason}", source, header)
            if inform:  # not handed on, so never answered: the sender retries
                release_response_state(snmpEngine, messageProcessingModel, stateReference)
            return
        if (
            self._replays is not None
            and int(securityLevel) > 1
            and not self._replays.first_time(header.engine_id, header.auth_params)
        ):
            # pysnmp accepted it (authentic, in its time window) but trapd has handed it on
            # before: a replay runs nothing and gets no Response (issue 14 item 2).
            self._drop("not-in-time-window", "replayed", source, header)
            if inform:
                release_response_state(snmpEngine, messageProcessingModel, stateReference)
            return
        var_binds = v2c.apiPDU.get_varbinds(PDU)
        raw = RawNotification(
            version="v3",
            kind="inform" if inform else "trap",
            source=source,
            source_port=port,
            security=Security(
                user=bytes(securityName).decode("utf-8", "backslashreplace"),
                level=LEVEL_NAMES.get(int(securityLevel)),
                engine_id=header.engine_id.hex(),
                context_engine_id=scoped.context_engine_id.hex(),
                context_name=scoped.context_name.decode("utf-8", "backslashreplace"),
            ),
            varbinds=varbinds,
            received_at=now,
            request_id=request_id,
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
            too_big = self._mp.too_big
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
            else:
                self._stats.inform_too_big += self._mp.too_big - too_big

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
        elif inform and answer is False:  # never answered: the sender retries with a new message
            release_response_state(snmpEngine, messageProcessingModel, stateReference)

    def _scoped_pdu(self, header: V3Header, data: bytes) -> ScopedPdu:
        """The ScopedPDU of a message pysnmp accepted, decrypted with the keys pysnmp checked it with."""
        keys = None
        if header.level == 3:
            name = header.user
            if header.engine_id == self.engine_id:
                entry = self._own_row[name]  # the row pysnmp holds for trapd's engine (_register_own)
            else:
                entry = self._bound.get((header.engine_id, name)) or self._any_engine[name]
            keys = self._local(entry, header)
        buffer, start, end = plaintext(header, data, keys)
        return read_scoped_pdu(buffer, start, end, padded=header.level == 3)

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

    def _drop(self, reason: str, detail: str | None, source: str, header: V3Header | None = None) -> None:
        self._stats.drop(reason, detail)
        if self._on_drop is not None:
            self._on_drop(reason, detail, source, None if header is None else (header.user, header.engine_id))

    # -- housekeeping ------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        """Drive pysnmp's timers (cache expiry). Call about once a second."""
        self._dispatcher.handle_timer_tick(time.time() if now is None else now)

    def _push_out(self, pair: tuple[bytes, bytes]) -> None:
        """Forget a learned (engine ID, name) pair: its pysnmp row and the keys localized for it
        (its next authentic message teaches it again)."""
        engine_id, name = pair
        del self._learned_pairs[pair]
        delete_user_row(self.engine, engine_id, name)
        self._registered.discard(pair)
        keys = self._any_engine.get(name)
        if keys is not None:
            self._localized.pop((engine_id, keys), None)
        if not any(e == engine_id for e, _ in self._registered):
            self._known_engines.discard(engine_id)
        self._stats.v3_engines_pushed_out += 1

    @property
    def learned_engines(self) -> int:
        return len(self._learned_pairs)
