"""Timeliness and replays of authentic v3 messages (RFC 3414 section 3.2 step 7).

For a trap the sender is the authoritative engine, so trapd keeps its own
notion of each sender engine's (boots, time) (:class:`EngineTime`), learned
from the first authentic message and advanced by every newer authentic one.
An authentic message is refused as ``not-in-time-window`` when its boots is
2^31-1, or lower than the latest seen for that engine, or equal with an
engineTime more than 150 s before the latest seen. The notion is not
extrapolated with trapd's clock: a sender whose clock drifts, or that is
silent for days, must not lose its next trap. That leaves one gap the RFC
window cannot close (re-sending a quiet sender's last message), so every
accepted message's MAC is also remembered for as long as the window could
accept it (bounded per engine): an exact re-send is ``not-in-time-window``
with detail ``replayed``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Final

from trapd.listener.v3.errors import Refused

__all__ = [
    "ENGINE_BOOTS_MAX",
    "LEARNED_REPLAY_MEMORY",
    "MAX_ENGINES",
    "MAX_MACS",
    "REPLAY_MEMORY",
    "TIME_WINDOW",
    "EngineTime",
    "Timelines",
]

TIME_WINDOW: Final = 150  # seconds, RFC 3414 section 2.2.3
ENGINE_BOOTS_MAX: Final = 2147483647
# How many accepted MACs are remembered per sender engine for replay detection: an engine a
# user is bound to in the configuration, and one learned by a user without engine_ids (up to
# 1,024 of those: 256 each keeps them within about 40 MB; the shared memory of replay.py
# still holds every MAC beyond).
REPLAY_MEMORY: Final = 4096
LEARNED_REPLAY_MEMORY: Final = 256


@dataclass(slots=True)
class EngineTime:
    """trapd's notion of one sender engine's clock (RFC 3414 snmpEngineBoots / latestReceivedEngineTime).

    ``recent`` maps the MAC of each accepted message to its engineTime, for
    replay detection; entries leave once the window would refuse them anyway,
    or when the engine sent more than ``memory`` messages within a window.
    """

    boots: int
    time: int
    recent: dict[bytes, int] = field(default_factory=dict)
    memory: int = REPLAY_MEMORY

    def check(self, boots: int, etime: int, mac: bytes) -> None:
        """Raise :class:`Refused` unless (boots, time) is within the window of this notion."""
        if self.boots == ENGINE_BOOTS_MAX or boots < self.boots:
            raise Refused("not-in-time-window", "old-boots")
        if boots == self.boots:
            if etime < self.time - TIME_WINDOW:
                raise Refused("not-in-time-window", "old-time")
            if mac in self.recent:
                raise Refused("not-in-time-window", "replayed")

    def accept(self, boots: int, etime: int, mac: bytes) -> None:
        """Advance the notion with an accepted message (RFC 3414 3.2 step 7b.1) and remember its MAC."""
        if boots > self.boots:
            self.boots, self.time = boots, etime
            self.recent.clear()  # every older MAC now fails the boots check
        elif etime > self.time:
            self.time = etime
        recent = self.recent
        recent[mac] = etime
        if len(recent) > self.memory:
            oldest = self.time - TIME_WINDOW
            kept = {m: t for m, t in recent.items() if t >= oldest}
            if len(kept) > self.memory // 2:
                # A sender faster than ``memory`` per window: keep the newest half
                # (insertion order is arrival order). Older MACs within the window
                # then rely on the time check and the shared replay memory.
                kept = dict(list(kept.items())[-(self.memory // 2) :])
            self.recent = kept


# Fixed maximums of all sender engines' notions together (Timelines): the engines whose time
# notion is kept, and the MACs remembered in all their replay memories (about 125 octets each,
# measured with tracemalloc: 2^18 of them are some 32 MiB). Only authentic messages add to
# either, but a holder of a user's keys can make up any number of engine IDs (a user without
# engine_ids learns each), and a site can bind thousands: without these the memory grew with the
# number of engines (4,096 MACs for each bound one).
MAX_ENGINES: Final = 4096
MAX_MACS: Final = 1 << 18


class Timelines(Mapping[bytes, EngineTime]):
    """Every sender engine's :class:`EngineTime`, within :data:`MAX_ENGINES` notions and
    :data:`MAX_MACS` remembered MACs in all. Beyond either, the engine heard from least recently
    is pushed out (``pushed_out`` counts them): its next authentic message is believed again, as
    after a restart, and an exact replay of one of its messages is still refused by the shared
    replay memory (:mod:`trapd.listener.v3.replay`, a fixed 6 MiB). So a flood of made-up engine
    IDs cannot grow memory past the bound, and cannot keep a real engine out: it only pushes
    out notions, which the engine's next message makes again."""

    def __init__(self, max_engines: int = MAX_ENGINES, max_macs: int = MAX_MACS) -> None:
        self.max_engines = max_engines
        self.max_macs = max_macs
        self._engines: dict[bytes, EngineTime] = {}  # least recently heard from first
        self.macs = 0  # MACs remembered in all
        self.pushed_out = 0

    def __getitem__(self, engine_id: bytes) -> EngineTime:
        return self._engines[engine_id]

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._engines)

    def __len__(self) -> int:
        return len(self._engines)

    def kept(self, keep: Callable[[bytes], bool]) -> Timelines:
        """A copy with the notions of the engines ``keep`` says yes to (a reload: the engines of
        the new configuration), the same maximums and count."""
        new = Timelines(self.max_engines, self.max_macs)
        for engine_id, timeline in self._engines.items():
            if keep(engine_id):
                new._engines[engine_id] = timeline
                new.macs += len(timeline.recent)
        new.pushed_out = self.pushed_out
        return new

    def accept(self, engine_id: bytes, boots: int, etime: int, mac: bytes, memory: int) -> None:
        """:meth:`EngineTime.accept` for ``engine_id`` (a new notion with ``memory`` if it has
        none), which becomes the engine heard from last; then push out what exceeds the bounds."""
        engines = self._engines
        timeline = engines.pop(engine_id, None)
        if timeline is None:
            timeline = EngineTime(boots, etime, memory=memory)
        before = len(timeline.recent)
        timeline.accept(boots, etime, mac)
        self.macs += len(timeline.recent) - before
        engines[engine_id] = timeline
        while len(engines) > self.max_engines or (self.macs > self.max_macs and len(engines) > 1):
            self.forget(next(iter(engines)))
            self.pushed_out += 1

    def forget(self, engine_id: bytes) -> None:
        timeline = self._engines.pop(engine_id, None)
        if timeline is not None:
            self.macs -= len(timeline.recent)
