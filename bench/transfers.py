"""Items 1-4: large downloads and uploads through the service, against direct baselines.

One gunicorn worker (WEB_CONCURRENCY=1) per store, so that "the worker" of item 4 is one
process and a single transfer never competes with another worker:

* file store: download vs nginx sendfile of the very same blob file (1); upload vs a file copy
  with fsync, as durable as the store's own write (3); worker RSS during a 1 GiB upload and
  download, and the 1 GiB download vs a direct read of the blob file (4).
* S3 (moto's server): download vs a direct boto3 streaming GET of an object on the same endpoint
  (2); upload vs a direct boto3 multipart upload with 8 MiB parts x 4 (3); worker RSS during a
  1 GiB upload and download, and the 1 GiB download vs a direct GET (4). moto keeps the
  earlier targets (it is a stand-in, its own costs dominate); MinIO carries the issue's.
* MinIO (from `realservers`, when its binary is installed): the same four figures against the
  same MinIO, the upload's baseline being boto3's `upload_file` with boto3's own defaults.

Worker memory is measured first, on a freshly booted worker that has served one small upload and
download (imports and clients warm): later large transfers would leave the allocator holding
memory and hide part of the growth.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.client import delete, download, upload_file
from bench.cpu_budget import CpuMeter
from bench.measure import (
    Figure,
    MiB,
    RssWatch,
    RunContext,
    Target,
    alternate,
    make_random_file,
    median,
    ratio_figure,
    size_text,
)
from bench.servers import Gunicorn, MinioS3, MotoS3, Nginx, minio_installed

RATIO_DOWNLOAD_FILES = Target(">=", 0.8, "≥ 0.8")
RATIO_UPLOAD = Target(">=", 0.5, "≥ 0.5")
# Issue #12: against MinIO, the S3 server a deployment runs.
RATIO_UPLOAD_MINIO = Target(">=", 0.7, "≥ 0.7")
RATIO_DOWNLOAD_MINIO = Target(">=", 0.8, "≥ 0.8")
# moto's rows keep the targets they had before MinIO's rows existed.
RATIO_DOWNLOAD_MOTO = Target(">=", 0.7, "≥ 0.7")
RSS_GROWTH = Target("<", 32.0, "< 32 MiB")

# The direct upload to moto: 8 MiB parts x 4 threads, the service's transfer settings when
# these rows were introduced (kept so that the printed figures stay comparable).
PART_SIZE = 8 * MiB
UPLOAD_CONCURRENCY = 4

UPLOAD_BOUND = (
    "the CPU of the one request thread, which reads the socket, parses the multipart body, "
    "hashes every byte twice (MD5 and SHA-256) and writes it, one step after another, while the "
    "baseline {baseline} (profile below)."
)


class Timings:
    """Per-contender time to the response headers and body rate after them: a slow download
    is either a fixed cost before the first byte (auth, database, counting) or a slow stream."""

    def __init__(self) -> None:
        self.headers_ms: dict[str, list[float]] = {}
        self.body_rate: dict[str, list[float]] = {}

    def add(self, name: str, size: int, seconds: float, headers_after: float) -> float:
        """Record one transfer; return its overall MiB/s."""
        self.headers_ms.setdefault(name, []).append(headers_after * 1000)
        self.body_rate.setdefault(name, []).append(size / MiB / max(seconds - headers_after, 1e-9))
        return size / MiB / seconds

    def download(
        self, name: str, port: int, path: str, headers: dict[str, str] | None = None
    ) -> Callable[[], float]:
        """A download() recorded under `name`, as a callable for alternate()."""

        def run() -> float:
            t = download(port, path, headers)
            return self.add(name, t.size, t.seconds, t.headers_after)

        return run

    def bound(self, service: str, baseline: str) -> str:
        """Whether the fixed cost before the headers or the stream after them makes the gap."""
        hs, hb = median(self.headers_ms[service]), median(self.headers_ms[baseline])
        rs, rb = median(self.body_rate[service]), median(self.body_rate[baseline])
        if rs >= 0.9 * rb:
            return (
                f"the fixed cost before the first byte, not the stream: headers after {hs:.1f} ms "
                f"against {hb:.1f} ms, then {rs:,.0f} against {rb:,.0f} MiB/s. Before its "
                "headers the service authenticates, reads the item and commits the counted "
                "download (one fsync)."
            )
        return (
            f"the stream itself: {rs:,.0f} against {rb:,.0f} MiB/s once the headers are out "
            f"(headers after {hs:.1f} against {hb:.1f} ms); see the profile."
        )

    def note(self) -> str:
        return (
            "Time to response headers / body rate after them (medians): "
            + "; ".join(
                f"{name} {median(self.headers_ms[name]):.1f} ms / "
                f"{median(self.body_rate[name]):,.0f} MiB/s"
                for name in self.headers_ms
            )
            + "."
        )


def _data(ctx: RunContext) -> tuple[Path, Path, Path]:
    """The random input files (1 MiB, 256 MiB, 1 GiB; smaller with --quick), written once."""
    sizes = {"small": MiB, "medium": 256 * MiB, "large": 1024 * MiB}
    if ctx.quick:
        sizes.update(medium=32 * MiB, large=64 * MiB)
    data = ctx.scratch("data")
    paths = []
    for name, size in sizes.items():
        path = data / f"{name}.bin"
        if not path.exists() or path.stat().st_size != size:
            ctx.log(f"  writing {size_text(size)} of random data")
            make_random_file(path, size)
        paths.append(path)
    small, medium, large = paths
    return small, medium, large


def run_files(ctx: RunContext) -> list[Figure]:
    """Items 1, 3 and 4 on the file store."""
    return _file_store(ctx, *_data(ctx))


def run_s3(ctx: RunContext) -> list[Figure]:
    """Items 2, 3 and 4 on S3 (moto's server)."""
    return _s3_store(ctx, MOTO, *_data(ctx))


def run_minio(ctx: RunContext) -> list[Figure]:
    """Items 2, 3 and 4 on MinIO, when realservers has installed it."""
    if not minio_installed():
        ctx.log("  MinIO is not installed (python -m realservers install minio): no MinIO rows")
        return []
    return _s3_store(ctx, MINIO, *_data(ctx))


def _item_path(item_id: str) -> str:
    return f"/v3/media/{item_id}"


def _warm_up(server: Gunicorn, small: Path, auth: dict[str, str]) -> None:
    transfer = upload_file(server.port, "/v3/media", small, auth)
    download(server.port, _item_path(transfer.json()["id"]), auth)


def _rss_figures(
    ctx: RunContext, server: Gunicorn, store: str, large: Path, auth: dict[str, str]
) -> tuple[list[Figure], str]:
    """Item 4: peak RSS growth of the one worker during a 1 GiB upload, then its download."""
    (pid,) = server.worker_pids()
    size = size_text(large.stat().st_size)
    with RssWatch(pid) as up:
        uploaded = upload_file(server.port, "/v3/media", large, auth)
    item_id = uploaded.json()["id"]
    with RssWatch(pid) as down:
        fetched = download(server.port, _item_path(item_id), auth)
    figures = []
    s3_upload = (
        "the upload pipeline's working set, not the item's size (see the trace): the part "
        "being sent and the part being filled (8 MiB each), the 1 MiB chunks on their way "
        "through parsing and hashing, and what glibc keeps of freed buffers."
    )
    s3_download = "the 1 MiB chunks relayed from GetObject to the client."
    bounds = {
        ("upload", "S3"): s3_upload,
        ("upload", "MinIO"): s3_upload,
        ("upload", "file store"): "the 1 MiB read and write buffers of the copy loop.",
        ("download", "S3"): s3_download,
        ("download", "MinIO"): s3_download,
        ("download", "file store"): "nothing: sendfile moves the bytes inside the kernel.",
    }
    for verb, watch, transfer in (("upload", up, uploaded), ("download", down, fetched)):
        growth = watch.growth / MiB
        figures.append(
            Figure(
                item=4,
                name=f"Worker peak RSS growth, {size} {verb}, {store}",
                inputs=(
                    f"{size} random bytes, one gthread worker (WEB_CONCURRENCY=1); "
                    f"{watch.method}; baseline {watch.baseline / MiB:.0f} MiB after a 1 MiB warm-up"
                ),
                result=(
                    f"peak {watch.peak / MiB:.0f} MiB, +{growth:.1f} MiB "
                    f"({transfer.mib_per_s:,.0f} MiB/s during the {verb})"
                ),
                value=growth,
                value_text=f"{growth:.1f} MiB",
                target=RSS_GROWTH,
                samples={"rss_trace_mib": [rss / MiB for _, rss in watch.trace[::10]]},
                unit="MiB",
                kind="rss",
                notes=[_trace_note(watch)],
                bound=bounds.get((verb, store)),
            )
        )
    return figures, item_id


def _trace_note(watch: RssWatch) -> str:
    """Whether the growth is a bounded working set or keeps climbing (a leak would)."""
    values = [rss - watch.baseline for _, rss in watch.trace]
    if len(values) < 4:
        return f"RSS trace too short ({len(values)} polls) to tell its shape."
    half = len(values) // 2
    first, second = max(values[:half]), max(values[half:])
    shape = (
        "flat, a bounded working set"
        if second <= first * 1.15 + 2 * MiB
        else "still rising in the second half"
    )
    return (
        f"RSS polled {len(values)} times during the transfer: median +{median(values) / MiB:.1f}"
        f" MiB; highest +{first / MiB:.1f} MiB in the first half and +{second / MiB:.1f} MiB in"
        f" the second ({shape})."
    )


def _profile_misses(
    ctx: RunContext, figures: list[Figure], server: Gunicorn, actions: dict[str, Callable[[], Any]]
) -> None:
    """Repeat the service side of each missed figure under py-spy (keyed by figure name)."""
    for figure in figures:
        if figure.met is False and figure.name in actions and ctx.profiler.enabled:
            ctx.log(f"  profiling: {figure.name}")
            slug = "".join(c if c.isalnum() else "-" for c in figure.name.lower())
            figure.profile = ctx.profiler.capture(slug, server.pid, actions[figure.name])


# --------------------------------------------------------------------------- file store


def _file_copy(source: Path, target_dir: Path) -> Callable[[], float]:
    """A timed, durable copy (copy, fsync the file and its directory): MiB/s."""
    counter = iter(range(1_000_000))

    def run() -> float:
        target = target_dir / f"copy-{next(counter)}.bin"
        started = time.perf_counter()
        shutil.copyfile(source, target)
        with target.open("rb+") as handle:
            os.fsync(handle.fileno())
        directory = os.open(target_dir, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        seconds = time.perf_counter() - started
        target.unlink()
        return source.stat().st_size / MiB / seconds

    return run


def _read_file(path: Path) -> float:
    """A direct read of a file into a reused 1 MiB buffer: MiB/s."""
    buffer = bytearray(MiB)
    total = 0
    started = time.perf_counter()
    with path.open("rb", buffering=0) as handle:
        while got := handle.readinto(buffer):
            total += got
    return total / MiB / (time.perf_counter() - started)


def _file_store(ctx: RunContext, small: Path, medium: Path, large: Path) -> list[Figure]:
    medium_text, large_text = size_text(medium.stat().st_size), size_text(large.stat().st_size)
    ctx.log("  file store: starting gunicorn (1 worker)")
    with Gunicorn("files", ctx.scratch("files"), workers=1) as server:
        auth = {"Authorization": server.create_account()}
        blob_root = server.data_dir / "blobs"
        _warm_up(server, small, auth)

        ctx.log(f"  file store: worker RSS during a {large_text} upload and download")
        figures, large_id = _rss_figures(ctx, server, "file store", large, auth)

        ctx.log(f"  file store: {medium_text} uploads, service vs file copy")
        uploaded: list[str] = []

        def service_upload() -> float:
            transfer = upload_file(server.port, "/v3/media", medium, auth)
            uploaded.append(transfer.json()["id"])
            if len(uploaded) > 1:
                # Like the copy's, each round's blob goes once it is measured (the first stays
                # for the downloads): both sides then write into page cache freed the round
                # before, instead of the service's growing by 256 MiB a round. On this VM new
                # page-cache pages cost ~5 ms of CPU per MiB in write() (the hypervisor takes
                # free pages back), which would be charged to the service alone.
                delete(server.port, _item_path(uploaded.pop()), auth)
            return transfer.mib_per_s

        size = medium.stat().st_size
        meter = CpuMeter()
        upload_samples = alternate(
            ctx.heavy_rounds,
            {
                "service": meter.metered("service", size, service_upload),
                "file copy": meter.metered(
                    "file copy", size, _file_copy(medium, ctx.scratch("copies"))
                ),
            },
        )
        figures.append(
            ratio_figure(
                3,
                f"Upload {medium_text}, file store",
                f"{medium_text} random bytes; service: multipart POST (MD5 + SHA-256 on the way, "
                "fsync + rename); baseline: shutil.copyfile + fsync on the same disk; each "
                "side's file deleted after its round (the service's first kept); "
                f"alternated {ctx.heavy_rounds}x",
                upload_samples,
                "service",
                "file copy",
                "MiB/s",
                RATIO_UPLOAD,
            )
        )
        figures[-1].bound = UPLOAD_BOUND.format(baseline="copies inside the kernel")
        figures[-1].notes.append(
            meter.note(
                "service", "file copy", RATIO_UPLOAD.threshold, median(upload_samples["file copy"])
            )
        )

        item_id = uploaded[0]
        blob = blob_root / item_id[:2] / item_id
        if not blob.is_file():
            raise RuntimeError(f"the file store's layout changed: no blob at {blob}")
        ctx.log(f"  file store: {medium_text} downloads, service vs nginx sendfile")
        timings = Timings()
        with Nginx(ctx.scratch("nginx"), blob_root, ctx.tools["nginx"]) as nginx:
            download_samples = alternate(
                ctx.rounds,
                {
                    "service": timings.download("service", server.port, _item_path(item_id), auth),
                    "nginx": timings.download("nginx", nginx.port, f"/{item_id[:2]}/{item_id}"),
                },
            )
        figures.append(
            ratio_figure(
                1,
                f"Download {medium_text}, file store",
                f"the same {medium_text} blob file (page cache); service: Basic auth, counted "
                "download, wsgi.file_wrapper/sendfile; baseline: nginx 1 worker, sendfile on; "
                f"client: http.client into a 1 MiB buffer; alternated {ctx.rounds}x",
                download_samples,
                "service",
                "nginx",
                "MiB/s",
                RATIO_DOWNLOAD_FILES,
            )
        )
        figures[-1].notes.append(timings.note())
        figures[-1].bound = timings.bound("service", "nginx")

        ctx.log(f"  file store: {large_text} downloads, service vs direct read")
        large_blob = blob_root / large_id[:2] / large_id
        large_timings = Timings()
        large_samples = alternate(
            ctx.heavy_rounds,
            {
                "service": large_timings.download(
                    "service", server.port, _item_path(large_id), auth
                ),
                "direct read": lambda: _read_file(large_blob),
            },
        )
        figures.append(
            ratio_figure(
                4,
                f"Download {large_text} vs direct read, file store",
                f"{large_text} blob file (page cache); baseline: read() of the blob file into a "
                f"1 MiB buffer in the benchmark process; alternated {ctx.heavy_rounds}x",
                large_samples,
                "service",
                "direct read",
                "MiB/s",
                None,
            )
        )
        figures[-1].notes.append(large_timings.note())
        _profile_misses(
            ctx,
            figures,
            server,
            {
                f"Download {medium_text}, file store": lambda: [
                    download(server.port, _item_path(item_id), auth) for _ in range(3)
                ],
                f"Upload {medium_text}, file store": lambda: upload_file(
                    server.port, "/v3/media", medium, auth
                ),
            },
        )
    return figures


# --------------------------------------------------------------------------- S3


@dataclass(frozen=True)
class S3Endpoint:
    """One S3 server the S3 rows run against, and what differs between them."""

    store: str  # in the figures' names: "S3" (moto, the rows' historical name) or "MinIO"
    described: str  # in their inputs
    upload_target: Target
    download_target: Target
    # The direct upload's settings, as text, and as TransferConfig arguments (None: boto3's own).
    direct_upload: str
    direct_config: dict[str, Any] | None

    def start(self, ctx: RunContext) -> MotoS3 | MinioS3:
        if self.store == "MinIO":
            return MinioS3(ctx.scratch("minio"))
        return MotoS3(ctx.scratch("moto"))


MOTO = S3Endpoint(
    store="S3",
    described="moto's ThreadedMotoServer (own process; the earlier targets, kept)",
    upload_target=RATIO_UPLOAD,
    download_target=RATIO_DOWNLOAD_MOTO,
    direct_upload="boto3 upload_file, 8 MiB parts x 4 threads",
    direct_config={
        "multipart_threshold": PART_SIZE,
        "multipart_chunksize": PART_SIZE,
        "max_concurrency": UPLOAD_CONCURRENCY,
    },
)
MINIO = S3Endpoint(
    store="MinIO",
    described="MinIO from realservers (own process, data on the local disk; the issue's targets)",
    upload_target=RATIO_UPLOAD_MINIO,
    download_target=RATIO_DOWNLOAD_MINIO,
    direct_upload="boto3 upload_file with boto3's defaults (8 MiB parts x 10 threads)",
    direct_config=None,
)


def _s3_store(
    ctx: RunContext, endpoint: S3Endpoint, small: Path, medium: Path, large: Path
) -> list[Figure]:
    from boto3.s3.transfer import TransferConfig

    store = endpoint.store
    medium_text, large_text = size_text(medium.stat().st_size), size_text(large.stat().st_size)
    ctx.log(f"  {store}: starting {endpoint.described.split(' (')[0]} and gunicorn (1 worker)")
    with (
        endpoint.start(ctx) as s3_server,
        Gunicorn(
            store.lower(),
            ctx.scratch(f"{store.lower()}-service"),
            workers=1,
            # moto assembles a multipart object inside CompleteMultipartUpload before it sends a
            # byte (real S3 answers at once and keeps the connection alive): 1 GiB takes longer
            # than the default 5 s read timeout on a busy 2-core machine.
            env={**s3_server.storage_env("service"), "MEDIA_BACKEND_TIMEOUT": "120"},
        ) as server,
    ):
        s3 = s3_server.client()
        bucket = s3_server.bucket
        auth = {"Authorization": server.create_account()}
        _warm_up(server, small, auth)

        ctx.log(f"  {store}: worker RSS during a {large_text} upload and download")
        figures, large_id = _rss_figures(ctx, server, store, large, auth)

        ctx.log(f"  {store}: {medium_text} uploads, service vs direct boto3")
        transfer_config = TransferConfig(**(endpoint.direct_config or {}))
        uploaded: list[str] = []
        direct_keys = iter(range(1_000_000))

        def service_upload() -> float:
            transfer = upload_file(server.port, "/v3/media", medium, auth)
            uploaded.append(transfer.json()["id"])
            return transfer.mib_per_s

        def direct_upload() -> float:
            started = time.perf_counter()
            s3.upload_file(
                str(medium), bucket, f"direct/{next(direct_keys)}", Config=transfer_config
            )
            return medium.stat().st_size / MiB / (time.perf_counter() - started)

        size = medium.stat().st_size
        meter = CpuMeter()
        upload_samples = alternate(
            ctx.heavy_rounds,
            {
                "service": meter.metered("service", size, service_upload),
                "boto3 upload": meter.metered("boto3 upload", size, direct_upload),
            },
        )
        figures.append(
            ratio_figure(
                3,
                f"Upload {medium_text}, {store}",
                f"{medium_text} random bytes to {endpoint.described}; service: multipart POST, "
                "MD5 + SHA-256 on the way, 5 MiB parts, two sent while the next is read; "
                f"baseline: {endpoint.direct_upload}; alternated {ctx.heavy_rounds}x",
                upload_samples,
                "service",
                "boto3 upload",
                "MiB/s",
                endpoint.upload_target,
            )
        )
        figures[-1].bound = UPLOAD_BOUND.format(baseline="only reads a file and sends it")
        figures[-1].notes.append(
            meter.note(
                "service",
                "boto3 upload",
                endpoint.upload_target.threshold,
                median(upload_samples["boto3 upload"]),
            )
        )

        item_id = uploaded[0]
        object_key = f"service/{item_id}"

        def direct_get(timings: Timings, key: str) -> Callable[[], float]:
            def run() -> float:
                started = time.perf_counter()
                body = s3.get_object(Bucket=bucket, Key=key)["Body"]
                headers_after = time.perf_counter() - started
                total = 0
                for chunk in body.iter_chunks(MiB):
                    total += len(chunk)
                body.close()
                return timings.add("boto3 GET", total, time.perf_counter() - started, headers_after)

            return run

        ctx.log(f"  {store}: {medium_text} downloads, service vs direct boto3 GET")
        timings = Timings()
        download_samples = alternate(
            ctx.heavy_rounds,
            {
                "service": timings.download("service", server.port, _item_path(item_id), auth),
                "boto3 GET": direct_get(timings, object_key),
            },
        )
        figures.append(
            ratio_figure(
                2,
                f"Download {medium_text}, {store}",
                f"the same {medium_text} object on {endpoint.described}; service: Basic auth, "
                "counted, 1 MiB chunks from GetObject; baseline: boto3 get_object + "
                f"iter_chunks(1 MiB) in the benchmark process; alternated {ctx.heavy_rounds}x",
                download_samples,
                "service",
                "boto3 GET",
                "MiB/s",
                endpoint.download_target,
            )
        )
        figures[-1].notes.append(timings.note())
        figures[-1].bound = timings.bound("service", "boto3 GET")

        ctx.log(f"  {store}: {large_text} downloads, service vs direct boto3 GET")
        large_timings = Timings()
        large_samples = alternate(
            ctx.heavy_rounds,
            {
                "service": large_timings.download(
                    "service", server.port, _item_path(large_id), auth
                ),
                "boto3 GET": direct_get(large_timings, f"service/{large_id}"),
            },
        )
        figures.append(
            ratio_figure(
                4,
                f"Download {large_text} vs direct GET, {store}",
                f"{large_text} object on {endpoint.described}; baseline: boto3 get_object + "
                f"iter_chunks(1 MiB); alternated {ctx.heavy_rounds}x",
                large_samples,
                "service",
                "boto3 GET",
                "MiB/s",
                None,
            )
        )
        figures[-1].notes.append(large_timings.note())
        _profile_misses(
            ctx,
            figures,
            server,
            {
                f"Download {medium_text}, {store}": lambda: download(
                    server.port, _item_path(item_id), auth
                ),
                f"Upload {medium_text}, {store}": lambda: upload_file(
                    server.port, "/v3/media", medium, auth
                ),
            },
        )
        s3.close()
    return figures
