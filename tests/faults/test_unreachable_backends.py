"""A real gunicorn whose backends cannot be reached (SPEC §3: "a failing backend is 503 with a
problem body, never a hang: every backend call has a bounded timeout"; §4.7 /healthz, /readyz).

The unreachable side is a TcpProxy on loopback that accepts and never answers (a hung server,
a black-holed network) or a port nothing listens on. MEDIA_BACKEND_TIMEOUT is 1 s, so the
database side must answer within 2 s; the S3 side within what s3.py's retry policy allows.
"""

from __future__ import annotations

import base64
import json
import socket
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlsplit

import boto3
import pytest

from media_service.auth import generate_secret, hash_secret, make_token
from media_service.backends import open_backends
from media_service.database_setup import RETRY_SECONDS as SETUP_RETRY_SECONDS
from media_service.settings import Settings, sqlite_path
from media_service.storage import mongo
from media_service.storage.interfaces import (
    Account,
    Backends,
    BackendUnavailable,
    ItemState,
    SearchQuery,
    SearchScope,
)
from realservers.gunicorn_server import GunicornServer
from tests.faults.conftest import (
    FILE_PART_TAIL,
    MULTIPART_TYPE,
    TcpProxy,
    all_items,
    assert_consistent,
    closed_port,
    file_part_head,
    make_item,
    run_sweep,
    server_env,
)

pytestmark = pytest.mark.integration

BACKEND_TIMEOUT = 1.0  # MEDIA_BACKEND_TIMEOUT in every server below
DATABASE_BOUND = BACKEND_TIMEOUT + 1.0  # SPEC §3 / the issue: the timeout plus one second
FAST = 1.0  # what needs no backend (/healthz), or only the healthy one, answers within this

# s3.py: Config(connect_timeout=read_timeout=MEDIA_BACKEND_TIMEOUT,
# retries={"max_attempts": 3, "mode": "standard"}). max_attempts counts retries: 4 attempts per
# call, each ending in a 1 s read timeout against a stalled endpoint, with back-off of at most
# 0.05 * (1 + 2 + 4) s between them (read timeouts are not throttling).
S3_ATTEMPTS = 1 + 3
S3_BACKOFF = 0.05 * (1 + 2 + 4)
S3_CALL = S3_ATTEMPTS * BACKEND_TIMEOUT + S3_BACKOFF
# A PutObject with a file-like body carries "Expect: 100-continue", and botocore waits a fixed
# 1 s for the "100 Continue" (awsrequest.AWSConnection._send_output) before the read timeout.
S3_PUT = S3_ATTEMPTS * (1.0 + BACKEND_TIMEOUT) + S3_BACKOFF
# Each endpoint may take the sum of its S3 calls plus, as for the database, one second. A failed
# upload makes three: PutObject, the listing in S3BlobStore._discard (the object may exist after
# a timed-out write) and the cleanup's DeleteObject.
S3_CALL_BOUND = S3_CALL + 1.0
S3_UPLOAD_BOUND = S3_PUT + 2 * S3_CALL + 1.0

API_KEY = "unreach1"
NO_SUCH_ITEM = str(uuid.uuid4())
GUNICORN_THREADS = "16"  # every probe below runs at once: none waits for a free thread


# --------------------------------------------------------------------------- probes


@dataclass(frozen=True)
class Probe:
    """One request to fire at the server."""

    name: str
    method: str
    path: str
    headers: dict[str, str]
    body: bytes | None = None


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    elapsed: float

    def __str__(self) -> str:
        return f"{self.status} after {self.elapsed:.2f} s: {self.body[:300]!r}"


def basic(api_key: str, secret: str) -> dict[str, str]:
    token = base64.b64encode(f"{api_key}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


def upload_probe(auth: dict[str, str], content: bytes = b"some bytes") -> Probe:
    body = file_part_head("probe.bin") + content + FILE_PART_TAIL
    return Probe("upload", "POST", "/v3/media", {**auth, "Content-Type": MULTIPART_TYPE}, body)


def every_endpoint(auth: dict[str, str], item_id: str, bearer: str | None = None) -> list[Probe]:
    """Upload, search, info, update, download (owner and anonymous), delete and /readyz."""
    update = json.dumps({"title": "t"}).encode()
    probes = [
        upload_probe(auth),
        Probe("search", "GET", "/v3/media", auth),
        Probe("info", "GET", f"/v3/media/{item_id}/info", auth),
        Probe(
            "update",
            "PUT",
            f"/v3/media/{item_id}/info",
            {**auth, "Content-Type": "application/json"},
            update,
        ),
        Probe("download", "GET", f"/v3/media/{item_id}", auth),
        Probe("anonymous download", "GET", f"/v3/media/{item_id}", {}),
        Probe("delete", "DELETE", f"/v3/media/{item_id}", auth),
        Probe("readyz", "GET", "/readyz", {}),
    ]
    if bearer is not None:
        probes.append(
            Probe("search with a JWT", "GET", "/v3/media", {"Authorization": f"Bearer {bearer}"})
        )
    return probes


def fire(server: GunicornServer, probes: list[Probe]) -> dict[str, Answer]:
    """Send every probe at once (one connection each) while polling /healthz; return the
    answers by probe name, "healthz" being the slowest /healthz seen meanwhile."""
    done = threading.Event()

    def send(probe: Probe) -> Answer:
        started = time.monotonic()
        status, headers, body = server.request(
            probe.method, probe.path, body=probe.body, headers=probe.headers, timeout=60
        )
        return Answer(status, headers, body, time.monotonic() - started)

    def poll_healthz() -> Answer:
        slowest = Answer(0, {}, b"never polled", 0.0)
        while not done.is_set():
            answer = send(Probe("healthz", "GET", "/healthz", {}))
            if answer.status != 200 or answer.elapsed >= slowest.elapsed:
                slowest = answer
            if answer.status != 200:
                break
            time.sleep(0.1)
        return slowest

    with ThreadPoolExecutor(max_workers=len(probes) + 1) as pool:
        healthz = pool.submit(poll_healthz)
        futures = {probe.name: pool.submit(send, probe) for probe in probes}
        answers = {name: future.result() for name, future in futures.items()}
        done.set()
        answers["healthz"] = healthz.result()
    return answers


def assert_unavailable(name: str, answer: Answer, bound: float) -> None:
    """A 503 problem+json with Retry-After, within `bound` seconds."""
    assert answer.status == 503, f"{name}: {answer}"
    assert answer.headers.get("content-type") == "application/problem+json", f"{name}: {answer}"
    problem = json.loads(answer.body)
    assert {"type", "title", "detail", "instance"} <= problem.keys(), name
    assert "retry-after" in answer.headers, name
    assert answer.elapsed < bound, f"{name}: {answer} (bound {bound} s)"


def assert_alive(name: str, answer: Answer) -> None:
    assert answer.status == 200 and answer.elapsed < FAST, f"{name}: {answer}"


# --------------------------------------------------------------------------- MongoDB unreachable


@pytest.fixture(params=["stalled", "refused"])
def unreachable_mongo(request: pytest.FixtureRequest, tcp_proxy: Callable[..., TcpProxy]) -> str:
    """A MongoDB URL whose server accepts and never answers, or refuses connections."""
    if request.param == "stalled":
        return f"mongodb://{tcp_proxy(mode='stall').address}/media"
    return f"mongodb://127.0.0.1:{closed_port()}/media"


def mongo_env(tmp_path: Path, database_url: str, **extra: str) -> dict[str, str]:
    return server_env(
        tmp_path / "data",
        MEDIA_DATABASE_URL=database_url,
        MEDIA_BACKEND_TIMEOUT=str(BACKEND_TIMEOUT),
        GUNICORN_THREADS=GUNICORN_THREADS,
        **extra,
    )


def test_every_endpoint_answers_503_when_the_database_is_unreachable(
    tmp_path: Path,
    unreachable_mongo: str,
    gunicorn: Callable[..., GunicornServer],
    rsa_keypair: tuple[str, str],
) -> None:
    """`gunicorn app:app` started while MongoDB stalls or refuses comes up (no crash loop) and
    answers every endpoint — credentials live in the database, so authenticated ones too —
    with a 503 problem within the timeout plus one second, while /healthz answers at once."""
    server = gunicorn(mongo_env(tmp_path, unreachable_mongo))
    bearer = make_token("app-unreachable", rsa_keypair[0])
    for _ in range(2):  # a second round: nothing got stuck after the first timeouts
        answers = fire(server, every_endpoint(basic(API_KEY, "x" * 32), NO_SUCH_ITEM, bearer))
        assert_alive("healthz", answers.pop("healthz"))
        for name, answer in answers.items():
            assert_unavailable(name, answer, DATABASE_BOUND)
        time.sleep(SETUP_RETRY_SECONDS)  # the next round retries the database set-up too
    assert server.process.poll() is None, server.log()


def test_every_mongo_call_gives_up_within_its_timeout(tcp_proxy: Callable[..., TcpProxy]) -> None:
    """Behind the start-up guard above, each request ends in one of these calls: every one of
    them, against a MongoDB that accepts and never answers, raises BackendUnavailable within
    its timeout plus one second (pymongo's timeoutMS covers selection, connection and reply)."""
    timeout = 0.5
    settings = Settings(
        database_url=f"mongodb://{tcp_proxy(mode='stall').address}/media",
        storage_url="file:///nonexistent",
        backend_timeout=timeout,
    )
    database = mongo.MongoDatabase.from_settings(settings)
    media, credentials = mongo.MongoMediaRepository(database), mongo.MongoCredentialStore(database)
    item = make_item(ItemState.PENDING, datetime.now(UTC))
    query = SearchQuery(SearchScope("acct"), datetime.now(UTC), None, False, 0, 20)
    calls: dict[str, Callable[[], object]] = {
        "prepare_database": media.prepare_database,
        "insert": lambda: media.insert(item),
        "get": lambda: media.get(item.id),
        "mark_ready": lambda: media.mark_ready(item.id, {"etag": "0" * 32}),
        "update": lambda: media.update(item.id, {"title": "t"}, datetime.now(UTC)),
        "count_download": lambda: media.count_download(item.id, enforce_limit=True),
        "mark_deleting": lambda: media.mark_deleting(item.id),
        "remove": lambda: media.remove(item.id),
        "search": lambda: media.search(query),
        "iter_hidden": lambda: list(media.iter_hidden(datetime.now(UTC))),
        "referenced_keys": lambda: media.referenced_keys([item.id]),
        "ping": media.ping,
        "get_account": lambda: credentials.get_account("acct"),
        "get_application": lambda: credentials.get_application("app"),
    }
    try:
        for name, call in calls.items():
            started = time.monotonic()
            with pytest.raises(BackendUnavailable):
                call()
            elapsed = time.monotonic() - started
            assert elapsed < timeout + 1.0, f"{name} took {elapsed:.2f} s"
    finally:
        database.close()


# --------------------------------------------------------------------------- SQLite locked


@dataclass
class EmbeddedStore:
    env: dict[str, str]
    backends: Backends
    auth: dict[str, str]


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[EmbeddedStore]:
    """The embedded default under tmp_path, opened in-process too, with one account."""
    env = server_env(
        tmp_path / "data",
        MEDIA_BACKEND_TIMEOUT=str(BACKEND_TIMEOUT),
        GUNICORN_THREADS=GUNICORN_THREADS,
    )
    backends = open_backends(Settings.from_env(env))
    secret = generate_secret()
    backends.credentials.add_account(Account(API_KEY, *hash_secret(secret)))
    yield EmbeddedStore(env, backends, basic(API_KEY, secret))
    backends.close()


def upload(server: GunicornServer, auth: dict[str, str], content: bytes) -> str:
    probe = upload_probe(auth, content)
    status, _, body = server.request(
        probe.method, probe.path, body=probe.body, headers=probe.headers
    )
    assert status == 201, body
    item_id: str = json.loads(body)["id"]
    return item_id


def test_writes_answer_503_while_sqlite_is_locked(
    embedded: EmbeddedStore, gunicorn: Callable[..., GunicornServer]
) -> None:
    """Another process holding SQLite's write lock (a backup, a stuck admin session): every
    write — upload, update, delete, a counted download — waits out the busy timeout and is a
    503 within the timeout plus one second; reads keep working; nothing is half-made."""
    server = gunicorn(embedded.env)
    item_id = upload(server, embedded.auth, b"precious bytes")
    database = sqlite_path(Settings.from_env(embedded.env).database_url)

    lock = sqlite3.connect(database, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")
        answers = fire(server, every_endpoint(embedded.auth, item_id))
    finally:
        lock.execute("ROLLBACK")
        lock.close()

    assert_alive("healthz", answers.pop("healthz"))
    for name in ("upload", "update", "download", "delete"):
        assert_unavailable(name, answers.pop(name), DATABASE_BOUND)
    for name in ("search", "info", "readyz"):
        assert_alive(name, answers.pop(name))
    assert answers.pop("anonymous download").status == 401  # private: no database write needed
    assert answers == {}

    status, _, body = server.request("GET", f"/v3/media/{item_id}", headers=embedded.auth)
    assert status == 200 and body == b"precious bytes"
    assert_consistent(embedded.backends)


# --------------------------------------------------------------------------- S3 unreachable

S3_BUCKET = "media-unreachable"


@pytest.fixture
def moto_s3() -> Iterator[str]:
    """A real-HTTP S3 (moto's threaded server) on loopback with an empty bucket; its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=url, region_name="us-east-1").create_bucket(
            Bucket=S3_BUCKET
        )
        yield url
    finally:
        server.stop()


def test_stalled_s3_is_503_within_the_retry_bound_and_nothing_leaks(
    tmp_path: Path,
    moto_s3: str,
    tcp_proxy: Callable[..., TcpProxy],
    gunicorn: Callable[..., GunicornServer],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """S3 stops answering mid-life (SQLite stays healthy): what needs the bytes is a 503 within
    the bound s3.py's timeouts and retries imply, what needs only metadata keeps working, a
    delete is a 204 whose bytes the sweeper removes once S3 is back, /healthz never waits."""
    s3_address = urlsplit(moto_s3)
    proxy = tcp_proxy((s3_address.hostname, s3_address.port))
    env = server_env(
        tmp_path / "data",
        MEDIA_STORAGE_URL=f"s3://{S3_BUCKET}/items",
        AWS_ENDPOINT_URL_S3=f"http://{proxy.address}",
        MEDIA_BACKEND_TIMEOUT=str(BACKEND_TIMEOUT),
        GUNICORN_THREADS=GUNICORN_THREADS,
    )
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_s3)  # in-process checks go straight to S3
    backends = open_backends(Settings.from_env(env))
    try:
        secret = generate_secret()
        backends.credentials.add_account(Account(API_KEY, *hash_secret(secret)))
        auth = basic(API_KEY, secret)
        server = gunicorn(env)
        to_download = upload(server, auth, b"bytes to download")
        to_delete = upload(server, auth, b"bytes to delete")

        proxy.set_mode("stall")
        metadata_only = [
            Probe("search", "GET", "/v3/media", auth),
            Probe("info", "GET", f"/v3/media/{to_download}/info", auth),
        ]
        for name, answer in fire(server, metadata_only).items():
            assert_alive(name, answer)
        answers = fire(
            server,
            [
                upload_probe(auth),
                Probe("download", "GET", f"/v3/media/{to_download}", auth),
                Probe("readyz", "GET", "/readyz", {}),
                Probe("delete", "DELETE", f"/v3/media/{to_delete}", auth),
            ],
        )
        assert_alive("healthz", answers["healthz"])
        assert_unavailable("upload", answers["upload"], S3_UPLOAD_BOUND)
        assert_unavailable("download", answers["download"], S3_CALL_BOUND)
        assert_unavailable("readyz", answers["readyz"], S3_CALL_BOUND)
        delete = answers["delete"]
        assert delete.status == 204 and delete.elapsed < S3_CALL_BOUND, delete
        status, _, _ = server.request("GET", f"/v3/media/{to_delete}/info", headers=auth)
        assert status == 404

        # Before S3 comes back: what the failures left is invisible.
        left = {item.id: item.state for item in all_items(backends)}
        assert left.pop(to_download) is ItemState.READY
        assert left.pop(to_delete) is ItemState.DELETING
        assert set(left.values()) <= {ItemState.PENDING}  # the failed upload, if not undone

        proxy.set_mode("pass")
        swept = run_sweep(env, "--grace-seconds", "0")
        assert swept["deletes_finished"] == 1 and swept["errors"] == 0
        assert_consistent(backends)
        status, _, body = server.request("GET", f"/v3/media/{to_download}", headers=auth)
        assert status == 200 and body == b"bytes to download"
    finally:
        backends.close()


# --------------------------------------------------------------------------- the tool itself


def test_tcp_proxy_passes_drops_and_stalls(tcp_proxy: Callable[..., TcpProxy]) -> None:
    """The proxy the tests above rely on: relays in "pass", resets in "drop", stays silent in
    "stall" (a client waiting for an answer times out)."""
    with socket.create_server(("127.0.0.1", 0)) as upstream:
        proxy = tcp_proxy(upstream.getsockname())

        def echo_once() -> None:
            connection, _ = upstream.accept()
            with connection:
                connection.sendall(connection.recv(1024).upper())

        echo = threading.Thread(target=echo_once, daemon=True)
        echo.start()
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
            client.sendall(b"ping")
            assert client.recv(1024) == b"PING"
        echo.join(timeout=5)

        proxy.set_mode("drop")
        try:  # the reset may come before connect() has returned
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as client:
                received = client.recv(1024)
        except ConnectionResetError:
            received = b""
        assert received == b""

        proxy.set_mode("stall")
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=0.3) as client:
            client.sendall(b"ping")
            with pytest.raises(TimeoutError):
                client.recv(1024)
