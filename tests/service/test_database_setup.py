"""The app starts with its database down, answers 503, and recovers when the database returns."""

from __future__ import annotations

from pathlib import Path

import pytest

from media_service.factory import create_app
from media_service.storage.interfaces import BackendUnavailable
from tests.conftest import make_settings


class _FlakyBackend:
    """A port whose prepare_database fails until `up` is set."""

    def __init__(self) -> None:
        self.up = False
        self.calls = 0

    def prepare_database(self) -> None:
        self.calls += 1
        if not self.up:
            raise BackendUnavailable("database", "connection refused")


def test_start_with_database_down_then_recover(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from media_service import database_setup
    from media_service.backends import open_backends

    settings = make_settings(tmp_path)
    backends = open_backends(settings, prepare_database=False)
    flaky = _FlakyBackend()
    real_ensure = backends.media.prepare_database
    monkeypatch.setattr(backends.media, "prepare_database", flaky.prepare_database)
    monkeypatch.setattr(database_setup, "RETRY_SECONDS", 0.0)

    app = create_app(settings, backends=backends)  # must not raise
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    refused = client.get("/v3/media")
    assert refused.status_code == 503
    assert refused.mimetype == "application/problem+json"

    flaky.up = True
    real_ensure()
    # With the tables in place the request reaches authentication (401: no credentials).
    assert client.get("/v3/media").status_code == 401
    calls = flaky.calls
    assert client.get("/v3/media").status_code == 401
    assert flaky.calls == calls  # no more retries once ready
