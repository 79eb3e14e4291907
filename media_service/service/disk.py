"""The free-space reserve: uploads never take a local volume below MEDIA_MIN_FREE_BYTES.

The volumes are the ones the service writes (settings.local_volumes): the file store's root,
which holds its temp files too, and the SQLite database's directory. An upload is refused (507)
before its body is read when a volume is already below the reserve (or would be, by the
announced Content-Length), and stopped the moment its next chunk would cross it. What is left
under the reserve keeps deletes, download counts and the sweeper working; the spare file next to
the database (storage/disk.py) covers a disk that something else filled up.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from pathlib import Path

from media_service.errors import InsufficientStorage
from media_service.settings import Settings, local_volumes, sqlite_path
from media_service.storage.disk import SpareFile, free_bytes

log = logging.getLogger(__name__)

Observer = Callable[[str, int], None]


class DiskGuard:
    """Free bytes of the local volumes, checked against the reserve."""

    def __init__(
        self,
        volumes: Mapping[str, Path],
        min_free_bytes: int,
        *,
        spare: SpareFile | None = None,
        free: Callable[[Path], int] = free_bytes,
        observe: Observer | None = None,
    ) -> None:
        self.volumes = dict(volumes)
        self.min_free_bytes = min_free_bytes
        self.spare = spare
        self._free = free
        self._observe = observe

    @classmethod
    def from_settings(cls, settings: Settings, *, observe: Observer | None = None) -> DiskGuard:
        spare = None
        if settings.database_kind == "sqlite" and settings.sqlite_spare_bytes > 0:
            spare = SpareFile(
                sqlite_path(settings.database_url).parent, settings.sqlite_spare_bytes
            )
        return cls(local_volumes(settings), settings.min_free_bytes, spare=spare, observe=observe)

    def sample(self, *, observe: bool = True) -> dict[str, int]:
        """Free bytes per volume; a volume that cannot be read is left out (its own port
        reports it unavailable). `observe` also updates the metrics gauge."""
        free: dict[str, int] = {}
        for name, path in self.volumes.items():
            try:
                free[name] = self._free(path)
            except OSError:
                continue
            if observe and self._observe is not None:
                self._observe(name, free[name])
        return free

    def low(self) -> dict[str, int]:
        """The volumes below the reserve, with their free bytes (for /readyz)."""
        return {name: n for name, n in self.sample().items() if n < self.min_free_bytes}

    def restore_spare(self) -> bool:
        """Allocate the spare file again if it was released and the reserve allows; whether
        it is in place."""
        if self.spare is None or self.spare.present():
            return True
        try:
            room = self._free(self.spare.path.parent) - self.spare.size
        except OSError:
            return False
        if room < self.min_free_bytes or not self.spare.ensure():
            return False
        log.info("spare file beside the database allocated again")
        return True

    def admit(self, incoming: int | None = None) -> None:
        """Raise InsufficientStorage unless an upload of `incoming` bytes (unknown: None) fits
        above the reserve; run before reading the body."""
        if not self.volumes:
            return
        if not self.restore_spare():
            raise InsufficientStorage(
                "Not enough free space: the database's emergency space is in use; "
                "delete media items or free disk space, then retry."
            )
        self._check(incoming or 0)

    def check_chunk(self, size: int) -> None:
        """Raise InsufficientStorage if writing `size` more bytes would cross the reserve."""
        if self.volumes:
            self._check(size, observe=False)  # once per chunk: no metrics write

    def _check(self, incoming: int, *, observe: bool = True) -> None:
        for name, free in self.sample(observe=observe).items():
            if free - incoming < self.min_free_bytes:
                raise InsufficientStorage(
                    f"Not enough free space on the {name.replace('_', ' ')} volume: "
                    f"{self.min_free_bytes} bytes must stay free."
                )
