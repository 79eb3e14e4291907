"""multipart/form-data bodies, parsed as they stream: form fields, then file parts as readers.

Uploads are never buffered whole: Werkzeug's sans-IO multipart decoder is driven over the WSGI
input stream, and a file part is handed on as a file-like object whose `read(n)` pulls more of
the request body only when asked.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from werkzeug.exceptions import HTTPException
from werkzeug.sansio.multipart import Data, Epilogue, Field, File, MultipartDecoder, NeedData

from media_service.errors import MalformedMultipart
from media_service.storage.interfaces import CHUNK_SIZE, Readable

# The least a file part's read asks of the body: more than the decoder holds back at the end of
# what it has (a possible boundary: CRLF, "--" and at most 200 characters), so every read of the
# body hands on data and a read of the part takes at most two reads of the body.
_MIN_FEED = 64 * 1024


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
            boundary, max_form_memory_size=max_field_bytes + 2 * CHUNK_SIZE, max_parts=max_parts
        )
        self._file_field_names = file_field_names
        self._max_field_bytes = max_field_bytes
        self._eof = False
        self._current_part: PartReader | None = None

    def _feed(self, size: int) -> None:
        if self._eof:
            raise MalformedMultipart("The multipart body ended before its closing boundary.")
        chunk = self._stream.read(size)  # our own errors (413, client gone) pass through
        with _decoder_errors():
            if not chunk:
                self._eof = True
                self._decoder.receive_data(None)
            else:
                self._decoder.receive_data(chunk)

    def next_event(self, want: int = CHUNK_SIZE) -> object:
        """The decoder's next event, reading more of the body as needed (`want` bytes at most:
        what the caller still needs, so that a file part's data events line up with its reads).
        """
        while True:
            with _decoder_errors():
                event = self._decoder.next_event()
            if isinstance(event, NeedData):
                self._feed(min(max(want, 1), CHUNK_SIZE))
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
        pending, self._pending = self._pending, b""
        if len(pending) >= size:
            self._pending = pending[size:]
            return pending[:size]
        # Collect decoder chunks in a list and join once: repeated `+=` would copy quadratically
        # for the 8 MiB reads the S3 multipart upload makes.
        chunks = [pending] if pending else []
        have = len(pending)
        while have < size and not self._done:
            # Asking the body for just the bytes still missing (or _MIN_FEED, which is more
            # than the decoder may hold back at a time) keeps its events aligned with these
            # reads: a 1 MiB read is then one 1 MiB event, handed on without a copy.
            event = self._owner.next_event(max(size - have, _MIN_FEED))
            if not isinstance(event, Data):
                raise MalformedMultipart("A file part ended unexpectedly.")
            if not event.more_data:
                self._done = True
            data = event.data
            if have + len(data) > size:
                data, self._pending = data[: size - have], data[size - have :]
            if data:
                chunks.append(data)
                have += len(data)
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    def drain(self) -> None:
        while self.read(CHUNK_SIZE):
            pass
