"""The ``listener:`` section of trapd.yaml: sockets, communities, v3 users, limits.

Example::

    listener:
      listen: ["0.0.0.0:162", "[::]:162"]
      receive_buffer: 8388608          # SO_RCVBUF asked for; the kernel caps it at rmem_max
      communities:
        - public
        - {env: TRAPD_COMMUNITY}
      v3_users:
        - user: trapuser
          auth_protocol: SHA-256       # MD5 SHA SHA-224 SHA-256 SHA-384 SHA-512, or none
          auth_key: {file: /etc/trapd/v3-auth.key}
          priv_protocol: AES-128       # DES AES-128 AES-192 AES-256 AES-192-C AES-256-C, or none
          priv_key: {env: TRAPD_V3_PRIV}
          engine_ids: ["80001f8880e9630000d61ff449"]   # senders allowed to use this user (traps)
        - user: keyuser                # key material instead of passphrases (net-snmp -3m/-3M, -3k/-3K)
          auth_protocol: SHA
          auth_key: {file: /etc/trapd/keyuser-auth.key}   # hex, as net-snmp prints it: 0x...
          auth_key_type: localized     # passphrase (default), master (Ku) or localized (Kul)
          priv_protocol: AES-128
          priv_key: {file: /etc/trapd/keyuser-priv.key}
          priv_key_type: localized
          engine_ids: ["80001f8880e9630000d61ff449"]   # a localized key: the one engine it is for
        # the same name again with other keys for other engines (at most one entry without engine_ids)
      allowed_sources: [10.0.0.0/8, "::1"]   # empty: everyone; others are dropped before decoding
      rate_limit: {per_source: 2000, global: 20000, burst: 2.0}
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trapd.params import unmapped_network
from trapd.secrets import Secret
from trapd.yamlsource import ConfigError, Mark, YDict, check_keys, expect, where

AUTH_PROTOCOLS = ("none", "MD5", "SHA", "SHA-224", "SHA-256", "SHA-384", "SHA-512")
# AES-192/256: the Blumenthal key extension (net-snmp's -x AES-192/AES-256); AES-192-C/256-C:
# Cisco's, the Reeder extension (net-snmp's -x AES-192-C/AES-256-C). See v3/keys.py.
PRIV_PROTOCOLS = ("none", "DES", "AES-128", "AES-192", "AES-256", "AES-192-C", "AES-256-C")
# What a v3 key secret holds: a passphrase (RFC 3414 A.2.1 makes the keys), the master key Ku
# (net-snmp's -3m/-3M, createUser -m), or the key Kul localized to one engine ID (-3k/-3K, -l).
KEY_TYPES = ("passphrase", "master", "localized")
# Octets of Ku and Kul per auth protocol: its hash's digest size (RFC 3414 A.2, RFC 7860).
KEY_LENGTHS = {"MD5": 16, "SHA": 20, "SHA-224": 28, "SHA-256": 32, "SHA-384": 48, "SHA-512": 64}
# Octets of the localized privacy key each priv protocol uses, extended if the hash is shorter
# (DES: 8 of key + 8 of pre-IV, RFC 3414 8.1.1.1).
PRIV_KEY_SIZES = {"DES": 16, "AES-128": 16, "AES-192": 24, "AES-256": 32, "AES-192-C": 24, "AES-256-C": 32}
DEFAULT_PORT = 162
DEFAULT_RCVBUF = 8 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class ListenAddress:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def check_community(community: Secret, mark: Mark | None = None) -> Secret:
    """An accepted community, refused when empty: it would accept every v1/v2c notification that
    carries none (a sender that knows nothing), and is most often a secret file or variable that
    was made but not filled."""
    if not community.reveal():
        raise ConfigError(
            f"an empty community ({community.origin}) would accept every notification that "
            "carries none: give the community, or leave it out",
            mark,
        )
    return community


def parse_listen(text: str, mark: Mark | None = None) -> ListenAddress:
    """``HOST:PORT``, ``[V6]:PORT``, ``HOST`` (port 162) or ``:PORT`` (all IPv4)."""
    s = text.strip()
    host: str
    port = DEFAULT_PORT
    if s.startswith("["):
        end = s.find("]")
        if end < 0:
            raise ConfigError(f"bad listen address {text!r}: missing ']'", mark)
        host, rest = s[1:end], s[end + 1 :]
        if rest:
            if not rest.startswith(":") or not rest[1:].isdigit():
                raise ConfigError(f"bad listen address {text!r}", mark)
            port = int(rest[1:])
    elif s.count(":") == 1:
        host, _, p = s.partition(":")
        if not p.isdigit():
            raise ConfigError(f"bad port in listen address {text!r}", mark)
        port = int(p)
        host = host or "0.0.0.0"
    else:
        host = s
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"listen address {text!r}: {host!r} is not an IP address", mark) from None
    if not 0 <= port <= 65535:
        raise ConfigError(f"listen address {text!r}: port out of range", mark)
    return ListenAddress(host, port)


@dataclass(frozen=True, slots=True)
class V3User:
    user: str
    auth_protocol: str = "none"
    auth_key: Secret | None = None
    priv_protocol: str = "none"
    priv_key: Secret | None = None
    # Sender engine IDs allowed to send traps as this user. Empty: any sender
    # engine; trapd learns an engine on its first message that authenticates
    # (at most 1024 learnt engines), so forged engine IDs cost one HMAC and
    # never grow the engine's tables.
    engine_ids: tuple[bytes, ...] = ()
    # KEY_TYPES: what auth_key / priv_key hold (a master or localized key in hex: key_octets).
    auth_key_type: str = "passphrase"
    priv_key_type: str = "passphrase"

    @property
    def localized_for(self) -> bytes | None:
        """The engine ID a localized key of this user was localized for (its one ``engine_ids``
        entry), or None: its keys (passphrases, master keys) are localized to any engine."""
        if "localized" in (self.auth_key_type, self.priv_key_type):
            return self.engine_ids[0]
        return None

    def keys_work_at(self, engine_id: bytes) -> bool:
        """Whether this user's keys can be localized to ``engine_id`` (not so for a localized key
        and any other engine than its own)."""
        bound = self.localized_for
        return bound is None or bound == engine_id

    @property
    def level(self) -> str:
        if self.auth_protocol == "none":
            return "noAuthNoPriv"
        return "authNoPriv" if self.priv_protocol == "none" else "authPriv"


@dataclass(frozen=True, slots=True)
class RateLimit:
    """Token buckets in notifications per second; 0 turns a bucket off.

    ``v3_slow_*``: the separate budget of v3 messages that need pysnmp's engine
    (discovery, informs; ~1.5 ms each), on by default (limits.SlowPathBudget).
    """

    per_source: float = 0.0
    global_: float = 0.0
    burst: float = 2.0  # bucket depth, in seconds of rate
    v3_slow_per_source: float = 10.0
    v3_slow_global: float = 100.0


@dataclass(frozen=True, slots=True)
class ListenerConfig:
    listen: tuple[ListenAddress, ...] = (ListenAddress("0.0.0.0", DEFAULT_PORT),)
    communities: tuple[Secret, ...] = ()
    v3_users: tuple[V3User, ...] = ()
    receive_buffer: int = DEFAULT_RCVBUF
    allowed_sources: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    rate_limit: RateLimit = field(default_factory=RateLimit)
    # trapd's own engine ID for v3 (informs are sent to it); None: derived from the host.
    engine_id: bytes | None = None

    @classmethod
    def from_yaml(cls, node: Any, base_dir: Path) -> ListenerConfig:
        n = check_keys(
            node,
            {
                "listen",
                "communities",
                "v3_users",
                "receive_buffer",
                "allowed_sources",
                "rate_limit",
                "engine_id",
            },
            "listener",
        )
        listen = expect(n, "listen", list, "listener")
        addrs = (
            tuple(parse_listen(str(a), where(listen, i)) for i, a in enumerate(listen))
            if listen
            else (ListenAddress("0.0.0.0", DEFAULT_PORT),)
        )
        comms = expect(n, "communities", list, "listener", [])
        communities = tuple(
            check_community(Secret.from_config(c, where(comms, i), base_dir=base_dir), where(comms, i))
            for i, c in enumerate(comms)
        )
        users_node = expect(n, "v3_users", list, "listener", [])
        users = tuple(_v3_user(u, where(users_node, i), base_dir) for i, u in enumerate(users_node))
        _check_same_names(users, users_node)
        nets = []
        for i, s in enumerate(expect(n, "allowed_sources", list, "listener", [])):
            try:
                nets.append(unmapped_network(ipaddress.ip_network(str(s), strict=False)))
            except ValueError:
                raise ConfigError(
                    f"not a network or address: {s!r}", where(n["allowed_sources"], i)
                ) from None
        rl = check_keys(
            n.get("rate_limit"),
            {"per_source", "global", "burst", "v3_slow_per_source", "v3_slow_global"},
            "listener.rate_limit",
        )
        rate = RateLimit(
            per_source=_rate(rl, "per_source", 0),
            global_=_rate(rl, "global", 0),
            burst=_rate(rl, "burst", 2.0),
            v3_slow_per_source=_rate(rl, "v3_slow_per_source", 10.0),
            v3_slow_global=_rate(rl, "v3_slow_global", 100.0),
        )
        eid = expect(n, "engine_id", str, "listener")
        return cls(
            listen=addrs,
            communities=communities,
            v3_users=users,
            receive_buffer=int(expect(n, "receive_buffer", int, "listener", DEFAULT_RCVBUF)),
            allowed_sources=tuple(nets),
            rate_limit=rate,
            engine_id=_hex(eid, where(n, "engine_id")) if eid else None,
        )


def _check_same_names(users: tuple[V3User, ...], node: Any) -> None:
    """A user name may be given once per sender engine (net-snmp's ``createUser -e``): switches
    with keys of their own under one name. Traps are told apart by the sender's engine ID, so no
    engine may be named twice for a name, and only one entry of a name may take any engine."""
    engines: dict[tuple[str, bytes], int] = {}
    any_engine: dict[str, int] = {}
    for i, u in enumerate(users):
        if not u.engine_ids:
            if u.user in any_engine:
                raise ConfigError(
                    f"v3 user {u.user} is defined more than once without engine_ids (entries "
                    f"{any_engine[u.user] + 1} and {i + 1}): only one entry of a name may take any engine",
                    where(node, i),
                )
            any_engine[u.user] = i
        for engine_id in u.engine_ids:
            first = engines.setdefault((u.user, engine_id), i)
            if first != i:
                raise ConfigError(
                    f"v3 user {u.user} has engine ID {engine_id.hex()} twice (entries {first + 1} and "
                    f"{i + 1}): traps from an engine are checked with one entry's keys",
                    where(node, i),
                )


def _rate(node: YDict, key: str, default: float) -> float:
    """A rate_limit figure: a finite number. YAML's .inf would turn a limit off and .nan (it
    compares false with every bound) let everything through, without a word either way."""
    value = float(expect(node, key, (int, float), "rate_limit", default))
    if not math.isfinite(value):
        raise ConfigError(f"listener.rate_limit.{key} must be a finite number, got {value}", where(node, key))
    return value


def _hex(text: str, mark: Mark | None) -> bytes:
    """An engine ID in hex (``0x`` prefix and ``:`` separators allowed): SnmpEngineID is 5 to 32
    octets (RFC 3411), and pysnmp's engine fails at start-up on any other size."""
    s = text.strip()
    s = s[2:] if s[:2].lower() == "0x" else s
    try:
        engine_id = bytes.fromhex(s.replace(":", ""))
    except ValueError:
        raise ConfigError(f"not a hex engine ID: {text!r}", mark) from None
    if not 5 <= len(engine_id) <= 32:
        raise ConfigError(
            f"engine ID {text!r} is {len(engine_id)} octets: an SNMP engine ID is 5 to 32 octets", mark
        )
    return engine_id


def key_octets(text: str) -> bytes:
    """A master or localized key as net-snmp prints and takes it (``0x`` and hex digits; ``:``
    between octets and surrounding blanks allowed). ValueError, without the text, when not hex."""
    s = text.strip()
    s = s[2:] if s[:2].lower() == "0x" else s
    try:
        return bytes.fromhex(s.replace(":", ""))
    except ValueError:
        raise ValueError("not hex") from None


def _key_type(
    n: YDict, side: str, protocol: str, auth_protocol: str, secret: Secret | None, mark: Mark | None
) -> str:
    """``{side}_key_type`` of a user entry, and the key checked against it: a passphrase of at
    least 8 characters, or a key of the length the auth protocol's hash gives (never shown)."""
    key_type = str(expect(n, f"{side}_key_type", str, "v3 user", "passphrase"))
    if key_type not in KEY_TYPES:
        raise ConfigError(
            f"{side}_key_type must be one of {', '.join(KEY_TYPES)}", where(n, f"{side}_key_type")
        )
    if protocol == "none":
        if f"{side}_key_type" in n:
            raise ConfigError(f"{side}_key_type without a {side}_protocol", where(n, f"{side}_key_type"))
        return key_type
    user = n["user"]
    if secret is None or (key_type == "passphrase" and len(secret.reveal()) < 8):
        raise ConfigError(f"v3 user {user}: {side}_key is required and has at least 8 characters", mark)
    if key_type == "passphrase":
        return key_type
    at = where(n, f"{side}_key")
    try:
        octets = key_octets(secret.reveal())
    except ValueError:
        raise ConfigError(
            f"v3 user {user}: {side}_key ({secret.origin}) is not a {key_type} key in hex "
            f"(net-snmp's form: 0x and two hex digits an octet)",
            at,
        ) from None
    hash_octets = KEY_LENGTHS.get(auth_protocol, 0)
    allowed = {hash_octets}
    if side == "priv" and key_type == "localized":
        # net-snmp's -3K takes the localized key as the hash gives it and extends it where the
        # protocol needs more (AES-192/256 with a short hash), or the octets the protocol uses.
        allowed.add(PRIV_KEY_SIZES[protocol])
    if len(octets) not in allowed:
        raise ConfigError(
            f"v3 user {user}: {side}_key ({secret.origin}) is {len(octets)} octets; a {key_type} key "
            f"for {auth_protocol} is {' or '.join(str(a) for a in sorted(allowed))} octets",
            at,
        )
    return key_type


def _v3_user(node: Any, mark: Mark | None, base_dir: Path) -> V3User:
    n: YDict = check_keys(
        node,
        {
            "user",
            "auth_protocol",
            "auth_key",
            "auth_key_type",
            "priv_protocol",
            "priv_key",
            "priv_key_type",
            "engine_ids",
        },
        "listener.v3_users[]",
    )
    user = expect(n, "user", str, "v3 user")
    if not user:
        raise ConfigError("a v3 user needs 'user'", mark)
    auth = str(expect(n, "auth_protocol", str, "v3 user", "none"))
    priv = str(expect(n, "priv_protocol", str, "v3 user", "none"))
    auth = {"SHA1": "SHA", "SHA-1": "SHA"}.get(auth.upper(), auth.upper() if auth != "none" else auth)
    priv = priv.upper() if priv != "none" else priv
    priv = {
        "AES": "AES-128",
        "AES128": "AES-128",
        "AES192": "AES-192",
        "AES256": "AES-256",
        "AES192C": "AES-192-C",
        "AES256C": "AES-256-C",
    }.get(priv, priv)
    if auth not in AUTH_PROTOCOLS:
        raise ConfigError(
            f"auth_protocol must be one of {', '.join(AUTH_PROTOCOLS)}", where(n, "auth_protocol")
        )
    if priv not in PRIV_PROTOCOLS:
        raise ConfigError(
            f"priv_protocol must be one of {', '.join(PRIV_PROTOCOLS)}", where(n, "priv_protocol")
        )
    if auth == "none" and priv != "none":
        raise ConfigError("privacy needs authentication (authPriv needs an auth_protocol)", mark)
    auth_key = (
        Secret.from_config(n["auth_key"], where(n, "auth_key"), base_dir=base_dir)
        if "auth_key" in n
        else None
    )
    priv_key = (
        Secret.from_config(n["priv_key"], where(n, "priv_key"), base_dir=base_dir)
        if "priv_key" in n
        else None
    )
    auth_key_type = _key_type(n, "auth", auth, auth, auth_key, mark)
    priv_key_type = _key_type(n, "priv", priv, auth, priv_key, mark)
    eids = expect(n, "engine_ids", list, "v3 user", [])
    engine_ids = tuple(_hex(str(e), where(eids, i)) for i, e in enumerate(eids))
    if "localized" in (auth_key_type, priv_key_type) and len(engine_ids) != 1:
        raise ConfigError(
            f"v3 user {user}: a localized key works with the one engine ID it was localized for; "
            f"give that engine ID as engine_ids: [ID] (for informs trapd's listener.engine_id, "
            f"for traps the sender's; another entry of the name for each further engine)",
            where(n, "engine_ids") if "engine_ids" in n else mark,
        )
    return V3User(
        user=user,
        auth_protocol=auth,
        auth_key=auth_key,
        priv_protocol=priv,
        priv_key=priv_key,
        engine_ids=engine_ids,
        auth_key_type=auth_key_type,
        priv_key_type=priv_key_type,
    )
