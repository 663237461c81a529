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

import functools
import ipaddress
import re
import string
import time
import urllib.parse
import weakref
from collections.abc import Iterator, Mapping
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import meta, nodes, pass_context
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment, SandboxedEnvironment
from jinja2.utils import _PassArg

from trapd.params import ParamError, normalize_mac, parse_address


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
    why = ""
    if isinstance(value, str):
        try:
            return str(parse_address(value))
        except ValueError as exc:
            why = " (it has a zone)" if "zone" in str(exc) else ""
    if isinstance(raw, (bytes, bytearray)) and len(raw) in (4, 16):
        return str(ipaddress.ip_address(bytes(raw)))
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    raise FilterError(f"ip filter: not an IP address{why}: {shown}")


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

# Bounds on one render (one parameter value). A rule's template renders trap values, so a width
# from ``ifIndex * 1000`` or a loop nest must fail its action, not stall the event loop or fill
# memory. Rules in the wild render a few dozen characters with a handful of operations.
MAX_TEXT = 65536  # characters in any one value a template builds, and in its output
MAX_PRODUCED = 4 * 1024 * 1024  # characters built by all operations of one render together
MAX_STEPS = 200_000  # loop iterations + calls + filters + operators in one render
MAX_SECONDS = 0.5  # wall-clock time of one render (a budget check every step; the loop waits at most this)
# Wall-clock time of all renders for one event together (see event_budget): twenty rules on one
# trap, each with a template that runs to its own bound, would otherwise hold the loop 20 x 0.5 s.
MAX_EVENT_SECONDS = 0.5


class TemplateBoundError(SecurityError):
    """A render went past its time, step or size bound; the action is rejected (not the event)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        # Jinja folds constant expressions at compile time and drops what fails; analyse() wants to know.
        folding = _FOLDING.get()
        if folding is not None:
            folding.append(message)


class TemplateRefused(jinja2.TemplateSyntaxError):
    """``trapd check``: a template that exceeds its bounds whatever the trap carries."""


class _Budget:
    """What one render may still spend; every intercepted operation charges it."""

    __slots__ = ("deadline", "produced", "shared", "steps")

    def __init__(self, seconds: float = MAX_SECONDS) -> None:
        deadline = time.monotonic() + seconds
        event = _EVENT_DEADLINE.get()
        # Within an event's budget, whichever ends first: the render's own, or the event's.
        if event is not None and event < deadline:
            self.shared, self.deadline = True, event
        else:
            self.shared, self.deadline = False, deadline
        self.steps = 0
        self.produced = 0

    def step(self) -> None:
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise TemplateBoundError(f"template exceeds its bound of {MAX_STEPS} steps (loops, calls...)")
        if time.monotonic() > self.deadline:
            if self.shared:
                raise TemplateBoundError(
                    f"this event's templates together exceed their time bound of {MAX_EVENT_SECONDS:g}s"
                )
            raise TemplateBoundError(f"template exceeds its time bound of {MAX_SECONDS:g}s")

    def admit(self, value: Any) -> Any:
        """Check a value an operation built; iterators are checked item by item as they are consumed."""
        if isinstance(value, str):  # the common case first: isinstance on the Iterator ABC is slow
            size = len(value)
        elif isinstance(value, Iterator):
            return self._items(value)
        else:
            size = _size(value, MAX_TEXT)
        if size > MAX_TEXT:
            raise TemplateBoundError(f"template builds a value over its bound of {MAX_TEXT} characters")
        self.produced += size
        if self.produced > MAX_PRODUCED:
            raise TemplateBoundError(f"template builds over its bound of {MAX_PRODUCED} characters in all")
        return value

    def _items(self, items: Iterator[Any]) -> Iterator[Any]:
        for item in items:
            self.step()
            yield self.admit(item)


_BUDGET: ContextVar[_Budget | None] = ContextVar("trapd_template_budget", default=None)
# When the renders of the event being evaluated must end (monotonic seconds); None outside one.
_EVENT_DEADLINE: ContextVar[float | None] = ContextVar("trapd_template_event_deadline", default=None)


def event_budget() -> Token[float | None]:
    """Start one event's shared time bound for its renders; give the token to :func:`end_event_budget`."""
    return _EVENT_DEADLINE.set(time.monotonic() + MAX_EVENT_SECONDS)


def end_event_budget(token: Token[float | None]) -> None:
    _EVENT_DEADLINE.reset(token)


_FOLDING: ContextVar[list[str] | None] = ContextVar("trapd_template_folding", default=None)


def _budget() -> _Budget:
    """The current render's budget; outside a render (constant folding at compile time) a fresh one."""
    return _BUDGET.get() or _Budget()


def _size(value: Any, limit: int) -> int:
    """Characters ``value`` would print as, counted only up to just past ``limit`` (bounded work).

    Text inside a list or mapping counts one more than its length (at least its separator when
    printed): an empty string counted nothing, so a list of them that doubled stayed "2
    characters" at a billion items, and only the time bound stopped it (with 100s of MB built).
    """
    if isinstance(value, (str, bytes, bytearray)):
        return len(value)
    if isinstance(value, int):
        return value.bit_length() // 3 + 1
    total = 0
    stack: list[Iterator[Any]] = [iter((value,))]
    while stack:
        v = next(stack[-1], _MISSING)
        if v is _MISSING:
            stack.pop()
            continue
        if isinstance(v, (str, bytes, bytearray)):
            total += len(v) + 1
        elif isinstance(v, bool) or v is None:
            total += 1
        elif isinstance(v, int):
            total += v.bit_length() // 3 + 1
        elif isinstance(v, (list, tuple, set, frozenset)):
            total += 2
            stack.append(iter(v))
        elif isinstance(v, dict):
            total += 2
            stack.append(iter(v.items()))
        else:
            total += 1
        if total > limit:
            return total
    return total


def _width(value: Any, what: str) -> None:
    if isinstance(value, int) and value > MAX_TEXT:
        raise TemplateBoundError(f"{what} {value} is above the bound of {MAX_TEXT} characters")


_LONG_NUMBER = re.compile(r"\d{5,}")  # MAX_TEXT has 5 digits: a shorter number is below it
_PERCENT = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?[diouxXeEfFgGcrsa%]")


def _check_percent_format(fmt: str, args: Any) -> None:
    """``'%0Nd' % x``: refuse a width or precision above the bound before Python builds the text."""
    if "*" not in fmt and not _LONG_NUMBER.search(fmt):
        return  # no width can pass the bound (measured: the full parse tripled the cost of '%05d' % x)
    star = False
    for m in _PERCENT.finditer(fmt):
        for group in m.groups():
            if group == "*":
                star = True
            elif group:
                _width(int(group), "width")
    if star:
        for arg in args if isinstance(args, tuple) else (args,):
            _width(arg, "width")


def _check_brace_format(fmt: str, args: Any, kwargs: Mapping[str, Any]) -> None:
    """``'{:>N}'.format(x)``: the same for str.format (nested ``{:{}}`` widths come from the arguments)."""
    try:
        fields = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format raises the same error itself
    for _, _, spec, _ in fields:
        if not spec:
            continue
        if "{" in spec:
            for arg in (*args, *kwargs.values()):
                _width(arg, "width")
        for digits in re.findall(r"\d+", spec):
            _width(int(digits), "width")


def _check_str_method(text: str, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Refuse, before it runs, a str method call whose result would pass the bound."""
    if name in ("center", "ljust", "rjust", "zfill") and args:
        _width(args[0], "width")
    elif name == "expandtabs":
        tab = args[0] if args else kwargs.get("tabsize", 8)
        if isinstance(tab, int):
            _width(len(text) + text.count("\t") * tab, "result of")
    elif name == "replace" and len(args) >= 2 and isinstance(args[0], str) and isinstance(args[1], str):
        old, new = args[0], args[1]
        count = text.count(old) if old else len(text) + 1
        if len(args) > 2 and isinstance(args[2], int) and args[2] >= 0:
            count = min(count, args[2])
        _width(len(text) + count * (len(new) - len(old)), "result of")
    elif name == "translate" and args and isinstance(args[0], Mapping):
        longest = max((_size(v, MAX_TEXT) for v in args[0].values()), default=1)
        _width(len(text) * max(longest, 1), "result of")
    elif name in ("format", "format_map"):
        _check_brace_format(text, args, kwargs if name == "format" else (args[0] if args else {}))
    elif name == "join" and args and isinstance(args[0], list):
        _width(_joined_length(text, args[0]), "result of")


def _joined_length(separator: str, items: list[Any]) -> int:
    """Characters of ``separator.join(items)`` (items as they print, counted up to just past the bound)."""
    total = len(separator) * max(len(items) - 1, 0)
    for item in items:
        if total > MAX_TEXT:
            break
        total += _size(item, MAX_TEXT)
    return total


def _bounded_str_method(text: str, name: str, method: Any) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        if name == "join" and args:
            # Taken as a list once (through the budget when an iterator), so that the check can
            # count what join would build: a long separator between many items is a huge text.
            args = (list(args[0]), *args[1:])
        _check_str_method(text, name, args, kwargs)
        return method(*args, **kwargs)

    return call


_GROWING_STR_METHODS = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs", "replace", "translate",
                                  "format", "format_map", "join"})  # fmt: skip


def _check_filter(name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> None:
    """Refuse, before it runs, a filter call whose result would pass the bound (args: without context)."""
    first = args[0] if args else None
    rest = args[1:]
    if name == "center":
        _width(rest[0] if rest else kwargs.get("width"), "width")
    elif name == "indent":
        width = rest[0] if rest else kwargs.get("width", 4)
        per_line = len(width) if isinstance(width, str) else width
        if isinstance(per_line, int):
            lines = str(first).count("\n") + 1
            _width(len(str(first)) + lines * per_line, "result of")
    elif name == "format" and isinstance(first, str):
        _check_percent_format(first, kwargs or tuple(rest))
    elif name == "replace" and isinstance(first, str):
        _check_str_method(first, "replace", tuple(rest[:2]) + tuple(rest[2:3]), {})
    elif name == "join" and isinstance(first, list):
        separator = rest[0] if rest else kwargs.get("d", "")
        if isinstance(separator, str):
            _width(_joined_length(separator, first), "result of")
    elif name in ("batch", "slice"):
        _width(rest[0] if rest else kwargs.get("linecount", kwargs.get("slices")), "count")
    elif name == "wordwrap" and isinstance(first, str):
        wrap = rest[3] if len(rest) > 3 else kwargs.get("wrapstring")
        width = rest[0] if rest else kwargs.get("width", 79)
        if isinstance(wrap, str) and isinstance(width, int):
            _width(len(first) + (len(first) // max(width, 1) + 1) * len(wrap), "result of")


def _bounded_filter(name: str, func: Any) -> Any:
    passes = _PassArg.from_obj(func) is not None  # context / eval_context / environment first

    @functools.wraps(func)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        value_at = 1 if passes else 0
        if name == "join" and len(args) > value_at and not isinstance(args[value_at], jinja2.Undefined):
            # As for str.join: the items as a list, so that _check_filter can count the result.
            args = (*args[:value_at], list(args[value_at]), *args[value_at + 1 :])
        _check_filter(name, args[1:] if passes else args, kwargs)
        try:
            result = func(*args, **kwargs)
        # A filter given what it cannot take: Jinja checks some arguments with assert (truncate's
        # length), and some filters reach for what the value lacks (dictsort on text: .items).
        except (AssertionError, AttributeError) as exc:
            raise FilterError(f"{name} filter: {exc}") from None
        return budget.admit(result)

    return bounded


@pass_context
def _bounded_iter(context: jinja2.runtime.Context, iterable: Any) -> Any:
    """Wraps every ``{% for %}`` iterable: each iteration is a step, each item is checked."""
    budget = _budget()
    budget.step()
    if isinstance(iterable, jinja2.Undefined):
        return iterable
    return budget._items(iter(iterable))


_ITER_FILTER = "trapd_bounded_iter"  # not an identifier: no template can name it


class _BoundedCodeGenerator(CodeGenerator):
    """``a ~ b`` builds text outside the operators the sandbox intercepts: check what it built."""

    def visit_Concat(self, node: nodes.Concat, frame: Frame) -> None:
        self.write("environment.bounded_text(")
        super().visit_Concat(node, frame)
        self.write(")")


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox, bounded: time, steps and sizes, so a trap value cannot make a gigabyte string.

    ImmutableSandboxedEnvironment: no ``list.append`` or ``dict.update``, so containers only grow
    through the operations checked here.
    """

    intercepted_binops = frozenset({"+", "-", "*", "/", "//", "%", "**"})
    code_generator_class = _BoundedCodeGenerator

    def bounded_text(self, text: Any) -> Any:
        return _budget().admit(text)

    def call_binop(self, context: jinja2.runtime.Context, operator: str, left: Any, right: Any) -> Any:
        budget = _budget()
        budget.step()
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                sized = isinstance(seq, (str, bytes, list, tuple)) and isinstance(times, int)
                if sized and len(seq) * times > MAX_REPEAT:
                    raise TemplateBoundError(f"template builds more than {MAX_REPEAT} items with *")
                if sized and _size(seq, MAX_TEXT) * times > MAX_TEXT:
                    raise TemplateBoundError(f"template builds a value of more than {MAX_TEXT} characters")
        elif operator == "**":
            if isinstance(right, int) and abs(right) > MAX_EXPONENT:
                raise TemplateBoundError(f"exponent above {MAX_EXPONENT}")
            # A power of a big integer is computed in one uninterruptible call: refuse before it
            # what admit() would refuse after it (65,000 digits ** 256 took 26 s).
            big = isinstance(left, int) and isinstance(right, int) and right > 1
            if big and (left.bit_length() - 1) * right // 3 + 1 > MAX_TEXT:
                raise TemplateBoundError(f"template builds a number over its bound of {MAX_TEXT} digits")
        elif operator == "%" and isinstance(left, str):
            _check_percent_format(left, right)
        return budget.admit(self.binop_table[operator](left, right))

    def call(__self, __context: jinja2.runtime.Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        budget = _budget()
        budget.step()
        return budget.admit(super().call(__context, __obj, *args, **kwargs))

    def getattr(self, obj: Any, attribute: str) -> Any:
        value = super().getattr(obj, attribute)
        if isinstance(obj, str) and attribute in _GROWING_STR_METHODS and callable(value):
            return _bounded_str_method(obj, attribute, value)
        return value

    def getitem(self, obj: Any, argument: Any) -> Any:
        value = super().getitem(obj, argument)
        if isinstance(obj, str) and argument in _GROWING_STR_METHODS and callable(value):
            return _bounded_str_method(obj, argument, value)
        return value


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


def _checked_output(value: Any) -> Any:
    budget = _BUDGET.get()
    return value if budget is None else budget.admit(value)  # None: a plain template (see _PLAIN)


def _url_output(value: Any) -> str:
    budget = _BUDGET.get()
    return url_component(value if budget is None else budget.admit(value))


# Nodes a template may consist of and still render without a budget: it prints event values and
# text, and can neither loop, call, build nor grow anything. Most rules' templates are such
# (``"{{ source }}:{{ ifDescr }}"``). Measured for a 3-output template, same run, load ~8:
# 6-7 us a render before the bounds, 10-15 us with a budget, 6-8 us without one.
_PLAIN = (nodes.Template, nodes.Output, nodes.TemplateData, nodes.Name, nodes.Getattr, nodes.Getitem,
          nodes.Const)  # fmt: skip
_PLAIN_TEMPLATES: weakref.WeakSet[jinja2.Template] = weakref.WeakSet()


def make_environment(*, url: bool = False) -> SandboxedEnvironment:
    env = _Sandbox(
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=False,
        cache_size=0,  # every template is compiled once and kept by its rule
        finalize=_url_output if url else _checked_output,
    )
    env.filters.update(FILTERS)
    env.filters = {name: _bounded_filter(name, f) for name, f in env.filters.items()}
    env.filters[_ITER_FILTER] = _bounded_iter
    # lipsum(n) builds text in a Python loop no step can interrupt; rules have no use for it.
    env.globals.pop("lipsum", None)
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
    internal = _python_internal(ast)
    if internal is not None:
        name, lineno = internal
        raise TemplateRefused(
            f"{name!r}: names like __this__ are Python internals, which the sandbox refuses", lineno
        )
    refused = _static_refusals(env, ast)
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
    for loop in ast.find_all(nodes.For):
        loop.iter = nodes.Filter(loop.iter, _ITER_FILTER, [], [], None, None, lineno=loop.lineno)
    token = _FOLDING.set(refused)
    try:
        template = env.from_string(ast)
    finally:
        _FOLDING.reset(token)
    if refused:
        raise TemplateRefused(refused[0], ast.lineno)
    if all(isinstance(node, _PLAIN) for node in ast.find_all(nodes.Node)):
        _PLAIN_TEMPLATES.add(template)
    return template, TemplateInfo(variables, frozenset(fields), literal, path)


def _python_internal(ast: nodes.Template) -> tuple[str, int] | None:
    """The first ``x.__name__`` (or ``x['__name__']``, ``x | attr('__name__')``) and its line.

    The sandbox refuses them when the template renders, whatever the trap; an attempt to leave
    the sandbox is refused by ``trapd check`` instead of by every render. A dunder is never a
    key of what templates see (event fields, varbind names, decoded items).
    """
    for node in ast.find_all((nodes.Getattr, nodes.Getitem, nodes.Filter)):
        name: Any = None
        if isinstance(node, nodes.Getattr):
            name = node.attr
        elif isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const):
            name = node.arg.value
        elif isinstance(node, nodes.Filter) and node.name == "attr" and node.args:
            first = node.args[0]
            name = first.value if isinstance(first, nodes.Const) else None
        if isinstance(name, str) and name.startswith("__") and name.endswith("__"):
            return name, node.lineno
    return None


def _static_refusals(env: SandboxedEnvironment, ast: nodes.Template) -> list[str]:
    """What exceeds the bounds whatever the trap carries: constant loop nests, constant widths."""
    out: list[str] = []
    _loop_nest(ast, 1, out)
    ctx = nodes.EvalContext(env)
    token = _BUDGET.set(_Budget())
    try:
        for node in ast.find_all((nodes.BinExpr, nodes.Call)):
            try:
                if isinstance(node, nodes.BinExpr) and node.operator in _Sandbox.intercepted_binops:
                    left, right = node.left.as_const(ctx), node.right.as_const(ctx)
                    env.call_binop(None, node.operator, left, right)  # type: ignore[arg-type]
                elif isinstance(node, nodes.Call) and isinstance(node.node, nodes.Getattr):
                    text = node.node.node.as_const(ctx)
                    if isinstance(text, str) and node.node.attr in _GROWING_STR_METHODS:
                        args = tuple(a.as_const(ctx) for a in node.args)
                        kwargs = {k.key: k.value.as_const(ctx) for k in node.kwargs}
                        _check_str_method(text, node.node.attr, args, kwargs)
            except TemplateBoundError as exc:
                out.append(str(exc))
            except Exception:  # not constant, or an error the render reports itself
                continue
    finally:
        _BUDGET.reset(token)
    return out


def _loop_nest(node: nodes.Node, outer: int, out: list[str]) -> None:
    """Loops over constant ranges nested so deep that they would run past MAX_STEPS."""
    for child in node.iter_child_nodes():
        times = outer
        if isinstance(child, nodes.For):
            times = outer * _constant_length(child.iter)
            if times > MAX_STEPS:
                out.append(f"template loops {times} times, above its bound of {MAX_STEPS} steps")
                return
        _loop_nest(child, times, out)


def _constant_length(node: nodes.Node) -> int:
    if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name) and node.node.name == "range":
        try:
            return len(range(*(a.as_const() for a in node.args)))
        except Exception:  # not constant arguments
            return 1
    return 1


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
    if template in _PLAIN_TEMPLATES:
        return ENV.concat(template.root_render_func(template.new_context(context, shared=True)))
    token = _BUDGET.set(_Budget())
    try:
        out: list[str] = []
        size = 0
        for chunk in template.root_render_func(template.new_context(context, shared=True)):
            size += len(chunk)
            if size > MAX_TEXT:
                raise TemplateBoundError(f"template output longer than its bound of {MAX_TEXT} characters")
            out.append(chunk)
        return "".join(out)
    except RecursionError:
        raise TemplateBoundError("template recursion too deep (its bound)") from None
    except MemoryError:
        raise TemplateBoundError("template ran out of memory") from None
    finally:
        _BUDGET.reset(token)


_MISSING = object()
