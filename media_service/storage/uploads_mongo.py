"""Records of resumable uploads in MongoDB (and FerretDB).

The lease is a document of its own in `resumable_locks`, keyed by the upload id, taken by
inserting it: a unique `_id` admits one insert only, on MongoDB and on FerretDB alike (whose
conditional updates are a read and a separate write, docs/ferretdb.md §3, so a conditional
`$set` could not elect one PATCH). Only the lease holder moves an upload's offset.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.collection import Collection
from pymongo.errors import DuplicateKeyError

from media_service.storage import records
from media_service.storage.mongo import MongoDatabase, _translated
from media_service.storage.mongo_indexes import ensure_index
from media_service.storage.resumable import Claim, ResumableUpload

Document = dict[str, Any]


class MongoUploadRepository:
    """Upload records in `resumable_uploads`, leases in `resumable_locks`."""

    def __init__(self, db: MongoDatabase) -> None:
        self.db = db
        self._setup_lock = threading.Lock()
        self._prepared = False

    @property
    def _uploads(self) -> Collection[Document]:
        return self.db.collection("resumable_uploads")

    @property
    def _locks(self) -> Collection[Document]:
        return self.db.collection("resumable_locks")

    def prepare_database(self) -> None:
        """The expiry index (once per process; retried after a failure)."""
        with self._setup_lock:
            if self._prepared:
                return
            with _translated():
                ensure_index(self._uploads, [("expires", ASCENDING)], name="expires")
            self._prepared = True

    def create(self, upload: ResumableUpload) -> None:
        self.prepare_database()
        document = {
            "_id": records.require_id(upload.id),
            "account_id": upload.account_id,
            "application_id": upload.application_id,
            "length": upload.length,
            "offset": upload.offset,
            "metadata": dict(upload.metadata),
            "time_created": upload.time_created,
            "expires": upload.expires,
            "media_id": None,
        }
        with _translated():
            self._uploads.insert_one(document)

    def get(self, upload_id: str) -> ResumableUpload | None:
        self.prepare_database()
        with _translated():
            doc = self._uploads.find_one({"_id": records.require_id(upload_id)})
        return _upload(doc) if doc else None

    def claim(
        self, upload_id: str, offset: int | None, token: str, until: datetime, now: datetime
    ) -> Claim:
        current = self.get(upload_id)
        verdict = _verdict(current, offset)
        if verdict is not None:
            return verdict
        with _translated():
            self._locks.delete_one({"_id": upload_id, "until": {"$lt": now}})  # a dead holder's
            try:
                self._locks.insert_one({"_id": upload_id, "token": token, "until": until})
            except DuplicateKeyError:
                return Claim.BUSY
        # Read again under the lease: a PATCH may have moved the offset and released meanwhile.
        verdict = _verdict(self.get(upload_id), offset)
        if verdict is not None:
            self.release(upload_id, token)
            return verdict
        return Claim.CLAIMED

    def _holds(self, upload_id: str, token: str) -> bool:
        with _translated():
            return self._locks.find_one({"_id": upload_id, "token": token}) is not None

    def renew(self, upload_id: str, token: str, until: datetime) -> bool:
        with _translated():
            result = self._locks.update_one(
                {"_id": upload_id, "token": token}, {"$set": {"until": until}}
            )
        return result.matched_count > 0

    def advance(self, upload_id: str, token: str, old: int, new: int) -> bool:
        if not self._holds(upload_id, token):
            return False
        with _translated():
            result = self._uploads.update_one(
                {"_id": upload_id, "offset": old, "media_id": None}, {"$set": {"offset": new}}
            )
        return result.matched_count > 0

    def finish(self, upload_id: str, token: str, media_id: str) -> bool:
        current = self.get(upload_id)
        if current is None or not self._holds(upload_id, token):
            return False
        with _translated():
            result = self._uploads.update_one(
                {"_id": upload_id, "media_id": None},
                {"$set": {"offset": current.length, "media_id": media_id}},
            )
        self.release(upload_id, token)
        return result.matched_count > 0

    def release(self, upload_id: str, token: str) -> None:
        with _translated():
            self._locks.delete_one({"_id": upload_id, "token": token})

    def remove(self, upload_id: str) -> bool:
        self.prepare_database()
        with _translated():
            removed = self._uploads.delete_one({"_id": records.require_id(upload_id)})
            self._locks.delete_one({"_id": upload_id})
        return removed.deleted_count > 0

    def expired(self, now: datetime, limit: int) -> list[ResumableUpload]:
        self.prepare_database()
        with _translated():
            cursor = self._uploads.find({"expires": {"$lt": now}}).sort("expires").limit(limit)
            return [_upload(doc) for doc in cursor]

    def existing(self, upload_ids: list[str]) -> set[str]:
        self.prepare_database()
        found: set[str] = set()
        with _translated():
            for start in range(0, len(upload_ids), 500):
                batch = upload_ids[start : start + 500]
                found.update(
                    doc["_id"] for doc in self._uploads.find({"_id": {"$in": batch}}, {"_id": 1})
                )
        return found


def _verdict(current: ResumableUpload | None, offset: int | None) -> Claim | None:
    if current is None:
        return Claim.NOT_FOUND
    if current.media_id is not None:
        return Claim.COMPLETE
    if offset is not None and current.offset != offset:
        return Claim.OFFSET_MISMATCH
    return None


def _upload(doc: Document) -> ResumableUpload:
    return ResumableUpload(
        id=doc["_id"],
        account_id=doc["account_id"],
        application_id=doc.get("application_id"),
        length=int(doc["length"]),
        offset=int(doc["offset"]),
        metadata=dict(doc.get("metadata") or {}),
        time_created=doc["time_created"],
        expires=doc["expires"],
        media_id=doc.get("media_id"),
    )
