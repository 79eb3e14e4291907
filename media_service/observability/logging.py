"""Structured logs: one JSON object per line on stdout, with no secrets in them.

Every record carries `timestamp`, `level`, `logger` and `message`, plus whatever the caller passed
as `extra=` (the access log's fields, for instance) and the request id when it is logged while a
request is being handled.
"""

from __future__ import annotations

import logging
import re
import sys
from datetime import UTC, datetime
from typing import TextIO

from flask import g, has_request_context
from pythonjsonlogger.json import JsonFormatter

_FIELDS = ("asctime", "levelname", "name", "message", "process")
# `pid` tells gunicorn's workers apart.
_RENAMED = {"asctime": "timestamp", "levelname": "level", "name": "logger", "process": "pid"}

# Libraries whose DEBUG output includes signed request headers or whole documents: they stay at
# WARNING whatever MEDIA_LOG_LEVEL says, so turning debug on never writes credentials to the log.
_CHATTY_LIBRARIES = ("botocore", "boto3", "s3transfer", "urllib3", "pymongo", "werkzeug")

# A last line of defence for messages we do not write ourselves (a library logging a URL or a
# header): the jwt-token query parameter, Authorization values, and anything shaped like a JWT.
_SECRETS = (
    (re.compile(r"(?i)(jwt-token=)[^&\s\"'#]+"), r"\1[REDACTED]"),
    (re.compile(r"(?i)\b(Bearer|Basic)\s+[A-Za-z0-9._~+/=-]{6,}"), r"\1 [REDACTED]"),
    (re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*"), "[REDACTED]"),
)


def scrub(text: str) -> str:
    """`text` with tokens and credentials replaced by [REDACTED]."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


class JsonLineFormatter(JsonFormatter):
    """python-json-logger's formatter with an ISO 8601 UTC timestamp (milliseconds, `Z`)."""

    def __init__(self) -> None:
        super().__init__(list(_FIELDS), rename_fields=dict(_RENAMED))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802
        stamp = datetime.fromtimestamp(record.created, tz=UTC)
        return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


class _StdoutHandler(logging.StreamHandler[TextIO]):
    """Write to whatever `sys.stdout` is when a record is emitted.

    Test runners swap `sys.stdout` per test; a handler holding the stream it was created with
    would keep writing to a closed capture buffer.
    """

    def __init__(self) -> None:
        super().__init__(sys.stdout)

    @property
    def stream(self) -> TextIO:
        return sys.stdout

    @stream.setter
    def stream(self, value: TextIO) -> None:
        pass  # StreamHandler.__init__ and setStream assign it; the property always wins


class _RequestIdFilter(logging.Filter):
    """Tag records logged while handling a request with that request's id."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id") and has_request_context():
            request_id = g.get("request_id")
            if request_id:
                record.request_id = request_id
        return True


class _ScrubFilter(logging.Filter):
    """Redact secrets from the rendered message (see `_SECRETS`)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            message = record.getMessage()
            cleaned = scrub(message)
            if cleaned != message:
                record.msg, record.args = cleaned, None
        return True


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stdout as one JSON line; safe to call again (one handler)."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _StdoutHandler)]
    if not ours:
        handler = _StdoutHandler()
        handler.setFormatter(JsonLineFormatter())
        handler.addFilter(_RequestIdFilter())
        handler.addFilter(_ScrubFilter())
        root.addHandler(handler)
    for extra in ours[1:]:  # a copy of this module loaded twice, say: keep exactly one
        root.removeHandler(extra)
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    root.setLevel(numeric)
    for name in _CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
