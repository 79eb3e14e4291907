"""Audio facts of stored bytes: duration, sample rate, channels, codec, bit rate.

mutagen parses the containers (WAV, MP3, Ogg Vorbis/Opus, FLAC, MP4/M4A) rather than parsers of
our own: it is pure Python, maintained, and reads only the headers and frames it needs. It is
never given the whole blob: `RangeFile` fetches a bounded head and tail through the BlobStore
port (`open(key, start, length)`), the same way on every store, and serves only those bytes, so a
hostile or huge file costs at most HEAD_BYTES + TAIL_BYTES of reads and memory. Anything that
goes wrong in probing (corrupt, truncated, unsupported, out-of-range reads) is "not audio".
"""

from __future__ import annotations

import io
import logging
import time
from collections.abc import Callable

import mutagen
from mutagen.flac import FLAC
from mutagen.mp3 import MP3
from mutagen.mp4 import MP4
from mutagen.oggopus import OggOpus
from mutagen.oggvorbis import OggVorbis
from mutagen.wave import WAVE

from media_service.storage.interfaces import AudioFacts, BlobStore, MediaRepository

log = logging.getLogger(__name__)

HEAD_BYTES = 256 * 1024
# mutagen looks for an Ogg stream's last page in the file's last 64 KiB; MP4 files written
# without "faststart" keep their moov atom (the durations) at the end.
TAIL_BYTES = 64 * 1024 + 4096
TIME_BUDGET_SECONDS = 2.0

_FORMATS: tuple[tuple[type[mutagen.FileType], str], ...] = (
    (WAVE, "pcm"),
    (FLAC, "flac"),
    (OggOpus, "opus"),
    (OggVorbis, "vorbis"),
    (MP4, "aac"),
    (MP3, "mp3"),
)


class OutOfRange(OSError):
    """A read outside the fetched head and tail (mutagen treats OSError as a bad file)."""


class BudgetExceeded(OSError):
    """Probing took longer than its time budget."""


class RangeFile(io.RawIOBase):
    """A read-only, seekable file of `size` bytes of which only a head and a tail are known.

    Reads inside the known ranges answer their bytes; a read that would need any other byte
    raises OutOfRange, so a parser can never silently see zeros or read past the bounds.
    """

    def __init__(
        self,
        size: int,
        head: bytes,
        tail: bytes,
        deadline: float | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__()
        overlap = len(head) - (size - len(tail))
        if overlap >= 0:  # the ranges meet: one range, so reads may span the seam
            head, tail = head + tail[overlap:], b""
        self._size = size
        self._head = head
        self._tail = tail
        self._tail_start = size - len(tail)
        self._pos = 0
        self._deadline = deadline
        self._clock = clock

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        position = base + offset
        if position < 0:
            raise OSError("negative seek position")
        self._pos = position
        return position

    def read(self, size: int | None = -1) -> bytes:
        if self._deadline is not None and self._clock() > self._deadline:
            raise BudgetExceeded("audio probe time budget exceeded")
        start = self._pos
        end = self._size if size is None or size < 0 else min(self._size, start + size)
        if start >= end:
            return b""
        if end <= len(self._head):
            data = self._head[start:end]
        elif start >= self._tail_start:
            data = self._tail[start - self._tail_start : end - self._tail_start]
        else:
            raise OutOfRange(f"bytes {start}-{end} are outside the probed ranges")
        self._pos = end
        return data

    def readinto(self, buffer: bytearray | memoryview) -> int:  # type: ignore[override]
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)


def read_range(blobs: BlobStore, key: str, start: int, length: int) -> bytes:
    """Read bytes [start, start+length) of a blob (fewer at its end)."""
    if length <= 0:
        return b""
    stream = blobs.open(key, start, length)
    try:
        return b"".join(stream)[:length]
    finally:
        stream.close()


def probe_blob(blobs: BlobStore, key: str, size: int) -> AudioFacts | None:
    """The audio facts of a stored blob of `size` bytes, or None when it is not readable audio.

    Reads at most HEAD_BYTES + TAIL_BYTES. Blob store errors propagate (the caller decides
    whether the item can wait); parse errors of any kind mean None.
    """
    if size <= 0:
        return None
    head = read_range(blobs, key, 0, min(size, HEAD_BYTES))
    tail = b""
    if size > len(head):
        tail_start = max(len(head), size - TAIL_BYTES)
        tail = read_range(blobs, key, tail_start, size - tail_start)
    return probe_bytes(size, head, tail)


def backfill(
    blobs: BlobStore, media: MediaRepository, batch: int = 100, limit: int | None = None
) -> dict[str, int]:
    """Examine READY items never examined for audio, `batch` at a time (at most `limit`).

    Counts how many were filled (audio), not_audio (examined, no facts: never read again) and
    failed (their bytes could not be read: left unexamined, so the next run retries them).
    """
    counts = {"examined": 0, "filled": 0, "not_audio": 0, "failed": 0}
    after = ""
    while limit is None or counts["examined"] < limit:
        size = batch if limit is None else min(batch, limit - counts["examined"])
        items = media.unexamined_audio(after, size)
        if not items:
            break
        for item in items:
            after = item.id  # failed items stay unexamined: move past them, not round again
            counts["examined"] += 1
            try:
                facts = probe_blob(blobs, item.id, item.media_size)
            except Exception as error:  # noqa: BLE001 - one unreadable item never stops the run
                log.warning("audio facts of %s not read: %s", item.id, error)
                counts["failed"] += 1
                continue
            if media.set_audio(item.id, facts):  # False: deleted meanwhile
                counts["filled" if facts is not None else "not_audio"] += 1
    return counts


def probe_bytes(size: int, head: bytes, tail: bytes = b"") -> AudioFacts | None:
    """The audio facts of a file of `size` bytes known by its head and tail, or None."""
    deadline = time.monotonic() + TIME_BUDGET_SECONDS
    for kind, codec in _candidates(head):
        try:
            parsed = kind(RangeFile(size, head, tail, deadline))
            facts = _facts(parsed, codec)
        except BudgetExceeded:
            return None
        except Exception as error:  # noqa: BLE001 - any failure of a parser means "not audio"
            log.debug("not %s audio: %s", codec, error)
            continue
        if facts is not None:
            return facts
    return None


def _candidates(head: bytes) -> list[tuple[type[mutagen.FileType], str]]:
    """The formats worth trying, best guess first (mutagen's own scoring on the head)."""
    scored = []
    for kind, codec in _FORMATS:
        try:
            score = kind.score("", None, head[:128])
        except Exception:  # noqa: BLE001
            continue
        if kind is MP3 and _frame_sync(head):
            score += 1  # mutagen scores MP3 only by ID3 tag or file name; a bare frame counts
        if score > 0:
            scored.append((score, kind, codec))
    scored.sort(key=lambda entry: -entry[0])
    return [(kind, codec) for _, kind, codec in scored]


def _frame_sync(head: bytes) -> bool:
    """Whether the bytes start with an MPEG audio frame header (11 sync bits, layer set)."""
    return len(head) >= 4 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0 and head[1] & 0x06 != 0


# The largest rate and channel count any of the accepted codecs carries (PCM at 768 kHz; Opus
# and Vorbis mapping families allow 255 channels).
MAX_SAMPLE_RATE = 768_000
MAX_CHANNELS = 255


def _facts(parsed: mutagen.FileType, codec: str) -> AudioFacts | None:
    info = parsed.info
    length = float(getattr(info, "length", 0) or 0)
    # Opus always decodes at 48 kHz (RFC 7845); mutagen reports no rate for it.
    sample_rate = 48000 if codec == "opus" else int(getattr(info, "sample_rate", 0) or 0)
    channels = int(getattr(info, "channels", 0) or 0)
    duration_ms = round(length * 1000) if length == length else 0  # NaN: not audio
    # A header whose rate or channel count no codec uses is corrupt, not audio we can read; it
    # also leaves a real payload less than a millisecond long (duration 0), which is no audio.
    if not (0 < sample_rate <= MAX_SAMPLE_RATE and 0 < channels <= MAX_CHANNELS):
        return None
    if duration_ms <= 0:
        return None
    if codec == "aac":
        # MP4 holds other codecs too (ALAC, ...): only AAC is claimed.
        if not str(getattr(info, "codec", "")).startswith("mp4a"):
            return None
    if codec == "pcm":
        bits = int(getattr(info, "bits_per_sample", 0) or 0)
        bit_rate: int | None = sample_rate * channels * bits if bits else None
    else:
        bit_rate = int(getattr(info, "bitrate", 0) or 0) or None
    return AudioFacts(
        duration_ms=duration_ms,
        sample_rate=sample_rate,
        channels=channels,
        codec=codec,
        bit_rate=bit_rate,
    )
