"""Byte-for-byte what the official Vonage clients send, and what they read back.

The clients upload multipart with `filedata` and a JSON `info` string and read only the Location
header; update with `PUT /v3/media/{id}` and a JSON body expecting 204; delete with a `{}` JSON
body; search with their own `timestamp`/`sig` parameters and page by `page_index` while
`_links.next` exists. Their tokens come from the `vonage-jwt` package (or older generators that
leave out `exp` and reuse a `jti`).
"""

from __future__ import annotations

import io
import json
import time
import uuid
from typing import Any

import jwt
import pytest
from flask.testing import FlaskClient

from media_service.storage.interfaces import Backends
from tests.api.media_api_support import md5_hex
from tests.conftest import Credentials

# The `form-data` npm package's boundary shape: 26 dashes and 24 digits.
NODE_BOUNDARY = "--------------------------" + "493625018734672618243090"
INFO = {"call": "CON-f972836a-550f-45fa-956c-12a2ab5b7d22", "tags": ["greeting"]}
AUDIO = b"ID3\x03\x00\x00\x00\x00\x00\x0fTIT2" + bytes(range(256)) * 8
MEDIA_ACL = {"paths": {"/*/media/**": {}}}


def vonage_jwt(
    credentials: Credentials,
    *,
    ttl: int | None = 900,
    jti: str | None = None,
    issued: float | None = None,
    **claims: Any,
) -> str:
    """A token shaped like `vonage_jwt.JwtClient.generate_application_jwt` makes: RS256, typ JWT,
    application_id, iat, jti (a uuid4 string), exp = iat + ttl, and any extra claims."""
    iat = int(time.time() if issued is None else issued)
    payload: dict[str, Any] = {
        "application_id": credentials.application_id,
        "iat": iat,
        "jti": jti or str(uuid.uuid4()),
    }
    if ttl is not None:
        payload["exp"] = iat + ttl
    payload.update(claims)
    return jwt.encode(payload, credentials.private_key, algorithm="RS256", headers={"typ": "JWT"})


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Accept": "application/json"}


def node_upload_body(content: bytes, name: str, info: dict[str, Any]) -> bytes:
    """The body `form-data` builds for {filedata: fs.createReadStream(name), info: JSON}."""
    return (
        (
            f"--{NODE_BOUNDARY}\r\n"
            f'Content-Disposition: form-data; name="filedata"; filename="{name}"\r\n'
            "Content-Type: audio/mpeg\r\n\r\n"
        ).encode()
        + content
        + (
            f"\r\n--{NODE_BOUNDARY}\r\n"
            'Content-Disposition: form-data; name="info"\r\n\r\n'
            f"{json.dumps(info)}\r\n"
            f"--{NODE_BOUNDARY}--\r\n"
        ).encode()
    )


def upload_like_node(client: FlaskClient, headers: dict[str, str], *, chunked: bool = False) -> Any:
    body = node_upload_body(AUDIO, "greeting.mp3", INFO)
    content_type = f"multipart/form-data; boundary={NODE_BOUNDARY}"
    if not chunked:
        return client.post("/v3/media", data=body, headers=headers, content_type=content_type)
    # A streamed file: no Content-Length, Transfer-Encoding: chunked (the server de-chunks).
    return client.post(
        "/v3/media",
        input_stream=io.BytesIO(body),
        headers={**headers, "Transfer-Encoding": "chunked"},
        content_type=content_type,
        environ_overrides={"wsgi.input_terminated": True},
    )


def location_id(location: str) -> str:
    """The id in `<base>/v3/media/<id>/info`, the only thing the clients take from a 201."""
    prefix, _, tail = location.partition("/v3/media/")
    assert prefix == "http://localhost" and tail.endswith("/info"), location
    return tail.removesuffix("/info")


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_upload_then_follow_location(
    chunked: bool, client: FlaskClient, owner: Credentials
) -> None:
    """Upload as the Node client does, read only Location, GET it, then GET it without /info."""
    headers = bearer(vonage_jwt(owner, acl=MEDIA_ACL))
    created = upload_like_node(client, headers, chunked=chunked)
    assert created.status_code == 201, created.get_data(as_text=True)
    location = created.headers["Location"]
    item_id = location_id(location)

    info = client.get(location, headers=headers)
    assert info.status_code == 200
    item = info.get_json()
    assert item["id"] == item_id
    assert json.loads(item["metadata_primary"]) == INFO
    assert item["original_file_name"] == "greeting.mp3"
    assert item["mime_type"] == "audio/mpeg"
    assert item["application_id"] == owner.application_id
    assert (item["media_size"], item["etag"]) == (len(AUDIO), md5_hex(AUDIO))
    assert item["public_item"] is False

    download = client.get(location.removesuffix("/info"), headers=headers)
    assert download.status_code == 200
    assert download.data == AUDIO
    assert download.headers["ETag"] == f'"{md5_hex(AUDIO)}"'


def test_update_with_json_body_answers_204(client: FlaskClient, owner: Credentials) -> None:
    """`PUT /v3/media/{id}` with a JSON body (public_item, metadata) is a 204 with no body."""
    headers = bearer(vonage_jwt(owner))
    item_id = location_id(upload_like_node(client, headers).headers["Location"])
    changes = {"public_item": True, "metadata_primary": json.dumps({"v": 2}), "title": "Hello"}
    response = client.put(
        f"/v3/media/{item_id}",
        data=json.dumps(changes),
        headers={
            **headers,
            "Content-Type": "application/json",
        },
    )
    assert response.status_code == 204
    assert response.data == b""
    item = client.get(f"/v3/media/{item_id}/info", headers=headers).get_json()
    assert (item["public_item"], item["public"], item["title"]) == (True, True, "Hello")
    assert item["metadata_primary"] == '{"v": 2}'
    # A public item is then downloadable without credentials, as the clients rely on.
    assert client.get(f"/v3/media/{item_id}").data == AUDIO


def test_delete_with_empty_json_body(
    client: FlaskClient, backends: Backends, owner: Credentials
) -> None:
    """`DELETE /v3/media/{id}` carrying `{}` and a JSON content type is a 204; the item is gone."""
    headers = bearer(vonage_jwt(owner))
    item_id = location_id(upload_like_node(client, headers).headers["Location"])
    response = client.delete(
        f"/v3/media/{item_id}", data=b"{}", headers={**headers, "Content-Type": "application/json"}
    )
    assert response.status_code == 204
    assert client.get(f"/v3/media/{item_id}/info", headers=headers).status_code == 404
    assert list(backends.blobs.list_blobs()) == []


def test_search_with_signature_parameters_and_paging(
    client: FlaskClient, owner: Credentials
) -> None:
    """`timestamp` and `sig` ride along; paging by page_index while `_links.next` exists visits
    every item once, and the links the clients could follow keep their parameters."""
    headers = bearer(vonage_jwt(owner))
    uploaded = {
        location_id(upload_like_node(client, headers).headers["Location"]) for _ in range(5)
    }
    params = {"page_size": 2, "order": "descending", "timestamp": int(time.time()), "sig": "ab12"}
    seen: list[str] = []
    page_index = 0
    while True:
        response = client.get(
            "/v3/media", query_string={**params, "page_index": page_index}, headers=headers
        )
        assert response.status_code == 200
        page = response.get_json()
        assert page["count"] == 5
        seen += [item["id"] for item in page["_embedded"]["media"]]
        if "next" not in page["_links"]:
            break
        assert "timestamp=" in page["_links"]["next"]["href"]
        assert "sig=ab12" in page["_links"]["next"]["href"]
        page_index += 1
    assert page_index == 2
    assert len(seen) == 5 and set(seen) == uploaded


TOKEN_SHAPES: list[Any] = [
    pytest.param(lambda c: vonage_jwt(c), id="vonage-jwt-default"),
    pytest.param(lambda c: vonage_jwt(c, acl=MEDIA_ACL), id="vonage-jwt-media-acl"),
    pytest.param(lambda c: vonage_jwt(c, ttl=None), id="legacy-no-exp"),
    pytest.param(
        lambda c: vonage_jwt(c, ttl=None, issued=time.time() - 600), id="legacy-no-exp-10-min-old"
    ),
    pytest.param(lambda c: vonage_jwt(c, sub="alice", nbf=int(time.time())), id="with-sub-nbf"),
    pytest.param(lambda c: vonage_jwt(c, ttl=86400), id="day-long-ttl"),
    pytest.param(
        lambda c: vonage_jwt(c, acl={"paths": {"/*/media/**": {}, "/*/users/**": {}}}),
        id="multi-path-acl",
    ),
]


def test_official_token_shapes_are_accepted(
    subtests: pytest.Subtests, client: FlaskClient, owner: Credentials
) -> None:
    """Every token shape the official generators produce authenticates upload and search."""
    for case in TOKEN_SHAPES:
        with subtests.test(case.id):
            (make,) = case.values
            headers = bearer(make(owner))
            created = upload_like_node(client, headers)
            assert created.status_code == 201, created.get_data(as_text=True)
            response = client.get("/v3/media", headers=headers)
            assert response.status_code == 200


def test_reused_jti_is_accepted(client: FlaskClient, owner: Credentials) -> None:
    """The same token twice, and two tokens sharing a jti, all work (clients reuse jti)."""
    now = int(time.time())
    token = vonage_jwt(owner, jti="fixed-jti", issued=now)
    twin = vonage_jwt(owner, jti="fixed-jti", issued=now - 1)
    assert token != twin
    statuses = [
        client.get("/v3/media", headers=bearer(token)).status_code,
        client.get("/v3/media", headers=bearer(token)).status_code,
        client.get("/v3/media", headers=bearer(twin)).status_code,
        client.get("/v3/media", query_string={"jwt-token": token}).status_code,
    ]
    assert statuses == [200, 200, 200, 200]
