"""Download, GET and HEAD /v3/media/{id} (SPEC §4.4), over both backend pairs.

Every item here is created at CREATED, a time with milliseconds, so Last-Modified and the
If-Modified-Since tables are exact and prove that stored milliseconds never defeat an equality
to the second. One app and one set of stores per backend pair serve the whole module (see
shared_world in conftest.py); each test creates the items it looks at.
"""

from __future__ import annotations

import hashlib
import io
import random
import re
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any
from urllib.parse import unquote

import pytest
from flask import Flask
from flask.testing import FlaskClient

from media_service.context import EXTENSION_KEY
from tests.conftest import Credentials, shared_world
from tests.problems import assert_problem

CREATED = datetime(2024, 5, 6, 7, 8, 9, 987_000, tzinfo=UTC)  # a Monday
LAST_MODIFIED = "Mon, 06 May 2024 07:08:09 GMT"
SIZE = 20_000
CONTENT = random.Random(20_000).randbytes(SIZE)
MIME = "audio/wav"
EMPTY_MD5 = "d41d8cd98f00b204e9800998ecf8427e"

# RFC 6266 with RFC 8187: a quoted ASCII fallback without quote, backslash or semicolon, and an
# ext-value whose characters are attr-char or percent-encoded octets.
DISPOSITION = re.compile(
    r"(?P<type>inline|attachment); "
    r'filename="(?P<fallback>[\x20\x21\x23-\x3a\x3c-\x5b\x5d-\x7e]+)"; '
    r"filename\*=UTF-8''(?P<encoded>(?:[A-Za-z0-9!#$&+.^_`|~-]|%[0-9A-F]{2})+)"
)


world, app, backends, owner, sibling, stranger = shared_world()


@pytest.fixture(autouse=True)
def _pinned_clock(app: Flask) -> None:
    """Create every item at CREATED (the service's clock; tokens keep the real time)."""
    app.extensions[EXTENSION_KEY].service.clock = lambda: CREATED


def create(
    client: FlaskClient,
    who: Credentials,
    content: bytes = CONTENT,
    *,
    public: bool = False,
    content_type: str = MIME,
    **fields: str,
) -> dict[str, Any]:
    """Upload as `who`'s application (so its JWT may read the item); return the item JSON.

    `fields` are form fields; a `filename` among them names the item whatever it holds, without
    the test client's unescaped part header in the way.
    """
    data: dict[str, Any] = {
        **fields,
        "public": "true" if public else "false",
        "filedata": (io.BytesIO(content), "sample.wav", content_type),
    }
    response = client.post(
        "/v3/media", data=data, headers=who.bearer(), content_type="multipart/form-data"
    )
    assert response.status_code == 201, response.get_json()
    item: dict[str, Any] = response.get_json()
    return item


def url(item: dict[str, Any]) -> str:
    return f"/v3/media/{item['id']}"


def quoted(item: dict[str, Any]) -> str:
    return f'"{item["etag"]}"'


def downloads(client: FlaskClient, owner: Credentials, item: dict[str, Any]) -> int:
    info = client.get(f"{url(item)}/info", headers=owner.basic)
    assert info.status_code == 200, info.get_json()
    count: int = info.get_json()["times_downloaded"]
    return count


@pytest.fixture
def item(client: FlaskClient, owner: Credentials) -> dict[str, Any]:
    """A private item of SIZE random bytes."""
    return create(client, owner)


@pytest.fixture
def public_item(client: FlaskClient, owner: Credentials) -> dict[str, Any]:
    return create(client, owner, public=True)


@pytest.fixture
def empty_item(client: FlaskClient, owner: Credentials) -> dict[str, Any]:
    return create(client, owner, b"", content_type="application/octet-stream")


# --- headers ---------------------------------------------------------------------------------


def test_full_get_headers(client: FlaskClient, owner: Credentials, item: dict[str, Any]) -> None:
    response = client.get(url(item), headers=owner.basic)

    assert response.status_code == 200
    assert response.data == CONTENT
    assert item["etag"] == hashlib.md5(CONTENT).hexdigest()
    headers = response.headers
    assert headers["Content-Type"] == MIME == item["mime_type"]
    assert headers["Content-Length"] == str(SIZE)
    assert headers["ETag"] == quoted(item)
    assert headers["Last-Modified"] == LAST_MODIFIED
    assert headers["Accept-Ranges"] == "bytes"
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Content-Security-Policy"] == "sandbox; default-src 'none'"
    assert headers["Cache-Control"] == "private, no-cache"
    assert headers.getlist("Content-Disposition") == [
        "inline; filename=\"sample.wav\"; filename*=UTF-8''sample.wav"
    ]
    assert "Content-Range" not in headers


def test_public_item_is_cacheable_publicly(
    client: FlaskClient, public_item: dict[str, Any]
) -> None:
    response = client.get(url(public_item))

    assert response.status_code == 200
    assert response.data == CONTENT
    assert response.headers["Cache-Control"] == "public, no-cache"


@pytest.mark.parametrize(
    ("mime_type", "disposition"),
    [
        pytest.param("text/plain; charset=utf-8", "attachment", id="parameters-kept"),
        pytest.param("image/svg+xml", "attachment", id="svg-never-inline"),
        pytest.param("text/html", "attachment", id="html"),
        pytest.param("video/mp4", "inline", id="video"),
        pytest.param("image/png", "inline", id="raster-image"),
    ],
)
def test_content_type_is_the_items_mime_type(
    client: FlaskClient, owner: Credentials, mime_type: str, disposition: str
) -> None:
    item = create(client, owner, b"<svg onload=alert(1)>", mime_type=mime_type)

    response = client.get(url(item), headers=owner.basic)

    assert response.status_code == 200
    assert response.headers["Content-Type"] == mime_type == item["mime_type"]
    assert response.headers["Content-Disposition"].startswith(f"{disposition}; ")
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Content-Security-Policy"] == "sandbox; default-src 'none'"


@pytest.mark.parametrize(
    ("name", "sent_as"),
    [
        pytest.param("café.wav", "café.wav", id="latin-accents"),
        pytest.param("日本語のファイル.wav", "日本語のファイル.wav", id="cjk"),
        pytest.param("🎵 tune.wav", "🎵 tune.wav", id="astral-emoji"),
        pytest.param('say "hi".wav', 'say "hi".wav', id="double-quotes"),
        pytest.param("it's.wav", "it's.wav", id="single-quote"),
        pytest.param("a; filename=evil.exe", "a; filename=evil.exe", id="semicolon-injection"),
        pytest.param('x"; filename="evil.exe', 'x"; filename="evil.exe', id="quote-injection"),
        pytest.param("100% real.wav", "100% real.wav", id="percent"),
        pytest.param("a,b=c*.wav", "a,b=c*.wav", id="separators"),
        pytest.param("e\u0301.wav", "\u00e9.wav", id="nfd-normalised"),
        pytest.param("\u202egpj.exe", "gpj.exe", id="bidi-override-stripped"),
    ],
)
def test_content_disposition_is_one_valid_header(
    client: FlaskClient, owner: Credentials, name: str, sent_as: str
) -> None:
    item = create(client, owner, b"bytes", filename=name)
    assert item["original_file_name"] == name

    for method in ("GET", "HEAD"):
        response = client.open(url(item), method=method, headers=owner.basic)

        assert response.status_code == 200
        values = response.headers.getlist("Content-Disposition")
        assert len(values) == 1
        match = DISPOSITION.fullmatch(values[0])
        assert match is not None, values[0]
        assert unquote(match["encoded"], errors="strict") == sent_as


def test_head_has_the_get_headers_no_body_and_never_counts(
    client: FlaskClient, owner: Credentials, item: dict[str, Any]
) -> None:
    got = client.get(url(item), headers=owner.basic)
    head = client.head(url(item), headers=owner.basic)

    assert head.status_code == 200
    assert head.data == b""
    ignored = {"X-Request-Id", "Date"}
    assert {k: v for k, v in head.headers if k not in ignored} == {
        k: v for k, v in got.headers if k not in ignored
    }
    assert head.headers["Content-Length"] == str(SIZE)
    assert downloads(client, owner, item) == 1


def test_head_ignores_range(client: FlaskClient, owner: Credentials, item: dict[str, Any]) -> None:
    response = client.head(url(item), headers={**owner.basic, "Range": "bytes=0-9"})

    assert response.status_code == 200
    assert response.headers["Content-Length"] == str(SIZE)
    assert "Content-Range" not in response.headers
    assert response.data == b""
    assert downloads(client, owner, item) == 0


# --- preconditions ---------------------------------------------------------------------------

MATCHING_IF_NONE_MATCH = [
    pytest.param("{etag}", id="exact"),
    pytest.param("W/{etag}", id="weak"),
    pytest.param('"0000", {etag}', id="list"),
    pytest.param('"0000",W/{etag} , "1111"', id="list-weak-tight-commas"),
    pytest.param("*", id="star"),
]


@pytest.mark.parametrize("method", ["GET", "HEAD"])
@pytest.mark.parametrize("template", MATCHING_IF_NONE_MATCH)
def test_matching_if_none_match_is_304(
    client: FlaskClient, owner: Credentials, item: dict[str, Any], method: str, template: str
) -> None:
    headers = {**owner.basic, "If-None-Match": template.format(etag=quoted(item))}

    response = client.open(url(item), method=method, headers=headers)

    assert response.status_code == 304
    assert response.headers["ETag"] == quoted(item)
    assert response.data == b""
    assert "Content-Range" not in response.headers
    assert downloads(client, owner, item) == 0


@pytest.mark.parametrize(
    "if_modified_since",
    [
        pytest.param("Fri, 01 Jan 2100 00:00:00 GMT", id="future"),
        pytest.param(LAST_MODIFIED, id="exact"),
    ],
)
def test_non_matching_if_none_match_overrides_if_modified_since(
    client: FlaskClient, owner: Credentials, item: dict[str, Any], if_modified_since: str
) -> None:
    headers = {
        **owner.basic,
        "If-None-Match": '"00000000000000000000000000000000", W/"x"',
        "If-Modified-Since": if_modified_since,
    }

    response = client.get(url(item), headers=headers)

    assert response.status_code == 200
    assert response.data == CONTENT
    assert downloads(client, owner, item) == 1


@pytest.mark.parametrize(
    ("if_modified_since", "status"),
    [
        pytest.param(LAST_MODIFIED, 304, id="imf-fixdate-equal"),
        pytest.param("Monday, 06-May-24 07:08:09 GMT", 304, id="rfc850-equal"),
        pytest.param("Mon May  6 07:08:09 2024", 304, id="asctime-equal"),
        pytest.param("2024-05-06T07:08:09.987Z", 304, id="iso-stored-millis"),
        pytest.param("2024-05-06T07:08:09.000Z", 304, id="iso-same-second"),
        pytest.param("2024-05-06T07:08:09Z", 304, id="iso-no-fraction"),
        pytest.param("2024-05-06T09:08:09+02:00", 304, id="iso-offset"),
        pytest.param("Tue, 07 May 2024 00:00:00 GMT", 304, id="imf-later"),
        pytest.param("Mon, 06 May 2024 07:08:08 GMT", 200, id="imf-second-before"),
        pytest.param("Sunday, 05-May-24 23:59:59 GMT", 200, id="rfc850-before"),
        pytest.param("Mon May  6 07:08:08 2024", 200, id="asctime-before"),
        pytest.param("2024-05-06T07:08:08.999Z", 200, id="iso-millis-before"),
        pytest.param("yesterday", 200, id="garbage-word"),
        pytest.param("Mon, 32 May 2024 07:08:09 GMT", 200, id="garbage-day-32"),
        pytest.param("2024-13-01T00:00:00Z", 200, id="garbage-month-13"),
        pytest.param("Mon, 06 May 2024 07:08:09 GMT, " * 400, 200, id="garbage-12kB"),
        pytest.param("\x00\x01\xff\xfe", 200, id="garbage-binary"),
        pytest.param("", 200, id="empty"),
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_if_modified_since(
    client: FlaskClient,
    owner: Credentials,
    item: dict[str, Any],
    method: str,
    if_modified_since: str,
    status: int,
) -> None:
    headers = {**owner.basic, "If-Modified-Since": if_modified_since}

    response = client.open(url(item), method=method, headers=headers)

    assert response.status_code == status
    assert response.headers["ETag"] == quoted(item)
    expected = CONTENT if status == 200 and method == "GET" else b""
    assert response.data == expected
    counted = 1 if status == 200 and method == "GET" else 0
    assert downloads(client, owner, item) == counted


def test_last_modified_round_trips_as_if_modified_since(
    client: FlaskClient, owner: Credentials, item: dict[str, Any]
) -> None:
    first = client.get(url(item), headers=owner.basic)
    again = client.get(
        url(item), headers={**owner.basic, "If-Modified-Since": first.headers["Last-Modified"]}
    )
    info = client.get(f"{url(item)}/info", headers=owner.basic).get_json()
    iso = client.get(url(item), headers={**owner.basic, "If-Modified-Since": info["time_created"]})

    assert info["time_created"] == "2024-05-06T07:08:09.987Z"
    assert again.status_code == 304
    assert iso.status_code == 304


# --- ranges ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("range_header", "first", "last"),
    [
        pytest.param("bytes=0-9", 0, 9, id="first-ten"),
        pytest.param("bytes=-10", SIZE - 10, SIZE - 1, id="suffix"),
        pytest.param("bytes=10000-", 10000, SIZE - 1, id="open-ended"),
        pytest.param("bytes=0-99999999999999999999", 0, SIZE - 1, id="huge-last-clamped"),
        pytest.param(f"bytes=-{SIZE * 10}", 0, SIZE - 1, id="suffix-longer-than-content"),
        pytest.param(f"bytes={SIZE - 1}-{SIZE - 1}", SIZE - 1, SIZE - 1, id="last-byte"),
        pytest.param("bytes=123-4567", 123, 4567, id="middle"),
        pytest.param("bytes=5-5,6-9", 5, 9, id="adjacent-coalesced"),
        pytest.param("bytes=0-4, 2-8", 0, 8, id="overlapping-coalesced"),
        pytest.param("BYTES=0-9", 0, 9, id="unit-case-insensitive"),
    ],
)
def test_single_range_is_206(
    client: FlaskClient,
    owner: Credentials,
    item: dict[str, Any],
    range_header: str,
    first: int,
    last: int,
) -> None:
    response = client.get(url(item), headers={**owner.basic, "Range": range_header})

    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes {first}-{last}/{SIZE}"
    assert response.headers["Content-Length"] == str(last - first + 1)
    assert response.headers["Content-Type"] == MIME
    assert response.headers["ETag"] == quoted(item)
    assert response.data == CONTENT[first : last + 1]


@pytest.mark.parametrize(
    "range_header",
    [
        pytest.param(f"bytes={SIZE}-", id="starts-at-size"),
        pytest.param(f"bytes={SIZE}-{SIZE + 10}", id="starts-past-end"),
        pytest.param("bytes=99999999999999999999-", id="huge-first"),
        pytest.param("bytes=" + "1" * 10_000 + "-", id="10kB-first"),
        pytest.param("bytes=-0", id="empty-suffix"),
        pytest.param(f"bytes={SIZE}-,{SIZE + 5}-", id="all-past-end"),
    ],
)
def test_unsatisfiable_range_is_416(
    client: FlaskClient, owner: Credentials, item: dict[str, Any], range_header: str
) -> None:
    response = client.get(url(item), headers={**owner.basic, "Range": range_header})

    assert_problem(response, 416)
    assert response.headers["Content-Range"] == f"bytes */{SIZE}"
    assert downloads(client, owner, item) == 0


@pytest.mark.parametrize(
    "range_header",
    [
        pytest.param("bytes=9-0", id="last-before-first"),
        pytest.param("bytes=abc", id="not-a-range"),
        pytest.param("items=0-9", id="other-unit"),
        pytest.param("bytes 0-9", id="no-equals"),
        pytest.param("bytes=", id="empty-set"),
        pytest.param("bytes=0-9,100-109", id="two-disjoint"),
        pytest.param("bytes=" + ",".join(f"{i * 2}-{i * 2}" for i in range(1000)), id="1000"),
        pytest.param("bytes=" + ",".join(["0-"] * 17), id="17-overlapping"),
        pytest.param("bytes=" + ",".join(["-20000"] * 2000), id="2000-whole-suffixes"),
        pytest.param("bytes=" + "1" * 10_000 + "-2", id="10kB-number-last-before-first"),
        pytest.param("bytes=\x00-\xff", id="binary"),
    ],
)
def test_range_ignored_is_the_whole_200(
    client: FlaskClient, owner: Credentials, item: dict[str, Any], range_header: str
) -> None:
    response = client.get(url(item), headers={**owner.basic, "Range": range_header})

    assert response.status_code == 200
    assert "Content-Range" not in response.headers
    assert response.headers["Content-Type"] == MIME
    assert response.headers["Content-Length"] == str(SIZE)
    assert response.data == CONTENT


def test_many_overlapping_ranges_send_each_byte_once(
    client: FlaskClient, owner: Credentials, item: dict[str, Any]
) -> None:
    range_header = "bytes=" + ",".join(["0-"] * 16)

    response = client.get(url(item), headers={**owner.basic, "Range": range_header})

    assert response.status_code == 206
    assert response.headers["Content-Range"] == f"bytes 0-{SIZE - 1}/{SIZE}"
    assert response.data == CONTENT


@pytest.mark.parametrize(
    ("condition", "value"),
    [
        pytest.param("If-None-Match", "{etag}", id="if-none-match"),
        pytest.param("If-None-Match", "*", id="if-none-match-star"),
        pytest.param("If-Modified-Since", LAST_MODIFIED, id="if-modified-since"),
    ],
)
def test_range_with_a_304_precondition_is_304(
    client: FlaskClient, owner: Credentials, item: dict[str, Any], condition: str, value: str
) -> None:
    headers = {**owner.basic, condition: value.format(etag=quoted(item)), "Range": "bytes=0-9"}

    response = client.get(url(item), headers=headers)

    assert response.status_code == 304
    assert response.data == b""
    assert "Content-Range" not in response.headers
    assert downloads(client, owner, item) == 0


@pytest.mark.parametrize(
    ("if_range", "status"),
    [
        pytest.param("{etag}", 206, id="strong-match"),
        pytest.param(LAST_MODIFIED, 206, id="date-exact"),
        pytest.param("W/{etag}", 200, id="weak-never-matches"),
        pytest.param('"00000000000000000000000000000000"', 200, id="other-etag"),
        pytest.param("{etag}, {etag}", 200, id="a-list"),
        pytest.param("Mon, 06 May 2024 07:08:10 GMT", 200, id="date-later"),
        pytest.param("Mon, 06 May 2024 07:08:08 GMT", 200, id="date-earlier"),
        pytest.param("2024-05-06T07:08:09Z", 200, id="iso-is-not-an-http-date"),
        pytest.param("garbage", 200, id="garbage"),
    ],
)
def test_if_range(
    client: FlaskClient, owner: Credentials, item: dict[str, Any], if_range: str, status: int
) -> None:
    headers = {
        **owner.basic,
        "Range": "bytes=10-19",
        "If-Range": if_range.format(etag=quoted(item)),
    }

    response = client.get(url(item), headers=headers)

    assert response.status_code == status
    if status == 206:
        assert response.headers["Content-Range"] == f"bytes 10-19/{SIZE}"
        assert response.data == CONTENT[10:20]
    else:
        assert "Content-Range" not in response.headers
        assert response.data == CONTENT
    assert downloads(client, owner, item) == (1 if status == 200 else 0)


# --- zero-length items -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "headers", "status", "content_range"),
    [
        pytest.param("GET", {}, 200, None, id="get"),
        pytest.param("HEAD", {}, 200, None, id="head"),
        pytest.param("GET", {"Range": "bytes=0-"}, 416, "bytes */0", id="open-range"),
        pytest.param("GET", {"Range": "bytes=0-0"}, 416, "bytes */0", id="first-byte"),
        pytest.param("GET", {"Range": "bytes=-0"}, 416, "bytes */0", id="empty-suffix"),
        pytest.param("GET", {"Range": "bytes=-5"}, 200, None, id="suffix-ignored"),
        pytest.param("GET", {"Range": "bytes=0-0,-5"}, 200, None, id="mixed-ignored"),
        pytest.param("GET", {"If-None-Match": "*"}, 304, None, id="if-none-match"),
        pytest.param("GET", {"If-Modified-Since": LAST_MODIFIED}, 304, None, id="ims"),
        pytest.param("GET", {"If-Range": "x", "Range": "bytes=0-"}, 200, None, id="if-range"),
    ],
)
def test_zero_length_item_never_fails(
    client: FlaskClient,
    owner: Credentials,
    empty_item: dict[str, Any],
    method: str,
    headers: dict[str, str],
    status: int,
    content_range: str | None,
) -> None:
    response = client.open(url(empty_item), method=method, headers={**owner.basic, **headers})

    assert response.status_code == status
    assert response.headers.get("Content-Range") == content_range
    assert response.headers["ETag"] == f'"{EMPTY_MD5}"'
    if status == 200:
        assert response.headers["Content-Length"] == "0"
        assert response.data == b""
    if status == 416:
        assert_problem(response, 416)


# --- authorisation ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "public", "status"),
    [
        pytest.param(None, True, 200, id="anonymous-public"),
        pytest.param(None, False, 401, id="anonymous-private"),
        pytest.param("owner-basic", False, 200, id="owner-basic"),
        pytest.param("owner-jwt", False, 200, id="owner-jwt"),
        pytest.param("owner-jwt", True, 200, id="owner-jwt-public"),
        pytest.param("sibling-jwt", False, 403, id="sibling-application"),
        pytest.param("stranger-basic", False, 404, id="other-account-basic"),
        pytest.param("stranger-jwt", False, 404, id="other-account-jwt"),
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_who_may_download(
    client: FlaskClient,
    owner: Credentials,
    sibling: Credentials,
    stranger: Credentials,
    who: str | None,
    public: bool,
    status: int,
    method: str,
) -> None:
    item = create(client, owner, public=public)
    headers = {
        None: {},
        "owner-basic": owner.basic,
        "owner-jwt": owner.bearer(),
        "sibling-jwt": sibling.bearer(),
        "stranger-basic": stranger.basic,
        "stranger-jwt": stranger.bearer(),
    }[who]

    response = client.open(url(item), method=method, headers=headers)

    assert response.status_code == status
    if status == 200:
        assert response.data == (CONTENT if method == "GET" else b"")
    else:
        assert response.mimetype == "application/problem+json"
        assert "ETag" not in response.headers
    if status == 401:
        www_authenticate = response.headers["WWW-Authenticate"]
        assert "Basic" in www_authenticate and "Bearer" in www_authenticate


@pytest.mark.parametrize(
    ("who", "status"),
    [
        pytest.param(None, 401, id="anonymous"),
        pytest.param("sibling", 403, id="sibling-application"),
        pytest.param("stranger", 404, id="other-account"),
    ],
)
@pytest.mark.parametrize(
    ("condition", "value"),
    [
        pytest.param("If-None-Match", "{etag}", id="if-none-match"),
        pytest.param("If-None-Match", "*", id="if-none-match-star"),
        pytest.param("If-Modified-Since", "Fri, 01 Jan 2100 00:00:00 GMT", id="ims"),
    ],
)
@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_authorisation_comes_before_preconditions(
    client: FlaskClient,
    sibling: Credentials,
    stranger: Credentials,
    item: dict[str, Any],
    who: str | None,
    status: int,
    condition: str,
    value: str,
    method: str,
) -> None:
    headers = {condition: value.format(etag=quoted(item))}
    if who == "sibling":
        headers.update(sibling.bearer())
    elif who == "stranger":
        headers.update(stranger.basic)

    response = client.open(url(item), method=method, headers=headers)

    assert response.status_code == status
    assert response.mimetype == "application/problem+json"
    assert "ETag" not in response.headers
    assert "Last-Modified" not in response.headers
    if method == "GET":
        assert_problem(response, status)


def test_jwt_token_query_parameter(
    client: FlaskClient, owner: Credentials, item: dict[str, Any]
) -> None:
    response = client.get(url(item), query_string={"jwt-token": owner.token()})

    assert response.status_code == 200
    assert response.data == CONTENT
    assert downloads(client, owner, item) == 1


@pytest.mark.parametrize(
    "token",
    [
        pytest.param("a.b.c", id="garbage"),
        pytest.param("", id="empty"),
    ],
)
def test_invalid_jwt_token_query_parameter_is_401_even_for_public_items(
    client: FlaskClient, public_item: dict[str, Any], token: str
) -> None:
    response = client.get(url(public_item), query_string={"jwt-token": token})

    assert_problem(response, 401)
    assert "ETag" not in response.headers


def test_missing_item_is_404(client: FlaskClient, owner: Credentials) -> None:
    missing = "/v3/media/00000000-0000-4000-8000-000000000000"

    assert_problem(client.get(missing), 404)
    assert_problem(client.get(missing, headers=owner.basic), 404)


def test_deleted_item_is_gone(
    client: FlaskClient, owner: Credentials, item: dict[str, Any]
) -> None:
    assert client.delete(url(item), headers=owner.basic).status_code == 204

    assert_problem(client.get(url(item), headers=owner.basic), 404)


# --- counting --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "headers", "status", "counted"),
    [
        pytest.param("GET", {}, 200, 1, id="get-200"),
        pytest.param("GET", {"Range": "bytes=0-9"}, 206, 1, id="206-from-zero"),
        pytest.param("GET", {"Range": "bytes=0-"}, 206, 1, id="206-open-from-zero"),
        pytest.param("GET", {"Range": f"bytes=-{SIZE}"}, 206, 1, id="206-suffix-whole"),
        pytest.param("GET", {"Range": "bytes=10-"}, 206, 0, id="206-from-ten"),
        pytest.param("GET", {"Range": "bytes=-10"}, 206, 0, id="206-suffix"),
        pytest.param("GET", {"Range": "bytes=0-9,100-109"}, 200, 1, id="multi-range-200"),
        pytest.param(
            "GET", {"Range": "bytes=10-", "If-Range": '"x"'}, 200, 1, id="if-range-false-200"
        ),
        pytest.param("HEAD", {}, 200, 0, id="head"),
        pytest.param("HEAD", {"Range": "bytes=0-9"}, 200, 0, id="head-range"),
        pytest.param("GET", {"If-None-Match": "*"}, 304, 0, id="304"),
        pytest.param("GET", {"Range": f"bytes={SIZE}-"}, 416, 0, id="416"),
    ],
)
def test_what_counts_as_a_download(
    client: FlaskClient,
    owner: Credentials,
    item: dict[str, Any],
    method: str,
    headers: dict[str, str],
    status: int,
    counted: int,
) -> None:
    for expected in (counted, 2 * counted):
        response = client.open(url(item), method=method, headers={**owner.basic, **headers})

        assert response.status_code == status
        assert downloads(client, owner, item) == expected


def test_a_resumed_download_counts_once(
    client: FlaskClient, owner: Credentials, item: dict[str, Any]
) -> None:
    first = client.get(url(item), headers={**owner.basic, "Range": "bytes=0-"})
    received = first.data[:8191]  # the connection broke here
    resumed = client.get(
        url(item),
        headers={
            **owner.basic,
            "Range": f"bytes={len(received)}-",
            "If-Range": first.headers["ETag"],
        },
    )

    assert (first.status_code, resumed.status_code) == (206, 206)
    assert received + resumed.data == CONTENT
    assert downloads(client, owner, item) == 1


def test_anonymous_download_limit(client: FlaskClient, owner: Credentials) -> None:
    item = create(client, owner, public=True, max_downloads_allowed="3")

    # Partial reads that do not start at byte 0 neither count nor use up the limit.
    assert client.get(url(item), headers={"Range": "bytes=1-"}).status_code == 206
    assert client.head(url(item)).status_code == 200
    for _ in range(3):
        response = client.get(url(item))
        assert response.status_code == 200
        assert response.data == CONTENT
    assert downloads(client, owner, item) == 3

    refused = [
        client.get(url(item)),
        client.get(url(item), headers={"Range": "bytes=1-"}),
        client.get(url(item), headers={"Range": "bytes=0-0"}),
        client.get(url(item), headers={"If-None-Match": quoted(item)}),
    ]
    for response in refused:
        body = assert_problem(response, 403)
        assert body["type"].endswith("download-limit-reached")
        assert "ETag" not in response.headers
    assert client.head(url(item)).status_code == 403
    assert downloads(client, owner, item) == 3

    # The owner may always download, and is counted.
    for expected in (4, 5):
        response = client.get(url(item), headers=owner.bearer())
        assert response.status_code == 200
        assert response.data == CONTENT
        assert downloads(client, owner, item) == expected
    assert client.get(url(item), headers=owner.basic).status_code == 200
    assert downloads(client, owner, item) == 6
    assert client.get(url(item)).status_code == 403


def test_raising_the_limit_lets_anonymous_downloads_resume(
    client: FlaskClient, owner: Credentials
) -> None:
    item = create(client, owner, public=True, max_downloads_allowed="1")
    assert client.get(url(item)).status_code == 200
    assert client.get(url(item)).status_code == 403

    updated = client.put(
        f"{url(item)}/info", json={"max_downloads_allowed": 0}, headers=owner.basic
    )

    assert updated.status_code == 204
    assert client.get(url(item)).status_code == 200
    assert downloads(client, owner, item) == 2


# --- larger content --------------------------------------------------------------------------


def test_three_mebibytes_round_trip_byte_exact(client: FlaskClient, owner: Credentials) -> None:
    content = random.Random(3).randbytes(3 * 1024 * 1024 + 17)
    size = len(content)
    item = create(client, owner, content, content_type="application/octet-stream")
    assert item["media_size"] == size

    with client.get(url(item), headers=owner.basic) as whole:
        assert whole.status_code == 200
        assert whole.headers["Content-Length"] == str(size)
        assert whole.data == content

    for first, last in [
        (1024 * 1024 - 5, 2 * 1024 * 1024 + 5),  # crosses two chunk boundaries
        (12345, 12345),
        (size - 100_000, size - 1),
    ]:
        range_ = {**owner.basic, "Range": f"bytes={first}-{last}"}
        with client.get(url(item), headers=range_) as part:
            assert part.status_code == 206
            assert part.headers["Content-Range"] == f"bytes {first}-{last}/{size}"
            assert part.headers["Content-Length"] == str(last - first + 1)
            assert part.data == content[first : last + 1]

    with client.get(url(item), headers={**owner.basic, "Range": "bytes=-1000"}) as tail:
        assert tail.status_code == 206
        assert tail.data == content[-1000:]
    assert downloads(client, owner, item) == 1


# --- validators, other preconditions, changes ------------------------------------------------


def test_304_repeats_the_200_cache_headers(
    client: FlaskClient, owner: Credentials, item: dict[str, Any]
) -> None:
    full = client.get(url(item), headers=owner.basic)
    not_modified = client.get(url(item), headers={**owner.basic, "If-None-Match": quoted(item)})

    assert not_modified.status_code == 304
    for name in ("ETag", "Cache-Control", "Vary"):  # RFC 9110 §15.4.5
        assert not_modified.headers.get(name) == full.headers[name], name
    # RFC 9110 §8.6: a 304 may carry Content-Length only as the length a 200 would have sent.
    assert not_modified.headers.get("Content-Length", str(SIZE)) == str(SIZE)
    assert not_modified.headers["X-Request-Id"]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({"If-Match": "{etag}"}, 200, id="if-match"),
        pytest.param({"If-Match": '"0", {etag}'}, 200, id="if-match-list"),
        pytest.param({"If-Match": "*"}, 200, id="if-match-star"),
        pytest.param({"If-Match": "W/{etag}"}, 412, id="if-match-weak-is-strong-compared"),
        pytest.param({"If-Match": '"0"'}, 412, id="if-match-other"),
        pytest.param({"If-Unmodified-Since": LAST_MODIFIED}, 200, id="ius-equal"),
        pytest.param(
            {"If-Unmodified-Since": "Mon, 06 May 2024 07:08:08 GMT"}, 412, id="ius-before"
        ),
        pytest.param({"If-Unmodified-Since": "garbage"}, 200, id="ius-garbage"),
        pytest.param({"If-Match": "{etag}", "Range": "bytes=0-9"}, 206, id="if-match-range"),
        pytest.param({"If-Match": '"0"', "If-None-Match": "*"}, 412, id="if-match-first"),
    ],
)
def test_if_match_and_if_unmodified_since(
    client: FlaskClient,
    owner: Credentials,
    item: dict[str, Any],
    headers: dict[str, str],
    status: int,
) -> None:
    sent = {name: value.format(etag=quoted(item)) for name, value in headers.items()}

    response = client.get(url(item), headers={**owner.basic, **sent})

    assert response.status_code == status
    if status == 412:
        assert_problem(response, 412)
        assert downloads(client, owner, item) == 0
    else:
        assert response.data == (CONTENT if status == 200 else CONTENT[:10])
        assert downloads(client, owner, item) == 1


def test_metadata_changes_keep_the_validators(
    app: Flask, client: FlaskClient, owner: Credentials, item: dict[str, Any]
) -> None:
    app.extensions[EXTENSION_KEY].service.clock = lambda: datetime(2025, 1, 1, tzinfo=UTC)
    updated = client.put(
        f"{url(item)}/info", json={"title": "new", "mime_type": "audio/x-wav"}, headers=owner.basic
    )
    assert updated.status_code == 204

    response = client.get(url(item), headers=owner.basic)
    not_modified = client.get(
        url(item), headers={**owner.basic, "If-Modified-Since": LAST_MODIFIED}
    )

    assert response.status_code == 200
    assert response.headers["Content-Type"] == "audio/x-wav"
    assert response.headers["ETag"] == quoted(item)
    assert response.headers["Last-Modified"] == LAST_MODIFIED
    assert not_modified.status_code == 304


def test_making_an_item_private_closes_it(
    client: FlaskClient, owner: Credentials, public_item: dict[str, Any]
) -> None:
    assert client.get(url(public_item)).status_code == 200

    updated = client.put(f"{url(public_item)}/info", json={"public": False}, headers=owner.basic)
    response = client.get(url(public_item), headers={"If-None-Match": quoted(public_item)})

    assert updated.status_code == 204
    assert_problem(response, 401)
    assert "ETag" not in response.headers


@pytest.mark.parametrize(
    ("acl", "public", "status"),
    [
        pytest.param({"paths": {"/*/media/**": {}}}, False, 200, id="all-media"),
        pytest.param({"paths": {"/*/media/*": {"methods": ["GET"]}}}, False, 200, id="get-only"),
        pytest.param({"paths": {"/*/media/*/info": {}}}, False, 403, id="info-only"),
        pytest.param({"paths": {"/*/media/*": {"methods": ["PUT"]}}}, False, 403, id="put-only"),
        pytest.param({"paths": {"/*/media/*/info": {}}}, True, 403, id="info-only-public"),
    ],
)
def test_token_acl_applies_to_downloads(
    client: FlaskClient,
    owner: Credentials,
    acl: dict[str, Any],
    public: bool,
    status: int,
) -> None:
    item = create(client, owner, public=public)

    response = client.get(url(item), headers=owner.bearer(acl=acl))

    assert response.status_code == status
    if status == 403:
        assert_problem(response, 403)
        assert "ETag" not in response.headers


# --- concurrency -----------------------------------------------------------------------------


# SQLite only: mongomock's find_one_and_update is not atomic across threads (docs/design.md).
@pytest.mark.parametrize("world", ["sqlite-files"], indirect=True)
@pytest.mark.parametrize("anonymous", [True, False], ids=["anonymous-limited", "owner-unlimited"])
def test_counting_is_exact_under_concurrency(
    app: Flask,
    client: FlaskClient,
    owner: Credentials,
    anonymous: bool,
) -> None:
    item = create(client, owner, b"concurrent", public=True, max_downloads_allowed="5")
    headers = {} if anonymous else owner.basic

    def download(_: int) -> int:
        return app.test_client().get(url(item), headers=headers).status_code

    with ThreadPoolExecutor(max_workers=12) as pool:
        statuses = sorted(pool.map(download, range(36)))

    if anonymous:
        assert statuses == [200] * 5 + [403] * 31
        assert downloads(client, owner, item) == 5
    else:
        assert statuses == [200] * 36
        assert downloads(client, owner, item) == 36
