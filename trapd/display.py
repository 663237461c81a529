"""Display strings for varbind values: what a netops person expects to read.

Rules (the ``display`` field of a normalized varbind):

* INTEGER with named numbers: ``down(2)``; a number the MIB does not name: ``9``.
* Integer DISPLAY-HINT ``d-N`` puts a decimal point N digits from the right
  (``d-2``: 1234 -> ``12.34``); ``x``/``o``/``b`` give hex/octal/binary.
* OctetString: with a DISPLAY-HINT other than plain text (MacAddress ``1x:``,
  DateAndTime, InetAddress ``1d.1d.1d.1d``...) formatted per RFC 2579 3.1
  (a hint whose repeating part is not one octet of x or d: values up to
  HINTED_MAX octets, longer ones as hex); otherwise text when it decodes
  as UTF-8 and every character is printable (trailing NULs that some
  agents send are dropped), else lower-case hex octets joined by ``:``
  (``00:1b:2c``). Empty: ``""``.
* BITS: the names of the set bits, ``linkUp(0) linkDown(3)`` (the first 64, then a count).
* IpAddress: dotted quad. Counter32, Gauge32, Counter64: decimal.
* TimeTicks (hundredths of a second): ``0:02:03.45``, ``1 day, 2:03:04.05``,
  ``3 days, 0:00:00.00``.
* OBJECT IDENTIFIER: the MIB name when known (``IF-MIB::linkDown``,
  ``IF-MIB::ifIndex.17``), else dotted.
* Opaque: hex like an unprintable OctetString. Null: ``""``. The exception
  values print their name (``noSuchObject``).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import lru_cache

from trapd.listener.raw import RawValue, SnmpType
from trapd.mibs import MibResolver, Syntax

_TEXT_HINTS = frozenset({"255a", "255t", "1024a", "1024t"})
_ALLOWED_CONTROLS = frozenset("\t\r\n")


def timeticks(ticks: int) -> str:
    days, rest = divmod(ticks, 8_640_000)
    hours, rest = divmod(rest, 360_000)
    minutes, rest = divmod(rest, 6_000)
    seconds, centis = divmod(rest, 100)
    clock = f"{hours}:{minutes:02d}:{seconds:02d}.{centis:02d}"
    if days:
        return f"{days} day{'s' if days != 1 else ''}, {clock}"
    return clock


def hex_octets(data: bytes) -> str:
    return data.hex(":")


def octets(data: bytes) -> str:
    """Text when printable UTF-8, else ``aa:bb:cc`` hex."""
    if not data:
        return ""
    text_bytes = data.rstrip(b"\x00") if data[-1] == 0 else data
    try:
        text = text_bytes.decode("utf-8")
    except UnicodeDecodeError:
        return data.hex(":")
    if text.isprintable() or all(c.isprintable() or c in _ALLOWED_CONTROLS for c in text):
        return text
    return data.hex(":")


# (repeat, length, format, separator, terminator)
_Spec = tuple[bool, int, str, str, str]


@lru_cache(maxsize=512)
def parse_octet_hint(hint: str) -> tuple[_Spec, ...] | None:
    """An RFC 2579 octet-string DISPLAY-HINT as specs; None if malformed."""
    specs: list[_Spec] = []
    i, n = 0, len(hint)
    while i < n:
        star = hint[i] == "*"
        if star:
            i += 1
        j = i
        while j < n and hint[j].isdigit():
            j += 1
        if j == i or j >= n:
            return None
        length = int(hint[i:j])
        fmt = hint[j]
        if fmt not in "xdoat" or length == 0:
            return None
        i = j + 1
        sep = term = ""
        if i < n and not hint[i].isdigit() and hint[i] != "*":
            sep = hint[i]
            i += 1
            if star and i < n and not hint[i].isdigit() and hint[i] != "*":
                term = hint[i]
                i += 1
        specs.append((star, length, fmt, sep, term))
    return tuple(specs) or None


# A switch decides how long a value is. Formatting it octet by octet in Python costs ~1.7 us an
# octet (60 KB with MacAddress's "1x:": 90-110 ms of the event loop, per varbind). The repeating
# last spec of the common hints (MacAddress, InetAddress, DateAndTime: one octet, x or d) is done
# by bytes.hex / str.join (~2 ms for 60 KB); other hints are applied to values up to this long.
HINTED_MAX = 1024


_DECIMAL = tuple(str(i) for i in range(256))


def _fast_tail(spec: _Spec) -> Callable[[bytes], str] | None:
    """C-speed formatting of the octets a hint's repeating last spec covers, when it is that simple."""
    star, length, fmt, sep, _term = spec
    if star or length != 1:
        return None
    if fmt == "x":
        return (lambda b: b.hex(sep)) if sep else bytes.hex
    if fmt == "d":
        return lambda b: sep.join(map(_DECIMAL.__getitem__, b))  # str(int) per octet: 10x slower
    return None


def hinted_octets(hint: str, data: bytes) -> str | None:
    """Format ``data`` per an octet-string DISPLAY-HINT; None if the hint does not fit (or is too costly)."""
    specs = parse_octet_hint(hint)
    if specs is None:
        return None
    last = len(specs) - 1
    tail = _fast_tail(specs[last])
    if tail is None and len(data) > HINTED_MAX:
        return None
    out: list[str] = []
    pos, n, k = 0, len(data), 0
    while pos < n:
        if k >= last and tail is not None:
            out.append(tail(data[pos:]))
            break
        star, length, fmt, sep, term = specs[min(k, last)]
        k += 1
        reps = 1
        if star:
            reps = data[pos]
            pos += 1
        for r in range(reps):
            if pos >= n:
                break
            chunk = data[pos : pos + length]
            pos += len(chunk)
            if fmt == "x":
                out.append(chunk.hex())
            elif fmt == "d":
                out.append(str(int.from_bytes(chunk, "big")))
            elif fmt == "o":
                out.append(format(int.from_bytes(chunk, "big"), "o"))
            else:
                out.append(chunk.decode("ascii" if fmt == "a" else "utf-8", "replace"))
            if pos < n:
                if star and term and r == reps - 1:
                    out.append(term)
                elif sep:
                    out.append(sep)
    return "".join(out)


def hinted_integer(hint: str, value: int) -> str | None:
    if hint == "d":
        return str(value)
    if hint.startswith("d-") and hint[2:].isdigit():
        places = int(hint[2:])
        if places == 0:
            return str(value)
        sign = "-" if value < 0 else ""
        digits = str(abs(value)).rjust(places + 1, "0")
        return f"{sign}{digits[:-places]}.{digits[-places:]}"
    if hint == "x":
        return format(value, "x")
    if hint == "o":
        return format(value, "o")
    if hint == "b":
        return format(value, "b")
    return None


# Set bits a BITS display names; the rest is counted. A switch decides how long a value is: naming
# every bit of a 60 KB value made a 3.2 MB display and took 0.2 s of the event loop per varbind.
BITS_SHOWN = 64


def bits(data: bytes, labels: dict[int, str]) -> str:
    """``critical(2) warning(5)``: the set bits, named where the MIB names them, the first BITS_SHOWN."""
    names: list[str] = []
    for i, byte in enumerate(data):
        if not byte:
            continue
        for j in range(8):
            if byte & (0x80 >> j):
                if len(names) == BITS_SHOWN:
                    more = int.from_bytes(data, "big").bit_count() - BITS_SHOWN
                    return " ".join(names) + f" (+{more} more bits set)"
                bit = i * 8 + j
                label = labels.get(bit)
                names.append(f"{label}({bit})" if label else str(bit))
    return " ".join(names)


def display(kind: SnmpType, value: RawValue, syntax: Syntax | None, resolver: MibResolver) -> str:
    """The display string of one varbind value (rules in the module docstring)."""
    if isinstance(value, int):
        if syntax is not None and kind in ("Integer32", "Gauge32"):
            # Only for the types an enumeration or integer hint can have: a
            # Counter or TimeTicks sent for an enum object is shown as sent.
            if syntax.labels:
                label = syntax.labels.get(value)
                return f"{label}({value})" if label is not None else str(value)
            if syntax.hint:
                shown = hinted_integer(syntax.hint, value)
                if shown is not None:
                    return shown
        return timeticks(value) if kind == "TimeTicks" else str(value)
    if isinstance(value, bytes):
        if syntax is not None and kind == "OctetString":
            if syntax.base == "Bits" and syntax.labels:
                return bits(value, syntax.labels)
            if syntax.hint and syntax.hint not in _TEXT_HINTS:
                try:
                    shown = hinted_octets(syntax.hint, value)
                except (ValueError, IndexError):
                    shown = None
                if shown is not None:
                    return shown
        return octets(value) if kind == "OctetString" else value.hex(":")
    if isinstance(value, tuple):
        return resolver.name_of(value)
    if isinstance(value, str):
        return value
    return "" if kind == "Null" else str(kind)
