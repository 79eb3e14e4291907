"""create_app: settings -> ports -> service -> blueprints, error handlers and request ids."""

from __future__ import annotations

import logging
import random
import re
import types
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, g, request
from werkzeug.middleware.proxy_fix import ProxyFix

from media_service import __version__
from media_service.api import console, content, health, media
from media_service.api.openapi import MediaApi
from media_service.api.tus import install_resumable
from media_service.backends import describe, open_backends
from media_service.context import AppState, install
from media_service.database_setup import DatabaseSetup
from media_service.errors import register_error_handlers
from media_service.observability import init_observability, instrument
from media_service.observability.metrics import observe_disk_free
from media_service.service.disk import DiskGuard
from media_service.service.media import MediaService
from media_service.settings import Settings
from media_service.storage.interfaces import Backends

log = logging.getLogger(__name__)

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def new_request_id() -> str:
    """32 random hex digits, the shape of uuid4().hex.

    Not uuid4: it reads os.urandom, a system call that releases the GIL on every request, and a
    request id needs to be unique, not unpredictable. `random` is reseeded in every forked
    worker (CPython re-initialises it after fork), so workers never share a sequence.
    """
    return f"{random.getrandbits(128):032x}"


class MediaFlask(Flask):
    """Flask, without re-inspecting every hook and view on every request.

    Flask calls `ensure_sync` on each before/after/teardown hook and on the view for every
    request, and each call asks `inspect.iscoroutinefunction`: about 5% of a small request's
    CPU. A plain function found synchronous once stays so; anything else gets Flask's answer.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._sync_functions: set[types.FunctionType] = set()

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        if type(func) is types.FunctionType:
            if func in self._sync_functions:
                return func
            result = super().ensure_sync(func)
            if result is func:
                self._sync_functions.add(func)
            return result
        return super().ensure_sync(func)


def create_app(settings: Settings | None = None, *, backends: Backends | None = None) -> Flask:
    """Build the app; the environment is read only when no settings are given."""
    settings = settings if settings is not None else Settings.from_env()
    settings.validate()
    backends = backends if backends is not None else open_backends(settings, prepare_database=False)
    database = DatabaseSetup(backends)
    database.try_now()

    app = MediaFlask("media_service")
    app.config.update(
        API_TITLE="Media API",
        API_VERSION=__version__,
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/v3/media",
        OPENAPI_JSON_PATH="openapi.json",
        # Our own error handlers answer problem+json; keep smorest's out of the way.
        API_SPEC_OPTIONS={
            "info": {
                "description": "A self-hostable implementation of the Vonage Media API v3.",
            },
            "components": {
                "securitySchemes": {
                    "basicAuth": {"type": "http", "scheme": "basic"},
                    "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                    "jwtQuery": {"type": "apiKey", "in": "query", "name": "jwt-token"},
                }
            },
            # Each operation declares its own (media_service/api/auth.py); none is global.
        },
        JSON_SORT_KEYS=False,
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]
    if settings.trusted_proxies:
        n = settings.trusted_proxies
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n, x_prefix=n
        )

    backends = instrument(backends)
    install(
        app,
        AppState(
            settings=settings,
            backends=backends,
            service=MediaService(
                backends,
                settings,
                disk=DiskGuard.from_settings(settings, observe=observe_disk_free),
            ),
        ),
    )

    api = MediaApi(app)
    api.register_blueprint(media.blp)
    api.register_blueprint(content.blp)
    app.register_blueprint(health.blp)
    app.register_blueprint(console.blp)
    install_resumable(app)
    register_error_handlers(app)  # after Api(): replaces smorest's JSON error handler
    _install_request_ids(app)
    _install_database_check(app, database)
    init_observability(app, settings)

    log.info(
        "media-service %s started",
        __version__,
        extra={"version": __version__, **describe(settings)},
    )
    return app


# Endpoints that must answer while the database is down.
_NO_DATABASE_ENDPOINTS = frozenset(
    {"health.healthz", "health.readyz", "observability.prometheus_metrics", "static"}
)


def _install_database_check(app: Flask, database: DatabaseSetup) -> None:
    @app.before_request
    def _database_ready() -> None:
        endpoint = request.endpoint or ""
        if endpoint in _NO_DATABASE_ENDPOINTS or endpoint.startswith(
            ("docs", "api-docs", "console.")
        ):
            return
        database.require()


def _install_request_ids(app: Flask) -> None:
    @app.before_request
    def _assign_request_id() -> None:
        incoming = request.environ.get("HTTP_X_REQUEST_ID")  # request.headers, minus its lookups
        g.request_id = (
            incoming if incoming is not None and _REQUEST_ID.match(incoming) else new_request_id()
        )

    @app.after_request
    def _echo_request_id(response: Response) -> Response:
        response.headers["X-Request-Id"] = g.get("request_id") or new_request_id()
        return response
