"""Slow and silent clients cannot take the service down (a real gunicorn on loopback).

The hostile-user probe: 100 anonymous connections sending one header line now and then, and 40
authenticated uploads sending one body byte now and then, made /healthz probes time out, because
each such connection held one of gunicorn's few threads for as long as the client liked. With
the deadlines lowered so that slow clients are cut within about a second, /healthz and a normal
authenticated request must keep answering in well under a second while the attack goes on (the
attackers reconnect when cut), and every attacking connection must be cut, not served.
"""

from __future__ import annotations

import base64
import json
import selectors
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from realservers.gunicorn_server import GunicornServer
from tests.integration.conftest import (
    LOOPBACK,
    StartServer,
    create_account,
    http_session,
    upload,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(120)]

SLOW_HEADERS = 100
SLOW_BODIES = 40
TRICKLE_INTERVAL = 0.25  # seconds between the attackers' lines or bytes
HEADER_TIMEOUT = 1.5
BODY_IDLE_TIMEOUT = 1.0  # longer than the trickle interval: only the rate floor cuts them
MIN_RATE = 4096
RATE_WINDOW = 0.3
PROBES = 12
PROBE_INTERVAL = 0.25
PROBE_BOUND = 1.0  # seconds, per probe
ATTACK_SECONDS = PROBES * (PROBE_INTERVAL + PROBE_BOUND) + 5  # upper bound, never reached

LIMIT_ENV = {
    "GUNICORN_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
    "GUNICORN_BODY_IDLE_TIMEOUT": str(BODY_IDLE_TIMEOUT),
    "MEDIA_UPLOAD_MIN_RATE": str(MIN_RATE),
    "MEDIA_UPLOAD_RATE_WINDOW": str(RATE_WINDOW),
}


@dataclass
class Attacker:
    """One trickling connection; `cut_after` is how long it lasted before the server ended it."""

    sock: socket.socket
    kind: str
    opened: float
    answer: bytearray = field(default_factory=bytearray)


@dataclass
class Attack:
    """Keeps SLOW_HEADERS + SLOW_BODIES trickling connections open from one thread."""

    port: int
    authorization: str
    stop: threading.Event = field(default_factory=threading.Event)
    lifetimes: dict[str, list[float]] = field(default_factory=lambda: {"head": [], "body": []})
    answers: list[bytes] = field(default_factory=list)
    longest_open: dict[str, float] = field(default_factory=lambda: {"head": 0.0, "body": 0.0})
    errors: list[str] = field(default_factory=list)

    def _open(self, kind: str) -> Attacker:
        sock = socket.create_connection((LOOPBACK, self.port), timeout=5)
        if kind == "head":
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: slow\r\n")
        else:
            sock.sendall(
                b"POST /v3/media HTTP/1.1\r\nHost: slow\r\n"
                b"Authorization: " + self.authorization.encode() + b"\r\n"
                b"Content-Type: multipart/form-data; boundary=xyz\r\n"
                b"Content-Length: 100000\r\n\r\n--xyz\r\n"
            )
        sock.setblocking(False)
        return Attacker(sock, kind, time.monotonic())

    def run(self) -> None:
        selector = selectors.DefaultSelector()
        live: dict[socket.socket, Attacker] = {}

        def start(kind: str) -> None:
            attacker = self._open(kind)
            live[attacker.sock] = attacker
            selector.register(attacker.sock, selectors.EVENT_READ, attacker)

        def end(attacker: Attacker) -> None:
            selector.unregister(attacker.sock)
            del live[attacker.sock]
            attacker.sock.close()
            self.lifetimes[attacker.kind].append(time.monotonic() - attacker.opened)
            self.answers.append(bytes(attacker.answer))
            if not self.stop.is_set():
                start(attacker.kind)  # a determined attacker comes straight back

        try:
            for _ in range(SLOW_HEADERS):
                start("head")
            for _ in range(SLOW_BODIES):
                start("body")
            deadline = time.monotonic() + ATTACK_SECONDS
            next_trickle = time.monotonic()
            while not self.stop.is_set() and time.monotonic() < deadline:
                for key, _ in selector.select(timeout=0.05):
                    attacker = key.data
                    try:
                        data = attacker.sock.recv(65536)
                    except (BlockingIOError, InterruptedError):
                        continue
                    except OSError:
                        data = b""
                    if data:
                        attacker.answer += data
                    else:
                        end(attacker)
                if time.monotonic() >= next_trickle:
                    next_trickle += TRICKLE_INTERVAL
                    for attacker in list(live.values()):
                        try:
                            attacker.sock.send(
                                b"X-Slow: 1\r\n" if attacker.kind == "head" else b"a"
                            )
                        except OSError:
                            end(attacker)
            now = time.monotonic()
            for attacker in live.values():
                self.longest_open[attacker.kind] = max(
                    self.longest_open[attacker.kind], now - attacker.opened
                )
        except Exception as error:  # surfaced by the test, not lost in the thread
            self.errors.append(repr(error))
        finally:
            for attacker in list(live.values()):
                attacker.sock.close()
            selector.close()


@pytest.fixture
def server(live_server: StartServer) -> GunicornServer:
    return live_server(workers=2, env=LIMIT_ENV)


@pytest.fixture
def attack(server: GunicornServer) -> Iterator[Attack]:
    api_key, api_secret = create_account(server)
    basic = "Basic " + base64.b64encode(f"{api_key}:{api_secret}".encode()).decode()
    campaign = Attack(server.port, basic)
    thread = threading.Thread(target=campaign.run, name="slow-clients", daemon=True)
    thread.start()
    try:
        yield campaign
    finally:
        campaign.stop.set()
        thread.join(10)
    assert not thread.is_alive()
    assert not campaign.errors, campaign.errors


def test_probes_answer_quickly_while_slow_clients_attack(
    server: GunicornServer, attack: Attack
) -> None:
    api_key, api_secret = create_account(server)
    time.sleep(HEADER_TIMEOUT / 2)  # every attacker is connected and trickling by now
    latencies: list[tuple[str, float, int]] = []
    with http_session() as http:
        for i in range(PROBES):
            started = time.monotonic()
            if i % 3 == 2:  # a normal authenticated request: a small upload
                response = upload(http, server, b"fine", auth=(api_key, api_secret))
                expected = 201
            else:
                response = http.get(f"{server.url}/healthz", timeout=(PROBE_BOUND, PROBE_BOUND))
                expected = 200
            latencies.append(
                (response.request.path_url, time.monotonic() - started, response.status_code)
            )
            assert response.status_code == expected, response.text
            time.sleep(PROBE_INTERVAL)
    attack.stop.set()
    time.sleep(0.1)
    slowest = max(latency for _, latency, _ in latencies)
    assert slowest < PROBE_BOUND, latencies

    # The attack was real: many connections came and went while the probes ran ...
    assert len(attack.lifetimes["head"]) >= SLOW_HEADERS, attack.lifetimes
    assert len(attack.lifetimes["body"]) >= SLOW_BODIES, attack.lifetimes
    # ... and each was cut by the server in bounded time (the event loop checks once a second).
    assert max(attack.lifetimes["head"]) < HEADER_TIMEOUT + 2.0
    assert max(attack.lifetimes["body"]) < RATE_WINDOW + 3.0
    # Cut with a 408 problem document, not served.
    statuses = {answer.split(b" ", 2)[1] for answer in attack.answers if answer}
    assert statuses == {b"408"}, statuses
    sample = next(a for a in attack.answers if a)
    head, _, body = sample.partition(b"\r\n\r\n")
    assert b"content-type: application/problem+json" in head.lower()
    assert json.loads(body)["status"] == 408


@pytest.mark.parametrize("length", [5000, 5_000_000], ids=["event-loop", "thread"])
def test_a_silent_upload_releases_its_thread(live_server: StartServer, length: int) -> None:
    """An upload that goes silent after its headers is answered 408 after the idle timeout.

    A small body is read by the worker's event loop, a large one by the app in a thread.
    """
    server = live_server(workers=1, threads=1, env=LIMIT_ENV)
    api_key, api_secret = create_account(server)
    basic = base64.b64encode(f"{api_key}:{api_secret}".encode())
    with socket.create_connection((LOOPBACK, server.port), timeout=10) as sock:
        sock.sendall(
            b"POST /v3/media HTTP/1.1\r\nHost: silent\r\nAuthorization: Basic " + basic + b"\r\n"
            b"Content-Type: multipart/form-data; boundary=xyz\r\n"
            b"Content-Length: " + str(length).encode() + b"\r\n"
            b"X-Request-Id: silent-1\r\n\r\n--xyz\r\n"
        )
        started = time.monotonic()
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        waited = time.monotonic() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), answer
    assert b"content-type: application/problem+json" in head.lower()
    assert b"x-request-id: silent-1" in head.lower()
    assert json.loads(body)["status"] == 408
    # Cut by the rate floor or the idle timeout, whichever comes first, and not much later.
    assert waited < BODY_IDLE_TIMEOUT + 1.0
    # The only thread is free again.
    with http_session() as http:
        assert http.get(f"{server.url}/healthz", timeout=PROBE_BOUND).status_code == 200
