"""One contract for every MediaRepository: SQLite, mongomock, and real MongoDB when configured."""

from __future__ import annotations

import multiprocessing
import os
import socket
import sqlite3
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import mongomock
import pytest

from media_service.settings import Settings
from media_service.storage import mongo, sqlite
from media_service.storage.interfaces import (
    AlreadyExists,
    BackendUnavailable,
    CountOutcome,
    ItemState,
    MediaItem,
    MediaRepository,
    SearchQuery,
    SearchScope,
    Usage,
)
from media_service.storage.mongo import MongoDatabase, MongoMediaRepository
from media_service.storage.sqlite import SqliteDatabase, SqliteMediaRepository

MONGO_URL = os.environ.get("MEDIA_TEST_MONGO_URL")
BACKENDS: list[Any] = ["sqlite", "mongomock"]
if MONGO_URL:
    BACKENDS.append(pytest.param("mongo-real", marks=pytest.mark.mongo))

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


def mongo_settings(url: str, db_name: str, timeout: float = 5.0) -> Settings:
    """Settings pointing at database `db_name` on the server of `url`."""
    base = url.split("?", 1)[0].rstrip("/")
    if base.count("/") > 2:  # drop a database name already in the URL
        base = base.rsplit("/", 1)[0]
    query = "?" + url.split("?", 1)[1] if "?" in url else ""
    return Settings(
        database_url=f"{base}/{db_name}{query}",
        storage_url="file:///unused",
        backend_timeout=timeout,
    )


@pytest.fixture(params=BACKENDS)
def repo(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[MediaRepository]:
    if request.param == "sqlite":
        # 10 s: the concurrency contracts have 8 threads queue for SQLite's one writer.
        db = SqliteDatabase(tmp_path / "media.db", timeout=10.0)
        repository: MediaRepository = SqliteMediaRepository(db)
        repository.prepare_database()
        yield repository
        db.close()
    elif request.param == "mongomock":
        client: Any = mongomock.MongoClient(tz_aware=True)
        repository = MongoMediaRepository(MongoDatabase.wrap(client["media_test"]))
        repository.prepare_database()
        yield repository
    else:
        assert MONGO_URL
        name = f"media_test_{uuid.uuid4().hex[:12]}"
        mdb = MongoDatabase.from_settings(mongo_settings(MONGO_URL, name))
        repository = MongoMediaRepository(mdb)
        repository.prepare_database()
        yield repository
        mdb.database.client.drop_database(name)
        mdb.close()


def make_item(**overrides: Any) -> MediaItem:
    """A READY item of account acc-a created at T0, with `overrides` applied."""
    item_id = overrides.pop("id", None) or str(uuid.uuid4())
    fields: dict[str, Any] = {
        "id": item_id,
        "account_id": "acc-a",
        "application_id": None,
        "original_file_name": "notes.txt",
        "mime_type": "text/plain",
        "store_id": "file",
        "store_meta_params": {"filesize": "3", "sha256": "abc"},
        "max_downloads_allowed": 0,
        "times_downloaded": 0,
        "etag": "0" * 32,
        "media_size": 3,
        "time_created": T0,
        "time_last_updated": T0,
        "time_content_modified": T0,
        "public": False,
        "state": ItemState.READY,
    }
    fields.update(overrides)
    return MediaItem(**fields)


def add(repo: MediaRepository, **overrides: Any) -> MediaItem:
    item = make_item(**overrides)
    repo.insert(item)
    return item


# --------------------------------------------------------------------------- insert / get


def test_insert_then_get_returns_the_same_item(repo: MediaRepository) -> None:
    item = make_item(
        application_id="app-1",
        metadata_primary='{"a": 1}',
        metadata_secondary="second",
        title="Title",
        description="Déscription ✓",
        source_url="https://example.com/a.txt",
        public=True,
        max_downloads_allowed=7,
    )
    repo.insert(item)
    assert repo.get(item.id) == item
    assert repo.get(str(uuid.uuid4())) is None


@pytest.mark.parametrize("state", [ItemState.PENDING, ItemState.DELETING])
def test_hidden_states_are_invisible_without_include_hidden(
    repo: MediaRepository, state: ItemState
) -> None:
    item = add(repo, state=state)
    assert repo.get(item.id) is None
    assert repo.get(item.id, include_hidden=True) == item


def test_duplicate_id_raises_already_exists(repo: MediaRepository) -> None:
    item = add(repo)
    with pytest.raises(AlreadyExists):
        repo.insert(replace(item, title="another item, the same id"))


def test_datetimes_round_trip_at_millisecond_precision_as_utc(repo: MediaRepository) -> None:
    local = timezone(timedelta(hours=2))
    created = datetime(2024, 5, 1, 14, 0, 0, 123456, tzinfo=local)
    item = add(repo, time_created=created, time_last_updated=created, time_content_modified=created)
    got = repo.get(item.id)
    assert got is not None
    expected = datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    for value in (got.time_created, got.time_last_updated, got.time_content_modified):
        assert value == expected
        assert value.utcoffset() == timedelta(0)
        assert value.microsecond == 123000


def test_naive_datetimes_are_refused(repo: MediaRepository) -> None:
    with pytest.raises(ValueError):
        repo.insert(make_item(time_created=datetime(2024, 5, 1, 12, 0)))


def test_non_string_ids_are_refused_not_used_as_operators(repo: MediaRepository) -> None:
    add(repo)
    with pytest.raises(TypeError):
        repo.get({"$ne": None})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        repo.count_download({"$gt": ""}, enforce_limit=False)  # type: ignore[arg-type]
    assert repo.get('{"$ne": null}') is None


def test_operator_like_strings_are_stored_as_values(repo: MediaRepository) -> None:
    item = add(repo, title="$set", metadata_primary='{"$where": "1"}')
    updated = repo.update(item.id, {"description": "$inc", "title": "$unset"}, T0 + MINUTE)
    assert updated is not None
    assert (updated.title, updated.description) == ("$unset", "$inc")
    assert updated.metadata_primary == '{"$where": "1"}'


# --------------------------------------------------------------------------- state changes


def test_mark_ready_only_from_pending(repo: MediaRepository) -> None:
    item = add(repo, state=ItemState.PENDING, etag="", media_size=0)
    later = T0 + MINUTE
    changes: dict[str, object] = {
        "etag": "f" * 32,
        "media_size": 10,
        "store_meta_params": {"filesize": "10"},
        "time_last_updated": later,
        "time_content_modified": later,
    }
    ready = repo.mark_ready(item.id, changes)
    assert ready is not None
    assert ready.state is ItemState.READY
    assert (ready.etag, ready.media_size, ready.store_meta_params) == (
        "f" * 32,
        10,
        {"filesize": "10"},
    )
    assert ready.time_content_modified == later
    assert repo.get(item.id) == ready
    assert repo.mark_ready(item.id, {}) is None  # already READY
    assert repo.mark_ready(str(uuid.uuid4()), {}) is None
    deleting = add(repo, state=ItemState.DELETING)
    assert repo.mark_ready(deleting.id, {}) is None


@pytest.mark.parametrize("field", ["id", "state", "account_id", "application_id", "bogus"])
def test_mark_ready_refuses_identity_and_unknown_fields(repo: MediaRepository, field: str) -> None:
    item = add(repo, state=ItemState.PENDING)
    with pytest.raises(ValueError):
        repo.mark_ready(item.id, {field: "x"})
    assert repo.get(item.id, include_hidden=True) == item


def test_update_changes_a_ready_item_and_moves_time_last_updated(repo: MediaRepository) -> None:
    item = add(repo)
    now = T0 + timedelta(hours=1, microseconds=5555)
    changes: dict[str, object] = {
        "title": "new",
        "public": True,
        "max_downloads_allowed": 3,
        "mime_type": "image/png",
        "metadata_primary": None,
    }
    updated = repo.update(item.id, changes, now)
    assert updated == replace(
        item,
        title="new",
        public=True,
        max_downloads_allowed=3,
        mime_type="image/png",
        time_last_updated=now.replace(microsecond=5000),
    )
    assert updated.etag == item.etag
    assert updated.time_content_modified == item.time_content_modified
    assert repo.get(item.id) == updated


def test_update_treats_null_max_downloads_as_unlimited(repo: MediaRepository) -> None:
    item = add(repo, max_downloads_allowed=5)
    updated = repo.update(item.id, {"max_downloads_allowed": None}, T0)
    assert updated is not None and updated.max_downloads_allowed == 0


@pytest.mark.parametrize("state", [ItemState.PENDING, ItemState.DELETING])
def test_update_ignores_hidden_and_missing_items(repo: MediaRepository, state: ItemState) -> None:
    item = add(repo, state=state)
    assert repo.update(item.id, {"title": "x"}, T0 + MINUTE) is None
    assert repo.get(item.id, include_hidden=True) == item
    assert repo.update(str(uuid.uuid4()), {"title": "x"}, T0) is None


@pytest.mark.parametrize(
    "changes",
    [
        {"etag": "1" * 32},
        {"times_downloaded": 0},
        {"account_id": "acc-b"},
        {"state": "ready"},
        {"title": "ok", "time_created": T0},
    ],
)
def test_update_refuses_fields_that_are_not_updatable(
    repo: MediaRepository, changes: dict[str, object]
) -> None:
    item = add(repo)
    with pytest.raises(ValueError):
        repo.update(item.id, changes, T0 + MINUTE)
    assert repo.get(item.id) == item


@pytest.mark.parametrize("value", [-1, 2**63, "3", True])
def test_update_refuses_bad_download_limits(repo: MediaRepository, value: object) -> None:
    item = add(repo)
    with pytest.raises((TypeError, ValueError)):
        repo.update(item.id, {"max_downloads_allowed": value}, T0)
    assert repo.get(item.id) == item


def test_mark_deleting_then_remove(repo: MediaRepository) -> None:
    item = add(repo)
    tombstone = repo.mark_deleting(item.id)
    assert tombstone == replace(item, state=ItemState.DELETING)
    assert repo.mark_deleting(item.id) is None
    assert repo.get(item.id) is None
    assert repo.get(item.id, include_hidden=True) == tombstone
    assert repo.remove(item.id) is True
    assert repo.remove(item.id) is False
    assert repo.get(item.id, include_hidden=True) is None


def test_mark_deleting_ignores_pending_items_and_remove_takes_any_state(
    repo: MediaRepository,
) -> None:
    pending = add(repo, state=ItemState.PENDING)
    assert repo.mark_deleting(pending.id) is None
    assert repo.remove(pending.id) is True


# --------------------------------------------------------------------------- counting


def counted_values(results: list[Any], expected: list[int | None]) -> list[int | None]:
    """`expected`, or Nones where an adapter does not report the value after the increment."""
    if all(r.times_downloaded is None for r in results):  # allowed by CountResult
        return [None] * len(expected)
    return expected


def test_count_without_a_limit_always_counts(repo: MediaRepository) -> None:
    item = add(repo, max_downloads_allowed=0)
    results = [repo.count_download(item.id, enforce_limit=True) for _ in range(5)]
    assert [r.outcome for r in results] == [CountOutcome.COUNTED] * 5
    values = [r.times_downloaded for r in results]
    assert values == counted_values(results, [1, 2, 3, 4, 5])
    got = repo.get(item.id)
    assert got is not None and got.times_downloaded == 5


def test_enforced_limit_counts_exactly_up_to_the_limit(repo: MediaRepository) -> None:
    item = add(repo, max_downloads_allowed=3)
    results = [repo.count_download(item.id, enforce_limit=True) for _ in range(5)]
    assert [r.outcome for r in results] == [CountOutcome.COUNTED] * 3 + [
        CountOutcome.LIMIT_REACHED
    ] * 2
    values = [r.times_downloaded for r in results]
    assert values == counted_values(results, [1, 2, 3, None, None])
    got = repo.get(item.id)
    assert got is not None and got.times_downloaded == 3


def test_unenforced_counts_go_past_the_limit(repo: MediaRepository) -> None:
    item = add(repo, max_downloads_allowed=1, times_downloaded=1)
    assert repo.count_download(item.id, enforce_limit=True).outcome is CountOutcome.LIMIT_REACHED
    result = repo.count_download(item.id, enforce_limit=False)
    assert result.outcome is CountOutcome.COUNTED
    assert result.times_downloaded in (2, None)
    assert repo.count_download(item.id, enforce_limit=False).times_downloaded in (3, None)
    got = repo.get(item.id)
    assert got is not None and got.times_downloaded == 3


def test_changing_the_limit_moves_what_is_left_to_count(repo: MediaRepository) -> None:
    def outcomes(n: int) -> list[CountOutcome]:
        return [repo.count_download(item.id, enforce_limit=True).outcome for _ in range(n)]

    counted, refused = CountOutcome.COUNTED, CountOutcome.LIMIT_REACHED
    item = add(repo, max_downloads_allowed=3)
    assert outcomes(2) == [counted] * 2
    assert repo.update(item.id, {"max_downloads_allowed": 5}, T0) is not None
    assert outcomes(4) == [counted] * 3 + [refused]
    assert repo.update(item.id, {"max_downloads_allowed": 1}, T0) is not None  # below the count
    assert outcomes(1) == [refused]
    assert repo.update(item.id, {"max_downloads_allowed": 0}, T0) is not None
    assert outcomes(2) == [counted] * 2
    assert repo.count_download(item.id, enforce_limit=False).outcome is counted
    assert repo.update(item.id, {"max_downloads_allowed": 10}, T0) is not None  # 8 so far
    assert outcomes(3) == [counted] * 2 + [refused]
    got = repo.get(item.id)
    assert got is not None and (got.times_downloaded, got.max_downloads_allowed) == (10, 10)


def test_completing_an_upload_may_set_the_limit_and_the_count(repo: MediaRepository) -> None:
    item = add(repo, state=ItemState.PENDING)
    ready = repo.mark_ready(item.id, {"max_downloads_allowed": 2, "times_downloaded": 1})
    assert ready is not None and ready.times_downloaded == 1
    first = repo.count_download(item.id, enforce_limit=True)
    second = repo.count_download(item.id, enforce_limit=True)
    assert (first.outcome, second.outcome) == (CountOutcome.COUNTED, CountOutcome.LIMIT_REACHED)


@pytest.mark.parametrize("enforce", [True, False])
def test_count_is_not_found_for_missing_and_hidden_items(
    repo: MediaRepository, enforce: bool
) -> None:
    pending = add(repo, state=ItemState.PENDING)
    deleting = add(repo, state=ItemState.DELETING)
    for item_id in (str(uuid.uuid4()), pending.id, deleting.id):
        result = repo.count_download(item_id, enforce_limit=enforce)
        assert result.outcome is CountOutcome.NOT_FOUND
        assert result.times_downloaded is None
    still = repo.get(pending.id, include_hidden=True)
    assert still is not None and still.times_downloaded == 0


# --------------------------------------------------------------------------- search


@dataclass
class Population:
    account: list[MediaItem]  # every READY item of acc-a
    app1: list[MediaItem]  # READY items of acc-a uploaded by app-1


@pytest.fixture
def population(repo: MediaRepository) -> Population:
    basic = [add(repo, time_created=T0 + i * MINUTE) for i in range(3)]
    app1 = [add(repo, application_id="app-1", time_created=T0 + i * MINUTE) for i in (1, 3)]
    # Three items created in the same millisecond: their order is decided by id.
    ties = [add(repo, application_id="app-1", time_created=T0 + 5 * MINUTE) for _ in range(3)]
    app2 = [add(repo, application_id="app-2", time_created=T0 + 2 * MINUTE)]
    add(repo, account_id="acc-b", time_created=T0 + MINUTE)
    add(repo, account_id="acc-b", application_id="app-b", time_created=T0 + MINUTE)
    add(repo, application_id="app-1", state=ItemState.PENDING, time_created=T0 + MINUTE)
    add(repo, application_id="app-1", state=ItemState.DELETING, time_created=T0 + MINUTE)
    add(repo, state=ItemState.PENDING, time_created=T0 + MINUTE)
    return Population(account=ordered(basic + app1 + ties + app2), app1=ordered(app1 + ties))


def ordered(items: list[MediaItem]) -> list[MediaItem]:
    return sorted(items, key=lambda item: (item.time_created, item.id))


def search(
    repo: MediaRepository,
    account: str = "acc-a",
    application: str | None = None,
    start: datetime = T0 - timedelta(days=7),
    end: datetime | None = None,
    ascending: bool = True,
    offset: int = 0,
    limit: int = 100,
) -> tuple[int, list[MediaItem]]:
    page = repo.search(
        SearchQuery(
            scope=SearchScope(account, application),
            start_time=start,
            end_time=end,
            ascending=ascending,
            offset=offset,
            limit=limit,
        )
    )
    return page.total, page.items


def test_search_by_account_sees_every_ready_item_of_the_account(
    repo: MediaRepository, population: Population
) -> None:
    total, items = search(repo)
    assert items == population.account
    assert total == len(population.account) == 9


def test_search_by_application_sees_only_its_items(
    repo: MediaRepository, population: Population
) -> None:
    total, items = search(repo, application="app-1")
    assert items == population.app1
    assert total == 5


def test_search_never_crosses_accounts(repo: MediaRepository, population: Population) -> None:
    assert search(repo, account="acc-b")[0] == 2
    assert search(repo, application="app-b") == (0, [])  # acc-b's application, acc-a's scope
    assert search(repo, account="acc-c") == (0, [])


def test_search_bounds_are_inclusive(repo: MediaRepository, population: Population) -> None:
    total, items = search(repo, start=T0 + MINUTE, end=T0 + 2 * MINUTE)
    assert items == [
        i for i in population.account if T0 + MINUTE <= i.time_created <= T0 + 2 * MINUTE
    ]
    assert total == len(items) == 4
    total, items = search(repo, start=T0 + 5 * MINUTE, end=T0 + 5 * MINUTE)
    assert total == 3


def test_search_without_end_runs_to_the_newest(
    repo: MediaRepository, population: Population
) -> None:
    total, items = search(repo, start=T0 + 3 * MINUTE, end=None)
    assert items == population.account[-4:]
    assert total == 4
    assert search(repo, start=T0 + 6 * MINUTE) == (0, [])


def test_search_descending_reverses_order_including_ties(
    repo: MediaRepository, population: Population
) -> None:
    total, items = search(repo, ascending=False)
    assert items == population.account[::-1]
    assert total == 9


@pytest.mark.parametrize("ascending", [True, False])
def test_search_pages_with_offset_and_limit(
    repo: MediaRepository, population: Population, ascending: bool
) -> None:
    pages = [search(repo, ascending=ascending, offset=offset, limit=4) for offset in (0, 4, 8, 12)]
    assert [total for total, _ in pages] == [9, 9, 9, 9]
    assert [len(items) for _, items in pages] == [4, 4, 1, 0]
    expected = population.account if ascending else population.account[::-1]
    assert [item for _, items in pages for item in items] == expected
    assert search(repo, limit=0) == (9, [])


def test_search_refuses_bad_paging(repo: MediaRepository) -> None:
    with pytest.raises(ValueError):
        search(repo, offset=-1)
    with pytest.raises(ValueError):
        search(repo, limit=-1)


# --------------------------------------------------------------------------- sweeper support


def pending(repo: MediaRepository, heartbeat: datetime, **overrides: Any) -> MediaItem:
    """A PENDING item whose last heartbeat (time_last_updated) was at `heartbeat`."""
    overrides.setdefault("time_created", heartbeat)
    return add(repo, state=ItemState.PENDING, time_last_updated=heartbeat, **overrides)


def test_iter_hidden_yields_old_pending_and_every_deleting_item(repo: MediaRepository) -> None:
    cutoff = T0
    old_pending = pending(repo, T0 - MINUTE)
    pending(repo, T0 + MINUTE)  # an upload in flight
    pending(repo, T0)  # not strictly older
    deleting_old = add(repo, state=ItemState.DELETING, time_created=T0 - MINUTE)
    deleting_new = add(repo, state=ItemState.DELETING, time_created=T0 + MINUTE)
    add(repo, time_created=T0 - timedelta(days=30))  # READY, however old
    found = list(repo.iter_hidden(cutoff))
    assert sorted(i.id for i in found) == sorted([old_pending.id, deleting_old.id, deleting_new.id])
    assert len(found) == 3


def test_iter_hidden_pages_through_while_items_are_removed(
    repo: MediaRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "_BATCH", 2)
    monkeypatch.setattr(mongo, "_BATCH", 2)
    hidden = [add(repo, state=ItemState.DELETING, time_created=T0) for _ in range(3)]
    hidden += [pending(repo, T0 - i * MINUTE) for i in (1, 2, 3)]
    seen = []
    for item in repo.iter_hidden(T0):
        seen.append(item.id)
        assert repo.remove(item.id)
    assert sorted(seen) == sorted(item.id for item in hidden)


def test_iter_ready_yields_ready_items_created_before_the_cutoff(repo: MediaRepository) -> None:
    old = add(repo, time_created=T0 - MINUTE)
    older = add(repo, time_created=T0 - timedelta(days=30))
    add(repo, time_created=T0)  # not strictly older
    add(repo, time_created=T0 + MINUTE)
    add(repo, state=ItemState.PENDING, time_created=T0 - MINUTE)
    add(repo, state=ItemState.DELETING, time_created=T0 - MINUTE)
    found = list(repo.iter_ready(T0))
    assert sorted(i.id for i in found) == sorted([old.id, older.id])
    assert {i.id: i for i in found}[old.id] == old


def test_iter_ready_pages_through_every_item(
    repo: MediaRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "_BATCH", 2)
    monkeypatch.setattr(mongo, "_BATCH", 2)
    ready = [add(repo, time_created=T0 - i * MINUTE) for i in (1, 1, 2, 3, 4)]
    assert sorted(i.id for i in repo.iter_ready(T0)) == sorted(i.id for i in ready)


def test_iter_hidden_judges_pending_items_by_their_heartbeat(repo: MediaRepository) -> None:
    """A PENDING item is dead when its heartbeat is old, whenever its upload started."""
    long_running = pending(repo, T0 + MINUTE, time_created=T0 - timedelta(days=1))
    crashed = pending(repo, T0 - MINUTE, time_created=T0 - MINUTE)
    found = [item.id for item in repo.iter_hidden(T0)]
    assert found == [crashed.id]
    assert long_running.id not in found


def test_heartbeat_refreshes_only_pending_items(repo: MediaRepository) -> None:
    upload = pending(repo, T0 - timedelta(hours=2))
    assert [item.id for item in repo.iter_hidden(T0)] == [upload.id]
    assert repo.heartbeat(upload.id, T0 + MINUTE) is True
    assert list(repo.iter_hidden(T0)) == []
    stored = repo.get(upload.id, include_hidden=True)
    assert stored is not None and stored.time_last_updated == T0 + MINUTE
    assert stored.time_created == upload.time_created  # only the heartbeat moves
    ready = add(repo)
    assert repo.heartbeat(ready.id, T0 + MINUTE) is False  # finished: nothing to keep alive
    assert repo.get(ready.id) == ready
    assert repo.heartbeat(str(uuid.uuid4()), T0) is False  # rolled back by the sweeper


def test_referenced_keys_are_those_of_any_document_whatever_its_state(
    repo: MediaRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "_BATCH", 2)
    monkeypatch.setattr(mongo, "_BATCH", 2)
    items = [add(repo, state=state) for state in ItemState]
    keys = [item.id for item in items]
    assert repo.referenced_keys(keys + ["orphan-1", "orphan-2"]) == set(keys)
    assert repo.referenced_keys([]) == set()


def test_ping_answers(repo: MediaRepository) -> None:
    repo.ping()


def test_prepare_database_is_idempotent(repo: MediaRepository) -> None:
    item = add(repo)
    repo.prepare_database()
    assert repo.get(item.id) == item


# --------------------------------------------------------------------------- SQLite specifics


def sqlite_repo(path: Path, timeout: float = 10.0) -> SqliteMediaRepository:
    return SqliteMediaRepository(SqliteDatabase(path, timeout=timeout))


def test_sqlite_connection_is_durable_wal(tmp_path: Path) -> None:
    repo = sqlite_repo(tmp_path / "media.db")
    assert repo.db.fetch("PRAGMA journal_mode")[0][0] == "wal"
    # NORMAL between writes; the writes that must be durable switch to FULL (test_sqlite_counts).
    assert repo.db.fetch("PRAGMA synchronous")[0][0] == 1
    assert repo.db.fetch("PRAGMA foreign_keys")[0][0] == 1
    repo.db.close()


@pytest.mark.parametrize("application", [None, "app-1"])
def test_sqlite_search_walks_an_index_in_order(tmp_path: Path, application: str | None) -> None:
    repo = sqlite_repo(tmp_path / "media.db")
    repo.prepare_database()
    query = SearchQuery(SearchScope("acc-a", application), T0, T0 + MINUTE, False, 0, 20)
    where, params = sqlite.search_filter(query)
    plan = " | ".join(
        row["detail"]
        for row in repo.db.fetch(
            f"EXPLAIN QUERY PLAN SELECT * FROM media_items WHERE {where}"
            " ORDER BY time_created DESC, id DESC LIMIT 20",
            params,
        )
    )
    index = "media_items_account" if application is None else "media_items_application"
    assert f"USING INDEX {index}" in plan
    assert "TEMP B-TREE" not in plan  # no sort step: the index yields the order
    repo.db.close()


def test_sqlite_unopenable_path_is_backend_unavailable(tmp_path: Path) -> None:
    repo = sqlite_repo(tmp_path / "missing" / "dir" / "media.db")
    with pytest.raises(BackendUnavailable) as info:
        repo.ping()
    assert info.value.port == "database"
    with pytest.raises(BackendUnavailable):
        repo.get(str(uuid.uuid4()))


def test_sqlite_locked_database_is_backend_unavailable_after_the_timeout(tmp_path: Path) -> None:
    path = tmp_path / "media.db"
    repo = sqlite_repo(path, timeout=0.2)
    repo.prepare_database()
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        started = time.monotonic()
        with pytest.raises(BackendUnavailable):
            repo.insert(make_item())
        assert time.monotonic() - started < 3
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    repo.insert(make_item())  # and it recovers once the lock is gone
    repo.db.close()


def test_sqlite_gives_each_thread_its_own_connection(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "media.db", timeout=5.0)
    seen: list[sqlite3.Connection] = []
    thread = threading.Thread(target=lambda: seen.append(db.connection()))
    thread.start()
    thread.join()
    assert seen[0] is not db.connection()
    assert db.connection() is db.connection()
    db.close()


# Python 3.12+ warns when forking a process that has threads (pytest-timeout, drivers).
FORK_WARNING = "ignore:This process .* is multi-threaded:DeprecationWarning"


def run_forked(target: Any) -> int:
    """Run `target` in a forked child (no pickling: it sees this process's objects)."""
    process = multiprocessing.get_context("fork").Process(target=target)
    process.start()
    process.join(30)
    return int(process.exitcode if process.exitcode is not None else -1)


@pytest.mark.filterwarnings(FORK_WARNING)
def test_sqlite_forked_child_opens_its_own_connection(tmp_path: Path) -> None:
    repo = sqlite_repo(tmp_path / "media.db")
    repo.prepare_database()
    parent_connection = repo.db.connection()
    child_item = make_item()

    def child() -> None:
        if repo.db.connection() is parent_connection:
            os._exit(3)
        repo.insert(child_item)
        os._exit(0)

    assert run_forked(child) == 0
    assert repo.db.connection() is parent_connection
    assert repo.get(child_item.id) == child_item
    repo.db.close()


def _race(repo: SqliteMediaRepository, item_id: str, attempts: int, go: Any, results: Any) -> None:
    """Count downloads of one item as fast as possible once `go` is set; report the outcomes."""
    try:
        repo.ping()  # open this thread's connection before the race starts
        results.put("ready")
        go.wait(60)
        outcomes = Counter(
            repo.count_download(item_id, enforce_limit=True).outcome.value for _ in range(attempts)
        )
        results.put(dict(outcomes))
    except Exception as exc:  # reported, so the parent fails with the cause
        results.put({"error": repr(exc)})


def _race_in_process(path: str, item_id: str, attempts: int, go: Any, results: Any) -> None:
    repo = sqlite_repo(Path(path), timeout=30.0)
    try:
        _race(repo, item_id, attempts, go, results)
    finally:
        repo.db.close()


@pytest.mark.timeout(120)
def test_sqlite_count_is_exact_across_threads_and_processes(tmp_path: Path) -> None:
    path = tmp_path / "media.db"
    repo = sqlite_repo(path)
    repo.prepare_database()
    item = add(repo, max_downloads_allowed=25)
    ctx = multiprocessing.get_context("spawn")
    go, results = ctx.Event(), ctx.Queue()
    attempts = 12
    processes = [
        ctx.Process(target=_race_in_process, args=(str(path), item.id, attempts, go, results))
        for _ in range(4)
    ]
    # The threads share one SqliteDatabase, as a gthread worker's threads do.
    shared = sqlite_repo(path, timeout=30.0)
    threads = [
        threading.Thread(target=_race, args=(shared, item.id, attempts, go, results))
        for _ in range(8)
    ]
    workers: list[Any] = [*processes, *threads]
    for worker in workers:
        worker.start()
    try:
        for _ in range(12):
            assert results.get(timeout=60) == "ready"
        go.set()
        reports = [results.get(timeout=60) for _ in range(12)]
    finally:
        go.set()
        for thread in threads:
            thread.join(60)
        for process in processes:
            process.join(60)
    totals: Counter[str] = Counter()
    for report in reports:
        assert "error" not in report, report
        totals.update(report)
    assert totals == {"counted": 25, "limit_reached": 12 * attempts - 25}
    final = repo.get(item.id)
    assert final is not None and final.times_downloaded == 25
    assert all(process.exitcode == 0 for process in processes)
    shared.db.close()
    repo.db.close()


# --------------------------------------------------------------------------- MongoDB specifics


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_mongo_unreachable_server_is_backend_unavailable_promptly() -> None:
    settings = mongo_settings(f"mongodb://127.0.0.1:{closed_port()}", "media", timeout=0.5)
    db = MongoDatabase.from_settings(settings)
    repo = MongoMediaRepository(db)
    try:
        for call in (repo.ping, lambda: repo.get(str(uuid.uuid4()))):
            started = time.monotonic()
            with pytest.raises(BackendUnavailable) as info:
                call()
            assert info.value.port == "database"
            assert time.monotonic() - started < 5
    finally:
        db.close()


@pytest.mark.filterwarnings(FORK_WARNING)
def test_mongo_forked_child_builds_its_own_client() -> None:
    made: list[object] = []

    def connect() -> Any:
        made.append(mongomock.MongoClient(tz_aware=True))
        return made[-1]

    db = MongoDatabase(connect, "media_test")
    parent_client = db.database.client

    def child() -> None:
        os._exit(0 if db.database.client is not parent_client and len(made) == 2 else 3)

    assert run_forked(child) == 0
    assert db.database.client is parent_client and len(made) == 1


def test_mongo_database_name_comes_from_the_url() -> None:
    settings = mongo_settings("mongodb://127.0.0.1:1/whatever?retryWrites=true", "media_x")
    assert settings.database_url == "mongodb://127.0.0.1:1/media_x?retryWrites=true"
    db = MongoDatabase.from_settings(settings)
    assert db.name == "media_x"
    db.close()


# --------------------------------------------------------------------------- usage


def test_usage_counts_ready_items_per_account_and_application(repo: MediaRepository) -> None:
    assert repo.usage() == []
    add(repo, media_size=10)
    add(repo, media_size=5)
    add(repo, application_id="app-2", media_size=7)
    add(repo, application_id="app-1", media_size=0)
    add(repo, account_id="acc-b", application_id="app-9", media_size=100)
    # Hidden items are not usage: an upload in progress, a delete in progress.
    add(repo, application_id="app-1", media_size=1000, state=ItemState.PENDING)
    add(repo, account_id="acc-c", media_size=1000, state=ItemState.DELETING)
    assert repo.usage() == [
        Usage("acc-a", None, 2, 15),
        Usage("acc-a", "app-1", 1, 0),
        Usage("acc-a", "app-2", 1, 7),
        Usage("acc-b", "app-9", 1, 100),
    ]
    assert repo.usage("acc-b") == [Usage("acc-b", "app-9", 1, 100)]
    assert repo.usage("acc-c") == []
    assert repo.usage("acc-404") == []


def test_usage_follows_deletes(repo: MediaRepository) -> None:
    item = add(repo, application_id="app-1", media_size=4)
    add(repo, application_id="app-1", media_size=6)
    assert repo.usage("acc-a") == [Usage("acc-a", "app-1", 2, 10)]
    assert repo.mark_deleting(item.id) is not None
    assert repo.usage("acc-a") == [Usage("acc-a", "app-1", 1, 6)]
    assert repo.remove(item.id)
    assert repo.usage("acc-a") == [Usage("acc-a", "app-1", 1, 6)]


def test_usage_sums_beyond_32_bits(repo: MediaRepository) -> None:
    add(repo, media_size=3 * 2**31)
    add(repo, media_size=2**31)
    assert repo.usage() == [Usage("acc-a", None, 2, 2**33)]


def test_usage_refuses_a_non_string_account(repo: MediaRepository) -> None:
    with pytest.raises(TypeError):
        repo.usage({"$ne": None})  # type: ignore[arg-type]
