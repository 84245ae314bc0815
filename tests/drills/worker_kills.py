"""Reading the workers' traces (raylpclip/runtime/train/worker_trace.py) and killing a Train worker
once a condition holds: the drills' view of a run from outside."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from raylpclip.runtime.train.worker_trace import TRACE_ENV  # noqa: F401  (re-exported for the drills)


@dataclass
class TraceRecords:
    """What a trace directory says about a run (or a run and its resumptions)."""

    workers: list[dict] = field(default_factory=list)  # the markers, in start order
    batches: list[dict] = field(default_factory=list)  # every rank's consumed lines

    @classmethod
    def read(cls, directory: str | Path) -> "TraceRecords":
        directory = Path(directory)
        workers = sorted((json.loads(p.read_text()) for p in directory.glob("worker-*.json")), key=lambda w: w["time"])
        batches = [json.loads(line) for p in sorted(directory.glob("consumed-*.jsonl"))
                   for line in p.read_text().splitlines() if line.strip()]
        return cls(workers, batches)

    def pid(self, rank: int) -> int | None:
        """The latest pid of the worker with this rank."""
        pids = [w["pid"] for w in self.workers if w["rank"] == rank]
        return pids[-1] if pids else None

    def max_step(self) -> int:
        return max((b["step"] for b in self.batches), default=0)

    def seen(self, *, epoch: int = 0, source: int = 0) -> Counter:
        """How many times each sample (position) was trained on in `epoch` of `source`."""
        return Counter(p for b in self.batches if b["epoch"] == epoch and b["source"] == source for p in b["positions"])

    def replayed(self, *, epoch: int = 0, source: int = 0) -> int:
        """Extra trainings on samples already trained on in the same epoch."""
        return sum(n - 1 for n in self.seen(epoch=epoch, source=source).values() if n > 1)


def wait_for(condition: Callable[[], object], *, timeout: float, poll: float = 0.2, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"{what} not reached within {timeout:.0f}s")


def kill_worker_when(directory: str | Path, *, rank: int, when: Callable[[], object],
                     timeout: float = 600) -> threading.Thread:
    """In the background: once `when()` is true (e.g. `lambda: 10 in persisted_steps(run_dir)`),
    SIGKILL the Train worker with `rank` (the process Ray Train runs the train function in, found
    through the workers' trace in `directory`). The thread's `.killed` is the pid it killed."""
    def run():
        def ready():
            return when() and TraceRecords.read(directory).pid(rank)
        pid = wait_for(ready, timeout=timeout, what="the kill condition")
        os.kill(pid, signal.SIGKILL)
        thread.killed = pid

    thread = threading.Thread(target=run, daemon=True, name="kill-worker")
    thread.killed = None
    thread.start()
    return thread
