"""Shared assertions and builders for the API suites (upload, info/update, delete/search, auth)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from flask.testing import FlaskClient

from media_service.storage.interfaces import Backends

# Every field of SPEC §1, in the order the table lists them.
ITEM_FIELDS = frozenset(
    {
        "id",
        "original_file_name",
        "mime_type",
        "account_id",
        "application_id",
        "store_id",
        "store_meta_params",
        "max_downloads_allowed",
        "times_downloaded",
        "etag",
        "media_size",
        "time_created",
        "time_last_updated",
        "public",
        "public_item",
        "metadata_primary",
        "metadata_secondary",
        "title",
        "description",
        "source_url",
        "audio",
        "expires_at",
    }
)
ISO_MILLIS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
UUID4 = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)
MISSING_ID = "00000000-0000-4000-8000-000000000000"


def md5_hex(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def assert_nothing_left(client: FlaskClient, backends: Backends, headers: dict[str, str]) -> None:
    """No visible item, no stored bytes, and no PENDING/DELETING document awaiting the sweeper."""
    found = client.get("/v3/media", headers=headers)
    assert found.status_code == 200
    assert found.get_json()["count"] == 0
    assert list(backends.blobs.list_blobs()) == []
    assert list(backends.media.iter_hidden(FAR_FUTURE)) == []


@dataclass(frozen=True)
class Part:
    """One part of a hand-built multipart/form-data body (so order and headers are exact)."""

    name: str
    value: bytes | str
    filename: str | None = None
    content_type: str | None = None


BOUNDARY = "----media-test-boundary-7MA4YWxkTrZu0gW"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"


def multipart(*parts: Part, boundary: str = BOUNDARY) -> bytes:
    """Encode `parts` in the given order, with exactly the headers they name."""
    out = bytearray()
    for part in parts:
        disposition = f'form-data; name="{part.name}"'
        if part.filename is not None:
            disposition += f'; filename="{part.filename}"'
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n".encode()
        if part.content_type is not None:
            out += f"Content-Type: {part.content_type}\r\n".encode()
        out += b"\r\n"
        out += part.value.encode() if isinstance(part.value, str) else part.value
        out += b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)


def post_multipart(client: FlaskClient, headers: dict[str, str], *parts: Part) -> Any:
    return client.post("/v3/media", data=multipart(*parts), headers=headers, content_type=MULTIPART)
