"""JWT authentication (RS256 only) and token/key creation for the CLI and tests.

A token acts for one application: its `application_id` claim names the application, whose public
keys (several while a key is rotated) must verify the RS256 signature. Time rules (SPEC §2):

* `iat` is required unless `exp` is present; a future `iat` (beyond the leeway) is refused;
* without `exp` a token is valid for DEFAULT_TTL (15 min) after `iat`;
* no token is honoured more than MAX_AGE (24 h) after `iat`, whatever its `exp`; a token with
  `exp` but no `iat` is refused when `exp` lies more than MAX_AGE ahead, the only way to keep
  that bound without knowing when it was issued;
* `nbf` is honoured; `jti` is accepted even when repeated (official clients reuse it).

pyjwt checks the header and the signature (algorithms pinned); the time claims are checked here,
against an injectable `now`, so the rules above are exact and testable.
"""

from __future__ import annotations

import functools
import logging
import math
import time
import uuid
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from media_service.auth.acl import Acl, parse_acl
from media_service.auth.principal import Principal
from media_service.errors import Unauthorized
from media_service.schemas.fields import is_utf8_encodable
from media_service.storage.interfaces import CredentialStore

log = logging.getLogger(__name__)

ALGORITHM = "RS256"
ALGORITHMS = [ALGORITHM]  # pinned: never derived from the token (alg confusion, alg: none)
DEFAULT_TTL = 15 * 60
MAX_AGE = 24 * 60 * 60
MAX_LEEWAY = 60
MAX_TOKEN_LENGTH = 16 * 1024  # real tokens are < 2 kB; refuse before any parsing work
MAX_APPLICATION_ID_LENGTH = 100
MIN_KEY_BITS = 2048
MAX_KEY_BITS = 8192  # bigger keys only make each verification slower

_DECODE_OPTIONS: Any = {
    "verify_signature": True,
    # Time claims are checked by _check_times against the injectable `now`.
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    # We issue no audience or issuer; Vonage tokens carry neither.
    "verify_aud": False,
    "verify_iss": False,
    "require": [],
    "enforce_minimum_key_length": True,
}

# pyjwt wraps its parse errors in PyJWTError; the rest are belt and braces for older releases,
# because no token, however malformed, may turn into a 500.
_TOKEN_ERRORS = (jwt.PyJWTError, ValueError, TypeError, RecursionError)


def _invalid(reason: str) -> Unauthorized:
    # Never echo the token (or parts of it) back: it is a bearer credential.
    return Unauthorized(f"invalid token: {reason}")


# --------------------------------------------------------------------------- verification


def verify_jwt(
    token: str,
    credentials: CredentialStore,
    *,
    now: float | None = None,
    leeway: int = MAX_LEEWAY,
) -> Principal:
    """Authenticate a bearer JWT against its application's keys; raise Unauthorized if invalid."""
    if not 0 <= leeway <= MAX_LEEWAY:
        raise ValueError(f"leeway must be between 0 and {MAX_LEEWAY} seconds")
    now = time.time() if now is None else now
    if not token or len(token) > MAX_TOKEN_LENGTH:
        raise _invalid("malformed token")
    application_id = _unverified_application_id(token)
    application = credentials.get_application(application_id)
    if application is None or not application.enabled:
        raise _invalid("unknown or disabled application")
    account = credentials.get_account(application.api_key)
    if account is None or not account.enabled:
        # Disabling an account must also stop its applications' tokens.
        raise _invalid("unknown or disabled application")
    claims = _verified_claims(token, application.public_keys)
    _check_times(claims, now, leeway)
    return Principal(
        account_id=application.api_key,
        application_id=application.application_id,
        scheme="jwt",
        acl=_acl(claims),
    )


def _unverified_application_id(token: str) -> str:
    """Read `application_id` without verifying: only to find which keys to verify with."""
    try:
        header = jwt.get_unverified_header(token)
    except _TOKEN_ERRORS:
        raise _invalid("malformed token") from None
    if header.get("alg") != ALGORITHM:
        # Checked again (pinned) while verifying; refusing here spares a store lookup.
        raise _invalid(f"only {ALGORITHM} tokens are accepted")
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except _TOKEN_ERRORS:
        raise _invalid("malformed token") from None
    if not _all_text_encodable(claims):
        # JSON escapes such as \ud800 decode to lone surrogates, which no store can look up and
        # no log can write: refused here, before any claim is used.
        raise _invalid("malformed token")
    application_id = claims.get("application_id")
    if (
        not isinstance(application_id, str)
        or not application_id
        or len(application_id) > MAX_APPLICATION_ID_LENGTH
    ):
        raise _invalid("missing or malformed application_id")
    return application_id


def _all_text_encodable(value: object) -> bool:
    """Tell whether every string in a decoded JSON value (names too) is valid UTF-8 text."""
    pending = [value]  # iterative: a deeply nested claim must not exhaust the stack
    while pending:
        current = pending.pop()
        if isinstance(current, str):
            if not is_utf8_encodable(current):
                return False
        elif isinstance(current, dict):
            pending.extend(current.keys())
            pending.extend(current.values())
        elif isinstance(current, list):
            pending.extend(current)
    return True


def _verified_claims(token: str, public_keys: tuple[str, ...]) -> dict[str, Any]:
    """Return the claims once one of `public_keys` verifies the signature."""
    for pem in public_keys:
        key = _load_verifying_key(pem)
        if key is None:
            continue
        try:
            claims: dict[str, Any] = jwt.decode(
                token, key, algorithms=ALGORITHMS, options=_DECODE_OPTIONS
            )
            return claims
        except jwt.InvalidSignatureError:
            continue  # maybe signed with another of the application's keys (rotation)
        except _TOKEN_ERRORS:
            # Anything else (bad alg, bad jti/sub type, ...) does not depend on the key.
            raise _invalid("malformed token") from None
    raise _invalid("signature verification failed")


@functools.lru_cache(maxsize=1024)
def _load_verifying_key(pem: str) -> rsa.RSAPublicKey | None:
    """Parse a stored PEM once per process; None when it is not a usable RSA key."""
    try:
        return _load_rsa_public_key(pem)
    except ValueError:
        # A corrupt stored key must not break the application's other keys.
        log.warning("ignoring an unusable public key (not an RSA key of %d+ bits)", MIN_KEY_BITS)
        return None


def _numeric_claim(claims: dict[str, Any], name: str) -> float | None:
    if name not in claims:
        return None
    value = claims[name]
    # bool is an int in Python, and json accepts NaN/Infinity: refuse both.
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _invalid(f"{name} must be a number")
    if isinstance(value, float) and not math.isfinite(value):
        raise _invalid(f"{name} must be a number")
    return value


def _check_times(claims: dict[str, Any], now: float, leeway: int) -> None:
    """Apply the module's time rules; raise Unauthorized when the token is not valid at `now`."""
    iat = _numeric_claim(claims, "iat")
    exp = _numeric_claim(claims, "exp")
    nbf = _numeric_claim(claims, "nbf")
    if iat is None and exp is None:
        raise _invalid("iat or exp is required")
    if iat is not None and iat > now + leeway:
        raise _invalid("issued in the future")
    if nbf is not None and nbf > now + leeway:
        raise _invalid("not yet valid")
    if iat is not None:
        expires = min(exp if exp is not None else iat + DEFAULT_TTL, iat + MAX_AGE)
    else:
        assert exp is not None  # guaranteed above; for the type checker
        if exp > now + MAX_AGE + leeway:
            raise _invalid(f"exp without iat may not lie more than {MAX_AGE} s ahead")
        expires = exp
    if expires <= now - leeway:
        raise _invalid("expired")


def _acl(claims: dict[str, Any]) -> Acl | None:
    if "acl" not in claims:
        return None
    try:
        return parse_acl(claims["acl"])
    except ValueError:
        raise _invalid("malformed acl") from None


# --------------------------------------------------------------------------- creation


def make_token(
    application_id: str,
    private_key_pem: str | bytes,
    *,
    ttl: int | None = DEFAULT_TTL,
    acl: dict[str, Any] | None = None,
    now: float | None = None,
    jti: str | None = None,
) -> str:
    """Sign an RS256 token for `application_id` (no `exp` when ttl is None)."""
    if ttl is not None and ttl <= 0:
        raise ValueError("ttl must be a positive number of seconds")
    if acl is not None:
        parse_acl(acl)  # refuse to mint a token the service would reject
    iat = int(time.time() if now is None else now)
    claims: dict[str, Any] = {
        "application_id": application_id,
        "iat": iat,
        "jti": jti if jti is not None else str(uuid.uuid4()),
    }
    if ttl is not None:
        claims["exp"] = iat + ttl
    if acl is not None:
        claims["acl"] = acl
    return jwt.encode(claims, _load_rsa_private_key(private_key_pem), algorithm=ALGORITHM)


def generate_rsa_keypair() -> tuple[str, str]:
    """Return a new 2048-bit (private PKCS#8 PEM, public SubjectPublicKeyInfo PEM) pair."""
    private_key = rsa.generate_private_key(public_exponent=65537, key_size=MIN_KEY_BITS)
    private_pem = private_key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode("ascii")
    return private_pem, _public_pem(private_key.public_key())


def public_key_from_private(private_key_pem: str | bytes) -> str:
    """Return the SubjectPublicKeyInfo PEM of an RSA private key PEM."""
    return _public_pem(_load_rsa_private_key(private_key_pem).public_key())


def validate_public_key_pem(pem: str) -> str:
    """Return `pem` normalised to SubjectPublicKeyInfo; raise ValueError unless RSA >= 2048 bits."""
    return _public_pem(_load_rsa_public_key(pem))


def _public_pem(key: rsa.RSAPublicKey) -> str:
    return key.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


def _load_rsa_public_key(pem: str | bytes) -> rsa.RSAPublicKey:
    data = pem.encode("utf-8") if isinstance(pem, str) else pem
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnicodeError) as exc:
        raise ValueError("not a PEM public key") from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("not an RSA public key")
    if not MIN_KEY_BITS <= key.key_size <= MAX_KEY_BITS:
        raise ValueError(f"RSA keys must have {MIN_KEY_BITS} to {MAX_KEY_BITS} bits")
    return key


def _load_rsa_private_key(pem: str | bytes) -> rsa.RSAPrivateKey:
    return _load_rsa_private_key_bytes(pem.encode("utf-8") if isinstance(pem, str) else pem)


# Loading checks the RSA key's consistency, which costs tens of milliseconds; scripts and tests
# sign many tokens with the same key.
@functools.lru_cache(maxsize=16)
def _load_rsa_private_key_bytes(data: bytes) -> rsa.RSAPrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError, UnicodeError) as exc:
        raise ValueError("not an unencrypted PEM private key") from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValueError("not an RSA private key")
    if key.key_size < MIN_KEY_BITS:
        raise ValueError(f"RSA keys must have at least {MIN_KEY_BITS} bits")
    return key
