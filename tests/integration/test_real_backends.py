"""The production backends behind the real gunicorn: MongoDB and an S3 endpoint such as MinIO.

Runs only where they exist: MEDIA_TEST_MONGO_URL names a MongoDB server, MEDIA_TEST_S3_ENDPOINT
an S3 endpoint whose credentials are in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (the compose
`tests` service sets all of them: `docker compose --profile test run --rm tests`). Each test gets
a database and a bucket of its own and removes them afterwards. Proves that the end-to-end flow
(CLI provisioning, upload, info, search, download, update, delete) and readiness work on
MongoDB + files, SQLite + S3 and MongoDB + S3, the pairs a deployment uses.
"""

from __future__ import annotations

import hashlib
import io
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from media_service.backends import open_backends
from media_service.settings import S3_PART_BYTES, Settings
from realservers.gunicorn_server import GunicornServer
from tests import real_backends
from tests.integration.conftest import (
    StartServer,
    create_account,
    fresh_s3_env,
    http_session,
    pair_env,
    pair_params,
    payload,
    provision,
    upload,
)
from tests.integration.test_gunicorn_end_to_end import check_full_lifecycle, check_update
from tests.test_deployment_files import COMPOSE as COMPOSE_FILE
from tests.test_deployment_files import interpolate_defaults, service_env

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
MiB = 1024 * 1024


@pytest.fixture(params=pair_params("mongodb+files", "sqlite+s3", "mongodb+s3"))
def real_stack(
    request: pytest.FixtureRequest, live_server: StartServer
) -> Iterator[GunicornServer]:
    """Two gunicorn workers on the requested pair; skipped when a backend is not configured.

    The server is stopped here, before its database and bucket are removed.
    """
    with ExitStack() as cleanup:
        server = live_server(workers=2, env=pair_env(request.param, cleanup))
        yield server
        server.stop()


def test_full_lifecycle_on_real_backends(real_stack: GunicornServer, tmp_path: Path) -> None:
    """Upload -> info -> search -> download -> delete, with nothing left behind."""
    check_full_lifecycle(real_stack, provision(real_stack, tmp_path / "keys"))


def test_update_on_real_backends(real_stack: GunicornServer, tmp_path: Path) -> None:
    """PUT updates stick on the real database."""
    check_update(real_stack, provision(real_stack, tmp_path / "keys"))


def test_ready_on_real_backends(real_stack: GunicornServer) -> None:
    """/readyz reaches the real database and bucket."""
    with http_session() as http:
        ready = http.get(f"{real_stack.url}/readyz", timeout=15)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "blob_store": "ok", "disk": "ok"}


def test_stopped_server_leaves_the_backends_usable_by_a_new_one(
    live_server: StartServer, real_stack: GunicornServer, tmp_path: Path
) -> None:
    """What one server process wrote, a freshly started one (same configuration) serves."""
    tenant = provision(real_stack, tmp_path / "keys")
    with http_session() as http:
        created = upload(http, real_stack, b"survives restarts", auth=tenant.basic)
    assert created.status_code == 201, created.text
    item_id = created.json()["id"]
    real_stack.stop()

    overrides = {
        name: real_stack.env[name]
        for name in (
            "MEDIA_DATABASE_URL",
            "MEDIA_STORAGE_URL",
            "AWS_ENDPOINT_URL_S3",
            "AWS_ACCESS_KEY_ID",
            "AWS_SECRET_ACCESS_KEY",
        )
        if name in real_stack.env
    }
    # A different MEDIA_DATA_DIR: everything durable must live in the configured backends...
    if "MEDIA_STORAGE_URL" not in overrides:
        # ...except the embedded file store, which lives under the data directory.
        overrides["MEDIA_STORAGE_URL"] = (real_stack.data_dir / "blobs").as_uri()
    if "MEDIA_DATABASE_URL" not in overrides:
        overrides["MEDIA_DATABASE_URL"] = f"sqlite:///{real_stack.data_dir / 'media.db'}"
    successor = live_server(workers=1, env=overrides)
    with http_session() as http:
        got = http.get(f"{successor.url}/v3/media/{item_id}", auth=tenant.basic, timeout=30)
    assert got.status_code == 200 and got.content == b"survives restarts"


@pytest.mark.minio
def test_large_multipart_upload_round_trips(live_server: StartServer, tmp_path: Path) -> None:
    """65 MiB through gunicorn into S3 as a multipart object; back byte for byte, MD5 as ETag."""
    with fresh_s3_env() as env:
        server = live_server(workers=1, env={**env, "MEDIA_MAX_UPLOAD_BYTES": str(96 * MiB)})
        owner = create_account(server)
        content = payload(65 * MiB + 3, seed=9)
        with http_session() as http:
            created = upload(http, server, content, auth=owner)
            assert created.status_code == 201, created.text
            item = created.json()
            assert item["etag"] == hashlib.md5(content).hexdigest()
            assert item["media_size"] == len(content)
            got = http.get(f"{server.url}/v3/media/{item['id']}", auth=owner, timeout=120)
        assert got.status_code == 200
        assert got.headers["ETag"] == f'"{item["etag"]}"'
        assert hashlib.sha256(got.content).digest() == hashlib.sha256(content).digest()
        # It was stored in parts (an S3 multipart ETag is "<md5 of part md5s>-<parts>").
        bucket, prefix = env["MEDIA_STORAGE_URL"].removeprefix("s3://").split("/", 1)
        client = real_backends.s3_client()
        try:
            head = client.head_object(Bucket=bucket, Key=f"{prefix}/{item['id']}")
        finally:
            client.close()
        assert head["ContentLength"] == len(content)
        parts = -(-len(content) // S3_PART_BYTES)  # 14 parts of 5 MiB
        assert head["ETag"].strip('"').endswith(f"-{parts}")
        server.stop()


@pytest.mark.mongo
@pytest.mark.minio
def test_the_compose_settings_work_on_the_real_servers() -> None:
    """docker-compose.yml's own MEDIA_DATABASE_URL and S3 settings, with only the hosts moved
    to the servers under test: the database name comes from the URL, the client addresses
    the bucket path-style with checksums only when required, and both round-trip data."""
    if not (real_backends.MONGO_URL and real_backends.S3_ENDPOINT):
        pytest.skip("MEDIA_TEST_MONGO_URL and MEDIA_TEST_S3_ENDPOINT are not both set")
    compose = yaml.safe_load(COMPOSE_FILE.read_text())
    env = {k: interpolate_defaults(v) for k, v in service_env(compose["services"]["media"]).items()}
    database = urlsplit(env["MEDIA_DATABASE_URL"])
    mongo = urlsplit(real_backends.MONGO_URL or "")
    assert database.path == "/media" and env["MEDIA_STORAGE_URL"] == "s3://media"
    env["MEDIA_DATABASE_URL"] = database._replace(netloc=mongo.netloc).geturl()
    env["AWS_ENDPOINT_URL_S3"] = real_backends.S3_ENDPOINT or ""
    env.update(real_backends.S3_CREDENTIALS)
    settings = Settings.from_env({k: v for k, v in env.items() if v != ""})

    with real_backends.real_server_env():
        backends = open_backends(settings)
    blobs, media = backends.blobs, backends.media
    try:
        assert media.db.name == "media"  # type: ignore[attr-defined]
        config = blobs.client.meta.config  # type: ignore[attr-defined]
        assert config.s3["addressing_style"] == "path"
        assert config.request_checksum_calculation == "when_required"
        assert blobs.client.meta.endpoint_url == real_backends.S3_ENDPOINT  # type: ignore[attr-defined]
        existing = {b["Name"] for b in blobs.client.list_buckets()["Buckets"]}  # type: ignore[attr-defined]
        if "media" not in existing:
            blobs.client.create_bucket(Bucket="media")  # what compose's bucket job does
        key = str(uuid.uuid4())
        blobs.put(key, io.BytesIO(b"compose settings"))
        try:
            assert b"".join(blobs.open(key)) == b"compose settings"
        finally:
            blobs.delete(key)
        media.ping()
    finally:
        real_backends.drop_database("media")
        backends.close()
