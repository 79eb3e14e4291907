"""JWT verification (RS256 only, time rules, rotation) and token/key creation."""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import json
import time
import uuid
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from media_service.auth import (
    Acl,
    Principal,
    generate_rsa_keypair,
    make_token,
    parse_acl,
    public_key_from_private,
    validate_public_key_pem,
    verify_jwt,
)
from media_service.auth import tokens as auth_tokens
from media_service.errors import Unauthorized

from .conftest import API_KEY, APP_ID, FakeCredentialStore, KeyPair

NOW = 1_700_000_000.0
MINUTE = 60
HOUR = 60 * MINUTE


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def raw_token(header: dict[str, Any], claims: Any, signature: bytes = b"") -> str:
    """Assemble a compact JWS by hand (for tokens pyjwt refuses to produce)."""
    return ".".join(
        [
            b64url(json.dumps(header).encode()),
            b64url(json.dumps(claims).encode()),
            b64url(signature),
        ]
    )


@functools.cache
def private_key(private_pem: str) -> rsa.RSAPrivateKey:
    key = serialization.load_pem_private_key(private_pem.encode(), password=None)
    assert isinstance(key, rsa.RSAPrivateKey)
    return key


def sign(claims: dict[str, Any], private_pem: str, algorithm: str = "RS256") -> str:
    return jwt.encode(claims, private_key(private_pem), algorithm=algorithm)


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "application_id": APP_ID,
        "iat": int(NOW),
        "exp": int(NOW) + 15 * MINUTE,
        "jti": str(uuid.uuid4()),
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not _ABSENT}


_ABSENT: Any = object()


def verify(token: str, store: FakeCredentialStore, **kwargs: Any) -> Principal:
    kwargs.setdefault("now", NOW)
    return verify_jwt(token, store, **kwargs)


def refused(token: str, store: FakeCredentialStore, **kwargs: Any) -> str:
    """Assert the token is refused with 401; return the detail."""
    with pytest.raises(Unauthorized) as excinfo:
        verify(token, store, **kwargs)
    assert excinfo.value.status == 401
    if token:
        assert token not in excinfo.value.detail
    return excinfo.value.detail


# --------------------------------------------------------------------------- happy path


def test_valid_token_gives_an_application_principal(
    store: FakeCredentialStore, keypair: KeyPair
) -> None:
    token = make_token(APP_ID, keypair.private, now=NOW)
    assert verify(token, store) == Principal(
        account_id=API_KEY, application_id=APP_ID, scheme="jwt", acl=None
    )


def test_default_now_is_the_clock(store: FakeCredentialStore, keypair: KeyPair) -> None:
    assert verify_jwt(make_token(APP_ID, keypair.private), store).application_id == APP_ID


def test_acl_claim_is_parsed(store: FakeCredentialStore, keypair: KeyPair) -> None:
    grant: dict[str, Any] = {"paths": {"/*/media/**": {}}}
    principal = verify(make_token(APP_ID, keypair.private, now=NOW, acl=grant), store)
    assert principal.acl == parse_acl(grant)
    assert isinstance(principal.acl, Acl)
    assert principal.acl.allows("GET", "/v3/media/x/info")


@pytest.mark.parametrize(
    "bad_acl",
    [None, "all", [], {"paths": "x"}, {"paths": {"nope": {}}}, {"paths": {"/a": {"methods": 1}}}],
)
def test_malformed_acl_is_401(store: FakeCredentialStore, keypair: KeyPair, bad_acl: Any) -> None:
    assert "acl" in refused(sign(claims(acl=bad_acl), keypair.private), store)


def test_repeated_jti_is_accepted(store: FakeCredentialStore, keypair: KeyPair) -> None:
    token = make_token(APP_ID, keypair.private, now=NOW, jti="same")
    verify(token, store)
    verify(token, store)
    verify(make_token(APP_ID, keypair.private, now=NOW + 1, jti="same"), store)


def test_extra_vonage_claims_are_ignored(store: FakeCredentialStore, keypair: KeyPair) -> None:
    token = sign(claims(sub="alice", aud="anything", iss="someone"), keypair.private)
    assert verify(token, store).application_id == APP_ID


# --------------------------------------------------------------------------- algorithms


def test_alg_none_is_refused(store: FakeCredentialStore) -> None:
    for alg in ("none", "None", "NONE", ""):
        token = raw_token({"alg": alg, "typ": "JWT"}, claims())
        refused(token, store)
    assert store.lookups == []


def test_missing_alg_is_refused(store: FakeCredentialStore) -> None:
    refused(raw_token({"typ": "JWT"}, claims(), b"sig"), store)


def test_hs256_signed_with_the_public_key_is_refused(
    store: FakeCredentialStore, keypair: KeyPair
) -> None:
    """The classic confusion attack: HMAC keyed with the (public) PEM the server holds."""
    header = {"alg": "HS256", "typ": "JWT"}
    unsigned = raw_token(header, claims()).rsplit(".", 1)[0]
    for secret in (keypair.public, keypair.public.strip()):
        mac = hmac.new(secret.encode(), unsigned.encode(), hashlib.sha256).digest()
        token = f"{unsigned}.{b64url(mac)}"
        assert "RS256" in refused(token, store)


def test_hs256_is_refused_even_when_pinned_check_is_bypassed(
    store: FakeCredentialStore, keypair: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Defence in depth: the verified decode pins RS256 on its own."""
    monkeypatch.setattr(auth_tokens, "ALGORITHM", "HS256")  # disables the early header check
    unsigned = raw_token({"alg": "HS256", "typ": "JWT"}, claims()).rsplit(".", 1)[0]
    mac = hmac.new(keypair.public.encode(), unsigned.encode(), hashlib.sha256).digest()
    refused(f"{unsigned}.{b64url(mac)}", store)


@pytest.mark.parametrize("algorithm", ["RS384", "RS512", "PS256", "PS512"])
def test_other_rsa_algorithms_are_refused(
    store: FakeCredentialStore, keypair: KeyPair, algorithm: str
) -> None:
    refused(sign(claims(), keypair.private, algorithm), store)


def test_es256_is_refused(store: FakeCredentialStore) -> None:
    ec_key = ec.generate_private_key(ec.SECP256R1())
    token = jwt.encode(claims(), ec_key, algorithm="ES256")
    refused(token, store)


def test_hs256_with_a_random_secret_is_refused(store: FakeCredentialStore) -> None:
    refused(jwt.encode(claims(), "k" * 64, algorithm="HS256"), store)


# --------------------------------------------------------------------------- time rules


@pytest.mark.parametrize(
    ("overrides", "ok"),
    [
        # exp and leeway (60 s)
        pytest.param({"exp": NOW + 1}, True, id="exp-ahead"),
        pytest.param({"exp": NOW - 30}, True, id="expired-within-leeway"),
        pytest.param({"exp": NOW - 59}, True, id="expired-59s"),
        pytest.param({"exp": NOW - 60}, False, id="expired-60s"),
        pytest.param({"exp": NOW - 61}, False, id="expired-beyond-leeway"),
        pytest.param({"exp": NOW - HOUR}, False, id="expired-1h"),
        # iat required unless exp is present
        pytest.param({"iat": _ABSENT, "exp": _ABSENT}, False, id="no-iat-no-exp"),
        pytest.param({"iat": _ABSENT, "exp": NOW + HOUR}, True, id="exp-only"),
        pytest.param({"iat": _ABSENT, "exp": NOW + 23 * HOUR}, True, id="exp-only-23h"),
        pytest.param({"iat": _ABSENT, "exp": NOW + 25 * HOUR}, False, id="exp-only-25h-ahead"),
        pytest.param({"iat": _ABSENT, "exp": NOW - 61}, False, id="exp-only-expired"),
        # no exp: 15 minutes after iat
        pytest.param({"exp": _ABSENT, "iat": NOW - 14 * MINUTE}, True, id="iat-only-14min"),
        pytest.param({"exp": _ABSENT, "iat": NOW - 15 * MINUTE}, True, id="iat-only-15min"),
        pytest.param({"exp": _ABSENT, "iat": NOW - 16 * MINUTE}, False, id="iat-only-16min"),
        pytest.param({"exp": _ABSENT, "iat": NOW - 17 * MINUTE}, False, id="iat-only-17min"),
        # never more than 24 h after iat
        pytest.param(
            {"iat": NOW - 23 * HOUR, "exp": NOW + 365 * 24 * HOUR}, True, id="iat-23h-exp-far"
        ),
        pytest.param(
            {"iat": NOW - 25 * HOUR, "exp": NOW + 365 * 24 * HOUR}, False, id="iat-25h-exp-far"
        ),
        pytest.param({"iat": NOW - 25 * HOUR, "exp": NOW + HOUR}, False, id="iat-25h-exp-near"),
        # future iat
        pytest.param({"iat": NOW + 30}, True, id="iat-30s-ahead"),
        pytest.param({"iat": NOW + 61}, False, id="iat-61s-ahead"),
        pytest.param({"iat": NOW + HOUR, "exp": NOW + 2 * HOUR}, False, id="iat-1h-ahead"),
        # nbf
        pytest.param({"nbf": NOW - 10}, True, id="nbf-past"),
        pytest.param({"nbf": NOW + 30}, True, id="nbf-within-leeway"),
        pytest.param({"nbf": NOW + 61}, False, id="nbf-future"),
        pytest.param({"nbf": NOW + HOUR}, False, id="nbf-1h-future"),
        # numeric forms
        pytest.param({"iat": NOW - 0.5, "exp": NOW + 60.25}, True, id="float-claims"),
    ],
)
def test_time_rules(
    store: FakeCredentialStore, keypair: KeyPair, overrides: dict[str, Any], ok: bool
) -> None:
    token = sign(claims(**overrides), keypair.private)
    if ok:
        assert verify(token, store).application_id == APP_ID
    else:
        refused(token, store)


def test_leeway_is_configurable_and_bounded(store: FakeCredentialStore, keypair: KeyPair) -> None:
    token = sign(claims(exp=NOW - 30), keypair.private)
    verify(token, store, leeway=60)
    refused(token, store, leeway=0)
    for bad in (-1, 61, 3600):
        with pytest.raises(ValueError):
            verify(token, store, leeway=bad)


@pytest.mark.parametrize("claim", ["iat", "exp", "nbf"])
@pytest.mark.parametrize(
    "value",
    ["1700000000", "soon", None, True, False, [1], {"t": 1}, float("nan"), float("inf")],
    ids=repr,
)
def test_non_numeric_time_claims_are_401(
    store: FakeCredentialStore, keypair: KeyPair, claim: str, value: Any
) -> None:
    refused(sign(claims(**{claim: value}), keypair.private), store)


def test_huge_integer_claims_are_401_not_500(store: FakeCredentialStore, keypair: KeyPair) -> None:
    # 5000 digits exceeds Python's int-parsing limit: json raises ValueError inside pyjwt.
    signed = sign(claims(exp=12345), keypair.private)
    header, payload, signature = signed.split(".")
    body = json.dumps(claims()).replace('"exp": ', '"exp": ' + "9" * 5000 + ', "x": ')
    refused(f"{header}.{b64url(body.encode())}.{signature}", store)
    # A large but parseable exp is simply capped by the 24 h rule.
    refused(sign(claims(iat=NOW - 25 * HOUR, exp=10**300), keypair.private), store)
    verify(sign(claims(exp=10**300), keypair.private), store)


# --------------------------------------------------------------------------- application and keys


def test_unknown_application_is_401(store: FakeCredentialStore, keypair: KeyPair) -> None:
    detail = refused(sign(claims(application_id="no-such-app"), keypair.private), store)
    assert "application" in detail


def test_disabled_application_is_401(store: FakeCredentialStore, keypair: KeyPair) -> None:
    store.set_enabled(application=APP_ID, enabled=False)
    refused(make_token(APP_ID, keypair.private, now=NOW), store)


def test_disabled_account_disables_its_applications(
    store: FakeCredentialStore, keypair: KeyPair
) -> None:
    store.set_enabled(account=API_KEY, enabled=False)
    refused(make_token(APP_ID, keypair.private, now=NOW), store)


def test_application_of_a_missing_account_is_401(
    store: FakeCredentialStore, keypair: KeyPair
) -> None:
    del store.accounts[API_KEY]
    refused(make_token(APP_ID, keypair.private, now=NOW), store)


@pytest.mark.parametrize(
    "application_id",
    [_ABSENT, None, 42, True, ["x"], {"id": APP_ID}, "", "x" * 101],
    ids=["missing", "null", "int", "bool", "list", "object", "empty", "too-long"],
)
def test_missing_or_malformed_application_id_is_401(
    store: FakeCredentialStore, keypair: KeyPair, application_id: Any
) -> None:
    detail = refused(sign(claims(application_id=application_id), keypair.private), store)
    assert "application_id" in detail
    assert store.lookups == []  # no store lookup for a token that names no application


def test_application_id_of_100_characters_is_looked_up(
    store: FakeCredentialStore, keypair: KeyPair
) -> None:
    refused(sign(claims(application_id="x" * 100), keypair.private), store)
    assert store.lookups == [("application", "x" * 100)]


def test_wrong_key_is_401(store: FakeCredentialStore, other_keypair: KeyPair) -> None:
    detail = refused(make_token(APP_ID, other_keypair.private, now=NOW), store)
    assert "signature" in detail


def test_rotation_old_key_accepted_while_present_then_refused(
    store: FakeCredentialStore, keypair: KeyPair, other_keypair: KeyPair
) -> None:
    old_token = make_token(APP_ID, keypair.private, now=NOW)
    new_token = make_token(APP_ID, other_keypair.private, now=NOW)
    assert store.add_public_key(APP_ID, other_keypair.public)  # app now holds old and new
    assert verify(old_token, store).application_id == APP_ID
    assert verify(new_token, store).application_id == APP_ID
    store.set_public_keys(APP_ID, other_keypair.public)  # old key retired
    refused(old_token, store)
    assert verify(new_token, store).application_id == APP_ID


def test_new_key_listed_first_still_accepts_old_tokens(
    store: FakeCredentialStore, keypair: KeyPair, other_keypair: KeyPair
) -> None:
    store.set_public_keys(APP_ID, other_keypair.public, keypair.public)
    verify(make_token(APP_ID, keypair.private, now=NOW), store)


def test_unusable_stored_keys_are_skipped(store: FakeCredentialStore, keypair: KeyPair) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    weak_pem = (
        weak.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    ec_pem = (
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    store.set_public_keys(APP_ID, "garbage", weak_pem, ec_pem, keypair.public)
    verify(make_token(APP_ID, keypair.private, now=NOW), store)
    # A token signed by the weak key is refused: that key is never used to verify.
    unsigned = raw_token({"alg": "RS256", "typ": "JWT"}, claims()).rsplit(".", 1)[0]
    signature = weak.sign(unsigned.encode(), padding.PKCS1v15(), hashes.SHA256())
    refused(f"{unsigned}.{b64url(signature)}", store)


def test_application_without_keys_is_401(store: FakeCredentialStore, keypair: KeyPair) -> None:
    store.set_public_keys(APP_ID)
    refused(make_token(APP_ID, keypair.private, now=NOW), store)


def test_public_keys_are_parsed_once(
    store: FakeCredentialStore, keypair: KeyPair, monkeypatch: pytest.MonkeyPatch
) -> None:
    auth_tokens._load_verifying_key.cache_clear()
    parses: list[object] = []
    real = auth_tokens._load_rsa_public_key

    def spy(pem: str | bytes) -> rsa.RSAPublicKey:
        parses.append(pem)
        return real(pem)

    monkeypatch.setattr(auth_tokens, "_load_rsa_public_key", spy)
    for i in range(5):
        verify(make_token(APP_ID, keypair.private, now=NOW + i), store)
    assert len(parses) == 1


# --------------------------------------------------------------------------- tampering and garbage


def test_tampered_signature_is_401(store: FakeCredentialStore, keypair: KeyPair) -> None:
    header, payload, signature = make_token(APP_ID, keypair.private, now=NOW).split(".")
    raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
    raw[10] ^= 0x01
    refused(f"{header}.{payload}.{b64url(bytes(raw))}", store)
    refused(f"{header}.{payload}.", store)


def test_tampered_payload_is_401(store: FakeCredentialStore, keypair: KeyPair) -> None:
    token = make_token(APP_ID, keypair.private, now=NOW, acl={"paths": {"/v3/media/x": {}}})
    header, _, signature = token.split(".")
    widened = claims(acl={"paths": {"/**": {}}})
    refused(f"{header}.{b64url(json.dumps(widened).encode())}.{signature}", store)


def test_tampered_header_is_401(store: FakeCredentialStore, keypair: KeyPair) -> None:
    _, payload, signature = make_token(APP_ID, keypair.private, now=NOW).split(".")
    header = b64url(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "x"}).encode())
    refused(f"{header}.{payload}.{signature}", store)


@pytest.mark.parametrize(
    "token",
    [
        "",
        "abc",
        "a.b",
        "a.b.c",
        "...",
        "a.b.c.d.e",
        "ÿÿÿ.ÿÿÿ.ÿÿÿ",
        "eyJhbGciOiJSUzI1NiJ9.!!!.abc",
        raw_token({"alg": "RS256"}, ["not", "an", "object"]),
        raw_token({"alg": "RS256"}, "string"),
        raw_token({"alg": "RS256", "crit": ["exp"]}, {"application_id": APP_ID}),
        raw_token({"alg": "RS256", "kid": 5}, {"application_id": APP_ID}),
        ".".join([b64url(b'["alg","RS256"]'), b64url(b"{}"), ""]),
        ".".join([b64url(b'{"alg":"RS256"}'), b64url(b"[" * 100_00), ""]),
        ".".join([b64url(b'{"alg":"RS256"}'), b64url(b"\xff\xfe not utf8"), ""]),
    ],
    ids=lambda t: repr(t[:20]),
)
def test_garbage_tokens_are_401(store: FakeCredentialStore, token: str) -> None:
    refused(token, store)


def test_invalid_jti_or_sub_types_are_401(store: FakeCredentialStore, keypair: KeyPair) -> None:
    refused(sign(claims(jti=123), keypair.private), store)
    refused(sign(claims(sub=["alice"]), keypair.private), store)


def test_huge_token_is_refused_before_any_work(
    store: FakeCredentialStore, keypair: KeyPair
) -> None:
    padding = "x" * 100_000
    token = sign(claims(padding=padding), keypair.private)
    assert len(token) > 100_000
    assert "malformed" in refused(token, store)
    assert store.lookups == []


def test_error_details_never_echo_the_token(store: FakeCredentialStore, keypair: KeyPair) -> None:
    token = make_token(APP_ID, keypair.private, now=NOW - 2 * HOUR)
    header, payload, signature = token.split(".")
    detail = refused(token, store)
    for part in (header, payload, signature):
        assert part not in detail


# --------------------------------------------------------------------------- creation


def test_make_token_claims(keypair: KeyPair) -> None:
    token = make_token(APP_ID, keypair.private, now=NOW + 0.9, ttl=120, jti="j-1")
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256"
    decoded = jwt.decode(token, options={"verify_signature": False})
    assert decoded == {
        "application_id": APP_ID,
        "iat": int(NOW),
        "exp": int(NOW) + 120,
        "jti": "j-1",
    }


def test_make_token_defaults(keypair: KeyPair) -> None:
    before = int(time.time())
    decoded = jwt.decode(make_token(APP_ID, keypair.private), options={"verify_signature": False})
    assert before <= decoded["iat"] <= int(time.time())
    assert decoded["exp"] == decoded["iat"] + 900
    assert uuid.UUID(decoded["jti"]).version == 4
    assert "acl" not in decoded


def test_make_token_fresh_jti_each_time(keypair: KeyPair) -> None:
    def jti() -> str:
        token = make_token(APP_ID, keypair.private, now=NOW)
        return str(jwt.decode(token, options={"verify_signature": False})["jti"])

    assert jti() != jti()


def test_make_token_without_ttl_has_no_exp(store: FakeCredentialStore, keypair: KeyPair) -> None:
    token = make_token(APP_ID, keypair.private, ttl=None, now=NOW)
    assert "exp" not in jwt.decode(token, options={"verify_signature": False})
    verify(token, store, now=NOW + 14 * MINUTE)
    refused(token, store, now=NOW + 17 * MINUTE)


def test_make_token_with_acl(keypair: KeyPair) -> None:
    grant = {"paths": {"/v3/media/**": {"methods": ["GET"]}}}
    token = make_token(APP_ID, keypair.private, acl=grant, now=NOW)
    assert jwt.decode(token, options={"verify_signature": False})["acl"] == grant


def test_make_token_accepts_bytes_pem(store: FakeCredentialStore, keypair: KeyPair) -> None:
    verify(make_token(APP_ID, keypair.private.encode(), now=NOW), store)


@pytest.mark.parametrize("ttl", [0, -5])
def test_make_token_refuses_non_positive_ttl(keypair: KeyPair, ttl: int) -> None:
    with pytest.raises(ValueError):
        make_token(APP_ID, keypair.private, ttl=ttl)


def test_make_token_refuses_malformed_acl(keypair: KeyPair) -> None:
    with pytest.raises(ValueError):
        make_token(APP_ID, keypair.private, acl={"paths": {"relative": {}}})


def test_make_token_refuses_non_rsa_or_bad_keys(keypair: KeyPair) -> None:
    ec_pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    for bad in (ec_pem, "not a key", keypair.public):
        with pytest.raises(ValueError):
            make_token(APP_ID, bad)


def test_generate_rsa_keypair_formats(keypair: KeyPair) -> None:
    assert keypair.private.startswith("-----BEGIN PRIVATE KEY-----")  # PKCS#8
    assert keypair.public.startswith("-----BEGIN PUBLIC KEY-----")  # SubjectPublicKeyInfo
    private = serialization.load_pem_private_key(keypair.private.encode(), password=None)
    assert isinstance(private, rsa.RSAPrivateKey)
    assert private.key_size == 2048
    assert public_key_from_private(keypair.private) == keypair.public
    assert public_key_from_private(keypair.private.encode()) == keypair.public


def test_generated_keypairs_differ(keypair: KeyPair) -> None:
    assert generate_rsa_keypair()[1] != keypair.public


def test_validate_public_key_pem_normalises_pkcs1(keypair: KeyPair) -> None:
    key = serialization.load_pem_public_key(keypair.public.encode())
    pkcs1 = key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1).decode()
    assert pkcs1.startswith("-----BEGIN RSA PUBLIC KEY-----")
    assert validate_public_key_pem(pkcs1) == keypair.public
    assert validate_public_key_pem(keypair.public) == keypair.public


def test_validate_public_key_pem_refuses_others(keypair: KeyPair) -> None:
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key()
    ec_pub = ec.generate_private_key(ec.SECP256R1()).public_key()
    candidates = [
        "",
        "garbage",
        keypair.private,  # a private key is not a public key (and must not be stored)
        weak.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode(),
        ec_pub.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ).decode(),
    ]
    for pem in candidates:
        with pytest.raises(ValueError):
            validate_public_key_pem(pem)
