"""Live servers for the integration tests: gunicorn, the CLI and S3 endpoints, on loopback.

Everything here runs the entry points a user runs — `.venv/bin/gunicorn --config
config/gunicorn.conf.py app:app` and `.venv/bin/media-service` — as subprocesses with a clean
environment, binds only to 127.0.0.1 on free ports, and stops whatever it started, whatever the
test did. Server output goes to files whose tails end up in failure messages.

Fixtures:
    live_server         function-scoped factory: live_server(workers=2, threads=None, env={...})
    module_live_server  the same factory, for servers shared by the tests of one module
    moto_server         a ThreadedMotoServer (real HTTP S3) with a bucket, for the session

Helpers for the test modules: launch() (a server without a fixture), provision() (account,
application and token through the CLI), create_account() (just the account, for Basic auth),
upload(), payload(), http_session() (proxy-free); the real backends of a server: pair_params()
(fixture params for "sqlite+files", "mongodb+s3", ... with their markers) and pair_env() (a fresh
database and bucket for the pair, dropped after), or fresh_mongo_database() and fresh_s3_env().
The servers themselves are realservers.gunicorn_server.GunicornServer.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import boto3
import pytest
import requests

from realservers.gunicorn_server import DUMMY_AWS, GunicornServer, ServerFailed
from realservers.process import free_port
from tests import real_backends

LOOPBACK = "127.0.0.1"
HTTP_TIMEOUT = 15.0  # default (connect, read) bound for a single request in these tests
MOTO_BUCKET = "media-integration"


def http_session() -> requests.Session:
    """A requests session that ignores proxy variables and .netrc (loopback only)."""
    session = requests.Session()
    session.trust_env = False
    return session


def launch(
    data_dir: Path,
    *,
    workers: int = 2,
    threads: int | None = None,
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> GunicornServer:
    """Start gunicorn exactly as `make run` does and wait (bounded) until it is ready."""
    server = GunicornServer(
        data_dir,
        workers=workers,
        threads=threads,
        # Keep shutdown short: a worker that has served a keep-alive connection waits out the
        # whole graceful timeout on SIGTERM, and tests leave nothing in flight they care about.
        env={"GUNICORN_GRACEFUL_TIMEOUT": "1", **(env or {})},
    )
    return server.start(wait=wait)


def split_answer(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP/1.1 response: (status, headers with lower-case names, body)."""
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


class ServerFarm:
    """Starts servers under one temporary directory and stops every one of them at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.servers: list[GunicornServer] = []

    def start(self, **kwargs: Any) -> GunicornServer:
        data_dir = self.root / f"server-{len(self.servers)}"
        try:
            server = launch(data_dir, **kwargs)
        except ServerFailed as error:
            pytest.fail(str(error), pytrace=False)
        self.servers.append(server)
        return server

    def stop_all(self) -> None:
        for server in self.servers:
            server.stop()


StartServer = Callable[..., GunicornServer]


@pytest.fixture
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    """live_server(workers=2, threads=None, env={...}) -> a ready GunicornServer, stopped after."""
    farm = ServerFarm(tmp_path_factory.mktemp("live"))
    try:
        yield farm.start
    finally:
        farm.stop_all()


@pytest.fixture(scope="module")
def module_live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    """Like live_server, for servers that the tests of one module share."""
    farm = ServerFarm(tmp_path_factory.mktemp("live-module"))
    try:
        yield farm.start
    finally:
        farm.stop_all()


# --------------------------------------------------------------------------- accounts


@dataclass(frozen=True)
class Tenant:
    """An account and one application, provisioned through the CLI as an operator would."""

    api_key: str
    api_secret: str
    application_id: str
    private_key_file: Path
    token: str

    @property
    def basic(self) -> tuple[str, str]:
        return (self.api_key, self.api_secret)

    @property
    def bearer(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def create_account(server: GunicornServer) -> tuple[str, str]:
    """`media-service accounts create`; returns (api_key, api_secret) for Basic auth."""
    account = json.loads(server.cli("accounts", "create").stdout)
    return (account["api_key"], account["api_secret"])


def provision(server: GunicornServer, key_dir: Path) -> Tenant:
    """`accounts create`, `applications create --generate-key`, `token`: the documented steps."""
    account = json.loads(server.cli("accounts", "create").stdout)
    key_dir.mkdir(parents=True, exist_ok=True)
    key_file = key_dir / f"application-{uuid.uuid4().hex[:8]}.pem"
    application_id = server.cli(
        "applications", "create", "--api-key", account["api_key"], "--generate-key", str(key_file)
    ).stdout.strip()
    token = server.cli(
        "token",
        "--application-id",
        application_id,
        "--private-key-file",
        str(key_file),
        "--ttl",
        "3600",
    ).stdout.strip()
    return Tenant(account["api_key"], account["api_secret"], application_id, key_file, token)


class Served(Protocol):
    """Anything that serves the API at a base url: a GunicornServer, or nginx in front of one."""

    @property
    def url(self) -> str: ...


def upload(
    http: requests.Session,
    server: Served,
    content: bytes,
    *,
    auth: tuple[str, str] | None = None,
    headers: dict[str, str] | None = None,
    filename: str = "clip.bin",
    content_type: str = "application/octet-stream",
    form: Mapping[str, str] | None = None,
    **fields: str,
) -> requests.Response:
    """POST /v3/media as multipart/form-data: the file in `filedata`, plus form/fields."""
    return http.post(
        f"{server.url}/v3/media",
        files={"filedata": (filename, content, content_type)},
        data={**(form or {}), **fields},
        auth=auth,
        headers=headers,
        timeout=60,
    )


def payload(size: int, seed: int = 0) -> bytes:
    """Deterministic, incompressible-looking bytes (no two 1 MiB chunks alike)."""
    block = bytes((i * 131 + seed * 7 + (i >> 8) * 13) % 251 for i in range(65_536))
    out = bytearray()
    counter = 0
    while len(out) < size:
        out += counter.to_bytes(8, "big") + block
        counter += 1
    return bytes(out[:size])


# --------------------------------------------------------------------------- S3 endpoints


@dataclass(frozen=True)
class S3Endpoint:
    url: str
    bucket: str

    def storage_env(self, prefix: str | None = None) -> dict[str, str]:
        """Server variables for blobs under a unique prefix of the bucket on this endpoint."""
        prefix = prefix or f"it-{uuid.uuid4().hex[:12]}"
        return {
            "MEDIA_STORAGE_URL": f"s3://{self.bucket}/{prefix}",
            "AWS_ENDPOINT_URL_S3": self.url,
        }


def s3_client(endpoint: str, credentials: Mapping[str, str]) -> Any:
    """A boto3 client for the tests' own bookkeeping (the server builds its own)."""
    session = boto3.session.Session(
        aws_access_key_id=credentials["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=credentials["AWS_SECRET_ACCESS_KEY"],
        region_name=credentials["AWS_DEFAULT_REGION"],
    )
    return session.client("s3", endpoint_url=endpoint)


@pytest.fixture(scope="session")
def moto_server() -> Iterator[S3Endpoint]:
    """A moto S3 server on loopback (real HTTP) with one bucket, shared by the session."""
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address=LOOPBACK, port=port, verbose=False)
    server.start()
    endpoint = S3Endpoint(f"http://{LOOPBACK}:{port}", MOTO_BUCKET)
    try:
        client = s3_client(endpoint.url, DUMMY_AWS)
        try:
            client.create_bucket(Bucket=endpoint.bucket)
        finally:
            client.close()
        yield endpoint
    finally:
        server.stop()


def list_keys(
    endpoint: S3Endpoint, prefix: str, credentials: Mapping[str, str] = DUMMY_AWS
) -> list[str]:
    """The object keys under `prefix` (for leak checks); credentials as AWS_* variables."""
    client = s3_client(endpoint.url, credentials)
    try:
        pages = client.get_paginator("list_objects_v2").paginate(
            Bucket=endpoint.bucket, Prefix=prefix
        )
        return [entry["Key"] for page in pages for entry in page.get("Contents", [])]
    finally:
        client.close()


# --------------------------------------------------------------------------- real backends


@contextlib.contextmanager
def fresh_mongo_database() -> Iterator[str]:
    """A URL naming a new database on MEDIA_TEST_MONGO_URL; the database is dropped after."""
    if not real_backends.MONGO_URL:
        pytest.skip("MEDIA_TEST_MONGO_URL is not set")
    name = real_backends.unique_name("media_it")
    try:
        yield real_backends.database_url(name)
    finally:
        real_backends.drop_database(name)


real_mongo_is_ferretdb = real_backends.mongo_is_ferretdb


@contextlib.contextmanager
def fresh_s3_env() -> Iterator[dict[str, str]]:
    """Server variables for a fresh bucket on MEDIA_TEST_S3_ENDPOINT; emptied and removed after."""
    if not real_backends.S3_ENDPOINT:
        pytest.skip("MEDIA_TEST_S3_ENDPOINT is not set")
    with real_backends.fresh_bucket() as bucket:
        yield real_backends.service_s3_env(bucket)


# The pairs a live server can run on, and the markers of the real servers each one needs.
PAIR_MARKS: dict[str, list[pytest.MarkDecorator]] = {
    "sqlite+files": [],
    "mongodb+files": [pytest.mark.mongo],
    "sqlite+s3": [pytest.mark.minio],
    "mongodb+s3": [pytest.mark.mongo, pytest.mark.minio],
}


def pair_params(*pairs: str) -> list[Any]:
    """Fixture params for `pairs` (keys of PAIR_MARKS), each with the markers it needs."""
    return [pytest.param(pair, marks=PAIR_MARKS[pair], id=pair) for pair in pairs]


def pair_env(pair: str, cleanup: contextlib.ExitStack) -> dict[str, str]:
    """Server variables for `pair`: a fresh database and/or bucket on the real servers (skips
    when they are not configured), removed when `cleanup` closes. Stop the servers first."""
    database, storage = pair.split("+")
    env: dict[str, str] = {}
    if database == "mongodb":
        env["MEDIA_DATABASE_URL"] = cleanup.enter_context(fresh_mongo_database())
    if storage == "s3":
        env.update(cleanup.enter_context(fresh_s3_env()))
    return env
