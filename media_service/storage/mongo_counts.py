"""Per-minute counts of READY items on MongoDB, so that a search total need not walk its matches.

`media_counts` holds one document per (account_id, application_id or "", minute of time_created)
with `n`, the number of READY items there. A total sums the window's whole minutes from it and
counts only the two partial edge minutes in the items collection, through the scope's index.

A standalone MongoDB has no multi-document transactions, so an item's state change and its
`$inc` are two writes. To survive a crash between them, the update that moves an item into (out
of) READY also marks it with `counts_plus` (`counts_minus`): the time the mark was made. Then the
mark is *settled*: the `$inc` is applied under an operation id (the item id and the sign; an
item enters and leaves READY at most once each), which the counts document records in `applied`
so that applying twice is a no-op; then the mark is cleared, and the id dropped from `applied`.
A mark older than MARK_GRACE belongs to a writer that died (every call has a bounded timeout);
`heal` settles those (prepare_database and the sweeper run it).
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from media_service.storage.mongo_indexes import ensure_index

Document = dict[str, Any]

PLUS, MINUS = "counts_plus", "counts_minus"
MARK_GRACE = timedelta(minutes=5)
META_ID = "media_counts"

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
_MINUTE_MS = 60_000
_SIGN = {PLUS: 1, MINUS: -1}


def epoch_ms(value: datetime) -> int:
    """Epoch milliseconds of an aware datetime (exact integer arithmetic)."""
    return (value - _EPOCH) // _MS


def from_ms(value: int) -> datetime:
    return _EPOCH + value * _MS


def minute_key(doc: Mapping[str, Any]) -> Document:
    """The media_counts key of an item document."""
    created = doc["time_created"]
    if created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return {
        "account_id": doc["account_id"],
        "application_id": doc["application_id"] or "",
        "minute": epoch_ms(created) // _MINUTE_MS,  # floor, also before 1970
    }


def key_id(key: Mapping[str, Any]) -> str:
    """The `_id` of a media_counts document: every write finds it by `_id`, which FerretDB 1.x
    (whose other filters all scan the collection) looks up directly."""
    return json.dumps([key["account_id"], key["application_id"], key["minute"]])


def count_document(account_id: str, application_id: str, minute: int, n: int) -> Document:
    """A whole media_counts document (for building the counts in bulk)."""
    key = {"account_id": account_id, "application_id": application_id, "minute": minute}
    return {"_id": key_id(key), **key, "n": n, "applied": []}


def now() -> datetime:
    # BSON dates hold milliseconds: a mark read back must compare equal to the one written.
    value = datetime.now(UTC)
    return value.replace(microsecond=value.microsecond // 1000 * 1000)


class MinuteCounts:
    """The media_counts collection beside one items collection."""

    def __init__(self, collection: Callable[[str], Collection[Document]], items: str) -> None:
        # Collections are looked up on every use: they follow the client, which a fork replaces.
        self._collection = collection
        self._items_name = items
        self._built = False  # once seen built, always built (per process)

    @property
    def items(self) -> Collection[Document]:
        return self._collection(self._items_name)

    @property
    def counts(self) -> Collection[Document]:
        return self._collection("media_counts")

    @property
    def meta(self) -> Collection[Document]:
        return self._collection("media_meta")

    def ensure_indexes(self) -> None:
        # The unique key serves application-scoped sums (an application search names the
        # account too); the second index serves account-wide sums over every application.
        key = [("account_id", ASCENDING), ("application_id", ASCENDING), ("minute", ASCENDING)]
        ensure_index(self.counts, key, name="key", unique=True)
        ensure_index(
            self.counts,
            [("account_id", ASCENDING), ("minute", ASCENDING), ("n", ASCENDING)],
            name="account",
        )
        for mark in (PLUS, MINUS):
            ensure_index(self.items, [(mark, ASCENDING)], name=mark)

    # ----------------------------------------------------------------------- marks

    @staticmethod
    def mark(from_ready: bool, to_ready: bool) -> str | None:
        """Which mark a change of state needs, if any."""
        if from_ready == to_ready:
            return None
        return PLUS if to_ready else MINUS

    def settle(self, doc: Mapping[str, Any], mark: str, *, owner: bool = True) -> None:
        """Apply the marked `$inc` of the item `doc` (as it was marked) once, then clear the mark.

        Only the writer that made the mark (`owner`) drops the operation id from `applied`
        afterwards: another settler could still be about to apply it.
        """
        op = f"{doc['_id']}{'+' if mark == PLUS else '-'}"
        key = minute_key(doc)
        self._apply(key, op, _SIGN[mark])
        self._clear(doc, mark)
        if owner:
            self.counts.update_one({"_id": key_id(key)}, {"$pull": {"applied": op}})

    def _apply(self, key: Document, op: str, delta: int) -> None:
        pending: Document = {"_id": key_id(key), "applied": {"$ne": op}}
        change = {"$inc": {"n": delta}, "$push": {"applied": op}, "$setOnInsert": key}
        try:
            self.counts.update_one(pending, change, upsert=True)
        except DuplicateKeyError:
            # The key exists by now (made concurrently), or it already holds this operation.
            self.counts.update_one(pending, change)

    def _clear(self, doc: Mapping[str, Any], mark: str) -> None:
        self.items.update_one({"_id": doc["_id"], mark: doc[mark]}, {"$unset": {mark: ""}})

    def heal(self, item_id: str | None = None, *, at: datetime | None = None) -> int:
        """Settle the marks older than MARK_GRACE (of one item, or of all); return how many."""
        current = at or now()
        healed = 0
        for mark in (PLUS, MINUS):
            query: Document = {mark: {"$lt": current - MARK_GRACE}}
            if item_id is not None:
                query["_id"] = item_id
            for stale in list(self.items.find(query, {mark: True})):
                # Claim the mark (a new lease) so that no other healer settles it at once.
                claimed = self.items.find_one_and_update(
                    {"_id": stale["_id"], mark: stale[mark]}, {"$set": {mark: now()}}
                )
                if claimed is None:
                    continue
                doc = self.items.find_one({"_id": stale["_id"]})
                if doc is not None and mark in doc:
                    self.settle(doc, mark, owner=False)
                    healed += 1
        return healed

    # ----------------------------------------------------------------------- build

    def build_if_missing(self) -> None:
        """Count every READY item into a new media_counts (a database from before it)."""
        if self.is_built():
            return
        started = now()
        claim = {"_id": META_ID, "built": False, "at": started}
        try:
            self.meta.insert_one(claim)
        except DuplicateKeyError:
            if not self._wait_for_builder(started):
                return
        # A drop, not delete_many({}): FerretDB 1.x binds every matched _id as one SQL
        # parameter and fails past SQLite's limit.
        self.counts.drop()
        self.ensure_indexes()
        tally: Counter[tuple[str, str, int]] = Counter()
        for doc in self.items.find(
            {"state": "ready"}, {"account_id": True, "application_id": True, "time_created": True}
        ):
            key = minute_key(doc)
            tally[(key["account_id"], key["application_id"], key["minute"])] += 1
        rows = [count_document(a, p, m, n) for (a, p, m), n in tally.items()]
        for start in range(0, len(rows), 1000):
            self.counts.insert_many(rows[start : start + 1000])
        self.meta.update_one({"_id": META_ID, "at": started}, {"$set": {"built": True}})

    def _wait_for_builder(self, started: datetime) -> bool:
        """Wait while another process builds; True if its build went stale and is ours now."""
        # Waiting keeps this worker from writing counts the builder would count again.
        deadline = time.monotonic() + MARK_GRACE.total_seconds()
        while not self.is_built():
            taken = self.meta.find_one_and_update(
                {"_id": META_ID, "built": False, "at": {"$lt": started - MARK_GRACE}},
                {"$set": {"at": started}},
            )
            if taken is not None:
                return True
            if time.monotonic() > deadline:
                return False  # searches count the plain way until the builder is done
            time.sleep(0.2)
        return False

    def is_built(self) -> bool:
        if not self._built:
            state = self.meta.find_one({"_id": META_ID})
            self._built = bool(state and state.get("built"))
        return self._built

    # ----------------------------------------------------------------------- totals

    def total(self, scope: Document, start: datetime, end: datetime | None) -> int | None:
        """The number of READY items of `scope` created in [start, end]; None: count plainly.

        Ranges: [start, first whole minute) counted, whole minutes summed, (last whole minute,
        end] counted; each partial one is skipped when its bound falls on a minute's edge.
        """
        start_ms = epoch_ms(start)
        first = -(-start_ms // _MINUTE_MS)  # the first minute starting at or after `start`
        last = None if end is None else (epoch_ms(end) + 1) // _MINUTE_MS - 1
        if scope.get("application_id") == "" or (last is not None and last < first):
            # An empty application id is what media_counts calls "no application"; a window
            # without a whole minute has nothing to sum.
            return None
        if not self.is_built():
            return None
        total = 0
        head_end = from_ms(first * _MINUTE_MS)
        if head_end > start:
            total += self.items.count_documents(
                {**scope, "time_created": {"$gte": start, "$lt": head_end}}
            )
        minutes: Document = {"$gte": first}
        if last is not None:
            minutes["$lte"] = last
            tail_start = from_ms((last + 1) * _MINUTE_MS)
            if end is not None and tail_start <= end:
                total += self.items.count_documents(
                    {**scope, "time_created": {"$gte": tail_start, "$lte": end}}
                )
        summed: Document = {"account_id": scope["account_id"], "minute": minutes}
        if "application_id" in scope:
            summed["application_id"] = scope["application_id"]
        for row in self.counts.aggregate(
            [{"$match": summed}, {"$group": {"_id": None, "n": {"$sum": "$n"}}}]
        ):
            total += int(row["n"])
        return total
