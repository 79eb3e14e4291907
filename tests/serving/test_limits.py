"""Read limits and the upload rate floor: pure logic, a fake clock, no sockets."""

from __future__ import annotations

import io

import pytest

from media_service.errors import BodyTooSlow
from media_service.http.body import MinimumRateInput
from media_service.serving.limits import (
    RATE_FLOOR_ENVIRON_KEY,
    ClientTooSlow,
    LimitsError,
    RateFloor,
    ReadLimits,
)
from media_service.settings import ConfigError, Settings


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_read_limit_defaults_suit_a_phone_on_a_bad_network() -> None:
    limits = ReadLimits.from_env({})
    assert 10 <= limits.header_timeout <= 30
    assert 30 <= limits.body_idle_timeout <= 60


def test_read_limits_from_env_and_blank_means_default() -> None:
    limits = ReadLimits.from_env(
        {"GUNICORN_HEADER_TIMEOUT": "1.5", "GUNICORN_BODY_IDLE_TIMEOUT": " "}
    )
    assert limits == ReadLimits(
        header_timeout=1.5, body_idle_timeout=ReadLimits().body_idle_timeout
    )


@pytest.mark.parametrize("value", ["soon", "0", "-1", "4000"])
def test_read_limits_reject_bad_values_in_one_line(value: str) -> None:
    with pytest.raises(LimitsError) as excinfo:
        ReadLimits.from_env({"GUNICORN_HEADER_TIMEOUT": value})
    assert str(excinfo.value).startswith("GUNICORN_HEADER_TIMEOUT: ")
    assert "\n" not in str(excinfo.value)


def test_upload_rate_settings() -> None:
    base = {"MEDIA_DATABASE_URL": "sqlite:///tmp/x.db", "MEDIA_STORAGE_URL": "file:///tmp/b"}
    defaults = Settings.from_env(base)
    assert 1024 <= defaults.upload_min_rate <= 8192  # "a few KiB/s"
    assert 10 <= defaults.upload_rate_window <= 60
    tuned = Settings.from_env(
        {**base, "MEDIA_UPLOAD_MIN_RATE": "0", "MEDIA_UPLOAD_RATE_WINDOW": "2.5"}
    )
    assert (tuned.upload_min_rate, tuned.upload_rate_window) == (0, 2.5)
    with pytest.raises(ConfigError, match="MEDIA_UPLOAD_MIN_RATE"):
        Settings.from_env({**base, "MEDIA_UPLOAD_MIN_RATE": "fast"})
    with pytest.raises(ConfigError, match="MEDIA_UPLOAD_RATE_WINDOW"):
        Settings.from_env({**base, "MEDIA_UPLOAD_RATE_WINDOW": "0"})


@pytest.mark.parametrize(
    ("elapsed", "received", "too_slow"),
    [
        (5.0, 0, False),  # within the grace window: nothing needed yet
        (10.0, 0, True),  # window used up with nothing received
        (20.0, 10_001, False),  # 10 s past the window at 1000 B/s: 10 000 bytes needed
        (20.0, 9_999, True),
        (60.0, 55_000, False),  # sent fast early, silent since: the credit still covers it
    ],
)
def test_rate_floor(elapsed: float, received: int, too_slow: bool) -> None:
    clock = FakeClock()
    floor = RateFloor(1000, 10.0, clock=clock)
    clock.now += elapsed
    assert (floor.remaining(received) <= 0) is too_slow
    if too_slow:
        with pytest.raises(ClientTooSlow, match="1000 bytes/s"):
            floor.check(received)
    else:
        floor.check(received)


def test_minimum_rate_input_hands_the_floor_to_the_server_and_checks_reads() -> None:
    clock = FakeClock()
    floor = RateFloor(1000, 1.0, clock=clock)
    watched: list[RateFloor] = []
    stream = MinimumRateInput(io.BytesIO(b"x" * 3000), floor, watched.append)
    assert watched == [floor]
    assert stream.read(1000) == b"x" * 1000
    clock.now += 2.5  # 1000 bytes after 2.5 s: 1.5 s * 1000 B/s = 1500 needed
    with pytest.raises(BodyTooSlow) as excinfo:
        stream.read(100)
    assert excinfo.value.status == 408


def test_minimum_rate_input_turns_a_server_timeout_into_408() -> None:
    class Stalled:
        def read(self, size: int = -1, /) -> bytes:
            raise ClientTooSlow("The client was idle for too long.")

    stream = MinimumRateInput(Stalled(), RateFloor(1000, 1.0))
    with pytest.raises(BodyTooSlow, match="idle"):
        stream.read(10)


def test_minimum_rate_input_from_environ() -> None:
    raw = io.BytesIO(b"abc")
    assert MinimumRateInput.for_environ(raw, {}, 0, 30.0) is raw  # turned off
    watched: list[RateFloor] = []
    wrapped = MinimumRateInput.for_environ(
        raw, {RATE_FLOOR_ENVIRON_KEY: watched.append}, 2048, 30.0
    )
    assert isinstance(wrapped, MinimumRateInput)
    assert watched and watched[0].min_rate == 2048 and watched[0].window == 30.0
    assert wrapped.read(-1) == b"abc"
