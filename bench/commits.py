"""What a counted download costs the database: evidence for items 5 and 7.

Every counted download is one SQLite transaction (the conditional UPDATE). The service commits
counts with `synchronous = NORMAL` (WAL: durable at the next checkpoint; a process crash loses
nothing) and its other writes with FULL (an fsync of the WAL each). Two probes, run on the disk
the service's data directory is on:

* the latency of a 4 KiB write + fsync, which bounds serial commits per second;
* the repository's own `count_download` in a loop, on the service's own connection settings,
  and again after `PRAGMA synchronous = NORMAL` on that connection (WAL's usual setting:
  a commit is durable at the next checkpoint rather than at once).
"""

from __future__ import annotations

import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from bench.measure import median, percentile
from media_service.storage.interfaces import ItemState, MediaItem
from media_service.storage.sqlite import SqliteDatabase, SqliteMediaRepository


def fsync_latency_ms(directory: Path, writes: int = 200) -> tuple[float, float]:
    """(p50, p95) milliseconds of a 4 KiB pwrite + fsync of a file in `directory`."""
    path = directory / f"fsync-probe-{uuid.uuid4().hex}"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    timings = []
    try:
        for i in range(writes):
            os.pwrite(fd, os.urandom(4096), (i % 16) * 4096)
            started = time.perf_counter()
            os.fsync(fd)
            timings.append((time.perf_counter() - started) * 1000)
    finally:
        os.close(fd)
        path.unlink()
    return median(timings), percentile(timings, 95)


def count_rates(directory: Path, seconds: float = 1.5) -> dict[str, float]:
    """Serial count_download() calls per second with synchronous FULL, then NORMAL."""
    database = SqliteDatabase(directory / "count-probe.db")
    repository = SqliteMediaRepository(database)
    try:
        repository.prepare_database()
        now = datetime.now(UTC).replace(microsecond=0)
        item_id = str(uuid.uuid4())
        repository.insert(
            MediaItem(
                id=item_id,
                account_id="probe",
                application_id=None,
                original_file_name="probe.bin",
                mime_type="application/octet-stream",
                store_id="file",
                store_meta_params={},
                max_downloads_allowed=1_000_000_000,
                times_downloaded=0,
                etag="0" * 32,
                media_size=1024,
                time_created=now,
                time_last_updated=now,
                time_content_modified=now,
                public=True,
                state=ItemState.READY,
            )
        )
        rates = {}
        for mode in ("FULL", "NORMAL"):
            # The same connection the repository uses in this thread; only its sync mode changes.
            database.connection().execute(f"PRAGMA synchronous = {mode}")
            calls = 0
            started = time.perf_counter()
            while time.perf_counter() - started < seconds:
                repository.count_download(item_id, enforce_limit=True)
                calls += 1
            rates[mode] = calls / (time.perf_counter() - started)
        return rates
    finally:
        database.close()
        for suffix in ("", "-wal", "-shm"):
            (directory / f"count-probe.db{suffix}").unlink(missing_ok=True)


def evidence(directory: Path) -> tuple[str, dict[str, float]]:
    """One sentence with both probes' results, and the count rates by synchronous mode."""
    p50, p95 = fsync_latency_ms(directory)
    rates = count_rates(directory)
    text = (
        f"On this disk a 4 KiB write + fsync takes p50 {p50:.2f} ms / p95 {p95:.2f} ms "
        f"(at most ~{1000 / p50:,.0f} serial commits/s). The repository's count_download() "
        f"alone, serially in one thread: {rates['FULL']:,.0f}/s with synchronous=FULL, "
        f"{rates['NORMAL']:,.0f}/s with synchronous=NORMAL (the service's setting for counts) "
        "on the same connection."
    )
    return text, rates
