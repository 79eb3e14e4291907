"""GET /v3/media/{id}/info and PUT /v3/media/{id}[/info] (SPEC §1, §4.2, §4.3)."""

from __future__ import annotations

import io
import itertools
import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from media_service.api.media import ITEM_SCHEMA
from media_service.schemas.media import item_document
from media_service.storage.interfaces import AudioFacts, MediaItem
from tests.api.media_api_support import (
    ISO_MILLIS_Z,
    ITEM_FIELDS,
    MISSING_ID,
    md5_hex,
)
from tests.conftest import Credentials, Uploader
from tests.problems import assert_problem

UPDATE_PATHS = ["/v3/media/{id}/info", "/v3/media/{id}"]
CONTENT = b"RIFF\x24\x00\x00\x00WAVEfmt hello"


@pytest.fixture
def item(owner: Credentials, upload: Uploader) -> dict[str, Any]:
    """One private item of the owner's application, uploaded with Basic auth."""
    response = upload(owner.bearer(), CONTENT, filename="hello.wav", info='{"k": 1}')
    assert response.status_code == 201
    return response.get_json()


@pytest.fixture
def advance_clock(app: Flask) -> Callable[[timedelta], None]:
    """Move the service clock forward, so time_last_updated visibly changes."""
    service = app.extensions["media_service"].service
    original = service.clock
    offset = timedelta()

    def clock() -> Any:
        return original() + offset

    def advance(delta: timedelta) -> None:
        nonlocal offset
        offset += delta

    service.clock = clock
    return advance


def info(client: FlaskClient, item_id: str, headers: dict[str, str]) -> dict[str, Any]:
    response = client.get(f"/v3/media/{item_id}/info", headers=headers)
    assert response.status_code == 200
    return response.get_json()


# --------------------------------------------------------------------------- GET /info


def test_info_has_every_field(
    client: FlaskClient, owner: Credentials, item: dict[str, Any]
) -> None:
    """200 application/json with every SPEC §1 field, null where unknown, aliases equal."""
    response = client.get(f"/v3/media/{item['id']}/info", headers=owner.basic)
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert set(body) == ITEM_FIELDS
    assert body == item
    assert body["public"] is False and body["public_item"] is False
    for unknown in ("metadata_secondary", "title", "description", "source_url"):
        assert body[unknown] is None
    assert body["metadata_primary"] == '{"k": 1}'
    assert body["etag"] == md5_hex(CONTENT)
    assert body["application_id"] == "app-one"
    assert ISO_MILLIS_Z.match(body["time_created"])
    assert ISO_MILLIS_Z.match(body["time_last_updated"])
    # UUIDs are case-insensitive: the upper-case spelling names the same item.
    assert info(client, item["id"].upper(), owner.basic) == item


PLUS_FIVE = timezone(timedelta(hours=5))


def _item(**overrides: Any) -> MediaItem:
    fields: dict[str, Any] = {
        "id": "0b7c3a2e-8a55-4a4f-9a57-6b1b8f0f6f01",
        "account_id": "acct0001",
        "application_id": None,
        "original_file_name": "hello.wav",
        "mime_type": "audio/wav",
        "store_id": "file",
        "store_meta_params": {},
        "max_downloads_allowed": 0,
        "times_downloaded": 0,
        "etag": "0" * 32,
        "media_size": 0,
        "time_created": datetime(2020, 1, 1, 14, 0, tzinfo=UTC),
        "time_last_updated": datetime(2020, 1, 1, 14, 0, tzinfo=UTC),
        "time_content_modified": datetime(2020, 1, 1, 14, 0, tzinfo=UTC),
        "public": False,
    }
    fields.update(overrides)
    return MediaItem(**fields)


@pytest.mark.parametrize(
    "item",
    [
        _item(),
        _item(
            application_id="app-one",
            store_id="s3",
            store_meta_params={"sha256": "abc", "filesize": "3", "ünï": "cødé"},
            max_downloads_allowed=5,
            times_downloaded=2,
            media_size=3 * 1024**3,
            time_created=datetime(1999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
            time_last_updated=datetime(
                2030, 6, 1, 2, 3, 4, 5000, tzinfo=timezone(timedelta(hours=5))
            ),
            public=True,
            metadata_primary='{"k": 1}',
            metadata_secondary="",
            title="T\u00e9\nline",
            description="d" * 5000,
            source_url="https://example.com/a?b=c",
            audio=AudioFacts(
                duration_ms=1500, sample_rate=8000, channels=1, codec="pcm", bit_rate=None
            ),
            audio_examined=True,
            expires_at=datetime(2031, 2, 3, 4, 5, 6, 789999, tzinfo=timezone(timedelta(hours=-3))),
        ),
    ],
    ids=["minimal", "everything-set"],
)
def test_info_json_is_the_schema_dump(item: MediaItem) -> None:
    """GET /info's hand-written serialiser agrees with MediaItemSchema, keys in the same order."""
    expected = ITEM_SCHEMA.dump(item)
    built = item_document(item)
    assert built == expected
    assert list(built) == list(expected)
    assert json.dumps(built) == json.dumps(expected)


BAD_ID_CASES = [
    pytest.param("not-a-uuid", 400, ["id"], id="word"),
    pytest.param("12345", 400, ["id"], id="number"),
    pytest.param("0" * 200, 400, ["id"], id="long"),
    pytest.param(MISSING_ID, 404, None, id="unknown-uuid"),
    pytest.param(MISSING_ID.upper(), 404, None, id="unknown-uuid-upper"),
]


def test_info_of_bad_or_unknown_id(
    subtests: pytest.Subtests, client: FlaskClient, owner: Credentials
) -> None:
    """A non-UUID id is 400 naming `id`; a well-formed unknown one is 404."""
    for case in BAD_ID_CASES:
        with subtests.test(case.id):
            item_id, status, names = case.values
            response = client.get(f"/v3/media/{item_id}/info", headers=owner.basic)
            assert_problem(response, status, names=names)


# --------------------------------------------------------------------------- PUT: body forms


def send_update(
    client: FlaskClient,
    path: str,
    headers: dict[str, str],
    kind: str,
    fields: dict[str, Any],
    **extra: Any,
) -> Any:
    """PUT `fields` as a JSON, urlencoded or multipart body."""
    if kind == "json":
        return client.put(path, json=fields, headers=headers, **extra)
    form = {key: str(value) for key, value in fields.items()}
    content_type = (
        "application/x-www-form-urlencoded" if kind == "urlencoded" else "multipart/form-data"
    )
    return client.put(path, data=form, headers=headers, content_type=content_type, **extra)


UPDATE_CASES = [
    pytest.param("json", {"title": "T", "public": True}, {"title": "T", "public": True}, id="json"),
    pytest.param("json", {"public_item": True}, {"public": True}, id="json-public_item"),
    pytest.param("json", {"public": 1}, {"public": True}, id="json-public-1"),
    pytest.param("json", {"public": "false"}, {"public": False}, id="json-public-string"),
    pytest.param("json", {"max_downloads_allowed": 3}, {"max_downloads_allowed": 3}, id="max"),
    pytest.param(
        "json", {"max_downloads_allowed": None}, {"max_downloads_allowed": 0}, id="max-null"
    ),
    pytest.param("json", {"metadata_primary": None}, {"metadata_primary": None}, id="clear-meta"),
    pytest.param(
        "json",
        {"description": "d\nd", "metadata_secondary": "[1]"},
        {"description": "d\nd", "metadata_secondary": "[1]"},
        id="texts",
    ),
    pytest.param("json", {"mime_type": "Audio/Ogg"}, {"mime_type": "audio/ogg"}, id="mime"),
    pytest.param(
        "urlencoded", {"title": "f", "public": "1"}, {"title": "f", "public": True}, id="form"
    ),
    pytest.param(
        "urlencoded", {"max_downloads_allowed": "7"}, {"max_downloads_allowed": 7}, id="form-max"
    ),
    pytest.param(
        "multipart",
        {"title": "m", "public_item": "true"},
        {"title": "m", "public": True},
        id="multipart",
    ),
    pytest.param("multipart", {"public": "0"}, {"public": False}, id="multipart-public-0"),
]


def test_update_applies_fields_and_answers_204(
    subtests: pytest.Subtests,
    client: FlaskClient,
    owner: Credentials,
    upload: Uploader,
) -> None:
    """Both paths accept JSON, urlencoded and multipart bodies: 204, empty, fields applied,
    every other field unchanged."""
    for path, case in itertools.product(UPDATE_PATHS, UPDATE_CASES):
        with subtests.test(f"{path}-{case.id}"):
            kind, fields, expected = case.values
            before = upload(owner.basic, CONTENT, public="true").get_json()
            response = send_update(client, path.format(id=before["id"]), owner.basic, kind, fields)
            assert response.status_code == 204
            assert response.data == b""
            after = info(client, before["id"], owner.basic)
            assert {key: after[key] for key in expected} == expected
            assert after["public_item"] == after["public"]
            same = ITEM_FIELDS - set(expected) - set(fields) - {"public_item", "time_last_updated"}
            assert {key: after[key] for key in same} == {key: before[key] for key in same}


def test_update_moves_time_last_updated_but_not_etag(
    subtests: pytest.Subtests,
    client: FlaskClient,
    owner: Credentials,
    item: dict[str, Any],
    advance_clock: Callable[[timedelta], None],
) -> None:
    """On both paths time_last_updated moves to the update's time; etag, size and time_created
    stay."""
    before = item
    for path in UPDATE_PATHS:
        with subtests.test(path):
            advance_clock(timedelta(minutes=5))
            response = client.put(
                path.format(id=item["id"]), json={"title": path}, headers=owner.basic
            )
            assert response.status_code == 204
            after = info(client, item["id"], owner.basic)
            assert ISO_MILLIS_Z.match(after["time_last_updated"])
            assert after["time_last_updated"] > before["time_last_updated"]
            assert after["time_created"] == item["time_created"]
            assert after["etag"] == item["etag"]
            assert after["media_size"] == item["media_size"]
            before = after


PREFER_CASES = [
    pytest.param("return=representation", 200, id="plain"),
    pytest.param("respond-async, return=representation", 200, id="in-a-list"),
    pytest.param("Return=Representation", 200, id="any-case"),
    pytest.param("return=minimal", 204, id="minimal"),
    pytest.param("handling=lenient", 204, id="other-preference"),
]


def test_prefer_return_representation_answers_200_with_the_item(
    subtests: pytest.Subtests, client: FlaskClient, owner: Credentials, item: dict[str, Any]
) -> None:
    """`Prefer: return=representation` turns the 204 into 200 with the updated item."""
    for case in PREFER_CASES:
        with subtests.test(case.id):
            prefer, status = case.values
            response = client.put(
                f"/v3/media/{item['id']}/info",
                json={"title": case.id},
                headers={**owner.basic, "Prefer": prefer},
            )
            assert response.status_code == status
            if status == 204:
                assert response.data == b""
                assert "Preference-Applied" not in response.headers
                continue
            assert response.mimetype == "application/json"
            assert response.headers["Preference-Applied"] == "return=representation"
            body = response.get_json()
            assert set(body) == ITEM_FIELDS
            assert body["title"] == case.id
            assert body == info(client, item["id"], owner.basic)


def test_update_with_bearer_of_the_owning_application(
    client: FlaskClient, owner: Credentials, item: dict[str, Any]
) -> None:
    """The application that uploaded the item may update it with its JWT."""
    response = client.put(f"/v3/media/{item['id']}", json={"title": "j"}, headers=owner.bearer())
    assert response.status_code == 204
    assert info(client, item["id"], owner.basic)["title"] == "j"


# --------------------------------------------------------------------------- PUT: refusals

MAX = "max_downloads_allowed"
INVALID_JSON_CASES = [
    pytest.param({"id": MISSING_ID}, ["id"], id="read-only-id"),
    pytest.param({"etag": "0" * 32}, ["etag"], id="read-only-etag"),
    pytest.param({"media_size": 1}, ["media_size"], id="read-only-media_size"),
    pytest.param({"times_downloaded": 0}, ["times_downloaded"], id="read-only-times_downloaded"),
    pytest.param({"account_id": "x"}, ["account_id"], id="read-only-account_id"),
    pytest.param({"source_url": "http://x/"}, ["source_url"], id="read-only-source_url"),
    pytest.param({"audio": None}, ["audio"], id="read-only-audio"),
    pytest.param({"audio": {"codec": "pcm"}}, ["audio"], id="read-only-audio-object"),
    pytest.param({"time_created": "2020-01-01T00:00:00.000Z"}, ["time_created"], id="read-only-t"),
    pytest.param({"$set": {"public": True}}, ["$set"], id="operator-set"),
    pytest.param({"$where": "1"}, ["$where"], id="operator-where"),
    pytest.param({"title": "ok", "colour": "r", "$set": {}}, ["colour", "$set"], id="each-listed"),
    pytest.param({}, ["body"], id="empty"),
    pytest.param({"public": True, "public_item": False}, ["public_item"], id="aliases-differ"),
    pytest.param({"title": 5}, ["title"], id="title-number"),
    pytest.param({"title": ["a"]}, ["title"], id="title-list"),
    pytest.param({"title": "x" * 1025}, ["title"], id="title-too-long"),
    pytest.param({"title": "a\x07b"}, ["title"], id="title-control-char"),
    pytest.param({"public": "yes"}, ["public"], id="public-yes"),
    pytest.param({"public": None}, ["public"], id="public-null"),
    pytest.param({"public": 1.0}, ["public"], id="public-float"),
    pytest.param({"public_item": "on"}, ["public_item"], id="public_item-on"),
    pytest.param({MAX: -1}, [MAX], id="max-negative"),
    pytest.param({MAX: 1.5}, [MAX], id="max-fraction"),
    pytest.param({MAX: "abc"}, [MAX], id="max-string"),
    pytest.param({MAX: 2**70}, [MAX], id="max-huge"),
    pytest.param({MAX: True}, [MAX], id="max-boolean"),
    pytest.param({"mime_type": "text"}, ["mime_type"], id="mime-no-subtype"),
    pytest.param({"mime_type": "text/plain\r\nX-Evil: 1"}, ["mime_type"], id="mime-injection"),
    pytest.param({"title": 5, "public": "yes", "etag": "e"}, ["title", "public", "etag"], id="3"),
]


def test_invalid_update_is_400_listing_each_field(
    subtests: pytest.Subtests, client: FlaskClient, owner: Credentials, item: dict[str, Any]
) -> None:
    """Unknown, read-only, `$`-prefixed and mistyped fields: 400 naming each; nothing changes."""
    for case in INVALID_JSON_CASES:
        with subtests.test(case.id):
            body, names = case.values
            response = client.put(f"/v3/media/{item['id']}/info", json=body, headers=owner.basic)
            assert_problem(response, 400, names=names)
            assert info(client, item["id"], owner.basic) == item


INVALID_FORM_CASES = [
    pytest.param("urlencoded", {"public": "yes"}, ["public"], id="form-public"),
    pytest.param("urlencoded", {MAX: "-1"}, [MAX], id="form-max"),
    pytest.param("urlencoded", {"etag": "x", "id": "y"}, ["etag", "id"], id="form-read-only"),
    pytest.param("urlencoded", {}, ["body"], id="form-empty"),
    pytest.param("multipart", {"public": "1", "public_item": "0"}, ["public_item"], id="mp-alias"),
    pytest.param("multipart", {MAX: "1.5"}, [MAX], id="multipart-max"),
    pytest.param("multipart", {"$where": "x"}, ["$where"], id="multipart-operator"),
]


def test_invalid_form_update_is_400(
    subtests: pytest.Subtests, client: FlaskClient, owner: Credentials, item: dict[str, Any]
) -> None:
    """Form bodies are validated by the same rules as JSON."""
    for case in INVALID_FORM_CASES:
        with subtests.test(case.id):
            kind, fields, names = case.values
            response = send_update(client, f"/v3/media/{item['id']}", owner.basic, kind, fields)
            assert_problem(response, 400, names=names)
            assert info(client, item["id"], owner.basic) == item


def test_repeated_form_field_and_file_part_are_400(
    client: FlaskClient, owner: Credentials, item: dict[str, Any]
) -> None:
    """`title=a&title=b` is ambiguous and PUT takes no file: each is 400 naming the field."""
    repeated = client.put(
        f"/v3/media/{item['id']}",
        data="title=a&title=b",
        headers=owner.basic,
        content_type="application/x-www-form-urlencoded",
    )
    assert_problem(repeated, 400, names=["title"])
    with_file = client.put(
        f"/v3/media/{item['id']}",
        data={"filedata": (io.BytesIO(b"new bytes"), "new.wav")},
        headers=owner.basic,
        content_type="multipart/form-data",
    )
    assert_problem(with_file, 400, names=["filedata"])
    assert info(client, item["id"], owner.basic) == item


UNREADABLE_CASES = [
    pytest.param(b'{"title": ', "application/json", 400, id="truncated-json"),
    pytest.param(b"{'title': 'x'}", "application/json", 400, id="single-quotes"),
    pytest.param(b'["title", "x"]', "application/json", 400, id="json-array"),
    pytest.param(b'"just a string"', "application/json", 400, id="json-string"),
    pytest.param(b"null", "application/json", 400, id="json-null"),
    pytest.param(b"\xff\xfe not utf-8", "application/json", 400, id="not-utf8"),
    pytest.param(b"[" * 10000 + b"]" * 10000, "application/json", 400, id="nested-arrays"),
    pytest.param(
        b'{"a":' * 10000 + b"1" + b"}" * 10000, "application/json", 400, id="nested-objects"
    ),
    pytest.param(b"", "application/json", 400, id="empty-json"),
    pytest.param(b"", None, 400, id="no-body-no-type"),
    pytest.param(b"title=x", "text/plain", 415, id="text-plain"),
    pytest.param(b"<title>x</title>", "application/xml", 415, id="xml"),
    pytest.param(b"title=x", "application/octet-stream", 415, id="octet-stream"),
]


def test_unreadable_update_body(
    subtests: pytest.Subtests, client: FlaskClient, owner: Credentials, item: dict[str, Any]
) -> None:
    """Invalid, empty or non-object JSON is 400 (never a 500, however deep); a missing body is an
    empty update (400); other media types are 415."""
    for case in UNREADABLE_CASES:
        with subtests.test(case.id):
            data, content_type, status = case.values
            response = client.put(
                f"/v3/media/{item['id']}/info",
                data=data,
                headers=owner.basic,
                content_type=content_type,
            )
            assert_problem(response, status)
            assert info(client, item["id"], owner.basic) == item


def test_json_with_charset_parameter_is_json(
    client: FlaskClient, owner: Credentials, item: dict[str, Any]
) -> None:
    """`application/json; charset=utf-8` (what many clients send) is accepted."""
    response = client.put(
        f"/v3/media/{item['id']}/info",
        data=json.dumps({"title": "é"}).encode(),
        headers=owner.basic,
        content_type="application/json; charset=utf-8",
    )
    assert response.status_code == 204
    assert info(client, item["id"], owner.basic)["title"] == "é"


def test_update_of_bad_or_unknown_id(client: FlaskClient, owner: Credentials) -> None:
    """On both paths a non-UUID id is 400 naming `id`; an unknown one is 404."""
    for path in UPDATE_PATHS:
        bad = client.put(path.format(id="not-a-uuid"), json={"title": "x"}, headers=owner.basic)
        assert_problem(bad, 400, names=["id"])
        unknown = client.put(path.format(id=MISSING_ID), json={"title": "x"}, headers=owner.basic)
        assert_problem(unknown, 404)


# --------------------------------------------------------------------------- form bodies, strictly

BOUNDARY = "strict-form-boundary"


def multipart_body(fields: dict[str, bytes]) -> bytes:
    parts = b"".join(
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        + value
        + b"\r\n"
        for name, value in fields.items()
    )
    return parts + f"--{BOUNDARY}--\r\n".encode()


@pytest.mark.parametrize(
    ("content_type", "body", "names"),
    [
        ("application/x-www-form-urlencoded", b"title=%ed%a0%80", ["title"]),
        ("application/x-www-form-urlencoded", b"description=%ff", ["description"]),
        (
            "application/x-www-form-urlencoded",
            b"title=ok&metadata_primary=%C3",
            ["metadata_primary"],
        ),
        ("application/x-www-form-urlencoded", b"title=\xff", None),  # not even ASCII
        ("application/x-www-form-urlencoded", b"%ff=x", None),  # a field name
        (
            f"multipart/form-data; boundary={BOUNDARY}",
            multipart_body({"title": b"\xed\xa0\x80"}),
            None,
        ),
        (f"multipart/form-data; boundary={BOUNDARY}", multipart_body({"title": b"\xff"}), None),
    ],
    ids=[
        "urlenc-surrogate",
        "urlenc-ff",
        "urlenc-truncated",
        "urlenc-raw",
        "urlenc-name",
        "mp-surrogate",
        "mp-ff",
    ],
)
def test_form_updates_refuse_text_that_is_not_utf8(
    client: FlaskClient,
    owner: Credentials,
    item: dict[str, Any],
    content_type: str,
    body: bytes,
    names: list[str] | None,
) -> None:
    """400, never a stored U+FFFD or a silently dropped field; the item is unchanged."""
    response = client.put(
        f"/v3/media/{item['id']}/info",
        data=body,
        headers={**owner.basic, "Content-Type": content_type},
    )
    assert_problem(response, 400, names=names)
    assert info(client, item["id"], owner.basic)["title"] == item["title"]


def test_form_updates_still_take_utf8_text(
    client: FlaskClient, owner: Credentials, item: dict[str, Any]
) -> None:
    for content_type, body in (
        ("application/x-www-form-urlencoded", b"title=Gr%C3%BC%C3%9Fe+an+alle&public=true"),
        (
            f"multipart/form-data; boundary={BOUNDARY}",
            multipart_body({"title": "Grüße an alle".encode(), "public": b"true"}),
        ),
    ):
        response = client.put(
            f"/v3/media/{item['id']}/info",
            data=body,
            headers={**owner.basic, "Content-Type": content_type},
        )
        assert response.status_code == 204, response.get_data(as_text=True)
        updated = info(client, item["id"], owner.basic)
        assert updated["title"] == "Grüße an alle" and updated["public"] is True


def test_urlencoded_upload_refuses_a_url_that_is_not_utf8(
    client: FlaskClient, owner: Credentials
) -> None:
    response = client.post(
        "/v3/media",
        data=b"url=http%3A%2F%2Fexample.invalid%2F%ff",
        headers={**owner.basic, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert_problem(response, 400, names=["url"])
