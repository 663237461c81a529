"""Fixed-seed mutation fuzzing of the fast USM path: clean outcomes only, nothing forged gets through.

Seeds are authentic v3 traps at every level (AES and DES privacy, HMAC-96
and SHA-2 MACs, noAuthNoPriv). Every mutant must end as one of the three
outcomes the listener understands (a notification, a decline, a Refused with
a known drop reason), never an internal error; a mutant of an authenticated
seed must never be delivered. Through the Listener every mutant must end as
exactly one count. Bounded: a few thousand inputs, about a second.
"""

from __future__ import annotations

import random

from usm_support import craft, link_down_varbinds, random_varbinds, scoped_pdu, trap_pdu, user

from trapd.listener import Listener, ListenerConfig, RawNotification
from trapd.listener.config import ListenAddress
from trapd.listener.stats import DROP_REASONS
from trapd.listener.v3.usm import Refused, UsmFastPath, localized_user

SENDER = bytes.fromhex("8000000001020304")
TRAPD = bytes.fromhex("80004fb805aabbccddeeff0011")
USERS = [
    user("aes", "SHA-256", "AES-128", [SENDER]),
    user("des", "MD5", "DES", [SENDER]),
    user("aes256", "SHA", "AES-256", [SENDER]),
    user("auth", "SHA-512", "none", [SENDER]),
    user("plain", engine_ids=[SENDER]),
]
MUTANTS = 6000


def seeds(rng: random.Random) -> list[tuple[bytes, bool]]:
    """(message, authenticated) pairs; each from a distinct msgID so replays do not mask mutations."""
    out = []
    for i, u in enumerate(USERS * 3):
        scoped = scoped_pdu(trap_pdu(random_varbinds(rng, 4) if i % 2 else link_down_varbinds()), SENDER)
        data = craft(localized_user(u, SENDER), SENDER, u.user.encode(), scoped, etime=10_000, msg_id=i)
        out.append((data, u.level != "noAuthNoPriv"))
    return out


def mutate(rng: random.Random, data: bytes, i: int) -> bytes:
    b = bytearray(data)
    op = i % 6
    if op == 0:  # flip bits
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    elif op == 1:  # truncate
        del b[rng.randrange(len(b)) :]
    elif op == 2:  # insert junk
        at = rng.randrange(len(b))
        b[at:at] = rng.randbytes(rng.randint(1, 8))
    elif op == 3:  # a BER-significant byte anywhere
        b[rng.randrange(len(b))] = rng.choice([0x00, 0x02, 0x04, 0x30, 0x80, 0x81, 0x84, 0x8F, 0xFF])
    elif op == 4:  # append
        b += rng.randbytes(rng.randint(1, 16))
    else:  # splice two halves of different shapes
        cut = rng.randrange(len(b))
        b = b[:cut] + rng.randbytes(rng.randint(0, 40))
    return bytes(b)


def test_mutants_end_cleanly_and_forgeries_never_pass() -> None:
    rng = random.Random(20261128)
    fast = UsmFastPath(USERS, TRAPD)
    base = seeds(rng)
    outcomes = {"accepted": 0, "declined": 0, "refused": 0}
    for i in range(MUTANTS):
        original, authenticated = base[i % len(base)]
        data = mutate(rng, original, i)
        try:
            raw = fast.receive(data, "192.0.2.7", 162, 0.0)
        except Refused as exc:
            assert exc.reason in DROP_REASONS, exc
            outcomes["refused"] += 1
            continue
        if raw is None:
            outcomes["declined"] += 1
            continue
        assert isinstance(raw, RawNotification)
        assert not (authenticated and data != original), f"forged message {i} delivered: {data.hex()}"
        outcomes["accepted"] += 1
    assert not [slug for slug in fast.declined if slug.startswith("internal-")], fast.declined
    assert outcomes["refused"] > 1000 and outcomes["declined"] > 1000
    # the path still works afterwards
    keys = localized_user(USERS[0], SENDER)
    fresh = craft(keys, SENDER, b"aes", scoped_pdu(trap_pdu([])), etime=10_001, msg_id=999)
    assert fast.receive(fresh, "192.0.2.7", 162, 0.0) is not None


async def test_mutants_through_the_listener_each_end_as_one_count() -> None:
    rng = random.Random(7)
    got: list[RawNotification] = []
    config = ListenerConfig(listen=(ListenAddress("127.0.0.1", 0),), v3_users=tuple(USERS), engine_id=TRAPD)
    async with Listener(config, got.append) as listener:
        stats = listener.stats
        base = seeds(rng)
        for i in range(400):
            data = mutate(rng, base[i % len(base)][0], i)
            before = stats.received_total + stats.dropped_total + stats.v3_discovery
            listener.handle_datagram(data, ("127.0.0.1", 40000), lambda d, a: None)
            after = stats.received_total + stats.dropped_total + stats.v3_discovery
            assert after - before == 1, (i, data.hex(), stats.to_dict())
        assert not any(d.startswith("internal-") for _, d in stats.dropped_detail)
        assert stats.callback_errors == 0


async def test_every_truncation_of_v3_traps_and_informs_is_one_drop_and_no_reply() -> None:
    """Authentic v3 traps from a sender and informs to trapd's engine, at every level, cut at every
    length: as sent (the outer length now too long) and re-framed (the outer SEQUENCE made to fit
    what is left, so the cut lands inside a field, past the fast path's framing checks and into
    pysnmp's). Each must be one drop, none delivered, none answered (no report to a cut inform),
    never an internal error. Bounded: about 4,000 datagrams, a few seconds. No defect found; a
    re-framed cut of an authenticated inform is counted wrong-digest (its MAC no longer fits, and
    trapd checks it before pysnmp parses the rest), not malformed."""
    from trapd.listener.ber import encode_length
    from trapd.listener.config import RateLimit

    got: list[RawNotification] = []
    config = ListenerConfig(
        listen=(ListenAddress("127.0.0.1", 0),),
        v3_users=tuple(USERS),
        engine_id=TRAPD,
        rate_limit=RateLimit(v3_slow_per_source=0, v3_slow_global=0),  # every cut reaches pysnmp
    )
    replies: list[bytes] = []
    async with Listener(config, got.append) as listener:
        stats = listener.stats
        assert listener._v3 is not None
        builder = listener._v3.receiver.engine.get_mib_builder()
        boots, etime = builder.import_symbols("__SNMP-FRAMEWORK-MIB", "snmpEngineBoots", "snmpEngineTime")
        sent = 0
        for u in USERS:
            for inform in (False, True):
                engine = TRAPD if inform else SENDER
                flags = {"noAuthNoPriv": 0, "authNoPriv": 1, "authPriv": 3}[u.level] | (4 if inform else 0)
                clock = (int(boots.syntax), int(etime.syntax.clone())) if inform else (1, 10_000)
                pdu = trap_pdu(link_down_varbinds(), tag="inform" if inform else "trap")
                data = craft(localized_user(u, engine), engine, u.user.encode(), scoped_pdu(pdu, engine),
                             flags=flags, boots=clock[0], etime=clock[1], msg_id=7)  # fmt: skip
                header = 2 if data[1] < 0x80 else 2 + (data[1] & 0x7F)
                for cut in range(len(data)):
                    cuts = [data[:cut]]
                    if cut > header:
                        cuts.append(b"\x30" + encode_length(cut - header) + data[header:cut])
                    for cut_data in cuts:
                        before = stats.received_total + stats.dropped_total + stats.v3_discovery
                        listener.handle_datagram(
                            cut_data, ("127.0.0.1", 40000), lambda d, a: replies.append(d)
                        )
                        after = stats.received_total + stats.dropped_total + stats.v3_discovery
                        assert after - before == 1, (u.user, inform, cut, stats.to_dict())
                        sent += 1
        assert sent > 3000 and got == [] and replies == []
        assert stats.received_total == 0 and stats.v3_discovery == 0
        assert set(stats.dropped) <= {"malformed", "wrong-digest"}, stats.dropped
        assert not any(d.startswith("internal-") for _, d in stats.dropped_detail)
        assert stats.callback_errors == 0 and stats.send_errors == 0
