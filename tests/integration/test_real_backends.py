"""The production backends behind the real gunicorn: MongoDB and an S3 endpoint such as MinIO.

Runs only where they exist: MEDIA_TEST_MONGO_URL names a MongoDB server, MEDIA_TEST_S3_ENDPOINT
an S3 endpoint whose credentials are in AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY (the compose
`tests` service sets all of them: `docker compose --profile test run --rm tests`). Each test gets
a database and a bucket of its own and removes them afterwards. Proves that the end-to-end flow
(CLI provisioning, upload, info, search, download, update, delete) and readiness work on
MongoDB + files, SQLite + S3 and MongoDB + S3, the pairs a deployment uses.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import LiveServer, StartServer, provision, upload
from tests.integration.test_gunicorn_end_to_end import check_full_lifecycle, check_update

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


@pytest.fixture(
    params=[
        pytest.param("mongodb+files", marks=pytest.mark.mongo),
        pytest.param("sqlite+s3", marks=pytest.mark.minio),
        pytest.param("mongodb+s3", marks=[pytest.mark.mongo, pytest.mark.minio]),
    ]
)
def real_stack(request: pytest.FixtureRequest, live_server: StartServer) -> Iterator[LiveServer]:
    """Two gunicorn workers on the requested pair; skipped when a backend is not configured.

    The server is stopped here, before its database and bucket are removed.
    """
    database, storage = request.param.split("+")
    env: dict[str, str] = {}
    if database == "mongodb":
        env["MEDIA_DATABASE_URL"] = request.getfixturevalue("mongo_database_url")
    if storage == "s3":
        env.update(request.getfixturevalue("real_s3_env"))
    server = live_server(workers=2, env=env)
    yield server
    server.stop()


def test_full_lifecycle_on_real_backends(real_stack: LiveServer, tmp_path: Path) -> None:
    """Upload -> info -> search -> download -> delete, with nothing left behind."""
    check_full_lifecycle(real_stack, provision(real_stack, tmp_path / "keys"))


def test_update_on_real_backends(real_stack: LiveServer, tmp_path: Path) -> None:
    """PUT updates stick on the real database."""
    check_update(real_stack, provision(real_stack, tmp_path / "keys"))


def test_ready_on_real_backends(real_stack: LiveServer) -> None:
    """/readyz reaches the real database and bucket."""
    with real_stack.session() as http:
        ready = http.get(f"{real_stack.url}/readyz", timeout=15)
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"] == {"database": "ok", "blob_store": "ok", "disk": "ok"}


def test_stopped_server_leaves_the_backends_usable_by_a_new_one(
    live_server: StartServer, real_stack: LiveServer, tmp_path: Path
) -> None:
    """What one server process wrote, a freshly started one (same configuration) serves."""
    tenant = provision(real_stack, tmp_path / "keys")
    with real_stack.session() as http:
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
    with successor.session() as http:
        got = http.get(f"{successor.url}/v3/media/{item_id}", auth=tenant.basic, timeout=30)
    assert got.status_code == 200 and got.content == b"survives restarts"
