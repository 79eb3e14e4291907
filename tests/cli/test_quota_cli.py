"""`media-service accounts set-quota` and the quota in `accounts show`, on every backend pair."""

from __future__ import annotations

import pytest
from flask.testing import FlaskClient

from media_service.settings import Settings
from media_service.storage.interfaces import Backends
from tests.cli.test_admin import Cli, assert_refused
from tests.conftest import Credentials, Uploader
from tests.problems import assert_problem


@pytest.fixture
def cli(backends: Backends, settings: Settings, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(backends, settings, capsys)


def test_show_reports_quota_and_usage_beside_its_fields(
    cli: Cli, owner: Credentials, sibling: Credentials, upload: Uploader
) -> None:
    assert upload(owner.basic, b"a" * 1000).status_code == 201
    assert upload(sibling.bearer(), b"b" * 24).status_code == 201
    shown = cli.json("accounts", "show", "--api-key", owner.api_key)
    assert shown["quota"] == {"max_bytes": 0, "max_items": 0}
    assert shown["usage"] == {"bytes": 1024, "items": 2}
    assert (shown["items"], shown["bytes"]) == (2, 1024)  # the fields it had stay
    assert {"api_key", "enabled", "applications"} <= set(shown)

    status, out, _ = cli("accounts", "show", "--api-key", owner.api_key, "--table")
    assert status == 0
    assert out.splitlines()[:2] == ["api_key  acct0001", "enabled  yes"]
    assert "quota.max_bytes  0" in out and "usage.bytes      1024" in out


def test_set_quota_takes_effect_on_the_next_upload(
    cli: Cli, owner: Credentials, upload: Uploader, client: FlaskClient
) -> None:
    changed = cli.json("accounts", "set-quota", "--api-key", owner.api_key, "--max-bytes", "100")
    assert changed == {
        "api_key": owner.api_key,
        "quota": {"max_bytes": 100, "max_items": 0},
        "usage": {"bytes": 0, "items": 0},
    }
    assert upload(owner.basic, b"x" * 80).status_code == 201
    body = assert_problem(upload(owner.basic, b"y" * 21), 403)
    assert body["type"].endswith("quota-exceeded")

    status, out, _ = cli("accounts", "set-quota", "--api-key", owner.api_key, "--max-items", "1")
    assert status == 0 and "quota.max_items  1" in out
    shown = cli.json("accounts", "show", "--api-key", owner.api_key)
    assert shown["quota"] == {"max_bytes": 100, "max_items": 1}
    assert shown["usage"] == {"bytes": 80, "items": 1}
    assert_problem(upload(owner.basic, b"z"), 403)

    cli.json(
        "accounts", "set-quota", "--api-key", owner.api_key, "--max-bytes", "0", "--max-items", "0"
    )
    assert upload(owner.basic, b"y" * 5000).status_code == 201


def test_set_quota_refusals(cli: Cli, owner: Credentials) -> None:
    assert_refused(
        cli("accounts", "set-quota", "--api-key", "nope", "--max-bytes", "1"),
        "no account with api key nope",
    )
    status, out, err = cli("accounts", "set-quota", "--api-key", owner.api_key)
    assert (status, out) == (2, "") and "--max-bytes" in err
    for bad in ("-1", "ten", "1.5", str(2**63)):
        with pytest.raises(SystemExit) as exited:
            cli("accounts", "set-quota", "--api-key", owner.api_key, "--max-bytes", bad)
        assert exited.value.code == 2
    assert cli.json("accounts", "show", "--api-key", owner.api_key)["quota"] == {
        "max_bytes": 0,
        "max_items": 0,
    }
