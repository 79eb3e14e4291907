"""An upload's form, taken into a new item: the one sequence for multipart and urlencoded bodies.

The file part is staged as it streams in (MediaService.stage_upload); the fields may come before
or after it, so they are checked once the whole form has been read; then the staged file, or else
the bytes fetched from the form's `url`, is published. Whatever fails on the way (a field, the
client, a store), what was staged is abandoned before the error leaves.

The form's parts are described by two small protocols (http/multipart.py's FormField and FilePart
are such parts), so the service reads them without knowing how the request body was parsed.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from media_service.auth import Principal
from media_service.errors import ValidationFailed
from media_service.schemas.media import FILE_FIELDS, file_name_problem, load_upload_fields
from media_service.storage.interfaces import MediaItem, Readable

if TYPE_CHECKING:
    from media_service.service.media import MediaService, StagedUpload

Problems = dict[str, list[str]]


class UploadField(Protocol):
    """A form field, read whole."""

    @property
    def name(self) -> str: ...

    @property
    def value(self) -> str: ...


@runtime_checkable
class UploadFile(Protocol):
    """A file part, read as it streams: to its end before the next part arrives."""

    @property
    def name(self) -> str: ...

    @property
    def filename(self) -> str | None: ...

    @property
    def content_type(self) -> str | None: ...

    @property
    def reader(self) -> Readable: ...


def receive_form(
    service: MediaService, principal: Principal, parts: Iterable[UploadField | UploadFile]
) -> MediaItem:
    """Stage the form's file part as it is read, check its fields, publish the file or the url."""
    staged: StagedUpload | None = None
    fields: dict[str, str] = {}
    problems: Problems = {}
    try:
        for part in parts:
            if not isinstance(part, UploadFile):
                if part.name in fields:
                    problems[part.name] = ["Given more than once."]
                fields[part.name] = part.value
                continue
            if part.name not in FILE_FIELDS:
                problems[part.name or "file"] = ["Unknown file field; send the file as 'filedata'."]
            elif staged is not None:
                problems[part.name] = ["Only one file can be uploaded per request."]
            else:
                staged = service.stage_upload(
                    principal,
                    part.reader,
                    file_name=_checked_file_name(part),
                    part_content_type=part.content_type,
                )
        values = checked_fields(fields, problems, has_file=staged is not None)
    except BaseException:
        if staged is not None:
            service.abandon_upload(staged)
        raise
    if staged is None:
        staged = service.stage_from_url(principal, values["url"])
    values.pop("url", None)
    return _publish(service, staged, values)


def receive_url_fields(
    service: MediaService, principal: Principal, fields: dict[str, str], problems: Problems
) -> MediaItem:
    """A form without a file (urlencoded): check its fields, fetch its url, publish the bytes.

    `problems` are what the caller already found wrong with the body (repeated fields, say).
    """
    values = checked_fields(fields, problems, has_file=False)
    service.admit_upload(None)  # the fetched bytes are staged like a file's
    staged = service.stage_from_url(principal, values.pop("url"))
    return _publish(service, staged, values)


def checked_fields(fields: dict[str, str], problems: Problems, *, has_file: bool) -> dict[str, Any]:
    """The form's fields, validated (UploadFieldsSchema, the file-name rules, a file or a url);
    400 naming every field at fault, `problems` included."""
    values = load_upload_fields(fields, problems)
    if has_file and "url" in fields:
        problems.setdefault("url", []).append("Send either a file or a url, not both.")
    if not has_file and "url" not in fields:
        problems.setdefault("filedata", []).append(
            "Missing: send the file as 'filedata' or a 'url'."
        )
    if problems:
        raise ValidationFailed.from_messages(problems)
    return values


def _checked_file_name(part: UploadFile) -> str | None:
    if part.filename is None:
        return None
    problem = file_name_problem(part.filename)
    if problem:
        raise ValidationFailed(
            f"The file name of '{part.name}' is not acceptable: {problem}",
            invalid_parameters=[{"name": part.name, "reason": problem}],
        )
    return part.filename


def _publish(service: MediaService, staged: StagedUpload, values: dict[str, Any]) -> MediaItem:
    try:
        return service.publish_upload(staged, values)
    except BaseException:
        service.abandon_upload(staged)  # publish_upload abandons too where it can; twice is safe
        raise
