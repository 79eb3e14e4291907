"""SocketBody: a Content-Length body read straight from the socket into the caller's buffer,
with gunicorn's own bookkeeping kept (what is left to drain, a failed body)."""

from __future__ import annotations

import io
import socket
from collections.abc import Iterator

import pytest
from gunicorn.http.body import Body, LengthReader

from media_service.serving.limits import ClientTooSlow
from media_service.serving.worker import SocketBody, TimedSocketUnreader, _socket_body_fits


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    client, server = socket.socketpair()
    try:
        yield client, server
    finally:
        client.close()
        server.close()


def body_on(server: socket.socket, length: int, idle: float = 2.0) -> tuple[SocketBody, Body]:
    unreader = TimedSocketUnreader(server, idle_timeout=idle)
    reader = LengthReader(unreader, length)
    gunicorn_body = Body(reader)
    assert _socket_body_fits(gunicorn_body, reader, unreader)
    return SocketBody(gunicorn_body, reader, unreader), gunicorn_body


def read_all(body: SocketBody, size: int) -> bytes:
    out = bytearray()
    buffer = bytearray(size)
    while received := body.readinto(buffer):
        out += buffer[:received]
    return bytes(out)


def test_readinto_gets_the_head_read_ahead_first_then_the_socket(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    client, server = pair
    body, gunicorn_body = body_on(server, 10_000)
    # What gunicorn read past the request head is in its unreader's buffer.
    body._unreader.buf.write(b"h" * 300)
    client.sendall(b"s" * 9_700 + b"NEXT REQUEST")
    data = read_all(body, 4096)
    assert data == b"h" * 300 + b"s" * 9_700
    assert body._reader.length == 0  # nothing left for gunicorn to drain
    assert not gunicorn_body.failed
    assert server.recv(100) == b"NEXT REQUEST"  # never read past the body


def test_read_and_readinto_share_one_count(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    body, _ = body_on(server, 6_000)
    client.sendall(bytes(range(256)) * 24)  # 6,144 bytes: the body and 144 more
    first = body.read(1_000)
    rest = read_all(body, 2_048)
    assert first + rest == (bytes(range(256)) * 24)[:6_000]
    assert body.read(10) == b""


def test_a_client_too_slow_fails_the_body(pair: tuple[socket.socket, socket.socket]) -> None:
    client, server = pair
    body, gunicorn_body = body_on(server, 1_000, idle=0.2)
    client.sendall(b"x" * 10)
    assert body.readinto(bytearray(100)) == 10
    with pytest.raises(ClientTooSlow):
        body.readinto(bytearray(100))
    assert gunicorn_body.failed  # the connection is not reused: where the next request starts
    assert body._unreader.timed_out


def test_a_body_of_another_layout_keeps_gunicorns_own(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    _, server = pair
    unreader = TimedSocketUnreader(server, idle_timeout=1.0)
    reader = LengthReader(unreader, 10)
    gunicorn_body = Body(reader)
    assert _socket_body_fits(gunicorn_body, reader, unreader)
    del gunicorn_body.buf
    assert not _socket_body_fits(gunicorn_body, reader, unreader)
    other = TimedSocketUnreader(server, idle_timeout=1.0)
    assert not _socket_body_fits(Body(reader), reader, other)  # another connection's reader
    assert not _socket_body_fits(Body(io.BytesIO()), io.BytesIO(), unreader)
