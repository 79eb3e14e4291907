"""API secrets: generated, hashed with a per-account salt, verified in constant time.

Why a fast keyed hash (HMAC-SHA256) and not bcrypt/scrypt/argon2: Basic auth sends the secret
on every request, so a deliberately slow hash (tens of milliseconds) would turn each request
into a CPU-burning opportunity for anyone, a denial-of-service vector. Slow hashes exist to make
offline guessing of *low-entropy human passwords* expensive after a database leak. Our secrets
are not human passwords: generated ones carry 192 random bits, and user-supplied ones must be at
least MIN_SECRET_LENGTH characters (Vonage's own secrets are 16 characters; 16 random
alphanumerics are ~95 bits). Against that entropy floor, exhausting the space is infeasible
however fast each guess is, so a fast hash loses nothing. The per-account random salt keys the
HMAC, so equal secrets hash differently and precomputed tables are useless.

Do NOT reuse this for human-chosen passwords: a dictionary attack on a leaked HMAC digest runs
at billions of guesses per second.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

SALT_BYTES = 16
MIN_SECRET_LENGTH = 16  # the entropy floor that makes a fast hash safe (see above)
MAX_SECRET_LENGTH = 256  # keeps Basic headers and stored input bounded


def generate_secret() -> str:
    """Return a new random API secret (32 URL-safe characters, 192 bits)."""
    return secrets.token_urlsafe(24)


def _digest(secret: str, salt: bytes) -> bytes:
    # surrogatepass: a str with lone surrogates must fail to match, not raise.
    return hmac.new(salt, secret.encode("utf-8", "surrogatepass"), hashlib.sha256).digest()


def hash_secret(secret: str) -> tuple[bytes, bytes]:
    """Return (salt, digest) for storing `secret`; raise ValueError if it is too short or long."""
    if len(secret) < MIN_SECRET_LENGTH:
        # Below the floor a leaked digest could be brute-forced: see the module docstring.
        raise ValueError(f"API secrets must be at least {MIN_SECRET_LENGTH} characters long")
    if len(secret) > MAX_SECRET_LENGTH:
        raise ValueError(f"API secrets must be at most {MAX_SECRET_LENGTH} characters long")
    salt = secrets.token_bytes(SALT_BYTES)
    return salt, _digest(secret, salt)


def verify_secret(secret: str, salt: bytes, digest: bytes) -> bool:
    """Tell whether `secret` matches the stored salt and digest, in constant time."""
    return hmac.compare_digest(_digest(secret, bytes(salt)), bytes(digest))
