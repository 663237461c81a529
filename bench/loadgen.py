"""Paced SNMP trap load for the listener benchmark, loopback only.

Every message is a linkDown notification as a switch sends it (sysUpTime,
snmpTrapOID = IF-MIB::linkDown, ifIndex, ifAdminStatus, ifOperStatus,
ifDescr) plus one extra varbind,
``1.3.6.1.4.1.99999.1.1``, an OctetString of ten ASCII digits holding the
message's sequence number. A receiver's output is counted by collecting the
distinct sequence numbers it shows, so loss is exact and duplicates are seen.

Why an OctetString of fixed width and not a Counter32: BER integers have a
minimal length, so a growing counter would change the message length and
every enclosing length. Ten digits never do, which lets v1 / v2c messages be
encoded once by pysnmp and then patched in place per message.

SNMPv3 authPriv messages cannot be patched alone: each one has its own msgID,
salt (and so IV), ciphertext and MAC. They are built here per message with the
``cryptography`` package's AES and the standard library's hmac, following
RFC 3414 (USM, key localization), RFC 3826 (AES-CFB128) and RFC 7860 (HMAC-SHA-2).
The sender is the authoritative engine for a trap, so it carries its own fixed
engine ID and its own engineBoots / engineTime; receivers need a user bound to
that engine ID (snmptrapd ``createUser -e``, trapd ``engine_ids``). The tests
check that snmptrapd and pysnmp both accept these messages.

All messages are generated before sending starts, so the send loop does only
``socket.send``. Sending is paced per millisecond tick and bounded by both the
message count and a time limit.

Command line (prints a JSON report)::

    python bench/loadgen.py --target 127.0.0.1:16200 --version v2c --rate 5000 --seconds 10
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import ipaddress
import json
import os
import socket
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms

try:  # cryptography >= 47 keeps CFB among the "decrepit" modes
    from cryptography.hazmat.decrepit.ciphers.modes import CFB
except ImportError:  # pragma: no cover - older cryptography
    from cryptography.hazmat.primitives.ciphers.modes import CFB

SEQ_OID = (1, 3, 6, 1, 4, 1, 99999, 1, 1)
SEQ_OID_STR = ".".join(map(str, SEQ_OID))
SEQ_WIDTH = 10
# Probes (readiness checks) carry sequence number 0; load starts at 1.
PROBE_SEQ = 0

LINK_DOWN = (1, 3, 6, 1, 6, 3, 1, 1, 5, 3)
IF_INDEX = (1, 3, 6, 1, 2, 1, 2, 2, 1, 1)
IF_DESCR = (1, 3, 6, 1, 2, 1, 2, 2, 1, 2)
IF_ADMIN_STATUS = (1, 3, 6, 1, 2, 1, 2, 2, 1, 7)
IF_OPER_STATUS = (1, 3, 6, 1, 2, 1, 2, 2, 1, 8)
SNMP_TRAPS = (1, 3, 6, 1, 6, 3, 1, 1, 5)

# A placeholder that cannot occur elsewhere in an encoded trap, replaced by digits.
_SEQ_PLACEHOLDER = b"\xa5\x5a" * (SEQ_WIDTH // 2)

VERSIONS = ("v1", "v2c", "v3")

# Defaults shared with the runner's receiver configurations.
DEFAULT_COMMUNITY = "public"
DEFAULT_V3_USER = "benchuser"
DEFAULT_V3_AUTH_KEY = "bench-auth-pass"
DEFAULT_V3_PRIV_KEY = "bench-priv-pass"
# 0x80 | enterprise 8072 (net-snmp), format 4 (text), "trapd-bench".
DEFAULT_ENGINE_ID = bytes.fromhex("80001f8804") + b"trapd-bench"


# --- tiny BER writer (only what the v3 wrapper needs) -----------------------


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def _tlv(tag: int, content: bytes) -> bytes:
    return bytes((tag,)) + _length(len(content)) + content


def _integer(value: int) -> bytes:
    return _tlv(0x02, value.to_bytes(max(1, (value.bit_length() + 8) // 8), "big", signed=True))


def _octets(value: bytes) -> bytes:
    return _tlv(0x04, value)


def _sequence(*parts: bytes) -> bytes:
    return _tlv(0x30, b"".join(parts))


# --- v1 / v2c: encode once with pysnmp, patch the digits ------------------------


@dataclass(frozen=True, slots=True)
class Template:
    """An encoded message and where its ten sequence digits sit."""

    data: bytes
    seq_offset: int

    def render(self, seq: int) -> bytes:
        return self.data[: self.seq_offset] + _digits(seq) + self.data[self.seq_offset + SEQ_WIDTH :]


def _digits(seq: int) -> bytes:
    if not 0 <= seq < 10**SEQ_WIDTH:
        raise ValueError(f"sequence number out of range: {seq}")
    return b"%010d" % seq


def _template(encoded: bytes) -> Template:
    at = encoded.find(_SEQ_PLACEHOLDER)
    if at < 0 or encoded.find(_SEQ_PLACEHOLDER, at + 1) >= 0:
        raise RuntimeError("sequence placeholder not found exactly once in the encoded trap")
    return Template(encoded, at)


def _link_down_varbinds(p: Any) -> list[tuple[Any, Any]]:
    """The body shared by v1 and v2c: ifIndex, statuses, ifDescr, sequence."""
    if_index = 17
    return [
        (p.ObjectIdentifier((*IF_INDEX, if_index)), p.Integer(if_index)),
        (p.ObjectIdentifier((*IF_ADMIN_STATUS, if_index)), p.Integer(1)),
        (p.ObjectIdentifier((*IF_OPER_STATUS, if_index)), p.Integer(2)),
        (p.ObjectIdentifier((*IF_DESCR, if_index)), p.OctetString(b"GigabitEthernet1/0/17")),
        (p.ObjectIdentifier(SEQ_OID), p.OctetString(_SEQ_PLACEHOLDER)),
    ]


def _v2c_pdu() -> object:
    from pysnmp.proto import api

    p = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
    pdu = p.TrapPDU()
    p.apiTrapPDU.set_defaults(pdu)
    p.apiTrapPDU.set_request_id(pdu, 4242)
    p.apiTrapPDU.set_varbinds(
        pdu,
        [
            (p.ObjectIdentifier(p.apiTrapPDU.sysUpTime), p.TimeTicks(123456)),
            (p.ObjectIdentifier(p.apiTrapPDU.snmpTrapOID), p.ObjectIdentifier(LINK_DOWN)),
            *_link_down_varbinds(p),
        ],
    )
    return pdu


def v2c_template(community: str = DEFAULT_COMMUNITY) -> Template:
    from pyasn1.codec.ber import encoder
    from pysnmp.proto import api

    p = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
    msg = p.Message()
    p.apiMessage.set_defaults(msg)
    p.apiMessage.set_community(msg, community)
    p.apiMessage.set_pdu(msg, _v2c_pdu())
    return _template(encoder.encode(msg))


def v1_template(community: str = DEFAULT_COMMUNITY) -> Template:
    """The v1 form of the same linkDown: generic-trap 2 from snmpTraps."""
    from pyasn1.codec.ber import encoder
    from pysnmp.proto import api

    p = api.PROTOCOL_MODULES[api.SNMP_VERSION_1]
    pdu = p.TrapPDU()
    p.apiTrapPDU.set_defaults(pdu)
    p.apiTrapPDU.set_enterprise(pdu, SNMP_TRAPS)
    p.apiTrapPDU.set_agent_address(pdu, "127.0.0.1")
    p.apiTrapPDU.set_generic_trap(pdu, 2)
    p.apiTrapPDU.set_specific_trap(pdu, 0)
    p.apiTrapPDU.set_timestamp(pdu, 123456)
    p.apiTrapPDU.set_varbinds(pdu, _link_down_varbinds(p))
    msg = p.Message()
    p.apiMessage.set_defaults(msg)
    p.apiMessage.set_community(msg, community)
    p.apiMessage.set_pdu(msg, pdu)
    return _template(encoder.encode(msg))


# --- v3 USM authPriv, per message --------------------------------------------

# name -> (hashlib name, MAC length in the message); RFC 3414 and RFC 7860.
# The same table stands in trapd/listener/v3/keys.py on purpose: the load generator
# builds v3 messages from the RFCs alone, so that snmptrapd and pysnmp accepting them
# also checks trapd's USM code instead of sharing its mistakes.
AUTH_PROTOCOLS: dict[str, tuple[str, int]] = {
    "MD5": ("md5", 12),
    "SHA": ("sha1", 12),
    "SHA-224": ("sha224", 16),
    "SHA-256": ("sha256", 24),
    "SHA-384": ("sha384", 32),
    "SHA-512": ("sha512", 48),
}
# Only AES-128 (RFC 3826): longer AES keys need a key extension on which
# implementations disagree, and the benchmark does not need them.
PRIV_PROTOCOLS = ("AES-128",)


def localized_key(password: str, engine_id: bytes, hash_name: str) -> bytes:
    """RFC 3414 A.2: hash 1 MiB of the repeated password, then localize to the engine."""
    pw = password.encode()
    if not pw:
        raise ValueError("empty v3 password")
    stream = (pw * (1048576 // len(pw) + 1))[:1048576]
    ku = hashlib.new(hash_name, stream).digest()
    return hashlib.new(hash_name, ku + engine_id + ku).digest()


@dataclass(frozen=True, slots=True)
class V3User:
    """What both sides agree on: user, protocols, passwords, the sender's engine ID."""

    user: str = DEFAULT_V3_USER
    auth_protocol: str = "SHA-256"
    auth_key: str = DEFAULT_V3_AUTH_KEY
    priv_protocol: str = "AES-128"
    priv_key: str = DEFAULT_V3_PRIV_KEY
    engine_id: bytes = DEFAULT_ENGINE_ID
    engine_boots: int = 1


class V3Encoder:
    """Builds SNMPv3 authPriv trap messages from one v2c PDU template."""

    def __init__(self, user: V3User) -> None:
        if user.auth_protocol not in AUTH_PROTOCOLS:
            raise ValueError(f"auth protocol must be one of {', '.join(AUTH_PROTOCOLS)}")
        if user.priv_protocol not in PRIV_PROTOCOLS:
            raise ValueError(f"priv protocol must be one of {', '.join(PRIV_PROTOCOLS)}")
        from pyasn1.codec.ber import encoder

        self.user = user
        self._hash, self._mac_len = AUTH_PROTOCOLS[user.auth_protocol]
        self._auth_key = localized_key(user.auth_key, user.engine_id, self._hash)
        self._priv_key = localized_key(user.priv_key, user.engine_id, self._hash)[:16]
        self._aes = algorithms.AES(self._priv_key)
        # contextEngineID = the sender's engine ID, as net-snmp's snmptrap does.
        scoped = _sequence(_octets(user.engine_id), _octets(b""), encoder.encode(_v2c_pdu()))
        self._scoped = _template(scoped)
        # Boots/time of the sender engine; time counts from this object's birth
        # plus an offset, so consecutive runs keep moving forward in time.
        self._boot = time.time() - 1_000_000
        self._salt_base = int.from_bytes(os.urandom(4), "big") << 32
        self._msgid_base = int.from_bytes(os.urandom(2), "big") << 8
        self._hmac = hmac.new(self._auth_key, digestmod=self._hash)
        self._zero_mac = b"\x00" * self._mac_len
        self._cached: tuple[int, tuple[bytes, bytes, bytes, bytes]] | None = None

    def engine_time(self) -> int:
        return int(time.time() - self._boot)

    def encode(self, seq: int, engine_time: int | None = None) -> bytes:
        """One authPriv message: its own msgID, salt (so IV), ciphertext and MAC."""
        u = self.user
        etime = self.engine_time() if engine_time is None else engine_time
        salt = ((self._salt_base + seq) & 0xFFFFFFFFFFFFFFFF).to_bytes(8, "big")
        iv = u.engine_boots.to_bytes(4, "big") + etime.to_bytes(4, "big") + salt
        enc = Cipher(self._aes, CFB(iv)).encryptor()
        encrypted = enc.update(self._scoped.render(seq)) + enc.finalize()
        a, b, c, d = self._layout(etime)
        # msgID stays in 0x01000000..0x7fffffff: always four content bytes.
        msgid = (0x01000000 + (self._msgid_base + seq) % 0x7F000000).to_bytes(4, "big")
        head = a + msgid + b
        tail = c + salt + d + encrypted
        mac = self._hmac.copy()
        mac.update(head + self._zero_mac + tail)
        return head + mac.digest()[: self._mac_len] + tail

    def _layout(self, etime: int) -> tuple[bytes, bytes, bytes, bytes]:
        """The constant bytes around msgID, MAC, salt and ciphertext for one engineTime.

        Every variable field has a fixed width, so a message is these four
        pieces with the variable fields between them. Built once by encoding
        a message of sentinels and cutting it at the sentinels.
        """
        if self._cached is not None and self._cached[0] == etime:
            return self._cached[1]
        u = self.user
        msgid, mac, salt = b"\x7f\x5a\x5a\x5b", b"\xee" * self._mac_len, b"\xd7" * 8
        encrypted = b"\xc3" * len(self._scoped.data)
        usm = _sequence(
            _octets(u.engine_id),
            _integer(u.engine_boots),
            _integer(etime),
            _octets(u.user.encode()),
            _octets(mac),
            _octets(salt),
        )
        global_data = _sequence(
            _tlv(0x02, msgid),
            _integer(65507),
            _octets(b"\x03"),  # auth + priv, not reportable (a trap)
            _integer(3),  # USM
        )
        whole = _sequence(_integer(3), global_data, _octets(usm), _octets(encrypted))
        cuts = []
        for sentinel in (msgid, mac, salt):
            at = whole.find(sentinel)
            if at < 0 or whole.find(sentinel, at + 1) >= 0:
                raise RuntimeError("v3 layout: a sentinel is not unique")
            cuts.append((at, at + len(sentinel)))
        (m0, m1), (a0, a1), (s0, s1) = cuts
        # The ciphertext closes the message (its length byte may equal the filler).
        e0 = len(whole) - len(encrypted)
        layout = (whole[:m0], whole[m1:a0], whole[a1:s0], whole[s1:e0])
        self._cached = (etime, layout)
        return layout


# --- building a run's messages -------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoadSpec:
    version: str = "v2c"
    community: str = DEFAULT_COMMUNITY
    v3: V3User = V3User()


def template_for(spec: LoadSpec) -> Template:
    """The patchable template of a v1 or v2c spec."""
    if spec.version == "v3":
        raise ValueError("v3 messages are built one by one, not from a template")
    return v1_template(spec.community) if spec.version == "v1" else v2c_template(spec.community)


def build_messages(spec: LoadSpec, first_seq: int, count: int) -> list[bytes]:
    """``count`` messages numbered from ``first_seq``, fully encoded."""
    if spec.version == "v3":
        v3 = V3Encoder(spec.v3)
        etime = v3.engine_time()
        return [v3.encode(s, etime) for s in range(first_seq, first_seq + count)]
    tpl = template_for(spec)
    return [tpl.render(s) for s in range(first_seq, first_seq + count)]


class Prober:
    """Single readiness probes (sequence 0) for one version; v3 keeps one encoder."""

    def __init__(self, spec: LoadSpec) -> None:
        self._spec = spec
        self._v3 = V3Encoder(spec.v3) if spec.version == "v3" else None
        self._tpl = None if self._v3 else template_for(spec)

    def message(self) -> bytes:
        if self._v3 is not None:
            return self._v3.encode(PROBE_SEQ)
        assert self._tpl is not None
        return self._tpl.render(PROBE_SEQ)


def parse_seq_field(raw: bytes | str) -> int | None:
    """The sequence number from the varbind's value, or None if it is not one."""
    s = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    return int(s) if len(s) == SEQ_WIDTH and s.isdigit() else None


# --- sending -----------------------------------------------------------------


def loopback_address(target: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT``; refuses anything but loopback."""
    if target.startswith("["):
        host, _, port = target[1:].partition("]:")
    else:
        host, _, port = target.rpartition(":")
    if not port.isdigit():
        raise ValueError(f"bad target {target!r}: want HOST:PORT")
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"refusing to send load to {host}: loopback only")
    return host, int(port)


@dataclass(frozen=True, slots=True)
class SendReport:
    sent: int
    errors: int
    rate_asked: float
    seconds: float
    rate_achieved: float
    max_batch: int
    late_ticks: int  # ticks that had to catch up more than two ticks' worth
    stopped_by_time: bool


def open_sender(host: str, port: int) -> socket.socket:
    """A UDP socket connected to ``host``:``port``; refuses anything but loopback, as --target does
    (the benchmarks call this directly, not through :func:`loopback_address`)."""
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"refusing to send load to {host}: loopback only")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
    sock.connect((host, port))
    return sock


def pace(
    sock: socket.socket,
    messages: Sequence[bytes],
    rate: float,
    max_seconds: float,
    tick: float = 0.001,
) -> SendReport:
    """Send ``messages`` at ``rate`` per second, in batches per ``tick``.

    At each tick everything due by now is sent in a tight loop, then the loop
    sleeps to the next tick (a busy wait would take a core the receiver needs
    on a 2-core machine). A stall is caught up in one batch, as a switch
    storm would be; ``max_batch`` and ``late_ticks`` show how bursty it got.
    Stops after ``max_seconds`` whatever is left.
    """
    if rate <= 0:
        raise ValueError("rate must be positive")
    send = sock.send
    n = len(messages)
    sent = errors = max_batch = late = 0
    per_tick = rate * tick
    t0 = time.perf_counter()
    deadline = t0 + max_seconds
    next_tick = t0
    stopped = False
    while sent < n:
        now = time.perf_counter()
        if now >= deadline:
            stopped = True
            break
        due = min(n, int((now - t0) * rate) + 1)
        batch = due - sent
        if batch > 0:
            for i in range(sent, due):
                try:
                    send(messages[i])
                except OSError:  # ECONNREFUSED after an ICMP unreachable, ENOBUFS
                    errors += 1
            sent = due
            max_batch = max(max_batch, batch)
            if batch > 2 * per_tick + 1:
                late += 1
        next_tick += tick
        delay = next_tick - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        else:
            next_tick = time.perf_counter()
    seconds = time.perf_counter() - t0
    return SendReport(
        sent=sent,
        errors=errors,
        rate_asked=rate,
        seconds=round(seconds, 4),
        rate_achieved=round(sent / seconds, 1) if seconds > 0 else 0.0,
        max_batch=max_batch,
        late_ticks=late,
        stopped_by_time=stopped,
    )


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    ap.add_argument("--target", required=True, help="HOST:PORT on loopback (127.0.0.1:PORT or [::1]:PORT)")
    ap.add_argument("--version", choices=VERSIONS, default="v2c")
    ap.add_argument("--rate", type=float, default=1000.0, help="traps per second")
    ap.add_argument("--seconds", type=float, default=10.0, help="how long to send (count = rate x seconds)")
    ap.add_argument("--count", type=int, help="number of traps (default rate x seconds)")
    ap.add_argument("--first-seq", type=int, default=1)
    ap.add_argument("--community", default=DEFAULT_COMMUNITY)
    ap.add_argument("--v3-user", default=DEFAULT_V3_USER)
    ap.add_argument("--v3-auth", choices=tuple(AUTH_PROTOCOLS), default="SHA-256")
    ap.add_argument("--v3-auth-key", default=DEFAULT_V3_AUTH_KEY)
    ap.add_argument("--v3-priv-key", default=DEFAULT_V3_PRIV_KEY)
    ap.add_argument("--v3-engine-id", default=DEFAULT_ENGINE_ID.hex(), help="sender engine ID, hex")
    args = ap.parse_args(argv)
    try:
        host, port = loopback_address(args.target)
    except ValueError as e:
        print(f"loadgen: {e}", file=sys.stderr)
        return 2
    count = args.count if args.count is not None else int(args.rate * args.seconds)
    spec = LoadSpec(
        version=args.version,
        community=args.community,
        v3=V3User(
            user=args.v3_user,
            auth_protocol=args.v3_auth,
            auth_key=args.v3_auth_key,
            priv_key=args.v3_priv_key,
            engine_id=bytes.fromhex(args.v3_engine_id),
        ),
    )
    t = time.perf_counter()
    messages = build_messages(spec, args.first_seq, count)
    build_s = time.perf_counter() - t
    with open_sender(host, port) as sock:
        report = pace(sock, messages, args.rate, max_seconds=count / args.rate * 1.5 + 1.0)
    out = asdict(report) | {"version": args.version, "bytes": len(messages[0]) if messages else 0}
    out["build_seconds"] = round(build_s, 3)
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
