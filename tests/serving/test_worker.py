"""The worker's pure helpers: where a request head ends, how much body the event loop reads,
and the problem documents it writes itself. (Its behaviour on sockets: tests/integration.)"""

from __future__ import annotations

import json

import pytest

from media_service.serving.worker import (
    SMALL_BODY,
    _buffered_body_length,
    _head_end,
    _timeout_response,
    problem_response,
)


@pytest.mark.parametrize(
    ("data", "end"),
    [
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 27),
        (b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody", 27),
        (b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", 31),  # empty lines before a request
        (b"GET / HTTP/1.1\nHost: x\n\n", 24),
        (b"GET / HTTP/1.1\r\nHost: x\r\n", None),
        (b"\r\n", None),
    ],
)
def test_head_end(data: bytes, end: int | None) -> None:
    assert _head_end(bytearray(data)) == end


HEAD = b"POST /v3/media HTTP/1.1\r\nHost: x\r\n"


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        (b"", 0),
        (b"Content-Length: 0\r\n", 0),
        (b"content-length:  120 \r\n", 120),
        (b"Content-Length: %d\r\n" % SMALL_BODY, SMALL_BODY),
        (b"Content-Length: %d\r\n" % (SMALL_BODY + 1), None),  # an upload: streamed
        (b"Transfer-Encoding: chunked\r\n", None),
        (b"Content-Length: 10\r\nExpect: 100-continue\r\n", None),  # client waits for the app
        (b"Content-Length: 5\r\nTransfer-Encoding: chunked\r\n", 0),  # the parser refuses it
        (b"Content-Length: 5\r\nContent-Length: 6\r\n", 0),  # likewise
        (b"Content-Length: 5x\r\n", 0),  # likewise
    ],
)
def test_buffered_body_length(fields: bytes, expected: int | None) -> None:
    assert _buffered_body_length(HEAD + fields + b"\r\n") == expected


def test_problem_response_is_a_complete_closing_http_response() -> None:
    raw = problem_response(431, "Request Header Fields Too Large", "Too big.", "rid-1")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert lines[0] == "HTTP/1.1 431 Request Header Fields Too Large"
    assert "Connection: close" in lines
    assert "Content-Type: application/problem+json" in lines
    assert "X-Request-Id: rid-1" in lines
    assert f"Content-Length: {len(body)}" in lines
    assert json.loads(body) == {
        "type": "about:blank",
        "title": "Request Header Fields Too Large",
        "status": 431,
        "detail": "Too big.",
        "instance": "rid-1",
    }


def test_timeout_response_echoes_only_a_valid_request_id() -> None:
    echoed = _timeout_response(b"GET / HTTP/1.1\r\nX-Request-Id: abc-123\r\nX-Slow: 1\r\n")
    assert b"X-Request-Id: abc-123\r\n" in echoed
    refused = _timeout_response(b"GET / HTTP/1.1\r\nX-Request-Id: <script>\r\n")
    assert b"<script>" not in refused
    assert json.loads(refused.partition(b"\r\n\r\n")[2])["status"] == 408
