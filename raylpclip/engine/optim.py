"""AdamW with no-decay groups, and a warmup + cosine learning-rate schedule."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # annotations only: raylpclip.config loads omegaconf, which the GPU check's machines lack
    from raylpclip.config import OptimConfig

log = logging.getLogger(__name__)


def _no_decay(name: str, param: torch.nn.Parameter) -> bool:
    # Biases, norms, embeddings and the logit scale keep weight decay off, as CLIP and open_clip do:
    # decaying them shrinks quantities that have no reason to be small.
    return param.ndim < 2 or "embedding" in name or "logit_scale" in name or "norm" in name


def param_groups(model: torch.nn.Module, *, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if _no_decay(name, param) else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, *, fused: bool = False) -> torch.optim.AdamW:
    """AdamW over `param_groups`. `fused`: torch's single-kernel AdamW (CUDA, and CPU since torch 2.4),
    which reads and writes each parameter's state once per step instead of once per foreach op; where
    this torch or device lacks it, the default (foreach) implementation runs and a note is logged."""
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    groups = param_groups(model, weight_decay=cfg.weight_decay)
    if fused:
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, TypeError, ValueError) as exc:  # torch raises RuntimeError for unsupported devices
            log.warning("train.fused_adamw: fused AdamW unavailable here (%s); using the foreach AdamW",
                        str(exc).splitlines()[0])
    return torch.optim.AdamW(groups, **kwargs)


def lr_factor(step: int, *, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    """Multiplier on the base lr at optimizer step `step` (0-based): linear warmup, then cosine."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, *, total_steps: int):
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(step, total_steps=total_steps, warmup_steps=cfg.warmup_steps,
                               schedule=cfg.schedule, min_ratio=cfg.min_lr_ratio),
    )
