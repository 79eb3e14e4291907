"""Gunicorn settings for media-service, read from the environment when gunicorn starts.

Used by `make run` and by the container image:
    gunicorn --config config/gunicorn.conf.py app:app

Every value can be overridden with an environment variable (see config/example.env); a blank
variable means "use the default", the same rule the app's own settings follow. Command-line flags
still win over this file.
"""

from __future__ import annotations

import glob
import os
import shutil
import sys
import tempfile
from typing import NoReturn

_PREFIX = "media-service: configuration error:"


def _fail(message: str) -> NoReturn:
    # One line and exit status 2 (like a usage error): a process supervisor's log should show
    # what to fix, not a traceback through gunicorn's internals.
    print(f"{_PREFIX} {message}", file=sys.stderr, flush=True)
    raise SystemExit(2)


def _env(name: str, default: str) -> str:
    value = os.environ.get(name, "").strip()
    return value or default


def _env_int(name: str, default: int, minimum: int, maximum: int | None = None) -> int:
    raw = _env(name, str(default))
    try:
        value = int(raw)
    except ValueError:
        _fail(f"{name}: expected an integer, got {raw!r}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and <= {maximum}"
        _fail(f"{name}: must be >= {minimum}{upper}, got {value}")
    return value


# --- Socket -------------------------------------------------------------------------------------

# Loopback by default (SPEC §5: `make run` serves on 127.0.0.1:$PORT). Set explicitly because
# gunicorn's own default turns into 0.0.0.0:$PORT as soon as PORT is set, which would expose a
# developer's instance to the network. The container sets GUNICORN_BIND=0.0.0.0:8000.
_port = _env_int("PORT", 8000, 1, 65535)
bind = [b.strip() for b in _env("GUNICORN_BIND", f"127.0.0.1:{_port}").split(",") if b.strip()]

# --- Workers ------------------------------------------------------------------------------------

# Requests spend their time waiting on S3/MongoDB or on the client's socket, not on the CPU, so a
# few processes with several threads each serve far more concurrent uploads and downloads than
# sync workers, without gevent's monkey-patching of boto3 and pymongo.
# gthread, plus: header blocks are collected by the event loop (a slow client holds no thread),
# headers must be complete within GUNICORN_HEADER_TIMEOUT, body reads time out after
# GUNICORN_BODY_IDLE_TIMEOUT of silence and honour the upload path's minimum rate, and gunicorn's
# own errors (400, 408, 414, 431) are problem+json with an X-Request-Id. See docs/design.md.
worker_class = "media_service.serving.worker.MediaThreadWorker"
workers = _env_int("WEB_CONCURRENCY", 2, 1)
# Per-process backend pools (boto3's max_pool_connections, pymongo's maxPoolSize) should be at
# least this large, or threads queue for a connection instead of for I/O.
threads = _env_int("GUNICORN_THREADS", 8, 1)

# A gthread worker's heartbeat comes from its main loop, not from request threads, so this is not
# a per-request limit; it bounds how long a worker may be silent, including while it boots (app
# import, index creation with the backend timeout) — 30 s kills slow starts against a cold
# MongoDB, and a generous value costs nothing while workers are healthy.
timeout = _env_int("GUNICORN_TIMEOUT", 120, 1)
# On SIGTERM, in-flight uploads and downloads get this long to finish. Container stop grace
# periods must be longer (docker-compose.yml sets stop_grace_period accordingly).
graceful_timeout = _env_int("GUNICORN_GRACEFUL_TIMEOUT", 30, 1)
# gthread parks idle keep-alive connections in its poller, so they hold no thread; 5 s (gunicorn
# says 2) lets a client reuse its connection for a burst of calls (upload, then info, then
# download). Behind a load balancer, set it above the balancer's idle timeout.
keepalive = _env_int("GUNICORN_KEEPALIVE", 5, 0)

# Off by default: the service has no known leak. Set to recycle workers periodically; the jitter
# keeps all workers from restarting at once.
max_requests = _env_int("GUNICORN_MAX_REQUESTS", 0, 0)
max_requests_jitter = _env_int("GUNICORN_MAX_REQUESTS_JITTER", 0, 0)

# Load the app in each worker, after fork: pymongo and boto3 clients must not cross a fork, and the
# Prometheus multiprocess directory (set in on_starting) must be in the environment before
# prometheus_client is first imported, which preloading would do in the master.
preload_app = False

# The heartbeat file is touched every second; on a container's overlay filesystem that can block
# the worker for seconds under disk pressure and get it killed. /dev/shm is memory-backed.
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"

proc_name = "media-service"

# --- Logging ------------------------------------------------------------------------------------

# The app writes one JSON line per request itself; gunicorn's access log would duplicate it.
accesslog = None
errorlog = "-"
loglevel = _env("GUNICORN_LOG_LEVEL", "info")

# --- Proxies ------------------------------------------------------------------------------------

# The app applies X-Forwarded-* itself, for exactly MEDIA_TRUSTED_PROXIES hops (SPEC §4). If
# gunicorn also trusted a peer it would rewrite wsgi.url_scheme on its own, so by default it trusts
# no one, and that one setting stays the only knob. (Never "*": any client could spoof https.)
forwarded_allow_ips = _env("FORWARDED_ALLOW_IPS", "")

# --- HTTP parser limits -------------------------------------------------------------------------

# A header field must hold "Authorization: Bearer " plus the longest token the service accepts
# (media_service.auth.tokens.MAX_TOKEN_LENGTH, 16 KiB); gunicorn's 8 KiB default answered 431
# before the service could. The request line gets gunicorn's maximum (8190): search queries are
# the longest URLs and stay far below it. 100 header fields is gunicorn's default and plenty.
# The nginx front door (config/nginx/media.conf) uses matching large_client_header_buffers.
limit_request_line = 8190
limit_request_fields = 100
limit_request_field_size = 16 * 1024 + 1024

# gunicorn >= 25 opens a control socket at $HOME/.gunicorn/gunicorn.ctl by default; several
# instances (parallel tests, a dev server) would fight over that one path, and a container has no
# use for it. Give GUNICORN_CONTROL_SOCKET a path to enable it. (Older gunicorn ignores both.)
_control_socket = _env("GUNICORN_CONTROL_SOCKET", "")
if _control_socket:
    control_socket = _control_socket
else:
    control_socket_disable = True

# --- Hooks (in the master process; worker_exit and post_fork in the worker) ----------------------

_METRICS_DIR = "PROMETHEUS_MULTIPROC_DIR"
# Remembers the directory this master created, in the environment rather than a module global:
# a HUP re-reads this file into a fresh module, and on_exit must still know what to delete.
_METRICS_DIR_OWNED = "GUNICORN_OWNED_PROMETHEUS_DIR"


def _prepare_metrics_dir(server: object) -> str | None:
    """Point prometheus_client's multiprocess mode at an empty directory; return it if created."""
    path = os.environ.get(_METRICS_DIR, "").strip()
    successor = bool(getattr(server, "master_pid", 0))  # started by USR2 next to a live master
    if not path:
        # Not on /dev/shm: prometheus_client never deletes a dead worker's counter files, so with
        # worker recycling they pile up, and Docker's /dev/shm is only 64 MiB.
        path = tempfile.mkdtemp(prefix="media-service-metrics-")
        os.environ[_METRICS_DIR] = path  # forked workers inherit it
        os.environ[_METRICS_DIR_OWNED] = path
        return path
    os.makedirs(path, exist_ok=True)
    if not successor:
        # Files left by an earlier run would be summed into this run's counters. A USR2
        # successor shares the directory with the old master's still-running workers, so it
        # must leave their files alone.
        for stale in glob.glob(os.path.join(path, "*.db")):
            os.remove(stale)
    return None


def on_starting(server: object) -> None:
    """Validate the app's configuration and prepare metrics, before binding or forking."""
    created = _prepare_metrics_dir(server)
    # Import here, not at the top: gunicorn reads this file before it knows the app, and tests
    # exec it without importing the package.
    from media_service.serving.limits import LimitsError, ReadLimits
    from media_service.settings import ConfigError, Settings

    try:
        Settings.from_env()
        ReadLimits.from_env()  # GUNICORN_HEADER_TIMEOUT, GUNICORN_BODY_IDLE_TIMEOUT (workers)
    except (ConfigError, LimitsError) as exc:
        if created:
            shutil.rmtree(created, ignore_errors=True)
            os.environ.pop(_METRICS_DIR, None)
            os.environ.pop(_METRICS_DIR_OWNED, None)
        _fail(str(exc))


def child_exit(server: object, worker: object) -> None:
    """Drop a dead worker's live-gauge files so /metrics stops reporting it."""
    try:
        from prometheus_client import multiprocess
    except ImportError:  # metrics are optional; the server must not depend on them
        return
    pid = getattr(worker, "pid", None)
    if pid is not None and os.environ.get(_METRICS_DIR):
        multiprocess.mark_process_dead(pid)


def worker_exit(server: object, worker: object) -> None:
    """In the worker, once it has stopped serving: close the app's database clients.

    A worker that exits with its connections open leaves them to the interpreter's teardown,
    in no particular order; closed here, SQLite checkpoints its WAL and MongoDB ends its
    sessions before the process goes.
    """
    app = getattr(worker, "loaded_app", None)  # set by MediaThreadWorker.load_wsgi
    if app is None:
        return
    from media_service.context import close_backends

    close_backends(app)


def on_exit(server: object) -> None:
    """Remove the metrics directory this master created, unless a USR2 successor still uses it."""
    owned = os.environ.get(_METRICS_DIR_OWNED)
    if not owned or owned != os.environ.get(_METRICS_DIR):
        return
    if getattr(server, "reexec_pid", 0):
        return
    shutil.rmtree(owned, ignore_errors=True)


# glibc's malloc raises its mmap threshold dynamically after a large block is freed, so the
# 8 MiB part buffers of an S3 multipart upload end up in per-thread arenas and stay resident
# after each upload (measured: +70-90 MiB RSS for one 1 GiB upload). A fixed 4 MiB threshold
# serves such buffers with mmap and returns them to the OS on free, while the 1 MiB chunks of
# downloads stay on the heap (at 1 MiB every chunk cost an mmap and fresh page faults: S3
# downloads ran ~30% slower). M_MMAP_THRESHOLD is -3.
MMAP_THRESHOLD_BYTES = _env_int("GUNICORN_MALLOC_MMAP_THRESHOLD", 4 * 1024 * 1024, 0)


def post_fork(server: object, worker: object) -> None:
    if MMAP_THRESHOLD_BYTES <= 0:
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        pass  # not glibc (e.g. musl): nothing to tune
