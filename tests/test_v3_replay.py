"""A captured SNMPv3 inform replayed runs its action once, also across workers (issue 14 item 2).

net-snmp's snmpinform sends an authPriv inform to trapd through a relay that
records what it forwards (discovery first, then the inform). The recorded
inform is then sent again, from many source ports: with two workers the
kernel spreads those over both (it picks a worker by a hash of the source
address and port), so a per-worker memory would let most of them through.
Each replay must be refused (counted as not-in-time-window/replayed, no
Response), and the action must have been planned once.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_harness import IF_INDEX, LINK_DOWN, V3_ARGS, V3_USER, TrapdDaemon
from listen_harness import snmp_send
from test_daemon_inform_ack import RULES, journaled  # the inform rule and the journal count

from trapd.listener.v3 import parse_header

pytestmark = pytest.mark.integration

TRAPD_ENGINE = "80004fb805aabbccddeeff0011"
REPLAYS = 24


@contextlib.contextmanager
def recording_relay(target: tuple[str, int]) -> Iterator[tuple[tuple[str, int], list[bytes]]]:
    """A UDP relay to ``target``: (its address, the datagrams the client sent through it)."""
    front = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    front.bind(("127.0.0.1", 0))
    back = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    back.connect(target)
    recorded: list[bytes] = []
    stop = threading.Event()
    client: list[Any] = []

    def run() -> None:
        with selectors.DefaultSelector() as sel:
            sel.register(front, selectors.EVENT_READ)
            sel.register(back, selectors.EVENT_READ)
            while not stop.is_set():
                for key, _ in sel.select(0.1):
                    if key.fileobj is front:
                        data, addr = front.recvfrom(65535)
                        client[:] = [addr]
                        recorded.append(data)
                        back.send(data)
                    elif client:
                        front.sendto(back.recv(65535), client[0])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield front.getsockname(), recorded
    finally:
        stop.set()
        thread.join(5)
        front.close()
        back.close()


@pytest.mark.parametrize("workers", [1, 2])
def test_a_replayed_authpriv_inform_runs_its_action_once(tmp_path: Path, workers: int) -> None:
    config = {"service": {"workers": workers}, "listener": {"v3_users": [V3_USER], "engine_id": TRAPD_ENGINE}}
    d = TrapdDaemon.start(tmp_path / "trapd", rules=RULES, config=config)
    try:
        with recording_relay(d.address) as (relay, recorded):
            r = snmp_send(
                "snmpinform", *V3_ARGS, "-r", "0", "-t", "5", f"127.0.0.1:{relay[1]}", "",
                LINK_DOWN, f"{IF_INDEX}.7", "i", "7",
            )  # fmt: skip
            assert r.returncode == 0, r.stderr  # acknowledged: the action is journaled
        (inform,) = [m for m in recorded if parse_header(m).engine_id.hex() == TRAPD_ENGINE]
        assert parse_header(inform).level == 3  # authPriv
        assert journaled(d) == 1

        answers = 0
        for _ in range(REPLAYS):  # each from a new source port: spread over the workers
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(0.3)
                s.sendto(inform, d.address)
                with contextlib.suppress(TimeoutError):
                    s.recv(4096)
                    answers += 1
        refused = d.wait_metric(
            "trapd_notifications_dropped_detail_total", REPLAYS, timeout=30,
            reason="not-in-time-window", detail="replayed",
        )  # fmt: skip
        assert refused == REPLAYS
        assert answers == 0  # no Response to a replay
        if workers > 1:  # the replays reached both workers, and both refused them
            lines = [e for e in d.logs("snmp notification dropped") if e.get("last_detail") == "replayed"]
            assert {e["worker"] for e in lines} == {0, 1}, lines
        assert journaled(d) == 1  # the action was planned once
        assert len(d.logs("inform 7")) == 1
        assert d.stop() == 0
    finally:
        d.close()


async def test_a_refused_replay_leaves_nothing_in_pysnmps_response_cache(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """pysnmp keeps an accepted inform's state for its Response (600 s unless answered): a replay
    trapd refuses is never answered, so its state is released at once (bounded memory).

    A replay is refused before pysnmp (ReplayMemory.seen) unless two workers receive it at the
    same moment: both pass that check, and pysnmp's accept (ReplayMemory.first_time) refuses
    the second. That race is what this injects, for every replay."""
    import asyncio

    from trapd.listener import Listener, ListenerConfig, RawNotification
    from trapd.listener.config import ListenAddress, RateLimit, V3User
    from trapd.listener.v3.replay import ReplayMemory
    from trapd.secrets import Secret

    monkeypatch.setattr(ReplayMemory, "seen", lambda self, engine_id, mac: False)

    got: list[RawNotification] = []
    refuse = [False]

    def on_notification(raw: RawNotification) -> object:
        got.append(raw)
        return False if refuse[0] else None  # False: not handed on, so not acknowledged

    v3_user = V3User(
        user=V3_USER["user"],
        auth_protocol=V3_USER["auth_protocol"],
        auth_key=Secret(V3_USER["auth_key"]),
        priv_protocol=V3_USER["priv_protocol"],
        priv_key=Secret(V3_USER["priv_key"]),
    )
    config = ListenerConfig(
        listen=(ListenAddress("127.0.0.1", 0),),
        v3_users=(v3_user,),
        engine_id=bytes.fromhex(TRAPD_ENGINE),
        rate_limit=RateLimit(
            v3_slow_per_source=0, v3_slow_global=0
        ),  # no budget: every replay reaches pysnmp
    )
    async with Listener(config, on_notification) as listener:
        target = ("127.0.0.1", listener.bound[0].address.port)
        with recording_relay(target) as (relay, recorded):
            r = await asyncio.to_thread(
                snmp_send, "snmpinform", *V3_ARGS, "-r", "0", "-t", "5", f"127.0.0.1:{relay[1]}", "",
                LINK_DOWN, f"{IF_INDEX}.7", "i", "7",
            )  # fmt: skip
            assert r.returncode == 0, r.stderr
        (inform,) = [m for m in recorded if parse_header(m).engine_id.hex() == TRAPD_ENGINE]
        assert listener._v3 is not None
        engine = listener._v3.receiver.engine
        held = engine.message_processing_subsystems[3]._cache._Cache__stateReferenceIndex
        before = len(held)
        for port_offset in range(REPLAYS):
            listener.handle_datagram(inform, ("127.0.0.1", 40000 + port_offset), lambda d, a: None)
        assert listener.stats.dropped_detail[("not-in-time-window", "replayed")] == REPLAYS
        assert len(got) == 1
        assert len(held) == before  # stock: one more per replay, for 600 s
        # An inform that is not handed on is not answered either: nothing kept for it.
        refuse[0] = True
        r = await asyncio.to_thread(
            snmp_send, "snmpinform", *V3_ARGS, "-r", "0", "-t", "1", f"127.0.0.1:{target[1]}", "",
            LINK_DOWN, f"{IF_INDEX}.8", "i", "8",
        )  # fmt: skip
        assert r.returncode != 0 and len(got) == 2  # received, refused, so unacknowledged
        assert len(held) == before
