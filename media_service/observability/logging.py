"""Structured logs: one JSON object per line on stdout, with no secrets in them.

Every record carries `timestamp`, `level`, `logger` and `message`, plus whatever the caller passed
as `extra=` (the access log's fields, for instance) and the request id when it is logged while a
request is being handled.

The access log writes one line per request, so it has a fast path, `log_fields`: when the line
would reach only our stdout handler (the usual case; not under pytest's caplog, say, or with a
handler an operator added) it is rendered in one go (orjson, or `json.dumps` where the two would
differ) and written straight away, the same line the formatter would have written, without
building a LogRecord.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO, TypeGuard

import orjson
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
        return iso_millis(record.created)


_second: tuple[int, str] = (-1, "")


def iso_millis(created: float) -> str:
    """`created` (a time.time() value) as 2020-01-01T14:00:00.123Z (truncated to the ms)."""
    global _second
    whole = int(created)
    cached, prefix = _second
    if cached != whole:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(whole))
        _second = (whole, prefix)
    return f"{prefix}.{int((created - whole) * 1000):03d}Z"


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


_OUR_FILTERS = (_RequestIdFilter, _ScrubFilter)


def _writes_directly(handler: logging.Handler) -> TypeGuard[_StdoutHandler]:
    """Whether `handler` is our stdout handler as configure_logging set it up."""
    return (
        type(handler) is _StdoutHandler
        and type(handler.formatter) is JsonLineFormatter
        and tuple(type(f) for f in handler.filters) == _OUR_FILTERS
    )


# json.dumps(..., default=str) builds a new JSONEncoder for every call (its arguments differ
# from the defaults); one encoder, made once, writes the very same line.
_LINE_ENCODER = json.JSONEncoder(default=str)
_FLAT_TYPES = frozenset({str, int, bool, type(None)})
_ITEM_SEPARATOR = b",\n  "  # between the members of a flat object, with OPT_INDENT_2


def _encode_line(line: Mapping[str, Any]) -> str:
    """`_LINE_ENCODER.encode(line)`, the same text, from orjson when that is sure to agree.

    json's encoder took ~20 us of a small request's ~130 on the access line alone; orjson
    takes ~1. Its compact output has no blank after `,` and `:`, but indented it writes
    `": "` and puts each member of a flat object on a line of its own, and a newline inside a
    string is always escaped: so joining those lines with `", "` gives json's spelling
    exactly. Anything orjson would spell differently falls back to json: text beyond ASCII
    and DEL (json escapes them), nested values, floats in exponent notation or not finite, integers
    beyond 64 bits, and types `default=str` would stringify.
    """
    for value in line.values():
        kind = type(value)
        if kind not in _FLAT_TYPES and not (kind is float and _plain_float(value)):
            return _LINE_ENCODER.encode(line)
    if not line:
        return "{}"
    try:
        text = orjson.dumps(line, option=orjson.OPT_INDENT_2)
    except orjson.JSONEncodeError:
        return _LINE_ENCODER.encode(line)
    if not text.isascii() or b"\x7f" in text:  # json escapes DEL too
        return _LINE_ENCODER.encode(line)
    # b'{\n  "a": 1,\n  "b": 2\n}' -> '{"a": 1, "b": 2}'
    return "{" + text[4:-2].replace(_ITEM_SEPARATOR, b", ").decode() + "}"


def _plain_float(value: float) -> bool:
    # repr() and orjson agree on finite floats written without an exponent.
    return value == 0.0 or 1e-4 <= abs(value) < 1e16


def log_fields(logger: logging.Logger, message: str, fields: Mapping[str, Any]) -> None:
    """Log `message` at INFO from `logger`, with `fields` as the record's extra attributes.

    For records whose every field is already safe to log (the access log's: its query has lost
    `jwt-token`). Our stdout handler gets the object its formatter would have written (timestamp,
    level, logger, message, pid, then `fields` in order) in one encoding, without the
    secret scrub; any other handler on the way (pytest's caplog, an operator's) gets an ordinary
    LogRecord, as `logger.info` would have given it.
    """
    level = logging.INFO
    if logger.disabled or not logger.isEnabledFor(level):
        return
    handlers: list[logging.Handler] = []
    current: logging.Logger | None = logger
    while current is not None:
        handlers.extend(current.handlers)
        current = current.parent if current.propagate else None
    if logger.filters or not handlers:  # logging's own path: filters, or its last resort
        logger.info("%s", message, extra=fields)
        return
    record: logging.LogRecord | None = None
    line: str | None = None
    for handler in handlers:
        if level < handler.level:
            continue
        if _writes_directly(handler):
            if line is None:
                line = _encode_line(
                    {
                        "timestamp": iso_millis(time.time()),
                        "level": "INFO",
                        "logger": logger.name,
                        "message": message,
                        "pid": os.getpid(),
                        **fields,
                    }
                )
            _write(handler, line)
        else:
            if record is None:
                caller = sys._getframe(1)  # what logger.info's findCaller would name
                record = logger.makeRecord(
                    logger.name,
                    level,
                    caller.f_code.co_filename,
                    caller.f_lineno,
                    "%s",
                    (message,),
                    None,
                    func=caller.f_code.co_name,
                    extra=dict(fields),
                )
            handler.handle(record)


def _write(handler: _StdoutHandler, line: str) -> None:
    """StreamHandler.emit, for a line already formatted."""
    handler.acquire()
    try:
        stream = handler.stream
        stream.write(line + handler.terminator)
        stream.flush()
    except Exception:  # as emit would: report on stderr, never raise into the request
        handler.handleError(logging.makeLogRecord({"msg": line}))
    finally:
        handler.release()


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stdout as one JSON line; safe to call again (one handler)."""
    root = logging.getLogger()
    ours = [h for h in root.handlers if isinstance(h, _StdoutHandler)]
    if not ours:
        handler = _StdoutHandler()
        handler.setFormatter(JsonLineFormatter())
        for kind in _OUR_FILTERS:
            handler.addFilter(kind())
        root.addHandler(handler)
    for extra in ours[1:]:  # a copy of this module loaded twice, say: keep exactly one
        root.removeHandler(extra)
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    root.setLevel(numeric)
    for name in _CHATTY_LIBRARIES:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
