"""Expiry in every MediaRepository: stored, judged at an instant, swept, and left out of searches
(their pages and their totals, also where the totals come from the per-minute counts)."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from media_service.storage import mongo, sqlite
from media_service.storage.interfaces import (
    ItemState,
    MediaItem,
    MediaRepository,
    SearchQuery,
    SearchScope,
)
from tests.contract import test_media_repository as contract
from tests.contract.test_media_repository import MINUTE, T0, add

# The contract's fixture: every repository (SQLite, mongomock, and a real MongoDB when set).
repo = contract.repo

NOW = T0 + timedelta(hours=1)
MS = timedelta(milliseconds=1)
SCOPES = [
    SearchScope(account, application)
    for account in ("acc-a", "acc-b")
    for application in (None, "app-1", "app-2")
]


def search(repo: MediaRepository, query: SearchQuery) -> tuple[int, list[str]]:
    page = repo.search(query)
    return page.total, [item.id for item in page.items]


def window_query(
    scope: SearchScope,
    start: datetime,
    end: datetime | None,
    now: datetime,
    *,
    limit: int = 10_000,
) -> SearchQuery:
    return SearchQuery(scope, start, end, True, 0, limit, now=now)


# --------------------------------------------------------------------------- the field


def test_expires_at_round_trips_at_millisecond_precision_as_utc(repo: MediaRepository) -> None:
    at = datetime(2031, 2, 3, 4, 5, 6, 789999, tzinfo=timezone(timedelta(hours=-3)))
    item = add(repo, expires_at=at)
    got = repo.get(item.id)
    assert got is not None and got.expires_at == datetime(2031, 2, 3, 7, 5, 6, 789000, tzinfo=UTC)
    assert got.expires_at.utcoffset() == timedelta(0)
    never = add(repo)
    assert (got := repo.get(never.id)) is not None and got.expires_at is None


def test_a_naive_expiry_is_refused(repo: MediaRepository) -> None:
    with pytest.raises(ValueError):
        add(repo, expires_at=datetime(2031, 1, 1))


def test_get_still_returns_an_expired_item_the_service_judges_it(repo: MediaRepository) -> None:
    item = add(repo, expires_at=NOW - MINUTE)
    got = repo.get(item.id)
    assert got is not None and got.expires_at == NOW - MINUTE


def test_update_sets_moves_and_removes_the_expiry(repo: MediaRepository) -> None:
    item = add(repo)
    updated = repo.update(item.id, {"expires_at": NOW + MINUTE}, NOW)
    assert updated is not None and updated.expires_at == NOW + MINUTE
    updated = repo.update(item.id, {"expires_at": NOW + 2 * MINUTE}, NOW + MINUTE - MS)
    assert updated is not None and updated.expires_at == NOW + 2 * MINUTE
    updated = repo.update(item.id, {"expires_at": None}, NOW + MINUTE)
    assert updated is not None and updated.expires_at is None
    assert (got := repo.get(item.id)) is not None and got.expires_at is None


@pytest.mark.parametrize("late", [timedelta(0), MS, timedelta(days=3)])
def test_an_expired_item_is_never_updated_again(repo: MediaRepository, late: timedelta) -> None:
    """Not its title, and above all not its expiry: nothing brings an expired item back."""
    item = add(repo, expires_at=NOW, title="kept")
    assert repo.update(item.id, {"expires_at": NOW + timedelta(days=1)}, NOW + late) is None
    assert repo.update(item.id, {"title": "changed", "max_downloads_allowed": 3}, NOW) is None
    got = repo.get(item.id)
    assert got is not None and got.expires_at == NOW and got.title == "kept"
    assert got.max_downloads_allowed == 0 and got.time_last_updated == item.time_last_updated


def test_mark_deleting_with_expired_by_takes_only_expired_items(repo: MediaRepository) -> None:
    expired = add(repo, expires_at=NOW)
    later = add(repo, expires_at=NOW + MS)
    never = add(repo)
    assert repo.mark_deleting(later.id, expired_by=NOW) is None
    assert repo.mark_deleting(never.id, expired_by=NOW) is None
    tombstone = repo.mark_deleting(expired.id, expired_by=NOW)
    assert tombstone is not None and tombstone.state is ItemState.DELETING
    assert repo.mark_deleting(expired.id, expired_by=NOW) is None  # only once
    # Without the condition, any READY item (a user's delete).
    assert repo.mark_deleting(never.id) is not None
    assert repo.get(later.id) is not None


# --------------------------------------------------------------------------- the sweeper's feed


def test_iter_expired_yields_ready_items_expired_by_now_in_expiry_order(
    repo: MediaRepository,
) -> None:
    first = add(repo, expires_at=NOW - timedelta(days=2), time_created=T0 + MINUTE)
    # The sweeper works across accounts.
    other = add(repo, expires_at=NOW - 2 * MINUTE, account_id="acc-b", application_id="app-b")
    third = add(repo, expires_at=NOW - MINUTE, time_created=T0 - MINUTE)
    on_the_dot = add(repo, expires_at=NOW)
    add(repo, expires_at=NOW + MS)  # not yet
    add(repo)  # never
    add(repo, expires_at=NOW - MINUTE, state=ItemState.PENDING)  # the sweeper's other work
    add(repo, expires_at=NOW - MINUTE, state=ItemState.DELETING)
    found = [item.id for item in repo.iter_expired(NOW)]
    assert found == [first.id, other.id, third.id, on_the_dot.id]


def test_iter_expired_pages_through_while_items_are_removed(
    repo: MediaRepository, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite, "_BATCH", 2)
    monkeypatch.setattr(mongo, "_BATCH", 2)
    # Ties on expires_at: the pages go on by id.
    expired = [add(repo, expires_at=NOW - (i // 2) * MINUTE) for i in range(7)]
    add(repo, expires_at=NOW + MINUTE)
    seen = []
    for item in repo.iter_expired(NOW):
        seen.append(item.id)
        assert repo.mark_deleting(item.id, expired_by=NOW) is not None
        assert repo.remove(item.id)
    assert sorted(seen) == sorted(item.id for item in expired)
    assert list(repo.iter_expired(NOW + timedelta(days=1))) != []  # the later one


# --------------------------------------------------------------------------- searches


def test_search_leaves_out_what_expired_by_its_now(repo: MediaRepository) -> None:
    expired = add(repo, expires_at=NOW, time_created=T0)
    alive = add(repo, expires_at=NOW + MS, time_created=T0 + MINUTE)
    never = add(repo, time_created=T0 + 2 * MINUTE)
    week = T0 - timedelta(days=7)
    scope = SearchScope("acc-a")
    assert search(repo, window_query(scope, week, None, NOW)) == (2, [alive.id, never.id])
    assert search(repo, window_query(scope, week, None, NOW - MS)) == (
        3,
        [expired.id, alive.id, never.id],
    )
    later = NOW + timedelta(days=1)
    assert search(repo, window_query(scope, week, None, later)) == (1, [never.id])


def test_search_pages_count_only_live_items(repo: MediaRepository) -> None:
    items = [
        add(repo, time_created=T0 + i * MINUTE, expires_at=None if i % 2 else NOW - MINUTE)
        for i in range(10)
    ]
    live = [item.id for item in items if item.expires_at is None]
    query = SearchQuery(SearchScope("acc-a"), T0 - timedelta(days=1), None, True, 2, 2, now=NOW)
    assert search(repo, query) == (5, live[2:4])


def test_search_without_now_judges_at_the_current_time(repo: MediaRepository) -> None:
    now = datetime.now(UTC)
    add(repo, time_created=now - MINUTE, expires_at=now - MS)
    kept = add(repo, time_created=now - MINUTE, expires_at=now + timedelta(hours=1))
    page = repo.search(
        SearchQuery(SearchScope("acc-a"), now - timedelta(hours=1), None, True, 0, 9)
    )
    assert (page.total, [item.id for item in page.items]) == (1, [kept.id])


def test_search_totals_stay_exact_with_expired_items_in_every_minute(
    repo: MediaRepository,
) -> None:
    """Totals are summed from per-minute counts, which still hold expired-but-unswept items:
    random windows (whole minutes, edges, within one minute, unbounded) over random scopes
    must agree with counting the live items one by one, at several instants."""
    rng = random.Random(1313)
    model: list[MediaItem] = []
    for _ in range(160):
        created = T0 + rng.randrange(-30 * 60_000, 30 * 60_000) * MS
        if rng.random() < 0.3:
            created = T0 + rng.randint(-30, 30) * MINUTE  # on a minute's edge
        expiry = rng.choice(
            [None, NOW - rng.randrange(1, 10**7) * MS, NOW, NOW + rng.randrange(1, 10**7) * MS]
        )
        state = rng.choice([ItemState.READY] * 6 + [ItemState.PENDING, ItemState.DELETING])
        account = rng.choice(["acc-a", "acc-b"])
        application = rng.choice([None, "app-1", "app-2"])
        model.append(
            add(
                repo,
                account_id=account,
                application_id=application,
                time_created=created,
                expires_at=expiry,
                state=state,
            )
        )
    instants = [NOW - timedelta(hours=3), NOW - MS, NOW, NOW + timedelta(hours=3)]
    for _ in range(40):
        start = T0 + rng.randint(-32, 32) * MINUTE + rng.choice([0, 0, 1, -1, 30_000]) * MS
        shape = rng.random()
        end: datetime | None
        if shape < 0.2:
            end = None
        elif shape < 0.35:
            end = start + rng.randrange(120_000) * MS  # no whole minute inside
        else:
            end = start + rng.randint(1, 70) * MINUTE + rng.choice([0, -1, 1, 999]) * MS
        scope = rng.choice(SCOPES)
        now = rng.choice(instants)
        expected = sorted(
            (item for item in model if _matches(item, scope, start, end, now)),
            key=lambda item: (item.time_created, item.id),
        )
        got = search(repo, window_query(scope, start, end, now))
        assert got == (len(expected), [item.id for item in expected]), (scope, start, end, now)


def _matches(
    item: MediaItem, scope: SearchScope, start: datetime, end: datetime | None, now: datetime
) -> bool:
    return (
        item.state is ItemState.READY
        and item.account_id == scope.account_id
        and (scope.application_id is None or item.application_id == scope.application_id)
        and start <= item.time_created
        and (end is None or item.time_created <= end)
        and (item.expires_at is None or item.expires_at > now)
    )


def test_sweeping_an_expired_item_leaves_the_totals_exact(repo: MediaRepository) -> None:
    """Once the sweeper has removed it, the per-minute counts lose it and nothing is taken
    away twice."""
    items = [add(repo, time_created=T0 + i * MINUTE, expires_at=NOW) for i in range(3)]
    add(repo, time_created=T0 + MINUTE)
    query = window_query(
        SearchScope("acc-a"), T0 - timedelta(hours=1), T0 + timedelta(hours=1), NOW
    )
    assert search(repo, query)[0] == 1
    for item in repo.iter_expired(NOW):
        assert repo.mark_deleting(item.id, expired_by=NOW) is not None
        assert repo.remove(item.id)
    assert search(repo, query)[0] == 1
    assert all(repo.get(item.id, include_hidden=True) is None for item in items)


def _raw_mongo(repo: MediaRepository) -> Any:
    if not isinstance(repo, mongo.MongoMediaRepository):
        pytest.skip("MongoDB only")
    return repo.db.collection(repo.collection_name)


def test_mongo_documents_from_before_expiry_never_expire(repo: MediaRepository) -> None:
    items = _raw_mongo(repo)
    item = add(repo, time_created=T0)
    items.update_one({"_id": item.id}, {"$unset": {"expires_at": ""}})
    assert "expires_at" not in items.find_one({"_id": item.id})
    got = repo.get(item.id)
    assert got is not None and got.expires_at is None
    assert search(repo, window_query(SearchScope("acc-a"), T0, None, NOW)) == (1, [item.id])
    assert list(repo.iter_expired(NOW + timedelta(days=9999))) == []
    assert repo.update(item.id, {"title": "still here"}, NOW) is not None


def test_mongo_has_the_expiry_indexes(repo: MediaRepository) -> None:
    indexes = _raw_mongo(repo).index_information()
    assert [key for key, _ in indexes["state_expiry"]["key"]] == ["state", "expires_at", "_id"]
    for name, scope in (("account_expiry", "account_id"), ("application_expiry", "application_id")):
        assert [key for key, _ in indexes[name]["key"]] == [scope, "state", "expires_at"]
