"""Fixtures shared by the suites: settings, backend pairs, the app, credentials and tokens."""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings

from media_service.auth import generate_rsa_keypair, generate_secret, hash_secret, make_token
from media_service.factory import create_app
from media_service.settings import Settings
from media_service.storage.interfaces import Account, Application, Backends
from tests.real_backends import REAL_PAIR, open_real_pair, real_pairs

# Property tests judge behaviour, never speed: this machine's timings are noisy, and on a cold
# cache (a fresh clone: no .hypothesis/) Hypothesis first builds its Unicode tables, which took
# 10 s and failed the `too_slow` health check of any test drawing st.text().
hypothesis_settings.register_profile(
    "media", deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
hypothesis_settings.load_profile("media")

# The real pair (MongoDB + S3 servers) joins where `make test-backends` configured it.
BACKEND_PAIRS: list[Any] = ["sqlite-files", "mongomock-moto", *real_pairs()]


# Dummy AWS credentials; never a developer's real config, never a real endpoint.
FAKE_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/nonexistent/aws-config",
    "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
}
UNSET_AWS_ENV = ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "AWS_PROFILE")


def sandbox_aws(env: pytest.MonkeyPatch) -> None:
    """Put the fake AWS environment in place through `env` (undone when `env` is)."""
    for name, value in FAKE_AWS_ENV.items():
        env.setenv(name, value)
    for name in UNSET_AWS_ENV:
        env.delenv(name, raising=False)


@pytest.fixture(autouse=True)
def _aws_sandbox(monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox_aws(monkeypatch)


@pytest.fixture(scope="session")
def rsa_keypair() -> tuple[str, str]:
    """(private PEM, public PEM), generated once per session: key generation is slow."""
    return generate_rsa_keypair()


@pytest.fixture(scope="session")
def second_rsa_keypair() -> tuple[str, str]:
    return generate_rsa_keypair()


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    base = Settings(
        database_url=f"sqlite:///{tmp_path / 'media.db'}",
        storage_url=(tmp_path / "blobs").as_uri(),
        data_dir=tmp_path,
        max_upload_bytes=8 * 1024 * 1024,
        backend_timeout=2.0,
        # Independent of the host's free space, and a small spare file (one per test database).
        min_free_bytes=0,
        sqlite_spare_bytes=256 * 1024,
    )
    return base.with_overrides(**overrides) if overrides else base


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@functools.cache
def _botocore_loader() -> Any:
    """One model loader for the session: re-reading botocore's JSON models costs ~0.3 s a client."""
    import botocore.loaders

    return botocore.loaders.create_loader()


@contextlib.contextmanager
def open_pair(pair: str, settings: Settings) -> Iterator[Backends]:
    """The backends of `pair` (one of BACKEND_PAIRS), tables in place; closed afterwards.

    The mongomock-moto pair needs the fake AWS environment (`sandbox_aws`) around it.
    """
    if pair == REAL_PAIR:
        with open_real_pair(settings) as real:
            yield real
    elif pair == "sqlite-files":
        yield from _sqlite_files(settings)
    elif pair == "mongomock-moto":
        yield from _mongomock_moto()
    else:
        raise ValueError(f"unknown backend pair {pair!r}")


def _sqlite_files(settings: Settings) -> Iterator[Backends]:
    from media_service.backends import open_backends

    backends = open_backends(settings)
    try:
        yield backends
    finally:
        backends.close()


def _mongomock_moto() -> Iterator[Backends]:
    import boto3
    import botocore.session
    import mongomock
    from moto import mock_aws

    from media_service.storage.mongo import (
        MongoCredentialStore,
        MongoDatabase,
        MongoMediaRepository,
    )
    from media_service.storage.s3 import S3BlobStore

    with mock_aws():
        session = botocore.session.get_session()
        session.register_component("data_loader", _botocore_loader())
        client = boto3.Session(botocore_session=session).client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="media-test")
        database = MongoDatabase.wrap(mongomock.MongoClient(tz_aware=True)["media"])
        backends = Backends(
            blobs=S3BlobStore(client, "media-test", "items/"),
            media=MongoMediaRepository(database),
            credentials=MongoCredentialStore(database),
        )
        backends.media.prepare_database()
        backends.credentials.prepare_database()
        yield backends


@pytest.fixture(params=BACKEND_PAIRS)
def backends(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Backends]:
    with open_pair(request.param, settings) as opened:
        yield opened


@pytest.fixture
def app(settings: Settings, backends: Backends) -> Flask:
    app = create_app(settings, backends=backends)
    app.config["TESTING"] = True
    return app


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@dataclass
class Credentials:
    """An account with one application, and helpers to authenticate as either."""

    api_key: str
    api_secret: str
    application_id: str
    private_key: str

    @property
    def basic(self) -> dict[str, str]:
        token = base64.b64encode(f"{self.api_key}:{self.api_secret}".encode()).decode()
        return {"Authorization": f"Basic {token}"}

    def token(self, **kwargs: Any) -> str:
        return make_token(self.application_id, self.private_key, **kwargs)

    def bearer(self, **kwargs: Any) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(**kwargs)}"}


def provision(
    backends: Backends,
    keypair: tuple[str, str],
    *,
    api_key: str,
    application_id: str,
) -> Credentials:
    secret = generate_secret()
    salt, digest = hash_secret(secret)
    backends.credentials.add_account(Account(api_key, salt, digest))
    backends.credentials.add_application(Application(application_id, api_key, (keypair[1],)))
    return Credentials(api_key, secret, application_id, keypair[0])


@pytest.fixture
def owner(backends: Backends, rsa_keypair: tuple[str, str]) -> Credentials:
    """Account `acct0001` with application `app-one`."""
    return provision(backends, rsa_keypair, api_key="acct0001", application_id="app-one")


@pytest.fixture
def sibling(
    backends: Backends, owner: Credentials, second_rsa_keypair: tuple[str, str]
) -> Credentials:
    """Another application of the owner's account."""
    backends.credentials.add_application(
        Application("app-two", owner.api_key, (second_rsa_keypair[1],))
    )
    return Credentials(owner.api_key, owner.api_secret, "app-two", second_rsa_keypair[0])


@pytest.fixture
def stranger(backends: Backends, second_rsa_keypair: tuple[str, str]) -> Credentials:
    """A different account with its own application."""
    return provision(backends, second_rsa_keypair, api_key="acct0002", application_id="app-other")


Uploader = Callable[..., Any]


@pytest.fixture
def upload(client: FlaskClient) -> Uploader:
    """POST a multipart upload; returns the test response."""

    def _upload(
        headers: dict[str, str],
        content: bytes = b"RIFF\x24\x00\x00\x00WAVEfmt hello",
        *,
        filename: str = "hello.wav",
        content_type: str = "audio/wav",
        field: str = "filedata",
        **fields: Any,
    ) -> Any:
        data: dict[str, Any] = {k: v for k, v in fields.items()}
        data[field] = (io.BytesIO(content), filename, content_type)
        return client.post(
            "/v3/media", data=data, headers=headers, content_type="multipart/form-data"
        )

    return _upload


def real_backend_env(name: str) -> str | None:
    return os.environ.get(name) or None
