"""gunicorn's gthread worker, hardened against slow clients and with problem+json parser errors.

Stock gthread hands a connection to one of its few pool threads as soon as it is accepted (the
thread then waits up to 5 s for a first byte) or readable, and the thread blocks until the whole
header block has arrived, with no deadline: a hundred clients sending a header line now and then
hold every thread. Here the worker's event loop collects the request head (and a body of up to
SMALL_BODY) itself, without a thread, and answers 408 to a client that does not finish within
GUNICORN_HEADER_TIMEOUT (or stalls its small body for GUNICORN_BODY_IDLE_TIMEOUT). A thread gets
a request only when it is ready; requests still streaming a large body queue behind ready ones
and never occupy every thread. In the thread, every socket read has a timeout:
GUNICORN_BODY_IDLE_TIMEOUT of silence, and the upload path's minimum rate (a RateFloor it hands
over under RATE_FLOOR_ENVIRON_KEY) as a deadline.

gunicorn writes its own errors (431, 414, 400 from the HTTP parser) as text/html without a
request id; `handle_error` here writes the same statuses as problem+json with an X-Request-Id.

Selected in config/gunicorn.conf.py; TLS and HTTP/2 connections keep the stock code path.
"""

from __future__ import annotations

import errno
import io
import json
import re
import selectors
import socket
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from gunicorn.http import errors as http_errors
from gunicorn.http.body import LengthReader
from gunicorn.http.unreader import SocketUnreader
from gunicorn.workers import gthread

from media_service.errors import PROBLEM_JSON, problem_document
from media_service.serving.limits import (
    RATE_FLOOR_ENVIRON_KEY,
    ClientTooSlow,
    RateFloor,
    ReadLimits,
)

_T = TypeVar("_T")

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")  # what the app accepts (factory.py)
_RECV_SIZE = 64 * 1024
# A worker holding more than this many connections per thread pauses its accepts for
# ACCEPT_PAUSE seconds after each one (MediaThreadWorker._share_connections).
ACCEPT_SHARE_FACTOR = 2
ACCEPT_PAUSE = 0.002
# gthread's loop as of gunicorn 24 (accepting switched on and off, one select per turn).
_CAN_PAUSE_ACCEPTS = all(
    hasattr(gthread.ThreadWorker, name)
    for name in ("set_accept_enabled", "wait_for_and_dispatch_events")
)
# Bodies up to this size are read by the event loop before the request gets a thread, as nginx
# buffers small bodies; larger ones (uploads) are streamed by the app.
SMALL_BODY = 64 * 1024
_HEAD_END = re.compile(rb"\r?\n\r?\n")
_CONTENT_LENGTH = re.compile(rb"\ncontent-length[ \t]*:[ \t]*([0-9]{1,12})[ \t]*\r?(?=\n)", re.I)
_TRANSFER_ENCODING = re.compile(rb"\ntransfer-encoding[ \t]*:", re.I)
_X_REQUEST_ID = re.compile(rb"\nx-request-id[ \t]*:[ \t]*([^\r\n]*?)[ \t]*\r?\n", re.I)
_EXPECT = re.compile(rb"\nexpect[ \t]*:", re.I)

# gunicorn exception -> (status, reason, problem title). Anything not listed is a server error.
_PARSER_ERRORS: list[tuple[type[BaseException], int, str]] = [
    (http_errors.LimitRequestLine, 414, "URI Too Long"),
    (http_errors.LimitRequestHeaders, 431, "Request Header Fields Too Large"),
    (http_errors.UnsupportedTransferCoding, 501, "Not Implemented"),
    (http_errors.ExpectationFailed, 417, "Expectation Failed"),
    (http_errors.ForbiddenProxyRequest, 403, "Forbidden"),
    (http_errors.ConfigurationProblem, 500, "Internal Server Error"),
]


class TimedSocketUnreader(SocketUnreader):
    """A SocketUnreader whose every recv() has a timeout; a missed one raises ClientTooSlow.

    The socket goes back to blocking after each read, so writes (downloads to slow readers)
    behave as before: Python's sendall timeout is a total, which would cut a slow download.
    """

    def __init__(self, sock: socket.socket, idle_timeout: float) -> None:
        super().__init__(sock)
        self.idle_timeout = idle_timeout
        self.deadline: float | None = None  # absolute, time.monotonic()
        self.floor: RateFloor | None = None
        self.floor_received = 0
        self.timed_out = False

    def watch_rate(self, floor: RateFloor) -> None:
        """Bound the body's remaining reads by `floor` (counted from now)."""
        self.floor = floor
        self.floor_received = 0

    def start_request(self, header_timeout: float) -> None:
        self.deadline = time.monotonic() + header_timeout
        self.floor = None

    def start_body(self) -> None:
        self.deadline = None

    def chunk(self, size_hint: int | None = None) -> bytes:
        data: bytes = self._timed(partial(SocketUnreader.chunk, self, size_hint))  # untyped
        self.floor_received += len(data)
        return data

    def recv_into(self, view: memoryview) -> int:
        """One recv() straight into `view`, under the same deadlines as chunk(); 0 at EOF."""
        received: int = self._timed(partial(self.sock.recv_into, view))
        self.floor_received += received
        return received

    def _timed(self, receive: Callable[[], _T]) -> _T:
        """Run one socket read with the nearest deadline as its timeout."""
        timeout = self.idle_timeout
        what = "idle for too long"
        if self.deadline is not None:
            left = self.deadline - time.monotonic()
            if left < timeout:
                timeout, what = left, "too slow sending its headers"
        if self.floor is not None:
            left = self.floor.remaining(self.floor_received)
            if left < timeout:
                timeout, what = left, f"slower than {self.floor.min_rate:g} bytes/s"
        if timeout <= 0:
            self.timed_out = True
            raise ClientTooSlow(f"The client was {what}.")
        self.sock.settimeout(timeout)
        try:
            return receive()
        except TimeoutError:
            self.timed_out = True
            raise ClientTooSlow(f"The client was {what}.") from None
        finally:
            try:
                self.sock.settimeout(None)
            except OSError:
                pass


class SocketBody:
    """wsgi.input for a body of known length on a TimedSocketUnreader: gunicorn's Body, plus
    readinto().

    gunicorn's Body only has read(): every byte of an upload passes through its unreader's
    BytesIO and its own, several copies into freshly allocated 1 MiB buffers per MiB (the
    profile of a 256 MiB upload: a fifth of the worker's CPU in those copies and the page faults
    of the new buffers). readinto() receives straight into the caller's buffer instead, once
    what gunicorn already holds (the head's read-ahead) has been handed on through Body itself.
    It keeps the LengthReader's count, so gunicorn still knows what is left to drain, and marks
    the body failed on an error, as Body does.
    """

    def __init__(self, body: Any, reader: LengthReader, unreader: TimedSocketUnreader) -> None:
        self._body = body
        self._reader = reader
        self._unreader = unreader

    def read(self, size: int | None = None) -> bytes:
        data: bytes = self._body.read(size)
        return data

    def readline(self, size: int | None = None) -> bytes:
        line: bytes = self._body.readline(size)
        return line

    def readlines(self, hint: int | None = None) -> list[bytes]:
        lines: list[bytes] = self._body.readlines(hint)
        return lines

    def __iter__(self) -> Any:
        return iter(self._body)

    def readinto(self, buffer: bytearray | memoryview) -> int:
        size = min(len(buffer), self._reader.length)
        # First what Body itself holds (already counted off the length), then the unreader's
        # read-ahead (not yet counted), never reading the socket to top them up.
        if held := _take(self._body.buf, len(buffer)):
            buffer[: len(held)] = held
            return len(held)
        if size <= 0:
            return 0
        if held := _take(self._unreader.buf, size):
            self._reader.length -= len(held)
            buffer[: len(held)] = held
            return len(held)
        try:
            received = self._unreader.recv_into(memoryview(buffer)[:size])
        except Exception:
            self._body.failed = True  # where the next request starts is unknown now
            raise
        self._reader.length -= received
        return received


def _socket_body_fits(body: Any, reader: Any, unreader: TimedSocketUnreader) -> bool:
    """Whether `body` is gunicorn's Body over a LengthReader on this connection's unreader, with
    the buffers SocketBody reads (gunicorn 23's layout); anything else keeps gunicorn's own."""
    return (
        isinstance(reader, LengthReader)
        and reader.unreader is unreader
        and isinstance(getattr(reader, "length", None), int)
        and isinstance(getattr(body, "buf", None), io.BytesIO)
        and isinstance(getattr(unreader, "buf", None), io.BytesIO)
    )


def _take(held: io.BytesIO, size: int) -> bytes:
    """Up to `size` bytes from the front of one of gunicorn's buffers (written to its end)."""
    if not held.seek(0, io.SEEK_END) or size <= 0:
        return b""
    data = held.getvalue()
    held.seek(0)
    held.truncate()
    held.write(data[size:])
    return data[:size]


class MediaThreadWorker(gthread.ThreadWorker):
    """gthread with header reading in the event loop, read deadlines and problem+json errors."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.limits = ReadLimits.from_env()
        # Connections whose request head (or small body) is still arriving -> their deadline.
        self.reading: dict[gthread.TConn, float] = {}
        # Complete requests waiting for a thread, and requests whose body is still to come.
        self.queued_ready: deque[gthread.TConn] = deque()
        self.queued_streaming: deque[gthread.TConn] = deque()
        self.busy = 0
        self._stop_linger: float | None = None
        self.busy_streaming = 0
        threads = self.cfg.threads
        self._streaming_threads = max(1, threads - max(1, threads // 4))
        # TLS handshakes and HTTP/2 prior-knowledge sniffing read the socket in the thread
        # first; those connections keep the stock path.
        self._simple = not self.cfg.is_ssl and not _h2c_prior_knowledge(self.cfg)
        # Past this size a header block is too large whatever it holds; the parser says why.
        self._max_head = (
            max(self.cfg.limit_request_line, 4094)
            + max(self.cfg.limit_request_fields, 100)
            * (max(self.cfg.limit_request_field_size, 8190) + 2)
            + 4
        )
        self._current = threading.local()  # the unreader of the request a pool thread serves
        # Accepting is paused until then (time.monotonic()): see _share_connections.
        self._accept_resume_at = 0.0
        self._crowded_at = ACCEPT_SHARE_FACTOR * threads

    # --- accepting: leave a sibling worker its share of a burst of connections -----------------

    def _share_connections(self) -> None:
        """After an accept: a worker holding more connections than it has threads, twice over,
        pauses its accepts for ACCEPT_PAUSE so that a sibling takes the next ones.

        The workers race to accept from one listening socket, and a client that opens its
        keep-alive connections at once (a load balancer's pool, wrk) could have every one of
        them land on one worker: its threads then juggle all of them, with many times the
        context switches per request, while its siblings idle (measured: a third of the
        throughput, for the whole life of those connections). With one worker there is no
        sibling, and nothing pauses.
        """
        if _CAN_PAUSE_ACCEPTS and self.cfg.workers > 1 and self.nr_conns > self._crowded_at:
            self._accept_resume_at = time.monotonic() + ACCEPT_PAUSE
            super().set_accept_enabled(False)

    def set_accept_enabled(self, enabled: bool) -> None:
        # gthread's loop re-enables accepting whenever it is below worker_connections.
        if enabled and time.monotonic() < self._accept_resume_at:
            return
        super().set_accept_enabled(enabled)

    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        # Wake when a pause ends, so that the loop turns accepting back on then.
        paused_for = self._accept_resume_at - time.monotonic()
        if paused_for > 0:
            timeout = min(timeout, paused_for)
        super().wait_for_and_dispatch_events(timeout)

    # --- the event loop: collect the request head (and a small body) without a thread ---------

    def accept(self, listener: socket.socket) -> None:
        try:
            self._accept(listener)
        finally:
            self._share_connections()

    def _accept(self, listener: socket.socket) -> None:
        if not self._simple:
            super().accept(listener)
            return
        try:
            client_sock, client_addr = listener.accept()
        except BlockingIOError:
            return
        except OSError as error:
            if error.errno == errno.ECONNABORTED:
                return
            raise
        self.nr_conns += 1
        conn = gthread.TConn(self.cfg, client_sock, client_addr, listener.getsockname())
        self._await_head(conn)

    def on_client_socket_readable(self, conn: gthread.TConn, client: socket.socket) -> None:
        """A kept-alive connection has its next request coming: read its head here too."""
        if not self._simple:
            super().on_client_socket_readable(conn, client)
            return
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        conn.sock.setblocking(False)
        self._await_head(conn)
        self._on_readable(conn)

    def _await_head(self, conn: gthread.TConn) -> None:
        conn.head = bytearray()
        conn.wanted = None  # bytes the head plus its small body add up to, once known
        self.reading[conn] = time.monotonic() + self.limits.header_timeout
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))

    def _on_readable(self, conn: gthread.TConn, _fileobj: object = None) -> None:
        if conn not in self.reading:
            return
        try:
            data = conn.sock.recv(_RECV_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:  # the client went away before its request was complete
            self._drop(conn)
            return
        conn.head += data
        if conn.wanted is None:
            head_end = _head_end(conn.head)
            if head_end is None and len(conn.head) <= self._max_head:
                return
            # Complete, or too large (the parser will say so): classify the request.
            body = _buffered_body_length(conn.head[:head_end]) if head_end else None
            conn.streaming = head_end is not None and body is None
            if body and head_end is not None:
                conn.wanted = head_end + body
                self.reading[conn] = time.monotonic() + self.limits.body_idle_timeout
            else:
                self._ready(conn)
                return
        else:
            self.reading[conn] = time.monotonic() + self.limits.body_idle_timeout
        if len(conn.head) >= conn.wanted:
            self._ready(conn)

    def _ready(self, conn: gthread.TConn) -> None:
        self.poller.unregister(conn.sock)
        del self.reading[conn]
        conn.data_ready = True  # stock handle() must not wait for data again
        self.enqueue_req(conn)

    def _drop(self, conn: gthread.TConn, *, answer: bytes | None = None) -> None:
        self.reading.pop(conn, None)
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        if answer is not None and conn.head.strip():  # only to a client that said something
            try:
                conn.sock.send(answer, socket.MSG_DONTWAIT)
            except OSError:
                pass
        self.nr_conns -= 1
        conn.close()

    def murder_pending(self) -> None:
        super().murder_pending()
        now = time.monotonic()
        if not self.alive and self._stop_linger is None:
            # Stopping: like stock gthread's kept-alive connections, requests still arriving get
            # a short while to complete (and are then served); after that they are dropped.
            self._stop_linger = now + gthread.STOP_KEEPALIVE_LINGER
        for conn, deadline in list(self.reading.items()):
            if self._stop_linger is not None and self._stop_linger <= now:
                self._drop(conn)
            elif deadline <= now:
                self.log.info("Closing connection from %s: request not sent in time", conn.client)
                self._drop(conn, answer=_timeout_response(conn.head))

    # --- scheduling: a pool thread only for a request that is ready to be served ------------

    def enqueue_req(self, conn: gthread.TConn) -> None:
        if not self._simple:
            super().enqueue_req(conn)
            return
        streaming = getattr(conn, "streaming", False)
        (self.queued_streaming if streaming else self.queued_ready).append(conn)
        self._dispatch()

    def _dispatch(self) -> None:
        """Hand queued connections to free threads; bodies still arriving never take them all.

        A request whose head (and small body) is in holds a thread only as long as the app
        needs; one still streaming a large body holds it for as long as the client sends, up to
        the rate floor. Ready requests go first, and streaming ones may occupy at most
        `threads - reserve` threads, so trickling uploads delay other uploads, not /healthz.
        """
        while self.busy < self.cfg.threads:
            if self.queued_ready:
                conn = self.queued_ready.popleft()
            elif self.queued_streaming and self.busy_streaming < self._streaming_threads:
                conn = self.queued_streaming.popleft()
                self.busy_streaming += 1
            else:
                return
            conn.holds_thread = True
            self.busy += 1
            super().enqueue_req(conn)

    def finish_request(self, conn: gthread.TConn, fs: Any) -> None:
        if getattr(conn, "holds_thread", False):
            conn.holds_thread = False
            self.busy -= 1
            if getattr(conn, "streaming", False):
                conn.streaming = False
                self.busy_streaming -= 1
        super().finish_request(conn, fs)
        self._dispatch()

    # --- the pool thread: headers are in; bound every further read ------------------------------

    def handle(self, conn: gthread.TConn) -> Any:
        head = getattr(conn, "head", None)
        if head is not None:
            conn.head = None
            conn.sock.setblocking(True)
            conn.init()
            unreader = conn.parser.unreader
            if not isinstance(unreader, TimedSocketUnreader):
                timed = TimedSocketUnreader(conn.sock, self.limits.body_idle_timeout)
                timed.buf = unreader.buf  # anything a previous request left
                conn.parser.unreader = unreader = timed
            unreader.unread(bytes(head))
        unreader = getattr(getattr(conn, "parser", None), "unreader", None)
        if isinstance(unreader, TimedSocketUnreader):
            unreader.start_request(self.limits.header_timeout)
        return super().handle(conn)

    def handle_request(self, req: Any, conn: gthread.TConn) -> Any:
        unreader = conn.parser.unreader
        if isinstance(unreader, TimedSocketUnreader):
            unreader.start_body()
        self._current.unreader = unreader  # for offer_rate_floor below, in this same thread
        try:
            return super().handle_request(req, conn)
        finally:
            self._current.unreader = None

    def load_wsgi(self) -> None:
        super().load_wsgi()
        app: Any = getattr(self, "wsgi")  # noqa: B009 - set by load_wsgi, untyped in gunicorn
        self.loaded_app = app  # the app itself, for worker_exit (gunicorn.conf.py)

        def offer_rate_floor(environ: dict[str, Any], start_response: Any) -> Any:
            unreader = getattr(self._current, "unreader", None)
            if isinstance(unreader, TimedSocketUnreader):
                environ[RATE_FLOOR_ENVIRON_KEY] = unreader.watch_rate
                body = environ.get("wsgi.input")
                reader = getattr(body, "reader", None)
                if _socket_body_fits(body, reader, unreader):
                    environ["wsgi.input"] = SocketBody(body, reader, unreader)
            return app(environ, start_response)

        self.wsgi = offer_rate_floor

    def _keepalive_after(self, conn: gthread.TConn, keepalive: bool) -> bool:
        unreader = conn.parser.unreader
        if isinstance(unreader, TimedSocketUnreader) and unreader.timed_out:
            return False  # the rest of the body is not coming in time: close
        try:
            return bool(super()._keepalive_after(conn, keepalive))
        except ClientTooSlow:
            return False

    # --- errors gunicorn answers itself ----------------------------------------------------------

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        status, title, detail = _classify(exc)
        if status >= 500:
            self.log.exception("Error handling request")
        else:
            peer = addr[0] if addr else ""
            self.log.warning("Invalid request from ip=%s: %s", peer, exc)
        # Header errors carry the half-parsed request, whose headers may hold the request id.
        request_id = _incoming_request_id(req or getattr(exc, "req", None))
        try:
            client.setblocking(True)
            client.settimeout(1.0)
            client.sendall(problem_response(status, title, detail, request_id))
        except Exception:
            self.log.debug("Failed to send error message.")


def _head_end(data: bytearray) -> int | None:
    """Offset just past the blank line ending the request head, if it has arrived."""
    start = len(data) - len(data.lstrip(b"\r\n"))  # empty lines before a request are allowed
    match = _HEAD_END.search(data, start)
    return match.end() if match else None


def _buffered_body_length(head: bytes | bytearray) -> int | None:
    """How much body the event loop reads before the request gets a thread.

    0: nothing (no body, or something odd such as two Content-Length fields that the parser
    refuses at once); n: a small body of n bytes; None: the thread streams it (a large body, a
    chunked one, or one behind Expect: 100-continue, whose client waits for the app).
    """
    lengths = _CONTENT_LENGTH.findall(head)
    if _TRANSFER_ENCODING.search(head):
        return 0 if lengths else None  # with a Content-Length too, the parser refuses it at once
    if len(lengths) > 1:
        return 0
    if _EXPECT.search(head):
        return None
    if not lengths:
        return 0
    length = int(lengths[0])
    return length if length <= SMALL_BODY else None


def _h2c_prior_knowledge(cfg: Any) -> bool:
    return getattr(cfg, "http2_cleartext", None) in ("prior-knowledge", "both")


def _classify(exc: BaseException) -> tuple[int, str, str]:
    if isinstance(exc, ClientTooSlow):
        return 408, "Request Timeout", str(exc)
    for kind, status, title in _PARSER_ERRORS:
        if isinstance(exc, kind):
            return status, title, _detail(status, exc)
    if isinstance(exc, http_errors.ParseException | ValueError):
        return 400, "Bad Request", f"The request is not valid HTTP/1.1: {exc}"
    return 500, "Internal Server Error", "An unexpected error occurred."


def _detail(status: int, exc: BaseException) -> str:
    if status == 414:
        return "The request line (method, path and query) is too long."
    if status == 431:
        return "A request header field is too large, or there are too many of them."
    return str(exc) or "The request is not valid HTTP/1.1."


def _incoming_request_id(req: Any) -> str:
    for name, value in getattr(req, "headers", None) or []:
        if name == "X-REQUEST-ID" and _REQUEST_ID.match(value):
            return str(value)
    return uuid.uuid4().hex


def problem_response(status: int, title: str, detail: str, request_id: str) -> bytes:
    """A complete HTTP/1.1 response carrying a problem document; the connection closes after."""
    body = json.dumps(problem_document(status, title, detail, request_id)).encode()
    head = (
        f"HTTP/1.1 {status} {title}\r\n"
        "Connection: close\r\n"
        f"Content-Type: {PROBLEM_JSON}\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"X-Request-Id: {request_id}\r\n"
        "\r\n"
    )
    return head.encode("latin-1") + body


def _timeout_response(head: bytes | bytearray) -> bytes:
    match = _X_REQUEST_ID.search(head)
    candidate = match.group(1).decode("latin-1") if match else ""
    return problem_response(
        408,
        "Request Timeout",
        "The request was not sent in time.",
        candidate if _REQUEST_ID.match(candidate) else uuid.uuid4().hex,
    )
