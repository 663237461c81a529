"""webhook against a real HTTP(S) server on 127.0.0.1: 2xx, 4xx, 5xx, timeouts, TLS."""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import json
import re
import socket
import ssl
import subprocess
import threading
import time
import urllib.parse
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from trapd_actions.webhook import webhook

from trapd.dispatch.config import DispatchConfig, JournalConfig, RetryDefaults
from trapd.dispatch.dispatcher import Dispatcher
from trapd.dispatch.journal import SQLiteJournal
from trapd.params import ParamError, validate
from trapd.plugin import PermanentError, RetryableError
from trapd.secrets import resolve
from trapd.testing import make_context, make_event, make_outcome, plan, rule_file_problems


class Handler(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.received.append({"path": self.path, "headers": dict(self.headers), "body": json.loads(body)})
        hooked = 200 if self.path.startswith("/hook/") else 404
        if self.path.startswith("/fail/"):
            hooked = 503
        if self.path.startswith("/echo/"):  # a receiver that quotes the request in its refusal
            hooked = 400
        status = {"/ok": 200, "/created": 201, "/bad": 400, "/fail": 503, "/busy": 429}.get(self.path, hooked)
        retry_after = {"/busy-3s": "3", "/busy-date": email.utils.formatdate(time.time() + 60, usegmt=True)}
        if self.path in retry_after:
            status = 429
        if self.path == "/slow":
            time.sleep(1.0)
            status = 200
        answer = self.path.encode() if self.path.startswith("/echo/") else b'{"ok": true}'
        if self.path.startswith("/mirror/"):  # a receiver that quotes the URL it was called at, encoded
            status, answer = (
                200,
                _mirrored(self.path.split("/")[2], f"http://{self.headers['Host']}{self.path}"),
            )
        try:
            self.send_response(status)
            self.send_header("Content-Length", str(len(answer)))
            if self.path in retry_after:
                self.send_header("Retry-After", retry_after[self.path])
            self.end_headers()
            self.wfile.write(answer)
        except ConnectionError:
            # /slow outlives the client's timeout on purpose: the client has gone. Left
            # unhandled, socketserver prints it from this thread, possibly after pytest's summary.
            pass

    do_PUT = do_POST

    def log_message(self, *args: Any) -> None:
        pass


def _mirrored(kind: str, url: str) -> bytes:
    """``url`` as a receiver may quote it back: the forms the webhook action masks (its bound)."""
    import base64

    tail = url.split("/", 3)[3]
    forms = {
        "json": json.dumps({"url": url}).replace("/", "\\/"),  # PHP's json_encode escapes slashes
        "percent": "url=" + urllib.parse.quote(url, safe=""),
        "plus": "url=" + urllib.parse.quote_plus(url),
        "lower": "url=" + re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), urllib.parse.quote(url, "")),
        "b64": base64.b64encode(url.encode()).decode(),
        "b64url": base64.urlsafe_b64encode(url.encode()).decode().rstrip("="),
        "b64tail": base64.b64encode(("/" + tail).encode()).decode(),
        # The answer kept is its first 1000 characters: the URL cut by that end is a URL still.
        "cut": "x" * (1000 - len(url) + 6) + url,
    }
    return f"seen: {forms[kind]} end".encode()


def serve(server: ThreadingHTTPServer) -> Iterator[str]:
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    Handler.received = []
    try:
        port = server.server_address[1]
        yield f"127.0.0.1:{port}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def http_server() -> Iterator[str]:
    yield from serve(ThreadingHTTPServer(("127.0.0.1", 0), Handler))


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("tls")
    key, crt = d / "key.pem", d / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(crt),
         "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return key, crt


@pytest.fixture
def https_server(cert: tuple[Path, Path]) -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(cert[1], cert[0])
    server.socket = tls.wrap_socket(server.socket, server_side=True)
    yield from serve(server)


async def call(**params: Any) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        result = await webhook.run(validate(webhook.params, params), make_context(http=client, action_id="9"))
    assert result is not None
    return dict(result)


async def test_2xx_posts_the_event_by_default(http_server: str) -> None:
    result = await call(url=f"http://{http_server}/ok", headers={"Authorization": "Bearer t0ken"})
    assert result["status"] == 200 and result["answer"] == '{"ok": true}'
    (req,) = Handler.received
    assert req["headers"]["Authorization"] == "Bearer t0ken"
    assert req["body"]["rule"] == "test-rule" and req["body"]["action_id"] == "9"
    assert req["body"]["event"]["trap_name"] == "IF-MIB::linkDown"


async def test_custom_body_and_method(http_server: str) -> None:
    await call(url=f"http://{http_server}/created", method="PUT", body={"text": "port 17 down"})
    assert Handler.received[0]["body"] == {"text": "port 17 down"}


async def test_4xx_is_permanent(http_server: str) -> None:
    with pytest.raises(PermanentError, match="answered 400"):
        await call(url=f"http://{http_server}/bad")


async def test_5xx_and_429_are_retryable(http_server: str) -> None:
    with pytest.raises(RetryableError, match="answered 503"):
        await call(url=f"http://{http_server}/fail")
    with pytest.raises(RetryableError, match="answered 429"):
        await call(url=f"http://{http_server}/busy")


async def test_timeout_is_retryable(http_server: str) -> None:
    t0 = time.monotonic()
    with pytest.raises(RetryableError, match=r"no answer within 0\.2s"):
        await call(url=f"http://{http_server}/slow", timeout="200ms")
    assert time.monotonic() - t0 < 0.9


async def test_refused_connection_is_retryable(http_server: str) -> None:
    with pytest.raises(RetryableError):
        await call(url="http://127.0.0.1:9/ok", timeout=1)


async def test_tls_untrusted_is_permanent_and_ca_file_trusts(
    https_server: str, cert: tuple[Path, Path]
) -> None:
    with pytest.raises(PermanentError, match="certificate"):
        await call(url=f"https://{https_server}/ok")
    assert (await call(url=f"https://{https_server}/ok", ca_file=str(cert[1])))["status"] == 200
    assert (await call(url=f"https://{https_server}/ok", verify=False))["status"] == 200


async def test_rejects_other_schemes() -> None:
    with pytest.raises(ParamError, match="not an http"):
        await call(url="file:///etc/passwd")
    with pytest.raises(PermanentError, match="not an http"):  # a params dict that skipped validation
        await webhook.run({"url": "file:///etc/passwd"}, make_context())


def test_example_yaml_is_a_valid_rule_file() -> None:
    assert rule_file_problems(Path(__file__).with_name("example.yaml")) == []


# -- trap values rendered into a URL or a header (issue 14, item 5) ------------------------------

HOSTILE = "../../admin?delete=all#frag"


def _rendered_params(tmp_path: Path, url: str | dict[str, str], ifdescr: str, **extra: Any) -> dict[str, Any]:
    """Compile a rule with the real webhook plugin and render it for a trap carrying ``ifdescr``."""
    from trapd.mibs import MibResolver
    from trapd.plugin import load_actions
    from trapd.rules import compile_rules

    rule = {"name": "hook", "match": {"notification": "IF-MIB::linkDown"},
            "actions": [{"action": "webhook", "url": url, "body": {"x": 1}, **extra}]}  # fmt: skip
    path = tmp_path / "rules.yaml"
    path.write_text(json.dumps({"rules": [rule]}), encoding="utf-8")
    actions, _ = load_actions()
    rules, problems = compile_rules([path], MibResolver.load(), actions)
    assert [p for p in problems if p.severity == "error"] == []
    event = make_event(
        varbinds=[("IF-MIB::ifIndex", "Integer32", 17), ("IF-MIB::ifDescr", "OCTET STRING", ifdescr)]
    )
    outcome = rules.evaluate(event)
    assert outcome.rejected == (), outcome.rejected
    (planned,) = outcome.planned
    return dict(planned.params)


@pytest.mark.parametrize("value", [HOSTILE, "..", ".", "a/b", "x y%2F", "\\..\\admin"])
async def test_a_trap_value_stays_inside_its_path_segment(
    http_server: str, tmp_path: Path, value: str
) -> None:
    params = _rendered_params(tmp_path, f"http://{http_server}/hook/{{{{ ifDescr }}}}/tail", value)
    async with httpx.AsyncClient() as client:
        await webhook.run(params, make_context(http=client))
    (req,) = Handler.received
    segment = req["path"].removeprefix("/hook/").removesuffix("/tail")
    assert "/" not in segment and "?" not in segment and "#" not in segment, req["path"]
    assert segment not in ("..", "."), req["path"]
    assert urllib.parse.unquote(segment) == value


async def test_a_trap_value_stays_inside_its_query_value(http_server: str, tmp_path: Path) -> None:
    params = _rendered_params(
        tmp_path, f"http://{http_server}/hook/q?port={{{{ ifDescr }}}}&x=1", HOSTILE + "&y=2"
    )
    async with httpx.AsyncClient() as client:
        await webhook.run(params, make_context(http=client))
    (req,) = Handler.received
    path, _, query = req["path"].partition("?")
    assert path == "/hook/q"
    assert urllib.parse.parse_qs(query) == {"port": [HOSTILE + "&y=2"], "x": ["1"]}


async def test_crlf_in_a_header_value_is_permanent(http_server: str, tmp_path: Path) -> None:
    params = _rendered_params(
        tmp_path, f"http://{http_server}/hook/h", "a\r\nX-Injected: 1", headers={"X-Port": "{{ ifDescr }}"}
    )
    async with httpx.AsyncClient() as client:
        with pytest.raises(PermanentError, match="header"):
            await webhook.run(params, make_context(http=client))
    assert Handler.received == []


def test_check_refuses_a_url_whose_scheme_or_host_is_a_template(tmp_path: Path) -> None:
    rule = {"name": "hook", "match": {"notification": "IF-MIB::linkDown"},
            "actions": [{"action": "webhook", "url": "{{ ifDescr }}/x"}]}  # fmt: skip
    path = tmp_path / "rules.yaml"
    path.write_text(json.dumps({"rules": [rule]}), encoding="utf-8")
    assert any("scheme and host as text" in p for p in rule_file_problems(path))


# -- an answer that never ends ------------------------------------------------------------------


async def _endless_answer(
    pause: float, chunk: bytes, budget: int, sent: list[int]
) -> tuple[asyncio.Server, str]:
    """A server that answers 200 and then sends ``chunk`` every ``pause`` s, up to ``budget`` bytes."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while (await reader.readline()) not in (b"\r\n", b""):
                pass  # the request's headers; its body is left unread
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            deadline = time.monotonic() + 30
            while sent[0] < budget and time.monotonic() < deadline:
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
                sent[0] += len(chunk)
                await asyncio.sleep(pause)
            writer.write(b"0\r\n\r\n")
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def test_an_answer_that_trickles_forever_ends_at_the_timeout() -> None:
    # One byte every 50 ms: every read is in time, so only a deadline on the whole answer ends it.
    sent = [0]
    server, where = await _endless_answer(0.05, b"x", 10_000, sent)
    async with server:
        t0 = time.monotonic()
        with pytest.raises(RetryableError, match=r"no answer within 0\.5s"):
            await asyncio.wait_for(call(url=f"http://{where}/hook", timeout="500ms"), 20)
        assert time.monotonic() - t0 < 3


async def test_a_huge_answer_is_not_read_into_memory() -> None:
    sent = [0]
    server, where = await _endless_answer(0, b"y" * 65536, 512 * 2**20, sent)
    async with server:
        result = await asyncio.wait_for(call(url=f"http://{where}/hook", timeout=20), 30)
    assert result == {"status": 200, "answer": "y" * 1000}
    assert sent[0] < 32 * 2**20  # the client stopped reading; it did not take the 512 MiB


async def test_a_non_ascii_trap_value_in_a_header_is_sent_as_utf8(http_server: str, tmp_path: Path) -> None:
    # A port described "Büro 1/0/17": the header carries it (as curl would, UTF-8), nothing is retried.
    params = _rendered_params(
        tmp_path, f"http://{http_server}/hook/h", "Büro 1/0/17", headers={"X-Port": "{{ ifDescr }}"}
    )
    async with httpx.AsyncClient() as client:
        result = await webhook.run(params, make_context(http=client))
    assert result == {"status": 200, "answer": '{"ok": true}'}
    (req,) = Handler.received
    assert req["headers"]["X-Port"].encode("latin-1").decode("utf-8") == "Büro 1/0/17"


async def test_a_header_name_that_is_not_a_token_is_permanent(http_server: str) -> None:
    for name in ("X-Pört", "X Port", ""):
        with pytest.raises(PermanentError, match="not a header name"):
            await call(url=f"http://{http_server}/ok", headers={name: "1"})
    assert Handler.received == []


# -- 429 with Retry-After -----------------------------------------------------------------------


async def test_retry_after_is_passed_on_in_seconds_or_as_a_date(http_server: str) -> None:
    with pytest.raises(RetryableError, match=r"answered 429 \(retry after 3s\)") as caught:
        await call(url=f"http://{http_server}/busy-3s")
    assert caught.value.retry_after == 3
    with pytest.raises(RetryableError) as caught:
        await call(url=f"http://{http_server}/busy-date")
    assert caught.value.retry_after is not None and 50 < caught.value.retry_after <= 60
    with pytest.raises(RetryableError) as caught:
        await call(url=f"http://{http_server}/busy")
    assert caught.value.retry_after is None


async def test_the_dispatcher_waits_as_long_as_retry_after_says(http_server: str, tmp_path: Path) -> None:
    # A receiver that rate-limits says when to come back. Before, the dispatcher's backoff (here
    # 50 ms) retried at once and the action went dead after max_attempts within a second.
    config = DispatchConfig(
        workers=1,
        shutdown_timeout=1.0,
        journal=JournalConfig(poll_interval=0.05),
        retry=RetryDefaults(max_attempts=3, max_age=60.0, backoff=0.05, max_backoff=0.05, jitter=0.0),
    )
    journal = SQLiteJournal(tmp_path / "journal.sqlite")
    await journal.open()
    d = Dispatcher(config, journal, {"webhook": webhook}, kea=None)
    await d.start()
    try:
        (id_,) = await d.submit(
            make_event(), make_outcome(plan("webhook", {"url": f"http://{http_server}/busy-3s", "body": {}}))
        )
        deadline = time.monotonic() + 20
        while d.stats.outcomes[("webhook", "retry")] < 1:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        failed_at = time.time()
        await asyncio.sleep(1.0)
        entry = await journal.get(int(id_), with_event=False)
        assert entry is not None and entry.attempts == 1 and entry.state == "failed", entry
        assert entry.due is not None and entry.due >= failed_at + 2.5
        assert len(Handler.received) == 1
    finally:
        await d.stop(1.0)
        await journal.close()


@pytest.mark.parametrize(
    "url",
    [
        "https://netops:hunter2-s3cret@hooks.example/x",
        # Refused for another reason first, whose message quoted the URL, password and all.
        "ftp://netops:hunter2-s3cret@hooks.example/x",
        "https://netops:hunter2-s3cret@hooks.example/x y",
        "netops:hunter2-s3cret@hooks.example/x",
        "https://hunter2-s3cret@hooks.example/a/../x",
        # Not an http(s) URL as written (one slash, three): the masking looked for "//" before it.
        "https:/netops:hunter2-s3cret@hooks.example/x",
        "https:///netops:hunter2-s3cret@hooks.example/x",
        "https:\\\\netops:hunter2-s3cret@hooks.example/x",
        # A /, ? or # in the password ends the host there: it was accepted (the port "hunter2" not
        # checked), journaled and shown as written, and httpx's error quoted it.
        "https://netops:hunter2/s3cret@hooks.example/x",
        "https://netops:hunter2?s3cret@hooks.example/x",
        "https://netops:hunter2#s3cret@hooks.example/x",
        # A template later in the URL: the constant user:password@ was journaled with the
        # parameters before the rendered URL was refused at run time.
        "https://netops:hunter2-s3cret@hooks.example/port/{{ ifDescr }}",
        "https://netops:{{ ifDescr }}hunter2-s3cret@hooks.example/x",
        "https://netops:hunter2-s3cret@hooks.example{{ '/x' }}",
        "https://netops:hunter2/s3cret@hooks.example/{{ ifDescr }}",
    ],
)
def test_check_refuses_credentials_in_the_url(tmp_path: Path, url: str) -> None:
    # user:password@ in a URL would be journaled with the parameters and shown in errors and logs.
    rule = {"name": "hook", "match": {"notification": "IF-MIB::linkDown"},
            "actions": [{"action": "webhook", "url": url}]}  # fmt: skip
    path = tmp_path / "rules.yaml"
    path.write_text(json.dumps({"rules": [rule]}), encoding="utf-8")
    problems = rule_file_problems(path)
    assert any("url" in p for p in problems), problems
    assert not any("hunter2" in p or "s3cret" in p for p in problems), problems


# -- a URL that is itself a secret (Slack, Teams, Mattermost: the token is in the path) ----------

TOKEN = "T000/B000/XXXXs3cretTOKEN"


def _secret_url(monkeypatch: pytest.MonkeyPatch, url: str) -> dict[str, str]:
    monkeypatch.setenv("TEST_WEBHOOK_URL", url)
    return {"env": "TEST_WEBHOOK_URL"}


async def _run_resolved(params: dict[str, Any]) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        result = await webhook.run(resolve(params), make_context(http=client))
    assert result is not None
    return dict(result)


async def test_a_url_from_the_environment_is_planned_as_its_reference(
    http_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = _secret_url(monkeypatch, f"http://{http_server}/hook/{TOKEN}")
    params = _rendered_params(tmp_path, url, "Gi1/0/17")
    assert params["url"] == {"$secret": "env:TEST_WEBHOOK_URL"}
    assert TOKEN not in json.dumps(params)
    assert (await _run_resolved(params))["status"] == 200
    assert [r["path"] for r in Handler.received] == [f"/hook/{TOKEN}"]


async def test_a_url_from_a_file(http_server: str, tmp_path: Path) -> None:
    secret = tmp_path / "hook.url"
    secret.write_text(f"http://{http_server}/hook/{TOKEN}\n")
    secret.chmod(0o600)
    params = _rendered_params(tmp_path, {"file": str(secret)}, "x")
    assert params["url"] == {"$secret": f"file:{secret}"}
    assert (await _run_resolved(params))["status"] == 200
    assert [r["path"] for r in Handler.received] == [f"/hook/{TOKEN}"]


@pytest.mark.parametrize("value", [HOSTILE, "..", "a/b", "\\..\\admin"])
async def test_a_template_after_a_secret_url_stays_in_its_slot(
    http_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    url = _secret_url(monkeypatch, f"http://{http_server}/hook/{TOKEN}")
    params = _rendered_params(tmp_path, url, value, url_suffix="/{{ ifDescr }}/tail?port={{ ifDescr }}")
    assert TOKEN not in json.dumps(params)
    await _run_resolved(params)
    (req,) = Handler.received
    path, _, query = req["path"].partition("?")
    segment = path.removeprefix(f"/hook/{TOKEN}/").removesuffix("/tail")
    assert "/" not in segment and segment not in ("..", "."), req["path"]
    assert urllib.parse.unquote(segment) == value
    assert urllib.parse.parse_qs(query) == {"port": [value]}


@pytest.mark.parametrize("suffix", ["evil.example/x", ".evil.example/x", "@evil.example/", "/a/../b", "/a b"])
def test_check_refuses_a_url_suffix_that_could_leave_the_url(tmp_path: Path, suffix: str) -> None:
    rule = {"name": "hook", "match": {"notification": "IF-MIB::linkDown"},
            "actions": [{"action": "webhook", "url": {"env": "X"}, "url_suffix": suffix}]}  # fmt: skip
    path = tmp_path / "rules.yaml"
    path.write_text(json.dumps({"rules": [rule]}), encoding="utf-8")
    problems = rule_file_problems(path)
    assert any("url_suffix" in p and "no parameter" not in p for p in problems), (suffix, problems)


async def test_a_secret_url_shows_its_host_but_not_its_path_in_errors(
    http_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cases: list[tuple[str, type[Exception], str]] = [
        (f"http://{http_server}/fail/{TOKEN}", RetryableError, "answered 503"),
        (f"http://{http_server}/echo/{TOKEN}", PermanentError, "answered 400"),
    ]
    with socket.socket() as closed:  # a port nothing listens on: connection refused
        closed.bind(("127.0.0.1", 0))
        cases.append((f"http://127.0.0.1:{closed.getsockname()[1]}/hook/{TOKEN}", RetryableError, "Connect"))
    for url, error, says in cases:
        params = _rendered_params(tmp_path, _secret_url(monkeypatch, url), "x")
        with pytest.raises(error) as caught:
            await _run_resolved(params)
        text = str(caught.value)
        assert says in text and url.split("/")[2] in text, text
        assert "XXXXs3cretTOKEN" not in text and "/fail/" not in text and "/echo/" not in text, text


async def test_a_secret_url_that_is_not_an_http_url_is_refused_without_showing_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for bad in (
        f"ftp://hooks.example/{TOKEN}",
        f"http://hooks.example:99999/{TOKEN}",
        f"http://u:{TOKEN}@h/x",
        f"https://{TOKEN.replace('/', '')}@hooks.example/x",  # a token as the user name
    ):
        params = _rendered_params(tmp_path, _secret_url(monkeypatch, bad), "x")
        with pytest.raises(PermanentError) as caught:
            await _run_resolved(params)
        assert "XXXXs3cretTOKEN" not in str(caught.value) and "url" in str(caught.value), caught.value


@pytest.mark.parametrize(
    ("url", "token"),
    [
        ("https://hooks.slack.com/services/T000/B000/XXXXs3cret", "XXXXs3cret"),
        ("https://contoso.webhook.office.com/webhookb2/abc@def/IncomingWebhook/0123s3cret/x", "0123s3cret"),
        ("https://x.westeurope.logic.azure.com/workflows/1/triggers/m/invoke?sig=AbCs3cret", "AbCs3cret"),
        ("https://chat.example.net/hooks/abcdefghijklmnopqrstuvwxyz", "abcdefghijklmnopqrstuvwxyz"),
        ("https://discord.com/api/webhooks/123/Tok3nS3cret", "Tok3nS3cret"),
        ("https://chat.googleapis.com/v1/spaces/AAA/messages?key=K3y&token=T0kenS3cret", "T0kenS3cret"),
    ],
)  # fmt: skip
def test_check_warns_of_a_url_with_a_token_written_as_text(tmp_path: Path, url: str, token: str) -> None:
    rule = {"name": "hook", "match": {"notification": "IF-MIB::linkDown"},
            "actions": [{"action": "webhook", "url": url}]}  # fmt: skip
    path = tmp_path / "rules.yaml"
    path.write_text(json.dumps({"rules": [rule]}), encoding="utf-8")
    problems = rule_file_problems(path)
    assert any("{env: NAME}" in p and "token" in p for p in problems), problems
    assert not any(token in p for p in problems), problems


def test_check_does_not_warn_of_an_ordinary_url(tmp_path: Path) -> None:
    assert rule_file_problems(Path(__file__).with_name("example.yaml")) == []
    rule = {"name": "hook", "match": {"notification": "IF-MIB::linkDown"},
            "actions": [{"action": "webhook", "url": "https://alerts.example.net/hooks/trapd"}]}  # fmt: skip
    path = tmp_path / "rules.yaml"
    path.write_text(json.dumps({"rules": [rule]}), encoding="utf-8")
    assert rule_file_problems(path) == []


@pytest.mark.parametrize("kind", ["json", "percent", "plus", "lower", "b64", "b64url", "b64tail", "cut"])
async def test_an_answer_that_quotes_the_secret_url_encoded_is_masked(
    http_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    """The answer is journaled (result) and logged: a receiver that quotes the URL it was called at
    quotes it as its framework writes it. Masked: the URL, or its path and query, as is, as JSON
    writes it (also with \\/), percent-encoded whole (either case, + for a space), in base64
    (standard or URL-safe); and a quote cut by the end of what is kept is cut before it."""
    url = f"http://{http_server}/mirror/{kind}/{TOKEN}"
    params = _rendered_params(tmp_path, _secret_url(monkeypatch, url), "x")
    answer = (await _run_resolved(params))["answer"]
    assert answer.startswith("seen: "), answer
    for secret in (TOKEN, "XXXXs3cret", "s3cretTOKEN"):
        for form in _forms(secret):
            assert form not in answer, (kind, form, answer)
    assert "***" in answer, answer


def _forms(text: str) -> set[str]:
    import base64

    quoted = urllib.parse.quote(text, safe="")
    out = {text, quoted, re.sub("%[0-9A-F]{2}", lambda m: m.group().lower(), quoted)}
    for pad in ("", "x", "xx"):  # base64 of a text with the secret at each alignment
        b = base64.b64encode((pad + text).encode()).decode()
        out.add(b[4 if pad else 0 : -4])
    return out


@pytest.mark.parametrize(
    ("url", "shown", "hidden"),
    [
        ("https://eo3kz8b7qxyz4ab1.m.pipedream.example/x", "https://….pipedream.example/…", "eo3kz8b7"),
        ("https://a1b2c3d4.hooks.example.co.uk/x", "https://….example.co.uk/…", "a1b2c3d4"),
        ("https://hooks.slack.com/services/T/B/x", "https://hooks.slack.com/…", None),
        ("http://10.0.0.5:8080/x", "http://10.0.0.5:8080/…", None),
        ("http://[2001:db8::5]/x", "http://[2001:db8::5]/…", None),
        ("http://alerts/x", "http://alerts/…", None),
        ("http://alerts.example.net:81/x", "http://….example.net:81/…", "alerts"),
    ],
)  # fmt: skip
async def test_a_secret_url_shows_no_more_of_its_host_than_names_the_site(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str, shown: str, hidden: str | None
) -> None:
    """A token can be the host's first label (a per-hook subdomain): a secret URL's errors show its
    site (the last two labels of the host, three under a ccTLD's second level such as co.uk), an
    address or a known service's host (whose token is in the path) in full; never more."""
    from trapd_actions.webhook import _masked

    assert _masked(url) == shown
    if hidden is not None and "pipedream" in url:  # once through the action (a name lookup fails)
        params = _rendered_params(
            tmp_path, _secret_url(monkeypatch, url.replace(".example", ".invalid")), "x"
        )
        with pytest.raises(RetryableError) as caught:
            await _run_resolved(params)
        assert hidden not in str(caught.value) and shown.replace(".example", ".invalid") in str(caught.value)


async def _answer_with_header(status: int, header: bytes) -> tuple[asyncio.Server, str]:
    """A server that answers every request with ``status`` and one raw header line."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while (await reader.readline()) not in (b"\r\n", b""):
                pass  # the request's headers; its body is left unread
            writer.write(
                b"HTTP/1.1 %d X\r\n%s\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok" % (status, header)
            )
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


@pytest.mark.parametrize("status", [501, 505])
async def test_a_server_that_does_not_implement_the_request_is_permanent(status: int) -> None:
    # 501 Not Implemented (the method), 505 HTTP Version Not Supported: the request is what the
    # receiver refuses, and it stays so; retried, it was sent again until max-attempts.
    server, where = await _answer_with_header(status, b"X-Why: method")
    async with server:
        with pytest.raises(PermanentError, match=f"answered {status}"):
            await asyncio.wait_for(call(url=f"http://{where}/hook", timeout=5), 20)


@pytest.mark.parametrize("value", [b"\xb2", b"\xb9\xb2", b"1\xb3"])
async def test_a_retry_after_of_non_ascii_digits_is_ignored(value: bytes) -> None:
    # str.isdigit() is true for superscript digits (latin-1 0xB2, 0xB3, 0xB9), float() refuses them:
    # a delivered call (200) was an unexpected ValueError, so retried and delivered again.
    server, where = await _answer_with_header(200, b"Retry-After: " + value)
    async with server:
        result = await asyncio.wait_for(call(url=f"http://{where}/hook", timeout=5), 20)
    assert result == {"status": 200, "answer": "ok"}
    server, where = await _answer_with_header(503, b"Retry-After: " + value)
    async with server:
        with pytest.raises(RetryableError, match=r"answered 503$") as caught:
            await asyncio.wait_for(call(url=f"http://{where}/hook", timeout=5), 20)
    assert caught.value.retry_after is None


async def test_a_compressed_answer_is_decompressed_only_as_far_as_it_is_read() -> None:
    # 256 MiB of "z" gzipped to 250 KB. httpx inflated each raw chunk whole (64 KiB of it: 64 MiB)
    # to keep 4000 bytes: one call took 132 MB, sixteen workers at once 2 GB.
    import tracemalloc
    import zlib

    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    block = b"z" * 2**20
    body = b"".join(comp.compress(block) for _ in range(256)) + comp.flush()
    asked: list[bytes] = []

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"accept-encoding:"):
                    asked.append(line.split(b":", 1)[1].strip())
            head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n" % len(body)
            writer.write(head + body)  # compressed whatever the request asked (a careless receiver)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        where = f"127.0.0.1:{server.sockets[0].getsockname()[1]}"
        tracemalloc.start()
        try:
            result = await asyncio.wait_for(call(url=f"http://{where}/hook", timeout=20), 30)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert result == {"status": 200, "answer": "z" * 1000}
    assert asked == [b"identity"]  # only the start of an answer is read: compressing it helps nobody
    assert peak < 16 * 2**20, peak


@pytest.mark.parametrize("encoding, wbits", [("gzip", 31), ("deflate", 15), ("deflate", -15), ("br", None)])
def test_an_answer_is_inflated_per_its_encoding(encoding: str, wbits: int | None) -> None:
    import zlib

    from trapd_actions.webhook import _inflater

    text = b"answer " * 2000
    if wbits is None:
        data = text  # an encoding trapd does not inflate: kept as it came, bounded
    else:
        comp = zlib.compressobj(9, zlib.DEFLATED, wbits)
        data = comp.compress(text) + comp.flush()
    inflate = _inflater(encoding)
    out = b"".join(inflate(data[i : i + 100], 5000) for i in range(0, len(data), 100))
    assert out.startswith(text[:4000]) and len(out) >= 4000
    assert _inflater("gzip")(b"not gzip at all", 100) == b""  # the status still decides
