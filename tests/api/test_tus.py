"""tus 1.0.0 at /v3/media/uploads through the Flask test client, on every backend pair."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from media_service.api.tus import EXTENSION_KEY
from media_service.service.resumable import ResumableService
from media_service.storage.interfaces import Backends
from tests.conftest import Credentials
from tests.problems import assert_problem

TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = "application/offset+octet-stream"
WAV = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 40


def meta(**values: str) -> str:
    return ",".join(f"{k} {base64.b64encode(v.encode()).decode()}" for k, v in values.items())


def headers(creds: Credentials, **extra: str) -> dict[str, str]:
    return {**creds.basic, **TUS, **extra}


def create(client: FlaskClient, creds: Credentials, length: int, **metadata: str) -> str:
    response = client.post(
        "/v3/media/uploads",
        headers=headers(
            creds, **{"Upload-Length": str(length), "Upload-Metadata": meta(**metadata)}
        ),
    )
    assert response.status_code == 201, response.get_data(as_text=True)
    location = response.headers["Location"]
    assert location.startswith("http://localhost/v3/media/uploads/")
    return location.removeprefix("http://localhost")


def patch(
    client: FlaskClient, creds: Credentials, path: str, offset: int, body: bytes, **extra: str
) -> Any:
    return client.patch(
        path,
        data=body,
        headers=headers(creds, **{"Upload-Offset": str(offset), "Content-Type": OCTETS, **extra}),
    )


def send_all(client: FlaskClient, creds: Credentials, path: str, data: bytes, chunk: int) -> Any:
    response = None
    for offset in range(0, len(data), chunk):
        response = patch(client, creds, path, offset, data[offset : offset + chunk])
        assert response.status_code == 204, response.get_data(as_text=True)
        assert response.headers["Upload-Offset"] == str(min(offset + chunk, len(data)))
        assert response.headers["Tus-Resumable"] == "1.0.0"
    return response


def service(app: Flask) -> ResumableService:
    resumable: ResumableService = app.extensions[EXTENSION_KEY]
    return resumable


def test_options_advertises_the_protocol(client: FlaskClient, app: Flask) -> None:
    response = client.options("/v3/media/uploads")
    assert response.status_code == 204
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert response.headers["Tus-Version"] == "1.0.0"
    assert set(response.headers["Tus-Extension"].split(",")) == {
        "creation",
        "termination",
        "expiration",
        "checksum",
    }
    assert set(response.headers["Tus-Checksum-Algorithm"].split(",")) == {"md5", "sha1", "sha256"}
    assert response.headers["Tus-Max-Size"] == str(8 * 1024 * 1024)


@pytest.mark.parametrize("version", [None, "0.2.2"])
def test_a_request_without_tus_resumable_is_412(
    client: FlaskClient, owner: Credentials, version: str | None
) -> None:
    sent = {**owner.basic, "Upload-Length": "10"}
    if version:
        sent["Tus-Resumable"] = version
    response = client.post("/v3/media/uploads", headers=sent)
    assert response.status_code == 412
    assert response.mimetype == "application/problem+json"
    assert response.headers["Tus-Version"] == "1.0.0"
    assert response.headers["Tus-Resumable"] == "1.0.0"


@pytest.mark.parametrize("chunk", [1, 1000, 4096, len(WAV)])
def test_chunks_make_the_same_item_as_a_multipart_upload(
    client: FlaskClient, owner: Credentials, upload: Any, chunk: int
) -> None:
    data = WAV[:600] if chunk == 1 else WAV
    path = create(client, owner, len(data), filename="song.wav", title="A song", public="true")
    head = client.head(path, headers=headers(owner))
    assert head.status_code == 200
    assert head.headers["Upload-Offset"] == "0"
    assert head.headers["Upload-Length"] == str(len(data))
    assert head.headers["Cache-Control"] == "no-store"
    assert "Upload-Expires" in head.headers

    last = send_all(client, owner, path, data, chunk)
    media_location = last.headers["Media-Location"]
    assert media_location.startswith("http://localhost/v3/media/")
    info = client.get(media_location.removeprefix("http://localhost"), headers=owner.basic)
    assert info.status_code == 200
    item = info.get_json()
    assert item["etag"] == hashlib.md5(data).hexdigest()
    assert json.loads(item["store_meta_params"]) == {
        "filesize": str(len(data)),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    assert item["media_size"] == len(data)
    assert item["original_file_name"] == "song.wav"
    multipart = upload(
        owner.basic, data, filename="song.wav", content_type="application/octet-stream"
    ).get_json()
    assert item["mime_type"] == multipart["mime_type"]  # sniffed, as for multipart
    assert item["audio"] == multipart["audio"]
    assert item["title"] == "A song"
    assert item["public"] is True
    assert item["application_id"] is None
    content = client.get(f"/v3/media/{item['id']}", headers=owner.basic)
    assert content.get_data() == data

    again = client.head(path, headers=headers(owner))
    assert again.headers["Upload-Offset"] == str(len(data))
    assert again.headers["Media-Location"] == media_location


def test_a_jwt_upload_belongs_to_its_application(
    client: FlaskClient, owner: Credentials, sibling: Credentials, stranger: Credentials
) -> None:
    token = {**owner.bearer(), **TUS}
    response = client.post(
        "/v3/media/uploads", headers={**token, "Upload-Length": "5", "Upload-Metadata": ""}
    )
    assert response.status_code == 201
    path = response.headers["Location"].removeprefix("http://localhost")
    assert client.head(path, headers={**sibling.bearer(), **TUS}).status_code == 403
    assert client.head(path, headers={**stranger.bearer(), **TUS}).status_code == 404
    assert client.head(path, headers=headers(stranger)).status_code == 404
    assert client.head(path, headers=TUS).status_code == 401
    denied = client.patch(
        path,
        data=b"hello",
        headers={**sibling.bearer(), **TUS, "Upload-Offset": "0", "Content-Type": OCTETS},
    )
    assert denied.status_code == 403
    # Basic auth of the account may continue it; the item stays the application's.
    done = patch(client, owner, path, 0, b"hello")
    assert done.status_code == 204
    info = client.get(
        done.headers["Media-Location"].removeprefix("http://localhost"), headers=token
    )
    assert info.get_json()["application_id"] == "app-one"


def test_filetype_and_metadata_fields(client: FlaskClient, owner: Credentials) -> None:
    path = create(
        client,
        owner,
        4,
        filename="notes.bin",
        filetype="text/plain",
        max_downloads_allowed="3",
        metadata_secondary='{"a": 1}',
        relativePath="ignored/by/the/server",
    )
    done = patch(client, owner, path, 0, b"abcd")
    item = client.get(
        done.headers["Media-Location"].removeprefix("http://localhost"), headers=owner.basic
    ).get_json()
    assert item["mime_type"] == "text/plain"
    assert item["max_downloads_allowed"] == 3
    assert item["metadata_secondary"] == '{"a": 1}'


@pytest.mark.parametrize(
    ("header", "name"),
    [
        ("filename !!!notbase64", "filename"),
        (meta(max_downloads_allowed="-1"), "max_downloads_allowed"),
        (meta(public="maybe"), "public"),
        (meta(filename="a/b"), "filename"),
        (meta(filetype="not a type"), "filetype"),
        ("title " + base64.b64encode(b"\xff").decode(), "title"),
        (meta(title="x") + "," + meta(title="y"), "title"),
    ],
)
def test_invalid_metadata_is_400_naming_the_key(
    client: FlaskClient, owner: Credentials, header: str, name: str
) -> None:
    response = client.post(
        "/v3/media/uploads",
        headers=headers(owner, **{"Upload-Length": "3", "Upload-Metadata": header}),
    )
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"
    assert name in [p["name"] for p in response.get_json()["invalid_parameters"]]


@pytest.mark.parametrize("length", [None, "-1", "abc", "1e3"])
def test_invalid_upload_length_is_400(
    client: FlaskClient, owner: Credentials, length: str | None
) -> None:
    sent = headers(owner)
    if length is not None:
        sent["Upload-Length"] = length
    response = client.post("/v3/media/uploads", headers=sent)
    assert response.status_code == 400
    assert response.get_json()["invalid_parameters"][0]["name"] == "Upload-Length"


def test_too_large_is_413(client: FlaskClient, owner: Credentials) -> None:
    response = client.post(
        "/v3/media/uploads", headers=headers(owner, **{"Upload-Length": str(8 * 1024 * 1024 + 1)})
    )
    assert response.status_code == 413
    assert response.headers["Tus-Resumable"] == "1.0.0"


def test_patch_failures(client: FlaskClient, owner: Credentials) -> None:
    path = create(client, owner, 10)
    assert patch(client, owner, path, 0, b"abc").status_code == 204
    wrong_offset = patch(client, owner, path, 0, b"abc")
    assert wrong_offset.status_code == 409
    assert wrong_offset.mimetype == "application/problem+json"
    wrong_type = client.patch(
        path,
        data=b"def",
        headers=headers(owner, **{"Upload-Offset": "3", "Content-Type": "application/json"}),
    )
    assert wrong_type.status_code == 415
    no_offset = client.patch(path, data=b"def", headers=headers(owner, **{"Content-Type": OCTETS}))
    assert no_offset.status_code == 400
    past_length = patch(client, owner, path, 3, b"defghijklmnop")
    assert past_length.status_code == 413
    head = client.head(path, headers=headers(owner))
    assert head.headers["Upload-Offset"] == "3"
    assert patch(client, owner, path, 3, b"defghij").status_code == 204
    # Complete: more bytes conflict; an empty repeat of the last PATCH is answered again.
    assert patch(client, owner, path, 10, b"x").status_code == 409
    repeat = patch(client, owner, path, 10, b"")
    assert repeat.status_code == 204
    assert "Media-Location" in repeat.headers


def test_unknown_and_malformed_ids_are_404(client: FlaskClient, owner: Credentials) -> None:
    for path in ("/v3/media/uploads/nope", "/v3/media/uploads/" + "0" * 32):
        assert client.head(path, headers=headers(owner)).status_code == 404
        assert patch(client, owner, path, 0, b"x").status_code == 404
        assert client.delete(path, headers=headers(owner)).status_code == 404


def test_termination_removes_the_staged_bytes(
    app: Flask, client: FlaskClient, owner: Credentials
) -> None:
    path = create(client, owner, 100)
    assert patch(client, owner, path, 0, b"x" * 40).status_code == 204
    upload_id = path.rsplit("/", 1)[1]
    staging = service(app).staging
    assert upload_id in dict(staging.list_ids())
    response = client.delete(path, headers=headers(owner))
    assert response.status_code == 204
    assert response.headers["Tus-Resumable"] == "1.0.0"
    assert upload_id not in dict(staging.list_ids())
    assert client.head(path, headers=headers(owner)).status_code == 404
    assert client.delete(path, headers=headers(owner)).status_code == 404


def test_an_empty_upload_is_complete_at_once(client: FlaskClient, owner: Credentials) -> None:
    response = client.post(
        "/v3/media/uploads",
        headers=headers(owner, **{"Upload-Length": "0", "Upload-Metadata": meta(filename="e")}),
    )
    assert response.status_code == 201
    assert response.headers["Upload-Offset"] == "0"
    info = client.get(
        response.headers["Media-Location"].removeprefix("http://localhost"), headers=owner.basic
    ).get_json()
    assert info["media_size"] == 0
    assert info["etag"] == hashlib.md5(b"").hexdigest()


def test_an_expired_upload_is_410_and_swept(
    app: Flask, client: FlaskClient, owner: Credentials, backends: Backends
) -> None:
    from media_service.service.resumable_sweep import sweep_resumable

    path = create(client, owner, 100)
    assert patch(client, owner, path, 0, b"x" * 40).status_code == 204
    upload_id = path.rsplit("/", 1)[1]
    resumable = service(app)
    later = resumable.clock() + timedelta(days=2)
    resumable.clock = lambda: later
    assert client.head(path, headers=headers(owner)).status_code == 410
    assert patch(client, owner, path, 40, b"y").status_code == 410
    assert sweep_resumable(backends, now=later) == (1, 0)
    assert upload_id not in dict(resumable.staging.list_ids())
    assert resumable.uploads.get(upload_id) is None


def test_a_locked_upload_is_423(app: Flask, client: FlaskClient, owner: Credentials) -> None:
    path = create(client, owner, 10)
    upload_id = path.rsplit("/", 1)[1]
    resumable = service(app)
    now = resumable.clock()
    resumable.uploads.claim(upload_id, 0, "someone-else", now + timedelta(minutes=1), now)
    response = patch(client, owner, path, 0, b"abc")
    assert response.status_code == 423
    assert response.mimetype == "application/problem+json"
    assert client.delete(path, headers=headers(owner)).status_code == 423
    resumable.uploads.release(upload_id, "someone-else")
    assert patch(client, owner, path, 0, b"abc").status_code == 204


def test_a_dead_holders_lease_expires(app: Flask, client: FlaskClient, owner: Credentials) -> None:
    path = create(client, owner, 3)
    upload_id = path.rsplit("/", 1)[1]
    resumable = service(app)
    now = resumable.clock()
    resumable.uploads.claim(upload_id, 0, "dead-worker", now - timedelta(seconds=1), now)
    assert patch(client, owner, path, 0, b"abc").status_code == 204


class _Cut:
    """A body that fails after `after` bytes (a client that went away)."""

    def __init__(self, data: bytes, after: int) -> None:
        self._data = data
        self._after = after
        self._at = 0

    def read(self, size: int = -1, /) -> bytes:
        if self._at >= self._after:
            raise ConnectionResetError("client went away")
        end = min(self._at + (size if size >= 0 else len(self._data)), self._after)
        chunk = self._data[self._at : end]
        self._at = end
        return chunk


def test_a_cut_off_patch_keeps_what_arrived(
    app: Flask, client: FlaskClient, owner: Credentials
) -> None:
    size = 20 * 1024 * 1024
    resumable = service(app)
    resumable.settings = resumable.media.settings = resumable.settings.with_overrides(
        max_upload_bytes=size
    )
    data = bytes(range(256)) * (size // 256)
    path = create(client, owner, size)
    upload_id = path.rsplit("/", 1)[1]
    principal = _basic_principal(owner)
    cut_at = 9 * 1024 * 1024 + 12345  # past the first 8 MiB segment / fsync step
    with pytest.raises(ConnectionResetError):
        resumable.append(principal, upload_id, 0, _Cut(data, cut_at), size)
    head = client.head(path, headers=headers(owner))
    assert head.headers["Upload-Offset"] == str(cut_at)
    # Resume from HEAD's offset, in two more PATCHes, one across a segment boundary.
    middle = 17 * 1024 * 1024
    assert patch(client, owner, path, cut_at, data[cut_at:middle]).status_code == 204
    done = patch(client, owner, path, middle, data[middle:])
    assert done.status_code == 204
    item = client.get(
        done.headers["Media-Location"].removeprefix("http://localhost"), headers=owner.basic
    ).get_json()
    assert item["etag"] == hashlib.md5(data).hexdigest()
    assert upload_id not in dict(resumable.staging.list_ids())


def _basic_principal(creds: Credentials) -> Any:
    from media_service.auth import Principal

    return Principal(creds.api_key, None, "basic")


def test_the_sweeper_removes_staged_bytes_no_record_names(
    app: Flask, client: FlaskClient, owner: Credentials, backends: Backends
) -> None:
    from media_service.service.sweeper import sweep

    kept = create(client, owner, 100).rsplit("/", 1)[1]
    orphan = create(client, owner, 100).rsplit("/", 1)[1]
    for upload_id in (kept, orphan):
        path = f"/v3/media/uploads/{upload_id}"
        assert patch(client, owner, path, 0, b"z" * 10).status_code == 204
    resumable = service(app)
    resumable.uploads.remove(orphan)  # a termination that died after removing its record
    now = resumable.clock()
    grace = timedelta(hours=1)
    assert sweep(backends, now=now, grace=grace).resumable_removed == 0  # may still be writing
    report = sweep(backends, now=now + 2 * grace, grace=grace)
    assert report.resumable_removed == 1
    assert report.errors == 0
    assert set(dict(resumable.staging.list_ids())) == {kept}


def test_a_failing_store_is_503_and_the_upload_goes_on(
    app: Flask, client: FlaskClient, owner: Credentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    from media_service.storage.interfaces import BackendUnavailable

    path = create(client, owner, 6)
    assert patch(client, owner, path, 0, b"abc").status_code == 204
    staging = service(app).staging

    def broken(*args: Any, **kwargs: Any) -> int:
        raise BackendUnavailable("blob store", "down")

    monkeypatch.setattr(staging, "write", broken)
    failed = patch(client, owner, path, 3, b"def")
    assert failed.status_code == 503
    assert failed.mimetype == "application/problem+json"
    assert failed.headers["Tus-Resumable"] == "1.0.0"
    monkeypatch.undo()
    assert client.head(path, headers=headers(owner)).headers["Upload-Offset"] == "3"
    done = patch(client, owner, path, 3, b"def")  # the lease was released
    assert done.status_code == 204
    assert "Media-Location" in done.headers


def test_a_failing_publish_leaves_the_upload_one_patch_short(
    app: Flask, client: FlaskClient, owner: Credentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    from media_service.storage.interfaces import BackendUnavailable

    path = create(client, owner, 6)
    assert patch(client, owner, path, 0, b"abc").status_code == 204
    media = service(app).media

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise BackendUnavailable("database", "down")

    monkeypatch.setattr(media, "publish_upload", broken)
    assert patch(client, owner, path, 3, b"def").status_code == 503
    monkeypatch.undo()
    assert client.head(path, headers=headers(owner)).headers["Upload-Offset"] == "3"
    done = patch(client, owner, path, 3, b"def")
    assert done.status_code == 204
    item = client.get(
        done.headers["Media-Location"].removeprefix("http://localhost"), headers=owner.basic
    ).get_json()
    assert item["etag"] == hashlib.md5(b"abcdef").hexdigest()


def checksum(algorithm: str, body: bytes) -> str:
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, body).digest()).decode()}"


@pytest.mark.parametrize("algorithm", ["md5", "sha1", "sha256"])
def test_checksums_are_verified_before_the_offset_moves(
    client: FlaskClient, owner: Credentials, algorithm: str
) -> None:
    path = create(client, owner, 10)
    good = patch(
        client, owner, path, 0, b"abcd", **{"Upload-Checksum": checksum(algorithm, b"abcd")}
    )
    assert good.status_code == 204
    assert good.headers["Upload-Offset"] == "4"
    bad = patch(
        client, owner, path, 4, b"efgh", **{"Upload-Checksum": checksum(algorithm, b"xxxx")}
    )
    assert bad.status_code == 460
    assert bad.mimetype == "application/problem+json"
    assert bad.headers["Tus-Resumable"] == "1.0.0"
    assert client.head(path, headers=headers(owner)).headers["Upload-Offset"] == "4"
    last = patch(
        client, owner, path, 4, b"efghij", **{"Upload-Checksum": checksum(algorithm, b"efghij")}
    )
    assert last.status_code == 204
    item = client.get(
        last.headers["Media-Location"].removeprefix("http://localhost"), headers=owner.basic
    ).get_json()
    assert item["etag"] == hashlib.md5(b"abcdefghij").hexdigest()


def test_a_wrong_checksum_on_the_last_patch_publishes_nothing(
    client: FlaskClient, owner: Credentials
) -> None:
    path = create(client, owner, 3)
    bad = patch(client, owner, path, 0, b"abc", **{"Upload-Checksum": checksum("sha1", b"abd")})
    assert bad.status_code == 460
    head = client.head(path, headers=headers(owner))
    assert head.headers["Upload-Offset"] == "0"
    assert "Media-Location" not in head.headers


@pytest.mark.parametrize(
    "value", ["crc32 AAAA", "sha1", "sha1 !!!", "sha1 " + base64.b64encode(b"short").decode()]
)
def test_a_malformed_checksum_is_400(client: FlaskClient, owner: Credentials, value: str) -> None:
    path = create(client, owner, 3)
    response = patch(client, owner, path, 0, b"abc", **{"Upload-Checksum": value})
    assert response.status_code == 400
    assert response.get_json()["invalid_parameters"][0]["name"] == "Upload-Checksum"


# --------------------------------------------------------------------------- lifecycle


def test_ttl_metadata_gives_the_item_its_expiry(client: FlaskClient, owner: Credentials) -> None:
    before = datetime.now(UTC)
    path = create(client, owner, len(WAV), filename="prompt.wav", ttl="3600")
    last = send_all(client, owner, path, WAV, 4096)
    item = client.get(
        last.headers["Media-Location"].removeprefix("http://localhost"), headers=owner.basic
    ).get_json()
    expires = datetime.fromisoformat(item["expires_at"].replace("Z", "+00:00"))
    assert (
        before + timedelta(seconds=3600) <= expires <= datetime.now(UTC) + timedelta(seconds=3600)
    )


def test_both_expiry_fields_are_400_naming_them(client: FlaskClient, owner: Credentials) -> None:
    response = client.post(
        "/v3/media/uploads",
        headers=headers(
            owner,
            **{
                "Upload-Length": "10",
                "Upload-Metadata": meta(ttl="60", expires_at="2999-01-01T00:00:00Z"),
            },
        ),
    )
    assert_problem(response, 400, ["ttl", "expires_at"])


def test_the_account_quota_applies_to_resumable_uploads(
    client: FlaskClient, owner: Credentials, backends: Backends
) -> None:
    backends.media.set_quota(owner.api_key, len(WAV) - 1, None)
    path = create(client, owner, len(WAV), filename="too-big.wav")
    last = patch(client, owner, path, 0, WAV)
    body = assert_problem(last, 403)
    assert body["type"].endswith("quota-exceeded")
    found = client.get("/v3/media", headers=owner.basic).get_json()
    assert found["count"] == 0
    assert backends.media.quota(owner.api_key).bytes == 0
