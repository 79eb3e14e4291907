"""Build a Content-Disposition header (RFC 6266) that is safe for any stored file name.

The original file name is user input. Whatever it holds, the result is one header value with
no CR, LF or other control character, a quoted ASCII ``filename`` for old user agents, and an
RFC 8187 ``filename*`` carrying the real name in UTF-8.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from urllib.parse import quote

__all__ = ["MAX_FILENAME_BYTES", "content_disposition", "disposition_type", "safe_filename"]

#: Longest file name, in UTF-8 bytes, that is sent (the common file-system limit).
MAX_FILENAME_BYTES = 255
_FALLBACK_NAME = "download"
# Extensions up to this many bytes are kept when a long name is shortened.
_MAX_EXTENSION_BYTES = 16

# Unicode categories removed from names: Cc (controls: C0, DEL, C1 — includes CR, LF, NUL,
# TAB), Cf (format characters, e.g. the bidi override U+202E that makes "gpj.exe" read as
# "exe.jpg"), Cs (lone surrogates, which cannot be encoded), Zl/Zp (line/paragraph separators).
_STRIPPED_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
# RFC 8187 attr-char beyond what quote() always leaves alone (ALPHA / DIGIT / "-" "." "_" "~").
_ATTR_CHAR_EXTRA = "!#$&+^`|"
# Characters replaced in the ASCII fallback: those a quoted-string would need escaped ('"' and
# '\\', which user agents handle inconsistently), '%' (some agents percent-decode filename,
# RFC 6266 Appendix D), and those Windows forbids in file names.
_FALLBACK_REPLACED = frozenset('"\\%/:*?<>|;')
_RUNS_OF_UNDERSCORES = re.compile(r"_{2,}")


# Every download builds this header from the item's name and type; the same items are fetched
# again and again, and normalising and quoting a name costs more than the rest of the headers.
@functools.lru_cache(maxsize=1024)
def content_disposition(filename: str, mime_type: str) -> str:
    """Return a Content-Disposition value for serving ``filename`` as ``mime_type``.

    E.g. ``inline; filename="cafe.png"; filename*=UTF-8''caf%C3%A9.png``.
    """
    name = safe_filename(filename)
    encoded = quote(name.encode("utf-8"), safe=_ATTR_CHAR_EXTRA)
    return (
        f'{disposition_type(mime_type)}; filename="{_ascii_fallback(name)}"; '
        f"filename*=UTF-8''{encoded}"
    )


def disposition_type(mime_type: str) -> str:
    """Return ``inline`` for audio, video and raster images, otherwise ``attachment``.

    SVG is an image type that can carry script, so it is always an attachment. Parameters
    (``; charset=...``) and case are ignored.
    """
    essence = (mime_type or "").split(";", 1)[0].strip(" \t").lower()
    top, slash, subtype = essence.partition("/")
    if not slash or not subtype:
        return "attachment"
    if top in ("audio", "video"):
        return "inline"
    if top == "image" and "svg" not in subtype:
        return "inline"
    return "attachment"


def safe_filename(filename: str) -> str:
    """Return the last path component of ``filename`` without control or format characters.

    ``../../etc/passwd`` becomes ``passwd``; both ``/`` and ``\\`` count as separators. The
    result is NFC-normalised, trimmed of surrounding whitespace, at most `MAX_FILENAME_BYTES`
    bytes of UTF-8 (keeping a short extension), and never empty or only dots (``.``, ``..``) —
    those become ``download``.
    """
    text = unicodedata.normalize("NFC", filename or "")
    text = "".join(ch for ch in text if unicodedata.category(ch) not in _STRIPPED_CATEGORIES)
    name = re.split(r"[/\\]", text)[-1].strip()
    if name.strip(". ") == "":
        return _FALLBACK_NAME
    return _bounded(name)


def _bounded(name: str) -> str:
    if len(name.encode("utf-8")) <= MAX_FILENAME_BYTES:
        return name
    stem, dot, extension = name.rpartition(".")
    extension_bytes = len(extension.encode("utf-8")) + 1
    if dot and stem and extension_bytes <= _MAX_EXTENSION_BYTES:
        return _truncate_utf8(stem, MAX_FILENAME_BYTES - extension_bytes) + "." + extension
    return _truncate_utf8(name, MAX_FILENAME_BYTES)


def _truncate_utf8(text: str, limit: int) -> str:
    # Cutting the encoded bytes may split a character; "ignore" drops the partial tail.
    return text.encode("utf-8")[:limit].decode("utf-8", "ignore")


def _ascii_fallback(name: str) -> str:
    """Return a printable-ASCII stand-in for ``name`` fit for a quoted-string."""
    # Decompose so accented letters keep their base letter ("café" -> "cafe").
    decomposed = unicodedata.normalize("NFKD", name)
    characters = []
    for ch in decomposed:
        if unicodedata.combining(ch):
            continue
        if " " <= ch <= "~" and ch not in _FALLBACK_REPLACED:
            characters.append(ch)
        else:
            characters.append("_")
    fallback = _RUNS_OF_UNDERSCORES.sub("_", "".join(characters)).strip()
    stem, dot, extension = fallback.rpartition(".")
    if not dot:
        stem, extension = fallback, ""
    if not any(ch.isalnum() for ch in stem):
        # Nothing recognisable survived ("日本語.pdf" -> "_.pdf"): use a neutral name.
        return _FALLBACK_NAME + (f".{extension}" if dot and extension.isalnum() else "")
    return fallback
