"""Address sets for ``source:`` and ``cidr:``: CIDR lists, named groups, negation.

A set is written as a list of entries; ``!`` in front of an entry excludes
it. An address belongs to the set when it is in some positive entry and in
no negative one; a list of only negative entries means "everything but".
Group names (from the top-level ``sources:``) may appear wherever a CIDR
may, also negated.

Membership is tested on integers (address, family) so that the hot path
does no parsing beyond the one ``ip_address`` per event the caller caches.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass

from trapd.params import unmapped_network

Net = tuple[int, int, int]  # (version, network as int, mask as int)


# Cached: a per-port rule file names each switch once per port (100,000 rules on 2,084
# switches: ~0.3 s CPU less to compile); a ValueError is not cached, so is raised every time.
@functools.lru_cache(maxsize=16384)
def parse_net(text: str) -> Net:
    """``10.0.0.0/8``, ``10.1.2.3``, ``2001:db8::/32`` -> (version, net, mask); ValueError otherwise."""
    # A mapped sender is compared as IPv4 (addr_key): so is a mapped entry.
    n = unmapped_network(ipaddress.ip_network(text.strip(), strict=False))
    return (n.version, int(n.network_address), int(n.netmask))


def addr_key(text: str) -> tuple[int, int] | None:
    """An address as (version, int); IPv4-mapped IPv6 is treated as IPv4. None if not an address."""
    try:
        a = ipaddress.ip_address(text.strip().split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        a = a.ipv4_mapped
    return (a.version, int(a))


def bytes_addr_key(raw: bytes) -> tuple[int, int] | None:
    """An InetAddress-style octet value (4 or 16 octets) as (version, int)."""
    if len(raw) == 4:
        return (4, int.from_bytes(raw, "big"))
    if len(raw) == 16:
        a = ipaddress.IPv6Address(raw)
        if a.ipv4_mapped is not None:
            return (4, int(a.ipv4_mapped))
        return (6, int(a))
    return None


@dataclass(frozen=True, slots=True)
class AddressSet:
    include: tuple[Net, ...]
    exclude: tuple[Net, ...] = ()
    include_all: bool = False  # only negative entries were given
    # A list naming a group with exclusions beside other positive entries is their union, which
    # one include/exclude pair cannot say: in [lab-but-x, 10.20.99.7] the group's "!" is its own
    # and must not take 10.20.99.7 away. Then an address is in the set when it is in one of
    # ``parts`` and in no ``exclude`` (the list's own); ``include`` is all the parts' networks.
    # Such a set is an AddressUnion, so that the others' contains() pays nothing for it.
    parts: tuple[AddressSet, ...] = ()

    def contains(self, key: tuple[int, int]) -> bool:
        version, value = key
        for v, net, mask in self.exclude:
            if v == version and value & mask == net:
                return False
        if self.include_all:
            return True
        for v, net, mask in self.include:  # noqa: SIM110 - hot path: no generator
            if v == version and value & mask == net:
                return True
        return False

    def covers(self, other: AddressSet) -> bool:
        """Conservative: True only when every address of ``other`` is surely in self."""
        if other.parts:
            return all(self.covers(p) for p in other.parts)
        if self.exclude and not all(e in other.exclude for e in self.exclude):
            return False
        if self.parts:
            return any(p.covers(other) for p in self.parts)
        if self.include_all:
            return True
        if other.include_all:
            return False
        return all(any(_net_in(n, mine) for mine in self.include) for n in other.include)

    @classmethod
    def union(cls, sets: Iterable[AddressSet]) -> AddressSet:
        inc: list[Net] = []
        exc: list[Net] = []
        every = False
        for s in sets:
            inc += s.include
            exc += s.exclude
            every = every or s.include_all
        return cls(tuple(inc), tuple(exc), every)


@dataclass(frozen=True, slots=True)
class AddressUnion(AddressSet):
    """An AddressSet that is the union of its ``parts``, less its own ``exclude``."""

    def contains(self, key: tuple[int, int]) -> bool:
        version, value = key
        for v, net, mask in self.exclude:
            if v == version and value & mask == net:
                return False
        return any(p.contains(key) for p in self.parts)


def _net_in(inner: Net, outer: Net) -> bool:
    v1, n1, m1 = inner
    v2, n2, m2 = outer
    return v1 == v2 and (m1 & m2) == m2 and (n1 & m2) == n2
