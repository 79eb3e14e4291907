"""Every operation under /v3/media declares its authentication: none is open by omission."""

from __future__ import annotations

from typing import Any

from flask import Flask

from media_service.api.auth import AUTH_MARK, SECURITY

# Open on purpose: the OpenAPI document, and tus's OPTIONS (protocol discovery, no data).
OPEN = {("GET", "/v3/media/openapi.json"), ("OPTIONS", "/v3/media/uploads")}
OPEN_PREFIXES = ("OPTIONS /v3/media/uploads/",)


def test_every_media_route_declares_auth(app: Flask) -> None:
    undeclared = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/v3/media"):
            continue
        view = app.view_functions[rule.endpoint]
        for method in sorted((rule.methods or set()) - {"HEAD"}):
            route = f"{method} {rule.rule}"
            if (method, rule.rule) in OPEN or route.startswith(OPEN_PREFIXES):
                continue
            if method == "OPTIONS" and not getattr(view, AUTH_MARK, None):
                continue  # Flask's automatic OPTIONS answers no data
            if getattr(view, AUTH_MARK, None) not in ("required", "optional"):
                undeclared.append(route)
    assert undeclared == []


def test_the_openapi_document_states_each_operations_security(client: Any) -> None:
    spec = client.get("/v3/media/openapi.json").get_json()
    schemes = set(spec["components"]["securitySchemes"])
    assert {name for entry in SECURITY for name in entry} <= schemes
    operations = {
        (method.upper(), path): operation
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in {"get", "put", "post", "delete"}
    }
    assert operations
    for (method, path), operation in operations.items():
        assert operation.get("security"), (method, path)
    download = operations[("GET", "/v3/media/{item_id}")]
    assert {} in download["security"]  # anonymous downloads of public items
    assert {} not in operations[("GET", "/v3/media/{item_id}/info")]["security"]
