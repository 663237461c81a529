"""Process hygiene shared by the benchmarks that start other processes.

A benchmark that starts receivers, ``trapd run``, Kea or PostgreSQL stops them
in ``finally`` blocks. ^C reaches those (KeyboardInterrupt), but SIGTERM, what
``timeout``, ``kill`` and a CI job's cancel send to the benchmark alone, ended
the interpreter at once: its children kept running (a ``trapd run`` daemon on
its port, a Kea) and its temporary directories stayed.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_unwinds() -> Iterator[None]:
    """While inside, SIGTERM unwinds the main thread like ^C, so every ``finally`` runs."""
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
