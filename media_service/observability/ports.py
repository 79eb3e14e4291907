"""Time every call of the three ports and count the ones that raise, without changing them.

`instrument(backends)` wraps each port in a transparent proxy: attributes read and written
through it reach the adapter itself, return values are handed back as they are (a file blob
store's stream keeps its `.file` for sendfile), and exceptions propagate unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import types
from collections.abc import Callable, Generator
from time import perf_counter
from typing import Any, TypeVar, cast

from werkzeug.exceptions import HTTPException

from media_service.errors import ApiError
from media_service.observability.metrics import metrics
from media_service.storage.interfaces import Backends

T = TypeVar("T")

BLOB_STORE = "blob_store"
MEDIA_REPOSITORY = "media_repository"
CREDENTIAL_STORE = "credential_store"


def instrument(backends: Backends) -> Backends:
    """The same backends, each port wrapped in an `InstrumentedPort` (idempotent)."""
    return dataclasses.replace(
        backends,
        blobs=_wrap(backends.blobs, BLOB_STORE),
        media=_wrap(backends.media, MEDIA_REPOSITORY),
        credentials=_wrap(backends.credentials, CREDENTIAL_STORE),
    )  # `closers` is the same list: shutting down closes the real clients


def _wrap(target: T, port: str) -> T:
    if isinstance(target, InstrumentedPort):
        return target
    return cast(T, InstrumentedPort(target, port))


class InstrumentedPort:
    """A proxy for one adapter that records each public method call in the backend metrics."""

    __slots__ = ("_port", "_target", "_timed")

    def __init__(self, target: object, port: str) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_port", port)
        # name -> (the function behind it, its timed wrapper): built on first use, not per call
        object.__setattr__(self, "_timed", {})

    @property
    def wrapped(self) -> object:
        """The adapter behind the proxy."""
        return self._target

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if name.startswith("_") or not _is_operation(value, self._target):
            return value
        # A bound method is new on every read; what it calls is not, unless it was replaced
        # (a test's monkeypatch), and then so is the wrapper.
        function = getattr(value, "__func__", value)
        cached = self._timed.get(name)
        if cached is not None and cached[0] is function:
            return cached[1]
        timed = _timed(self._port, name, value)
        self._timed[name] = (function, timed)
        return timed

    def __setattr__(self, name: str, value: Any) -> None:
        # Through to the adapter, so that configuring (or monkeypatching) the proxy configures
        # the adapter; a timed method read back from a proxy goes back as the original.
        setattr(self._target, name, getattr(value, "__instrumented__", value))

    def __delattr__(self, name: str) -> None:
        delattr(self._target, name)

    def __dir__(self) -> list[str]:
        return sorted(set(dir(self._target)) | {"wrapped"})

    def __repr__(self) -> str:
        return f"<instrumented {self._port} {self._target!r}>"


def _is_operation(value: object, target: object) -> bool:
    # The adapter's own methods, and functions set on it (a test's monkeypatched failure).
    # Not classmethods, properties' values, or callable helpers it holds (a pymongo Database
    # is callable, and must come back as itself).
    if isinstance(value, types.MethodType):
        return value.__self__ is target
    return isinstance(value, types.FunctionType)


def _timed(port: str, operation: str, method: Callable[..., Any]) -> Callable[..., Any]:
    duration = metrics().backend_duration.labels(port, operation)  # bound once, not per call

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        started = perf_counter()
        try:
            result = method(*args, **kwargs)
        except BaseException as error:
            _observe(port, operation, perf_counter() - started, error)
            raise
        if isinstance(result, types.GeneratorType):
            # A generator does its backend work as it is iterated, not when it is created.
            return _timed_generator(result, port, operation, perf_counter() - started)
        duration.observe(perf_counter() - started)
        return result

    call.__instrumented__ = method  # type: ignore[attr-defined]
    return call


def _timed_generator(
    inner: Generator[T, None, None], port: str, operation: str, elapsed: float
) -> Generator[T, None, None]:
    """Yield what `inner` yields; record the time spent inside it, not the consumer's time."""
    error: BaseException | None = None
    try:
        while True:
            started = perf_counter()
            try:
                item = next(inner)
            except StopIteration:
                return
            except BaseException as exc:
                error = exc
                raise
            finally:
                elapsed += perf_counter() - started
            yield item
    finally:
        inner.close()  # a consumer that stops early releases the cursor or listing now
        _observe(port, operation, elapsed, error)


def _observe(port: str, operation: str, seconds: float, error: BaseException | None) -> None:
    family = metrics()
    family.backend_duration.labels(port, operation).observe(seconds)
    if error is not None and _is_backend_error(error):
        family.backend_errors.labels(port, operation, type(error).__name__).inc()


def _is_backend_error(error: BaseException) -> bool:
    # A put() fails when the upload it reads from does (too large, client gone, bad multipart):
    # those are the request's errors, raised through the port, not the backend's.
    return isinstance(error, Exception) and not isinstance(error, ApiError | HTTPException)
