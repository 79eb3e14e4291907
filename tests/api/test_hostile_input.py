"""Hostile input, table by table: every row is a 4xx problem+json, never a 500 (SPEC §3).

Over both backend pairs. Failed uploads must leave nothing behind: no visible item, no stored
bytes and no PENDING document for the sweeper. Tests that need an item delete it afterwards, so
between tests the stores are empty and that check can be exact.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from flask.testing import FlaskClient

from media_service.storage.interfaces import Backends
from tests.conftest import Credentials, KeyPair, World, shared_world
from tests.problems import assert_problem

MAX_UPLOAD = 256 * 1024
FORM_OVERHEAD = 2 * 1024 * 1024  # what upload.py allows on top of the file for the form
READ_SIZE = 1024 * 1024  # how much of the body the server reads at a time
FAR_FUTURE = datetime(9999, 1, 1, tzinfo=UTC)
BOUNDARY = "hostile-7d1c0b"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt hostile"


world, app, backends, owner, sibling, stranger = shared_world(max_upload_bytes=MAX_UPLOAD)


@pytest.fixture
def item(client: FlaskClient, owner: Credentials) -> Iterator[dict[str, Any]]:
    """A public item, deleted again after the test."""
    created = client.post(
        "/v3/media",
        data=multipart(file_part(), field("public", "true"), field("title", "original")),
        headers=owner.basic,
        content_type=MULTIPART,
    )
    assert created.status_code == 201, created.get_json()
    body: dict[str, Any] = created.get_json()
    yield body
    assert client.delete(f"/v3/media/{body['id']}", headers=owner.basic).status_code == 204


# --- helpers ---------------------------------------------------------------------------------


def field(name: str, value: str | bytes) -> bytes:
    raw = value.encode() if isinstance(value, str) else value
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
        + raw
        + b"\r\n"
    )


def file_part(
    content: bytes = WAV, *, name: str = "filedata", filename_param: bytes = b'filename="a.wav"'
) -> bytes:
    """A file part; `filename_param` is put into the header verbatim."""
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"; '.encode()
        + filename_param
        + b"\r\nContent-Type: audio/wav\r\n\r\n"
        + content
        + b"\r\n"
    )


def multipart(*parts: bytes) -> bytes:
    return b"".join(parts) + f"--{BOUNDARY}--\r\n".encode()


def assert_nothing_left(client: FlaskClient, backends: Backends, owner: Credentials) -> None:
    """No visible item, no stored bytes, no PENDING or DELETING document."""
    found = client.get(
        "/v3/media", query_string={"start_time": "2000-01-01T00:00:00Z"}, headers=owner.basic
    )
    assert found.status_code == 200
    assert found.get_json()["count"] == 0
    assert list(backends.blobs.list_blobs()) == []
    assert list(backends.media.iter_hidden(FAR_FUTURE)) == []


def hs256_token(application_id: str, secret: bytes) -> str:
    """The algorithm-confusion attack: an HS256 token keyed with the RSA *public* key."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(datetime.now(UTC).timestamp())
    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"application_id": application_id, "iat": now}).encode())
    signature = hmac.new(secret, f"{header}.{claims}".encode(), hashlib.sha256).digest()
    return f"{header}.{claims}.{b64(signature)}"


# --- malformed multipart ---------------------------------------------------------------------

NAMELESS_FILE_PART = (
    f'--{BOUNDARY}\r\nContent-Disposition: form-data; filename="a.wav"\r\n\r\nx\r\n'.encode()
)
HEADERS_ONLY = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="filedata"; '.encode()


@pytest.mark.parametrize(
    ("content_type", "body", "status", "names"),
    [
        pytest.param(MULTIPART, file_part(), 400, None, id="no-closing-boundary"),
        pytest.param(MULTIPART, HEADERS_ONLY + b"filen", 400, None, id="truncated-in-headers"),
        pytest.param(MULTIPART, file_part()[:-30], 400, None, id="truncated-in-file"),
        pytest.param(MULTIPART, b"", 400, None, id="empty-body"),
        pytest.param(MULTIPART, b"just some text", 400, None, id="no-boundary-in-body"),
        pytest.param(
            MULTIPART,
            multipart(file_part(), f"--{BOUNDARY}\r\nnot a header\r\n\r\nxx\r\n".encode()),
            400,
            None,
            id="garbage-between-parts",
        ),
        pytest.param(
            MULTIPART,
            multipart(f"--{BOUNDARY}\r\nContent-Type: audio/wav\r\n\r\nabc\r\n".encode()),
            400,
            None,
            id="missing-content-disposition",
        ),
        pytest.param(
            MULTIPART,
            multipart(
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="x"; '.encode()
                + b"a" * 200_000
                + b"\r\n\r\nv\r\n"
            ),
            400,
            None,
            id="200kB-part-header",
        ),
        pytest.param(
            MULTIPART,
            # Past the decoder's buffer bound (64 kB + 2 MiB), within the body limit.
            multipart(
                f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="x"; '.encode()
                + b"a" * 2_200_000
                + b"\r\n\r\nv\r\n"
            ),
            400,
            None,
            id="2.2MB-part-header",
        ),
        pytest.param(
            MULTIPART,
            multipart(file_part(), f"--{BOUNDARY}\r\nX-Filler: ".encode() + b"h" * 2_200_000),
            400,
            None,
            id="2.2MB-header-after-file",
        ),
        pytest.param(
            MULTIPART,
            multipart(*(field(f"f{i}", "v") for i in range(100)), file_part()),
            400,
            None,
            id="100-parts",
        ),
        pytest.param(
            MULTIPART,
            multipart(file_part(), field("title", b"x" * 100_000)),
            400,
            None,
            id="100kB-field",
        ),
        pytest.param(
            MULTIPART,
            multipart(file_part(), field("title", b"\xff\xfe\xfd")),
            400,
            None,
            id="field-not-utf8",
        ),
        pytest.param(
            MULTIPART,
            b"--other\r\n" + file_part()[2 + len(BOUNDARY) :],
            400,
            None,
            id="wrong-boundary",
        ),
        pytest.param(MULTIPART, f"--{BOUNDARY}--\r\n".encode(), 400, ["filedata"], id="no-parts"),
        pytest.param(
            MULTIPART,
            multipart(NAMELESS_FILE_PART),
            400,
            None,
            id="nameless-file-part",
        ),
        pytest.param(
            MULTIPART,
            multipart(
                file_part(), f"--{BOUNDARY}\r\nContent-Disposition: form-data\r\n\r\nx\r\n".encode()
            ),
            400,
            None,
            id="nameless-field",
        ),
        pytest.param(MULTIPART, multipart(file_part(), field("", "x")), 400, None, id="empty-name"),
        pytest.param(
            MULTIPART,
            multipart(field("title", "no file")),
            400,
            ["filedata"],
            id="no-file-no-url",
        ),
        pytest.param(
            MULTIPART, multipart(file_part(), file_part()), 400, ["filedata"], id="two-files"
        ),
        pytest.param(
            MULTIPART,
            multipart(file_part(name="upload")),
            400,
            ["filedata", "upload"],
            id="bad-file-name-field",
        ),
        pytest.param("multipart/form-data", multipart(file_part()), 400, None, id="no-boundary"),
        pytest.param(
            "multipart/form-data; boundary=", multipart(file_part()), 400, None, id="empty-boundary"
        ),
        pytest.param(
            "multipart/form-data; boundary=" + "b" * 300,
            multipart(file_part()).replace(BOUNDARY.encode(), b"b" * 300),
            400,
            None,
            id="300-char-boundary",
        ),
        pytest.param("text/plain", WAV, 415, None, id="text-plain"),
        pytest.param("application/json", b'{"filedata": "x"}', 415, None, id="json"),
        pytest.param(
            f"multipart/mixed; boundary={BOUNDARY}", multipart(file_part()), 415, None, id="mixed"
        ),
        pytest.param(None, multipart(file_part()), 415, None, id="no-content-type"),
    ],
)
def test_malformed_upload_bodies(
    client: FlaskClient,
    backends: Backends,
    owner: Credentials,
    content_type: str | None,
    body: bytes,
    status: int,
    names: list[str] | None,
) -> None:
    response = client.post("/v3/media", data=body, headers=owner.basic, content_type=content_type)

    assert_problem(response, status, names)
    assert_nothing_left(client, backends, owner)


# --- hostile upload fields -------------------------------------------------------------------

LONG_UNICODE = "ü" * 300


@pytest.mark.parametrize(
    ("fields", "names"),
    [
        pytest.param({"$where": "1 == 1"}, ["$where"], id="dollar-where"),
        pytest.param({"$set": '{"public": true}'}, ["$set"], id="dollar-set"),
        pytest.param({"title[$ne]": "x"}, ["title[$ne]"], id="bracket-operator"),
        pytest.param({"max_downloads_allowed": str(2**70)}, ["max_downloads_allowed"], id="2**70"),
        pytest.param({"max_downloads_allowed": "9" * 500}, ["max_downloads_allowed"], id="9x500"),
        pytest.param({"max_downloads_allowed": "-1"}, ["max_downloads_allowed"], id="negative"),
        pytest.param({"max_downloads_allowed": "1.5"}, ["max_downloads_allowed"], id="fraction"),
        pytest.param({"max_downloads_allowed": "0x10"}, ["max_downloads_allowed"], id="hex"),
        pytest.param({"max_downloads_allowed": "\u0663"}, ["max_downloads_allowed"], id="arabic-3"),
        pytest.param({"public": "yes"}, ["public"], id="public-yes"),
        pytest.param({"public": "true", "public_item": "false"}, ["public_item"], id="aliases"),
        pytest.param({"title": "a\x00b"}, ["title"], id="title-nul"),
        pytest.param({"title": "line\r\nbreak"}, ["title"], id="title-crlf"),
        pytest.param({"title": "x" * 2000}, ["title"], id="title-2000"),
        pytest.param({"description": "\x1b[31mred"}, ["description"], id="description-escape"),
        pytest.param({"metadata_primary": "\x07"}, ["metadata_primary"], id="metadata-bell"),
        pytest.param({"info": "\x00"}, ["info"], id="info-nul"),
        pytest.param({"info": "i" * 20_000}, ["info"], id="info-20k"),
        pytest.param({"mime_type": "text/html\r\nX-Evil: 1"}, ["mime_type"], id="mime-crlf"),
        pytest.param({"mime_type": "../../etc"}, ["mime_type"], id="mime-path"),
        pytest.param({"mime_type": "a" * 300 + "/b"}, ["mime_type"], id="mime-300"),
        pytest.param({"filename": "../../etc/passwd"}, ["filename"], id="filename-traversal"),
        pytest.param({"filename": "a\x00b"}, ["filename"], id="filename-nul"),
        pytest.param({"filename": "x\r\nSet-Cookie: a=b"}, ["filename"], id="filename-crlf"),
        pytest.param({"filename": LONG_UNICODE}, ["filename"], id="filename-300-unicode"),
        pytest.param({"filename": ""}, ["filename"], id="filename-empty"),
        pytest.param({"filename": "   "}, ["filename"], id="filename-blank"),
        pytest.param({"filename": ".."}, ["filename"], id="filename-dotdot"),
        pytest.param({"filename": "C:\\evil.exe"}, ["filename"], id="filename-backslash"),
        pytest.param({"url": "http://127.0.0.1/x"}, ["url"], id="file-and-url"),
    ],
)
@pytest.mark.parametrize("fields_first", [False, True], ids=["fields-after", "fields-first"])
def test_hostile_upload_fields(
    client: FlaskClient,
    backends: Backends,
    owner: Credentials,
    fields: dict[str, str],
    names: list[str],
    fields_first: bool,
) -> None:
    form = [field(name, value) for name, value in fields.items()]
    parts = [*form, file_part()] if fields_first else [file_part(), *form]

    response = client.post(
        "/v3/media", data=multipart(*parts), headers=owner.basic, content_type=MULTIPART
    )

    assert_problem(response, 400, names)
    assert_nothing_left(client, backends, owner)


def test_repeated_field_is_refused(
    client: FlaskClient, backends: Backends, owner: Credentials
) -> None:
    body = multipart(file_part(), field("filename", "a.wav"), field("filename", "b.wav"))

    response = client.post("/v3/media", data=body, headers=owner.basic, content_type=MULTIPART)

    assert_problem(response, 400, ["filename"])
    assert_nothing_left(client, backends, owner)


@pytest.mark.parametrize(
    "url",
    [
        pytest.param("file:///etc/passwd", id="file-scheme"),
        pytest.param("javascript:alert(1)", id="javascript"),
        pytest.param("http://127.0.0.1:1/x", id="loopback"),
        pytest.param("http://[::1]:1/x", id="loopback-v6"),
        pytest.param("http://[::ffff:127.0.0.1]:1/x", id="v4-mapped"),
        pytest.param("http://169.254.169.254/latest/meta-data/", id="link-local-metadata"),
        pytest.param("http://10.0.0.1:1/x", id="private"),
        pytest.param("http://0.0.0.0:1/x", id="unspecified"),
        pytest.param("", id="empty"),
        pytest.param("http://" + "a" * 3000 + ".example/", id="3000-chars"),
    ],
)
def test_hostile_urls_are_refused_without_fetching(
    client: FlaskClient, backends: Backends, owner: Credentials, url: str
) -> None:
    response = client.post(
        "/v3/media", data=multipart(field("url", url)), headers=owner.basic, content_type=MULTIPART
    )

    assert_problem(response, 400, ["url"])
    assert_nothing_left(client, backends, owner)


@pytest.mark.parametrize(
    "filename_param",
    [
        pytest.param(b'filename="../../etc/passwd"', id="traversal"),
        pytest.param(b'filename="a\x00b"', id="nul-byte"),
        pytest.param(b"filename*=UTF-8''a%00b", id="nul-encoded"),
        pytest.param(b"filename*=UTF-8''x%0D%0ASet-Cookie%3A%20a%3Db", id="crlf-encoded"),
        pytest.param(b'filename="' + LONG_UNICODE.encode() + b'"', id="300-unicode"),
        pytest.param(b"filename*=UTF-8''" + b"%C3%BC" * 300, id="300-unicode-encoded"),
        pytest.param(b'filename=""', id="empty"),
        pytest.param(b'filename="   "', id="blank"),
        pytest.param(b'filename=".."', id="dotdot"),
        pytest.param(b'filename="C:\\\\evil.exe"', id="backslash"),
    ],
)
@pytest.mark.parametrize("part_name", ["filedata", "file"])
def test_hostile_part_filenames(
    client: FlaskClient,
    backends: Backends,
    owner: Credentials,
    filename_param: bytes,
    part_name: str,
) -> None:
    body = multipart(file_part(name=part_name, filename_param=filename_param))

    response = client.post("/v3/media", data=body, headers=owner.basic, content_type=MULTIPART)

    assert_problem(response, 400, [part_name])
    assert_nothing_left(client, backends, owner)


def test_dollar_strings_are_plain_data(
    client: FlaskClient, backends: Backends, owner: Credentials
) -> None:
    """Operator-looking text in a field is stored as text, not interpreted."""
    body = multipart(
        file_part(), field("title", '{"$gt": ""}'), field("metadata_primary", '{"$where": "1"}')
    )

    response = client.post("/v3/media", data=body, headers=owner.basic, content_type=MULTIPART)

    assert response.status_code == 201, response.get_json()
    item = response.get_json()
    assert item["title"] == '{"$gt": ""}'
    assert item["metadata_primary"] == '{"$where": "1"}'
    assert client.delete(f"/v3/media/{item['id']}", headers=owner.basic).status_code == 204
    assert_nothing_left(client, backends, owner)


# --- oversize uploads ------------------------------------------------------------------------


class EndlessBody(io.RawIOBase):
    """A request body of `size` bytes made on demand; counts what the server reads."""

    def __init__(self, size: int, head: bytes = b"") -> None:
        self.remaining = size
        self.head = head
        self.consumed = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self.remaining <= 0:
            return 0
        count = min(len(buffer), self.remaining, 1 << 20)
        chunk = (self.head + b"\0" * count)[:count]
        self.head = self.head[count:]
        buffer[:count] = chunk
        self.remaining -= count
        self.consumed += count
        return count


def oversize_multipart(file_size: int) -> bytes:
    return multipart(file_part(b"\0" * file_size))


def post_stream(
    client: FlaskClient, headers: dict[str, str], stream: Any, *, content_length: int | str | None
) -> Any:
    """POST `stream` as the raw upload body, with this Content-Length or none (chunked)."""
    environ: dict[str, Any] = {"wsgi.input": stream, "CONTENT_TYPE": MULTIPART}
    if content_length is None:
        environ["wsgi.input_terminated"] = True  # what gunicorn sets for a chunked body
        headers = {**headers, "Transfer-Encoding": "chunked"}
    else:
        environ["CONTENT_LENGTH"] = str(content_length)
    return client.post("/v3/media", headers=headers, environ_overrides=environ)


def test_oversize_content_length_is_413_before_reading(
    client: FlaskClient, backends: Backends, owner: Credentials
) -> None:
    declared = MAX_UPLOAD + FORM_OVERHEAD + 1
    body = EndlessBody(declared, head=file_part(b""))

    response = post_stream(client, owner.basic, body, content_length=declared)

    assert_problem(response, 413)
    assert body.consumed == 0
    assert_nothing_left(client, backends, owner)


@pytest.mark.parametrize(
    "announce_length", [True, False], ids=["counted-with-content-length", "streamed-no-length"]
)
def test_oversize_file_is_413_by_counting(
    client: FlaskClient, backends: Backends, owner: Credentials, announce_length: bool
) -> None:
    data = oversize_multipart(MAX_UPLOAD + 1)

    response = post_stream(
        client, owner.basic, io.BytesIO(data), content_length=len(data) if announce_length else None
    )

    assert_problem(response, 413)
    assert_nothing_left(client, backends, owner)


@pytest.mark.parametrize(
    "announce_length", [True, False], ids=["with-content-length", "streamed-no-length"]
)
def test_upload_of_exactly_the_limit_is_accepted(
    client: FlaskClient, backends: Backends, owner: Credentials, announce_length: bool
) -> None:
    """The control for the test above: the same request one byte smaller is a 201."""
    data = oversize_multipart(MAX_UPLOAD)

    response = post_stream(
        client, owner.basic, io.BytesIO(data), content_length=len(data) if announce_length else None
    )

    assert response.status_code == 201, response.get_json()
    item = response.get_json()
    assert item["media_size"] == MAX_UPLOAD
    assert client.delete(f"/v3/media/{item['id']}", headers=owner.basic).status_code == 204
    assert_nothing_left(client, backends, owner)


def test_oversize_stream_without_content_length_is_413(
    client: FlaskClient, backends: Backends, owner: Credentials
) -> None:
    """A body far over every limit, sent without a length, is cut off while it streams."""
    body = EndlessBody(64 * 1024 * 1024, head=file_part(b""))

    response = post_stream(client, owner.basic, body, content_length=None)

    assert_problem(response, 413)
    # Cut off at the counting limit, give or take one read of the body.
    assert body.consumed <= MAX_UPLOAD + FORM_OVERHEAD + READ_SIZE
    assert_nothing_left(client, backends, owner)


@pytest.mark.parametrize(
    ("content_length", "status"),
    [
        pytest.param("abc", 400, id="not-a-number"),
        pytest.param("-5", 400, id="negative"),
        pytest.param("0", 400, id="zero"),
        pytest.param("half", 400, id="truncated-body"),
        pytest.param("1" + "0" * 30, 413, id="10**30"),
    ],
)
def test_lying_content_length(
    client: FlaskClient,
    backends: Backends,
    owner: Credentials,
    content_length: str,
    status: int,
) -> None:
    data = multipart(file_part())
    if content_length == "half":
        content_length = str(len(data) // 2)

    response = post_stream(client, owner.basic, io.BytesIO(data), content_length=content_length)

    assert_problem(response, status)
    assert_nothing_left(client, backends, owner)


# --- update bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "names"),
    [
        pytest.param(b"{", None, id="truncated"),
        pytest.param(b'{"title": }', None, id="missing-value"),
        pytest.param(b'{"title": "a"} {"title": "b"}', None, id="two-documents"),
        pytest.param(b"[1, 2]", None, id="array"),
        pytest.param(b'"title"', None, id="string"),
        pytest.param(b"null", None, id="null"),
        pytest.param(b"", None, id="empty"),
        pytest.param(b"\xff\xfe\x00{", None, id="not-utf8"),
        pytest.param(b"[" * 100_000, None, id="nested-100k"),
        pytest.param(b'{"a":' * 20_000 + b"1" + b"}" * 20_000, None, id="nested-objects-20k"),
        pytest.param(b'{"max_downloads_allowed": ' + b"9" * 5000 + b"}", None, id="5000-digits"),
        pytest.param(b"{}", None, id="empty-object"),
        pytest.param(b'{"max_downloads_allowed": NaN}', ["max_downloads_allowed"], id="nan"),
        pytest.param(b'{"max_downloads_allowed": 1e400}', ["max_downloads_allowed"], id="infinity"),
    ],
)
def test_invalid_json_update(
    client: FlaskClient,
    owner: Credentials,
    item: dict[str, Any],
    body: bytes,
    names: list[str] | None,
) -> None:
    response = client.put(
        f"/v3/media/{item['id']}/info",
        data=body,
        headers=owner.basic,
        content_type="application/json",
    )

    assert_problem(response, 400, names)
    assert client.get(f"/v3/media/{item['id']}/info", headers=owner.basic).get_json() == item


@pytest.mark.parametrize(
    ("body", "names"),
    [
        pytest.param({"title": {"$gt": ""}}, ["title"], id="title-operator"),
        pytest.param({"$set": {"title": "x"}}, ["$set"], id="dollar-set"),
        pytest.param({"$where": "sleep(1000)"}, ["$where"], id="dollar-where"),
        pytest.param({"title": "ok", "$inc": {"times_downloaded": 1}}, ["$inc"], id="beside-ok"),
        pytest.param({"metadata_primary": {"$ne": None}}, ["metadata_primary"], id="ne-null"),
        pytest.param(
            {"max_downloads_allowed": {"$inc": 1}}, ["max_downloads_allowed"], id="int-operator"
        ),
        pytest.param({"public": {"$exists": True}}, ["public"], id="bool-operator"),
        pytest.param({"title.$": "x"}, ["title.$"], id="dotted-key"),
        pytest.param({"title": ["a"]}, ["title"], id="title-list"),
        pytest.param({"id": "x", "etag": "y"}, ["etag", "id"], id="read-only"),
        pytest.param({"times_downloaded": 0}, ["times_downloaded"], id="counter"),
        pytest.param({"max_downloads_allowed": 2**70}, ["max_downloads_allowed"], id="2**70"),
        pytest.param({"max_downloads_allowed": 2**31}, ["max_downloads_allowed"], id="2**31"),
        pytest.param({"max_downloads_allowed": -1}, ["max_downloads_allowed"], id="negative"),
        pytest.param({"max_downloads_allowed": 1.5}, ["max_downloads_allowed"], id="float"),
        pytest.param({"max_downloads_allowed": True}, ["max_downloads_allowed"], id="bool"),
        pytest.param({"max_downloads_allowed": "9" * 500}, ["max_downloads_allowed"], id="9x500"),
        pytest.param({"public": "yes"}, ["public"], id="public-yes"),
        pytest.param({"public": 2}, ["public"], id="public-2"),
        pytest.param({"public": True, "public_item": False}, ["public_item"], id="aliases"),
        pytest.param({"title": "a\x00b"}, ["title"], id="title-nul"),
        pytest.param({"title": "a\nb"}, ["title"], id="title-newline"),
        pytest.param({"description": "\x1b[2J"}, ["description"], id="description-escape"),
        pytest.param({"metadata_secondary": "\x7f"}, ["metadata_secondary"], id="del"),
        pytest.param({"mime_type": "text/html\r\nSet-Cookie: a=b"}, ["mime_type"], id="mime-crlf"),
        pytest.param({"mime_type": ""}, ["mime_type"], id="mime-empty"),
        pytest.param({"title": "x" * 2000}, ["title"], id="title-2000"),
    ],
)
def test_hostile_json_update(
    client: FlaskClient,
    owner: Credentials,
    item: dict[str, Any],
    body: dict[str, Any],
    names: list[str],
) -> None:
    response = client.put(f"/v3/media/{item['id']}", json=body, headers=owner.basic)

    assert_problem(response, 400, names)
    assert client.get(f"/v3/media/{item['id']}/info", headers=owner.basic).get_json() == item


@pytest.mark.parametrize(
    ("content_type", "body", "chunked", "status"),
    [
        pytest.param("text/plain", b"title=x", False, 415, id="text-plain"),
        pytest.param("application/xml", b"<title/>", False, 415, id="xml"),
        pytest.param("application/json", b" " * 300_000 + b"{}", False, 413, id="json-300kB"),
        pytest.param(
            "application/x-www-form-urlencoded",
            b"title=ok" + b"&" * 300_000 + b"&description=dropped",
            False,
            413,
            id="form-300kB",
        ),
        pytest.param(
            "application/json",
            b'{"title": "ok"' + b" " * 300_000 + b', "description": "dropped"}',
            True,
            413,
            id="json-300kB-chunked",
        ),
        pytest.param(
            "application/x-www-form-urlencoded",
            b"title=ok" + b"&" * 300_000 + b"&description=dropped",
            True,
            413,
            id="form-300kB-chunked",
        ),
    ],
)
def test_update_body_type_and_size(
    client: FlaskClient,
    owner: Credentials,
    item: dict[str, Any],
    content_type: str,
    body: bytes,
    chunked: bool,
    status: int,
) -> None:
    environ: dict[str, Any] = {"wsgi.input": io.BytesIO(body), "CONTENT_TYPE": content_type}
    headers = dict(owner.basic)
    if chunked:
        environ["wsgi.input_terminated"] = True
        headers["Transfer-Encoding"] = "chunked"
    else:
        environ["CONTENT_LENGTH"] = str(len(body))

    response = client.put(
        f"/v3/media/{item['id']}/info", headers=headers, environ_overrides=environ
    )

    assert_problem(response, status)
    assert client.get(f"/v3/media/{item['id']}/info", headers=owner.basic).get_json() == item


@pytest.mark.parametrize(
    ("content_type", "body", "names"),
    [
        pytest.param(
            "application/x-www-form-urlencoded", b"%24where=1", ["$where"], id="form-dollar"
        ),
        pytest.param(
            "application/x-www-form-urlencoded",
            b"title%5B%24ne%5D=x",
            ["title[$ne]"],
            id="form-bracket-operator",
        ),
        pytest.param(
            "application/x-www-form-urlencoded",
            b"title=a&title=b",
            ["title"],
            id="form-repeated",
        ),
        pytest.param(
            "application/x-www-form-urlencoded",
            b"max_downloads_allowed=" + str(2**70).encode(),
            ["max_downloads_allowed"],
            id="form-2**70",
        ),
        pytest.param(
            "application/x-www-form-urlencoded", b"title=a%00b", ["title"], id="form-title-nul"
        ),
        pytest.param(MULTIPART, multipart(field("$where", "1")), ["$where"], id="multipart-dollar"),
        pytest.param(MULTIPART, multipart(file_part()), ["filedata"], id="multipart-file"),
    ],
)
def test_hostile_form_update(
    client: FlaskClient,
    owner: Credentials,
    item: dict[str, Any],
    content_type: str,
    body: bytes,
    names: list[str],
) -> None:
    response = client.put(
        f"/v3/media/{item['id']}/info", data=body, headers=owner.basic, content_type=content_type
    )

    assert_problem(response, 400, names)
    assert client.get(f"/v3/media/{item['id']}/info", headers=owner.basic).get_json() == item


# --- ids in the path -------------------------------------------------------------------------

ITEM_ENDPOINTS = [
    pytest.param("GET", "/v3/media/{id}", id="GET-content"),
    pytest.param("HEAD", "/v3/media/{id}", id="HEAD-content"),
    pytest.param("GET", "/v3/media/{id}/info", id="GET-info"),
    pytest.param("PUT", "/v3/media/{id}/info", id="PUT-info"),
    pytest.param("PUT", "/v3/media/{id}", id="PUT"),
    pytest.param("DELETE", "/v3/media/{id}", id="DELETE"),
    pytest.param("DELETE", "/v3/media/{id}/info", id="DELETE-info"),
]


@pytest.mark.parametrize(
    "bad_id",
    [
        pytest.param("not-a-uuid", id="word"),
        pytest.param("1" * 1000, id="1000-chars"),
        pytest.param("%00", id="nul"),
        pytest.param("..", id="dotdot"),
        pytest.param("%2e%2e", id="dotdot-encoded"),
        pytest.param("00000000-0000-4000-8000-00000000000g", id="not-hex"),
        pytest.param("00000000-0000-4000-8000-0000000000000", id="one-digit-too-many"),
        pytest.param("00000000-0000-4000-8000-000000000000%0A", id="trailing-newline"),
        pytest.param("%27%20OR%201%3D1%20--", id="sql-injection"),
        pytest.param("%7B%22%24gt%22%3A%22%22%7D", id="operator-object"),
        pytest.param("%C3%BC" * 36, id="unicode"),
        pytest.param("%ED%A0%80", id="encoded-surrogate"),
        pytest.param("00000000-0000-4000-8000-00000000000%ED%A0%80", id="uuid-with-surrogate"),
    ],
)
@pytest.mark.parametrize(("method", "template"), ITEM_ENDPOINTS)
def test_bad_item_ids_are_400(
    client: FlaskClient, owner: Credentials, method: str, template: str, bad_id: str
) -> None:
    response = client.open(
        template.format(id=bad_id), method=method, headers=owner.basic, json={"title": "x"}
    )

    assert_problem(response, 400, ["id"])


@pytest.mark.parametrize(
    "bad_id",
    [
        pytest.param("../etc", id="traversal"),
        pytest.param("%2e%2e%2fetc", id="traversal-encoded"),
    ],
)
@pytest.mark.parametrize(("method", "template"), ITEM_ENDPOINTS)
def test_ids_spanning_segments_match_no_route(
    client: FlaskClient, owner: Credentials, method: str, template: str, bad_id: str
) -> None:
    """A slash makes it another path, which no route serves: 404, still problem+json."""
    response = client.open(
        template.format(id=bad_id), method=method, headers=owner.basic, json={"title": "x"}
    )

    assert_problem(response, 404)


@pytest.mark.parametrize(
    ("method", "template", "status"),
    [
        pytest.param("PATCH", "/v3/media/{id}", 405, id="PATCH"),
        pytest.param("POST", "/v3/media/{id}", 405, id="POST-item"),
        pytest.param("POST", "/v3/media/{id}/info", 405, id="POST-info"),
        pytest.param("DELETE", "/v3/media", 405, id="DELETE-collection"),
        pytest.param("GET", "/v3/media/{id}/content", 404, id="unknown-sub-resource"),
        pytest.param("GET", "/v3/media/{id}/info/x", 404, id="deeper"),
    ],
)
def test_unrouted_requests_are_problems(
    client: FlaskClient,
    owner: Credentials,
    item: dict[str, Any],
    method: str,
    template: str,
    status: int,
) -> None:
    response = client.open(template.format(id=item["id"]), method=method, headers=owner.basic)

    assert_problem(response, status)
    if status == 405:
        assert method not in response.headers["Allow"]


# --- search parameters -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "names"),
    [
        pytest.param("page_size=abc", ["page_size"], id="page-size-word"),
        pytest.param("page_size=", ["page_size"], id="page-size-empty"),
        pytest.param("page_size=0", ["page_size"], id="page-size-0"),
        pytest.param("page_size=101", ["page_size"], id="page-size-101"),
        pytest.param("page_size=1.5", ["page_size"], id="page-size-fraction"),
        pytest.param(f"page_size={2**70}", ["page_size"], id="page-size-2**70"),
        pytest.param("page_size=1&page_size=2", ["page_size"], id="page-size-repeated"),
        pytest.param("page_index=-1", ["page_index"], id="page-index-negative"),
        pytest.param("page_index=" + "9" * 5000, ["page_index"], id="page-index-5000-digits"),
        pytest.param("page_index=%00", ["page_index"], id="page-index-nul"),
        pytest.param("order=sideways", ["order"], id="order-sideways"),
        pytest.param("order=", ["order"], id="order-empty"),
        pytest.param("start_time=garbage", ["start_time"], id="start-garbage"),
        pytest.param("start_time=" + "9" * 500, ["start_time"], id="start-500-digits"),
        pytest.param("start_time=2020-13-01T00:00:00Z", ["start_time"], id="start-month-13"),
        pytest.param("end_time=2020-02-30", ["end_time"], id="end-30-february"),
        pytest.param(
            "start_time=2021-01-01T00:00:00Z&end_time=2020-01-01T00:00:00Z",
            ["end_time"],
            id="end-before-start",
        ),
        pytest.param("page_size=abc&order=up", ["order", "page_size"], id="two-bad"),
        pytest.param("order=%ED%A0%80", ["order"], id="order-encoded-surrogate"),
        pytest.param("start_time=%ED%A0%80", ["start_time"], id="start-encoded-surrogate"),
    ],
)
def test_bad_search_parameters_are_400(
    client: FlaskClient, owner: Credentials, query: str, names: list[str]
) -> None:
    response = client.get(f"/v3/media?{query}", headers=owner.basic)

    assert_problem(response, 400, names)


@pytest.mark.parametrize(
    "query",
    [
        pytest.param("%24where=1", id="dollar-where"),
        pytest.param("page_size%5B%24gt%5D=0", id="bracket-operator"),
        pytest.param("timestamp=1&sig=abc", id="client-signature"),
    ],
)
def test_unknown_search_parameters_are_ignored(
    client: FlaskClient, owner: Credentials, query: str
) -> None:
    response = client.get(f"/v3/media?{query}", headers=owner.basic)

    assert response.status_code == 200
    assert response.get_json()["count"] == 0


# --- header values ---------------------------------------------------------------------------

BINARY = "".join(map(chr, range(0x80, 0x100))) + "\x00\x01\x7f"


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        pytest.param({"Range": "bytes=" + "1-2," * 2500}, 200, id="range-10kB"),
        pytest.param({"Range": "bytes=0-" + "9" * 10_000}, 206, id="range-10kB-number"),
        pytest.param({"Range": BINARY}, 200, id="range-binary"),
        pytest.param({"If-None-Match": '"x", ' * 2000}, 200, id="inm-10kB"),
        pytest.param({"If-None-Match": "W/" * 5000}, 200, id="inm-10kB-weak-prefixes"),
        pytest.param({"If-None-Match": '"' * 10_000}, 200, id="inm-10kB-quotes"),
        pytest.param({"If-None-Match": BINARY}, 200, id="inm-binary"),
        pytest.param({"If-Modified-Since": "Mon, " * 2000}, 200, id="ims-10kB"),
        pytest.param({"If-Modified-Since": BINARY}, 200, id="ims-binary"),
        pytest.param({"If-Range": "x" * 10_000, "Range": "bytes=0-1"}, 200, id="if-range-10kB"),
        pytest.param({"If-Range": BINARY, "Range": "bytes=0-1"}, 200, id="if-range-binary"),
        pytest.param({"If-Match": BINARY}, 412, id="if-match-binary"),
        pytest.param({"If-Unmodified-Since": "x" * 10_000}, 200, id="ius-10kB"),
        pytest.param({"X-Request-Id": "x" * 10_000}, 200, id="request-id-10kB"),
        pytest.param({"X-Request-Id": BINARY}, 200, id="request-id-binary"),
        pytest.param({"Accept": BINARY, "Accept-Encoding": "x" * 10_000}, 200, id="accept"),
    ],
)
def test_absurd_header_values_never_fail(
    client: FlaskClient, item: dict[str, Any], headers: dict[str, str], status: int
) -> None:
    response = client.get(f"/v3/media/{item['id']}", headers=headers)

    assert response.status_code == status
    if status == 200:
        assert response.data == WAV
    elif status == 206:
        assert response.data == WAV
        assert response.headers["Content-Range"] == f"bytes 0-{len(WAV) - 1}/{len(WAV)}"
    else:
        assert_problem(response, status)
    request_id = response.headers["X-Request-Id"]
    assert 0 < len(request_id) <= 128 and request_id.isascii() and request_id.isprintable()


# --- credentials -----------------------------------------------------------------------------


def _basic(raw: bytes) -> str:
    return "Basic " + base64.b64encode(raw).decode()


GARBAGE_AUTHORIZATION = [
    pytest.param("Basic !!!", id="basic-not-base64"),
    pytest.param("Basic", id="basic-alone"),
    pytest.param(_basic(b"no-colon"), id="basic-no-colon"),
    pytest.param(_basic(b"acct0001:wrong-secret-0123456789"), id="basic-wrong-secret"),
    pytest.param(_basic(b"\xff\xfe:\x00"), id="basic-binary"),
    pytest.param(_basic(b":"), id="basic-empty-pair"),
    pytest.param(_basic(b"\xed\xa0\x80:secret-0123456789abcdef"), id="basic-encoded-surrogate"),
    pytest.param(_basic(b"acct0001\xed\xa0\x80:x"), id="basic-key-with-surrogate"),
    pytest.param("Basic " + "A" * 20_000, id="basic-20kB"),
    pytest.param("Bearer a.b.c", id="bearer-a.b.c"),
    pytest.param("Bearer", id="bearer-alone"),
    pytest.param("Bearer " + "A" * 20_000, id="bearer-20kB"),
    pytest.param(
        "Bearer eyJhbGciOiJub25lIn0.eyJhcHBsaWNhdGlvbl9pZCI6ImFwcC1vbmUifQ.", id="bearer-alg-none"
    ),
    pytest.param("Digest x", id="digest"),
    pytest.param("Negotiate YII=", id="negotiate"),
    pytest.param("", id="empty"),
    pytest.param("   ", id="spaces"),
    pytest.param(BINARY, id="binary"),
    pytest.param("x" * 20_000, id="20kB-no-scheme"),
]


@pytest.mark.parametrize("authorization", GARBAGE_AUTHORIZATION)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "/v3/media", id="search"),
        pytest.param("GET", "/v3/media/{id}", id="public-download"),
        pytest.param("GET", "/v3/media/{id}/info", id="info"),
        pytest.param("POST", "/v3/media", id="upload"),
    ],
)
def test_garbage_authorization_is_401(
    client: FlaskClient,
    backends: Backends,
    owner: Credentials,
    item: dict[str, Any],
    method: str,
    path: str,
    authorization: str,
) -> None:
    kwargs: dict[str, Any] = {}
    if method == "POST":
        kwargs = {"data": multipart(file_part()), "content_type": MULTIPART}

    response = client.open(
        path.format(id=item["id"]),
        method=method,
        headers={"Authorization": authorization},
        **kwargs,
    )

    assert_problem(response, 401)
    assert "Basic" in response.headers["WWW-Authenticate"]
    assert "Bearer" in response.headers["WWW-Authenticate"]
    # Only the fixture's item exists: nothing was uploaded.
    assert client.get("/v3/media", headers=owner.basic).get_json()["count"] == 1
    assert len(list(backends.blobs.list_blobs())) == 1


def test_algorithm_confusion_token_is_401(
    client: FlaskClient, owner: Credentials, rsa_keypair: KeyPair, item: dict[str, Any]
) -> None:
    token = hs256_token(owner.application_id, rsa_keypair[1].encode())

    for headers, query in (({"Authorization": f"Bearer {token}"}, {}), ({}, {"jwt-token": token})):
        response = client.get("/v3/media", headers=headers, query_string=query)
        assert_problem(response, 401)


def test_basic_and_jwt_together_is_400(client: FlaskClient, owner: Credentials) -> None:
    response = client.get(
        "/v3/media", headers=owner.basic, query_string={"jwt-token": owner.token()}
    )

    assert_problem(response, 400)


# --- text that cannot be encoded as UTF-8 (lone surrogates) -----------------------------------

LONE_SURROGATE = "\ud800"


def unsigned_token(claims: dict[str, Any], *, alg: str = "RS256") -> str:
    """A token nobody signed; `claims` may hold lone surrogates (json escapes them)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": alg}).encode())
    return f"{header}.{b64(json.dumps(claims).encode())}.AAAA"


def _now() -> int:
    return int(datetime.now(UTC).timestamp())


UNENCODABLE_CLAIMS = [
    pytest.param(lambda: {"application_id": LONE_SURROGATE, "iat": _now()}, id="application-id"),
    pytest.param(
        lambda: {"application_id": "app-one" + LONE_SURROGATE, "iat": _now()},
        id="application-id-suffix",
    ),
    pytest.param(
        lambda: {"application_id": "app-one", "iat": _now(), "jti": LONE_SURROGATE}, id="jti"
    ),
    pytest.param(
        lambda: {"application_id": "app-one", "iat": _now(), LONE_SURROGATE: 1}, id="claim-name"
    ),
    pytest.param(
        lambda: {
            "application_id": "app-one",
            "iat": _now(),
            "acl": {"paths": {"/" + LONE_SURROGATE: {}}},
        },
        id="acl-path",
    ),
]


@pytest.mark.parametrize("claims", UNENCODABLE_CLAIMS)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        pytest.param("GET", "/v3/media", id="search"),
        pytest.param("GET", "/v3/media/{id}/info", id="info"),
        pytest.param("GET", "/v3/media/{id}", id="download"),
        pytest.param("HEAD", "/v3/media/{id}", id="head"),
    ],
)
@pytest.mark.parametrize("where", ["header", "query"])
def test_unencodable_token_claims_are_401(
    client: FlaskClient,
    item: dict[str, Any],
    claims: Any,
    method: str,
    path: str,
    where: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token = unsigned_token(claims())
    headers = {"Authorization": f"Bearer {token}"} if where == "header" else {}
    query = {"jwt-token": token} if where == "query" else {}

    response = client.open(
        path.format(id=item["id"]), method=method, headers=headers, query_string=query
    )

    assert_problem(response, 401)
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]


UNENCODABLE_UPDATES = [
    pytest.param({"title": LONE_SURROGATE}, ["title"], id="title"),
    pytest.param({"title": "ok" + LONE_SURROGATE + "ok"}, ["title"], id="title-middle"),
    pytest.param({"description": LONE_SURROGATE}, ["description"], id="description"),
    pytest.param({"metadata_primary": "\udfff"}, ["metadata_primary"], id="metadata-primary"),
    pytest.param({"metadata_secondary": LONE_SURROGATE}, ["metadata_secondary"], id="secondary"),
    pytest.param({"mime_type": "audio/" + LONE_SURROGATE}, ["mime_type"], id="mime-type"),
    pytest.param({"title": "x", "\ud800name": "y"}, ["\ufffdname"], id="unknown-field-name"),
]


@pytest.mark.parametrize(("body", "names"), UNENCODABLE_UPDATES)
@pytest.mark.parametrize("path", ["/v3/media/{id}/info", "/v3/media/{id}"])
def test_unencodable_update_fields_are_400(
    client: FlaskClient,
    owner: Credentials,
    item: dict[str, Any],
    body: dict[str, Any],
    names: list[str],
    path: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # json.dumps escapes the surrogate as \ud800, as a hostile client would send it.
    response = client.put(
        path.format(id=item["id"]),
        data=json.dumps(body),
        content_type="application/json",
        headers=owner.basic,
    )

    problem = assert_problem(response, 400, names)
    # The problem document itself is valid UTF-8 all the way down.
    json.dumps(problem, ensure_ascii=False).encode("utf-8")
    assert not [r for r in caplog.records if r.levelname in ("ERROR", "CRITICAL")]
    assert client.get(f"/v3/media/{item['id']}/info", headers=owner.basic).get_json() == item


def test_unencodable_text_never_reaches_a_repository(world: World) -> None:
    """Below the schemas, the adapters translate what they cannot store: never a bare error."""
    from media_service.storage.interfaces import InvalidValue

    media, credentials = world.backends.media, world.backends.credentials
    with pytest.raises(InvalidValue):
        credentials.get_application(LONE_SURROGATE)
    with pytest.raises(InvalidValue):
        credentials.get_account(LONE_SURROGATE)
    with pytest.raises(InvalidValue):
        media.get(LONE_SURROGATE)
