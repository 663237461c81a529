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

from dataclasses import dataclass, field
from typing import Final

from trapd.listener.v3.errors import Refused

__all__ = ["ENGINE_BOOTS_MAX", "LEARNED_REPLAY_MEMORY", "REPLAY_MEMORY", "TIME_WINDOW", "EngineTime"]

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
