"""Quota usage stays exact through failures (issue #13): the blob store going down in the middle
of an upload, and a worker killed with SIGKILL mid-upload followed by a sweep.

Each test checks the account's usage against what is actually stored, before and after. The S3
adapter as deployed, down mid-upload, is in test_upload_faults.py (beside its fixture).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from media_service.auth import generate_secret, hash_secret
from media_service.backends import open_backends
from media_service.settings import Settings
from media_service.storage.interfaces import Account, Backends, BackendUnavailable, ItemState
from realservers.gunicorn_server import GunicornServer
from tests.conftest import Credentials
from tests.faults.conftest import (
    all_items,
    assert_consistent,
    kill_worker,
    multipart_body,
    run_sweep,
    server_env,
    temp_files,
    visible_items,
    wait_for,
)
from tests.faults.test_sigkill_midupload import start_upload
from tests.faults.test_upload_faults import MULTIPART_TYPE
from tests.problems import assert_problem

MIB = 1024 * 1024
API_KEY = "quotakill"


def usage(backends: Backends, api_key: str) -> tuple[int, int]:
    quota = backends.media.quota(api_key)
    return quota.bytes, quota.items


def stored(backends: Backends, api_key: str) -> tuple[int, int]:
    """Bytes and number of the account's READY items."""
    items = [item for item in visible_items(backends) if item.account_id == api_key]
    return sum(item.media_size for item in items), len(items)


def post(client: FlaskClient, owner: Credentials, content: bytes) -> Any:
    return client.post(
        "/v3/media",
        data=multipart_body(content),
        headers={**owner.basic, "Content-Type": MULTIPART_TYPE},
    )


def test_blob_store_failing_mid_upload_gives_the_reservation_back(
    app: Any,
    client: FlaskClient,
    backends: Backends,
    owner: Credentials,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every backend pair: the store takes 3 MiB of a 6 MiB upload, then fails (503)."""
    backends.media.set_quota(owner.api_key, 8 * MIB, None)
    assert post(client, owner, b"k" * MIB).status_code == 201
    put = backends.blobs.put

    def failing_put(key: str, source: Any) -> Any:
        for _ in range(3):
            source.read(MIB)
        raise BackendUnavailable("blob store", "injected: down mid-upload")

    monkeypatch.setattr(backends.blobs, "put", failing_put)
    reserved: list[tuple[int, int]] = []
    original_read = backends.media.reserve_bytes

    def watched(account_id: str, item_id: str, size: int) -> Any:
        outcome = original_read(account_id, item_id, size)
        reserved.append(usage(backends, owner.api_key))
        return outcome

    monkeypatch.setattr(backends.media, "reserve_bytes", watched)
    assert_problem(post(client, owner, os.urandom(6 * MIB)), 503)
    assert max(reserved) == (4 * MIB, 2)  # the upload was counted while it streamed
    assert usage(backends, owner.api_key) == (MIB, 1) == stored(backends, owner.api_key)

    monkeypatch.setattr(backends.blobs, "put", put)
    assert post(client, owner, b"n" * (7 * MIB)).status_code == 201  # the room is all there
    assert usage(backends, owner.api_key) == (8 * MIB, 2) == stored(backends, owner.api_key)
    assert_consistent(backends)
    assert usage(backends, owner.api_key) == (8 * MIB, 2)


@pytest.fixture
def killable(tmp_path: Path) -> Iterator[tuple[dict[str, str], Backends, dict[str, str]]]:
    """The embedded default under tmp_path with a 40 MiB quota on an account: (server env,
    backends opened in-process, Basic auth headers of the account)."""
    env = server_env(tmp_path / "data", MEDIA_MAX_UPLOAD_BYTES=str(64 * MIB))
    backends = open_backends(Settings.from_env(env))
    secret = generate_secret()
    salt, digest = hash_secret(secret)
    backends.credentials.add_account(Account(API_KEY, salt, digest))
    backends.media.set_quota(API_KEY, 40 * MIB, None)
    token = base64.b64encode(f"{API_KEY}:{secret}".encode()).decode()
    yield env, backends, {"Authorization": f"Basic {token}"}
    backends.close()


def test_worker_killed_mid_upload_then_swept_gives_the_reservation_back(
    killable: tuple[dict[str, str], Backends, dict[str, str]],
    gunicorn: Callable[..., GunicornServer],
) -> None:
    env, backends, auth = killable
    server = gunicorn(env)
    [worker] = server.worker_pids()
    sock = start_upload(server, auth)  # 30 MiB announced, 8 MiB sent
    try:
        wait_for(
            lambda: any(f.stat().st_size >= 4 * MIB for f in temp_files(backends)),
            "the upload's temp file to grow",
        )
        held, items = usage(backends, API_KEY)
        assert held >= 4 * MIB and items == 1  # counted while in flight
        kill_worker(server, worker, replaced=False)
    finally:
        sock.close()
    server.wait_healthy()
    [pending] = all_items(backends)
    assert pending.state is ItemState.PENDING
    assert usage(backends, API_KEY)[0] >= 4 * MIB  # nothing ran in the killed process

    report = run_sweep(env, "--stale-seconds", "0")
    assert report["pending_rolled_back"] == 1 and report["errors"] == 0
    assert usage(backends, API_KEY) == (0, 0)
    run_sweep(env, "--stale-seconds", "0")
    assert usage(backends, API_KEY) == (0, 0)  # released once, however often swept
    assert_consistent(backends)
