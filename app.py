"""WSGI entry point: `gunicorn --config config/gunicorn.conf.py app:app`."""

import sys

from media_service.factory import create_app
from media_service.settings import ConfigError

try:
    app = create_app()
except ConfigError as error:
    # One clear line instead of a traceback (gunicorn's on_starting hook normally catches it first).
    print(f"media-service: configuration error: {error}", file=sys.stderr)
    sys.exit(2)
