"""POST /v3/media (SPEC §1, §4.1): multipart and url uploads, the item they create, and refusals.

Every refusal is also checked for leftovers: after a 400, 413 or 415 nothing is visible, the blob
store is empty and no PENDING document waits for the sweeper.

Tables run as subtests (one row each, reported by its id) so that every row runs over both
backend pairs without paying for a fresh pair of backends per row.
"""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import pytest
from flask import Flask
from flask.testing import FlaskClient

from media_service.factory import create_app
from media_service.storage.interfaces import Backends
from tests.api.media_api_support import (
    ISO_MILLIS_Z,
    ITEM_FIELDS,
    MISSING_ID,
    MULTIPART,
    UUID4,
    Part,
    assert_nothing_left,
    md5_hex,
    multipart,
    post_multipart,
    sha256_hex,
)
from tests.conftest import Credentials, Uploader, make_settings
from tests.problems import assert_problem

WAV = (
    b"RIFF"
    + struct.pack("<I", 36)
    + b"WAVEfmt "
    + struct.pack("<IHHIIHH", 16, 1, 1, 8000, 16000, 2, 16)
    + b"data"
    + struct.pack("<I", 0)
)
OGG = b"OggS\x00\x02" + b"\x00" * 40
MP3_ID3 = b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"\x00" * 40
PLAIN = b"no magic number in here, just words"
STORE_IDS = {"sqlite-files": "file", "mongomock-moto": "s3", "mongo-s3": "s3"}
SMALL_MAX = 1024


def created(response: Any) -> dict[str, Any]:
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()


def app_with(tmp_path: Path, backends: Backends, **overrides: Any) -> Flask:
    """A second app over the same backends (and credentials) with some settings changed."""
    app = create_app(make_settings(tmp_path, **overrides), backends=backends)
    app.config["TESTING"] = True
    return app


def file_part(content: bytes = b"abc", name: str = "a.bin") -> Part:
    return Part("filedata", content, name, "application/octet-stream")


# --------------------------------------------------------------------------- the created item


def test_created_item_has_every_field_with_computed_values(
    request: pytest.FixtureRequest, owner: Credentials, upload: Uploader
) -> None:
    """201 body: all SPEC §1 fields; etag is the content's MD5, store facts are a JSON string."""
    content = b"The quick brown fox" * 100
    response = upload(owner.bearer(), content, filename="fox.txt", content_type="text/plain")
    item = created(response)
    assert set(item) == ITEM_FIELDS
    assert UUID4.match(item["id"])
    assert item["etag"] == md5_hex(content)
    assert item["media_size"] == len(content)
    assert json.loads(item["store_meta_params"]) == {
        "filesize": str(len(content)),
        "sha256": sha256_hex(content),
    }
    assert item["store_id"] == STORE_IDS[request.node.callspec.params["backends"]]
    assert item["account_id"] == "acct0001"
    assert item["application_id"] == "app-one"
    assert item["original_file_name"] == "fox.txt"
    assert item["mime_type"] == "text/plain"
    assert item["times_downloaded"] == 0
    assert item["max_downloads_allowed"] == 0
    assert item["public"] is False and item["public_item"] is False
    for unset in ("metadata_primary", "metadata_secondary", "title", "description", "source_url"):
        assert item[unset] is None, unset
    assert ISO_MILLIS_Z.match(item["time_created"])
    assert item["time_last_updated"] == item["time_created"]


def test_file_field_names_and_basic_auth_ownership(
    subtests: pytest.Subtests, owner: Credentials, upload: Uploader
) -> None:
    """`filedata` (official clients) and `file` both work; a Basic upload has no application."""
    for field in ("filedata", "file"):
        with subtests.test(field):
            item = created(upload(owner.basic, b"bytes", field=field, filename="song.mp3"))
            assert item["original_file_name"] == "song.mp3"
            assert item["media_size"] == 5
            assert item["etag"] == md5_hex(b"bytes")
            assert item["account_id"] == "acct0001"
            assert item["application_id"] is None


def test_empty_file_is_a_valid_upload(owner: Credentials, upload: Uploader) -> None:
    """Zero bytes: 201 with size 0 and the MD5 of the empty string."""
    item = created(upload(owner.basic, b"", filename="empty.bin"))
    assert item["media_size"] == 0
    assert item["etag"] == md5_hex(b"") == "d41d8cd98f00b204e9800998ecf8427e"
    assert json.loads(item["store_meta_params"]) == {"filesize": "0", "sha256": sha256_hex(b"")}


def test_location_is_absolute_and_serves_the_item(
    client: FlaskClient, owner: Credentials, upload: Uploader
) -> None:
    """Location is absolute, names /v3/media/<id>/info, and GET on it returns the 201 body."""
    response = upload(owner.basic, b"abc")
    item = created(response)
    location = response.headers["Location"]
    assert location == f"http://localhost/v3/media/{item['id']}/info"
    info = client.get(location, headers=owner.basic)
    assert info.status_code == 200
    assert info.get_json() == item


FILENAME_CASES = [
    pytest.param(
        [Part("filedata", WAV, "upload.tmp", "audio/wav"), Part("filename", "meeting.wav")],
        id="field-after-file",
    ),
    pytest.param(
        [Part("filename", "meeting.wav"), Part("filedata", WAV, "upload.tmp", "audio/wav")],
        id="field-before-file",
    ),
    pytest.param(
        [Part("filename", "meeting.wav"), Part("filedata", WAV)],
        id="part-without-file-name",
    ),
]


def test_filename_field_overrides_the_part_name(
    subtests: pytest.Subtests, client: FlaskClient, owner: Credentials
) -> None:
    """`filename` wins over the part's own file name, wherever it comes in the body."""
    for case in FILENAME_CASES:
        with subtests.test(case.id):
            (parts,) = case.values
            item = created(post_multipart(client, owner.basic, *parts))
            assert item["original_file_name"] == "meeting.wav"
            assert item["etag"] == md5_hex(WAV)


INFO_CASES = [
    pytest.param({"info": '{"k": 1}'}, '{"k": 1}', None, id="info-json"),
    pytest.param({"info": "free text"}, "free text", None, id="info-text"),
    pytest.param({"info": "i", "metadata_primary": "p"}, "p", None, id="primary-wins-over-info"),
    pytest.param({"info": "i", "metadata_secondary": "s"}, "i", "s", id="info-and-secondary"),
    pytest.param({"metadata_primary": "p", "metadata_secondary": "s"}, "p", "s", id="both-meta"),
]


def test_info_becomes_primary_metadata(
    subtests: pytest.Subtests, owner: Credentials, upload: Uploader
) -> None:
    """`info` is stored as metadata_primary unless metadata_primary is given too."""
    for case in INFO_CASES:
        with subtests.test(case.id):
            fields, primary, secondary = case.values
            item = created(upload(owner.basic, **fields))
            assert item["metadata_primary"] == primary
            assert item["metadata_secondary"] == secondary


SETTABLE_CASES = [
    pytest.param({"public": "true"}, {"public": True}, id="public-true"),
    pytest.param({"public": "1"}, {"public": True}, id="public-1"),
    pytest.param({"public": "false"}, {"public": False}, id="public-false"),
    pytest.param({"public": "0"}, {"public": False}, id="public-0"),
    pytest.param({"public_item": "true"}, {"public": True}, id="public_item-true"),
    pytest.param({"public_item": "1"}, {"public": True}, id="public_item-1"),
    pytest.param({"public_item": "false"}, {"public": False}, id="public_item-false"),
    pytest.param({"public_item": "0"}, {"public": False}, id="public_item-0"),
    pytest.param({"public": "true", "public_item": "1"}, {"public": True}, id="aliases-agree"),
    pytest.param({"max_downloads_allowed": "5"}, {"max_downloads_allowed": 5}, id="max-5"),
    pytest.param({"max_downloads_allowed": "0"}, {"max_downloads_allowed": 0}, id="max-0"),
    pytest.param({"title": "Weekly call"}, {"title": "Weekly call"}, id="title"),
    pytest.param({"description": "one\ntwo"}, {"description": "one\ntwo"}, id="description"),
    pytest.param({"mime_type": "audio/mpeg"}, {"mime_type": "audio/mpeg"}, id="mime"),
    pytest.param({"mime_type": "Audio/MPEG"}, {"mime_type": "audio/mpeg"}, id="mime-lowered"),
    pytest.param({"metadata_secondary": "{}"}, {"metadata_secondary": "{}"}, id="secondary"),
]


def test_updatable_fields_can_be_set_at_upload(
    subtests: pytest.Subtests, owner: Credentials, upload: Uploader
) -> None:
    """Every field PUT can change may come with the upload as a form string; aliases agree."""
    for case in SETTABLE_CASES:
        with subtests.test(case.id):
            fields, expected = case.values
            item = created(upload(owner.basic, **fields))
            assert {key: item[key] for key in expected} == expected
            assert item["public_item"] is item["public"]


INVALID_VALUE_CASES = [
    pytest.param({"public": "yes"}, ["public"], id="public-yes"),
    pytest.param({"public_item": "on"}, ["public_item"], id="public_item-on"),
    pytest.param({"public": "true", "public_item": "false"}, ["public_item"], id="aliases-differ"),
    pytest.param({"max_downloads_allowed": "-1"}, ["max_downloads_allowed"], id="max-negative"),
    pytest.param({"max_downloads_allowed": "1.5"}, ["max_downloads_allowed"], id="max-fraction"),
    pytest.param({"max_downloads_allowed": "lots"}, ["max_downloads_allowed"], id="max-word"),
    pytest.param({"max_downloads_allowed": str(2**70)}, ["max_downloads_allowed"], id="max-huge"),
    pytest.param({"mime_type": "not a type"}, ["mime_type"], id="mime-invalid"),
    pytest.param({"title": "bad\x00title"}, ["title"], id="title-control-char"),
    pytest.param({"public": "maybe", "mime_type": "x"}, ["public", "mime_type"], id="two-bad"),
]


def test_invalid_field_values_are_400_and_leave_nothing(
    subtests: pytest.Subtests,
    client: FlaskClient,
    backends: Backends,
    owner: Credentials,
    upload: Uploader,
) -> None:
    """Fields are validated after the file was streamed; the staged bytes are removed again."""
    for case in INVALID_VALUE_CASES:
        with subtests.test(case.id):
            fields, bad = case.values
            assert_problem(upload(owner.basic, **fields), 400, names=bad)
            assert_nothing_left(client, backends, owner.basic)


# --------------------------------------------------------------------------- mime type

MIME_CASES = [
    pytest.param(
        [Part("filedata", WAV, "a.wav", "audio/mpeg"), Part("mime_type", "video/mp4")],
        "video/mp4",
        id="field-beats-part-type",
    ),
    pytest.param(
        [Part("mime_type", "video/mp4"), Part("filedata", WAV, "a.wav", "audio/mpeg")],
        "video/mp4",
        id="field-before-file-beats-part-type",
    ),
    pytest.param([Part("filedata", WAV, "a.bin", "audio/mpeg")], "audio/mpeg", id="part-type"),
    pytest.param(
        [Part("filedata", PLAIN, "a.bin", "audio/ogg; codecs=opus")],
        "audio/ogg; codecs=opus",
        id="part-type-keeps-params",
    ),
    pytest.param(
        [Part("filedata", WAV, "clip.mp3", "application/octet-stream")],
        "audio/wave",
        id="octet-stream-part-is-not-specific",
    ),
    pytest.param([Part("filedata", WAV, "clip.mp3")], "audio/wave", id="sniffed-wav-beats-name"),
    pytest.param([Part("filedata", OGG, "voice")], "application/ogg", id="sniffed-ogg"),
    pytest.param([Part("filedata", MP3_ID3, "track.bin")], "audio/mpeg", id="sniffed-id3"),
    pytest.param([Part("filedata", PLAIN, "notes.txt")], "text/plain", id="guessed-from-name"),
    pytest.param(
        [Part("filedata", PLAIN, "notes.txt", "application/octet-stream")],
        "text/plain",
        id="octet-stream-falls-to-name",
    ),
    pytest.param(
        [Part("filedata", PLAIN, "blob"), Part("filename", "page.html")],
        "text/html",
        id="guessed-from-filename-field",
    ),
    pytest.param(
        [Part("filedata", PLAIN, "blob.zzqq")], "application/octet-stream", id="unknown-name"
    ),
    pytest.param(
        [Part("filedata", b"", "nothing")], "application/octet-stream", id="empty-unnamed"
    ),
]


def test_mime_type_choice_order(
    subtests: pytest.Subtests, client: FlaskClient, owner: Credentials
) -> None:
    """mime_type field > specific part type > sniffed bytes > name > application/octet-stream."""
    for case in MIME_CASES:
        with subtests.test(case.id):
            parts, expected = case.values
            item = created(post_multipart(client, owner.basic, *parts))
            assert item["mime_type"] == expected


# --------------------------------------------------------------------------- multipart shapes


def test_fields_after_the_file_part_are_applied(client: FlaskClient, owner: Credentials) -> None:
    """Form fields may follow the file: they are read once the body ends and still applied."""
    response = post_multipart(
        client,
        owner.basic,
        Part("filedata", b"payload", "orig.bin", "audio/ogg"),
        Part("info", '{"after": true}'),
        Part("filename", "renamed.ogg"),
        Part("public", "true"),
        Part("max_downloads_allowed", "2"),
        Part("title", "late"),
    )
    item = created(response)
    assert item["metadata_primary"] == '{"after": true}'
    assert item["original_file_name"] == "renamed.ogg"
    assert item["public"] is True and item["public_item"] is True
    assert item["max_downloads_allowed"] == 2
    assert item["title"] == "late"
    assert item["mime_type"] == "audio/ogg"
    assert item["etag"] == md5_hex(b"payload")


FORM_CASES = [
    pytest.param([Part("title", "no file")], ["filedata"], id="neither-file-nor-url"),
    pytest.param([], ["filedata"], id="no-parts-at-all"),
    pytest.param([file_part(), file_part(b"b")], ["filedata"], id="two-filedata"),
    pytest.param([file_part(), Part("file", b"b", "b.bin")], ["file"], id="filedata-and-file"),
    pytest.param(
        [file_part(), Part("url", "http://example.com/a.wav")], ["url"], id="file-and-url"
    ),
    pytest.param(
        [file_part(), Part("colour", "red"), Part("size", "9")],
        ["colour", "size"],
        id="unknown-fields-listed-each",
    ),
    pytest.param(
        [file_part(), Part("attachment", b"x", "x.bin")], ["attachment"], id="unknown-file-field"
    ),
    pytest.param(
        [file_part(), Part("title", "one"), Part("title", "two")], ["title"], id="duplicate-field"
    ),
    pytest.param(
        [Part("info", "1"), file_part(), Part("info", "2")], ["info"], id="duplicate-around-file"
    ),
    pytest.param([file_part(), Part("id", MISSING_ID)], ["id"], id="read-only-id"),
    pytest.param([file_part(), Part("etag", "0" * 32)], ["etag"], id="read-only-etag"),
    pytest.param([file_part(), Part("$where", "1")], ["$where"], id="operator-field"),
    pytest.param([file_part(name="a/b.bin")], ["filedata"], id="part-name-with-slash"),
    pytest.param(
        [file_part(), Part("filename", "../up.wav")], ["filename"], id="filename-with-path"
    ),
]


def test_malformed_upload_forms_are_400_and_leave_nothing(
    subtests: pytest.Subtests, client: FlaskClient, backends: Backends, owner: Credentials
) -> None:
    """Exactly one file or url, known fields only, each once: else 400 naming each bad field."""
    for case in FORM_CASES:
        with subtests.test(case.id):
            parts, bad = case.values
            assert_problem(post_multipart(client, owner.basic, *parts), 400, names=bad)
            assert_nothing_left(client, backends, owner.basic)


NOT_MULTIPART_CASES = [
    pytest.param(b'{"filedata": "abc"}', "application/json", id="json"),
    pytest.param(b"filedata=abc", "application/x-www-form-urlencoded", id="urlencoded"),
    pytest.param(b"abc", "text/plain", id="text"),
    pytest.param(b"abc", "application/octet-stream", id="octet-stream"),
    pytest.param(b"abc", None, id="no-content-type"),
]


def test_non_multipart_upload_is_415(
    subtests: pytest.Subtests, client: FlaskClient, backends: Backends, owner: Credentials
) -> None:
    """Only multipart/form-data is an upload."""
    for case in NOT_MULTIPART_CASES:
        with subtests.test(case.id):
            body, content_type = case.values
            response = client.post(
                "/v3/media", data=body, headers=owner.basic, content_type=content_type
            )
            assert_problem(response, 415)
            assert_nothing_left(client, backends, owner.basic)


BROKEN_CASES = [
    pytest.param("multipart/form-data", multipart(file_part()), id="no-boundary"),
    pytest.param(MULTIPART, b"this is not multipart at all", id="garbage-body"),
    pytest.param(MULTIPART, multipart(file_part(b"x" * 100))[:-30], id="truncated-body"),
]


def test_broken_multipart_is_400_and_leaves_nothing(
    subtests: pytest.Subtests, client: FlaskClient, backends: Backends, owner: Credentials
) -> None:
    """A body that is not the multipart it claims is a 400 problem, never a 500."""
    for case in BROKEN_CASES:
        with subtests.test(case.id):
            content_type, body = case.values
            response = client.post(
                "/v3/media", data=body, headers=owner.basic, content_type=content_type
            )
            assert_problem(response, 400)
            assert_nothing_left(client, backends, owner.basic)


# --------------------------------------------------------------------------- size limit


@pytest.fixture
def small_client(tmp_path: Path, backends: Backends) -> FlaskClient:
    """A client whose app accepts files of at most SMALL_MAX bytes."""
    return app_with(tmp_path, backends, max_upload_bytes=SMALL_MAX).test_client()


class UnreadableStream(io.RawIOBase):
    """A request body that fails the test if the service reads a single byte of it."""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:
        return 0

    def tell(self) -> int:
        return 0

    def readinto(self, buffer: Any) -> int:
        raise AssertionError("the body was read although Content-Length announced it too large")


def test_announced_oversize_body_is_413_before_reading(
    small_client: FlaskClient, backends: Backends, owner: Credentials
) -> None:
    """Content-Length beyond the cap is refused without reading the body."""
    response = small_client.post(
        "/v3/media",
        input_stream=UnreadableStream(),
        headers=owner.basic,
        content_type=MULTIPART,
        # The test client derives Content-Length from the stream; announce a huge body instead.
        environ_overrides={"CONTENT_LENGTH": str(10**10)},
    )
    assert_problem(response, 413)
    assert_nothing_left(small_client, backends, owner.basic)


def streamed(client: FlaskClient, headers: dict[str, str], body: bytes) -> Any:
    """POST `body` as a chunked request: no Content-Length, the server terminates the input."""
    return client.post(
        "/v3/media",
        input_stream=io.BytesIO(body),
        headers={**headers, "Transfer-Encoding": "chunked"},
        content_type=MULTIPART,
        environ_overrides={"wsgi.input_terminated": True},
    )


def with_length(client: FlaskClient, headers: dict[str, str], body: bytes) -> Any:
    return client.post("/v3/media", data=body, headers=headers, content_type=MULTIPART)


SIZE_CASES = [
    pytest.param(with_length, SMALL_MAX, 201, id="length-exactly-max"),
    pytest.param(with_length, SMALL_MAX + 1, 413, id="length-one-over"),
    pytest.param(with_length, 4 * SMALL_MAX, 413, id="length-four-times"),
    pytest.param(streamed, 100, 201, id="streamed-small"),
    pytest.param(streamed, SMALL_MAX, 201, id="streamed-exactly-max"),
    pytest.param(streamed, SMALL_MAX + 1, 413, id="streamed-one-over"),
    pytest.param(streamed, 3 * 1024 * 1024, 413, id="streamed-beyond-form-overhead"),
]


def test_file_size_cap(
    subtests: pytest.Subtests, small_client: FlaskClient, backends: Backends, owner: Credentials
) -> None:
    """The cap is on the file: MEDIA_MAX_UPLOAD_BYTES passes, one byte more is 413, whether the
    body announces its length or is streamed without one (then the bytes are counted)."""
    for case in SIZE_CASES:
        with subtests.test(case.id):
            send, size, status = case.values
            content = b"y" * size
            response = send(small_client, owner.basic, multipart(file_part(content)))
            if status == 201:
                item = created(response)
                assert item["media_size"] == size
                assert item["etag"] == md5_hex(content)
                small_client.delete(f"/v3/media/{item['id']}", headers=owner.basic)
            else:
                assert_problem(response, 413)
            assert_nothing_left(small_client, backends, owner.basic)


# --------------------------------------------------------------------------- base URL


def test_public_base_url_is_used_for_location(
    tmp_path: Path, backends: Backends, owner: Credentials
) -> None:
    """MEDIA_PUBLIC_BASE_URL wins over the request's host and any X-Forwarded-* header."""
    app = app_with(
        tmp_path, backends, public_base_url="https://media.example.com/base", trusted_proxies=1
    )
    response = app.test_client().post(
        "/v3/media",
        data=multipart(file_part()),
        headers={**owner.basic, "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "http"},
        content_type=MULTIPART,
    )
    item = created(response)
    assert response.headers["Location"] == (
        f"https://media.example.com/base/v3/media/{item['id']}/info"
    )


FORWARDED = {
    "X-Forwarded-Proto": "https",
    "X-Forwarded-Host": "media.example.org",
    "X-Forwarded-Port": "8443",
}
FORWARDED_CASES = [
    pytest.param(0, FORWARDED, "http://localhost", id="untrusted-ignored"),
    pytest.param(1, FORWARDED, "https://media.example.org:8443", id="one-trusted-proxy"),
    pytest.param(
        1,
        {"X-Forwarded-Proto": "https", "X-Forwarded-Host": "evil.example, media.example.org"},
        "https://media.example.org",
        id="only-the-last-hop-is-trusted",
    ),
    pytest.param(
        1,
        {**FORWARDED, "X-Forwarded-Port": "443", "X-Forwarded-Prefix": "/api"},
        "https://media.example.org/api",
        id="prefix",
    ),
    pytest.param(1, {}, "http://localhost", id="no-headers"),
]


def test_forwarded_headers_need_trusted_proxies(
    subtests: pytest.Subtests, tmp_path: Path, backends: Backends, owner: Credentials
) -> None:
    """X-Forwarded-* shape the Location only when MEDIA_TRUSTED_PROXIES says so (and by hops)."""
    for case in FORWARDED_CASES:
        with subtests.test(case.id):
            trusted, forwarded, base = case.values
            app = app_with(tmp_path, backends, trusted_proxies=trusted)
            response = app.test_client().post(
                "/v3/media",
                data=multipart(file_part()),
                headers={**owner.basic, **forwarded},
                content_type=MULTIPART,
            )
            item = created(response)
            assert response.headers["Location"] == f"{base}/v3/media/{item['id']}/info"


# --------------------------------------------------------------------------- url uploads

Routes = dict[str, tuple[bytes, str]]


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
        found = self.server.routes.get(self.path)  # type: ignore[attr-defined]
        if found is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        body, content_type = found
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep the test output clean


@pytest.fixture
def loopback() -> Iterator[tuple[str, Routes]]:
    """A tiny HTTP server on 127.0.0.1 (free port): yields (base url, routes to fill)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    routes: Routes = {}
    server.routes = routes  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield f"http://{host}:{port}", routes
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture
def fetching_client(tmp_path: Path, backends: Backends) -> FlaskClient:
    """A client whose app may fetch private addresses (MEDIA_URL_FETCH_ALLOW_PRIVATE)."""
    app = app_with(tmp_path, backends, url_fetch_allow_private=True, max_upload_bytes=SMALL_MAX)
    return app.test_client()


def test_url_upload_fetches_the_bytes(
    fetching_client: FlaskClient, owner: Credentials, loopback: tuple[str, Routes]
) -> None:
    """A loopback url is fetched: last path segment, the response's type, source_url set."""
    base, routes = loopback
    content = b"fetched audio bytes"
    routes["/media/greeting.ogg"] = (content, "audio/ogg")
    url = f"{base}/media/greeting.ogg"
    response = post_multipart(fetching_client, owner.bearer(), Part("url", url), Part("title", "t"))
    item = created(response)
    assert response.headers["Location"] == f"http://localhost/v3/media/{item['id']}/info"
    assert item["source_url"] == url
    assert item["original_file_name"] == "greeting.ogg"
    assert item["mime_type"] == "audio/ogg"
    assert item["media_size"] == len(content)
    assert item["etag"] == md5_hex(content)
    assert item["title"] == "t"
    assert item["application_id"] == "app-one"
    got = fetching_client.get(f"/v3/media/{item['id']}", headers=owner.basic)
    assert got.status_code == 200 and got.data == content


def test_url_upload_filename_field_overrides_the_last_segment(
    fetching_client: FlaskClient, owner: Credentials, loopback: tuple[str, Routes]
) -> None:
    """`filename` names a url upload too."""
    base, routes = loopback
    routes["/x/download"] = (b"data", "text/plain")
    response = post_multipart(
        fetching_client, owner.basic, Part("url", f"{base}/x/download"), Part("filename", "n.txt")
    )
    item = created(response)
    assert item["original_file_name"] == "n.txt"
    assert item["source_url"] == f"{base}/x/download"


def test_url_failures_leave_nothing(
    subtests: pytest.Subtests,
    fetching_client: FlaskClient,
    backends: Backends,
    owner: Credentials,
    loopback: tuple[str, Routes],
) -> None:
    """A url answering 404 is 422 (docs/design.md); a body over the cap is 413; nothing stays."""
    base, routes = loopback
    routes["/big.bin"] = (b"z" * (SMALL_MAX + 1), "application/octet-stream")
    for path, status in (("/missing.wav", 422), ("/big.bin", 413)):
        with subtests.test(path):
            response = post_multipart(fetching_client, owner.basic, Part("url", base + path))
            assert_problem(response, status)
            assert_nothing_left(fetching_client, backends, owner.basic)


REFUSED_URLS = [
    pytest.param("http://127.0.0.1:{port}/a.wav", id="loopback"),
    pytest.param("http://localhost:{port}/a.wav", id="localhost"),
    pytest.param("http://[::1]:{port}/a.wav", id="ipv6-loopback"),
    pytest.param("http://[::ffff:127.0.0.1]:{port}/a.wav", id="ipv4-mapped-loopback"),
    pytest.param("http://169.254.169.254/latest/meta-data/", id="cloud-metadata"),
    pytest.param("http://10.0.0.1/a.wav", id="private"),
    pytest.param("ftp://127.0.0.1/a.wav", id="ftp"),
    pytest.param("file:///etc/passwd", id="file"),
    pytest.param("not a url", id="junk"),
]


def test_url_to_forbidden_places_is_400_naming_url(
    subtests: pytest.Subtests,
    client: FlaskClient,
    backends: Backends,
    owner: Credentials,
    loopback: tuple[str, Routes],
) -> None:
    """Without MEDIA_URL_FETCH_ALLOW_PRIVATE, loopback, private and non-http urls are 400."""
    base, routes = loopback
    routes["/a.wav"] = (WAV, "audio/wav")
    port = base.rsplit(":", 1)[1]
    for case in REFUSED_URLS:
        with subtests.test(case.id):
            (url,) = case.values
            response = post_multipart(client, owner.basic, Part("url", url.format(port=port)))
            assert_problem(response, 400, names=["url"])
            assert_nothing_left(client, backends, owner.basic)


class DripSource:
    """A source on 127.0.0.1 that sends a head, then one body byte per second for `seconds`.

    `closed` is set once the client has closed the connection (the server reads end of file).
    """

    def __init__(self, seconds: int = 20) -> None:
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}/drip.bin"
        self.seconds = seconds
        self.closed = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        self._listener.settimeout(10)
        try:
            conn, _ = self._listener.accept()
        except OSError:
            return
        with conn:
            conn.settimeout(1.0)
            try:
                conn.recv(65536)  # the request head
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\n"
                    b"Content-Length: 1000\r\nConnection: close\r\n\r\n"
                )
                for _ in range(self.seconds):
                    if self._stop.is_set():
                        return
                    try:
                        if conn.recv(1) == b"":  # end of file: the client hung up
                            self.closed.set()
                            return
                    except TimeoutError:
                        pass
                    conn.sendall(b"d")
            except OSError:
                self.closed.set()  # reset by the client: closed too

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        self._thread.join(timeout=25)


@pytest.fixture
def drip_source() -> Iterator[DripSource]:
    source = DripSource()
    yield source
    source.close()


def test_url_upload_is_cut_at_the_total_deadline_while_the_body_trickles(
    tmp_path: Path, backends: Backends, owner: Credentials, drip_source: DripSource
) -> None:
    """MEDIA_URL_FETCH_TOTAL_TIMEOUT bounds the whole fetch, also when the body drips through
    the upload path: 422 at about the deadline, and the connection to the source is closed."""
    app = app_with(
        tmp_path,
        backends,
        url_fetch_allow_private=True,
        url_fetch_read_timeout=5.0,
        url_fetch_total_timeout=1.0,
    )
    client = app.test_client()
    started = time.monotonic()

    response = post_multipart(client, owner.basic, Part("url", drip_source.url))

    assert time.monotonic() - started < 5  # the drip lasts 20 s
    assert_problem(response, 422)
    assert "longer than 1 seconds" in response.get_json()["detail"]
    assert drip_source.closed.wait(5)
    assert_nothing_left(client, backends, owner.basic)


# --------------------------------------------------------------------------- urlencoded url uploads


def post_form(client: FlaskClient, headers: dict[str, str], body: bytes) -> Any:
    return client.post(
        "/v3/media",
        data=body,
        headers=headers,
        content_type="application/x-www-form-urlencoded",
    )


def test_urlencoded_url_upload_works_like_multipart(
    fetching_client: FlaskClient, owner: Credentials, loopback: tuple[str, Routes]
) -> None:
    """`curl -d url=...` sends application/x-www-form-urlencoded: a url upload, same fields."""
    base, routes = loopback
    content = b"fetched for a form"
    routes["/media/form.ogg"] = (content, "audio/ogg")
    url = f"{base}/media/form.ogg"
    body = urlencode(
        {
            "url": url,
            "title": "From a form",
            "public": "true",
            "info": '{"k": 1}',
            "max_downloads_allowed": "3",
            "filename": "named.ogg",
        }
    ).encode()

    response = post_form(fetching_client, owner.bearer(), body)

    item = created(response)
    assert response.headers["Location"] == f"http://localhost/v3/media/{item['id']}/info"
    assert item["source_url"] == url
    assert item["original_file_name"] == "named.ogg"
    assert item["mime_type"] == "audio/ogg"
    assert item["media_size"] == len(content)
    assert item["title"] == "From a form"
    assert item["public"] is True
    assert item["metadata_primary"] == '{"k": 1}'
    assert item["max_downloads_allowed"] == 3
    assert item["application_id"] == "app-one"
    got = fetching_client.get(f"/v3/media/{item['id']}")
    assert got.status_code == 200 and got.data == content


URLENCODED_REFUSALS = [
    pytest.param(b"url=http://example.com/a&url=http://example.com/b", 400, ["url"], id="two-urls"),
    pytest.param(b"url=http://example.com/a&colour=red", 400, ["colour"], id="unknown-field"),
    pytest.param(b"url=http://example.com/a&public=maybe", 400, ["public"], id="bad-public"),
    pytest.param(b"url=http://example.com/a&filedata=abc", 400, ["filedata"], id="file-and-url"),
    pytest.param(b"url=", 400, ["url"], id="empty-url"),
    pytest.param(b"url=http://127.0.0.1:1/a", 400, ["url"], id="loopback-url"),
    pytest.param(b"url=http://example.com/a&title=a%00b", 400, ["title"], id="title-nul"),
    pytest.param(b"title=no+url", 415, None, id="no-url"),
    pytest.param(b"", 415, None, id="empty-body"),
    pytest.param(b"url=http://example.com/" + b"a" * 300_000, 413, None, id="300kB"),
]


def test_urlencoded_refusals(
    subtests: pytest.Subtests, client: FlaskClient, backends: Backends, owner: Credentials
) -> None:
    """A urlencoded upload is validated like a multipart one; without a url it is no upload."""
    for case in URLENCODED_REFUSALS:
        with subtests.test(case.id):
            body, status, names = case.values
            assert_problem(post_form(client, owner.basic, body), status, names=names)
            assert_nothing_left(client, backends, owner.basic)


def test_urlencoded_url_failures_leave_nothing(
    fetching_client: FlaskClient,
    backends: Backends,
    owner: Credentials,
    loopback: tuple[str, Routes],
) -> None:
    base, _routes = loopback
    response = post_form(fetching_client, owner.basic, f"url={base}/missing.wav".encode())
    assert_problem(response, 422)
    assert_nothing_left(fetching_client, backends, owner.basic)
