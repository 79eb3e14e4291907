"""Daemons of our own: started in their own session, watched, and stopped by PID only."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

LOOPBACK = "127.0.0.1"
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL


class ServerFailed(RuntimeError):
    """A server exited or did not become healthy in time; the message carries its log tail."""


def free_port() -> int:
    """A TCP port on loopback that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def port_open(port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on loopback `port`."""
    with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout):
        return True
    return False


def children_of(pid: int) -> list[int]:
    """The live (not zombie) processes whose parent is `pid`, sorted; read from /proc (Linux)."""
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue  # gone meanwhile
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses, so split after ")".
        fields = stat.rsplit(")", 1)[-1].split()
        if len(fields) > 1 and int(fields[1]) == pid and fields[0] != "Z":
            children.append(int(entry.name))
    return sorted(children)


class Daemon:
    """One server process in a session of its own, with its output in `log_path`.

    `stop()` signals the process group the daemon leads (its own pid), so helper processes it
    forked go too; nothing is ever found or killed by name.
    """

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self.env = dict(env) if env is not None else None
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def start(self) -> Daemon:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.cwd,
                start_new_session=True,  # its own process group: stopped as one, by our pid
            )
        return self

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log_tail(self, size: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def wait_until(self, healthy: Callable[[], bool], timeout: float) -> None:
        """Poll `healthy` until it is true; fail early if the process exits."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                code = self.process.returncode if self.process else None
                raise ServerFailed(f"{self.name} exited ({code}):\n{self.log_tail()}")
            if healthy():
                return
            time.sleep(0.1)
        raise ServerFailed(f"{self.name} not healthy within {timeout} s:\n{self.log_tail()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Signal the daemon's process group; SIGKILL it if it lingers. Safe to call twice."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            _signal_group(process.pid, sig)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                _signal_group(process.pid, signal.SIGKILL)
                process.wait(STOP_TIMEOUT)
        # Children that outlived their leader still carry its group id.
        _signal_group(process.pid, signal.SIGKILL)

    def kill(self) -> None:
        """SIGKILL at once: a crash, for the fault tests."""
        self.stop(signal.SIGKILL)


def _signal_group(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def run_checked(argv: Sequence[str], *, timeout: float = 120.0, **kwargs: object) -> str:
    """Run a set-up command; return its stdout, or raise with its output on failure."""
    done = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
        **kwargs,  # type: ignore[arg-type]
    )
    if done.returncode != 0:
        output = done.stdout[-2000:] + done.stderr[-4000:]
        raise ServerFailed(f"{' '.join(argv)} exited {done.returncode}:\n{output}")
    return done.stdout


class Managed:
    """Context-manager plumbing: `with Server(...) as s:` starts it and always stops it."""

    def start(self) -> Any:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Any:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


@dataclass
class LoopbackServer:
    """One daemon serving on a loopback port with its data under `root`.

    Subclasses say how to run it (`new_daemon`) and when it is up (`healthy`); `restart()` brings
    it back on the same port with the same data, as the fault tests need.
    """

    root: Path
    port: int = field(default_factory=free_port)
    daemon: Daemon | None = field(default=None, init=False)
    start_timeout: ClassVar[float] = 30.0

    def new_daemon(self) -> Daemon:
        raise NotImplementedError

    def healthy(self) -> bool:
        raise NotImplementedError

    def start(self) -> LoopbackServer:
        """Start the daemon and wait (bounded) until it is healthy; stop it if it never is."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.daemon = self.new_daemon().start()
        try:
            self.daemon.wait_until(self.healthy, self.start_timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self.daemon is not None:
            self.daemon.stop()

    def kill(self) -> None:
        if self.daemon is not None:
            self.daemon.kill()

    def restart(self) -> None:
        self.stop()
        self.start()


@dataclass
class S3Account:
    """The S3 endpoint a server offers on loopback and the credentials it accepts."""

    access_key: str
    secret_key: str
    port: int
    region: str = "us-east-1"

    @property
    def endpoint(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def credentials_env(self) -> dict[str, str]:
        """boto3's variables for this server (what a deployment sets for the service)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": self.region,
        }


def http_ok(url: str) -> bool:
    """Whether `url` answers 200 (no proxy: loopback only)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=1.0) as response:
            return bool(response.status == 200)
    except OSError:
        return False
