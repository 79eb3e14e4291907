"""Small bodies (updates, urlencoded uploads): bounded, and decoded strictly, as the upload path
decodes its own fields.

Werkzeug's `request.form` replaces bytes that are not UTF-8 with U+FFFD and drops pairs it
cannot read; these helpers refuse them with a 400 naming the field instead.
"""

from __future__ import annotations

import io
import json
from typing import Any

from flask import request

from media_service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from media_service.http.forms import FormDecodeError, parse_urlencoded
from media_service.http.multipart import FilePart, MultipartStream

Pairs = list[tuple[str, str]]
FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data")


def bounded_body(limit: int, too_large: str) -> bytes:
    """The whole request body; 413 (`too_large`) past `limit` bytes, announced or not."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(too_large)
    # Without Content-Length (chunked), Werkzeug stops quietly at the limit: read one byte more
    # than allowed so an oversize body is refused instead of being parsed cut short.
    request.max_content_length = limit + 1
    request.max_form_memory_size = limit  # should anything read request.form, from this copy
    body = request.get_data(cache=True)
    if len(body) > limit:
        raise PayloadTooLarge(too_large)
    return body


def json_or_form_fields(limit: int) -> dict[str, Any]:
    """The request body as a dict: a JSON object, or the fields of a urlencoded or multipart
    form (strictly decoded; a repeated field or a file part is 400). No body and no type is {};
    413 past `limit` bytes; 415 for any other type."""
    raw = bounded_body(limit, f"The request body is limited to {limit} bytes.")
    mimetype = request.mimetype
    if mimetype == "application/json" or mimetype.endswith("+json"):
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise BadRequest("The request body is not valid JSON.") from None
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object.")
        return body
    if mimetype in FORM_TYPES:
        if mimetype == "multipart/form-data":
            pairs, files = multipart_fields(raw)
            if files:
                raise ValidationFailed.from_messages(
                    {name: ["This request takes no files."] for name in files}
                )
        else:
            pairs = urlencoded_pairs(raw)
        repeated = given_more_than_once(pairs)
        if repeated:
            raise ValidationFailed.from_messages(repeated)
        return dict(pairs)
    if not mimetype and not raw:
        return {}
    raise UnsupportedMediaType(
        "Send the body as application/json, application/x-www-form-urlencoded "
        "or multipart/form-data."
    )


def urlencoded_pairs(body: bytes) -> Pairs:
    """The body's (name, value) pairs; 400 when it is not UTF-8 text."""
    try:
        return parse_urlencoded(body)
    except FormDecodeError as error:
        if error.name is None:
            raise BadRequest(str(error)) from None
        raise ValidationFailed.from_messages({error.name: [str(error)]}) from None


def multipart_fields(body: bytes) -> tuple[Pairs, list[str]]:
    """The body's fields, and the names of its file parts (the caller decides about those)."""
    boundary = request.mimetype_params.get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise BadRequest("The multipart Content-Type has no valid boundary.")
    form = MultipartStream(
        io.BytesIO(body), boundary.encode("latin-1"), file_field_names=frozenset()
    )
    fields: Pairs = []
    files: list[str] = []
    for part in form.parts():
        if isinstance(part, FilePart):
            files.append(part.name or "file")
        else:
            fields.append((part.name, part.value))
    return fields, files


def given_more_than_once(pairs: Pairs) -> dict[str, list[str]]:
    names = [name for name, _ in pairs]
    return {name: ["Given more than once."] for name in names if names.count(name) > 1}
