"""The deployed stack end to end: gunicorn as `make run` starts it, credentials from the CLI.

Proves that the documented path works for a user — start the server, provision an account, an
application and a token with `media-service`, then upload, read, search, download (whole and a
range), update and delete over real HTTP — on the embedded default (SQLite + files) and on
SQLite + S3 through a real HTTP S3 endpoint (moto server). Also proves the operational contract
around it: /healthz and /readyz, and a bad configuration stopping gunicorn at once with one
readable line instead of a traceback.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path

import pytest

from realservers.gunicorn_server import GunicornServer
from tests.integration.conftest import (
    S3Endpoint,
    StartServer,
    Tenant,
    http_session,
    launch,
    list_keys,
    payload,
    provision,
    upload,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(90)]

MiB = 1024 * 1024


@pytest.fixture(scope="module", params=["sqlite+files", "sqlite+s3-server"])
def stack(request: pytest.FixtureRequest, module_live_server: StartServer) -> GunicornServer:
    """A two-worker gunicorn on the embedded default, or with its blobs on a moto S3 server.

    Shared by the module's tests, with one CLI-provisioned tenant (below); a test that creates
    items removes them again, so each sees the tenant's item list empty.
    """
    env: dict[str, str] = {}
    if request.param == "sqlite+s3-server":
        moto: S3Endpoint = request.getfixturevalue("moto_server")
        env = moto.storage_env()
    return module_live_server(workers=2, env=env)


def blob_leftovers(server: GunicornServer, item_id: str) -> list[str]:
    """Stored bytes of `item_id` that are still in the server's blob store."""
    storage_url = server.env.get("MEDIA_STORAGE_URL")
    if storage_url is None:  # the embedded default: files under MEDIA_DATA_DIR/blobs
        return [str(path) for path in (server.data_dir / "blobs").rglob(f"*{item_id}*")]
    bucket, _, prefix = storage_url.removeprefix("s3://").partition("/")
    endpoint = S3Endpoint(server.env["AWS_ENDPOINT_URL_S3"], bucket)
    return [key for key in list_keys(endpoint, prefix, server.env) if item_id in key]


@pytest.fixture(scope="module")
def tenant(stack: GunicornServer, tmp_path_factory: pytest.TempPathFactory) -> Tenant:
    """An account and application provisioned on `stack` with the CLI, as an operator would."""
    return provision(stack, tmp_path_factory.mktemp("keys"))


def test_full_lifecycle_over_http(stack: GunicornServer, tenant: Tenant) -> None:
    """Upload -> info -> search -> download (whole, ranges) -> delete, as a client sees it."""
    check_full_lifecycle(stack, tenant)


def test_update_over_http(stack: GunicornServer, tenant: Tenant) -> None:
    """PUT (JSON and form) answers 204, or 200 with Prefer: return=representation; it sticks."""
    check_update(stack, tenant)


def check_full_lifecycle(server: GunicornServer, tenant: Tenant) -> None:
    """Every endpoint but update once over HTTP; the tenant must own no other item.

    Also used by test_real_backends.py against MongoDB and a real S3 endpoint.
    """
    content = payload(2 * MiB + 17)
    info = json.dumps({"campaign": "spring", "n": 1})

    with http_session() as http:
        created = upload(
            http,
            server,
            content,
            headers=tenant.bearer,
            filename="spring promo.bin",
            info=info,
            title="Promo",
        )
        assert created.status_code == 201, created.text
        item = created.json()
        item_id = item["id"]
        assert created.headers["Location"] == f"{server.url}/v3/media/{item_id}/info"
        assert item["media_size"] == len(content)
        assert item["etag"] == hashlib.md5(content).hexdigest()
        assert item["account_id"] == tenant.api_key
        assert item["application_id"] == tenant.application_id
        assert item["store_id"] == ("s3" if "MEDIA_STORAGE_URL" in server.env else "file")
        assert item["original_file_name"] == "spring promo.bin"
        assert item["metadata_primary"] == info
        assert item["public"] is False and item["times_downloaded"] == 0

        # The Location header is usable as is, with either kind of credentials.
        by_basic = http.get(created.headers["Location"], auth=tenant.basic, timeout=15)
        assert by_basic.status_code == 200
        assert by_basic.json() == item
        by_token = http.get(created.headers["Location"], headers=tenant.bearer, timeout=15)
        assert by_token.json() == item

        for credentials in ({"auth": tenant.basic}, {"headers": tenant.bearer}):
            found = http.get(f"{server.url}/v3/media", timeout=15, **credentials)
            assert found.status_code == 200, found.text
            page = found.json()
            assert page["count"] == 1
            assert [media["id"] for media in page["_embedded"]["media"]] == [item_id]

        # A private item needs credentials.
        assert http.get(f"{server.url}/v3/media/{item_id}", timeout=15).status_code == 401

        whole = http.get(f"{server.url}/v3/media/{item_id}", auth=tenant.basic, timeout=30)
        assert whole.status_code == 200
        assert whole.content == content
        assert whole.headers["Content-Length"] == str(len(content))
        assert whole.headers["ETag"] == f'"{item["etag"]}"'
        assert whole.headers["Accept-Ranges"] == "bytes"
        assert whole.headers["Content-Type"] == item["mime_type"]

        # A range across the 1 MiB chunk boundary the stores stream in.
        start, end = MiB - 5, MiB + 10
        part = http.get(
            f"{server.url}/v3/media/{item_id}",
            auth=tenant.basic,
            headers={"Range": f"bytes={start}-{end}"},
            timeout=30,
        )
        assert part.status_code == 206
        assert part.headers["Content-Range"] == f"bytes {start}-{end}/{len(content)}"
        assert part.content == content[start : end + 1]

        tail = http.get(
            f"{server.url}/v3/media/{item_id}",
            headers={**tenant.bearer, "Range": "bytes=-100"},
            timeout=30,
        )
        assert tail.status_code == 206 and tail.content == content[-100:]

        info_after = http.get(created.headers["Location"], auth=tenant.basic, timeout=15)
        # The whole GET counted; ranges not starting at byte 0 did not.
        assert info_after.json()["times_downloaded"] == 1

        assert blob_leftovers(server, item_id), "the leak check below must look in the right place"
        deleted = http.delete(f"{server.url}/v3/media/{item_id}", auth=tenant.basic, timeout=15)
        assert deleted.status_code == 204
        gone = http.get(created.headers["Location"], auth=tenant.basic, timeout=15)
        assert gone.status_code == 404
        assert gone.headers["Content-Type"].startswith("application/problem+json")
        assert http.get(f"{server.url}/v3/media/{item_id}", timeout=15).status_code == 404
        again = http.delete(f"{server.url}/v3/media/{item_id}", auth=tenant.basic, timeout=15)
        assert again.status_code == 404
        empty = http.get(f"{server.url}/v3/media", auth=tenant.basic, timeout=15).json()
        assert empty["count"] == 0 and empty["_embedded"]["media"] == []

    assert blob_leftovers(server, item_id) == []


def check_update(server: GunicornServer, tenant: Tenant) -> None:
    """Update a private item's metadata three ways, then download it anonymously once public."""
    content = b"update me"
    with http_session() as http:
        # Uploaded with the application's token, so that token may update it as well as Basic.
        created = upload(http, server, content, headers=tenant.bearer, title="Before")
        assert created.status_code == 201, created.text
        item = created.json()
        info_url = created.headers["Location"]
        content_url = f"{server.url}/v3/media/{item['id']}"
        try:
            assert http.get(content_url, timeout=15).status_code == 401

            updated = http.put(
                info_url, json={"title": "Renamed", "public": True}, auth=tenant.basic, timeout=15
            )
            assert updated.status_code == 204, updated.text
            assert updated.content == b""
            after = http.get(info_url, auth=tenant.basic, timeout=15).json()
            assert after["title"] == "Renamed"
            assert after["public"] is True and after["public_item"] is True
            assert after["etag"] == item["etag"]
            assert after["time_last_updated"] >= item["time_last_updated"]

            # Public now: anyone may download it.
            anonymous = http.get(content_url, timeout=15)
            assert anonymous.status_code == 200 and anonymous.content == content

            form = http.put(
                content_url, data={"description": "from a form"}, headers=tenant.bearer, timeout=15
            )
            assert form.status_code == 204, form.text
            represented = http.put(
                info_url,
                json={"max_downloads_allowed": 7},
                auth=tenant.basic,
                headers={"Prefer": "return=representation"},
                timeout=15,
            )
            assert represented.status_code == 200, represented.text
            assert represented.json()["description"] == "from a form"
            assert represented.json()["max_downloads_allowed"] == 7
        finally:
            # Leave the tenant's item list as it was, whatever happened above.
            http.delete(info_url, auth=tenant.basic, timeout=15)


def test_health_and_readiness(stack: GunicornServer) -> None:
    """/healthz says the process is alive; /readyz that the database and blob store answer."""
    with http_session() as http:
        health = http.get(f"{stack.url}/healthz", timeout=10)
        assert health.status_code == 200 and health.json()["status"] == "ok"
        ready = http.get(f"{stack.url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        assert ready.json()["checks"] == {"database": "ok", "blob_store": "ok", "disk": "ok"}


def test_readiness_fails_when_the_bucket_is_missing(
    live_server: StartServer, moto_server: S3Endpoint
) -> None:
    """A server whose bucket does not exist is alive but not ready: 503 problem+json, promptly."""
    server = live_server(
        workers=1,
        env={
            "MEDIA_STORAGE_URL": "s3://no-such-bucket/media",
            "AWS_ENDPOINT_URL_S3": moto_server.url,
        },
    )
    with http_session() as http:
        assert http.get(f"{server.url}/healthz", timeout=10).status_code == 200
        started = time.monotonic()
        ready = http.get(f"{server.url}/readyz", timeout=15)
        assert time.monotonic() - started < 10
    assert ready.status_code == 503
    assert ready.headers["Content-Type"].startswith("application/problem+json")
    assert "blob_store" in ready.json()["detail"]


def test_invalid_database_url_stops_gunicorn_with_one_clear_line(tmp_path: Path) -> None:
    """Bad MEDIA_DATABASE_URL: gunicorn exits non-zero at once, one line names it, no traceback."""
    server = launch(
        tmp_path / "bad-config",
        workers=2,
        env={"MEDIA_DATABASE_URL": "postgres://db.example/media"},
        wait=False,
    )
    try:
        started = time.monotonic()
        returncode = server.process.wait(timeout=15)
        elapsed = time.monotonic() - started
    finally:
        server.stop()
    stderr = server.stderr()
    assert returncode != 0, stderr
    assert elapsed < 10, f"took {elapsed:.1f} s to give up"
    mentions = [line for line in stderr.splitlines() if "MEDIA_DATABASE_URL" in line]
    assert len(mentions) == 1, stderr
    assert "postgres" in mentions[0]
    assert "Traceback" not in stderr
    assert server.worker_pids() == []
