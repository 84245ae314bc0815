"""FSDP2 (`fully_shard`) for a CLIP tower: each transformer block of both towers is its own unit, the rest
(embeddings, final norms, projections) one unit at the root.

A unit's parameters live sharded over the workers (each rank holds 1/world of every weight, its gradient and
its AdamW state); the forward gathers one block at a time and frees it after (ZeRO-3), or keeps it until the
backward is done (ZeRO-2, `reshard_after_forward=False`); gradients are reduce-scattered, averaged as DDP's.

Scalars (CLIP's logit scale, SigLIP's bias) cannot be sharded (FSDP2 refuses 0-d parameters). They stay
whole on every rank, outside FSDP, and a hook averages their gradients over ranks once they are accumulated.
Averaging is idempotent on values that are already equal, so under gradient accumulation the sum of the
micro-steps' averages is the average of their sum: the same gradient as DDP's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.tensor import DTensor

from raylpclip.distributed import get_world_size


@dataclass(frozen=True)
class FsdpSettings:
    """How to shard (from TrainConfig: train.fsdp_*, train.precision)."""

    device_type: str = "cpu"  # "cuda" on GPU workers
    reshard_after_forward: bool = True
    bf16: bool = False  # bf16 parameters in forward/backward, gradients reduced in fp32
    cpu_offload: bool = False


def shard_tower(tower: nn.Module, blocks: Iterable[nn.Module], settings: FsdpSettings) -> nn.Module:
    """Shard `tower` in place: every module of `blocks`, then the root; return it (now an FSDPModule).

    Needs an initialised process group (Ray Train's); the mesh spans all of its ranks. Frozen parameters
    (locked towers) are sharded too but get no gradient, so they cost no reduce-scatter."""
    mesh = init_device_mesh(settings.device_type, (get_world_size(),))
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if settings.bf16 else None,
                              reduce_dtype=torch.float32 if settings.bf16 else None)
    offload = CPUOffloadPolicy() if settings.cpu_offload else OffloadPolicy()
    common = dict(mesh=mesh, mp_policy=mp, offload_policy=offload)
    for block in blocks:
        fully_shard(block, reshard_after_forward=settings.reshard_after_forward, **common)
    scalars = {p for p in tower.parameters() if p.ndim == 0}
    # The root's weights are needed again at the start of the backward, so they stay gathered (FSDP2's own choice
    # for a root); `ignored_params` keeps the scalars out of FSDP altogether.
    fully_shard(tower, reshard_after_forward=False, ignored_params=scalars, **common)
    for param in scalars:
        if param.requires_grad:
            param.register_post_accumulate_grad_hook(_average_grad)
    return tower


def _average_grad(param: torch.Tensor) -> None:
    dist.all_reduce(param.grad)
    param.grad.div_(dist.get_world_size())


def is_sharded(model: nn.Module) -> bool:
    """True for a model `shard_tower` sharded."""
    return isinstance(model, FSDPModule)


def set_gradient_sync(model: nn.Module, sync: bool) -> None:
    """Under gradient accumulation: whether this micro-step's backward reduce-scatters. Skipping keeps whole
    (unsharded) gradients until the last micro-step: less traffic, more memory, so it is used with ZeRO-2 only
    (`reshard_after_forward=False`, the setting that already trades memory for speed); ZeRO-3 syncs every
    micro-step and keeps only gradient shards."""
    if isinstance(model, FSDPModule):
        model.set_requires_gradient_sync(sync)


def reshard(model: nn.Module) -> None:
    """Free the gathered weights a forward without backward (evaluation, a teacher) left at the root."""
    if isinstance(model, FSDPModule):
        model.reshard()


def local_tensor(x: torch.Tensor) -> torch.Tensor:
    """The whole value of `x` as a plain tensor: a sharded one (e.g. the gradient norm of sharded gradients) is
    gathered, a plain one returned as is."""
    return x.full_tensor() if isinstance(x, DTensor) else x


def local_bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes this rank holds of `tensors`: of a sharded tensor its local shard, of a plain one all of it."""
    total = 0
    for t in tensors:
        t = t.to_local() if isinstance(t, DTensor) else t
        total += t.numel() * t.element_size()
    return total


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """The optimizer's state tensors (AdamW: step, exp_avg, exp_avg_sq per parameter)."""
    return [v for state in optimizer.state.values() for v in state.values() if isinstance(v, torch.Tensor)]


def gather_whole_state(model: nn.Module) -> dict:
    """Every rank (a collective): the whole state_dict of a sharded `model`, on rank 0 in host memory; {} on the
    other ranks. For what only rank 0 does with a model: evaluation, export."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
