"""The resumable ports (upload records and staging) on every backend pair."""

from __future__ import annotations

import io
import threading
from datetime import timedelta
from typing import Any

import pytest

from media_service.service.media import utc_now
from media_service.storage.interfaces import Backends, BackendUnavailable
from media_service.storage.resumable import Claim, ResumablePorts, ResumableUpload, resumable_ports

MiB = 1024 * 1024


@pytest.fixture
def ports(backends: Backends) -> ResumablePorts:
    return resumable_ports(backends)


def record(upload_id: str = "6a1f4f36-0b8a-4b43-9d4c-2a4b0c0e0f01", length: int = 100) -> Any:
    now = utc_now()
    return ResumableUpload(
        id=upload_id,
        account_id="acct",
        application_id=None,
        length=length,
        offset=0,
        metadata={"filename": "a.bin"},
        time_created=now,
        expires=now + timedelta(hours=1),
    )


def test_records_round_trip_and_leases(ports: ResumablePorts) -> None:
    upload = record()
    ports.uploads.create(upload)
    assert ports.uploads.get(upload.id) == upload
    now = utc_now()
    until = now + timedelta(minutes=1)
    assert ports.uploads.claim(upload.id, 5, "a", until, now) is Claim.OFFSET_MISMATCH
    assert ports.uploads.claim(upload.id, 0, "a", until, now) is Claim.CLAIMED
    assert ports.uploads.claim(upload.id, 0, "b", until, now) is Claim.BUSY
    assert not ports.uploads.advance(upload.id, "b", 0, 10)  # not the holder
    assert ports.uploads.advance(upload.id, "a", 0, 10)
    assert not ports.uploads.advance(upload.id, "a", 0, 20)  # not from that offset
    assert ports.uploads.renew(upload.id, "a", until)
    assert not ports.uploads.renew(upload.id, "b", until)
    ports.uploads.release(upload.id, "a")
    assert ports.uploads.claim(upload.id, 10, "b", until, now) is Claim.CLAIMED
    assert ports.uploads.finish(upload.id, "b", "item-id")
    done = ports.uploads.get(upload.id)
    assert done is not None and done.offset == 100 and done.media_id == "item-id"
    assert ports.uploads.claim(upload.id, 100, "c", until, now) is Claim.COMPLETE
    assert ports.uploads.expired(now + timedelta(hours=2), 10) == [done]
    assert ports.uploads.expired(now, 10) == []
    assert ports.uploads.existing([upload.id, "nope"]) == {upload.id}
    assert ports.uploads.remove(upload.id)
    assert ports.uploads.get(upload.id) is None
    assert ports.uploads.claim(upload.id, 0, "d", until, now) is Claim.NOT_FOUND


def test_an_expired_lease_can_be_taken(ports: ResumablePorts) -> None:
    upload = record()
    ports.uploads.create(upload)
    now = utc_now()
    assert ports.uploads.claim(upload.id, 0, "dead", now - timedelta(seconds=1), now) is (
        Claim.CLAIMED
    )
    assert ports.uploads.claim(upload.id, 0, "alive", now + timedelta(minutes=1), now) is (
        Claim.CLAIMED
    )
    assert not ports.uploads.advance(upload.id, "dead", 0, 5)


def test_one_claim_wins_among_threads(ports: ResumablePorts, backends: Backends) -> None:
    media: Any = backends.media
    if type(getattr(media, "db", None)).__name__ == "MongoDatabase" and type(
        media.db.database.client
    ).__module__.startswith("mongomock"):
        pytest.skip("mongomock is not atomic across threads (STYLE.md)")
    upload = record()
    ports.uploads.create(upload)
    now = utc_now()
    wins: list[str] = []
    barrier = threading.Barrier(8)

    def contend(token: str) -> None:
        barrier.wait()
        if ports.uploads.claim(upload.id, 0, token, now + timedelta(minutes=1), now) is (
            Claim.CLAIMED
        ):
            wins.append(token)

    threads = [threading.Thread(target=contend, args=(str(n),)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1


class Breaks:
    def __init__(self, data: bytes, after: int) -> None:
        self._source = io.BytesIO(data[:after])

    def read(self, size: int = -1, /) -> bytes:
        chunk = self._source.read(size)
        if not chunk:
            raise ConnectionResetError("gone")
        return chunk


@pytest.mark.parametrize("offsets", [[0], [0, 3, 9 * MiB - 1, 9 * MiB + 5]])
def test_staging_keeps_what_it_acknowledged(ports: ResumablePorts, offsets: list[int]) -> None:
    size = 18 * MiB
    data = bytes(range(256)) * (size // 256)
    marks: list[int] = []
    upload_id = "6a1f4f36-0b8a-4b43-9d4c-2a4b0c0e0f02"
    bounds = [*offsets, size]
    for start, stop in zip(bounds, bounds[1:], strict=False):
        end = ports.staging.write(
            upload_id, start, io.BytesIO(data[start:stop]), size - start, marks.append
        )
        assert end == stop
    assert marks[-1] == size and marks == sorted(marks)
    staged = ports.staging.open(upload_id, size)
    copy = bytearray()
    while chunk := staged.read(MiB):
        copy += chunk
    assert bytes(copy) == data
    ports.staging.delete(upload_id)
    assert upload_id not in dict(ports.staging.list_ids())
    ports.staging.delete(upload_id)  # nothing staged is fine


def test_a_broken_source_keeps_its_bytes_and_later_writes_replace_the_rest(
    ports: ResumablePorts,
) -> None:
    size = 12 * MiB
    data = bytes(range(256)) * (size // 256)
    junk = b"\xee" * size
    upload_id = "6a1f4f36-0b8a-4b43-9d4c-2a4b0c0e0f03"
    marks: list[int] = []
    with pytest.raises(ConnectionResetError):
        ports.staging.write(upload_id, 0, Breaks(data, 9 * MiB + 7), size, marks.append)
    assert marks[-1] == 9 * MiB + 7
    # Bytes staged past an offset the record never took (a crash after the write) are
    # replaced by the next write from the recorded offset.
    ports.staging.write(upload_id, 2 * MiB, io.BytesIO(junk[: 5 * MiB]), size, marks.append)
    ports.staging.write(upload_id, 2 * MiB, io.BytesIO(data[2 * MiB :]), size, marks.append)
    staged = ports.staging.open(upload_id, size)
    copy = bytearray()
    while chunk := staged.read(3 * MiB):
        copy += chunk
    assert bytes(copy) == data


def test_reading_past_what_is_staged_fails_loudly(ports: ResumablePorts) -> None:
    upload_id = "6a1f4f36-0b8a-4b43-9d4c-2a4b0c0e0f04"
    ports.staging.write(upload_id, 0, io.BytesIO(b"abc"), 3, lambda _end: None)
    staged = ports.staging.open(upload_id, 10)
    with pytest.raises(BackendUnavailable):
        while staged.read(4):
            pass
