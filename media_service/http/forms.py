"""Strict decoding of urlencoded form bodies: text that is not UTF-8 is refused, never replaced.

Werkzeug decodes form bodies with `errors="replace"` and drops pairs it cannot read, so an update
could store U+FFFD or lose a field without a word, while the multipart upload path (which
decodes its own fields strictly) refuses the same bytes. Parsing here keeps one rule for both.
"""

from __future__ import annotations

from urllib.parse import unquote_to_bytes


class FormDecodeError(ValueError):
    """A urlencoded body that is not valid; `name` is the field at fault, if known."""

    def __init__(self, message: str, name: str | None = None) -> None:
        super().__init__(message)
        self.name = name


def _text(encoded: str, what: str, name: str | None) -> str:
    try:
        return unquote_to_bytes(encoded.replace("+", " ")).decode("utf-8")
    except UnicodeDecodeError:
        raise FormDecodeError(f"{what} is not valid UTF-8.", name) from None


def parse_urlencoded(body: bytes) -> list[tuple[str, str]]:
    """The (name, value) pairs of an application/x-www-form-urlencoded body, in order."""
    try:
        text = body.decode("ascii")  # the format percent-encodes every other byte
    except UnicodeDecodeError:
        raise FormDecodeError(
            "A urlencoded body must be ASCII (percent-encode other bytes)."
        ) from None
    pairs = []
    for item in text.split("&"):
        if not item:
            continue
        raw_name, _, raw_value = item.partition("=")
        name = _text(raw_name, "A field name", None)
        pairs.append((name, _text(raw_value, f"Field {name!r}", name)))
    return pairs
