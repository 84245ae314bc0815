"""A run's checkpoint as its Train workers write and read it: the training state (task, optimizer,
schedule, step), the data position beside it, and on restore the run's newest complete checkpoint.

The newest complete one is usually Ray Train's latest registered checkpoint, but not always
(engine/checkpoint_choice.py says why): every checkpoint directory of the run is considered.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pyarrow.fs as pafs
import ray.train

from raylpclip.data import stream_position
from raylpclip.engine.checkpoint_choice import choose
from raylpclip.engine.checkpoint_state import load_meta
from raylpclip.engine.loop import LoopState
from raylpclip.engine.run_state import POSITION_FILE, load_into


@dataclass
class Restored:
    state: LoopState
    positions: list | None = None  # the data position saved with the checkpoint (data/stream_position.py)
    path: str | None = None
    metrics: dict | None = None  # what was reported with it
    registered: bool = False  # it is Ray Train's latest registered checkpoint (what the run's result names)


def restore_run(task, optimizer, scheduler, *, run: tuple | None = None,
                say: Callable[[str], None] | None = None) -> Restored:
    """Load the run's newest complete checkpoint into task, optimizer and schedule: usually Ray's
    latest, but past a damaged one, or a complete one Ray never registered; what was skipped goes to
    `say`. `run`: (filesystem or None for local, run directory path), from the driver."""
    latest = ray.train.get_checkpoint()
    if run is not None:
        fs, run_path = run[0] or pafs.LocalFileSystem(), run[1]
    elif latest is not None:
        fs, run_path = latest.filesystem, posixpath.dirname(latest.path.rstrip("/"))
    else:
        return Restored(LoopState())

    def load(path: str):
        # Into the live objects here, while the directory is at hand: a sharded checkpoint is read shard by shard
        # (each rank what it needs), never whole. Every rank chooses the same checkpoint, as the loads of a
        # sharded one are collectives.
        with ray.train.Checkpoint(path, fs).as_directory() as directory:
            state = load_into(directory, task, optimizer)
            pos_file = Path(directory) / POSITION_FILE
            positions = stream_position.loads(pos_file.read_bytes())[1] if pos_file.is_file() else None
            return state, positions, load_meta(directory).get("metrics") or {}

    chosen = choose(fs, run_path, registered=latest.path if latest is not None else None, load=load,
                    warn=say or (lambda line: None))
    if chosen is None:
        return Restored(LoopState())
    found, (state, positions, metrics) = chosen
    scheduler.load_state_dict(state["scheduler"])
    return Restored(LoopState(step=int(state["step"]), samples_seen=int(state["samples_seen"])), positions, found.path,
                    metrics, registered=latest is not None and found.path == latest.path)
