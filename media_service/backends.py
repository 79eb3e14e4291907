"""Choose and build the adapters named by the configuration."""

from __future__ import annotations

from media_service.settings import Settings
from media_service.storage.interfaces import Backends, BlobStore


def open_backends(settings: Settings, *, ensure_schema: bool = True) -> Backends:
    """Build the blob store, media repository and credential store for `settings`."""
    blobs = _open_blob_store(settings)
    if settings.database_kind == "sqlite":
        from media_service.storage.sqlite import (
            SqliteCredentialStore,
            SqliteDatabase,
            SqliteMediaRepository,
        )

        database = SqliteDatabase.from_settings(settings)
        backends = Backends(
            blobs=blobs,
            media=SqliteMediaRepository(database),
            credentials=SqliteCredentialStore(database),
            closers=[database],
        )
    else:
        from media_service.storage.mongo import (
            MongoCredentialStore,
            MongoDatabase,
            MongoMediaRepository,
        )

        mongo = MongoDatabase.from_settings(settings)
        backends = Backends(
            blobs=blobs,
            media=MongoMediaRepository.from_database(mongo),
            credentials=MongoCredentialStore.from_database(mongo),
            closers=[mongo],
        )
    if ensure_schema:
        backends.media.ensure_schema()
        backends.credentials.ensure_schema()
    return backends


def _open_blob_store(settings: Settings) -> BlobStore:
    if settings.storage_kind == "file":
        from media_service.storage.files import FileBlobStore

        return FileBlobStore.from_settings(settings)
    from media_service.storage.s3 import S3BlobStore

    return S3BlobStore.from_settings(settings)


def describe(settings: Settings) -> dict[str, str]:
    """The chosen backends, without credentials (for the start-up log line)."""
    from urllib.parse import urlsplit

    db = urlsplit(settings.database_url)
    database = f"{db.scheme}://{db.hostname or ''}{db.path}" if db.scheme != "sqlite" else settings.database_url
    return {"database": database, "storage": settings.storage_url}
