"""The SSRF-safe URL fetcher, against real servers on loopback.

Nothing here may send a packet beyond loopback: the autouse `guard` fixture fails any test that
tries to connect elsewhere or to resolve a real host name. Servers that play the "remote" side
listen on 127.0.0.2, which the policies below admit; 127.0.0.1 and ::1 hold canary listeners
that must never see a connection from a refused fetch.
"""

from __future__ import annotations

import datetime
import gzip
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from media_service.service.url_fetch import (
    MAX_URL_LENGTH,
    FetchedBody,
    UrlFetchError,
    UrlFetchFailed,
    UrlFetchPolicy,
    UrlRefused,
    UrlTooLarge,
    is_forbidden_address,
    open_url,
)

pytestmark = pytest.mark.timeout(20)

SERVER_IP = "127.0.0.2"  # the one loopback address tests treat as "the internet"
PUBLIC_IP = "93.184.215.14"  # never connected to: only handed out by fake resolvers


# --------------------------------------------------------------------------- the network guard


@dataclass
class ConnectGuard:
    """Every outgoing TCP/UDP connect attempt, and anything that broke the loopback-only rule."""

    attempts: list[tuple[str, int]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)

    def check_connect(self, sock: socket.socket, address: Any) -> None:
        if sock.family not in (socket.AF_INET, socket.AF_INET6):
            return
        host, port = address[0], address[1]
        try:
            ip = ipaddress.ip_address(str(host).split("%")[0])
        except ValueError:
            ip = None
        self.attempts.append((str(host), port))
        if ip is None or not ip.is_loopback:
            self.fail(f"connect to {address!r} (not a loopback address)")

    def check_lookup(self, host: Any) -> None:
        if host is None or host == "localhost" or _is_numeric_host(host):
            return
        self.fail(f"DNS lookup of {host!r} (tests may only resolve numeric hosts)")

    def fail(self, message: str) -> None:
        self.violations.append(message)
        raise AssertionError(f"network guard: {message}")


def _is_numeric_host(host: Any) -> bool:
    text = host.decode() if isinstance(host, bytes) else str(host)
    try:
        ipaddress.ip_address(text.split("%")[0])
        return True
    except ValueError:
        pass
    try:
        socket.inet_aton(text)  # the legacy forms getaddrinfo accepts: 2130706433, 0x7f.1
        return True
    except OSError:
        return False


@pytest.fixture(autouse=True)
def guard(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConnectGuard]:
    """Fail the test loudly on any connect beyond loopback or any real DNS lookup."""
    state = ConnectGuard()
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> None:
        state.check_connect(self, address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        state.check_connect(self, address)
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        state.check_lookup(host)
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    yield state
    assert state.violations == [], "the network guard caught traffic beyond loopback"


def test_guard_refuses_non_loopback_connects(guard: ConnectGuard) -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock, pytest.raises(AssertionError, match="network guard"):
        sock.connect(("192.0.2.1", 80))  # TEST-NET-1: would go nowhere, but must not even try
    guard.violations.clear()  # expected here; every other test must end with none


# --------------------------------------------------------------------------------- canaries


class Canary:
    """A listening socket that is never served; its backlog shows whether anyone connected.

    A completed TCP handshake sits in the backlog even if nobody calls accept(), so draining it
    on demand counts every connection deterministically, without a thread or a sleep.
    """

    def __init__(self, host: str) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.socket(family, socket.SOCK_STREAM)
        self._sock.bind((host, 0))
        self._sock.listen(16)
        self._sock.setblocking(False)
        self.port: int = self._sock.getsockname()[1]
        self._accepted = 0

    def connections(self) -> int:
        while True:
            try:
                conn, _ = self._sock.accept()
            except BlockingIOError:
                return self._accepted
            conn.close()
            self._accepted += 1

    def close(self) -> None:
        self._sock.close()


@pytest.fixture
def canary() -> Iterator[Canary]:
    listener = Canary("127.0.0.1")
    yield listener
    listener.close()


@pytest.fixture
def canary6() -> Iterator[Canary]:
    listener = Canary("::1")
    yield listener
    listener.close()


# ---------------------------------------------------------------------------- test servers


@dataclass
class SeenRequest:
    method: str
    target: str
    headers: dict[str, str]


Handler = Callable[[SeenRequest, socket.socket, "LoopbackServer"], None]


def _read_request_head(sock: socket.socket) -> SeenRequest | None:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(4096)
        if not chunk or len(data) > 65536:
            return None
        data += chunk
    lines = data.split(b"\r\n\r\n", 1)[0].decode("latin-1").split("\r\n")
    method, target, _version = lines[0].split(" ", 2)
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return SeenRequest(method, target, headers)


class LoopbackServer:
    """A tiny threaded HTTP/1.1 server; `handler` writes whatever response a test needs."""

    def __init__(self, host: str, handler: Handler, tls: ssl.SSLContext | None = None) -> None:
        self.host = host
        self._handler = handler
        self._tls = tls
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.bind((host, 0))
        self._sock.listen(16)
        self._sock.settimeout(0.05)
        self.port: int = self._sock.getsockname()[1]
        self.stop = threading.Event()
        self.requests: list[SeenRequest] = []
        self.server_names: list[str | None] = []
        self._released = 0
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True)
        self._acceptor.start()

    def url(self, path: str = "/", host: str = "allowed.test", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def wait_released(self, count: int = 1, timeout: float = 3.0) -> bool:
        """Wait until `count` connections were closed by the client."""
        with self._cond:
            return self._cond.wait_for(lambda: self._released >= count, timeout)

    def close(self) -> None:
        self.stop.set()
        self._acceptor.join(5)
        self._sock.close()
        for thread in self._threads:
            thread.join(5)

    def _accept_loop(self) -> None:
        while not self.stop.is_set():
            try:
                client, _ = self._sock.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._serve, args=(client,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _serve(self, client: socket.socket) -> None:
        sock = client
        try:
            sock.settimeout(3.0)
            if self._tls is not None:
                sock = self._tls.wrap_socket(client, server_side=True)
            request = _read_request_head(sock)
            if request is not None:
                self.requests.append(request)
                self._handler(request, sock, self)
            self._wait_for_client_close(sock)
        except OSError:
            pass  # the client went away first: expected in the size and timeout tests
        finally:
            sock.close()
            client.close()
            with self._cond:
                self._released += 1
                self._cond.notify_all()

    def _wait_for_client_close(self, sock: socket.socket) -> None:
        sock.settimeout(0.1)
        give_up = time.monotonic() + 10
        while not self.stop.is_set() and time.monotonic() < give_up:
            try:
                if not sock.recv(65536):
                    return
            except TimeoutError:
                continue


@pytest.fixture
def serve() -> Iterator[Callable[..., LoopbackServer]]:
    """Start LoopbackServers on 127.0.0.2; all are stopped when the test ends."""
    servers: list[LoopbackServer] = []

    def start(handler: Handler, tls: ssl.SSLContext | None = None) -> LoopbackServer:
        server = LoopbackServer(SERVER_IP, handler, tls)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.close()


def send_head(sock: socket.socket, status: int, headers: dict[str, str]) -> None:
    lines = [f"HTTP/1.1 {status} Whatever"] + [f"{k}: {v}" for k, v in headers.items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))


def respond(status: int = 200, body: bytes = b"", **headers: str) -> Handler:
    """A handler answering every request with one fixed response."""
    all_headers = {"Content-Length": str(len(body)), "Connection": "close"}
    all_headers.update({name.replace("_", "-"): value for name, value in headers.items()})

    def handler(request: SeenRequest, sock: socket.socket, server: LoopbackServer) -> None:
        send_head(sock, status, all_headers)
        sock.sendall(body)

    return handler


# -------------------------------------------------------------------- policies and resolvers


def admit_test_server(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """The production rule, plus exactly one loopback address for the test servers."""
    return ip == ipaddress.IPv4Address(SERVER_IP) or not is_forbidden_address(ip)


def make_policy(**changes: Any) -> UrlFetchPolicy:
    settings: dict[str, Any] = {
        "allow_private": False,
        "max_bytes": 1 << 20,
        "connect_timeout": 2.0,
        "read_timeout": 2.0,
        "total_timeout": 5.0,
        "address_allowed": admit_test_server,
    }
    settings.update(changes)
    return UrlFetchPolicy(**settings)


STRICT = make_policy(address_allowed=None)  # the production rule, nothing admitted


class FakeResolver:
    """Resolve names from a table (each a list of answers, used in turn); record each lookup."""

    def __init__(self, table: dict[str, list[list[str]]]) -> None:
        self._table = table
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        answers = self._table.get(host)
        if answers is None:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return answers[min(len(self.calls_for(host)), len(answers)) - 1]

    def calls_for(self, host: str) -> list[tuple[str, int]]:
        return [call for call in self.calls if call[0] == host]


@pytest.fixture
def resolver() -> FakeResolver:
    return FakeResolver(
        {
            "allowed.test": [[SERVER_IP]],
            "evil.test": [["127.0.0.1"]],
            "evil6.test": [["::1"]],
            "mixed.test": [[PUBLIC_IP, "127.0.0.1"]],
            "metadata.test": [["169.254.169.254"]],
            "wrong.test": [[SERVER_IP]],
        }
    )


def assert_untouched(guard: ConnectGuard, *canaries: Canary) -> None:
    assert guard.attempts == [], "a refused URL must be refused before any connection"
    for listener in canaries:
        assert listener.connections() == 0


# ------------------------------------------------------------------- is_forbidden_address

FORBIDDEN = [
    "127.0.0.1",
    "127.255.255.254",
    "10.0.0.1",
    "10.255.255.255",
    "172.16.0.1",
    "172.31.255.255",
    "192.168.1.1",
    "169.254.169.254",  # cloud metadata
    "169.254.0.1",
    "100.64.0.1",  # CGNAT
    "100.127.255.255",
    "0.0.0.0",
    "0.1.2.3",
    "224.0.0.1",
    "239.255.255.250",
    "240.0.0.1",
    "255.255.255.255",
    "192.0.0.8",
    "192.0.2.1",
    "198.51.100.1",
    "203.0.113.1",
    "198.18.0.1",
    "192.88.99.1",
    "::",
    "::1",
    "::ffff:127.0.0.1",  # IPv4-mapped
    "::ffff:10.0.0.1",
    "::ffff:169.254.169.254",
    "::ffff:0.0.0.0",
    "::127.0.0.1",  # IPv4-compatible
    "::8.8.8.8",  # IPv4-compatible is deprecated: refused whatever it embeds
    "2002:7f00:1::",  # 6to4 of 127.0.0.1
    "2002:a9fe:a9fe::1",  # 6to4 of 169.254.169.254
    "2002:c0a8:101::",  # 6to4 of 192.168.1.1
    "64:ff9b::7f00:1",  # NAT64 of 127.0.0.1
    "64:ff9b::a9fe:a9fe",  # NAT64 of 169.254.169.254
    "64:ff9b::a00:1",  # NAT64 of 10.0.0.1
    "64:ff9b:1::808:808",  # local-use NAT64: refused whatever it embeds
    "2001::1",  # Teredo
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",  # Teredo
    "2001:2::1",  # benchmarking
    "2001:db8::1",  # documentation
    "3fff::1",  # documentation
    "100::1",  # discard-only
    "fc00::1",  # unique local
    "fd12:3456:789a::1",
    "fe80::1",  # link-local
    "febf:ffff::1",
    "fec0::1",  # site-local
    "ff02::1",  # multicast
    "ff0e::1",
]

ALLOWED = [
    "8.8.8.8",
    "1.1.1.1",
    PUBLIC_IP,
    "11.0.0.1",
    "100.63.255.255",  # just below CGNAT
    "100.128.0.0",  # just above CGNAT
    "172.15.255.255",  # just outside 172.16/12
    "172.32.0.0",
    "169.253.255.255",
    "223.255.255.254",
    "2606:4700:4700::1111",
    "2001:4860:4860::8888",
    "2a00:1450:4001:80b::200e",
    "::ffff:8.8.8.8",  # mapped public address
    "2002:808:808::",  # 6to4 of a public address
    "64:ff9b::808:808",  # NAT64 of a public address
]


@pytest.mark.parametrize("address", FORBIDDEN)
def test_forbidden_addresses(address: str) -> None:
    assert is_forbidden_address(ipaddress.ip_address(address)) is True


@pytest.mark.parametrize("address", ALLOWED)
def test_public_addresses(address: str) -> None:
    assert is_forbidden_address(ipaddress.ip_address(address)) is False


# --------------------------------------------------------------------------- refused URLs


@pytest.mark.parametrize(
    "template",
    [
        "http://127.0.0.1:{port}/",
        "http://127.0.0.1:{port}/latest/meta-data/",
        "HTTP://127.0.0.1:{port}/",
        "http://[::1]:{port6}/",
        "http://[::ffff:127.0.0.1]:{port}/",
        "http://[::ffff:7f00:1]:{port}/",
        "http://2130706433:{port}/",  # decimal
        "http://0x7f.1:{port}/",  # hex, short form
        "http://0x7f000001:{port}/",
        "http://0177.0.0.1:{port}/",  # octal
        "http://127.1:{port}/",
        "http://0.0.0.0:{port}/",
        "http://0:{port}/",
        "http://localhost:{port}/",
        "http://169.254.169.254/latest/meta-data/",
        "http://100.64.0.1/",
        "http://10.0.0.1/",
        "http://192.168.0.1:8080/admin",
        "http://[64:ff9b::a9fe:a9fe]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://[2002:7f00:1::]/",
        "http://[fe80::1%25lo]:{port6}/",
        "http://[fd00::1]/",
        "http://evil.test:{port}/",  # a name that resolves to loopback
        "http://evil6.test:{port6}/",
        "http://mixed.test:{port}/",  # one public and one loopback answer: all must pass
        "http://metadata.test/latest/meta-data/",
        "https://127.0.0.1:{port}/",
        "https://evil.test:{port}/",
    ],
)
def test_forbidden_destinations_are_refused_before_connecting(
    template: str,
    guard: ConnectGuard,
    canary: Canary,
    canary6: Canary,
    resolver: FakeResolver,
) -> None:
    url = template.format(port=canary.port, port6=canary6.port)
    # Names in the fake table go to the fake resolver; numeric forms go to the system resolver,
    # which is what has to interpret "0x7f.1" the way a real fetch would.
    fake_names = ("evil.test", "evil6.test", "mixed.test", "metadata.test")
    use_fake = any(name in url for name in fake_names)
    with pytest.raises(UrlRefused) as caught:
        open_url(url, STRICT, resolver=resolver if use_fake else None)
    assert caught.value.detail
    assert_untouched(guard, canary, canary6)


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "gopher://127.0.0.1:70/_GET",
        "ftp://allowed.test/file.bin",
        "dict://allowed.test:11211/stat",
        "javascript:alert(1)",
        "data:text/plain,hello",
        "http://user:pass@allowed.test/",
        "http://user@allowed.test/",
        "http://@allowed.test/",
        "http://allowed.test\\@127.0.0.1/",
        "http://[::1",
        "http://[::1]x/",
        "",
        " ",
        "http://",
        "http:///path",
        "http://:80/",
        "//allowed.test/path",
        "allowed.test/path",
        "not a url",
        "http://allowed .test/",
        "http://allowed.test/\x00",
        "http://allowed.test/a\r\nHost: evil",
        "http://allowed.test:99999/",
        "http://allowed.test:0/",
        "http://allowed.test:-1/",
        "http://allowed.test:port/",
        "http://a..b/",
        "http://" + "a" * 64 + ".test/",  # a DNS label longer than 63
        "http://allowed.test/" + "a" * (MAX_URL_LENGTH + 1),
        "http://allowed.test/?" + "q" * 1_000_000,
    ],
    ids=lambda url: repr(url[:40]),
)
def test_malformed_or_unsupported_urls_are_refused(
    url: str, guard: ConnectGuard, canary: Canary, resolver: FakeResolver, serve: Any
) -> None:
    server = serve(respond(200, b"should never be fetched"))
    with pytest.raises(UrlRefused):
        open_url(url, make_policy(), resolver=resolver)
    assert_untouched(guard, canary)
    assert server.requests == []
    assert resolver.calls == []


def test_the_production_rule_refuses_the_test_server_too(
    guard: ConnectGuard, resolver: FakeResolver, serve: Any
) -> None:
    # The test server's own address is loopback: the production rule refuses it too.
    server = serve(respond(200, b"x"))
    with pytest.raises(UrlRefused):
        open_url(server.url(), STRICT, resolver=resolver)
    assert guard.attempts == []


def test_allow_private_admits_loopback(resolver: FakeResolver, serve: Any) -> None:
    server = serve(respond(200, b"local bytes"))
    policy = make_policy(address_allowed=None, allow_private=True)
    with open_url(server.url(host=SERVER_IP), policy, resolver=resolver) as body:
        assert body.read() == b"local bytes"


def test_exception_hierarchy() -> None:
    for cls in (UrlRefused, UrlTooLarge, UrlFetchFailed):
        error = cls("why it failed")
        assert isinstance(error, UrlFetchError)
        assert error.detail == "why it failed"
        assert str(error) == "why it failed"


def test_policy_defaults() -> None:
    policy = UrlFetchPolicy(
        allow_private=False, max_bytes=1, connect_timeout=1, read_timeout=1, total_timeout=1
    )
    assert policy.max_redirects == 5
    assert policy.user_agent == "media-service/0.1"


# --------------------------------------------------------------------------- successful fetches


def test_fetch_returns_the_exact_bytes_and_metadata(
    guard: ConnectGuard, canary: Canary, resolver: FakeResolver, serve: Any
) -> None:
    payload = bytes(range(256)) * 1200  # 300 KiB, every byte value
    server = serve(respond(200, payload, Content_Type="image/png"))
    url = server.url("/files/My%20Photo.png?size=large#fragment")
    with open_url(url, make_policy(), resolver=resolver) as body:
        assert body.content_type == "image/png"
        assert body.content_length == len(payload)
        assert body.filename == "My Photo.png"
        assert body.final_url == server.url("/files/My%20Photo.png?size=large")
        assert body.read() == payload
        assert body.read() == b""
    assert body.closed

    [request] = server.requests
    assert request.method == "GET"
    assert request.target == "/files/My%20Photo.png?size=large"
    # Connected to the checked IP, but spoke to the host the client named.
    assert request.headers["host"] == f"allowed.test:{server.port}"
    assert request.headers["user-agent"] == "media-service/0.1"
    assert request.headers["accept-encoding"] == "identity"
    assert "authorization" not in request.headers
    assert guard.attempts == [(SERVER_IP, server.port)]
    assert resolver.calls == [("allowed.test", server.port)]
    assert canary.connections() == 0
    assert server.wait_released()


def test_read_n_returns_exactly_n_bytes_until_the_end(resolver: FakeResolver, serve: Any) -> None:
    payload = b"0123456789" * 1000
    server = serve(respond(200, payload))
    with open_url(server.url("/data"), make_policy(), resolver=resolver) as body:
        assert body.readable()
        assert body.read(0) == b""
        parts = [body.read(3000) for _ in range(4)]
        assert [len(part) for part in parts] == [3000, 3000, 3000, 1000]
        assert b"".join(parts) == payload
        assert body.read(10) == b""
    with pytest.raises(ValueError):
        body.read(1)


@pytest.mark.parametrize(
    ("path", "filename"),
    [
        ("/", None),
        ("", None),
        ("/dir/file.tar.gz", "file.tar.gz"),
        ("/dir/sub/", "sub"),
        ("/a//b//", "b"),
        ("/%E2%82%AC%20price.txt", "€ price.txt"),
        ("/report.pdf?download=1", "report.pdf"),
    ],
)
def test_filename_is_the_last_path_segment_of_the_final_url(
    path: str, filename: str | None, resolver: FakeResolver, serve: Any
) -> None:
    server = serve(respond(200, b"x"))
    with open_url(server.url(path), make_policy(), resolver=resolver) as body:
        assert body.filename == filename


def test_non_ascii_path_is_percent_encoded_on_the_wire(resolver: FakeResolver, serve: Any) -> None:
    server = serve(respond(200, b"x"))
    with open_url(server.url("/caf\u00e9.txt"), make_policy(), resolver=resolver) as body:
        assert body.filename == "caf\u00e9.txt"
    assert server.requests[0].target == "/caf%C3%A9.txt"


def test_dns_is_resolved_once_per_hop_so_rebinding_cannot_switch_the_target(
    guard: ConnectGuard, canary: Canary, serve: Any
) -> None:
    # First answer: the admitted server. Any later answer: the forbidden canary address.
    rebinding = FakeResolver({"allowed.test": [[SERVER_IP], ["127.0.0.1"]]})
    server = serve(respond(200, b"from the checked address"))
    with open_url(server.url("/f"), make_policy(), resolver=rebinding) as body:
        assert body.read() == b"from the checked address"
    assert len(rebinding.calls) == 1
    assert guard.attempts == [(SERVER_IP, server.port)]
    assert canary.connections() == 0


def test_gzip_bodies_are_stored_as_received(resolver: FakeResolver, serve: Any) -> None:
    compressed = gzip.compress(b"A" * 1_000_000)  # would inflate to ~1 MB: a small bomb
    server = serve(respond(200, compressed, Content_Type="text/plain", Content_Encoding="gzip"))
    with open_url(
        server.url("/bomb.txt"), make_policy(max_bytes=10_000), resolver=resolver
    ) as body:
        assert body.read() == compressed
    assert server.requests[0].headers["accept-encoding"] == "identity"


def test_environment_proxies_are_ignored(
    monkeypatch: pytest.MonkeyPatch,
    guard: ConnectGuard,
    canary: Canary,
    resolver: FakeResolver,
    serve: Any,
) -> None:
    proxy = f"http://127.0.0.1:{canary.port}"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.setenv(name, proxy)
    monkeypatch.setenv("all_proxy", proxy)
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    server = serve(respond(200, b"direct"))
    with open_url(server.url("/direct"), make_policy(), resolver=resolver) as body:
        assert body.read() == b"direct"
    assert canary.connections() == 0
    assert guard.attempts == [(SERVER_IP, server.port)]


# ---------------------------------------------------------------------------------- redirects


def redirect_chain(location_for: Callable[[LoopbackServer, int], str]) -> Handler:
    """Answer /hop/N with a redirect to location_for(server, N - 1), and /hop/0 with 200."""

    def handler(request: SeenRequest, sock: socket.socket, server: LoopbackServer) -> None:
        hops = int(request.target.rsplit("/", 1)[1])
        if hops == 0:
            respond(200, b"arrived", Content_Type="text/plain")(request, sock, server)
        else:
            respond(302, Location=location_for(server, hops - 1))(request, sock, server)

    return handler


def test_redirect_to_a_forbidden_address_is_refused(
    guard: ConnectGuard, canary: Canary, resolver: FakeResolver, serve: Any
) -> None:
    server = serve(respond(302, Location=f"http://127.0.0.1:{canary.port}/"))
    with pytest.raises(UrlRefused):
        open_url(server.url("/start"), make_policy(), resolver=resolver)
    assert canary.connections() == 0
    assert guard.attempts == [(SERVER_IP, server.port)]
    assert server.wait_released()


@pytest.mark.parametrize(
    "location",
    [
        "http://evil.test:{canary}/",
        "http://[::ffff:127.0.0.1]:{canary}/",
        "http://169.254.169.254/latest/meta-data/",
        "file:///etc/passwd",
        "gopher://127.0.0.1:{canary}/",
        "http://user:pass@allowed.test/",
    ],
)
def test_every_redirect_hop_is_rechecked(
    location: str, guard: ConnectGuard, canary: Canary, resolver: FakeResolver, serve: Any
) -> None:
    server = serve(respond(301, Location=location.format(canary=canary.port)))
    with pytest.raises(UrlRefused):
        open_url(server.url("/start"), make_policy(), resolver=resolver)
    assert canary.connections() == 0
    assert guard.attempts == [(SERVER_IP, server.port)]


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirect_statuses_are_followed(status: int, resolver: FakeResolver, serve: Any) -> None:
    def handler(request: SeenRequest, sock: socket.socket, server: LoopbackServer) -> None:
        if request.target == "/old":
            respond(status, Location="/new/file.txt")(request, sock, server)
        else:
            respond(200, b"moved here")(request, sock, server)

    server = serve(handler)
    with open_url(server.url("/old"), make_policy(), resolver=resolver) as body:
        assert body.read() == b"moved here"
        assert body.final_url == server.url("/new/file.txt")
        assert body.filename == "file.txt"


def test_relative_redirects_resolve_against_the_current_url(
    resolver: FakeResolver, serve: Any
) -> None:
    def handler(request: SeenRequest, sock: socket.socket, server: LoopbackServer) -> None:
        if request.target == "/a/b/start":
            respond(302, Location="../c/image%201.jpg?v=2")(request, sock, server)
        else:
            respond(200, b"jpeg", Content_Type="image/jpeg")(request, sock, server)

    server = serve(handler)
    with open_url(server.url("/a/b/start"), make_policy(), resolver=resolver) as body:
        assert body.read() == b"jpeg"
        assert body.final_url == server.url("/a/c/image%201.jpg?v=2")
        assert body.filename == "image 1.jpg"
        assert body.content_type == "image/jpeg"
    assert [r.target for r in server.requests] == ["/a/b/start", "/a/c/image%201.jpg?v=2"]


def test_five_redirects_are_followed_and_each_hop_is_resolved_again(
    resolver: FakeResolver, serve: Any
) -> None:
    server = serve(redirect_chain(lambda server, n: server.url(f"/hop/{n}")))
    with open_url(server.url("/hop/5"), make_policy(), resolver=resolver) as body:
        assert body.read() == b"arrived"
    assert len(resolver.calls) == 6
    assert server.wait_released(6)


def test_more_than_five_redirects_are_refused(resolver: FakeResolver, serve: Any) -> None:
    server = serve(redirect_chain(lambda server, n: f"/hop/{n}"))
    with pytest.raises(UrlRefused, match="redirected more than 5"):
        open_url(server.url("/hop/6"), make_policy(), resolver=resolver)
    assert len(server.requests) == 6
    assert server.wait_released(6)


def test_max_redirects_is_configurable(resolver: FakeResolver, serve: Any) -> None:
    server = serve(redirect_chain(lambda server, n: f"/hop/{n}"))
    with pytest.raises(UrlRefused):
        open_url(server.url("/hop/1"), make_policy(max_redirects=0), resolver=resolver)


def test_redirect_without_location_fails(resolver: FakeResolver, serve: Any) -> None:
    server = serve(respond(302))
    with pytest.raises(UrlFetchFailed):
        open_url(server.url(), make_policy(), resolver=resolver)


# -------------------------------------------------------------------------------- size caps


def test_declared_content_length_over_the_cap_is_refused_without_reading(
    resolver: FakeResolver, serve: Any
) -> None:
    def handler(request: SeenRequest, sock: socket.socket, server: LoopbackServer) -> None:
        send_head(sock, 200, {"Content-Length": str(10**12)})
        sock.sendall(b"a few bytes")  # then nothing: reading would hang until read_timeout

    server = serve(handler)
    started = time.monotonic()
    with pytest.raises(UrlTooLarge):
        open_url(
            server.url("/huge"), make_policy(read_timeout=5, max_bytes=1000), resolver=resolver
        )
    assert time.monotonic() - started < 2
    assert server.wait_released()


def test_body_exactly_at_the_cap_is_accepted(resolver: FakeResolver, serve: Any) -> None:
    server = serve(respond(200, b"x" * 1000))
    with open_url(server.url(), make_policy(max_bytes=1000), resolver=resolver) as body:
        assert body.read() == b"x" * 1000


def test_undeclared_body_over_the_cap_is_cut_when_counted(
    resolver: FakeResolver, serve: Any
) -> None:
    def handler(request: SeenRequest, sock: socket.socket, server: LoopbackServer) -> None:
        send_head(sock, 200, {"Connection": "close"})  # length known only at EOF
        sock.sendall(b"y" * 1001)
        sock.shutdown(socket.SHUT_WR)

    server = serve(handler)
    with pytest.raises(UrlTooLarge):
        with open_url(server.url(), make_policy(max_bytes=1000), resolver=resolver) as body:
            assert body.content_length is None
            body.read()


def test_endless_chunked_body_is_cut_at_the_cap(resolver: FakeResolver, serve: Any) -> None:
    chunk = b"z" * 16384
    sent = [0]

    def handler(request: SeenRequest, sock: socket.socket, server: LoopbackServer) -> None:
        send_head(sock, 200, {"Transfer-Encoding": "chunked"})
        while not server.stop.is_set():
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent[0] += len(chunk)

    server = serve(handler)
    cap = 256 * 1024
    received = 0
    with pytest.raises(UrlTooLarge):
        with open_url(
            server.url("/endless"), make_policy(max_bytes=cap), resolver=resolver
        ) as body:
            while True:
                received += len(body.read(10_000))
    assert received <= cap  # nothing past the cap is ever handed out
    assert received > cap - 10_000
    assert server.wait_released()  # the stream was abandoned, not drained


def test_read_all_of_an_endless_body_is_cut_at_the_cap(resolver: FakeResolver, serve: Any) -> None:
    def handler(request: SeenRequest, sock: socket.socket, server: LoopbackServer) -> None:
        send_head(sock, 200, {"Transfer-Encoding": "chunked"})
        while not server.stop.is_set():
            sock.sendall(b"1000\r\n" + b"w" * 4096 + b"\r\n")

    server = serve(handler)
    body = open_url(server.url(), make_policy(max_bytes=100_000), resolver=resolver)
    with pytest.raises(UrlTooLarge):
        body.read()
    assert body.closed
    assert server.wait_released()


# ----------------------------------------------------------------------------- time limits


def drip(head_first: bool) -> Handler:
    """Send one byte every 0.2 s: after a complete head, or as the head itself."""

    def handler(request: SeenRequest, sock: socket.socket, server: LoopbackServer) -> None:
        if head_first:
            send_head(sock, 200, {"Content-Length": "1000"})
        stream = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"s" * 1000 if not head_first else b"d" * 1000
        for byte in stream:
            if server.stop.wait(0.2):
                return
            sock.sendall(bytes([byte]))

    return handler


@pytest.mark.parametrize("head_first", [True, False], ids=["drip-body", "drip-head"])
def test_a_dripping_server_is_cut_off_at_the_total_deadline(
    head_first: bool, resolver: FakeResolver, serve: Any
) -> None:
    server = serve(drip(head_first))
    policy = make_policy(read_timeout=0.5, total_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(UrlFetchFailed, match="longer than 1 seconds"):
        with open_url(server.url("/slow"), policy, resolver=resolver) as body:
            body.read()
    elapsed = time.monotonic() - started
    assert 0.9 <= elapsed < 1.5
    assert server.wait_released()


@pytest.mark.parametrize(
    ("status_line", "headers"),
    [
        pytest.param("HTTP/1.1 200 OK", {"Connection": "close"}, id="connection-close"),
        pytest.param("HTTP/1.0 200 OK", {}, id="http-1.0"),
        pytest.param("HTTP/1.1 200 OK", {"Transfer-Encoding": "chunked"}, id="chunked"),
    ],
)
def test_the_deadline_cuts_a_body_that_closes_the_connection_after_it(
    status_line: str, headers: dict[str, str], resolver: FakeResolver, serve: Any
) -> None:
    """Answers that end with the connection (Connection: close, HTTP/1.0) hand the socket to
    the response; the watchdog must still reach it while the body trickles."""
    chunked = "Transfer-Encoding" in headers

    def handler(request: SeenRequest, sock: socket.socket, server: LoopbackServer) -> None:
        head = [status_line] + [f"{k}: {v}" for k, v in headers.items()]
        if not chunked:
            head.append("Content-Length: 1000")
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("latin-1"))
        for _ in range(200):  # 20 s of drip unless cut
            if server.stop.wait(0.1):
                return
            sock.sendall(b"1\r\nd\r\n" if chunked else b"d")

    server = serve(handler)
    policy = make_policy(read_timeout=5.0, total_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(UrlFetchFailed, match="longer than 1 seconds"):
        with open_url(server.url("/slow"), policy, resolver=resolver) as body:
            body.read(1 << 20)
    assert time.monotonic() - started < 5  # the drip lasts 20 s
    assert server.wait_released(timeout=5)


def test_urls_with_lone_surrogates_are_refused(resolver: FakeResolver) -> None:
    with pytest.raises(UrlRefused):
        open_url("http://allowed.test/a\ud800b", make_policy(), resolver=resolver)
    assert resolver.calls == []


def test_the_deadline_also_covers_a_slow_consumer(resolver: FakeResolver, serve: Any) -> None:
    def handler(request: SeenRequest, sock: socket.socket, server: LoopbackServer) -> None:
        send_head(sock, 200, {"Content-Length": "20"})
        sock.sendall(b"0123456789")  # half now, the rest never

    server = serve(handler)
    body = open_url(server.url(), make_policy(read_timeout=5, total_timeout=0.5), resolver=resolver)
    assert body.read(5) == b"01234"
    time.sleep(0.6)
    with pytest.raises(UrlFetchFailed, match="longer than"):
        body.read()
    assert body.closed


def test_a_server_that_never_answers_times_out(resolver: FakeResolver, serve: Any) -> None:
    server = serve(lambda request, sock, server: None)  # reads the request, says nothing
    started = time.monotonic()
    with pytest.raises(UrlFetchFailed, match="Timed out"):
        open_url(server.url(), make_policy(read_timeout=0.5, total_timeout=10), resolver=resolver)
    assert time.monotonic() - started < 1.5
    assert server.wait_released()


def test_a_slow_resolver_is_bounded_by_the_total_deadline() -> None:
    release = threading.Event()

    def slow(host: str, port: int) -> list[str]:
        release.wait(5)
        return [SERVER_IP]

    started = time.monotonic()
    try:
        with pytest.raises(UrlFetchFailed, match="longer than"):
            open_url("http://slow.test/", make_policy(total_timeout=0.5), resolver=slow)
        assert time.monotonic() - started < 1.0
    finally:
        release.set()


# ---------------------------------------------------------------------------- upstream failures


@pytest.mark.parametrize("status", [404, 500, 503, 204, 300, 304])
def test_non_2xx_answers_fail(status: int, resolver: FakeResolver, serve: Any) -> None:
    if status == 204:  # 204 is a 2xx: accepted, with an empty body
        server = serve(respond(204))
        with open_url(server.url(), make_policy(), resolver=resolver) as body:
            assert body.read() == b""
        return
    server = serve(respond(status, b"error page"))
    with pytest.raises(UrlFetchFailed, match=str(status)):
        open_url(server.url(), make_policy(), resolver=resolver)
    assert server.wait_released()


def test_connection_refused_fails(resolver: FakeResolver) -> None:
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind((SERVER_IP, 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    with pytest.raises(UrlFetchFailed):
        open_url(f"http://allowed.test:{port}/", make_policy(), resolver=resolver)


def test_connection_reset_mid_body_fails(resolver: FakeResolver, serve: Any) -> None:
    def handler(request: SeenRequest, sock: socket.socket, server: LoopbackServer) -> None:
        send_head(sock, 200, {"Content-Length": "100000"})
        sock.sendall(b"partial")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # linger 0: the client sees a reset

    server = serve(handler)
    with pytest.raises(UrlFetchFailed):
        with open_url(server.url(), make_policy(), resolver=resolver) as body:
            body.read()


def test_unknown_host_fails(resolver: FakeResolver) -> None:
    with pytest.raises(UrlFetchFailed, match="could not be resolved"):
        open_url("http://nowhere.test/", make_policy(), resolver=resolver)


def test_a_host_without_addresses_fails() -> None:
    with pytest.raises(UrlFetchFailed):
        open_url("http://empty.test/", make_policy(), resolver=lambda host, port: [])


def test_garbage_status_line_fails(resolver: FakeResolver, serve: Any) -> None:
    def handler(request: SeenRequest, sock: socket.socket, server: LoopbackServer) -> None:
        sock.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")
        sock.shutdown(socket.SHUT_WR)

    server = serve(handler)
    with pytest.raises(UrlFetchFailed):
        open_url(server.url(), make_policy(), resolver=resolver)


# ----------------------------------------------------------------------------------- https


@dataclass
class TlsFiles:
    ca_cert: Path
    server_cert: Path
    server_key: Path


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A throwaway CA and a server certificate for allowed.test signed by it."""
    directory = tmp_path_factory.mktemp("tls")
    now = datetime.datetime.now(datetime.UTC)

    def name(common_name: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name("url-fetch test CA"))
        .issuer_name(name("url-fetch test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name("allowed.test"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("allowed.test")]), False)
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
        )
        .sign(ca_key, hashes.SHA256())
    )
    files = TlsFiles(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    files.ca_cert.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    files.server_cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.server_key.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return files


def server_tls(tls_files: TlsFiles) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls_files.server_cert, tls_files.server_key)
    return context


@pytest.fixture
def tls_server(tls_files: TlsFiles, serve: Any) -> LoopbackServer:
    context = server_tls(tls_files)
    names: list[str | None] = []

    def remember_sni(sock: Any, server_name: str | None, ctx: Any) -> None:
        names.append(server_name)

    context.sni_callback = remember_sni
    server: LoopbackServer = serve(respond(200, b"over tls", Content_Type="text/plain"), context)
    server.server_names = names
    return server


def client_tls(tls_files: TlsFiles) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(tls_files.ca_cert))


def test_https_verifies_the_certificate_against_the_url_host(
    tls_files: TlsFiles, tls_server: LoopbackServer, guard: ConnectGuard, resolver: FakeResolver
) -> None:
    policy = make_policy(ssl_context=client_tls(tls_files))
    url = tls_server.url("/secure.txt", scheme="https")
    with open_url(url, policy, resolver=resolver) as body:
        assert body.read() == b"over tls"
        assert body.filename == "secure.txt"
    assert tls_server.server_names == ["allowed.test"]  # SNI names the host, not the IP
    assert tls_server.requests[0].headers["host"] == f"allowed.test:{tls_server.port}"
    assert guard.attempts == [(SERVER_IP, tls_server.port)]


def test_https_with_a_certificate_for_another_name_fails(
    tls_files: TlsFiles, tls_server: LoopbackServer, resolver: FakeResolver
) -> None:
    policy = make_policy(ssl_context=client_tls(tls_files))
    url = tls_server.url("/", host="wrong.test", scheme="https")  # resolves to the same server
    with pytest.raises(UrlFetchFailed, match="certificate"):
        open_url(url, policy, resolver=resolver)


def test_https_with_an_untrusted_certificate_fails(
    tls_server: LoopbackServer, resolver: FakeResolver
) -> None:
    # The system trust store does not know the throwaway CA.
    with pytest.raises(UrlFetchFailed, match="certificate"):
        open_url(tls_server.url("/", scheme="https"), make_policy(), resolver=resolver)


def test_https_dripping_server_is_cut_off_at_the_total_deadline(
    tls_files: TlsFiles, resolver: FakeResolver, serve: Any
) -> None:
    server = serve(drip(head_first=True), server_tls(tls_files))
    policy = make_policy(ssl_context=client_tls(tls_files), read_timeout=0.5, total_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(UrlFetchFailed, match="longer than"):
        with open_url(server.url("/slow", scheme="https"), policy, resolver=resolver) as body:
            body.read()
    assert time.monotonic() - started < 1.5
    assert server.wait_released()


def test_https_server_that_never_completes_the_handshake_times_out(
    resolver: FakeResolver,
) -> None:
    mute = Canary(SERVER_IP)  # accepts TCP (in the backlog) and never says a word
    try:
        started = time.monotonic()
        with pytest.raises(UrlFetchFailed, match="Timed out while connecting"):
            open_url(
                f"https://allowed.test:{mute.port}/",
                make_policy(connect_timeout=0.5, total_timeout=5),
                resolver=resolver,
            )
        assert time.monotonic() - started < 1.5
    finally:
        mute.close()


def test_fetched_body_is_a_context_manager(resolver: FakeResolver, serve: Any) -> None:
    server = serve(respond(200, b"abc"))
    body = open_url(server.url(), make_policy(), resolver=resolver)
    assert isinstance(body, FetchedBody)
    with body as same:
        assert same is body
    assert body.closed
    body.close()  # idempotent
    assert server.wait_released()
