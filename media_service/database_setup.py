"""Create tables and indexes at start-up, or as soon as the database answers.

A worker must come up even while the database is down (a crash loop would hide the cause and
never answer): it then serves /healthz, and every other request first retries the database set-up
(at most once per RETRY_SECONDS) and answers 503 while the database stays unreachable.
"""

from __future__ import annotations

import logging
import threading
import time

from media_service.errors import ServiceUnavailable
from media_service.storage.interfaces import Backends, BackendUnavailable

log = logging.getLogger(__name__)

RETRY_SECONDS = 2.0


class DatabaseSetup:
    """Remembers whether the tables and indexes are in place and retries them when they are not."""

    def __init__(self, backends: Backends) -> None:
        self._backends = backends
        self._lock = threading.Lock()
        self._ready = False
        self._last_attempt = 0.0

    def try_now(self) -> bool:
        """Prepare the database; log (not raise) when it is unreachable."""
        # Never queue behind another thread's attempt: it answers for everyone meanwhile.
        if not self._lock.acquire(blocking=False):
            return self._ready
        try:
            if self._ready:
                return True
            self._last_attempt = time.monotonic()
            try:
                self._backends.media.prepare_database()
                self._backends.credentials.prepare_database()
            except BackendUnavailable as error:
                log.warning("database not ready; will retry: %s", error.detail or error)
                return False
            self._ready = True
            return True
        finally:
            self._lock.release()

    def require(self) -> None:
        """Raise 503 unless the database is prepared (retrying now and then)."""
        if self._ready:
            return
        if time.monotonic() - self._last_attempt >= RETRY_SECONDS and self.try_now():
            return
        raise ServiceUnavailable("The database is not available; retry later.")
