"""SNMPv3 receiving: one header walker, one USM implementation, two paths.

::

    header.py      parse_header: the v3 message header, read once per datagram
    keys.py        password-to-key, localization, privacy keys, the HMAC check
    timeliness.py  each sender engine's time window and replay memory
    scoped.py      the ScopedPDU, decrypted and read with trapd's decoder (both paths' one reader)
    usm.py         UsmFastPath: traps from bound sender engines, without pysnmp
    adapters.py    pysnmp's engine behind trapd's sockets (dispatcher, USM, MP model)
    clock.py       trapd's own engine ID, snmpEngineBoots and snmpEngineTime
    receiver.py    V3Receiver: everything else, through pysnmp's engine
    path.py        V3Path: what the listener calls; the fast path, then the gate, then pysnmp

Modules importing pysnmp do so inside functions: importing this package is cheap.
"""

from trapd.listener.v3.clock import (
    EngineClock,
    advance_engine_clock,
    default_engine_id,
    engine_boots_file,
    pin_engine_clock,
)
from trapd.listener.v3.errors import Refused
from trapd.listener.v3.header import HeaderError, V3Header, parse_header
from trapd.listener.v3.receiver import V3Receiver

__all__ = [
    "EngineClock",
    "HeaderError",
    "Refused",
    "V3Header",
    "V3Receiver",
    "advance_engine_clock",
    "default_engine_id",
    "engine_boots_file",
    "parse_header",
    "pin_engine_clock",
]
