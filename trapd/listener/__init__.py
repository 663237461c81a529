"""The listener: UDP sockets, fast v1/v2c decoder, fast v3 USM path, pysnmp for the rest of v3.

Public names::

    Listener(config, on_notification, *, sockets=(), bind_config=True, stats=None,
             limiter=None, accept_any_community=False, drop_log_interval=10.0)
        await start() / await close() / async with; .bound, .stats, .engine_id
    ListenerStats   counters (received by version, dropped by reason, kernel drops)
    RawNotification what on_notification receives (trapd.listener.raw)
    UsmFastPath     v3 traps from known senders, authenticated and decrypted by trapd (used by Listener)
    V3Receiver      the pysnmp engine behind trapd's socket, for the rest of v3 (used by Listener)
    run_on_best_loop(coro)  asyncio.run on uvloop when installed
"""

from trapd.listener.config import ListenAddress, ListenerConfig, V3User
from trapd.listener.raw import RawNotification, RawVarBind, Security
from trapd.listener.stats import DROP_REASONS, DropLog, KernelDrops, ListenerStats, read_kernel_drops
from trapd.listener.udp import (
    BoundSocket,
    Listener,
    OnNotification,
    best_loop_factory,
    open_udp_socket,
    run_on_best_loop,
    set_receive_buffer,
)

__all__ = [
    "DROP_REASONS",
    "BoundSocket",
    "DropLog",
    "KernelDrops",
    "ListenAddress",
    "Listener",
    "ListenerConfig",
    "ListenerStats",
    "OnNotification",
    "RawNotification",
    "RawVarBind",
    "Security",
    "V3User",
    "best_loop_factory",
    "open_udp_socket",
    "read_kernel_drops",
    "run_on_best_loop",
    "set_receive_buffer",
]
