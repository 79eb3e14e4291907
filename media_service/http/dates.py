"""Parse and format the timestamps the API exchanges: HTTP-date (RFC 9110 §5.6.7) and ISO 8601.

Every parser here is total: it returns a timezone-aware UTC ``datetime`` or ``None`` and never
raises, whatever it is given, because its input comes straight from request headers and query
strings. Formatting never depends on the process locale (``strftime`` would).

HTTP-dates are formatted by Werkzeug but parsed here: ``werkzeug.http.parse_date`` (that is,
``email.utils``) reads an RFC 850 two-digit year with a fixed 1950–2049 split where RFC 9110
§5.6.7 asks for a 50-year sliding window ("-70" is 2070 today, not 1970), refuses the leap
second RFC 9110 allows (":60"), and accepts numeric zones and misspelt weekdays that HTTP-dates
cannot have. tests/http/test_dates.py pins each of those.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta, timezone

from werkzeug.http import http_date

__all__ = [
    "MAX_DATE_LENGTH",
    "format_http_date",
    "format_iso_millis",
    "parse_http_date",
    "parse_iso8601",
]

#: Longer inputs are rejected before any parsing; the longest valid form (RFC 850 with
#: "Wednesday") is 33 characters and an ISO 8601 timestamp with nanoseconds about 35.
MAX_DATE_LENGTH = 100

_DAY_NAMES = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_LONG_DAY_NAMES = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")
_MONTH_NAMES = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUMBERS = {name.lower(): number for number, name in enumerate(_MONTH_NAMES, start=1)}

# Names are matched case-insensitively (ASCII only): RFC 9110 §5.6.7 asks recipients to be
# robust when parsing timestamps. The weekday is checked for spelling but not against the
# date, for the same reason; it carries no information the date does not.
_FLAGS = re.ASCII | re.IGNORECASE
_TIME = r"(?P<hour>[0-9]{2}):(?P<minute>[0-9]{2}):(?P<second>[0-9]{2})"
_MONTH = r"(?P<month>[a-z]{3})"
_SHORT_DAY = "(?:" + "|".join(_DAY_NAMES) + ")"
_LONG_DAY = "(?:" + "|".join(_LONG_DAY_NAMES) + ")"

# IMF-fixdate: "Sun, 06 Nov 1994 08:49:37 GMT"
_IMF_FIXDATE = re.compile(
    rf"{_SHORT_DAY}, (?P<day>[0-9]{{2}}) {_MONTH} (?P<year>[0-9]{{4}}) {_TIME} GMT", _FLAGS
)
# obsolete RFC 850 form: "Sunday, 06-Nov-94 08:49:37 GMT"
_RFC850_DATE = re.compile(
    rf"{_LONG_DAY}, (?P<day>[0-9]{{2}})-{_MONTH}-(?P<year>[0-9]{{2}}) {_TIME} GMT", _FLAGS
)
# ANSI C asctime() form: "Sun Nov  6 08:49:37 1994" (day is 2DIGIT or SP DIGIT)
_ASCTIME_DATE = re.compile(
    rf"{_SHORT_DAY} {_MONTH} (?P<day>[0-9]{{2}}| [0-9]) {_TIME} (?P<year>[0-9]{{4}})", _FLAGS
)
# ISO 8601 extended format, calendar dates only: a date, or a date and time with optional
# seconds, fraction (up to nanoseconds; truncated to microseconds) and UTC offset.
_ISO_8601 = re.compile(
    r"(?P<year>[0-9]{4})-(?P<month>[0-9]{2})-(?P<day>[0-9]{2})"
    r"(?:[Tt ](?P<hour>[0-9]{2}):(?P<minute>[0-9]{2})"
    r"(?::(?P<second>[0-9]{2})(?:[.,](?P<fraction>[0-9]{1,9}))?)?"
    r"(?P<offset>[Zz]|[+-](?P<off_hours>[0-9]{2})(?::?(?P<off_minutes>[0-9]{2}))?)?)?",
    re.ASCII,
)


def parse_http_date(
    value: str, *, iso8601: bool = True, now: datetime | None = None
) -> datetime | None:
    """Return the instant an HTTP-date names, in UTC, or ``None`` if it is not one.

    Accepts the three forms RFC 9110 §5.6.7 obliges a recipient to parse — IMF-fixdate, the
    obsolete RFC 850 form and asctime — and, unless ``iso8601`` is false, also ISO 8601 (see
    `parse_iso8601`), which the reference API documents for ``If-Modified-Since``.

    ``now`` anchors the RFC 850 two-digit-year rule and defaults to the current time.
    Sub-second precision survives only in ISO 8601 input; HTTP-dates have whole seconds.
    """
    if not isinstance(value, str) or len(value) > MAX_DATE_LENGTH:
        return None
    text = value.strip(" \t")
    if match := _IMF_FIXDATE.fullmatch(text):
        return _from_fields(match, int(match["year"]))
    if match := _RFC850_DATE.fullmatch(text):
        return _from_rfc850(match, now)
    if match := _ASCTIME_DATE.fullmatch(text):
        return _from_fields(match, int(match["year"]))
    if iso8601:
        return parse_iso8601(text)
    return None


def parse_iso8601(value: str) -> datetime | None:
    """Return the instant an ISO 8601 timestamp names, in UTC, or ``None`` if it is not one.

    Accepted: ``2020-01-01``, ``2020-01-01T14:00``, ``2020-01-01T14:00:00``, with an optional
    fraction (``.000``, up to nine digits) and an optional offset (``Z``, ``+02:00``, ``+0200``,
    ``+02``). A timestamp without an offset is taken to be UTC. Week dates, ordinal dates and
    the basic (separator-less) format are not accepted.
    """
    if not isinstance(value, str) or len(value) > MAX_DATE_LENGTH:
        return None
    match = _ISO_8601.fullmatch(value.strip(" \t"))
    if match is None:
        return None
    offset = timedelta(0)
    if match["off_hours"] is not None:
        hours, minutes = int(match["off_hours"]), int(match["off_minutes"] or 0)
        if hours > 23 or minutes > 59:
            return None
        offset = timedelta(hours=hours, minutes=minutes)
        if match["offset"].startswith("-"):
            offset = -offset
    fraction = match["fraction"] or ""
    microsecond = int(fraction[:6].ljust(6, "0"))
    try:
        local = datetime(
            int(match["year"]),
            int(match["month"]),
            int(match["day"]),
            int(match["hour"] or 0),
            int(match["minute"] or 0),
            _clamp_leap_second(int(match["second"] or 0)),
            microsecond,
            tzinfo=timezone(offset),
        )
        return local.astimezone(UTC)
    except (ValueError, OverflowError):
        # Day 31 of a 30-day month, hour 24, or an offset that leaves year 1..9999.
        return None


@functools.lru_cache(maxsize=1024)  # each download's Last-Modified: the same few items' dates
def format_http_date(dt: datetime) -> str:
    """Return ``dt`` as an IMF-fixdate (RFC 9110 §5.6.7), truncated to whole seconds.

    A naive ``dt`` is taken to be UTC.
    """
    return http_date(_as_utc(dt))


def format_iso_millis(dt: datetime) -> str:
    """Return ``dt`` as ISO 8601 UTC with milliseconds, e.g. ``2020-01-01T14:00:00.000Z``.

    Sub-millisecond digits are truncated, never rounded, so the text never names a later
    instant than ``dt``. A naive ``dt`` is taken to be UTC.
    """
    utc = _as_utc(dt)
    return (
        f"{utc.year:04d}-{utc.month:02d}-{utc.day:02d}T"
        f"{utc.hour:02d}:{utc.minute:02d}:{utc.second:02d}.{utc.microsecond // 1000:03d}Z"
    )


def _as_utc(dt: datetime) -> datetime:
    if dt.tzinfo is None or dt.utcoffset() is None:
        return dt.replace(tzinfo=UTC)
    return dt.astimezone(UTC)


def _clamp_leap_second(second: int) -> int:
    # RFC 9110 §5.6.7 allows second 60 (a leap second); datetime cannot hold it, and reading
    # it as :59 keeps the instant within the same second it names.
    return 59 if second == 60 else second


def _from_fields(match: re.Match[str], year: int) -> datetime | None:
    month = _MONTH_NUMBERS.get(match["month"].lower())
    if month is None:
        return None
    try:
        return datetime(
            year,
            month,
            int(match["day"]),
            int(match["hour"]),
            int(match["minute"]),
            _clamp_leap_second(int(match["second"])),
            tzinfo=UTC,
        )
    except ValueError:
        # Day 0, 30 February, hour 24, minute 61, year 0000, ...
        return None


def _from_rfc850(match: re.Match[str], now: datetime | None) -> datetime | None:
    """Resolve the two-digit year of an RFC 850 date.

    RFC 9110 §5.6.7: a timestamp that "appears to be more than 50 years in the future" means
    the most recent past year with the same last two digits. Implemented as a sliding window:
    the latest century that does not put the timestamp more than 50 years after ``now``.
    """
    current = _as_utc(now) if now is not None else datetime.now(UTC)
    horizon = _add_years(current, 50)
    two_digits = int(match["year"])
    century = current.year - current.year % 100
    for candidate_century in (century + 100, century, century - 100):
        year = candidate_century + two_digits
        if not 1 <= year <= 9999:
            continue
        parsed = _from_fields(match, year)
        if parsed is not None and parsed <= horizon:
            return parsed
    return None


def _add_years(dt: datetime, years: int) -> datetime:
    year = min(dt.year + years, 9999)
    try:
        return dt.replace(year=year)
    except ValueError:  # 29 February in a non-leap year
        return dt.replace(year=year, day=28)
