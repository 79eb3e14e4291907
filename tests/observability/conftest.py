"""Fixtures for the observability suites: this test's JSON log lines, and /metrics samples."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask.testing import FlaskClient

from tests.observability.support import LogLines, Samples, Scrape, parse_metrics


@pytest.fixture
def log_lines(capsys: pytest.CaptureFixture[str]) -> LogLines:
    """Stdout lines written since the last call, each parsed as the one JSON object it must be."""

    def _read() -> list[dict[str, Any]]:
        out = capsys.readouterr().out
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    return _read


@pytest.fixture
def scrape(client: FlaskClient) -> Scrape:
    """GET /metrics (no credentials) and parse it."""

    def _scrape() -> Samples:
        with client.get("/metrics") as response:
            assert response.status_code == 200
            return parse_metrics(response.get_data(as_text=True))

    return _scrape
