"""Time every call of the three ports and count the ones that raise; the adapters stay themselves.

`instrument(backends)` times each adapter in place: every public method of its class gets a
timed twin in the instance's own attributes, which calls whatever the class holds at the time
(so a test that patches the class is still timed). The adapter stays itself — same object, same
type, `isinstance` and attribute writes as before — return values are handed back as they are (a
file blob store's stream keeps its `.file` for sendfile), and exceptions propagate unchanged. A
call an adapter makes on itself is not timed again: only the outermost call of a port counts.
"""

from __future__ import annotations

import functools
import inspect
import threading
import types
from collections.abc import Callable, Generator
from time import perf_counter
from typing import Any, TypeVar

from werkzeug.exceptions import HTTPException

from media_service.errors import ApiError
from media_service.observability.metrics import metrics
from media_service.storage.interfaces import Backends

T = TypeVar("T")

BLOB_STORE = "blob_store"
MEDIA_REPOSITORY = "media_repository"
CREDENTIAL_STORE = "credential_store"


def instrument(backends: Backends) -> Backends:
    """Time the calls of each port of `backends`, in place (idempotent); return `backends`."""
    instrument_port(backends.blobs, BLOB_STORE)
    instrument_port(backends.media, MEDIA_REPOSITORY)
    instrument_port(backends.credentials, CREDENTIAL_STORE)
    return backends


def instrument_port(adapter: object, port: str) -> None:
    """Give each public method of `adapter`'s class a timed twin on the adapter itself."""
    own = getattr(adapter, "__dict__", None)
    if own is None:
        return  # nothing to time, nowhere to put it (an instance with __slots__)
    cls = type(adapter)
    busy = threading.local()  # in a timed call of this adapter, on this thread
    for name in dir(cls):
        if name.startswith("_") or not _is_operation(inspect.getattr_static(cls, name)):
            continue
        present = own.get(name)
        if present is not None and hasattr(present, "__instrumented__"):
            continue  # timed already
        # A function set on the instance (a test's patch) is what gets timed; else the class's.
        method = present if callable(present) else _from_class(adapter, cls, name)
        own[name] = _timed(port, name, method, busy)


def _is_operation(attribute: object) -> bool:
    # The class's own methods (and static ones); not classmethods, properties or data.
    return isinstance(attribute, types.FunctionType | staticmethod)


def _from_class(adapter: object, cls: type, name: str) -> Callable[..., Any]:
    """What `adapter.name` would be without its timed twin, looked up at every call."""

    def call(*args: Any, **kwargs: Any) -> Any:
        for klass in cls.__mro__:
            if name in vars(klass):
                attribute = vars(klass)[name]
                get = getattr(type(attribute), "__get__", None)
                bound = attribute if get is None else get(attribute, adapter, cls)
                return bound(*args, **kwargs)
        raise AttributeError(f"{cls.__name__!r} object has no attribute {name!r}")

    return functools.wraps(inspect.getattr_static(cls, name))(call)


def _timed(
    port: str, operation: str, method: Callable[..., Any], busy: threading.local
) -> Callable[..., Any]:
    duration = metrics().backend_duration.labels(port, operation)  # bound once, not per call

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        if getattr(busy, "active", False):
            return method(*args, **kwargs)  # the adapter calling itself: timed outside
        started = perf_counter()
        busy.active = True
        try:
            result = method(*args, **kwargs)
        except BaseException as error:
            _observe(port, operation, perf_counter() - started, error)
            raise
        finally:
            busy.active = False
        if isinstance(result, types.GeneratorType):
            # A generator does its backend work as it is iterated, not when it is created.
            return _timed_generator(result, port, operation, perf_counter() - started, busy)
        duration.observe(perf_counter() - started)
        return result

    call.__instrumented__ = method  # type: ignore[attr-defined]
    return call


def _timed_generator(
    inner: Generator[T, None, None],
    port: str,
    operation: str,
    elapsed: float,
    busy: threading.local,
) -> Generator[T, None, None]:
    """Yield what `inner` yields; record the time spent inside it, not the consumer's time."""
    error: BaseException | None = None
    try:
        while True:
            started = perf_counter()
            nested = getattr(busy, "active", False)
            busy.active = True
            try:
                item = next(inner)
            except StopIteration:
                return
            except BaseException as exc:
                error = exc
                raise
            finally:
                busy.active = nested
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
