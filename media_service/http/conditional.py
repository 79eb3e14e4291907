"""Decide how to answer a GET or HEAD of stored bytes: preconditions, then byte ranges.

`evaluate` follows RFC 9110 §13.2.2 step by step and returns a `DownloadPlan`: which status to
send and which bytes. It is written by hand because Werkzeug's conditional handling answers
206 where §13.2.2 requires 304 (a Range beside a matching If-None-Match) and honours weak
If-Range validators, which §13.1.5 forbids. Its header parsers are not used either, each for
a reason tests/http/test_conditional.py pins: `parse_etags` takes an unquoted word for a strong
tag, a lower-case ``w/`` for weak (§8.8.3 makes ``W/`` case-sensitive) and ``*`` inside a list
for a tag; `parse_range_header` rejects a range-set with empty elements (§5.6.1.2 says to
ignore them), positions past 10**19 (valid; they mean "to the end") and answers ``-0`` as
ignorable rather than unsatisfiable (416).

Preconditions are evaluated only after the caller has authorised the request (§13.2.1: they
apply only when the response without them would be 2xx or 412).

Judgment calls, each explained where it is made:

* an empty (or all-commas) If-Match / If-None-Match is treated as absent;
* If-Modified-Since and If-Unmodified-Since also accept ISO 8601 (the reference API documents
  it); If-Range accepts only a real HTTP-date;
* dates are compared at one-second resolution (Last-Modified is truncated);
* a Range that cannot be parsed, names another unit, or has more than ``max_ranges`` specs is
  ignored (200), never rejected; several disjoint ranges are answered with the whole
  representation (200), never ``multipart/byteranges``;
* on a zero-length representation a non-zero suffix range is "satisfiable" (§14.1.2) yet there
  is nothing to send, so the Range is ignored (200); any other range there is 416.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

from media_service.http.dates import format_http_date, parse_http_date

__all__ = [
    "ByteRange",
    "DownloadPlan",
    "EntityTag",
    "HeaderSource",
    "Representation",
    "evaluate",
    "format_etag",
    "parse_byte_ranges",
    "parse_entity_tag",
    "parse_entity_tag_list",
    "strong_match",
    "weak_match",
]

# etagc = %x21 / %x23-7E / obs-text (RFC 9110 §8.8.3). Header values reach Python decoded as
# Latin-1, so obs-text (%x80-FF) is U+0080..U+00FF here.
_ETAGC = "\x21\x23-\x7e\x80-\xff"
_OPAQUE_TAG = re.compile(f"[{_ETAGC}]*")
_ENTITY_TAG = re.compile(f'(?P<weak>W/)?"(?P<opaque>[{_ETAGC}]*)"')
_OWS = " \t"


# --- entity tags (RFC 9110 §8.8.3) ----------------------------------------------------------


@dataclass(frozen=True)
class EntityTag:
    """One entity-tag: its opaque tag without the quotes, and whether it was marked ``W/``."""

    opaque: str
    weak: bool = False


def format_etag(tag: str) -> str:
    """Return the ETag field value for a strong opaque tag: ``abc`` -> ``"abc"``.

    Raises ``ValueError`` if ``tag`` holds a character an opaque-tag cannot (RFC 9110 §8.8.3),
    such as a double quote, a space or a control character.
    """
    if not _OPAQUE_TAG.fullmatch(tag):
        raise ValueError(f"not a valid opaque entity tag: {tag!r}")
    return f'"{tag}"'


def strong_match(a: EntityTag, b: EntityTag) -> bool:
    """Compare two entity-tags with the strong function (RFC 9110 §8.8.3.2).

    They match only if neither is weak and their opaque tags are identical.
    """
    return not a.weak and not b.weak and a.opaque == b.opaque


def weak_match(a: EntityTag, b: EntityTag) -> bool:
    """Compare two entity-tags with the weak function (RFC 9110 §8.8.3.2).

    They match if their opaque tags are identical, whether or not either is marked weak.
    """
    return a.opaque == b.opaque


def parse_entity_tag(value: str) -> EntityTag | None:
    """Parse a single entity-tag (as in If-Range), or return ``None`` if it is not exactly one.

    ``W/`` is case-sensitive (RFC 9110 §8.8.3: ``weak = %s"W/"``).
    """
    match = _ENTITY_TAG.fullmatch(value.strip(_OWS))
    if match is None:
        return None
    return EntityTag(match["opaque"], weak=match["weak"] is not None)


def parse_entity_tag_list(value: str) -> list[EntityTag]:
    """Parse ``#entity-tag`` (If-Match / If-None-Match), skipping malformed members.

    An opaque tag may itself contain commas, so the value is scanned rather than split.
    A member that is not a well-formed entity-tag (an unquoted word, a ``*`` inside a list,
    an unterminated quote) is skipped up to the next comma; it can never match anything.
    The wildcard ``*`` is not a list member; callers test for it first (see `_is_wildcard`).
    """
    tags: list[EntityTag] = []
    position, end = 0, len(value)
    while position < end:
        if value[position] in _OWS or value[position] == ",":
            position += 1
            continue
        match = _ENTITY_TAG.match(value, position)
        if match is not None and _ends_member(value, match.end()):
            tags.append(EntityTag(match["opaque"], weak=match["weak"] is not None))
            position = match.end()
            continue
        next_comma = value.find(",", position)
        position = end if next_comma < 0 else next_comma + 1
    return tags


def _ends_member(value: str, position: int) -> bool:
    """Tell whether only optional whitespace lies between ``position`` and a comma or the end."""
    rest = value[position:].lstrip(_OWS)
    return rest == "" or rest.startswith(",")


def _is_wildcard(value: str) -> bool:
    return value.strip(_OWS) == "*"


def _is_blank_list(value: str) -> bool:
    # A field value made only of empty list elements. RFC 9110 §5.6.1.2 has recipients ignore
    # empty elements; we go one step further and treat the whole field as not sent, so that a
    # client emitting "If-Match:" with nothing after it gets its download instead of a 412.
    return value.strip(_OWS + ",") == ""


# --- byte ranges (RFC 9110 §14.1) -----------------------------------------------------------

# Positions longer than this many significant digits are larger than any representation we
# could store; they are saturated rather than converted, so int() never meets a number that
# sys.set_int_max_str_digits() would refuse.
_MAX_POSITION_DIGITS = 30
_SATURATED_POSITION = int("1" + "0" * _MAX_POSITION_DIGITS)  # 10**30, typed as int
_RANGE_SPEC = re.compile(r"(?P<first>[0-9]*)-(?P<last>[0-9]*)")


@dataclass(frozen=True)
class ByteRange:
    """An inclusive byte range ``first..last`` within a representation, as in Content-Range."""

    first: int
    last: int

    @property
    def length(self) -> int:
        """Return the number of bytes the range covers."""
        return self.last - self.first + 1


def parse_byte_ranges(value: str, size: int, *, max_ranges: int = 16) -> list[ByteRange] | None:
    """Resolve a Range field value against a representation of ``size`` bytes.

    Returns ``None`` when the field must or may be ignored (the response is then a plain 200):

    * the range unit is not ``bytes`` (RFC 9110 §14.2: a server MUST ignore a Range with a unit
      it does not support; units are case-insensitive, §14.1);
    * the value is not a valid ``ranges-specifier`` — no ``=``, an empty range-set, a spec that
      is not ``first-last`` / ``first-`` / ``-suffix``, whitespace inside a spec, or ``last``
      below ``first`` (§14.1.1: such a byte-range-spec is invalid; §14.2 lets a server ignore an
      invalid ranges-specifier);
    * it has more than ``max_ranges`` specs (§14.2 lets a server ignore requests for many
      ranges, an indication of a broken client or a denial-of-service attempt);
    * the representation is empty and a suffix range with a non-zero length was asked for:
      §14.1.2 calls that satisfiable, but there is no byte to send and §14.2 allows ignoring a
      Range when the representation has no content.

    Returns ``[]`` when the set is unsatisfiable (§14.1.2: no int-range starts before ``size``
    and no suffix-range has a non-zero length) — the caller answers 416.

    Otherwise returns the satisfiable ranges, clamped to the representation (§14.1.2: a
    ``last`` at or past the end, or a suffix longer than the representation, means "to the
    end"), sorted and with overlapping or adjacent ranges coalesced (§15.3.7.2 allows it).
    """
    if size < 0 or max_ranges < 1:
        return None
    unit, equals, range_set = value.strip(_OWS).partition("=")
    if not equals or unit.lower() != "bytes":
        return None
    # range-set = 1#range-spec: empty list elements are ignored (§5.6.1.2), others counted.
    specs = [element.strip(_OWS) for element in range_set.split(",")]
    specs = [spec for spec in specs if spec]
    if not specs or len(specs) > max_ranges:
        return None

    ranges: list[ByteRange] = []
    nonzero_suffix = False
    for spec in specs:
        match = _RANGE_SPEC.fullmatch(spec)
        if match is None:
            return None
        first_digits, last_digits = match["first"], match["last"]
        if first_digits:
            if last_digits and _digits_key(last_digits) < _digits_key(first_digits):
                return None  # §14.1.1: last-pos less than first-pos is invalid
            first = _position(first_digits)
            if first >= size:
                continue  # starts past the end: unsatisfiable, dropped
            last = size - 1 if not last_digits else min(_position(last_digits), size - 1)
            ranges.append(ByteRange(first, last))
        elif last_digits:
            suffix_length = _position(last_digits)
            if suffix_length == 0:
                continue  # "-0" asks for no bytes: unsatisfiable, dropped
            nonzero_suffix = True
            if size > 0:
                ranges.append(ByteRange(max(0, size - suffix_length), size - 1))
        else:
            return None  # a lone "-"

    if size == 0 and nonzero_suffix:
        return None
    return _coalesce(ranges)


def _digits_key(digits: str) -> tuple[int, str]:
    """Order decimal digit strings by value without converting them."""
    significant = digits.lstrip("0")
    return len(significant), significant


def _position(digits: str) -> int:
    significant = digits.lstrip("0")
    if len(significant) > _MAX_POSITION_DIGITS:
        return _SATURATED_POSITION
    return int(significant or "0")


def _coalesce(ranges: list[ByteRange]) -> list[ByteRange]:
    merged: list[ByteRange] = []
    for current in sorted(ranges, key=lambda r: r.first):
        if merged and current.first <= merged[-1].last + 1:
            previous = merged[-1]
            merged[-1] = ByteRange(previous.first, max(previous.last, current.last))
        else:
            merged.append(current)
    return merged


# --- the decision (RFC 9110 §13.2.2) --------------------------------------------------------


class HeaderSource(Protocol):
    """Request headers: a ``dict``, any ``Mapping[str, str]`` or Werkzeug's ``Headers``."""

    def get(self, key: str, /) -> str | None:
        """Return the value of header ``key``, or ``None``."""
        ...

    def items(self) -> Iterable[tuple[str, str]]:
        """Return every (name, value) pair."""
        ...


@dataclass(frozen=True)
class Representation:
    """The validators and size of the stored bytes a download would send.

    ``etag`` is the bare opaque tag (no quotes, always strong); ``last_modified`` may carry
    sub-second precision (a naive value is read as UTC); ``size`` is in bytes.
    """

    etag: str
    last_modified: datetime
    size: int

    def __post_init__(self) -> None:
        if self.size < 0:
            raise ValueError(f"size must not be negative: {self.size}")
        format_etag(self.etag)  # raises ValueError for a tag that could not be sent

    @property
    def etag_header(self) -> str:
        """Return the ETag field value, e.g. ``"0123abcd"``."""
        return format_etag(self.etag)

    @property
    def last_modified_header(self) -> str:
        """Return the Last-Modified field value (IMF-fixdate, whole seconds)."""
        return format_http_date(self.last_modified)

    @property
    def last_modified_seconds(self) -> datetime:
        """Return ``last_modified`` in UTC truncated to the second, as Last-Modified sends it."""
        return _whole_seconds(self.last_modified)


@dataclass(frozen=True)
class DownloadPlan:
    """How to answer: the status and, for 200/206, which bytes to send.

    ``start``/``length`` select the body: the whole representation for 200, the range for 206,
    nothing (0/0) for 304, 412 and 416. For HEAD the caller sends the headers a GET would have
    (``length`` is the Content-Length) and no body. ``content_range`` is ``"bytes a-b/size"``
    for 206 and ``"bytes */size"`` for 416, otherwise ``None``.
    """

    status: int
    start: int = 0
    length: int = 0
    content_range: str | None = None

    @property
    def starts_at_zero_with_body(self) -> bool:
        """Tell whether the plan sends content from byte 0: a 200, or a 206 starting at 0.

        This is the download-counting rule of SPEC §4.4 except for the method, which the
        caller still checks (HEAD never counts).
        """
        return self.status in (200, 206) and self.start == 0


def evaluate(
    method: str,
    headers: HeaderSource,
    rep: Representation,
    *,
    max_ranges: int = 16,
) -> DownloadPlan:
    """Evaluate the preconditions and Range of a request for ``rep`` (RFC 9110 §13.2.2).

    ``method`` is case-sensitive (§9.1). ``headers`` may be a dict, any mapping or Werkzeug's
    ``Headers``; names are looked up case-insensitively. Never raises for any header values.

    1. If-Match present: false -> 412.
    2. Else If-Unmodified-Since present and valid: false -> 412.
    3. If-None-Match present: false -> 304 for GET/HEAD, 412 for other methods.
    4. Else, for GET/HEAD, If-Modified-Since present and valid: false -> 304.
    5. GET with Range (and If-Range, if sent, true) -> 206 or 416; otherwise 200.
    """
    full = DownloadPlan(200, 0, rep.size)

    # Step 1 — §13.1.1 If-Match: strong comparison; "*" is true since the representation
    # exists. Every origin-server 412 is allowed here: nothing changes state on a download.
    if_match = _header(headers, "If-Match")
    if if_match is not None and not _is_blank_list(if_match):
        if not _if_match_holds(if_match, rep):
            return DownloadPlan(412)
    else:
        # Step 2 — §13.1.4 If-Unmodified-Since, only without If-Match; an invalid date (or a
        # list of dates, which cannot parse as one) is ignored.
        since = _header_date(headers, "If-Unmodified-Since")
        if since is not None and rep.last_modified_seconds > _whole_seconds(since):
            return DownloadPlan(412)

    # Step 3 — §13.1.2 If-None-Match: weak comparison; the condition is false when a listed
    # tag matches (or for "*", since the representation exists).
    if_none_match = _header(headers, "If-None-Match")
    if if_none_match is not None and not _is_blank_list(if_none_match):
        if _if_none_match_matches(if_none_match, rep):
            return DownloadPlan(304 if method in ("GET", "HEAD") else 412)
    elif method in ("GET", "HEAD"):
        # Step 4 — §13.1.3 If-Modified-Since: only for GET/HEAD and only without If-None-Match;
        # ignored when not a valid date or when a list. Not modified means Last-Modified is
        # earlier than or equal to the date. RFC 9110 sets no rule for dates in the future, so
        # none is applied (RFC 2616 §14.25 called them invalid; RFC 9110 does not).
        since = _header_date(headers, "If-Modified-Since")
        if since is not None and rep.last_modified_seconds <= _whole_seconds(since):
            return DownloadPlan(304)

    # Step 5 — §14.2: range handling is defined only for GET; HEAD and every other method
    # ignore Range (and with it If-Range, §13.1.5).
    if method != "GET":
        return full
    range_value = _header(headers, "Range")
    if range_value is None:
        return full  # §13.1.5: If-Range without Range is ignored
    if_range = _header(headers, "If-Range")
    if if_range is not None and not _if_range_holds(if_range, rep):
        return full  # §13.1.5: a false If-Range means ignore Range and send 200

    ranges = parse_byte_ranges(range_value, rep.size, max_ranges=max_ranges)
    if ranges is None:
        return full
    if not ranges:
        # §15.5.17: 416 carries Content-Range with the complete length.
        return DownloadPlan(416, content_range=f"bytes */{rep.size}")
    if len(ranges) > 1:
        # §14.2 lets a server ignore Range; answering disjoint ranges with the whole
        # representation instead of multipart/byteranges bounds the work per request.
        return full
    (only,) = ranges
    return DownloadPlan(
        206,
        start=only.first,
        length=only.length,
        content_range=f"bytes {only.first}-{only.last}/{rep.size}",
    )


def _if_match_holds(value: str, rep: Representation) -> bool:
    if _is_wildcard(value):
        return True
    current = EntityTag(rep.etag)
    return any(strong_match(tag, current) for tag in parse_entity_tag_list(value))


def _if_none_match_matches(value: str, rep: Representation) -> bool:
    if _is_wildcard(value):
        return True
    current = EntityTag(rep.etag)
    return any(weak_match(tag, current) for tag in parse_entity_tag_list(value))


def _if_range_holds(value: str, rep: Representation) -> bool:
    """Evaluate If-Range (RFC 9110 §13.1.5).

    An entity-tag holds only on a strong match, so a weak tag never holds. An HTTP-date holds
    only if it equals Last-Modified exactly, to the second; ISO 8601 is not an HTTP-date here.
    We treat our Last-Modified as a strong validator (§8.8.2.2) because stored content changes
    only by replacement, which also changes the ETag clients should prefer. Anything else
    (a list, garbage) is false, which safely degrades to a full 200.
    """
    text = value.strip(_OWS)
    if text.startswith(('"', "W/")):
        tag = parse_entity_tag(text)
        return tag is not None and strong_match(tag, EntityTag(rep.etag))
    date = parse_http_date(text, iso8601=False)
    return date is not None and date == rep.last_modified_seconds


def _header(headers: HeaderSource, name: str) -> str | None:
    """Return a header's value whatever the case of the mapping's keys, or ``None``."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, candidate in headers.items():
            if isinstance(key, str) and key.lower() == lowered:
                value = candidate
                break
    return value if isinstance(value, str) else None


def _header_date(headers: HeaderSource, name: str) -> datetime | None:
    value = _header(headers, name)
    return None if value is None else parse_http_date(value)


def _whole_seconds(dt: datetime) -> datetime:
    utc = dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)
    return utc.replace(microsecond=0)
