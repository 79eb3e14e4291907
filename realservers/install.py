"""Install the pinned servers into the tools folder: once, and quickly when already there."""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from realservers import pins
from realservers.process import run_checked

BUILD_TIMEOUT = 30 * 60.0  # a first build of MinIO takes ~4 min on 2 cores; leave room


def _say(message: str) -> None:
    print(f"[backends] {message}", file=sys.stderr, flush=True)


def _stamp(binary: Path) -> Path:
    return binary.with_name(binary.name + ".version")


def _installed(binary: Path, version: str) -> bool:
    stamp = _stamp(binary)
    return binary.is_file() and stamp.is_file() and stamp.read_text().strip() == version


def _go_env(gobin: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["GOBIN"] = str(gobin)
    # The machine's own Go; a toolchain line in a module must not trigger a download.
    env.setdefault("GOTOOLCHAIN", "local")
    env.setdefault("GOFLAGS", "-buildvcs=false")
    env["CGO_ENABLED"] = "0"
    return env


def install_minio() -> Path:
    binary = pins.minio_binary()
    if _installed(binary, pins.MINIO_VERSION):
        return binary
    _say(f"building MinIO {pins.MINIO_VERSION} (go install; a few minutes the first time)")
    binary.parent.mkdir(parents=True, exist_ok=True)
    run_checked(
        ["go", "install", f"{pins.MINIO_MODULE}@{pins.MINIO_VERSION}"],
        timeout=BUILD_TIMEOUT,
        env=_go_env(binary.parent),
    )
    _stamp(binary).write_text(pins.MINIO_VERSION + "\n")
    return binary


def install_ferretdb() -> Path:
    binary = pins.ferretdb_binary()
    if _installed(binary, pins.FERRETDB_VERSION):
        return binary
    _say(f"building FerretDB {pins.FERRETDB_VERSION} (go build of the module)")
    binary.parent.mkdir(parents=True, exist_ok=True)
    env = _go_env(binary.parent)
    module = f"{pins.FERRETDB_MODULE}@{pins.FERRETDB_VERSION}"
    info = json.loads(run_checked(["go", "mod", "download", "-json", module], env=env))
    with tempfile.TemporaryDirectory(dir=binary.parent.parent) as scratch:
        source = Path(scratch) / "ferretdb"
        # The module cache is read-only; build from a writable copy (never kept, never committed).
        shutil.copytree(info["Dir"], source)
        for path in (source, *source.rglob("*")):
            path.chmod(path.stat().st_mode | 0o200)
        (source / "build" / "version" / "version.txt").write_text(pins.FERRETDB_VERSION + "\n")
        run_checked(
            ["go", "build", "-trimpath", "-o", str(binary), "./cmd/ferretdb"],
            timeout=BUILD_TIMEOUT,
            env=env,
            cwd=source,
        )
    _stamp(binary).write_text(pins.FERRETDB_VERSION + "\n")
    return binary


def ceph_version() -> str | None:
    """The installed radosgw's version ("16.2.15"), or None when Ceph is missing."""
    if not all(shutil.which(name) for name in pins.CEPH_BINARIES):
        return None
    out = run_checked(["radosgw", "--version"])
    # "ceph version 16.2.15 (618f...) pacific (stable)"
    return out.split()[2] if out.startswith("ceph version ") else None


def _apt_install(packages: tuple[str, ...]) -> None:
    if os.geteuid() != 0:
        raise SystemExit(f"{' '.join(packages)}: not installed, and apt-get needs root")
    _say(f"installing {' '.join(packages)} from Debian")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run_checked(["apt-get", "update", "-qq"], timeout=600, env=env)
    run_checked(
        ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages],
        timeout=BUILD_TIMEOUT,
        env=env,
    )


def install_ceph() -> str:
    version = ceph_version()
    if version is None:
        _apt_install(pins.CEPH_PACKAGES)
        version = ceph_version()
    if version is None or not version.startswith(pins.CEPH_RELEASE_LINE):
        raise SystemExit(f"expected Ceph {pins.CEPH_RELEASE_LINE}x, found {version}")
    return version


def install_nginx() -> str:
    """Debian's nginx, for the front-door tests (config/nginx/media.conf)."""
    if shutil.which("nginx") is None and not Path("/usr/sbin/nginx").exists():
        _apt_install(pins.NGINX_PACKAGES)
    return shutil.which("nginx") or "/usr/sbin/nginx"


def install_chromium() -> str:
    """Debian's chromium and chromedriver, for the console's browser tests (tests/browser)."""
    if not all(Path(binary).exists() for binary in pins.CHROMIUM_BINARIES):
        _apt_install(pins.CHROMIUM_PACKAGES)
    return " and ".join(pins.CHROMIUM_BINARIES)


INSTALLERS: dict[str, Callable[[], object]] = {
    "minio": install_minio,
    "ferretdb": install_ferretdb,
    "ceph": install_ceph,
    "nginx": install_nginx,
    "chromium": install_chromium,
}


def install_all(names: list[str] | None = None) -> None:
    for name in names or list(INSTALLERS):
        started = time.monotonic()
        result = INSTALLERS[name]()
        _say(f"{name}: {result} ({time.monotonic() - started:.0f} s)")
