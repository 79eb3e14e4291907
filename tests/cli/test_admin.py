"""The admin CLI over both backend pairs (injected), and once through the environment (SQLite).

A running app and the CLI share one set of backends here, as a server and the CLI share a
database in production: what the CLI changes must take effect on the next request.
"""

from __future__ import annotations

import base64
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient

from media_service.auth import generate_rsa_keypair, make_token, verify_secret
from media_service.cli import main
from media_service.settings import Settings
from media_service.storage.interfaces import Backends, BlobNotFound
from tests.conftest import Credentials, Uploader

SECRETISH = ("secret", "salt", "digest")


class Cli:
    """Run `media-service` on the test's backends; capture exit status, stdout and stderr."""

    def __init__(self, backends: Backends, settings: Settings, capsys: Any) -> None:
        self.backends, self.settings, self.capsys = backends, settings, capsys

    def __call__(self, *argv: str) -> tuple[int, str, str]:
        self.capsys.readouterr()
        status = main(list(argv), backends=self.backends, settings=self.settings)
        out, err = self.capsys.readouterr()
        return status, out, err

    def json(self, *argv: str) -> Any:
        status, out, err = self(*argv, "--json")
        assert status == 0, err
        return json.loads(out)


@pytest.fixture
def cli(backends: Backends, settings: Settings, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(backends, settings, capsys)


def basic(api_key: str, secret: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{api_key}:{secret}".encode()).decode()}


def assert_refused(result: tuple[int, str, str], message: str) -> None:
    status, out, err = result
    assert status == 1
    assert out == ""
    assert err == f"media-service: {message}\n"  # one line, no traceback


# --------------------------------------------------------------------------- accounts


def test_accounts_list_and_show(cli: Cli, owner: Credentials, sibling: Credentials) -> None:
    assert cli.json("accounts", "list") == [
        {"api_key": "acct0001", "enabled": True, "applications": 2, "items": 0, "bytes": 0}
    ]
    status, out, _ = cli("accounts", "list")
    assert status == 0
    assert out.splitlines() == [
        "api_key   enabled  applications  items  bytes",
        "acct0001  yes                 2      0      0",
    ]
    shown = cli.json("accounts", "show", "--api-key", "acct0001")
    assert shown["api_key"] == "acct0001" and shown["enabled"] is True
    assert [app["application_id"] for app in shown["applications"]] == ["app-one", "app-two"]
    status, out, _ = cli("accounts", "show", "--api-key", "acct0001", "--table")
    assert status == 0
    assert out.splitlines()[:2] == ["api_key  acct0001", "enabled  yes"]
    assert "app-two" in out
    for text in (out, json.dumps(shown)):
        assert not any(word in text for word in SECRETISH)
        assert owner.api_secret not in text


def test_show_prints_json_unless_on_a_terminal(
    cli: Cli, owner: Credentials, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Captured output is no terminal: what a script (or a pipe) gets without any flag.
    status, out, _ = cli("accounts", "show", "--api-key", owner.api_key)
    assert status == 0 and json.loads(out)["api_key"] == owner.api_key
    status, out, _ = cli("applications", "show", "--application-id", "app-one")
    assert status == 0 and json.loads(out)["application_id"] == "app-one"
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)
    status, out, _ = cli("accounts", "show", "--api-key", owner.api_key)
    assert status == 0 and out.startswith(f"api_key  {owner.api_key}\n")
    assert json.loads(cli("accounts", "show", "--api-key", owner.api_key, "--json")[1])
    with pytest.raises(SystemExit) as refused:  # argparse's usage error: both at once
        cli("accounts", "show", "--api-key", owner.api_key, "--json", "--table")
    assert refused.value.code == 2


def test_accounts_list_when_empty(cli: Cli) -> None:
    assert cli.json("accounts", "list") == []
    assert cli("accounts", "list")[1] == "(none)\n"


def test_unknown_api_key_is_exit_1_with_one_line(cli: Cli) -> None:
    for action in ("show", "disable", "enable", "rotate-secret", "delete"):
        assert_refused(cli("accounts", action, "--api-key", "nope"), "no account with api key nope")
        assert_refused(
            cli("accounts", action, "--api-key", "nope", "--json"), "no account with api key nope"
        )
    assert_refused(cli("applications", "list", "--api-key", "nope"), "no account with api key nope")
    assert_refused(cli("stats", "--api-key", "nope"), "no account with api key nope")


def test_disable_refuses_a_serving_app_at_once(
    cli: Cli, client: FlaskClient, owner: Credentials
) -> None:
    assert client.get("/v3/media", headers=owner.basic).status_code == 200
    assert client.get("/v3/media", headers=owner.bearer()).status_code == 200
    assert cli.json("accounts", "disable", "--api-key", owner.api_key) == {
        "api_key": owner.api_key,
        "enabled": False,
    }
    # No restart: the next request reads the credential store (there is no cache).
    assert client.get("/v3/media", headers=owner.basic).status_code == 401
    assert client.get("/v3/media", headers=owner.bearer()).status_code == 401  # its apps too
    assert cli.json("accounts", "show", "--api-key", owner.api_key)["enabled"] is False
    status, out, _ = cli("accounts", "enable", "--api-key", owner.api_key)
    assert status == 0 and out.splitlines() == [f"api_key  {owner.api_key}", "enabled  yes"]
    assert client.get("/v3/media", headers=owner.basic).status_code == 200
    assert client.get("/v3/media", headers=owner.bearer()).status_code == 200


def test_rotate_secret(cli: Cli, client: FlaskClient, owner: Credentials) -> None:
    status, out, err = cli("accounts", "rotate-secret", "--api-key", owner.api_key)
    assert status == 0 and err == ""
    printed = json.loads(out)
    assert printed["api_key"] == owner.api_key and printed["api_secret"] != owner.api_secret
    new_secret = printed["api_secret"]
    stored = cli.backends.credentials.get_account(owner.api_key)
    assert stored is not None and new_secret.encode() not in stored.secret_digest
    assert verify_secret(new_secret, stored.secret_salt, stored.secret_digest)
    assert client.get("/v3/media", headers=owner.basic).status_code == 401
    assert client.get("/v3/media", headers=basic(owner.api_key, new_secret)).status_code == 200
    # A chosen secret, and the secret floor still applies.
    chosen = "c" * 20
    assert cli.json("accounts", "rotate-secret", "--api-key", owner.api_key, "--api-secret", chosen)
    assert client.get("/v3/media", headers=basic(owner.api_key, chosen)).status_code == 200
    status, _, err = cli(
        "accounts", "rotate-secret", "--api-key", owner.api_key, "--api-secret", "x"
    )
    assert status == 2 and err.count("\n") == 1 and "at least 16" in err
    assert client.get("/v3/media", headers=basic(owner.api_key, chosen)).status_code == 200


def test_account_delete_refuses_while_it_has_items(
    cli: Cli, client: FlaskClient, owner: Credentials, upload: Uploader
) -> None:
    assert upload(owner.basic, b"abc").status_code == 201
    assert_refused(
        cli("accounts", "delete", "--api-key", owner.api_key),
        f"account {owner.api_key} has 1 media items; use --with-items to delete them too",
    )
    assert cli.backends.credentials.get_account(owner.api_key) is not None
    assert client.get("/v3/media", headers=owner.basic).status_code == 200


def test_account_delete_with_items(
    cli: Cli,
    client: FlaskClient,
    owner: Credentials,
    sibling: Credentials,
    stranger: Credentials,
    upload: Uploader,
) -> None:
    items = [
        upload(headers, content).get_json()
        for headers, content in (
            (owner.basic, b"one"),
            (owner.bearer(), b"two"),
            (sibling.bearer(), b"three"),
        )
    ]
    kept = upload(stranger.basic, b"other").get_json()
    assert cli.json("accounts", "delete", "--api-key", owner.api_key, "--with-items") == {
        "api_key": owner.api_key,
        "deleted": True,
        "applications_deleted": 2,
        "items_deleted": 3,
    }
    for item in items:
        assert cli.backends.media.get(item["id"], include_hidden=True) is None
        with pytest.raises(BlobNotFound):
            cli.backends.blobs.open(item["id"]).close()
    assert cli.backends.credentials.get_account(owner.api_key) is None
    assert cli.backends.credentials.list_applications(owner.api_key) == []
    assert client.get("/v3/media", headers=owner.basic).status_code == 401
    assert client.get("/v3/media", headers=owner.bearer()).status_code == 401
    info = client.get(f"/v3/media/{kept['id']}/info", headers=stranger.basic)
    assert info.status_code == 200
    assert [a["api_key"] for a in cli.json("accounts", "list")] == [stranger.api_key]


def test_account_delete_without_items_in_table_form(cli: Cli, owner: Credentials) -> None:
    status, out, _ = cli("accounts", "delete", "--api-key", owner.api_key)
    assert status == 0
    assert out.splitlines() == [
        f"api_key               {owner.api_key}",
        "deleted               yes",
        "applications_deleted  1",
        "items_deleted         0",
    ]
    assert cli.backends.credentials.get_application(owner.application_id) is None


# --------------------------------------------------------------------------- applications


def test_applications_list_and_show(
    cli: Cli, owner: Credentials, sibling: Credentials, stranger: Credentials, upload: Uploader
) -> None:
    assert upload(owner.bearer(), b"12345").status_code == 201
    every = cli.json("applications", "list")
    assert [app["application_id"] for app in every] == ["app-one", "app-other", "app-two"]
    mine = cli.json("applications", "list", "--api-key", owner.api_key)
    assert mine == [
        {
            "application_id": "app-one",
            "api_key": owner.api_key,
            "enabled": True,
            "public_keys": 1,
            "items": 1,
            "bytes": 5,
        },
        {
            "application_id": "app-two",
            "api_key": owner.api_key,
            "enabled": True,
            "public_keys": 1,
            "items": 0,
            "bytes": 0,
        },
    ]
    status, out, _ = cli("applications", "list", "--api-key", owner.api_key)
    assert status == 0
    assert out.splitlines() == [
        "application_id  api_key   enabled  public_keys  items  bytes",
        "app-one         acct0001  yes                1      1      5",
        "app-two         acct0001  yes                1      0      0",
    ]
    shown = cli.json("applications", "show", "--application-id", "app-one")
    assert shown["public_keys"][0].startswith("sha256:") and shown["items"] == 1
    status, out, _ = cli("applications", "show", "--application-id", "app-one", "--table")
    assert status == 0 and "application_id  app-one" in out and "BEGIN" not in out


def test_unknown_application_is_exit_1(cli: Cli, tmp_path: Path) -> None:
    key_file = tmp_path / "key.pem"
    key_file.write_text(generate_rsa_keypair()[1])
    message = "no application with id nope"
    for action in ("show", "disable", "enable", "delete"):
        assert_refused(cli("applications", action, "--application-id", "nope"), message)
    for action in ("remove-key", "add-key"):
        result = cli(
            "applications", action, "--application-id", "nope", "--public-key-file", str(key_file)
        )
        assert_refused(result, message)


def test_application_disable_and_enable(
    cli: Cli, client: FlaskClient, owner: Credentials, sibling: Credentials
) -> None:
    assert cli.json("applications", "disable", "--application-id", "app-one") == {
        "application_id": "app-one",
        "enabled": False,
    }
    assert client.get("/v3/media", headers=owner.bearer()).status_code == 401
    assert client.get("/v3/media", headers=sibling.bearer()).status_code == 200
    assert client.get("/v3/media", headers=owner.basic).status_code == 200  # the account is fine
    status, out, _ = cli("applications", "enable", "--application-id", "app-one")
    assert status == 0 and out.splitlines() == ["application_id  app-one", "enabled         yes"]
    assert client.get("/v3/media", headers=owner.bearer()).status_code == 200


def test_remove_key(
    cli: Cli, client: FlaskClient, owner: Credentials, tmp_path: Path, rsa_keypair: tuple[str, str]
) -> None:
    old_file = tmp_path / "old.pem"
    old_file.write_text(rsa_keypair[1])
    new_private, new_public = generate_rsa_keypair()
    new_file = tmp_path / "new.pem"
    new_file.write_text(new_public)
    assert_refused(
        cli(
            "applications",
            "remove-key",
            "--application-id",
            "app-one",
            "--public-key-file",
            str(old_file),
        ),
        "refusing to remove the last key of application app-one; add another first",
    )
    assert_refused(
        cli(
            "applications",
            "remove-key",
            "--application-id",
            "app-one",
            "--public-key-file",
            str(new_file),
        ),
        "application app-one has no such key",
    )
    assert cli.json(
        "applications", "add-key", "--application-id", "app-one", "--public-key-file", str(new_file)
    ) == {"application_id": "app-one"}
    removed = cli.json(
        "applications",
        "remove-key",
        "--application-id",
        "app-one",
        "--public-key-file",
        str(old_file),
    )
    assert removed["application_id"] == "app-one" and removed["removed_key"].startswith("sha256:")
    assert client.get("/v3/media", headers=owner.bearer()).status_code == 401  # the old key
    new_token = make_token("app-one", new_private)
    assert (
        client.get("/v3/media", headers={"Authorization": f"Bearer {new_token}"}).status_code == 200
    )
    status, _, err = cli(
        "applications",
        "remove-key",
        "--application-id",
        "app-one",
        "--public-key-file",
        str(tmp_path / "missing.pem"),
    )
    assert status == 2 and err.startswith("media-service: cannot read") and err.count("\n") == 1


def test_application_delete(
    cli: Cli, client: FlaskClient, owner: Credentials, sibling: Credentials, upload: Uploader
) -> None:
    gone = upload(owner.bearer(), b"one").get_json()
    kept = [upload(sibling.bearer(), b"two").get_json(), upload(owner.basic, b"3").get_json()]
    assert_refused(
        cli("applications", "delete", "--application-id", "app-one"),
        "application app-one has 1 media items; use --with-items to delete them too",
    )
    assert client.get("/v3/media", headers=owner.bearer()).status_code == 200
    status, out, _ = cli("applications", "delete", "--application-id", "app-one", "--with-items")
    assert status == 0
    assert out.splitlines() == [
        "application_id  app-one",
        "deleted         yes",
        "items_deleted   1",
    ]
    assert cli.backends.media.get(gone["id"], include_hidden=True) is None
    with pytest.raises(BlobNotFound):
        cli.backends.blobs.open(gone["id"]).close()
    assert cli.backends.credentials.get_application("app-one") is None
    assert client.get("/v3/media", headers=owner.bearer()).status_code == 401
    for item in kept:
        assert client.get(f"/v3/media/{item['id']}/info", headers=owner.basic).status_code == 200
    assert cli.json("applications", "delete", "--application-id", "app-two", "--with-items") == {
        "application_id": "app-two",
        "deleted": True,
        "items_deleted": 1,
    }
    assert cli.json("accounts", "show", "--api-key", owner.api_key)["applications"] == []
    # The account stays, with its Basic-auth item.
    info = client.get(f"/v3/media/{kept[1]['id']}/info", headers=owner.basic)
    assert info.status_code == 200


def test_application_without_items_is_deleted_without_the_flag(
    cli: Cli, owner: Credentials, upload: Uploader
) -> None:
    assert upload(owner.basic, b"account item").status_code == 201
    assert cli.json("applications", "delete", "--application-id", owner.application_id) == {
        "application_id": owner.application_id,
        "deleted": True,
        "items_deleted": 0,
    }


def test_create_commands_take_json(cli: Cli, tmp_path: Path) -> None:
    created = cli.json("accounts", "create", "--api-key", "acct0009")
    assert created["api_key"] == "acct0009" and len(created["api_secret"]) >= 16
    made = cli.json(
        "applications",
        "create",
        "--api-key",
        "acct0009",
        "--application-id",
        "app-9",
        "--generate-key",
        str(tmp_path / "app-9.pem"),
    )
    assert made == {"application_id": "app-9"}
    assert_refused(
        cli(
            "applications", "create", "--api-key", "nope", "--generate-key", str(tmp_path / "x.pem")
        ),
        "no account with api key nope; create it first",
    )


# --------------------------------------------------------------------------- stats


def test_stats(
    cli: Cli, owner: Credentials, sibling: Credentials, stranger: Credentials, upload: Uploader
) -> None:
    assert cli.json("stats") == {"accounts": [], "applications": []}
    assert cli("stats")[1] == "(no items)\n"
    upload(owner.basic, b"12")
    upload(owner.bearer(), b"123")
    upload(owner.bearer(), b"1234")
    upload(stranger.bearer(), b"1")
    assert cli.json("stats") == {
        "accounts": [
            {"api_key": "acct0001", "items": 3, "bytes": 9},
            {"api_key": "acct0002", "items": 1, "bytes": 1},
        ],
        "applications": [
            {"api_key": "acct0001", "application_id": None, "items": 1, "bytes": 2},
            {"api_key": "acct0001", "application_id": "app-one", "items": 2, "bytes": 7},
            {"api_key": "acct0002", "application_id": "app-other", "items": 1, "bytes": 1},
        ],
    }
    assert cli.json("stats", "--api-key", "acct0002")["accounts"] == [
        {"api_key": "acct0002", "items": 1, "bytes": 1}
    ]
    status, out, _ = cli("stats", "--api-key", "acct0001")
    assert status == 0
    assert out.splitlines() == [
        "api_key   items  bytes",
        "acct0001      3      9",
        "",
        "api_key   application_id  items  bytes",
        "acct0001  (none)              1      2",
        "acct0001  app-one             2      7",
    ]


# --------------------------------------------------------------------------- environment


def test_through_the_environment_on_sqlite(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The console script's path: no injected backends, MEDIA_* variables only."""
    monkeypatch.setenv("MEDIA_DATABASE_URL", f"sqlite:///{tmp_path / 'admin.db'}")
    monkeypatch.setenv("MEDIA_STORAGE_URL", (tmp_path / "blobs").as_uri())
    monkeypatch.setenv("MEDIA_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MEDIA_MIN_FREE_BYTES", "0")

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        status = main(list(argv))
        out, err = capsys.readouterr()
        return status, out, err

    assert run("accounts", "create", "--api-key", "envacct1")[0] == 0
    private = tmp_path / "app.pem"
    assert (
        run(
            "applications",
            "create",
            "--api-key",
            "envacct1",
            "--application-id",
            "env-app",
            "--generate-key",
            str(private),
        )[0]
        == 0
    )
    status, out, _ = run("accounts", "list", "--json")
    assert status == 0 and json.loads(out)[0]["applications"] == 1
    assert run("applications", "disable", "--application-id", "env-app")[0] == 0
    status, out, _ = run("applications", "show", "--application-id", "env-app", "--json")
    assert json.loads(out)["enabled"] is False
    assert run("accounts", "delete", "--api-key", "envacct1")[0] == 0
    status, out, err = run("accounts", "show", "--api-key", "envacct1")
    assert (status, out, err) == (1, "", "media-service: no account with api key envacct1\n")


class _RecordingCloser:
    def __init__(self, error: Exception | None = None) -> None:
        self.closed = 0
        self.error = error

    def close(self) -> None:
        self.closed += 1
        if self.error is not None:
            raise self.error


@pytest.mark.parametrize(
    ("argv", "status"),
    [
        (("accounts", "create", "--api-key", "closeacct"), 0),
        (("accounts", "show", "--api-key", "nobody"), 1),  # refused: closed all the same
        (("sweep",), 0),
    ],
)
def test_backends_the_cli_opens_are_closed_before_it_returns(
    cli_env: Settings,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: tuple[str, ...],
    status: int,
) -> None:
    import media_service.cli as cli_module

    opened: list[_RecordingCloser] = []
    real_open = cli_module.open_backends

    def open_recorded(settings: Settings) -> Backends:
        backends = real_open(settings)
        closer = _RecordingCloser()
        backends.closers.append(closer)
        opened.append(closer)
        return backends

    monkeypatch.setattr(cli_module, "open_backends", open_recorded)
    assert main(list(argv)) == status
    assert [closer.closed for closer in opened] == [1]


def test_a_failing_close_is_reported_and_keeps_the_commands_status(
    cli_env: Settings, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import media_service.cli as cli_module

    real_open = cli_module.open_backends

    def open_failing(settings: Settings) -> Backends:
        backends = real_open(settings)
        backends.closers.append(_RecordingCloser(OSError("pool already gone")))
        return backends

    monkeypatch.setattr(cli_module, "open_backends", open_failing)
    capsys.readouterr()
    assert main(["accounts", "create", "--api-key", "closefail"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out)["api_key"] == "closefail"
    assert err == "media-service: closing the backends failed: pool already gone\n"


def test_injected_backends_are_left_open(cli: Cli, backends: Backends) -> None:
    closer = _RecordingCloser()
    backends.closers.append(closer)
    assert cli("accounts", "create", "--api-key", "keepopen")[0] == 0
    assert closer.closed == 0
