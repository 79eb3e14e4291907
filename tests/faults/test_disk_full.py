"""A full disk (embedded default: SQLite + files): uploads stop at the free-space reserve with
507, while deletes, downloads, /readyz and /metrics keep working.

Most tests simulate a small volume: the DiskGuard's free-space function reports a capacity minus
what the data directory holds, so the numbers move as uploads write. The SQLite side injects
SQLITE_FULL. The last test fills a real 30 MiB tmpfs (root only; skipped otherwise).
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import re
import sqlite3
import subprocess
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from media_service.auth import generate_secret, hash_secret
from media_service.backends import open_backends
from media_service.context import EXTENSION_KEY
from media_service.factory import create_app
from media_service.observability.metrics import observe_disk_free
from media_service.service.disk import DiskGuard
from media_service.settings import Settings, local_volumes
from media_service.storage.disk import SpareFile
from media_service.storage.interfaces import Account, Backends
from media_service.storage.sqlite import SqliteDatabase
from tests.conftest import make_settings
from tests.faults.conftest import (
    MULTIPART_TYPE,
    all_items,
    blob_keys,
    multipart_body,
    temp_files,
)

MIB = 1024 * 1024
RESERVE = 4 * MIB
SPARE = 1 * MIB


def used_bytes(root: Path) -> int:
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(folder, name)).st_size
    return total


class SmallVolume:
    """A free-space function for a volume of `capacity` bytes holding what `root` holds."""

    def __init__(self, root: Path, capacity: int) -> None:
        self.root = root
        self.capacity = capacity

    def __call__(self, path: Path) -> int:
        return max(0, self.capacity - used_bytes(self.root))

    def leave_free(self, free: int) -> None:
        self.capacity = used_bytes(self.root) + free


class World:
    def __init__(self, tmp_path: Path, **overrides: Any) -> None:
        self.settings = make_settings(
            tmp_path,
            max_upload_bytes=64 * MIB,
            min_free_bytes=RESERVE,
            sqlite_spare_bytes=SPARE,
            **overrides,
        )
        self.backends = open_backends(self.settings)
        secret = generate_secret()
        salt, digest = hash_secret(secret)
        self.backends.credentials.add_account(Account("diskfull", salt, digest))
        token = base64.b64encode(f"diskfull:{secret}".encode()).decode()
        self.auth = {"Authorization": f"Basic {token}"}
        self.volume = SmallVolume(tmp_path, used_bytes(tmp_path) + 64 * MIB)
        self.app: Flask = create_app(self.settings, backends=self.backends)
        self.app.config["TESTING"] = True
        self.guard = DiskGuard(
            local_volumes(self.settings),
            RESERVE,
            spare=SpareFile(tmp_path, SPARE),
            free=self.volume,
            observe=observe_disk_free,
        )
        self.app.extensions[EXTENSION_KEY].service.disk = self.guard
        self.client: FlaskClient = self.app.test_client()

    def upload(self, content: bytes, *, chunked: bool = False) -> Any:
        body = multipart_body(content)
        if not chunked:
            return self.client.post(
                "/v3/media", data=body, headers=self.auth, content_type=MULTIPART_TYPE
            )
        return self.client.post(
            "/v3/media",
            input_stream=io.BytesIO(body),
            headers={**self.auth, "Transfer-Encoding": "chunked"},
            content_type=MULTIPART_TYPE,
            environ_overrides={"wsgi.input_terminated": True},
        )

    def database(self) -> SqliteDatabase:
        db = self.backends.closers[0]
        assert isinstance(db, SqliteDatabase)
        return db


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    w = World(tmp_path)
    yield w
    w.database().close()


def assert_insufficient_storage(response: Any) -> None:
    assert response.status_code == 507, response.get_data(as_text=True)
    assert response.mimetype == "application/problem+json"
    body = response.get_json()
    assert body["type"].endswith(":insufficient-storage")
    assert body["status"] == 507 and body["title"] == "Insufficient Storage"


def assert_nothing_left(world: World) -> None:
    """No document, no blob and no temp file: a refused upload left nothing behind."""
    assert all_items(world.backends) == []
    assert blob_keys(world.backends) == set()
    assert temp_files(world.backends) == []


# --------------------------------------------------------------------------- uploads


def test_upload_below_the_reserve_is_refused_up_front(world: World) -> None:
    """Already below the reserve: 507 problem+json before the body is read, nothing written."""
    world.volume.leave_free(RESERVE - 1)
    assert_insufficient_storage(world.upload(b"x" * 1000))
    assert_insufficient_storage(world.upload(b"x" * 1000, chunked=True))
    assert_nothing_left(world)


def test_announced_size_that_would_cross_the_reserve_is_refused_up_front(world: World) -> None:
    """A Content-Length that does not fit above the reserve: 507 without writing a byte."""
    world.volume.leave_free(RESERVE + 2 * MIB)
    assert_insufficient_storage(world.upload(os.urandom(3 * MIB)))
    assert_nothing_left(world)
    assert world.upload(os.urandom(MIB)).status_code == 201  # what fits still fits


def test_streaming_upload_stops_where_it_would_cross_the_reserve(world: World) -> None:
    """No Content-Length: the upload is stopped at the chunk that would cross the reserve, and
    its temp file and PENDING document go with it."""
    world.volume.leave_free(RESERVE + 2 * MIB + 1000)
    assert_insufficient_storage(world.upload(os.urandom(6 * MIB), chunked=True))
    assert_nothing_left(world)
    assert world.volume(world.settings.data_dir) >= RESERVE  # never crossed


# --------------------------------------------------------------------------- /readyz, /metrics


def test_readyz_reports_low_space(world: World) -> None:
    ready = world.client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["checks"]["disk"] == "ok"
    world.volume.leave_free(RESERVE - 1)
    low = world.client.get("/readyz")
    assert low.status_code == 503 and low.mimetype == "application/problem+json"
    assert "disk:" in low.get_json()["detail"]


def test_metrics_expose_free_bytes(world: World) -> None:
    world.volume.leave_free(123 * MIB)
    text = world.client.get("/metrics").get_data(as_text=True)
    for volume in ("blob_store", "database"):
        match = re.search(rf'^media_disk_free_bytes{{volume="{volume}"}} (\S+)$', text, re.M)
        assert match is not None, text
        assert float(match.group(1)) == 123 * MIB


# --------------------------------------------------------------------------- SQLite cannot grow


class FullDatabaseDisk:
    """Make every SQLite write fail with SQLITE_FULL while the disk is 'full': until the spare
    file is released (its space then serves the writes), or always with `spare_helps=False`."""

    def __init__(self, db: SqliteDatabase, spare: SpareFile, *, spare_helps: bool = True) -> None:
        self.db = db
        self.spare = spare
        self.spare_helps = spare_helps
        self.failures = 0
        self._connection: Callable[[], sqlite3.Connection] = db.connection
        db.connection = self._wrapped  # type: ignore[method-assign]

    def full(self) -> bool:
        return not self.spare_helps or self.spare.path.exists()

    def _wrapped(self) -> Any:
        return _FailingWrites(self._connection(), self)

    def undo(self) -> None:
        self.db.connection = self._connection  # type: ignore[method-assign]


class _FailingWrites:
    def __init__(self, conn: sqlite3.Connection, disk: FullDatabaseDisk) -> None:
        self._conn = conn
        self._disk = disk

    def execute(self, sql: str, params: Any = ()) -> Any:
        verb = sql.lstrip().split(None, 1)[0].upper()
        if verb in ("INSERT", "UPDATE", "DELETE") and self._disk.full():
            self._disk.failures += 1
            error = sqlite3.OperationalError("database or disk is full")
            error.sqlite_errorcode = sqlite3.SQLITE_FULL  # type: ignore[attr-defined]
            error.sqlite_errorname = "SQLITE_FULL"  # type: ignore[attr-defined]
            raise error
        return self._conn.execute(sql, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)


def test_delete_works_when_sqlite_cannot_grow(world: World) -> None:
    """The tombstone and the removal need WAL pages: the spare file gives them, the delete is
    204 and its bytes are gone; /readyz says so until the spare is back."""
    created = world.upload(b"some bytes").get_json()
    spare = SpareFile(world.settings.data_dir, SPARE)
    assert spare.path.exists()  # allocated at start-up
    disk = FullDatabaseDisk(world.database(), spare)
    try:
        deleted = world.client.delete(f"/v3/media/{created['id']}", headers=world.auth)
        assert deleted.status_code == 204, deleted.get_data(as_text=True)
        assert disk.failures >= 1 and not spare.path.exists()
    finally:
        disk.undo()
    assert_nothing_left(world)
    world.volume.leave_free(RESERVE + SPARE - 1)  # no room to allocate the spare again
    assert world.client.get("/readyz").status_code == 503
    assert_insufficient_storage(world.upload(b"x"))
    world.volume.leave_free(RESERVE + SPARE + MIB)
    assert world.client.get("/readyz").status_code == 200
    assert spare.path.exists()


def test_counted_download_on_a_full_database(world: World) -> None:
    """No space for the count even after the spare: an item without a limit is served
    (uncounted); an item with a limit is refused with 507, so its limit always holds."""
    unlimited = world.upload(b"unlimited").get_json()
    limited = world.upload(b"limited").get_json()
    changed = world.client.put(
        f"/v3/media/{limited['id']}/info", json={"max_downloads_allowed": 2}, headers=world.auth
    )
    assert changed.status_code == 204
    spare = SpareFile(world.settings.data_dir, SPARE)
    disk = FullDatabaseDisk(world.database(), spare, spare_helps=False)
    try:
        served = world.client.get(f"/v3/media/{unlimited['id']}", headers=world.auth)
        assert served.status_code == 200 and served.data == b"unlimited"
        assert_insufficient_storage(
            world.client.get(f"/v3/media/{limited['id']}", headers=world.auth)
        )
        # Downloads that do not count are unaffected.
        head = world.client.head(f"/v3/media/{limited['id']}", headers=world.auth)
        assert head.status_code == 200
    finally:
        disk.undo()
    info = world.client.get(f"/v3/media/{limited['id']}/info", headers=world.auth).get_json()
    assert info["times_downloaded"] == 0
    counted = world.client.get(f"/v3/media/{limited['id']}", headers=world.auth)
    assert counted.status_code == 200


def test_blob_store_enospc_is_507_and_leaves_nothing(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills (through something else) under a running upload: ENOSPC from a write
    is a 507, and neither temp file nor document stays."""
    import media_service.storage.files as files

    def no_space(source: Any, out: Any) -> int:
        source.read(1024)
        raise files._unavailable(OSError(28, "No space left on device"))

    monkeypatch.setattr(files, "_copy", no_space)
    assert_insufficient_storage(world.upload(b"x" * 5000))
    assert_nothing_left(world)


# --------------------------------------------------------------------------- a real full disk


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 30 MiB tmpfs mounted under tmp_path (needs root), unmounted afterwards."""
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=30m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def fill(path: Path) -> None:
    """Write zeros to `path` until the file system says no more."""
    with open(path, "ab", buffering=0) as out:
        block = b"\0" * 65536
        try:
            while True:
                out.write(block)
        except OSError as error:
            assert error.errno == 28
        with contextlib.suppress(OSError):
            while True:
                out.write(b"\0" * 512)


def test_real_full_tmpfs(tmpfs: Path) -> None:
    """Uploads stop at the reserve; then something else fills the disk to 0 bytes: deletes
    and downloads still work, /readyz says low, and it all recovers once space is freed."""
    data = tmpfs / "data"
    settings: Settings = make_settings(
        data, max_upload_bytes=64 * MIB, min_free_bytes=RESERVE, sqlite_spare_bytes=2 * MIB
    )
    data.mkdir()
    backends: Backends = open_backends(settings)
    secret = generate_secret()
    salt, digest = hash_secret(secret)
    backends.credentials.add_account(Account("tmpfs", salt, digest))
    auth = {"Authorization": "Basic " + base64.b64encode(f"tmpfs:{secret}".encode()).decode()}
    app = create_app(settings, backends=backends)
    client = app.test_client()

    def upload(size: int, **fields: str) -> Any:
        return client.post(
            "/v3/media",
            data={"filedata": (io.BytesIO(os.urandom(size)), "f.bin"), **fields},
            headers=auth,
            content_type="multipart/form-data",
        )

    try:
        limited = upload(MIB, max_downloads_allowed="3").get_json()["id"]
        ids = []
        for _ in range(20):
            answer = upload(3 * MIB)
            if answer.status_code != 201:
                break
            ids.append(answer.get_json()["id"])
        assert_insufficient_storage(answer)
        assert os.statvfs(tmpfs).f_bavail * os.statvfs(tmpfs).f_frsize >= RESERVE - MIB
        assert len(all_items(backends)) == len(ids) + 1  # no PENDING left
        assert temp_files(backends) == []

        filler = tmpfs / f"filler-{uuid.uuid4().hex}"
        fill(filler)  # another process takes every byte left
        assert client.get("/readyz").status_code == 503
        assert_insufficient_storage(upload(1000))
        deleted = client.delete(f"/v3/media/{ids[0]}", headers=auth)
        assert deleted.status_code == 204, deleted.get_data(as_text=True)
        assert client.get(f"/v3/media/{ids[0]}/info", headers=auth).status_code == 404

        fill(filler)  # and the freed bytes too
        served = client.get(f"/v3/media/{ids[1]}", headers=auth)
        assert served.status_code == 200 and len(served.data) == 3 * MIB
        answer = client.get(f"/v3/media/{limited}", headers=auth)
        assert answer.status_code in (200, 507), answer.get_data(as_text=True)
        info = client.get(f"/v3/media/{limited}/info", headers=auth).get_json()
        assert info["times_downloaded"] == (1 if answer.status_code == 200 else 0)

        os.unlink(filler)
        ready = client.get("/readyz")
        assert ready.status_code == 200, ready.get_data(as_text=True)
        assert upload(1000).status_code == 201
    finally:
        backends.close()
