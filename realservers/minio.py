"""MinIO on loopback: one server, one data directory, root credentials of our own."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from realservers import pins
from realservers.process import LOOPBACK, Daemon, LoopbackServer, S3Account, free_port, http_ok

ACCESS_KEY = "media-test-root"
SECRET_KEY = "media-test-root-secret"  # loopback-only test servers; never a deployment's


@dataclass
class Minio(LoopbackServer):
    """A MinIO server; `s3` is its endpoint and root account."""

    name = "minio"

    @property
    def s3(self) -> S3Account:
        return S3Account(ACCESS_KEY, SECRET_KEY, self.port)

    def healthy(self) -> bool:
        return http_ok(f"{self.s3.endpoint}/minio/health/ready")

    def new_daemon(self) -> Daemon:
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.root),
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
            f"{LOOPBACK}:{self.port}",
            "--console-address",
            f"{LOOPBACK}:{free_port()}",
            str(self.root / "data"),
        ]
        return Daemon("minio", argv, self.root / "minio.log", env=env, cwd=self.root)


def start_minio(root: Path) -> Minio:
    """Start MinIO with its data under `root` and wait (bounded) until it is ready."""
    server = Minio(root)
    server.start()
    return server
