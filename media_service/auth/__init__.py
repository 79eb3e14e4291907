"""Who is asking and what they may touch: Basic and JWT authentication, JWT ACLs."""

from media_service.auth.acl import Acl, AclRule, parse_acl
from media_service.auth.authenticate import authenticate, check_acl, require
from media_service.auth.basic import parse_basic_credentials, verify_basic
from media_service.auth.principal import Principal
from media_service.auth.secrets import (
    MIN_SECRET_LENGTH,
    generate_secret,
    hash_secret,
    verify_secret,
)
from media_service.auth.tokens import (
    generate_rsa_keypair,
    make_token,
    public_key_from_private,
    validate_public_key_pem,
    verify_jwt,
)

__all__ = [
    "MIN_SECRET_LENGTH",
    "Acl",
    "AclRule",
    "Principal",
    "authenticate",
    "check_acl",
    "generate_rsa_keypair",
    "generate_secret",
    "hash_secret",
    "make_token",
    "parse_acl",
    "parse_basic_credentials",
    "public_key_from_private",
    "require",
    "validate_public_key_pem",
    "verify_basic",
    "verify_jwt",
    "verify_secret",
]
