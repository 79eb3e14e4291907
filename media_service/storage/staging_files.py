"""Staged bytes of resumable uploads on the local file system: one file per upload.

Appends go to `<root>/.resumable/<upload id>` and are fsynced before the offset is recorded, so
what the database says was received is on disk. The blob store's listing and temp-file sweep
never look into this directory.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from media_service.storage.files import _fsync_dir, _unavailable
from media_service.storage.interfaces import Readable
from media_service.storage.resumable import check_upload_id

STAGING_DIR = ".resumable"
READ_SIZE = 64 * 1024  # small reads: the lease and the free-space check run between them
SYNC_EVERY = 8 * 1024 * 1024  # bytes between fsyncs (and offset updates) within one PATCH


class FileStaging:
    """Upload files under `root` (normally the file store's root/.resumable)."""

    def __init__(self, root: Path, sync_every: int = SYNC_EVERY) -> None:
        self.root = Path(root)
        self.sync_every = sync_every

    @classmethod
    def beside(cls, blobs: Any) -> FileStaging:
        """The staging area inside a FileBlobStore's root (the same volume: one disk guard)."""
        return cls(Path(blobs.root) / STAGING_DIR)

    def _path(self, upload_id: str) -> Path:
        return self.root / check_upload_id(upload_id)

    def write(
        self,
        upload_id: str,
        offset: int,
        source: Readable,
        limit: int,
        durable: Callable[[int], None],
    ) -> int:
        """Append at `offset` with fsyncs every `sync_every` bytes and at the end."""
        path = self._path(upload_id)
        try:
            try:
                self.root.mkdir()
                _fsync_dir(self.root.parent)
            except FileExistsError:
                pass
            new = not path.exists()
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        except OSError as exc:
            raise _unavailable(exc) from exc
        try:
            try:
                if new:
                    _fsync_dir(self.root)
                size = os.fstat(fd).st_size
                if size < offset:
                    raise OSError(0, "staged bytes are missing")
                os.ftruncate(fd, offset)  # what lies beyond the recorded offset was never acked
                os.lseek(fd, offset, os.SEEK_SET)
            except OSError as exc:
                raise _unavailable(exc) from exc
            end = synced = offset
            remaining = limit
            while remaining > 0:
                try:
                    chunk = source.read(min(READ_SIZE, remaining))
                except BaseException:
                    if end > synced:
                        self._sync(fd)
                        durable(end)
                    raise
                if not chunk:
                    break
                _write_all(fd, chunk)
                end += len(chunk)
                remaining -= len(chunk)
                if end - synced >= self.sync_every:
                    self._sync(fd)
                    synced = end
                    durable(end)
            if end > synced:
                self._sync(fd)
                durable(end)
            return end
        finally:
            os.close(fd)

    @staticmethod
    def _sync(fd: int) -> None:
        try:
            os.fsync(fd)
        except OSError as exc:
            raise _unavailable(exc) from exc

    def open(self, upload_id: str, length: int) -> Readable:
        """The upload file, limited to `length` bytes."""
        try:
            file = open(self._path(upload_id), "rb")  # noqa: SIM115 - closed by _Bounded
        except OSError as exc:
            raise _unavailable(exc) from exc
        return _Bounded(file, length)

    def delete(self, upload_id: str) -> None:
        """Unlink the upload file."""
        try:
            os.unlink(self._path(upload_id))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _unavailable(exc) from exc

    def list_ids(self) -> Iterator[tuple[str, datetime]]:
        """Every upload file and its mtime."""
        try:
            with os.scandir(self.root) as entries:
                listed = list(entries)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise _unavailable(exc) from exc
        for entry in listed:
            try:
                check_upload_id(entry.name)
                mtime = entry.stat(follow_symlinks=False).st_mtime
            except (ValueError, FileNotFoundError):
                continue
            yield entry.name, datetime.fromtimestamp(mtime, tz=UTC)


def _write_all(fd: int, chunk: bytes) -> None:
    view = memoryview(chunk)
    try:
        while view:
            view = view[os.write(fd, view) :]
    except OSError as exc:
        raise _unavailable(exc) from exc


class _Bounded:
    """Read at most `length` bytes of a file, closing it at the end."""

    def __init__(self, file: Any, length: int) -> None:
        self._file = file
        self._left = length

    def read(self, size: int = -1, /) -> bytes:
        if self._left <= 0:
            self._file.close()
            return b""
        want = self._left if size is None or size < 0 else min(size, self._left)
        try:
            chunk: bytes = self._file.read(want)
        except OSError as exc:
            raise _unavailable(exc) from exc
        if not chunk:
            self._file.close()
            raise _unavailable(OSError(0, "staged bytes are missing"))
        self._left -= len(chunk)
        return chunk

    def close(self) -> None:
        self._file.close()
