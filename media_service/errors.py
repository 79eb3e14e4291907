"""One error shape: every failure leaves the service as RFC 7807 problem+json.

Raise an `ApiError` subclass anywhere below the views; `register_error_handlers` turns it (and
Werkzeug's HTTP errors, marshmallow validation errors and unexpected exceptions) into
`{"type", "title", "detail", "instance"}` with the request id as `instance`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from flask import Flask, Response, g, json, request
from werkzeug.exceptions import HTTPException

from media_service.schemas.fields import printable_text
from media_service.serving.limits import ClientTooSlow
from media_service.storage.interfaces import (
    BackendUnavailable,
    BlobNotFound,
    InvalidValue,
    StorageError,
    StorageFull,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_TYPE_BASE = "urn:media-service:problem:"
WWW_AUTHENTICATE = 'Basic realm="media", Bearer realm="media"'


class ApiError(Exception):
    """An error with an HTTP status; `slug` names the problem type."""

    status = 500
    title = "Internal Server Error"
    slug = "internal-error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        invalid_parameters: Sequence[Mapping[str, str]] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.invalid_parameters = list(invalid_parameters or [])
        self.headers = dict(headers or {})


class BadRequest(ApiError):
    status, title, slug = 400, "Bad Request", "bad-request"


class ValidationFailed(BadRequest):
    title, slug = "Invalid request parameters", "invalid-parameters"

    @classmethod
    def from_messages(
        cls, messages: Mapping[str, Any], detail: str | None = None
    ) -> ValidationFailed:
        """Build from marshmallow's {field: [reasons]} (nested dicts are flattened)."""
        params = [{"name": name, "reason": reason} for name, reason in _flatten(messages)]
        names = ", ".join(p["name"] for p in params) or "request"
        return cls(detail or f"Invalid value for: {names}", invalid_parameters=params)


class Unauthorized(ApiError):
    status, title, slug = 401, "Unauthorized", "unauthorized"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"WWW-Authenticate": WWW_AUTHENTICATE})


class Forbidden(ApiError):
    status, title, slug = 403, "Forbidden", "forbidden"


class NotFound(ApiError):
    status, title, slug = 404, "Not Found", "not-found"


class PayloadTooLarge(ApiError):
    status, title, slug = 413, "Content Too Large", "payload-too-large"


class UnsupportedMediaType(ApiError):
    status, title, slug = 415, "Unsupported Media Type", "unsupported-media-type"


class UnprocessableContent(ApiError):
    status, title, slug = 422, "Unprocessable Content", "unprocessable"


class InsufficientStorage(ApiError):
    """Not enough free space to take this upload (or to keep a download's count): RFC 4918."""

    status, title, slug = 507, "Insufficient Storage", "insufficient-storage"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": "60"})


class ServiceUnavailable(ApiError):
    status, title, slug = 503, "Service Unavailable", "backend-unavailable"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail, headers={"Retry-After": "5"})


class ContentUnavailable(ServiceUnavailable):
    """A visible item whose bytes the blob store does not have (see MediaService.open_content)."""

    slug = "content-unavailable"

    def __init__(self) -> None:
        super().__init__("The content of this media item is temporarily unavailable.")


# --- downloads: RFC 9110 preconditions and ranges (raised by the download view)


class PreconditionFailed(ApiError):
    status, title, slug = 412, "Precondition Failed", "precondition-failed"

    def __init__(self, headers: Mapping[str, str]) -> None:
        super().__init__("A precondition in the request did not hold.", headers=headers)


class RangeNotSatisfiable(ApiError):
    status, title, slug = 416, "Range Not Satisfiable", "range-not-satisfiable"

    def __init__(self, headers: Mapping[str, str]) -> None:
        super().__init__("The requested range is outside the content.", headers=headers)


# --- uploads and downloads (raised by MediaService)


class UploadAbandoned(ServiceUnavailable):
    """The sweeper rolled the upload back: its bytes stopped for longer than the stale bound."""

    slug = "upload-abandoned"

    def __init__(self) -> None:
        super().__init__(
            "The upload stalled for too long and was rolled back; retry it from the start."
        )


class LimitReached(Forbidden):
    slug = "download-limit-reached"

    def __init__(self) -> None:
        super().__init__("This item has reached its maximum number of anonymous downloads.")


# --- request bodies (raised while an upload streams)


class UploadTooLarge(PayloadTooLarge):
    """The file is larger than MEDIA_MAX_UPLOAD_BYTES."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"The file is larger than the maximum of {limit} bytes.")


class ClientDisconnected(BadRequest):
    """The client went away (or broke the body off) before the upload was complete."""

    title, slug = "Incomplete request body", "client-disconnected"


class MalformedMultipart(BadRequest):
    title, slug = "Malformed multipart body", "malformed-multipart"


class BodyTooSlow(ApiError):
    """The upload body stalled or arrived slower than MEDIA_UPLOAD_MIN_RATE."""

    status, title, slug = 408, "Request Timeout", "request-timeout"


# --- quotas


class QuotaExceeded(Forbidden):
    slug = "quota-exceeded"


# --- resumable uploads (tus 1.0.0)


class UploadGone(ApiError):
    status, title, slug = 410, "Gone", "upload-expired"


class OffsetMismatch(ApiError):
    status, title, slug = 409, "Conflict", "upload-offset-mismatch"


class UploadLocked(ApiError):
    status, title, slug = 423, "Locked", "upload-locked"


class LeaseLost(ApiError):
    status, title, slug = 409, "Conflict", "upload-lease-lost"


class ChecksumMismatch(ApiError):
    """tus checksum extension: the body does not match its Upload-Checksum (nothing kept)."""

    status, title, slug = 460, "Checksum Mismatch", "upload-checksum-mismatch"


class TusVersionUnsupported(ApiError):
    status, title, slug = 412, "Precondition Failed", "tus-version-unsupported"


def _flatten(messages: Any, prefix: str = "") -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    if isinstance(messages, Mapping):
        for key, value in messages.items():
            # Names come from the client (unknown fields): never echo a lone surrogate back.
            key = printable_text(str(key))
            name = f"{prefix}.{key}" if prefix else key
            out.extend(_flatten(value, name))
    elif isinstance(messages, list | tuple):
        if all(isinstance(m, str) for m in messages):
            out.append((prefix or "request", " ".join(messages)))
        else:
            for m in messages:
                out.extend(_flatten(m, prefix))
    else:
        out.append((prefix or "request", str(messages)))
    return out


def request_id() -> str:
    return getattr(g, "request_id", None) or "-"


def problem_document(
    status: int,
    title: str,
    detail: str,
    instance: str,
    *,
    slug: str | None = None,
    invalid_parameters: Sequence[Mapping[str, str]] | None = None,
) -> dict[str, Any]:
    """The one problem+json document (RFC 7807) of every error: the app's, and the hardened
    worker's for requests that never reach it (serving/worker.py)."""
    # Details may quote client input: keep the document valid UTF-8 whatever was quoted.
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + slug if slug else "about:blank",
        "title": printable_text(title),
        "status": status,
        "detail": printable_text(detail),
        "instance": instance,
    }
    if invalid_parameters:
        body["invalid_parameters"] = [
            {printable_text(str(k)): printable_text(str(v)) for k, v in entry.items()}
            for entry in invalid_parameters
        ]
    return body


def problem_response(
    status: int,
    title: str,
    detail: str,
    *,
    slug: str | None = None,
    invalid_parameters: Sequence[Mapping[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> Response:
    body = problem_document(
        status, title, detail, request_id(), slug=slug, invalid_parameters=invalid_parameters
    )
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def _from_api_error(error: ApiError) -> Response:
    return problem_response(
        error.status,
        error.title,
        error.detail,
        slug=error.slug,
        invalid_parameters=error.invalid_parameters,
        headers=error.headers,
    )


def _from_http_exception(error: HTTPException) -> Response:
    status = error.code or 500
    headers = {}
    valid_methods = getattr(error, "valid_methods", None)
    if status == 405 and valid_methods:
        headers["Allow"] = ", ".join(valid_methods)
    if status == 401:
        headers["WWW-Authenticate"] = WWW_AUTHENTICATE
    description = error.description if isinstance(error.description, str) else error.name
    return problem_response(
        status, error.name, description or error.name, slug=None, headers=headers
    )


def register_error_handlers(app: Flask) -> None:
    """Route every error through problem+json, never a stack trace."""

    @app.errorhandler(ApiError)
    def _api_error(error: ApiError) -> Response:
        return _from_api_error(error)

    @app.errorhandler(BackendUnavailable)
    def _backend(error: BackendUnavailable) -> Response:
        log.warning("backend unavailable: %s", error)
        return _from_api_error(
            ServiceUnavailable(f"The {error.port} is not available; retry later.")
        )

    @app.errorhandler(StorageFull)
    def _full(error: StorageFull) -> Response:
        # Registered for the subclass: Flask picks the closest handler in the MRO.
        log.warning("storage full: %s", error)
        return _from_api_error(
            InsufficientStorage(f"The {error.port} has no space left; free some and retry.")
        )

    @app.errorhandler(ClientTooSlow)
    def _too_slow(error: ClientTooSlow) -> Response:
        # The server cut a body read short (idle timeout): the client's fault, not ours.
        return problem_response(408, "Request Timeout", str(error), slug="request-timeout")

    # The adapters' other exceptions: each is normally handled in the service layer, so one
    # arriving here is logged, but it still leaves as the problem a client can act on.
    @app.errorhandler(InvalidValue)
    def _invalid_value(error: InvalidValue) -> Response:
        log.warning("a backend refused a value: %s", printable_text(str(error)))
        return _from_api_error(
            BadRequest("The request contains a value that cannot be stored (e.g. invalid text).")
        )

    @app.errorhandler(BlobNotFound)
    def _blob_not_found(error: BlobNotFound) -> Response:
        # The service answers a missing blob itself (see MediaService.open_content); this is
        # the same answer for any other path it might escape from.
        log.error("content missing from the blob store: key %s", error)
        return _from_api_error(ContentUnavailable())

    @app.errorhandler(StorageError)
    def _storage(error: StorageError) -> Response:
        log.error("untranslated storage error: %s: %s", type(error).__name__, error)
        return _from_api_error(ServiceUnavailable("A backend failed; retry later."))

    @app.errorhandler(HTTPException)
    def _http(error: HTTPException) -> Response:
        return _from_http_exception(error)

    @app.errorhandler(Exception)
    def _unexpected(error: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.path)
        return problem_response(
            500, "Internal Server Error", "An unexpected error occurred.", slug="internal-error"
        )
