"""A gunicorn worker killed with SIGKILL in the middle of a large upload (SPEC §4.1, §4.7).

No `finally` runs in a killed process: what the upload had written stays where it was. The
master starts a new worker, the half-made item must be invisible, and `media-service sweep`
must leave no document, no blob and no temp file behind.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from media_service.auth import generate_secret, hash_secret
from media_service.backends import open_backends
from media_service.settings import Settings
from media_service.storage.interfaces import Account, Backends, ItemState
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
    run_sweep,
    server_env,
    temp_files,
    wait_for,
)

pytestmark = pytest.mark.integration

MIB = 1024 * 1024
FILE_SIZE = 30 * MIB
SENT_BEFORE_KILL = 8 * MIB  # then the client pauses, as a slow uplink would
API_KEY = "killtest"


@pytest.fixture
def store(tmp_path: Path) -> Iterator[tuple[dict[str, str], Backends, dict[str, str]]]:
    """The embedded default under tmp_path: (server env, backends opened in-process, Basic
    auth headers of an account created in it)."""
    env = server_env(tmp_path / "data", MEDIA_MAX_UPLOAD_BYTES=str(64 * MIB))
    backends = open_backends(Settings.from_env(env))
    secret = generate_secret()
    salt, digest = hash_secret(secret)
    backends.credentials.add_account(Account(API_KEY, salt, digest))
    token = base64.b64encode(f"{API_KEY}:{secret}".encode()).decode()
    yield env, backends, {"Authorization": f"Basic {token}"}
    backends.close()


def start_upload(server: GunicornServer, auth: dict[str, str]) -> socket.socket:
    """Open a raw connection, announce a 30 MiB upload and send its first 8 MiB."""
    head = file_part_head("big.bin")
    length = len(head) + FILE_SIZE + len(FILE_PART_TAIL)
    request = (
        f"POST /v3/media HTTP/1.1\r\n"
        f"Host: {LOOPBACK}:{server.port}\r\n"
        f"Authorization: {auth['Authorization']}\r\n"
        f"Content-Type: {MULTIPART_TYPE}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()
    sock = socket.create_connection((LOOPBACK, server.port), timeout=10)
    sock.sendall(request + head)
    chunk = os.urandom(MIB)
    for _ in range(SENT_BEFORE_KILL // MIB):
        sock.sendall(chunk)
        time.sleep(0.02)
    return sock


def test_worker_killed_mid_upload_leaves_nothing_after_a_sweep(
    store: tuple[dict[str, str], Backends, dict[str, str]],
    gunicorn: Callable[..., GunicornServer],
) -> None:
    """SIGKILL the worker while it streams a 30 MiB upload to disk: the master replaces it, the
    half-made item is invisible, and one sweep later nothing of it remains."""
    env, backends, auth = store
    server = gunicorn(env)
    [worker] = server.worker_pids()

    sock = start_upload(server, auth)
    try:
        wait_for(
            lambda: any(f.stat().st_size >= 4 * MIB for f in temp_files(backends)),
            "the upload's temp file to grow",
        )
        [pending] = all_items(backends)
        assert pending.state is ItemState.PENDING

        kill_worker(server, worker)
    finally:
        sock.close()
    server.wait_healthy()

    # Before the sweep: the leftovers are there, and none of them is visible.
    status, _, body = server.request(
        "GET", "/v3/media?start_time=1970-01-01T00:00:00Z", headers=auth
    )
    assert status == 200 and json.loads(body)["count"] == 0
    status, headers, _ = server.request("GET", f"/v3/media/{pending.id}/info", headers=auth)
    assert status == 404 and headers["content-type"] == "application/problem+json"
    assert server.request("GET", f"/v3/media/{pending.id}", headers=auth)[0] == 404
    assert blob_keys(backends) == set()  # the bytes never left the temp file
    assert temp_files(backends) != []

    # The upload started seconds ago, far less than the grace: its stale heartbeat alone marks it
    # dead, and its PENDING document and temp file go in the same pass.
    report = run_sweep(env, "--stale-seconds", "0")
    assert report["pending_rolled_back"] == 1 and report["errors"] == 0
    assert all_items(backends) == []
    assert blob_keys(backends) == set()
    assert temp_files(backends) == []
    assert_consistent(backends)

    # The new worker serves uploads as before.
    content = b"after the crash"
    upload = file_part_head("small.bin") + content + FILE_PART_TAIL
    status, _, body = server.request(
        "POST", "/v3/media", body=upload, headers={**auth, "Content-Type": MULTIPART_TYPE}
    )
    assert status == 201, body
    assert_consistent(backends)
