"""webhook: POST the event (or a body of your own) as JSON to an HTTP endpoint.

Its parameters are declared once, in the ``Param`` list of :func:`webhook`
(``trapd actions webhook`` prints them; the README's table is generated).

Outcome: 2xx is success (the result records the status and the start of
the answer). 5xx, 408, 429, timeouts and connection errors are retryable
(the dispatcher backs off and tries again). Any other status (4xx, 501 and
505, and 3xx, since redirects are not followed) and a server certificate that
does not verify are permanent: the request itself is wrong and will stay wrong.

The request goes through trapd's shared HTTP client (connection reuse);
``verify: false`` or ``ca_file`` need their own TLS settings, so those calls
use a short-lived client of their own.

A URL whose path carries a token (Slack, Teams, Mattermost incoming webhooks)
is written ``{env: NAME}`` or ``{file: PATH}``: it is journaled as that
reference and, once resolved, masked by the redactor; this action's errors
name only its scheme and site (``https://hooks.slack.com/…``, see _masked).

Example::

    - action: webhook
      url: https://alerts.example.net/hooks/trapd
      headers: {Authorization: {env: ALERT_AUTH}}   # the whole value: "Bearer ..."
      body: {text: "{{ source }}: {{ trap_name }}"}
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import ipaddress
import re
import ssl
import time
import urllib.parse
import zlib
from collections.abc import Callable
from typing import Any, Protocol

import httpx

from trapd.params import Param, ParamError, convert, token_in_url
from trapd.plugin import ActionContext, PermanentError, RetryableError, action
from trapd.secrets import REDACTOR, Redactor

RETRYABLE_STATUSES = frozenset({408, 429})
# 5xx that say the request itself is refused, and will be again: 501 Not Implemented (the method),
# 505 HTTP Version Not Supported. Retrying them only sends the same request until max-attempts.
PERMANENT_5XX = frozenset({501, 505})
_HEADER_BREAK = re.compile(r"[\r\n\x00]")
_HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110's token
ANSWER_KEPT = 1000  # characters of the answer stored in the journal's result
ANSWER_BYTES = 4 * ANSWER_KEPT  # bytes read of the answer: enough for ANSWER_KEPT characters of UTF-8


@action(
    "webhook",
    params={
        "url": Param(
            "url",
            "http:// or https:// URL. Values rendered into it are percent-encoded:"
            " https://h/hook/{{ ifDescr }} stays one path segment whatever the trap carries"
            " (/, ?, #, ..); write the scheme and host as text. A URL with a token in it (Slack,"
            " Teams, Mattermost): {env: NAME} or {file: PATH}, journaled as that reference, masked"
            " in logs and errors but for its scheme and site (https://hooks.slack.com/…,"
            " https://….example.net/…: a per-hook subdomain is not shown)",
            required=True,
            max_length=4096,
            secret_ref=True,
        ),
        "url_suffix": Param(
            "url-suffix",
            "appended to url (a secret one too): /port/{{ ifDescr }} or ?port={{ ifDescr }};"
            " starts with /, ? or &, values rendered into it are percent-encoded as in url",
            max_length=4096,
        ),
        "method": Param("enum", "HTTP method", choices=("POST", "PUT", "PATCH"), default="POST"),
        "headers": Param(
            "mapping",
            "extra request headers (Authorization, ...); masked in dry-run logs, trapd test and trapd journal"
            " show. A CR, LF or NUL in a name or value, or a name that is not an HTTP token, is refused,"
            " permanently; a value is sent as UTF-8",
            secret=True,
        ),
        "body": Param(
            "any",
            'any JSON value; default: {"event": (the event as trapd listen prints it), "rule": ...,'
            ' "action_id": ...}',
        ),
        "timeout": Param(
            "duration", "for connecting and for the whole answer", default=10.0, min=0.001, max=3600
        ),
        "verify": Param("boolean", "check the server's TLS certificate (false: a lab only)", default=True),
        "ca_file": Param("string", "PEM file of the CA(s) to trust instead of the system store"),
    },
    idempotent=False,
)
async def webhook(params: dict[str, Any], ctx: ActionContext) -> dict[str, Any]:
    """POST JSON to a URL: 2xx done, 5xx / 408 / 429 / timeouts retried, other statuses permanent.

    The request goes through trapd's shared HTTP client; ``verify: false`` or
    ``ca_file`` use a short-lived client of their own. See actions/webhook/README.md.

    Example::

        - action: webhook
          url: https://alerts.example.net/hooks/trapd
          body: {text: "{{ source }}: {{ trap_name }}"}
    """
    url = str(params["url"])
    # A URL from {env: NAME} / {file: PATH} was resolved (and registered with the redactor) by
    # the dispatcher just now; only such a one is masked.
    secret = bool(REDACTOR) and REDACTOR.redact(url) != url
    if secret:
        _check_secret_url(url)
    elif not url.startswith(("http://", "https://")):
        raise PermanentError(f"not an http(s) URL: {url[:100]!r}")
    scrub = _scrubber(url if secret else None)
    where = _masked(url) if secret else ""  # the secret URL's host; the suffix is the trap's
    url += str(params.get("url_suffix") or "")
    where = where or _where(url)
    body = params.get("body")
    if body is None:
        body = {"event": ctx.event.to_dict(), "rule": ctx.rule, "action_id": ctx.action_id}
    headers = {str(k): str(v) for k, v in (params.get("headers") or {}).items()}
    for k, v in headers.items():
        if _HEADER_BREAK.search(k) or _HEADER_BREAK.search(v):
            # Would split the request (header injection); a retry sends the same bytes again.
            raise PermanentError(f"header {k[:60]!r}: a CR, LF or NUL in a header name or value")
        if not _HEADER_NAME.fullmatch(k):
            raise PermanentError(f"header {k[:60]!r}: not a header name (letters, digits, -, ...)")
    headers.setdefault("User-Agent", "trapd")
    if not any(k.lower() == "accept-encoding" for k in headers):
        # Only the start of the answer is read (ANSWER_BYTES): compressing it helps nobody.
        headers["Accept-Encoding"] = "identity"
    # httpx encodes str headers as ASCII: a trap value like "Büro 1/0/17" raised UnicodeEncodeError
    # (an unexpected error, retried). Sent as UTF-8, as curl sends it.
    raw_headers = {k.encode(): v.encode() for k, v in headers.items()}
    timeout = float(params.get("timeout", 10.0))
    verify = bool(params.get("verify", True))
    ca_file = params.get("ca_file")
    method = str(params.get("method", "POST"))
    try:
        # httpx's timeout bounds each read, not the answer: a server that sends a byte now and
        # then would hold the action until dispatch.action_timeout. This bounds the whole call.
        async with asyncio.timeout(timeout):
            if verify and not ca_file:
                status, answer, wait, complete = await _send(
                    ctx.http, method, url, body, raw_headers, timeout
                )
            else:
                tls: ssl.SSLContext | bool = _tls(ca_file) if verify else False
                async with httpx.AsyncClient(verify=tls) as client:
                    status, answer, wait, complete = await _send(
                        client, method, url, body, raw_headers, timeout
                    )
    # httpx and the receiver may quote the URL (an error, an answer that echoes the request).
    except (httpx.TimeoutException, TimeoutError) as exc:
        raise RetryableError(f"{where}: no answer within {timeout:g}s ({type(exc).__name__})") from None
    except httpx.LocalProtocolError as exc:
        # The request itself is malformed (h11 refused to send it): it will stay malformed.
        raise PermanentError(f"{where}: request refused by the HTTP client: {scrub(str(exc))}") from None
    except httpx.TransportError as exc:
        if _certificate_refused(exc):
            raise PermanentError(f"{where}: TLS certificate not trusted: {scrub(str(exc))}") from None
        raise RetryableError(f"{where}: {type(exc).__name__}: {scrub(str(exc))}") from None
    except httpx.InvalidURL as exc:
        raise PermanentError(f"invalid URL: {scrub(str(exc))}") from None
    # Masked whole before it is cut to what is kept, and a start of a secret a cut left masked:
    # the URL's, or a header's (a receiver that quotes the request), however the URL is written.
    answer = scrub(answer, complete, ANSWER_KEPT)
    if 200 <= status < 300:
        return {"status": status, "answer": answer}
    if (status >= 500 and status not in PERMANENT_5XX) or status in RETRYABLE_STATUSES:
        if wait is not None:  # 429 Too Many Requests, 503: the receiver said when to come back
            raise RetryableError(f"{where} answered {status} (retry after {wait:g}s)", retry_after=wait)
        raise RetryableError(f"{where} answered {status}")
    raise PermanentError(f"{where} answered {status}: {scrub(answer, True, 200)}")


async def _send(
    client: httpx.AsyncClient, method: str, url: str, body: Any, headers: dict[bytes, bytes], timeout: float
) -> tuple[int, str, float | None, bool]:
    """The status, the start of the answer (the rest is never read: it may not end), its
    Retry-After, and whether that is the whole answer (not when it filled the bytes read)."""
    async with client.stream(method, url, json=body, headers=headers, timeout=timeout) as response:
        kept = bytearray()
        complete = True
        inflate = _inflater(response.headers.get("Content-Encoding", ""))
        # Raw, and inflated here only as far as it is kept: httpx inflates each chunk it reads
        # whole (a 64 KiB chunk of a gzipped run of one byte is 64 MiB), whatever is kept of it.
        async for chunk in response.aiter_raw():
            kept += inflate(chunk, ANSWER_BYTES + 1 - len(kept))
            if len(kept) > ANSWER_BYTES:
                complete = False  # not asked whether more follows: it may come never
                break
        text = bytes(kept[:ANSWER_BYTES]).decode(response.encoding or "utf-8", "replace")
        return response.status_code, text, _retry_after(response.headers.get("Retry-After")), complete


def _inflater(encoding: str) -> Callable[[bytes, int], bytes]:
    """``(chunk, room) -> at most room bytes`` of a gzip or deflate answer (no more is inflated);
    other encodings (an answer compressed although identity was asked) as they are."""
    name = encoding.strip().lower()
    if name not in ("gzip", "x-gzip", "deflate"):
        return lambda chunk, room: chunk[:room]
    # gzip or zlib header: 32 + 15. "deflate" is zlib-wrapped by the RFC, raw by some servers.
    state: list[Any] = [zlib.decompressobj(zlib.MAX_WBITS | 32), name == "deflate", False]

    def inflate(chunk: bytes, room: int) -> bytes:
        inflater, raw_allowed, broken = state
        if broken or room <= 0:
            return b""
        try:
            out = bytes(inflater.decompress(chunk, room))
            state[1] = False  # its header was read: a later error is not a raw stream's
            return out
        except zlib.error:
            if raw_allowed:  # a raw deflate stream: the first chunk again, without a header
                state[0], state[1] = zlib.decompressobj(-zlib.MAX_WBITS), False
                return inflate(chunk, room)
            state[2] = True  # not what it says: the status still decides, the answer stays short
            return b""

    return inflate


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delay-seconds or an HTTP-date); None if absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    # [0-9], not isdigit(): that is true of "²" (a latin-1 header byte), which float() refuses.
    if re.fullmatch(r"[0-9]+", value):
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - time.time())


def _tls(ca_file: str | None) -> ssl.SSLContext:
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise PermanentError(f"cannot load ca_file {ca_file}: {exc}") from None


def _certificate_refused(exc: BaseException) -> bool:
    """A certificate that does not verify will not verify on the next try either."""
    seen: BaseException | None = exc
    for _ in range(10):
        if seen is None:
            return False
        if isinstance(seen, ssl.SSLCertVerificationError):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _where(url: str) -> str:
    """The URL without its query string, which may carry a token."""
    return url.split("?", 1)[0]


_URL = Param("url", max_length=4096)


def _check_secret_url(url: str) -> None:
    """What ``trapd check`` checks of a URL written as text, for one read when the action runs."""
    try:
        convert(_URL, url, "url")
        urllib.parse.urlsplit(url).port  # noqa: B018  (raises ValueError for a port out of range)
    except (ParamError, ValueError):
        # The reason would quote the URL: say what is expected instead.
        raise PermanentError(
            "url (a secret) is not an http:// or https:// URL with a host, a port up to 65535, no"
            " user:password@, spaces, control characters or . / .. segments"
        ) from None


# Second-level names under a country code under which each name is a site (example.co.uk).
_SECOND_LEVEL = frozenset({"ac", "co", "com", "edu", "go", "gov", "ne", "net", "or", "org"})


def _masked(url: str) -> str:
    """A secret URL as errors show it: its scheme and site, so that an operator knows which.

    The host is shown in full when it is an address or a known service's (Slack, Teams, ...:
    their token is in the path); else only its site, the last two labels (three under a
    country's co., com., ...): a token may be the host's first label (a per-hook subdomain).
    A user:password@ is refused before this (see _check_secret_url)."""
    parts = urllib.parse.urlsplit(url)
    return f"{parts.scheme}://{_site(url)}/…"


def _site(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port is not None else ""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return f"[{host}]{port}" if address.version == 6 else f"{host}{port}"
    labels = host.rstrip(".").split(".")
    keep = 3 if len(labels) > 3 and len(labels[-1]) == 2 and labels[-2] in _SECOND_LEVEL else 2
    if token_in_url(url) or len(labels) <= keep:
        return f"{host}{port}"
    return "…." + ".".join(labels[-keep:]) + port


class _Scrub(Protocol):
    def __call__(self, text: str, complete: bool = True, length: int | None = None) -> str: ...


def _scrubber(url: str | None) -> _Scrub:
    """Masks the secrets (the headers', a secret URL) in a text from httpx or the receiver (an
    error, an answer that quotes the request), and cuts it to ``length`` (Redactor.cut).

    The redactor masks the secrets, a secret URL and its path and query too, in every form it
    knows (as written, as JSON writes it, percent-encoded, in base64: trapd.secrets.encodings);
    for a secret ``url`` this call adds, in those forms, the URL as httpx encodes it and a host
    that _masked does not show. A text that is not complete (cut at the bytes read) or that is
    cut here loses an end that starts one of them."""
    redactors = [REDACTOR]
    if url is not None:
        own = Redactor()
        parts = urllib.parse.urlsplit(url)
        if not _masked(url).startswith(f"{parts.scheme}://{parts.hostname}"):
            own.add(parts.hostname or "")
        with contextlib.suppress(httpx.InvalidURL):
            own.add(str(httpx.URL(url)))
        redactors.append(own)

    def scrub(text: str, complete: bool = True, length: int | None = None) -> str:
        for redactor in redactors:
            text = redactor.redact(text)
        if length is not None and len(text) > length:
            text, complete = text[:length], False
        if not complete:
            for redactor in redactors:
                text = redactor.mask_end(text)
        return text

    return scrub
