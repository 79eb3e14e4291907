"""Download counting under real concurrency: several gunicorn processes, one database (SPEC §4.4).

The acceptance test of the counting issue: a public item limited to N anonymous downloads,
hammered by many concurrent anonymous clients spread over four worker processes, is served
exactly N times and refused (403) every other time, and its counter ends at exactly N. In-process
tests cannot prove this — threads in one process share a GIL, and mongomock is not atomic — so it
runs against gunicorn over HTTP, on SQLite + files (always) and on a real MongoDB + S3 (FerretDB
and MinIO under `make test-backends`). The same servers also prove which requests do not count
(HEAD, 304, 416, ranges not starting at 0) and that an interrupted download resumed with a Range
counts once. Last, two gunicorn instances on one database and bucket — two hosts, as far as the
count can tell — share one limited item exactly.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest

from realservers.gunicorn_server import GunicornServer
from tests.integration.conftest import (
    StartServer,
    create_account,
    http_session,
    pair_env,
    pair_params,
    payload,
    real_mongo_is_ferretdb,
    upload,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

WORKERS = 4
LIMIT = 25
ANONYMOUS_REQUESTS = 200
CLIENT_THREADS = 50
CONTENT = payload(48 * 1024 + 7, seed=3)


class Stack:
    """A four-worker server and an account created on it through the CLI (Basic auth)."""

    def __init__(self, server: GunicornServer, owner: tuple[str, str], ferretdb: bool) -> None:
        self.server = server
        self.owner = owner
        self.ferretdb = ferretdb

    def create(self, content: bytes = CONTENT, **fields: str) -> dict:
        with http_session() as http:
            created = upload(http, self.server, content, auth=self.owner, form=fields)
        assert created.status_code == 201, created.text
        return created.json()

    def info(self, item_id: str) -> dict:
        with http_session() as http:
            response = http.get(f"{self.content_url(item_id)}/info", auth=self.owner, timeout=15)
        assert response.status_code == 200, response.text
        return response.json()

    def content_url(self, item_id: str) -> str:
        return f"{self.server.url}/v3/media/{item_id}"


@pytest.fixture(
    scope="module",
    params=pair_params("sqlite+files", "mongodb+s3"),
)
def stack(
    request: pytest.FixtureRequest,
    module_live_server: StartServer,
) -> Iterator[Stack]:
    """WEB_CONCURRENCY=4 gunicorn on SQLite + files (the embedded default) or MongoDB + S3."""
    with ExitStack() as cleanup:
        server = module_live_server(workers=WORKERS, env=pair_env(request.param, cleanup))
        server.wait_for_workers(WORKERS)
        yield Stack(
            server,
            create_account(server),
            ferretdb=request.param == "mongodb+s3" and real_mongo_is_ferretdb(),
        )
        server.stop()  # before the database is dropped


def _anonymous_get(url: str) -> tuple[int, str | None]:
    """One anonymous download on its own connection: (status, SHA-256 of the body if 200)."""
    with http_session() as http:
        response = http.get(url, timeout=(5, 30))
        digest = hashlib.sha256(response.content).hexdigest() if response.ok else None
        return response.status_code, digest


def _bytes_written(pid: int) -> int:
    """What the process has written so far (sockets and logs included), from /proc/PID/io."""
    for line in Path(f"/proc/{pid}/io").read_text().splitlines():
        if line.startswith("wchar:"):
            return int(line.split()[1])
    raise AssertionError(f"no wchar in /proc/{pid}/io")


def test_limit_is_exact_under_concurrent_anonymous_downloads(
    stack: Stack, request: pytest.FixtureRequest
) -> None:
    """200 concurrent anonymous GETs of an item limited to 25: exactly 25 x 200, the rest 403."""
    if stack.ferretdb:
        # FerretDB 1.x runs an update as a read and a later write (docs/ferretdb.md): concurrent
        # conditional updates all "succeed" and increments are lost. Not a bug of this service.
        request.applymarker(pytest.mark.xfail(reason="FerretDB updates are not atomic"))
    item = stack.create(public="true", max_downloads_allowed=str(LIMIT))
    url = stack.content_url(item["id"])

    workers = stack.server.worker_pids()
    written_before = {pid: _bytes_written(pid) for pid in workers}
    with ThreadPoolExecutor(max_workers=CLIENT_THREADS) as pool:
        results = list(pool.map(_anonymous_get, [url] * ANONYMOUS_REQUESTS))
    # Proof that several processes shared the work, so the count was exact across processes and
    # not merely across the threads of one (every response and access-log line is a write).
    busy = [pid for pid in workers if _bytes_written(pid) > written_before[pid]]
    assert len(busy) >= 2, f"only workers {busy} of {workers} served the burst"

    statuses = Counter(status for status, _ in results)
    assert statuses == {200: LIMIT, 403: ANONYMOUS_REQUESTS - LIMIT}, statuses
    expected = hashlib.sha256(CONTENT).hexdigest()
    assert {digest for status, digest in results if status == 200} == {expected}
    assert stack.info(item["id"])["times_downloaded"] == LIMIT

    # Past the limit the owner still downloads, and that download still counts.
    with http_session() as http:
        owner = http.get(url, auth=stack.owner, timeout=30)
        refused = http.get(url, timeout=30)
    assert owner.status_code == 200 and owner.content == CONTENT
    assert refused.status_code == 403
    assert refused.headers["Content-Type"].startswith("application/problem+json")
    assert stack.info(item["id"])["times_downloaded"] == LIMIT + 1


def test_head_304_416_and_later_ranges_do_not_count(stack: Stack) -> None:
    """Only a 200 GET or a 206 GET from byte 0 counts; HEAD, 304, 416 and mid-file ranges don't."""
    item = stack.create(public="true")
    url = stack.content_url(item["id"])
    etag = f'"{item["etag"]}"'
    size = len(CONTENT)

    with http_session() as http:
        head = http.head(url, timeout=15)
        assert head.status_code == 200 and head.content == b""
        assert head.headers["Content-Length"] == str(size)
        last_modified = head.headers["Last-Modified"]

        for headers in ({"If-None-Match": etag}, {"If-Modified-Since": last_modified}):
            not_modified = http.get(url, headers=headers, timeout=15)
            assert not_modified.status_code == 304, headers
            assert not_modified.content == b"" and not_modified.headers["ETag"] == etag

        unsatisfiable = http.get(url, headers={"Range": f"bytes={size}-"}, timeout=15)
        assert unsatisfiable.status_code == 416
        assert unsatisfiable.headers["Content-Range"] == f"bytes */{size}"

        middle = http.get(url, headers={"Range": "bytes=100-199"}, timeout=15)
        assert middle.status_code == 206 and middle.content == CONTENT[100:200]
        # Range is defined for GET only (RFC 9110 §14.2): a HEAD ignores it, and never counts.
        assert http.head(url, headers={"Range": "bytes=0-"}, timeout=15).status_code == 200

    assert stack.info(item["id"])["times_downloaded"] == 0

    with http_session() as http:
        assert http.get(url, timeout=15).status_code == 200
    assert stack.info(item["id"])["times_downloaded"] == 1


def test_interrupted_download_resumed_with_a_range_counts_once(stack: Stack) -> None:
    """bytes=0- cut short, then bytes=N- for the rest: all bytes arrive, one download counted."""
    content = payload(3 * 1024 * 1024 + 11, seed=4)  # several 1 MiB chunks: the cut is real
    item = stack.create(content, public="true")
    url = stack.content_url(item["id"])

    received = bytearray()
    with http_session() as http:
        with http.get(url, headers={"Range": "bytes=0-"}, stream=True, timeout=30) as first:
            assert first.status_code == 206
            assert first.headers["Content-Range"] == f"bytes 0-{len(content) - 1}/{len(content)}"
            for chunk in first.iter_content(64 * 1024):
                received += chunk
                if len(received) >= 1024 * 1024:
                    break  # the connection drops mid-body
        # The client resumes where it stopped, guarding against a changed file with If-Range.
        rest = http.get(
            url,
            headers={"Range": f"bytes={len(received)}-", "If-Range": f'"{item["etag"]}"'},
            timeout=30,
        )
    assert rest.status_code == 206
    received += rest.content
    assert bytes(received) == content
    assert stack.info(item["id"])["times_downloaded"] == 1


def test_private_item_is_not_served_or_counted_for_anonymous_clients(stack: Stack) -> None:
    """A private item answers 401 to anonymous clients, even with a matching If-None-Match."""
    item = stack.create(max_downloads_allowed="3")
    url = stack.content_url(item["id"])
    with http_session() as http:
        plain = http.get(url, timeout=15)
        conditional = http.get(url, headers={"If-None-Match": f'"{item["etag"]}"'}, timeout=15)
    assert plain.status_code == 401 and conditional.status_code == 401
    assert "ETag" not in conditional.headers
    assert stack.info(item["id"])["times_downloaded"] == 0


@pytest.mark.mongo
@pytest.mark.minio
def test_two_servers_count_one_item_exactly_between_them(
    live_server: StartServer, request: pytest.FixtureRequest
) -> None:
    """Two gunicorn instances (two ports, one database, one bucket) share the limit exactly.

    Nothing but the database holds the count, so what holds across these two masters holds
    across hosts: the anonymous GETs alternate between them and still total exactly the limit.
    """
    if real_mongo_is_ferretdb():
        # As in the test above: FerretDB 1.x's updates are a read and a later write.
        request.applymarker(pytest.mark.xfail(reason="FerretDB updates are not atomic"))
    with ExitStack() as cleanup:
        env = pair_env("mongodb+s3", cleanup)
        first = live_server(workers=2, env=env)
        second = live_server(workers=2, env=env)
        owner = create_account(first)
        item = Stack(first, owner).create(public="true", max_downloads_allowed=str(LIMIT))
        urls = [
            f"{server.url}/v3/media/{item['id']}"
            for _ in range(ANONYMOUS_REQUESTS // 2)
            for server in (first, second)
        ]
        with ThreadPoolExecutor(max_workers=CLIENT_THREADS) as pool:
            results = list(pool.map(_anonymous_get, urls))
        by_server = Counter(
            (url.rsplit("/v3/", 1)[0], status)
            for url, (status, _) in zip(urls, results, strict=True)
        )
        statuses = Counter(status for status, _ in results)
        assert statuses == {200: LIMIT, 403: ANONYMOUS_REQUESTS - LIMIT}, statuses
        # Both instances served some of the limited downloads (else this proves nothing).
        assert by_server[(first.url, 200)] > 0 and by_server[(second.url, 200)] > 0, by_server
        assert Stack(second, owner).info(item["id"])["times_downloaded"] == LIMIT
        first.stop()  # before the database and bucket go
        second.stop()
