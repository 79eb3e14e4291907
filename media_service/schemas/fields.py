"""Field types with the exact coercion rules of the API (SPEC §1, §3)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from marshmallow import ValidationError, fields

from media_service.http.dates import format_iso_millis, parse_iso8601

# C0 controls and DEL; TAB, LF and CR are tolerated only where free text is expected.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_CONTROL_STRICT = re.compile(r"[\x00-\x1f\x7f]")

_SURROGATE = re.compile("[\ud800-\udfff]")

MAX_JSON_INT = 2**31 - 1

UNENCODABLE = "Contains characters that cannot be encoded as UTF-8 (lone surrogates)."


def is_utf8_encodable(text: str) -> bool:
    """Tell whether `text` can be encoded as UTF-8, i.e. holds no lone surrogate.

    JSON's \\ud800 escapes (in a body or a token) decode to such strings; no backend can store
    them and no client can read them back, so they are refused where input enters.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_text(text: str) -> str:
    """`text` with every lone surrogate replaced by U+FFFD: safe to echo in an error or a log."""
    if is_utf8_encodable(text):
        return text
    return _SURROGATE.sub("\ufffd", text)


class StrictBoolean(fields.Boolean):
    """JSON booleans, or the form strings true/false/1/0 (nothing else: no 'yes', no 'on')."""

    truthy = {True, "true", "True", "TRUE", "1"}
    falsy = {False, "false", "False", "FALSE", "0"}

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> bool:
        if isinstance(value, float):
            raise self.make_error("invalid")
        return bool(super()._deserialize(value, attr, data, **kwargs))


class CountInteger(fields.Integer):
    """A non-negative int32 from a JSON integer or a decimal form string; null means 0."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=False, allow_none=True, **kwargs)

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> int:
        if value is None:
            return 0
        if isinstance(value, bool) or isinstance(value, float):
            raise ValidationError("Not a valid integer.")
        if isinstance(value, str):
            text = value.strip()
            if not text.isdigit() or not text.isascii() or len(text) > 12:
                raise ValidationError("Not a valid non-negative integer.")
            value = int(text)
        if not isinstance(value, int):
            raise ValidationError("Not a valid integer.")
        if value < 0 or value > MAX_JSON_INT:
            raise ValidationError(f"Must be between 0 and {MAX_JSON_INT}.")
        return value


class Text(fields.String):
    """A user string: bounded length, no control characters (TAB/LF/CR allowed if multiline)."""

    def __init__(self, *, max_length: int, multiline: bool = True, **kwargs: Any) -> None:
        kwargs.setdefault("allow_none", True)
        super().__init__(**kwargs)
        self.max_length = max_length
        self.pattern = _CONTROL if multiline else _CONTROL_STRICT

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str):
            raise ValidationError("Not a valid string.")
        if len(value) > self.max_length:
            raise ValidationError(f"Longer than {self.max_length} characters.")
        if self.pattern.search(value):
            raise ValidationError("Contains control characters.")
        if not is_utf8_encodable(value):
            raise ValidationError(UNENCODABLE)
        return value


class Url(fields.String):
    """A bounded string naming a URL to fetch (the fetcher checks the rest)."""

    def __init__(self, *, max_length: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.max_length = max_length

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str):
            raise ValidationError("Not a valid string.")
        if not 1 <= len(value) <= self.max_length:
            raise ValidationError(f"Length must be between 1 and {self.max_length}.")
        if not is_utf8_encodable(value):
            raise ValidationError(UNENCODABLE)
        return value


_TOKEN = r"[A-Za-z0-9!#$&^_.+-]{1,127}"
_MIME_RE = re.compile(
    rf"^(?P<type>{_TOKEN})/(?P<subtype>{_TOKEN})"
    rf"(?P<params>(?:\s*;\s*{_TOKEN}=(?:{_TOKEN}|\"[^\"\\\x00-\x1f\x7f]{{0,100}}\"))*)\s*$"
)


def normalise_mime_type(value: str) -> str | None:
    """Lower-case type/subtype (parameters kept), or None if it is not a valid media type."""
    match = _MIME_RE.match(value.strip()) if len(value) <= 255 else None
    if match is None:
        return None
    base = f"{match['type']}/{match['subtype']}".lower()
    params = match["params"].strip()
    return f"{base}{params}" if params else base


class MimeType(fields.String):
    """A media type like audio/wav, optionally with parameters; safe to put in a header."""

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str):
            raise ValidationError("Not a valid string.")
        normalised = normalise_mime_type(value)
        if normalised is None:
            raise ValidationError("Not a valid media type (expected type/subtype).")
        return normalised


class IsoDateTime(fields.Field[datetime]):
    """ISO 8601 in and out, UTC with milliseconds: 2020-01-01T14:00:00.000Z."""

    def _serialize(self, value: Any, attr: Any, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else format_iso_millis(value)

    def _deserialize(self, value: Any, attr: Any, data: Any, **kwargs: Any) -> datetime:
        parsed = parse_iso8601(value) if isinstance(value, str) and len(value) <= 64 else None
        if parsed is None:
            raise ValidationError("Not a valid ISO 8601 date-time (e.g. 2020-01-01T14:00:00.000Z).")
        return parsed
