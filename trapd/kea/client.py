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

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from trapd.kea.config import SERVICE_BY_FAMILY, EndpointConfig, KeaConfig
from trapd.kea.errors import (
    RESULT_CONFLICT,
    RESULT_EMPTY,
    RESULT_ERROR,
    RESULT_SUCCESS,
    RESULT_UNSUPPORTED,
    KeaCommandError,
    KeaConflictError,
    KeaPermanentError,
    KeaServerError,
    KeaUnavailableError,
    KeaUnsupportedError,
    hook_for,
)
from trapd.kea.transport import HttpTransport, Transport, UnixTransport

# What the CA says when the daemon behind it is down: worth a retry.
_OFFLINE = ("likely to be offline", "unable to forward command")
_VERSION = re.compile(r"(\d+)\.(\d+)\.(\d+)")


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
    """One Kea endpoint for one family (v4 or v6)."""

    def __init__(self, config: EndpointConfig, family: str, transport: Transport) -> None:
        self.config = config
        self.name = config.name
        self.family = family
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
        return json.dumps(msg, separators=(",", ":")).encode()

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
        body = self.encode(command, arguments, service)
        raw = await self._transport.exchange(body, command)
        if isinstance(raw, list):
            if not raw:
                raise KeaServerError("empty answer list", self.name, command)
            raw = raw[0]
        if not isinstance(raw, dict) or not isinstance(raw.get("result"), int):
            raise KeaServerError(f"answer without a result code: {str(raw)[:200]}", self.name, command)
        result: int = raw["result"]
        text = str(raw.get("text", ""))
        if result in tuple(accept):
            return KeaResponse(result, text, raw.get("arguments"))
        raise self._error(command, result, text)

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


class KeaClients:
    """Every configured endpoint, by name and family: what actions get as ``ctx.kea``."""

    def __init__(self, config: KeaConfig) -> None:
        self.config = config
        self._clients: dict[tuple[str, str], KeaClient] = {}
        self._transports: list[Transport] = []
        for name, ep in config.endpoints.items():
            transport: Transport = UnixTransport(ep) if ep.transport == "unix" else HttpTransport(ep)
            self._transports.append(transport)
            for fam in ep.families:
                self._clients[(name, fam)] = KeaClient(ep, fam, transport)

    def get(self, endpoint: str | None = None, family: str | None = None) -> KeaClient:
        """The client for ``endpoint`` (by name) or, without one, the default for ``family`` (v4)."""
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
            return self._clients[(endpoint, fam)]
        fam = family or "v4"
        chosen = self.config.endpoint_for(fam)
        if chosen is None:
            raise KeaPermanentError(f"no Kea endpoint for {fam} in trapd.yaml (kea.endpoints)", "-")
        return self._clients[(chosen.name, fam)]

    def __iter__(self) -> Iterator[KeaClient]:
        return iter(self._clients.values())

    def __len__(self) -> int:
        return len(self._clients)

    async def aclose(self) -> None:
        for t in self._transports:
            await t.aclose()
