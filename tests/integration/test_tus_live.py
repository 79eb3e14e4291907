"""tus uploads against a live gunicorn, with the tus project's client (tuspy) and raw requests.

Each test runs on the file store and on S3 (a moto server; MinIO/Ceph RGW and FerretDB under
`make test-backends`): chunk sizes from one byte to 16 MiB, a client cut off at 50 %, a server
SIGKILLed mid-PATCH and restarted, concurrent uploads, and (slow) 1 GiB with flat memory.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from tusclient import client as tus_client

from realservers.gunicorn_server import GunicornServer
from tests.integration.conftest import (
    S3Endpoint,
    StartServer,
    create_account,
    fresh_mongo_database,
    fresh_s3_env,
    http_session,
    launch,
)

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"


class PatternFile(io.RawIOBase):
    """A seekable, read-only file of `size` deterministic bytes that never sits in memory."""

    BLOCK = hashlib.sha256(b"seed").digest() * (MiB // 32 + 1)  # 1 MiB + 32 bytes

    def __init__(self, size: int) -> None:
        self.size = size
        self.position = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.position, os.SEEK_END: self.size}[whence]
        self.position = max(0, base + offset)
        return self.position

    def tell(self) -> int:
        return self.position

    def read(self, size: int = -1) -> bytes:
        end = self.size if size is None or size < 0 else min(self.size, self.position + size)
        out = bytearray()
        while self.position < end:
            start = self.position % len(self.BLOCK)
            take = min(end - self.position, len(self.BLOCK) - start)
            out += self.BLOCK[start : start + take]
            self.position += take
        return bytes(out)

    def md5(self) -> str:
        digest = hashlib.md5(usedforsecurity=False)
        self.seek(0)
        while chunk := self.read(8 * MiB):
            digest.update(chunk)
        self.seek(0)
        return digest.hexdigest()


@pytest.fixture(autouse=True)
def _no_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    """tuspy uses requests' module functions, which read proxy variables: loopback only."""
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


STORES = [
    "file",
    "moto",
    pytest.param("real-s3", marks=pytest.mark.minio),
    pytest.param("real-mongo-s3", marks=[pytest.mark.mongo, pytest.mark.minio]),
]


@pytest.fixture(params=STORES)
def store_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """Server variables for one store (and database) under test."""
    base = {"MEDIA_MAX_UPLOAD_BYTES": str(2048 * MiB), "MEDIA_MIN_FREE_BYTES": "0"}
    if request.param == "file":
        yield base
    elif request.param == "moto":
        moto: S3Endpoint = request.getfixturevalue("moto_server")
        yield {**base, **moto.storage_env()}
    elif request.param == "real-s3":
        with fresh_s3_env() as env:
            yield {**base, **env}
    else:
        with fresh_s3_env() as env, fresh_mongo_database() as mongo_url:
            yield {**base, **env, "MEDIA_DATABASE_URL": mongo_url}


def tus(server: GunicornServer, auth: tuple[str, str]) -> tus_client.TusClient:
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    return tus_client.TusClient(
        f"{server.url}/v3/media/uploads", headers={"Authorization": f"Basic {token}"}
    )


def item_of(http: requests.Session, media_location: str, auth: tuple[str, str]) -> Any:
    response = http.get(media_location, auth=auth, timeout=30)
    assert response.status_code == 200, response.text
    return response.json()


def head(http: requests.Session, url: str, auth: tuple[str, str]) -> requests.Response:
    response = http.head(url, auth=auth, headers=TUS, timeout=30)
    assert response.status_code == 200, response.headers
    return response


@pytest.mark.parametrize(
    ("size", "chunk"),
    [(300, 1), (3 * MiB + 5, 256 * 1024), (9 * MiB, 5 * MiB + 1), (40 * MiB, 16 * MiB)],
)
def test_tuspy_uploads_in_chunks(
    live_server: StartServer, store_env: dict[str, str], size: int, chunk: int
) -> None:
    server = live_server(workers=2, env=store_env)
    auth = create_account(server)
    source = PatternFile(size)
    uploader = tus(server, auth).uploader(
        file_stream=source, chunk_size=chunk, metadata={"filename": "pattern.bin"}
    )
    uploader.upload()
    media_location = uploader.request.response_headers["media-location"]
    with http_session() as http:
        item = item_of(http, media_location, auth)
        assert item["etag"] == source.md5()
        assert item["media_size"] == size
        assert item["original_file_name"] == "pattern.bin"
        assert head(http, uploader.url, auth).headers["Media-Location"] == media_location
        content = http.get(f"{server.url}/v3/media/{item['id']}", auth=auth, timeout=60)
        assert hashlib.md5(content.content).hexdigest() == item["etag"]


def test_tuspy_with_checksums(live_server: StartServer, store_env: dict[str, str]) -> None:
    server = live_server(workers=1, env=store_env)
    auth = create_account(server)
    source = PatternFile(3 * MiB)
    uploader = tus(server, auth).uploader(
        file_stream=source,
        chunk_size=MiB,
        upload_checksum=True,  # sha1 per PATCH
    )
    uploader.upload()
    with http_session() as http:
        item = item_of(http, uploader.request.response_headers["media-location"], auth)
    assert item["etag"] == source.md5()


def _create(
    http: requests.Session, server: GunicornServer, auth: tuple[str, str], size: int
) -> str:
    response = http.post(
        f"{server.url}/v3/media/uploads",
        auth=auth,
        headers={**TUS, "Upload-Length": str(size)},
        timeout=30,
    )
    assert response.status_code == 201, response.text
    return str(response.headers["Location"])


class Body:
    """A request body of announced `length` (so Content-Length, not chunked) read from
    `source`; it dies (raises) after `die_at` bytes, and sleeps `pause` between reads."""

    def __init__(
        self, source: Any, length: int, die_at: int | None = None, pause: float = 0.0
    ) -> None:
        self._source = source
        self._length = length
        self._left = length if die_at is None else die_at
        self._dies = die_at is not None
        self._pause = pause
        self.sent = threading.Event()

    def __len__(self) -> int:
        return self._length

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            if self._dies:
                raise ConnectionAbortedError("the client was killed")
            return b""
        chunk: bytes = self._source.read(min(self._left, MiB if size < 0 else size))
        self._left -= len(chunk)
        self.sent.set()
        if self._pause:
            time.sleep(self._pause)
        return chunk


@pytest.mark.slow
def test_a_client_killed_at_half_resumes_from_head(
    live_server: StartServer, store_env: dict[str, str]
) -> None:
    """Done-when of issue #14: 200 MiB, cut at 50 %, resumed from HEAD's offset, right ETag."""
    size = 200 * MiB
    server = live_server(workers=2, env=store_env)
    auth = create_account(server)
    source = PatternFile(size)
    with http_session() as http:
        url = _create(http, server, auth, size)
        source.seek(0)
        with pytest.raises((requests.RequestException, ConnectionAbortedError)):
            http.patch(
                url,
                data=Body(source, size, die_at=size // 2),
                auth=auth,
                headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS},
                timeout=120,
            )
        offset = _settled_offset(http, url, auth)
        assert 0 < offset <= size // 2
    uploader = tus(server, auth).uploader(file_stream=source, url=url, chunk_size=32 * MiB)
    assert uploader.offset == offset  # tuspy asked HEAD where to resume
    uploader.upload()
    with http_session() as http:
        item = item_of(http, uploader.request.response_headers["media-location"], auth)
    assert item["etag"] == source.md5()
    assert item["media_size"] == size


def _settled_offset(http: requests.Session, url: str, auth: tuple[str, str]) -> int:
    """HEAD's offset once the server has noticed the cut (its PATCH's lease is gone)."""
    deadline = time.monotonic() + 30
    last = -1
    while time.monotonic() < deadline:
        offset = int(head(http, url, auth).headers["Upload-Offset"])
        probe = http.patch(
            url,
            data=b"",
            auth=auth,
            headers={**TUS, "Upload-Offset": str(offset), "Content-Type": OCTETS},
            timeout=30,
        )
        if probe.status_code == 204 and offset == last:
            return offset
        last = offset
        time.sleep(0.2)
    raise AssertionError("the offset never settled")


def _kill(server: GunicornServer) -> None:
    """SIGKILL the master and every worker: no handler runs, nothing is flushed."""
    server.kill()


def test_resume_after_the_server_is_sigkilled_and_restarted(
    tmp_path: Path, store_env: dict[str, str]
) -> None:
    size = 40 * MiB
    env = {**store_env, "MEDIA_RESUMABLE_LOCK_SECONDS": "1"}
    data_dir = tmp_path / "server"
    first = launch(data_dir, workers=1, env=env)
    second: GunicornServer | None = None
    try:
        auth = create_account(first)
        source = PatternFile(size)
        with http_session() as http:
            url = _create(http, first, auth, size)
        path = url.removeprefix(first.url)
        sent = threading.Event()

        def body() -> Iterator[bytes]:
            source.seek(0)
            while chunk := source.read(MiB):
                yield chunk
                if source.tell() >= 20 * MiB:
                    sent.set()
                    time.sleep(0.05)

        def send() -> None:
            with contextlib.suppress(requests.RequestException), http_session() as http:
                http.patch(
                    url,
                    data=body(),
                    auth=auth,
                    headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS},
                    timeout=60,
                )

        sender = threading.Thread(target=send)
        sender.start()
        assert sent.wait(60)
        time.sleep(0.5)
        _kill(first)
        sender.join(60)

        second = launch(data_dir, workers=1, env=env)
        url = second.url + path
        time.sleep(1.1)  # the dead worker's lease runs out
        with http_session() as http:
            offset = int(head(http, url, auth).headers["Upload-Offset"])
        assert 0 < offset < size
        uploader = tus(second, auth).uploader(
            file_stream=source, url=url, chunk_size=16 * MiB, retries=3, retry_delay=1
        )
        assert uploader.offset == offset
        uploader.upload()
        with http_session() as http:
            item = item_of(http, uploader.request.response_headers["media-location"], auth)
        assert item["etag"] == source.md5()
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_concurrent_uploads_and_concurrent_patches(
    live_server: StartServer, store_env: dict[str, str]
) -> None:
    server = live_server(workers=2, threads=4, env=store_env)
    auth = create_account(server)
    results: dict[int, str] = {}
    errors: list[BaseException] = []

    def one(seed: int) -> None:
        try:
            source = PatternFile(2 * MiB + seed * 1000)
            uploader = tus(server, auth).uploader(file_stream=source, chunk_size=300 * 1024)
            uploader.upload()
            with http_session() as http:
                item = item_of(http, uploader.request.response_headers["media-location"], auth)
            results[seed] = item["etag"] if item["etag"] == source.md5() else "wrong"
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=one, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors
    assert len(results) == 4 and "wrong" not in results.values()

    # Two PATCHes at the same offset of one upload: one writes, the other is refused.
    size = 4 * MiB
    with http_session() as http:
        url = _create(http, server, auth, size)
    answers: list[int] = []
    bodies = {fill: Body(io.BytesIO(bytes([fill]) * size), size, pause=0.02) for fill in (1, 2)}

    def writer(fill: int) -> None:
        with http_session() as http:
            response = http.patch(
                url,
                data=bodies[fill],
                auth=auth,
                headers={**TUS, "Upload-Offset": "0", "Content-Type": OCTETS},
                timeout=60,
            )
            answers.append(response.status_code)

    first = threading.Thread(target=writer, args=(1,))
    first.start()
    assert bodies[1].sent.wait(30)
    time.sleep(0.3)
    second = threading.Thread(target=writer, args=(2,))
    second.start()
    first.join(60)
    second.join(60)
    assert sorted(answers) in ([204, 409], [204, 423])
    with http_session() as http:
        location = head(http, url, auth).headers["Media-Location"]
        item = item_of(http, location, auth)
    assert item["etag"] == hashlib.md5(b"\x01" * size).hexdigest()


@pytest.mark.slow
@pytest.mark.parametrize(
    "store_env", ["file", pytest.param("real-s3", marks=pytest.mark.minio)], indirect=True
)
def test_a_1_gib_upload_keeps_worker_memory_flat(
    live_server: StartServer, store_env: dict[str, str]
) -> None:
    size = 1024 * MiB
    server = live_server(workers=1, env=store_env)
    auth = create_account(server)
    source = PatternFile(size)
    uploader = tus(server, auth).uploader(file_stream=source, chunk_size=64 * MiB)
    uploader.upload()
    peaks = [_peak_rss(pid) for pid in server.worker_pids()]
    with http_session() as http:
        item = item_of(http, uploader.request.response_headers["media-location"], auth)
    assert item["etag"] == source.md5()
    assert item["media_size"] == size
    assert peaks and max(peaks) < 300 * MiB, peaks


def _peak_rss(pid: int) -> int:
    """The process's peak resident set (VmHWM), in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")
