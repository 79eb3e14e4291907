"""The reader an upload's bytes pass through on their way to the blob store: MD5, SHA-256, size.

The request body is parsed in `http/multipart.py` (or fetched by `url_fetch.py`); what reaches
the service is a file-like object, and `HashingReader` computes what the item records about it.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from media_service.errors import (
    UploadTooLarge,
)
from media_service.storage.interfaces import CHUNK_SIZE, Readable

SNIFF_BYTES = 4096


# Chunks at least this large are hashed on background threads (see _BackgroundHash); smaller
# uploads never start a thread. Up to _HASH_BACKLOG chunks may wait per hash, so an upload holds
# at most that many extra MiB.
_BACKGROUND_HASH_BYTES = 256 * 1024
_HASH_BACKLOG = 4
# readview's buffers: the backlog, the chunk each hash thread is on, and the one being filled.
_VIEW_BUFFERS = _HASH_BACKLOG + 2


class _Hash(Protocol):
    """What the reader needs of a hash: hashlib's objects, or a `_BackgroundHash` around one."""

    def update(self, data: bytes | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


class _BackgroundHash:
    """One hash fed in order by a thread of its own.

    hashlib releases the GIL while it hashes a large buffer, so MD5 and SHA-256 each on their
    own thread run beside each other and beside the request thread's socket reads, multipart
    parsing and writes, instead of one after another on the request thread (the profile of a
    256 MiB upload: a third of its time in the two update() calls). Chunks are immutable
    bytes, hashed in the order given; `hexdigest` waits for the backlog.
    """

    def __init__(self, hash_: Any) -> None:
        self._hash = hash_
        self._queue: queue.Queue[tuple[bytes | memoryview, bool] | None] = queue.Queue(
            _HASH_BACKLOG
        )
        self._returned = threading.Semaphore(0)  # one release per lent chunk hashed
        self._thread = threading.Thread(
            target=self._run,
            args=(hash_, self._queue, self._returned),
            name="upload-hash",
            daemon=True,
        )
        self._thread.start()
        # An upload abandoned half-way (an error, a client gone) lets its threads go.
        self._finalizer = weakref.finalize(self, self._queue.put, None)

    @staticmethod
    def _run(
        hash_: Any,
        chunks: queue.Queue[tuple[bytes | memoryview, bool] | None],
        returned: threading.Semaphore,
    ) -> None:
        while (item := chunks.get()) is not None:
            chunk, lent = item
            hash_.update(chunk)
            if lent:
                returned.release()

    def update(self, chunk: bytes | memoryview, *, lent: bool = False) -> None:
        """Queue `chunk`; a lent one (a view of a buffer to be refilled) is counted back by
        wait_returned once hashed."""
        self._queue.put((chunk, lent))  # blocks while the backlog is full: memory stays bounded

    def wait_returned(self) -> None:
        """Wait until the oldest lent chunk not yet waited for has been hashed (chunks are
        hashed in order)."""
        self._returned.acquire()

    def hexdigest(self) -> str:
        if self._finalizer.alive:
            self._finalizer()  # sends the end mark
            self._thread.join()
        return str(self._hash.hexdigest())


class HashingReader:
    """Pass bytes through while computing MD5 (the ETag), SHA-256 and the size; enforce a cap.

    Reads are at most CHUNK_SIZE, whatever the caller asks for, and `on_chunk(len)` runs before
    each chunk is handed on (to be written): a free-space check and the upload's heartbeat
    (service/media.py) thus run at least once per MiB, also under S3's 8 MiB part reads.
    """

    def __init__(
        self,
        source: Readable,
        max_bytes: int,
        on_chunk: Callable[[int], None] | None = None,
    ) -> None:
        self._source = source
        self._max_bytes = max_bytes
        self._on_chunk = on_chunk
        self._md5: _Hash = hashlib.md5(usedforsecurity=False)
        self._sha256: _Hash = hashlib.sha256()
        self._background = False
        self.size = 0
        self.head = b""  # the first bytes, for content sniffing
        self._buffers: list[bytearray] = []  # readview's, reused in turn
        self._lent = [False] * _VIEW_BUFFERS  # which of them the hash threads may still read
        self._views = 0

    def read(self, size: int = -1, /) -> bytes:
        chunk = self._source.read(CHUNK_SIZE if size is None or size < 0 else min(size, CHUNK_SIZE))
        if chunk:
            self._account(chunk)
            if (
                not self._background
                and len(chunk) >= _BACKGROUND_HASH_BYTES
                and isinstance(chunk, bytes)  # immutable: safe to hash after it is handed on
            ):
                self._start_background()
            if self._background and not isinstance(chunk, bytes):
                chunk = bytes(chunk)
            self._md5.update(chunk)
            self._sha256.update(chunk)
        return chunk

    def readview(self) -> memoryview:
        """The next chunk (CHUNK_SIZE at most; empty at the end), as read() would return it, but
        as a read-only view of a buffer of this reader's own, valid until the next readview.

        For a source with readinto (a multipart file part): its bytes are received into a few
        reused buffers instead of a new bytes object per chunk (and the copies that make it). A
        buffer is refilled only once both hash threads are done with what it held last.
        """
        readinto = getattr(self._source, "readinto", None)
        if readinto is None:
            return memoryview(self.read(CHUNK_SIZE))
        buffer = self._free_buffer()
        received = int(readinto(buffer) or 0)
        chunk = memoryview(buffer)[:received].toreadonly()
        if received:
            self._account(chunk)
            if not self._background and received >= _BACKGROUND_HASH_BYTES:
                self._start_background()
            if isinstance(self._md5, _BackgroundHash) and isinstance(self._sha256, _BackgroundHash):
                self._md5.update(chunk, lent=True)
                self._sha256.update(chunk, lent=True)
                self._lent[self._views % _VIEW_BUFFERS] = True
            else:
                self._md5.update(chunk)
                self._sha256.update(chunk)
        self._views += 1
        return chunk

    def _free_buffer(self) -> bytearray:
        """The buffer for the next readview: a new one until there are _VIEW_BUFFERS (a small
        upload allocates one), then the oldest, once its last chunk has been hashed."""
        slot = self._views % _VIEW_BUFFERS
        if slot == len(self._buffers):
            self._buffers.append(bytearray(CHUNK_SIZE))
        elif self._lent[slot]:
            for hash_ in (self._md5, self._sha256):
                if isinstance(hash_, _BackgroundHash):
                    hash_.wait_returned()
            self._lent[slot] = False
        return self._buffers[slot]

    def _account(self, chunk: bytes | memoryview) -> None:
        """Count a chunk received: the cap, the per-chunk check, the head for sniffing."""
        self.size += len(chunk)
        if self.size > self._max_bytes:
            raise UploadTooLarge(self._max_bytes)
        if self._on_chunk is not None:
            self._on_chunk(len(chunk))
        if len(self.head) < SNIFF_BYTES:
            self.head += bytes(chunk[: SNIFF_BYTES - len(self.head)])

    def _start_background(self) -> None:
        self._md5 = _BackgroundHash(self._md5)
        self._sha256 = _BackgroundHash(self._sha256)
        self._background = True

    @property
    def md5_hex(self) -> str:
        return self._md5.hexdigest()

    @property
    def sha256_hex(self) -> str:
        return self._sha256.hexdigest()
