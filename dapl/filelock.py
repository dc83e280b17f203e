"""An exclusive lock between processes (and threads) on a lock file: ``fcntl.flock``, so a holder that dies
releases it with its last file descriptor, and a waiter simply blocks until then.

The lock file exists only while someone holds or waits for it: the holder unlinks it before releasing, and a
waiter that then wakes up on an unlinked file starts over on the current one (the usual inode check), so no
stale lock files are left in a cache folder. The file is opened with ``O_NOFOLLOW``: a link there is refused,
never followed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator, Sequence
from pathlib import Path


def _same_file(fd: int, path: Path) -> bool:
    """The locked descriptor is still the file at ``path`` (not one its holder unlinked meanwhile)."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    here = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (here.st_dev, here.st_ino)


@contextlib.contextmanager
def exclusive(path: str | Path) -> Iterator[None]:
    """Hold ``path`` exclusively (blocking until it is free); the file is created beside the data it guards."""
    path = Path(path)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            if _same_file(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)  # its holder unlinked it while we waited: lock the current file instead
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # while still held: a waiter on this inode sees it gone and starts over
        os.close(fd)


@contextlib.contextmanager
def exclusive_all(paths: Sequence[str | Path]) -> Iterator[None]:
    """Hold several lock files, taken in sorted order (two holders of overlapping sets cannot deadlock)."""
    with contextlib.ExitStack() as stack:
        for p in sorted({str(p) for p in paths}):
            stack.enter_context(exclusive(p))
        yield
