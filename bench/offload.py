"""Item 8: offloaded downloads (MEDIA_DOWNLOAD_REDIRECT), proxied vs offloaded, on each store.

Two gunicorns per store (2 workers each), one streaming the bytes itself (`off`) and one
offloading them, on the same data layout:

* file store: each behind the compose front door, config/nginx/media.conf rendered for loopback
  (its own nginx); offloaded = `accel`, nginx sends the file (sendfile) after the service's
  X-Accel-Redirect. Both sides go through nginx, as a deployment does.
* S3: MinIO from `realservers` when its binary is installed (MEDIA_TOOLS_DIR, default .tools/),
  else moto's server, and the figure says which. Offloaded = `presigned`: the service answers
  302 and the client fetches the bytes from S3.

Per store, two figures (ratios offloaded / proxied, indicative: the machine may be shared):
* counted 1 KiB downloads per second: wrk, 2 threads, 16 keep-alive connections, anonymous GETs
  of a public item whose limit is never reached. For presigned, wrk counts the service's 302s
  (each a counted download); the client's GET from S3 is S3's load, not in the rate;
* one counted 256 MiB download, with curl (`-L` follows the 302): MiB/s from the first request
  to the last byte, redirect included.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from bench.client import upload_file, wrk
from bench.measure import Figure, RunContext, alternate, make_random_file, ratio_figure
from bench.servers import (
    LOOPBACK,
    REPO_ROOT,
    Gunicorn,
    MinioS3,
    MotoS3,
    ServerFailed,
    _Managed,
    minio_installed,
    wait_for_http,
)
from realservers.process import free_port

ITEM = 8
WORKERS = 2
CONNECTIONS = 16
LARGE = 256 * 1024 * 1024
NGINX_CONF = REPO_ROOT / "config" / "nginx" / "media.conf"
UNREACHABLE = 1_000_000_000


class FrontDoor(_Managed):
    """config/nginx/media.conf on loopback in front of one gunicorn, files under `blob_root`."""

    def __init__(self, prefix: Path, nginx: str, upstream_port: int, blob_root: Path) -> None:
        self.prefix = prefix
        self.nginx = nginx
        self.upstream_port = upstream_port
        self.blob_root = blob_root
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def _render(self) -> None:
        site = NGINX_CONF.read_text()
        for old, new in {
            "listen 8080;": f"listen {LOOPBACK}:{self.port};",
            "server media:8000;": f"server {LOOPBACK}:{self.upstream_port};",
            "alias /data/blobs/;": f"alias {self.blob_root}/;",
        }.items():
            if site.count(old) != 1:
                raise ServerFailed(f"media.conf: {old!r} is not there exactly once")
            site = site.replace(old, new)
        (self.prefix / "media.conf").write_text(site)
        temp = self.prefix / "temp"
        # Blob files are 0600: as root, the workers must stay root to read them.
        user = "user root root;" if os.geteuid() == 0 else ""
        (self.prefix / "nginx.conf").write_text(f"""
{user}
daemon off;
worker_processes 1;
pid {self.prefix}/nginx.pid;
error_log {self.prefix}/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log off;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    include {self.prefix}/media.conf;
}}
""")

    def start(self) -> FrontDoor:
        (self.prefix / "temp").mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self._render()
        log = self.prefix / "error.log"
        with (self.prefix / "stderr.log").open("ab") as err:
            self.process = subprocess.Popen(
                [self.nginx, "-e", str(log), "-p", str(self.prefix), "-c", "nginx.conf"],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
            )
        wait_for_http(self.port, "/healthz", self.process, log)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)
        self.process = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


def _curl_mib_per_s(url: str, size: int, follow: bool) -> float:
    """One GET with curl (following the 302 when asked); MiB/s over the whole exchange."""
    command = ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}"]
    if follow:
        command.append("-L")
    started = time.perf_counter()
    done = subprocess.run([*command, url], capture_output=True, text=True, timeout=600, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0 or done.stdout.split() != ["200", str(size)]:
        raise ServerFailed(f"curl {url}: {done.returncode} {done.stdout} {done.stderr[:300]}")
    return size / (1024 * 1024) / seconds


@contextlib.contextmanager
def _s3_endpoint(ctx: RunContext) -> Iterator[tuple[str, dict[str, str]]]:
    """(name, service variables) of MinIO when installed, else of moto's server."""
    if minio_installed():
        with MinioS3(ctx.scratch("offload-minio")) as minio:
            yield "MinIO", minio.storage_env("")
        return
    ctx.log("  MinIO is not installed (python -m realservers install minio): moto's server")
    with MotoS3(ctx.scratch("offload-moto")) as moto:
        yield "moto's server (MinIO not installed)", moto.storage_env("")


def run(ctx: RunContext) -> list[Figure]:
    seconds = 2.0 if ctx.quick else 4.0
    large = LARGE // 8 if ctx.quick else LARGE
    data = ctx.scratch("offload-data")
    small_file = data / "one-kib.bin"
    small_file.write_bytes(bytes(range(256)) * 4)
    large_file = make_random_file(data / "large.bin", large)
    figures: list[Figure] = []

    def serve(name: str, server: Gunicorn) -> dict[str, str]:
        auth = {"Authorization": server.create_account()}
        fields = {"public": "true", "max_downloads_allowed": str(UNREACHABLE)}
        ids = {}
        for label, file in (("small", small_file), ("large", large_file)):
            created = upload_file(server.port, "/v3/media", file, auth, fields=fields)
            ids[label] = str(created.json()["id"])
        ctx.log(f"  {name}: items uploaded")
        return ids

    def measure(store: str, mode: str, urls: dict[str, tuple[str, dict[str, str]]]) -> None:
        def rate(name: str) -> float:
            base, ids = urls[name]
            return wrk(
                ctx.tools["wrk"],
                f"{base}/v3/media/{ids['small']}",
                connections=CONNECTIONS,
                seconds=seconds,
                threads=2,
            ).requests_per_s

        def speed(name: str) -> float:
            base, ids = urls[name]
            return _curl_mib_per_s(f"{base}/v3/media/{ids['large']}", large, name == mode)

        for name in urls:  # warm-up: connections, page cache
            rate(name)
        rates = alternate(ctx.rounds, {name: lambda n=name: rate(n) for name in urls})
        speeds = alternate(ctx.heavy_rounds, {name: lambda n=name: speed(n) for name in urls})
        inputs = (
            f"{store}; {WORKERS} gthread workers per side; wrk 2 threads, {CONNECTIONS} "
            f"connections, {seconds:.0f} s x {ctx.rounds}; anonymous GETs of a public item"
        )
        small = ratio_figure(
            ITEM,
            f"Counted 1 KiB downloads/s, {mode} vs proxied ({store.split(',')[0]})",
            inputs,
            rates,
            mode,
            "proxied",
            "req/s",
            None,
        )
        big = ratio_figure(
            ITEM,
            f"One counted {large // (1024 * 1024)} MiB download, {mode} vs proxied "
            f"({store.split(',')[0]})",
            f"{store}; curl{' -L' if mode == 'presigned' else ''}, "
            f"{ctx.heavy_rounds} runs per side, first request to last byte",
            speeds,
            mode,
            "proxied",
            "MiB/s",
            None,
        )
        if mode == "presigned":
            small.notes.append(
                "Offloaded: the rate of the service's counted 302s; each client then fetches "
                "the bytes from S3, which is S3's load and not in this figure."
            )
        for figure in (small, big):
            figure.notes.append("Indicative: measured on a machine shared with other work.")
            figure.kind = "offload"
        figures.extend((small, big))

    ctx.log("  file store: gunicorn off and accel, each behind config/nginx/media.conf")
    with (
        Gunicorn("proxied-files", ctx.scratch("offload-files-off"), workers=WORKERS) as off,
        Gunicorn(
            "accel-files",
            ctx.scratch("offload-files-accel"),
            workers=WORKERS,
            env={"MEDIA_DOWNLOAD_REDIRECT": "accel", "MEDIA_TRUSTED_PROXIES": "1"},
        ) as accel,
    ):
        doors = [
            FrontDoor(
                ctx.scratch(f"offload-nginx-{server.name}"),
                ctx.tools["nginx"],
                server.port,
                (server.data_dir / "blobs").resolve(),
            )
            for server in (off, accel)
        ]
        with doors[0] as proxied_door, doors[1] as accel_door:
            urls = {
                "proxied": (proxied_door.url, serve("proxied", off)),
                "accel": (accel_door.url, serve("accel", accel)),
            }
            measure("file store behind nginx, SQLite", "accel", urls)

    with _s3_endpoint(ctx) as (endpoint_name, env):
        ctx.log(f"  S3 on {endpoint_name}: gunicorn off and presigned")
        with (
            Gunicorn(
                "proxied-s3",
                ctx.scratch("offload-s3-off"),
                workers=WORKERS,
                env={**env, "MEDIA_STORAGE_URL": env["MEDIA_STORAGE_URL"] + "off"},
            ) as off,
            Gunicorn(
                "presigned-s3",
                ctx.scratch("offload-s3-presigned"),
                workers=WORKERS,
                env={
                    **env,
                    "MEDIA_STORAGE_URL": env["MEDIA_STORAGE_URL"] + "presigned",
                    "MEDIA_DOWNLOAD_REDIRECT": "presigned",
                },
            ) as presigned,
        ):
            urls = {
                "proxied": (off.url, serve("proxied", off)),
                "presigned": (presigned.url, serve("presigned", presigned)),
            }
            measure(f"S3 on {endpoint_name}, SQLite; gunicorn direct", "presigned", urls)
    for figure in figures:
        figure.result += f" -> ratio {figure.value:.2f}" if figure.value is not None else ""
    return figures
