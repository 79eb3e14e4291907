"""Expiry through the API, over every backend pair: `ttl` / `expires_at` at upload and update,
MEDIA_DEFAULT_TTL, and an item that is gone for everyone from its expires_at on (info, download,
HEAD, update, delete, search pages and counts), before the sweeper has run and after.

The service's clock is frozen and moved by the test, so every boundary is exact.
"""

from __future__ import annotations

import io
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from media_service.factory import create_app
from media_service.schemas.expiry import TTL_MAX_SECONDS
from media_service.service.sweeper import sweep
from media_service.settings import ConfigError, Settings
from media_service.storage.interfaces import Backends, ItemState
from tests.api.media_api_support import ISO_MILLIS_Z, assert_nothing_left
from tests.clock import Clock, freeze
from tests.conftest import Credentials, Uploader
from tests.problems import assert_problem

MS = timedelta(milliseconds=1)
CONTENT = b"RIFF\x24\x00\x00\x00WAVEfmt expiring"


@pytest.fixture
def clock(app: Flask) -> Clock:
    return freeze(app)


def iso(value: datetime) -> str:
    return (
        value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    )


def created(response: Any) -> dict[str, Any]:
    assert response.status_code == 201, response.get_json()
    item: dict[str, Any] = response.get_json()
    return item


def info(client: FlaskClient, item_id: str, headers: dict[str, str]) -> Any:
    return client.get(f"/v3/media/{item_id}/info", headers=headers)


def search_ids(client: FlaskClient, headers: dict[str, str], **params: Any) -> tuple[int, list]:
    response = client.get("/v3/media", headers=headers, query_string=params)
    assert response.status_code == 200, response.get_json()
    body = response.get_json()
    return body["count"], [item["id"] for item in body["_embedded"]["media"]]


def put(client: FlaskClient, item_id: str, headers: dict[str, str], **kwargs: Any) -> Any:
    return client.put(f"/v3/media/{item_id}/info", headers=headers, **kwargs)


# --------------------------------------------------------------------------- upload


def test_upload_with_a_ttl_expires_that_many_seconds_after_it_is_stored(
    client: FlaskClient, owner: Credentials, upload: Uploader, clock: Clock
) -> None:
    item = created(upload(owner.basic, CONTENT, ttl="90"))
    assert item["expires_at"] == iso(clock.now + timedelta(seconds=90))
    assert ISO_MILLIS_Z.match(item["expires_at"])
    assert info(client, item["id"], owner.basic).get_json()["expires_at"] == item["expires_at"]
    page = client.get("/v3/media", headers=owner.basic).get_json()
    assert page["_embedded"]["media"][0]["expires_at"] == item["expires_at"]


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        ("2031-02-03T04:05:06.789Z", "2031-02-03T04:05:06.789Z"),
        ("2031-02-03T04:05:06.7891+02:00", "2031-02-03T02:05:06.789Z"),
        ("2031-02-03T04:05", "2031-02-03T04:05:00.000Z"),  # no offset: UTC
        ("2031-02-03", "2031-02-03T00:00:00.000Z"),
    ],
)
def test_upload_with_expires_at_stores_it_as_utc_milliseconds(
    owner: Credentials, upload: Uploader, given: str, stored: str
) -> None:
    assert created(upload(owner.basic, CONTENT, expires_at=given))["expires_at"] == stored


def test_upload_without_expiry_never_expires(owner: Credentials, upload: Uploader) -> None:
    assert created(upload(owner.basic, CONTENT))["expires_at"] is None


def test_the_longest_ttl_is_accepted(owner: Credentials, upload: Uploader, clock: Clock) -> None:
    item = created(upload(owner.basic, CONTENT, ttl=str(TTL_MAX_SECONDS)))
    assert item["expires_at"] == iso(clock.now + timedelta(seconds=TTL_MAX_SECONDS))


BAD_TTLS = ["0", "-1", str(TTL_MAX_SECONDS + 1), "abc", "1.5", "1e3", "+5", "1_000", "٣", "9" * 40]


@pytest.mark.parametrize("value", BAD_TTLS)
def test_upload_refuses_a_bad_ttl_and_keeps_nothing(
    client: FlaskClient, backends: Backends, owner: Credentials, upload: Uploader, value: str
) -> None:
    assert_problem(upload(owner.basic, CONTENT, ttl=value), 400, names=["ttl"])
    assert_nothing_left(client, backends, owner.basic)


@pytest.mark.parametrize("value", ["tomorrow", "2031-13-01T00:00:00Z", "2001-01-01T00:00:00Z"])
def test_upload_refuses_a_bad_or_past_expires_at_and_keeps_nothing(
    client: FlaskClient, backends: Backends, owner: Credentials, upload: Uploader, value: str
) -> None:
    assert_problem(upload(owner.basic, CONTENT, expires_at=value), 400, names=["expires_at"])
    assert_nothing_left(client, backends, owner.basic)


def test_upload_refuses_an_expires_at_that_is_now(
    client: FlaskClient, backends: Backends, owner: Credentials, upload: Uploader, clock: Clock
) -> None:
    """In the future means later than now: an item that would be gone at once is refused."""
    assert_problem(
        upload(owner.basic, CONTENT, expires_at=iso(clock.now)), 400, names=["expires_at"]
    )
    assert_nothing_left(client, backends, owner.basic)
    almost = (clock.now + MS / 2).isoformat()  # stored at milliseconds: that would be now
    assert_problem(upload(owner.basic, CONTENT, expires_at=almost), 400, names=["expires_at"])
    later = created(upload(owner.basic, CONTENT, expires_at=iso(clock.now + MS)))
    assert later["expires_at"] == iso(clock.now + MS)


@pytest.mark.parametrize(
    ("ttl", "expires_at"), [("60", "2031-01-01T00:00:00Z"), ("", ""), ("x", "y")]
)
def test_upload_refuses_both_and_names_both(
    client: FlaskClient,
    backends: Backends,
    owner: Credentials,
    upload: Uploader,
    ttl: str,
    expires_at: str,
) -> None:
    response = upload(owner.basic, CONTENT, ttl=ttl, expires_at=expires_at)
    body = assert_problem(response, 400)
    assert {"ttl", "expires_at"} <= {entry["name"] for entry in body["invalid_parameters"]}
    assert_nothing_left(client, backends, owner.basic)


def test_a_url_upload_takes_a_ttl_too(
    client: FlaskClient, backends: Backends, owner: Credentials, clock: Clock
) -> None:
    """The urlencoded upload (`curl -d url=...`) validates the same fields the same way."""
    response = client.post(
        "/v3/media",
        data={"url": "http://127.0.0.1:9/x", "ttl": "0"},
        headers=owner.basic,
        content_type="application/x-www-form-urlencoded",
    )
    assert_problem(response, 400, names=["ttl"])
    assert_nothing_left(client, backends, owner.basic)


# --------------------------------------------------------------------------- default ttl


@pytest.fixture
def default_ttl_app(settings: Settings, backends: Backends) -> Flask:
    app = create_app(settings.with_overrides(default_ttl_seconds=3600), backends=backends)
    app.config["TESTING"] = True
    return app


def test_the_default_ttl_applies_to_items_that_set_neither(
    default_ttl_app: Flask, owner: Credentials
) -> None:
    clock = freeze(default_ttl_app)
    client = default_ttl_app.test_client()

    def post(**fields: str) -> dict[str, Any]:
        data: dict[str, Any] = {"filedata": (io.BytesIO(CONTENT), "a.wav", "audio/wav"), **fields}
        return created(client.post("/v3/media", data=data, headers=owner.basic))

    hour = iso(clock.now + timedelta(hours=1))
    assert post()["expires_at"] == hour
    assert post(ttl="")["expires_at"] == hour  # an empty field is a field not given
    assert post(ttl="5")["expires_at"] == iso(clock.now + timedelta(seconds=5))
    assert post(expires_at="2031-01-01T00:00:00Z")["expires_at"] == "2031-01-01T00:00:00.000Z"
    # And an update may remove it: the default is a default, not a policy.
    item = post()
    assert put(client, item["id"], owner.basic, json={"ttl": None}).status_code == 204
    assert info(client, item["id"], owner.basic).get_json()["expires_at"] is None


# --------------------------------------------------------------------------- update


@pytest.fixture
def item(owner: Credentials, upload: Uploader, clock: Clock) -> dict[str, Any]:
    return created(upload(owner.basic, CONTENT, ttl="600", title="t"))


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({"ttl": 120}, "json"),
        ({"ttl": "120"}, "json"),
        ({"ttl": "120"}, "form"),
        ({"ttl": "120"}, "multipart"),
        ({"expires_at": "2031-01-01T00:00:00+01:00"}, "json"),
        ({"expires_at": "2031-01-01T00:00:00+01:00"}, "form"),
        ({"expires_at": "2031-01-01T00:00:00+01:00"}, "multipart"),
    ],
)
def test_update_sets_a_new_expiry(
    client: FlaskClient,
    owner: Credentials,
    item: dict[str, Any],
    clock: Clock,
    body: dict[str, Any],
    kind: str,
) -> None:
    clock.advance(timedelta(seconds=30))
    response = put(client, item["id"], owner.basic, **_body(body, kind))
    assert response.status_code == 204, response.get_json()
    expected = (
        iso(clock.now + timedelta(seconds=120)) if "ttl" in body else "2030-12-31T23:00:00.000Z"
    )
    after = info(client, item["id"], owner.basic).get_json()
    assert after["expires_at"] == expected
    assert after["title"] == "t" and after["etag"] == item["etag"]
    assert after["time_last_updated"] == iso(clock.now)


@pytest.mark.parametrize(
    ("body", "kind"),
    [
        ({"ttl": None}, "json"),
        ({"expires_at": None}, "json"),
        ({"ttl": ""}, "json"),
        ({"ttl": ""}, "form"),
        ({"expires_at": ""}, "form"),
        ({"ttl": ""}, "multipart"),
        ({"expires_at": " "}, "multipart"),
    ],
)
def test_update_with_null_or_an_empty_value_removes_the_expiry(
    client: FlaskClient,
    owner: Credentials,
    item: dict[str, Any],
    clock: Clock,
    body: dict[str, Any],
    kind: str,
) -> None:
    assert put(client, item["id"], owner.basic, **_body(body, kind)).status_code == 204
    assert info(client, item["id"], owner.basic).get_json()["expires_at"] is None
    clock.advance(timedelta(days=3650))
    assert info(client, item["id"], owner.basic).status_code == 200


def _body(values: dict[str, Any], kind: str) -> dict[str, Any]:
    if kind == "json":
        return {"json": values}
    if kind == "form":
        return {"data": values, "content_type": "application/x-www-form-urlencoded"}
    return {"data": values, "content_type": "multipart/form-data"}


def test_update_may_answer_with_the_representation(
    client: FlaskClient, owner: Credentials, item: dict[str, Any], clock: Clock
) -> None:
    response = client.put(
        f"/v3/media/{item['id']}/info",
        json={"ttl": 5},
        headers={**owner.basic, "Prefer": "return=representation"},
    )
    assert response.status_code == 200
    assert response.get_json()["expires_at"] == iso(clock.now + timedelta(seconds=5))


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ({"ttl": 60, "expires_at": "2031-01-01T00:00:00Z"}, ["ttl", "expires_at"]),
        ({"ttl": None, "expires_at": None}, ["ttl", "expires_at"]),
        ({"ttl": "x", "expires_at": "2031-01-01T00:00:00Z"}, ["ttl", "expires_at"]),
        ({"ttl": 0}, ["ttl"]),
        ({"ttl": -5}, ["ttl"]),
        ({"ttl": TTL_MAX_SECONDS + 1}, ["ttl"]),
        ({"ttl": 1.5}, ["ttl"]),
        ({"ttl": True}, ["ttl"]),
        ({"ttl": [60]}, ["ttl"]),
        ({"ttl": 10**30}, ["ttl"]),
        ({"expires_at": 1893456000}, ["expires_at"]),
        ({"expires_at": "soon"}, ["expires_at"]),
        ({"expires_at": "2001-01-01T00:00:00Z"}, ["expires_at"]),
        ({"expires_at": {"$gt": ""}}, ["expires_at"]),
    ],
)
def test_update_refuses_bad_expiry_and_changes_nothing(
    client: FlaskClient,
    owner: Credentials,
    item: dict[str, Any],
    body: dict[str, Any],
    names: list[str],
) -> None:
    assert_problem(put(client, item["id"], owner.basic, json=body), 400, names=names)
    assert info(client, item["id"], owner.basic).get_json() == item


def test_update_refuses_both_in_a_form_too(
    client: FlaskClient, owner: Credentials, item: dict[str, Any]
) -> None:
    response = put(client, item["id"], owner.basic, **_body({"ttl": "", "expires_at": ""}, "form"))
    assert_problem(response, 400, names=["ttl", "expires_at"])
    assert info(client, item["id"], owner.basic).get_json() == item


# --------------------------------------------------------------------------- gone at expires_at


@pytest.fixture
def expiring(
    owner: Credentials, upload: Uploader, clock: Clock
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A public item expiring in 2 s, and a private one that never expires."""
    short = created(upload(owner.basic, CONTENT, ttl="2", public="true"))
    stays = created(upload(owner.basic, CONTENT))
    return short, stays


def test_an_item_is_there_until_its_last_millisecond(
    client: FlaskClient, owner: Credentials, expiring: tuple[dict, dict], clock: Clock
) -> None:
    short, stays = expiring
    clock.advance(timedelta(seconds=2) - MS)
    assert info(client, short["id"], owner.basic).status_code == 200
    assert client.get(f"/v3/media/{short['id']}").data == CONTENT  # public: anonymous
    count, ids = search_ids(client, owner.basic)
    assert count == 2 and sorted(ids) == sorted([stays["id"], short["id"]])


def test_from_expires_at_on_the_item_is_gone_for_everyone(
    client: FlaskClient,
    owner: Credentials,
    sibling: Credentials,
    stranger: Credentials,
    expiring: tuple[dict, dict],
    clock: Clock,
) -> None:
    short, stays = expiring
    clock.advance(timedelta(seconds=2))  # exactly expires_at
    item_id = short["id"]
    for headers in (owner.basic, owner.bearer(), sibling.bearer(), stranger.basic, {}):
        assert_problem(client.get(f"/v3/media/{item_id}", headers=headers), 404)
        assert client.head(f"/v3/media/{item_id}", headers=headers).status_code == 404
    for headers in (owner.basic, owner.bearer(), sibling.bearer()):
        assert_problem(info(client, item_id, headers), 404)
        assert_problem(put(client, item_id, headers, json={"title": "x"}), 404)
        assert_problem(put(client, item_id, headers, json={"ttl": 3600}), 404)  # no revival
        assert_problem(client.delete(f"/v3/media/{item_id}", headers=headers), 404)
    assert search_ids(client, owner.basic) == (1, [stays["id"]])
    assert search_ids(client, owner.bearer()) == (0, [])  # uploaded with Basic: no application
    # Still not back, a little later: nothing was changed by the refused updates.
    clock.advance(timedelta(minutes=5))
    assert info(client, item_id, owner.basic).status_code == 404
    assert client.get(f"/v3/media/{stays['id']}", headers=owner.basic).data == CONTENT


def test_search_counts_and_pages_only_live_items(
    client: FlaskClient, owner: Credentials, upload: Uploader, clock: Clock
) -> None:
    """The total comes from per-minute counts that still hold expired-but-unswept items: it
    must stay exact, and so must the page links it decides."""
    ids = []
    for number in range(7):
        ttl = {"ttl": "3600"} if number % 2 == 0 else {}
        ids.append(created(upload(owner.bearer(), CONTENT, **ttl))["id"])
        clock.advance(timedelta(minutes=2))  # items in different minutes
    live = [item_id for number, item_id in enumerate(ids) if number % 2]
    start = iso(clock.now - timedelta(hours=1))
    assert search_ids(client, owner.basic, start_time=start, order="ascending") == (7, ids)
    clock.advance(timedelta(hours=1))  # the last ttl item was uploaded 2 min before that hour
    assert search_ids(client, owner.basic, start_time=start, order="ascending") == (3, live)
    for headers in (owner.basic, owner.bearer()):
        query = {"start_time": start, "order": "ascending", "page_size": 2}
        body = client.get("/v3/media", headers=headers, query_string=query).get_json()
        assert body["count"] == 3 and [i["id"] for i in body["_embedded"]["media"]] == live[:2]
        assert "page_index=1" in body["_links"]["last"]["href"]
        query["page_index"] = 1
        last = client.get("/v3/media", headers=headers, query_string=query).get_json()
        assert [i["id"] for i in last["_embedded"]["media"]] == live[2:]
        assert "next" not in last["_links"]


# --------------------------------------------------------------------------- the sweeper


def test_the_sweeper_deletes_expired_items_bytes_and_documents(
    client: FlaskClient,
    backends: Backends,
    owner: Credentials,
    expiring: tuple[dict, dict],
    clock: Clock,
) -> None:
    short, stays = expiring
    keys = {blob.key for blob in backends.blobs.list_blobs()}
    assert keys == {short["id"], stays["id"]}
    before = sweep(backends, now=clock.now + timedelta(seconds=2) - MS, grace=timedelta(0))
    assert before.expired_removed == 0
    clock.advance(timedelta(seconds=2))
    report = sweep(backends, now=clock.now, grace=timedelta(0))
    assert report.expired_removed == 1 and report.errors == 0
    assert {blob.key for blob in backends.blobs.list_blobs()} == {stays["id"]}
    assert backends.media.get(short["id"], include_hidden=True) is None
    assert info(client, short["id"], owner.basic).status_code == 404
    assert search_ids(client, owner.basic) == (1, [stays["id"]])
    assert sweep(backends, now=clock.now, grace=timedelta(0)).expired_removed == 0


def test_a_download_streaming_when_the_item_expires_finishes(
    client: FlaskClient, backends: Backends, owner: Credentials, upload: Uploader, clock: Clock
) -> None:
    """Expiry and even the sweep land between two chunks of a 3 MiB download: the open file
    (or S3 response) still delivers every byte; the next request is a 404."""
    content = bytes(range(256)) * (3 * 4096 + 7)
    item = created(upload(owner.basic, content, ttl="2", filename="big.bin"))
    response = client.get(f"/v3/media/{item['id']}", headers=owner.basic, buffered=False)
    assert response.status_code == 200
    chunks = iter(response.response)
    first = next(chunks)
    assert 0 < len(first) < len(content)
    clock.advance(timedelta(seconds=3))
    assert sweep(backends, now=clock.now, grace=timedelta(0)).expired_removed == 1
    rest = b"".join(chunks)
    response.close()
    assert first + rest == content
    assert client.get(f"/v3/media/{item['id']}", headers=owner.basic).status_code == 404
    assert {blob.key for blob in backends.blobs.list_blobs()} == set()


def test_an_item_whose_expiry_was_moved_on_is_not_swept(
    client: FlaskClient, backends: Backends, owner: Credentials, item: dict[str, Any], clock: Clock
) -> None:
    """The sweeper's tombstone is conditional on the item still being expired: another host
    moved its expiry on between the sweeper's listing and its delete."""
    media = backends.media
    listed = list(media.iter_expired(clock.now + timedelta(hours=1)))
    assert [found.id for found in listed] == [item["id"]]
    assert put(client, item["id"], owner.basic, json={"ttl": 7200}).status_code == 204
    assert media.mark_deleting(item["id"], expired_by=clock.now + timedelta(hours=1)) is None
    stored = media.get(item["id"])
    assert stored is not None and stored.state is ItemState.READY


# --------------------------------------------------------------------------- documents, settings


def test_openapi_describes_expiry_on_items_uploads_and_updates(client: FlaskClient) -> None:
    document = client.get("/v3/media/openapi.json").get_json()
    schemas = document["components"]["schemas"]
    field = schemas["MediaItem"]["properties"]["expires_at"]
    assert field["type"] == "string" and field["format"] == "date-time" and field["nullable"]
    update = schemas["Update"]["properties"]
    assert update["ttl"]["type"] == "integer" and update["ttl"]["maximum"] == TTL_MAX_SECONDS
    assert update["ttl"]["minimum"] == 1 and update["ttl"]["nullable"]
    assert update["expires_at"]["format"] == "date-time" and update["expires_at"]["nullable"]
    body = document["paths"]["/v3/media"]["post"]["requestBody"]["content"]
    for kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
        properties = body[kind]["schema"]["properties"]
        assert properties["ttl"]["maximum"] == TTL_MAX_SECONDS
        assert properties["expires_at"]["format"] == "date-time"


@pytest.mark.parametrize(
    ("value", "expected"), [(None, 0), ("", 0), ("0", 0), ("3600", 3600), ("86_400", 86400)]
)
def test_media_default_ttl_is_read_from_the_environment(value: str | None, expected: int) -> None:
    env = {} if value is None else {"MEDIA_DEFAULT_TTL": value}
    assert Settings.from_env(env).default_ttl_seconds == expected


@pytest.mark.parametrize("value", ["-1", "soon", "1.5", str(TTL_MAX_SECONDS + 1)])
def test_media_default_ttl_refuses_what_no_client_could_ask_for(value: str) -> None:
    with pytest.raises(ConfigError, match="MEDIA_DEFAULT_TTL"):
        Settings.from_env({"MEDIA_DEFAULT_TTL": value})
