"""Schemas of the media resource: the item representation, uploads, updates and search."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from marshmallow import (
    EXCLUDE,
    RAISE,
    Schema,
    ValidationError,
    fields,
    post_load,
    pre_load,
    validate,
    validates_schema,
)

from media_service.http.dates import format_iso_millis
from media_service.schemas.expiry import (
    BOTH_GIVEN,
    EXPIRY_FIELDS,
    ExpiresAtField,
    Expiry,
    TtlField,
)
from media_service.schemas.fields import (
    UNENCODABLE,
    CountInteger,
    IsoDateTime,
    MimeType,
    StrictBoolean,
    Text,
    Url,
    is_utf8_encodable,
)
from media_service.storage.interfaces import AudioFacts, MediaItem

# Bounds on user strings: generous for metadata (often JSON), tight for short labels.
METADATA_MAX = 16 * 1024
TITLE_MAX = 1024
DESCRIPTION_MAX = 8 * 1024
FILENAME_MAX = 255
URL_MAX = 2048


class AudioFactsSchema(Schema):
    """What the service read from an audio item's bytes (read-only)."""

    duration_ms = fields.Integer(metadata={"example": 1500})
    sample_rate = fields.Integer(metadata={"example": 8000})
    channels = fields.Integer(metadata={"example": 1})
    codec = fields.String(
        metadata={"enum": ["pcm", "mp3", "vorbis", "opus", "flac", "aac"], "example": "pcm"}
    )
    bit_rate = fields.Integer(allow_none=True, metadata={"example": 128000})


_UNSAFE_NAME = re.compile(r"[\x00-\x1f\x7f/\\]")


def file_name_problem(name: str) -> str | None:
    """Why `name` is not a plain file name, or None if it is."""
    if not name.strip():
        return "The file name is blank."
    if len(name) > FILENAME_MAX:
        return f"The file name is longer than {FILENAME_MAX} characters."
    if _UNSAFE_NAME.search(name):
        return "The file name contains a path separator or control characters."
    if name in (".", ".."):
        return "The file name is not a file name."
    if not is_utf8_encodable(name):
        return UNENCODABLE
    return None


class MediaItemSchema(Schema):
    """The JSON representation of a media item (every field always present)."""

    id = fields.String(metadata={"example": "aaaaaaaa-bbbb-4ccc-8ddd-0123456789ab"})
    original_file_name = fields.String(metadata={"example": "test.wav"})
    mime_type = fields.String(metadata={"example": "audio/wav"})
    account_id = fields.String(metadata={"example": "abcd1234"})
    application_id = fields.String(allow_none=True)
    store_id = fields.String(metadata={"example": "s3"})
    store_meta_params = fields.Method("_store_meta_params", metadata={"type": "string"})
    max_downloads_allowed = fields.Integer()
    times_downloaded = fields.Integer()
    etag = fields.String(metadata={"example": "6f5902ac237024bdd0c176cb93063dc4"})
    media_size = fields.Integer()
    time_created = IsoDateTime(metadata={"type": "string", "format": "date-time"})
    time_last_updated = IsoDateTime(metadata={"type": "string", "format": "date-time"})
    # Null: never. From this instant on the item is gone (404 everywhere, not in searches).
    expires_at = IsoDateTime(
        allow_none=True, metadata={"type": "string", "format": "date-time", "nullable": True}
    )
    public = fields.Boolean()
    # The same value under the older name (SPEC §1); a Function field, since two fields may not
    # share one attribute.
    public_item = fields.Function(lambda item: item.public, metadata={"type": "boolean"})
    metadata_primary = fields.String(allow_none=True)
    metadata_secondary = fields.String(allow_none=True)
    title = fields.String(allow_none=True)
    description = fields.String(allow_none=True)
    source_url = fields.String(allow_none=True)
    # Read-only: null when the bytes are not audio the service reads (or not examined yet).
    audio = fields.Nested(AudioFactsSchema, allow_none=True)

    def _store_meta_params(self, item: MediaItem) -> str:
        return store_meta_params_text(item.store_meta_params)


def store_meta_params_text(params: Mapping[str, Any]) -> str:
    """`store_meta_params` as the API sends it: compact JSON text with sorted keys (SPEC §1)."""
    return json.dumps(params, separators=(",", ":"), sort_keys=True)


def item_document(item: MediaItem) -> dict[str, Any]:
    """The JSON of one item: exactly `MediaItemSchema().dump(item)`, field for field, in order.

    The one serialiser every endpoint uses (the schema documents it, and
    tests/api/test_info_update.py holds the two equal); written out because the schema's
    generic dump cost as much as the rest of GET /info.
    """
    return {
        "id": _text(item.id),
        "original_file_name": _text(item.original_file_name),
        "mime_type": _text(item.mime_type),
        "account_id": _text(item.account_id),
        "application_id": _text(item.application_id),
        "store_id": _text(item.store_id),
        "store_meta_params": store_meta_params_text(item.store_meta_params),
        "max_downloads_allowed": _integer(item.max_downloads_allowed),
        "times_downloaded": _integer(item.times_downloaded),
        "etag": _text(item.etag),
        "media_size": _integer(item.media_size),
        "time_created": _iso(item.time_created),
        "time_last_updated": _iso(item.time_last_updated),
        "expires_at": _iso(item.expires_at),
        "public": bool(item.public),  # fields.Boolean of a bool
        "public_item": item.public,
        "metadata_primary": _text(item.metadata_primary),
        "metadata_secondary": _text(item.metadata_secondary),
        "title": _text(item.title),
        "description": _text(item.description),
        "source_url": _text(item.source_url),
        "audio": _audio(item.audio),
    }


def _audio(audio: AudioFacts | None) -> dict[str, Any] | None:  # fields.Nested(AudioFactsSchema)
    if audio is None:
        return None
    return {
        "duration_ms": audio.duration_ms,
        "sample_rate": audio.sample_rate,
        "channels": audio.channels,
        "codec": audio.codec,
        "bit_rate": audio.bit_rate,
    }


def _text(value: Any) -> str | None:  # fields.String
    return None if value is None else str(value)


def _integer(value: Any) -> int | None:  # fields.Integer
    return None if value is None else int(value)


def _iso(value: datetime | None) -> str | None:  # IsoDateTime
    return None if value is None else format_iso_millis(value)


class _UpdatableFieldsSchema(Schema):
    """The fields a client may set at upload and change with PUT."""

    public = StrictBoolean(allow_none=False)
    public_item = StrictBoolean(allow_none=False)
    metadata_primary = Text(max_length=METADATA_MAX)
    metadata_secondary = Text(max_length=METADATA_MAX)
    title = Text(max_length=TITLE_MAX, multiline=False)
    description = Text(max_length=DESCRIPTION_MAX)
    mime_type = MimeType()
    max_downloads_allowed = CountInteger()
    ttl = TtlField()
    expires_at = ExpiresAtField()

    @validates_schema
    def _public_aliases_agree(self, data: dict[str, Any], **kwargs: Any) -> None:
        if "public" in data and "public_item" in data and data["public"] != data["public_item"]:
            raise ValidationError("'public' and 'public_item' differ.", "public_item")

    @validates_schema(pass_original=True, skip_on_field_errors=False)
    def _one_expiry(self, data: dict[str, Any], original: Any, **kwargs: Any) -> None:
        # Judged on the body as sent, so that both are named even when one is also invalid.
        if isinstance(original, dict) and all(name in original for name in EXPIRY_FIELDS):
            raise ValidationError({name: [BOTH_GIVEN] for name in EXPIRY_FIELDS})

    @post_load
    def _merge_public_alias(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if "public_item" in data:
            data["public"] = data.pop("public_item")
        return data

    @post_load
    def _expiry_request(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        # One `expiry` value for the service, which resolves it with its own clock.
        if any(name in data for name in EXPIRY_FIELDS):
            data["expiry"] = Expiry(
                ttl_seconds=data.pop("ttl", None), at=data.pop("expires_at", None)
            )
        return data


class UpdateSchema(_UpdatableFieldsSchema):
    """Body of PUT /v3/media/{id}/info: unknown or read-only fields are rejected."""

    class Meta:
        unknown = RAISE

    @validates_schema(pass_original=True)
    def _not_empty(self, data: dict[str, Any], original: Any, **kwargs: Any) -> None:
        if isinstance(original, dict) and not original:
            raise ValidationError("An update needs at least one field.", "body")


# The form fields an upload's file may come in (any other file part is refused).
FILE_FIELDS = frozenset({"filedata", "file"})


class UploadFieldsSchema(_UpdatableFieldsSchema):
    """The non-file fields of a multipart upload."""

    class Meta:
        unknown = RAISE

    filename = Text(max_length=FILENAME_MAX, multiline=False)
    info = Text(max_length=METADATA_MAX)
    url = Url(max_length=URL_MAX)

    @post_load
    def _info_is_primary_metadata(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        # The reference stores `info` as the item's primary metadata unless that is given too.
        info = data.pop("info", None)
        if info is not None and data.get("metadata_primary") is None:
            data["metadata_primary"] = info
        return data


def load_upload_fields(fields: Mapping[str, str], problems: dict[str, list[str]]) -> dict[str, Any]:
    """`fields` loaded by UploadFieldsSchema and held to the file-name rules, however an upload
    names them (a multipart or urlencoded form, tus's Upload-Metadata). What is wrong is added to
    `problems`, for the caller to raise with its own findings; what loaded is returned."""
    values: dict[str, Any] = {}
    try:
        values = UploadFieldsSchema().load(fields)
    except ValidationError as error:
        if isinstance(error.messages, dict):
            for name, reasons in error.messages.items():
                problems.setdefault(str(name), []).extend(
                    reasons if isinstance(reasons, list) else [str(reasons)]
                )
    name_problem = file_name_problem(fields["filename"]) if "filename" in fields else None
    if name_problem:
        problems.setdefault("filename", []).append(name_problem)
    return values


class SearchQuerySchema(Schema):
    """Query of GET /v3/media: unknown parameters (e.g. timestamp, sig) are ignored."""

    class Meta:
        unknown = EXCLUDE

    order = fields.String(
        load_default="descending", validate=validate.OneOf(["ascending", "descending"])
    )
    page_index = fields.Integer(
        load_default=0, strict=False, validate=validate.Range(min=0, max=1_000_000)
    )
    page_size = fields.Integer(
        load_default=20, strict=False, validate=validate.Range(min=1, max=100)
    )
    start_time = IsoDateTime(metadata={"type": "string", "format": "date-time"})
    end_time = IsoDateTime(metadata={"type": "string", "format": "date-time"})

    @pre_load
    def _reject_repeats(self, data: Any, **kwargs: Any) -> Any:
        # webargs hands a MultiDict: a repeated parameter is ambiguous, so say which.
        getlist = getattr(data, "getlist", None)
        if getlist is not None:
            repeated = [name for name in self.fields if len(getlist(name)) > 1]
            if repeated:
                raise ValidationError({name: ["Given more than once."] for name in repeated})
        return data

    @validates_schema
    def _window(self, data: dict[str, Any], **kwargs: Any) -> None:
        start, end = data.get("start_time"), data.get("end_time")
        if start is not None and end is not None and end < start:
            raise ValidationError("end_time is before start_time.", "end_time")


class LinkSchema(Schema):
    href = fields.String()


class LinksSchema(Schema):
    # The view's dict says `self`; the field keeps a Python-friendly name, so map both ways
    # (with data_key alone the link was silently dropped from every search response).
    self_ = fields.Nested(LinkSchema, data_key="self", attribute="self")
    first = fields.Nested(LinkSchema)
    last = fields.Nested(LinkSchema)
    next = fields.Nested(LinkSchema)
    prev = fields.Nested(LinkSchema)


class EmbeddedMediaSchema(Schema):
    media = fields.List(fields.Nested(MediaItemSchema))


class SearchResultSchema(Schema):
    """HAL page of search results."""

    page_size = fields.Integer()
    page_index = fields.Integer()
    count = fields.Integer()
    _links = fields.Nested(LinksSchema)
    _embedded = fields.Nested(EmbeddedMediaSchema)


class ProblemSchema(Schema):
    """RFC 7807 problem details (application/problem+json)."""

    type = fields.String()
    title = fields.String()
    status = fields.Integer()
    detail = fields.String()
    instance = fields.String(metadata={"description": "The request id (also X-Request-Id)."})
    invalid_parameters = fields.List(
        fields.Dict(keys=fields.String(), values=fields.String()),
        metadata={"description": "One entry per bad field: {name, reason}."},
    )
