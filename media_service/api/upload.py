"""The upload request's HTTP side: which body it is, how large, how fast; then the service.

A multipart body is parsed as it streams (http/multipart.py) behind a size limit and a rate floor,
and its parts are handed to MediaService.upload_form, which stages the file part as it arrives,
checks the fields once all are read, publishes, and abandons what it staged if anything fails
(service/uploads.py). A urlencoded body is small: read whole, strictly decoded, then fetched.
"""

from __future__ import annotations

from flask import request

from media_service.api.forms import bounded_body, given_more_than_once, urlencoded_pairs
from media_service.auth import Principal
from media_service.context import app_state, current_media_service
from media_service.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from media_service.http.body import LimitedInput, MinimumRateInput
from media_service.http.multipart import MultipartStream
from media_service.schemas.media import FILE_FIELDS
from media_service.storage.interfaces import MediaItem

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
    return service.upload_form(principal, form.parts())


def _receive_url_form(principal: Principal) -> MediaItem:
    """A urlencoded upload (what `curl -d url=...` sends): fetch the url, same fields as multipart.

    Without a `url` it is not an upload we can take (a file cannot be sent urlencoded): 415,
    as for any other type that is not multipart.
    """
    body = bounded_body(
        MAX_URLENCODED_BODY, f"A urlencoded upload is limited to {MAX_URLENCODED_BODY} bytes."
    )
    pairs = urlencoded_pairs(body)
    fields = dict(pairs)
    if "url" not in fields:
        raise UnsupportedMediaType(NOT_AN_UPLOAD)
    problems = given_more_than_once(pairs)
    for name in FILE_FIELDS & fields.keys():
        problems[name] = ["A file cannot be sent urlencoded; use multipart/form-data."]
        del fields[name]  # reported once, not again as an unknown field
    return current_media_service().upload_url_form(principal, fields, problems)
