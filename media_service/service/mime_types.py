"""An upload's media type: declared by the client, sniffed from its first bytes, or guessed."""

from __future__ import annotations

import mimetypes

import puremagic

from media_service.schemas.fields import normalise_mime_type

DEFAULT_MIME_TYPE = "application/octet-stream"


def choose_mime_type(part_content_type: str | None, head: bytes, file_name: str) -> str:
    """The part's type when specific, else sniffed from the bytes, else from the name (SPEC §1)."""
    declared = normalise_mime_type(part_content_type) if part_content_type else None
    if declared and declared.split(";")[0] not in ("application/octet-stream", "*/*"):
        return declared
    sniffed = _sniff(head)
    if sniffed:
        return sniffed
    guessed, _ = mimetypes.guess_type(file_name, strict=False)
    if guessed and normalise_mime_type(guessed):
        return guessed
    return DEFAULT_MIME_TYPE


def _sniff(head: bytes) -> str | None:
    if not head:
        return None
    try:
        matches = puremagic.magic_string(head)
    except (puremagic.PureError, ValueError):
        return None
    for match in matches:
        if match.mime_type and normalise_mime_type(match.mime_type):
            return normalise_mime_type(match.mime_type)
    return None
