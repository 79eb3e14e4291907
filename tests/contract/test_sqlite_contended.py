"""SqliteDatabase.run_contended: threads take turns, and the wait for a turn is bounded."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from media_service.storage.interfaces import BackendUnavailable
from media_service.storage.sqlite import SqliteDatabase


def test_threads_taking_turns_lose_no_update(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "media.db")
    db.run("CREATE TABLE n (v INTEGER)", durable=True)
    db.run("INSERT INTO n VALUES (0)", durable=True)

    def count() -> None:
        for _ in range(200):
            assert db.run_contended("UPDATE n SET v = v + 1") == 1

    threads = [threading.Thread(target=count) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert db.fetch("SELECT v FROM n")[0][0] == 1600
    db.close()


def test_the_wait_for_a_turn_ends_with_the_backend_timeout(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "media.db", timeout=0.05)
    db.run("CREATE TABLE n (v INTEGER)", durable=True)
    db._contended.acquire()  # another thread's count, stuck
    try:
        with pytest.raises(BackendUnavailable):
            db.run_contended("UPDATE n SET v = v + 1")
    finally:
        db._contended.release()
    assert db.run_contended("UPDATE n SET v = v + 1") == 0  # no row: nothing to count
    db.close()
