"""Public items are readable whatever credentials a caller sends; only owners skip the limit."""

from __future__ import annotations

from tests.conftest import Credentials, Uploader


def _public_item(client, owner: Credentials, upload: Uploader, limit: int) -> str:
    """A public item uploaded by the owner's application (so its JWT owns it too)."""
    created = upload(owner.bearer(), b"x" * 10, public="true", max_downloads_allowed=str(limit))
    assert created.status_code == 201
    return created.get_json()["id"]


def test_other_account_credentials_read_public_item_within_the_limit(
    client, owner: Credentials, stranger: Credentials, upload: Uploader
) -> None:
    item_id = _public_item(client, owner, upload, limit=2)
    assert client.get(f"/v3/media/{item_id}", headers=stranger.basic).status_code == 200
    assert client.get(f"/v3/media/{item_id}", headers=stranger.bearer()).status_code == 200
    refused = client.get(f"/v3/media/{item_id}", headers=stranger.basic)
    assert refused.status_code == 403
    assert refused.mimetype == "application/problem+json"
    # The owner is never limited, and is counted.
    assert client.get(f"/v3/media/{item_id}", headers=owner.basic).status_code == 200
    info = client.get(f"/v3/media/{item_id}/info", headers=owner.basic).get_json()
    assert info["times_downloaded"] == 3


def test_sibling_application_is_limited_like_anyone_on_a_public_item(
    client, owner: Credentials, sibling: Credentials, upload: Uploader
) -> None:
    item_id = _public_item(client, owner, upload, limit=1)
    assert client.get(f"/v3/media/{item_id}", headers=sibling.bearer()).status_code == 200
    assert client.get(f"/v3/media/{item_id}", headers=sibling.bearer()).status_code == 403
    # The uploading application and Basic auth of the account are owners.
    assert client.get(f"/v3/media/{item_id}", headers=owner.bearer()).status_code == 200
    assert client.get(f"/v3/media/{item_id}", headers=owner.basic).status_code == 200


def test_private_item_still_needs_the_owner(
    client, owner: Credentials, sibling: Credentials, stranger: Credentials, upload: Uploader
) -> None:
    created = upload(owner.bearer(), b"secret")
    item_id = created.get_json()["id"]
    assert client.get(f"/v3/media/{item_id}").status_code == 401
    assert client.get(f"/v3/media/{item_id}", headers=stranger.basic).status_code == 404
    assert client.get(f"/v3/media/{item_id}", headers=sibling.bearer()).status_code == 403
    assert client.get(f"/v3/media/{item_id}", headers=owner.basic).status_code == 200
