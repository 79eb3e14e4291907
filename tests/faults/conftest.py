"""Tools for the fault-injection suite: the consistency oracle, faulty ports, a loopback TCP proxy
that can drop or stall connections, and a real gunicorn on loopback
(`realservers.gunicorn_server`, the launcher the integration tests and the bench use too).

Every fault test ends the same way: `assert_consistent(backends)` runs the sweeper as if far in
the future and then checks the invariant of SPEC §4.1 and §4.5 — nothing is visible half-made
and no bytes are left unreferenced.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from media_service.factory import create_app
from media_service.service.sweeper import SweepReport, sweep
from media_service.settings import Settings
from media_service.storage.files import TEMP_DIR
from media_service.storage.interfaces import (
    Backends,
    BackendUnavailable,
    ItemState,
    MediaItem,
    SearchQuery,
    SearchScope,
)
from realservers.gunicorn_server import LOOPBACK, GunicornServer, service_env
from realservers.gunicorn_server import MEDIA_SERVICE as MEDIA_SERVICE_CLI

# The sweeper's clock for the final check: every PENDING item is then long dead and every blob
# long unreferenced, so whatever a fault left behind must go.
FAR_FUTURE = datetime(3000, 1, 1, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


# --------------------------------------------------------------------------- consistency oracle


def all_items(backends: Backends) -> list[MediaItem]:
    """Every metadata document, whatever its state (the port has no such listing: peek in)."""
    media: Any = backends.media
    if hasattr(media, "collection_name"):  # MongoDB
        docs = media.db.collection(media.collection_name).find({}, {"_id": True})
        ids = [str(doc["_id"]) for doc in docs]
    else:  # SQLite
        ids = [str(row[0]) for row in media.db.fetch("SELECT id FROM media_items")]
    items = [media.get(item_id, include_hidden=True) for item_id in ids]
    return [item for item in items if item is not None]


def visible_items(backends: Backends) -> list[MediaItem]:
    """The items the API can show (READY ones)."""
    return [item for item in all_items(backends) if item.state is ItemState.READY]


def blob_keys(backends: Backends) -> set[str]:
    return {blob.key for blob in backends.blobs.list_blobs()}


def temp_files(backends: Backends) -> list[Path]:
    """Temp files a file store's interrupted writes left behind (none for other stores)."""
    root = getattr(backends.blobs, "root", None)
    if root is None or not (Path(root) / TEMP_DIR).is_dir():
        return []
    return sorted((Path(root) / TEMP_DIR).iterdir())


def open_multipart_uploads(backends: Backends) -> list[str]:
    """Keys of S3 multipart uploads started and neither completed nor aborted (they cost money)."""
    blobs: Any = backends.blobs
    client = getattr(blobs, "client", None)
    if client is None:
        return []
    # Bucket-wide, filtered here: MinIO matches this Prefix only against whole object names.
    listing = client.list_multipart_uploads(Bucket=blobs.bucket)
    return [u["Key"] for u in listing.get("Uploads", []) if u["Key"].startswith(blobs.prefix)]


def read_blob(backends: Backends, key: str) -> bytes:
    stream = backends.blobs.open(key)
    try:
        return b"".join(stream)
    finally:
        stream.close()


def assert_consistent(backends: Backends) -> SweepReport:
    """Sweep as if far in the future, then check that nothing is half-made or unreferenced.

    * no PENDING or DELETING document remains;
    * every READY item's blob exists and holds exactly its bytes (size and MD5 = etag);
    * every blob belongs to a READY item; no temp file and no open multipart upload remains;
    * search shows exactly the READY items of each account.
    Returns the sweeper's report, so a test can also say what the sweep had to do.
    """
    owners = {item.account_id for item in all_items(backends)}
    report = sweep(backends, now=FAR_FUTURE, grace=timedelta(0))
    assert report.errors == 0, f"the sweeper failed on healthy backends: {report}"

    items = all_items(backends)
    hidden = [(item.id, item.state.value) for item in items if item.state is not ItemState.READY]
    assert hidden == [], f"hidden items survived the sweep: {hidden}"
    assert list(backends.media.iter_hidden(older_than=FAR_FUTURE)) == []

    keys = blob_keys(backends)
    for item in items:
        assert item.id in keys, f"READY item {item.id} has no blob"
        content = read_blob(backends, item.id)
        assert len(content) == item.media_size, f"READY item {item.id} has a truncated blob"
        assert hashlib.md5(content).hexdigest() == item.etag, f"READY item {item.id}: bad bytes"
    unreferenced = keys - {item.id for item in items}
    assert unreferenced == set(), f"unreferenced blobs survived the sweep: {unreferenced}"
    assert temp_files(backends) == [], "temp files survived the sweep"
    assert open_multipart_uploads(backends) == [], "open multipart uploads survived the sweep"

    for account in owners:
        page = backends.media.search(
            SearchQuery(
                scope=SearchScope(account),
                start_time=EPOCH,
                end_time=None,
                ascending=True,
                offset=0,
                limit=10_000,
            )
        )
        expected = {item.id for item in items if item.account_id == account}
        assert {item.id for item in page.items} == expected
        assert page.total == len(expected)
    return report


def make_item(
    state: ItemState,
    created: datetime,
    *,
    account: str = "acct0001",
    content: bytes = b"",
) -> MediaItem:
    """A document as the upload sequence writes it (content only sets size and etag)."""
    item_id = str(uuid.uuid4())
    return MediaItem(
        id=item_id,
        account_id=account,
        application_id=None,
        original_file_name="left-over.bin",
        mime_type="application/octet-stream",
        store_id="test",
        store_meta_params={},
        max_downloads_allowed=0,
        times_downloaded=0,
        etag=hashlib.md5(content).hexdigest(),
        media_size=len(content),
        time_created=created,
        time_last_updated=created,
        time_content_modified=created,
        public=False,
        state=state,
    )


# --------------------------------------------------------------------------- faulty ports


@dataclass(frozen=True)
class Fault:
    """What a FaultyProxy does to one method."""

    make_error: Callable[[], BaseException]
    calls: frozenset[int] | None  # 1-based call numbers that fail; None means every call
    after: bool  # run the real method first: the change happened, its answer was lost


class FaultyProxy:
    """Wrap a port: the methods told to `fail` raise on chosen calls, the rest pass through.

    `FaultyProxy(blobs, "blob store").fail("put")` makes every put raise BackendUnavailable;
    `.fail("mark_ready", after=True)` applies the change and then raises (a lost answer);
    `.fail("delete", calls={2})` fails only the second delete. Calls are counted per method.
    """

    def __init__(self, target: Any, port: str) -> None:
        self.target = target
        self.port = port
        self.call_counts: Counter[str] = Counter()
        self._faults: dict[str, Fault] = {}
        self._lock = threading.Lock()

    def fail(
        self,
        method: str,
        error: BaseException | Callable[[], BaseException] | None = None,
        *,
        calls: set[int] | None = None,
        after: bool = False,
    ) -> FaultyProxy:
        """Make `method` raise `error` (default: BackendUnavailable of this port)."""
        if not callable(getattr(self.target, method, None)):
            raise AttributeError(f"{type(self.target).__name__} has no method {method!r}")
        if error is None:
            port = self.port

            def make_error() -> BaseException:
                return BackendUnavailable(port, "injected fault")

        elif isinstance(error, BaseException):
            instance = error

            def make_error() -> BaseException:
                return instance

        else:
            make_error = error
        self._faults[method] = Fault(make_error, None if calls is None else frozenset(calls), after)
        return self

    def heal(self, *methods: str) -> None:
        """Stop failing `methods` (all when none are named)."""
        for method in methods or list(self._faults):
            self._faults.pop(method, None)

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self.target, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.call_counts[name] += 1
                number = self.call_counts[name]
            fault = self._faults.get(name)
            failing = fault is not None and (fault.calls is None or number in fault.calls)
            if not failing:
                return attribute(*args, **kwargs)
            assert fault is not None
            if fault.after:
                attribute(*args, **kwargs)
            raise fault.make_error()

        return call


@dataclass
class FaultyApp:
    """An app whose three ports are FaultyProxies over the `backends` fixture's adapters."""

    backends: Backends  # the real adapters: for inspection and the sweeper
    blobs: FaultyProxy
    media: FaultyProxy
    credentials: FaultyProxy
    app: Flask
    client: FlaskClient

    def heal(self) -> None:
        for proxy in (self.blobs, self.media, self.credentials):
            proxy.heal()


@pytest.fixture
def faulty(settings: Settings, backends: Backends) -> FaultyApp:
    blobs = FaultyProxy(backends.blobs, "blob store")
    media = FaultyProxy(backends.media, "database")
    credentials = FaultyProxy(backends.credentials, "database")
    wired = Backends(blobs=blobs, media=media, credentials=credentials)  # type: ignore[arg-type]
    app = create_app(settings, backends=wired)
    app.config["TESTING"] = True
    return FaultyApp(backends, blobs, media, credentials, app, app.test_client())


# --------------------------------------------------------------------------- multipart bodies

BOUNDARY = "fault-injection-boundary-7d1f"
MULTIPART_TYPE = f"multipart/form-data; boundary={BOUNDARY}"


def file_part_head(
    filename: str = "data.bin", content_type: str = "application/octet-stream"
) -> bytes:
    """The multipart framing before the bytes of the `filedata` part."""
    return (
        f"--{BOUNDARY}\r\n"
        f'Content-Disposition: form-data; name="filedata"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode()


FILE_PART_TAIL = f"\r\n--{BOUNDARY}--\r\n".encode()


def multipart_body(content: bytes, filename: str = "data.bin") -> bytes:
    """A whole upload body with one file part."""
    return file_part_head(filename) + content + FILE_PART_TAIL


# --------------------------------------------------------------------------- loopback TCP proxy


class TcpProxy:
    """A TCP proxy on 127.0.0.1 whose behaviour is switched by the test:

    * "pass": relay to `target` (connections without a target are closed);
    * "drop": reset every connection, new and open ones (like a crashed server);
    * "stall": accept and swallow whatever arrives, never answer (like a hung server or a
      black-holed network); open connections stop relaying.
    Always `stop()` it (or use it as a context manager): it closes every socket it opened.
    """

    MODES = ("pass", "drop", "stall")

    def __init__(self, target: tuple[str, int] | None = None, mode: str = "pass") -> None:
        self.target = target
        self._mode = self._checked(mode)
        self._listener = socket.create_server((LOOPBACK, 0))
        self._listener.settimeout(0.1)
        self.port = int(self._listener.getsockname()[1])
        self.accepted = 0
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._sockets: set[socket.socket] = set()
        self._threads: list[threading.Thread] = []
        self._spawn(self._accept_loop)

    @classmethod
    def _checked(cls, mode: str) -> str:
        if mode not in cls.MODES:
            raise ValueError(f"mode must be one of {cls.MODES}")
        return mode

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def mode(self) -> str:
        return self._mode

    def set_mode(self, mode: str) -> None:
        self._mode = self._checked(mode)
        if mode == "drop":
            with self._lock:
                victims = list(self._sockets)
            for sock in victims:
                self._reset(sock)

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            victims = list(self._sockets)
        for sock in victims:
            self._close(sock)
        for thread in self._threads:
            thread.join(timeout=5)

    # -- internals

    def _spawn(self, target: Callable[..., None], *args: Any) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True, name="tcp-proxy")
        self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _close(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)
        with contextlib.suppress(OSError):
            sock.close()

    def _reset(self, sock: socket.socket) -> None:
        # SO_LINGER on with a zero timeout: close() sends RST at once, as a dead peer would.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._close(sock)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed
            self.accepted += 1
            client.settimeout(None)
            self._track(client)
            mode = self._mode
            if mode == "drop" or (mode == "pass" and self.target is None):
                self._reset(client)
            elif mode == "stall":
                self._spawn(self._swallow, client)
            else:
                self._spawn(self._connect_and_relay, client)

    def _swallow(self, sock: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while not self._stopping.is_set() and sock.recv(65536):
                pass
        self._close(sock)

    def _connect_and_relay(self, client: socket.socket) -> None:
        assert self.target is not None
        try:
            upstream = socket.create_connection(self.target, timeout=5)
        except OSError:
            self._reset(client)
            return
        upstream.settimeout(None)
        self._track(upstream)
        self._spawn(self._relay, upstream, client)
        self._relay(client, upstream)

    def _relay(self, source: socket.socket, sink: socket.socket) -> None:
        try:
            while not self._stopping.is_set():
                data = source.recv(65536)
                if not data:
                    with contextlib.suppress(OSError):
                        sink.shutdown(socket.SHUT_WR)
                    return
                if self._mode == "pass":
                    sink.sendall(data)
                elif self._mode == "drop":
                    break
                # "stall": keep reading, relay nothing
        except OSError:
            pass
        self._close(source)
        self._close(sink)


@pytest.fixture
def tcp_proxy() -> Iterator[Callable[..., TcpProxy]]:
    """Factory: tcp_proxy(target=None, mode="pass"); every proxy is stopped after the test."""
    proxies: list[TcpProxy] = []

    def start(target: tuple[str, int] | None = None, mode: str = "pass") -> TcpProxy:
        proxy = TcpProxy(target, mode)
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.stop()


def closed_port() -> int:
    """A loopback port nothing listens on (it was free a moment ago)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


# --------------------------------------------------------------------------- real gunicorn


def server_env(data_dir: Path, **overrides: str) -> dict[str, str]:
    """A server's environment (`service_env`) with one worker and a short graceful stop."""
    return service_env(
        data_dir, {"WEB_CONCURRENCY": "1", "GUNICORN_GRACEFUL_TIMEOUT": "2", **overrides}
    )


def run_sweep(env: dict[str, str], *flags: str) -> dict[str, int]:
    """`media-service sweep FLAGS` with a server's configuration; its JSON report."""
    done = subprocess.run(
        [str(MEDIA_SERVICE_CLI), "sweep", *flags],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    report: dict[str, int] = json.loads(done.stdout)
    return report


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    """Poll `condition` until it holds; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def kill_worker(server: GunicornServer, worker: int, *, replaced: bool = True) -> None:
    """SIGKILL one worker; wait until the master has reaped it (and, if `replaced`, started the
    one new worker of a WEB_CONCURRENCY=1 server)."""
    os.kill(worker, signal.SIGKILL)
    wait_for(lambda: worker not in server.worker_pids(), "the killed worker to be reaped")
    if replaced:
        wait_for(lambda: len(server.worker_pids()) == 1, "the master to start a new worker")


@pytest.fixture
def gunicorn(tmp_path: Path) -> Iterator[Callable[..., GunicornServer]]:
    """Factory: gunicorn(env, app="app:app", wait=True) starts `.venv/bin/gunicorn --config
    config/gunicorn.conf.py <app>` on a free loopback port; every server is stopped afterwards.
    `env` should come from server_env(); PORT is set by the server."""
    servers: list[GunicornServer] = []

    def start(env: dict[str, str], *, app: str = "app:app", wait: bool = True) -> GunicornServer:
        server = GunicornServer(Path(env["MEDIA_DATA_DIR"]), env=env, app=app, log_dir=tmp_path)
        servers.append(server)
        return server.start(wait=wait)

    yield start
    for server in servers:
        server.stop()
