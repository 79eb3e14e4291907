"""Backend-neutral encoding of MediaItem records, shared by the SQLite and MongoDB adapters.

A *record* is a flat mapping of MediaItem field names to plain values: times are timezone-aware
UTC datetimes truncated to milliseconds (what a BSON date holds), `store_meta_params` is JSON
text, `state` is its string value. Each adapter only adds its own last step (epoch milliseconds
for SQLite, `_id` for MongoDB).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime

from media_service.storage.interfaces import (
    UPDATABLE_FIELDS,
    AudioFacts,
    InvalidValue,
    ItemState,
    MediaItem,
    SearchQuery,
)

ITEM_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(MediaItem))
TIME_FIELDS: frozenset[str] = frozenset(
    {"time_created", "time_last_updated", "time_content_modified"}
)
# Times that may be absent: None is stored as null (and a missing value reads as None).
OPTIONAL_TIME_FIELDS: frozenset[str] = frozenset({"expires_at"})
INT_FIELDS: frozenset[str] = frozenset({"max_downloads_allowed", "times_downloaded", "media_size"})

# The blob key, stored beside the id since the first release. It always equals the id (the bytes
# are stored under the item's id), so MediaItem has no such field: it is written from the id, so
# that the column (NOT NULL and unique in both databases) stays filled and earlier releases can
# still read new documents, and only the sweeper's referenced_keys reads it back.
STORE_KEY = "store_key"
STORED_FIELDS: tuple[str, ...] = (*ITEM_FIELDS, STORE_KEY)

# What completing an upload may set besides the state: everything but the item's identity and
# owner, which are fixed when the PENDING document is written.
READY_FIELDS: frozenset[str] = frozenset(ITEM_FIELDS) - {
    "id",
    "account_id",
    "application_id",
    "state",
}

# Both databases store signed 64-bit integers; a larger value must fail here as a ValueError,
# not as an OverflowError from deep inside a driver.
_INT64_MAX = 2**63 - 1
_MAX_PAGE = 10_000


def require_id(value: object, name: str = "item_id") -> str:
    """Return `value` if it is a string; anything else could become a query operator."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str, got {type(value).__name__}")
    return require_text(value, name)


def require_text(value: str, name: str) -> str:
    """Return `value` if both databases can store it: UTF-8 encodable (no lone surrogate).

    Each driver would fail with its own UnicodeEncodeError deep inside; this fails first, the
    same way for both, as the ports' InvalidValue. The value itself is not quoted.
    """
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidValue(f"{name} is not valid Unicode text") from None
    return value


def utc_ms(value: object, name: str = "time") -> datetime:
    """Return the aware datetime `value` in UTC, truncated to milliseconds."""
    if not isinstance(value, datetime):
        raise TypeError(f"{name} must be a datetime, got {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        # A naive time would be read as local time by one driver and as UTC by another.
        raise ValueError(f"{name} must be timezone-aware")
    value = value.astimezone(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


def as_utc(value: datetime) -> datetime:
    """Return a datetime read back from a database as aware UTC (naive ones are UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def encode_field(name: str, value: object) -> object:
    """Validate one MediaItem field value and return its record form."""
    if name in TIME_FIELDS:
        return utc_ms(value, name)
    if name in OPTIONAL_TIME_FIELDS:
        return None if value is None else utc_ms(value, name)
    if name == "store_meta_params":
        if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()
        ):
            raise TypeError("store_meta_params must map str to str")
        # JSON text rather than a sub-document: keys never become database field names.
        return json.dumps(dict(value), sort_keys=True, separators=(",", ":"))
    if name == "state":
        return ItemState(str(value)).value
    if name == "audio":
        return audio_record(value)
    if name in ("public", "audio_examined"):
        if not isinstance(value, bool):
            raise TypeError("public must be a bool")
        return value
    if name in INT_FIELDS:
        if name == "max_downloads_allowed" and value is None:
            return 0  # null means unlimited, as 0 does
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be an int")
        if not 0 <= value <= _INT64_MAX:
            raise InvalidValue(f"{name} out of range")
        return value
    if value is None:
        return None
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a str or None")
    return require_text(value, name)


def audio_record(value: object) -> dict[str, object] | None:
    """An AudioFacts as a plain mapping (a sub-document in MongoDB, JSON text in SQLite)."""
    if value is None:
        return None
    if not isinstance(value, AudioFacts):
        raise TypeError("audio must be AudioFacts or None")
    return {f.name: getattr(value, f.name) for f in dataclasses.fields(AudioFacts)}


def audio_from_record(value: object) -> AudioFacts | None:
    """Decode a stored audio mapping; anything malformed reads as no facts."""
    if not isinstance(value, Mapping):
        return None
    try:
        return AudioFacts(
            duration_ms=int(value["duration_ms"]),
            sample_rate=int(value["sample_rate"]),
            channels=int(value["channels"]),
            codec=str(value["codec"]),
            bit_rate=None if value.get("bit_rate") is None else int(value["bit_rate"]),
        )
    except (KeyError, TypeError, ValueError):
        return None


def item_record(item: MediaItem) -> dict[str, object]:
    """Encode a whole item, with its STORED_FIELDS."""
    require_id(item.id, "id")
    record = {name: encode_field(name, getattr(item, name)) for name in ITEM_FIELDS}
    record[STORE_KEY] = item.id
    return record


def change_record(changes: Mapping[str, object], allowed: frozenset[str]) -> dict[str, object]:
    """Encode a partial update, refusing any key outside `allowed` (defence in depth)."""
    unknown = sorted(str(key) for key in changes if key not in allowed)
    if unknown:
        raise ValueError(f"fields not allowed in this update: {', '.join(unknown)}")
    return {name: encode_field(name, value) for name, value in changes.items()}


def item_from_record(record: Mapping[str, object]) -> MediaItem:
    """Decode a record (times already datetimes) into a MediaItem."""
    values = {name: record.get(name) for name in ITEM_FIELDS}
    for name in TIME_FIELDS:
        values[name] = as_utc(values[name])  # type: ignore[arg-type]
    for name in OPTIONAL_TIME_FIELDS:  # documents from before the field have none: never
        if values[name] is not None:
            values[name] = as_utc(values[name])  # type: ignore[arg-type]
    values["store_meta_params"] = json.loads(str(values["store_meta_params"]))
    values["state"] = ItemState(str(values["state"]))
    values["public"] = bool(values["public"])
    # Documents from before audio facts have neither field: never examined, no facts.
    values["audio"] = audio_from_record(values["audio"])
    values["audio_examined"] = bool(values["audio_examined"])
    return MediaItem(**values)  # type: ignore[arg-type]


def check_query(query: SearchQuery) -> tuple[datetime, datetime | None]:
    """Validate a search's paging and return its bounds at millisecond precision."""
    require_id(query.scope.account_id, "account_id")
    if query.scope.application_id is not None:
        require_id(query.scope.application_id, "application_id")
    if not 0 <= query.offset <= _INT64_MAX // 2:
        raise ValueError("offset out of range")
    if not 0 <= query.limit <= _MAX_PAGE:
        raise ValueError("limit out of range")
    start = utc_ms(query.start_time, "start_time")
    end = None if query.end_time is None else utc_ms(query.end_time, "end_time")
    return start, end


def query_now(query: SearchQuery) -> datetime:
    """The instant a search judges expiry at, at millisecond precision."""
    return utc_ms(query.now if query.now is not None else datetime.now(UTC), "now")


def unique_keys(keys: Iterable[str]) -> list[str]:
    """The public keys in order, each once."""
    result: list[str] = []
    for key in keys:
        require_id(key, "public_key")
        if key not in result:
            result.append(key)
    return result


class StateTransitions:
    """mark_ready, update and mark_deleting, for repositories that implement `_update_one`.

    Each transition is one conditional update on the item's current state, so two requests
    racing (a delete and an update, say) can never both win.
    """

    def _update_one(
        self,
        item_id: str,
        from_state: str,
        values: Mapping[str, object],
        *,
        live_at: datetime | None = None,
        expired_by: datetime | None = None,
    ) -> MediaItem | None:
        """Set `values` on the item if it is in `from_state` (and, when given, not expired at
        `live_at` / expired by `expired_by`); return it as updated."""
        raise NotImplementedError

    def mark_ready(self, item_id: str, changes: dict[str, object]) -> MediaItem | None:
        values = change_record(changes, READY_FIELDS) | {"state": "ready"}
        return self._update_one(item_id, "pending", values)

    def update(self, item_id: str, changes: dict[str, object], now: datetime) -> MediaItem | None:
        values = change_record(changes, UPDATABLE_FIELDS)
        at = values["time_last_updated"] = utc_ms(now, "now")
        return self._update_one(item_id, "ready", values, live_at=at)

    def mark_deleting(
        self, item_id: str, *, expired_by: datetime | None = None
    ) -> MediaItem | None:
        by = None if expired_by is None else utc_ms(expired_by, "expired_by")
        return self._update_one(item_id, "ready", {"state": "deleting"}, expired_by=by)
