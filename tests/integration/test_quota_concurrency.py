"""Quotas under real concurrency: two gunicorn instances of two workers each, one database.

20 concurrent uploads of 100 KiB against `--max-bytes 1048576` (room for 10): at most 10 are
stored, every other one is refused with 403 quota-exceeded, and the account's usage equals the
sum of what is stored. In-process tests cannot prove this (threads share a GIL, mongomock is not
atomic), so it runs over HTTP, on SQLite + files (always) and on MongoDB + S3 (FerretDB and MinIO
under `python -m realservers test`). The two masters share nothing but the database and the blob
store, so what holds between them holds across hosts.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass

import pytest

from realservers.gunicorn_server import GunicornServer
from tests.integration.conftest import (
    StartServer,
    create_account,
    http_session,
    pair_env,
    pair_params,
    payload,
    real_mongo_is_ferretdb,
    upload,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

UPLOADS = 20
SIZE = 100 * 1024
MAX_BYTES = 1_048_576  # 10 uploads of SIZE fit, 11 do not


@dataclass
class Hosts:
    servers: tuple[GunicornServer, GunicornServer]
    owner: tuple[str, str]
    ferretdb: bool


@pytest.fixture(
    params=pair_params("sqlite+files", "mongodb+s3"),
)
def hosts(request: pytest.FixtureRequest, live_server: StartServer) -> Iterator[Hosts]:
    with ExitStack() as cleanup:
        if request.param == "mongodb+s3":
            env = pair_env(request.param, cleanup)
            first = live_server(workers=2, env=env)
            second = live_server(workers=2, env=env)
        else:
            first = live_server(workers=2)
            # The same database file and blob directory: a second host of the embedded default.
            second = live_server(workers=2, env={"MEDIA_DATA_DIR": str(first.data_dir)})
        yield Hosts(
            (first, second),
            create_account(first),
            ferretdb=request.param == "mongodb+s3" and real_mongo_is_ferretdb(),
        )
        second.stop()
        first.stop()  # before the database is dropped


def _upload(job: tuple[GunicornServer, tuple[str, str], bytes]) -> tuple[int, dict]:
    server, owner, content = job
    with http_session() as http:
        response = upload(http, server, content, auth=owner)
        return response.status_code, response.json()


def _show(server: GunicornServer, api_key: str) -> dict:
    return json.loads(server.cli("accounts", "show", "--api-key", api_key, "--json").stdout)


def test_concurrent_uploads_never_pass_the_quota(
    hosts: Hosts, request: pytest.FixtureRequest
) -> None:
    if hosts.ferretdb:
        # FerretDB 1.x runs an update as a read and a later write (docs/ferretdb.md): concurrent
        # conditional updates may all "succeed". Not a bug of this service.
        request.applymarker(
            pytest.mark.xfail(reason="FerretDB updates are not atomic", strict=True)
        )
    first, second = hosts.servers
    api_key = hosts.owner[0]
    first.cli("accounts", "set-quota", "--api-key", api_key, "--max-bytes", str(MAX_BYTES))
    jobs = [(hosts.servers[n % 2], hosts.owner, payload(SIZE, seed=n)) for n in range(UPLOADS)]
    with ThreadPoolExecutor(max_workers=UPLOADS) as pool:
        results = list(pool.map(_upload, jobs))

    statuses = Counter(status for status, _ in results)
    stored = statuses[201]
    assert set(statuses) <= {201, 403}, statuses
    assert 1 <= stored <= MAX_BYTES // SIZE, statuses
    for status, body in results:
        if status == 403:
            assert body["type"].endswith("quota-exceeded"), body
            assert str(MAX_BYTES) in body["detail"]

    shown = _show(second, api_key)
    assert shown["quota"] == {"max_bytes": MAX_BYTES, "max_items": 0}
    assert shown["usage"] == {"bytes": stored * SIZE, "items": stored}
    assert (shown["bytes"], shown["items"]) == (stored * SIZE, stored)  # READY items, summed
    with http_session() as http:
        found = http.get(f"{first.url}/v3/media", auth=hosts.owner, timeout=15).json()
    assert found["count"] == stored
    assert sum(item["media_size"] for item in found["_embedded"]["media"]) == stored * SIZE

    # Room given back by a delete is usable again, from either host.
    victim = found["_embedded"]["media"][0]["id"]
    with http_session() as http:
        deleted = http.delete(f"{second.url}/v3/media/{victim}", auth=hosts.owner, timeout=15)
        assert deleted.status_code == 204
        again = upload(http, first, payload(SIZE, seed=99), auth=hosts.owner)
    assert again.status_code == 201, again.text
    assert _show(first, api_key)["usage"] == {"bytes": stored * SIZE, "items": stored}
