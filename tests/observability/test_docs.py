"""/docs serves Swagger UI from this host only, for a valid OpenAPI document."""

from __future__ import annotations

from html.parser import HTMLParser
from urllib.parse import urljoin, urlsplit

import pytest
from flask.testing import FlaskClient
from openapi_spec_validator import validate

from media_service.observability.docs import INIT_SCRIPT

# The page does not depend on the backends: one pair is enough.
pytestmark = pytest.mark.parametrize("backends", ["sqlite-files"], indirect=True)


class _References(HTMLParser):
    """Every URL the page makes a browser fetch or follow: src, href, and our data-spec-url."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("src", "href", "data-spec-url", "action", "poster") and value is not None:
                self.urls.append(value)


def _references(html: str) -> list[str]:
    parser = _References()
    parser.feed(html)
    parser.close()
    return parser.urls


@pytest.mark.parametrize("path", ["/docs", "/docs/"])
def test_docs_page_loads_only_local_resources(client: FlaskClient, path: str) -> None:
    with client.get(path) as page:  # no credentials
        assert page.status_code == 200
        assert page.mimetype == "text/html"
        html = page.get_data(as_text=True)
        policy = page.headers["Content-Security-Policy"]

    urls = _references(html)
    assert len(urls) >= 4  # stylesheet, icon, bundle, start-up script (and the spec)
    for url in urls:
        parts = urlsplit(url)
        assert not parts.scheme and not parts.netloc, f"external reference: {url}"
        assert not url.startswith("//")
        with client.get(urljoin("http://localhost" + path, url)) as response:
            assert response.status_code == 200, url
            assert response.get_data()  # not empty

    assert "<script>" not in html  # no inline script: the policy forbids them
    assert "http" not in policy and "*" not in policy
    assert "script-src 'self'" in policy and "default-src 'none'" in policy


def test_swagger_ui_is_pointed_at_our_document_and_no_validator(client: FlaskClient) -> None:
    with client.get("/docs") as page:
        assert 'data-spec-url="/v3/media/openapi.json"' in page.get_data(as_text=True)
    with client.get(f"/docs/assets/{INIT_SCRIPT}") as script:
        assert script.mimetype == "text/javascript"
        text = script.get_data(as_text=True)
    assert "validatorUrl: null" in text  # else Swagger UI posts the document to swagger.io
    assert "http" not in text


@pytest.mark.parametrize(
    "name",
    ["nope.js", "..%2f__init__.py", "LICENSE", "oauth2-redirect.html", "%2e%2e%2fdist"],
)
def test_only_the_listed_assets_are_served(client: FlaskClient, name: str) -> None:
    with client.get(f"/docs/assets/{name}") as response:
        assert response.status_code == 404
        assert response.mimetype == "application/problem+json"


def test_assets_are_cacheable_and_not_sniffed(client: FlaskClient) -> None:
    with client.get("/docs/assets/swagger-ui-bundle.js") as response:
        assert response.status_code == 200
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.cache_control.max_age == 24 * 3600
        response.get_data()


def test_openapi_document_is_valid(client: FlaskClient) -> None:
    with client.get("/v3/media/openapi.json") as response:
        assert response.status_code == 200
        document = response.get_json()
    validate(document)
    assert "/metrics" not in document["paths"] and "/docs" not in document["paths"]
