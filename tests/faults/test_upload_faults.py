"""Fault injection into the upload and delete sequences (SPEC §4.1 "nothing is lost and nothing
leaks", §4.5, §3 "a failing backend is 503, never a hang").

Two layers of faults:
* the ports themselves, wrapped in FaultyProxy, over both backend pairs (sqlite-files and
  mongomock-moto): a step of the sequence raises BackendUnavailable before or after its effect;
* the S3 adapter as deployed (its own retry and timeout configuration) under moto, with botocore
  event hooks answering errors or raising connection errors on chosen S3 operations.

Every test ends with `assert_consistent`: after a sweep nothing is half-made and no bytes are
left unreferenced.
"""

from __future__ import annotations

import io
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import EndpointConnectionError, ReadTimeoutError
from flask.testing import FlaskClient
from moto import mock_aws

from media_service.backends import open_backends
from media_service.factory import create_app
from media_service.service.sweeper import SweepReport, sweep
from media_service.storage.interfaces import Backends, ItemState
from tests.conftest import Credentials, make_settings, provision
from tests.faults.conftest import (
    FAR_FUTURE,
    MULTIPART_TYPE,
    FaultyApp,
    all_items,
    assert_consistent,
    blob_keys,
    multipart_body,
    open_multipart_uploads,
    visible_items,
)
from tests.problems import assert_problem

CONTENT = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 16


def post_upload(client: FlaskClient, headers: dict[str, str], content: bytes = CONTENT) -> Any:
    return client.post(
        "/v3/media",
        data=multipart_body(content, "sound.wav"),
        content_type=MULTIPART_TYPE,
        headers=headers,
    )


def assert_nothing_visible(client: FlaskClient, owner: Credentials) -> None:
    """Search (the only way to see items without knowing their id) shows nothing."""
    found = client.get("/v3/media?start_time=1970-01-01T00:00:00Z", headers=owner.basic)
    assert found.status_code == 200
    assert found.get_json()["count"] == 0


# --------------------------------------------------------------------------- upload, both pairs


def test_put_failing_answers_503_and_leaves_nothing(faulty: FaultyApp, owner: Credentials) -> None:
    """The blob store refusing the bytes is a 503 problem, and the PENDING document goes too."""
    faulty.blobs.fail("put")
    response = post_upload(faulty.client, owner.basic)
    assert_problem(response, 503)
    assert response.headers["Retry-After"]
    assert visible_items(faulty.backends) == []
    assert all_items(faulty.backends) == []  # the upload cleaned up after itself
    assert_nothing_visible(faulty.client, owner)
    assert_consistent(faulty.backends)


def test_put_and_its_cleanup_failing_leave_only_invisible_state(
    faulty: FaultyApp, owner: Credentials
) -> None:
    """A put that stored the bytes but reported failure, then a cleanup that fails as well:
    the PENDING document and its bytes stay behind, invisible, until the sweeper rolls them
    back."""
    faulty.blobs.fail("put", after=True)
    faulty.blobs.fail("delete")
    faulty.media.fail("remove")
    assert_problem(post_upload(faulty.client, owner.basic), 503)

    [left] = all_items(faulty.backends)
    assert left.state is ItemState.PENDING
    assert blob_keys(faulty.backends) == {left.id}
    assert_nothing_visible(faulty.client, owner)
    assert faulty.client.get(f"/v3/media/{left.id}/info", headers=owner.basic).status_code == 404
    assert faulty.client.get(f"/v3/media/{left.id}", headers=owner.basic).status_code == 404

    faulty.heal()
    report = assert_consistent(faulty.backends)
    assert report.pending_rolled_back == 1


def test_insert_failing_writes_no_bytes(faulty: FaultyApp, owner: Credentials) -> None:
    """The PENDING document comes first: when it cannot be written, no byte is stored."""
    faulty.media.fail("insert")
    assert_problem(post_upload(faulty.client, owner.basic), 503)
    assert faulty.blobs.call_counts["put"] == 0
    assert blob_keys(faulty.backends) == set()
    assert all_items(faulty.backends) == []
    assert_consistent(faulty.backends)


@dataclass(frozen=True)
class ReadyFault:
    """mark_ready fails (before or after taking effect) and maybe the cleanup fails too."""

    applied: bool  # mark_ready's change was committed but its answer was lost
    failing_cleanup: tuple[str, ...] = ()  # "port.method" that fail afterwards


READY_FAULTS = [
    pytest.param(ReadyFault(applied=False), id="refused"),
    pytest.param(ReadyFault(False, ("blobs.delete",)), id="refused-blob-cleanup-fails"),
    pytest.param(ReadyFault(False, ("media.remove",)), id="refused-doc-cleanup-fails"),
    pytest.param(ReadyFault(applied=True), id="answer-lost"),
    pytest.param(
        ReadyFault(True, ("blobs.delete",)),
        id="answer-lost-blob-cleanup-fails",
    ),
    pytest.param(
        ReadyFault(True, ("media.remove",)),
        id="answer-lost-doc-cleanup-fails",
    ),
]


@pytest.mark.parametrize("fault", READY_FAULTS)
def test_metadata_write_failing_after_the_bytes_were_stored(
    faulty: FaultyApp, owner: Credentials, fault: ReadyFault
) -> None:
    """The bytes are stored and marking the item READY fails: 503, and whatever the failed
    cleanup leaves is invisible until the sweeper removes it.

    With a lost answer the database did make the item READY; a failed upload must still leave
    no visible item (SPEC §4.1) — except when the database cannot be reached to undo it, and
    then the item must at least be whole.
    """
    faulty.media.fail("mark_ready", after=fault.applied)
    for failing in fault.failing_cleanup:
        port, method = failing.split(".")
        getattr(faulty, port).fail(method)

    assert_problem(post_upload(faulty.client, owner.basic), 503)
    assert faulty.blobs.call_counts["put"] == 1

    visible = visible_items(faulty.backends)
    if "media.remove" not in fault.failing_cleanup:  # the upload could undo its document
        assert visible == [], "a failed upload left a visible item"
        assert_nothing_visible(faulty.client, owner)
    for item in visible:  # only when the undo could not reach the database
        assert item.id in blob_keys(faulty.backends), "a visible item lost its bytes"

    faulty.heal()
    assert_consistent(faulty.backends)


def test_sweeper_rolling_back_a_slow_upload_makes_it_fail_cleanly(
    faulty: FaultyApp, owner: Credentials
) -> None:
    """An upload that outlives the grace period finds its PENDING item swept: 503, no item, no
    bytes (mark_ready answers "not PENDING" rather than resurrecting it)."""
    real_put = faulty.blobs.target.put
    reports: list[SweepReport] = []

    def put_then_sweep(key: str, source: Any) -> Any:
        stored = real_put(key, source)
        reports.append(sweep(faulty.backends, now=FAR_FUTURE, grace=timedelta(0)))
        return stored

    faulty.blobs.target.put = put_then_sweep  # type: ignore[method-assign]
    try:
        assert_problem(post_upload(faulty.client, owner.basic), 503)
    finally:
        del faulty.blobs.target.put
    assert reports[0].pending_rolled_back == 1
    assert all_items(faulty.backends) == []
    assert_consistent(faulty.backends)


# --------------------------------------------------------------------------- client disconnects


class BrokenInput(io.RawIOBase):
    """A request body that delivers `good` bytes and then fails the way a dropped client does:
    by raising `error`, or (error None) by ending early."""

    def __init__(self, good: bytes, error: BaseException | None) -> None:
        super().__init__()
        self._good = good
        self._error = error
        self._pos = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        if self._pos >= len(self._good):
            if self._error is not None:
                raise self._error
            return 0
        chunk = self._good[self._pos : self._pos + len(buffer)]
        buffer[: len(chunk)] = chunk
        self._pos += len(chunk)
        return len(chunk)


def post_broken(
    client: FlaskClient,
    owner: Credentials,
    stream: BrokenInput,
    content_length: int,
    input_terminated: bool,
) -> Any:
    """POST an upload whose body comes from `stream` while announcing `content_length` bytes."""
    environ: dict[str, Any] = {
        "wsgi.input": stream,
        "CONTENT_LENGTH": str(content_length),
        # Set here, not as content_type=: the test client would pick its own boundary.
        "CONTENT_TYPE": MULTIPART_TYPE,
    }
    if input_terminated:
        environ["wsgi.input_terminated"] = True
    return client.post("/v3/media", headers=owner.basic, environ_overrides=environ)


@pytest.mark.parametrize(
    ("error", "input_terminated"),
    [
        pytest.param(None, False, id="ends-early"),
        pytest.param(ConnectionResetError(104, "Connection reset by peer"), False, id="reset"),
        # gunicorn sets wsgi.input_terminated, so Werkzeug hands the raw socket reader over.
        pytest.param(None, True, id="ends-early-gunicorn-style"),
    ],
)
def test_client_disconnecting_mid_upload_leaves_nothing(
    faulty: FaultyApp,
    owner: Credentials,
    error: BaseException | None,
    input_terminated: bool,
) -> None:
    """A client that goes away half-way through the file gets a 400, leaves no item and, after
    the sweep, no bytes."""
    body = multipart_body(CONTENT * 600, "big.wav")
    stream = BrokenInput(body[: len(body) // 2], error)
    response = post_broken(faulty.client, owner, stream, len(body), input_terminated)
    assert_problem(response, 400)
    assert faulty.blobs.call_counts["put"] == 1  # the failure came mid-file, not before it
    assert visible_items(faulty.backends) == []
    assert_nothing_visible(faulty.client, owner)
    assert_consistent(faulty.backends)


def test_client_reset_under_gunicorn_is_a_client_error(
    faulty: FaultyApp, owner: Credentials
) -> None:
    """Under gunicorn (wsgi.input_terminated) a reset client makes the body read raise OSError;
    that is the client's failure (400, SPEC §3: no input gives a 500), and still leaves nothing."""
    body = multipart_body(CONTENT * 600, "big.wav")
    stream = BrokenInput(body[: len(body) // 2], ConnectionResetError(104, "reset by peer"))
    response = post_broken(faulty.client, owner, stream, len(body), input_terminated=True)
    assert visible_items(faulty.backends) == []
    assert_consistent(faulty.backends)
    assert_problem(response, 400)


# --------------------------------------------------------------------------- delete, both pairs


@pytest.fixture
def stored_item(faulty: FaultyApp, owner: Credentials) -> dict[str, Any]:
    created = post_upload(faulty.client, owner.basic)
    assert created.status_code == 201, created.get_json()
    return created.get_json()  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    "failures",
    [
        pytest.param((("blobs", "delete"),), id="blob-delete-fails"),
        pytest.param((("media", "remove"),), id="document-remove-fails"),
        pytest.param((("blobs", "delete"), ("media", "remove")), id="both-fail"),
    ],
)
def test_delete_finishes_through_the_sweeper(
    faulty: FaultyApp,
    owner: Credentials,
    stored_item: dict[str, Any],
    failures: tuple[tuple[str, str], ...],
) -> None:
    """Once the tombstone is written the delete has happened for the client: 204, the item is
    gone from info, download and search at once; the sweeper removes what the failure left."""
    item_id = stored_item["id"]
    for port, method in failures:
        getattr(faulty, port).fail(method)

    assert faulty.client.delete(f"/v3/media/{item_id}", headers=owner.basic).status_code == 204
    assert_problem(faulty.client.get(f"/v3/media/{item_id}/info", headers=owner.basic), 404)
    assert_problem(faulty.client.get(f"/v3/media/{item_id}", headers=owner.basic), 404)
    assert_problem(faulty.client.delete(f"/v3/media/{item_id}", headers=owner.basic), 404)
    assert_nothing_visible(faulty.client, owner)
    [left] = all_items(faulty.backends)
    assert left.state is ItemState.DELETING

    faulty.heal()
    report = assert_consistent(faulty.backends)
    assert report.deletes_finished == 1
    assert all_items(faulty.backends) == [] and blob_keys(faulty.backends) == set()


def test_tombstone_failing_keeps_the_item_whole(
    faulty: FaultyApp, owner: Credentials, stored_item: dict[str, Any]
) -> None:
    """If the tombstone cannot be written the delete did not happen: 503 and the item stays
    visible and downloadable, byte for byte."""
    item_id = stored_item["id"]
    faulty.media.fail("mark_deleting")
    assert_problem(faulty.client.delete(f"/v3/media/{item_id}", headers=owner.basic), 503)
    faulty.heal()
    got = faulty.client.get(f"/v3/media/{item_id}", headers=owner.basic)
    assert got.status_code == 200 and got.data == CONTENT
    report = assert_consistent(faulty.backends)
    assert report.deletes_finished == 0 and report.orphan_blobs_removed == 0


def test_download_with_the_blob_store_down_is_503(
    faulty: FaultyApp, owner: Credentials, stored_item: dict[str, Any]
) -> None:
    """Reading the bytes failing is a 503 problem (not a 500, not a truncated 200)."""
    faulty.blobs.fail("open")
    response = faulty.client.get(f"/v3/media/{stored_item['id']}", headers=owner.basic)
    assert_problem(response, 503)
    faulty.heal()
    assert_consistent(faulty.backends)


# --------------------------------------------------------------------------- S3 through botocore

S3_BUCKET = "media-faults"
# S3BlobStore.from_settings configures retries={"max_attempts": 3, "mode": "standard"}; botocore's
# max_attempts counts retries, so a call failing every time is attempted 4 times. Standard mode
# sleeps random() * scale * 2**i before retry i+1 (i = 0, 1, 2), with scale 1 s for throttling
# errors and 50 ms for others: at most 7 s, or 0.35 s, of back-off per call.
S3_ATTEMPTS = 1 + 3
THROTTLING_BACKOFF_BOUND = 1.0 * (1 + 2 + 4)
TRANSIENT_BACKOFF_BOUND = 0.05 * (1 + 2 + 4)
SLACK = 4.0  # the attempts themselves are instant here; cleanup calls, a slow machine


class _RawBody:
    """Just enough of urllib3's response for botocore to read an error document."""

    def __init__(self, body: bytes) -> None:
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body


def s3_error(status: int, code: str) -> Callable[..., AWSResponse]:
    """A before-send hook answering every request with an S3 error document."""
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code>'
        f"<Message>injected</Message><RequestId>fault</RequestId></Error>"
    ).encode()

    def answer(request: Any, **_: Any) -> AWSResponse:
        headers = {"Content-Type": "application/xml", "Content-Length": str(len(body))}
        return AWSResponse(request.url, status, headers, _RawBody(body))

    return answer


def s3_unreachable(request: Any, **_: Any) -> None:
    """A before-send hook failing every request as a refused connection does."""
    raise EndpointConnectionError(endpoint_url=request.url)


class S3Hooks:
    """Install botocore hooks on the store's own client, counting the attempts they fail."""

    ELSEWHERE = "https://fault-injection.invalid/"

    def __init__(self, client: Any) -> None:
        self.client = client
        self.attempts: Counter[str] = Counter()

    def before_send(self, operation: str, hook: Callable[..., AWSResponse | None]) -> None:
        """Run `hook` before every attempt of `operation`; a response it returns (or an error
        it raises) replaces the attempt. A hook returning None lets the attempt through."""

        def counted(request: Any, **kwargs: Any) -> AWSResponse | None:
            original = getattr(request, "_fault_original_url", None)
            if original is not None:  # a retry of an attempt failed below
                request.url = original
            try:
                response = hook(request=request, **kwargs)
            except Exception:
                self.attempts[operation] += 1
                raise
            if response is not None:
                self.attempts[operation] += 1
                # moto's own before-send stub runs after this hook, whatever it returns, and
                # would carry the request out; pointed elsewhere it stands aside, so a failed
                # attempt changes nothing in the bucket.
                request._fault_original_url = request.url
                request.url = self.ELSEWHERE
            return response

        self.client.meta.events.register_first(f"before-send.s3.{operation}", counted)

    def after_call(self, operation: str, error: Exception) -> None:
        """Let `operation` take effect in the bucket, then lose its answer (raise `error`)."""

        def lose_answer(**_: Any) -> None:
            self.attempts[operation] += 1
            raise error

        self.client.meta.events.register_first(f"after-call.s3.{operation}", lose_answer)


@dataclass
class S3App:
    backends: Backends
    client: FlaskClient
    hooks: S3Hooks
    owner: Credentials


@pytest.fixture
def s3_app(tmp_path: Path, rsa_keypair: tuple[str, str]) -> Iterator[S3App]:
    """SQLite metadata and the S3 store built by S3BlobStore.from_settings — the deployed
    retry and timeout configuration — on moto; uploads up to 32 MiB (multipart above 8 MiB)."""
    settings = make_settings(
        tmp_path,
        storage_url=f"s3://{S3_BUCKET}/items",
        max_upload_bytes=32 * 1024 * 1024,
        backend_timeout=1.0,
    )
    with mock_aws():
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=S3_BUCKET)
        backends = open_backends(settings)
        app = create_app(settings, backends=backends)
        app.config["TESTING"] = True
        owner = provision(backends, rsa_keypair, api_key="acct0001", application_id="app-one")
        try:
            yield S3App(backends, app.test_client(), S3Hooks(backends.blobs.client), owner)  # type: ignore[attr-defined]
        finally:
            backends.close()


def timed_upload(s3: S3App, content: bytes = CONTENT) -> tuple[Any, float]:
    started = time.monotonic()
    response = post_upload(s3.client, s3.owner.basic, content)
    return response, time.monotonic() - started


@pytest.mark.parametrize(
    ("hook", "backoff_bound"),
    [
        pytest.param(s3_error(500, "InternalError"), TRANSIENT_BACKOFF_BOUND, id="500"),
        pytest.param(s3_error(503, "SlowDown"), THROTTLING_BACKOFF_BOUND, id="throttled"),
        pytest.param(s3_unreachable, TRANSIENT_BACKOFF_BOUND, id="connection-refused"),
    ],
)
def test_s3_put_failing_on_every_retry(
    s3_app: S3App, hook: Callable[..., Any], backoff_bound: float
) -> None:
    """PutObject failing on every attempt is retried as configured, then answered 503 within the
    bound the retry policy implies; nothing is visible and nothing is left after the sweep."""
    s3_app.hooks.before_send("PutObject", hook)
    response, elapsed = timed_upload(s3_app)
    assert_problem(response, 503)
    assert s3_app.hooks.attempts["PutObject"] == S3_ATTEMPTS
    assert elapsed < backoff_bound + SLACK
    assert all_items(s3_app.backends) == []
    assert_consistent(s3_app.backends)


def test_s3_multipart_part_failing_aborts_the_upload(s3_app: S3App) -> None:
    """A 9 MiB file goes up in parts; when a part fails on every attempt the multipart upload
    is aborted (no invisible, billed parts remain) and the answer is 503."""
    s3_app.hooks.before_send("UploadPart", s3_error(500, "InternalError"))
    response, elapsed = timed_upload(s3_app, b"\x00" * (9 * 1024 * 1024))
    assert_problem(response, 503)
    assert elapsed < TRANSIENT_BACKOFF_BOUND + SLACK  # parts are retried in parallel
    assert open_multipart_uploads(s3_app.backends) == []
    assert all_items(s3_app.backends) == []
    assert_consistent(s3_app.backends)


@pytest.mark.parametrize(
    ("operation", "size"),
    [
        pytest.param("PutObject", len(CONTENT), id="single-put"),
        pytest.param("CompleteMultipartUpload", 9 * 1024 * 1024, id="multipart-completion"),
    ],
)
def test_s3_write_whose_answer_is_lost_is_undone(s3_app: S3App, operation: str, size: int) -> None:
    """S3 stored the object but the answer timed out: the store cannot know, so it deletes the
    object again; the upload is a 503 and no unreferenced object remains even before a sweep."""
    s3_app.hooks.after_call(operation, ReadTimeoutError(endpoint_url="http://s3.invalid"))
    response, _ = timed_upload(s3_app, (CONTENT * (size // len(CONTENT) + 1))[:size])
    assert_problem(response, 503)
    assert blob_keys(s3_app.backends) == set()
    assert open_multipart_uploads(s3_app.backends) == []
    assert_consistent(s3_app.backends)


def test_s3_delete_failing_is_finished_by_the_sweeper(s3_app: S3App) -> None:
    """DeleteObject failing on every attempt: the delete still answers 204 within the retry
    bound, the item is gone at once, and the sweeper removes the object later."""
    created = post_upload(s3_app.client, s3_app.owner.basic)
    assert created.status_code == 201
    item_id = created.get_json()["id"]

    fail_deletes = s3_error(500, "InternalError")
    failing = True

    def maybe_fail(**kwargs: Any) -> Any:
        return fail_deletes(**kwargs) if failing else None

    s3_app.hooks.before_send("DeleteObject", maybe_fail)
    started = time.monotonic()
    deleted = s3_app.client.delete(f"/v3/media/{item_id}", headers=s3_app.owner.basic)
    assert deleted.status_code == 204
    assert time.monotonic() - started < TRANSIENT_BACKOFF_BOUND + SLACK
    assert s3_app.hooks.attempts["DeleteObject"] == S3_ATTEMPTS
    info = s3_app.client.get(f"/v3/media/{item_id}/info", headers=s3_app.owner.basic)
    assert info.status_code == 404
    assert blob_keys(s3_app.backends) == {item_id}  # the bytes are still there ...

    failing = False
    report = assert_consistent(s3_app.backends)  # ... until the sweeper runs
    assert report.deletes_finished == 1
    assert blob_keys(s3_app.backends) == set()


def test_s3_get_failing_is_503_and_the_item_survives(s3_app: S3App) -> None:
    """GetObject failing on every attempt is a 503 problem; the item is untouched."""
    created = post_upload(s3_app.client, s3_app.owner.basic)
    item_id = created.get_json()["id"]
    failing = True

    def maybe_unreachable(**kwargs: Any) -> Any:
        return s3_unreachable(**kwargs) if failing else None

    s3_app.hooks.before_send("GetObject", maybe_unreachable)
    started = time.monotonic()
    assert_problem(s3_app.client.get(f"/v3/media/{item_id}", headers=s3_app.owner.basic), 503)
    assert time.monotonic() - started < TRANSIENT_BACKOFF_BOUND + SLACK
    failing = False
    got = s3_app.client.get(f"/v3/media/{item_id}", headers=s3_app.owner.basic)
    assert got.status_code == 200 and got.data == CONTENT
    assert_consistent(s3_app.backends)


def test_s3_down_mid_multipart_upload_gives_the_reservation_back(s3_app: S3App) -> None:
    """The deployed S3 adapter on moto: the first part of a 20 MiB upload goes up, then every
    request fails as a refused connection; 503, and the usage is what is stored."""
    api_key, mib = s3_app.owner.api_key, 1024 * 1024
    s3_app.backends.media.set_quota(api_key, 30 * mib, None)
    assert post_upload(s3_app.client, s3_app.owner.basic, b"a" * 1000).status_code == 201
    parts = {"sent": 0}

    def down_after_first_part(request: Any, **_: Any) -> None:
        parts["sent"] += 1
        if parts["sent"] > 1:
            raise EndpointConnectionError(endpoint_url=request.url)

    s3_app.hooks.before_send("UploadPart", down_after_first_part)
    assert_problem(post_upload(s3_app.client, s3_app.owner.basic, b"\x07" * (20 * mib)), 503)
    assert parts["sent"] > 1
    assert (
        quota_usage(s3_app.backends, api_key) == (1000, 1) == ready_usage(s3_app.backends, api_key)
    )
    assert_consistent(s3_app.backends)
    assert quota_usage(s3_app.backends, api_key) == (1000, 1)


def quota_usage(backends: Backends, api_key: str) -> tuple[int, int]:
    quota = backends.media.quota(api_key)
    return quota.bytes, quota.items


def ready_usage(backends: Backends, api_key: str) -> tuple[int, int]:
    items = [item for item in visible_items(backends) if item.account_id == api_key]
    return sum(item.media_size for item in items), len(items)
