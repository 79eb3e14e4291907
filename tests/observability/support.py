"""Helpers for the observability suites: access lines, metric samples, a gunicorn-style call."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask
from gunicorn.http.wsgi import FileWrapper as GunicornFileWrapper
from prometheus_client.parser import text_string_to_metric_families
from werkzeug.test import EnvironBuilder

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]
LogLines = Callable[[], list[dict[str, Any]]]  # the log_lines fixture
Scrape = Callable[[], Samples]  # the scrape fixture


def access_lines(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The access log's lines among `lines`."""
    return [line for line in lines if line["logger"] == "media_service.access"]


def parse_metrics(text: str) -> Samples:
    """{(sample name, labels): value} from a text exposition (the parser rejects bad syntax)."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value; 0 when that labelled child does not exist yet."""
    return samples.get((name, frozenset(labels.items())), 0.0)


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    """How much one sample moved between two scrapes."""
    return value(after, name, **labels) - value(before, name, **labels)


def gunicorn_style_get(app: Flask, path: str, headers: dict[str, str]) -> tuple[Any, list[str]]:
    """Call the app as gunicorn does: with its wsgi.file_wrapper and SERVER_SOFTWARE."""
    status: list[str] = []
    environ = EnvironBuilder(
        path=path,
        headers=list(headers.items()),
        environ_overrides={
            "wsgi.file_wrapper": GunicornFileWrapper,
            "SERVER_SOFTWARE": "gunicorn/test",
        },
    ).get_environ()
    body = app(environ, lambda s, h, *exc: status.append(s))  # type: ignore[arg-type]
    return body, status
