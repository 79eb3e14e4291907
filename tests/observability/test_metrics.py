"""Prometheus metrics: request, byte, refusal and backend counters move; the ports stay intact.

Metrics live for the process (tests build many apps), so every assertion is on a difference
between two scrapes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from media_service.context import AppState
from media_service.errors import PayloadTooLarge
from media_service.factory import create_app
from media_service.observability import instrument
from media_service.observability.metrics import exposition, multiprocess_mode
from media_service.settings import Settings
from media_service.storage.interfaces import (
    Backends,
    BackendUnavailable,
    BlobNotFound,
)
from tests.conftest import Credentials, Uploader
from tests.observability.support import Samples, Scrape, parse_metrics
from tests.observability.support import delta as moved

MiB = 1024 * 1024
UPLOADS = {"method": "POST", "route": "/v3/media"}
FAMILIES = {
    "media_http_requests",
    "media_http_request_duration_seconds",
    "media_http_requests_in_progress",
    "media_http_request_body_bytes",
    "media_http_response_body_bytes",
    "media_download_limit_refusals",
    "media_backend_operation_duration_seconds",
    "media_backend_errors",
}


def state(app: Flask) -> AppState:
    return app.extensions["media_service"]


# --------------------------------------------------------------------------- the endpoint


def test_metrics_endpoint_needs_no_credentials_and_parses(client: FlaskClient) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    with client.get("/metrics") as response:
        assert response.status_code == 200
        assert response.mimetype == "text/plain"
        assert "version=" in response.headers["Content-Type"]
        assert response.headers["Cache-Control"] == "no-store"
        text = response.get_data(as_text=True)
    names = {family.name for family in text_string_to_metric_families(text)}
    assert FAMILIES <= names
    assert not multiprocess_mode()  # no PROMETHEUS_MULTIPROC_DIR in the test process


def test_creating_many_apps_registers_the_metrics_once(
    settings: Settings, backends: Backends
) -> None:
    apps = [create_app(settings, backends=backends) for _ in range(3)]
    for app in apps:
        with app.test_client().get("/metrics") as response:
            assert response.status_code == 200
            assert parse_metrics(response.get_data(as_text=True))


# --------------------------------------------------------------------------- requests and bytes


def test_requests_are_counted_by_route_method_and_status(
    client: FlaskClient, scrape: Scrape
) -> None:
    before = scrape()
    for _ in range(3):
        with client.get("/healthz") as response:
            assert response.status_code == 200
    with client.get("/no/such/path") as response:
        assert response.status_code == 404
    with client.post("/healthz") as response:
        assert response.status_code == 405
    after = scrape()

    def delta(name: str, **labels: str) -> float:
        return moved(before, after, name, **labels)

    ok = {"method": "GET", "route": "/healthz", "status": "200"}
    assert delta("media_http_requests_total", **ok) == 3
    assert delta("media_http_request_duration_seconds_count", **ok) == 3
    assert delta("media_http_request_duration_seconds_bucket", **ok, le="+Inf") == 3
    assert delta("media_http_requests_total", method="GET", route="<unmatched>", status="404") == 1
    assert delta("media_http_requests_total", method="POST", route="<unmatched>", status="405") == 1
    assert delta("media_http_response_body_bytes_total", method="GET", route="/healthz") == 3 * len(
        b'{"status":"ok"}\n'
    )
    assert delta("media_http_requests_in_progress") == 0


def test_uploaded_and_downloaded_bytes_are_counted(
    client: FlaskClient, owner: Credentials, upload: Uploader, scrape: Scrape
) -> None:
    content = os.urandom(2 * MiB + 3)
    before = scrape()
    item_id = upload(owner.basic, content).get_json()["id"]
    with client.get(f"/v3/media/{item_id}", headers=owner.basic) as whole:
        assert whole.get_data() == content
    with client.get(f"/v3/media/{item_id}", headers={**owner.basic, "Range": "bytes=-10"}) as tail:
        assert tail.status_code == 206
        tail.get_data()
    after = scrape()

    uploaded = moved(before, after, "media_http_request_body_bytes_total", **UPLOADS)
    assert len(content) < uploaded < len(content) + 1024  # plus the multipart framing

    route = {"method": "GET", "route": "/v3/media/<item_id>"}
    sent = moved(before, after, "media_http_response_body_bytes_total", **route)
    assert sent == len(content) + 10
    for status in ("200", "206"):
        labels = {**route, "status": status}
        assert moved(before, after, "media_http_requests_total", **labels) == 1


def test_downloads_refused_by_the_limit_are_counted(
    client: FlaskClient, owner: Credentials, upload: Uploader, scrape: Scrape
) -> None:
    created = upload(owner.basic, b"once", public="true", max_downloads_allowed="2")
    item_id = created.get_json()["id"]
    before = scrape()
    statuses = []
    for _ in range(4):
        with client.get(f"/v3/media/{item_id}") as response:
            response.get_data()
            statuses.append(response.status_code)
    with client.get(f"/v3/media/{item_id}/info") as response:
        assert response.status_code == 401  # not a refusal by the limit
    after = scrape()
    assert statuses == [200, 200, 403, 403]
    assert moved(before, after, "media_download_limit_refusals_total") == 2


# --------------------------------------------------------------------------- backends


def test_a_failing_backend_is_a_503_and_an_error_count(
    app: Flask,
    client: FlaskClient,
    backends: Backends,
    owner: Credentials,
    upload: Uploader,
    scrape: Scrape,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    item_id = upload(owner.basic, b"bytes").get_json()["id"]
    before = scrape()

    def down(*args: Any, **kwargs: Any) -> Any:
        raise BackendUnavailable("media repository", "timed out")

    # Patch the adapter's class: the app's adapter times whatever its class holds.
    monkeypatch.setattr(type(backends.media), "get", down)
    with client.get(f"/v3/media/{item_id}/info", headers=owner.basic) as response:
        assert response.status_code == 503
        assert response.mimetype == "application/problem+json"
    after = scrape()

    labels = {"port": "media_repository", "operation": "get"}
    unavailable = {**labels, "error": "BackendUnavailable"}
    assert moved(before, after, "media_backend_errors_total", **unavailable) == 1
    assert moved(before, after, "media_backend_operation_duration_seconds_count", **labels) >= 1
    served = {"method": "GET", "route": "/v3/media/<item_id>/info", "status": "503"}
    assert moved(before, after, "media_http_requests_total", **served) == 1


def test_every_port_call_is_timed(
    client: FlaskClient, owner: Credentials, upload: Uploader, scrape: Scrape
) -> None:
    before = scrape()
    item_id = upload(owner.basic, b"bytes").get_json()["id"]
    with client.get(f"/v3/media/{item_id}", headers=owner.basic) as response:
        response.get_data()
    after = scrape()

    def calls(port: str, operation: str) -> float:
        name = "media_backend_operation_duration_seconds_count"
        labels = {"port": port, "operation": operation}
        return moved(before, after, name, **labels)

    assert calls("credential_store", "get_account") >= 1  # a verified-secret cache may skip one
    assert calls("blob_store", "put") == 1
    assert calls("blob_store", "open") == 2  # the upload's audio-facts head, and the download
    assert calls("media_repository", "insert") == 1
    assert calls("media_repository", "count_download") == 1


# --------------------------------------------------------------------------- instrumented ports


class FakeStore:
    """A port with the shapes the real ones have: a property, a stream, a generator."""

    store_id = "fake"

    def __init__(self) -> None:
        self.closed_listing = False
        self.limit = 3

    def open(self, key: str, start: int = 0, length: int | None = None) -> Any:
        if key == "missing":
            raise BlobNotFound(key)
        return self  # any object: it must come back as it is

    def list_blobs(self) -> Iterator[int]:
        try:
            for n in range(self.limit):
                if n == 99:
                    raise BackendUnavailable("blob store", "listing failed")
                yield n
        finally:
            self.closed_listing = True

    def put(self, key: str, source: Any) -> None:
        raise PayloadTooLarge("too big")  # the upload's own error, raised through the port

    def ping(self) -> None:
        pass

    def delete(self, key: str) -> None:
        pass

    @classmethod
    def from_settings(cls) -> FakeStore:
        return cls()


def _instrumented(store: Any) -> Any:
    backends = Backends(blobs=store, media=object(), credentials=object())  # type: ignore[arg-type]
    return instrument(backends).blobs


def test_instrumented_ports_stay_themselves() -> None:
    store = FakeStore()
    timed = _instrumented(store)
    assert timed is store and type(timed) is FakeStore
    assert timed.store_id == "fake"
    assert timed.open("key") is store
    assert timed.from_settings.__self__ is FakeStore  # classmethods are not operations
    store.helper = print  # a callable the adapter holds comes back as itself
    assert timed.helper is print
    for member in ("store_id", "put", "open", "delete", "list_blobs", "ping"):
        assert hasattr(timed, member), member  # every member of the BlobStore protocol
    assert list(timed.list_blobs()) == [0, 1, 2]
    with pytest.raises(BlobNotFound):
        timed.open("missing")
    with pytest.raises(AttributeError):
        timed.no_such_method  # noqa: B018


def test_an_adapter_calling_itself_is_timed_once() -> None:
    class Calling(FakeStore):
        def delete(self, key: str) -> None:
            self.ping()

    store = _instrumented(Calling())
    before = _scrape_process()
    store.delete("key")
    after = _scrape_process()
    name = "media_backend_operation_duration_seconds_count"
    assert moved(before, after, name, port="blob_store", operation="delete") == 1
    assert moved(before, after, name, port="blob_store", operation="ping") == 0


def test_instrument_is_idempotent_and_keeps_the_backends(backends: Backends) -> None:
    once = instrument(backends)
    timed_get = once.media.get
    twice = instrument(once)
    assert once is backends and twice is backends
    assert twice.media.get is timed_get  # not timed twice
    assert once.blobs.store_id == backends.blobs.store_id


def test_file_streams_keep_their_file(app: Flask, owner: Credentials, upload: Uploader) -> None:
    item_id = upload(owner.basic, b"abc").get_json()["id"]
    blobs = state(app).backends.blobs
    assert hasattr(vars(blobs)["open"], "__instrumented__")
    item = state(app).backends.media.get(item_id)
    assert item is not None
    stream = blobs.open(item.id)
    try:
        if blobs.store_id == "file":
            assert stream.file.read() == b"abc"
        else:
            assert b"".join(stream) == b"abc"
    finally:
        stream.close()


def _scrape_process() -> Samples:
    body, _ = exposition()
    return parse_metrics(body.decode())


def test_generators_are_timed_over_their_iteration_and_errors_counted() -> None:
    store = FakeStore()
    timed = _instrumented(store)
    before = _scrape_process()

    listing = timed.list_blobs()
    assert next(listing) == 0
    listing.close()  # a consumer that stops early closes the adapter's generator too
    assert store.closed_listing

    store.limit = 100
    with pytest.raises(BackendUnavailable):
        list(timed.list_blobs())
    with pytest.raises(PayloadTooLarge):
        timed.put("key", None)
    after = _scrape_process()

    def delta(name: str, **labels: str) -> float:
        return moved(before, after, name, **labels)

    listing_labels = {"port": "blob_store", "operation": "list_blobs"}
    assert delta("media_backend_operation_duration_seconds_count", **listing_labels) == 2
    assert delta("media_backend_errors_total", **listing_labels, error="BackendUnavailable") == 1
    put = {"port": "blob_store", "operation": "put"}
    assert delta("media_backend_operation_duration_seconds_count", **put) == 1
    assert delta("media_backend_errors_total", **put, error="PayloadTooLarge") == 0
