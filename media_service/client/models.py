"""Values MediaClient returns: media items (SPEC §1), search pages and download results."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True)
class MediaItem:
    """A media item's metadata. Unknown fields from a newer service are kept in `extra`."""

    id: str
    original_file_name: str | None
    mime_type: str | None
    account_id: str | None
    application_id: str | None
    store_id: str | None
    store_meta_params: Mapping[str, Any] = field(hash=False)  # decoded from its JSON string
    max_downloads_allowed: int
    times_downloaded: int
    etag: str | None
    media_size: int
    time_created: datetime | None
    time_last_updated: datetime | None
    public: bool
    metadata_primary: str | None
    metadata_secondary: str | None
    title: str | None
    description: str | None
    source_url: str | None
    extra: Mapping[str, Any] = field(default_factory=dict, hash=False, repr=False)

    @property
    def public_item(self) -> bool:
        """The older name of `public`."""
        return self.public

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> MediaItem:
        """Build from the service's JSON; raise ValueError when it is not a media item."""
        item_id = data.get("id")
        if not isinstance(item_id, str) or not item_id:
            raise ValueError("a media item needs a string id")
        public = data.get("public", data.get("public_item"))
        return cls(
            id=item_id,
            original_file_name=_str(data.get("original_file_name")),
            mime_type=_str(data.get("mime_type")),
            account_id=_str(data.get("account_id")),
            application_id=_str(data.get("application_id")),
            store_id=_str(data.get("store_id")),
            store_meta_params=_json_object(data.get("store_meta_params")),
            max_downloads_allowed=_int(data.get("max_downloads_allowed")),
            times_downloaded=_int(data.get("times_downloaded")),
            etag=_str(data.get("etag")),
            media_size=_int(data.get("media_size")),
            time_created=parse_timestamp(data.get("time_created")),
            time_last_updated=parse_timestamp(data.get("time_last_updated")),
            public=public is True,
            metadata_primary=_str(data.get("metadata_primary")),
            metadata_secondary=_str(data.get("metadata_secondary")),
            title=_str(data.get("title")),
            description=_str(data.get("description")),
            source_url=_str(data.get("source_url")),
            extra={k: v for k, v in data.items() if k not in _KNOWN},
        )


_KNOWN = frozenset(f.name for f in fields(MediaItem)) | {"public_item"}


@dataclass(frozen=True)
class SearchPage:
    """One page of search results (SPEC §4.6); `links` maps relation names to hrefs."""

    items: tuple[MediaItem, ...]
    count: int
    page_index: int
    page_size: int
    links: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def next_href(self) -> str | None:
        """The href of the next page, or None on the last page."""
        return self.links.get("next")

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> SearchPage:
        """Build from the HAL search response; raise ValueError when it is not one."""
        embedded = data.get("_embedded") or {}
        media = embedded.get("media") if isinstance(embedded, dict) else None
        if not isinstance(media, list):
            raise ValueError("a search page needs _embedded.media")
        raw_links = data.get("_links") or {}
        links = {
            name: link["href"]
            for name, link in (raw_links.items() if isinstance(raw_links, dict) else ())
            if isinstance(link, dict) and isinstance(link.get("href"), str)
        }
        return cls(
            items=tuple(MediaItem.from_json(item) for item in media),
            count=_int(data.get("count")),
            page_index=_int(data.get("page_index")),
            page_size=_int(data.get("page_size")),
            links=links,
        )


@dataclass(frozen=True)
class DownloadResult:
    """What `MediaClient.download` did.

    `status` is the HTTP status: 200 (whole content written), 206 (a partial file completed),
    304 (not modified: nothing written) or 416 (resuming a file that was already complete).
    """

    status: int
    bytes_written: int
    size: int | None  # the content's total size, when the response says
    etag: str | None  # unquoted
    last_modified: datetime | None
    content_type: str | None

    @property
    def not_modified(self) -> bool:
        return self.status == 304

    @property
    def resumed(self) -> bool:
        return self.status in (206, 416)


def parse_timestamp(value: Any) -> datetime | None:
    """An aware UTC datetime from ISO 8601 text (naive text is taken as UTC), else None."""
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _json_object(value: Any) -> dict[str, Any]:
    """`store_meta_params` is a JSON-encoded object; tolerate an object, null or bad JSON."""
    if isinstance(value, dict):
        return value
    if isinstance(value, str):
        try:
            decoded = json.loads(value)
        except ValueError:
            return {}
        return decoded if isinstance(decoded, dict) else {}
    return {}
