"""The compose front door: config/nginx/media.conf run by the real nginx in front of gunicorn.

The config is rendered for loopback: nginx listens on a free port of 127.0.0.1 instead of 8080,
the upstream is the live gunicorn instead of media:8000, and the timeouts the tests wait out are
lowered; everything else is the file compose mounts. nginx runs in the foreground with its pid
file, logs and temp files in a tmp dir, and is stopped by its pid. Skipped where no nginx is
installed (Debian: `apt-get install nginx-light`).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from media_service.api.upload import FORM_OVERHEAD
from media_service.auth.tokens import MAX_TOKEN_LENGTH
from media_service.serving.limits import ReadLimits
from media_service.settings import DEFAULT_MAX_UPLOAD_BYTES
from realservers.gunicorn_server import REPO_ROOT, GunicornServer
from realservers.process import free_port
from tests.integration.conftest import (
    LOOPBACK,
    StartServer,
    create_account,
    http_session,
    payload,
    upload,
)
from tests.integration.conftest import split_answer as split
from tests.problems import assert_problem

NGINX_CONF = REPO_ROOT / "config" / "nginx" / "media.conf"
NGINX = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
STARTUP_TIMEOUT = 10.0
TEST_HEADER_TIMEOUT = 1  # seconds, for the slow-header test (the file says 20s)
CLIENT_ADDRESS = "127.0.0.2"  # still loopback, but not the address nginx itself connects from

pytestmark = [
    pytest.mark.integration,
    pytest.mark.timeout(120),
    pytest.mark.nginx,
    pytest.mark.skipif(NGINX is None, reason="nginx is not installed (make backends installs it)"),
]


def directive(text: str, name: str) -> str:
    """The value of a directive that occurs once in the config."""
    values = re.findall(rf"^\s*{name}\s+([^;]+);", text, re.M)
    assert len(values) == 1, (name, values)
    return values[0].strip()


def replace_once(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, f"{old!r} occurs {text.count(old)} times in media.conf"
    return text.replace(old, new)


@dataclass
class FrontDoor:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    root: Path

    def error_log(self) -> str:
        path = self.root / "error.log"
        return path.read_text(errors="replace")[-4000:] if path.exists() else ""

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)  # nginx's fast shutdown, by pid
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_nginx(
    root: Path, upstream_port: int, replacements: dict[str, str] | None = None
) -> FrontDoor:
    """Render media.conf for loopback and run nginx in the foreground until stopped.

    `replacements`: more text of media.conf to replace (each must occur once).
    """
    assert NGINX is not None
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    site = NGINX_CONF.read_text()
    site = replace_once(site, "listen 8080;", f"listen {LOOPBACK}:{port};")
    site = replace_once(site, "server media:8000;", f"server {LOOPBACK}:{upstream_port};")
    site = replace_once(
        site, "client_header_timeout 20s;", f"client_header_timeout {TEST_HEADER_TIMEOUT}s;"
    )
    for old, new in (replacements or {}).items():
        site = replace_once(site, old, new)
    (root / "media.conf").write_text(site)
    temp = {name: root / name for name in ("body", "proxy", "fastcgi", "uwsgi", "scgi")}
    for path in temp.values():
        path.mkdir(exist_ok=True)
    main = f"""
        {"user root root;" if os.geteuid() == 0 else ""}
        daemon off;
        master_process on;
        worker_processes 1;
        pid {root / "nginx.pid"};
        error_log {root / "error.log"} info;
        events {{ worker_connections 256; }}
        http {{
            access_log {root / "access.log"};
            client_body_temp_path {temp["body"]};
            proxy_temp_path {temp["proxy"]};
            fastcgi_temp_path {temp["fastcgi"]};
            uwsgi_temp_path {temp["uwsgi"]};
            scgi_temp_path {temp["scgi"]};
            include {root / "media.conf"};
        }}
    """
    (root / "nginx.conf").write_text(main)
    process = subprocess.Popen(
        [NGINX, "-p", str(root), "-e", str(root / "error.log"), "-c", str(root / "nginx.conf")],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=(root / "stderr.log").open("wb"),
    )
    door = FrontDoor(f"http://{LOOPBACK}:{port}", port, process, root)
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(
                f"nginx exited with {process.returncode}:\n"
                f"{(root / 'stderr.log').read_text()}{door.error_log()}"
            )
        try:
            socket.create_connection((LOOPBACK, port), timeout=0.5).close()
            return door
        except OSError:
            time.sleep(0.05)
    door.stop()
    raise AssertionError(f"nginx did not listen within {STARTUP_TIMEOUT} s:\n{door.error_log()}")


@pytest.fixture(scope="module")
def server(module_live_server: StartServer) -> GunicornServer:
    # One trusted hop, as in docker-compose.yml: the service reads the client from nginx.
    return module_live_server(workers=1, threads=4, env={"MEDIA_TRUSTED_PROXIES": "1"})


@pytest.fixture(scope="module")
def door(server: GunicornServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontDoor]:
    front = start_nginx(tmp_path_factory.mktemp("nginx"), server.port)
    try:
        yield front
    finally:
        front.stop()


def raw_exchange(port: int, request: bytes, source: str = LOOPBACK) -> bytes:
    with socket.create_connection((LOOPBACK, port), timeout=10, source_address=(source, 0)) as s:
        s.sendall(request)
        answer = b""
        while chunk := s.recv(65536):
            answer += chunk
    return answer


# --- the config mirrors the service's limits ----------------------------------------------------


def test_config_limits_match_the_service() -> None:
    text = NGINX_CONF.read_text()
    limits = ReadLimits()
    assert directive(text, "client_header_timeout") == f"{limits.header_timeout:g}s"
    assert directive(text, "client_body_timeout") == f"{limits.body_idle_timeout:g}s"
    assert directive(text, "send_timeout") == f"{limits.body_idle_timeout:g}s"
    max_body = directive(text, "client_max_body_size")
    assert max_body.endswith("m")
    assert int(max_body[:-1]) * 1024 * 1024 == DEFAULT_MAX_UPLOAD_BYTES + FORM_OVERHEAD
    number, size = directive(text, "large_client_header_buffers").split()
    assert int(number) >= 2 and size.endswith("k")
    assert int(size[:-1]) * 1024 >= len("Authorization: Bearer \r\n") + MAX_TOKEN_LENGTH
    # Longer than the slowest answer: an upload by URL fetching for up to 120 s.
    assert int(directive(text, "proxy_read_timeout").rstrip("s")) > 120
    assert int(directive(text, "keepalive_timeout").rstrip("s")) < 5  # gunicorn keeps 5 s
    assert directive(text, "proxy_request_buffering") == "on"
    assert directive(text, "proxy_set_header X-Request-Id") == "$media_request_id"
    for status in (400, 408, 413, 414, 494, 501, 502, 503, 504):
        assert re.search(rf"^\s*error_page {status} ", text, re.M), status


def test_nginx_accepts_the_config(tmp_path: Path) -> None:
    door = start_nginx(tmp_path, free_port())
    door.stop()
    assert door.process.returncode == 0, door.error_log()


# --- through the front door ---------------------------------------------------------------------


def test_round_trip_through_nginx(server: GunicornServer, door: FrontDoor) -> None:
    api_key, api_secret = create_account(server)
    content = payload(3 * 1024 * 1024 + 17, seed=3)  # past client_body_buffer_size: a temp file
    with http_session() as http:
        created = upload(
            http, door, content, auth=(api_key, api_secret), headers={"X-Request-Id": "door-1"}
        )
        assert created.status_code == 201, created.text
        assert created.headers["X-Request-Id"] == "door-1"
        item = created.json()
        got = http.get(f"{door.url}/v3/media/{item['id']}", auth=(api_key, api_secret), timeout=30)
        assert got.status_code == 200, got.text
        assert got.content == content
        assert len(got.headers["X-Request-Id"]) == 32  # nginx made one up and passed it on
        # Errors of the service itself pass through untouched.
        missing = http.get(f"{door.url}/v3/media/{'0' * 8}-0000-0000-0000-{'0' * 12}", timeout=10)
        assert missing.status_code == 404
        assert missing.headers["Content-Type"] == "application/problem+json"


def test_the_service_sees_the_real_client_address(server: GunicornServer, door: FrontDoor) -> None:
    answer = raw_exchange(
        door.port,
        b"GET /healthz HTTP/1.1\r\nHost: media.test\r\nX-Request-Id: from-127-0-0-2\r\n"
        b"X-Forwarded-For: 203.0.113.9\r\nConnection: close\r\n\r\n",
        source=CLIENT_ADDRESS,
    )
    assert split(answer)[0] == 200
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lines = [
            json.loads(line)
            for line in server.stdout_path.read_text(errors="replace").splitlines()
            if line.startswith("{") and "from-127-0-0-2" in line
        ]
        if lines:
            break
        time.sleep(0.05)
    assert lines, server.stderr()
    # Not nginx's address, and not what the client claimed in its own X-Forwarded-For.
    assert lines[-1]["remote_addr"] == CLIENT_ADDRESS


def test_slow_header_client_is_cut(door: FrontDoor) -> None:
    with socket.create_connection((LOOPBACK, door.port), timeout=10) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: slow\r\n")
        started = time.monotonic()
        cut = False
        while time.monotonic() - started < TEST_HEADER_TIMEOUT + 5:
            sock.settimeout(0.5)
            try:
                if sock.recv(65536) == b"":
                    cut = True
                    break
            except TimeoutError:
                try:
                    sock.sendall(b"X-Slow: 1\r\n")
                except OSError:
                    cut = True
                    break
            except OSError:
                cut = True
                break
        assert cut, "nginx kept a slow-header client"
        assert time.monotonic() - started < TEST_HEADER_TIMEOUT + 3


def test_too_large_body_is_413_problem(door: FrontDoor) -> None:
    too_large = DEFAULT_MAX_UPLOAD_BYTES + FORM_OVERHEAD + 1
    answer = raw_exchange(
        door.port,
        b"POST /v3/media HTTP/1.1\r\nHost: t\r\nX-Request-Id: big-body-1\r\n"
        b"Content-Type: multipart/form-data; boundary=x\r\n"
        b"Content-Length: %d\r\nConnection: close\r\n\r\n" % too_large,
    )
    assert_problem(split(answer), 413, request_id="big-body-1")


def test_too_long_uri_is_414_problem(door: FrontDoor) -> None:
    answer = raw_exchange(
        door.port, b"GET /v3/media?q=" + b"a" * 40_000 + b" HTTP/1.1\r\nHost: t\r\n\r\n"
    )
    assert_problem(split(answer), 414)


def test_uri_too_long_for_gunicorn_is_its_414_problem(door: FrontDoor) -> None:
    """Between gunicorn's 8190 and nginx's 24k: gunicorn answers, its problem passes through."""
    answer = raw_exchange(
        door.port,
        b"GET /v3/media?q=" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    assert_problem(split(answer), 414)


def test_too_large_header_is_431_problem(door: FrontDoor) -> None:
    answer = raw_exchange(
        door.port,
        b"GET /v3/media HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer "
        + b"x" * 40_000
        + b"\r\n\r\n",
    )
    assert_problem(split(answer), 431)


def test_the_longest_token_reaches_the_service(door: FrontDoor) -> None:
    answer = raw_exchange(
        door.port,
        b"GET /v3/media HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Request-Id: tok-1\r\n"
        b"Authorization: Bearer " + b"e" * MAX_TOKEN_LENGTH + b"\r\n\r\n",
    )
    assert_problem(split(answer), 401, request_id="tok-1")  # the service's answer, not nginx's


def test_unsupported_transfer_encoding_is_501_problem(door: FrontDoor) -> None:
    answer = raw_exchange(
        door.port,
        b"POST /v3/media HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip, chunked\r\n"
        b"Connection: close\r\n\r\n0\r\n\r\n",
    )
    assert_problem(split(answer), 501)


def test_malformed_request_is_400_problem(door: FrontDoor) -> None:
    answer = raw_exchange(
        door.port, b"GET /healthz HTTP/1.1\r\nHost: a\r\nHost: b\r\nConnection: close\r\n\r\n"
    )
    assert_problem(split(answer), 400)


def test_unsafe_request_id_is_replaced(door: FrontDoor) -> None:
    answer = raw_exchange(
        door.port,
        b"GET /v3/media?q=" + b"a" * 40_000 + b' HTTP/1.1\r\nHost: t\r\nX-Request-Id: "}{\r\n\r\n',
    )
    assert_problem(split(answer), 414)
    assert len(split(answer)[1]["x-request-id"]) == 32


def test_service_down_is_502_problem(tmp_path: Path) -> None:
    door = start_nginx(tmp_path, free_port())  # nothing listens upstream
    try:
        answer = raw_exchange(
            door.port, b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
        )
    finally:
        door.stop()
    assert_problem(split(answer), 502)
