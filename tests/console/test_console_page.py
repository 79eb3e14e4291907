"""/console: a static page and two assets, all local, under a strict policy, with no cookies.

What the page does in a browser is tested in tests/browser (chromium); here: the headers, the
references and the rules the script keeps, which need no browser.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest
from flask.testing import FlaskClient

from media_service.api.console import ASSETS_DIR, CONTENT_SECURITY_POLICY

# The page does not depend on the backends: one pair is enough.
one_backend = pytest.mark.parametrize("backends", ["sqlite-files"], indirect=True)


class _Page(HTMLParser):
    """The URLs the page makes a browser load, and whether anything runs inline."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self.inline_styles = 0
        self.handlers: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        for name, value in attrs:
            if name in ("src", "href", "action", "poster") and value is not None:
                self.urls.append(value)
            if name.startswith("on"):
                self.handlers.append(name)
            if name == "style":
                self.inline_styles += 1
        if tag == "script":
            self._in_script = "src" not in named
        if tag == "style":
            self.inline_styles += 1

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts += 1


def _parse(html: str) -> _Page:
    parser = _Page()
    parser.feed(html)
    parser.close()
    return parser


@one_backend
@pytest.mark.parametrize("path", ["/console", "/console/"])
def test_page_loads_only_local_resources_under_a_strict_policy(
    client: FlaskClient, path: str
) -> None:
    with client.get(path) as page:  # no credentials needed for the page itself
        assert page.status_code == 200
        assert page.mimetype == "text/html"
        html = page.get_data(as_text=True)
        headers = page.headers

    assert headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert "Set-Cookie" not in headers
    assert "no-cache" in headers["Cache-Control"]

    parsed = _parse(html)
    assert parsed.inline_scripts == 0 and parsed.handlers == [] and parsed.inline_styles == 0
    assets = [url for url in parsed.urls if not url.startswith("data:")]
    assert len(assets) == 2  # the stylesheet and the script
    for url in assets:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc and not url.startswith("//"), url
        with client.get(urljoin("http://localhost" + path, url)) as response:
            assert response.status_code == 200, url
            assert response.get_data()
            assert response.headers["X-Content-Type-Options"] == "nosniff"
            assert "Set-Cookie" not in response.headers
    assert 'data-api="/v3/media"' in html


def test_policy_forbids_inline_code_foreign_origins_and_framing() -> None:
    directives = dict(
        (part.split()[0], part.split()[1:]) for part in CONTENT_SECURITY_POLICY.split("; ")
    )
    assert directives["default-src"] == ["'none'"]
    assert directives["script-src"] == ["'self'"]
    assert directives["style-src"] == ["'self'"]
    assert directives["media-src"] == ["blob:"]
    assert directives["connect-src"] == ["'self'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert directives["base-uri"] == ["'none'"] and directives["form-action"] == ["'none'"]
    assert "unsafe" not in CONTENT_SECURITY_POLICY and "*" not in CONTENT_SECURITY_POLICY


@one_backend
def test_assets_are_versioned_cached_and_revalidated(client: FlaskClient) -> None:
    html = client.get("/console").get_data(as_text=True)
    script = re.search(r'src="([^"]+console\.js[^"]*)"', html)
    assert script is not None
    url = script.group(1).replace("&amp;", "&")
    assert "?v=" in url  # the content hash: a new file gets a new URL

    with client.get(url) as first:
        assert first.status_code == 200
        assert first.mimetype == "text/javascript"
        assert first.headers["ETag"]
        assert "max-age=" in first.headers["Cache-Control"]
        assert "public" in first.headers["Cache-Control"]
        etag = first.headers["ETag"]
    with client.get(url, headers={"If-None-Match": etag}) as again:
        assert again.status_code == 304

    page_etag = client.get("/console").headers["ETag"]
    assert client.get("/console", headers={"If-None-Match": page_etag}).status_code == 304


@one_backend
@pytest.mark.parametrize(
    "name", ["index.html", "../api/console.py", "nothing.js", "%2e%2e%2fconsole.py"]
)
def test_only_the_known_assets_are_served(client: FlaskClient, name: str) -> None:
    with client.get(f"/console/assets/{name}") as response:
        assert response.status_code == 404
        assert response.mimetype == "application/problem+json"


def test_the_script_never_builds_markup_from_strings() -> None:
    """Every stored string reaches the page as text: the script has no HTML sinks at all."""
    source = (ASSETS_DIR / "console.js").read_text(encoding="utf-8")
    code = "\n".join(line for line in source.splitlines() if not line.lstrip().startswith("//"))
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert sink not in code, sink
    assert "new Function" not in code
    # Credentials never go to cookies or localStorage, and never into a URL.
    assert "document.cookie" not in code and "localStorage" not in code
    assert "jwt-token" not in code
    assert 'credentials: "omit"' in code


def test_ci_runs_the_browser_tests_after_installing_chromium() -> None:
    """`make test` leaves the browser tests out; `make test-backends` installs chromium and runs
    them (a skip fails it), so they cannot silently stop running in CI."""
    import tomllib

    from realservers import pins
    from realservers.__main__ import REAL_MARKERS
    from realservers.install import INSTALLERS
    from tests.browser.conftest import CHROMEDRIVER, CHROMIUM

    assert "browser" in REAL_MARKERS.split(" or ")
    assert "chromium" in INSTALLERS
    assert {"chromium", "chromium-driver"} <= set(pins.CHROMIUM_PACKAGES)
    assert {str(CHROMIUM), str(CHROMEDRIVER)} == set(pins.CHROMIUM_BINARIES)
    config = tomllib.loads((ASSETS_DIR.parents[2] / "pyproject.toml").read_text())
    options = config["tool"]["pytest"]["ini_options"]
    assert "-m 'not browser'" in options["addopts"]
    assert any(marker.startswith("browser:") for marker in options["markers"])


def test_the_script_speaks_the_servers_tus_version_on_this_origin() -> None:
    """The console's tus client names the version and path the server serves, and reduces the
    URLs the server hands back to paths, so connect-src 'self' always allows them."""
    from media_service.api.tus import OFFSET_TYPE, TUS_VERSION

    source = (ASSETS_DIR / "console.js").read_text(encoding="utf-8")
    assert f'const TUS_VERSION = "{TUS_VERSION}";' in source
    assert 'const TUS_PATH = API + "/uploads";' in source
    assert f'"Content-Type", "{OFFSET_TYPE}"' in source
    assert source.count("sameOriginPath(") >= 3  # its definition, Location, Media-Location
