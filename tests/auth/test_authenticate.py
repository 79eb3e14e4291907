"""Scheme dispatch, conflicting credentials, `require` and `check_acl`."""

from __future__ import annotations

import base64

import pytest

from media_service.auth import Principal, authenticate, check_acl, make_token, parse_acl, require
from media_service.errors import BadRequest, Forbidden, Unauthorized

from .conftest import API_KEY, API_SECRET, APP_ID, FakeCredentialStore, KeyPair

BASIC = "Basic " + base64.b64encode(f"{API_KEY}:{API_SECRET}".encode()).decode()


@pytest.fixture
def token(keypair: KeyPair) -> str:
    return make_token(APP_ID, keypair.private)


def test_no_credentials_is_anonymous(store: FakeCredentialStore) -> None:
    assert authenticate(None, None, store) is None
    assert store.lookups == []


def test_require_refuses_anonymous_with_a_challenge() -> None:
    with pytest.raises(Unauthorized) as excinfo:
        require(None)
    assert excinfo.value.detail == "authentication required"
    assert "Basic" in excinfo.value.headers["WWW-Authenticate"]
    assert "Bearer" in excinfo.value.headers["WWW-Authenticate"]


def test_require_passes_a_principal_through() -> None:
    principal = Principal(account_id="k", application_id=None, scheme="basic")
    assert require(principal) is principal


def test_basic_header(store: FakeCredentialStore) -> None:
    principal = authenticate(BASIC, None, store)
    assert principal is not None
    assert (principal.scheme, principal.account_id, principal.application_id) == (
        "basic",
        API_KEY,
        None,
    )


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER"])
def test_bearer_header(store: FakeCredentialStore, token: str, scheme: str) -> None:
    principal = authenticate(f"{scheme} {token}", None, store)
    assert principal is not None
    assert (principal.scheme, principal.account_id, principal.application_id) == (
        "jwt",
        API_KEY,
        APP_ID,
    )


@pytest.mark.parametrize("scheme", ["Basic", "basic", "BASIC"])
def test_basic_scheme_is_case_insensitive(store: FakeCredentialStore, scheme: str) -> None:
    header = BASIC.replace("Basic", scheme, 1)
    assert authenticate(header, None, store) is not None


def test_extra_whitespace_is_tolerated(store: FakeCredentialStore, token: str) -> None:
    assert authenticate(f"  Bearer \t {token}  ", None, store) is not None
    assert authenticate(BASIC.replace(" ", "   "), None, store) is not None


def test_jwt_query_parameter(store: FakeCredentialStore, token: str) -> None:
    principal = authenticate(None, token, store)
    assert principal is not None
    assert principal.application_id == APP_ID


def test_identical_bearer_and_query_token_are_accepted(
    store: FakeCredentialStore, token: str
) -> None:
    assert authenticate(f"Bearer {token}", token, store) is not None


def test_different_bearer_and_query_tokens_are_400(
    store: FakeCredentialStore, keypair: KeyPair, token: str
) -> None:
    other = make_token(APP_ID, keypair.private, jti="other")
    with pytest.raises(BadRequest) as excinfo:
        authenticate(f"Bearer {token}", other, store)
    assert excinfo.value.status == 400
    assert store.lookups == []  # decided before any verification


def test_basic_and_jwt_query_together_are_400(store: FakeCredentialStore, token: str) -> None:
    with pytest.raises(BadRequest) as excinfo:
        authenticate(BASIC, token, store)
    assert excinfo.value.detail == "use either Basic or JWT authentication, not both"
    assert store.lookups == []


def test_basic_and_jwt_together_are_400_even_when_both_are_invalid(
    store: FakeCredentialStore,
) -> None:
    with pytest.raises(BadRequest):
        authenticate("Basic !!!", "not-a-jwt", store)


@pytest.mark.parametrize(
    "header",
    [
        "Digest username=x",
        "Negotiate abc",
        "Token abc",
        "Basicdef",
        "Bearerabc",
        "AWS4-HMAC-SHA256 Credential=x",
    ],
)
def test_unknown_scheme_is_401(store: FakeCredentialStore, header: str) -> None:
    with pytest.raises(Unauthorized) as excinfo:
        authenticate(header, None, store)
    assert "scheme" in excinfo.value.detail


@pytest.mark.parametrize("header", ["Bearer", "Bearer ", "Bearer \t "])
def test_empty_bearer_is_401(store: FakeCredentialStore, header: str) -> None:
    with pytest.raises(Unauthorized, match="empty bearer token"):
        authenticate(header, None, store)


@pytest.mark.parametrize("query", ["", "  "])
def test_empty_jwt_query_is_401(store: FakeCredentialStore, query: str) -> None:
    with pytest.raises(Unauthorized, match="empty bearer token"):
        authenticate(None, query, store)


@pytest.mark.parametrize("header", ["", "   "])
def test_empty_authorization_header_is_401(store: FakeCredentialStore, header: str) -> None:
    with pytest.raises(Unauthorized):
        authenticate(header, None, store)


@pytest.mark.parametrize(
    ("header", "query"),
    [
        ("Basic !!!", None),
        ("Basic", None),
        ("Basic " + base64.b64encode(b"nobody:secret-secret-secret").decode(), None),
        ("Bearer not-a-jwt", None),
        (None, "not-a-jwt"),
        (None, "a.b.c"),
    ],
)
def test_present_but_invalid_credentials_are_401(
    store: FakeCredentialStore, header: str | None, query: str | None
) -> None:
    with pytest.raises(Unauthorized):
        authenticate(header, query, store)


def test_jwt_with_acl_reaches_the_principal(store: FakeCredentialStore, keypair: KeyPair) -> None:
    grant = {"paths": {"/v3/media/*": {"methods": ["GET"]}}}
    principal = authenticate(
        f"Bearer {make_token(APP_ID, keypair.private, acl=grant)}", None, store
    )
    assert principal is not None
    assert principal.acl == parse_acl(grant)


# --------------------------------------------------------------------------- check_acl


def jwt_principal(acl: dict[str, object] | None) -> Principal:
    return Principal(
        account_id=API_KEY,
        application_id=APP_ID,
        scheme="jwt",
        acl=None if acl is None else parse_acl(acl),
    )


def test_check_acl_ignores_principals_without_acl() -> None:
    check_acl(Principal(account_id=API_KEY, application_id=None, scheme="basic"), "DELETE", "/x")
    check_acl(jwt_principal(None), "DELETE", "/v3/media/x")


def test_check_acl_admits_matching_requests() -> None:
    principal = jwt_principal({"paths": {"/*/media/**": {}}})
    for method, path in [("GET", "/v3/media"), ("POST", "/v3/media"), ("PUT", "/v3/media/x/info")]:
        check_acl(principal, method, path)


def test_check_acl_forbids_paths_outside_the_acl() -> None:
    principal = jwt_principal({"paths": {"/v3/media/*": {}}})
    with pytest.raises(Forbidden) as excinfo:
        check_acl(principal, "get", "/v3/media/x/info")
    assert excinfo.value.status == 403
    assert excinfo.value.detail == "the token's acl does not allow GET /v3/media/x/info"


def test_check_acl_forbids_methods_outside_the_acl() -> None:
    principal = jwt_principal({"paths": {"/v3/media/**": {"methods": ["GET"]}}})
    check_acl(principal, "GET", "/v3/media/x")
    check_acl(principal, "HEAD", "/v3/media/x")
    with pytest.raises(Forbidden, match="DELETE /v3/media/x"):
        check_acl(principal, "DELETE", "/v3/media/x")


def test_check_acl_with_empty_paths_forbids_everything() -> None:
    with pytest.raises(Forbidden):
        check_acl(jwt_principal({"paths": {}}), "GET", "/v3/media")
