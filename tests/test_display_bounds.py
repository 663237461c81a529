"""Display strings stay bounded whatever a switch sends: a BITS value of 8,000 octets is not 500 KB of text.

display.bits() named every set bit: an attacker who sends a long BITS value (entStateAlarm, any BITS
object of a loaded MIB) made each varbind's display 54 times the size of the datagram and cost
0.2 s of the event loop per 60 KB trap. Only the first set bits are listed, with a count of the rest.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from listen_harness import TrapdListen, needs_netsnmp, snmp_send

from trapd.display import BITS_SHOWN, bits
from trapd.mibs import MibConfig, MibResolver

ENT_STATE_ALARM_1 = "1.3.6.1.2.1.131.1.1.1.5.1"  # ENTITY-STATE-MIB::entStateAlarm.1, BITS


@needs_netsnmp
def test_a_long_bits_value_from_snmptrap_is_shown_bounded(trapd_listen: Callable[..., TrapdListen]) -> None:
    t = trapd_listen({"listener": {"communities": ["public"]}})
    value = bytes([0b00100100]) + b"\xff" * 7999
    args = ["-v", "2c", "-c", "public", t.target(), "", "1.3.6.1.4.1.99999.0.9"]
    snmp_send("snmptrap", *args, ENT_STATE_ALARM_1, "x", value.hex(), check=True)
    ev = t.wait_event(lambda e: "varbinds" in e, timeout=10)
    (vb,) = [v for v in ev["varbinds"] if str(v.get("oid", "")).startswith(ENT_STATE_ALARM_1)]
    shown = vb["display"]
    assert shown.startswith("critical(2) warning(5) 8 9 10"), shown[:200]
    assert len(shown) < 1024, len(shown)
    assert shown.endswith(f"(+{2 + 7999 * 8 - BITS_SHOWN} more bits set)"), shown[-80:]


def test_bits_display_is_bounded_in_size_and_time() -> None:
    r = MibResolver.load(MibConfig(dirs=()))
    syntax = r.syntax("ENTITY-STATE-MIB::entStateAlarm")
    assert syntax is not None
    assert bits(bytes([0b00100100]), syntax.labels) == "critical(2) warning(5)"
    assert bits(b"\x00" * 65000 + b"\x01", syntax.labels) == "520007"
    started = time.perf_counter()
    shown = bits(b"\xff" * 65000, syntax.labels)
    took = time.perf_counter() - started
    assert len(shown) < 1024 and shown.endswith(f"(+{65000 * 8 - BITS_SHOWN} more bits set)")
    assert took < 0.1, took  # it took 0.2 s (2 cores, load 3), of the event loop, per varbind


@pytest.mark.parametrize("count", [BITS_SHOWN - 1, BITS_SHOWN, BITS_SHOWN + 1])
def test_bits_lists_up_to_the_limit_exactly(count: int) -> None:
    value = int("1" * count + "0" * (8 * 16 - count), 2).to_bytes(16, "big")
    shown = bits(value, {})
    listed = [w for w in shown.split(" ") if w.isdigit()]
    assert len(listed) == min(count, BITS_SHOWN)
    assert ("more bits set" in shown) == (count > BITS_SHOWN)


@pytest.mark.parametrize(
    ("hint", "expected"),
    [
        ("1x:", lambda v: v.hex(":")),  # MacAddress
        ("1d.1d.1d.1d", lambda v: ".".join(map(str, v[:4])) + "".join(map(str, v[4:]))),  # InetAddressIPv4
        ("1d.", lambda v: ".".join(map(str, v))),
        ("2x:", None),
        ("*1x:", None),
    ],
)
def test_a_long_hinted_octet_string_costs_little(hint: str, expected: Callable[[bytes], str] | None) -> None:
    """hinted_octets formatted byte by byte in Python: 60 KB with MacAddress's hint took 90-110 ms
    of the event loop per varbind. The repeating tail of a hint is formatted by C now (same text),
    and a hint that cannot be is not applied past HINTED_MAX octets (the value shows as hex)."""
    from trapd.display import HINTED_MAX, hinted_octets

    value = bytes(range(256)) * 235  # 60,160 octets
    started = time.perf_counter()
    shown = hinted_octets(hint, value)
    took = time.perf_counter() - started
    assert took < 0.05, (hint, took)  # 90-110 ms before (2 cores, load 3)
    if expected is not None:
        assert shown == expected(value)
    else:
        assert shown is None and len(value) > HINTED_MAX  # the caller shows hex
    short = bytes(range(0, 250, 7))
    assert hinted_octets(hint, short) is not None
    if expected is not None:
        assert hinted_octets(hint, short) == expected(short)
