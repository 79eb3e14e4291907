"""MongoDB specifics, on mongomock and (when configured) on a real server: adapter-only fields."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import mongomock
import pytest

from media_service.storage.interfaces import CountOutcome, ItemState
from media_service.storage.mongo import MongoDatabase, MongoMediaRepository
from tests.contract.test_media_repository import MONGO_URL, T0, add, make_item, mongo_settings

BACKENDS: list[Any] = ["mongomock"]
if MONGO_URL:
    BACKENDS.append(pytest.param("mongo-real", marks=pytest.mark.mongo))


@pytest.fixture(params=BACKENDS)
def repo(request: pytest.FixtureRequest) -> Iterator[MongoMediaRepository]:
    if request.param == "mongomock":
        client: Any = mongomock.MongoClient(tz_aware=True)
        repository = MongoMediaRepository(MongoDatabase.wrap(client["media_test"]))
        repository.prepare_database()
        yield repository
        return
    assert MONGO_URL
    name = f"media_test_{uuid.uuid4().hex[:12]}"
    db = MongoDatabase.from_settings(mongo_settings(MONGO_URL, name))
    repository = MongoMediaRepository(db)
    repository.prepare_database()
    yield repository
    db.database.client.drop_database(name)
    db.close()


def raw(repo: MongoMediaRepository, item_id: str) -> dict[str, Any]:
    doc = repo.db.collection("media_items").find_one({"_id": item_id})
    assert doc is not None
    return doc


# --------------------------------------------------------------------------- downloads_left


def test_downloads_left_follows_the_limit_and_never_reaches_the_item(
    repo: MongoMediaRepository,
) -> None:
    limited = add(repo, max_downloads_allowed=4, times_downloaded=1)
    unlimited = add(repo)
    assert raw(repo, limited.id)["downloads_left"] == 3
    assert "downloads_left" not in raw(repo, unlimited.id)
    assert repo.get(limited.id) == limited  # the field is the adapter's, not the item's

    repo.count_download(limited.id, enforce_limit=True)
    repo.count_download(unlimited.id, enforce_limit=True)
    assert raw(repo, limited.id)["downloads_left"] == 2
    assert "downloads_left" not in raw(repo, unlimited.id)

    repo.update(limited.id, {"max_downloads_allowed": 0}, T0)
    repo.update(unlimited.id, {"max_downloads_allowed": 3}, T0)
    assert "downloads_left" not in raw(repo, limited.id)
    assert raw(repo, unlimited.id)["downloads_left"] == 2  # 3 allowed, 1 done


def store_as_before_downloads_left(repo: MongoMediaRepository, **fields: Any) -> str:
    """Write an item the way the adapter did before downloads_left existed."""
    item = make_item(**fields)
    repo.insert(item)
    repo.db.collection("media_items").update_one(
        {"_id": item.id}, {"$unset": {"downloads_left": ""}}
    )
    repo.db.collection("media_meta").delete_one({"_id": "downloads_left"})  # nor its backfill
    return item.id


def test_prepare_database_backfills_downloads_left_idempotently(repo: MongoMediaRepository) -> None:
    old = store_as_before_downloads_left(repo, max_downloads_allowed=5, times_downloaded=2)
    hidden = store_as_before_downloads_left(repo, max_downloads_allowed=2, state=ItemState.PENDING)
    unlimited = store_as_before_downloads_left(repo)
    repo.prepare_database()
    repo.prepare_database()
    assert raw(repo, old)["downloads_left"] == 3
    assert repo.db.collection("media_meta").find_one({"_id": "downloads_left"})
    assert raw(repo, hidden)["downloads_left"] == 2
    assert "downloads_left" not in raw(repo, unlimited)
    outcomes = [repo.count_download(old, enforce_limit=True).outcome for _ in range(4)]
    assert outcomes == [CountOutcome.COUNTED] * 3 + [CountOutcome.LIMIT_REACHED]


def test_an_item_not_yet_backfilled_still_counts_up_to_its_limit(
    repo: MongoMediaRepository,
) -> None:
    old = store_as_before_downloads_left(repo, max_downloads_allowed=2, times_downloaded=1)
    first = repo.count_download(old, enforce_limit=True)
    second = repo.count_download(old, enforce_limit=True)
    assert (first.outcome, second.outcome) == (CountOutcome.COUNTED, CountOutcome.LIMIT_REACHED)
    assert first.times_downloaded == 2
    assert raw(repo, old)["downloads_left"] == 0


def test_an_unenforced_count_of_an_item_not_yet_backfilled_keeps_what_is_left(
    repo: MongoMediaRepository,
) -> None:
    old = store_as_before_downloads_left(repo, max_downloads_allowed=4, times_downloaded=1)
    assert repo.count_download(old, enforce_limit=False).outcome is CountOutcome.COUNTED
    assert raw(repo, old)["downloads_left"] == 2
    outcomes = [repo.count_download(old, enforce_limit=True).outcome for _ in range(3)]
    assert outcomes == [CountOutcome.COUNTED] * 2 + [CountOutcome.LIMIT_REACHED]
