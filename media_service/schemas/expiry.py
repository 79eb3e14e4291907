"""When an item stops existing: `ttl` (seconds from now) or `expires_at` (an instant).

One parser for every way an item is made or changed: the upload's form fields and the update's
body go through the marshmallow fields below, and anything else (a resumable upload's
metadata, say) calls `parse_expiry` on its own mapping of raw values. Either way the result is
an `Expiry` request, which MediaService turns into an instant with its own clock
(`MediaService.expiry_time`), so that "in the future" is judged by the same clock as expiry.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from marshmallow import ValidationError, fields

from media_service.http.dates import parse_iso8601
from media_service.settings import MAX_TTL_SECONDS

TTL_MIN_SECONDS = 1
TTL_MAX_SECONDS = MAX_TTL_SECONDS  # MEDIA_DEFAULT_TTL has the same bound
EXPIRY_FIELDS = ("ttl", "expires_at")
BOTH_GIVEN = "Give either 'ttl' or 'expires_at', not both."


@dataclass(frozen=True, slots=True)
class Expiry:
    """What a request asked for: a ttl, an instant, or neither (no expiry at all)."""

    ttl_seconds: int | None = None
    at: datetime | None = None

    @property
    def never(self) -> bool:
        return self.ttl_seconds is None and self.at is None


def _blank(value: object) -> bool:
    """JSON null, or an empty form value: "no expiry"."""
    return value is None or (isinstance(value, str) and not value.strip())


def parse_ttl(value: object) -> int | None:
    """Seconds from a JSON integer or a decimal string; None for null or an empty value."""
    if _blank(value):
        return None
    if isinstance(value, str):
        text = value.strip()
        # isdecimal() also takes other scripts' digits; int() would accept "1_000" and "+5".
        if not (text.isascii() and text.isdigit()) or len(text) > 12:
            raise ValidationError("Not a whole number of seconds.")
        value = int(text)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValidationError("Not a whole number of seconds.")
    if not TTL_MIN_SECONDS <= value <= TTL_MAX_SECONDS:
        raise ValidationError(f"Must be between {TTL_MIN_SECONDS} and {TTL_MAX_SECONDS} seconds.")
    return value


def parse_expires_at(value: object) -> datetime | None:
    """An ISO 8601 instant (UTC when it names no offset); None for null or an empty value."""
    if _blank(value):
        return None
    parsed = parse_iso8601(value) if isinstance(value, str) else None
    if parsed is None:
        raise ValidationError("Not a valid ISO 8601 date-time (e.g. 2030-01-01T14:00:00.000Z).")
    return parsed


def parse_expiry(values: Mapping[str, object]) -> Expiry | None:
    """The Expiry that `values` ask for, or None when they hold neither field.

    Raises ValidationError with one message per bad field name; giving both is an error on
    both, whatever their values. An empty value or null asks for no expiry.
    """
    given = [name for name in EXPIRY_FIELDS if name in values]
    if not given:
        return None
    if len(given) == 2:
        raise ValidationError({name: [BOTH_GIVEN] for name in EXPIRY_FIELDS})
    name = given[0]
    try:
        if name == "ttl":
            return Expiry(ttl_seconds=parse_ttl(values[name]))
        return Expiry(at=parse_expires_at(values[name]))
    except ValidationError as error:
        raise ValidationError({name: error.messages}) from None


class TtlField(fields.Field[int | None]):
    """`ttl`: whole seconds until the item expires; null or empty: no expiry."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("allow_none", True)
        kwargs.setdefault(
            "metadata",
            {
                "type": "integer",
                "minimum": TTL_MIN_SECONDS,
                "maximum": TTL_MAX_SECONDS,
                "nullable": True,
                "description": "Seconds until the item expires; null or empty: never.",
            },
        )
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> int | None:
        return parse_ttl(value)


class ExpiresAtField(fields.Field[datetime | None]):
    """`expires_at`: the instant the item expires (ISO 8601); null or empty: no expiry."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("allow_none", True)
        kwargs.setdefault(
            "metadata",
            {
                "type": "string",
                "format": "date-time",
                "nullable": True,
                "description": "When the item expires (in the future); null or empty: never.",
            },
        )
        super().__init__(**kwargs)

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> datetime | None:
        return parse_expires_at(value)
