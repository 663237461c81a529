"""Option 82 (relay agent information) as Kea stores it in a lease's user-context.

With ``store-extended-info`` Kea keeps the relay's sub-options in
``user-context.ISC.relay-agent-info``:

- Kea 2.2: a string, ``"0x"`` + hex of the sub-options (code, length, value
  for each; option 82's own code and length are not included), e.g.
  ``0x010867652D302F302F38...`` = sub-option 1 (circuit-id) "ge-0/0/8", ...
- Kea >= 2.4: an object ``{"sub-options": "0x...", "remote-id": HEX, "relay-id": HEX}``;
  circuit-id stays inside sub-options.

Circuit-id is sub-option 1, remote-id sub-option 2 (RFC 3046), relay-id 12 (RFC 6925).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

CIRCUIT_ID = 1
REMOTE_ID = 2
RELAY_ID = 12


@dataclass(frozen=True, slots=True)
class RelayInfo:
    sub_options: dict[int, bytes]

    @property
    def circuit_id(self) -> bytes | None:
        return self.sub_options.get(CIRCUIT_ID)

    @property
    def remote_id(self) -> bytes | None:
        return self.sub_options.get(REMOTE_ID)


def hex_bytes(text: str) -> bytes | None:
    s = text.strip()
    if s[:2].lower() == "0x":
        s = s[2:]
    s = re.sub(r"[:\s-]", "", s)
    try:
        return bytes.fromhex(s)
    except ValueError:
        return None


def parse_sub_options(data: bytes) -> dict[int, bytes]:
    """TLV sub-options; the first of a repeated code wins; a truncated tail is ignored."""
    out: dict[int, bytes] = {}
    i = 0
    while i + 2 <= len(data):
        code, length = data[i], data[i + 1]
        value = data[i + 2 : i + 2 + length]
        if len(value) < length:
            break
        out.setdefault(code, value)
        i += 2 + length
    return out


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


def matches(info: RelayInfo | None, circuit_id: bytes | None, remote_id: bytes | None) -> bool:
    """Every given id must equal the lease's; a lease without relay info never matches."""
    if info is None or (circuit_id is None and remote_id is None):
        return False
    if circuit_id is not None and info.circuit_id != circuit_id:
        return False
    return remote_id is None or info.remote_id == remote_id
