"""`/console`: a browser console for the Media API, served entirely from this host.

The page is static HTML; `console.js` does everything else through the public API with an
`Authorization` header it builds from what the user typed (kept in memory, see docs/design.md).
No cookies are set or read, so there is no CSRF surface. The policy below allows no inline
script or style, nothing from another origin, and media only from `blob:` URLs, which is how
audio plays: the script fetches the content with the header and hands `<audio>` an object URL.
"""

from __future__ import annotations

import hashlib
from functools import cache
from pathlib import Path

from flask import Blueprint, Response, abort, request, send_from_directory, url_for
from markupsafe import escape

ASSETS_DIR = Path(__file__).resolve().parents[1] / "static" / "console"
PAGE = "index.html"
# Files reachable under /console/assets/; nothing else in the folder is served.
ASSETS = frozenset({"console.css", "console.js"})
# Asset URLs carry a hash of their content, so a long lifetime never serves a stale file.
ASSET_MAX_AGE = 7 * 24 * 3600

CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src blob:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
    "frame-ancestors 'none'"
)

blp = Blueprint("console", __name__, url_prefix="/console")


@cache
def asset_version(name: str) -> str:
    """A short hash of an asset's bytes: its URL changes whenever its content does."""
    return hashlib.sha256((ASSETS_DIR / name).read_bytes()).hexdigest()[:16]


@cache
def _page_template() -> str:
    return (ASSETS_DIR / PAGE).read_text(encoding="utf-8")


def _asset_url(name: str) -> str:
    return str(escape(url_for("console.asset", name=name, v=asset_version(name))))


def _harden(response: Response) -> Response:
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["X-Frame-Options"] = "DENY"
    return response


@blp.get("", strict_slashes=False)
def page() -> Response:
    """The console's single page."""
    html = (
        _page_template()
        .replace("{{ stylesheet }}", _asset_url("console.css"))
        .replace("{{ script }}", _asset_url("console.js"))
        .replace("{{ api }}", str(escape(url_for("media.search"))))
    )
    response = Response(html, mimetype="text/html")
    response.cache_control.no_cache = True
    response.set_etag(hashlib.sha256(html.encode()).hexdigest()[:32])
    response.make_conditional(request)
    return _harden(response)


@blp.get("/assets/<name>")
def asset(name: str) -> Response:
    """The console's stylesheet or script, with an ETag and a long lifetime."""
    if name not in ASSETS:
        abort(404)
    response = send_from_directory(ASSETS_DIR, name, max_age=ASSET_MAX_AGE)
    response.cache_control.public = True
    if name.endswith(".js"):
        response.mimetype = "text/javascript"
    return _harden(response)
