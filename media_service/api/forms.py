"""Small form bodies (updates, urlencoded uploads), decoded strictly, as the upload path does.

Werkzeug's `request.form` replaces bytes that are not UTF-8 with U+FFFD and drops pairs it
cannot read; these helpers refuse them with a 400 naming the field instead.
"""

from __future__ import annotations

import io

from flask import request

from media_service.errors import BadRequest, ValidationFailed
from media_service.http.forms import FormDecodeError, parse_urlencoded
from media_service.http.multipart import FilePart, MultipartStream

Pairs = list[tuple[str, str]]


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
