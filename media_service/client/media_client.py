"""MediaClient: the Media API v3 over HTTP (SPEC §4), with streaming uploads and downloads."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from email.utils import format_datetime
from pathlib import Path
from typing import IO, Any, BinaryIO
from urllib.parse import quote

import requests

from media_service import __version__
from media_service.client.auth import Auth, authorization_header
from media_service.client.download import (
    ContentStream,
    opaque_etag,
    quote_etag,
    save_response,
    unsatisfied_size,
)
from media_service.client.errors import MediaApiError, MediaClientError, error_from_response
from media_service.client.models import DownloadResult, MediaItem, SearchPage
from media_service.client.multipart import (
    FilePart,
    MultipartBody,
    Readable,
    remaining_size,
)
from media_service.client.resumable import (
    CHUNK_SIZE as TUS_CHUNK_SIZE,
)
from media_service.client.resumable import (
    TUS_VERSION,
    UPLOADS_PATH,
    OnProgress,
    TusSupport,
    TusUpload,
    UploadExpired,
    encode_metadata,
    parse_options,
)

MEDIA_PATH = "/v3/media"
USER_AGENT = f"media-service-client/{__version__} python-requests/{requests.__version__}"


class MediaClient:
    """A client of one media service; use it as a context manager or call `close()`.

    `base_url` is the service root (e.g. ``https://media.example.com``; a path prefix in front
    of ``/v3/media`` is kept). `timeout` is requests' (connect, read) timeout for every call.
    No request is retried: mount an adapter with retries on your own `session` if you want them.
    A client holds one requests.Session; give each thread its own client.
    """

    def __init__(
        self,
        base_url: str,
        *,
        auth: Auth,
        timeout: float | tuple[float, float] = (5, 60),
        session: requests.Session | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError("base_url must be an http:// or https:// URL")
        self.base_url = base_url.rstrip("/")
        self._auth = auth
        self._timeout = timeout
        self._owns_session = session is None
        self._session = session if session is not None else requests.Session()
        self._tus: TusSupport | None = None
        self._tus_asked = False

    def close(self) -> None:
        """Close the session if the client created it."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> MediaClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------------ upload

    def upload_file(
        self,
        path_or_fileobj: str | os.PathLike[str] | Readable,
        *,
        filename: str | None = None,
        info: str | Mapping[str, Any] | None = None,
        public: bool | None = None,
        max_downloads_allowed: int | None = None,
        mime_type: str | None = None,
        title: str | None = None,
        description: str | None = None,
        metadata_primary: str | Mapping[str, Any] | None = None,
        metadata_secondary: str | Mapping[str, Any] | None = None,
    ) -> MediaItem:
        """Upload a file (a path, or a binary file object read from its current position).

        The file is streamed in chunks of at most CHUNK_SIZE bytes, never read whole. A
        seekable file is sent with Content-Length; any other stream with chunked encoding.
        Mappings given as `info` or metadata are sent as JSON text.
        """
        fields = _form_fields(
            info=info,
            public=public,
            max_downloads_allowed=max_downloads_allowed,
            mime_type=mime_type,
            title=title,
            description=description,
            metadata_primary=metadata_primary,
            metadata_secondary=metadata_secondary,
        )
        with _opened(path_or_fileobj) as (fileobj, default_name):
            part = FilePart(
                "filedata",
                filename or default_name,
                # The part's type stays generic: `mime_type`, when given, goes as its own field
                # (validated by the service), and otherwise the service sniffs the bytes.
                "application/octet-stream",
                fileobj,
                remaining_size(fileobj),
            )
            return self._upload(MultipartBody(fields, part))

    def upload_url(
        self,
        url: str,
        *,
        filename: str | None = None,
        info: str | Mapping[str, Any] | None = None,
        public: bool | None = None,
        max_downloads_allowed: int | None = None,
        mime_type: str | None = None,
        title: str | None = None,
        description: str | None = None,
        metadata_primary: str | Mapping[str, Any] | None = None,
        metadata_secondary: str | Mapping[str, Any] | None = None,
    ) -> MediaItem:
        """Have the service fetch `url` (http or https) and store it as a new item."""
        fields = [("url", url)] + _form_fields(
            filename=filename,
            info=info,
            public=public,
            max_downloads_allowed=max_downloads_allowed,
            mime_type=mime_type,
            title=title,
            description=description,
            metadata_primary=metadata_primary,
            metadata_secondary=metadata_secondary,
        )
        return self._upload(MultipartBody(fields))

    def _upload(self, body: MultipartBody) -> MediaItem:
        headers = {"Content-Type": body.content_type, "Accept": "application/json"}
        data = body if body.length is not None else iter(body)  # no len(): chunked
        response = self._send("POST", self._url(), expect=(200, 201), headers=headers, data=data)
        return _item(response)

    # ------------------------------------------------------------------ resumable upload

    def tus_support(self) -> TusSupport | None:
        """What the service advertises for tus 1.0.0 at /v3/media/uploads (None: no tus).

        Asked once with OPTIONS and remembered for the client's life; a failure to ask counts
        as no tus, so a caller falls back to the multipart POST.
        """
        if not self._tus_asked:
            # A failure to connect is raised and asked again next time; an answer is kept.
            try:
                response = self._send("OPTIONS", self._uploads_url(), expect=(200, 204, 404, 405))
            except MediaApiError:
                self._tus = None  # e.g. a proxy's 403 or 501: use what works everywhere
            else:
                response.close()
                self._tus = parse_options(response)
            self._tus_asked = True
        return self._tus

    def upload_resumable(
        self,
        path: str | os.PathLike[str],
        *,
        filename: str | None = None,
        upload_url: str | None = None,
        on_created: Callable[[str], None] | None = None,
        on_progress: OnProgress | None = None,
        chunk_size: int = TUS_CHUNK_SIZE,
        ttl: int | None = None,
        **fields: Any,
    ) -> MediaItem:
        """Upload a file with tus: bytes in PATCH requests of `chunk_size`, resumed after a
        broken connection or a 5xx from the server's offset (HEAD); returns the new item.

        `fields` are those of `upload_file` (title, public, mime_type…), sent as
        Upload-Metadata with the file name. `upload_url`, from an earlier `on_created`, goes on
        with an unfinished upload of the same file (a new one is created if it has gone).
        `on_progress` is told the bytes sent; after a resume it may be told a negative count,
        the bytes the server did not keep. The item's ETag is checked against the file's MD5.
        """
        source = Path(path)
        if filename is None:
            filename = source.name
        with source.open("rb") as file:
            length = os.fstat(file.fileno()).st_size
            upload: TusUpload | None = None
            offset: int | None = None
            if upload_url is not None:
                upload = self._tus_upload(
                    self._resolve(upload_url), file, length, chunk_size, on_progress
                )
                try:
                    offset = upload.offset()
                except UploadExpired:
                    upload = None
            if upload is None:
                metadata = dict(_form_fields(filename=filename, ttl=ttl, **fields))
                url = self._create_upload(length, metadata)
                if on_created is not None:
                    on_created(url)
                upload = self._tus_upload(url, file, length, chunk_size, on_progress)
                offset = 0
            location = upload.send(offset)
            file_md5 = upload.file_md5
        item = self.get_at(location)
        if item.etag and len(item.etag) == 32 and item.etag != file_md5:
            # The service hashes what it stored (SPEC §1): another value means other bytes.
            raise MediaClientError(
                f"stored as {item.id}, but its ETag {item.etag} is not the MD5 of the file "
                f"({file_md5}): check the item, delete it and upload again"
            )
        return item

    def get_at(self, info_url: str) -> MediaItem:
        """The item at an `/info` URL the service gave (e.g. a tus Media-Location)."""
        headers = {"Accept": "application/json"}
        return _item(self._send("GET", self._resolve(info_url), expect=(200,), headers=headers))

    def _create_upload(self, length: int, metadata: Mapping[str, str]) -> str:
        headers = {
            "Tus-Resumable": TUS_VERSION,
            "Upload-Length": str(length),
            "Upload-Metadata": encode_metadata(metadata),
        }
        response = self._send("POST", self._uploads_url(), expect=(201,), headers=headers)
        response.close()
        location = response.headers.get("Location")
        if not location:
            raise MediaClientError("the service created an upload but sent no Location")
        return self._resolve(location)

    def _tus_upload(
        self,
        url: str,
        file: IO[bytes],
        length: int,
        chunk_size: int,
        on_progress: OnProgress | None,
    ) -> TusUpload:
        support = self.tus_support()
        # Per-chunk MD5 only when offered: a server without the checksum extension would
        # refuse the header or, worse, ignore it.
        checksum = support is not None and "md5" in support.checksum_algorithms
        return TusUpload(
            self._send,
            url,
            file,
            length,
            chunk_size=chunk_size,
            checksum=checksum,
            on_progress=on_progress,
        )

    def _uploads_url(self) -> str:
        return self.base_url + UPLOADS_PATH

    # ------------------------------------------------------------------ metadata

    def get(self, item_id: str) -> MediaItem:
        """The item's metadata."""
        return _item(self._send("GET", self._url(item_id, "info"), expect=(200,)))

    def update(self, item_id: str, **fields: Any) -> MediaItem | None:
        """Change updatable fields (SPEC §4.3); the updated item, or None if the server omits it.

        None clears a text field; `max_downloads_allowed=0` means unlimited.
        """
        headers = {"Prefer": "return=representation", "Accept": "application/json"}
        response = self._send(
            "PUT", self._url(item_id, "info"), expect=(200, 204), headers=headers, json=fields
        )
        return None if response.status_code == 204 else _item(response)

    def delete(self, item_id: str) -> None:
        """Delete the item's metadata and content."""
        self._send("DELETE", self._url(item_id), expect=(200, 204)).close()

    # ------------------------------------------------------------------ search

    def search_page(
        self,
        *,
        order: str = "descending",
        page_index: int = 0,
        page_size: int = 20,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
    ) -> SearchPage:
        """One page of the items these credentials see, by `time_created`.

        Without `start_time` the service searches the last week. Naive datetimes are UTC.
        """
        params: dict[str, str | int] = {
            "order": order,
            "page_index": page_index,
            "page_size": page_size,
        }
        if start_time is not None:
            params["start_time"] = format_timestamp(start_time)
        if end_time is not None:
            params["end_time"] = format_timestamp(end_time)
        return self._page(self._url(), params)

    def search(
        self,
        *,
        order: str = "descending",
        page_size: int = 100,
        start_time: datetime | None = None,
        end_time: datetime | None = None,
    ) -> Iterator[MediaItem]:
        """Every matching item, following the pages' `next` links (requests are made lazily).

        Pages are by index: items created or deleted while iterating may shift the pages.
        """
        page = self.search_page(
            order=order, page_size=page_size, start_time=start_time, end_time=end_time
        )
        seen: set[str] = set()
        while True:
            yield from page.items
            href = page.next_href
            if href is None or not page.items:
                return
            if href in seen:
                raise MediaClientError(f"the search links loop back to {href}")
            seen.add(href)
            page = self._page(self._resolve(href), None)

    def _page(self, url: str, params: dict[str, str | int] | None) -> SearchPage:
        headers = {"Accept": "application/json"}
        response = self._send("GET", url, expect=(200,), headers=headers, params=params)
        try:
            return SearchPage.from_json(_json(response))
        except (ValueError, TypeError, AttributeError) as exc:
            raise MediaClientError(f"unexpected search response: {exc}") from exc

    def _resolve(self, href: str) -> str:
        """An absolute URL for a link, refusing one that leads away (credentials go with it)."""
        if href.startswith("/") and not href.startswith("//"):
            return self.base_url + href
        if href.startswith(self.base_url + "/"):
            return href
        raise MediaClientError(f"refusing to follow a link to another server: {href}")

    # ------------------------------------------------------------------ download

    def download(
        self,
        item_id: str,
        dest: str | os.PathLike[str] | BinaryIO,
        *,
        if_none_match: str | None = None,
        if_modified_since: datetime | None = None,
        resume: bool = False,
        if_range: str | None = None,
    ) -> DownloadResult:
        """Stream the item's content into `dest` (a path, or a binary file object).

        A path is written only once the response is known: a 304 leaves it as it was. A failed
        download leaves the bytes received so far, which `resume=True` continues: it asks for
        the rest with `Range` and `If-Range` (the ETag given as `if_range`, else the current
        one from a HEAD request), appends on 206 and rewrites the file on 200. The content's
        MD5 is checked against its ETag.
        """
        path: Path | None = None
        sink: Path | IO[bytes]
        if isinstance(dest, str | os.PathLike):
            sink = path = Path(dest)
        else:
            sink = dest
        if resume and path is None:
            raise ValueError("resume=True needs dest to be a path")
        headers: dict[str, str] = {}
        if if_none_match is not None:
            headers["If-None-Match"] = quote_etag(if_none_match)
        if if_modified_since is not None:
            headers["If-Modified-Since"] = format_datetime(_utc(if_modified_since), usegmt=True)
        offset = path.stat().st_size if resume and path is not None and path.is_file() else 0
        validator = (if_range or self._current_etag(item_id)) if offset else None
        if validator:
            headers["Range"] = f"bytes={offset}-"
            headers["If-Range"] = quote_etag(validator)
        else:
            offset = 0
        expect = (200, 206, 304, 416) if offset else (200, 304)
        response = self._send(
            "GET", self._url(item_id), expect=expect, headers=headers, stream=True
        )
        with response:
            if response.status_code == 416 and unsatisfied_size(response) != offset:
                # The partial file is longer than the content: start over.
                response.close()
                return self.download(
                    item_id, dest, if_none_match=if_none_match, if_modified_since=if_modified_since
                )
            return save_response(response, sink, offset)

    @contextmanager
    def open_download(
        self,
        item_id: str,
        *,
        byte_range: tuple[int, int | None] | None = None,
        if_range: str | None = None,
    ) -> Iterator[ContentStream]:
        """Open the content (or the inclusive `byte_range`) as an iterator of byte chunks.

        The stream's `status` is 206 for a range, or 200 if the server sent everything (as it
        does when `if_range`, an ETag, no longer matches the content).
        """
        headers = {}
        if byte_range is not None:
            start, end = byte_range
            if start < 0 or (end is not None and end < start):
                raise ValueError("byte_range must be (start, end) with 0 <= start <= end")
            headers["Range"] = f"bytes={start}-{'' if end is None else end}"
            if if_range is not None:
                headers["If-Range"] = quote_etag(if_range)
        elif if_range is not None:
            raise ValueError("if_range needs a byte_range")
        response = self._send(
            "GET", self._url(item_id), expect=(200, 206), headers=headers, stream=True
        )
        with response:
            yield ContentStream(response)

    def _current_etag(self, item_id: str) -> str | None:
        response = self._send("HEAD", self._url(item_id), expect=(200,))
        response.close()
        return opaque_etag(response.headers.get("ETag"))

    # ------------------------------------------------------------------ plumbing

    def _url(self, item_id: str | None = None, suffix: str | None = None) -> str:
        url = self.base_url + MEDIA_PATH
        if item_id is not None:
            if not item_id:
                raise ValueError("item_id must not be empty")
            url += "/" + quote(item_id, safe="")
        return f"{url}/{suffix}" if suffix else url

    def _send(
        self,
        method: str,
        url: str,
        *,
        expect: tuple[int, ...],
        headers: Mapping[str, str] | None = None,
        **kwargs: Any,
    ) -> requests.Response:
        """Send one authenticated request; raise MediaApiError unless the status is expected."""
        all_headers = {"User-Agent": USER_AGENT, "Authorization": authorization_header(self._auth)}
        all_headers.update(headers or {})
        try:
            response = self._session.request(
                method, url, headers=all_headers, timeout=self._timeout, **kwargs
            )
        except requests.RequestException as exc:
            raise MediaClientError(f"{method} {url} failed: {exc}") from exc
        if response.status_code not in expect:
            raise error_from_response(response)
        return response


def format_timestamp(value: datetime) -> str:
    """ISO 8601 UTC with microseconds and `Z`; a naive datetime is taken as UTC."""
    return _utc(value).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _form_fields(**values: Any) -> list[tuple[str, str]]:
    """Form strings for the given (non-None) upload fields."""
    fields = []
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | str):
            text = str(value)
        elif isinstance(value, Mapping):
            text = json.dumps(value)
        else:
            raise TypeError(f"{name} must be a string, an int, a bool or a mapping")
        fields.append((name, text))
    return fields


@contextmanager
def _opened(source: str | os.PathLike[str] | Readable) -> Iterator[tuple[Readable, str]]:
    """The file to upload and a default file name for it (opened here if given as a path)."""
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        with path.open("rb") as file:
            yield file, path.name
    else:
        name = getattr(source, "name", None)
        yield source, os.path.basename(name) if isinstance(name, str) and name else "upload"


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError as exc:
        raise MediaClientError(f"the service sent invalid JSON: {exc}") from exc


def _item(response: requests.Response) -> MediaItem:
    data = _json(response)
    try:
        return MediaItem.from_json(data)
    except (ValueError, TypeError, AttributeError) as exc:
        raise MediaClientError(f"unexpected media item: {exc}") from exc
