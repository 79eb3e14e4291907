"""JWT access-control lists: which paths (and methods) a token may touch.

A token's `acl` claim looks like
`{"paths": {"/*/media/**": {}, "/v3/media/*": {"methods": ["GET"]}}}`. Patterns are matched
against the request path one segment at a time, never through a regular expression built from
the token:

* `*` matches exactly one segment, `**` matches any number of segments (zero included);
  every other segment matches only itself, exactly (no partial globs such as `med*`).
* Repeated and trailing slashes are ignored on both sides: `/v3/media/` is `/v3/media`.
* `HEAD` is admitted wherever `GET` is: a HEAD is a GET without the body, so refusing it
  would only break clients that probe a download first, without protecting anything.
* A rule carrying keys other than `methods` (e.g. Vonage's `filters`) admits nothing: we cannot
  enforce restrictions we do not understand, so we fail closed for that rule only.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

MAX_PATHS = 100
MAX_PATTERN_LENGTH = 256
MAX_METHODS = 16
MAX_METHOD_LENGTH = 20

ONE_SEGMENT = "*"
ANY_SEGMENTS = "**"


def split_path(path: str) -> tuple[str, ...]:
    """Split a path into its non-empty segments."""
    return tuple(segment for segment in path.split("/") if segment)


def match_segments(pattern: tuple[str, ...], path: tuple[str, ...]) -> bool:
    """Tell whether `path` matches `pattern` (`*` = one segment, `**` = zero or more)."""
    # Classic wildcard matching with a single backtrack point: O(len(pattern) * len(path))
    # in the worst case, no recursion, so hostile patterns such as /**/**/**/x cannot blow up.
    p = s = 0
    star_p, star_s = -1, 0
    while s < len(path):
        if p < len(pattern) and pattern[p] == ANY_SEGMENTS:
            star_p, star_s = p, s
            p += 1
        elif p < len(pattern) and pattern[p] in (ONE_SEGMENT, path[s]):
            p += 1
            s += 1
        elif star_p >= 0:
            # Let the last `**` swallow one more segment and retry from there.
            star_s += 1
            p, s = star_p + 1, star_s
        else:
            return False
    while p < len(pattern) and pattern[p] == ANY_SEGMENTS:
        p += 1
    return p == len(pattern)


@dataclass(frozen=True)
class AclRule:
    """One `paths` entry: a segment pattern and the methods it admits (None = every method)."""

    pattern: tuple[str, ...]
    methods: frozenset[str] | None = None

    def admits(self, method: str, path_segments: tuple[str, ...]) -> bool:
        """Tell whether this rule admits `method` on the already split path."""
        if self.methods is not None:
            method = method.upper()
            if method not in self.methods and not (method == "HEAD" and "GET" in self.methods):
                return False
        return match_segments(self.pattern, path_segments)


@dataclass(frozen=True)
class Acl:
    """The parsed `acl` claim: a request is allowed when any rule admits it."""

    rules: tuple[AclRule, ...]

    def allows(self, method: str, path: str) -> bool:
        """Tell whether some rule admits `method` on `path` (a path without query string)."""
        segments = split_path(path)
        return any(rule.admits(method, segments) for rule in self.rules)


def parse_acl(claim: object) -> Acl:
    """Parse an `acl` claim; raise ValueError when it is not a well-formed, bounded ACL."""
    if not isinstance(claim, Mapping):
        raise ValueError("acl must be an object")
    unknown = set(claim) - {"paths"}
    if unknown:
        # Unknown top-level keys might be restrictions we would silently ignore: refuse.
        raise ValueError("acl has unknown keys")
    paths = claim.get("paths")
    if not isinstance(paths, Mapping):
        raise ValueError("acl.paths must be an object")
    if len(paths) > MAX_PATHS:
        raise ValueError(f"acl.paths has more than {MAX_PATHS} entries")
    return Acl(tuple(_parse_rule(pattern, spec) for pattern, spec in paths.items()))


def _parse_rule(pattern: object, spec: object) -> AclRule:
    if not isinstance(pattern, str) or not pattern.startswith("/"):
        raise ValueError("acl path patterns must be strings starting with '/'")
    if len(pattern) > MAX_PATTERN_LENGTH:
        raise ValueError(f"acl path pattern longer than {MAX_PATTERN_LENGTH} characters")
    if not isinstance(spec, Mapping):
        raise ValueError("acl path entries must be objects")
    segments = split_path(pattern)
    if set(spec) - {"methods"}:
        return AclRule(segments, frozenset())  # fail closed: see the module docstring
    if "methods" not in spec:
        return AclRule(segments, None)
    return AclRule(segments, _parse_methods(spec["methods"]))


def _parse_methods(methods: object) -> frozenset[str]:
    if not isinstance(methods, list) or len(methods) > MAX_METHODS:
        raise ValueError(f"acl methods must be a list of at most {MAX_METHODS} names")
    parsed = set()
    for method in methods:
        if not (
            isinstance(method, str)
            and 0 < len(method) <= MAX_METHOD_LENGTH
            and method.isascii()
            and method.isalpha()
        ):
            raise ValueError("acl methods must be HTTP method names")
        parsed.add(method.upper())
    return frozenset(parsed)
