"""What only one BlobStore adapter does: file durability and layout; S3 prefixes, ranges, errors."""

from __future__ import annotations

import errno
import hashlib
import os
import stat
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ReadTimeoutError
from botocore.stub import Stubber
from moto import mock_aws

from media_service.settings import S3_MAX_PARTS, S3_PART_BYTES, ConfigError, Settings
from media_service.storage.files import FileBlobStore
from media_service.storage.interfaces import BackendUnavailable, BlobNotFound
from media_service.storage.s3 import S3BlobStore, S3BlobStream

from .test_blob_store import (  # noqa: F401 - _isolated_aws_env is an autouse fixture
    FailingSource,
    MiB,
    ShortReads,
    SourceBroke,
    _isolated_aws_env,
    new_key,
    payload,
    read_all,
)


def settings_for(storage_url: str, **changes: Any) -> Settings:
    return Settings(database_url="sqlite:///unused.db", storage_url=storage_url, **changes)


# --------------------------------------------------------------------------- files


@pytest.fixture
def files(tmp_path: Path) -> FileBlobStore:
    return FileBlobStore.from_settings(settings_for((tmp_path / "blobs").as_uri()))


def test_from_settings_creates_the_root(tmp_path: Path) -> None:
    root = tmp_path / "deep" / "er" / "blobs"
    store = FileBlobStore.from_settings(settings_for(root.as_uri()))
    assert store.root == root
    assert root.is_dir()
    assert store.store_id == "file"


def test_blobs_are_sharded_by_the_first_two_characters(files: FileBlobStore) -> None:
    key = new_key()
    files.put(key, ShortReads(b"hello"))
    assert (files.root / key[:2] / key).read_bytes() == b"hello"


def test_traversal_keys_write_nothing(tmp_path: Path, files: FileBlobStore) -> None:
    for key in ("../escape", "..", "x/../../escape", str(tmp_path / "escape")):
        with pytest.raises(ValueError):
            files.put(key, ShortReads(b"x"))
    assert not list(tmp_path.rglob("escape*"))
    assert list(files.list_blobs()) == []


def test_put_fsyncs_the_file_then_the_directory(
    files: FileBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    target: list[Path] = []  # the blob being written
    synced: list[tuple[str, bool]] = []  # (what was synced, was the blob visible yet)
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        synced.append((kind, target[-1].exists()))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", recording_fsync)
    key = new_key()
    target.append(files.root / key[:2] / key)
    files.put(key, ShortReads(payload(2 * MiB)))

    # The data before the rename, the directory entry after it, and the new shard directory's
    # own entry in the root.
    assert synced == [("file", False), ("dir", True), ("dir", True)]

    synced.clear()
    other = key[:2] + "-same-shard"
    target.append(files.root / key[:2] / other)
    files.put(other, ShortReads(b"x"))
    assert synced == [("file", False), ("dir", True)]  # the shard exists: one directory fsync


@pytest.mark.parametrize("result", [0, -1])  # the call's own failure is the fsync's to report
def test_put_starts_the_writeback_in_steps_as_it_writes(
    files: FileBlobStore, monkeypatch: pytest.MonkeyPatch, result: int
) -> None:
    import media_service.storage.files as files_module

    started: list[tuple[int, int, int, bool]] = []  # offset, length, flags, written by then

    def recording(fd: int, offset: int, length: int, flags: int) -> int:
        started.append((offset, length, flags, os.fstat(fd).st_size >= offset + length))
        return result

    monkeypatch.setattr(files_module, "_SYNC_FILE_RANGE", recording)
    data = payload(2 * files_module.WRITEBACK_STEP + 3 * MiB)
    key = new_key()
    files.put(key, ShortReads(data))
    step = files_module.WRITEBACK_STEP
    # Two steps (a step is at least WRITEBACK_STEP: it ends with the read that crossed it),
    # one after the other from the start, of bytes already written; the rest is the fsync's.
    assert len(started) == 2
    assert [offset for offset, *_ in started] == [0, started[0][1]]
    assert all(step <= length < step + 100_000 for _, length, *_ in started)
    assert all(flags == 2 and written for *_, flags, written in started)
    assert (files.root / key[:2] / key).read_bytes() == data


def test_put_without_sync_file_range_still_writes_durably(
    files: FileBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import media_service.storage.files as files_module

    monkeypatch.setattr(files_module, "_SYNC_FILE_RANGE", None)  # not Linux
    data = payload(files_module.WRITEBACK_STEP + MiB)
    key = new_key()
    files.put(key, ShortReads(data))
    assert (files.root / key[:2] / key).read_bytes() == data


def test_sync_file_range_is_found_on_linux() -> None:
    import sys

    import media_service.storage.files as files_module

    if sys.platform.startswith("linux"):
        assert files_module._SYNC_FILE_RANGE is not None


def test_failed_fsync_is_unavailable_and_removes_the_temp_file(
    files: FileBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    def full_disk(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    key = new_key()
    with pytest.raises(BackendUnavailable) as raised:
        files.put(key, ShortReads(b"data"))
    assert str(files.root) not in str(raised.value)  # no paths in messages
    assert list((files.root / ".tmp").iterdir()) == []
    with pytest.raises(BlobNotFound):
        files.open(key)


def test_failed_directory_fsync_leaves_no_blob(
    files: FileBlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_fsync = os.fsync

    def failing_dir_fsync(fd: int) -> None:
        if stat.S_ISDIR(os.fstat(fd).st_mode):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", failing_dir_fsync)
    key = new_key()
    with pytest.raises(BackendUnavailable):
        files.put(key, ShortReads(b"data"))
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert list(files.list_blobs()) == []
    assert list((files.root / ".tmp").iterdir()) == []


def test_failing_source_removes_the_temp_file(files: FileBlobStore) -> None:
    source = FailingSource(payload(3 * MiB), 2 * MiB)
    with pytest.raises(SourceBroke):
        files.put(new_key(), source)
    assert list((files.root / ".tmp").iterdir()) == []


def test_remove_stale_temp(files: FileBlobStore) -> None:
    assert files.remove_stale_temp(3600) == 0  # no temp dir yet
    files.put(new_key(), ShortReads(b"creates .tmp"))
    temp = files.root / ".tmp"
    stale, fresh = temp / "a.1.part", temp / "b.2.part"
    stale.write_bytes(b"old")
    fresh.write_bytes(b"new")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))

    assert files.remove_stale_temp(3600) == 1

    assert not stale.exists()
    assert fresh.exists()


def test_remove_stale_temp_keeps_the_temp_files_of_live_uploads(files: FileBlobStore) -> None:
    """With `referenced`, a temp file goes when no document names its key (its upload is
    dead: documents are written first), and stays, however old, while one does."""
    live_key, dead_key = new_key(), new_key()
    temp = files.root / ".tmp"
    temp.mkdir()
    live, dead = temp / f"{live_key}.1.part", temp / f"{dead_key}.2.part"
    foreign = temp / ".not-a-key"
    long_ago = time.time() - 7 * 86400
    for path in (live, dead, foreign):
        path.write_bytes(b"half an upload")
        os.utime(path, (long_ago, long_ago))
    asked: list[list[str]] = []

    def referenced(keys: list[str]) -> set[str]:
        asked.append(sorted(keys))
        return {live_key} & set(keys)

    assert files.remove_stale_temp(3600, referenced=referenced) == 2
    assert live.exists() and not dead.exists() and not foreign.exists()
    assert asked == [sorted([live_key, dead_key])]
    fresh = temp / f"{new_key()}.3.part"
    fresh.write_bytes(b"just started")
    assert files.remove_stale_temp(3600, referenced=referenced) == 1  # unreferenced: dead now


def test_list_blobs_skips_temp_and_foreign_files(files: FileBlobStore) -> None:
    key = new_key()
    files.put(key, ShortReads(b"mine"))
    (files.root / ".tmp" / f"{new_key()}.x.part").write_bytes(b"partial")
    (files.root / key[:2] / "README.txt").write_text("not a blob in this shard")
    (files.root / key[:2] / f"{key[:2]}-dir").mkdir()
    (files.root / "stray-file").write_text("x")

    assert [b.key for b in files.list_blobs()] == [key]


def test_stream_exposes_file_and_length_for_sendfile(files: FileBlobStore) -> None:
    key, data = new_key(), payload(3 * MiB)
    files.put(key, ShortReads(data))

    with files.open(key, 10, 100) as stream:
        assert stream.length == 100
        assert stream.file.tell() == 10
        # sendfile starts from the descriptor's own offset
        assert os.lseek(stream.file.fileno(), 0, os.SEEK_CUR) == 10
        assert os.pread(stream.file.fileno(), stream.length, 10) == data[10:110]

    with files.open(key, len(data) - 5, 100) as stream:
        assert stream.length == 5  # clamped to the end
    with files.open(key, len(data) + 5) as stream:
        assert stream.length == 0
    stream = files.open(key)
    assert stream.length == len(data)
    stream.close()
    assert stream.file.closed


def test_ping_fails_when_the_root_is_not_a_directory(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    with pytest.raises(BackendUnavailable):
        FileBlobStore(not_a_dir).ping()


# --------------------------------------------------------------------------- s3


@pytest.fixture
def moto() -> Iterator[None]:
    with mock_aws():
        yield


def s3_store(storage_url: str = "s3://specific", **changes: Any) -> S3BlobStore:
    store = S3BlobStore.from_settings(settings_for(storage_url, **changes))
    store.client.create_bucket(Bucket=store.bucket)
    return store


@pytest.mark.parametrize(
    ("url", "bucket", "prefix"),
    [
        ("s3://media", "media", ""),
        ("s3://media/", "media", ""),
        ("s3://media/blobs", "media", "blobs/"),
        ("s3://media/a/b/", "media", "a/b/"),
    ],
)
def test_from_settings_parses_bucket_and_prefix(url: str, bucket: str, prefix: str) -> None:
    store = S3BlobStore.from_settings(settings_for(url))
    assert (store.bucket, store.prefix, store.store_id) == (bucket, prefix, "s3")
    store.close()


def test_from_settings_client_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")
    settings = settings_for("s3://media", backend_timeout=2.5, s3_max_pool_connections=7)
    store = S3BlobStore.from_settings(settings)
    config = store.client.meta.config

    assert store.client.meta.endpoint_url == "http://127.0.0.1:9"
    assert store.client.meta.region_name == "us-east-1"
    assert config.s3 == {"addressing_style": "path"}
    assert (config.connect_timeout, config.read_timeout) == (2.5, 2.5)
    # botocore's max_attempts counts retries: 3 of them after the first attempt
    assert config.retries == {"total_max_attempts": 4, "mode": "standard"}
    assert config.max_pool_connections == 7
    assert config.request_checksum_calculation == "when_required"
    assert config.response_checksum_validation == "when_required"
    store.close()


@pytest.mark.parametrize("value", ["0", "-1", "many"])
def test_settings_reject_a_bad_pool_size(value: str) -> None:
    environ = {"MEDIA_STORAGE_URL": "s3://media", "MEDIA_S3_MAX_POOL_CONNECTIONS": value}
    with pytest.raises(ConfigError, match="MEDIA_S3_MAX_POOL_CONNECTIONS"):
        Settings.from_env(environ)


def test_settings_bound_uploads_to_what_s3s_part_limit_allows() -> None:
    """Uploads stream to S3 in S3_PART_BYTES parts, and S3 takes 10,000 parts at most: a larger
    MEDIA_MAX_UPLOAD_BYTES would fail at part 10,001, after 48.8 GiB, so start-up refuses it."""
    largest = S3_PART_BYTES * S3_MAX_PARTS
    settings_for("s3://media", max_upload_bytes=largest).validate()
    with pytest.raises(ConfigError, match="MEDIA_MAX_UPLOAD_BYTES: at most 52428800000"):
        settings_for("s3://media", max_upload_bytes=largest + 1).validate()
    settings_for("file:///srv/media", max_upload_bytes=largest + 1).validate()  # no such limit


def test_prefix_scopes_keys_and_listing(moto: None) -> None:
    store = s3_store("s3://shared/tenant/a")
    key = new_key()
    store.put(key, ShortReads(b"mine"))
    for foreign in ("tenant/ab", "tenant/a/sub/x", "other/x", key, "tenant/a/"):
        store.client.put_object(Bucket="shared", Key=foreign, Body=b"not mine")

    objects = store.client.list_objects_v2(Bucket="shared", Prefix="tenant/a/")["Contents"]
    assert f"tenant/a/{key}" in [o["Key"] for o in objects]
    assert [b.key for b in store.list_blobs()] == [key]
    assert read_all(store.open(key)) == b"mine"
    store.delete(key)
    assert store.client.get_object(Bucket="shared", Key=key)["Body"].read() == b"not mine"


def test_abort_stale_uploads_aborts_only_unreferenced_multipart_uploads(moto: None) -> None:
    """An open multipart upload of a dead upload (no document names its key) is aborted; a
    live one (its PENDING document is there) and other tenants' uploads are left alone."""
    store = s3_store("s3://shared/tenant/a")
    live_key, dead_key = new_key(), new_key()
    for object_key in (f"tenant/a/{live_key}", f"tenant/a/{dead_key}", f"other/{dead_key}"):
        store.client.create_multipart_upload(Bucket="shared", Key=object_key)

    def referenced(keys: list[str]) -> set[str]:
        return {live_key} & set(keys)

    # moto reports a fixed Initiated time (2010), so only "older than now" is checked here.
    assert store.abort_stale_uploads(datetime.now(UTC) + timedelta(hours=1), referenced) == 1
    open_keys = sorted(
        u["Key"] for u in store.client.list_multipart_uploads(Bucket="shared").get("Uploads", [])
    )
    assert open_keys == sorted([f"tenant/a/{live_key}", f"other/{dead_key}"])


def test_list_blobs_paginates(moto: None) -> None:
    store = s3_store()
    keys = {f"k{i:03d}" for i in range(25)}
    for key in keys:
        store.client.put_object(Bucket=store.bucket, Key=key, Body=b"")
    pages: list[int] = []

    def small_pages(params: dict[str, Any], **_: Any) -> None:
        params["MaxKeys"] = 10  # three pages instead of a thousand objects
        pages.append(1)

    store.client.meta.events.register("provide-client-params.s3.ListObjectsV2", small_pages)
    assert {b.key for b in store.list_blobs()} == keys
    assert len(pages) == 3


@pytest.mark.parametrize(
    ("start", "length", "header"),
    [
        (0, None, None),
        (5, None, "bytes=5-"),
        (5, 10, "bytes=5-14"),
        (0, 10, "bytes=0-9"),
        (0, 1, "bytes=0-0"),
    ],
)
def test_range_header(moto: None, start: int, length: int | None, header: str | None) -> None:
    store = s3_store()
    key = new_key()
    store.put(key, ShortReads(payload(100)))
    sent: list[str | None] = []

    def capture(request: Any, **_: Any) -> None:
        value = request.headers.get("Range")
        sent.append(value.decode() if isinstance(value, bytes) else value)

    store.client.meta.events.register("before-send.s3.GetObject", capture)
    read_all(store.open(key, start, length))
    assert sent == [header]


def test_empty_range_sends_no_get(moto: None) -> None:
    store = s3_store()
    key = new_key()
    store.put(key, ShortReads(b"abc"))
    gets: list[object] = []
    store.client.meta.events.register("before-send.s3.GetObject", lambda **kw: gets.append(kw))

    assert read_all(store.open(key, 1, 0)) == b""
    assert gets == []


def test_missing_bucket_is_unavailable_not_missing_blob(moto: None) -> None:
    store = S3BlobStore.from_settings(settings_for("s3://never-created"))
    for operation in (store.ping, lambda: store.open(new_key()), lambda: list(store.list_blobs())):
        with pytest.raises(BackendUnavailable):
            operation()
    with pytest.raises(BackendUnavailable):
        store.put(new_key(), ShortReads(b"x"))


@pytest.mark.parametrize(
    ("code", "status"),
    [("SlowDown", 503), ("InternalError", 500), ("AccessDenied", 403)],
)
def test_service_errors_are_unavailable(moto: None, code: str, status: int) -> None:
    store = s3_store()
    with Stubber(store.client) as stub:
        stub.add_client_error("get_object", service_error_code=code, http_status_code=status)
        stub.add_client_error("delete_object", service_error_code=code, http_status_code=status)
        stub.add_client_error("head_bucket", service_error_code=code, http_status_code=status)
        for operation in (
            lambda: store.open(new_key()),
            lambda: store.delete(new_key()),
            store.ping,
        ):
            with pytest.raises(BackendUnavailable) as raised:
                operation()
            assert code in raised.value.detail


def test_timeout_mid_body_is_unavailable() -> None:
    class TimingOutBody:
        closed = False

        def iter_chunks(self, size: int) -> Iterator[bytes]:
            yield b"x" * size
            raise ReadTimeoutError(endpoint_url="http://127.0.0.1:9/b/k")

        def close(self) -> None:
            self.closed = True

    body = TimingOutBody()
    stream = S3BlobStream(body)
    with pytest.raises(BackendUnavailable):
        list(stream)
    stream.close()
    assert body.closed


def test_short_body_reads_are_regrouped_into_mib_chunks() -> None:
    class DribblingBody:
        def iter_chunks(self, size: int) -> Iterator[bytes]:
            for _ in range(40):
                yield b"y" * 100_000

        def close(self) -> None:
            pass

    sizes = [len(chunk) for chunk in S3BlobStream(DribblingBody())]
    assert sizes == [MiB, MiB, MiB, 4_000_000 - 3 * MiB]


def test_failed_completion_leaves_no_upload_and_no_object(moto: None) -> None:
    store = s3_store()
    key = new_key()

    def lose_the_answer(**_: Any) -> None:
        raise ReadTimeoutError(endpoint_url="http://127.0.0.1:9/specific")

    # The server completes the upload but the answer never arrives: the object exists.
    store.client.meta.events.register("after-call.s3.CompleteMultipartUpload", lose_the_answer)
    with pytest.raises(BackendUnavailable):
        store.put(key, ShortReads(payload(17 * MiB)))

    assert store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []
    assert list(store.list_blobs()) == []


def test_upload_memory_is_bounded_by_the_transfer_config(moto: None) -> None:
    store = s3_store()
    config = store._transfer
    assert config.multipart_chunksize == 5 * MiB == S3_PART_BYTES
    assert config.max_request_concurrency <= 4
    assert config.max_in_memory_upload_chunks <= 4
    assert config.preferred_transfer_client == "classic"


class Zeros:
    """`size` zero bytes, counted as they are read."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        size = min(MiB if size < 0 else size, self.size - self.read_bytes)
        self.read_bytes += size
        return bytes(size)


def test_upload_reads_ahead_a_bounded_amount(moto: None) -> None:
    store = s3_store()
    part = S3_PART_BYTES
    source = Zeros(12 * part)
    done: list[int] = []
    ahead: list[int] = []

    def slow_part(**_: Any) -> None:
        time.sleep(0.02)  # a network slower than the client, the case that needs a bound
        ahead.append(source.read_bytes - len(done) * part)

    store.client.meta.events.register("provide-client-params.s3.UploadPart", slow_part)
    store.client.meta.events.register("after-call.s3.UploadPart", lambda **_: done.append(1))

    assert store.put(new_key(), source).size == 12 * part

    # 2 parts in memory, the one being read, and the part whose call is starting: s3transfer's
    # default would allow 11.
    assert max(ahead) <= 4 * part


@pytest.mark.parametrize("step", [MiB, 300_000])  # whole chunks; chunks that straddle parts
def test_upload_of_lent_views_stores_every_byte_once(moto: None, step: int) -> None:
    from media_service.service.streams import HashingReader
    from tests.service.test_hashing_reader import ReadsInto

    data = payload(3 * S3_PART_BYTES + 123_457, seed=step)
    source = HashingReader(ReadsInto(data, step), max_bytes=len(data))
    store = s3_store()
    key = new_key()
    assert store.put(key, source).size == len(data)
    body = store.client.get_object(Bucket=store.bucket, Key=key)["Body"].read()
    assert body == data
    assert source.md5_hex == hashlib.md5(data).hexdigest()


def test_failed_part_stops_reading_the_source(moto: None) -> None:
    def fail_part_two(params: dict[str, Any], **_: Any) -> None:
        if params["PartNumber"] == 2:
            raise ReadTimeoutError(endpoint_url="http://127.0.0.1:9/specific")

    store = s3_store()
    store.client.meta.events.register("provide-client-params.s3.UploadPart", fail_part_two)
    source = Zeros(200 * MiB)

    with pytest.raises(BackendUnavailable):
        store.put(new_key(), source)

    # Not the whole body: at most what the bounded read-ahead allowed past the failure.
    assert source.read_bytes <= 8 * S3_PART_BYTES
    assert store.client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []
    assert list(store.list_blobs()) == []
