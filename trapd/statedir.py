"""Directories trapd makes for its state: private (0700), whatever the umask.

The state directory holds the journal (rendered action parameters, events)
and the v3 engine boots counter. Under systemd ``StateDirectoryMode=0700``
makes it; run by hand (or under another supervisor), trapd makes it itself,
and then it must not be 0755 because the umask said so.
"""

from __future__ import annotations

import contextlib
import fcntl
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


LOCK_FILE = "trapd.lock"


class StateDirBusy(OSError):
    """Another trapd holds the state directory's lock."""


def lock_state_dir(state_dir: Path) -> int:
    """Take ``STATE_DIR/trapd.lock`` for as long as this process (and those it forks) live: the
    descriptor, to keep open. :class:`StateDirBusy` names the trapd that holds it.

    Taken before anything that acts on the state: the journal's recovery at start puts every
    action left running back in line as interrupted and ends their programs (trapd.programs),
    which is right after a crash and wrong while another trapd runs them. A ``trapd run`` started
    by hand beside the service, on the same trapd.yaml, did that before it found its trap port
    taken. The kernel lets go of the lock when its holder dies (SIGKILL too).
    """
    path = state_dir / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise StateDirBusy(
            f"another trapd is running on the state directory {state_dir} (pid {holder}):"
            " stop it first, or give this one a state_dir of its own",
        ) from None
    except OSError:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    leave_to_state_owner(path, state_dir)  # a root trapd run must not lock the service out
    return fd
