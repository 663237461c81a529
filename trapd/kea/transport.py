"""Moving one JSON command to Kea and its answer back: unix socket and HTTP/1.1.

Why HTTP is written here on asyncio streams instead of using httpx: measured
against a Kea 2.2 Control Agent, httpx's AsyncClient with one request in
flight reached 160-230 lease4-del/s where a plain keep-alive connection got
600-1,200/s (kea-2.2-facts.md §8). Kea's HTTP is simple (one POST, a
Content-Length body back, keep-alive, idle connections closed after 30 s),
so a small keep-alive pool with Content-Length framing is all it takes, and
the client stays off the critical path (bench/bench_kea.py compares it with
the raw rate).

Both transports return the parsed JSON (a list from HTTP, an object from the
unix socket) or raise a :mod:`trapd.kea.errors` error that says whether a
retry may help.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import grp
import json
import os
import socket
import ssl
import stat
import time
from typing import Any, Protocol
from urllib.parse import urlsplit

from trapd.kea.config import EndpointConfig
from trapd.kea.errors import (
    KeaAuthError,
    KeaHTTPError,
    KeaPermanentError,
    KeaServerError,
    KeaTimeoutError,
    KeaUnavailableError,
)

# Kea answers are small, but lease4-get-page with a big limit is not: allow 64 MiB. More (a proxy,
# a wrong URL) is a retryable error on either transport, never read into memory whole.
MAX_ANSWER = 64 * 1024 * 1024
# Up to this size a unix answer is parsed as soon as its bytes so far end in "}" (one trip
# through the loop less than waiting for Kea's close); a bigger one only at the close, where it
# is parsed once. Parsing at every such piece re-parsed the whole answer so far each time: 13
# times for an 18 MiB lease4-get-all from Kea 2.2 (60,000 leases), 2.4-4.6 s of CPU on the event
# loop instead of 0.8 s, and 22-32 s instead of 6.4 s in all.
EARLY_PARSE_MAX = 256 * 1024


# 4xx statuses that say the command was not run and may be sent again. Kea's HTTP listeners
# (agent 2.2-3.0, Kea 3.0's own socket) answer 408 to a request not complete 10 s after it began:
# a network that stalled mid-request, not a wrong request.
_NOT_RUN_TRY_AGAIN = {
    408: "Kea did not get the whole request within its 10 s (a stalled network?); not run",
    429: "rate-limited (a proxy in front of Kea); not run",
}


class Transport(Protocol):
    async def exchange(self, body: bytes, command: str) -> Any:
        """Send one encoded command; return the decoded answer."""
        ...

    async def aclose(self) -> None: ...


def _decode(data: bytes, endpoint: str, command: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        snippet = data[:200].decode("utf-8", "replace")
        raise KeaServerError(f"answer is not JSON: {snippet!r}", endpoint, command) from None


_INCOMPLETE = object()


def _parse_if_complete(data: bytes) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        return _INCOMPLETE


class _NoAnswer(Exception):
    pass


class _TooBig(Exception):
    pass


class _OneAnswer(asyncio.Protocol):
    """Collects Kea's one JSON object; resolves ``answer`` as soon as it is complete.

    Kea closes right after answering, but waiting for that EOF costs another
    trip through the event loop, so a small answer counts as soon as the bytes
    so far parse (a big one waits for the EOF: see EARLY_PARSE_MAX). At EOF
    whatever arrived is handed over as bytes for the caller to decode (and to
    report when it is not JSON).
    """

    def __init__(self, answer: asyncio.Future[Any]) -> None:
        self.answer = answer
        self.chunks: list[bytes] = []
        self.size = 0
        self.transport: asyncio.BaseTransport | None = None
        self.connecting = True
        self.expired = False

    def expire(self, task: asyncio.Task[Any] | None) -> None:
        """The command's time is up: fail the answer, or stop the connect still under way."""
        if self.answer.done():
            return
        self.expired = True
        self.answer.set_exception(TimeoutError())
        if self.connecting and task is not None:
            task.cancel()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if self.answer.done():
            return
        self.chunks.append(data)
        self.size += len(data)
        if self.size > MAX_ANSWER:
            self.answer.set_exception(_TooBig())
        elif self.size <= EARLY_PARSE_MAX and data.rstrip().endswith(b"}"):
            value = _parse_if_complete(b"".join(self.chunks))
            if value is _INCOMPLETE:
                return
            self.answer.set_result(value)
        else:
            return
        if self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.answer.done():
            return
        if self.chunks:
            self.answer.set_result(b"".join(self.chunks))
        else:
            self.answer.set_exception(exc or _NoAnswer())


def _read_answer(sock: socket.socket, protocol: _OneAnswer) -> None:
    """The answer's socket is readable: hand what it has (or its end) to the protocol."""
    try:
        data = sock.recv(65536)
    except (BlockingIOError, InterruptedError):
        return
    except OSError as exc:
        protocol.connection_lost(exc)
        return
    if data:
        protocol.data_received(data)
    else:
        protocol.connection_lost(None)


def _socket_access_advice(path: str) -> str:
    """What to change when connect() on Kea's socket is refused: it needs the socket's write bit.

    Kea 2.2 takes the socket's mode from its umask (Debian's units: 0022, no group write;
    UMask=0007 gives srwxrwx---); Kea 2.6.3 forces umask 027 whatever the unit says
    (srwxr-x---: no member of its group can connect); Kea 3.0.4 makes it srwxrwx---.
    """
    try:
        st = os.stat(path)
    except OSError:
        return "trapd's user needs access to Kea's control socket (group _kea)"
    mode = stat.filemode(st.st_mode)
    try:
        group = grp.getgrgid(st.st_gid).gr_name
    except KeyError:
        group = str(st.st_gid)
    if st.st_mode & stat.S_IWGRP:
        return f"the socket is {mode}, group {group}: trapd's user needs to be in group {group}"
    return (
        f"the socket is {mode}, group {group}: connecting needs write permission, which its group "
        "lacks. Kea 2.2 takes it from its umask (UMask=0007 in its systemd unit); Kea 2.6 gives its "
        "group none whatever the umask: use its Control Agent (transport: control-agent)"
    )


class UnixTransport:
    """Kea's unix control socket: one command per connection, one JSON object back.

    Kea answers exactly one object and closes; a second command on the same
    connection would be ignored, so nothing is reused. ``max_in_flight``
    bounds how many connections are open at once. A plain socket with one
    reader callback (see :meth:`_roundtrip`) measured the least CPU per command;
    a protocol on the loop's transport was about half of asyncio streams' cost.
    """

    def __init__(self, cfg: EndpointConfig) -> None:
        assert cfg.socket is not None
        self.name = cfg.name
        self.path = str(cfg.socket)
        self.timeout = cfg.timeout
        self._slots = asyncio.Semaphore(cfg.max_in_flight)

    async def exchange(self, body: bytes, command: str) -> Any:
        async with self._slots:
            # The same OS errors as HttpTransport._connect maps, kept apart on purpose:
            # each message names this transport's object (socket path) and its fix.
            try:
                answer = await self._roundtrip(body)
            except TimeoutError:
                raise KeaTimeoutError(
                    f"no answer within {self.timeout:g}s on {self.path}", self.name, command
                ) from None
            except FileNotFoundError:
                raise KeaUnavailableError(
                    f"no socket at {self.path}: is the Kea server running?", self.name, command
                ) from None
            except ConnectionRefusedError:
                raise KeaUnavailableError(
                    f"connection refused on {self.path}: the Kea server is not running (stale socket file)",
                    self.name,
                    command,
                ) from None
            except PermissionError:
                advice = _socket_access_advice(self.path)
                raise KeaPermanentError(
                    f"permission denied on {self.path}: {advice}", self.name, command
                ) from None
            except _TooBig:  # as over HTTP: Kea is there and answered, too much
                raise KeaServerError(
                    f"answer larger than {MAX_ANSWER} bytes on {self.path}", self.name, command
                ) from None
            except _NoAnswer:
                raise KeaUnavailableError(
                    f"{self.path} closed without an answer", self.name, command
                ) from None
            except OSError as exc:
                raise KeaUnavailableError(f"{self.path}: {exc.strerror or exc}", self.name, command) from None
        if isinstance(answer, bytes):  # what arrived before Kea closed
            try:
                return json.loads(answer)
            except ValueError:
                if answer.lstrip()[:1] not in (b"{", b"["):
                    return _decode(answer, self.name, command)  # says: not JSON
            # Kea began an answer and went away (killed, restarted): like HTTP's mid-answer close.
            snippet = answer[-100:].decode("utf-8", "replace")
            raise KeaUnavailableError(
                f"{self.path} closed mid-answer after {len(answer)} bytes (ending {snippet!r})",
                self.name,
                command,
            )
        return answer

    async def _roundtrip(self, body: bytes) -> Any:
        """Connect, send, read the answer: on a plain socket with one reader callback.

        A connect to a unix socket with room in its listen backlog completes at once,
        and a command fits in the socket's buffer, so both are plain calls; only the
        answer is waited for, by one ``add_reader`` callback feeding :class:`_OneAnswer`.
        Measured against the loop's ``create_unix_connection`` + protocol, interleaved,
        7 rounds of 1,000 ``version-get`` on uvloop against Kea 2.2: client CPU per command
        65 -> 54 us (medians). A full backlog (connect would block) takes that path, which
        waits for room.
        """
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            sock.connect(self.path)
        except BlockingIOError:
            sock.close()
            return await self._roundtrip_transport(body)
        except BaseException:
            sock.close()
            raise
        answer: asyncio.Future[Any] = loop.create_future()
        protocol = _OneAnswer(answer)
        protocol.connecting = False
        fd = sock.fileno()
        timer = loop.call_later(self.timeout, protocol.expire, None)
        try:
            try:
                sent = sock.send(body)
            except BlockingIOError:
                sent = 0
            if sent < len(body):
                await loop.sock_sendall(sock, body[sent:])
            loop.add_reader(fd, _read_answer, sock, protocol)
            try:
                return await answer
            finally:
                loop.remove_reader(fd)
        finally:
            timer.cancel()
            sock.close()

    async def _roundtrip_transport(self, body: bytes) -> Any:
        # One timer per command instead of asyncio.timeout(): the same effect
        # for a fraction of the cost (measured ~20 us less per command, a
        # good part of the client's whole overhead on the unix socket).
        loop = asyncio.get_running_loop()
        answer: asyncio.Future[Any] = loop.create_future()
        protocol = _OneAnswer(answer)
        task = asyncio.current_task()
        timer = loop.call_later(self.timeout, protocol.expire, task)
        try:
            try:
                transport, _ = await loop.create_unix_connection(lambda: protocol, self.path)
            except asyncio.CancelledError:
                if protocol.expired and task is not None:
                    task.uncancel()
                    if protocol.transport is not None:
                        protocol.transport.close()
                    raise TimeoutError from None
                raise
            protocol.connecting = False
            try:
                transport.write(body)
                return await answer
            finally:
                transport.close()
        finally:
            timer.cancel()

    async def aclose(self) -> None:
        return None


class _Stale(Exception):
    """A reused connection was closed by Kea before any byte of an answer arrived."""


class _Conn:
    __slots__ = ("last_used", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.last_used = time.monotonic()

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


def make_ssl_context(cfg: EndpointConfig) -> ssl.SSLContext | None:
    if not (cfg.url or "").startswith("https:"):
        return None
    ctx = ssl.create_default_context(cafile=str(cfg.ca_file) if cfg.ca_file else None)
    if not cfg.verify_hostname:
        ctx.check_hostname = False
    if cfg.cert_file:
        ctx.load_cert_chain(str(cfg.cert_file), str(cfg.key_file) if cfg.key_file else None)
    return ctx


class HttpTransport:
    """HTTP/1.1 POST to kea-ctrl-agent or a Kea >= 3.0 daemon, over a small keep-alive pool.

    At most ``pool_size`` requests are in flight; each takes the most recently
    used idle connection or opens one. Kea closes connections idle for 30 s:
    idle ones older than ``idle_timeout`` are dropped before use, and if a
    reused connection turns out closed before any answer byte arrived, the
    request goes once more over a fresh connection. That is Kea's idle close
    racing our send, so Kea never saw the request; only a Kea that dies
    between executing a command and answering it could see it twice.
    ``timeout`` covers the whole exchange including connecting.
    """

    def __init__(self, cfg: EndpointConfig, ssl_context: ssl.SSLContext | None = None) -> None:
        assert cfg.url is not None
        self.name = cfg.name
        self.url = cfg.url
        parts = urlsplit(cfg.url)
        self.tls = parts.scheme == "https"
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or (443 if self.tls else 80)
        self.timeout = cfg.timeout
        self.idle_timeout = cfg.idle_timeout
        self._ssl = ssl_context if ssl_context is not None else make_ssl_context(cfg)
        host_header = f"[{self.host}]" if ":" in self.host else self.host
        if parts.port:
            host_header += f":{parts.port}"
        head = (
            f"POST {parts.path or '/'} HTTP/1.1\r\nHost: {host_header}\r\nContent-Type: application/json\r\n"
        )
        if cfg.user is not None and cfg.password is not None:
            token = base64.b64encode(f"{cfg.user}:{cfg.password.reveal()}".encode()).decode()
            head += f"Authorization: Basic {token}\r\n"
        self._head = (head + "Content-Length: ").encode()
        self._idle: list[_Conn] = []
        self._slots = asyncio.Semaphore(cfg.pool_size)
        self.connections_opened = 0  # for tests and the benchmark: keep-alive must keep this low

    async def exchange(self, body: bytes, command: str) -> Any:
        async with self._slots:
            try:
                async with asyncio.timeout(self.timeout):
                    status, data = await self._request(body, command)
            except TimeoutError:
                raise KeaTimeoutError(
                    f"no answer within {self.timeout:g}s from {self.url}", self.name, command
                ) from None
        if status == 200:
            return _decode(data, self.name, command)
        text = data[:300].decode("utf-8", "replace").strip()
        with contextlib.suppress(ValueError, AttributeError, TypeError):
            text = json.loads(data).get("text", text)
        if status in (401, 403):
            raise KeaAuthError(f"HTTP {status} {text}: check user/password", self.name, command, status)
        if status >= 500:
            raise KeaServerError(f"HTTP {status} {text}", self.name, command)
        if status in _NOT_RUN_TRY_AGAIN:
            raise KeaServerError(f"HTTP {status} {text}: {_NOT_RUN_TRY_AGAIN[status]}", self.name, command)
        raise KeaHTTPError(f"HTTP {status} {text}", self.name, command, status)

    async def _request(self, body: bytes, command: str) -> tuple[int, bytes]:
        request = self._head + str(len(body)).encode() + b"\r\n\r\n" + body
        conn = self._take_idle()
        if conn is not None:
            try:
                return await self._roundtrip(conn, request, command)
            except _Stale:
                pass
        conn = await self._connect(command)
        try:
            return await self._roundtrip(conn, request, command)
        except _Stale:
            # Kea's HTTPS listener (agent or Kea 3 socket) closes on plain HTTP without a word.
            hint = "" if self.tls else " (an HTTPS listener? then the url needs https://)"
            raise KeaUnavailableError(
                f"{self.url} closed the connection without an answer{hint}", self.name, command
            ) from None

    def _take_idle(self) -> _Conn | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()
            if now - conn.last_used < self.idle_timeout and not conn.reader.at_eof():
                return conn
            conn.close()
        return None

    async def _connect(self, command: str) -> _Conn:
        # Mapped like UnixTransport.exchange's errors, kept apart on purpose: each
        # message names this transport's object (URL, TLS) and its fix.
        try:
            reader, writer = await asyncio.open_connection(
                self.host,
                self.port,
                ssl=self._ssl,
                limit=MAX_ANSWER,
                server_hostname=self.host if self._ssl else None,
            )
        except ssl.SSLCertVerificationError as exc:
            raise KeaAuthError(
                f"TLS: {self.url} presented a certificate we do not trust ({exc.verify_message}); "
                "check ca_file",
                self.name,
                command,
            ) from None
        except ssl.SSLError as exc:
            raise KeaAuthError(
                f"TLS handshake with {self.url} failed: {exc.reason or exc}", self.name, command
            ) from None
        except ConnectionRefusedError:
            raise KeaUnavailableError(
                f"connection refused by {self.url}: is Kea running?", self.name, command
            ) from None
        except OSError as exc:
            raise KeaUnavailableError(
                f"cannot connect to {self.url}: {exc.strerror or exc}", self.name, command
            ) from None
        self.connections_opened += 1
        return _Conn(reader, writer)

    async def _roundtrip(self, conn: _Conn, request: bytes, command: str) -> tuple[int, bytes]:
        keep = False
        try:
            try:
                conn.writer.write(request)
                await conn.writer.drain()
                status_line = await conn.reader.readline()
            except (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError):
                raise _Stale() from None
            except ssl.SSLError as exc:
                # TLS 1.3 sends "certificate required" / "unknown ca" after the handshake.
                raise KeaAuthError(
                    f"TLS: {self.url} refused us: {exc.reason or exc}; check cert_file/key_file",
                    self.name,
                    command,
                ) from None
            if not status_line:
                raise _Stale()
            try:
                version, code, *_ = status_line.decode("latin-1").split(" ", 2)
                status = int(code)
            except ValueError:
                raise KeaServerError(
                    f"not an HTTP answer from {self.url}: {status_line[:80]!r}", self.name, command
                ) from None
            length = -1
            close = version != "HTTP/1.1"
            while True:
                line = await conn.reader.readline()
                if line in (b"\r\n", b"\n"):
                    break
                if not line:
                    raise KeaUnavailableError(
                        f"{self.url} closed the connection in the headers", self.name, command
                    )
                name, _, value = line.decode("latin-1").partition(":")
                key = name.strip().lower()
                if key == "content-length":
                    try:
                        length = int(value.strip())
                    except ValueError:
                        raise KeaServerError(
                            f"Content-Length {value.strip()[:40]!r} is not a number, from {self.url}",
                            self.name,
                            command,
                        ) from None
                elif key == "connection":
                    close = value.strip().lower() == "close" or (
                        close and value.strip().lower() != "keep-alive"
                    )
            if length > MAX_ANSWER:
                raise KeaServerError(
                    f"answer larger than {MAX_ANSWER} bytes ({length} announced) from {self.url}",
                    self.name,
                    command,
                )
            if length >= 0:
                data = await conn.reader.readexactly(length)
            else:
                data = await self._read_to_close(conn, command)
                close = True
            keep = not close
            return status, data
        except asyncio.IncompleteReadError:
            raise KeaUnavailableError(
                f"{self.url} closed the connection mid-answer", self.name, command
            ) from None
        except ValueError:  # readline() past the reader's limit: a status or header line without end
            raise KeaServerError(
                f"a line longer than {MAX_ANSWER} bytes in the answer's head from {self.url}",
                self.name,
                command,
            ) from None
        except (ConnectionResetError, BrokenPipeError) as exc:
            raise KeaUnavailableError(f"{self.url}: {exc}", self.name, command) from None
        finally:
            if keep:
                conn.last_used = time.monotonic()
                self._idle.append(conn)
            else:
                conn.close()

    async def _read_to_close(self, conn: _Conn, command: str) -> bytes:
        """A body without Content-Length (HTTP/1.0, a proxy): up to the close, within MAX_ANSWER."""
        chunks: list[bytes] = []
        size = 0
        while chunk := await conn.reader.read(65536):
            size += len(chunk)
            if size > MAX_ANSWER:
                raise KeaServerError(
                    f"answer larger than {MAX_ANSWER} bytes from {self.url}", self.name, command
                )
            chunks.append(chunk)
        return b"".join(chunks)

    async def aclose(self) -> None:
        while self._idle:
            self._idle.pop().close()
