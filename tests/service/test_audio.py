"""Audio facts from bounded byte ranges: every format, and never a failure on hostile bytes."""

from __future__ import annotations

import io
import os
import wave
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from media_service.service import audio
from media_service.service.audio import (
    HEAD_BYTES,
    TAIL_BYTES,
    OutOfRange,
    RangeFile,
    probe_bytes,
)
from media_service.storage.interfaces import AudioFacts

DATA = Path(__file__).parent.parent / "data" / "audio"


def make_wav(seconds: float = 1.5, rate: int = 8000, channels: int = 1, width: int = 2) -> bytes:
    """A silent PCM WAV made with the standard library."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(width)
        out.setframerate(rate)
        out.writeframes(b"\0" * width * channels * round(seconds * rate))
    return buffer.getvalue()


def probe_whole(data: bytes) -> AudioFacts | None:
    """Probe as the service does: a bounded head, and a tail when the file is longer."""
    head = data[:HEAD_BYTES]
    tail = data[max(len(head), len(data) - TAIL_BYTES) :] if len(data) > len(head) else b""
    return probe_bytes(len(data), head, tail)


# (file, codec, sample_rate, channels, expected duration ms, tolerance ms)
SAMPLES = [
    ("cbr.mp3", "mp3", 44100, 1, 1500, 80),  # encoder delay and padding frames
    ("vbr.mp3", "mp3", 22050, 2, 1500, 80),
    ("tone.ogg", "vorbis", 16000, 1, 1500, 20),
    ("tone.opus", "opus", 48000, 1, 1500, 20),
    ("tone.flac", "flac", 8000, 1, 1500, 5),
    ("tone.m4a", "aac", 44100, 2, 1500, 60),
    ("moov_at_end.m4a", "aac", 22050, None, 1500, 60),
]


def test_pcm_wav_facts_are_exact() -> None:
    facts = probe_whole(make_wav())
    assert facts == AudioFacts(
        duration_ms=1500, sample_rate=8000, channels=1, codec="pcm", bit_rate=128000
    )


def test_stereo_8_bit_wav() -> None:
    facts = probe_whole(make_wav(seconds=0.25, rate=11025, channels=2, width=1))
    assert facts == AudioFacts(
        duration_ms=250, sample_rate=11025, channels=2, codec="pcm", bit_rate=11025 * 2 * 8
    )


@pytest.mark.parametrize(("name", "codec", "rate", "channels", "ms", "tolerance"), SAMPLES)
def test_sample_files(
    name: str, codec: str, rate: int, channels: int | None, ms: int, tolerance: int
) -> None:
    facts = probe_whole((DATA / name).read_bytes())
    assert facts is not None
    assert facts.codec == codec
    assert facts.sample_rate == rate
    if channels is not None:
        assert facts.channels == channels
    assert abs(facts.duration_ms - ms) <= tolerance
    assert facts.bit_rate is None or facts.bit_rate > 0


def test_a_long_wav_is_read_from_its_head_only() -> None:
    """Ten minutes of WAV: far more than the head, and nothing past it is needed."""
    data = make_wav(seconds=600, rate=8000)
    assert len(data) > 10 * (HEAD_BYTES + TAIL_BYTES)
    facts = probe_bytes(len(data), data[:HEAD_BYTES], data[-TAIL_BYTES:])
    assert facts is not None and facts.duration_ms == 600_000


def test_mp4_moov_at_the_end_comes_from_the_tail() -> None:
    """With the middle of the file unknown, the facts are those of the whole file."""
    data = (DATA / "moov_at_end.m4a").read_bytes()
    moov = data.index(b"moov") - 4
    head, tail = data[:64], data[moov:]
    assert len(head) + len(tail) < len(data)
    assert probe_bytes(len(data), head, tail) == probe_whole(data)


def test_ogg_needs_its_last_page() -> None:
    """Ogg's duration is its last page's granule: with a tail that misses it, not claimed."""
    data = (DATA / "tone.ogg").read_bytes()
    assert probe_bytes(len(data) + 100_000, data, b"") is None


@pytest.mark.parametrize("name", [s[0] for s in SAMPLES] + ["wav"])
@pytest.mark.parametrize("keep", [0, 4, 12, 44, 100, 700])
def test_truncated_files_are_not_audio_or_plausible(name: str, keep: int) -> None:
    """A prefix of an audio file never raises; when it is claimed, the facts are sane."""
    data = make_wav() if name == "wav" else (DATA / name).read_bytes()
    facts = probe_whole(data[:keep])
    if facts is not None:
        assert facts.sample_rate > 0 and facts.channels > 0 and facts.duration_ms > 0


@pytest.mark.parametrize(
    "magic",
    [
        b"RIFF\x24\x00\x00\x00WAVEfmt ",
        b"ID3\x04\x00\x00\x00\x00\x00\x00",
        b"\xff\xfb\x90\x64",
        b"OggS\x00\x02",
        b"fLaC\x00\x00\x00\x22",
        b"\x00\x00\x00\x18ftypM4A ",
        b"OggS\x00\x02" + b"\x00" * 20 + b"\x01\x13OpusHead",
    ],
    ids=["wav", "id3", "mpeg", "ogg", "flac", "mp4", "opus"],
)
def test_random_bytes_behind_audio_magic_never_raise(magic: bytes) -> None:
    for seed in range(20):
        facts = probe_whole(magic + os.urandom(2000 + seed * 97))
        # Almost always None; a random MPEG frame sync may pass for a plausible MP3.
        assert facts is None or (facts.sample_rate > 0 and facts.channels > 0)


def test_text_is_not_audio() -> None:
    assert probe_whole(b"hello, world\n" * 100) is None
    assert probe_bytes(0, b"", b"") is None


def test_range_file_refuses_bytes_outside_its_ranges() -> None:
    f = RangeFile(100, b"h" * 10, b"t" * 10)
    assert f.read(4) == b"hhhh"
    f.seek(95)
    assert f.read() == b"ttttt"
    f.seek(50)
    with pytest.raises(OutOfRange):
        f.read(1)
    f.seek(8)
    with pytest.raises(OutOfRange):
        f.read(4)  # straddles the end of the head
    f.seek(200)
    assert f.read(1) == b""


def test_range_file_stops_at_its_deadline() -> None:
    now = [0.0]
    f = RangeFile(10, b"x" * 10, b"", deadline=1.0, clock=lambda: now[0])
    assert f.read(1) == b"x"
    now[0] = 2.0
    with pytest.raises(audio.BudgetExceeded):
        f.read(1)


HEADERS = [make_wav(0.1)[:64]] + [(DATA / s[0]).read_bytes()[:256] for s in SAMPLES]


@settings(max_examples=150)  # no deadline, no too_slow check: the suite's profile (conftest)
@given(
    base=st.sampled_from(HEADERS),
    flips=st.lists(st.tuples(st.integers(0, 255), st.integers(0, 255)), max_size=12),
    tail=st.binary(max_size=3000),
    declared=st.integers(0, 2**40),
)
# Found by this property: a WAV whose rate is 16,785,216 Hz (one byte flipped) and lasts 0 ms.
@example(base=HEADERS[0], flips=[(27, 1)], tail=b"", declared=0)
def test_fuzzed_headers_never_raise(
    base: bytes, flips: list[tuple[int, int]], tail: bytes, declared: int
) -> None:
    """Headers of real files with bytes overwritten, random continuations and sizes."""
    data = bytearray(base + tail)
    for position, value in flips:
        if position < len(data):
            data[position] = value
    head = bytes(data)
    size = max(len(head), declared)
    facts = probe_bytes(size, head, b"")
    if facts is not None:
        assert facts.codec in {"pcm", "mp3", "vorbis", "opus", "flac", "aac"}
        assert facts.sample_rate > 0 and facts.channels > 0 and facts.duration_ms > 0
