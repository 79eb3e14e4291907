"""Downloads whose bytes are not there: deleted meanwhile (404), or lost under a READY item (503).

Over both backend pairs. A GET that reads the metadata and then finds the blob gone must not be
a 500: if the item was deleted in between, the answer is the 404 a GET after the delete gets;
if the item is still READY, its bytes are missing from the store, which GET and HEAD both answer
with a 503 (see MediaService.open_content for why), logged once as an error naming the item.
"""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from media_service.api.content import SMALL_DOWNLOAD_BYTES
from media_service.factory import create_app
from media_service.settings import Settings
from media_service.storage.files import FileBlobStore
from media_service.storage.interfaces import Backends, BackendUnavailable, BlobStore, BlobStream
from tests.conftest import Credentials
from tests.problems import assert_problem
from tests.real_backends import REAL_PAIR, mongo_is_ferretdb

CONTENT = b"RIFF\x24\x00\x00\x00WAVEfmt racing bytes" * 100


class BeforeOpen:
    """A blob store that runs `hook(key)` right before each open: between the view's metadata
    read and its blob open, exactly where a concurrent delete can land."""

    def __init__(self, inner: BlobStore) -> None:
        self._inner = inner
        self.hook: Callable[[str], None] = lambda key: None

    def open(self, key: str, start: int = 0, length: int | None = None) -> BlobStream:
        self.hook(key)
        return self._inner.open(key, start, length)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def make_app(settings: Settings, backends: Backends, blobs: Any = None) -> Flask:
    wired = Backends(
        blobs=blobs if blobs is not None else backends.blobs,
        media=backends.media,
        credentials=backends.credentials,
    )
    app = create_app(settings, backends=wired)
    app.config["TESTING"] = True
    return app


def upload(client: FlaskClient, owner: Credentials, **fields: str) -> dict[str, Any]:
    data: dict[str, Any] = {"filedata": (io.BytesIO(CONTENT), "race.wav", "audio/wav"), **fields}
    response = client.post(
        "/v3/media", data=data, headers=owner.basic, content_type="multipart/form-data"
    )
    assert response.status_code == 201, response.get_json()
    item: dict[str, Any] = response.get_json()
    return item


def errors_naming(caplog: pytest.LogCaptureFixture, item_id: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.levelno >= logging.ERROR and item_id in r.getMessage()]


# --------------------------------------------------------------------------- deleted meanwhile


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({}, id="whole"),
        pytest.param({"Range": "bytes=0-9"}, id="range-from-0"),
        pytest.param({"Range": "bytes=10-19"}, id="range-later"),
    ],
)
def test_delete_between_metadata_read_and_blob_open_is_404(
    settings: Settings,
    backends: Backends,
    owner: Credentials,
    headers: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    blobs = BeforeOpen(backends.blobs)
    client = make_app(settings, backends, blobs).test_client()
    item = upload(client, owner, public="true")

    def delete_it(key: str) -> None:
        blobs.hook = lambda key: None
        assert client.delete(f"/v3/media/{item['id']}", headers=owner.basic).status_code == 204

    blobs.hook = delete_it
    response = client.get(f"/v3/media/{item['id']}", headers=headers)

    assert_problem(response, 404)
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert client.get(f"/v3/media/{item['id']}").status_code == 404


def test_head_racing_a_delete_is_404_too(
    settings: Settings, backends: Backends, owner: Credentials
) -> None:
    blobs = BeforeOpen(backends.blobs)
    client = make_app(settings, backends, blobs).test_client()
    item = upload(client, owner)

    def delete_it(key: str) -> None:
        blobs.hook = lambda key: None
        assert client.delete(f"/v3/media/{item['id']}", headers=owner.basic).status_code == 204

    blobs.hook = delete_it
    assert_problem(client.head(f"/v3/media/{item['id']}", headers=owner.basic), 404)


def test_gets_racing_a_delete_are_200_or_404(
    settings: Settings, backends: Backends, owner: Credentials, request: pytest.FixtureRequest
) -> None:
    """6 threads of 15 GETs each against one item while it is deleted; never a 5xx."""
    allowed = {200, 404}
    if request.node.callspec.params["backends"] == REAL_PAIR and mongo_is_ferretdb():
        # FerretDB 1.x writes an update back whole after reading it (docs/ferretdb.md §3): a
        # download's $inc can restore the READY state a concurrent delete had just replaced,
        # and a GET then meets a READY item without bytes. 503 then, as for any lost blob; still
        # never a 500. On MongoDB the $inc touches the counter alone.
        allowed.add(503)
    client = make_app(settings, backends).test_client()
    statuses: list[int] = []
    lock = threading.Lock()
    for _round in range(10):
        item = upload(client, owner, public="true")
        path = f"/v3/media/{item['id']}"
        start = threading.Barrier(7)

        def fetch(path: str = path, start: threading.Barrier = start) -> None:
            start.wait()
            seen = []
            for _ in range(15):
                response = client.get(path)
                seen.append(response.status_code)
                if response.status_code == 200:
                    assert response.data == CONTENT
            with lock:
                statuses.extend(seen)

        with ThreadPoolExecutor(max_workers=6) as pool:
            futures = [pool.submit(fetch) for _ in range(6)]
            start.wait()
            assert client.delete(path, headers=owner.basic).status_code == 204
            for future in futures:
                future.result()
    assert set(statuses) <= allowed, sorted(set(statuses))
    assert len(statuses) == 10 * 6 * 15


# --------------------------------------------------------------------------- lost under READY


@pytest.mark.parametrize(
    ("method", "headers"),
    [
        pytest.param("GET", {}, id="GET"),
        pytest.param("GET", {"Range": "bytes=5-9"}, id="GET-range"),
        pytest.param("HEAD", {}, id="HEAD"),
        pytest.param("HEAD", {"Range": "bytes=5-9"}, id="HEAD-range"),
    ],
)
def test_ready_item_without_its_blob_is_503_for_get_and_head_alike(
    settings: Settings,
    backends: Backends,
    owner: Credentials,
    method: str,
    headers: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = make_app(settings, backends).test_client()
    item = upload(client, owner)
    stored = backends.media.get(item["id"])
    assert stored is not None
    backends.blobs.delete(stored.id)  # lost behind the service's back
    caplog.clear()

    response = client.open(f"/v3/media/{item['id']}", method=method, headers=owner.basic)

    assert_problem(response, 503)
    assert response.headers["Retry-After"]
    assert len(errors_naming(caplog, item["id"])) == 1
    # The metadata is untouched: nothing was deleted on the client's behalf.
    assert client.get(f"/v3/media/{item['id']}/info", headers=owner.basic).status_code == 200
    assert backends.media.get(item["id"]) == stored


def test_a_missing_blob_does_not_count_a_download(
    settings: Settings, backends: Backends, owner: Credentials
) -> None:
    client = make_app(settings, backends).test_client()
    item = upload(client, owner, public="true", max_downloads_allowed="1")
    stored = backends.media.get(item["id"])
    assert stored is not None
    backends.blobs.delete(stored.id)

    assert_problem(client.get(f"/v3/media/{item['id']}"), 503)
    after = backends.media.get(item["id"])
    assert after is not None and after.times_downloaded == 0


# --------------------------------------------------------------------------- small downloads


class UnreadableStream:
    """A blob stream that opens fine and fails on its first read, as a dying disk or S3 does."""

    def __init__(self, inner: BlobStream) -> None:
        self._inner = inner
        self.closed = False

    def __iter__(self) -> Any:
        raise BackendUnavailable("blob store", "read failed")

    def close(self) -> None:
        self.closed = True
        self._inner.close()


def test_a_small_download_that_cannot_be_read_is_503_and_not_counted(
    settings: Settings, backends: Backends, owner: Credentials
) -> None:
    """Small bodies are read before the count (api/content.py): a failed read spends none."""
    wrapper = BeforeOpen(backends.blobs)
    opened: list[UnreadableStream] = []

    def unreadable(key: str, start: int = 0, length: int | None = None) -> BlobStream:
        stream = UnreadableStream(backends.blobs.open(key, start, length))
        opened.append(stream)
        return stream

    client = make_app(settings, backends, wrapper).test_client()
    item = upload(client, owner, public="true", max_downloads_allowed="1")
    assert item["media_size"] <= SMALL_DOWNLOAD_BYTES
    wrapper.open = unreadable  # type: ignore[method-assign]

    assert_problem(client.get(f"/v3/media/{item['id']}"), 503)
    assert [stream.closed for stream in opened] == [True]
    after = backends.media.get(item["id"])
    assert after is not None and after.times_downloaded == 0


@pytest.mark.parametrize("backends", ["sqlite-files"], indirect=True)
def test_a_small_file_shorter_than_its_record_is_503_and_not_counted(
    settings: Settings,
    backends: Backends,
    owner: Credentials,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A body sent from memory carries the Content-Length of the record: never fewer bytes."""
    client = make_app(settings, backends).test_client()
    item = upload(client, owner, public="true")
    store = backends.blobs
    assert isinstance(store, FileBlobStore)
    path = store.root / store.relative_path(item["id"])
    path.write_bytes(CONTENT[:-1])  # one byte lost behind the service's back
    caplog.clear()

    problem = assert_problem(client.get(f"/v3/media/{item['id']}"), 503)
    assert problem["type"].endswith(":content-unavailable")
    assert len(errors_naming(caplog, item["id"])) == 1
    after = backends.media.get(item["id"])
    assert after is not None and after.times_downloaded == 0
