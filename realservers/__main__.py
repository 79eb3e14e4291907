"""`python -m realservers install | test | stack`: the make targets behind the real servers.

    install   build or install MinIO, FerretDB, Ceph RGW, nginx and chromium (quick when present)
    test      start them on free loopback ports, run the real-backend suite, stop them
    stack     serve the service on FerretDB + MinIO in the foreground (compose without Docker)

Every server started here is stopped by PID on the way out: after the tests, on a failure,
on Ctrl-C and on SIGTERM.
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from realservers import pins
from realservers.ceph import start_ceph_rgw
from realservers.ferretdb import FerretDB, start_ferretdb
from realservers.install import INSTALLERS, install_all
from realservers.minio import Minio, start_minio

# The real-backend tests carry these markers (pyproject.toml); the fast suite skips them.
# The console's browser tests run here too: they need the chromium that `install` brings.
REAL_MARKERS = "mongo or minio or nginx or browser"
S3_MARKER = "minio"
CONTRACT_BUCKET = "media-contract"


def _say(message: str) -> None:
    print(f"[backends] {message}", file=sys.stderr, flush=True)


def _terminate_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every `finally` that stops a server runs."""

    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, handler)


@contextmanager
def _running(server: Any) -> Iterator[Any]:
    try:
        yield server
    finally:
        server.stop()


def _create_bucket(server: Any, bucket: str) -> None:
    import boto3

    s3 = server.s3
    client = boto3.client(
        "s3",
        endpoint_url=s3.endpoint,
        aws_access_key_id=s3.access_key,
        aws_secret_access_key=s3.secret_key,
        region_name=s3.region,
    )
    try:
        existing = {entry["Name"] for entry in client.list_buckets().get("Buckets", [])}
        if bucket not in existing:
            client.create_bucket(Bucket=bucket)
    finally:
        client.close()


def _s3_env(server: Any) -> dict[str, str]:
    return {
        "MEDIA_TEST_S3_ENDPOINT": server.s3.endpoint,
        "MEDIA_TEST_S3_BUCKET": CONTRACT_BUCKET,
        "MEDIA_TEST_S3_SERVER": server.name,
        **server.s3.credentials_env(),
    }


def _pytest(marker: str, env: dict[str, str], junit: Path, extra: list[str]) -> tuple[int, dict]:
    argv = [
        sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-m", marker,
        f"--junitxml={junit}", "-o", "junit_family=xunit2", *extra,
    ]  # fmt: skip
    _say(f"$ {shlex.join(argv[1:])}  (S3: {env['MEDIA_TEST_S3_SERVER']})")
    started = time.monotonic()
    code = subprocess.call(argv, env={**os.environ, **env}, cwd=pins.REPO_ROOT)
    counts = _junit_counts(junit)
    counts["seconds"] = round(time.monotonic() - started)
    return code, counts


def _junit_counts(junit: Path) -> dict[str, int]:
    """Tests, failures, errors, skips and expected failures (JUnit files count xfail as skipped)."""
    try:
        root = ET.parse(junit).getroot()
    except (OSError, ET.ParseError):
        return {}
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0, "xfailed": 0}
    for case in root.iter("testcase"):
        counts["tests"] += 1
        for outcome in case:
            if outcome.tag in ("failure", "error"):
                counts[f"{outcome.tag}s"] += 1
            elif outcome.tag == "skipped":
                xfail = outcome.get("type") == "pytest.xfail"
                counts["xfailed" if xfail else "skipped"] += 1
    return counts


def command_test(args: argparse.Namespace) -> int:
    install_all()
    root = Path(tempfile.mkdtemp(prefix="media-backends-"))
    results: list[tuple[str, int, dict]] = []
    with ExitStack() as servers:
        _say(f"starting FerretDB, MinIO and Ceph RGW under {root}")
        ferret = servers.enter_context(_running(start_ferretdb(root / "ferretdb")))
        minio = servers.enter_context(_running(start_minio(root / "minio")))
        ceph = servers.enter_context(_running(start_ceph_rgw(root / "ceph")))
        for s3 in (minio, ceph):
            _create_bucket(s3, CONTRACT_BUCKET)
        common = {
            "MEDIA_TEST_MONGO_URL": ferret.url("media_test"),
            "MEDIA_TOOLS_DIR": str(pins.tools_dir()),
            # The browser tests' screenshots (tests/browser/conftest.py), kept after the run.
            "MEDIA_TEST_ARTEFACTS_DIR": str(root / "artefacts"),
        }
        # The second pass needs only what uses the shared S3 endpoint: the fault tests start
        # private MinIO servers of their own and have run in the first.
        passes = [
            (REAL_MARKERS, minio, []),
            (S3_MARKER, ceph, ["--ignore=tests/faults/test_real_server_faults.py"]),
        ]
        for marker, s3, extra in passes:
            junit = root / f"junit-{s3.name}.xml"
            env = {**common, **_s3_env(s3)}
            code, counts = _pytest(marker, env, junit, [*extra, *args.pytest_args])
            results.append((f"-m '{marker}' with S3 on {s3.name}", code, counts))
    _say(f"console screenshots: {root / 'artefacts' / 'console-artefacts'}")
    failed = False
    for label, code, counts in results:
        _say(f"{label}: exit {code}, {counts}")
        failed |= code != 0
        if counts.get("skipped"):
            _say(f"{label}: {counts['skipped']} skipped — the real-backend suite allows none")
            failed = True
    return 1 if failed else 0


def command_install(args: argparse.Namespace) -> int:
    unknown = set(args.only) - set(INSTALLERS)
    if unknown:
        raise SystemExit(f"unknown server(s): {', '.join(sorted(unknown))}")
    install_all(args.only or None)
    return 0


def command_stack(args: argparse.Namespace) -> int:
    """FerretDB + MinIO under var/stack (kept between runs), gunicorn in front, until Ctrl-C."""
    install_all(["minio", "ferretdb"])
    root = (pins.REPO_ROOT / "var" / "stack").resolve()
    with ExitStack() as servers:
        ferret: FerretDB = servers.enter_context(_running(start_ferretdb(root / "ferretdb")))
        minio: Minio = servers.enter_context(_running(start_minio(root / "minio")))
        _create_bucket(minio, "media")
        env = {
            "MEDIA_DATABASE_URL": ferret.url("media"),
            "MEDIA_STORAGE_URL": "s3://media",
            "AWS_ENDPOINT_URL_S3": minio.s3.endpoint,
            "MEDIA_DATA_DIR": str(root / "service"),
            **minio.s3.credentials_env(),
        }
        env_file = root / "env"
        env_file.write_text("".join(f"export {k}={shlex.quote(v)}\n" for k, v in env.items()))
        _say(f"FerretDB at {ferret.url()}, MinIO at {minio.s3.endpoint} (bucket 'media')")
        _say(f"for the CLI in another shell: . {env_file} && .venv/bin/media-service ...")
        gunicorn = Path(sys.executable).with_name("gunicorn")
        argv = [str(gunicorn), "--config", "config/gunicorn.conf.py", "app:app"]
        service = subprocess.Popen(argv, env={**os.environ, **env}, cwd=pins.REPO_ROOT)
        try:
            return service.wait()
        finally:
            if service.poll() is None:
                service.send_signal(signal.SIGTERM)
                service.wait(30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m realservers", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    install = commands.add_parser("install", help="install the pinned servers into .tools/")
    install.add_argument(
        "only", nargs="*", metavar="minio|ferretdb|ceph|nginx|chromium", help="all"
    )
    install.set_defaults(run=command_install)
    test = commands.add_parser("test", help="run the real-backend suite against the servers")
    test.add_argument("pytest_args", nargs=argparse.REMAINDER, help="passed on to pytest")
    test.set_defaults(run=command_test)
    stack = commands.add_parser("stack", help="serve on FerretDB + MinIO in the foreground")
    stack.set_defaults(run=command_stack)
    args = parser.parse_args(argv)
    _terminate_on_sigterm()
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        _say("interrupted; servers stopped")
        return 130


if __name__ == "__main__":
    sys.exit(main())
