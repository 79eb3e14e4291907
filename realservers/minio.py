"""MinIO on loopback: one server, one data directory, root credentials of the caller's choice."""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from realservers import pins
from realservers.process import LOOPBACK, Daemon, free_port

ACCESS_KEY = "media-test-root"
SECRET_KEY = "media-test-root-secret"  # loopback-only test servers; never a deployment's
START_TIMEOUT = 30.0


@dataclass
class Minio:
    """A running (or stopped) MinIO; `restart()` brings it back on the same port and data."""

    root: Path
    port: int
    daemon: Daemon
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY
    region: str = "us-east-1"
    name: str = field(default="minio")

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

    def healthy(self) -> bool:
        try:
            url = f"{self.endpoint}/minio/health/ready"
            with _opener().open(url, timeout=1.0) as response:
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        self.daemon.stop()

    def kill(self) -> None:
        self.daemon.kill()

    def restart(self) -> None:
        self.daemon.stop()
        self.daemon = _daemon(self.root, self.port)
        self.daemon.start().wait_until(self.healthy, START_TIMEOUT)


def _opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback: no proxy


def _daemon(root: Path, port: int) -> Daemon:
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(root),
        "MINIO_ROOT_USER": ACCESS_KEY,
        "MINIO_ROOT_PASSWORD": SECRET_KEY,
        "MINIO_BROWSER": "off",  # no console listener
        "MINIO_UPDATE": "off",  # no update checks: nothing leaves loopback
        "MINIO_CI_CD": "1",  # tolerate a data dir on the root disk
    }
    argv = [
        str(pins.minio_binary()),
        "server",
        "--quiet",
        "--address",
        f"{LOOPBACK}:{port}",
        "--console-address",
        f"{LOOPBACK}:{free_port()}",
        str(root / "data"),
    ]
    return Daemon("minio", argv, root / "minio.log", env=env, cwd=root)


def start_minio(root: Path, port: int | None = None) -> Minio:
    """Start MinIO with its data under `root` and wait (bounded) until it is ready."""
    root.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    server = Minio(root=root, port=port, daemon=_daemon(root, port))
    server.daemon.start()
    try:
        server.daemon.wait_until(server.healthy, START_TIMEOUT)
    except BaseException:
        server.stop()
        raise
    return server
