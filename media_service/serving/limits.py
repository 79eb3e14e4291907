"""Read deadlines for slow or silent clients, shared by the gunicorn worker and the app.

This module imports nothing from gunicorn or Flask: the worker enforces the limits on the socket,
the upload path names the rate it needs, and both speak in terms of the classes below.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

# WSGI environ key under which the worker offers a way to bound every socket read of the body by
# a RateFloor (a callable taking the floor). Servers other than ours do not set it.
RATE_FLOOR_ENVIRON_KEY = "media_service.watch_body_rate"

DEFAULT_HEADER_TIMEOUT = 20.0
DEFAULT_BODY_IDLE_TIMEOUT = 60.0


class LimitsError(ValueError):
    """An invalid GUNICORN_* read limit; the message is one line naming the variable."""


class ClientTooSlow(Exception):
    """The client missed a read deadline (headers, body idle time, or minimum upload rate).

    Deliberately not an OSError: Werkzeug and the upload path turn OSError into "client
    disconnected" (400), while this one must become 408 Request Timeout.
    """


@dataclass(frozen=True)
class ReadLimits:
    """Deadlines the worker applies to every connection."""

    header_timeout: float = DEFAULT_HEADER_TIMEOUT  # from the first byte to the end of headers
    body_idle_timeout: float = DEFAULT_BODY_IDLE_TIMEOUT  # longest silence while reading a body

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> ReadLimits:
        env = os.environ if environ is None else environ
        return cls(
            header_timeout=_seconds(env, "GUNICORN_HEADER_TIMEOUT", DEFAULT_HEADER_TIMEOUT),
            body_idle_timeout=_seconds(
                env, "GUNICORN_BODY_IDLE_TIMEOUT", DEFAULT_BODY_IDLE_TIMEOUT
            ),
        )


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    raw = (env.get(name) or "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise LimitsError(f"{name}: expected a number of seconds, got {raw!r}") from None
    if not 0 < value <= 3600:
        raise LimitsError(f"{name}: must be > 0 and <= 3600 seconds, got {raw!r}")
    return value


class RateFloor:
    """Require at least `min_rate` bytes/s on average, after a grace period of `window` s.

    By time t after the start, at least `min_rate * (t - window)` bytes must have arrived: a
    client that was fast early has credit for a stall later (the idle timeout still applies),
    and one that trickles a byte now and then is cut once the window is used up.
    """

    def __init__(
        self, min_rate: float, window: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.min_rate = min_rate
        self.window = window
        self._clock = clock
        self.start = clock()

    def deadline(self, received: int) -> float:
        """The clock value by which byte `received + 1` must have arrived."""
        return self.start + self.window + received / self.min_rate

    def remaining(self, received: int) -> float:
        """Seconds left before `received` bytes are too few (<= 0: already too few)."""
        return self.deadline(received) - self._clock()

    def check(self, received: int) -> None:
        """Raise ClientTooSlow if `received` bytes are fewer than the floor asks for by now."""
        if self.remaining(received) <= 0:
            raise ClientTooSlow(f"The request body arrived slower than {self.min_rate:g} bytes/s.")
