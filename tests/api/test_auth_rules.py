"""SPEC §2 and §3 through HTTP: who may call what, and the problem+json shape of every refusal.

Each rule is checked on every endpoint it applies to, over both backend pairs.
"""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Callable
from typing import Any

import jwt
import pytest
from flask.testing import FlaskClient

from tests.conftest import Credentials, Uploader
from tests.problems import assert_problem

Call = Callable[..., Any]

# (method, path template): every endpoint that needs credentials for a private item.
ENDPOINTS = [
    pytest.param("POST", "/v3/media", id="upload"),
    pytest.param("GET", "/v3/media", id="search"),
    pytest.param("GET", "/v3/media/{id}/info", id="info"),
    pytest.param("PUT", "/v3/media/{id}/info", id="update-info"),
    pytest.param("PUT", "/v3/media/{id}", id="update"),
    pytest.param("DELETE", "/v3/media/{id}/info", id="delete-info"),
    pytest.param("DELETE", "/v3/media/{id}", id="delete"),
    pytest.param("GET", "/v3/media/{id}", id="download"),
    pytest.param("HEAD", "/v3/media/{id}", id="download-head"),
]
ITEM_ENDPOINTS = [case for case in ENDPOINTS if "{id}" in case.values[1]]
# What a successful call of each method answers.
SUCCESS = {"POST": 201, "GET": 200, "PUT": 204, "DELETE": 204, "HEAD": 200}
MEDIA_ACL = {"paths": {"/*/media/**": {}}}


@pytest.fixture
def call(client: FlaskClient) -> Call:
    """Call an endpoint with a valid body for its method (multipart upload, JSON update)."""

    def _call(
        method: str,
        template: str,
        item_id: str = "",
        headers: dict[str, str] | None = None,
        query: dict[str, str] | None = None,
    ) -> Any:
        path = template.format(id=item_id)
        extra: dict[str, Any] = {}
        if method == "POST":
            extra = {
                "data": {"filedata": (io.BytesIO(b"new bytes"), "new.bin")},
                "content_type": "multipart/form-data",
            }
        elif method == "PUT":
            extra = {"json": {"title": "changed"}}
        return client.open(
            path, method=method, headers=headers or {}, query_string=query or {}, **extra
        )

    return _call


@pytest.fixture
def new_item(owner: Credentials, upload: Uploader) -> Callable[..., str]:
    """Upload a private item (with the owner's application JWT unless headers are given)."""

    def _new(headers: dict[str, str] | None = None, **fields: Any) -> str:
        response = upload(headers or owner.bearer(), b"private bytes", **fields)
        assert response.status_code == 201
        return str(response.get_json()["id"])

    return _new


def target(method: str, shared: str, new_item: Callable[..., str]) -> str:
    """The item to call: a fresh one for a DELETE that may succeed, else the shared one."""
    return new_item() if method == "DELETE" else shared


def assert_refused(response: Any, method: str, status: int) -> None:
    """A problem answer; HEAD answers carry the status and headers but no body."""
    if method == "HEAD":
        assert response.status_code == status
        assert response.data == b""
        assert response.headers["X-Request-Id"]
    else:
        assert_problem(response, status)


def basic(key: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{key}:{secret}".encode()).decode()}


def unsigned_token(claims: dict[str, Any]) -> str:
    """An `alg: none` token: a signature-stripping attack."""

    def b64(data: dict[str, Any]) -> str:
        raw = json.dumps(data).encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(claims)}."


# --------------------------------------------------------------------------- missing credentials


def test_no_credentials_is_401_naming_both_schemes(
    subtests: pytest.Subtests, call: Call, new_item: Callable[..., str], owner: Credentials
) -> None:
    """Every endpoint, private download included: 401 with WWW-Authenticate naming both schemes."""
    item_id = new_item()
    for case in ENDPOINTS:
        with subtests.test(case.id):
            method, template = case.values
            response = call(method, template, item_id)
            assert_refused(response, method, 401)
            challenge = response.headers["WWW-Authenticate"].lower()
            assert "basic" in challenge and "bearer" in challenge
    assert call("GET", "/v3/media/{id}/info", item_id, owner.basic).status_code == 200


def test_no_credentials_is_checked_before_the_id(call: Call) -> None:
    """An anonymous request learns nothing about ids: 401 even for a malformed or unknown one."""
    for item_id in ("not-a-uuid", "00000000-0000-4000-8000-000000000000"):
        response = call("GET", "/v3/media/{id}/info", item_id)
        assert_problem(response, 401)


# --------------------------------------------------------------------------- invalid credentials


def invalid_credentials(owner: Credentials, stranger: Credentials) -> list[Any]:
    """(id, headers, query) of credentials that are present but not valid."""
    now = time.time()
    return [
        pytest.param(basic(owner.api_key, "wrong-secret-0123456789"), {}, id="wrong-secret"),
        pytest.param(basic("nobody", owner.api_secret), {}, id="unknown-key"),
        pytest.param({"Authorization": "Basic %%%not-base64"}, {}, id="basic-garbage"),
        pytest.param({"Authorization": "Basic"}, {}, id="basic-empty"),
        pytest.param({"Authorization": "Bearer not.a.jwt"}, {}, id="bearer-garbage"),
        pytest.param({"Authorization": "Bearer "}, {}, id="bearer-empty"),
        pytest.param({"Authorization": "Digest username=x"}, {}, id="unknown-scheme"),
        pytest.param({"Authorization": ""}, {}, id="empty-header"),
        pytest.param(owner.bearer(ttl=60, now=now - 3600), {}, id="expired"),
        pytest.param({"Authorization": f"Bearer {tampered(owner.token())}"}, {}, id="tampered"),
        pytest.param(
            {"Authorization": "Bearer " + jwt_for(owner.application_id, stranger.private_key)},
            {},
            id="signed-by-another-key",
        ),
        pytest.param(
            {"Authorization": "Bearer " + jwt_for("no-such-app", owner.private_key)},
            {},
            id="unknown-application",
        ),
        pytest.param(
            {"Authorization": "Bearer " + unsigned_token(claims_for(owner.application_id))},
            {},
            id="alg-none",
        ),
        pytest.param({}, {"jwt-token": "garbage"}, id="query-garbage"),
        pytest.param({}, {"jwt-token": ""}, id="query-empty"),
        pytest.param({}, {"jwt-token": owner.token(ttl=60, now=now - 3600)}, id="query-expired"),
    ]


def tampered(token: str) -> str:
    """The token with its signature reversed (same length, same alphabet, wrong bytes)."""
    signed, signature = token.rsplit(".", 1)
    return f"{signed}.{signature[::-1]}"


def claims_for(application_id: str, **extra: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"application_id": application_id, "iat": now, "exp": now + 900, **extra}


def jwt_for(application_id: str, private_key: str, **extra: Any) -> str:
    return jwt.encode(claims_for(application_id, **extra), private_key, algorithm="RS256")


def test_invalid_credentials_are_401_everywhere(
    subtests: pytest.Subtests,
    call: Call,
    new_item: Callable[..., str],
    owner: Credentials,
    stranger: Credentials,
) -> None:
    """Credentials that are present but invalid are 401 on every endpoint, never anonymous."""
    item_id = new_item()
    for case in invalid_credentials(owner, stranger):
        headers, query = case.values
        for endpoint in ENDPOINTS:
            method, template = endpoint.values
            with subtests.test(f"{case.id}-{endpoint.id}"):
                response = call(method, template, item_id, headers, query)
                assert_refused(response, method, 401)
                assert "WWW-Authenticate" in response.headers
    assert call("GET", "/v3/media/{id}/info", item_id, owner.basic).status_code == 200


def test_invalid_credentials_are_401_even_on_a_public_download(
    client: FlaskClient, owner: Credentials, new_item: Callable[..., str]
) -> None:
    """A public item needs no credentials, but bad ones are still refused."""
    item_id = new_item(public="true")
    assert client.get(f"/v3/media/{item_id}").status_code == 200
    refused = client.get(
        f"/v3/media/{item_id}", headers=basic(owner.api_key, "wrong-secret-0123456789")
    )
    assert_problem(refused, 401)
    refused = client.get(f"/v3/media/{item_id}", query_string={"jwt-token": "garbage"})
    assert_problem(refused, 401)


# --------------------------------------------------------------------------- both schemes


def test_basic_and_jwt_together_are_400(
    subtests: pytest.Subtests, call: Call, new_item: Callable[..., str], owner: Credentials
) -> None:
    """Basic with a jwt-token parameter, or a Bearer header with a different jwt-token: 400."""
    item_id = new_item()
    mixes = [
        ("basic-and-query-token", owner.basic, {"jwt-token": owner.token()}),
        ("bearer-and-other-query-token", owner.bearer(), {"jwt-token": owner.token()}),
    ]
    for mix_id, headers, query in mixes:
        for endpoint in ENDPOINTS:
            method, template = endpoint.values
            with subtests.test(f"{mix_id}-{endpoint.id}"):
                assert_refused(call(method, template, item_id, headers, query), method, 400)
    assert call("GET", "/v3/media/{id}/info", item_id, owner.basic).get_json()["title"] is None


def test_same_token_in_header_and_query_is_accepted(
    call: Call, new_item: Callable[..., str], owner: Credentials
) -> None:
    """A client that sends the very same token twice is not ambiguous."""
    item_id = new_item()
    token = owner.token()
    response = call(
        "GET",
        "/v3/media/{id}/info",
        item_id,
        {"Authorization": f"Bearer {token}"},
        {"jwt-token": token},
    )
    assert response.status_code == 200


# --------------------------------------------------------------------------- jwt-token parameter


def test_jwt_token_query_parameter_works_everywhere(
    subtests: pytest.Subtests, call: Call, new_item: Callable[..., str], owner: Credentials
) -> None:
    """`?jwt-token=` authenticates every endpoint just like the Authorization header."""
    shared = new_item()
    for endpoint in ENDPOINTS:
        method, template = endpoint.values
        with subtests.test(endpoint.id):
            item_id = target(method, shared, new_item)
            response = call(method, template, item_id, query={"jwt-token": owner.token()})
            assert response.status_code == SUCCESS[method], response.get_data(as_text=True)


# --------------------------------------------------------------------------- ownership


def test_another_accounts_item_is_404(
    subtests: pytest.Subtests,
    call: Call,
    new_item: Callable[..., str],
    owner: Credentials,
    stranger: Credentials,
) -> None:
    """Another account's item does not exist for you (Basic or JWT); it stays untouched."""
    item_id = new_item()
    before = call("GET", "/v3/media/{id}/info", item_id, owner.basic).get_json()
    for who, headers in (("basic", stranger.basic), ("jwt", stranger.bearer())):
        for endpoint in ITEM_ENDPOINTS:
            method, template = endpoint.values
            with subtests.test(f"{who}-{endpoint.id}"):
                assert_refused(call(method, template, item_id, headers), method, 404)
    assert call("GET", "/v3/media/{id}/info", item_id, owner.basic).get_json() == before


def test_another_application_of_the_account_is_403(
    subtests: pytest.Subtests,
    call: Call,
    new_item: Callable[..., str],
    owner: Credentials,
    sibling: Credentials,
) -> None:
    """A JWT of the same account's other application gets 403; the account's Basic auth may act."""
    item_id = new_item()
    before = call("GET", "/v3/media/{id}/info", item_id, owner.basic).get_json()
    for endpoint in ITEM_ENDPOINTS:
        method, template = endpoint.values
        with subtests.test(f"sibling-{endpoint.id}"):
            assert_refused(call(method, template, item_id, sibling.bearer()), method, 403)
    assert call("GET", "/v3/media/{id}/info", item_id, owner.basic).get_json() == before
    for endpoint in ITEM_ENDPOINTS:
        method, template = endpoint.values
        with subtests.test(f"account-basic-{endpoint.id}"):
            subject = target(method, item_id, new_item)
            assert call(method, template, subject, owner.basic).status_code == SUCCESS[method]


def test_jwt_cannot_touch_items_uploaded_with_basic(
    subtests: pytest.Subtests, call: Call, new_item: Callable[..., str], owner: Credentials
) -> None:
    """An item without an application belongs to the account, not to any application: 403."""
    item_id = new_item(owner.basic)
    for endpoint in ITEM_ENDPOINTS:
        method, template = endpoint.values
        with subtests.test(endpoint.id):
            assert_refused(call(method, template, item_id, owner.bearer()), method, 403)


# --------------------------------------------------------------------------- ACL


def test_media_wide_acl_works_everywhere(
    subtests: pytest.Subtests, call: Call, new_item: Callable[..., str], owner: Credentials
) -> None:
    """acl `/*/media/**` (what Vonage tokens carry) admits every media endpoint."""
    shared = new_item()
    for endpoint in ENDPOINTS:
        method, template = endpoint.values
        with subtests.test(endpoint.id):
            item_id = target(method, shared, new_item)
            response = call(method, template, item_id, owner.bearer(acl=MEDIA_ACL))
            assert response.status_code == SUCCESS[method], response.get_data(as_text=True)


ACL_CASES = [
    pytest.param(
        {"paths": {"/v3/media": {"methods": ["GET"]}}},
        {"search"},
        id="search-only",
    ),
    pytest.param(
        {"paths": {"/*/media/**": {"methods": ["GET"]}}},
        {"search", "info", "download", "download-head"},
        id="read-only",
    ),
    pytest.param(
        {"paths": {"/v3/media/*/info": {}}},
        {"info", "update-info", "delete-info"},
        id="info-paths",
    ),
    pytest.param({"paths": {"/*/users/**": {}}}, set(), id="other-api"),
    pytest.param({"paths": {}}, set(), id="empty"),
    pytest.param(
        {"paths": {"/*/media/**": {"filters": {"x": 1}}}}, set(), id="unknown-restriction"
    ),
]


def test_acl_admits_only_matching_paths_and_methods(
    subtests: pytest.Subtests, call: Call, new_item: Callable[..., str], owner: Credentials
) -> None:
    """With an acl claim, a request no pattern (and method list) admits is 403."""
    shared = new_item()
    for case in ACL_CASES:
        acl, allowed = case.values
        for endpoint in ENDPOINTS:
            method, template = endpoint.values
            with subtests.test(f"{case.id}-{endpoint.id}"):
                item_id = target(method, shared, new_item)
                response = call(method, template, item_id, owner.bearer(acl=acl))
                if endpoint.id in allowed:
                    assert response.status_code == SUCCESS[method]
                else:
                    assert_refused(response, method, 403)


# --------------------------------------------------------------------------- token lifetime

MINUTE = 60
HOUR = 60 * MINUTE


def token_cases(owner: Credentials) -> list[Any]:
    """(token, expected status) around the lifetime rules of SPEC §2."""
    now = time.time()
    return [
        pytest.param(owner.token(ttl=None, now=now - 14 * MINUTE), 200, id="no-exp-14-min"),
        pytest.param(owner.token(ttl=None, now=now - 17 * MINUTE), 401, id="no-exp-17-min"),
        pytest.param(owner.token(ttl=48 * HOUR, now=now - 23 * HOUR), 200, id="age-23-h"),
        pytest.param(owner.token(ttl=48 * HOUR, now=now - 25 * HOUR), 401, id="age-25-h"),
        pytest.param(owner.token(ttl=900, now=now - 900 - 30), 200, id="expired-in-leeway"),
        pytest.param(owner.token(ttl=900, now=now - 900 - 5 * MINUTE), 401, id="expired"),
        pytest.param(owner.token(ttl=900, now=now + 10 * MINUTE), 401, id="issued-in-future"),
        pytest.param(
            jwt_for(owner.application_id, owner.private_key, nbf=int(now) + 10 * MINUTE),
            401,
            id="not-yet-valid",
        ),
        pytest.param(
            jwt.encode(
                {"application_id": owner.application_id, "jti": "x"},
                owner.private_key,
                algorithm="RS256",
            ),
            401,
            id="no-iat-no-exp",
        ),
    ]


def test_token_lifetime_rules(
    subtests: pytest.Subtests, client: FlaskClient, owner: Credentials
) -> None:
    """No exp: 15 minutes after iat; never more than 24 h after iat; nbf and iat honoured."""
    for case in token_cases(owner):
        with subtests.test(case.id):
            token, status = case.values
            response = client.get("/v3/media", headers={"Authorization": f"Bearer {token}"})
            assert response.status_code == status, response.get_data(as_text=True)
            if status == 401:
                assert_problem(response, 401)


# --------------------------------------------------------------------------- problem shape


def test_request_id_is_echoed_and_names_the_problem(
    subtests: pytest.Subtests, client: FlaskClient, owner: Credentials
) -> None:
    """A valid incoming X-Request-Id is reused as header and `instance`; others are replaced."""
    cases = [
        ("valid", "req-42.abc:1", True),
        ("with-space", "two words", False),
        ("too-long", "a" * 129, False),
        ("control-char", "id\x01", False),
    ]
    for case_id, incoming, reused in cases:
        with subtests.test(case_id):
            response = client.get(
                "/v3/media/not-a-uuid/info", headers={**owner.basic, "X-Request-Id": incoming}
            )
            body = assert_problem(response, 400, names=["id"])
            assert (body["instance"] == incoming) is reused
            assert (response.headers["X-Request-Id"] == incoming) is reused
            ok = client.get("/v3/media", headers={**owner.basic, "X-Request-Id": incoming})
            assert ok.status_code == 200
            assert (ok.headers["X-Request-Id"] == incoming) is reused


def test_generated_request_ids_differ(client: FlaskClient) -> None:
    """Without an incoming id each request gets its own."""
    first = assert_problem(client.get("/v3/media"), 401)["instance"]
    second = assert_problem(client.get("/v3/media"), 401)["instance"]
    assert first != second
