"""MIB resolution: the shipped index, site MIBs compiled offline, problems, the cache."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import trapd.mibs as mibs_mod
from trapd.commands.mibs import describe_name
from trapd.mibs import SHIPPED_INDEX, SITE_INDEX_NAME, MibConfig, MibResolver, load_site_index, shipped_index
from trapd.yamlsource import ConfigError, load_yaml

LINK_DOWN = (1, 3, 6, 1, 6, 3, 1, 1, 5, 3)
IF_INDEX = (1, 3, 6, 1, 2, 1, 2, 2, 1, 1)
IF_OPER_STATUS = (1, 3, 6, 1, 2, 1, 2, 2, 1, 8)

# A vendor-style MIB of our own (CISCO-MAC-NOTIFICATION-MIB is not on this
# machine): imports from SNMPv2-SMI/-TC, IF-MIB and Q-BRIDGE-MIB, none of
# whose sources exist here, so it only compiles through the shipped stubs.
VENDOR_MIB = """
TRAPD-TEST-MIB DEFINITIONS ::= BEGIN

IMPORTS
    MODULE-IDENTITY, OBJECT-TYPE, NOTIFICATION-TYPE, enterprises
        FROM SNMPv2-SMI
    MacAddress, TEXTUAL-CONVENTION
        FROM SNMPv2-TC
    ifIndex
        FROM IF-MIB
    VlanIndex
        FROM Q-BRIDGE-MIB;

trapdTestMIB MODULE-IDENTITY
    LAST-UPDATED "202611280000Z"
    ORGANIZATION "trapd"
    CONTACT-INFO "trapd test suite"
    DESCRIPTION  "A small MIB that the trapd tests compile."
    ::= { enterprises 99999 }

TrapdChange ::= TEXTUAL-CONVENTION
    STATUS      current
    DESCRIPTION "What happened to a MAC address."
    SYNTAX      INTEGER { learnt(1), removed(2) }

trapdTestNotifications OBJECT IDENTIFIER ::= { trapdTestMIB 0 }
trapdTestObjects       OBJECT IDENTIFIER ::= { trapdTestMIB 1 }

trapdMacAddress OBJECT-TYPE
    SYNTAX      MacAddress
    MAX-ACCESS  accessible-for-notify
    STATUS      current
    DESCRIPTION "The MAC address."
    ::= { trapdTestObjects 1 }

trapdMacChange OBJECT-TYPE
    SYNTAX      TrapdChange
    MAX-ACCESS  accessible-for-notify
    STATUS      current
    DESCRIPTION "Learnt or removed."
    ::= { trapdTestObjects 2 }

trapdMacVlan OBJECT-TYPE
    SYNTAX      VlanIndex
    MAX-ACCESS  accessible-for-notify
    STATUS      current
    DESCRIPTION "The VLAN."
    ::= { trapdTestObjects 3 }

trapdMacNotification NOTIFICATION-TYPE
    OBJECTS     { ifIndex, trapdMacAddress, trapdMacChange, trapdMacVlan }
    STATUS      current
    DESCRIPTION "A MAC address was learnt or removed on a port."
    ::= { trapdTestNotifications 1 }

END
"""

# SMIv1, as old switches still ship: TRAP-TYPE becomes enterprise.0.specific.
SMIV1_MIB = """
OLD-VENDOR-MIB DEFINITIONS ::= BEGIN
IMPORTS
    enterprises FROM RFC1155-SMI
    OBJECT-TYPE FROM RFC-1212
    DisplayString FROM RFC1213-MIB
    TRAP-TYPE FROM RFC-1215;

oldVendor     OBJECT IDENTIFIER ::= { enterprises 99998 }
oldVendorPort OBJECT IDENTIFIER ::= { oldVendor 1 }

oldPortName OBJECT-TYPE
    SYNTAX  DisplayString
    ACCESS  read-only
    STATUS  mandatory
    DESCRIPTION "Port name."
    ::= { oldVendorPort 1 }

oldPortFailure TRAP-TYPE
    ENTERPRISE oldVendor
    VARIABLES  { oldPortName }
    DESCRIPTION "A port failed."
    ::= 7
END
"""

# A second SMIv1 module in the same file, importing from RFC1213-MIB (whose
# SMIv2 successors pysmi maps to) and indexed by ifIndex.
SMIV1_MIB_2 = """
OLD2-MIB DEFINITIONS ::= BEGIN
IMPORTS
    enterprises, IpAddress, Counter FROM RFC1155-SMI
    OBJECT-TYPE FROM RFC-1212
    DisplayString, PhysAddress, ifIndex, sysName FROM RFC1213-MIB
    TRAP-TYPE FROM RFC-1215;

old2 OBJECT IDENTIFIER ::= { enterprises 99997 }

old2PortTable OBJECT-TYPE
    SYNTAX  SEQUENCE OF Old2PortEntry
    ACCESS  not-accessible
    STATUS  mandatory
    DESCRIPTION "Ports."
    ::= { old2 1 }

old2PortEntry OBJECT-TYPE
    SYNTAX  Old2PortEntry
    ACCESS  not-accessible
    STATUS  mandatory
    DESCRIPTION "A port."
    INDEX   { ifIndex }
    ::= { old2PortTable 1 }

Old2PortEntry ::= SEQUENCE { old2PortMac PhysAddress, old2PortCount Counter }

old2PortMac OBJECT-TYPE
    SYNTAX  PhysAddress
    ACCESS  read-only
    STATUS  mandatory
    DESCRIPTION "MAC."
    ::= { old2PortEntry 1 }

old2PortCount OBJECT-TYPE
    SYNTAX  Counter
    ACCESS  read-only
    STATUS  mandatory
    DESCRIPTION "Count."
    ::= { old2PortEntry 2 }

old2MacMove TRAP-TYPE
    ENTERPRISE old2
    VARIABLES  { ifIndex, sysName, old2PortMac }
    DESCRIPTION "MAC moved."
    ::= 3
END
"""

BROKEN_MIB = """
BROKEN-MIB DEFINITIONS ::= BEGIN
IMPORTS enterprises FROM SNMPv2-SMI;
brokenThing OBJECT-TYPE
    SYNTAX INTEGER {
    ::= { enterprises 4242 }
END
"""

NEEDS_MISSING_MIB = """
NEEDS-MISSING-MIB DEFINITIONS ::= BEGIN
IMPORTS
    OBJECT-TYPE FROM SNMPv2-SMI
    missingRoot, MissingType FROM NOWHERE-MIB;
needsThing OBJECT-TYPE
    SYNTAX      MissingType
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "Depends on a module nobody has."
    ::= { missingRoot 1 }
END
"""


@pytest.fixture(scope="module")
def shipped() -> MibResolver:
    r = MibResolver.load(MibConfig(dirs=()))
    assert r.problems == []
    return r


def write_site(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    # File names on purpose unlike the module names: sites keep vendor names.
    (d / "vendor-mac-notif.my").write_text(textwrap.dedent(VENDOR_MIB), encoding="utf-8")
    (d / "old-vendor.mib").write_text(textwrap.dedent(SMIV1_MIB) + SMIV1_MIB_2, encoding="utf-8")
    (d / "BROKEN.my").write_text(textwrap.dedent(BROKEN_MIB), encoding="utf-8")
    (d / "needs-missing.txt").write_text(textwrap.dedent(NEEDS_MISSING_MIB), encoding="utf-8")
    (d / "notes.txt").write_text("Not a MIB, just notes.\n", encoding="utf-8")
    (d / "big-arc.my").write_text(textwrap.dedent(BIG_ARC_MIB), encoding="utf-8")
    (d / "portsec.my").write_text(textwrap.dedent(PORT_SECURITY_MIB), encoding="utf-8")
    (d / "README.md").write_text("# ignored without complaint\n", encoding="utf-8")
    return d


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> tuple[MibResolver, Path, Path]:
    base = tmp_path_factory.mktemp("site")
    src, cache = write_site(base / "mibs"), base / "cache"
    r = MibResolver.load(MibConfig(dirs=(src,), cache_dir=cache), compile_in_process=True)
    return r, src, cache


# -- shipped names -------------------------------------------------------------


def test_shipped_index_covers_the_switch_trap_modules() -> None:
    data = json.loads(SHIPPED_INDEX.read_text(encoding="utf-8"))
    modules = {m[0] for m in data["modules"]}
    for m in ("SNMPv2-MIB", "IF-MIB", "BRIDGE-MIB", "Q-BRIDGE-MIB", "ENTITY-MIB", "POWER-ETHERNET-MIB"):
        assert m in modules
    assert len(data["nodes"]) > 20_000


def test_link_down_both_ways(shipped: MibResolver) -> None:
    assert shipped.resolve(LINK_DOWN) == ("IF-MIB::linkDown", ())
    assert shipped.lookup("IF-MIB::linkDown") == LINK_DOWN
    assert shipped.lookup("linkDown") == LINK_DOWN
    assert shipped.lookup("1.3.6.1.6.3.1.1.5.3") == LINK_DOWN
    assert shipped.lookup(".1.3.6.1.6.3.1.1.5.3") == LINK_DOWN
    assert shipped.is_notification(LINK_DOWN)
    assert shipped.is_notification("IF-MIB::linkUp")
    assert not shipped.is_notification(IF_INDEX)
    assert shipped.name_of(LINK_DOWN) == "IF-MIB::linkDown"


def test_if_index_with_instance(shipped: MibResolver) -> None:
    assert shipped.resolve((*IF_INDEX, 17)) == ("IF-MIB::ifIndex", (17,))
    assert shipped.lookup("ifIndex.17") == (*IF_INDEX, 17)
    assert shipped.lookup("IF-MIB::ifIndex.17") == (*IF_INDEX, 17)
    assert shipped.lookup("IF-MIB::ifIndex") == IF_INDEX
    assert shipped.name_of((*IF_INDEX, 17)) == "IF-MIB::ifIndex.17"
    # The column itself (no instance) is the node, with an empty index.
    assert shipped.resolve(IF_INDEX) == ("IF-MIB::ifIndex", ())


def test_scalar_instance_prefers_the_object_over_an_instance_alias(shipped: MibResolver) -> None:
    # DISMAN-EXPRESSION-MIB names 1.3.6.1.2.1.1.3.0 sysUpTimeInstance; rules want sysUpTime.0.
    assert shipped.resolve((1, 3, 6, 1, 2, 1, 1, 3, 0)) == ("SNMPv2-MIB::sysUpTime", (0,))
    assert shipped.resolve((1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0)) == ("SNMPv2-MIB::snmpTrapOID", (0,))


def test_bridge_and_q_bridge_nodes(shipped: MibResolver) -> None:
    fdb_address = (1, 3, 6, 1, 2, 1, 17, 4, 3, 1, 1)
    mac = (0, 27, 44, 61, 78, 95)
    assert shipped.resolve(fdb_address + mac) == ("BRIDGE-MIB::dot1dTpFdbAddress", mac)
    assert shipped.display_hint(fdb_address) == "1x:"
    assert shipped.subtree("BRIDGE-MIB") == (1, 3, 6, 1, 2, 1, 17)
    # Q-BRIDGE-MIB: dot1qTpFdbPort indexed by FDB id and MAC; VLAN static name by VLAN id.
    fdb_port = shipped.lookup("Q-BRIDGE-MIB::dot1qTpFdbPort")
    assert fdb_port == (1, 3, 6, 1, 2, 1, 17, 7, 1, 2, 2, 1, 2)
    assert shipped.resolve((*fdb_port, 10, *mac)) == ("Q-BRIDGE-MIB::dot1qTpFdbPort", (10, *mac))
    assert shipped.resolve((1, 3, 6, 1, 2, 1, 17, 7, 1, 4, 3, 1, 1, 20)) == (
        "Q-BRIDGE-MIB::dot1qVlanStaticName",
        (20,),
    )
    assert shipped.subtree("Q-BRIDGE-MIB") == (1, 3, 6, 1, 2, 1, 17, 7)
    assert shipped.lookup("Q-BRIDGE-MIB::dot1qVlanStaticName.20") == (
        1,
        3,
        6,
        1,
        2,
        1,
        17,
        7,
        1,
        4,
        3,
        1,
        1,
        20,
    )


def test_module_subtree_is_its_module_identity_not_its_notifications(shipped: MibResolver) -> None:
    # docs/rules.md ("Notifications"): {under: MODULE} is the MODULE-IDENTITY subtree plus notifications_of.
    assert shipped.subtree("IF-MIB") == (1, 3, 6, 1, 2, 1, 31)  # ifMIB
    assert shipped.lookup("IF-MIB::linkDown") == (1, 3, 6, 1, 6, 3, 1, 1, 5, 3)  # outside it
    link_down_up = {(1, 3, 6, 1, 6, 3, 1, 1, 5, 3), (1, 3, 6, 1, 6, 3, 1, 1, 5, 4)}
    assert link_down_up <= shipped.notifications_of("IF-MIB")
    assert shipped.notifications_of("snmpTraps") == frozenset()  # a node, not a module
    assert shipped.subtree("SNMPv2-MIB") == (1, 3, 6, 1, 6, 3, 1)  # snmpMIB, which holds snmpTraps
    # Node names and OIDs are their own subtree.
    assert shipped.subtree("snmpTraps") == (1, 3, 6, 1, 6, 3, 1, 1, 5)
    assert shipped.subtree("1.3.6.1.6.3.1.1.5") == (1, 3, 6, 1, 6, 3, 1, 1, 5)
    assert shipped.subtree("RFC1271-MIB") is None  # SMIv1: no MODULE-IDENTITY


def test_docs_list_every_module_whose_notifications_are_outside_its_subtree(shipped: MibResolver) -> None:
    """The table under "Notifications" in docs/rules.md is the shipped index's truth, and its fixes work."""
    data = shipped_index()
    modules = data["modules"]
    notifications: dict[str, list[tuple[int, ...]]] = {}
    for oid, mod_no, _sym, kind, _syn in data["nodes"]:
        if kind == "notification":
            notifications.setdefault(modules[mod_no][0], []).append(tuple(oid))
    outside = {
        name
        for name, _moid, _legacy in modules
        if (sub := shipped.subtree(name)) is not None
        and name in notifications
        and any(n[: len(sub)] != sub for n in notifications[name])
    }
    docs = (Path(__file__).parents[1] / "docs" / "rules.md").read_text()
    section = docs.split("### Notifications", 1)[1].split("\n#", 1)[0]
    rows = [line.split("|")[1:-1] for line in section.splitlines() if line.strip().startswith("| ")]
    table = {cells[0].strip(): cells[-1].strip().strip("`") for cells in rows[1:]}  # module -> instead
    assert set(table) == outside
    for module, instead in table.items():
        prefix = shipped.subtree(str(load_yaml_text(instead)["under"]))
        assert prefix is not None, instead
        assert all(n[: len(prefix)] == prefix for n in notifications[module]), (module, instead)


def load_yaml_text(text: str) -> dict[str, object]:
    import yaml

    value = yaml.safe_load(text)
    assert isinstance(value, dict)
    return value


def test_entity_mib_notification(shipped: MibResolver) -> None:
    assert shipped.resolve((1, 3, 6, 1, 2, 1, 47, 2, 0, 1)) == ("ENTITY-MIB::entConfigChange", ())


def test_enum_values(shipped: MibResolver) -> None:
    expected = {
        "up": 1,
        "down": 2,
        "testing": 3,
        "unknown": 4,
        "dormant": 5,
        "notPresent": 6,
        "lowerLayerDown": 7,
    }
    assert shipped.enum_values("ifOperStatus") == expected
    assert shipped.enum_values("IF-MIB::ifOperStatus") == expected
    assert shipped.enum_values(IF_OPER_STATUS) == expected
    assert shipped.enum_values((*IF_OPER_STATUS, 3)) == expected
    assert shipped.enum_values("ifOperStatus.3") == expected
    assert shipped.enum_values("ifIndex") == {}
    assert shipped.enum_values("noSuchThing") == {}
    assert shipped.enum_values("TruthValue") == {"true": 1, "false": 2}
    # The caller gets a copy: changing it does not change the resolver.
    shipped.enum_values("ifOperStatus")["up"] = 99
    assert shipped.enum_values("ifOperStatus")["up"] == 1


def test_display_hints(shipped: MibResolver) -> None:
    assert shipped.display_hint("MacAddress") == "1x:"
    assert shipped.display_hint("SNMPv2-TC::MacAddress") == "1x:"
    assert shipped.display_hint("ifDescr") == "255a"
    assert shipped.display_hint("ifOperStatus") is None
    assert shipped.display_hint("nothing") is None


def test_unknown_oid_stays_numeric(shipped: MibResolver) -> None:
    assert shipped.resolve((1, 3, 6, 1, 4, 1, 99999, 1, 2)) == ("1.3.6.1.4.1.99999.1.2", ())
    # Below a table row but not a defined column: not an instance of anything.
    assert shipped.resolve((1, 3, 6, 1, 2, 1, 2, 2, 1, 99, 1)) == ("1.3.6.1.2.1.2.2.1.99.1", ())
    # A node that is only a place in the tree keeps its own name, but nothing below it does.
    assert shipped.resolve((1, 3, 6, 1, 4, 1)) == ("SNMPv2-SMI::enterprises", ())
    assert shipped.resolve((1, 3, 6, 1, 4, 1, 424242)) == ("1.3.6.1.4.1.424242", ())
    assert shipped.name_of((1, 3, 6, 1, 4, 1, 424242)) == "1.3.6.1.4.1.424242"
    assert shipped.resolve((2, 5)) == ("2.5", ())
    assert shipped.resolve(()) == ("", ())


def test_lookup_rejects_what_it_cannot_name(shipped: MibResolver) -> None:
    assert shipped.lookup("") is None
    assert shipped.lookup("IF-MIB::noSuchSymbol") is None
    assert shipped.lookup("NO-SUCH-MIB::ifIndex") is None
    assert shipped.lookup("ifIndex.x") is None
    assert shipped.lookup("1.3.x") is None


def test_resolution_cache_is_bounded(shipped: MibResolver, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mibs_mod, "CACHE_LIMIT", 100)
    for i in range(1, 1000):
        assert shipped.resolve((*IF_INDEX, i)) == ("IF-MIB::ifIndex", (i,))
    assert len(shipped._cache) <= 100


# -- configuration ---------------------------------------------------------------


def test_config_from_yaml(tmp_path: Path) -> None:
    node = load_yaml("dirs: [vendor, /abs/mibs]\ncache_dir: cache\n", "trapd.yaml")
    cfg = MibConfig.from_yaml(node, tmp_path)
    assert cfg.dirs == (tmp_path / "vendor", Path("/abs/mibs"))
    assert cfg.source_dirs() == [tmp_path / "vendor", Path("/abs/mibs")]
    assert cfg.cache_path(None) == tmp_path / "cache"
    one = MibConfig.from_yaml(load_yaml("dirs: one\n"), tmp_path)
    assert one.dirs == (tmp_path / "one",)
    assert one.cache_path(Path("/var/lib/trapd")) == Path("/var/lib/trapd/mibs")
    none = MibConfig.from_yaml(load_yaml("dirs: []\n"), tmp_path)
    assert none.source_dirs() == []
    default = MibConfig.from_yaml(None, tmp_path)
    assert default.dirs is None
    assert all(d.is_dir() for d in default.source_dirs())


def test_config_errors_have_positions(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"trapd.yaml:2:1: unknown key 'cache'"):
        MibConfig.from_yaml(load_yaml("dirs: []\ncache: x\n", "trapd.yaml"), tmp_path)
    with pytest.raises(ConfigError, match=r"mibs\.dirs entries"):
        MibConfig.from_yaml(load_yaml("dirs: [1]\n", "trapd.yaml"), tmp_path)


def test_user_cache_when_no_state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    a = MibConfig(dirs=(Path("/a"),)).cache_path(None)
    b = MibConfig(dirs=(Path("/b"),)).cache_path(None)
    assert a is not None and b is not None
    assert a.parent == tmp_path / "trapd" / "mibs"
    assert a != b  # different source sets never share one cache


# -- site MIBs -------------------------------------------------------------------


def test_site_mib_compiled_offline_and_resolved(site: tuple[MibResolver, Path, Path]) -> None:
    r, _src, cache = site
    assert "TRAPD-TEST-MIB" in r.site_modules
    note = r.lookup("TRAPD-TEST-MIB::trapdMacNotification")
    assert note == (1, 3, 6, 1, 4, 1, 99999, 0, 1)
    assert r.resolve(note) == ("TRAPD-TEST-MIB::trapdMacNotification", ())
    assert r.is_notification(note)
    assert r.subtree("TRAPD-TEST-MIB") == (1, 3, 6, 1, 4, 1, 99999)
    # Types that come from modules whose sources are not on this machine.
    assert r.display_hint("trapdMacAddress") == "1x:"
    assert r.syntax("trapdMacAddress") is not None
    assert r.syntax("trapdMacAddress").tc == "SNMPv2-TC::MacAddress"  # type: ignore[union-attr]
    vlan = r.syntax("trapdMacVlan")
    assert vlan is not None and vlan.tc == "Q-BRIDGE-MIB::VlanIndex"
    assert r.enum_values("trapdMacChange") == {"learnt": 1, "removed": 2}
    assert r.resolve((1, 3, 6, 1, 4, 1, 99999, 1, 2, 0)) == ("TRAPD-TEST-MIB::trapdMacChange", (0,))
    # Shipped names are still there.
    assert r.resolve(LINK_DOWN) == ("IF-MIB::linkDown", ())
    assert (cache / "py" / "TRAPD-TEST-MIB.py").is_file()
    assert (cache / SITE_INDEX_NAME).is_file()


def test_smiv1_trap_type_is_enterprise_zero_specific(site: tuple[MibResolver, Path, Path]) -> None:
    r, _src, _cache = site
    assert r.lookup("OLD-VENDOR-MIB::oldPortFailure") == (1, 3, 6, 1, 4, 1, 99998, 0, 7)
    assert r.is_notification((1, 3, 6, 1, 4, 1, 99998, 0, 7))
    assert r.display_hint("oldPortName") == "255a"
    # The second module of that file.
    assert r.lookup("OLD2-MIB::old2MacMove") == (1, 3, 6, 1, 4, 1, 99997, 0, 3)
    mac = r.describe((1, 3, 6, 1, 4, 1, 99997, 1, 1, 1, 5))
    assert mac[:2] == ("OLD2-MIB::old2PortMac", (5,))
    assert mac[2] is not None and mac[2].hint == "1x:"
    count = r.syntax("old2PortCount")
    assert count is not None and count.base == "Counter32"


def test_broken_files_reported_by_file_and_line_and_others_load(
    site: tuple[MibResolver, Path, Path],
) -> None:
    r, src, _cache = site
    problems = "\n".join(map(str, r.problems))
    where = {(Path(p.file or "").name, p.line, p.module): p.message for p in r.problems}
    # A syntax error at pysmi's line; an import nobody has at its FROM; a non-MIB at its start.
    assert where[("BROKEN.my", 6, "BROKEN-MIB")].startswith("Bad grammar"), problems
    needs = where[("needs-missing.txt", 5, "NEEDS-MISSING-MIB")]
    assert needs.startswith("imports from NOWHERE-MIB"), problems
    assert where[("notes.txt", 1, None)].startswith("not a MIB module"), problems
    assert all(p.file is not None and Path(p.file).parent == src for p in r.problems), problems
    assert f"{src / 'BROKEN.my'}:6: BROKEN-MIB: Bad grammar" in problems
    assert "README.md" not in problems
    assert len(r.problems) == 4, problems  # and big-arc.my's (test_an_arc_of_2_to_the_32_is_refused...)
    assert r.lookup("brokenThing") is None
    # The good modules loaded all the same.
    assert r.lookup("trapdMacNotification") is not None
    assert r.lookup("oldPortFailure") is not None


def test_cache_reused_on_second_load(
    site: tuple[MibResolver, Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    _r, src, cache = site
    compiled = cache / "py" / "TRAPD-TEST-MIB.py"
    before = compiled.stat().st_mtime_ns

    def no_compile(*args: object, **kwargs: object) -> None:
        raise AssertionError("recompiled although no source changed")

    import trapd.mibcompile

    monkeypatch.setattr(trapd.mibcompile, "compile_site", no_compile)
    monkeypatch.setattr(mibs_mod, "_compile_in_child", no_compile)
    again = MibResolver.load(MibConfig(dirs=(src,), cache_dir=cache))  # no_compile: never compiled
    assert again.lookup("trapdMacNotification") == (1, 3, 6, 1, 4, 1, 99999, 0, 1)
    # Problems come from the cache too: every start reports them, not only the first.
    assert any(p.file == str(src / "BROKEN.my") and p.line == 6 for p in again.problems)
    assert compiled.stat().st_mtime_ns == before


def test_changed_source_is_recompiled(tmp_path: Path) -> None:
    src = tmp_path / "mibs"
    src.mkdir()
    mib = src / "TRAPD-TEST-MIB.my"
    mib.write_text(textwrap.dedent(VENDOR_MIB), encoding="utf-8")
    cfg = MibConfig(dirs=(src,), cache_dir=tmp_path / "cache")
    shipped = shipped_index()
    first = load_site_index(cfg.source_dirs(), cfg.cache_dir, shipped, in_process=True)
    assert first.compiled and first.problems == []
    assert load_site_index(cfg.source_dirs(), cfg.cache_dir, shipped, in_process=True).compiled is False
    text = textwrap.dedent(VENDOR_MIB).replace("trapdMacVlan", "trapdMacVid")
    mib.write_text(text, encoding="utf-8")
    os.utime(mib, ns=(time.time_ns() + 10**9, time.time_ns() + 10**9))
    again = load_site_index(cfg.source_dirs(), cfg.cache_dir, shipped, in_process=True)
    assert again.compiled
    r = MibResolver.load(cfg)  # the fingerprint matches now: no compile here
    assert r.lookup("trapdMacVid") == (1, 3, 6, 1, 4, 1, 99999, 1, 3)
    assert r.lookup("trapdMacVlan") is None


def test_daemon_compiles_in_a_child_process_into_state_dir(tmp_path: Path) -> None:
    src = tmp_path / "mibs"
    src.mkdir()
    (src / "vendor.my").write_text(textwrap.dedent(VENDOR_MIB), encoding="utf-8")
    state = tmp_path / "state"
    r = MibResolver.load(MibConfig(dirs=(src,)), state_dir=state)
    assert r.problems == []
    assert r.lookup("trapdMacNotification") == (1, 3, 6, 1, 4, 1, 99999, 0, 1)
    assert (state / "mibs" / SITE_INDEX_NAME).is_file()
    assert (state / "mibs" / "py" / "TRAPD-TEST-MIB.py").is_file()


def test_concurrent_first_starts_compile_once(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    src = tmp_path / "mibs"
    src.mkdir()
    (src / "vendor.my").write_text(textwrap.dedent(VENDOR_MIB), encoding="utf-8")
    cache = tmp_path / "cache"
    shipped = shipped_index()
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: load_site_index([src], cache, shipped), range(2)))
    assert sorted(r.compiled for r in results) == [False, True]
    assert all(r.problems == [] and r.index is not None for r in results)
    assert results[0].index == results[1].index


def test_unwritable_cache_still_loads(tmp_path: Path) -> None:
    src = tmp_path / "mibs"
    src.mkdir()
    (src / "vendor.my").write_text(textwrap.dedent(VENDOR_MIB), encoding="utf-8")
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = MibResolver.load(MibConfig(dirs=(src,), cache_dir=blocker / "cache"), compile_in_process=True)
    assert r.lookup("trapdMacNotification") is not None
    assert any("cache" in p.message for p in r.problems)


def test_missing_directory_is_a_problem_not_a_failure(tmp_path: Path) -> None:
    r = MibResolver.load(MibConfig(dirs=(tmp_path / "nope",)))
    assert [p.message for p in r.problems] == [
        f"{tmp_path / 'nope'}: cannot read this MIB directory: No such file or directory"
    ]
    assert r.resolve(LINK_DOWN) == ("IF-MIB::linkDown", ())


def test_lookup_command_describes_both_ways(shipped: MibResolver) -> None:
    info = describe_name(shipped, "ifOperStatus.3")
    assert info["found"] and info["oid"] == "1.3.6.1.2.1.2.2.1.8.3"
    assert info["name"] == "IF-MIB::ifOperStatus.3" and info["kind"] == "column"
    assert info["syntax"]["enums"]["down"] == 2
    back = describe_name(shipped, "1.3.6.1.6.3.1.1.5.3")
    assert back["name"] == "IF-MIB::linkDown" and back["kind"] == "notification"
    tc = describe_name(shipped, "MacAddress")
    assert tc["kind"] == "textual-convention" and tc["syntax"]["hint"] == "1x:"
    assert describe_name(shipped, "1.3.6.1.4.1.99999")["found"] is False
    assert describe_name(shipped, "noSuchName")["found"] is False


def test_lookup_prints_a_module_identity_node(shipped: MibResolver) -> None:
    """`trapd mibs lookup ifMIB` (or IF-MIB::ifMIB, or enterprises.9: CISCO-SMI::cisco) names a
    MODULE-IDENTITY node, whose kind is "module" too: the text printer took it for a module name and
    failed with KeyError: 'notifications' (a traceback)."""
    from trapd.commands.mibs import _text_lines

    for query in ("ifMIB", "IF-MIB::ifMIB", "1.3.6.1.2.1.31"):
        lines = _text_lines(describe_name(shipped, query))
        assert lines == ["IF-MIB::ifMIB = 1.3.6.1.2.1.31", "  kind: module"], lines
    lines = _text_lines(describe_name(shipped, "IF-MIB"))  # the module's name: with its notifications
    assert lines[:2] == ["IF-MIB = 1.3.6.1.2.1.31", "  kind: module"], lines
    assert "IF-MIB::linkDown" in lines[2], lines


# -- the start-up snapshot -----------------------------------------------------------


def test_snapshot_used_on_the_next_start_and_equivalent(site: tuple[MibResolver, Path, Path]) -> None:
    first, src, cache = site
    assert "snapshot" not in first.sources  # the fixture's load compiled
    assert (cache / mibs_mod.SNAPSHOT_NAME).is_file()
    second = MibResolver.load(MibConfig(dirs=(src,), cache_dir=cache))
    assert second.sources[-1] == "snapshot"
    assert second.problems == first.problems
    assert second.site_modules == first.site_modules
    for name in (
        "trapdMacNotification",
        "IF-MIB::linkDown",
        "ifOperStatus.3",
        "oldPortFailure",
        "old2PortMac.5",
    ):
        oid = first.lookup(name)
        assert oid is not None and second.lookup(name) == oid
        assert second.describe(oid) == first.describe(oid)
    assert second.enum_values("trapdMacChange") == {"learnt": 1, "removed": 2}
    assert second.display_hint("MacAddress") == "1x:"
    assert second.subtree("TRAPD-TEST-MIB") == (1, 3, 6, 1, 4, 1, 99999)


def test_damaged_or_stale_snapshot_is_ignored(tmp_path: Path) -> None:
    cfg = MibConfig(dirs=(), cache_dir=tmp_path / "cache")
    MibResolver.load(cfg)
    snap = tmp_path / "cache" / mibs_mod.SNAPSHOT_NAME
    snap.write_bytes(b"\x00garbage")
    r = MibResolver.load(cfg)
    assert "snapshot" not in r.sources and r.problems == []
    assert r.resolve(LINK_DOWN) == ("IF-MIB::linkDown", ())
    # Rewritten by that load; a change in the source directories changes the key.
    assert MibResolver.load(cfg).sources[-1] == "snapshot"
    src = tmp_path / "mibs"
    src.mkdir()
    (src / "notes.txt").write_text("no MIB here\n", encoding="utf-8")
    changed = MibResolver.load(MibConfig(dirs=(src,), cache_dir=tmp_path / "cache"), compile_in_process=True)
    assert "snapshot" not in changed.sources
    assert [str(p) for p in changed.problems] == [
        f"{src / 'notes.txt'}:1: not a MIB module (no 'NAME DEFINITIONS ::= BEGIN')"
    ]


def test_no_snapshot_while_the_site_compile_fails(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "mibs"
    src.mkdir()
    (src / "vendor.my").write_text(textwrap.dedent(VENDOR_MIB), encoding="utf-8")

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("compiler crashed")

    monkeypatch.setattr(mibs_mod, "_compile_in_child", crash)
    cfg = MibConfig(dirs=(src,), cache_dir=tmp_path / "cache")
    r = MibResolver.load(cfg)
    (problem,) = r.problems
    assert str(problem).startswith("MIB compile failed: RuntimeError: compiler crashed; "), problem
    assert "Run `trapd mibs compile`" in str(problem)
    assert r.resolve(LINK_DOWN) == ("IF-MIB::linkDown", ())  # shipped names still work
    assert not (tmp_path / "cache" / mibs_mod.SNAPSHOT_NAME).exists()


# -- the command line -------------------------------------------------------------------


def test_cli_compile_force_waits_for_a_compile_under_way(tmp_path: Path) -> None:
    """--force empties the cache only under the compile lock: it deleted the site index and the
    compiled modules while a running trapd's compile was writing them (a compile at start-up, a
    reload), which then recorded an index of modules that were no longer there."""
    import fcntl
    import subprocess
    import sys

    src, cache = write_site(tmp_path / "mibs"), tmp_path / "cache"
    MibResolver.load(MibConfig(dirs=(src,), cache_dir=cache), compile_in_process=True)
    index = cache / "site-index.json"
    assert index.exists()
    config = tmp_path / "trapd.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nmibs:\n  dirs: [{src}]\n  cache_dir: {cache}\n")
    fd = os.open(cache / ".compile.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # a compile under way (the daemon's, or its child's)
        cmd = [sys.executable, "-m", "trapd", "mibs", "compile", "--force", "--config", str(config)]
        child = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            deadline = time.monotonic() + 3  # long enough for the child to reach the cache
            while time.monotonic() < deadline and child.poll() is None:
                assert index.exists(), "--force deleted the cache under a running compile"
                time.sleep(0.05)
            assert child.poll() is None  # it waits for the lock
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
        out, _ = child.communicate(timeout=120)
    finally:
        os.close(fd)
        if child.poll() is None:
            child.kill()
    assert child.returncode == 0, out
    assert "TRAPD-TEST-MIB" in out and index.exists()


def test_cli_compile_and_lookup(
    site: tuple[MibResolver, Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from trapd.cli import main as cli

    _r, src, cache = site
    config = tmp_path / "trapd.yaml"
    config.write_text(f"state_dir: {tmp_path / 'state'}\nmibs:\n  dirs: [{src}]\n  cache_dir: {cache}\n")
    assert cli(["mibs", "compile", "--config", str(config)]) == 0
    out, _ = capsys.readouterr()
    assert "TRAPD-TEST-MIB" in out and "OLD-VENDOR-MIB" in out and "OLD2-MIB" in out
    assert f"{src / 'BROKEN.my'}:6: BROKEN-MIB: Bad grammar" in out
    assert cli(["mibs", "compile", "--config", str(config), "--strict"]) == 1
    capsys.readouterr()

    assert (
        cli(["mibs", "lookup", "--config", str(config), "--json", "trapdMacChange.0", "1.3.6.1.6.3.1.1.5.3"])
        == 0
    )
    first, second = (json.loads(line) for line in capsys.readouterr().out.splitlines())
    assert first["oid"] == "1.3.6.1.4.1.99999.1.2.0" and first["name"] == "TRAPD-TEST-MIB::trapdMacChange.0"
    assert first["syntax"]["enums"] == {"learnt": 1, "removed": 2}
    assert second["name"] == "IF-MIB::linkDown"
    assert cli(["mibs", "lookup", "--config", str(config), "ifOperStatus", "noSuchThing"]) == 1
    text = capsys.readouterr().out
    assert "IF-MIB::ifOperStatus = 1.3.6.1.2.1.2.2.1.8" in text
    assert "values: up(1), down(2)" in text
    assert "noSuchThing: unknown" in text


# -- vendor bundles with a module missing -----------------------------------------

# As CISCO-MAC-NOTIFICATION-MIB does: a TC (used only as a SYNTAX) from a module the
# site did not bring. pysmi compiles such a module; it is pysnmp that cannot load it.
NEEDS_TC_MIB = """
NEEDS-TC-MIB DEFINITIONS ::= BEGIN
IMPORTS
    MODULE-IDENTITY, OBJECT-TYPE, enterprises FROM SNMPv2-SMI
    Percent
        FROM VENDOR-QOS-PIB-MIB;

needsTc MODULE-IDENTITY
    LAST-UPDATED "202612070000Z"
    ORGANIZATION "trapd"
    CONTACT-INFO "trapd test suite"
    DESCRIPTION  "Uses a TC from a module that is not there."
    ::= { enterprises 99996 }

needsTcLoad OBJECT-TYPE
    SYNTAX      Percent
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "A load."
    ::= { needsTc 1 }
END
"""

# Imports from NEEDS-TC-MIB, which compiles but does not load.
USES_NEEDS_TC_MIB = """
USES-NEEDS-TC-MIB DEFINITIONS ::= BEGIN
IMPORTS
    OBJECT-TYPE FROM SNMPv2-SMI
    needsTc FROM NEEDS-TC-MIB;

usesNeedsTcThing OBJECT-TYPE
    SYNTAX      INTEGER
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "Below a module that does not load."
    ::= { needsTc 2 }
END
"""


# TCs from a missing module, used with a range, an enumeration, a SIZE, and one trapd ships.
NEEDS_TC2_MIB = """
NEEDS-TC2-MIB DEFINITIONS ::= BEGIN
IMPORTS
    MODULE-IDENTITY, OBJECT-TYPE, NOTIFICATION-TYPE, enterprises FROM SNMPv2-SMI
    Percent, VendorState, VendorName, MacAddress
        FROM VENDOR-TC3;

needsTc2 MODULE-IDENTITY
    LAST-UPDATED "202612070000Z"
    ORGANIZATION "trapd"
    CONTACT-INFO "trapd test suite"
    DESCRIPTION  "Uses TCs from a module that is not there."
    ::= { enterprises 99986 }

needsTcLoad OBJECT-TYPE
    SYNTAX      Percent (0..100)
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "A load."
    ::= { needsTc2 1 }

needsTcState OBJECT-TYPE
    SYNTAX      VendorState { up(1), down(2) }
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "A state."
    DEFVAL      { up }
    ::= { needsTc2 2 }

needsTcName OBJECT-TYPE
    SYNTAX      VendorName (SIZE (0..32))
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "A name."
    ::= { needsTc2 3 }

needsTcMac OBJECT-TYPE
    SYNTAX      MacAddress
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "A MAC."
    ::= { needsTc2 4 }

needsTcEvent NOTIFICATION-TYPE
    OBJECTS     { needsTcLoad, needsTcState }
    STATUS      current
    DESCRIPTION "An event."
    ::= { needsTc2 0 1 }
END
"""


def test_a_module_missing_only_a_tc_loads_with_a_warning_at_its_from_line(tmp_path: Path) -> None:
    """A vendor bundle without the module a TC comes from (CISCO-MAC-NOTIFICATION-MIB and
    VENDOR-QOS-PIB-MIB's Percent): net-snmp loads the module anyway. So does trapd, with a warning
    at the FROM line that needs the missing module, taking the TC as the base its use shows (a SIZE:
    OCTET STRING; a range or enumeration: INTEGER; a TC of that name trapd ships: that TC's). The
    module's notifications and objects are usable, and so are those of a module importing from it."""
    src = tmp_path / "mibs"
    src.mkdir()
    (src / "needs-tc.my").write_text(textwrap.dedent(NEEDS_TC_MIB), encoding="utf-8")
    (src / "uses-needs-tc.my").write_text(textwrap.dedent(USES_NEEDS_TC_MIB), encoding="utf-8")
    (src / "good.my").write_text(textwrap.dedent(VENDOR_MIB), encoding="utf-8")
    (src / "needs-tc2.my").write_text(textwrap.dedent(NEEDS_TC2_MIB), encoding="utf-8")
    r = MibResolver.load(MibConfig(dirs=(src,), cache_dir=tmp_path / "cache"), compile_in_process=True)
    report = "\n".join(map(str, r.problems))
    assert "Traceback" not in report and len(report) < 1200, report
    assert (
        f"{src / 'needs-tc.my'}:6: NEEDS-TC-MIB: imports Percent from VENDOR-QOS-PIB-MIB, which is neither"
        in (report)
    )
    assert "loaded with Percent as OCTET STRING (its base type is unknown)" in report
    assert (
        f"{src / 'needs-tc2.my'}:6: NEEDS-TC2-MIB: imports Percent, VendorState, VendorName, MacAddress from"
        in (report)
    )
    taken = (
        "Percent as INTEGER, VendorState as INTEGER, VendorName as OCTET STRING, MacAddress as SNMPv2-TC::"
    )
    assert taken + "MacAddress" in report
    assert len(r.problems) == 2, report
    assert r.lookup("trapdMacNotification") is not None  # the others load all the same
    assert r.lookup("NEEDS-TC-MIB::needsTcLoad") == (1, 3, 6, 1, 4, 1, 99996, 1)
    assert r.lookup("USES-NEEDS-TC-MIB::usesNeedsTcThing") == (1, 3, 6, 1, 4, 1, 99996, 2)
    assert r.is_notification("NEEDS-TC2-MIB::needsTcEvent")
    assert r.enum_values("NEEDS-TC2-MIB::needsTcState") == {"up": 1, "down": 2}
    assert r.display_hint("NEEDS-TC2-MIB::needsTcMac") == "1x:"

    # The missing module arrives (a file older than the stand-in compiled for it): it replaces the stand-in.
    (src / "qos.my").write_text(textwrap.dedent(VENDOR_QOS_MIB), encoding="utf-8")
    os.utime(src / "qos.my", (time.time() - 86400, time.time() - 86400))
    again = MibResolver.load(MibConfig(dirs=(src,), cache_dir=tmp_path / "cache"), compile_in_process=True)
    assert [p.module for p in again.problems] == ["NEEDS-TC2-MIB"], again.problems
    load = again.syntax("NEEDS-TC-MIB::needsTcLoad")
    assert load is not None and load.base == "Unsigned32" and load.tc == "VENDOR-QOS-PIB-MIB::Percent", load


VENDOR_QOS_MIB = """
VENDOR-QOS-PIB-MIB DEFINITIONS ::= BEGIN
IMPORTS
    Unsigned32 FROM SNMPv2-SMI
    TEXTUAL-CONVENTION FROM SNMPv2-TC;

Percent ::= TEXTUAL-CONVENTION
    DISPLAY-HINT "d"
    STATUS       current
    DESCRIPTION  "A percentage."
    SYNTAX       Unsigned32 (0..100)
END
"""


@pytest.mark.parametrize(
    ("encoding", "bom"),
    [("utf-8", b"\xef\xbb\xbf"), ("utf-16-le", b"\xff\xfe"), ("utf-16-be", b"\xfe\xff")],
)
def test_a_mib_saved_with_a_byte_order_mark_compiles(tmp_path: Path, encoding: str, bom: bytes) -> None:
    """Windows editors save MIBs with a BOM (UTF-8) or as UTF-16: the module is still found
    and compiled, and a problem in such a file still gets its line."""
    src = tmp_path / "mibs"
    src.mkdir()
    (src / "vendor.my").write_bytes(bom + textwrap.dedent(VENDOR_MIB).lstrip().encode(encoding))
    broken = textwrap.dedent(BROKEN_MIB).lstrip()
    (src / "broken.my").write_bytes(bom + broken.encode(encoding))
    r = MibResolver.load(MibConfig(dirs=(src,), cache_dir=tmp_path / "cache"), compile_in_process=True)
    assert r.lookup("TRAPD-TEST-MIB::trapdMacNotification") == (1, 3, 6, 1, 4, 1, 99999, 0, 1)
    assert r.enum_values("trapdMacChange") == {"learnt": 1, "removed": 2}
    assert [(Path(p.file or "").name, p.line, p.module) for p in r.problems] == [
        ("broken.my", 5, "BROKEN-MIB")
    ], r.problems


# As CISCO-FLASH-MIB (and 64 other Cisco modules) do: a DEFVAL that names a label of an
# imported TC. pysmi needs the TC's enumeration from INET-ADDRESS-MIB's stub for that.
DEFVAL_LABEL_MIB = """
DEFVAL-LABEL-MIB DEFINITIONS ::= BEGIN
IMPORTS
    MODULE-IDENTITY, OBJECT-TYPE, enterprises FROM SNMPv2-SMI
    InetAddressType, InetAddress FROM INET-ADDRESS-MIB;

defvalLabel MODULE-IDENTITY
    LAST-UPDATED "202612070000Z"
    ORGANIZATION "trapd"
    CONTACT-INFO "trapd test suite"
    DESCRIPTION  "A DEFVAL naming an imported TC's label."
    ::= { enterprises 99995 }

defvalServerType OBJECT-TYPE
    SYNTAX      InetAddressType
    MAX-ACCESS  read-write
    STATUS      current
    DESCRIPTION "Server address type."
    DEFVAL      { ipv4 }
    ::= { defvalLabel 1 }

defvalServer OBJECT-TYPE
    SYNTAX      InetAddress
    MAX-ACCESS  read-write
    STATUS      current
    DESCRIPTION "Server address."
    ::= { defvalLabel 2 }
END
"""


def test_a_defval_label_of_a_shipped_tc_compiles(tmp_path: Path) -> None:
    src = tmp_path / "mibs"
    src.mkdir()
    (src / "defval.my").write_text(textwrap.dedent(DEFVAL_LABEL_MIB), encoding="utf-8")
    r = MibResolver.load(MibConfig(dirs=(src,), cache_dir=tmp_path / "cache"), compile_in_process=True)
    assert r.problems == [], "\n".join(map(str, r.problems))
    assert r.enum_values("DEFVAL-LABEL-MIB::defvalServerType")["ipv4"] == 1


def test_every_shipped_stub_is_valid_smi() -> None:
    """The stubs stand in for the shipped modules' sources: pysmi must accept each one."""
    from pysmi.parser.smi import parserFactory

    from trapd.mibcompile import StubSet

    shipped = shipped_index()
    tcs = [(module_no, name) for module_no, name, _syntax in shipped["tcs"]]
    assert len(tcs) == len(set(tcs)), "a TC indexed twice (a module loaded twice by build-index)"
    stubs = StubSet(shipped)
    parser = parserFactory()()
    bad = {}
    for name in sorted(stubs.names):
        text = stubs.text(name)
        try:
            parser.parse(text)
        except Exception as exc:
            bad[name] = str(exc)
        defined = [line.split()[0] for line in text.splitlines() if " ::= " in line]
        if len(defined) != len(set(defined)):
            bad.setdefault(name, "a symbol defined twice")
    assert bad == {}


# A vendor TC module, and modules that import from it as Cisco's do.
VENDOR_TC_MIB = """
VENDOR-TC DEFINITIONS ::= BEGIN
IMPORTS
    MODULE-IDENTITY, Unsigned32, enterprises FROM SNMPv2-SMI
    TEXTUAL-CONVENTION FROM SNMPv2-TC;

vendorTc MODULE-IDENTITY
    LAST-UPDATED "202612070000Z"
    ORGANIZATION "trapd"
    CONTACT-INFO "trapd test suite"
    DESCRIPTION  "TCs, re-exporting nothing."
    ::= { enterprises 99994 }

VendorLevel ::= TEXTUAL-CONVENTION
    STATUS      current
    DESCRIPTION "A level."
    SYNTAX      Unsigned32 (0..255)
END
"""

# As CISCO-ENTITY-ALARM-MIB does ("Unsigned32 FROM CISCO-TC"): a base type imported from the
# module whose TCs use it, and a TC from a module that is in the directory but does not compile.
VENDOR_ALARM_MIB = """
VENDOR-ALARM-MIB DEFINITIONS ::= BEGIN
IMPORTS
    MODULE-IDENTITY, OBJECT-TYPE, NOTIFICATION-TYPE, enterprises FROM SNMPv2-SMI
    VendorLevel, Unsigned32
        FROM VENDOR-TC;

vendorAlarm MODULE-IDENTITY
    LAST-UPDATED "202612070000Z"
    ORGANIZATION "trapd"
    CONTACT-INFO "trapd test suite"
    DESCRIPTION  "Alarms."
    ::= { enterprises 99993 }

vendorAlarmSeverity OBJECT-TYPE
    SYNTAX      Unsigned32
    MAX-ACCESS  accessible-for-notify
    STATUS      current
    DESCRIPTION "Severity."
    ::= { vendorAlarm 1 }

vendorAlarmLevel OBJECT-TYPE
    SYNTAX      VendorLevel
    MAX-ACCESS  accessible-for-notify
    STATUS      current
    DESCRIPTION "Level."
    ::= { vendorAlarm 2 }

vendorAlarmAsserted NOTIFICATION-TYPE
    OBJECTS     { vendorAlarmSeverity, vendorAlarmLevel }
    STATUS      current
    DESCRIPTION "An alarm."
    ::= { vendorAlarm 0 1 }
END
"""


def test_a_base_type_imported_from_a_vendor_tc_module_loads(tmp_path: Path) -> None:
    """CISCO-ENTITY-ALARM-MIB imports Unsigned32 FROM CISCO-TC, which only imports it itself:
    net-snmp accepts that, and so must trapd (the module failed with 'No symbol')."""
    src = tmp_path / "mibs"
    src.mkdir()
    (src / "VENDOR-TC").write_text(textwrap.dedent(VENDOR_TC_MIB), encoding="utf-8")
    (src / "VENDOR-ALARM-MIB").write_text(textwrap.dedent(VENDOR_ALARM_MIB), encoding="utf-8")
    r = MibResolver.load(MibConfig(dirs=(src,), cache_dir=tmp_path / "cache"), compile_in_process=True)
    assert r.problems == [], "\n".join(map(str, r.problems))
    assert r.is_notification("VENDOR-ALARM-MIB::vendorAlarmAsserted")
    severity = r.syntax("vendorAlarmSeverity")
    assert severity is not None and severity.base == "Unsigned32"


def test_an_import_from_a_present_but_broken_module_or_of_an_undefined_symbol_is_named(
    tmp_path: Path,
) -> None:
    src = tmp_path / "mibs"
    src.mkdir()
    # VENDOR-TC is there, but does not compile: not "neither shipped nor in the MIB directories".
    broken_tc = textwrap.dedent(VENDOR_TC_MIB).replace("SYNTAX      Unsigned32 (0..255)", "SYNTAX (")
    (src / "VENDOR-TC").write_text(broken_tc, encoding="utf-8")
    (src / "VENDOR-ALARM-MIB").write_text(textwrap.dedent(VENDOR_ALARM_MIB), encoding="utf-8")
    # A TC that the module it is imported from does not define (a MIB newer than its TC module).
    needs_undefined = textwrap.dedent(NEEDS_TC_MIB).replace("VENDOR-QOS-PIB-MIB", "VENDOR-TC2")
    (src / "NEEDS-TC-MIB").write_text(needs_undefined, encoding="utf-8")
    tc2 = textwrap.dedent(VENDOR_TC_MIB).replace("VENDOR-TC ", "VENDOR-TC2 ").replace("99994", "99992")
    (src / "VENDOR-TC2").write_text(tc2, encoding="utf-8")
    r = MibResolver.load(MibConfig(dirs=(src,), cache_dir=tmp_path / "cache"), compile_in_process=True)
    report = {(Path(p.file or "").name, p.line, p.module): p.message for p in r.problems}
    text = "\n".join(map(str, r.problems))
    assert report[("VENDOR-ALARM-MIB", 6, "VENDOR-ALARM-MIB")].startswith(
        "imports from VENDOR-TC, which failed to compile"
    ), text
    assert report[("NEEDS-TC-MIB", 6, "NEEDS-TC-MIB")] == (
        "imports Percent from VENDOR-TC2, which does not define it"
    ), text
    assert ("VENDOR-TC", 17, "VENDOR-TC") in report, text
    assert len(report) == 3, text


def test_a_compile_that_runs_out_of_time_is_not_retried_at_every_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A MIB bundle too big to compile within COMPILE_TIMEOUT: the daemon's child is stopped, the
    problem says what to do, and the next start does not spend that time again for nothing.
    `trapd mibs compile` (in process, no time limit) still compiles it, and then it is used."""
    src = tmp_path / "mibs"
    src.mkdir()
    (src / "vendor.my").write_text(textwrap.dedent(VENDOR_MIB), encoding="utf-8")
    cache = tmp_path / "cache"
    shipped = shipped_index()
    monkeypatch.setattr(mibs_mod, "COMPILE_TIMEOUT", 0.05)
    calls: list[float] = []
    first = load_site_index([src], cache, shipped, progress=calls.append)
    assert first.index is None and first.compiled
    (problem,) = first.problems
    assert "took longer than" in problem.message and "trapd mibs compile" in problem.message, problem
    assert calls and calls[0] == 0.0  # told when the compile began

    real_child = mibs_mod._compile_in_child

    def no_compile(*args: object, **kwargs: object) -> None:
        raise AssertionError("the compile that ran out of time was tried again")

    monkeypatch.setattr(mibs_mod, "_compile_in_child", no_compile)
    again = load_site_index([src], cache, shipped)
    assert again.index is None and not again.compiled and again.problems == first.problems

    # `trapd mibs compile` compiles it regardless, and the daemon's next start uses that.
    tool = load_site_index([src], cache, shipped, in_process=True)
    assert tool.index is not None and tool.problems == []
    monkeypatch.setattr(mibs_mod, "_compile_in_child", real_child)
    r = MibResolver.load(MibConfig(dirs=(src,), cache_dir=cache))
    assert r.lookup("trapdMacNotification") is not None and r.problems == []


# As Debian's NET-SNMP-PASS-MIB and Cisco's LWAPP MIBs do: SMI base types used without importing them.
UNIMPORTED_TYPES_MIB = """
UNIMPORTED-TYPES-MIB DEFINITIONS ::= BEGIN
IMPORTS
    MODULE-IDENTITY, OBJECT-TYPE, enterprises FROM SNMPv2-SMI;

unimported MODULE-IDENTITY
    LAST-UPDATED "202612070000Z"
    ORGANIZATION "trapd"
    CONTACT-INFO "trapd test suite"
    DESCRIPTION  "Counter32 and Counter64 used, never imported."
    ::= { enterprises 99991 }

unimportedPackets OBJECT-TYPE
    SYNTAX      Counter32
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "Packets."
    ::= { unimported 1 }

unimportedOctets OBJECT-TYPE
    SYNTAX      Counter64
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "Octets."
    ::= { unimported 2 }
END
"""


def test_base_types_used_without_import_compile_as_net_snmp_takes_them(tmp_path: Path) -> None:
    """net-snmp loads a MIB that uses Counter64 without importing it; pysmi refused it ("Unknown
    parents for symbols"), so Debian's own NET-SNMP-PASS-MIB and four of Cisco's wireless MIBs
    did not load. The file is left as it is; only what pysmi reads gets the import."""
    src = tmp_path / "mibs"
    src.mkdir()
    mib = src / "unimported.my"
    mib.write_text(textwrap.dedent(UNIMPORTED_TYPES_MIB), encoding="utf-8")
    before = mib.read_bytes()
    broken = textwrap.dedent(UNIMPORTED_TYPES_MIB).replace("UNIMPORTED-TYPES-MIB", "ALSO-BROKEN-MIB")
    broken = broken.replace("99991", "99990").replace('"Octets."', '"Octets.')
    (src / "also-broken.my").write_text(broken, encoding="utf-8")
    r = MibResolver.load(MibConfig(dirs=(src,), cache_dir=tmp_path / "cache"), compile_in_process=True)
    octets = r.syntax("UNIMPORTED-TYPES-MIB::unimportedOctets")
    assert octets is not None and octets.base == "Counter64"
    packets = r.syntax("UNIMPORTED-TYPES-MIB::unimportedPackets")
    assert packets is not None and packets.base == "Counter32"
    assert mib.read_bytes() == before
    # Lines in an error are still the file's own: the import went onto the IMPORTS line.
    assert [(Path(p.file or "").name, p.line) for p in r.problems] == [("also-broken.my", 24)], r.problems


@pytest.mark.skipif(
    not Path("/usr/share/snmp/mibs/NET-SNMP-PASS-MIB.txt").is_file(), reason="no net-snmp MIBs"
)
def test_debians_net_snmp_pass_mib_compiles(tmp_path: Path) -> None:
    r = MibResolver.load(
        MibConfig(dirs=(Path("/usr/share/snmp/mibs"),), cache_dir=tmp_path), compile_in_process=True
    )
    assert r.problems == [], "\n".join(map(str, r.problems))
    counter = r.syntax("NET-SNMP-PASS-MIB::netSnmpPassCounter64")
    assert counter is not None and counter.base == "Counter64"


def test_a_symlink_loop_or_dangling_link_in_a_mib_directory_is_named_and_the_rest_loads(
    tmp_path: Path,
) -> None:
    """A symlink loop in /usr/share/snmp/mibs (a default directory) raised ELOOP out of the scan:
    trapd did not start, and `trapd mibs compile` died with a traceback."""
    src = tmp_path / "mibs"
    src.mkdir()
    (src / "vendor.my").write_text(textwrap.dedent(VENDOR_MIB), encoding="utf-8")
    (src / "loop-a").symlink_to("loop-b")
    (src / "loop-b").symlink_to("loop-a")
    (src / "moved.my").symlink_to(tmp_path / "elsewhere" / "moved.my")
    (src / "here").symlink_to(".")
    os.mkfifo(src / "pipe.my")
    r = MibResolver.load(MibConfig(dirs=(src,), cache_dir=tmp_path / "cache"), compile_in_process=True)
    assert r.lookup("TRAPD-TEST-MIB::trapdMacNotification") is not None
    got = sorted((Path(p.file or "").name, p.line, p.message.split(":")[0]) for p in r.problems)
    assert got == [("loop-a", 1, "cannot read"), ("loop-b", 1, "cannot read"), ("moved.my", 1, "cannot read")]
    assert "symbolic links" in str(r.problems[0]) or "symbolic links" in str(r.problems[1])
    again = MibResolver.load(MibConfig(dirs=(src,), cache_dir=tmp_path / "cache"))  # a daemon's start
    assert again.lookup("TRAPD-TEST-MIB::trapdMacNotification") is not None


def test_a_symbol_defined_twice_is_reported_at_its_second_definition(tmp_path: Path) -> None:
    """JUNIPER-CHASSIS-DEFINES-MIB defines jnxSlotMX2010 twice: the report pointed at the module's
    DEFINITIONS line (13) of a 9,000-line file; the place to fix is the second definition."""
    src = tmp_path / "mibs"
    src.mkdir()
    text = textwrap.dedent(VENDOR_MIB).replace(
        "END\n",
        "trapdTestObjects OBJECT IDENTIFIER ::= { trapdTestMIB 7 }\n\nEND\n",
    )
    (src / "twice.my").write_text(text, encoding="utf-8")
    line = text.splitlines().index("trapdTestObjects OBJECT IDENTIFIER ::= { trapdTestMIB 7 }") + 1
    r = MibResolver.load(MibConfig(dirs=(src,), cache_dir=tmp_path / "cache"), compile_in_process=True)
    assert [(p.line, p.message) for p in r.problems] == [(line, "Duplicate symbol found: trapdTestObjects")]


def test_a_symbol_a_shipped_module_lacks_is_named_not_called_missing_module(tmp_path: Path) -> None:
    """CHIPDOT1D-MIB imports DisplayString FROM RFC1155-SMI, which trapd ships (as a stub) and which
    does not define it: the report said RFC1155-SMI was 'neither shipped nor in the MIB directories'."""
    src = tmp_path / "mibs"
    src.mkdir()
    text = (
        textwrap.dedent(SMIV1_MIB)
        .replace("    DisplayString FROM RFC1213-MIB\n", "")
        .replace("enterprises FROM RFC1155-SMI", "enterprises, DisplayString FROM RFC1155-SMI")
    )
    (src / "chip.mib").write_text(text, encoding="utf-8")
    line = text.splitlines().index("    enterprises, DisplayString FROM RFC1155-SMI") + 1
    r = MibResolver.load(MibConfig(dirs=(src,), cache_dir=tmp_path / "cache"), compile_in_process=True)
    assert [(p.line, p.message) for p in r.problems] == [
        (line, "imports DisplayString from RFC1155-SMI, which does not define it")
    ], r.problems


# What net-snmp reads and strict SMIv2 does not (seen in vendor bundles): an enumeration label in
# upper case, a comma after the last SEQUENCE entry, and one after the last import of a clause.
LOOSE_MIB = """
LOOSE-MIB DEFINITIONS ::= BEGIN
IMPORTS
    MODULE-IDENTITY, OBJECT-TYPE, Integer32, enterprises, FROM SNMPv2-SMI;

loose MODULE-IDENTITY
    LAST-UPDATED "202612070000Z"
    ORGANIZATION "trapd"
    CONTACT-INFO "trapd test suite"
    DESCRIPTION  "Loosely written."
    ::= { enterprises 99989 }

looseTable OBJECT-TYPE
    SYNTAX      SEQUENCE OF LooseEntry
    MAX-ACCESS  not-accessible
    STATUS      current
    DESCRIPTION "Rows."
    ::= { loose 1 }

looseEntry OBJECT-TYPE
    SYNTAX      LooseEntry
    MAX-ACCESS  not-accessible
    STATUS      current
    DESCRIPTION "A row."
    INDEX       { looseIndex }
    ::= { looseTable 1 }

LooseEntry ::= SEQUENCE {
    looseIndex  Integer32,
    looseMode   INTEGER,
}

looseIndex OBJECT-TYPE
    SYNTAX      Integer32 (1..100)
    MAX-ACCESS  not-accessible
    STATUS      current
    DESCRIPTION "Index."
    ::= { looseEntry 1 }

looseMode OBJECT-TYPE
    SYNTAX      INTEGER { AUTO(1), manual(2) }
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "Mode."
    ::= { looseEntry 2 }
END
"""


def test_loosely_written_vendor_mibs_compile_as_net_snmp_reads_them(tmp_path: Path) -> None:
    src = tmp_path / "mibs"
    src.mkdir()
    (src / "loose.my").write_text(textwrap.dedent(LOOSE_MIB), encoding="utf-8")
    r = MibResolver.load(MibConfig(dirs=(src,), cache_dir=tmp_path / "cache"), compile_in_process=True)
    assert r.problems == [], "\n".join(map(str, r.problems))
    assert r.enum_values("LOOSE-MIB::looseMode") == {"AUTO": 1, "manual": 2}


# As printer and server vendors' SMIv1 MIBs are (HP's LaserJet MIBs, ADAPTECSCSI-MIB): enterprises
# and TRAP-TYPE used without importing them. net-snmp reads them; pysmi did not.
UNDECLARED_V1_MIB = """
UNDECLARED-V1-MIB DEFINITIONS ::= BEGIN
IMPORTS
    OBJECT-TYPE FROM RFC-1212;

undeclared OBJECT IDENTIFIER ::= { enterprises 99987 }

undeclaredState OBJECT-TYPE
    SYNTAX  INTEGER { ok(1), failed(2) }
    ACCESS  read-only
    STATUS  mandatory
    DESCRIPTION "State."
    ::= { undeclared 1 }

undeclaredFailed TRAP-TYPE
    ENTERPRISE undeclared
    VARIABLES  { undeclaredState }
    DESCRIPTION "Failed."
    ::= 2
END
"""


def test_enterprises_and_trap_type_used_without_import_compile(tmp_path: Path) -> None:
    src = tmp_path / "mibs"
    src.mkdir()
    (src / "undeclared.mib").write_text(textwrap.dedent(UNDECLARED_V1_MIB), encoding="utf-8")
    no_imports = textwrap.dedent(UNDECLARED_V1_MIB).replace("UNDECLARED-V1-MIB", "NO-IMPORTS-MIB")
    no_imports = no_imports.replace("IMPORTS\n    OBJECT-TYPE FROM RFC-1212;\n", "").replace("99987", "99986")
    (src / "no-imports.mib").write_text(no_imports, encoding="utf-8")
    r = MibResolver.load(MibConfig(dirs=(src,), cache_dir=tmp_path / "cache"), compile_in_process=True)
    assert r.problems == [], "\n".join(map(str, r.problems))
    assert r.lookup("UNDECLARED-V1-MIB::undeclaredFailed") == (1, 3, 6, 1, 4, 1, 99987, 0, 2)
    assert r.is_notification("NO-IMPORTS-MIB::undeclaredFailed")
    assert r.enum_values("NO-IMPORTS-MIB::undeclaredState") == {"ok": 1, "failed": 2}


def test_lookup_of_a_module_name_says_whether_it_is_loaded(
    shipped: MibResolver, capsys: pytest.CaptureFixture[str]
) -> None:
    """Rules take module names (`under: IF-MIB`); `trapd mibs lookup IF-MIB`, the way to ask whether a
    vendor's module loaded, answered 'unknown (no loaded MIB names it)' for every module."""
    from trapd.commands.mibs import _text_lines

    info = describe_name(shipped, "IF-MIB")
    assert info["found"] and info["kind"] == "module" and info["name"] == "IF-MIB"
    assert info["oid"] == "1.3.6.1.2.1.31"
    assert "IF-MIB::linkDown" in info["notifications"] and "IF-MIB::linkUp" in info["notifications"]
    lines = _text_lines(info)
    assert lines[0] == "IF-MIB = 1.3.6.1.2.1.31" and lines[1] == "  kind: module"
    assert any(line.startswith("  notifications: IF-MIB::linkDown") for line in lines), lines
    v1 = describe_name(shipped, "RFC1271-MIB")  # SMIv1: no MODULE-IDENTITY, notifications all the same
    assert v1["found"] and v1["kind"] == "module" and "oid" not in v1 and v1["notifications"]
    assert describe_name(shipped, "NO-SUCH-MIB")["found"] is False


def test_lookup_of_a_module_that_did_not_load_says_why(site: tuple[MibResolver, Path, Path]) -> None:
    from trapd.commands.mibs import _text_lines

    r, src, _cache = site
    info = describe_name(r, "BROKEN-MIB")
    assert info["found"] is False
    assert info["problem"].startswith(f"{src / 'BROKEN.my'}:6: BROKEN-MIB: Bad grammar"), info
    assert _text_lines(info) == [f"BROKEN-MIB: not loaded: {info['problem']}"]
    also = describe_name(r, "BROKEN-MIB::brokenThing")  # a name from it, too
    assert also["found"] is False and also["problem"] == info["problem"]


@pytest.mark.parametrize("filler", ["\n", " \r\n", "IMPORTS x\n"])
def test_a_file_of_blank_lines_or_unterminated_imports_is_scanned_in_linear_time(
    tmp_path: Path, filler: str
) -> None:
    """The module scan's `^\\s*NAME` retried at every line over all the whitespace after it: 20,000
    blank lines took 6 s, a megabyte of them hours, in `trapd mibs compile` (no time limit) or
    the daemon's compile child (10 minutes, then no site MIBs). The same for an IMPORTS clause
    that never ends (9 s for 100 KB in what pysmi is handed)."""
    from trapd.mibcompile import declare_implicit_imports, scan_sources

    src = tmp_path / "mibs"
    src.mkdir()
    junk = src / "junk.txt"
    junk.write_text("JUNK-MIB DEFINITIONS ::= BEGIN\n" + filler * 40_000 + "END\n", encoding="utf-8")
    (src / "vendor.my").write_text(textwrap.dedent(VENDOR_MIB), encoding="utf-8")
    started = time.perf_counter()
    modules, _problems = scan_sources(sorted(src.iterdir()))
    text = declare_implicit_imports(junk.read_text(encoding="utf-8"))
    took = time.perf_counter() - started
    assert took < 2.0, took
    assert set(modules) == {"JUNK-MIB", "TRAPD-TEST-MIB"}
    assert text.count("\n") == junk.read_text(encoding="utf-8").count("\n")


def test_an_smiv1_type_from_a_shipped_module_can_be_imported(tmp_path: Path) -> None:
    """SMICng's SMIv1 output (CISCO-DIST-DIRECTOR-MIB, CISCO-IP-ENCRYPTION-MIB, CISCO-LECS-MIB)
    imports TruthValue, DisplayString, RowStatus FROM SNMPv2-TC-v1, and old RMON extensions
    EntryStatus FROM RFC1271-MIB: plain type assignments, which the shipped index left out,
    so their stubs lacked them ('no symbol "TruthValue" in module "SNMPv2-TC-v1"')."""
    src = tmp_path / "mibs"
    src.mkdir()
    text = textwrap.dedent(SMIV1_MIB).replace(
        "    DisplayString FROM RFC1213-MIB\n",
        "    DisplayString, TruthValue FROM SNMPv2-TC-v1\n    EntryStatus FROM RFC1271-MIB\n",
    )
    text = text.replace(
        "oldPortFailure TRAP-TYPE",
        "oldPortUp OBJECT-TYPE\n    SYNTAX  TruthValue\n    ACCESS  read-only\n    STATUS  mandatory\n"
        '    DESCRIPTION "Up."\n    DEFVAL  { true }\n    ::= { oldVendorPort 2 }\n\n'
        "oldPortStatus OBJECT-TYPE\n    SYNTAX  EntryStatus\n    ACCESS  read-only\n    STATUS  mandatory\n"
        '    DESCRIPTION "Status."\n    DEFVAL  { valid }\n    ::= { oldVendorPort 3 }\n\n'
        "oldPortFailure TRAP-TYPE",
    )
    (src / "v1.mib").write_text(text, encoding="utf-8")
    r = MibResolver.load(MibConfig(dirs=(src,), cache_dir=tmp_path / "cache"), compile_in_process=True)
    assert r.problems == [], "\n".join(map(str, r.problems))
    assert r.enum_values("OLD-VENDOR-MIB::oldPortUp") == {"true": 1, "false": 2}
    assert r.enum_values("OLD-VENDOR-MIB::oldPortStatus")["valid"] == 1
    name = r.syntax("OLD-VENDOR-MIB::oldPortName")
    assert name is not None and name.base == "OctetString" and name.tc == "SNMPv2-TC-v1::DisplayString"


BIG_ARC_MIB = """
BIG-ARC-MIB DEFINITIONS ::= BEGIN
IMPORTS
    MODULE-IDENTITY, NOTIFICATION-TYPE, enterprises FROM SNMPv2-SMI;

bigArc MODULE-IDENTITY
    LAST-UPDATED "202612070000Z"
    ORGANIZATION "trapd"
    CONTACT-INFO "trapd test suite"
    DESCRIPTION  "An arc too big for SNMP."
    ::= { enterprises 99990 }

bigArcNotifs OBJECT IDENTIFIER ::= { bigArc 4294967296 }

bigArcEvent NOTIFICATION-TYPE
    STATUS      current
    DESCRIPTION "Below the arc no message can carry."
    ::= { bigArcNotifs 1 }

bigArcOk NOTIFICATION-TYPE
    STATUS      current
    DESCRIPTION "The largest arc SNMP carries."
    ::= { bigArc 4294967295 }
END
"""


def test_an_arc_of_2_to_the_32_is_refused_at_its_definition(site: tuple[MibResolver, Path, Path]) -> None:
    """pysmi compiles ``{ bigArc 4294967296 }``; the listener's BER decoder refuses any sub-identifier
    of 2^32 or more (as net-snmp does), so a rule naming bigArcEvent could never match. The node
    and what is below it are left out and named at the definition's line; the rest loads."""
    r, src, _cache = site
    text = textwrap.dedent(BIG_ARC_MIB)
    line = text.splitlines().index("bigArcNotifs OBJECT IDENTIFIER ::= { bigArc 4294967296 }") + 1
    problems = [p for p in r.problems if p.module == "BIG-ARC-MIB"]
    assert [(p.file, p.line) for p in problems] == [(str(src / "big-arc.my"), line)], r.problems
    assert "4294967296" in problems[0].message and "2^32" in problems[0].message, problems[0].message
    assert r.lookup("bigArcNotifs") is None and r.lookup("bigArcEvent") is None
    assert r.lookup("bigArcOk") == (1, 3, 6, 1, 4, 1, 99990, 4294967295)


# As CISCO-PORT-SECURITY-MIB: a table indexed by another module's ifIndex, one indexed by a MAC
# (fixed SIZE) and a VLAN, and one with an IMPLIED name; its notification carries only columns.
PORT_SECURITY_MIB = """
TRAPD-PORTSEC-MIB DEFINITIONS ::= BEGIN
IMPORTS
    MODULE-IDENTITY, OBJECT-TYPE, NOTIFICATION-TYPE, Counter32, enterprises FROM SNMPv2-SMI
    MacAddress, DisplayString FROM SNMPv2-TC
    ifIndex FROM IF-MIB;

portSec MODULE-IDENTITY
    LAST-UPDATED "202612070000Z"
    ORGANIZATION "trapd"
    CONTACT-INFO "trapd test suite"
    DESCRIPTION  "Port security, as a vendor writes it."
    ::= { enterprises 99989 }

psIfTable OBJECT-TYPE
    SYNTAX      SEQUENCE OF PsIfEntry
    MAX-ACCESS  not-accessible
    STATUS      current
    DESCRIPTION "Per port."
    ::= { portSec 1 }

psIfEntry OBJECT-TYPE
    SYNTAX      PsIfEntry
    MAX-ACCESS  not-accessible
    STATUS      current
    DESCRIPTION "A port."
    INDEX       { ifIndex }
    ::= { psIfTable 1 }

PsIfEntry ::= SEQUENCE { psIfViolationCount Counter32, psIfLastMac MacAddress }

psIfViolationCount OBJECT-TYPE
    SYNTAX      Counter32
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "Violations."
    ::= { psIfEntry 1 }

psIfLastMac OBJECT-TYPE
    SYNTAX      MacAddress
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "The last MAC."
    ::= { psIfEntry 2 }

psMacTable OBJECT-TYPE
    SYNTAX      SEQUENCE OF PsMacEntry
    MAX-ACCESS  not-accessible
    STATUS      current
    DESCRIPTION "Secure MACs."
    ::= { portSec 2 }

psMacEntry OBJECT-TYPE
    SYNTAX      PsMacEntry
    MAX-ACCESS  not-accessible
    STATUS      current
    DESCRIPTION "A MAC in a VLAN."
    INDEX       { psMacAddress, psMacVlan }
    ::= { psMacTable 1 }

PsMacEntry ::= SEQUENCE { psMacAddress MacAddress, psMacVlan INTEGER, psMacType INTEGER }

psMacAddress OBJECT-TYPE
    SYNTAX      MacAddress
    MAX-ACCESS  not-accessible
    STATUS      current
    DESCRIPTION "The MAC."
    ::= { psMacEntry 1 }

psMacVlan OBJECT-TYPE
    SYNTAX      INTEGER (1..4094)
    MAX-ACCESS  not-accessible
    STATUS      current
    DESCRIPTION "The VLAN."
    ::= { psMacEntry 2 }

psMacType OBJECT-TYPE
    SYNTAX      INTEGER { static(1), dynamic(2), sticky(3) }
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "How it was learnt."
    ::= { psMacEntry 3 }

psProfileTable OBJECT-TYPE
    SYNTAX      SEQUENCE OF PsProfileEntry
    MAX-ACCESS  not-accessible
    STATUS      current
    DESCRIPTION "Profiles by name."
    ::= { portSec 3 }

psProfileEntry OBJECT-TYPE
    SYNTAX      PsProfileEntry
    MAX-ACCESS  not-accessible
    STATUS      current
    DESCRIPTION "A profile."
    INDEX       { IMPLIED psProfileName }
    ::= { psProfileTable 1 }

PsProfileEntry ::= SEQUENCE { psProfileName DisplayString, psProfileMax INTEGER }

psProfileName OBJECT-TYPE
    SYNTAX      DisplayString (SIZE (1..32))
    MAX-ACCESS  not-accessible
    STATUS      current
    DESCRIPTION "Its name."
    ::= { psProfileEntry 1 }

psProfileMax OBJECT-TYPE
    SYNTAX      INTEGER
    MAX-ACCESS  read-only
    STATUS      current
    DESCRIPTION "At most this many MACs."
    ::= { psProfileEntry 2 }

psIfViolation NOTIFICATION-TYPE
    OBJECTS     { psIfLastMac }
    STATUS      current
    DESCRIPTION "A port saw a MAC it must not."
    ::= { portSec 0 1 }
END
"""


def test_a_site_mibs_table_index_is_decoded(site: tuple[MibResolver, Path, Path]) -> None:
    """A vendor table indexed by IF-MIB's ifIndex (compiled through the shipped stubs), by a MAC
    (fixed SIZE: six arcs, no length) and a VLAN, and by an IMPLIED name: the suffix of a column's
    varbind gives each INDEX object, typed and shown as the MIB says."""
    from trapd.event import VarBind
    from trapd.instance import index_objects

    r, _src, _cache = site

    def objects(name: str) -> list[tuple[str, object, str]]:
        oid = r.lookup(name)
        assert oid is not None, name
        resolved, index = r.resolve(oid)
        parts = index_objects(r, VarBind(oid, resolved, index, "Integer32", 1, "1"))
        return [(p.name, p.value, p.display) for p in parts]

    assert objects("psIfLastMac.10101") == [("IF-MIB::ifIndex", 10101, "10101")]
    assert objects("psMacType.0.17.34.51.68.85.20") == [
        ("TRAPD-PORTSEC-MIB::psMacAddress", bytes.fromhex("001122334455"), "00:11:22:33:44:55"),
        ("TRAPD-PORTSEC-MIB::psMacVlan", 20, "20"),
    ]
    assert objects("psProfileMax.111.102.102.105.99.101") == [
        ("TRAPD-PORTSEC-MIB::psProfileName", b"office", "office")
    ]


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None, reason="needs root and setpriv")
def test_a_compile_as_root_leaves_the_cache_to_the_daemons_user(request: pytest.FixtureRequest) -> None:
    """`sudo trapd mibs compile` (docs/service.md advises it before a restart) or `sudo trapd check`
    compiles into the state directory of a trapd that runs as its own user. Before, the cache was
    root's: the daemon could not update it ("cannot write MIB cache: Permission denied") and its
    site MIBs did not load (their compiled modules "not found"), so the rules using them failed."""
    import pwd

    nobody = pwd.getpwnam("nobody")
    # pytest's temp root is root's alone (0700): nobody must reach the MIBs and the state dir.
    tmp_path = Path(tempfile.mkdtemp(prefix="trapd-mib-owner-"))
    tmp_path.chmod(0o755)
    request.addfinalizer(lambda: shutil.rmtree(tmp_path, ignore_errors=True))
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, nobody.pw_uid, nobody.pw_gid)
    src = tmp_path / "mibs"
    src.mkdir()
    (src / "vendor-mac-notif.my").write_text(textwrap.dedent(VENDOR_MIB), encoding="utf-8")
    config = MibConfig(dirs=(src,))
    as_root = MibResolver.load(config, state, compile_in_process=True)
    assert as_root.lookup("TRAPD-TEST-MIB::trapdMacNotification") is not None
    cache = state / "mibs"
    owners = {p.relative_to(cache).as_posix(): p.lstat().st_uid for p in [cache, *cache.rglob("*")]}
    assert {name for name, uid in owners.items() if uid != nobody.pw_uid} == set()
    # The daemon's user compiles again after a MIB changed, into that cache, and resolves the names.
    (src / "old-vendor.mib").write_text(textwrap.dedent(SMIV1_MIB), encoding="utf-8")
    script = (
        "import sys; from pathlib import Path; from trapd.mibs import MibConfig, MibResolver;"
        f"r = MibResolver.load(MibConfig(dirs=(Path({str(src)!r}),)), Path({str(state)!r}));"
        "print([str(p) for p in r.problems]);"
        "print(r.lookup('TRAPD-TEST-MIB::trapdMacNotification') is not None,"
        " r.lookup('oldPortName') is not None)"
    )
    proc = subprocess.run(
        ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
         sys.executable, "-c", script],
        capture_output=True, text=True, timeout=120, env={**os.environ, "HOME": str(tmp_path)},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == ["[]", "True True"], proc.stdout


def test_a_removed_mib_is_gone_at_the_next_load_also_for_its_importers(tmp_path: Path) -> None:
    """The compiled form of a module whose file was removed stayed in the cache, and pysmi took it
    for the module: its importers kept loading (an OID from it included), where the same
    directory with a fresh cache fails them. The cache holds only what the directories have."""
    src = tmp_path / "mibs"
    src.mkdir()
    (src / "needs-tc.my").write_text(textwrap.dedent(NEEDS_TC_MIB), encoding="utf-8")
    (src / "uses-needs-tc.my").write_text(textwrap.dedent(USES_NEEDS_TC_MIB), encoding="utf-8")
    config = MibConfig(dirs=(src,), cache_dir=tmp_path / "cache")
    first = MibResolver.load(config, compile_in_process=True)
    assert first.lookup("USES-NEEDS-TC-MIB::usesNeedsTcThing") is not None, first.problems
    (src / "needs-tc.my").unlink()
    again = MibResolver.load(config, compile_in_process=True)  # as with a fresh cache:
    assert [(Path(p.file or "").name, p.line, p.module) for p in again.problems] == [
        ("uses-needs-tc.my", 5, "USES-NEEDS-TC-MIB")
    ], again.problems
    assert "imports from NEEDS-TC-MIB, which is neither shipped nor in the MIB directories" in str(
        again.problems[0]
    )
    assert again.lookup("USES-NEEDS-TC-MIB::usesNeedsTcThing") is None
    assert again.lookup("NEEDS-TC-MIB::needsTcLoad") is None


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_a_compile_as_root_that_is_interrupted_leaves_the_cache_to_the_daemons_user(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """^C in `sudo trapd mibs compile` (a vendor's bundle takes minutes): what pysmi had written by
    then was root's, and the daemon's user could not write its compile there afterwards."""
    import pwd

    import trapd.mibcompile

    nobody = pwd.getpwnam("nobody")
    state = tmp_path / "state"
    state.mkdir()
    os.chown(state, nobody.pw_uid, nobody.pw_gid)
    src = tmp_path / "mibs"
    src.mkdir()
    (src / "vendor-mac-notif.my").write_text(textwrap.dedent(VENDOR_MIB), encoding="utf-8")

    def interrupted(dirs: Any, cache_dir: Path, shipped: Any) -> Any:
        (cache_dir / "py").mkdir(parents=True, exist_ok=True)
        (cache_dir / "py" / "TRAPD-TEST-MIB.py").write_text("# half written\n")
        raise KeyboardInterrupt

    monkeypatch.setattr(trapd.mibcompile, "compile_site", interrupted)
    with pytest.raises(KeyboardInterrupt):
        MibResolver.load(MibConfig(dirs=(src,)), state, compile_in_process=True)
    cache = state / "mibs"
    roots = {p.relative_to(cache).as_posix() for p in [cache, *cache.rglob("*")] if p.stat().st_uid == 0}
    assert roots == set()


def test_a_mib_replaced_by_a_file_with_an_older_mtime_is_compiled_again(tmp_path: Path) -> None:
    """A vendor bundle unpacked from a tarball keeps the files' dates: a newer release's file can
    be older than the cache's compiled module. pysmi judges by date alone, so the old compiled
    module stayed in use (also when the module moved to another directory): the new names never
    appeared. A compiled module is used only for the very file (path, size, date) it came from."""
    src = tmp_path / "mibs"
    src.mkdir()
    mib = src / "vendor.my"
    mib.write_text(textwrap.dedent(VENDOR_MIB), encoding="utf-8")
    config = MibConfig(dirs=(src,), cache_dir=tmp_path / "cache")
    assert MibResolver.load(config, compile_in_process=True).lookup("trapdMacNotification") is not None
    mib.write_text(
        textwrap.dedent(VENDOR_MIB).replace("trapdMacNotification", "trapdMacMoved"), encoding="utf-8"
    )
    past = time.time() - 30 * 86400
    os.utime(mib, (past, past))
    again = MibResolver.load(config, compile_in_process=True)
    assert again.lookup("trapdMacMoved") is not None, again.problems
    assert again.lookup("trapdMacNotification") is None


@pytest.mark.parametrize(
    "imports",
    [
        "IMPORTS " + ", ".join(f"symbolName{i}" for i in range(3000)) + " FROM VENDOR-TC;",  # a long list
        "IMPORTS " + ", ".join(f"symbolName{i}" for i in range(3000)) + ";",  # with no FROM
        "IMPORTS a FROM B\n" * 20_000,  # many IMPORTS, no ';'
    ],
)
def test_the_imports_of_a_module_are_read_in_linear_time(tmp_path: Path, imports: str) -> None:
    """Finding the modules only TCs are imported from read an IMPORTS clause with a nested
    repetition that backtracked exponentially: a 5-name clause without FROM took minutes, and the
    compile of Cisco's v2 bundle never ended (the daemon's child is stopped at 10 minutes)."""
    from trapd.mibcompile import SiteSource, StubSet, missing_type_imports

    mib = tmp_path / "junk.my"
    mib.write_text(f"JUNK-MIB DEFINITIONS ::= BEGIN\n{imports}\nEND\n", encoding="utf-8")
    started = time.perf_counter()
    stand_ins = missing_type_imports({"JUNK-MIB": SiteSource("JUNK-MIB", mib, 0.0)}, StubSet(None))
    took = time.perf_counter() - started
    assert took < 1.0, took
    assert set(stand_ins) <= {"VENDOR-TC"}


def test_the_code_template_is_compiled_once_per_compile_not_once_per_module(tmp_path: Path) -> None:
    """pysmi's code generator made a new Jinja2 environment for every module, so each module
    compiled pysmi's two templates again: 0.4 s a module, 88 % of a bundle's compile time (81 s of
    92 s for 202 generated modules), and Cisco's v2 bundle ran past the daemon's 10-minute limit."""
    import jinja2

    src = tmp_path / "mibs"
    src.mkdir()
    for i in range(6):
        text = textwrap.dedent(VENDOR_MIB).replace("TRAPD-TEST-MIB", f"TRAPD-TEST{i}-MIB")
        (src / f"test{i}.my").write_text(text, encoding="utf-8")
    compiled: list[str] = []
    real = jinja2.Environment.compile

    def counting(self: jinja2.Environment, source: Any, name: str | None = None, *a: Any, **k: Any) -> Any:
        compiled.append(str(name))
        return real(self, source, name, *a, **k)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jinja2.Environment, "compile", counting)
        data = load_site_index([src], tmp_path / "cache", shipped_index(), in_process=True)
    assert data.index is not None and len(data.index["modules"]) == 6, data.problems
    assert len(compiled) <= 2, compiled  # pysmi's template and the one it includes


@pytest.mark.parametrize(
    "files",
    [
        {  # across two modules: each defines its node below the other's
            "a.my": "A-MIB DEFINITIONS ::= BEGIN\nIMPORTS bNode FROM B-MIB;\n\n"
            "aNode OBJECT IDENTIFIER ::= { bNode 1 }\nEND\n",
            "b.my": "B-MIB DEFINITIONS ::= BEGIN\nIMPORTS aNode FROM A-MIB;\n\n"
            "bNode OBJECT IDENTIFIER ::= { aNode 1 }\nEND\n",
        },
        {  # within one module
            "a.my": "A-MIB DEFINITIONS ::= BEGIN\nIMPORTS enterprises FROM SNMPv2-SMI;\n\n"
            "aNode OBJECT IDENTIFIER ::= { bNode 1 }\nbNode OBJECT IDENTIFIER ::= { aNode 2 }\nEND\n",
        },
    ],
)
def test_oid_definitions_in_a_cycle_fail_their_modules_only(tmp_path: Path, files: dict[str, str]) -> None:
    """OID definitions that refer to each other in a cycle sent pysmi's OID resolution into endless
    recursion: RecursionError out of the whole compile, so no site MIB loaded at all (the problem
    said "MIB compile failed: RecursionError", with no file or line)."""
    src = tmp_path / "mibs"
    src.mkdir()
    (src / "vendor.my").write_text(textwrap.dedent(VENDOR_MIB), encoding="utf-8")
    for name, text in files.items():
        (src / name).write_text(text, encoding="utf-8")
    r = MibResolver.load(MibConfig(dirs=(src,), cache_dir=tmp_path / "cache"), compile_in_process=True)
    assert r.lookup("trapdMacNotification") is not None, r.problems  # the good module loaded
    # At a definition in the cycle (in one module: whichever pysmi resolved first), naming the cycle.
    (a,) = [p for p in r.problems if p.module == "A-MIB"]
    assert a.file == str(src / "a.my") and a.line in (4, 5), a
    assert "cycle" in a.message and "A-MIB::aNode" in a.message, a
    assert len(r.problems) == len(files), r.problems
    assert r.lookup("aNode") is None


def test_a_mib_directory_that_cannot_be_listed_is_a_problem(tmp_path: Path) -> None:
    """A mibs.dirs entry that does not exist (a typo), is a file, or cannot be read (trapd's user
    may not list it) was skipped without a word: no site MIB loaded, no problem, and `trapd mibs
    compile --strict` exited 0. Each is a problem now, news at every start (the daemon warns)."""
    good = tmp_path / "mibs"
    good.mkdir()
    (good / "vendor.my").write_text(textwrap.dedent(VENDOR_MIB), encoding="utf-8")
    missing, a_file = tmp_path / "mbis", tmp_path / "vendor.my"
    a_file.write_text("x", encoding="utf-8")
    cache = tmp_path / "cache"
    for _ in range(2):  # the second load is from the cache: the problems are there again
        r = MibResolver.load(MibConfig(dirs=(good, missing, a_file), cache_dir=cache))
        assert r.lookup("trapdMacNotification") is not None, r.problems
        text = [str(p) for p in r.problems]
        assert text == [
            f"{missing}: cannot read this MIB directory: No such file or directory",
            f"{a_file}: cannot read this MIB directory: Not a directory",
        ], text
        assert r.problems_are_new
    r = MibResolver.load(MibConfig(dirs=(missing,), cache_dir=cache))
    assert [str(p) for p in r.problems] == [text[0]]
    argv = ["mibs", "compile", "--dir", str(missing), "--cache-dir", str(cache), "--strict"]
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    cmd = [sys.executable, "-m", "trapd", *argv]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 1 and "cannot read this MIB directory" in out.stdout, out


def test_a_compile_child_killed_for_memory_says_so_and_is_the_oom_killers_choice(tmp_path: Path) -> None:
    """A bundle too big for the unit's MemoryMax: the kernel's OOM killer kills a process of the unit.
    The compile child is the one to go (oom_score_adj 1000), not the daemon or a worker; and the problem
    said only 'compiler exited -9: no output'. It says it was killed, and the likely why."""
    import signal
    import threading

    src = tmp_path / "mibs"
    src.mkdir()
    (src / "vendor.my").write_text(textwrap.dedent(VENDOR_MIB), encoding="utf-8")
    seen: dict[str, str] = {}

    def kill_the_child() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not seen:
            for proc in Path("/proc").iterdir():
                if not proc.name.isdigit():
                    continue
                try:
                    stat = (proc / "stat").read_text()
                    cmdline = (proc / "cmdline").read_bytes()
                    ppid = int(stat.rpartition(")")[2].split()[1])
                    if ppid == os.getpid() and b"trapd.mibcompile" in cmdline:
                        # The child raises it first thing: wait for that (bounded), then kill it.
                        adj = (proc / "oom_score_adj").read_text().strip()
                        if adj != "1000" and time.monotonic() < deadline - 30:
                            continue
                        seen["oom_score_adj"] = adj
                        os.kill(int(proc.name), signal.SIGKILL)  # the child this test's compile started
                        return
                except (OSError, ValueError, IndexError):
                    continue
            time.sleep(0.01)

    killer = threading.Thread(target=kill_the_child)
    killer.start()
    try:
        got = load_site_index([src], tmp_path / "cache", shipped_index())
    finally:
        killer.join()
    assert seen.get("oom_score_adj") == "1000", seen
    assert got.failed and got.index is None
    (problem,) = got.problems
    assert "killed by SIGKILL" in problem.message and "memory" in problem.message, problem


def test_the_compile_child_ends_with_the_process_that_started_it(tmp_path: Path) -> None:
    """trapd killed (or stopped by SIGTERM) during a start-up compile left its compile child running
    for minutes, hundreds of MB, and writing into the MIB cache while the next trapd compiled into
    it too (the lock was the dead parent's). The child now dies with its parent."""
    import signal

    src = tmp_path / "mibs"
    src.mkdir()
    for i in range(150):
        text = textwrap.dedent(VENDOR_MIB).replace("TRAPD-TEST-MIB", f"TRAPD-TEST{i}-MIB")
        (src / f"test{i}.my").write_text(text, encoding="utf-8")
    code = (
        "import sys; from pathlib import Path; from trapd.mibs import load_site_index, shipped_index; "
        "load_site_index([Path(sys.argv[1])], Path(sys.argv[2]), shipped_index())"
    )
    parent = subprocess.Popen([sys.executable, "-c", code, str(src), str(tmp_path / "cache")])
    child = None
    try:
        deadline = time.monotonic() + 60
        while child is None and time.monotonic() < deadline and parent.poll() is None:
            for proc in Path("/proc").iterdir():
                try:
                    ppid = int((proc / "stat").read_text().rpartition(")")[2].split()[1])
                    if ppid == parent.pid and b"trapd.mibcompile" in (proc / "cmdline").read_bytes():
                        child = int(proc.name)
                except (OSError, ValueError, IndexError):
                    continue
            time.sleep(0.01)
        assert child is not None, "no compile child seen"
        time.sleep(0.5)  # past the child's start
        parent.send_signal(signal.SIGTERM)
        parent.wait(timeout=30)

        def running(pid: int) -> bool:  # not gone, and not a zombie waiting to be reaped
            try:
                return (Path(f"/proc/{pid}") / "stat").read_text().rpartition(")")[2].split()[0] != "Z"
            except OSError:
                return False

        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and running(child):
            time.sleep(0.05)
        assert not running(child), "the compile child outlived its parent"
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child is not None and Path(f"/proc/{child}").exists():
            os.kill(child, signal.SIGKILL)  # started (indirectly) by this test


def test_a_module_is_compiled_again_when_a_module_it_imports_from_changes(tmp_path: Path) -> None:
    """pysmi writes the numbers of an imported parent into the importer's compiled module: when
    A-MIB moved aRoot (a vendor's corrected SMI file), B-MIB, unchanged, kept bNode under the old
    number, so its names (and the notifications rules match) were wrong until `--force`."""
    src = tmp_path / "mibs"
    src.mkdir()
    a = src / "a.my"
    a.write_text(
        "A-MIB DEFINITIONS ::= BEGIN\nIMPORTS enterprises FROM SNMPv2-SMI;\n"
        "aRoot OBJECT IDENTIFIER ::= { enterprises 100 }\nEND\n",
        encoding="utf-8",
    )
    (src / "b.my").write_text(
        "B-MIB DEFINITIONS ::= BEGIN\nIMPORTS aRoot FROM A-MIB;\n"
        "bNode OBJECT IDENTIFIER ::= { aRoot 1 }\nEND\n",
        encoding="utf-8",
    )
    (src / "c.my").write_text(  # and what imports from B-MIB in turn
        "C-MIB DEFINITIONS ::= BEGIN\nIMPORTS bNode FROM B-MIB;\n"
        "cNode OBJECT IDENTIFIER ::= { bNode 2 }\nEND\n",
        encoding="utf-8",
    )
    config = MibConfig(dirs=(src,), cache_dir=tmp_path / "cache")
    r = MibResolver.load(config, compile_in_process=True)
    vendor = (1, 3, 6, 1, 4, 1)
    assert (r.lookup("bNode"), r.lookup("cNode")) == ((*vendor, 100, 1), (*vendor, 100, 1, 2))
    moved = a.read_text(encoding="utf-8").replace("enterprises 100", "enterprises 200")
    a.write_text(moved, encoding="utf-8")
    r = MibResolver.load(config, compile_in_process=True)
    assert r.problems == []
    assert r.lookup("aRoot") == (*vendor, 200)
    assert (r.lookup("bNode"), r.lookup("cNode")) == ((*vendor, 200, 1), (*vendor, 200, 1, 2))


def test_a_changed_file_is_the_only_one_pysmi_reads_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """pysmi parses every module it is asked for before it finds a compiled one up to date: one
    changed file in a bundle of 1,002 generated modules cost 33 s (load 13), as much as the whole
    bundle. Only the modules without a compiled form after the prune are asked for now."""
    import trapd.mibcompile as mibcompile

    src = tmp_path / "mibs"
    src.mkdir()
    for i in range(4):
        text = textwrap.dedent(VENDOR_MIB).replace("TRAPD-TEST-MIB", f"TRAPD-TEST{i}-MIB")
        (src / f"test{i}.my").write_text(text, encoding="utf-8")
    config = MibConfig(dirs=(src,), cache_dir=tmp_path / "cache")
    asked: list[list[str]] = []
    real = mibcompile._run_pysmi

    def spy(wanted: list[str], *args: Any, **kwargs: Any) -> Any:
        asked.append(list(wanted))
        return real(wanted, *args, **kwargs)

    monkeypatch.setattr(mibcompile, "_run_pysmi", spy)
    r = MibResolver.load(config, compile_in_process=True)
    assert len(r.site_modules) == 4 and asked == [[f"TRAPD-TEST{i}-MIB" for i in range(4)]], (
        r.problems,
        asked,
    )
    changed = src / "test2.my"
    changed.write_text(changed.read_text(encoding="utf-8") + "\n-- edited\n", encoding="utf-8")
    r = MibResolver.load(config, compile_in_process=True)
    assert asked[1:] == [["TRAPD-TEST2-MIB"]], asked
    assert r.problems == [] and len(r.site_modules) == 4
    assert r.lookup("TRAPD-TEST0-MIB::trapdMacNotification") is not None
    assert r.lookup("TRAPD-TEST2-MIB::trapdMacNotification") is not None


def test_a_file_changed_while_it_compiles_is_compiled_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A vendor bundle copied in (rsync, tar) while trapd compiles: a file that changed after pysmi
    read it was recorded as compiled from its new state, so every later compile kept the old
    compiled form (wrong OIDs) until `--force`."""
    import trapd.mibcompile as mibcompile

    src = tmp_path / "mibs"
    src.mkdir()
    a = src / "a.my"
    a.write_text(
        "A-MIB DEFINITIONS ::= BEGIN\nIMPORTS enterprises FROM SNMPv2-SMI;\n"
        "aRoot OBJECT IDENTIFIER ::= { enterprises 100 }\nEND\n",
        encoding="utf-8",
    )
    real = mibcompile._run_pysmi

    def then_edit(*args: Any, **kwargs: Any) -> Any:
        out = real(*args, **kwargs)
        moved = a.read_text(encoding="utf-8").replace("enterprises 100", "enterprises 200")
        a.write_text(moved, encoding="utf-8")
        os.utime(a, ns=(a.stat().st_mtime_ns + 10**9, a.stat().st_mtime_ns + 10**9))
        return out

    config = MibConfig(dirs=(src,), cache_dir=tmp_path / "cache")
    with monkeypatch.context() as mp:
        mp.setattr(mibcompile, "_run_pysmi", then_edit)
        r = MibResolver.load(config, compile_in_process=True)
    assert r.lookup("aRoot") == (1, 3, 6, 1, 4, 1, 100)  # what was read
    r = MibResolver.load(config, compile_in_process=True)  # the files changed: compiled again
    assert r.lookup("aRoot") == (1, 3, 6, 1, 4, 1, 200)


def test_a_file_of_many_modules_is_read_once_for_their_imports(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Vendors ship concatenated MIB files. Finding the modules only TCs are imported from read the
    whole file, and went through all its IMPORTS clauses, once for each module in it: 2,000 small
    modules in one 240 KB file took 48 s (quadratic; 20,000 would take hours, past the compile
    limit, and no site MIB loaded)."""
    from trapd.mibcompile import StubSet, missing_type_imports, scan_sources

    mib = tmp_path / "all.my"
    mib.write_text(
        "".join(
            f"M{i}-MIB DEFINITIONS ::= BEGIN\n"
            f"IMPORTS enterprises FROM SNMPv2-SMI VendorTc FROM VENDOR{i % 3}-TC;\n"
            f"m{i} OBJECT IDENTIFIER ::= {{ enterprises {i} }}\nEND\n"
            for i in range(2000)
        ),
        encoding="utf-8",
    )
    site, problems = scan_sources([mib])
    assert len(site) == 2000 and problems == []
    # Counted, not timed (a loaded machine makes any time bound flaky): the file is read, and its
    # IMPORTS clauses gone through, once for all 2,000 modules.
    import trapd.mibcompile as mibcompile

    calls = {"read": 0, "imports": 0}
    read_source, imports_of = mibcompile.read_source, mibcompile._imports_of

    def counted_read(path: Path) -> bytes:
        calls["read"] += 1
        return read_source(path)

    def counted_imports(text: str) -> list[tuple[str, list[str], str]]:
        calls["imports"] += 1
        return imports_of(text)

    monkeypatch.setattr(mibcompile, "read_source", counted_read)
    monkeypatch.setattr(mibcompile, "_imports_of", counted_imports)
    stand_ins = missing_type_imports(site, StubSet(None))
    assert calls == {"read": 1, "imports": 1}
    assert sorted(stand_ins) == ["VENDOR0-TC", "VENDOR1-TC", "VENDOR2-TC"]
    assert sorted(stand_ins["VENDOR1-TC"].importers) == sorted(f"M{i}-MIB" for i in range(1, 2000, 3))
    assert stand_ins["VENDOR1-TC"].importers["M4-MIB"] == ["VendorTc"]


def test_a_module_on_a_stand_in_still_loads_after_another_file_changes(tmp_path: Path) -> None:
    """Since only modules without an up-to-date compiled form are given to pysmi, a module that
    imports TCs from a stand-in (a module nobody has) kept its compiled form while the stand-in's
    was removed, as at every compile, and not made again: after an unrelated file changed it did
    not load ('imports from VENDOR-TC3, which is neither shipped nor in the MIB directories')."""
    src = tmp_path / "mibs"
    src.mkdir()
    (src / "needs-tc2.my").write_text(textwrap.dedent(NEEDS_TC2_MIB), encoding="utf-8")
    good = src / "good.my"
    good.write_text(textwrap.dedent(VENDOR_MIB), encoding="utf-8")
    config = MibConfig(dirs=(src,), cache_dir=tmp_path / "cache")
    first = MibResolver.load(config, compile_in_process=True)
    assert first.is_notification("NEEDS-TC2-MIB::needsTcEvent"), first.problems
    good.write_text(textwrap.dedent(VENDOR_MIB) + "\n-- edited\n", encoding="utf-8")
    again = MibResolver.load(config, compile_in_process=True)
    assert again.is_notification("NEEDS-TC2-MIB::needsTcEvent"), again.problems
    assert again.problems == first.problems  # the stand-in's warning, nothing more


def test_a_snapshot_that_does_not_fit_on_the_disk_leaves_no_partial_file(tmp_path: Path) -> None:
    """The resolver's snapshot (2-3 MB) written to a nearly full state directory: the write
    failed (ENOSPC), which is fine for a cache, but its temp file stayed with every byte it got,
    so the disk was left full: the journal beside it could not open ('disk I/O error ... 0 bytes
    free' with 2 MiB free before the start), and each restart (another pid) left another one."""
    from tmpfs_support import mounted_tmpfs

    with mounted_tmpfs(tmp_path / "fs", "4m") as fs:
        st = os.statvfs(fs)
        (fs / "filler").write_bytes(b"\0" * (st.f_bavail * st.f_frsize - 512 * 1024))
        r = MibResolver.load(MibConfig(cache_dir=fs / "cache"))
        assert r.resolve(LINK_DOWN) == ("IF-MIB::linkDown", ())  # all the same, from the shipped index
        left = [p.name for p in (fs / "cache").rglob("*") if ".tmp" in p.name]
        assert left == [], left


@pytest.mark.parametrize(
    ("query", "why"),
    [
        ("1.3.6.1.4.1.9.4294967296", "sub-identifier 4294967296 is 2^32 or more"),
        ("IF-MIB::ifIndex.4294967296", "sub-identifier 4294967296 is 2^32 or more"),
        ("ifIndex.99999999999999999999", "sub-identifier 99999999999999999999 is 2^32 or more"),
        (".".join(["1", "3"] + ["1"] * 127), "more than 128 sub-identifiers"),
        ("3.1", "3.1 cannot begin an OID (X.690 8.19.4)"),
    ],
)
def test_lookup_refuses_an_oid_no_snmp_message_can_carry(
    shipped: MibResolver, capsys: pytest.CaptureFixture[str], query: str, why: str
) -> None:
    """SNMP sub-identifiers are 32-bit unsigned (RFC 2578 7.1.3, at most 128 of them). `trapd mibs
    lookup IF-MIB::ifIndex.4294967296` printed the column with that index, and a numeric OID with
    such an arc 'unknown (no loaded MIB names it)': the operator was not told that no trap can
    carry it (trapd check refuses it in a rule, with the reason from the same check)."""
    from trapd.cli import main as cli
    from trapd.commands.mibs import _text_lines

    info = describe_name(shipped, query)
    assert info["found"] is False and info["invalid"] == why, info
    assert _text_lines(info) == [f"{query}: not an OID any SNMP message can carry: {why}"]
    assert cli(["mibs", "lookup", "--json", query]) == 1
    assert json.loads(capsys.readouterr().out) == info
