"""One contract for every BlobStore adapter: the same assertions against files, moto and S3."""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import boto3
import pytest
from botocore.config import Config
from moto import mock_aws
from moto.server import ThreadedMotoServer

from media_service.settings import Settings
from media_service.storage.files import FileBlobStore
from media_service.storage.interfaces import (
    BackendUnavailable,
    BlobNotFound,
    BlobStore,
    BlobStream,
)
from media_service.storage.s3 import S3BlobStore
from tests import real_backends

MiB = 1024 * 1024


@dataclass
class Harness:
    """A store under test plus what the contract needs to look behind it."""

    store: BlobStore
    open_uploads: Callable[[], list[str]]  # multipart uploads still open (S3 only)
    unreachable: Callable[[], BlobStore]  # the same kind of store, with its backend gone


class SourceBroke(OSError):
    """A source failure that is an OSError: adapters must not mistake it for their own."""


class ShortReads:
    """A source that, like a socket, returns fewer bytes than asked for."""

    def __init__(self, data: bytes, step: int = 100_000) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._step = step

    def read(self, size: int = -1) -> bytes:
        end = len(self._data) if size < 0 else self._pos + min(size, self._step)
        chunk = bytes(self._data[self._pos : end])
        self._pos += len(chunk)
        return chunk


class FailingSource(ShortReads):
    """A source that raises `error` once `fail_at` bytes have been read."""

    def __init__(self, data: bytes, fail_at: int) -> None:
        super().__init__(data, step=MiB)
        self._fail_at = fail_at
        self.error = SourceBroke("client went away")

    def read(self, size: int = -1) -> bytes:
        if self._pos >= self._fail_at:
            raise self.error
        return super().read(size if size < 0 else min(size, self._fail_at - self._pos))


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def read_all(stream: BlobStream) -> bytes:
    """Read a stream to its end, checking that every chunk but the last is >= 1 MiB."""
    try:
        chunks = list(stream)
    finally:
        stream.close()
    assert all(len(c) >= MiB for c in chunks[:-1]), [len(c) for c in chunks]
    assert all(isinstance(c, bytes) for c in chunks)
    return b"".join(chunks)


def new_key() -> str:
    return str(uuid.uuid4())


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def s3_client(endpoint: str | None, *, timeout: float = 5.0, attempts: int = 3, **creds: str):
    session = boto3.session.Session(region_name=creds.pop("region", "us-east-1"), **creds)
    config = Config(
        s3={"addressing_style": "path"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connect_timeout=timeout,
        read_timeout=timeout,
        retries={"total_max_attempts": attempts, "mode": "standard"},
    )
    return session.client("s3", endpoint_url=endpoint, config=config)


def unreachable_s3() -> S3BlobStore:
    client = s3_client(f"http://127.0.0.1:{closed_port()}", timeout=1.0, attempts=1)
    return S3BlobStore(client, "nowhere")


def open_uploads_of(store: S3BlobStore) -> Callable[[], list[str]]:
    # Bucket-wide and filtered here: MinIO matches the Prefix of ListMultipartUploads only
    # against whole object names, so a prefix listing would always look clean there.
    return lambda: open_uploads_in_bucket(store)


def empty_out(store: S3BlobStore) -> None:
    """Remove everything under the store's prefix (for the shared, real endpoint)."""
    listing = store.client.list_multipart_uploads(Bucket=store.bucket)
    for upload in listing.get("Uploads", []):
        if upload["Key"].startswith(store.prefix):
            store.client.abort_multipart_upload(
                Bucket=store.bucket, Key=upload["Key"], UploadId=upload["UploadId"]
            )
    pages = store.client.get_paginator("list_objects_v2").paginate(
        Bucket=store.bucket, Prefix=store.prefix
    )
    for page in pages:
        for entry in page.get("Contents", []):
            store.client.delete_object(Bucket=store.bucket, Key=entry["Key"])


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def _isolated_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Dummy credentials; never read ~/.aws or reach a real AWS endpoint."""
    for name in list(os.environ):
        if name.startswith("AWS_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture(scope="module")
def moto_endpoint() -> Iterator[str]:
    """A moto server on loopback: real HTTP, real sockets, real Range headers."""
    port = closed_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()


def _file_harness(tmp_path: Path) -> Iterator[Harness]:
    def unreachable() -> BlobStore:
        gone = FileBlobStore(tmp_path / "gone")
        gone.root.mkdir()
        shutil.rmtree(gone.root)
        return gone

    store = FileBlobStore.from_settings(
        Settings(database_url="sqlite:///unused.db", storage_url=(tmp_path / "blobs").as_uri())
    )
    yield Harness(store, open_uploads=list, unreachable=unreachable)


def _moto_harness(monkeypatch: pytest.MonkeyPatch) -> Iterator[Harness]:
    with mock_aws():
        # Through from_settings, so the production client configuration is what gets tested.
        store = S3BlobStore.from_settings(
            Settings(database_url="sqlite:///unused.db", storage_url="s3://contract-moto")
        )
        store.client.create_bucket(Bucket=store.bucket)
        yield Harness(store, open_uploads_of(store), unreachable_s3)
        store.close()


def _server_harness(monkeypatch: pytest.MonkeyPatch, endpoint: str) -> Iterator[Harness]:
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", endpoint)
    bucket = f"contract-{uuid.uuid4().hex[:16]}"
    store = S3BlobStore.from_settings(
        Settings(database_url="sqlite:///unused.db", storage_url=f"s3://{bucket}/media/blobs")
    )
    assert store.client.meta.endpoint_url == endpoint  # real HTTP, not moto's in-process stub
    store.client.create_bucket(Bucket=bucket)
    try:
        yield Harness(store, open_uploads_of(store), unreachable_s3)
    finally:
        empty_out(store)
        store.client.delete_bucket(Bucket=bucket)
        store.close()


def _real_harness() -> Iterator[Harness]:
    # Through from_settings with the endpoint in AWS_ENDPOINT_URL_S3, as compose configures the
    # service: path-style addressing and the checksum setting are the production client's.
    with real_backends.real_server_env():
        store = S3BlobStore.from_settings(
            Settings(
                database_url="sqlite:///unused.db",
                storage_url=f"s3://{real_backends.S3_BUCKET}/contract-{uuid.uuid4().hex[:12]}",
            )
        )
    assert store.client.meta.endpoint_url == real_backends.S3_ENDPOINT
    try:
        yield Harness(store, open_uploads_of(store), unreachable_s3)
    finally:
        empty_out(store)
        store.close()


@pytest.fixture(
    params=[
        "file",
        "s3-moto",
        pytest.param("s3-server", marks=pytest.mark.integration),
        pytest.param(f"s3-{real_backends.S3_SERVER}", marks=pytest.mark.minio),
    ]
)
def blob_store(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    kind = request.param
    if kind == "file":
        yield from _file_harness(tmp_path)
    elif kind == "s3-moto":
        yield from _moto_harness(monkeypatch)
    elif kind == "s3-server":
        yield from _server_harness(monkeypatch, request.getfixturevalue("moto_endpoint"))
    else:
        if not real_backends.S3_ENDPOINT:
            pytest.skip("MEDIA_TEST_S3_ENDPOINT is not set")
        yield from _real_harness()


# --------------------------------------------------------------------------- the contract


def test_is_a_blob_store(blob_store: Harness) -> None:
    assert isinstance(blob_store.store, BlobStore)
    assert blob_store.store.store_id in ("file", "s3")


@pytest.mark.parametrize(
    "size", [0, 1, MiB - 1, MiB + 1, 20 * MiB + 3], ids=["0", "1", "1MiB-1", "1MiB+1", "20MiB+3"]
)
def test_round_trip(blob_store: Harness, size: int) -> None:
    store, key, data = blob_store.store, new_key(), payload(size)

    stored = store.put(key, ShortReads(data))

    assert (stored.key, stored.size) == (key, size)
    got = read_all(store.open(key))
    assert len(got) == size
    assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
    assert blob_store.open_uploads() == []


def test_put_reads_a_plain_file_object(blob_store: Harness, tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    data = payload(3 * MiB, seed=1)
    source.write_bytes(data)
    key = new_key()

    with source.open("rb") as fh:
        assert blob_store.store.put(key, fh).size == len(data)

    assert read_all(blob_store.store.open(key)) == data


def test_chunks_are_at_least_one_mib_except_the_last(blob_store: Harness) -> None:
    key, data = new_key(), payload(5 * MiB + 17, seed=2)
    blob_store.store.put(key, ShortReads(data))

    stream = blob_store.store.open(key, start=3)
    try:
        sizes = [len(chunk) for chunk in stream]
    finally:
        stream.close()

    assert sum(sizes) == len(data) - 3
    assert all(size >= MiB for size in sizes[:-1])
    assert 0 < sizes[-1]


SIZE = 3 * MiB + 5
RangedBlob = tuple[BlobStore, str, bytes]


@pytest.mark.parametrize(
    ("start", "length", "expected"),
    [
        (0, None, slice(0, SIZE)),
        (10, None, slice(10, SIZE)),
        (10, 100, slice(10, 110)),
        (0, 1, slice(0, 1)),
        (7, 0, slice(0, 0)),
        (0, 0, slice(0, 0)),
        (SIZE - 1, None, slice(SIZE - 1, SIZE)),
        (SIZE - 1, 1, slice(SIZE - 1, SIZE)),
        (MiB - 1, MiB + 2, slice(MiB - 1, 2 * MiB + 1)),
        (SIZE - 10, 100, slice(SIZE - 10, SIZE)),  # clamped at the end
        (SIZE, None, slice(0, 0)),  # at the end: nothing
        (SIZE + 10, 5, slice(0, 0)),  # past the end: nothing
    ],
)
def test_ranges(start: int, length: int | None, expected: slice, ranged_blob: RangedBlob) -> None:
    store, key, data = ranged_blob
    assert read_all(store.open(key, start, length)) == data[expected]


@pytest.fixture
def ranged_blob(blob_store: Harness) -> RangedBlob:
    key, data = new_key(), payload(SIZE, seed=3)
    blob_store.store.put(key, ShortReads(data))
    return blob_store.store, key, data


def test_negative_range_is_a_programming_error(ranged_blob: RangedBlob) -> None:
    store, key, _ = ranged_blob
    with pytest.raises(ValueError):
        store.open(key, -1)
    with pytest.raises(ValueError):
        store.open(key, 0, -1)


def test_closing_early_is_fine(ranged_blob: RangedBlob) -> None:
    store, key, _ = ranged_blob
    stream = store.open(key)
    first = next(iter(stream))
    stream.close()
    assert len(first) >= MiB


@pytest.mark.parametrize(("start", "length"), [(0, None), (5, None), (0, 10), (3, 0), (0, 0)])
def test_open_missing_key(blob_store: Harness, start: int, length: int | None) -> None:
    with pytest.raises(BlobNotFound):
        blob_store.store.open(new_key(), start, length)


def test_delete_is_idempotent(blob_store: Harness) -> None:
    store, key = blob_store.store, new_key()
    store.put(key, ShortReads(b"bytes"))

    store.delete(key)
    store.delete(key)
    store.delete(new_key())  # never existed

    with pytest.raises(BlobNotFound):
        store.open(key)


def test_list_blobs_sees_puts_not_deletes(blob_store: Harness) -> None:
    store = blob_store.store
    assert list(store.list_blobs()) == []
    kept, deleted = new_key(), new_key()
    before = time.time()
    store.put(kept, ShortReads(b"k" * 1234))
    store.put(deleted, ShortReads(b"d"))
    store.delete(deleted)

    listing = list(store.list_blobs())

    assert [(b.key, b.size) for b in listing] == [(kept, 1234)]
    modified = listing[0].last_modified
    assert modified.utcoffset() == timedelta(0)
    assert abs(modified.timestamp() - before) < 120


@pytest.mark.parametrize("fail_at", [0, MiB + 1, 17 * MiB], ids=["first-read", "1MiB", "17MiB"])
def test_failing_source_leaves_nothing(blob_store: Harness, fail_at: int) -> None:
    store, key = blob_store.store, new_key()
    source = FailingSource(payload(20 * MiB, seed=4), fail_at)

    with pytest.raises(SourceBroke) as raised:
        store.put(key, source)

    assert raised.value is source.error  # the very object, not a wrapper or a translation
    with pytest.raises(BlobNotFound):
        store.open(key)
    assert list(store.list_blobs()) == []
    assert blob_store.open_uploads() == []


@pytest.mark.parametrize("key", ["", ".", "..", "../x", "a/b", "/abs", ".tmp", "a\\b", "a\x00"])
def test_rejects_keys_that_are_not_plain_names(blob_store: Harness, key: str) -> None:
    store = blob_store.store
    with pytest.raises(ValueError):
        store.put(key, ShortReads(b"x"))
    with pytest.raises(ValueError):
        store.open(key)
    with pytest.raises(ValueError):
        store.delete(key)


def test_ping(blob_store: Harness) -> None:
    blob_store.store.ping()


def test_unreachable_backend_fails_fast(blob_store: Harness) -> None:
    store = blob_store.unreachable()
    key = new_key()
    operations: list[Callable[[], object]] = [
        store.ping,
        lambda: store.open(key),
        lambda: store.open(key, 0, 0),
        lambda: store.put(key, ShortReads(b"data")),
        lambda: store.delete(key),
        lambda: list(store.list_blobs()),
    ]
    for operation in operations:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable) as raised:
            operation()
        assert time.monotonic() - started < 5
        assert raised.value.port == "blob store"
        assert "testing" not in str(raised.value)  # no credentials in messages


# --------------------------------------------------------------------------- S3 only


@pytest.fixture(
    params=["s3-moto", pytest.param(f"s3-{real_backends.S3_SERVER}", marks=pytest.mark.minio)]
)
def s3_harness(
    request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Harness]:
    if request.param == "s3-moto":
        yield from _moto_harness(monkeypatch)
    else:
        if not real_backends.S3_ENDPOINT:
            pytest.skip("MEDIA_TEST_S3_ENDPOINT is not set")
        yield from _real_harness()


def start_multipart_upload(store: S3BlobStore, object_key: str) -> None:
    """Begin a multipart upload with one part and leave it open, as a killed worker does."""
    started = store.client.create_multipart_upload(Bucket=store.bucket, Key=object_key)
    store.client.upload_part(
        Bucket=store.bucket,
        Key=object_key,
        UploadId=started["UploadId"],
        PartNumber=1,
        Body=payload(5 * MiB),
    )


def test_abandoned_multipart_uploads_are_aborted(s3_harness: Harness) -> None:
    """What a worker killed mid-upload leaves open goes; other names under the prefix stay."""
    store = s3_harness.store
    assert isinstance(store, S3BlobStore)
    abandoned = store.prefix + new_key()
    start_multipart_upload(store, abandoned)
    foreign = f"{store.prefix}not/a-key"  # under the prefix, but not a name the store gives
    start_multipart_upload(store, foreign)

    later = datetime.now(UTC) + timedelta(seconds=5)
    assert store.abort_stale_uploads(later, nothing_referenced) == 1
    assert open_uploads_in_bucket(store) == [foreign]
    assert store.abort_stale_uploads(later, nothing_referenced) == 0  # idempotent


@pytest.mark.minio  # moto reports every upload as begun in 2010
def test_young_multipart_uploads_are_spared() -> None:
    """An upload begun less than the bound ago may still be running: it stays open."""
    if not real_backends.S3_ENDPOINT:
        pytest.skip("MEDIA_TEST_S3_ENDPOINT is not set")
    for harness in _real_harness():
        store = harness.store
        assert isinstance(store, S3BlobStore)
        young = store.prefix + new_key()
        start_multipart_upload(store, young)
        an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
        assert store.abort_stale_uploads(an_hour_ago, nothing_referenced) == 0
        assert open_uploads_in_bucket(store) == [young]


def nothing_referenced(keys: list[str]) -> set[str]:
    return set()


def open_uploads_in_bucket(store: S3BlobStore) -> list[str]:
    """Open uploads under the store's prefix, from a bucket-wide listing (MinIO: see s3.py)."""
    listing = store.client.list_multipart_uploads(Bucket=store.bucket)
    return sorted(u["Key"] for u in listing.get("Uploads", []) if u["Key"].startswith(store.prefix))
