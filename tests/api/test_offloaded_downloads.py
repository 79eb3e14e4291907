"""Offloaded downloads (MEDIA_DOWNLOAD_REDIRECT): 302 to presigned S3 URLs, X-Accel-Redirect.

Presigned: over moto (in-process; it also answers the presigned URL, through `requests`) and,
when configured, over the real pair (MinIO or Ceph RGW). The redirected URL is followed with a
plain HTTP client, as a browser would: no credentials, only the client's own Range re-sent.
Accel: over the SQLite + files pair with the Flask client; nginx itself is in
tests/integration/test_nginx_offload.py.
"""

from __future__ import annotations

import dataclasses
import io
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit, urlunsplit

import pytest
import requests
from flask.testing import FlaskClient

from media_service.api.content import ACCEL_LOCATION
from media_service.backends import open_backends
from media_service.factory import create_app
from media_service.settings import ConfigError, Settings
from media_service.storage.interfaces import Backends, BackendUnavailable
from media_service.storage.s3 import S3BlobStore
from tests import real_backends
from tests.conftest import Credentials, make_settings, mongomock_moto, provision
from tests.real_backends import REAL_PAIR

CONTENT = random.Random(14).randbytes(300_000)
MIME = "audio/wav"
FILENAME = "Señal (1).wav"


@dataclasses.dataclass
class Offload:
    client: FlaskClient
    backends: Backends
    owner: Credentials
    real: bool = False

    def upload(self, *, public: bool = True, limit: int = 0, content: bytes = CONTENT) -> str:
        data: dict[str, Any] = {
            "filedata": (io.BytesIO(content), FILENAME, MIME),
            "public": "true" if public else "false",
            "max_downloads_allowed": str(limit),
        }
        created = self.client.post(
            "/v3/media", data=data, headers=self.owner.basic, content_type="multipart/form-data"
        )
        assert created.status_code == 201, created.get_data(as_text=True)
        return str(created.json["id"])

    def times_downloaded(self, item_id: str) -> int:
        info = self.client.get(f"/v3/media/{item_id}/info", headers=self.owner.basic)
        assert info.status_code == 200
        return int(info.json["times_downloaded"])


def _follow(location: str, headers: dict[str, str] | None = None) -> requests.Response:
    with requests.Session() as http:
        http.trust_env = False  # no proxy, no .netrc: a plain client
        return http.get(location, headers=headers or {}, timeout=30, allow_redirects=False)


def _signer(endpoint: str | None) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3",
        region_name="us-east-1",
        endpoint_url=endpoint,
        config=Config(s3={"addressing_style": "path"}, signature_version="s3v4"),
    )


def _public_endpoint() -> str:
    """The real endpoint under another name (localhost for 127.0.0.1): what clients reach.

    Not on Ceph RGW: it reads a Host other than its rgw_dns_name as a virtual-hosted bucket's
    name, so there the URL names the endpoint as the service does (signed by the public client).
    """
    assert real_backends.S3_ENDPOINT
    parts = urlsplit(real_backends.S3_ENDPOINT)
    host = parts.hostname
    if host == "127.0.0.1" and not real_backends.S3_SERVER.startswith("ceph"):
        host = "localhost"
    return urlunsplit((parts.scheme, f"{host}:{parts.port}", "", "", ""))


@pytest.fixture(params=["mongomock-moto", *real_backends.real_pairs()])
def presigned(
    request: pytest.FixtureRequest, tmp_path: Path, rsa_keypair: tuple[str, str]
) -> Iterator[Offload]:
    real = request.param == REAL_PAIR
    settings = make_settings(
        tmp_path,
        storage_url="s3://media-test/items",
        download_redirect="presigned",
        download_redirect_ttl=90,
        s3_public_endpoint=_public_endpoint() if real else None,
    )
    if real:
        # Built as a deployment builds it: from_settings, with a signer for the public name.
        with real_backends.open_real_pair(settings) as backends:
            yield _offload(settings, backends, rsa_keypair, real=True)
        return
    with mongomock_moto(lambda: _signer(None), presign=True) as backends:
        yield _offload(settings, backends, rsa_keypair)


@pytest.fixture
def accel(tmp_path: Path, rsa_keypair: tuple[str, str]) -> Iterator[Offload]:
    settings = make_settings(tmp_path, download_redirect="accel")
    backends = open_backends(settings)
    try:
        yield _offload(settings, backends, rsa_keypair)
    finally:
        backends.close()


def _offload(
    settings: Settings, backends: Backends, keypair: tuple[str, str], real: bool = False
) -> Offload:
    app = create_app(settings, backends=backends)
    app.config["TESTING"] = True
    owner = provision(backends, keypair, api_key="acct0001", application_id="app-one")
    return Offload(app.test_client(), backends, owner, real)


# --- presigned ----------------------------------------------------------------------------------


def test_redirect_is_counted_once_per_302_and_delivers_the_bytes(presigned: Offload) -> None:
    item_id = presigned.upload(limit=2)
    proxied_headers = presigned.client.head(f"/v3/media/{item_id}").headers

    for count in (1, 2):
        answer = presigned.client.get(f"/v3/media/{item_id}")
        assert answer.status_code == 302
        assert answer.get_data() == b""
        assert answer.headers["Cache-Control"] == "no-store"
        assert answer.headers["ETag"] == proxied_headers["ETag"]
        assert presigned.times_downloaded(item_id) == count

        location = answer.headers["Location"]
        query = parse_qs(urlsplit(location).query)
        assert query["X-Amz-Expires"] == ["90"]
        assert query["X-Amz-SignedHeaders"] == ["host"]
        if presigned.real:
            assert urlsplit(location).hostname == urlsplit(_public_endpoint()).hostname
        fetched = _follow(location)
        assert fetched.status_code == 200, fetched.text[:300]
        assert fetched.content == CONTENT
        assert fetched.headers["Content-Type"] == MIME
        assert fetched.headers["Content-Disposition"] == proxied_headers["Content-Disposition"]
        assert fetched.headers["Cache-Control"] == proxied_headers["Cache-Control"]
        # Following the URL (again) is S3's business: the count was taken once, by the 302.
        assert _follow(location).content == CONTENT
        assert presigned.times_downloaded(item_id) == count

    refused = presigned.client.get(f"/v3/media/{item_id}")
    assert refused.status_code == 403
    assert refused.headers["Content-Type"] == "application/problem+json"
    assert "Location" not in refused.headers
    # The owner is never limited, and is redirected (and counted) too.
    owned = presigned.client.get(f"/v3/media/{item_id}", headers=presigned.owner.basic)
    assert owned.status_code == 302
    assert presigned.times_downloaded(item_id) == 3


def test_head_and_304_are_answered_by_the_service(presigned: Offload) -> None:
    item_id = presigned.upload(limit=5)
    head = presigned.client.head(f"/v3/media/{item_id}")
    assert head.status_code == 200
    assert head.headers["Content-Length"] == str(len(CONTENT))
    assert "Location" not in head.headers
    etag = head.headers["ETag"]
    cached = presigned.client.get(f"/v3/media/{item_id}", headers={"If-None-Match": etag})
    assert cached.status_code == 304
    assert "Location" not in cached.headers
    past = presigned.client.get(f"/v3/media/{item_id}", headers={"Range": "bytes=999999-"})
    assert past.status_code == 416
    assert presigned.times_downloaded(item_id) == 0


def test_range_from_byte_zero_is_counted_and_s3_sends_the_range(presigned: Offload) -> None:
    item_id = presigned.upload()
    answer = presigned.client.get(f"/v3/media/{item_id}", headers={"Range": "bytes=0-99"})
    assert answer.status_code == 302
    assert presigned.times_downloaded(item_id) == 1
    fetched = _follow(answer.headers["Location"], {"Range": "bytes=0-99"})
    assert fetched.status_code == 206
    assert fetched.content == CONTENT[:100]


def test_range_past_byte_zero_is_uncounted_and_its_url_is_bound_to_the_range(
    presigned: Offload,
) -> None:
    item_id = presigned.upload(limit=1)
    answer = presigned.client.get(f"/v3/media/{item_id}", headers={"Range": "bytes=1000-"})
    assert answer.status_code == 302
    assert presigned.times_downloaded(item_id) == 0
    location = answer.headers["Location"]
    assert parse_qs(urlsplit(location).query)["X-Amz-SignedHeaders"] == ["host;range"]
    fetched = _follow(location, {"Range": "bytes=1000-"})
    assert fetched.status_code == 206
    assert fetched.content == CONTENT[1000:]
    if presigned.real:  # moto does not check signatures; real servers must
        # The whole object, uncounted: refused (MinIO says 400, Ceph RGW and AWS 403).
        for refused in (_follow(location), _follow(location, {"Range": "bytes=0-"})):
            assert refused.status_code in (400, 403), refused.text[:300]
            assert CONTENT[:1000] not in refused.content


@pytest.mark.parametrize(
    ("headers", "status", "counted"),
    [
        ({"Range": "bytes=10-19,15-29"}, 206, False),  # coalesced here; S3 would send it all
        ({"Range": "bytes=10-19", "If-Range": "Mon, 06 May 2024 07:08:09 GMT"}, 200, True),
        ({"If-Match": "*"}, 200, True),  # S3 would compare it with its own ETag
    ],
)
def test_requests_s3_would_answer_differently_are_streamed(
    presigned: Offload, headers: dict[str, str], status: int, counted: bool
) -> None:
    item_id = presigned.upload()
    answer = presigned.client.get(f"/v3/media/{item_id}", headers=headers)
    assert answer.status_code == status
    assert "Location" not in answer.headers
    assert answer.get_data() == (CONTENT if status == 200 else CONTENT[10:30])
    assert presigned.times_downloaded(item_id) == int(counted)


def test_presigning_impossible_is_503_and_nothing_is_counted(
    presigned: Offload, monkeypatch: pytest.MonkeyPatch
) -> None:
    item_id = presigned.upload(limit=1)

    def cannot_sign(*args: Any, **kwargs: Any) -> str:
        raise BackendUnavailable("blob store", "presigning: Unable to locate credentials")

    monkeypatch.setattr(presigned.backends.blobs, "presigned_url", cannot_sign)
    answer = presigned.client.get(f"/v3/media/{item_id}")
    assert answer.status_code == 503
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert "Traceback" not in answer.get_data(as_text=True)
    monkeypatch.undo()
    assert presigned.times_downloaded(item_id) == 0
    assert presigned.client.get(f"/v3/media/{item_id}").status_code == 302


def test_a_signer_without_credentials_raises_backend_unavailable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    signer = _signer("https://s3.example.test")
    store = S3BlobStore(signer, "bucket", "items", presign_client=signer)
    with pytest.raises(BackendUnavailable, match="presigning"):
        store.presigned_url("abc", 60)


def test_urls_are_signed_for_the_public_endpoint() -> None:
    service_side = _signer("http://minio:9000")
    store = S3BlobStore(
        service_side, "bucket", "items", presign_client=_signer("https://media-bytes.example.com")
    )
    url = store.presigned_url(
        "abc",
        45,
        response_headers={"Content-Type": "text/plain", "Content-Disposition": "attachment"},
    )
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == (
        "https",
        "media-bytes.example.com",
        "/bucket/items/abc",
    )
    query = parse_qs(parts.query)
    assert query["X-Amz-Expires"] == ["45"]
    assert query["response-content-type"] == ["text/plain"]
    assert query["response-content-disposition"] == ["attachment"]
    with pytest.raises(ValueError):
        store.presigned_url("../other-tenant/key", 45)


# --- accel --------------------------------------------------------------------------------------


def test_accel_answers_todays_headers_and_names_the_file(accel: Offload) -> None:
    item_id = accel.upload(limit=3)
    head = accel.client.head(f"/v3/media/{item_id}").headers
    answer = accel.client.get(f"/v3/media/{item_id}")
    assert answer.status_code == 200
    assert answer.get_data() == b""
    assert answer.headers["X-Accel-Redirect"] == f"{ACCEL_LOCATION}{item_id[:2]}/{item_id}"
    for name in (
        "Content-Type",
        "Content-Disposition",
        "ETag",
        "Last-Modified",
        "Cache-Control",
        "Vary",
        "X-Content-Type-Options",
        "Content-Security-Policy",
    ):
        assert answer.headers[name] == head[name], name
    assert "Accept-Ranges" not in answer.headers  # nginx adds it to a 200
    assert accel.times_downloaded(item_id) == 1

    ranged = accel.client.get(f"/v3/media/{item_id}", headers={"Range": "bytes=100-199"})
    assert ranged.status_code == 206
    assert ranged.headers["Content-Range"] == f"bytes 100-199/{len(CONTENT)}"
    assert "X-Accel-Redirect" in ranged.headers
    assert ranged.headers["Accept-Ranges"] == "bytes"  # nginx adds none to a 206
    assert accel.times_downloaded(item_id) == 1  # not from byte 0


@pytest.mark.parametrize(
    "headers",
    [
        {"Range": "bytes=10-19,15-29"},
        {"Range": "bytes=10-29", "If-Range": '"nope"'},
        {"If-Unmodified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"},
    ],
)
def test_accel_streams_what_nginx_would_answer_differently(
    accel: Offload, headers: dict[str, str]
) -> None:
    item_id = accel.upload()
    answer = accel.client.get(f"/v3/media/{item_id}", headers=headers)
    assert "X-Accel-Redirect" not in answer.headers
    assert answer.status_code in (200, 206)
    assert answer.get_data() == (CONTENT if answer.status_code == 200 else CONTENT[10:30])


def test_accel_of_a_lost_file_is_the_services_error(accel: Offload) -> None:
    item_id = accel.upload(limit=1)
    accel.backends.blobs.delete(item_id)
    answer = accel.client.get(f"/v3/media/{item_id}")
    assert answer.status_code == 503
    assert "X-Accel-Redirect" not in answer.headers
    assert accel.times_downloaded(item_id) == 0


# --- configuration ------------------------------------------------------------------------------


def test_offloading_is_off_by_default() -> None:
    settings = Settings.from_env({})
    assert settings.download_redirect == "off"
    assert settings.download_redirect_ttl == 60
    assert settings.s3_public_endpoint is None


def test_the_modes_are_read_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "MEDIA_STORAGE_URL": "s3://media/items",
            "MEDIA_DOWNLOAD_REDIRECT": "Presigned",
            "MEDIA_DOWNLOAD_REDIRECT_TTL": "300",
            "MEDIA_S3_PUBLIC_ENDPOINT": "https://bytes.example.com/",
        }
    )
    assert settings.download_redirect == "presigned"
    assert settings.download_redirect_ttl == 300
    assert settings.s3_public_endpoint == "https://bytes.example.com"
    assert Settings.from_env({"MEDIA_DOWNLOAD_REDIRECT": "accel"}).download_redirect == "accel"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MEDIA_DOWNLOAD_REDIRECT": "presigned"}, "presigned needs an s3:// MEDIA_STORAGE_URL"),
        (
            {"MEDIA_DOWNLOAD_REDIRECT": "accel", "MEDIA_STORAGE_URL": "s3://media"},
            "accel needs a file:// MEDIA_STORAGE_URL",
        ),
        ({"MEDIA_DOWNLOAD_REDIRECT": "cdn"}, "MEDIA_DOWNLOAD_REDIRECT: expected one of"),
        ({"MEDIA_DOWNLOAD_REDIRECT_TTL": "0"}, "MEDIA_DOWNLOAD_REDIRECT_TTL: must be >= 1"),
        ({"MEDIA_DOWNLOAD_REDIRECT_TTL": "604801"}, "MEDIA_DOWNLOAD_REDIRECT_TTL: must be between"),
        ({"MEDIA_S3_PUBLIC_ENDPOINT": "minio:9000"}, "MEDIA_S3_PUBLIC_ENDPOINT: expected"),
    ],
)
def test_wrong_store_or_values_are_refused_at_start_up(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as refused:
        Settings.from_env(env)
    assert "\n" not in str(refused.value)


def test_presigned_without_credentials_is_refused_at_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name)
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # never reached
    settings = make_settings(
        tmp_path, storage_url="s3://media/items", download_redirect="presigned"
    )
    with pytest.raises(ConfigError, match="presigned: cannot sign S3 URLs"):
        open_backends(settings)


@pytest.mark.parametrize("key", ["../etc/passwd", "ab/../../x", "..", ".hidden", "a/b", ""])
def test_the_accel_path_admits_server_keys_only(tmp_path: Path, key: str) -> None:
    from media_service.storage.files import FileBlobStore

    store = FileBlobStore(tmp_path)
    assert store.relative_path("3f2a9c1e-0000-4000-8000-000000000000") == (
        "3f/3f2a9c1e-0000-4000-8000-000000000000"
    )
    with pytest.raises(ValueError):
        store.relative_path(key)
