"""The only module that talks to `torch.distributed`.

Every function degrades to the identity (or rank 0 / world size 1) when no process group is
initialised or the group has a single member, so the same loss code runs in a CPU unit test and on
many GPUs. Ray Train initialises the process group; this module never does.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.distributed as dist
from torch import Tensor, nn


def _initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def is_distributed() -> bool:
    """True when a process group is initialised and has more than one member."""
    return _initialized() and dist.get_world_size() > 1


def get_rank() -> int:
    """This process's rank in the default group (0 when not distributed)."""
    return dist.get_rank() if _initialized() else 0


def get_world_size() -> int:
    """Number of processes in the default group (1 when not distributed)."""
    return dist.get_world_size() if _initialized() else 1


def all_gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate every rank's `x` along dim 0, keeping the autograd graph.

    x: (b, ...) with the same shape on every rank -> (world_size * b, ...), rank r's rows at
    [r*b, (r+1)*b). Every rank must run the backward pass, since the backward is a collective too.
    """
    if not is_distributed():
        return x
    # Why this gives the gradient of the mean loss: rank r's loss L_r depends on every rank's
    # features through the gathered tensor. The backward of `nn.functional.all_gather` sends each
    # slice's gradient back to its owner and SUMS it over ranks, so rank k receives
    # sum_r dL_r/dx_k = W * d(mean_r L_r)/dx_k. DDP then AVERAGES parameter gradients (divides by W),
    # which cancels the W: every rank ends up with d(mean_r L_r)/dtheta, the gradient of the
    # single-process loss on the global batch. (A plain `dist.all_gather` would drop the cross-rank
    # terms: each rank would only see the gradient through its own rows.)
    from torch.distributed.nn.functional import all_gather

    # Deprecated in favour of functional collectives, whose autograd backward needs reduce-scatter,
    # which gloo (CPU workers) lacks; this one works on both gloo and NCCL.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.cat(all_gather(x), dim=0)


def _shift(x: Tensor, direction: int) -> Tensor:
    """Send `x` to rank + direction and receive rank - direction's tensor of the same shape (a ring)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    received = torch.empty_like(x)
    ops = [dist.P2POp(dist.isend, x.contiguous(), (rank + direction) % world),
           dist.P2POp(dist.irecv, received, (rank - direction) % world)]
    for request in dist.batch_isend_irecv(ops):
        request.wait()
    return received


class _RingShift(torch.autograd.Function):
    """One hop around the ring, differentiable: forward passes `x` on to the next rank; backward sends the
    gradient of what was received back to the rank it came from, which adds it to its own tensor's."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:
        return _shift(x, 1)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return _shift(grad, -1)


def ring_pass_with_grad(x: Tensor) -> Iterator[tuple[int, Tensor]]:
    """Every rank's `x`, one at a time, passed around the ring: yields (owner rank, its x), this rank's own
    first, then those of rank - 1, rank - 2, ... (world_size items; one, x itself, when not distributed).

    A rank holds one received chunk at a time instead of the (world_size * b, ...) gather. The backward
    runs the hops in reverse, so rank k's x collects sum_r dL_r/dx_k, as `all_gather_with_grad`'s does
    (DDP's average then gives the single-process gradient). Every rank must consume every item, in order,
    and run the backward: each hop is a collective of all ranks.
    """
    rank, world = get_rank(), get_world_size()
    chunk = x
    yield rank, chunk
    for hop in range(1, world):
        chunk = _RingShift.apply(chunk)
        yield (rank - hop) % world, chunk


@torch.no_grad()
def all_gather_no_grad(x: Tensor) -> Tensor:
    """Concatenate every rank's `x` along dim 0 without autograd (e.g. teacher features).

    x: (b, ...) with the same shape on every rank -> (world_size * b, ...), detached.
    """
    x = x.detach()
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def all_reduce_sum(x: Tensor) -> Tensor:
    """Element-wise sum of `x` over ranks, as a new detached tensor (the input is not modified)."""
    out = x.detach().clone()
    if is_distributed():
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


@torch.no_grad()
def all_reduce_mean(x: Tensor) -> Tensor:
    """Element-wise mean of `x` over ranks, as a new detached tensor (the input is not modified).

    Used for logging metrics; integer inputs are promoted to float so the mean is not truncated.
    """
    out = all_reduce_sum(x if x.is_floating_point() else x.double())
    return out / get_world_size()


def barrier() -> None:
    """Wait for every rank (no-op when not distributed)."""
    if is_distributed():
        dist.barrier()


def gather_objects(obj):
    """Every rank's picklable `obj`, in rank order (a one-item list when not distributed)."""
    if not is_distributed():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def ddp_kwargs(*, bucket_cap_mb: float) -> dict:
    """DistributedDataParallel options (Ray Train's `prepare_model(parallel_strategy_kwargs=...)`).

    bucket_cap_mb: gradients are all-reduced in buckets of this size as backward produces them;
    smaller buckets start communicating earlier (more overlap with backward), larger ones make fewer
    calls. gradient_as_bucket_view: parameters' .grad are views into the buckets, which saves one
    gradient-sized buffer and one copy per step (the optimizer and clipping work on them in place).
    """
    return {"bucket_cap_mb": bucket_cap_mb, "gradient_as_bucket_view": True}


@dataclass(frozen=True)
class Collective:
    """How data-parallel probe trainers agree, each holding a shard of the features (Ray Train workers
    over torch.distributed; raylpclip.methods.lpclip). The default, one process, changes nothing:
    training is then plain mini-batch training. With several workers, each runs the same number of
    steps (the maximum over workers, refilled from a new permutation of its own shard) and averages
    gradients every step, so all replicas stay identical, like DDP without wrapping the probe.

    The world size is given rather than read from the process group because the caller (the probe
    worker) knows it from Ray Train and a size of 1 must touch no process group at all."""

    world_size: int = 1

    def average_gradients(self, module: nn.Module) -> None:
        if self.world_size == 1:
            return
        for param in module.parameters():
            if param.grad is not None:
                dist.all_reduce(param.grad)
                param.grad.div_(self.world_size)

    def max_int(self, value: int) -> int:
        if self.world_size == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.long)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return int(tensor.item())
