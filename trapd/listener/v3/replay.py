"""Replay memory for every authentic v3 message that can trigger an action, shared by all workers.

RFC 3414's time window bounds how long a captured message stays valid (150 s
either side of the authoritative engine's time) but not how often it is
accepted within it: pysnmp keeps no memory of the informs it accepted, so a
captured authPriv inform replayed 50 times ran its action 50 times (issue 14
item 2). trapd remembers the MAC of every authentic message it handed on,
traps and informs alike, and refuses an exact re-send as
``not-in-time-window`` / ``replayed``.

With ``service.workers`` > 1 the kernel picks a worker by a hash of the
sender's address *and port*, so a replay sent from another port reaches
another worker: a per-worker memory would not see it. So the memory is one
table in anonymous shared memory (``mmap``, MAP_SHARED), created by the
supervisor before it forks the workers (:func:`share_across_workers`) and
updated under one process-shared lock; a single trapd's listener makes its
own (:func:`for_listener`). Either lives as long as the process, across reloads.

The table is fixed in size (bounded memory whatever the input): 2^15 buckets
of 8 slots, each slot the first 16 octets of (MAC, engine ID) and an 8-octet
arrival stamp, 6 MiB in all. A full bucket forgets its oldest entry. Only
authentic messages get in, so only a holder of a user's keys can push entries
out: at the slow path's rate limits a bucket is not refilled within the time
window an inform stays valid (2^18 slots / 300 s is over 800 informs per
second). Check and insert are one atomic step (:meth:`ReplayMemory.first_time`),
so two workers receiving the same message at once hand it on only once.
"""

from __future__ import annotations

import mmap
import multiprocessing
import struct
import threading
from typing import Final, Protocol

__all__ = ["ReplayMemory", "for_listener", "share_across_workers"]

_BUCKETS: Final = 1 << 15
_WAYS: Final = 8
_KEY: Final = 16
_SLOT: Final = _KEY + 8  # digest, arrival stamp (unsigned 64-bit, 0 = empty)
_BUCKET_BYTES: Final = _WAYS * _SLOT
_HEADER: Final = 8  # the stamp counter
_STAMP = struct.Struct("<Q")
_BUCKET_STAMPS = struct.Struct("<" + f"{_KEY}xQ" * _WAYS)  # the 8 stamps of a bucket in one call


class _Lock(Protocol):
    def acquire(self) -> bool: ...

    def release(self) -> None: ...


class ReplayMemory:
    """A fixed-size set of (engine ID, MAC) digests with oldest-first forgetting per bucket."""

    def __init__(self, buckets: int = _BUCKETS, *, lock: _Lock | None = None) -> None:
        self._buckets = buckets
        self.size = _HEADER + buckets * _BUCKET_BYTES
        # fileno -1: anonymous memory, MAP_SHARED, so a forked child sees the same pages.
        self._mem = mmap.mmap(-1, self.size)
        self._lock: _Lock = lock if lock is not None else threading.Lock()
        self.forgotten = 0  # entries pushed out of a full bucket (in this process)

    @classmethod
    def shared(cls, buckets: int = _BUCKETS) -> ReplayMemory:
        """A memory for processes forked from this one: the lock is a process-shared semaphore."""
        return cls(buckets, lock=multiprocessing.get_context("fork").Lock())

    def first_time(self, engine_id: bytes, mac: bytes) -> bool:
        """True if (engine_id, mac) was not remembered, and remember it; False: a replay."""
        key, base = self._slot_key(engine_id, mac)
        mem = self._mem
        self._lock.acquire()
        try:
            stamps = _BUCKET_STAMPS.unpack_from(mem, base)
            if self._holds(key, base, stamps):
                return False
            oldest = min(stamps)
            oldest_at = base + stamps.index(oldest) * _SLOT
            if oldest:
                self.forgotten += 1
            counter = _STAMP.unpack_from(mem, 0)[0] + 1
            _STAMP.pack_into(mem, 0, counter)
            mem[oldest_at : oldest_at + _KEY] = key
            _STAMP.pack_into(mem, oldest_at + _KEY, counter)
            return True
        finally:
            self._lock.release()

    def seen(self, engine_id: bytes, mac: bytes) -> bool:
        """True if (engine_id, mac) is remembered; remembers nothing (a check before pysnmp's)."""
        key, base = self._slot_key(engine_id, mac)
        self._lock.acquire()
        try:
            return self._holds(key, base, _BUCKET_STAMPS.unpack_from(self._mem, base))
        finally:
            self._lock.release()

    def _slot_key(self, engine_id: bytes, mac: bytes) -> tuple[bytes, int]:
        """The digest a message is remembered by, and where its bucket starts."""
        # A MAC is already an unpredictable HMAC output (12 to 48 octets): its first octets
        # (topped up with the engine ID's) are the key, and choose the bucket, with no hash of
        # our own (a keyed BLAKE2b here cost a fifth of the fast path's whole time per trap).
        key = (mac + engine_id + bytes(_KEY))[:_KEY]
        return key, _HEADER + (int.from_bytes(key[:4], "little") % self._buckets) * _BUCKET_BYTES

    def _holds(self, key: bytes, base: int, stamps: tuple[int, ...]) -> bool:
        """Whether the bucket at ``base`` holds ``key`` in a used slot (with the lock held)."""
        # The digest is searched for in C (mmap.find); a hit counts only at a slot's start.
        mem, end = self._mem, base + _BUCKET_BYTES
        found = mem.find(key, base, end)
        while found >= 0:
            if (found - base) % _SLOT == 0 and stamps[(found - base) // _SLOT]:
                return True
            found = mem.find(key, found + 1, end)
        return False


_shared: ReplayMemory | None = None


def share_across_workers() -> ReplayMemory:
    """Create the memory every worker forked from now on uses (the supervisor, before forking)."""
    global _shared
    _shared = ReplayMemory.shared()
    return _shared


def for_listener() -> ReplayMemory:
    """The memory a listener uses for its life (across reloads): in a worker the supervisor's
    shared one, else one of its own (its pages are only touched as entries arrive)."""
    return _shared if _shared is not None else ReplayMemory()
