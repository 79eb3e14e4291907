"""What MediaClient raises: one base class, and API errors parsed from problem+json (SPEC §3)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import requests

# An error body is a small JSON document; never read more of a misbehaving server's answer.
MAX_ERROR_BODY = 64 * 1024


class MediaClientError(Exception):
    """Base of everything the client raises: network failures, bad responses and API errors."""


@dataclass(frozen=True)
class InvalidParameter:
    """One entry of a validation error's `invalid_parameters`."""

    name: str
    reason: str


class MediaApiError(MediaClientError):
    """The service answered with an error status (its problem+json body, parsed)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str,
        invalid_parameters: tuple[InvalidParameter, ...] = (),
        request_id: str | None = None,
        problem_type: str | None = None,
    ) -> None:
        super().__init__(status, title, detail)
        self.status = status
        self.title = title
        self.detail = detail
        self.invalid_parameters = invalid_parameters
        self.request_id = request_id
        self.problem_type = problem_type

    def __str__(self) -> str:
        text = f"{self.status} {self.title}: {self.detail}"
        if self.invalid_parameters:
            text += " [" + "; ".join(f"{p.name}: {p.reason}" for p in self.invalid_parameters) + "]"
        return f"{text} (request id {self.request_id})" if self.request_id else text


class ValidationError(MediaApiError):
    """400: the request was invalid; `invalid_parameters` names each bad field."""


class Unauthorized(MediaApiError):
    """401: credentials are missing or invalid."""


class Forbidden(MediaApiError):
    """403: the credentials may not do this (another application's item, an ACL, a limit)."""


class NotFound(MediaApiError):
    """404: no such item (or it belongs to another account)."""


class TooLarge(MediaApiError):
    """413: the upload is larger than the service accepts."""


class InsufficientStorage(MediaApiError):
    """507: the service is short of disk space (an upload, or a download it must count)."""


class Unavailable(MediaApiError):
    """502, 503 or 504: the service or one of its backends is unavailable; retry later."""


_BY_STATUS: dict[int, type[MediaApiError]] = {
    400: ValidationError,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    413: TooLarge,
    507: InsufficientStorage,
    502: Unavailable,
    503: Unavailable,
    504: Unavailable,
}


def error_from_response(response: requests.Response) -> MediaApiError:
    """Build the MediaApiError subclass for an error response, reading a bounded body."""
    status = response.status_code
    body = _problem_body(response)
    title = _text(body.get("title")) or response.reason or f"HTTP {status}"
    detail = _text(body.get("detail")) or title
    request_id = _text(body.get("instance")) or response.headers.get("X-Request-Id")
    params = body.get("invalid_parameters")
    invalid = tuple(
        InvalidParameter(_text(p.get("name")) or "", _text(p.get("reason")) or "")
        for p in (params if isinstance(params, list) else [])
        if isinstance(p, dict)
    )
    cls = _BY_STATUS.get(status, MediaApiError)
    return cls(status, title, detail, invalid, request_id, _text(body.get("type")))


def _problem_body(response: requests.Response) -> dict[str, Any]:
    """The JSON object of the response, or {} when it has none (e.g. a proxy's HTML page)."""
    raw = b""
    try:
        for chunk in response.iter_content(8192):
            raw += chunk
            if len(raw) >= MAX_ERROR_BODY:
                break
    except requests.RequestException:
        pass  # the status alone still makes a useful error
    finally:
        response.close()
    try:
        body = json.loads(raw[:MAX_ERROR_BODY])
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
