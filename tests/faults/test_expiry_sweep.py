"""The sweeper deletes expired items by the ordinary delete sequence (tombstone, bytes, record),
over every backend pair: nothing lost (live items and their bytes stay), nothing orphaned, a
failing step counted and finished by the same or the next pass, and `media-service sweep`
says how many it removed."""

from __future__ import annotations

import io
import json
import os
import threading
import time
from dataclasses import replace
from datetime import datetime, timedelta

import pytest
from flask.testing import FlaskClient

from media_service.backends import open_backends
from media_service.cli import main
from media_service.service.media import utc_now
from media_service.service.sweeper import SweepReport, sweep
from media_service.settings import Settings
from media_service.storage.interfaces import Backends, ItemState, MediaItem
from tests.conftest import Credentials
from tests.faults.conftest import FaultyProxy, all_items, assert_consistent, blob_keys, make_item

GRACE = timedelta(hours=1)


def stored(backends: Backends, expires_at: datetime | None, content: bytes = b"bytes") -> MediaItem:
    """A READY item with its bytes, as a finished upload leaves it."""
    item = replace(make_item(ItemState.READY, utc_now(), content=content), expires_at=expires_at)
    backends.media.insert(item)
    backends.blobs.put(item.id, io.BytesIO(content))
    return item


def test_expired_items_go_with_their_bytes_and_live_ones_stay(backends: Backends) -> None:
    now = utc_now()
    expired = [stored(backends, now - timedelta(seconds=s)) for s in (0, 1, 86_400)]
    later = stored(backends, now + timedelta(milliseconds=1), b"later")
    never = stored(backends, None, b"never")
    report = sweep(backends, now=now, grace=GRACE)
    assert report == SweepReport(expired_removed=3)
    assert {item.id for item in all_items(backends)} == {later.id, never.id}
    assert blob_keys(backends) == {later.id, never.id}
    assert all(backends.media.get(item.id, include_hidden=True) is None for item in expired)
    assert sweep(backends, now=now, grace=GRACE) == SweepReport()
    assert_consistent(backends)  # (it sweeps as if in the year 3000: `later` goes too)


@pytest.mark.parametrize(
    ("port", "method", "finished_in_the_same_pass"),
    [
        ("blobs", "delete", True),  # the tombstone stays: finished as an interrupted delete
        ("media", "remove", True),
        ("media", "mark_deleting", False),  # nothing happened to it: the next pass takes it
    ],
)
def test_a_failing_step_is_counted_and_finished(
    backends: Backends, port: str, method: str, finished_in_the_same_pass: bool
) -> None:
    now = utc_now()
    expired = [stored(backends, now - timedelta(minutes=1)) for _ in range(3)]
    never = stored(backends, None)
    proxy = FaultyProxy(getattr(backends, port), "backend").fail(method, calls={1})
    faulty = replace(backends, **{port: proxy})

    report = sweep(faulty, now=now, grace=GRACE)
    assert report.errors == 1 and report.expired_removed == 2, report
    assert report.deletes_finished == (1 if finished_in_the_same_pass else 0), report
    left = {item.id for item in all_items(backends)} - {never.id}
    assert len(left) == (0 if finished_in_the_same_pass else 1)
    # What is left is still expired (so invisible), and the next pass removes it.
    assert {item.id for item in backends.media.iter_expired(now)} == left
    second = sweep(backends, now=now, grace=GRACE)
    assert second.expired_removed == len(left) and second.errors == 0
    assert {item.id for item in all_items(backends)} == {never.id}
    assert blob_keys(backends) == {never.id}
    assert all(backends.media.get(item.id, include_hidden=True) is None for item in expired)


def test_a_failing_listing_is_counted_and_the_rest_of_the_pass_runs(backends: Backends) -> None:
    now = utc_now()
    stored(backends, now - timedelta(minutes=1))
    left = make_item(ItemState.DELETING, now)  # an interrupted delete, finished all the same
    backends.media.insert(left)
    faulty = replace(backends, media=FaultyProxy(backends.media, "database").fail("iter_expired"))
    report = sweep(faulty, now=now, grace=GRACE)
    assert report == SweepReport(deletes_finished=1, errors=1)
    assert sweep(backends, now=now, grace=GRACE) == SweepReport(expired_removed=1)


# --------------------------------------------------------------------------- the command


def test_cli_sweep_reports_how_many_expired_items_it_removed(
    cli_env: Settings, capsys: pytest.CaptureFixture[str]
) -> None:
    backends = open_backends(cli_env)
    try:
        now = utc_now()
        gone = [stored(backends, now - timedelta(seconds=1)) for _ in range(2)]
        kept = stored(backends, now + timedelta(hours=1))
        assert main(["sweep"]) == 0
        report = json.loads(capsys.readouterr().out)
        assert report["expired_removed"] == 2 and report["errors"] == 0, report
        assert blob_keys(backends) == {kept.id}
        assert all(backends.media.get(item.id, include_hidden=True) is None for item in gone)
        assert main(["sweep"]) == 0
        assert json.loads(capsys.readouterr().out)["expired_removed"] == 0
    finally:
        backends.close()


# --------------------------------------------------------------------------- beside traffic


def test_sweeping_expired_items_is_safe_beside_uploads_and_downloads(
    client: FlaskClient, owner: Credentials, backends: Backends
) -> None:
    """A sweeper loops on the real clock while items with a 1 s ttl and items without one are
    uploaded and read: it removes exactly the expired ones, every kept item stays intact, and a
    read either gets the whole content or a 404 (never a 500, never a torn body)."""
    stop = threading.Event()
    reports: list[SweepReport] = []
    failures: list[BaseException] = []

    def sweep_forever() -> None:
        try:
            while not stop.is_set():
                reports.append(sweep(backends, now=utc_now(), grace=GRACE))
        except BaseException as error:  # surfaced by the main thread
            failures.append(error)

    sweeper = threading.Thread(target=sweep_forever, name="sweeper", daemon=True)
    sweeper.start()
    kept: dict[str, bytes] = {}
    expiring: dict[str, bytes] = {}
    try:
        for number in range(16):
            content = os.urandom(1024 + number)
            fields = {"ttl": "1"} if number % 2 == 0 else {}
            response = client.post(
                "/v3/media",
                data={"filedata": (io.BytesIO(content), f"{number}.bin"), **fields},
                headers=owner.basic,
                content_type="multipart/form-data",
            )
            assert response.status_code == 201, response.get_json()
            (expiring if fields else kept)[response.get_json()["id"]] = content
            for item_id, expected in list(expiring.items())[-3:]:
                got = client.get(f"/v3/media/{item_id}", headers=owner.basic)
                assert got.status_code in (200, 404), got.get_data()[:300]
                assert got.status_code == 404 or got.data == expected
        time.sleep(1.2)  # the last ttl item has expired; let the sweeper see it
        deadline = time.monotonic() + 10
        while any(backends.media.get(i, include_hidden=True) for i in expiring):
            assert time.monotonic() < deadline, "the sweeper left expired items behind"
            time.sleep(0.05)
    finally:
        stop.set()
        sweeper.join(timeout=30)
    assert not failures, failures
    assert all(report.errors == 0 for report in reports), reports
    assert sum(report.expired_removed for report in reports) == len(expiring)
    for item_id, content in kept.items():
        assert client.get(f"/v3/media/{item_id}", headers=owner.basic).data == content
    assert {item.id for item in all_items(backends)} == set(kept)
    assert blob_keys(backends) == set(kept)
