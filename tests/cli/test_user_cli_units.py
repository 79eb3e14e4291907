"""The `media` CLI's pure parts: times, sizes, tables, and where credentials come from."""

from __future__ import annotations

import argparse
import io
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from media_service.auth import generate_rsa_keypair
from media_service.client import BasicAuth, JwtAuth, MediaClientError
from media_service.client.resumable import TusSupport
from media_service.user_cli.connection import (
    ConnectionConfigError,
    add_connection_arguments,
    resolve,
)
from media_service.user_cli.output import human_size, parse_when, timestamp, write_table
from media_service.user_cli.progress import Transfers
from media_service.user_cli.transfers import (
    TUS_THRESHOLD,
    MultipartUploader,
    ResumableUploader,
    UploadState,
    choose_uploader,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30m", NOW - timedelta(minutes=30)),
        ("12h", NOW - timedelta(hours=12)),
        ("7d", NOW - timedelta(days=7)),
        ("2w", NOW - timedelta(weeks=2)),
        ("2026-11-01", datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01T14:00Z", datetime(2026, 11, 1, 14, tzinfo=UTC)),
        ("2026-11-01T14:00+02:00", datetime(2026, 11, 1, 12, tzinfo=UTC)),
    ],
)
def test_parse_when(text: str, expected: datetime) -> None:
    assert parse_when(text, now=NOW) == expected


@pytest.mark.parametrize("text", ["", "yesterday", "7 days", "-1d", "99999999999d"])
def test_parse_when_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_when(text, now=NOW)


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1536, "1.5 KiB"),
        (3 * 1024**2, "3.0 MiB"),
        (5 * 1024**5, "5120.0 TiB"),
    ],
)
def test_human_size(size: int, text: str) -> None:
    assert human_size(size) == text


def test_timestamp_has_milliseconds_and_z() -> None:
    assert (
        timestamp(datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)) == "2026-01-02T03:04:05.678Z"
    )
    assert timestamp(None) is None


def test_table_pads_all_but_the_last_column() -> None:
    out = io.StringIO()
    write_table([("ID", "NAME", "TITLE"), ("a", "long-name", "-"), ("bbb", "n", "t")], out)
    assert out.getvalue() == "ID   NAME       TITLE\na    long-name  -\nbbb  n          t\n"


def test_progress_mode_is_checked_and_off_by_default_off_a_terminal() -> None:
    with pytest.raises(ValueError):
        Transfers("sometimes")
    transfers = Transfers("auto", io.StringIO())
    assert not transfers.enabled
    with transfers.shown():
        bar = transfers.bar("x", 10)
        bar.advance(5)
        bar.close()
    assert Transfers("always", io.StringIO()).enabled
    assert not Transfers("never", io.StringIO()).enabled


# --------------------------------------------------------------------------- connection


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_connection_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "app.key"
    path.write_text(generate_rsa_keypair()[0])
    return path


def test_the_environment_gives_url_and_basic() -> None:
    env = {"MEDIA_URL": "https://media.example/", "MEDIA_API_KEY": "k", "MEDIA_API_SECRET": "s"}
    connection = resolve(parse(), env)
    assert connection.url == "https://media.example"
    assert connection.auth == BasicAuth("k", "s")
    assert resolve(parse(), {"MEDIA_API_KEY": "k", "MEDIA_API_SECRET": "s"}).url == (
        "http://127.0.0.1:8000"
    )


def test_a_token_wins_over_an_application_key_over_basic(key_file: Path) -> None:
    env = {
        "MEDIA_API_KEY": "k",
        "MEDIA_API_SECRET": "s",
        "MEDIA_APPLICATION_ID": "app",
        "MEDIA_PRIVATE_KEY_FILE": str(key_file),
    }
    minted = resolve(parse(), env).auth
    assert isinstance(minted, JwtAuth) and minted.header().startswith("Bearer ey")
    ready = resolve(parse(), {**env, "MEDIA_JWT": "a.b.c"}).auth
    assert isinstance(ready, JwtAuth) and ready.header() == "Bearer a.b.c"


def test_flags_replace_the_environment_credentials(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("from-the-file\n")
    env = {"MEDIA_JWT": "a.b.c", "MEDIA_URL": "http://env:1"}
    connection = resolve(parse("--api-key", "k", "--api-secret-file", str(secret)), env)
    assert connection.auth == BasicAuth("k", "from-the-file")
    assert connection.url == "http://env:1"
    assert resolve(parse("--url", "http://flag:2"), env).url == "http://flag:2"


@pytest.mark.parametrize(
    ("argv", "env", "message"),
    [
        ([], {}, "no credentials"),
        ([], {"MEDIA_API_KEY": "k"}, "Basic auth needs an API key and secret: no API secret"),
        ([], {"MEDIA_API_SECRET": "s"}, "Basic auth needs an API key and secret: no API key"),
        ([], {"MEDIA_APPLICATION_ID": "a"}, "a minted JWT needs both"),
        (["--api-key", "k"], {"MEDIA_API_SECRET": "s"}, "no API secret"),
        (["--private-key-file", "/nonexistent/key"], {}, "a minted JWT needs both"),
        (
            ["--application-id", "a", "--private-key-file", "/nonexistent/key"],
            {},
            "cannot read the private key from /nonexistent/key",
        ),
    ],
)
def test_incomplete_credentials(argv: list[str], env: dict[str, str], message: str) -> None:
    with pytest.raises(ConnectionConfigError, match=message):
        resolve(parse(*argv), env)


def test_a_key_that_is_not_rsa_pem(tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("not a key")
    with pytest.raises(ConnectionConfigError, match="not an unencrypted PEM private key"):
        resolve(parse("--application-id", "a", "--private-key-file", str(bad)), {})


class _FakeClient:
    """Only what choose_uploader asks of a MediaClient: the advertised tus support."""

    def __init__(self, support: TusSupport | None) -> None:
        self.support = support
        self.asked = 0

    def tus_support(self) -> TusSupport | None:
        self.asked += 1
        return self.support


TUS = TusSupport(frozenset({"creation", "checksum"}), 100 * 2**20, frozenset({"md5"}))


@pytest.mark.parametrize(
    ("support", "size", "mode", "expected", "asks"),
    [
        (TUS, TUS_THRESHOLD - 1, "auto", MultipartUploader, 0),  # small: no OPTIONS at all
        (TUS, TUS_THRESHOLD, "auto", ResumableUploader, 1),
        (TUS, 101 * 2**20, "auto", MultipartUploader, 1),  # over Tus-Max-Size
        (None, TUS_THRESHOLD, "auto", MultipartUploader, 1),
        (TUS, 10, "always", ResumableUploader, 1),
        (TUS, TUS_THRESHOLD, "never", MultipartUploader, 0),
        (TusSupport(frozenset(), None, frozenset()), TUS_THRESHOLD, "auto", MultipartUploader, 1),
    ],
)
def test_choose_uploader(
    support: TusSupport | None, size: int, mode: str, expected: type, asks: int
) -> None:
    client = _FakeClient(support)
    assert isinstance(choose_uploader(client, size, mode), expected)  # type: ignore[arg-type]
    assert client.asked == asks


def test_resumable_always_without_tus_is_an_error() -> None:
    with pytest.raises(MediaClientError, match="does not offer resumable uploads"):
        choose_uploader(_FakeClient(None), 10, "always")  # type: ignore[arg-type]


def test_upload_state_is_per_file_fields_and_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))
    file = tmp_path / "f.bin"
    file.write_bytes(b"abc")
    state = UploadState.for_file("http://a", file, {"title": "T"})
    assert state.url() is None
    state.remember("http://a/v3/media/uploads/1")
    assert UploadState.for_file("http://a", file, {"title": "T"}).url() == (
        "http://a/v3/media/uploads/1"
    )
    assert UploadState.for_file("http://b", file, {"title": "T"}).url() is None
    assert UploadState.for_file("http://a", file, {"title": "U"}).url() is None
    file.write_bytes(b"abcd")
    assert UploadState.for_file("http://a", file, {"title": "T"}).url() is None
    state.forget()
    assert state.url() is None and not state.path.exists()
