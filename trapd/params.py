"""Typed action parameters: the gate between trap data and anything that acts.

Every action declares its parameters as :class:`Param` objects. Templates
render values from the event; :func:`validate` converts and checks each one
against its declared type before anything is journaled or run. Anything that
fails is never dispatched. This is where ``"1.2.3.4; reboot"`` stops being a
problem: it is not an ``ip-address``.

Types (``Param.type``):

=================  ==========================================================
string             text; no NUL; ``max_length`` (default 1024) bounds it
url                an ``http://`` or ``https://`` URL; a template's expressions are
                   percent-encoded when rendered, so a trap value stays inside its
                   path segment or query value
url-suffix         text appended to a URL (``/port/{{ ifDescr }}``, ``?port=...``): starts
                   with ``/``, ``?`` or ``&`` (it cannot change the host); expressions
                   percent-encoded as in ``url``
integer            int, optional ``min`` / ``max``
boolean            true/false/yes/no/on/off/1/0
enum               one of ``choices``
ip-address         IPv4 or IPv6 address, normalized (``ipaddress``)
ipv4 / ipv6        one family only
mac-address        any common MAC spelling -> ``aa:bb:cc:dd:ee:ff``
duid               1-130 octets of hex, any separator -> ``aa:bb:...``
hex                octets as hex -> lowercase, no separators
duration           ``30s``, ``5m``, ``1h30m``, ``250ms`` or a number of seconds -> float seconds
list               a list whose items have type ``item`` (``min``, ``max`` and ``choices``
                   hold each item)
mapping            a dict of strings to plain values (for JSON payloads)
any                anything JSON-serializable (escape hatches such as kea.command)
=================  ==========================================================
"""

from __future__ import annotations

import difflib
import ipaddress
import json
import math
import re
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from trapd.secrets import is_reference

PARAM_TYPES = frozenset(
    {
        "string",
        "url",
        "url-suffix",
        "integer",
        "boolean",
        "enum",
        "ip-address",
        "ipv4",
        "ipv6",
        "mac-address",
        "duid",
        "hex",
        "duration",
        "list",
        "mapping",
        "any",
    }
)


class ParamError(ValueError):
    """A parameter value does not fit its declared type; the message says why."""


@dataclass(frozen=True, slots=True)
class Param:
    type: str
    description: str = ""
    required: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()
    min: float | None = None
    max: float | None = None
    max_length: int = 1024
    item: str | None = None  # element type for "list"
    secret: bool = False  # value masked in logs and `trapd test` output
    # Written as text, not a secret; written {env: NAME} / {file: PATH}, one: journaled as that
    # reference, resolved when the action runs (a webhook URL with a token in its path, while
    # most URLs are better shown in full).
    secret_ref: bool = False

    def __post_init__(self) -> None:
        if self.type not in PARAM_TYPES:
            close = difflib.get_close_matches(str(self.type), sorted(PARAM_TYPES), n=1, cutoff=0.5)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(
                f"unknown parameter type {self.type!r}{hint}; the types: {', '.join(sorted(PARAM_TYPES))}"
            )
        if self.type == "enum" and not self.choices:
            raise ValueError("an enum parameter needs choices")
        if self.type == "list" and (self.item is None or self.item not in PARAM_TYPES):
            raise ValueError("a list parameter needs an item type: item='string', for one")
        if self.type == "list" and self.item == "list":
            # Its items would need an item type of their own, which one Param cannot say.
            raise ValueError("a list of lists cannot declare its items' type: item='any'")
        if self.type == "list" and self.item == "enum" and not self.choices:
            raise ValueError("a list of enum items needs choices")

    def describe(self) -> str:
        """One line for `trapd actions`: type, constraints, default."""
        t = self.type
        if t == "enum":
            t += "(" + "|".join(self.choices) + ")"
        elif t == "list":
            choices = "(" + "|".join(self.choices) + ")" if self.choices else ""
            t = f"list[{self.item}{choices}]"
        if self.min is not None or self.max is not None:
            t += f" [{'' if self.min is None else self.min}..{'' if self.max is None else self.max}]"
        if self.required:
            return f"{t}, required"
        if self.default is None:
            return f"{t}, optional"  # absent unless a rule gives it: no value to show
        if self.type == "duration" and isinstance(self.default, int | float):
            return f"{t}, default {self.default:g}s"  # as a rule file writes it
        return f"{t}, default {self.default!r}"


_MAC_HEX = re.compile(r"[0-9a-fA-F]+")
_DURATION = re.compile(r"(?:(\d+(?:\.\d+)?)(ms|s|m|h|d))", re.ASCII)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def normalize_mac(value: Any) -> str:
    """Any MAC spelling (or 6 raw octets) to ``aa:bb:cc:dd:ee:ff``; ParamError otherwise.

    Accepted: ``00:11:22:33:44:55``, ``00-11-22-33-44-55``, ``0011.2233.4455``,
    ``001122334455``, ``0:11:2:33:4:55`` (net-snmp style, one-digit groups).
    """
    if isinstance(value, (bytes, bytearray)):
        if len(value) != 6:
            raise ParamError(f"a MAC address is 6 octets, got {len(value)}")
        return ":".join(f"{b:02x}" for b in value)
    if not isinstance(value, str):
        raise ParamError(f"not a MAC address: {_show(value)}")
    s = value.strip()
    if re.fullmatch(r"[0-9A-Fa-f]{1,2}([:-])(?:[0-9A-Fa-f]{1,2}\1){4}[0-9A-Fa-f]{1,2}", s):
        groups = re.split(r"[:-]", s)
        return ":".join(g.zfill(2).lower() for g in groups)
    if re.fullmatch(r"[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}\.[0-9A-Fa-f]{4}", s) or re.fullmatch(
        r"[0-9A-Fa-f]{12}", s
    ):
        h = s.replace(".", "").lower()
        return ":".join(h[i : i + 2] for i in range(0, 12, 2))
    raise ParamError(f"not a MAC address: {_show(value)}")


def whole_number(value: Any) -> int | None:
    """An integer as a rules file may write it: ``5``, or ``5.0`` (a YAML float with nothing after
    the point), which JSON Schema's ``integer`` accepts too, so an editor checking the file against
    trapd's schema passes it; None for anything else (a boolean, ``5.5``, text)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def parse_duration(value: Any) -> float:
    """``"30s"``, ``"5m"``, ``"1h30m"``, ``"250ms"``, or a number of seconds."""
    if isinstance(value, bool):
        raise ParamError("a duration is not a boolean")
    seconds: float | None = None
    if isinstance(value, (int, float)):
        seconds = float(value)
    elif isinstance(value, str):
        s = value.strip()
        try:
            seconds = float(s)
        except ValueError:
            if s and _DURATION.sub("", s) == "":
                seconds = sum(float(n) * _DURATION_UNITS[u] for n, u in _DURATION.findall(s))
    # float() also reads "nan" and "inf" (and 400 nines): NaN passes every bound, as it
    # compares false with both, so it is refused here rather than dispatched.
    if seconds is None or not math.isfinite(seconds):
        raise ParamError(f"not a duration (like 30s, 5m, 1h30m): {_show(value)}")
    if seconds < 0:
        raise ParamError("a duration cannot be negative")
    return seconds


def parse_address(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An IPv4 or IPv6 address as text; ValueError otherwise, and for an address with a zone.

    ``ipaddress`` takes any text after ``%`` as an IPv6 zone (``fe80::1%; reboot``), and no
    parameter or filter is about an interface: a zone would carry trap text past the check.
    """
    addr = ipaddress.ip_address(text.strip())
    if isinstance(addr, ipaddress.IPv6Address) and addr.scope_id is not None:
        raise ValueError("an address with a zone")
    return addr


_MAPPED = ipaddress.IPv6Network("::ffff:0:0/96")


def unmapped_network(
    net: ipaddress.IPv4Network | ipaddress.IPv6Network,
) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """``::ffff:10.20.0.0/112`` as ``10.20.0.0/16``, any other network as it is.

    A sender on a dual-stack socket (``::ffff:10.20.1.5``) is compared as IPv4, so a network
    written in the mapped form (as ``trapd listen`` shows such a sender) must be IPv4 too, or
    it never contains the address it names.
    """
    if isinstance(net, ipaddress.IPv6Network) and net.prefixlen >= 96 and net.subnet_of(_MAPPED):
        return ipaddress.IPv4Network((int(net.network_address) & 0xFFFFFFFF, net.prefixlen - 96))
    return net


def _type_name(value: Any) -> str:
    """``list``, not ``YList``: the loader's subclasses that remember positions are its business."""
    return next(c.__name__ for c in type(value).__mro__ if c.__module__ == "builtins")


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _hex_octets(value: Any, what: str) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if not isinstance(value, str):
        raise ParamError(f"not {what}: {_show(value)}")
    s = value.strip()
    s = s[2:] if s[:2].lower() == "0x" else s
    # Between separators a group is octets, and a one-digit group one octet (net-snmp and Kea
    # write 0:1:a): "1:2:3:4" is 01:02:03:04, not 12:34; a group of three digits is a guess.
    groups = re.split(r"[:\-. ]", s)
    h = "".join("0" + g if len(g) == 1 and len(groups) > 1 else g for g in groups)
    if not h or any(len(g) % 2 and len(g) > 1 for g in groups) or len(h) % 2 or not _MAC_HEX.fullmatch(h):
        raise ParamError(f"not {what}: {_show(value)}")
    return bytes.fromhex(h)


def _number(v: float) -> str:
    """A bound or value as errors say it: whole numbers in full (:g wrote 4294967 as 4.29497e+06)."""
    return str(int(v)) if float(v).is_integer() else f"{v:.15g}"


def _check_bounds(name: str, p: Param, value: float, shown: str, unit: str = "") -> None:
    """``p.min`` <= value <= ``p.max`` for integer and duration; ``shown``: the value as errors say it."""
    if p.min is not None and value < p.min:
        raise ParamError(f"{name}: {shown} is below the minimum {_number(p.min)}{unit}")
    if p.max is not None and value > p.max:
        raise ParamError(f"{name}: {shown} is above the maximum {_number(p.max)}{unit}")


def convert(p: Param, value: Any, name: str = "value") -> Any:
    """Check and convert one value to its declared type; raise ParamError.

    A secret parameter may be a reference to the secret (``{"$secret": "env:NAME"}``): it is
    kept as is, and resolved when the action runs (trapd.secrets.resolve).
    """
    t = p.type
    if (p.secret or p.secret_ref) and is_reference(value):
        return dict(value)
    if t == "string":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise ParamError(f"{name}: expected text, got {_type_name(value)}")
        if "\x00" in value:
            raise ParamError(f"{name}: text contains a NUL byte")
        if len(value) > p.max_length:
            raise ParamError(f"{name}: text longer than {p.max_length} characters")
        if p.choices and value not in p.choices:
            raise ParamError(f"{name}: {_show(value)} is not one of {', '.join(p.choices)}")
        return value
    if t == "url":
        return _url(p, value, name)
    if t == "url-suffix":
        return _url_suffix(p, value, name)
    if t == "integer":
        if isinstance(value, bool):
            raise ParamError(f"{name}: expected an integer, got a boolean")
        # [0-9], not \d: int() also reads other scripts' digits ("\u0661\u0667" is 17).
        if isinstance(value, str) and re.fullmatch(r"\s*[-+]?[0-9]+\s*", value):
            value = int(value)
        value = whole_number(value) if isinstance(value, float) else value
        if not isinstance(value, int):
            raise ParamError(f"{name}: expected an integer, got {_show(value)}")
        _check_bounds(name, p, value, str(value))
        return value
    if t == "boolean":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        raise ParamError(f"{name}: expected true or false, got {_show(value)}")
    if t == "enum":
        if not isinstance(value, str) or value not in p.choices:
            raise ParamError(f"{name}: {_show(value)} is not one of {', '.join(p.choices)}")
        return value
    if t in ("ip-address", "ipv4", "ipv6"):
        if not isinstance(value, str):
            raise ParamError(f"{name}: not an IP address: {_show(value)}")
        try:
            addr = parse_address(value)
        except ValueError as exc:
            why = " (it has a zone)" if "zone" in str(exc) else ""
            raise ParamError(f"{name}: not an IP address{why}: {_show(value)}") from None
        if t == "ipv4" and addr.version != 4:
            raise ParamError(f"{name}: not an IPv4 address: {_show(value)}")
        if t == "ipv6" and addr.version != 6:
            raise ParamError(f"{name}: not an IPv6 address: {_show(value)}")
        return str(addr)
    if t == "mac-address":
        try:
            return normalize_mac(value)
        except ParamError as exc:
            raise ParamError(f"{name}: {exc}") from None
    if t == "duid":
        raw = _hex_octets(value, "a DUID")
        if not 1 <= len(raw) <= 130:
            raise ParamError(f"{name}: a DUID is 1 to 130 octets, got {len(raw)}")
        return ":".join(f"{b:02x}" for b in raw)
    if t == "hex":
        return _hex_octets(value, "hex octets").hex()
    if t == "duration":
        try:
            seconds = parse_duration(value)
        except ParamError as exc:
            raise ParamError(f"{name}: {exc}") from None
        _check_bounds(name, p, seconds, f"{_number(seconds)}s", unit="s")
        return seconds
    if t == "list":
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ParamError(f"{name}: expected a list, got {_show(value)}")
        assert p.item is not None
        # The list's constraints are its items': bounds of list[integer], choices of list[enum].
        item = Param(type=p.item, choices=p.choices, min=p.min, max=p.max, max_length=p.max_length)
        return [convert(item, v, f"{name}[{i}]") for i, v in enumerate(value)]
    if t == "mapping":
        if not isinstance(value, Mapping):
            raise ParamError(f"{name}: expected a mapping, got {_show(value)}")
        _check_json(value, name)
        return dict(value)
    if t == "any":
        _check_json(value, name)
        return value
    raise ParamError(f"{name}: unknown type {t}")  # unreachable: checked in Param


URL_CREDENTIALS = (
    "no credentials in a URL (user:password@ would be journaled and logged in clear);"
    " send them in a header declared secret (Authorization: {env: NAME})"
)


def _url(p: Param, value: Any, name: str) -> str:
    text = _url_text(p, value, name, "a URL")
    parts = urllib.parse.urlsplit(text)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ParamError(f"{name}: not an http:// or https:// URL: {_show_url(text)}")
    if "@" in parts.netloc:
        # Journaled with the parameters, shown in errors and logs: a password there is in clear.
        raise ParamError(f"{name}: {URL_CREDENTIALS}")
    try:
        parts.port  # noqa: B018  (raises ValueError for a port that is not a number up to 65535)
    except ValueError:
        # Also a password with a /, ? or # in it: the host ends there, its start is the "port".
        raise ParamError(f"{name}: the port is not a number up to 65535: {_show_url(text)}") from None
    _no_dot_segments(parts.path, text, name)
    return text


# Incoming-webhook URLs whose path or query is the credential: (service, host, path, query) patterns.
_TOKEN_URLS = (
    ("Slack", re.compile(r"hooks\.slack\.com"), re.compile(r"/."), None),
    ("Teams", re.compile(r".*\.webhook\.office\.com"), re.compile(r"/."), None),
    ("Teams/Power Automate", re.compile(r".*\.logic\.azure\.com"), None, re.compile(r"(^|&)sig=")),
    ("Discord", re.compile(r"(ptb\.|canary\.)?discord(app)?\.com"), re.compile(r"/api/webhooks/"), None),
    ("Google Chat", re.compile(r"chat\.googleapis\.com"), None, re.compile(r"(^|&)token=")),
    ("Mattermost", None, re.compile(r".*/hooks/[a-z0-9]{26}/?"), None),
)


def token_in_url(url: str) -> str | None:
    """The service whose incoming-webhook URL ``url`` is (its path or query is the token), or None."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = (parts.hostname or "").lower()
    except ValueError:
        return None
    for service, host_re, path_re, query_re in _TOKEN_URLS:
        if (
            (host_re is None or host_re.fullmatch(host))
            and (path_re is None or path_re.match(parts.path))
            and (query_re is None or query_re.search(parts.query))
        ):
            return service
    return None


def _url_suffix(p: Param, value: Any, name: str) -> str:
    text = _url_text(p, value, name, "the end of a URL")
    if not text.startswith(("/", "?", "&")):
        # Appended as text: "evil.example/x" after "https://hooks.example" would change the host.
        raise ParamError(f"{name}: starts with /, ? or & (appended to the URL): {_show(text)}")
    _no_dot_segments(text.split("?", 1)[0].split("#", 1)[0], text, name)
    return text


def _url_text(p: Param, value: Any, name: str, what: str) -> str:
    """A URL or a part of one: text of at most ``p.max_length`` characters, no space or control."""
    if not isinstance(value, str):
        raise ParamError(f"{name}: expected {what}, got {_type_name(value)}")
    if len(value) > p.max_length:
        raise ParamError(f"{name}: {what} longer than {p.max_length} characters")
    if any(ord(ch) < 0x21 or ord(ch) == 0x7F for ch in value):
        raise ParamError(f"{name}: a URL has no spaces or control characters: {_show_url(value)}")
    return value


def _no_dot_segments(path: str, value: str, name: str) -> None:
    if any(seg in (".", "..") for seg in path.split("/")):
        # Clients resolve these segments: the request would go somewhere else than written.
        raise ParamError(f"{name}: a URL path has no . or .. segments: {_show_url(value)}")


# What comes before the last @ of a text that may be a URL (user:password), after its scheme and
# slashes if any: however the URL is malformed (https:/, https:///, a / or ? in the password),
# whatever is before an @ may be a password. An @ in a path is masked with it: an error's loss.
_USERINFO = re.compile(r"^((?:[A-Za-z][A-Za-z0-9+.-]*:)?[/\\]*).*@", re.DOTALL)


def _show_url(value: str) -> str:
    """A URL for an error message: a user:password@ in it masked (refused as it is, it is still
    the operator's password: quoted, it went to the terminal, CI logs and a reload's log line)."""
    return _show(_USERINFO.sub(lambda m: f"{m.group(1)}***@", value))


def _check_json(value: Any, name: str) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise ParamError(f"{name}: not a plain JSON value ({exc})") from None


def validate(params: Mapping[str, Param], values: Mapping[str, Any]) -> dict[str, Any]:
    """Validate a whole parameter set: unknown names, missing required ones, each type.

    Returns converted values with defaults filled in. Raises ParamError
    naming the first problem (one clear reason is what the log needs).
    """
    unknown = sorted(set(values) - set(params))
    if unknown:
        raise ParamError(f"unknown parameter(s): {', '.join(unknown)}")
    out: dict[str, Any] = {}
    for name, p in params.items():
        if name in values and values[name] is not None:
            out[name] = convert(p, values[name], name)
        elif p.required:
            raise ParamError(f"{name}: required")
        elif p.default is not None:
            out[name] = p.default
    return out
