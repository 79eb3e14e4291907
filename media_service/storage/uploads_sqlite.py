"""Records of resumable uploads in SQLite (the same database file as the media items)."""

from __future__ import annotations

import json
import sqlite3
import threading
from datetime import datetime

from media_service.storage import records
from media_service.storage.resumable import Claim, ResumableUpload
from media_service.storage.sqlite import SqliteDatabase, from_ms, run_statements, to_ms

# `upload_offset`: OFFSET is an SQL keyword. The lease is (lock_token, lock_until).
TABLES = """
CREATE TABLE IF NOT EXISTS resumable_uploads (
    id             TEXT PRIMARY KEY,
    account_id     TEXT NOT NULL,
    application_id TEXT,
    length         INTEGER NOT NULL CHECK (length >= 0),
    upload_offset  INTEGER NOT NULL CHECK (upload_offset >= 0 AND upload_offset <= length),
    metadata       TEXT NOT NULL,
    time_created   INTEGER NOT NULL,
    expires        INTEGER NOT NULL,
    media_id       TEXT,
    lock_token     TEXT,
    lock_until     INTEGER
);
CREATE INDEX IF NOT EXISTS resumable_uploads_expires ON resumable_uploads (expires);
"""

_CLAIM = """
UPDATE resumable_uploads SET lock_token = :token, lock_until = :until
WHERE id = :id AND media_id IS NULL
  AND (:offset IS NULL OR upload_offset = :offset)
  AND (lock_token IS NULL OR lock_until < :now)
"""


class SqliteUploadRepository:
    """Resumable upload records in the `resumable_uploads` table."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db
        self._setup_lock = threading.Lock()
        self._prepared = False

    def prepare_database(self) -> None:
        """Create the table if missing (once per process; retried after a failure)."""
        with self._setup_lock:
            if self._prepared:
                return
            self.db.set_up(lambda conn: run_statements(conn, TABLES))
            self._prepared = True

    def create(self, upload: ResumableUpload) -> None:
        self.prepare_database()
        self.db.run(
            "INSERT INTO resumable_uploads (id, account_id, application_id, length,"
            " upload_offset, metadata, time_created, expires)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                records.require_id(upload.id),
                upload.account_id,
                upload.application_id,
                upload.length,
                upload.offset,
                json.dumps(upload.metadata),
                to_ms(upload.time_created),
                to_ms(upload.expires),
            ),
            durable=True,
        )

    def get(self, upload_id: str) -> ResumableUpload | None:
        self.prepare_database()
        rows = self.db.fetch(
            "SELECT * FROM resumable_uploads WHERE id = ?", (records.require_id(upload_id),)
        )
        return _upload(rows[0]) if rows else None

    def claim(
        self, upload_id: str, offset: int | None, token: str, until: datetime, now: datetime
    ) -> Claim:
        self.prepare_database()
        params = {
            "id": records.require_id(upload_id),
            "offset": offset,
            "token": token,
            "until": to_ms(until),
            "now": to_ms(now),
        }
        if self.db.run(_CLAIM, params):
            return Claim.CLAIMED
        current = self.get(upload_id)
        if current is None:
            return Claim.NOT_FOUND
        if current.media_id is not None:
            return Claim.COMPLETE
        if offset is not None and current.offset != offset:
            return Claim.OFFSET_MISMATCH
        return Claim.BUSY

    def renew(self, upload_id: str, token: str, until: datetime) -> bool:
        return (
            self.db.run(
                "UPDATE resumable_uploads SET lock_until = ? WHERE id = ? AND lock_token = ?",
                (to_ms(until), upload_id, token),
            )
            > 0
        )

    def advance(self, upload_id: str, token: str, old: int, new: int) -> bool:
        return (
            self.db.run(
                "UPDATE resumable_uploads SET upload_offset = ?"
                " WHERE id = ? AND lock_token = ? AND upload_offset = ?",
                (new, upload_id, token, old),
                durable=True,
            )
            > 0
        )

    def finish(self, upload_id: str, token: str, media_id: str) -> bool:
        return (
            self.db.run(
                "UPDATE resumable_uploads SET upload_offset = length, media_id = ?,"
                " lock_token = NULL, lock_until = NULL WHERE id = ? AND lock_token = ?",
                (media_id, upload_id, token),
                durable=True,
            )
            > 0
        )

    def release(self, upload_id: str, token: str) -> None:
        self.db.run(
            "UPDATE resumable_uploads SET lock_token = NULL, lock_until = NULL"
            " WHERE id = ? AND lock_token = ?",
            (upload_id, token),
        )

    def remove(self, upload_id: str) -> bool:
        self.prepare_database()
        return (
            self.db.run(
                "DELETE FROM resumable_uploads WHERE id = ?",
                (records.require_id(upload_id),),
                durable=True,
                may_use_spare=True,
            )
            > 0
        )

    def expired(self, now: datetime, limit: int) -> list[ResumableUpload]:
        self.prepare_database()
        rows = self.db.fetch(
            "SELECT * FROM resumable_uploads WHERE expires < ? ORDER BY expires LIMIT ?",
            (to_ms(now), limit),
        )
        return [_upload(row) for row in rows]

    def existing(self, upload_ids: list[str]) -> set[str]:
        self.prepare_database()
        found: set[str] = set()
        for start in range(0, len(upload_ids), 500):
            batch = upload_ids[start : start + 500]
            marks = ", ".join("?" * len(batch))
            rows = self.db.fetch(f"SELECT id FROM resumable_uploads WHERE id IN ({marks})", batch)
            found.update(row["id"] for row in rows)
        return found


def _upload(row: sqlite3.Row) -> ResumableUpload:
    return ResumableUpload(
        id=row["id"],
        account_id=row["account_id"],
        application_id=row["application_id"],
        length=row["length"],
        offset=row["upload_offset"],
        metadata=json.loads(row["metadata"]),
        time_created=from_ms(row["time_created"]),
        expires=from_ms(row["expires"]),
        media_id=row["media_id"],
    )
