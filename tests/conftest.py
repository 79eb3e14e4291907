"""Fixtures shared by the suites: settings, backend pairs, the app, credentials and tokens."""

from __future__ import annotations

import base64
import contextlib
import functools
import io
import os
import tracemalloc  # noqa: F401 - imported early on purpose, see below
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

# pytest's unraisable-exception hook imports tracemalloc the first time it reports an object
# collected unclosed (a test client's temporary file, say). If that collection happens while
# tracemalloc is itself being imported, the hook finds the module half-initialised, raises, and
# fails whichever test was running. Imported here, it is always complete.

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


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """MEDIA_* pointing at an embedded store under tmp_path, as `media-service` reads it."""
    for name in list(os.environ):
        if name.startswith("MEDIA_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("MEDIA_DATA_DIR", str(tmp_path))
    return Settings.from_env()


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
        with mongomock_moto() as backends:
            yield backends
    else:
        raise ValueError(f"unknown backend pair {pair!r}")


def _sqlite_files(settings: Settings) -> Iterator[Backends]:
    from media_service.backends import open_backends

    backends = open_backends(settings)
    try:
        yield backends
    finally:
        backends.close()


@contextlib.contextmanager
def mongomock_moto(
    s3_client: Callable[[], Any] | None = None, *, presign: bool = False
) -> Iterator[Backends]:
    """The mongomock-moto pair, schema in place, inside moto's `mock_aws` (needs `sandbox_aws`).

    `s3_client` builds the S3 clients (default: boto3's, with the session's model loader);
    with `presign` the blob store gets a second one to sign download URLs with.
    """
    import mongomock
    from moto import mock_aws

    from media_service.storage.mongo import (
        MongoCredentialStore,
        MongoDatabase,
        MongoMediaRepository,
    )
    from media_service.storage.s3 import S3BlobStore

    with mock_aws():
        make_client = s3_client or _default_s3_client
        client = make_client()
        client.create_bucket(Bucket="media-test")
        database = MongoDatabase.wrap(mongomock.MongoClient(tz_aware=True)["media"])
        backends = Backends(
            blobs=S3BlobStore(
                client, "media-test", "items/", presign_client=make_client() if presign else None
            ),
            media=MongoMediaRepository(database),
            credentials=MongoCredentialStore(database),
        )
        backends.media.prepare_database()
        backends.credentials.prepare_database()
        yield backends


def _default_s3_client() -> Any:
    import boto3
    import botocore.session

    session = botocore.session.get_session()
    session.register_component("data_loader", _botocore_loader())
    return boto3.Session(botocore_session=session).client("s3", region_name="us-east-1")


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


# --------------------------------------------------------------------------- shared worlds

KeyPair = tuple[str, str]


@dataclass(frozen=True)
class World:
    """One backend pair, app and set of credentials shared by the tests of a module."""

    settings: Settings
    backends: Backends
    app: Flask
    owner: Credentials  # account acct0001, application app-one
    sibling: Credentials  # the same account, application app-two
    stranger: Credentials  # account acct0002, application app-other


@contextlib.contextmanager
def open_world(
    pair: str, directory: Path, keypair: KeyPair, second_keypair: KeyPair, **overrides: Any
) -> Iterator[World]:
    """Open `pair` (one of BACKEND_PAIRS) under `directory`, with an app and its credentials."""
    settings = make_settings(directory, **overrides)
    with contextlib.ExitStack() as stack:
        sandbox_aws(stack.enter_context(pytest.MonkeyPatch.context()))  # for the module's life
        backends = stack.enter_context(open_pair(pair, settings))
        app = create_app(settings, backends=backends)
        app.config["TESTING"] = True
        owner = provision(backends, keypair, api_key="acct0001", application_id="app-one")
        backends.credentials.add_application(
            Application("app-two", owner.api_key, (second_keypair[1],))
        )
        sibling = Credentials(owner.api_key, owner.api_secret, "app-two", second_keypair[0])
        stranger = provision(
            backends, second_keypair, api_key="acct0002", application_id="app-other"
        )
        yield World(settings, backends, app, owner, sibling, stranger)


WORLD_PARTS = ("app", "backends", "owner", "sibling", "stranger")


def shared_world(**overrides: Any) -> tuple[Any, ...]:
    """Opt a test module in to one World per backend pair for all of its tests. At module level,

        world, app, backends, owner, sibling, stranger = shared_world(max_upload_bytes=...)

    puts a module-scoped `world` fixture (params BACKEND_PAIRS; settings from make_settings
    with `overrides`) in place, and the `app`, `backends`, `owner`, `sibling` and `stranger`
    fixtures above give way to its parts. Fresh backends and a fresh app cost a quarter to half
    a second a test, which tables of hundreds of rows cannot afford; each test then creates the
    items it needs under fresh ids. `parametrize("world", [...], indirect=True)` narrows a test
    to some pairs.
    """

    @pytest.fixture(name="world", scope="module", params=BACKEND_PAIRS)
    def world_fixture(
        request: pytest.FixtureRequest,
        tmp_path_factory: pytest.TempPathFactory,
        rsa_keypair: KeyPair,
        second_rsa_keypair: KeyPair,
    ) -> Iterator[World]:
        directory = tmp_path_factory.mktemp(request.param)
        with open_world(
            request.param, directory, rsa_keypair, second_rsa_keypair, **overrides
        ) as world:
            yield world

    def part(name: str) -> Any:
        @pytest.fixture(name=name)
        def fixture(world: World) -> Any:
            return getattr(world, name)

        return fixture

    return (world_fixture, *(part(name) for name in WORLD_PARTS))
