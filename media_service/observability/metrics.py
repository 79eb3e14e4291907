"""Prometheus metrics: created once per process, exposed at /metrics.

prometheus_client chooses between in-memory values and gunicorn-friendly multiprocess files (one
per worker, summed at scrape time) when it is first imported, from PROMETHEUS_MULTIPROC_DIR. So
it is imported here only inside functions, at app creation in the worker, after
config/gunicorn.conf.py has set that variable — never when media_service is imported.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from prometheus_client import Counter, Gauge, Histogram

# Requests range from a metadata read (milliseconds) to a large upload or download (minutes).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
BACKEND_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(frozen=True)
class Metrics:
    """The service's metric families (see README for what each one means)."""

    requests: Counter
    request_duration: Histogram
    requests_in_progress: Gauge
    request_body_bytes: Counter
    response_body_bytes: Counter
    download_limit_refusals: Counter
    backend_duration: Histogram
    backend_errors: Counter
    disk_free_bytes: Gauge


_lock = threading.Lock()
_metrics: Metrics | None = None


def metrics() -> Metrics:
    """This process's metrics, created (and registered) on first use.

    Registering the same name twice raises, and tests build hundreds of apps in one process:
    the families live for the process, not for an app.
    """
    global _metrics
    if _metrics is None:
        with _lock:
            if _metrics is None:
                _metrics = _create()
    return _metrics


@dataclass(frozen=True, slots=True)
class HttpChildren:
    """The labelled children one (method, route, status) observes: bound once, then reused."""

    requests: Counter
    request_duration: Histogram
    request_body_bytes: Counter
    response_body_bytes: Counter


# (method, route, status) -> its children. `labels()` validates and hashes its arguments and takes
# a lock on every call; the key space is small (methods x URL rules x statuses).
_http_children: dict[tuple[str, str, int], HttpChildren] = {}


def http_children(method: str, route: str, status: int) -> HttpChildren:
    """The request metrics' children for these labels (method and route already normalised)."""
    key = (method, route, status)
    children = _http_children.get(key)
    if children is None:
        family = metrics()
        code = str(status)
        children = HttpChildren(
            requests=family.requests.labels(method, route, code),
            request_duration=family.request_duration.labels(method, route, code),
            request_body_bytes=family.request_body_bytes.labels(method, route),
            response_body_bytes=family.response_body_bytes.labels(method, route),
        )
        _http_children[key] = children
    return children


def _create() -> Metrics:
    from prometheus_client import Counter, Gauge, Histogram

    http = ("method", "route", "status")
    return Metrics(
        requests=Counter("media_http_requests", "HTTP requests answered.", http),
        request_duration=Histogram(
            "media_http_request_duration_seconds",
            "Time from receiving a request to sending the last byte of its response.",
            http,
            buckets=REQUEST_BUCKETS,
        ),
        requests_in_progress=Gauge(
            "media_http_requests_in_progress",
            "Requests being handled (including responses still streaming).",
            # livesum: the sum over live workers; gunicorn's child_exit drops a dead one's files.
            multiprocess_mode="livesum",
        ),
        request_body_bytes=Counter(
            "media_http_request_body_bytes",
            "Request body bytes read (uploads: method POST, route /v3/media).",
            ("method", "route"),
        ),
        response_body_bytes=Counter(
            "media_http_response_body_bytes",
            "Response body bytes sent (downloads: route /v3/media/<item_id>).",
            ("method", "route"),
        ),
        download_limit_refusals=Counter(
            "media_download_limit_refusals",
            "Anonymous downloads refused because the item reached max_downloads_allowed.",
        ),
        backend_duration=Histogram(
            "media_backend_operation_duration_seconds",
            "Time spent in one call of a port (blob store, media repository, credential store).",
            ("port", "operation"),
            buckets=BACKEND_BUCKETS,
        ),
        backend_errors=Counter(
            "media_backend_errors",
            "Port calls that raised, by exception type (BackendUnavailable means a 503).",
            ("port", "operation", "error"),
        ),
        disk_free_bytes=Gauge(
            "media_disk_free_bytes",
            "Free bytes on each local volume the service writes (blob_store, database), as last"
            " sampled by any worker (at each scrape, upload and /readyz).",
            ("volume",),
            # One disk seen by every worker: the latest sample is the truth, not a sum.
            multiprocess_mode="mostrecent",
        ),
    )


def observe_disk_free(volume: str, free: int) -> None:
    """Record a volume's free bytes (the DiskGuard's observer)."""
    metrics().disk_free_bytes.labels(volume).set(free)


def multiprocess_mode() -> bool:
    """Whether this process's values live in PROMETHEUS_MULTIPROC_DIR files."""
    from prometheus_client import values

    # The value class was fixed when prometheus_client was first imported; that choice, not the
    # environment as it is now, says where the numbers are.
    return values.ValueClass is not values.MutexValue


def exposition() -> tuple[bytes, str]:
    """The text exposition of every metric, and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

    metrics()  # so that a scrape before the first request still lists the families
    if multiprocess_mode():
        from prometheus_client.multiprocess import MultiProcessCollector

        # A fresh registry per scrape that reads every worker's files: whichever worker answers,
        # the numbers are the whole server's.
        registry = CollectorRegistry()
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
