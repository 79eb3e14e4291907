"""bench/floor_app.py does the work it stands for: a floor that answered errors would be no floor.

`make bench` (items 5 and 7) compares the service with this app; its requests must succeed with
the headers, counts and bytes the service's own answers have, and refuse a wrong secret.
"""

from __future__ import annotations

import base64
import threading
from pathlib import Path

import pytest

from bench import floor_app


@pytest.fixture()
def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(floor_app, "db_path", str(tmp_path / "floor.db"))
    monkeypatch.setattr(floor_app, "blob_path", str(tmp_path / "floor-blob"))
    monkeypatch.setattr(floor_app, "_local", threading.local())  # no connection to another db
    return floor_app.app.test_client()


def _auth(secret: str = floor_app.API_SECRET) -> dict[str, str]:
    pair = f"{floor_app.API_KEY}:{secret}".encode()
    return {"Authorization": "Basic " + base64.b64encode(pair).decode()}


def test_info_and_counted_download_answer_like_the_service(client) -> None:
    info = client.get(f"/floor/info/{floor_app.ITEM_ID}", headers=_auth())
    assert info.status_code == 200
    assert info.get_json()["id"] == floor_app.ITEM_ID
    assert info.get_json()["times_downloaded"] == 0
    assert len(info.headers["X-Request-Id"]) == 32

    download = client.get(f"/floor/download/{floor_app.ITEM_ID}", headers=_auth())
    assert download.status_code == 200
    assert download.data == floor_app.BLOB_BYTES
    for name in ("ETag", "Last-Modified", "Cache-Control", "Content-Disposition", "X-Request-Id"):
        assert download.headers.get(name), name
    assert download.headers["Accept-Ranges"] == "bytes"
    assert download.headers["Content-Security-Policy"] == "sandbox; default-src 'none'"
    after = client.get(f"/floor/info/{floor_app.ITEM_ID}", headers=_auth()).get_json()
    assert after["times_downloaded"] == 1


def test_a_wrong_secret_or_unknown_item_is_refused(client) -> None:
    wrong = client.get(f"/floor/info/{floor_app.ITEM_ID}", headers=_auth("not-the-secret"))
    assert wrong.status_code == 401
    missing = client.get("/floor/download/00000000-0000-4000-8000-00000000dead", headers=_auth())
    assert missing.status_code == 404


def test_healthz_answers_with_a_request_id(client) -> None:
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok"}
    assert response.headers["X-Request-Id"]


def test_the_bench_endpoints_all_answer_200(client) -> None:
    for name, (url, headers) in floor_app.endpoints("http://floor.test").items():
        response = client.get(url.removeprefix("http://floor.test"), headers=headers)
        assert response.status_code == 200, name
