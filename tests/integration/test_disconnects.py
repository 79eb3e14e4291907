"""Clients that vanish mid-download release what the server opened for them (SPEC §4.4).

The issue's test: "20 aborted downloads followed by 20 complete ones succeed with a small
max_pool_connections". One gunicorn worker with four threads serves an 8 MiB item; twenty raw
clients read the headers and a few KiB, then reset the connection. Afterwards the worker must hold
no more backend resources than it did before — at most `max_pool_connections` sockets to S3, no
open blob files — and twenty complete downloads must all arrive intact within a bounded time.
Run against S3 over real HTTP (moto server, MEDIA_S3_MAX_POOL_CONNECTIONS=2) and against the
file store (sendfile), reading the worker's descriptors from /proc.

Why count sockets rather than wait for a hang: botocore's urllib3 pool does not block when it
is exhausted (it opens an extra connection and discards it afterwards), so leaked GetObject
bodies show up as sockets to S3 that the worker keeps open, not as stalled downloads. Keeping
each aborted stream referenced and unclosed makes the S3 test fail with 20 such sockets.
"""

from __future__ import annotations

import hashlib
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from realservers.gunicorn_server import GunicornServer
from tests.integration.conftest import (
    LOOPBACK,
    S3Endpoint,
    StartServer,
    create_account,
    http_session,
    payload,
    upload,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs Linux /proc"),
]

MiB = 1024 * 1024
CONTENT = payload(8 * MiB + 5, seed=7)
CONTENT_SHA256 = hashlib.sha256(CONTENT).hexdigest()
ABORTED = 20
COMPLETE = 20
THREADS = 4
POOL = 2
SETTLE_SECONDS = 10.0
COMPLETE_BUDGET_SECONDS = 60.0


def _open_fds(pid: int) -> dict[int, str]:
    """fd -> what it points at ('socket:[inode]', a path, ...) for one process."""
    fds: dict[int, str] = {}
    for entry in Path(f"/proc/{pid}/fd").iterdir():
        try:
            fds[int(entry.name)] = str(entry.readlink())
        except OSError:  # closed between listing and reading
            continue
    return fds


def _sockets_to(pid: int, port: int) -> int:
    """How many of the process's own sockets are TCP connections to 127.0.0.1:`port`."""
    inodes = {
        target[len("socket:[") : -1]
        for target in _open_fds(pid).values()
        if target.startswith("socket:[")
    }
    count = 0
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            fields = line.split()
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if remote_port == port and fields[9] in inodes:
                count += 1
    return count


def _settles(condition: Callable[[], bool], timeout: float = SETTLE_SECONDS) -> bool:
    """Poll `condition` until it holds or `timeout` passes (the worker cleans up asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        if condition():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def _abort_download(server: GunicornServer, path: str, read_at_least: int = 16 * 1024) -> None:
    """Request `path`, read the headers and some of the body, then reset the connection."""
    sock = socket.create_connection((LOOPBACK, server.port), timeout=10)
    try:
        request = f"GET {path} HTTP/1.1\r\nHost: {LOOPBACK}:{server.port}\r\n\r\n"
        sock.sendall(request.encode("ascii"))
        received = b""
        while True:
            head, separator, body = received.partition(b"\r\n\r\n")
            if separator and len(body) >= read_at_least:
                break
            chunk = sock.recv(64 * 1024)
            assert chunk, f"the server closed the connection early: {received[:200]!r}"
            received += chunk
        assert head.startswith(b"HTTP/1.1 200"), head[:200]
        # Linger 0: close() sends RST, like a client that crashed or lost its network.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        sock.close()


def _complete_download(url: str) -> tuple[int, str]:
    with http_session() as http:
        response = http.get(url, timeout=(5, 30))
        return response.status_code, hashlib.sha256(response.content).hexdigest()


def _serve_one_item(server: GunicornServer) -> str:
    """Upload CONTENT as a public item (so raw anonymous requests may fetch it); return its path."""
    with http_session() as http:
        created = upload(http, server, CONTENT, auth=create_account(server), public="true")
    assert created.status_code == 201, created.text
    return f"/v3/media/{created.json()['id']}"


def _abort_all(server: GunicornServer, path: str) -> None:
    """ABORTED resets, one after another (more at once would just queue behind four threads)."""
    for _ in range(ABORTED):
        _abort_download(server, path)


def _complete_all(server: GunicornServer, path: str) -> None:
    """COMPLETE full downloads, THREADS at a time: every one 200 with the exact bytes, in time."""
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        results = list(pool.map(_complete_download, [server.url + path] * COMPLETE))
    elapsed = time.monotonic() - started
    assert Counter(results) == {(200, CONTENT_SHA256): COMPLETE}, Counter(s for s, _ in results)
    assert elapsed < COMPLETE_BUDGET_SECONDS, f"{COMPLETE} downloads took {elapsed:.1f} s"


def test_aborted_s3_downloads_release_their_pooled_connections(
    live_server: StartServer, moto_server: S3Endpoint
) -> None:
    """After 20 resets the worker holds <= max_pool_connections sockets to S3; 20 GETs then pass."""
    server = live_server(
        workers=1,
        threads=THREADS,
        env={**moto_server.storage_env(), "MEDIA_S3_MAX_POOL_CONNECTIONS": str(POOL)},
    )
    (worker,) = server.wait_for_workers(1)
    s3_port = int(moto_server.url.rsplit(":", 1)[1])
    path = _serve_one_item(server)

    _abort_all(server, path)
    assert _settles(lambda: _sockets_to(worker, s3_port) <= POOL), (
        f"the worker still holds {_sockets_to(worker, s3_port)} connections to S3 "
        f"after {ABORTED} aborted downloads (pool size {POOL})"
    )

    _complete_all(server, path)
    assert _settles(lambda: _sockets_to(worker, s3_port) <= POOL)
    assert server.worker_pids() == [worker], "the worker must not have been replaced"
    with http_session() as http:
        assert http.get(f"{server.url}/readyz", timeout=10).status_code == 200


def test_aborted_file_downloads_close_their_files(live_server: StartServer) -> None:
    """After 20 resets the worker has no blob file open and no extra descriptors; 20 GETs pass."""
    server = live_server(workers=1, threads=THREADS)
    (worker,) = server.wait_for_workers(1)
    path = _serve_one_item(server)
    blobs = str(server.data_dir / "blobs")
    database = str(server.data_dir / "media.db")

    def blob_fds() -> int:
        return sum(target.startswith(blobs) for target in _open_fds(worker).values())

    def other_fds() -> int:
        # SQLite opens its files once per thread that first touches the database, so they vary
        # with which threads happened to serve; everything else must come back to the baseline.
        return sum(
            not target.startswith((blobs, database)) for target in _open_fds(worker).values()
        )

    # Warm up every request thread once, then take the baseline.
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        warm_up = list(pool.map(_complete_download, [server.url + path] * 2 * THREADS))
    assert {status for status, _ in warm_up} == {200}
    assert _settles(lambda: blob_fds() == 0)
    baseline = other_fds()

    _abort_all(server, path)
    assert _settles(lambda: blob_fds() == 0), f"{blob_fds()} blob files still open"
    assert _settles(lambda: other_fds() <= baseline + 2), (
        f"descriptors: {other_fds()} now, {baseline} before {ABORTED} aborted downloads"
    )

    _complete_all(server, path)
    assert _settles(lambda: blob_fds() == 0)
    assert _settles(lambda: other_fds() <= baseline + 2)
    assert server.worker_pids() == [worker], "the worker must not have been replaced"
