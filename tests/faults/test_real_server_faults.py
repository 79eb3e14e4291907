"""Faults with the real servers: MinIO and FerretDB stopped and restarted under a running service.

Each test starts private FerretDB and MinIO servers (the binaries `make backends` built) on free
loopback ports, so it may kill and restart them without disturbing other tests, and a one-worker
gunicorn on them with MEDIA_BACKEND_TIMEOUT=1. What is proved (SPEC §3, §4.1, §4.4, §4.7):
* MinIO gone mid-upload: the upload fails 503, and once MinIO is back the running service serves
  again, and one `media-service sweep` leaves no item, no object and no open multipart upload;
* MinIO gone mid-download: the client sees a cut transfer, never a short "success"; later GETs
  are 503 until MinIO is back, then the whole, right bytes;
* FerretDB (and then both) gone: every endpoint is 503 within the timeout plus one second and
  /readyz says so while /healthz stays 200; restarted, the same service process recovers;
* a worker SIGKILLed mid-upload to S3, then a sweep: no visible item, no orphan object, no open
  multipart upload.
In the two upload tests the account's quota usage (issue #13) counts the upload while it streams
and, after the sweep, equals exactly what is stored.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from media_service.auth import generate_secret, hash_secret
from media_service.backends import open_backends
from media_service.settings import Settings
from media_service.storage.interfaces import Account, Backends
from realservers import FerretDB, Minio, pins, start_ferretdb, start_minio
from realservers.gunicorn_server import GunicornServer
from tests.faults.conftest import (
    FILE_PART_TAIL,
    LOOPBACK,
    MULTIPART_TYPE,
    all_items,
    assert_consistent,
    blob_keys,
    file_part_head,
    kill_worker,
    multipart_body,
    open_multipart_uploads,
    run_sweep,
    server_env,
    visible_items,
    wait_for,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.mongo,
    pytest.mark.minio,
    pytest.mark.timeout(300),
]

MIB = 1024 * 1024
BACKEND_TIMEOUT = 1.0
BOUND = BACKEND_TIMEOUT + 1.0  # the promise for a database that is gone
# S3 calls retry 3 times with a 1 s connect/read timeout each (s3.py), plus back-off.
S3_BOUND = 3 * (1.0 + BACKEND_TIMEOUT) + 1.0
API_KEY = "faultacct"
BUCKET = "media-faults"


@dataclass
class World:
    """Private servers, a service on them, and the same backends opened in this process."""

    ferret: FerretDB
    minio: Minio
    env: dict[str, str]
    backends: Backends
    auth: dict[str, str]
    gunicorn: Callable[..., GunicornServer]

    def serve(self) -> GunicornServer:
        return self.gunicorn(self.env)

    def sweep(self) -> dict[str, int]:
        """`media-service sweep` with no grace and no stale bound, as an operator may run it."""
        return run_sweep(self.env, "--grace-seconds", "0", "--stale-seconds", "0")


@pytest.fixture
def world(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gunicorn: Callable[..., GunicornServer]
) -> Iterator[World]:
    for binary in (pins.minio_binary(), pins.ferretdb_binary()):
        if not binary.is_file():
            pytest.skip(f"{binary} is missing: run `make backends`")
    with contextlib.ExitStack() as stack:
        ferret = start_ferretdb(tmp_path / "ferretdb")
        stack.callback(ferret.stop)
        minio = start_minio(tmp_path / "minio")
        stack.callback(minio.stop)
        s3_env = {**minio.s3.credentials_env(), "AWS_ENDPOINT_URL_S3": minio.s3.endpoint}
        env = server_env(
            tmp_path / "service",
            MEDIA_DATABASE_URL=ferret.url("media"),
            MEDIA_STORAGE_URL=f"s3://{BUCKET}/items",
            MEDIA_BACKEND_TIMEOUT=str(BACKEND_TIMEOUT),
            MEDIA_MAX_UPLOAD_BYTES=str(128 * MIB),
            **s3_env,
        )
        for name, value in s3_env.items():
            monkeypatch.setenv(name, value)  # the in-process backends' boto3 client
        backends = open_backends(Settings.from_env(env))
        stack.callback(backends.close)
        backends.blobs.client.create_bucket(Bucket=BUCKET)  # type: ignore[attr-defined]
        secret = generate_secret()
        salt, digest = hash_secret(secret)
        backends.credentials.add_account(Account(API_KEY, salt, digest))
        token = base64.b64encode(f"{API_KEY}:{secret}".encode()).decode()
        yield World(ferret, minio, env, backends, {"Authorization": f"Basic {token}"}, gunicorn)


def upload_small(server: GunicornServer, auth: dict[str, str], content: bytes) -> tuple[int, Any]:
    status, _, body = server.request(
        "POST",
        "/v3/media",
        body=multipart_body(content),
        headers={**auth, "Content-Type": MULTIPART_TYPE},
        timeout=60,
    )
    return status, json.loads(body) if body else None


class RawUpload:
    """A multipart upload on a raw socket, sent in steps; the answer read on demand."""

    def __init__(self, server: GunicornServer, auth: dict[str, str], size: int) -> None:
        self.size = size
        head = file_part_head("big.bin")
        request = (
            f"POST /v3/media HTTP/1.1\r\nHost: {LOOPBACK}:{server.port}\r\n"
            f"Authorization: {auth['Authorization']}\r\nContent-Type: {MULTIPART_TYPE}\r\n"
            f"Content-Length: {len(head) + size + len(FILE_PART_TAIL)}\r\n\r\n"
        ).encode()
        self.sock = socket.create_connection((LOOPBACK, server.port), timeout=60)
        self.sock.sendall(request + head)
        self.sent = 0
        self._chunk = os.urandom(MIB)

    def send(self, amount: int) -> None:
        while amount > 0 and self.sent < self.size:
            step = min(MIB, amount, self.size - self.sent)
            self.sock.sendall(self._chunk[:step])
            self.sent += step
            amount -= step

    def finish_in_background(self) -> threading.Thread:
        """Send the rest (and the closing boundary) from a thread; a reset only ends it."""

        def rest() -> None:
            with contextlib.suppress(OSError):
                self.send(self.size)
                self.sock.sendall(FILE_PART_TAIL)

        thread = threading.Thread(target=rest, daemon=True)
        thread.start()
        return thread

    def status(self) -> int:
        """The status code of the answer (the head is enough)."""
        received = b""
        while b"\r\n" not in received:
            data = self.sock.recv(4096)
            if not data:
                raise AssertionError(f"connection closed without an answer: {received!r}")
            received += data
        return int(received.split(b" ", 2)[1])

    def close(self) -> None:
        self.sock.close()


def quota_matches_what_is_stored(backends: Backends) -> bool:
    quota = backends.media.quota(API_KEY)
    items = [item for item in visible_items(backends) if item.account_id == API_KEY]
    return (quota.bytes, quota.items) == (sum(item.media_size for item in items), len(items))


def test_minio_stopped_mid_upload(world: World) -> None:
    """The upload fails 503; MinIO back, the same service uploads again; a sweep leaves nothing."""
    world.backends.media.set_quota(API_KEY, 100 * MIB, None)
    server = world.serve()
    upload = RawUpload(server, world.auth, 48 * MIB)
    try:
        upload.send(20 * MIB)
        # Parts of 8 MiB are on their way: the multipart upload is open on the server.
        wait_for(lambda: open_multipart_uploads(world.backends) != [], "a multipart upload")
        assert world.backends.media.quota(API_KEY).bytes >= 8 * MIB  # counted while in flight
        world.minio.kill()
        sender = upload.finish_in_background()
        started = time.monotonic()
        assert upload.status() == 503
        assert time.monotonic() - started < S3_BOUND + 5
        sender.join(timeout=30)
    finally:
        upload.close()

    world.minio.restart()
    status, created = upload_small(server, world.auth, b"after MinIO came back")
    assert status == 201, created
    assert visible_items(world.backends) != []
    report = world.sweep()
    assert report["errors"] == 0, report
    assert open_multipart_uploads(world.backends) == []
    assert [item.id for item in all_items(world.backends)] == [created["id"]]
    assert blob_keys(world.backends) == {created["id"]}
    assert quota_matches_what_is_stored(world.backends)
    assert_consistent(world.backends)
    assert quota_matches_what_is_stored(world.backends)


def test_minio_stopped_mid_download(world: World) -> None:
    """A transfer cut by MinIO's death is cut for the client too; MinIO back, bytes are whole."""
    server = world.serve()
    content = os.urandom(64 * MIB)
    status, _, body = server.request(
        "POST",
        "/v3/media",
        body=multipart_body(content),
        headers={**world.auth, "Content-Type": MULTIPART_TYPE},
        timeout=120,
    )
    assert status == 201, body
    url = f"http://{LOOPBACK}:{server.port}/v3/media/{json.loads(body)['id']}"
    http = requests.Session()
    http.trust_env = False
    received = 0
    with http.get(url, headers=world.auth, stream=True, timeout=30) as response:
        assert response.status_code == 200
        chunks = response.iter_content(MIB)
        received += len(next(chunks))
        world.minio.kill()
        with pytest.raises(requests.exceptions.RequestException):
            for chunk in chunks:
                received += len(chunk)
    assert received < len(content)

    started = time.monotonic()
    while_down = http.get(url, headers=world.auth, timeout=30)
    assert while_down.status_code == 503, while_down.text
    assert while_down.headers["Content-Type"].startswith("application/problem+json")
    assert time.monotonic() - started < S3_BOUND

    world.minio.restart()
    again = http.get(url, headers=world.auth, timeout=60)
    assert again.status_code == 200
    assert hashlib.sha256(again.content).digest() == hashlib.sha256(content).digest()


def probes(item_id: str) -> list[tuple[str, str, bytes | None, dict[str, str]]]:
    return [
        ("GET", "/v3/media?start_time=1970-01-01T00:00:00Z", None, {}),
        ("GET", f"/v3/media/{item_id}/info", None, {}),
        ("GET", f"/v3/media/{item_id}", None, {}),
        (
            "PUT",
            f"/v3/media/{item_id}/info",
            b'{"title": "t"}',
            {"Content-Type": "application/json"},
        ),
        ("DELETE", f"/v3/media/{item_id}", None, {}),
        ("POST", "/v3/media", multipart_body(b"x"), {"Content-Type": MULTIPART_TYPE}),
    ]


def assert_all_unavailable(server: GunicornServer, auth: dict[str, str], item_id: str) -> None:
    for method, path, body, headers in probes(item_id):
        started = time.monotonic()
        status, answer_headers, answer = server.request(
            method, path, body=body, headers={**auth, **headers}, timeout=30
        )
        elapsed = time.monotonic() - started
        assert status == 503, (method, path, status, answer[:300])
        assert answer_headers["content-type"] == "application/problem+json"
        assert elapsed < BOUND, f"{method} {path} took {elapsed:.2f} s"
    ready, _, body = server.request("GET", "/readyz", timeout=30)
    assert ready == 503, body
    assert "database" in json.loads(body)["detail"]
    assert server.request("GET", "/healthz", timeout=5)[0] == 200


def wait_recovered(server: GunicornServer, auth: dict[str, str], item_id: str) -> None:
    def info_answers() -> bool:
        status = server.request("GET", f"/v3/media/{item_id}/info", headers=auth, timeout=10)[0]
        return status == 200

    wait_for(info_answers, "the service to see the database again", timeout=30)
    assert server.request("GET", "/readyz", timeout=10)[0] == 200
    status, created = upload_small(server, auth, b"after the restart")
    assert status == 201, created
    assert server.request("DELETE", f"/v3/media/{created['id']}", headers=auth)[0] == 204


def test_ferretdb_stopped_then_both_servers_restarted(world: World) -> None:
    """Database gone: 503 everywhere within the bound; back: the same process recovers. Then
    both servers at once."""
    server = world.serve()
    status, item = upload_small(server, world.auth, b"kept through the outage")
    assert status == 201, item
    [worker] = server.worker_pids()

    world.ferret.kill()
    assert_all_unavailable(server, world.auth, item["id"])
    world.ferret.restart()
    wait_recovered(server, world.auth, item["id"])

    world.ferret.kill()
    world.minio.kill()
    assert_all_unavailable(server, world.auth, item["id"])
    world.ferret.restart()
    world.minio.restart()
    wait_recovered(server, world.auth, item["id"])
    got = server.request("GET", f"/v3/media/{item['id']}", headers=world.auth)
    assert got[0] == 200 and got[2] == b"kept through the outage"
    assert server.worker_pids() == [worker]  # recovered in place, not by a restart
    assert_consistent(world.backends)


def test_worker_killed_mid_upload_to_s3_leaves_nothing_after_a_sweep(world: World) -> None:
    """SIGKILL the worker while parts stream to MinIO: invisible at once, gone after a sweep."""
    world.backends.media.set_quota(API_KEY, 100 * MIB, None)
    server = world.serve()
    [worker] = server.worker_pids()
    upload = RawUpload(server, world.auth, 48 * MIB)
    try:
        upload.send(20 * MIB)
        wait_for(lambda: open_multipart_uploads(world.backends) != [], "a multipart upload")
        [pending] = all_items(world.backends)
        assert world.backends.media.quota(API_KEY).bytes >= 8 * MIB  # counted while in flight
        kill_worker(server, worker)
    finally:
        upload.close()
    server.wait_healthy()

    status, _, body = server.request(
        "GET", "/v3/media?start_time=1970-01-01T00:00:00Z", headers=world.auth
    )
    assert status == 200 and json.loads(body)["count"] == 0
    assert server.request("GET", f"/v3/media/{pending.id}/info", headers=world.auth)[0] == 404
    assert open_multipart_uploads(world.backends) != []  # what the killed worker left open

    report = world.sweep()
    assert report["pending_rolled_back"] == 1 and report["errors"] == 0, report
    assert all_items(world.backends) == []
    assert blob_keys(world.backends) == set()
    assert open_multipart_uploads(world.backends) == []
    assert world.backends.media.quota(API_KEY).items == 0
    assert quota_matches_what_is_stored(world.backends)
    assert_consistent(world.backends)
