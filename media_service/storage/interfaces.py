"""The three ports the service layer talks to, the domain records they carry, and their errors.

Nothing above the adapters imports botocore, pymongo or sqlite3: adapters translate backend
failures into the exceptions defined here (`BackendUnavailable`, `BlobNotFound`, ...).
"""

from __future__ import annotations

import contextlib
import enum
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import BinaryIO, Protocol, runtime_checkable

# --------------------------------------------------------------------------- errors


class StorageError(Exception):
    """Base class of every error an adapter raises."""


class BackendUnavailable(StorageError):
    """The backend could not be reached or did not answer in time (maps to 503)."""

    def __init__(self, port: str, detail: str = "") -> None:
        super().__init__(f"{port} unavailable: {detail}" if detail else f"{port} unavailable")
        self.port = port
        self.detail = detail


class StorageFull(BackendUnavailable):
    """The backend's disk (or quota) is full: nothing was written (maps to 507)."""


class BlobNotFound(StorageError):
    """No blob is stored under the key."""


class AlreadyExists(StorageError):
    """A record with the same identity already exists."""


class InvalidValue(StorageError, ValueError):
    """The backend cannot store or look up this value (text that is not valid Unicode, an
    integer beyond 64 bits, ...). The schemas refuse such input first; this is the adapters'
    translation for whatever slips past them (maps to 400, never to a 500)."""


# --------------------------------------------------------------------------- domain records


class ItemState(enum.StrEnum):
    """Life cycle of a media item: only READY items are ever visible through the API."""

    PENDING = "pending"  # document written, bytes being stored
    READY = "ready"  # bytes and metadata durable; visible
    DELETING = "deleting"  # tombstone: bytes being removed, then the document


@dataclass(frozen=True, slots=True)
class AudioFacts:
    """What the service read from an item's bytes when they are audio (service/audio.py)."""

    duration_ms: int
    sample_rate: int
    channels: int
    codec: str  # pcm, mp3, vorbis, opus, flac, aac
    bit_rate: int | None  # bits per second; PCM: sample_rate * channels * bits per sample


@dataclass(frozen=True, slots=True)
class MediaItem:
    """One media item's metadata document (the bytes live in a blob store under its `id`)."""

    id: str
    account_id: str
    application_id: str | None
    original_file_name: str
    mime_type: str
    store_id: str
    store_meta_params: dict[str, str]
    max_downloads_allowed: int
    times_downloaded: int
    etag: str
    media_size: int
    time_created: datetime  # timezone-aware UTC, millisecond precision
    time_last_updated: datetime  # moves on every metadata or content change
    time_content_modified: datetime  # the last content change: the download's Last-Modified
    public: bool
    metadata_primary: str | None = None
    metadata_secondary: str | None = None
    title: str | None = None
    description: str | None = None
    source_url: str | None = None
    state: ItemState = ItemState.READY
    # Read-only facts derived from the bytes. `audio_examined` tells "examined: not audio"
    # (False/None -> True/None) from "never examined" (items stored before audio facts
    # existed, until `media-service backfill-audio` reads them).
    audio: AudioFacts | None = None
    audio_examined: bool = False
    # From this instant on the item is gone for everyone, whether or not the sweeper has
    # removed it yet (None: never). Documents from before expiry existed have none.
    expires_at: datetime | None = None


# Fields a client may change with PUT /info (and set at upload).
UPDATABLE_FIELDS: frozenset[str] = frozenset(
    {
        "public",
        "metadata_primary",
        "metadata_secondary",
        "title",
        "description",
        "mime_type",
        "max_downloads_allowed",
        "expires_at",
    }
)


@dataclass(frozen=True, slots=True)
class SearchScope:
    """Whose items a search sees: an account (Basic auth) or one application of it (JWT)."""

    account_id: str
    application_id: str | None = None


@dataclass(frozen=True, slots=True)
class SearchQuery:
    """A page of a time-window search; both bounds inclusive, ordered by (time_created, id)."""

    scope: SearchScope
    start_time: datetime
    end_time: datetime | None
    ascending: bool
    offset: int
    limit: int
    # Items expired by this instant are neither listed nor counted (None: the current time).
    now: datetime | None = None


@dataclass(frozen=True, slots=True)
class SearchPage:
    total: int
    items: list[MediaItem]


class CountOutcome(enum.Enum):
    COUNTED = "counted"
    LIMIT_REACHED = "limit_reached"
    NOT_FOUND = "not_found"


@dataclass(frozen=True, slots=True)
class CountResult:
    outcome: CountOutcome
    times_downloaded: int | None = None  # the value after the increment when COUNTED


@dataclass(frozen=True, slots=True)
class Account:
    api_key: str
    secret_salt: bytes  # random per account
    secret_digest: bytes  # HMAC-SHA256(salt, secret): see auth/basic.py for why a fast hash
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class Application:
    application_id: str
    api_key: str  # the owning account
    public_keys: tuple[str, ...]  # PEM; several while a key is being rotated
    enabled: bool = True


class KeyRemoval(enum.Enum):
    """What `CredentialStore.remove_public_key` did."""

    REMOVED = "removed"
    NO_APPLICATION = "no_application"
    NO_SUCH_KEY = "no_such_key"
    LAST_KEY = "last_key"  # refused: an application always keeps at least one key


@dataclass(frozen=True, slots=True)
class Usage:
    """READY items and their total bytes for one (account, application) pair."""

    account_id: str
    application_id: str | None  # None: items uploaded with Basic auth (no application)
    items: int
    bytes: int


@dataclass(frozen=True, slots=True)
class Quota:
    """An account's limits (0 = unlimited) and usage: every item holding a reservation, READY
    ones and uploads in flight, whatever application uploaded it."""

    account_id: str
    max_bytes: int
    max_items: int
    bytes: int
    items: int


class Reservation(enum.Enum):
    """What a quota reservation did."""

    RESERVED = "reserved"
    QUOTA_EXCEEDED = "quota_exceeded"  # nothing reserved: it would pass a limit
    NOT_PENDING = "not_pending"  # nothing reserved: the upload was rolled back meanwhile


@dataclass(frozen=True, slots=True)
class StoredBlob:
    """What a blob store reports after a durable write."""

    key: str
    size: int


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """One entry of a blob listing (for the sweeper)."""

    key: str
    size: int
    last_modified: datetime


# --------------------------------------------------------------------------- streams

#: How much is read at a time: request bodies, blob writes and blob reads alike (1 MiB).
CHUNK_SIZE = 1024 * 1024


class Readable(Protocol):
    """What bytes are read from: a request body, a part of one, a fetched URL, a staged file."""

    def read(self, size: int = -1, /) -> bytes: ...


# --------------------------------------------------------------------------- blob keys

# Keys are server-generated (UUIDs). The pattern also rules out "", ".", "..", separators and
# hidden names, so a key is a safe single file name and a plain S3 key segment alike.
BLOB_KEY = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")


def check_blob_key(key: str) -> str:
    """Return `key` if it is a plain server-generated name; raise ValueError otherwise."""
    if not isinstance(key, str) or not BLOB_KEY.fullmatch(key):
        raise ValueError(f"invalid blob key: {key!r}")
    return key


# --------------------------------------------------------------------------- ports


class BlobStream(Protocol):
    """An open read of (part of) a blob: iterate for chunks, always close."""

    def __iter__(self) -> Iterator[bytes]: ...

    def close(self) -> None: ...


@runtime_checkable
class BlobStore(Protocol):
    """Where the bytes live. Keys are server-generated (the item id); never a client filename."""

    @property
    def store_id(self) -> str:
        """Short name written into items' `store_id` (`s3`, `file`)."""
        ...

    def put(self, key: str, source: BinaryIO) -> StoredBlob:
        """Read `source` to EOF (via `.read(n)`) and store it durably under `key`.

        Durable means: when this returns, the bytes survive a crash of this process and host.
        Nothing is left visible under `key` if it raises (a partial upload is aborted; a temp
        file is removed). Exceptions raised by `source.read` propagate unchanged.
        """
        ...

    def open(self, key: str, start: int = 0, length: int | None = None) -> BlobStream:
        """Open the bytes [start, start+length) (to the end when length is None) for streaming.

        Raises BlobNotFound if there is no such blob. Chunks are >= 1 MiB except the last.
        """
        ...

    def delete(self, key: str) -> None:
        """Remove the blob; a missing blob is not an error (deletes are retried by the sweeper)."""
        ...

    def list_blobs(self) -> Iterator[BlobInfo]:
        """Every blob under this store's prefix (the sweeper looks for unreferenced ones)."""
        ...

    # What interrupted uploads leave behind: the file store's temp files, S3's open multipart
    # uploads. Each store has one kind; the other's method is a no-op there, so that the
    # sweeper calls both on any store. `referenced` answers which of these keys a document
    # names (MediaRepository.referenced_keys): what no document names is dead.

    def abort_uploads_of(self, key: str) -> int:
        """Drop what a dead upload of `key` left in flight (S3: its open multipart uploads);
        return how many."""
        ...

    def remove_stale_temp(
        self,
        older_than_seconds: float = 3600,
        referenced: Callable[[list[str]], set[str]] | None = None,
    ) -> int:
        """Delete the temp files of dead uploads (file store); return how many."""
        ...

    def abort_stale_uploads(
        self, older_than: datetime, referenced: Callable[[list[str]], set[str]]
    ) -> int:
        """Abort the open multipart uploads of dead uploads started before `older_than` (S3);
        return how many."""
        ...

    def ping(self) -> None:
        """Raise BackendUnavailable unless the store is reachable (for /readyz)."""
        ...


@runtime_checkable
class PresigningBlobStore(Protocol):
    """A blob store whose clients can fetch an object themselves with a signed URL (S3)."""

    def presigned_url(
        self,
        key: str,
        ttl: int,
        *,
        response_headers: dict[str, str] | None = None,
        byte_range: str | None = None,
    ) -> str:
        """A GET URL of the blob valid for `ttl` seconds, answering with `response_headers`.

        With `byte_range` (a Range header value) the URL works only with that exact header.
        Raises BackendUnavailable when no URL can be signed (no credentials).
        """
        ...


@runtime_checkable
class LocalBlobStore(Protocol):
    """A blob store of files that a web server in front may send itself (nginx X-Accel)."""

    def relative_path(self, key: str) -> str:
        """The blob's path below the store's root, made of safe URI characters only."""
        ...


@runtime_checkable
class MediaRepository(Protocol):
    """Metadata documents. Every method is one atomic operation on the database."""

    def prepare_database(self) -> None:
        """Create tables/collections and indexes if missing (idempotent; run at start-up)."""
        ...

    def insert(self, item: MediaItem) -> None:
        """Insert a new document (normally PENDING). Raises AlreadyExists on a duplicate id."""
        ...

    def get(self, item_id: str, *, include_hidden: bool = False) -> MediaItem | None:
        """The item, or None. Only READY items unless include_hidden (PENDING, DELETING too).

        An expired READY item is still returned: its readers judge expiry at their own instant.
        """
        ...

    def mark_ready(self, item_id: str, changes: dict[str, object]) -> MediaItem | None:
        """Atomically set `changes` and state READY on a PENDING item; None if not PENDING."""
        ...

    def update(self, item_id: str, changes: dict[str, object], now: datetime) -> MediaItem | None:
        """Apply `changes` (keys of UPDATABLE_FIELDS) to a READY item, set time_last_updated=now.

        Returns the updated item, or None if no READY item has that id or it has expired by
        `now` (an expired item is never changed again, so no update brings it back).
        """
        ...

    def count_download(self, item_id: str, *, enforce_limit: bool) -> CountResult:
        """Atomically add one to times_downloaded of a READY item, in one conditional update.

        With enforce_limit the update only happens while
        max_downloads_allowed == 0 or times_downloaded < max_downloads_allowed;
        otherwise LIMIT_REACHED. Never read-then-write.
        """
        ...

    def mark_deleting(
        self, item_id: str, *, expired_by: datetime | None = None
    ) -> MediaItem | None:
        """Tombstone a READY item (state DELETING) and return it; None if no READY item.

        With `expired_by`, only an item whose expires_at is at or before it (the sweeper's
        condition, checked in the same atomic update).
        """
        ...

    def remove(self, item_id: str) -> bool:
        """Delete the document whatever its state; False if there was none."""
        ...

    def search(self, query: SearchQuery) -> SearchPage:
        """READY items of the scope created in [start_time, end_time] and not expired at
        `query.now`, one page, with the total."""
        ...

    def heartbeat(self, item_id: str, now: datetime) -> bool:
        """Record that a PENDING item's upload is alive (its time_last_updated = now).

        False if the item is not PENDING (any more): the sweeper rolled it back, the upload
        should stop. Not durable: a heartbeat lost in a crash only makes a dead upload look dead.
        """
        ...

    def iter_hidden(self, older_than: datetime) -> Iterator[MediaItem]:
        """PENDING items whose heartbeat (time_last_updated) is before `older_than`, whenever
        they were created, and every DELETING item (for the sweeper)."""
        ...

    def iter_ready(self, older_than: datetime) -> Iterator[MediaItem]:
        """READY items created before `older_than` (the sweeper checks their blobs exist)."""
        ...

    def iter_expired(self, now: datetime) -> Iterator[MediaItem]:
        """READY items whose expires_at is at or before `now`, in pages by (expires_at, id)
        through an index on expiry (the sweeper removes them as it goes)."""
        ...

    def heal_counts(self, now: datetime) -> int:
        """Settle the search-count changes of writers that died midway; return how many.

        A no-op on a repository whose counts change atomically with the items (SQLite's
        triggers)."""
        ...

    def referenced_keys(self, keys: list[str]) -> set[str]:
        """Which of these blob keys belong to any document, whatever its state."""
        ...

    def usage(self, account_id: str | None = None) -> list[Usage]:
        """COUNT and SUM(media_size) of READY items per (account_id, application_id), ordered
        by account then application (None first); only `account_id`'s rows when given."""
        ...

    def unexamined_audio(self, after_id: str, limit: int) -> list[MediaItem]:
        """Up to `limit` READY items never examined for audio, with ids > after_id, by id."""
        ...

    def set_audio(self, item_id: str, audio: AudioFacts | None) -> bool:
        """Record a READY item's audio facts (None: not audio) as examined; False if no such
        READY item. Not a metadata change: time_last_updated stays."""
        ...

    def ping(self) -> None:
        """Raise BackendUnavailable unless the database answers (for /readyz)."""
        ...

    # Quotas: a usage counter per account, changed only by atomic conditional updates, so that
    # it is exact across workers and hosts. Removing an item's document (`remove`, whatever its
    # state) gives its reservation back, exactly once.

    def quota(self, account_id: str) -> Quota:
        """The account's limits and usage (all zero for an account never counted)."""
        ...

    def set_quota(self, account_id: str, max_bytes: int | None, max_items: int | None) -> Quota:
        """Set the limits given (0 = unlimited; None = unchanged); usage stays as it is."""
        ...

    def reserve_item(self, account_id: str, item_id: str) -> Reservation:
        """Count one item for a PENDING item just inserted (the first step of an upload)."""
        ...

    def reserve_bytes(self, account_id: str, item_id: str, size: int) -> Reservation:
        """Grow a PENDING item's reservation by `size` bytes, unless that passes max_bytes."""
        ...

    def settle_quota(self, account_id: str, item_id: str, reserved: int) -> None:
        """Record on an item just made READY that it holds `reserved` bytes (idempotent)."""
        ...

    def heal_quotas(self, now: datetime, stale_before: datetime) -> int:
        """Settle or release reservations whose writer died midway (for the sweeper)."""
        ...


@runtime_checkable
class CredentialStore(Protocol):
    """Accounts (API key + hashed secret) and applications (public keys)."""

    def prepare_database(self) -> None: ...

    def add_account(self, account: Account) -> None:
        """Raises AlreadyExists for a known api_key."""
        ...

    def get_account(self, api_key: str) -> Account | None: ...

    def add_application(self, application: Application) -> None:
        """Raises AlreadyExists for a known application_id."""
        ...

    def get_application(self, application_id: str) -> Application | None: ...

    def add_public_key(self, application_id: str, public_key_pem: str) -> bool:
        """Append a key (rotation); False if the application does not exist."""
        ...

    def list_accounts(self) -> list[Account]:
        """Every account, ordered by api_key."""
        ...

    def list_applications(self, api_key: str | None = None) -> list[Application]:
        """Every application (only `api_key`'s when given), ordered by application_id."""
        ...

    def set_account_enabled(self, api_key: str, enabled: bool) -> bool:
        """Enable or disable an account; False if it does not exist."""
        ...

    def set_application_enabled(self, application_id: str, enabled: bool) -> bool:
        """Enable or disable an application; False if it does not exist."""
        ...

    def replace_secret(self, api_key: str, secret_salt: bytes, secret_digest: bytes) -> bool:
        """Store a new salted secret digest in place of the old; False if no such account."""
        ...

    def remove_public_key(self, application_id: str, public_key_pem: str) -> KeyRemoval:
        """Remove one key atomically, refusing (LAST_KEY) to remove an application's last."""
        ...

    def delete_application(self, application_id: str) -> bool:
        """Delete an application and its keys; False if it did not exist."""
        ...

    def delete_account(self, api_key: str) -> bool:
        """Delete an account and every application it owns; False if it did not exist."""
        ...


class Closable(Protocol):
    """A client the backends opened (a database, its connections): closed on shutdown."""

    def close(self) -> None: ...


@dataclass(slots=True)
class Backends:
    """The ports wired for one app (or one CLI run)."""

    blobs: BlobStore
    media: MediaRepository
    credentials: CredentialStore
    closers: list[Closable] = field(default_factory=list)  # what close() closes

    def close(self) -> None:
        """Close every client, last opened first; one that fails does not keep the others open
        (the first error is raised once all have been tried). A later call on a port reopens."""
        with contextlib.ExitStack() as stack:
            for closer in self.closers:
                stack.callback(closer.close)
