"""Account quotas, seen from an upload: reserve one item, then the bytes as they stream.

Any upload path (multipart, url fetch, resumable uploads) uses it the same way, around its
PENDING document:

    meter = QuotaMeter(repository, account_id, item_id)
    meter.begin()            # after inserting the PENDING item: counts the item (403 if full)
    meter.grow(len(chunk))   # before handing each chunk on (403 the moment it would pass)
    meter.settle()           # after mark_ready succeeded
    # failure: remove the PENDING document (MediaRepository.remove gives the room back)

Usage therefore counts uploads in flight too: two uploads can never both take the last room.
"""

from __future__ import annotations

import logging

from media_service.errors import QuotaExceeded, ServiceUnavailable, UploadAbandoned
from media_service.storage.interfaces import MediaRepository, Reservation, StorageError

log = logging.getLogger(__name__)


class QuotaMeter:
    """The reservation of one upload against its account's quota."""

    def __init__(self, media: MediaRepository, account_id: str, item_id: str) -> None:
        self._media = media
        self.account_id = account_id
        self.item_id = item_id
        self.reserved = 0

    def begin(self) -> None:
        """Count the item; raise QuotaExceeded when the account has its maximum of items."""
        self._check(self._media.reserve_item(self.account_id, self.item_id), "items", 1)

    def grow(self, size: int) -> None:
        """Reserve `size` more bytes; raise QuotaExceeded when that would pass max_bytes."""
        if size <= 0:
            return
        self._check(self._media.reserve_bytes(self.account_id, self.item_id, size), "bytes", size)
        self.reserved += size

    def settle(self) -> None:
        """Hand the reservation to the READY item (best effort: the sweeper settles the rest)."""
        try:
            self._media.settle_quota(self.account_id, self.item_id, self.reserved)
        except StorageError as error:
            log.warning("quota of %s left for the sweeper to settle: %s", self.item_id, error)

    def _check(self, outcome: Reservation, what: str, asked: int) -> None:
        if outcome is Reservation.RESERVED:
            return
        if outcome is Reservation.NOT_PENDING:
            raise UploadAbandoned()
        raise QuotaExceeded(self._detail(what, asked))

    def _detail(self, what: str, asked: int) -> str:
        try:
            quota = self._media.quota(self.account_id)
        except StorageError:
            raise ServiceUnavailable("The account's quota could not be read.") from None
        if what == "items":
            return (
                f"The account's quota of {quota.max_items} items is used up"
                f" (usage: {quota.items} items, {quota.bytes} bytes, uploads in flight included)."
            )
        return (
            f"This upload would take the account past its quota of {quota.max_bytes} bytes"
            f" (usage: {quota.bytes} bytes, {quota.items} items, uploads in flight included;"
            f" this upload had {self.reserved} bytes and needed {asked} more)."
        )
