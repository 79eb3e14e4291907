"""Resumable uploads, tus 1.0.0 (core, creation, termination, expiration) at /v3/media/uploads.

The protocol's headers are parsed and written here; the rules live in service/resumable.py.
Every answer, errors included, carries `Tus-Resumable: 1.0.0`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import uuid

from flask import Blueprint, Flask, Response, current_app, request

from media_service.api.auth import auth_required
from media_service.api.common import MEDIA_PREFIX, info_url, public_base_url
from media_service.auth import Principal
from media_service.context import app_state
from media_service.errors import (
    BadRequest,
    NotFound,
    TusVersionUnsupported,
    UnsupportedMediaType,
    ValidationFailed,
)
from media_service.http.body import MinimumRateInput
from media_service.http.dates import format_http_date
from media_service.schemas.fields import normalise_mime_type
from media_service.schemas.media import UploadFieldsSchema, load_upload_fields
from media_service.service.resumable import CHECKSUM_ALGORITHMS, ResumableService
from media_service.storage.resumable import ResumableUpload, resumable_ports

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,termination,expiration,checksum"
OFFSET_TYPE = "application/offset+octet-stream"
EXTENSION_KEY = "media_service.resumable"
UPLOADS_PATH = f"{MEDIA_PREFIX}/uploads"
MAX_METADATA_HEADER = 64 * 1024
# Upload-Metadata keys a media item takes; other keys (clients add their own, e.g. Uppy's
# `relativePath`) are ignored, as unknown query parameters are. `url` is not an upload of bytes.
METADATA_KEYS = (frozenset(UploadFieldsSchema().fields) - {"url"}) | {"filetype"}
_KEY = re.compile(r"[!-+\--~]{1,128}")  # visible ASCII without space and comma
_DIGITS = re.compile(r"[0-9]{1,19}")

blp = Blueprint("tus", __name__, url_prefix=UPLOADS_PATH)


def install_resumable(app: Flask) -> None:
    """Wire the resumable service beside the app's MediaService and register the endpoints."""
    state = app.extensions["media_service"]
    app.extensions[EXTENSION_KEY] = ResumableService(
        state.service, resumable_ports(state.backends), state.settings
    )
    app.register_blueprint(blp)


def resumable() -> ResumableService:
    service: ResumableService = current_app.extensions[EXTENSION_KEY]
    return service


@blp.before_request
def _require_tus_version() -> None:
    if request.method == "OPTIONS":
        return
    if request.headers.get("Tus-Resumable") != TUS_VERSION:
        raise TusVersionUnsupported(f"This server speaks tus {TUS_VERSION}: send Tus-Resumable.")


@blp.after_request
def _tus_headers(response: Response) -> Response:
    response.headers["Tus-Resumable"] = TUS_VERSION
    if response.status_code == 412:
        response.headers["Tus-Version"] = TUS_VERSION
    return response


@blp.route("", methods=["OPTIONS"], provide_automatic_options=False)
@blp.route("/<upload_id>", methods=["OPTIONS"], provide_automatic_options=False)
def options(upload_id: str | None = None) -> Response:
    response = Response(status=204)
    response.headers["Tus-Version"] = TUS_VERSION
    response.headers["Tus-Extension"] = TUS_EXTENSIONS
    response.headers["Tus-Max-Size"] = str(resumable().max_size)
    response.headers["Tus-Checksum-Algorithm"] = ",".join(CHECKSUM_ALGORITHMS)
    return response


@blp.route("", methods=["POST"], provide_automatic_options=False)
@auth_required
def create(*, principal: Principal) -> Response:
    if request.headers.get("Upload-Defer-Length") is not None:
        raise BadRequest("Upload-Defer-Length is not supported: send Upload-Length.")
    length = _header_integer("Upload-Length")
    if request.content_length:
        raise BadRequest("Send the bytes with PATCH (creation-with-upload is not supported).")
    metadata = _upload_metadata(request.headers.get("Upload-Metadata"))
    upload = resumable().create(principal, length, metadata)
    response = _state_headers(Response(status=201), upload)
    response.headers["Location"] = f"{public_base_url()}{UPLOADS_PATH}/{upload.id}"
    return response


@blp.route("/<upload_id>", methods=["HEAD"], provide_automatic_options=False)
@auth_required
def head(upload_id: str, *, principal: Principal) -> Response:
    upload = resumable().get(principal, _upload_id(upload_id))
    response = _state_headers(Response(status=200), upload)
    response.headers["Upload-Length"] = str(upload.length)
    response.headers["Cache-Control"] = "no-store"
    return response


@blp.route("/<upload_id>", methods=["PATCH"], provide_automatic_options=False)
@auth_required
def append(upload_id: str, *, principal: Principal) -> Response:
    upload_id = _upload_id(upload_id)
    if request.mimetype != OFFSET_TYPE:
        raise UnsupportedMediaType(f"A PATCH body must be {OFFSET_TYPE}.")
    offset = _header_integer("Upload-Offset")
    settings = app_state().settings
    body = MinimumRateInput.for_environ(
        request.stream, request.environ, settings.upload_min_rate, settings.upload_rate_window
    )
    checksum = _upload_checksum(request.headers.get("Upload-Checksum"))
    upload = resumable().append(
        principal, upload_id, offset, body, request.content_length, checksum
    )
    return _state_headers(Response(status=204), upload)


@blp.route("/<upload_id>", methods=["DELETE"], provide_automatic_options=False)
@auth_required
def terminate(upload_id: str, *, principal: Principal) -> Response:
    resumable().terminate(principal, _upload_id(upload_id))
    return Response(status=204)


def _state_headers(response: Response, upload: ResumableUpload) -> Response:
    response.headers["Upload-Offset"] = str(upload.offset)
    if upload.media_id is not None:
        response.headers["Media-Location"] = info_url(upload.media_id)
    else:
        response.headers["Upload-Expires"] = format_http_date(upload.expires)
    return response


def _upload_id(raw: str) -> str:
    """The canonical UUID; anything else names no upload (404, as tus clients expect)."""
    try:
        if len(raw) > 64:
            raise ValueError
        return str(uuid.UUID(raw))
    except ValueError:
        raise NotFound("No upload with that id.") from None


def _header_integer(name: str) -> int:
    raw = request.headers.get(name)
    if raw is None or not _DIGITS.fullmatch(raw.strip()):
        reason = "Missing." if raw is None else "Not a non-negative integer."
        raise ValidationFailed(
            f"The {name} header is missing or invalid.",
            invalid_parameters=[{"name": name, "reason": reason}],
        )
    return int(raw.strip())


def _upload_checksum(header: str | None) -> tuple[str, bytes] | None:
    """`Upload-Checksum: <algorithm> <base64 digest>` as (algorithm, digest), or None."""
    if header is None:
        return None
    algorithm, _, value = header.strip().partition(" ")
    if algorithm not in CHECKSUM_ALGORITHMS:
        raise ValidationFailed(
            "The Upload-Checksum algorithm is not supported.",
            invalid_parameters=[
                {
                    "name": "Upload-Checksum",
                    "reason": f"Use one of {', '.join(CHECKSUM_ALGORITHMS)}.",
                }
            ],
        )
    try:
        digest = base64.b64decode(value.strip(), validate=True)
    except (binascii.Error, ValueError):
        digest = b""
    if len(digest) != hashlib.new(algorithm).digest_size:
        raise ValidationFailed(
            "The Upload-Checksum digest is not valid.",
            invalid_parameters=[{"name": "Upload-Checksum", "reason": "Not a base64 digest."}],
        )
    return algorithm, digest


def _upload_metadata(header: str | None) -> dict[str, str]:
    """Decode and validate Upload-Metadata: `key base64value` pairs separated by commas."""
    if header is None or not header.strip():
        return {}
    if len(header) > MAX_METADATA_HEADER:
        raise BadRequest("Upload-Metadata is too long.")
    problems: dict[str, list[str]] = {}
    decoded: dict[str, str] = {}
    for pair in header.split(","):
        key, _, value = pair.strip().partition(" ")
        value = value.strip()
        if not _KEY.fullmatch(key):
            problems.setdefault("Upload-Metadata", []).append("A key is empty or not ASCII.")
            continue
        if key in decoded:
            problems.setdefault(key, []).append("Given more than once.")
            continue
        try:
            text = base64.b64decode(value, validate=True).decode("utf-8")
        except (binascii.Error, ValueError):
            problems.setdefault(key, []).append("Not base64 of UTF-8 text.")
            continue
        decoded[key] = text
    fields = {key: text for key, text in decoded.items() if key in METADATA_KEYS}
    filetype = fields.pop("filetype", None)
    if filetype is not None:
        normalised = normalise_mime_type(filetype) if filetype else None
        if filetype and normalised is None:
            problems.setdefault("filetype", []).append("Not a valid media type.")
        elif normalised:
            fields["filetype"] = normalised
    load_upload_fields({k: v for k, v in fields.items() if k != "filetype"}, problems)
    if problems:
        raise ValidationFailed.from_messages(problems)
    return fields
