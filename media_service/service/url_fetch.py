"""Fetch a client-supplied URL without letting the client reach places it must not (SSRF guard).

The upload endpoint accepts a `url` instead of file bytes. Fetching it means this server makes a
request on the client's behalf, so a hostile client would love it to fetch the cloud metadata
endpoint, an admin port on loopback or a database on the private network. The defences:

* Only `http`/`https`, no credentials in the URL, a sane host and port.
* The host is resolved once, every address it resolves to is checked, and the TCP connection is
  made to one of those checked addresses. There is no second lookup between check and connect, so
  a DNS answer that changes in between (DNS rebinding) cannot slip a forbidden address past us.
  `Host`, TLS SNI and certificate verification still use the original host name.
* Redirects are followed by hand, and every hop goes through the same checks.
* Connect and read timeouts bound each socket operation; a watchdog bounds the whole fetch, so a
  server dripping one byte per read timeout cannot hold a worker for ever.
* The body is counted and cut off at the size cap. It is never decompressed (we ask for
  `identity` and store what arrives), so a small gzip bomb stays small.
* No proxy is ever used: urllib3 connections are made directly and never read the environment.
"""

from __future__ import annotations

import http.client
import ipaddress
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.exceptions import HTTPError as Urllib3Error
from urllib3.exceptions import TimeoutError as Urllib3Timeout
from urllib3.response import HTTPResponse
from urllib3.util.ssl_match_hostname import CertificateError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Resolver = Callable[[str, int], list[str]]

MAX_URL_LENGTH = 8192
REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
_READ_ALL_CHUNK = 64 * 1024
_DEFAULT_PORTS = {"http": 80, "https": 443}
# A host name after IDNA encoding: letters, digits, '-', '_' (seen in the wild) and dots.
_HOST_NAME = re.compile(r"[a-z0-9_-]+(\.[a-z0-9_-]+)*\.?")
# Characters left as they are when re-quoting a request target; everything else is escaped.
_PATH_SAFE = "/:@!$&'()*+,;=%"
_QUERY_SAFE = _PATH_SAFE + "?"
# Errors a connection, a TLS handshake or a response read may raise.
_TRANSPORT_ERRORS = (OSError, http.client.HTTPException, Urllib3Error, CertificateError)


class UrlFetchError(Exception):
    """Base class: fetching a client-supplied URL did not work; `detail` says why, for humans."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class UrlRefused(UrlFetchError):
    """The URL, or a redirect, points where we will not go (the API answers 400)."""


class UrlTooLarge(UrlFetchError):
    """The body is larger than the size cap (the API answers 413)."""


class UrlFetchFailed(UrlFetchError):
    """The remote side failed: DNS, connect, timeout, non-2xx, broken connection (422)."""


# What the standard library's `is_global` (the IANA special-purpose registries) still calls
# global, but a server-side fetch must not reach. Checked on Python 3.11: every entry below has
# addresses that `is_global` admits. Multicast, reserved and site-local are
# tested by property below.
_NOT_GLOBAL_ENOUGH = tuple(
    ipaddress.ip_network(net)
    for net in (
        "192.0.0.0/24",  # IETF protocol assignments (is_global admits 192.0.0.9, .10, .255)
        "192.88.99.0/24",  # 6to4 relay anycast
        "::/96",  # IPv4-compatible (deprecated), includes :: and ::1
        "64:ff9b:1::/48",  # local-use NAT64: where the IPv4 sits is the operator's choice
        "3fff::/20",  # documentation (RFC 9637, newer than 3.11's tables)
        "5f00::/16",  # SRv6 SIDs
    )
)
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """Return the IPv4 address an IPv6 address carries (mapped, 6to4, NAT64), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if ip.sixtofour is not None:
        return ip.sixtofour
    if ip in _NAT64:
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return None


def is_forbidden_address(ip: IPAddress) -> bool:
    """Tell whether `ip` is somewhere a server-side fetch must not go (not the public internet)."""
    if isinstance(ip, ipaddress.IPv6Address):
        # These forms are routed to an IPv4 host, so the IPv4 host is what must be judged.
        embedded = _embedded_ipv4(ip)
        if embedded is not None:
            return is_forbidden_address(embedded)
        if ip.is_site_local:
            return True
    return (
        not ip.is_global
        or ip.is_multicast
        or ip.is_reserved  # unallocated IPv6 space (outside 2000::/3) is no public host either
        or any(ip.version == net.version and ip in net for net in _NOT_GLOBAL_ENOUGH)
    )


@dataclass
class UrlFetchPolicy:
    """How a URL may be fetched: which addresses, how many bytes, how long, how many hops.

    `address_allowed`, when given, replaces the built-in address rule entirely (tests use it to
    admit exactly one loopback address while the rest of loopback stays forbidden). `ssl_context`
    replaces the system trust store for https; certificates are verified either way.
    `total_timeout` bounds everything from the first lookup to the last byte read by the caller.
    """

    allow_private: bool
    max_bytes: int
    connect_timeout: float
    read_timeout: float
    total_timeout: float
    max_redirects: int = 5
    user_agent: str = "media-service/0.1"
    address_allowed: Callable[[IPAddress], bool] | None = None
    ssl_context: ssl.SSLContext | None = None

    def allows(self, ip: IPAddress) -> bool:
        """Tell whether a connection to `ip` is permitted."""
        if self.address_allowed is not None:
            return self.address_allowed(ip)
        return self.allow_private or not is_forbidden_address(ip)


def system_resolver(host: str, port: int) -> list[str]:
    """Resolve `host` with getaddrinfo; return the distinct addresses in the system's order."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


@dataclass(frozen=True)
class _Target:
    """A validated URL, split into what the connection and the request need."""

    url: str
    scheme: str
    host: str  # ASCII (IDNA-encoded) name or IP literal, no brackets
    port: int
    host_header: str
    request_target: str


def _refuse_if(condition: bool, detail: str) -> None:
    if condition:
        raise UrlRefused(detail)


def _parse_target(url: str) -> _Target:
    """Validate `url` and split it; raise UrlRefused for anything but a plain http(s) URL."""
    _refuse_if(not isinstance(url, str) or not url, "The URL is empty.")
    _refuse_if(len(url) > MAX_URL_LENGTH, f"The URL is longer than {MAX_URL_LENGTH} characters.")
    # Whitespace, control characters and backslashes are parsed differently by different URL
    # parsers; refusing them keeps what we check identical to what we fetch.
    _refuse_if(
        any(ord(c) <= 0x20 or ord(c) == 0x7F or c == "\\" for c in url),
        "The URL contains whitespace, control characters or backslashes.",
    )
    # Lone surrogates cannot be percent-encoded (quote() would raise): not a URL anyone can send.
    _refuse_if(any(0xD800 <= ord(c) <= 0xDFFF for c in url), "The URL contains invalid characters.")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise UrlRefused("The URL cannot be parsed.") from exc
    scheme = parts.scheme.lower()
    _refuse_if(scheme not in _DEFAULT_PORTS, "Only http and https URLs can be fetched.")
    _refuse_if("@" in parts.netloc, "URLs with credentials are not accepted.")
    _refuse_if(not parts.hostname, "The URL has no host.")
    _refuse_if(port == 0, "The URL's port is out of range.")
    host = _ascii_host(parts.hostname or "")
    port = port or _DEFAULT_PORTS[scheme]
    shown = f"[{host}]" if ":" in host else host
    host_header = shown if port == _DEFAULT_PORTS[scheme] else f"{shown}:{port}"
    request_target = quote(parts.path, safe=_PATH_SAFE) or "/"
    if parts.query:
        request_target += "?" + quote(parts.query, safe=_QUERY_SAFE)
    # The fragment never leaves the client; keep it out of the URL we report too.
    clean = urlunsplit((scheme, parts.netloc, parts.path, parts.query, ""))
    return _Target(clean, scheme, host, port, host_header, request_target)


def _ascii_host(hostname: str) -> str:
    """Return the host as ASCII: an IP literal as is, a name IDNA-encoded and syntax-checked."""
    try:
        return str(ipaddress.ip_address(hostname))
    except ValueError:
        pass
    _refuse_if(":" in hostname or "%" in hostname, "The URL's host is not valid.")
    try:
        ascii_name = hostname.encode("idna").decode("ascii").lower()
    except UnicodeError as exc:
        raise UrlRefused("The URL's host is not a valid name.") from exc
    _refuse_if(not _HOST_NAME.fullmatch(ascii_name), "The URL's host is not a valid name.")
    return ascii_name


class _Deadline:
    """Bound the whole fetch: at expiry, shut down whichever socket the fetch is using.

    Socket timeouts only bound one operation each; a server answering one byte just inside the
    read timeout would pass them for ever. Shutting the socket down from this timer thread makes
    any blocked or later read return at once, and `expired` turns that into an error.
    """

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._expires = time.monotonic() + seconds
        self._lock = threading.Lock()
        self._fired = False
        self._conn: HTTPConnection | None = None
        self._sock: socket.socket | None = None
        self._timer = threading.Timer(seconds, self._fire)
        self._timer.daemon = True
        self._timer.start()

    @property
    def expired(self) -> bool:
        return time.monotonic() >= self._expires

    def remaining(self) -> float:
        return max(0.0, self._expires - time.monotonic())

    def error(self) -> UrlFetchFailed:
        return UrlFetchFailed(f"Fetching the URL took longer than {self._seconds:g} seconds.")

    def watch(self, conn: HTTPConnection | None) -> None:
        """Make `conn` the connection to cut at expiry (None: nothing to cut any more).

        Call it again once `conn` is connected: its socket is captured then. http.client drops
        `conn.sock` as soon as an answer that ends with the connection (`Connection: close`,
        HTTP/1.0) has begun, handing the socket to the response; without the captured socket
        the watchdog would have nothing left to cut while such a body trickles in.
        """
        sock = conn.sock if conn is not None else None
        with self._lock:
            self._conn = conn
            self._sock = sock
            fired = self._fired
        if fired and conn is not None:
            _shutdown(conn, sock)

    def cancel(self) -> None:
        self._timer.cancel()
        self.watch(None)

    def _fire(self) -> None:
        with self._lock:
            self._fired = True
            conn, sock = self._conn, self._sock
        if conn is not None:
            _shutdown(conn, sock)


def _shutdown(conn: HTTPConnection, captured: socket.socket | None = None) -> None:
    """Shut the connection's socket down without closing it under a reading thread.

    `captured` is the socket seen when the connection was made (see _Deadline.watch). Holding
    the socket object, not its number, is safe: once really closed its fileno() is -1, so a
    late shutdown fails harmlessly instead of hitting a descriptor reused elsewhere.
    """
    sock = captured if captured is not None else conn.sock
    if sock is None:
        return
    try:
        # The plain socket method: SSLSocket.shutdown would tear down TLS state that the reading
        # thread is still using; shutting the descriptor down just makes its reads end.
        socket.socket.shutdown(sock, socket.SHUT_RDWR)
    except OSError:
        pass  # already closed or never connected: nothing left to interrupt


def _failure(exc: BaseException, deadline: _Deadline, doing: str) -> UrlFetchFailed:
    """Turn a transport exception into UrlFetchFailed with a short, non-revealing detail."""
    if deadline.expired:
        return deadline.error()
    if isinstance(exc, TimeoutError | Urllib3Timeout):
        return UrlFetchFailed(f"Timed out while {doing}.")
    if isinstance(exc, ssl.SSLCertVerificationError | CertificateError):
        return UrlFetchFailed("The server's TLS certificate could not be verified.")
    return UrlFetchFailed(f"The connection failed while {doing}.")


class FetchedBody:
    """The body of a successful fetch, readable like a binary file; close it when done.

    `read(n)` returns exactly `n` bytes unless the body ends first, and raises UrlTooLarge
    rather than return a byte beyond the cap, or UrlFetchFailed when the transfer breaks or the
    total deadline passes. The connection is released on close and on any error.
    """

    def __init__(
        self,
        response: HTTPResponse,
        conn: HTTPConnection,
        deadline: _Deadline,
        policy: UrlFetchPolicy,
        final_url: str,
    ) -> None:
        self._response = response
        self._conn = conn
        self._deadline = deadline
        self._max_bytes = policy.max_bytes
        self._count = 0
        self._closed = False
        self.final_url = final_url
        self.content_type: str | None = response.headers.get("Content-Type")
        self.content_length: int | None = response.length_remaining
        self.filename = _filename_from(final_url)

    def read(self, n: int | None = -1) -> bytes:
        """Read up to `n` bytes (all that is left when `n` is negative); b"" at the end."""
        if self._closed:
            raise ValueError("I/O operation on closed FetchedBody.")
        if n is None or n < 0:
            return self._read_all()
        if n == 0 or self._response.isclosed():  # isclosed: the whole body has arrived
            return b""
        try:
            data = self._response.read(n, decode_content=False)
        except _TRANSPORT_ERRORS as exc:
            self.close()
            raise _failure(exc, self._deadline, "reading the body") from exc
        # After the watchdog fired, an early end of data is the cut, not the end of the body.
        if self._deadline.expired:
            self.close()
            raise self._deadline.error()
        self._count += len(data)
        if self._count > self._max_bytes:
            self.close()
            raise UrlTooLarge(f"The file is larger than the maximum of {self._max_bytes} bytes.")
        return data

    def _read_all(self) -> bytes:
        out = bytearray()
        while chunk := self.read(_READ_ALL_CHUNK):
            out += chunk
        return bytes(out)

    def readable(self) -> bool:
        return True

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Release the connection and stop the watchdog; safe to call more than once."""
        if self._closed:
            return
        self._closed = True
        self._deadline.cancel()
        self._response.close()
        self._conn.close()

    def __enter__(self) -> FetchedBody:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _filename_from(url: str) -> str | None:
    """Return the last non-empty path segment of `url`, percent-decoded, or None."""
    segments = [segment for segment in urlsplit(url).path.split("/") if segment]
    if not segments:
        return None
    return unquote(segments[-1]) or None


def open_url(url: str, policy: UrlFetchPolicy, *, resolver: Resolver | None = None) -> FetchedBody:
    """Fetch `url` under `policy`, following redirects; return the open body of the 2xx answer.

    Raises UrlRefused, UrlTooLarge or UrlFetchFailed (all UrlFetchError). `resolver` maps
    (host, port) to IP address strings; it defaults to getaddrinfo.
    """
    resolve = resolver or system_resolver
    deadline = _Deadline(policy.total_timeout)
    try:
        for _hop in range(policy.max_redirects + 1):
            target = _parse_target(url)
            conn, response = _request(target, policy, resolve, deadline)
            if response.status not in REDIRECT_STATUSES:
                return _accept(target, conn, response, policy, deadline)
            location = response.headers.get("Location")
            response.close()
            conn.close()
            deadline.watch(None)
            if not location:
                raise UrlFetchFailed(f"The URL answered {response.status} without a Location.")
            url = urljoin(target.url, location)
        raise UrlRefused(f"The URL redirected more than {policy.max_redirects} times.")
    except BaseException:
        deadline.cancel()
        raise


def _accept(
    target: _Target,
    conn: HTTPConnection,
    response: HTTPResponse,
    policy: UrlFetchPolicy,
    deadline: _Deadline,
) -> FetchedBody:
    """Check the final answer's status and declared size; wrap it as a FetchedBody."""
    body = FetchedBody(response, conn, deadline, policy, target.url)
    if not 200 <= response.status < 300:
        body.close()
        raise UrlFetchFailed(f"The URL answered {response.status}.")
    if body.content_length is not None and body.content_length > policy.max_bytes:
        body.close()
        raise UrlTooLarge(f"The file is larger than the maximum of {policy.max_bytes} bytes.")
    return body


def _allowed_addresses(
    target: _Target, policy: UrlFetchPolicy, resolve: Resolver, deadline: _Deadline
) -> list[str]:
    """Resolve the target's host once and check every address; return them to connect to."""
    try:
        literal: IPAddress | None = ipaddress.ip_address(target.host)
    except ValueError:
        literal = None
    found = [target.host] if literal else _resolve(resolve, target, deadline)
    if not found:
        raise UrlFetchFailed(f"The host {target.host} has no addresses.")
    try:
        addresses = [ipaddress.ip_address(address) for address in found]
    except ValueError as exc:
        raise UrlRefused(f"The host {target.host} resolved to an invalid address.") from exc
    # One bad address refuses the lot: we would not know which one a client would get.
    if not all(policy.allows(address) for address in addresses):
        raise UrlRefused("The URL points to an address that may not be fetched.")
    return [str(address) for address in addresses]


def _resolve(resolve: Resolver, target: _Target, deadline: _Deadline) -> list[str]:
    """Run the resolver on a helper thread so a slow DNS server cannot outlast the deadline."""
    outcome: list[Any] = []
    done = threading.Event()

    def run() -> None:
        try:
            outcome.append(resolve(target.host, target.port))
        except BaseException as exc:  # handed over to the waiting thread below
            outcome.append(exc)
        finally:
            done.set()

    threading.Thread(target=run, name="url-fetch-resolve", daemon=True).start()
    if not done.wait(deadline.remaining()):
        raise deadline.error()
    result = outcome[0]
    if isinstance(result, OSError):  # socket.gaierror and friends
        raise UrlFetchFailed(f"The host {target.host} could not be resolved.") from result
    if isinstance(result, UnicodeError):
        raise UrlRefused(f"The host {target.host} is not a valid name.") from result
    if isinstance(result, BaseException):
        raise result
    return list(result)


def _request(
    target: _Target, policy: UrlFetchPolicy, resolve: Resolver, deadline: _Deadline
) -> tuple[HTTPConnection, HTTPResponse]:
    """Connect to a checked address of `target` and send the GET; return the response head."""
    addresses = _allowed_addresses(target, policy, resolve, deadline)
    conn = _connect(target, addresses, policy, deadline)
    headers = {
        "Host": target.host_header,
        "User-Agent": policy.user_agent,
        "Accept": "*/*",
        "Accept-Encoding": "identity",
        "Connection": "close",
    }
    try:
        conn.timeout = policy.read_timeout
        conn.request(
            "GET",
            target.request_target,
            headers=headers,
            preload_content=False,
            decode_content=False,
        )
        response = conn.getresponse()
    except _TRANSPORT_ERRORS as exc:
        conn.close()
        raise _failure(exc, deadline, "waiting for the response") from exc
    if deadline.expired:
        response.close()
        conn.close()
        raise deadline.error()
    return conn, response


def _connect(
    target: _Target, addresses: list[str], policy: UrlFetchPolicy, deadline: _Deadline
) -> HTTPConnection:
    """Open a connection to the first of `addresses` that answers (https: verified TLS)."""
    failure: UrlFetchFailed | None = None
    for address in addresses:
        timeout = min(policy.connect_timeout, deadline.remaining())
        if timeout <= 0:
            raise deadline.error()
        conn: HTTPConnection
        if target.scheme == "https":
            # host= is the checked IP (where we connect); server_hostname= is the name the
            # certificate must match and that SNI announces.
            conn = HTTPSConnection(
                address,
                target.port,
                timeout=timeout,
                server_hostname=target.host,
                cert_reqs="CERT_REQUIRED",
                ssl_context=policy.ssl_context,
            )
        else:
            conn = HTTPConnection(address, target.port, timeout=timeout)
        deadline.watch(conn)
        try:
            conn.connect()
        except _TRANSPORT_ERRORS as exc:
            conn.close()
            failure = _failure(exc, deadline, "connecting")
            continue
        deadline.watch(conn)  # again, now that it has a socket to capture
        if deadline.expired:
            conn.close()
            raise deadline.error()
        return conn
    assert failure is not None  # addresses is never empty
    raise failure
