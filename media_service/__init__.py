"""media-service: a self-hostable implementation of the Vonage Media API v3.

The application is built by `media_service.factory.create_app`; `import media_service` stays
cheap (no Flask) for the command-line tools that only need the version.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
