"""The sweeper's part for resumable uploads: expired uploads and orphaned staged bytes."""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

from media_service.storage.interfaces import Backends, StorageError
from media_service.storage.resumable import resumable_ports

log = logging.getLogger(__name__)

BATCH = 500


def sweep_resumable(
    backends: Backends, *, now: datetime, grace: timedelta | None = None
) -> tuple[int, int]:
    """Remove expired uploads (staged bytes, then the record) and staged bytes that no record
    names once older than `grace`; return (uploads removed, errors). Errors are logged.

    An upload's record is written before its first byte is staged and removed only after its
    bytes, so staged bytes without a record are leftovers (a termination or sweep that failed
    midway); `grace` spares a PATCH that is still writing after its record was removed.
    """
    ports = resumable_ports(backends)
    removed = errors = 0
    try:
        while expired := ports.uploads.expired(now, BATCH):
            progress = 0
            for upload in expired:
                try:
                    if upload.media_id is None:
                        ports.staging.delete(upload.id)
                    ports.uploads.remove(upload.id)
                except StorageError as error:
                    log.warning("sweeper could not remove upload %s: %s", upload.id, error)
                    errors += 1
                    continue
                progress += 1
            removed += progress
            if progress < len(expired):
                break  # some keep failing: leave them for the next run
        cutoff = now - (grace if grace is not None else timedelta(hours=1))
        staged = [(uid, when) for uid, when in ports.staging.list_ids() if when <= cutoff]
        for start in range(0, len(staged), BATCH):
            batch = staged[start : start + BATCH]
            known = ports.uploads.existing([uid for uid, _ in batch])
            for upload_id, _ in batch:
                if upload_id not in known:
                    ports.staging.delete(upload_id)
                    removed += 1
    except StorageError as error:
        log.warning("sweeper could not clean resumable uploads: %s", error)
        errors += 1
    return removed, errors
