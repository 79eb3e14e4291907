"""MEDIA_DOWNLOAD_REDIRECT=accel through the real nginx: config/nginx/media.conf's accel location.

gunicorn serves a file store with accel on; nginx (the compose front door, rendered for loopback
as in test_nginx_front_door.py, its alias pointed at the server's blob root) sends the bytes.
Every answer is compared with what the service itself answers with offloading off: the same
bytes, the same status and Content-Range, the same headers, each once, and the same counts.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from realservers.gunicorn_server import GunicornServer
from tests.integration.conftest import (
    StartServer,
    create_account,
    http_session,
    payload,
    upload,
)
from tests.integration.test_nginx_front_door import NGINX, FrontDoor, start_nginx

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.nginx,
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make backends installs it)"),
]

CONTENT = payload(5 * 1024 * 1024 + 333, seed=14)  # several sendfile rounds, an odd tail
FILENAME = 'Señal "1".wav'
MIME = "audio/wav"
# The service's headers that nginx must pass on unchanged (besides the ones it computes itself).
SERVICE_HEADERS = (
    "Content-Type",
    "Content-Disposition",
    "ETag",
    "Last-Modified",
    "Cache-Control",
    "Vary",
    "Accept-Ranges",
    "X-Content-Type-Options",
    "Content-Security-Policy",
)


@pytest.fixture(scope="module")
def servers(module_live_server: StartServer) -> tuple[GunicornServer, GunicornServer]:
    """(accel, plain): the same kind of server with offloading on and off."""
    accel = module_live_server(
        workers=1,
        threads=4,
        env={"MEDIA_TRUSTED_PROXIES": "1", "MEDIA_DOWNLOAD_REDIRECT": "accel"},
    )
    plain = module_live_server(workers=1, threads=4)
    return accel, plain


@pytest.fixture(scope="module")
def door(
    servers: tuple[GunicornServer, GunicornServer], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[FrontDoor]:
    accel, _ = servers
    blob_root = (accel.data_dir / "blobs").resolve()
    front = start_nginx(
        tmp_path_factory.mktemp("nginx-accel"),
        accel.port,
        {"alias /data/blobs/;": f"alias {blob_root}/;"},
    )
    try:
        yield front
    finally:
        front.stop()


@pytest.fixture(scope="module")
def items(servers: tuple[GunicornServer, GunicornServer]) -> dict[str, Any]:
    """One public item with a download limit of 3 on each server, the same bytes and name."""
    made: dict[str, Any] = {}
    with http_session() as http:
        for name, server in zip(("accel", "plain"), servers, strict=True):
            auth = create_account(server)
            created = upload(
                http,
                server,
                CONTENT,
                auth=auth,
                filename=FILENAME,
                content_type=MIME,
                public="true",
                max_downloads_allowed="3",
            )
            assert created.status_code == 201, created.text
            made[name] = {"id": created.json()["id"], "auth": auth, "server": server}
    return made


def _get(url: str, headers: dict[str, str] | None = None) -> requests.Response:
    with http_session() as http:
        return http.get(url, headers=headers or {}, timeout=30)


def _times_downloaded(item: dict[str, Any]) -> int:
    server: GunicornServer = item["server"]
    info = _get(f"{server.url}/v3/media/{item['id']}/info", _basic(item["auth"]))
    assert info.status_code == 200
    return int(info.json()["times_downloaded"])


def _basic(auth: tuple[str, str]) -> dict[str, str]:
    return {"Authorization": requests.auth._basic_auth_str(*auth)}


def _comparable(answer: requests.Response) -> dict[str, list[str]]:
    # urllib3 keeps repeated fields apart: each header must come exactly once.
    raw = answer.raw.headers
    return {name: raw.getlist(name) for name in SERVICE_HEADERS}


@pytest.mark.parametrize(
    ("headers", "status", "start", "end"),
    [
        ({}, 200, 0, len(CONTENT)),
        ({"Range": "bytes=0-99"}, 206, 0, 100),
        ({"Range": "bytes=1048570-"}, 206, 1048570, len(CONTENT)),
        ({"Range": "bytes=-1000"}, 206, len(CONTENT) - 1000, len(CONTENT)),
    ],
)
def test_nginx_sends_what_the_service_would(
    door: FrontDoor,
    items: dict[str, Any],
    headers: dict[str, str],
    status: int,
    start: int,
    end: int,
) -> None:
    accel, plain = items["accel"], items["plain"]
    owner = _basic(accel["auth"])  # the owner: never limited, always counted
    before = _times_downloaded(accel)
    got = _get(f"{door.url}/v3/media/{accel['id']}", {**owner, **headers, "X-Request-Id": "a-1"})
    assert got.status_code == status, (got.text[:300], door.error_log())
    assert got.content == CONTENT[start:end]
    assert got.headers["Content-Length"] == str(end - start)
    assert got.headers["X-Request-Id"] == "a-1"
    if status == 206:
        assert got.headers["Content-Range"] == f"bytes {start}-{end - 1}/{len(CONTENT)}"
    assert "X-Accel-Redirect" not in got.headers

    reference = _get(
        f"{plain['server'].url}/v3/media/{plain['id']}", {**_basic(plain["auth"]), **headers}
    )
    assert reference.status_code == status
    ours, theirs = _comparable(got), _comparable(reference)
    for name in ("ETag", "Last-Modified"):  # validators of another upload: same shape, once
        assert len(ours.pop(name)) == len(theirs.pop(name)) == 1, name
    assert ours == theirs
    direct = _get(f"{accel['server'].url}/v3/media/{accel['id']}", {**owner, "Range": "bytes=0-0"})
    assert got.headers["ETag"] == direct.headers["ETag"]
    assert got.headers["Last-Modified"] == direct.headers["Last-Modified"]
    counted = start == 0
    assert _times_downloaded(accel) == before + int(counted) + 1  # + the direct bytes=0-0


def test_a_limited_item_is_counted_once_per_download_through_nginx(
    door: FrontDoor, servers: tuple[GunicornServer, GunicornServer]
) -> None:
    accel, _ = servers
    auth = create_account(accel)
    with http_session() as http:
        created = upload(
            http, accel, b"limited bytes", auth=auth, public="true", max_downloads_allowed="2"
        )
    item = {"id": created.json()["id"], "auth": auth, "server": accel}
    for count in (1, 2):
        got = _get(f"{door.url}/v3/media/{item['id']}")
        assert got.status_code == 200
        assert got.content == b"limited bytes"
        assert _times_downloaded(item) == count
    refused = _get(f"{door.url}/v3/media/{item['id']}")
    assert refused.status_code == 403
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert _times_downloaded(item) == 2


def test_preconditions_stay_the_services(door: FrontDoor, items: dict[str, Any]) -> None:
    accel = items["accel"]
    owner = _basic(accel["auth"])
    url = f"{door.url}/v3/media/{accel['id']}"
    etag = _get(url, {**owner, "Range": "bytes=0-0"}).headers["ETag"]
    before = _times_downloaded(accel)
    assert _get(url, {**owner, "If-None-Match": etag}).status_code == 304
    # Handed to nginx after the service found them false: nginx must not answer 304 itself.
    other = _get(url, {**owner, "If-None-Match": '"other"', "Range": "bytes=0-9"})
    assert other.status_code == 206 and other.content == CONTENT[:10]
    old_date = {"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT", "Range": "bytes=0-9"}
    modified = _get(url, {**owner, **old_date})
    assert modified.status_code == 206 and modified.content == CONTENT[:10]
    # nginx would compare these with its own validators: the service streams them itself.
    matched = _get(url, {**owner, "If-Match": etag})
    assert matched.status_code == 200 and matched.content == CONTENT
    ranged = _get(url, {**owner, "Range": "bytes=10-19", "If-Range": etag})
    assert ranged.status_code == 206 and ranged.content == CONTENT[10:20]
    stale = _get(url, {**owner, "Range": "bytes=10-19", "If-Range": '"other"'})
    assert stale.status_code == 200 and stale.content == CONTENT
    several = _get(url, {**owner, "Range": "bytes=10-19,15-29"})
    assert several.status_code == 206 and several.content == CONTENT[10:30]
    # The two ranges from byte 0, If-Match's 200 and the stale If-Range's 200.
    assert _times_downloaded(accel) == before + 4
    unsatisfiable = _get(url, {**owner, "Range": f"bytes={len(CONTENT)}-"})
    assert unsatisfiable.status_code == 416


def test_the_accel_location_is_not_reachable_from_outside(
    door: FrontDoor, items: dict[str, Any]
) -> None:
    item_id = items["accel"]["id"]
    for path in (f"/_media_accel/{item_id[:2]}/{item_id}", "/_media_accel/", "/_media_accel"):
        got = _get(f"{door.url}{path}")
        assert got.status_code == 404, path
        assert got.headers["Content-Type"] == "application/problem+json", path
        assert got.content != CONTENT


def test_the_service_itself_sends_no_bytes(
    servers: tuple[GunicornServer, GunicornServer], items: Any
) -> None:
    accel = items["accel"]
    got = _get(f"{accel['server'].url}/v3/media/{accel['id']}", _basic(accel["auth"]))
    assert got.status_code == 200
    assert got.content == b""
    item_id = accel["id"]
    assert got.headers["X-Accel-Redirect"] == f"/_media_accel/{item_id[:2]}/{item_id}"
    assert Path(accel["server"].data_dir, "blobs", item_id[:2], item_id).read_bytes() == CONTENT
