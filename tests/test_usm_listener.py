"""The fast USM path inside the Listener: which v3 datagrams it takes, what pysnmp still gets, the counts."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from usm_support import craft, link_down_varbinds, scoped_pdu, trap_pdu, user

from trapd.listener import Listener, ListenerConfig, RawNotification
from trapd.listener.config import ListenAddress
from trapd.listener.v3.usm import localized_user

SENDER = bytes.fromhex("8000000001020304")
OTHER = bytes.fromhex("80000000010a0b0c")
TRAPD = bytes.fromhex("80004fb805aabbccddeeff0011")
PRIV = user("privuser", "SHA-256", "AES-128", [SENDER])
ANY = user("anyengine", "SHA", "AES-128")
SCOPED = scoped_pdu(trap_pdu(link_down_varbinds()), SENDER, b"ctx")
PEER = ("127.0.0.1", 40000)


def config(*users: Any) -> ListenerConfig:
    return ListenerConfig(listen=(ListenAddress("127.0.0.1", 0),), v3_users=users, engine_id=TRAPD)


class Harness:
    def __init__(self, listener: Listener, got: list[RawNotification]) -> None:
        self.listener = listener
        self.got = got
        self.replies: list[bytes] = []

    def send(self, data: bytes) -> None:
        self.listener.handle_datagram(data, PEER, lambda d, a: self.replies.append(d))

    @property
    def fast(self) -> Any:
        return self.listener._usm


@pytest.fixture
async def trapd() -> AsyncIterator[Harness]:
    got: list[RawNotification] = []
    async with Listener(config(PRIV, ANY), got.append) as listener:
        yield Harness(listener, got)


async def test_traps_from_bound_engines_take_the_fast_path(trapd: Harness) -> None:
    k = localized_user(PRIV, SENDER)
    for i in range(5):
        trapd.send(craft(k, SENDER, b"privuser", SCOPED, etime=1000 + i, msg_id=i))
    assert [r.security.user for r in trapd.got] == ["privuser"] * 5
    assert trapd.got[0].security.context_name == "ctx" and trapd.got[0].security.engine_id == SENDER.hex()
    assert trapd.fast.accepted == 5
    assert dict(trapd.listener.stats.received) == {"v3": 5} and not trapd.listener.stats.dropped


async def test_refusals_are_counted_by_reason(trapd: Harness) -> None:
    k = localized_user(PRIV, SENDER)
    good = craft(k, SENDER, b"privuser", SCOPED, etime=5000)
    wrong_auth = localized_user(
        user("privuser", "SHA-256", "AES-128", [SENDER], auth_key="guessed-key"), SENDER
    )
    wrong_priv = localized_user(
        user("privuser", "SHA-256", "AES-128", [SENDER], priv_key="guessed-key"), SENDER
    )
    wrong_priv = dataclasses.replace(k, blocks=wrong_priv.blocks, priv_key=wrong_priv.priv_key)
    no_priv = localized_user(user("privuser", "SHA-256", "none", [SENDER]), SENDER)
    trapd.send(good)
    trapd.send(good)  # replay
    trapd.send(craft(wrong_auth, SENDER, b"privuser", SCOPED))
    trapd.send(craft(wrong_priv, SENDER, b"privuser", SCOPED, etime=5001))
    trapd.send(craft(no_priv, SENDER, b"privuser", SCOPED))
    trapd.send(craft(k, SENDER, b"privuser", SCOPED, etime=100))  # 4,900 s before the latest
    stats = trapd.listener.stats
    assert len(trapd.got) == 1
    assert dict(stats.dropped) == {
        "not-in-time-window": 2,
        "wrong-digest": 1,
        "decryption-error": 1,
        "unsupported-security-level": 1,
    }
    assert stats.dropped_detail[("not-in-time-window", "replayed")] == 1
    assert stats.dropped_detail[("not-in-time-window", "old-time")] == 1
    assert trapd.replies == []  # traps are never answered


async def test_what_the_fast_path_declines_still_reaches_pysnmp(trapd: Harness) -> None:
    k_other = localized_user(PRIV, OTHER)
    trapd.send(craft(k_other, OTHER, b"privuser", SCOPED))  # engine the user is not bound to
    nobody = localized_user(user("nobody", "SHA", "AES-128"), SENDER)
    trapd.send(craft(nobody, SENDER, b"nobody", SCOPED))  # unknown user
    forged = localized_user(user("anyengine", "SHA", "AES-128", auth_key="guessed-key"), OTHER)
    trapd.send(craft(forged, OTHER, b"anyengine", SCOPED))  # any-engine user, unverifiable: V3Receiver's
    stats = trapd.listener.stats
    assert dict(stats.dropped) == {"unknown-engine-id": 1, "unknown-user": 1, "wrong-digest": 1}
    assert stats.dropped_detail[("wrong-digest", "unlearned-engine")] == 1
    assert trapd.fast.accepted == 0 and trapd.fast.declined["not-bound"] == 2
    # the any-engine user's real keys: learned by the fast path, which then handles it
    trapd.send(craft(localized_user(ANY, OTHER), OTHER, b"anyengine", SCOPED))
    assert [r.security.user for r in trapd.got] == ["anyengine"] and trapd.fast.learned == 1
    # an inform to trapd's engine: pysnmp answers it (a Response through the same reply path)
    k_trapd = localized_user(PRIV, TRAPD)
    inform = craft(
        k_trapd, TRAPD, b"privuser", scoped_pdu(trap_pdu(link_down_varbinds(), tag="inform")), flags=7
    )
    trapd.send(inform)
    assert trapd.replies, "pysnmp did not answer the inform (a report or a response)"


async def test_reload_keeps_sender_time_notions() -> None:
    got: list[RawNotification] = []
    async with Listener(config(PRIV), got.append) as listener:
        data = craft(localized_user(PRIV, SENDER), SENDER, b"privuser", SCOPED, etime=9000)
        listener.handle_datagram(data, PEER, lambda d, a: None)
        listener.update_config(config(PRIV, ANY))  # users changed: receivers rebuilt
        listener.handle_datagram(data, PEER, lambda d, a: None)
        assert len(got) == 1
        assert listener.stats.dropped_detail[("not-in-time-window", "replayed")] == 1
        listener.update_config(config())
        assert listener._usm is None and listener._v3 is None


class _Lines:
    """A listener logger that keeps the drop lines it is given."""

    def __init__(self) -> None:
        self.lines: list[dict[str, Any]] = []

    def warning(self, event: str, **fields: Any) -> None:
        self.lines.append({"event": event, **fields})

    def exception(self, event: str, **fields: Any) -> None:
        self.lines.append({"event": event, **fields})


async def test_v3_drop_lines_name_user_and_engine_and_each_bad_user_shows_within_one_interval() -> None:
    """Issue 15: who failed, never a key; rate-limited per (reason, user/engine), not per reason."""
    import asyncio
    import socket

    log = _Lines()
    other = user("otheruser", "SHA", "AES-128", [SENDER])
    async with Listener(
        config(PRIV, other), lambda raw: None, logger=log, drop_log_interval=3600.0
    ) as listener:
        port = listener.bound[0].address.port
        guessed = {
            name: localized_user(
                user(name, u.auth_protocol, u.priv_protocol, [SENDER], auth_key="guess"), SENDER
            )
            for name, u in (("privuser", PRIV), ("otheruser", other))
        }
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for name in ("privuser", "privuser", "otheruser", "otheruser"):
                s.sendto(craft(guessed[name], SENDER, name.encode(), SCOPED), ("127.0.0.1", port))
        for _ in range(500):
            if listener.stats.dropped["wrong-digest"] == 4:
                break
            await asyncio.sleep(0.01)
        assert listener.stats.dropped["wrong-digest"] == 4
    digest_lines = [x for x in log.lines if x.get("reason") == "wrong-digest"]
    # One line at once per (reason, user, engine); the repeats are counted in the line written at close.
    assert [(x["user"], x["engine_id"]) for x in digest_lines[:2]] == [
        ("privuser", SENDER.hex()),
        ("otheruser", SENDER.hex()),
    ]
    assert sorted((x["user"], x["count"]) for x in digest_lines) == [
        ("otheruser", 1),
        ("otheruser", 1),
        ("privuser", 1),
        ("privuser", 1),
    ]
    text = repr(log.lines)
    for secret in ("guess", "auth-privuser-pass", "priv-privuser-pass", guessed["privuser"].auth_key.hex()):
        assert secret not in text
