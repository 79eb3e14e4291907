"""The service under a real gunicorn on loopback: the one launcher of the tests and the bench.

`GunicornServer` runs `.venv/bin/gunicorn --config config/gunicorn.conf.py app:app` (or another
WSGI app under the same settings) exactly as `make run` does, with a clean environment
(`service_env`: no `MEDIA_*`, `AWS_*`, `GUNICORN_*` or proxy variables of the caller's shell) on
a free port of 127.0.0.1, and waits (bounded) until /healthz answers and its workers are up.
The master leads a process group of its own: `stop()` sends it SIGTERM and then SIGKILLs that
group, `kill()` SIGKILLs it at once (a crash), `restart()` brings it back on the same port; nothing
is ever found or killed by name. stdout (the access lines) and stderr (gunicorn's and the app's
log) go to files whose tails end up in failure messages.

Used by tests/integration (`live_server`, `launch`), tests/faults (`gunicorn`) and bench/.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from realservers.process import Managed, ServerFailed, children_of, free_port

__all__ = ["DUMMY_AWS", "GunicornServer", "ServerFailed", "service_env"]

REPO_ROOT = Path(__file__).resolve().parents[1]
GUNICORN_CONFIG = REPO_ROOT / "config" / "gunicorn.conf.py"
# The interpreter's own bin directory (not resolved: in a venv, python is a symlink out of it).
VENV_BIN = Path(sys.executable).parent
GUNICORN = VENV_BIN / "gunicorn"
MEDIA_SERVICE = VENV_BIN / "media-service"

LOOPBACK = "127.0.0.1"
STARTUP_TIMEOUT = 20.0  # seconds until /healthz must answer
STOP_TIMEOUT = 10.0  # seconds between SIGTERM and SIGKILL
CLI_TIMEOUT = 120.0
START_ATTEMPTS = 3  # a free port can be taken between probing and binding

# Configuration the caller's shell may carry must not leak into the servers.
_DROPPED_PREFIXES = ("MEDIA_", "AWS_", "GUNICORN_", "PROMETHEUS_")
_DROPPED_NAMES = {"PORT", "WEB_CONCURRENCY", "FORWARDED_ALLOW_IPS", "PYTHONPATH"}
DUMMY_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _inherited(name: str) -> bool:
    return not (
        name.startswith(_DROPPED_PREFIXES)
        or name in _DROPPED_NAMES
        or name.lower().endswith("_proxy")  # loopback traffic must never go through a proxy
    )


def service_env(
    data_dir: Path | None = None, overrides: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a server or CLI run: this process's, minus its service configuration,
    with dummy AWS credentials and MEDIA_DATA_DIR=`data_dir` (when given), plus `overrides`."""
    env = {name: value for name, value in os.environ.items() if _inherited(name)}
    env.update(DUMMY_AWS)
    env.update(
        {
            # Never read a developer's AWS config or ask an instance metadata service.
            "AWS_CONFIG_FILE": "/nonexistent/aws-config",
            "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent/aws-credentials",
            "AWS_EC2_METADATA_DISABLED": "true",
            "NO_PROXY": "127.0.0.1,localhost",
            "no_proxy": "127.0.0.1,localhost",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if data_dir is not None:
        env["MEDIA_DATA_DIR"] = str(data_dir)
    env.update(overrides or {})
    return env


class CommandFailed(RuntimeError):
    """`media-service ARGS` exited non-zero; the message carries its stderr."""


class GunicornServer(Managed):
    """One gunicorn master with its workers, serving on 127.0.0.1:`port`.

    `env` is laid over `service_env(data_dir)`; `workers` and `threads` set WEB_CONCURRENCY and
    GUNICORN_THREADS. Use it as a context manager, or call `start()` and always `stop()`.
    """

    def __init__(
        self,
        data_dir: Path,
        *,
        env: Mapping[str, str] | None = None,
        workers: int | None = None,
        threads: int | None = None,
        app: str = "app:app",
        name: str = "gunicorn",
        log_dir: Path | None = None,
        startup_timeout: float = STARTUP_TIMEOUT,
        stop_timeout: float = STOP_TIMEOUT,
    ) -> None:
        overrides: dict[str, str] = {}
        if workers is not None:
            overrides["WEB_CONCURRENCY"] = str(workers)
        if threads is not None:
            overrides["GUNICORN_THREADS"] = str(threads)
        overrides.update(env or {})
        self.env = service_env(data_dir, overrides)
        self.data_dir = Path(self.env["MEDIA_DATA_DIR"])
        self.app = app
        self.name = name
        self.log_dir = log_dir or data_dir / "logs"
        self.startup_timeout = startup_timeout
        self.stop_timeout = stop_timeout
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        # Named after the port on each start, so a restart or a second server on the same data
        # keeps the logs of the first.
        self.stdout_path = self.log_dir / f"{name}.out"
        self.stderr_path = self.log_dir / f"{name}.err"
        self._starts = 0

    # -- where it is

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def pid(self) -> int:
        """The master's pid (also the id of its process group)."""
        assert self.process is not None, "not started"
        return self.process.pid

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stderr(self, tail: int = 6000) -> str:
        """The last `tail` characters gunicorn (and the app's logger) wrote to stderr."""
        return _tail(self.stderr_path, tail)

    log = stderr

    # -- starting

    def start(self, *, wait: bool = True) -> GunicornServer:
        """Start gunicorn on a free port (the same one again on a restart) and, unless
        `wait=False`, wait until /healthz answers and every configured worker has booted."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        same_port = self.port != 0
        for attempt in range(START_ATTEMPTS):
            if not same_port or attempt > 0:
                self.port = free_port()
            self._spawn()
            if not wait:
                return self
            try:
                self.wait_healthy()
                self.wait_for_workers()
                return self
            except ServerFailed as error:
                self.stop()
                if "Address already in use" not in str(error) or attempt == START_ATTEMPTS - 1:
                    raise
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        self.env["PORT"] = str(self.port)
        self._starts += 1
        stem = f"{self.name}-{self.port}-{self._starts}"
        self.stdout_path = self.log_dir / f"{stem}.out"
        self.stderr_path = self.log_dir / f"{stem}.err"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.process = subprocess.Popen(
                [str(GUNICORN), "--config", str(GUNICORN_CONFIG), self.app],
                cwd=REPO_ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group: stopped as one, by our pid
            )

    def wait_healthy(self, timeout: float | None = None) -> None:
        """Wait (bounded) until GET /healthz answers 200; fail early if the master exits."""
        timeout = self.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.poll() is not None:
                code = self.process.returncode if self.process else None
                raise ServerFailed(
                    f"{self.name} exited with {code} while starting:\n{self.stderr()}"
                )
            with contextlib.suppress(OSError, http.client.HTTPException):
                if self.request("GET", "/healthz", timeout=1.0)[0] == 200:
                    return
            time.sleep(0.05)
        raise ServerFailed(
            f"{self.name} did not answer /healthz within {timeout} s:\n{self.stderr()}"
        )

    def worker_pids(self) -> list[int]:
        """The pids of the master's live child processes (its workers), sorted, from /proc."""
        return children_of(self.process.pid) if self.process is not None else []

    def wait_for_workers(self, count: int | None = None, timeout: float | None = None) -> list[int]:
        """Wait (bounded) until the master has `count` workers (default: WEB_CONCURRENCY, or the
        config's 2); return their pids. /healthz answering proves only the first one."""
        wanted = count if count is not None else int(self.env.get("WEB_CONCURRENCY") or 2)
        timeout = self.startup_timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.worker_pids()
            if len(pids) >= wanted:
                return pids
            time.sleep(0.05)
        raise ServerFailed(f"{wanted} workers did not start in {timeout} s:\n{self.stderr()}")

    # -- stopping

    def signal(self, sig: int) -> None:
        """Send `sig` to the master only (SIGTERM: graceful stop, SIGHUP: reload, ...)."""
        if self.running():
            assert self.process is not None
            self.process.send_signal(sig)

    def stop(self) -> None:
        """SIGTERM the master; then SIGKILL whatever is left of its process group. Idempotent."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(self.stop_timeout)
        self._kill_group()

    def kill(self) -> None:
        """SIGKILL the master and every worker at once: no handler runs, nothing is flushed."""
        if self.process is not None:
            self._kill_group()

    def restart(self, *, wait: bool = True) -> GunicornServer:
        """Stop it and start it again on the same port, with the same data and environment."""
        self.stop()
        return self.start(wait=wait)

    def _kill_group(self) -> None:
        assert self.process is not None
        # The group the master we started leads; workers that outlived it still carry its id.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(self.stop_timeout)

    # -- talking to it

    def request(
        self,
        method: str,
        path: str,
        *,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, dict[str, str], bytes]:
        """One request on a fresh connection: (status, headers with lower-case names, body)."""
        connection = http.client.HTTPConnection(LOOPBACK, self.port, timeout=timeout)
        try:
            connection.request(method, path, body=body, headers=headers or {})
            response = connection.getresponse()
            data = response.read()
            return response.status, {k.lower(): v for k, v in response.getheaders()}, data
        finally:
            connection.close()

    def cli(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run `media-service ARGS` with the server's configuration; raise on failure if `check`."""
        done = subprocess.run(
            [str(MEDIA_SERVICE), *args],
            env=self.env,
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            check=False,
        )
        if check and done.returncode != 0:
            raise CommandFailed(
                f"media-service {' '.join(args)} exited {done.returncode}:\n{done.stderr}"
            )
        return done


def _tail(path: Path, size: int) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""
