"""MediaClient against a live server: the app of each backend pair behind Werkzeug on 127.0.0.1."""

from __future__ import annotations

import hashlib
import io
import os
import socket
import threading
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from flask import Flask
from werkzeug.serving import make_server
from werkzeug.wsgi import get_input_stream

from media_service.client import (
    BasicAuth,
    CachedTokenMinter,
    InsufficientStorage,
    JwtAuth,
    MediaApiError,
    MediaClient,
    MediaClientError,
    MediaItem,
    NotFound,
    TooLarge,
    Unauthorized,
    Unavailable,
    ValidationError,
)
from media_service.client.multipart import CHUNK_SIZE
from media_service.factory import create_app
from media_service.storage.interfaces import Backends
from tests.conftest import Credentials, make_settings

MIB = 1024 * 1024
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 8


def serve(request: pytest.FixtureRequest, wsgi_app: Any) -> str:
    """Serve `wsgi_app` on an ephemeral loopback port until the test ends; return its URL."""
    server = make_server("127.0.0.1", 0, wsgi_app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})

    def stop() -> None:
        server.shutdown()
        thread.join(timeout=10)
        server.server_close()

    thread.start()
    request.addfinalizer(stop)
    return f"http://127.0.0.1:{server.server_port}"


@pytest.fixture
def base_url(request: pytest.FixtureRequest, app: Flask) -> str:
    return serve(request, app)


ClientFactory = Callable[..., MediaClient]


@pytest.fixture
def make_client(request: pytest.FixtureRequest) -> ClientFactory:
    """Build clients on sessions that ignore proxy variables (loopback only), closed at the end."""

    def _make(url: str, auth: Any, **kwargs: Any) -> MediaClient:
        session = requests.Session()
        session.trust_env = False
        request.addfinalizer(session.close)
        return MediaClient(url, auth=auth, session=session, **kwargs)

    return _make


def basic(owner: Credentials) -> BasicAuth:
    return BasicAuth(owner.api_key, owner.api_secret)


def jwt_auth(owner: Credentials) -> JwtAuth:
    return JwtAuth.from_private_key(owner.application_id, owner.private_key)


@pytest.fixture(params=["basic", "jwt"])
def media(
    request: pytest.FixtureRequest, base_url: str, owner: Credentials, make_client
) -> MediaClient:
    """A client of the live server, authenticated as the owner by each kind of credentials."""
    return make_client(base_url, basic(owner) if request.param == "basic" else jwt_auth(owner))


class BoundedReader(io.BytesIO):
    """A file whose read() insists on a bounded size, to prove uploads are streamed."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.reads = 0

    def read(self, size: int | None = -1, /) -> bytes:
        assert size is not None and 0 < size <= CHUNK_SIZE, f"unbounded read({size})"
        self.reads += 1
        return super().read(size)


class Unseekable(io.RawIOBase):
    """A pipe-like stream of known bytes: no seek, no size, so the upload is chunked."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1, /) -> bytes:
        assert 0 < size <= CHUNK_SIZE, f"unbounded read({size})"
        return self._data.read(size)


# --------------------------------------------------------------------------- every method


def test_upload_get_update_delete(media: MediaClient) -> None:
    before = datetime.now(UTC) - timedelta(seconds=5)
    item = media.upload_file(
        io.BytesIO(WAV),
        filename="hello.wav",
        info={"campaign": "spring"},
        public=True,
        max_downloads_allowed=3,
        title="Hello",
        description="greeting",
        metadata_secondary="two",
    )
    assert isinstance(item, MediaItem)
    assert uuid.UUID(item.id).version == 4
    assert item.original_file_name == "hello.wav"
    assert (item.mime_type or "").startswith("audio/")  # sniffed: the part type is generic
    assert item.media_size == len(WAV)
    assert item.etag == hashlib.md5(WAV).hexdigest()
    assert item.public is True and item.public_item is True
    assert item.max_downloads_allowed == 3 and item.times_downloaded == 0
    assert item.metadata_primary == '{"campaign": "spring"}'
    assert (item.title, item.description, item.metadata_secondary) == ("Hello", "greeting", "two")
    assert item.store_meta_params["filesize"] == str(len(WAV))
    assert item.time_created is not None and item.time_created.tzinfo is not None
    assert before <= item.time_created <= datetime.now(UTC)
    assert item.account_id == "acct0001"

    assert media.get(item.id) == item

    updated = media.update(item.id, title="Renamed", public=False, description=None)
    assert updated is not None
    assert (updated.title, updated.public, updated.description) == ("Renamed", False, None)
    assert updated.etag == item.etag
    assert updated.time_last_updated is not None and item.time_last_updated is not None
    assert updated.time_last_updated >= item.time_last_updated
    assert media.get(item.id) == updated

    assert media.delete(item.id) is None
    with pytest.raises(NotFound):
        media.get(item.id)
    with pytest.raises(NotFound):
        media.delete(item.id)


def test_application_id_follows_the_kind_of_auth(
    base_url: str, owner: Credentials, make_client: ClientFactory
) -> None:
    by_basic = make_client(base_url, basic(owner)).upload_file(io.BytesIO(b"a"), filename="a.txt")
    by_jwt = make_client(base_url, jwt_auth(owner)).upload_file(io.BytesIO(b"b"), filename="b.txt")
    assert by_basic.application_id is None
    assert by_jwt.application_id == owner.application_id


def test_upload_from_a_path_and_download_3_mib_byte_exact(
    media: MediaClient, tmp_path: Path
) -> None:
    content = os.urandom(3 * MIB + 17)
    source = tmp_path / "big.bin"
    source.write_bytes(content)
    item = media.upload_file(source, mime_type="application/x-test")
    assert item.original_file_name == "big.bin"
    assert item.mime_type == "application/x-test"
    assert item.media_size == len(content)

    target = tmp_path / "copy.bin"
    result = media.download(item.id, target)
    assert target.read_bytes() == content
    assert (result.status, result.bytes_written, result.size) == (200, len(content), len(content))
    assert result.etag == item.etag == hashlib.md5(content).hexdigest()
    assert result.content_type == "application/x-test"
    assert result.last_modified is not None and not result.not_modified

    sink = io.BytesIO()
    assert media.download(item.id, sink).bytes_written == len(content)
    assert sink.getvalue() == content
    assert media.get(item.id).times_downloaded == 2


def test_upload_reads_the_file_in_bounded_chunks(media: MediaClient) -> None:
    content = os.urandom(3 * MIB)
    reader = BoundedReader(content)
    item = media.upload_file(reader, filename="streamed.bin")
    assert reader.reads >= 3
    assert item.media_size == len(content) and item.etag == hashlib.md5(content).hexdigest()


def test_upload_of_an_unseekable_stream_is_chunked(media: MediaClient) -> None:
    content = os.urandom(2 * MIB + 5)
    with Unseekable(content) as stream:
        item = media.upload_file(stream, filename="piped.bin")
    assert item.media_size == len(content) and item.etag == hashlib.md5(content).hexdigest()
    with media.open_download(item.id) as chunks:
        assert b"".join(chunks) == content


def test_upload_keeps_unusual_file_names(media: MediaClient) -> None:
    for name in ['naïve "quoted" 100%.wav', "plain name.wav", "日本語.txt"]:
        assert media.upload_file(io.BytesIO(b"x"), filename=name).original_file_name == name


def test_upload_url(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    backends: Backends,
    owner: Credentials,
    make_client: ClientFactory,
) -> None:
    app = create_app(make_settings(tmp_path, url_fetch_allow_private=True), backends=backends)
    url = serve(request, app)
    media = make_client(url, basic(owner))
    source = media.upload_file(io.BytesIO(WAV), filename="source.wav", public=True)

    item = media.upload_url(f"{url}/v3/media/{source.id}", filename="fetched.wav", title="F")
    assert item.source_url == f"{url}/v3/media/{source.id}"
    assert (item.original_file_name, item.title) == ("fetched.wav", "F")
    assert item.etag == source.etag and item.media_size == len(WAV)


def test_open_download_ranges(media: MediaClient) -> None:
    content = os.urandom(2 * MIB + 100)
    item = media.upload_file(io.BytesIO(content), filename="r.bin")
    with media.open_download(item.id, byte_range=(10, 19)) as stream:
        assert stream.status == 206 and stream.content_range == f"bytes 10-19/{len(content)}"
        assert b"".join(stream) == content[10:20]
    with media.open_download(item.id, byte_range=(MIB, None)) as stream:
        chunks = list(stream)
        assert all(len(chunk) <= CHUNK_SIZE for chunk in chunks)
        assert b"".join(chunks) == content[MIB:]
    with media.open_download(item.id) as stream:
        assert stream.status == 200 and stream.etag == item.etag
        assert stream.content_length == len(content)
        assert b"".join(stream) == content
    with pytest.raises(ValueError):
        with media.open_download(item.id, byte_range=(5, 4)):
            pass


def test_open_download_if_range(media: MediaClient) -> None:
    content = os.urandom(1000)
    item = media.upload_file(io.BytesIO(content), filename="r.bin")
    assert item.etag is not None
    with media.open_download(item.id, byte_range=(600, None), if_range=item.etag) as stream:
        assert stream.status == 206 and b"".join(stream) == content[600:]
    # Another entity tag: the whole content, as a 200.
    with media.open_download(item.id, byte_range=(600, None), if_range="0" * 32) as stream:
        assert stream.status == 200 and b"".join(stream) == content
    with pytest.raises(ValueError):
        with media.open_download(item.id, if_range=item.etag):
            pass


# --------------------------------------------------------------------------- search


def test_search_follows_next_links_and_yields_each_item_once(media: MediaClient) -> None:
    ids = [media.upload_file(io.BytesIO(b"%d" % i), filename=f"{i}.txt").id for i in range(5)]

    first = media.search_page(page_size=2, order="ascending")
    assert first.count == 5 and len(first.items) == 2 and first.next_href is not None
    assert [item.id for item in first.items] == ids[:2]
    last = media.search_page(page_size=2, page_index=2, order="ascending")
    assert [item.id for item in last.items] == ids[4:] and last.next_href is None

    assert [item.id for item in media.search(page_size=2, order="ascending")] == ids
    assert [item.id for item in media.search(page_size=2)] == ids[::-1]

    now = datetime.now(UTC)
    window = media.search(page_size=2, start_time=now - timedelta(hours=1), end_time=now)
    assert sorted(item.id for item in window) == sorted(ids)
    naive_past = (now - timedelta(days=2)).replace(tzinfo=None)  # naive means UTC
    assert list(media.search(start_time=naive_past - timedelta(days=1), end_time=naive_past)) == []


def test_search_refuses_links_to_another_server(
    request: pytest.FixtureRequest, make_client: ClientFactory
) -> None:
    def stub(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = (
            b'{"page_size": 1, "page_index": 0, "count": 2, "_embedded": {"media": [{"id": "a"}]},'
            b' "_links": {"next": {"href": "http://elsewhere.invalid/v3/media?page_index=1"}}}'
        )
        start_response("200 OK", [("Content-Type", "application/json")])
        return [body]

    media = make_client(serve(request, stub), BasicAuth("k", "s"))
    results = media.search()
    assert next(results).id == "a"
    with pytest.raises(MediaClientError, match="another server"):
        next(results)


# --------------------------------------------------------------------------- conditional and resume


def test_conditional_download_answers_not_modified(media: MediaClient, tmp_path: Path) -> None:
    item = media.upload_file(io.BytesIO(WAV), filename="c.wav")
    target = tmp_path / "c.wav"
    target.write_bytes(b"previous copy")

    result = media.download(item.id, target, if_none_match=item.etag)
    assert result.not_modified and result.status == 304 and result.bytes_written == 0
    assert result.etag == item.etag
    assert target.read_bytes() == b"previous copy"  # untouched

    later = datetime.now(UTC) + timedelta(minutes=1)
    assert media.download(item.id, target, if_modified_since=later).not_modified
    assert target.read_bytes() == b"previous copy"

    changed = media.download(item.id, target, if_none_match="0" * 32)
    assert changed.status == 200 and target.read_bytes() == WAV
    earlier = datetime(2000, 1, 1)
    assert media.download(item.id, io.BytesIO(), if_modified_since=earlier).status == 200
    assert media.get(item.id).times_downloaded == 2  # a 304 is not a download


def test_resume_appends_the_rest_of_a_partial_file(media: MediaClient, tmp_path: Path) -> None:
    content = os.urandom(3 * MIB)
    item = media.upload_file(io.BytesIO(content), filename="r.bin")
    target = tmp_path / "r.bin"
    target.write_bytes(content[: MIB + 123])

    result = media.download(item.id, target, resume=True)
    assert result.status == 206 and result.resumed
    assert result.bytes_written == len(content) - (MIB + 123) and result.size == len(content)
    assert target.read_bytes() == content

    # Already complete: nothing to fetch, nothing written.
    done = media.download(item.id, target, resume=True, if_range=item.etag)
    assert (done.status, done.bytes_written, done.size) == (416, 0, len(content))
    assert target.read_bytes() == content
    # A range that does not start at byte 0 is not a new download.
    assert media.get(item.id).times_downloaded == 0


def test_resume_rewrites_when_the_partial_file_is_stale(media: MediaClient, tmp_path: Path) -> None:
    content = os.urandom(MIB + 1)
    item = media.upload_file(io.BytesIO(content), filename="s.bin")
    target = tmp_path / "s.bin"

    target.write_bytes(b"from some other version")
    stale = media.download(item.id, target, resume=True, if_range="f" * 32)
    assert stale.status == 200 and target.read_bytes() == content

    target.write_bytes(content + b"trailing junk")
    longer = media.download(item.id, target, resume=True)
    assert longer.status == 200 and target.read_bytes() == content

    target.unlink()
    fresh = media.download(item.id, target, resume=True)
    assert fresh.status == 200 and target.read_bytes() == content


def test_resume_needs_a_path(media: MediaClient) -> None:
    with pytest.raises(ValueError, match="path"):
        media.download(str(uuid.uuid4()), io.BytesIO(), resume=True)


def test_a_corrupted_partial_file_fails_the_etag_check(media: MediaClient, tmp_path: Path) -> None:
    content = os.urandom(1000)
    item = media.upload_file(io.BytesIO(content), filename="m.bin")
    target = tmp_path / "m.bin"
    target.write_bytes(b"X" * 500)  # not the first 500 bytes of the content
    with pytest.raises(MediaClientError, match="ETag"):
        media.download(item.id, target, resume=True)


# --------------------------------------------------------------------------- auth


def test_a_static_token_and_a_token_provider(
    base_url: str, owner: Credentials, make_client: ClientFactory
) -> None:
    item = make_client(base_url, JwtAuth(owner.token())).upload_file(io.BytesIO(b"t"), filename="t")
    calls = []

    def provider() -> str:
        calls.append(1)
        return owner.token()

    assert make_client(base_url, JwtAuth(provider)).get(item.id).id == item.id
    assert make_client(base_url, provider).get(item.id).id == item.id  # a bare callable
    assert len(calls) == 2


def test_minted_tokens_are_cached_until_shortly_before_expiry(owner: Credentials) -> None:
    now = [1_700_000_000.0]
    minter = CachedTokenMinter(
        owner.application_id, owner.private_key, ttl=300, clock=lambda: now[0]
    )
    first = minter()
    claims = jwt.decode(first, options={"verify_signature": False})
    assert claims["application_id"] == owner.application_id
    assert claims["exp"] - claims["iat"] == 300
    now[0] += 200
    assert minter() == first
    now[0] += 60  # within a minute of expiry
    second = minter()
    assert second != first
    assert jwt.decode(second, options={"verify_signature": False})["iat"] == 1_700_000_260
    assert second not in repr(JwtAuth(minter)) and second not in repr(JwtAuth(second))


def test_invalid_keys_are_refused_up_front(owner: Credentials) -> None:
    with pytest.raises(ValueError):
        JwtAuth.from_private_key(owner.application_id, "not a key")
    with pytest.raises(ValueError):
        JwtAuth.from_private_key(owner.application_id, owner.private_key, ttl=0)
    with pytest.raises(ValueError):
        JwtAuth("")
    assert "secret" not in repr(BasicAuth("key", "secret"))


# --------------------------------------------------------------------------- errors


def test_not_found(media: MediaClient, tmp_path: Path) -> None:
    missing = str(uuid.uuid4())
    for call in (
        lambda: media.get(missing),
        lambda: media.update(missing, title="x"),
        lambda: media.delete(missing),
        lambda: media.download(missing, tmp_path / "missing"),
    ):
        with pytest.raises(NotFound) as caught:
            call()
        assert caught.value.status == 404 and caught.value.request_id
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize(
    "auth",
    [
        BasicAuth("acct0001", "wrong-secret-0123456789"),
        JwtAuth("not.a.jwt"),
    ],
    ids=["basic", "jwt"],
)
def test_unauthorized(
    base_url: str, owner: Credentials, make_client: ClientFactory, auth: Any
) -> None:
    media = make_client(base_url, auth)
    with pytest.raises(Unauthorized) as caught:
        media.upload_file(io.BytesIO(b"x"), filename="x")
    assert caught.value.status == 401 and caught.value.title


def test_an_expired_minted_token_is_unauthorized(
    base_url: str, owner: Credentials, make_client: ClientFactory
) -> None:
    def long_ago() -> float:
        return 1_000_000_000.0

    auth = JwtAuth.from_private_key(owner.application_id, owner.private_key, clock=long_ago)
    with pytest.raises(Unauthorized):
        make_client(base_url, auth).search_page()


def test_validation_errors_list_the_invalid_parameters(media: MediaClient) -> None:
    item = media.upload_file(io.BytesIO(b"v"), filename="v.txt")
    with pytest.raises(ValidationError) as caught:
        media.update(item.id, title="ok", bogus=1, max_downloads_allowed=-1)
    error = caught.value
    assert error.status == 400 and error.request_id
    assert {p.name for p in error.invalid_parameters} == {"bogus", "max_downloads_allowed"}
    assert "bogus" in str(error)

    with pytest.raises(ValidationError) as caught:
        media.search_page(page_size=1000)
    assert [p.name for p in caught.value.invalid_parameters] == ["page_size"]


@pytest.mark.parametrize("size", [4096, 3 * MIB], ids=["counted", "announced"])
def test_too_large(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    backends: Backends,
    owner: Credentials,
    make_client: ClientFactory,
    size: int,
) -> None:
    # 4 KiB is refused while counting; 3 MiB exceeds the limit plus the form allowance, so the
    # server refuses it from Content-Length alone.
    app = create_app(make_settings(tmp_path, max_upload_bytes=1024), backends=backends)
    media = make_client(serve(request, app), basic(owner))
    with pytest.raises(TooLarge) as caught:
        media.upload_file(io.BytesIO(b"z" * size), filename="z.bin")
    assert caught.value.status == 413 and isinstance(caught.value, MediaApiError)
    assert list(media.search()) == []


def test_insufficient_storage(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    backends: Backends,
    owner: Credentials,
    make_client: ClientFactory,
) -> None:
    """The server's free-space reserve is reached: 507, raised as InsufficientStorage."""
    app = create_app(make_settings(tmp_path, min_free_bytes=2**62), backends=backends)
    media = make_client(serve(request, app), basic(owner))
    with pytest.raises(InsufficientStorage) as caught:
        media.upload_file(io.BytesIO(b"z" * 4096), filename="z.bin")
    error = caught.value
    assert error.status == 507 and isinstance(error, MediaApiError)
    assert error.problem_type is not None
    assert error.problem_type.endswith(":insufficient-storage")
    assert list(media.search()) == []


def test_network_errors_are_client_errors(make_client: ClientFactory) -> None:
    with socket.socket() as sock:  # a port nobody listens on once it is closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    media = make_client(f"http://127.0.0.1:{port}", BasicAuth("k", "s"), timeout=2)
    with pytest.raises(MediaClientError) as caught:
        media.get(str(uuid.uuid4()))
    assert not isinstance(caught.value, MediaApiError)
    assert isinstance(caught.value.__cause__, requests.ConnectionError)


def test_non_json_error_bodies_still_raise_typed_errors(
    request: pytest.FixtureRequest, make_client: ClientFactory
) -> None:
    def proxy_page(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("503 Service Unavailable", [("Content-Type", "text/html")])
        return [b"<html>down for maintenance</html>"]

    media = make_client(serve(request, proxy_page), BasicAuth("k", "s"))
    with pytest.raises(Unavailable) as caught:
        media.get("x")
    assert caught.value.status == 503 and caught.value.title == "Service Unavailable"


# --------------------------------------------------------------------------- values


def test_media_item_tolerates_unknown_fields_and_odd_values() -> None:
    item = MediaItem.from_json(
        {
            "id": "i",
            "time_created": "2020-01-01T14:00:00.000Z",
            "time_last_updated": "not a date",
            "store_meta_params": '{"filesize": "3"}',
            "public_item": True,
            "media_size": 3,
            "new_field": [1, 2],
        }
    )
    assert item.time_created == datetime(2020, 1, 1, 14, tzinfo=UTC)
    assert item.time_last_updated is None
    assert item.store_meta_params == {"filesize": "3"}
    assert item.public and item.media_size == 3
    assert item.extra == {"new_field": [1, 2]}
    assert hash(item) == hash(
        MediaItem.from_json(
            {
                "id": "i",
                "public_item": True,
                "media_size": 3,
                "time_created": "2020-01-01T14:00:00.000Z",
            }
        )
    )
    with pytest.raises(ValueError):
        MediaItem.from_json({"title": "no id"})


def test_client_closes_its_own_session() -> None:
    with MediaClient("http://127.0.0.1:9", auth=BasicAuth("k", "s")) as media:
        assert media.base_url == "http://127.0.0.1:9"
    with pytest.raises(ValueError):
        MediaClient("ftp://example", auth=BasicAuth("k", "s"))


# --------------------------------------------------------------------------- request framing


def test_seekable_files_announce_their_length_and_streams_are_chunked(
    request: pytest.FixtureRequest, make_client: ClientFactory
) -> None:
    seen: list[dict[str, Any]] = []

    def recorder(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        body = get_input_stream(environ).read()  # bounded by Content-Length, or de-chunked
        seen.append(
            {
                "length": environ.get("CONTENT_LENGTH"),
                "chunked": environ.get("HTTP_TRANSFER_ENCODING"),
                "body": body,
                "type": environ.get("CONTENT_TYPE", ""),
            }
        )
        start_response("201 Created", [("Content-Type", "application/json")])
        return [b'{"id": "recorded"}']

    media = make_client(serve(request, recorder), BasicAuth("k", "s"))
    media.upload_file(io.BytesIO(b"0123456789"), filename="a.bin", title="T", public=False)
    with Unseekable(b"0123456789") as stream:
        media.upload_file(stream, filename="b.bin")

    announced, chunked = seen
    assert announced["length"] == str(len(announced["body"])) and not announced["chunked"]
    assert chunked["chunked"] == "chunked" and not chunked["length"]
    boundary = announced["type"].split("boundary=")[1]
    assert (
        announced["body"]
        == (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="public"\r\n\r\nfalse\r\n'
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="title"\r\n\r\nT\r\n'
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="filedata"; filename="a.bin"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
            f"0123456789\r\n--{boundary}--\r\n"
        ).encode()
    )


# --------------------------------------------------------------------------- resumable (tus)


def test_upload_resumable_in_chunks_with_fields_and_progress(
    media: MediaClient, tmp_path: Path
) -> None:
    data = os.urandom(3 * MIB + 5)
    path = tmp_path / "tus.bin"
    path.write_bytes(data)
    support = media.tus_support()
    assert support is not None and "md5" in support.checksum_algorithms
    progress: list[int] = []
    created: list[str] = []
    item = media.upload_resumable(
        path,
        chunk_size=MIB,
        on_progress=progress.append,
        on_created=created.append,
        title="Resumed",
        public=True,
        metadata_primary={"k": 1},
    )
    assert item.etag == hashlib.md5(data).hexdigest() and item.media_size == len(data)
    assert item.title == "Resumed" and item.public and item.original_file_name == "tus.bin"
    assert item.metadata_primary == '{"k": 1}'
    assert sum(progress) == len(data) and max(progress) <= MIB
    assert len(created) == 1 and "/v3/media/uploads/" in created[0]
    out = tmp_path / "back.bin"
    media.download(item.id, out)
    assert out.read_bytes() == data


class FailingPatches:
    """WSGI middleware answering the given statuses to the first PATCH requests, then passing."""

    def __init__(self, app: Any, statuses: list[int]) -> None:
        self.app = app
        self.statuses = statuses
        self.seen: list[str] = []

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        self.seen.append(environ["REQUEST_METHOD"])
        if environ["REQUEST_METHOD"] == "PATCH" and self.statuses:
            get_input_stream(environ).read()  # the body, so the connection stays usable
            status = self.statuses.pop(0)
            start_response(f"{status} Failing", [("Content-Type", "text/plain")])
            return [b"try again"]
        return self.app(environ, start_response)


@pytest.fixture
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    from media_service.client import resumable

    monkeypatch.setattr(resumable, "BACKOFF", 0.01)


@pytest.mark.usefixtures("quick_retries")
def test_upload_resumable_retries_5xx_and_423_from_heads_offset(
    request: pytest.FixtureRequest, app: Flask, owner: Credentials, make_client, tmp_path: Path
) -> None:
    failing = FailingPatches(app.wsgi_app, [503, 423, 500])
    app.wsgi_app = failing  # type: ignore[method-assign]
    client = make_client(serve(request, app), basic(owner))
    data = os.urandom(2 * MIB)
    path = tmp_path / "retried.bin"
    path.write_bytes(data)
    progress: list[int] = []
    item = client.upload_resumable(path, chunk_size=MIB, on_progress=progress.append)
    assert item.etag == hashlib.md5(data).hexdigest()
    assert failing.seen.count("HEAD") == 3 and failing.seen.count("PATCH") == 5
    assert sum(progress) == len(data)  # the bytes of failed PATCHes were taken back


@pytest.mark.usefixtures("quick_retries")
def test_upload_resumable_gives_up_after_the_retries(
    request: pytest.FixtureRequest, app: Flask, owner: Credentials, make_client, tmp_path: Path
) -> None:
    from media_service.client import resumable

    failing = FailingPatches(app.wsgi_app, [503] * 10)
    app.wsgi_app = failing  # type: ignore[method-assign]
    client = make_client(serve(request, app), basic(owner))
    path = tmp_path / "doomed.bin"
    path.write_bytes(b"x" * 1000)
    with pytest.raises(Unavailable):
        client.upload_resumable(path)
    assert failing.seen.count("PATCH") == resumable.RETRIES + 1


def test_upload_resumable_with_a_gone_upload_url_starts_a_new_upload(
    media: MediaClient, tmp_path: Path
) -> None:
    path = tmp_path / "fresh.bin"
    path.write_bytes(b"fresh bytes")
    created: list[str] = []
    gone = f"{media.base_url}/v3/media/uploads/{uuid.uuid4().hex}"
    item = media.upload_resumable(path, upload_url=gone, on_created=created.append)
    assert item.etag == hashlib.md5(b"fresh bytes").hexdigest()
    assert len(created) == 1 and created[0] != gone


def test_tus_support_is_none_without_tus(
    request: pytest.FixtureRequest, make_client: ClientFactory, owner: Credentials
) -> None:
    def no_tus(environ: dict[str, Any], start_response: Any) -> Any:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"nothing here"]

    client = make_client(serve(request, no_tus), basic(owner))
    assert client.tus_support() is None
