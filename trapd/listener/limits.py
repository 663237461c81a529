"""Per-source and global rate limits: shed floods cheaply, keep the notifications that clear.

Configuration (``listener.rate_limit``, notifications per second; 0 turns a
bucket off)::

    rate_limit: {per_source: 2000, global: 20000, burst: 2.0}

What is shed first, and why this order:

1. **The flooding source.** Every source address has its own token bucket
   (``per_source`` a second, ``burst`` seconds deep), checked *before* the
   global one: a switch gone mad empties its own bucket and is dropped
   without spending the global tokens the other switches need.
2. **Heavy sources under global pressure.** When the global bucket is below
   half its depth, a source that has already spent more than half of its own
   depth is shed ("global") while sources that send little still get the
   remaining tokens. Without this, a storm from many moderately noisy sources
   would take the global tokens first come, first served, and a quiet switch
   with one important trap would lose as often as the noisiest one.
3. **Everything else over the global rate** ("global").

Never shed in favour of new traffic: notifications that clear a pending
action (a linkUp that cancels a delayed lease deletion, a MAC learnt again).
"Clearing" means: the trap OID is selected by a rule with ``cancel:``
(:attr:`trapd.rules.RuleSet.clearing_oids`). Such a notification is only
recognisable after decoding, and decoding is what a flood must not pay for,
so the check is split:

* **Before decoding** (:meth:`SourceLimiter.check`, every datagram, about a
  dict lookup and a few float operations): within the limits, the datagram
  goes on. Over a limit, it is dropped at once *unless it may be clearing*.
  For v2c that is decided without decoding: the BER encoding of every
  clearing OID (``06 len content`` for an exact OID, the content octets for
  an ``under:`` prefix) is searched for in the datagram (``bytes.find``, C
  speed); a datagram holding none of them cannot carry a clearing
  snmpTrapOID. v1 (the trap OID is derived from generic/specific-trap) and
  v3 (encrypted) cannot be told apart cheaply, so they are candidates.
* A candidate spends a token of a **reserve**: a second pair of buckets (per
  source and global, the same rates) that only candidates draw from. It
  bounds what decoding over-limit traffic can cost (a forged flood carrying
  linkUp's OID bytes, or v3 traffic, decodes at most at the reserve's rate),
  and it means a clearing notification is dropped only when clearing
  notifications *alone* exceed the limits: never to make room for a new one.
* **After decoding** (:meth:`SourceLimiter.exempt`): a candidate whose trap
  OID really is clearing passes (counted in ``exempted``); anything else is
  dropped as rate-limited with the detail of the limit it broke.

Memory is bounded: at most ``max_sources`` per-source entries, least
recently seen evicted first. A spoofed flood from ever-new addresses evicts
real sources (which then start again with a full bucket); it is held by the
global bucket, which no source address can escape.

Drops are counted by the listener as reason ``rate-limited`` with detail
``per-source`` or ``global``.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final, Protocol

from trapd.listener.ber import encode_oid_content, encode_tlv
from trapd.listener.config import RateLimit
from trapd.listener.raw import Oid, RawNotification, v1_trap_oid

DEFAULT_MAX_SOURCES = 16384
_SNMP_TRAP_OID = (1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)
_V2C_PREFIX = b"\x02\x01\x01"  # version INTEGER 1 (v2c), right after the message SEQUENCE header


class Clearing(Protocol):
    """What the limiter needs to know about clearing notifications (RuleSet.clearing_oids)."""

    @property
    def exact(self) -> frozenset[Oid]: ...

    @property
    def prefixes(self) -> tuple[Oid, ...]: ...

    @property
    def any(self) -> bool: ...

    def covers(self, trap_oid: Oid) -> bool: ...


@dataclass(frozen=True, slots=True)
class NoClearing:
    """No rule cancels anything: no notification is exempt."""

    exact: frozenset[Oid] = frozenset()
    prefixes: tuple[Oid, ...] = ()
    any: bool = False

    def covers(self, trap_oid: Oid) -> bool:
        return False


@dataclass(frozen=True, slots=True)
class Over:
    """The verdict for a datagram over a limit: which limit, and whether to decode it as a candidate."""

    detail: str  # "per-source" or "global"
    probe: bool


OVER_SOURCE = Over("per-source", probe=False)
OVER_GLOBAL = Over("global", probe=False)
PROBE_SOURCE = Over("per-source", probe=True)
PROBE_GLOBAL = Over("global", probe=True)


@dataclass
class LimiterStats:
    """``probed``: over-limit datagrams decoded as clearing candidates, by detail.
    ``exempted``: of those, the ones that were clearing and passed. ``evicted``: per-source entries
    dropped from the table to keep it within ``max_sources``."""

    probed: Counter[str] = field(default_factory=Counter)
    exempted: Counter[str] = field(default_factory=Counter)
    evicted: int = 0


def needles(clearing: Clearing) -> tuple[bytes, ...] | None:
    """The byte strings whose presence in a v2c datagram makes it a clearing candidate.

    None: every datagram is a candidate (a cancelling rule for any notification).
    """
    if clearing.any:
        return None
    found = {encode_tlv(0x06, encode_oid_content(oid)) for oid in clearing.exact if len(oid) >= 2}
    # A prefix's content octets begin the content of every OID below it (the
    # first two arcs share an octet, so a prefix needs both to be exact).
    found |= {encode_oid_content(p) for p in clearing.prefixes if len(p) >= 2}
    if any(len(oid) < 2 for oid in (*clearing.exact, *clearing.prefixes)):
        return None
    return tuple(sorted(found))


def trap_oid_of(raw: RawNotification) -> Oid:
    """snmpTrapOID as ``trapd.normalize`` sees it (RFC 3584 for v1); () if the notification has none."""
    if raw.version == "v1":
        if raw.v1_generic_trap is None:
            return ()
        return v1_trap_oid(raw.v1_enterprise or (), raw.v1_generic_trap, raw.v1_specific_trap or 0)
    for oid, kind, value in raw.varbinds:
        if oid == _SNMP_TRAP_OID and kind == "ObjectIdentifier":
            return value  # type: ignore[return-value]  # an Oid for this type
    return ()


class _Bucket:
    """A token bucket; ``take`` refills by the time passed, then spends one token if there is one."""

    __slots__ = ("depth", "last", "rate", "tokens")

    def __init__(self, rate: float, depth: float, now: float) -> None:
        self.rate = rate
        self.depth = depth
        self.tokens = depth
        self.last = now

    def refill(self, now: float) -> float:
        t = self.tokens + (now - self.last) * self.rate
        self.tokens = t if t < self.depth else self.depth
        self.last = now
        return self.tokens

    def take(self, now: float) -> bool:
        if self.refill(now) >= 1.0:
            self.tokens -= 1.0
            return True
        return False

    def capped(self, cost: float, floor: float) -> float:
        """``cost``, or what the bucket can hold over ``floor`` if that is less (at least 1)."""
        return min(cost, max(1.0, self.depth - floor))

    def take_above(self, now: float, floor: float, cost: float = 1.0) -> bool:
        """``take`` ``cost`` tokens (:meth:`capped`), but only while ``floor`` tokens stay behind
        (the rest is reserved)."""
        cost = self.capped(cost, floor)
        if self.refill(now) >= floor + cost:
            self.tokens -= cost
            return True
        return False


class _Source:
    __slots__ = ("bucket", "reserve")

    def __init__(self, bucket: _Bucket, reserve: _Bucket) -> None:
        self.bucket = bucket
        self.reserve = reserve


class SourceLimiter:
    """The listener's rate limiter (see the module docstring for the order of shedding).

    Call :meth:`check` with every datagram before decoding: None admits it;
    an :class:`Over` with ``probe=False`` drops it; with ``probe=True`` decode
    it and call :meth:`exempt` with the result, which says whether it passes.
    All on the event loop thread: no locks.
    """

    def __init__(
        self,
        config: RateLimit,
        clearing: Clearing | None = None,
        *,
        max_sources: int = DEFAULT_MAX_SOURCES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stats = LimiterStats()
        self._clock = clock
        self._max_sources = max(1, max_sources)
        self._sources: OrderedDict[str, _Source] = OrderedDict()
        self.configure(config, clearing)

    @property
    def active(self) -> bool:
        """False when both buckets are off (the listener may then skip the limiter)."""
        return self._limiting

    def configure(self, config: RateLimit, clearing: Clearing | None = None) -> None:
        """Apply new limits and clearing OIDs (a reload). Per-source state restarts full."""
        now = self._clock()
        burst = max(config.burst, 0.0)
        self.config = config
        self._per_source = max(config.per_source, 0.0)
        self._global_rate = max(config.global_, 0.0)
        self._limiting = self._per_source > 0 or self._global_rate > 0
        # At least one token of depth, or a bucket could never admit anything.
        self._source_depth = max(1.0, self._per_source * burst)
        global_depth = max(1.0, self._global_rate * burst)
        self._global = _Bucket(self._global_rate, global_depth, now)
        self._global_reserve = _Bucket(self._global_rate, global_depth, now)
        self._sources.clear()
        self.set_clearing(clearing or NoClearing())

    def set_clearing(self, clearing: Clearing) -> None:
        """New clearing OIDs (the rules were reloaded); buckets keep their state."""
        self._clearing = clearing
        self._needles = needles(clearing)
        self._nothing_clears = not clearing.any and not clearing.exact and not clearing.prefixes

    def __len__(self) -> int:
        """Per-source entries held (bounded by ``max_sources``)."""
        return len(self._sources)

    # -- the receive path --------------------------------------------------

    def check(self, host: str, data: bytes) -> Over | None:
        """Before decoding: None (admitted, tokens spent) or why it is over a limit."""
        if not self._limiting:
            return None  # both buckets off (the default): not even the clock is read
        now = self._clock()
        src: _Source | None = None
        over: Over | None = None
        if self._per_source > 0:
            # The hot path, inlined (_Bucket.take): this runs for every datagram of a flood.
            sources = self._sources
            src = sources.get(host)
            if src is None:
                src = self._new_source(host, now)
            else:
                sources.move_to_end(host)
            b = src.bucket
            t = b.tokens + (now - b.last) * b.rate
            if t > b.depth:
                t = b.depth
            b.last = now
            if t >= 1.0:
                b.tokens = t - 1.0
            else:
                b.tokens = t
                over = OVER_SOURCE
        if over is None and self._global_rate > 0:
            g = self._global
            if g.refill(now) < 1.0:
                over = OVER_GLOBAL
            elif src is not None and g.tokens < g.depth / 2 and src.bucket.tokens < self._source_depth / 2:
                over = OVER_GLOBAL  # global pressure: the heavy sources go first
                src.bucket.tokens += 1.0  # not admitted: give back the token spent above
            else:
                g.tokens -= 1.0
        if over is None:
            return None
        if not self._may_clear(data):
            return over
        # A clearing candidate: decoding it costs a reserve token, per source and global.
        if src is not None and src.reserve.refill(now) < 1.0:
            return over
        if self._global_rate > 0 and not self._global_reserve.take(now):
            return over
        if src is not None:
            src.reserve.tokens -= 1.0
        self.stats.probed[over.detail] += 1
        return PROBE_SOURCE if over is OVER_SOURCE else PROBE_GLOBAL

    def exempt(self, raw: RawNotification, over: Over) -> bool:
        """After decoding a candidate: True if it clears a pending action and so passes."""
        if self._clearing.covers(trap_oid_of(raw)):
            self.stats.exempted[over.detail] += 1
            return True
        return False

    def _may_clear(self, data: bytes) -> bool:
        if self._nothing_clears:
            return False
        found = self._needles
        if found is None:
            return True
        # The version INTEGER follows the message SEQUENCE's tag and length (1 to 3 octets here).
        first = data[1] if len(data) > 1 else 0
        at = 2 if first < 0x80 else first - 0x80 + 2
        if data[at : at + 3] != _V2C_PREFIX:
            return True  # v1, v3 (or garbage, which decoding rejects at once): only decoding can tell
        return any(n in data for n in found)

    def _new_source(self, host: str, now: float) -> _Source:
        sources = self._sources
        if len(sources) >= self._max_sources:
            sources.popitem(last=False)  # the least recently seen
            self.stats.evicted += 1
        src = _Source(
            _Bucket(self._per_source, self._source_depth, now),
            _Bucket(self._per_source, self._source_depth, now),
        )
        sources[host] = src
        return src


# How much deeper each slow-path bucket is than ``rate * burst``, as a share of that depth: the
# extra tokens are for authentic messages only (SlowPathBudget).
AUTHENTIC_RESERVE: Final = 0.5
# A message to pysnmp spends a token per started this many octets: pysnmp decodes all of it, at a
# cost that grows with its variable bindings (a varbind is 7 octets at least). Measured with
# discovery probes of minimal varbinds, load average 2.7 on 2 cores: 60 octets 7 ms, 867 octets
# (100 varbinds) 7 ms, 8 KB 57 to 87 ms, 48 KB 426 to 731 ms; so 512 octets (73 varbinds) cost
# about 1.3 plain messages, 48 KB about 100, and spend 2 and 94 tokens.
OCTETS_PER_TOKEN: Final = 512


class SlowPathBudget:
    """Per-source and global token buckets for v3 messages that need pysnmp's engine.

    A v3 message that the fast USM path does not take and the cheap checks do
    not refuse (engine-ID discovery, informs to trapd's engine, unusual
    messages) costs pysnmp's engine about 1.5 ms of CPU, some 50 times a v2c
    trap. Counted like any other datagram, a sender within
    ``rate_limit.per_source: 2000`` could still take the whole event loop
    (issue 14 item 3: legitimate senders got 1.8 % of their traps through).
    So these messages have a budget of their own, much smaller, by cost:
    ``v3_slow_per_source`` a second per source (default 10: a switch's
    discovery and informs; a site whose switches send more informs raises
    it) and ``v3_slow_global`` for everyone (default 100, about 15 % of one
    core), ``burst`` seconds deep: a burst stalls the loop at most
    ``v3_slow_per_source * burst * 1.5 ms`` (30 ms by default). A message
    spends a token per started :data:`OCTETS_PER_TOKEN` too: pysnmp's cost
    grows with its variable bindings. Over
    budget, :meth:`admit` names the limit and the message is dropped as
    ``rate-limited`` before pysnmp sees it. Per-source entries are bounded
    (least recently seen evicted first), like :class:`SourceLimiter`'s.

    UDP sources can be forged, and engine-ID discovery needs no key, so a
    flood of discovery probes from made-up addresses could spend the global
    budget by itself and keep every switch's informs out. Hence each bucket
    is half as deep again (:data:`AUTHENTIC_RESERVE`), and that reserve is
    for messages whose MAC the receiver has already checked
    (``authentic=True``: only a holder of a user's keys can send them, and a
    replay is refused before this). Unauthenticated messages (discovery,
    noAuthNoPriv users) stop at the reserve, so their bursts and rates are
    what they were; authentic ones may take any token. A switch that knows
    trapd's engine keeps its informs through a forged flood, from other
    addresses or from its own.
    """

    def __init__(
        self,
        config: RateLimit,
        *,
        max_sources: int = DEFAULT_MAX_SOURCES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self._max_sources = max(1, max_sources)
        self._sources: OrderedDict[str, _Bucket] = OrderedDict()
        now = clock()
        burst = max(config.burst, 0.0)
        self._per_source = max(config.v3_slow_per_source, 0.0)
        self._source_reserve = max(1.0, self._per_source * burst) * AUTHENTIC_RESERVE
        self._source_depth = max(1.0, self._per_source * burst) + self._source_reserve
        rate = max(config.v3_slow_global, 0.0)
        self._global_reserve = max(1.0, rate * burst) * AUTHENTIC_RESERVE
        depth = max(1.0, rate * burst) + self._global_reserve
        self._global = _Bucket(rate, depth, now) if rate > 0 else None

    def admit(self, host: str, authentic: bool = False, size: int = 0) -> str | None:
        """None: go on to pysnmp (its tokens spent); else which budget is spent.

        ``authentic``: the message's MAC was checked, so it may use the reserve. ``size``: its
        octets; it spends one token and one more per :data:`OCTETS_PER_TOKEN`, or all a bucket
        holds when it costs more (so it passes a full bucket, and empties it).
        """
        cost = 1.0 + size // OCTETS_PER_TOKEN
        source_cost = cost
        now = self._clock()
        bucket: _Bucket | None = None
        if self._per_source > 0:
            sources = self._sources
            bucket = sources.get(host)
            if bucket is None:
                if len(sources) >= self._max_sources:
                    sources.popitem(last=False)
                bucket = sources[host] = _Bucket(self._per_source, self._source_depth, now)
            else:
                sources.move_to_end(host)
            floor = 0.0 if authentic else self._source_reserve
            source_cost = bucket.capped(cost, floor)
            if bucket.refill(now) < floor + source_cost:
                return "v3-slow-per-source"
        g = self._global
        if g is not None and not g.take_above(now, 0.0 if authentic else self._global_reserve, cost):
            return "v3-slow-global"
        if bucket is not None:
            bucket.tokens -= source_cost
        return None

    def __len__(self) -> int:
        return len(self._sources)
