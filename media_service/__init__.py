"""media-service: a self-hostable implementation of the Vonage Media API v3."""

__version__ = "0.1.0"


def create_app(settings=None):  # type: ignore[no-untyped-def]
    """Build the Flask application (imported lazily so `import media_service` stays cheap)."""
    from media_service.factory import create_app as _create_app

    return _create_app(settings)


__all__ = ["__version__", "create_app"]
