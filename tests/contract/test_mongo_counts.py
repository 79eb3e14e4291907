"""MongoDB's per-minute counts behind search totals, on mongomock and on a real server.

The same checks as test_sqlite_counts.py (totals against a brute-force count, the counts against
a recount, building them for an old database), plus what a database without multi-document
transactions needs: a writer dying between an item's update and its `$inc` is healed.
"""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import mongomock
import pytest

from media_service.service.sweeper import sweep
from media_service.storage import mongo_counts
from media_service.storage.files import FileBlobStore
from media_service.storage.interfaces import Backends, ItemState, SearchQuery, SearchScope
from media_service.storage.mongo import MongoCredentialStore, MongoDatabase, MongoMediaRepository
from media_service.storage.mongo_counts import MinuteCounts
from tests.contract.test_media_repository import MONGO_URL, mongo_settings
from tests.contract.test_sqlite_counts import (
    APPLICATIONS,
    MINUTE_MS,
    SCOPES,
    T0_MS,
    Row,
    brute_total,
    from_ms,
    make_item,
    random_operations,
    random_windows,
)

BACKENDS: list[Any] = ["mongomock"]
if MONGO_URL:
    BACKENDS.append(pytest.param("mongo-real", marks=pytest.mark.mongo))


class Server:
    """A database that several repositories (as several workers would) can open."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.name = f"media_test_{uuid.uuid4().hex[:12]}"
        self.client: Any = mongomock.MongoClient(tz_aware=True) if kind == "mongomock" else None
        self.opened: list[MongoDatabase] = []

    def repository(self) -> MongoMediaRepository:
        if self.client is not None:
            db = MongoDatabase.wrap(self.client[self.name])
        else:
            assert MONGO_URL
            db = MongoDatabase.from_settings(mongo_settings(MONGO_URL, self.name))
        self.opened.append(db)
        return MongoMediaRepository(db)

    def close(self) -> None:
        if self.opened and self.client is None:
            self.opened[0].database.client.drop_database(self.name)
        for db in self.opened:
            db.close()


@pytest.fixture(params=BACKENDS)
def server(request: pytest.FixtureRequest) -> Iterator[Server]:
    server = Server(request.param)
    yield server
    server.close()


@pytest.fixture
def repo(server: Server) -> MongoMediaRepository:
    repository = server.repository()
    repository.prepare_database()
    return repository


def total(repo: MongoMediaRepository, scope: SearchScope, start: int, end: int | None) -> int:
    query = SearchQuery(scope, from_ms(start), None if end is None else from_ms(end), True, 0, 0)
    return repo.search(query).total


def counts_collection(repo: MongoMediaRepository) -> dict[tuple[str, str, int], int]:
    rows = repo.db.collection("media_counts").find({"n": {"$ne": 0}})
    return {(r["account_id"], r["application_id"], r["minute"]): r["n"] for r in rows}


def recounted(repo: MongoMediaRepository) -> dict[tuple[str, str, int], int]:
    """What media_counts should hold, computed the slow way in Python."""
    result: dict[tuple[str, str, int], int] = {}
    for doc in repo.db.collection("media_items").find({"state": "ready"}):
        key = (
            doc["account_id"],
            doc["application_id"] or "",
            mongo_counts.epoch_ms(doc["time_created"]) // MINUTE_MS,
        )
        result[key] = result.get(key, 0) + 1
    return result


def marks(repo: MongoMediaRepository) -> int:
    query = {"$or": [{name: {"$exists": True}} for name in (mongo_counts.PLUS, mongo_counts.MINUS)]}
    return repo.db.collection("media_items").count_documents(query)


def check_totals(
    repo: MongoMediaRepository, model: dict[str, Row], rng: random.Random, base: int, span: int
) -> None:
    assert counts_collection(repo) == recounted(repo)
    assert marks(repo) == 0
    for start, end in random_windows(rng, base, span, 15):
        for scope in SCOPES:
            assert total(repo, scope, start, end) == brute_total(model, scope, start, end), (
                scope,
                start,
                end,
            )


@pytest.mark.parametrize("seed", range(4))
def test_totals_match_a_brute_force_count(repo: MongoMediaRepository, seed: int) -> None:
    rng = random.Random(seed)
    # Minutes, hours, and (seed 3) times before 1970, where a minute must be a floor.
    base, span = [(T0_MS, 4), (T0_MS, 60), (T0_MS + 17, 2), (-10 * MINUTE_MS - 123, 20)][seed]
    model: dict[str, Row] = {}
    for _ in range(2):
        random_operations(repo, model, rng, base, span, 60)  # type: ignore[arg-type]
        check_totals(repo, model, rng, base, span)


def test_totals_inside_one_minute_and_across_its_edges(repo: MongoMediaRepository) -> None:
    model: dict[str, Row] = {}
    for offset in (-1, 0, 1, MINUTE_MS - 1, MINUTE_MS, MINUTE_MS + 1, 2 * MINUTE_MS):
        item = make_item(T0_MS + offset, ItemState.READY)
        repo.insert(item)
        model[item.id] = Row("acc-a", None, T0_MS + offset, ItemState.READY)
    scope = SearchScope("acc-a")
    points = [T0_MS + d for d in (-2, -1, 0, 1, MINUTE_MS - 1, MINUTE_MS, 2 * MINUTE_MS + 1)]
    for start in points:
        for end in [*points, None]:
            assert total(repo, scope, start, end) == brute_total(model, scope, start, end)


def test_application_id_empty_string_is_not_confused_with_no_application(
    repo: MongoMediaRepository,
) -> None:
    repo.insert(make_item(T0_MS, ItemState.READY, application=None))
    repo.insert(make_item(T0_MS, ItemState.READY, application=""))
    start, end = T0_MS - 10 * MINUTE_MS, T0_MS + 10 * MINUTE_MS
    assert total(repo, SearchScope("acc-a", ""), start, end) == 1
    assert total(repo, SearchScope("acc-a", ""), start, None) == 1
    assert total(repo, SearchScope("acc-a"), start, end) == 2


def test_total_sums_whole_minutes_from_media_counts(repo: MongoMediaRepository) -> None:
    for app in APPLICATIONS:
        repo.insert(make_item(T0_MS + 5 * MINUTE_MS, ItemState.READY, application=app))
    start, end = T0_MS, T0_MS + 10 * MINUTE_MS
    assert total(repo, SearchScope("acc-a"), start, end) == 3
    # Whole minutes are read from media_counts, not counted among the items: a planted count
    # shows in the total (and proves that the total does not walk the matches).
    minute = (T0_MS + 5 * MINUTE_MS) // MINUTE_MS
    repo.db.collection("media_counts").update_one(
        {"account_id": "acc-a", "application_id": "app-1", "minute": minute}, {"$inc": {"n": 100}}
    )
    assert total(repo, SearchScope("acc-a"), start, end) == 103
    assert total(repo, SearchScope("acc-a", "app-1"), start, None) == 101
    assert total(repo, SearchScope("acc-a", "app-2"), start, end) == 1


# --------------------------------------------------------------------------- build


def drop_counts(repo: MongoMediaRepository) -> None:
    """Make the database look like one from before media_counts."""
    repo.db.collection("media_counts").drop()
    repo.db.collection("media_meta").drop()


def fresh(repo: MongoMediaRepository) -> MongoMediaRepository:
    """The same database seen by a newly started process."""
    return MongoMediaRepository(repo.db)


def test_prepare_database_builds_counts_for_an_old_database(repo: MongoMediaRepository) -> None:
    model: dict[str, Row] = {}
    random_operations(repo, model, random.Random(11), T0_MS, 60, 120)  # type: ignore[arg-type]
    expected = counts_collection(repo)
    assert expected == recounted(repo) and expected
    drop_counts(repo)
    restarted = fresh(repo)
    restarted.prepare_database()
    assert counts_collection(restarted) == expected
    check_totals(restarted, model, random.Random(13), T0_MS, 60)
    restarted.prepare_database()  # idempotent: no second build
    assert counts_collection(restarted) == expected


def test_forgetting_the_build_rebuilds_drifted_counts(repo: MongoMediaRepository) -> None:
    random_operations(repo, {}, random.Random(17), T0_MS, 30, 60)  # type: ignore[arg-type]
    expected = counts_collection(repo)
    repo.db.collection("media_counts").update_many({}, {"$inc": {"n": 3}})  # drifted
    repo.db.collection("media_meta").delete_one({"_id": mongo_counts.META_ID})  # the procedure
    fresh(repo).prepare_database()
    assert counts_collection(repo) == expected == recounted(repo)


def test_searches_count_plainly_until_the_counts_are_built(repo: MongoMediaRepository) -> None:
    for _ in range(3):
        repo.insert(make_item(T0_MS + 5 * MINUTE_MS, ItemState.READY))
    drop_counts(repo)
    restarted = fresh(repo)  # a worker that has not run prepare_database yet
    assert total(restarted, SearchScope("acc-a"), T0_MS, T0_MS + 10 * MINUTE_MS) == 3


@pytest.mark.timeout(120)
def test_workers_starting_together_build_once(server: Server, repo: MongoMediaRepository) -> None:
    random_operations(repo, {}, random.Random(31), T0_MS, 30, 120)  # type: ignore[arg-type]
    expected = counts_collection(repo)
    drop_counts(repo)
    workers = [server.repository() for _ in range(6)]
    go = threading.Barrier(len(workers))
    errors: list[BaseException] = []

    def start(worker: MongoMediaRepository) -> None:
        try:
            go.wait(30)
            worker.prepare_database()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=start, args=(w,)) for w in workers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert counts_collection(repo) == expected == recounted(repo)


# --------------------------------------------------------------------------- healing


class Crash(Exception):
    """A writer dying at a chosen point."""


def crash_at(monkeypatch: pytest.MonkeyPatch, step: str) -> None:
    """Make the next settle die before its `$inc` ("apply") or after it ("clear")."""

    def die(*args: object, **kwargs: object) -> None:
        monkeypatch.undo()
        raise Crash(step)

    if step == "apply":
        monkeypatch.setattr(MinuteCounts, "_apply", die)
    else:
        original = MinuteCounts._apply

        def apply_then_die(self: MinuteCounts, *args: Any) -> None:
            original(self, *args)
            die()

        monkeypatch.setattr(MinuteCounts, "_apply", apply_then_die)


def later() -> Any:
    return mongo_counts.now() + mongo_counts.MARK_GRACE + timedelta(seconds=1)


@pytest.mark.parametrize("step", ["apply", "clear"])
@pytest.mark.parametrize("transition", ["insert", "mark_ready", "mark_deleting", "remove"])
def test_a_writer_dying_between_item_and_count_is_healed(
    repo: MongoMediaRepository, monkeypatch: pytest.MonkeyPatch, transition: str, step: str
) -> None:
    other = make_item(T0_MS + 3, ItemState.READY)
    repo.insert(other)
    item = make_item(
        T0_MS + 5, ItemState.PENDING if transition == "mark_ready" else ItemState.READY
    )
    if transition != "insert":
        repo.insert(item)
    crash_at(monkeypatch, step)
    with pytest.raises(Crash):
        if transition == "insert":
            repo.insert(item)
        elif transition == "mark_ready":
            repo.mark_ready(item.id, {})
        elif transition == "mark_deleting":
            repo.mark_deleting(item.id)
        else:
            repo.remove(item.id)
    assert marks(repo) == 1
    # A fresh mark may belong to a writer still at work: it is left alone...
    assert repo.heal_counts(mongo_counts.now()) == 0
    # ...until it is older than any live writer could be.
    assert repo.heal_counts(later()) == 1
    assert marks(repo) == 0
    assert counts_collection(repo) == recounted(repo)
    if transition == "remove":  # the delete itself is finished by the sweeper
        assert repo.remove(item.id)
    assert counts_collection(repo) == recounted(repo)
    window = (T0_MS - MINUTE_MS, T0_MS + 2 * MINUTE_MS)
    expected = 2 if transition in ("insert", "mark_ready") else 1
    assert total(repo, SearchScope("acc-a"), *window) == expected
    assert repo.heal_counts(later()) == 0  # healing twice changes nothing


def test_prepare_database_heals_what_dead_writers_left(
    repo: MongoMediaRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    item = make_item(T0_MS, ItemState.READY)
    crash_at(monkeypatch, "apply")
    with pytest.raises(Crash):
        repo.insert(item)
    the_future = later()  # a process started long after the writer died
    monkeypatch.setattr(mongo_counts, "now", lambda: the_future)
    fresh(repo).prepare_database()
    assert marks(repo) == 0 and counts_collection(repo) == recounted(repo)


def test_the_sweeper_heals_counts(
    repo: MongoMediaRepository, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    crash_at(monkeypatch, "clear")  # the $inc is in, the mark stays
    with pytest.raises(Crash):
        repo.insert(make_item(T0_MS, ItemState.READY))
    backends = Backends(
        blobs=FileBlobStore(tmp_path), media=repo, credentials=MongoCredentialStore(repo.db)
    )
    report = sweep(backends, now=later(), grace=timedelta(hours=1))
    assert report.counts_healed == 1 and report.errors == 0
    assert marks(repo) == 0 and counts_collection(repo) == recounted(repo)
