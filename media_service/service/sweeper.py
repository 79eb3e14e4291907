"""The sweeper: finish or roll back what interrupted uploads and deletes left behind.

Safe to run at any time, also beside live traffic, and idempotent:
* a PENDING item older than the grace period is an upload that died: its bytes and document go
  (an upload still running past the grace finds its item gone and fails cleanly);
* a DELETING item is a delete that died after its tombstone: finish it;
* a blob whose key no document references (and older than the grace period) is removed:
  uploads write the document before the bytes, so such a blob can only be a leftover;
* a repository that keeps search counts beside its items (MongoDB) settles the count changes of
  writers that died midway (`heal_counts`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import islice

from media_service.storage.interfaces import Backends, ItemState, StorageError

log = logging.getLogger(__name__)

BATCH = 500


@dataclass
class SweepReport:
    pending_rolled_back: int = 0
    deletes_finished: int = 0
    orphan_blobs_removed: int = 0
    counts_healed: int = 0
    errors: int = 0

    def as_dict(self) -> dict[str, int]:
        return dict(self.__dict__)


def sweep(backends: Backends, *, now: datetime, grace: timedelta) -> SweepReport:
    """Run one pass; errors on single items are logged and counted, not raised."""
    report = SweepReport()
    cutoff = now - grace
    heal_counts = getattr(backends.media, "heal_counts", None)
    if heal_counts is not None:  # before removing items: their marks go with them
        try:
            report.counts_healed = heal_counts(now)
        except StorageError as error:
            report.errors += 1
            log.warning("sweeper could not heal search counts: %s", error)
    for item in backends.media.iter_hidden(older_than=cutoff):
        try:
            backends.blobs.delete(item.store_key)
            backends.media.remove(item.id)
        except StorageError as error:
            report.errors += 1
            log.warning("sweeper could not clean %s: %s", item.id, error)
            continue
        if item.state is ItemState.DELETING:
            report.deletes_finished += 1
        else:
            report.pending_rolled_back += 1

    blobs = iter(backends.blobs.list_blobs())
    while batch := list(islice(blobs, BATCH)):
        candidates = [b for b in batch if b.last_modified <= cutoff]
        if not candidates:
            continue
        referenced = backends.media.ids_with_keys([b.key for b in candidates])
        for blob in candidates:
            if blob.key in referenced:
                continue
            try:
                backends.blobs.delete(blob.key)
                report.orphan_blobs_removed += 1
            except StorageError as error:
                report.errors += 1
                log.warning("sweeper could not remove blob %s: %s", blob.key, error)

    remove_stale_temp = getattr(backends.blobs, "remove_stale_temp", None)
    if remove_stale_temp is not None:
        # The file store ages temp files by the wall clock: a `now` ahead of it shortens the age.
        ahead = max(0.0, (now - datetime.now(UTC)).total_seconds())
        remove_stale_temp(max(0.0, grace.total_seconds() - ahead))
    return report
