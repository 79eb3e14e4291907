"""SQLite specifics: the per-minute counts behind search totals, and per-statement durability."""

from __future__ import annotations

import random
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from media_service.storage import sqlite
from media_service.storage.interfaces import (
    Account,
    Application,
    ItemState,
    MediaItem,
    SearchQuery,
    SearchScope,
)
from media_service.storage.sqlite import (
    SqliteCredentialStore,
    SqliteDatabase,
    SqliteMediaRepository,
    from_ms,
    to_ms,
)

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
T0_MS = to_ms(T0)
MINUTE_MS = 60_000
ACCOUNTS = ("acc-a", "acc-b")
APPLICATIONS = (None, "app-1", "app-2")
SCOPES = [SearchScope(account, app) for account in ACCOUNTS for app in APPLICATIONS]


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[SqliteMediaRepository]:
    repository = SqliteMediaRepository(SqliteDatabase(tmp_path / "media.db", timeout=30.0))
    repository.prepare_database()
    yield repository
    repository.db.close()


def make_item(
    time_ms: int, state: ItemState, account: str = "acc-a", application: str | None = None
) -> MediaItem:
    item_id = str(uuid.uuid4())
    created = from_ms(time_ms)
    return MediaItem(
        id=item_id,
        account_id=account,
        application_id=application,
        original_file_name="f.txt",
        mime_type="text/plain",
        store_id="file",
        store_meta_params={},
        max_downloads_allowed=0,
        times_downloaded=0,
        etag="0" * 32,
        media_size=1,
        time_created=created,
        time_last_updated=created,
        time_content_modified=created,
        public=False,
        state=state,
    )


@dataclass
class Row:
    account: str
    application: str | None
    time_ms: int
    state: ItemState


def brute_total(model: dict[str, Row], scope: SearchScope, start: int, end: int | None) -> int:
    return sum(
        1
        for row in model.values()
        if row.state is ItemState.READY
        and row.account == scope.account_id
        and (scope.application_id is None or row.application == scope.application_id)
        and start <= row.time_ms
        and (end is None or row.time_ms <= end)
    )


def total(repo: SqliteMediaRepository, scope: SearchScope, start: int, end: int | None) -> int:
    query = SearchQuery(scope, from_ms(start), None if end is None else from_ms(end), True, 0, 0)
    return repo.search(query).total


def counts_table(db: SqliteDatabase) -> dict[tuple[str, str, int], int]:
    rows = db.fetch("SELECT account_id, application_id, minute, n FROM media_counts WHERE n != 0")
    return {(r[0], r[1], r[2]): r[3] for r in rows}


def recounted(db: SqliteDatabase) -> dict[tuple[str, str, int], int]:
    """What media_counts should hold, computed the slow way in Python."""
    result: dict[tuple[str, str, int], int] = {}
    for r in db.fetch(
        "SELECT account_id, application_id, time_created FROM media_items WHERE state = 'ready'"
    ):
        key = (r[0], r[1] or "", r[2] // MINUTE_MS)
        result[key] = result.get(key, 0) + 1
    return result


def random_time(rng: random.Random, base: int, span_minutes: int) -> int:
    """A time near `base`, often exactly on, just before or just after a minute's edge."""
    minute = base // MINUTE_MS + rng.randint(-span_minutes, span_minutes)
    edge = minute * MINUTE_MS
    return rng.choice(
        [edge, edge - 1, edge + 1, edge + MINUTE_MS - 1, edge + rng.randrange(MINUTE_MS)]
    )


def random_windows(
    rng: random.Random, base: int, span_minutes: int, count: int
) -> Iterator[tuple[int, int | None]]:
    for _ in range(count):
        start = random_time(rng, base, span_minutes + 2)
        kind = rng.random()
        if kind < 0.15:
            yield start, None
        elif kind < 0.3:  # short windows: within one or two minutes
            yield start, start + rng.randrange(2 * MINUTE_MS)
        elif kind < 0.35:  # empty (end before start)
            yield start, start - rng.randint(1, 3 * MINUTE_MS)
        else:
            end = random_time(rng, base, span_minutes + 2)
            yield min(start, end), max(start, end)


def check_totals(
    repo: SqliteMediaRepository, model: dict[str, Row], rng: random.Random, base: int, span: int
) -> None:
    assert counts_table(repo.db) == recounted(repo.db)
    for start, end in random_windows(rng, base, span, 60):
        for scope in SCOPES:
            assert total(repo, scope, start, end) == brute_total(model, scope, start, end), (
                scope,
                start,
                end,
            )


def random_operations(
    repo: SqliteMediaRepository,
    model: dict[str, Row],
    rng: random.Random,
    base: int,
    span: int,
    steps: int,
) -> None:
    for _ in range(steps):
        by_state: dict[ItemState, list[str]] = {state: [] for state in ItemState}
        for item_id, row in model.items():
            by_state[row.state].append(item_id)
        action = rng.random()
        if action < 0.45 or not model:
            state = rng.choice([ItemState.READY, ItemState.READY, ItemState.PENDING])
            if rng.random() < 0.05:
                state = ItemState.DELETING
            row = Row(
                rng.choice(ACCOUNTS), rng.choice(APPLICATIONS), random_time(rng, base, span), state
            )
            item = make_item(row.time_ms, row.state, row.account, row.application)
            repo.insert(item)
            model[item.id] = row
        elif action < 0.6 and by_state[ItemState.PENDING]:
            item_id = rng.choice(by_state[ItemState.PENDING])
            changes: dict[str, object] = {"media_size": 2}
            if rng.random() < 0.5:  # completing an upload may also move time_created
                model[item_id].time_ms = random_time(rng, base, span)
                changes["time_created"] = from_ms(model[item_id].time_ms)
            assert repo.mark_ready(item_id, changes) is not None
            model[item_id].state = ItemState.READY
        elif action < 0.7 and by_state[ItemState.READY]:
            item_id = rng.choice(by_state[ItemState.READY])
            assert repo.mark_deleting(item_id) is not None
            model[item_id].state = ItemState.DELETING
        elif action < 0.8 and by_state[ItemState.READY]:
            item_id = rng.choice(by_state[ItemState.READY])
            assert repo.update(item_id, {"title": "t"}, T0) is not None
        elif action < 0.85 and by_state[ItemState.READY]:
            repo.count_download(rng.choice(by_state[ItemState.READY]), enforce_limit=False)
        else:
            item_id = rng.choice(list(model))
            assert repo.remove(item_id)
            del model[item_id]
        # Refused transitions must not move the counts either.
        if model and rng.random() < 0.2:
            item_id = rng.choice(list(model))
            if model[item_id].state is not ItemState.PENDING:
                assert repo.mark_ready(item_id, {}) is None
            if model[item_id].state is not ItemState.READY:
                assert repo.mark_deleting(item_id) is None
                assert repo.update(item_id, {"title": "x"}, T0) is None


@pytest.mark.parametrize("seed", range(6))
def test_totals_match_a_brute_force_count(repo: SqliteMediaRepository, seed: int) -> None:
    rng = random.Random(seed)
    # Minutes, hours, and (seed 5) times before 1970, where SQL's integer division truncates.
    base, span = [
        (T0_MS, 4),
        (T0_MS, 30),
        (T0_MS, 300),
        (T0_MS + 17, 2),
        (0, 5),
        (-10 * MINUTE_MS - 123, 20),
    ][seed]
    model: dict[str, Row] = {}
    for _ in range(4):
        random_operations(repo, model, rng, base, span, 60)
        check_totals(repo, model, rng, base, span)


def test_totals_inside_one_minute_and_across_its_edges(repo: SqliteMediaRepository) -> None:
    model: dict[str, Row] = {}
    for offset in (-1, 0, 1, MINUTE_MS - 1, MINUTE_MS, MINUTE_MS + 1, 2 * MINUTE_MS):
        item = make_item(T0_MS + offset, ItemState.READY)
        repo.insert(item)
        model[item.id] = Row("acc-a", None, T0_MS + offset, ItemState.READY)
    scope = SearchScope("acc-a")
    points = [T0_MS + d for d in (-2, -1, 0, 1, 2, MINUTE_MS - 1, MINUTE_MS, 2 * MINUTE_MS + 1)]
    for start in points:
        for end in [*points, None]:
            assert total(repo, scope, start, end) == brute_total(model, scope, start, end)


def test_search_page_and_total_still_agree(repo: SqliteMediaRepository) -> None:
    rng = random.Random(7)
    for _ in range(200):
        repo.insert(make_item(random_time(rng, T0_MS, 90), ItemState.READY))
    query = SearchQuery(SearchScope("acc-a"), T0 - timedelta(hours=1), T0, False, 0, 10_000)
    page = repo.search(query)
    assert page.total == len(page.items)
    assert all(T0 - timedelta(hours=1) <= item.time_created <= T0 for item in page.items)


def test_application_id_empty_string_is_not_confused_with_no_application(
    repo: SqliteMediaRepository,
) -> None:
    repo.insert(make_item(T0_MS, ItemState.READY, application=None))
    repo.insert(make_item(T0_MS, ItemState.READY, application=""))
    start, end = T0_MS - 10 * MINUTE_MS, T0_MS + 10 * MINUTE_MS
    assert total(repo, SearchScope("acc-a", ""), start, end) == 1
    assert total(repo, SearchScope("acc-a", ""), start, None) == 1
    assert total(repo, SearchScope("acc-a"), start, end) == 2


# --------------------------------------------------------------------------- backfill


def drop_counts(db: SqliteDatabase, keep: tuple[str, ...] = ()) -> None:
    """Make the database look like one from before media_counts (or partly so)."""
    for trigger in sqlite.COUNT_TRIGGERS:
        if trigger not in keep:
            db.run(f"DROP TRIGGER {trigger}")
    if "media_counts" not in keep:
        db.run("DROP TABLE media_counts")


def populate(repo: SqliteMediaRepository, seed: int, steps: int = 300) -> dict[str, Row]:
    model: dict[str, Row] = {}
    random_operations(repo, model, random.Random(seed), T0_MS, 120, steps)
    return model


def test_prepare_database_backfills_an_old_database(repo: SqliteMediaRepository) -> None:
    model = populate(repo, 11)
    expected = counts_table(repo.db)
    assert expected == recounted(repo.db) and expected
    drop_counts(repo.db)
    # The old service goes on writing without counts...
    more = populate(repo, 12, 50)
    model.update(more)
    assert (
        repo.db.fetch("SELECT count(*) FROM sqlite_schema WHERE name LIKE 'media_counts%'")[0][0]
        == 0
    )
    repo.prepare_database()  # ...until the new one starts
    assert counts_table(repo.db) == recounted(repo.db)
    check_totals(repo, model, random.Random(13), T0_MS, 120)
    before = counts_table(repo.db)
    repo.prepare_database()  # idempotent: no second backfill
    assert counts_table(repo.db) == before


@pytest.mark.parametrize("kept", [("media_counts",), ("media_counts", "media_counts_insert")])
def test_prepare_database_rebuilds_counts_missing_a_trigger(
    repo: SqliteMediaRepository, kept: tuple[str, ...]
) -> None:
    model = populate(repo, 21)
    drop_counts(repo.db, keep=kept)
    model.update(populate(repo, 22, 80))  # counts drift while a trigger is missing
    repo.prepare_database()
    assert counts_table(repo.db) == recounted(repo.db)
    check_totals(repo, model, random.Random(23), T0_MS, 120)


@pytest.mark.timeout(120)
def test_workers_starting_together_backfill_once(tmp_path: Path) -> None:
    path = tmp_path / "media.db"
    repo = SqliteMediaRepository(SqliteDatabase(path, timeout=30.0))
    repo.prepare_database()
    populate(repo, 31)
    expected = counts_table(repo.db)
    drop_counts(repo.db)
    go = threading.Barrier(8)
    errors: list[BaseException] = []

    def start_worker() -> None:
        db = SqliteDatabase(path, timeout=30.0)  # a connection of its own, as a worker has
        try:
            go.wait(30)
            SqliteMediaRepository(db).prepare_database()
        except BaseException as exc:  # reported below
            errors.append(exc)
        finally:
            db.close()

    threads = [threading.Thread(target=start_worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert counts_table(repo.db) == expected == recounted(repo.db)
    repo.db.close()


# --------------------------------------------------------------------------- concurrency


@pytest.mark.timeout(120)
def test_counts_stay_exact_under_concurrent_writers(tmp_path: Path) -> None:
    path = tmp_path / "media.db"
    repo = SqliteMediaRepository(SqliteDatabase(path, timeout=30.0))
    repo.prepare_database()
    rng = random.Random(41)
    pending = [
        make_item(random_time(rng, T0_MS, 10), ItemState.PENDING, application=app)
        for app in APPLICATIONS
        for _ in range(60)
    ]
    ready = [
        make_item(random_time(rng, T0_MS, 10), ItemState.READY, application=app)
        for app in APPLICATIONS
        for _ in range(60)
    ]
    for item in pending + ready:
        repo.insert(item)
    go = threading.Barrier(8)
    errors: list[BaseException] = []

    def worker(index: int, shared: SqliteMediaRepository) -> None:
        local = random.Random(index)
        try:
            go.wait(30)
            for item in pending[index::8]:  # every pending item is completed by one thread
                shared.mark_ready(item.id, {})
            for item in ready[index::4]:  # two threads race on each of these
                action = local.choice(["deleting", "remove", "update", "count"])
                if action == "deleting":
                    shared.mark_deleting(item.id)
                elif action == "remove":
                    shared.remove(item.id)
                elif action == "update":
                    shared.update(item.id, {"title": "t"}, T0)
                else:
                    shared.count_download(item.id, enforce_limit=False)
                total(shared, SearchScope("acc-a"), T0_MS - 20 * MINUTE_MS, None)
        except BaseException as exc:  # reported below
            errors.append(exc)

    # Four threads share one SqliteDatabase (as a gthread worker's do), four have their own.
    shared = SqliteMediaRepository(SqliteDatabase(path, timeout=30.0))
    own = [SqliteMediaRepository(SqliteDatabase(path, timeout=30.0)) for _ in range(4)]
    threads = [
        threading.Thread(target=worker, args=(i, shared if i < 4 else own[i - 4])) for i in range(8)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert not errors, errors
    assert counts_table(repo.db) == recounted(repo.db)
    model = {
        r["id"]: Row(r["account_id"], r["application_id"], r["time_created"], ItemState(r["state"]))
        for r in repo.db.fetch("SELECT * FROM media_items")
    }
    check_totals(repo, model, random.Random(42), T0_MS, 10)
    for other in [shared, *own]:
        other.db.close()
    repo.db.close()


# --------------------------------------------------------------------------- plans


def plan(db: SqliteDatabase, sql: str, params: dict[str, Any]) -> str:
    return " | ".join(row["detail"] for row in db.fetch(f"EXPLAIN QUERY PLAN {sql}", params))


@pytest.mark.parametrize("application", [None, "app-1"])
@pytest.mark.parametrize("end", [None, T0 + timedelta(days=1, milliseconds=5)])
def test_total_sums_minutes_and_counts_only_the_edges_by_index(
    repo: SqliteMediaRepository, application: str | None, end: datetime | None
) -> None:
    start = T0 - timedelta(days=6, milliseconds=7)
    sql, params = sqlite.search_total(
        SearchQuery(SearchScope("acc-a", application), start, end, False, 0, 20)
    )
    detail = plan(repo.db, sql, params)
    summed = "COVERING INDEX media_counts_account" if application is None else "PRIMARY KEY"
    assert f"SEARCH media_counts USING {summed} (account_id=? AND" in detail, detail
    # The edge minutes are counted through the scope's index (the application's one also
    # checks account_id in the rows it finds, as the page query does).
    scope_index = "media_items_account" if application is None else "media_items_application"
    assert f"INDEX {scope_index} (" in detail, detail
    assert "SCAN media_" not in detail, detail


# --------------------------------------------------------------------------- durability


def traced(db: SqliteDatabase) -> list[str]:
    statements: list[str] = []
    db.connection().set_trace_callback(statements.append)
    return statements


def durable_statements(statements: list[str]) -> list[str]:
    """The statements run between `synchronous = FULL` and its restoring `NORMAL`."""
    inside, durable, previous = False, [], ""
    for statement in statements:
        text = " ".join(statement.split())
        # A trigger's statements are traced again as the statement that fired them.
        if text.startswith("--") or text == previous:
            continue
        previous = text
        if text == "PRAGMA synchronous = FULL":
            assert not inside
            inside = True
        elif text == "PRAGMA synchronous = NORMAL":
            assert inside
            inside = False
        elif inside:
            durable.append(text.split()[0].upper())
    assert not inside
    return durable


def test_writes_that_answer_a_client_are_durable_counts_are_not(
    repo: SqliteMediaRepository,
) -> None:
    statements = traced(repo.db)
    pending = make_item(T0_MS, ItemState.PENDING)
    repo.insert(pending)
    repo.mark_ready(pending.id, {})
    repo.update(pending.id, {"title": "t"}, T0)
    repo.mark_deleting(pending.id)
    repo.remove(pending.id)
    assert durable_statements(statements) == ["INSERT", "UPDATE", "UPDATE", "UPDATE", "DELETE"]
    statements.clear()
    ready = make_item(T0_MS, ItemState.READY)
    repo.insert(ready)
    statements.clear()
    for _ in range(3):
        repo.count_download(ready.id, enforce_limit=True)
    assert durable_statements(statements) == []
    assert all("RETURNING" not in s for s in statements)
    assert repo.db.fetch("PRAGMA synchronous")[0][0] == 1  # NORMAL again


def test_credential_writes_and_schema_are_durable(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "media.db")
    store = SqliteCredentialStore(db)
    statements = traced(db)
    store.prepare_database()
    assert "CREATE" in durable_statements(statements)
    statements.clear()
    store.add_account(Account("key", b"s", b"d"))
    store.add_application(Application("app", "key", ("pem",)))
    store.add_public_key("app", "pem2")
    durable = durable_statements(statements)
    assert durable.count("INSERT") == 4 and "COMMIT" in durable
    statements.clear()
    store.get_account("key")
    store.get_application("app")
    assert durable_statements(statements) == []
    assert db.fetch("PRAGMA synchronous")[0][0] == 1
    db.close()
