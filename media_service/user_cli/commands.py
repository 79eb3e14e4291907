"""`media`: upload, list, download, inspect, update and delete your media items.

The service and the credentials come from MEDIA_URL and MEDIA_API_KEY + MEDIA_API_SECRET
(Basic), MEDIA_JWT (a ready token) or MEDIA_APPLICATION_ID + MEDIA_PRIVATE_KEY_FILE (tokens
minted here), or from the flags of the same names after the command. Progress bars go to stderr
when it is a terminal; results go to stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import requests

from media_service.client import (
    MediaApiError,
    MediaClient,
    MediaClientError,
    MediaItem,
    Unauthorized,
)
from media_service.user_cli import output
from media_service.user_cli.connection import (
    Connection,
    ConnectionConfigError,
    add_connection_arguments,
    resolve,
)
from media_service.user_cli.progress import MODES, Bar, Transfers
from media_service.user_cli.transfers import (
    RESUMABLE_MODES,
    TUS_THRESHOLD,
    DownloadInterrupted,
    choose_uploader,
    fetch,
    write_to,
)

PROG = "media"
EXIT_FAILED = 1  # the service refused, could not be reached, or a transfer failed
EXIT_USAGE = 2  # bad arguments or configuration (argparse uses 2 as well)
EXIT_INTERRUPTED = 130
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

Handler = Callable[[argparse.Namespace, Connection, Transfers], int]


class UsageError(Exception):
    """A bad argument found after parsing: one line, exit status 2."""


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status (errors are one line on stderr)."""
    args = _parser().parse_args(argv)
    transfers = Transfers(args.progress)
    try:
        connection = resolve(args)
        handler: Handler = args.handler
        return handler(args, connection, transfers)
    except (ConnectionConfigError, UsageError) as error:
        _error(str(error))
        return EXIT_USAGE
    except MediaClientError as error:
        _error(describe(error))
        return EXIT_FAILED
    except KeyboardInterrupt:
        _error("interrupted")
        return EXIT_INTERRUPTED


def describe(error: MediaClientError) -> str:
    """One line for an error of the client, without a traceback or a credential."""
    cause = error.__cause__
    if isinstance(cause, requests.ConnectionError) and not isinstance(error, DownloadInterrupted):
        url = cause.request.url if cause.request is not None else None
        where = output.one_line(url.split("?", 1)[0]) if url else "the service"
        return f"cannot reach the service ({where}): connection failed"
    if isinstance(cause, requests.Timeout):
        return "the service did not answer in time"
    return output.one_line(str(error))


def _error(text: str) -> None:
    print(f"{PROG}: {text}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- parser


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--progress",
        choices=MODES,
        default="auto",
        help="progress bars on stderr: auto (only on a terminal, the default), always, never",
    )
    add_connection_arguments(common)

    def command(name: str, handler: Handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, parents=[common], help=help_text, description=help_text)
        sub.set_defaults(handler=handler)
        return sub

    upload = command("upload", _upload, "upload files; one line per file, exit 1 if any failed")
    upload.add_argument("files", nargs="+", type=Path, metavar="FILE")
    upload.add_argument(
        "-r", "--recursive", action="store_true", help="upload the files under a directory"
    )
    _add_item_fields(upload, for_update=False)
    upload.add_argument("--info", help="free text, usually JSON (stored as metadata_primary)")
    upload.add_argument(
        "--resumable",
        choices=RESUMABLE_MODES,
        default="auto",
        help="tus uploads that survive a broken connection or Ctrl-C: auto (files of "
        f"{TUS_THRESHOLD // 2**20} MiB or more, when the service offers it), always, never",
    )
    upload.add_argument("--json", action="store_true", help="a JSON array of the results")

    ls = command("ls", _ls, "list items, newest first (every page)")
    ls.add_argument("--since", help="created at or after: ISO 8601 (UTC) or an age (30m, 7d)")
    ls.add_argument("--until", help="created at or before, the same forms")
    ls.add_argument("--order", choices=("descending", "ascending"), default="descending")
    ls.add_argument("--page-size", type=int, default=100, help="items per request (1-100)")
    ls.add_argument("--json", action="store_true", help="a JSON array of the items")

    get = command("get", _get, "download an item, resuming a partial file, checking its MD5")
    get.add_argument("id", metavar="ID")
    get.add_argument(
        "-o",
        "--output",
        help="the file to write (default: the item's file name here; - for stdout)",
    )

    info = command("info", _info, "show an item's metadata")
    info.add_argument("id", metavar="ID")
    info.add_argument("--json", action="store_true", help="the item as JSON")

    update = command("update", _update, "change an item's metadata")
    update.add_argument("id", metavar="ID")
    _add_item_fields(update, for_update=True)
    update.add_argument(
        "--clear",
        action="append",
        default=[],
        choices=CLEARABLE,
        metavar="FIELD",
        help=f"set a text field to null (repeatable): {', '.join(CLEARABLE)}",
    )
    update.add_argument("--json", action="store_true", help="the updated item as JSON")

    rm = command("rm", _rm, "delete items; exit 1 if any could not be deleted")
    rm.add_argument("ids", nargs="+", metavar="ID")
    return parser


CLEARABLE = ("title", "description", "metadata_primary", "metadata_secondary")


def _add_item_fields(parser: argparse.ArgumentParser, *, for_update: bool) -> None:
    visibility = parser.add_mutually_exclusive_group()
    visibility.add_argument(
        "--public", dest="public", action="store_true", default=None, help="anyone may download"
    )
    visibility.add_argument(
        "--private", dest="public", action="store_false", help="only you may download"
    )
    parser.add_argument("--title")
    parser.add_argument("--description")
    parser.add_argument("--mime-type")
    parser.add_argument("--metadata-primary", metavar="TEXT")
    parser.add_argument("--metadata-secondary", metavar="TEXT")
    parser.add_argument(
        "--max-downloads",
        type=int,
        metavar="N",
        help="anonymous downloads allowed (0: unlimited)",
    )


def _item_fields(args: argparse.Namespace) -> dict[str, Any]:
    names = {
        "public": args.public,
        "title": args.title,
        "description": args.description,
        "mime_type": args.mime_type,
        "metadata_primary": args.metadata_primary,
        "metadata_secondary": args.metadata_secondary,
        "max_downloads_allowed": args.max_downloads,
    }
    return {name: value for name, value in names.items() if value is not None}


# --------------------------------------------------------------------------- upload


def _upload(args: argparse.Namespace, connection: Connection, transfers: Transfers) -> int:
    with transfers.shown():
        return _upload_all(args, connection, transfers)


def _upload_all(args: argparse.Namespace, connection: Connection, transfers: Transfers) -> int:
    files = list(_expand(args.files, args.recursive))
    if not files:
        raise UsageError("no files to upload (the directories given are empty)")
    fields = _item_fields(args)
    if args.info is not None:
        fields["info"] = args.info
    results: list[dict[str, Any]] = []
    sizes = [_size(path) for path, _ in files]
    overall = transfers.bar(f"0/{len(files)} files", sum(s or 0 for s in sizes))
    if len(files) < 2:
        overall.close()
    failed = 0
    with connection.client() as client:
        for number, ((path, problem), size) in enumerate(zip(files, sizes, strict=True), 1):
            if problem is None and size is None:
                problem = "cannot read it"
            if problem is not None:
                results.append({"file": str(path), "ok": False, "error": problem})
                transfers.message(f"{PROG}: {path}: {problem}")
                failed += 1
                continue
            assert size is not None
            try:
                item = _upload_one(client, path, size, fields, transfers, overall, args.resumable)
            except MediaClientError as error:
                text = describe(error)
                results.append({"file": str(path), "ok": False, "error": text})
                transfers.message(f"{PROG}: {path}: {text}")
                failed += 1
                if _hopeless(error):
                    skipped = len(files) - number
                    if skipped:
                        transfers.message(f"{PROG}: stopped: {skipped} more not attempted")
                    failed += skipped
                    break
                continue
            finally:
                overall.update(description=f"{number}/{len(files)} files")
            results.append({"file": str(path), "ok": True, "item": output.item_json(item)})
            if not args.json:
                print(f"{item.id}  {path}", flush=True)
    overall.close()
    if args.json:
        print(json.dumps(results, indent=2))
    if len(files) > 1:
        transfers.message(f"{len(files) - failed} uploaded, {failed} failed")
    return EXIT_FAILED if failed else 0


def _upload_one(
    client: MediaClient,
    path: Path,
    size: int,
    fields: dict[str, Any],
    transfers: Transfers,
    overall: Bar,
    resumable: str,
) -> MediaItem:
    bar = transfers.bar(path.name, size)
    sent = 0

    def on_bytes(count: int) -> None:
        nonlocal sent
        sent += count
        bar.advance(count)
        overall.advance(count)

    try:
        return choose_uploader(client, size, resumable).upload(path, fields, on_bytes)
    except OSError as error:
        raise MediaClientError(error.strerror or str(error)) from None
    finally:
        if sent < size:
            overall.advance(size - sent)  # a failed file no longer counts as bytes to come
        bar.close()


def _expand(paths: Sequence[Path], recursive: bool) -> Iterator[tuple[Path, str | None]]:
    """Each file to upload and why it cannot be (None: it can)."""
    for path in paths:
        if path.is_dir():
            if not recursive:
                yield path, "is a directory (give its files, e.g. dir/*, or use -r)"
                continue
            found = sorted(p for p in path.rglob("*") if p.is_file())
            yield from ((p, None) for p in found)
        elif path.is_file():
            yield path, None
        elif path.exists():
            yield path, "not a regular file"
        else:
            yield path, "no such file"


def _size(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def _hopeless(error: MediaClientError) -> bool:
    """Whether every other file would fail the same way: bad credentials or no service."""
    return isinstance(error, Unauthorized) or (
        isinstance(error.__cause__, requests.ConnectionError)
        and not isinstance(error, DownloadInterrupted)
    )


# --------------------------------------------------------------------------- ls


def _ls(args: argparse.Namespace, connection: Connection, transfers: Transfers) -> int:
    del transfers
    if not 1 <= args.page_size <= 100:
        raise UsageError("--page-size must be between 1 and 100")
    try:
        # Without --since, everything: the service alone would search the last week only.
        since = output.parse_when(args.since) if args.since else EPOCH
        until = output.parse_when(args.until) if args.until else None
    except ValueError as error:
        raise UsageError(str(error)) from None
    with connection.client() as client:
        items = client.search(
            order=args.order, page_size=args.page_size, start_time=since, end_time=until
        )
        if args.json:
            output.write_json_array(items, sys.stdout)
            return 0
        rows = [output.TABLE_COLUMNS, *(output.table_row(item) for item in items)]
    if len(rows) == 1:
        _error("no items")
        return 0
    output.write_table(rows, sys.stdout)
    return 0


# --------------------------------------------------------------------------- get, info


def _get(args: argparse.Namespace, connection: Connection, transfers: Transfers) -> int:
    with connection.client() as client, transfers.shown():
        item = client.get(args.id)
        if args.output == "-":
            bar = transfers.bar(item.original_file_name or item.id, item.media_size)
            try:
                write_to(client, item, sys.stdout.buffer, bar)
            finally:
                bar.close()
            return 0
        dest = Path(args.output) if args.output else _default_name(item)
        if dest.is_dir():
            dest = dest / _default_name(item)
        bar = transfers.bar(dest.name, item.media_size)
        try:
            result = fetch(client, item, dest, bar)
        except KeyboardInterrupt:
            if dest.is_file():
                transfers.message(f"{PROG}: {dest} is kept: run the same command again to resume")
            raise
        except OSError as error:
            raise UsageError(f"{dest}: {error.strerror or error}") from None
        finally:
            bar.close()
    if result.already_complete:
        note = "already complete"
    elif result.resumed_from:
        note = f"resumed at byte {result.resumed_from}"
    else:
        note = output.human_size(result.size)
    print(f"{dest}  ({note}, MD5 verified)" if item.etag else f"{dest}  ({note})")
    return 0


def _default_name(item: MediaItem) -> Path:
    """The item's own file name, reduced to a plain name in the current directory."""
    name = os.path.basename(item.original_file_name or "")
    return Path(name if name not in ("", ".", "..") else item.id)


def _info(args: argparse.Namespace, connection: Connection, transfers: Transfers) -> int:
    del transfers
    with connection.client() as client:
        item = client.get(args.id)
    _show(item, args.json)
    return 0


def _show(item: MediaItem, as_json: bool) -> None:
    if as_json:
        print(json.dumps(output.item_json(item), indent=2))
    else:
        output.write_info(item, sys.stdout)


# --------------------------------------------------------------------------- update, rm


def _update(args: argparse.Namespace, connection: Connection, transfers: Transfers) -> int:
    del transfers
    fields: dict[str, Any] = _item_fields(args)
    for name in args.clear:
        if name in fields:
            raise UsageError(f"--clear {name} and --{name.replace('_', '-')} contradict")
        fields[name] = None
    if not fields:
        raise UsageError("nothing to update: give at least one field (see media update --help)")
    with connection.client() as client:
        item = client.update(args.id, **fields)
        if item is None:  # a service that ignores Prefer: return=representation
            item = client.get(args.id)
    _show(item, args.json)
    return 0


def _rm(args: argparse.Namespace, connection: Connection, transfers: Transfers) -> int:
    del transfers
    failed = 0
    with connection.client() as client:
        for number, item_id in enumerate(args.ids, 1):
            try:
                client.delete(item_id)
            except MediaApiError as error:
                _error(f"{item_id}: {describe(error)}")
                failed += 1
                if isinstance(error, Unauthorized):
                    failed += len(args.ids) - number
                    break
                continue
            print(f"deleted {item_id}", flush=True)
    return EXIT_FAILED if failed else 0
