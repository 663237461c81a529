"""A cache bounded in bytes as well as in entries, for the receive path.

Network input decides what a receive-path cache holds, so its size must be
bounded by what it costs in memory, not only by how many entries it has: 4,096
remembered OCTET STRINGs of 65 KB each are 1 GB (issue 14 item 1). Every
entry is put with an estimate of its cost in bytes (the caller knows its
shape); when the next entry would pass either bound the cache forgets
everything, as the entry-bounded caches before it did. Clearing rather than
evicting keeps a hit at one dict lookup (``get`` is the dict's own bound
method): a storm repeats few keys, and a flood of distinct ones only empties
the cache now and then.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")


class BoundedCache(Generic[K, V]):
    """``get(key)`` -> value or None; ``put(key, value, cost)``; at most ``max_entries`` and ``max_bytes``.

    ``bytes`` is the sum of the costs of the entries held. An entry costing
    more than ``max_bytes`` is never held.
    """

    __slots__ = ("_data", "bytes", "clears", "get", "max_bytes", "max_entries")

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self._data: dict[K, V] = {}
        self.get: Callable[[K], V | None] = self._data.get
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.bytes = 0
        self.clears = 0

    def put(self, key: K, value: V, cost: int) -> None:
        data = self._data
        if cost > self.max_bytes or key in data:
            return
        if len(data) >= self.max_entries or self.bytes + cost > self.max_bytes:
            data.clear()
            self.bytes = 0
            self.clears += 1
        data[key] = value
        self.bytes += cost

    def clear(self) -> None:
        self._data.clear()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._data)
