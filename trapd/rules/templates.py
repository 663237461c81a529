"""Jinja2 templates for action parameters: sandboxed, strict, compiled once.

Netops know Jinja from Ansible, so parameters are Jinja expressions. The
environment is Jinja's SandboxedEnvironment (a template cannot reach Python
internals, whatever a rule author or a trap value tries) with
StrictUndefined: a variable the event does not carry is an error, never a
silently empty string. An empty hw-address must not reach Kea.

Filters that matter for trap data (all raise on bad input, which turns into
a rejection; none of them guesses):

``mac``  any MAC spelling or 6 raw octets -> ``aa:bb:cc:dd:ee:ff``
``ip``   an address as text, 4/16 raw octets (InetAddress) or an IPv4 integer -> normalized text
``hex``  octets (or text, or an integer) -> lowercase hex; ``hex(":")`` puts a separator between octets
``int``  a strict integer (Jinja's own ``int`` returns 0 for garbage; this one refuses)
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import meta, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from trapd.params import ParamError, normalize_mac


class FilterError(ValueError):
    """A filter refused its input; the message is the rejection reason."""


class OctetText(str):
    """An OCTET STRING varbind in templates: prints as its text, keeps the octets.

    ``{{ ifDescr }}`` gives ``Gi1/0/17``; ``{{ cmnMACMoveAddress | mac }}``
    reads the six raw octets even though their "text" is unprintable.
    """

    raw: bytes

    def __new__(cls, text: str, raw: bytes) -> OctetText:
        obj = super().__new__(cls, text)
        obj.raw = raw
        return obj


def mac_filter(value: Any) -> str:
    raw = getattr(value, "raw", None)
    try:
        if isinstance(value, (bytes, bytearray)):
            return normalize_mac(bytes(value))
        try:
            return normalize_mac(str(value))
        except ParamError:
            # Octets that are not text (their "text" is a display form): judge the octets.
            if isinstance(raw, bytes) and (len(raw) == 6 or raw != str(value).encode("utf-8")):
                return normalize_mac(raw)
            raise
    except ParamError as exc:
        raise FilterError(f"mac filter: {exc}") from None


def ip_filter(value: Any) -> str:
    raw = value if isinstance(value, (bytes, bytearray)) else getattr(value, "raw", None)
    if isinstance(value, int) and not isinstance(value, bool):
        if 0 <= value < 2**32:
            return str(ipaddress.IPv4Address(value))
        raise FilterError(f"ip filter: {value} is not an IPv4 address as a number")
    if isinstance(value, str):
        try:
            return str(ipaddress.ip_address(value.strip()))
        except ValueError:
            pass
    if isinstance(raw, (bytes, bytearray)) and len(raw) in (4, 16):
        return str(ipaddress.ip_address(bytes(raw)))
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    raise FilterError(f"ip filter: not an IP address: {shown}")


def hex_filter(value: Any, sep: str = "") -> str:
    raw = value if isinstance(value, (bytes, bytearray)) else getattr(value, "raw", None)
    if isinstance(raw, (bytes, bytearray)):
        data = bytes(raw)
    elif isinstance(value, bool):
        raise FilterError("hex filter: not for booleans")
    elif isinstance(value, int):
        if value < 0:
            raise FilterError("hex filter: negative number")
        return format(value, "x")
    elif isinstance(value, str):
        data = value.encode("utf-8")
    else:
        raise FilterError(f"hex filter: cannot convert {type(value).__name__}")
    return data.hex(sep) if sep else data.hex()


_INT = re.compile(r"\s*[-+]?(0[xX][0-9a-fA-F]+|\d+)\s*")


def int_filter(value: Any) -> int:
    if isinstance(value, bool):
        raise FilterError("int filter: not for booleans")
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str) and _INT.fullmatch(value):
        return int(value.strip(), 0) if "x" in value.lower() else int(value.strip())
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    raise FilterError(f"int filter: not an integer: {shown}")


FILTERS = {"mac": mac_filter, "ip": ip_filter, "hex": hex_filter, "int": int_filter}


MAX_REPEAT = 4096  # longest text or list a template may build with * (trap values feed the operands)
MAX_EXPONENT = 256


class _Sandbox(SandboxedEnvironment):
    """The sandbox, plus bounds on ``*`` and ``**``: a trap's ifIndex must not make a gigabyte string."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                sized = isinstance(seq, (str, bytes, list, tuple)) and isinstance(times, int)
                if sized and len(seq) * times > MAX_REPEAT:
                    raise SecurityError(f"template builds more than {MAX_REPEAT} items with *")
            return left * right
        if isinstance(right, int) and abs(right) > MAX_EXPONENT:
            raise SecurityError(f"exponent above {MAX_EXPONENT}")
        return left**right


def url_component(value: Any) -> str:
    """What one ``{{ expression }}`` puts into a URL: percent-encoded, so it stays in its slot.

    Everything but RFC 3986's unreserved characters is encoded, so a trap value
    cannot add a path segment, a query parameter or a fragment. A value that is
    only dots would still be a ``.``/``..`` segment that clients resolve, so its
    dots are encoded too (``%2E`` is not resolved).
    """
    text = urllib.parse.quote(str(value), safe="")
    if text and text.strip(".") == "":
        return "%2E" * len(text)
    return text


def make_environment(*, url: bool = False) -> SandboxedEnvironment:
    env = _Sandbox(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        cache_size=0,  # every template is compiled once and kept by its rule
        finalize=url_component if url else None,
    )
    env.filters.update(FILTERS)
    return env


ENV = make_environment()
# For parameters of type ``url``: each expression's output is percent-encoded (the literal text is not).
URL_ENV = make_environment(url=True)
JINJA_GLOBALS = frozenset(ENV.globals)

# Errors a render can raise: Jinja's own (undefined names, sandbox refusals)
# and what filters or Python operations on trap values raise.
RENDER_ERRORS = (jinja2.TemplateError, FilterError, ValueError, TypeError, ArithmeticError, LookupError)


def is_template(text: str) -> bool:
    return "{{" in text or "{%" in text or "{#" in text


@dataclass(frozen=True, slots=True)
class TemplateInfo:
    """What a template source refers to, for the static checks in ``trapd check``."""

    variables: frozenset[str]
    item_fields: frozenset[str]  # x in item.x / item["x"]
    literal: str  # the constant text around the expressions
    # ``{{ a }}`` / ``{{ a.b.c }}`` alone: rendered by plain lookups, without Jinja's machinery
    path: tuple[str, ...] | None = None


def analyse(source: str, *, url: bool = False) -> tuple[jinja2.Template, TemplateInfo]:
    """Compile once; jinja2.TemplateSyntaxError on bad syntax (the caller adds the position).

    ``url``: the template renders a URL; every expression's output is
    percent-encoded (see :func:`url_component`).
    """
    env = URL_ENV if url else ENV
    ast = env.parse(source)
    variables = frozenset(meta.find_undeclared_variables(ast))
    fields: set[str] = set()
    for node in ast.find_all(nodes.Getattr):
        if isinstance(node.node, nodes.Name) and node.node.name == "item":
            fields.add(node.attr)
    for item in ast.find_all(nodes.Getitem):
        arg = item.arg
        named_item = isinstance(item.node, nodes.Name) and item.node.name == "item"
        if named_item and isinstance(arg, nodes.Const) and isinstance(arg.value, str):
            fields.add(arg.value)
    literal = "".join(n.data for n in ast.find_all(nodes.TemplateData))
    path = None if url else _simple_path(ast)  # the fast path would skip the encoding
    return env.from_string(ast), TemplateInfo(variables, frozenset(fields), literal, path)


def _simple_path(ast: nodes.Template) -> tuple[str, ...] | None:
    if len(ast.body) != 1 or not isinstance(ast.body[0], nodes.Output) or len(ast.body[0].nodes) != 1:
        return None
    node = ast.body[0].nodes[0]
    attrs: list[str] = []
    while isinstance(node, nodes.Getattr):
        if node.attr.startswith("_"):
            return None
        attrs.append(node.attr)
        node = node.node
    if not isinstance(node, nodes.Name):
        return None
    return (node.name, *reversed(attrs))


def render_fast(template: jinja2.Template, path: tuple[str, ...] | None, context: dict[str, Any]) -> str:
    """Render with ``context`` as the template's own variables (no copies).

    ``context`` must already hold the environment's globals. A template that
    is one variable path is rendered by lookups (dicts only; anything else
    goes through Jinja so the sandbox decides), with the same StrictUndefined
    errors Jinja raises.
    """
    if path is not None:
        value: Any = context.get(path[0], _MISSING)
        if value is _MISSING:
            raise jinja2.UndefinedError(f"{path[0]!r} is undefined")
        for attr in path[1:]:
            if type(value) is not dict:
                break
            nxt = value.get(attr, _MISSING)
            if nxt is _MISSING:
                raise jinja2.UndefinedError(f"'dict object' has no attribute {attr!r}")
            value = nxt
        else:
            return str(value)
    return ENV.concat(template.root_render_func(template.new_context(context, shared=True)))


_MISSING = object()
