"""Expiry as a client sees it, through a real gunicorn: an item uploaded with `ttl=2` is there
until its expires_at, gone from info, download and search within a second of it (no sweeper
has run), and its bytes are gone after `media-service sweep`.

On the embedded default (SQLite + files) in the fast suite, and on the deployment's real pairs
where they are configured (MongoDB/FerretDB, an S3 endpoint such as MinIO or Ceph RGW).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests

from realservers.gunicorn_server import GunicornServer
from tests.integration.conftest import (
    StartServer,
    Tenant,
    http_session,
    pair_env,
    pair_params,
    provision,
    upload,
)
from tests.integration.test_gunicorn_end_to_end import blob_leftovers

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

POLL_SECONDS = 0.05
WITHIN_SECONDS = 1.0


@pytest.fixture(params=pair_params("sqlite+files", "mongodb+files", "sqlite+s3", "mongodb+s3"))
def server(request: pytest.FixtureRequest, live_server: StartServer) -> Iterator[GunicornServer]:
    """Two gunicorn workers on the pair; stopped before its database and bucket go."""
    with ExitStack() as cleanup:
        started = live_server(workers=2, env=pair_env(request.param, cleanup))
        yield started
        started.stop()


def visible(http: requests.Session, server: GunicornServer, tenant: Tenant, item_id: str) -> dict:
    """What each way of seeing the item says right now: True while it is there."""
    info = http.get(f"{server.url}/v3/media/{item_id}/info", auth=tenant.basic, timeout=10)
    download = http.get(f"{server.url}/v3/media/{item_id}", auth=tenant.basic, timeout=10)
    found = http.get(f"{server.url}/v3/media", auth=tenant.basic, timeout=10)
    for response in (info, download):
        assert response.status_code in (200, 404), response.text
        if response.status_code == 404:
            assert response.headers["Content-Type"] == "application/problem+json"
    page = found.json()
    listed = [item["id"] for item in page["_embedded"]["media"]]
    assert page["count"] == len(listed)  # one item at most: the count must agree with the list
    return {
        "info": info.status_code == 200,
        "download": download.status_code == 200,
        "search": item_id in listed,
    }


def test_an_item_with_a_ttl_of_2_vanishes_at_its_expiry_and_the_sweep_removes_its_bytes(
    server: GunicornServer, tmp_path: Path
) -> None:
    tenant = provision(server, tmp_path / "keys")
    with http_session() as http:
        created = upload(http, server, b"here for two seconds", auth=tenant.basic, ttl="2")
        assert created.status_code == 201, created.text
        item = created.json()
        expires_at = datetime.fromisoformat(item["expires_at"].replace("Z", "+00:00"))
        lifetime = (expires_at - datetime.now(UTC)).total_seconds()
        assert 0.5 < lifetime <= 2.0, item

        seen_before: dict[str, bool] = {}
        gone_at: dict[str, float] = {}
        deadline = expires_at.timestamp() + WITHIN_SECONDS + 2.0
        while len(gone_at) < 3 and time.time() < deadline:
            asked_at = time.time()
            now = visible(http, server, tenant, item["id"])
            for way, there in now.items():
                if asked_at < expires_at.timestamp() - 0.2:
                    assert there, f"{way} lost the item before its expiry"
                    seen_before[way] = True
                if not there:
                    gone_at.setdefault(way, time.time())
            time.sleep(POLL_SECONDS)
        assert seen_before == {"info": True, "download": True, "search": True}
        assert set(gone_at) == {"info", "download", "search"}, gone_at
        for way, when in gone_at.items():
            late = when - expires_at.timestamp()
            assert late < WITHIN_SECONDS, f"{way} still showed the item {late:.2f} s after expiry"

        assert blob_leftovers(server, item["id"]), "the bytes must stay until the sweep"
        report = json.loads(server.cli("sweep").stdout)
        assert report["expired_removed"] == 1 and report["errors"] == 0, report
        assert blob_leftovers(server, item["id"]) == []
        again = http.get(f"{server.url}/v3/media/{item['id']}/info", auth=tenant.basic, timeout=10)
        assert again.status_code == 404
