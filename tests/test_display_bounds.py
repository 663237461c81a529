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
