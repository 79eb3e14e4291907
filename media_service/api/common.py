"""Helpers every view uses: who is asking, which item, and where the API lives."""

from __future__ import annotations

import functools
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from flask import request

from media_service.context import app_state
from media_service.errors import ValidationFailed

MEDIA_PREFIX = "/v3/media"

View = TypeVar("View", bound=Callable[..., Any])


def parse_item_id(raw: str) -> str:
    """The canonical (lower-case, hyphenated) UUID, or 400 naming the `id` path parameter."""
    try:
        if len(raw) > 64:
            raise ValueError
        return str(uuid.UUID(raw))
    except ValueError:
        raise ValidationFailed(
            "The media id in the path is not a UUID.",
            invalid_parameters=[{"name": "id", "reason": "Not a valid UUID."}],
        ) from None


def item_id_checked(view: View) -> View:
    """Hand the view its `item_id` through parse_item_id, before anything it wraps (such as a
    body parsed by @blp.arguments) runs: a bad id is 400 naming `id`, whatever the body."""

    @functools.wraps(view)
    def wrapper(*args: Any, item_id: str, **kwargs: Any) -> Any:
        return view(*args, item_id=parse_item_id(item_id), **kwargs)

    return wrapper  # type: ignore[return-value]


def public_base_url() -> str:
    """MEDIA_PUBLIC_BASE_URL, else the request's own (X-Forwarded-* trusted via ProxyFix)."""
    configured = app_state().settings.public_base_url
    if configured:
        return configured
    return request.url_root.rstrip("/")


def info_url(item_id: str) -> str:
    return f"{public_base_url()}{MEDIA_PREFIX}/{item_id}/info"
