"""Account quotas on MongoDB, without multi-document transactions.

One `account_quotas` document per account (`_id` = api key) holds the limits (0 = unlimited), the
usage (`bytes`, `items`) and `bytes_left`/`items_left` (limit minus usage, so that a limit is a
plain `$gte` filter without `$expr`, which FerretDB lacks). Every change of usage is one
`update_one` on that document with its condition in the filter: exact across workers and hosts.

What an item holds is recorded where one atomic update can see it:
* while its upload is in flight, in the account's document: `holds.<item id>` = {bytes, at},
  created by `reserve_item` and grown by `reserve_bytes` in the same update as the counter;
* once READY, on the item (`quota_bytes`): `settle_quota` writes it there, then drops the hold.
  Between the two both say the same thing, and the hold wins.
Releasing (from `remove`, before the document goes) applies the `$inc` and records the item in
`done.<item id>` in the same update, whose filter refuses an item already done: a release retried
after a crash, or run by two removers at once, counts once. `heal_quotas` (the sweeper) settles
holds whose writer died after mark_ready, releases holds of items that are gone, and drops `done`
entries of items gone for DONE_KEEP (an item id is never reused).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from media_service.storage import records
from media_service.storage.interfaces import BackendUnavailable, Quota, Reservation

if TYPE_CHECKING:
    from media_service.storage.mongo import MongoDatabase

Document = dict[str, Any]

COLLECTION = "account_quotas"
QUOTA_BYTES = "quota_bytes"  # on an item: the bytes its READY (or DELETING) document holds
# Far beyond any writer's bounded timeouts, and short enough that the entries of a busy
# account's deletes stay a small part of its document between two sweeps.
DONE_KEEP = timedelta(minutes=10)
_TRIES = 50


class MongoQuotas:
    """The quota methods of MongoMediaRepository (which provides `_items` and `db`)."""

    db: MongoDatabase
    _translate: Callable[[], Any]

    @property
    def _items(self) -> Collection[Document]:
        raise NotImplementedError

    @property
    def _quotas(self) -> Collection[Document]:
        return self.db.collection(COLLECTION)

    def quota(self, account_id: str) -> Quota:
        key = records.require_id(account_id, "account_id")
        with self._translate():
            doc = self._quotas.find_one({"_id": key}, {"holds": False, "done": False})
        return _quota(key, doc)

    def set_quota(self, account_id: str, max_bytes: int | None, max_items: int | None) -> Quota:
        key = records.require_id(account_id, "account_id")
        limits = {
            name: _limit(value)
            for name, value in (("max_bytes", max_bytes), ("max_items", max_items))
            if value is not None
        }
        with self._translate():
            self._ensure_document(key)
            # Compare-and-set on the usage: the *_left fields are right only for the usage they
            # were computed from, and uploads keep counting meanwhile.
            for _ in range(_TRIES):
                doc = self._quotas.find_one({"_id": key}, {"holds": False, "done": False})
                if doc is None:
                    continue
                new = {"max_bytes": doc["max_bytes"], "max_items": doc["max_items"], **limits}
                values = {
                    **new,
                    "bytes_left": new["max_bytes"] - doc["bytes"],
                    "items_left": new["max_items"] - doc["items"],
                }
                done = self._quotas.update_one(
                    {"_id": key, "bytes": doc["bytes"], "items": doc["items"]}, {"$set": values}
                )
                if done.matched_count:
                    return _quota(key, {**doc, **values})
        raise BackendUnavailable("database", "uploads kept racing the change of a quota")

    def _ensure_document(self, key: str) -> None:
        zeros = {"max_bytes": 0, "max_items": 0, "bytes": 0, "items": 0}
        fields = {**zeros, "bytes_left": 0, "items_left": 0, "holds": {}, "done": {}}
        try:
            self._quotas.update_one({"_id": key}, {"$setOnInsert": fields}, upsert=True)
        except DuplicateKeyError:
            pass  # another writer created it at the same moment

    def reserve_item(self, account_id: str, item_id: str) -> Reservation:
        key = records.require_id(account_id, "account_id")
        item = _field(records.require_id(item_id))
        with self._translate():
            self._ensure_document(key)
            result = self._quotas.update_one(
                {
                    "_id": key,
                    f"holds.{item}": {"$exists": False},
                    f"done.{item}": {"$exists": False},
                    "$or": [{"max_items": 0}, {"items_left": {"$gte": 1}}],
                },
                {
                    "$inc": {"items": 1, "items_left": -1},
                    "$set": {f"holds.{item}": {"bytes": 0, "at": _now()}},
                },
            )
        return Reservation.RESERVED if result.matched_count else Reservation.QUOTA_EXCEEDED

    def reserve_bytes(self, account_id: str, item_id: str, size: int) -> Reservation:
        key = records.require_id(account_id, "account_id")
        item = _field(records.require_id(item_id))
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError("size must be an int >= 0")
        with self._translate():
            for _ in range(_TRIES):
                # A released hold is gone: a reservation never grows on a rolled-back upload.
                result = self._quotas.update_one(
                    {
                        "_id": key,
                        f"holds.{item}": {"$exists": True},
                        "$or": [{"max_bytes": 0}, {"bytes_left": {"$gte": size}}],
                    },
                    {
                        "$inc": {"bytes": size, "bytes_left": -size, f"holds.{item}.bytes": size},
                        "$set": {f"holds.{item}.at": _now()},
                    },
                )
                if result.matched_count:
                    return Reservation.RESERVED
                held = self._quotas.find_one(
                    {"_id": key, f"holds.{item}": {"$exists": True}}, {"_id": 1}
                )
                if held:
                    return Reservation.QUOTA_EXCEEDED
                if not self._restore_lost_hold(key, item_id):
                    return Reservation.NOT_PENDING
        return Reservation.NOT_PENDING

    def _restore_lost_hold(self, key: str, item_id: str) -> bool:
        """Put back the hold of an upload that is still PENDING; True if it was put back.

        On MongoDB a hold goes only with its upload (released, rolled back). FerretDB 1.x applies
        an update as read-modify-write of the whole document, so two uploads of one account
        writing at once can drop each other's hold (tests/integration/test_tus_live.py saw
        it): the upload is alive — its PENDING document says so — and must not be abandoned.
        The bytes reserved before the loss are the sweeper's to settle (heal_quotas).
        """
        if self._items.find_one({"_id": item_id, "state": "pending"}, {"_id": 1}) is None:
            return False
        item = _field(item_id)
        self._quotas.update_one(
            {"_id": key, f"holds.{item}": {"$exists": False}, f"done.{item}": {"$exists": False}},
            {"$set": {f"holds.{item}": {"bytes": 0, "at": _now()}}},
        )
        return True

    def settle_quota(self, account_id: str, item_id: str, reserved: int) -> None:
        key = records.require_id(account_id, "account_id")
        item = records.require_id(item_id)
        with self._translate():
            self._settle(key, item, reserved)

    def _settle(self, key: str, item: str, reserved: int) -> None:
        self._items.update_one(
            {"_id": item, "state": {"$ne": "pending"}, QUOTA_BYTES: {"$exists": False}},
            {"$set": {QUOTA_BYTES: reserved}},
        )
        self._quotas.update_one(
            {"_id": key, f"holds.{_field(item)}.bytes": reserved},
            {"$unset": {f"holds.{_field(item)}": ""}},
        )

    def _release_quota(self, item_id: str) -> None:
        """Give back what the item holds, once (before its document is removed)."""
        item = _field(item_id)
        for _ in range(_TRIES):
            doc = self._items.find_one({"_id": item_id}, {"account_id": True, QUOTA_BYTES: True})
            if doc is None:
                return
            key = doc["account_id"]
            quota = self._quotas.find_one(
                {"_id": key}, {f"holds.{item}": True, f"done.{item}": True}
            )
            if quota is None or item in quota.get("done", {}):
                return
            hold = quota.get("holds", {}).get(item)
            if hold is not None:
                amount = int(hold["bytes"])
                match: Document = {f"holds.{item}.bytes": amount}
            elif QUOTA_BYTES in doc:
                amount = int(doc[QUOTA_BYTES])
                match = {f"holds.{item}": {"$exists": False}}
            else:
                return  # stored before quotas were counted (MongoDB keeps no backfill)
            if self._release(key, item, amount, match):
                return
        raise BackendUnavailable("database", "the item's reservation kept changing")

    def _release(self, key: str, item: str, amount: int, match: Mapping[str, Any]) -> bool:
        result = self._quotas.update_one(
            {"_id": key, f"done.{item}": {"$exists": False}, **match},
            {
                "$inc": {"bytes": -amount, "bytes_left": amount, "items": -1, "items_left": 1},
                "$unset": {f"holds.{item}": ""},
                "$set": {f"done.{item}": _now()},
            },
        )
        return bool(result.matched_count)

    def heal_quotas(self, now: datetime, stale_before: datetime) -> int:
        stale = records.utc_ms(stale_before, "stale_before")
        forget = records.utc_ms(now, "now") - DONE_KEEP
        healed = 0
        with self._translate():
            for quota in list(self._quotas.find({}, {"holds": True, "done": True})):
                key = quota["_id"]
                for item, hold in (quota.get("holds") or {}).items():
                    if records.as_utc(hold["at"]) >= stale:
                        continue
                    doc = self._items.find_one({"_id": item}, {"state": True})
                    if doc is not None and doc["state"] == "pending":
                        continue  # the sweeper's roll-back of the upload releases it
                    amount = int(hold["bytes"])
                    if doc is None:
                        healed += self._release(key, item, amount, {f"holds.{item}.bytes": amount})
                    else:  # made READY by a writer that died before settling
                        self._settle(key, item, amount)
                        healed += 1
                for item, at in (quota.get("done") or {}).items():
                    if records.as_utc(at) < forget and self._items.find_one({"_id": item}) is None:
                        self._quotas.update_one(
                            {"_id": key, f"done.{item}": at}, {"$unset": {f"done.{item}": ""}}
                        )
        return healed


def _field(item_id: str) -> str:
    """An item id as a field name: server-generated UUIDs, but checked (no '.' or '$')."""
    if not item_id or "." in item_id or item_id.startswith("$"):
        raise ValueError("an item id cannot be used as a quota field name")
    return item_id


def _now() -> datetime:
    return records.utc_ms(datetime.now(UTC), "now")


def _limit(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**63:
        raise ValueError("a quota limit must be an integer from 0 (unlimited) to 2**63-1")
    return value


def _quota(key: str, doc: Mapping[str, Any] | None) -> Quota:
    if doc is None:
        return Quota(key, 0, 0, 0, 0)
    return Quota(
        account_id=key,
        max_bytes=int(doc["max_bytes"]),
        max_items=int(doc["max_items"]),
        bytes=int(doc["bytes"]),
        items=int(doc["items"]),
    )
