"""The sweeper: finish or roll back what interrupted uploads and deletes left behind.

Safe to run at any time, also beside live traffic, and idempotent:
* a PENDING item whose heartbeat is older than the stale bound is an upload that died, however
  recently it started: its bytes and document go. A live upload refreshes its heartbeat while
  bytes flow (service/media.py), so it is never taken for dead however long it runs; one whose
  bytes stopped for longer finds its item gone at its next heartbeat and fails at once;
* a temp file (file store) or an open multipart upload (S3) whose key no document names is
  what a dead upload was writing: it goes too;
* a DELETING item is a delete that died after its tombstone: finish it;
* a READY item whose expires_at has passed (already invisible) is deleted by the ordinary
  sequence: tombstone (only if it is still expired, in the same atomic update), bytes, record.
  A download already streaming keeps its open file or S3 response, so it finishes;
* a blob whose key no document references (and older than the grace period) is removed:
  uploads write the document before the bytes, so such a blob can only be a leftover;
* a READY item (older than the grace period) whose blob is missing is reported, counted and
  logged as an error, never removed: its bytes were lost behind the service's back, and only
  an operator can tell whether to restore them or delete the item (downloads answer 503).
* resumable (tus) uploads past their expiry go, staged bytes first (service/resumable_sweep.py);
* a repository that keeps search counts beside its items (MongoDB) settles the count changes of
  writers that died midway (`heal_counts`), and likewise the quota reservations (`heal_quotas`):
  removing an item gives its reservation back, exactly once, on every repository.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from itertools import islice

from media_service.service.resumable_sweep import sweep_resumable
from media_service.storage.interfaces import (
    Backends,
    BlobNotFound,
    ItemState,
    MediaItem,
    StorageError,
)

log = logging.getLogger(__name__)

BATCH = 500


@dataclass
class SweepReport:
    pending_rolled_back: int = 0
    deletes_finished: int = 0
    orphan_blobs_removed: int = 0
    ready_missing_blob: int = 0
    expired_removed: int = 0
    counts_healed: int = 0
    quotas_healed: int = 0
    resumable_removed: int = 0  # expired tus uploads and orphaned staged bytes
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def sweep(
    backends: Backends, *, now: datetime, grace: timedelta, stale: timedelta | None = None
) -> SweepReport:
    """Run one pass; errors on single items are logged and counted, not raised.

    `stale` bounds the age of a live upload's heartbeat (default: `grace`); `grace` protects
    blobs that no document references.
    """
    report = SweepReport()
    cutoff = now - grace
    stale_cutoff = now - (grace if stale is None else stale)
    try:  # before removing items: their marks go with them
        report.counts_healed = backends.media.heal_counts(now)
    except StorageError as error:
        report.errors += 1
        log.warning("sweeper could not heal search counts: %s", error)
    try:
        report.quotas_healed = backends.media.heal_quotas(now, stale_cutoff)
    except StorageError as error:
        report.errors += 1
        log.warning("sweeper could not heal quota reservations: %s", error)
    _remove_expired(backends, now, report)  # first: a delete that fails midway is finished below
    for item in backends.media.iter_hidden(older_than=stale_cutoff):
        try:
            if item.state is ItemState.PENDING:
                backends.blobs.abort_uploads_of(item.id)  # its parts, if it died mid-transfer
            backends.blobs.delete(item.id)
            backends.media.remove(item.id)
        except StorageError as error:
            report.errors += 1
            log.warning("sweeper could not clean %s: %s", item.id, error)
            continue
        if item.state is ItemState.DELETING:
            report.deletes_finished += 1
        else:
            report.pending_rolled_back += 1

    listed: set[str] = set()  # every key seen, for the READY items' check below
    blobs = iter(backends.blobs.list_blobs())
    while batch := list(islice(blobs, BATCH)):
        listed.update(b.key for b in batch)
        candidates = [b for b in batch if b.last_modified <= cutoff]
        if not candidates:
            continue
        referenced = backends.media.referenced_keys([b.key for b in candidates])
        for blob in candidates:
            if blob.key in referenced:
                continue
            try:
                backends.blobs.delete(blob.key)
                report.orphan_blobs_removed += 1
            except StorageError as error:
                report.errors += 1
                log.warning("sweeper could not remove blob %s: %s", blob.key, error)

    for item in backends.media.iter_ready(older_than=cutoff):
        if item.id in listed:
            continue
        try:
            if _blob_is_lost(backends, item):
                report.ready_missing_blob += 1
        except StorageError as error:
            report.errors += 1
            log.warning("sweeper could not check the blob of %s: %s", item.id, error)

    # Partial uploads: whatever no document names any more (the dead PENDING ones went above).
    named = backends.media.referenced_keys
    try:
        backends.blobs.remove_stale_temp(referenced=named)
        backends.blobs.abort_stale_uploads(stale_cutoff, named)
    except StorageError as error:
        report.errors += 1
        log.warning("sweeper could not remove partial uploads: %s", error)
    removed, errors = sweep_resumable(backends, now=now, grace=grace)
    report.resumable_removed = removed
    report.errors += errors
    return report


def _remove_expired(backends: Backends, now: datetime, report: SweepReport) -> None:
    """Delete the items expired by `now`, page by page (iter_expired reads bounded batches)."""
    try:
        for item in backends.media.iter_expired(now):
            try:
                # Conditional on still being expired by `now`: an item whose expiry another
                # host moved on (before it expired by that host's clock) is left alone.
                tombstone = backends.media.mark_deleting(item.id, expired_by=now)
                if tombstone is None:
                    continue  # deleted (or changed) meanwhile
                backends.blobs.delete(tombstone.id)
                backends.media.remove(item.id)
            except StorageError as error:
                # A tombstone left behind is finished below, as any interrupted delete.
                report.errors += 1
                log.warning("sweeper could not remove expired item %s: %s", item.id, error)
                continue
            report.expired_removed += 1
    except StorageError as error:  # the listing itself: the rest of the pass still runs
        report.errors += 1
        log.warning("sweeper could not list expired items: %s", error)


def _blob_is_lost(backends: Backends, item: MediaItem) -> bool:
    """Check one READY item the listing found no blob for; log it as an error if it is lost.

    The listing came first, so an upload that finished after it, or a delete since, is no
    loss: the blob is opened (zero bytes) and the item read again before anything is said.
    """
    try:
        backends.blobs.open(item.id, 0, 0).close()
        return False  # written after the listing
    except BlobNotFound:
        pass
    current = backends.media.get(item.id)
    if current is None:
        return False  # deleted meanwhile
    log.error(
        "media item %s is ready but its content is missing from the %s store",
        item.id,
        backends.blobs.store_id,
    )
    return True
