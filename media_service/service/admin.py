"""Administration over the ports: usage figures, and removing an account's or application's items.

Items are removed one by one through `MediaService.delete` (tombstone, bytes, record), so an
interrupted run leaves exactly what an interrupted API delete leaves: work for the sweeper.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from media_service.auth.principal import Principal
from media_service.errors import NotFound
from media_service.service.media import MediaService
from media_service.storage.interfaces import MediaRepository, SearchQuery, SearchScope

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PAGE = 100


@dataclass(frozen=True, slots=True)
class Totals:
    items: int = 0
    bytes: int = 0

    def __add__(self, other: Totals) -> Totals:
        return Totals(self.items + other.items, self.bytes + other.bytes)


def account_totals(media: MediaRepository, api_key: str | None = None) -> dict[str, Totals]:
    """READY items and bytes per account (only `api_key`'s when given)."""
    totals: dict[str, Totals] = {}
    for row in media.usage(api_key):
        totals[row.account_id] = totals.get(row.account_id, Totals()) + Totals(row.items, row.bytes)
    return totals


def application_totals(media: MediaRepository, api_key: str | None = None) -> dict[str, Totals]:
    """READY items and bytes per application id (items without an application are left out)."""
    return {
        row.application_id: Totals(row.items, row.bytes)
        for row in media.usage(api_key)
        if row.application_id is not None
    }


def delete_items(service: MediaService, api_key: str, application_id: str | None = None) -> int:
    """Delete every READY item of the account (or of one of its applications); return how many.

    Always reads the first page again: deleted items leave the search, so offsets would skip.
    """
    principal = Principal(account_id=api_key, application_id=application_id, scheme="basic")
    scope = SearchScope(api_key, application_id)
    deleted = 0
    while True:
        page = service.media.search(SearchQuery(scope, _EPOCH, None, True, 0, _PAGE))
        if not page.items:
            return deleted
        for item in page.items:
            try:
                service.delete(principal, item.id)
            except NotFound:  # deleted meanwhile by someone else
                continue
            deleted += 1
