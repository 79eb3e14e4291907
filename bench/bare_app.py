"""A bare Flask app with one small JSON endpoint: item 5's yardstick.

Served by gunicorn with config/gunicorn.conf.py, exactly like the service, so the comparison
isolates what the service adds per request (auth, the database, logging, headers) from what
gunicorn and Flask cost anyway.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, jsonify

app = Flask(__name__)


@app.get("/healthz")
def healthz() -> Any:
    """Readiness for the benchmark's start-up poll."""
    return jsonify(status="ok")


@app.get("/bare")
def bare() -> Any:
    """A small JSON document, about the size of the service's own small answers."""
    return jsonify(id="00000000-0000-4000-8000-000000000000", status="ok", size=1024)
