"""Account quotas on SQLite: a counter per account, changed only inside the same transaction as
the item rows it accounts for, so that it is exact under any concurrency of processes.

* `account_quotas` holds each account's limits and usage (0 = unlimited). Usage counts every item
  that holds a reservation: READY ones and uploads in flight.
* `media_items.quota_bytes` is what an item holds (NULL: not counted). An upload reserves one
  item and then grows its reservation chunk by chunk, each step one transaction whose
  conditional UPDATE of the counter refuses what would pass a limit.
* Giving the room back is a trigger on DELETE: whatever removes an item's row (a delete, the
  sweeper's roll-back, a failed upload's clean-up) releases its reservation in the same
  transaction, hence exactly once.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING

from media_service.storage import records
from media_service.storage.interfaces import Quota, Reservation

if TYPE_CHECKING:
    from media_service.storage.sqlite import SqliteDatabase

TABLE = """
CREATE TABLE IF NOT EXISTS account_quotas (
    account_id TEXT PRIMARY KEY,
    max_bytes  INTEGER NOT NULL DEFAULT 0 CHECK (max_bytes >= 0),
    max_items  INTEGER NOT NULL DEFAULT 0 CHECK (max_items >= 0),
    bytes      INTEGER NOT NULL DEFAULT 0,
    items      INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID
"""
TRIGGER = """
CREATE TRIGGER IF NOT EXISTS account_quotas_release AFTER DELETE ON media_items
WHEN OLD.quota_bytes IS NOT NULL
BEGIN
    UPDATE account_quotas SET bytes = bytes - OLD.quota_bytes, items = items - 1
    WHERE account_id = OLD.account_id;
END
"""

# Items stored before quotas existed: counted once, when the column is added.
_BACKFILL = """
INSERT INTO account_quotas (account_id, bytes, items)
SELECT account_id, coalesce(sum(media_size), 0), count(*) FROM media_items
WHERE state = 'ready' AND quota_bytes IS NULL GROUP BY account_id
ON CONFLICT (account_id) DO UPDATE
SET bytes = bytes + excluded.bytes, items = items + excluded.items
"""


def ensure_quota_tables(conn: sqlite3.Connection) -> None:
    """Add the quota table, column and trigger (inside prepare_database's write transaction)."""
    present = {row[1] for row in conn.execute("PRAGMA table_info(media_items)")}
    added = "quota_bytes" not in present
    if added:
        conn.execute("ALTER TABLE media_items ADD COLUMN quota_bytes INTEGER")
    conn.execute(TABLE)
    conn.execute(TRIGGER)
    if added:
        conn.execute(_BACKFILL)
        conn.execute(
            "UPDATE media_items SET quota_bytes = media_size"
            " WHERE state = 'ready' AND quota_bytes IS NULL"
        )


class _Refused(Exception):
    """Roll the reservation's transaction back."""

    def __init__(self, outcome: Reservation) -> None:
        self.outcome = outcome


class SqliteQuotas:
    """The quota methods of SqliteMediaRepository (which provides `self.db`)."""

    db: SqliteDatabase

    def quota(self, account_id: str) -> Quota:
        rows = self.db.fetch(
            "SELECT * FROM account_quotas WHERE account_id = ?",
            (records.require_id(account_id, "account_id"),),
        )
        if not rows:
            return Quota(account_id, 0, 0, 0, 0)
        return _quota(rows[0])

    def set_quota(self, account_id: str, max_bytes: int | None, max_items: int | None) -> Quota:
        key = records.require_id(account_id, "account_id")
        with self.db.transaction(write=True, durable=True) as conn:
            conn.execute(
                "INSERT INTO account_quotas (account_id) VALUES (?) ON CONFLICT DO NOTHING", (key,)
            )
            if max_bytes is not None:
                conn.execute(
                    "UPDATE account_quotas SET max_bytes = ? WHERE account_id = ?",
                    (_limit(max_bytes), key),
                )
            if max_items is not None:
                conn.execute(
                    "UPDATE account_quotas SET max_items = ? WHERE account_id = ?",
                    (_limit(max_items), key),
                )
            row = conn.execute(
                "SELECT * FROM account_quotas WHERE account_id = ?", (key,)
            ).fetchone()
        return _quota(row)

    def reserve_item(self, account_id: str, item_id: str) -> Reservation:
        key = records.require_id(account_id, "account_id")
        item = records.require_id(item_id)

        def step(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO account_quotas (account_id) VALUES (?) ON CONFLICT DO NOTHING", (key,)
            )
            counted = conn.execute(
                "UPDATE account_quotas SET items = items + 1"
                " WHERE account_id = ? AND (max_items = 0 OR items + 1 <= max_items)",
                (key,),
            ).rowcount
            if not counted:
                raise _Refused(Reservation.QUOTA_EXCEEDED)
            held = conn.execute(
                "UPDATE media_items SET quota_bytes = 0"
                " WHERE id = ? AND account_id = ? AND state = 'pending' AND quota_bytes IS NULL",
                (item, key),
            ).rowcount
            if not held:
                raise _Refused(Reservation.NOT_PENDING)

        return self._reserve(step)

    def reserve_bytes(self, account_id: str, item_id: str, size: int) -> Reservation:
        key = records.require_id(account_id, "account_id")
        item = records.require_id(item_id)
        if size < 0:
            raise ValueError("size must be >= 0")

        def step(conn: sqlite3.Connection) -> None:
            # The item first: a reservation only grows on an upload still in flight.
            held = conn.execute(
                "UPDATE media_items SET quota_bytes = quota_bytes + ?"
                " WHERE id = ? AND account_id = ? AND state = 'pending'"
                " AND quota_bytes IS NOT NULL",
                (size, item, key),
            ).rowcount
            if not held:
                raise _Refused(Reservation.NOT_PENDING)
            counted = conn.execute(
                "UPDATE account_quotas SET bytes = bytes + :size"
                " WHERE account_id = :key AND (max_bytes = 0 OR bytes + :size <= max_bytes)",
                {"size": size, "key": key},
            ).rowcount
            if not counted:
                raise _Refused(Reservation.QUOTA_EXCEEDED)

        return self._reserve(step)

    def _reserve(self, step: Callable[[sqlite3.Connection], None]) -> Reservation:
        # Not durable (synchronous=NORMAL): the counter and the item's reservation commit
        # together, so whatever a crash loses, it loses both; the upload's mark_ready fsyncs.
        try:
            with self.db.transaction(write=True) as conn:
                step(conn)
        except _Refused as refused:
            return refused.outcome
        return Reservation.RESERVED

    def settle_quota(self, account_id: str, item_id: str, reserved: int) -> None:
        """Nothing to do: the reservation is on the item's row from the start."""

    def heal_quotas(self, now: datetime, stale_before: datetime) -> int:
        """Nothing to heal: every change is one transaction."""
        return 0


def _limit(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ValueError("a quota limit must be an integer from 0 (unlimited) to 2**63-1")
    return value


def _quota(row: sqlite3.Row) -> Quota:
    return Quota(
        account_id=row["account_id"],
        max_bytes=int(row["max_bytes"]),
        max_items=int(row["max_items"]),
        bytes=int(row["bytes"]),
        items=int(row["items"]),
    )
