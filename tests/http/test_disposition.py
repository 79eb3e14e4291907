"""Content-Disposition (RFC 6266) with an RFC 8187 ``filename*`` for any stored name."""

from __future__ import annotations

import re
from urllib.parse import unquote

import pytest
from hypothesis import given
from hypothesis import strategies as st
from werkzeug.http import parse_options_header

from media_service.http.disposition import (
    MAX_FILENAME_BYTES,
    content_disposition,
    disposition_type,
    safe_filename,
)

# One header value: type; a quoted printable-ASCII filename without '"' or '\'; filename* whose
# value is only RFC 8187 attr-chars and percent-escapes.
HEADER = re.compile(
    r"(?P<type>inline|attachment); filename=\"(?P<fallback>[ !#-\[\]-~]+)\"; "
    r"filename\*=UTF-8''(?P<encoded>(?:[A-Za-z0-9!#$&+\-.^_`|~]|%[0-9A-F]{2})+)"
)


@pytest.mark.parametrize(
    ("mime_type", "expected"),
    [
        pytest.param("image/png", "inline", id="png"),
        pytest.param("image/jpeg", "inline", id="jpeg"),
        pytest.param("IMAGE/PNG", "inline", id="uppercase"),
        pytest.param(" image/gif ; q=1", "inline", id="parameters"),
        pytest.param("video/mp4", "inline", id="video"),
        pytest.param("audio/mpeg", "inline", id="audio"),
        pytest.param("audio/ogg; codecs=opus", "inline", id="audio-parameters"),
        pytest.param("image/svg+xml", "attachment", id="svg"),
        pytest.param("Image/SVG+XML; charset=utf-8", "attachment", id="svg-mixed-case"),
        pytest.param("image/svg", "attachment", id="svg-nonstandard"),
        pytest.param("text/html", "attachment", id="html"),
        pytest.param("text/plain", "attachment", id="text"),
        pytest.param("application/pdf", "attachment", id="pdf"),
        pytest.param("application/octet-stream", "attachment", id="octet-stream"),
        pytest.param("application/xhtml+xml", "attachment", id="xhtml"),
        pytest.param("image", "attachment", id="no-subtype"),
        pytest.param("image/", "attachment", id="empty-subtype"),
        pytest.param("", "attachment", id="empty"),
        pytest.param("imagery/png", "attachment", id="lookalike-type"),
    ],
)
def test_disposition_type(mime_type: str, expected: str) -> None:
    assert disposition_type(mime_type) == expected


@pytest.mark.parametrize(
    ("filename", "mime_type", "expected"),
    [
        pytest.param(
            "photo.png",
            "image/png",
            "inline; filename=\"photo.png\"; filename*=UTF-8''photo.png",
            id="plain-ascii",
        ),
        pytest.param(
            "report.pdf",
            "application/pdf",
            "attachment; filename=\"report.pdf\"; filename*=UTF-8''report.pdf",
            id="attachment",
        ),
        pytest.param(
            "café.pdf",
            "application/pdf",
            "attachment; filename=\"cafe.pdf\"; filename*=UTF-8''caf%C3%A9.pdf",
            id="accent-folded-in-fallback",
        ),
        pytest.param(
            "日本語.pdf",
            "application/pdf",
            'attachment; filename="download.pdf"; '
            "filename*=UTF-8''%E6%97%A5%E6%9C%AC%E8%AA%9E.pdf",
            id="no-ascii-left",
        ),
        pytest.param(
            "日本語",
            "text/plain",
            "attachment; filename=\"download\"; filename*=UTF-8''%E6%97%A5%E6%9C%AC%E8%AA%9E",
            id="no-ascii-no-extension",
        ),
        pytest.param(
            "100% done.txt",
            "text/plain",
            "attachment; filename=\"100_ done.txt\"; filename*=UTF-8''100%25%20done.txt",
            id="percent-and-space",
        ),
        pytest.param(
            'say "hi".txt',
            "text/plain",
            "attachment; filename=\"say _hi_.txt\"; filename*=UTF-8''say%20%22hi%22.txt",
            id="quotes",
        ),
        pytest.param(
            "a;b,c.txt",
            "text/plain",
            "attachment; filename=\"a_b,c.txt\"; filename*=UTF-8''a%3Bb%2Cc.txt",
            id="semicolon-and-comma",
        ),
        pytest.param(
            "!#$&+^`~-_.bin",
            "application/octet-stream",
            "attachment; filename=\"download.bin\"; filename*=UTF-8''!#$&+^`~-_.bin",
            id="attr-chars-kept-literally",
        ),
    ],
)
def test_content_disposition(filename: str, mime_type: str, expected: str) -> None:
    assert content_disposition(filename, mime_type) == expected


@pytest.mark.parametrize(
    ("filename", "expected"),
    [
        pytest.param("photo.png", "photo.png", id="plain"),
        pytest.param("../../etc/passwd", "passwd", id="dot-dot-slash"),
        pytest.param("/etc/passwd", "passwd", id="absolute"),
        pytest.param("C:\\Users\\me\\evil.exe", "evil.exe", id="windows-path"),
        pytest.param("..\\..\\boot.ini", "boot.ini", id="dot-dot-backslash"),
        pytest.param("dir/", "download", id="trailing-slash"),
        pytest.param("", "download", id="empty"),
        pytest.param("   ", "download", id="blank"),
        pytest.param(".", "download", id="dot"),
        pytest.param("..", "download", id="dot-dot"),
        pytest.param("...", "download", id="dots"),
        pytest.param(".bashrc", ".bashrc", id="leading-dot-kept"),
        pytest.param("  name.txt  ", "name.txt", id="trimmed"),
        pytest.param("a\x00b.txt", "ab.txt", id="nul"),
        pytest.param("a\r\nb.txt", "ab.txt", id="crlf"),
        pytest.param("a\tb\x7f\x85c.txt", "abc.txt", id="tab-del-nel"),
        pytest.param("evil\r\nSet-Cookie: x=y.txt", "evilSet-Cookie: x=y.txt", id="injection"),
        pytest.param("photo\u202egpj.exe", "photogpj.exe", id="bidi-override"),
        pytest.param("zero\u200bwidth.txt", "zerowidth.txt", id="zero-width-space"),
        pytest.param("line\u2028sep.txt", "linesep.txt", id="line-separator"),
        pytest.param("\ud800lone.txt", "lone.txt", id="lone-surrogate"),
        pytest.param("cafe\u0301.txt", "café.txt", id="nfc-normalised"),
        pytest.param(None, "download", id="none"),
    ],
)
def test_safe_filename(filename: str, expected: str) -> None:
    assert safe_filename(filename) == expected


@pytest.mark.parametrize(
    ("filename", "expected_suffix"),
    [
        pytest.param("x" * 300 + ".txt", ".txt", id="ascii-keeps-extension"),
        pytest.param("é" * 200 + ".jpeg", ".jpeg", id="two-byte-chars"),
        pytest.param("日" * 100, "日", id="three-byte-chars-no-extension"),
        pytest.param("x" * 300 + "." + "y" * 40, "x", id="long-extension-not-kept"),
        pytest.param("😀" * 100 + ".png", ".png", id="four-byte-chars"),
    ],
)
def test_long_names_are_bounded(filename: str, expected_suffix: str) -> None:
    name = safe_filename(filename)
    assert len(name.encode("utf-8")) <= MAX_FILENAME_BYTES
    assert len(name.encode("utf-8")) > MAX_FILENAME_BYTES - 4  # cut at a character boundary
    assert name.endswith(expected_suffix)
    assert name[0] == filename[0]


@given(filename=st.text(max_size=300), mime_type=st.text(max_size=30))
def test_any_name_gives_one_valid_header(filename: str, mime_type: str) -> None:
    value = content_disposition(filename, mime_type)
    match = HEADER.fullmatch(value)
    assert match is not None, value
    name = unquote(match["encoded"], errors="strict")
    assert name == safe_filename(filename)
    assert name and "/" not in name and "\\" not in name
    assert len(name.encode("utf-8")) <= MAX_FILENAME_BYTES
    assert not any(ch in name for ch in "\r\n\x00")


@given(filename=st.text(min_size=1, max_size=80))
def test_a_user_agent_reads_back_the_safe_name(filename: str) -> None:
    # Werkzeug's parser (RFC 2231/8187-aware) stands in for a browser here.
    kind, params = parse_options_header(content_disposition(filename, "application/pdf"))
    assert kind == "attachment"
    assert params["filename"] == safe_filename(filename)
