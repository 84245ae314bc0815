"""Exponential moving average of a model: PSD's EMA teacher and the EMA weights of `train.ema_decay`."""

from __future__ import annotations

import copy

import torch


class ModelEMA(torch.nn.Module):
    """Holds a frozen copy of `model` whose weights trail it: w <- d * w + (1 - d) * w_model.

    The copy is made when the EMA is, so it starts at the model's weights of that moment; buffers are
    copied, not averaged (CLIP's are fixed position ids)."""

    def __init__(self, model: torch.nn.Module, *, decay: float):
        super().__init__()
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        ema_params = dict(self.module.named_parameters())
        pairs = [(ema_params[name], param.detach()) for name, param in model.named_parameters()]
        if pairs:  # one multi-tensor kernel per dtype and device rather than a launch per parameter
            torch._foreach_lerp_([e for e, _ in pairs], [p for _, p in pairs], 1.0 - self.decay)
        ema_buffers = dict(self.module.named_buffers())
        for name, buf in model.named_buffers():
            ema_buffers[name].copy_(buf)

    @torch.no_grad()
    def reset(self, model: torch.nn.Module) -> None:
        """Start over from `model`'s current weights (a resumed run whose checkpoint has no EMA)."""
        self.module.load_state_dict(model.state_dict())

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
