"""The Kea control-API client actions use: ``ctx.kea.get(endpoint, family).command(...)``.

One :class:`KeaClient` talks to one endpoint for one address family; a
Control Agent endpoint serving both families gives two clients sharing one
connection pool. :class:`KeaClients` builds them from the ``kea:`` section of
trapd.yaml and picks the right one for an action.

:meth:`KeaClient.command` hides the transport differences (the CA wants
``"service"`` and answers a list; a Kea 3 daemon socket answers a list; the
unix socket answers one object) and turns Kea's result codes into either a
:class:`KeaResponse` (0 success, 3 empty / not found) or an error from
:mod:`trapd.kea.errors` that the dispatcher can classify.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from trapd.kea.config import SERVICE_BY_FAMILY, EndpointConfig, KeaConfig
from trapd.kea.errors import (
    RESULT_CONFLICT,
    RESULT_EMPTY,
    RESULT_ERROR,
    RESULT_SUCCESS,
    RESULT_UNSUPPORTED,
    KeaAuthError,
    KeaCommandError,
    KeaConflictError,
    KeaError,
    KeaHTTPError,
    KeaPermanentError,
    KeaServerError,
    KeaUnavailableError,
    KeaUnsupportedError,
    hook_for,
)
from trapd.kea.hastatus import HaStatus
from trapd.kea.transport import HttpTransport, Transport, UnixTransport


async def ha_status(client: KeaClient) -> HaStatus | None:
    """The server's HA status via status-get, in the relationship of trapd's endpoint (see
    :meth:`HaStatus.from_status`); None when it cannot be asked or has no HA."""
    try:
        r = await client.command("status-get", accept=(RESULT_SUCCESS,))
    except KeaError:
        return None
    return HaStatus.from_status(r.arguments, client.peer, client.partners)


# What the CA says when the daemon behind it is down: worth a retry.
_OFFLINE = ("likely to be offline", "unable to forward command")
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")
# One encoder for every command: json.dumps builds a new one per call when given separators
# (timeit, a lease4-get: 2.4 -> 1.7 us).
_ENCODER = json.JSONEncoder(separators=(",", ":"))


@dataclass(frozen=True, slots=True)
class KeaResponse:
    """One Kea answer whose result code the caller accepted."""

    result: int
    text: str
    arguments: Any

    @property
    def ok(self) -> bool:
        return self.result == RESULT_SUCCESS

    @property
    def empty(self) -> bool:
        """Result 3: nothing found (a lease that does not exist, an empty list)."""
        return self.result == RESULT_EMPTY

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"result": self.result, "text": self.text}
        if self.arguments is not None:
            d["arguments"] = self.arguments
        return d


def parse_version(text: str) -> tuple[int, int, int]:
    """``"2.2.0"`` -> (2, 2, 0); (0, 0, 0) when Kea says something unexpected."""
    m = _VERSION.search(text)
    return (int(m[1]), int(m[2]), int(m[3])) if m else (0, 0, 0)


class KeaClient:
    """One Kea server (or agent) for one family (v4 or v6).

    ``name`` is what errors, breakers and metrics call it: the endpoint's
    name, or ``ENDPOINT/PEER`` for a peer of an HA relationship. ``up`` and
    ``last_ok`` follow every exchange (actions and probes alike), so the
    metrics show what the dispatcher sees, not what start-up saw.
    """

    def __init__(self, config: EndpointConfig, family: str, transport: Transport) -> None:
        self.config = config
        self.name = config.label
        self.endpoint = config.name
        self.peer = config.peer
        # The other peers' names in its HA relationship (KeaClients sets them): which of a hub's
        # relationships status-get describes is found by the names (HaStatus.from_status).
        self.partners: tuple[str, ...] = ()
        self.family = family
        self.up: bool | None = None  # None: not talked to yet
        self.last_ok: float | None = None  # wall time of the last answer
        self.down_since: float | None = None  # wall time of the first failure in a row
        self.last_error: str | None = None
        self.transport_name = config.transport
        self.service = SERVICE_BY_FAMILY[family]
        self._transport = transport
        self._version: str | None = None
        self._commands: frozenset[str] | None = None

    def __repr__(self) -> str:
        return f"KeaClient({self.name!r}, {self.family}, {self.transport_name} {self.config.target})"

    @property
    def transport(self) -> Transport:
        return self._transport

    def encode(self, command: str, arguments: Any = None, service: list[str] | None = None) -> bytes:
        msg: dict[str, Any] = {"command": command}
        if self.transport_name == "control-agent":
            # The agent forwards only with a service; without one it answers itself.
            msg["service"] = service if service is not None else [self.service]
        if arguments is not None:
            msg["arguments"] = arguments
        return _ENCODER.encode(msg).encode()

    async def command(
        self,
        command: str,
        arguments: Any = None,
        *,
        accept: Iterable[int] = (RESULT_SUCCESS, RESULT_EMPTY),
        service: list[str] | None = None,
    ) -> KeaResponse:
        """Send ``command``; return the answer if its result is in ``accept``, else raise.

        Raises :class:`KeaUnsupportedError` (2; names the hook library to
        load when the command comes from one), :class:`KeaConflictError` (4),
        :class:`KeaCommandError` (1 and anything else not accepted),
        :class:`KeaUnavailableError` when the agent cannot reach the server,
        and the transport errors (unreachable, timeout, HTTP/TLS/auth).
        """
        try:
            return await self._command(command, arguments, accept, service)
        except KeaError as exc:
            exc.breaker_key = self.breaker_for(service)
            raise

    def breaker_for(self, service: list[str] | None = None) -> str:
        """The circuit breaker a command's failures count against (the dispatcher keeps them by this).

        The endpoint's name (``ENDPOINT/PEER`` for a peer), except behind a Control Agent:
        ``ENDPOINT/SERVICE``. The agent answers for each service it forwards to ("unable to
        forward command to the dhcp6 service ... likely to be offline"), and a stopped
        kea-dhcp6 must not pause the v4 actions that kea-dhcp4 behind the same agent serves.
        """
        if self.transport_name != "control-agent":
            return self.name
        return f"{self.name}/{service[0] if service else self.service}"

    async def _command(
        self, command: str, arguments: Any, accept: Iterable[int], service: list[str] | None
    ) -> KeaResponse:
        body = self.encode(command, arguments, service)
        try:
            raw = await self._transport.exchange(body, command)
        except KeaError as exc:
            if not isinstance(exc, KeaHTTPError) or isinstance(exc, KeaAuthError):
                self._down(str(exc))  # unreachable, or reachable but refusing us: down for trapd
            raise
        if isinstance(raw, list):
            if len(raw) != 1:  # trapd asks one server (one service) per command
                raise KeaServerError(
                    f"answer lists {len(raw)} servers' answers, not one: {str(raw)[:200]}", self.name, command
                )
            raw = raw[0]
        if not isinstance(raw, dict) or not isinstance(raw.get("result"), int):
            raise KeaServerError(f"answer without a result code: {str(raw)[:200]}", self.name, command)
        result: int = raw["result"]
        text = str(raw.get("text", ""))
        if result == RESULT_ERROR and any(s in text for s in _OFFLINE):
            self._down(text)  # the agent answered; the server behind it did not
        else:
            self.up, self.last_ok, self.down_since, self.last_error = True, time.time(), None, None
        if result in tuple(accept):
            return KeaResponse(result, text, raw.get("arguments"))
        raise self._error(command, result, text)

    def _down(self, error: str) -> None:
        if self.up is not False:
            self.down_since = time.time()
        self.up, self.last_error = False, error

    def _error(self, command: str, result: int, text: str) -> Exception:
        if result == RESULT_ERROR and any(s in text for s in _OFFLINE):
            return KeaUnavailableError(text, self.name, command)
        if result == RESULT_UNSUPPORTED:
            hook = hook_for(command)
            if hook and "not supported" in text:
                daemon = "kea-dhcp4" if self.family == "v4" else "kea-dhcp6"
                text = (
                    f"{text} The hook library {hook} is not loaded: add it to hooks-libraries in "
                    f"{daemon}'s configuration."
                )
            return KeaUnsupportedError(text, self.name, command, result)
        if result == RESULT_CONFLICT:
            return KeaConflictError(text, self.name, command, result)
        return KeaCommandError(text or f"result {result}", self.name, command, result)

    async def version(self) -> str:
        """Kea's version string (``version-get``), asked once per client."""
        if self._version is None:
            self._version = (await self.command("version-get", accept=(RESULT_SUCCESS,))).text.strip()
        return self._version

    async def version_tuple(self) -> tuple[int, int, int]:
        return parse_version(await self.version())

    async def commands(self) -> frozenset[str]:
        """The commands the server supports now (``list-commands``), asked once per client."""
        if self._commands is None:
            r = await self.command("list-commands", accept=(RESULT_SUCCESS,))
            self._commands = frozenset(str(c) for c in (r.arguments or []))
        return self._commands

    def forget(self) -> None:
        """Drop cached version and command list (after Kea was upgraded or reconfigured)."""
        self._version = None
        self._commands = None


def _real_transport(server: EndpointConfig) -> Transport:
    return UnixTransport(server) if server.transport == "unix" else HttpTransport(server)


class KeaClients:
    """Every configured endpoint, by name and family: what actions get as ``ctx.kea``.

    An HA relationship (an endpoint with ``peers``) has one client per peer
    and family: :meth:`get` with ``peer``, :meth:`peers` for all of them,
    :meth:`serving` for the one that answers clients now.
    """

    def __init__(
        self, config: KeaConfig, *, transport: Callable[[EndpointConfig], Transport] | None = None
    ) -> None:
        """``transport``: makes each server's transport (default: unix socket or HTTP, as configured;
        trapd.testing.KeaDouble passes its own)."""
        self.config = config
        self._clients: dict[tuple[str, str, str | None], KeaClient] = {}
        self._transports: list[Transport] = []
        make = transport or _real_transport
        for name, ep in config.endpoints.items():
            for server in ep.peers or (ep,):
                made = make(server)
                self._transports.append(made)
                partners = tuple(str(p.peer) for p in ep.peers if p.peer != server.peer)
                for fam in ep.families:
                    client = self._clients[(name, fam, server.peer)] = KeaClient(server, fam, made)
                    client.partners = partners

    def _endpoint(self, endpoint: str | None, family: str | None) -> tuple[EndpointConfig, str]:
        if endpoint:
            ep = self.config.endpoints.get(endpoint)
            if ep is None:
                known = ", ".join(self.config.endpoints) or "none"
                raise KeaPermanentError(
                    f"no Kea endpoint named {endpoint!r} in trapd.yaml (known: {known})", endpoint
                )
            fam = family or ep.families[0]
            if fam not in ep.families:
                raise KeaPermanentError(f"endpoint serves {'/'.join(ep.families)}, not {fam}", endpoint)
            return ep, fam
        fam = family or "v4"
        chosen = self.config.endpoint_for(fam)
        if chosen is None:
            raise KeaPermanentError(f"no Kea endpoint for {fam} in trapd.yaml (kea.endpoints)", "-")
        return chosen, fam

    def get(
        self, endpoint: str | None = None, family: str | None = None, peer: str | None = None
    ) -> KeaClient:
        """The client for ``endpoint`` (by name) or, without one, the default for ``family`` (v4).

        An HA relationship needs ``peer``: which of its servers. Talking to
        one of them without saying which would change one server and not its
        partner (Kea HA does not copy control-API changes).
        """
        ep, fam = self._endpoint(endpoint, family)
        if ep.peers:
            if peer is None:
                names = ", ".join(str(p.peer) for p in ep.peers)
                raise KeaPermanentError(
                    f"endpoint {ep.name} is an HA relationship ({names}): an action must say which peer",
                    ep.name,
                )
            if ep.peer_named(peer) is None:
                raise KeaPermanentError(f"endpoint {ep.name} has no peer named {peer!r}", ep.name)
        elif peer is not None:
            raise KeaPermanentError(f"endpoint {ep.name} has no peers (asked for {peer!r})", ep.name)
        return self._clients[(ep.name, fam, peer)]

    def peers(self, endpoint: str | None = None, family: str | None = None) -> list[KeaClient]:
        """Every server behind the endpoint, in trapd.yaml's order (one for a plain endpoint)."""
        ep, fam = self._endpoint(endpoint, family)
        return [self._clients[(ep.name, fam, s.peer)] for s in ep.peers or (ep,)]

    async def serving(self, endpoint: str | None = None, family: str | None = None) -> KeaClient:
        """The server that answers DHCP clients now (for what must happen once per relationship).

        A plain endpoint is its own server. Of an HA relationship, the first
        peer whose HA status says it serves scopes (hot-standby: the active
        server; load-balancing: either; partner-down: the survivor); if none
        says so, the first that answers at all. None answering is a retryable
        error.
        """
        return (await self.serving_peers(endpoint, family))[0]

    async def serving_peers(self, endpoint: str | None = None, family: str | None = None) -> list[KeaClient]:
        """Every peer that serves scopes now, in trapd.yaml's order (see :meth:`serving`; the
        first answering peer alone when none says it serves). Load-balancing has two, and a
        lease may be on one of them only: in state terminated (no lease updates), while updates
        wait in communication-recovery, or with send-lease-updates off."""
        clients = self.peers(endpoint, family)
        if len(clients) == 1:
            return clients
        statuses = await asyncio.gather(*(ha_status(c) for c in clients))
        serving = [c for c, st in zip(clients, statuses, strict=True) if st is not None and st.scopes]
        if serving:
            return serving
        for client, st in zip(clients, statuses, strict=True):
            if st is not None:
                return [client]
        raise KeaUnavailableError(
            "no peer of the HA relationship answers: " + "; ".join(str(c.last_error) for c in clients),
            clients[0].endpoint,
        )

    def by_name(self, name: str) -> KeaClient | None:
        """A client by what errors call it (``endpoint`` or ``endpoint/peer``); the first family's."""
        return next((c for c in self._clients.values() if c.name == name), None)

    def __iter__(self) -> Iterator[KeaClient]:
        return iter(self._clients.values())

    def __len__(self) -> int:
        return len(self._clients)

    async def aclose(self) -> None:
        for t in self._transports:
            await t.aclose()
