"""The real servers under the suite, as `make test-backends` (realservers) hands them over.

MEDIA_TEST_MONGO_URL names a MongoDB-protocol server (FerretDB in CI, MongoDB under compose),
MEDIA_TEST_S3_ENDPOINT an S3 endpoint (MinIO or Ceph RGW) whose credentials are in
AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, MEDIA_TEST_S3_BUCKET a bucket there for the contract
suite, MEDIA_TEST_S3_SERVER the endpoint's name (for test ids and messages). Read once, at import,
before tests/conftest.py's autouse fixture replaces AWS_* with dummies.

`REAL_PAIR` is the backend pair "MongoDB + S3" of the API suites. Its backends are built the way
a deployment builds them — `open_backends(settings)` from `MEDIA_DATABASE_URL=mongodb://…/<db>`
and `MEDIA_STORAGE_URL=s3://<bucket>/<prefix>` with the endpoint in `AWS_ENDPOINT_URL_S3`, the
compose file's settings — on a database and a prefix of their own, removed afterwards.
"""

from __future__ import annotations

import functools
import os
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest

from media_service.settings import Settings
from media_service.storage.interfaces import Backends

MONGO_URL = os.environ.get("MEDIA_TEST_MONGO_URL") or None
S3_ENDPOINT = os.environ.get("MEDIA_TEST_S3_ENDPOINT") or None
S3_BUCKET = os.environ.get("MEDIA_TEST_S3_BUCKET") or "media-contract"
S3_SERVER = os.environ.get("MEDIA_TEST_S3_SERVER") or "s3"
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", ""),
    "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
    "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
}

REAL_PAIR = "mongo-s3"
REAL_MARKS = (pytest.mark.mongo, pytest.mark.minio)


def real_pairs() -> list[Any]:
    """The real pair as a parameter, where both servers are configured (else nothing)."""
    if MONGO_URL and S3_ENDPOINT:
        return [pytest.param(REAL_PAIR, marks=REAL_MARKS)]
    return []


@functools.cache
def mongo_is_ferretdb() -> bool:
    """Whether MEDIA_TEST_MONGO_URL is a FerretDB server (it names itself in buildInfo).

    FerretDB 1.x runs an update as a read and a later write (docs/ferretdb.md §3): the few tests
    whose point is atomicity under concurrency say what that server can and cannot promise.
    """
    if not MONGO_URL:
        return False
    from pymongo import MongoClient

    client: Any = MongoClient(MONGO_URL, serverSelectionTimeoutMS=5000)
    try:
        return "ferretdbVersion" in client.admin.command("buildInfo")
    finally:
        client.close()


def unique_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def database_url(name: str) -> str:
    """MEDIA_TEST_MONGO_URL with its database replaced by `name`."""
    assert MONGO_URL, "MEDIA_TEST_MONGO_URL is not set"
    parts = urlsplit(MONGO_URL)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


def s3_client() -> Any:
    """A boto3 client for the tests' own bookkeeping on the real endpoint."""
    import boto3

    assert S3_ENDPOINT, "MEDIA_TEST_S3_ENDPOINT is not set"
    return boto3.session.Session(
        aws_access_key_id=S3_CREDENTIALS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=S3_CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
        region_name=S3_CREDENTIALS["AWS_DEFAULT_REGION"],
    ).client("s3", endpoint_url=S3_ENDPOINT)


def drop_database(name: str) -> None:
    from pymongo import MongoClient

    client: Any = MongoClient(MONGO_URL, serverSelectionTimeoutMS=5000)
    try:
        client.drop_database(name)
    finally:
        client.close()


def empty_prefix(bucket: str, prefix: str) -> None:
    """Delete every object and abort every open multipart upload under `prefix`."""
    client = s3_client()
    try:
        pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for entry in page.get("Contents", []):
                client.delete_object(Bucket=bucket, Key=entry["Key"])
        # Bucket-wide, filtered here: MinIO matches this Prefix only against whole names.
        for open_upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
            if open_upload["Key"].startswith(prefix):
                client.abort_multipart_upload(
                    Bucket=bucket, Key=open_upload["Key"], UploadId=open_upload["UploadId"]
                )
    finally:
        client.close()


@contextmanager
def real_server_env() -> Iterator[None]:
    """AWS_* of the real endpoint for boto3 (the autouse sandbox set dummies), then restored."""
    with pytest.MonkeyPatch.context() as env:
        for name, value in S3_CREDENTIALS.items():
            env.setenv(name, value)
        assert S3_ENDPOINT
        env.setenv("AWS_ENDPOINT_URL_S3", S3_ENDPOINT)
        yield


@contextmanager
def open_real_pair(settings: Settings) -> Iterator[Backends]:
    """MongoDB + S3 backends on a fresh database and prefix, opened as a deployment opens them."""
    from media_service.backends import open_backends

    database, prefix = unique_name("media_api"), unique_name("api")
    real = settings.with_overrides(
        database_url=database_url(database), storage_url=f"s3://{S3_BUCKET}/{prefix}/"
    )
    with ExitStack() as stack:
        stack.callback(drop_database, database)
        stack.callback(empty_prefix, S3_BUCKET, f"{prefix}/")
        stack.enter_context(real_server_env())
        backends = open_backends(real)
        stack.callback(backends.close)
        stack.callback(getattr(backends.blobs, "close", lambda: None))
        yield backends


@contextmanager
def fresh_bucket() -> Iterator[str]:
    """A new bucket on the real endpoint; emptied (objects, open uploads) and removed after."""
    bucket = unique_name("media-it").replace("_", "-")
    client = s3_client()
    try:
        client.create_bucket(Bucket=bucket)
        yield bucket
    finally:
        try:
            empty_prefix(bucket, "")
            client.delete_bucket(Bucket=bucket)
        finally:
            client.close()


def service_s3_env(bucket: str, prefix: str = "integration") -> dict[str, str]:
    """A server's variables for blobs under `prefix` of `bucket` on the real endpoint."""
    assert S3_ENDPOINT, "MEDIA_TEST_S3_ENDPOINT is not set"
    return {
        **S3_CREDENTIALS,
        "AWS_ENDPOINT_URL_S3": S3_ENDPOINT,
        "MEDIA_STORAGE_URL": f"s3://{bucket}/{prefix}",
    }
