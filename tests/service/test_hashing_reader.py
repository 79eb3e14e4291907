"""HashingReader: the same digests whether chunks are hashed inline or on background threads."""

from __future__ import annotations

import gc
import hashlib
import io
import os
import threading
import time
from typing import Any

import pytest

from media_service.errors import UploadTooLarge
from media_service.service import streams
from media_service.service.streams import HashingReader


@pytest.mark.parametrize("size", [0, 1, 4096, 256 * 1024 - 1, 256 * 1024, 3 * 1024 * 1024 + 17])
def test_digests_and_size_match_hashlib(size: int) -> None:
    data = os.urandom(size)
    reader = HashingReader(io.BytesIO(data), max_bytes=size)
    copied = b"".join(iter(lambda: reader.read(1024 * 1024), b""))
    assert copied == data and reader.size == size
    assert reader.md5_hex == hashlib.md5(data).hexdigest()
    assert reader.sha256_hex == hashlib.sha256(data).hexdigest()
    assert reader.md5_hex == hashlib.md5(data).hexdigest()  # asking twice is fine
    assert reader.head == data[: streams.SNIFF_BYTES]


def test_small_reads_after_large_ones_keep_their_order() -> None:
    data = os.urandom(2 * 1024 * 1024)
    reader = HashingReader(io.BytesIO(data), max_bytes=len(data))
    parts = [reader.read(1024 * 1024), reader.read(10), reader.read(100_000), reader.read()]
    parts.append(reader.read())
    assert b"".join(parts) == data
    assert reader.sha256_hex == hashlib.sha256(data).hexdigest()


def _threads(reader: HashingReader) -> list[threading.Thread]:
    hashes = (reader._md5, reader._sha256)
    return [h._thread for h in hashes if isinstance(h, streams._BackgroundHash)]


def test_background_threads_end_with_the_digest_or_the_reader() -> None:
    data = os.urandom(1024 * 1024)
    finished = HashingReader(io.BytesIO(data), max_bytes=len(data))
    finished.read()
    threads = _threads(finished)
    assert len(threads) == 2 and all(t.is_alive() for t in threads)
    assert finished.md5_hex and finished.sha256_hex
    assert not any(t.is_alive() for t in threads)

    abandoned = HashingReader(io.BytesIO(data * 2), max_bytes=len(data))
    abandoned.read()
    threads = _threads(abandoned)
    assert len(threads) == 2
    with pytest.raises(UploadTooLarge):
        abandoned.read()
    del abandoned
    gc.collect()
    for thread in threads:
        thread.join(timeout=5)
    assert not any(t.is_alive() for t in threads)


class ReadsInto:
    """A source with readinto (a multipart file part): each read fills up to `step` bytes."""

    def __init__(self, data: bytes, step: int) -> None:
        self._data = memoryview(data)
        self._pos = 0
        self._step = step

    def read(self, size: int = -1, /) -> bytes:
        raise AssertionError("readview must use readinto")

    def readinto(self, buffer: bytearray | memoryview) -> int:
        chunk = self._data[self._pos : self._pos + min(len(buffer), self._step)]
        buffer[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)


@pytest.mark.parametrize("step", [1024 * 1024, 300_000, 4096])
@pytest.mark.parametrize("size", [0, 5000, 256 * 1024, 9 * 1024 * 1024 + 7])
def test_readview_yields_and_hashes_what_read_would(size: int, step: int) -> None:
    data = os.urandom(size)
    reader = HashingReader(ReadsInto(data, step), max_bytes=size)
    copied = bytearray()
    while chunk := reader.readview():
        assert chunk.readonly
        copied += chunk
    assert bytes(copied) == data and reader.size == size
    assert reader.md5_hex == hashlib.md5(data).hexdigest()
    assert reader.sha256_hex == hashlib.sha256(data).hexdigest()
    assert reader.head == data[: streams.SNIFF_BYTES]
    assert len(reader._buffers) <= streams._VIEW_BUFFERS  # reused, not one per chunk


def test_readview_never_refills_a_buffer_a_hash_thread_has_not_read(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A slow MD5 thread: the request thread waits for it before it reuses that chunk's
    buffer, so the digest is of the bytes received, not of what later overwrote them. Two
    buffers instead of six, so that the hash queue's own bound cannot be what protects them."""

    class SlowHash:
        def __init__(self, inner: Any) -> None:
            self.inner = inner

        def update(self, data: Any) -> None:
            time.sleep(0.005)  # the thread holds the chunk, still unhashed
            self.inner.update(data)

        def hexdigest(self) -> str:
            return str(self.inner.hexdigest())

    real_run = streams._BackgroundHash._run

    def slow_run(hash_: Any, chunks: Any, returned: Any) -> None:
        real_run(SlowHash(hash_) if hash_.name == "md5" else hash_, chunks, returned)

    monkeypatch.setattr(streams._BackgroundHash, "_run", staticmethod(slow_run))
    monkeypatch.setattr(streams, "_VIEW_BUFFERS", 2)
    data = os.urandom(12 * 1024 * 1024)
    reader = HashingReader(ReadsInto(data, 1024 * 1024), max_bytes=len(data))
    total = 0
    while chunk := reader.readview():
        total += len(chunk)
    assert total == len(data) and len(reader._buffers) == 2
    assert reader.md5_hex == hashlib.md5(data).hexdigest()
    assert reader.sha256_hex == hashlib.sha256(data).hexdigest()


def test_readview_without_readinto_falls_back_to_read() -> None:
    data = os.urandom(3 * 1024 * 1024)
    reader_without = HashingReader(
        type("R", (), {"read": io.BytesIO(data).read})(), max_bytes=len(data)
    )
    copied = bytearray()
    while chunk := reader_without.readview():
        copied += chunk
    assert bytes(copied) == data
    assert reader_without.md5_hex == hashlib.md5(data).hexdigest()
