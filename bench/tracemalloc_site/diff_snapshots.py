"""What grew between two rounds of tracemalloc snapshots (see sitecustomize.py here), per process.

.venv/bin/python bench/tracemalloc_site/diff_snapshots.py DIR FIRST LAST [--top 25] [--by lineno|traceback]
"""

from __future__ import annotations

import argparse
import pickle
import re
import tracemalloc
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("dir", type=Path)
    ap.add_argument("first", type=int)
    ap.add_argument("last", type=int)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--by", choices=("lineno", "traceback", "filename"), default="lineno")
    args = ap.parse_args()
    pids = sorted(
        {m.group(1) for p in args.dir.iterdir() if (m := re.match(r"snap-(\d+)-\d+\.pickle$", p.name))}
    )
    for pid in pids:
        a, b = (args.dir / f"snap-{pid}-{k:03d}.pickle" for k in (args.first, args.last))
        if not (a.exists() and b.exists()):
            continue
        s1: tracemalloc.Snapshot = pickle.loads(a.read_bytes())
        s2: tracemalloc.Snapshot = pickle.loads(b.read_bytes())
        t1, t2 = (sum(t.size for t in s.traces) for s in (s1, s2))
        print(f"== pid {pid}: {t1 / 1e6:.1f} MB -> {t2 / 1e6:.1f} MB traced")
        for st in s2.compare_to(s1, args.by)[: args.top]:
            frames = st.traceback.format()
            where = (
                "\n      ".join(frames[-8:])
                if args.by == "traceback"
                else " ".join(f.strip() for f in frames[-2:])
            )
            print(
                f"{st.size_diff / 1024:+9.0f} KiB {st.count_diff:+8d} objects, now {st.size / 1024:8.0f} KiB",
                where,
            )


if __name__ == "__main__":
    main()
