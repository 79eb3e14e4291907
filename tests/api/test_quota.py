"""Account quotas through the API, on every backend pair: refusals, room given back, scope."""

from __future__ import annotations

import os
from datetime import timedelta

from flask.testing import FlaskClient

from media_service.service.media import utc_now
from media_service.service.sweeper import sweep
from media_service.storage.interfaces import Backends, ItemState, Quota
from tests.api.media_api_support import assert_nothing_left
from tests.conftest import Credentials, Uploader
from tests.problems import assert_problem

KIB = 1024
MIB = 1024 * KIB


def usage(backends: Backends, credentials: Credentials) -> Quota:
    return backends.media.quota(credentials.api_key)


def stored_bytes(backends: Backends, credentials: Credentials) -> int:
    return sum(row.bytes for row in backends.media.usage(credentials.api_key))


def assert_refused(response: object) -> dict:
    body = assert_problem(response, 403)
    assert body["type"].endswith("quota-exceeded")
    return body


def test_usage_counts_every_upload_and_delete_gives_room_back(
    backends: Backends, owner: Credentials, upload: Uploader, client: FlaskClient
) -> None:
    sizes = [3, 5000, 123_457]
    ids = []
    for size in sizes:
        response = upload(owner.basic, os.urandom(size), filename="f.bin")
        assert response.status_code == 201
        ids.append(response.get_json()["id"])
    quota = usage(backends, owner)
    assert (quota.bytes, quota.items) == (sum(sizes), 3)
    assert quota.bytes == stored_bytes(backends, owner)

    assert client.delete(f"/v3/media/{ids[1]}", headers=owner.basic).status_code == 204
    assert client.delete(f"/v3/media/{ids[1]}", headers=owner.basic).status_code == 404
    quota = usage(backends, owner)
    assert (quota.bytes, quota.items) == (sizes[0] + sizes[2], 2)


def test_upload_past_max_bytes_is_refused_and_leaves_nothing(
    backends: Backends, owner: Credentials, upload: Uploader, client: FlaskClient
) -> None:
    backends.media.set_quota(owner.api_key, 10 * KIB, None)
    assert upload(owner.basic, b"x" * (6 * KIB)).status_code == 201
    response = upload(owner.basic, b"y" * (5 * KIB))
    body = assert_refused(response)
    # The detail gives the usage and the limit.
    assert str(10 * KIB) in body["detail"] and str(6 * KIB) in body["detail"]
    quota = usage(backends, owner)
    assert (quota.bytes, quota.items) == (6 * KIB, 1)
    assert list(backends.media.iter_hidden(utc_now() + timedelta(days=1))) == []
    assert len(list(backends.blobs.list_blobs())) == 1

    # Exactly up to the limit is allowed.
    assert upload(owner.basic, b"z" * (4 * KIB)).status_code == 201
    assert usage(backends, owner).bytes == 10 * KIB
    assert_refused(upload(owner.basic, b"!"))


def test_a_large_upload_is_stopped_when_it_passes_the_limit(
    backends: Backends, owner: Credentials, upload: Uploader, client: FlaskClient
) -> None:
    """Several MiB: reserved chunk by chunk, refused at the chunk that passes, rolled back."""
    backends.media.set_quota(owner.api_key, 2 * MIB + 5, None)
    assert_refused(upload(owner.basic, os.urandom(3 * MIB)))
    assert_nothing_left(client, backends, owner.basic)
    assert usage(backends, owner) == Quota(owner.api_key, 2 * MIB + 5, 0, 0, 0)


class StreamedBody:
    """A multipart body of `size` file bytes read on demand, counting what the server took."""

    def __init__(self, size: int) -> None:
        self.head = (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="filedata"; filename="a.bin"'
            "\r\nContent-Type: application/octet-stream\r\n\r\n"
        ).encode()
        self.tail = f"\r\n--{BOUNDARY}--\r\n".encode()
        self.left = size
        self.consumed = 0

    def read(self, size: int = -1) -> bytes:
        size = 64 * KIB if size is None or size < 0 else size
        if self.head:
            chunk, self.head = self.head[:size], self.head[size:]
        elif self.left:
            chunk = b"q" * min(size, self.left)
            self.left -= len(chunk)
        else:
            chunk, self.tail = self.tail[:size], self.tail[size:]
        self.consumed += len(chunk)
        return chunk


BOUNDARY = "quota-boundary"


def test_unknown_length_upload_is_refused_while_streaming(
    backends: Backends, owner: Credentials, client: FlaskClient
) -> None:
    backends.media.set_quota(owner.api_key, MIB, None)
    body = StreamedBody(40 * MIB)
    response = client.post(
        "/v3/media",
        headers={**owner.basic, "Transfer-Encoding": "chunked"},
        environ_overrides={
            "wsgi.input": body,
            "wsgi.input_terminated": True,  # what gunicorn sets for a chunked body
            "CONTENT_TYPE": f"multipart/form-data; boundary={BOUNDARY}",
        },
    )
    assert_refused(response)
    assert body.consumed < 4 * MIB  # stopped at the chunk that passed, not at the end
    assert_nothing_left(client, backends, owner.basic)
    assert usage(backends, owner) == Quota(owner.api_key, MIB, 0, 0, 0)


def test_max_items(
    backends: Backends, owner: Credentials, upload: Uploader, client: FlaskClient
) -> None:
    backends.media.set_quota(owner.api_key, None, 2)
    first = upload(owner.basic, b"1").get_json()["id"]
    assert upload(owner.bearer(), b"2").status_code == 201
    body = assert_refused(upload(owner.basic, b"3"))
    assert "2 items" in body["detail"]
    assert usage(backends, owner).items == 2
    assert client.delete(f"/v3/media/{first}", headers=owner.basic).status_code == 204
    assert upload(owner.basic, b"3").status_code == 201


def test_quota_covers_every_application_of_the_account(
    backends: Backends,
    owner: Credentials,
    sibling: Credentials,
    stranger: Credentials,
    upload: Uploader,
) -> None:
    backends.media.set_quota(owner.api_key, 100, None)
    assert upload(owner.bearer(), b"a" * 60).status_code == 201
    assert_refused(upload(sibling.bearer(), b"b" * 60))
    assert_refused(upload(owner.basic, b"c" * 41))
    assert upload(sibling.bearer(), b"d" * 40).status_code == 201
    # Another account is not touched by it.
    assert upload(stranger.basic, b"e" * 1000).status_code == 201
    assert usage(backends, owner).bytes == 100
    assert usage(backends, stranger).bytes == 1000


def test_lowering_a_limit_below_usage_refuses_new_uploads_only(
    backends: Backends, owner: Credentials, upload: Uploader, client: FlaskClient
) -> None:
    item = upload(owner.basic, b"k" * 500).get_json()["id"]
    quota = backends.media.set_quota(owner.api_key, 100, None)
    assert (quota.max_bytes, quota.bytes) == (100, 500)
    assert_refused(upload(owner.basic, b"m"))
    assert client.get(f"/v3/media/{item}", headers=owner.basic).status_code == 200
    backends.media.set_quota(owner.api_key, 0, None)  # 0: unlimited again
    assert upload(owner.basic, b"m" * 10_000).status_code == 201
    assert usage(backends, owner).bytes == 10_500


def test_sweeper_gives_back_what_dead_uploads_and_deletes_held(
    backends: Backends, owner: Credentials, upload: Uploader, client: FlaskClient
) -> None:
    kept = upload(owner.basic, b"r" * 300).get_json()["id"]
    gone = upload(owner.basic, b"s" * 700).get_json()["id"]
    # A delete that died after its tombstone, and an upload that died mid-stream.
    assert backends.media.mark_deleting(gone) is not None
    dead = backends.media.get(kept, include_hidden=True)
    assert dead is not None
    pending = dead.__class__(
        **{
            **{name: getattr(dead, name) for name in dead.__slots__},  # type: ignore[attr-defined]
            "id": "00000000-0000-4000-8000-00000000dead",
            "state": ItemState.PENDING,
        }
    )
    backends.media.insert(pending)
    assert backends.media.reserve_item(owner.api_key, pending.id).value == "reserved"
    assert backends.media.reserve_bytes(owner.api_key, pending.id, 4000).value == "reserved"
    assert usage(backends, owner).bytes == 5000 and usage(backends, owner).items == 3

    future = utc_now() + timedelta(hours=2)
    report = sweep(backends, now=future, grace=timedelta(minutes=5))
    assert report.deletes_finished == 1 and report.pending_rolled_back == 1
    assert usage(backends, owner) == Quota(owner.api_key, 0, 0, 300, 1)
    sweep(backends, now=future, grace=timedelta(minutes=5))  # idempotent
    assert usage(backends, owner) == Quota(owner.api_key, 0, 0, 300, 1)
    assert usage(backends, owner).bytes == stored_bytes(backends, owner)
