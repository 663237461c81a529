"""sd_notify: a real AF_UNIX datagram socket plays systemd and reads what trapd sends."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from notify_harness import NotifySocket

from trapd.service.sdnotify import Notifier, run_watchdog, start_watchdog, stop_watchdog


@pytest.fixture
def manager(tmp_path: Path) -> Iterator[NotifySocket]:
    with NotifySocket(tmp_path / "notify") as m:
        yield m


@pytest.fixture
def abstract_manager() -> Iterator[NotifySocket]:
    with NotifySocket(f"@trapd-test-{uuid.uuid4().hex}") as m:
        yield m


def test_every_message_is_a_noop_without_notify_socket() -> None:
    n = Notifier({})
    assert not n.enabled
    assert n.ready("x") is False
    assert n.status("x") is False
    assert n.reloading() is False
    assert n.stopping() is False
    assert n.watchdog() is False
    assert n.watchdog_interval() is None


def test_lifecycle_messages_reach_the_manager(manager: NotifySocket) -> None:
    n = Notifier({"NOTIFY_SOCKET": manager.address})
    assert n.enabled

    assert n.ready("listening on 0.0.0.0:162")
    assert manager.receive() == {"READY": "1", "STATUS": "listening on 0.0.0.0:162"}

    assert n.status("1200 received,\n3 dropped")
    assert manager.receive() == {"STATUS": "1200 received, 3 dropped"}  # a newline would forge a field

    assert n.watchdog()
    assert manager.receive() == {"WATCHDOG": "1"}

    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert n.reloading("reloading rules")
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    msg = manager.receive()
    assert msg["RELOADING"] == "1"
    assert before <= int(msg["MONOTONIC_USEC"]) <= after
    assert msg["STATUS"] == "reloading rules"

    assert n.ready()
    assert manager.receive() == {"READY": "1"}

    assert n.extend_timeout(12.5)
    assert manager.receive() == {"EXTEND_TIMEOUT_USEC": "12500000"}

    assert n.stopping("draining 3 actions")
    assert manager.receive() == {"STOPPING": "1", "STATUS": "draining 3 actions"}
    n.close()


def test_abstract_namespace_socket(abstract_manager: NotifySocket) -> None:
    n = Notifier({"NOTIFY_SOCKET": abstract_manager.address})
    assert n.ready()
    assert abstract_manager.receive() == {"READY": "1"}


def test_a_vanished_manager_does_not_raise(tmp_path: Path) -> None:
    n = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone")})
    assert n.enabled
    assert n.ready() is False
    assert n.status("still fine") is False


def test_unusable_socket_address_means_disabled() -> None:
    assert not Notifier({"NOTIFY_SOCKET": "relative/path"}).enabled
    assert not Notifier({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 30.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert Notifier(env).watchdog_interval() == expected


async def test_watchdog_task_pings_at_half_the_interval(
    manager: NotifySocket, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The period is read from the sleeps the task asks for, not from how many pings a fixed wait
    # saw: on a loaded machine the loop wakes late, and 0.45 s may hold fewer than the 3 pings asked.
    real_sleep = asyncio.sleep
    periods: list[float] = []

    async def recording_sleep(delay: float) -> None:
        periods.append(delay)
        await real_sleep(delay)

    n = Notifier({"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "200000"})  # 0.2 s
    monkeypatch.setattr(asyncio, "sleep", recording_sleep)
    task = start_watchdog(n)
    assert task is not None
    pings: list[dict[str, str]] = []
    deadline = time.monotonic() + 20
    while len(pings) < 3 and time.monotonic() < deadline:
        await real_sleep(0.02)
        pings += manager.pending()
    await stop_watchdog(task)
    monkeypatch.undo()
    pings += manager.pending()
    # A ping, then one after each 0.1 s sleep: half the interval.
    assert len(pings) >= 3 and periods and set(periods) == {0.1}, (pings, periods)
    assert len(pings) <= len(periods) + 1
    assert all(p == {"WATCHDOG": "1"} for p in pings)


async def test_watchdog_task_is_silent_while_unhealthy(manager: NotifySocket) -> None:
    n = Notifier({"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "100000"})
    healthy = False
    task = asyncio.create_task(run_watchdog(n, lambda: healthy))
    await asyncio.sleep(0.2)
    assert manager.pending() == []
    healthy = True
    await asyncio.sleep(0.12)
    await stop_watchdog(task)
    assert len(manager.pending()) >= 1


async def test_watchdog_task_stops_when_the_loop_is_blocked(manager: NotifySocket) -> None:
    n = Notifier({"NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "100000"})
    task = start_watchdog(n)
    await asyncio.sleep(0.01)
    manager.pending()  # the first ping
    time.sleep(0.3)  # a blocked event loop: no pings, so systemd would kill us
    assert manager.pending() == []
    await stop_watchdog(task)


async def test_no_watchdog_task_without_watchdog_usec(manager: NotifySocket) -> None:
    n = Notifier({"NOTIFY_SOCKET": manager.address})
    assert start_watchdog(n) is None
    await run_watchdog(n)  # returns at once


def test_a_child_process_notifies_like_a_service(manager: NotifySocket) -> None:
    """The environment systemd gives a Type=notify service, in a real subprocess."""
    code = (
        "from trapd.service.sdnotify import Notifier\n"
        "n = Notifier()\n"
        "assert n.watchdog_interval() == 5.0, n.watchdog_interval()\n"
        "n.ready('up'); n.watchdog(); n.stopping()\n"
    )
    # WATCHDOG_PID must be the child's own pid: exec keeps the shell's pid.
    env = {**os.environ, "NOTIFY_SOCKET": manager.address, "WATCHDOG_USEC": "5000000"}
    subprocess.run(
        ["/bin/sh", "-c", 'WATCHDOG_PID=$$ exec "$0" -c "$1"', sys.executable, code],
        env=env,
        check=True,
        timeout=30,
    )
    assert manager.receive() == {"READY": "1", "STATUS": "up"}
    assert manager.receive() == {"WATCHDOG": "1"}
    assert manager.receive() == {"STOPPING": "1"}


def test_a_manager_that_stops_reading_never_blocks_the_daemon(tmp_path: Path) -> None:
    """sd_notify runs on the event loop: a full NOTIFY_SOCKET buffer must drop messages, not block."""
    import signal

    path = tmp_path / "deaf.sock"
    deaf = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    deaf.bind(str(path))  # never read
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})

    def hung(signum: int, frame: object) -> None:
        raise AssertionError("Notifier.send blocked on a full socket")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        sent = [notifier.status(f"{i} received") for i in range(20_000)]
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
        notifier.close()
        deaf.close()
    assert sent[0] is True
    assert sent[-1] is False  # the buffer filled up and later messages were dropped


def test_a_lost_state_message_goes_with_the_next_message(tmp_path: Path) -> None:
    """READY=1 sent while the manager's socket was not there (systemd re-executing itself, a full
    socket buffer) was lost for good: the unit stayed 'activating' until its start timeout, and
    systemd then killed a trapd that was up and acting on traps. A state message (READY=1,
    RELOADING=1, STOPPING=1) that could not be sent now goes with the next message sent (the
    STATUS= and WATCHDOG=1 of the status loop), unless a newer state message replaced it."""
    path = tmp_path / "notify"
    n = Notifier({"NOTIFY_SOCKET": str(path)})
    assert n.ready("up") is False
    assert n.status("lost too") is False
    with NotifySocket(path) as manager:
        assert n.status("1 received")
        assert manager.receive() == {"READY": "1", "STATUS": "1 received"}
        assert n.watchdog()
        assert manager.receive() == {"WATCHDOG": "1"}  # sent once: nothing pending any more
    # A newer state message replaces the lost one: the lost RELOADING=1 is not sent after READY=1.
    assert n.reloading("reloading") is False
    with NotifySocket(path) as manager:
        assert n.ready("reloaded")
        assert manager.receive() == {"READY": "1", "STATUS": "reloaded"}
        assert n.status("x")
        assert manager.receive() == {"STATUS": "x"}
    assert n.stopping("stopping") is False
    with NotifySocket(path) as manager:
        assert n.extend_timeout(30)
        assert manager.receive() == {"STOPPING": "1", "STATUS": "stopping", "EXTEND_TIMEOUT_USEC": "30000000"}


def test_a_lost_reloading_keeps_its_monotonic_usec(tmp_path: Path) -> None:
    """Type=notify-reload wants MONOTONIC_USEC= of when the reload began, not of the resend."""
    path = tmp_path / "notify"
    n = Notifier({"NOTIFY_SOCKET": str(path)})
    assert n.reloading() is False
    began = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    time.sleep(0.01)
    with NotifySocket(path) as manager:
        assert n.status("reloading")
        msg = manager.receive()
    assert msg["RELOADING"] == "1" and int(msg["MONOTONIC_USEC"]) <= began and msg["STATUS"] == "reloading"
