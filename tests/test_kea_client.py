"""The Kea client's transports against a real Kea 2.2: keep-alive, reconnects, errors, basic auth, TLS.

A few faults a real Kea cannot be made to produce on demand (a server that
never answers, closes a kept-alive connection just as a request goes out, or
answers 5xx) come from tiny asyncio servers here.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from kea_harness import KeaInstance, TlsFiles, make_kea_clients

from trapd.kea.client import KeaClients
from trapd.kea.errors import (
    KeaAuthError,
    KeaHTTPError,
    KeaServerError,
    KeaTimeoutError,
    KeaUnavailableError,
)
from trapd.kea.transport import HttpTransport
from trapd.plugin import PermanentError, RetryableError

pytestmark = pytest.mark.integration


def http_transport(clients: KeaClients, name: str) -> HttpTransport:
    t = clients.get(name).transport
    assert isinstance(t, HttpTransport)
    return t


async def test_ca_keeps_one_connection_alive(kea: KeaInstance) -> None:
    clients = make_kea_clients(kea.trapd_kea_section())
    ca = clients.get("ca4")
    for _ in range(50):
        assert (await ca.command("status-get")).ok
    assert http_transport(clients, "ca4").connections_opened == 1
    # concurrent commands use at most pool_size (4) connections
    results = await asyncio.gather(
        *(ca.command("lease4-get", {"ip-address": kea.next_ip4()}) for _ in range(40))
    )
    assert all(r.empty for r in results)
    assert http_transport(clients, "ca4").connections_opened <= 4
    await clients.aclose()


async def test_reconnects_after_the_agent_closed_the_connection(kea_factory: Any) -> None:
    inst: KeaInstance = kea_factory(dhcp6=False)
    clients = make_kea_clients(inst.trapd_kea_section())
    ca = clients.get("ca4")
    assert (await ca.command("status-get")).ok
    inst.restart("kea-ctrl-agent")  # closes our kept-alive connection, like the 30 s idle close
    assert (await ca.command("status-get")).ok
    assert http_transport(clients, "ca4").connections_opened == 2
    await clients.aclose()


async def test_idle_timeout_drops_old_connections(kea: KeaInstance) -> None:
    section = kea.trapd_kea_section()
    section["endpoints"]["ca4"]["idle_timeout"] = 0
    clients = make_kea_clients(section)
    for _ in range(3):
        await clients.get("ca4").command("status-get")
    assert http_transport(clients, "ca4").connections_opened == 3
    await clients.aclose()


async def test_stale_unix_socket_is_retryable(kea_factory: Any) -> None:
    inst: KeaInstance = kea_factory(dhcp6=False, ca=False)
    clients = make_kea_clients(inst.trapd_kea_section())
    inst.kill("kea-dhcp4")  # SIGKILL leaves the socket file behind
    assert inst.dhcp4_socket.exists()
    with pytest.raises(KeaUnavailableError, match="refused") as info:
        await clients.get("unix4").command("status-get")
    assert isinstance(info.value, RetryableError)


async def test_basic_auth(kea_factory: Any) -> None:
    inst: KeaInstance = kea_factory(dhcp6=False, auth=("trapd", "right-pw-1"))
    good = make_kea_clients(inst.trapd_kea_section())
    assert (await good.get("ca4").command("status-get")).ok
    section = inst.trapd_kea_section()
    section["endpoints"]["ca4"]["password"] = "wrong-pw-1"
    bad = make_kea_clients(section)
    with pytest.raises(KeaAuthError, match="HTTP 401") as info:
        await bad.get("ca4").command("status-get")
    assert isinstance(info.value, PermanentError) and info.value.status == 401
    assert "wrong-pw-1" not in str(info.value)
    assert http_transport(bad, "ca4").connections_opened == 1  # no retry of its own
    del section["endpoints"]["ca4"]["user"], section["endpoints"]["ca4"]["password"]
    none = make_kea_clients(section)
    with pytest.raises(KeaAuthError):
        await none.get("ca4").command("status-get")
    for c in (good, bad, none):
        await c.aclose()


async def test_tls_with_client_certificate(kea_factory: Any, tls_files: TlsFiles) -> None:
    inst: KeaInstance = kea_factory(
        dhcp6=False, tls=tls_files, tls_cert_required=True, auth=("trapd", "pw-tls-1")
    )
    section = inst.trapd_kea_section()
    good = make_kea_clients(section)
    r = await good.get("ca4").command("version-get")
    assert r.text == "2.2.0"
    await good.aclose()

    ep = section["endpoints"]["ca4"]
    variants: dict[str, dict[str, Any]] = {
        "no client certificate": {k: v for k, v in ep.items() if k not in ("cert_file", "key_file")},
        "client certificate from another CA": {
            **ep,
            "cert_file": str(tls_files.rogue_client_cert),
            "key_file": str(tls_files.rogue_client_key),
        },
        "server not trusted": {**ep, "ca_file": str(tls_files.other_ca_cert)},
    }
    for what, variant in variants.items():
        # A 30 s timeout, far from the bound: the handshake with a loaded Kea has its time.
        clients = make_kea_clients({"endpoints": {"ca4": {**variant, "timeout": 30}}})
        started = time.monotonic()
        with pytest.raises(KeaAuthError, match="TLS") as info:
            await clients.get("ca4").command("status-get")
        assert isinstance(info.value, PermanentError), what
        assert time.monotonic() - started < 10, what  # fails at once, no waiting for a timeout
        await clients.aclose()


async def test_tls_without_client_certificate(kea_factory: Any, tls_files: TlsFiles) -> None:
    inst: KeaInstance = kea_factory(dhcp6=False, tls=tls_files, tls_cert_required=False)
    clients = make_kea_clients(inst.trapd_kea_section())
    assert (await clients.get("ca4").command("status-get")).ok
    await clients.aclose()


# --- faults from fake servers ---


async def test_unix_socket_that_never_answers_times_out(tmp_path: Path) -> None:
    path = tmp_path / "mute.sock"
    held: list[asyncio.StreamWriter] = []

    async def mute(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_unix_server(mute, str(path))
    clients = make_kea_clients(
        {"endpoints": {"u": {"transport": "unix", "socket": str(path), "family": "v4", "timeout": 0.3}}}
    )
    with pytest.raises(KeaTimeoutError, match=r"no answer within 0\.3s") as info:
        await clients.get("u").command("status-get")
    assert isinstance(info.value, RetryableError)
    server.close()
    for writer in held:
        writer.close()


async def fake_unix_kea(path: Path, answer: list[bytes | None]) -> asyncio.Server:
    """A unix socket that reads one command, writes each part of ``answer`` (None: a pause), closes."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Closed however the handler ends (the client gone mid-answer, the test's loop closing):
        # an accepted socket left open is found by the collector during a later test, which
        # then fails on a ResourceWarning that is not its own.
        try:
            await reader.read(65536)
            for part in answer:
                if part is None:
                    await asyncio.sleep(0.05)
                else:
                    writer.write(part)
                    await writer.drain()
        finally:
            writer.close()

    return await asyncio.start_unix_server(serve, str(path))


def unix_clients(path: Path, timeout: float = 5.0) -> KeaClients:
    clients: KeaClients = make_kea_clients(
        {"endpoints": {"u": {"transport": "unix", "socket": str(path), "family": "v4", "timeout": timeout}}}
    )
    return clients


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        # An answer in pieces: read until the bytes so far parse.
        ([b'{ "result": 0, "text": "pie', None, b'ces" }'], "pieces"),
        ([b'{ "result": 0, "arguments": {"a": "}"', None, b"} }\n"], ""),
        ([b"", b"not json"], KeaServerError),  # closed on something that does not parse
        # Closed mid-answer (Kea killed while answering): said so, as over HTTP, not "not JSON".
        ([b'{ "result": 0, "text": "cut'], KeaUnavailableError),
        ([], KeaUnavailableError),  # closed without a byte
    ],
)
async def test_unix_answers_are_read_to_their_end(
    tmp_path: Path, answer: list[bytes | None], outcome: str | type[Exception]
) -> None:
    path = tmp_path / "kea.sock"
    server = await fake_unix_kea(path, answer)
    kea = unix_clients(path).get("u")
    if isinstance(outcome, str):
        assert (await kea.command("status-get")).text == outcome
    else:
        with pytest.raises(outcome) as info:
            await kea.command("status-get")
        if answer and answer[-1] and answer[-1].startswith(b"{"):
            assert "closed mid-answer after 27 bytes" in str(info.value), info.value
    server.close()


async def test_unix_command_cancelled_or_timed_out_from_outside(tmp_path: Path) -> None:
    """The per-command limit is the transport's; an action's own limit or a cancel stays the caller's."""
    path = tmp_path / "slow.sock"
    server = await fake_unix_kea(path, [None] * 20 + [b'{ "result": 0 }'])  # answers after ~1 s
    kea = unix_clients(path, timeout=5.0).get("u")
    with pytest.raises(TimeoutError) as info:
        async with asyncio.timeout(0.2):
            await kea.command("status-get")
    assert not isinstance(info.value, KeaTimeoutError)  # the caller's limit, not the command's
    task = asyncio.ensure_future(kea.command("status-get"))
    await asyncio.sleep(0.1)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # And the command's own limit, shorter than the caller's, is a retryable Kea timeout.
    short = unix_clients(path, timeout=0.2).get("u")
    async with asyncio.timeout(5):
        with pytest.raises(KeaTimeoutError):
            await short.command("status-get")
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    server.close()


class FakeHttp:
    """Answers each request with the next canned (status, body) or, for None, closes the connection."""

    def __init__(self, answers: list[tuple[int, bytes] | None]) -> None:
        self.answers = answers
        self.requests: list[bytes] = []
        self.connections = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:  # closed however it ends: the client gone (IncompleteReadError), the loop closing
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                self.requests.append(head + await reader.readexactly(length))
                answer = self.answers.pop(0)
                if answer is None:
                    return
                status, body = answer
                writer.write(
                    b"HTTP/1.1 %d X\r\nContent-Length: %d\r\nContent-Type: application/json\r\n\r\n%s"
                    % (status, len(body), body)
                )
                await writer.drain()
        finally:
            writer.close()

    async def start(self) -> tuple[asyncio.Server, int]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        return server, server.sockets[0].getsockname()[1]


OK = (200, b'[ { "result": 0, "text": "fine" } ]')


async def test_request_bytes_and_resend_on_a_connection_closed_under_us() -> None:
    fake = FakeHttp([OK, None, OK])
    server, port = await fake.start()
    clients = make_kea_clients(
        {
            "endpoints": {
                "ca": {
                    "transport": "control-agent",
                    "url": f"http://127.0.0.1:{port}/kea",
                    "family": "v6",
                    "user": "u",
                    "password": "p-word",
                }
            }
        }
    )
    ca = clients.get("ca")
    assert (await ca.command("status-get")).text == "fine"
    # The server closes the kept-alive connection as the second request arrives:
    # it never answered, so the client sends it again on a new connection.
    assert (await ca.command("lease6-get", {"ip-address": "2001:db8::1"})).text == "fine"
    assert fake.connections == 2 and len(fake.requests) == 3
    first = fake.requests[0]
    assert first.startswith(b"POST /kea HTTP/1.1\r\n")
    assert b"\r\nContent-Type: application/json\r\n" in first  # exactly: Kea refuses a charset
    assert b"\r\nAuthorization: Basic dTpwLXdvcmQ=\r\n" in first
    assert first.endswith(b'{"command":"status-get","service":["dhcp6"]}')
    assert fake.requests[1] == fake.requests[2]
    server.close()
    await clients.aclose()


@pytest.mark.parametrize(
    ("answer", "error", "retryable"),
    [
        ((400, b'{ "result": 400, "text": "Bad Request" }'), KeaHTTPError, False),
        ((403, b"forbidden"), KeaAuthError, False),
        ((503, b"busy"), KeaServerError, True),
        ((200, b"not json"), KeaServerError, True),
        ((200, b"[]"), KeaServerError, True),
        # One service is asked: the answers of several servers are not one server's (a proxy
        # merging, a wrong URL), and the first of them must not pass for the answer.
        ((200, b'[ { "result": 0, "text": "a" }, { "result": 1, "text": "b" } ]'), KeaServerError, True),
        (
            (
                200,
                b'[ { "result": 1, "text": "unable to forward command to the dhcp4 service: No such file or '
                b'directory. The server is likely to be offline" } ]',
            ),
            KeaUnavailableError,
            True,
        ),
    ],
)
async def test_http_answers_are_classified(
    answer: tuple[int, bytes], error: type[Exception], retryable: bool
) -> None:
    fake = FakeHttp([answer])
    server, port = await fake.start()
    clients = make_kea_clients(
        {"endpoints": {"h": {"transport": "http", "url": f"http://127.0.0.1:{port}/", "family": "v4"}}}
    )
    with pytest.raises(error) as info:
        await clients.get("h").command("status-get")
    assert isinstance(info.value, RetryableError if retryable else PermanentError)
    server.close()
    await clients.aclose()


async def test_nothing_listening_is_retryable() -> None:
    from kea_harness import free_port

    clients = make_kea_clients(
        {"endpoints": {"h": {"transport": "http", "url": f"http://127.0.0.1:{free_port()}/", "family": "v4"}}}
    )
    with pytest.raises(KeaUnavailableError, match="refused"):
        await clients.get("h").command("status-get")


@pytest.mark.parametrize("framing", ["content-length", "until-close"])
async def test_http_answer_larger_than_the_bound_is_refused(
    framing: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A server (a proxy, a wrong URL) sending more than MAX_ANSWER is cut off, not buffered whole.

    The unix transport stops at MAX_ANSWER; over HTTP a Content-Length of any size, or a body
    without one, was read into memory whole (bounded only by the timeout). The bound is made
    small here; the server sends twice that and then keeps the connection open.
    """
    monkeypatch.setattr("trapd.kea.transport.MAX_ANSWER", 1 << 20)
    sent: list[int] = []

    async def huge(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        if framing == "content-length":
            head += b"Content-Length: %d\r\n" % (1 << 40)
        else:
            head += b"Connection: close\r\n"
        writer.write(head + b"\r\n")
        for _ in range(32):  # 2 MiB in 64 KiB pieces, then silence
            writer.write(b" " * 65536)
            await writer.drain()
            sent.append(65536)
        if framing == "until-close":
            writer.close()
            return
        await asyncio.sleep(30)

    server = await asyncio.start_server(huge, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clients = make_kea_clients(
        {
            "endpoints": {
                "h": {"transport": "http", "url": f"http://127.0.0.1:{port}/", "family": "v4", "timeout": 20}
            }
        }
    )
    started = time.monotonic()
    with pytest.raises(KeaServerError, match=r"larger than 1048576 bytes") as info:
        await clients.get("h").command("lease4-get-page", {"from": "start", "limit": 10})
    assert isinstance(info.value, RetryableError)
    # Refused as the bound is passed, not at the timeout (20 s: far from the bound, which leaves a
    # loaded machine its time to move the bytes).
    assert time.monotonic() - started < 10
    server.close()
    await clients.aclose()


async def test_a_malformed_content_length_is_a_kea_error() -> None:
    """A Content-Length that is not a number (a proxy, a wrong URL; Kea never sends one) is a
    retryable Kea error like any unusable answer, not a bare ValueError: the monitor's round
    over every endpoint and ``trapd kea status`` catch Kea errors, and a stray exception
    aborted them whole."""

    async def broken(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: twelve\r\n\r\n{}")
        await writer.drain()
        await asyncio.sleep(5)

    server = await asyncio.start_server(broken, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clients = make_kea_clients(
        {
            "endpoints": {
                "h": {"transport": "http", "url": f"http://127.0.0.1:{port}/", "family": "v4", "timeout": 3}
            }
        }
    )
    with pytest.raises(KeaServerError, match=r"Content-Length") as info:
        await clients.get("h").command("status-get")
    assert isinstance(info.value, RetryableError)
    server.close()
    await clients.aclose()


def test_a_control_agent_s_breakers_are_per_service_others_per_endpoint() -> None:
    """What the dispatcher keys its circuit breakers by (KeaClient.breaker_for)."""
    clients = make_kea_clients(
        {
            "endpoints": {
                "ca": {"transport": "control-agent", "url": "http://127.0.0.1:9/", "family": ["v4", "v6"]},
                "local4": {"transport": "unix", "socket": "/nonexistent/kea4.sock", "family": "v4"},
            }
        }
    )
    assert clients.get("ca", "v4").breaker_for() == "ca/dhcp4"
    assert clients.get("ca", "v6").breaker_for() == "ca/dhcp6"
    assert clients.get("ca", "v4").breaker_for(["d2"]) == "ca/d2"  # kea.command's service: [d2]
    assert clients.get("local4").breaker_for() == "local4"


@pytest.mark.parametrize("where", ["status line", "header"])
async def test_an_http_line_longer_than_the_bound_is_a_kea_error(
    where: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A status or header line past MAX_ANSWER without its end (a wrong URL, not Kea) is a
    retryable Kea error like an over-long body, not the stream reader's bare ValueError, which
    aborted the monitor's round and ``trapd kea status`` whole."""
    monkeypatch.setattr("trapd.kea.transport.MAX_ANSWER", 1 << 20)

    async def endless(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        if where == "header":
            writer.write(b"HTTP/1.1 200 OK\r\nX-Long: ")
        for _ in range(32):  # 2 MiB without a line end, then silence
            writer.write(b"a" * 65536)
            await writer.drain()
        await asyncio.sleep(30)

    server = await asyncio.start_server(endless, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    clients = make_kea_clients(
        {
            "endpoints": {
                "h": {"transport": "http", "url": f"http://127.0.0.1:{port}/", "family": "v4", "timeout": 20}
            }
        }
    )
    started = time.monotonic()
    with pytest.raises(KeaServerError, match=r"line longer than 1048576 bytes") as info:
        await clients.get("h").command("status-get")
    assert isinstance(info.value, RetryableError)
    # Refused as the bound is passed, not at the timeout (20 s: far from the bound, which leaves a
    # loaded machine its time to move the bytes).
    assert time.monotonic() - started < 10
    server.close()
    await clients.aclose()


async def test_a_big_unix_answer_is_parsed_once_not_at_every_piece(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A big answer (lease4-get-all, config-get with many reservations) is decoded at Kea's close.

    The transport tried to parse the bytes so far whenever a piece ended in "}", to answer
    without waiting for the close: on a big answer that is the whole answer so far, again and
    again, on the event loop. Measured against Kea 2.2, lease4-get-all of 60,000 leases
    (18 MiB): 12-13 attempts, 2.4-4.6 s CPU and 22-32 s in all, against 0.8 s and 6.4 s when
    only the close was waited for. Here every piece of a 4 MiB answer ends in "}".
    """
    import trapd.kea.transport as transport

    parsed: list[int] = []
    real = transport._parse_if_complete

    def counting(data: bytes) -> Any:
        parsed.append(len(data))
        return real(data)

    monkeypatch.setattr(transport, "_parse_if_complete", counting)
    lease = b'{ "ip-address": "10.1.0.1", "hw-address": "0a:00:27:00:00:01", "subnet-id": 1 }'
    body = b'{ "arguments": { "leases": [ ' + b", ".join([lease] * 50_000) + b' ] }, "result": 0 }'

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        i = 0
        while i < len(body):  # pieces under the client's 64 KiB read, each read on its own
            j = body.find(b"}", i + 60_000)
            j = len(body) if j < 0 else j + 1
            writer.write(body[i:j])
            await writer.drain()
            await asyncio.sleep(0.002)
            i = j
        writer.close()

    path = tmp_path / "kea.sock"
    server = await asyncio.start_unix_server(serve, str(path))
    r = await unix_clients(path, timeout=60).get("u").command("lease4-get-all")
    assert len(r.arguments["leases"]) == 50_000
    assert sum(parsed) <= 2 * len(body), f"{len(parsed)} attempts, {sum(parsed) >> 20} MiB parsed"
    server.close()


async def test_kea_s_408_for_a_request_stalled_on_the_way_is_retryable(kea: KeaInstance) -> None:
    """Kea's HTTP listeners (agent 2.2-3.0, Kea 3.0's own socket) answer 408 Request Timeout when
    a request is not complete 10 s after it began (measured on 2.2, 2.6.3, 3.0.4). Kea ran
    nothing, so a retry is right: a network that stalls mid-request (an agent on the partner
    host) must not dead-letter the action. A relay here passes the first bytes of trapd's
    request to the real agent and holds the rest, then passes the agent's answer back."""
    assert kea.ca_port

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_r, up_w = await asyncio.open_connection("127.0.0.1", kea.ca_port)
        up_w.write(await reader.read(40))  # part of the head; the rest never goes
        await up_w.drain()
        writer.write(await up_r.read(65536))  # Kea's answer after its 10 s
        await writer.drain()
        writer.close()
        up_w.close()

    server = await asyncio.start_server(relay, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ep = {"transport": "control-agent", "url": f"http://127.0.0.1:{port}/", "family": "v4", "timeout": 30}
    clients = make_kea_clients({"endpoints": {"ca4": ep}})
    started = time.monotonic()
    with pytest.raises(KeaServerError, match="408") as info:
        await clients.get("ca4").command("lease4-del", {"ip-address": kea.next_ip4()})
    assert isinstance(info.value, RetryableError) and not isinstance(info.value, PermanentError)
    assert time.monotonic() - started < 25  # Kea's answer, not trapd's own timeout
    server.close()
    await clients.aclose()


async def test_a_unix_answer_larger_than_the_bound_is_a_server_error(
    kea_factory: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real Kea 2.2's lease4-get-all past MAX_ANSWER (made 1 MiB here; 8,000 leases) is refused
    like an over-long HTTP answer (KeaServerError, retryable): Kea is there and answered, so the
    error must not say it is unavailable."""
    monkeypatch.setattr("trapd.kea.transport.MAX_ANSWER", 1 << 20)
    inst: KeaInstance = kea_factory(dhcp6=False, ca=False)
    for i in range(8000):
        inst.add_lease4(f"10.1.{16 + i // 250}.{1 + i % 250}", f"0a:00:27:01:{i >> 8:02x}:{i & 255:02x}",
                        hostname=f"host-{i}.example.org")  # fmt: skip
    clients = make_kea_clients(inst.trapd_kea_section())
    with pytest.raises(KeaServerError, match=r"larger than 1048576 bytes") as info:
        await clients.get("unix4").command("lease4-get-all")
    assert isinstance(info.value, RetryableError) and not isinstance(info.value, KeaUnavailableError)
    await clients.aclose()
