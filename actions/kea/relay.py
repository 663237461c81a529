"""Relay information as Kea stores it in a lease's user-context: option 82 (v4), relay options (v6).

With ``store-extended-info`` Kea keeps the relay's sub-options in
``user-context.ISC.relay-agent-info`` (DHCPv4):

- Kea 2.2: a string, ``"0x"`` + hex of the sub-options (code, length, value
  for each; option 82's own code and length are not included), e.g.
  ``0x010867652D302F302F38...`` = sub-option 1 (circuit-id) "ge-0/0/8", ...
- Kea >= 2.4: an object ``{"sub-options": "0x...", "remote-id": HEX, "relay-id": HEX}``;
  circuit-id stays inside sub-options.

Circuit-id is sub-option 1, remote-id sub-option 2 (RFC 3046), relay-id 12 (RFC 6925).

DHCPv6 (measured with a relayed Solicit/rapid-commit to kea-dhcp6 2.2.0,
2.6.3 and 3.0.4): one entry per relay hop, each with the relay's options as
``"0x"`` + hex (code and length on two octets each, RFC 8415):

- Kea 2.2: ``user-context.ISC.relays``:
  ``[{"hop": 0, "link": "2001:db8:1::1", "peer": "fe80::aa", "options": "0x0012..."}]``
- Kea >= 2.4: ``user-context.ISC.relay-info``, the same plus ``"remote-id"`` (hex of
  option 37's data: enterprise number + id) and ``"relay-id"`` (hex of option 53's DUID).

Interface-id is option 18 (RFC 8415), remote-id 37 (RFC 4649), relay-id 53 (RFC 5460).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

CIRCUIT_ID = 1
REMOTE_ID = 2
RELAY_ID = 12
V6_INTERFACE_ID = 18
V6_REMOTE_ID = 37
V6_RELAY_ID = 53


@dataclass(frozen=True, slots=True)
class RelayInfo:
    sub_options: dict[int, bytes]

    @property
    def circuit_id(self) -> bytes | None:
        return self.sub_options.get(CIRCUIT_ID)

    @property
    def remote_id(self) -> bytes | None:
        return self.sub_options.get(REMOTE_ID)

    @property
    def relay_id(self) -> bytes | None:
        return self.sub_options.get(RELAY_ID)


def hex_bytes(text: str) -> bytes | None:
    s = text.strip()
    if s[:2].lower() == "0x":
        s = s[2:]
    s = re.sub(r"[:\s-]", "", s)
    try:
        return bytes.fromhex(s)
    except ValueError:
        return None


def parse_tlvs(data: bytes, width: int = 1) -> dict[int, bytes]:
    """Code-length-value items, code and length ``width`` octets each (1: option 82's sub-options,
    2: DHCPv6 options); the first of a repeated code wins; a truncated tail is ignored."""
    out: dict[int, bytes] = {}
    i = 0
    while i + 2 * width <= len(data):
        code = int.from_bytes(data[i : i + width], "big")
        length = int.from_bytes(data[i + width : i + 2 * width], "big")
        value = data[i + 2 * width : i + 2 * width + length]
        if len(value) < length:
            break
        out.setdefault(code, value)
        i += 2 * width + length
    return out


def parse_sub_options(data: bytes) -> dict[int, bytes]:
    """Option 82's sub-options (one-octet code and length)."""
    return parse_tlvs(data, 1)


def relay_info(lease: dict[str, Any]) -> RelayInfo | None:
    """The relay information stored with ``lease``, or None when it has none (or unreadable)."""
    ctx = lease.get("user-context")
    if not isinstance(ctx, dict):
        return None
    isc = ctx.get("ISC")
    if not isinstance(isc, dict):
        return None
    rai = isc.get("relay-agent-info")
    subs: dict[int, bytes] = {}
    if isinstance(rai, str):
        raw = hex_bytes(rai)
        if raw is None:
            return None
        subs = parse_sub_options(raw)
    elif isinstance(rai, dict):
        so = rai.get("sub-options")
        if isinstance(so, str):
            raw = hex_bytes(so)
            if raw is not None:
                subs = parse_sub_options(raw)
        for key, code in (("remote-id", REMOTE_ID), ("relay-id", RELAY_ID)):
            v = rai.get(key)
            if isinstance(v, str) and code not in subs:
                b = hex_bytes(v)
                if b is not None:
                    subs[code] = b
    else:
        return None
    return RelayInfo(subs)


def id_bytes(value: str) -> bytes:
    """A circuit-id / remote-id parameter: ``0x...`` is hex octets, anything else its UTF-8 text."""
    if value[:2].lower() == "0x":
        b = hex_bytes(value)
        if b is not None:
            return b
    return value.encode()


def matches(
    info: RelayInfo | None, circuit_id: bytes | None, remote_id: bytes | None, relay_id: bytes | None = None
) -> bool:
    """Every given id must equal the lease's; a lease without relay info never matches."""
    if info is None or (circuit_id is None and remote_id is None and relay_id is None):
        return False
    if circuit_id is not None and info.circuit_id != circuit_id:
        return False
    if relay_id is not None and info.relay_id != relay_id:
        return False
    return remote_id is None or info.remote_id == remote_id


def relay_hops6(lease: dict[str, Any]) -> list[dict[int, bytes]]:
    """The relay options of each hop stored with a v6 lease ([] when it has none)."""
    ctx = lease.get("user-context")
    isc = ctx.get("ISC") if isinstance(ctx, dict) else None
    if not isinstance(isc, dict):
        return []
    hops = isc.get("relay-info", isc.get("relays"))
    if not isinstance(hops, list):
        return []
    out = []
    for hop in hops:
        if not isinstance(hop, dict):
            continue
        raw = hex_bytes(hop["options"]) if isinstance(hop.get("options"), str) else None
        opts = parse_tlvs(raw, 2) if raw is not None else {}
        # Kea >= 2.4 also stores these two on their own (the same bytes as in the options).
        for key, code in (("remote-id", V6_REMOTE_ID), ("relay-id", V6_RELAY_ID)):
            value = hop.get(key)
            if isinstance(value, str) and code not in opts and (b := hex_bytes(value)) is not None:
                opts[code] = b
        out.append(opts)
    return out


def matches6(
    hops: list[dict[int, bytes]], interface_id: bytes | None, remote_id: bytes | None, relay_id: bytes | None
) -> bool:
    """True when one relay hop carries every given id.

    A remote-id matches option 37's whole data (enterprise number + id) or
    the id after the four-octet enterprise number.
    """
    if interface_id is None and remote_id is None and relay_id is None:
        return False
    for opts in hops:
        if interface_id is not None and opts.get(V6_INTERFACE_ID) != interface_id:
            continue
        if relay_id is not None and opts.get(V6_RELAY_ID) != relay_id:
            continue
        if remote_id is not None:
            stored = opts.get(V6_REMOTE_ID)
            if stored is None or remote_id not in (stored, stored[4:]):
                continue
        return True
    return False
