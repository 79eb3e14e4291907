"""Observability: JSON logs, the access log, Prometheus metrics and the API docs page.

`create_app` calls `instrument(backends)` before it builds the service, and
`init_observability(app, settings)` once the blueprints are registered.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response
from flask.logging import default_handler

from media_service.context import current_media_service
from media_service.observability import access, docs
from media_service.observability.logging import configure_logging
from media_service.observability.metrics import exposition, metrics
from media_service.observability.ports import instrument
from media_service.settings import Settings

__all__ = ["configure_logging", "init_observability", "instrument"]

blp = Blueprint("observability", __name__)


@blp.get("/metrics")
def prometheus_metrics() -> Response:
    """Prometheus text exposition (no credentials: keep it off the public network)."""
    current_media_service().disk.sample()  # fresh free-space gauges for this scrape
    body, content_type = exposition()
    response = Response(body, content_type=content_type)
    response.headers["Cache-Control"] = "no-store"
    return response


def init_observability(app: Flask, settings: Settings) -> None:
    """Configure logging, wrap the app in the access log, add /metrics and /docs."""
    configure_logging(settings.log_level)
    # Flask gives the app's logger ("media_service") a stderr handler of its own if none is
    # configured when it is first used; every record already reaches the root's JSON handler.
    app.logger.removeHandler(default_handler)
    metrics()  # register the families now, so the first scrape lists them all
    app.wsgi_app = access.AccessMiddleware(app.wsgi_app)  # type: ignore[method-assign]
    app.after_request(access.capture)
    app.register_blueprint(blp)
    app.register_blueprint(docs.blp)
