"""`media-service`: administer accounts, applications and tokens; run the sweeper.

Uses the same configuration (MEDIA_* environment variables) as the server.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import secrets
import sys
import uuid
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

from media_service.auth import (
    generate_rsa_keypair,
    generate_secret,
    hash_secret,
    make_token,
    public_key_from_private,
    validate_public_key_pem,
)
from media_service.backends import open_backends
from media_service.service import audio
from media_service.service.media import utc_now
from media_service.service.sweeper import sweep
from media_service.settings import ConfigError, Settings
from media_service.storage.interfaces import (
    Account,
    AlreadyExists,
    Application,
    Backends,
    StorageError,
)


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.handler(args))
    except (CliError, ConfigError, ValueError) as error:
        print(f"media-service: {error}", file=sys.stderr)
        return 2
    except StorageError as error:
        print(f"media-service: backend error: {error}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="media-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    accounts = commands.add_parser("accounts", help="manage accounts").add_subparsers(
        dest="action", required=True
    )
    create_account = accounts.add_parser("create", help="create an account; prints key and secret")
    create_account.add_argument("--api-key", help="the API key (generated when omitted)")
    create_account.add_argument(
        "--api-secret", help="the API secret, at least 16 characters (generated when omitted)"
    )
    create_account.set_defaults(handler=_accounts_create)

    applications = commands.add_parser("applications", help="manage applications").add_subparsers(
        dest="action", required=True
    )
    create_app = applications.add_parser("create", help="create an application; prints its id")
    create_app.add_argument("--api-key", required=True, help="the owning account")
    create_app.add_argument("--application-id", help="the id (a UUID is generated when omitted)")
    keys = create_app.add_mutually_exclusive_group(required=True)
    keys.add_argument("--public-key-file", type=Path, help="PEM file with the RSA public key")
    keys.add_argument(
        "--generate-key",
        type=Path,
        metavar="PRIVATE_OUT",
        help="generate an RSA key pair and write the private key (mode 0600) here",
    )
    create_app.set_defaults(handler=_applications_create)

    add_key = applications.add_parser("add-key", help="add a public key (key rotation)")
    add_key.add_argument("--application-id", required=True)
    add_key.add_argument("--public-key-file", type=Path, required=True)
    add_key.set_defaults(handler=_applications_add_key)

    token = commands.add_parser("token", help="print a JWT for an application")
    token.add_argument("--application-id", required=True)
    token.add_argument("--private-key-file", type=Path, required=True)
    token.add_argument("--ttl", type=int, default=900, help="seconds until exp (default 900)")
    token.add_argument("--acl", help='JSON acl claim, e.g. {"paths": {"/*/media/**": {}}}')
    token.set_defaults(handler=_token)

    sweeper = commands.add_parser("sweep", help="run the sweeper once; prints what it did")
    sweeper.add_argument(
        "--grace-seconds",
        type=int,
        help="remove unreferenced blobs older than this (default MEDIA_SWEEP_GRACE_SECONDS)",
    )
    sweeper.add_argument(
        "--stale-seconds",
        type=int,
        help="treat pending uploads whose heartbeat is older than this as dead "
        "(default MEDIA_UPLOAD_STALE_SECONDS)",
    )
    sweeper.set_defaults(handler=_sweep)

    backfill = commands.add_parser(
        "backfill-audio", help="read audio facts of items stored before them; prints counts"
    )
    backfill.add_argument("--batch", type=int, default=100, help="items per batch (default 100)")
    backfill.add_argument("--limit", type=int, help="stop after this many items (default all)")
    backfill.set_defaults(handler=_backfill_audio)
    return parser


def _backends() -> Backends:
    return open_backends(Settings.from_env())


def _accounts_create(args: argparse.Namespace) -> int:
    api_secret = args.api_secret or generate_secret()
    salt, digest = hash_secret(api_secret)  # raises ValueError for a weak secret
    backends = _backends()
    for _attempt in range(5):
        api_key = args.api_key or secrets.token_hex(4)
        try:
            backends.credentials.add_account(Account(api_key, salt, digest))
            break
        except AlreadyExists:
            if args.api_key:
                raise CliError(f"account {api_key!r} already exists") from None
    else:
        raise CliError("could not find a free API key; try again")
    print(json.dumps({"api_key": api_key, "api_secret": api_secret}))
    return 0


def _applications_create(args: argparse.Namespace) -> int:
    application_id = args.application_id or str(uuid.uuid4())
    if len(application_id) > 100 or not application_id.strip():
        raise CliError("--application-id must be 1-100 characters")
    if args.public_key_file is not None:
        public_pem = validate_public_key_pem(_read(args.public_key_file))
        private_pem = None
    else:
        private_pem, public_pem = generate_rsa_keypair()
    backends = _backends()
    if backends.credentials.get_account(args.api_key) is None:
        raise CliError(f"no account {args.api_key!r}; create it first")
    if private_pem is not None:
        _write_private(args.generate_key, private_pem)
    try:
        backends.credentials.add_application(
            Application(application_id, args.api_key, (public_pem,))
        )
    except AlreadyExists:
        raise CliError(f"application {application_id!r} already exists") from None
    print(application_id)
    return 0


def _applications_add_key(args: argparse.Namespace) -> int:
    public_pem = validate_public_key_pem(_read(args.public_key_file))
    if not _backends().credentials.add_public_key(args.application_id, public_pem):
        raise CliError(f"no application {args.application_id!r}")
    print(args.application_id)
    return 0


def _token(args: argparse.Namespace) -> int:
    private_pem = _read(args.private_key_file)
    public_key_from_private(private_pem)  # a clear error for a file that is not a private key
    acl = None
    if args.acl:
        try:
            acl = json.loads(args.acl)
        except ValueError:
            raise CliError("--acl is not valid JSON") from None
    if args.ttl <= 0:
        raise CliError("--ttl must be a positive number of seconds")
    print(make_token(args.application_id, private_pem, ttl=args.ttl, acl=acl))
    return 0


def _sweep(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    grace = args.grace_seconds if args.grace_seconds is not None else settings.sweep_grace_seconds
    stale = args.stale_seconds if args.stale_seconds is not None else settings.upload_stale_seconds
    if grace < 0 or stale < 0:
        raise CliError("--grace-seconds and --stale-seconds must be >= 0")
    report = sweep(
        open_backends(settings),
        now=utc_now(),
        grace=timedelta(seconds=grace),
        stale=timedelta(seconds=stale),
    )
    print(json.dumps(report.as_dict()))
    # Lost blobs are not the sweeper's to fix, but a cron job's exit status should say so.
    return 0 if report.errors == 0 and report.ready_missing_blob == 0 else 1


def _backfill_audio(args: argparse.Namespace) -> int:
    if args.batch < 1 or (args.limit is not None and args.limit < 0):
        raise CliError("--batch must be >= 1 and --limit >= 0")
    backends = _backends()
    counts = audio.backfill(backends.blobs, backends.media, batch=args.batch, limit=args.limit)
    print(json.dumps(counts))
    return 0 if counts["failed"] == 0 else 1


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError as error:
        raise CliError(f"cannot read {path}: {error.strerror}") from None


def _write_private(path: Path, pem: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        raise CliError(f"{path} exists; not overwriting a key") from None
    except OSError as error:
        raise CliError(f"cannot write {path}: {error.strerror}") from None
    with os.fdopen(fd, "w") as handle:
        handle.write(pem)


if __name__ == "__main__":
    sys.exit(main())
