"""The one check of an RFC 7807 answer, for every suite (test client, HTTP client, raw socket).

An answer is a Flask test response, a `requests` response, or `(status, headers, body)` as the
raw-socket tests split it. Every problem the service sends has the same shape: content type
`application/problem+json`; `type`, `title` and `detail` non-empty strings; `status` equal to
the status line; `instance` equal to the `X-Request-Id` header. A HEAD answer has no body, so
only its status and content type are checked.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

PROBLEM_JSON = "application/problem+json"
PROBLEM_TEXT_FIELDS = ("type", "title", "detail")

RawAnswer = tuple[int, Mapping[str, str], bytes]


def assert_problem(
    answer: Any,
    status: int,
    names: Sequence[str] | None = None,
    *,
    request_id: str | None = None,
) -> dict[str, Any]:
    """Assert a problem+json answer with `status`; return its body ({} for HEAD).

    With `names`, the body's `invalid_parameters` name exactly those, each with a reason; with
    `request_id`, the answer carries that request id.
    """
    code, headers, body, method = _parts(answer)
    assert code == status, (code, body[:1000])
    content_type = headers.get("content-type", "")
    assert content_type.split(";")[0].strip() == PROBLEM_JSON, (content_type, body[:200])
    if request_id is not None:
        assert headers.get("x-request-id") == request_id, headers
    if method == "HEAD":
        return {}
    document: dict[str, Any] = json.loads(body)
    for key in PROBLEM_TEXT_FIELDS:
        assert isinstance(document.get(key), str) and document[key], document
    assert document.get("status") == status, document
    assert document.get("instance") == headers.get("x-request-id"), (document, headers)
    if names is not None:
        reported = sorted(entry["name"] for entry in document.get("invalid_parameters", []))
        assert reported == sorted(names), document
        assert all(entry["reason"] for entry in document["invalid_parameters"]), document
    return document


def _parts(answer: Any) -> tuple[int, dict[str, str], bytes, str | None]:
    """(status, lower-cased headers, body, request method if known) of any kind of answer."""
    if isinstance(answer, tuple):
        code, headers, body = answer
        return code, {k.lower(): v for k, v in headers.items()}, body, None
    headers = {k.lower(): v for k, v in answer.headers.items()}
    request = getattr(answer, "request", None)
    method = getattr(request, "method", None)
    body = answer.get_data() if hasattr(answer, "get_data") else answer.content
    return answer.status_code, headers, body, method
