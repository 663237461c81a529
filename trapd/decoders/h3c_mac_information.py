"""H3C / HPE Comware MAC-INFORMATION-MIB: the ``...MACInfoTrapMsgExt`` cells.

HH3C-MAC-INFORMATION-MIB (and its H3C, A3COM-HUAWEI and HPN-ICF twins under
other enterprise numbers) defines ``hh3cMACInfoTrapMsgExt`` as a sequence of
14-octet cells::

    <operationType: 1><VLAN: 2><MAC: 6><MACtype: 1><ifIndex: 4>

operationType 1 = learnt, 2 = removed. Unlike Cisco the cell carries the
ifIndex itself. Only the Ext object is decoded: its format is spelled out in
the MIB; the older ``hh3cMACInfoTrapMsg`` object's format is not pinned
down the same way in the public text, so trapd does not guess at it.

Items: ``{operation, vlan, mac, mac_type, ifindex, vendor: h3c}``.
"""

from __future__ import annotations

from trapd.decoders import (
    MAC_CHANGE_FIELDS,
    Decoded,
    Item,
    ItemDecoder,
    mac_change_head,
)

CELL = 14
MAC_TYPES = {
    0: "unknown",
    1: "learnt",
    2: "config-dynamic",
    3: "config-static",
    4: "blackhole",
    5: "security",
    6: "dot1x",
    7: "mac-authentication",
    8: "voice-vlan",
    9: "reserved",
}

# <module root>.1.4.2.4 = ...MACInfoTrapMsgExt in each twin of the MIB.
ROOTS = {
    "HH3C-MAC-INFORMATION-MIB::hh3cMACInfoTrapMsgExt": (1, 3, 6, 1, 4, 1, 25506, 2, 87),
    "H3C-MAC-INFORMATION-MIB::h3cMACInfoTrapMsgExt": (1, 3, 6, 1, 4, 1, 2011, 10, 2, 87),
    "A3COM-HUAWEI-MAC-INFORMATION-MIB::h3cMACInfoTrapMsgExt": (1, 3, 6, 1, 4, 1, 43, 45, 1, 10, 2, 87),
    "HPN-ICF-MAC-INFORMATION-MIB::hpnicfMACInfoTrapMsgExt": (1, 3, 6, 1, 4, 1, 11, 2, 14, 11, 15, 2, 87),
}
MSG_EXT_SUFFIX = (1, 4, 2, 4)


KNOWN_NAMES = {name: root + MSG_EXT_SUFFIX for name, root in ROOTS.items()} | {
    # ...MACInformationChangedTrapExt: <root>.1.4.0.1
    name.replace("MACInfoTrapMsgExt", "MACInformationChangedTrapExt"): (*root, 1, 4, 0, 1)
    for name, root in ROOTS.items()
}


def decode(value: bytes) -> Decoded:
    items: list[Item] = []
    problems: list[str] = []
    for pos in range(0, len(value), CELL):
        chunk = value[pos : pos + CELL]
        if len(chunk) < CELL:
            problems.append(f"truncated cell at offset {pos}: {len(chunk)} octets of {CELL}")
            break
        items.append(
            {
                **mac_change_head(chunk),
                "mac_type": MAC_TYPES.get(chunk[9], f"unknown({chunk[9]})"),
                "ifindex": int.from_bytes(chunk[10:14], "big"),
                "vendor": "h3c",
            }
        )
    return Decoded(tuple(items), tuple(problems))


FIELDS = {
    **MAC_CHANGE_FIELDS,
    "mac_type": "how the entry was made (learnt, config-static, dot1x, ...; H3C only)",
    "ifindex": "ifIndex of the port (H3C only)",
    "vendor": "h3c",
}

DECODERS = tuple(
    ItemDecoder(kind="mac_changes", name=name, oid=root + MSG_EXT_SUFFIX, decode=decode, fields=FIELDS)
    for name, root in ROOTS.items()
)
