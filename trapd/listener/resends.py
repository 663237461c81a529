"""Informs sent again: the same inform, resent because its Response had not come back yet.

A sender resends an inform until it gets a Response (net-snmp's snmpinform after 1 s,
5 times; Cisco IOS after 15 or 30 s, 3 times by default). trapd answers an inform only
once what its rules planned is journaled, so a resend can arrive while that commit is
still being waited for, or after the Response was lost. Taken as a new notification,
each copy ran its rules again: a lease deleted, a webhook called once per copy.

A copy is known by what a resend keeps: the sender's address and port (a sender resends
from the socket it sent from), the SNMP version, the security identity (community, or
v3 user, engine and context), the PDU's request-id and its variable bindings. v2c resends
are the same bytes; net-snmp re-encodes a v3 resend (new msgID and time), so copies are
compared after decoding. Another inform with the same content has another request-id and
is another notification.

A copy is never run: it gets the Response of the first, at once when that one was
answered, else together with it. If the first could not be journaled (a full backlog,
the database unavailable), it is forgotten, so the next copy is taken in as new: a
resend is how an inform gets through once the journal is back.

The memory is bounded: at most :data:`CAPACITY` informs for :data:`WINDOW` seconds,
oldest forgotten first, and at most :data:`MAX_WAITING` copies answered with one, all the
copies waiting together holding at most :data:`MAX_WAITING_BYTES` (by :func:`copy_cost`). Of the
variable bindings only a 64-bit hash is kept (Python's ``hash``, keyed per process by
``PYTHONHASHSEED``'s random default, so a sender cannot aim for a collision), not the values.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Hashable

from trapd.listener.raw import RawNotification

# Informs remembered. An entry is about 300 bytes: 16,384 hold 5 MB at most.
CAPACITY = 16_384
# Seconds an answered inform is remembered: longer than the resend schedules of the
# senders above (Cisco's 3 x 30 s is the longest default met), short enough that memory
# holds any rate of informs a switch fleet sends.
WINDOW = 300.0
# Copies that wait for the first one's commit; more are dropped unanswered (the sender
# resends them again, and by then the first is answered).
MAX_WAITING = 16
# ... and what all the waiting copies hold together: each keeps its own decoded message until
# it is answered (up to ~64 KB), and informs waiting for a slow journal, each with its resends,
# held up to 17 times the submit queue's 32 MiB with the count bound alone. A copy past this
# is left unanswered, like one past MAX_WAITING.
MAX_WAITING_BYTES = 8 * 1024 * 1024

Ack = Callable[[], None]


def copy_cost(raw: RawNotification) -> int:
    """Bytes a waiting copy holds, estimated: its values twice (decoded, and the datagram they
    were read from) and a fixed part per message and per variable binding."""
    size = 400
    for _, _, value in raw.varbinds:
        size += 100 + (2 * len(value) if isinstance(value, bytes | str) else 0)
    return size


def resend_key(raw: RawNotification) -> Hashable | None:
    """What every copy of one inform has in common; None for a trap or an inform without a request-id."""
    if raw.kind != "inform" or raw.request_id is None:
        return None
    return (
        raw.source,
        raw.source_port,
        raw.version,
        raw.security,
        raw.request_id,
        hash(tuple(raw.varbinds)),
    )


class PendingInform:
    """The acknowledgement of an inform whose outcome is being journaled.

    Called once it is journaled: answers the inform and every copy that came meanwhile.
    :meth:`abandon` when it could not be: the inform stays unanswered, and is forgotten.
    """

    __slots__ = ("_ack", "_key", "_memory", "waiting", "waiting_bytes")

    def __init__(self, memory: InformResends | None, key: Hashable | None, ack: Ack) -> None:
        self._memory = memory
        self._key = key
        self._ack = ack
        self.waiting: list[Ack] = []
        self.waiting_bytes = 0  # of its copies, counted in the memory's waiting_bytes

    def __call__(self) -> None:
        if self._memory is not None:
            self._memory._answered(self._key, self)
        self._ack()
        for ack in self.waiting:
            ack()
        self._let_go()

    def abandon(self) -> None:
        if self._memory is not None:
            self._memory._forget(self._key, self)
        self._let_go()

    def _let_go(self) -> None:
        self.waiting = []
        if self._memory is not None:
            self._memory.waiting_bytes -= self.waiting_bytes
        self.waiting_bytes = 0


class InformResends:
    """The informs taken in lately, to tell their resent copies from new notifications."""

    def __init__(
        self,
        capacity: int = CAPACITY,
        window: float = WINDOW,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.capacity = capacity
        self.window = window
        self._clock = clock
        self.waiting_bytes = 0  # held by copies waiting for their first (see MAX_WAITING_BYTES)
        # key -> (taken at, PendingInform while its commit is awaited, None once answered)
        self._entries: OrderedDict[Hashable, tuple[float, PendingInform | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def answer_copy(self, raw: RawNotification) -> bool | None:
        """For a copy of an inform taken in: True, answer it now (the first was answered); False,
        it is answered with the first (nothing to do now). None: not a copy, take it in."""
        key = resend_key(raw)
        if key is None or raw.ack is None:
            return None
        entry = self._entries.get(key)
        if entry is None:
            return None
        taken_at, pending = entry
        if self._clock() - taken_at > self.window:
            del self._entries[key]
            return None
        if pending is None:
            return True
        cost = copy_cost(raw)
        if len(pending.waiting) < MAX_WAITING and self.waiting_bytes + cost <= MAX_WAITING_BYTES:
            pending.waiting.append(raw.ack)
            pending.waiting_bytes += cost
            self.waiting_bytes += cost
        return False

    def take(self, raw: RawNotification, ack: Ack) -> PendingInform:
        """``raw``'s acknowledgement, to call once its outcome is journaled; its copies wait for it."""
        key = resend_key(raw)
        if key is None:
            return PendingInform(None, None, ack)
        pending = PendingInform(self, key, ack)
        self._entries[key] = (self._clock(), pending)
        self._entries.move_to_end(key)
        self._expire()
        return pending

    def _answered(self, key: Hashable, pending: PendingInform) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry[1] is pending:
            self._entries[key] = (entry[0], None)

    def _forget(self, key: Hashable, pending: PendingInform) -> None:
        entry = self._entries.get(key)
        if entry is not None and entry[1] is pending:
            del self._entries[key]

    def _expire(self) -> None:
        entries = self._entries
        while len(entries) > self.capacity:
            entries.popitem(last=False)
        oldest = self._clock() - self.window
        while entries:
            key, (taken_at, pending) = next(iter(entries.items()))
            if taken_at >= oldest or pending is not None:
                break
            del entries[key]
