"""The servers a benchmark runs against, as child processes on free loopback ports.

* `Gunicorn`: the service exactly as `make run` starts it (`gunicorn --config
  config/gunicorn.conf.py app:app`), or another WSGI app under the very same settings: the
  launcher of `realservers.gunicorn_server`, which the integration and fault tests use too.
* `Nginx`: Debian's nginx with a configuration of its own (its own prefix, pid, temp and log
  paths, a free port on 127.0.0.1, no system service), serving one directory with sendfile.
* `MotoS3`: moto's ThreadedMotoServer, in a process of its own so that its request handling
  never competes for the GIL with a boto3 client in the benchmark process.

Each is a context manager and always stops what it started. Server output goes to log files
(a pipe nobody reads would fill up and stall a server that logs every request).
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from realservers.gunicorn_server import DUMMY_AWS, GunicornServer, service_env
from realservers.process import Managed as _Managed
from realservers.process import ServerFailed, free_port

LOOPBACK = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[1]
STARTUP_TIMEOUT = 60.0  # seconds; generous: other work may be loading the machine
STOP_TIMEOUT = 15.0


def clean_env(overrides: dict[str, str]) -> dict[str, str]:
    """This process's environment minus service configuration and proxies, plus `overrides`."""
    return service_env(None, overrides)


def _tail(path: Path, size: int = 3000) -> str:
    try:
        return path.read_text(errors="replace")[-size:]
    except OSError:
        return ""


def _stop(process: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(STOP_TIMEOUT)


def wait_for_http(port: int, path: str, process: subprocess.Popen[bytes], log: Path) -> None:
    """Poll GET `path` until it answers 200; fail early if the process dies."""
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerFailed(f"exited with {process.returncode} while starting:\n{_tail(log)}")
        conn = http.client.HTTPConnection(LOOPBACK, port, timeout=2)
        try:
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        finally:
            conn.close()
        time.sleep(0.1)
    raise ServerFailed(f"no answer on {path} within {STARTUP_TIMEOUT:.0f} s:\n{_tail(log)}")


class Gunicorn(GunicornServer):
    """The service (or another `app` under the very same settings) under realservers' gunicorn
    launcher, with the bench's limits, its logs in `data_dir`, and every worker up on start."""

    def __init__(
        self,
        name: str,
        data_dir: Path,
        *,
        workers: int | None = None,
        app: str = "app:app",
        env: dict[str, str] | None = None,
    ) -> None:
        overrides = {
            # The items are up to 1 GiB; the service's 100 MiB default would refuse them.
            "MEDIA_MAX_UPLOAD_BYTES": str(4 * 1024**3),
            # Keep shutdown short: the benchmark never leaves a transfer it cares about running.
            "GUNICORN_GRACEFUL_TIMEOUT": "3",
            **(env or {}),
        }
        super().__init__(
            data_dir,
            env=overrides,
            workers=workers,
            app=app,
            name=name,
            log_dir=data_dir,
            startup_timeout=STARTUP_TIMEOUT,
            stop_timeout=STOP_TIMEOUT,
        )

    def create_account(self, api_key: str | None = None) -> str:
        """Provision an account with the CLI; return its `Authorization: Basic ...` value."""
        args = ["accounts", "create"] + (["--api-key", api_key] if api_key else [])
        account = json.loads(self.cli(*args).stdout)
        pair = f"{account['api_key']}:{account['api_secret']}".encode()
        return "Basic " + base64.b64encode(pair).decode()


class Nginx(_Managed):
    """nginx serving `root` with sendfile on 127.0.0.1, under a prefix of its own."""

    def __init__(self, prefix: Path, root: Path, nginx: str = "nginx") -> None:
        self.prefix = prefix
        self.root = root
        self.nginx = nginx
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log = prefix / "error.log"

    def _config(self) -> str:
        temp = self.prefix / "temp"
        # As root, nginx's workers would switch to `nobody`, who cannot read the service's 0600
        # blob files; run them as the invoking user instead (ignored when not root).
        user = f"user {pwd.getpwuid(os.geteuid()).pw_name};" if os.geteuid() == 0 else ""
        return f"""
{user}
daemon off;
worker_processes 1;
pid {self.prefix}/nginx.pid;
error_log {self.log} warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 5;
    default_type application/octet-stream;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    server {{
        listen {LOOPBACK}:{self.port};
        root {self.root};
        location = /healthz {{ return 200 "ok"; }}
    }}
}}
"""

    def start(self) -> Nginx:
        (self.prefix / "temp").mkdir(parents=True, exist_ok=True)
        config = self.prefix / "nginx.conf"
        for _attempt in range(3):
            self.port = free_port()
            config.write_text(self._config())
            with (self.prefix / "stderr.log").open("ab") as err:
                # -e: the error log before the config is read (the compiled-in path is /var/log).
                self.process = subprocess.Popen(
                    [self.nginx, "-e", str(self.log), "-p", str(self.prefix), "-c", str(config)],
                    stdin=subprocess.DEVNULL,
                    stdout=err,
                    stderr=err,
                )
            try:
                wait_for_http(self.port, "/healthz", self.process, self.log)
                return self
            except ServerFailed:
                _stop(self.process, signal.SIGQUIT)
                if "Address already in use" not in _tail(self.log):
                    raise
        raise ServerFailed("nginx: no free port after 3 attempts")

    def stop(self) -> None:
        if self.process is not None:
            _stop(self.process, signal.SIGQUIT)  # graceful shutdown for nginx
            self.process = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


class MotoS3(_Managed):
    """moto's ThreadedMotoServer (real HTTP S3) in a child process, with one bucket."""

    def __init__(self, work_dir: Path, bucket: str = "media-bench") -> None:
        self.work_dir = work_dir
        self.bucket = bucket
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log = work_dir / "moto.log"
        self.spool: Path | None = None

    def _spool_dir(self) -> Path:
        """Where moto spools objects: memory-backed when there is room, so that its disk
        writes (it is the stand-in backend, not what is measured) do not slow the runs."""
        shm = Path("/dev/shm")
        if shm.is_dir() and shutil.disk_usage(shm).free > 8 * 1024**3:
            return Path(tempfile.mkdtemp(prefix="media-bench-moto-", dir=shm))
        path = self.work_dir / "spool"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def start(self) -> MotoS3:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.spool = self._spool_dir()
        env = clean_env({"TMPDIR": str(self.spool)})
        with self.log.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "bench.moto_main", "--port", str(self.port)],
                cwd=REPO_ROOT,
                env=env,
                stdin=subprocess.PIPE,  # moto_main exits when this closes
                stdout=log,
                stderr=log,
            )
        wait_for_http(self.port, "/moto-api/data.json", self.process, self.log)
        client = self.client()
        client.create_bucket(Bucket=self.bucket)
        client.close()
        return self

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(OSError):
                assert self.process.stdin is not None
                self.process.stdin.close()
            _stop(self.process)
            self.process = None
        if self.spool is not None:
            shutil.rmtree(self.spool, ignore_errors=True)
            self.spool = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def client(self) -> Any:
        """A boto3 S3 client configured as the service configures its own."""
        import boto3
        from botocore.config import Config

        session = boto3.session.Session(
            aws_access_key_id=DUMMY_AWS["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=DUMMY_AWS["AWS_SECRET_ACCESS_KEY"],
            region_name=DUMMY_AWS["AWS_DEFAULT_REGION"],
        )
        config = Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            connect_timeout=10,
            read_timeout=120,
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=16,
        )
        return session.client("s3", endpoint_url=self.url, config=config)

    def storage_env(self, prefix: str) -> dict[str, str]:
        """The service's variables for blobs under `prefix` in this server's bucket."""
        return {
            "MEDIA_STORAGE_URL": f"s3://{self.bucket}/{prefix}",
            "AWS_ENDPOINT_URL_S3": self.url,
        }
