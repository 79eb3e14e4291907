"""Workers starting together set up one fresh database at the same moment.

gunicorn forks its workers at once and each runs prepare_database. FerretDB 1.x fails the second
of two concurrent index creations (and reports a clash while the search-count build drops and
re-creates its collection), which once kept a worker from booting. On a fresh SQLite file, one
worker's switch to WAL or its table creation lost to another's with "database is locked"
without waiting, and the worker answered 503 until its set-up was retried. Processes, not
threads: each has its own client or connections, as workers do.
"""

from __future__ import annotations

import multiprocessing
import time
import traceback
from pathlib import Path

import pytest

from tests.integration.conftest import fresh_mongo_database

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROUNDS = 5
WORKERS = 6


def _set_up_database(url: str, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    try:
        from media_service.settings import Settings
        from media_service.storage.mongo import MongoDatabase, MongoMediaRepository

        settings = Settings.from_env({"MEDIA_DATABASE_URL": url})
        MongoMediaRepository(MongoDatabase.from_settings(settings)).prepare_database()
        results.put("ok")
    except Exception:
        results.put(traceback.format_exc(limit=3))


@pytest.mark.mongo
@pytest.mark.parametrize("round_number", range(ROUNDS))
def test_workers_set_up_one_fresh_database_at_once(round_number: int) -> None:
    context = multiprocessing.get_context("spawn")
    with fresh_mongo_database() as url:
        results = context.Queue()
        workers = [
            context.Process(target=_set_up_database, args=(url, results)) for _ in range(WORKERS)
        ]
        for worker in workers:
            worker.start()
        outcomes = [results.get(timeout=120) for _ in workers]
        for worker in workers:
            worker.join(timeout=30)
    assert [outcome for outcome in outcomes if outcome != "ok"] == []


def _set_up_sqlite(data_dir: str, go: object, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    try:
        from media_service.backends import open_backends
        from media_service.settings import Settings

        settings = Settings.from_env({"MEDIA_DATA_DIR": data_dir, "MEDIA_BACKEND_TIMEOUT": "10"})
        go.wait(60)  # type: ignore[attr-defined]
        started = time.monotonic()
        backends = open_backends(settings)  # prepares the database: raises if it cannot
        backends.close()
        results.put(("ok", time.monotonic() - started))
    except Exception:
        results.put((traceback.format_exc(limit=5), 0.0))


@pytest.mark.parametrize("round_number", range(ROUNDS))
def test_workers_set_up_one_fresh_sqlite_file_at_once(round_number: int, tmp_path: Path) -> None:
    """None fails, and none waits anywhere near the backend timeout: they queue for the lock."""
    context = multiprocessing.get_context("spawn")
    results = context.Queue()
    go = context.Event()
    workers = [
        context.Process(target=_set_up_sqlite, args=(str(tmp_path), go, results))
        for _ in range(WORKERS)
    ]
    for worker in workers:
        worker.start()
    time.sleep(1.0)  # let every process import and wait at the start line
    go.set()
    outcomes = [results.get(timeout=120) for _ in workers]
    for worker in workers:
        worker.join(timeout=30)
    assert [outcome for outcome, _ in outcomes if outcome != "ok"] == []
    assert max(seconds for _, seconds in outcomes) < 5.0
