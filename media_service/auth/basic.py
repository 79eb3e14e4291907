"""HTTP Basic authentication: `Authorization: Basic base64(api_key:api_secret)`.

Secrets are stored as salted HMAC-SHA256 digests (see `media_service.auth.secrets` for why a fast
keyed hash is right here). An unknown key and a wrong secret go through the same code path and
cost, and fail with the same detail, so neither answers nor timing tell which keys exist.
"""

from __future__ import annotations

import base64
import binascii

from media_service.auth.principal import Principal
from media_service.auth.secrets import generate_secret, hash_secret, verify_secret
from media_service.errors import Unauthorized
from media_service.storage.interfaces import CredentialStore

MAX_CREDENTIALS_LENGTH = 4096  # base64 text; far above any real key:secret pair

MALFORMED = "malformed Basic credentials"
INVALID = "invalid API key or secret"
DISABLED = "account disabled"

# Verified against when the key is unknown, so that path costs what a wrong secret costs.
# The dummy secret is random and discarded: nothing can ever match it.
_DUMMY_SALT, _DUMMY_DIGEST = hash_secret(generate_secret())


def parse_basic_credentials(encoded: str) -> tuple[str, str]:
    """Decode the text after `Basic ` into (api_key, secret); raise Unauthorized if malformed."""
    encoded = encoded.strip()
    if not encoded or len(encoded) > MAX_CREDENTIALS_LENGTH:
        raise Unauthorized(MALFORMED)
    try:
        decoded = base64.b64decode(encoded, validate=True).decode("utf-8")
    except (binascii.Error, ValueError):  # bad base64 or not UTF-8 (UnicodeDecodeError)
        raise Unauthorized(MALFORMED) from None
    api_key, colon, api_secret = decoded.partition(":")
    if not colon or not api_key:
        raise Unauthorized(MALFORMED)
    return api_key, api_secret


def verify_basic(encoded: str, credentials: CredentialStore) -> Principal:
    """Authenticate the text after `Basic ` against the store; raise Unauthorized if invalid."""
    api_key, api_secret = parse_basic_credentials(encoded)
    account = credentials.get_account(api_key)
    if account is None:
        salt, digest = _DUMMY_SALT, _DUMMY_DIGEST
    else:
        salt, digest = account.secret_salt, account.secret_digest
    matches = verify_secret(api_secret, salt, digest)
    if account is None or not matches:
        raise Unauthorized(INVALID)
    if not account.enabled:
        # Only said to a caller who proved knowledge of the secret.
        raise Unauthorized(DISABLED)
    return Principal(account_id=account.api_key, application_id=None, scheme="basic")
