"""Local disk space: free bytes of a directory's volume, and a spare file to give back when full.

A write that frees space (a delete) must work on a full disk, yet SQLite needs new pages in its
WAL for every write, also for a DELETE. So a few MiB are pre-allocated next to the database as
a spare file; the adapter releases it (unlinks it) when such a write fails for lack of space,
and retries. It is allocated again once there is room (see service/disk.py).
"""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path

SPARE_NAME = ".media-spare"
# "No space left" and "quota exceeded": both mean nothing more fits.
FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the volume holding `path`."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class SpareFile:
    """A pre-allocated file of `size` bytes, released when the disk is full."""

    def __init__(self, directory: Path, size: int) -> None:
        self.path = Path(directory) / SPARE_NAME
        self.size = size

    def present(self) -> bool:
        """Whether the spare is in place (a size of 0 disables it: always 'present')."""
        return self.size <= 0 or self.path.exists()

    def release(self) -> bool:
        """Give the spare's space back; True if there was one to give (any process may)."""
        if self.size <= 0:
            return False
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            return False
        return True

    def ensure(self) -> bool:
        """Allocate the spare if it is missing; False if there is no room (or it failed)."""
        if self.present():
            return True
        # Allocated under a private name and linked into place: workers racing each other
        # never see a half-allocated spare, and only one of them keeps its file.
        temp = self.path.with_name(f"{SPARE_NAME}.{os.getpid()}.tmp")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.posix_fallocate(fd, 0, self.size)  # real blocks, not a sparse file
            finally:
                os.close(fd)
            with contextlib.suppress(FileExistsError):
                os.link(temp, self.path)
            return True
        except OSError:
            return False
        finally:
            with contextlib.suppress(OSError):
                os.unlink(temp)
