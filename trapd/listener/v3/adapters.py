"""pysnmp adapters: what trapd's V3Receiver needs to run pysnmp's engine behind trapd's own sockets.

* :func:`pysnmp_protocols`: a configured user's protocols as pysnmp's identifiers.
* :class:`PeerAddress` and :func:`make_dispatcher`: a transport dispatcher without
  transports, whose replies go out through the socket the request came in on.
* :func:`make_usm`: pysnmp's USM with its per-trap memory growth worked around.
* :func:`make_recording_mp`: the v3 message processing model, remembering why
  the last message failed (``REASONS`` maps that to a drop reason).
* :func:`read_user_row` / :func:`write_user_row`: the values of a USM user row, to
  swap which entry of a name given several times checks messages to trapd's engine.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from trapd.listener.config import V3User
from trapd.listener.v3.reports import USM_STATS

# Reply path: (datagram, peer address) -> None. Bound per received datagram
# to the socket that received it.
SendTo = Callable[[bytes, tuple[Any, ...]], None]


def pysnmp_protocols(user: V3User) -> tuple[Any, Any]:
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
    # which is what net-snmp's "AES-192"/"AES-256" use; AES-192-C/256-C: Cisco's,
    # the Reeder extension (net-snmp's "AES-192-C"/"AES-256-C").
    priv = {
        "none": pc.USM_PRIV_NONE,
        "DES": pc.USM_PRIV_CBC56_DES,
        "AES-128": pc.USM_PRIV_CFB128_AES,
        "AES-192": pc.USM_PRIV_CFB192_AES_BLUMENTHAL,
        "AES-256": pc.USM_PRIV_CFB256_AES_BLUMENTHAL,
        "AES-192-C": pc.USM_PRIV_CFB192_AES,
        "AES-256-C": pc.USM_PRIV_CFB256_AES,
    }[user.priv_protocol]
    return auth, priv


class PeerAddress(tuple):  # type: ignore[type-arg]
    """A pysnmp transport address that remembers the socket to answer through.

    pysnmp hands the address it was given back to ``send_message`` (it is
    cached with the request state), so the reply path travels with it.
    """

    reply: SendTo | None = None

    # pysnmp's AbstractTransportAddress interface
    def get_local_address(self) -> Any:
        return None

    def set_local_address(self, _s: Any) -> PeerAddress:
        return self

    def clone(self, localAddress: Any = None) -> PeerAddress:
        c = PeerAddress(self)
        c.reply = self.reply
        return c


def make_dispatcher(on_send: Callable[[bytes, Any], None]) -> Any:
    from pysnmp.carrier.base import AbstractTransportDispatcher

    class _ReplyDispatcher(AbstractTransportDispatcher):  # type: ignore[misc]
        """pysnmp's transport dispatcher, minus transports: replies go out through trapd's socket."""

        def send_message(self, outgoingMessage: Any, transportDomain: Any, transportAddress: Any) -> None:
            on_send(bytes(outgoingMessage), transportAddress)

    d = _ReplyDispatcher()
    # Timer ticks drive pysnmp's cache expiry; trapd calls tick() once a second.
    d.set_timer_resolution(1.0)
    return d


def make_usm() -> Any:
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


def widen_pysnmp_integer_ranges() -> None:
    """Let pysnmp's decoder take the integer values trapd's decoder takes beyond their types' ranges.

    pysnmp checks every message to trapd's engine (informs) before trapd's decoder reads its
    PDU, and pyasn1 refuses a value outside a type's range while decoding. trapd's decoder takes
    an INTEGER varbind and a request-id of 2^31..2^32-1 (an unsigned number in an INTEGER, as
    net-snmp writes ``i 3000000000``; a request-id counted unsigned), and an unsigned value
    written without its leading 00 (``ff ff ff ff``, which pyasn1 reads as -1): see fastpath's
    module doc. net-snmp's snmptrapd acknowledges such an inform; pysnmp's refusal came out of
    its USM as a DecryptionError, and the sender read 'Decryption error'. The event is made by
    trapd's decoder, so pysnmp's reading of the value (-1) is only what its Response echoes:
    the octets the sender sent. The range lives on one shared instance per type in pysnmp's
    PDU specification, read-only through pyasn1's attributes: it is set in the instance's dict
    and in the read-only values its clones (the decoded values) are made with. Idempotent;
    only widens, so nothing pysnmp took before is refused.
    """
    from pyasn1.type import constraint
    from pysnmp.proto import rfc1902, rfc1905

    def wide(low: int, high: int) -> Any:
        return constraint.ConstraintsIntersection(constraint.ValueRangeConstraint(low, high))

    try:
        syntax = rfc1902.ObjectSyntax.componentType
        simple = syntax.getTypeByPosition(0).componentType
        application = syntax.getTypeByPosition(1).componentType
        ranges = [
            (simple.getTypeByPosition(0), wide(-(2**31), 2**32 - 1)),  # integer-value
            (rfc1905.InformRequestPDU.componentType.getTypeByPosition(0), wide(-(2**31), 2**32 - 1)),
        ]
        for name, bits in (
            ("counter-value", 32),
            ("timeticks-value", 32),
            ("gauge32-value", 32),
            ("big-counter-value", 64),
        ):
            ranges.append((application[name].asn1Object, wide(-(2 ** (bits - 1)), 2**bits - 1)))
    except (AttributeError, IndexError, KeyError, TypeError):
        # A pysnmp whose specification is laid out otherwise: trapd starts all the same, and pysnmp
        # refuses such informs as before (tests/test_listener_integration.py shows which).
        return
    for spec, spec_range in ranges:
        spec.readOnly["subtypeSpec"] = spec_range  # what clone() gives the decoded values
        spec.__dict__["subtypeSpec"] = spec_range


_ERROR_TOO_BIG = 1  # error-status tooBig (RFC 3416)


def make_recording_mp() -> Any:
    from pyasn1.error import PyAsn1Error
    from pysnmp.proto import api, errind
    from pysnmp.proto import error as perror
    from pysnmp.proto.mpmod.rfc3412 import SnmpV3MessageProcessingModel

    v2c = api.v2c

    class _RecordingMP(SnmpV3MessageProcessingModel):  # type: ignore[misc]
        """The v3 message processing model, remembering why the last message failed, sending
        every report but notInTimeWindow's at noAuthNoPriv (RFC 3412 7.1.3 d.1: the level the
        security model gives, which RFC 3414 does only for usmStatsNotInTimeWindows), and
        putting trapd's counter value in a usmStats report (``counter_value``): pysnmp counts
        only what reaches it, not what trapd refused before or on the fast path.

        pysnmp's USM gives the message's own level with usmStatsUnsupportedSecLevels too: its
        report for an authPriv inform to an authNoPriv user was to be encrypted with a privacy
        key the user has not, failed, and the sender timed out instead of reading 'Unsupported
        security level' (net-snmp's snmptrapd sends that report at noAuthNoPriv).
        """

        last_error: Any = None
        # Responses to informs sent as tooBig, without their varbinds (see prepare_response_message).
        too_big = 0
        # usmStats column -> the value a report carries (trapd's count: reports.usm_stats_value);
        # None: pysnmp's own counter.
        counter_value: Callable[[int], int] | None = None

        def prepare_response_message(self, *args: Any) -> Any:
            status = args[-1]
            # (pysnmp's dispatcher passes a plain dict for its own reports, e.g. snmpUnknownPDUHandlers)
            if isinstance(status, perror.StatusInformation) and "oid" in status:
                # Changed in place: building a StatusInformation costs ~27 ms (pysnmp formats
                # the pyasn1 repr of the whole message into its text; measured on discovery
                # probes, 11.6 against 3.8 ms a probe).
                fields = status._StatusInformation__errorIndication
                if "securityLevel" in fields and fields.get("errorIndication") is not errind.notInTimeWindow:
                    del fields["securityLevel"]
                oid = tuple(fields["oid"])
                if self.counter_value is not None and oid[: len(USM_STATS)] == USM_STATS and len(oid) > 9:
                    fields["val"] = fields["val"].clone(self.counter_value(oid[9]))
            pdu = args[8]
            if pdu is None or pdu.tagSet != v2c.ResponsePDU.tagSet:
                return super().prepare_response_message(*args)
            # The Response to an inform echoes its varbinds. Over the sender's msgMaxSize (or
            # trapd's), pysnmp raises tooBig once it has encoded it and has by then consumed the
            # message's state; RFC 3416 4.2.7 wants a tooBig Response with no varbinds instead.
            # So the state is put back and the short Response encoded with it.
            snmp_engine, state_reference = args[0], args[10]
            held = self._hold_state(snmp_engine, state_reference)
            try:
                return super().prepare_response_message(*args)
            except perror.StatusInformation as exc:
                if held is None or exc.get("errorIndication") is not errind.tooBig:
                    raise
            self._put_back_state(snmp_engine, state_reference, held)
            too_big = pdu.clone()
            v2c.apiPDU.set_defaults(too_big)
            v2c.apiPDU.set_request_id(too_big, v2c.apiPDU.get_request_id(pdu))
            v2c.apiPDU.set_error_status(too_big, _ERROR_TOO_BIG)
            v2c.apiPDU.set_error_index(too_big, 0)
            v2c.apiPDU.set_varbinds(too_big, [])
            self.too_big += 1
            return super().prepare_response_message(*args[:8], too_big, *args[9:])

        def _hold_state(self, snmp_engine: Any, state_reference: Any) -> tuple[Any, Any] | None:
            """A copy of the message's and its security model's state, for a second encoding.

            The security model's state goes back under a new reference (its cache hands out
            references and takes no given one), which the message's state then names.
            """
            try:
                cached = self._cache.pop_by_state_reference(state_reference)
            except perror.ProtocolError:
                return None  # expired: pysnmp's own call fails the same way
            security = snmp_engine.security_models.get(int(cached["securityModel"]))
            held = None
            if security is not None:
                with contextlib.suppress(perror.ProtocolError):
                    held = cached, security._cache.pop(cached["securityStateReference"])
                    cached = {**cached, "securityStateReference": security._cache.push(**held[1])}
            self._cache.push_by_state_reference(state_reference, **cached)
            return held

        def _put_back_state(self, snmp_engine: Any, state_reference: Any, held: tuple[Any, Any]) -> None:
            cached, security_data = held
            security = snmp_engine.security_models[int(cached["securityModel"])]
            with contextlib.suppress(perror.ProtocolError):  # consumed by the first encoding, or not
                stale = self._cache.pop_by_state_reference(state_reference)
                with contextlib.suppress(perror.ProtocolError):
                    security._cache.pop(stale["securityStateReference"])
            cached = {**cached, "securityStateReference": security._cache.push(**security_data)}
            self._cache.push_by_state_reference(state_reference, **cached)

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
REASONS = {
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


# What pysnmp's USM reads of a user row to check a message (its __get_user_info): the auth and
# priv protocols (usmUserEntry columns 5 and 8) and the localized keys (pysnmpUsmKeyEntry 1, 2).
UserRow = tuple[Any, Any, Any, Any]
_ROW_COLUMNS = (
    ("SNMP-USER-BASED-SM-MIB", "usmUserEntry", 5),
    ("SNMP-USER-BASED-SM-MIB", "usmUserEntry", 8),
    ("PYSNMP-USM-MIB", "pysnmpUsmKeyEntry", 1),
    ("PYSNMP-USM-MIB", "pysnmpUsmKeyEntry", 2),
)


def _row_nodes(snmp_engine: Any, engine_id: bytes, user_name: bytes) -> list[Any]:
    from pysnmp.proto import rfc1902

    builder = snmp_engine.get_mib_builder()
    nodes = []
    for module, entry_name, column in _ROW_COLUMNS:
        (entry,) = builder.import_symbols(module, entry_name)
        index = entry.getInstIdFromIndices(rfc1902.OctetString(engine_id), rfc1902.OctetString(user_name))
        nodes.append(entry.getNode((*entry.name, column, *index)))
    return nodes


def read_user_row(snmp_engine: Any, engine_id: bytes, user_name: bytes) -> UserRow:
    """The values of the registered user row (engine ID, user name) that pysnmp checks messages with."""
    a, b, c, d = (node.syntax for node in _row_nodes(snmp_engine, engine_id, user_name))
    return a, b, c, d


def write_user_row(snmp_engine: Any, engine_id: bytes, user_name: bytes, row: UserRow) -> None:
    """Put values :func:`read_user_row` gave (for the same name) back into the registered row."""
    for node, value in zip(_row_nodes(snmp_engine, engine_id, user_name), row, strict=True):
        node.syntax = value


def delete_user_row(snmp_engine: Any, engine_id: bytes, user_name: bytes) -> None:
    """Unregister the USM user row (engine ID, user name)."""
    from pysnmp.entity import config as pc

    pc.delete_v3_user(snmp_engine, user_name, securityEngineId=rfc1902_octets(engine_id))


def rfc1902_octets(b: bytes) -> Any:
    from pysnmp.proto import rfc1902

    return rfc1902.OctetString(b)


def release_response_state(snmp_engine: Any, message_processing_model: Any, state_reference: Any) -> None:
    """Forget what pysnmp keeps to answer a confirmed-class message (an inform) that will not be answered.

    pysnmp holds the message's and USM's state under ``stateReference`` until the
    Response is sent, or for 600 engine ticks: a replayed inform trapd refuses
    would otherwise keep a few KB each for ten minutes. pysnmp has no public call
    for the receiving side, so its message processing model's cache is used.
    """
    mp = snmp_engine.message_processing_subsystems.get(int(message_processing_model))
    try:
        cached = mp._cache.pop_by_state_reference(state_reference)
    except Exception:  # already released or expired: nothing held
        return
    security = snmp_engine.security_models.get(int(cached["securityModel"]))
    if security is not None:
        with contextlib.suppress(Exception):
            security.release_state_information(cached["securityStateReference"])
