"""trapd's own SNMPv3 engine: its engine ID, snmpEngineBoots and snmpEngineTime.

v3 informs are addressed to trapd's engine, so it must be stable
(:func:`default_engine_id`), its boots must grow on every restart and be kept
with trapd's state (:func:`make_engine`), and with ``service.workers`` > 1
every worker must answer with the same boots and time (:class:`EngineClock`,
counted once by the supervisor and pinned in each worker).
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trapd.statedir import leave_to_state_owner, make_private_dir


def default_engine_id() -> bytes:
    """A stable engine ID for this host (RFC 3411 format 5, pysnmp's enterprise 20408).

    Derived from /etc/machine-id (or the host name) so that it survives
    restarts: v3 inform senders cache it, and a changing ID would make them
    rediscover it (or fail) after every restart.
    """
    try:
        with open("/etc/machine-id", "rb") as f:
            seed = f.read().strip()
    except OSError:
        seed = b""
    seed = seed or socket.gethostname().encode()
    return bytes.fromhex("80004fb805") + hashlib.sha256(b"trapd-engine:" + seed).digest()[:8]


@dataclass(frozen=True, slots=True)
class EngineClock:
    """snmpEngineBoots and the wall-clock second snmpEngineTime counts from, for one engine ID.

    With ``service.workers`` > 1 several processes answer for one engine: a v3
    inform is acknowledged by whichever worker the kernel hands it to, and the
    sender checks boots and time against what it learned before (RFC 3414
    3.2.7). So the supervisor takes the next boots value once
    (:func:`advance_engine_clock`) and every worker pins its engine to it
    (:func:`pin_engine_clock`) instead of counting up the boots file again.
    """

    engine_id: bytes
    boots: int
    # time.monotonic() when the boots value was taken; snmpEngineTime = monotonic now - started.
    # CLOCK_MONOTONIC is the host's, the same in every process, and steps of the wall clock
    # (NTP, an admin) do not move it: engineTime only grows (RFC 3414 2.2.2).
    started: float


# Set in a worker process before its V3Receiver is built; None: pysnmp's own boots file handling.
_pinned_clock: EngineClock | None = None


def engine_boots_file(engine_id: bytes, state_dir: Path) -> Path:
    """Where pysnmp keeps snmpEngineBoots for ``engine_id`` below ``state_dir`` (see :func:`make_engine`)."""
    from pysnmp.proto import rfc1902

    name = str(rfc1902.OctetString(engine_id).prettyPrint())
    return state_dir / "__pysnmp" / name / "boots"


def advance_engine_clock(engine_id: bytes, state_dir: Path, now: float | None = None) -> EngineClock:
    """Count snmpEngineBoots up by one in its file, as a starting pysnmp engine would, and return it.

    The same file and format as pysnmp's, so a later single-process trapd
    continues the sequence. Written to a temporary file and renamed: a crash
    leaves the old value or the new one.
    """
    path = engine_boots_file(engine_id, state_dir)
    make_private_dir(path.parent)
    try:
        boots = int(path.read_text().strip()) + 1
    except (OSError, ValueError):
        boots = 1
    boots = max(1, min(boots, 2147483647))  # RFC 3414: 2^31-1 is the last value, kept for good
    tmp = path.with_name(f".boots.{os.getpid()}")
    tmp.write_text(str(boots))
    os.replace(tmp, path)
    leave_to_state_owner(state_dir / "__pysnmp", state_dir)
    return EngineClock(engine_id, boots, time.monotonic() if now is None else now)


def pin_engine_clock(clock: EngineClock | None) -> None:
    """Make every engine built from now on in this process use ``clock`` (None: undo)."""
    global _pinned_clock
    _pinned_clock = clock


def make_engine(engine_id: bytes, state_dir: Path | None) -> Any:
    """pysnmp's SnmpEngine, keeping its snmpEngineBoots file under ``state_dir``.

    snmpEngineBoots must grow on every restart (RFC 3414 2.2.2: v3 inform
    senders check it against replays). pysnmp stores it in
    ``<tempdir>/__pysnmp/<engine ID>/boots``: as root in world-writable /tmp
    by default, and lost with systemd's PrivateTmp. With a ``state_dir`` the
    file lives with trapd's other state instead.
    """
    import tempfile

    from pysnmp.entity.engine import SnmpEngine
    from pysnmp.proto import rfc1902

    clock = _pinned_clock
    if clock is not None and clock.engine_id == engine_id:
        return _engine_on_clock(clock)
    saved = tempfile.tempdir
    if state_dir is not None:
        tempfile.tempdir = str(state_dir)
    try:
        engine = SnmpEngine(snmpEngineID=rfc1902.OctetString(engine_id))
    finally:
        tempfile.tempdir = saved
    if state_dir is not None:
        leave_to_state_owner(state_dir / "__pysnmp", state_dir)
    _count_engine_time_from(engine, time.monotonic())
    return engine


def _engine_on_clock(clock: EngineClock) -> Any:
    """A pysnmp engine with ``clock``'s engine ID, boots and time origin, and no boots file of its own.

    pysnmp counts the boots file up whenever it is given an engine ID at
    construction; built without one it touches no file, and the three MIB
    scalars are then set here the way its constructor would have.
    """
    from pysnmp.entity.engine import SnmpEngine

    engine = SnmpEngine()
    builder = engine.get_mib_builder()
    (eid, boots) = builder.import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineID", "snmpEngineBoots")
    eid.syntax = eid.syntax.clone(clock.engine_id)
    engine.snmpEngineID = eid.syntax
    boots.syntax = boots.syntax.clone(clock.boots)
    _count_engine_time_from(engine, clock.started)
    return engine


def _count_engine_time_from(engine: Any, origin: float) -> None:
    """Make ``engine``'s snmpEngineTime the seconds since ``origin`` on the monotonic clock.

    pysnmp's snmpEngineTime stores its origin (a wall-clock second) and reads (``clone()``
    without a value, as pysnmp's USM and trapd read it) as ``time.time()`` - origin: an NTP
    step back took engineTime back, and one past the origin made the read fail and give the
    origin itself (1.8e9, frozen until the wall clock caught up). The same read, on
    ``time.monotonic()``.
    """
    (etime,) = engine.get_mib_builder().import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineTime")
    etime.syntax = _monotonic_engine_time(type(etime.syntax))(int(origin))


_MONOTONIC_TYPES: dict[type, type] = {}


def _monotonic_engine_time(base: type) -> type:
    """A subclass of pysnmp's snmpEngineTime syntax whose read counts on the monotonic clock."""
    made = _MONOTONIC_TYPES.get(base)
    if made is None:

        class MonotonicEngineTime(base):  # type: ignore[misc]
            def clone(self, *args: Any, **kwargs: Any) -> Any:
                if not args:  # a read: elapsed seconds (0 .. 2^31-1, the type's range)
                    args = (min(max(int(time.monotonic()) - int(self), 0), 2147483647),)
                return super().clone(*args, **kwargs)

        made = _MONOTONIC_TYPES[base] = MonotonicEngineTime
    return made
