"""Live servers for the integration tests: gunicorn, the CLI and S3 endpoints, on loopback.

Everything here runs the entry points a user runs — `.venv/bin/gunicorn --config
config/gunicorn.conf.py app:app` and `.venv/bin/media-service` — as subprocesses with a clean
environment, binds only to 127.0.0.1 on free ports, and stops whatever it started, whatever the
test did. Server output goes to files whose tails end up in failure messages.

Fixtures:
    live_server         function-scoped factory: live_server(workers=2, threads=None, env={...})
    module_live_server  the same factory, for servers shared by the tests of one module
    moto_server         a ThreadedMotoServer (real HTTP S3) with a bucket, for the session
    mongo_database_url  a fresh database on MEDIA_TEST_MONGO_URL (skips when unset), dropped after
                        (fresh_mongo_database() is the same as a context manager)
    real_s3_env         a fresh bucket on MEDIA_TEST_S3_ENDPOINT (skips when unset), removed after

Helpers for the test modules: launch() (a server without a fixture), provision() (account,
application and token through the CLI), create_account() (just the account, for Basic auth),
upload(), payload(), http_session() (proxy-free).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import boto3
import pytest
import requests

from realservers.process import children_of, free_port
from tests import real_backends

REPO_ROOT = Path(__file__).resolve().parents[2]
# The interpreter's own bin directory (not resolved: in a venv, python is a symlink out of it).
VENV_BIN = Path(sys.executable).parent
GUNICORN = VENV_BIN / "gunicorn"
MEDIA_SERVICE = VENV_BIN / "media-service"
GUNICORN_CONFIG = REPO_ROOT / "config" / "gunicorn.conf.py"

LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT = 20.0  # seconds until /healthz must answer
STOP_TIMEOUT = 8.0  # seconds between SIGTERM and SIGKILL
CLI_TIMEOUT = 60.0
HTTP_TIMEOUT = 15.0  # default (connect, read) bound for a single request in these tests

_PARENT_ENV = dict(os.environ)

# Configuration the developer's shell may carry must not leak into the servers under test.
_DROPPED_PREFIXES = ("MEDIA_", "AWS_", "GUNICORN_", "PROMETHEUS_")
_DROPPED_NAMES = {"PORT", "WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS"}
MOTO_BUCKET = "media-integration"
DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _inherited(name: str) -> bool:
    return not (
        name.startswith(_DROPPED_PREFIXES)
        or name in _DROPPED_NAMES
        or name.lower().endswith("_proxy")  # loopback traffic must never go through a proxy
    )


def clean_env(data_dir: Path, overrides: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a server or CLI run: the parent's, minus its service configuration."""
    env = {name: value for name, value in _PARENT_ENV.items() if _inherited(name)}
    env.update(DUMMY_AWS)
    env.update(
        {
            "MEDIA_DATA_DIR": str(data_dir),
            # Never read a developer's AWS config or ask an instance metadata service.
            "AWS_CONFIG_FILE": "/nonexistent/aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
            "AWS_EC2_METADATA_DISABLED": "true",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "PYTHONUNBUFFERED": "1",
            # Keep shutdown short: a worker that has served a keep-alive connection waits out the
            # whole graceful timeout on SIGTERM, and tests leave nothing in flight they care about.
            "GUNICORN_GRACEFUL_TIMEOUT": "1",
        }
    )
    env.update(overrides or {})
    return env


def http_session() -> requests.Session:
    """A requests session that ignores proxy variables and .netrc (loopback only)."""
    session = requests.Session()
    session.trust_env = False
    return session


class ServerFailed(Exception):
    """gunicorn exited or never became healthy; the message carries its stderr."""


@dataclass
class LiveServer:
    """One running gunicorn master with its workers, and the environment it was started with."""

    url: str
    env: dict[str, str]
    data_dir: Path
    process: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    _workers_seen: dict[int, bytes] = field(default_factory=dict)

    @property
    def port(self) -> int:
        return int(urlsplit(self.url).port or 0)

    def session(self) -> requests.Session:
        return http_session()

    def stderr(self, tail: int = 6000) -> str:
        """The last `tail` characters gunicorn (and the app's logger) wrote to stderr."""
        try:
            return self.stderr_path.read_text(errors="replace")[-tail:]
        except OSError:
            return ""

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `media-service ARGS` with the server's configuration; fail the test on error."""
        done = subprocess.run(
            [str(MEDIA_SERVICE), *args],
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )
        if check and done.returncode != 0:
            pytest.fail(
                f"media-service {' '.join(args)} exited {done.returncode}:\n{done.stderr}",
                pytrace=False,
            )
        return done

    def worker_pids(self) -> list[int]:
        """The pids of the master's live child processes (its workers), from /proc."""
        pids = children_of(self.process.pid)
        for pid in pids:
            self._workers_seen.setdefault(pid, _cmdline(pid))
        return pids

    def wait_for_workers(self, count: int, timeout: float = STARTUP_TIMEOUT) -> list[int]:
        """Wait (bounded) until the master has `count` worker processes; return their pids."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.worker_pids()
            if len(pids) >= count:
                return pids
            time.sleep(0.05)
        raise ServerFailed(f"{count} workers did not start in {timeout} s:\n{self.stderr()}")

    def stop(self) -> None:
        """SIGTERM the master; SIGKILL it (and any worker it left behind) if it lingers."""
        self.worker_pids()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        for pid, cmdline in self._workers_seen.items():
            # Only a process that is still the worker we saw (pids are reused).
            if cmdline and _cmdline(pid) == cmdline:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def launch(
    data_dir: Path,
    *,
    workers: int = 2,
    threads: int | None = None,
    env: dict[str, str] | None = None,
    wait: bool = True,
) -> LiveServer:
    """Start gunicorn exactly as `make run` does and wait (bounded) until /healthz answers."""
    data_dir.mkdir(parents=True, exist_ok=True)
    last_error: ServerFailed | None = None
    for attempt in range(3):  # a free port can be taken between probing and binding
        port = free_port()
        overrides = {"PORT": str(port), "WEB_CONCURRENCY": str(workers)}
        if threads is not None:
            overrides["GUNICORN_THREADS"] = str(threads)
        server_env = clean_env(data_dir, {**overrides, **(env or {})})
        logs = data_dir / "logs"
        logs.mkdir(exist_ok=True)
        stdout_path = logs / f"gunicorn-{port}-{attempt}.out"
        stderr_path = logs / f"gunicorn-{port}-{attempt}.err"
        with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
            process = subprocess.Popen(
                [str(GUNICORN), "--config", str(GUNICORN_CONFIG), "app:app"],
                cwd=REPO_ROOT,
                env=server_env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
            )
        server = LiveServer(
            url=f"http://{LOOPBACK}:{port}",
            env=server_env,
            data_dir=data_dir,
            process=process,
            stdout_path=stdout_path,
            stderr_path=stderr_path,
        )
        if not wait:
            return server
        try:
            _wait_healthy(server)
            return server
        except ServerFailed as error:
            server.stop()
            last_error = error
            if "Address already in use" not in str(error):
                raise
    assert last_error is not None
    raise last_error


def _wait_healthy(server: LiveServer) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    with http_session() as http:
        while time.monotonic() < deadline:
            if server.process.poll() is not None:
                raise ServerFailed(
                    f"gunicorn exited with {server.process.returncode} while starting:\n"
                    f"{server.stderr()}"
                )
            try:
                if http.get(f"{server.url}/healthz", timeout=1.0).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
    raise ServerFailed(
        f"gunicorn did not answer /healthz within {STARTUP_TIMEOUT} s:\n{server.stderr()}"
    )


class ServerFarm:
    """Starts servers under one temporary directory and stops every one of them at the end."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.servers: list[LiveServer] = []

    def start(self, **kwargs: Any) -> LiveServer:
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


StartServer = Callable[..., LiveServer]


@pytest.fixture
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StartServer]:
    """live_server(workers=2, threads=None, env={...}) -> a healthy LiveServer, stopped after."""
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


def create_account(server: LiveServer) -> tuple[str, str]:
    """`media-service accounts create`; returns (api_key, api_secret) for Basic auth."""
    account = json.loads(server.cli("accounts", "create").stdout)
    return (account["api_key"], account["api_secret"])


def provision(server: LiveServer, key_dir: Path) -> Tenant:
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


def upload(
    http: requests.Session,
    server: LiveServer,
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


@pytest.fixture
def mongo_database_url() -> Iterator[str]:
    """A database of its own on MEDIA_TEST_MONGO_URL, dropped afterwards; skips when unset."""
    with fresh_mongo_database() as url:
        yield url


@contextlib.contextmanager
def fresh_s3_env() -> Iterator[dict[str, str]]:
    """Server variables for a fresh bucket on MEDIA_TEST_S3_ENDPOINT; emptied and removed after."""
    if not real_backends.S3_ENDPOINT:
        pytest.skip("MEDIA_TEST_S3_ENDPOINT is not set")
    with real_backends.fresh_bucket() as bucket:
        yield real_backends.service_s3_env(bucket)


@pytest.fixture
def real_s3_env() -> Iterator[dict[str, str]]:
    """fresh_s3_env() as a fixture."""
    with fresh_s3_env() as env:
        yield env
