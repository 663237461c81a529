"""One v3 user name with other keys on other sender engines (net-snmp's ``createUser -e``).

A site whose switches each have their own passphrases for the same user name
configures that name once per engine (``engine_ids``), and at most once without
``engine_ids`` (any other engine). Traps are told apart by the sender's engine
ID; an inform is addressed to trapd's own engine, so it is told apart by which
entry's keys its MAC verifies with. Before, a name given twice was refused.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from listen_harness import TrapdListen, needs_netsnmp, snmp_send
from usm_support import PysnmpTrapSender, link_down_varbinds, user

from trapd.listener.raw import RawNotification
from trapd.listener.stats import ListenerStats
from trapd.listener.v3 import V3Receiver
from trapd.yamlsource import ConfigError

TRAPD = "80004fb805aabbccddeeff0011"
ENGINE_A = "8000000001aaaa01"
ENGINE_B = "8000000001bbbb02"
ENGINE_C = "8000000001cccc03"  # bound to no entry: the one without engine_ids takes it
MARK_OID = "1.3.6.1.4.1.99999.1"

# (config entry, net-snmp's options for its keys)
ENTRIES: list[tuple[dict[str, Any], list[str]]] = [
    (
        {"user": "trapuser", "auth_protocol": "SHA", "auth_key": "auth-A-pass1", "priv_protocol": "AES",
         "priv_key": "priv-A-pass1", "engine_ids": [ENGINE_A]},
        ["-l", "authPriv", "-a", "SHA", "-A", "auth-A-pass1", "-x", "AES", "-X", "priv-A-pass1"],
    ),
    (
        {"user": "trapuser", "auth_protocol": "SHA-256", "auth_key": "auth-B-pass2", "priv_protocol": "DES",
         "priv_key": "priv-B-pass2", "engine_ids": [ENGINE_B]},
        ["-l", "authPriv", "-a", "SHA-256", "-A", "auth-B-pass2", "-x", "DES", "-X", "priv-B-pass2"],
    ),
    (
        {"user": "trapuser", "auth_protocol": "MD5", "auth_key": "auth-any-pass3"},
        ["-l", "authNoPriv", "-a", "MD5", "-A", "auth-any-pass3"],
    ),
]  # fmt: skip
KEYS_A, KEYS_B, KEYS_ANY = (keys for _, keys in ENTRIES)

_marks = itertools.count()


@pytest.fixture(scope="module")
def trapd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TrapdListen]:
    config = {"listener": {"v3_users": [entry for entry, _ in ENTRIES], "engine_id": TRAPD}}
    t = TrapdListen.start(tmp_path_factory.mktemp("same-name"), config)
    yield t
    assert t.stop() == 0, t.log[-5:]


def send(trapd: TrapdListen, tool: str, engine: str, keys: list[str], mark: str) -> int:
    extra = ["-r", "1", "-t", "3"] if tool == "snmpinform" else []
    r = snmp_send(
        tool, "-v", "3", "-u", "trapuser", "-e", "0x" + engine, *keys, *extra, trapd.target(),
        "", "1.3.6.1.6.3.1.1.5.3", MARK_OID, "s", mark,
    )  # fmt: skip
    return r.returncode


def marked(mark: str) -> Any:
    want = mark.encode().hex()
    return lambda e: any(vb["oid"] == MARK_OID and vb["value"] == want for vb in e.get("varbinds", ()))


@needs_netsnmp
@pytest.mark.integration
@pytest.mark.parametrize(
    ("engine", "keys", "level"),
    [(ENGINE_A, KEYS_A, "authPriv"), (ENGINE_B, KEYS_B, "authPriv"), (ENGINE_C, KEYS_ANY, "authNoPriv")],
    ids=["bound-a", "bound-b", "any-engine"],
)
def test_traps_from_each_engine_with_its_own_keys(
    trapd: TrapdListen, engine: str, keys: list[str], level: str
) -> None:
    for _ in range(2):  # the second one from a learned or bound engine: the fast path
        mark = f"trap-{next(_marks)}"
        assert send(trapd, "snmptrap", engine, keys, mark) == 0
        e = trapd.wait_event(marked(mark))
        assert (e["kind"], e["security"]["user"], e["security"]["engine_id"]) == ("trap", "trapuser", engine)
        assert e["security"]["level"] == level


@needs_netsnmp
@pytest.mark.integration
@pytest.mark.parametrize(
    ("engine", "keys", "reason"),
    [(ENGINE_A, KEYS_B, "wrong-digest"), (ENGINE_B, KEYS_A, "wrong-digest"), (ENGINE_A, KEYS_ANY, None)],
    ids=["b-keys-from-a", "a-keys-from-b", "any-keys-from-a"],
)
def test_another_entrys_keys_are_refused(
    trapd: TrapdListen, engine: str, keys: list[str], reason: str | None
) -> None:
    before = trapd.stats()
    mark = f"wrong-{next(_marks)}"
    send(trapd, "snmptrap", engine, keys, mark)
    now = trapd.wait_stats(lambda s: sum(s["dropped"].values()) > sum(before["dropped"].values()))
    if reason is not None:
        assert now["dropped"].get(reason, 0) > before["dropped"].get(reason, 0), now["dropped"]
    assert not [e for e in trapd.events_so_far(settle=0.1) if marked(mark)(e)]


@needs_netsnmp
@pytest.mark.integration
def test_informs_with_each_entrys_keys_are_acknowledged(trapd: TrapdListen) -> None:
    # Switching between the entries and back (pysnmp's row for trapd's engine is swapped each time).
    for keys in (KEYS_A, KEYS_B, KEYS_ANY, KEYS_A, KEYS_A, KEYS_B, KEYS_ANY, KEYS_B, KEYS_A):
        mark = f"inform-{next(_marks)}"
        assert send(trapd, "snmpinform", TRAPD, keys, mark) == 0
        e = trapd.wait_event(marked(mark))
        assert (e["kind"], e["security"]["user"], e["security"]["engine_id"]) == ("inform", "trapuser", TRAPD)
        assert e["security"]["level"] == ("authNoPriv" if keys is KEYS_ANY else "authPriv")


@needs_netsnmp
@pytest.mark.integration
def test_an_inform_with_keys_of_no_entry_is_refused(trapd: TrapdListen) -> None:
    before = trapd.stats()
    mark = f"inform-wrong-{next(_marks)}"
    wrong = ["-l", "authPriv", "-a", "SHA", "-A", "auth-A-wrong", "-x", "AES", "-X", "priv-A-pass1"]
    assert send(trapd, "snmpinform", TRAPD, wrong, mark) != 0
    now = trapd.stats()
    assert now["dropped"].get("wrong-digest", 0) > before["dropped"].get("wrong-digest", 0)
    assert not [e for e in trapd.events_so_far(settle=0.1) if marked(mark)(e)]


def test_pysnmp_path_tells_the_entries_apart_by_engine() -> None:
    """What the fast path declines (here: all of it) gets the same answer from pysnmp's engine."""
    a = user("trapuser", "SHA", "AES-128", [bytes.fromhex(ENGINE_A)], "auth-A-pass1", "priv-A-pass1")
    b = user("trapuser", "SHA-256", "DES", [bytes.fromhex(ENGINE_B)], "auth-B-pass2", "priv-B-pass2")
    got: list[RawNotification] = []
    stats = ListenerStats()
    receiver = V3Receiver([a, b], lambda raw: got.append(raw), stats, engine_id=bytes.fromhex(TRAPD))
    for u, engine in ((a, ENGINE_A), (b, ENGINE_B)):
        data = PysnmpTrapSender(bytes.fromhex(engine), [u]).trap("trapuser", "authPriv", link_down_varbinds())
        receiver.receive(data, ("127.0.0.1", 50000), lambda d, addr: None, 0.0)
        assert got and got[-1].security.engine_id == engine, dict(stats.dropped_detail)
    wrong = PysnmpTrapSender(bytes.fromhex(ENGINE_A), [b]).trap("trapuser", "authPriv", link_down_varbinds())
    receiver.receive(wrong, ("127.0.0.1", 50000), lambda d, addr: None, 0.0)
    assert len(got) == 2 and stats.dropped["wrong-digest"] == 1


@pytest.mark.parametrize(
    ("second", "message"),
    [
        ({"engine_ids": [ENGINE_A.upper()]}, r"engine ID 8000000001aaaa01 twice \(entries 2 and 3\)"),
        ({}, r"more than once without engine_ids \(entries 1 and 3\)"),
    ],
)
def test_a_name_given_twice_for_the_same_engines_is_refused(
    tmp_path: Path, second: dict[str, Any], message: str
) -> None:
    import yaml

    from trapd.config import load_config

    users = [
        {"user": "trapuser", "auth_protocol": "SHA", "auth_key": "auth-pass-1"},
        {"user": "trapuser", "auth_protocol": "SHA", "auth_key": "auth-pass-1",
         "engine_ids": [ENGINE_A, ENGINE_B]},
        {"user": "trapuser", "auth_protocol": "MD5", "auth_key": "auth-pass-2", **second},
    ]  # fmt: skip
    (tmp_path / "trapd.yaml").write_text(yaml.safe_dump({"listener": {"v3_users": users}}))
    with pytest.raises(ConfigError, match=message) as info:
        load_config(tmp_path / "trapd.yaml")
    assert "trapd.yaml:" in str(info.value)
    assert "auth-pass" not in str(info.value)


def test_forged_informs_for_a_name_of_many_entries_cost_the_slow_path_budget() -> None:
    """An inform is told apart by trying each entry's keys: for a name given for many engines a
    forged MAC costs one HMAC per entry. A sender's first entry is tried for free (the one that
    verified for its address last, else the last one to verify); the others only within the
    slow-path budget, so a flood of forged informs is bounded like any unauthenticated message.
    Before, each cost every entry's HMAC, with no limit."""
    from usm_support import craft, scoped_pdu, trap_pdu

    from trapd.listener.config import RateLimit
    from trapd.listener.limits import SlowPathBudget
    from trapd.listener.v3.keys import localized_user

    own = bytes.fromhex(TRAPD)
    entries = [user("trapuser", "SHA", "none", [bytes.fromhex(f"8000000001cc{i:04x}")], f"auth-pass-{i}")
               for i in range(20)]  # fmt: skip
    budget = SlowPathBudget(RateLimit(v3_slow_per_source=1, v3_slow_global=0, burst=2))
    got: list[RawNotification] = []
    stats = ListenerStats()
    receiver = V3Receiver(entries, got.append, stats, engine_id=own, admit=budget.admit)
    inform = scoped_pdu(trap_pdu(link_down_varbinds(), tag="inform"), own)
    forged = localized_user(user("trapuser", "SHA", "none", auth_key="not-an-entrys-key"), own)
    for i in range(10):
        data = craft(forged, own, b"trapuser", inform, msg_id=i)
        receiver.receive(data, ("192.0.2.7", 4000), lambda d, a: None)
    assert stats.dropped_detail[("wrong-digest", "own-engine")] == 2  # the budget's 2 tokens
    assert stats.dropped_detail[("rate-limited", "v3-slow-per-source")] == 8
    # An entry's own informs from another address still get through (the budget is per source).
    keys = localized_user(entries[13], own)
    receiver.receive(craft(keys, own, b"trapuser", inform, msg_id=99, boots=1, etime=0), ("192.0.2.8", 4000),
                     lambda d, a: None)  # fmt: skip
    assert stats.dropped_detail.get(("wrong-digest", "own-engine")) == 2


def test_no_key_shows_in_the_representation_of_the_receivers_users() -> None:
    """Master and localized keys stay out of a repr (a debugger, a traceback with locals)."""
    from trapd.listener.v3.keys import localized_user

    u = user("trapuser", "SHA", "AES-128", [bytes.fromhex(ENGINE_A)], "auth-A-pass1", "priv-A-pass1")
    receiver = V3Receiver([u], lambda raw: None, ListenerStats(), engine_id=bytes.fromhex(TRAPD))
    entries = receiver._users[b"trapuser"]
    local = localized_user(u, bytes.fromhex(ENGINE_A))
    text = repr(entries) + repr(local)
    text += repr(receiver._localized)
    for key in (local.auth_key, local.priv_key):
        assert key and repr(key) not in text and key.hex() not in text
    assert "auth-A-pass1" not in text
