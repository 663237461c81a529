"""Reading a file that must be a regular one (config, rules, secrets), without ever waiting on it.

Opening a FIFO for reading waits until some process opens it for writing, and
a character device (/dev/zero, a tty) can be read for ever. A rules file
replaced by a FIFO (by mistake, or by a tool that streams its output) would
hang the reload thread for good: no reload would ever run again, and `trapd
check` would not return. So the file is opened without waiting (O_NONBLOCK,
which a FIFO's open honours and a regular file ignores), checked with fstat
on that same descriptor (no window for a swap between a check and the open),
and refused unless it is a regular file.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


# The largest config, rules or secret file read. A rules file is read whole and parsed into a
# tree many times its size: 100,000 per-port rules are 32 MB and compile in ~600 MB. A file of
# gigabytes (a log or an image saved as *.yaml, a generator run away) took the daemon's memory
# at a reload; past this it is refused before it is read.
MAX_FILE_BYTES = 128 << 20


class NotRegularFileError(OSError):
    """The path names something that is not a regular file; ``strerror`` says what it is."""


def file_kind(mode: int) -> str:
    """What a non-regular ``st_mode`` is, in words ("a FIFO")."""
    return next((name for test, name in _KINDS if test(mode)), "a special file")


def read_regular(path: str | Path) -> bytes:
    """The contents of ``path`` (symlinks followed); OSError if unreadable or not a regular file."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        kind = st.st_mode
        if not stat.S_ISREG(kind):
            raise NotRegularFileError(errno.EINVAL, f"not a regular file ({file_kind(kind)})", str(path))
        too_big = OSError(
            errno.EFBIG,
            f"larger than {MAX_FILE_BYTES >> 20} MiB, not read (100,000 rules are about 32 MB: "
            "split a bigger rule set into files in the rules directory)",
            str(path),
        )
        if st.st_size > MAX_FILE_BYTES:
            raise too_big
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb") as f:
            fd = -1  # the file object closes it now
            data = f.read(MAX_FILE_BYTES + 1)  # it may have grown since fstat
        if len(data) > MAX_FILE_BYTES:
            raise too_big
        return data
    finally:
        if fd >= 0:
            os.close(fd)


def read_regular_text(path: str | Path) -> str:
    """:func:`read_regular` decoded as UTF-8 (UnicodeDecodeError if it is not)."""
    return read_regular(path).decode("utf-8")
