"""Upload, search, read, update and delete media items (SPEC §4.1-4.3, 4.5, 4.6)."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import orjson
from flask import Response, current_app, jsonify, request

from media_service.api.auth import auth_required
from media_service.api.common import (
    MEDIA_PREFIX,
    info_url,
    item_id_checked,
    parse_item_id,
)
from media_service.api.openapi import Blueprint
from media_service.api.upload import receive_upload
from media_service.auth import Principal
from media_service.context import current_media_service
from media_service.schemas.expiry import TTL_MAX_SECONDS, TTL_MIN_SECONDS
from media_service.schemas.media import (
    MediaItemSchema,
    ProblemSchema,
    SearchQuerySchema,
    SearchResultSchema,
    UpdateSchema,
    item_document,
)
from media_service.storage.interfaces import MediaItem

blp = Blueprint(
    "media",
    __name__,
    url_prefix=MEDIA_PREFIX,
    description="Upload, search, read, update and delete media items.",
)

ITEM_SCHEMA = MediaItemSchema()
ERROR_RESPONSES = {
    "400": {
        "description": "Invalid request",
        "content": {"application/problem+json": {"schema": ProblemSchema}},
    },
    "401": {
        "description": "Authentication required or invalid",
        "content": {"application/problem+json": {"schema": ProblemSchema}},
    },
    "403": {
        "description": "Not allowed for these credentials",
        "content": {"application/problem+json": {"schema": ProblemSchema}},
    },
    "404": {
        "description": "No such item",
        "content": {"application/problem+json": {"schema": ProblemSchema}},
    },
    "503": {
        "description": "A backend is unavailable",
        "content": {"application/problem+json": {"schema": ProblemSchema}},
    },
    "507": {
        "description": "Not enough free disk space (the service keeps a reserve)",
        "content": {"application/problem+json": {"schema": ProblemSchema}},
    },
}


def _errors(*codes: str) -> dict[str, Any]:
    return {"responses": {code: ERROR_RESPONSES[code] for code in codes}}


# --------------------------------------------------------------------------- upload


# The fields an upload takes besides the file or url (the same in both body types).
_UPLOAD_FIELDS: dict[str, dict[str, object]] = {
    "filename": {"type": "string"},
    "info": {"type": "string"},
    "public": {"type": "boolean"},
    "public_item": {"type": "boolean"},
    "metadata_primary": {"type": "string"},
    "metadata_secondary": {"type": "string"},
    "title": {"type": "string"},
    "description": {"type": "string"},
    "mime_type": {"type": "string"},
    "max_downloads_allowed": {"type": "integer", "minimum": 0},
    "ttl": {"type": "integer", "minimum": TTL_MIN_SECONDS, "maximum": TTL_MAX_SECONDS},
    "expires_at": {"type": "string", "format": "date-time"},
}


@blp.route("", methods=["POST"], strict_slashes=False)
@blp.doc(
    summary="Upload a media file",
    description=(
        "multipart/form-data with the file in `filedata` (or `file`), or a `url` to fetch; "
        "or application/x-www-form-urlencoded with a `url` (what `curl -d url=...` sends). "
        "`ttl` (seconds) or `expires_at` (ISO 8601, in the future) make the item expire; "
        "with neither, MEDIA_DEFAULT_TTL applies. "
        "Answers 201 with the item and a Location header pointing at its /info."
    ),
    requestBody={
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "filedata": {"type": "string", "format": "binary"},
                        "file": {"type": "string", "format": "binary"},
                        "url": {"type": "string", "format": "uri"},
                        **_UPLOAD_FIELDS,
                    },
                }
            },
            "application/x-www-form-urlencoded": {
                "schema": {
                    "type": "object",
                    "required": ["url"],
                    "properties": {
                        "url": {"type": "string", "format": "uri"},
                        **_UPLOAD_FIELDS,
                    },
                }
            },
        },
    },
    **_errors("400", "401", "403", "503", "507"),
)
@blp.response(201, MediaItemSchema, headers={"Location": {"schema": {"type": "string"}}})
@auth_required
def upload(*, principal: Principal) -> Any:
    item = receive_upload(principal)
    response = item_response(item, 201)
    response.headers["Location"] = info_url(item.id)
    return response


def item_response(item: MediaItem, status: int = 200) -> Response:
    """The item as every endpoint that answers one sends it (MediaItemSchema documents it).

    Views return a Response, which flask-smorest passes on untouched: its generic dump of
    MediaItemSchema cost as much as the rest of GET /info.
    """
    document = item_document(item)
    # orjson writes what Flask's encoder writes (compact, keys in order) five times faster,
    # except that it sends non-ASCII text as UTF-8 where Flask escapes it (\u00e9); such
    # documents, and any orjson refuses (a lone surrogate, a huge integer), keep Flask's bytes.
    try:
        body: bytes | None = orjson.dumps(document)
    except orjson.JSONEncodeError:
        body = None
    if body is None or not body.isascii():
        response = jsonify(document)
        response.status_code = status
        return response
    return Response(body + b"\n", status=status, mimetype="application/json")


# --------------------------------------------------------------------------- search


@blp.route("", methods=["GET"], strict_slashes=False)
@blp.arguments(SearchQuerySchema, location="query", as_kwargs=True)
@blp.response(200, SearchResultSchema)
@blp.doc(summary="List and search media items", **_errors("400", "401", "403", "503"))
@auth_required
def search(
    order: str,
    page_index: int,
    page_size: int,
    start_time: Any = None,
    end_time: Any = None,
    *,
    principal: Principal,
) -> Any:
    page = current_media_service().search(
        principal,
        ascending=order == "ascending",
        page_index=page_index,
        page_size=page_size,
        start_time=start_time,
        end_time=end_time,
    )
    last_index = max(0, (page.total - 1) // page_size)
    links = {
        "self": {"href": _page_href(page_index)},
        "first": {"href": _page_href(0)},
        "last": {"href": _page_href(last_index)},
    }
    if page_index < last_index:
        links["next"] = {"href": _page_href(page_index + 1)}
    if 0 < page_index <= last_index + 1:
        links["prev"] = {"href": _page_href(min(page_index - 1, last_index))}
    # SearchResultSchema documents this document; it is built directly, as items are.
    return current_app.json.response(
        {
            "page_size": page_size,
            "page_index": page_index,
            "count": page.total,
            "_links": links,
            "_embedded": {"media": [item_document(item) for item in page.items]},
        }
    )


def _page_href(page_index: int) -> str:
    """A relative link to another page that keeps the caller's query parameters."""
    params = [
        (k, v) for k, v in request.args.items(multi=True) if k not in ("page_index", "jwt-token")
    ]
    params.append(("page_index", str(page_index)))
    return f"{MEDIA_PREFIX}?{urlencode(params)}"


# --------------------------------------------------------------------------- one item


@blp.route("/<item_id>/info", methods=["GET"])
@blp.response(200, MediaItemSchema)
@blp.doc(summary="Retrieve a media item's metadata", **_errors("400", "401", "403", "404", "503"))
@auth_required
def get_info(item_id: str, *, principal: Principal) -> Any:
    item = current_media_service().get_owned(principal, parse_item_id(item_id))
    return item_response(item)


UPDATE_DOC = {
    "summary": "Update a media item's metadata",
    "description": (
        "JSON, form or multipart body with any of the updatable fields. 204, or 200 with the "
        "item when the request has `Prefer: return=representation`. `ttl` or `expires_at` "
        "sets a new expiry; null (JSON) or an empty value (form) removes it."
    ),
    # @blp.arguments documents the JSON body; the `body` location takes the same as a form.
    "requestBody": {
        "content": {
            "application/x-www-form-urlencoded": {"schema": UpdateSchema},
            "multipart/form-data": {"schema": UpdateSchema},
        },
    },
    "responses": {
        "204": {"description": "Updated"},
        "200": {
            "description": "Updated (with Prefer: return=representation)",
            "content": {"application/json": {"schema": MediaItemSchema}},
        },
        **_errors("400", "401", "403", "404", "503")["responses"],
    },
}


@blp.route("/<item_id>/info", methods=["PUT"], endpoint="update_info")
@blp.route("/<item_id>", methods=["PUT"], endpoint="update")
@blp.doc(**UPDATE_DOC)
@auth_required
@item_id_checked  # a bad id is 400 before the body is read
@blp.arguments(UpdateSchema, location="body")
def update(changes: dict[str, Any], item_id: str, *, principal: Principal) -> Any:
    item = current_media_service().update(principal, item_id, changes)
    if _prefers_representation():
        response = item_response(item)
        response.headers["Preference-Applied"] = "return=representation"
        return response
    return Response(status=204)


@blp.route("/<item_id>", methods=["DELETE"], endpoint="delete")
@blp.route("/<item_id>/info", methods=["DELETE"], endpoint="delete_info")
@blp.doc(
    summary="Delete a media item",
    responses={
        "204": {"description": "Deleted"},
        **_errors("400", "401", "403", "404", "503")["responses"],
    },
)
@auth_required
def delete(item_id: str, *, principal: Principal) -> Any:
    current_media_service().delete(principal, parse_item_id(item_id))
    return Response(status=204)


def _prefers_representation() -> bool:
    prefer = ",".join(request.headers.getlist("Prefer")).lower()
    return any(p.strip().replace(" ", "") == "return=representation" for p in prefer.split(","))
