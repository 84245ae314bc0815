"""A run's training curves on disk: every report's numbers as one JSON line of `<run_dir>/metrics.jsonl`
and as TensorBoard scalars (one tag per metric, the same name) under `<run_dir>/tensorboard/`.

One process writes them: the trainers' rank 0 (every rank reports the same step; rank 0 alone has the
evaluation and the run's counts). On a cluster the run directory must be a path every node shares,
since rank 0 may land on another node after a restart.

A resumed run continues the same files without repeating a step. Opened at the step it resumed from,
the log drops the lines after that step (they came after the checkpoint it resumed from and are about
to be recomputed), tells TensorBoard to hide its events after that step (SummaryWriter's `purge_step`:
TensorBoard's readers drop them when they meet the new file's START marker; event files are never
rewritten), and from then on skips any step not after the last one it holds, e.g. the final report
that re-running a finished run makes again.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a metrics.jsonl (a run directory or the file itself), oldest first. A last line cut
    short (the process died while writing it) is left out."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def numbers(metrics: Mapping[str, Any]) -> dict[str, float | int | None]:
    """The metrics worth a curve: ints and floats (and 0-d tensors or numpy scalars), non-finite values as
    None (JSON has no NaN; null says the number is missing). Strings and collections are left out."""
    out: dict[str, float | int | None] = {}
    for key, value in metrics.items():
        if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
            value = value.item()
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        out[key] = value if isinstance(value, int) or math.isfinite(value) else None
    return out


class MetricsLog:
    """Append-only curves of one run. `start_step`: the step the run (re)starts from (0 for a fresh run;
    a probe's rounds count from 1, so it opens at 0)."""

    def __init__(self, run_dir: str | Path, *, start_step: int):
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.path = self.run_dir / METRICS_FILE
        kept = self._keep_until(start_step)
        self.last_step = max((row["step"] for row in kept), default=None)
        # Imported here: reading curves (`raylpclip plot`) should not pay for the writer's imports.
        from tensorboardX import SummaryWriter

        # The suffix orders event files made within the same second (the name has whole seconds only) and
        # keeps a second writer in that second from truncating the first one's file.
        self.writer = SummaryWriter(str(self.run_dir / TENSORBOARD_DIR), purge_step=start_step + 1,
                                    filename_suffix=f".{time.time_ns()}.{os.getpid()}")

    def _keep_until(self, start_step: int) -> list[dict[str, Any]]:
        rows = read_metrics(self.path)
        kept = [row for row in rows if row["step"] <= start_step]
        if len(kept) != len(rows) or (self.path.is_file() and not self._ends_cleanly()):
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(json.dumps(row) + "\n" for row in kept))
            os.replace(tmp, self.path)  # never a half-written file, should this process die here
        return kept

    def _ends_cleanly(self) -> bool:
        data = self.path.read_bytes()
        return not data or data.endswith(b"\n")

    def write(self, step: int, metrics: Mapping[str, Any]) -> bool:
        """Log one report's numbers at `step`; False (nothing written) for a step already logged."""
        if self.last_step is not None and step <= self.last_step:
            return False
        values = numbers({k: v for k, v in metrics.items() if k != "step"})
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")
        for key, value in values.items():
            if value is not None:
                self.writer.add_scalar(key, value, global_step=step)
        # Flushed at every report: a Train worker is killed, not closed, when its run ends or fails.
        self.writer.flush()
        self.last_step = step
        return True

    def close(self) -> None:
        self.writer.close()
