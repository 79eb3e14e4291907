"""HashingReader: the same digests whether chunks are hashed inline or on background threads."""

from __future__ import annotations

import gc
import hashlib
import io
import os
import threading

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
