"""Answering informs: which are copies of one taken in before (trapd.listener.resends, its bounds),
and none for an inform whose processing failed."""

from __future__ import annotations

from trapd.listener.raw import RawNotification, RawVarBind, Security
from trapd.listener.resends import MAX_WAITING, InformResends

LINK_DOWN = (1, 3, 6, 1, 6, 3, 1, 1, 5, 3)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def inform(
    request_id: int = 7, *, port: int = 40000, if_index: int = 17, kind: str = "inform"
) -> RawNotification:
    varbinds: list[RawVarBind] = [
        ((1, 3, 6, 1, 2, 1, 1, 3, 0), "TimeTicks", 500),
        ((1, 3, 6, 1, 6, 3, 1, 1, 4, 1, 0), "ObjectIdentifier", LINK_DOWN),
        ((1, 3, 6, 1, 2, 1, 2, 2, 1, 1, if_index), "Integer32", if_index),
    ]
    raw = RawNotification(
        version="v2c",
        kind=kind,  # type: ignore[arg-type]
        source="10.0.0.1",
        source_port=port,
        security=Security(community="public"),
        varbinds=varbinds,
        received_at=0.0,
        request_id=request_id,
    )
    raw.ack = lambda: answered.append(raw)
    return raw


answered: list[RawNotification] = []


def test_copies_wait_for_the_first_and_are_answered_with_it_then_at_once() -> None:
    answered.clear()
    memory = InformResends(clock=Clock())
    first = inform()
    assert memory.answer_copy(first) is None  # new
    pending = memory.take(first, first.ack)  # type: ignore[arg-type]
    copy1, copy2 = inform(), inform()
    assert memory.answer_copy(copy1) is False  # waits for the first's commit
    assert memory.answer_copy(copy2) is False
    assert answered == []
    pending()
    assert answered == [first, copy1, copy2]
    late = inform()
    assert memory.answer_copy(late) is True  # the first was answered: answer this one now


def test_what_is_not_a_copy() -> None:
    memory = InformResends(clock=Clock())
    first = inform()
    memory.take(first, first.ack)()  # type: ignore[arg-type]
    assert memory.answer_copy(inform(request_id=8)) is None  # another inform, same content
    assert memory.answer_copy(inform(port=40001)) is None  # from another socket
    assert memory.answer_copy(inform(if_index=18)) is None  # other bindings, same request-id
    assert memory.answer_copy(inform(kind="trap")) is None  # traps are never copies
    assert len(memory) == 1


def test_an_inform_that_was_not_journaled_is_forgotten_so_its_next_copy_is_taken_in() -> None:
    answered.clear()
    memory = InformResends(clock=Clock())
    first = inform()
    pending = memory.take(first, first.ack)  # type: ignore[arg-type]
    waiting = inform()
    assert memory.answer_copy(waiting) is False
    pending.abandon()  # the backlog was full, or the journal could not commit
    assert answered == []  # neither is answered: the sender resends
    assert memory.answer_copy(inform()) is None  # ... and that copy is taken in as new
    assert len(memory) == 0


def test_bounds_capacity_window_and_waiting_copies() -> None:
    clock = Clock()
    memory = InformResends(capacity=100, window=300.0, clock=clock)
    for i in range(250):
        raw = inform(request_id=i)
        memory.take(raw, raw.ack)()  # type: ignore[arg-type]
    assert len(memory) == 100  # the oldest forgotten first
    assert memory.answer_copy(inform(request_id=0)) is None
    assert memory.answer_copy(inform(request_id=249)) is True
    clock.now += 301
    assert memory.answer_copy(inform(request_id=249)) is None  # past the window: taken in as new
    raw = inform(request_id=1000)
    memory.take(raw, raw.ack)()  # type: ignore[arg-type]
    assert len(memory) == 1  # the expired ones went with the next take
    first = inform(request_id=2000)
    pending = memory.take(first, first.ack)  # type: ignore[arg-type]
    for _ in range(MAX_WAITING + 10):
        assert memory.answer_copy(inform(request_id=2000)) is False
    assert len(pending.waiting) == MAX_WAITING  # copies beyond it go unanswered (resent again)


def test_an_inform_whose_processing_failed_is_not_acknowledged() -> None:
    # A bug in the pipeline (injected: no real input makes the normalizer raise) must not tell
    # the sender its inform was taken: unanswered, it is resent, and counted as a pipeline error.
    from trapd.config import Config
    from trapd.service.daemon import Daemon

    class Broken:
        def normalize(self, raw: RawNotification) -> None:
            raise RuntimeError("a bug")

    answered.clear()
    d = Daemon(Config())
    d.normalizer = Broken()  # type: ignore[assignment]
    raw = inform()
    assert d._on_notification(raw) is False  # the listener then sends no Response
    assert answered == []
    assert d.stats.errors["pipeline"] == 1


def test_copies_waiting_for_their_first_hold_a_bounded_number_of_bytes_in_all() -> None:
    # Each waiting copy's answer holds that copy's decoded message (up to ~64 KB). MAX_WAITING
    # bounded the copies of one inform only: informs waiting for a slow journal, each with its
    # resends, held up to 17 times the submit queue's 32 MiB. Now the copies of all of them
    # share one byte budget; a copy past it is left unanswered (the sender resends it again).
    from trapd.listener.resends import MAX_WAITING_BYTES, copy_cost

    answered.clear()
    memory = InformResends(clock=Clock())
    big = b"x" * 60_000
    informs, pendings = [], []
    for request_id in range(200):
        first = inform(request_id)
        first.varbinds.append(((1, 3, 6, 1, 4, 1, 9, 1), "OctetString", big))
        pendings.append(memory.take(first, first.ack))  # type: ignore[arg-type]
        informs.append(first)
    for first in informs:
        for _ in range(MAX_WAITING):
            copy = inform(first.request_id or 0)
            copy.varbinds.append(((1, 3, 6, 1, 4, 1, 9, 1), "OctetString", big))
            assert memory.answer_copy(copy) is False
    held = memory.waiting_bytes
    assert 0 < held <= MAX_WAITING_BYTES
    assert held // copy_cost(informs[0]) < 200 * MAX_WAITING  # the old code held all 3,200
    # Answered or abandoned, their copies' bytes are given back, and new copies wait again.
    for i, pending in enumerate(pendings):
        pending() if i % 2 else pending.abandon()
    assert memory.waiting_bytes == 0
