"""The sweeper tells a live upload from a dead one by its heartbeat (SPEC §4.7), not its age.

An upload refreshes its PENDING document's heartbeat while bytes flow; the sweeper rolls back
PENDING items whose heartbeat is older than MEDIA_UPLOAD_STALE_SECONDS, whenever they started,
and removes temp files (file store) and open multipart uploads (S3) that no document names. The
clock is the service's own, moved forward by the test between chunks of the request body.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from media_service.cli import main
from media_service.service.media import utc_now
from media_service.service.sweeper import SweepReport, sweep
from media_service.settings import Settings
from media_service.storage.interfaces import Backends, ItemState
from tests.clock import Clock, freeze
from tests.conftest import Credentials, make_settings
from tests.faults.conftest import (
    FILE_PART_TAIL,
    MULTIPART_TYPE,
    all_items,
    assert_consistent,
    blob_keys,
    file_part_head,
    make_item,
    open_multipart_uploads,
    temp_files,
)

MIB = 1024 * 1024
STALE = timedelta(minutes=10)
GRACE = timedelta(hours=1)
STEP = timedelta(minutes=4)  # per MiB of request body: well under STALE, 20 MiB > GRACE


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(
        tmp_path,
        max_upload_bytes=64 * MIB,
        upload_stale_seconds=int(STALE.total_seconds()),
        sweep_grace_seconds=int(GRACE.total_seconds()),
    )


class SteppedBody(io.RawIOBase):
    """A request body that moves the clock by `step` per read and then runs `between`."""

    def __init__(self, data: bytes, clock: Clock, between: Callable[[int], None]) -> None:
        self._data = io.BytesIO(data)
        self._clock = clock
        self._between = between
        self.reads = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = 0) -> int:  # the test client measures the body
        return self._data.seek(offset, whence)

    def tell(self) -> int:
        return self._data.tell()

    def readinto(self, buffer: Any) -> int:
        chunk = self._data.read(min(len(buffer), MIB))
        if chunk:
            self.reads += 1
            self._clock.advance(STEP)
            self._between(self.reads)
        buffer[: len(chunk)] = chunk
        return len(chunk)


def post(app: Flask, owner: Credentials, body: SteppedBody) -> Any:
    return app.test_client().post(
        "/v3/media",
        input_stream=body,
        headers=owner.basic,
        content_type=MULTIPART_TYPE,
    )


def upload_body(content: bytes) -> bytes:
    return file_part_head("long.bin") + content + FILE_PART_TAIL


def test_a_live_upload_survives_sweeps_however_long_it_runs(
    app: Flask, backends: Backends, owner: Credentials
) -> None:
    """The sweeper runs between every MiB of a 20 MiB upload that takes 80 minutes (longer
    than the grace): its heartbeat keeps it alive, and it completes intact."""
    clock = freeze(app)
    reports: list[SweepReport] = []
    content = os.urandom(20 * MIB)
    data = upload_body(content)
    body = SteppedBody(
        data,
        clock,
        lambda _: reports.append(sweep(backends, now=clock(), grace=GRACE, stale=STALE)),
    )
    created = post(app, owner, body)
    assert created.status_code == 201, created.get_data(as_text=True)
    assert clock() - datetime.fromisoformat(created.get_json()["time_created"]) > GRACE
    assert body.reads >= 20 and len(reports) == body.reads
    assert all(report == SweepReport() for report in reports), reports
    got = app.test_client().get(f"/v3/media/{created.get_json()['id']}", headers=owner.basic)
    assert got.status_code == 200 and got.data == content
    assert_consistent(backends)


def test_an_upload_stopped_past_the_stale_bound_is_abandoned_at_its_next_heartbeat(
    app: Flask, backends: Backends, owner: Credentials
) -> None:
    """The bytes stop for longer than the stale bound and the sweeper rolls the upload back:
    when they flow again, the upload fails at once (503), not after the whole transfer."""
    clock = freeze(app)
    rolled_back_at: list[int] = []

    def stall_then_sweep(reads: int) -> None:
        if reads == 3:
            now = clock.advance(2 * STALE)
            report = sweep(backends, now=now, grace=GRACE, stale=STALE)
            assert report.pending_rolled_back == 1
            rolled_back_at.append(reads)

    data = upload_body(os.urandom(20 * MIB))
    body = SteppedBody(data, clock, stall_then_sweep)
    answer = post(app, owner, body)
    assert answer.status_code == 503 and answer.mimetype == "application/problem+json"
    assert answer.get_json()["type"].endswith(":upload-abandoned")
    assert rolled_back_at == [3]
    # A few reads of look-ahead (the multipart decoder, an S3 part), never the whole body.
    assert body.reads <= 3 + 10, body.reads
    assert all_items(backends) == []
    assert_consistent(backends)


def test_a_crashed_upload_is_rolled_back_after_the_stale_bound_not_the_grace(
    backends: Backends,
) -> None:
    """A worker died mid-upload 20 minutes ago (less than the grace): its PENDING document,
    its temp file (file store) or its open multipart upload (S3) all go in one sweep; a live
    upload's are kept."""
    now = utc_now()
    dead = make_item(ItemState.PENDING, now - 2 * STALE)
    # Started long before the grace, and its last heartbeat was a moment ago: alive.
    live = replace(make_item(ItemState.PENDING, now - 2 * GRACE), time_last_updated=now - STALE / 2)
    for item in (dead, live):
        backends.media.insert(item)
        _leave_partial_upload(backends, item.id)

    report = sweep(backends, now=now, grace=GRACE, stale=STALE)
    assert report == SweepReport(pending_rolled_back=1)
    assert [item.id for item in all_items(backends)] == [live.id]
    assert _partial_uploads(backends) == [live.id]
    assert blob_keys(backends) == set()


def test_a_crashed_uploads_multipart_upload_goes_without_a_bucket_wide_listing(
    backends: Backends, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MinIO lists multipart uploads only for an exact object key: rolling back a dead PENDING
    item aborts its key's uploads directly, whatever the bucket-wide listing shows."""
    blobs: Any = backends.blobs
    if not hasattr(blobs, "client"):
        pytest.skip("S3 only")
    monkeypatch.setattr(type(blobs), "abort_stale_uploads", lambda *args: 0)
    now = utc_now()
    dead = make_item(ItemState.PENDING, now - 2 * STALE)
    backends.media.insert(dead)
    _leave_partial_upload(backends, dead.id)
    assert sweep(backends, now=now, grace=GRACE, stale=STALE) == SweepReport(pending_rolled_back=1)
    assert _partial_uploads(backends) == []


def _leave_partial_upload(backends: Backends, key: str) -> None:
    blobs: Any = backends.blobs
    if hasattr(blobs, "client"):  # S3: a multipart upload that was never completed
        blobs.client.create_multipart_upload(Bucket=blobs.bucket, Key=blobs.prefix + key)
    else:
        temp = Path(blobs.root) / ".tmp"
        temp.mkdir(exist_ok=True)
        (temp / f"{key}.x7y8z9.part").write_bytes(b"half an upload")


def _partial_uploads(backends: Backends) -> list[str]:
    blobs: Any = backends.blobs
    if hasattr(blobs, "client"):
        return [key.removeprefix(blobs.prefix) for key in open_multipart_uploads(backends)]
    return [path.name.split(".")[0] for path in temp_files(backends)]


def test_the_command_takes_the_stale_bound_from_settings_or_its_option(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`media-service sweep` uses MEDIA_UPLOAD_STALE_SECONDS; `--stale-seconds` overrides it."""
    for name in list(os.environ):
        if name.startswith("MEDIA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MEDIA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MEDIA_UPLOAD_STALE_SECONDS", "120")
    from media_service.backends import open_backends

    backends = open_backends(Settings.from_env())
    try:
        now = utc_now()
        older = make_item(ItemState.PENDING, now - timedelta(minutes=3))
        fresh = make_item(ItemState.PENDING, now)
        for item in (older, fresh):
            backends.media.insert(item)
        assert main(["sweep"]) == 0
        assert json.loads(capsys.readouterr().out)["pending_rolled_back"] == 1
        assert [item.id for item in all_items(backends)] == [fresh.id]
        assert main(["sweep", "--stale-seconds", "0"]) == 0
        assert json.loads(capsys.readouterr().out)["pending_rolled_back"] == 1
        assert all_items(backends) == []
    finally:
        backends.close()
