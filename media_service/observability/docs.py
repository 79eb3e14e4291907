"""`/docs`: Swagger UI for the generated OpenAPI document, served entirely from this host.

The Swagger UI files come from the `flask-swagger-ui` package's `dist` folder (only its files
are used, not its blueprint, whose page starts Swagger UI from an inline script). Nothing is
loaded from a CDN: the page works offline and its Content-Security-Policy allows only 'self'.
"""

from __future__ import annotations

import importlib.util
from functools import cache
from pathlib import Path

from flask import Blueprint, Response, abort, send_from_directory, url_for
from markupsafe import escape

ASSETS_PACKAGE = "flask_swagger_ui"
# The files the page needs; nothing else in the package's folder is reachable.
ASSETS = frozenset({"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png"})
INIT_SCRIPT = "swagger-init.js"
ASSET_MAX_AGE = 24 * 3600

# Swagger UI styles elements inline and draws icons as data: URIs; everything else is 'self'.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)

# A file rather than an inline <script>, so the policy above can forbid inline scripts.
# validatorUrl null: otherwise Swagger UI sends the document to validator.swagger.io.
_INIT_JS = """\
window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.getAttribute("data-spec-url"),
    dom_id: "#swagger-ui",
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout"
  });
});
"""

_PAGE = """\
<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>{title}</title>
  <link rel="stylesheet" href="{css}">
  <link rel="icon" type="image/png" href="{icon}">
</head>
<body>
  <div id="swagger-ui" data-spec-url="{spec}"></div>
  <script src="{bundle}"></script>
  <script src="{init}"></script>
</body>
</html>
"""

blp = Blueprint("docs", __name__, url_prefix="/docs")


@cache
def assets_dir() -> Path | None:
    """The folder holding Swagger UI's files, or None if the package is not installed."""
    spec = importlib.util.find_spec(ASSETS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "dist"
    return folder if (folder / "swagger-ui-bundle.js").is_file() else None


@blp.get("", strict_slashes=False)
def page() -> Response:
    """The API documentation page."""
    if assets_dir() is None:
        abort(404)

    def asset(name: str) -> str:
        return str(escape(url_for("docs.asset", name=name)))

    html = _PAGE.format(
        title="Media API documentation",
        css=asset("swagger-ui.css"),
        icon=asset("favicon-32x32.png"),
        bundle=asset("swagger-ui-bundle.js"),
        init=asset(INIT_SCRIPT),
        spec=escape(url_for("api-docs.openapi_json")),
    )
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Cache-Control"] = "no-cache"
    return response


@blp.get("/assets/<name>")
def asset(name: str) -> Response:
    """One of Swagger UI's files, or the script that starts it."""
    folder = assets_dir()
    if name == INIT_SCRIPT:
        response = Response(_INIT_JS, mimetype="text/javascript")
        response.cache_control.public = True
        response.cache_control.max_age = ASSET_MAX_AGE
    elif name in ASSETS and folder is not None:
        response = send_from_directory(folder, name, max_age=ASSET_MAX_AGE)
    else:
        abort(404)
    response.headers["X-Content-Type-Options"] = "nosniff"
    return response
