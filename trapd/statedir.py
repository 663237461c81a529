"""Directories trapd makes for its state: private (0700), whatever the umask.

The state directory holds the journal (rendered action parameters, events)
and the v3 engine boots counter. Under systemd ``StateDirectoryMode=0700``
makes it; run by hand (or under another supervisor), trapd makes it itself,
and then it must not be 0755 because the umask said so.
"""

from __future__ import annotations

import contextlib
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


def leave_to_state_owner(path: Path, state_dir: Path) -> None:
    """Run as root on a trapd that runs as its own user: make what root wrote in ``path`` (a
    file or a tree below ``state_dir``) the state directory owner's.

    Admins run trapd's tools with sudo (`trapd mibs compile`, `trapd check`, `trapd listen
    --config /etc/trapd/trapd.yaml`) on the daemon's own state: its MIB cache, the v3 engine's
    boots file. Left root's, the daemon's user cannot update them (a MIB compile at every start
    and site MIBs that do not load; snmpEngineBoots that no longer counts up, and with
    ``service.workers`` no start at all). SQLite does the same with the journal's -wal and -shm
    files. Nothing changes when not run as root, or when root owns ``state_dir``.
    """
    if os.geteuid() != 0:
        return
    try:
        owner = state_dir.stat()
    except OSError:
        return
    if owner.st_uid == 0:
        return
    targets = [path]
    if path.is_dir():
        targets += [Path(top, name) for top, dirs, files in os.walk(path) for name in (*dirs, *files)]
    for target in targets:
        with contextlib.suppress(OSError):
            if target.lstat().st_uid == 0:
                os.lchown(target, owner.st_uid, owner.st_gid)
