"""Requests gunicorn's HTTP parser refuses are answered as problem+json, like every other error.

Stock gunicorn wrote them as text/html without X-Request-Id, and its 8 KiB header field limit
answered 431 to tokens the service itself accepts (up to 16 KiB). Raw sockets, because HTTP
client libraries refuse to send most of these requests.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import pytest

from media_service.auth.tokens import MAX_TOKEN_LENGTH
from realservers.gunicorn_server import GunicornServer
from tests.integration.conftest import (
    LOOPBACK,
    StartServer,
    split_answer,
)
from tests.problems import assert_problem

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

Exchange = Callable[[bytes], tuple[int, dict[str, str], bytes]]


@pytest.fixture(scope="module")
def server(module_live_server: StartServer) -> GunicornServer:
    return module_live_server(workers=1, threads=2)


@pytest.fixture
def exchange(server: GunicornServer) -> Exchange:
    def send(request: bytes) -> tuple[int, dict[str, str], bytes]:
        with socket.create_connection((LOOPBACK, server.port), timeout=10) as sock:
            sock.sendall(request)
            sock.shutdown(socket.SHUT_WR)
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        return split_answer(answer)

    return send


@pytest.mark.parametrize(
    ("name", "request_bytes"),
    [
        (
            "content-length-and-transfer-encoding",
            b"POST /v3/media HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "duplicate-content-length",
            b"POST /v3/media HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n"
            b"Content-Length: 6\r\n\r\nhello!",
        ),
        (
            "obsolete-line-folding",
            b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Folded: a\r\n b\r\n\r\n",
        ),
        ("invalid-request-line", b"GET /healthz HTTP/1.1 extra\r\nHost: t\r\n\r\n"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_malformed_requests_get_400_problem(
    exchange: Exchange, name: str, request_bytes: bytes
) -> None:
    assert_problem(exchange(request_bytes), 400)


def test_too_long_uri_gets_414_problem(exchange: Exchange) -> None:
    query = b"a" * 9000
    answer = exchange(
        b"GET /v3/media?q=" + query + b" HTTP/1.1\r\nHost: t\r\nX-Request-Id: long-uri-1\r\n\r\n"
    )
    assert_problem(answer, 414)


def test_too_large_header_field_gets_431_problem(exchange: Exchange) -> None:
    huge = b"x" * (32 * 1024)
    answer = exchange(
        b"GET /v3/media HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer " + huge + b"\r\n\r\n"
    )
    assert_problem(answer, 431)


def test_too_many_header_fields_get_431_problem(exchange: Exchange) -> None:
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(150))
    assert_problem(exchange(b"GET /healthz HTTP/1.1\r\nHost: t\r\n" + fields + b"\r\n"), 431)


def test_the_longest_token_the_service_accepts_reaches_the_service(exchange: Exchange) -> None:
    """A MAX_TOKEN_LENGTH bearer token gets past the parser: the app, not gunicorn, answers."""
    token = b"e" * MAX_TOKEN_LENGTH
    answer = exchange(
        b"GET /v3/media HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
        b"X-Request-Id: big-token-1\r\nAuthorization: Bearer " + token + b"\r\n\r\n"
    )
    # 401 from the service's own token check (not a JWT), with its request id handling.
    document = assert_problem(answer, 401, request_id="big-token-1")
    assert str(document["type"]).startswith("urn:media-service:problem:")


def test_parser_errors_echo_a_valid_request_id(exchange: Exchange) -> None:
    answer = exchange(
        b"GET /healthz HTTP/1.1\r\nHost: t\r\nX-Request-Id: folded-1\r\n"
        b"Content-Length: 1\r\nContent-Length: 2\r\n\r\n"
    )
    assert_problem(answer, 400, request_id="folded-1")
