"""The ``kea:`` section of trapd.yaml: the Kea endpoints actions can reach.

Example::

    kea:
      default: {v4: local4, v6: local6}   # or one name; optional
      endpoints:
        local4: {transport: unix, socket: /run/kea/kea4-ctrl-socket, family: v4}
        local6: {transport: unix, socket: /run/kea/kea6-ctrl-socket, family: v6}
        ca:
          transport: control-agent        # kea-ctrl-agent (Kea <= 3.0)
          url: https://dhcp1:8000/
          family: [v4, v6]                # the CA forwards to both servers
          user: trapd
          password: {file: /etc/trapd/kea.pw}
          ca_file: /etc/trapd/kea-ca.pem  # CA bundle that signed the agent's certificate
          cert_file: /etc/trapd/trapd.pem # client certificate, when the agent has cert-required
          key_file: /etc/trapd/trapd.key
          timeout: 5                      # seconds for one command, connect included
        kea3: {transport: http, url: http://127.0.0.1:8001/, family: v4}   # a Kea >= 3.0 daemon socket
        pair4:                            # an HA relationship: one endpoint, several servers
          family: v4
          peers:
            - {name: server1, transport: unix, socket: /run/kea/kea4-ctrl-socket}
            - {name: server2, transport: control-agent, url: https://10.0.0.12:8000/,
               user: trapd, password: {file: /etc/trapd/kea.pw}, ca_file: /etc/trapd/kea-ca.pem}

Transports: ``unix`` (the daemon's control socket: no network, no password;
the natural choice on the DHCP host), ``control-agent`` (HTTP(S) to
kea-ctrl-agent, which needs to be told the service: it is derived from the
family) and ``http`` (HTTP(S) straight to a Kea >= 3.0 daemon).

An action picks its endpoint by its ``endpoint`` parameter, else by family:
the ``default`` for that family, else the first endpoint of that family in
this file.

An endpoint with ``peers:`` is a Kea HA relationship (docs/kea-ha.md): each
peer is an ordinary endpoint definition with a ``name`` (Kea's name for the
server, its ``this-server-name``) and its own transport, auth and TLS; the
family is the relationship's. Rules keep naming the relationship; the
dispatcher decides per action which peers it goes to.

Other keys: ``pool_size`` (HTTP connections kept per endpoint, default 4),
``idle_timeout`` (seconds an idle HTTP connection is reused; Kea closes it
after 30 s, default 20), ``max_in_flight`` (unix: commands at once, default 8).

At the top of ``kea:``: ``poll_interval`` (default 10s; 0 = off): how often
the daemon asks every server ``status-get`` (reachability, HA state, for the
metrics and /healthz); ``warn_after`` (default 1m): a server unreachable this
long is a warning in the log and /healthz (an HA peer in ``terminated`` at once).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import cached_property
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from trapd.params import ParamError, parse_duration
from trapd.secrets import Secret
from trapd.yamlsource import ConfigError, YDict, check_keys, expect, where

TRANSPORTS = ("unix", "control-agent", "http")
FAMILIES = ("v4", "v6")
SERVICE_BY_FAMILY = {"v4": "dhcp4", "v6": "dhcp6"}

_COMMON_KEYS = {"transport", "family", "timeout"}
_HTTP_KEYS = {
    "url",
    "user",
    "password",
    "ca_file",
    "cert_file",
    "key_file",
    "pool_size",
    "idle_timeout",
    "verify_hostname",
}
_UNIX_KEYS = {"socket", "max_in_flight"}
_PAIR_KEYS = {"family", "peers"}


def peer_label(endpoint: str, peer: str | None) -> str:
    """How errors, breakers, metrics, caps and commands name one peer of an HA relationship:
    ``pair4/server1``; an endpoint that is not a pair keeps its own name. One spelling, so that
    a cap counted under it and a breaker or metric named by it agree."""
    return f"{endpoint}/{peer}" if peer else endpoint


@dataclass(frozen=True)
class EndpointConfig:
    name: str
    transport: str
    families: tuple[str, ...]
    timeout: float = 5.0
    # unix
    socket: Path | None = None
    max_in_flight: int = 8
    # control-agent / http
    url: str | None = None
    user: str | None = None
    password: Secret | None = None
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    pool_size: int = 4
    idle_timeout: float = 20.0
    verify_hostname: bool = True
    # HA: a relationship has its peers here (and transport "peers"); a peer has its name in ``peer``.
    peers: tuple[EndpointConfig, ...] = ()
    peer: str | None = None

    @property
    def target(self) -> str:
        """Where it points, for messages (never includes credentials)."""
        if self.peers:
            return ", ".join(f"{p.peer}={p.target}" for p in self.peers)
        return str(self.socket) if self.transport == "unix" else str(self.url)

    @property
    def label(self) -> str:
        """How errors, breakers and metrics name it: ``pair4/server1`` for a peer, else the name."""
        return peer_label(self.name, self.peer)

    def peer_named(self, name: str) -> EndpointConfig | None:
        return next((p for p in self.peers if p.peer == name), None)


@dataclass(frozen=True)
class KeaConfig:
    endpoints: dict[str, EndpointConfig] = field(default_factory=dict)
    defaults: dict[str, str] = field(default_factory=dict)  # family -> endpoint name
    poll_interval: float = 10.0  # seconds between status-get rounds of the daemon's monitor; 0: none
    warn_after: float = 60.0  # unreachable this long: a warning

    def endpoint_for(self, family: str) -> EndpointConfig | None:
        """The endpoint an action uses for ``family`` when it names none."""
        name = self.defaults.get(family)
        if name:
            return self.endpoints[name]
        for ep in self.endpoints.values():
            if family in ep.families:
                return ep
        return None

    def resolve(self, endpoint: str | None, family: str) -> EndpointConfig | None:
        """The endpoint an action with these parameters reaches (None: not configured)."""
        if endpoint:
            return self.endpoints.get(endpoint)
        return self.endpoint_for(family)

    @cached_property
    def has_pairs(self) -> bool:
        """Any HA relationship? Asked for every submitted outcome (trapd.dispatch.peers): once."""
        return any(ep.peers for ep in self.endpoints.values())

    @classmethod
    def from_yaml(cls, node: Any, base_dir: Path) -> KeaConfig:
        n = check_keys(node, {"default", "endpoints", "poll_interval", "warn_after"}, "kea")
        eps_node = n.get("endpoints")
        endpoints: dict[str, EndpointConfig] = {}
        if eps_node is not None:
            eps = check_keys(
                eps_node, set(eps_node) if isinstance(eps_node, dict) else set(), "kea.endpoints"
            )
            for name, ep in eps.items():
                endpoints[str(name)] = _endpoint(str(name), ep, base_dir)
        defaults = _defaults(n, endpoints)
        return cls(
            endpoints=endpoints,
            defaults=defaults,
            poll_interval=_duration(n, "poll_interval", 10.0),
            warn_after=_duration(n, "warn_after", 60.0),
        )


def _duration(n: YDict, key: str, default: float) -> float:
    if key not in n or n[key] is None:
        return default
    try:
        return parse_duration(n[key])
    except ParamError as exc:
        raise ConfigError(f"kea.{key}: {exc}", where(n, key)) from None


def _defaults(n: YDict, endpoints: dict[str, EndpointConfig]) -> dict[str, str]:
    raw = n.get("default")
    mark = where(n, "default")
    if raw is None:
        return {}
    out: dict[str, str] = {}
    if isinstance(raw, str):
        if raw not in endpoints:
            raise ConfigError(f"kea.default: no endpoint named {raw!r}", mark)
        for fam in endpoints[raw].families:
            out[fam] = raw
        return out
    if isinstance(raw, dict):
        for fam, name in raw.items():
            m = where(raw, fam)
            if fam not in FAMILIES:
                raise ConfigError(
                    f"kea.default: family must be v4 or v6, not {fam!r}", where(raw, fam, of_key=True)
                )
            if not isinstance(name, str) or name not in endpoints:
                raise ConfigError(f"kea.default.{fam}: no endpoint named {name!r}", m)
            if fam not in endpoints[name].families:
                raise ConfigError(f"kea.default.{fam}: endpoint {name!r} does not serve {fam}", m)
            out[fam] = name
        return out
    raise ConfigError("kea.default must be an endpoint name or {v4: NAME, v6: NAME}", mark)


def _path(node: YDict, key: str, what: str, base_dir: Path) -> Path | None:
    value = expect(node, key, str, what)
    if value is None:
        return None
    p = Path(value)
    return p if p.is_absolute() else base_dir / p


def _endpoint(name: str, node: Any, base_dir: Path) -> EndpointConfig:
    what = f"kea.endpoints.{name}"
    if isinstance(node, dict) and "peers" in node:
        return _pair(name, node, base_dir)
    return _server(name, node, base_dir, what)


def _families(n: YDict, what: str, transport: str) -> tuple[str, ...]:
    fam_raw = n.get("family")
    fams = [fam_raw] if isinstance(fam_raw, str) else fam_raw
    if (
        not isinstance(fams, list)
        or not fams
        or any(f not in FAMILIES for f in fams)
        or len(set(fams)) != len(fams)
    ):
        raise ConfigError(
            f"{what}.family must be v4, v6 or [v4, v6]", where(n, "family") if "family" in n else n.mark
        )
    if len(fams) > 1 and transport != "control-agent":
        raise ConfigError(
            f"{what}: only a control-agent serves both families; a {transport} endpoint talks to one daemon",
            where(n, "family"),
        )
    return tuple(fams)


def _pair(name: str, node: Any, base_dir: Path) -> EndpointConfig:
    """An HA relationship: ``family`` and ``peers``, each peer a named endpoint of its own."""
    what = f"kea.endpoints.{name}"
    n = check_keys(node, _PAIR_KEYS, what)
    raw = n.get("peers")
    if not isinstance(raw, list):
        raise ConfigError(f"{what}.peers must list the relationship's servers", where(n, "peers"))
    peers: list[EndpointConfig] = []
    for i, peer_node in enumerate(raw):
        pwhat = f"{what}.peers[{i}]"
        if not isinstance(peer_node, YDict):
            raise ConfigError(f"{pwhat} must be an endpoint definition with a name", where(n, "peers"))
        check_keys(peer_node, _COMMON_KEYS | _HTTP_KEYS | _UNIX_KEYS | {"name"}, pwhat)
        if "family" in peer_node:
            raise ConfigError(
                f"{pwhat}: the family belongs to the relationship ({what}.family), not to a peer",
                where(peer_node, "family", of_key=True),
            )
        peer_name = peer_node.get("name")
        if not isinstance(peer_name, str) or not peer_name or "/" in peer_name:
            raise ConfigError(
                f"{pwhat}.name: each peer needs a name (Kea's this-server-name; no '/')",
                where(peer_node, "name") if "name" in peer_node else peer_node.mark,
            )
        if any(p.peer == peer_name for p in peers):
            raise ConfigError(f"{pwhat}.name: two peers named {peer_name!r}", where(peer_node, "name"))
        fields = {k: v for k, v in peer_node.items() if k != "name"}
        peer_cfg = _server(name, _with_family(peer_node, fields, n.get("family")), base_dir, pwhat)
        peers.append(replace(peer_cfg, peer=peer_name))
    if len(peers) < 2:
        raise ConfigError(
            f"{what}.peers must list the relationship's servers (two or more)", where(n, "peers")
        )
    families = _families(
        n, what, "control-agent" if all(p.transport == "control-agent" for p in peers) else "peers"
    )
    for p in peers:
        if not set(families) <= set(p.families):
            raise ConfigError(f"{what}: peer {p.peer} does not serve {'/'.join(families)}", where(n, "peers"))
    return EndpointConfig(name, "peers", families, max(p.timeout for p in peers), peers=tuple(peers))


def _with_family(peer_node: YDict, fields: dict[Any, Any], family: Any) -> YDict:
    """The peer's keys plus the relationship's family, keeping the YAML marks for messages."""
    out = YDict(fields)
    out.mark = peer_node.mark
    out.key_marks = dict(peer_node.key_marks)
    out.value_marks = dict(peer_node.value_marks)
    if family is not None:
        out["family"] = family
    return out


def _server(name: str, node: Any, base_dir: Path, what: str) -> EndpointConfig:
    n = check_keys(node, _COMMON_KEYS | _HTTP_KEYS | _UNIX_KEYS, what)
    transport = expect(n, "transport", str, what)
    if transport not in TRANSPORTS:
        raise ConfigError(
            f"{what}.transport must be one of {', '.join(TRANSPORTS)}",
            where(n, "transport") if "transport" in n else n.mark,
        )
    allowed = _COMMON_KEYS | (_UNIX_KEYS if transport == "unix" else _HTTP_KEYS)
    check_keys(n, allowed, f"{what} ({transport})")
    fams = _families(n, what, str(transport))
    timeout = expect(n, "timeout", (int, float), what, 5.0)
    if timeout <= 0:
        raise ConfigError(f"{what}.timeout must be positive", where(n, "timeout"))

    if transport == "unix":
        sock = _path(n, "socket", what, base_dir)
        if sock is None:
            raise ConfigError(f"{what}: a unix endpoint needs socket: PATH", n.mark)
        if len(str(sock).encode()) > 107:
            raise ConfigError(
                f"{what}.socket: path longer than 107 bytes cannot be a unix socket", where(n, "socket")
            )
        mif = expect(n, "max_in_flight", int, what, 8)
        if mif < 1:
            raise ConfigError(f"{what}.max_in_flight must be at least 1", where(n, "max_in_flight"))
        return EndpointConfig(name, transport, tuple(fams), float(timeout), socket=sock, max_in_flight=mif)

    url = expect(n, "url", str, what)
    if url is None:
        raise ConfigError(f"{what}: an HTTP endpoint needs url: http(s)://HOST:PORT/", n.mark)
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"{what}.url must be http://HOST:PORT/ or https://HOST:PORT/", where(n, "url"))
    if parts.username or parts.password:
        raise ConfigError(f"{what}.url: put credentials in user/password, not in the URL", where(n, "url"))
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError(f"{what}.url: bad port", where(n, "url")) from None
    user = expect(n, "user", str, what)
    password = (
        Secret.from_config(n["password"], where(n, "password"), base_dir=base_dir)
        if "password" in n
        else None
    )
    if (user is None) != (password is None):
        raise ConfigError(f"{what}: basic auth needs both user and password", n.mark)
    ca_file = _path(n, "ca_file", what, base_dir)
    cert_file = _path(n, "cert_file", what, base_dir)
    key_file = _path(n, "key_file", what, base_dir)
    if (ca_file or cert_file) and parts.scheme != "https":
        raise ConfigError(f"{what}: ca_file/cert_file need an https:// url", where(n, "url"))
    if key_file and not cert_file:
        raise ConfigError(f"{what}: key_file without cert_file", where(n, "key_file"))
    for key, p in (("ca_file", ca_file), ("cert_file", cert_file), ("key_file", key_file)):
        if p is not None and not p.is_file():
            raise ConfigError(f"{what}.{key}: no such file {p}", where(n, key))
    pool = expect(n, "pool_size", int, what, 4)
    if not 1 <= pool <= 64:
        raise ConfigError(f"{what}.pool_size must be 1..64", where(n, "pool_size"))
    idle = expect(n, "idle_timeout", (int, float), what, 20.0)
    if idle < 0:
        raise ConfigError(f"{what}.idle_timeout cannot be negative", where(n, "idle_timeout"))
    return EndpointConfig(
        name,
        transport,
        tuple(fams),
        float(timeout),
        url=url,
        user=user,
        password=password,
        ca_file=ca_file,
        cert_file=cert_file,
        key_file=key_file,
        pool_size=pool,
        idle_timeout=float(idle),
        verify_hostname=bool(expect(n, "verify_hostname", bool, what, True)),
    )
