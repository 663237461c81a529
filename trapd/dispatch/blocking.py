"""An action that blocks the event loop, named: the steps of its coroutine are timed.

trapd receives traps on the loop its actions run on. A plugin that calls something blocking in
its async ``run`` (``time.sleep``, a synchronous HTTP client, a large file read) holds every
trap, every other action, /healthz and the watchdog for as long, and nothing can cut it short:
``dispatch.action_timeout`` is a cancellation, delivered only when the action next awaits. What
trapd can do is say which action it was, so that the operator knows whose plugin to fix
(docs/plugins.md, "Never block the event loop").

:func:`stepped` runs an action's coroutine as ``await`` would, one step (the code between two
awaits that wait) at a time, and calls ``blocked(seconds)`` after each step that held the loop
for :data:`BLOCKING` seconds or more: two clock reads a step, nothing else.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Coroutine, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

# A step this long already delays traps (the socket's buffer fills) and other actions visibly.
BLOCKING = 0.5


class stepped(Generic[T]):  # used as a function: ``await stepped(coro, ...)``
    """``await stepped(coro, blocked)`` is ``await coro``, with each step that blocked reported."""

    __slots__ = ("_blocked", "_coro", "_limit")

    def __init__(self, coro: Awaitable[T], blocked: Callable[[float], None], limit: float = BLOCKING) -> None:
        self._coro = coro
        self._blocked = blocked
        self._limit = limit

    def __await__(self) -> Generator[Any, Any, T]:
        coro, clock = self._coro, time.perf_counter
        if not isinstance(coro, Coroutine):  # an awaitable object of some other kind: not timed
            return (yield from coro.__await__())
        value: Any = None
        error: BaseException | None = None
        while True:
            start = clock()
            try:
                if error is None:
                    yielded = coro.send(value)
                else:  # a cancellation (action_timeout, stop), or a future's exception
                    thrown, error = error, None
                    yielded = coro.throw(thrown)
            except StopIteration as done:  # its result
                self._check(clock() - start)
                return done.value  # type: ignore[no-any-return]
            except BaseException:
                self._check(clock() - start)
                raise
            self._check(clock() - start)
            try:
                value = yield yielded
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:
                value, error = None, exc

    def _check(self, seconds: float) -> None:
        if seconds >= self._limit:
            self._blocked(seconds)
