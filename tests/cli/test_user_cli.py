"""The `media` user CLI, driven through main(argv) against the app served on 127.0.0.1.

The server runs the embedded default (SQLite + files); the client library's own suite covers
the other backend pair. Credentials come from the environment, as a user would set them.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from flask import Flask

from media_service.client import BasicAuth, MediaClient, MediaItem
from media_service.settings import Settings
from media_service.user_cli import main
from tests.client.test_client import serve
from tests.conftest import Credentials, make_settings

pytestmark = pytest.mark.parametrize("backends", ["sqlite-files"], indirect=True)

BAR_GLYPH = "━"  # rich's bar
ESC = "\x1b["

Run = Callable[..., tuple[int, str, str]]


@pytest.fixture(autouse=True)
def _user_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No proxies, no netrc and no forced colour from the developer's or CI's environment;
    unfinished uploads are remembered under the test's own state directory."""
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent/netrc")
    for name in ("FORCE_COLOR", "TTY_COMPATIBLE", "NO_COLOR"):
        monkeypatch.delenv(name, raising=False)
    for name in (
        "MEDIA_URL",
        "MEDIA_API_KEY",
        "MEDIA_API_SECRET",
        "MEDIA_JWT",
        "MEDIA_APPLICATION_ID",
        "MEDIA_PRIVATE_KEY_FILE",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """The server shares the test's process and stdout: its access log must not mix in."""
    return make_settings(tmp_path, log_level="ERROR")


class Recorder:
    """WSGI middleware noting each request's method, path and headers."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.cut_next_download_at: int | None = None

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        headers = {
            key[5:].replace("_", "-").title(): value
            for key, value in environ.items()
            if key.startswith("HTTP_")
        }
        method, path = environ["REQUEST_METHOD"], environ["PATH_INFO"]
        self.requests.append((method, path, headers))
        body = self.app(environ, start_response)
        cut = self.cut_next_download_at
        if cut is not None and method == "GET" and not path.endswith("/info"):
            if path.count("/") == 3:  # /v3/media/<id>: the content
                self.cut_next_download_at = None
                return _truncated(body, cut, environ["werkzeug.socket"])
        return body

    def downloads(self) -> list[dict[str, str]]:
        return [h for m, p, h in self.requests if m == "GET" and p.count("/") == 3]


def _truncated(body: Iterable[bytes], limit: int, sock: socket.socket) -> Iterable[bytes]:
    """The first `limit` bytes of a body, then the connection is cut."""
    sent = 0
    try:
        for chunk in body:
            if sent + len(chunk) >= limit:
                yield chunk[: limit - sent]
                sock.shutdown(socket.SHUT_RDWR)
                return
            sent += len(chunk)
            yield chunk
    finally:
        close = getattr(body, "close", None)
        if close is not None:
            close()


@pytest.fixture
def recorder(app: Flask) -> Recorder:
    return Recorder(app.wsgi_app)


@pytest.fixture
def server(request: pytest.FixtureRequest, app: Flask, recorder: Recorder) -> str:
    app.wsgi_app = recorder  # type: ignore[method-assign]
    return serve(request, app)


@pytest.fixture
def run(
    server: str,
    owner: Credentials,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> Run:
    """Run `media ARGV…` as the owner (Basic auth from the environment): (status, out, err)."""
    monkeypatch.setenv("MEDIA_URL", server)
    monkeypatch.setenv("MEDIA_API_KEY", owner.api_key)
    monkeypatch.setenv("MEDIA_API_SECRET", owner.api_secret)

    def _run(*argv: str | Path) -> tuple[int, str, str]:
        capsys.readouterr()
        status = main([str(arg) for arg in argv])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        assert owner.api_secret not in out + err
        return status, out, err

    return _run


@pytest.fixture
def media(server: str, owner: Credentials) -> Iterator[MediaClient]:
    """The library client, to check what the CLI did."""
    with MediaClient(server, auth=BasicAuth(owner.api_key, owner.api_secret)) as client:
        yield client


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def upload(media: MediaClient, data: bytes, name: str = "x.bin", **fields: Any) -> MediaItem:
    return media.upload_file(io.BytesIO(data), filename=name, **fields)


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


# --------------------------------------------------------------------------- upload


def test_upload_of_a_folder_reports_each_file(run: Run, media: MediaClient, tmp_path: Path) -> None:
    files = [write(tmp_path / "in" / f"{n}.bin", os.urandom(1000 + n)) for n in range(3)]
    status, out, err = run("upload", *files, "--public", "--title", "Spring")
    assert status == 0, err
    lines = out.splitlines()
    assert len(lines) == 3
    for line, path in zip(lines, files, strict=True):
        item_id, shown = line.split("  ")
        assert shown == str(path)
        item = media.get(item_id)
        assert item.original_file_name == path.name and item.public and item.title == "Spring"
        assert item.etag == md5(path.read_bytes())
    assert err == "3 uploaded, 0 failed\n"  # not a terminal: no progress bar


def test_upload_goes_on_after_a_failed_file_and_exits_1(run: Run, tmp_path: Path) -> None:
    good = write(tmp_path / "good.wav", b"RIFF" + os.urandom(100))
    folder = tmp_path / "folder"
    folder.mkdir()
    status, out, err = run("upload", tmp_path / "missing.wav", folder, good)
    assert status == 1
    assert out.endswith(f"  {good}\n") and len(out.splitlines()) == 1
    assert f"media: {tmp_path / 'missing.wav'}: no such file\n" in err
    assert f"media: {folder}: is a directory" in err
    assert err.endswith("1 uploaded, 2 failed\n")


def test_upload_recursive_and_json(run: Run, tmp_path: Path) -> None:
    write(tmp_path / "d" / "a.txt", b"a")
    write(tmp_path / "d" / "sub" / "b.txt", b"bb")
    status, out, err = run("upload", "-r", tmp_path / "d", "--json", "--info", '{"k": 1}')
    assert status == 0, err
    results = json.loads(out)
    assert [r["file"] for r in results] == [
        str(tmp_path / "d/a.txt"),
        str(tmp_path / "d/sub/b.txt"),
    ]
    assert all(r["ok"] for r in results)
    assert [r["item"]["media_size"] for r in results] == [1, 2]
    assert results[0]["item"]["metadata_primary"] == '{"k": 1}'


def test_the_upload_transport_is_chosen_per_file_by_size(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`choose_uploader` picks multipart or tus for each file."""
    from media_service.user_cli import commands
    from media_service.user_cli.transfers import MultipartUploader

    chosen: list[int] = []

    def choose(client: MediaClient, size: int, mode: str) -> MultipartUploader:
        assert mode == "auto"
        chosen.append(size)
        return MultipartUploader(client)

    monkeypatch.setattr(commands, "choose_uploader", choose)
    files = [write(tmp_path / f"{n}.bin", b"x" * n) for n in (3, 7)]
    status, _, err = run("upload", *files)
    assert status == 0, err
    assert chosen == [3, 7]


# --------------------------------------------------------------------------- resumable upload

MIB = 1024 * 1024


@pytest.fixture
def small_tus(monkeypatch: pytest.MonkeyPatch) -> None:
    """tus from 1 MiB in 1 MiB chunks, and quick retries: a few MiB exercise every path."""
    from media_service.client import resumable
    from media_service.user_cli import transfers

    monkeypatch.setattr(transfers, "TUS_THRESHOLD", MIB)
    monkeypatch.setattr(transfers, "TUS_CHUNK_SIZE", MIB)
    monkeypatch.setattr(resumable, "BACKOFF", 0.01)


def tus_requests(recorder: Recorder) -> list[tuple[str, str, dict[str, str]]]:
    return [r for r in recorder.requests if r[1].startswith("/v3/media/uploads")]


def cut_patch_body(recorder: Recorder, number: int, after: int) -> None:
    """Cut the connection of the `number`th PATCH (1-based) once `after` bytes arrived."""
    inner = recorder.app
    seen = 0

    def cutting(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        nonlocal seen
        if environ["REQUEST_METHOD"] == "PATCH":
            seen += 1
            if seen == number:
                environ["wsgi.input"] = _CutInput(
                    environ["wsgi.input"], after, environ["werkzeug.socket"]
                )
        return inner(environ, start_response)

    recorder.app = cutting


class _CutInput:
    def __init__(self, stream: Any, limit: int, sock: socket.socket) -> None:
        self._stream, self._left, self._sock = stream, limit, sock

    def read(self, size: int = -1) -> bytes:
        if self._left <= 0:
            self._sock.shutdown(socket.SHUT_RDWR)
            return b""
        data: bytes = self._stream.read(self._left if size < 0 else min(size, self._left))
        self._left -= len(data)
        return data

    def readline(self, size: int = -1) -> bytes:
        return self.read(size)


@pytest.mark.usefixtures("small_tus")
def test_a_large_file_goes_by_tus_with_its_fields(
    run: Run, recorder: Recorder, media: MediaClient, tmp_path: Path
) -> None:
    data = os.urandom(3 * MIB + 17)
    big = write(tmp_path / "big.bin", data)
    small = write(tmp_path / "small.bin", b"small")
    status, out, err = run("upload", big, small, "--public", "--title", "Big")
    assert status == 0, err
    big_id, small_id = (line.split("  ")[0] for line in out.splitlines())
    item = media.get(big_id)
    assert item.etag == md5(data) and item.media_size == len(data)
    assert item.original_file_name == "big.bin" and item.public and item.title == "Big"
    methods = [m for m, _, _ in tus_requests(recorder)]
    assert methods == ["OPTIONS", "POST", "PATCH", "PATCH", "PATCH", "PATCH"]  # asked once
    patches = [h for m, _, h in tus_requests(recorder) if m == "PATCH"]
    assert [h["Upload-Offset"] for h in patches] == [str(n * MIB) for n in range(4)]
    assert all(h["Upload-Checksum"].startswith("md5 ") for h in patches)
    # The small file went by the multipart POST.
    posts = [p for m, p, _ in recorder.requests if m == "POST" and p == "/v3/media"]
    assert len(posts) == 1 and media.get(small_id).media_size == 5
    assert not list((tmp_path / "state").rglob("*.json"))  # nothing left to resume


@pytest.mark.usefixtures("small_tus")
def test_a_connection_cut_mid_upload_resumes_from_the_servers_offset(
    run: Run, recorder: Recorder, media: MediaClient, tmp_path: Path
) -> None:
    data = os.urandom(3 * MIB)
    path = write(tmp_path / "cut.bin", data)
    cut_patch_body(recorder, number=2, after=MIB // 2)
    status, out, err = run("upload", path)
    assert status == 0, err
    assert media.get(out.split()[0]).etag == md5(data)
    methods = [m for m, _, _ in tus_requests(recorder)]
    assert methods.count("POST") == 1 and "HEAD" in methods
    head_at = methods.index("HEAD")
    assert methods[head_at - 1] == "PATCH"  # the broken one
    resumed = [h for m, _, h in tus_requests(recorder)[head_at:] if m == "PATCH"][0]
    assert int(resumed["Upload-Offset"]) in range(MIB, 2 * MIB)  # not from the start


@pytest.mark.usefixtures("small_tus")
def test_an_interrupted_upload_is_taken_up_by_the_next_run(
    run: Run,
    recorder: Recorder,
    media: MediaClient,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from media_service.client import resumable

    monkeypatch.setattr(resumable, "RETRIES", 0)  # the first run gives up at the cut
    data = os.urandom(3 * MIB)
    path = write(tmp_path / "again.bin", data)
    cut_patch_body(recorder, number=2, after=MIB // 4)
    status, out, err = run("upload", path, "--title", "Again")
    assert status == 1 and out == ""
    assert list((tmp_path / "state").rglob("*.json"))  # the upload's URL, for the next run
    first_run = len(recorder.requests)
    status, out, err = run("upload", path, "--title", "Again")
    assert status == 0, err
    item = media.get(out.split()[0])
    assert item.etag == md5(data) and item.title == "Again"
    second = [(m, h) for m, p, h in recorder.requests[first_run:] if "/uploads" in p]
    assert [m for m, _ in second][:3] == ["OPTIONS", "HEAD", "PATCH"]  # no new upload
    assert int(second[2][1]["Upload-Offset"]) >= MIB
    assert not list((tmp_path / "state").rglob("*.json"))


@pytest.mark.usefixtures("small_tus")
def test_a_service_without_tus_gets_the_multipart_post(
    run: Run, recorder: Recorder, media: MediaClient, tmp_path: Path
) -> None:
    inner = recorder.app

    def no_tus(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ["PATH_INFO"].startswith("/v3/media/uploads"):
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"no such thing"]
        return inner(environ, start_response)

    recorder.app = no_tus
    data = os.urandom(2 * MIB)
    path = write(tmp_path / "plain.bin", data)
    status, out, err = run("upload", path)
    assert status == 0, err
    assert media.get(out.split()[0]).etag == md5(data)
    assert [m for m, _, _ in tus_requests(recorder)] == ["OPTIONS"]
    status, out, err = run("upload", path, "--resumable", "always")
    assert status == 1 and "does not offer resumable uploads" in err


@pytest.mark.usefixtures("small_tus")
def test_resumable_never_and_progress_bars_with_tus(
    run: Run, recorder: Recorder, tmp_path: Path
) -> None:
    path = write(tmp_path / "shown.bin", os.urandom(2 * MIB))
    status, _, err = run("upload", path, "--resumable", "never")
    assert status == 0, err
    assert tus_requests(recorder) == []
    status, _, err = run("upload", path, "--progress", "always")
    assert status == 0
    assert "shown.bin" in err and BAR_GLYPH in err
    assert [m for m, _, _ in tus_requests(recorder)].count("PATCH") == 2


def test_an_upload_whose_etag_is_not_the_md5_sent_fails(
    run: Run, recorder: Recorder, tmp_path: Path
) -> None:
    inner = recorder.app

    def tampering(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        body = b"".join(inner(environ, start_response))
        if environ["REQUEST_METHOD"] == "POST":
            item = json.loads(body)
            body = body.replace(item["etag"].encode(), b"0" * 32)  # same length
        return [body]

    recorder.app = tampering
    path = write(tmp_path / "sent.bin", b"the bytes sent")
    status, out, err = run("upload", path)
    assert status == 1 and out == ""
    assert f"is not the MD5 of the bytes sent ({md5(b'the bytes sent')})" in err
    assert err.startswith(f"media: {path}: stored as ")


def test_upload_refused_by_the_service_names_the_reason(run: Run, tmp_path: Path) -> None:
    big = write(tmp_path / "big.bin", b"\0" * (8 * 1024 * 1024 + 1))  # over the test cap
    small = write(tmp_path / "small.bin", b"ok")
    status, out, err = run("upload", big, small)
    assert status == 1
    assert out.endswith(f"  {small}\n")
    assert f"media: {big}: 413 " in err


def test_upload_with_a_wrong_secret_stops_at_the_first_401(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDIA_API_SECRET", "not-the-secret-at-all")
    files = [write(tmp_path / f"{n}.bin", b"x") for n in range(3)]
    status, out, err = run("upload", *files)
    assert status == 1 and out == ""
    assert f"media: {files[0]}: 401 " in err
    assert "stopped: 2 more not attempted" in err
    assert "not-the-secret-at-all" not in err
    assert err.endswith("0 uploaded, 3 failed\n")


def test_server_down_is_one_line(run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("MEDIA_URL", f"http://127.0.0.1:{port}")
    status, out, err = run("ls")
    assert status == 1 and out == ""
    assert (
        err == f"media: cannot reach the service (http://127.0.0.1:{port}/v3/media): "
        "connection failed\n"
    )
    files = [write(tmp_path / f"{n}.bin", b"x") for n in range(2)]
    status, _, err = run("upload", *files)
    assert status == 1 and "cannot reach the service" in err and "1 more not attempted" in err


# --------------------------------------------------------------------------- ls


def test_ls_pages_through_everything_as_a_table(
    run: Run, media: MediaClient, recorder: Recorder
) -> None:
    ids = [upload(media, b"%d" % n, f"{n}.txt", title=f"t{n}").id for n in range(5)]
    status, out, err = run("ls", "--page-size", "2")
    assert status == 0, err
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "CREATED", "SIZE", "PUBLIC", "NAME", "TITLE"]
    assert [row.split()[0] for row in rows] == ids[::-1]  # newest first
    assert rows[0].split()[-2:] == ["4.txt", "t4"]
    searches = [p for m, p, _ in recorder.requests if m == "GET" and p == "/v3/media"]
    assert len(searches) == 3  # 2 + 2 + 1


def test_ls_json_and_time_window(run: Run, media: MediaClient) -> None:
    item = upload(media, b"hello", "h.txt")
    status, out, _ = run("ls", "--json", "--since", "1h", "--order", "ascending")
    assert status == 0
    assert [entry["id"] for entry in json.loads(out)] == [item.id]
    assert json.loads(out)[0]["etag"] == md5(b"hello")
    status, out, err = run("ls", "--json", "--until", "2000-01-01")
    assert (status, json.loads(out)) == (0, [])
    status, out, err = run("ls", "--since", "2999-01-01T00:00Z")
    assert (status, out, err) == (0, "", "media: no items\n")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--since", "yesterday"], "not a time: 'yesterday'"),
        (["--page-size", "500"], "--page-size must be between 1 and 100"),
    ],
)
def test_ls_refuses_bad_arguments(run: Run, argv: list[str], message: str) -> None:
    status, out, err = run("ls", *argv)
    assert status == 2 and out == ""
    assert err.startswith(f"media: {message}") and err.count("\n") == 1


# --------------------------------------------------------------------------- get


def test_get_writes_the_item_under_its_name(
    run: Run, media: MediaClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    content = os.urandom(3 * 1024 * 1024 + 5)
    item = upload(media, content, "song.mp3")
    monkeypatch.chdir(tmp_path)
    status, out, err = run("get", item.id)
    assert status == 0, err
    assert (tmp_path / "song.mp3").read_bytes() == content
    assert out == "song.mp3  (3.0 MiB, MD5 verified)\n" and err == ""


def test_get_to_stdout(run: Run, media: MediaClient) -> None:
    item = upload(media, b"plain text\n", "t.txt")
    status, out, _ = run("get", item.id, "-o", "-")
    assert (status, out) == (0, "plain text\n")


def test_an_interrupted_download_is_resumed_with_range_and_if_range(
    run: Run, media: MediaClient, recorder: Recorder, tmp_path: Path
) -> None:
    content = os.urandom(2 * 1024 * 1024 + 77)
    item = upload(media, content, "long.wav")
    dest = tmp_path / "long.wav"
    recorder.cut_next_download_at = 1024 * 1024 + 3
    status, out, err = run("get", item.id, "-o", dest)
    assert status == 1 and out == ""
    assert err.startswith("media: download interrupted at ")
    assert f"{dest} is kept: run the same command again to resume" in err
    kept = dest.stat().st_size
    assert 0 < kept <= 1024 * 1024 + 3 and content.startswith(dest.read_bytes())

    status, out, err = run("get", item.id, "-o", dest)
    assert status == 0, err
    assert out == f"{dest}  (resumed at byte {kept}, MD5 verified)\n"
    assert dest.read_bytes() == content
    last = recorder.downloads()[-1]
    assert last["Range"] == f"bytes={kept}-"
    assert last["If-Range"] == f'"{item.etag}"'


def test_a_partial_file_that_is_not_the_item_is_detected_and_deleted(
    run: Run, media: MediaClient, tmp_path: Path
) -> None:
    item = upload(media, os.urandom(5000), "a.bin")
    dest = write(tmp_path / "a.bin", os.urandom(1000))  # not the item's first bytes
    status, out, err = run("get", item.id, "-o", dest)
    assert status == 1 and out == ""
    assert err.startswith(f"media: {dest} does not match the item's ETag")
    assert "deleted; run the command again to download it whole" in err
    assert not dest.exists()
    status, _, _ = run("get", item.id, "-o", dest)
    assert status == 0 and md5(dest.read_bytes()) == item.etag


def test_a_complete_file_is_only_checked(
    run: Run, media: MediaClient, recorder: Recorder, tmp_path: Path
) -> None:
    item = upload(media, b"complete", "c.txt")
    dest = write(tmp_path / "c.txt", b"complete")
    status, out, _ = run("get", item.id, "-o", dest)
    assert (status, out) == (0, f"{dest}  (already complete, MD5 verified)\n")
    assert recorder.downloads() == []


def test_get_of_an_unknown_item_is_404_in_one_line(run: Run, tmp_path: Path) -> None:
    missing = str(uuid.uuid4())
    status, out, err = run("get", missing, "-o", tmp_path / "x")
    assert status == 1 and out == ""
    assert err.startswith("media: 404 ") and err.count("\n") == 1
    assert not (tmp_path / "x").exists()


def test_get_follows_a_redirect_without_sending_credentials_to_the_other_host(
    request: pytest.FixtureRequest,
    run: Run,
    media: MediaClient,
    recorder: Recorder,
    tmp_path: Path,
) -> None:
    content = os.urandom(4000)
    item = upload(media, content, "r.bin")
    seen: list[dict[str, str]] = []

    def blob_host(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        seen.append({k: v for k, v in environ.items() if k.startswith("HTTP_")})
        start_response("200 OK", [("Content-Length", str(len(content))), ("ETag", '"s3-style-1"')])
        return [content]

    other = serve(request, blob_host).replace("127.0.0.1", "localhost")
    inner = recorder.app

    def offloading(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] == "GET" and environ["PATH_INFO"] == f"/v3/media/{item.id}":
            start_response("302 Found", [("Location", f"{other}/presigned?sig=1")])
            return [b""]
        return inner(environ, start_response)

    recorder.app = offloading
    dest = tmp_path / "r.bin"
    status, out, err = run("get", item.id, "-o", dest)
    assert status == 0, err
    assert dest.read_bytes() == content  # checked against the item's ETag, not the blob's
    assert len(seen) == 1 and "HTTP_AUTHORIZATION" not in seen[0]


# --------------------------------------------------------------------------- info, update, rm


def test_info_update_and_rm(run: Run, media: MediaClient) -> None:
    item = upload(media, b"data", "d.txt", title="old", description="gone soon")
    status, out, _ = run("info", item.id)
    assert status == 0
    assert any(line.split() == ["title", "old"] for line in out.splitlines())
    status, out, _ = run("info", item.id, "--json")
    assert json.loads(out)["etag"] == md5(b"data") and json.loads(out)["public_item"] is False

    status, out, err = run(
        "update", item.id, "--title", "new", "--public", "--max-downloads", "3",
        "--clear", "description", "--json",
    )  # fmt: skip
    assert status == 0, err
    updated = json.loads(out)
    assert (updated["title"], updated["public"], updated["max_downloads_allowed"]) == (
        "new",
        True,
        3,
    )
    assert updated["description"] is None

    other = upload(media, b"2", "2.txt")
    missing = str(uuid.uuid4())
    status, out, err = run("rm", item.id, missing, other.id)
    assert status == 1
    assert out == f"deleted {item.id}\ndeleted {other.id}\n"
    assert err.startswith(f"media: {missing}: 404 ")
    status, _, err = run("info", item.id)
    assert status == 1 and err.startswith("media: 404 ")


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "nothing to update"),
        (["--title", "a", "--clear", "title"], "--clear title and --title contradict"),
    ],
)
def test_update_refuses_contradictions(run: Run, argv: list[str], message: str) -> None:
    status, out, err = run("update", str(uuid.uuid4()), *argv)
    assert status == 2 and out == "" and err.startswith(f"media: {message}")


def test_update_reports_the_services_validation_errors(run: Run, media: MediaClient) -> None:
    item = upload(media, b"x")
    status, _, err = run("update", item.id, "--max-downloads", "-1")
    assert status == 1
    assert err.startswith("media: 400 ") and "max_downloads_allowed" in err


# --------------------------------------------------------------------------- progress


def test_progress_bars_when_forced(run: Run, media: MediaClient, tmp_path: Path) -> None:
    path = write(tmp_path / "shown.bin", os.urandom(2 * 1024 * 1024))
    status, out, err = run("upload", path, "--progress", "always")
    assert status == 0
    assert "shown.bin" in err and BAR_GLYPH in err and ESC in err
    item_id = out.split()[0]
    status, out, err = run("get", item_id, "-o", tmp_path / "back.bin", "--progress", "always")
    assert status == 0 and "back.bin" in err and BAR_GLYPH in err
    assert ESC not in out  # results stay plain on stdout


def test_no_progress_when_not_a_terminal_even_with_force_color(
    run: Run, media: MediaClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")
    path = write(tmp_path / "quiet.bin", os.urandom(1024 * 1024))
    status, out, err = run("upload", path)
    assert status == 0 and err == ""
    status, _, err = run("get", out.split()[0], "-o", tmp_path / "q2.bin")
    assert status == 0 and err == ""


def test_progress_bars_on_a_real_terminal(
    run: Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`auto` sees a pseudo-terminal on stderr and draws; stdout (a capture) stays plain."""
    try:
        master, slave = os.openpty()
    except OSError as error:  # a container without /dev/ptmx
        pytest.skip(f"no pseudo-terminal: {error}")
    terminal = os.fdopen(slave, "w", encoding="utf-8")
    drawn = bytearray()

    def drain() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO once the slave side is closed
                return
            if not data:
                return
            drawn.extend(data)

    reader = threading.Thread(target=drain)
    reader.start()
    path = write(tmp_path / "tty.bin", os.urandom(1024 * 1024))
    monkeypatch.setattr("sys.stderr", terminal)
    try:
        status, out, _ = run("upload", path)
    finally:
        monkeypatch.undo()
        terminal.close()
        reader.join(timeout=10)
        os.close(master)
    assert status == 0 and out.endswith(f"  {path}\n")
    text = drawn.decode("utf-8", "replace")
    assert "tty.bin" in text and BAR_GLYPH in text


# --------------------------------------------------------------------------- credentials


def test_no_credentials_is_a_usage_error(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MEDIA_API_KEY")
    monkeypatch.delenv("MEDIA_API_SECRET")
    status, out, err = run("ls")
    assert status == 2 and out == ""
    assert err.startswith("media: no credentials: set MEDIA_API_KEY and MEDIA_API_SECRET")


def test_a_minted_jwt_from_the_environment(
    run: Run,
    media: MediaClient,
    owner: Credentials,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    basic_item = upload(media, b"basic")
    key = write(tmp_path / "app.key", owner.private_key.encode())
    monkeypatch.delenv("MEDIA_API_KEY")
    monkeypatch.delenv("MEDIA_API_SECRET")
    monkeypatch.setenv("MEDIA_APPLICATION_ID", owner.application_id)
    monkeypatch.setenv("MEDIA_PRIVATE_KEY_FILE", str(key))
    status, out, err = run("upload", write(tmp_path / "j.txt", b"jwt"), "--json")
    assert status == 0, err
    assert json.loads(out)[0]["item"]["application_id"] == owner.application_id
    status, out, _ = run("ls", "--json")  # a JWT sees its application's items only
    assert basic_item.id not in out and len(json.loads(out)) == 1


def test_credential_flags_override_the_environment(
    run: Run, owner: Credentials, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDIA_API_SECRET", "a-stale-secret-in-the-env")
    token = write(tmp_path / "jwt", (owner.token() + "\n").encode())
    status, _, err = run("ls", "--jwt-file", token)
    assert status == 0, err
    status, _, err = run("ls", "--api-key", owner.api_key, "--api-secret-file", tmp_path / "no")
    assert status == 2 and err.startswith(f"media: cannot read the API secret from {tmp_path}")
    status, _, err = run("ls")
    assert status == 1 and err.startswith("media: 401 ")
    assert "a-stale-secret-in-the-env" not in err


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("ftp://example.com", "the service URL must be http(s)://host[:port]"),
        ("http://key:secret@example.com", "the service URL must not contain credentials"),
    ],
)
def test_bad_urls(run: Run, monkeypatch: pytest.MonkeyPatch, url: str, message: str) -> None:
    monkeypatch.setenv("MEDIA_URL", url)
    status, _, err = run("ls")
    assert status == 2 and err.startswith(f"media: {message}") and "secret@" not in err


def test_a_malformed_token_is_refused_without_echoing_it(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MEDIA_JWT", "eyJhbGciOi secret-part")
    status, _, err = run("ls")
    assert status == 2 and "secret-part" not in err
    assert err == "media: the JWT contains spaces or control characters\n"


def test_upload_of_an_empty_directory(run: Run, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    status, out, err = run("upload", "-r", tmp_path / "empty")
    assert (status, out) == (2, "") and err.startswith("media: no files to upload")


def test_resumable_always_takes_small_and_empty_files(
    run: Run, recorder: Recorder, media: MediaClient, tmp_path: Path
) -> None:
    empty = write(tmp_path / "empty.bin", b"")
    tiny = write(tmp_path / "tiny.txt", b"tiny")
    status, out, err = run("upload", empty, tiny, "--resumable", "always")
    assert status == 0, err
    sizes = [media.get(line.split()[0]).media_size for line in out.splitlines()]
    assert sizes == [0, 4]
    assert [m for m, p, _ in recorder.requests if m == "POST"] == ["POST", "POST"]
    assert all(p == "/v3/media/uploads" for m, p, _ in recorder.requests if m == "POST")
