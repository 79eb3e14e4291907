"""A streaming multipart/form-data body: the file is read in bounded chunks as it is sent."""

from __future__ import annotations

import io
import os
import secrets
from collections.abc import Iterator, Sequence
from typing import Any, Protocol
from urllib.parse import quote

from media_service.client.errors import MediaClientError

CHUNK_SIZE = 1024 * 1024
_PLAIN_NAME = frozenset(chr(c) for c in range(0x20, 0x7F)) - set('"\\%')


class Readable(Protocol):
    """A binary file-like object: only `read(size)` is required (`seek` and `tell` help)."""

    def read(self, size: int = -1, /) -> bytes: ...


class MultipartBody:
    """Form fields, then at most one file part, encoded on the fly.

    When the file's remaining size is known (a seekable file) the body has a length, so the
    request carries Content-Length and the server can refuse an oversized upload before reading
    it; otherwise iterate it for a chunked request.
    """

    def __init__(
        self,
        fields: Sequence[tuple[str, str]],
        file: FilePart | None = None,
    ) -> None:
        self.boundary = "media-client-" + secrets.token_hex(16)
        head = b"".join(
            self._part_header(name) + value.encode("utf-8") + b"\r\n" for name, value in fields
        )
        if file is not None:
            head += self._part_header(file.field, file.filename, file.content_type)
        self._head = head
        self._tail = (b"\r\n" if file is not None else b"") + f"--{self.boundary}--\r\n".encode()
        self._file = file

    @property
    def content_type(self) -> str:
        return f"multipart/form-data; boundary={self.boundary}"

    @property
    def length(self) -> int | None:
        """The encoded size in bytes, or None when the file's size is not known."""
        if self._file is None:
            return len(self._head) + len(self._tail)
        if self._file.size is None:
            return None
        return len(self._head) + self._file.size + len(self._tail)

    def __len__(self) -> int:
        # requests sends Content-Length from len(); only offered when the length is known.
        length = self.length
        if length is None:
            raise TypeError("the length of this body is not known")
        return length

    def __iter__(self) -> Iterator[bytes]:
        yield self._head
        if self._file is not None:
            yield from self._file.chunks()
        yield self._tail

    def _part_header(
        self, name: str, filename: str | None = None, content_type: str | None = None
    ) -> bytes:
        disposition = f'form-data; name="{_quoted(name)}"'
        if filename is not None:
            disposition += "; " + _filename_params(filename)
        lines = [f"--{self.boundary}", f"Content-Disposition: {disposition}"]
        if content_type is not None:
            lines.append(f"Content-Type: {content_type}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("utf-8")


class FilePart:
    """The file of an upload: read `size` bytes (or to EOF when None) in bounded chunks."""

    def __init__(
        self, field: str, filename: str, content_type: str, fileobj: Readable, size: int | None
    ) -> None:
        self.field = field
        self.filename = filename
        self.content_type = content_type
        self.fileobj = fileobj
        self.size = size

    def chunks(self) -> Iterator[bytes]:
        remaining = self.size
        while remaining is None or remaining > 0:
            want = CHUNK_SIZE if remaining is None else min(CHUNK_SIZE, remaining)
            chunk = self.fileobj.read(want)
            if not isinstance(chunk, bytes):
                raise MediaClientError("the file must be opened in binary mode")
            if not chunk:
                if remaining is not None:
                    # Content-Length has been sent: a shorter body would leave the server waiting.
                    raise MediaClientError("the file became shorter while it was being uploaded")
                return
            if remaining is not None:
                remaining -= len(chunk)
            yield chunk


def remaining_size(fileobj: Readable) -> int | None:
    """How many bytes are left from the current position, or None if that cannot be known."""
    file: Any = fileobj  # seekable(), tell() and seek() are optional
    try:
        if not file.seekable():
            return None
        position: int = file.tell()
        end: int = file.seek(0, os.SEEK_END)
        file.seek(position)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        return None
    return max(0, end - position)


def _quoted(text: str) -> str:
    """Text for a quoted-string: escape the characters that would end or break it."""
    for bad in "\r\n":
        text = text.replace(bad, " ")
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _filename_params(filename: str) -> str:
    """`filename=`, plus RFC 5987 `filename*=` when the name is not plain ASCII."""
    if all(c in _PLAIN_NAME for c in filename):
        return f'filename="{filename}"'
    fallback = "".join(c if c in _PLAIN_NAME else "_" for c in filename)
    return f"filename=\"{fallback}\"; filename*=UTF-8''{quote(filename, safe='')}"
