"""Sharded checkpoints (train.parallelism=fsdp): `torch.distributed.checkpoint` (DCP) files, each rank writing
its own shards (`__<rank>_0.distcp`) and rank 0 the index (`.metadata`), loaded at any world size, into a
sharded or a whole model, or whole into one process (export, the fine-tuning driver).

What goes into DCP is tensors only: the task's state (the model, EMA copies, a generator's state) and the
optimizer's per-parameter state, keyed by parameter name (`get_optimizer_state_dict`), so that it loads into
any sharding. The optimizer's hyperparameters, the schedule and the counters stay in rank 0's `state.pt`
(engine/checkpoint_state.py), read with weights_only=True.

Safety: DCP reads tensors with weights_only=True but unpickles `.metadata` with plain pickle and pickled
objects with weights_only=False. Here `.metadata` is read by an unpickler that admits only DCP's own
metadata classes and torch's dtypes and sizes, and a checkpoint holding pickled objects is refused, so that a
sharded checkpoint someone hands you cannot execute code, as a state.pt cannot.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner, _EmptyStateDictLoadPlanner
from torch.distributed.checkpoint.metadata import BytesStorageMetadata, Metadata
from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
from torch.distributed.checkpoint.state_dict_loader import _load_state_dict
from torch.distributed.tensor import DTensor, distribute_tensor

from raylpclip.distributed import is_distributed

INDEX_FILE = ".metadata"  # DCP's index of every rank's shards (written by rank 0)

_ALLOWED_MODULES = {"torch.distributed.checkpoint.metadata"}
_ALLOWED = {("torch.distributed.checkpoint.filesystem", "_StorageInfo"), ("torch.serialization", "_get_layout"),
            ("collections", "OrderedDict"), ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath")}


class ShardedCheckpointError(RuntimeError, ValueError):
    """A sharded checkpoint that cannot be read safely; the message names the file."""


class _IndexUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if module in _ALLOWED_MODULES or (module, name) in _ALLOWED:
            return super().find_class(module, name)
        if module == "torch" and isinstance(getattr(torch, name, None), (torch.dtype, torch.layout, type(torch.Size))):
            return getattr(torch, name)
        if module == "torch" and name == "Size":
            return torch.Size
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a checkpoint index")


class _SafeReader(dcp.FileSystemReader):
    """DCP's file reader with the index read by `_IndexUnpickler` and pickled objects refused."""

    def read_metadata(self, *args, **kwargs) -> Metadata:
        path = Path(self.path) / INDEX_FILE
        try:
            with open(path, "rb") as f:
                metadata = _IndexUnpickler(f).load()
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError) as exc:
            raise ShardedCheckpointError(f"{path}: not a readable checkpoint index ({exc})") from None
        if not isinstance(metadata, Metadata):
            raise ShardedCheckpointError(f"{path}: expected a DCP Metadata index, got {type(metadata).__name__}")
        objects = sorted(k for k, v in metadata.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata))
        if objects:
            raise ShardedCheckpointError(f"{path}: holds pickled objects ({objects[:3]}...), which raylpclip never "
                                         "writes and will not unpickle; only tensors are expected")
        if getattr(metadata, "storage_meta", None) is not None:
            metadata.storage_meta.load_id = self.load_id
        return metadata


def is_sharded_checkpoint(directory: str | os.PathLike) -> bool:
    return (Path(directory) / INDEX_FILE).is_file()


def sharded_state(task, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, list]:
    """(what DCP saves: the task's tensors and the optimizer's per-parameter state by name, the optimizer's
    param_groups by name, for rank 0's state.pt). `model`: the unwrapped (sharded or whole) tower."""
    optim = get_optimizer_state_dict(model, optimizer)
    return {"task": task.state_dict(), "optimizer": optim["state"]}, optim["param_groups"]


def save_sharded(directory: str | os.PathLike, state: dict) -> list[str]:
    """Every rank: write this rank's shards of `state` into `directory` (its own local directory; Ray Train
    merges the ranks' directories in storage). Returns the file names this rank wrote."""
    directory = Path(directory)
    before = set(os.listdir(directory))
    dcp.save(state, checkpoint_id=str(directory))
    return sorted(set(os.listdir(directory)) - before)


def load_sharded(directory: str | os.PathLike, task, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 param_groups: list) -> None:
    """Every rank: load a sharded checkpoint into `task` and `optimizer`, resharded to this run's world size and
    parallelism (a whole model takes whole tensors). Task entries the checkpoint lacks (an EMA configured
    after it was written) are left to the task, as a state.pt's are."""
    reader = _SafeReader(str(directory))
    saved = reader.read_metadata().state_dict_metadata
    task_state = {k: v for k, v in task.state_dict().items()
                  if any(name == f"task.{k}" or name.startswith(f"task.{k}.") for name in saved)}
    template = {"task": task_state, "optimizer": get_optimizer_state_dict(model, optimizer)["state"]}
    dcp.load(template, storage_reader=reader, planner=DefaultLoadPlanner(), no_dist=not is_distributed())
    task.load_state_dict(template["task"])
    set_optimizer_state_dict(model, optimizer, {"state": template["optimizer"], "param_groups": param_groups})


def load_whole(directory: str | os.PathLike) -> dict:
    """One process, no process group: the checkpoint's tensors whole ({"task": ..., "optimizer": {name: ...}}),
    e.g. to export the model or to start fine-tuning from it."""
    reader = _SafeReader(str(directory))
    reader.read_metadata()  # a refused index raises here, in its own words, not wrapped by DCP's collectives
    state: dict = {}
    # The lower-level loader (what DCP's own dcp_to_torch_save uses): dcp.load fills only keys the dict already has.
    _load_state_dict(state, storage_reader=reader, planner=_EmptyStateDictLoadPlanner(),
                     no_dist=True)
    return state


def shard_whole_state(whole: dict, template: dict) -> dict:
    """`whole` (a state.pt's task state, plain tensors) laid out like `template` (a sharded task's state_dict):
    every tensor that is sharded in the template is cut into this rank's shard; the rest stays as it is."""
    out = {}
    for key, value in whole.items():
        like = template.get(key) if isinstance(template, dict) else None
        if isinstance(value, dict):
            out[key] = shard_whole_state(value, like if isinstance(like, dict) else {})
        elif isinstance(like, DTensor) and isinstance(value, torch.Tensor):
            # Every rank holds the whole tensor already (it read the same file): no broadcast needed.
            out[key] = distribute_tensor(value.to(like.dtype), like.device_mesh, like.placements, src_data_rank=None)
        else:
            out[key] = value
    return out


def shard_optimizer_state(whole: dict, optimizer: torch.optim.Optimizer) -> dict:
    """A whole optimizer state_dict (by parameter index, from a ddp state.pt) with each per-parameter tensor of a
    parameter's shape cut like that parameter, so that a sharded run's optimizer loads it."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    state = {}
    for index, entry in whole["state"].items():
        param = params[int(index)]
        state[index] = {k: distribute_tensor(v.to(param.dtype), param.device_mesh, param.placements, src_data_rank=None)
                        if isinstance(param, DTensor) and isinstance(v, torch.Tensor) and v.shape == param.shape
                        else v for k, v in entry.items()}
    return {"state": state, "param_groups": whole["param_groups"]}
