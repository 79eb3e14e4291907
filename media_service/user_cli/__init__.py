"""The `media` console script: a command-line client of the Media API for its users."""

from media_service.user_cli.commands import main

__all__ = ["main"]
