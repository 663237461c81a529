"""CISCO-MAC-NOTIFICATION-MIB: cmnHistMacChangedMsg in cmnMacChangedNotification.

The MIB defines the value as a sequence of 11-octet tuples::

    <operation: 1><VLAN: 2><MAC: 6><dot1dBasePort: 2>

operation 1 = MAC learnt, 2 = MAC removed, 0 = end of the list (the rest of
the value is ignored). VLAN and port are big-endian. The port is the
bridge port (dot1dBasePort), not an ifIndex: BRIDGE-MIB's
dot1dBasePortIfIndex maps one to the other on the switch.

Items: ``{operation: learnt|removed, vlan, mac: aa:bb:cc:dd:ee:ff, port, vendor: cisco}``.
An unknown operation code gives ``operation: "unknown(N)"`` rather than a
silent drop, so a rule filtering on ``removed`` never mistakes it.
"""

from __future__ import annotations

from trapd.decoders import (
    MAC_CHANGE_FIELDS,
    Decoded,
    Item,
    ItemDecoder,
    mac_change_head,
)

CMN_HIST_MAC_CHANGED_MSG = (1, 3, 6, 1, 4, 1, 9, 9, 215, 1, 1, 8, 1, 2)
CMN_MAC_CHANGED_NOTIFICATION = (1, 3, 6, 1, 4, 1, 9, 9, 215, 2, 0, 1)
# Names trapd knows without the site's copy of the MIB, so rules can say
# them (and `trapd check` passes) on a host with only the shipped IETF MIBs.
KNOWN_NAMES = {
    "CISCO-MAC-NOTIFICATION-MIB": (1, 3, 6, 1, 4, 1, 9, 9, 215),
    "CISCO-MAC-NOTIFICATION-MIB::cmnMacChangedNotification": CMN_MAC_CHANGED_NOTIFICATION,
    "CISCO-MAC-NOTIFICATION-MIB::cmnHistMacChangedMsg": CMN_HIST_MAC_CHANGED_MSG,
    "CISCO-MAC-NOTIFICATION-MIB::cmnHistTimestamp": (1, 3, 6, 1, 4, 1, 9, 9, 215, 1, 1, 8, 1, 3),
}
TUPLE = 11


def decode(value: bytes) -> Decoded:
    items: list[Item] = []
    problems: list[str] = []
    pos = 0
    while pos < len(value):
        op = value[pos]
        if op == 0:  # end-of-list marker; agents pad with zeros after it
            break
        chunk = value[pos : pos + TUPLE]
        if len(chunk) < TUPLE:
            problems.append(f"truncated tuple at offset {pos}: {len(chunk)} octets of {TUPLE}")
            break
        items.append(
            {
                **mac_change_head(chunk),
                "port": int.from_bytes(chunk[9:11], "big"),
                "vendor": "cisco",
            }
        )
        pos += TUPLE
    return Decoded(tuple(items), tuple(problems))


FIELDS = {
    **MAC_CHANGE_FIELDS,
    "port": "dot1dBasePort (Cisco; a bridge port number, not an ifIndex)",
    "vendor": "cisco",
}

DECODERS = (
    ItemDecoder(
        kind="mac_changes",
        name="CISCO-MAC-NOTIFICATION-MIB::cmnHistMacChangedMsg",
        oid=CMN_HIST_MAC_CHANGED_MSG,
        decode=decode,
        fields=FIELDS,
    ),
)
