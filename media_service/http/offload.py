"""Decide whether a planned download may be handed to another server (S3 or nginx).

The service evaluates authorisation, preconditions and the Range, counts, and then lets S3
(a 302 to a presigned URL) or nginx (X-Accel-Redirect) send the bytes. That server sees the
client's own Range and conditional headers again and evaluates them by its own rules and
validators, not ours (S3's ETag of a multipart object is not the MD5, nginx's is built from the
file's mtime). A download is handed over only where what that server sends provably is what the
service planned; any other request is streamed by the service, as without offloading, so that
neither the bytes nor the count differ between the modes:

* no If-Match, If-Unmodified-Since or If-Range (they would be evaluated again, differently);
  If-None-Match and If-Modified-Since are harmless: the service has already decided they do
  not hold (S3 compares them with validators that are the same or newer; nginx's own checks
  are turned off in the accel location);
* either no Range (the plan is 200), or one plain `bytes=a-b|a-|-n` range that the plan answers
  with 206: several ranges are coalesced here, but ignored by S3 and answered multipart by nginx.

A presigned URL for a counted plan (200, or a range from byte 0) is unrestricted: the download
is paid for. For an uncounted range the URL is signed together with the client's Range header,
so that S3 refuses it without exactly that header: it cannot fetch the whole object uncounted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from media_service.http.conditional import DownloadPlan, HeaderSource

# One range of the three forms; no spaces, no list: what every parser reads the same way.
_PLAIN_RANGE = re.compile(r"bytes=(?:[0-9]{1,19}-[0-9]{0,19}|-[0-9]{1,19})")
_REEVALUATED = ("If-Match", "If-Unmodified-Since", "If-Range")


@dataclass(frozen=True)
class Redirect:
    """A presigned 302: counted or not, and the Range header its URL is bound to (if any)."""

    counted: bool
    signed_range: str | None = None


def counts(plan: DownloadPlan) -> bool:
    """Whether sending `plan` counts as a download: a 200, or a range from byte 0."""
    return plan.status == 200 or (plan.status == 206 and plan.start == 0)


def offloadable(plan: DownloadPlan, headers: HeaderSource) -> bool:
    """Whether S3 or nginx, handed this request, sends exactly `plan` (a 200 or a 206)."""
    if any(_header(headers, name) is not None for name in _REEVALUATED):
        return False
    byte_range = _header(headers, "Range")
    if byte_range is None:
        return plan.status == 200
    return plan.status == 206 and _PLAIN_RANGE.fullmatch(byte_range) is not None


def presigned_redirect(plan: DownloadPlan, headers: HeaderSource) -> Redirect | None:
    """How to redirect a GET answered with `plan` to S3, or None to stream it here instead."""
    if not offloadable(plan, headers):
        return None
    if counts(plan):
        return Redirect(counted=True)
    return Redirect(counted=False, signed_range=_header(headers, "Range"))


def _header(headers: HeaderSource, name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, candidate in headers.items():
            if isinstance(key, str) and key.lower() == lowered:
                return candidate
    return value
