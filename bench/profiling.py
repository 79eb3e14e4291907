"""Profile the service side of a missed target with py-spy, and summarise where the time goes.

py-spy samples the gunicorn master and its workers (`--subprocesses`) from outside, without
touching the service's code, while the scenario repeats its service-side run. Only threads that
are running are sampled (py-spy's default), so the summary is CPU time; a thread blocked in
`recv`, `fsync` or a lock wait does not appear. The raw collapsed stacks are kept next to the
run's other output for flamegraph tools.
"""

from __future__ import annotations

import re
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from bench.servers import REPO_ROOT

PY_SPY_RATE_TEXT = "200 Hz, all gunicorn processes"
_FRAME = re.compile(r"^(?P<func>.+?) \((?P<file>[^()]*?)(?::\d+)?\)$")


class Profiler:
    """Runs py-spy around an action; `None` py-spy path means profiling is off."""

    def __init__(
        self, py_spy: str | None, out_dir: Path, rate: int = 200, min_seconds: float = 6.0
    ) -> None:
        self.py_spy = py_spy
        self.out_dir = out_dir
        self.rate = rate
        self.min_seconds = min_seconds  # the action repeats until this much has been sampled

    @property
    def enabled(self) -> bool:
        return self.py_spy is not None

    def capture(self, name: str, pid: int, action: Callable[[], object]) -> str | None:
        """Profile `pid` and its children while `action` runs (repeatedly, for at least
        `min_seconds`); a markdown summary, or None when profiling is off."""
        if self.py_spy is None:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        raw = self.out_dir / f"{name}.collapsed.txt"
        log = self.out_dir / f"{name}.py-spy.log"
        with log.open("wb") as out:
            spy = subprocess.Popen(
                [
                    self.py_spy,
                    "record",
                    "--pid",
                    str(pid),
                    "--subprocesses",
                    "--rate",
                    str(self.rate),
                    "--format",
                    "raw",
                    "--output",
                    str(raw),
                    "--nonblocking",  # never pause the workers: keep the run's timing honest
                ],
                stdout=out,
                stderr=out,
            )
        started = time.perf_counter()
        try:
            time.sleep(1.0)  # py-spy attaches to every process before sampling starts
            action()
            while time.perf_counter() - started - 1.0 < self.min_seconds:
                action()
        finally:
            seconds = time.perf_counter() - started - 1.0
            spy.send_signal(signal.SIGINT)  # py-spy writes its output on Ctrl-C
            try:
                spy.wait(30)
            except subprocess.TimeoutExpired:
                spy.kill()
                spy.wait()
        if not raw.exists():
            return f"(py-spy wrote no profile; see {log})"
        return summarise(raw.read_text(errors="replace"), seconds, raw)


def _short(file: str) -> str:
    """A path relative to the repository, site-packages or the standard library."""
    for marker in ("site-packages/", f"{REPO_ROOT}/", "/lib/python3."):
        if marker in file:
            rest = file.split(marker, 1)[1]
            return rest.split("/", 1)[1] if marker == "/lib/python3." else rest
    return file


def parse_collapsed(text: str) -> list[tuple[list[str], int]]:
    """(frames root first, as 'function (file)' without line numbers; count) per stack."""
    stacks = []
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = []
        for frame in stack.split(";"):
            match = _FRAME.match(frame)
            if frame.startswith(("process ", "thread ")) or match is None:
                continue
            frames.append(f"{match['func']} ({_short(match['file'])})")
        if frames:
            stacks.append((frames, int(count)))
    return stacks


def summarise(text: str, seconds: float, raw: Path, top: int = 8) -> str:
    """Markdown: where the sampled CPU time goes, by own time and by inclusive time."""
    stacks = parse_collapsed(text)
    total = sum(count for _, count in stacks)
    if total == 0:
        return "(py-spy recorded no samples of running threads)"
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    for frames, count in stacks:
        own[frames[-1]] += count
        for frame in set(frames):
            inclusive[frame] += count
    lines = [
        f"py-spy at {PY_SPY_RATE_TEXT}, {total} samples of running threads over {seconds:.1f} s "
        f"(raw stacks: `{raw.name}`, kept with `--keep`).",
        "",
        "| own time | function |",
        "|---:|---|",
    ]
    lines += [f"| {n / total:.0%} | `{frame}` |" for frame, n in own.most_common(top)]
    # The service's own frames, by the share of samples they appear in: which of its code paths
    # the time is spent under (library frames above them are the same for every request).
    ours = [(frame, n) for frame, n in inclusive.most_common() if "(media_service/" in frame]
    lines += ["", "| inclusive | media_service function |", "|---:|---|"]
    lines += [f"| {n / total:.0%} | `{frame}` |" for frame, n in ours[:top]]
    return "\n".join(lines)
