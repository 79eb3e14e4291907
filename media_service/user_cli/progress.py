"""Progress bars on stderr (rich), shown only on a terminal unless asked for."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, BinaryIO, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

MODES = ("auto", "always", "never")

OnBytes = Callable[[int], None]


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class Bar:
    """One transfer's bar; inert when progress is off."""

    def __init__(self, progress: Progress | None, task: TaskID | None) -> None:
        self._progress = progress
        self._task = task

    def advance(self, count: int) -> None:
        if self._progress is not None and self._task is not None and count:
            self._progress.advance(self._task, count)

    def update(self, **fields: Any) -> None:
        """Change the bar's description, total or completed bytes."""
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, **fields)

    def close(self) -> None:
        """Draw the bar's last state once (a short transfer may finish between two refreshes)
        and take it away."""
        if self._progress is not None and self._task is not None:
            self._progress.refresh()
            self._progress.remove_task(self._task)
            self._task = None


class Transfers:
    """The progress display of one command, on `stream` (stderr by default).

    Mode `auto` shows bars only when the stream is a terminal (never in pipes, logs or CI);
    `always` forces them, `never` turns them off. Bars are transient: once the command ends
    only its result lines remain.
    """

    def __init__(self, mode: str = "auto", stream: TextIO | None = None) -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {', '.join(MODES)}")
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = mode == "always" or (mode == "auto" and _isatty(self.stream))
        self._progress: Progress | None = None

    @contextmanager
    def shown(self) -> Iterator[Transfers]:
        """Display bars while the block runs (nothing at all when disabled)."""
        if not self.enabled:
            yield self
            return
        # Our own decision, not rich's: FORCE_COLOR in a CI environment must not bring bars.
        console = Console(file=self.stream, force_terminal=True)
        progress = Progress(
            TextColumn("{task.description}", markup=False),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=True,
            # Result lines printed to a terminal stdout go above the bars, not through them;
            # a redirected stdout is left alone.
            redirect_stdout=_isatty(sys.stdout),
            redirect_stderr=False,
        )
        self._progress = progress
        try:
            with progress:
                yield self
        finally:
            self._progress = None

    def bar(self, description: str, total: int | None) -> Bar:
        """A new bar of `total` bytes (None: unknown)."""
        if self._progress is None:
            return Bar(None, None)
        return Bar(self._progress, self._progress.add_task(description, total=total))

    def message(self, text: str) -> None:
        """A line on the progress stream (stderr), above the bars when they are shown."""
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=self.stream, flush=True)


class ProgressReader:
    """A binary file that reports each read's size (and bytes, to `on_data`); seek and tell
    pass through."""

    def __init__(
        self, file: BinaryIO, on_bytes: OnBytes, on_data: Callable[[bytes], object] | None = None
    ) -> None:
        self._file = file
        self._on_bytes = on_bytes
        self._on_data = on_data

    def read(self, size: int = -1, /) -> bytes:
        data = self._file.read(size)
        if self._on_data is not None:
            self._on_data(data)
        self._on_bytes(len(data))
        return data

    def seekable(self) -> bool:
        return self._file.seekable()

    def tell(self) -> int:
        return self._file.tell()

    def seek(self, offset: int, whence: int = 0, /) -> int:
        return self._file.seek(offset, whence)
