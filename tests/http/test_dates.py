"""HTTP-date (RFC 9110 §5.6.7) and ISO 8601 parsing and formatting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from media_service.http.dates import (
    MAX_DATE_LENGTH,
    format_http_date,
    format_iso_millis,
    parse_http_date,
    parse_iso8601,
)

# The example instant of RFC 9110 §5.6.7, in all three forms.
EXAMPLE = datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)
NOW = datetime(2025, 11, 23, 12, 0, 0, tzinfo=UTC)


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, micro: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("Sun, 06 Nov 1994 08:49:37 GMT", EXAMPLE, id="imf-fixdate"),
        pytest.param("Sunday, 06-Nov-94 08:49:37 GMT", EXAMPLE, id="rfc850"),
        pytest.param("Sun Nov  6 08:49:37 1994", EXAMPLE, id="asctime-space-padded-day"),
        pytest.param("Sun Nov 06 08:49:37 1994", EXAMPLE, id="asctime-two-digit-day"),
        pytest.param("sun, 06 nov 1994 08:49:37 gmt", EXAMPLE, id="imf-lowercase-names"),
        pytest.param("SUNDAY, 06-NOV-94 08:49:37 GMT", EXAMPLE, id="rfc850-uppercase"),
        pytest.param("  Sun, 06 Nov 1994 08:49:37 GMT\t", EXAMPLE, id="surrounding-ows"),
        pytest.param("Mon, 06 Nov 1994 08:49:37 GMT", EXAMPLE, id="wrong-weekday-ignored"),
        pytest.param(
            "Sat, 31 Dec 2016 23:59:60 GMT", utc(2016, 12, 31, 23, 59, 59), id="leap-second"
        ),
        pytest.param("Thu, 29 Feb 2024 00:00:00 GMT", utc(2024, 2, 29), id="leap-day"),
        pytest.param("Mon, 01 Jan 0001 00:00:00 GMT", utc(1, 1, 1), id="year-0001"),
        pytest.param(
            "Fri, 31 Dec 9999 23:59:59 GMT", utc(9999, 12, 31, 23, 59, 59), id="year-9999"
        ),
        # ISO 8601, which the reference API documents for If-Modified-Since.
        pytest.param("2020-01-01T14:00:00Z", utc(2020, 1, 1, 14), id="iso-z"),
        pytest.param("2020-01-01T14:00:00.000Z", utc(2020, 1, 1, 14), id="iso-millis"),
        pytest.param("2020-01-01T16:00:00+02:00", utc(2020, 1, 1, 14), id="iso-offset"),
        pytest.param("2020-01-01T14:00:00", utc(2020, 1, 1, 14), id="iso-naive-is-utc"),
    ],
)
def test_parse_http_date_accepts(value: str, expected: datetime) -> None:
    parsed = parse_http_date(value, now=NOW)
    assert parsed == expected
    assert parsed is not None and parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("   ", id="blank"),
        pytest.param("garbage", id="garbage"),
        pytest.param("0", id="zero"),
        pytest.param("-1", id="negative-number"),
        pytest.param("Sun, 31 Feb 1994 08:49:37 GMT", id="31-february"),
        pytest.param("Sun, 00 Nov 1994 08:49:37 GMT", id="day-zero"),
        pytest.param("Sun, 32 Nov 1994 08:49:37 GMT", id="day-32"),
        pytest.param("Sun, 06 Foo 1994 08:49:37 GMT", id="unknown-month"),
        pytest.param("Sun, 06 Nov 1994 24:00:00 GMT", id="hour-24"),
        pytest.param("Sun, 06 Nov 1994 08:60:00 GMT", id="minute-60"),
        pytest.param("Sun, 06 Nov 1994 08:49:61 GMT", id="second-61"),
        pytest.param("Sun, 06 Nov 0000 08:49:37 GMT", id="year-0000"),
        pytest.param("Sun, 06 Nov 99999 08:49:37 GMT", id="five-digit-year"),
        pytest.param("Sun, 06 Nov 94 08:49:37 GMT", id="imf-two-digit-year"),
        pytest.param("Sun, 6 Nov 1994 08:49:37 GMT", id="imf-one-digit-day"),
        pytest.param("Sun, 06 Nov 1994 08:49:37 UTC", id="utc-not-gmt"),
        pytest.param("Sun, 06 Nov 1994 08:49:37 +0000", id="numeric-zone"),
        pytest.param("Sun, 06 Nov 1994 08:49:37", id="no-zone"),
        pytest.param("Sun 06 Nov 1994 08:49:37 GMT", id="missing-comma"),
        pytest.param("Sunday, 06 Nov 1994 08:49:37 GMT", id="long-day-in-imf"),
        pytest.param("Sun, 06-Nov-94 08:49:37 GMT", id="short-day-in-rfc850"),
        pytest.param("Sun Nov  6 08:49:37 1994 GMT", id="asctime-with-zone"),
        pytest.param("Xyz, 06 Nov 1994 08:49:37 GMT", id="unknown-day"),
        pytest.param(
            "Sun, 06 Nov 1994 08:49:37 GMT, Sun, 06 Nov 1994 08:49:37 GMT", id="list-of-two"
        ),
        pytest.param("Sun, \u0660\u0666 Nov 1994 08:49:37 GMT", id="non-ascii-digits"),
        pytest.param("\u017fun, 06 Nov 1994 08:49:37 GMT", id="non-ascii-case-fold"),
        pytest.param("Sun, 06 Nov 1994 08:49:37 GMT\r\n", id="trailing-crlf"),
        pytest.param("Sun, 06 Nov 1994 08:49:37 GMT" + " " * MAX_DATE_LENGTH, id="too-long"),
        pytest.param("9" * 10_000, id="huge-number"),
        pytest.param("2020-02-30T00:00:00Z", id="iso-30-february"),
    ],
)
def test_parse_http_date_rejects(value: str) -> None:
    assert parse_http_date(value, now=NOW) is None


@pytest.mark.parametrize("value", [None, 0, b"Sun, 06 Nov 1994 08:49:37 GMT"], ids=repr)
def test_parse_http_date_rejects_non_strings(value: object) -> None:
    assert parse_http_date(value) is None  # type: ignore[arg-type]


def test_parse_http_date_can_refuse_iso8601() -> None:
    assert parse_http_date("2020-01-01T14:00:00Z", iso8601=False) is None
    assert parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT", iso8601=False) == EXAMPLE


@pytest.mark.parametrize(
    ("value", "now", "expected_year"),
    [
        # RFC 9110 §5.6.7: more than 50 years in the future means the most recent past year
        # with the same two digits.
        pytest.param("Sunday, 06-Nov-94 08:49:37 GMT", NOW, 1994, id="94-in-2025"),
        pytest.param("Thursday, 01-Jan-20 00:00:00 GMT", NOW, 2020, id="20-in-2025"),
        pytest.param("Tuesday, 01-Jan-75 00:00:00 GMT", NOW, 2075, id="under-50-years-ahead"),
        pytest.param("Monday, 30-Nov-75 00:00:00 GMT", NOW, 1975, id="just-over-50-years"),
        pytest.param("Friday, 01-Jan-76 00:00:00 GMT", NOW, 1976, id="76-in-2025"),
        pytest.param("Friday, 01-Jan-00 00:00:00 GMT", utc(2099, 6, 1), 2100, id="00-in-2099"),
        pytest.param("Friday, 01-Jan-99 00:00:00 GMT", utc(2001, 6, 1), 1999, id="99-in-2001"),
        pytest.param("Tuesday, 29-Feb-00 00:00:00 GMT", NOW, 2000, id="leap-day-2000"),
    ],
)
def test_rfc850_two_digit_year(value: str, now: datetime, expected_year: int) -> None:
    parsed = parse_http_date(value, now=now)
    assert parsed is not None and parsed.year == expected_year


def test_rfc850_uses_the_current_time_by_default() -> None:
    parsed = parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT")
    assert parsed == EXAMPLE


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("2020-01-01T14:00:00Z", utc(2020, 1, 1, 14), id="z"),
        pytest.param("2020-01-01t14:00:00z", utc(2020, 1, 1, 14), id="lowercase-t-z"),
        pytest.param("2020-01-01 14:00:00Z", utc(2020, 1, 1, 14), id="space-separator"),
        pytest.param("2020-01-01T14:00:00.000Z", utc(2020, 1, 1, 14), id="millis"),
        pytest.param(
            "2020-01-01T14:00:00.123Z", utc(2020, 1, 1, 14, 0, 0, 123000), id="millis-nonzero"
        ),
        pytest.param(
            "2020-01-01T14:00:00.123456789Z",
            utc(2020, 1, 1, 14, 0, 0, 123456),
            id="nanos-truncated",
        ),
        pytest.param("2020-01-01T14:00:00,5Z", utc(2020, 1, 1, 14, 0, 0, 500000), id="comma"),
        pytest.param("2020-01-01T16:00:00+02:00", utc(2020, 1, 1, 14), id="plus-hh-mm"),
        pytest.param("2020-01-01T16:00:00+0200", utc(2020, 1, 1, 14), id="plus-hhmm"),
        pytest.param("2020-01-01T16:00:00+02", utc(2020, 1, 1, 14), id="plus-hh"),
        pytest.param("2020-01-01T08:30:00-05:30", utc(2020, 1, 1, 14), id="minus-hh-mm"),
        pytest.param("2020-01-01T00:30:00+01:00", utc(2019, 12, 31, 23, 30), id="crosses-year"),
        pytest.param("2020-01-01T14:00:00-00:00", utc(2020, 1, 1, 14), id="minus-zero"),
        pytest.param("2020-01-01T14:00:00", utc(2020, 1, 1, 14), id="naive-is-utc"),
        pytest.param("2020-01-01T14:00", utc(2020, 1, 1, 14), id="no-seconds"),
        pytest.param("2020-01-01T14:00Z", utc(2020, 1, 1, 14), id="no-seconds-z"),
        pytest.param("2020-01-01", utc(2020, 1, 1), id="date-only"),
        pytest.param("2016-12-31T23:59:60Z", utc(2016, 12, 31, 23, 59, 59), id="leap-second"),
        pytest.param(" 2020-01-01T14:00:00Z ", utc(2020, 1, 1, 14), id="surrounding-space"),
    ],
)
def test_parse_iso8601_accepts(value: str, expected: datetime) -> None:
    parsed = parse_iso8601(value)
    assert parsed == expected
    assert parsed is not None and parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("", id="empty"),
        pytest.param("2020", id="year-only"),
        pytest.param("2020-01", id="year-month"),
        pytest.param("2020-1-1", id="unpadded"),
        pytest.param("2020-13-01", id="month-13"),
        pytest.param("2020-00-10", id="month-0"),
        pytest.param("2020-02-30T00:00:00Z", id="30-february"),
        pytest.param("2019-02-29", id="29-february-non-leap"),
        pytest.param("2020-01-01T24:00:00Z", id="hour-24"),
        pytest.param("2020-01-01T14:60:00Z", id="minute-60"),
        pytest.param("2020-01-01T14:00:00+24:00", id="offset-24h"),
        pytest.param("2020-01-01T14:00:00+02:60", id="offset-60m"),
        pytest.param("2020-01-01T14:00:00ZZ", id="double-z"),
        pytest.param("2020-01-01T14:00:00.Z", id="empty-fraction"),
        pytest.param("2020-01-01T14:00:00.1234567890Z", id="ten-fraction-digits"),
        pytest.param("2020-01-01T14Z", id="hour-only"),
        pytest.param("20200101T140000Z", id="basic-format"),
        pytest.param("2020-W01-1", id="week-date"),
        pytest.param("2020-001", id="ordinal-date"),
        pytest.param("0000-01-01T00:00:00Z", id="year-0000"),
        pytest.param("0001-01-01T00:00:00+01:00", id="underflows-year-1"),
        pytest.param("9999-12-31T23:59:59-01:00", id="overflows-year-9999"),
        pytest.param("+2020-01-01", id="signed-year"),
        pytest.param("\u0662\u0660\u0662\u0660-01-01", id="non-ascii-digits"),
        pytest.param("2020-01-01T14:00:00Z\n", id="trailing-newline"),
        pytest.param("Sun, 06 Nov 1994 08:49:37 GMT", id="http-date"),
        pytest.param("2020-01-01T14:00:00." + "0" * MAX_DATE_LENGTH + "Z", id="too-long"),
    ],
)
def test_parse_iso8601_rejects(value: str) -> None:
    assert parse_iso8601(value) is None


@pytest.mark.parametrize(
    ("dt", "expected"),
    [
        pytest.param(EXAMPLE, "Sun, 06 Nov 1994 08:49:37 GMT", id="rfc-example"),
        pytest.param(
            datetime(2020, 1, 1, 14, 0, 0, 999999, tzinfo=UTC),
            "Wed, 01 Jan 2020 14:00:00 GMT",
            id="sub-second-truncated",
        ),
        pytest.param(
            datetime(2020, 1, 1, 16, tzinfo=timezone(timedelta(hours=2))),
            "Wed, 01 Jan 2020 14:00:00 GMT",
            id="offset-converted",
        ),
        pytest.param(datetime(2020, 1, 1, 14), "Wed, 01 Jan 2020 14:00:00 GMT", id="naive-utc"),
        pytest.param(utc(999, 3, 4, 5, 6, 7), "Mon, 04 Mar 0999 05:06:07 GMT", id="year-padded"),
    ],
)
def test_format_http_date(dt: datetime, expected: str) -> None:
    assert format_http_date(dt) == expected


@pytest.mark.parametrize(
    ("dt", "expected"),
    [
        pytest.param(utc(2020, 1, 1, 14), "2020-01-01T14:00:00.000Z", id="whole-second"),
        pytest.param(
            datetime(2020, 1, 1, 14, 0, 0, 123999, tzinfo=UTC),
            "2020-01-01T14:00:00.123Z",
            id="truncated-not-rounded",
        ),
        pytest.param(
            datetime(2020, 1, 1, 1, 0, tzinfo=timezone(timedelta(hours=2))),
            "2019-12-31T23:00:00.000Z",
            id="offset-converted",
        ),
        pytest.param(datetime(2020, 1, 1, 14), "2020-01-01T14:00:00.000Z", id="naive-utc"),
        pytest.param(utc(5, 1, 1), "0005-01-01T00:00:00.000Z", id="year-padded"),
    ],
)
def test_format_iso_millis(dt: datetime, expected: str) -> None:
    assert format_iso_millis(dt) == expected


aware_datetimes = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30), timezones=st.just(UTC)
)


@given(aware_datetimes)
def test_http_date_round_trip(dt: datetime) -> None:
    assert parse_http_date(format_http_date(dt)) == dt.replace(microsecond=0)


@given(aware_datetimes)
def test_iso_millis_round_trip(dt: datetime) -> None:
    expected = dt.replace(microsecond=dt.microsecond // 1000 * 1000)
    assert parse_iso8601(format_iso_millis(dt)) == expected
    assert parse_http_date(format_iso_millis(dt)) == expected


@given(st.text(max_size=120))
def test_parsers_never_raise(value: str) -> None:
    for parsed in (parse_http_date(value), parse_iso8601(value)):
        assert parsed is None or parsed.tzinfo is UTC


@given(
    st.from_regex(
        r"\A[A-Za-z]{3,9},? [0-9]{1,2}[ -][A-Za-z]{3}[ -][0-9]{2,5} [0-9]{2}:[0-9]{2}:[0-9]{2}"
        r"( GMT)?\Z"
    )
)
def test_near_miss_http_dates_never_raise(value: str) -> None:
    parsed = parse_http_date(value, now=NOW)
    assert parsed is None or parsed.tzinfo is UTC
