"""PartReader.readinto (the body received into the caller's buffer and searched in place) yields
exactly what werkzeug's decoder yields through read(), whatever the data and the body's reads."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from media_service.errors import MalformedMultipart
from media_service.http.multipart import FilePart, FormField, MultipartStream

BOUNDARY = b"b0undary"
# Bytes that make boundaries, partial boundaries and line breaks likely.
PIECES = [b"\r", b"\n", b"\r\n", b"-", b"--", b"--" + BOUNDARY, b"\r\n--" + BOUNDARY, b"x", b" "]


class ShortReads:
    """A body whose reads return at most a random number of bytes; readinto optional."""

    def __init__(self, data: bytes, seed: int) -> None:
        self._data = data
        self._pos = 0
        self._random = random.Random(seed)

    def _next(self, size: int) -> bytes:
        size = min(size, self._random.choice([1, 7, 100, 5000, 70_000, 1 << 20]))
        chunk = self._data[self._pos : self._pos + size]
        self._pos += len(chunk)
        return chunk

    def read(self, size: int = -1, /) -> bytes:
        return self._next(len(self._data) if size < 0 else size)


class ShortReadsInto(ShortReads):
    def readinto(self, buffer: bytearray | memoryview) -> int:
        chunk = self._next(len(buffer))
        buffer[: len(chunk)] = chunk
        return len(chunk)


def parse(stream: ShortReads, sizes: list[int], into: bool) -> list[object]:
    """Everything the parts yield: fields, each file read's bytes, or the error."""
    out: list[object] = []
    try:
        for part in MultipartStream(stream, BOUNDARY, file_field_names=frozenset()).parts():
            if isinstance(part, FormField):
                out.append(("field", part.name, part.value))
                continue
            assert isinstance(part, FilePart)
            turn = 0
            while True:
                size = sizes[turn % len(sizes)]
                turn += 1
                if into:
                    buffer = bytearray(size)
                    chunk = bytes(buffer[: part.reader.readinto(buffer)])
                else:
                    chunk = part.reader.read(size)
                out.append(("data", chunk))
                if not chunk:
                    break
    except MalformedMultipart as error:
        out.append(("error", str(error)))
    return out


def body(data: bytes, tail: bytes) -> bytes:
    return (
        b"--" + BOUNDARY + b"\r\n"
        b'Content-Disposition: form-data; name="filedata"; filename="a.bin"\r\n\r\n' + data + tail
    )


@settings(max_examples=300, deadline=None)
@given(
    data=st.lists(st.sampled_from(PIECES) | st.binary(max_size=300), max_size=400).map(b"".join),
    filler=st.integers(0, 300_000),
    tail=st.sampled_from(
        [
            b"\r\n--" + BOUNDARY + b"--\r\n",
            b"\r\n--"
            + BOUNDARY
            + b'\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n--'
            + BOUNDARY
            + b"--\r\n",
            b"\r\n--" + BOUNDARY + b"  \r\n",
            b"\n--" + BOUNDARY + b"--",
            b"",
            b"\r\n--" + BOUNDARY[:-1],
        ]
    ),
    sizes=st.lists(
        st.sampled_from([1, 100, 65_536, 70_000, 200_000, 1 << 20]), min_size=1, max_size=4
    ),
    seed=st.integers(0, 1000),
)
def test_readinto_matches_the_decoder(
    data: bytes, filler: int, tail: bytes, sizes: list[int], seed: int
) -> None:
    payload = body(random.Random(seed).randbytes(filler) + data, tail)
    by_read = parse(ShortReads(payload, seed), sizes, into=False)
    by_readinto = parse(ShortReadsInto(payload, seed), sizes, into=True)
    assert by_readinto == by_read


class FullReads(ShortReads):
    """A body whose reads return all that is asked (up to `step`), with readinto or without."""

    def __init__(self, data: bytes, step: int) -> None:
        super().__init__(data, 0)
        self._step = step

    def _next(self, size: int) -> bytes:
        chunk = self._data[self._pos : self._pos + min(size, self._step)]
        self._pos += len(chunk)
        return chunk


class FullReadsInto(FullReads, ShortReadsInto):
    pass


def test_readinto_matches_the_decoder_around_buffer_ends() -> None:
    """Boundaries and line breaks at every offset around the end of a body read (64 KiB steps:
    the first goes to the decoder, the next into a file read's buffer) and of a file read."""
    size = 70_000
    noise = random.Random(1).choices([b"a", b"\r", b"\n", b"-", b"\r\n"], k=3 * size)
    filler = b"".join(noise)[: 3 * size]
    tails = [
        b"\r\n--" + BOUNDARY + b"--\r\n",
        b"\n--" + BOUNDARY + b"\r\n",
        b"\r\n--" + BOUNDARY + b"x\r\n--" + BOUNDARY + b"--\r\n",
        b"\r\r\n--" + BOUNDARY[:-2] + b"\r\n--" + BOUNDARY + b"--\r\n",
    ]
    head = len(body(b"", b""))
    ends = [2 * 65_536 - head, 65_536 - head + size, size]  # where a read's buffer ends
    for length in (n for end in ends for n in range(end - 2 * len(BOUNDARY) - 8, end + 8)):
        for tail in tails:
            for step in (1 << 20, 65_536):
                payload = body(filler[:length], tail)
                by_read = parse(FullReads(payload, step), [size], into=False)
                by_readinto = parse(FullReadsInto(payload, step), [size], into=True)
                assert by_readinto == by_read, (length, tail, step)


def test_a_decoder_without_the_inspected_internals_takes_every_byte_itself(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another werkzeug whose decoder keeps its buffer elsewhere: readinto still works, through
    receive_data like read(), and yields the same."""
    import media_service.http.multipart as multipart

    monkeypatch.setattr(multipart, "_decoder_is_inspectable", lambda decoder: False)
    payload = body(random.Random(3).randbytes(300_000), b"\r\n--" + BOUNDARY + b"--\r\n")
    stream = ShortReadsInto(payload, 3)
    calls = 0
    real_readinto = stream.readinto

    def counted(buffer: bytearray | memoryview) -> int:
        nonlocal calls
        calls += 1
        return real_readinto(buffer)

    stream.readinto = counted  # type: ignore[method-assign]
    assert parse(stream, [70_000], into=True) == parse(ShortReads(payload, 3), [70_000], False)
    assert calls == 0  # the in-place path was never taken


def test_the_decoder_of_this_werkzeug_is_inspectable() -> None:
    """The in-place path is what the suite above tests: it must be the one in use."""
    from werkzeug.sansio.multipart import MultipartDecoder

    from media_service.http.multipart import _decoder_is_inspectable

    assert _decoder_is_inspectable(MultipartDecoder(BOUNDARY))
