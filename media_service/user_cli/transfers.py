"""Moving bytes: the upload transports (multipart; tus for large files) and resumable downloads."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

from media_service.client import MediaClient, MediaClientError, MediaItem
from media_service.client.download import file_md5
from media_service.client.resumable import CHUNK_SIZE as DEFAULT_TUS_CHUNK_SIZE
from media_service.client.resumable import may_pass
from media_service.user_cli.progress import Bar, OnBytes, ProgressReader

_MD5_HEX = re.compile(r"[0-9a-f]{32}")
_CONTENT_RANGE_START = re.compile(r"bytes (\d+)-")


# --------------------------------------------------------------------------- upload


class Uploader(Protocol):
    """A way to send one local file as a new item; `on_bytes` is told of each block sent."""

    def upload(self, path: Path, fields: Mapping[str, Any], on_bytes: OnBytes) -> MediaItem: ...


class MultipartUploader:
    """One streamed multipart POST /v3/media (SPEC §4.1): an interrupted upload starts over."""

    def __init__(self, client: MediaClient) -> None:
        self._client = client

    def upload(self, path: Path, fields: Mapping[str, Any], on_bytes: OnBytes) -> MediaItem:
        md5 = hashlib.md5(usedforsecurity=False)
        with path.open("rb") as file:
            reader = ProgressReader(file, on_bytes, md5.update)
            item = self._client.upload_file(reader, filename=path.name, **fields)
        if item.etag and _MD5_HEX.fullmatch(item.etag) and item.etag != md5.hexdigest():
            # The service hashes what it received (SPEC §1): another value means other bytes.
            raise MediaClientError(
                f"stored as {item.id}, but its ETag {item.etag} is not the MD5 of the bytes "
                f"sent ({md5.hexdigest()}): check the item, delete it and upload again"
            )
        return item


class ResumableUploader:
    """tus at /v3/media/uploads: an interrupted upload goes on from the server's offset, and
    one stopped by Ctrl-C (or a lost connection) is taken up by the next `media upload FILE`."""

    def __init__(self, client: MediaClient) -> None:
        self._client = client

    def upload(self, path: Path, fields: Mapping[str, Any], on_bytes: OnBytes) -> MediaItem:
        state = UploadState.for_file(self._client.base_url, path, fields)
        try:
            item = self._client.upload_resumable(
                path,
                upload_url=state.url(),
                on_created=state.remember,
                on_progress=on_bytes,
                chunk_size=TUS_CHUNK_SIZE,
                **fields,
            )
        except MediaClientError as error:
            if not may_pass(error):
                state.forget()  # nothing to resume: the next run starts over
            raise
        state.forget()
        return item


class UploadState:
    """The URL of an unfinished upload of one file, under $XDG_STATE_HOME/media/uploads.

    The key covers the service, the file's path, size and modification time and the fields:
    a changed file or other fields start a new upload rather than continue a wrong one.
    """

    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def for_file(cls, base_url: str, file: Path, fields: Mapping[str, Any]) -> UploadState:
        stat = file.stat()
        identity = json.dumps(
            [base_url, str(file.resolve()), stat.st_size, stat.st_mtime_ns, dict(fields)],
            sort_keys=True,
            default=str,
        )
        key = hashlib.sha256(identity.encode("utf-8")).hexdigest()[:32]
        return cls(_state_home() / "media" / "uploads" / f"{key}.json")

    def url(self) -> str | None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        url = data.get("url") if isinstance(data, dict) else None
        return url if isinstance(url, str) else None

    def remember(self, url: str) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps({"url": url}), encoding="utf-8")
        except OSError:
            pass  # only a later resume is lost; this upload goes on

    def forget(self) -> None:
        try:
            self.path.unlink(missing_ok=True)
        except OSError:
            pass


def _state_home() -> Path:
    configured = os.environ.get("XDG_STATE_HOME")
    if configured and os.path.isabs(configured):
        return Path(configured)
    return Path.home() / ".local" / "state"


RESUMABLE_MODES = ("auto", "always", "never")
TUS_THRESHOLD = 16 * 1024 * 1024  # smaller files go in one POST: a restart costs little
TUS_CHUNK_SIZE = DEFAULT_TUS_CHUNK_SIZE


def choose_uploader(client: MediaClient, size: int, mode: str = "auto") -> Uploader:
    """The transport for a file of `size` bytes: tus for large files when the service offers
    it (`mode` auto), for every file (always: an error without tus), or never.

    The service is asked once per client (OPTIONS, see MediaClient.tus_support); a service
    without tus 1.0.0, or whose Tus-Max-Size is below the file, gets the multipart POST.
    """
    if mode not in RESUMABLE_MODES:
        raise ValueError(f"resumable mode must be one of {', '.join(RESUMABLE_MODES)}")
    if mode == "never" or (mode == "auto" and size < TUS_THRESHOLD):
        return MultipartUploader(client)
    support = client.tus_support()
    usable = (
        support is not None
        and "creation" in support.extensions
        and (support.max_size is None or size <= support.max_size)
    )
    if usable:
        return ResumableUploader(client)
    if mode == "always":
        raise MediaClientError("the service does not offer resumable uploads for this file")
    return MultipartUploader(client)


# --------------------------------------------------------------------------- download


class DownloadInterrupted(MediaClientError):
    """The transfer stopped part way; the bytes received so far are kept for a resume."""

    def __init__(self, path: Path, received: int, total: int, reason: str) -> None:
        super().__init__(
            f"download interrupted at {received} of {total} bytes ({reason}); "
            f"{path} is kept: run the same command again to resume"
        )


class ChecksumMismatch(MediaClientError):
    """The file's MD5 differs from the item's ETag: the file is deleted (see `fetch`)."""


@dataclass(frozen=True)
class Fetched:
    """What `fetch` did: `resumed_from` bytes were already there (0: a whole download)."""

    path: Path
    size: int
    resumed_from: int
    already_complete: bool = False


def fetch(client: MediaClient, item: MediaItem, dest: Path, bar: Bar) -> Fetched:
    """Download `item` into `dest`, continuing a partial `dest`, and check the whole file's MD5.

    A `dest` shorter than the item is taken as a partial download (as `wget -c` does): the
    rest is asked for with `Range: bytes=<size>-` and `If-Range: "<etag>"`; a 206 appends,
    a 200 (the content changed) rewrites. A `dest` of the item's size is only checked.
    On an MD5 mismatch `dest` is deleted, since resuming from bytes that are wrong would fail
    again; the error says so. An interruption keeps what has arrived.
    """
    offset = dest.stat().st_size if dest.is_file() else 0
    if offset > item.media_size or not item.etag:
        offset = 0  # longer than the item, or no validator for If-Range: start over
    if offset and offset == item.media_size:
        bar.update(total=item.media_size, completed=offset)
        _verify(file_md5(dest), item.etag, dest)
        return Fetched(dest, offset, offset, already_complete=True)

    byte_range = (offset, None) if offset else None
    if_range = item.etag if offset else None
    with client.open_download(item.id, byte_range=byte_range, if_range=if_range) as stream:
        total = item.media_size
        if stream.status == 206:
            match = _CONTENT_RANGE_START.match(stream.content_range or "")
            if match is None or int(match[1]) != offset:
                raise MediaClientError(f"asked for bytes from {offset}, got {stream.content_range}")
            md5 = file_md5(dest)
            mode = "ab"
        else:
            offset = 0
            md5 = hashlib.md5(usedforsecurity=False)
            mode = "wb"
            total = stream.content_length if stream.content_length is not None else total
        bar.update(total=total, completed=offset)
        received = offset
        with dest.open(mode) as out:
            try:
                for chunk in stream:
                    out.write(chunk)
                    md5.update(chunk)
                    received += len(chunk)
                    bar.advance(len(chunk))
            except MediaClientError as exc:
                raise DownloadInterrupted(dest, received, total, "connection broken") from exc
        if received < total:
            raise DownloadInterrupted(dest, received, total, "the response ended early")
        # The service's ETag is the MD5 of the content (SPEC §1). Behind a redirect to a
        # blob store the response's own ETag may be something else: then the item's counts.
        expected = stream.etag if stream.etag and _MD5_HEX.fullmatch(stream.etag) else item.etag
    _verify(md5, expected, dest)
    return Fetched(dest, received, offset)


def write_to(client: MediaClient, item: MediaItem, out: IO[bytes], bar: Bar) -> int:
    """Stream the whole content into `out` (e.g. stdout); raise ChecksumMismatch at the end."""
    md5 = hashlib.md5(usedforsecurity=False)
    written = 0
    with client.open_download(item.id) as stream:
        bar.update(total=stream.content_length or item.media_size)
        for chunk in stream:
            out.write(chunk)
            md5.update(chunk)
            written += len(chunk)
            bar.advance(len(chunk))
        expected = stream.etag if stream.etag and _MD5_HEX.fullmatch(stream.etag) else item.etag
    out.flush()
    if expected and _MD5_HEX.fullmatch(expected) and md5.hexdigest() != expected:
        raise ChecksumMismatch("the content written does not match its ETag")
    return written


def _verify(md5: Any, expected: str | None, dest: Path) -> None:
    if expected and _MD5_HEX.fullmatch(expected) and md5.hexdigest() != expected:
        dest.unlink(missing_ok=True)
        raise ChecksumMismatch(
            f"{dest} does not match the item's ETag (MD5 {md5.hexdigest()}, expected "
            f"{expected}): deleted; run the command again to download it whole"
        )
