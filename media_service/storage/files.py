"""Blob store on the local file system: the embedded default (one host, one disk)."""

from __future__ import annotations

import contextlib
import ctypes
import io
import os
import stat
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, cast

from media_service.settings import Settings, file_storage_root
from media_service.storage.disk import FULL_ERRNOS
from media_service.storage.interfaces import (
    BLOB_KEY,
    CHUNK_SIZE,
    BackendUnavailable,
    BlobInfo,
    BlobNotFound,
    StorageFull,
    StoredBlob,
    check_blob_key,
)

TEMP_DIR = ".tmp"

# Written bytes are handed to the disk in steps of this size while the upload goes on (see
# _start_writeback), so that the final fsync waits for the last step only.
WRITEBACK_STEP = 8 * CHUNK_SIZE


def _load_sync_file_range() -> Callable[[int, int, int, int], int] | None:
    """libc's sync_file_range (Linux): os has no binding for it, so ctypes; None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return cast(Callable[[int, int, int, int], int], function)


_SYNC_FILE_RANGE = _load_sync_file_range()
_SYNC_FILE_RANGE_WRITE = 2  # <fcntl.h>: start writing the range's dirty pages, do not wait


def _unavailable(exc: OSError) -> BackendUnavailable:
    # strerror only: the message must not leak absolute paths into problem+json bodies.
    reason = f": {exc.strerror}" if exc.strerror else ""
    if exc.errno in FULL_ERRNOS:
        return StorageFull("blob store", f"{type(exc).__name__}{reason}")
    return BackendUnavailable("blob store", f"{type(exc).__name__}{reason}")


def _fsync_dir(path: Path) -> None:
    """Flush a directory's entries, so a rename or a new entry in it survives a crash."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class FileBlobStream:
    """An open read of [start, start+length) of a file, in 1 MiB chunks.

    `file` (already at `start`) and `length` let the web layer hand the range to
    wsgi.file_wrapper / sendfile instead of iterating.
    """

    def __init__(self, file: BinaryIO, length: int) -> None:
        self.file = file
        self.length = length

    def __iter__(self) -> Iterator[bytes]:
        remaining = self.length
        while remaining > 0:
            try:
                chunk = self.file.read(min(CHUNK_SIZE, remaining))
            except OSError as exc:
                raise _unavailable(exc) from exc
            if not chunk:  # the file shrank under us: stop rather than spin
                return
            remaining -= len(chunk)
            yield chunk

    def close(self) -> None:
        """Close the file."""
        self.file.close()

    def __enter__(self) -> FileBlobStream:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class FileBlobStore:
    """Blobs as files under `root/<first two chars of key>/<key>`, written atomically."""

    store_id = "file"

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self._temp = self.root / TEMP_DIR

    @classmethod
    def from_settings(cls, settings: Settings) -> FileBlobStore:
        """Build the store for a `file://` storage URL, creating its directory."""
        root = file_storage_root(settings.storage_url)
        root.mkdir(parents=True, exist_ok=True)
        return cls(root)

    def _path(self, key: str) -> Path:
        check_blob_key(key)
        return self.root / key[:2] / key

    def relative_path(self, key: str) -> str:
        """The blob's path below the root, for nginx's X-Accel-Redirect: `ab/abcd…`.

        Safe to put in a URI: check_key admits no separator, no "." or "..", nothing to escape.
        """
        path = self._path(key)  # checks the key
        return f"{path.parent.name}/{path.name}"

    def put(self, key: str, source: BinaryIO) -> StoredBlob:
        """Copy `source` to a temp file, fsync it, rename it into place, fsync the directory."""
        final = self._path(key)
        # No parents=True: a vanished root (an unmounted volume) must fail, not be recreated.
        try:
            self._temp.mkdir(exist_ok=True)
            fd, temp_name = tempfile.mkstemp(dir=self._temp, prefix=f"{key}.", suffix=".part")
        except OSError as exc:
            raise _unavailable(exc) from exc
        try:
            # Unbuffered: closing after a failed read must not flush (and fail) on its own.
            with os.fdopen(fd, "wb", buffering=0) as out:
                size = _copy(source, out)
                try:
                    os.fsync(out.fileno())
                except OSError as exc:
                    raise _unavailable(exc) from exc
            self._move_into_place(Path(temp_name), final)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp_name)
            raise
        return StoredBlob(key=key, size=size)

    def _move_into_place(self, temp: Path, final: Path) -> None:
        """Rename the synced temp file to its key, durably; on failure leave nothing there."""
        try:
            try:
                final.parent.mkdir()
                created = True
            except FileExistsError:
                created = False
            os.replace(temp, final)
        except OSError as exc:
            raise _unavailable(exc) from exc
        try:
            _fsync_dir(final.parent)
            if created:
                _fsync_dir(self.root)  # the new shard directory's own entry
        except OSError as exc:
            # Not known to be durable, so not a success: a failed put leaves no blob behind.
            with contextlib.suppress(OSError):
                os.unlink(final)
            raise _unavailable(exc) from exc

    def open(self, key: str, start: int = 0, length: int | None = None) -> FileBlobStream:
        """Open the bytes [start, start+length) of a blob (clamped to its end)."""
        if start < 0 or (length is not None and length < 0):
            raise ValueError("start and length must be >= 0")
        path = self._path(key)
        try:
            file = open(path, "rb")  # the stream owns it and closes it
        except FileNotFoundError:
            self._check_root()
            raise BlobNotFound(key) from None
        except OSError as exc:
            raise _unavailable(exc) from exc
        try:
            size = os.fstat(file.fileno()).st_size
            available = max(size - start, 0)
            count = available if length is None else min(length, available)
            file.seek(min(start, size))
        except OSError as exc:
            file.close()
            raise _unavailable(exc) from exc
        return FileBlobStream(file, count)

    def delete(self, key: str) -> None:
        """Remove the blob's file; a missing one is fine."""
        path = self._path(key)
        try:
            os.unlink(path)
        except FileNotFoundError:
            self._check_root()
        except OSError as exc:
            raise _unavailable(exc) from exc

    def list_blobs(self) -> Iterator[BlobInfo]:
        """Yield every stored blob (never temp files)."""
        try:
            with os.scandir(self.root) as top:
                shards = [e for e in top if e.name != TEMP_DIR and e.is_dir(follow_symlinks=False)]
            for shard in shards:
                with os.scandir(shard.path) as entries:
                    for entry in entries:
                        info = self._info(shard.name, entry)
                        if info is not None:
                            yield info
        except OSError as exc:
            raise _unavailable(exc) from exc

    @staticmethod
    def _info(shard: str, entry: os.DirEntry[str]) -> BlobInfo | None:
        if not BLOB_KEY.fullmatch(entry.name) or entry.name[:2] != shard:
            return None  # not something put() wrote
        try:
            st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            return None  # deleted while listing
        if not stat.S_ISREG(st.st_mode):
            return None
        modified = datetime.fromtimestamp(st.st_mtime, tz=UTC)
        return BlobInfo(key=entry.name, size=st.st_size, last_modified=modified)

    def abort_uploads_of(self, key: str) -> int:
        """Nothing in flight but temp files, which remove_stale_temp finds: a no-op."""
        return 0

    def abort_stale_uploads(
        self, older_than: datetime, referenced: Callable[[list[str]], set[str]]
    ) -> int:
        """No multipart uploads here: a no-op."""
        return 0

    def remove_stale_temp(
        self,
        older_than_seconds: float = 3600,
        referenced: Callable[[list[str]], set[str]] | None = None,
    ) -> int:
        """Delete the temp files of dead uploads; return how many.

        With `referenced` (which of these keys does a document name?) a temp file is dead when
        no document names the key it is written for: uploads write their PENDING document
        first, and the sweeper removes that document once its heartbeat is stale. Without it,
        a temp file is dead when untouched for `older_than_seconds` (every write touches it).
        """
        cutoff = time.time() - older_than_seconds
        try:
            with os.scandir(self._temp) as listing:
                entries = list(listing)
            if referenced is None:
                dead = [e for e in entries if self._mtime(e) < cutoff]
            else:
                keys = {e.path: e.name.split(".", 1)[0] for e in entries}
                named = [key for key in keys.values() if BLOB_KEY.fullmatch(key)]
                alive = referenced(named) if named else set()
                dead = [e for e in entries if keys[e.path] not in alive]
            removed = 0
            for entry in dead:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed += 1
        except FileNotFoundError:
            return 0  # no upload ever ran
        except OSError as exc:
            raise _unavailable(exc) from exc
        return removed

    @staticmethod
    def _mtime(entry: os.DirEntry[str]) -> float:
        try:
            return entry.stat(follow_symlinks=False).st_mtime
        except FileNotFoundError:
            return float("inf")  # gone already

    def _check_root(self) -> None:
        # Without its root (an unmounted volume) "no such file" says nothing about the blob.
        if not self.root.is_dir():
            raise BackendUnavailable("blob store", "storage directory is missing")

    def ping(self) -> None:
        """Raise BackendUnavailable unless the root is an existing, writable directory."""
        self._check_root()
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise BackendUnavailable("blob store", "storage directory is not writable")


def _copy(source: BinaryIO, out: io.FileIO) -> int:
    """Copy source to out in 1 MiB reads; errors of source.read propagate unchanged.

    An upload's HashingReader also offers readview(): chunks in buffers it reuses, written from
    there, instead of a new bytes object per chunk.
    """
    readview = getattr(source, "readview", None)
    size = 0
    handed = 0  # bytes whose writeback has been started
    while True:
        chunk = readview() if readview is not None else source.read(CHUNK_SIZE)
        if not chunk:
            return size
        view = memoryview(chunk)
        try:
            while view:  # a raw write may be partial
                view = view[out.write(view) :]
        except OSError as exc:
            raise _unavailable(exc) from exc
        size += len(chunk)
        if size - handed >= WRITEBACK_STEP:
            _start_writeback(out.fileno(), handed, size - handed)
            handed = size


def _start_writeback(fd: int, offset: int, length: int) -> None:
    """Start writing [offset, offset+length) to the disk without waiting for it.

    A 201 still waits for put's fsync; this only leaves it less to do: without it the kernel
    writes nothing back until the upload ends (far below its dirty thresholds), and the fsync
    then waits for the whole file. Best effort: a failure here is the fsync's to report.
    """
    if _SYNC_FILE_RANGE is not None:
        _SYNC_FILE_RANGE(fd, offset, length, _SYNC_FILE_RANGE_WRITE)
