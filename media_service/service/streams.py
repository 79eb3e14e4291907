"""Readers the upload path pipes bytes through: hashing/counting, and a multipart part reader.

Uploads are never buffered whole: Werkzeug's sans-IO multipart decoder is driven over the WSGI
input stream, and the file part is handed to the blob store as a file-like object whose
`read(n)` pulls more of the request body only when asked.
"""

from __future__ import annotations

import hashlib
import queue
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol

from werkzeug.exceptions import HTTPException
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from media_service.errors import (
    BodyTooSlow,
    ClientDisconnected,
    MalformedMultipart,
    PayloadTooLarge,
    UploadTooLarge,
)
from media_service.serving.limits import RATE_FLOOR_ENVIRON_KEY, ClientTooSlow, RateFloor

READ_SIZE = 1024 * 1024  # request body read size; also the blob store's write granularity
SNIFF_BYTES = 4096


class Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


# Chunks at least this large are hashed on background threads (see _BackgroundHash); smaller
# uploads never start a thread. Up to _HASH_BACKLOG chunks may wait per hash, so an upload holds
# at most that many extra MiB.
_BACKGROUND_HASH_BYTES = 256 * 1024
_HASH_BACKLOG = 4


class _Hash(Protocol):
    """What the reader needs of a hash: hashlib's objects, or a `_BackgroundHash` around one."""

    def update(self, data: bytes, /) -> None: ...

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
        self._queue: queue.Queue[bytes | None] = queue.Queue(_HASH_BACKLOG)
        self._thread = threading.Thread(
            target=self._run, args=(hash_, self._queue), name="upload-hash", daemon=True
        )
        self._thread.start()
        # An upload abandoned half-way (an error, a client gone) lets its threads go.
        self._finalizer = weakref.finalize(self, self._queue.put, None)

    @staticmethod
    def _run(hash_: Any, chunks: queue.Queue[bytes | None]) -> None:
        while (chunk := chunks.get()) is not None:
            hash_.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._queue.put(chunk)  # blocks while the backlog is full: memory stays bounded

    def hexdigest(self) -> str:
        if self._finalizer.alive:
            self._finalizer()  # sends the end mark
            self._thread.join()
        return str(self._hash.hexdigest())


class HashingReader:
    """Pass bytes through while computing MD5 (the ETag), SHA-256 and the size; enforce a cap.

    Reads are at most READ_SIZE, whatever the caller asks for, and `on_chunk(len)` runs before
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

    def read(self, size: int = -1, /) -> bytes:
        chunk = self._source.read(READ_SIZE if size is None or size < 0 else min(size, READ_SIZE))
        if chunk:
            self.size += len(chunk)
            if self.size > self._max_bytes:
                raise UploadTooLarge(self._max_bytes)
            if self._on_chunk is not None:
                self._on_chunk(len(chunk))
            if len(self.head) < SNIFF_BYTES:
                self.head += chunk[: SNIFF_BYTES - len(self.head)]
            if (
                not self._background
                and len(chunk) >= _BACKGROUND_HASH_BYTES
                and isinstance(chunk, bytes)  # immutable: safe to hash after it is handed on
            ):
                self._md5 = _BackgroundHash(self._md5)
                self._sha256 = _BackgroundHash(self._sha256)
                self._background = True
            if self._background and not isinstance(chunk, bytes):
                chunk = bytes(chunk)
            self._md5.update(chunk)
            self._sha256.update(chunk)
        return chunk

    @property
    def md5_hex(self) -> str:
        return self._md5.hexdigest()

    @property
    def sha256_hex(self) -> str:
        return self._sha256.hexdigest()


@dataclass(frozen=True)
class FormField:
    name: str
    value: str


@dataclass
class FilePart:
    """A file part being streamed: read it to EOF (or `drain` it) before the next part."""

    name: str
    filename: str | None
    content_type: str | None
    reader: PartReader


@contextmanager
def _decoder_errors() -> Iterator[None]:
    """Turn whatever Werkzeug's decoder raises into MalformedMultipart (a 400).

    Both of its entry points raise: next_event() on a malformed body, and receive_data() once
    its buffer outgrows max_form_memory_size (an over-long part header), as a
    RequestEntityTooLarge that would otherwise leave as a bare 413.
    """
    try:
        yield
    except ValueError as error:  # the decoder's way of saying "not multipart"
        raise MalformedMultipart(f"The multipart body is malformed: {error}") from None
    except HTTPException as error:  # RequestEntityTooLarge: a header or field too big
        if error.code == 413:
            raise MalformedMultipart(
                "A part header or field is too large, or there are too many parts."
            ) from None
        raise MalformedMultipart(f"The multipart body is malformed: {error.description}") from None


class MultipartStream:
    """Iterate the parts of a multipart/form-data body read from `stream` with bounded memory."""

    def __init__(
        self,
        stream: Readable,
        boundary: bytes,
        *,
        file_field_names: frozenset[str],
        max_field_bytes: int = 64 * 1024,
        max_parts: int = 64,
    ) -> None:
        self._stream = stream
        # max_form_memory_size bounds the decoder's internal buffer (headers, small fields).
        self._decoder = MultipartDecoder(
            boundary, max_form_memory_size=max_field_bytes + 2 * READ_SIZE, max_parts=max_parts
        )
        self._file_field_names = file_field_names
        self._max_field_bytes = max_field_bytes
        self._eof = False
        self._current_part: PartReader | None = None

    def _feed(self) -> None:
        if self._eof:
            raise MalformedMultipart("The multipart body ended before its closing boundary.")
        chunk = self._stream.read(READ_SIZE)  # our own errors (413, client gone) pass through
        with _decoder_errors():
            if not chunk:
                self._eof = True
                self._decoder.receive_data(None)
            else:
                self._decoder.receive_data(chunk)

    def next_event(self) -> object:
        """The decoder's next event, reading more of the body as needed."""
        while True:
            with _decoder_errors():
                event = self._decoder.next_event()
            if isinstance(event, NeedData):
                self._feed()
                continue
            return event

    def parts(self) -> Iterator[FormField | FilePart]:
        """Yield fields (read whole, bounded) and file parts (to be streamed by the caller)."""
        while True:
            if self._current_part is not None:
                self._current_part.drain()  # the caller did not consume it: skip the rest
                self._current_part = None
            event = self.next_event()
            if isinstance(event, Epilogue):
                return
            if isinstance(event, File | Field):
                name = event.name or ""
                content_type = event.headers.get("Content-Type")
                if isinstance(event, File) or name in self._file_field_names:
                    filename = event.filename if isinstance(event, File) else None
                    self._current_part = PartReader(self)
                    yield FilePart(name, filename, content_type, self._current_part)
                else:
                    yield FormField(name, self._read_field(name))
                continue
            # A Preamble, or Data outside a part, carries nothing we use.

    def _read_field(self, name: str) -> str:
        buffer = bytearray()
        while True:
            event = self.next_event()
            if not isinstance(event, Data):
                raise MalformedMultipart(f"Field {name!r} has no body.")
            buffer += event.data
            if len(buffer) > self._max_field_bytes:
                raise MalformedMultipart(
                    f"Field {name!r} is longer than {self._max_field_bytes} bytes."
                )
            if not event.more_data:
                break
        try:
            return buffer.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedMultipart(f"Field {name!r} is not valid UTF-8.") from None


class PartReader:
    """File-like view of one part's body: `read(n)` returns at most n bytes, b'' at its end."""

    def __init__(self, owner: MultipartStream) -> None:
        self._owner = owner
        self._pending = b""
        self._done = False

    def read(self, size: int = -1, /) -> bytes:
        if size is None or size < 0:
            size = 1 << 62
        # Collect decoder chunks in a list and join once: repeated `+=` would copy quadratically
        # for the 8 MiB reads the S3 multipart upload makes.
        chunks = [self._pending] if self._pending else []
        have = len(self._pending)
        while have < size and not self._done:
            event = self._owner.next_event()
            if not isinstance(event, Data):
                raise MalformedMultipart("A file part ended unexpectedly.")
            if event.data:
                chunks.append(event.data)
                have += len(event.data)
            if not event.more_data:
                self._done = True
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        if len(data) > size:
            data, self._pending = data[:size], data[size:]
        else:
            self._pending = b""
        return data

    def drain(self) -> None:
        while self.read(READ_SIZE):
            pass


class CountingInput:
    """Wrap the request body and refuse (413) once more than `limit` bytes have arrived.

    This catches bodies without Content-Length (chunked) that are too large, and whatever
    multipart overhead the per-file cap does not count.
    """

    def __init__(self, stream: Readable, limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self.received = 0

    def read(self, size: int = -1, /) -> bytes:
        try:
            chunk = self._stream.read(size)
        except OSError as error:  # the client reset the connection mid-body (gunicorn: raw socket)
            raise ClientDisconnected(f"The request body could not be read: {error}") from None
        self.received += len(chunk)
        if self.received > self._limit:
            raise PayloadTooLarge(
                f"The request body is larger than the maximum of {self._limit} bytes."
            )
        return chunk


class MinimumRateInput:
    """Wrap the request body and refuse (408) one that arrives slower than `floor` allows.

    A check after each read only sees a trickling client when a read returns, which may be
    never; so the floor is also handed to the server when it offers to bound its socket reads
    by it (`watch`, from the WSGI environ: our gunicorn worker does), and a read the server
    cuts short raises ClientTooSlow.
    """

    def __init__(
        self,
        stream: Readable,
        floor: RateFloor,
        watch: Callable[[RateFloor], None] | None = None,
    ) -> None:
        self._stream = stream
        self._floor = floor
        self.received = 0
        if watch is not None:
            watch(floor)

    @classmethod
    def for_environ(
        cls, stream: Readable, environ: Mapping[str, object], min_rate: int, window: float
    ) -> Readable:
        """`stream` wrapped, or `stream` itself when the minimum rate is off (0)."""
        if min_rate <= 0:
            return stream
        watch = environ.get(RATE_FLOOR_ENVIRON_KEY)
        return cls(stream, RateFloor(min_rate, window), watch if callable(watch) else None)

    def read(self, size: int = -1, /) -> bytes:
        try:
            chunk = self._stream.read(size)
        except ClientTooSlow as error:
            raise BodyTooSlow(str(error)) from None
        self.received += len(chunk)
        if chunk:
            try:
                self._floor.check(self.received)
            except ClientTooSlow as error:
                raise BodyTooSlow(str(error)) from None
        return chunk
