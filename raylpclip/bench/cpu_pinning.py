"""The cores a benchmark runs on: how many this process may use, and pinning it (and its children) to fewer."""

from __future__ import annotations

import os


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def pin_cpus(n: int) -> None:
    """Keep this process, and every process it starts from now on (DataLoader workers, a local Ray
    instance), on `n` cores, so that all routes get the same CPUs on a bigger machine."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if 0 < n < len(allowed):
        os.sched_setaffinity(0, allowed[:n])
