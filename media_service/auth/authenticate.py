"""Turn a request's credentials (header and `jwt-token` query parameter) into a Principal.

Framework-free: the views pass `request.headers.get("Authorization")` and
`request.args.get("jwt-token")`. Decisions beyond SPEC §2:

* No credentials at all gives None; the caller decides whether they were needed (`require`).
  Anything present must be valid, even where no credentials are needed: an empty
  `Authorization` header or an empty `jwt-token` parameter is 401, not anonymous.
* Basic together with a JWT (header or query) is 400.
* A Bearer header and a `jwt-token` parameter carrying the *same* token are accepted (a client
  that adds both is not ambiguous); different tokens are 400, since we would have to pick one.
* Scheme names are case-insensitive (RFC 9110 §11.1); unknown schemes are 401.
"""

from __future__ import annotations

from media_service.auth.basic import verify_basic
from media_service.auth.principal import Principal
from media_service.auth.tokens import verify_jwt
from media_service.errors import BadRequest, Forbidden, Unauthorized
from media_service.storage.interfaces import CredentialStore

BOTH_SCHEMES = "use either Basic or JWT authentication, not both"
TWO_TOKENS = "the Authorization header and the jwt-token parameter carry different tokens"


def authenticate(
    authorization: str | None, jwt_query: str | None, credentials: CredentialStore
) -> Principal | None:
    """Return who is asking, None without credentials; raise Unauthorized/BadRequest if invalid."""
    if authorization is None:
        if jwt_query is None:
            return None
        return _verify_bearer(jwt_query, credentials)
    scheme, param = _split_authorization(authorization)
    if scheme == "basic":
        if jwt_query is not None:
            raise BadRequest(BOTH_SCHEMES)
        return verify_basic(param, credentials)
    if scheme == "bearer":
        if jwt_query is not None and jwt_query.strip() != param:
            raise BadRequest(TWO_TOKENS)
        return _verify_bearer(param, credentials)
    raise Unauthorized("unsupported authorization scheme; use Basic or Bearer")


def require(principal: Principal | None) -> Principal:
    """Return `principal`, or raise Unauthorized when the request carried no credentials."""
    if principal is None:
        raise Unauthorized("authentication required")
    return principal


def check_acl(principal: Principal, method: str, path: str) -> None:
    """Raise Forbidden when the principal's JWT acl does not admit `method` on `path`."""
    if principal.acl is not None and not principal.acl.allows(method, path):
        raise Forbidden(f"the token's acl does not allow {method.upper()} {path}")


def _split_authorization(authorization: str) -> tuple[str, str]:
    """Split `Scheme param` into (lower-cased scheme, stripped param)."""
    parts = authorization.strip().split(None, 1)
    if not parts:
        raise Unauthorized("empty Authorization header")
    scheme = parts[0].lower()
    param = parts[1].strip() if len(parts) > 1 else ""
    return scheme, param


def _verify_bearer(token: str, credentials: CredentialStore) -> Principal:
    token = token.strip()
    if not token:
        raise Unauthorized("empty bearer token")
    return verify_jwt(token, credentials)
