"""The access log and the request metrics: exactly one line and one observation per request.

Two layers cooperate. `AccessMiddleware` wraps the WSGI app: it starts the clock, counts the
request body as it is read, and sees the status and the body as the server sends it. Flask's
`capture` after-request hook adds what only Flask knows: the URL rule, the principal, the
request id and the problem type of an error response.

A response whose body is in memory is logged as soon as the app returns it. A streamed one (a
download) is logged when the server closes it, with the bytes the server actually took: a client
that disconnects part-way shows up as `bytes_out` < `response_length`.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from time import perf_counter
from typing import TYPE_CHECKING, Any, BinaryIO, cast
from urllib.parse import parse_qsl, urlencode

from flask import Response, g, request

from media_service.errors import PROBLEM_JSON, PROBLEM_TYPE_BASE
from media_service.http.body import read_into
from media_service.observability.logging import log_fields
from media_service.observability.metrics import http_children, metrics

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

access_log = logging.getLogger("media_service.access")

EXCHANGE_KEY = "media_service.exchange"
LIMIT_REACHED = "download-limit-reached"  # the problem slug of errors.LimitReached
UNMATCHED_ROUTE = "<unmatched>"  # the route label of a path no URL rule matched
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
_SECRET_QUERY_PARAMETERS = frozenset({"jwt-token"})
_NO_BODY_STATUSES = frozenset({204, 304})


@dataclass(slots=True)
class Exchange:
    """What is known about one request and its response, filled in as it goes."""

    started: float
    method: str
    path: str
    query: str | None
    body: _BytesReadCounter | None
    request_id: str | None = None
    route: str | None = None
    status: int | None = None
    response_length: int | None = None  # the response's Content-Length header
    bytes_out: int = 0
    streamed: bool | None = None  # None: the Flask hook never saw the response
    account_id: str | None = None
    application_id: str | None = None
    problem: str | None = None
    remote_addr: str | None = None
    user_agent: str | None = None
    finished: bool = field(default=False, repr=False)

    @property
    def bytes_in(self) -> int:
        return self.body.count if self.body is not None else 0

    def finish(self) -> None:
        """Write the access log line and the request metrics, once."""
        if self.finished:
            return
        self.finished = True
        duration = perf_counter() - self.started
        status = self.status or 500
        fields = {
            "request_id": self.request_id,
            "method": self.method,
            "route": self.route,
            "path": self.path,
            "query": self.query,
            "status": status,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "response_length": self.response_length,
            "duration_ms": round(duration * 1000, 3),
            "account_id": self.account_id,
            "application_id": self.application_id,
            "problem": self.problem,
            "remote_addr": self.remote_addr,
            "user_agent": self.user_agent,
        }
        log_fields(access_log, f"{self.method} {self.path} {status}", fields)

        method = self.method if self.method in _METHODS else "other"
        children = http_children(method, self.route or UNMATCHED_ROUTE, status)
        children.requests.inc()
        children.request_duration.observe(duration)
        # In multiprocess mode every inc() is a locked write to an mmap'd file; adding 0 (the
        # body of a GET, the response of a HEAD) changes nothing, and the children exist anyway.
        if self.bytes_in:
            children.request_body_bytes.inc(self.bytes_in)
        if self.bytes_out:
            children.response_body_bytes.inc(self.bytes_out)
        family = metrics()
        if self.problem == LIMIT_REACHED:
            family.download_limit_refusals.inc()
        family.requests_in_progress.dec()


class AccessMiddleware:
    """WSGI middleware around the Flask app: see the module docstring."""

    def __init__(self, app: WSGIApplication) -> None:
        self.app = app

    def __call__(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        body = environ.get("wsgi.input")
        counted = _BytesReadCounter(body) if body is not None else None
        if counted is not None:
            environ["wsgi.input"] = counted
        exchange = Exchange(
            started=perf_counter(),
            method=str(environ.get("REQUEST_METHOD", ""))[:16],
            path=str(environ.get("PATH_INFO", ""))[:2048],
            query=safe_query(str(environ.get("QUERY_STRING", ""))),
            body=counted,
        )
        environ[EXCHANGE_KEY] = exchange
        metrics().requests_in_progress.inc()

        def _start_response(status: str, headers: list[tuple[str, str]], *exc_info: Any) -> Any:
            exchange.status = int(status[:3])
            exchange.response_length = _content_length(headers)
            return start_response(status, headers, *exc_info)

        try:
            result = self.app(environ, _start_response)
        except BaseException:
            exchange.status = 500  # what the server will answer
            exchange.finish()
            raise
        if exchange.streamed is False:
            exchange.bytes_out = _in_memory_body_length(exchange)
            exchange.finish()
            return result
        return _counting_body(result, exchange, environ)


def capture(response: Response) -> Response:
    """After-request hook: record what only Flask knows about this request."""
    req = cast(Any, request)._get_current_object()  # one context lookup, not one per attribute
    environ = req.environ
    exchange: Exchange | None = environ.get(EXCHANGE_KEY)
    if exchange is None:  # the app is being called without AccessMiddleware
        return response
    ctx_g = cast(Any, g)._get_current_object()
    # g.get, not getattr with a default: a missing attribute (no principal on /healthz) costs
    # flask's __getattr__ a KeyError and an AttributeError.
    request_id = ctx_g.get("request_id")
    if not request_id:
        # The factory's hook echoes g.request_id; make sure the log and the header agree.
        request_id = ctx_g.request_id = uuid.uuid4().hex  # rare: the factory's hook sets it
    exchange.request_id = request_id
    rule = req.url_rule
    exchange.route = rule.rule if rule is not None else None
    exchange.path = req.path[:2048]
    exchange.status = response.status_code  # provisional: start_response has the last word
    principal = ctx_g.get("principal")
    if principal is not None:
        exchange.account_id = getattr(principal, "account_id", None)
        exchange.application_id = getattr(principal, "application_id", None)
    exchange.remote_addr = environ.get("REMOTE_ADDR")  # what request.remote_addr reads
    exchange.user_agent = environ.get("HTTP_USER_AGENT", "")[:256] or None
    exchange.streamed = response.is_streamed
    exchange.problem = _problem_slug(response)
    return response


def safe_query(query: str) -> str | None:
    """The query string without the parameters that carry credentials (`jwt-token`)."""
    if not query:
        return None
    pairs = parse_qsl(query, keep_blank_values=True)
    kept = [(k, v) for k, v in pairs if k.lower() not in _SECRET_QUERY_PARAMETERS]
    return urlencode(kept)[:2048] or None


def _problem_slug(response: Response) -> str | None:
    """`download-limit-reached` for a problem+json body of that type, and so on."""
    # response.mimetype, without parsing the parameters
    mimetype = response.headers.get("Content-Type", "").partition(";")[0].strip().lower()
    if mimetype != PROBLEM_JSON or response.is_streamed:
        return None
    try:
        problem = json.loads(response.get_data())
    except ValueError:
        return None
    kind = problem.get("type") if isinstance(problem, dict) else None
    if isinstance(kind, str) and kind.startswith(PROBLEM_TYPE_BASE):
        return kind[len(PROBLEM_TYPE_BASE) :]
    return None


def _content_length(headers: list[tuple[str, str]]) -> int | None:
    for name, value in headers:
        if name.lower() == "content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _in_memory_body_length(exchange: Exchange) -> int:
    # Werkzeug sends no body for HEAD, 1xx, 204 and 304, whatever Content-Length says.
    status = exchange.status or 0
    if exchange.method == "HEAD" or status < 200 or status in _NO_BODY_STATUSES:
        return 0
    return exchange.response_length or 0


# --------------------------------------------------------------------------- counting bodies


class _BytesReadCounter:
    """The request body stream, counting the bytes the app reads from it (`bytes_in`)."""

    def __init__(self, stream: BinaryIO) -> None:
        self._stream = stream
        self.count = 0

    def read(self, size: int = -1, /) -> bytes:
        data = self._stream.read(size)
        self.count += len(data)
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:
        n = read_into(self._stream, buffer)
        self.count += n
        return n

    def readline(self, size: int = -1, /) -> bytes:
        data = self._stream.readline(size)
        self.count += len(data)
        return data

    def readlines(self, hint: int = -1, /) -> list[bytes]:
        lines = self._stream.readlines(hint)
        self.count += sum(len(line) for line in lines)
        return lines

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        line = self.readline()
        if not line:
            raise StopIteration
        return line

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _counting_body(
    result: Iterable[bytes], exchange: Exchange, environ: WSGIEnvironment
) -> Iterable[bytes]:
    """Wrap the response body so the bytes sent are counted and closing it finishes the log."""
    file_wrapper = environ.get("wsgi.file_wrapper")
    filelike = getattr(result, "filelike", None)
    if isinstance(file_wrapper, type) and isinstance(result, file_wrapper) and filelike is not None:
        # The server's own file wrapper (gunicorn's): keep one, so it can still use sendfile.
        counted = _CountingFile(filelike, exchange)
        return cast(Iterable[bytes], file_wrapper(counted, getattr(result, "blksize", 8192)))
    return _CountingBody(result, exchange)


class _CountingBody:
    """An iterable body; a chunk counts once the server comes back for the next one."""

    def __init__(self, body: Iterable[bytes], exchange: Exchange) -> None:
        self._body = body
        self._chunks = iter(body)
        self._exchange = exchange
        self._pending = 0  # handed to the server, not yet known to be written

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        self._settle()  # the server is back for more: the previous chunk was written
        chunk = next(self._chunks)
        self._pending = len(chunk)
        return chunk

    def _settle(self) -> None:
        self._exchange.bytes_out = _capped(self._exchange, self._exchange.bytes_out + self._pending)
        self._pending = 0

    def close(self) -> None:
        # A server that stops iterating before the end (the client went away) took the last
        # chunk but may not have written it: it stays pending, uncounted.
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._exchange.finish()


class _CountingFile:
    """A file handed to the server's file wrapper; the bytes sent are its highest position.

    With sendfile the server never calls read(): Python's socket.sendfile moves the file to
    where it stopped (`seek`) when it is done or interrupted, so the position still tells.
    """

    def __init__(self, file: Any, exchange: Exchange) -> None:
        self._file = file
        self._exchange = exchange
        self._start = self._position = self._highest = file.tell()

    def read(self, size: int = -1, /) -> bytes:
        data: bytes = self._file.read(size)
        self._moved(self._position + len(data))
        return data

    def seek(self, offset: int, whence: int = 0, /) -> int:
        position: int = self._file.seek(offset, whence)
        self._moved(position)
        return position

    def tell(self) -> int:
        return int(self._file.tell())

    def _moved(self, position: int) -> None:
        self._position = position
        self._highest = max(self._highest, position)

    def close(self) -> None:
        try:
            self._file.close()
        finally:
            self._exchange.bytes_out = _capped(self._exchange, self._highest - self._start)
            self._exchange.finish()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._file, name)


def _capped(exchange: Exchange, sent: int) -> int:
    # A server stops at Content-Length whatever the body still holds.
    limit = exchange.response_length
    return sent if limit is None else min(sent, limit)
