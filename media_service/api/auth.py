"""Declarative authentication for views: `@auth_required` and `@auth_optional`.

Each decorator authenticates the request (invalid credentials are always 401), applies the JWT
ACL, hands the view its `principal` as a keyword argument, and declares the operation's
security in the OpenAPI document. A view under /v3/media without one of them is refused by a
test (tests/api/test_auth_declared.py), so no endpoint can be opened by forgetting a call.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

from flask import g, request
from flask_smorest import Blueprint

from media_service.auth import Principal, authenticate, check_acl, require
from media_service.context import app_state

View = TypeVar("View", bound=Callable[..., Any])

#: The schemes every authenticated operation accepts (components.securitySchemes in factory.py).
SECURITY: list[dict[str, list[str]]] = [{"basicAuth": []}, {"bearerAuth": []}, {"jwtQuery": []}]
#: What each decorator marks its view with, for the test that every route declares one.
AUTH_MARK = "_media_auth"


def auth_required(view: View) -> View:
    """The view needs a principal: no credentials is 401."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return view(*args, principal=require(_authenticated()), **kwargs)

    setattr(wrapper, AUTH_MARK, "required")
    return Blueprint.doc(security=SECURITY)(wrapper)  # type: ignore[no-any-return]


def auth_optional(view: View) -> View:
    """The view also answers anonymous requests (public downloads): `principal` may be None."""

    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return view(*args, principal=_authenticated(), **kwargs)

    setattr(wrapper, AUTH_MARK, "optional")
    return Blueprint.doc(security=[*SECURITY, {}])(wrapper)  # type: ignore[no-any-return]


def _authenticated() -> Principal | None:
    """Authenticate if credentials were sent, then apply the ACL; remembered for the access log."""
    principal = authenticate(
        request.headers.get("Authorization"),
        request.args.get("jwt-token"),
        app_state().backends.credentials,
    )
    if principal is not None:
        check_acl(principal, request.method, request.path)
    g.principal = principal
    return principal
