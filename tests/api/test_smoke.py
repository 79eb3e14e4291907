"""The whole API once, over both backend pairs: upload, info, search, download, update, delete."""

from __future__ import annotations

from tests.conftest import Credentials, Uploader


def test_round_trip(client, owner: Credentials, upload: Uploader) -> None:
    created = upload(owner.bearer(), b"some audio bytes", info='{"k": 1}')
    assert created.status_code == 201, created.get_json()
    item = created.get_json()
    assert created.headers["Location"].endswith(f"/v3/media/{item['id']}/info")
    assert item["media_size"] == 16
    assert item["application_id"] == "app-one"
    assert item["metadata_primary"] == '{"k": 1}'
    assert item["public"] is False and item["public_item"] is False

    info = client.get(f"/v3/media/{item['id']}/info", headers=owner.basic)
    assert info.status_code == 200
    assert info.get_json() == item

    found = client.get("/v3/media", headers=owner.bearer())
    assert found.status_code == 200
    body = found.get_json()
    assert body["count"] == 1 and body["_embedded"]["media"][0]["id"] == item["id"]

    got = client.get(f"/v3/media/{item['id']}", headers=owner.basic)
    assert got.status_code == 200 and got.data == b"some audio bytes"
    assert got.headers["ETag"] == f'"{item["etag"]}"'

    updated = client.put(f"/v3/media/{item['id']}", json={"title": "T"}, headers=owner.basic)
    assert updated.status_code == 204

    deleted = client.delete(f"/v3/media/{item['id']}", headers=owner.basic)
    assert deleted.status_code == 204
    assert client.delete(f"/v3/media/{item['id']}", headers=owner.basic).status_code == 404
