"""The one fake clock of the suites: the service's clock, frozen and moved only by the test.

`freeze(app)` puts a `Clock` in place of the app's `MediaService.clock` and returns it;
`clock.advance(timedelta)` moves it on, `clock.set(moment)` puts it at an instant. It is
thread-safe: S3 reads and the live server's handlers may read it from other threads.
"""

from __future__ import annotations

import threading
from datetime import datetime, timedelta

from flask import Flask

from media_service.context import EXTENSION_KEY
from media_service.service.media import utc_now


class Clock:
    """The service's clock, frozen at `start` (default: now) and moved only by the test."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start if start is not None else utc_now()
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.now

    def advance(self, by: timedelta) -> datetime:
        with self._lock:
            self.now += by
            return self.now

    def set(self, moment: datetime) -> None:
        with self._lock:
            self.now = moment


def freeze(app: Flask, start: datetime | None = None) -> Clock:
    """Replace `app`'s service clock with a Clock frozen at `start` (default: now)."""
    clock = Clock(start)
    app.extensions[EXTENSION_KEY].service.clock = clock
    return clock
