"""MongoDB adapters: media items and credentials in one database. pymongo stays in this module."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any
from urllib.parse import unquote, urlsplit

from pymongo import ASCENDING, DESCENDING, MongoClient, ReturnDocument
from pymongo.collection import Collection
from pymongo.database import Database
from pymongo.errors import (
    ConnectionFailure,
    DuplicateKeyError,
    ExecutionTimeout,
    OperationFailure,
    PyMongoError,
    WriteConcernError,
)

from media_service.settings import Settings
from media_service.storage import forksafe, mongo_counts, records
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
    Usage,
)
from media_service.storage.mongo_indexes import ensure_index
from media_service.storage.mongo_quota import MongoQuotas

Document = dict[str, Any]

_BATCH = 500  # documents per sweeper page, and values per $in list
_CAS_TRIES = 50  # compare-and-set attempts on times_downloaded before giving up (503)
_TIME_ORDER = [("time_created", ASCENDING), ("_id", ASCENDING)]
_EXPIRY_ORDER = [("expires_at", ASCENDING), ("_id", ASCENDING)]

# Server error codes that mean "not now" rather than "wrong request": network trouble, elections,
# shutdowns, time limits, and credentials the server refuses (an operator must act; callers get
# a 503 meanwhile rather than a 500).
# Names as in the server's src/mongo/base/error_codes.yml.
UNAVAILABLE_CODES: dict[int, str] = {
    6: "HostUnreachable",
    7: "HostNotFound",
    13: "Unauthorized",
    18: "AuthenticationFailed",
    50: "MaxTimeMSExpired",
    89: "NetworkTimeout",
    91: "ShutdownInProgress",
    189: "PrimarySteppedDown",
    262: "ExceededTimeLimit",
    9001: "SocketException",
    10107: "NotWritablePrimary",
    11600: "InterruptedAtShutdown",
    11602: "InterruptedDueToReplStateChange",
    13435: "NotPrimaryNoSecondaryOk",
    13436: "NotPrimaryOrSecondary",
}


def _unavailable(exc: PyMongoError) -> bool:
    if exc.timeout or isinstance(exc, ConnectionFailure | ExecutionTimeout | WriteConcernError):
        return True
    return isinstance(exc, OperationFailure) and (
        exc.code in UNAVAILABLE_CODES or exc.has_error_label("RetryableWriteError")
    )


@contextmanager
def _translated() -> Iterator[None]:
    """Turn pymongo errors into the ports' exceptions."""
    try:
        yield
    except DuplicateKeyError as exc:
        raise AlreadyExists(str(exc)) from exc
    except (UnicodeEncodeError, OverflowError) as exc:
        # A value BSON cannot encode (records.py refuses these first; this is the backstop).
        raise InvalidValue(f"a value cannot be stored: {type(exc).__name__}") from None
    except PyMongoError as exc:
        if _unavailable(exc):
            raise BackendUnavailable("database", str(exc)) from exc
        raise


class MongoDatabase:
    """One database on one MongoClient, created on first use (and anew in a forked child)."""

    def __init__(self, connect: Callable[[], MongoClient[Document]], name: str) -> None:
        self._connect = connect
        self.name = name
        self._lock = threading.Lock()
        self._client: MongoClient[Document] | None = None
        self._inherited: list[MongoClient[Document]] = []  # the parent's: never used here
        forksafe.forget_in_forked_children(self)

    @classmethod
    def wrap(cls, database: Database[Document]) -> MongoDatabase:
        """Use a ready database object (a test's mongomock, or a client made elsewhere)."""
        return cls(lambda: database.client, database.name)

    @classmethod
    def from_settings(cls, settings: Settings) -> MongoDatabase:
        """Prepare (not yet connect) a client for MEDIA_DATABASE_URL with bounded timeouts."""
        url = settings.database_url
        timeout_ms = max(1, int(settings.backend_timeout * 1000))

        def connect() -> MongoClient[Document]:
            return MongoClient(
                url,
                connect=False,  # no sockets or monitor threads until the first operation
                tz_aware=True,
                appname="media-service",
                serverSelectionTimeoutMS=timeout_ms,
                connectTimeoutMS=timeout_ms,
                socketTimeoutMS=timeout_ms,
                timeoutMS=timeout_ms,
            )

        return cls(connect, unquote(urlsplit(url).path.strip("/")))

    @property
    def database(self) -> Database[Document]:
        """The database, creating this process's client on first use."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    self._client = self._connect()
                client = self._client
        return client[self.name]

    def forget_connections_after_fork(self) -> None:
        # Runs in the child while it has a single thread; a parent thread may have held the
        # lock at fork time, so it is replaced rather than taken.
        self._lock = threading.Lock()
        if self._client is not None:
            self._inherited.append(self._client)
        self._client = None

    def collection(self, name: str) -> Collection[Document]:
        return self.database[name]

    def ping(self) -> None:
        """Raise BackendUnavailable unless the server answers."""
        with _translated():
            self.database.command("ping")

    def close(self) -> None:
        """Close this process's client (a later operation would open a new one)."""
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()


# --------------------------------------------------------------------------- media items


def _document(record: Mapping[str, object]) -> Document:
    doc: Document = {"_id": record["id"]}
    doc.update((name, value) for name, value in record.items() if name != "id")
    left = _downloads_left(doc["max_downloads_allowed"], doc["times_downloaded"])
    if left is not None:
        doc[DOWNLOADS_LEFT] = left
    return doc


def _item(doc: Mapping[str, Any]) -> MediaItem:
    # item_from_record reads only MediaItem's fields: adapter fields such as downloads_left
    # never reach the item (nor its JSON).
    return records.item_from_record({**doc, "id": doc["_id"]})


# `downloads_left` = max_downloads_allowed - times_downloaded, kept only on limited items, so that
# an enforced count is a plain `{"downloads_left": {"$gt": 0}}` filter with `$inc` on both fields:
# one atomic conditional update, without `$expr` (which FerretDB cannot evaluate). It is absent
# when the item is unlimited (max 0), never null: `$inc` on null fails on MongoDB.
DOWNLOADS_LEFT = "downloads_left"


def _downloads_left(maximum: object, times: object) -> int | None:
    return None if not maximum else int(maximum) - int(times)  # type: ignore[call-overload]


def _live(now: datetime) -> Document:
    """Not expired at `now`: no expires_at (null, or absent in documents from before expiry
    existed), or a later one. Judged in every read that lists items, so an expired item is gone
    at once, whether or not the sweeper has removed it yet."""
    return {"$or": [{"expires_at": None}, {"expires_at": {"$gt": now}}]}


class MongoMediaRepository(records.StateTransitions, MongoQuotas):
    """MediaRepository on MongoDB: one document per item, `_id` = item id."""

    _translate = staticmethod(_translated)

    def __init__(self, db: MongoDatabase, collection: str = "media_items") -> None:
        self.db = db
        self.collection_name = collection
        self._counts = mongo_counts.MinuteCounts(db.collection, collection)

    @property
    def _items(self) -> Collection[Document]:
        return self.db.collection(self.collection_name)

    def prepare_database(self) -> None:
        # Same indexes as SQLite: a search walks one scope's READY items in (time, id) order.
        with _translated():
            items = self._items
            for name, scope in (("account", "account_id"), ("application", "application_id")):
                ensure_index(
                    items, [(scope, ASCENDING), ("state", ASCENDING), *_TIME_ORDER], name=name
                )
            ensure_index(items, [("state", ASCENDING), *_TIME_ORDER], name="state_time")
            ensure_index(items, [("store_key", ASCENDING)], name="store_key", unique=True)
            # Expiry: the scope ones count a search's expired-but-unswept matches (subtracted
            # from its total); the last one feeds the sweeper in (expires_at, _id) order.
            for name, scope in (("account", "account_id"), ("application", "application_id")):
                ensure_index(
                    items,
                    [(scope, ASCENDING), ("state", ASCENDING), ("expires_at", ASCENDING)],
                    name=f"{name}_expiry",
                )
            ensure_index(items, [("state", ASCENDING), *_EXPIRY_ORDER], name="state_expiry")
            self._backfill_all_downloads_left()
            self._counts.ensure_indexes()
            self._counts.build_if_missing()
            self._counts.heal()

    def heal_counts(self, now: datetime) -> int:
        """Settle the search-count changes of writers that died midway (for the sweeper)."""
        with _translated():
            return self._counts.heal(at=records.utc_ms(now, "now"))

    def _backfill_all_downloads_left(self) -> None:
        """Give every item stored before downloads_left existed its value, once per database.

        Idempotent, and safe beside live traffic: each document is compare-and-set on its own.
        The pass is recorded, so later starts skip the collection scan; an item an older
        version writes after it is backfilled by its first refused count.
        """
        meta = self.db.collection("media_meta")
        if meta.find_one({"_id": DOWNLOADS_LEFT}) is not None:
            return
        missing = {"max_downloads_allowed": {"$gt": 0}, DOWNLOADS_LEFT: {"$exists": False}}
        for doc in list(self._items.find(missing, {"_id": True})):
            self._backfill_downloads_left(doc["_id"])
        with contextlib.suppress(DuplicateKeyError):  # another process finished it too
            meta.insert_one({"_id": DOWNLOADS_LEFT, "backfilled": True})

    def _backfill_downloads_left(self, item_id: str) -> None:
        """Give one limited item its downloads_left, unless it has one by now."""
        query = {"_id": item_id, DOWNLOADS_LEFT: {"$exists": False}}
        self._set_with_downloads_left(query, {"$set": {}})

    def insert(self, item: MediaItem) -> None:
        doc = _document(records.item_record(item))
        if doc["state"] == "ready":
            doc[mongo_counts.PLUS] = mongo_counts.now()
        with _translated():
            self._items.insert_one(doc)
            if doc["state"] == "ready":
                self._counts.settle(doc, mongo_counts.PLUS)

    def get(self, item_id: str, *, include_hidden: bool = False) -> MediaItem | None:
        query: Document = {"_id": records.require_id(item_id)}
        if not include_hidden:
            query["state"] = "ready"
        with _translated():
            doc = self._items.find_one(query)
        return None if doc is None else _item(doc)

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
        query: Document = {"_id": records.require_id(item_id), "state": from_state}
        if live_at is not None:
            query |= _live(live_at)
        if expired_by is not None:
            query["expires_at"] = {"$lte": expired_by}
        # Field names checked by records, values are values.
        update: Document = {"$set": dict(values)}
        # Entering or leaving READY marks the item in the same atomic update (mongo_counts).
        mark = mongo_counts.MinuteCounts.mark(
            from_state == "ready", values.get("state", from_state) == "ready"
        )
        if mark is not None:
            update["$set"][mark] = mongo_counts.now()
        with _translated():
            if "max_downloads_allowed" in values or "times_downloaded" in values:
                doc = self._set_with_downloads_left(query, update)
            else:
                doc = self._items.find_one_and_update(
                    query, update, return_document=ReturnDocument.AFTER
                )
            if doc is not None and mark is not None:
                self._counts.settle(doc, mark)
        return None if doc is None else _item(doc)

    def _set_with_downloads_left(self, query: Document, update: Document) -> Document | None:
        """Apply `update` and recompute downloads_left, compare-and-set on times_downloaded.

        Downloads keep counting meanwhile: the new downloads_left is only right for the
        times_downloaded it was computed from, so the update is retried until none came between.
        """
        values: Document = update["$set"]
        for _ in range(_CAS_TRIES):
            current = self._items.find_one(
                query, {"max_downloads_allowed": True, "times_downloaded": True}
            )
            if current is None:
                return None
            times = values.get("times_downloaded", current["times_downloaded"])
            maximum = values.get("max_downloads_allowed", current["max_downloads_allowed"])
            left = _downloads_left(maximum, times)
            assignments = dict(values)
            change: Document = {}
            if left is None:
                change["$unset"] = {DOWNLOADS_LEFT: ""}
            else:
                assignments[DOWNLOADS_LEFT] = left
            if assignments:  # MongoDB refuses an empty $set
                change["$set"] = assignments
            doc = self._items.find_one_and_update(
                {**query, "times_downloaded": current["times_downloaded"]},
                change,
                return_document=ReturnDocument.AFTER,
            )
            if doc is not None:
                return doc
        raise BackendUnavailable("database", "downloads kept racing an update of the limit")

    def count_download(self, item_id: str, *, enforce_limit: bool) -> CountResult:
        ready: Document = {"_id": records.require_id(item_id), "state": "ready"}
        # Each attempt is one atomic conditional update on the server (the limit is part of the
        # filter): exact under any number of workers and hosts. Unlimited items (the common
        # case) are tried first; limited ones also move downloads_left, in the same update.
        unlimited = {**ready, "max_downloads_allowed": 0}
        # Without the field (an item not yet backfilled) `$inc` would create it as -1.
        left: Document = {"$gt": 0} if enforce_limit else {"$exists": True}
        limited: Document = {**ready, "max_downloads_allowed": {"$gt": 0}, DOWNLOADS_LEFT: left}
        with _translated():
            for _ in range(3):  # a limit changed between the two attempts: try again
                doc = self._items.find_one_and_update(
                    unlimited,
                    {"$inc": {"times_downloaded": 1}},
                    return_document=ReturnDocument.AFTER,
                ) or self._items.find_one_and_update(
                    limited,
                    {"$inc": {"times_downloaded": 1, DOWNLOADS_LEFT: -1}},
                    return_document=ReturnDocument.AFTER,
                )
                if doc is not None:
                    return CountResult(CountOutcome.COUNTED, int(doc["times_downloaded"]))
                # Nothing was counted; this read only picks which refusal to report.
                current = self._items.find_one(
                    ready, {"max_downloads_allowed": True, DOWNLOADS_LEFT: True}
                )
                if current is None:
                    return CountResult(CountOutcome.NOT_FOUND)
                if current["max_downloads_allowed"] and DOWNLOADS_LEFT in current:
                    return CountResult(CountOutcome.LIMIT_REACHED)
                if current["max_downloads_allowed"]:
                    # Written before downloads_left existed and not yet backfilled.
                    self._backfill_downloads_left(current["_id"])
        return CountResult(CountOutcome.LIMIT_REACHED)

    def heartbeat(self, item_id: str, now: datetime) -> bool:
        with _translated():
            result = self._items.update_one(
                {"_id": records.require_id(item_id), "state": "pending"},
                {"$set": {"time_last_updated": records.utc_ms(now, "now")}},
            )
        return result.matched_count > 0

    def remove(self, item_id: str) -> bool:
        query: Document = {"_id": records.require_id(item_id)}
        with _translated():
            for _ in range(_CAS_TRIES):
                doc = self._items.find_one(query, {"state": True})
                if doc is None:
                    return False
                if doc["state"] == "ready":
                    # Leave the search counts first, as a delete does (a crash now leaves a
                    # DELETING tombstone, which the sweeper finishes).
                    self.mark_deleting(item_id)
                    continue
                self._counts.heal(item_id)  # a dead writer's marks would go with the document
                self._release_quota(item_id)  # exactly once, however often this is retried
                if self._items.delete_one({**query, "state": {"$ne": "ready"}}).deleted_count:
                    return True
        raise BackendUnavailable("database", "the item kept changing while being removed")

    def search(self, query: SearchQuery) -> SearchPage:
        start, end = records.check_query(query)
        now = records.query_now(query)
        window: Document = {"$gte": start}
        if end is not None:
            window["$lte"] = end
        scope: Document = {"account_id": query.scope.account_id, "state": "ready"}
        if query.scope.application_id is not None:
            scope["application_id"] = query.scope.application_id
        match: Document = {**scope, "time_created": window, **_live(now)}
        direction = ASCENDING if query.ascending else DESCENDING
        with _translated():
            total = self._counts.total(scope, start, end)
            if total is None:
                total = self._items.count_documents(match)
            else:
                # media_counts counts expired items until the sweeper removes them: take away
                # the window's expired ones (through the scope's expiry index; as many as
                # expired since the last sweep, whatever the size of the scope).
                expired = {**scope, "expires_at": {"$lte": now}, "time_created": window}
                total -= self._items.count_documents(expired)
            docs: list[Document] = []
            if query.limit > 0:  # limit(0) would mean "no limit" to MongoDB
                cursor = self._items.find(match).sort(
                    [("time_created", direction), ("_id", direction)]
                )
                docs = list(cursor.skip(query.offset).limit(query.limit))
        return SearchPage(total=total, items=[_item(doc) for doc in docs])

    def iter_hidden(self, older_than: datetime) -> Iterator[MediaItem]:
        # Pages rather than one open cursor: the sweeper works between documents, and a cursor
        # is bounded by timeoutMS for its whole lifetime.
        cutoff = records.utc_ms(older_than, "older_than")
        # A PENDING item's time_last_updated is its upload's heartbeat.
        yield from self._pages({"state": "pending", "time_last_updated": {"$lt": cutoff}})
        yield from self._pages({"state": "deleting"})

    def iter_ready(self, older_than: datetime) -> Iterator[MediaItem]:
        cutoff = records.utc_ms(older_than, "older_than")
        yield from self._pages({"state": "ready", "time_created": {"$lt": cutoff}})

    def iter_expired(self, now: datetime) -> Iterator[MediaItem]:
        cutoff = records.utc_ms(now, "now")
        yield from self._pages(
            {"state": "ready", "expires_at": {"$lte": cutoff}}, order="expires_at"
        )

    def _pages(self, match: Document, order: str = "time_created") -> Iterator[MediaItem]:
        """Every match, by (`order`, _id), in pages that start after the last one seen."""
        query = match
        while True:
            with _translated():
                docs = list(
                    self._items.find(query)
                    .sort([(order, ASCENDING), ("_id", ASCENDING)])
                    .limit(_BATCH)
                )
            yield from (_item(doc) for doc in docs)
            if len(docs) < _BATCH:
                return
            last_value, last_id = docs[-1][order], docs[-1]["_id"]
            after = {
                "$or": [
                    {order: {"$gt": last_value}},
                    {order: last_value, "_id": {"$gt": last_id}},
                ]
            }
            query = {"$and": [match, after]}

    def unexamined_audio(self, after_id: str, limit: int) -> list[MediaItem]:
        # `$ne: True` also matches documents written before the field existed.
        query = {
            "state": "ready",
            "audio_examined": {"$ne": True},
            "_id": {"$gt": records.require_id(after_id, "after_id")},
        }
        with _translated():
            docs = list(self._items.find(query).sort("_id", ASCENDING).limit(min(limit, _BATCH)))
        return [_item(doc) for doc in docs]

    def set_audio(self, item_id: str, audio: AudioFacts | None) -> bool:
        values = {"audio": records.audio_record(audio), "audio_examined": True}
        with _translated():
            result = self._items.update_one(
                {"_id": records.require_id(item_id), "state": "ready"}, {"$set": values}
            )
        return result.matched_count > 0

    def referenced_keys(self, keys: list[str]) -> set[str]:
        keys = [records.require_id(key, "key") for key in keys]
        found: set[str] = set()
        for start in range(0, len(keys), _BATCH):
            with _translated():
                docs = self._items.find(
                    {"store_key": {"$in": keys[start : start + _BATCH]}}, {"store_key": True}
                )
                found.update(doc["store_key"] for doc in docs)
        return found

    def usage(self, account_id: str | None = None) -> list[Usage]:
        match: Document = {"state": "ready"}
        if account_id is not None:
            match["account_id"] = records.require_id(account_id, "api_key")
        scope = {"account": "$account_id", "application": "$application_id"}
        totals: dict[tuple[str, str | None], dict[str, int]] = {}
        # One accumulator per pipeline: FerretDB 1.x computes only the first of several in a
        # $group (the others come back 0; docs/ferretdb.md). Two passes are right on both.
        for name, value in (("items", 1), ("bytes", "$media_size")):
            pipeline: list[Document] = [
                {"$match": match},
                {"$group": {"_id": scope, name: {"$sum": value}}},
            ]
            with _translated():
                groups = list(self._items.aggregate(pipeline))
            for group in groups:
                key = (group["_id"]["account"], group["_id"].get("application"))
                totals.setdefault(key, {"items": 0, "bytes": 0})[name] = int(group[name])
        rows = [
            Usage(account_id=account, application_id=application, **counts)
            for (account, application), counts in totals.items()
        ]
        # Sorted here: $sort on a compound _id with nulls is ordered differently by servers.
        return sorted(
            rows,
            key=lambda row: (
                row.account_id,
                row.application_id is not None,
                row.application_id or "",
            ),
        )

    def ping(self) -> None:
        self.db.ping()


# --------------------------------------------------------------------------- credentials


class MongoCredentialStore:
    """CredentialStore on MongoDB: `_id` is the api_key / application_id, hence unique."""

    def __init__(self, db: MongoDatabase) -> None:
        self.db = db

    @property
    def _accounts(self) -> Collection[Document]:
        return self.db.collection("accounts")

    @property
    def _applications(self) -> Collection[Document]:
        return self.db.collection("applications")

    def prepare_database(self) -> None:
        # Uniqueness of keys and application ids is the mandatory unique index on `_id`.
        with _translated():
            ensure_index(self._applications, [("api_key", ASCENDING)], name="api_key")

    def add_account(self, account: Account) -> None:
        doc = {
            "_id": records.require_id(account.api_key, "api_key"),
            "secret_salt": bytes(account.secret_salt),
            "secret_digest": bytes(account.secret_digest),
            "enabled": bool(account.enabled),
        }
        with _translated():
            self._accounts.insert_one(doc)

    def get_account(self, api_key: str) -> Account | None:
        with _translated():
            doc = self._accounts.find_one({"_id": records.require_id(api_key, "api_key")})
        return None if doc is None else _account(doc)

    def add_application(self, application: Application) -> None:
        doc = {
            "_id": records.require_id(application.application_id, "application_id"),
            "api_key": records.require_id(application.api_key, "api_key"),
            "public_keys": records.unique_keys(application.public_keys),
            "enabled": bool(application.enabled),
        }
        with _translated():
            self._applications.insert_one(doc)

    def get_application(self, application_id: str) -> Application | None:
        query = {"_id": records.require_id(application_id, "application_id")}
        with _translated():
            doc = self._applications.find_one(query)
        return None if doc is None else _application(doc)

    def add_public_key(self, application_id: str, public_key_pem: str) -> bool:
        query = {"_id": records.require_id(application_id, "application_id")}
        key = records.require_id(public_key_pem, "public_key_pem")
        with _translated():
            # $addToSet appends atomically, and a key already there stays where it is.
            result = self._applications.update_one(query, {"$addToSet": {"public_keys": key}})
        return result.matched_count > 0

    def list_accounts(self) -> list[Account]:
        with _translated():
            docs = list(self._accounts.find().sort("_id", ASCENDING))
        return [_account(doc) for doc in docs]

    def list_applications(self, api_key: str | None = None) -> list[Application]:
        query: Document = {}
        if api_key is not None:
            query["api_key"] = records.require_id(api_key, "api_key")
        with _translated():
            docs = list(self._applications.find(query).sort("_id", ASCENDING))
        return [_application(doc) for doc in docs]

    def set_account_enabled(self, api_key: str, enabled: bool) -> bool:
        query = {"_id": records.require_id(api_key, "api_key")}
        return self._matched(self._accounts, query, {"enabled": bool(enabled)})

    def set_application_enabled(self, application_id: str, enabled: bool) -> bool:
        query = {"_id": records.require_id(application_id, "application_id")}
        return self._matched(self._applications, query, {"enabled": bool(enabled)})

    def replace_secret(self, api_key: str, secret_salt: bytes, secret_digest: bytes) -> bool:
        query = {"_id": records.require_id(api_key, "api_key")}
        changes = {"secret_salt": bytes(secret_salt), "secret_digest": bytes(secret_digest)}
        return self._matched(self._accounts, query, changes)

    def remove_public_key(self, application_id: str, public_key_pem: str) -> KeyRemoval:
        app_id = records.require_id(application_id, "application_id")
        key = records.require_id(public_key_pem, "public_key_pem")
        with _translated():
            # One conditional update: the key is there and a second key exists, so two
            # concurrent removals can never leave an application without keys.
            result = self._applications.update_one(
                {"_id": app_id, "public_keys": key, "public_keys.1": {"$exists": True}},
                {"$pull": {"public_keys": key}},
            )
            if result.modified_count:
                return KeyRemoval.REMOVED
            doc = self._applications.find_one({"_id": app_id}, {"public_keys": True})
        if doc is None:
            return KeyRemoval.NO_APPLICATION
        if key not in doc["public_keys"]:
            return KeyRemoval.NO_SUCH_KEY
        return KeyRemoval.LAST_KEY

    def delete_application(self, application_id: str) -> bool:
        query = {"_id": records.require_id(application_id, "application_id")}
        with _translated():
            return self._applications.delete_one(query).deleted_count > 0

    def delete_account(self, api_key: str) -> bool:
        key = records.require_id(api_key, "api_key")
        with _translated():
            # The account first: its applications' tokens stop working with it (tokens check
            # the owning account), so a crash between the two leaves nothing usable.
            deleted = self._accounts.delete_one({"_id": key}).deleted_count > 0
            self._applications.delete_many({"api_key": key})
        return deleted

    @staticmethod
    def _matched(collection: Collection[Document], query: Document, changes: Document) -> bool:
        with _translated():
            return collection.update_one(query, {"$set": changes}).matched_count > 0


def _account(doc: Mapping[str, Any]) -> Account:
    return Account(
        api_key=doc["_id"],
        secret_salt=bytes(doc["secret_salt"]),
        secret_digest=bytes(doc["secret_digest"]),
        enabled=bool(doc["enabled"]),
    )


def _application(doc: Mapping[str, Any]) -> Application:
    return Application(
        application_id=doc["_id"],
        api_key=doc["api_key"],
        public_keys=tuple(doc["public_keys"]),
        enabled=bool(doc["enabled"]),
    )
