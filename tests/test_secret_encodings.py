"""A secret is masked in the forms a program, a server or a library writes it, on every path.

The redactor knew a secret as written and as JSON writes it; the webhook action alone masked its
secret URL percent-encoded, in base64 and so on. An exec program, a plugin or a Kea error that
echoes a token in base64 (an ``Authorization: Basic`` header: base64 of ``user:password``) or
percent-encoded went to the journal, ``trapd journal show`` and the log in clear.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import sys
import time
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from trapd.dispatch.config import DispatchConfig, JournalConfig
from trapd.dispatch.dispatcher import Dispatcher
from trapd.dispatch.journal import SQLiteJournal
from trapd.dispatch.testing import make_event, make_outcome, plan
from trapd.secrets import REDACTOR, Secret
from trapd.service.logging import configure_logging, get_logger

TOKEN = "tok+en/S3cret?&=key"  # characters that base64, percent and JSON each write otherwise


def encodings(secret: str, user: str = "netops") -> dict[str, str]:
    """``secret`` as programs and servers write it back."""
    b64 = base64.b64encode(secret.encode()).decode()
    return {
        "plain": secret,
        "json": json.dumps(secret)[1:-1],
        "json-slash": json.dumps(secret)[1:-1].replace("/", "\\/"),
        "percent": urllib.parse.quote(secret, safe=""),
        "percent-path": urllib.parse.quote(secret),
        "percent-lower": re.sub(
            "%[0-9A-F]{2}", lambda m: m.group().lower(), urllib.parse.quote(secret, safe="")
        ),
        "plus": urllib.parse.quote_plus(secret),
        "base64": b64,
        "base64-url": base64.urlsafe_b64encode(secret.encode()).decode().rstrip("="),
        # An Authorization header: base64 of user:password, the secret at another alignment.
        "basic": "Authorization: Basic " + base64.b64encode(f"{user}:{secret}".encode()).decode(),
        "basic-x": "Basic " + base64.b64encode(f"x{user}:{secret}".encode()).decode(),
        "userinfo": f"https://{user}:{urllib.parse.quote(secret, safe='')}@kea.example/",
        # A program that dumps what it sent or read (xxd -p, a debug line of bytes).
        "hex": secret.encode().hex(),
        "hex-upper": secret.encode().hex().upper(),
    }


def leaks(text: str, secret: str) -> list[str]:
    """The encodings of ``secret`` (whole, or but for the characters at their edges) in ``text``."""
    found = []
    for name, form in encodings(secret).items():
        core = form if name in ("plain", "json", "percent") else _core(name, secret)
        if core and core in text:
            found.append(name)
    return found


def _core(name: str, secret: str) -> str:
    """What of an encoding only the secret decides (base64 at an alignment: not its edges)."""
    if name.startswith(("basic", "base64")):
        raw = secret.encode()
        prefix = {"basic": b"netops:", "basic-x": b"xnetops:"}.get(name, b"")
        encode = base64.urlsafe_b64encode if name == "base64-url" else base64.b64encode
        whole = encode(prefix + raw).decode()
        start = -(-len(prefix) * 8 // 6)
        return whole[start : (len(prefix) + len(raw)) * 8 // 6]
    return encodings(secret)[name] if name != "userinfo" else urllib.parse.quote(secret, safe="")


@pytest.fixture
def token() -> Iterator[str]:
    Secret(TOKEN, "test")
    yield TOKEN


@pytest.mark.parametrize("name", list(encodings(TOKEN)))
def test_the_redactor_masks_every_encoding(token: str, name: str) -> None:
    text = f"echo: {encodings(token)[name]} end"
    masked = REDACTOR.redact(text)
    assert not leaks(masked, token), (name, masked)
    assert masked.startswith("echo: ") and masked.endswith(" end"), masked


def test_a_log_line_quoting_an_encoded_secret_is_masked(token: str) -> None:
    buf = io.StringIO()
    configure_logging("info", "json", buf)
    try:
        log = get_logger("trapd.test-encodings")
        for name, form in encodings(token).items():
            log.info("kea answered", detail=f"{name}={form}")
        log.info(f"headers: {encodings(token)['basic']}")
    finally:
        configure_logging("info", "console", sys.stderr)
    out = buf.getvalue()
    assert len(out.splitlines()) == len(encodings(token)) + 1
    assert not leaks(out, token), out


def test_the_url_tail_and_password_of_a_secret_url_are_masked_alone() -> None:
    """A secret URL's token is its path (Slack, Teams) or its password: a text that quotes only
    that (an HTTP library's request line, a receiver's 404) shows the token."""
    url = "https://netops:pa55-Word-x@hooks.example.net/services/T000/B000/XXXXs3cret"
    Secret(url, "test")
    for text in (
        "POST /services/T000/B000/XXXXs3cret HTTP/1.1",
        "no route for %2Fservices%2FT000%2FB000%2FXXXXs3cret",
        "login netops:pa55-Word-x refused",
    ):
        masked = REDACTOR.redact(text)
        assert "XXXXs3cret" not in masked and "pa55-Word-x" not in masked, masked
    assert REDACTOR.redact("GET https://hooks.example.net/other") == "GET https://hooks.example.net/other"


def test_a_bearer_or_basic_header_secret_is_masked_without_its_scheme() -> None:
    """A header written {env: NAME} is its whole value, "Bearer <token>": a program or a server
    that echoes the token alone, or the user:password a Basic header encodes, showed it."""
    Secret("Bearer hdr-t0ken-value", "test")
    basic = base64.b64encode(b"alerts:hdr-pa55word").decode()
    Secret(f"Basic {basic}", "test")
    masked = REDACTOR.redact(f"token=hdr-t0ken-value creds=alerts:hdr-pa55word raw={basic}")
    assert "hdr-t0ken-value" not in masked and "hdr-pa55word" not in masked and basic not in masked, masked


async def until(check: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not within the timeout"
        await asyncio.sleep(0.02)


async def test_exec_output_echoing_the_secret_encoded_is_journaled_masked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real exec action, its secret from the environment: a program that prints the header it
    would send (base64 of user:password) and the URL-encoded token."""
    from trapd_actions.exec import exec_

    monkeypatch.setenv("TEST_EXEC_TOKEN", TOKEN)
    program = (
        "import base64, os, urllib.parse; t = os.environ['TOKEN'];"
        " print('Authorization: Basic ' + base64.b64encode(('netops:' + t).encode()).decode());"
        " print('q=' + urllib.parse.quote(t, safe=''));"
        " print('b=' + base64.b64encode(t.encode()).decode())"
    )
    params = {"argv": [sys.executable, "-c", program], "env": {"TOKEN": {"$secret": "env:TEST_EXEC_TOKEN"}}}
    async with SQLiteJournal(tmp_path / "journal.sqlite") as journal:
        config = DispatchConfig(workers=1, shutdown_timeout=1.0, journal=JournalConfig(poll_interval=0.05))
        d = Dispatcher(config, journal, {"exec": exec_}, kea=None)
        await d.start()
        try:
            (id_,) = await d.submit(make_event(), make_outcome(plan("exec", params)))
            await until(lambda: d.stats.outcomes[("exec", "done")] == 1)
        finally:
            await d.stop(0.5)
        entry = await journal.get(int(id_), with_event=False)
    assert entry is not None and isinstance(entry.result, dict)
    stdout = str(entry.result["stdout"])
    assert stdout.count("Basic ") == 1 and "q=" in stdout and "b=" in stdout, stdout
    assert not leaks(stdout, TOKEN), stdout


def test_a_plugin_result_echoing_the_secret_encoded_is_masked(token: str) -> None:
    result: dict[str, Any] = {"answer": [encodings(token)["basic"], {"q": encodings(token)["plus"]}]}
    assert not leaks(json.dumps(REDACTOR.redact_data(result)), token)


QUOTED = ["quo'te\"both-1", "back\\slash'x-2", 'back\\slash"x-3', "esc\x1bape'\"-4"]


@pytest.mark.parametrize("value", QUOTED)
@pytest.mark.parametrize("fmt", ["console", "json", "journal"])
def test_a_secret_with_quotes_in_a_field_is_masked_in_every_format(fmt: str, value: str) -> None:
    """The console format writes a field's text as Python's repr when it needs quoting: a quote is
    then \\' and a backslash \\\\, which neither the secret as written nor its JSON form is."""
    Secret(value, "test")
    buf = io.StringIO()
    configure_logging("info", fmt, buf)
    try:
        get_logger("trapd.test-encodings").info("field", detail=value, other=f"x {value} y")
    finally:
        configure_logging("info", "console", sys.stderr)
    out = buf.getvalue()
    assert out.count("***") == 2, out
    for shown in (value, repr(value)[1:-1], repr(value + "'\"")[1:-4], json.dumps(value)[1:-1]):
        assert shown not in out, (shown, out)


def test_with_many_secrets_every_form_is_still_found() -> None:
    """With many secrets, redact() first reads the text's longest run of word characters and
    searches only the forms of word characters that fit in it (tests the path past that bound)."""
    many = [Secret(f"many-{n:03d}-s3cretVALUE", "test") for n in range(40)]
    other = Secret("spa ce:s3cret/va lue", "test")
    assert len(REDACTOR) >= 41
    for secret in (many[7].reveal(), many[39].reveal(), other.reveal()):
        for name, form in encodings(secret).items():
            text = f"a {form} b, inside-a-long-run-of-word-characters{form}xyz"
            masked = REDACTOR.redact(text)
            assert not leaks(masked, secret), (name, masked)
    assert REDACTOR.redact("nothing-to-see here") == "nothing-to-see here"


def test_a_secret_that_is_not_utf8_is_masked_and_does_not_fail_its_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An environment variable (or a command-line argument) that is not UTF-8 reaches Python with
    its bytes as lone surrogates: percent-encoding and base64 of it raised UnicodeEncodeError,
    and loading the secret (trapd.yaml's {env: NAME}, --community) failed with it."""
    raw = b"not-utf8-\xff-s3cret"
    monkeypatch.setenv("TEST_NOT_UTF8", "replaced below")  # and removed after the test
    os.environb[b"TEST_NOT_UTF8"] = raw
    value = Secret.from_config({"env": "TEST_NOT_UTF8"}).reveal()
    basic = base64.b64encode(b"u:" + raw).decode()
    core = basic[3 : (2 + len(raw)) * 8 // 6]  # what only the secret decides of it
    for text, shown in (
        (value, "s3cret"),
        (urllib.parse.quote_from_bytes(raw, safe=""), "s3cret"),
        (f"Basic {basic}", core),
    ):
        masked = REDACTOR.redact(f"echo {text} end")
        assert shown not in masked, (text, masked)
