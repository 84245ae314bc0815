"""The hook that fault drills and tests read: a Train worker's pid and every batch it trains on.

Off unless the driver's environment has `RAYLPCLIP_WORKER_TRACE=<dir>`. Then every Train worker writes
`<dir>/worker-<rank>-<pid>.json` when it starts and appends each batch it hands to the training loop
(the rows' positions) to `<dir>/consumed-<rank>.jsonl`. The drills that kill workers and count what
was trained on twice (tests/drills/) read those files; the product keeps only this writer.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

TRACE_ENV = "RAYLPCLIP_WORKER_TRACE"


def _node_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray: no node
        return None


class WorkerTrace:
    """Worker side: pid marker and the positions of every batch handed to the training loop."""

    def __init__(self, directory: str, *, rank: int, world: int, start_step: int, accum_steps: int):
        self.dir, self.rank, self.accum = Path(directory), rank, accum_steps
        self.dir.mkdir(parents=True, exist_ok=True)
        self.pid, self.batches, self.start_step = os.getpid(), 0, start_step
        marker = {"rank": rank, "pid": self.pid, "world": world, "start_step": start_step, "time": time.time(),
                  "node": _node_id()}
        (self.dir / f"worker-{rank}-{self.pid}.json").write_text(json.dumps(marker))
        self._log = open(self.dir / f"consumed-{rank}.jsonl", "a", buffering=1)

    @classmethod
    def from_dir(cls, directory: str | None, **kwargs) -> "WorkerTrace | None":
        return cls(directory, **kwargs) if directory else None

    def consumed(self, source: int, epoch: int, positions) -> None:
        step = self.start_step + self.batches // self.accum + 1  # the step this micro-batch goes into
        self.batches += 1
        self._log.write(json.dumps({"pid": self.pid, "step": step, "source": source, "epoch": epoch,
                                    "positions": [int(p) for p in positions.tolist()]}) + "\n")
