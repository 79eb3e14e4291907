"""Measurement plumbing: alternation, medians, percentiles, worker RSS, figures and targets."""

from __future__ import annotations

import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MiB = 1024 * 1024
GiB = 1024 * MiB


def alternate(rounds: int, contenders: dict[str, Callable[[], float]]) -> dict[str, list[float]]:
    """Run the contenders in turn (A, B, A, B, ...) `rounds` times; their values by name.

    Interleaving spreads slow drifts of the machine (page cache, other load, thermal) over both
    sides instead of charging them to whichever ran second.
    """
    values: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, run in contenders.items():
            values[name].append(run())
    return values


def median(values: list[float]) -> float:
    return statistics.median(values)


def percentile(values: list[float], percent: float) -> float:
    """Nearest-rank percentile (no interpolation: always a value that was measured)."""
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(percent / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


# --------------------------------------------------------------------------- figures


@dataclass(frozen=True)
class Target:
    """A goal from the issue: `value op threshold`, e.g. ratio >= 0.8 or growth < 64 MiB."""

    op: str  # ">=", "<", "<=" or "=="
    threshold: float
    text: str  # as the issue words it, e.g. "≥ 0.8"

    def met(self, value: float) -> bool:
        return {
            ">=": value >= self.threshold,
            "<": value < self.threshold,
            "<=": value <= self.threshold,
            "==": value == self.threshold,
        }[self.op]

    def shortfall(self, value: float) -> str:
        """By how much a missed target is missed, in words."""
        if self.op == ">=":
            return (
                f"{value:.2f} against {self.text}: {self.threshold - value:.2f} short "
                f"({value / self.threshold:.0%} of the target; "
                f"{self.threshold / value:.1f}x faster needed)"
            )
        if self.op in ("<", "<="):
            return (
                f"{value:.2f} against {self.text}: {value - self.threshold:.2f} over "
                f"({value / self.threshold:.1f}x the limit)"
            )
        return f"{value} against {self.text}"


@dataclass
class Figure:
    """One result line: what was measured, on what inputs, and how it compares to its target."""

    item: int  # the item number
    name: str
    inputs: str  # what ran: sizes, store, workers, client, rounds
    result: str  # the measurement in words, e.g. "service 512 MiB/s vs nginx 640 MiB/s"
    value: float | None  # the number the target is about (a ratio, MiB, a factor)
    value_text: str
    target: Target | None = None
    samples: dict[str, Any] = field(default_factory=dict)  # raw values, for the JSON and chart
    unit: str = ""
    kind: str = "ratio"  # ratio | rss | search | limit: which chart panel shows it
    notes: list[str] = field(default_factory=list)
    profile: str | None = None  # a markdown summary of a py-spy profile, for misses
    bound: str | None = None  # what limits the figure, from the run's own evidence

    @property
    def met(self) -> bool | None:
        if self.target is None or self.value is None:
            return None
        return self.target.met(self.value)

    @property
    def verdict(self) -> str:
        met = self.met
        return "—" if met is None else ("met" if met else "MISSED")

    def as_dict(self) -> dict[str, Any]:
        return {
            "item": self.item,
            "name": self.name,
            "inputs": self.inputs,
            "result": self.result,
            "value": self.value,
            "value_text": self.value_text,
            "target": None if self.target is None else self.target.text,
            "met": self.met,
            "samples": self.samples,
            "unit": self.unit,
            "kind": self.kind,
            "notes": self.notes,
            "profile": self.profile,
            "bound": self.bound,
        }


def ratio_figure(
    item: int,
    name: str,
    inputs: str,
    samples: dict[str, list[float]],
    service: str,
    baseline: str,
    unit: str,
    target: Target | None,
) -> Figure:
    """A figure comparing the medians of two alternated contenders (higher is better)."""
    a, b = median(samples[service]), median(samples[baseline])
    ratio = a / b
    return Figure(
        item=item,
        name=name,
        inputs=inputs,
        result=f"{service} {a:,.0f} {unit} vs {baseline} {b:,.0f} {unit} (medians)",
        value=ratio,
        value_text=f"{ratio:.2f}",
        target=target,
        samples=samples,
        unit=unit,
    )


# --------------------------------------------------------------------------- worker memory


def _status_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise KeyError(field_name)


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes `pids` (every thread) have used so far."""
    ticks = 0
    for pid in pids:
        # /proc/<pid>/stat: fields 14 and 15 are utime and stime, counted after the "(comm)".
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    return _status_kib(pid, "VmRSS") * 1024


def peak_bytes(pid: int) -> int:
    return _status_kib(pid, "VmHWM") * 1024


def reset_peak(pid: int) -> bool:
    """Reset the kernel's RSS high-water mark (VmHWM) to the current RSS; False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


class RssWatch:
    """Peak RSS growth of one process during a block: `with RssWatch(pid) as watch: ...`.

    The kernel's own high-water mark (VmHWM, reset at the start) catches spikes between polls;
    polling VmRSS every 10 ms is the fallback where the reset is not allowed, and gives a trace.
    """

    def __init__(self, pid: int, interval: float = 0.01) -> None:
        self.pid = pid
        self.interval = interval
        self.baseline = 0
        self.peak = 0
        self.trace: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._hwm_reset = False

    def _poll(self) -> None:
        started = time.perf_counter()
        while not self._stop.is_set():
            try:
                rss = rss_bytes(self.pid)
            except (OSError, KeyError):
                return
            self.trace.append((time.perf_counter() - started, rss))
            self.peak = max(self.peak, rss)
            self._stop.wait(self.interval)

    def __enter__(self) -> RssWatch:
        self.baseline = rss_bytes(self.pid)
        self._hwm_reset = reset_peak(self.pid)
        self.peak = self.baseline
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._thread.join()
        if self._hwm_reset:
            self.peak = max(self.peak, peak_bytes(self.pid))

    @property
    def growth(self) -> int:
        return self.peak - self.baseline

    @property
    def method(self) -> str:
        return (
            "VmHWM (reset via clear_refs) and VmRSS polled every 10 ms"
            if self._hwm_reset
            else ("VmRSS polled every 10 ms")
        )


# --------------------------------------------------------------------------- the machine


def machine() -> dict[str, str]:
    """What the figures ran on: CPU, cores, memory, kernel, Python."""
    model = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory = "?"
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory = f"{int(line.split()[1]) / 1024 / 1024:.1f} GiB"
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {
        "cpu": model,
        "cores": str(cores),
        "memory": memory,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_at_start": f"{load[0]:.2f}",
    }


def machine_line(info: dict[str, str]) -> str:
    return f"{info['cores']} cores ({info['cpu']}), {info['memory']} RAM, Linux {info['kernel']}"


def mib(n: float) -> str:
    return f"{n / MiB:,.1f} MiB"


def size_text(n: int) -> str:
    if n >= GiB and n % GiB == 0:
        return f"{n // GiB} GiB"
    if n >= MiB and n % MiB == 0:
        return f"{n // MiB} MiB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KiB"
    return f"{n} B"


def make_random_file(path: Path, size: int) -> Path:
    """Write `size` incompressible bytes (os.urandom in 4 MiB blocks)."""
    block = 4 * MiB
    with path.open("wb") as out:
        remaining = size
        while remaining > 0:
            n = min(block, remaining)
            out.write(os.urandom(n))
            remaining -= n
    return path


# --------------------------------------------------------------------------- a run's settings


@dataclass
class RunContext:
    """What every scenario needs: sizes and rounds, a scratch directory, tools, a logger."""

    work: Path  # scratch directory, removed at the end
    tools: dict[str, str]  # command name -> path (nginx, wrk)
    quick: bool
    rounds: int  # alternations for the cheap pairs
    heavy_rounds: int  # alternations for the expensive pairs (uploads, S3, wrk runs)
    profiler: Any  # bench.profiling.Profiler
    log: Callable[[str], None] = print

    def scratch(self, name: str) -> Path:
        path = self.work / name
        path.mkdir(parents=True, exist_ok=True)
        return path
