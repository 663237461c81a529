"""The listener's SNMPv3 receive path: one header read, the fast USM path, then pysnmp.

::

    parse_header          once per datagram (trapd.listener.v3.header); malformed: dropped
    UsmFastPath           traps from users' bound (or learned) sender engines
    V3Receiver            what the fast path declines: informs, discovery, unknown users...

The listener builds one :class:`V3Path` per configuration (:meth:`V3Path.build`)
and hands it every v3 datagram; a reload builds a new one that keeps the sender
engines' time notions of the old one.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trapd.listener.config import V3User
from trapd.listener.stats import ListenerStats, V3Who
from trapd.listener.v3.adapters import SendTo
from trapd.listener.v3.errors import Refused
from trapd.listener.v3.header import HeaderError, parse_header
from trapd.listener.v3.keys import MasterKeys
from trapd.listener.v3.receiver import OnDrop, OnNotification, V3Receiver
from trapd.listener.v3.replay import ReplayMemory
from trapd.listener.v3.usm import UsmFastPath

__all__ = ["V3Path"]


class V3Path:
    """Every v3 datagram of one listener: the fast path for bound senders' traps, pysnmp for the rest.

    ``deliver(raw)`` is called for every accepted notification (the
    listener's hand-off; for an inform it may take the acknowledgement over);
    ``on_drop(reason, detail, source, who)`` for every drop, after ``stats``
    counted it. ``fast`` is None when the fast path is switched off (benches
    measuring pysnmp alone).
    """

    def __init__(
        self,
        receiver: V3Receiver,
        fast: UsmFastPath | None,
        deliver: OnNotification,
        stats: ListenerStats,
        on_drop: OnDrop,
    ) -> None:
        self.receiver = receiver
        self.fast = fast
        self._deliver = deliver
        self._stats = stats
        self._on_drop = on_drop

    @classmethod
    def build(
        cls,
        users: Sequence[V3User],
        deliver: OnNotification,
        stats: ListenerStats,
        on_drop: OnDrop,
        *,
        engine_id: bytes | None,
        state_dir: Path | None,
        replays: ReplayMemory,
        admit: Callable[[str, bool, int], str | None] | None = None,
        previous: V3Path | None = None,
    ) -> V3Path:
        """The path for ``users``. ``replays``: the listener's replay memory (kept across reloads,
        shared by the workers: :mod:`trapd.listener.v3.replay`). ``previous`` (the path of the
        configuration before a reload) hands on the sender engines' time notions. ``admit``: the
        slow-path budget, asked before a message goes to pysnmp (limits.SlowPathBudget)."""
        masters: MasterKeys = {}
        receiver = V3Receiver(
            users,
            deliver,
            stats,
            engine_id=engine_id,
            on_drop=on_drop,
            state_dir=state_dir,
            masters=masters,
            replays=replays,
            admit=admit,
        )
        timelines = previous.fast.timelines if previous is not None and previous.fast is not None else None
        fast = UsmFastPath(
            users, receiver.engine_id, timelines=timelines, masters=masters, replays=replays, stats=stats
        )
        return cls(receiver, fast, deliver, stats, on_drop)

    @property
    def engine_id(self) -> bytes:
        """trapd's own engine ID (informs are addressed to it)."""
        return self.receiver.engine_id

    def receive(self, data: bytes, addr: tuple[Any, ...], reply: SendTo) -> None:
        """One v3 datagram from ``addr``; ``reply`` answers through the receiving socket. Never raises."""
        now = time.time()
        source = str(addr[0])
        try:
            header = parse_header(data)
        except HeaderError as exc:
            self._drop("malformed", f"v3-{exc.reason}", source)
            return
        fast = self.fast
        if fast is not None:
            try:
                raw = fast.receive_header(header, data, source, int(addr[1]), now)
            except Refused as exc:
                self._drop(exc.reason, exc.detail, source, (header.user, header.engine_id))
                return
            if raw is not None:
                self._stats.received["v3"] += 1
                self._deliver(raw)
                return
        self.receiver.receive_header(header, data, addr, reply, now)

    def tick(self, now: float | None = None) -> None:
        """Housekeeping, about once a second: pysnmp's timers."""
        self.receiver.tick(now)

    def _drop(self, reason: str, detail: str | None, source: str, who: V3Who | None = None) -> None:
        self._stats.drop(reason, detail)
        self._on_drop(reason, detail, source, who)
