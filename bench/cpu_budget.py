"""How much of the machine's CPU a transfer takes: the evidence behind item 3's bound.

On a 2-core machine an upload that keeps both cores busy is bound by CPU, and then its rate is
the machine's CPU divided by the CPU each MiB needs, whichever process spends it (the client
sending, the kernel's loopback, gunicorn, the service, MinIO). So each upload, the service's
and the baseline's, is metered by the busy time of the whole machine (/proc/stat: user, nice,
system, irq, softirq), and the floor the API itself sets is measured too: the MD5 (the ETag) and
the SHA-256 (store_meta_params) of every byte, computed by hashlib (OpenSSL) in this process.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from bench.measure import MiB, median

_TICKS = os.sysconf("SC_CLK_TCK")


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot (every core, every process)."""
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    # cpu user nice system idle iowait irq softirq steal ...: idle and iowait are not work.
    user, nice, system, _idle, _iowait, irq, softirq = (int(v) for v in fields[1:8])
    return (user + nice + system + irq + softirq) / _TICKS


def cores() -> int:
    return len(os.sched_getaffinity(0))


@dataclass
class CpuMeter:
    """Machine CPU per MiB and the machine's busy share, per contender, over its runs."""

    ms_per_mib: dict[str, list[float]] = field(default_factory=dict)
    busy_share: dict[str, list[float]] = field(default_factory=dict)

    def metered(self, name: str, size: int, run: Callable[[], float]) -> Callable[[], float]:
        """`run` (which moves `size` bytes and returns MiB/s), recording what it cost."""

        def metered_run() -> float:
            busy, started = machine_busy_seconds(), time.perf_counter()
            rate = run()
            busy = machine_busy_seconds() - busy
            elapsed = time.perf_counter() - started
            self.ms_per_mib.setdefault(name, []).append(busy * 1000 / (size / MiB))
            self.busy_share.setdefault(name, []).append(busy / (elapsed * cores()))
            return rate

        return metered_run

    def note(self, service: str, baseline: str, target_ratio: float, baseline_rate: float) -> str:
        """The budget in words: what each side cost, and what the target would leave."""
        md5, sha256 = hash_floor_ms_per_mib()
        service_ms = median(self.ms_per_mib[service])
        baseline_ms = median(self.ms_per_mib[baseline])
        n = cores()
        # At the target rate, n cores give this many ms of CPU per MiB to the whole transfer.
        budget = n * 1000 / (target_ratio * baseline_rate)
        return (
            f"Machine CPU per MiB, all processes (/proc/stat, medians): {service} "
            f"{service_ms:.2f} ms with the machine {median(self.busy_share[service]):.0%} busy, "
            f"{baseline} {baseline_ms:.2f} ms ({median(self.busy_share[baseline]):.0%} busy); "
            f"{n} cores fully busy at {service_ms:.2f} ms/MiB move at most "
            f"{n * 1000 / service_ms:,.0f} MiB/s. The target ({target_ratio:g} x "
            f"{baseline_rate:,.0f} MiB/s) leaves {budget:.2f} ms of CPU per MiB for everything "
            f"(client, kernel, parsing, writing); MD5 + SHA-256 of every byte, which the API "
            f"records (hashlib, one core each), take {md5:.2f} + {sha256:.2f} = "
            f"{md5 + sha256:.2f} ms of it."
        )


_hash_floor: tuple[float, float] | None = None


def hash_floor_ms_per_mib(size: int = 64 * MiB) -> tuple[float, float]:
    """(MD5, SHA-256) milliseconds of CPU per MiB on one core, measured once per run."""
    global _hash_floor
    if _hash_floor is None:
        data = os.urandom(MiB)
        timings = []
        for algorithm in (hashlib.md5, hashlib.sha256):
            digest = algorithm()
            started = time.thread_time()
            for _ in range(size // MiB):
                digest.update(data)
            timings.append((time.thread_time() - started) * 1000 / (size / MiB))
        _hash_floor = (timings[0], timings[1])
    return _hash_floor
