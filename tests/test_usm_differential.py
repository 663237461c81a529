"""The fast USM path against pysnmp: messages pysnmp's own engine encodes, read by both.

For every auth x priv protocol pair and every security level, pysnmp's
engine (acting as the switch, authoritative for its traps) encodes traps with
random varbinds of every SNMPv2 type and random contexts; trapd's V3Receiver
(pysnmp's receiving side) and the fast path must produce the same
RawNotification. Then the cases the fast path must hand back to pysnmp.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from usm_support import (
    AUTHS,
    PRIVS,
    PysnmpReading,
    PysnmpTrapSender,
    comparable,
    craft,
    link_down_varbinds,
    random_varbinds,
    scoped_pdu,
    trap_pdu,
    user,
)

from trapd.listener.config import V3User
from trapd.listener.raw import RawNotification
from trapd.listener.v3.usm import UsmFastPath, localized_user

SENDER = bytes.fromhex("8000000001020304")
TRAPD = bytes.fromhex("80004fb805deadbeef")

USERS: list[V3User] = (
    [user(f"{a}-{p}".lower(), a, p, [SENDER]) for a in AUTHS for p in PRIVS]
    + [user(f"{a}-auth".lower(), a, "none", [SENDER]) for a in AUTHS]
    + [user("plain", engine_ids=[SENDER])]
)
ANY_ENGINE = user("anyengine", "SHA-256", "AES-128")  # no engine_ids: any sender engine


@dataclass
class World:
    sender: PysnmpTrapSender
    oracle: PysnmpReading
    fast: UsmFastPath

    def both(self, data: bytes) -> tuple[RawNotification | None, RawNotification | str]:
        ours = self.fast.receive(data, "127.0.0.1", 50000, 0.0)
        return ours, self.oracle.read(data)


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    users = [*USERS, ANY_ENGINE]
    oracle = PysnmpReading(users, TRAPD)
    yield World(PysnmpTrapSender(SENDER, users), oracle, UsmFastPath(users, TRAPD))


def _context(rng: random.Random) -> dict[str, Any]:
    names = [b"", b"vlan-20", bytes(range(0xC0, 0xE0)), "Zürich".encode(), b"\xff\xfe"]
    engines = [SENDER, b"", bytes(rng.randrange(256) for _ in range(rng.randint(1, 32)))]
    return {"context_name": rng.choice(names), "context_engine_id": rng.choice(engines)}


@pytest.mark.parametrize("u", USERS, ids=[u.user for u in USERS])
def test_pysnmp_encoded_traps_read_the_same(world: World, u: V3User) -> None:
    rng = random.Random(f"usm-differential-{u.user}")
    for _ in range(12):
        data = world.sender.trap(u.user, u.level, random_varbinds(rng), **_context(rng))
        ours, theirs = world.both(data)
        assert isinstance(theirs, RawNotification), theirs
        assert ours is not None, world.fast.declined
        assert comparable(ours) == comparable(theirs)
        assert ours.security.level == u.level and ours.security.user == u.user


@pytest.mark.parametrize("priv", PRIVS)
def test_large_traps_with_long_form_lengths(world: World, priv: str) -> None:
    """Values of hundreds to thousands of octets: every length in the message is long-form."""
    from pysnmp.proto import rfc1902

    u = next(x for x in USERS if x.user == f"sha-512-{priv}".lower())
    vbs = link_down_varbinds(7) + [
        (rfc1902.ObjectName(f"1.3.6.1.4.1.99999.3.{i}"), rfc1902.OctetString(bytes([i]) * (200 * i + 7)))
        for i in range(1, 8)
    ]
    data = world.sender.trap(u.user, "authPriv", vbs, request_id=-(2**31))
    assert len(data) > 5000
    ours, theirs = world.both(data)
    assert isinstance(theirs, RawNotification) and ours is not None
    assert comparable(ours) == comparable(theirs)
    assert ours.request_id == -(2**31)


def test_request_ids_and_empty_varbind_list(world: World) -> None:
    u = USERS[0]
    for request_id, vbs in ((0, []), (2**31 - 1, link_down_varbinds()), (-1, link_down_varbinds()[:1])):
        data = world.sender.trap(u.user, u.level, vbs, request_id=request_id)
        ours, theirs = world.both(data)
        assert isinstance(theirs, RawNotification) and ours is not None
        assert comparable(ours) == comparable(theirs)


# --- what the fast path hands to pysnmp ---------------------------------------------------


def _declined(world: World, data: bytes, slug: str) -> RawNotification | str:
    before = world.fast.declined[slug]
    assert world.fast.receive(data, "127.0.0.1", 50000, 0.0) is None
    assert world.fast.declined[slug] == before + 1, world.fast.declined
    return world.oracle.read(data)


@pytest.mark.parametrize("tag", ["inform", "response", "get", "report"])
def test_authentic_non_trap_pdus_go_to_pysnmp(world: World, tag: str) -> None:
    u = next(x for x in USERS if x.user == "sha-256-aes-128")
    keys = localized_user(u, SENDER)
    data = craft(keys, SENDER, u.user.encode(), scoped_pdu(trap_pdu(link_down_varbinds(), tag=tag), SENDER))
    theirs = _declined(world, data, "not-a-trap")
    # pysnmp judges them: a request naming the sender's engine is not for trapd (unknown-engine-id),
    # a Response or Report is not a notification (unsupported-pdu).
    assert theirs == {"inform": "unknown-engine-id", "get": "unknown-engine-id"}.get(tag, "unsupported-pdu")


def test_reportable_messages_go_to_pysnmp(world: World) -> None:
    u = next(x for x in USERS if x.user == "sha-aes-128")
    keys = localized_user(u, SENDER)
    data = craft(keys, SENDER, u.user.encode(), scoped_pdu(trap_pdu(link_down_varbinds())), flags=0x07)
    _declined(world, data, "reportable")


def test_messages_for_trapd_engine_go_to_pysnmp(world: World) -> None:
    """Informs are addressed to trapd's engine ID: trapd is authoritative there and pysnmp answers."""
    u = next(x for x in USERS if x.user == "sha-256-aes-128")
    keys = localized_user(u, TRAPD)
    data = craft(keys, TRAPD, u.user.encode(), scoped_pdu(trap_pdu(link_down_varbinds(), tag="inform")))
    _declined(world, data, "not-bound")


def test_discovery_probe_goes_to_pysnmp(world: World) -> None:
    plain = localized_user(user("x"), b"")
    probe = craft(plain, b"", b"", scoped_pdu(trap_pdu([], tag="get")), flags=0x04)
    _declined(world, probe, "reportable")


def test_unknown_user_and_unbound_engine_go_to_pysnmp(world: World) -> None:
    scoped = scoped_pdu(trap_pdu(link_down_varbinds()))
    nobody = localized_user(user("nobody", "SHA", "AES-128"), SENDER)
    assert _declined(world, craft(nobody, SENDER, b"nobody", scoped), "not-bound") == "unknown-user"
    other = bytes.fromhex("80000000010a0b0c")
    bound = localized_user(USERS[0], other)
    theirs = _declined(world, craft(bound, other, USERS[0].user.encode(), scoped), "not-bound")
    assert theirs == "unknown-engine-id"


def test_any_engine_user_is_learned_from_an_authentic_message(world: World) -> None:
    """A user with no engine_ids: the fast path learns a new engine as V3Receiver does, and reads alike."""
    engine = bytes.fromhex("800000000199000001")
    any_engine = localized_user(ANY_ENGINE, engine)
    data = craft(any_engine, engine, b"anyengine", scoped_pdu(trap_pdu(link_down_varbinds()), engine))
    learned = world.fast.learned
    ours, theirs = world.both(data)
    assert ours is not None and isinstance(theirs, RawNotification)
    assert comparable(ours) == comparable(theirs)
    assert world.fast.learned == learned + 1 and (engine, b"anyengine") in world.fast.pairs


def test_odd_but_authentic_shapes_go_to_pysnmp(world: World) -> None:
    from pysnmp.proto.api import v2c

    u = next(x for x in USERS if x.user == "sha-384-aes-256")
    keys = localized_user(u, SENDER)
    name = u.user.encode()
    # error-status 5 / error-index 1 in a trap: pysnmp has its own rules, so it decides
    pdu = v2c.SNMPv2TrapPDU()
    v2c.apiPDU.set_defaults(pdu)
    v2c.apiPDU.set_error_status(pdu, 5)
    v2c.apiPDU.set_error_index(pdu, 1)
    v2c.apiPDU.set_varbinds(pdu, link_down_varbinds())
    from usm_support import encode_pdu

    _declined(world, craft(keys, SENDER, name, scoped_pdu(encode_pdu(pdu))), "error-fields")
    # a varbind value type SNMPv2 does not have (0x47): the fast decoder refuses, pysnmp decides
    odd = bytes.fromhex("a71a020101020100020100300f300d06082b06010201010300470101")
    _declined(world, craft(keys, SENDER, name, scoped_pdu(odd)), "varbinds-bad-tag")
    # a security model other than USM, a msgMaxSize below 484: pysnmp's constraints, pysnmp's call
    scoped = scoped_pdu(trap_pdu(link_down_varbinds()))
    _declined(world, craft(keys, SENDER, name, scoped, security_model=2), "security-model")
    _declined(world, craft(keys, SENDER, name, scoped, max_size=483), "header-bad-integer")
    # privacy without authentication: an invalid msgFlags
    _declined(world, craft(keys, SENDER, name, scoped, flags=0x02), "msg-flags")


def test_any_engine_learning_declines_what_it_cannot_verify(world: World) -> None:
    """Forged keys, a lower level, a malformed engine ID, the cap: declined, and V3Receiver counts them."""
    scoped = scoped_pdu(trap_pdu(link_down_varbinds()))
    engine = bytes.fromhex("800000000199000002")
    forged = localized_user(user("anyengine", "SHA-256", "AES-128", auth_key="a guessed key"), engine)
    assert _declined(world, craft(forged, engine, b"anyengine", scoped), "not-learned") == "wrong-digest"
    lower = localized_user(user("anyengine", "SHA-256", "none", auth_key="auth-anyengine-pass"), engine)
    theirs = _declined(world, craft(lower, engine, b"anyengine", scoped), "not-learned")
    assert theirs == "unsupported-security-level"
    short = b"\x80\x00\x01\x02"
    k_short = localized_user(ANY_ENGINE, short)
    assert _declined(world, craft(k_short, short, b"anyengine", scoped), "not-learned") == "unknown-engine-id"
    assert (engine, b"anyengine") not in world.fast.pairs and (short, b"anyengine") not in world.fast.pairs
    # At the cap the pair used least recently is pushed out: a new engine is not kept out.
    capped = UsmFastPath([ANY_ENGINE], TRAPD, max_learned_engines=1)
    for i in (1, 2):
        e = bytes([0x80, 0, 0, 0, 1, 0x77, i])
        got = capped.receive(craft(localized_user(ANY_ENGINE, e), e, b"anyengine", scoped), "h", 1, 0.0)
        assert got is not None
    assert capped.learned == 1 and list(capped.pairs) == [(e, b"anyengine")] and not capped.declined
