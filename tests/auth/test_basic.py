"""Basic authentication: parsing, lookup, and no oracle for which keys exist."""

from __future__ import annotations

import base64

import pytest

from media_service.auth import Principal, basic, parse_basic_credentials, verify_basic
from media_service.errors import Unauthorized

from .conftest import API_KEY, API_SECRET, FakeCredentialStore


def b64(raw: bytes | str) -> str:
    data = raw.encode() if isinstance(raw, str) else raw
    return base64.b64encode(data).decode("ascii")


def test_valid_credentials_give_an_account_principal(store: FakeCredentialStore) -> None:
    principal = verify_basic(b64(f"{API_KEY}:{API_SECRET}"), store)
    assert principal == Principal(account_id=API_KEY, application_id=None, scheme="basic")
    assert principal.acl is None


def test_surrounding_whitespace_is_tolerated(store: FakeCredentialStore) -> None:
    assert verify_basic(f"  {b64(f'{API_KEY}:{API_SECRET}')}\t", store).account_id == API_KEY


def test_secret_may_contain_colons() -> None:
    assert parse_basic_credentials(b64("key:a:b:c")) == ("key", "a:b:c")


def test_empty_secret_parses_and_then_fails(store: FakeCredentialStore) -> None:
    assert parse_basic_credentials(b64("key:")) == ("key", "")
    with pytest.raises(Unauthorized, match=basic.INVALID):
        verify_basic(b64(f"{API_KEY}:"), store)


@pytest.mark.parametrize(
    "credentials",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("!!!not-base64!!!", id="bad-alphabet"),
        pytest.param("Zm9vOmJhcg", id="missing-padding"),
        pytest.param(b64("no-colon-here"), id="no-colon"),
        pytest.param(b64(":secret-secret-secret"), id="empty-key"),
        pytest.param(b64(b"\xff\xfe:secret"), id="not-utf8"),
        pytest.param(b64(b"key\xc3:secret"), id="truncated-utf8"),
        pytest.param("Zm9v OmJh", id="inner-space"),
        pytest.param("ÿÿÿÿ", id="non-ascii"),
        pytest.param("A" * 5000, id="huge"),
    ],
)
def test_malformed_credentials_are_401(credentials: str, store: FakeCredentialStore) -> None:
    with pytest.raises(Unauthorized) as excinfo:
        verify_basic(credentials, store)
    assert excinfo.value.detail == "malformed Basic credentials"
    assert excinfo.value.status == 401
    assert store.lookups == []  # refused before touching the store


def test_unknown_key_and_wrong_secret_are_indistinguishable(store: FakeCredentialStore) -> None:
    with pytest.raises(Unauthorized) as unknown:
        verify_basic(b64(f"nobody:{API_SECRET}"), store)
    with pytest.raises(Unauthorized) as wrong:
        verify_basic(b64(f"{API_KEY}:wrong-secret-wrong-secret"), store)
    assert unknown.value.detail == wrong.value.detail == basic.INVALID
    assert unknown.value.headers == wrong.value.headers
    assert "WWW-Authenticate" in unknown.value.headers


def test_unknown_key_still_verifies_a_secret(
    store: FakeCredentialStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same code path and cost: a (dummy) HMAC verification happens for unknown keys too."""
    calls: list[tuple[str, bytes, bytes]] = []
    real = basic.verify_secret

    def spy(secret: str, salt: bytes, digest: bytes) -> bool:
        calls.append((secret, salt, digest))
        return real(secret, salt, digest)

    monkeypatch.setattr(basic, "verify_secret", spy)
    for credentials in (f"nobody:{API_SECRET}", f"{API_KEY}:wrong-secret-wrong-secret"):
        with pytest.raises(Unauthorized):
            verify_basic(b64(credentials), store)
    assert len(calls) == 2
    (_, dummy_salt, dummy_digest), (_, real_salt, real_digest) = calls
    assert len(dummy_salt) == len(real_salt) and len(dummy_digest) == len(real_digest)


def test_the_dummy_digest_matches_nothing(store: FakeCredentialStore) -> None:
    # Even a caller that guessed the dummy's inputs could not log in: there is no account.
    with pytest.raises(Unauthorized, match=basic.INVALID):
        verify_basic(b64("nobody:"), store)


def test_disabled_account_is_401(store: FakeCredentialStore) -> None:
    store.set_enabled(account=API_KEY, enabled=False)
    with pytest.raises(Unauthorized) as excinfo:
        verify_basic(b64(f"{API_KEY}:{API_SECRET}"), store)
    assert excinfo.value.detail == basic.DISABLED


def test_disabled_account_with_wrong_secret_says_nothing_more(store: FakeCredentialStore) -> None:
    store.set_enabled(account=API_KEY, enabled=False)
    with pytest.raises(Unauthorized) as excinfo:
        verify_basic(b64(f"{API_KEY}:wrong-secret-wrong-secret"), store)
    assert excinfo.value.detail == basic.INVALID


def test_key_lookup_is_exact(store: FakeCredentialStore) -> None:
    for key in (API_KEY.upper(), f" {API_KEY}", f"{API_KEY} "):
        with pytest.raises(Unauthorized, match=basic.INVALID):
            verify_basic(b64(f"{key}:{API_SECRET}"), store)
