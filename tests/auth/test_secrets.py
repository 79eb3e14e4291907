"""Secret generation and hashing: salted HMAC-SHA256, entropy floor, constant-time compare."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from media_service.auth import secrets as auth_secrets
from media_service.auth.secrets import (
    MIN_SECRET_LENGTH,
    SALT_BYTES,
    generate_secret,
    hash_secret,
    verify_secret,
)


def test_generated_secrets_are_long_random_and_url_safe() -> None:
    generated = {generate_secret() for _ in range(50)}
    assert len(generated) == 50
    for secret in generated:
        assert len(secret) == 32  # token_urlsafe(24): 192 bits
        assert secret.replace("-", "").replace("_", "").isalnum()
        hash_secret(secret)  # always above the floor


def test_digest_is_hmac_sha256_keyed_with_the_salt() -> None:
    secret = generate_secret()
    salt, digest = hash_secret(secret)
    assert len(salt) == SALT_BYTES == 16
    assert digest == hmac.new(salt, secret.encode(), hashlib.sha256).digest()
    assert len(digest) == 32


def test_salt_is_random_per_hash() -> None:
    secret = generate_secret()
    (salt1, digest1), (salt2, digest2) = hash_secret(secret), hash_secret(secret)
    assert salt1 != salt2
    assert digest1 != digest2


def test_verify_accepts_the_secret_and_refuses_others() -> None:
    secret = "x" * MIN_SECRET_LENGTH
    salt, digest = hash_secret(secret)
    assert verify_secret(secret, salt, digest)
    assert not verify_secret(secret + "y", salt, digest)
    assert not verify_secret(secret[:-1], salt, digest)
    assert not verify_secret("", salt, digest)
    assert not verify_secret(secret, b"\0" * 16, digest)


def test_verify_compares_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(auth_secrets.hmac, "compare_digest", spy)
    salt, digest = hash_secret("y" * 20)
    assert verify_secret("y" * 20, salt, digest)
    assert calls == [(digest, digest)]


def test_verify_accepts_bytes_like_storage_values() -> None:
    salt, digest = hash_secret("z" * 20)
    assert verify_secret("z" * 20, memoryview(salt), bytearray(digest))  # type: ignore[arg-type]


def test_non_ascii_and_odd_secrets_never_raise() -> None:
    secret = "pässwörd-ünïcødé-✓✓"
    salt, digest = hash_secret(secret)
    assert verify_secret(secret, salt, digest)
    assert not verify_secret("\ud800" * 20, salt, digest)  # lone surrogates: no exception


@pytest.mark.parametrize("secret", ["", "short", "x" * (MIN_SECRET_LENGTH - 1)])
def test_short_user_secrets_are_refused(secret: str) -> None:
    with pytest.raises(ValueError, match="at least 16"):
        hash_secret(secret)


def test_minimum_length_secret_is_accepted() -> None:
    hash_secret("a" * MIN_SECRET_LENGTH)


def test_absurdly_long_secrets_are_refused() -> None:
    with pytest.raises(ValueError, match="at most"):
        hash_secret("a" * 257)


def test_module_explains_the_fast_hash() -> None:
    doc = auth_secrets.__doc__ or ""
    assert "denial-of-service" in doc
    assert "human" in doc
