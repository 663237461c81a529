"""Directories trapd makes for its state: private (0700), whatever the umask.

The state directory holds the journal (rendered action parameters, events)
and the v3 engine boots counter. Under systemd ``StateDirectoryMode=0700``
makes it; run by hand (or under another supervisor), trapd makes it itself,
and then it must not be 0755 because the umask said so.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def make_private_dir(path: Path) -> None:
    """Create ``path`` and any missing parents as 0700; leave existing directories as they are."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    for d in reversed(missing):
        try:
            d.mkdir(mode=PRIVATE_DIR)
        except FileExistsError:
            continue  # made meanwhile (another worker): not ours to change
        os.chmod(d, PRIVATE_DIR)  # mkdir's mode is masked by the umask
