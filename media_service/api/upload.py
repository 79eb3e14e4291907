"""The upload request: stream a multipart body (or fetch a URL) into a new media item.

The file part goes straight from the socket to the blob store through a hashing reader; form
fields may come before or after it, so they are validated once the body has been read, and a
staged upload whose fields turn out invalid is removed again before answering 400.
"""

from __future__ import annotations

from typing import Any

from flask import request
from marshmallow import ValidationError

from media_service.api.forms import given_more_than_once, urlencoded_pairs
from media_service.auth import Principal
from media_service.context import app_state, current_media_service
from media_service.errors import (
    BadRequest,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
)
from media_service.http.body import LimitedInput, MinimumRateInput
from media_service.http.multipart import FilePart, FormField, MultipartStream
from media_service.schemas.media import UploadFieldsSchema, file_name_problem
from media_service.service.media import StagedUpload
from media_service.storage.interfaces import MediaItem

FILE_FIELDS = frozenset({"filedata", "file"})
URLENCODED = "application/x-www-form-urlencoded"
# A urlencoded upload carries no file, only a url and the small fields (like PUT /info's body).
MAX_URLENCODED_BODY = 256 * 1024
NOT_AN_UPLOAD = (
    "An upload must be multipart/form-data, or application/x-www-form-urlencoded with a 'url' "
    "to fetch."
)
# Room for the multipart framing and the small fields around the file.
FORM_OVERHEAD = 2 * 1024 * 1024


def receive_upload(principal: Principal) -> MediaItem:
    """Read the upload request and return the new, visible item."""
    if request.mimetype == URLENCODED:
        return _receive_url_form(principal)
    if request.mimetype != "multipart/form-data":
        raise UnsupportedMediaType(NOT_AN_UPLOAD)
    boundary = request.mimetype_params.get("boundary", "")
    if not boundary or len(boundary) > 200:
        raise BadRequest("The multipart Content-Type has no valid boundary.")
    settings = app_state().settings
    max_bytes = settings.max_upload_bytes
    limit = max_bytes + FORM_OVERHEAD
    # Refuse before reading a byte when the client has announced the size.
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"The upload is larger than the maximum of {max_bytes} bytes.")
    service = current_media_service()
    service.admit_upload(request.content_length)
    paced = MinimumRateInput.for_environ(
        request.stream, request.environ, settings.upload_min_rate, settings.upload_rate_window
    )
    body = LimitedInput(paced, limit)
    form = MultipartStream(body, boundary.encode("latin-1"), file_field_names=FILE_FIELDS)

    staged: StagedUpload | None = None
    fields: dict[str, str] = {}
    problems: dict[str, list[str]] = {}
    try:
        for part in form.parts():
            if isinstance(part, FormField):
                if part.name in fields:
                    problems[part.name] = ["Given more than once."]
                fields[part.name] = part.value
                continue
            if part.name not in FILE_FIELDS:
                problems[part.name or "file"] = ["Unknown file field; send the file as 'filedata'."]
            elif staged is not None:
                problems[part.name] = ["Only one file can be uploaded per request."]
            else:
                file_name = _checked_file_name(part)
                staged = service.stage_upload(
                    principal,
                    part.reader,
                    file_name=file_name,
                    part_content_type=part.content_type,
                )
        values = _validate_fields(fields, problems, has_file=staged is not None)
        if staged is None:
            staged = service.stage_from_url(principal, values["url"])
        values.pop("url", None)
        return service.publish_upload(staged, values)
    except BaseException:
        if staged is not None:
            service.abandon_upload(staged)
        raise


def _receive_url_form(principal: Principal) -> MediaItem:
    """A urlencoded upload (what `curl -d url=...` sends): fetch the url, same fields as multipart.

    Without a `url` it is not an upload we can take (a file cannot be sent urlencoded): 415,
    as for any other type that is not multipart.
    """
    if request.content_length is not None and request.content_length > MAX_URLENCODED_BODY:
        raise PayloadTooLarge(f"A urlencoded upload is limited to {MAX_URLENCODED_BODY} bytes.")
    # Without Content-Length (chunked) Werkzeug stops quietly at the limit: read one byte more
    # than allowed so that an oversize body is refused rather than parsed cut short.
    request.max_content_length = MAX_URLENCODED_BODY + 1
    body = request.get_data(cache=True)
    if len(body) > MAX_URLENCODED_BODY:
        raise PayloadTooLarge(f"A urlencoded upload is limited to {MAX_URLENCODED_BODY} bytes.")
    pairs = urlencoded_pairs(body)
    fields = dict(pairs)
    if "url" not in fields:
        raise UnsupportedMediaType(NOT_AN_UPLOAD)
    problems = given_more_than_once(pairs)
    for name in FILE_FIELDS & fields.keys():
        problems[name] = ["A file cannot be sent urlencoded; use multipart/form-data."]
        del fields[name]  # reported once, not again as an unknown field
    values = _validate_fields(fields, problems, has_file=False)
    service = current_media_service()
    service.admit_upload(None)  # the fetched bytes are staged like a file's
    staged = service.stage_from_url(principal, values.pop("url"))
    return service.publish_upload(staged, values)  # abandons the upload if it fails


def _checked_file_name(part: FilePart) -> str | None:
    if part.filename is None:
        return None
    problem = file_name_problem(part.filename)
    if problem:
        raise ValidationFailed(
            f"The file name of '{part.name}' is not acceptable: {problem}",
            invalid_parameters=[{"name": part.name, "reason": problem}],
        )
    return part.filename


def _validate_fields(
    fields: dict[str, str], problems: dict[str, list[str]], *, has_file: bool
) -> dict[str, Any]:
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
    if has_file and "url" in fields:
        problems.setdefault("url", []).append("Send either a file or a url, not both.")
    if not has_file and "url" not in fields:
        problems.setdefault("filedata", []).append(
            "Missing: send the file as 'filedata' or a 'url'."
        )
    if problems:
        raise ValidationFailed.from_messages(problems)
    return values
