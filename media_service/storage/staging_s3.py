"""Staged bytes of resumable uploads on S3: fixed-size segment objects.

Segment i holds the upload's bytes [i * SEGMENT, (i + 1) * SEGMENT) as the object
`<prefix>.resumable/<upload id>/<i>`. Every segment but the last is full, so the segments of an
upload follow from its length alone (no listing, no part table). A PATCH that starts inside a
segment rewrites that segment whole (its recorded prefix plus the new bytes): one PutObject,
which S3 makes visible atomically and durably when it answers. So a body of any size, down to
one byte, is durable when its PATCH is acknowledged, with no open multipart upload to expire,
and a write lost before its offset was recorded is simply overwritten by the next one.
A segment is at most 8 MiB: the memory one PATCH holds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from botocore.exceptions import BotoCoreError, ClientError

from media_service.storage.interfaces import BackendUnavailable, Readable
from media_service.storage.resumable import check_upload_id
from media_service.storage.s3 import _translate

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

SEGMENT = 8 * 1024 * 1024
READ_SIZE = 64 * 1024
STAGING_PREFIX = ".resumable/"


class S3Staging:
    """Segments in the blob store's bucket, under `<its prefix>.resumable/`."""

    def __init__(
        self, client: S3Client, bucket: str, prefix: str, segment_size: int = SEGMENT
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.prefix = prefix
        self.segment_size = segment_size

    @classmethod
    def beside(cls, blobs: Any) -> S3Staging:
        """Staging next to an S3BlobStore, with its client (one per process)."""
        return cls(blobs.client, blobs.bucket, blobs.prefix + STAGING_PREFIX)

    def _key(self, upload_id: str, index: int) -> str:
        return f"{self.prefix}{check_upload_id(upload_id)}/{index:08d}"

    def write(
        self,
        upload_id: str,
        offset: int,
        source: Readable,
        limit: int,
        durable: Callable[[int], None],
    ) -> int:
        """Fill segments from `offset`; each full segment (and the last) is one PutObject."""
        index, start = divmod(offset, self.segment_size)
        buffer = bytearray(self._read(self._key(upload_id, index), start) if start else b"")
        base = index * self.segment_size
        stored = len(buffer)  # bytes of this segment already durable
        remaining = limit
        while remaining > 0:
            want = min(READ_SIZE, remaining, self.segment_size - len(buffer))
            try:
                chunk = source.read(want)
            except BaseException:
                if len(buffer) > stored:
                    self._put(self._key(upload_id, index), bytes(buffer))
                    durable(base + len(buffer))
                raise
            if not chunk:
                break
            buffer += chunk
            remaining -= len(chunk)
            if len(buffer) == self.segment_size:
                self._put(self._key(upload_id, index), bytes(buffer))
                durable(base + len(buffer))
                index += 1
                base += self.segment_size
                buffer = bytearray()
                stored = 0
        if len(buffer) > stored:
            self._put(self._key(upload_id, index), bytes(buffer))
            durable(base + len(buffer))
        return base + len(buffer)

    def _put(self, key: str, data: bytes) -> None:
        try:
            self.client.put_object(Bucket=self.bucket, Key=key, Body=data)
        except (BotoCoreError, ClientError) as exc:
            raise _translate(exc, "PutObject") from exc

    def _read(self, key: str, length: int) -> bytes:
        try:
            response = self.client.get_object(
                Bucket=self.bucket, Key=key, Range=f"bytes=0-{length - 1}"
            )
            data: bytes = response["Body"].read()
        except (BotoCoreError, ClientError) as exc:
            raise _translate(exc, "GetObject") from exc
        if len(data) != length:
            raise BackendUnavailable("blob store", "staged segment is shorter than recorded")
        return data

    def open(self, upload_id: str, length: int) -> Readable:
        """The segments in order, limited to `length` bytes."""
        return _Segments(self, upload_id, length)

    def delete(self, upload_id: str) -> None:
        """Delete every segment object of the upload."""
        prefix = f"{self.prefix}{check_upload_id(upload_id)}/"
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys: list[Any] = [{"Key": entry["Key"]} for entry in page.get("Contents", [])]
                if keys:
                    self.client.delete_objects(
                        Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True}
                    )
        except (BotoCoreError, ClientError) as exc:
            raise _translate(exc, "DeleteObjects") from exc

    def list_ids(self) -> Iterator[tuple[str, datetime]]:
        """Each staged upload once, with its newest segment's time."""
        newest: dict[str, datetime] = {}
        try:
            paginator = self.client.get_paginator("list_objects_v2")
            for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
                for entry in page.get("Contents", []):
                    upload_id = entry["Key"][len(self.prefix) :].split("/", 1)[0]
                    try:
                        check_upload_id(upload_id)
                    except ValueError:
                        continue  # not something this store wrote
                    modified = entry["LastModified"].astimezone(UTC)
                    if upload_id not in newest or newest[upload_id] < modified:
                        newest[upload_id] = modified
        except (BotoCoreError, ClientError) as exc:
            raise _translate(exc, "ListObjectsV2") from exc
        yield from newest.items()


class _Segments:
    """Read segment after segment, one GetObject each, never more than asked."""

    def __init__(self, staging: S3Staging, upload_id: str, length: int) -> None:
        self._staging = staging
        self._upload_id = upload_id
        self._left = length
        self._index = 0
        self._body: Any = None
        self._segment_left = 0

    def read(self, size: int = -1, /) -> bytes:
        if self._left <= 0:
            return b""
        if self._body is None:
            self._segment_left = min(self._left, self._staging.segment_size)
            self._body = self._open(self._index, self._segment_left)
        want = self._segment_left if size is None or size < 0 else min(size, self._segment_left)
        try:
            chunk: bytes = self._body.read(want)
        except BotoCoreError as exc:
            raise _translate(exc, "GetObject") from exc
        if not chunk:  # a segment shorter than the record says: never shift the bytes
            raise BackendUnavailable("blob store", "staged segment is shorter than recorded")
        self._left -= len(chunk)
        self._segment_left -= len(chunk)
        if self._segment_left == 0:
            self._body.close()
            self._body = None
            self._index += 1
        return chunk

    def _open(self, index: int, length: int) -> Any:
        staging = self._staging
        key = staging._key(self._upload_id, index)
        try:
            response = staging.client.get_object(
                Bucket=staging.bucket, Key=key, Range=f"bytes=0-{length - 1}"
            )
        except (BotoCoreError, ClientError) as exc:
            raise _translate(exc, "GetObject") from exc
        return response["Body"]
