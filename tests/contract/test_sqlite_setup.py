"""SQLite's set-up waits for another process's lock instead of failing (see also
tests/integration/test_concurrent_setup.py, with processes on one fresh file)."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from media_service.storage.interfaces import BackendUnavailable
from media_service.storage.sqlite import SqliteDatabase


def _refused(code: int, message: str = "database is locked") -> sqlite3.OperationalError:
    error = sqlite3.OperationalError(message)
    error.sqlite_errorcode = code  # type: ignore[misc]  # as SQLite sets it
    return error


def test_a_lock_refused_at_once_is_waited_out(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "media.db", timeout=5.0)
    attempts: list[int] = []

    def create(conn: sqlite3.Connection) -> None:
        attempts.append(1)
        if len(attempts) <= 3:
            raise _refused(sqlite3.SQLITE_BUSY if len(attempts) % 2 else sqlite3.SQLITE_LOCKED)
        conn.execute("CREATE TABLE t (x)")

    db.set_up(create)
    assert len(attempts) == 4
    assert db.fetch("SELECT name FROM sqlite_schema")[0][0] == "t"
    db.close()


def test_a_lock_that_stays_fails_after_the_backend_timeout(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "media.db", timeout=0.3)

    def create(conn: sqlite3.Connection) -> None:
        raise _refused(sqlite3.SQLITE_BUSY)

    started = time.monotonic()
    with pytest.raises(BackendUnavailable):
        db.set_up(create)
    assert 0.1 < time.monotonic() - started < 2.0
    db.close()


def test_other_errors_are_not_retried(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "media.db", timeout=5.0)
    attempts: list[int] = []

    def create(conn: sqlite3.Connection) -> None:
        attempts.append(1)
        raise _refused(sqlite3.SQLITE_IOERR, "disk I/O error")

    with pytest.raises(BackendUnavailable, match="disk I/O error"):
        db.set_up(create)
    assert attempts == [1]
    db.close()


def test_set_up_queues_behind_another_writer(tmp_path: Path) -> None:
    path = tmp_path / "media.db"
    SqliteDatabase(path).prepare_database()
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(0.3, lambda: other.execute("COMMIT")).start()
    db = SqliteDatabase(path, timeout=5.0)
    db.prepare_database()
    db.close()
    other.close()
