"""Credentials for MediaClient: Basic (API key and secret) or a bearer JWT (SPEC §2)."""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

TokenProvider: TypeAlias = Callable[[], str]
"""A callable returning a currently valid JWT; called once per request."""

# Renew a cached token this long before it expires, so it never expires in flight or
# between the client's clock and the server's (which allows 60 s of skew).
MAX_REFRESH_MARGIN = 60.0


@dataclass(frozen=True)
class BasicAuth:
    """An account's API key and secret: sees every item of the account."""

    api_key: str
    api_secret: str = field(repr=False)

    def header(self) -> str:
        """The Authorization header value."""
        raw = f"{self.api_key}:{self.api_secret}".encode()
        return "Basic " + base64.b64encode(raw).decode("ascii")


class JwtAuth:
    """A bearer JWT acting for one application: a fixed token or a provider called per request."""

    def __init__(self, token: str | TokenProvider) -> None:
        if isinstance(token, str) and not token:
            raise ValueError("token must not be empty")
        self._token = token

    @classmethod
    def from_private_key(
        cls,
        application_id: str,
        private_key_pem: str | bytes,
        ttl: int = 300,
        *,
        acl: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> JwtAuth:
        """Sign RS256 tokens for `application_id`, each reused until shortly before it expires."""
        return cls(
            CachedTokenMinter(application_id, private_key_pem, ttl=ttl, acl=acl, clock=clock)
        )

    def header(self) -> str:
        """The Authorization header value, with a fresh token from the provider if there is one."""
        token = self._token if isinstance(self._token, str) else self._token()
        if not isinstance(token, str) or not token:
            raise ValueError("the token provider returned no token")
        return f"Bearer {token}"

    def __repr__(self) -> str:
        # Never show the token: it is a bearer credential.
        kind = "static token" if isinstance(self._token, str) else repr(self._token)
        return f"JwtAuth({kind})"


class CachedTokenMinter:
    """A thread-safe TokenProvider that mints RS256 tokens and caches each until near expiry."""

    def __init__(
        self,
        application_id: str,
        private_key_pem: str | bytes,
        *,
        ttl: int = 300,
        acl: Mapping[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not application_id:
            raise ValueError("application_id must not be empty")
        if ttl <= 0:
            raise ValueError("ttl must be a positive number of seconds")
        self.application_id = application_id
        self.ttl = ttl
        self._acl = dict(acl) if acl is not None else None
        self._key = _load_private_key(private_key_pem)  # fail now, not on the first request
        self._clock = clock
        self._margin = min(MAX_REFRESH_MARGIN, ttl / 5)
        self._lock = threading.Lock()
        self._token: str | None = None
        self._expires = 0.0

    def __call__(self) -> str:
        with self._lock:
            now = self._clock()
            if self._token is None or now >= self._expires - self._margin:
                self._token = self._mint(int(now))
                self._expires = int(now) + self.ttl
            return self._token

    def _mint(self, iat: int) -> str:
        claims: dict[str, Any] = {
            "application_id": self.application_id,
            "iat": iat,
            "exp": iat + self.ttl,
            "jti": str(uuid.uuid4()),
        }
        if self._acl is not None:
            claims["acl"] = self._acl
        return jwt.encode(claims, self._key, algorithm="RS256")

    def __repr__(self) -> str:
        return f"CachedTokenMinter(application_id={self.application_id!r}, ttl={self.ttl})"


Auth: TypeAlias = BasicAuth | JwtAuth | TokenProvider


def authorization_header(auth: Auth) -> str:
    """The Authorization header value for any of the accepted kinds of credentials."""
    if isinstance(auth, BasicAuth | JwtAuth):
        return auth.header()
    return JwtAuth(auth).header()


def _load_private_key(pem: str | bytes) -> rsa.RSAPrivateKey:
    data = pem.encode("utf-8") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise ValueError("not an unencrypted PEM private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("the service verifies RS256 tokens: the key must be an RSA key")
    return key
