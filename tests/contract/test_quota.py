"""The quota contract of every MediaRepository: SQLite, mongomock, and real MongoDB when set."""

from __future__ import annotations

import threading
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from media_service.service.media import utc_now
from media_service.storage.interfaces import ItemState, MediaRepository, Quota, Reservation
from media_service.storage.sqlite import SqliteDatabase, SqliteMediaRepository
from tests.contract import test_media_repository as contract
from tests.contract.test_media_repository import make_item
from tests.real_backends import mongo_is_ferretdb

# The contract's fixture: every repository (SQLite, mongomock, and a real MongoDB when set).
repo = contract.repo
ACCOUNT = "acc-a"
KIB = 1024


def pending(repo: MediaRepository, account: str = ACCOUNT) -> str:
    item = make_item(account_id=account, state=ItemState.PENDING, media_size=0)
    repo.insert(item)
    return item.id


def start_upload(repo: MediaRepository, size: int, account: str = ACCOUNT) -> str:
    item_id = pending(repo, account)
    assert repo.reserve_item(account, item_id) is Reservation.RESERVED
    if size:
        assert repo.reserve_bytes(account, item_id, size) is Reservation.RESERVED
    return item_id


def finish_upload(repo: MediaRepository, item_id: str, size: int) -> None:
    assert repo.mark_ready(item_id, {"media_size": size}) is not None
    repo.settle_quota(ACCOUNT, item_id, size)


def usage(repo: MediaRepository) -> tuple[int, int]:
    quota = repo.quota(ACCOUNT)
    return quota.bytes, quota.items


def test_an_account_never_counted_has_no_limits_and_no_usage(repo: MediaRepository) -> None:
    assert repo.quota("nobody") == Quota("nobody", 0, 0, 0, 0)


def test_set_quota_changes_only_the_limits_given(repo: MediaRepository) -> None:
    assert repo.set_quota(ACCOUNT, 1000, None) == Quota(ACCOUNT, 1000, 0, 0, 0)
    assert repo.set_quota(ACCOUNT, None, 7) == Quota(ACCOUNT, 1000, 7, 0, 0)
    start_upload(repo, 10)
    assert repo.set_quota(ACCOUNT, 0, None) == Quota(ACCOUNT, 0, 7, 10, 1)
    assert repo.quota(ACCOUNT) == Quota(ACCOUNT, 0, 7, 10, 1)


@pytest.mark.parametrize("bad", [-1, 2**63, True, 1.5, "10"])
def test_set_quota_refuses_values_that_are_not_limits(repo: MediaRepository, bad: Any) -> None:
    with pytest.raises(ValueError):
        repo.set_quota(ACCOUNT, bad, None)
    with pytest.raises(ValueError):
        repo.set_quota(ACCOUNT, None, bad)
    assert repo.quota(ACCOUNT) == Quota(ACCOUNT, 0, 0, 0, 0)


def test_reservations_stop_exactly_at_the_limits(repo: MediaRepository) -> None:
    repo.set_quota(ACCOUNT, 100, 2)
    first = start_upload(repo, 60)
    assert repo.reserve_bytes(ACCOUNT, first, 41) is Reservation.QUOTA_EXCEEDED
    assert usage(repo) == (60, 1)
    assert repo.reserve_bytes(ACCOUNT, first, 40) is Reservation.RESERVED
    assert repo.reserve_bytes(ACCOUNT, first, 1) is Reservation.QUOTA_EXCEEDED
    assert repo.reserve_bytes(ACCOUNT, first, 0) is Reservation.RESERVED
    second = pending(repo)
    assert repo.reserve_item(ACCOUNT, second) is Reservation.RESERVED
    third = pending(repo)
    assert repo.reserve_item(ACCOUNT, third) is Reservation.QUOTA_EXCEEDED
    assert usage(repo) == (100, 2)


def test_a_reservation_cannot_grow_on_an_item_that_is_not_an_upload(
    repo: MediaRepository,
) -> None:
    unknown = str(uuid.uuid4())
    assert repo.reserve_bytes(ACCOUNT, unknown, 5) is Reservation.NOT_PENDING
    item_id = start_upload(repo, 5)
    repo.remove(item_id)  # rolled back
    assert repo.reserve_bytes(ACCOUNT, item_id, 5) is Reservation.NOT_PENDING
    assert usage(repo) == (0, 0)


def test_removing_a_pending_upload_gives_its_reservation_back_once(
    repo: MediaRepository,
) -> None:
    kept = start_upload(repo, 7)
    rolled_back = start_upload(repo, 1000)
    assert usage(repo) == (1007, 2)
    assert repo.remove(rolled_back)
    assert not repo.remove(rolled_back)
    assert usage(repo) == (7, 1)
    assert repo.quota(ACCOUNT).bytes == 7 and kept


def test_a_ready_item_holds_its_bytes_until_its_document_goes(repo: MediaRepository) -> None:
    item_id = start_upload(repo, 300)
    finish_upload(repo, item_id, 300)
    repo.settle_quota(ACCOUNT, item_id, 300)  # idempotent
    assert usage(repo) == (300, 1)
    assert repo.mark_deleting(item_id) is not None
    assert usage(repo) == (300, 1)  # a tombstone still holds its bytes
    assert repo.remove(item_id)
    assert usage(repo) == (0, 0)
    assert not repo.remove(item_id)
    assert usage(repo) == (0, 0)


def test_an_item_removed_before_its_reservation_was_settled_counts_once(
    repo: MediaRepository,
) -> None:
    """A delete between mark_ready and settle_quota (or a writer that died there)."""
    item_id = start_upload(repo, 50)
    assert repo.mark_ready(item_id, {"media_size": 50}) is not None
    assert repo.mark_deleting(item_id) is not None
    assert repo.remove(item_id)
    repo.settle_quota(ACCOUNT, item_id, 50)  # the upload's late settle changes nothing
    assert usage(repo) == (0, 0)


def test_heal_settles_and_releases_what_dead_writers_left(repo: MediaRepository) -> None:
    ready = start_upload(repo, 20)
    assert repo.mark_ready(ready, {"media_size": 20}) is not None  # died before settling
    alive = start_upload(repo, 5)
    now = utc_now()
    assert repo.heal_quotas(now, now - timedelta(minutes=5)) == 0  # nothing is stale yet
    later = now + timedelta(hours=2)
    repo.heal_quotas(later, later - timedelta(minutes=5))
    assert usage(repo) == (25, 2)  # the live upload is the roll-back's to release
    assert repo.mark_deleting(ready) is not None
    assert repo.remove(ready)
    assert repo.remove(alive)
    assert usage(repo) == (0, 0)
    repo.heal_quotas(later, later - timedelta(minutes=5))
    assert usage(repo) == (0, 0)


def test_concurrent_reservations_are_exact(repo: MediaRepository, request: Any) -> None:
    """20 uploads of 100 KiB in parallel against 1 MiB: exactly 10 fit, the usage says so."""
    if "mongomock" in request.node.name:
        pytest.skip("mongomock's updates are not atomic across threads (see docs/design.md)")
    if "mongo-real" in request.node.name and mongo_is_ferretdb():
        # Not strict: threads of one client may or may not interleave a read and a later write.
        reason = "FerretDB 1.x updates are not atomic across writers (docs/ferretdb.md)"
        request.applymarker(pytest.mark.xfail(reason=reason))
    repo.set_quota(ACCOUNT, 1024 * KIB, None)
    items = [pending(repo) for _ in range(20)]
    outcomes: list[Reservation] = []
    barrier = threading.Barrier(len(items))
    lock = threading.Lock()

    def upload(item_id: str) -> None:
        barrier.wait()
        repo.reserve_item(ACCOUNT, item_id)
        result = Reservation.RESERVED
        for _ in range(4):  # 4 chunks of 25 KiB
            result = repo.reserve_bytes(ACCOUNT, item_id, 25 * KIB)
            if result is not Reservation.RESERVED:
                repo.remove(item_id)
                break
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=upload, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stored = outcomes.count(Reservation.RESERVED)
    assert 1 <= stored <= 10
    assert usage(repo) == (stored * 100 * KIB, stored)


def test_sqlite_counts_items_stored_before_quotas_once(tmp_path: Path) -> None:
    """A database from before quotas gains the column, the table and the trigger at start-up;
    its READY items are counted once (not its hidden ones), and a second start changes nothing."""
    db = SqliteDatabase(tmp_path / "media.db")
    repo = SqliteMediaRepository(db)
    repo.prepare_database()
    for size, state, account in (
        (10, "ready", ACCOUNT),
        (20, "ready", ACCOUNT),
        (40, "ready", "b"),
    ):
        repo.insert(make_item(account_id=account, media_size=size, state=ItemState(state)))
    repo.insert(make_item(media_size=80, state=ItemState.PENDING))
    with db.transaction(write=True) as conn:  # back to the schema before quotas
        conn.execute("DROP TRIGGER account_quotas_release")
        conn.execute("DROP TABLE account_quotas")
        conn.execute("ALTER TABLE media_items DROP COLUMN quota_bytes")
    repo.prepare_database()
    repo.prepare_database()
    assert repo.quota(ACCOUNT) == Quota(ACCOUNT, 0, 0, 30, 2)
    assert repo.quota("b") == Quota("b", 0, 0, 40, 1)
    [first] = [row[0] for row in db.fetch("SELECT id FROM media_items WHERE media_size = 10")]
    assert repo.mark_deleting(first) is not None and repo.remove(first)
    assert repo.quota(ACCOUNT) == Quota(ACCOUNT, 0, 0, 20, 1)
    db.close()
