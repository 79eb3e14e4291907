"""ACL parsing and segment matching, table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from media_service.auth import Acl, AclRule, parse_acl
from media_service.auth.acl import MAX_PATHS, MAX_PATTERN_LENGTH, match_segments, split_path


def acl(*patterns: str, methods: list[str] | None = None) -> Acl:
    spec: dict[str, Any] = {} if methods is None else {"methods": methods}
    return parse_acl({"paths": {pattern: dict(spec) for pattern in patterns}})


# (pattern, path, admitted)
MATCHES = [
    # Vonage's usual grant covers every media endpoint.
    ("/*/media/**", "/v3/media", True),
    ("/*/media/**", "/v3/media/", True),
    ("/*/media/**", "/v3/media/x", True),
    ("/*/media/**", "/v3/media/x/info", True),
    ("/*/media/**", "/v1/media/x/info", True),
    ("/*/media/**", "/v3/other/x", False),
    ("/*/media/**", "/media", False),
    ("/*/media/**", "/", False),
    # One-segment wildcard.
    ("/v3/media/*", "/v3/media/x", True),
    ("/v3/media/*", "/v3/media/x/", True),
    ("/v3/media/*", "/v3/media/x/info", False),
    ("/v3/media/*", "/v3/media", False),
    ("/v3/media/*/info", "/v3/media/abc/info", True),
    ("/v3/media/*/info", "/v3/media/abc/def/info", False),
    # `**` in the middle: zero or more segments.
    ("/v3/**/info", "/v3/info", True),
    ("/v3/**/info", "/v3/media/info", True),
    ("/v3/**/info", "/v3/media/x/info", True),
    ("/v3/**/info", "/v3/media/x/info/more", False),
    ("/v3/**/info", "/v3/media/x", False),
    ("/**/x/**/y", "/x/y", True),
    ("/**/x/**/y", "/a/x/b/c/y", True),
    ("/**/x/**/y", "/a/y/b/x", False),
    ("/v3/**/**/info", "/v3/info", True),
    ("/*/*", "/a/b", True),
    ("/*/*", "/a", False),
    # Root and catch-all.
    ("/", "/", True),
    ("/", "", True),
    ("/", "/v3", False),
    ("/**", "/", True),
    ("/**", "/v3/media/x/info", True),
    ("/*", "/", False),
    # Literals are exact and case-sensitive; no partial globbing inside a segment.
    ("/v3/media", "/v3/media", True),
    ("/v3/media", "/v3/Media", False),
    ("/v3/media", "/v3/media/x", False),
    ("/v3/med*", "/v3/media", False),
    ("/v3/med*", "/v3/med*", True),
    # Slashes are normalised on both sides.
    ("/v3//media/", "/v3/media", True),
    ("/v3/media", "//v3///media//", True),
]


@pytest.mark.parametrize(("pattern", "path", "admitted"), MATCHES)
def test_pattern_matching(pattern: str, path: str, admitted: bool) -> None:
    assert acl(pattern).allows("GET", path) is admitted


def test_any_rule_may_admit() -> None:
    grants = acl("/v3/media/*", "/v3/other/**")
    assert grants.allows("GET", "/v3/media/x")
    assert grants.allows("GET", "/v3/other/a/b")
    assert not grants.allows("GET", "/v3/media/x/info")


def test_empty_paths_admit_nothing() -> None:
    assert not parse_acl({"paths": {}}).allows("GET", "/v3/media")


# (methods, request method, admitted)
METHODS = [
    (["GET"], "GET", True),
    (["GET"], "get", True),
    (["get"], "GET", True),
    (["GET"], "HEAD", True),  # HEAD wherever GET: see the module docstring
    (["HEAD"], "GET", False),
    (["GET"], "POST", False),
    (["GET"], "DELETE", False),
    (["GET", "PUT"], "PUT", True),
    ([], "GET", False),
]


@pytest.mark.parametrize(("methods", "method", "admitted"), METHODS)
def test_methods_restriction(methods: list[str], method: str, admitted: bool) -> None:
    assert acl("/v3/media/**", methods=methods).allows(method, "/v3/media/x") is admitted


def test_no_methods_key_admits_every_method() -> None:
    grants = acl("/v3/media/**")
    for method in ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH"):
        assert grants.allows(method, "/v3/media/x")


def test_methods_do_not_widen_the_path() -> None:
    assert not acl("/v3/media/*", methods=["GET"]).allows("GET", "/v3/media/x/info")


def test_parse_builds_rules() -> None:
    parsed = parse_acl({"paths": {"/*/media/**": {}, "/v3/x": {"methods": ["GET", "put"]}}})
    assert parsed == Acl(
        (
            AclRule(("*", "media", "**"), None),
            AclRule(("v3", "x"), frozenset({"GET", "PUT"})),
        )
    )
    assert hash(parsed)  # frozen, usable in a frozen Principal


def test_rule_with_unknown_restrictions_admits_nothing() -> None:
    parsed = parse_acl({"paths": {"/*/media/**": {"filters": {"x": 1}}, "/v3/other": {}}})
    assert not parsed.allows("GET", "/v3/media/x")
    assert parsed.allows("GET", "/v3/other")  # the other rules still work


@pytest.mark.parametrize(
    "claim",
    [
        pytest.param(None, id="null"),
        pytest.param("paths", id="string"),
        pytest.param([], id="list"),
        pytest.param({}, id="no-paths"),
        pytest.param({"paths": None}, id="paths-null"),
        pytest.param({"paths": ["/v3/media"]}, id="paths-list"),
        pytest.param({"paths": {"/v3/media": {}}, "extra": 1}, id="unknown-top-level"),
        pytest.param({"paths": {"v3/media": {}}}, id="relative-pattern"),
        pytest.param({"paths": {"": {}}}, id="empty-pattern"),
        pytest.param({"paths": {"/v3": None}}, id="entry-null"),
        pytest.param({"paths": {"/v3": []}}, id="entry-list"),
        pytest.param({"paths": {"/v3": True}}, id="entry-bool"),
        pytest.param({"paths": {"/v3": {"methods": "GET"}}}, id="methods-string"),
        pytest.param({"paths": {"/v3": {"methods": None}}}, id="methods-null"),
        pytest.param({"paths": {"/v3": {"methods": [1]}}}, id="method-int"),
        pytest.param({"paths": {"/v3": {"methods": [""]}}}, id="method-empty"),
        pytest.param({"paths": {"/v3": {"methods": ["G ET"]}}}, id="method-space"),
        pytest.param({"paths": {"/v3": {"methods": ["GÉT"]}}}, id="method-non-ascii"),
        pytest.param({"paths": {"/v3": {"methods": ["X" * 21]}}}, id="method-long"),
        pytest.param({"paths": {"/v3": {"methods": ["GET"] * 17}}}, id="too-many-methods"),
        pytest.param({"paths": {"/" + "a" * MAX_PATTERN_LENGTH: {}}}, id="pattern-too-long"),
        pytest.param({"paths": {f"/p{i}": {} for i in range(MAX_PATHS + 1)}}, id="too-many-paths"),
    ],
)
def test_malformed_acl_is_refused(claim: object) -> None:
    with pytest.raises(ValueError):
        parse_acl(claim)


def test_limits_are_inclusive() -> None:
    parse_acl({"paths": {f"/p{i}": {} for i in range(MAX_PATHS)}})
    parse_acl({"paths": {"/" + "a" * (MAX_PATTERN_LENGTH - 1): {}}})


def test_hostile_patterns_match_in_bounded_time() -> None:
    # Would be exponential with naive backtracking; the matcher is O(pattern * path).
    pattern = ("**", "a") * 60 + ("b",)
    path = ("a",) * 500
    assert not match_segments(pattern, path)


def test_split_path() -> None:
    assert split_path("/") == ()
    assert split_path("//v3//media/") == ("v3", "media")
