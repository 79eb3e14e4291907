"""DELETE /v3/media/{id}[/info] (SPEC §4.5) and GET /v3/media search (SPEC §4.6).

Search tests control time through the service clock: items are uploaded while the clock reads
a chosen instant, so `time_created` (and ties) are exact.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient

from media_service.http.dates import format_iso_millis
from media_service.storage.interfaces import Backends
from tests.api.media_api_support import (
    ITEM_FIELDS,
    MISSING_ID,
    assert_nothing_left,
)
from tests.clock import freeze
from tests.conftest import Credentials, Uploader
from tests.problems import assert_problem

NOW = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
SEARCH_KEYS = {"page_size", "page_index", "count", "_links", "_embedded"}
DELETE_PATHS = ["/v3/media/{id}", "/v3/media/{id}/info"]


def iso(moment: datetime) -> str:
    return format_iso_millis(moment)


@pytest.fixture
def set_clock(app: Flask) -> Callable[[datetime], None]:
    """Freeze the service clock at a given instant (uploads get that time_created)."""
    return freeze(app, NOW).set


@pytest.fixture
def upload_at(
    set_clock: Callable[[datetime], None], upload: Uploader, owner: Credentials
) -> Callable[..., str]:
    """Upload a small item created at `moment` (owner's Basic auth unless headers are given)."""

    def _upload_at(moment: datetime, headers: dict[str, str] | None = None) -> str:
        set_clock(moment)
        response = upload(headers or owner.basic, b"seed", filename="seed.bin")
        assert response.status_code == 201
        return str(response.get_json()["id"])

    return _upload_at


def search(client: FlaskClient, headers: dict[str, str], **query: Any) -> dict[str, Any]:
    response = client.get("/v3/media", query_string=query, headers=headers)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    return response.get_json()


def ids(page: dict[str, Any]) -> list[str]:
    return [item["id"] for item in page["_embedded"]["media"]]


def href_query(href: str) -> dict[str, str]:
    """The query of a relative `/v3/media?...` link, after checking that it is one."""
    parts = urlsplit(href)
    assert (parts.scheme, parts.netloc, parts.path) == ("", "", "/v3/media"), href
    return dict(parse_qsl(parts.query, keep_blank_values=True, strict_parsing=True))


# --------------------------------------------------------------------------- delete


def test_delete_removes_metadata_and_bytes(
    subtests: pytest.Subtests,
    client: FlaskClient,
    backends: Backends,
    owner: Credentials,
    upload: Uploader,
) -> None:
    """204 with no body on both paths; the item is gone everywhere (info, download, search, blob
    store) and no tombstone is left for the sweeper; a second delete is 404."""
    for path in DELETE_PATHS:
        with subtests.test(path):
            item = upload(owner.basic, b"to be deleted").get_json()
            assert len(list(backends.blobs.list_blobs())) == 1

            deleted = client.delete(path.format(id=item["id"]), headers=owner.basic)
            assert deleted.status_code == 204
            assert deleted.data == b""

            assert_problem(client.get(f"/v3/media/{item['id']}/info", headers=owner.basic), 404)
            assert_problem(client.get(f"/v3/media/{item['id']}", headers=owner.basic), 404)
            assert_nothing_left(client, backends, owner.basic)
            assert_problem(client.delete(path.format(id=item["id"]), headers=owner.basic), 404)


def test_delete_leaves_other_items_alone(
    client: FlaskClient, backends: Backends, owner: Credentials, upload: Uploader
) -> None:
    """Only the named item's document and bytes go."""
    keep = upload(owner.basic, b"keep me").get_json()
    drop = upload(owner.basic, b"drop me").get_json()
    assert client.delete(f"/v3/media/{drop['id']}", headers=owner.basic).status_code == 204
    assert len(list(backends.blobs.list_blobs())) == 1
    got = client.get(f"/v3/media/{keep['id']}", headers=owner.basic)
    assert got.status_code == 200 and got.data == b"keep me"
    assert ids(search(client, owner.basic)) == [keep["id"]]


DELETE_BODY_CASES = [
    pytest.param({"json": {}}, id="official-client-empty-json"),
    pytest.param({"data": b"", "content_type": "application/json"}, id="empty-json-body"),
    pytest.param({"data": b"ignored", "content_type": "text/plain"}, id="text-body"),
]


def test_delete_ignores_a_request_body(
    subtests: pytest.Subtests,
    client: FlaskClient,
    backends: Backends,
    owner: Credentials,
    upload: Uploader,
) -> None:
    """Official clients send DELETE with a `{}` JSON body; whatever the body, it is 204."""
    for case in DELETE_BODY_CASES:
        with subtests.test(case.id):
            (body,) = case.values
            item = upload(owner.bearer()).get_json()
            response = client.delete(f"/v3/media/{item['id']}", headers=owner.bearer(), **body)
            assert response.status_code == 204
            assert_nothing_left(client, backends, owner.basic)


def test_delete_of_bad_or_unknown_id(client: FlaskClient, owner: Credentials) -> None:
    """On both paths a non-UUID id is 400 naming `id`; an unknown one is 404."""
    for path in DELETE_PATHS:
        bad = client.delete(path.format(id="not-a-uuid"), headers=owner.basic)
        assert_problem(bad, 400, names=["id"])
        assert_problem(client.delete(path.format(id=MISSING_ID), headers=owner.basic), 404)


# --------------------------------------------------------------------------- search: shape


def test_search_is_a_hal_page(client: FlaskClient, owner: Credentials, upload: Uploader) -> None:
    """200 with page_size, page_index, count, _links and _embedded.media of full items."""
    item = upload(owner.basic, b"x", info="meta").get_json()
    page = search(client, owner.basic)
    assert set(page) == SEARCH_KEYS
    assert (page["page_size"], page["page_index"], page["count"]) == (20, 0, 1)
    assert set(page["_links"]) == {"self", "first", "last"}
    assert set(page["_embedded"]) == {"media"}
    assert page["_embedded"]["media"] == [item]
    assert set(page["_embedded"]["media"][0]) == ITEM_FIELDS


def test_search_without_matches_is_an_empty_page(client: FlaskClient, owner: Credentials) -> None:
    """No match is 200 with count 0, an empty list, and self/first/last at page 0."""
    page = search(client, owner.basic, order="ascending")
    assert page["count"] == 0
    assert page["_embedded"]["media"] == []
    assert set(page["_links"]) == {"self", "first", "last"}
    for name in ("self", "first", "last"):
        assert href_query(page["_links"][name]["href"]) == {
            "order": "ascending",
            "page_index": "0",
        }


def test_default_page_size_is_20_within_1_to_100(
    client: FlaskClient, owner: Credentials, upload_at: Callable[..., str]
) -> None:
    """21 items: the first page holds 20, the count says 21 and a next page exists; page sizes
    1 and 100 are both valid."""
    for n in range(21):
        upload_at(NOW - timedelta(seconds=n))
    page = search(client, owner.basic)
    assert (page["page_size"], page["count"], len(page["_embedded"]["media"])) == (20, 21, 20)
    assert href_query(page["_links"]["next"]["href"]) == {"page_index": "1"}
    second = search(client, owner.basic, page_index=1)
    assert len(second["_embedded"]["media"]) == 1
    assert "next" not in second["_links"]
    # Both bounds of page_size are valid.
    assert len(search(client, owner.basic, page_size=1)["_embedded"]["media"]) == 1
    assert len(search(client, owner.basic, page_size=100)["_embedded"]["media"]) == 21


BAD_QUERY_CASES = [
    pytest.param({"page_size": 0}, ["page_size"], id="page_size-0"),
    pytest.param({"page_size": 101}, ["page_size"], id="page_size-101"),
    pytest.param({"page_size": -1}, ["page_size"], id="page_size-negative"),
    pytest.param({"page_size": "ten"}, ["page_size"], id="page_size-word"),
    pytest.param({"page_size": "1.5"}, ["page_size"], id="page_size-fraction"),
    pytest.param({"page_size": "9" * 40}, ["page_size"], id="page_size-huge"),
    pytest.param({"page_index": -1}, ["page_index"], id="page_index-negative"),
    pytest.param({"page_index": "first"}, ["page_index"], id="page_index-word"),
    pytest.param({"order": "sideways"}, ["order"], id="order-unknown"),
    pytest.param({"order": ""}, ["order"], id="order-empty"),
    pytest.param({"start_time": "yesterday"}, ["start_time"], id="start-word"),
    pytest.param({"start_time": "2024-13-01T00:00:00Z"}, ["start_time"], id="start-month-13"),
    pytest.param({"start_time": "2024-02-30T00:00:00Z"}, ["start_time"], id="start-feb-30"),
    pytest.param({"end_time": "2024-01-01T25:00:00Z"}, ["end_time"], id="end-hour-25"),
    pytest.param({"end_time": "1" * 200}, ["end_time"], id="end-long"),
    pytest.param(
        {"start_time": "2024-02-01T00:00:00Z", "end_time": "2024-01-31T23:59:59Z"},
        ["end_time"],
        id="end-before-start",
    ),
    pytest.param({"page_size": 0, "order": "x"}, ["page_size", "order"], id="two-bad"),
    pytest.param({"page_size": ["1", "2"]}, ["page_size"], id="repeated"),
]


def test_invalid_search_parameters_are_400(
    subtests: pytest.Subtests, client: FlaskClient, owner: Credentials
) -> None:
    """Out-of-range page sizes, bad indexes, orders and dates: 400 naming each parameter."""
    for case in BAD_QUERY_CASES:
        with subtests.test(case.id):
            query, names = case.values
            response = client.get("/v3/media", query_string=query, headers=owner.basic)
            assert_problem(response, 400, names=names)


# --------------------------------------------------------------------------- search: order, window


def test_order_is_by_time_created_then_id(
    client: FlaskClient, owner: Credentials, upload_at: Callable[..., str]
) -> None:
    """Ascending is (time_created, id); descending (the default) is its exact reverse, so items
    created in the same millisecond keep a stable order."""
    early = upload_at(NOW - timedelta(minutes=2))
    tied = sorted(upload_at(NOW - timedelta(minutes=1)) for _ in range(4))
    late = upload_at(NOW)
    ascending = [early, *tied, late]
    assert ids(search(client, owner.basic, order="ascending")) == ascending
    assert ids(search(client, owner.basic, order="descending")) == ascending[::-1]
    assert ids(search(client, owner.basic)) == ascending[::-1]


def test_time_window_bounds_are_inclusive(
    subtests: pytest.Subtests,
    client: FlaskClient,
    owner: Credentials,
    upload_at: Callable[..., str],
) -> None:
    """start_time and end_time include items created exactly at either bound; parameters the
    API does not know (the clients' timestamp and sig) change nothing."""
    t0, t1, t2 = NOW - timedelta(hours=3), NOW - timedelta(hours=2), NOW - timedelta(hours=1)
    a, b, c = upload_at(t0), upload_at(t1), upload_at(t2)
    one_ms = timedelta(milliseconds=1)
    cases = [
        ({"start_time": iso(t1), "end_time": iso(t1)}, [b], "single-instant"),
        ({"start_time": iso(t0), "end_time": iso(t2)}, [a, b, c], "both-bounds-hit"),
        ({"start_time": iso(t0 + one_ms), "end_time": iso(t2 - one_ms)}, [b], "just-inside"),
        ({"start_time": iso(t1)}, [b, c], "start-only"),
        ({"end_time": iso(t1)}, [a, b], "end-only-default-start"),
        ({"start_time": iso(t2 + one_ms)}, [], "after-everything"),
        ({"end_time": "9998-12-31T23:59:59.999Z"}, [a, b, c], "far-future-end"),
        ({"timestamp": "1700000000", "sig": "abc", "colour": "red"}, [a, b, c], "unknown-ignored"),
        ({"start_time": t1.strftime("%Y-%m-%dT%H:%M:%SZ")}, [b, c], "no-fraction"),
        (
            {"start_time": t1.astimezone(timezone(timedelta(hours=2))).isoformat()},
            [b, c],
            "utc-offset",
        ),
    ]
    for query, expected, case_id in cases:
        with subtests.test(case_id):
            page = search(client, owner.basic, order="ascending", **query)
            assert ids(page) == expected
            assert page["count"] == len(expected)


def test_default_start_time_is_seven_days_ago(
    client: FlaskClient,
    owner: Credentials,
    upload_at: Callable[..., str],
    set_clock: Callable[[datetime], None],
) -> None:
    """Without start_time only the last 7 days count (inclusive); older items need start_time."""
    eight_days = upload_at(NOW - timedelta(days=8))
    exactly_seven = upload_at(NOW - timedelta(days=7))
    just_older = upload_at(NOW - timedelta(days=7, milliseconds=1))
    six_days = upload_at(NOW - timedelta(days=6))
    set_clock(NOW)
    assert ids(search(client, owner.basic, order="ascending")) == [exactly_seven, six_days]
    everything = search(client, owner.basic, order="ascending", start_time="2000-01-01T00:00:00Z")
    assert ids(everything) == [eight_days, just_older, exactly_seven, six_days]


# --------------------------------------------------------------------------- search: paging


def test_links_keep_the_query_and_exist_only_for_real_pages(
    subtests: pytest.Subtests,
    client: FlaskClient,
    owner: Credentials,
    upload_at: Callable[..., str],
) -> None:
    """self/first/last always; next/prev only when those pages exist; relative hrefs that keep
    every query parameter (but never a jwt-token credential) and change only page_index."""
    for n in range(5):
        upload_at(NOW - timedelta(seconds=n))
    query = {"page_size": "2", "order": "ascending", "timestamp": "1700000000", "sig": "s"}
    expected_links = {
        0: {"self": 0, "first": 0, "last": 2, "next": 1},
        1: {"self": 1, "first": 0, "last": 2, "next": 2, "prev": 0},
        2: {"self": 2, "first": 0, "last": 2, "prev": 1},
    }
    for page_index, links in expected_links.items():
        with subtests.test(f"page-{page_index}"):
            page = search(client, owner.basic, page_index=page_index, **query)
            assert page["page_index"] == page_index
            assert page["count"] == 5
            assert set(page["_links"]) == set(links)
            for name, target in links.items():
                assert href_query(page["_links"][name]["href"]) == {
                    **query,
                    "page_index": str(target),
                }
    with subtests.test("jwt-token-not-echoed"):
        response = client.get("/v3/media", query_string={**query, "jwt-token": owner.token()})
        assert response.status_code == 200
        for link in response.get_json()["_links"].values():
            assert "jwt-token" not in href_query(link["href"])


def test_page_index_past_the_end_is_an_empty_page(
    client: FlaskClient, owner: Credentials, upload: Uploader
) -> None:
    """A page after the last is 200 with no items, the true count, and no next link."""
    upload(owner.basic)
    page = search(client, owner.basic, page_index=3)
    assert (page["count"], page["page_index"], ids(page)) == (1, 3, [])
    assert "next" not in page["_links"]
    assert href_query(page["_links"]["last"]["href"]) == {"page_index": "0"}


def test_paging_by_index_while_next_exists_visits_every_item_once(
    subtests: pytest.Subtests,
    client: FlaskClient,
    owner: Credentials,
    upload_at: Callable[..., str],
) -> None:
    """Walk pages like the official clients (page_index + 1 while _links.next exists): every
    item exactly once, in order, also when most of them share one time_created."""
    ascending = [upload_at(NOW - timedelta(minutes=5))]
    ascending += sorted(upload_at(NOW - timedelta(minutes=1)) for _ in range(6))
    ascending.append(upload_at(NOW))
    for order, expected in (("ascending", ascending), ("descending", ascending[::-1])):
        with subtests.test(order):
            seen: list[str] = []
            page_index = 0
            while True:
                page = search(client, owner.basic, order=order, page_size=3, page_index=page_index)
                seen += ids(page)
                if "next" not in page["_links"]:
                    break
                page_index += 1
            assert seen == expected
            assert page_index == 2


# --------------------------------------------------------------------------- search: scope


def test_search_scope(
    subtests: pytest.Subtests,
    client: FlaskClient,
    owner: Credentials,
    sibling: Credentials,
    stranger: Credentials,
    upload: Uploader,
) -> None:
    """Basic sees the whole account; a JWT only its application's items; other accounts never."""

    def new(headers: dict[str, str]) -> str:
        return str(upload(headers).get_json()["id"])

    by_app_one = {new(owner.bearer()), new(owner.bearer())}
    by_app_two = {new(sibling.bearer())}
    by_basic = {new(owner.basic)}
    strangers_app = {new(stranger.bearer())}
    strangers_basic = {new(stranger.basic)}
    cases = [
        ("basic-sees-the-account", owner.basic, by_app_one | by_app_two | by_basic),
        ("jwt-sees-its-application", owner.bearer(), by_app_one),
        ("sibling-jwt-sees-its-application", sibling.bearer(), by_app_two),
        ("jwt-query-parameter", None, by_app_one),
        ("stranger-basic", stranger.basic, strangers_app | strangers_basic),
        ("stranger-jwt", stranger.bearer(), strangers_app),
    ]
    for case_id, headers, expected in cases:
        with subtests.test(case_id):
            if headers is None:
                response = client.get("/v3/media", query_string={"jwt-token": owner.token()})
                assert response.status_code == 200
                page = response.get_json()
            else:
                page = search(client, headers, page_size=100)
            assert set(ids(page)) == expected
            assert page["count"] == len(expected)
