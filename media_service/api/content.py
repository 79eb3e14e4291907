"""Download: GET and HEAD /v3/media/{id}, with RFC 9110 preconditions, ranges and counting."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from flask import Response, request
from werkzeug.wsgi import wrap_file

from media_service.api.auth import auth_optional
from media_service.api.common import MEDIA_PREFIX, parse_item_id
from media_service.api.openapi import Blueprint
from media_service.auth import Principal
from media_service.context import current_media_service, settings
from media_service.errors import PreconditionFailed, RangeNotSatisfiable
from media_service.http.conditional import DownloadPlan, Representation, evaluate, format_etag
from media_service.http.dates import format_http_date
from media_service.http.disposition import content_disposition
from media_service.http.offload import Redirect, counts, offloadable, presigned_redirect
from media_service.service.media import DownloadAccess, MediaService
from media_service.storage.interfaces import CHUNK_SIZE, BlobStream, MediaItem

blp = Blueprint("content", __name__, url_prefix=MEDIA_PREFIX, description="Download media content.")

# A sandboxed, script-less document: user content never runs as this origin's page.
CONTENT_SECURITY_POLICY = "sandbox; default-src 'none'"
# nginx's internal location for MEDIA_DOWNLOAD_REDIRECT=accel (config/nginx/media.conf).
ACCEL_LOCATION = "/_media_accel/"
# Downloads up to this size are read before the count and sent from memory: for a short prompt
# that costs less than streaming it (socket.sendfile's selector, fstat and seeks; the access
# log's counting file): a 1 KiB download took 15 % less worker CPU (docs/performance.md).
SMALL_DOWNLOAD_BYTES = 64 * 1024


@blp.route("/<item_id>", methods=["GET", "HEAD"])
@blp.doc(
    summary="Retrieve a media item's content",
    description=(
        "Public items need no credentials. Supports If-None-Match, If-Modified-Since (HTTP-date "
        "or ISO 8601), Range and If-Range. A 200 GET, or a 206 GET starting at byte 0, counts "
        "as a download."
    ),
    responses={
        "200": {
            "description": "The content",
            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
        },
        "206": {
            "description": "Part of the content",
            "content": {"*/*": {"schema": {"type": "string", "format": "binary"}}},
        },
        "302": {
            "description": "With MEDIA_DOWNLOAD_REDIRECT=presigned: the content is at Location "
            "(a presigned URL); counted like a 200"
        },
        "304": {"description": "Not modified"},
        "401": {"description": "Authentication required for a private item"},
        "403": {"description": "Not allowed, or the anonymous download limit is reached"},
        "404": {"description": "No such item"},
        "416": {"description": "Range not satisfiable"},
        "507": {"description": "A limited item's download cannot be counted: disk full"},
    },
)
@auth_optional
def download(item_id: str, *, principal: Principal | None) -> Any:
    item_id = parse_item_id(item_id)
    # Authorisation first: a private item never answers 304 (nor shows its ETag) to strangers.
    service = current_media_service()
    access = service.get_for_download(principal, item_id)
    item = access.item

    representation = Representation(
        etag=item.etag, last_modified=item.time_content_modified, size=item.media_size
    )
    plan = evaluate(request.method, _conditionals(request.environ), representation)
    headers = _validator_headers(item)

    if plan.status == 304:
        return Response(status=304, headers=headers)
    if plan.status == 412:
        raise PreconditionFailed(headers)
    if plan.status == 416:
        unsatisfied = {"Content-Range": plan.content_range} if plan.content_range else {}
        raise RangeNotSatisfiable({**headers, **unsatisfied})

    headers.update(_content_headers(item, plan))
    if request.method == "HEAD":
        # One cheap existence check (a stat, or S3 HeadObject), so that a HEAD never promises
        # content a GET would not deliver.
        service.check_content(item)
        response = Response(status=plan.status, headers=headers)
        response.headers["Content-Length"] = str(plan.length)
        return response

    mode = settings().download_redirect
    if mode == "presigned":
        redirect = presigned_redirect(plan, request.headers)
        if redirect is not None:
            return _presigned(service, access, headers, redirect)
    elif mode == "accel" and offloadable(plan, request.headers):
        return _accel(service, access, plan, headers)

    body: Any
    if plan.length <= SMALL_DOWNLOAD_BYTES:
        # A short prompt: read before the count and sent with the headers (docs/design.md).
        body = [service.read_content(item, plan.start, plan.length)]
        if counts(plan):
            service.count_download(access)
    else:
        stream = service.open_content(item, plan.start, plan.length)
        try:
            if counts(plan):
                service.count_download(access)
        except BaseException:
            stream.close()
            raise
        body = _body(stream, plan, item.media_size)
    response = Response(
        body,
        status=plan.status,
        headers=headers,
        direct_passthrough=True,
    )
    response.headers["Content-Length"] = str(plan.length)
    return response


def _presigned(
    service: MediaService, access: DownloadAccess, headers: dict[str, str], redirect: Redirect
) -> Response:
    """302 to S3: signed (nothing counted if that fails), checked, counted once, not cached."""
    url = service.presigned_download_url(
        access.item,
        response_headers={
            name: headers[name] for name in ("Content-Type", "Content-Disposition", "Cache-Control")
        },
        byte_range=redirect.signed_range,
    )
    # The bytes exist before a count is spent on them (one HeadObject, as a HEAD does).
    service.check_content(access.item)
    if redirect.counted:
        service.count_download(access)
    response = Response(status=302)
    for name in ("ETag", "Last-Modified", "Vary", "X-Content-Type-Options"):
        response.headers[name] = headers[name]
    response.headers["Location"] = url
    # Every 302 is one counted download: no cache may answer a later request with it.
    response.headers["Cache-Control"] = "no-store"
    return response


def _accel(
    service: MediaService, access: DownloadAccess, plan: DownloadPlan, headers: dict[str, str]
) -> Response:
    """Today's answer without its body: nginx sends the file named by X-Accel-Redirect."""
    service.check_content(access.item)  # a stat: a lost file is the service's 503, not nginx's 404
    if counts(plan):
        service.count_download(access)
    response = Response(status=plan.status, headers=headers)
    response.headers["X-Accel-Redirect"] = ACCEL_LOCATION + service.accel_path(access.item)
    if plan.status == 200:
        # nginx's range filter adds its own to a whole file (and keeps ours): it would be twice.
        del response.headers["Accept-Ranges"]
    return response


# The request headers evaluate() reads, as WSGI names them. A dict of just these is what it
# needs: looking up an absent name in the request's own headers scans all of them, once for
# each of the five it asks about, on every download.
_CONDITIONAL_HEADERS = tuple(
    (name, "HTTP_" + name.upper().replace("-", "_"))
    for name in (
        "If-Match",
        "If-None-Match",
        "If-Modified-Since",
        "If-Unmodified-Since",
        "Range",
        "If-Range",
    )
)


def _conditionals(environ: dict[str, Any]) -> dict[str, str]:
    """The request's precondition and range headers (most downloads send none)."""
    return {name: environ[key] for name, key in _CONDITIONAL_HEADERS if key in environ}


def _validator_headers(item: MediaItem) -> dict[str, str]:
    return {
        "ETag": format_etag(item.etag),
        "Last-Modified": format_http_date(item.time_content_modified),
        # no-cache: caches must revalidate, so downloads keep being counted and limited.
        "Cache-Control": "public, no-cache" if item.public else "private, no-cache",
        "Vary": "Authorization",
    }


def _content_headers(item: MediaItem, plan: DownloadPlan) -> dict[str, str]:
    headers = {
        "Content-Type": item.mime_type,
        "Accept-Ranges": "bytes",
        "Content-Disposition": content_disposition(
            item.original_file_name or item.id, item.mime_type
        ),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    }
    if plan.content_range:
        headers["Content-Range"] = plan.content_range
    return headers


def _body(stream: BlobStream, plan: DownloadPlan, size: int) -> Any:
    """A sendfile-able file wrapper where the server honours Content-Length, else chunks.

    With direct_passthrough the WSGI server receives this object itself and calls its close()
    when the response ends or the client goes away, which releases the backend stream.
    """
    file = getattr(stream, "file", None)
    if file is not None:
        to_eof = plan.start + plan.length == size
        # gunicorn stops at Content-Length (and uses sendfile); other servers need the range to
        # run to the end of the file, since a file wrapper reads until EOF.
        if to_eof or str(request.environ.get("SERVER_SOFTWARE", "")).startswith("gunicorn"):
            # The server's own wrapper, unwrapped: gunicorn only uses sendfile for an instance
            # of it. Its close() closes the file, which is all a file blob stream holds.
            return wrap_file(request.environ, file, buffer_size=CHUNK_SIZE)
    return _StreamBody(stream)


class _StreamBody:
    """Iterate a blob stream; close() releases it even if iteration never started."""

    def __init__(self, stream: BlobStream) -> None:
        self._stream = stream

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._stream)

    def close(self) -> None:
        self._stream.close()
