"""Metrics and the access log under the real gunicorn, with several worker processes.

Each worker keeps its own counters (in PROMETHEUS_MULTIPROC_DIR files); /metrics must report the
whole server's numbers whichever worker answers it, including workers that have since exited.
The access log must count the bytes gunicorn actually sent with sendfile.
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from media_service.auth import generate_secret, hash_secret
from media_service.backends import open_backends
from media_service.settings import Settings
from media_service.storage.interfaces import Account
from realservers.gunicorn_server import GunicornServer
from tests.observability.support import parse_metrics, value

pytestmark = pytest.mark.integration

HOST = "127.0.0.1"
MiB = 1024 * 1024


@dataclass
class Server:
    port: int
    log: Path  # the app's stdout: JSON lines
    api_key: str
    api_secret: str

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request on a fresh connection (so gunicorn may hand it to any worker)."""
        connection = http.client.HTTPConnection(HOST, self.port, timeout=30)
        try:
            connection.request(
                method, path, body=body, headers={"Connection": "close", **(headers or {})}
            )
            response = connection.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            connection.close()

    def access_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log.read_text().splitlines():
            if raw.startswith("{"):
                line = json.loads(raw)
                if line.get("logger") == "media_service.access":
                    lines.append(line)
        return lines

    def access_line(self, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
        """The access line of one request; streamed responses are logged when gunicorn is done."""
        deadline = time.monotonic() + timeout
        while True:
            found = [line for line in self.access_lines() if line["request_id"] == request_id]
            if found:
                assert len(found) == 1, found
                return found[0]
            assert time.monotonic() < deadline, f"no access line for {request_id}"
            time.sleep(0.05)

    @property
    def basic(self) -> dict[str, str]:
        token = base64.b64encode(f"{self.api_key}:{self.api_secret}".encode()).decode()
        return {"Authorization": f"Basic {token}"}


def _provision(data_dir: Path) -> tuple[str, str]:
    """An account in the server's own SQLite database, written before the server starts."""
    settings = Settings.from_env({"MEDIA_DATA_DIR": str(data_dir)})
    backends = open_backends(settings)
    try:
        secret = generate_secret()
        salt, digest = hash_secret(secret)
        backends.credentials.add_account(Account("metricsacct", salt, digest))
    finally:
        backends.close()
    return "metricsacct", secret


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    """gunicorn with 3 workers that each retire after 25 requests, on a free loopback port."""
    data_dir = tmp_path / "var"
    api_key, api_secret = _provision(data_dir)
    env = {
        # Workers retire, so counts from processes that are gone must still be in the sum.
        "GUNICORN_MAX_REQUESTS": "25",
        "TMPDIR": str(tmp_path),  # the metrics directory gunicorn creates goes here
    }
    with GunicornServer(
        data_dir, workers=3, threads=4, env=env, log_dir=tmp_path, startup_timeout=30
    ) as running:
        yield Server(running.port, running.stdout_path, api_key, api_secret)


def test_request_counter_sums_over_every_worker(server: Server) -> None:
    n, threads = 60, 6
    failures: list[str] = []

    def client() -> None:
        for _ in range(n // threads):
            try:
                status, _, _ = server.request("GET", "/docs")
                if status != 200:
                    failures.append(str(status))
            except OSError as error:  # pragma: no cover - reported below
                failures.append(repr(error))

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
    assert not failures

    served_by = {line["pid"] for line in server.access_lines() if line["route"] == "/docs"}
    assert len(served_by) >= 3  # at most 25 requests per worker process

    labels = {"method": "GET", "route": "/docs", "status": "200"}
    for _ in range(6):
        status, headers, body = server.request("GET", "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        samples = parse_metrics(body.decode())
        assert value(samples, "media_http_requests_total", **labels) == n
        assert value(samples, "media_http_request_duration_seconds_count", **labels) == n
        assert value(samples, "media_http_requests_in_progress") >= 1  # this scrape
    scraped_by = {line["pid"] for line in server.access_lines() if line["route"] == "/metrics"}
    assert scraped_by, "no access line for /metrics"


def _multipart(content: bytes, **fields: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{val}\r\n'.encode()
        for name, val in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="filedata"; '
        f'filename="big.bin"\r\nContent-Type: application/octet-stream\r\n\r\n'.encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def _walk_away(port: int, path: str, request_id: str, keep: int) -> int:
    """GET `path`, read `keep` bytes, then reset the connection; returns the bytes read."""
    with socket.create_connection((HOST, port), timeout=30) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.sendall(
            f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nX-Request-Id: {request_id}\r\n\r\n".encode()
        )
        received = 0
        while received < keep:
            data = sock.recv(4096)
            if not data:
                break
            received += len(data)
        # RST rather than FIN: the server's next write fails at once.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    return received


def test_sendfile_downloads_log_the_bytes_sent(server: Server) -> None:
    content = os.urandom(16 * MiB)
    body, content_type = _multipart(content, public="true")
    status, _, created = server.request(
        "POST", "/v3/media", body, {**server.basic, "Content-Type": content_type}
    )
    assert status == 201, created
    item_path = f"/v3/media/{json.loads(created)['id']}"

    status, _, got = server.request("GET", item_path, headers={"X-Request-Id": "whole-download"})
    assert status == 200 and got == content
    line = server.access_line("whole-download")
    assert line["bytes_out"] == line["response_length"] == len(content)
    assert line["route"] == "/v3/media/<item_id>" and line["account_id"] is None

    status, _, part = server.request(
        "GET", item_path, headers={"Range": "bytes=100-1048675", "X-Request-Id": "a-range"}
    )
    assert status == 206 and part == content[100:1048676]
    line = server.access_line("a-range")
    assert line["bytes_out"] == line["response_length"] == MiB

    read = _walk_away(server.port, item_path, "walked-away", keep=64 * 1024)
    line = server.access_line("walked-away")
    assert line["status"] == 200
    assert read <= line["bytes_out"] < len(content) == line["response_length"]

    status, _, body = server.request("GET", "/metrics")
    sent = value(
        parse_metrics(body.decode()),
        "media_http_response_body_bytes_total",
        method="GET",
        route="/v3/media/<item_id>",
    )
    assert sent == len(content) + MiB + line["bytes_out"]
