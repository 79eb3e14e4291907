"""MediaService: who may see what, and the upload, update, download and delete sequences.

The two stores share no transaction, so every multi-step change is ordered so that a crash at
any point leaves either nothing visible or a state the sweeper (service/sweeper.py) finishes:

* upload: insert a PENDING document -> write the bytes under the item's own id -> mark READY.
  Only READY items are ever visible. While bytes flow the upload refreshes the document's
  heartbeat (its time_last_updated); the sweeper rolls back PENDING items whose heartbeat is
  older than MEDIA_UPLOAD_STALE_SECONDS, so a crashed upload goes within minutes and a live one
  is never taken for dead, however long it runs.
* delete: mark DELETING (invisible at once) -> delete the bytes -> remove the document.
  A DELETING item left behind is finished by the sweeper.
* expiry: from its expires_at on, an item is treated as gone by every read here and by the
  repository's searches and updates; the sweeper later deletes it by the same sequence.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, cast

from media_service.auth import Principal
from media_service.errors import (
    ApiError,
    ContentUnavailable,
    Forbidden,
    InsufficientStorage,
    LimitReached,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    UnprocessableContent,
    UploadAbandoned,
    ValidationFailed,
)
from media_service.schemas.expiry import Expiry
from media_service.schemas.media import file_name_problem
from media_service.service.audio import probe_blob
from media_service.service.disk import DiskGuard
from media_service.service.mime_types import DEFAULT_MIME_TYPE, choose_mime_type
from media_service.service.quota import QuotaMeter
from media_service.service.streams import HashingReader
from media_service.service.uploads import (
    Problems,
    UploadField,
    UploadFile,
    receive_form,
    receive_url_fields,
)
from media_service.service.url_fetch import (
    UrlFetchFailed,
    UrlFetchPolicy,
    UrlRefused,
    UrlTooLarge,
    open_url,
)
from media_service.settings import Settings
from media_service.storage.interfaces import (
    AudioFacts,
    Backends,
    BlobNotFound,
    BlobStream,
    CountOutcome,
    ItemState,
    LocalBlobStore,
    MediaItem,
    PresigningBlobStore,
    Readable,
    SearchPage,
    SearchQuery,
    SearchScope,
    StorageError,
    StorageFull,
)

log = logging.getLogger(__name__)

SEARCH_DEFAULT_WINDOW = timedelta(days=7)


def utc_now() -> datetime:
    """Now, in UTC, truncated to milliseconds (the precision every store keeps)."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


@dataclass(frozen=True)
class StagedUpload:
    """Bytes stored and a PENDING document written; not yet visible."""

    item_id: str  # also the key of its bytes in the blob store
    time_created: datetime
    size: int
    etag: str
    sha256: str
    head: bytes
    file_name: str | None
    part_content_type: str | None
    quota: QuotaMeter | None = None  # the account's reservation, settled once READY


@dataclass(frozen=True)
class DownloadAccess:
    """An item a download request may read, and whether the requester owns it."""

    item: MediaItem
    by_owner: bool


class Heartbeat:
    """Tell the sweeper an upload is alive: refresh its PENDING document at most every
    `interval`, whenever a chunk of its bytes goes by."""

    def __init__(
        self,
        service: MediaService,
        item_id: str,
        started: datetime,
        interval: timedelta,
    ) -> None:
        self._service = service
        self._item_id = item_id
        self._last = started
        self._interval = interval

    def __call__(self, _size: int = 0) -> None:
        now = self._service.clock()
        if now - self._last < self._interval:
            return
        self._last = now
        try:
            alive = self._service.media.heartbeat(self._item_id, now)
        except StorageError as error:
            # A missed beat is not fatal (the next one may land); mark_ready decides anyway.
            log.warning("heartbeat of upload %s failed: %s", self._item_id, error)
            return
        if not alive:
            raise UploadAbandoned()


class MediaService:
    """The rules of the API, over the three ports."""

    def __init__(
        self,
        backends: Backends,
        settings: Settings,
        clock: Callable[[], datetime] = utc_now,
        disk: DiskGuard | None = None,
    ) -> None:
        self.blobs = backends.blobs
        self.media = backends.media
        self.settings = settings
        self.clock = clock
        self.disk = disk if disk is not None else DiskGuard.from_settings(settings)
        # Built once: every url upload is fetched under the same rules.
        self.url_policy = UrlFetchPolicy(
            allow_private=settings.url_fetch_allow_private,
            max_bytes=settings.max_upload_bytes,
            connect_timeout=settings.url_fetch_connect_timeout,
            read_timeout=settings.url_fetch_read_timeout,
            total_timeout=settings.url_fetch_total_timeout,
        )

    # ------------------------------------------------------------------ visibility

    def get_owned(self, principal: Principal, item_id: str) -> MediaItem:
        """The READY item if `principal` may act on it: 404 for another account, 403 for another
        application of the same account (SPEC §2)."""
        item = self._live(self.media.get(item_id))
        if item is None or item.account_id != principal.account_id:
            raise NotFound("No media item with that id.")
        if principal.application_id is not None and item.application_id != principal.application_id:
            raise Forbidden("This media item belongs to another application.")
        return item

    def get_for_download(self, principal: Principal | None, item_id: str) -> DownloadAccess:
        """The item if this request may read its content.

        Owners always may (and are never limited). A public item is open to everyone else too,
        whatever credentials they send (clients often authenticate every call), until its
        anonymous download limit is reached.
        """
        item = self._live(self.media.get(item_id))
        if item is None:
            raise NotFound("No media item with that id.")
        if principal is not None and principal.account_id == item.account_id:
            if principal.application_id in (None, item.application_id):
                return DownloadAccess(item, by_owner=True)
        if not item.public:
            if principal is None:
                raise Unauthorized("This media item is private: authentication required.")
            self.get_owned(principal, item_id)  # raises the 404 or 403 of SPEC §2
        if _limit_reached(item):
            raise LimitReached()
        return DownloadAccess(item, by_owner=False)

    def _live(self, item: MediaItem | None) -> MediaItem | None:
        """`item` unless it has expired: from expires_at on it is gone for everyone, whether or
        not the sweeper has removed it yet."""
        if item is None or (item.expires_at is not None and item.expires_at <= self.clock()):
            return None
        return item

    def expiry_time(self, expiry: Expiry | None, *, on_upload: bool) -> datetime | None:
        """The instant `expiry` (a ttl or an instant, from schemas/expiry.py) names, judged by
        this service's clock; None: never.

        On upload, asking for nothing (or an empty value) means MEDIA_DEFAULT_TTL applies; on
        update, an empty value removes the expiry. An instant that is not in the future is 400.
        """
        now = self.clock()
        if expiry is None or (expiry.never and on_upload):
            default = self.settings.default_ttl_seconds
            return now + timedelta(seconds=default) if default else None
        if expiry.ttl_seconds is not None:
            return now + timedelta(seconds=expiry.ttl_seconds)
        if expiry.at is None:
            return None
        # At the precision stores keep: a sub-millisecond future would be stored as now.
        at = expiry.at.replace(microsecond=expiry.at.microsecond // 1000 * 1000)
        if at <= now:
            reason = "Must be in the future."
            raise ValidationFailed(
                f"Invalid value for: expires_at ({reason})",
                invalid_parameters=[{"name": "expires_at", "reason": reason}],
            )
        return at

    # ------------------------------------------------------------------ upload

    def upload_form(
        self, principal: Principal, parts: Iterable[UploadField | UploadFile]
    ) -> MediaItem:
        """A new, visible item from an upload's multipart form, read part by part: its file
        (or its `url`'s bytes) and its fields. The sequence is service/uploads.py's."""
        return receive_form(self, principal, parts)

    def upload_url_form(
        self, principal: Principal, fields: dict[str, str], problems: Problems
    ) -> MediaItem:
        """A new, visible item from an upload form without a file: the bytes at its `url`.
        `problems` are what the caller found wrong with the body already."""
        return receive_url_fields(self, principal, fields, problems)

    def admit_upload(self, announced_bytes: int | None) -> None:
        """Refuse (507) an upload that the free-space reserve has no room for, before its body
        is read; `announced_bytes` is the request's Content-Length, when it has one."""
        self.disk.admit(announced_bytes)

    def stage_upload(
        self,
        principal: Principal,
        source: Readable,
        *,
        file_name: str | None,
        part_content_type: str | None,
        source_url: str | None = None,
    ) -> StagedUpload:
        """Insert a PENDING document, then stream `source` into the blob store under its id."""
        now = self.clock()
        item_id = str(uuid.uuid4())
        pending = MediaItem(
            id=item_id,
            account_id=principal.account_id,
            application_id=principal.application_id,
            original_file_name=file_name or "",
            mime_type=DEFAULT_MIME_TYPE,
            store_id=self.blobs.store_id,
            store_meta_params={},
            max_downloads_allowed=0,
            times_downloaded=0,
            etag="",
            media_size=0,
            time_created=now,
            time_last_updated=now,
            time_content_modified=now,
            public=False,
            source_url=source_url,
            state=ItemState.PENDING,
        )
        self.disk.admit()  # also for url fetches, which have no request body to announce
        self.media.insert(pending)
        quota = QuotaMeter(self.media, principal.account_id, item_id)
        try:
            quota.begin()
        except BaseException:
            self._forget(item_id)
            raise
        heartbeat = Heartbeat(
            self, item_id, now, timedelta(seconds=self.settings.heartbeat_seconds)
        )

        def on_chunk(size: int) -> None:
            self.disk.check_chunk(size)
            quota.grow(size)  # before the chunk is stored: 403 the moment it would pass
            heartbeat(size)

        reader = HashingReader(source, self.settings.max_upload_bytes, on_chunk=on_chunk)
        try:
            self.blobs.put(item_id, reader)  # type: ignore[arg-type]
        except BaseException:
            self._forget(item_id)
            raise
        return StagedUpload(
            item_id=item_id,
            time_created=now,
            size=reader.size,
            etag=reader.md5_hex,
            sha256=reader.sha256_hex,
            head=reader.head,
            file_name=file_name,
            part_content_type=part_content_type,
            quota=quota,
        )

    def stage_from_url(self, principal: Principal, url: str) -> StagedUpload:
        """Fetch `url` (behind the SSRF guard) and stage its bytes as an upload's file."""
        try:
            with open_url(url, self.url_policy) as fetched:
                file_name = fetched.filename
                if file_name is not None and file_name_problem(file_name):
                    file_name = None
                return self.stage_upload(
                    principal,
                    fetched,
                    file_name=file_name,
                    part_content_type=fetched.content_type,
                    source_url=url,
                )
        except UrlRefused as error:
            raise ValidationFailed(
                f"The url cannot be fetched: {error.detail}",
                invalid_parameters=[{"name": "url", "reason": error.detail}],
            ) from None
        except UrlTooLarge as error:
            raise PayloadTooLarge(f"The file at the url is too large: {error.detail}") from None
        except UrlFetchFailed as error:
            raise UnprocessableContent(f"The url could not be fetched: {error.detail}") from None

    def publish_upload(self, staged: StagedUpload, fields: dict[str, Any]) -> MediaItem:
        """Make a staged upload visible with its validated fields (the 201 moment)."""
        try:
            # A ttl counts from now, when the item becomes visible, not from the upload's start.
            expires_at = self.expiry_time(fields.pop("expiry", None), on_upload=True)
        except ApiError:
            self.abandon_upload(staged)
            raise
        name = fields.pop("filename", None) or staged.file_name or staged.item_id
        mime_type = fields.pop("mime_type", None) or choose_mime_type(
            staged.part_content_type, staged.head, name
        )
        changes: dict[str, Any] = {
            "original_file_name": name,
            "mime_type": mime_type,
            "etag": staged.etag,
            "media_size": staged.size,
            "store_meta_params": {"filesize": str(staged.size), "sha256": staged.sha256},
            "public": fields.pop("public", False),
            "max_downloads_allowed": fields.pop("max_downloads_allowed", 0) or 0,
            # While PENDING this was the heartbeat; a new item was last updated when created.
            "time_last_updated": staged.time_created,
            "expires_at": expires_at,
        }
        audio = self._examine_audio(staged)
        if audio is not None:
            changes["audio"], changes["audio_examined"] = audio
        for key in ("metadata_primary", "metadata_secondary", "title", "description"):
            if fields.get(key) is not None:
                changes[key] = fields[key]
        try:
            item = self.media.mark_ready(staged.item_id, changes)
        except BaseException:
            self.abandon_upload(staged)
            raise
        if item is None:  # the sweeper rolled it back: its heartbeat went stale
            self.abandon_upload(staged)
            raise UploadAbandoned()
        if staged.quota is not None:
            staged.quota.settle()
        return item

    def _examine_audio(self, staged: StagedUpload) -> tuple[AudioFacts | None, bool] | None:
        """(facts or None, examined) from bounded reads of the stored bytes; None when the
        store could not be read, so the item is published unexamined for backfill-audio."""
        try:
            return probe_blob(self.blobs, staged.item_id, staged.size), True
        except Exception as error:  # noqa: BLE001 - audio facts never fail an upload
            log.warning("audio facts of %s left for backfill: %s", staged.item_id, error)
            return None

    def abandon_upload(self, staged: StagedUpload) -> None:
        """Remove a staged upload (best effort: the sweeper removes whatever this misses)."""
        self._forget(staged.item_id)

    def _forget(self, item_id: str) -> None:
        # The document first: if a lost reply hid a successful mark_ready, the item is already
        # READY, and removing the bytes first could leave it visible without them. A blob left
        # behind is unreferenced, and the sweeper removes it.
        try:
            self.media.remove(item_id)
            self.blobs.delete(item_id)
        except StorageError as error:
            log.warning("cleanup of %s deferred to the sweeper: %s", item_id, error)

    # ------------------------------------------------------------------ update, delete

    def update(self, principal: Principal, item_id: str, changes: dict[str, Any]) -> MediaItem:
        self.get_owned(principal, item_id)
        if "max_downloads_allowed" in changes and changes["max_downloads_allowed"] is None:
            changes["max_downloads_allowed"] = 0
        if "expiry" in changes:
            changes["expires_at"] = self.expiry_time(changes.pop("expiry"), on_upload=False)
        # The repository refuses an item that expired since get_owned: nothing revives it.
        item = self.media.update(item_id, changes, self.clock())
        if item is None:  # deleted (or expired) meanwhile
            raise NotFound("No media item with that id.")
        return item

    def delete(self, principal: Principal, item_id: str) -> None:
        self.get_owned(principal, item_id)
        item = self.media.mark_deleting(item_id)
        if item is None:  # a concurrent delete won
            raise NotFound("No media item with that id.")
        # From here the item is invisible; if either step fails the sweeper finishes the job.
        try:
            self.blobs.delete(item.id)
            self.media.remove(item_id)
        except StorageError as error:
            log.warning("delete of %s left to the sweeper: %s", item_id, error)

    # ------------------------------------------------------------------ search

    def search(
        self,
        principal: Principal,
        *,
        ascending: bool,
        page_index: int,
        page_size: int,
        start_time: datetime | None,
        end_time: datetime | None,
    ) -> SearchPage:
        scope = SearchScope(principal.account_id, principal.application_id)
        start = start_time if start_time is not None else self.clock() - SEARCH_DEFAULT_WINDOW
        query = SearchQuery(
            scope=scope,
            start_time=start,
            end_time=end_time,
            ascending=ascending,
            offset=page_index * page_size,
            limit=page_size,
            now=self.clock(),
        )
        return self.media.search(query)

    # ------------------------------------------------------------------ download

    def open_content(self, item: MediaItem, start: int, length: int) -> BlobStream:
        """Open the item's bytes; 404 if it was deleted since `item` was read, 503 if lost."""
        try:
            return self.blobs.open(item.id, start, length)
        except BlobNotFound:
            raise self._missing_content(item) from None

    def read_content(self, item: MediaItem, start: int, length: int) -> bytes:
        """The item's bytes [start, start+length) at once (a small download); fails as
        open_content does, and with 503 too when the blob holds fewer bytes than that."""
        stream = self.open_content(item, start, length)
        try:
            data = b"".join(stream)
        finally:
            stream.close()
        if len(data) != length:
            # Shorter than its record: bytes lost behind the service's back, as in
            # _missing_content. Sending fewer than Content-Length would hang the client.
            log.error(
                "media item %s is ready but its content in the %s store is shorter than its "
                "record (%d bytes read of %d)",
                item.id,
                self.blobs.store_id,
                len(data),
                length,
            )
            raise ContentUnavailable()
        return data

    def check_content(self, item: MediaItem) -> None:
        """Fail as open_content would, reading nothing: HEAD must answer what GET answers."""
        self.open_content(item, 0, 0).close()

    def presigned_download_url(
        self,
        item: MediaItem,
        *,
        response_headers: dict[str, str],
        byte_range: str | None = None,
    ) -> str:
        """A URL of the item's bytes on S3, valid for MEDIA_DOWNLOAD_REDIRECT_TTL seconds."""
        store = cast(PresigningBlobStore, self.blobs)  # Settings.validate: presigned means S3
        return store.presigned_url(
            item.id,
            self.settings.download_redirect_ttl,
            response_headers=response_headers,
            byte_range=byte_range,
        )

    def accel_path(self, item: MediaItem) -> str:
        """The item's file below the file store's root, for nginx's X-Accel-Redirect."""
        store = cast(LocalBlobStore, self.blobs)  # Settings.validate: accel means files
        return store.relative_path(item.id)

    def _missing_content(self, item: MediaItem) -> ApiError:
        current = self._live(self.media.get(item.id))
        if current is None:
            # Deleted between the metadata read and the blob open (a delete removes the bytes
            # once the tombstone hides the item): what a request after the delete answers.
            return NotFound("No media item with that id.")
        # Still READY without its bytes: lost behind the service's back (an operator's delete, a
        # restore that missed them, a replica behind). 503, not 404: the item does exist (its
        # /info and searches say so), the fault is the server's, and it can be repaired by
        # putting the bytes back; a 404 would tell clients to forget an item that is still
        # listed, and would hide the fault among ordinary misses. The sweeper counts these.
        log.error(
            "media item %s is ready but its content is missing from the %s store",
            item.id,
            self.blobs.store_id,
        )
        return ContentUnavailable()

    def count_download(self, access: DownloadAccess) -> None:
        """Count one download; all but the owner are refused once the limit is reached.

        When the count cannot be written for lack of space, an item without a limit is served
        uncounted (the count is a statistic there), and an item with one is refused with 507:
        serving it uncounted could let one more anonymous download through than its limit.
        """
        try:
            result = self.media.count_download(access.item.id, enforce_limit=not access.by_owner)
        except StorageFull:
            if access.item.max_downloads_allowed == 0:
                log.warning("download of %s served uncounted: disk full", access.item.id)
                return
            raise InsufficientStorage(
                "This item has a download limit and its download cannot be counted: "
                "the database has no space left. Retry later."
            ) from None
        if result.outcome is CountOutcome.LIMIT_REACHED:
            raise LimitReached()
        if result.outcome is CountOutcome.NOT_FOUND:
            raise NotFound("No media item with that id.")


def _limit_reached(item: MediaItem) -> bool:
    return 0 < item.max_downloads_allowed <= item.times_downloaded
