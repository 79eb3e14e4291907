"""Per-app state kept in `app.extensions`, reached through small accessors (never globals)."""

from __future__ import annotations

from dataclasses import dataclass

from flask import Flask, current_app

from media_service.service.media import MediaService
from media_service.settings import Settings
from media_service.storage.interfaces import Backends

EXTENSION_KEY = "media_service"


@dataclass(frozen=True)
class AppState:
    settings: Settings
    backends: Backends
    service: MediaService


def install(app: Flask, state: AppState) -> None:
    app.extensions[EXTENSION_KEY] = state


def close_backends(app: object) -> None:
    """Close the clients of an app built by create_app (anything else is left alone)."""
    if isinstance(app, Flask) and EXTENSION_KEY in app.extensions:
        state: AppState = app.extensions[EXTENSION_KEY]
        state.backends.close()


def app_state() -> AppState:
    state: AppState = current_app.extensions[EXTENSION_KEY]
    return state


def current_media_service() -> MediaService:
    return app_state().service


def settings() -> Settings:
    return app_state().settings
