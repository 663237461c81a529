"""The metrics and health HTTP endpoint: GET /metrics and GET /healthz, on the event loop.

Why not prometheus-client's ``start_http_server``: it serves from a thread,
and trapd's collector reads plain dicts that the event loop mutates without
locks (see :mod:`trapd.service.metrics`); iterating one from another thread
while a new key is added raises "dictionary changed size during iteration".
Serving on the loop makes every scrape see a consistent state for free, and
/healthz then also proves the loop is alive. The counters are copied on the
loop (``prepare``: the collector's snapshot); the text is rendered from that
copy in a thread, one scrape at a time. That is about a millisecond for a
few hundred series, but a second for 100,000 rules that each matched once,
which on the loop stopped the receive path at every scrape.

The server is deliberately tiny: HTTP/1.1 GET and HEAD, one request per
connection, small request size and time limits, a cap on concurrent
connections. It binds to loopback by default; put a reverse proxy in front
for anything else.

At the cap, a new connection closes the oldest one that has not yet sent
its request head, rather than being refused: otherwise a few idle
connections (a port scanner, a stuck script, any local user) renewed every
request timeout would keep every scrape and health check out. A real
client sends its request at once, so it is never the oldest for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import CollectorRegistry

from trapd.service.health import Health
from trapd.service.logging import get_logger

log = get_logger(__name__)

_MAX_REQUEST = 8192
_REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    500: "Internal Server Error",
    503: "Service Unavailable",
}
_INDEX = b"trapd\n/metrics  Prometheus metrics\n/healthz  health (200 ok, 503 not)\n"


class MetricsServer:
    """Serves ``registry`` at /metrics and ``health()`` at /healthz.

    ``port=0`` picks a free port (tests); :attr:`port` tells which.
    ``refresh``: awaited before /metrics or /healthz is answered, to bring
    what ``registry`` and ``health`` read up to date (the supervisor of
    several workers asks each for its counters then; a single daemon's are
    always current and it passes none).
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        health: Callable[[], Health] | None = None,
        host: str = "127.0.0.1",
        port: int = 9163,
        *,
        max_connections: int = 16,
        request_timeout: float = 5.0,
        refresh: Callable[[], Awaitable[None]] | None = None,
        prepare: Callable[[], None] | None = None,
    ) -> None:
        self._refresh = refresh
        # Run on the loop before /metrics is rendered in a thread: copies what the collectors read.
        self._prepare = prepare
        self._rendering = asyncio.Lock()  # one rendering thread at a time, however many scrapes
        self._refreshing: asyncio.Future[None] | None = None
        self._registry = registry
        self._health = health
        self._host = host
        self._port = port
        self._max_connections = max_connections
        # Connections still waiting for their request head, oldest first (the ones evicted at the
        # cap), and the number being answered (never evicted; bounded by the timeout).
        self._reading: dict[asyncio.StreamWriter, None] = {}
        self._answering = 0
        self._timeout = request_timeout
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        """Bind and start serving; OSError naming the address and the setting if it cannot be bound."""
        try:
            self._server = await asyncio.start_server(
                self._handle, self._host, self._port, reuse_address=True, limit=_MAX_REQUEST
            )
        except OSError as exc:
            raise bind_error(exc, self._host, self._port) from exc
        log.info("metrics endpoint listening", address=self.url)

    @property
    def port(self) -> int:
        if self._server is None or not self._server.sockets:
            return self._port
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    def listening_fds(self) -> list[int]:
        """The listening sockets' descriptors (a worker forked by the supervisor closes its copies)."""
        if self._server is None:
            return []
        return [s.fileno() for s in self._server.sockets]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self._reading) + self._answering >= self._max_connections:
            if not self._reading:
                writer.transport.abort()  # every slot is answering a request: that ends within the timeout
                return
            oldest = next(iter(self._reading))
            del self._reading[oldest]
            oldest.transport.abort()  # its handler sees the connection lost and returns
        self._reading[writer] = None
        try:
            async with asyncio.timeout(self._timeout):
                head = await _read_head(reader)
        except (TimeoutError, ValueError, ConnectionError):
            head = None
        except BaseException:
            writer.transport.abort()
            raise
        finally:
            self._reading.pop(writer, None)
        if head is None:
            writer.close()  # nothing was written: closes at once
            return
        self._answering += 1
        try:
            request = _parse(head)
            if request is not None and request.method in ("GET", "HEAD") and request.path in _REFRESHED:
                await self._refreshed()
            if request is not None and request.method in ("GET", "HEAD") and request.path == "/metrics":
                status, ctype, body, head_only = await self._metrics(request)
            else:
                status, ctype, body, head_only = self._respond(request)
            # drain() then returns only once all of it is in the kernel, so close() never waits.
            writer.transport.set_write_buffer_limits(high=0)
            writer.write(
                (
                    f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
                    f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    "Cache-Control: no-store\r\nConnection: close\r\n\r\n"
                ).encode("latin-1")
                + (b"" if head_only else body)
            )
            try:
                await asyncio.wait_for(writer.drain(), self._timeout)
            except (TimeoutError, ConnectionError):
                # A client that stopped reading: close() would wait for the rest to be sent, for ever,
                # holding the response and the descriptor; it has had its time.
                writer.transport.abort()
        except BaseException:
            writer.transport.abort()
            raise
        finally:
            self._answering -= 1
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _refreshed(self) -> None:
        """Run ``refresh``, or wait for the one already running: concurrent requests share it.

        With several workers a refresh is a round trip to each of them; a burst
        of scrapes and health checks must not make every worker build its
        snapshot once per request.
        """
        if self._refresh is None:
            return
        if self._refreshing is None:
            self._refreshing = asyncio.ensure_future(self._run_refresh(self._refresh))
        # Shielded: a request cut off while it waits must not cancel the others' refresh.
        await asyncio.shield(self._refreshing)

    async def _run_refresh(self, refresh: Callable[[], Awaitable[None]]) -> None:
        try:
            await refresh()
        except Exception:
            log.exception("refreshing the metrics failed")
        finally:
            self._refreshing = None

    async def _metrics(self, request: _Request) -> tuple[int, str, bytes, bool]:
        """/metrics: the counters copied here on the loop, the text rendered in a thread."""
        head_only = request.method == "HEAD"
        try:
            encoder, ctype = choose_encoder(request.headers.get("accept", ""))
            async with self._rendering:
                if self._prepare is not None:
                    self._prepare()
                body = await asyncio.to_thread(encoder, self._registry)
            return 200, ctype, body, head_only
        except Exception:
            log.exception("metrics collection failed")
            return 500, "text/plain", b"metrics collection failed\n", head_only

    def _respond(self, request: _Request | None) -> tuple[int, str, bytes, bool]:
        if request is None:
            return 400, "text/plain", b"bad request\n", False
        method, path = request.method, request.path
        head_only = method == "HEAD"
        if method not in ("GET", "HEAD"):
            return 405, "text/plain", b"only GET and HEAD\n", False
        if path == "/healthz":
            try:
                health = self._health() if self._health is not None else Health(True)
            except Exception as exc:
                log.exception("health check failed")
                health = Health(False, "error", {"error": type(exc).__name__})
            return (200 if health.healthy else 503), "application/json", health.to_json(), head_only
        if path == "/":
            return 200, "text/plain; charset=utf-8", _INDEX, head_only
        return 404, "text/plain", b"not found\n", head_only


def bind_error(exc: OSError, host: str, port: int) -> OSError:
    """``exc`` from binding the endpoint, saying which address and which setting: asyncio's "error
    while attempting to bind on address" does not tell the metrics port from the trap port."""
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return OSError(exc.errno, f"cannot serve metrics on {shown} (service.metrics.listen): {reason}")


def check_bindable(host: str, port: int) -> None:
    """Raise :func:`bind_error` now if ``host:port`` is taken (another trapd, another exporter).

    For the supervisor of several workers, which serves the endpoint from its event loop, made
    after the workers are forked: checked first, a taken port fails the start before any worker
    takes a trap. The socket is bound as the server's will be (SO_REUSEADDR, so a connection
    of the last run in TIME_WAIT does not count) and closed at once.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((host, port))
            sock.listen()  # with SO_REUSEADDR, bind alone may share a port whose holder listens later
        except OSError as exc:
            raise bind_error(exc, host, port) from exc


@dataclass(frozen=True)
class _Request:
    method: str
    path: str  # the target without its query
    headers: dict[str, str]  # lower-case names


# The paths whose answer reads what ``refresh`` brings up to date.
_REFRESHED = ("/metrics", "/healthz")


async def _read_head(reader: asyncio.StreamReader) -> list[bytes] | None:
    """The request line and header lines, without their line ends; None if the client went first.

    A line may end in a lone LF (RFC 9112 2.2 allows taking it as a line end: ``printf ... | nc``
    and scripts send that); empty lines before the request line are skipped (2.2 again). The
    head is at most ``_MAX_REQUEST`` bytes in all (ValueError past it, like a longer line).
    """
    lines: list[bytes] = []
    size = 0
    while True:
        line = await reader.readline()
        size += len(line)
        if size > _MAX_REQUEST:
            raise ValueError("request head too long")
        if not line.endswith(b"\n"):
            return None  # the end of the stream before the end of the head
        line = line.removesuffix(b"\n").removesuffix(b"\r")
        if line:
            lines.append(line)
        elif lines:
            return lines


def _parse(head: list[bytes]) -> _Request | None:
    """The request line and headers of ``head``; None when it is not an HTTP request line."""
    lines = [line.decode("latin-1") for line in head]
    parts = lines[0].split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        return None
    headers = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    return _Request(parts[0], _path_of(parts[1]), headers)


def _path_of(target: str) -> str:
    """The path of a request target: origin form ``/metrics?x``, or absolute form
    ``http://host:port/metrics`` (RFC 9112 3.2.2: a server must accept it)."""
    scheme, sep, rest = target.partition("://")
    if sep and scheme.lower() in ("http", "https"):
        target = "/" + rest.partition("/")[2]
    return target.split("?", 1)[0]
