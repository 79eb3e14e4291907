"""Choose and build the adapters named by the configuration."""

from __future__ import annotations

import re

from media_service.settings import ConfigError, Settings
from media_service.storage.interfaces import (
    Backends,
    BackendUnavailable,
    BlobStore,
    PresigningBlobStore,
)


def open_backends(settings: Settings, *, prepare_database: bool = True) -> Backends:
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
            media=MongoMediaRepository(mongo),
            credentials=MongoCredentialStore(mongo),
            closers=[mongo],
        )
    if prepare_database:
        backends.media.prepare_database()
        backends.credentials.prepare_database()
    return backends


def _open_blob_store(settings: Settings) -> BlobStore:
    if settings.storage_kind == "file":
        from media_service.storage.files import FileBlobStore

        return FileBlobStore.from_settings(settings)
    from media_service.storage.s3 import S3BlobStore

    store = S3BlobStore.from_settings(settings)
    if settings.download_redirect == "presigned":
        _check_presigning(store)
    return store


def _check_presigning(store: PresigningBlobStore) -> None:
    """Refuse to start in presigned mode when no URL can be signed (no S3 credentials)."""
    try:
        store.presigned_url("start-up-check", 60)  # local: signing sends nothing
    except BackendUnavailable as exc:
        raise ConfigError(
            f"MEDIA_DOWNLOAD_REDIRECT=presigned: cannot sign S3 URLs ({exc.detail})"
        ) from None


def describe(settings: Settings) -> dict[str, str]:
    """The chosen backends, without credentials (for the start-up log line)."""
    return {
        "database": redact_url(settings.database_url),
        "storage": redact_url(settings.storage_url),
    }


def redact_url(url: str) -> str:
    """Scheme, hosts and path of `url`: never user:password, query or fragment.

    The query goes too: MongoDB URLs may carry secrets there (`authMechanismProperties`,
    `tlsCertificateKeyFilePassword`). What does not parse as plain hosts and a path (say a
    password with an unescaped "/") is replaced whole rather than guessed at.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "<redacted>"
    if scheme.lower() in ("sqlite", "file"):
        # A local path: no credentials, and "@" is a legal character in it.
        return f"{scheme}://{rest.split('?', 1)[0].split('#', 1)[0]}"
    match = _LOCATION.fullmatch(rest)
    if match is None:
        return f"{scheme}://<redacted>"
    return f"{scheme}://{match['hosts']}{match['path'] or ''}"


_HOST = r"(?:[A-Za-z0-9._%-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?"
# [userinfo@]host[:port][,host[:port]...][/path][?query][#fragment]
_LOCATION = re.compile(
    rf"(?:[^@/?#]*@)?(?P<hosts>(?:{_HOST}(?:,{_HOST})*)?)(?P<path>/[^@?#]*)?(?:[?#].*)?",
    re.DOTALL,
)
