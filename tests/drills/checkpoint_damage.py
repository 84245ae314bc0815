"""A run's checkpoints as the drills see them on disk, and damage done to them on purpose."""

from __future__ import annotations

import json
from pathlib import Path


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """A run's checkpoint directories, oldest first (by the step in their meta.json)."""
    dirs = [d for d in Path(run_dir).glob("checkpoint_*") if (d / "meta.json").is_file()]
    return sorted(dirs, key=lambda d: json.loads((d / "meta.json").read_text())["step"])


def persisted_steps(run_dir: str | Path) -> set[int]:
    """Steps of the run's checkpoints that have reached storage whole (manifest written last). With
    asynchronous uploads a checkpoint lands some steps after it was taken: kill after this, not after
    a step count, to know which checkpoint a restart finds."""
    from raylpclip.engine.checkpoint_state import check_checkpoint

    steps = set()
    for d in Path(run_dir).glob("checkpoint_*"):
        try:
            # every file the manifest lists, at its full size (an upload copies them in any order)
            if (d / "manifest.json").is_file() and check_checkpoint(d, digests=False) is None:
                steps.add(int(json.loads((d / "meta.json").read_text())["step"]))
        except (OSError, ValueError, KeyError):
            continue
    return steps


def truncate(path: str | Path, *, keep: float = 0.5) -> None:
    """Cut a file to `keep` of its size, as a crash or full disk mid-write would."""
    path = Path(path)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
