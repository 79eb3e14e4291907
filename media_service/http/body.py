"""Request bodies as the upload path reads them: bounded in size, and in how slowly they arrive."""

from __future__ import annotations

from collections.abc import Callable, Mapping

from media_service.errors import BodyTooSlow, ClientDisconnected, PayloadTooLarge
from media_service.serving.limits import RATE_FLOOR_ENVIRON_KEY, ClientTooSlow, RateFloor
from media_service.storage.interfaces import Readable


class LimitedInput:
    """Wrap the request body and refuse (413) once more than `limit` bytes have arrived.

    This catches bodies without Content-Length (chunked) that are too large, and whatever
    multipart overhead the per-file cap does not count.
    """

    def __init__(self, stream: Readable, limit: int) -> None:
        self._stream = stream
        self._limit = limit
        self.received = 0

    def read(self, size: int = -1, /) -> bytes:
        try:
            chunk = self._stream.read(size)
        except OSError as error:  # the client reset the connection mid-body (gunicorn: raw socket)
            raise ClientDisconnected(f"The request body could not be read: {error}") from None
        self._count(len(chunk))
        return chunk

    def readinto(self, buffer: bytearray | memoryview, /) -> int:
        """read() into `buffer`, through the stream's own readinto when it has one."""
        try:
            received = read_into(self._stream, buffer)
        except OSError as error:
            raise ClientDisconnected(f"The request body could not be read: {error}") from None
        self._count(received)
        return received

    def _count(self, received: int) -> None:
        self.received += received
        if self.received > self._limit:
            raise PayloadTooLarge(
                f"The request body is larger than the maximum of {self._limit} bytes."
            )


class MinimumRateInput:
    """Wrap the request body and refuse (408) one that arrives slower than `floor` allows.

    A check after each read only sees a trickling client when a read returns, which may be
    never; so the floor is also handed to the server when it offers to bound its socket reads
    by it (`watch`, from the WSGI environ: our gunicorn worker does), and a read the server
    cuts short raises ClientTooSlow.
    """

    def __init__(
        self,
        stream: Readable,
        floor: RateFloor,
        watch: Callable[[RateFloor], None] | None = None,
    ) -> None:
        self._stream = stream
        self._floor = floor
        self.received = 0
        if watch is not None:
            watch(floor)

    @classmethod
    def for_environ(
        cls, stream: Readable, environ: Mapping[str, object], min_rate: int, window: float
    ) -> Readable:
        """`stream` wrapped, or `stream` itself when the minimum rate is off (0)."""
        if min_rate <= 0:
            return stream
        watch = environ.get(RATE_FLOOR_ENVIRON_KEY)
        return cls(stream, RateFloor(min_rate, window), watch if callable(watch) else None)

    def read(self, size: int = -1, /) -> bytes:
        try:
            chunk = self._stream.read(size)
        except ClientTooSlow as error:
            raise BodyTooSlow(str(error)) from None
        self._count(len(chunk))
        return chunk

    def readinto(self, buffer: bytearray | memoryview, /) -> int:
        """read() into `buffer`, through the stream's own readinto when it has one."""
        try:
            received = read_into(self._stream, buffer)
        except ClientTooSlow as error:
            raise BodyTooSlow(str(error)) from None
        self._count(received)
        return received

    def _count(self, received: int) -> None:
        self.received += received
        if received:
            try:
                self._floor.check(self.received)
            except ClientTooSlow as error:
                raise BodyTooSlow(str(error)) from None


def read_into(stream: Readable, buffer: bytearray | memoryview) -> int:
    """stream.readinto(buffer) if the stream has it (0 also for None), else a read() copied in.

    WSGI promises only read(); werkzeug and the upload path prefer readinto when it is there.
    """
    readinto = getattr(stream, "readinto", None)
    if readinto is not None:
        return int(readinto(buffer) or 0)
    data = stream.read(len(buffer))
    buffer[: len(data)] = data
    return len(data)
