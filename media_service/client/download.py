"""Receiving content: chunk streams, ETag and range headers, and the MD5 check of SPEC §1."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from contextlib import nullcontext
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import IO, Any

import requests

from media_service.client.errors import MediaClientError
from media_service.client.models import DownloadResult
from media_service.client.multipart import CHUNK_SIZE

_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")
_UNSATISFIED_RANGE = re.compile(r"bytes \*/(\d+)")
_MD5_HEX = re.compile(r"[0-9a-f]{32}")


class ContentStream(Iterator[bytes]):
    """A download being received: iterate it for chunks of bytes (at most CHUNK_SIZE each)."""

    def __init__(self, response: requests.Response) -> None:
        self.status = response.status_code
        self.etag = opaque_etag(response.headers.get("ETag"))
        self.content_type = response.headers.get("Content-Type")
        self.content_length = int_header(response, "Content-Length")
        self.content_range = response.headers.get("Content-Range")
        self._chunks = response.iter_content(CHUNK_SIZE)

    def __next__(self) -> bytes:
        try:
            chunk: bytes = next(self._chunks)
        except requests.RequestException as exc:
            raise MediaClientError(f"the download was interrupted: {exc}") from exc
        return chunk


def save_response(
    response: requests.Response, dest: Path | IO[bytes], offset: int
) -> DownloadResult:
    """Write a download's body to `dest` and describe what was done.

    A 200 replaces `dest`; a 206 is appended to the partial file of `offset` bytes at `dest`;
    a 304 writes nothing, nor does a 416 (the partial file was already complete). The whole
    content's MD5 is then checked against the ETag.
    """
    status = response.status_code
    etag = opaque_etag(response.headers.get("ETag"))
    if status == 304:
        return download_result(response, 0, None)
    if status == 416:
        assert isinstance(dest, Path)
        check_md5(file_md5(dest), etag)
        return download_result(response, 0, offset)
    if status == 206:
        start, total = content_range(response)
        if start != offset or not isinstance(dest, Path):
            raise MediaClientError(f"asked for bytes from {offset}, got from {start}")
        md5 = file_md5(dest)
        target: Any = dest.open("ab")
    else:
        total = int_header(response, "Content-Length")
        md5 = hashlib.md5(usedforsecurity=False)
        target = dest.open("wb") if isinstance(dest, Path) else nullcontext(dest)
    with target as out:
        written = copy_body(response, out, md5)
    check_md5(md5, etag)
    return download_result(response, written, total)


def copy_body(response: requests.Response, out: IO[bytes], md5: Any) -> int:
    """Write the body to `out` in chunks, feeding `md5`; return the number of bytes."""
    written = 0
    try:
        for chunk in response.iter_content(CHUNK_SIZE):
            out.write(chunk)
            md5.update(chunk)
            written += len(chunk)
    except requests.RequestException as exc:
        raise MediaClientError(f"the download was interrupted: {exc}") from exc
    return written


def file_md5(path: Path) -> Any:
    """The MD5 of a local file so far, ready to be continued with more bytes."""
    md5 = hashlib.md5(usedforsecurity=False)
    with path.open("rb") as file:
        while chunk := file.read(CHUNK_SIZE):
            md5.update(chunk)
    return md5


def check_md5(md5: Any, etag: str | None) -> None:
    # The service's ETag is the content's MD5 (SPEC §1); anything else is not checked.
    if etag is not None and _MD5_HEX.fullmatch(etag) and md5.hexdigest() != etag:
        raise MediaClientError("the downloaded content does not match its ETag")


def download_result(response: requests.Response, written: int, total: int | None) -> DownloadResult:
    """Describe a download from its response headers."""
    last_modified = None
    if header := response.headers.get("Last-Modified"):
        try:
            last_modified = parsedate_to_datetime(header)
        except (TypeError, ValueError):
            pass
    return DownloadResult(
        status=response.status_code,
        bytes_written=written,
        size=total,
        etag=opaque_etag(response.headers.get("ETag")),
        last_modified=last_modified,
        content_type=response.headers.get("Content-Type"),
    )


def quote_etag(value: str) -> str:
    """An entity-tag for a header: `*`, an already quoted tag, or a bare value quoted."""
    if value == "*" or value.startswith(('"', 'W/"')):
        return value
    return f'"{value}"'


def opaque_etag(header: str | None) -> str | None:
    """The strong ETag's value without quotes; None for a missing or weak one."""
    if header is None or header.startswith("W/") or len(header) < 2:
        return None
    return header.strip('"')


def int_header(response: requests.Response, name: str) -> int | None:
    """A header's non-negative integer value, or None."""
    value = response.headers.get(name, "")
    return int(value) if value.isdigit() else None


def content_range(response: requests.Response) -> tuple[int, int | None]:
    """(first byte, total size or None) from a 206's Content-Range."""
    match = _CONTENT_RANGE.fullmatch(response.headers.get("Content-Range", ""))
    if match is None:
        raise MediaClientError("a 206 response without a valid Content-Range")
    total = match[3]
    return int(match[1]), None if total == "*" else int(total)


def unsatisfied_size(response: requests.Response) -> int | None:
    """The content size a 416 reports (`Content-Range: bytes */size`), or None."""
    match = _UNSATISFIED_RANGE.fullmatch(response.headers.get("Content-Range", ""))
    return int(match[1]) if match else None
