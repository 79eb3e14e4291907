"""Configuration: one frozen Settings value, read from the environment only when asked to."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote, urlsplit

DEFAULT_MAX_UPLOAD_BYTES = 100 * 1024 * 1024
DEFAULT_MIN_FREE_BYTES = 256 * 1024 * 1024
DEFAULT_SQLITE_SPARE_BYTES = 8 * 1024 * 1024
DOWNLOAD_REDIRECT_MODES = ("off", "presigned", "accel")
MAX_PRESIGNED_TTL = 7 * 24 * 3600  # the longest a SigV4 presigned URL may be valid
MAX_TTL_SECONDS = 315_360_000  # ten years of 365 days: the longest ttl anyone may set
# An upload to S3 streams in parts of this size (its length is not known ahead), and S3 takes at
# most S3_MAX_PARTS parts: the largest upload an S3 store can accept is their product (48.8 GiB).
S3_PART_BYTES = 5 * 1024 * 1024
S3_MAX_PARTS = 10_000


class ConfigError(ValueError):
    """Invalid configuration; the message is one line naming the variable and what is wrong."""


@dataclass(frozen=True)
class Settings:
    """Everything the app, the CLI and the sweeper need to know about their environment."""

    database_url: str
    storage_url: str
    data_dir: Path = Path("var")
    public_base_url: str | None = None
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES
    url_fetch_allow_private: bool = False
    url_fetch_connect_timeout: float = 5.0
    url_fetch_read_timeout: float = 15.0
    url_fetch_total_timeout: float = 120.0
    trusted_proxies: int = 0  # how many X-Forwarded-* hops to trust
    backend_timeout: float = 5.0  # seconds, for every database and blob-store call
    s3_max_pool_connections: int = 32  # per worker: one per thread that may talk to S3 at once
    sweep_grace_seconds: int = 3600  # an unreferenced blob younger than this is left alone
    # A PENDING item whose heartbeat is older than this is a dead upload, whatever its age. An
    # upload beats once per body read of up to 1 MiB, so this must exceed 1 MiB at the minimum
    # upload rate: 512 s at 2 KiB/s.
    upload_stale_seconds: int = 900
    # Uploads are refused (507) when they would leave less than this free on a local volume.
    min_free_bytes: int = DEFAULT_MIN_FREE_BYTES
    # Pre-allocated next to the SQLite database; given back when a delete finds the disk full.
    sqlite_spare_bytes: int = DEFAULT_SQLITE_SPARE_BYTES
    upload_min_rate: int = 2048  # bytes/s an upload body must average after the window; 0: off
    upload_rate_window: float = 30.0  # seconds of grace before the minimum rate applies
    # New items that set neither ttl nor expires_at expire this many seconds after upload; 0: never.
    default_ttl_seconds: int = 0
    resumable_expiry_seconds: int = 24 * 3600  # an unfinished tus upload lives this long
    resumable_lock_seconds: int = 60  # a PATCH's lease on its upload, renewed while bytes flow
    log_level: str = "INFO"
    # Offloaded downloads: "presigned" answers a GET with a 302 to S3, "accel" hands the bytes of
    # the file store to nginx (X-Accel-Redirect); "off" streams them through the service.
    download_redirect: str = "off"
    download_redirect_ttl: int = 60  # seconds a presigned URL stays valid
    s3_public_endpoint: str | None = None  # the S3 endpoint clients reach, for presigned URLs

    @property
    def heartbeat_seconds(self) -> float:
        """How often an upload refreshes its heartbeat: five beats per stale period."""
        return self.upload_stale_seconds / 5

    @property
    def database_kind(self) -> str:
        return urlsplit(self.database_url).scheme

    @property
    def storage_kind(self) -> str:
        return urlsplit(self.storage_url).scheme

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **changes)  # type: ignore[arg-type]

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Read and validate MEDIA_* variables; raise ConfigError with a one-line message."""
        env = os.environ if environ is None else environ
        data_dir = Path(env.get("MEDIA_DATA_DIR") or "var").resolve()
        # sqlite:////abs/path (SQLAlchemy's convention: 3 slashes + the absolute path's own)
        database_url = env.get("MEDIA_DATABASE_URL") or f"sqlite:///{data_dir / 'media.db'}"
        storage_url = env.get("MEDIA_STORAGE_URL") or (data_dir / "blobs").as_uri()
        settings = cls(
            database_url=database_url,
            storage_url=storage_url,
            data_dir=data_dir,
            public_base_url=_optional_base_url(env, "MEDIA_PUBLIC_BASE_URL"),
            max_upload_bytes=_int(env, "MEDIA_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD_BYTES, 1),
            url_fetch_allow_private=_bool(env, "MEDIA_URL_FETCH_ALLOW_PRIVATE", False),
            url_fetch_connect_timeout=_float(env, "MEDIA_URL_FETCH_CONNECT_TIMEOUT", 5.0),
            url_fetch_read_timeout=_float(env, "MEDIA_URL_FETCH_READ_TIMEOUT", 15.0),
            url_fetch_total_timeout=_float(env, "MEDIA_URL_FETCH_TOTAL_TIMEOUT", 120.0),
            trusted_proxies=_int(env, "MEDIA_TRUSTED_PROXIES", 0, 0),
            backend_timeout=_float(env, "MEDIA_BACKEND_TIMEOUT", 5.0),
            s3_max_pool_connections=_int(env, "MEDIA_S3_MAX_POOL_CONNECTIONS", 32, 1),
            sweep_grace_seconds=_int(env, "MEDIA_SWEEP_GRACE_SECONDS", 3600, 0),
            upload_min_rate=_int(env, "MEDIA_UPLOAD_MIN_RATE", 2048, 0),
            upload_rate_window=_float(env, "MEDIA_UPLOAD_RATE_WINDOW", 30.0),
            upload_stale_seconds=_int(env, "MEDIA_UPLOAD_STALE_SECONDS", 900, 10),
            default_ttl_seconds=_int(env, "MEDIA_DEFAULT_TTL", 0, 0),
            resumable_expiry_seconds=_int(env, "MEDIA_RESUMABLE_EXPIRY", 24 * 3600, 60),
            resumable_lock_seconds=_int(env, "MEDIA_RESUMABLE_LOCK_SECONDS", 60, 1),
            min_free_bytes=_int(env, "MEDIA_MIN_FREE_BYTES", DEFAULT_MIN_FREE_BYTES, 0),
            sqlite_spare_bytes=_int(env, "MEDIA_SQLITE_SPARE_BYTES", DEFAULT_SQLITE_SPARE_BYTES, 0),
            log_level=_choice(
                env, "MEDIA_LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR")
            ),
            download_redirect=_choice(
                env,
                "MEDIA_DOWNLOAD_REDIRECT",
                "OFF",
                tuple(mode.upper() for mode in DOWNLOAD_REDIRECT_MODES),
            ).lower(),
            download_redirect_ttl=_int(env, "MEDIA_DOWNLOAD_REDIRECT_TTL", 60, 1),
            s3_public_endpoint=_optional_base_url(env, "MEDIA_S3_PUBLIC_ENDPOINT"),
        )
        settings.validate()
        return settings

    def validate(self) -> None:
        """Check the backend URLs (also for Settings built in code, e.g. by tests)."""
        db = urlsplit(self.database_url)
        if db.scheme == "sqlite":
            if not db.path or db.path == "/":
                raise ConfigError(
                    "MEDIA_DATABASE_URL: sqlite URL needs a file path, e.g. sqlite:///var/media.db"
                )
        elif db.scheme in ("mongodb", "mongodb+srv"):
            if not db.path.strip("/"):
                raise ConfigError(
                    "MEDIA_DATABASE_URL: mongodb URL needs a database name, "
                    "e.g. mongodb://host:27017/media"
                )
        else:
            raise ConfigError(
                f"MEDIA_DATABASE_URL: unsupported scheme {db.scheme!r}; "
                "use sqlite:///path/media.db or mongodb://host/dbname"
            )
        st = urlsplit(self.storage_url)
        if st.scheme == "file":
            if not st.path or st.path == "/":
                raise ConfigError(
                    "MEDIA_STORAGE_URL: file URL needs a directory, e.g. file:///srv/media"
                )
        elif st.scheme == "s3":
            if not st.netloc:
                raise ConfigError(
                    "MEDIA_STORAGE_URL: s3 URL needs a bucket, e.g. s3://media/prefix"
                )
            if self.max_upload_bytes > S3_PART_BYTES * S3_MAX_PARTS:
                raise ConfigError(
                    f"MEDIA_MAX_UPLOAD_BYTES: at most {S3_PART_BYTES * S3_MAX_PARTS} with an S3 "
                    f"store (uploads stream in {S3_MAX_PARTS:,} parts of {S3_PART_BYTES} bytes "
                    "at most)"
                )
        else:
            raise ConfigError(
                f"MEDIA_STORAGE_URL: unsupported scheme {st.scheme!r}; "
                "use file:///path or s3://bucket[/prefix]"
            )
        if self.backend_timeout <= 0:
            raise ConfigError("MEDIA_BACKEND_TIMEOUT: must be > 0 seconds")
        if not 0 <= self.default_ttl_seconds <= MAX_TTL_SECONDS:
            raise ConfigError(f"MEDIA_DEFAULT_TTL: must be 0 (never) to {MAX_TTL_SECONDS} seconds")
        self._validate_download_redirect(st.scheme)

    def _validate_download_redirect(self, store: str) -> None:
        """Each offloading mode needs its own store: refuse a mismatch at start-up."""
        mode = self.download_redirect
        if mode not in DOWNLOAD_REDIRECT_MODES:
            raise ConfigError(
                f"MEDIA_DOWNLOAD_REDIRECT: expected one of {', '.join(DOWNLOAD_REDIRECT_MODES)}, "
                f"got {mode!r}"
            )
        if mode == "presigned" and store != "s3":
            raise ConfigError(
                "MEDIA_DOWNLOAD_REDIRECT=presigned needs an s3:// MEDIA_STORAGE_URL "
                f"(the store is {store}://); use accel with a file store behind nginx"
            )
        if mode == "accel" and store != "file":
            raise ConfigError(
                "MEDIA_DOWNLOAD_REDIRECT=accel needs a file:// MEDIA_STORAGE_URL "
                f"(the store is {store}://); use presigned with S3"
            )
        if not 1 <= self.download_redirect_ttl <= MAX_PRESIGNED_TTL:
            raise ConfigError(
                f"MEDIA_DOWNLOAD_REDIRECT_TTL: must be between 1 and {MAX_PRESIGNED_TTL} seconds "
                f"(SigV4's limit), got {self.download_redirect_ttl}"
            )


def local_volumes(settings: Settings) -> dict[str, Path]:
    """The local directories the service writes, by name: the file store's root (its temp
    files live inside it) and the SQLite database's directory. S3 + MongoDB: none."""
    volumes: dict[str, Path] = {}
    if settings.storage_kind == "file":
        volumes["blob_store"] = file_storage_root(settings.storage_url)
    if settings.database_kind == "sqlite":
        volumes["database"] = sqlite_path(settings.database_url).resolve().parent
    return volumes


def sqlite_path(database_url: str) -> Path:
    """`sqlite:///var/media.db` -> var/media.db; `sqlite:////abs/media.db` -> /abs/media.db."""
    path = urlsplit(database_url).path
    return Path(path[1:] if path.startswith("/") else path)


def file_storage_root(storage_url: str) -> Path:
    """`file:///srv/media` -> /srv/media (a standard file URL: always absolute)."""
    return Path(unquote(urlsplit(storage_url).path))


def _raw(env: Mapping[str, str], name: str) -> str | None:
    value = env.get(name)
    return value.strip() if value is not None and value.strip() != "" else None


def _int(env: Mapping[str, str], name: str, default: int, minimum: int) -> int:
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = int(raw.replace("_", ""))
    except ValueError:
        raise ConfigError(f"{name}: expected an integer, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be >= {minimum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = _raw(env, name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ConfigError(f"{name}: must be > 0, got {raw!r}")
    return value


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def _bool(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = _raw(env, name)
    if raw is None:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ConfigError(f"{name}: expected true/false, got {raw!r}")


def _choice(env: Mapping[str, str], name: str, default: str, choices: tuple[str, ...]) -> str:
    raw = _raw(env, name)
    if raw is None:
        return default
    if raw.upper() not in choices:
        raise ConfigError(f"{name}: expected one of {', '.join(choices)}, got {raw!r}")
    return raw.upper()


def _optional_base_url(env: Mapping[str, str], name: str) -> str | None:
    raw = _raw(env, name)
    if raw is None:
        return None
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise ConfigError(
            f"{name}: expected an absolute http(s) URL like https://media.example.com"
        )
    return raw.rstrip("/")
