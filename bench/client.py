"""Lean HTTP clients, so that the client is never what a measurement measures.

* `download`: reads the body into one reused 1 MiB buffer (no per-chunk allocation).
* `upload_file`: a multipart/form-data POST whose file part goes out with `socket.sendfile`.
* `Session`: one keep-alive connection for sequences of small requests (search latency).
* `wrk`: runs wrk and parses its summary (throughput at many connections with keep-alive).

Both sides of every comparison use the same client.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.servers import LOOPBACK

BUFFER = 1024 * 1024
TIMEOUT = 300.0  # seconds per socket operation: a 1 GiB transfer to moto can be slow


class HttpFailed(RuntimeError):
    """An unexpected status or a short body."""


@dataclass(frozen=True)
class Transfer:
    """One timed transfer."""

    size: int  # bytes of payload moved
    seconds: float
    status: int
    body: bytes = b""  # the response body of an upload (JSON)
    headers_after: float = 0.0  # seconds from the request to the response's headers

    @property
    def mib_per_s(self) -> float:
        return self.size / (1024 * 1024) / self.seconds

    def json(self) -> Any:
        return json.loads(self.body)


def download(port: int, path: str, headers: dict[str, str] | None = None) -> Transfer:
    """GET `path`, discarding the body; time from sending the request to the last byte."""
    buffer = bytearray(BUFFER)
    view = memoryview(buffer)
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=TIMEOUT)
    try:
        started = time.perf_counter()
        conn.request("GET", path, headers=headers or {})
        response = conn.getresponse()
        headers_after = time.perf_counter() - started
        if response.status != 200:
            raise HttpFailed(f"GET {path}: {response.status} {response.read()[:300]!r}")
        expected = int(response.getheader("Content-Length") or -1)
        received = 0
        while True:
            got = response.readinto(view)
            if not got:
                break
            received += got
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    if expected >= 0 and received != expected:
        raise HttpFailed(f"GET {path}: {received} bytes of {expected}")
    return Transfer(received, seconds, response.status, headers_after=headers_after)


def delete(port: int, path: str, headers: dict[str, str]) -> None:
    """DELETE `path`; anything but a 204 is a failure."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=TIMEOUT)
    try:
        conn.request("DELETE", path, headers=headers)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    if response.status != 204:
        raise HttpFailed(f"DELETE {path}: {response.status} {body[:300]!r}")


def upload_file(
    port: int,
    path: str,
    file: Path,
    headers: dict[str, str],
    *,
    filename: str = "bench.bin",
    fields: dict[str, str] | None = None,
) -> Transfer:
    """POST `file` as the `filedata` part of multipart/form-data (sendfile for the bytes)."""
    boundary = uuid.uuid4().hex
    head = b"".join(
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in (fields or {}).items()
    )
    head += (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="filedata"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    tail = f"\r\n--{boundary}--\r\n".encode()
    size = file.stat().st_size
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=TIMEOUT)
    try:
        started = time.perf_counter()
        conn.putrequest("POST", path)
        conn.putheader("Content-Type", f"multipart/form-data; boundary={boundary}")
        conn.putheader("Content-Length", str(len(head) + size + len(tail)))
        for name, value in headers.items():
            conn.putheader(name, value)
        conn.endheaders()
        assert conn.sock is not None
        try:
            conn.sock.sendall(head)
            with file.open("rb") as source:
                conn.sock.sendfile(source)
            conn.sock.sendall(tail)
        except OSError:
            pass  # the server answered early (e.g. 413) and closed: read its answer below
        response = conn.getresponse()
        body = response.read()
        seconds = time.perf_counter() - started
    finally:
        conn.close()
    if response.status != 201:
        raise HttpFailed(f"POST {path}: {response.status} {body[:500]!r}")
    return Transfer(size, seconds, response.status, body)


class Session:
    """One keep-alive connection for many small requests, each timed."""

    def __init__(self, port: int, headers: dict[str, str] | None = None) -> None:
        self.port = port
        self.headers = headers or {}
        self.conn = http.client.HTTPConnection(LOOPBACK, port, timeout=TIMEOUT)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, bytes, float]:
        """(status, body, seconds) of one request, reconnecting once if the server closed."""
        for attempt in (1, 2):
            try:
                started = time.perf_counter()
                self.conn.request(
                    method, path, body=body, headers={**self.headers, **(headers or {})}
                )
                response = self.conn.getresponse()
                data = response.read()
                return response.status, data, time.perf_counter() - started
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(LOOPBACK, self.port, timeout=TIMEOUT)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def json(self, method: str, path: str, body: Any = None, expect: int = 200) -> Any:
        """A JSON request and its decoded answer; raise HttpFailed on another status."""
        payload = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        status, data, _ = self.request(method, path, payload, headers)
        if status != expect:
            raise HttpFailed(f"{method} {path}: {status} {data[:300]!r}")
        return json.loads(data) if data else None

    def close(self) -> None:
        self.conn.close()


# --------------------------------------------------------------------------- wrk

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


@dataclass
class WrkResult:
    """wrk's summary: throughput, latency percentiles (ms), errors, and Lua-counted statuses."""

    requests_per_s: float
    requests: int
    latency_ms: dict[str, float]
    non_2xx: int
    socket_errors: int
    statuses: dict[str, int] = field(default_factory=dict)
    output: str = ""


def wrk(
    wrk_path: str,
    url: str,
    *,
    connections: int,
    seconds: float,
    threads: int = 1,
    headers: dict[str, str] | None = None,
    script: Path | None = None,
) -> WrkResult:
    """Run wrk (keep-alive, HTTP/1.1) for `seconds` and parse its summary."""
    command = [
        wrk_path,
        f"-t{threads}",
        f"-c{connections}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "30s",
        "--latency",
    ]
    for name, value in (headers or {}).items():
        command += ["-H", f"{name}: {value}"]
    if script is not None:
        command += ["-s", str(script)]
    command.append(url)
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=seconds + 60, check=False
    )
    if done.returncode != 0:
        raise HttpFailed(f"wrk failed ({done.returncode}): {done.stderr or done.stdout}")
    return parse_wrk(done.stdout)


def parse_wrk(output: str) -> WrkResult:
    """Parse wrk's text summary (with --latency; STATUS lines from the counting script)."""
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    total = re.search(r"(\d+) requests in", output)
    if rate is None or total is None:
        raise HttpFailed(f"cannot parse wrk output:\n{output}")
    latency = {
        f"p{percent}": float(value) * _UNITS[unit]
        for percent, value, unit in re.findall(
            r"^\s+(\d+)%\s+([\d.]+)(us|ms|s|m)\s*$", output, re.M
        )
    }
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    statuses: dict[str, int] = {}
    for name, count in re.findall(r"^STATUS (\w+) (\d+)$", output, re.M):
        statuses[name] = statuses.get(name, 0) + int(count)
    return WrkResult(
        requests_per_s=float(rate.group(1)),
        requests=int(total.group(1)),
        latency_ms=latency,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(n) for n in errors.groups()) if errors else 0,
        statuses=statuses,
        output=output,
    )


# Counts responses by status in each wrk thread and prints the totals as STATUS lines.
STATUS_COUNTER_LUA = """
local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  ok, refused, other = 0, 0, 0
end

function response(status, headers, body)
  if status == 200 then
    ok = ok + 1
  elseif status == 403 then
    refused = refused + 1
  else
    other = other + 1
  end
end

function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    io.write(string.format("STATUS ok %d\\n", thread:get("ok")))
    io.write(string.format("STATUS refused %d\\n", thread:get("refused")))
    io.write(string.format("STATUS other %d\\n", thread:get("other")))
  end
end
"""
