"""Preconditions (RFC 9110 §13), byte ranges (§14) and entity tags (§8.8.3), as tables."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from werkzeug.datastructures import Headers

from media_service.http.conditional import (
    ByteRange,
    DownloadPlan,
    EntityTag,
    Representation,
    evaluate,
    format_etag,
    parse_byte_ranges,
    parse_entity_tag,
    parse_entity_tag_list,
    strong_match,
    weak_match,
)
from media_service.http.dates import format_http_date

TAG = "0123456789abcdef0123456789abcdef"
ETAG = f'"{TAG}"'
OTHER = '"ffffffffffffffffffffffffffffffff"'
SIZE = 10_000  # the representation length used by the examples of RFC 9110 §14.1.2
# Stored with milliseconds; Last-Modified (and every comparison) has whole seconds.
MODIFIED = datetime(2020, 1, 1, 14, 0, 0, 500_000, tzinfo=UTC)
REP = Representation(etag=TAG, last_modified=MODIFIED, size=SIZE)
EMPTY = Representation(etag="d41d8cd98f00b204e9800998ecf8427e", last_modified=MODIFIED, size=0)

LAST_MODIFIED = "Wed, 01 Jan 2020 14:00:00 GMT"
LAST_MODIFIED_RFC850 = "Wednesday, 01-Jan-20 14:00:00 GMT"
LAST_MODIFIED_ASCTIME = "Wed Jan  1 14:00:00 2020"
SECOND_BEFORE = "Wed, 01 Jan 2020 13:59:59 GMT"
SECOND_AFTER = "Wed, 01 Jan 2020 14:00:01 GMT"
YEAR_2100 = "Fri, 01 Jan 2100 00:00:00 GMT"

FULL = DownloadPlan(200, 0, SIZE)
NOT_MODIFIED = DownloadPlan(304)
FAILED = DownloadPlan(412)


def partial(first: int, last: int, size: int = SIZE) -> DownloadPlan:
    return DownloadPlan(206, first, last - first + 1, f"bytes {first}-{last}/{size}")


def unsatisfiable(size: int = SIZE) -> DownloadPlan:
    return DownloadPlan(416, content_range=f"bytes */{size}")


# --- entity tags: RFC 9110 §8.8.3 ----------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "strong", "weak"),
    [
        # The comparison table of RFC 9110 §8.8.3.2, row by row.
        pytest.param(EntityTag("1", weak=True), EntityTag("1", weak=True), False, True, id="W1-W1"),
        pytest.param(
            EntityTag("1", weak=True), EntityTag("2", weak=True), False, False, id="W1-W2"
        ),
        pytest.param(EntityTag("1", weak=True), EntityTag("1"), False, True, id="W1-1"),
        pytest.param(EntityTag("1"), EntityTag("1"), True, True, id="1-1"),
        pytest.param(EntityTag("1"), EntityTag("2"), False, False, id="1-2"),
        pytest.param(EntityTag(""), EntityTag(""), True, True, id="empty-tags"),
        pytest.param(EntityTag("a"), EntityTag("A"), False, False, id="case-sensitive"),
    ],
)
def test_comparison_functions(a: EntityTag, b: EntityTag, strong: bool, weak: bool) -> None:
    assert strong_match(a, b) is strong
    assert strong_match(b, a) is strong
    assert weak_match(a, b) is weak
    assert weak_match(b, a) is weak


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param('"xyzzy"', [EntityTag("xyzzy")], id="strong"),
        pytest.param('W/"xyzzy"', [EntityTag("xyzzy", weak=True)], id="weak"),
        pytest.param('""', [EntityTag("")], id="empty-opaque-tag"),
        pytest.param(
            '"xyzzy", "r2d2xxxx", "c3piozzzz"',
            [EntityTag("xyzzy"), EntityTag("r2d2xxxx"), EntityTag("c3piozzzz")],
            id="rfc-list",
        ),
        pytest.param(
            ' W/"a" ,"b",, ,\t"c" ',
            [EntityTag("a", weak=True), EntityTag("b"), EntityTag("c")],
            id="ows-and-empty-elements",
        ),
        pytest.param('"a,b"', [EntityTag("a,b")], id="comma-inside-tag"),
        pytest.param('"a,b", "c"', [EntityTag("a,b"), EntityTag("c")], id="comma-inside-list"),
        pytest.param('"\x80\xff"', [EntityTag("\x80\xff")], id="obs-text"),
        pytest.param('unquoted, "b"', [EntityTag("b")], id="unquoted-member-skipped"),
        pytest.param('"a"junk, "b"', [EntityTag("b")], id="trailing-junk-skipped"),
        pytest.param('*, "b"', [EntityTag("b")], id="star-inside-list-skipped"),
        pytest.param('w/"a"', [], id="lowercase-w-is-malformed"),
        pytest.param('W/ "a"', [], id="space-after-W"),
        pytest.param('"a" "b"', [], id="missing-comma"),
        pytest.param('"unterminated', [], id="unterminated"),
        pytest.param('"un, "ok"', [EntityTag("ok")], id="unterminated-skipped-to-comma"),
        pytest.param('"with space"', [], id="space-in-tag"),
        pytest.param('"a\x00b"', [], id="control-in-tag"),
        pytest.param('"\u20ac"', [], id="beyond-latin-1"),
        pytest.param("", [], id="empty"),
        pytest.param(",,,", [], id="only-commas"),
        pytest.param("*", [], id="bare-star-is-not-a-tag"),
    ],
)
def test_parse_entity_tag_list(value: str, expected: list[EntityTag]) -> None:
    assert parse_entity_tag_list(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param('"xyzzy"', EntityTag("xyzzy"), id="strong"),
        pytest.param('W/"xyzzy"', EntityTag("xyzzy", weak=True), id="weak"),
        pytest.param(' "xyzzy" ', EntityTag("xyzzy"), id="ows"),
        pytest.param('"a", "b"', None, id="list"),
        pytest.param("xyzzy", None, id="unquoted"),
        pytest.param("*", None, id="star"),
        pytest.param("", None, id="empty"),
    ],
)
def test_parse_entity_tag(value: str, expected: EntityTag | None) -> None:
    assert parse_entity_tag(value) == expected


def test_format_etag() -> None:
    assert format_etag(TAG) == ETAG
    assert format_etag("") == '""'


@pytest.mark.parametrize("tag", ['a"b', "a b", "a\r\nb", "a\x00", "\u20ac"], ids=repr)
def test_format_etag_refuses_unsendable_tags(tag: str) -> None:
    with pytest.raises(ValueError):
        format_etag(tag)


# --- the representation and the plan ------------------------------------------------------


def test_representation_headers() -> None:
    assert REP.etag_header == ETAG
    assert REP.last_modified_header == LAST_MODIFIED
    assert REP.last_modified_seconds == datetime(2020, 1, 1, 14, tzinfo=UTC)


def test_representation_accepts_naive_last_modified_as_utc() -> None:
    rep = Representation(TAG, datetime(2020, 1, 1, 14, 0, 0, 700_000), SIZE)
    assert rep.last_modified_header == LAST_MODIFIED
    assert evaluate("GET", {"If-Modified-Since": LAST_MODIFIED}, rep) == NOT_MODIFIED


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"size": -1}, "negative", id="negative-size"),
        pytest.param({"etag": 'a"b'}, "opaque", id="quote-in-etag"),
    ],
)
def test_representation_validates(kwargs: dict[str, object], message: str) -> None:
    fields: dict[str, object] = {"etag": TAG, "last_modified": MODIFIED, "size": SIZE}
    fields.update(kwargs)
    with pytest.raises(ValueError, match=message):
        Representation(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("plan", "expected"),
    [
        pytest.param(FULL, True, id="200"),
        pytest.param(DownloadPlan(200, 0, 0), True, id="200-empty"),
        pytest.param(partial(0, 9), True, id="206-from-0"),
        pytest.param(partial(0, SIZE - 1), True, id="206-everything"),
        pytest.param(partial(500, 999), False, id="206-from-500"),
        pytest.param(NOT_MODIFIED, False, id="304"),
        pytest.param(FAILED, False, id="412"),
        pytest.param(unsatisfiable(), False, id="416"),
    ],
)
def test_starts_at_zero_with_body(plan: DownloadPlan, expected: bool) -> None:
    assert plan.starts_at_zero_with_body is expected


# --- preconditions: RFC 9110 §13.1 and the order of §13.2.2 --------------------------------

GET_AND_HEAD = pytest.mark.parametrize("method", ["GET", "HEAD"])


@GET_AND_HEAD
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        # §13.1.2: weak comparison; "*" matches any current representation.
        pytest.param({"If-None-Match": ETAG}, NOT_MODIFIED, id="inm-exact"),
        pytest.param({"If-None-Match": f"W/{ETAG}"}, NOT_MODIFIED, id="inm-weak"),
        pytest.param({"If-None-Match": f"{OTHER}, {ETAG}"}, NOT_MODIFIED, id="inm-list"),
        pytest.param({"If-None-Match": f'W/"x", W/{ETAG}'}, NOT_MODIFIED, id="inm-weak-list"),
        pytest.param({"If-None-Match": "*"}, NOT_MODIFIED, id="inm-star"),
        pytest.param({"If-None-Match": " * "}, NOT_MODIFIED, id="inm-star-ows"),
        pytest.param({"If-None-Match": OTHER}, FULL, id="inm-other"),
        pytest.param({"If-None-Match": f"W/{OTHER}"}, FULL, id="inm-weak-other"),
        pytest.param({"If-None-Match": TAG}, FULL, id="inm-unquoted-never-matches"),
        pytest.param({"If-None-Match": f"{TAG}, {OTHER}"}, FULL, id="inm-malformed-list"),
        # §13.1.3: If-Modified-Since is ignored whenever If-None-Match is present.
        pytest.param(
            {"If-None-Match": OTHER, "If-Modified-Since": YEAR_2100},
            FULL,
            id="inm-other-ims-future",
        ),
        pytest.param(
            {"If-None-Match": OTHER, "If-Modified-Since": LAST_MODIFIED},
            FULL,
            id="inm-other-ims-equal",
        ),
        pytest.param(
            {"If-None-Match": ETAG, "If-Modified-Since": SECOND_BEFORE},
            NOT_MODIFIED,
            id="inm-match-ims-modified",
        ),
        # An empty If-None-Match is treated as absent (judgment call), so IMS applies.
        pytest.param(
            {"If-None-Match": "", "If-Modified-Since": LAST_MODIFIED},
            NOT_MODIFIED,
            id="inm-empty-is-absent",
        ),
        pytest.param({"If-None-Match": " , "}, FULL, id="inm-only-commas"),
        # §13.1.3 If-Modified-Since: not modified when Last-Modified <= date, in each form.
        pytest.param({"If-Modified-Since": LAST_MODIFIED}, NOT_MODIFIED, id="ims-imf-equal"),
        pytest.param({"If-Modified-Since": SECOND_AFTER}, NOT_MODIFIED, id="ims-imf-later"),
        pytest.param({"If-Modified-Since": SECOND_BEFORE}, FULL, id="ims-imf-earlier"),
        pytest.param(
            {"If-Modified-Since": LAST_MODIFIED_RFC850}, NOT_MODIFIED, id="ims-rfc850-equal"
        ),
        pytest.param(
            {"If-Modified-Since": "Wednesday, 01-Jan-20 13:59:59 GMT"},
            FULL,
            id="ims-rfc850-earlier",
        ),
        pytest.param(
            {"If-Modified-Since": LAST_MODIFIED_ASCTIME}, NOT_MODIFIED, id="ims-asctime-equal"
        ),
        pytest.param(
            {"If-Modified-Since": "Wed Jan  1 13:59:59 2020"}, FULL, id="ims-asctime-earlier"
        ),
        pytest.param(
            {"If-Modified-Since": "2020-01-01T14:00:00Z"}, NOT_MODIFIED, id="ims-iso-equal"
        ),
        pytest.param(
            {"If-Modified-Since": "2020-01-01T14:00:00.000Z"},
            NOT_MODIFIED,
            id="ims-iso-millis-equal",
        ),
        pytest.param(
            {"If-Modified-Since": "2020-01-01T16:00:00+02:00"},
            NOT_MODIFIED,
            id="ims-iso-offset-equal",
        ),
        pytest.param(
            {"If-Modified-Since": "2020-01-01T14:00:00"}, NOT_MODIFIED, id="ims-iso-naive-equal"
        ),
        pytest.param({"If-Modified-Since": "2020-01-01T13:59:59.999Z"}, FULL, id="ims-iso-earlier"),
        pytest.param(
            {"If-Modified-Since": "2020-01-01T15:00:00+02:00"}, FULL, id="ims-iso-offset-earlier"
        ),
        pytest.param(
            {"If-Modified-Since": "2020-01-01T14:00:00.400Z"},
            NOT_MODIFIED,
            id="ims-same-second-before-stored-millis",
        ),
        # RFC 9110 sets no rule for future dates (RFC 2616's was dropped): not modified.
        pytest.param({"If-Modified-Since": YEAR_2100}, NOT_MODIFIED, id="ims-future"),
        # Invalid dates and lists are ignored.
        pytest.param({"If-Modified-Since": "garbage"}, FULL, id="ims-garbage"),
        pytest.param({"If-Modified-Since": ""}, FULL, id="ims-empty"),
        pytest.param({"If-Modified-Since": "0"}, FULL, id="ims-zero"),
        pytest.param(
            {"If-Modified-Since": "Wed, 31 Feb 2020 14:00:00 GMT"}, FULL, id="ims-31-february"
        ),
        pytest.param(
            {"If-Modified-Since": f"{LAST_MODIFIED}, {LAST_MODIFIED}"}, FULL, id="ims-list"
        ),
        pytest.param({"If-Modified-Since": "9" * 10_000}, FULL, id="ims-huge"),
        # §13.1.1 If-Match: strong comparison.
        pytest.param({"If-Match": ETAG}, FULL, id="im-exact"),
        pytest.param({"If-Match": f"{OTHER}, {ETAG}"}, FULL, id="im-list"),
        pytest.param({"If-Match": "*"}, FULL, id="im-star"),
        pytest.param({"If-Match": f"W/{ETAG}"}, FAILED, id="im-weak-never-matches"),
        pytest.param({"If-Match": OTHER}, FAILED, id="im-other"),
        pytest.param({"If-Match": "garbage"}, FAILED, id="im-garbage"),
        pytest.param({"If-Match": ""}, FULL, id="im-empty-is-absent"),
        # §13.1.4 If-Unmodified-Since: 412 when modified after the date; ignored if invalid.
        pytest.param({"If-Unmodified-Since": LAST_MODIFIED}, FULL, id="ius-equal"),
        pytest.param({"If-Unmodified-Since": SECOND_AFTER}, FULL, id="ius-later"),
        pytest.param({"If-Unmodified-Since": SECOND_BEFORE}, FAILED, id="ius-earlier"),
        pytest.param({"If-Unmodified-Since": "2020-01-01T14:00:00Z"}, FULL, id="ius-iso-equal"),
        pytest.param({"If-Unmodified-Since": "2020-01-01T13:00:00Z"}, FAILED, id="ius-iso-earlier"),
        pytest.param({"If-Unmodified-Since": "garbage"}, FULL, id="ius-garbage"),
        pytest.param(
            {"If-Unmodified-Since": f"{SECOND_BEFORE}, {SECOND_BEFORE}"}, FULL, id="ius-list"
        ),
        # §13.2.2 order.
        pytest.param({"If-Match": OTHER, "If-None-Match": ETAG}, FAILED, id="order-im-before-inm"),
        pytest.param(
            {"If-Match": OTHER, "If-Modified-Since": LAST_MODIFIED},
            FAILED,
            id="order-im-before-ims",
        ),
        pytest.param(
            {"If-Match": ETAG, "If-None-Match": ETAG}, NOT_MODIFIED, id="order-im-true-then-inm"
        ),
        pytest.param(
            {"If-Match": ETAG, "If-Unmodified-Since": SECOND_BEFORE},
            FULL,
            id="order-ius-ignored-with-im",
        ),
        pytest.param(
            {"If-Match": "", "If-Unmodified-Since": SECOND_BEFORE},
            FAILED,
            id="order-ius-applies-with-empty-im",
        ),
        pytest.param(
            {"If-Unmodified-Since": SECOND_BEFORE, "If-None-Match": ETAG},
            FAILED,
            id="order-ius-before-inm",
        ),
        pytest.param(
            {"If-Unmodified-Since": LAST_MODIFIED, "If-None-Match": ETAG},
            NOT_MODIFIED,
            id="order-ius-true-then-inm",
        ),
        pytest.param(
            {"If-Unmodified-Since": SECOND_BEFORE, "If-Modified-Since": LAST_MODIFIED},
            FAILED,
            id="order-ius-before-ims",
        ),
        # 304 wins over Range (§13.2.2 step 3/4 answer before step 5 looks at Range).
        pytest.param({"If-None-Match": ETAG, "Range": "bytes=0-9"}, NOT_MODIFIED, id="inm+range"),
        pytest.param(
            {"If-None-Match": "*", "Range": "bytes=0-9", "If-Range": ETAG},
            NOT_MODIFIED,
            id="inm-star+if-range",
        ),
        pytest.param(
            {"If-Modified-Since": LAST_MODIFIED, "Range": "bytes=0-9"},
            NOT_MODIFIED,
            id="ims+range",
        ),
        pytest.param(
            {"If-None-Match": ETAG, "Range": "bytes=10000-"}, NOT_MODIFIED, id="inm+bad-range"
        ),
        pytest.param({"If-Match": OTHER, "Range": "bytes=0-9"}, FAILED, id="im-fails+range"),
        pytest.param({}, FULL, id="no-conditions"),
    ],
)
def test_preconditions_get_and_head(
    method: str, headers: dict[str, str], expected: DownloadPlan
) -> None:
    assert evaluate(method, headers, REP) == expected


@pytest.mark.parametrize(
    ("stored", "ims", "expected"),
    [
        # Last-Modified is sent with whole seconds, so stored milliseconds never make an item
        # look modified after the very date the client got from us.
        pytest.param(datetime(2020, 1, 1, 14, 0, 0, 999_999, tzinfo=UTC), LAST_MODIFIED, 304),
        pytest.param(datetime(2020, 1, 1, 14, 0, 0, 1, tzinfo=UTC), LAST_MODIFIED, 304),
        pytest.param(datetime(2020, 1, 1, 14, 0, 1, tzinfo=UTC), LAST_MODIFIED, 200),
        pytest.param(datetime(2020, 1, 1, 13, 59, 59, 999_999, tzinfo=UTC), LAST_MODIFIED, 304),
    ],
    ids=["999ms", "1us", "next-second", "previous-second"],
)
def test_if_modified_since_at_second_resolution(stored: datetime, ims: str, expected: int) -> None:
    rep = Representation(TAG, stored, SIZE)
    assert evaluate("GET", {"If-Modified-Since": ims}, rep).status == expected
    assert evaluate("GET", {"If-Modified-Since": rep.last_modified_header}, rep).status == 304


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        # §13.1.2: a false If-None-Match is 412 for methods other than GET/HEAD.
        pytest.param({"If-None-Match": ETAG}, FAILED, id="inm-match"),
        pytest.param({"If-None-Match": "*"}, FAILED, id="inm-star"),
        pytest.param({"If-None-Match": OTHER}, FULL, id="inm-other"),
        # §13.1.3: If-Modified-Since only applies to GET and HEAD.
        pytest.param({"If-Modified-Since": LAST_MODIFIED}, FULL, id="ims-ignored"),
        pytest.param({"If-Match": OTHER}, FAILED, id="im-other"),
        pytest.param({"If-Unmodified-Since": SECOND_BEFORE}, FAILED, id="ius-earlier"),
        # §14.2: Range is defined only for GET.
        pytest.param({"Range": "bytes=0-9"}, FULL, id="range-ignored"),
        pytest.param({"Range": "bytes=10000-"}, FULL, id="bad-range-ignored"),
    ],
)
def test_preconditions_other_methods(
    method: str, headers: dict[str, str], expected: DownloadPlan
) -> None:
    assert evaluate(method, headers, REP) == expected


def test_methods_are_case_sensitive() -> None:
    # RFC 9110 §9.1: "get" is not GET, so it gets neither a 304 nor a range.
    assert evaluate("get", {"If-None-Match": ETAG}, REP) == FAILED
    assert evaluate("get", {"Range": "bytes=0-9"}, REP) == FULL


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"if-none-match": ETAG}, id="lowercase"),
        pytest.param({"IF-NONE-MATCH": ETAG}, id="uppercase"),
        pytest.param({"If-None-Match": ETAG}, id="canonical"),
        pytest.param(Headers([("if-None-match", ETAG)]), id="werkzeug-headers"),
    ],
)
def test_header_names_are_case_insensitive(headers: dict[str, str]) -> None:
    assert evaluate("GET", headers, REP) == NOT_MODIFIED


# --- ranges: RFC 9110 §14 -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("range_value", "expected"),
    [
        # The examples of RFC 9110 §14.1.2 for a 10000-byte representation.
        pytest.param("bytes=0-499", partial(0, 499), id="first-500"),
        pytest.param("bytes=500-999", partial(500, 999), id="second-500"),
        pytest.param("bytes=-500", partial(9500, 9999), id="final-500-suffix"),
        pytest.param("bytes=9500-", partial(9500, 9999), id="final-500-open"),
        pytest.param("bytes=0-0,-1", FULL, id="first-and-last-byte-disjoint"),
        pytest.param("bytes=0-999,4500-5499,-1000", FULL, id="three-disjoint"),
        pytest.param("bytes=500-600,601-999", partial(500, 999), id="adjacent-coalesced"),
        pytest.param("bytes=500-700,601-999", partial(500, 999), id="overlapping-coalesced"),
        # Single ranges of each form, clamped.
        pytest.param("bytes=0-9", partial(0, 9), id="0-9"),
        pytest.param("bytes=-10", partial(9990, 9999), id="suffix-10"),
        pytest.param("bytes=0-", partial(0, 9999), id="open-from-0"),
        pytest.param("bytes=9999-", partial(9999, 9999), id="last-byte"),
        pytest.param("bytes=9999-9999", partial(9999, 9999), id="last-byte-closed"),
        pytest.param("bytes=0-9999", partial(0, 9999), id="exact-whole"),
        pytest.param("bytes=0-10000", partial(0, 9999), id="one-past-the-end"),
        pytest.param("bytes=0-99999999999999999999", partial(0, 9999), id="huge-last"),
        pytest.param("bytes=-20000", partial(0, 9999), id="suffix-longer-than-size"),
        pytest.param("bytes=-99999999999999999999", partial(0, 9999), id="huge-suffix"),
        pytest.param("bytes=0000000005-0000000009", partial(5, 9), id="leading-zeros"),
        pytest.param("BYTES=0-9", partial(0, 9), id="unit-case-insensitive"),
        pytest.param("Bytes=0-9", partial(0, 9), id="unit-mixed-case"),
        pytest.param(" bytes=0-9 ", partial(0, 9), id="surrounding-ows"),
        pytest.param("bytes=0-9 , 10-19", partial(0, 19), id="ows-around-comma"),
        pytest.param("bytes= 0-9,\t10-19", partial(0, 19), id="ows-after-equals"),
        pytest.param("bytes=0-9,,10-19,", partial(0, 19), id="empty-elements"),
        pytest.param("bytes=10-19,0-9", partial(0, 19), id="unordered-adjacent"),
        pytest.param("bytes=0-0,0-0,0-0", partial(0, 0), id="duplicates"),
        pytest.param("bytes=-500,9000-", partial(9000, 9999), id="suffix-inside-open"),
        pytest.param("bytes=0-,-1", partial(0, 9999), id="open-covers-suffix"),
        pytest.param("bytes=0-4999,5000-", partial(0, 9999), id="halves-coalesced"),
        pytest.param("bytes=0-9,10000-", partial(0, 9), id="unsatisfiable-member-dropped"),
        pytest.param("bytes=-0,0-9", partial(0, 9), id="zero-suffix-dropped"),
        # Unsatisfiable: 416 with the complete length (§15.5.17).
        pytest.param("bytes=10000-", unsatisfiable(), id="starts-at-size"),
        pytest.param("bytes=10000-10001", unsatisfiable(), id="closed-past-end"),
        pytest.param("bytes=20000-30000", unsatisfiable(), id="far-past-end"),
        pytest.param("bytes=-0", unsatisfiable(), id="zero-suffix"),
        pytest.param("bytes=10000-,-0,20000-", unsatisfiable(), id="all-unsatisfiable"),
        pytest.param("bytes=99999999999999999999-", unsatisfiable(), id="huge-first"),
        # Syntactically invalid or unsupported: the Range is ignored (§14.1.1, §14.2).
        pytest.param("bytes=5-4", FULL, id="last-before-first"),
        pytest.param("bytes=0-9,5-4", FULL, id="one-invalid-member-spoils-all"),
        pytest.param("bytes=10000-,5-4", FULL, id="invalid-beats-unsatisfiable"),
        pytest.param("bytes=0 - 9", FULL, id="ows-inside-spec"),
        pytest.param("bytes =0-9", FULL, id="ows-before-equals"),
        pytest.param("bytes=", FULL, id="empty-range-set"),
        pytest.param("bytes=,", FULL, id="only-empty-elements"),
        pytest.param("bytes=-", FULL, id="lone-dash"),
        pytest.param("bytes=0--9", FULL, id="double-dash"),
        pytest.param("bytes=1-2-3", FULL, id="three-parts"),
        pytest.param("bytes=a-b", FULL, id="letters"),
        pytest.param("bytes=+1-2", FULL, id="plus-sign"),
        pytest.param("bytes=0x10-0x20", FULL, id="hex"),
        pytest.param("bytes=1_000-2_000", FULL, id="underscores"),
        pytest.param("bytes=\u0660-\u0669", FULL, id="non-ascii-digits"),
        pytest.param("bytes=0-9;q=1", FULL, id="parameter"),
        pytest.param("bytes=0-9, bytes=10-19", FULL, id="two-field-lines-combined"),
        pytest.param("bytes 0-9", FULL, id="no-equals"),
        pytest.param("items=0-9", FULL, id="other-unit"),
        pytest.param("none", FULL, id="none"),
        pytest.param("", FULL, id="empty"),
        pytest.param("=0-9", FULL, id="no-unit"),
        pytest.param(
            "bytes=" + ",".join(f"{i}-{i}" for i in range(16)), partial(0, 15), id="16-specs"
        ),
        pytest.param(
            "bytes=" + ",".join(f"{i}-{i}" for i in range(17)), FULL, id="17-specs-ignored"
        ),
    ],
)
def test_ranges(range_value: str, expected: DownloadPlan) -> None:
    assert evaluate("GET", {"Range": range_value}, REP) == expected


@pytest.mark.parametrize(
    ("range_value", "expected"),
    [
        pytest.param("bytes=0-" + "9" * 5000, partial(0, 9999), id="5000-digit-last"),
        pytest.param("bytes=-" + "9" * 5000, partial(0, 9999), id="5000-digit-suffix"),
        pytest.param("bytes=" + "9" * 5000 + "-", unsatisfiable(), id="5000-digit-first"),
        pytest.param("bytes=" + "0" * 5000 + "5-9", partial(5, 9), id="5000-leading-zeros"),
        pytest.param("bytes=1" + "0" * 40 + "-" + "9" * 40, FULL, id="huge-last-before-huge-first"),
        pytest.param(
            "bytes=" + "9" * 40 + "-1" + "0" * 40, unsatisfiable(), id="huge-first-before-last"
        ),
    ],
)
def test_ranges_with_huge_numbers(range_value: str, expected: DownloadPlan) -> None:
    assert evaluate("GET", {"Range": range_value}, REP) == expected


def test_many_ranges_are_ignored_quickly() -> None:
    headers = {"Range": "bytes=" + ",".join(f"{2 * i}-{2 * i}" for i in range(1000))}
    started = time.perf_counter()
    plan = evaluate("GET", headers, REP)
    assert time.perf_counter() - started < 0.5
    assert plan == FULL


def test_max_ranges_is_configurable() -> None:
    headers = {"Range": "bytes=0-0,1-1,2-2"}
    assert evaluate("GET", headers, REP, max_ranges=3) == partial(0, 2)
    assert evaluate("GET", headers, REP, max_ranges=2) == FULL
    assert evaluate("GET", headers, REP, max_ranges=0) == FULL


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        # §13.1.5: an entity-tag validator must match strongly.
        pytest.param({"If-Range": ETAG}, partial(0, 9), id="strong-match"),
        pytest.param({"If-Range": f" {ETAG} "}, partial(0, 9), id="strong-match-ows"),
        pytest.param({"If-Range": f"W/{ETAG}"}, FULL, id="weak-never-matches"),
        pytest.param({"If-Range": OTHER}, FULL, id="mismatch"),
        pytest.param({"If-Range": f"{ETAG}, {OTHER}"}, FULL, id="list-is-not-a-validator"),
        pytest.param({"If-Range": TAG}, FULL, id="unquoted"),
        pytest.param({"If-Range": "*"}, FULL, id="star"),
        pytest.param({"If-Range": ""}, FULL, id="empty"),
        pytest.param({"If-Range": "garbage"}, FULL, id="garbage"),
        # §13.1.5: an HTTP-date must be an exact match for Last-Modified (whole seconds).
        pytest.param({"If-Range": LAST_MODIFIED}, partial(0, 9), id="date-exact"),
        pytest.param({"If-Range": LAST_MODIFIED_RFC850}, partial(0, 9), id="date-rfc850"),
        pytest.param({"If-Range": LAST_MODIFIED_ASCTIME}, partial(0, 9), id="date-asctime"),
        pytest.param({"If-Range": SECOND_BEFORE}, FULL, id="date-earlier"),
        pytest.param({"If-Range": SECOND_AFTER}, FULL, id="date-later"),
        pytest.param({"If-Range": "2020-01-01T14:00:00Z"}, FULL, id="iso-is-not-http-date"),
        # A false If-Range means "ignore Range", so even a bad range gets the full 200.
        pytest.param({"If-Range": OTHER, "Range": "bytes=10000-"}, FULL, id="false-bad-range"),
        pytest.param(
            {"If-Range": ETAG, "Range": "bytes=10000-"}, unsatisfiable(), id="true-bad-range"
        ),
        pytest.param({"If-Range": ETAG, "Range": "bytes=0-0,-1"}, FULL, id="true-several-ranges"),
        pytest.param({"If-Range": ETAG, "Range": "bytes=5-4"}, FULL, id="true-invalid-range"),
        # §13.1.5: If-Range without Range is ignored.
        pytest.param({"If-Range": ETAG, "Range": None}, FULL, id="without-range"),
        pytest.param({"If-Range": OTHER, "Range": None}, FULL, id="mismatch-without-range"),
        # Preconditions are evaluated first: If-Match true, then If-Range.
        pytest.param({"If-Match": ETAG, "If-Range": ETAG}, partial(0, 9), id="with-if-match"),
        pytest.param({"If-None-Match": OTHER, "If-Range": ETAG}, partial(0, 9), id="with-inm"),
    ],
)
def test_if_range(headers: dict[str, str | None], expected: DownloadPlan) -> None:
    request = {"Range": "bytes=0-9"}
    request.update(headers)  # type: ignore[arg-type]
    present = {name: value for name, value in request.items() if value is not None}
    assert evaluate("GET", present, REP) == expected


@pytest.mark.parametrize(
    "headers",
    [
        pytest.param({"Range": "bytes=0-9"}, id="range"),
        pytest.param({"Range": "bytes=10000-"}, id="unsatisfiable-range"),
        pytest.param({"Range": "bytes=0-9", "If-Range": ETAG}, id="range-and-if-range"),
    ],
)
def test_head_ignores_range(headers: dict[str, str]) -> None:
    # RFC 9110 §9.3.2/§14.2: HEAD gets the headers of a full GET; range handling is GET-only.
    assert evaluate("HEAD", headers, REP) == FULL


@pytest.mark.parametrize(
    ("method", "headers", "expected"),
    [
        pytest.param("GET", {}, DownloadPlan(200, 0, 0), id="no-range"),
        pytest.param("HEAD", {}, DownloadPlan(200, 0, 0), id="head"),
        # §14.1.2: only a suffix range with non-zero length is satisfiable, but there is no
        # byte to send, so the Range is ignored (§14.2).
        pytest.param("GET", {"Range": "bytes=-1"}, DownloadPlan(200, 0, 0), id="suffix-1"),
        pytest.param(
            "GET", {"Range": "bytes=-1,0-0"}, DownloadPlan(200, 0, 0), id="suffix-and-int"
        ),
        pytest.param("GET", {"Range": "bytes=0-"}, unsatisfiable(0), id="open-from-0"),
        pytest.param("GET", {"Range": "bytes=0-0"}, unsatisfiable(0), id="first-byte"),
        pytest.param("GET", {"Range": "bytes=0-99"}, unsatisfiable(0), id="closed"),
        pytest.param("GET", {"Range": "bytes=-0"}, unsatisfiable(0), id="zero-suffix"),
        pytest.param("GET", {"Range": "bytes=5-4"}, DownloadPlan(200, 0, 0), id="invalid"),
        pytest.param("GET", {"Range": "garbage"}, DownloadPlan(200, 0, 0), id="garbage"),
        pytest.param(
            "GET",
            {"Range": "bytes=0-0", "If-Range": '"d41d8cd98f00b204e9800998ecf8427e"'},
            unsatisfiable(0),
            id="if-range-true",
        ),
        pytest.param(
            "GET",
            {"If-None-Match": '"d41d8cd98f00b204e9800998ecf8427e"', "Range": "bytes=0-0"},
            NOT_MODIFIED,
            id="inm-match",
        ),
    ],
)
def test_zero_length_representation(
    method: str, headers: dict[str, str], expected: DownloadPlan
) -> None:
    assert evaluate(method, headers, EMPTY) == expected


@pytest.mark.parametrize(
    ("value", "size", "expected"),
    [
        pytest.param("bytes=0-0,-1", 10_000, [ByteRange(0, 0), ByteRange(9999, 9999)]),
        pytest.param("bytes=-1,0-0", 10_000, [ByteRange(0, 0), ByteRange(9999, 9999)]),
        pytest.param("bytes=0-1,3-4", 5, [ByteRange(0, 1), ByteRange(3, 4)]),
        pytest.param("bytes=0-1,2-4", 5, [ByteRange(0, 4)]),
        pytest.param("bytes=0-10,2-3", 5, [ByteRange(0, 4)]),
        pytest.param("bytes=5-", 5, []),
        pytest.param("bytes=-1", 0, None),
        pytest.param("bytes=0-", 0, []),
        pytest.param("bytes=0-", -1, None),
    ],
    ids=[
        "two-disjoint",
        "two-disjoint-sorted",
        "gap-of-one-byte",
        "adjacent",
        "contained",
        "unsatisfiable",
        "empty-suffix",
        "empty-open",
        "negative-size",
    ],
)
def test_parse_byte_ranges(value: str, size: int, expected: list[ByteRange] | None) -> None:
    assert parse_byte_ranges(value, size) == expected


# --- properties ----------------------------------------------------------------------------

_NUMBERS = st.one_of(
    st.integers(0, 20_000).map(str),
    st.sampled_from(["", "0", "00", "99999999999999999999", "9" * 50, "-1", " 1", "1a"]),
)
_SPECS = st.one_of(
    st.builds(lambda a, b: f"{a}-{b}", _NUMBERS, _NUMBERS),
    st.sampled_from(["", " ", "-", "--", "*", "0-9;x", "\u0661-\u0662"]),
)
_RANGE_VALUES = st.one_of(
    st.builds(
        lambda unit, specs, sep: unit + "=" + sep.join(specs),
        st.sampled_from(["bytes", "BYTES", "items", "", "bytes "]),
        st.lists(_SPECS, max_size=20),
        st.sampled_from([",", ", ", " ,", ",,"]),
    ),
    st.text(max_size=40),
)
_TAGS = st.sampled_from([ETAG, OTHER, f"W/{ETAG}", f"W/{OTHER}", "*", TAG, '"', '"a,b"', ""])
_TAG_LISTS = st.one_of(
    st.lists(_TAGS, max_size=5).map(", ".join),
    st.text(alphabet='W/"*, \tabc0123456789', max_size=30),
    st.text(max_size=30),
)
_DATES = st.one_of(
    st.datetimes(
        min_value=datetime(2019, 12, 31), max_value=datetime(2020, 1, 2), timezones=st.just(UTC)
    ).map(format_http_date),
    st.sampled_from([LAST_MODIFIED, SECOND_BEFORE, SECOND_AFTER, "2020-01-01T14:00:00Z"]),
    st.text(max_size=40),
)
_HEADERS = st.fixed_dictionaries(
    {},
    optional={
        "If-Match": _TAG_LISTS,
        "If-None-Match": _TAG_LISTS,
        "If-Modified-Since": _DATES,
        "If-Unmodified-Since": _DATES,
        "If-Range": st.one_of(_TAGS, _DATES),
        "Range": _RANGE_VALUES,
    },
)
_REPRESENTATIONS = st.builds(
    Representation,
    etag=st.sampled_from([TAG, "ffffffffffffffffffffffffffffffff", ""]),
    last_modified=st.datetimes(
        min_value=datetime(2019, 12, 31),
        max_value=datetime(2020, 1, 2),
        timezones=st.just(UTC),
    ),
    size=st.one_of(st.integers(0, 3), st.integers(0, 20_000)),
)


@settings(max_examples=500)
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "get"]),
    headers=_HEADERS,
    rep=_REPRESENTATIONS,
)
def test_evaluate_never_raises_and_plans_are_consistent(
    method: str, headers: dict[str, str], rep: Representation
) -> None:
    plan = evaluate(method, headers, rep)
    assert plan.status in (200, 206, 304, 412, 416)
    assert 0 <= plan.start
    assert plan.start + plan.length <= rep.size
    if plan.status == 200:
        assert (plan.start, plan.length, plan.content_range) == (0, rep.size, None)
    elif plan.status == 206:
        assert method == "GET" and "Range" in headers
        assert plan.length >= 1
        last = plan.start + plan.length - 1
        assert plan.content_range == f"bytes {plan.start}-{last}/{rep.size}"
    elif plan.status == 416:
        assert method == "GET" and "Range" in headers
        assert (plan.start, plan.length, plan.content_range) == (0, 0, f"bytes */{rep.size}")
    else:
        assert (plan.start, plan.length, plan.content_range) == (0, 0, None)
    if plan.status == 304:
        assert method in ("GET", "HEAD")


@given(
    first=st.integers(0, 30_000),
    length=st.one_of(st.none(), st.integers(0, 30_000)),
    size=st.integers(0, 20_000),
)
def test_single_int_range_matches_model(first: int, length: int | None, size: int) -> None:
    last = None if length is None else first + length
    value = f"bytes={first}-{'' if last is None else last}"
    plan = evaluate("GET", {"Range": value}, Representation(TAG, MODIFIED, size))
    if first >= size:
        assert plan == unsatisfiable(size)
    else:
        expected_last = size - 1 if last is None else min(last, size - 1)
        assert plan == partial(first, expected_last, size)


@given(suffix=st.integers(0, 30_000), size=st.integers(0, 20_000))
def test_single_suffix_range_matches_model(suffix: int, size: int) -> None:
    plan = evaluate("GET", {"Range": f"bytes=-{suffix}"}, Representation(TAG, MODIFIED, size))
    if suffix == 0:
        assert plan == unsatisfiable(size)
    elif size == 0:
        assert plan == DownloadPlan(200, 0, 0)
    else:
        assert plan == partial(max(0, size - suffix), size - 1, size)


@given(
    st.lists(
        st.tuples(st.integers(0, 200), st.integers(0, 200)).map(sorted), min_size=1, max_size=16
    )
)
def test_coalesced_ranges_cover_exactly_the_requested_bytes(pairs: list[list[int]]) -> None:
    size = 150
    value = "bytes=" + ",".join(f"{a}-{b}" for a, b in pairs)
    ranges = parse_byte_ranges(value, size)
    requested = {i for a, b in pairs for i in range(a, min(b, size - 1) + 1)}
    assert ranges is not None
    covered = [i for r in ranges for i in range(r.first, r.last + 1)]
    assert sorted(covered) == sorted(requested)  # no byte twice, none missing
    for earlier, later in zip(ranges, ranges[1:], strict=False):
        assert later.first > earlier.last + 1  # disjoint and not adjacent


@given(st.text(max_size=60))
def test_parsers_never_raise(value: str) -> None:
    parse_entity_tag(value)
    parse_entity_tag_list(value)
    parse_byte_ranges(value, 100)
    parse_byte_ranges("bytes=" + value, 100)


def test_plans_are_frozen() -> None:
    with pytest.raises(AttributeError):
        FULL.status = 206  # type: ignore[misc]
