"""Resumable (tus 1.0.0) uploads: create, append, finish and terminate.

The record in the database is the truth about an upload (storage/resumable.py). A PATCH takes
the upload's lease (one writer at a time, on any worker or host), appends to the staging area,
and moves the recorded offset each time the staging store says the bytes below are durable; a
PATCH cut off mid-body thus keeps what reached disk, and HEAD says where to resume.

When the last byte arrives, the staged bytes are streamed once more, in order, through the
same `stage_upload` -> `publish_upload` sequence a multipart upload takes: MD5, SHA-256, size
cap, free-space checks, heartbeat, mime detection and audio facts (and whatever hooks that
path gains) apply unchanged. Hash state cannot outlive a process, so re-reading the staged
bytes at completion is what makes the ETag right across PATCHes, workers and restarts. The
final bytes' offset is recorded only together with the item's id (`finish`): a crash before
that leaves the upload one PATCH short, and the client resends the last chunk.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import uuid
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

from media_service.auth import Principal
from media_service.errors import (
    ChecksumMismatch,
    Forbidden,
    LeaseLost,
    NotFound,
    OffsetMismatch,
    PayloadTooLarge,
    UploadGone,
    UploadLocked,
)
from media_service.schemas.media import UploadFieldsSchema
from media_service.service.media import MediaService
from media_service.settings import Settings
from media_service.storage.interfaces import MediaItem, Readable, StorageError
from media_service.storage.resumable import Claim, ResumablePorts, ResumableUpload

log = logging.getLogger(__name__)


# tus checksum extension: the algorithms a PATCH's Upload-Checksum may name.
CHECKSUM_ALGORITHMS = ("md5", "sha1", "sha256")


class ResumableService:
    """tus uploads over the resumable ports, finished through MediaService."""

    def __init__(
        self,
        media: MediaService,
        ports: ResumablePorts,
        settings: Settings,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.media = media
        self.uploads = ports.uploads
        self.staging = ports.staging
        self.settings = settings
        self.clock = clock if clock is not None else media.clock

    @property
    def max_size(self) -> int:
        return self.settings.max_upload_bytes

    @property
    def _lease(self) -> timedelta:
        return timedelta(seconds=self.settings.resumable_lock_seconds)

    # ------------------------------------------------------------------ create, read

    def create(
        self, principal: Principal, length: int, metadata: dict[str, str]
    ) -> ResumableUpload:
        """Record a new upload of `length` bytes (validated metadata); 413 above the cap."""
        if length > self.max_size:
            raise PayloadTooLarge(
                f"The upload is larger than the maximum of {self.max_size} bytes."
            )
        self.media.admit_upload(length)
        now = self.clock()
        upload = ResumableUpload(
            id=str(uuid.uuid4()),
            account_id=principal.account_id,
            application_id=principal.application_id,
            length=length,
            offset=0,
            metadata=dict(metadata),
            time_created=now,
            expires=now + timedelta(seconds=self.settings.resumable_expiry_seconds),
        )
        self.uploads.create(upload)
        if length == 0:  # complete as soon as it exists
            return self._finish_empty(upload)
        return upload

    def get(self, principal: Principal, upload_id: str) -> ResumableUpload:
        """The upload if `principal` owns it: 404 for another account, 403 for another
        application; 410 once an unfinished upload has expired."""
        upload = self.uploads.get(upload_id)
        if upload is None or upload.account_id != principal.account_id:
            raise NotFound("No upload with that id.")
        if (
            principal.application_id is not None
            and upload.application_id != principal.application_id
        ):
            raise Forbidden("This upload belongs to another application.")
        if upload.media_id is None and upload.expires <= self.clock():
            raise UploadGone("This upload has expired; start a new one.")
        return upload

    # ------------------------------------------------------------------ append

    def append(
        self,
        principal: Principal,
        upload_id: str,
        offset: int,
        source: Readable,
        announced: int | None,
        checksum: tuple[str, bytes] | None = None,
    ) -> ResumableUpload:
        """Append the body at `offset`; finish the upload when it reaches its length.

        With `checksum` (algorithm, digest) the body counts only once it is whole and matches:
        its bytes are staged as they come, but the offset moves only after the check.
        """
        upload = self.get(principal, upload_id)
        if upload.media_id is not None:
            if offset == upload.length and not announced:
                return upload  # a client repeating its last, empty PATCH
            raise OffsetMismatch(f"The upload is complete: its offset is {upload.length}.")
        if offset != upload.offset:
            raise OffsetMismatch(f"The upload's offset is {upload.offset}, not {offset}.")
        if announced is not None and offset + announced > upload.length:
            raise PayloadTooLarge(
                f"The body would go past the upload's length of {upload.length} bytes."
            )
        self.media.admit_upload(announced)
        token = uuid.uuid4().hex
        self._claim(upload, offset, token)
        try:
            return self._append_leased(upload, offset, source, token, checksum)
        finally:
            with contextlib.suppress(StorageError):
                self.uploads.release(upload.id, token)

    def _claim(self, upload: ResumableUpload, offset: int | None, token: str) -> None:
        now = self.clock()
        claim = self.uploads.claim(upload.id, offset, token, now + self._lease, now)
        if claim is Claim.NOT_FOUND:
            raise NotFound("No upload with that id.")
        if claim is Claim.BUSY:
            raise UploadLocked("Another request is writing to this upload; retry shortly.")
        if claim in (Claim.OFFSET_MISMATCH, Claim.COMPLETE):
            current = self.uploads.get(upload.id)
            at = current.offset if current is not None else "unknown"
            raise OffsetMismatch(f"The upload's offset is {at}, not {offset}.")

    def _append_leased(
        self,
        upload: ResumableUpload,
        offset: int,
        source: Readable,
        token: str,
        checksum: tuple[str, bytes] | None,
    ) -> ResumableUpload:
        committed = offset

        def advance(end: int) -> None:
            nonlocal committed
            if not self.uploads.advance(upload.id, token, committed, end):
                raise LeaseLost("This upload was taken over by another request.")
            committed = end

        def durable(end: int) -> None:
            if end >= upload.length or checksum is not None:
                return  # recorded after the check, or with the item's id by finish()
            advance(end)

        digest = hashlib.new(checksum[0]) if checksum is not None else None
        reader = _LeasedReader(source, self, upload.id, token, digest)
        end = self.staging.write(upload.id, offset, reader, upload.length - offset, durable)
        if end == upload.length and source.read(1):
            raise PayloadTooLarge(
                f"The body goes past the upload's length of {upload.length} bytes."
            )
        if checksum is not None and digest is not None and digest.digest() != checksum[1]:
            raise ChecksumMismatch(f"The body does not match its {checksum[0]} Upload-Checksum.")
        if end < upload.length:
            if end > committed:
                advance(end)
            return replace(upload, offset=committed)
        item = self._publish(upload, self.staging.open(upload.id, upload.length))
        if not self.uploads.finish(upload.id, token, item.id):
            log.warning("upload %s became item %s but its lease was lost", upload.id, item.id)
        with contextlib.suppress(StorageError):
            self.staging.delete(upload.id)
        return replace(upload, offset=upload.length, media_id=item.id)

    def _finish_empty(self, upload: ResumableUpload) -> ResumableUpload:
        token = uuid.uuid4().hex
        self._claim(upload, 0, token)
        try:
            item = self._publish(upload, io.BytesIO(b""))
            self.uploads.finish(upload.id, token, item.id)
        finally:
            with contextlib.suppress(StorageError):
                self.uploads.release(upload.id, token)
        return replace(upload, media_id=item.id)

    def _publish(self, upload: ResumableUpload, source: Readable) -> MediaItem:
        """Create the item from the staged bytes exactly as a multipart upload would."""
        fields = dict(upload.metadata)  # validated when the upload was created
        part_content_type = fields.pop("filetype", None)
        values: dict[str, Any] = UploadFieldsSchema().load(fields)
        owner = Principal(upload.account_id, upload.application_id, "basic")
        staged = self.media.stage_upload(
            owner, source, file_name=fields.get("filename"), part_content_type=part_content_type
        )
        return self.media.publish_upload(staged, values)  # removes the staged item on failure

    # ------------------------------------------------------------------ terminate

    def terminate(self, principal: Principal, upload_id: str) -> None:
        """Remove the upload and its staged bytes (a finished upload's item stays)."""
        upload = self.get(principal, upload_id)
        token = uuid.uuid4().hex
        if upload.media_id is None:
            now = self.clock()
            claim = self.uploads.claim(upload.id, None, token, now + self._lease, now)
            if claim is Claim.BUSY:
                raise UploadLocked("Another request is writing to this upload; retry shortly.")
        # The record first: without it nothing can write here any more, and staged bytes left
        # by a failure below are orphans the sweeper removes.
        self.uploads.remove(upload.id)
        self.staging.delete(upload.id)


class _LeasedReader:
    """The PATCH body, renewing the lease (at most every quarter of it) and checking free
    space before each chunk is written."""

    def __init__(
        self,
        source: Readable,
        service: ResumableService,
        upload_id: str,
        token: str,
        digest: Any = None,
    ) -> None:
        self._source = source
        self._digest = digest
        self._service = service
        self._upload_id = upload_id
        self._token = token
        self._renewed = service.clock()

    def read(self, size: int = -1, /) -> bytes:
        chunk = self._source.read(size)
        if chunk:
            if self._digest is not None:
                self._digest.update(chunk)
            service = self._service
            service.media.disk.check_chunk(len(chunk))
            now = service.clock()
            if now - self._renewed >= service._lease / 4:
                if not service.uploads.renew(self._upload_id, self._token, now + service._lease):
                    raise LeaseLost("This upload was taken over by another request.")
                self._renewed = now
        return chunk
