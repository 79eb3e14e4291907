"""SQLite adapters, the embedded default: media items and credentials in one database file."""

from __future__ import annotations

import contextlib
import json
import logging
import mmap
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar, cast

from media_service.settings import Settings, sqlite_path
from media_service.storage import forksafe, records
from media_service.storage.disk import SpareFile
from media_service.storage.interfaces import (
    Account,
    AlreadyExists,
    Application,
    AudioFacts,
    BackendUnavailable,
    CountOutcome,
    CountResult,
    InvalidValue,
    KeyRemoval,
    MediaItem,
    SearchPage,
    SearchQuery,
    StorageFull,
    Usage,
)
from media_service.storage.sqlite_quota import SqliteQuotas, ensure_quota_tables

log = logging.getLogger(__name__)
T = TypeVar("T")
Params = Mapping[str, Any] | Sequence[Any]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_BATCH = 500  # rows per sweeper page, and bound parameters per IN (...) list
_MINUTE_MS = 60_000

# Times are INTEGER epoch milliseconds (UTC): they compare and index as plain numbers.
# The scope indexes (SCOPE_INDEXES, created once expires_at exists) make a search a range scan
# of one scope's READY items, already in the requested order: its cost does not grow with the table.
TABLES = """
CREATE TABLE IF NOT EXISTS media_items (
    id                    TEXT PRIMARY KEY,
    account_id            TEXT NOT NULL,
    application_id        TEXT,
    original_file_name    TEXT NOT NULL,
    mime_type             TEXT NOT NULL,
    store_id              TEXT NOT NULL,
    store_key             TEXT NOT NULL,
    store_meta_params     TEXT NOT NULL,
    max_downloads_allowed INTEGER NOT NULL CHECK (max_downloads_allowed >= 0),
    times_downloaded      INTEGER NOT NULL CHECK (times_downloaded >= 0),
    etag                  TEXT NOT NULL,
    media_size            INTEGER NOT NULL,
    time_created          INTEGER NOT NULL,
    time_last_updated     INTEGER NOT NULL,
    time_content_modified INTEGER NOT NULL,
    public                INTEGER NOT NULL,
    metadata_primary      TEXT,
    metadata_secondary    TEXT,
    title                 TEXT,
    description           TEXT,
    source_url            TEXT,
    state                 TEXT NOT NULL CHECK (state IN ('pending', 'ready', 'deleting')),
    audio                 TEXT,
    audio_examined        INTEGER NOT NULL DEFAULT 0,
    expires_at            INTEGER
);
CREATE INDEX IF NOT EXISTS media_items_state_time
    ON media_items (state, time_created, id);
CREATE UNIQUE INDEX IF NOT EXISTS media_items_store_key
    ON media_items (store_key);

-- How many READY items each scope has per minute of time_created (floor of epoch ms / 60000),
-- kept by the triggers of COUNT_TRIGGERS: a search's total sums the whole minutes of its window
-- from here and counts only its two partial edge minutes in media_items, so its cost grows with
-- the window's length in minutes, not with the number of items in it. application_id '' stands
-- for "no application". Rows that fall to 0 stay (at most one per scope and minute).
CREATE TABLE IF NOT EXISTS media_counts (
    account_id     TEXT NOT NULL,
    application_id TEXT NOT NULL DEFAULT '',
    minute         INTEGER NOT NULL,
    n              INTEGER NOT NULL,
    PRIMARY KEY (account_id, application_id, minute)
) WITHOUT ROWID;
-- The primary key serves application-scoped sums (an application search also names the
-- account), and this covering index serves account-scoped sums over every application.
CREATE INDEX IF NOT EXISTS media_counts_account
    ON media_counts (account_id, minute, n);

CREATE TABLE IF NOT EXISTS accounts (
    api_key       TEXT PRIMARY KEY,
    secret_salt   BLOB NOT NULL,
    secret_digest BLOB NOT NULL,
    enabled       INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS applications (
    application_id TEXT PRIMARY KEY,
    api_key        TEXT NOT NULL,
    enabled        INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS applications_api_key ON applications (api_key);
CREATE TABLE IF NOT EXISTS application_public_keys (
    id             INTEGER PRIMARY KEY,
    application_id TEXT NOT NULL
        REFERENCES applications (application_id) ON DELETE CASCADE,
    public_key_pem TEXT NOT NULL,
    UNIQUE (application_id, public_key_pem)
);
"""


def _minute_of(column: str) -> str:
    """SQL for the floor of `column` / 60000: SQLite's integer division truncates toward zero."""
    return (
        f"(CASE WHEN {column} >= 0 THEN {column} / {_MINUTE_MS}"
        f" ELSE ({column} + 1) / {_MINUTE_MS} - 1 END)"
    )


def _bump(row: str, delta: int) -> str:
    return (
        "INSERT INTO media_counts (account_id, application_id, minute, n)"
        f" VALUES ({row}.account_id, coalesce({row}.application_id, ''),"
        f" {_minute_of(f'{row}.time_created')}, {delta})"
        " ON CONFLICT (account_id, application_id, minute) DO UPDATE SET n = n + excluded.n;"
    )


# A trigger runs inside its statement's transaction, so the counts change atomically with the
# rows: they are exact under any concurrency. The UPDATE triggers fire only for statements that
# set one of the counted columns; count_download's UPDATE sets none and pays nothing. An UPDATE
# that leaves a READY item READY in the same minute adds -1 and +1 to the same row.
COUNT_TRIGGERS: dict[str, str] = {
    "media_counts_insert": f"""
CREATE TRIGGER IF NOT EXISTS media_counts_insert AFTER INSERT ON media_items
WHEN NEW.state = 'ready'
BEGIN {_bump("NEW", 1)} END""",
    "media_counts_update_old": f"""
CREATE TRIGGER IF NOT EXISTS media_counts_update_old
AFTER UPDATE OF state, time_created, account_id, application_id ON media_items
WHEN OLD.state = 'ready'
BEGIN {_bump("OLD", -1)} END""",
    "media_counts_update_new": f"""
CREATE TRIGGER IF NOT EXISTS media_counts_update_new
AFTER UPDATE OF state, time_created, account_id, application_id ON media_items
WHEN NEW.state = 'ready'
BEGIN {_bump("NEW", 1)} END""",
    "media_counts_delete": f"""
CREATE TRIGGER IF NOT EXISTS media_counts_delete AFTER DELETE ON media_items
WHEN OLD.state = 'ready'
BEGIN {_bump("OLD", -1)} END""",
}
_COUNT_OBJECTS = ("media_counts", "media_counts_account", *COUNT_TRIGGERS)
_BACKFILL = f"""
INSERT INTO media_counts (account_id, application_id, minute, n)
SELECT account_id, coalesce(application_id, ''), {_minute_of("time_created")}, count(*)
FROM media_items WHERE state = 'ready' GROUP BY 1, 2, 3
"""


# Columns added after the first release: a database created before them gains them at start-up.
# Existing rows read as "never examined" (audio_examined 0), which backfill-audio fills in, and
# as never expiring (expires_at NULL).
_ADDED_COLUMNS = {
    "audio": "audio TEXT",
    "audio_examined": "audio_examined INTEGER NOT NULL DEFAULT 0",
    "expires_at": "expires_at INTEGER",
}

# The scope indexes a search page walks, newest first. expires_at comes last so that a deep page
# skips its OFFSET rows on the index alone: without it each skipped row was read from the table to
# judge expiry (page 500 of a 1 M-item account: 35 ms instead of ~9). Created once the column
# exists; a database whose index lacks it (from before expiry) has it rebuilt, once.
SCOPE_INDEXES: dict[str, str] = {
    "media_items_account": "account_id, state, time_created, id, expires_at",
    "media_items_application": "application_id, state, time_created, id, expires_at",
}


def _ensure_scope_indexes(conn: sqlite3.Connection) -> None:
    for name, columns in SCOPE_INDEXES.items():
        present = [row[2] for row in conn.execute(f"PRAGMA index_info({name})")]
        if present and present != [column.strip() for column in columns.split(",")]:
            conn.execute(f"DROP INDEX {name}")
        conn.execute(f"CREATE INDEX IF NOT EXISTS {name} ON media_items ({columns})")


# Indexes on expiry, created once the column exists (a database from before it gains it first).
# Partial: items that never expire (most, usually) cost nothing in them. The scope ones count a
# search's expired-but-unswept matches (subtracted from its total); the last one feeds the
# sweeper in (expires_at, id) order.
EXPIRY_INDEXES = """
CREATE INDEX IF NOT EXISTS media_items_account_expiry
    ON media_items (account_id, state, expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS media_items_application_expiry
    ON media_items (application_id, state, expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS media_items_expiry
    ON media_items (state, expires_at, id) WHERE expires_at IS NOT NULL;
"""


def _add_missing_columns(conn: sqlite3.Connection) -> None:
    present = {row[1] for row in conn.execute("PRAGMA table_info(media_items)")}
    for name, definition in _ADDED_COLUMNS.items():
        if name not in present:
            conn.execute(f"ALTER TABLE media_items ADD COLUMN {definition}")


def to_ms(value: datetime) -> int:
    """Epoch milliseconds of an aware datetime (exact integer arithmetic, no float rounding)."""
    return (records.utc_ms(value) - _EPOCH) // _MS


def from_ms(value: int) -> datetime:
    """The aware UTC datetime of epoch milliseconds."""
    return _EPOCH + value * _MS


@contextmanager
def _translated() -> Iterator[None]:
    """Turn sqlite3 errors into the ports' exceptions."""
    try:
        yield
    except sqlite3.IntegrityError as exc:
        if exc.sqlite_errorname in ("SQLITE_CONSTRAINT_PRIMARYKEY", "SQLITE_CONSTRAINT_UNIQUE"):
            raise AlreadyExists(str(exc)) from exc
        raise
    except (sqlite3.ProgrammingError, sqlite3.InterfaceError):
        raise  # a bug in this module, not a sick database
    except (UnicodeEncodeError, OverflowError) as exc:
        # A value sqlite3 cannot bind (records.py refuses these first; this is the backstop).
        raise InvalidValue(f"a value cannot be stored: {type(exc).__name__}") from None
    except sqlite3.DatabaseError as exc:
        if _is_full(exc):
            raise StorageFull("database", str(exc)) from exc
        # Locked past busy_timeout, I/O error, disk full, unable to open, not a database...
        raise BackendUnavailable("database", str(exc)) from exc


def run_statements(conn: sqlite3.Connection, script: str) -> None:
    """Run each `;`-separated statement of `script` inside the caller's transaction (unlike
    executescript, which commits first)."""
    for statement in script.split(";"):
        if statement.strip():
            conn.execute(statement)


def _is_locked(exc: BaseException | None) -> bool:
    """SQLITE_BUSY or SQLITE_LOCKED (any extended code): another connection holds the lock."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    return isinstance(exc, sqlite3.OperationalError) and code in (
        sqlite3.SQLITE_BUSY,
        sqlite3.SQLITE_LOCKED,
    )


def _is_full(exc: sqlite3.Error) -> bool:
    """SQLITE_FULL: a write needed pages (in the WAL or the file) that the disk does not have."""
    return (getattr(exc, "sqlite_errorcode", 0) & 0xFF) == sqlite3.SQLITE_FULL


class SqliteDatabase:
    """One SQLite file, with a connection per thread and per process, opened on first use."""

    def __init__(self, path: Path, timeout: float = 5.0, spare: SpareFile | None = None) -> None:
        self.path = Path(path)
        self.timeout = timeout
        # Released by writes that free space or keep a promise (deletes, download counts) when
        # the disk is full, so that they still succeed: see storage/disk.py.
        self.spare = spare
        self._lock = threading.Lock()
        # Taken by contended writes (download counts), so that this process's threads queue on
        # a lock that hands over at once instead of meeting in SQLite's busy handler.
        self._contended = threading.Lock()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        # Connections inherited through fork: SQLite forbids using them in the child, and
        # finalising them there could checkpoint or unlink the parent's WAL, so they are only
        # kept referenced here, never used or closed.
        self._inherited: list[sqlite3.Connection] = []
        forksafe.forget_in_forked_children(self)

    @classmethod
    def from_settings(cls, settings: Settings) -> SqliteDatabase:
        """Open the database named by MEDIA_DATABASE_URL, creating its directory."""
        path = sqlite_path(settings.database_url)
        path.parent.mkdir(parents=True, exist_ok=True)
        spare = SpareFile(path.parent, settings.sqlite_spare_bytes)
        return cls(path, settings.backend_timeout, spare)

    def connection(self) -> sqlite3.Connection:
        """This thread's connection (raises sqlite3 errors; call it inside _translated)."""
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect()
            self._local.conn = conn
            with self._lock:
                self._connections.append(conn)
        return conn

    def forget_connections_after_fork(self) -> None:
        # Runs in the child while it has a single thread; a parent thread may have held the
        # lock at fork time, so it is replaced rather than taken.
        self._lock = threading.Lock()
        self._contended = threading.Lock()
        self._inherited.extend(self._connections)
        self._connections = []
        self._local = threading.local()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: autocommit, so every statement is its own short transaction and
        # multi-statement writes say BEGIN IMMEDIATE themselves. check_same_thread=False only so
        # that close() may close every thread's connection at shutdown; each connection is
        # otherwise used by the one thread that opened it.
        conn = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        try:
            conn.row_factory = sqlite3.Row
            conn.execute(f"PRAGMA busy_timeout = {int(self.timeout * 1000)}")
            # WAL: readers never block the writer, and writers from several processes queue on
            # busy_timeout instead of failing. It needs a local file system (not NFS).
            conn.execute("PRAGMA journal_mode = WAL").fetchall()
            # Durability, per statement. In WAL mode NORMAL keeps every commit atomic and
            # survives a crash of the process (even SIGKILL): a committed transaction is in the
            # WAL file, which the OS still writes out. Only an OS crash or power loss can lose
            # the commits since the last WAL fsync. That is accepted for counted downloads, the
            # hot path (one fsync each would cap them at the disk's fsync rate), and only for
            # them: every other write (insert, mark_ready, update, mark_deleting, remove,
            # credentials, tables) runs under `durable=True`, which switches this connection to
            # FULL around its commit so that it fsyncs the WAL first (and with it any earlier
            # NORMAL commits): a 201 or a 204 still means on disk.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
        except BaseException:
            conn.close()
            raise
        return conn

    @staticmethod
    @contextmanager
    def _synchronous(conn: sqlite3.Connection, durable: bool) -> Iterator[None]:
        """Commit under synchronous=FULL (fsync of the WAL) if `durable`, else under NORMAL."""
        if not durable:
            yield
            return
        conn.execute("PRAGMA synchronous = FULL")
        try:
            yield
        finally:
            # Should this fail, the connection stays at FULL: slower, never less durable.
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA synchronous = NORMAL")

    def _statement(
        self,
        run: Callable[[sqlite3.Connection], T],
        *,
        durable: bool,
        may_use_spare: bool,
    ) -> T:
        """Run one autocommit statement; with `may_use_spare`, a disk-full failure releases
        the spare file and is retried once (a failed statement changed nothing)."""
        with _translated():
            conn = self.connection()
            with self._synchronous(conn, durable):
                try:
                    return run(conn)
                except sqlite3.OperationalError as exc:
                    if not (
                        may_use_spare
                        and _is_full(exc)
                        and self.spare is not None
                        and self.spare.release()
                    ):
                        raise
                    log.warning("disk full: released the spare file beside %s", self.path.name)
                return run(conn)

    def fetch(
        self,
        sql: str,
        params: Params = (),
        *,
        durable: bool = False,
        may_use_spare: bool = False,
    ) -> list[sqlite3.Row]:
        """Run one statement and return all its rows (see _connect for `durable`)."""
        # Stepping to the end matters: an UPDATE ... RETURNING commits only when finished.
        return self._statement(
            lambda conn: conn.execute(sql, params).fetchall(),
            durable=durable,
            may_use_spare=may_use_spare,
        )

    def run(
        self,
        sql: str,
        params: Params = (),
        *,
        durable: bool = False,
        may_use_spare: bool = False,
    ) -> int:
        """Run one statement and return how many rows it changed (see _connect for `durable`)."""
        return self._statement(
            lambda conn: conn.execute(sql, params).rowcount,
            durable=durable,
            may_use_spare=may_use_spare,
        )

    def run_contended(self, sql: str, params: Params = (), *, may_use_spare: bool = False) -> int:
        """run() for a short, non-durable write that many threads issue at once (a download
        count); returns how many rows it changed.

        SQLite's busy handler sleeps 1, 2, 5, 10 ... ms between attempts, while this write holds
        the lock for tens of microseconds: 16-32 threads meeting in it slept while the database
        was free. So the threads of this process take turns on a Python lock, which hands over
        on release without a sleep; only writers of other processes still meet in SQLite's
        handler, at most one per process. (A retry loop of our own with busy_timeout 0 was
        measured too: the two PRAGMAs it needs per count cost more than it saved.) The
        statement is unchanged: one atomic conditional UPDATE, exact across processes.
        """
        # Waiting for the turn is bounded by the same backend timeout as SQLite's own wait, so a
        # database locked for long still answers 503 instead of queueing requests for ever.
        if not self._contended.acquire(timeout=self.timeout):
            raise BackendUnavailable("database", "database is locked (queued for a count)")
        try:
            return self.run(sql, params, may_use_spare=may_use_spare)
        finally:
            self._contended.release()

    @contextmanager
    def transaction(self, *, write: bool, durable: bool = False) -> Iterator[sqlite3.Connection]:
        """Run several statements as one transaction (a consistent snapshot when reading)."""
        with _translated():
            conn = self.connection()
            with self._synchronous(conn, durable):
                # IMMEDIATE takes the write lock up front (waiting on busy_timeout): a deferred
                # transaction that upgrades later fails at once with SQLITE_BUSY instead of
                # waiting.
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    yield conn
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise

    def set_up(self, create: Callable[[sqlite3.Connection], None]) -> None:
        """Run `create` in one durable write transaction, again while another process's lock
        refuses it at once; give up (BackendUnavailable) after the backend timeout.

        busy_timeout makes most writers queue for the lock, but SQLite answers "database is
        locked" without waiting where waiting could deadlock: a fresh file's switch to WAL, a
        lock taken while another connection recovers the WAL. Workers booting together on a
        fresh file lost their set-up that way and answered 503 until DatabaseSetup retried,
        seconds later. A failed attempt has been rolled back, so running it again is safe.
        """
        deadline = time.monotonic() + self.timeout
        pause = 0.005
        while True:
            try:
                with self.transaction(write=True, durable=True) as conn:
                    create(conn)
                return
            except BackendUnavailable as error:
                if not _is_locked(error.__cause__) or time.monotonic() + pause > deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def prepare_database(self) -> None:
        """Create the tables, indexes and triggers if missing; fill media_counts if new."""
        self.set_up(self._create_tables)
        if self.spare is not None and not self.spare.ensure():
            log.warning("no room for the spare file beside %s", self.path.name)

    @staticmethod
    def _create_tables(conn: sqlite3.Connection) -> None:
        # One write transaction: workers starting together queue on its lock, and only the
        # first one finds the counts missing, so they are built exactly once. Any missing piece
        # (a database from before media_counts, or a dropped trigger) rebuilds them from scratch.
        marks = ", ".join("?" * len(_COUNT_OBJECTS))
        present = conn.execute(
            f"SELECT count(*) FROM sqlite_schema WHERE name IN ({marks})", _COUNT_OBJECTS
        ).fetchone()[0]
        run_statements(conn, TABLES)
        _add_missing_columns(conn)
        ensure_quota_tables(conn)
        _ensure_scope_indexes(conn)
        run_statements(conn, EXPIRY_INDEXES)
        for trigger in COUNT_TRIGGERS.values():
            conn.execute(trigger)
        if present < len(_COUNT_OBJECTS):
            conn.execute("DELETE FROM media_counts")
            conn.execute(_BACKFILL)

    def ping(self) -> None:
        """Raise BackendUnavailable unless the file can be opened and read."""
        self.fetch("SELECT count(*) FROM sqlite_schema")

    def close(self) -> None:
        """Close every connection this process opened."""
        with self._lock:
            connections, self._connections = self._connections, []
            self._local = threading.local()
        for conn in connections:
            conn.close()


# --------------------------------------------------------------------------- media items

# Column names in SQL text come only from records.STORED_FIELDS, never from input.
_INSERT = "INSERT INTO media_items ({}) VALUES ({})".format(
    ", ".join(records.STORED_FIELDS), ", ".join(f":{name}" for name in records.STORED_FIELDS)
)
_COUNT = """
UPDATE media_items SET times_downloaded = times_downloaded + 1
WHERE id = :id AND state = 'ready'
  AND (NOT :enforce OR max_downloads_allowed = 0 OR times_downloaded < max_downloads_allowed)
"""


def _sql_value(value: object) -> object:
    if isinstance(value, datetime):
        return to_ms(value)
    if isinstance(value, dict):  # the audio facts: JSON text
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    return value


def _sql_values(record: Mapping[str, object]) -> dict[str, object]:
    return {name: _sql_value(value) for name, value in record.items()}


def _item(row: sqlite3.Row) -> MediaItem:
    record: dict[str, object] = dict(zip(row.keys(), row, strict=True))
    for name in records.TIME_FIELDS:
        record[name] = from_ms(row[name])
    for name in records.OPTIONAL_TIME_FIELDS:
        if row[name] is not None:
            record[name] = from_ms(row[name])
    if record.get("audio") is not None:
        record["audio"] = json.loads(str(record["audio"]))
    return records.item_from_record(record)


class SqliteMediaRepository(records.StateTransitions, SqliteQuotas):
    """MediaRepository on SQLite."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db

    def prepare_database(self) -> None:
        self.db.prepare_database()

    def insert(self, item: MediaItem) -> None:
        self.db.run(_INSERT, _sql_values(records.item_record(item)), durable=True)

    def get(self, item_id: str, *, include_hidden: bool = False) -> MediaItem | None:
        sql = "SELECT * FROM media_items WHERE id = ?"
        if not include_hidden:
            sql += " AND state = 'ready'"
        rows = self.db.fetch(sql, (records.require_id(item_id),))
        return _item(rows[0]) if rows else None

    def _update_one(
        self,
        item_id: str,
        from_state: str,
        values: Mapping[str, object],
        *,
        live_at: datetime | None = None,
        expired_by: datetime | None = None,
    ) -> MediaItem | None:
        """Set `values` on the item if it is in `from_state` (and, when given, not expired at
        `live_at` / expired by `expired_by`); return it as updated."""
        # Column names are MediaItem field names checked by records, never client input.
        assignments = ", ".join(f"{name} = :{name}" for name in values)
        params = _sql_values(values) | {"_id": records.require_id(item_id), "_from": from_state}
        where = "id = :_id AND state = :_from"
        if live_at is not None:
            where += f" AND {_live('_live')}"
            params["_live"] = to_ms(live_at)
        if expired_by is not None:
            where += " AND expires_at <= :_expired"
            params["_expired"] = to_ms(expired_by)
        rows = self.db.fetch(
            f"UPDATE media_items SET {assignments} WHERE {where} RETURNING *",
            params,
            durable=True,
            # A tombstone is the first step of freeing space: it must work on a full disk.
            may_use_spare=values.get("state") == "deleting",
        )
        return _item(rows[0]) if rows else None

    def count_download(self, item_id: str, *, enforce_limit: bool) -> CountResult:
        # Not durable, and without RETURNING (times_downloaded stays None): see _connect.
        # May use the spare: a download whose count cannot be kept is refused or served
        # uncounted (service/media.py), so a full disk must not be the common reason.
        changed = self.db.run_contended(
            _COUNT,
            {"id": records.require_id(item_id), "enforce": enforce_limit},
            may_use_spare=True,
        )
        if changed:
            return CountResult(CountOutcome.COUNTED)
        # Nothing was counted; this read only picks which refusal to report.
        ready = self.db.fetch(
            "SELECT 1 FROM media_items WHERE id = ? AND state = 'ready'", (item_id,)
        )
        return CountResult(CountOutcome.LIMIT_REACHED if ready else CountOutcome.NOT_FOUND)

    def heartbeat(self, item_id: str, now: datetime) -> bool:
        # synchronous=NORMAL: see the interface; the count triggers do not watch this column.
        changed = self.db.run(
            "UPDATE media_items SET time_last_updated = ? WHERE id = ? AND state = 'pending'",
            (to_ms(now), records.require_id(item_id)),
        )
        return changed > 0

    def remove(self, item_id: str) -> bool:
        return (
            self.db.run(
                "DELETE FROM media_items WHERE id = ?",
                (records.require_id(item_id),),
                durable=True,
                may_use_spare=True,
            )
            > 0
        )

    def search(self, query: SearchQuery) -> SearchPage:
        where, params = search_filter(query)
        order = "ASC" if query.ascending else "DESC"
        total_sql, total_params = search_total(query)
        with self.db.transaction(write=False) as conn:  # page and total from one snapshot
            count = int(conn.execute(total_sql, total_params).fetchone()[0])
            rows = conn.execute(
                f"SELECT * FROM media_items WHERE {where}"
                f" ORDER BY time_created {order}, id {order} LIMIT :limit OFFSET :offset",
                params | {"limit": query.limit, "offset": query.offset},
            ).fetchall()
        return SearchPage(total=count, items=[_item(row) for row in rows])

    def iter_hidden(self, older_than: datetime) -> Iterator[MediaItem]:
        # Pages rather than one open cursor: the sweeper removes rows while it iterates, and a
        # long-lived read would hold back WAL checkpoints.
        # A PENDING item's time_last_updated is its upload's heartbeat.
        yield from self._pages("state = 'pending' AND time_last_updated < :cutoff", older_than)
        yield from self._pages("state = 'deleting'", older_than)

    def iter_ready(self, older_than: datetime) -> Iterator[MediaItem]:
        yield from self._pages("state = 'ready' AND time_created < :cutoff", older_than)

    def iter_expired(self, now: datetime) -> Iterator[MediaItem]:
        # Keyset pages over media_items_expiry, like _pages: the sweeper removes rows as it goes.
        after: tuple[int, str] = (-(2**63), "")
        while True:
            rows = self.db.fetch(
                "SELECT * FROM media_items WHERE state = 'ready' AND expires_at <= :now"
                " AND (expires_at, id) > (:after_time, :after_id)"
                " ORDER BY expires_at, id LIMIT :batch",
                {"now": to_ms(now), "after_time": after[0], "after_id": after[1], "batch": _BATCH},
            )
            yield from (_item(row) for row in rows)
            if len(rows) < _BATCH:
                return
            after = (rows[-1]["expires_at"], rows[-1]["id"])

    def _pages(self, where: str, older_than: datetime) -> Iterator[MediaItem]:
        after: tuple[int, str] = (-(2**63), "")
        while True:
            rows = self.db.fetch(
                f"SELECT * FROM media_items WHERE {where}"
                " AND (time_created, id) > (:after_time, :after_id)"
                " ORDER BY time_created, id LIMIT :batch",
                {
                    "cutoff": to_ms(older_than),
                    "after_time": after[0],
                    "after_id": after[1],
                    "batch": _BATCH,
                },
            )
            yield from (_item(row) for row in rows)
            if len(rows) < _BATCH:
                return
            after = (rows[-1]["time_created"], rows[-1]["id"])

    def unexamined_audio(self, after_id: str, limit: int) -> list[MediaItem]:
        rows = self.db.fetch(
            "SELECT * FROM media_items WHERE state = 'ready' AND audio_examined = 0"
            " AND id > :after ORDER BY id LIMIT :limit",
            {"after": records.require_id(after_id, "after_id"), "limit": min(limit, _BATCH)},
        )
        return [_item(row) for row in rows]

    def set_audio(self, item_id: str, audio: AudioFacts | None) -> bool:
        value = records.audio_record(audio)
        count = self.db.run(
            "UPDATE media_items SET audio = :audio, audio_examined = 1"
            " WHERE id = :id AND state = 'ready'",
            {"audio": _sql_value(value), "id": records.require_id(item_id)},
            durable=True,
        )
        return bool(count)

    def heal_counts(self, now: datetime) -> int:
        """Nothing to settle: the triggers change media_counts in the items' own statements."""
        return 0

    def referenced_keys(self, keys: list[str]) -> set[str]:
        found: set[str] = set()
        keys = [records.require_id(key, "key") for key in keys]
        for start in range(0, len(keys), _BATCH):
            chunk = keys[start : start + _BATCH]
            marks = ", ".join("?" * len(chunk))
            rows = self.db.fetch(
                f"SELECT store_key FROM media_items WHERE store_key IN ({marks})", chunk
            )
            found.update(row[0] for row in rows)
        return found

    def usage(self, account_id: str | None = None) -> list[Usage]:
        where, params = "state = 'ready'", cast(tuple[str, ...], ())
        if account_id is not None:
            where, params = (
                "account_id = ? AND state = 'ready'",
                (records.require_id(account_id, "api_key"),),
            )
        rows = self.db.fetch(
            "SELECT account_id, application_id, count(*), coalesce(sum(media_size), 0)"
            f" FROM media_items WHERE {where} GROUP BY account_id, application_id"
            " ORDER BY account_id, application_id IS NOT NULL, application_id",
            params,
        )
        return [Usage(row[0], row[1], int(row[2]), int(row[3])) for row in rows]

    def ping(self) -> None:
        self.db.ping()


def _scope_filter(query: SearchQuery) -> tuple[list[str], dict[str, object]]:
    """The WHERE clauses and parameters selecting a search scope's READY items."""
    params: dict[str, object] = {"account_id": query.scope.account_id}
    if query.scope.application_id is None:
        clauses = ["account_id = :account_id"]
    else:
        params["application_id"] = query.scope.application_id
        # The unary + stops the planner using account_id for the lookup, so it always walks
        # the application's index instead of every item of the account.
        clauses = ["application_id = :application_id", "+account_id = :account_id"]
    return [*clauses, "state = 'ready'"], params


def _live(param: str) -> str:
    """Not expired at the instant bound to `:param`. Judged in every read that lists items, so
    an expired item is gone at once, whether or not the sweeper has removed it yet."""
    return f"(expires_at IS NULL OR expires_at > :{param})"


def search_filter(query: SearchQuery) -> tuple[str, dict[str, object]]:
    """The WHERE clause and parameters selecting a search's matches."""
    start, end = records.check_query(query)
    clauses, params = _scope_filter(query)
    params["start"] = to_ms(start)
    clauses.append("time_created >= :start")
    if end is not None:
        params["end"] = to_ms(end)
        clauses.append("time_created <= :end")
    params["now"] = to_ms(records.query_now(query))
    clauses.append(_live("now"))
    return " AND ".join(clauses), params


def search_total(query: SearchQuery) -> tuple[str, dict[str, object]]:
    """One statement counting a search's matches without walking all of them.

    The window's whole minutes are summed from media_counts; only its partial first and last
    minutes are counted in media_items, through the scope's index. Without an end, every minute
    from the first whole one on is summed. Ranges: [start, first minute) counted, [first minute,
    end of last minute] summed, (end of last minute, end] counted; each partial one is empty when
    its bound falls on a minute's edge.
    """
    where, params = search_filter(query)
    start_ms, end_ms = records.check_query(query)
    start = to_ms(start_ms)
    end = None if end_ms is None else to_ms(end_ms)
    first = -(-start // _MINUTE_MS)  # the first minute starting at or after `start`
    last = None if end is None else (end + 1) // _MINUTE_MS - 1  # the last ending by `end`
    if query.scope.application_id == "" or (last is not None and last < first):
        # No whole minute inside (at most two partial minutes, or an empty window), or a scope
        # that media_counts cannot tell apart ('' is its "no application"): count the plain way.
        return f"SELECT count(*) FROM media_items WHERE {where}", params
    scope, params = _scope_filter(query)
    counted = " AND ".join(scope)
    summed = "account_id = :account_id"
    if query.scope.application_id is not None:
        summed += " AND application_id = :application_id"
    params |= {"start": start, "head_end": first * _MINUTE_MS - 1, "first": first}
    parts = [
        f"(SELECT count(*) FROM media_items WHERE {counted}"
        " AND time_created BETWEEN :start AND :head_end)",
    ]
    if last is None:
        parts.append(
            f"(SELECT coalesce(sum(n), 0) FROM media_counts WHERE {summed} AND minute >= :first)"
        )
    else:
        params |= {"last": last, "tail_start": (last + 1) * _MINUTE_MS, "end": end}
        parts.append(
            f"(SELECT coalesce(sum(n), 0) FROM media_counts WHERE {summed}"
            " AND minute BETWEEN :first AND :last)"
        )
        parts.append(
            f"(SELECT count(*) FROM media_items WHERE {counted}"
            " AND time_created BETWEEN :tail_start AND :end)"
        )
    # media_counts counts expired items until the sweeper removes them: take away the window's
    # expired ones, found through the scope's expiry index (the unary + keeps the planner off
    # the time index, which would walk every match). Their number is bounded by what expired
    # since the last sweep, not by the size of the scope.
    params["now"] = to_ms(records.query_now(query))
    expired = (
        f"(SELECT count(*) FROM media_items WHERE {counted}"
        " AND expires_at <= :now AND +time_created >= :start"
        + ("" if end is None else " AND +time_created <= :end")
        + ")"
    )
    return "SELECT " + " + ".join(parts) + " - " + expired, params


# --------------------------------------------------------------------------- credentials


class CredentialGeneration:
    """Eight bytes in a file beside the database, mapped into every process that opens it,
    changed after every credential write: a lookup that sees the value it cached under knows
    that no credential changed since, without asking the database.

    A shared mapping of one file is coherent between the processes of one host, which is as
    far as a SQLite database is shared. The value is random rather than a counter, so writers
    need no lock: a torn read is either the old value (the read came first) or a new one.
    """

    SIZE = 8

    def __init__(self, map_: mmap.mmap) -> None:
        self._map = map_

    @classmethod
    def beside(cls, database: Path) -> CredentialGeneration | None:
        """The generation file of `database`, created if missing; None if it cannot be."""
        path = database.with_name(database.name + "-credentials")
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                if os.fstat(fd).st_size < cls.SIZE:
                    os.ftruncate(fd, cls.SIZE)  # zeros: a valid first generation
                return cls(mmap.mmap(fd, cls.SIZE))
            finally:
                os.close(fd)  # the mapping keeps the file
        except (OSError, ValueError):
            return None  # a read-only directory, say: no cache, every lookup asks the database

    def current(self) -> bytes:
        return self._map[: self.SIZE]

    def bump(self) -> None:
        self._map[: self.SIZE] = os.urandom(self.SIZE)


# Verified-credential cache bounds: accounts kept per process, and how long one entry may be
# used without asking the database even when the generation says nothing changed (a backstop
# for a writer that died between its commit and its bump, or a change made outside this code).
_ACCOUNT_CACHE_SIZE = 1024
_ACCOUNT_CACHE_SECONDS = 30.0


class SqliteCredentialStore:
    """CredentialStore on SQLite."""

    def __init__(self, db: SqliteDatabase) -> None:
        self.db = db
        # Basic auth looks the same account up on every request; the cache keeps that off the
        # database (one SELECT, and its lock, per request) while staying exact: every write
        # here changes the generation after its commit, and an entry is used only while the
        # generation is the one read before it was fetched. A disabled account or a new secret
        # is therefore refused by every process as soon as the write has returned.
        self._generation = CredentialGeneration.beside(db.path)
        self._accounts: dict[str, tuple[bytes, float, Account]] = {}
        self._accounts_lock = threading.Lock()

    def prepare_database(self) -> None:
        self.db.prepare_database()

    def add_account(self, account: Account) -> None:
        with self._account_write():
            self.db.run(
                "INSERT INTO accounts (api_key, secret_salt, secret_digest, enabled)"
                " VALUES (?, ?, ?, ?)",
                (
                    records.require_id(account.api_key, "api_key"),
                    bytes(account.secret_salt),
                    bytes(account.secret_digest),
                    bool(account.enabled),
                ),
                durable=True,
            )

    def get_account(self, api_key: str) -> Account | None:
        api_key = records.require_id(api_key, "api_key")
        generation = self._generation
        if generation is None:
            return self._fetch_account(api_key)
        seen = generation.current()  # read before fetching: a write after it changes it
        now = time.monotonic()
        cached = self._accounts.get(api_key)
        if cached is not None and cached[0] == seen and now < cached[1]:
            return cached[2]
        account = self._fetch_account(api_key)
        if account is None:  # unknown keys are not kept: guessing them cannot fill the cache
            self._accounts.pop(api_key, None)
            return None
        with self._accounts_lock:  # misses only; hits above take no lock
            if len(self._accounts) >= _ACCOUNT_CACHE_SIZE and api_key not in self._accounts:
                self._accounts.pop(next(iter(self._accounts)), None)  # the oldest entry
            self._accounts[api_key] = (seen, now + _ACCOUNT_CACHE_SECONDS, account)
        return account

    def _fetch_account(self, api_key: str) -> Account | None:
        rows = self.db.fetch("SELECT * FROM accounts WHERE api_key = ?", (api_key,))
        return _account(rows[0]) if rows else None

    @contextmanager
    def _account_write(self) -> Iterator[None]:
        """Around a write to `accounts`: the caches of every process are stale once it ends."""
        try:
            yield
        finally:
            self._credentials_changed()

    def _credentials_changed(self) -> None:
        """After a credential write has committed (or failed: a bump is never wrong)."""
        if self._generation is not None:
            self._generation.bump()
        with self._accounts_lock:
            self._accounts.clear()

    def add_application(self, application: Application) -> None:
        app_id = records.require_id(application.application_id, "application_id")
        keys = records.unique_keys(application.public_keys)
        with self.db.transaction(write=True, durable=True) as conn:
            conn.execute(
                "INSERT INTO applications (application_id, api_key, enabled) VALUES (?, ?, ?)",
                (app_id, records.require_id(application.api_key, "api_key"), application.enabled),
            )
            conn.executemany(
                "INSERT INTO application_public_keys (application_id, public_key_pem)"
                " VALUES (?, ?)",
                [(app_id, key) for key in keys],
            )

    def get_application(self, application_id: str) -> Application | None:
        app_id = records.require_id(application_id, "application_id")
        with self.db.transaction(write=False) as conn:
            row = conn.execute(
                "SELECT * FROM applications WHERE application_id = ?", (app_id,)
            ).fetchone()
            if row is None:
                return None
            keys = conn.execute(
                "SELECT public_key_pem FROM application_public_keys"
                " WHERE application_id = ? ORDER BY id",
                (app_id,),
            ).fetchall()
        return Application(
            application_id=row["application_id"],
            api_key=row["api_key"],
            public_keys=tuple(key[0] for key in keys),
            enabled=bool(row["enabled"]),
        )

    def add_public_key(self, application_id: str, public_key_pem: str) -> bool:
        app_id = records.require_id(application_id, "application_id")
        records.require_id(public_key_pem, "public_key_pem")
        with self.db.transaction(write=True, durable=True) as conn:
            if (
                conn.execute(
                    "SELECT 1 FROM applications WHERE application_id = ?", (app_id,)
                ).fetchone()
                is None
            ):
                return False
            # A key that is already there stays where it is: appending is idempotent.
            conn.execute(
                "INSERT OR IGNORE INTO application_public_keys (application_id, public_key_pem)"
                " VALUES (?, ?)",
                (app_id, public_key_pem),
            )
        return True

    def list_accounts(self) -> list[Account]:
        rows = self.db.fetch("SELECT * FROM accounts ORDER BY api_key")
        return [_account(row) for row in rows]

    def list_applications(self, api_key: str | None = None) -> list[Application]:
        where, params = "", cast(tuple[str, ...], ())
        if api_key is not None:
            where, params = " WHERE a.api_key = ?", (records.require_id(api_key, "api_key"),)
        with self.db.transaction(write=False) as conn:  # applications and keys from one snapshot
            apps = conn.execute(f"SELECT * FROM applications a{where}", params).fetchall()
            keys: dict[str, list[str]] = {}
            for row in conn.execute(
                "SELECT k.application_id, k.public_key_pem FROM application_public_keys k"
                f" JOIN applications a USING (application_id){where} ORDER BY k.id",
                params,
            ):
                keys.setdefault(row[0], []).append(row[1])
        return sorted(
            (
                Application(
                    application_id=row["application_id"],
                    api_key=row["api_key"],
                    public_keys=tuple(keys.get(row["application_id"], ())),
                    enabled=bool(row["enabled"]),
                )
                for row in apps
            ),
            key=lambda app: app.application_id,
        )

    def set_account_enabled(self, api_key: str, enabled: bool) -> bool:
        with self._account_write():
            return self._changed(
                "UPDATE accounts SET enabled = ? WHERE api_key = ?",
                (bool(enabled), records.require_id(api_key, "api_key")),
            )

    def set_application_enabled(self, application_id: str, enabled: bool) -> bool:
        return self._changed(
            "UPDATE applications SET enabled = ? WHERE application_id = ?",
            (bool(enabled), records.require_id(application_id, "application_id")),
        )

    def replace_secret(self, api_key: str, secret_salt: bytes, secret_digest: bytes) -> bool:
        with self._account_write():
            return self._changed(
                "UPDATE accounts SET secret_salt = ?, secret_digest = ? WHERE api_key = ?",
                (bytes(secret_salt), bytes(secret_digest), records.require_id(api_key, "api_key")),
            )

    def remove_public_key(self, application_id: str, public_key_pem: str) -> KeyRemoval:
        app_id = records.require_id(application_id, "application_id")
        records.require_id(public_key_pem, "public_key_pem")
        with self.db.transaction(write=True, durable=True) as conn:  # count and delete as one
            if (
                conn.execute(
                    "SELECT 1 FROM applications WHERE application_id = ?", (app_id,)
                ).fetchone()
                is None
            ):
                return KeyRemoval.NO_APPLICATION
            keys = [
                row[0]
                for row in conn.execute(
                    "SELECT public_key_pem FROM application_public_keys WHERE application_id = ?",
                    (app_id,),
                )
            ]
            if public_key_pem not in keys:
                return KeyRemoval.NO_SUCH_KEY
            if len(keys) == 1:
                return KeyRemoval.LAST_KEY
            conn.execute(
                "DELETE FROM application_public_keys"
                " WHERE application_id = ? AND public_key_pem = ?",
                (app_id, public_key_pem),
            )
        return KeyRemoval.REMOVED

    def delete_application(self, application_id: str) -> bool:
        # The keys go with it: ON DELETE CASCADE.
        return self._changed(
            "DELETE FROM applications WHERE application_id = ?",
            (records.require_id(application_id, "application_id"),),
        )

    def delete_account(self, api_key: str) -> bool:
        key = records.require_id(api_key, "api_key")
        with self._account_write(), self.db.transaction(write=True, durable=True) as conn:
            conn.execute("DELETE FROM applications WHERE api_key = ?", (key,))
            return conn.execute("DELETE FROM accounts WHERE api_key = ?", (key,)).rowcount > 0

    def _changed(self, sql: str, params: Params) -> bool:
        return self.db.run(sql, params, durable=True) > 0


def _account(row: sqlite3.Row) -> Account:
    return Account(
        api_key=row["api_key"],
        secret_salt=bytes(row["secret_salt"]),
        secret_digest=bytes(row["secret_digest"]),
        enabled=bool(row["enabled"]),
    )
