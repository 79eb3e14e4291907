"""Workers starting together set up one fresh MongoDB database at the same moment.

gunicorn forks its workers at once and each runs prepare_database; FerretDB 1.x fails the second of
two concurrent index creations (and reports a clash while the search-count build drops and
re-creates its collection), which once kept a worker from booting. Processes, not threads: each
has its own client, as workers do.
"""

from __future__ import annotations

import multiprocessing
import traceback

import pytest

from tests.integration.conftest import fresh_mongo_database

pytestmark = [pytest.mark.integration, pytest.mark.mongo, pytest.mark.timeout(300)]

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
