"""tus 1.0.0 uploads (creation + checksum) at /v3/media/uploads, written over requests.

An upload is created with its length and fields, then its bytes go in PATCH requests of at
most `chunk_size`, each with the MD5 of its bytes. When a request fails in a way that may pass
(the connection broke, a 5xx, a 423 while the server still holds a broken request, a 409 or
460 after bytes went missing or astray) the server's offset is read again with HEAD and the
upload goes on from there, with a bounded number of attempts and growing pauses.
"""

from __future__ import annotations

import base64
import hashlib
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import IO, Any, Protocol

import requests

from media_service.client.errors import MediaApiError, MediaClientError

TUS_VERSION = "1.0.0"
UPLOADS_PATH = "/v3/media/uploads"
OFFSET_TYPE = "application/offset+octet-stream"
CHUNK_SIZE = 8 * 1024 * 1024
READ_SIZE = 1024 * 1024  # a PATCH body is streamed in reads of this size
RETRIES = 5
BACKOFF = 0.5  # seconds before the first retry, doubled each time up to MAX_BACKOFF
MAX_BACKOFF = 8.0
# 409: the offset moved (a broken PATCH kept part of its bytes); 460: bytes arrived damaged;
# 423: the server is still finishing a PATCH whose connection broke.
_RETRY_STATUSES = frozenset({409, 423, 460})

OnProgress = Callable[[int], None]


class Sender(Protocol):
    """MediaClient's authenticated request: raises MediaApiError unless `expect` has the status."""

    def __call__(
        self,
        method: str,
        url: str,
        *,
        expect: tuple[int, ...],
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response: ...


@dataclass(frozen=True)
class TusSupport:
    """What the server's OPTIONS answer advertised."""

    extensions: frozenset[str]
    max_size: int | None
    checksum_algorithms: frozenset[str]


def parse_options(response: requests.Response) -> TusSupport | None:
    """The server's tus support from its OPTIONS answer, or None if it offers no tus 1.0.0."""
    if response.status_code not in (200, 204):
        return None
    versions = _tokens(response.headers.get("Tus-Version"))
    if TUS_VERSION not in versions:
        return None
    max_size = response.headers.get("Tus-Max-Size", "")
    return TusSupport(
        extensions=_tokens(response.headers.get("Tus-Extension")),
        max_size=int(max_size) if max_size.isdigit() else None,
        checksum_algorithms=_tokens(response.headers.get("Tus-Checksum-Algorithm")),
    )


def encode_metadata(values: Mapping[str, str]) -> str:
    """Upload-Metadata: `key base64(value)` pairs separated by commas."""
    return ",".join(
        f"{key} {base64.b64encode(value.encode('utf-8')).decode('ascii')}"
        for key, value in values.items()
    )


class UploadExpired(MediaClientError):
    """The upload URL is no longer known to the server (404, or 410 once it expired)."""


class TusUpload:
    """Sends one seekable binary file of `length` bytes to an upload URL, from any offset.

    `file_md5` is the MD5 of the whole file once `send` has returned: it is computed from
    the bytes as they are first read, so the file is read about twice (a chunk is hashed for
    its Upload-Checksum, then streamed), never held in memory beyond one read.
    """

    def __init__(
        self,
        send: Sender,
        url: str,
        file: IO[bytes],
        length: int,
        *,
        chunk_size: int = CHUNK_SIZE,
        checksum: bool = True,
        retries: int | None = None,
        on_progress: OnProgress | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self.url = url
        self._send = send
        self._file = file
        self._length = length
        self._chunk_size = chunk_size
        self._checksum = checksum
        self._retries = RETRIES if retries is None else retries
        self._on_progress = on_progress or (lambda count: None)
        self._sleep = sleep
        self._md5 = hashlib.md5(usedforsecurity=False)
        self._hashed = 0  # the whole-file MD5 covers bytes [0, _hashed)
        self._reported = 0  # the progress reported so far, in bytes
        self.media_location: str | None = None

    @property
    def file_md5(self) -> str:
        self._hash_up_to(self._length)
        return self._md5.hexdigest()

    def send(self, offset: int | None = None) -> str:
        """PATCH every byte from `offset` (None: ask the server); return the Media-Location."""
        failures = 0
        if offset is None:
            offset = self.offset()
        while True:
            self._report(offset)
            if offset >= self._length and self.media_location is not None:
                return self.media_location
            try:
                if offset >= self._length:
                    # Finished before, by a request whose answer was lost: HEAD names the item.
                    offset = self.offset()
                    if self.media_location is None:
                        raise MediaClientError("the upload is complete but names no media item")
                    continue
                offset = self._patch(offset)
                failures = 0  # bytes went in: only consecutive failures count
            except MediaClientError as error:
                if not may_pass(error) or failures >= self._retries:
                    raise
                self._sleep(min(MAX_BACKOFF, BACKOFF * 2**failures))
                failures += 1
                try:
                    offset = self.offset()
                except MediaClientError as again:
                    if not may_pass(again):
                        raise
                    # Unreachable for now: the next PATCH at the old offset finds out anew.

    def offset(self) -> int:
        """The server's offset (HEAD), noting Media-Location if the upload is complete."""
        try:
            response = self._send("HEAD", self.url, expect=(200,), headers=_TUS)
        except MediaApiError as error:
            if error.status in (404, 410):
                raise UploadExpired(f"the upload {self.url} is gone ({error.status})") from error
            raise
        response.close()
        self._note_location(response)
        return _offset(response)

    def _patch(self, offset: int) -> int:
        end = min(self._length, offset + self._chunk_size)
        headers = dict(_TUS)
        headers["Content-Type"] = OFFSET_TYPE
        headers["Upload-Offset"] = str(offset)
        if self._checksum:
            digest = self._chunk_md5(offset, end)
            headers["Upload-Checksum"] = "md5 " + base64.b64encode(digest).decode("ascii")
        body = _ChunkBody(self._file, offset, end, self._on_sent)
        try:
            response = self._send("PATCH", self.url, expect=(204,), headers=headers, data=body)
        except MediaApiError as error:
            if error.status in (404, 410):
                raise UploadExpired(f"the upload {self.url} is gone ({error.status})") from error
            raise
        response.close()
        self._note_location(response)
        new_offset = _offset(response)
        if not offset < new_offset <= end:
            raise MediaClientError(f"PATCH at {offset} answered the offset {new_offset}")
        return new_offset

    def _chunk_md5(self, start: int, end: int) -> bytes:
        """The MD5 of bytes [start, end), feeding the whole-file MD5 with the bytes it lacks."""
        self._hash_up_to(start)
        digest = hashlib.md5(usedforsecurity=False)
        for position, data in _read(self._file, start, end):
            digest.update(data)
            if position + len(data) > self._hashed:
                self._md5.update(data[self._hashed - position :])
                self._hashed = position + len(data)
        return digest.digest()

    def _hash_up_to(self, position: int) -> None:
        if position > self._hashed:
            for _, data in _read(self._file, self._hashed, position):
                self._md5.update(data)
            self._hashed = position

    def _on_sent(self, count: int) -> None:
        self._reported += count
        self._on_progress(count)

    def _report(self, offset: int) -> None:
        """Bring the progress to the server's offset: back after a PATCH lost bytes, or ahead
        when an earlier run had sent them."""
        if offset != self._reported:
            self._on_progress(offset - self._reported)
            self._reported = offset

    def _note_location(self, response: requests.Response) -> None:
        location = response.headers.get("Media-Location")
        if location:
            self.media_location = location


class _ChunkBody:
    """Bytes [start, end) of a file for requests: a length (so Content-Length, not chunked)
    and an iterator reading it in bounded pieces."""

    def __init__(self, file: IO[bytes], start: int, end: int, on_sent: OnProgress) -> None:
        self._file = file
        self._start = start
        self._end = end
        self._on_sent = on_sent

    def __len__(self) -> int:
        return self._end - self._start

    def __iter__(self) -> Iterator[bytes]:
        for _, data in _read(self._file, self._start, self._end):
            yield data
            self._on_sent(len(data))


def _read(file: IO[bytes], start: int, end: int) -> Iterator[tuple[int, bytes]]:
    """(position, bytes) pieces of [start, end); a file that became shorter is an error."""
    file.seek(start)
    position = start
    while position < end:
        data = file.read(min(READ_SIZE, end - position))
        if not data:
            raise MediaClientError("the file became shorter while it was being uploaded")
        yield position, data
        position += len(data)


def may_pass(error: MediaClientError) -> bool:
    """Whether trying again may succeed: the network, the server's 5xx, or a tus race."""
    if isinstance(error, MediaApiError):
        return error.status >= 500 or error.status in _RETRY_STATUSES
    if isinstance(error, UploadExpired):
        return False
    return isinstance(error.__cause__, requests.ConnectionError | requests.Timeout)


def _offset(response: requests.Response) -> int:
    value = response.headers.get("Upload-Offset", "")
    if not value.isdigit():
        raise MediaClientError(f"the server sent no valid Upload-Offset ({value!r})")
    return int(value)


def _tokens(header: str | None) -> frozenset[str]:
    return frozenset(t.strip() for t in (header or "").split(",") if t.strip())


_TUS = {"Tus-Resumable": TUS_VERSION}
