"""SQLite specifics of expiry: the column a database from before it gains, and the indexes its
reads walk (the sweeper's feed, and the expired matches taken off a search's total)."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from media_service.storage import sqlite
from media_service.storage.interfaces import SearchQuery, SearchScope
from media_service.storage.sqlite import SqliteDatabase, SqliteMediaRepository
from tests.contract.test_media_repository import MINUTE, T0, add

NOW = T0 + timedelta(hours=1)


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[SqliteMediaRepository]:
    repository = SqliteMediaRepository(SqliteDatabase(tmp_path / "media.db", timeout=5.0))
    repository.prepare_database()
    yield repository
    repository.db.close()


def plan(repo: SqliteMediaRepository, sql: str, params: object) -> str:
    rows = repo.db.fetch(f"EXPLAIN QUERY PLAN {sql}", params)  # type: ignore[arg-type]
    return " | ".join(row["detail"] for row in rows)


OLD_SCOPE_INDEXES = {
    "media_items_account": "account_id",
    "media_items_application": "application_id",
}


def index_columns(repo: SqliteMediaRepository, name: str) -> list[str]:
    return [row[2] for row in repo.db.fetch(f"PRAGMA index_info({name})")]


def test_a_database_from_before_expiry_gains_the_column_and_its_indexes(tmp_path: Path) -> None:
    path = tmp_path / "media.db"
    old = SqliteMediaRepository(SqliteDatabase(path))
    old.prepare_database()
    item = add(old, time_created=T0)
    old.db.close()
    with sqlite3.connect(path) as conn:  # back to the schema before expiry
        for index in ("media_items_account_expiry", "media_items_application_expiry"):
            conn.execute(f"DROP INDEX {index}")
        conn.execute("DROP INDEX media_items_expiry")
        for index, scope in OLD_SCOPE_INDEXES.items():  # as they were, without expires_at
            conn.execute(f"DROP INDEX {index}")
            conn.execute(f"CREATE INDEX {index} ON media_items ({scope}, state, time_created, id)")
        conn.execute("ALTER TABLE media_items DROP COLUMN expires_at")
    conn.close()

    repo = SqliteMediaRepository(SqliteDatabase(path))
    try:
        repo.prepare_database()
        got = repo.get(item.id)
        assert got is not None and got.expires_at is None  # an old row never expires
        names = {row[0] for row in repo.db.fetch("SELECT name FROM sqlite_schema")}
        assert {
            "media_items_account_expiry",
            "media_items_application_expiry",
            "media_items_expiry",
        } <= names
        query = SearchQuery(SearchScope("acc-a"), T0 - MINUTE, None, True, 0, 10, now=NOW)
        assert [i.id for i in repo.search(query).items] == [item.id]
        assert repo.update(item.id, {"expires_at": NOW}, NOW - MINUTE) is not None
        assert [i.id for i in repo.iter_expired(NOW)] == [item.id]
        repo.prepare_database()  # and again: idempotent
    finally:
        repo.db.close()


def test_the_scope_indexes_of_an_old_database_are_rebuilt_with_expiry(tmp_path: Path) -> None:
    """A deep search page skips its OFFSET rows on the scope index alone only if the index holds
    expires_at too: an index from before expiry is rebuilt once, and then left alone."""
    path = tmp_path / "media.db"
    old = SqliteMediaRepository(SqliteDatabase(path))
    old.prepare_database()
    item = add(old, time_created=T0)
    old.db.close()
    with sqlite3.connect(path) as conn:
        for index, scope in OLD_SCOPE_INDEXES.items():
            conn.execute(f"DROP INDEX {index}")
            conn.execute(f"CREATE INDEX {index} ON media_items ({scope}, state, time_created, id)")
    conn.close()
    repo = SqliteMediaRepository(SqliteDatabase(path))
    try:
        repo.prepare_database()
        for index, scope in OLD_SCOPE_INDEXES.items():
            expected = [scope, "state", "time_created", "id", "expires_at"]
            assert index_columns(repo, index) == expected
        before = {row[0] for row in repo.db.fetch("SELECT sql FROM sqlite_schema")}
        repo.prepare_database()
        assert {row[0] for row in repo.db.fetch("SELECT sql FROM sqlite_schema")} == before
        query = SearchQuery(SearchScope("acc-a"), T0 - MINUTE, None, True, 0, 10, now=NOW)
        assert [i.id for i in repo.search(query).items] == [item.id]
    finally:
        repo.db.close()


def test_a_deep_page_skips_its_offset_on_the_scope_index(repo: SqliteMediaRepository) -> None:
    """The page query's filter, expiry included, is answered by the index's own columns."""
    query = SearchQuery(SearchScope("acc-a"), T0, None, False, 10_000, 20, now=NOW)
    where, params = sqlite.search_filter(query)
    used = {column for column in where.replace("(", " ").split() if column.isidentifier()}
    assert used - {"AND", "OR", "IS", "NULL"} <= set(index_columns(repo, "media_items_account"))


def test_the_sweeper_walks_the_expiry_index_in_order(repo: SqliteMediaRepository) -> None:
    detail = plan(
        repo,
        "SELECT * FROM media_items WHERE state = 'ready' AND expires_at <= :now"
        " AND (expires_at, id) > (:after_time, :after_id) ORDER BY expires_at, id LIMIT 500",
        {"now": 1, "after_time": 0, "after_id": ""},
    )
    assert "USING INDEX media_items_expiry" in detail, detail
    assert "TEMP B-TREE" not in detail, detail


@pytest.mark.parametrize("application", [None, "app-1"])
@pytest.mark.parametrize("end", [None, T0 + timedelta(days=1, milliseconds=5)])
def test_the_expired_matches_of_a_total_are_counted_by_the_expiry_index(
    repo: SqliteMediaRepository, application: str | None, end: object
) -> None:
    start = T0 - timedelta(days=6, milliseconds=7)
    query = SearchQuery(SearchScope("acc-a", application), start, end, False, 0, 20, now=NOW)  # type: ignore[arg-type]
    sql, params = sqlite.search_total(query)
    detail = plan(repo, sql, params)
    index = (
        "media_items_account_expiry" if application is None else "media_items_application_expiry"
    )
    assert f"USING INDEX {index} (" in detail and "expires_at<?" in detail, detail
    assert "SCAN media_items" not in detail, detail


@pytest.mark.parametrize("application", [None, "app-1"])
def test_a_page_still_walks_the_scope_index_in_order(
    repo: SqliteMediaRepository, application: str | None
) -> None:
    query = SearchQuery(SearchScope("acc-a", application), T0, None, False, 0, 20, now=NOW)
    where, params = sqlite.search_filter(query)
    detail = plan(
        repo,
        f"SELECT * FROM media_items WHERE {where} ORDER BY time_created DESC, id DESC LIMIT 20",
        params,
    )
    index = "media_items_account" if application is None else "media_items_application"
    assert f"USING INDEX {index} (" in detail and "TEMP B-TREE" not in detail, detail
