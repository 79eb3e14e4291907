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
from werkzeug.sansio.multipart import (
    Data,
    Epilogue,
    Field,
    File,
    MultipartDecoder,
    NeedData,
    State,
)

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


def _decoder_is_inspectable(decoder: MultipartDecoder) -> bool:
    """Whether `decoder` keeps its unparsed bytes and its state where data_into looks."""
    return isinstance(getattr(decoder, "buffer", None), bytearray) and isinstance(
        getattr(decoder, "state", None), State
    )


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
        # The in-place path reads the decoder's own buffer and state (werkzeug 3.x's sansio
        # decoder); a decoder without them gets every byte through receive_data as before.
        self._readinto = (
            getattr(stream, "readinto", None) if _decoder_is_inspectable(self._decoder) else None
        )
        self._marker = b"--" + boundary  # what the decoder looks for before it tries its regex
        self._boundary_room = len(b"\r\n--" + boundary)

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

    def data_into(self, buffer: bytearray, at: int) -> object:
        """The next step of a file part's data for buffer[at:]: the decoder's next event (to be
        copied from), or the number of bytes received straight into buffer[at:].

        Werkzeug's decoder copies every byte it is fed four times (into its buffer, a slice for
        the search of a partial boundary, a slice of the data and bytes() of that), each into a
        new 1 MiB allocation. In the middle of a part's data, where the decoder only wants more,
        the body is read into the caller's buffer instead and searched there, the decoder's way
        (see _receive_into); only what might end the part goes through the decoder itself.
        """
        while True:
            with _decoder_errors():
                event = self._decoder.next_event()
            if not isinstance(event, NeedData):
                return event
            received = self._receive_into(buffer, at)
            if received is None:
                self._feed(min(max(len(buffer) - at, _MIN_FEED), CHUNK_SIZE))
            elif received:
                return received

    def _receive_into(self, buffer: bytearray, at: int) -> int | None:
        """Read the body into buffer[at:] as the decoder would take it in its DATA state.

        What the decoder holds (at most a possible boundary's start) goes first, the body's next
        bytes after it. Without its marker (CRLF--boundary's "--boundary") in there, the decoder
        would hand on all of it but a possible partial boundary at the end, which it keeps: that
        is done here, in place, and the count returned. With the marker, all of it goes to the
        decoder (0: its events follow). None: not in a part's data, no room after what the decoder
        holds, or the body ended; the decoder is fed as usual.
        """
        decoder = self._decoder
        if self._readinto is None or decoder.state is not State.DATA or self._eof:
            return None
        held = len(decoder.buffer)
        if len(buffer) - at <= held:
            return None
        view = memoryview(buffer)
        view[at : at + held] = decoder.buffer
        received = self._readinto(view[at + held :])  # our own errors pass through
        if not received:
            return None  # the body ended: _feed reads that again and tells the decoder
        end = at + held + received
        if buffer.find(self._marker, at, end) != -1:
            with _decoder_errors():
                decoder.buffer.clear()
                decoder.receive_data(bytes(view[at:end]))
            return 0
        keep = self._partial_boundary_start(buffer, at, end)
        decoder.buffer[:] = view[keep:end]
        return keep - at

    def _partial_boundary_start(self, buffer: bytearray, start: int, end: int) -> int:
        """Where a boundary cut off by the end of buffer[start:end] could begin: the earliest of
        its last CR and its last LF within a boundary's length of the end, else `end`. The same
        answer as werkzeug's MultipartDecoder._last_partial_boundary_index (private, so not
        called), found without copying the data first.
        """
        window = max(start, end - self._boundary_room)
        last_lf = buffer.rfind(b"\n", window, end)
        last_cr = buffer.rfind(b"\r", window, end)
        return min(end if last_lf < 0 else last_lf, end if last_cr < 0 else last_cr)

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
        self._scratch: bytearray | None = None  # readinto's, for the last bytes of a buffer

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

    def readinto(self, buffer: bytearray) -> int:
        """Fill `buffer` (to its end, or to the part's) and return the count; 0 at the end."""
        view = memoryview(buffer)
        filled = self._take_pending(view)
        while filled < len(buffer) and not self._done:
            room = len(buffer) - filled
            if room >= _MIN_FEED:
                step = self._owner.data_into(buffer, filled)
            else:
                # Near the end of `buffer`, body reads that small would be many: receive into
                # a scratch buffer of our own, and keep what does not fit for the next read.
                if self._scratch is None:
                    self._scratch = bytearray(2 * _MIN_FEED)
                step = self._owner.data_into(self._scratch, 0)
                if isinstance(step, int):
                    self._pending = bytes(self._scratch[:step])
                    filled += self._take_pending(view[filled:])
                    continue
            if isinstance(step, int):
                filled += step
                continue
            if not isinstance(step, Data):
                raise MalformedMultipart("A file part ended unexpectedly.")
            if not step.more_data:
                self._done = True
            self._pending = step.data
            filled += self._take_pending(view[filled:])
        return filled

    def _take_pending(self, view: memoryview) -> int:
        """Move what fits of the pending data to the front of `view`; the count."""
        taken = min(len(self._pending), len(view))
        if taken:
            view[:taken] = memoryview(self._pending)[:taken]
            self._pending = self._pending[taken:]
        return taken

    def drain(self) -> None:
        while self.read(CHUNK_SIZE):
            pass
