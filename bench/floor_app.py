"""The stack's floor for items 5 and 7: the service's promised per-request work, written plainly.

bench/bare_app.py answers a constant. This app does, for each of the service's three small
requests, the work the service promises on it, with the same libraries and none of the service's
code, in the most direct way each library offers:

* every request: an X-Request-Id (uuid4), one JSON access line on stdout through `logging` (the
  service's fields), and Prometheus samples in multiprocess mode (a request counter, a duration
  histogram, an in-progress gauge; one backend-duration sample per database call);
* `/floor/info/<id>`: Basic auth checked with one keyed hash (the service caches verified
  credentials per process, so a repeat costs it the same), one SQLite `SELECT` of the item row,
  and its JSON document;
* `/floor/download/<id>`: the same, then the counting `UPDATE` (WAL, synchronous=NORMAL, as the
  service counts), the file's 1 KiB read, and the response with the headers the service
  promises (ETag, Last-Modified, Cache-Control, Vary, Content-Disposition, nosniff, CSP) and
  werkzeug's own conditional requests and ranges (`make_conditional`).

What the service spends beyond this app is what its own code costs; what this app spends beyond
bare Flask is what the promises cost on this stack. The bench prints both ratios.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import sqlite3
import sys
import threading
import time
import uuid
from typing import Any

from flask import Flask, Response, abort, g, request
from prometheus_client import Counter, Gauge, Histogram

ITEM_ID = "00000000-0000-4000-8000-000000000001"
API_KEY, API_SECRET = "floorkey", "floor-secret-0123456789"
BLOB_BYTES = bytes(range(256)) * 4
_PEPPER = b"floor-app-pepper"
_SECRET_DIGEST = hmac.new(_PEPPER, API_SECRET.encode(), hashlib.sha256).digest()

_COLUMNS = (
    "id TEXT PRIMARY KEY, account_id TEXT, application_id TEXT, original_file_name TEXT, "
    "mime_type TEXT, size INTEGER, etag TEXT, sha256 TEXT, public INTEGER, title TEXT, "
    "description TEXT, metadata_primary TEXT, metadata_secondary TEXT, storage_key TEXT, "
    "times_downloaded INTEGER, max_downloads_allowed INTEGER, time_created REAL, "
    "time_last_updated REAL, expires_at REAL"
)

data_dir = os.environ.get("MEDIA_DATA_DIR") or "."
blob_path = os.path.join(data_dir, "floor-blob")
db_path = os.path.join(data_dir, "floor.db")

log = logging.getLogger("floor.access")
log.setLevel(logging.INFO)
log.propagate = False
_handler = logging.StreamHandler(sys.stdout)
_handler.setFormatter(logging.Formatter("%(message)s"))
log.addHandler(_handler)

requests_total = Counter("floor_http_requests", "Requests.", ["method", "route", "status"])
request_seconds = Histogram("floor_http_request_duration_seconds", "Time.", ["method", "route"])
in_progress = Gauge("floor_http_requests_in_progress", "Now.", multiprocess_mode="livesum")
backend_seconds = Histogram("floor_backend_duration_seconds", "DB time.", ["operation"])

_local = threading.local()


def _connection() -> sqlite3.Connection:
    """This thread's connection; the first one of each thread also makes sure the item exists."""
    conn: sqlite3.Connection | None = getattr(_local, "conn", None)
    if conn is None:
        conn = sqlite3.connect(db_path, timeout=5, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode = WAL").fetchall()
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.row_factory = sqlite3.Row
        _prepare(conn)
        _local.conn = conn
    return conn


def _prepare(conn: sqlite3.Connection) -> None:
    """One item row and its blob. Every worker thread runs this once: it must be idempotent."""
    if not os.path.exists(blob_path):
        temporary = f"{blob_path}.{os.getpid()}.{threading.get_ident()}"
        with open(temporary, "wb") as out:
            out.write(BLOB_BYTES)
        os.replace(temporary, blob_path)
    conn.execute(f"CREATE TABLE IF NOT EXISTS items ({_COLUMNS})")
    now = time.time()
    conn.execute(
        "INSERT OR IGNORE INTO items VALUES (?, 'acc1', NULL, 'prompt.wav', 'audio/wav', ?, "
        "'0123456789abcdef0123456789abcdef', ?, 0, 'A prompt', 'Played on a call', "
        "'{}', '{}', ?, 0, NULL, ?, ?, NULL)",
        (ITEM_ID, len(BLOB_BYTES), "ab" * 32, blob_path, now, now),
    )


app = Flask(__name__)


def endpoints(url: str) -> dict[str, tuple[str, dict[str, str]]]:
    """The bench's names for this app's three requests at `url`: (URL, headers) each."""
    pair = f"{API_KEY}:{API_SECRET}".encode()
    auth = {"Authorization": "Basic " + base64.b64encode(pair).decode()}
    return {
        "floor /info": (f"{url}/floor/info/{ITEM_ID}", auth),
        "floor download": (f"{url}/floor/download/{ITEM_ID}", auth),
        "floor /healthz": (f"{url}/healthz", {}),
    }


@app.before_request
def _start() -> None:
    g.started = time.perf_counter()
    g.request_id = uuid.uuid4().hex
    in_progress.inc()


@app.after_request
def _finish(response: Response) -> Response:
    response.headers["X-Request-Id"] = g.request_id
    duration = time.perf_counter() - g.started
    route = request.url_rule.rule if request.url_rule else "<unmatched>"
    line = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "level": "INFO",
        "logger": log.name,
        "message": f"{request.method} {request.path} {response.status_code}",
        "pid": os.getpid(),
        "request_id": g.request_id,
        "method": request.method,
        "route": route,
        "path": request.path,
        "query": request.query_string.decode() or None,
        "status": response.status_code,
        "bytes_in": 0,
        "bytes_out": response.content_length,
        "response_length": response.content_length,
        "duration_ms": round(duration * 1000, 3),
        "account_id": g.get("account_id"),
        "application_id": None,
        "problem": None,
        "remote_addr": request.remote_addr,
        "user_agent": request.user_agent.string or None,
    }
    log.info(json.dumps(line))
    requests_total.labels(request.method, route, str(response.status_code)).inc()
    request_seconds.labels(request.method, route).observe(duration)
    in_progress.dec()
    return response


def _authenticate() -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, encoded = header.partition(" ")
    key, _, secret = base64.b64decode(encoded).decode().partition(":")
    digest = hmac.new(_PEPPER, secret.encode(), hashlib.sha256).digest()
    if scheme != "Basic" or key != API_KEY or not hmac.compare_digest(digest, _SECRET_DIGEST):
        abort(401)
    g.account_id = "acc1"


def _timed(operation: str, sql: str, *args: Any) -> sqlite3.Cursor:
    started = time.perf_counter()
    cursor = _connection().execute(sql, args)
    backend_seconds.labels(operation).observe(time.perf_counter() - started)
    return cursor


def _item(item_id: str) -> sqlite3.Row:
    row = _timed("get", "SELECT * FROM items WHERE id = ?", item_id).fetchone()
    if row is None:
        abort(404)
    return row


@app.get("/healthz")
def healthz() -> Any:
    return {"status": "ok"}


@app.get("/floor/info/<item_id>")
def info(item_id: str) -> Any:
    _authenticate()
    row = _item(item_id)
    document = dict(row)
    for name in ("time_created", "time_last_updated"):
        document[name] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(row[name]))
    return document


@app.get("/floor/download/<item_id>")
def download(item_id: str) -> Any:
    _authenticate()
    row = _item(item_id)
    counted = _timed(
        "count",
        "UPDATE items SET times_downloaded = times_downloaded + 1 WHERE id = ? AND "
        "(max_downloads_allowed IS NULL OR times_downloaded < max_downloads_allowed)",
        item_id,
    )
    if counted.rowcount != 1:
        abort(403)
    with open(row["storage_key"], "rb") as blob:
        body = blob.read()
    # The headers the service promises on a download, and werkzeug's own conditional requests
    # and ranges (a 304 or a 206 would not be counted by the service; the bench sends neither).
    response = Response(body, mimetype=row["mime_type"])
    response.set_etag(row["etag"])
    response.last_modified = row["time_last_updated"]
    response.cache_control.private = True
    response.cache_control.no_cache = True
    response.vary.add("Authorization")
    response.headers["Content-Disposition"] = (
        f'attachment; filename="{row["original_file_name"]}"; '
        f"filename*=UTF-8''{row['original_file_name']}"
    )
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Content-Security-Policy"] = "sandbox; default-src 'none'"
    return response.make_conditional(request, accept_ranges=True, complete_length=len(body))
