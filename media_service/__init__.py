"""media-service: a self-hostable implementation of the Vonage Media API v3."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

    from media_service.settings import Settings

__version__ = "0.1.0"


def create_app(settings: Settings | None = None) -> Flask:
    """Build the Flask application (imported lazily so `import media_service` stays cheap)."""
    from media_service.factory import create_app as _create_app

    return _create_app(settings)


__all__ = ["__version__", "create_app"]
