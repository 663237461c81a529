"""Process hygiene shared by the benchmarks that start other processes.

A benchmark that starts receivers, ``trapd run``, Kea or PostgreSQL stops them
in ``finally`` blocks. ^C reaches those (KeyboardInterrupt), but SIGTERM, what
``timeout``, ``kill`` and a CI job's cancel send to the benchmark alone, ended
the interpreter at once: its children kept running (a ``trapd run`` daemon on
its port, a Kea) and its temporary directories stayed.

SIGTERM is handed on as SIGINT to this process rather than raised here: in
plain code that is the same KeyboardInterrupt, and under ``asyncio.run`` the
runner's own SIGINT handler cancels the main task, so its ``finally`` blocks
run with the event loop intact. A KeyboardInterrupt raised from a signal
handler in the middle of the loop's machinery left bench_journal's runner
waiting for ever on tasks that could no longer finish, with PostgreSQL running.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator


def _as_sigint(signum: int, frame: object) -> None:
    os.kill(os.getpid(), signal.SIGINT)


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While inside, SIGTERM unwinds the main thread like ^C, so every ``finally`` runs."""
    previous = signal.signal(signal.SIGTERM, _as_sigint)
    # Started in the background by a shell, a process inherits SIGINT ignored: SIGTERM must still unwind.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
