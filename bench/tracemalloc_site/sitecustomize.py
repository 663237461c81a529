"""tracemalloc snapshots of every trapd process, for finding what grows in a soak.

Not part of trapd: put this directory first on PYTHONPATH of the processes to
watch, with PYTHONTRACEMALLOC set (1 frame costs least), and SOAK_SNAP_DIR;
each process, forked workers too, writes ``snap-PID-NNN.pickle`` there every
SOAK_SNAP_EVERY seconds (default 60). bench_soak.py passes the environment to
trapd's processes only::

    .venv/bin/python bench/bench_soak.py --minutes 9 --rate 700 \\
        --trapd-env PYTHONPATH=$PWD/bench/tracemalloc_site:$PWD --trapd-env PYTHONTRACEMALLOC=1 \\
        --trapd-env SOAK_SNAP_DIR=/tmp/snaps --trapd-env SOAK_SNAP_EVERY=100
    .venv/bin/python bench/tracemalloc_site/diff_snapshots.py /tmp/snaps 2 5

The supervisor then logs "threads alive before forking workers" (this thread).
"""

from __future__ import annotations

import os
import pickle
import threading
import time
import tracemalloc

_DIR = os.environ.get("SOAK_SNAP_DIR")
_EVERY = float(os.environ.get("SOAK_SNAP_EVERY", "60"))


def _loop() -> None:
    k = 0
    while True:
        time.sleep(_EVERY)
        k += 1
        snap = tracemalloc.take_snapshot().filter_traces((tracemalloc.Filter(False, tracemalloc.__file__),))
        with open(f"{_DIR}/snap-{os.getpid()}-{k:03d}.pickle", "wb") as f:
            pickle.dump(snap, f)


def _start() -> None:
    threading.Thread(target=_loop, name="tracemalloc-snapshots", daemon=True).start()


if _DIR and tracemalloc.is_tracing():
    _start()
    os.register_at_fork(after_in_child=_start)
