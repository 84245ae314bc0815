"""Exponential moving average of a model: the optional PSD teacher."""

from __future__ import annotations

import copy

import torch


class ModelEMA(torch.nn.Module):
    """Holds a frozen copy of `model` whose weights trail it: w <- d * w + (1 - d) * w_model."""

    def __init__(self, model: torch.nn.Module, *, decay: float):
        super().__init__()
        self.module = copy.deepcopy(model).eval().requires_grad_(False)
        self.decay = decay

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        ema_params = dict(self.module.named_parameters())
        for name, param in model.named_parameters():
            ema_params[name].lerp_(param.detach(), 1.0 - self.decay)
        ema_buffers = dict(self.module.named_buffers())
        for name, buf in model.named_buffers():
            ema_buffers[name].copy_(buf)

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)
