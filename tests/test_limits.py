"""The rate limiter's shedding order: the flooding source first, never a clearing notification for a new one.

Real datagrams (encoded by pysnmp), a fake clock, and the real listener's
receive path (``Listener.handle_datagram``, no sockets needed).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pyasn1.codec.ber import encoder
from pysnmp.proto import api
from rules_support import ruleset

from trapd.listener import Listener, ListenerConfig, RawNotification
from trapd.listener.config import RateLimit
from trapd.listener.limits import Clearing, SourceLimiter, needles, trap_oid_of
from trapd.listener.raw import Oid
from trapd.rules.ruleset import ClearingOids
from trapd.secrets import Secret

P1 = api.PROTOCOL_MODULES[api.SNMP_VERSION_1]
P2 = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
LINK_DOWN = (1, 3, 6, 1, 6, 3, 1, 1, 5, 3)
LINK_UP = (1, 3, 6, 1, 6, 3, 1, 1, 5, 4)
VENDOR = (1, 3, 6, 1, 4, 1, 64999, 7)
IF_INDEX_5 = (1, 3, 6, 1, 2, 1, 2, 2, 1, 1, 5)

RULES = """
rules:
  - name: port-down
    match: {notification: IF-MIB::linkDown}
    actions:
      - action: kea.lease-del
        circuit-id: "{{ source }}"
        delay: 30s
        cancel-key: "port:{{ source }}:{{ ifIndex }}"
        cap: {limit: 50, per: 1m}
  - name: port-up
    match: {notification: IF-MIB::linkUp}
    cancel: "port:{{ source }}:{{ ifIndex }}"
  - name: vendor-clear
    match: {notification: {under: '1.3.6.1.4.1.64999.7'}}
    cancel: "vendor:{{ source }}"
"""


def v2c(trap_oid: Oid, extra: tuple[Oid, Oid] | None = None) -> bytes:
    pdu = P2.TrapPDU()
    P2.apiTrapPDU.set_defaults(pdu)
    vbs = [
        (P2.ObjectIdentifier(P2.apiTrapPDU.sysUpTime), P2.TimeTicks(500)),
        (P2.ObjectIdentifier(P2.apiTrapPDU.snmpTrapOID), P2.ObjectIdentifier(trap_oid)),
        (P2.ObjectIdentifier(IF_INDEX_5), P2.Integer(5)),
    ]
    if extra is not None:
        vbs.append((P2.ObjectIdentifier(extra[0]), P2.ObjectIdentifier(extra[1])))
    P2.apiTrapPDU.set_varbinds(pdu, vbs)
    msg = P2.Message()
    P2.apiMessage.set_defaults(msg)
    P2.apiMessage.set_community(msg, "public")
    P2.apiMessage.set_pdu(msg, pdu)
    return bytes(encoder.encode(msg))


def v1(generic: int) -> bytes:
    pdu = P1.TrapPDU()
    P1.apiTrapPDU.set_defaults(pdu)
    P1.apiTrapPDU.set_enterprise(pdu, (1, 3, 6, 1, 4, 1, 9))
    P1.apiTrapPDU.set_generic_trap(pdu, generic)
    P1.apiTrapPDU.set_varbinds(pdu, [(P1.ObjectIdentifier(IF_INDEX_5), P1.Integer(5))])
    msg = P1.Message()
    P1.apiMessage.set_defaults(msg)
    P1.apiMessage.set_community(msg, "public")
    P1.apiMessage.set_pdu(msg, pdu)
    return bytes(encoder.encode(msg))


DOWN, UP = v2c(LINK_DOWN), v2c(LINK_UP)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def clearing(tmp_path_factory: pytest.TempPathFactory) -> ClearingOids:
    return ruleset(tmp_path_factory.mktemp("rules"), RULES).clearing_oids


class Rig:
    """A listener with a limiter on a fake clock, fed through its real receive path."""

    def __init__(self, rate: RateLimit, clearing: Clearing | None, **kw: Any) -> None:
        self.clock = Clock()
        self.limiter = SourceLimiter(rate, clearing, clock=self.clock, **kw)
        self.got: list[RawNotification] = []
        self.listener = Listener(
            ListenerConfig(communities=(Secret("public", "test"),), rate_limit=rate),
            self.got.append,
            limiter=self.limiter,
            logger=_QuietLog(),
        )
        self.replies: list[bytes] = []

    def send(self, data: bytes, host: str = "10.0.0.1", n: int = 1) -> None:
        for _ in range(n):
            self.listener.handle_datagram(data, (host, 40000), lambda d, a: self.replies.append(d))

    def passed(self, host: str, oid: Oid = LINK_DOWN) -> int:
        return sum(1 for r in self.got if r.source == host and trap_oid_of(r) == oid)

    @property
    def limited(self) -> dict[str, int]:
        d = self.listener.stats.dropped_detail
        return {detail: n for (reason, detail), n in d.items() if reason == "rate-limited"}


class _QuietLog:
    def warning(self, *a: Any, **k: Any) -> None: ...

    def exception(self, *a: Any, **k: Any) -> None: ...


def test_clearing_oids_come_from_the_rules_with_cancel(clearing: ClearingOids) -> None:
    assert clearing.exact == frozenset({LINK_UP})
    assert clearing.prefixes == (VENDOR,)
    assert clearing.covers(LINK_UP) and clearing.covers((*VENDOR, 0, 3))
    assert not clearing.covers(LINK_DOWN) and not clearing.covers(VENDOR[:-1])


def test_a_cancel_rule_without_a_notification_makes_everything_a_candidate(tmp_path: Path) -> None:
    rs = ruleset(tmp_path, 'rules:\n  - name: any\n    match: {source: 10.0.0.0/8}\n    cancel: "x"\n')
    assert rs.clearing_oids.any and rs.clears(LINK_DOWN)
    assert needles(rs.clearing_oids) is None


def test_the_flooding_source_is_shed_by_its_own_bucket_and_a_quiet_one_still_passes() -> None:
    rig = Rig(RateLimit(per_source=100, global_=1000, burst=1.0), None)
    rig.send(DOWN, "10.0.0.1", n=5000)  # a flood, all in the same instant
    rig.send(DOWN, "10.0.0.2", n=50)
    assert rig.passed("10.0.0.1") == 100  # its burst, nothing more
    assert rig.passed("10.0.0.2") == 50
    assert rig.limited == {"per-source": 4900}
    # One second later the flooder has one second's worth of tokens again: it recovers.
    rig.clock.now += 1.0
    rig.send(DOWN, "10.0.0.1", n=500)
    assert rig.passed("10.0.0.1") == 200


def test_under_global_pressure_heavy_sources_go_first() -> None:
    # Four senders each above half their own bucket, together beyond half the global one.
    rig = Rig(RateLimit(per_source=100, global_=300, burst=1.0), None)
    heavy = [f"10.1.0.{i}" for i in range(1, 5)]
    for _ in range(80):
        for h in heavy:
            rig.send(DOWN, h)
    heavy_passed = sum(rig.passed(h) for h in heavy)
    # Each got past half of its own depth (50), then the global pressure shed it.
    assert [rig.passed(h) for h in heavy] == [50] * 4
    assert rig.limited == {"global": 4 * 80 - heavy_passed}
    # Fifty quiet switches with one trap each, during the storm: all of them pass.
    for i in range(1, 51):
        rig.send(DOWN, f"10.2.0.{i}")
    assert sum(rig.passed(f"10.2.0.{i}") for i in range(1, 51)) == 50
    for h in heavy:
        rig.send(DOWN, h, n=10)
    assert sum(rig.passed(h) for h in heavy) == heavy_passed
    # Once the global bucket itself is empty, everybody is dropped.
    for i in range(51, 251):
        rig.send(DOWN, f"10.2.0.{i}")
    quiet = sum(rig.passed(f"10.2.0.{i}") for i in range(1, 251))
    assert quiet + heavy_passed == 300


def test_a_clearing_trap_in_a_flood_passes_while_new_ones_are_dropped(clearing: ClearingOids) -> None:
    rig = Rig(RateLimit(per_source=100, global_=1000, burst=1.0), clearing)
    rig.send(DOWN, "10.0.0.1", n=1000)
    for _ in range(20):  # the port comes back up in the middle of the storm
        rig.send(DOWN, "10.0.0.1", n=10)
        rig.send(UP, "10.0.0.1")
    assert rig.passed("10.0.0.1", LINK_DOWN) == 100
    assert rig.passed("10.0.0.1", LINK_UP) == 20
    # linkDowns over the limit were dropped before decoding: only the linkUps were probed.
    assert rig.limiter.stats.probed == {"per-source": 20}
    assert rig.limiter.stats.exempted == {"per-source": 20}
    assert rig.limited == {"per-source": 1000 + 200 - 100}


def test_clearing_traps_are_dropped_only_when_they_alone_exceed_the_reserve(clearing: ClearingOids) -> None:
    rig = Rig(RateLimit(per_source=50, global_=0, burst=1.0), clearing)
    rig.send(DOWN, "10.0.0.1", n=50)  # the ordinary bucket is spent on new traps
    rig.send(UP, "10.0.0.1", n=80)  # a flood of linkUps: the reserve (50) passes, the rest is dropped
    assert rig.passed("10.0.0.1", LINK_UP) == 50
    assert rig.limited == {"per-source": 30}


def test_a_clearing_trap_within_the_limits_spends_ordinary_tokens(clearing: ClearingOids) -> None:
    rig = Rig(RateLimit(per_source=10, global_=0, burst=1.0), clearing)
    rig.send(UP, "10.0.0.1", n=10)
    rig.send(DOWN, "10.0.0.1", n=5)
    assert rig.passed("10.0.0.1", LINK_UP) == 10 and rig.passed("10.0.0.1", LINK_DOWN) == 0
    assert rig.limiter.stats.probed == {}


def test_forged_clearing_bytes_cost_a_decode_each_up_to_the_reserve_and_are_dropped(
    clearing: ClearingOids,
) -> None:
    # linkDown carrying linkUp's OID as a value: it looks like a candidate, decoding says no.
    forged = v2c(LINK_DOWN, extra=((1, 3, 6, 1, 4, 1, 99, 1), LINK_UP))
    rig = Rig(RateLimit(per_source=20, global_=0, burst=1.0), clearing)
    rig.send(DOWN, "10.0.0.1", n=20)
    rig.send(forged, "10.0.0.1", n=500)
    assert rig.limiter.stats.probed == {"per-source": 20}  # the reserve bounds the decoding
    assert rig.limiter.stats.exempted == {}
    assert rig.passed("10.0.0.1") == 20
    assert rig.limited == {"per-source": 500}
    assert rig.listener.stats.received["v2c"] == 20  # probes that failed are drops, not receptions


def test_v1_cannot_be_told_before_decoding_so_it_is_probed(clearing: ClearingOids) -> None:
    rig = Rig(RateLimit(per_source=5, global_=0, burst=1.0), clearing)
    link_down_v1, link_up_v1 = v1(2), v1(3)
    rig.send(link_down_v1, "10.0.0.1", n=5)
    rig.send(link_down_v1, "10.0.0.1", n=3)
    rig.send(link_up_v1, "10.0.0.1", n=1)
    assert rig.passed("10.0.0.1", LINK_DOWN) == 5 and rig.passed("10.0.0.1", LINK_UP) == 1
    assert rig.limiter.stats.probed == {"per-source": 4} and rig.limiter.stats.exempted == {"per-source": 1}


def test_nothing_is_decoded_over_the_limit_when_no_rule_cancels(monkeypatch: pytest.MonkeyPatch) -> None:
    from trapd.listener import fastpath

    decoded = [0]
    real = fastpath.decode_unless_v3  # the listener's decoder entry point

    def counting(data: bytes) -> Any:
        decoded[0] += 1
        return real(data)

    monkeypatch.setattr(fastpath, "decode_unless_v3", counting)
    rig = Rig(RateLimit(per_source=10, global_=0, burst=1.0), None)
    rig.send(UP, "10.0.0.1", n=1000)
    assert decoded[0] == 10 and rig.limited == {"per-source": 990}


def test_the_per_source_table_is_bounded() -> None:
    rig = Rig(RateLimit(per_source=10, global_=0, burst=1.0), None, max_sources=100)
    for i in range(1000):
        rig.send(DOWN, f"10.9.{i // 256}.{i % 256}")
    assert len(rig.limiter) == 100 and rig.limiter.stats.evicted == 900
    # The most recently seen stay: the last sender still has its (spent) bucket.
    rig.send(DOWN, "10.9.3.231", n=20)
    assert rig.passed("10.9.3.231") == 10


def test_informs_over_the_limit_are_not_acknowledged(clearing: ClearingOids) -> None:
    pdu = P2.InformRequestPDU()
    P2.apiTrapPDU.set_defaults(pdu)
    P2.apiTrapPDU.set_varbinds(
        pdu,
        [
            (P2.ObjectIdentifier(P2.apiTrapPDU.sysUpTime), P2.TimeTicks(1)),
            (P2.ObjectIdentifier(P2.apiTrapPDU.snmpTrapOID), P2.ObjectIdentifier(LINK_DOWN)),
        ],
    )
    msg = P2.Message()
    P2.apiMessage.set_defaults(msg)
    P2.apiMessage.set_community(msg, "public")
    P2.apiMessage.set_pdu(msg, pdu)
    inform = bytes(encoder.encode(msg))
    rig = Rig(RateLimit(per_source=3, global_=0, burst=1.0), clearing)
    rig.send(inform, n=5)
    assert len(rig.got) == 3 and len(rig.replies) == 3  # the sender retries the other two later


def test_reconfigure_applies_new_limits_and_off_means_off(clearing: ClearingOids) -> None:
    rig = Rig(RateLimit(per_source=2, global_=0, burst=1.0), clearing)
    rig.send(DOWN, n=5)
    assert rig.passed("10.0.0.1") == 2
    rig.limiter.configure(RateLimit(), clearing)
    assert not rig.limiter.active
    rig.send(DOWN, n=100)
    assert rig.passed("10.0.0.1") == 102


async def test_v3_over_the_limit_is_decoded_only_from_the_reserve(
    clearing: ClearingOids, tmp_path: Path
) -> None:
    # v3 is encrypted: no peeking at the trap OID, so over the limit it is a candidate
    # until the reserve is spent, and then dropped without decoding.
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
    import loadgen

    from trapd.listener.config import ListenAddress, V3User

    user = loadgen.V3User()
    rate = RateLimit(per_source=2, global_=0, burst=1.0)
    cfg = ListenerConfig(
        listen=(ListenAddress("127.0.0.1", 0),),
        v3_users=(
            V3User(
                user=user.user,
                auth_protocol=user.auth_protocol,
                auth_key=Secret(user.auth_key, "test"),
                priv_protocol=user.priv_protocol,
                priv_key=Secret(user.priv_key, "test"),
                engine_ids=(user.engine_id,),
            ),
        ),
        rate_limit=rate,
    )
    clock = Clock()
    limiter = SourceLimiter(rate, clearing, clock=clock)
    got: list[RawNotification] = []
    enc = loadgen.V3Encoder(user)
    traps = [enc.encode(i + 1) for i in range(6)]  # linkDown: not clearing
    async with Listener(cfg, got.append, limiter=limiter, logger=_QuietLog(), state_dir=tmp_path) as listener:
        for data in traps:
            listener.handle_datagram(data, ("10.0.0.1", 40000), lambda d, a: None)
    assert len(got) == 2
    assert limiter.stats.probed == {"per-source": 2} and limiter.stats.exempted == {}
    assert listener.stats.dropped_detail[("rate-limited", "per-source")] == 4
    assert listener.stats.received["v3"] == 2
