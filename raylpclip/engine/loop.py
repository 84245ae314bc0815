"""The training loop: gradient accumulation, clipping, autocast, timing. Pure torch, no Ray.

The loop knows nothing about where batches come from or where metrics go: the caller passes an
iterator of batches and a `LoopHooks` object (the Ray adapter reports and checkpoints through it).
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Iterator, Protocol

import torch

from raylpclip.config import OptimConfig, TrainConfig
from raylpclip.parallel.fsdp_sharding import is_sharded, local_tensor, set_gradient_sync


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done
    samples_seen: int = 0  # global samples consumed (all workers)
    stopped: str | None = None  # why the loop stopped before train.steps (a stop notice), after checkpointing


class LoopHooks(Protocol):
    def report(self, state: LoopState, metrics: dict[str, float], *, save: bool, evaluate: bool, final: bool) -> None:
        """Called on log, checkpoint and eval steps, and once at the end (final=True)."""

    # Optional: `stop_reason(state) -> str | None` after every step, the same answer on every rank (a collective
    # where the hooks need one); a reason ends the loop after a checkpoint of that step.


@dataclass
class _Window:
    """Running sums over the steps since the last report.

    The sums stay tensors on the training device until the report: a float() per metric per step
    would make the host wait for the accelerator every step, and the next step's kernels could not
    be queued while the current ones run."""

    steps: int = 0
    wall: float = 0.0
    wait: float = 0.0
    first_step: int = 0
    sums: dict[str, torch.Tensor] = field(default_factory=dict)

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for k, v in metrics.items():
            v = v.detach().float() if isinstance(v, torch.Tensor) else torch.tensor(float(v))
            self.sums[k] = self.sums[k] + v if k in self.sums else v

    def check_finite(self) -> None:
        """Raise if any step of the window had a non-finite loss (one host sync, at report time)."""
        if "loss" in self.sums and not torch.isfinite(self.sums["loss"]):
            raise FloatingPointError(f"non-finite loss in steps {self.first_step}..{self.first_step + self.steps - 1}")

    def summary(self, *, global_batch: int) -> dict[str, float]:
        out = {k: float(v) / max(1, self.steps) for k, v in self.sums.items()}
        out["samples_per_s"] = global_batch * self.steps / max(self.wall, 1e-9)
        out["data_wait_fraction"] = self.wait / max(self.wall, 1e-9)
        out["step_time_s"] = self.wall / max(1, self.steps)
        return out


def autocast(precision: str, device: torch.device):
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _no_sync(model: torch.nn.Module, skip_sync: bool, train: TrainConfig):
    """Under accumulation only the last micro-step all-reduces gradients (DDP's no_sync). DDP decides in
    the forward whether the coming backward syncs, so the context must cover the forward; the backward
    may run after it exits (tests/unit/test_memory.py counts the all-reduces). A sharded model skips its
    reduce-scatters the same way with ZeRO-2 only (parallel/fsdp_sharding.set_gradient_sync says why)."""
    if is_sharded(model):
        set_gradient_sync(model, not (skip_sync and not train.fsdp_reshard_after_forward))
        return contextlib.nullcontext()
    return model.no_sync() if skip_sync and hasattr(model, "no_sync") else contextlib.nullcontext()


def run_loop(
    task,
    *,
    optimizer: torch.optim.Optimizer,
    scheduler,
    batches: Iterator[dict[str, torch.Tensor]],
    state: LoopState,
    train: TrainConfig,
    optim: OptimConfig,
    hooks: LoopHooks,
    device: torch.device = torch.device("cpu"),
    check_every_step: bool | None = None,
) -> LoopState:
    """Run optimizer steps from `state.step` to `train.steps`. `task` is e.g. a PretrainTask.

    A non-finite loss raises FloatingPointError. `check_every_step` (default: on CPU, where it costs
    nothing) checks before each optimizer step, naming the step; otherwise (accelerators, where the
    check would stall the host every step) the window is checked at each report, before the hook can
    save a checkpoint, so no checkpoint ever holds the poisoned weights.
    """
    every_step = device.type == "cpu" if check_every_step is None else check_every_step
    window = _Window(first_step=state.step)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    while state.step < train.steps:
        start = time.perf_counter()
        metrics, waited = _one_step(task, optimizer, batches, params, state.step, train, optim, device, every_step)
        scheduler.step()
        task.after_step()
        state.step += 1
        state.samples_seen += train.batch_size
        window.add(metrics)
        window.steps += 1
        window.wait += waited
        window.wall += time.perf_counter() - start
        final = state.step == train.steps
        save = final or (train.checkpoint_every > 0 and state.step % train.checkpoint_every == 0)
        evaluate = final or (train.eval_every > 0 and state.step % train.eval_every == 0)
        if final or save or evaluate or state.step % train.log_every == 0:
            window.check_finite()
            summary = window.summary(global_batch=train.batch_size)
            summary["lr"] = scheduler.get_last_lr()[0]
            hooks.report(state, summary, save=save, evaluate=evaluate, final=final)
            window = _Window(first_step=state.step)
        # A stop notice (a preemption, SIGTERM to the driver: runtime/cluster/stop_notice.py), agreed by every
        # rank after the same step: a checkpoint of this step (unless the report above just wrote one), then out.
        stop = None if final else getattr(hooks, "stop_reason", lambda _state: None)(state)
        if stop:
            if not save:
                window.check_finite()
                summary = window.summary(global_batch=train.batch_size) if window.steps else {}
                hooks.report(state, dict(summary, lr=scheduler.get_last_lr()[0]), save=True, evaluate=False,
                             final=False)
            state.stopped = stop
            break
    return state


def _one_step(task, optimizer, batches, params, step, train, optim, device, check_finite):
    waited = 0.0
    sums: dict[str, torch.Tensor] = {}
    for micro in range(optim.accum_steps):
        t0 = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            raise RuntimeError(f"the data stream ended at step {step}; it must yield batches until train.steps") from None
        waited += time.perf_counter() - t0
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if isinstance(v, torch.Tensor)}
        with _no_sync(task.model, micro < optim.accum_steps - 1, train), autocast(train.precision, device):
            out = task.losses(batch, step=step)
            loss = sum(v for k, v in out.items() if k.endswith("_loss"))
        (loss / optim.accum_steps).backward()
        for k, v in out.items():
            sums[k] = sums.get(k, 0.0) + v.detach().float() / optim.accum_steps
    sums["loss"] = sum(v for k, v in sums.items() if k.endswith("_loss"))
    if check_finite and not torch.isfinite(sums["loss"]):
        # Stop before the optimizer writes NaN into the weights (and into the next checkpoint).
        raise FloatingPointError(f"non-finite loss {float(sums['loss'])} at step {step}")
    if optim.grad_clip > 0:
        # Of sharded gradients the norm is a sharded value too; the metric is its whole value.
        sums["grad_norm"] = local_tensor(torch.nn.utils.clip_grad_norm_(params, optim.grad_clip))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return sums, waited
