"""`media-service`: administer accounts, applications and tokens; run the sweeper.

Uses the same configuration (MEDIA_* environment variables) as the server.
"""

from __future__ import annotations

import argparse
import hashlib
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
from media_service.service import admin, audio
from media_service.service.media import MediaService, utc_now
from media_service.service.sweeper import sweep
from media_service.settings import ConfigError, Settings
from media_service.storage.interfaces import (
    Account,
    AlreadyExists,
    Application,
    Backends,
    KeyRemoval,
    Quota,
    StorageError,
)


class CliError(Exception):
    """A user error: printed as one line, exit status 2."""


class Refused(CliError):
    """Nothing to act on, or a refusal (unknown key, items left, last key): exit status 1."""


def main(
    argv: Sequence[str] | None = None,
    *,
    backends: Backends | None = None,
    settings: Settings | None = None,
) -> int:
    """Run one command; `backends` and `settings` replace the environment's (for tests)."""
    parser = _parser()
    args = parser.parse_args(argv)
    args.given_backends, args.given_settings = backends, settings
    args.opened_backends = []  # what this run opened itself, closed before it returns
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        return int(args.handler(args))
    except Refused as error:
        print(f"media-service: {error}", file=sys.stderr)
        return 1
    except (CliError, ConfigError, ValueError) as error:
        print(f"media-service: {error}", file=sys.stderr)
        return 2
    except StorageError as error:
        print(f"media-service: backend error: {error}", file=sys.stderr)
        return 1
    finally:
        _close_opened(args.opened_backends)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="media-service", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    accounts = commands.add_parser("accounts", help="manage accounts").add_subparsers(
        dest="action", required=True
    )
    create_account = accounts.add_parser(
        "create", parents=[_JSON], help="create an account; prints key and secret"
    )
    create_account.add_argument("--api-key", help="the API key (generated when omitted)")
    create_account.add_argument(
        "--api-secret", help="the API secret, at least 16 characters (generated when omitted)"
    )
    create_account.set_defaults(handler=_accounts_create)
    _add_account_admin(accounts)
    set_quota = accounts.add_parser(
        "set-quota", parents=[_JSON], help="limit the account's bytes and items (0 = unlimited)"
    )
    set_quota.add_argument("--api-key", required=True)
    set_quota.add_argument("--max-bytes", type=_limit, help="total bytes (0 = unlimited)")
    set_quota.add_argument("--max-items", type=_limit, help="number of items (0 = unlimited)")
    set_quota.set_defaults(handler=_accounts_set_quota)

    applications = commands.add_parser("applications", help="manage applications").add_subparsers(
        dest="action", required=True
    )
    create_app = applications.add_parser(
        "create", parents=[_JSON], help="create an application; prints its id"
    )
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

    add_key = applications.add_parser(
        "add-key", parents=[_JSON], help="add a public key (key rotation)"
    )
    add_key.add_argument("--application-id", required=True)
    add_key.add_argument("--public-key-file", type=Path, required=True)
    add_key.set_defaults(handler=_applications_add_key)
    _add_application_admin(applications)

    stats = commands.add_parser(
        "stats", parents=[_JSON], help="READY items and bytes per account and application"
    )
    stats.add_argument("--api-key", help="only this account")
    stats.set_defaults(handler=_stats)

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


def _open(args: argparse.Namespace, settings: Settings | None = None) -> Backends:
    """The caller's backends (tests), or ones opened from `settings` and closed by main()."""
    given: Backends | None = getattr(args, "given_backends", None)
    if given is not None:
        return given
    backends = open_backends(settings if settings is not None else _settings(args))
    args.opened_backends.append(backends)
    return backends


def _close_opened(opened: list[Backends]) -> None:
    # Database clients, connection pools and their threads go now, not at interpreter exit
    # (pymongo's monitors warn then). A failure to close is reported, not raised: the
    # command's own outcome is already decided and printed.
    for backends in opened:
        try:
            backends.close()
        except Exception as error:  # noqa: BLE001 - any client's close may fail its own way
            print(f"media-service: closing the backends failed: {error}", file=sys.stderr)


def _settings(args: argparse.Namespace) -> Settings:
    given: Settings | None = getattr(args, "given_settings", None)
    return given if given is not None else Settings.from_env()


def _accounts_create(args: argparse.Namespace) -> int:
    api_secret = args.api_secret or generate_secret()
    salt, digest = hash_secret(api_secret)  # raises ValueError for a weak secret
    backends = _open(args)
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
    backends = _open(args)
    if backends.credentials.get_account(args.api_key) is None:
        raise Refused(f"no account with api key {args.api_key}; create it first")
    if private_pem is not None:
        _write_private(args.generate_key, private_pem)
    try:
        backends.credentials.add_application(
            Application(application_id, args.api_key, (public_pem,))
        )
    except AlreadyExists:
        raise CliError(f"application {application_id!r} already exists") from None
    print(json.dumps({"application_id": application_id}) if args.json else application_id)
    return 0


def _applications_add_key(args: argparse.Namespace) -> int:
    public_pem = validate_public_key_pem(_read(args.public_key_file))
    if not _open(args).credentials.add_public_key(args.application_id, public_pem):
        raise Refused(f"no application with id {args.application_id}")
    print(json.dumps({"application_id": args.application_id}) if args.json else args.application_id)
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
        _open(args, settings),
        now=utc_now(),
        grace=timedelta(seconds=grace),
        stale=timedelta(seconds=stale),
    )
    print(json.dumps(report.as_dict()))
    # Lost blobs are not the sweeper's to fix, but a cron job's exit status should say so.
    return 0 if report.errors == 0 and report.ready_missing_blob == 0 else 1


# --------------------------------------------------------------------------- administration

_JSON = argparse.ArgumentParser(add_help=False)
_JSON.add_argument("--json", action="store_true", help="print JSON (for scripts), not a table")
# `show` prints one nested record: JSON wherever a program reads it (the quota issue's contract:
# `accounts show` prints JSON with `quota` and `usage`), a table for a person at a terminal.
_SHOW = argparse.ArgumentParser(add_help=False)
_SHOW_FORMAT = _SHOW.add_mutually_exclusive_group()
_SHOW_FORMAT.add_argument(
    "--json", action="store_true", help="print JSON (the default unless on a terminal)"
)
_SHOW_FORMAT.add_argument(
    "--table", action="store_true", help="print a table (the default on a terminal)"
)


def _show_json(args: argparse.Namespace) -> bool:
    """Whether a `show` prints JSON: asked for, or not asked for a table and not on a terminal."""
    return bool(args.json or (not args.table and not sys.stdout.isatty()))


def _add_account_admin(accounts: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    listing = accounts.add_parser("list", parents=[_JSON], help="list accounts")
    listing.set_defaults(handler=_accounts_list)
    for name, handler, text in (
        ("show", _accounts_show, "show an account, its applications and usage"),
        ("disable", _accounts_disable, "refuse the account's requests (and its applications')"),
        ("enable", _accounts_enable, "accept the account's requests again"),
        ("rotate-secret", _accounts_rotate_secret, "replace the secret; prints the new one"),
        ("delete", _accounts_delete, "delete the account and its applications"),
    ):
        command = accounts.add_parser(name, parents=[_SHOW if name == "show" else _JSON], help=text)
        command.add_argument("--api-key", required=True)
        command.set_defaults(handler=handler)
        if name == "rotate-secret":
            command.add_argument(
                "--api-secret", help="the new secret, at least 16 characters (generated if omitted)"
            )
        if name == "delete":
            command.add_argument(
                "--with-items", action="store_true", help="delete its media items first"
            )


def _add_application_admin(
    applications: argparse._SubParsersAction[argparse.ArgumentParser],
) -> None:
    listing = applications.add_parser("list", parents=[_JSON], help="list applications")
    listing.add_argument("--api-key", help="only this account's")
    listing.set_defaults(handler=_applications_list)
    for name, handler, text in (
        ("show", _applications_show, "show an application, its keys and usage"),
        ("disable", _applications_disable, "refuse the application's tokens"),
        ("enable", _applications_enable, "accept the application's tokens again"),
        ("remove-key", _applications_remove_key, "remove a public key (never the last one)"),
        ("delete", _applications_delete, "delete the application"),
    ):
        parents = [_SHOW if name == "show" else _JSON]
        command = applications.add_parser(name, parents=parents, help=text)
        command.add_argument("--application-id", required=True)
        command.set_defaults(handler=handler)
        if name == "remove-key":
            command.add_argument("--public-key-file", type=Path, required=True)
        if name == "delete":
            command.add_argument(
                "--with-items", action="store_true", help="delete its media items first"
            )


def _account(backends: Backends, api_key: str) -> Account:
    account = backends.credentials.get_account(api_key)
    if account is None:
        raise Refused(f"no account with api key {api_key}")
    return account


def _application(backends: Backends, application_id: str) -> Application:
    application = backends.credentials.get_application(application_id)
    if application is None:
        raise Refused(f"no application with id {application_id}")
    return application


def _key_fingerprint(pem: str) -> str:
    """SHA-256 of the PEM text, shortened: tells keys apart without printing them."""
    return "sha256:" + hashlib.sha256(pem.encode("utf-8")).hexdigest()[:16]


def _accounts_list(args: argparse.Namespace) -> int:
    backends = _open(args)
    totals = admin.account_totals(backends.media)
    counts: dict[str, int] = {}
    for application in backends.credentials.list_applications():
        counts[application.api_key] = counts.get(application.api_key, 0) + 1
    rows = [
        {
            "api_key": account.api_key,
            "enabled": account.enabled,
            "applications": counts.get(account.api_key, 0),
            "items": totals.get(account.api_key, admin.Totals()).items,
            "bytes": totals.get(account.api_key, admin.Totals()).bytes,
        }
        for account in backends.credentials.list_accounts()
    ]
    _print_rows(args, rows)
    return 0


def _application_row(
    application: Application, totals: dict[str, admin.Totals]
) -> dict[str, object]:
    usage = totals.get(application.application_id, admin.Totals())
    return {
        "application_id": application.application_id,
        "api_key": application.api_key,
        "enabled": application.enabled,
        "public_keys": len(application.public_keys),
        "items": usage.items,
        "bytes": usage.bytes,
    }


def _accounts_show(args: argparse.Namespace) -> int:
    backends = _open(args)
    account = _account(backends, args.api_key)
    usage = admin.account_totals(backends.media, account.api_key).get(account.api_key)
    app_totals = admin.application_totals(backends.media, account.api_key)
    applications = [
        _application_row(application, app_totals)
        for application in backends.credentials.list_applications(account.api_key)
    ]
    record: dict[str, object] = {
        "api_key": account.api_key,
        "enabled": account.enabled,
        "items": usage.items if usage else 0,
        "bytes": usage.bytes if usage else 0,
        **_quota_record(backends.media.quota(account.api_key)),
        "applications": applications,
    }
    if _show_json(args):
        print(json.dumps(record))
        return 0
    nested = ("quota", "usage", "applications")
    _print_record({name: value for name, value in record.items() if name not in nested})
    print()
    _print_record(_flat({name: record[name] for name in ("quota", "usage")}))
    if applications:
        print()
        _print_table([{k: v for k, v in row.items() if k != "api_key"} for row in applications])
    return 0


def _limit(text: str) -> int:
    """A quota limit on the command line: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if not 0 <= value < 2**63:
        raise argparse.ArgumentTypeError("must be from 0 (unlimited) to 2**63-1")
    return value


def _quota_record(quota: Quota) -> dict[str, object]:
    # Usage counts uploads in flight too: it is what the limits are checked against.
    return {
        "quota": {"max_bytes": quota.max_bytes, "max_items": quota.max_items},
        "usage": {"bytes": quota.bytes, "items": quota.items},
    }


def _flat(record: dict[str, object]) -> dict[str, object]:
    """Nested records as `outer.inner` lines, for the plain output."""
    flat: dict[str, object] = {}
    for name, value in record.items():
        if isinstance(value, dict):
            flat.update((f"{name}.{inner}", item) for inner, item in value.items())
        else:
            flat[name] = value
    return flat


def _accounts_set_quota(args: argparse.Namespace) -> int:
    if args.max_bytes is None and args.max_items is None:
        raise CliError("give --max-bytes, --max-items or both")
    backends = _open(args)
    account = _account(backends, args.api_key)
    quota = backends.media.set_quota(account.api_key, args.max_bytes, args.max_items)
    record = {"api_key": account.api_key, **_quota_record(quota)}
    if args.json:
        print(json.dumps(record))
    else:
        _print_record(_flat(record))
    return 0


def _accounts_set_enabled(args: argparse.Namespace, enabled: bool) -> int:
    if not _open(args).credentials.set_account_enabled(args.api_key, enabled):
        raise Refused(f"no account with api key {args.api_key}")
    _print_change(args, {"api_key": args.api_key, "enabled": enabled})
    return 0


def _accounts_disable(args: argparse.Namespace) -> int:
    return _accounts_set_enabled(args, False)


def _accounts_enable(args: argparse.Namespace) -> int:
    return _accounts_set_enabled(args, True)


def _accounts_rotate_secret(args: argparse.Namespace) -> int:
    api_secret = args.api_secret or generate_secret()
    salt, digest = hash_secret(api_secret)  # raises ValueError for a weak secret
    if not _open(args).credentials.replace_secret(args.api_key, salt, digest):
        raise Refused(f"no account with api key {args.api_key}")
    # The one time this secret is shown: JSON either way, like `accounts create`.
    print(json.dumps({"api_key": args.api_key, "api_secret": api_secret}))
    return 0


def _accounts_delete(args: argparse.Namespace) -> int:
    backends = _open(args)
    account = _account(backends, args.api_key)
    applications = backends.credentials.list_applications(account.api_key)
    deleted = _delete_items(args, backends, account.api_key, None, f"account {account.api_key}")
    if not backends.credentials.delete_account(account.api_key):
        raise Refused(f"no account with api key {account.api_key}")
    _print_change(
        args,
        {
            "api_key": account.api_key,
            "deleted": True,
            "applications_deleted": len(applications),
            "items_deleted": deleted,
        },
    )
    return 0


def _applications_list(args: argparse.Namespace) -> int:
    backends = _open(args)
    if args.api_key is not None:
        _account(backends, args.api_key)
    totals = admin.application_totals(backends.media, args.api_key)
    rows = [
        _application_row(application, totals)
        for application in backends.credentials.list_applications(args.api_key)
    ]
    _print_rows(args, rows)
    return 0


def _applications_show(args: argparse.Namespace) -> int:
    backends = _open(args)
    application = _application(backends, args.application_id)
    totals = admin.application_totals(backends.media, application.api_key)
    record = _application_row(application, totals)
    record["public_keys"] = [_key_fingerprint(pem) for pem in application.public_keys]
    if _show_json(args):
        print(json.dumps(record))
        return 0
    record["public_keys"] = ", ".join(_key_fingerprint(pem) for pem in application.public_keys)
    _print_record(record)
    return 0


def _applications_set_enabled(args: argparse.Namespace, enabled: bool) -> int:
    if not _open(args).credentials.set_application_enabled(args.application_id, enabled):
        raise Refused(f"no application with id {args.application_id}")
    _print_change(args, {"application_id": args.application_id, "enabled": enabled})
    return 0


def _applications_disable(args: argparse.Namespace) -> int:
    return _applications_set_enabled(args, False)


def _applications_enable(args: argparse.Namespace) -> int:
    return _applications_set_enabled(args, True)


def _applications_remove_key(args: argparse.Namespace) -> int:
    public_pem = validate_public_key_pem(_read(args.public_key_file))  # normalised as stored
    outcome = _open(args).credentials.remove_public_key(args.application_id, public_pem)
    if outcome is KeyRemoval.NO_APPLICATION:
        raise Refused(f"no application with id {args.application_id}")
    if outcome is KeyRemoval.NO_SUCH_KEY:
        raise Refused(f"application {args.application_id} has no such key")
    if outcome is KeyRemoval.LAST_KEY:
        raise Refused(
            f"refusing to remove the last key of application {args.application_id};"
            " add another first"
        )
    _print_change(
        args,
        {"application_id": args.application_id, "removed_key": _key_fingerprint(public_pem)},
    )
    return 0


def _applications_delete(args: argparse.Namespace) -> int:
    backends = _open(args)
    application = _application(backends, args.application_id)
    deleted = _delete_items(
        args,
        backends,
        application.api_key,
        application.application_id,
        f"application {application.application_id}",
    )
    if not backends.credentials.delete_application(application.application_id):
        raise Refused(f"no application with id {application.application_id}")
    _print_change(
        args,
        {"application_id": application.application_id, "deleted": True, "items_deleted": deleted},
    )
    return 0


def _delete_items(
    args: argparse.Namespace,
    backends: Backends,
    api_key: str,
    application_id: str | None,
    what: str,
) -> int:
    """Refuse while `what` has items, unless --with-items: then delete them; return how many."""
    rows = [
        row
        for row in backends.media.usage(api_key)
        if application_id is None or row.application_id == application_id
    ]
    count = sum(row.items for row in rows)
    if count == 0:
        return 0
    if not args.with_items:
        raise Refused(f"{what} has {count} media items; use --with-items to delete them too")
    # Stop new uploads first, so the items deleted are all there will be.
    if application_id is None:
        backends.credentials.set_account_enabled(api_key, False)
    else:
        backends.credentials.set_application_enabled(application_id, False)
    service = MediaService(backends, _settings(args))
    return admin.delete_items(service, api_key, application_id)


def _stats(args: argparse.Namespace) -> int:
    backends = _open(args)
    if args.api_key is not None:
        _account(backends, args.api_key)
    rows = [
        {
            "api_key": row.account_id,
            "application_id": row.application_id,
            "items": row.items,
            "bytes": row.bytes,
        }
        for row in backends.media.usage(args.api_key)
    ]
    accounts = [
        {"api_key": api_key, "items": totals.items, "bytes": totals.bytes}
        for api_key, totals in admin.account_totals(backends.media, args.api_key).items()
    ]
    if args.json:
        print(json.dumps({"accounts": accounts, "applications": rows}))
        return 0
    _print_table(accounts, empty="no items")
    if rows:
        print()
        _print_table([{**row, "application_id": row["application_id"] or "(none)"} for row in rows])
    return 0


# --------------------------------------------------------------------------- output


def _print_rows(args: argparse.Namespace, rows: list[dict[str, object]]) -> None:
    if args.json:
        print(json.dumps(rows))
    else:
        _print_table(rows)


def _print_change(args: argparse.Namespace, record: dict[str, object]) -> None:
    if args.json:
        print(json.dumps(record))
    else:
        _print_record(record)


def _cell(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "" if value is None else str(value)


def _print_table(rows: list[dict[str, object]], empty: str = "none") -> None:
    """Plain aligned columns: a header line, then one line a row; numbers right-aligned."""
    if not rows:
        print(f"({empty})")
        return
    columns = list(rows[0])
    cells = [[_cell(row[column]) for column in columns] for row in rows]
    widths = [
        max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)
    ]
    numeric = [
        all(isinstance(row[column], int) and not isinstance(row[column], bool) for row in rows)
        for column in columns
    ]

    def line(values: list[str]) -> str:
        parts = [
            value.rjust(width) if right else value.ljust(width)
            for value, width, right in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    print(line(columns))
    for values in cells:
        print(line(values))


def _print_record(record: dict[str, object]) -> None:
    width = max(len(name) for name in record)
    for name, value in record.items():
        print(f"{name.ljust(width)}  {_cell(value)}".rstrip())


# --------------------------------------------------------------------------- audio facts


def _backfill_audio(args: argparse.Namespace) -> int:
    if args.batch < 1 or (args.limit is not None and args.limit < 0):
        raise CliError("--batch must be >= 1 and --limit >= 0")
    backends = _open(args)
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
