"""Where the service is and who is asking: flags first, then MEDIA_* environment variables."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import requests

from media_service.client import BasicAuth, JwtAuth, MediaClient
from media_service.client.auth import Auth

DEFAULT_URL = "http://127.0.0.1:8000"

# Each credential: its flag's attribute, its environment variable. Secrets have no flag of
# their own (a command line is visible to every user of the machine in `ps`): only a file.
URL_ENV = "MEDIA_URL"
API_KEY_ENV = "MEDIA_API_KEY"
API_SECRET_ENV = "MEDIA_API_SECRET"
JWT_ENV = "MEDIA_JWT"
APPLICATION_ID_ENV = "MEDIA_APPLICATION_ID"
PRIVATE_KEY_FILE_ENV = "MEDIA_PRIVATE_KEY_FILE"

NO_CREDENTIALS = (
    "no credentials: set MEDIA_API_KEY and MEDIA_API_SECRET, or MEDIA_JWT, or "
    "MEDIA_APPLICATION_ID and MEDIA_PRIVATE_KEY_FILE (see `media --help`)"
)


class ConnectionConfigError(Exception):
    """The URL or the credentials are missing or unusable (one line, never the secret)."""


def add_connection_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that override the MEDIA_* variables."""
    group = parser.add_argument_group(
        "connection",
        "Each flag overrides its environment variable. Secrets are read from files or the "
        "environment only: a secret on the command line is visible to other users in `ps`.",
    )
    group.add_argument("--url", help=f"the service's base URL (${URL_ENV}; default {DEFAULT_URL})")
    group.add_argument("--api-key", help=f"API key for Basic auth (${API_KEY_ENV})")
    group.add_argument(
        "--api-secret-file",
        type=Path,
        help=f"file holding the API secret (${API_SECRET_ENV} holds the secret itself)",
    )
    group.add_argument(
        "--jwt-file", type=Path, help=f"file holding a ready JWT (${JWT_ENV} holds the token)"
    )
    group.add_argument(
        "--application-id", help=f"application whose JWTs are minted (${APPLICATION_ID_ENV})"
    )
    group.add_argument(
        "--private-key-file",
        type=Path,
        help=f"the application's RSA private key, PEM (${PRIVATE_KEY_FILE_ENV})",
    )


@dataclass(frozen=True)
class Connection:
    """A base URL and credentials, ready to make a client."""

    url: str
    auth: Auth

    def client(self, timeout: tuple[float, float] = (5, 60)) -> MediaClient:
        """A MediaClient of its own session (environment proxies apply, as in any HTTP tool)."""
        return MediaClient(self.url, auth=self.auth, timeout=timeout, session=requests.Session())


def resolve(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Connection:
    """The connection the flags and environment describe; raise ConnectionConfigError if none.

    Credentials come from the flags when any credential flag is given, else from the
    environment, so a flag never mixes with a stale variable. Within one source, a ready token
    wins over an application id and key, which win over an API key and secret.
    """
    env = os.environ if environ is None else environ
    auth = _auth(args, env)
    if auth is None:
        raise ConnectionConfigError(NO_CREDENTIALS)
    return Connection(_url(args.url or env.get(URL_ENV) or DEFAULT_URL), auth)


def _url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConnectionConfigError(f"the service URL must be http(s)://host[:port]: {url!r}")
    if parts.username is not None or parts.password is not None:
        # It would be printed in error messages; credentials have variables of their own.
        raise ConnectionConfigError("the service URL must not contain credentials")
    return url.rstrip("/")


def _auth(args: argparse.Namespace, env: Mapping[str, str]) -> Auth | None:
    flags = (args.api_key, args.api_secret_file, args.jwt_file, args.application_id)
    if any(value is not None for value in flags) or args.private_key_file is not None:
        token = _read(args.jwt_file, "JWT") if args.jwt_file else None
        secret = _read(args.api_secret_file, "API secret") if args.api_secret_file else None
        return _choose(token, args.application_id, args.private_key_file, args.api_key, secret)
    key_file = env.get(PRIVATE_KEY_FILE_ENV)
    return _choose(
        env.get(JWT_ENV) or None,
        env.get(APPLICATION_ID_ENV) or None,
        Path(key_file) if key_file else None,
        env.get(API_KEY_ENV) or None,
        env.get(API_SECRET_ENV) or None,
    )


def _choose(
    token: str | None,
    application_id: str | None,
    private_key_file: Path | None,
    api_key: str | None,
    api_secret: str | None,
) -> Auth | None:
    if token:
        if any(c.isspace() or not c.isprintable() for c in token):
            # It would be refused by the HTTP library in a message that quotes the header.
            raise ConnectionConfigError("the JWT contains spaces or control characters")
        return JwtAuth(token)
    if application_id or private_key_file:
        if not (application_id and private_key_file):
            raise ConnectionConfigError(
                "a minted JWT needs both an application id and a private key file"
            )
        pem = _read(private_key_file, "private key")
        try:
            return JwtAuth.from_private_key(application_id, pem)
        except ValueError as exc:
            raise ConnectionConfigError(f"{private_key_file}: {exc}") from None
    if api_key or api_secret:
        if not (api_key and api_secret):
            missing = "API secret" if api_key else "API key"
            raise ConnectionConfigError(f"Basic auth needs an API key and secret: no {missing}")
        return BasicAuth(api_key, api_secret)
    return None


def _read(path: Path, what: str) -> str:
    try:
        text = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else "unreadable"
        raise ConnectionConfigError(f"cannot read the {what} from {path}: {reason}") from None
    if not text:
        raise ConnectionConfigError(f"{path} is empty: no {what} in it")
    return text
