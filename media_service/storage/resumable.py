"""Ports of resumable (tus) uploads: where their records and their staged bytes live.

An upload is a record in the metadata database (so that any worker on any host can continue
it) plus the bytes received so far in a staging area beside the blob store. The record's
`offset` is the truth: it only moves after the bytes below it are durable, and staged bytes
beyond it (a crash between the write and the record's update) are overwritten by the next
PATCH. Only the holder of the record's lease may write or move the offset.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, runtime_checkable

from media_service.storage.interfaces import Backends, Readable

_UPLOAD_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def check_upload_id(upload_id: str) -> str:
    """Return the id if it is a server-made upload id (a canonical UUID); else ValueError.

    Staging stores build file names and object keys from it."""
    if not isinstance(upload_id, str) or not _UPLOAD_ID.fullmatch(upload_id):
        raise ValueError(f"invalid upload id: {upload_id!r}")
    return upload_id


@dataclass(frozen=True, slots=True)
class ResumableUpload:
    """One tus upload's record."""

    id: str
    account_id: str
    application_id: str | None
    length: int
    offset: int
    metadata: dict[str, str]  # validated Upload-Metadata values, decoded
    time_created: datetime
    expires: datetime
    media_id: str | None = None  # the media item it became, once complete


class Claim(enum.Enum):
    """What `UploadRepository.claim` found."""

    CLAIMED = "claimed"
    NOT_FOUND = "not_found"
    OFFSET_MISMATCH = "offset_mismatch"
    BUSY = "busy"  # another request holds the lease
    COMPLETE = "complete"


@runtime_checkable
class UploadRepository(Protocol):
    """Records of resumable uploads. Every method is one atomic operation on the database."""

    def prepare_database(self) -> None:
        """Create the table/collection and indexes if missing (idempotent)."""
        ...

    def create(self, upload: ResumableUpload) -> None:
        """Insert a new record (offset 0). Raises AlreadyExists on a duplicate id."""
        ...

    def get(self, upload_id: str) -> ResumableUpload | None:
        """The record, or None."""
        ...

    def claim(
        self, upload_id: str, offset: int | None, token: str, until: datetime, now: datetime
    ) -> Claim:
        """Take the lease (until `until`) if nobody holds an unexpired one, the upload is not
        complete and its offset is `offset` (any offset when None). One winner only."""
        ...

    def renew(self, upload_id: str, token: str, until: datetime) -> bool:
        """Extend the lease `token` holds; False if it is no longer held."""
        ...

    def advance(self, upload_id: str, token: str, old: int, new: int) -> bool:
        """Durably move the offset from `old` to `new` under the lease; False if not held."""
        ...

    def finish(self, upload_id: str, token: str, media_id: str) -> bool:
        """Durably mark the upload complete (offset = length, media_id) and drop the lease."""
        ...

    def release(self, upload_id: str, token: str) -> None:
        """Drop the lease if `token` still holds it."""
        ...

    def remove(self, upload_id: str) -> bool:
        """Delete the record; False if there was none."""
        ...

    def expired(self, now: datetime, limit: int) -> list[ResumableUpload]:
        """Up to `limit` records whose expiry is before `now` (for the sweeper)."""
        ...

    def existing(self, upload_ids: list[str]) -> set[str]:
        """Which of these ids have a record."""
        ...


@runtime_checkable
class StagingStore(Protocol):
    """The bytes of unfinished uploads, kept durably between requests."""

    def write(
        self,
        upload_id: str,
        offset: int,
        source: Readable,
        limit: int,
        durable: Callable[[int], None],
    ) -> int:
        """Append at most `limit` bytes read from `source` at `offset` (bytes staged beyond
        `offset` are discarded first); return the new end.

        `durable(end)` is called whenever the bytes up to `end` have become durable: at least
        every few MiB, at the end, and also when `source.read` raises (what arrived before is
        kept), after which the exception propagates unchanged.
        """
        ...

    def open(self, upload_id: str, length: int) -> Readable:
        """Read the staged bytes [0, length) in order (for the completion's copy)."""
        ...

    def delete(self, upload_id: str) -> None:
        """Remove the staged bytes; nothing staged is not an error."""
        ...

    def list_ids(self) -> Iterator[tuple[str, datetime]]:
        """(upload id, last write) of everything staged (the sweeper finds orphans)."""
        ...


@dataclass(frozen=True, slots=True)
class ResumablePorts:
    uploads: UploadRepository
    staging: StagingStore


def resumable_ports(backends: Backends) -> ResumablePorts:
    """The resumable ports beside the configured blob store and database."""
    blobs: Any = backends.blobs
    media: Any = backends.media
    staging: StagingStore
    if blobs.store_id == "file":
        from media_service.storage.staging_files import FileStaging

        staging = FileStaging.beside(blobs)
    else:
        from media_service.storage.staging_s3 import S3Staging

        staging = S3Staging.beside(blobs)
    uploads: UploadRepository
    if hasattr(media, "collection_name"):  # MongoMediaRepository
        from media_service.storage.uploads_mongo import MongoUploadRepository

        uploads = MongoUploadRepository(media.db)
    else:
        from media_service.storage.uploads_sqlite import SqliteUploadRepository

        uploads = SqliteUploadRepository(media.db)
    return ResumablePorts(uploads=uploads, staging=staging)
