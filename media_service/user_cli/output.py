"""How items are shown: JSON as the API sends it, a table, and `field: value` lines."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TextIO

from media_service.client import MediaItem

_RELATIVE = re.compile(r"(\d+)([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def timestamp(value: datetime | None) -> str | None:
    """ISO 8601 UTC with milliseconds, as the service writes it."""
    if value is None:
        return None
    return (
        value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"
    )


def item_json(item: MediaItem) -> dict[str, Any]:
    """The item's fields as the API returns them (SPEC §1), newer fields included."""
    data: dict[str, Any] = {
        "id": item.id,
        "original_file_name": item.original_file_name,
        "mime_type": item.mime_type,
        "account_id": item.account_id,
        "application_id": item.application_id,
        "store_id": item.store_id,
        "store_meta_params": json.dumps(dict(item.store_meta_params)),
        "max_downloads_allowed": item.max_downloads_allowed,
        "times_downloaded": item.times_downloaded,
        "etag": item.etag,
        "media_size": item.media_size,
        "time_created": timestamp(item.time_created),
        "time_last_updated": timestamp(item.time_last_updated),
        "public": item.public,
        "public_item": item.public,
        "metadata_primary": item.metadata_primary,
        "metadata_secondary": item.metadata_secondary,
        "title": item.title,
        "description": item.description,
        "source_url": item.source_url,
    }
    data.update(item.extra)
    return data


def write_json_array(items: Iterable[MediaItem], out: TextIO) -> int:
    """Write `[item, …]` one item at a time (memory stays flat); return the count."""
    count = 0
    out.write("[")
    for item in items:
        out.write(",\n" if count else "\n")
        out.write(json.dumps(item_json(item)))
        count += 1
    out.write("\n]\n" if count else "]\n")
    return count


def human_size(size: int) -> str:
    """Bytes in the largest binary unit that keeps a number ≥ 1 (1.5 KiB, 3.0 MiB)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


TABLE_COLUMNS = ("ID", "CREATED", "SIZE", "PUBLIC", "NAME", "TITLE")


def table_row(item: MediaItem) -> tuple[str, ...]:
    created = item.time_created.strftime("%Y-%m-%d %H:%M") if item.time_created else "-"
    return (
        item.id,
        created,
        human_size(item.media_size),
        "yes" if item.public else "no",
        _cell(item.original_file_name),
        _cell(item.title),
    )


def write_table(rows: Sequence[tuple[str, ...]], out: TextIO) -> None:
    """Columns padded to their widest cell; the last column is not padded."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=False)]
        out.write("  ".join([*cells, row[-1]]).rstrip() + "\n")


def write_info(item: MediaItem, out: TextIO) -> None:
    """One `field: value` line per field, aligned."""
    fields = item_json(item)
    fields.pop("public_item")
    width = max(len(name) for name in fields)
    for name, value in fields.items():
        text = "-" if value is None else value if isinstance(value, str) else json.dumps(value)
        out.write(f"{name.ljust(width)}  {_cell(text)}\n")


def parse_when(text: str, now: datetime | None = None) -> datetime:
    """A point in time: ISO 8601 (without a zone: UTC), or an age such as 30m, 12h, 7d, 2w."""
    if match := _RELATIVE.fullmatch(text.strip()):
        try:
            return (now or datetime.now(UTC)) - timedelta(**{_UNITS[match[2]]: int(match[1])})
        except OverflowError:
            raise ValueError(f"too far back: {text!r}") from None
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"not a time: {text!r} (use ISO 8601 such as 2026-11-01 or 2026-11-01T14:00Z, "
            "or an age such as 30m, 12h, 7d, 2w)"
        ) from None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def one_line(text: str) -> str:
    """Text for a one-line message: control characters (newlines included) as spaces."""
    return "".join(" " if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)


def _cell(text: str | None) -> str:
    return "-" if text is None or text == "" else one_line(text)
