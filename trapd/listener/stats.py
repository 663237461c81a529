"""Receive counters: what came in, what was dropped and why, what the kernel lost.

The counters are plain ints bumped on the receive path (no locks: the
listener runs on one event loop thread). Drop reasons are stable slugs used
as metric labels; a finer ``detail`` (for example the fast path's
``Rejected.reason``) is kept as a second label so that a dashboard can show
"malformed" as one line and still let an operator see *which* malformation.

Drops are logged, but never per packet: :class:`DropLog` writes at most one
line per reason per interval, with the count since the last line.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Stable drop reasons (metric label values). Keep in sync with the README.
DROP_REASONS = (
    "source-not-allowed",
    "unknown-community",
    "malformed",
    "unknown-user",
    "unknown-engine-id",
    "wrong-digest",
    "decryption-error",
    "unsupported-security-level",
    "not-in-time-window",
    "unsupported-pdu",
    "rate-limited",
)


@dataclass(frozen=True, slots=True)
class KernelDrops:
    """UDP datagrams the kernel dropped because a receive buffer was full (whole host)."""

    udp: int
    udp6: int

    @property
    def total(self) -> int:
        return self.udp + self.udp6


def _read_rcvbuf_errors(path: Path, prefix: str, field_name: str) -> int:
    # /proc/net/snmp has a header line then a value line per protocol;
    # /proc/net/snmp6 has "Name value" lines.
    try:
        text = path.read_text()
    except OSError:
        return 0
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith(field_name + " ") or line.startswith(field_name + "\t"):
            return int(line.split()[1])
        if line.startswith(prefix) and i + 1 < len(lines) and lines[i + 1].startswith(prefix):
            names = line.split()[1:]
            values = lines[i + 1].split()[1:]
            if field_name in names:
                return int(values[names.index(field_name)])
    return 0


def read_kernel_drops(proc: Path = Path("/proc/net")) -> KernelDrops:
    """Udp RcvbufErrors (IPv4) and Udp6RcvbufErrors (IPv6) from /proc: host-wide, monotonic."""
    return KernelDrops(
        udp=_read_rcvbuf_errors(proc / "snmp", "Udp:", "RcvbufErrors"),
        udp6=_read_rcvbuf_errors(proc / "snmp6", "Udp6", "Udp6RcvbufErrors"),
    )


@dataclass
class ListenerStats:
    """Counters of one listener. Read them any time; they only grow.

    ``received``: datagrams that became a notification, by version
    ("v1", "v2c", "v3"). ``dropped``: by reason (see :data:`DROP_REASONS`).
    ``dropped_detail``: by (reason, detail) where a finer cause is known.
    ``datagrams``: every datagram read from a socket. ``inform_responses``:
    Response-PDUs sent for v1/v2c informs (v3 ones are sent by pysnmp and
    counted in ``v3_replies`` together with reports). ``inform_too_big``: of
    those, Responses that said tooBig without the varbinds: the echo of the
    inform's varbinds would not fit the sender's msgMaxSize or the largest
    datagram (RFC 3416 4.2.7). ``v3_discovery``: engine
    ID discovery probes and time synchronizations (RFC 3414 section 4: an
    authenticated message with engineBoots and engineTime 0) answered (normal
    before a v3 inform; not a drop).
    """

    datagrams: int = 0
    received: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    dropped_detail: Counter[tuple[str, str]] = field(default_factory=Counter)
    inform_responses: int = 0
    inform_too_big: int = 0
    v3_replies: int = 0
    v3_discovery: int = 0
    v3_engine_probes: int = 0  # of v3_discovery: engine-ID probes (usmStatsUnknownEngineIDs reports)
    v3_time_syncs: int = 0  # of v3_discovery: time synchronizations (usmStatsNotInTimeWindows reports)
    # Sender engines' time notions and learned engines pushed out at the bounds (timeliness.Timelines).
    v3_engines_pushed_out: int = 0
    send_errors: int = 0
    callback_errors: int = 0
    # Reading paused for a slice in a storm to give the dispatcher its share (udp.RECEIVE_SLICE).
    receive_pauses: int = 0
    # With service.workers > 1: the usmStats counts of the unit's other workers (usmStats column ->
    # count), as the supervisor last summed them; added to this worker's in the reports it sends
    # (reports.usm_stats_value), so that a sender reads the unit's count, not one worker's.
    usm_elsewhere: dict[int, int] = field(default_factory=dict)
    started_at: float = field(default_factory=time.time)

    def drop(self, reason: str, detail: str | None = None) -> None:
        self.dropped[reason] += 1
        if detail:
            self.dropped_detail[(reason, detail)] += 1

    @property
    def received_total(self) -> int:
        return sum(self.received.values())

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())

    @staticmethod
    def kernel_drops() -> KernelDrops:
        """The host's UDP receive-buffer drop counters (not per socket: the kernel has no such count)."""
        return read_kernel_drops()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready snapshot (what ``trapd listen --stats`` prints)."""
        kd = self.kernel_drops()
        return {
            "datagrams": self.datagrams,
            "received": dict(self.received),
            "dropped": dict(self.dropped),
            "dropped_detail": {f"{r}/{d}": n for (r, d), n in self.dropped_detail.items()},
            "inform_responses": self.inform_responses,
            "inform_too_big": self.inform_too_big,
            "v3_replies": self.v3_replies,
            "v3_discovery": self.v3_discovery,
            "v3_engine_probes": self.v3_engine_probes,
            "v3_time_syncs": self.v3_time_syncs,
            "v3_engines_pushed_out": self.v3_engines_pushed_out,
            "send_errors": self.send_errors,
            "callback_errors": self.callback_errors,
            "receive_pauses": self.receive_pauses,
            "kernel_rcvbuf_errors": {"udp": kd.udp, "udp6": kd.udp6},
        }


# A v3 drop line names who failed: (user, engine ID) as sent, each cut to what USM allows
# (32 octets of user name, 32 of engine ID) so a hostile header cannot make the line long.
V3Who = tuple[bytes, bytes]
_WHO_MAX = 32
# At most this many (reason, who) keys are tracked at once; beyond, drops are counted under the
# reason alone (a flood of made-up user names must not grow the table).
DROP_LOG_KEYS = 256


def _who_fields(who: V3Who) -> dict[str, str]:
    user, engine_id = who
    return {
        "user": user[:_WHO_MAX].decode("utf-8", "backslashreplace"),
        "engine_id": engine_id[:_WHO_MAX].hex(),
    }


class DropLog:
    """Rate-limited drop logging: at most one line per reason (and v3 user/engine) per ``interval`` seconds.

    ``note(reason, detail, source, who)`` is called for every drop and costs a
    dict update; a line is written when the key's interval has passed,
    carrying how many drops of that key happened since its last line and the
    last source seen (enough to find a misconfigured switch, cheap in a
    storm). For a v3 message ``who`` is its (user name, engine ID): the line
    names them (never a key), and each (reason, user, engine) pair has its own
    interval, so a second bad user shows up within the same interval as the
    first. At most :data:`DROP_LOG_KEYS` pairs are tracked; beyond, a drop is
    counted under its reason alone.
    """

    def __init__(
        self,
        emit: Callable[[str, dict[str, Any]], None],
        interval: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
        max_keys: int = DROP_LOG_KEYS,
    ) -> None:
        self._emit = emit
        self._interval = interval
        self._clock = clock
        self._max_keys = max_keys
        self._pending: dict[tuple[str, V3Who | None], int] = {}
        self._last: dict[tuple[str, V3Who | None], tuple[str | None, str | None]] = {}
        self._next_at: dict[tuple[str, V3Who | None], float] = {}
        # With the table full, no key can be forgotten before this (the earliest interval end seen
        # by the last look): a flood of made-up user names does not scan the table per drop
        # (12.7 -> 1.4 us a drop with 256 keys, load 1.6; intervals only grow, so nothing is missed).
        self._full_until = 0.0

    def note(self, reason: str, detail: str | None, source: str | None, who: V3Who | None = None) -> None:
        if who is not None:
            # Keyed by what the line shows: a header's user name or engine ID may be tens of KB.
            who = (who[0][:_WHO_MAX], who[1][:_WHO_MAX])
        key = (reason, who)
        now = self._clock()
        if who is not None and key not in self._next_at and len(self._next_at) >= self._max_keys:
            if now >= self._full_until:
                self._forget_quiet_keys(now)
                if len(self._next_at) >= self._max_keys:
                    self._full_until = min(self._next_at.values())
            if len(self._next_at) >= self._max_keys:
                key = (reason, None)
        self._pending[key] = self._pending.get(key, 0) + 1
        self._last[key] = (detail, source)
        if now >= self._next_at.get(key, 0.0):
            self._flush_one(key, now)

    def flush(self) -> None:
        """Write every pending count now (called periodically and at shutdown)."""
        now = self._clock()
        for key in list(self._pending):
            if now >= self._next_at.get(key, 0.0):
                self._flush_one(key, now)
        self._forget_quiet_keys(now)

    def flush_all(self) -> None:
        now = self._clock()
        for key in list(self._pending):
            self._flush_one(key, now)

    def _forget_quiet_keys(self, now: float | None = None) -> None:
        """Drop the interval of keys with nothing pending whose interval has passed (they start afresh)."""
        now = self._clock() if now is None else now
        for key in [k for k, at in self._next_at.items() if at <= now and k not in self._pending]:
            del self._next_at[key]
            self._last.pop(key, None)

    def _flush_one(self, key: tuple[str, V3Who | None], now: float) -> None:
        count = self._pending.pop(key, 0)
        if not count:
            return
        reason, who = key
        detail, source = self._last.get(key, (None, None))
        fields: dict[str, Any] = {"reason": reason, "count": count, "last_source": source}
        if detail:
            fields["last_detail"] = detail
        if who is not None:
            fields.update(_who_fields(who))
        self._emit("snmp notification dropped", fields)
        self._next_at[key] = now + self._interval
