"""What the fast USM path refuses, and why: keys, tampering, levels, the time window, replays."""

from __future__ import annotations

import pytest
from usm_support import PysnmpReading, PysnmpTrapSender, craft, link_down_varbinds, scoped_pdu, trap_pdu, user

from trapd.listener.config import V3User
from trapd.listener.stats import DROP_REASONS
from trapd.listener.v3.usm import (
    REPLAY_MEMORY,
    TIME_WINDOW,
    LocalizedUser,
    Refused,
    UsmFastPath,
    localized_user,
)

SENDER = bytes.fromhex("8000000001020304")
TRAPD = bytes.fromhex("80004fb805deadbeef")

PRIV = user("priv", "SHA-256", "AES-128", [SENDER])
PRIV_DES = user("privdes", "MD5", "DES", [SENDER])
AUTH = user("auth", "SHA", "none", [SENDER])
PLAIN = user("plain", engine_ids=[SENDER])
USERS = [PRIV, PRIV_DES, AUTH, PLAIN]

SCOPED = scoped_pdu(trap_pdu(link_down_varbinds()), SENDER)


@pytest.fixture(scope="module")
def oracle() -> PysnmpReading:
    return PysnmpReading(USERS, TRAPD)


def fast_path() -> UsmFastPath:
    return UsmFastPath(USERS, TRAPD)


def keys(u: V3User) -> LocalizedUser:
    return localized_user(u, SENDER)


def refused(fast: UsmFastPath, data: bytes) -> Refused:
    with pytest.raises(Refused) as info:
        fast.receive(data, "192.0.2.1", 162, 0.0)
    assert info.value.reason in DROP_REASONS
    return info.value


def accepted(fast: UsmFastPath, data: bytes) -> None:
    raw = fast.receive(data, "192.0.2.1", 162, 0.0)
    assert raw is not None, fast.declined


# --- keys ---------------------------------------------------------------------------


@pytest.mark.parametrize("u", [PRIV, PRIV_DES, AUTH], ids=lambda u: u.user)
def test_wrong_auth_key_is_wrong_digest_like_pysnmp(oracle: PysnmpReading, u: V3User) -> None:
    impostor = user(u.user, u.auth_protocol, u.priv_protocol, [SENDER], auth_key="not the auth key")
    data = PysnmpTrapSender(SENDER, [impostor]).trap(u.user, u.level, link_down_varbinds())
    assert refused(fast_path(), data).reason == "wrong-digest"
    assert oracle.read(data) == "wrong-digest"


@pytest.mark.parametrize("u", [PRIV, PRIV_DES], ids=lambda u: u.user)
def test_wrong_priv_key_is_decryption_error_like_pysnmp(oracle: PysnmpReading, u: V3User) -> None:
    impostor = user(u.user, u.auth_protocol, u.priv_protocol, [SENDER], priv_key="not the priv key")
    impostor = V3User(u.user, u.auth_protocol, u.auth_key, u.priv_protocol, impostor.priv_key, (SENDER,))
    assert impostor.auth_key == u.auth_key and impostor.priv_key != u.priv_key
    data = PysnmpTrapSender(SENDER, [impostor]).trap(u.user, u.level, link_down_varbinds())
    assert refused(fast_path(), data).reason == "decryption-error"
    assert oracle.read(data) == "decryption-error"


def test_short_mac_field_and_bad_salt_and_des_block_length() -> None:
    fast = fast_path()
    assert (
        refused(fast, craft(keys(PRIV), SENDER, b"priv", SCOPED, mac_override=bytes(12))).detail
        == "mac-length"
    )
    r = refused(fast, craft(keys(PRIV), SENDER, b"priv", SCOPED, salt_field=b"1234567"))
    assert (r.reason, r.detail) == ("decryption-error", "salt-length")
    r = refused(fast, craft(keys(PRIV_DES), SENDER, b"privdes", SCOPED, ciphertext_override=bytes(13)))
    assert (r.reason, r.detail) == ("decryption-error", "des-block-length")
    r = refused(fast, craft(keys(PRIV), SENDER, b"priv", SCOPED, ciphertext_override=b""))
    assert r.reason == "decryption-error"


# --- tampering ------------------------------------------------------------------------


@pytest.mark.parametrize("u", [PRIV, PRIV_DES, AUTH], ids=lambda u: u.user)
def test_no_tampered_byte_is_ever_accepted(u: V3User) -> None:
    """Flip each byte of an authentic message in turn: refused or handed to pysnmp, never delivered."""
    original = craft(keys(u), SENDER, u.user.encode(), SCOPED)
    fast = fast_path()
    outcomes: set[str] = set()
    for i in range(len(original)):
        data = bytearray(original)
        data[i] ^= 0x5A
        try:
            raw = fast.receive(bytes(data), "192.0.2.1", 162, 0.0)
        except Refused as exc:
            assert exc.reason in DROP_REASONS
            outcomes.add(exc.reason)
            continue
        assert raw is None, f"tampered byte {i} accepted"
        outcomes.add("declined")
    assert fast.accepted == 0
    assert {"wrong-digest", "declined"} <= outcomes
    accepted(fast, original)  # and the untouched message still goes through


# --- security levels ---------------------------------------------------------------------


def test_level_must_be_the_users_level() -> None:
    fast = fast_path()
    # an authNoPriv user receiving authPriv (keys as if the user had privacy)
    as_priv = localized_user(user("auth", "SHA", "AES-128", [SENDER]), SENDER)
    r = refused(fast, craft(as_priv, SENDER, b"auth", SCOPED))
    assert (r.reason, r.detail) == ("unsupported-security-level", "above-user-level")
    # an authPriv user sending authNoPriv, and noAuthNoPriv
    as_auth = localized_user(user("priv", "SHA-256", "none", [SENDER]), SENDER)
    r = refused(fast, craft(as_auth, SENDER, b"priv", SCOPED))
    assert (r.reason, r.detail) == ("unsupported-security-level", "below-user-level")
    as_plain = localized_user(user("priv"), SENDER)
    r = refused(fast, craft(as_plain, SENDER, b"priv", SCOPED))
    assert (r.reason, r.detail) == ("unsupported-security-level", "below-user-level")
    # a noAuthNoPriv user receiving authNoPriv
    plain_with_auth = localized_user(user("plain", "MD5", "none", [SENDER]), SENDER)
    r = refused(fast, craft(plain_with_auth, SENDER, b"plain", SCOPED))
    assert (r.reason, r.detail) == ("unsupported-security-level", "above-user-level")
    accepted(fast, craft(keys(PLAIN), SENDER, b"plain", SCOPED))


# --- time window and replays ---------------------------------------------------------------


def test_first_authentic_message_teaches_the_engine_time() -> None:
    fast = fast_path()
    accepted(fast, craft(keys(PRIV), SENDER, b"priv", SCOPED, boots=3, etime=50_000))
    notion = fast.timelines[SENDER]
    assert (notion.boots, notion.time) == (3, 50_000)


def test_window_is_150_s_behind_the_latest_time() -> None:
    fast = fast_path()
    k = keys(PRIV)
    accepted(fast, craft(k, SENDER, b"priv", SCOPED, boots=2, etime=10_000, msg_id=1))
    accepted(fast, craft(k, SENDER, b"priv", SCOPED, boots=2, etime=10_000 - TIME_WINDOW, msg_id=2))
    r = refused(fast, craft(k, SENDER, b"priv", SCOPED, boots=2, etime=10_000 - TIME_WINDOW - 1, msg_id=3))
    assert (r.reason, r.detail) == ("not-in-time-window", "old-time")
    # a later time moves the window on
    accepted(fast, craft(k, SENDER, b"priv", SCOPED, boots=2, etime=20_000, msg_id=4))
    r = refused(fast, craft(k, SENDER, b"priv", SCOPED, boots=2, etime=10_001, msg_id=5))
    assert r.detail == "old-time"
    # a reboot (boots + 1) restarts engineTime: accepted; the old boots is then refused
    accepted(fast, craft(k, SENDER, b"priv", SCOPED, boots=3, etime=5, msg_id=6))
    r = refused(fast, craft(k, SENDER, b"priv", SCOPED, boots=2, etime=20_001, msg_id=7))
    assert (r.reason, r.detail) == ("not-in-time-window", "old-boots")


def test_boots_at_its_maximum_is_never_in_time() -> None:
    r = refused(fast_path(), craft(keys(PRIV), SENDER, b"priv", SCOPED, boots=2147483647))
    assert (r.reason, r.detail) == ("not-in-time-window", "boots-max")


def test_an_exact_replay_is_refused_even_from_a_quiet_sender() -> None:
    fast = fast_path()
    data = craft(keys(PRIV), SENDER, b"priv", SCOPED, etime=777)
    accepted(fast, data)
    r = refused(fast, data)
    assert (r.reason, r.detail) == ("not-in-time-window", "replayed")
    # the same content with another msgID / salt is a new message
    accepted(fast, craft(keys(PRIV), SENDER, b"priv", SCOPED, etime=777, msg_id=99))


def test_replay_memory_is_bounded() -> None:
    fast = fast_path()
    k = keys(AUTH)
    for i in range(REPLAY_MEMORY + 10):
        accepted(fast, craft(k, SENDER, b"auth", SCOPED, etime=1000 + i // 50, msg_id=i))
    assert len(fast.timelines[SENDER].recent) <= REPLAY_MEMORY


def test_unauthenticated_messages_have_no_window() -> None:
    fast = fast_path()
    data = craft(keys(PLAIN), SENDER, b"plain", SCOPED)
    accepted(fast, data)
    accepted(fast, data)  # noAuthNoPriv: nothing to tell a replay from a repeat
    assert SENDER not in fast.timelines


def test_time_notions_survive_a_rebuild() -> None:
    old = fast_path()
    data = craft(keys(PRIV), SENDER, b"priv", SCOPED, etime=4242)
    accepted(old, data)
    new = UsmFastPath(USERS, TRAPD, timelines=old.timelines)
    assert refused(new, data).detail == "replayed"
    # engines no longer configured are forgotten
    assert UsmFastPath([PLAIN], TRAPD, timelines=old.timelines).timelines == {SENDER: old.timelines[SENDER]}
    assert UsmFastPath([], TRAPD, timelines=old.timelines).timelines == {}


def test_learned_engines_keep_a_smaller_replay_memory_and_the_shared_one_catches_the_rest() -> None:
    """Issue 14 item 1: up to 1,024 learned engines x 4,096 MACs would be 600 MB; each keeps 256,
    and the shared fixed-size memory (replay.py) still refuses a replay of an older message."""
    from trapd.listener.v3.replay import ReplayMemory
    from trapd.listener.v3.timeliness import LEARNED_REPLAY_MEMORY

    any_engine = user("anyone", "SHA", "none")
    fast = UsmFastPath([*USERS, any_engine], TRAPD, replays=ReplayMemory())
    engine = bytes.fromhex("80000000019911223344")
    k = localized_user(any_engine, engine)
    scoped = scoped_pdu(trap_pdu(link_down_varbinds()), engine)
    sent = [
        craft(k, engine, b"anyone", scoped, etime=1000, msg_id=i) for i in range(LEARNED_REPLAY_MEMORY * 2)
    ]
    for data in sent:
        accepted(fast, data)
    assert len(fast.timelines[engine].recent) <= LEARNED_REPLAY_MEMORY
    first = refused(fast, sent[0])  # not in the engine's own memory any more
    assert (first.reason, first.detail) == ("not-in-time-window", "replayed")
    accepted(fast, craft(keys(AUTH), SENDER, b"auth", SCOPED, msg_id=1))  # a bound engine: its own memory
    assert fast.timelines[SENDER].memory == REPLAY_MEMORY
