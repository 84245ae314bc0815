"""A run's training state on disk, whichever parallelism writes or reads it: the task, optimizer, schedule and
counters, and the data position beside them. Pure torch: the Ray Train workers (runtime/train/worker_checkpoint.py)
write and restore through it, and the sharded-training tests call it directly.

Under train.parallelism=fsdp every rank writes its shards (parallel/sharded_checkpoint.py); a checkpoint of
either kind loads into a run of either kind, at any world size.
"""

from __future__ import annotations

from pathlib import Path

import torch

from raylpclip.data import stream_position
from raylpclip.engine.checkpoint_state import (STATE_FILE, load_state, save_rank_manifest, save_state,
                                               verify_state)
from raylpclip.engine.loop import LoopState
from raylpclip.engine.pretrain_task import unwrap
from raylpclip.parallel.fsdp_sharding import is_sharded
from raylpclip.parallel.sharded_checkpoint import (is_sharded_checkpoint, load_sharded, save_sharded,
                                                   shard_optimizer_state, shard_whole_state, sharded_state)

POSITION_FILE = "data_position.json"


def save_run_state(directory: str, *, task, optimizer, scheduler, state: LoopState, meta: dict,
                   positions: list | None = None, metrics: dict | None = None, rank: int = 0, world: int = 1) -> None:
    """Write the training state (and the data position, when the run tracks one) into `directory`.
    `metrics`, the figures reported with it, go into its meta: a run resumed at its last step reports
    them again rather than figures of no step.

    A sharded model (train.parallelism=fsdp): every rank calls this with its own directory and writes its
    shards there (Ray Train merges the directories in storage); rank 0 adds the index, the small state.pt
    (schedule, counters, the optimizer's hyperparameters) and the manifest naming how many ranks wrote."""
    extra = {POSITION_FILE: stream_position.dumps(positions, step=state.step)} if positions is not None else None
    figures = {k: float(v) for k, v in (metrics or {}).items() if isinstance(v, (int, float))}
    counters_ = {"scheduler": scheduler.state_dict(), "step": state.step, "samples_seen": state.samples_seen}
    meta = {"step": state.step, "samples_seen": state.samples_seen, **meta, "metrics": figures}
    model = unwrap(task.model)
    if not is_sharded(model):
        save_state(directory, state={"task": task.state_dict(), "optimizer": optimizer.state_dict(), **counters_},
                   meta=meta, extra=extra)
        return
    tensors, param_groups = sharded_state(task, model, optimizer)
    written = save_sharded(directory, tensors)
    if rank == 0:
        save_state(directory, state={"sharded": True, "optimizer_param_groups": param_groups, **counters_},
                   meta={**meta, "parallelism": "fsdp", "ranks": world}, extra=extra, written=written, ranks=world)
    else:
        save_rank_manifest(directory, rank, written)


def load_into(directory: str, task, optimizer) -> dict:
    """Load a checkpoint directory into `task` and `optimizer`, whichever parallelism wrote it and whichever this
    run uses (ddp <-> fsdp, any world size); return its state.pt (schedule, counters)."""
    model = unwrap(task.model)
    if is_sharded_checkpoint(directory):
        verify_state(directory)  # the manifests and the small state.pt; the shards are read next
        state = torch.load(Path(directory) / STATE_FILE, map_location="cpu", weights_only=True)
        load_sharded(directory, task, model, optimizer, state["optimizer_param_groups"])
        return state
    state = load_state(directory)
    if is_sharded(model):  # a whole (ddp) checkpoint into a sharded run: each rank keeps its shard of it
        task.load_state_dict(shard_whole_state(state["task"], task.state_dict()))
        optimizer.load_state_dict(shard_optimizer_state(state["optimizer"], optimizer))
    else:
        task.load_state_dict(state["task"])
        optimizer.load_state_dict(state["optimizer"])
    return state
