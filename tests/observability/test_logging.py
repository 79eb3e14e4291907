"""JSON logs on stdout: one object per line, one access line per request, never a secret."""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import socket
import threading
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from gunicorn.http.wsgi import FileWrapper as GunicornFileWrapper

from media_service.api.content import SMALL_DOWNLOAD_BYTES
from media_service.backends import describe, redact_url
from media_service.observability import configure_logging
from media_service.observability.access import safe_query
from media_service.observability.logging import JsonLineFormatter, scrub
from media_service.settings import Settings
from tests.conftest import Credentials, Uploader
from tests.observability.support import LogLines, access_lines, gunicorn_style_get

ISO_MILLIS_Z = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
ACCESS_FIELDS = {
    "timestamp",
    "level",
    "logger",
    "message",
    "pid",
    "request_id",
    "method",
    "route",
    "path",
    "query",
    "status",
    "bytes_in",
    "bytes_out",
    "response_length",
    "duration_ms",
    "account_id",
    "application_id",
    "problem",
    "remote_addr",
    "user_agent",
}
MiB = 1024 * 1024
FILES_ONLY = pytest.mark.parametrize("backends", ["sqlite-files"], indirect=True)


def _ours() -> list[logging.Handler]:
    return [h for h in logging.getLogger().handlers if type(h).__name__ == "_StdoutHandler"]


# --------------------------------------------------------------------------- the formatter


def test_configure_logging_is_idempotent_and_writes_one_json_line(log_lines: LogLines) -> None:
    configure_logging("INFO")
    configure_logging("INFO")
    assert len(_ours()) == 1

    logging.getLogger("media_service.test").info("hello %s", "world", extra={"answer": 42})

    (line,) = [ln for ln in log_lines() if ln["logger"] == "media_service.test"]
    assert line["message"] == "hello world"
    assert line["level"] == "INFO"
    assert line["answer"] == 42
    assert line["pid"] == os.getpid()
    assert ISO_MILLIS_Z.match(line["timestamp"]), line["timestamp"]


def test_level_filters_and_libraries_stay_quiet(log_lines: LogLines) -> None:
    try:
        configure_logging("WARNING")
        logging.getLogger("media_service.test").info("dropped")
        logging.getLogger("media_service.test").warning("kept")
        configure_logging("DEBUG")
        assert logging.getLogger("botocore").getEffectiveLevel() == logging.WARNING
        with pytest.raises(ValueError):
            configure_logging("LOUD")
    finally:
        configure_logging("INFO")
    messages = [ln["message"] for ln in log_lines() if ln["logger"] == "media_service.test"]
    assert messages == ["kept"]


def test_a_traceback_stays_on_one_line(log_lines: LogLines) -> None:
    configure_logging("INFO")
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        logging.getLogger("media_service.test").exception("failed")
    (line,) = [ln for ln in log_lines() if ln["logger"] == "media_service.test"]
    assert "RuntimeError: boom" in line["exc_info"]


def test_messages_from_libraries_are_scrubbed(log_lines: LogLines) -> None:
    configure_logging("INFO")
    token = "eyJhbGciOiJSUzI1NiJ9.eyJhcHBsaWNhdGlvbl9pZCI6ImEifQ.c2lnbmF0dXJl"
    logging.getLogger("some.library").warning('"GET /v3/media/x?a=1&jwt-token=%s HTTP/1.1"', token)
    logging.getLogger("some.library").warning("sent Authorization: Basic dXNlcjpzM2NyZXQ=")
    lines = [ln["message"] for ln in log_lines() if ln["logger"] == "some.library"]
    assert lines == [
        '"GET /v3/media/x?a=1&jwt-token=[REDACTED] HTTP/1.1"',
        "sent Authorization: Basic [REDACTED]",
    ]
    assert scrub(f"token {token} here") == "token [REDACTED] here"


@pytest.mark.parametrize(
    ("query", "logged"),
    [
        ("", None),
        ("jwt-token=abc.def.ghi", None),
        ("order=ascending&jwt-token=abc&page_size=5", "order=ascending&page_size=5"),
        ("JWT-TOKEN=abc&x=", "x="),
        ("a=%2F&b=c d", "a=%2F&b=c+d"),
    ],
)
def test_safe_query_drops_the_token(query: str, logged: str | None) -> None:
    assert safe_query(query) == logged


# --------------------------------------------------------------------------- start-up line


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "mongodb://media:s3cr%40t@db1:27017,db2:27017/media?authSource=admin&replicaSet=rs0",
            "mongodb://db1:27017,db2:27017/media",
        ),
        (
            "mongodb+srv://media:pw@cluster0.example.net/media",
            "mongodb+srv://cluster0.example.net/media",
        ),
        ("mongodb://u:pa/ss@host/media", "mongodb://<redacted>"),
        (
            "mongodb://host/media?authMechanismProperties=AWS_SESSION_TOKEN:t@k",
            "mongodb://host/media",
        ),
        ("s3://KEY:SECRET@bucket/prefix", "s3://bucket/prefix"),
        ("sqlite:////srv/media@2/media.db", "sqlite:////srv/media@2/media.db"),
        ("file:///srv/media", "file:///srv/media"),
        ("not a url", "<redacted>"),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_describe_names_the_backends_without_credentials(tmp_path: Path) -> None:
    settings = Settings(
        database_url="mongodb://admin:hunter2@mongo:27017/media?authSource=admin",
        storage_url="s3://media/items",
        data_dir=tmp_path,
    )
    described = describe(settings)
    assert described == {"database": "mongodb://mongo:27017/media", "storage": "s3://media/items"}
    assert "hunter2" not in repr(described) and "admin" not in repr(described)


def test_start_up_line_names_the_backends(app: Flask, log_lines: LogLines) -> None:
    # The app fixture has already been built; build one more to see its line.
    from media_service.factory import create_app

    state = app.extensions["media_service"]
    create_app(state.settings, backends=state.backends)
    (line,) = [ln for ln in log_lines() if "started" in ln["message"]]
    assert line["logger"] == "media_service.factory"
    # The backends are separate fields, so log searches can filter on them.
    assert line["database"] == state.settings.database_url
    assert line["storage"] == state.settings.storage_url


# --------------------------------------------------------------------------- the access log


def test_one_access_line_per_request_with_its_fields(
    client: FlaskClient, owner: Credentials, upload: Uploader, log_lines: LogLines
) -> None:
    log_lines()  # forget the set-up's lines
    created = upload(owner.bearer(), b"x" * 1000)
    assert created.status_code == 201
    item_id = created.get_json()["id"]
    with client.get(f"/v3/media/{item_id}/info?x=1", headers=owner.basic) as info:
        assert info.status_code == 200
    with client.get("/v3/media/not-a-uuid/nope") as missing:
        assert missing.status_code == 404
    with client.put(
        f"/v3/media/{item_id}/info",
        json={"title": "T"},
        headers={**owner.basic, "X-Request-Id": "trace-me-1"},
    ) as updated:
        assert updated.status_code == 204

    up, got, nothing, put = access_lines(log_lines())
    for line in (up, got, nothing, put):
        assert set(line) == ACCESS_FIELDS
        assert line["level"] == "INFO"
        assert line["duration_ms"] >= 0

    assert (up["method"], up["route"], up["status"]) == ("POST", "/v3/media", 201)
    assert up["path"] == "/v3/media"
    assert up["bytes_in"] > 1000  # the file and the multipart framing around it
    assert up["bytes_out"] == len(created.data) == up["response_length"]
    assert (up["account_id"], up["application_id"]) == ("acct0001", "app-one")
    assert up["request_id"] == created.headers["X-Request-Id"]

    assert got["route"] == "/v3/media/<item_id>/info"
    assert got["path"] == f"/v3/media/{item_id}/info"
    assert got["query"] == "x=1"
    assert (got["account_id"], got["application_id"]) == ("acct0001", None)  # Basic

    assert nothing["status"] == 404 and nothing["route"] is None
    assert nothing["account_id"] is None and nothing["problem"] is None

    assert put["request_id"] == "trace-me-1" and put["status"] == 204
    assert put["bytes_in"] == len(b'{"title": "T"}') and put["bytes_out"] == 0


def test_problem_type_and_anonymous_principal_are_logged(
    client: FlaskClient, owner: Credentials, upload: Uploader, log_lines: LogLines
) -> None:
    item_id = upload(owner.basic, b"abc", public="true", max_downloads_allowed="1").get_json()["id"]
    log_lines()
    for _ in range(2):
        with client.get(f"/v3/media/{item_id}") as response:
            response.get_data()
    first, second = access_lines(log_lines())
    assert first["status"] == 200 and first["account_id"] is None and first["bytes_out"] == 3
    assert second["status"] == 403 and second["problem"] == "download-limit-reached"


def test_no_secret_ever_reaches_the_log(
    client: FlaskClient, owner: Credentials, upload: Uploader, capsys: pytest.CaptureFixture[str]
) -> None:
    token = owner.token()
    bad_basic = base64.b64encode(f"{owner.api_key}:wrong-secret-123456".encode()).decode()
    secrets = {
        owner.api_secret,
        base64.b64encode(f"{owner.api_key}:{owner.api_secret}".encode()).decode(),
        token,
        "wrong-secret-123456",
        bad_basic,
        "eyJnot.a.token",
    }
    # The JWT's signature and header each are secrets in their own right (a log might split it).
    secrets.update(part for part in token.split(".") if len(part) > 16)

    upload(owner.basic, b"by basic auth")
    item_id = upload({"Authorization": f"Bearer {token}"}, b"by token").get_json()["id"]
    requests_made: list[Any] = [
        client.get(f"/v3/media/{item_id}?jwt-token={token}&keep=me"),
        client.get(f"/v3/media/{item_id}/info?jwt-token={token}"),
        client.get("/v3/media", headers={"Authorization": f"Basic {bad_basic}"}),
        client.get("/v3/media", headers={"Authorization": "Bearer eyJnot.a.token"}),
        client.get("/v3/media?jwt-token=eyJnot.a.token"),
        client.get(f"/v3/media?jwt-token={token}", headers=owner.basic),  # both: 400
    ]
    statuses = []
    for response in requests_made:
        with response:
            response.get_data()
            statuses.append(response.status_code)
    assert statuses == [200, 200, 401, 401, 401, 400]

    logging.getLogger("media_service.test").info("done")
    out = capsys.readouterr().out
    assert out.count('"logger": "media_service.access"') == 2 + len(requests_made)
    for secret in secrets:
        assert secret not in out, f"a secret reached the log: {secret[:12]}..."
    assert "jwt-token" not in out
    assert '"query": "keep=me"' in out


# --------------------------------------------------------------------------- streamed bodies


@FILES_ONLY
def test_streamed_download_logs_bytes_sent_when_closed(
    client: FlaskClient, owner: Credentials, upload: Uploader, log_lines: LogLines
) -> None:
    content = os.urandom(3 * MiB + 5)
    item_id = upload(owner.basic, content).get_json()["id"]
    log_lines()

    whole = client.get(f"/v3/media/{item_id}", headers=owner.basic)
    assert access_lines(log_lines()) == []  # still streaming: nothing to report yet
    assert whole.get_data() == content
    whole.close()
    (line,) = access_lines(log_lines())
    assert line["route"] == "/v3/media/<item_id>"
    assert line["bytes_out"] == line["response_length"] == len(content)

    # A client that goes away after two chunks: the server asked for a third, so two were sent.
    partial = client.get(f"/v3/media/{item_id}", headers=owner.basic)
    chunks = iter(partial.response)
    next(chunks), next(chunks), next(chunks)
    partial.close()
    (line,) = access_lines(log_lines())
    assert line["status"] == 200
    assert line["bytes_out"] == 2 * MiB < line["response_length"]

    with client.head(f"/v3/media/{item_id}", headers=owner.basic) as head:
        assert head.headers["Content-Length"] == str(len(content))
    (line,) = access_lines(log_lines())
    assert line["method"] == "HEAD" and line["bytes_out"] == 0


def _sendfile(body: Any, receive: int | None) -> int:
    """What gunicorn does with a file wrapper: socket.sendfile from the file's position.

    `receive` bytes are read before the receiving end is closed (None: read everything).
    Returns the number of bytes the receiver got.
    """
    sender, receiver = socket.socketpair()
    got = io.BytesIO()

    def drain() -> None:
        with receiver:
            while receive is None or got.tell() < receive:
                data = receiver.recv(64 * 1024)
                if not data:
                    return
                got.write(data)

    reader = threading.Thread(target=drain)
    reader.start()
    try:
        fd = body.filelike.fileno()
        offset = os.lseek(fd, 0, os.SEEK_CUR)
        try:
            sender.sendfile(body.filelike, offset=offset, count=os.fstat(fd).st_size - offset)
        except OSError:  # the receiver went away
            pass
    finally:
        sender.close()
        reader.join(10)
        body.close()
    return got.tell()


@FILES_ONLY
def test_small_downloads_are_sent_from_memory_and_logged_at_once(
    app: Flask, owner: Credentials, upload: Uploader, log_lines: LogLines
) -> None:
    """Up to SMALL_DOWNLOAD_BYTES the body is the bytes themselves, one more is sendfile'd."""
    small = os.urandom(SMALL_DOWNLOAD_BYTES)
    large = os.urandom(SMALL_DOWNLOAD_BYTES + 1)
    small_id = upload(owner.basic, small).get_json()["id"]
    large_id = upload(owner.basic, large).get_json()["id"]
    log_lines()

    for item_id, headers, expected in [
        (small_id, {}, small),
        (large_id, {"Range": "bytes=1-1000"}, large[1:1001]),  # a short range of a large file
    ]:
        body, _ = gunicorn_style_get(app, f"/v3/media/{item_id}", {**owner.basic, **headers})
        assert not isinstance(body, GunicornFileWrapper)
        # Nothing is left to stream: the line is written before the server sends a byte.
        (line,) = access_lines(log_lines())
        assert line["bytes_out"] == line["response_length"] == len(expected)
        assert b"".join(body) == expected  # a plain list: nothing to close
        assert access_lines(log_lines()) == []  # and only once

    body, status = gunicorn_style_get(app, f"/v3/media/{large_id}", owner.basic)
    assert status == ["200 OK"]
    assert isinstance(body, GunicornFileWrapper)
    assert _sendfile(body, receive=None) == len(large)
    (line,) = access_lines(log_lines())
    assert line["bytes_out"] == len(large)


@FILES_ONLY
def test_sendfile_downloads_count_what_left_and_see_a_disconnect(
    app: Flask, owner: Credentials, upload: Uploader, log_lines: LogLines
) -> None:
    content = os.urandom(4 * MiB)
    item_id = upload(owner.basic, content).get_json()["id"]
    log_lines()

    body, status = gunicorn_style_get(app, f"/v3/media/{item_id}", owner.basic)
    assert status == ["200 OK"]
    assert isinstance(body, GunicornFileWrapper)  # still sendfile-able
    assert _sendfile(body, receive=None) == len(content)
    (line,) = access_lines(log_lines())
    assert line["bytes_out"] == len(content)

    body, _ = gunicorn_style_get(app, f"/v3/media/{item_id}", owner.basic)
    received = _sendfile(body, receive=64 * 1024)
    (line,) = access_lines(log_lines())
    assert received <= line["bytes_out"] < len(content) == line["response_length"]

    # A range that stops short of the end: gunicorn stops at Content-Length.
    body, status = gunicorn_style_get(
        app, f"/v3/media/{item_id}", {**owner.basic, "Range": "bytes=10-1000009"}
    )
    assert status == ["206 PARTIAL CONTENT"]
    for _chunk in body:  # the non-sendfile fallback reads the file to its end
        pass
    body.close()
    (line,) = access_lines(log_lines())
    assert line["status"] == 206 and line["bytes_out"] == 1_000_000 == line["response_length"]


def test_access_lines_skip_the_formatter_and_still_reach_other_handlers(
    client: FlaskClient, log_lines: LogLines, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Access lines are written straight to stdout; other handlers still get a LogRecord."""
    formatted: list[str] = []
    original_format = JsonLineFormatter.format

    def format(self: JsonLineFormatter, record: logging.LogRecord) -> str:
        formatted.append(record.name)
        return original_format(self, record)

    monkeypatch.setattr(JsonLineFormatter, "format", format)
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record)

    access = logging.getLogger("media_service.access")
    keep = Keep()
    access.addHandler(keep)
    log_lines()
    try:
        with client.get("/healthz?x=1") as response:
            assert response.status_code == 200
    finally:
        access.removeHandler(keep)

    (line,) = access_lines(log_lines())
    assert "media_service.access" not in formatted  # the fast path wrote it
    assert set(line) == ACCESS_FIELDS
    assert ISO_MILLIS_Z.match(line["timestamp"]) and line["pid"] == os.getpid()
    assert line["message"] == "GET /healthz 200" and line["query"] == "x=1"
    (record,) = seen
    assert record.getMessage() == line["message"] and record.levelno == logging.INFO
    extra = ACCESS_FIELDS - {"timestamp", "level", "logger", "message", "pid"}
    assert {k: getattr(record, k) for k in extra} == {k: line[k] for k in extra}
